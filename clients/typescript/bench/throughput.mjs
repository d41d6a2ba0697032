// One-to-one throughput of the TypeScript client against a running broker, with the same
// definitions as the Rust load generator's `throughput` and `persistent` workloads
// (benches/src/workloads.rs), so that the figures can be put side by side:
//
// - throughput: one sender, one receiver, `--count` non-persistent direct messages of
//   `--size` bytes; msgs/s is end to end, distinct messages received from the first send to
//   the last receive; publish msgs/s is messages sent until the sender's flush returned.
// - persistent: `--persistent-count` persistent direct messages, at most 4,096 waiting for
//   their `Accepted` at once; msgs/s is confirmations from the first send to the last one.
//
// Every message is `--size` bytes (at least 16): its sequence number and the time it was made
// (u64, little endian), then filler. Receivers count distinct sequence numbers, so that losses
// and duplicates are counted rather than assumed. Each run is bounded by `--max-secs`, and a
// receiver stops after `--idle-secs` without a message.
//
// Usage (build first: npm run build):
//   node bench/throughput.mjs --addr 127.0.0.1:7400 [--count N] [--persistent-count N]
//     [--size BYTES] [--ws ws://HOST:PORT] [--token TOKEN] [--max-secs S] [--idle-secs S]
//
// Prints one JSON line: {"client":"typescript", ..., "tcp":{"throughput":{...},
// "persistent":{...}}, "ws":{...}}. WebSocket runs need `--ws` and a global WebSocket
// (Node 22 or later).

import { parseArgs } from "node:util";
import { Client, OutgoingMessage, TcpTransport, WebSocketTransport } from "../dist/node.js";

const { values: args } = parseArgs({
  options: {
    addr: { type: "string", default: "127.0.0.1:7400" },
    ws: { type: "string" },
    count: { type: "string", default: "1000000" },
    "persistent-count": { type: "string", default: "100000" },
    size: { type: "string", default: "128" },
    token: { type: "string" },
    "max-secs": { type: "string", default: "180" },
    "idle-secs": { type: "string", default: "5" },
    help: { type: "boolean", default: false },
  },
});

if (args.help) {
  console.log(
    "node bench/throughput.mjs --addr HOST:PORT [--count N] [--persistent-count N] [--size BYTES]\n" +
      "  [--ws ws://HOST:PORT] [--token TOKEN] [--max-secs S] [--idle-secs S]",
  );
  process.exit(0);
}

const wholeNumber = (name) => {
  const n = Number(args[name]);
  if (!Number.isSafeInteger(n) || n < 0) {
    console.error(`--${name} must be a whole number`);
    process.exit(2);
  }
  return n;
};

const params = {
  count: wholeNumber("count"),
  persistentCount: wholeNumber("persistent-count"),
  size: Math.max(16, wholeNumber("size")),
  maxMs: wholeNumber("max-secs") * 1000,
  idleMs: wholeNumber("idle-secs") * 1000,
};

/** How many persistent messages wait for their confirmation at once: the client's default. */
const CONFIRM_WINDOW = 4096;

const START = performance.now();
/** Nanoseconds since the start of the process's benchmark, as a u64. */
const nowNs = () => BigInt(Math.round((performance.now() - START) * 1e6));

/** A `size`-byte message: sequence number, send time, filler. */
function message(seq, size) {
  const b = new Uint8Array(size).fill(0x78);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, BigInt(seq), true);
  v.setBigUint64(8, nowNs(), true);
  return b;
}

/** The sequence number of a message. */
function seqOf(data) {
  if (data.length < 8) {
    return -1;
  }
  return Number(new DataView(data.buffer, data.byteOffset, 8).getBigUint64(0, true));
}

/** A set of sequence numbers below a bound, one bit each. */
class SeqSet {
  constructor(limit) {
    this.bits = new Uint32Array(Math.ceil(limit / 32));
    this.limit = limit;
    this.size = 0;
  }
  add(seq) {
    if (seq < 0 || seq >= this.limit) {
      return false;
    }
    const word = seq >>> 5;
    const bit = 1 << (seq & 31);
    if (this.bits[word] & bit) {
      return false;
    }
    this.bits[word] |= bit;
    this.size++;
    return true;
  }
}

