//! [`Mapping`]: a `MAP_SHARED` mapping of a whole sealed memfd.
//!
//! # Atomic copies
//! Other threads of this process and other processes may read and write the
//! mapping at the same time as [`Mapping::read_at`] and [`Mapping::write_at`],
//! so those copy with atomic operations, never with `memcpy` (a data race on
//! non-atomic memory is undefined behaviour). Every access they make is one
//! `Relaxed` atomic operation on the aligned, pointer-sized word (8 bytes on
//! 64-bit targets) that contains the bytes: whole words in the middle of a
//! range are loaded or stored, and a word the range covers only in part is
//! loaded whole (reads) or updated with a compare-and-swap loop that keeps its
//! other bytes (writes). The access size therefore depends only on the address,
//! never on the range a caller passes, so two copies never touch the same word
//! with accesses of different sizes (std's memory model forbids racing
//! mixed-size atomic accesses, too).
//!
//! # References
//! - [mmap(2)](https://man7.org/linux/man-pages/man2/mmap.2.html)
//! - [fcntl(2), "File Sealing"](https://man7.org/linux/man-pages/man2/fcntl.2.html)
//! - [`core::sync::atomic`, "Memory model for atomic accesses" and "Atomic
//!   accesses to read-only memory"](https://doc.rust-lang.org/core/sync/atomic/index.html#memory-model-for-atomic-accesses)

use std::ffi::c_void;
use std::io;
use std::os::fd::BorrowedFd;
use std::ptr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rustix::fs::{self, SealFlags};
use rustix::mm::{self, MapFlags, ProtFlags};

use crate::Access;
use crate::memfd::REQUIRED_SEALS;

