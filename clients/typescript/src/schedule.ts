/**
 * Timing helpers that work the same in Node and in browsers.
 *
 * @module
 */

/** A timer handle, whatever the platform returns. */
export type Timer = ReturnType<typeof setTimeout>;

type Immediate = (callback: () => void) => unknown;

const immediate: Immediate | undefined = (globalThis as { setImmediate?: Immediate }).setImmediate;

let channelQueue: (() => void)[] | undefined;
let channel: { port1: { onmessage: unknown }; port2: { postMessage(v: unknown): void } } | undefined;

/**
 * Runs `callback` in a later task, after the I/O and timers already due: work queued by the
 * calls made in this task (and its microtasks) is batched into one run.
 */
export function nextTask(callback: () => void): void {
  if (immediate !== undefined) {
    immediate(callback);
    return;
  }
  const Channel = (globalThis as unknown as { MessageChannel?: new () => NonNullable<typeof channel> })
    .MessageChannel;
  if (Channel === undefined) {
    setTimeout(callback, 0);
    return;
  }
  if (channel === undefined) {
    channel = new Channel();
    channel.port1.onmessage = () => {
      const queue = channelQueue ?? [];
      channelQueue = undefined;
      for (const run of queue) {
        run();
      }
    };
  }
  if (channelQueue === undefined) {
    channelQueue = [];
    channel.port2.postMessage(0);
  }
  channelQueue.push(callback);
}

/** Milliseconds from an arbitrary start, never going back. */
export function monotonicMs(): number {
  return performance.now();
}

/**
 * Resolves after `ms` milliseconds, or as soon as `signal` aborts (it never rejects: the
 * caller checks the signal).
 */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) {
      resolve();
      return;
    }
    const done = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, Math.max(0, ms));
    signal?.addEventListener("abort", done, { once: true });
  });
}
