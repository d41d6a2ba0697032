/**
 * The client across lost connections: reconnection, manual acknowledgements and
 * redelivery, the duplicate window, and a broker killed and started again (resent messages,
 * resubscriptions).
 */

import assert from "node:assert/strict";
import { after, before, test, type TestContext } from "node:test";
import { Client } from "../client.js";
import type { ClientFrame } from "../frames.js";
import { OutgoingMessage } from "../message.js";
import { TcpTransport, connect, type NodeConnectOptions } from "../node.js";
import {
  BrokerProcess,
  Proxy,
  RecordingTransport,
  nextEvent,
  nextMessage,
  text,
  unique,
  within,
  WAIT_MS,
} from "./helpers.js";

let broker: BrokerProcess;
let proxy: Proxy;

before(async () => {
  broker = await BrokerProcess.start();
  proxy = await Proxy.start(broker.address);
});

after(async () => {
  await proxy.stop();
  await broker.dispose();
});

/** Quick reconnections, for tests that cut connections. */
const FAST: NodeConnectOptions = { reconnect: { initialDelayMs: 10, maxDelayMs: 50 } };

async function client(t: TestContext, address: string, options: NodeConnectOptions = {}): Promise<Client> {
  const c = await within(connect(address, { ...FAST, ...options }), WAIT_MS, "a connection");
  t.after(() => c.close());
  return c;
}

test("the client reconnects under its name after the connection is cut", async (t) => {
  const bob = await client(t, proxy.address);
  const name = bob.name;
  const events = bob.events();
  proxy.cut();
  const lost = await nextEvent(events, "Disconnected");
  assert.match(lost.reason, /closed|failed/);
  const retry = await nextEvent(events, "Reconnecting");
  assert.equal(retry.attempt, 1);
  const back = await nextEvent(events, "Connected");
  assert.equal(back.name, name, "the broker-made name is kept");
  assert.equal(bob.connected, true);
  await within(bob.flush(), WAIT_MS, "a flush on the new connection");
});

test("an unacknowledged message comes again after a reconnection, until acknowledged by hand", async (t) => {
  const alice = await client(t, broker.address);
  const bob = await client(t, proxy.address, { manualAck: true, dedupWindow: 0 });
  const inbox = bob.directMessages();
  assert.ok(inbox !== undefined);
  const events = bob.events();

  const id = await alice.send(OutgoingMessage.toClient(bob.name, "ack me"));
  const first = await nextMessage(inbox, "the first delivery");
  assert.equal(first.id, id);
  assert.equal(first.redelivered, false);

  // Not acknowledged: after the connection is lost it is handed over again.
  proxy.cut();
  await nextEvent(events, "Connected");
  const again = await nextMessage(inbox, "the redelivery");
  assert.equal(again.id, id);
  assert.equal(again.redelivered, true);
  // A tag of the lost connection means nothing now: this acknowledgement is dropped.
  bob.ack(first);
  bob.ack(again);
  await within(bob.flush(), WAIT_MS, "bob's flush");

  // Acknowledged: after another reconnection the next message is a new one.
  proxy.cut();
  await nextEvent(events, "Connected");
  const next = await alice.send(OutgoingMessage.toClient(bob.name, "next"));
  const got = await nextMessage(inbox, "the next message");
  assert.deepEqual([got.id, text(got)], [next, "next"]);
});

test("the duplicate window drops a redelivered copy and acknowledges it", async (t) => {
  const alice = await client(t, broker.address);
  const bob = await client(t, proxy.address);
  const inbox = bob.directMessages();
  assert.ok(inbox !== undefined);
  const events = bob.events();
  // Handed to the stream but not taken, so not acknowledged yet.
  const id = await alice.send(OutgoingMessage.toClient(bob.name, "once"));
  await within(alice.flush(), WAIT_MS, "alice's flush");
  await within(bob.flush(), WAIT_MS, "bob's flush");

  proxy.cut();
  await nextEvent(events, "Connected");
  const marker = await alice.send(OutgoingMessage.toClient(bob.name, "marker"));
  const first = await nextMessage(inbox, "the original");
  assert.equal(first.id, id);
  assert.equal(first.redelivered, false);
  // The redelivered copy came before the marker and was dropped.
  assert.equal((await nextMessage(inbox, "the marker")).id, marker);

  // It was acknowledged when dropped: after another reconnection nothing of it comes back.
  await within(bob.flush(), WAIT_MS, "bob's flush");
  proxy.cut();
  await nextEvent(events, "Connected");
  const last = await alice.send(OutgoingMessage.toClient(bob.name, "last"));
  assert.equal((await nextMessage(inbox, "the last message")).id, last);
});