/** The id of persistent message `seq`: its number in 21 digits, the length of a default id. */
const confirmId = (seq) => String(seq).padStart(21, "0");

const rate = (n, ms) => (ms > 0 ? Math.round(n / (ms / 1000)) : 0);

/**
 * Receives from `stream` until `expect` distinct messages arrived, nothing came for the idle
 * time, or the deadline passed.
 */
async function receive(stream, expect, deadline) {
  const seen = new SeqSet(expect);
  const r = { unique: 0, total: 0, redelivered: 0, last: undefined };
  let lastMessage = performance.now();
  const watchdog = setInterval(() => {
    const now = performance.now();
    if (now >= deadline || now - lastMessage >= params.idleMs) {
      stream.close();
    }
  }, 100);
  try {
    while (seen.size < expect) {
      const next = await stream.next();
      if (next.done) {
        break;
      }
      lastMessage = performance.now();
      r.total++;
      if (next.value.redelivered) {
        r.redelivered++;
      }
      r.last = lastMessage;
      seen.add(seqOf(next.value.data));
    }
  } finally {
    clearInterval(watchdog);
  }
  r.unique = seen.size;
  return r;
}

/** Counts a sender's DeliveryFailed, ServerError and Lagged events until stopped. */
function watchFailures(client) {
  const events = client.events();
  const f = { delivery_failed: 0, server_errors: 0, events_lagged: 0 };
  const done = (async () => {
    for await (const e of events) {
      if (e.type === "DeliveryFailed") f.delivery_failed++;
      else if (e.type === "ServerError") f.server_errors++;
      else if (e.type === "Lagged") f.events_lagged += e.missed;
    }
  })();
  return {
    async finish() {
      await events.return();
      await done;
      return f;
    },
  };
}

/** Closes `client` at `deadline`: every wait of a sender is bounded. */
function watchdog(client, deadline) {
  const timer = setTimeout(() => {
    console.error(`deadline reached: closing ${client.name}`);
    client.close();
  }, Math.max(0, deadline - performance.now()));
  return () => clearTimeout(timer);
}

async function throughput(open, tag) {
  const deadline = performance.now() + params.maxMs;
  const rxName = `tp-sub-${tag}`;
  const receiver = await open(rxName, {});
  const inbox = receiver.directMessages();
  const sender = await open(`tp-pub-${tag}`, {});
  const failures = watchFailures(sender);
  const stopGuard = watchdog(sender, deadline);
  const received = receive(inbox, params.count, deadline);

  const t0 = performance.now();
  let sent = 0;
  while (sent < params.count && (sent % 1024 !== 0 || performance.now() < deadline)) {
    await sender.send(OutgoingMessage.toClient(rxName, message(sent, params.size)).persistent(false));
    sent++;
  }
  await sender.flush();
  const publishMs = performance.now() - t0;
  const r = await received;
  stopGuard();
  const elapsed = r.last === undefined ? 0 : r.last - t0;
  const f = await failures.finish();
  await sender.close();
  await receiver.close();
  return {
    count: params.count,
    size: params.size,
    sent,
    received: r.unique,
    lost: Math.max(0, sent - r.unique),
    duplicates: r.total - r.unique,
    msgs_per_s: rate(r.unique, elapsed),
    publish_msgs_per_s: rate(sent, publishMs),
    secs: elapsed / 1000,
    ...f,
  };
}

