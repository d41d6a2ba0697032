/**
 * A scripted broker: the test reads each frame the client writes and decides what to answer,
 * frame by frame, over TCP or over an in-memory WebSocket.
 *
 * @module
 */

import { once } from "node:events";
import * as net from "node:net";
import { FrameDecoder, decodeClientBody, encodeServerFrame, frameBody } from "../codec.js";
import {
  DEFAULT_MAX_FRAME,
  DEFAULT_MAX_PAYLOAD,
  MAX_FRAME_CAP,
  type ClientFrame,
  type Hello,
  type ServerFrame,
  type Welcome,
} from "../frames.js";
import { Deque } from "../queue.js";
import type { WebSocketLike } from "../transport/websocket.js";
import { WAIT_MS, within } from "./helpers.js";

/** A FIFO that consumers await. */
export class Channel<T> {
  private readonly items = new Deque<T>();
  private readonly waiters = new Deque<(v: T) => void>();

  /** Adds a value, handed to the oldest waiting consumer if any. */
  push(v: T): void {
    const w = this.waiters.shift();
    if (w !== undefined) {
      w(v);
    } else {
      this.items.push(v);
    }
  }

  /** The next value, waiting for it; fails after the usual wait naming `what`. */
  next(what: string): Promise<T> {
    if (this.items.length > 0) {
      return Promise.resolve(this.items.shift() as T);
    }
    return within(new Promise<T>((resolve) => this.waiters.push(resolve)), WAIT_MS, what);
  }
}

/** What the client wrote, or the end of its connection. */
type Heard = { readonly frame: ClientFrame } | { readonly closed: true };

/** One client connection, seen from the scripted broker's side. */
export abstract class FakeConnection {
  private readonly heard = new Channel<Heard>();
  /** The client's `Hello`, once read by {@link FakeConnection.handshake}. */
  hello: Hello | undefined;

  /** Called by the subclass for every frame body the client wrote. */
  protected received(body: Uint8Array): void {
    this.heard.push({ frame: decodeClientBody(body) });
  }

  /** Called by the subclass when the connection ends. */
  protected ended(): void {
    this.heard.push({ closed: true });
  }

  /** Writes bytes to the client as they are. */
  abstract sendRaw(bytes: Uint8Array): void;

  /** Closes the connection. */
  abstract close(): void;

  /** Writes a frame to the client. */
  send(frame: ServerFrame): void {
    this.sendRaw(encodeServerFrame(frame, MAX_FRAME_CAP));
  }

  /** The next frame the client writes (pings answered when `answerPings`). */
  async next(what = "a frame from the client"): Promise<ClientFrame> {
    const heard = await this.heard.next(what);
    if ("closed" in heard) {
      throw new Error(`the client closed the connection while the test waited for ${what}`);
    }
    return heard.frame;
  }

  /** The next frame of type `type`, skipping heartbeat pings and acknowledgements. */
  async expect<T extends ClientFrame["type"]>(type: T): Promise<Extract<ClientFrame, { type: T }>> {
    for (;;) {
      const frame = await this.next(`a ${type} frame`);
      if (frame.type === type) {
        return frame as Extract<ClientFrame, { type: T }>;
      }
      if (frame.type !== "Ping" && frame.type !== "Ack") {
        throw new Error(`expected ${type}, got ${frame.type}`);
      }
    }
  }

  /** Waits until the client closes the connection, skipping what it writes meanwhile. */
  async closed(): Promise<void> {
    for (;;) {
      const heard = await this.heard.next("the end of the connection");
      if ("closed" in heard) {
        return;
      }
    }
  }

  /** Reads the `Hello` and answers with a `Welcome` (of the Hello's version by default). */
  async handshake(overrides: Partial<Welcome> = {}): Promise<Hello> {
    const hello = await this.expect("Hello");
    this.hello = hello;
    this.send({
      type: "Welcome",
      version: hello.version,
      name: hello.name ?? "client-made-up",
      server: "fake broker",
      maxFrame: DEFAULT_MAX_FRAME,
      maxPayload: DEFAULT_MAX_PAYLOAD,
      heartbeatMs: 5000,
      identity: undefined,
      namespace: undefined,
      expiresMs: undefined,
      ...overrides,
    });
    return hello;
  }
}

class TcpFakeConnection extends FakeConnection {
  private readonly socket: net.Socket;

  constructor(socket: net.Socket) {
    super();
    this.socket = socket;
    const decoder = new FrameDecoder(MAX_FRAME_CAP);
    socket.on("data", (chunk: Buffer) => {
      decoder.push(new Uint8Array(chunk));
      for (let body = decoder.next(); body !== undefined; body = decoder.next()) {
        this.received(body);
      }
    });
    socket.on("error", () => undefined);
    socket.on("close", () => this.ended());
  }

