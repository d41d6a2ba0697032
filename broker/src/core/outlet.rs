//! Where the core hands frames for one connection: its bounded outbound queue, seen through
//! the [`Outlet`] trait so that the core never touches a socket or a channel itself.

use bytes::Bytes;

/// One frame waiting to be written.
#[derive(Debug, Clone)]
pub struct OutFrame {
    /// The encoded frame, header included.
    pub bytes: Bytes,
    /// True for the delivery of a non-persistent message: if it is never written, its sender
    /// is told (the frame itself names the sender and the message id).
    pub at_most_once: bool,
}

impl OutFrame {
    /// A frame that delivers no non-persistent message (a notice, an answer, a ping, or a
    /// persistent delivery, which is tracked until acknowledged).
    pub fn control(bytes: Bytes) -> Self {
        Self {
            bytes,
            at_most_once: false,
        }
    }

    /// The delivery of a non-persistent message.
    pub fn at_most_once(bytes: Bytes) -> Self {
        Self {
            bytes,
            at_most_once: true,
        }
    }
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue is at its limit.
    Full,
    /// The connection is closing.
    Closed,
}

/// A connection's outbound queue as the core sees it. Every call returns at once: the core
/// decides with the answer (a full queue makes a persistent message wait in the store, a
/// non-persistent one wait for room or fail), and the shell's writer empties the queue.
pub trait Outlet: Clone {
    /// What the shell keeps with each persistent message of this connection until it is
    /// confirmed (the shell's bound on unconfirmed messages); dropped at confirmation.
    type Permit;

    /// The connection's id, unique for the broker's life.
    fn conn_id(&self) -> u64;

    /// Largest frame body the client accepts.
    fn max_frame(&self) -> usize;

    /// Queues a frame if there is room now.
    fn try_push(&self, frame: OutFrame) -> Result<(), PushError>;

    /// Queues an `Accepted` frame, never refused (bounded by the connection's limit of
    /// unconfirmed messages): it waits beside the queue when the queue is full.
    fn push_confirmation(&self, accepted: Bytes);

    /// Queues a notice that the store cannot keep, never refused: it waits beside the queue
    /// when the queue is full, and confirmations pushed after it wait behind it.
    fn push_notice(&self, notice: Bytes);

    /// True while the connection is known not to take frames (a sender waited for room in
    /// vain and nothing was written since).
    fn is_stalled(&self) -> bool;

    /// Asks to be told (through [`crate::core::Core::drain_step`] being asked again) once
    /// the writer has made room.
    fn want_room(&self);

    /// Tells the connection's drainer that there may be work: entries appended to its queue,
    /// acknowledgements that opened its window.
    fn wake(&self);
}
