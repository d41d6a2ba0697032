/**
 * The client against the broker binary over TCP: direct messages, groups, channels, every
 * target, persistence, confirmations and delivery failures.
 */

import assert from "node:assert/strict";
import { after, before, test, type TestContext } from "node:test";
import type { Client } from "../client.js";
import { SendError, SubscribeError } from "../errors.js";
import { OutgoingMessage } from "../message.js";
import { connect, type NodeConnectOptions } from "../node.js";
import { BrokerProcess, nextEvent, nextMessage, text, unique, within, WAIT_MS } from "./helpers.js";

let broker: BrokerProcess;

before(async () => {
  broker = await BrokerProcess.start();
});

after(async () => {
  await broker.dispose();
});

/** A client of the test's broker, closed when the test ends. */
async function client(t: TestContext, options: NodeConnectOptions = {}): Promise<Client> {
  const c = await within(connect(broker.address, options), WAIT_MS, "a connection");
  t.after(() => c.close());
  return c;
}

test("two clients exchange direct messages", async (t) => {
  const alice = await client(t, { name: unique("alice") });
  const bob = await client(t, { name: unique("bob") });
  const inbox = bob.directMessages();
  assert.ok(inbox !== undefined);
  assert.equal(bob.directMessages(), undefined, "the direct stream is taken once");

  // The broker confirms a live delivery once it is acknowledged: when bob takes it.
  const confirmed = alice.sendConfirmed(
    OutgoingMessage.toClient(bob.name, "hello bob").event("greeting"),
  );
  const got = await nextMessage(inbox, "bob's message");
  const id = await within(confirmed, WAIT_MS, "the confirmation");
  assert.equal(got.id, id);
  assert.equal(text(got), "hello bob");
  assert.equal(got.sender, alice.name);
  assert.equal(got.name, "greeting");
  assert.equal(got.channel, undefined);
  assert.equal(got.persistent, true);
  assert.equal(got.redelivered, false);
  assert.equal(typeof got.ackTag, "bigint");

  const aliceInbox = alice.directMessages();
  assert.ok(aliceInbox !== undefined);
  await bob.send(OutgoingMessage.toClient(alice.name, new Uint8Array([0, 1, 255])).persistent(false));
  const back = await nextMessage(aliceInbox, "alice's message");
  assert.deepEqual([...back.data], [0, 1, 255]);
  assert.equal(back.sender, bob.name);
  assert.equal(back.persistent, false);
  assert.equal(back.ackTag, undefined);
});

test("a persistent message to a connected client is confirmed once it is acknowledged", async (t) => {
  const alice = await client(t);
  const bob = await client(t);
  const inbox = bob.directMessages();
  assert.ok(inbox !== undefined);
  const events = alice.events();
  const confirmed = alice.sendConfirmed(OutgoingMessage.toClient(bob.name, "take me"));
  // Taking the message from the stream acknowledges it; the broker then confirms.
  const got = await nextMessage(inbox, "the delivery");
  const id = await within(confirmed, WAIT_MS, "the confirmation");
  assert.equal(got.id, id);
  const accepted = await nextEvent(events, "Accepted", (e) => e.id === id);
  assert.equal(accepted.id, id);
});

test("a group gets one copy per member", async (t) => {
  const alice = await client(t);
  const bob = await client(t);
  const carol = await client(t);
  const bobInbox = bob.directMessages();
  const carolInbox = carol.directMessages();
  assert.ok(bobInbox !== undefined && carolInbox !== undefined);
  const id = await alice.send(OutgoingMessage.toGroup([bob.name, carol.name], "to both").persistent(false));
  for (const inbox of [bobInbox, carolInbox]) {
    const got = await nextMessage(inbox, "the group message");
    assert.equal(got.id, id);
    assert.equal(text(got), "to both");
  }
});

