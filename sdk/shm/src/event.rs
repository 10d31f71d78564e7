//! An event in shared memory: processes wait for the next notification,
//! sleeping on a process-shared futex, and notify one or all of them.
//!
//! # Layout
//! A region of at least [`HEADER_SIZE`] (256) bytes, 8-byte aligned, holds
//! the [`Header`] (shared with [`semaphore`](crate::semaphore), told apart
//! by [`MAGIC`]), written once by [`init`]. Its futex word is `seq`.
//!
//! # Protocol
//! - `seq` counts notifications (modulo 2^32). A wait returns once `seq`
//!   differs from the value it started from: spin a little, then increment
//!   `waiters`, re-check `seq`, and `FUTEX_WAIT` on `seq` while it still
//!   holds that value; decrement `waiters` when done.
//! - A notify increments `seq`, then makes a `FUTEX_WAKE` (one or all) only
//!   if `waiters` is not 0, so notifying nobody costs no system call.
//! - As in [`semaphore`](crate::semaphore), the two sides are a `SeqCst`
//!   store-buffering pair (`seq` then `waiters` against `waiters` then
//!   `seq`), so a sleeper is never missed.
//! - A notification is not stored: one that comes before a wait begins does
//!   not end it. To wait for a condition without losing the notification
//!   that comes between checking it and waiting, read
//!   [`sequence`](Event::sequence) before the check and pass it to
//!   [`wait_since`](Event::wait_since).
//! - [`notify_one`](Event::notify_one) wakes at least one waiter, possibly
//!   more: a waiter not yet asleep sees `seq` change and returns too.
//!
//! # Untrusted peer
//! Another process may write anything into the header at any time. A peer
//! that changes `seq` is a peer that notifies. `waiters` is only a hint: a
//! value too high costs notifiers a wake system call, a value too low can
//! delay a sleeper until its timeout; no value makes this side panic, wrap
//! arithmetic or overrun a timeout. After exactly 2^32 notifications between
//! a waiter's reads of `seq` the waiter misses them (it cannot tell).

use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use crate::futex::FutexError;
use crate::mapping::Mapping;
use crate::primitive::{self, Handle};
pub use crate::primitive::{HEADER_SIZE, Header, LAYOUT_VERSION, LayoutError};
use crate::sync::{AtomicU32, Ordering};

/// `"ipcevnt\x01"` as a little-endian `u64`: the first word of an initialised
/// event [`Header`].
pub const MAGIC: u64 = u64::from_le_bytes(*b"ipcevnt\x01");

/// Why [`Event::wait`] or [`Event::wait_since`] failed.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The timeout elapsed before a notification.
    #[error("timed out waiting for the event")]
    Timeout,
    /// The futex wait failed (see [`FutexError`]).
    #[error("cannot sleep on the event")]
    Futex(#[source] FutexError),
}

/// Writes a fresh event header: no notification yet, no waiters.
///
/// The configuration is written first and [`MAGIC`] last, with `Release`, so
/// an attach that sees the magic sees the rest. Re-initialising an event in
/// use can leave its sleepers asleep until their timeouts.
///
/// # Errors
/// [`LayoutError::Misaligned`] or [`LayoutError::RegionTooSmall`].
///
/// # Safety
/// - `ptr..ptr + len` must be valid for reads and writes for the whole call.
/// - Within this process, nothing may access the header's bytes concurrently
///   other than through this module (atomics of the same sizes at the same
///   addresses); no `&`/`&mut` reference to them may be alive.
pub unsafe fn init(ptr: NonNull<u8>, len: usize) -> Result<(), LayoutError> {
    // SAFETY: our caller's contract is `primitive::init`'s.
    unsafe { primitive::init(ptr, len, MAGIC, 0) }
}

/// [`init`] over the start of a read-write mapping.
///
/// # Errors
/// [`LayoutError::ReadOnly`], or [`LayoutError::RegionTooSmall`] for a
/// mapping shorter than [`HEADER_SIZE`].
pub fn init_mapping(mapping: &Mapping) -> Result<(), LayoutError> {
    primitive::init_mapping(mapping, MAGIC, 0)
}

