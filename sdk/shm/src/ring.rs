//! The SPSC ring protocol for variable-size messages over a raw memory region.
//!
//! This module is only the protocol: one [`Producer`] and one [`Consumer`]
//! exchange byte messages through a region that starts with a [`Header`] and
//! continues with `capacity` bytes of records. It makes no system call and
//! never waits; a wake strategy and the SDK wrapper over a
//! [`Mapping`](crate::mapping::Mapping) come later. The region is given as a
//! raw pointer and a length, so tests can use a heap buffer.
//!
//! # Layout
//! - Bytes `0..HEADER_SIZE` ([`HEADER_SIZE`] = 384): the [`Header`]. Its first
//!   128-byte line holds the configuration (magic, layout version, header
//!   size, capacity, max message size), written once by [`init`]. The
//!   producer index `head` is alone on the second line, the consumer index
//!   `tail` alone on the third (when the region is 128-byte aligned, as a
//!   mapping is), so the two sides do not false-share.
//! - Bytes `HEADER_SIZE..HEADER_SIZE + capacity`: the records, `capacity` a
//!   power of two. `head` and `tail` are byte positions that only grow; a
//!   position's offset in the records is `position & (capacity - 1)`.
//! - A record starts at an 8-byte aligned offset: an 8-byte record header
//!   (`u32` payload length in native byte order, then 4 unused bytes), the
//!   payload, then padding to the next multiple of 8. A record never crosses
//!   the end of the records: when it does not fit before the end, the
//!   producer writes a wrap marker (length [`u32::MAX`]) and puts the record
//!   at offset 0.
//! - A record of the largest message takes at most half the capacity, so an
//!   empty ring always has room for the next record, wrap included.
//!
//! # Protocol
//! The producer writes a record into free space (`head..tail + capacity`),
//! then stores the new `head` with `Release`; the consumer loads `head` with
//! `Acquire`, copies records out of `tail..head`, then stores the new `tail`
//! with `Release`; the producer loads `tail` with `Acquire` before reusing
//! space. Each side caches the other's index and reloads it only when its
//! cached view says the ring is full (producer) or empty (consumer).
//!
//! # Untrusted peer
//! The other side may be another, hostile process that writes anything into
//! the region at any time. Each side keeps its own index privately and never
//! reads it back, reads everything else as a snapshot (atomic loads and the
//! crate's atomic word copies, never references to plain data), and checks it
//! before use. An index that is unaligned, moves backwards or leaves more
//! than `capacity` bytes between `tail` and `head`, a length above the max
//! message size or beyond what the producer published, or a wrap marker where
//! none can be, makes the side report [`SendError::Corrupted`] or
//! [`RecvError::Corrupted`], now and on every later call: never a panic,
//! undefined behaviour or an access outside the region.

use std::fmt;
use std::ptr::NonNull;

use crate::mapping::{copy_in, copy_out};
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// `"ipcring\x01"` as a little-endian `u64`: the first word of an initialised
/// [`Header`].
pub const MAGIC: u64 = u64::from_le_bytes(*b"ipcring\x01");

/// Version of the layout described in the [module docs](self); bumped on any
/// change to the header or the record format.
pub const LAYOUT_VERSION: u32 = 1;

/// Size of the [`Header`] at the start of a region, in bytes.
pub const HEADER_SIZE: usize = size_of::<Header>();

/// [`HEADER_SIZE`] as stored in the header.
const HEADER_SIZE_U32: u32 = 384;

/// Smallest capacity [`RingLayout`] accepts, in bytes.
pub const MIN_CAPACITY: usize = 16;

/// Alignment of every record, and so of `head` and `tail`.
const RECORD_ALIGN: usize = 8;

/// Size of a record's header: the `u32` length and 4 unused bytes.
const RECORD_HEADER: usize = 8;

/// The length of a wrap marker.
const WRAP: u32 = u32::MAX;

/// The header at the start of a ring region.
///
/// Every field is an atomic, including the padding that keeps `head` and
/// `tail` on lines of their own, so the header has no plain bytes: a
/// `&Header` into shared memory only ever reads and writes through atomics,
/// which a peer may race with without undefined behaviour in this process.
#[repr(C)]
#[derive(Debug)]
pub struct Header {
    /// [`MAGIC`] once [`init`] is done.
    magic: AtomicU64,
    /// [`LAYOUT_VERSION`].
    version: AtomicU32,
    /// [`HEADER_SIZE`], so a reader can tell a header of another size.
    header_size: AtomicU32,
    /// Size of the records area in bytes, a power of two.
    capacity: AtomicU64,
    /// Largest payload a record may carry, in bytes.
    max_message: AtomicU64,
    /// Rest of the configuration line.
    _config_pad: [AtomicU64; 12],
    /// Producer index: bytes ever written. Only the producer stores it.
    head: AtomicU64,
    /// Rest of `head`'s line.
    _head_pad: [AtomicU64; 15],
    /// Consumer index: bytes ever consumed. Only the consumer stores it.
    tail: AtomicU64,
    /// Rest of `tail`'s line.
    _tail_pad: [AtomicU64; 15],
}

