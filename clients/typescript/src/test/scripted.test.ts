/**
 * The client against a scripted broker, for what a real broker cannot be made to do on
 * demand: refusals and odd answers to the handshake, malformed and oversized frames, silence,
 * pings with large nonces, the order of frames after a reconnection, and WebSocket framing.
 */

import assert from "node:assert/strict";
import { test, type TestContext } from "node:test";
import { Client } from "../client.js";
import { encodeServerFrame } from "../codec.js";
import { ConnectError } from "../errors.js";
import type { Delivery, ServerFrame } from "../frames.js";
import { connect as connectWebSocket } from "../index.js";
import { OutgoingMessage } from "../message.js";
import { connect, type NodeConnectOptions } from "../node.js";
import { FakeBroker, FakeWebSocket, type FakeConnection } from "./fake.js";
import { nextEvent, nextMessage, text, within, WAIT_MS } from "./helpers.js";

/** A scripted broker of the test's own, stopped when it ends. */
async function broker(t: TestContext): Promise<FakeBroker> {
  const fake = await FakeBroker.start();
  t.after(() => fake.stop());
  return fake;
}

const FAST: NodeConnectOptions = { reconnect: { initialDelayMs: 1, maxDelayMs: 10 } };

/** Connects to the scripted broker, which completes the handshake. */
async function client(
  t: TestContext,
  options: NodeConnectOptions = {},
): Promise<{ client: Client; conn: FakeConnection; fake: FakeBroker }> {
  const fake = await broker(t);
  const connecting = connect(fake.address, { ...FAST, name: "tester", ...options });
  const conn = await fake.accept();
  await conn.handshake();
  const c = await within(connecting, WAIT_MS, "the connection");
  t.after(() => c.close());
  return { client: c, conn, fake };
}

function delivery(id: string, fields: Partial<Delivery> = {}): ServerFrame {
  return {
    type: "Deliver",
    id,
    sender: "alice",
    channel: undefined,
    name: undefined,
    data: new TextEncoder().encode(id),
    persistent: false,
    redelivered: false,
    ackTag: undefined,
    ...fields,
  };
}

test("the Hello carries every option and the Welcome sets the client up", async (t) => {
  const fake = await broker(t);
  const connecting = connect(fake.address, {
    name: "worker",
    token: "secret",
    namespace: "tenant",
    maxFrame: 70_000,
    heartbeatMs: 1234,
  });
  const conn = await fake.accept();
  const hello = await conn.handshake({
    identity: "worker",
    namespace: "tenant",
    expiresMs: 4_000_000_000_000n,
    maxPayload: 4096,
  });
  assert.deepEqual(hello, {
    type: "Hello",
    version: 2,
    name: "worker",
    token: "secret",
    namespace: "tenant",
    maxFrame: 70_000,
    heartbeatMs: 1234,
  });
  const c = await connecting;
  t.after(() => c.close());
  assert.deepEqual(
    [c.name, c.identity, c.namespace, c.credentialExpiresMs, c.maxPayload, c.server],
    ["worker", "worker", "tenant", 4_000_000_000_000, 4096, "fake broker"],
  );
  await assert.rejects(c.send(OutgoingMessage.toAll(new Uint8Array(4097))), { code: "TooLarge" });
});

test("a refused handshake, a Welcome of another version and a TLS answer are typed errors", async (t) => {
  const fake = await broker(t);
  const refused = connect(fake.address, { name: "x" });
  const c1 = await fake.accept();
  await c1.expect("Hello");
  c1.send({ type: "Error", code: "LimitReached", message: "full", id: undefined });
  await assert.rejects(refused, (e: unknown) => {
    assert.ok(e instanceof ConnectError);
    assert.deepEqual([e.code, e.serverCode], ["Refused", "LimitReached"]);
    return true;
  });

  const v1 = connect(fake.address, { name: "x" });
  const c2 = await fake.accept();
  await c2.handshake({ version: 1 });
  await assert.rejects(v1, { code: "Protocol" });

  const tls = connect(fake.address, { name: "x" });
  const c3 = await fake.accept();
  await c3.expect("Hello");
  // A TLS alert record, read as a frame header.
  c3.sendRaw(new Uint8Array([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46]));
  await assert.rejects(tls, (e: unknown) => e instanceof ConnectError && /speaks TLS/.test(e.message));

  const other = connect(fake.address, { name: "x" });
  const c4 = await fake.accept();
  await c4.expect("Hello");
  c4.send({ type: "Pong", nonce: 1n });
  await assert.rejects(other, { code: "Protocol" });
});

test("a malformed frame is skipped and reported; the connection goes on", async (t) => {
  const { client: c, conn } = await client(t);
  const events = c.events();
  const inbox = c.directMessages();
  assert.ok(inbox !== undefined);
  conn.sendRaw(new Uint8Array([0, 0, 0, 2, 99, 0]));
  conn.send(delivery("after"));
  const reported = await nextEvent(events, "ProtocolError");
  assert.match(reported.detail, /unknown ServerFrame variant 99/);
  assert.equal(text(await nextMessage(inbox, "the next delivery")), "after");
});

