/**
 * The codec against random frames (seeded, so a failure can be replayed), cut and damaged
 * input, and hostile length prefixes.
 */

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  FrameDecoder,
  decodeClientBody,
  decodeClientFrame,
  decodeServerBody,
  decodeServerFrame,
  encodeClientFrame,
  encodeServerFrame,
  frameBody,
  markResent,
} from "../codec.js";
import { CodecError } from "../errors.js";
import {
  DEFAULT_MAX_FRAME,
  ERROR_CODES,
  FAILURE_REASONS,
  HEADER_LEN,
  MAX_ACK_TAGS,
  MAX_FRAME_CAP,
  MAX_LIST,
  type ClientFrame,
  type Recipient,
  type ServerFrame,
  type Target,
} from "../frames.js";

/** Seed of the random runs: `CODEC_SEED` replays one. */
const SEED = Number(process.env["CODEC_SEED"] ?? Date.now() % 1_000_000);
const ROUNDS = 2000;

/** mulberry32: a small seeded generator. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class Gen {
  readonly next: () => number;
  constructor(seed: number) {
    this.next = rng(seed);
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)] as T;
  }
  bool(): boolean {
    return this.next() < 0.5;
  }
  /** Integers at and around every varint boundary. */
  uint(max: number): number {
    const edges = [0, 1, 250, 251, 252, 0xffff, 0x1_0000, 0xffff_ffff].filter((e) => e <= max);
    return this.bool() ? this.pick(edges) : this.int(max + 1);
  }
  u64(): bigint {
    const edges = [0n, 250n, 251n, 0xffffn, 0x1_0000n, 0xffff_ffffn, 1n << 32n, (1n << 63n) + 5n, (1n << 64n) - 1n];
    if (this.bool()) {
      return this.pick(edges);
    }
    return (BigInt(this.int(0x1_0000_0000)) << 32n) | BigInt(this.int(0x1_0000_0000));
  }
  string(): string {
    const alphabets = ["abcXYZ09_-.", "é漢字🙂\u{feff}\u00a0", " \t\n"];
    const len = this.pick([0, 1, 5, 83, 84, 250, 300, this.int(40)]);
    const alphabet = [...this.pick(alphabets)];
    let s = "";
    for (let i = 0; i < len; i++) {
      s += this.pick(alphabet);
    }
    return s;
  }
  optString(): string | undefined {
    return this.bool() ? undefined : this.string();
  }
  optU64(): bigint | undefined {
    return this.bool() ? undefined : this.u64();
  }
  bytes(): Uint8Array {
    const len = this.pick([0, 1, 250, 251, 70_000, this.int(64)]);
    const b = new Uint8Array(len);
    for (let i = 0; i < len; i++) {
      b[i] = this.int(256);
    }
    return b;
  }
  list<T>(make: () => T, max = 8): T[] {
    return Array.from({ length: this.int(max + 1) }, make);
  }
  target(): Target {
    switch (this.int(6)) {
      case 0:
        return { type: "Client", client: this.string() };
      case 1:
        return { type: "Group", clients: this.list(() => this.string()) };
      case 2:
        return { type: "Channel", channel: this.string() };
      case 3:
        return { type: "Channels", channels: this.list(() => this.string()) };
      case 4:
        return { type: "ClientInChannel", client: this.string(), channel: this.string() };
      default:
        return { type: "All" };
    }
  }
  recipient(): Recipient {
    switch (this.int(3)) {
      case 0:
        return { type: "Client", client: this.string() };
      case 1:
        return { type: "Channel", channel: this.string() };
      default:
        return { type: "All" };
    }
  }
  clientFrame(): ClientFrame {
    switch (this.int(9)) {
      case 0:
        return {
          type: "Hello",
          version: this.pick([1, 2]),
          name: this.optString(),
          token: this.optString(),
          namespace: this.optString(),
          maxFrame: this.uint(0xffff_ffff),
          heartbeatMs: this.uint(0xffff_ffff),
        };
      case 1:
        return {
          type: "Publish",
          id: this.string(),
          target: this.target(),
          name: this.optString(),
          data: this.bytes(),
          persistent: this.bool(),
          ttlMs: this.optU64(),
          resent: this.bool(),
        };
      case 2:
        return { type: "Subscribe", channel: this.string() };
      case 3:
        return { type: "Unsubscribe", channel: this.string() };
      case 4:
        return { type: "Ack", tags: this.list(() => this.u64(), 300) };
      case 5:
        return { type: "Ping", nonce: this.u64() };
      case 6:
        return { type: "Pong", nonce: this.u64() };
      case 7:
        return { type: "Bye" };
      default:
        return { type: "Reauth", token: this.string() };
    }
  }
  serverFrame(): ServerFrame {
    switch (this.int(11)) {
      case 0: {
        const version = this.pick([1, 2]);
        const v2 = version === 2;
        return {
          type: "Welcome",
          version,
          name: this.string(),
          server: this.string(),
          maxFrame: this.uint(0xffff_ffff),
          maxPayload: this.uint(0xffff_ffff),
          heartbeatMs: this.uint(0xffff_ffff),
          identity: v2 ? this.optString() : undefined,
          namespace: v2 ? this.optString() : undefined,
          expiresMs: v2 ? this.optU64() : undefined,
        };
      }
      case 1:
        return {
          type: "Deliver",
          id: this.string(),
          sender: this.string(),
          channel: this.optString(),
          name: this.optString(),
          data: this.bytes(),
          persistent: this.bool(),
          redelivered: this.bool(),
          ackTag: this.optU64(),
        };
      case 2:
        return {
          type: "DeliveryFailed",
          id: this.string(),
          recipient: this.recipient(),
          reason: this.pick(FAILURE_REASONS),
          detail: this.string(),
          ackTag: this.optU64(),
        };
      case 3:
        return { type: "Accepted", id: this.string() };
      case 4:
        return { type: "Subscribed", channel: this.string() };
      case 5:
        return { type: "Unsubscribed", channel: this.string() };
      case 6:
        return { type: "Error", code: this.pick(ERROR_CODES), message: this.string(), id: this.optString() };
      case 7:
        return { type: "Ping", nonce: this.u64() };
      case 8:
        return { type: "Pong", nonce: this.u64() };
      case 9:
        return { type: "Bye", reason: this.string() };
      default:
        return { type: "Reauthed", expiresMs: this.optU64() };
    }
  }
}

