/**
 * WebSocket connections to the broker, with the platform's `WebSocket` (browsers, Node 22 and
 * later, or one passed in).
 *
 * Each binary WebSocket message carries exactly one complete Broadcast frame, header (length
 * prefix) included: byte for byte what TCP carries. The broker serves WebSocket clients at
 * `ws://HOST:PORT/v1/ws` (`wss://` with TLS). Credentials go in the `Hello`, never in the URL.
 *
 * @module
 */

import { ConnectError } from "../errors.js";
import type { Transport, TransportConnection, TransportHandlers } from "./transport.js";

/** The path the broker serves WebSocket clients on. */
export const WEBSOCKET_PATH = "/v1/ws";

/** The parts of the standard `WebSocket` this transport uses. */
export interface WebSocketLike {
  /** How binary messages are delivered; set to `arraybuffer`. */
  binaryType: string;
  /** Bytes queued by `send` and not yet sent. */
  readonly bufferedAmount: number;
  /** Sends one binary message. */
  send(data: Uint8Array): void;
  /** Closes the connection. */
  close(code?: number, reason?: string): void;
  /** Listens for `open`, `message`, `error` and `close`. */
  addEventListener(type: string, listener: (event: never) => void): void;
}

/** A `WebSocket` constructor, such as `globalThis.WebSocket`. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Settings of a {@link WebSocketTransport}. */
export interface WebSocketOptions {
  /** The `WebSocket` class to use (default: the global one). */
  readonly WebSocket?: WebSocketConstructor;
  /**
   * Most bytes of received messages held while the client does not read (a WebSocket cannot
   * stop the sender as TCP does); beyond that the connection is closed and the client
   * reconnects, the broker handing unacknowledged messages over again. Default 16 MiB.
   */
  readonly maxPausedBytes?: number;
}

const DEFAULT_MAX_PAUSED_BYTES = 16 * 1024 * 1024;

/** How often the send buffer is looked at while it drains, in milliseconds. */
const DRAIN_POLL_MS = 4;

/**
 * The URL of the broker's WebSocket endpoint: `url` with the path `/v1/ws` when it has none.
 *
 * @throws {@link ConnectError} `InvalidOptions` for a URL that is not `ws:` or `wss:`, or that
 *   holds credentials.
 */
export function webSocketUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new ConnectError("InvalidOptions", `${JSON.stringify(url)} is not a URL`);
  }
  if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
    throw new ConnectError("InvalidOptions", `${JSON.stringify(url)} is not a ws: or wss: URL`);
  }
  if (parsed.username !== "" || parsed.password !== "") {
    throw new ConnectError(
      "InvalidOptions",
      "credentials go in the handshake (the token option), never in the URL",
    );
  }
  if (parsed.pathname === "/" || parsed.pathname === "") {
    parsed.pathname = WEBSOCKET_PATH;
  }
  return parsed.toString();
}

/** Connections over WebSocket. */
export class WebSocketTransport implements Transport {
  /** The URL connected to. */
  readonly address: string;
  private readonly WebSocket: WebSocketConstructor;
  private readonly maxPausedBytes: number;

