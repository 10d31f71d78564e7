//! What the futex-based primitives, [`semaphore`](crate::semaphore) and
//! [`event`](crate::event), share: the [`Header`] at the start of their
//! region, its checks, and a [`Handle`] that attaches to it, keeps its
//! mapping alive and waits and wakes on its futex word.
//!
//! # Kinds
//! Both kinds have the same header; only the magic (first word) tells them
//! apart, so a semaphore never attaches to an event region or the reverse.
//! Each kind gives the futex word its meaning (a semaphore's `count`, an
//! event's `seq`) and its operations.
//!
//! # Waiting and waking
//! A waiter re-reads the futex word a little, then increments `waiters`,
//! re-checks the word and `FUTEX_WAIT`s on it while it holds the expected
//! value; it decrements `waiters` when done ([`Handle::wait`]). A waker
//! updates the word (each kind its own way), then makes a `FUTEX_WAKE` only
//! if `waiters` is not 0 ([`Handle::wake`]), so waking nobody costs no system
//! call. The two sides are a store-buffering pair: the waker updates the
//! word then reads `waiters`, the waiter updates `waiters` then reads the
//! word, all `SeqCst`, so at least one sees the other's update: the waiter
//! does not sleep, or the waker wakes it (and the kernel's own check of the
//! word covers a waiter that is between its check and its sleep).
//!
//! # Untrusted peer
//! `waiters` is only a hint: a value too high costs wakers a wake system
//! call, a value too low can delay a sleeper until its timeout; no value
//! makes this side panic, wrap arithmetic or overrun a timeout.

use std::hint;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Access;
use crate::futex::{self, FutexError, Wait};
use crate::mapping::Mapping;
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// Version of the layout described on [`Header`]; bumped on any change to
/// the header.
pub const LAYOUT_VERSION: u32 = 1;

/// Size of the [`Header`] at the start of a region, in bytes.
pub const HEADER_SIZE: usize = size_of::<Header>();

/// [`HEADER_SIZE`] as stored in the header.
const HEADER_SIZE_U32: u32 = 256;

/// How many times a waiter re-reads the futex word before it sleeps: a few
/// microseconds, about the cost of a futex round trip.
const SPIN_LIMIT: u32 = 100;

/// The header at the start of a semaphore or event region.
///
/// A region of at least [`HEADER_SIZE`] (256) bytes, 8-byte aligned, holds
/// it. Its first 128-byte line is the configuration (the kind's magic,
/// layout version, header size), written once by the kind's `init`. The hot
/// words, the futex word (a semaphore's `count`, an event's `seq`) and
/// `waiters` (both `u32`, native byte order, the futex word first), share
/// the second line, alone (when the region is 128-byte aligned, as a mapping
/// is), so they do not false-share with the configuration or with what
/// follows the header.
///
/// Every field is an atomic, padding included, so a `&Header` into shared
/// memory only ever reads and writes through atomics, which a peer may race
/// with without undefined behaviour in this process.
#[repr(C)]
#[derive(Debug)]
pub struct Header {
    /// The kind's magic once `init` is done.
    pub(crate) magic: AtomicU64,
    /// [`LAYOUT_VERSION`].
    pub(crate) version: AtomicU32,
    /// [`HEADER_SIZE`], so a reader can tell a header of another size.
    pub(crate) header_size: AtomicU32,
    /// Rest of the configuration line.
    _config_pad: [AtomicU64; 14],
    /// The futex word sleepers wait on; its meaning is the kind's.
    pub(crate) word: AtomicU32,
    /// How many waiters are (about to be) asleep: a hint for wakers.
    pub(crate) waiters: AtomicU32,
    /// Rest of the hot line.
    _hot_pad: [AtomicU64; 15],
}

// The layout is frozen: peers built from other versions of this crate read it.
const _: () = {
    assert!(size_of::<Header>() == 256);
    assert!(align_of::<Header>() == 8);
    assert!(std::mem::offset_of!(Header, magic) == 0);
    assert!(std::mem::offset_of!(Header, version) == 8);
    assert!(std::mem::offset_of!(Header, header_size) == 12);
    assert!(std::mem::offset_of!(Header, word) == 128);
    assert!(std::mem::offset_of!(Header, waiters) == 132);
    assert!(HEADER_SIZE_U32 as usize == HEADER_SIZE);
};

