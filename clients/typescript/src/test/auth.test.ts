/**
 * Credentials (protocol version 2) against a broker with an `[auth]` config: a service token,
 * refused tokens, rights, JWTs renewed on the live connection by hand and by a token source.
 */

import assert from "node:assert/strict";
import { createHash, createHmac } from "node:crypto";
import { after, before, test, type TestContext } from "node:test";
import type { Client } from "../client.js";
import { ConnectError, ReauthError, SendError } from "../errors.js";
import { OutgoingMessage } from "../message.js";
import { connect, type NodeConnectOptions } from "../node.js";
import { BrokerProcess, nextEvent, nextMessage, within, WAIT_MS } from "./helpers.js";

const TOKEN = "bct_the-service-token-of-the-typescript-tests";
const SECRET = "the HS256 secret of the TypeScript tests, 32+ bytes";

/** An HS256 JWT for identity `sub`, expiring at `exp` (Unix seconds). */
function jwt(sub: string, exp: number): string {
  const part = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString("base64url");
  const unsigned = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub, exp })}`;
  const signature = createHmac("sha256", SECRET).update(unsigned).digest("base64url");
  return `${unsigned}.${signature}`;
}

const nowSecs = (): number => Math.floor(Date.now() / 1000);

let broker: BrokerProcess;

before(async () => {
  const hash = createHash("sha256").update(TOKEN).digest("hex");
  broker = await BrokerProcess.start({
    config: [
      "[auth]",
      "jwt_leeway_secs = 0",
      "",
      "[[auth.identities]]",
      'identity = "tsauth"',
      `tokens_sha256 = ["${hash}"]`,
      "",
      "[auth.identities.rights]",
      'names = ["tsauth", "tsauth.*"]',
      'send_clients = ["tsauth", "tsauth.*"]',
      "",
      "[[auth.jwt_keys]]",
      'algorithm = "HS256"',
      `secret = "${SECRET}"`,
      "",
    ].join("\n"),
  });
});

after(async () => {
  await broker.dispose();
});

async function client(t: TestContext, options: NodeConnectOptions): Promise<Client> {
  const c = await within(connect(broker.address, options), WAIT_MS, "a connection");
  t.after(() => c.close());
  return c;
}

/** The error `promise` rejects with, which must be a refused connection. */
async function refusal(promise: Promise<unknown>): Promise<ConnectError> {
  try {
    await within(promise, WAIT_MS, "the refusal");
  } catch (e) {
    assert.ok(e instanceof ConnectError, `expected a ConnectError, got ${String(e)}`);
    return e;
  }
  assert.fail("the connection was not refused");
}

test("a service token admits its identity", async (t) => {
  const c = await client(t, { name: "tsauth", token: TOKEN });
  assert.equal(c.identity, "tsauth");
  assert.equal(c.credentialExpiresMs, undefined);
  const inbox = c.directMessages();
  assert.ok(inbox !== undefined);
  const confirmed = c.sendConfirmed(OutgoingMessage.toClient("tsauth", "to myself"));
  const got = await nextMessage(inbox, "the message to itself");
  assert.equal(await within(confirmed, WAIT_MS, "the confirmation"), got.id);
});

test("a refused or missing credential is a typed refusal", async () => {
  const wrong = await refusal(connect(broker.address, { name: "tsauth", token: "bct_wrong" }));
  assert.equal(wrong.code, "Refused");
  assert.equal(wrong.serverCode, "Unauthorized");

  const none = await refusal(connect(broker.address, { name: "tsauth" }));
  assert.deepEqual([none.code, none.serverCode], ["Refused", "Unauthorized"]);

  const otherName = await refusal(connect(broker.address, { name: "someone", token: TOKEN }));
  assert.deepEqual([otherName.code, otherName.serverCode], ["Refused", "Unauthorized"]);

  const v1 = await refusal(connect(broker.address, { name: "tsauth", protocolVersion: 1 }));
  assert.deepEqual([v1.code, v1.serverCode], ["Refused", "BadHandshake"]);
});

test("a message to a recipient the identity may not send to is refused as forbidden", async (t) => {
  const c = await client(t, { name: "tsauth.sender", token: TOKEN });
  await assert.rejects(
    within(c.sendConfirmed(OutgoingMessage.toClient("billing", "not yours")), WAIT_MS, "the refusal"),
    (e: unknown) => {
      assert.ok(e instanceof SendError);
      assert.equal(e.code, "Forbidden");
      return true;
    },
  );
  await assert.rejects(
    within(
      c.sendConfirmed(OutgoingMessage.toClient("billing", "nor this").persistent(false)),
      WAIT_MS,
      "the refusal",
    ),
    { code: "Forbidden" },
  );
  // The connection goes on.
  await within(c.flush(), WAIT_MS, "a flush");
});

test("a JWT is renewed on the live connection, and a refused renewal is typed", async (t) => {
  const exp = nowSecs() + 600;
  const c = await client(t, { name: "jwtuser", token: jwt("jwtuser", exp) });
  assert.equal(c.identity, "jwtuser");
  assert.equal(c.credentialExpiresMs, exp * 1000);

  const later = nowSecs() + 1200;
  assert.equal(await within(c.reauth(jwt("jwtuser", later)), WAIT_MS, "the renewal"), later * 1000);
  assert.equal(c.credentialExpiresMs, later * 1000);

  // A token of another identity is refused; the broker closes the connection and the client
  // comes back with the credential it has.
  const events = c.events();
  await assert.rejects(within(c.reauth(jwt("mallory", later)), WAIT_MS, "the refusal"), (e: unknown) => {
    assert.ok(e instanceof ReauthError);
    assert.equal(e.code, "Refused");
    assert.equal(e.serverCode, "Unauthorized");
    return true;
  });
  await nextEvent(events, "Connected");
  assert.equal(c.identity, "jwtuser");
  assert.equal(c.credentialExpiresMs, later * 1000);
});

test("a token source renews the credential before it expires", async (t) => {
  let calls = 0;
  const renewed = nowSecs() + 3600;
  const c = await client(t, {
    name: "refresher",
    token: jwt("refresher", nowSecs() + 3),
    tokenRefresh: () => {
      calls++;
      return Promise.resolve(jwt("refresher", renewed));
    },
  });
  const events = c.events();
  const reauthed = await nextEvent(events, "Reauthed");
  assert.equal(reauthed.expiresMs, renewed * 1000);
  assert.equal(c.credentialExpiresMs, renewed * 1000);
  assert.equal(calls, 1);
});
