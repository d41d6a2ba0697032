/**
 * The frames of the Broadcast wire protocol (`protocol/PROTOCOL.md`), as values, and the
 * protocol's constants.
 *
 * Frames are discriminated unions on `type`, named as the protocol names its variants. Struct
 * variants (`Hello`, `Publish`, `Deliver`, ...) carry their struct's fields beside `type`.
 * Every `u64` of the protocol is a `bigint` (tags and nonces use all 64 bits); `u16` and
 * `u32` fields are `number`s. An absent `option<T>` is `undefined`; decoded frames always
 * carry every field, `undefined` included.
 *
 * @module
 */

/** Newest protocol version this package speaks, sent in `Hello` by default. */
export const PROTOCOL_VERSION = 2;

/** Oldest protocol version this package speaks. */
export const MIN_PROTOCOL_VERSION = 1;

/** A protocol version this package speaks. */
export type ProtocolVersion = 1 | 2;

/** Default largest message payload (`data`), in bytes: 1 MiB. */
export const DEFAULT_MAX_PAYLOAD = 1024 * 1024;

/** Room a frame has beyond its payload for ids, names and other fields: 64 KiB. */
export const FRAME_ENVELOPE = 64 * 1024;

/** Default receive limit: a full 1 MiB payload fits in one frame. */
export const DEFAULT_MAX_FRAME = DEFAULT_MAX_PAYLOAD + FRAME_ENVELOPE;

/** Smallest receive limit either side may configure: 4 KiB. */
export const MIN_FRAME = 4 * 1024;

/** Largest receive limit either side may configure: 64 MiB. */
export const MAX_FRAME_CAP = 64 * 1024 * 1024;

/** Most names in a `Group` or `Channels` target; a longer list is a malformed frame. */
export const MAX_LIST = 4096;

/** Most tags in one `Ack` frame; a longer list is a malformed frame. */
export const MAX_ACK_TAGS = 8192;

/** Length of the frame header: the body length as a big-endian `u32`. */
export const HEADER_LEN = 4;

/** Every `ErrorCode`, in the order of their wire numbers. */
export const ERROR_CODES = [
  "UnsupportedVersion",
  "BadHandshake",
  "InvalidName",
  "Replaced",
  "FrameTooLarge",
  "Malformed",
  "InvalidTarget",
  "PayloadTooLarge",
  "LimitReached",
  "ShuttingDown",
  "Timeout",
  "Internal",
  "Unauthorized",
  "Forbidden",
  "AuthExpired",
] as const;

/** The kind of an `Error` frame (`PROTOCOL.md` section 5, `ErrorCode`). */
export type ErrorCode = (typeof ERROR_CODES)[number];

/** Every `FailureReason`, in the order of their wire numbers. */
export const FAILURE_REASONS = [
  "NotConnected",
  "NoSubscribers",
  "SlowConsumer",
  "TooLarge",
  "Expired",
  "QueueFull",
  "AttemptsExhausted",
  "StoreUnavailable",
  "ShuttingDown",
  "NotSubscribed",
] as const;

/** Why a recipient will not get a message (`PROTOCOL.md` section 5, `FailureReason`). */
export type FailureReason = (typeof FAILURE_REASONS)[number];

/** Where a message goes (`PROTOCOL.md` section 5, `Target`). */
export type Target =
  | { readonly type: "Client"; readonly client: string }
  | { readonly type: "Group"; readonly clients: readonly string[] }
  | { readonly type: "Channel"; readonly channel: string }
  | { readonly type: "Channels"; readonly channels: readonly string[] }
  | { readonly type: "ClientInChannel"; readonly client: string; readonly channel: string }
  | { readonly type: "All" };

/** Who a failed delivery was meant for (`PROTOCOL.md` section 5, `Recipient`). */
export type Recipient =
  | { readonly type: "Client"; readonly client: string }
  | { readonly type: "Channel"; readonly channel: string }
  | { readonly type: "All" };

/** The handshake a client opens every connection with. */
export interface Hello {
  /** Protocol version the client speaks: 1 or 2. */
  readonly version: number;
  /** Name to register under; the broker makes one up when absent. */
  readonly name: string | undefined;
  /** Version 2: the credential (a service token or a JWT). */
  readonly token: string | undefined;
  /** Version 2: the namespace to live in; absent for the default one. */
  readonly namespace: string | undefined;
  /** The client's receive limit, in bytes (at least 4,096). */
  readonly maxFrame: number;
  /** How often the client pings when idle, in milliseconds; 0: never. */
  readonly heartbeatMs: number;
}

/** The broker's answer to a `Hello`. Fields 7 to 9 are on the wire in version 2 only. */
export interface Welcome {
  /** Protocol version of the connection: the `Hello`'s. */
  readonly version: number;
  /** Name the connection is registered under. */
  readonly name: string;
  /** Broker software and version, for diagnostics. */
  readonly server: string;
  /** The broker's receive limit, in bytes. */
  readonly maxFrame: number;
  /** Largest payload the broker accepts, in bytes. */
  readonly maxPayload: number;
  /** How often the broker pings a quiet connection, in milliseconds. */
  readonly heartbeatMs: number;
  /** Version 2: the identity the credential proved; absent without credentials. */
  readonly identity: string | undefined;
  /** Version 2: the connection's namespace; absent for the default one. */
  readonly namespace: string | undefined;
  /** Version 2: when the credential expires, in ms since the Unix epoch; absent: never. */
  readonly expiresMs: bigint | undefined;
}