/** Runs `check` and says which seed to replay when it fails. */
function seeded(name: string, check: (g: Gen) => void): void {
  test(`${name} (CODEC_SEED=${SEED})`, () => check(new Gen(SEED)));
}

/** Asserts that `f` throws a CodecError (of `code`, if given), and nothing else. */
function throwsCodec(f: () => unknown, code?: CodecError["code"]): CodecError {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof CodecError, `expected a CodecError, got ${String(e)}`);
    if (code !== undefined) {
      assert.equal(e.code, code, e.message);
    }
    return e;
  }
  assert.fail("expected a CodecError, nothing was thrown");
}

const body = (frame: Uint8Array): Uint8Array => frame.subarray(HEADER_LEN);

seeded("random frames round-trip in both directions", (g) => {
  for (let i = 0; i < ROUNDS; i++) {
    const c = g.clientFrame();
    assert.deepStrictEqual(decodeClientFrame(encodeClientFrame(c)), c);
    const s = g.serverFrame();
    assert.deepStrictEqual(decodeServerFrame(encodeServerFrame(s)), s);
  }
});

seeded("a stream cut anywhere yields the same frames, in order", (g) => {
  const frames = Array.from({ length: 300 }, () => g.serverFrame());
  const encoded = frames.map((f) => encodeServerFrame(f));
  const total = encoded.reduce((n, e) => n + e.length, 0);
  const stream = new Uint8Array(total);
  let at = 0;
  for (const e of encoded) {
    stream.set(e, at);
    at += e.length;
  }
  const decoder = new FrameDecoder(MAX_FRAME_CAP);
  const out: ServerFrame[] = [];
  for (let pos = 0; pos < stream.length; ) {
    const n = Math.min(stream.length - pos, g.pick([1, 2, 3, 7, 100, 4096, 70_000]));
    decoder.push(stream.subarray(pos, pos + n));
    pos += n;
    for (let b = decoder.next(); b !== undefined; b = decoder.next()) {
      out.push(decodeServerBody(b));
    }
  }
  assert.equal(decoder.buffered, 0);
  assert.deepStrictEqual(out, frames);
});