test("a frame over the client's limit closes the connection, and the client comes back", async (t) => {
  const { client: c, conn, fake } = await client(t, { maxFrame: 4096 });
  const events = c.events();
  conn.sendRaw(new Uint8Array([0, 0, 0x10, 0x01]));
  const lost = await nextEvent(events, "Disconnected");
  assert.match(lost.reason, /larger than this client accepts/);
  const again = await fake.accept();
  const hello = await again.handshake();
  assert.equal(hello.name, "tester");
  await nextEvent(events, "Connected");
});

test("broker pings are answered with their nonce, whatever its size", async (t) => {
  const { conn } = await client(t);
  for (const nonce of [1n, (1n << 63n) + 7n, (1n << 64n) - 1n]) {
    conn.send({ type: "Ping", nonce });
    assert.deepEqual(await conn.expect("Pong"), { type: "Pong", nonce });
  }
});

test("acknowledgements carry tags of every size, batched", async (t) => {
  const { client: c, conn } = await client(t);
  const inbox = c.directMessages();
  assert.ok(inbox !== undefined);
  const tags = [(1n << 63n), (1n << 63n) + 1n, 5n, (1n << 64n) - 1n];
  tags.forEach((tag, i) => conn.send(delivery(`m${i}`, { persistent: true, ackTag: tag })));
  for (let i = 0; i < tags.length; i++) {
    await nextMessage(inbox, "a delivery");
  }
  const acked: bigint[] = [];
  while (acked.length < tags.length) {
    acked.push(...(await conn.expect("Ack")).tags);
  }
  assert.deepEqual(acked, tags);
});

test("a redelivered copy of a message handed over is dropped and acknowledged at once", async (t) => {
  const { client: c, conn } = await client(t);
  const inbox = c.directMessages();
  assert.ok(inbox !== undefined);
  conn.send(delivery("m1", { persistent: true, ackTag: 1n }));
  conn.send(delivery("m1", { persistent: true, ackTag: 2n, redelivered: true }));
  conn.send(delivery("m2", { persistent: true, ackTag: 3n, redelivered: true }));
  // The copy of m1 is acknowledged without being taken; m1 itself once taken.
  assert.deepEqual((await conn.expect("Ack")).tags, [2n]);
  assert.equal((await nextMessage(inbox, "m1")).id, "m1");
  const second = await nextMessage(inbox, "m2");
  assert.deepEqual([second.id, second.redelivered], ["m2", true]);
});

test("a full stream pauses reading and loses nothing", async (t) => {
  const { client: c, conn } = await client(t, { receiveBuffer: 1 });
  const events = c.events();
  const sub = c.subscribe("news");
  assert.deepEqual(await conn.expect("Subscribe"), { type: "Subscribe", channel: "news" });
  conn.send({ type: "Subscribed", channel: "news" });
  const news = await sub;
  for (let i = 0; i < 50; i++) {
    conn.send(delivery(`n${i}`, { channel: "news" }));
  }
  conn.send({ type: "Accepted", id: "marker" });
  for (let i = 0; i < 50; i++) {
    assert.equal((await nextMessage(news, "a news message")).id, `n${i}`);
  }
  // Frames after the deliveries were read once the stream had room.
  await nextEvent(events, "Accepted", (e) => e.id === "marker");
});

test("direct messages nobody takes, or nobody reads any more, are reported", async (t) => {
  const { client: c, conn } = await client(t, { receiveBuffer: 2 });
  const events = c.events();
  for (const id of ["d1", "d2", "d3"]) {
    conn.send(delivery(id));
  }
  const full = await nextEvent(events, "DeliveryFailed");
  assert.deepEqual([full.id, full.reason, full.recipient], [
    "d3",
    "SlowConsumer",
    { type: "Client", client: "tester" },
  ]);
  const inbox = c.directMessages();
  assert.ok(inbox !== undefined);
  assert.equal((await nextMessage(inbox, "d1")).id, "d1");
  inbox.close();
  conn.send(delivery("d4"));
  const gone = await nextEvent(events, "DeliveryFailed");
  assert.deepEqual([gone.id, gone.reason], ["d4", "NotSubscribed"]);
});

test("after a reconnection: resubscribe, then resend unconfirmed messages, then the rest", async (t) => {
  const { client: c, conn, fake } = await client(t);
  const sub = c.subscribe("a");
  await conn.expect("Subscribe");
  conn.send({ type: "Subscribed", channel: "a" });
  await sub;
  const first = c.sendConfirmed(OutgoingMessage.toClient("bob", "m1").id("m1"));
  const sent = await conn.expect("Publish");
  assert.deepEqual([sent.id, sent.resent], ["m1", false]);
  const flushed = c.flush();
  const ping = await conn.expect("Ping");
  conn.close();

  const again = await fake.accept();
  await again.handshake();
  assert.deepEqual(await again.next(), { type: "Subscribe", channel: "a" });
  assert.deepEqual(await again.next(), ping, "the flush is pinged again, with its nonce");
  // Held until the subscription is answered: a ping now is answered before anything else.
  again.send({ type: "Ping", nonce: 42n });
  assert.deepEqual(await again.next(), { type: "Pong", nonce: 42n });
  await c.send(OutgoingMessage.toClient("bob", "m2").id("m2").persistent(false));
  again.send({ type: "Subscribed", channel: "a" });
  const resent = await again.expect("Publish");
  assert.deepEqual([resent.id, resent.resent], ["m1", true]);
  const later = await again.expect("Publish");
  assert.deepEqual([later.id, later.resent], ["m2", false]);
  again.send({ type: "Pong", nonce: ping.nonce });
  await within(flushed, WAIT_MS, "the flush");
  again.send({ type: "Accepted", id: "m1" });
  assert.equal(await within(first, WAIT_MS, "the confirmation"), "m1");
});

