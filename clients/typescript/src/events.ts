/**
 * Connection events: {@link ClientEvent} and the {@link Events} stream.
 *
 * @module
 */

import type { ErrorCode, FailureReason, Recipient } from "./frames.js";
import { Deque } from "./queue.js";

/** Something that happened to the connection, or a notice from the broker. */
export type ClientEvent =
  /** The handshake succeeded (a reconnection: the first connection is made by `connect`). */
  | { readonly type: "Connected"; readonly name: string }
  /** The connection was lost; the client reconnects unless it was replaced. */
  | { readonly type: "Disconnected"; readonly reason: string }
  /**
   * The client waits `delayMs`, then makes connection attempt `attempt` (from 1);
   * `lastError` says why the previous attempt failed.
   */
  | {
      readonly type: "Reconnecting";
      readonly attempt: number;
      readonly delayMs: number;
      readonly lastError: string | undefined;
    }
  /**
   * One recipient will not get one of this client's messages. The client raises it itself,
   * with its own name as recipient, for a received message no stream could take
   * (`NotSubscribed`, `SlowConsumer`), and with reason `TooLarge` for a queued message that no
   * longer fits the limit of the broker it reconnected to.
   */
  | {
      readonly type: "DeliveryFailed";
      readonly id: string;
      readonly recipient: Recipient;
      readonly reason: FailureReason;
      readonly detail: string;
    }
  /** A persistent message is safe with the broker. */
  | { readonly type: "Accepted"; readonly id: string }
  /**
   * The client stopped before the broker confirmed one of its persistent messages: it may or
   * may not have been delivered.
   */
  | { readonly type: "Unconfirmed"; readonly id: string }
  /** The broker reported an error, about a message or channel (`id`) or the connection. */
  | {
      readonly type: "ServerError";
      readonly code: ErrorCode;
      readonly message: string;
      readonly id: string | undefined;
    }
  /** A frame from the broker could not be decoded and was skipped, or was out of place. */
  | { readonly type: "ProtocolError"; readonly detail: string }
  /** A fresh credential was accepted; it expires at `expiresMs` (ms since the epoch). */
  | { readonly type: "Reauthed"; readonly expiresMs: number | undefined }
  /** This stream fell behind and missed `missed` events. */
  | { readonly type: "Lagged"; readonly missed: number }
  /** The client stopped for good: closed, replaced, refused, or out of attempts. */
  | { readonly type: "Closed"; readonly reason: string };

/** The `type` of a {@link ClientEvent}. */
export type ClientEventType = ClientEvent["type"];

type Reader = (result: IteratorResult<ClientEvent, undefined>) => void;

/**
 * A stream of every {@link ClientEvent} raised after it was made, from `Client.events()`.
 *
 * It holds up to its capacity of unread events (`eventBuffer`, 4,096 by default); one that
 * falls further behind loses the oldest and yields a `Lagged` event in their place. It ends
 * once the client has stopped and every event was read, or when the iteration is left
 * (`break` in `for await`, or {@link Events.return}).
 */
export class Events implements AsyncIterableIterator<ClientEvent> {
  private readonly capacity: number;
  private readonly buffer = new Deque<ClientEvent>();
  private readonly readers = new Deque<Reader>();
  private missed = 0;
  private ended = false;
  private readonly detach: (events: Events) => void;

  /** A stream of at most `capacity` unread events; `detach` unregisters it. */
  constructor(capacity: number, detach: (events: Events) => void) {
    this.capacity = Math.max(1, capacity);
    this.detach = detach;
  }

  /** Adds an event (from the client). */
  push(event: ClientEvent): void {
    if (this.ended) {
      return;
    }
    const reader = this.readers.shift();
    if (reader !== undefined) {
      reader({ value: event, done: false });
      return;
    }
    if (this.buffer.length >= this.capacity) {
      this.buffer.shift();
      this.missed++;
    }
    this.buffer.push(event);
  }

  /** No more events come (from the client); the stream ends once drained. */
  end(): void {
    this.ended = true;
    if (this.buffer.length === 0 && this.missed === 0) {
      for (let r = this.readers.shift(); r !== undefined; r = this.readers.shift()) {
        r({ value: undefined, done: true });
      }
    }
  }

  /** The next event, waiting for one. */
  next(): Promise<IteratorResult<ClientEvent, undefined>> {
    if (this.missed > 0) {
      const missed = this.missed;
      this.missed = 0;
      return Promise.resolve({ value: { type: "Lagged", missed }, done: false });
    }
    const event = this.buffer.shift();
    if (event !== undefined) {
      return Promise.resolve({ value: event, done: false });
    }
    if (this.ended) {
      return Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve) => this.readers.push(resolve));
  }

  /** Stops the stream: unread events are dropped and no more are kept. */
  return(): Promise<IteratorResult<ClientEvent, undefined>> {
    this.detach(this);
    this.buffer.drain();
    this.missed = 0;
    this.end();
    return Promise.resolve({ value: undefined, done: true });
  }

  /** The stream itself. */
  [Symbol.asyncIterator](): Events {
    return this;
  }
}

/** Hands every event to every live {@link Events} stream. */
export class EventHub {
  private readonly streams = new Set<Events>();
  private ended = false;
  private readonly capacity: number;

  /** A hub whose streams hold `capacity` unread events each. */
  constructor(capacity: number) {
    this.capacity = capacity;
  }

  /** A new stream of the events raised from now on. */
  subscribe(): Events {
    const events = new Events(this.capacity, (e) => this.streams.delete(e));
    if (this.ended) {
      events.end();
    } else {
      this.streams.add(events);
    }
    return events;
  }

  /** Raises an event. */
  emit(event: ClientEvent): void {
    for (const stream of this.streams) {
      stream.push(event);
    }
  }

  /** Ends every stream, after the events already raised. */
  end(): void {
    this.ended = true;
    for (const stream of this.streams) {
      stream.end();
    }
    this.streams.clear();
  }
}