seeded("every cut-short body is refused as malformed, and so is one byte too many", (g) => {
  for (let i = 0; i < 300; i++) {
    const c = body(encodeClientFrame(g.clientFrame()));
    const s = body(encodeServerFrame(g.serverFrame()));
    for (const [b, decode] of [
      [c, decodeClientBody],
      [s, decodeServerBody],
    ] as const) {
      const step = Math.max(1, Math.floor(b.length / 40));
      for (let len = 0; len < b.length; len += step) {
        throwsCodec(() => decode(b.subarray(0, len)), "Malformed");
      }
      const longer = new Uint8Array(b.length + 1);
      longer.set(b);
      throwsCodec(() => decode(longer), "Malformed");
    }
  }
});

seeded("garbage and damaged frames give a CodecError or a frame, never anything else", (g) => {
  for (let i = 0; i < ROUNDS; i++) {
    const garbage = new Uint8Array(g.int(64));
    for (let j = 0; j < garbage.length; j++) {
      garbage[j] = g.int(256);
    }
    for (const decode of [decodeClientBody, decodeServerBody]) {
      try {
        decode(garbage);
      } catch (e) {
        assert.ok(e instanceof CodecError, `not a CodecError: ${String(e)}`);
      }
    }
    const damaged = encodeServerFrame(g.serverFrame()).slice(HEADER_LEN);
    for (let k = 0; k < 3 && damaged.length > 0; k++) {
      damaged[g.int(damaged.length)] = g.int(256);
    }
    try {
      decodeServerBody(damaged);
    } catch (e) {
      assert.ok(e instanceof CodecError, `not a CodecError: ${String(e)}`);
    }
  }
});

test("an oversized length prefix is refused before anything is kept for it", () => {
  const decoder = new FrameDecoder(4096);
  decoder.push(new Uint8Array([0x00, 0x00, 0x10, 0x01, 0x01]));
  const e = throwsCodec(() => decoder.next(), "FrameTooLarge");
  assert.equal(e.length, 4097);
  assert.equal(e.limit, 4096);
  // The stream cannot be trusted after that: the decoder stays failed.
  decoder.push(encodeServerFrame({ type: "Pong", nonce: 1n }));
  throwsCodec(() => decoder.next(), "FrameTooLarge");
  throwsCodec(() => frameBody(new Uint8Array([0xff, 0xff, 0xff, 0xff]), DEFAULT_MAX_FRAME), "FrameTooLarge");
});

test("a frame announced within the limit takes room only for the bytes that arrived", () => {
  const before = process.memoryUsage().arrayBuffers;
  const decoders: FrameDecoder[] = [];
  for (let i = 0; i < 16; i++) {
    const decoder = new FrameDecoder(MAX_FRAME_CAP);
    // 64 MiB announced, 10 bytes sent, in two chunks so that the decoder keeps its own copy.
    decoder.push(new Uint8Array([0x04, 0x00, 0x00, 0x00, 1]));
    decoder.push(new Uint8Array([2, 3, 4, 5, 6, 7, 8, 9, 10]));
    assert.equal(decoder.next(), undefined);
    assert.equal(decoder.buffered, 14);
    decoders.push(decoder);
  }
  const grown = process.memoryUsage().arrayBuffers - before;
  assert.ok(grown < 16 * 1024 * 1024, `16 decoders waiting for 64 MiB frames took ${grown} bytes`);
  assert.equal(decoders.length, 16);
});

