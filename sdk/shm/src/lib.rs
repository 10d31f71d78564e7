//! Shared-memory primitives of ipcplane: sealed memfds, their mappings, fd
//! passing over UNIX sockets and peer identity. This is the only crate of the
//! workspace with `unsafe`; the agent uses it to create segments and the SDK
//! uses it to attach them.
//!
//! # Layout
//! - [`Access`]: read or read-write, for file descriptions and mappings.
//! - [`memfd`]: create a sealed memfd, reopen it with narrower access, read its
//!   seals and access mode, release its memory once it is freed.
//! - [`mapping`]: [`Mapping`](mapping::Mapping), a `MAP_SHARED` mapping of a
//!   whole sealed memfd with bounds-checked copies in and out.
//! - [`ring`]: message rings of variable-size records from one or many
//!   producers (a lane each) to one consumer: loan and commit in place,
//!   borrow and release, batches, busy-poll or spin-then-park waits and an
//!   eventfd doorbell for async consumers; checks everything a peer wrote.
//! - `barrier`: the cross-process asymmetric fence (`membarrier`) that lets
//!   publishers check for sleepers without a fence of their own.
//! - `sync`: the atomics facade, the single place to switch to loom's atomics.
//! - [`futex`]: process-shared futex wait and wake on a word in shared memory
//!   (never `FUTEX_PRIVATE_FLAG`).
//! - [`semaphore`]: a counting semaphore in a shared region: a
//!   compare-and-swap when uncontended, a futex sleep when it is zero.
//! - [`event`]: notify-one and notify-all over a sequence word in a shared
//!   region, with no system call when nobody sleeps.
//! - [`fdpass`]: one datagram with file descriptors in `SCM_RIGHTS`.
//! - [`inherit`]: descriptors a service manager passed at exec (`LISTEN_FDS`).
//! - [`peer`]: the kernel's credentials of a connected UNIX socket's peer, and
//!   a pidfd of it.
//! - [`kernel_ipc`]: the kernel's IPC, for comparison (SysV msg/sem, POSIX `sem_t`).
//!
//! # Threat model
//! Every peer is untrusted: another process may write anything into a shared
//! segment at any time, and may send any bytes and fds over a socket.
//! - Shared memory is never turned into `&T` or `&mut T` of plain data; it is
//!   only copied in and out, and every offset and length is bounds-checked
//!   against the mapping's size.
//! - A [`Mapping`](mapping::Mapping)'s copies are atomic, never `memcpy` or
//!   volatile: each aligned
//!   pointer-sized word is one `Relaxed` atomic load or store (or a
//!   compare-and-swap for a word the range covers only in part), so threads of
//!   this process that read and write overlapping ranges at once are not a
//!   data race, and what a peer writes meanwhile is just bytes. A copy is
//!   atomic per word, not as a whole, and promises no ordering: callers
//!   synchronise through their own protocol (see
//!   [`mapping`](mapping#atomic-copies)). Ring payloads are the exception:
//!   the ring protocol gives each byte range to one side at a time, so they
//!   are copied with `memcpy` (see [`ring`](ring#untrusted-peer)).
//! - A memfd is mapped only if it carries [`memfd::REQUIRED_SEALS`], so no
//!   peer can shrink it under a live mapping (which would raise `SIGBUS`).
//! - A read-only grant is a read-only file description with mode `0600`, so
//!   the kernel refuses to map it writable and another uid cannot reopen it
//!   read-write through `/proc/<pid>/fd`.
//! - Received fds are `OwnedFd` from the moment they exist and are close-on-exec.
//!
//! # Verification
//! Unit tests in each module and `tests/syscalls.rs` run the real system calls:
//! seals refuse resizing, the kernel refuses a writable mapping of a read-only
//! fd, unsealed memfds are refused, fds cross a `socketpair` intact, and
//! truncation is reported. Threads hammering overlapping copies see only
//! bytes that were written, and never undo each other's neighbouring bytes.
//!
//! # Examples
//! ```
//! use ipcplane_shm::{Access, mapping::Mapping, memfd};
//! use std::os::fd::AsFd;
//!
//! let fd = memfd::create_sealed("example", 4096)?;
//! let writer = Mapping::map(fd.as_fd(), Access::ReadWrite)?;
//! writer.write_at(0, b"hello")?;
//!
//! let read_only = memfd::reopen(fd.as_fd(), Access::Read)?;
//! let reader = Mapping::map(read_only.as_fd(), Access::Read)?;
//! let mut buf = [0; 5];
//! reader.read_at(0, &mut buf)?;
//! assert_eq!(&buf, b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#[cfg(not(loom))]
mod barrier;
#[cfg(not(loom))]
pub mod event;
pub mod fdpass;
pub mod futex;
pub mod inherit;
pub mod kernel_ipc;
pub mod mapping;
pub mod memfd;
pub mod peer;
#[cfg(not(loom))]
mod primitive;
pub mod ring;
#[cfg(not(loom))]
pub mod semaphore;
mod sync;

use std::fmt;

/// How a file description or a mapping may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// Read only.
    Read,
    /// Read and write.
    ReadWrite,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "read-only",
            Self::ReadWrite => "read-write",
        })
    }
}
