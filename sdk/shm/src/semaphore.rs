//! A counting semaphore in shared memory that processes acquire and release
//! through atomics, sleeping on a process-shared futex only when it is zero.
//!
//! # Layout
//! A region of at least [`HEADER_SIZE`] (256) bytes, 8-byte aligned, holds
//! the [`Header`] (shared with [`event`](crate::event), told apart by
//! [`MAGIC`]), written once by [`init`]. Its futex word is `count`.
//!
//! # Protocol
//! - Acquire: one compare-and-swap of `count` from `n > 0` to `n - 1`. When
//!   `count` is 0, spin a little, then increment `waiters`, re-check
//!   `count`, and `FUTEX_WAIT` on `count` while it is 0; decrement `waiters`
//!   when done.
//! - Release: add to `count` with a compare-and-swap loop that refuses to
//!   wrap, then `FUTEX_WAKE` only if `waiters` is not 0, so an uncontended
//!   acquire and release make no system call.
//! - The two sides are a store-buffering pair: the releaser updates `count`
//!   then reads `waiters`, the waiter updates `waiters` then reads `count`,
//!   all `SeqCst`, so at least one sees the other's update: the waiter does
//!   not sleep, or the releaser wakes it (and the kernel's own check of
//!   `count` covers a waiter that is between its check and its sleep).
//!
//! # Untrusted peer
//! Another process may write anything into the header at any time. A
//! garbage `count` is just a count: acquire takes from it, release refuses
//! to overflow it ([`SemaphoreError::Overflow`]). `waiters` is only a hint:
//! a value too high costs releasers a wake system call, a value too low can
//! delay a sleeper until its timeout, as can a peer that takes every unit;
//! no value makes this side panic, wrap arithmetic or overrun a timeout.
//! There is no fairness between waiters.

use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use crate::futex::FutexError;
use crate::mapping::Mapping;
use crate::primitive::{self, Handle};
pub use crate::primitive::{HEADER_SIZE, Header, LAYOUT_VERSION, LayoutError};
use crate::sync::{AtomicU32, Ordering};

/// `"ipcsema\x01"` as a little-endian `u64`: the first word of an initialised
/// semaphore [`Header`].
pub const MAGIC: u64 = u64::from_le_bytes(*b"ipcsema\x01");

/// Why [`Semaphore::acquire`] or [`Semaphore::release_n`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SemaphoreError {
    /// The timeout elapsed before a unit was available.
    #[error("timed out waiting for the semaphore")]
    Timeout,
    /// Releasing would take the count past `u32::MAX`; nothing was released.
    #[error("releasing {n} units would overflow the count {count}")]
    Overflow {
        /// The count found.
        count: u32,
        /// The units to release.
        n: u32,
    },
    /// The futex wait failed (see [`FutexError`]).
    #[error("cannot sleep on the semaphore")]
    Futex(#[source] FutexError),
}

/// Writes a fresh semaphore header with `initial` units and no waiters.
///
/// The configuration is written first and [`MAGIC`] last, with `Release`, so
/// an attach that sees the magic sees the rest. Re-initialising a semaphore
/// in use resets it under its users.
///
/// # Errors
/// [`LayoutError::Misaligned`] or [`LayoutError::RegionTooSmall`].
///
/// # Safety
/// - `ptr..ptr + len` must be valid for reads and writes for the whole call.
/// - Within this process, nothing may access the header's bytes concurrently
///   other than through this module (atomics of the same sizes at the same
///   addresses); no `&`/`&mut` reference to them may be alive.
pub unsafe fn init(ptr: NonNull<u8>, len: usize, initial: u32) -> Result<(), LayoutError> {
    // SAFETY: our caller's contract is `primitive::init`'s.
    unsafe { primitive::init(ptr, len, MAGIC, initial) }
}

/// [`init`] over the start of a read-write mapping.
///
/// # Errors
/// [`LayoutError::ReadOnly`], or [`LayoutError::RegionTooSmall`] for a
/// mapping shorter than [`HEADER_SIZE`].
pub fn init_mapping(mapping: &Mapping, initial: u32) -> Result<(), LayoutError> {
    primitive::init_mapping(mapping, MAGIC, initial)
}

