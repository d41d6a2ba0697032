/**
 * {@link Incoming}: what the broker sends, and where it goes.
 *
 * Deliveries go to the subscriptions' streams or the direct stream, except redelivered
 * copies of messages handed over lately ({@link DedupWindow}); when a stream is full, the
 * delivery waits for room and no frame is read meanwhile, so that the broker feels the
 * backpressure. Confirmations (`Accepted`) settle the unconfirmed messages; delivery failures
 * and errors become events; `Subscribed` and refusals answer the callers of `subscribe`; pings
 * are answered and pongs end flushes.
 *
 * @module
 */

import { DedupWindow } from "./ack.js";
import { CodecError, ReauthError, SendError, SubscribeError } from "./errors.js";
import type { ClientEvent } from "./events.js";
import type { Delivery, ErrorCode, ErrorFrame, FailureReason, ServerFrame } from "./frames.js";
import { Message } from "./message.js";
import type { Outgoing } from "./outgoing.js";
import { BoundedQueue, Deque } from "./queue.js";
import {
  DirectMessages,
  Subscription,
  type AckRef,
  type Inbound,
  type MessageStream,
  type StreamOwner,
} from "./subscription.js";

/** What the client does after a frame. */
export type FrameOutcome =
  /** Read the next frame. */
  | { readonly kind: "continue" }
  /** Stop reading: a delivery waits for room; {@link IncomingHost.resume} says when to go on. */
  | { readonly kind: "wait" }
  /** The connection is over; reconnect. */
  | { readonly kind: "lost"; readonly reason: string }
  /** Another connection took the name; stop for good. */
  | { readonly kind: "replaced"; readonly reason: string };

const CONTINUE: FrameOutcome = { kind: "continue" };
const WAIT: FrameOutcome = { kind: "wait" };

/** What {@link Incoming} needs from the client. */
export interface IncomingHost {
  /** The outgoing half, for acknowledgements, pongs, confirmations and subscriptions. */
  readonly outgoing: Outgoing;
  /** Raises an event. */
  emit(event: ClientEvent): void;
  /** The client's registered name. */
  name(): string;
  /** A delivery that waited for room was handed over (or could not be): read on. */
  resume(): void;
  /** Every resubscription after a reconnection was answered: held messages may go. */
  resubscribed(): void;
  /** The broker accepted a `Reauth` with `token`. */
  reauthed(token: string, expiresMs: number | undefined): void;
}

/** Where a caller of `subscribe` waits. */
export interface SubscribeReply {
  /** The subscription is active. */
  resolve(): void;
  /** It was refused, or the client stopped first. */
  reject(error: SubscribeError): void;
}

/** Where a caller of `reauth` waits. */
interface ReauthWaiter {
  readonly token: string;
  resolve(expiresMs: number | undefined): void;
  reject(error: ReauthError): void;
}

/** A stream and the queue the client fills. */
interface Slot {
  readonly queue: BoundedQueue<Inbound>;
  readonly stream: MessageStream;
}

/** Why a delivery reached no stream. */
type Lost = "DirectGone" | "DirectFull";

/** The message id a refused message is reported with, and the send error it maps to. */
const REFUSALS: Partial<Record<ErrorCode, "InvalidName" | "InvalidTarget" | "TooLarge" | "Forbidden">> = {
  InvalidName: "InvalidName",
  InvalidTarget: "InvalidTarget",
  PayloadTooLarge: "TooLarge",
  Forbidden: "Forbidden",
};

/** The {@link SendError} for a message the broker refused with `e`, if `e` refuses one. */
export function refusalError(e: ErrorFrame): SendError | undefined {
  const code = REFUSALS[e.code];
  return code === undefined
    ? undefined
    : new SendError(code, `the broker refused the message (${e.code}): ${e.message}`);
}

