/**
 * `@broadcast/client/node`: everything of the main entry point, plus TCP and TLS connections
 * with `node:net` and `node:tls`.
 *
 * ```ts
 * import { connect, OutgoingMessage } from "@broadcast/client/node";
 *
 * const client = await connect("127.0.0.1:7400", { name: "worker" });
 * await client.sendConfirmed(OutgoingMessage.toClient("billing", "invoice 17"));
 * await client.close();
 * ```
 *
 * @module
 */

import { Client } from "./client.js";
import { ConnectError } from "./errors.js";
import type { ConnectOptions } from "./options.js";
import { TcpTransport, type TlsOptions } from "./transport/tcp.js";
import type { Transport } from "./transport/transport.js";
import { WebSocketTransport, type WebSocketOptions } from "./transport/websocket.js";

export * from "./index.js";
export {
  TcpTransport,
  parseHostPort,
  type HostPort,
  type TlsMaterial,
  type TlsOptions,
} from "./transport/tcp.js";

/** Settings of {@link connect}: the client's, TLS's, and the WebSocket transport's. */
export interface NodeConnectOptions extends ConnectOptions, WebSocketOptions {
  /** Speak TLS (a `tls://` address does too, with the system's CAs by default). */
  readonly tls?: TlsOptions;
}

/**
 * The transport for `address`: `HOST:PORT` (TCP, or TLS with `options.tls`),
 * `tls://HOST:PORT` (TLS), or `ws://` / `wss://` URLs (WebSocket).
 *
 * @throws {@link ConnectError} `InvalidOptions` for an address none of these.
 */
export function transportFor(address: string, options: NodeConnectOptions = {}): Transport {
  if (/^wss?:\/\//i.test(address)) {
    return new WebSocketTransport(address, options);
  }
  if (address.startsWith("tls://")) {
    return new TcpTransport(address.slice("tls://".length), { tls: options.tls ?? {} });
  }
  if (address.includes("://")) {
    throw new ConnectError("InvalidOptions", `unknown scheme in ${JSON.stringify(address)}`);
  }
  return new TcpTransport(address, options.tls === undefined ? {} : { tls: options.tls });
}

/**
 * Connects to the broker at `address` (see {@link transportFor}) and returns the running
 * client.
 *
 * @throws {@link ConnectError} as {@link Client.connect}, and `InvalidOptions` for a bad
 *   address.
 */
export async function connect(address: string, options: NodeConnectOptions = {}): Promise<Client> {
  return Client.connect(transportFor(address, options), options);
}
