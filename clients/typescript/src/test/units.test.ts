/**
 * The client's parts on their own: backoff, the duplicate window, the unconfirmed set,
 * acknowledgement batches, queues, event streams, names, messages and options.
 */

import assert from "node:assert/strict";
import { test } from "node:test";
import { ACK_EAGER, AckBatch, DedupWindow } from "../ack.js";
import { Backoff } from "../backoff.js";
import { encodeClientFrame } from "../codec.js";
import { ConnectError, NameError, SendError } from "../errors.js";
import { EventHub } from "../events.js";
import { MAX_ACK_TAGS } from "../frames.js";
import { OutgoingMessage } from "../message.js";
import {
  MESSAGE_ID_LEN,
  newMessageId,
  utf8Length,
  validateChannel,
  validateClientName,
  validateId,
} from "../names.js";
import { resolveOptions } from "../options.js";
import { BoundedQueue } from "../queue.js";
import { parseHostPort } from "../transport/tcp.js";
import { webSocketUrl } from "../transport/websocket.js";
import { UnconfirmedSet, resendFrame, type Unconfirmed } from "../unconfirmed.js";

test("backoff ceilings double from the first delay and stop at the largest", () => {
  const b = new Backoff(100, 5000);
  assert.deepEqual(
    [1, 2, 3, 4, 5, 6, 7, 8].map((n) => b.ceiling(n)),
    [100, 200, 400, 800, 1600, 3200, 5000, 5000],
  );
  assert.equal(b.ceiling(1_000_000), 5000);
  assert.equal(b.ceiling(0), 100);
  assert.equal(new Backoff(10_000, 5000).ceiling(1), 5000);
});

test("backoff delays are drawn over the whole range (full jitter)", () => {
  assert.equal(new Backoff(100, 5000, () => 0).delay(5), 0);
  assert.equal(new Backoff(100, 5000, () => 0.999_999).delay(5), 1600);
  const b = new Backoff(100, 5000);
  for (let attempt = 1; attempt <= 10; attempt++) {
    const delays = Array.from({ length: 500 }, () => b.delay(attempt));
    const ceiling = b.ceiling(attempt);
    assert.ok(Math.max(...delays) <= ceiling);
    assert.ok(Math.min(...delays) < ceiling / 10, `attempt ${attempt}: all delays high`);
    assert.ok(Math.max(...delays) > (ceiling * 9) / 10, `attempt ${attempt}: all delays low`);
  }
});

test("the duplicate window remembers the latest pairs only", () => {
  const w = new DedupWindow(2);
  const key = DedupWindow.key;
  w.add(key("alice", "m1"));
  w.add(key("bob", "m1"));
  assert.ok(w.has(key("alice", "m1")) && w.has(key("bob", "m1")));
  assert.ok(!w.has(key("carol", "m1")), "pairs, not ids, are compared");
  w.add(key("alice", "m1"));
  assert.equal(w.size, 2, "a pair already known is not added twice");
  w.add(key("alice", "m2"));
  assert.ok(!w.has(key("alice", "m1")), "the oldest pair is forgotten");
  assert.ok(w.has(key("bob", "m1")) && w.has(key("alice", "m2")));
  assert.ok(!w.has(key("alic", "em2")), "sender and id are kept apart");
  for (let i = 0; i < 100; i++) {
    w.add(key("x", `${i}`));
    assert.ok(w.size <= 2);
  }
  const off = new DedupWindow(0);
  off.add(key("a", "b"));
  assert.ok(!off.enabled && !off.has(key("a", "b")));
});

function unconfirmed(id: string): Unconfirmed {
  const frame = encodeClientFrame({
    type: "Publish",
    id,
    target: { type: "All" },
    name: undefined,
    data: new Uint8Array(0),
    persistent: true,
    ttlMs: undefined,
    resent: false,
  });
  return { id, target: { type: "All" }, frame, resent: false, confirm: undefined };
}

test("the unconfirmed set confirms the oldest message of an id and keeps send order", () => {
  const set = new UnconfirmedSet();
  for (const id of ["a", "b", "a", "c"]) {
    set.push(unconfirmed(id));
  }
  assert.equal(set.confirm("zzz"), undefined);
  assert.equal(set.confirm("a")?.id, "a");
  assert.deepEqual([...set.entries()].map(([, m]) => m.id), ["b", "a", "c"]);
  const [seqOfC] = [...set.entries()].find(([, m]) => m.id === "c") ?? [];
  assert.equal(set.remove(seqOfC as number)?.id, "c");
  assert.equal(set.confirm("a")?.id, "a");
  assert.equal(set.confirm("a"), undefined);
  assert.equal(set.size, 1);
  assert.deepEqual(set.takeAll().map((m) => m.id), ["b"]);
  assert.equal(set.size, 0);
});

