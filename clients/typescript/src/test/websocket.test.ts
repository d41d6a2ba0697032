/**
 * The WebSocket transport against the broker binary's WebSocket endpoint (`--http-listen`,
 * `/v1/ws`), with the platform's `WebSocket`. Node 20 and 21 have it behind
 * `--experimental-websocket`: there this file runs itself again in a Node with the flag.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { fileURLToPath } from "node:url";
import { after, before, test, type TestContext } from "node:test";
import type { Client } from "../client.js";
import { ConnectError } from "../errors.js";
import { OutgoingMessage } from "../message.js";
import { connect, type NodeConnectOptions } from "../node.js";
import { BrokerProcess, nextEvent, nextMessage, run, text, unique, within, WAIT_MS } from "./helpers.js";

const hasWebSocket = typeof (globalThis as { WebSocket?: unknown }).WebSocket === "function";

if (!hasWebSocket) {
  test("the WebSocket tests, in a Node with its WebSocket enabled", async () => {
    // A test runner of its own: not a child reporting to this one.
    const env = { ...process.env };
    delete env["NODE_TEST_CONTEXT"];
    const out = await run(
      process.execPath,
      ["--experimental-websocket", "--test", fileURLToPath(import.meta.url)],
      120_000,
      env,
    );
    assert.equal(out.code, 0, `${out.stdout}\n${out.stderr}`);
    assert.match(out.stdout, /# pass [1-9]/);
    assert.match(out.stdout, /# fail 0/);
  });
} else {
  webSocketTests();
}

function webSocketTests(): void {
  const TOKEN = "bct_the-websocket-token-of-the-typescript-tests";
  let broker: BrokerProcess;
  let authBroker: BrokerProcess;

  before(async () => {
    broker = await BrokerProcess.start({ http: true });
    const hash = createHash("sha256").update(TOKEN).digest("hex");
    authBroker = await BrokerProcess.start({
      http: true,
      config: `[[auth.identities]]\nidentity = "wsauth"\ntokens_sha256 = ["${hash}"]\n`,
    });
  });

  after(async () => {
    await broker.dispose();
    await authBroker.dispose();
  });

  async function client(t: TestContext, address: string, options: NodeConnectOptions = {}): Promise<Client> {
    const c = await within(
      connect(address, { reconnect: { initialDelayMs: 10, maxDelayMs: 50 }, ...options }),
      WAIT_MS,
      `a connection to ${address}`,
    );
    t.after(() => c.close());
    return c;
  }

  test("a WebSocket client and a TCP client exchange messages", async (t) => {
    const web = await client(t, broker.webSocketUrl);
    const tcp = await client(t, broker.address);
    const webInbox = web.directMessages();
    const tcpInbox = tcp.directMessages();
    assert.ok(webInbox !== undefined && tcpInbox !== undefined);

    const confirmed = web.sendConfirmed(OutgoingMessage.toClient(tcp.name, "from the browser side"));
    const got = await nextMessage(tcpInbox, "the WebSocket client's message");
    assert.deepEqual([text(got), got.sender], ["from the browser side", web.name]);
    assert.equal(await within(confirmed, WAIT_MS, "the confirmation"), got.id);

    const back = await tcp.send(OutgoingMessage.toClient(web.name, new Uint8Array(70_000).fill(7)));
    const reply = await nextMessage(webInbox, "the TCP client's message");
    assert.equal(reply.id, back);
    assert.equal(reply.data.length, 70_000);

    const channel = unique("ws-news");
    const news = await web.subscribe(channel);
    const id = await tcp.send(OutgoingMessage.toChannel(channel, "news").persistent(false));
    assert.equal((await nextMessage(news, "the channel message")).id, id);
  });

  test("a WebSocket client comes back after the broker restarts", async (t) => {
    const own = await BrokerProcess.start({ http: true });
    t.after(() => own.dispose());
    const web = await client(t, own.webSocketUrl);
    const events = web.events();
    await own.kill();
    await nextEvent(events, "Disconnected");
    await own.restart();
    await nextEvent(events, "Connected");
    const inbox = web.directMessages();
    assert.ok(inbox !== undefined);
    const id = await web.send(OutgoingMessage.toClient(web.name, "still here").persistent(false));
    assert.equal((await nextMessage(inbox, "its own message")).id, id);
  });

  test("credentials travel in the handshake over WebSocket", async (t) => {
    const web = await client(t, authBroker.webSocketUrl, { name: "wsauth", token: TOKEN });
    assert.equal(web.identity, "wsauth");
    await assert.rejects(
      within(connect(authBroker.webSocketUrl, { name: "wsauth", token: "bct_wrong" }), WAIT_MS, "the refusal"),
      (e: unknown) => e instanceof ConnectError && e.code === "Refused" && e.serverCode === "Unauthorized",
    );
  });
}
