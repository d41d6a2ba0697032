// The example page in a real browser (headless Chromium driven by playwright-core) against
// the broker binary: two pages exchange messages through a channel, a persistent message to a
// closed page arrives when it opens again, a delivery failure shows; and a message from each
// of a Rust client, a Node client and a page reaches the other two.
//
// Needs the broker and CLI built (cargo build --workspace --bins), the TypeScript client built
// (npm --prefix clients/typescript run build) and Chromium (CHROMIUM, default /usr/bin/chromium).
// Saves screenshots of the two pages after the exchange to test-results/exchange.png (alice)
// and exchange-bob.png.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { serve } from "../serve.mjs";
import {
  BrokerProcess,
  CLI_BIN,
  WAIT_MS,
  nextMessage,
  run,
  text,
  within,
} from "../../../clients/typescript/dist/test/helpers.js";
import { OutgoingMessage, connect as connectTcp } from "../../../clients/typescript/dist/node.js";

const here = fileURLToPath(new URL("..", import.meta.url));
let server;
let origin;
let broker;
let browser;

before(async () => {
  server = await serve(0);
  origin = `http://127.0.0.1:${server.address().port}`;
  broker = await BrokerProcess.start({ http: true, args: ["--http-allowed-origins", origin] });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    // Nothing but loopback: no background fetches, updates or QUIC. Root (as in CI
    // containers) needs Chromium's sandbox off.
    args: [
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      ...(process.getuid?.() === 0 ? ["--no-sandbox"] : []),
    ],
  });
});

after(async () => {
  await browser?.close();
  await broker?.dispose();
  server?.close();
});

/** A page of the example, connected as `name`, in `channel` when given. */
async function open(name, channel) {
  const page = await browser.newPage();
  page.setDefaultTimeout(WAIT_MS);
  const errors = [];
  page.on("pageerror", (e) => errors.push(e));
  const params = new URLSearchParams({ broker: broker.webSocketUrl, name, connect: "1" });
  if (channel) params.set("channel", channel);
  await page.goto(`${origin}/?${params}`);
  await page.locator("#status.connected").waitFor();
  if (channel) await page.locator(`#notices li[data-joined="${channel}"]`).waitFor();
  page.errors = errors;
  return page;
}

async function send(page, text, { to, persistent = false } = {}) {
  await page.check(`input[name=kind][value=${to ? "client" : "channel"}]`);
  if (to) await page.fill("#to", to);
  await page.setChecked("#persistent", persistent);
  await page.fill("#text", text);
  const sent = await page.locator("#notices li[data-sent]").count();
  await page.click("#send-button");
  await page.locator("#notices li[data-sent]").nth(sent).waitFor();
}

const message = (page, text) => page.locator(`#messages li[data-text="${text}"]`);

test("two pages talk through a channel; a closed page gets its persistent message; a failure shows", async () => {
  const alice = await open("alice", "room");
  let bob = await open("bob", "room");

  await send(alice, "hello from alice");
  await message(bob, "hello from alice").waitFor();
  assert.equal(await message(bob, "hello from alice").getAttribute("data-sender"), "alice");
  await send(bob, "hello from bob");
  await message(alice, "hello from bob").waitFor();

  // Bob closes his page; a persistent message to him waits for him.
  await bob.close();
  await send(alice, "while you were away", { to: "bob", persistent: true });
  await alice.locator("#notices li[data-accepted]").first().waitFor();
  bob = await open("bob");
  await message(bob, "while you were away").waitFor();

  // Nobody is called "nobody": the failure shows on the sender's page.
  await send(alice, "anyone there?", { to: "nobody" });
  await alice.locator('#failures li[data-reason="NotConnected"]').waitFor();

  mkdirSync(join(here, "test-results"), { recursive: true });
  await alice.screenshot({ path: join(here, "test-results", "exchange.png"), fullPage: true });
  await bob.screenshot({ path: join(here, "test-results", "exchange-bob.png"), fullPage: true });
  assert.deepEqual([...alice.errors, ...bob.errors], []);
  await alice.close();
  await bob.close();
});

test("a message from each of a Rust client, a Node client and a page reaches the other two", async () => {
  const page = await open("page");
  const node = await connectTcp(broker.address, { name: "node" });
  try {
    const inbox = node.directMessages();
    // Read (and so acknowledged) as they come: a persistent message taken live is confirmed
    // to its sender once acknowledged.
    const nodeGot = (async () => {
      const got = new Set();
      for (let i = 0; i < 2; i++) {
        const msg = await nextMessage(inbox, `message ${i + 1} to node`);
        got.add(`${msg.sender}: ${text(msg)}`);
      }
      return got;
    })();
    // Persistent direct messages: each reaches its recipient whenever it listens.
    for (const to of ["node", "page"]) {
      const sent = await run(CLI_BIN, ["--server", broker.address, "send", "--name", "rust", "--to", to, "--persistent", "true", "from rust"]);
      assert.equal(sent.code, 0, sent.stderr);
    }
    for (const to of ["rust", "page"]) {
      await node.sendConfirmed(OutgoingMessage.toClient(to, "from node").persistent(true));
    }
    for (const to of ["rust", "node"]) {
      await send(page, "from page", { to, persistent: true });
    }
    assert.deepEqual(await nodeGot, new Set(["rust: from rust", "page: from page"]));
    await message(page, "from rust").waitFor();
    await message(page, "from node").waitFor();
    const heard = await run(CLI_BIN, ["--server", broker.address, "listen", "--name", "rust", "--count", "2", "--timeout", String(WAIT_MS / 1000)]);
    assert.equal(heard.code, 0, heard.stderr);
    const lines = heard.stdout.trim().split("\n").map((l) => JSON.parse(l));
    assert.deepEqual(new Set(lines.map((l) => `${l.sender}: ${l.data}`)), new Set(["node: from node", "page: from page"]));
    assert.deepEqual(page.errors, []);
  } finally {
    await within(node.close(), WAIT_MS, "the Node client to close");
    await page.close();
  }
});