  sendRaw(bytes: Uint8Array): void {
    this.socket.write(bytes);
  }

  close(): void {
    this.socket.destroy();
  }
}

/** A scripted broker on a TCP port of 127.0.0.1. */
export class FakeBroker {
  /** `127.0.0.1:PORT`. */
  address = "";
  private readonly server: net.Server;
  private readonly accepted = new Channel<FakeConnection>();
  private readonly open = new Set<FakeConnection>();

  private constructor() {
    this.server = net.createServer((socket) => {
      const conn = new TcpFakeConnection(socket);
      this.open.add(conn);
      this.accepted.push(conn);
    });
  }

  /** A scripted broker on a free port. */
  static async start(): Promise<FakeBroker> {
    const broker = new FakeBroker();
    broker.server.listen(0, "127.0.0.1");
    await once(broker.server, "listening");
    broker.address = `127.0.0.1:${(broker.server.address() as net.AddressInfo).port}`;
    return broker;
  }

  /** The next connection a client opens. */
  accept(): Promise<FakeConnection> {
    return this.accepted.next("a connection from the client");
  }

  /** Closes every connection and stops listening. */
  async stop(): Promise<void> {
    const closed = new Promise<void>((done) => this.server.close(() => done()));
    for (const conn of this.open) {
      conn.close();
    }
    await closed;
  }
}

/** The broker's side of a {@link FakeWebSocket}. */
export class WsFakeConnection extends FakeConnection {
  private readonly socket: FakeWebSocket;

  /** The broker's side of `socket`. */
  constructor(socket: FakeWebSocket) {
    super();
    this.socket = socket;
  }

  /** Sends `bytes` as one binary message. */
  sendRaw(bytes: Uint8Array): void {
    const copy = bytes.slice();
    this.socket.fromBroker({ data: copy.buffer });
  }

  /** Sends a text message, which the binary framing does not allow. */
  sendText(text: string): void {
    this.socket.fromBroker({ data: text });
  }

  /** Closes the connection from the broker's side. */
  close(): void {
    this.socket.closeFromBroker(1011, "closed by the fake broker");
  }

  /** A binary message from the client: exactly one frame. */
  deliver(bytes: Uint8Array): void {
    this.received(frameBody(bytes, MAX_FRAME_CAP));
  }

  /** The client's side closed. */
  end(): void {
    this.ended();
  }
}

/**
 * A `WebSocket` for tests: its other end is a {@link WsFakeConnection} that the test scripts.
 * Every connection made with it is handed to {@link FakeWebSocket.accepted}.
 */
export class FakeWebSocket implements WebSocketLike {
  /** The connections made, from the broker's side. */
  static readonly accepted = new Channel<WsFakeConnection>();
  /** The URLs connected to. */
  static readonly urls: string[] = [];
  /** Set by the transport to `arraybuffer`. */
  binaryType = "blob";
  /** Nothing is ever queued: sends are handed over at once. */
  bufferedAmount = 0;
  private readonly listeners = new Map<string, ((event: never) => void)[]>();
  private closed = false;
  private readonly peer: WsFakeConnection;

  /** Opens (in the next task) a connection to the scripted broker. */
  constructor(url: string) {
    FakeWebSocket.urls.push(url);
    this.peer = new WsFakeConnection(this);
    setTimeout(() => {
      this.fire("open", {});
      FakeWebSocket.accepted.push(this.peer);
    }, 0);
  }

  /** Listens for `open`, `message` and `close`. */
  addEventListener(type: string, listener: (event: never) => void): void {
    const list = this.listeners.get(type) ?? [];
    list.push(listener);
    this.listeners.set(type, list);
  }

  /** A binary message to the broker's side. */
  send(data: Uint8Array): void {
    if (!this.closed) {
      this.peer.deliver(data.slice());
    }
  }

  /** Closes the connection from the client's side. */
  close(code = 1000, reason = ""): void {
    this.finish(code, reason, code === 1000);
  }

  /** A message from the broker's side, delivered in a later microtask. */
  fromBroker(event: { data: unknown }): void {
    queueMicrotask(() => {
      if (!this.closed) {
        this.fire("message", event);
      }
    });
  }

  /** The broker's side closes the connection. */
  closeFromBroker(code: number, reason: string): void {
    this.finish(code, reason, false);
  }

  private finish(code: number, reason: string, wasClean: boolean): void {
    if (this.closed) {
      return;
    }
    this.closed = true;
    queueMicrotask(() => {
      this.fire("close", { code, reason, wasClean });
      this.peer.end();
    });
  }

  private fire(type: string, event: unknown): void {
    for (const listener of this.listeners.get(type) ?? []) {
      (listener as (e: unknown) => void)(event);
    }
  }
}