test("messages sent while disconnected go out after the reconnection, in order", async (t) => {
  const bob = await client(t, broker.address);
  const inbox = bob.directMessages();
  assert.ok(inbox !== undefined);
  const alice = await client(t, proxy.address);
  const events = alice.events();
  proxy.cut();
  await nextEvent(events, "Disconnected");
  const ids = [];
  for (let i = 0; i < 5; i++) {
    ids.push(await alice.send(OutgoingMessage.toClient(bob.name, `m${i}`).persistent(i % 2 === 0)));
  }
  const flushed = alice.flush();
  await nextEvent(events, "Connected");
  await within(flushed, WAIT_MS, "the flush after the reconnection");
  for (const id of ids) {
    assert.equal((await nextMessage(inbox, "a message sent while away")).id, id);
  }
});

test("after the broker restarts the client resends unconfirmed messages marked resent and resubscribes", async (t) => {
  const own = await BrokerProcess.start();
  t.after(() => own.dispose());
  const channel = unique("alerts");

  // The receiver acknowledges by hand and keeps no duplicate window: it sees every copy.
  const receiver = await client(t, own.address, { manualAck: true, dedupWindow: 0 });
  const inbox = receiver.directMessages();
  assert.ok(inbox !== undefined);
  const senderWire = new RecordingTransport(new TcpTransport(own.address));
  const sender = await Client.connect(senderWire, FAST);
  t.after(() => sender.close());
  const subscriberWire = new RecordingTransport(new TcpTransport(own.address));
  const subscriber = await Client.connect(subscriberWire, FAST);
  t.after(() => subscriber.close());
  const alerts = await subscriber.subscribe(channel);

  // Handed to the receiver live and not acknowledged: the broker cannot confirm it yet.
  const confirmed = sender.sendConfirmed(OutgoingMessage.toClient(receiver.name, "survive"));
  const first = await nextMessage(inbox, "the live delivery");
  assert.equal(first.redelivered, false);

  const events = [sender.events(), receiver.events(), subscriber.events()];
  await own.kill();
  for (const e of events) {
    await nextEvent(e, "Disconnected");
  }
  await own.restart();
  for (const e of events) {
    await nextEvent(e, "Connected");
  }

  // Every copy that arrives is acknowledged; the resent one gets the message confirmed.
  const copies: { id: string; redelivered: boolean }[] = [];
  const acknowledge = (async () => {
    for (;;) {
      const copy = await inbox.next();
      if (copy.done) {
        return;
      }
      copies.push({ id: copy.value.id, redelivered: copy.value.redelivered });
      receiver.ack(copy.value);
    }
  })();
  assert.equal(await within(confirmed, WAIT_MS, "the confirmation of the resent message"), first.id);

  const resent = senderWire.connections[1]?.find(
    (f): f is Extract<ClientFrame, { type: "Publish" }> => f.type === "Publish" && f.id === first.id,
  );
  assert.ok(resent !== undefined, "the message was written again on the new connection");
  assert.equal(resent.resent, true);
  const original = senderWire.connections[0]?.find((f) => f.type === "Publish" && f.id === first.id);
  assert.ok(original !== undefined && original.type === "Publish" && !original.resent);

  assert.ok(
    subscriberWire.connections[1]?.some((f) => f.type === "Subscribe" && f.channel === channel),
    "the subscription was made again on the new connection",
  );
  const alert = await sender.send(OutgoingMessage.toChannel(channel, "still there").persistent(false));
  assert.equal((await nextMessage(alerts, "the alert")).id, alert);

  await receiver.close();
  await within(acknowledge, WAIT_MS, "the end of the receiver's stream");
  assert.ok(copies.length > 0);
  for (const copy of copies) {
    assert.deepEqual(copy, { id: first.id, redelivered: true });
  }
});

test("a broker that stops says goodbye and the client comes back when it returns", async (t) => {
  const own = await BrokerProcess.start();
  t.after(() => own.dispose());
  const c = await client(t, own.address);
  const events = c.events();
  await own.stop();
  const lost = await nextEvent(events, "Disconnected");
  assert.match(lost.reason, /goodbye|closed/);
  await own.restart();
  await nextEvent(events, "Connected");
  await within(c.flush(), WAIT_MS, "a flush after the broker returned");
});

test("the client gives up after its reconnect attempts and says why", async (t) => {
  const own = await BrokerProcess.start();
  t.after(() => own.dispose());
  const c = await client(t, own.address, {
    reconnect: { initialDelayMs: 1, maxDelayMs: 5, maxAttempts: 2 },
    connectTimeoutMs: 2000,
  });
  const events = c.events();
  await own.kill();
  await nextEvent(events, "Disconnected");
  // Sent while the connection is down: it waits in the send buffer, and is never sent.
  const pending = c.sendConfirmed(OutgoingMessage.toClient(unique("gone"), "never sent"));
  const id = await nextEvent(events, "Reconnecting", (e) => e.attempt === 2);
  assert.ok(id.lastError !== undefined, "the failure of the first attempt is reported");
  const unconfirmed = await nextEvent(events, "Unconfirmed");
  const closed = await nextEvent(events, "Closed");
  assert.match(closed.reason, /gave up after 2 reconnection attempts/);
  await assert.rejects(within(pending, WAIT_MS, "the failed confirmation"), { code: "Closed" });
  assert.equal(typeof unconfirmed.id, "string");
  assert.equal(c.closed, true);
});
