#!/usr/bin/env bash
# Every test of the project, as CI runs them: the Rust workspace (unit, property, simulation
# and real-TCP tests), the TypeScript client against the broker binary (node --test, the
# golden vectors included), and the example web page in headless Chromium.
#
# Needs a Rust toolchain, Node.js 20 or later with npm, openssl, and Chromium (CHROMIUM,
# default /usr/bin/chromium; Debian's package `chromium`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
cargo test --workspace
(cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error && npm test)
(cd examples/web && npm ci --no-audit --no-fund --loglevel=error && npm test)