/** What the broker sends, and where it goes. */
export class Incoming implements StreamOwner {
  private readonly host: IncomingHost;
  private readonly manualAck: boolean;
  private readonly receiveBuffer: number;
  /** Number of the current connection: a tag is acknowledged only on its own connection. */
  private epoch = 0;
  /** The open subscriptions, by channel. */
  private readonly channels = new Map<string, Slot[]>();
  /** Callers of `subscribe` waiting for the broker's answer, by channel. */
  private readonly waiters = new Map<string, SubscribeReply[]>();
  /** Channels of the `Subscribe` frames of this connection not answered yet, in send order. */
  private outstanding: string[] = [];
  /** Channels whose last subscription was closed while disconnected. */
  private readonly unsubscribeLater = new Set<string>();
  private resubscribing = false;
  private readonly directQueue: BoundedQueue<Inbound>;
  private direct: DirectMessages | undefined;
  private readonly dedup: DedupWindow;
  /** In manual mode, the tag and connection of each message handed out. */
  private readonly manualTags = new WeakMap<Message, AckRef>();
  /** A delivery waiting for room in a full stream; no frame is read meanwhile. */
  private pending: Promise<void> | undefined;
  private readonly reauths = new Deque<ReauthWaiter>();
  /** Closing: deliveries are left unacknowledged for the broker to hand over again. */
  private closing = false;
  /** The queue behind each subscription made by {@link Incoming.newSubscription}. */
  private readonly queues = new WeakMap<Subscription, BoundedQueue<Inbound>>();
  /** Per message id, the refusal a `sendConfirmed` of a non-persistent message waits for. */
  private readonly refusalWatch = new Map<string, ErrorFrame | undefined>();

  /** The incoming half of a client. */
  constructor(
    host: IncomingHost,
    options: { manualAck: boolean; receiveBuffer: number; dedupWindow: number },
  ) {
    this.host = host;
    this.manualAck = options.manualAck;
    this.receiveBuffer = options.receiveBuffer;
    this.directQueue = new BoundedQueue(options.receiveBuffer);
    this.dedup = new DedupWindow(options.dedupWindow);
  }

  /** Whether a delivery waits for room (and so reading is paused). */
  get waiting(): boolean {
    return this.pending !== undefined;
  }

  /** Whether resubscriptions after a reconnection wait for their answer. */
  get isResubscribing(): boolean {
    return this.resubscribing;
  }

  /** Takes up a new connection: the tags of deliveries from now on belong to it. */
  connected(): void {
    this.epoch++;
  }

  /** Forgets what was only valid on the lost connection. */
  disconnected(): void {
    this.outstanding = [];
    this.resubscribing = false;
    for (let w = this.reauths.shift(); w !== undefined; w = this.reauths.shift()) {
      w.reject(new ReauthError("Closed", "the connection ended before the broker answered"));
    }
  }

  /**
   * On a new connection: subscribes again to every channel with an open subscription (and
   * unsubscribes from those closed meanwhile). Until every one is answered, the client is
   * {@link Incoming.isResubscribing}.
   */
  resubscribe(): void {
    for (const channel of this.unsubscribeLater) {
      if (!this.channels.has(channel)) {
        this.host.outgoing.pushFrame({ type: "Unsubscribe", channel });
      }
    }
    this.unsubscribeLater.clear();
    for (const [channel, slots] of this.channels) {
      const open = slots.filter((s) => !s.stream.closed);
      if (open.length === 0) {
        this.channels.delete(channel);
        continue;
      }
      this.channels.set(channel, open);
      this.host.outgoing.pushFrame({ type: "Subscribe", channel });
      this.outstanding.push(channel);
    }
    this.resubscribing = this.outstanding.length > 0;
  }

  /** Makes the stream of a new subscription to `channel` (not yet registered). */
  newSubscription(channel: string): Subscription {
    const queue = new BoundedQueue<Inbound>(this.receiveBuffer);
    const sub = new Subscription(channel, queue, this);
    this.queues.set(sub, queue);
    return sub;
  }

  /** Registers a subscription and writes its `Subscribe`; `reply` hears the answer. */
  subscribe(sub: Subscription, reply: SubscribeReply): void {
    if (sub.closed) {
      reply.reject(new SubscribeError("Closed", "the subscription was closed"));
      return;
    }
    const queue = this.queues.get(sub);
    if (queue === undefined) {
      reply.reject(new SubscribeError("Closed", "the subscription belongs to another client"));
      return;
    }
    const slot: Slot = { queue, stream: sub };
    const slots = this.channels.get(sub.channel);
    if (slots === undefined) {
      this.channels.set(sub.channel, [slot]);
    } else {
      slots.push(slot);
    }
    this.unsubscribeLater.delete(sub.channel);
    const waiting = this.waiters.get(sub.channel);
    if (waiting === undefined) {
      this.waiters.set(sub.channel, [reply]);
    } else {
      waiting.push(reply);
    }
    this.outstanding.push(sub.channel);
    this.host.outgoing.pushFrame({ type: "Subscribe", channel: sub.channel });
  }