/// Why a region cannot hold or does not hold a valid semaphore or event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The region is not aligned to 8 bytes.
    #[error("the region is not 8-byte aligned")]
    Misaligned,
    /// The region is smaller than the header.
    #[error("the region has {len} bytes, the header needs {needed}")]
    RegionTooSmall {
        /// Bytes the header needs.
        needed: usize,
        /// Bytes the region has.
        len: usize,
    },
    /// The region does not start with the kind's magic (not initialised, or
    /// of another kind).
    #[error("bad magic {found:#018x}")]
    Magic {
        /// The word found.
        found: u64,
    },
    /// The header is of another layout version or size.
    #[error("layout version {version} with a {header_size}-byte header is not supported")]
    Version {
        /// The version found.
        version: u32,
        /// The header size found.
        header_size: u32,
    },
    /// The mapping is read-only; every operation writes the header.
    #[error("the mapping is read-only")]
    ReadOnly,
}

/// The header of `ptr..ptr + len`, if it is aligned and fits.
fn header_at(ptr: NonNull<u8>, len: usize) -> Result<NonNull<Header>, LayoutError> {
    let header = ptr.cast::<Header>();
    if !header.is_aligned() {
        return Err(LayoutError::Misaligned);
    }
    if len < HEADER_SIZE {
        return Err(LayoutError::RegionTooSmall {
            needed: HEADER_SIZE,
            len,
        });
    }
    Ok(header)
}

/// Writes a fresh header of the kind `magic`, with `word` in the futex word
/// and no waiters.
///
/// The configuration is written first and `magic` last, with `Release`, so
/// an attach that sees the magic sees the rest.
///
/// # Errors
/// [`LayoutError::Misaligned`] or [`LayoutError::RegionTooSmall`].
///
/// # Safety
/// - `ptr..ptr + len` must be valid for reads and writes for the whole call.
/// - Within this process, nothing may access the header's bytes concurrently
///   other than through the kinds' modules (atomics of the same sizes at the
///   same addresses); no `&`/`&mut` reference to them may be alive.
pub(crate) unsafe fn init(
    ptr: NonNull<u8>,
    len: usize,
    magic: u64,
    word: u32,
) -> Result<(), LayoutError> {
    let header = header_at(ptr, len)?;
    // SAFETY: aligned and in bounds (checked), valid for the call and
    // accessed only atomically (caller contract); `Header` is all atomics.
    let hdr = unsafe { header.as_ref() };
    // ORDERING: Relaxed for the configuration and the hot words: published
    // by the Release store of `magic` below.
    hdr.magic.store(0, Ordering::Relaxed);
    hdr.version.store(LAYOUT_VERSION, Ordering::Relaxed);
    hdr.header_size.store(HEADER_SIZE_U32, Ordering::Relaxed);
    hdr.word.store(word, Ordering::Relaxed);
    hdr.waiters.store(0, Ordering::Relaxed);
    // ORDERING: Release; pairs with the Acquire load of `magic` in
    // `Handle::attach`, publishing the stores above.
    hdr.magic.store(magic, Ordering::Release);
    Ok(())
}

/// [`init`] over the start of a read-write mapping.
///
/// # Errors
/// [`LayoutError::ReadOnly`], or [`LayoutError::RegionTooSmall`] for a
/// mapping shorter than [`HEADER_SIZE`].
pub(crate) fn init_mapping(mapping: &Mapping, magic: u64, word: u32) -> Result<(), LayoutError> {
    let ptr = writable_start(mapping)?;
    // SAFETY: the mapping is valid for reads and writes (checked writable)
    // for its whole length while borrowed, and is only ever accessed
    // atomically (see the kinds' `from_mapping` for the one caveat).
    unsafe { init(ptr, mapping.len(), magic, word) }
}