test("a silent broker is taken for dead after three heartbeats", async (t) => {
  const { client: c, conn } = await client(t, { heartbeatMs: 50 });
  const events = c.events();
  // The client pings when it has sent nothing for a heartbeat; the broker never answers.
  await conn.expect("Ping");
  const lost = await nextEvent(events, "Disconnected");
  assert.match(lost.reason, /nothing received from the broker for 150 ms/);
  await conn.closed();
});

test("Bye from the broker ends the connection; the client comes back", async (t) => {
  const { client: c, conn, fake } = await client(t);
  const events = c.events();
  conn.send({ type: "Bye", reason: "shutting down" });
  const lost = await nextEvent(events, "Disconnected");
  assert.equal(lost.reason, "the broker said goodbye: shutting down");
  await (await fake.accept()).handshake();
  await nextEvent(events, "Connected");
});

test("close writes what is buffered, waits for confirmations, then says Bye", async (t) => {
  const fake = await broker(t);
  const connecting = connect(fake.address, { name: "closer" });
  const conn = await fake.accept();
  await conn.handshake();
  const c = await connecting;
  const confirmed = c.sendConfirmed(OutgoingMessage.toClient("bob", "last").id("last"));
  const closing = c.close();
  await conn.expect("Publish");
  conn.send({ type: "Accepted", id: "last" });
  await conn.expect("Bye");
  conn.close();
  await within(closing, WAIT_MS, "the close");
  assert.equal(await confirmed, "last");
});

test("the WebSocket transport carries one frame per binary message", async (t) => {
  const connecting = connectWebSocket("ws://broker.test:7480", {
    name: "web",
    WebSocket: FakeWebSocket,
  });
  const conn = await FakeWebSocket.accepted.next("a WebSocket connection");
  assert.equal(FakeWebSocket.urls.at(-1), "ws://broker.test:7480/v1/ws");
  await conn.handshake();
  const c = await within(connecting, WAIT_MS, "the WebSocket connection");
  t.after(() => c.close());
  const inbox = c.directMessages();
  assert.ok(inbox !== undefined);
  const events = c.events();

  const id = await c.send(OutgoingMessage.toClient("bob", "over ws").persistent(false));
  const publish = await conn.expect("Publish");
  assert.equal(publish.id, id);
  conn.send(delivery("from the broker"));
  assert.equal(text(await nextMessage(inbox, "a delivery over WebSocket")), "from the broker");

  // Two frames in one message break the framing: the connection is dropped and made again.
  const two = [encodeServerFrame({ type: "Pong", nonce: 1n }), encodeServerFrame({ type: "Pong", nonce: 2n })];
  conn.sendRaw(new Uint8Array([...two[0]!, ...two[1]!]));
  const lost = await nextEvent(events, "Disconnected");
  assert.match(lost.reason, /could not be read/);
  const again = await FakeWebSocket.accepted.next("the WebSocket reconnection");
  await again.handshake();
  await nextEvent(events, "Connected");

  // A text message is not a frame either.
  (again as unknown as { sendText(t: string): void }).sendText("hello");
  const dropped = await nextEvent(events, "Disconnected");
  assert.match(dropped.reason, /not binary/);
});

test("over WebSocket too, a full stream pauses reading and loses nothing", async (t) => {
  const connecting = connectWebSocket("ws://broker.test:7481", {
    name: "slow",
    receiveBuffer: 1,
    WebSocket: FakeWebSocket,
  });
  const conn = await FakeWebSocket.accepted.next("a WebSocket connection");
  await conn.handshake();
  const c = await within(connecting, WAIT_MS, "the WebSocket connection");
  t.after(() => c.close());
  const inbox = c.directMessages();
  assert.ok(inbox !== undefined);
  for (let i = 0; i < 30; i++) {
    conn.send(delivery(`w${i}`));
  }
  for (let i = 0; i < 30; i++) {
    assert.equal((await nextMessage(inbox, "a delivery")).id, `w${i}`);
  }
});

test("a WebSocket URL never carries credentials", async () => {
  await assert.rejects(
    connectWebSocket("ws://user:pass@broker.test:1", { WebSocket: FakeWebSocket }),
    { code: "InvalidOptions" },
  );
  await assert.rejects(connectWebSocket("http://broker.test:1", { WebSocket: FakeWebSocket }), {
    code: "InvalidOptions",
  });
});
