/**
 * Exponential backoff with full jitter between connection attempts.
 *
 * @module
 */

/**
 * Delays before connection attempts: attempt `n` (from 1) waits a uniformly random time
 * between zero and a ceiling that starts at `initialMs` and doubles with each attempt, up to
 * `maxMs` ("full jitter"), so that many clients that lost the same broker do not all come
 * back at the same instant.
 */
export class Backoff {
  private readonly initialMs: number;
  private readonly maxMs: number;
  private readonly random: () => number;

  /** Delays from `initialMs` doubling to `maxMs`; `random` draws from `[0, 1)`. */
  constructor(initialMs: number, maxMs: number, random: () => number = Math.random) {
    this.initialMs = Math.max(0, initialMs);
    this.maxMs = Math.max(0, maxMs);
    this.random = random;
  }

  /** The largest delay of attempt `attempt` (counted from 1), in milliseconds. */
  ceiling(attempt: number): number {
    const doublings = Math.min(Math.max(attempt - 1, 0), 31);
    return Math.min(this.initialMs * 2 ** doublings, this.maxMs);
  }

  /** A random delay for attempt `attempt`, from 0 to its ceiling, in whole milliseconds. */
  delay(attempt: number): number {
    return Math.round(this.random() * this.ceiling(attempt));
  }
}
