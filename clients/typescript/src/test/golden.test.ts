/**
 * Golden vectors: every file of `protocol/tests/vectors/` decodes to the value the Rust test
 * `protocol/tests/golden.rs` says it is, and that value encodes back to the same bytes. The
 * set of files must be exactly the set known here, so that a vector added to the protocol
 * fails this test until it is added here too. The variant tables of `PROTOCOL.md` are checked
 * against the codec's numbering the same way.
 */

import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { test } from "node:test";
import {
  decodeClientFrame,
  decodeServerFrame,
  encodeClientFrame,
  encodeServerFrame,
} from "../codec.js";
import {
  CLIENT_FRAME_TYPES,
  DEFAULT_MAX_FRAME,
  DEFAULT_MAX_PAYLOAD,
  ERROR_CODES,
  FAILURE_REASONS,
  RECIPIENT_TYPES,
  SERVER_FRAME_TYPES,
  TARGET_TYPES,
  type ClientFrame,
  type DeliveryFailed,
  type FailureReason,
  type Publish,
  type Recipient,
  type ServerFrame,
  type Target,
} from "../frames.js";
import { PACKAGE_DIR } from "./helpers.js";

/** The vectors, relative to the package. */
const VECTORS = resolve(PACKAGE_DIR, "../../protocol/tests/vectors");
const PROTOCOL_MD = resolve(PACKAGE_DIR, "../../protocol/PROTOCOL.md");

/** The message id used in the examples. */
const ID = "V1StGXR8_Z5jdHi6B-myT";

const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);

type Vector =
  | { readonly file: string; readonly side: "client"; readonly frame: ClientFrame }
  | { readonly file: string; readonly side: "server"; readonly frame: ServerFrame };

const client = (file: string, frame: ClientFrame): Vector => ({ file, side: "client", frame });
const server = (file: string, frame: ServerFrame): Vector => ({ file, side: "server", frame });

function publish(target: Target, fields: Partial<Publish> = {}): ClientFrame {
  return {
    type: "Publish",
    id: ID,
    target,
    name: undefined,
    data: bytes("hi"),
    persistent: false,
    ttlMs: undefined,
    resent: false,
    ...fields,
  };
}

function failed(recipient: Recipient, reason: FailureReason, detail: string): ServerFrame {
  const f: DeliveryFailed = { id: ID, recipient, reason, detail, ackTag: undefined };
  return { type: "DeliveryFailed", ...f };
}

/** Every example of `PROTOCOL.md`, as `golden.rs` writes them. */
const VECTOR_LIST: readonly Vector[] = [
  client("client_hello.bin", {
    type: "Hello",
    version: 1,
    name: "alice",
    token: undefined,
    namespace: undefined,
    maxFrame: DEFAULT_MAX_FRAME,
    heartbeatMs: 5000,
  }),
  client("client_hello_anonymous.bin", {
    type: "Hello",
    version: 1,
    name: undefined,
    token: undefined,
    namespace: undefined,
    maxFrame: 65536,
    heartbeatMs: 0,
  }),
  client(
    "client_publish_client.bin",
    publish(
      { type: "Client", client: "bob" },
      { name: "greeting", data: bytes("hello"), persistent: true, ttlMs: 60_000n },
    ),
  ),
  client(
    "client_publish_group.bin",
    publish({ type: "Group", clients: ["bob", "carol"] }, { data: new Uint8Array([0x00, 0xff]) }),
  ),
  client("client_publish_channel.bin", publish({ type: "Channel", channel: "news" })),
  client(
    "client_publish_channels.bin",
    publish(
      { type: "Channels", channels: ["news", "sport"] },
      { persistent: true, ttlMs: 1000n, resent: true },
    ),
  ),
  client(
    "client_publish_client_in_channel.bin",
    publish({ type: "ClientInChannel", client: "bob", channel: "news" }),
  ),
  client("client_publish_all.bin", publish({ type: "All" }, { data: new Uint8Array(0) })),
  client("client_subscribe.bin", { type: "Subscribe", channel: "news" }),
  client("client_unsubscribe.bin", { type: "Unsubscribe", channel: "news" }),
  client("client_ack.bin", { type: "Ack", tags: [1n, 250n, 251n, 70_000n] }),
  client("client_ping.bin", { type: "Ping", nonce: 1n }),
  client("client_pong.bin", { type: "Pong", nonce: 1n << 32n }),
  client("client_bye.bin", { type: "Bye" }),
  server("server_welcome.bin", {
    type: "Welcome",
    version: 1,
    name: "alice",
    server: "broadcast 0.1.0",
    maxFrame: DEFAULT_MAX_FRAME,
    maxPayload: DEFAULT_MAX_PAYLOAD,
    heartbeatMs: 5000,
    identity: undefined,
    namespace: undefined,
    expiresMs: undefined,
  }),
  server("server_deliver.bin", {
    type: "Deliver",
    id: ID,
    sender: "carol",
    channel: "news",
    name: "greeting",
    data: bytes("hello"),
    persistent: false,
    redelivered: false,
    ackTag: undefined,
  }),
  server("server_deliver_persistent.bin", {
    type: "Deliver",
    id: ID,
    sender: "alice",
    channel: undefined,
    name: undefined,
    data: bytes("hi"),
    persistent: true,
    redelivered: true,
    ackTag: 300n,
  }),
  server(
    "server_delivery_failed.bin",
    failed({ type: "Client", client: "bob" }, "NotConnected", "bob is offline"),
  ),
  server(
    "server_delivery_failed_channel.bin",
    failed({ type: "Channel", channel: "news" }, "NoSubscribers", ""),
  ),
  server("server_delivery_failed_all.bin", failed({ type: "All" }, "Expired", "")),
  server("server_accepted.bin", { type: "Accepted", id: ID }),
  server("server_subscribed.bin", { type: "Subscribed", channel: "news" }),
  server("server_unsubscribed.bin", { type: "Unsubscribed", channel: "news" }),
  server("server_error.bin", {
    type: "Error",
    code: "FrameTooLarge",
    message: "frame too large",
    id: undefined,
  }),
  server("server_error_with_id.bin", {
    type: "Error",
    code: "PayloadTooLarge",
    message: "too large",
    id: ID,
  }),
  server("server_ping.bin", { type: "Ping", nonce: 1n << 32n }),
  server("server_pong.bin", { type: "Pong", nonce: 1n }),
  server("server_bye.bin", { type: "Bye", reason: "shutting down" }),
  client("client_hello_v2.bin", {
    type: "Hello",
    version: 2,
    name: "billing",
    token: "bc_secret",
    namespace: undefined,
    maxFrame: DEFAULT_MAX_FRAME,
    heartbeatMs: 5000,
  }),
  client("client_reauth.bin", { type: "Reauth", token: "bc_fresh" }),
  server("server_welcome_v2.bin", {
    type: "Welcome",
    version: 2,
    name: "billing",
    server: "broadcast 0.1.0",
    maxFrame: DEFAULT_MAX_FRAME,
    maxPayload: DEFAULT_MAX_PAYLOAD,
    heartbeatMs: 5000,
    identity: "billing",
    namespace: undefined,
    expiresMs: 1_800_000_000_000n,
  }),
  server("server_reauthed.bin", { type: "Reauthed", expiresMs: 1_800_000_000_000n }),
  server("server_error_forbidden.bin", {
    type: "Error",
    code: "Forbidden",
    message: "not allowed to send to bob",
    id: ID,
  }),
];