// The layout is frozen: peers built from other versions of this crate read it.
#[cfg(not(loom))]
const _: () = {
    assert!(size_of::<Header>() == 384);
    assert!(align_of::<Header>() == 8);
    assert!(std::mem::offset_of!(Header, magic) == 0);
    assert!(std::mem::offset_of!(Header, version) == 8);
    assert!(std::mem::offset_of!(Header, header_size) == 12);
    assert!(std::mem::offset_of!(Header, capacity) == 16);
    assert!(std::mem::offset_of!(Header, max_message) == 24);
    assert!(std::mem::offset_of!(Header, head) == 128);
    assert!(std::mem::offset_of!(Header, tail) == 256);
    assert!(HEADER_SIZE % RECORD_ALIGN == 0);
    assert!(HEADER_SIZE_U32 as usize == HEADER_SIZE);
};

/// Why a ring's layout is invalid, or a region cannot hold or does not hold
/// a valid ring.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The capacity is not a power of two of at least [`MIN_CAPACITY`] bytes,
    /// or the region it needs does not fit in the address space.
    #[error(
        "capacity {capacity} is not a power of two of at least {MIN_CAPACITY} bytes that fits in memory"
    )]
    Capacity {
        /// The capacity asked for or found.
        capacity: u64,
    },
    /// A record of the max message size would take more than half the
    /// capacity (or the size is not below `u32::MAX - 8`).
    #[error("max message size {max_message} does not fit half of the {capacity}-byte capacity")]
    MaxMessage {
        /// The max message size asked for or found.
        max_message: u64,
        /// The capacity.
        capacity: u64,
    },
    /// The region is not aligned to 8 bytes.
    #[error("the region is not 8-byte aligned")]
    Misaligned,
    /// The region is smaller than the header plus the capacity.
    #[error("the region has {len} bytes, the ring needs {needed}")]
    RegionTooSmall {
        /// Bytes the ring needs.
        needed: usize,
        /// Bytes the region has.
        len: usize,
    },
    /// The region does not start with [`MAGIC`] (not initialised, or not a ring).
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
    /// `head` and `tail` are unaligned or more than `capacity` apart.
    #[error("the ring's indices are corrupted (head {head}, tail {tail})")]
    Indices {
        /// `head` found.
        head: u64,
        /// `tail` found.
        tail: u64,
    },
}

/// Why [`Producer::try_send`] did not send.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No room now; try again after the consumer made progress.
    #[error("the ring is full")]
    Full,
    /// The message is longer than the ring's max message size.
    #[error("message of {len} bytes exceeds the max message size {max}")]
    TooLarge {
        /// Length of the message.
        len: usize,
        /// The ring's max message size.
        max: usize,
    },
    /// The consumer wrote an invalid `tail`; the ring is unusable.
    #[error("the ring is corrupted")]
    Corrupted,
}

/// Why [`Consumer::try_recv`] or [`Consumer::try_recv_into`] did not receive.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// The next message is longer than the buffer; it stays in the ring.
    #[error("the next message has {len} bytes, more than the buffer holds")]
    BufferTooSmall {
        /// Length of the next message.
        len: usize,
    },
    /// The producer wrote an invalid `head` or record; the ring is unusable.
    #[error("the ring is corrupted")]
    Corrupted,
}

/// The validated sizes of a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    capacity: usize,
    max_message: usize,
}

impl RingLayout {
    /// A ring of `capacity` bytes of records (a power of two, at least
    /// [`MIN_CAPACITY`]) carrying messages of up to `max_message` bytes, whose
    /// record must fit in half the capacity.
    ///
    /// # Errors
    /// [`LayoutError::Capacity`] or [`LayoutError::MaxMessage`].
    pub fn new(capacity: usize, max_message: usize) -> Result<Self, LayoutError> {
        Self::check(capacity as u64, max_message as u64)
    }

    /// The largest max message size a ring of `capacity` bytes accepts, if
    /// `capacity` is valid.
    pub fn max_message_for(capacity: usize) -> Option<usize> {
        Self::bytes_for(capacity)?;
        Some((capacity / 2 - RECORD_HEADER).min(WRAP as usize - 2 * RECORD_HEADER))
    }

    /// Bytes of region a ring of `capacity` bytes needs (header included), if
    /// `capacity` is a power of two of at least [`MIN_CAPACITY`] and the
    /// region fits in the address space.
    pub fn bytes_for(capacity: usize) -> Option<usize> {
        if capacity < MIN_CAPACITY || !capacity.is_power_of_two() {
            return None;
        }
        HEADER_SIZE
            .checked_add(capacity)
            .filter(|&bytes| isize::try_from(bytes).is_ok())
    }

    /// Capacity of the records area in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Largest message in bytes.
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// Bytes of region this ring needs.
    pub fn region_bytes(&self) -> usize {
        HEADER_SIZE + self.capacity
    }

    /// Validates sizes given or read from (untrusted) shared memory.
    fn check(capacity: u64, max_message: u64) -> Result<Self, LayoutError> {
        let capacity_err = LayoutError::Capacity { capacity };
        let capacity_usize = usize::try_from(capacity).map_err(|_| capacity_err.clone())?;
        let max = Self::max_message_for(capacity_usize).ok_or(capacity_err)?;
        match usize::try_from(max_message) {
            Ok(max_message) if max_message <= max => Ok(Self {
                capacity: capacity_usize,
                max_message,
            }),
            _ => Err(LayoutError::MaxMessage {
                max_message,
                capacity,
            }),
        }
    }
}

