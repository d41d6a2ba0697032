/**
 * Messages: {@link OutgoingMessage} to send (a builder), {@link Message} received.
 *
 * @module
 */

import { NameError, SendError } from "./errors.js";
import type { Delivery, Publish, Target } from "./frames.js";
import { newMessageId, validateChannel, validateClientName, validateId } from "./names.js";

/** A payload: bytes as they are, or a string sent as its UTF-8 bytes. */
export type Payload = Uint8Array | string;

const utf8 = new TextEncoder();

/** The names of a list target; a lone string is refused (it would be split into letters). */
function nameList(names: Iterable<string>, what: string): string[] {
  if (typeof names === "string") {
    throw new TypeError(`a ${what} is a list of names, not one string`);
  }
  return [...names];
}

function payloadBytes(data: Payload): Uint8Array {
  if (typeof data === "string") {
    return utf8.encode(data);
  }
  if (data instanceof Uint8Array) {
    return data;
  }
  throw new TypeError("a payload is a Uint8Array or a string");
}

/**
 * A message to send, made by one of the static `to*` constructors and finished with the
 * optional chained setters.
 *
 * Messages are persistent by default: the broker keeps them for recipients it cannot reach
 * now, confirms each with `Accepted`, and the client sends an unconfirmed one again after a
 * reconnection.
 *
 * ```ts
 * const msg = OutgoingMessage.toChannel("jobs", "resize 42.png").event("job.created").ttl(60_000);
 * ```
 */
export class OutgoingMessage {
  #id: string;
  readonly #target: Target;
  #name: string | undefined = undefined;
  readonly #data: Uint8Array;
  #persistent = true;
  #ttlMs: number | undefined = undefined;

  private constructor(target: Target, data: Payload) {
    this.#id = newMessageId();
    this.#target = target;
    this.#data = payloadBytes(data);
  }

  /** A message for one client, by name. */
  static toClient(client: string, data: Payload): OutgoingMessage {
    return new OutgoingMessage({ type: "Client", client }, data);
  }

  /** A message for each of several clients, by name; each gets its own delivery outcome. */
  static toGroup(clients: Iterable<string>, data: Payload): OutgoingMessage {
    return new OutgoingMessage({ type: "Group", clients: nameList(clients, "group") }, data);
  }

  /** A message for every subscriber of a channel except the sending connection. */
  static toChannel(channel: string, data: Payload): OutgoingMessage {
    return new OutgoingMessage({ type: "Channel", channel }, data);
  }

  /** A message for every subscriber of any of several channels, each subscriber once. */
  static toChannels(channels: Iterable<string>, data: Payload): OutgoingMessage {
    return new OutgoingMessage(
      { type: "Channels", channels: nameList(channels, "channel list") },
      data,
    );
  }

  /**
   * A message for one client in its role as a subscriber of `channel`: only that client gets
   * it, tagged with the channel.
   */
  static toClientInChannel(client: string, channel: string, data: Payload): OutgoingMessage {
    return new OutgoingMessage({ type: "ClientInChannel", client, channel }, data);
  }

  /** A message for every connected client except the sender. */
  static toAll(data: Payload): OutgoingMessage {
    return new OutgoingMessage({ type: "All" }, data);
  }

  /** Sets an event name, for the receiver to dispatch on. */
  event(name: string): this {
    this.#name = name;
    return this;
  }

  /** Whether the broker keeps the message for recipients it cannot reach now (default true). */
  persistent(persistent: boolean): this {
    this.#persistent = persistent;
    return this;
  }

  /** How long a persistent message may wait for a recipient, in milliseconds. */
  ttl(ms: number): this {
    if (!Number.isSafeInteger(ms) || ms < 0) {
      throw new RangeError(`a time to live is a whole number of milliseconds, not ${ms}`);
    }
    this.#ttlMs = ms;
    return this;
  }

  /** Replaces the message id (by default a new 21-character id). */
  id(id: string): this {
    this.#id = id;
    return this;
  }

