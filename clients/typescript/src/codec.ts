/**
 * The wire codec of the Broadcast protocol (`protocol/PROTOCOL.md` sections 1 and 2): frames
 * are a 4-byte big-endian body length followed by a body in bincode 2's standard encoding
 * (variable-length little-endian integers, no field names, no padding).
 *
 * - {@link encodeClientFrame} and {@link encodeServerFrame} write a complete frame, header
 *   included, and refuse one longer than the limit they are given.
 * - {@link decodeClientBody} and {@link decodeServerBody} read one body;
 *   {@link decodeClientFrame} and {@link decodeServerFrame} one complete frame.
 * - {@link FrameDecoder} cuts a byte stream (TCP) into frame bodies, checking each header
 *   against the receive limit before it keeps any room for the body.
 * - {@link frameBody} takes the body out of a message that holds exactly one frame
 *   (a WebSocket message).
 *
 * Decoding never allocates more than the bytes it was given: every length is checked against
 * what is left of the body before anything is read or reserved for it. Every failure is a
 * {@link CodecError}; nothing else is thrown. Only `Uint8Array` and `DataView` are used, so
 * the codec runs in browsers as well as in Node.
 *
 * @module
 */

import { CodecError } from "./errors.js";
import {
  ERROR_CODES,
  FAILURE_REASONS,
  HEADER_LEN,
  MAX_ACK_TAGS,
  MAX_FRAME_CAP,
  MAX_LIST,
  MIN_PROTOCOL_VERSION,
  PROTOCOL_VERSION,
  type ClientFrame,
  type ErrorCode,
  type FailureReason,
  type Publish,
  type Recipient,
  type ServerFrame,
  type Target,
} from "./frames.js";

const U16_MAX = 0xffff;
const U32_MAX = 0xffff_ffff;
const U64_MAX = (1n << 64n) - 1n;

/** Integers up to this are written as one byte. */
const SINGLE_BYTE_MAX = 250;
/** Marker of a `u16` following, little-endian. */
const MARK_U16 = 251;
/** Marker of a `u32` following, little-endian. */
const MARK_U32 = 252;
/** Marker of a `u64` following, little-endian. */
const MARK_U64 = 253;

/** Strings up to this many UTF-16 units encode to at most 250 bytes: a one-byte length. */
const SHORT_STRING = Math.floor(SINGLE_BYTE_MAX / 3);

const utf8Encoder = new TextEncoder();
// `ignoreBOM`: a leading U+FEFF is part of the string, not a marker to strip.
const utf8Decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

function malformed(detail: string): CodecError {
  return new CodecError("Malformed", `malformed frame: ${detail}`);
}

function unencodable(detail: string): CodecError {
  return new CodecError("Encode", `cannot encode frame: ${detail}`);
}

// ---- writing -----------------------------------------------------------------------------

/** A growing buffer that frames are written into. */
class Writer {
  private buf: Uint8Array;
  private view: DataView;
  /** Where the next byte goes. */
  pos = 0;

  constructor(capacity: number) {
    this.buf = new Uint8Array(Math.max(16, capacity));
    this.view = new DataView(this.buf.buffer);
  }

  private reserve(extra: number): void {
    const need = this.pos + extra;
    if (need <= this.buf.length) {
      return;
    }
    let cap = this.buf.length * 2;
    while (cap < need) {
      cap *= 2;
    }
    const next = new Uint8Array(cap);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  u8(b: number): void {
    this.reserve(1);
    this.buf[this.pos++] = b;
  }

  /** A varint of a non-negative safe integer, in its shortest form. */
  uint(v: number): void {
    if (v <= SINGLE_BYTE_MAX) {
      this.u8(v);
    } else if (v <= U16_MAX) {
      this.reserve(3);
      this.buf[this.pos] = MARK_U16;
      this.view.setUint16(this.pos + 1, v, true);
      this.pos += 3;
    } else if (v <= U32_MAX) {
      this.reserve(5);
      this.buf[this.pos] = MARK_U32;
      this.view.setUint32(this.pos + 1, v, true);
      this.pos += 5;
    } else {
      this.u64(BigInt(v));
    }
  }

  /** A varint of a `u64`, in its shortest form. */
  u64(v: bigint): void {
    if (v <= BigInt(U32_MAX)) {
      this.uint(Number(v));
      return;
    }
    this.reserve(9);
    this.buf[this.pos] = MARK_U64;
    this.view.setBigUint64(this.pos + 1, v, true);
    this.pos += 9;
  }

  bool(v: boolean): void {
    this.u8(v ? 1 : 0);
  }

  bytes(b: Uint8Array): void {
    this.uint(b.length);
    this.reserve(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }

  str(s: string): void {
    if (s.length <= SHORT_STRING) {
      // At most 250 bytes of UTF-8: a one-byte length, written once the bytes are.
      this.reserve(1 + s.length * 3);
      const { written } = utf8Encoder.encodeInto(s, this.buf.subarray(this.pos + 1));
      this.buf[this.pos] = written;
      this.pos += 1 + written;
      return;
    }
    this.bytes(utf8Encoder.encode(s));
  }

  /** The bytes written so far. */
  finish(): Uint8Array {
    return this.buf.subarray(0, this.pos);
  }

  /** Writes a big-endian `u32` at `at`, over bytes already written. */
  patchU32BE(at: number, v: number): void {
    this.view.setUint32(at, v, false);
  }
}

function checkU16(v: unknown, field: string): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > U16_MAX) {
    throw unencodable(`${field} must be an integer from 0 to ${U16_MAX}, not ${String(v)}`);
  }
  return v;
}