/// Bytes a record with a payload of `len` bytes takes, padding included.
/// `len` is at most `u32::MAX`, so this cannot overflow a 64-bit `usize`;
/// callers pass only lengths already checked against the max message size.
fn record_size(len: usize) -> usize {
    (len + RECORD_HEADER + (RECORD_ALIGN - 1)) & !(RECORD_ALIGN - 1)
}

/// A ring region: its header and its records.
#[derive(Debug)]
struct Region {
    header: NonNull<Header>,
    records: NonNull<u8>,
    layout: RingLayout,
}

impl Region {
    /// Checks the region's alignment and size and its header's configuration.
    ///
    /// # Safety
    /// As for [`Producer::attach`].
    unsafe fn attach(ptr: NonNull<u8>, len: usize) -> Result<Self, LayoutError> {
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
        // SAFETY: the caller guarantees `ptr..ptr + len` is valid for the
        // endpoint's lifetime and accessed in this process only atomically;
        // the header fits in it (checked) and is aligned (checked). `Header`
        // is made only of atomics, so reading it through `&Header` is sound
        // whatever bytes a peer wrote.
        let hdr = unsafe { header.as_ref() };
        // ORDERING: Acquire; pairs with the Release store of `magic` in
        // `init`, so the configuration written before it is visible here.
        let found = hdr.magic.load(Ordering::Acquire);
        if found != MAGIC {
            return Err(LayoutError::Magic { found });
        }
        // ORDERING: Relaxed for the configuration: ordered by the Acquire
        // load of `magic` above.
        let version = hdr.version.load(Ordering::Relaxed);
        let header_size = hdr.header_size.load(Ordering::Relaxed);
        if version != LAYOUT_VERSION || header_size as usize != HEADER_SIZE {
            return Err(LayoutError::Version {
                version,
                header_size,
            });
        }
        let layout = RingLayout::check(
            hdr.capacity.load(Ordering::Relaxed),
            hdr.max_message.load(Ordering::Relaxed),
        )?;
        if len < layout.region_bytes() {
            return Err(LayoutError::RegionTooSmall {
                needed: layout.region_bytes(),
                len,
            });
        }
        // SAFETY: `HEADER_SIZE < len` (checked above), so the result stays
        // inside the region and is not null.
        let records = unsafe { ptr.add(HEADER_SIZE) };
        Ok(Self {
            header,
            records,
            layout,
        })
    }

    fn header(&self) -> &Header {
        // SAFETY: checked aligned and in bounds by `attach`; valid for the
        // endpoint's lifetime (contract of `attach`); made only of atomics.
        unsafe { self.header.as_ref() }
    }

    /// Offset in the records of a byte position.
    fn offset(&self, position: u64) -> usize {
        // The mask is below the capacity, which fits `usize`: no truncation.
        #[allow(clippy::cast_possible_truncation)]
        let offset = (position & (self.layout.capacity as u64 - 1)) as usize;
        offset
    }

    /// Whether `head` and `tail` are aligned and at most `capacity` apart.
    fn indices_valid(&self, head: u64, tail: u64) -> bool {
        head % RECORD_ALIGN as u64 == 0
            && tail % RECORD_ALIGN as u64 == 0
            && head >= tail
            && head - tail <= self.layout.capacity as u64
    }

    /// Copies the 8-byte record header at `offset` (8-aligned, below the
    /// capacity) out and returns its length field.
    fn read_len(&self, offset: usize) -> u32 {
        debug_assert!(offset % RECORD_ALIGN == 0 && offset < self.layout.capacity);
        let mut bytes = [0; RECORD_HEADER];
        // SAFETY: `offset + 8 <= capacity` (aligned offset below a capacity
        // that is a multiple of 8), so the range is inside the region, valid
        // for the endpoint's lifetime and accessed in this process only by
        // atomics of the copies' word size (contract of `attach`).
        unsafe { copy_out(self.records.as_ptr().wrapping_add(offset), &mut bytes) };
        u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
    }

    /// Writes an 8-byte record header with length `len` at `offset`
    /// (8-aligned, below the capacity).
    fn write_len(&self, offset: usize, len: u32) {
        debug_assert!(offset % RECORD_ALIGN == 0 && offset < self.layout.capacity);
        let mut bytes = [0; RECORD_HEADER];
        bytes[..4].copy_from_slice(&len.to_ne_bytes());
        let dst = self.records.as_ptr().wrapping_add(offset);
        // SAFETY: as in `read_len`, the 8 bytes are inside the region, which
        // is writable and accessed in this process only by atomics of the
        // copies' word size (contract of `attach`).
        unsafe { copy_in(&bytes, dst) };
    }
}

