//! The ipcplane client SDK: ask the per-host ipcplane agent for shared-memory
//! segments and map them.
//!
//! The agent owns every segment as a sealed memfd and grants it to processes
//! over its grant socket. This crate speaks that protocol (blocking, one
//! request at a time per connection) and maps what it is granted, after
//! checking the fd's access mode, seals and size. Once mapped, reads and writes
//! never involve the agent.
//!
//! # Layout
//! - [`Client`]: the connection to the agent, re-established on its own
//!   after an agent restart; create, open and delete segments. [`Identity`]
//!   is who the agent says the caller is; [`DEFAULT_TIMEOUT`] bounds every
//!   wait for the agent.
//! - [`SegmentBuilder`]: options of a segment to create.
//! - [`Segment`]: a granted, mapped segment; detaches when dropped.
//!   [`SegmentInfo`], [`SegmentId`], [`SegmentRef`], [`SharingMode`],
//!   [`Lifetime`], [`SegmentState`], [`SegmentKind`] and [`RingParams`]
//!   describe segments.
//! - [`ring`]: message rings the agent creates ([`Client::ring_builder`],
//!   [`Client::open_ring`]), with zero-copy [`ring::Producer`] and
//!   [`ring::Consumer`] endpoints, blocking or (feature `tokio`, on by
//!   default) async receive, and [`Pod`] helpers.
//! - [`Semaphore`] and [`Event`]: process-shared synchronisation in segments
//!   the agent creates ([`Client::create_semaphore`],
//!   [`Client::create_event`] and their builders and `open_*` calls).
//! - [`Error`] and [`ProtocolError`]: what can go wrong.
//! - [`Access`] and [`AccessError`], re-exported from `ipcplane-shm`.
//!
//! # Agent restarts
//! The agent can crash or be restarted (or upgraded, keeping the grant
//! protocol version) without disturbing the data path: mapped segments stay
//! mapped, and peers keep exchanging data through them while no agent runs.
//!
//! Each connection (one per [`Client`], shared with its segments) has a
//! thread, `ipcplane-reconnect`, that notices the agent closing the
//! connection even while the process makes no calls. It then reconnects
//! (after 10 ms, doubling up to 1 s between attempts, for as long as the
//! connection exists), says hello, and re-presents every segment the process
//! still holds: its id, the secret token the agent issued with the grant, and
//! the memfd itself (and a ring's doorbell, which the restarted agent adopts
//! so that every holder keeps ringing the same one), so the restarted agent
//! counts the attachment again. Only
//! to a restarted agent, though: the agent picks a random instance number at
//! each start and says it in each hello, and one that is still the same (it
//! closed the connection, say after a protocol error) still counts the
//! process's attachments, so it is presented nothing. A segment the agent
//! refuses to adopt stays mapped, but the agent no longer counts it as
//! attached here: a `warn` event says so, and dropping it does not detach. A
//! segment dropped while the agent is away is simply not re-presented.
//!
//! A call in flight when the agent goes away fails with
//! [`Error::Disconnected`] and is not retried, since the agent may have acted
//! on it (so may a call made in the instant before the thread notices).
//! Calls made while the client reconnects wait for it (up to the client's
//! timeout, then fail with [`Error::Disconnected`]) and go to the new agent. [`Client::identity`] follows the latest hello, and
//! [`Client::reconnects`] counts reconnections.
//!
//! The thread holds the connection only while reconnecting; it exits as soon
//! as the client and all its segments are dropped (at worst, after an
//! attempt under way, bounded by the timeout, finishes).
//!
//! The SDK emits `tracing` events at debug level, except `info` when the
//! agent goes away and when the client has reconnected, and `warn` when a
//! segment is not adopted. It never installs a subscriber.
//!
//! # Examples
//! ```no_run
//! use ipcplane::{Access, Client};
//!
//! let client = Client::connect()?;
//! // Persistent (the default lifetime): it lives until deleted.
//! let segment = client.segment_builder().name("example").size(4096).create()?;
//! segment.write_at(0, b"hello")?;
//!
//! // Elsewhere, perhaps in another process of the same tenant:
//! let reader = client.open_segment("example", Access::Read)?;
//! let mut buf = [0; 5];
//! reader.read_at(0, &mut buf)?;
//! assert_eq!(&buf, b"hello");
//! # Ok::<(), ipcplane::Error>(())
//! ```
#![forbid(unsafe_code)]

mod client;
mod connection;
mod error;
pub mod ring;
mod segment;
mod sync;
mod wire;

/// Plain-old-data types for [`ring::Producer::send_pod`] and
/// [`ring::Sample::read_pod`] (`#[derive(Pod, Zeroable)]`).
pub use bytemuck::{self, Pod, Zeroable};
pub use client::{Client, DEFAULT_TIMEOUT, Identity, SegmentBuilder};
pub use error::{Error, ProtocolError};
pub use ipcplane_shm::Access;
pub use ipcplane_shm::mapping::{AccessError, MapError};
pub use ipcplane_shm::{event::EventError, semaphore::SemaphoreError};
pub use segment::{
    Lifetime, RingParams, Segment, SegmentId, SegmentInfo, SegmentKind, SegmentRef, SegmentState,
    SharingMode,
};
pub use sync::{Event, EventBuilder, Semaphore, SemaphoreBuilder};
