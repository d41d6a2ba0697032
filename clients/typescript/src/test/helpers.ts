/**
 * Test harness: the broker binary on a free port with its own data directory, a TCP proxy
 * that can cut its connections, a transport that records what the client writes, and waits
 * that fail a test after a time instead of sleeping.
 *
 * @module
 */

import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { decodeClientFrame } from "../codec.js";
import type { ClientEvent, Events } from "../events.js";
import type { ClientFrame } from "../frames.js";
import type { Message } from "../message.js";
import type { MessageStream } from "../subscription.js";
import type { Transport, TransportConnection, TransportHandlers } from "../transport/transport.js";

/** How long a test waits for any one thing before it fails. */
export const WAIT_MS = 10_000;

/** The package's directory (the compiled tests live in `dist/test/`). */
export const PACKAGE_DIR = resolve(fileURLToPath(new URL("../../", import.meta.url)));

/** The repository's directory, two levels above the package. */
export const REPO_DIR = resolve(PACKAGE_DIR, "../..");

/** The broker binary: `BROADCAST_BROKER`, or the debug build of the repository. */
export const BROKER_BIN =
  process.env["BROADCAST_BROKER"] ?? resolve(REPO_DIR, "target/debug/broadcast-broker");

/** The command-line client: `BROADCAST_CLI`, or the debug build of the repository. */
export const CLI_BIN = process.env["BROADCAST_CLI"] ?? resolve(REPO_DIR, "target/debug/broadcast");

/** Resolves as `promise` does, or fails after `ms` milliseconds naming `what`. */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** An event of type `T`. */
export type EventOf<T extends ClientEvent["type"]> = Extract<ClientEvent, { type: T }>;

/**
 * The next event of type `type` that `match` accepts (every one by default), skipping the
 * others; fails after `ms` or when the stream ends.
 */
export async function nextEvent<T extends ClientEvent["type"]>(
  events: Events,
  type: T,
  match: (e: EventOf<T>) => boolean = () => true,
  ms = WAIT_MS,
): Promise<EventOf<T>> {
  return within(
    (async () => {
      for (;;) {
        const next = await events.next();
        if (next.done) {
          throw new Error(`the event stream ended before a ${type} event`);
        }
        const e = next.value;
        if (e.type === type && match(e as EventOf<T>)) {
          return e as EventOf<T>;
        }
      }
    })(),
    ms,
    `a ${type} event`,
  );
}

/** The next message of `stream`; fails after `ms` or when the stream ends. */
export async function nextMessage(stream: MessageStream, what: string, ms = WAIT_MS): Promise<Message> {
  const next = await within(stream.next(), ms, what);
  if (next.done) {
    throw new Error(`the stream ended before ${what}`);
  }
  return next.value;
}

/** Text of a message's payload. */
export function text(msg: Message): string {
  return new TextDecoder().decode(msg.data);
}

/** A unique suffix for names, so that tests never share queues. */
export function unique(base: string): string {
  return `${base}-${process.pid}-${Math.random().toString(36).slice(2, 10)}`;
}

/** Options of {@link BrokerProcess.start}. */
export interface BrokerStart {
  /** Extra command-line arguments. */
  readonly args?: readonly string[];
  /** The text of a TOML config file to start with. */
  readonly config?: string;
  /** Whether to serve WebSocket clients too (`--http-listen`). */
  readonly http?: boolean;
  /** A TLS listener too, with this certificate chain and key (PEM files). */
  readonly tls?: { readonly cert: string; readonly key: string };
}

/** The broker binary, running on 127.0.0.1 with a data directory of its own. */
export class BrokerProcess {
  /** `127.0.0.1:PORT` of the broker. */
  address = "";
  /** `ws://127.0.0.1:PORT` of its WebSocket endpoint, when started with `http`. */
  webSocketUrl = "";
  /** `127.0.0.1:PORT` of its TLS listener, when started with `tls`. */
  tlsAddress = "";
  /** Its directory: data and config. */
  readonly dir: string;
  private child: ChildProcess | undefined;
  private readonly options: BrokerStart;
  private exited: Promise<unknown> | undefined;

  private constructor(options: BrokerStart) {
    this.options = options;
    this.dir = mkdtempSync(join(tmpdir(), "broadcast-ts-"));
  }

  /** Starts a broker on a free port and waits until it says where it listens. */
  static async start(options: BrokerStart = {}): Promise<BrokerProcess> {
    const broker = new BrokerProcess(options);
    try {
      await broker.launch("127.0.0.1:0", "127.0.0.1:0");
    } catch (e) {
      broker.cleanUp();
      throw e;
    }
    return broker;
  }

