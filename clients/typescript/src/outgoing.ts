/**
 * {@link Outgoing}: everything the client writes on a connection, and what it must remember
 * of it across connections.
 *
 * It owns the frames waiting to be written (batched into one write per task), the persistent
 * messages waiting for the broker's `Accepted` ({@link UnconfirmedSet}), the acknowledgements
 * waiting to go out ({@link AckBatch}), and the pings of flushes and heartbeats.
 *
 * Persistent messages stay in the unconfirmed set from the moment they are written until
 * their `Accepted`; after a reconnection they are written again, marked `resent`, before
 * anything else. Acknowledgements travel with the next write, at once when 1,024 wait, or
 * {@link ACK_DELAY_MS} later at the latest.
 *
 * @module
 */

import { ACK_DELAY_MS, AckBatch } from "./ack.js";
import { encodeClientFrame } from "./codec.js";
import { SendError } from "./errors.js";
import type { ClientEvent } from "./events.js";
import { HEADER_LEN, MAX_FRAME_CAP, type ClientFrame, type Recipient, type Target } from "./frames.js";
import { monotonicMs, nextTask, type Timer } from "./schedule.js";
import { UnconfirmedSet, resendFrame, type Confirm, type Unconfirmed } from "./unconfirmed.js";
import type { Wire } from "./wire.js";

/**
 * Above this many bytes waiting to be written (here or in the transport), no more messages
 * are taken from the send buffer until the connection drains.
 */
export const WRITE_HIGH_WATER = 64 * 1024;

/** A message ready to be written: validated and encoded. */
export interface PublishCommand {
  /** The message id. */
  readonly id: string;
  /** Where it goes, for reports about it. */
  readonly target: Target;
  /** The encoded `Publish` frame. */
  readonly frame: Uint8Array;
  /** Whether the broker confirms it. */
  readonly persistent: boolean;
  /** The caller of `sendConfirmed` waiting for it, if any. */
  readonly confirm: Confirm | undefined;
}

/** Where a caller of `flush` waits. */
export interface FlushReply {
  /** The broker processed everything written before the flush. */
  resolve(): void;
  /** The client stopped first. */
  reject(error: SendError): void;
}

/** The recipients of a message, one per name of a group or channel list. */
export function recipients(target: Target): Recipient[] {
  switch (target.type) {
    case "Client":
    case "ClientInChannel":
      return [{ type: "Client", client: target.client }];
    case "Group":
      return target.clients.map((client) => ({ type: "Client", client }));
    case "Channel":
      return [{ type: "Channel", channel: target.channel }];
    case "Channels":
      return target.channels.map((channel) => ({ type: "Channel", channel }));
    case "All":
      return [{ type: "All" }];
  }
}

/** What the client writes, and what it remembers of it across connections. */
export class Outgoing {
  /** Persistent messages written and not yet confirmed. */
  readonly unconfirmed = new UnconfirmedSet();
  private readonly emit: (event: ClientEvent) => void;
  private readonly maxUnconfirmed: number;
  private readonly written: () => void;
  private wire: Wire | undefined;
  /** Largest frame body the broker connected to accepts. */
  private maxEncode = 0;
  private outbox: Uint8Array[] = [];
  private outboxBytes = 0;
  private writeScheduled = false;
  /** True after a lost connection until the unconfirmed messages are written again. */
  private resendDue = false;
  /** Flushes whose ping was written, in write order; pinged again after a reconnection. */
  private flushes: { readonly nonce: bigint; readonly reply: FlushReply }[] = [];
  private nextNonce = 0n;
  private readonly acks = new AckBatch();
  private ackTimer: Timer | undefined;
  private lastSentMs = monotonicMs();

  /**
   * The outgoing half of a client that keeps at most `maxUnconfirmed` messages waiting;
   * `written` is called after each write, when there may be room again.
   */
  constructor(emit: (event: ClientEvent) => void, maxUnconfirmed: number, written: () => void) {
    this.emit = emit;
    this.maxUnconfirmed = maxUnconfirmed;
    this.written = written;
  }

