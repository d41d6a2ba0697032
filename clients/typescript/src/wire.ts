/**
 * {@link Wire}: one connection to the broker once opened by its transport: the handshake, then
 * frames in both directions, with the receive limit enforced and reading paused on demand.
 *
 * @module
 */

import { FrameDecoder, decodeServerBody, encodeClientFrame, frameBody } from "./codec.js";
import { CodecError, ConnectError } from "./errors.js";
import { MAX_FRAME_CAP, type Hello, type ServerFrame, type Welcome } from "./frames.js";
import type { Transport, TransportConnection } from "./transport/transport.js";

/** What a {@link Wire} reports once its handshake is done. */
export interface WireHandler {
  /**
   * A frame arrived, or one that could not be decoded (skipped; the connection goes on).
   * Returns false to stop reading until {@link Wire.release} is called.
   */
  frame(frame: ServerFrame | CodecError): boolean;
  /** The bytes written so far have gone out. */
  drain(): void;
  /** The connection ended: `reason` says why. Called once, after every frame received. */
  closed(reason: string): void;
}

/** A TLS record (alert 0x15 or handshake 0x16, version 0x03 0x0N) read as a frame header. */
function looksLikeTls(length: number | undefined): boolean {
  if (length === undefined) {
    return false;
  }
  const first = Math.floor(length / 0x100_0000);
  return (first === 0x15 || first === 0x16) && ((length >>> 16) & 0xff) === 0x03;
}

/**
 * One connection to the broker: opened by {@link Wire.open}, which does the handshake, then
 * handed a {@link WireHandler} with {@link Wire.begin}.
 */
export class Wire {
  /** The broker's answer to the handshake. */
  welcome!: Welcome;
  private readonly conn: TransportConnection;
  private readonly maxFrame: number;
  private readonly decoder: FrameDecoder | undefined;
  /** One message-framed frame that arrived while frames were held. */
  private heldMessage: Uint8Array | undefined;
  private handler: WireHandler | undefined;
  /** Frames are not handed over: before `begin`, or after the handler asked to stop. */
  private held = true;
  /** Closed on this side: nothing more is read or written. */
  private destroyed = false;
  /** Why the connection ended, once it has (reported after the frames received before). */
  private endReason: string | undefined;
  private reported = false;
  private handshake:
    | { resolve: (welcome: Welcome) => void; reject: (error: ConnectError) => void }
    | undefined;

  private constructor(conn: TransportConnection, maxFrame: number) {
    this.conn = conn;
    this.maxFrame = Math.min(maxFrame, MAX_FRAME_CAP);
    this.decoder = conn.framing === "stream" ? new FrameDecoder(this.maxFrame) : undefined;
  }

  /**
   * Opens a connection with `transport` and does the handshake, all within `timeoutMs`;
   * `cancel` gives up early.
   *
   * @throws {@link ConnectError} `Io`, `Tls` or `Timeout` when the connection fails,
   *   `Refused` when the broker answers the `Hello` with an error, `Protocol` when it answers
   *   anything else than a `Welcome` of the version asked for.
   */
  static async open(
    transport: Transport,
    hello: Hello,
    timeoutMs: number,
    cancel?: AbortSignal,
  ): Promise<Wire> {
    const abort = new AbortController();
    const timer = setTimeout(
      () =>
        abort.abort(
          new ConnectError("Timeout", `no handshake with ${transport.address} within ${timeoutMs} ms`),
        ),
      timeoutMs,
    );
    const onCancel = (): void => abort.abort(new ConnectError("Io", "the client is closing"));
    if (cancel?.aborted) {
      onCancel();
    }
    cancel?.addEventListener("abort", onCancel, { once: true });
    let wire: Wire | undefined;
    try {
      const conn = await transport.open(abort.signal);
      wire = new Wire(conn, hello.maxFrame);
      const welcome = await wire.shake(hello, abort.signal);
      if (welcome.version !== hello.version) {
        throw new ConnectError(
          "Protocol",
          `the broker answered in protocol version ${welcome.version}, this client asked for ${hello.version}`,
        );
      }
      wire.welcome = welcome;
      return wire;
    } catch (e) {
      wire?.destroy("handshake failed");
      if (e instanceof ConnectError) {
        throw e;
      }
      throw new ConnectError("Io", `cannot connect to ${transport.address}: ${String(e)}`, {
        cause: e,
      });
    } finally {
      clearTimeout(timer);
      cancel?.removeEventListener("abort", onCancel);
    }
  }