/// Writes a fresh ring header (empty ring) at the start of a region.
///
/// The configuration is written first and [`MAGIC`] last, with `Release`,
/// so an attach that sees the magic sees the rest.
///
/// # Errors
/// [`LayoutError::Misaligned`] or [`LayoutError::RegionTooSmall`] if the
/// region cannot hold `layout`.
///
/// # Safety
/// - `ptr..ptr + len` must be valid for reads and writes for the whole call.
/// - Within this process, nothing may access that memory concurrently other
///   than through this module (atomics of the same sizes at the same
///   addresses); no `&`/`&mut` reference to it may be alive.
pub unsafe fn init(ptr: NonNull<u8>, len: usize, layout: RingLayout) -> Result<(), LayoutError> {
    let header = ptr.cast::<Header>();
    if !header.is_aligned() {
        return Err(LayoutError::Misaligned);
    }
    if len < layout.region_bytes() {
        return Err(LayoutError::RegionTooSmall {
            needed: layout.region_bytes(),
            len,
        });
    }
    // SAFETY: aligned and in bounds (checked), valid for the call and
    // accessed only atomically (caller contract); `Header` is all atomics.
    let hdr = unsafe { header.as_ref() };
    // ORDERING: Relaxed for the configuration and the indices: published by
    // the Release store of `magic` below.
    hdr.magic.store(0, Ordering::Relaxed);
    hdr.version.store(LAYOUT_VERSION, Ordering::Relaxed);
    hdr.header_size.store(HEADER_SIZE_U32, Ordering::Relaxed);
    hdr.capacity
        .store(layout.capacity as u64, Ordering::Relaxed);
    hdr.max_message
        .store(layout.max_message as u64, Ordering::Relaxed);
    hdr.head.store(0, Ordering::Relaxed);
    hdr.tail.store(0, Ordering::Relaxed);
    // ORDERING: Release; pairs with the Acquire load of `magic` in
    // `Region::attach`, publishing the stores above.
    hdr.magic.store(MAGIC, Ordering::Release);
    Ok(())
}

/// The sending side of a ring.
#[derive(Debug)]
pub struct Producer {
    region: Region,
    /// Our index: the only copy we trust.
    head: u64,
    /// The consumer's index as last loaded and validated.
    tail_cache: u64,
    corrupted: bool,
}

// SAFETY: the producer only holds pointers into a region that the caller of
// `attach` keeps valid for the producer's lifetime, whatever thread uses it,
// and touches it only through atomics.
unsafe impl Send for Producer {}

impl Producer {
    /// Attaches the producer to an initialised ring region, after checking
    /// its alignment, size, header and indices.
    ///
    /// Two producers on one ring do not cause undefined behaviour, only
    /// garbage and [`RecvError::Corrupted`] for the consumer.
    ///
    /// # Errors
    /// A [`LayoutError`] naming the first check that failed.
    ///
    /// # Safety
    /// - `ptr..ptr + len` must be valid for reads and writes (allocated, or
    ///   mapped read-write and sealed against shrinking) until the returned
    ///   producer is dropped.
    /// - Within this process, while the producer lives, nothing may access
    ///   that memory other than ring endpoints and atomic operations of the
    ///   same size at the same addresses (8-byte atomics on the header words,
    ///   pointer-sized atomics on the records); no `&`/`&mut` reference to it
    ///   may be alive. Other processes may write anything: that is checked.
    pub unsafe fn attach(ptr: NonNull<u8>, len: usize) -> Result<Self, LayoutError> {
        // SAFETY: the caller upholds the same contract.
        let region = unsafe { Region::attach(ptr, len) }?;
        let hdr = region.header();
        // ORDERING: Relaxed; our own index, published by the previous
        // producer (or `init`) before this attach was arranged.
        let head = hdr.head.load(Ordering::Relaxed);
        // ORDERING: Acquire; pairs with the Release store of `tail` in
        // `Consumer::consume`, so the consumer's copies out of the space
        // before `tail` happen before we overwrite it.
        let tail = hdr.tail.load(Ordering::Acquire);
        if !region.indices_valid(head, tail) {
            return Err(LayoutError::Indices { head, tail });
        }
        Ok(Self {
            region,
            head,
            tail_cache: tail,
            corrupted: false,
        })
    }

    /// The ring's sizes.
    pub fn layout(&self) -> RingLayout {
        self.region.layout
    }

    /// Copies `data` into the ring as one message, without waiting.
    ///
    /// # Errors
    /// [`SendError::TooLarge`] above the max message size,
    /// [`SendError::Full`] if there is no room now,
    /// [`SendError::Corrupted`] if the consumer's index is invalid (then on
    /// every later call too).
    pub fn try_send(&mut self, data: &[u8]) -> Result<(), SendError> {
        if self.corrupted {
            return Err(SendError::Corrupted);
        }
        let layout = self.region.layout;
        if data.len() > layout.max_message {
            return Err(SendError::TooLarge {
                len: data.len(),
                max: layout.max_message,
            });
        }
        let size = record_size(data.len());
        let offset = self.region.offset(self.head);
        let to_end = layout.capacity - offset;
        let wrap = size > to_end;
        let need = (if wrap { to_end + size } else { size }) as u64;
        if self.free() < need {
            self.refresh_tail()?;
            if self.free() < need {
                return Err(SendError::Full);
            }
        }
        let Some(new_head) = self.head.checked_add(need) else {
            return Err(self.corrupt());
        };
        let start = if wrap {
            self.region.write_len(offset, WRAP);
            0
        } else {
            offset
        };
        // The max message size is below `u32::MAX` (checked by `RingLayout`).
        let len = u32::try_from(data.len()).map_err(|_| self.corrupt())?;
        self.region.write_len(start, len);
        let dst = self
            .region
            .records
            .as_ptr()
            .wrapping_add(start + RECORD_HEADER);
        // SAFETY: `start + size <= capacity` (the record fits before the end,
        // wrapped if needed), so the payload is inside the region, which is
        // writable, valid while `self` lives and accessed in this process only
        // atomically with the copies' word size (contract of `attach`). The
        // space is free: the consumer released it (validated `tail`).
        unsafe { copy_in(data, dst) };
        // ORDERING: Release; pairs with the Acquire load of `head` in
        // `Consumer::refresh_head`, publishing the record written above.
        self.region.header().head.store(new_head, Ordering::Release);
        self.head = new_head;
        Ok(())
    }

