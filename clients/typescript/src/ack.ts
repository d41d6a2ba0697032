/**
 * Bookkeeping of the receiving side of persistent messages: the batch of acknowledgements
 * waiting to be written ({@link AckBatch}) and the window of messages already handed to the
 * application ({@link DedupWindow}).
 *
 * @module
 */

import { MAX_ACK_TAGS, type ClientFrame } from "./frames.js";

/** Longest time an acknowledgement waits for other frames to travel with, in milliseconds. */
export const ACK_DELAY_MS = 5;

/**
 * A batch of this many tags is written at once rather than after {@link ACK_DELAY_MS}: the
 * broker hands out a bounded window of unacknowledged deliveries (4,096 by default), so
 * waiting with a quarter of it acknowledged would stall a draining queue.
 */
export const ACK_EAGER = 1024;

/** Tags waiting to be acknowledged, written in as few `Ack` frames as possible. */
export class AckBatch {
  private tags: bigint[] = [];

  /** How many tags wait. */
  get size(): number {
    return this.tags.length;
  }

  /** Adds a tag; true when the batch holds {@link ACK_EAGER} tags or more and should go now. */
  add(tag: bigint): boolean {
    this.tags.push(tag);
    return this.tags.length >= ACK_EAGER;
  }

  /** Empties the batch into `Ack` frames of at most 8,192 tags each. */
  takeFrames(): ClientFrame[] {
    const tags = this.tags;
    this.tags = [];
    const frames: ClientFrame[] = [];
    for (let i = 0; i < tags.length; i += MAX_ACK_TAGS) {
      frames.push({ type: "Ack", tags: tags.slice(i, i + MAX_ACK_TAGS) });
    }
    return frames;
  }

  /** Forgets every tag: they belong to a connection that is gone. */
  clear(): void {
    this.tags = [];
  }
}

/**
 * The (sender, id) pairs of the latest messages handed to the application, at most
 * `capacity` of them, the oldest forgotten first. A redelivered copy of a message still in the
 * window is dropped (and acknowledged) instead of being handed over twice.
 */
export class DedupWindow {
  private readonly capacity: number;
  /** Key of pair number `n` at `ring[n % capacity]`. */
  private readonly ring: string[] = [];
  private next = 0;
  private readonly keys = new Set<string>();

  /** A window of `capacity` pairs; zero keeps none, so nothing is suppressed. */
  constructor(capacity: number) {
    this.capacity = Math.max(0, Math.floor(capacity));
  }

  /** Whether the window remembers anything at all. */
  get enabled(): boolean {
    return this.capacity > 0;
  }

  /** How many pairs it remembers. */
  get size(): number {
    return this.keys.size;
  }

  /** The key of the message `id` from `sender`: no two pairs share one. */
  static key(sender: string, id: string): string {
    return `${sender.length}:${sender}${id}`;
  }

  /** Whether the pair with this key was handed to the application recently. */
  has(key: string): boolean {
    return this.keys.has(key);
  }

  /** Records that the pair with this key was handed to the application. */
  add(key: string): void {
    if (this.capacity === 0 || this.keys.has(key)) {
      return;
    }
    const slot = this.next % this.capacity;
    if (this.ring.length < this.capacity) {
      this.ring.push(key);
    } else {
      this.keys.delete(this.ring[slot] as string);
      this.ring[slot] = key;
    }
    this.keys.add(key);
    this.next++;
  }
}