test("hostile lengths and counts inside a body are refused without allocating", () => {
  // Subscribe with a channel of 2^64 - 1 bytes, then of 2^32 bytes.
  throwsCodec(() => decodeClientBody(new Uint8Array([2, 0xfd, 255, 255, 255, 255, 255, 255, 255, 255])), "Malformed");
  throwsCodec(() => decodeClientBody(new Uint8Array([2, 0xfd, 0, 0, 0, 0, 1, 0, 0, 0])), "Malformed");
  // An Ack of 2^32 - 1 tags, of MAX_ACK_TAGS + 1, and a group of MAX_LIST + 1 names.
  throwsCodec(() => decodeClientBody(new Uint8Array([4, 0xfc, 255, 255, 255, 255, 1])), "Malformed");
  const acks = encodeClientFrame({ type: "Ack", tags: Array.from({ length: MAX_ACK_TAGS }, () => 1n) });
  const tooMany = body(acks).slice();
  tooMany.set([0xfb, (MAX_ACK_TAGS + 1) & 0xff, (MAX_ACK_TAGS + 1) >> 8], 1);
  throwsCodec(() => decodeClientBody(tooMany), "Malformed");
  const group = new Uint8Array([1, 1, 0x61, 1, 0xfb, (MAX_LIST + 1) & 0xff, (MAX_LIST + 1) >> 8]);
  throwsCodec(() => decodeClientBody(group), "Malformed");
});

test("each malformed shape of PROTOCOL.md section 1 is refused as malformed", () => {
  const server: [string, number[]][] = [
    ["an empty body", []],
    ["an unknown variant", [11]],
    ["a u32 marker in a u16 field (Welcome.version)", [0, 0xfc, 1, 0, 0, 0, 1, 0x61, 1, 0x61, 0, 0, 0]],
    ["a u64 marker in a u32 field (Welcome.max_frame)", [0, 1, 1, 0x61, 1, 0x61, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]],
    ["marker 254", [7, 0xfe]],
    ["marker 255", [7, 0xff]],
    ["a bool of 2 (Deliver.persistent)", [1, 1, 0x61, 1, 0x61, 0, 0, 0, 2, 0, 0]],
    ["an option tag of 2 (Reauthed.expires_ms)", [10, 2]],
    ["invalid UTF-8", [4, 2, 0xff, 0xfe]],
    ["a length past the end", [4, 5, 0x61]],
    ["an unknown failure reason", [2, 1, 0x61, 2, 10, 0, 0]],
    ["an unknown error code", [6, 15, 0, 0]],
    ["an unknown recipient", [2, 1, 0x61, 3, 0, 0, 0]],
  ];
  for (const [what, bytes] of server) {
    const e = throwsCodec(() => decodeServerBody(new Uint8Array(bytes)), "Malformed");
    assert.match(e.message, /malformed frame/, what);
  }
  const client: [string, number[]][] = [
    ["a u32 marker in a u16 field (Hello.version)", [0, 0xfc, 1, 0, 0, 0, 0, 0, 0, 0, 0]],
    ["a bool of 2 (Publish.persistent)", [1, 1, 0x61, 5, 0, 0, 2, 0, 0]],
    ["an unknown target", [1, 1, 0x61, 6, 0, 0, 0, 0, 0]],
    ["an unknown variant", [9]],
  ];
  for (const [what, bytes] of client) {
    const e = throwsCodec(() => decodeClientBody(new Uint8Array(bytes)), "Malformed");
    assert.match(e.message, /malformed frame/, what);
  }
});

test("a handshake of another version is refused as such, whatever follows", () => {
  for (const version of [0, 3, 250, 0xffff]) {
    const head = version <= 250 ? [0, version] : [0, 0xfb, version & 0xff, version >> 8];
    const e = throwsCodec(() => decodeServerBody(new Uint8Array([...head, 0xff, 0xff])), "UnsupportedVersion");
    assert.equal(e.version, version);
    throwsCodec(() => decodeClientBody(new Uint8Array(head)), "UnsupportedVersion");
  }
});

