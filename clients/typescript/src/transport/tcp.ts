/**
 * TCP and TLS connections to the broker, with `node:net` and `node:tls` (Node only).
 *
 * @module
 */

import * as net from "node:net";
import * as tls from "node:tls";
import { ConnectError } from "../errors.js";
import type { Transport, TransportConnection, TransportHandlers } from "./transport.js";

/** PEM text or DER bytes, one or several. */
export type TlsMaterial = string | Uint8Array | readonly (string | Uint8Array)[];

/** How to speak TLS to the broker. */
export interface TlsOptions {
  /** CA certificates the broker's certificate must chain to (default: the system's). */
  readonly ca?: TlsMaterial;
  /** A client certificate chain to present, with `key`. */
  readonly cert?: TlsMaterial;
  /** The client certificate's private key. */
  readonly key?: TlsMaterial;
  /** The name the broker's certificate must hold, when it is not the address's host. */
  readonly servername?: string;
}

/** A host and port. */
export interface HostPort {
  /** A DNS name or an IP address (without brackets). */
  readonly host: string;
  /** The TCP port. */
  readonly port: number;
}

/**
 * Splits `HOST:PORT` (or `[IPV6]:PORT`) into its parts.
 *
 * @throws {@link ConnectError} `InvalidOptions` when `address` has no valid port.
 */
export function parseHostPort(address: string): HostPort {
  const at = address.lastIndexOf(":");
  const host = at > 0 ? address.slice(0, at).replace(/^\[(.*)\]$/, "$1") : "";
  const port = Number(address.slice(at + 1));
  if (host === "" || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new ConnectError("InvalidOptions", `${JSON.stringify(address)} is not HOST:PORT`);
  }
  return { host, port };
}

function material(m: TlsMaterial | undefined): string | Buffer | (string | Buffer)[] | undefined {
  const one = (v: string | Uint8Array): string | Buffer =>
    typeof v === "string" ? v : Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  if (m === undefined) {
    return undefined;
  }
  return Array.isArray(m) ? m.map(one) : one(m as string | Uint8Array);
}

/** System errors of the network (as opposed to TLS failures). */
function isNetworkError(error: unknown): boolean {
  const code = (error as { code?: unknown })?.code;
  // EPROTO is how Node reports a TLS protocol failure (a plaintext peer, a bad record).
  return typeof code === "string" && /^E[A-Z]+$/.test(code) && code !== "EPROTO";
}

/** Connections over TCP, or TLS when {@link TlsOptions} are given. */
export class TcpTransport implements Transport {
  /** `HOST:PORT` of the broker. */
  readonly address: string;
  private readonly target: HostPort;
  private readonly tls: TlsOptions | undefined;

  /**
   * Connections to `address` (`HOST:PORT`), over TLS when `options.tls` is set.
   *
   * @throws {@link ConnectError} `InvalidOptions` for an address without a valid port.
   */
  constructor(address: string, options: { readonly tls?: TlsOptions } = {}) {
    this.target = parseHostPort(address);
    this.address = address;
    this.tls = options.tls;
  }

  /** Opens a TCP connection (and does the TLS handshake, with TLS). */
  open(signal: AbortSignal): Promise<TransportConnection> {
    return new Promise((resolve, reject) => {
      if (signal.aborted) {
        reject(abortError(signal));
        return;
      }
      const { host, port } = this.target;
      let socket: net.Socket;
      const options = this.tls;
      if (options === undefined) {
        socket = net.connect({ host, port });
      } else {
        const servername = options.servername ?? (net.isIP(host) === 0 ? host : undefined);
        socket = tls.connect({
          host,
          port,
          ca: material(options.ca),
          cert: material(options.cert),
          key: material(options.key),
          ...(servername === undefined ? {} : { servername }),
        });
      }
      socket.setNoDelay(true);
      const cleanup = (): void => {
        socket.off("error", onError);
        socket.off(options === undefined ? "connect" : "secureConnect", onOpen);
        signal.removeEventListener("abort", onAbort);
      };
      const onError = (error: Error): void => {
        cleanup();
        socket.destroy();
        if (options !== undefined && !isNetworkError(error)) {
          reject(
            new ConnectError("Tls", `TLS handshake with ${this.address} failed: ${error.message}`, {
              cause: error,
            }),
          );
        } else {
          reject(
            new ConnectError("Io", `cannot connect to ${this.address}: ${error.message}`, {
              cause: error,
            }),
          );
        }
      };
      const onAbort = (): void => {
        cleanup();
        socket.destroy();
        reject(abortError(signal));
      };
      const onOpen = (): void => {
        cleanup();
        resolve(new TcpConnection(socket));
      };
      socket.once("error", onError);
      socket.once(options === undefined ? "connect" : "secureConnect", onOpen);
      signal.addEventListener("abort", onAbort, { once: true });
    });
  }
}

function abortError(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  return reason instanceof Error ? reason : new ConnectError("Timeout", "connection attempt aborted");
}

/** One TCP (or TLS) connection. */
class TcpConnection implements TransportConnection {
  readonly framing = "stream";
  private readonly socket: net.Socket;
  private error: Error | undefined;

  constructor(socket: net.Socket) {
    this.socket = socket;
  }

  get bufferedAmount(): number {
    return this.socket.writableLength;
  }

  start(handlers: TransportHandlers): void {
    const socket = this.socket;
    socket.on("data", (chunk: Buffer) => {
      // A plain view of the same bytes: no copy, and none of Buffer's different `slice`.
      handlers.data(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength));
    });
    socket.on("drain", () => handlers.drain());
    socket.on("error", (error: Error) => {
      this.error ??= error;
    });
    socket.once("close", () => handlers.close(this.error));
  }

  write(frames: readonly Uint8Array[]): void {
    if (this.socket.destroyed) {
      return;
    }
    if (frames.length === 1) {
      this.socket.write(frames[0] as Uint8Array);
      return;
    }
    // Corked writes leave in one system call.
    this.socket.cork();
    for (const frame of frames) {
      this.socket.write(frame);
    }
    this.socket.uncork();
  }

  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  end(): void {
    this.socket.end();
  }

  destroy(): void {
    this.socket.destroy();
  }
}
