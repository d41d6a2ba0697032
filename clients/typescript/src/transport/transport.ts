/**
 * The interface between the client and the bytes: a {@link Transport} opens
 * {@link TransportConnection}s, each a duplex channel of frames.
 *
 * Two framings exist. A `stream` connection (TCP, TLS) carries a byte stream that the client
 * cuts into frames. A `message` connection (WebSocket) carries one complete frame, header
 * included, per message, byte for byte what a stream carries.
 *
 * @module
 */

/** What a connection calls back. */
export interface TransportHandlers {
  /** Bytes arrived: any part of the stream, or one whole message. */
  data(chunk: Uint8Array): void;
  /** The bytes written so far have gone out ({@link TransportConnection.bufferedAmount} fell). */
  drain(): void;
  /** The connection is closed, for a reason when it failed; called once, last. */
  close(error?: Error): void;
}

/** One open connection. */
export interface TransportConnection {
  /** `stream`: bytes to cut into frames; `message`: one frame per chunk. */
  readonly framing: "stream" | "message";
  /** Bytes written and not yet handed to the network. */
  readonly bufferedAmount: number;
  /** Starts the callbacks; called once, right after the connection is opened. */
  start(handlers: TransportHandlers): void;
  /** Writes complete frames, in order (for `message` framing, one message each). */
  write(frames: readonly Uint8Array[]): void;
  /** Stops calling {@link TransportHandlers.data} until {@link TransportConnection.resume}. */
  pause(): void;
  /** Calls {@link TransportHandlers.data} again. */
  resume(): void;
  /** Closes once what was written has gone out. */
  end(): void;
  /** Closes at once. */
  destroy(): void;
}

/** Makes connections to one broker. */
export interface Transport {
  /** The broker's address, for messages. */
  readonly address: string;
  /**
   * Opens a connection. Rejects with a `ConnectError` (`Io`, `Tls`, or the signal's reason
   * when `signal` aborts first).
   */
  open(signal: AbortSignal): Promise<TransportConnection>;
}
