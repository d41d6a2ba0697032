/**
 * The persistent messages handed to a connection and not yet confirmed by the broker's
 * `Accepted`, kept in send order to be sent again after a reconnection.
 *
 * @module
 */

import { markResent } from "./codec.js";
import type { SendError } from "./errors.js";
import type { Target } from "./frames.js";

/** Where `Client.sendConfirmed` waits for the outcome of one message. */
export interface Confirm {
  /** The broker confirmed the message. */
  resolve(): void;
  /** The message will never be confirmed. */
  reject(error: SendError): void;
}

/** One persistent message waiting for its `Accepted`. */
export interface Unconfirmed {
  /** The message id. */
  readonly id: string;
  /** Where it goes, for reports about it. */
  readonly target: Target;
  /** The encoded `Publish` frame; once sent again, with `resent` set. */
  frame: Uint8Array;
  /** Whether `frame` has `resent` set. */
  resent: boolean;
  /** The caller of `sendConfirmed` waiting for it, if any. */
  readonly confirm: Confirm | undefined;
}

/** The frame of `msg` to send again, marked as resent the first time. */
export function resendFrame(msg: Unconfirmed): Uint8Array {
  if (!msg.resent) {
    msg.frame = markResent(msg.frame);
    msg.resent = true;
  }
  return msg.frame;
}

/**
 * The unconfirmed messages in send order, findable by id. Ids need not be unique: an
 * `Accepted` confirms the oldest unconfirmed message with its id.
 */
export class UnconfirmedSet {
  private nextSeq = 0;
  /** Messages by sequence number; a `Map` keeps them in insertion (send) order. */
  private readonly bySeq = new Map<number, Unconfirmed>();
  /** Sequence numbers of each id, oldest first. */
  private readonly byId = new Map<string, number[]>();

  /** How many messages wait. */
  get size(): number {
    return this.bySeq.size;
  }

  /** Adds a message after every other one. */
  push(msg: Unconfirmed): void {
    const seq = this.nextSeq++;
    this.bySeq.set(seq, msg);
    const seqs = this.byId.get(msg.id);
    if (seqs === undefined) {
      this.byId.set(msg.id, [seq]);
    } else {
      seqs.push(seq);
    }
  }

  /** Removes and returns the oldest message with this id, if any. */
  confirm(id: string): Unconfirmed | undefined {
    const seqs = this.byId.get(id);
    if (seqs === undefined) {
      return undefined;
    }
    const seq = seqs.shift() as number;
    if (seqs.length === 0) {
      this.byId.delete(id);
    }
    const msg = this.bySeq.get(seq);
    this.bySeq.delete(seq);
    return msg;
  }

  /** The messages in send order, each with its sequence number for {@link remove}. */
  entries(): IterableIterator<[number, Unconfirmed]> {
    return this.bySeq.entries();
  }

  /** Removes the message with sequence number `seq`. */
  remove(seq: number): Unconfirmed | undefined {
    const msg = this.bySeq.get(seq);
    if (msg === undefined) {
      return undefined;
    }
    this.bySeq.delete(seq);
    const seqs = this.byId.get(msg.id);
    if (seqs !== undefined) {
      const i = seqs.indexOf(seq);
      if (i >= 0) {
        seqs.splice(i, 1);
      }
      if (seqs.length === 0) {
        this.byId.delete(msg.id);
      }
    }
    return msg;
  }

  /** Removes every message, in send order. */
  takeAll(): Unconfirmed[] {
    const all = [...this.bySeq.values()];
    this.bySeq.clear();
    this.byId.clear();
    return all;
  }
}