    /// Free bytes by the cached `tail` (never more than `capacity` apart).
    fn free(&self) -> u64 {
        self.region.layout.capacity as u64 - (self.head - self.tail_cache)
    }

    /// Reloads the consumer's index and checks it.
    fn refresh_tail(&mut self) -> Result<(), SendError> {
        // ORDERING: Acquire; pairs with the Release store of `tail` in
        // `Consumer::consume`, so the consumer's copies out of the released
        // space happen before we overwrite it.
        let tail = self.region.header().tail.load(Ordering::Acquire);
        if tail < self.tail_cache || !self.region.indices_valid(self.head, tail) {
            return Err(self.corrupt());
        }
        self.tail_cache = tail;
        Ok(())
    }

    fn corrupt(&mut self) -> SendError {
        self.corrupted = true;
        SendError::Corrupted
    }
}

/// A record ready to be copied out.
#[derive(Clone, Copy, Debug)]
struct Record {
    /// Offset of the payload in the records.
    payload: usize,
    /// Payload length.
    len: usize,
    /// Bytes the record takes.
    size: usize,
}

/// The receiving side of a ring.
#[derive(Debug)]
pub struct Consumer {
    region: Region,
    /// Our index: the only copy we trust.
    tail: u64,
    /// The producer's index as last loaded and validated.
    head_cache: u64,
    corrupted: bool,
}

// SAFETY: as for `Producer`: pointers into a region kept valid by the caller
// of `attach` for the consumer's lifetime, touched only through atomics.
unsafe impl Send for Consumer {}

impl Consumer {
    /// Attaches the consumer to an initialised ring region, after checking
    /// its alignment, size, header and indices.
    ///
    /// Two consumers on one ring do not cause undefined behaviour, only
    /// garbage and [`SendError::Corrupted`] for the producer.
    ///
    /// # Errors
    /// A [`LayoutError`] naming the first check that failed.
    ///
    /// # Safety
    /// As for [`Producer::attach`].
    pub unsafe fn attach(ptr: NonNull<u8>, len: usize) -> Result<Self, LayoutError> {
        // SAFETY: the caller upholds the same contract.
        let region = unsafe { Region::attach(ptr, len) }?;
        let hdr = region.header();
        // ORDERING: Relaxed; our own index, published by the previous
        // consumer (or `init`) before this attach was arranged.
        let tail = hdr.tail.load(Ordering::Relaxed);
        // ORDERING: Acquire; pairs with the Release store of `head` in
        // `Producer::try_send`, so the records before it are visible.
        let head = hdr.head.load(Ordering::Acquire);
        if !region.indices_valid(head, tail) {
            return Err(LayoutError::Indices { head, tail });
        }
        Ok(Self {
            region,
            tail,
            head_cache: head,
            corrupted: false,
        })
    }

    /// The ring's sizes.
    pub fn layout(&self) -> RingLayout {
        self.region.layout
    }

    /// Moves the next message into `buf` (cleared and resized to fit),
    /// without waiting. `Ok(None)` if the ring is empty.
    ///
    /// # Errors
    /// [`RecvError::Corrupted`] if the producer wrote an invalid index or
    /// record (then on every later call too).
    pub fn try_recv(&mut self, buf: &mut Vec<u8>) -> Result<Option<usize>, RecvError> {
        let Some(record) = self.peek()? else {
            return Ok(None);
        };
        buf.clear();
        buf.resize(record.len, 0);
        self.consume(record, buf);
        Ok(Some(record.len))
    }

    /// Copies the next message into the start of `buf`, without waiting, and
    /// returns its length. `Ok(None)` if the ring is empty.
    ///
    /// # Errors
    /// [`RecvError::BufferTooSmall`] if the message is longer than `buf`
    /// (it stays in the ring), [`RecvError::Corrupted`] if the producer wrote
    /// an invalid index or record (then on every later call too).
    pub fn try_recv_into(&mut self, buf: &mut [u8]) -> Result<Option<usize>, RecvError> {
        let Some(record) = self.peek()? else {
            return Ok(None);
        };
        let Some(dst) = buf.get_mut(..record.len) else {
            return Err(RecvError::BufferTooSmall { len: record.len });
        };
        self.consume(record, dst);
        Ok(Some(record.len))
    }

