/**
 * {@link Client}: a connection to a Broadcast broker that reconnects, resubscribes and buffers
 * by itself.
 *
 * The client keeps one connection up at a time: when it is lost, the client reconnects with
 * exponential backoff and full jitter, registers again under the same name, subscribes again
 * to every open {@link Subscription}, sends again (marked `resent`) the persistent messages the
 * broker had not confirmed, then the messages buffered meanwhile, in order.
 *
 * Sending is bounded: messages wait in a send buffer (`sendBuffer`, 1,024 by default) until
 * the connection takes them, and the connection takes no more while 64 KiB wait to be written
 * or `maxUnconfirmed` persistent messages wait for the broker's `Accepted`. `send` waits for
 * room; `trySend` fails with `BufferFull` instead. Receiving is bounded too: each stream holds
 * `receiveBuffer` messages, and a full stream stops the reading of the connection until the
 * application takes a message (the broker feels it through TCP).
 *
 * @module
 */

import { encodeClientFrame } from "./codec.js";
import { Backoff } from "./backoff.js";
import { CodecError, ConnectError, NameError, ReauthError, SendError, SubscribeError } from "./errors.js";
import { EventHub, type ClientEvent, type Events } from "./events.js";
import { MAX_FRAME_CAP, type Hello } from "./frames.js";
import { Incoming, refusalError, type SubscribeReply } from "./incoming.js";
import { Message, OutgoingMessage } from "./message.js";
import { validateChannel } from "./names.js";
import { resolveOptions, type ConnectOptions, type ResolvedOptions } from "./options.js";
import { Outgoing, type FlushReply, type PublishCommand } from "./outgoing.js";
import { Deque } from "./queue.js";
import { monotonicMs, sleep, type Timer } from "./schedule.js";
import type { DirectMessages, Subscription } from "./subscription.js";
import type { Transport } from "./transport/transport.js";
import type { Confirm } from "./unconfirmed.js";
import { Wire, type WireHandler } from "./wire.js";

/** The outcome of one message of `sendBatch`: queued under its id, or refused. */
export type SendResult =
  | { readonly ok: true; readonly id: string }
  | { readonly ok: false; readonly id: string; readonly error: SendError };

/** A request waiting in the send buffer, in send order. */
type Command =
  | { readonly kind: "publish"; readonly cmd: PublishCommand }
  | { readonly kind: "subscribe"; readonly sub: Subscription; readonly reply: SubscribeReply }
  | { readonly kind: "flush"; readonly reply: FlushReply };

/** Callers waiting for room in the send buffer, with what they will put there. */
interface RoomWaiter {
  readonly cmds: readonly Command[];
  resolve(): void;
  reject(error: SendError): void;
}

type State = "connected" | "reconnecting" | "closing" | "closed";

/** How long after a failed credential renewal the next is tried, in milliseconds. */
const REFRESH_RETRY_MS = 1000;

/** Longest delay `setTimeout` takes. */
const MAX_TIMER_MS = 2 ** 31 - 1;

function noop(): void {}

function closedError(): SendError {
  return new SendError("Closed", "the client is closed");
}

function helloFor(options: ResolvedOptions, name: string | undefined, token: string | undefined): Hello {
  const v2 = options.protocolVersion >= 2;
  return {
    version: options.protocolVersion,
    name,
    token: v2 ? token : undefined,
    namespace: v2 ? options.namespace : undefined,
    maxFrame: options.maxFrame,
    heartbeatMs: options.heartbeatMs,
  };
}

/**
 * A connection to a Broadcast broker that reconnects, resubscribes and buffers by itself.
 *
 * Made by {@link Client.connect} (or the `connect` functions of the entry points). It runs
 * until {@link Client.close} is called, the broker hands its name to another connection, the
 * broker refuses its credential, or the reconnect attempts run out.
 *
 * Persistent messages (the default) are kept until the broker confirms them, and sent again
 * after a reconnection if it had not. Deliveries that ask for an acknowledgement are
 * acknowledged when the application takes them from their stream, or with
 * {@link Client.ack} in manual mode. Redelivered copies of the latest messages handed over
 * are dropped (the duplicate window).
 */