  private async launch(listen: string, httpListen: string): Promise<void> {
    const args = ["--listen", listen, "--data-dir", join(this.dir, "data")];
    if (this.options.http === true) {
      args.push("--http-listen", httpListen);
    }
    const tls = this.options.tls;
    if (tls !== undefined) {
      args.push("--tls-listen", this.tlsAddress || "127.0.0.1:0", "--tls-cert", tls.cert, "--tls-key", tls.key);
    }
    args.push("--store-min-free-mib", "0", "--log", "warn");
    if (this.options.config !== undefined) {
      const file = join(this.dir, "broker.toml");
      writeFileSync(file, this.options.config);
      args.unshift("--config", file);
    }
    args.push(...(this.options.args ?? []));
    const child = spawn(BROKER_BIN, args, { stdio: ["ignore", "ignore", "pipe"] });
    this.child = child;
    this.exited = once(child, "exit").catch(() => undefined);
    const lines = createInterface({ input: child.stderr as NodeJS.ReadableStream });
    const log: string[] = [];
    let address = "";
    let http = "";
    let tlsAddress = "";
    const listening = new Promise<void>((resolveAddress, reject) => {
      lines.on("line", (line) => {
        if (log.length < 50) {
          log.push(line);
        }
        address ||= /broadcast-broker listening on (\S+)/.exec(line)?.[1] ?? "";
        http ||= /listening for HTTP on http:\/\/(\S+)/.exec(line)?.[1] ?? "";
        tlsAddress ||= /listening with TLS on (\S+)/.exec(line)?.[1] ?? "";
        if (
          address !== "" &&
          (http !== "" || this.options.http !== true) &&
          (tlsAddress !== "" || this.options.tls === undefined)
        ) {
          resolveAddress();
        }
      });
      child.once("error", reject);
      child.once("exit", (code) =>
        reject(new Error(`the broker exited (${String(code)}) before listening: ${log.join("\n")}`)),
      );
    });
    await within(listening, WAIT_MS, `the broker at ${BROKER_BIN} to listen`);
    this.address = address;
    this.webSocketUrl = http === "" ? "" : `ws://${http}`;
    this.tlsAddress = tlsAddress;
  }

  /** The broker's port. */
  get port(): number {
    return Number(this.address.slice(this.address.lastIndexOf(":") + 1));
  }

  /** Kills the broker at once (SIGKILL), as a crash would, and waits until it is gone. */
  async kill(): Promise<void> {
    await this.signal("SIGKILL");
  }

  /** Stops the broker (SIGTERM): it says goodbye to its clients and shuts down. */
  async stop(): Promise<void> {
    await this.signal("SIGTERM");
  }

  private async signal(signal: NodeJS.Signals): Promise<void> {
    const child = this.child;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) {
      return;
    }
    child.kill(signal);
    await within(this.exited ?? Promise.resolve(), WAIT_MS, "the broker to exit");
    this.child = undefined;
  }

  /** Starts the broker again on the same port and data directory. */
  async restart(): Promise<void> {
    if (this.child !== undefined) {
      throw new Error("the broker is running");
    }
    await this.launch(this.address, this.webSocketUrl.replace("ws://", "") || "127.0.0.1:0");
  }

  /** Kills the broker and removes its directory. */
  async dispose(): Promise<void> {
    await this.kill();
    this.cleanUp();
  }

  private cleanUp(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A TCP proxy in front of the broker that can cut every connection it carries. */
export class Proxy {
  /** `127.0.0.1:PORT` clients connect to. */
  address = "";
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();

  private constructor(target: string) {
    const at = target.lastIndexOf(":");
    const host = target.slice(0, at);
    const port = Number(target.slice(at + 1));
    this.server = net.createServer((client) => {
      const upstream = net.connect({ host, port });
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on("error", () => undefined);
        s.on("close", () => {
          this.sockets.delete(s);
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream);
      upstream.pipe(client);
    });
  }

  /** A proxy on a free port forwarding to `target` (`HOST:PORT`). */
  static async start(target: string): Promise<Proxy> {
    const proxy = new Proxy(target);
    proxy.server.listen(0, "127.0.0.1");
    await once(proxy.server, "listening");
    const addr = proxy.server.address() as net.AddressInfo;
    proxy.address = `127.0.0.1:${addr.port}`;
    return proxy;
  }

  /** How many connections (both halves counted) are open. */
  get open(): number {
    return this.sockets.size;
  }

  /** Cuts every connection, as a network failure would. */
  cut(): void {
    for (const s of this.sockets) {
      s.destroy();
    }
  }

  /** Stops accepting and cuts everything. */
  async stop(): Promise<void> {
    const closed = new Promise<void>((done) => this.server.close(() => done()));
    this.cut();
    await closed;
  }
}

/** A transport that records, decoded, every frame the client writes through it. */
export class RecordingTransport implements Transport {
  /** Frames written, per connection, in order. */
  readonly connections: ClientFrame[][] = [];
  /** The address of the transport recorded. */
  readonly address: string;
  private readonly inner: Transport;

  /** Records what goes through `inner`. */
  constructor(inner: Transport) {
    this.inner = inner;
    this.address = inner.address;
  }

  /** Every frame written on every connection, in order. */
  get frames(): ClientFrame[] {
    return this.connections.flat();
  }

  /** Opens a connection with the transport recorded, and records what is written on it. */
  async open(signal: AbortSignal): Promise<TransportConnection> {
    const conn = await this.inner.open(signal);
    const log: ClientFrame[] = [];
    this.connections.push(log);
    return {
      framing: conn.framing,
      get bufferedAmount() {
        return conn.bufferedAmount;
      },
      start: (handlers: TransportHandlers) => conn.start(handlers),
      write: (frames: readonly Uint8Array[]) => {
        for (const f of frames) {
          log.push(decodeClientFrame(f));
        }
        conn.write(frames);
      },
      pause: () => conn.pause(),
      resume: () => conn.resume(),
      end: () => conn.end(),
      destroy: () => conn.destroy(),
    };
  }
}

/** Runs a command to its end within `ms`, in `env`; returns its exit code and output. */
export async function run(
  command: string,
  args: readonly string[],
  ms = WAIT_MS,
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"], env });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
  child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  try {
    const [code] = (await within(once(child, "close"), ms, `${command} ${args.join(" ")}`)) as [
      number | null,
    ];
    return { code, stdout, stderr };
  } finally {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGKILL");
    }
  }
}
