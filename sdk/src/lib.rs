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
//! - [`Client`]: the connection to the agent; create, open and delete
//!   segments. [`Identity`] is who the agent says the caller is;
//!   [`DEFAULT_TIMEOUT`] bounds every wait for the agent.
//! - [`SegmentBuilder`]: options of a segment to create.
//! - [`Segment`]: a granted, mapped segment; detaches when dropped.
//!   [`SegmentInfo`], [`SegmentId`], [`SegmentRef`], [`SharingMode`],
//!   [`Lifetime`] and [`SegmentState`] describe segments.
//! - [`Error`] and [`ProtocolError`]: what can go wrong.
//! - [`Access`] and [`AccessError`], re-exported from `ipcplane-shm`.
//!
//! The SDK emits `tracing` events at debug level and never installs a
//! subscriber.
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
mod error;
mod segment;
mod wire;

pub use client::{Client, DEFAULT_TIMEOUT, Identity, SegmentBuilder};
pub use error::{Error, ProtocolError};
pub use ipcplane_shm::Access;
pub use ipcplane_shm::mapping::{AccessError, MapError};
pub use segment::{
    Lifetime, Segment, SegmentId, SegmentInfo, SegmentRef, SegmentState, SharingMode,
};