test("the unconfirmed set behaves as a list in send order (random operations)", () => {
  let seed = 7;
  const rand = (n: number): number => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  const set = new UnconfirmedSet();
  let model: string[] = [];
  for (let i = 0; i < 5000; i++) {
    const op = rand(12);
    if (op < 6) {
      const id = `id${rand(24)}`;
      set.push(unconfirmed(id));
      model.push(id);
    } else if (op < 10) {
      const id = `id${rand(24)}`;
      const at = model.indexOf(id);
      assert.equal(set.confirm(id)?.id, at < 0 ? undefined : model.splice(at, 1)[0]);
    } else if (op < 11 && model.length > 0) {
      const at = rand(model.length);
      const [seq] = [...set.entries()][at] ?? [];
      assert.equal(set.remove(seq as number)?.id, model.splice(at, 1)[0]);
    } else if (op === 11) {
      assert.deepEqual(set.takeAll().map((m) => m.id), model);
      model = [];
    }
    assert.equal(set.size, model.length);
  }
});

test("a resent frame is marked once", () => {
  const msg = unconfirmed("a");
  const first = resendFrame(msg);
  assert.equal(msg.resent, true);
  assert.equal(first[first.length - 1], 1);
  assert.equal(resendFrame(msg), first);
});

test("acknowledgement batches ask to be written at a quarter window and split at the limit", () => {
  const batch = new AckBatch();
  for (let i = 0; i < ACK_EAGER - 1; i++) {
    assert.equal(batch.add(BigInt(i)), false);
  }
  assert.equal(batch.add(BigInt(ACK_EAGER)), true);
  for (let i = ACK_EAGER; i <= MAX_ACK_TAGS; i++) {
    batch.add(BigInt(i));
  }
  const frames = batch.takeFrames();
  assert.deepEqual(
    frames.map((f) => (f.type === "Ack" ? f.tags.length : -1)),
    [MAX_ACK_TAGS, 1],
  );
  assert.equal(batch.size, 0);
  assert.deepEqual(batch.takeFrames(), []);
  batch.add(1n);
  batch.clear();
  assert.equal(batch.size, 0);
});

test("a bounded queue refuses what does not fit and wakes the producer when a value is taken", async () => {
  const q = new BoundedQueue<number>(2);
  assert.ok(q.offer(1) && q.offer(2));
  assert.equal(q.offer(3), false);
  let woken = false;
  const room = q.room().then(() => (woken = true));
  assert.deepEqual(await q.take(), { value: 1, done: false });
  await room;
  assert.ok(woken);
  assert.ok(q.offer(3));
  q.close();
  assert.equal(q.offer(4), false);
  assert.deepEqual(await q.take(), { value: 2, done: false });
  assert.deepEqual(await q.take(), { value: 3, done: false });
  assert.deepEqual(await q.take(), { value: undefined, done: true });
  const waiting = new BoundedQueue<number>(1);
  const taken = waiting.take();
  assert.ok(waiting.offer(9), "handed straight to the waiting consumer");
  assert.deepEqual(await taken, { value: 9, done: false });
});

test("an event stream that falls behind says how many events it missed", async () => {
  const hub = new EventHub(16);
  const events = hub.subscribe();
  for (let attempt = 1; attempt <= 20; attempt++) {
    hub.emit({ type: "Reconnecting", attempt, delayMs: 0, lastError: undefined });
  }
  hub.end();
  assert.deepEqual((await events.next()).value, { type: "Lagged", missed: 4 });
  const rest = [];
  for await (const e of events) {
    rest.push(e.type === "Reconnecting" ? e.attempt : -1);
  }
  assert.deepEqual(rest, Array.from({ length: 16 }, (_, i) => i + 5));
  const late = hub.subscribe();
  assert.deepEqual(await late.next(), { value: undefined, done: true });
});

test("names follow the rules of the protocol", () => {
  validateClientName("alice");
  validateClientName("zoë");
  validateChannel("jobs.high-priority");
  validateId(newMessageId());
  const refused = (f: () => void, code: NameError["code"]): void =>
    assert.throws(f, (e: unknown) => e instanceof NameError && e.code === code);
  refused(() => validateClientName(""), "Empty");
  refused(() => validateClientName("a b"), "BadCharacter");
  refused(() => validateClientName("a\u2003b"), "BadCharacter");
  refused(() => validateClientName("a\u007f"), "BadCharacter");
  refused(() => validateId("a\nb"), "BadCharacter");
  refused(() => validateClientName("$broker"), "Reserved");
  validateChannel("$allowed-for-channels");
  refused(() => validateChannel("x".repeat(257)), "TooLong");
  refused(() => validateChannel("é".repeat(129)), "TooLong");
  validateChannel("é".repeat(128));
  assert.equal(utf8Length("aé漢🙂"), 1 + 2 + 3 + 4);
});