async function persistent(open, tag) {
  const deadline = performance.now() + params.maxMs;
  const count = params.persistentCount;
  const rxName = `ps-sub-${tag}`;
  const receiver = await open(rxName, {});
  const inbox = receiver.directMessages();
  const sender = await open(`ps-pub-${tag}`, { eventBuffer: 2 * CONFIRM_WINDOW });
  const events = sender.events();
  const stopGuard = watchdog(sender, deadline);
  const received = receive(inbox, count, deadline);

  const confirmed = new SeqSet(count);
  let failed = 0;
  let lagged = 0;
  let closed = false;
  let last;
  let firstError;
  let sendFailed = 0;
  const onEvent = (e) => {
    if (e === undefined || e.type === "Closed") {
      closed = true;
    } else if (e.type === "Accepted") {
      const seq = e.id.length === 21 ? Number(e.id) : -1;
      if (confirmed.add(seq)) {
        last = performance.now();
      }
    } else if (e.type === "Unconfirmed" || (e.type === "DeliveryFailed" && e.reason === "TooLarge")) {
      failed++;
      firstError ??= `message ${e.id} never confirmed`;
    } else if (e.type === "Lagged") {
      lagged += e.missed;
    }
  };

  const t0 = performance.now();
  let sent = 0;
  let sending = true;
  for (;;) {
    const waiting = sent - (confirmed.size + failed + sendFailed);
    if (sending && !closed && sent < count && waiting < CONFIRM_WINDOW) {
      if (sent % 1024 === 0 && performance.now() >= deadline) {
        sending = false;
        continue;
      }
      // A burst, then a look at the events.
      const burst = Math.min(CONFIRM_WINDOW - waiting, count - sent, 256);
      for (let i = 0; i < burst; i++) {
        const seq = sent++;
        try {
          await sender.send(OutgoingMessage.toClient(rxName, message(seq, params.size)).id(confirmId(seq)));
        } catch (e) {
          sendFailed++;
          firstError ??= String(e);
          sending = false;
          break;
        }
        if (sent % 1024 === 0) {
          break;
        }
      }
      continue;
    }
    if (closed || (waiting === 0 && (!sending || sent === count))) {
      break;
    }
    const next = await events.next();
    onEvent(next.done ? undefined : next.value);
  }
  stopGuard();
  if (lagged > 0) {
    throw new Error(`the sender's event stream lagged (${lagged} events missed): confirmations cannot be counted`);
  }
  if (firstError !== undefined) {
    console.error(`persistent: ${failed + sendFailed} sends failed, the first with: ${firstError}`);
  }
  const confirmMs = last === undefined ? 0 : last - t0;
  const r = await received;
  await events.return();
  await sender.close();
  await receiver.close();
  return {
    count,
    size: params.size,
    sent,
    confirmed: confirmed.size,
    unconfirmed: Math.max(0, sent - confirmed.size),
    send_failed: failed + sendFailed,
    received: r.unique,
    lost: Math.max(0, sent - r.unique),
    duplicates: r.total - r.unique,
    redelivered: r.redelivered,
    msgs_per_s: rate(confirmed.size, confirmMs),
    secs: confirmMs / 1000,
  };
}

/** Both workloads with clients made by `transport()`. */
async function runAll(transport) {
  const tag = Math.random().toString(36).slice(2, 10);
  const open = (name, options) =>
    Client.connect(transport(), {
      name,
      ...(args.token === undefined ? {} : { token: args.token }),
      reconnect: { maxAttempts: 30 },
      ...options,
    });
  return {
    throughput: await throughput(open, tag),
    persistent: await persistent(open, `${tag}p`),
  };
}

const out = {
  client: "typescript",
  node: process.version,
  addr: args.addr,
  count: params.count,
  persistent_count: params.persistentCount,
  size: params.size,
};
try {
  out.tcp = await runAll(() => new TcpTransport(args.addr));
  if (args.ws !== undefined) {
    if (typeof globalThis.WebSocket === "function") {
      out.ws_url = args.ws;
      out.ws = await runAll(() => new WebSocketTransport(args.ws));
    } else {
      out.ws = { skipped: "this Node has no global WebSocket (Node 22 or later has one)" };
    }
  }
} catch (e) {
  console.error(`benchmark failed: ${e instanceof Error ? e.message : String(e)}`);
  process.exitCode = 1;
}
console.log(JSON.stringify(out));