function checkU32(v: unknown, field: string): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > U32_MAX) {
    throw unencodable(`${field} must be an integer from 0 to ${U32_MAX}, not ${String(v)}`);
  }
  return v;
}

function checkU64(v: unknown, field: string): bigint {
  if (typeof v !== "bigint" || v < 0n || v > U64_MAX) {
    throw unencodable(`${field} must be a bigint from 0 to 2^64 - 1, not ${String(v)}`);
  }
  return v;
}

function checkString(v: unknown, field: string): string {
  if (typeof v !== "string") {
    throw unencodable(`${field} must be a string, not ${typeof v}`);
  }
  return v;
}

function checkBool(v: unknown, field: string): boolean {
  if (typeof v !== "boolean") {
    throw unencodable(`${field} must be a boolean, not ${typeof v}`);
  }
  return v;
}

function checkBytes(v: unknown, field: string): Uint8Array {
  if (!(v instanceof Uint8Array)) {
    throw unencodable(`${field} must be a Uint8Array`);
  }
  return v;
}

function writeOptString(w: Writer, v: unknown, field: string): void {
  if (v === undefined) {
    w.u8(0);
  } else {
    w.u8(1);
    w.str(checkString(v, field));
  }
}

function writeOptU64(w: Writer, v: unknown, field: string): void {
  if (v === undefined) {
    w.u8(0);
  } else {
    w.u8(1);
    w.u64(checkU64(v, field));
  }
}

function writeStringList(w: Writer, v: unknown, max: number, field: string): void {
  if (!Array.isArray(v)) {
    throw unencodable(`${field} must be an array of strings`);
  }
  if (v.length > max) {
    throw unencodable(`${field} holds ${v.length} names, at most ${max}`);
  }
  w.uint(v.length);
  for (const item of v) {
    w.str(checkString(item, field));
  }
}

function writeTarget(w: Writer, t: Target): void {
  switch (t?.type) {
    case "Client":
      w.u8(0);
      w.str(checkString(t.client, "target.client"));
      return;
    case "Group":
      w.u8(1);
      writeStringList(w, t.clients, MAX_LIST, "target.clients");
      return;
    case "Channel":
      w.u8(2);
      w.str(checkString(t.channel, "target.channel"));
      return;
    case "Channels":
      w.u8(3);
      writeStringList(w, t.channels, MAX_LIST, "target.channels");
      return;
    case "ClientInChannel":
      w.u8(4);
      w.str(checkString(t.client, "target.client"));
      w.str(checkString(t.channel, "target.channel"));
      return;
    case "All":
      w.u8(5);
      return;
    default:
      throw unencodable(`unknown target type ${String((t as { type?: unknown })?.type)}`);
  }
}

function writeRecipient(w: Writer, r: Recipient): void {
  switch (r?.type) {
    case "Client":
      w.u8(0);
      w.str(checkString(r.client, "recipient.client"));
      return;
    case "Channel":
      w.u8(1);
      w.str(checkString(r.channel, "recipient.channel"));
      return;
    case "All":
      w.u8(2);
      return;
    default:
      throw unencodable(`unknown recipient type ${String((r as { type?: unknown })?.type)}`);
  }
}

function writeIndexOf<T extends string>(w: Writer, all: readonly T[], v: T, field: string): void {
  const i = all.indexOf(v);
  if (i < 0) {
    throw unencodable(`${field}: unknown value ${String(v)}`);
  }
  w.u8(i);
}

