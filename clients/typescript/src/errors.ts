/**
 * The errors of the package: one class per operation, each with a `code` to switch on rather
 * than a message to parse.
 *
 * - {@link CodecError}: a frame could not be encoded or decoded.
 * - {@link NameError}: a client name, channel name or message id breaks the naming rules.
 * - {@link ConnectError}: connecting (or reconnecting) failed.
 * - {@link SendError}: a message could not be queued, confirmed, or a flush could not complete.
 * - {@link SubscribeError}: a subscription could not be made.
 * - {@link ReauthError}: a fresh credential was not accepted.
 *
 * @module
 */

import type { ErrorCode } from "./frames.js";

/** Base class of every error this package throws or rejects with. */
export abstract class BroadcastError extends Error {
  /** What kind of failure this is; each subclass lists its own codes. */
  abstract readonly code: string;

  /** An error with a human-readable `message`, and the error that caused it, if any. */
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** Kinds of {@link CodecError}. */
export type CodecErrorCode =
  /** A frame header announced more than the receive limit; nothing was allocated for it. */
  | "FrameTooLarge"
  /** A frame body is not a valid frame of the protocol. */
  | "Malformed"
  /** A handshake frame of a protocol version this side does not speak. */
  | "UnsupportedVersion"
  /** A value cannot be encoded (a field out of its range, a list too long, a frame too large). */
  | "Encode";

/**
 * A frame that cannot be encoded or decoded.
 *
 * `Malformed` leaves the framing intact (the next frame can be read); `FrameTooLarge` on
 * decoding means the stream can no longer be trusted and the connection must be closed.
 */
export class CodecError extends BroadcastError {
  /** What went wrong. */
  readonly code: CodecErrorCode;
  /** For `FrameTooLarge`: the length announced or encoded, in bytes. */
  readonly length: number | undefined;
  /** For `FrameTooLarge`: the limit in force, in bytes. */
  readonly limit: number | undefined;
  /** For `UnsupportedVersion`: the version the peer announced. */
  readonly version: number | undefined;

  /** A codec error of kind `code`; `details` carries what that kind reports. */
  constructor(
    code: CodecErrorCode,
    message: string,
    details: { length?: number; limit?: number; version?: number } = {},
  ) {
    super(message);
    this.code = code;
    this.length = details.length;
    this.limit = details.limit;
    this.version = details.version;
  }
}

/** Kinds of {@link NameError}. */
export type NameErrorCode =
  /** The name is empty. */
  | "Empty"
  /** The name is longer than 256 bytes of UTF-8. */
  | "TooLong"
  /** The name holds a control character or white space. */
  | "BadCharacter"
  /** A client name starts with `$`, which belongs to the broker. */
  | "Reserved";

/** A client name, channel name or message id that breaks the rules of the protocol. */
export class NameError extends BroadcastError {
  /** What is wrong with the name. */
  readonly code: NameErrorCode;
  /** What was being named: `client name`, `channel` or `message id`. */
  readonly kind: string;

  /** A refusal of a `kind` name for reason `code`. */
  constructor(code: NameErrorCode, kind: string, message: string) {
    super(message);
    this.code = code;
    this.kind = kind;
  }
}

/** Kinds of {@link ConnectError}. */
export type ConnectErrorCode =
  /** The connection could not be made, or failed during the handshake. */
  | "Io"
  /** The connection and handshake took longer than the connect timeout. */
  | "Timeout"
  /** The broker answered the handshake with an error frame (see `serverCode`). */
  | "Refused"
  /** The peer did not speak the Broadcast protocol as expected. */
  | "Protocol"
  /** TLS could not be set up (an untrusted or expired certificate, one for another name). */
  | "Tls"
  /** Every connection attempt allowed by the reconnect policy failed. */
  | "AttemptsExhausted"
  /** The configured client name is not a valid client name (see `cause`). */
  | "InvalidName"
  /** The options contradict each other or are out of range. */
  | "InvalidOptions";

/** Why connecting failed. */
export class ConnectError extends BroadcastError {
  /** What went wrong. */
  readonly code: ConnectErrorCode;
  /** For `Refused`: the broker's error code. */
  readonly serverCode: ErrorCode | undefined;
  /** For `AttemptsExhausted`: how many attempts were made. */
  readonly attempts: number | undefined;

  /** A connection failure of kind `code`. */
  constructor(
    code: ConnectErrorCode,
    message: string,
    options: { cause?: unknown; serverCode?: ErrorCode; attempts?: number } = {},
  ) {
    super(message, { cause: options.cause });
    this.code = code;
    this.serverCode = options.serverCode;
    this.attempts = options.attempts;
  }
}

/** Kinds of {@link SendError}. */
export type SendErrorCode =
  /** The client was closed, gave up reconnecting, or was replaced by another connection. */
  | "Closed"
  /** The send buffer is full (`trySend` only). */
  | "BufferFull"
  /** The payload exceeds the broker's payload limit, or the frame its frame limit. */
  | "TooLarge"
  /** A client or channel name, or the message id, is not valid (see `cause`). */
  | "InvalidName"
  /** The target is not valid: an empty list, a name listed twice, a list the broker refuses. */
  | "InvalidTarget"
  /** The broker refused the message: this identity may not send to one of its recipients. */
  | "Forbidden";

/** Why a message could not be queued or confirmed, or a flush could not complete. */
export class SendError extends BroadcastError {
  /** What went wrong. */
  readonly code: SendErrorCode;
  /** For `TooLarge`: the size of the payload or frame, in bytes. */
  readonly size: number | undefined;
  /** For `TooLarge`: the limit announced by the broker, in bytes. */
  readonly limit: number | undefined;

  /** A send failure of kind `code`. */
  constructor(
    code: SendErrorCode,
    message: string,
    options: { cause?: unknown; size?: number; limit?: number } = {},
  ) {
    super(message, { cause: options.cause });
    this.code = code;
    this.size = options.size;
    this.limit = options.limit;
  }
}

/** Kinds of {@link SubscribeError}. */
export type SubscribeErrorCode =
  /** The client stopped before the broker answered. */
  | "Closed"
  /** The channel name is not valid (see `cause`). */
  | "InvalidName"
  /** The broker refused the subscription (see `serverCode`). */
  | "Refused";

/** Why a subscription could not be made. */
export class SubscribeError extends BroadcastError {
  /** What went wrong. */
  readonly code: SubscribeErrorCode;
  /** For `Refused`: the broker's error code (`LimitReached`, `Forbidden`, ...). */
  readonly serverCode: ErrorCode | undefined;

  /** A subscription failure of kind `code`. */
  constructor(
    code: SubscribeErrorCode,
    message: string,
    options: { cause?: unknown; serverCode?: ErrorCode } = {},
  ) {
    super(message, { cause: options.cause });
    this.code = code;
    this.serverCode = options.serverCode;
  }
}

/** Kinds of {@link ReauthError}. */
export type ReauthErrorCode =
  /** The connection ended before the broker answered, or the client is closed. */
  | "Closed"
  /** The broker refused the credential (see `serverCode`); it closes the connection. */
  | "Refused";

/** Why a fresh credential was not accepted. */
export class ReauthError extends BroadcastError {
  /** What went wrong. */
  readonly code: ReauthErrorCode;
  /** For `Refused`: the broker's error code (`Unauthorized`). */
  readonly serverCode: ErrorCode | undefined;

  /** A renewal failure of kind `code`. */
  constructor(code: ReauthErrorCode, message: string, options: { serverCode?: ErrorCode } = {}) {
    super(message);
    this.code = code;
    this.serverCode = options.serverCode;
  }
}