export class Client {
  readonly #transport: Transport;
  readonly #options: ResolvedOptions;
  readonly #hub: EventHub;
  readonly #outgoing: Outgoing;
  readonly #incoming: Incoming;
  readonly #backoff: Backoff;
  readonly #commands = new Deque<Command>();
  readonly #roomWaiters = new Deque<RoomWaiter>();
  /** Aborted when the client stops: ends waits and reconnection attempts. */
  readonly #stop = new AbortController();
  #state: State = "reconnecting";
  #wire: Wire | undefined;
  /** Starts reading a new connection once a delivery that waits for room is handed over. */
  #deferredBegin: (() => void) | undefined;
  #pumping = false;
  #name = "";
  #server = "";
  #maxPayload = 0;
  #maxFrame = 0;
  #identity: string | undefined;
  #namespace: string | undefined;
  #token: string | undefined;
  #expiresMs: number | undefined;
  #refreshTimer: Timer | undefined;
  #heartbeatTimer: ReturnType<typeof setInterval> | undefined;
  /** A frame arrived since the heartbeat last looked. */
  #received = false;
  #lastReceivedMs = 0;
  /** Set when another connection took the name: the client stops instead of reconnecting. */
  #replaced: string | undefined;
  #closing: Promise<void> | undefined;
  /** Called when what `close` waits for may have happened. */
  #closeWake: (() => void) | undefined;