function writePublish(w: Writer, p: Publish): void {
  w.str(checkString(p.id, "id"));
  writeTarget(w, p.target);
  writeOptString(w, p.name, "name");
  w.bytes(checkBytes(p.data, "data"));
  w.bool(checkBool(p.persistent, "persistent"));
  writeOptU64(w, p.ttlMs, "ttlMs");
  w.bool(checkBool(p.resent, "resent"));
}

function writeClientFrame(w: Writer, f: ClientFrame): void {
  switch (f?.type) {
    case "Hello":
      w.u8(0);
      w.uint(checkU16(f.version, "version"));
      writeOptString(w, f.name, "name");
      writeOptString(w, f.token, "token");
      writeOptString(w, f.namespace, "namespace");
      w.uint(checkU32(f.maxFrame, "maxFrame"));
      w.uint(checkU32(f.heartbeatMs, "heartbeatMs"));
      return;
    case "Publish":
      w.u8(1);
      writePublish(w, f);
      return;
    case "Subscribe":
      w.u8(2);
      w.str(checkString(f.channel, "channel"));
      return;
    case "Unsubscribe":
      w.u8(3);
      w.str(checkString(f.channel, "channel"));
      return;
    case "Ack": {
      w.u8(4);
      if (!Array.isArray(f.tags)) {
        throw unencodable("tags must be an array of bigints");
      }
      if (f.tags.length > MAX_ACK_TAGS) {
        throw unencodable(`an Ack holds ${f.tags.length} tags, at most ${MAX_ACK_TAGS}`);
      }
      w.uint(f.tags.length);
      for (const tag of f.tags) {
        w.u64(checkU64(tag, "tag"));
      }
      return;
    }
    case "Ping":
      w.u8(5);
      w.u64(checkU64(f.nonce, "nonce"));
      return;
    case "Pong":
      w.u8(6);
      w.u64(checkU64(f.nonce, "nonce"));
      return;
    case "Bye":
      w.u8(7);
      return;
    case "Reauth":
      w.u8(8);
      w.str(checkString(f.token, "token"));
      return;
    default:
      throw unencodable(`unknown client frame type ${String((f as { type?: unknown })?.type)}`);
  }
}

function writeServerFrame(w: Writer, f: ServerFrame): void {
  switch (f?.type) {
    case "Welcome": {
      w.u8(0);
      const version = checkU16(f.version, "version");
      w.uint(version);
      w.str(checkString(f.name, "name"));
      w.str(checkString(f.server, "server"));
      w.uint(checkU32(f.maxFrame, "maxFrame"));
      w.uint(checkU32(f.maxPayload, "maxPayload"));
      w.uint(checkU32(f.heartbeatMs, "heartbeatMs"));
      if (version >= 2) {
        writeOptString(w, f.identity, "identity");
        writeOptString(w, f.namespace, "namespace");
        writeOptU64(w, f.expiresMs, "expiresMs");
      }
      return;
    }
    case "Deliver":
      w.u8(1);
      w.str(checkString(f.id, "id"));
      w.str(checkString(f.sender, "sender"));
      writeOptString(w, f.channel, "channel");
      writeOptString(w, f.name, "name");
      w.bytes(checkBytes(f.data, "data"));
      w.bool(checkBool(f.persistent, "persistent"));
      w.bool(checkBool(f.redelivered, "redelivered"));
      writeOptU64(w, f.ackTag, "ackTag");
      return;
    case "DeliveryFailed":
      w.u8(2);
      w.str(checkString(f.id, "id"));
      writeRecipient(w, f.recipient);
      writeIndexOf(w, FAILURE_REASONS, f.reason, "reason");
      w.str(checkString(f.detail, "detail"));
      writeOptU64(w, f.ackTag, "ackTag");
      return;
    case "Accepted":
      w.u8(3);
      w.str(checkString(f.id, "id"));
      return;
    case "Subscribed":
      w.u8(4);
      w.str(checkString(f.channel, "channel"));
      return;
    case "Unsubscribed":
      w.u8(5);
      w.str(checkString(f.channel, "channel"));
      return;
    case "Error":
      w.u8(6);
      writeIndexOf(w, ERROR_CODES, f.code, "code");
      w.str(checkString(f.message, "message"));
      writeOptString(w, f.id, "id");
      return;
    case "Ping":
      w.u8(7);
      w.u64(checkU64(f.nonce, "nonce"));
      return;
    case "Pong":
      w.u8(8);
      w.u64(checkU64(f.nonce, "nonce"));
      return;
    case "Bye":
      w.u8(9);
      w.str(checkString(f.reason, "reason"));
      return;
    case "Reauthed":
      w.u8(10);
      writeOptU64(w, f.expiresMs, "expiresMs");
      return;
    default:
      throw unencodable(`unknown server frame type ${String((f as { type?: unknown })?.type)}`);
  }
}