  /** The direct stream, the first time only. */
  takeDirect(): DirectMessages | undefined {
    if (this.direct !== undefined) {
      return undefined;
    }
    this.direct = new DirectMessages(this.directQueue, this);
    return this.direct;
  }

  /** {@link StreamOwner.taken}: acknowledges a message taken, if it asks to be. */
  taken(inbound: Inbound): void {
    const ack = inbound.ack;
    if (ack !== undefined && ack.epoch === this.epoch) {
      this.host.outgoing.queueAck(ack.tag);
    }
  }

  /** {@link StreamOwner.closed}: a stream was closed by the application. */
  closed(stream: MessageStream): void {
    if (!(stream instanceof Subscription)) {
      return;
    }
    const slots = this.channels.get(stream.channel);
    if (slots === undefined) {
      return;
    }
    const rest = slots.filter((s) => s.stream !== stream);
    if (rest.length === slots.length) {
      return;
    }
    if (rest.length > 0) {
      this.channels.set(stream.channel, rest);
      return;
    }
    this.channels.delete(stream.channel);
    if (this.host.outgoing.hasConnection) {
      this.host.outgoing.pushFrame({ type: "Unsubscribe", channel: stream.channel });
    } else {
      this.unsubscribeLater.add(stream.channel);
    }
  }

  /** `Client.ack`: acknowledges a message handed out on the current connection. */
  manualAckOf(msg: Message): void {
    const ref = this.manualTags.get(msg);
    if (ref === undefined) {
      return;
    }
    this.manualTags.delete(msg);
    if (ref.epoch === this.epoch) {
      this.host.outgoing.queueAck(ref.tag);
    }
  }

  /** A `Reauth` was written; answered by `Reauthed` or an `Unauthorized` error. */
  reauthSent(waiter: ReauthWaiter): void {
    this.reauths.push(waiter);
  }

  /** Watches for the broker refusing message `id` (a non-persistent `sendConfirmed`). */
  watchRefusal(id: string): void {
    this.refusalWatch.set(id, undefined);
  }

  /** Stops watching message `id`; returns the refusal that came, if any. */
  unwatchRefusal(id: string): ErrorFrame | undefined {
    const refusal = this.refusalWatch.get(id);
    this.refusalWatch.delete(id);
    return refusal;
  }

  /** The client is closing: deliveries from now on are left unacknowledged. */
  startClosing(): void {
    this.closing = true;
  }

  /** Stops for good: streams end, callers still waiting are released. */
  close(): void {
    for (const slots of this.channels.values()) {
      for (const slot of slots) {
        slot.queue.close();
      }
    }
    this.channels.clear();
    this.directQueue.close();
    for (const replies of this.waiters.values()) {
      for (const reply of replies) {
        reply.reject(new SubscribeError("Closed", "the client stopped before the broker answered"));
      }
    }
    this.waiters.clear();
    this.disconnected();
  }

