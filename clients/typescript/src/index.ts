/**
 * `@broadcast/client`: the TypeScript client of the Broadcast message broker.
 *
 * This entry point loads in browsers as well as in Node: it holds the wire codec, the client,
 * and the WebSocket transport (the platform's `WebSocket`). The TCP and TLS transport is in
 * `@broadcast/client/node`, which also re-exports everything here.
 *
 * ```ts
 * import { connect, OutgoingMessage } from "@broadcast/client";
 *
 * const client = await connect("wss://broker.example:7443", { name: "dashboard", token });
 * const news = await client.subscribe("news");
 * await client.sendConfirmed(OutgoingMessage.toClient("billing", "invoice 17"));
 * for await (const msg of news) {
 *   console.log(msg.sender, msg.text());
 * }
 * ```
 *
 * @module
 */

import { Client } from "./client.js";
import type { ConnectOptions } from "./options.js";
import { WebSocketTransport, type WebSocketOptions } from "./transport/websocket.js";

export * from "./frames.js";
export {
  FrameDecoder,
  decodeClientBody,
  decodeClientFrame,
  decodeServerBody,
  decodeServerFrame,
  encodeClientFrame,
  encodeServerFrame,
  frameBody,
  markResent,
} from "./codec.js";
export * from "./errors.js";
export {
  MAX_NAME_LEN,
  MESSAGE_ID_LEN,
  newMessageId,
  utf8Length,
  validateChannel,
  validateClientName,
  validateId,
} from "./names.js";
export { Message, OutgoingMessage, type Payload } from "./message.js";
export { Client, type SendResult } from "./client.js";
export type { ConnectOptions, ReconnectPolicy } from "./options.js";
export { Events, type ClientEvent, type ClientEventType } from "./events.js";
export { DirectMessages, MessageStream, Subscription } from "./subscription.js";
export type { Transport, TransportConnection, TransportHandlers } from "./transport/transport.js";
export {
  WEBSOCKET_PATH,
  WebSocketTransport,
  webSocketUrl,
  type WebSocketConstructor,
  type WebSocketLike,
  type WebSocketOptions,
} from "./transport/websocket.js";

/** Settings of {@link connect}: the client's, and the WebSocket transport's. */
export type WebSocketConnectOptions = ConnectOptions & WebSocketOptions;

/**
 * Connects to the broker's WebSocket endpoint at `url` (`ws://HOST:PORT` or
 * `wss://HOST:PORT`; the path defaults to `/v1/ws`). Credentials go in `options.token`,
 * never in the URL.
 *
 * @throws {@link ConnectError} as {@link Client.connect}, and `InvalidOptions` for a bad URL
 *   or a platform without `WebSocket`.
 */
export async function connect(url: string, options: WebSocketConnectOptions = {}): Promise<Client> {
  return Client.connect(new WebSocketTransport(url, options), options);
}
