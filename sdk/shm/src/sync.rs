//! The atomics facade: every atomic type the ring protocol uses comes from
//! here, never from `core::sync::atomic` directly, so that `--cfg loom`
//! switches it to loom's model-checked atomics (see `tests/loom.rs`).
//!
//! Under loom only the ring's index protocol is modelled: its words are
//! addressed by index, so a region made of loom's atomics works unchanged,
//! and its payload copies go through those words. The futex-based
//! semaphore and event, and the atomic word copies of
//! [`mapping`](crate::mapping), stay on std's atomics (they touch memory by
//! address, which loom cannot model) and are not built under loom.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