  /** Handles one frame from the broker, or one that could not be decoded. */
  onFrame(frame: ServerFrame | CodecError): FrameOutcome {
    if (frame instanceof CodecError) {
      this.host.emit({ type: "ProtocolError", detail: `skipped a frame: ${frame.message}` });
      return CONTINUE;
    }
    switch (frame.type) {
      case "Deliver":
        return this.onDelivery(frame);
      case "DeliveryFailed":
        this.host.emit({
          type: "DeliveryFailed",
          id: frame.id,
          recipient: frame.recipient,
          reason: frame.reason,
          detail: frame.detail,
        });
        if (frame.ackTag !== undefined) {
          this.host.outgoing.queueAck(frame.ackTag);
        }
        return CONTINUE;
      case "Accepted": {
        const msg = this.host.outgoing.confirm(frame.id);
        this.host.emit({ type: "Accepted", id: frame.id });
        msg?.confirm?.resolve();
        return CONTINUE;
      }
      case "Subscribed":
        this.onSubscribed(frame.channel);
        return CONTINUE;
      case "Unsubscribed":
        return CONTINUE;
      case "Error":
        return this.onError(frame);
      case "Ping":
        this.host.outgoing.pushFrame({ type: "Pong", nonce: frame.nonce });
        return CONTINUE;
      case "Pong":
        this.host.outgoing.pong(frame.nonce);
        return CONTINUE;
      case "Bye":
        return { kind: "lost", reason: `the broker said goodbye: ${frame.reason}` };
      case "Welcome":
        this.host.emit({ type: "ProtocolError", detail: "ignored a second Welcome" });
        return CONTINUE;
      case "Reauthed": {
        const waiter = this.reauths.shift();
        if (waiter !== undefined) {
          const expiresMs = frame.expiresMs === undefined ? undefined : Number(frame.expiresMs);
          this.host.reauthed(waiter.token, expiresMs);
          waiter.resolve(expiresMs);
        }
        return CONTINUE;
      }
    }
  }

  private onError(e: ServerFrame & { type: "Error" }): FrameOutcome {
    this.host.emit({ type: "ServerError", code: e.code, message: e.message, id: e.id });
    if (e.code === "Unauthorized") {
      this.reauths
        .shift()
        ?.reject(
          new ReauthError("Refused", `the broker refused the credential (${e.code}): ${e.message}`, {
            serverCode: e.code,
          }),
        );
    }
    if (e.code === "Replaced") {
      return { kind: "replaced", reason: `another connection took the name: ${e.message}` };
    }
    if (this.refusesSubscription(e.code, e.id)) {
      this.refuseOldestSubscription(e);
      return CONTINUE;
    }
    const refusal = refusalError(e);
    if (refusal !== undefined && e.id !== undefined) {
      if (this.refusalWatch.has(e.id)) {
        this.refusalWatch.set(e.id, e);
      }
      // A refused persistent message will never be accepted.
      this.host.outgoing.confirm(e.id)?.confirm?.reject(refusal);
    }
    return CONTINUE;
  }

  /**
   * Whether an error refuses the oldest unanswered `Subscribe`: the broker answers frames in
   * order, and refuses a subscription with an error naming the channel (or nothing).
   */
  private refusesSubscription(code: ErrorCode, id: string | undefined): boolean {
    const oldest = this.outstanding[0];
    return (
      oldest !== undefined &&
      (code === "InvalidName" || code === "LimitReached" || code === "Internal" || code === "Forbidden") &&
      (id === undefined || id === oldest)
    );
  }

  private refuseOldestSubscription(e: ErrorFrame): void {
    const channel = this.outstanding.shift() as string;
    for (const reply of this.waiters.get(channel) ?? []) {
      reply.reject(
        new SubscribeError("Refused", `the broker refused the subscription (${e.code}): ${e.message}`, {
          serverCode: e.code,
        }),
      );
    }
    this.waiters.delete(channel);
    // The broker sends nothing through this channel: its streams end.
    for (const slot of this.channels.get(channel) ?? []) {
      slot.queue.close();
    }
    this.channels.delete(channel);
    this.resumeIfResubscribed();
  }

  private onSubscribed(channel: string): void {
    const i = this.outstanding.indexOf(channel);
    if (i >= 0) {
      this.outstanding.splice(i, 1);
    }
    if (!this.outstanding.includes(channel)) {
      for (const reply of this.waiters.get(channel) ?? []) {
        reply.resolve();
      }
      this.waiters.delete(channel);
    }
    this.resumeIfResubscribed();
  }

  private resumeIfResubscribed(): void {
    if (this.resubscribing && this.outstanding.length === 0) {
      this.resubscribing = false;
      this.host.resubscribed();
    }
  }