/// The start of `mapping`, if it is writable.
fn writable_start(mapping: &Mapping) -> Result<NonNull<u8>, LayoutError> {
    if mapping.access() != Access::ReadWrite {
        return Err(LayoutError::ReadOnly);
    }
    // A mapping is never at address 0; the error is unreachable in practice.
    NonNull::new(mapping.as_ptr()).ok_or(LayoutError::Misaligned)
}

/// A checked header of some kind, which a semaphore or event handle wraps.
#[derive(Debug)]
pub(crate) struct Handle {
    header: NonNull<Header>,
    /// Keeps the memory mapped when built by [`from_mapping`](Self::from_mapping).
    _mapping: Option<Arc<Mapping>>,
}

// SAFETY: the handle only holds a pointer to a header that stays valid for
// its lifetime (contract of `attach`, or the `Arc<Mapping>` it owns), in any
// thread, and touches it only through atomics.
unsafe impl Send for Handle {}

// SAFETY: every `&self` method accesses the header only through atomics, so
// concurrent calls from several threads are not data races.
unsafe impl Sync for Handle {}

impl Handle {
    /// Attaches to a region initialised with the kind `magic` after checking
    /// its alignment, size and header.
    ///
    /// # Errors
    /// A [`LayoutError`] naming the first check that failed.
    ///
    /// # Safety
    /// - `ptr..ptr + len` must be valid for reads and writes (allocated, or
    ///   mapped read-write) until the returned handle is dropped.
    /// - Within this process, while the handle lives, nothing may access the
    ///   header's bytes other than handles and atomic operations of the same
    ///   size at the same addresses; no `&`/`&mut` reference to them may be
    ///   alive. Other processes may write anything: that is handled.
    pub(crate) unsafe fn attach(
        ptr: NonNull<u8>,
        len: usize,
        magic: u64,
    ) -> Result<Self, LayoutError> {
        let header = header_at(ptr, len)?;
        // SAFETY: aligned and in bounds (checked), valid for the handle's
        // lifetime and accessed only atomically (caller contract); `Header`
        // is all atomics, so any bytes a peer wrote are a valid value.
        let hdr = unsafe { header.as_ref() };
        // ORDERING: Acquire; pairs with the Release store of `magic` in
        // `init`, so the configuration written before it is visible here.
        let found = hdr.magic.load(Ordering::Acquire);
        if found != magic {
            return Err(LayoutError::Magic { found });
        }
        // ORDERING: Relaxed for the configuration: ordered by the Acquire
        // load of `magic` above.
        let version = hdr.version.load(Ordering::Relaxed);
        let header_size = hdr.header_size.load(Ordering::Relaxed);
        if version != LAYOUT_VERSION || header_size != HEADER_SIZE_U32 {
            return Err(LayoutError::Version {
                version,
                header_size,
            });
        }
        Ok(Self {
            header,
            _mapping: None,
        })
    }

    /// Attaches to the header of the kind `magic` at the start of a
    /// read-write mapping, keeping the mapping alive as long as the handle.
    ///
    /// # Errors
    /// [`LayoutError::ReadOnly`], or what [`attach`](Self::attach) reports.
    pub(crate) fn from_mapping(mapping: Arc<Mapping>, magic: u64) -> Result<Self, LayoutError> {
        let ptr = writable_start(&mapping)?;
        // SAFETY: the mapping is valid for reads and writes (checked
        // writable) for its whole length while the `Arc` we store lives, and
        // is only ever accessed atomically (see the kinds' `from_mapping` for
        // the one caveat).
        let Self { header, .. } = unsafe { Self::attach(ptr, mapping.len(), magic) }?;
        Ok(Self {
            header,
            _mapping: Some(mapping),
        })
    }

    /// The futex word, for the kind's own operations.
    pub(crate) fn word(&self) -> &AtomicU32 {
        &self.header().word
    }

    /// How many waiters are asleep or about to be: a hint, which a peer may
    /// have overwritten.
    pub(crate) fn waiters(&self) -> u32 {
        // ORDERING: Relaxed; a snapshot that orders nothing.
        self.header().waiters.load(Ordering::Relaxed)
    }