/// A handle to a counting semaphore in a shared region.
///
/// Handles are `Send` and `Sync`: threads share one through `&` or `Arc`, and
/// processes each attach their own.
#[derive(Debug)]
pub struct Semaphore {
    handle: Handle,
}

impl Semaphore {
    /// Attaches to an initialised semaphore region after checking its
    /// alignment, size and header.
    ///
    /// # Errors
    /// A [`LayoutError`] naming the first check that failed.
    ///
    /// # Safety
    /// - `ptr..ptr + len` must be valid for reads and writes (allocated, or
    ///   mapped read-write) until the returned handle is dropped.
    /// - Within this process, while the handle lives, nothing may access the
    ///   header's bytes other than semaphore handles and atomic operations of
    ///   the same size at the same addresses; no `&`/`&mut` reference to them
    ///   may be alive. Other processes may write anything: that is handled.
    pub unsafe fn attach(ptr: NonNull<u8>, len: usize) -> Result<Self, LayoutError> {
        // SAFETY: our caller's contract is `Handle::attach`'s.
        let handle = unsafe { Handle::attach(ptr, len, MAGIC) }?;
        Ok(Self { handle })
    }

    /// Attaches to the semaphore [`init_mapping`] wrote at the start of a
    /// read-write mapping, keeping the mapping alive as long as the handle.
    ///
    /// The mapping may be shared (other handles, other processes), but within
    /// this process do not [`read_at`](Mapping::read_at) or
    /// [`write_at`](Mapping::write_at) the first [`HEADER_SIZE`] bytes while a
    /// handle lives: those copies use pointer-sized atomics, the semaphore
    /// 32-bit ones, and racing atomics of mixed sizes are undefined behaviour
    /// in Rust's memory model.
    ///
    /// # Errors
    /// [`LayoutError::ReadOnly`], or what [`attach`](Self::attach) reports.
    pub fn from_mapping(mapping: Arc<Mapping>) -> Result<Self, LayoutError> {
        let handle = Handle::from_mapping(mapping, MAGIC)?;
        Ok(Self { handle })
    }

    /// Takes one unit if one is available, without waiting.
    pub fn try_acquire(&self) -> bool {
        // ORDERING: Relaxed; only the first guess of the compare-and-swap,
        // which orders.
        self.take_from(self.count().load(Ordering::Relaxed))
    }

    /// Takes one unit, waiting up to `timeout` (`None`: forever) for one to
    /// be released. A signal does not end the wait.
    ///
    /// # Errors
    /// [`SemaphoreError::Timeout`], or [`SemaphoreError::Futex`] if the
    /// kernel refused to let the thread sleep.
    pub fn acquire(&self, timeout: Option<Duration>) -> Result<(), SemaphoreError> {
        if self.try_acquire() {
            return Ok(());
        }
        self.acquire_slow(timeout)
    }

    /// Returns one unit, waking a sleeper if there is one.
    ///
    /// # Errors
    /// [`SemaphoreError::Overflow`] if the count is already `u32::MAX`.
    pub fn release(&self) -> Result<(), SemaphoreError> {
        self.release_n(1)
    }

    /// Returns `n` units at once, waking up to `n` sleepers.
    ///
    /// # Errors
    /// [`SemaphoreError::Overflow`] if the count would pass `u32::MAX`; then
    /// nothing is released (the count never wraps, not even briefly, which a
    /// `fetch_add` followed by a correction would allow).
    pub fn release_n(&self, n: u32) -> Result<(), SemaphoreError> {
        if n == 0 {
            return Ok(());
        }
        self.count()
            // ORDERING: SeqCst on success. Its Release half pairs with the
            // Acquire compare-and-swap in `take_from`, so what this thread
            // wrote before releasing happens before the acquirer's critical
            // section. Its SeqCst half orders it before the SeqCst load of
            // `waiters` in `Handle::wake` below, against the waiter's SeqCst
            // increment of `waiters` in `Handle::wait` then SeqCst load of
            // `count` in `Handle::sleep`. Relaxed on failure: the value is
            // only the next guess.
            .fetch_update(Ordering::SeqCst, Ordering::Relaxed, |count| {
                count.checked_add(n)
            })
            .map_err(|count| SemaphoreError::Overflow { count, n })?;
        self.handle.wake(n);
        Ok(())
    }