  private onDelivery(d: Delivery): FrameOutcome {
    const msg = new Message(d);
    if (this.closing) {
      // Left unacknowledged: the broker hands it over again to the next connection.
      return CONTINUE;
    }
    // Only messages that may come again are worth remembering (or looking up).
    const remember = msg.persistent || msg.ackTag !== undefined;
    const key =
      this.dedup.enabled && (remember || msg.redelivered)
        ? DedupWindow.key(msg.sender, msg.id)
        : undefined;
    if (key !== undefined && msg.redelivered && this.dedup.has(key)) {
      if (msg.ackTag !== undefined) {
        this.host.outgoing.queueAck(msg.ackTag);
      }
      return CONTINUE;
    }
    let ack: AckRef | undefined;
    if (msg.ackTag !== undefined) {
      const ref = { epoch: this.epoch, tag: msg.ackTag };
      if (this.manualAck) {
        this.manualTags.set(msg, ref);
      } else {
        ack = ref;
      }
    }
    const inbound: Inbound = { msg, ack };
    const remembered = remember ? key : undefined;
    let delivered = false;
    let full: Slot[] | undefined;
    const slots = msg.channel === undefined ? undefined : this.channels.get(msg.channel);
    if (slots !== undefined) {
      for (const slot of slots) {
        if (slot.queue.closed) {
          continue;
        }
        if (slot.queue.offer(inbound)) {
          delivered = true;
        } else {
          (full ??= []).push(slot);
        }
      }
    }
    if (full !== undefined) {
      this.wait(this.deliverLater(full, inbound, delivered, remembered));
      return WAIT;
    }
    if (delivered) {
      this.handedOver(remembered);
      return CONTINUE;
    }
    return this.deliverDirect(inbound, remembered);
  }

  /** A delivery no subscription takes: the direct stream. */
  private deliverDirect(inbound: Inbound, key: string | undefined): FrameOutcome {
    if (this.directQueue.offer(inbound)) {
      this.handedOver(key);
      return CONTINUE;
    }
    if (this.directQueue.closed) {
      this.lost("DirectGone", inbound.msg);
      return CONTINUE;
    }
    if (this.direct === undefined) {
      // Nobody can read it: waiting would stall the connection for good.
      this.lost("DirectFull", inbound.msg);
      return CONTINUE;
    }
    this.wait(this.deliverLater([{ queue: this.directQueue, stream: this.direct }], inbound, false, key, true));
    return WAIT;
  }

  /** Waits for room in each of `slots` in turn, then goes on as `onDelivery` would. */
  private async deliverLater(
    slots: Slot[],
    inbound: Inbound,
    delivered: boolean,
    key: string | undefined,
    direct = false,
  ): Promise<void> {
    for (const slot of slots) {
      while (!slot.queue.closed) {
        if (slot.queue.offer(inbound)) {
          delivered = true;
          break;
        }
        await slot.queue.room();
      }
    }
    if (delivered) {
      this.handedOver(key);
    } else if (direct) {
      this.lost("DirectGone", inbound.msg);
    } else if (this.deliverDirect(inbound, key).kind === "wait") {
      // The direct stream is full too: that wait takes over.
      return;
    }
  }

  private wait(delivery: Promise<void>): void {
    const pending: Promise<void> = delivery.then(
      (): void => this.settle(pending),
      (e: unknown): void => {
        this.host.emit({ type: "ProtocolError", detail: `a delivery failed: ${String(e)}` });
        this.settle(pending);
      },
    );
    this.pending = pending;
  }

  private settle(done: Promise<void>): void {
    if (this.pending === done) {
      this.pending = undefined;
      this.host.resume();
    }
  }

  /** Remembers a message handed to the application, to drop its redelivered copies. */
  private handedOver(key: string | undefined): void {
    if (key !== undefined) {
      this.dedup.add(key);
    }
  }

  /** Reports a message that no stream could take. */
  private lost(why: Lost, msg: Message): void {
    const through = msg.channel === undefined ? "" : ` through channel ${JSON.stringify(msg.channel)}`;
    const [reason, detail]: [FailureReason, string] =
      why === "DirectGone"
        ? [
            "NotSubscribed",
            `message from ${JSON.stringify(msg.sender)}${through} dropped by the client: no open subscription or direct message stream takes it`,
          ]
        : [
            "SlowConsumer",
            `message from ${JSON.stringify(msg.sender)}${through} dropped by the client: the direct message stream was never taken and its buffer is full`,
          ];
    this.host.emit({
      type: "DeliveryFailed",
      id: msg.id,
      recipient: { type: "Client", client: this.host.name() },
      reason,
      detail,
    });
  }
}