    /// Waits up to `timeout` (`None`: forever) until `done` accepts a value
    /// of the futex word: re-reads it a little, then sleeps registered in
    /// `waiters` while it holds `expected`. Returns whether `done` accepted
    /// one (`false`: timed out). A signal does not end the wait.
    ///
    /// `done` may act on the value (a semaphore takes a unit by
    /// compare-and-swap). A woken or timed-out sleeper always calls it once
    /// more, so a wake it consumed is never lost while others sleep.
    ///
    /// # Errors
    /// The [`FutexError`] if the kernel refused to let the thread sleep.
    pub(crate) fn wait(
        &self,
        expected: u32,
        timeout: Option<Duration>,
        mut done: impl FnMut(u32) -> bool,
    ) -> Result<bool, FutexError> {
        // A timeout too long for the clock is no timeout.
        let deadline = timeout.and_then(|timeout| Instant::now().checked_add(timeout));
        let hdr = self.header();
        for _ in 0..SPIN_LIMIT {
            // ORDERING: Acquire; pairs with the waker's SeqCst (so Release)
            // update of the word (`Semaphore::release_n`, `Event::notify`),
            // so what it wrote before is visible once `done` accepts.
            if done(hdr.word.load(Ordering::Acquire)) {
                return Ok(true);
            }
            hint::spin_loop();
        }
        // ORDERING: SeqCst; the waiter's store of the store-buffering pair:
        // pairs with the SeqCst load of `waiters` in `wake`, which sees this
        // increment, or the SeqCst loads of the word in `sleep` see the
        // update the waker made before that load.
        hdr.waiters.fetch_add(1, Ordering::SeqCst);
        let result = Self::sleep(&hdr.word, expected, deadline, done);
        // ORDERING: Relaxed; `waiters` is only a hint, and a late decrement
        // only costs a waker a wake system call. Wraps (never panics) if a
        // peer zeroed it meanwhile.
        hdr.waiters.fetch_sub(1, Ordering::Relaxed);
        result
    }

    /// The waker's side, after its `SeqCst` update of the futex word: wakes
    /// up to `count` sleepers if any are registered, with no system call
    /// otherwise.
    pub(crate) fn wake(&self, count: u32) {
        let hdr = self.header();
        // ORDERING: SeqCst; the waker's load of the store-buffering pair:
        // pairs with the SeqCst increment of `waiters` in `wait`, against
        // the caller's SeqCst update of the word before this call.
        if hdr.waiters.load(Ordering::SeqCst) != 0 {
            futex::wake(&hdr.word, count);
        }
    }

    fn header(&self) -> &Header {
        // SAFETY: checked aligned and in bounds by `attach`; valid for the
        // handle's lifetime (contract of `attach`, or the owned mapping);
        // made only of atomics.
        unsafe { self.header.as_ref() }
    }