  /** Takes up a new connection. */
  connected(wire: Wire): void {
    this.wire = wire;
    this.maxEncode = Math.min(wire.welcome.maxFrame, MAX_FRAME_CAP);
    this.lastSentMs = monotonicMs();
  }

  /**
   * Forgets what was only valid on the lost connection (frames not written, acknowledgements)
   * and remembers to write the unconfirmed messages again.
   */
  disconnected(): void {
    this.wire = undefined;
    this.outbox = [];
    this.outboxBytes = 0;
    this.acks.clear();
    if (this.ackTimer !== undefined) {
      clearTimeout(this.ackTimer);
      this.ackTimer = undefined;
    }
    this.resendDue = this.unconfirmed.size > 0;
  }

  /** Whether a connection is up. */
  get hasConnection(): boolean {
    return this.wire !== undefined;
  }

  /**
   * Whether another message may be taken from the send buffer: connected, few enough bytes
   * waiting to be written, few enough messages waiting for their confirmation.
   */
  hasRoom(): boolean {
    const wire = this.wire;
    return (
      wire !== undefined &&
      this.outboxBytes + wire.bufferedAmount < WRITE_HIGH_WATER &&
      this.unconfirmed.size < this.maxUnconfirmed
    );
  }

  /** Writes a message; a persistent one joins the unconfirmed messages. */
  publish(cmd: PublishCommand): void {
    const len = cmd.frame.length - HEADER_LEN;
    if (len > this.maxEncode) {
      this.tooLarge(cmd.id, cmd.target, len, cmd.confirm);
      return;
    }
    if (cmd.persistent) {
      this.unconfirmed.push({
        id: cmd.id,
        target: cmd.target,
        frame: cmd.frame,
        resent: false,
        confirm: cmd.confirm,
      });
    }
    this.write(cmd.frame);
  }

  /** Writes the ping of a flush, answered by {@link Outgoing.pong}. */
  flush(reply: FlushReply): void {
    const nonce = ++this.nextNonce;
    this.flushes.push({ nonce, reply });
    this.pushFrame({ type: "Ping", nonce });
  }

  /** Pings again for the flushes whose ping went out on a lost connection. */
  pingFlushesAgain(): void {
    for (const { nonce } of this.flushes) {
      this.pushFrame({ type: "Ping", nonce });
    }
  }

  /** The broker answered ping `nonce`: that flush and the ones written before it are done. */
  pong(nonce: bigint): void {
    const i = this.flushes.findIndex((f) => f.nonce === nonce);
    if (i < 0) {
      return;
    }
    const done = this.flushes.splice(0, i + 1);
    for (const { reply } of done) {
      reply.resolve();
    }
  }

  /** After a reconnection: writes the unconfirmed messages again, marked as resent. */
  resendIfDue(): void {
    if (!this.resendDue) {
      return;
    }
    this.resendDue = false;
    const tooLarge: [number, number][] = [];
    for (const [seq, msg] of this.unconfirmed.entries()) {
      const frame = resendFrame(msg);
      const len = frame.length - HEADER_LEN;
      if (len > this.maxEncode) {
        tooLarge.push([seq, len]);
      } else {
        this.write(frame);
      }
    }
    for (const [seq, len] of tooLarge) {
      const msg = this.unconfirmed.remove(seq);
      if (msg !== undefined) {
        this.tooLarge(msg.id, msg.target, len, msg.confirm);
      }
    }
  }

  /** The broker confirmed `id`: removes and returns the oldest unconfirmed message with it. */
  confirm(id: string): Unconfirmed | undefined {
    return this.unconfirmed.confirm(id);
  }

  /** Pings the broker when nothing was written for `intervalMs`. */
  heartbeat(nowMs: number, intervalMs: number): void {
    if (nowMs - this.lastSentMs >= intervalMs) {
      this.pushFrame({ type: "Ping", nonce: ++this.nextNonce });
    }
  }

