/**
 * Queues: {@link Deque}, a growable ring of values, and {@link BoundedQueue}, the bounded
 * asynchronous queue behind every stream of received messages.
 *
 * @module
 */

/** A first-in first-out queue that grows as needed and shrinks its storage when emptied. */
export class Deque<T> {
  private items: (T | undefined)[] = new Array<T | undefined>(8);
  private head = 0;
  private len = 0;

  /** How many values it holds. */
  get length(): number {
    return this.len;
  }

  /** Adds a value at the back. */
  push(value: T): void {
    if (this.len === this.items.length) {
      const next = new Array<T | undefined>(this.items.length * 2);
      for (let i = 0; i < this.len; i++) {
        next[i] = this.items[(this.head + i) % this.items.length];
      }
      this.items = next;
      this.head = 0;
    }
    this.items[(this.head + this.len) % this.items.length] = value;
    this.len++;
  }

  /** Removes and returns the value at the front. */
  shift(): T | undefined {
    if (this.len === 0) {
      return undefined;
    }
    const value = this.items[this.head];
    this.items[this.head] = undefined;
    this.head = (this.head + 1) % this.items.length;
    this.len--;
    if (this.len === 0 && this.items.length > 1024) {
      this.items = new Array<T | undefined>(8);
      this.head = 0;
    }
    return value;
  }

  /** The value at the front, left in place. */
  peek(): T | undefined {
    return this.len === 0 ? undefined : this.items[this.head];
  }

  /** Removes and returns every value, front first. */
  drain(): T[] {
    const out: T[] = [];
    while (this.len > 0) {
      out.push(this.shift() as T);
    }
    return out;
  }

  /** The values, front first, left in place. */
  *[Symbol.iterator](): IterableIterator<T> {
    for (let i = 0; i < this.len; i++) {
      yield this.items[(this.head + i) % this.items.length] as T;
    }
  }
}

type Reader<T> = (result: IteratorResult<T, undefined>) => void;

/**
 * A queue of at most `capacity` values between a producer that must not block and consumers
 * that wait.
 *
 * The producer {@link BoundedQueue.offer}s values and is told when there is no room; it can
 * then wait for {@link BoundedQueue.room}. Consumers {@link BoundedQueue.take} values, waiting
 * while the queue is empty. Once closed, the values still in it can be taken, then `take`
 * reports the end.
 */
export class BoundedQueue<T> {
  /** Most values held at once. */
  readonly capacity: number;
  private readonly items = new Deque<T>();
  private readonly readers = new Deque<Reader<T>>();
  private roomWaiters: (() => void)[] = [];
  private isClosed = false;

  /** An empty queue of at most `capacity` values (at least 1). */
  constructor(capacity: number) {
    this.capacity = Math.max(1, capacity);
  }

  /** How many values wait. */
  get size(): number {
    return this.items.length;
  }

  /** Whether the queue was closed (values may still wait in it). */
  get closed(): boolean {
    return this.isClosed;
  }

  /**
   * Adds a value: handed to a waiting consumer, or queued if there is room. False when it
   * was not taken (the queue is full or closed).
   */
  offer(value: T): boolean {
    if (this.isClosed) {
      return false;
    }
    const reader = this.readers.shift();
    if (reader !== undefined) {
      reader({ value, done: false });
      return true;
    }
    if (this.items.length >= this.capacity) {
      return false;
    }
    this.items.push(value);
    return true;
  }

  /** Resolves once a value can be offered, or the queue is closed. Never rejects. */
  room(): Promise<void> {
    if (this.isClosed || this.items.length < this.capacity) {
      return Promise.resolve();
    }
    return new Promise((resolve) => this.roomWaiters.push(resolve));
  }

  /** The next value, waiting for one; `done` once the queue is closed and empty. */
  take(): Promise<IteratorResult<T, undefined>> {
    if (this.items.length > 0) {
      const value = this.items.shift() as T;
      this.wakeProducers();
      return Promise.resolve({ value, done: false });
    }
    if (this.isClosed) {
      return Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve) => this.readers.push(resolve));
  }

  /** Closes the queue: no more values are taken in; those in it can still be taken. */
  close(): void {
    if (this.isClosed) {
      return;
    }
    this.isClosed = true;
    for (let r = this.readers.shift(); r !== undefined; r = this.readers.shift()) {
      r({ value: undefined, done: true });
    }
    this.wakeProducers();
  }

  /** Closes the queue and returns the values still in it, which are taken out. */
  discard(): T[] {
    this.close();
    return this.items.drain();
  }

  private wakeProducers(): void {
    if (this.roomWaiters.length === 0) {
      return;
    }
    const waiters = this.roomWaiters;
    this.roomWaiters = [];
    for (const wake of waiters) {
      wake();
    }
  }
}