/** The checked-in bytes of a vector, as a plain `Uint8Array`. */
function stored(file: string): Uint8Array {
  return new Uint8Array(readFileSync(join(VECTORS, file)));
}

const hex = (b: Uint8Array): string => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join(" ");

test("the vector files are exactly the examples known here", () => {
  const known = VECTOR_LIST.map((v) => v.file).sort();
  assert.equal(new Set(known).size, known.length, "two examples share a file name");
  const onDisk = readdirSync(VECTORS)
    .filter((f) => f.endsWith(".bin"))
    .sort();
  assert.deepEqual(
    onDisk,
    known,
    "vector files without an example here, or examples here without a file",
  );
});

for (const v of VECTOR_LIST) {
  test(`${v.file} decodes to its example and the example encodes to it`, () => {
    const file = stored(v.file);
    const decoded = v.side === "client" ? decodeClientFrame(file) : decodeServerFrame(file);
    assert.deepStrictEqual(decoded, v.frame);
    const encoded =
      v.side === "client" ? encodeClientFrame(v.frame) : encodeServerFrame(v.frame);
    assert.equal(hex(encoded), hex(file));
  });
}

test("the examples cover every variant of every frame enum", () => {
  const clientTypes = new Set(
    VECTOR_LIST.filter((v) => v.side === "client").map((v) => v.frame.type),
  );
  const serverTypes = new Set(
    VECTOR_LIST.filter((v) => v.side === "server").map((v) => v.frame.type),
  );
  assert.deepEqual([...clientTypes].sort(), [...CLIENT_FRAME_TYPES].sort());
  assert.deepEqual([...serverTypes].sort(), [...SERVER_FRAME_TYPES].sort());
});

/** The rows `| <number> | `<Name>` | ...` of the table after `<!-- variants: <ty> -->`. */
function variantTable(doc: string, ty: string): string[] {
  const marker = `<!-- variants: ${ty} -->`;
  const start = doc.indexOf(marker);
  assert.ok(start >= 0, `PROTOCOL.md has no ${marker}`);
  const rows: [number, string][] = [];
  for (const line of doc.slice(start + marker.length).split("\n").slice(1)) {
    if (!line.trim().startsWith("|")) {
      if (rows.length > 0 || line.trim() !== "") {
        break;
      }
      continue;
    }
    const cells = line.split("|").map((c) => c.trim());
    const n = Number(cells[1]);
    if (Number.isInteger(n) && cells[1] !== "") {
      rows.push([n, (cells[2] ?? "").replace(/`/g, "")]);
    }
  }
  rows.forEach(([n], i) => assert.equal(n, i, `${ty}: rows numbered in order`));
  return rows.map(([, name]) => name);
}

test("PROTOCOL.md numbers every variant as this codec does", () => {
  const doc = readFileSync(PROTOCOL_MD, "utf8");
  assert.deepEqual(variantTable(doc, "ClientFrame"), [...CLIENT_FRAME_TYPES]);
  assert.deepEqual(variantTable(doc, "ServerFrame"), [...SERVER_FRAME_TYPES]);
  assert.deepEqual(variantTable(doc, "Target"), [...TARGET_TYPES]);
  assert.deepEqual(variantTable(doc, "Recipient"), [...RECIPIENT_TYPES]);
  assert.deepEqual(variantTable(doc, "FailureReason"), [...FAILURE_REASONS]);
  assert.deepEqual(variantTable(doc, "ErrorCode"), [...ERROR_CODES]);
});