  private shake(hello: Hello, signal: AbortSignal): Promise<Welcome> {
    return new Promise<Welcome>((resolve, reject) => {
      const onAbort = (): void => {
        this.handshake = undefined;
        const reason: unknown = signal.reason;
        reject(reason instanceof ConnectError ? reason : new ConnectError("Timeout", "aborted"));
      };
      if (signal.aborted) {
        onAbort();
        return;
      }
      let bytes: Uint8Array;
      try {
        bytes = encodeClientFrame({ type: "Hello", ...hello });
      } catch (e) {
        reject(new ConnectError("InvalidOptions", `cannot encode the Hello: ${String(e)}`, { cause: e }));
        return;
      }
      signal.addEventListener("abort", onAbort, { once: true });
      this.handshake = {
        resolve: (welcome) => {
          signal.removeEventListener("abort", onAbort);
          resolve(welcome);
        },
        reject: (error) => {
          signal.removeEventListener("abort", onAbort);
          reject(error);
        },
      };
      this.conn.start({
        data: (chunk) => this.onData(chunk),
        drain: () => this.handler?.drain(),
        close: (error) => this.onClose(error),
      });
      // Nothing else is sent until the answer arrives (PROTOCOL.md section 6).
      this.conn.write([bytes]);
    });
  }

  /** Starts handing frames to `handler`, beginning with those that came after the `Welcome`. */
  begin(handler: WireHandler): void {
    this.handler = handler;
    this.release();
  }

  /** Resumes handing frames over after the handler asked to stop. */
  release(): void {
    if (this.handler === undefined || this.reported || !this.held) {
      return;
    }
    this.held = false;
    // The frame held here came before anything the transport holds.
    const body = this.heldMessage;
    this.heldMessage = undefined;
    if (body !== undefined) {
      this.deliver(this.decodeBody(body));
      if (this.held) {
        return;
      }
    }
    if (!this.destroyed) {
      this.conn.resume();
    }
    this.pump();
  }

  /** Bytes written and not yet handed to the network. */
  get bufferedAmount(): number {
    return this.conn.bufferedAmount;
  }

  /** Whether frames can still be written. */
  get writable(): boolean {
    return !this.destroyed && this.endReason === undefined;
  }

  /** Writes complete frames, in order. */
  write(frames: readonly Uint8Array[]): void {
    if (this.writable && frames.length > 0) {
      this.conn.write(frames);
    }
  }

  /** Closes after what was written has gone out. */
  end(): void {
    this.conn.end();
  }

  /** Closes at once; the handler hears of it with `reason`. */
  destroy(reason: string): void {
    this.endReason ??= reason;
    if (!this.destroyed) {
      this.destroyed = true;
      this.heldMessage = undefined;
      this.conn.destroy();
    }
    this.report();
  }

  private onData(chunk: Uint8Array): void {
    if (this.destroyed) {
      return;
    }
    if (this.decoder !== undefined) {
      this.decoder.push(chunk);
      this.pump();
      return;
    }
    let body: Uint8Array;
    try {
      body = frameBody(chunk, this.maxFrame);
    } catch (e) {
      this.onUnreadable(e instanceof CodecError ? e : new CodecError("Malformed", String(e)));
      return;
    }
    if (this.held && this.handshake === undefined) {
      // The transport stops delivering once paused: at most this one waits here.
      this.heldMessage = body;
      this.conn.pause();
      return;
    }
    this.deliver(this.decodeBody(body));
  }