/// Why [`Mapping::map`] failed.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// `fstat` of the fd failed.
    #[error("cannot stat the memfd")]
    Stat(#[source] io::Error),
    /// The memfd has no bytes to map.
    #[error("the memfd is empty")]
    Empty,
    /// The memfd is larger than this process can map.
    #[error("the memfd's {size} bytes do not fit in this process's address space")]
    TooLarge {
        /// The memfd's size in bytes.
        size: u64,
    },
    /// Reading the seals failed (the fd is probably not a memfd).
    #[error("cannot read the seals (is the fd a memfd?)")]
    Seals(#[source] io::Error),
    /// The memfd lacks some of [`REQUIRED_SEALS`], so a peer could resize it
    /// under the mapping.
    #[error("the memfd is not sealed against resizing (seals found: {found:?})")]
    MissingSeals {
        /// The seals the memfd has.
        found: SealFlags,
    },
    /// `mmap` failed; `EACCES` when mapping a read-only fd writable.
    #[error("mmap failed")]
    Mmap(#[source] io::Error),
}

/// Why [`Mapping::read_at`] or [`Mapping::write_at`] failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// The range `offset..offset + len` is not inside the mapping.
    #[error("{len} bytes at offset {offset} are outside the {size}-byte mapping")]
    OutOfBounds {
        /// Start of the range.
        offset: usize,
        /// Length of the range.
        len: usize,
        /// Size of the mapping.
        size: usize,
    },
    /// The mapping is read-only.
    #[error("the mapping is read-only")]
    ReadOnly,
}

/// A `MAP_SHARED` mapping of a whole sealed memfd, unmapped on drop.
///
/// The memory is shared with other, untrusted processes, so this type never
/// hands out references to it: use [`read_at`](Self::read_at) and
/// [`write_at`](Self::write_at), which copy with atomic operations (see the
/// [module docs](self#atomic-copies)), or [`as_ptr`](Self::as_ptr) with
/// atomic access.
#[derive(Debug)]
pub struct Mapping {
    /// Start of the mapping, as returned by `mmap`: page aligned, so aligned
    /// for `AtomicUsize`.
    ptr: *mut c_void,
    /// Length of the memfd in bytes; never 0. The kernel maps whole pages, so
    /// the mapped range is `len` rounded up to the page size, which is a
    /// multiple of [`WORD`]: every aligned word holding a byte below `len` is
    /// mapped.
    len: usize,
    /// Whether the mapping is writable.
    access: Access,
}

// SAFETY: the mapping is owned by this value and unmapped once, in `drop`.
// The memory is addressed only through raw pointers (no references), and a
// mapping is valid in every thread of the process.
unsafe impl Send for Mapping {}

// SAFETY: `&self` methods touch the memory only with atomic operations of one
// size per address (`copy_out`, `copy_in`), so concurrent calls from several
// threads are not data races; no reference to the memory is ever formed
// outside those atomic accesses.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps all of a sealed memfd.
    ///
    /// `fstat` gives the size (must be positive and fit `usize`), the seals
    /// must contain [`REQUIRED_SEALS`], then `mmap(NULL, size, PROT_READ [|
    /// PROT_WRITE], MAP_SHARED, fd, 0)`. The fd's access mode is not
    /// pre-checked: the kernel refuses a writable mapping of a read-only fd.
    ///
    /// # Errors
    /// [`MapError::Empty`], [`MapError::TooLarge`] or
    /// [`MapError::MissingSeals`] for an unsuitable memfd, [`MapError::Mmap`]
    /// with `EACCES` when `access` is more than the fd allows, or the failing
    /// system call's error.
    pub fn map(fd: BorrowedFd<'_>, access: Access) -> Result<Self, MapError> {
        let stat = fs::fstat(fd).map_err(|err| MapError::Stat(err.into()))?;
        // A negative size cannot happen for a memfd; treat it as empty.
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        if size == 0 {
            return Err(MapError::Empty);
        }
        let len = usize::try_from(size)
            .ok()
            .filter(|&len| isize::try_from(len).is_ok())
            .ok_or(MapError::TooLarge { size })?;
        let found = fs::fcntl_get_seals(fd).map_err(|err| MapError::Seals(err.into()))?;
        if !found.contains(REQUIRED_SEALS) {
            return Err(MapError::MissingSeals { found });
        }
        let prot = match access {
            Access::Read => ProtFlags::READ,
            Access::ReadWrite => ProtFlags::READ | ProtFlags::WRITE,
        };
        // SAFETY: a null hint without MAP_FIXED lets the kernel pick an unused
        // range, so no existing memory is replaced. The memfd is sealed against
        // shrinking, so all `len` bytes stay backed for the mapping's lifetime.
        let ptr = unsafe { mm::mmap(ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0) }
            .map_err(|err| MapError::Mmap(err.into()))?;
        debug_assert!(
            ptr.cast::<AtomicUsize>().is_aligned(),
            "mmap returns page-aligned addresses"
        );
        Ok(Self { ptr, len, access })
    }

    /// Size of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: empty memfds are refused by [`map`](Self::map).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the mapping is writable.
    pub fn access(&self) -> Access {
        self.access
    }

    /// Start of the mapping, for zero-copy users.
    ///
    /// The memory is shared with other processes that may write it at any
    /// time: access it only with atomic operations, never through plain or
    /// volatile reads and writes or `&T`/`&mut T`, and never write through it
    /// if [`access`](Self::access) is [`Access::Read`] (the process would get
    /// `SIGSEGV`). [`read_at`](Self::read_at) and [`write_at`](Self::write_at)
    /// access each aligned pointer-sized word as one `AtomicUsize`; do not let
    /// them race in this process with atomic writes of another size to the same
    /// word (or with atomic reads of another size while they write).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.cast()
    }

    /// Copies `buf.len()` bytes starting at `offset` out of the mapping.
    ///
    /// The bytes are a snapshot that a peer may be changing concurrently:
    /// treat them as untrusted input. Each aligned word is read atomically,
    /// but the copy as a whole is not, and it promises no ordering with other
    /// memory operations: synchronise through your own protocol (e.g. an
    /// `Acquire` load of a flag through [`as_ptr`](Self::as_ptr) before the
    /// copy).
    ///
    /// # Errors
    /// [`AccessError::OutOfBounds`] if the range is not inside the mapping.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), AccessError> {
        let src = self.range(offset, buf.len())?;
        // SAFETY: `range` checked that `src..src + buf.len()` lies inside the
        // memfd, and the kernel mapped whole pages from the page-aligned
        // `self.ptr`, so every aligned word holding one of those bytes is
        // mapped, and stays mapped while `self` is borrowed. The mapping is at
        // least readable, and `copy_out` only loads.
        unsafe { copy_out(src, buf) };
        Ok(())
    }

    /// Copies `data` into the mapping starting at `offset`.
    ///
    /// Each aligned word is written atomically, but the copy as a whole is not,
    /// and it promises no ordering with other memory operations: publish the
    /// bytes through your own protocol (e.g. a `Release` store of a flag
    /// through [`as_ptr`](Self::as_ptr) after the copy).
    ///
    /// # Errors
    /// [`AccessError::ReadOnly`] if the mapping is read-only,
    /// [`AccessError::OutOfBounds`] if the range is not inside the mapping.
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), AccessError> {
        if self.access == Access::Read {
            return Err(AccessError::ReadOnly);
        }
        let dst = self.range(offset, data.len())?;
        // SAFETY: `range` checked that `dst..dst + data.len()` lies inside the
        // memfd, and the kernel mapped whole pages from the page-aligned
        // `self.ptr`, so every aligned word holding one of those bytes is
        // mapped, and stays mapped while `self` is borrowed. The mapping is
        // writable (checked above).
        unsafe { copy_in(data, dst) };
        Ok(())
    }

    /// The 8-byte word at `offset` as an atomic, for a protocol of one's
    /// own in a plain segment (flags, counters, sequence numbers). Any bit
    /// pattern is a valid `u64` and every access is atomic, so a peer writing
    /// meanwhile is no data race; on 64-bit targets the word has the size of
    /// the copies of [`read_at`](Self::read_at) and
    /// [`write_at`](Self::write_at), so mixing them is no mixed-size race
    /// either.
    ///
    /// # Errors
    /// [`AccessError::OutOfBounds`] outside the mapping or at an offset that
    /// is not a multiple of 8, [`AccessError::ReadOnly`] for a read-only
    /// mapping (a store would fault).
    pub fn atomic_u64(&self, offset: usize) -> Result<&AtomicU64, AccessError> {
        if self.access == Access::Read {
            return Err(AccessError::ReadOnly);
        }
        const LEN: usize = size_of::<AtomicU64>();
        let word = self.range(offset, LEN)?;
        if offset % LEN != 0 {
            return Err(AccessError::OutOfBounds {
                offset,
                len: LEN,
                size: self.len,
            });
        }
        // SAFETY: in bounds (checked), 8-aligned (a page-aligned base plus a
        // multiple of 8), valid for reads and writes while `self` lives (the
        // borrow ties the reference to it), and only ever accessed atomically
        // in this process (`Mapping` forms no other references); `AtomicU64`
        // accepts every bit pattern a peer may leave there.
        Ok(unsafe { AtomicU64::from_ptr(word.cast()) })
    }

    /// The address of `offset`, if `offset..offset + len` is inside the mapping.
    fn range(&self, offset: usize, len: usize) -> Result<*mut u8, AccessError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.as_ptr().wrapping_add(offset)),
            _ => Err(AccessError::OutOfBounds {
                offset,
                len,
                size: self.len,
            }),
        }
    }
}

