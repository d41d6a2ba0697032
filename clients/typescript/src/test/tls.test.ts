/**
 * TLS with `node:tls` against the broker's TLS listener: a trusted certificate, an untrusted
 * one, a name it does not hold, and a plaintext client on the TLS port. The certificates are
 * made with the repository's `benches/tls-certs.sh`, which needs `openssl`.
 */

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { ConnectError } from "../errors.js";
import { OutgoingMessage } from "../message.js";
import { connect } from "../node.js";
import { BrokerProcess, REPO_DIR, nextMessage, text, within, WAIT_MS } from "./helpers.js";


let dir: string;
let broker: BrokerProcess;
let ca: string;

before(async () => {
  const openssl = spawnSync("openssl", ["version"], { stdio: "ignore" }).status === 0;
  assert.ok(openssl, "openssl is needed to make the certificates of these tests");
  dir = mkdtempSync(join(tmpdir(), "broadcast-ts-tls-"));
  const made = spawnSync("bash", [resolve(REPO_DIR, "benches/tls-certs.sh"), dir], { encoding: "utf8" });
  assert.equal(made.status, 0, made.stderr);
  ca = readFileSync(join(dir, "ca.pem"), "utf8");
  broker = await BrokerProcess.start({ tls: { cert: join(dir, "cert.pem"), key: join(dir, "key.pem") } });
});

after(async () => {
  await broker?.dispose();
  if (dir !== undefined) {
    rmSync(dir, { recursive: true, force: true });
  }
});

async function refusal(promise: Promise<unknown>): Promise<ConnectError> {
  try {
    await within(promise, WAIT_MS, "the refusal");
  } catch (e) {
    assert.ok(e instanceof ConnectError, `expected a ConnectError, got ${String(e)}`);
    return e;
  }
  assert.fail("the connection was made");
}

test("a client trusting the broker's CA connects over TLS", async (t) => {
  const secure = await connect(`tls://${broker.tlsAddress}`, { tls: { ca } });
  t.after(() => secure.close());
  const plain = await connect(broker.address);
  t.after(() => plain.close());
  const inbox = plain.directMessages();
  assert.ok(inbox !== undefined);
  const confirmed = secure.sendConfirmed(OutgoingMessage.toClient(plain.name, "encrypted"));
  const got = await nextMessage(inbox, "the message sent over TLS");
  assert.equal(text(got), "encrypted");
  assert.equal(await within(confirmed, WAIT_MS, "the confirmation"), got.id);
  // The same with a host:port address and the tls option.
  const again = await connect(broker.tlsAddress, { tls: { ca } });
  t.after(() => again.close());
  await within(again.flush(), WAIT_MS, "a flush over TLS");
});

test("an untrusted certificate or a name it does not hold is a TLS error", async () => {
  const untrusted = await refusal(connect(`tls://${broker.tlsAddress}`, { reconnect: { maxAttempts: 1 } }));
  assert.equal(untrusted.code, "Tls");
  const otherName = await refusal(
    connect(`tls://${broker.tlsAddress}`, { tls: { ca, servername: "other.example" } }),
  );
  assert.equal(otherName.code, "Tls");
});

test("a plaintext client on the TLS port is told so", async () => {
  const plain = await refusal(connect(broker.tlsAddress, { reconnect: { maxAttempts: 1 } }));
  assert.equal(plain.code, "Protocol");
  assert.match(plain.message, /speaks TLS/);
});