  private decodeBody(body: Uint8Array): ServerFrame | CodecError {
    try {
      return decodeServerBody(body);
    } catch (e) {
      return e instanceof CodecError ? e : new CodecError("Malformed", String(e));
    }
  }

  /** Hands over every whole frame received while not held; then reports an end. */
  private pump(): void {
    const decoder = this.decoder;
    if (decoder !== undefined) {
      while (!this.destroyed && (!this.held || this.handshake !== undefined)) {
        let body: Uint8Array | undefined;
        try {
          body = decoder.next();
        } catch (e) {
          this.onUnreadable(e instanceof CodecError ? e : new CodecError("Malformed", String(e)));
          return;
        }
        if (body === undefined) {
          break;
        }
        this.deliver(this.decodeBody(body));
      }
    }
    const waiting = (decoder?.buffered ?? 0) > 0 || this.heldMessage !== undefined;
    if (!this.held || !waiting) {
      this.report();
    }
  }

  private deliver(frame: ServerFrame | CodecError): void {
    if (this.handshake !== undefined) {
      this.onHandshakeFrame(frame);
      return;
    }
    if (this.handler !== undefined && !this.handler.frame(frame) && !this.held) {
      this.held = true;
      if (!this.destroyed) {
        this.conn.pause();
      }
    }
  }

  private onHandshakeFrame(frame: ServerFrame | CodecError): void {
    const handshake = this.handshake;
    this.handshake = undefined;
    if (handshake === undefined) {
      return;
    }
    if (frame instanceof CodecError) {
      this.destroy(`the answer to the handshake could not be read: ${frame.message}`);
      handshake.reject(
        new ConnectError("Protocol", `the broker's answer to the handshake: ${frame.message}`, {
          cause: frame,
        }),
      );
      return;
    }
    if (frame.type === "Welcome") {
      // Frames after the Welcome wait for `begin`.
      this.held = true;
      this.conn.pause();
      handshake.resolve(frame);
      return;
    }
    this.destroy("handshake failed");
    if (frame.type === "Error") {
      handshake.reject(
        new ConnectError(
          "Refused",
          `the broker refused the connection (${frame.code}): ${frame.message}`,
          { serverCode: frame.code },
        ),
      );
      return;
    }
    handshake.reject(new ConnectError("Protocol", `expected Welcome, got ${frame.type}`));
  }

  /** The framing broke (a frame over the limit, a message that is not one frame): fatal. */
  private onUnreadable(error: CodecError): void {
    const handshake = this.handshake;
    this.handshake = undefined;
    this.destroy(
      error.code === "FrameTooLarge"
        ? `the broker sent a frame larger than this client accepts: ${error.message}`
        : `a frame could not be read: ${error.message}`,
    );
    if (handshake !== undefined) {
      handshake.reject(
        error.code === "FrameTooLarge" && looksLikeTls(error.length)
          ? new ConnectError(
              "Protocol",
              "the broker speaks TLS on this address: connect with TLS (a tls:// address, the tls option)",
            )
          : new ConnectError("Protocol", `the broker's answer to the handshake: ${error.message}`, {
              cause: error,
            }),
      );
    }
  }

  private onClose(error: Error | undefined): void {
    const reason =
      error === undefined
        ? "the broker closed the connection"
        : `the connection failed: ${error.message}`;
    this.endReason ??= reason;
    const handshake = this.handshake;
    if (handshake !== undefined) {
      this.handshake = undefined;
      handshake.reject(
        new ConnectError(
          error === undefined ? "Protocol" : "Io",
          error === undefined ? "the broker closed the connection during the handshake" : reason,
          { cause: error },
        ),
      );
      return;
    }
    // Frames received before the end are handed over first.
    this.pump();
  }

  /** Tells the handler the connection ended, once. */
  private report(): void {
    if (this.endReason === undefined || this.reported || this.handler === undefined) {
      return;
    }
    this.reported = true;
    this.handler.closed(this.endReason);
  }
}