/// Size and alignment of every access [`copy_out`] and [`copy_in`] make to
/// shared memory: one `AtomicUsize`, whose alignment always equals its size.
///
/// Pointer-sized rather than `u64` because std guarantees that `Relaxed`
/// atomic loads work on read-only pages only up to the pointer size on some
/// targets (4 bytes on 32-bit x86 and Arm), and read-only mappings are read
/// through [`copy_out`].
const WORD: usize = size_of::<AtomicUsize>();

/// Copies `dst.len()` bytes of shared memory, starting at `src`, into `dst`.
///
/// The words the range covers whole are loaded one by one; a word it covers
/// in part (at most the first and the last) is loaded whole and only the
/// wanted bytes are kept. Every load is a `Relaxed` atomic load of one
/// aligned [`WORD`].
///
/// # Safety
/// - Every [`WORD`]-aligned word that holds a byte of `src..src + dst.len()`
///   must be mapped (at least readable) for the whole call.
/// - Within this process, nothing may write those words concurrently other
///   than with atomic operations of [`WORD`] bytes on the same aligned words
///   (as [`copy_in`] does). Other processes are outside Rust's memory model:
///   what they write just shows up as bytes.
pub(crate) unsafe fn copy_out(src: *const u8, dst: &mut [u8]) {
    let head_len = (src.addr().wrapping_neg() % WORD).min(dst.len());
    let (head, rest) = dst.split_at_mut(head_len);
    let mut words = rest.chunks_exact_mut(WORD);
    let mut addr = src.wrapping_add(head_len);
    for chunk in &mut words {
        // SAFETY: `addr` is a multiple of `WORD`, the alignment of
        // `AtomicUsize` (the head was skipped), and its word is mapped for the
        // whole call (caller contract). If the page is read-only, only a
        // `Relaxed` load of pointer size is made through the reference, which
        // std documents as fine on read-only memory. Writers in this process
        // use `WORD`-sized atomics on this word (caller contract): no data
        // race and no mixed-size race.
        let word = unsafe { AtomicUsize::from_ptr(addr.cast_mut().cast()) };
        // ORDERING: Relaxed: the copy promises only that each word is read
        // atomically, not when or in what order other threads' or processes'
        // writes become visible; callers that need ordering synchronise
        // through their own protocol (an Acquire load before the copy).
        chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
        addr = addr.wrapping_add(WORD);
    }
    for (part, start) in [(head, src), (words.into_remainder(), addr)] {
        if part.is_empty() {
            continue;
        }
        let skip = start.addr() % WORD;
        // SAFETY: `start` rounded down to a multiple of `WORD` is aligned for
        // `AtomicUsize`, and that word holds bytes of the range, so it is
        // mapped for the whole call (caller contract). As above, only a
        // `Relaxed` pointer-sized load is made through it, and writers in
        // this process use `WORD`-sized atomics on this word.
        let word = unsafe { AtomicUsize::from_ptr(start.wrapping_sub(skip).cast_mut().cast()) };
        // ORDERING: Relaxed, as for whole words: no ordering is promised.
        let bytes = word.load(Ordering::Relaxed).to_ne_bytes();
        part.copy_from_slice(&bytes[skip..skip + part.len()]);
    }
}