/** About how many bytes `frame` takes, so that the buffer rarely has to grow. */
function sizeHint(frame: unknown): number {
  const data = typeof frame === "object" && frame !== null ? (frame as { data?: unknown }).data : undefined;
  return 96 + (data instanceof Uint8Array ? data.length : 0);
}

function encodeWith<F>(
  frame: F,
  maxFrame: number,
  write: (w: Writer, f: F) => void,
): Uint8Array {
  const w = new Writer(sizeHint(frame));
  w.pos = HEADER_LEN;
  try {
    write(w, frame);
  } catch (e) {
    if (e instanceof CodecError) {
      throw e;
    }
    throw unencodable(e instanceof Error ? e.message : String(e));
  }
  const len = w.pos - HEADER_LEN;
  const limit = Math.min(maxFrame, MAX_FRAME_CAP);
  if (len > limit) {
    throw new CodecError(
      "FrameTooLarge",
      `frame of ${len} bytes exceeds the limit of ${limit} bytes`,
      { length: len, limit },
    );
  }
  w.patchU32BE(0, len);
  return w.finish();
}

/**
 * Encodes a frame a client sends, header included.
 *
 * @param maxFrame - the largest body allowed: the peer's receive limit (`Welcome.maxFrame`);
 *   at most {@link MAX_FRAME_CAP}.
 * @throws {@link CodecError} `Encode` when a field is out of its range or of the wrong type,
 *   `FrameTooLarge` when the body is longer than `maxFrame`.
 */
export function encodeClientFrame(frame: ClientFrame, maxFrame: number = MAX_FRAME_CAP): Uint8Array {
  return encodeWith(frame, maxFrame, writeClientFrame);
}

/**
 * Encodes a frame the broker sends, header included (for tests and tools that play the
 * broker's side).
 *
 * @param maxFrame - the largest body allowed: the client's receive limit (`Hello.maxFrame`).
 * @throws {@link CodecError} as {@link encodeClientFrame}.
 */
export function encodeServerFrame(frame: ServerFrame, maxFrame: number = MAX_FRAME_CAP): Uint8Array {
  return encodeWith(frame, maxFrame, writeServerFrame);
}

/**
 * The same encoded `Publish` frame with its `resent` field set: `resent` is the frame's last
 * byte (`PROTOCOL.md` section 5), so a kept frame is marked without being encoded again.
 *
 * @throws {@link CodecError} `Malformed` when `frame` is not a complete `Publish` frame.
 */
export function markResent(frame: Uint8Array): Uint8Array {
  if (frame.length <= HEADER_LEN || frame[HEADER_LEN] !== 1) {
    throw malformed("not an encoded Publish frame");
  }
  const copy = new Uint8Array(frame.length);
  copy.set(frame);
  copy[copy.length - 1] = 1;
  return copy;
}

// ---- reading -----------------------------------------------------------------------------

/** Reads a body from its start; every read checks what is left first. */
class Reader {
  private readonly buf: Uint8Array;
  private readonly view: DataView;
  private pos = 0;

