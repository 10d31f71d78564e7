//! The atomics facade: every atomic type the crate's shared-memory protocols
//! use comes from here, never from `core::sync::atomic` directly.
//!
//! This is the single place to switch the crate to loom's model-checked
//! atomics (`#[cfg(loom)]`) once loom tests of the ring's index protocol are
//! added. For now it is a plain re-export of std's atomics.
//!
//! The atomic word copies of [`mapping`](crate::mapping) stay on std's
//! `AtomicUsize`: they access bytes of a region by address, which loom cannot
//! model anyway.

pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
