/**
 * {@link ConnectOptions}: how a client connects, reconnects, buffers and acknowledges, with
 * every default.
 *
 * @module
 */

import { ConnectError, NameError } from "./errors.js";
import {
  DEFAULT_MAX_FRAME,
  MAX_FRAME_CAP,
  MIN_FRAME,
  PROTOCOL_VERSION,
  type ProtocolVersion,
} from "./frames.js";
import { utf8Length, validateClientName } from "./names.js";

/** Longest namespace, in bytes of UTF-8. */
export const MAX_NAMESPACE_LEN = 64;

/** How the client reconnects after a lost connection (and retries its first connection). */
export interface ReconnectPolicy {
  /** Ceiling of the first delay, in milliseconds; doubles with each attempt. Default 100. */
  readonly initialDelayMs?: number;
  /** Largest delay ceiling, in milliseconds. Default 5,000. */
  readonly maxDelayMs?: number;
  /**
   * Connection attempts in a row that may fail before the client gives up; `undefined` (the
   * default) never gives up. The limit applies to the first connection too, which makes at
   * least one attempt.
   */
  readonly maxAttempts?: number | undefined;
}

/**
 * Settings of a client. Every one is optional:
 *
 * | setting | default |
 * |---|---|
 * | `name` | none: the broker makes one up, kept across reconnections |
 * | `token` | none |
 * | `tokenRefresh` | none |
 * | `namespace` | the default namespace |
 * | `protocolVersion` | 2 |
 * | `reconnect` | 100 ms doubling to 5 s, full jitter, forever |
 * | `manualAck` | false: acknowledged when taken from a stream |
 * | `dedupWindow` | 16,384 messages |
 * | `sendBuffer` | 1,024 frames |
 * | `receiveBuffer` | 1,024 messages per stream |
 * | `eventBuffer` | 4,096 events per stream |
 * | `heartbeatMs` | 5,000 |
 * | `connectTimeoutMs` | 10,000 per attempt |
 * | `maxFrame` | 1,114,112 bytes |
 * | `maxUnconfirmed` | 4,096 persistent messages |
 * | `closeTimeoutMs` | 5,000 |
 */
export interface ConnectOptions {
  /** Name to register under; the broker makes one up when absent. */
  readonly name?: string;
  /**
   * The credential to present (protocol version 2): a service token or a JWT, sent in the
   * handshake and on every reconnection (the latest one accepted by `reauth` once there is
   * one). Needed by a broker that requires credentials.
   */
  readonly token?: string;
  /**
   * Makes a fresh token. When the broker says the credential expires, the client calls it once
   * 80% of the time left has passed and presents the token in a `Reauth`; a failure is tried
   * again a second later. A credential that expired or was refused is also renewed with it
   * before the next reconnection attempt.
   */
  readonly tokenRefresh?: () => Promise<string>;
  /** The namespace to live in (protocol version 2). */
  readonly namespace?: string;
  /** The protocol version to speak: 2 (default) or 1, which has no token or namespace. */
  readonly protocolVersion?: ProtocolVersion;
  /** How to reconnect. */
  readonly reconnect?: ReconnectPolicy;
  /**
   * With `true`, the application acknowledges each delivery with `Client.ack` once it has
   * dealt with it; by default a delivery is acknowledged when it is taken from its stream.
   */
  readonly manualAck?: boolean;
  /**
   * How many received messages (by sender and id) are remembered to drop redelivered copies
   * of them; 0 turns duplicate suppression off.
   */
  readonly dedupWindow?: number;
  /** Frames that may wait for the connection; then `send` waits and `trySend` fails. */
  readonly sendBuffer?: number;
  /** Messages each subscription and the direct stream hold before reading pauses. */
  readonly receiveBuffer?: number;
  /** Events each `events()` stream holds before it lags (at least 16). */
  readonly eventBuffer?: number;
  /**
   * Ping after this long without sending, in milliseconds; the broker is taken for dead after
   * three of these without receiving anything. 0 turns heartbeats off.
   */
  readonly heartbeatMs?: number;
  /** Time allowed for each connection attempt, connection and handshake, in milliseconds. */
  readonly connectTimeoutMs?: number;
  /** Largest frame body this client accepts, in bytes (4,096 to 64 MiB). */
  readonly maxFrame?: number;
  /** Persistent messages that may wait for the broker's confirmation before sends wait. */
  readonly maxUnconfirmed?: number;
  /** How long `close` waits for outstanding confirmations, in milliseconds. */
  readonly closeTimeoutMs?: number;
}