  /** Writes a control frame (subscriptions, pings, pongs, goodbye, acknowledgements). */
  pushFrame(frame: ClientFrame): void {
    const bytes = this.encode(frame);
    if (bytes !== undefined) {
      this.write(bytes);
    }
  }

  /** Encodes a control frame; one that cannot be is reported, never dropped unsaid. */
  private encode(frame: ClientFrame): Uint8Array | undefined {
    try {
      return encodeClientFrame(frame, this.maxEncode);
    } catch (e) {
      this.emit({
        type: "ProtocolError",
        detail: `cannot encode a ${frame.type} frame: ${e instanceof Error ? e.message : String(e)}`,
      });
      return undefined;
    }
  }

  /** Acknowledges `tag` on the current connection: batched, see the module documentation. */
  queueAck(tag: bigint): void {
    if (this.wire === undefined) {
      return;
    }
    if (this.acks.add(tag)) {
      this.pushAcks();
    } else if (this.ackTimer === undefined) {
      this.ackTimer = setTimeout(() => {
        this.ackTimer = undefined;
        this.pushAcks();
      }, ACK_DELAY_MS);
    }
  }

  /** Writes every acknowledgement waiting. */
  pushAcks(): void {
    if (this.ackTimer !== undefined) {
      clearTimeout(this.ackTimer);
      this.ackTimer = undefined;
    }
    for (const frame of this.acks.takeFrames()) {
      this.pushFrame(frame);
    }
  }

  /**
   * Stops for good: empties the unconfirmed messages, fails their callers, and returns their
   * ids (the broker never confirmed them).
   */
  abandon(): string[] {
    const ids: string[] = [];
    for (const msg of this.unconfirmed.takeAll()) {
      ids.push(msg.id);
      msg.confirm?.reject(new SendError("Closed", "the client stopped before the broker confirmed the message"));
    }
    return ids;
  }

  /** Stops for good: callers of `flush` still waiting fail. */
  close(): void {
    const flushes = this.flushes;
    this.flushes = [];
    for (const { reply } of flushes) {
      reply.reject(new SendError("Closed", "the client stopped before the flush completed"));
    }
    if (this.ackTimer !== undefined) {
      clearTimeout(this.ackTimer);
      this.ackTimer = undefined;
    }
  }

  /** Hands every frame waiting to the connection, now. */
  writeNow(): void {
    const wire = this.wire;
    if (wire === undefined || this.outbox.length === 0) {
      return;
    }
    if (this.acks.size > 0) {
      // Acknowledgements travel with what is written anyway.
      for (const frame of this.acks.takeFrames()) {
        const bytes = this.encode(frame);
        if (bytes !== undefined) {
          this.outbox.push(bytes);
        }
      }
      if (this.ackTimer !== undefined) {
        clearTimeout(this.ackTimer);
        this.ackTimer = undefined;
      }
    }
    const frames = this.outbox;
    this.outbox = [];
    this.outboxBytes = 0;
    wire.write(frames);
    this.written();
  }

  private write(bytes: Uint8Array): void {
    if (this.wire === undefined) {
      return;
    }
    if (this.outbox.length === 0) {
      // One clock reading per batch: the frames written together go out together.
      this.lastSentMs = monotonicMs();
    }
    this.outbox.push(bytes);
    this.outboxBytes += bytes.length;
    if (this.outboxBytes >= WRITE_HIGH_WATER) {
      this.writeNow();
    } else if (!this.writeScheduled) {
      this.writeScheduled = true;
      nextTask(() => {
        this.writeScheduled = false;
        this.writeNow();
      });
    }
  }

  /** Reports a message that does not fit the broker's frame limit. */
  private tooLarge(id: string, target: Target, len: number, confirm: Confirm | undefined): void {
    const detail = `frame of ${len} bytes exceeds the broker's limit of ${this.maxEncode} bytes`;
    for (const recipient of recipients(target)) {
      this.emit({ type: "DeliveryFailed", id, recipient, reason: "TooLarge", detail });
    }
    confirm?.reject(new SendError("TooLarge", detail, { size: len, limit: this.maxEncode }));
  }
}