    /// Finds and checks the next record, skipping a wrap marker.
    fn peek(&mut self) -> Result<Option<Record>, RecvError> {
        if self.corrupted {
            return Err(RecvError::Corrupted);
        }
        let capacity = self.region.layout.capacity;
        // At most two rounds: after a wrap the offset is 0, where a second
        // wrap marker is corruption.
        loop {
            if self.head_cache == self.tail {
                self.refresh_head()?;
                if self.head_cache == self.tail {
                    return Ok(None);
                }
            }
            let available = self.head_cache - self.tail;
            let offset = self.region.offset(self.tail);
            if available < RECORD_HEADER as u64 {
                return Err(self.corrupt());
            }
            let len = self.region.read_len(offset);
            if len == WRAP {
                let skip = (capacity - offset) as u64;
                if offset == 0 || skip > available {
                    return Err(self.corrupt());
                }
                self.tail += skip;
                // ORDERING: Release; pairs with the Acquire load of `tail` in
                // `Producer::refresh_tail`: the skipped bytes are free.
                self.region
                    .header()
                    .tail
                    .store(self.tail, Ordering::Release);
                continue;
            }
            let len = usize::try_from(len).map_err(|_| self.corrupt())?;
            if len > self.region.layout.max_message {
                return Err(self.corrupt());
            }
            let size = record_size(len);
            if offset + size > capacity || size as u64 > available {
                return Err(self.corrupt());
            }
            return Ok(Some(Record {
                payload: offset + RECORD_HEADER,
                len,
                size,
            }));
        }
    }

    /// Copies `record`'s payload into `dst` (exactly its length) and releases
    /// the record.
    fn consume(&mut self, record: Record, dst: &mut [u8]) {
        debug_assert_eq!(dst.len(), record.len);
        let src = self.region.records.as_ptr().wrapping_add(record.payload);
        // SAFETY: `peek` checked the record lies inside the records area
        // (`offset + size <= capacity`), which is valid while `self` lives
        // and accessed in this process only atomically with the copies' word
        // size (contract of `attach`).
        unsafe { copy_out(src, dst) };
        self.tail += record.size as u64;
        // ORDERING: Release; pairs with the Acquire load of `tail` in
        // `Producer::refresh_tail`, so our copy out happens before the
        // producer reuses the space.
        self.region
            .header()
            .tail
            .store(self.tail, Ordering::Release);
    }

    /// Reloads the producer's index and checks it.
    fn refresh_head(&mut self) -> Result<(), RecvError> {
        // ORDERING: Acquire; pairs with the Release store of `head` in
        // `Producer::try_send`, so the records before it are visible.
        let head = self.region.header().head.load(Ordering::Acquire);
        if head < self.head_cache || !self.region.indices_valid(head, self.tail) {
            return Err(self.corrupt());
        }
        self.head_cache = head;
        Ok(())
    }

    fn corrupt(&mut self) -> RecvError {
        self.corrupted = true;
        RecvError::Corrupted
    }
}