/** A message as its sender hands it to the broker. */
export interface Publish {
  /** Message id made by the sender, kept end to end. */
  readonly id: string;
  /** Where the message goes. */
  readonly target: Target;
  /** Event name for the receiver to dispatch on. */
  readonly name: string | undefined;
  /** The payload. */
  readonly data: Uint8Array;
  /** Whether the broker keeps the message for recipients it cannot reach now. */
  readonly persistent: boolean;
  /** Persistent messages: how long the message may wait, in milliseconds. */
  readonly ttlMs: bigint | undefined;
  /** True when sent again because it was not confirmed before the connection was lost. */
  readonly resent: boolean;
}

/** A message as the broker hands it to a recipient. */
export interface Delivery {
  /** The sender's id for the message. */
  readonly id: string;
  /** Name of the sending client; `$broker` for the broker's own messages. */
  readonly sender: string;
  /** The channel the message came through, if any. */
  readonly channel: string | undefined;
  /** The sender's event name. */
  readonly name: string | undefined;
  /** The payload. */
  readonly data: Uint8Array;
  /** The sender's persistence flag. */
  readonly persistent: boolean;
  /** True when this client may have been handed the message before. */
  readonly redelivered: boolean;
  /** When present, the delivery is acknowledged by sending this tag in an `Ack`. */
  readonly ackTag: bigint | undefined;
}

/** Notice to a sender that one recipient will not get one of its messages. */
export interface DeliveryFailed {
  /** The id of the message. */
  readonly id: string;
  /** Who will not get it. */
  readonly recipient: Recipient;
  /** Why. */
  readonly reason: FailureReason;
  /** Human-readable detail; may be empty. */
  readonly detail: string;
  /** Present when the notice was kept on disk; acknowledged like a delivery. */
  readonly ackTag: bigint | undefined;
}

/** An error the broker reports. */
export interface ErrorFrame {
  /** What kind of error. */
  readonly code: ErrorCode;
  /** Human-readable explanation. */
  readonly message: string;
  /** The message id (refused `Publish`) or channel (refused `Subscribe`) it is about. */
  readonly id: string | undefined;
}

/** Frames a client sends (`PROTOCOL.md` section 3). */
export type ClientFrame =
  | ({ readonly type: "Hello" } & Hello)
  | ({ readonly type: "Publish" } & Publish)
  | { readonly type: "Subscribe"; readonly channel: string }
  | { readonly type: "Unsubscribe"; readonly channel: string }
  | { readonly type: "Ack"; readonly tags: readonly bigint[] }
  | { readonly type: "Ping"; readonly nonce: bigint }
  | { readonly type: "Pong"; readonly nonce: bigint }
  | { readonly type: "Bye" }
  | { readonly type: "Reauth"; readonly token: string };

/** Frames the broker sends (`PROTOCOL.md` section 4). */
export type ServerFrame =
  | ({ readonly type: "Welcome" } & Welcome)
  | ({ readonly type: "Deliver" } & Delivery)
  | ({ readonly type: "DeliveryFailed" } & DeliveryFailed)
  | { readonly type: "Accepted"; readonly id: string }
  | { readonly type: "Subscribed"; readonly channel: string }
  | { readonly type: "Unsubscribed"; readonly channel: string }
  | ({ readonly type: "Error" } & ErrorFrame)
  | { readonly type: "Ping"; readonly nonce: bigint }
  | { readonly type: "Pong"; readonly nonce: bigint }
  | { readonly type: "Bye"; readonly reason: string }
  | { readonly type: "Reauthed"; readonly expiresMs: bigint | undefined };

/** The `type` of every `ClientFrame`, in the order of their wire numbers. */
export const CLIENT_FRAME_TYPES = [
  "Hello",
  "Publish",
  "Subscribe",
  "Unsubscribe",
  "Ack",
  "Ping",
  "Pong",
  "Bye",
  "Reauth",
] as const satisfies readonly ClientFrame["type"][];

/** The `type` of every `ServerFrame`, in the order of their wire numbers. */
export const SERVER_FRAME_TYPES = [
  "Welcome",
  "Deliver",
  "DeliveryFailed",
  "Accepted",
  "Subscribed",
  "Unsubscribed",
  "Error",
  "Ping",
  "Pong",
  "Bye",
  "Reauthed",
] as const satisfies readonly ServerFrame["type"][];

/** The `type` of every `Target`, in the order of their wire numbers. */
export const TARGET_TYPES = [
  "Client",
  "Group",
  "Channel",
  "Channels",
  "ClientInChannel",
  "All",
] as const satisfies readonly Target["type"][];

/** The `type` of every `Recipient`, in the order of their wire numbers. */
export const RECIPIENT_TYPES = ["Client", "Channel", "All"] as const satisfies readonly Recipient["type"][];