test("message ids are 21 characters of the URL-safe alphabet, and differ", () => {
  const ids = new Set(Array.from({ length: 10_000 }, newMessageId));
  assert.equal(ids.size, 10_000);
  for (const id of ids) {
    assert.match(id, /^[A-Za-z0-9_-]{21}$/);
  }
  assert.equal(MESSAGE_ID_LEN, 21);
});

test("outgoing messages build their Publish and check themselves", () => {
  const p = OutgoingMessage.toClientInChannel("bob", "news", new Uint8Array([1, 2, 3]))
    .event("tick")
    .persistent(false)
    .ttl(1500)
    .id("m-1")
    .toPublish();
  assert.deepEqual(p, {
    id: "m-1",
    target: { type: "ClientInChannel", client: "bob", channel: "news" },
    name: "tick",
    data: new Uint8Array([1, 2, 3]),
    persistent: false,
    ttlMs: 1500n,
    resent: false,
  });
  const d = OutgoingMessage.toAll("x");
  assert.equal(d.isPersistent, true, "persistent by default");
  assert.equal(d.messageId.length, 21);
  assert.notEqual(d.messageId, OutgoingMessage.toAll("x").messageId);
  assert.deepEqual(OutgoingMessage.toGroup(new Set(["a", "b"]), "x").target, {
    type: "Group",
    clients: ["a", "b"],
  });
  const invalid = (m: OutgoingMessage, code: SendError["code"]): void =>
    assert.throws(() => m.validate(), (e: unknown) => e instanceof SendError && e.code === code);
  invalid(OutgoingMessage.toGroup([], "x"), "InvalidTarget");
  invalid(OutgoingMessage.toChannels(["a", "a"], "x"), "InvalidTarget");
  invalid(OutgoingMessage.toClient("$broker", "x"), "InvalidName");
  invalid(OutgoingMessage.toAll("x").id(""), "InvalidName");
  OutgoingMessage.toAll("x").validate();
  assert.throws(() => OutgoingMessage.toAll("x").ttl(-1), RangeError);
  assert.throws(() => OutgoingMessage.toGroup("bob", "x"), TypeError);
});

test("options are filled in, checked and clamped", () => {
  const o = resolveOptions();
  assert.deepEqual(
    [o.protocolVersion, o.sendBuffer, o.receiveBuffer, o.eventBuffer, o.heartbeatMs, o.maxFrame],
    [2, 1024, 1024, 4096, 5000, 1_114_112],
  );
  assert.equal(o.maxAttempts, undefined);
  assert.equal(resolveOptions({ maxFrame: 10 }).maxFrame, 4096);
  assert.equal(resolveOptions({ eventBuffer: 1 }).eventBuffer, 16);
  const bad = (options: Parameters<typeof resolveOptions>[0], code: ConnectError["code"]): void =>
    assert.throws(() => resolveOptions(options), (e: unknown) => e instanceof ConnectError && e.code === code);
  bad({ name: "a b" }, "InvalidName");
  bad({ sendBuffer: -1 }, "InvalidOptions");
  bad({ protocolVersion: 1, namespace: "x" }, "InvalidOptions");
  bad({ protocolVersion: 3 as 2 }, "InvalidOptions");
  bad({ namespace: "a b" }, "InvalidOptions");
  bad({ namespace: "x".repeat(65) }, "InvalidOptions");
  assert.equal(resolveOptions({ namespace: "x".repeat(64) }).namespace, "x".repeat(64));
});

test("addresses and URLs are parsed, credentials kept out of URLs", () => {
  assert.deepEqual(parseHostPort("127.0.0.1:7400"), { host: "127.0.0.1", port: 7400 });
  assert.deepEqual(parseHostPort("[::1]:7400"), { host: "::1", port: 7400 });
  assert.deepEqual(parseHostPort("broker.example:1"), { host: "broker.example", port: 1 });
  for (const bad of ["nohost", ":7400", "h:0", "h:70000", "h:x"]) {
    assert.throws(() => parseHostPort(bad), { code: "InvalidOptions" });
  }
  assert.equal(webSocketUrl("ws://h:1"), "ws://h:1/v1/ws");
  assert.equal(webSocketUrl("wss://h:1/custom"), "wss://h:1/custom");
  assert.throws(() => webSocketUrl("ws://u:p@h:1"), { code: "InvalidOptions" });
  assert.throws(() => webSocketUrl("tcp://h:1"), { code: "InvalidOptions" });
});