/// Copies `src` into shared memory starting at `dst`.
///
/// A word the range covers whole is written with one `Relaxed` atomic store;
/// a word it covers in part (at most the first and the last) is updated with a
/// `Relaxed` compare-and-swap loop that keeps the word's other bytes, so a
/// concurrent write to those bytes is not lost. The loop retries only when
/// another thread or process wrote the same word in between.
///
/// # Safety
/// - Every [`WORD`]-aligned word that holds a byte of `dst..dst + src.len()`
///   must be mapped readable and writable for the whole call.
/// - Within this process, nothing may access those words concurrently other
///   than with atomic operations of [`WORD`] bytes on the same aligned words
///   (as [`copy_out`] and `copy_in` do). Other processes are outside Rust's
///   memory model: their accesses just race with these in the hardware.
pub(crate) unsafe fn copy_in(src: &[u8], dst: *mut u8) {
    let head_len = (dst.addr().wrapping_neg() % WORD).min(src.len());
    let (head, rest) = src.split_at(head_len);
    let mut words = rest.chunks_exact(WORD);
    let mut addr = dst.wrapping_add(head_len);
    for chunk in &mut words {
        let value = usize::from_ne_bytes(chunk.try_into().expect("chunks are WORD bytes"));
        // SAFETY: `addr` is a multiple of `WORD`, the alignment of
        // `AtomicUsize` (the head was skipped), and its word is mapped
        // readable and writable for the whole call (caller contract). Every
        // other access in this process to the word is a `WORD`-sized atomic
        // (caller contract): no data race and no mixed-size race.
        let word = unsafe { AtomicUsize::from_ptr(addr.cast()) };
        // ORDERING: Relaxed: the copy promises only that each word is written
        // atomically, not when or in what order it becomes visible; callers
        // that need ordering publish through their own protocol (a Release
        // store after the copy).
        word.store(value, Ordering::Relaxed);
        addr = addr.wrapping_add(WORD);
    }
    for (part, start) in [(head, dst), (words.remainder(), addr)] {
        if part.is_empty() {
            continue;
        }
        let skip = start.addr() % WORD;
        let mut bytes = [0; WORD];
        bytes[skip..skip + part.len()].copy_from_slice(part);
        let mut keep = [u8::MAX; WORD];
        keep[skip..skip + part.len()].fill(0);
        let (bytes, keep) = (usize::from_ne_bytes(bytes), usize::from_ne_bytes(keep));
        // SAFETY: `start` rounded down to a multiple of `WORD` is aligned for
        // `AtomicUsize`, and that word holds bytes of the range, so it is
        // mapped readable and writable for the whole call (caller contract).
        // Every other access in this process to the word is a `WORD`-sized
        // atomic (caller contract).
        let word = unsafe { AtomicUsize::from_ptr(start.wrapping_sub(skip).cast()) };
        // ORDERING: Relaxed on success and failure: as for whole words, no
        // ordering is promised; the read-modify-write only has to keep the
        // word's other bytes, which its atomicity alone guarantees.
        let update = word.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            Some(old & keep | bytes)
        });
        debug_assert!(update.is_ok(), "the update closure never gives up");
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` describe a mapping created by `map` and owned
        // by `self`; no reference into it exists, and it is unmapped only here.
        let result = unsafe { mm::munmap(self.ptr, self.len) };
        debug_assert!(
            result.is_ok(),
            "munmap of an owned mapping failed: {result:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use rustix::fs::{MemfdFlags, memfd_create};
    use rustix::io::Errno;

    use super::*;
    use crate::memfd::{create_sealed, reopen};

    #[test]
    fn map_gives_the_whole_memfd() {
        let fd = create_sealed("test", 12288).unwrap();

        let sut = Mapping::map(fd.as_fd(), Access::ReadWrite).unwrap();

        assert_eq!(sut.len(), 12288);
        assert!(!sut.is_empty());
        assert_eq!(sut.access(), Access::ReadWrite);
        assert!(!sut.as_ptr().is_null());
    }

    #[test]
    fn map_refuses_unsealed_memfd() {
        let fd = memfd_create("test", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        fs::ftruncate(&fd, 4096).unwrap();
        fs::fcntl_add_seals(&fd, SealFlags::SHRINK).unwrap();

        let err = Mapping::map(fd.as_fd(), Access::Read).unwrap_err();

        assert!(
            matches!(err, MapError::MissingSeals { found } if found == SealFlags::SHRINK),
            "{err:?}"
        );
    }

    #[test]
    fn map_refuses_empty_memfd() {
        let fd = memfd_create("test", MemfdFlags::CLOEXEC).unwrap();

        let err = Mapping::map(fd.as_fd(), Access::Read).unwrap_err();

        assert!(matches!(err, MapError::Empty), "{err:?}");
    }

    #[test]
    fn map_refuses_read_only_fd_for_read_write_with_eacces() {
        let fd = create_sealed("test", 4096).unwrap();
        let read_only = reopen(fd.as_fd(), Access::Read).unwrap();

        let err = Mapping::map(read_only.as_fd(), Access::ReadWrite).unwrap_err();

        match err {
            MapError::Mmap(io) => assert_eq!(io.raw_os_error(), Some(Errno::ACCESS.raw_os_error())),
            other => panic!("expected Mmap(EACCES), got {other:?}"),
        }
    }

    #[test]
    fn read_only_mapping_sees_writes_of_a_read_write_mapping() {
        let fd = create_sealed("test", 4096).unwrap();
        let writer = Mapping::map(fd.as_fd(), Access::ReadWrite).unwrap();
        let read_only = reopen(fd.as_fd(), Access::Read).unwrap();
        let sut = Mapping::map(read_only.as_fd(), Access::Read).unwrap();

        writer.write_at(4090, b"abcdef").unwrap();
        let mut buf = [0; 6];
        sut.read_at(4090, &mut buf).unwrap();

        assert_eq!(&buf, b"abcdef");
    }

    #[test]
    fn write_at_refuses_read_only_mapping() {
        let fd = create_sealed("test", 4096).unwrap();
        let sut = Mapping::map(fd.as_fd(), Access::Read).unwrap();

        assert_eq!(sut.write_at(0, b"x"), Err(AccessError::ReadOnly));
    }

    #[test]
    fn atomic_words_are_shared_bounds_checked_and_writable_only() {
        let fd = create_sealed("atomic", 4096).unwrap();
        let one = Mapping::map(fd.as_fd(), Access::ReadWrite).unwrap();
        let two = Mapping::map(fd.as_fd(), Access::ReadWrite).unwrap();
        one.atomic_u64(8).unwrap().store(42, Ordering::Relaxed);
        assert_eq!(two.atomic_u64(8).unwrap().load(Ordering::Relaxed), 42);
        let mut bytes = [0; 8];
        two.read_at(8, &mut bytes).unwrap();
        assert_eq!(u64::from_ne_bytes(bytes), 42);
        assert!(one.atomic_u64(4).is_err(), "unaligned");
        assert!(one.atomic_u64(4096).is_err(), "past the end");
        let read_only = reopen(fd.as_fd(), Access::Read).unwrap();
        let reader = Mapping::map(read_only.as_fd(), Access::Read).unwrap();
        assert_eq!(reader.atomic_u64(0).map(|_| ()), Err(AccessError::ReadOnly));
    }

    #[test]
    fn read_at_and_write_at_check_bounds() {
        let fd = create_sealed("test", 4096).unwrap();
        let sut = Mapping::map(fd.as_fd(), Access::ReadWrite).unwrap();
        let mut buf = [0; 2];

        assert_eq!(
            sut.read_at(4095, &mut buf),
            Err(AccessError::OutOfBounds {
                offset: 4095,
                len: 2,
                size: 4096
            })
        );
        assert_eq!(
            sut.write_at(usize::MAX, b"xy"),
            Err(AccessError::OutOfBounds {
                offset: usize::MAX,
                len: 2,
                size: 4096
            })
        );
        assert_eq!(sut.read_at(4096, &mut []), Ok(()));
        assert_eq!(sut.write_at(4094, b"xy"), Ok(()));
        assert_eq!(sut.read_at(4094, &mut buf), Ok(()));
        assert_eq!(&buf, b"xy");
    }

    #[test]
    fn mapping_outlives_the_fd_it_was_made_from() {
        let fd = create_sealed("test", 4096).unwrap();
        let sut = Mapping::map(fd.as_fd(), Access::ReadWrite).unwrap();
        drop(fd);

        sut.write_at(0, b"still here").unwrap();
        let mut buf = [0; 10];
        sut.read_at(0, &mut buf).unwrap();

        assert_eq!(&buf, b"still here");
    }

    #[test]
    fn copies_of_every_alignment_and_length_match_a_plain_buffer() {
        let fd = create_sealed("test", 4096).unwrap();
        let sut = Mapping::map(fd.as_fd(), Access::ReadWrite).unwrap();
        let mut model = vec![0_u8; 64];
        sut.write_at(0, &model).unwrap();

        for offset in 0..2 * WORD {
            for len in 0..4 * WORD {
                let data: Vec<u8> = (0..len)
                    .map(|i| (offset * 31 + len * 7 + i) as u8)
                    .collect();
                sut.write_at(offset, &data).unwrap();
                model[offset..offset + len].copy_from_slice(&data);

                let mut whole = [0; 64];
                sut.read_at(0, &mut whole).unwrap();
                assert_eq!(
                    whole[..],
                    model[..],
                    "after writing {len} bytes at {offset}"
                );
                let mut part = vec![0; len];
                sut.read_at(offset, &mut part).unwrap();
                assert_eq!(part, data, "reading {len} bytes at {offset}");
            }
        }
    }

    #[test]
    fn copies_reach_the_last_byte_of_a_memfd_whose_size_is_not_a_word_multiple() {
        let fd = create_sealed("test", 4099).unwrap();
        let sut = Mapping::map(fd.as_fd(), Access::ReadWrite).unwrap();

        sut.write_at(4093, b"abcdef").unwrap();
        let mut buf = [0; 7];
        sut.read_at(4092, &mut buf).unwrap();

        assert_eq!(&buf, b"\0abcdef");
    }

    #[test]
    fn concurrent_overlapping_copies_see_only_written_bytes() {
        const A: u8 = 0xA5;
        const B: u8 = 0x5A;
        let fd = create_sealed("test", 8192).unwrap();
        let sut = Mapping::map(fd.as_fd(), Access::ReadWrite).unwrap();
        // Ranges that overlap and end inside different words, so whole-word
        // stores, partial-word updates and loads of both kinds meet.
        let (a_range, b_range) = (3..2051, 1..2045);
        sut.write_at(0, &[A; 2100]).unwrap();

        std::thread::scope(|scope| {
            for (value, write, read) in [(A, &a_range, &b_range), (B, &b_range, &a_range)] {
                let sut = &sut;
                scope.spawn(move || {
                    let data = vec![value; write.len()];
                    let mut buf = vec![0; read.len()];
                    for _ in 0..2000 {
                        sut.write_at(write.start, &data).unwrap();
                        sut.read_at(read.start, &mut buf).unwrap();
                        assert!(buf.iter().all(|&byte| byte == A || byte == B), "{buf:x?}");
                    }
                });
            }
        });
        let mut around = [0; 2100];
        sut.read_at(0, &mut around).unwrap();
        assert!(around.iter().all(|&byte| byte == A || byte == B));
    }

    #[test]
    fn concurrent_writes_to_neighbouring_bytes_of_a_word_keep_each_other() {
        let fd = create_sealed("test", 4096).unwrap();
        let sut = Mapping::map(fd.as_fd(), Access::ReadWrite).unwrap();

        std::thread::scope(|scope| {
            // Two writers share the word at 0 (and 8 on 32-bit targets).
            for (offset, len) in [(0, 3), (3, WORD)] {
                let sut = &sut;
                scope.spawn(move || {
                    let mut buf = vec![0; len];
                    for round in 1..=5000_u32 {
                        let data = vec![round as u8 | 1; len];
                        sut.write_at(offset, &data).unwrap();
                        sut.read_at(offset, &mut buf).unwrap();
                        assert_eq!(buf, data, "a neighbour's write undid bytes at {offset}");
                    }
                });
            }
        });
    }

    #[test]
    fn mapping_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Mapping>();
    }
}