  constructor(buf: Uint8Array) {
    this.buf = buf;
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  private get remaining(): number {
    return this.buf.length - this.pos;
  }

  private need(n: number, what: string): void {
    if (this.remaining < n) {
      throw malformed(`${what}: the body ends early`);
    }
  }

  u8(what: string): number {
    this.need(1, what);
    return this.buf[this.pos++] as number;
  }

  /**
   * A varint of a field of `bits` bits: a marker wider than the field is malformed. A longer
   * form than needed that fits the field is read, as the reference decoder does.
   */
  uint(bits: 16 | 32, what: string): number {
    const b = this.u8(what);
    if (b <= SINGLE_BYTE_MAX) {
      return b;
    }
    if (b === MARK_U16) {
      this.need(2, what);
      const v = this.view.getUint16(this.pos, true);
      this.pos += 2;
      return v;
    }
    if (b === MARK_U32) {
      if (bits === 16) {
        throw malformed(`${what}: a u32 marker in a u16 field`);
      }
      this.need(4, what);
      const v = this.view.getUint32(this.pos, true);
      this.pos += 4;
      return v;
    }
    if (b === MARK_U64) {
      throw malformed(`${what}: a u64 marker in a u${bits} field`);
    }
    throw malformed(`${what}: invalid integer marker 0x${b.toString(16)}`);
  }

  u64(what: string): bigint {
    const b = this.u8(what);
    if (b <= SINGLE_BYTE_MAX) {
      return BigInt(b);
    }
    if (b === MARK_U16) {
      this.need(2, what);
      const v = this.view.getUint16(this.pos, true);
      this.pos += 2;
      return BigInt(v);
    }
    if (b === MARK_U32) {
      this.need(4, what);
      const v = this.view.getUint32(this.pos, true);
      this.pos += 4;
      return BigInt(v);
    }
    if (b === MARK_U64) {
      this.need(8, what);
      const v = this.view.getBigUint64(this.pos, true);
      this.pos += 8;
      return v;
    }
    throw malformed(`${what}: invalid integer marker 0x${b.toString(16)}`);
  }

  /**
   * A `u64` count or length as a number; values beyond `2^32 - 1` are returned as `Infinity`,
   * which no check lets through (every body is far shorter than that).
   */
  private count(what: string): number {
    const b = this.u8(what);
    if (b <= SINGLE_BYTE_MAX) {
      return b;
    }
    this.pos -= 1;
    if (b === MARK_U64) {
      this.need(9, what);
      const low = this.view.getUint32(this.pos + 1, true);
      const high = this.view.getUint32(this.pos + 5, true);
      this.pos += 9;
      return high === 0 ? low : Number.POSITIVE_INFINITY;
    }
    return this.uint(32, what);
  }

  /** A length of bytes that must all be in what is left of the body. */
  private length(what: string): number {
    const n = this.count(what);
    if (n > this.remaining) {
      throw malformed(`${what}: a length of ${n} runs past the end of the body`);
    }
    return n;
  }

  bool(what: string): boolean {
    const b = this.u8(what);
    if (b === 0) {
      return false;
    }
    if (b === 1) {
      return true;
    }
    throw malformed(`${what}: a bool must be 0 or 1, not ${b}`);
  }

  /** The tag of an `option`: whether a value follows. */
  some(what: string): boolean {
    const b = this.u8(what);
    if (b === 0) {
      return false;
    }
    if (b === 1) {
      return true;
    }
    throw malformed(`${what}: an option tag must be 0 or 1, not ${b}`);
  }

  str(what: string): string {
    const n = this.length(what);
    const bytes = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    try {
      return utf8Decoder.decode(bytes);
    } catch {
      throw malformed(`${what}: invalid UTF-8`);
    }
  }

  /** A byte string, copied out of the body. */
  bytes(what: string): Uint8Array {
    const n = this.length(what);
    // A copy, always a plain Uint8Array (a Node Buffer's `slice` would share the memory).
    const bytes = new Uint8Array(n);
    bytes.set(this.buf.subarray(this.pos, this.pos + n));
    this.pos += n;
    return bytes;
  }

  optStr(what: string): string | undefined {
    return this.some(what) ? this.str(what) : undefined;
  }

  optU64(what: string): bigint | undefined {
    return this.some(what) ? this.u64(what) : undefined;
  }

  /** A list of at most `max` elements; each element takes at least one byte. */
  list<T>(max: number, what: string, item: () => T): T[] {
    const n = this.count(what);
    if (n > max) {
      throw malformed(`${what}: a list of ${n} elements, at most ${max}`);
    }
    if (n > this.remaining) {
      throw malformed(`${what}: a list of ${n} elements runs past the end of the body`);
    }
    const out: T[] = [];
    for (let i = 0; i < n; i++) {
      out.push(item());
    }
    return out;
  }

  /** A variant index of an enum. */
  variant(what: string): number {
    return this.uint(32, what);
  }

  /** Checks that the whole body was read. */
  end(): void {
    if (this.remaining > 0) {
      throw malformed(`${this.remaining} bytes left over after the frame`);
    }
  }
}

function readTarget(r: Reader): Target {
  const v = r.variant("target");
  switch (v) {
    case 0:
      return { type: "Client", client: r.str("target client") };
    case 1:
      return { type: "Group", clients: r.list(MAX_LIST, "group", () => r.str("group name")) };
    case 2:
      return { type: "Channel", channel: r.str("target channel") };
    case 3:
      return {
        type: "Channels",
        channels: r.list(MAX_LIST, "channel list", () => r.str("channel list name")),
      };
    case 4: {
      const client = r.str("target client");
      return { type: "ClientInChannel", client, channel: r.str("target channel") };
    }
    case 5:
      return { type: "All" };
    default:
      throw malformed(`unknown Target variant ${v}`);
  }
}

function readRecipient(r: Reader): Recipient {
  const v = r.variant("recipient");
  switch (v) {
    case 0:
      return { type: "Client", client: r.str("recipient client") };
    case 1:
      return { type: "Channel", channel: r.str("recipient channel") };
    case 2:
      return { type: "All" };
    default:
      throw malformed(`unknown Recipient variant ${v}`);
  }
}

function readFailureReason(r: Reader): FailureReason {
  const v = r.variant("reason");
  const reason = FAILURE_REASONS[v];
  if (reason === undefined) {
    throw malformed(`unknown FailureReason variant ${v}`);
  }
  return reason;
}

function readErrorCode(r: Reader): ErrorCode {
  const v = r.variant("code");
  const code = ERROR_CODES[v];
  if (code === undefined) {
    throw malformed(`unknown ErrorCode variant ${v}`);
  }
  return code;
}

function readClientFrame(r: Reader): ClientFrame {
  const v = r.variant("ClientFrame");
  switch (v) {
    case 0: {
      const version = r.uint(16, "version");
      const name = r.optStr("name");
      const token = r.optStr("token");
      const namespace = r.optStr("namespace");
      const maxFrame = r.uint(32, "max_frame");
      const heartbeatMs = r.uint(32, "heartbeat_ms");
      return { type: "Hello", version, name, token, namespace, maxFrame, heartbeatMs };
    }
    case 1: {
      const id = r.str("id");
      const target = readTarget(r);
      const name = r.optStr("name");
      const data = r.bytes("data");
      const persistent = r.bool("persistent");
      const ttlMs = r.optU64("ttl_ms");
      const resent = r.bool("resent");
      return { type: "Publish", id, target, name, data, persistent, ttlMs, resent };
    }
    case 2:
      return { type: "Subscribe", channel: r.str("channel") };
    case 3:
      return { type: "Unsubscribe", channel: r.str("channel") };
    case 4:
      return { type: "Ack", tags: r.list(MAX_ACK_TAGS, "tags", () => r.u64("tag")) };
    case 5:
      return { type: "Ping", nonce: r.u64("nonce") };
    case 6:
      return { type: "Pong", nonce: r.u64("nonce") };
    case 7:
      return { type: "Bye" };
    case 8:
      return { type: "Reauth", token: r.str("token") };
    default:
      throw malformed(`unknown ClientFrame variant ${v}`);
  }
}

function readServerFrame(r: Reader): ServerFrame {
  const v = r.variant("ServerFrame");
  switch (v) {
    case 0: {
      const version = r.uint(16, "version");
      const name = r.str("name");
      const server = r.str("server");
      const maxFrame = r.uint(32, "max_frame");
      const maxPayload = r.uint(32, "max_payload");
      const heartbeatMs = r.uint(32, "heartbeat_ms");
      let identity: string | undefined;
      let namespace: string | undefined;
      let expiresMs: bigint | undefined;
      if (version >= 2) {
        identity = r.optStr("identity");
        namespace = r.optStr("namespace");
        expiresMs = r.optU64("expires_ms");
      }
      return {
        type: "Welcome",
        version,
        name,
        server,
        maxFrame,
        maxPayload,
        heartbeatMs,
        identity,
        namespace,
        expiresMs,
      };
    }
    case 1: {
      const id = r.str("id");
      const sender = r.str("sender");
      const channel = r.optStr("channel");
      const name = r.optStr("name");
      const data = r.bytes("data");
      const persistent = r.bool("persistent");
      const redelivered = r.bool("redelivered");
      const ackTag = r.optU64("ack_tag");
      return { type: "Deliver", id, sender, channel, name, data, persistent, redelivered, ackTag };
    }
    case 2: {
      const id = r.str("id");
      const recipient = readRecipient(r);
      const reason = readFailureReason(r);
      const detail = r.str("detail");
      const ackTag = r.optU64("ack_tag");
      return { type: "DeliveryFailed", id, recipient, reason, detail, ackTag };
    }
    case 3:
      return { type: "Accepted", id: r.str("id") };
    case 4:
      return { type: "Subscribed", channel: r.str("channel") };
    case 5:
      return { type: "Unsubscribed", channel: r.str("channel") };
    case 6: {
      const code = readErrorCode(r);
      const message = r.str("message");
      return { type: "Error", code, message, id: r.optStr("id") };
    }
    case 7:
      return { type: "Ping", nonce: r.u64("nonce") };
    case 8:
      return { type: "Pong", nonce: r.u64("nonce") };
    case 9:
      return { type: "Bye", reason: r.str("reason") };
    case 10:
      return { type: "Reauthed", expiresMs: r.optU64("expires_ms") };
    default:
      throw malformed(`unknown ServerFrame variant ${v}`);
  }
}

/**
 * The handshake (`Hello`, `Welcome`) is variant 0 in both directions and starts with the
 * version, so a peer of another version is recognised even when the rest of its handshake has
 * a shape this side does not know (`PROTOCOL.md` section 6).
 */
function checkVersion(body: Uint8Array): void {
  let version: number;
  try {
    const r = new Reader(body);
    if (r.variant("variant") !== 0) {
      return;
    }
    version = r.uint(16, "version");
  } catch {
    // Not even a version: the full decoding says what is wrong.
    return;
  }
  if (version < MIN_PROTOCOL_VERSION || version > PROTOCOL_VERSION) {
    throw new CodecError(
      "UnsupportedVersion",
      `unsupported protocol version ${version} (supported: ${MIN_PROTOCOL_VERSION} to ${PROTOCOL_VERSION})`,
      { version },
    );
  }
}

function decodeWith<F>(body: Uint8Array, read: (r: Reader) => F): F {
  if (!(body instanceof Uint8Array)) {
    throw malformed("a body must be a Uint8Array");
  }
  if (body.length === 0) {
    throw malformed("an empty body (every frame has at least its variant index)");
  }
  checkVersion(body);
  const r = new Reader(body);
  try {
    const frame = read(r);
    r.end();
    return frame;
  } catch (e) {
    if (e instanceof CodecError) {
      throw e;
    }
    throw malformed(e instanceof Error ? e.message : String(e));
  }
}

/**
 * Decodes the body (without its header) of a frame a client sends.
 *
 * @throws {@link CodecError} `UnsupportedVersion` for a `Hello` of another version,
 *   `Malformed` for anything else that is not exactly one valid frame.
 */
export function decodeClientBody(body: Uint8Array): ClientFrame {
  return decodeWith(body, readClientFrame);
}

/**
 * Decodes the body (without its header) of a frame the broker sends.
 *
 * @throws {@link CodecError} `UnsupportedVersion` for a `Welcome` of another version,
 *   `Malformed` for anything else that is not exactly one valid frame.
 */
export function decodeServerBody(body: Uint8Array): ServerFrame {
  return decodeWith(body, readServerFrame);
}

/**
 * The body of `message`, which must hold exactly one complete frame, header included: a
 * WebSocket message, or a frame read whole by other means.
 *
 * @param maxFrame - the receive limit.
 * @throws {@link CodecError} `FrameTooLarge` when the header announces more than `maxFrame`,
 *   `Malformed` when the header does not match the length of `message`.
 */
export function frameBody(message: Uint8Array, maxFrame: number): Uint8Array {
  if (message.length < HEADER_LEN) {
    throw malformed(`a frame of ${message.length} bytes is shorter than its header`);
  }
  const len = readU32BE(message, 0);
  const limit = Math.min(maxFrame, MAX_FRAME_CAP);
  if (len > limit) {
    throw new CodecError(
      "FrameTooLarge",
      `frame of ${len} bytes exceeds the limit of ${limit} bytes`,
      { length: len, limit },
    );
  }
  if (len !== message.length - HEADER_LEN) {
    throw malformed(
      `the header announces ${len} bytes but the message holds ${message.length - HEADER_LEN}`,
    );
  }
  return message.subarray(HEADER_LEN);
}

/**
 * Decodes one complete frame a client sends, header included.
 *
 * @throws {@link CodecError} as {@link frameBody} and {@link decodeClientBody}.
 */
export function decodeClientFrame(frame: Uint8Array, maxFrame: number = MAX_FRAME_CAP): ClientFrame {
  return decodeClientBody(frameBody(frame, maxFrame));
}

/**
 * Decodes one complete frame the broker sends, header included.
 *
 * @throws {@link CodecError} as {@link frameBody} and {@link decodeServerBody}.
 */
export function decodeServerFrame(frame: Uint8Array, maxFrame: number = MAX_FRAME_CAP): ServerFrame {
  return decodeServerBody(frameBody(frame, maxFrame));
}

function readU32BE(bytes: Uint8Array, at: number): number {
  return (
    ((bytes[at] as number) * 0x100_0000 +
      ((bytes[at + 1] as number) << 16) +
      ((bytes[at + 2] as number) << 8) +
      (bytes[at + 3] as number)) >>>
    0
  );
}

const EMPTY = new Uint8Array(0);

/** Buffers larger than this are let go once empty rather than kept for reuse. */
const KEEP_BUFFER = 64 * 1024;

/**
 * Cuts a byte stream into frame bodies.
 *
 * Chunks go in with {@link FrameDecoder.push} as they arrive, split anywhere; whole bodies
 * come out of {@link FrameDecoder.next}. Each header is checked against the receive limit
 * before anything is kept for its body, and the buffer grows only with bytes actually
 * received (never past the current frame's size for bytes not yet received), so a hostile
 * header costs nothing. A body returned by `next` is a view that stays valid until the next
 * call of `push`: decode it before pushing more.
 */
export class FrameDecoder {
  private readonly maxFrame: number;
  private buf: Uint8Array = EMPTY;
  private start = 0;
  private end = 0;
  /** Whether `buf` was allocated here (and may be written to) or is a caller's chunk. */
  private owned = false;
  private failure: CodecError | undefined;