/// A handle to an event in a shared region.
///
/// Handles are `Send` and `Sync`: threads share one through `&` or `Arc`, and
/// processes each attach their own.
#[derive(Debug)]
pub struct Event {
    handle: Handle,
}

impl Event {
    /// Attaches to an initialised event region after checking its alignment,
    /// size and header.
    ///
    /// # Errors
    /// A [`LayoutError`] naming the first check that failed.
    ///
    /// # Safety
    /// - `ptr..ptr + len` must be valid for reads and writes (allocated, or
    ///   mapped read-write) until the returned handle is dropped.
    /// - Within this process, while the handle lives, nothing may access the
    ///   header's bytes other than event handles and atomic operations of
    ///   the same size at the same addresses; no `&`/`&mut` reference to them
    ///   may be alive. Other processes may write anything: that is handled.
    pub unsafe fn attach(ptr: NonNull<u8>, len: usize) -> Result<Self, LayoutError> {
        // SAFETY: our caller's contract is `Handle::attach`'s.
        let handle = unsafe { Handle::attach(ptr, len, MAGIC) }?;
        Ok(Self { handle })
    }

    /// Attaches to the event [`init_mapping`] wrote at the start of a
    /// read-write mapping, keeping the mapping alive as long as the handle.
    ///
    /// The mapping may be shared (other handles, other processes), but within
    /// this process do not [`read_at`](Mapping::read_at) or
    /// [`write_at`](Mapping::write_at) the first [`HEADER_SIZE`] bytes while a
    /// handle lives: those copies use pointer-sized atomics, the event 32-bit
    /// ones, and racing atomics of mixed sizes are undefined behaviour in
    /// Rust's memory model.
    ///
    /// # Errors
    /// [`LayoutError::ReadOnly`], or what [`attach`](Self::attach) reports.
    pub fn from_mapping(mapping: Arc<Mapping>) -> Result<Self, LayoutError> {
        let handle = Handle::from_mapping(mapping, MAGIC)?;
        Ok(Self { handle })
    }

