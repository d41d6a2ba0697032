/**
 * The streams of received messages: {@link Subscription} (one channel) and
 * {@link DirectMessages} (everything else).
 *
 * @module
 */

import type { Message } from "./message.js";
import type { BoundedQueue } from "./queue.js";

/** The acknowledgement a delivery asks for, and the connection it arrived on. */
export interface AckRef {
  /** Number of the connection the delivery arrived on: a tag means something only there. */
  readonly epoch: number;
  /** The broker's tag. */
  readonly tag: bigint;
}

/** A delivery on its way to the application. */
export interface Inbound {
  /** The message. */
  readonly msg: Message;
  /** Acknowledged when the application takes the message (automatic acknowledgements). */
  readonly ack: AckRef | undefined;
}

/** What a stream tells the client it belongs to. */
export interface StreamOwner {
  /** The application took a message from a stream. */
  taken(inbound: Inbound): void;
  /** The application closed a stream. */
  closed(stream: MessageStream): void;
}

/**
 * A stream of received messages: an async iterator, read with `for await` or `next()`.
 *
 * Leaving a `for await` loop (`break`, `return`, an exception) closes the stream, as
 * {@link MessageStream.close} does. The stream ends when the client stops.
 */
export abstract class MessageStream implements AsyncIterableIterator<Message> {
  private readonly queue: BoundedQueue<Inbound>;
  private readonly owner: StreamOwner;
  private isClosed = false;

  /** A stream reading from `queue`, which the client fills (made by the client). */
  protected constructor(queue: BoundedQueue<Inbound>, owner: StreamOwner) {
    this.queue = queue;
    this.owner = owner;
  }

  /** The next message, waiting for one; `done` once the stream has ended. */
  async next(): Promise<IteratorResult<Message, undefined>> {
    const item = await this.queue.take();
    if (item.done) {
      return item;
    }
    this.owner.taken(item.value);
    return { value: item.value.msg, done: false };
  }

  /** Closes the stream (what leaving a `for await` loop calls). */
  return(): Promise<IteratorResult<Message, undefined>> {
    this.close();
    return Promise.resolve({ value: undefined, done: true });
  }

  /**
   * Closes the stream: messages still in it are dropped unacknowledged (the broker hands
   * persistent ones over again), and the client stops routing messages to it.
   */
  close(): void {
    if (this.isClosed) {
      return;
    }
    this.isClosed = true;
    this.queue.discard();
    this.owner.closed(this);
  }

  /** Whether {@link MessageStream.close} was called. */
  get closed(): boolean {
    return this.isClosed;
  }

  /** The stream itself. */
  [Symbol.asyncIterator](): this {
    return this;
  }
}

/**
 * The messages of one channel, from `Client.subscribe`.
 *
 * Several subscriptions to one channel each get every message of it. Closing the last one
 * unsubscribes from the channel at the broker. The stream ends when the client stops, or
 * when the broker refuses the channel again after a reconnection.
 */
export class Subscription extends MessageStream {
  /** The channel. */
  readonly channel: string;

  /** The subscription to `channel` reading from `queue` (made by the client). */
  constructor(channel: string, queue: BoundedQueue<Inbound>, owner: StreamOwner) {
    super(queue, owner);
    this.channel = channel;
  }
}

/**
 * The messages sent to this client directly (no channel), and channel messages that no open
 * {@link Subscription} takes, from `Client.directMessages`.
 */
export class DirectMessages extends MessageStream {
  /** The direct stream reading from `queue` (made by the client). */
  constructor(queue: BoundedQueue<Inbound>, owner: StreamOwner) {
    super(queue, owner);
  }
}