  /** The message id. */
  get messageId(): string {
    return this.#id;
  }

  /** Where the message goes. */
  get target(): Target {
    return this.#target;
  }

  /** The payload. */
  get data(): Uint8Array {
    return this.#data;
  }

  /** The event name, if set. */
  get eventName(): string | undefined {
    return this.#name;
  }

  /** Whether the message is persistent. */
  get isPersistent(): boolean {
    return this.#persistent;
  }

  /** The time to live in milliseconds, if set. */
  get ttlMs(): number | undefined {
    return this.#ttlMs;
  }

  /**
   * Checks the id and every name of the target, as the broker would.
   *
   * @throws {@link SendError} `InvalidName` for a bad id, client or channel name (its `cause`
   *   is the {@link NameError}); `InvalidTarget` for an empty list or a name listed twice.
   */
  validate(): void {
    try {
      validateId(this.#id);
      const t = this.#target;
      switch (t.type) {
        case "Client":
          validateClientName(t.client);
          break;
        case "Group":
          checkList("group", t.clients, validateClientName);
          break;
        case "Channel":
          validateChannel(t.channel);
          break;
        case "Channels":
          checkList("channel list", t.channels, validateChannel);
          break;
        case "ClientInChannel":
          validateClientName(t.client);
          validateChannel(t.channel);
          break;
        case "All":
          break;
      }
    } catch (e) {
      if (e instanceof NameError) {
        throw new SendError("InvalidName", `invalid name: ${e.message}`, { cause: e });
      }
      throw e;
    }
  }

  /** The protocol's `Publish` for this message. */
  toPublish(): Publish {
    return {
      id: this.#id,
      target: this.#target,
      name: this.#name,
      data: this.#data,
      persistent: this.#persistent,
      ttlMs: this.#ttlMs === undefined ? undefined : BigInt(this.#ttlMs),
      resent: false,
    };
  }
}

function checkList(what: string, names: readonly string[], validate: (name: string) => void): void {
  if (names.length === 0) {
    throw new SendError("InvalidTarget", `invalid target: the ${what} is empty`);
  }
  const seen = new Set<string>();
  for (const name of names) {
    validate(name);
    if (seen.has(name)) {
      throw new SendError(
        "InvalidTarget",
        `invalid target: ${JSON.stringify(name)} is listed twice in the ${what}`,
      );
    }
    seen.add(name);
  }
}

const utf8Decoder = new TextDecoder();

/** A message received from the broker. */
export class Message {
  /** The sender's id for the message. */
  readonly id: string;
  /** Name of the sending client; `$broker` for messages the broker itself sends. */
  readonly sender: string;
  /** The channel the message came through; `undefined` for a direct message. */
  readonly channel: string | undefined;
  /** The sender's event name. */
  readonly name: string | undefined;
  /** The payload. */
  readonly data: Uint8Array;
  /** The sender's persistence flag. */
  readonly persistent: boolean;
  /**
   * True when this client may have been handed the message before. The client drops
   * redelivered copies of the messages it handed over recently (the duplicate window); one
   * that gets through carries this flag.
   */
  readonly redelivered: boolean;
  /**
   * The broker's acknowledgement tag, on deliveries the broker wants acknowledged (persistent
   * messages). With manual acknowledgements, pass the message to `Client.ack`; otherwise the
   * client acknowledges it when it is taken from its stream.
   */
  readonly ackTag: bigint | undefined;

  /** The message a `Deliver` frame carries. */
  constructor(d: Delivery) {
    this.id = d.id;
    this.sender = d.sender;
    this.channel = d.channel;
    this.name = d.name;
    this.data = d.data;
    this.persistent = d.persistent;
    this.redelivered = d.redelivered;
    this.ackTag = d.ackTag;
  }

  /** The payload read as UTF-8 (invalid sequences become U+FFFD). */
  text(): string {
    return utf8Decoder.decode(this.data);
  }
}