    /// The units available now: a snapshot, for display and tests.
    pub fn value(&self) -> u32 {
        // ORDERING: Relaxed; a snapshot that orders nothing.
        self.count().load(Ordering::Relaxed)
    }

    /// How many acquirers are asleep or about to be: a hint, which a peer
    /// may have overwritten.
    pub fn waiters(&self) -> u32 {
        self.handle.waiters()
    }

    /// Units available; the futex word sleepers wait on while it is 0.
    fn count(&self) -> &AtomicU32 {
        self.handle.word()
    }

    /// Takes one unit by compare-and-swap, starting from the guess `current`.
    fn take_from(&self, mut current: u32) -> bool {
        let count = self.count();
        while current != 0 {
            // ORDERING: Acquire on success; pairs with the SeqCst (so
            // Release) update of `count` in `release_n`. Relaxed on failure:
            // the value is only the next guess.
            match count.compare_exchange_weak(
                current,
                current - 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
        false
    }

    /// Spins, then sleeps on `count` while it is 0, taking a unit as soon as
    /// one is there.
    #[cold]
    fn acquire_slow(&self, timeout: Option<Duration>) -> Result<(), SemaphoreError> {
        let taken = self
            .handle
            .wait(0, timeout, |count| self.take_from(count))
            .map_err(SemaphoreError::Futex)?;
        if taken {
            Ok(())
        } else {
            Err(SemaphoreError::Timeout)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::thread;

    use super::*;
    use crate::primitive::tests::{Heap, LONG};

    #[test]
    fn try_acquire_takes_until_zero() {
        let heap = Heap::new(MAGIC, 2);
        let sem = heap.attach(Semaphore::attach);
        assert!(sem.try_acquire());
        assert!(sem.try_acquire());
        assert!(!sem.try_acquire());
        assert_eq!(sem.value(), 0);
        sem.release_n(3).unwrap();
        assert_eq!(sem.value(), 3);
        sem.release_n(0).unwrap();
        assert_eq!(sem.value(), 3);
    }

    #[test]
    fn acquire_times_out_and_leaves_no_waiter() {
        let heap = Heap::new(MAGIC, 0);
        let sem = heap.attach(Semaphore::attach);
        assert!(matches!(
            sem.acquire(Some(Duration::from_millis(5))),
            Err(SemaphoreError::Timeout)
        ));
        assert!(matches!(
            sem.acquire(Some(Duration::ZERO)),
            Err(SemaphoreError::Timeout)
        ));
        assert_eq!((sem.value(), sem.waiters()), (0, 0));
    }

    #[test]
    fn acquire_blocks_until_another_thread_releases() {
        let heap = Heap::new(MAGIC, 0);
        let sem = heap.attach(Semaphore::attach);
        heap.wake_sleepers(
            1,
            || sem.acquire(Some(LONG)).is_ok(),
            || sem.release().unwrap(),
        );
        assert_eq!((sem.value(), sem.waiters()), (0, 0));
    }

    #[test]
    fn release_n_wakes_n_sleepers() {
        let heap = Heap::new(MAGIC, 0);
        let sem = heap.attach(Semaphore::attach);
        heap.wake_sleepers(
            4,
            || sem.acquire(Some(LONG)).is_ok(),
            || sem.release_n(4).unwrap(),
        );
        assert_eq!((sem.value(), sem.waiters()), (0, 0));
    }

    #[test]
    fn many_threads_keep_the_count_exact_and_bounded() {
        const UNITS: u32 = 3;
        let heap = Heap::new(MAGIC, UNITS);
        let sem = heap.attach(Semaphore::attach);
        let inside = AtomicUsize::new(0);
        let max_inside = AtomicUsize::new(0);
        thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..5000 {
                        sem.acquire(Some(LONG)).unwrap();
                        let now = inside.fetch_add(1, Ordering::Relaxed) + 1;
                        max_inside.fetch_max(now, Ordering::Relaxed);
                        inside.fetch_sub(1, Ordering::Relaxed);
                        sem.release().unwrap();
                    }
                });
            }
        });
        assert_eq!((sem.value(), sem.waiters()), (UNITS, 0));
        assert!(max_inside.load(Ordering::Relaxed) <= UNITS as usize);
    }

    #[test]
    fn release_refuses_to_overflow() {
        let heap = Heap::new(MAGIC, u32::MAX - 1);
        let sem = heap.attach(Semaphore::attach);
        assert!(matches!(
            sem.release_n(2),
            Err(SemaphoreError::Overflow {
                count: 4_294_967_294,
                n: 2
            })
        ));
        sem.release().unwrap();
        assert!(matches!(
            sem.release(),
            Err(SemaphoreError::Overflow {
                count: u32::MAX,
                n: 1
            })
        ));
        assert_eq!(sem.value(), u32::MAX);
        assert!(sem.try_acquire());
        assert_eq!(sem.value(), u32::MAX - 1);
    }

    #[test]
    fn garbage_waiters_never_lose_a_unit_or_hang() {
        let heap = Heap::new(MAGIC, 0);
        let sem = heap.attach(Semaphore::attach);
        let hdr = heap.header();

        // Too high: releasers make a useless wake call, nothing else.
        hdr.waiters.store(u32::MAX, Ordering::Relaxed);
        sem.release().unwrap();
        sem.acquire(Some(LONG)).unwrap();

        // Zeroed under a sleeper: the release makes no wake call, and the
        // sleeper takes the unit by its timeout at the latest.
        hdr.waiters.store(0, Ordering::Relaxed);
        heap.wake_sleepers(
            1,
            || sem.acquire(Some(Duration::from_millis(50))).is_ok(),
            || {
                hdr.waiters.store(0, Ordering::Relaxed);
                sem.release().unwrap();
            },
        );
        // The sleeper's decrement wrapped the zeroed hint: only a hint.
        assert_eq!((sem.value(), sem.waiters()), (0, u32::MAX));
        sem.release().unwrap();
        assert!(sem.try_acquire());
    }

    #[test]
    fn a_peer_scribbling_the_hot_words_never_panics_or_hangs() {
        let heap = Heap::new(MAGIC, 2);
        let sem = heap.attach(Semaphore::attach);
        let hdr = heap.header();
        let stop = std::sync::atomic::AtomicBool::new(false);
        thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        for _ in 0..2000 {
                            if sem.acquire(Some(Duration::from_millis(1))).is_ok() {
                                let _ = sem.release();
                            }
                            let _ = sem.release_n(3);
                            let _ = sem.try_acquire();
                        }
                    })
                })
                .collect();
            s.spawn(|| {
                // A deterministic xorshift, so no dev-dependency is needed.
                let mut state = 0x9e37_79b9_7f4a_7c15_u64;
                while !stop.load(Ordering::Relaxed) {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let [a, b, c, d, ..] = state.to_ne_bytes();
                    let random = u32::from_ne_bytes([a, b, c, d]);
                    // Mostly the edges, where arithmetic would overflow.
                    let count = match state >> 62 {
                        0 => 0,
                        1 => u32::MAX,
                        2 => u32::MAX - 1,
                        _ => random,
                    };
                    hdr.word.store(count, Ordering::Relaxed);
                    hdr.waiters.store(random.rotate_left(7), Ordering::Relaxed);
                    thread::yield_now();
                }
            });
            for worker in workers {
                worker.join().unwrap();
            }
            stop.store(true, Ordering::Relaxed);
        });
    }
}