  /**
   * Connections to `url` (`ws://HOST:PORT` or `wss://HOST:PORT`, path `/v1/ws` by default).
   *
   * @throws {@link ConnectError} `InvalidOptions` for a bad URL, or when there is no
   *   `WebSocket` class (Node before 22 without `options.WebSocket`).
   */
  constructor(url: string, options: WebSocketOptions = {}) {
    this.address = webSocketUrl(url);
    const Ctor =
      options.WebSocket ??
      (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (Ctor === undefined) {
      throw new ConnectError(
        "InvalidOptions",
        "this platform has no WebSocket class: pass one as the WebSocket option",
      );
    }
    this.WebSocket = Ctor;
    this.maxPausedBytes = options.maxPausedBytes ?? DEFAULT_MAX_PAUSED_BYTES;
  }

  /** Opens a WebSocket connection. */
  open(signal: AbortSignal): Promise<TransportConnection> {
    return new Promise((resolve, reject) => {
      if (signal.aborted) {
        reject(abortError(signal));
        return;
      }
      let ws: WebSocketLike;
      try {
        ws = new this.WebSocket(this.address);
      } catch (e) {
        reject(new ConnectError("Io", `cannot connect to ${this.address}: ${String(e)}`, { cause: e }));
        return;
      }
      ws.binaryType = "arraybuffer";
      const conn = new WebSocketConnection(ws, this.maxPausedBytes);
      let settled = false;
      const fail = (error: Error): void => {
        if (settled) {
          return;
        }
        settled = true;
        signal.removeEventListener("abort", onAbort);
        conn.destroy();
        reject(error);
      };
      const onAbort = (): void => fail(abortError(signal));
      conn.onOpen = () => {
        if (settled) {
          return;
        }
        settled = true;
        signal.removeEventListener("abort", onAbort);
        resolve(conn);
      };
      conn.onOpenFailed = (detail) =>
        fail(new ConnectError("Io", `cannot connect to ${this.address}: ${detail}`));
      signal.addEventListener("abort", onAbort, { once: true });
    });
  }
}

function abortError(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  return reason instanceof Error ? reason : new ConnectError("Timeout", "connection attempt aborted");
}

/** One WebSocket connection. */
class WebSocketConnection implements TransportConnection {
  readonly framing = "message";
  /** Called once the connection is open. */
  onOpen: (() => void) | undefined;
  /** Called when the connection fails before it is open. */
  onOpenFailed: ((detail: string) => void) | undefined;
  private readonly ws: WebSocketLike;
  private readonly maxPausedBytes: number;
  private handlers: TransportHandlers | undefined;
  private opened = false;
  private closed = false;
  private paused = true;
  /** Messages received while paused (or before `start`). */
  private held: Uint8Array[] = [];
  private heldBytes = 0;
  private error: Error | undefined;
  private drainTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(ws: WebSocketLike, maxPausedBytes: number) {
    this.ws = ws;
    this.maxPausedBytes = maxPausedBytes;
    ws.addEventListener("open", () => {
      this.opened = true;
      this.onOpen?.();
    });
    ws.addEventListener("message", (event: { data: unknown }) => this.onMessage(event.data));
    ws.addEventListener("error", () => {
      this.error ??= new Error("WebSocket error");
    });
    ws.addEventListener("close", (event: { code: number; reason: string; wasClean: boolean }) => {
      const detail = `WebSocket closed with code ${event.code}${event.reason ? `: ${event.reason}` : ""}`;
      if (!this.opened) {
        this.onOpenFailed?.(detail);
      }
      if (event.code !== 1000 && event.code !== 1005) {
        this.error ??= new Error(detail);
      }
      this.finish();
    });
  }

  get bufferedAmount(): number {
    return this.ws.bufferedAmount;
  }

  start(handlers: TransportHandlers): void {
    this.handlers = handlers;
    this.resume();
  }

  private onMessage(data: unknown): void {
    if (this.closed) {
      return;
    }
    if (!(data instanceof ArrayBuffer)) {
      this.fail(new Error("the broker sent a WebSocket message that is not binary"));
      return;
    }
    const chunk = new Uint8Array(data);
    if (this.paused || this.handlers === undefined) {
      this.heldBytes += chunk.length;
      if (this.heldBytes > this.maxPausedBytes) {
        this.fail(
          new Error(
            `more than ${this.maxPausedBytes} bytes arrived while the client was not reading`,
          ),
        );
        return;
      }
      this.held.push(chunk);
      return;
    }
    this.handlers.data(chunk);
  }

  write(frames: readonly Uint8Array[]): void {
    if (this.closed) {
      return;
    }
    try {
      for (const frame of frames) {
        this.ws.send(frame);
      }
    } catch (e) {
      this.fail(e instanceof Error ? e : new Error(String(e)));
      return;
    }
    if (this.ws.bufferedAmount > 0 && this.drainTimer === undefined) {
      this.watchDrain();
    }
  }

  /** WebSocket has no drain event: the buffer is looked at until it is empty. */
  private watchDrain(): void {
    this.drainTimer = setTimeout(() => {
      this.drainTimer = undefined;
      if (this.closed) {
        return;
      }
      if (this.ws.bufferedAmount > 0) {
        this.watchDrain();
      } else {
        this.handlers?.drain();
      }
    }, DRAIN_POLL_MS);
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
    while (!this.paused && !this.closed && this.handlers !== undefined && this.held.length > 0) {
      const chunk = this.held.shift() as Uint8Array;
      this.heldBytes -= chunk.length;
      this.handlers.data(chunk);
    }
  }

  end(): void {
    if (!this.closed) {
      this.ws.close(1000);
    }
  }

  destroy(): void {
    if (this.closed) {
      return;
    }
    try {
      this.ws.close(1000);
    } catch {
      // Closing an unopened socket may throw on some platforms; it is being dropped anyway.
    }
    this.finish();
  }

  private fail(error: Error): void {
    this.error ??= error;
    this.destroy();
  }

  private finish(): void {
    if (this.closed) {
      return;
    }
    this.closed = true;
    if (this.drainTimer !== undefined) {
      clearTimeout(this.drainTimer);
      this.drainTimer = undefined;
    }
    this.held = [];
    this.heldBytes = 0;
    this.handlers?.close(this.error);
  }
}