impl fmt::Display for RingLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-byte ring, messages up to {} bytes",
            self.capacity, self.max_message
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A heap region of `capacity` bytes of records, 8-byte aligned.
    struct Heap {
        /// Owns the buffer; accessed only through `ptr`.
        _words: Vec<u64>,
        ptr: NonNull<u8>,
        len: usize,
    }

    impl Heap {
        fn new(layout: RingLayout) -> Self {
            let mut words = vec![0_u64; layout.region_bytes().div_ceil(8)];
            let ptr = NonNull::new(words.as_mut_ptr().cast()).unwrap();
            let sut = Self {
                len: words.len() * 8,
                _words: words,
                ptr,
            };
            // SAFETY: the buffer is ours, valid, and only accessed through the
            // ring module while the test runs.
            unsafe { init(sut.ptr(), sut.len(), layout) }.unwrap();
            sut
        }

        fn ptr(&self) -> NonNull<u8> {
            self.ptr
        }

        fn len(&self) -> usize {
            self.len
        }

        fn pair(&self) -> (Producer, Consumer) {
            // SAFETY: the heap outlives the endpoints in every test, and is
            // accessed only through them and atomics.
            let producer = unsafe { Producer::attach(self.ptr(), self.len()) }.unwrap();
            // SAFETY: as above.
            let consumer = unsafe { Consumer::attach(self.ptr(), self.len()) }.unwrap();
            (producer, consumer)
        }

        fn header(&self) -> &Header {
            // SAFETY: aligned, in bounds, all atomics.
            unsafe { self.ptr().cast::<Header>().as_ref() }
        }

        /// A hostile peer writing `bytes` into the records at `offset`.
        fn scribble(&self, offset: usize, bytes: &[u8]) {
            assert!(offset + bytes.len() <= self.len() - HEADER_SIZE);
            let dst = self.ptr().as_ptr().wrapping_add(HEADER_SIZE + offset);
            // SAFETY: in bounds (asserted); accessed only atomically.
            unsafe { copy_in(bytes, dst) };
        }
    }

    fn layout(capacity: usize, max: usize) -> RingLayout {
        RingLayout::new(capacity, max).unwrap()
    }

    fn message(seed: usize, len: usize) -> Vec<u8> {
        (0..len).map(|i| (seed * 31 + i) as u8).collect()
    }

    #[test]
    fn layout_checks_capacity_and_max_message() {
        assert_eq!(RingLayout::bytes_for(64), Some(HEADER_SIZE + 64));
        assert_eq!(RingLayout::bytes_for(8), None);
        assert_eq!(RingLayout::bytes_for(96), None);
        assert_eq!(RingLayout::bytes_for(usize::MAX / 2 + 1), None);
        assert_eq!(RingLayout::max_message_for(64), Some(24));
        assert!(RingLayout::new(64, 24).is_ok());
        assert_eq!(
            RingLayout::new(64, 25),
            Err(LayoutError::MaxMessage {
                max_message: 25,
                capacity: 64
            })
        );
        assert_eq!(
            RingLayout::new(100, 1),
            Err(LayoutError::Capacity { capacity: 100 })
        );
    }

    #[test]
    fn fill_then_drain_keeps_order_and_content() {
        let heap = Heap::new(layout(256, 64));
        let (mut producer, mut consumer) = heap.pair();
        let mut sent = 0;
        // 24-byte records: 10 fit in 256 bytes.
        while producer.try_send(&message(sent, 13)).is_ok() {
            sent += 1;
        }
        assert_eq!(sent, 10);
        assert_eq!(producer.try_send(&message(99, 13)), Err(SendError::Full));

        let mut buf = Vec::new();
        for i in 0..sent {
            assert_eq!(consumer.try_recv(&mut buf), Ok(Some(13)));
            assert_eq!(buf, message(i, 13));
        }
        assert_eq!(consumer.try_recv(&mut buf), Ok(None));
        producer.try_send(b"again").unwrap();
    }

    #[test]
    fn records_wrap_around_the_end() {
        let heap = Heap::new(layout(128, 24));
        let (mut producer, mut consumer) = heap.pair();
        let mut buf = [0; 24];
        for round in 0..100 {
            // Sizes that do not divide 64, so wrap markers are needed.
            let data = message(round, round % 25);
            producer.try_send(&data).unwrap();
            producer.try_send(&data[..data.len() / 2]).unwrap();
            assert_eq!(consumer.try_recv_into(&mut buf), Ok(Some(data.len())));
            assert_eq!(buf[..data.len()], data[..]);
            let half = data.len() / 2;
            assert_eq!(consumer.try_recv_into(&mut buf), Ok(Some(half)));
            assert_eq!(buf[..half], data[..half]);
        }
        assert_eq!(consumer.try_recv_into(&mut buf), Ok(None));
    }

    #[test]
    fn empty_ring_always_has_room_for_the_largest_message() {
        let heap = Heap::new(layout(64, 24));
        let (mut producer, mut consumer) = heap.pair();
        let mut buf = Vec::new();
        for first in 0..=24 {
            producer.try_send(&message(first, first)).unwrap();
            consumer.try_recv(&mut buf).unwrap().unwrap();
            producer.try_send(&message(first, 24)).unwrap();
            assert_eq!(consumer.try_recv(&mut buf), Ok(Some(24)));
            assert_eq!(buf, message(first, 24));
        }
    }

    #[test]
    fn too_large_and_too_small_buffer_are_reported() {
        let heap = Heap::new(layout(64, 24));
        let (mut producer, mut consumer) = heap.pair();
        assert_eq!(
            producer.try_send(&[0; 25]),
            Err(SendError::TooLarge { len: 25, max: 24 })
        );
        producer.try_send(b"hello").unwrap();
        let mut small = [0; 4];
        assert_eq!(
            consumer.try_recv_into(&mut small),
            Err(RecvError::BufferTooSmall { len: 5 })
        );
        let mut buf = [0; 5];
        assert_eq!(consumer.try_recv_into(&mut buf), Ok(Some(5)));
        assert_eq!(&buf, b"hello");
    }

    #[test]
    fn attach_refuses_bad_headers_and_regions() {
        let heap = Heap::new(layout(64, 24));
        let attach = |len| {
            // SAFETY: in bounds of the heap, which outlives the call.
            unsafe { Consumer::attach(heap.ptr(), len) }.map(|_| ())
        };
        assert_eq!(
            attach(100),
            Err(LayoutError::RegionTooSmall {
                needed: HEADER_SIZE,
                len: 100
            })
        );
        assert_eq!(
            attach(HEADER_SIZE + 63),
            Err(LayoutError::RegionTooSmall {
                needed: HEADER_SIZE + 64,
                len: HEADER_SIZE + 63
            })
        );
        let misaligned = NonNull::new(heap.ptr().as_ptr().wrapping_add(4)).unwrap();
        assert_eq!(
            // SAFETY: in bounds; refused before any access.
            unsafe { Producer::attach(misaligned, heap.len() - 4) }.map(|_| ()),
            Err(LayoutError::Misaligned)
        );

        let hdr = heap.header();
        hdr.capacity.store(48, Ordering::Relaxed);
        assert_eq!(
            attach(heap.len()),
            Err(LayoutError::Capacity { capacity: 48 })
        );
        hdr.capacity.store(1 << 20, Ordering::Relaxed);
        assert_eq!(
            attach(heap.len()),
            Err(LayoutError::RegionTooSmall {
                needed: HEADER_SIZE + (1 << 20),
                len: heap.len()
            })
        );
        hdr.capacity.store(64, Ordering::Relaxed);
        hdr.max_message.store(u64::MAX, Ordering::Relaxed);
        assert!(matches!(
            attach(heap.len()),
            Err(LayoutError::MaxMessage { .. })
        ));
        hdr.max_message.store(24, Ordering::Relaxed);
        hdr.version.store(2, Ordering::Relaxed);
        assert!(matches!(
            attach(heap.len()),
            Err(LayoutError::Version { .. })
        ));
        hdr.version.store(LAYOUT_VERSION, Ordering::Relaxed);
        hdr.tail.store(8, Ordering::Relaxed);
        assert_eq!(
            attach(heap.len()),
            Err(LayoutError::Indices { head: 0, tail: 8 })
        );
        hdr.tail.store(0, Ordering::Relaxed);
        hdr.magic.store(0xdead_beef, Ordering::Relaxed);
        assert_eq!(
            attach(heap.len()),
            Err(LayoutError::Magic { found: 0xdead_beef })
        );
        hdr.magic.store(MAGIC, Ordering::Relaxed);
        assert_eq!(attach(heap.len()), Ok(()));
    }

    #[test]
    fn hostile_record_lengths_are_corruption() {
        // (bytes written over the first record's header, why it is invalid)
        let cases: [(u32, &str); 4] = [
            (25, "above the max message size"),
            (u32::MAX - 1, "huge"),
            (20, "beyond what the producer published"),
            (WRAP, "a wrap marker at offset 0"),
        ];
        for (len, why) in cases {
            let heap = Heap::new(layout(64, 24));
            let (mut producer, mut consumer) = heap.pair();
            producer.try_send(b"abc").unwrap();
            heap.scribble(0, &len.to_ne_bytes());

            let mut buf = Vec::new();
            assert_eq!(
                consumer.try_recv(&mut buf),
                Err(RecvError::Corrupted),
                "{why}"
            );
            assert_eq!(
                consumer.try_recv(&mut buf),
                Err(RecvError::Corrupted),
                "{why} (sticky)"
            );
        }
    }

    #[test]
    fn hostile_wrap_marker_beyond_published_bytes_is_corruption() {
        let heap = Heap::new(layout(64, 24));
        let (mut producer, mut consumer) = heap.pair();
        let mut buf = Vec::new();
        producer.try_send(b"abc").unwrap();
        consumer.try_recv(&mut buf).unwrap();
        producer.try_send(b"def").unwrap();
        // A wrap at offset 16 would skip 48 bytes, only 16 are published.
        heap.scribble(16, &WRAP.to_ne_bytes());
        assert_eq!(consumer.try_recv(&mut buf), Err(RecvError::Corrupted));
    }

    #[test]
    fn hostile_head_is_corruption() {
        let cases = [
            (20, "unaligned"),
            (88, "more than the capacity ahead of tail"),
            (!7, "huge"),
            (8, "backwards"),
        ];
        for (head, why) in cases {
            let heap = Heap::new(layout(64, 24));
            let (mut producer, mut consumer) = heap.pair();
            let mut buf = [0; 24];
            producer.try_send(b"abc").unwrap();
            assert_eq!(consumer.try_recv_into(&mut buf), Ok(Some(3)), "{why}");
            heap.header().head.store(head, Ordering::Relaxed);
            assert_eq!(
                consumer.try_recv_into(&mut buf),
                Err(RecvError::Corrupted),
                "{why}"
            );
            assert_eq!(
                consumer.try_recv_into(&mut buf),
                Err(RecvError::Corrupted),
                "{why} (sticky)"
            );
        }
    }

    #[test]
    fn hostile_tail_is_corruption() {
        for (tail, why) in [(12, "unaligned"), (72, "beyond head"), (!7, "huge")] {
            let heap = Heap::new(layout(64, 24));
            let (mut producer, _consumer) = heap.pair();
            while producer.try_send(b"12345678").is_ok() {}
            heap.header().tail.store(tail, Ordering::Relaxed);
            assert_eq!(producer.try_send(b"x"), Err(SendError::Corrupted), "{why}");
            assert_eq!(
                producer.try_send(b"x"),
                Err(SendError::Corrupted),
                "{why} (sticky)"
            );
        }
        // Backwards after the consumer made progress.
        let heap = Heap::new(layout(64, 24));
        let (mut producer, mut consumer) = heap.pair();
        let mut buf = Vec::new();
        while producer.try_send(b"12345678").is_ok() {}
        consumer.try_recv(&mut buf).unwrap();
        producer.try_send(b"12345678").unwrap();
        heap.header().tail.store(0, Ordering::Relaxed);
        assert_eq!(producer.try_send(b"12345678"), Err(SendError::Corrupted));
    }

    #[test]
    fn random_garbage_never_panics() {
        // A deterministic xorshift, so no dev-dependency is needed here.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let heap = Heap::new(layout(128, 56));
            let (mut producer, mut consumer) = heap.pair();
            let mut buf = Vec::new();
            for _ in 0..(next() % 8) {
                let _ = producer.try_send(&message(0, (next() % 57) as usize));
            }
            for _ in 0..4 {
                let offset = (next() % 16) as usize * 8;
                heap.scribble(offset, &next().to_ne_bytes());
            }
            if next() % 4 == 0 {
                heap.header().head.store(next() % 256, Ordering::Relaxed);
            }
            for _ in 0..16 {
                let _ = consumer.try_recv(&mut buf);
                assert!(buf.len() <= 56);
            }
        }
    }

    #[test]
    fn endpoints_are_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Producer>();
        assert_send::<Consumer>();
    }
}
