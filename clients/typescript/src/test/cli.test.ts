/**
 * Interoperation with the Rust command-line client, `broadcast send` and `broadcast listen`,
 * in both directions.
 */

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { OutgoingMessage } from "../message.js";
import { connect } from "../node.js";
import { BrokerProcess, CLI_BIN, nextMessage, run, text, unique, within, WAIT_MS } from "./helpers.js";

let broker: BrokerProcess;

before(async () => {
  broker = await BrokerProcess.start();
});

after(async () => {
  await broker.dispose();
});

/** The JSON objects of a command's output, one per line. */
function lines(stdout: string): Record<string, unknown>[] {
  return stdout
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

test("a message from the TypeScript client is printed by `broadcast listen`", async (t) => {
  const ts = await connect(broker.address);
  t.after(() => ts.close());
  const listener = unique("cli-listener");
  // Persistent: it waits in the listener's queue until `listen` connects.
  const id = await within(
    ts.sendConfirmed(OutgoingMessage.toClient(listener, "hello from TypeScript").event("greet")),
    WAIT_MS,
    "the confirmation",
  );
  const out = await run(CLI_BIN, [
    "--server",
    broker.address,
    "listen",
    "--name",
    listener,
    "--count",
    "1",
    "--timeout",
    "10",
  ]);
  assert.equal(out.code, 0, out.stderr);
  const [line, ...rest] = lines(out.stdout);
  assert.deepEqual(rest, []);
  assert.ok(line !== undefined);
  assert.equal(line["id"], id);
  assert.equal(line["sender"], ts.name);
  assert.equal(line["data"], "hello from TypeScript");
  assert.equal(line["name"], "greet");
  assert.equal(line["channel"], null);
  assert.equal(line["persistent"], true);
});

test("a message from `broadcast send` reaches the TypeScript client", async (t) => {
  const ts = await connect(broker.address, { name: unique("ts-listener") });
  t.after(() => ts.close());
  const inbox = ts.directMessages();
  assert.ok(inbox !== undefined);
  const sender = unique("cli-sender");
  // `send` waits for the broker to accept the persistent message, which it does once the
  // TypeScript client has taken (and so acknowledged) it.
  const sending = run(CLI_BIN, [
    "--server",
    broker.address,
    "send",
    "--name",
    sender,
    "--to",
    ts.name,
    "--event",
    "ping",
    "hello from the CLI",
  ]);
  const got = await nextMessage(inbox, "the CLI's message");
  const out = await sending;
  assert.equal(out.code, 0, out.stderr);
  const [report, ...rest] = lines(out.stdout);
  assert.deepEqual(rest, []);
  assert.ok(report !== undefined);
  assert.equal(report["event"], "accepted");
  assert.equal(got.id, report["id"]);
  assert.equal(got.sender, sender);
  assert.equal(text(got), "hello from the CLI");
  assert.equal(got.name, "ping");
  assert.equal(got.persistent, true);
});

test("a channel message from `broadcast send` reaches a TypeScript subscription", async (t) => {
  const ts = await connect(broker.address);
  t.after(() => ts.close());
  const channel = unique("cli-news");
  const news = await ts.subscribe(channel);
  const out = await run(CLI_BIN, [
    "--server",
    broker.address,
    "send",
    "--channel",
    channel,
    "--persistent",
    "false",
    "breaking",
  ]);
  assert.equal(out.code, 0, out.stderr);
  const got = await nextMessage(news, "the channel message");
  assert.deepEqual([got.channel, text(got), got.persistent], [channel, "breaking", false]);
});