  /** A decoder of frames whose bodies are at most `maxFrame` bytes (capped at 64 MiB). */
  constructor(maxFrame: number) {
    this.maxFrame = Math.max(0, Math.min(maxFrame, MAX_FRAME_CAP));
  }

  /** Bytes received and not yet returned as a body. */
  get buffered(): number {
    return this.end - this.start;
  }

  /** Adds bytes received. The chunk is only read, never written to. */
  push(chunk: Uint8Array): void {
    if (chunk.length === 0) {
      return;
    }
    if (this.start === this.end && !this.owned) {
      // Nothing waits: read the chunk in place.
      this.buf = chunk;
      this.start = 0;
      this.end = chunk.length;
      return;
    }
    const have = this.end - this.start;
    const need = have + chunk.length;
    if (this.owned && this.end + chunk.length <= this.buf.length) {
      this.buf.set(chunk, this.end);
      this.end += chunk.length;
      return;
    }
    if (this.owned && need <= this.buf.length) {
      this.buf.copyWithin(0, this.start, this.end);
      this.buf.set(chunk, have);
      this.start = 0;
      this.end = need;
      return;
    }
    // Doubling, but never past what the frame being received needs, unless bytes already
    // received need it.
    let capacity = Math.max(need, this.owned ? this.buf.length * 2 : 0);
    capacity = Math.min(capacity, Math.max(need, this.currentFrameSize()));
    const next = new Uint8Array(capacity);
    next.set(this.buf.subarray(this.start, this.end));
    next.set(chunk, have);
    this.buf = next;
    this.start = 0;
    this.end = need;
    this.owned = true;
  }