    /// Sleeps on `word` while it holds `expected`, until `done` accepts a
    /// value of it or `deadline` passes; the caller is registered in
    /// `waiters`.
    fn sleep(
        word: &AtomicU32,
        expected: u32,
        deadline: Option<Instant>,
        mut done: impl FnMut(u32) -> bool,
    ) -> Result<bool, FutexError> {
        let mut timed_out = false;
        loop {
            // ORDERING: SeqCst; the waiter's load of the store-buffering
            // pair: pairs with the waker's SeqCst update of the word
            // (`Semaphore::release_n`, `Event::notify`), against the SeqCst
            // increment of `waiters` in `wait`. Its Acquire half also makes
            // what the waker wrote before visible once `done` accepts.
            if done(word.load(Ordering::SeqCst)) {
                return Ok(true);
            }
            if timed_out {
                return Ok(false);
            }
            timed_out = futex::wait_until(word, expected, deadline)? == Wait::TimedOut;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::fd::AsFd;
    use std::thread;

    use super::*;
    use crate::event::{self, Event};
    use crate::memfd;
    use crate::semaphore::{self, Semaphore};

    /// Long enough never to expire in a passing test, short enough to end a
    /// failing one.
    pub(crate) const LONG: Duration = Duration::from_secs(10);

    /// A heap region holding a header, 8-byte aligned, for the kinds' tests.
    #[derive(Debug)]
    pub(crate) struct Heap {
        /// Owns the buffer; accessed only through `ptr`.
        _words: Vec<u64>,
        pub(crate) ptr: NonNull<u8>,
    }

    impl Heap {
        /// A fresh header of the kind `magic` with `word` in the futex word.
        pub(crate) fn new(magic: u64, word: u32) -> Self {
            let mut words = vec![0_u64; HEADER_SIZE / 8];
            let ptr = NonNull::new(words.as_mut_ptr().cast()).unwrap();
            // SAFETY: the buffer is ours, valid, and only accessed through
            // handles and atomics while the test runs.
            unsafe { init(ptr, HEADER_SIZE, magic, word) }.unwrap();
            Self { _words: words, ptr }
        }

        /// A handle built by a kind's `attach`, which must succeed.
        pub(crate) fn attach<T>(
            &self,
            attach: unsafe fn(NonNull<u8>, usize) -> Result<T, LayoutError>,
        ) -> T {
            // SAFETY: the heap outlives the handle in every test, and is
            // accessed only through handles and atomics.
            unsafe { attach(self.ptr, HEADER_SIZE) }.unwrap()
        }

        /// The header, as a hostile peer sees it.
        pub(crate) fn header(&self) -> &Header {
            // SAFETY: aligned, in bounds, all atomics.
            unsafe { self.ptr.cast::<Header>().as_ref() }
        }

        /// Yields until `n` waiters are registered.
        pub(crate) fn wait_for_waiters(&self, n: u32) {
            while self.header().waiters.load(Ordering::Relaxed) != n {
                thread::yield_now();
            }
        }

        /// Starts `n` threads running `sleep`, waits until `n` waiters are
        /// registered, checks that none has returned, runs `wake`, and checks
        /// that every `sleep` returned `true`.
        pub(crate) fn wake_sleepers(
            &self,
            n: u32,
            sleep: impl Fn() -> bool + Sync,
            wake: impl FnOnce(),
        ) {
            thread::scope(|s| {
                let sleepers: Vec<_> = (0..n).map(|_| s.spawn(&sleep)).collect();
                self.wait_for_waiters(n);
                assert!(sleepers.iter().all(|sleeper| !sleeper.is_finished()));
                wake();
                for sleeper in sleepers {
                    assert!(sleeper.join().unwrap());
                }
            });
        }
    }

    #[test]
    fn attach_refuses_bad_headers_and_regions() {
        let heap = Heap::new(semaphore::MAGIC, 1);
        let attach = |len| {
            // SAFETY: in bounds of the heap, which outlives the call.
            unsafe { Handle::attach(heap.ptr, len, semaphore::MAGIC) }.map(|_| ())
        };
        assert_eq!(
            attach(HEADER_SIZE - 1),
            Err(LayoutError::RegionTooSmall {
                needed: HEADER_SIZE,
                len: HEADER_SIZE - 1
            })
        );
        let misaligned = NonNull::new(heap.ptr.as_ptr().wrapping_add(4)).unwrap();
        assert_eq!(
            // SAFETY: in bounds; refused before any access.
            unsafe { Handle::attach(misaligned, HEADER_SIZE - 4, semaphore::MAGIC) }.map(|_| ()),
            Err(LayoutError::Misaligned)
        );
        assert_eq!(
            // SAFETY: as above.
            unsafe { init(misaligned, HEADER_SIZE - 4, semaphore::MAGIC, 0) },
            Err(LayoutError::Misaligned)
        );

        let hdr = heap.header();
        hdr.version.store(2, Ordering::Relaxed);
        assert_eq!(
            attach(HEADER_SIZE),
            Err(LayoutError::Version {
                version: 2,
                header_size: 256
            })
        );
        hdr.version.store(LAYOUT_VERSION, Ordering::Relaxed);
        hdr.header_size.store(0, Ordering::Relaxed);
        assert_eq!(
            attach(HEADER_SIZE),
            Err(LayoutError::Version {
                version: LAYOUT_VERSION,
                header_size: 0
            })
        );
        hdr.header_size.store(HEADER_SIZE_U32, Ordering::Relaxed);
        hdr.magic.store(crate::ring::MAGIC, Ordering::Relaxed);
        assert_eq!(
            attach(HEADER_SIZE),
            Err(LayoutError::Magic {
                found: crate::ring::MAGIC
            })
        );
        hdr.magic.store(semaphore::MAGIC, Ordering::Relaxed);
        assert_eq!(attach(HEADER_SIZE), Ok(()));
    }

    #[test]
    fn mappings_must_be_writable_and_large_enough() {
        let fd = memfd::create_sealed("primitive", 4096).unwrap();
        let writable = Arc::new(Mapping::map(fd.as_fd(), Access::ReadWrite).unwrap());
        assert!(matches!(
            Handle::from_mapping(Arc::clone(&writable), event::MAGIC),
            Err(LayoutError::Magic { found: 0 })
        ));
        init_mapping(&writable, event::MAGIC, 0).unwrap();
        let handle = Handle::from_mapping(writable, event::MAGIC).unwrap();
        assert_eq!(handle.waiters(), 0);

        let read_only_fd = memfd::reopen(fd.as_fd(), Access::Read).unwrap();
        let read_only = Arc::new(Mapping::map(read_only_fd.as_fd(), Access::Read).unwrap());
        assert_eq!(
            init_mapping(&read_only, event::MAGIC, 0),
            Err(LayoutError::ReadOnly)
        );
        assert!(matches!(
            Handle::from_mapping(read_only, event::MAGIC),
            Err(LayoutError::ReadOnly)
        ));

        let small_fd = memfd::create_sealed("primitive", 128).unwrap();
        let small = Arc::new(Mapping::map(small_fd.as_fd(), Access::ReadWrite).unwrap());
        let too_small = LayoutError::RegionTooSmall {
            needed: HEADER_SIZE,
            len: small.len(),
        };
        assert_eq!(
            init_mapping(&small, event::MAGIC, 0),
            Err(too_small.clone())
        );
        assert_eq!(
            Handle::from_mapping(small, event::MAGIC).map(|_| ()),
            Err(too_small)
        );
    }

    #[test]
    fn each_kind_attaches_only_to_its_own_header() {
        fn shared_between_threads<T: Send + Sync>(_: &T) {}

        let fd = memfd::create_sealed("primitive", 4096).unwrap();
        let mapping = Arc::new(Mapping::map(fd.as_fd(), Access::ReadWrite).unwrap());
        semaphore::init_mapping(&mapping, 1).unwrap();
        assert!(matches!(
            Event::from_mapping(Arc::clone(&mapping)),
            Err(event::LayoutError::Magic {
                found: semaphore::MAGIC
            })
        ));
        let sem = Semaphore::from_mapping(Arc::clone(&mapping)).unwrap();
        shared_between_threads(&sem);
        assert!(sem.try_acquire());
        drop(sem);

        event::init_mapping(&mapping).unwrap();
        assert!(matches!(
            Semaphore::from_mapping(Arc::clone(&mapping)),
            Err(semaphore::LayoutError::Magic {
                found: event::MAGIC
            })
        ));
        let event = Event::from_mapping(mapping).unwrap();
        shared_between_threads(&event);
        event.notify_all();
        assert_eq!(event.sequence(), 1);
    }

    #[test]
    fn wait_times_out_and_leaves_no_waiter() {
        let heap = Heap::new(event::MAGIC, 7);
        let handle = heap.attach(|ptr, len| {
            // SAFETY: the contract of `Heap::attach` is `Handle::attach`'s.
            unsafe { Handle::attach(ptr, len, event::MAGIC) }
        });
        let mut seen = Vec::new();
        let timeout = Duration::from_millis(20);
        let start = Instant::now();
        let done = handle
            .wait(7, Some(timeout), |word| {
                seen.push(word);
                false
            })
            .unwrap();
        assert!(!done);
        assert!(start.elapsed() >= timeout);
        // Every spin, every sleep's check, and one last check after the
        // timeout.
        assert!(seen.len() > SPIN_LIMIT as usize && seen.iter().all(|&word| word == 7));
        assert_eq!(handle.waiters(), 0);
        assert!(handle.wait(7, None, |word| word == 7).unwrap());
    }
}
