/**
 * The main entry point loads in a browser: nothing it imports, directly or not, imports a
 * Node module or uses Node's globals. The Node entry point re-exports it with TCP added.
 */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { builtinModules } from "node:module";
import { dirname, resolve } from "node:path";
import { test } from "node:test";
import { PACKAGE_DIR } from "./helpers.js";

const DIST = resolve(PACKAGE_DIR, "dist");
const IMPORT = /(?:^|[\s;])(?:import|export)\s[^'"]*?from\s*["']([^"']+)["']|import\(\s*["']([^"']+)["']\s*\)/g;

/** Every module `entry` loads, with the specifiers each imports. */
function graph(entry: string): Map<string, string[]> {
  const seen = new Map<string, string[]>();
  const visit = (file: string): void => {
    if (seen.has(file)) {
      return;
    }
    const source = readFileSync(file, "utf8").replace(/\/\*[\s\S]*?\*\//g, "");
    const specifiers = [...source.matchAll(IMPORT)].map((m) => (m[1] ?? m[2]) as string);
    seen.set(file, specifiers);
    for (const s of specifiers) {
      if (s.startsWith(".")) {
        visit(resolve(dirname(file), s));
      }
    }
  };
  visit(entry);
  return seen;
}

test("the main entry point imports no Node module and uses no Node global", () => {
  const modules = graph(resolve(DIST, "index.js"));
  assert.ok(modules.size > 5, "the import graph was read");
  const builtins = new Set(builtinModules);
  for (const [file, specifiers] of modules) {
    for (const s of specifiers) {
      assert.ok(!s.startsWith("node:") && !builtins.has(s), `${file} imports ${s}`);
      assert.ok(s.startsWith("."), `${file} imports the package ${s}`);
    }
    const code = readFileSync(file, "utf8").replace(/\/\/.*$|\/\*[\s\S]*?\*\//gm, "");
    for (const global of [/\bBuffer\b/, /\bprocess\./, /\brequire\(/, /\b__dirname\b/, /\bsetImmediate\(/]) {
      assert.ok(!global.test(code), `${file} uses ${global.source}`);
    }
  }
});

test("the Node entry point adds TCP to everything of the main one", async () => {
  const main = await import("../index.js");
  const node = await import("../node.js");
  for (const name of Object.keys(main)) {
    if (name !== "connect") {
      assert.ok(name in node, `@broadcast/client/node lacks ${name}`);
    }
  }
  assert.equal(typeof node.TcpTransport, "function");
  assert.ok(!("TcpTransport" in main));
  assert.notEqual(node.connect, main.connect);
});