  /** Header and body length of the frame at the front, once its header is in and valid. */
  private currentFrameSize(): number {
    if (this.end - this.start < HEADER_LEN) {
      return 0;
    }
    const len = readU32BE(this.buf, this.start);
    return len > this.maxFrame ? 0 : HEADER_LEN + len;
  }

  /**
   * The next whole body, or `undefined` until one has arrived.
   *
   * @throws {@link CodecError} `FrameTooLarge` when a header announces more than the limit;
   *   the stream cannot be trusted after that, and every later call throws the same error.
   */
  next(): Uint8Array | undefined {
    if (this.failure !== undefined) {
      throw this.failure;
    }
    const have = this.end - this.start;
    if (have < HEADER_LEN) {
      this.release();
      return undefined;
    }
    const len = readU32BE(this.buf, this.start);
    if (len > this.maxFrame) {
      this.failure = new CodecError(
        "FrameTooLarge",
        `frame of ${len} bytes exceeds the limit of ${this.maxFrame} bytes`,
        { length: len, limit: this.maxFrame },
      );
      this.buf = EMPTY;
      this.start = this.end = 0;
      this.owned = false;
      throw this.failure;
    }
    if (have < HEADER_LEN + len) {
      return undefined;
    }
    const bodyStart = this.start + HEADER_LEN;
    this.start = bodyStart + len;
    return this.buf.subarray(bodyStart, this.start);
  }

  /** Once everything was read: lets go of the caller's chunk, or of a large buffer. */
  private release(): void {
    if (this.start !== this.end) {
      return;
    }
    if (!this.owned || this.buf.length > KEEP_BUFFER) {
      this.buf = EMPTY;
      this.owned = false;
    }
    this.start = this.end = 0;
  }
}