test("channels: subscribe, publish, unsubscribe", async (t) => {
  const channel = unique("news");
  const alice = await client(t);
  const bob = await client(t);
  const news = await within(bob.subscribe(channel), WAIT_MS, "the subscription");
  assert.equal(news.channel, channel);

  const id = await alice.send(OutgoingMessage.toChannel(channel, "extra!").persistent(false));
  const got = await nextMessage(news, "the channel message");
  assert.equal(got.id, id);
  assert.equal(got.channel, channel);
  assert.equal(text(got), "extra!");

  // Closing the last subscription unsubscribes; the flush makes sure the broker has done so.
  news.close();
  await within(bob.flush(), WAIT_MS, "bob's flush");
  const events = alice.events();
  const lost = await alice.send(OutgoingMessage.toChannel(channel, "anyone?").persistent(false));
  const failure = await nextEvent(events, "DeliveryFailed", (e) => e.id === lost);
  assert.equal(failure.reason, "NoSubscribers");
  assert.deepEqual(failure.recipient, { type: "Channel", channel });
  assert.deepEqual(await news.next(), { value: undefined, done: true }, "a closed stream ends");
});

test("two subscriptions to one channel each get every message", async (t) => {
  const channel = unique("twice");
  const alice = await client(t);
  const bob = await client(t);
  const first = await bob.subscribe(channel);
  const second = await bob.subscribe(channel);
  const id = await alice.send(OutgoingMessage.toChannel(channel, "x").persistent(false));
  assert.equal((await nextMessage(first, "the first copy")).id, id);
  assert.equal((await nextMessage(second, "the second copy")).id, id);
  // One closed, the other still gets messages.
  first.close();
  const next = await alice.send(OutgoingMessage.toChannel(channel, "y").persistent(false));
  assert.equal((await nextMessage(second, "the next message")).id, next);
});

test("a Channels target reaches each subscriber once, tagged with its channel", async (t) => {
  const [a, b] = [unique("a"), unique("b")];
  const alice = await client(t);
  const bob = await client(t);
  const carol = await client(t);
  const bobSub = await bob.subscribe(a);
  const carolSub = await carol.subscribe(b);
  const id = await alice.send(OutgoingMessage.toChannels([a, b], "both channels").persistent(false));
  const toBob = await nextMessage(bobSub, "bob's copy");
  const toCarol = await nextMessage(carolSub, "carol's copy");
  assert.deepEqual([toBob.id, toBob.channel], [id, a]);
  assert.deepEqual([toCarol.id, toCarol.channel], [id, b]);
});

test("a ClientInChannel target reaches that subscriber only, or fails as not subscribed", async (t) => {
  const channel = unique("jobs");
  const alice = await client(t);
  const bob = await client(t);
  const carol = await client(t);
  const jobs = await bob.subscribe(channel);
  const id = await alice.send(
    OutgoingMessage.toClientInChannel(bob.name, channel, "for bob only").persistent(false),
  );
  const got = await nextMessage(jobs, "bob's job");
  assert.deepEqual([got.id, got.channel, text(got)], [id, channel, "for bob only"]);

  const events = alice.events();
  const missed = await alice.send(
    OutgoingMessage.toClientInChannel(carol.name, channel, "carol is not subscribed").persistent(false),
  );
  const failure = await nextEvent(events, "DeliveryFailed", (e) => e.id === missed);
  assert.equal(failure.reason, "NotSubscribed");
  assert.deepEqual(failure.recipient, { type: "Client", client: carol.name });
});

test("All reaches every other client of the namespace, and not the sender", async (t) => {
  const namespace = unique("ns");
  const alice = await client(t, { namespace });
  const bob = await client(t, { namespace });
  const carol = await client(t, { namespace });
  assert.equal(alice.namespace, namespace);
  const aliceInbox = alice.directMessages();
  const bobInbox = bob.directMessages();
  const carolInbox = carol.directMessages();
  assert.ok(aliceInbox !== undefined && bobInbox !== undefined && carolInbox !== undefined);
  const id = await alice.send(OutgoingMessage.toAll("everyone").persistent(false));
  assert.equal((await nextMessage(bobInbox, "bob's copy")).id, id);
  assert.equal((await nextMessage(carolInbox, "carol's copy")).id, id);
  // The sender gets nothing: its own next message to itself is the first thing it sees.
  const own = await alice.send(OutgoingMessage.toClient(alice.name, "to myself").persistent(false));
  assert.equal((await nextMessage(aliceInbox, "alice's own message")).id, own);
});

