#!/usr/bin/env bash
# Runs a broker binary with its clients on TLS, for the load generator: started as
# `--spawn-binary benches/tls-broker.sh`, it runs $TLS_BROKER with the TLS listener on the
# address the load generator gives as --listen (the plaintext listener goes to a free port)
# and the certificate and key in $TLS_CERT and $TLS_KEY. Clients then need `--tls-ca`:
#
#   benches/tls-certs.sh DIR          # a CA and a certificate for 127.0.0.1
#   TLS_BROKER=target/release/broadcast-broker TLS_CERT=DIR/cert.pem TLS_KEY=DIR/key.pem \
#     target/release/loadgen --spawn-binary benches/tls-broker.sh --tls-ca DIR/ca.pem ...
set -euo pipefail
: "${TLS_BROKER:?the broker binary}" "${TLS_CERT:?the certificate, PEM}" "${TLS_KEY:?the key, PEM}"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --listen)
      args+=(--listen 127.0.0.1:0 --tls-listen "$2" --tls-cert "$TLS_CERT" --tls-key "$TLS_KEY")
      shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
exec "$TLS_BROKER" "${args[@]}"