test("a longer integer form that fits its field is read, as the reference decoder does", () => {
  // Ping with nonce 5 written with a u16 marker.
  assert.deepStrictEqual(decodeServerBody(new Uint8Array([7, 0xfb, 5, 0])), { type: "Ping", nonce: 5n });
  // Encoders always write the shortest form.
  assert.deepStrictEqual([...body(encodeServerFrame({ type: "Ping", nonce: 5n }))], [7, 5]);
});

test("values out of their field's range are refused when encoding", () => {
  const hello = {
    type: "Hello",
    version: 2,
    name: undefined,
    token: undefined,
    namespace: undefined,
    maxFrame: 4096,
    heartbeatMs: 0,
  } as const;
  throwsCodec(() => encodeClientFrame({ ...hello, version: 70_000 }), "Encode");
  throwsCodec(() => encodeClientFrame({ ...hello, maxFrame: 2 ** 32 }), "Encode");
  throwsCodec(() => encodeClientFrame({ ...hello, heartbeatMs: 1.5 }), "Encode");
  throwsCodec(() => encodeClientFrame({ type: "Ping", nonce: 1n << 64n }), "Encode");
  throwsCodec(() => encodeClientFrame({ type: "Ping", nonce: -1n }), "Encode");
  throwsCodec(
    () => encodeClientFrame({ type: "Ack", tags: Array.from({ length: MAX_ACK_TAGS + 1 }, () => 0n) }),
    "Encode",
  );
  throwsCodec(
    () =>
      encodeClientFrame({
        type: "Publish",
        id: "x",
        target: { type: "Group", clients: Array.from({ length: MAX_LIST + 1 }, () => "a") },
        name: undefined,
        data: new Uint8Array(0),
        persistent: false,
        ttlMs: undefined,
        resent: false,
      }),
    "Encode",
  );
  throwsCodec(() => encodeClientFrame({ type: "Nope" } as unknown as ClientFrame), "Encode");
  throwsCodec(() => encodeClientFrame(null as unknown as ClientFrame), "Encode");
  const e = throwsCodec(
    () => encodeClientFrame({ type: "Subscribe", channel: "x".repeat(5000) }, 4096),
    "FrameTooLarge",
  );
  assert.equal(e.limit, 4096);
});

test("a kept Publish frame is marked resent by its last byte", () => {
  const frame = {
    type: "Publish",
    id: "m-1",
    target: { type: "Group", clients: ["a", "b"] },
    name: "ev",
    data: new Uint8Array([1, 2, 3]),
    persistent: true,
    ttlMs: undefined,
    resent: false,
  } as const;
  for (const ttlMs of [undefined, 0n, 300n, (1n << 64n) - 1n]) {
    const original = encodeClientFrame({ ...frame, ttlMs });
    const marked = markResent(original);
    assert.deepStrictEqual(marked, encodeClientFrame({ ...frame, ttlMs, resent: true }));
    assert.equal(original[original.length - 1], 0, "the original is left alone");
  }
  throwsCodec(() => markResent(encodeClientFrame({ type: "Bye" })), "Malformed");
});

test("a message must hold exactly one frame", () => {
  const frame = encodeServerFrame({ type: "Accepted", id: "m" });
  assert.deepStrictEqual(decodeServerBody(frameBody(frame, 4096)), { type: "Accepted", id: "m" });
  const longer = new Uint8Array(frame.length + 1);
  longer.set(frame);
  throwsCodec(() => frameBody(longer, 4096), "Malformed");
  throwsCodec(() => frameBody(frame.subarray(0, frame.length - 1), 4096), "Malformed");
  throwsCodec(() => frameBody(new Uint8Array([0, 0]), 4096), "Malformed");
});