/** {@link ConnectOptions} with every default filled in and every value checked. */
export interface ResolvedOptions {
  /** Name to register under, if any. */
  readonly name: string | undefined;
  /** The credential to present, if any. */
  readonly token: string | undefined;
  /** The source of fresh tokens, if any. */
  readonly tokenRefresh: (() => Promise<string>) | undefined;
  /** The namespace asked for, if any. */
  readonly namespace: string | undefined;
  /** The protocol version spoken. */
  readonly protocolVersion: ProtocolVersion;
  /** Ceiling of the first reconnection delay, in milliseconds. */
  readonly reconnectInitialMs: number;
  /** Largest reconnection delay ceiling, in milliseconds. */
  readonly reconnectMaxMs: number;
  /** Connection attempts in a row before giving up; `undefined`: never. */
  readonly maxAttempts: number | undefined;
  /** Whether the application acknowledges deliveries itself. */
  readonly manualAck: boolean;
  /** Messages remembered to drop redelivered copies of them. */
  readonly dedupWindow: number;
  /** Commands the send buffer holds. */
  readonly sendBuffer: number;
  /** Messages each stream holds. */
  readonly receiveBuffer: number;
  /** Events each event stream holds. */
  readonly eventBuffer: number;
  /** Heartbeat interval in milliseconds; 0: none. */
  readonly heartbeatMs: number;
  /** Time allowed for each connection attempt, in milliseconds. */
  readonly connectTimeoutMs: number;
  /** Largest frame body this client accepts, in bytes. */
  readonly maxFrame: number;
  /** Persistent messages that may wait for their confirmation. */
  readonly maxUnconfirmed: number;
  /** How long `close` waits for confirmations, in milliseconds. */
  readonly closeTimeoutMs: number;
}

function count(value: number | undefined, fallback: number, min: number, what: string): number {
  const v = value ?? fallback;
  if (!Number.isSafeInteger(v) || v < 0) {
    throw new ConnectError("InvalidOptions", `${what} must be a whole number, not ${String(v)}`);
  }
  return Math.max(min, v);
}

/**
 * Fills in the defaults and checks every value.
 *
 * @throws {@link ConnectError} `InvalidName` for a bad client name, `InvalidOptions` for
 *   anything else out of range (or a token or namespace with protocol version 1).
 */
export function resolveOptions(options: ConnectOptions = {}): ResolvedOptions {
  if (options.name !== undefined) {
    try {
      validateClientName(options.name);
    } catch (e) {
      if (e instanceof NameError) {
        throw new ConnectError("InvalidName", `invalid client name: ${e.message}`, { cause: e });
      }
      throw e;
    }
  }
  if (options.namespace !== undefined) {
    try {
      // A namespace is named as a client is (PROTOCOL.md section 5), in at most 64 bytes.
      validateClientName(options.namespace);
    } catch (e) {
      throw new ConnectError("InvalidOptions", `invalid namespace: ${String((e as Error).message)}`, {
        cause: e,
      });
    }
    if (utf8Length(options.namespace) > MAX_NAMESPACE_LEN) {
      throw new ConnectError(
        "InvalidOptions",
        `invalid namespace: longer than ${MAX_NAMESPACE_LEN} bytes`,
      );
    }
  }
  const protocolVersion = options.protocolVersion ?? PROTOCOL_VERSION;
  if (protocolVersion !== 1 && protocolVersion !== 2) {
    throw new ConnectError("InvalidOptions", `protocol version ${String(protocolVersion)} is not 1 or 2`);
  }
  if (protocolVersion === 1 && (options.token !== undefined || options.namespace !== undefined)) {
    throw new ConnectError(
      "InvalidOptions",
      "a token or a namespace needs protocol version 2",
    );
  }
  if (options.tokenRefresh !== undefined && typeof options.tokenRefresh !== "function") {
    throw new ConnectError("InvalidOptions", "tokenRefresh must be a function");
  }
  const reconnect = options.reconnect ?? {};
  const maxAttempts =
    reconnect.maxAttempts === undefined
      ? undefined
      : count(reconnect.maxAttempts, 1, 1, "reconnect.maxAttempts");
  return {
    name: options.name,
    token: options.token,
    tokenRefresh: options.tokenRefresh,
    namespace: options.namespace,
    protocolVersion,
    reconnectInitialMs: count(reconnect.initialDelayMs, 100, 0, "reconnect.initialDelayMs"),
    reconnectMaxMs: count(reconnect.maxDelayMs, 5_000, 0, "reconnect.maxDelayMs"),
    maxAttempts,
    manualAck: options.manualAck ?? false,
    dedupWindow: count(options.dedupWindow, 16_384, 0, "dedupWindow"),
    sendBuffer: count(options.sendBuffer, 1024, 1, "sendBuffer"),
    receiveBuffer: count(options.receiveBuffer, 1024, 1, "receiveBuffer"),
    eventBuffer: count(options.eventBuffer, 4096, 16, "eventBuffer"),
    heartbeatMs: Math.min(count(options.heartbeatMs, 5_000, 0, "heartbeatMs"), 0xffff_ffff),
    connectTimeoutMs: count(options.connectTimeoutMs, 10_000, 1, "connectTimeoutMs"),
    maxFrame: Math.min(
      Math.max(count(options.maxFrame, DEFAULT_MAX_FRAME, 0, "maxFrame"), MIN_FRAME),
      MAX_FRAME_CAP,
    ),
    maxUnconfirmed: count(options.maxUnconfirmed, 4096, 1, "maxUnconfirmed"),
    closeTimeoutMs: count(options.closeTimeoutMs, 5_000, 0, "closeTimeoutMs"),
  };
}
