//! Load generator and benchmark support for the Broadcast message broker.
//!
//! The `loadgen` binary runs the same workloads, with the same counts, sizes, clocks and loss
//! accounting, as the side-by-side harness that drives NATS, Redis and Mosquitto, so that its
//! JSON lines can be put next to theirs. This library holds its parts, which the criterion
//! benchmarks reuse:
//!
//! - [`payload`]: the benchmark message (sequence number, send time, filler) and the receiving
//!   side that counts distinct messages, duplicates and losses.
//! - [`workloads`]: the workloads themselves, written against the client library.
//! - [`server`]: a broker to measure: one already running, one started in this process, or the
//!   real broker binary started as a child process (whose peak memory is then read).
//! - [`report`]: the JSON lines and the field-by-field median of several runs.
//! - [`soak`]: the soak scenarios (memory, disk and storage faults over time), which the
//!   `soak` binary runs against the broker binary.
//! - [`procfs`]: peak resident memory and CPU time of a process, from `/proc`.
#![forbid(unsafe_code)]

pub mod payload;
pub mod procfs;
pub mod report;
pub mod server;
pub mod soak;
pub mod workloads;