  private constructor(transport: Transport, options: ResolvedOptions, backoff: Backoff) {
    this.#transport = transport;
    this.#options = options;
    this.#backoff = backoff;
    this.#token = options.token;
    this.#hub = new EventHub(options.eventBuffer);
    const emit = (event: ClientEvent): void => this.#hub.emit(event);
    this.#outgoing = new Outgoing(emit, options.maxUnconfirmed, () => this.#pump());
    this.#incoming = new Incoming(
      {
        outgoing: this.#outgoing,
        emit,
        name: () => this.#name,
        resume: () => this.#resumeReading(),
        resubscribed: () => this.#releaseHeld(),
        reauthed: (token, expiresMs) => this.#reauthed(token, expiresMs),
      },
      options,
    );
  }

  /**
   * Connects with `transport` and returns the running client.
   *
   * The first connection must succeed: failures to reach the broker (`Io`, `Timeout`) are
   * retried with the reconnect backoff up to `reconnect.maxAttempts` attempts (forever by
   * default); a refusal, a TLS failure or a protocol error is thrown at once.
   *
   * @throws {@link ConnectError} `InvalidName` or `InvalidOptions` for bad options,
   *   `Refused` when the broker answers the handshake with an error (`serverCode` says
   *   which, such as `Unauthorized`), `Tls`, `Protocol`, `Io` or `Timeout` when the only
   *   allowed attempt failed, `AttemptsExhausted` when several were allowed and all failed.
   */
  static async connect(transport: Transport, options: ConnectOptions = {}): Promise<Client> {
    const resolved = resolveOptions(options);
    const backoff = new Backoff(resolved.reconnectInitialMs, resolved.reconnectMaxMs);
    const max = resolved.maxAttempts;
    for (let attempt = 1; ; attempt++) {
      try {
        const hello = helloFor(resolved, resolved.name, resolved.token);
        const wire = await Wire.open(transport, hello, resolved.connectTimeoutMs);
        const client = new Client(transport, resolved, backoff);
        client.#attach(wire, false);
        return client;
      } catch (e) {
        const retry = e instanceof ConnectError && (e.code === "Io" || e.code === "Timeout");
        if (!retry) {
          throw e;
        }
        if (max !== undefined && attempt >= max) {
          if (attempt === 1) {
            throw e;
          }
          throw new ConnectError(
            "AttemptsExhausted",
            `gave up after ${attempt} connection attempts: ${e.message}`,
            { attempts: attempt, cause: e },
          );
        }
        await sleep(backoff.delay(attempt));
      }
    }
  }

  /** The name the broker registered this client under; kept across reconnections. */
  get name(): string {
    return this.#name;
  }

  /** The broker's software and version, from the latest handshake. */
  get server(): string {
    return this.#server;
  }

  /** The identity the credential proved, when the broker requires credentials. */
  get identity(): string | undefined {
    return this.#identity;
  }

  /** The namespace the client lives in; `undefined` for the default one. */
  get namespace(): string | undefined {
    return this.#namespace;
  }

  /** When the credential expires, in milliseconds since the Unix epoch, if it does. */
  get credentialExpiresMs(): number | undefined {
    return this.#expiresMs;
  }

  /** The largest payload the broker accepts, in bytes. */
  get maxPayload(): number {
    return this.#maxPayload;
  }

  /** Whether a connection is up now. */
  get connected(): boolean {
    return this.#state === "connected";
  }

  /** Whether the client has stopped for good. */
  get closed(): boolean {
    return this.#state === "closed";
  }

  /**
   * Queues a message and returns its id, waiting while the send buffer is full (which it
   * stays while the connection is down: messages sent then go out, in order, once the
   * client has reconnected and resubscribed).
   *
   * Success means queued, not delivered: recipients that will not get the message are
   * reported as `DeliveryFailed` events, refusals as `ServerError` events;
   * {@link Client.flush} waits until the broker has processed it,
   * {@link Client.sendConfirmed} until a persistent message is safe with the broker.
   *
   * @throws {@link SendError} `InvalidName` or `InvalidTarget` when the message is not
   *   valid, `TooLarge` when it exceeds the broker's limits, `Closed` when the client has
   *   stopped.
   */
  async send(msg: OutgoingMessage): Promise<string> {
    const cmd = this.#prepare(msg, undefined);
    await this.#enqueue([{ kind: "publish", cmd }]);
    return cmd.id;
  }

  /**
   * Like {@link Client.send}, but fails instead of waiting when the send buffer is full.
   *
   * @throws {@link SendError} as `send`, and `BufferFull`.
   */
  trySend(msg: OutgoingMessage): string {
    const cmd = this.#prepare(msg, undefined);
    if (this.#roomWaiters.length > 0 || this.#commands.length >= this.#options.sendBuffer) {
      throw new SendError("BufferFull", "the send buffer is full");
    }
    this.#commands.push({ kind: "publish", cmd });
    this.#pump();
    return cmd.id;
  }

  /**
   * Queues many messages, in order, and returns one result per message: its id, or why it
   * was not queued (an invalid message is left out; the others go). The valid messages take
   * their places in the send buffer together, waiting for room, so that they are written in
   * as few writes as possible.
   */
  async sendBatch(msgs: Iterable<OutgoingMessage>): Promise<SendResult[]> {
    const results: SendResult[] = [];
    const ready: { index: number; cmd: Command }[] = [];
    for (const msg of msgs) {
      try {
        const cmd = this.#prepare(msg, undefined);
        ready.push({ index: results.length, cmd: { kind: "publish", cmd } });
        results.push({ ok: true, id: cmd.id });
      } catch (e) {
        if (!(e instanceof SendError)) {
          throw e;
        }
        results.push({ ok: false, id: msg.messageId, error: e });
      }
    }
    const chunk = this.#options.sendBuffer;
    for (let i = 0; i < ready.length; i += chunk) {
      const part = ready.slice(i, i + chunk);
      try {
        await this.#enqueue(part.map((r) => r.cmd));
      } catch (e) {
        const error = e instanceof SendError ? e : closedError();
        for (const { index } of ready.slice(i)) {
          results[index] = { ok: false, id: (results[index] as SendResult).id, error };
        }
        break;
      }
    }
    return results;
  }

  /**
   * Sends a message and resolves once the broker has confirmed it: for a persistent message,
   * when its `Accepted` arrives (acknowledged by every recipient it was handed to, stored for
   * every recipient it is queued for); for a non-persistent one, when the broker has
   * processed it (a flush). A lost connection does not fail the call: the message is sent
   * again after the reconnection and the call resolves when that copy is confirmed.
   * Recipients that will not get the message are reported as `DeliveryFailed` events before
   * it resolves.
   *
   * @throws {@link SendError} as `send`; `Forbidden` (or `InvalidName`, `InvalidTarget`,
   *   `TooLarge`) when the broker refuses the message; `TooLarge` when the broker
   *   reconnected to takes smaller frames; `Closed` when the client stops first.
   */
  async sendConfirmed(msg: OutgoingMessage): Promise<string> {
    if (!(msg instanceof OutgoingMessage)) {
      throw new TypeError("sendConfirmed takes an OutgoingMessage");
    }
    if (!msg.isPersistent) {
      const id = msg.messageId;
      this.#incoming.watchRefusal(id);
      let refusal;
      try {
        await this.send(msg);
        await this.flush();
      } finally {
        refusal = this.#incoming.unwatchRefusal(id);
      }
      const error = refusal === undefined ? undefined : refusalError(refusal);
      if (error !== undefined) {
        throw error;
      }
      return id;
    }
    let confirm: Confirm | undefined;
    const confirmed = new Promise<void>((resolve, reject) => {
      confirm = { resolve, reject };
    });
    // Rejections are awaited below; this keeps one that comes first from being unhandled.
    confirmed.catch(noop);
    const cmd = this.#prepare(msg, confirm);
    await this.#enqueue([{ kind: "publish", cmd }]);
    await confirmed;
    return cmd.id;
  }

  /**
   * Acknowledges a message received in manual mode (`manualAck`): its tag goes out with the
   * next acknowledgement frame, without waiting. Does nothing in automatic mode, for a
   * message without a tag, or for one that arrived on an earlier connection (the broker hands
   * such messages over again).
   */
  ack(msg: Message): void {
    if (this.#options.manualAck && msg instanceof Message) {
      this.#incoming.manualAckOf(msg);
    }
  }

  /**
   * Subscribes to `channel`; resolves once the broker has confirmed the subscription. Each
   * call makes a new {@link Subscription}, and each subscription to a channel gets every
   * message of it. While the connection is down the call waits for the reconnection.
   *
   * @throws {@link SubscribeError} `InvalidName` for a bad channel name, `Refused` when the
   *   broker refuses (`serverCode`: `LimitReached`, `Forbidden`, ...), `Closed` when the
   *   client stops first.
   */
  async subscribe(channel: string): Promise<Subscription> {
    try {
      validateChannel(channel);
    } catch (e) {
      if (e instanceof NameError) {
        throw new SubscribeError("InvalidName", `invalid channel name: ${e.message}`, { cause: e });
      }
      throw e;
    }
    const sub = this.#incoming.newSubscription(channel);
    let reply: SubscribeReply | undefined;
    const answered = new Promise<void>((resolve, reject) => {
      reply = { resolve, reject };
    });
    answered.catch(noop);
    try {
      await this.#enqueue([{ kind: "subscribe", sub, reply: reply as SubscribeReply }]);
    } catch {
      throw new SubscribeError("Closed", "the client is closed");
    }
    await answered;
    return sub;
  }

  /**
   * The stream of direct messages (those with no channel), and of channel messages that no
   * open {@link Subscription} takes; only the first call returns it.
   *
   * Messages received before it is taken wait in its buffer; once that is full, further ones
   * are dropped and reported as `DeliveryFailed` events (`SlowConsumer`), so that a client
   * that never reads direct messages does not stall. Once taken, a full stream pauses the
   * connection; once closed, messages it would have had are reported (`NotSubscribed`).
   */
  directMessages(): DirectMessages | undefined {
    return this.#incoming.takeDirect();
  }

  /** A new stream of every {@link ClientEvent} raised from now on. */
  events(): Events {
    return this.#hub.subscribe();
  }

  /**
   * Resolves once the broker has processed everything this client sent before the call (and
   * sent the delivery failures it caused). If the connection is lost meanwhile, it resolves
   * once the new connection has processed the messages still queued.
   *
   * @throws {@link SendError} `Closed` when the client stops first.
   */
  async flush(): Promise<void> {
    let reply: FlushReply | undefined;
    const done = new Promise<void>((resolve, reject) => {
      reply = { resolve, reject };
    });
    done.catch(noop);
    await this.#enqueue([{ kind: "flush", reply: reply as FlushReply }]);
    await done;
  }

  /**
   * Presents a fresh credential for the same identity on the live connection (`Reauth`), so
   * that it outlives the expiry of the one it was opened with; later reconnections use it
   * too. Resolves with the new expiry (ms since the epoch), `undefined` when it has none.
   *
   * @throws {@link ReauthError} `Refused` when the broker refuses the token (it then closes
   *   the connection, and the client reconnects with the credential it had), `Closed` when
   *   the connection ended before the answer, or there is none.
   */
  reauth(token: string): Promise<number | undefined> {
    if (this.#state !== "connected" || this.#wire === undefined) {
      return Promise.reject(new ReauthError("Closed", "no connection is up"));
    }
    if (this.#options.protocolVersion < 2) {
      return Promise.reject(new ReauthError("Refused", "protocol version 1 has no Reauth"));
    }
    return new Promise((resolve, reject) => {
      this.#incoming.reauthSent({ token, resolve, reject });
      this.#outgoing.pushFrame({ type: "Reauth", token });
    });
  }

  /**
   * Writes out the messages already queued (when connected), waits up to `closeTimeoutMs`
   * for the broker to confirm the persistent messages not confirmed yet, says goodbye, closes
   * the connection and raises a `Closed` event. Each persistent message still unconfirmed
   * (or never sent, when the connection is down) is reported first as an `Unconfirmed`
   * event. Later sends fail with `Closed` and every stream ends. Closing a closed client does
   * nothing.
   */
  close(): Promise<void> {
    this.#closing ??= this.#shutDown();
    return this.#closing;
  }

  // ---- sending ---------------------------------------------------------------------------

  /** Validates and encodes a message, so that the caller learns at once what is wrong. */
  #prepare(msg: OutgoingMessage, confirm: Confirm | undefined): PublishCommand {
    if (!(msg instanceof OutgoingMessage)) {
      throw new TypeError("send takes an OutgoingMessage");
    }
    if (this.#state === "closing" || this.#state === "closed") {
      throw closedError();
    }
    msg.validate();
    const size = msg.data.length;
    if (size > this.#maxPayload) {
      throw new SendError(
        "TooLarge",
        `message of ${size} bytes exceeds the limit of ${this.#maxPayload} bytes`,
        { size, limit: this.#maxPayload },
      );
    }
    const publish = msg.toPublish();
    let frame: Uint8Array;
    try {
      frame = encodeClientFrame({ type: "Publish", ...publish }, this.#maxFrame);
    } catch (e) {
      if (e instanceof CodecError && e.code === "FrameTooLarge") {
        throw new SendError("TooLarge", e.message, { size: e.length, limit: e.limit, cause: e });
      }
      throw new SendError("InvalidTarget", e instanceof Error ? e.message : String(e), { cause: e });
    }
    return { id: publish.id, target: publish.target, frame, persistent: publish.persistent, confirm };
  }

  /** Puts commands in the send buffer, together, waiting for room. */
  #enqueue(cmds: readonly Command[]): Promise<void> {
    if (this.#state === "closing" || this.#state === "closed") {
      return Promise.reject(closedError());
    }
    if (
      this.#roomWaiters.length === 0 &&
      this.#commands.length + cmds.length <= this.#options.sendBuffer
    ) {
      for (const cmd of cmds) {
        this.#commands.push(cmd);
      }
      this.#pump();
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => this.#roomWaiters.push({ cmds, resolve, reject }));
  }

  /** Moves commands from the send buffer to the connection while it has room. */
  #pump(): void {
    if (this.#pumping) {
      return;
    }
    this.#pumping = true;
    try {
      for (;;) {
        while (
          this.#state === "connected" &&
          !this.#incoming.isResubscribing &&
          this.#commands.length > 0 &&
          this.#outgoing.hasRoom()
        ) {
          this.#run(this.#commands.shift() as Command);
        }
        if (!this.#admitWaiters()) {
          break;
        }
      }
    } finally {
      this.#pumping = false;
    }
  }

  /** Lets the callers waiting for room in, in order, as far as there is room. */
  #admitWaiters(): boolean {
    let admitted = false;
    for (
      let w = this.#roomWaiters.peek();
      w !== undefined && this.#commands.length + w.cmds.length <= this.#options.sendBuffer;
      w = this.#roomWaiters.peek()
    ) {
      this.#roomWaiters.shift();
      for (const cmd of w.cmds) {
        this.#commands.push(cmd);
      }
      w.resolve();
      admitted = true;
    }
    return admitted;
  }

  #run(c: Command): void {
    switch (c.kind) {
      case "publish":
        this.#outgoing.publish(c.cmd);
        return;
      case "subscribe":
        this.#incoming.subscribe(c.sub, c.reply);
        return;
      case "flush":
        this.#outgoing.flush(c.reply);
        return;
    }
  }

  /** After a reconnection and its resubscriptions: unconfirmed messages, then the rest. */
  #releaseHeld(): void {
    this.#outgoing.resendIfDue();
    this.#pump();
  }

  // ---- the connection ----------------------------------------------------------------------

  /** Takes up a connection that completed its handshake. */
  #attach(wire: Wire, announce: boolean): void {
    this.#wire = wire;
    this.#state = "connected";
    const welcome = wire.welcome;
    this.#name = welcome.name;
    this.#server = welcome.server;
    this.#maxPayload = welcome.maxPayload;
    this.#maxFrame = Math.min(welcome.maxFrame, MAX_FRAME_CAP);
    this.#identity = welcome.identity;
    this.#namespace = welcome.namespace;
    this.#setExpiry(welcome.expiresMs === undefined ? undefined : Number(welcome.expiresMs));
    this.#incoming.connected();
    this.#outgoing.connected(wire);
    if (announce) {
      this.#hub.emit({ type: "Connected", name: welcome.name });
    }
    this.#incoming.resubscribe();
    this.#outgoing.pingFlushesAgain();
    if (!this.#incoming.isResubscribing) {
      this.#releaseHeld();
    }
    this.#startHeartbeat(wire);
    const handler: WireHandler = {
      frame: (frame) => this.#onFrame(wire, frame),
      drain: () => this.#pump(),
      closed: (reason) => this.#onWireClosed(wire, reason),
    };
    if (this.#incoming.waiting) {
      this.#deferredBegin = () => wire.begin(handler);
    } else {
      wire.begin(handler);
    }
  }

  #onFrame(wire: Wire, frame: Parameters<WireHandler["frame"]>[0]): boolean {
    if (wire !== this.#wire) {
      return false;
    }
    this.#received = true;
    const outcome = this.#incoming.onFrame(frame);
    this.#closeWake?.();
    if (this.#commands.length > 0) {
      // A confirmation may have made room for the messages waiting.
      this.#pump();
    }
    switch (outcome.kind) {
      case "continue":
        return true;
      case "wait":
        return false;
      case "lost":
        wire.destroy(outcome.reason);
        return false;
      case "replaced":
        this.#replaced = outcome.reason;
        wire.destroy(outcome.reason);
        return false;
    }
  }

  /** A delivery that waited for room was handed over: reading goes on. */
  #resumeReading(): void {
    this.#received = true;
    const begin = this.#deferredBegin;
    this.#deferredBegin = undefined;
    if (begin !== undefined) {
      begin();
    } else {
      this.#wire?.release();
    }
  }

  #onWireClosed(wire: Wire, reason: string): void {
    if (wire !== this.#wire) {
      return;
    }
    this.#wire = undefined;
    this.#deferredBegin = undefined;
    this.#stopHeartbeat();
    this.#incoming.disconnected();
    this.#outgoing.disconnected();
    if (this.#state === "closing" || this.#state === "closed") {
      this.#closeWake?.();
      return;
    }
    this.#hub.emit({ type: "Disconnected", reason });
    if (this.#replaced !== undefined) {
      this.#finish(this.#replaced);
      return;
    }
    this.#state = "reconnecting";
    this.#reconnect().catch((e: unknown) => {
      // Never expected: every failure of an attempt is handled in the loop.
      this.#finish(`reconnecting failed: ${String(e)}`);
    });
  }

  /**
   * Waits and tries again, under the client's name, until a connection succeeds, the
   * attempts run out, the broker refuses the credential, or the client is closed.
   */
  async #reconnect(): Promise<void> {
    const options = this.#options;
    const stop = this.#stop.signal;
    let refused = false;
    let lastError: string | undefined;
    for (let attempt = 1; ; attempt++) {
      if (options.maxAttempts !== undefined && attempt > options.maxAttempts) {
        this.#finish(
          `gave up after ${options.maxAttempts} reconnection attempts${lastError === undefined ? "" : `: ${lastError}`}`,
        );
        return;
      }
      const delayMs = this.#backoff.delay(attempt);
      this.#hub.emit({ type: "Reconnecting", attempt, delayMs, lastError });
      await sleep(delayMs, stop);
      if (stop.aborted) {
        return;
      }
      const refresh = options.tokenRefresh;
      if (refresh !== undefined && (refused || this.#credentialExpired())) {
        try {
          this.#token = await refresh();
        } catch (e) {
          lastError = `cannot renew the credential: ${String(e)}`;
        }
      }
      let wire: Wire;
      try {
        wire = await Wire.open(
          this.#transport,
          helloFor(options, this.#name, this.#token),
          options.connectTimeoutMs,
          stop,
        );
      } catch (e) {
        if (stop.aborted) {
          return;
        }
        const error = e instanceof ConnectError ? e : new ConnectError("Io", String(e), { cause: e });
        if (
          error.code === "Refused" &&
          (error.serverCode === "Unauthorized" || error.serverCode === "AuthExpired") &&
          refresh === undefined
        ) {
          this.#finish(`the broker refuses the credential: ${error.message}`);
          return;
        }
        refused = error.code === "Refused";
        lastError = error.message;
        continue;
      }
      if (stop.aborted) {
        wire.destroy("the client is closing");
        return;
      }
      this.#attach(wire, true);
      return;
    }
  }

  #startHeartbeat(wire: Wire): void {
    this.#stopHeartbeat();
    const interval = this.#options.heartbeatMs;
    if (interval === 0) {
      return;
    }
    this.#received = false;
    this.#lastReceivedMs = monotonicMs();
    // Four looks per interval: a ping goes out at most 1.25 intervals after the last frame.
    this.#heartbeatTimer = setInterval(() => {
      if (wire !== this.#wire) {
        return;
      }
      const now = monotonicMs();
      if (this.#received) {
        this.#received = false;
        this.#lastReceivedMs = now;
      }
      if (!this.#incoming.waiting && now - this.#lastReceivedMs >= 3 * interval) {
        wire.destroy(`nothing received from the broker for ${3 * interval} ms`);
        return;
      }
      this.#outgoing.heartbeat(now, interval);
    }, Math.max(1, Math.floor(interval / 4)));
  }

  #stopHeartbeat(): void {
    if (this.#heartbeatTimer !== undefined) {
      clearInterval(this.#heartbeatTimer);
      this.#heartbeatTimer = undefined;
    }
  }

  // ---- credentials -------------------------------------------------------------------------

  #credentialExpired(): boolean {
    return this.#expiresMs !== undefined && this.#expiresMs <= Date.now();
  }

  #reauthed(token: string, expiresMs: number | undefined): void {
    this.#token = token;
    this.#hub.emit({ type: "Reauthed", expiresMs });
    this.#setExpiry(expiresMs);
  }

  #setExpiry(expiresMs: number | undefined): void {
    this.#expiresMs = expiresMs;
    this.#scheduleRefresh();
  }

  /** Renews the credential at 80% of the time left (or looks again after `afterMs`). */
  #scheduleRefresh(afterMs?: number): void {
    if (this.#refreshTimer !== undefined) {
      clearTimeout(this.#refreshTimer);
      this.#refreshTimer = undefined;
    }
    if (this.#options.tokenRefresh === undefined || this.#expiresMs === undefined || this.closed) {
      return;
    }
    if (afterMs !== undefined) {
      this.#refreshTimer = setTimeout(() => this.#scheduleRefresh(), afterMs);
      return;
    }
    const wait = Math.max(0, this.#expiresMs - Date.now()) * 0.8;
    this.#refreshTimer = setTimeout(() => {
      this.#refreshTimer = undefined;
      this.#refresh().catch(noop);
    }, Math.min(Math.floor(wait), MAX_TIMER_MS));
  }

  async #refresh(): Promise<void> {
    const refresh = this.#options.tokenRefresh;
    if (refresh === undefined || this.#state !== "connected") {
      // A reconnection renews the credential if it must, and its Welcome starts the count.
      return;
    }
    let token: string;
    try {
      token = await refresh();
    } catch {
      this.#scheduleRefresh(REFRESH_RETRY_MS);
      return;
    }
    try {
      await this.reauth(token);
    } catch (e) {
      if (!(e instanceof ReauthError && e.code === "Closed")) {
        this.#scheduleRefresh(REFRESH_RETRY_MS);
      }
    }
  }

  // ---- stopping ----------------------------------------------------------------------------

  async #shutDown(): Promise<void> {
    if (this.#state === "closed") {
      return;
    }
    const wire = this.#state === "connected" ? this.#wire : undefined;
    this.#state = "closing";
    this.#stop.abort();
    this.#rejectWaiters();
    if (wire !== undefined) {
      await this.#drain(wire);
    }
    this.#finish("closed by the application");
  }

  /**
   * Before saying goodbye: writes what is buffered, waits for the broker's confirmations
   * (deliveries arriving meanwhile are left unacknowledged, for the broker to hand over
   * again), then writes `Bye` and closes.
   */
  async #drain(wire: Wire): Promise<void> {
    this.#incoming.startClosing();
    this.#outgoing.resendIfDue();
    for (const cmd of this.#commands.drain()) {
      if (cmd.kind === "publish") {
        this.#outgoing.publish(cmd.cmd);
      } else if (cmd.kind === "subscribe") {
        cmd.reply.reject(new SubscribeError("Closed", "the client is closing"));
      } else {
        cmd.reply.reject(closedError());
      }
    }
    // Deliveries no longer wait for room: confirmations must get through.
    this.#resumeReading();
    const options = this.#options;
    await this.#until(() => this.#wire !== wire || this.#outgoing.unconfirmed.size === 0, options.closeTimeoutMs);
    if (this.#wire !== wire) {
      return;
    }
    this.#outgoing.pushAcks();
    this.#outgoing.pushFrame({ type: "Bye" });
    this.#outgoing.writeNow();
    wire.end();
    await this.#until(() => this.#wire !== wire, options.connectTimeoutMs);
    wire.destroy("closed by the application");
  }

  /** Resolves once `done()` holds (looked at when woken) or after `timeoutMs`. */
  #until(done: () => boolean, timeoutMs: number): Promise<void> {
    return new Promise((resolve) => {
      if (done()) {
        resolve();
        return;
      }
      const finish = (): void => {
        clearTimeout(timer);
        this.#closeWake = undefined;
        resolve();
      };
      const timer = setTimeout(finish, timeoutMs);
      this.#closeWake = () => {
        if (done()) {
          finish();
        }
      };
    });
  }

  #rejectWaiters(): void {
    for (let w = this.#roomWaiters.shift(); w !== undefined; w = this.#roomWaiters.shift()) {
      w.reject(closedError());
    }
  }

  /**
   * Stops for good: later sends fail, waiting callers are released, persistent messages never
   * confirmed are reported, streams end, `Closed` is raised.
   */
  #finish(reason: string): void {
    if (this.#state === "closed") {
      return;
    }
    this.#state = "closed";
    this.#stop.abort();
    this.#stopHeartbeat();
    if (this.#refreshTimer !== undefined) {
      clearTimeout(this.#refreshTimer);
      this.#refreshTimer = undefined;
    }
    const wire = this.#wire;
    this.#wire = undefined;
    wire?.destroy(reason);
    this.#rejectWaiters();
    const ids = this.#outgoing.abandon();
    for (const cmd of this.#commands.drain()) {
      switch (cmd.kind) {
        case "publish":
          if (cmd.cmd.persistent) {
            ids.push(cmd.cmd.id);
          }
          cmd.cmd.confirm?.reject(closedError());
          break;
        case "subscribe":
          cmd.reply.reject(new SubscribeError("Closed", "the client is closed"));
          break;
        case "flush":
          cmd.reply.reject(closedError());
          break;
      }
    }
    for (const id of ids) {
      this.#hub.emit({ type: "Unconfirmed", id });
    }
    this.#incoming.close();
    this.#outgoing.close();
    this.#hub.emit({ type: "Closed", reason });
    this.#hub.end();
  }
}