    /// Waits up to `timeout` (`None`: forever) for a notification made after
    /// this call began. A signal does not end the wait.
    ///
    /// # Errors
    /// [`EventError::Timeout`], or [`EventError::Futex`] if the kernel
    /// refused to let the thread sleep.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<(), EventError> {
        self.wait_since(self.sequence(), timeout)
    }

    /// The notification count now, for [`wait_since`](Self::wait_since).
    ///
    /// Reads with `Acquire`, so when it shows a notification, what the
    /// notifier wrote before notifying is visible.
    pub fn sequence(&self) -> u32 {
        // ORDERING: Acquire; pairs with the SeqCst (so Release) increment of
        // `seq` in `notify`.
        self.seq().load(Ordering::Acquire)
    }

    /// Waits up to `timeout` (`None`: forever) until the notification count
    /// differs from `seen` (an earlier [`sequence`](Self::sequence)):
    /// returns at once if a notification came since. A signal does not end
    /// the wait.
    ///
    /// # Errors
    /// As for [`wait`](Self::wait).
    pub fn wait_since(&self, seen: u32, timeout: Option<Duration>) -> Result<(), EventError> {
        // The loads of `seq` that `Handle::wait` passes are Acquire or
        // SeqCst, like `sequence`.
        let notified = self
            .handle
            .wait(seen, timeout, |seq| seq != seen)
            .map_err(EventError::Futex)?;
        if notified {
            Ok(())
        } else {
            Err(EventError::Timeout)
        }
    }

    /// Wakes one waiter (at least; see the [module docs](self#protocol)).
    pub fn notify_one(&self) {
        self.notify(1);
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.notify(u32::MAX);
    }

    /// How many waiters are asleep or about to be: a hint, which a peer may
    /// have overwritten.
    pub fn waiters(&self) -> u32 {
        self.handle.waiters()
    }

    /// Notifications so far, modulo 2^32; the futex word sleepers wait on.
    fn seq(&self) -> &AtomicU32 {
        self.handle.word()
    }

    /// Counts a notification, then wakes up to `count` sleepers if any.
    fn notify(&self, count: u32) {
        // ORDERING: SeqCst. Its Release half pairs with the Acquire (or
        // SeqCst) loads of `seq` in `sequence` and `Handle::wait`, so what
        // this thread wrote before notifying is visible to the woken. Its
        // SeqCst half orders it before the SeqCst load of `waiters` in
        // `Handle::wake` below, against the waiter's SeqCst increment of
        // `waiters` in `Handle::wait` then SeqCst load of `seq` in
        // `Handle::sleep`. Wraps by design: `seq` counts modulo 2^32.
        self.seq().fetch_add(1, Ordering::SeqCst);
        self.handle.wake(count);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::thread;

    use super::*;
    use crate::primitive::tests::{Heap, LONG};

    #[test]
    fn wait_times_out_even_after_an_earlier_notification() {
        let heap = Heap::new(MAGIC, 0);
        let event = heap.attach(Event::attach);
        let timeout = Some(Duration::from_millis(5));
        assert!(matches!(event.wait(timeout), Err(EventError::Timeout)));
        // A notification before the wait began does not end it.
        event.notify_all();
        assert!(matches!(event.wait(timeout), Err(EventError::Timeout)));
        assert_eq!(event.waiters(), 0);
    }

    #[test]
    fn wait_since_sees_a_notification_that_came_before_it() {
        let heap = Heap::new(MAGIC, 0);
        let event = heap.attach(Event::attach);
        let seen = event.sequence();
        event.notify_one();
        event.wait_since(seen, Some(Duration::ZERO)).unwrap();
        assert!(matches!(
            event.wait_since(event.sequence(), Some(Duration::ZERO)),
            Err(EventError::Timeout)
        ));
    }

    #[test]
    fn notify_one_wakes_a_sleeper_in_another_thread() {
        let heap = Heap::new(MAGIC, 0);
        let event = heap.attach(Event::attach);
        heap.wake_sleepers(1, || event.wait(Some(LONG)).is_ok(), || event.notify_one());
        assert_eq!(event.waiters(), 0);
    }

    #[test]
    fn notify_one_loses_no_waiter() {
        let heap = Heap::new(MAGIC, 0);
        let event = heap.attach(Event::attach);
        let (done_tx, done) = mpsc::channel();
        thread::scope(|s| {
            for _ in 0..2 {
                let done_tx = done_tx.clone();
                let event = &event;
                s.spawn(move || done_tx.send(event.wait(Some(LONG)).is_ok()));
            }
            heap.wait_for_waiters(2);
            event.notify_one();
            assert!(done.recv().unwrap());
            // The other waiter returned too, or still waits for its own.
            event.notify_one();
            assert!(done.recv().unwrap());
        });
    }

    #[test]
    fn notify_all_wakes_every_sleeper() {
        let heap = Heap::new(MAGIC, 0);
        let event = heap.attach(Event::attach);
        heap.wake_sleepers(4, || event.wait(Some(LONG)).is_ok(), || event.notify_all());
        assert_eq!(event.waiters(), 0);
    }

    #[test]
    fn garbage_hot_words_never_panic_or_hang() {
        let heap = Heap::new(MAGIC, 0);
        let event = heap.attach(Event::attach);
        let hdr = heap.header();

        // A peer writing `seq` is a peer notifying; wrapping is fine.
        hdr.word.store(u32::MAX, Ordering::Relaxed);
        let seen = event.sequence();
        event.notify_one();
        assert_eq!(event.sequence(), 0);
        event.wait_since(seen, Some(Duration::ZERO)).unwrap();

        // A hint too high costs a useless wake call, nothing else.
        hdr.waiters.store(u32::MAX, Ordering::Relaxed);
        event.notify_all();

        // Zeroed under a sleeper: the notify makes no wake call, and the
        // sleeper sees the notification by its timeout at the latest.
        hdr.waiters.store(0, Ordering::Relaxed);
        let seen = event.sequence();
        heap.wake_sleepers(
            1,
            || {
                event
                    .wait_since(seen, Some(Duration::from_millis(50)))
                    .is_ok()
            },
            || {
                hdr.waiters.store(0, Ordering::Relaxed);
                event.notify_one();
            },
        );
        assert_eq!(event.waiters(), u32::MAX);
    }
}