test("a persistent message to an absent name waits for it and is acknowledged once taken", async (t) => {
  const alice = await client(t);
  const dave = unique("dave");
  const first = await within(
    alice.sendConfirmed(OutgoingMessage.toClient(dave, "while you were away")),
    WAIT_MS,
    "the confirmation of a queued message",
  );

  const daveClient = await connect(broker.address, { name: dave });
  const inbox = daveClient.directMessages();
  assert.ok(inbox !== undefined);
  const got = await nextMessage(inbox, "the queued message");
  assert.deepEqual([got.id, text(got), got.sender], [first, "while you were away", alice.name]);
  assert.equal(typeof got.ackTag, "bigint");
  await within(daveClient.close(), WAIT_MS, "dave's close");

  // Acknowledged: after reconnecting, the next message is a new one, not the first again
  // (the queue is delivered in order).
  const second = await alice.sendConfirmed(OutgoingMessage.toClient(dave, "second"));
  const again = await client(t, { name: dave });
  const inbox2 = again.directMessages();
  assert.ok(inbox2 !== undefined);
  assert.equal((await nextMessage(inbox2, "the second message")).id, second);
});

test("a non-persistent message to an absent client reports a delivery failure", async (t) => {
  const alice = await client(t);
  const events = alice.events();
  const nobody = unique("nobody");
  const id = await alice.send(OutgoingMessage.toClient(nobody, "hello?").persistent(false));
  const failure = await nextEvent(events, "DeliveryFailed", (e) => e.id === id);
  assert.equal(failure.reason, "NotConnected");
  assert.deepEqual(failure.recipient, { type: "Client", client: nobody });
});

test("a persistent message that outlives its time to live is reported expired", async (t) => {
  const alice = await client(t);
  const events = alice.events();
  const id = await within(
    alice.sendConfirmed(OutgoingMessage.toClient(unique("away"), "too late").ttl(1)),
    WAIT_MS,
    "the confirmation",
  );
  const failure = await nextEvent(events, "DeliveryFailed", (e) => e.id === id);
  assert.equal(failure.reason, "Expired");
});

test("a non-persistent sendConfirmed resolves once the broker has processed it", async (t) => {
  const alice = await client(t);
  const bob = await client(t);
  const inbox = bob.directMessages();
  assert.ok(inbox !== undefined);
  const id = await within(
    alice.sendConfirmed(OutgoingMessage.toClient(bob.name, "fire").persistent(false)),
    WAIT_MS,
    "the flush",
  );
  assert.equal((await nextMessage(inbox, "the message")).id, id);
});

test("sendBatch queues every valid message, in order, and reports the invalid ones", async (t) => {
  const alice = await client(t);
  const bob = await client(t, { sendBuffer: 4 });
  const inbox = alice.directMessages();
  assert.ok(inbox !== undefined);
  const msgs = Array.from({ length: 10 }, (_, i) =>
    OutgoingMessage.toClient(alice.name, `n${i}`).persistent(false),
  );
  msgs.splice(3, 0, OutgoingMessage.toClient("$broker", "reserved"));
  const results = await within(bob.sendBatch(msgs), WAIT_MS, "the batch");
  assert.equal(results.length, 11);
  const bad = results[3];
  assert.ok(bad !== undefined && !bad.ok && bad.error.code === "InvalidName");
  const ids = results.filter((r) => r.ok).map((r) => r.id);
  for (const id of ids) {
    assert.equal((await nextMessage(inbox, "a batch message")).id, id);
  }
});

test("invalid messages, names and sizes are refused with typed errors", async (t) => {
  const alice = await client(t);
  await assert.rejects(alice.send(OutgoingMessage.toClient("a b", "x")), (e: unknown) => {
    assert.ok(e instanceof SendError);
    assert.equal(e.code, "InvalidName");
    return true;
  });
  await assert.rejects(alice.send(OutgoingMessage.toGroup([], "x")), { code: "InvalidTarget" });
  await assert.rejects(alice.send(OutgoingMessage.toGroup(["a", "a"], "x")), { code: "InvalidTarget" });
  await assert.rejects(
    alice.send(OutgoingMessage.toClient("bob", new Uint8Array(alice.maxPayload + 1))),
    (e: unknown) => e instanceof SendError && e.code === "TooLarge" && e.limit === alice.maxPayload,
  );
  await assert.rejects(alice.subscribe(""), (e: unknown) => {
    assert.ok(e instanceof SubscribeError);
    assert.equal(e.code, "InvalidName");
    return true;
  });
  await assert.rejects(connect(broker.address, { name: "$broker" }), { code: "InvalidName" });
  assert.throws(() => alice.trySend(OutgoingMessage.toClient("", "x")), { code: "InvalidName" });
});

test("trySend fails when the send buffer is full, and send waits for room", async (t) => {
  const alice = await client(t, { sendBuffer: 2, maxUnconfirmed: 1 });
  const away = unique("away");
  // One persistent message waits for its confirmation; the next two fill the buffer.
  const first = alice.sendConfirmed(OutgoingMessage.toClient(away, "1"));
  const queued = [alice.trySend(OutgoingMessage.toClient(away, "2"))];
  let full: unknown;
  for (let i = 0; i < 3 && full === undefined; i++) {
    try {
      queued.push(alice.trySend(OutgoingMessage.toClient(away, `${3 + i}`)));
    } catch (e) {
      full = e;
    }
  }
  assert.ok(full instanceof SendError && full.code === "BufferFull", String(full));
  await within(first, WAIT_MS, "the first confirmation");
  await within(alice.send(OutgoingMessage.toClient(away, "later")), WAIT_MS, "room in the buffer");
});

test("a closed client refuses sends and ends its streams and events", async (t) => {
  const alice = await client(t);
  const sub = await alice.subscribe(unique("c"));
  const events = alice.events();
  await alice.close();
  assert.equal(alice.closed, true);
  await assert.rejects(alice.send(OutgoingMessage.toAll("x")), { code: "Closed" });
  await assert.rejects(alice.flush(), { code: "Closed" });
  await assert.rejects(alice.subscribe("c"), { code: "Closed" });
  assert.deepEqual(await within(sub.next(), WAIT_MS, "the end of the stream"), { value: undefined, done: true });
  const closed = await nextEvent(events, "Closed");
  assert.match(closed.reason, /closed by the application/);
  assert.deepEqual(await events.next(), { value: undefined, done: true });
  await alice.close();
});

test("closing reports the persistent messages the broker never confirmed", async (t) => {
  const alice = await client(t, { closeTimeoutMs: 200 });
  const bob = await client(t);
  // bob's direct stream is never taken: its deliveries wait there unacknowledged, so the
  // broker never confirms alice's live deliveries to bob.
  const events = alice.events();
  const id = await alice.send(OutgoingMessage.toClient(bob.name, "never acknowledged"));
  const pending = alice.sendConfirmed(OutgoingMessage.toClient(bob.name, "never either"));
  await alice.close();
  await assert.rejects(pending, { code: "Closed" });
  const reported = new Set<string>();
  for (;;) {
    const e = await nextEvent(events, "Unconfirmed");
    reported.add(e.id);
    if (reported.size === 2) {
      break;
    }
  }
  assert.ok(reported.has(id));
});

test("another connection under the same name replaces the client for good", async (t) => {
  const name = unique("twin");
  const first = await client(t, { name });
  const events = first.events();
  await client(t, { name });
  const error = await nextEvent(events, "ServerError");
  assert.equal(error.code, "Replaced");
  await nextEvent(events, "Disconnected");
  const closed = await nextEvent(events, "Closed");
  assert.match(closed.reason, /another connection took the name/);
  assert.equal(first.closed, true);
});

test("a client speaking protocol version 1 is served", async (t) => {
  const old = await client(t, { protocolVersion: 1 });
  const inbox = old.directMessages();
  assert.ok(inbox !== undefined);
  // A persistent message to oneself is confirmed once taken (and so acknowledged).
  const confirmed = old.sendConfirmed(OutgoingMessage.toClient(old.name, "to myself"));
  const got = await nextMessage(inbox, "its own message");
  assert.equal(await within(confirmed, WAIT_MS, "the confirmation"), got.id);
  await assert.rejects(connect(broker.address, { protocolVersion: 1, token: "x" }), {
    code: "InvalidOptions",
  });
});
