//! Message rings over shared memory: variable-size messages from one or many
//! producers to one consumer, zero-copy on both sides, with no system call,
//! lock or allocation on the fast path.
//!
//! A ring region holds a [header](#layout) and one *lane* per producer: a
//! single-producer ring is one lane, a many-producer ring (MPSC) gives each
//! producer a lane of its own, so producers never contend and a producer
//! that dies mid-write stalls nobody. The consumer takes messages from the
//! lanes in turn, in order within each lane.
//!
//! The producer [loans](Producer::try_loan) space, writes the message in
//! place and [commits](Loan::commit) it; the consumer
//! [borrows](Consumer::try_recv) it where it lies and releases it when the
//! [`Sample`] is dropped. Blocking calls ([`Producer::loan`],
//! [`Consumer::recv`]) take a [`Wait`] strategy and a timeout: busy-poll, or
//! spin then park on a futex in the segment. [`Consumer::park_async`] lets an
//! async runtime wait on an eventfd doorbell instead.
//!
//! # Layout
//! All words are native-endian and 8-byte aligned; lines are 128 bytes.
//! - Header line 0, configuration written once by [`init`]: magic
//!   ([`MAGIC`], written last), layout version, header size, lane capacity,
//!   max message size, lane count.
//! - Header line 1, the consumer's doorbell: the futex word producers bump
//!   to wake a parked consumer.
//! - Then each lane: its producer's line (`head`, the position after the
//!   committed records as of the producer's last publish, which it makes
//!   every 2 KiB (every eighth of a smaller lane) and when it lets go, and
//!   `owner`, the claiming process), its consumer's line (`tail`, bytes
//!   released, whose top bit says the producer is parked, and the futex
//!   word the consumer bumps to wake it), then `capacity` bytes of records,
//!   a power of two.
//! - Positions only grow; a position's offset in a lane is `position &
//!   (capacity - 1)`. A record starts at a 128-byte *block* boundary with an
//!   8-byte *slot word*, then the payload, then padding to the next block:
//!   a message of up to 120 bytes takes one block. Whole blocks keep each
//!   message on lines (and adjacent-line prefetch pairs) of its own, so the
//!   producer filling the next message never pulls away the line the
//!   consumer is reading; records packed end to end cost a 64-byte round
//!   trip about 40 ns more here. The payload of a message longer than a
//!   block starts at byte 64 of its record, a cache line, when the record's
//!   blocks have room for that (they do for sizes a multiple of 64): copies
//!   to a line-aligned address run 10-15% faster here than to one 8 bytes
//!   past it.
//!   A record never crosses the end of the lane: when it does not fit, the
//!   producer puts it at offset 0 and a wrap marker where it would have gone.
//!   A record of the largest message takes at most half the capacity, so an
//!   empty lane always has room for it, wrap included.
//!
//! # Protocol
//! The slot word says what lies at a position: nothing yet (0), or a
//! committed record or wrap marker, tagged with the lap of the position it
//! was written for. The producer writes the payload, clears the slot word
//! after the record unless it already reads as empty (when that is free
//! space), then stores the committed word with `Release`; the consumer
//! polls the slot word at its position with `Acquire`. So a message and its
//! "ready" flag travel on the same cache line, the consumer needs no index
//! of the producer's (it reads the published `head` only to keep behind a
//! stream, see [`Consumer::recv`]), and it never writes to the records: a
//! slot word it consumed reads as empty a lap later by its tag. The
//! consumer publishes its `tail` with `Release` once an eighth of the lane
//! is released, when it catches up, or when the producer waits for space;
//! the producer reads `tail` with `Acquire` only when its cached copy says
//! the lane is full.
//!
//! Parking costs the fast path no fence and no system call: a sleeper sets
//! its *parked* flag and runs a cross-process barrier (`membarrier`, see
//! `barrier`) before its last look, and the other side checks the flag after
//! each publish behind only a compiler fence; it makes the futex wake (or
//! rings the consumer's eventfd doorbell) only when the flag is set.
//!
//! # Untrusted peer
//! The other side may be a hostile process that writes anything at any time.
//! Each side keeps its own index privately and never trusts it from shared
//! memory; every word it reads is checked before use: a `tail` that is
//! unaligned, moves backwards or passes `head`, a changed magic, a slot word
//! that is no valid value, a length above the max message size or a record
//! crossing the end makes the side report [`SendError::Corrupted`] or
//! [`RecvError::Corrupted`], then and on every later call: never a panic,
//! undefined behaviour, an access outside the region or a wait without
//! timeout. Payload bytes are copied (with `memcpy`, or a few 16-byte moves)
//! into and out of space the protocol gives this side alone; a peer writing
//! into it anyway can change only those bytes, which are read once, never a
//! length or an index. The one word read unchecked is the producer's
//! published `head`, and only by a consumer keeping behind a stream, as a
//! hint that ends a wait of at most 2 µs sooner or later.

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;
#[cfg(not(loom))]
use std::{
    os::fd::{AsFd, OwnedFd},
    time::{Duration, Instant},
};

use crate::Access;
use crate::mapping::Mapping;
use crate::sync::{AtomicU64, Ordering};
#[cfg(not(loom))]
use crate::{barrier, futex, sync::AtomicU32};

/// `"ipcring\x01"` as a little-endian `u64`: the first word of an initialised
/// ring header.
pub const MAGIC: u64 = u64::from_le_bytes(*b"ipcring\x01");

/// Version of the layout described in the [module docs](self); bumped on any
/// change to the header, the lanes or the record format.
pub const LAYOUT_VERSION: u32 = 4;

/// Size of the ring header at the start of a region, in bytes.
pub const HEADER_SIZE: usize = 2 * LINE;

/// Size of each lane's header (its producer's and its consumer's line).
pub const LANE_HEADER_SIZE: usize = 2 * LINE;

/// Smallest lane capacity [`RingLayout`] accepts, in bytes.
pub const MIN_CAPACITY: usize = 2 * RECORD_ALIGN;

/// Most lanes (producers) a ring may have.
pub const MAX_LANES: usize = 64;

/// A line: the unit that keeps the two sides' hot words apart.
const LINE: usize = 128;

/// Words in a line.
const LINE_WORDS: usize = LINE / WORD;

/// Size of a slot word and of every index.
const WORD: usize = 8;

/// Alignment of every record, and so of positions: a block (see
/// [Layout](self#layout)).
const RECORD_ALIGN: usize = LINE;

/// A cache line of the CPU (a [`LINE`] is two of them).
const CACHE_LINE: usize = 64;

/// Where a multi-block message's payload starts in its record if there is
/// room: a cache line (see [Layout](self#layout)).
const ALIGNED_PAYLOAD: usize = CACHE_LINE;

/// Most bytes a producer commits between publishes of `head`.
const HEAD_EVERY: u64 = 2 << 10;

/// Bytes a producer commits between publishes of `head`: [`HEAD_EVERY`], or
/// an eighth of a smaller lane.
#[inline(always)]
fn head_interval(capacity: u64) -> u64 {
    (capacity / 8).min(HEAD_EVERY)
}

/// Longest a consumer waits for a streaming producer to get a stretch
/// ahead (see [`Lag`]).
#[cfg(not(loom))]
const SLIP: Duration = Duration::from_micros(2);

/// How far ahead of a consumer that keeps behind its producer the producer
/// is to be, at most a quarter of the lane (see [`Lag`]).
#[cfg(not(loom))]
const STRETCH: usize = 8 << 10;

/// Most misses [`Lag`] counts: it then engages at most once in 1024 chances.
#[cfg(not(loom))]
const MAX_MISSES: u32 = 10;

/// Word indices in the ring header.
mod header {
    pub(super) const MAGIC: usize = 0;
    pub(super) const VERSION: usize = 1;
    pub(super) const HEADER_SIZE: usize = 2;
    pub(super) const CAPACITY: usize = 3;
    pub(super) const MAX_MESSAGE: usize = 4;
    pub(super) const LANES: usize = 5;
    /// The consumer's futex word (the low 32 bits of this word).
    pub(super) const WAKE: usize = super::LINE_WORDS;
    /// How the consumer sleeps (`AWAKE`, `PARKED`, `PARKED_ASYNC`).
    pub(super) const PARKED: usize = super::LINE_WORDS + 1;
    /// Token of the consumer's process, 0 if there is none.
    pub(super) const CONSUMER: usize = super::LINE_WORDS + 2;
}

/// Word indices in a lane header.
mod lane {
    /// Position after the committed records as of the producer's last
    /// publish (every 2 KiB or eighth of the lane, and when it lets go):
    /// where an heir starts looking for the end of them, and how a consumer
    /// keeping behind a stream sees how far ahead the producer is.
    pub(super) const HEAD: usize = 0;
    /// Token of the producer that claimed the lane, 0 if free.
    pub(super) const OWNER: usize = 1;
    /// Bytes released by the consumer.
    pub(super) const TAIL: usize = super::LINE_WORDS;
    /// The producer's futex word (the low 32 bits of this word).
    pub(super) const SPACE: usize = super::LINE_WORDS + 1;
    /// Whether the producer sleeps (`AWAKE`, `PARKED`); on the consumer's
    /// line, which reads it after every release.
    pub(super) const PARKED: usize = super::LINE_WORDS + 2;
}

/// Slot word: nothing at this position yet.
const EMPTY: u64 = 0;
/// Slot word bit of a committed record or wrap marker. The low 32 bits are
/// the record's length ([`WRAP_LEN`] for a wrap marker), the bits from
/// [`LAP_SHIFT`] up the lap of the position it was written for, so that a
/// word left from the previous lap reads as empty without the consumer ever
/// writing to the records.
const COMMITTED: u64 = 1 << 32;
/// The length field of a wrap marker: the record is at offset 0 of the next
/// lap.
const WRAP_LEN: u64 = u32::MAX as u64;
/// Where a slot word's lap starts.
const LAP_SHIFT: u32 = 33;
/// The lap bits a slot word keeps.
const LAP_MASK: u64 = (1 << (64 - LAP_SHIFT)) - 1;
/// Positions beyond this are corruption: a lane moving 100 GB/s reaches it
/// in over a year of nonstop traffic, and arithmetic on it cannot overflow.
const MAX_POSITION: u64 = 1 << 62;
/// A parked flag: nobody sleeps.
const AWAKE: u64 = 0;
/// A parked flag: the sleeper waits on the futex next to it.
#[cfg(not(loom))]
const PARKED: u64 = 1;
/// The consumer's parked flag: it waits on its doorbell (eventfd).
#[cfg(not(loom))]
const PARKED_ASYNC: u64 = 2;

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
    /// capacity.
    #[error("max message size {max_message} does not fit half of the {capacity}-byte capacity")]
    MaxMessage {
        /// The max message size asked for or found.
        max_message: u64,
        /// The capacity.
        capacity: u64,
    },
    /// The lane count is 0 or above [`MAX_LANES`].
    #[error("a ring has 1 to {MAX_LANES} lanes, not {lanes}")]
    Lanes {
        /// The lane count asked for or found.
        lanes: u64,
    },
    /// The region is not aligned to 8 bytes.
    #[error("the region is not 8-byte aligned")]
    Misaligned,
    /// The region is smaller than the ring needs.
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
        version: u64,
        /// The header size found.
        header_size: u64,
    },
    /// The mapping is read-only; ring endpoints write to it.
    #[error("the mapping is read-only; a ring endpoint needs read-write access")]
    ReadOnly,
    /// Every lane has a live producer.
    #[error("all {lanes} producer lanes of the ring are taken")]
    LanesTaken {
        /// The ring's lane count.
        lanes: usize,
    },
    /// The ring has a live consumer already.
    #[error("the ring has a consumer already")]
    ConsumerTaken,
}

/// Why a send or a loan failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No room now; try again after the consumer made progress.
    #[error("the ring is full")]
    Full,
    /// The wait for room ended at its timeout.
    #[error("timed out waiting for room in the ring")]
    TimedOut,
    /// The message is longer than the ring's max message size.
    #[error("message of {len} bytes exceeds the max message size {max}")]
    TooLarge {
        /// Length of the message.
        len: usize,
        /// The ring's max message size.
        max: usize,
    },
    /// The consumer wrote an invalid index or header; the ring is unusable.
    #[error("the ring is corrupted")]
    Corrupted,
}

/// Why a receive failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// The next message is longer than the buffer; it stays in the ring.
    #[error("the next message has {len} bytes, more than the buffer holds")]
    BufferTooSmall {
        /// Length of the next message.
        len: usize,
    },
    /// The wait for a message ended at its timeout.
    #[error("timed out waiting for a message")]
    TimedOut,
    /// A producer wrote an invalid record; the ring is unusable.
    #[error("the ring is corrupted")]
    Corrupted,
}

/// A range outside a loan or a sample.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{len} bytes at offset {offset} are outside the {size}-byte message")]
pub struct OutOfBounds {
    /// Start of the range.
    pub offset: usize,
    /// Length of the range.
    pub len: usize,
    /// Size of the message.
    pub size: usize,
}

/// How a blocking call waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Poll until done or timed out, with no pause between polls: lowest
    /// latency, one core busy (and a hyperthread sibling slowed). A CPU
    /// pause costs up to 30 ns on recent CPUs, and a message arriving during
    /// one waits for it.
    BusyPoll,
    /// Poll this many rounds, each followed by a CPU pause, then sleep on a
    /// futex in the segment until the peer wakes us (it makes the wake
    /// system call only when we sleep).
    SpinThenPark {
        /// Polls before parking.
        spins: u32,
    },
}

impl Wait {
    /// Spin-then-park with a spin bound of 4096 polls: tens of microseconds
    /// to about a hundred, as long as the CPU's pause takes.
    pub const PARK: Self = Self::SpinThenPark { spins: 4096 };

    /// Whether waiting spins at all before it parks.
    #[cfg(not(loom))]
    fn spins(self) -> bool {
        self != Self::SpinThenPark { spins: 0 }
    }
}

/// The validated sizes of a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    capacity: usize,
    max_message: usize,
    lanes: usize,
}

impl RingLayout {
    /// A ring of `lanes` producer lanes (1 for single-producer), each of
    /// `capacity` bytes of records (a power of two, at least
    /// [`MIN_CAPACITY`]), carrying messages of up to `max_message` bytes,
    /// whose record must fit in half the capacity.
    ///
    /// # Errors
    /// [`LayoutError::Capacity`], [`LayoutError::MaxMessage`] or
    /// [`LayoutError::Lanes`].
    pub fn new(capacity: usize, max_message: usize, lanes: usize) -> Result<Self, LayoutError> {
        Self::check(capacity as u64, max_message as u64, lanes as u64)
    }

    /// The largest max message size a lane of `capacity` bytes accepts, if
    /// `capacity` is a power of two of at least [`MIN_CAPACITY`].
    pub fn max_message_for(capacity: usize) -> Option<usize> {
        if capacity < MIN_CAPACITY || !capacity.is_power_of_two() {
            return None;
        }
        Some((capacity / 2 - WORD).min(WRAP_LEN as usize - 1))
    }

    /// Capacity of each lane's records in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Largest message in bytes.
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// Number of producer lanes.
    pub fn lanes(&self) -> usize {
        self.lanes
    }

    /// Bytes of region this ring needs.
    pub fn region_bytes(&self) -> usize {
        HEADER_SIZE + self.lanes * self.lane_stride()
    }

    /// Bytes from one lane's start to the next's.
    fn lane_stride(&self) -> usize {
        LANE_HEADER_SIZE + self.capacity
    }

    /// Validates sizes given or read from (untrusted) shared memory.
    fn check(capacity: u64, max_message: u64, lanes: u64) -> Result<Self, LayoutError> {
        let capacity_err = LayoutError::Capacity { capacity };
        let capacity_usize = usize::try_from(capacity).map_err(|_| capacity_err.clone())?;
        let max = Self::max_message_for(capacity_usize).ok_or(capacity_err.clone())?;
        let max_message = match usize::try_from(max_message) {
            Ok(max_message) if max_message <= max => max_message,
            _ => {
                return Err(LayoutError::MaxMessage {
                    max_message,
                    capacity,
                });
            }
        };
        let lanes = match usize::try_from(lanes) {
            Ok(n @ 1..=MAX_LANES) => n,
            _ => return Err(LayoutError::Lanes { lanes }),
        };
        let bytes = (LANE_HEADER_SIZE + capacity_usize)
            .checked_mul(lanes)
            .and_then(|lanes_bytes| lanes_bytes.checked_add(HEADER_SIZE))
            .filter(|&bytes| isize::try_from(bytes).is_ok());
        match bytes {
            Some(_) => Ok(Self {
                capacity: capacity_usize,
                max_message,
                lanes,
            }),
            None => Err(capacity_err),
        }
    }
}

impl fmt::Display for RingLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} lane(s) of {} bytes, messages up to {} bytes",
            self.lanes, self.capacity, self.max_message
        )
    }
}

/// Bytes a record with a payload of `len` bytes takes, padding included.
/// Callers pass only lengths checked against the max message size (below
/// `u32::MAX`), so this cannot overflow.
#[inline]
fn record_size(len: usize) -> usize {
    (len + WORD + (RECORD_ALIGN - 1)) & !(RECORD_ALIGN - 1)
}

/// Bytes of a range of `len` bytes at lane offset `offset` that lie in the
/// block it starts in: the part copied last (see `Region::copy_from`).
#[cfg(not(loom))]
#[inline]
fn first_block_len(offset: usize, len: usize) -> usize {
    (RECORD_ALIGN - offset % RECORD_ALIGN).min(len)
}

/// Copies `len` bytes, at most a cache line, in the fewest moves: 16
/// bytes at a time, or 8, 4 or 1 below 16, 8 and 4.
///
/// # Safety
/// `src` readable and `dst` writable for `len` bytes, as for
/// `Region::copy_from`.
#[cfg(not(loom))]
#[inline(always)]
unsafe fn copy_within_line(src: *const u8, dst: *mut u8, len: usize) {
    debug_assert!(len <= CACHE_LINE);
    match len {
        // SAFETY: the caller's contract, passed on.
        16.. => unsafe { move_chunks::<u128>(src, dst, len) },
        // SAFETY: as above.
        8..16 => unsafe { move_chunks::<u64>(src, dst, len) },
        // SAFETY: as above.
        4..8 => unsafe { move_chunks::<u32>(src, dst, len) },
        // SAFETY: as above.
        _ => unsafe { move_chunks::<u8>(src, dst, len) },
    }
}

/// Moves `len` bytes, none or at least a `T` and at most four, as
/// unaligned `T`s: the last `T` first, then `T`s from the start, the last of
/// which may overlap it.
///
/// # Safety
/// As for [`copy_within_line`].
#[cfg(not(loom))]
#[inline(always)]
unsafe fn move_chunks<T: Copy>(src: *const u8, dst: *mut u8, len: usize) {
    let size = size_of::<T>();
    if len < size {
        return;
    }
    let move_at = |at: usize| {
        // SAFETY: `at + size <= len` at every call below, so the `T` is
        // inside the readable range at `src` (the caller's contract).
        let value = unsafe { src.wrapping_add(at).cast::<T>().read_unaligned() };
        // SAFETY: as above, inside the writable range at `dst`.
        unsafe { dst.wrapping_add(at).cast::<T>().write_unaligned(value) };
    };
    debug_assert!(len <= 4 * size);
    move_at(len - size);
    // Unrolled: as a loop, this becomes a call to `memmove`.
    for at in [0, size, 2 * size] {
        if at + size < len {
            move_at(at);
        }
    }
}

/// Where the payload of a message of `len` bytes starts in its record:
/// after the slot word, or line-aligned for a message longer than a block
/// whose record has room for that (see [Layout](self#layout)).
#[inline]
fn payload_offset(len: usize) -> usize {
    if len > RECORD_ALIGN - WORD && ALIGNED_PAYLOAD + len <= record_size(len) {
        ALIGNED_PAYLOAD
    } else {
        WORD
    }
}

/// A ring region: where it is, its validated layout, and what keeps it
/// mapped.
#[derive(Debug)]
struct Region {
    base: NonNull<u8>,
    layout: RingLayout,
    /// Keeps a mapping alive for as long as the endpoint; `None` when the
    /// caller of an `unsafe` attach promised the region's lifetime instead.
    _mapping: Option<Arc<Mapping>>,
}

// SAFETY: a region is a pointer into memory that stays valid while the
// endpoint holding it lives (contract of the attach functions, or the owned
// mapping), whatever thread uses it, and is touched only through atomics and
// copies the protocol makes exclusive.
unsafe impl Send for Region {}

impl Region {
    /// Checks the region's alignment, size and header.
    ///
    /// # Safety
    /// As for [`Producer::attach`].
    unsafe fn attach(
        base: NonNull<u8>,
        len: usize,
        mapping: Option<Arc<Mapping>>,
    ) -> Result<Self, LayoutError> {
        if !base.cast::<AtomicU64>().is_aligned() {
            return Err(LayoutError::Misaligned);
        }
        if len < HEADER_SIZE {
            return Err(LayoutError::RegionTooSmall {
                needed: HEADER_SIZE,
                len,
            });
        }
        let unchecked = Self {
            base,
            layout: RingLayout {
                capacity: 0,
                max_message: 0,
                lanes: 0,
            },
            _mapping: mapping,
        };
        // ORDERING: Acquire; pairs with the Release store of the magic in
        // `init`, so the configuration written before it is visible here.
        let found = unchecked.word(header::MAGIC).load(Ordering::Acquire);
        // Before this endpoint's first publish, so sleepers' barriers reach it.
        #[cfg(not(loom))]
        barrier::register();
        if found != MAGIC {
            return Err(LayoutError::Magic { found });
        }
        // ORDERING: Relaxed for the configuration: ordered by the Acquire
        // load of the magic above.
        let config = |index| unchecked.word(index).load(Ordering::Relaxed);
        let version = config(header::VERSION);
        let header_size = config(header::HEADER_SIZE);
        if version != u64::from(LAYOUT_VERSION) || header_size != HEADER_SIZE as u64 {
            return Err(LayoutError::Version {
                version,
                header_size,
            });
        }
        let layout = RingLayout::check(
            config(header::CAPACITY),
            config(header::MAX_MESSAGE),
            config(header::LANES),
        )?;
        if len < layout.region_bytes() {
            return Err(LayoutError::RegionTooSmall {
                needed: layout.region_bytes(),
                len,
            });
        }
        Ok(Self {
            layout,
            ..unchecked
        })
    }

    /// The ring in a whole writable mapping, which the region keeps alive.
    fn from_mapping(mapping: Arc<Mapping>) -> Result<Self, LayoutError> {
        let base = mapping_base(&mapping)?;
        let len = mapping.len();
        // SAFETY: the region is the whole mapping, kept alive by the `Arc`
        // the region holds; `Mapping` never hands out references to its
        // memory, so within this process it is accessed only through ring
        // endpoints and `Mapping`'s atomic copies (which callers do not mix
        // with a ring: the SDK does not expose a ring's mapping).
        unsafe { Self::attach(base, len, Some(mapping)) }
    }

    /// The 8-byte word at word index `index` of the region.
    ///
    /// Words are addressed by index, not byte offset, so that under loom a
    /// region made of loom's (larger) atomics is addressed the same way.
    #[inline]
    fn word(&self, index: usize) -> &AtomicU64 {
        // Every index the module computes is below
        // `region_bytes / 8` of a layout checked against the region's length
        // (the header's words below HEADER_SIZE / 8 are checked against it
        // first), the base is aligned for `AtomicU64` (checked), the memory is
        // valid while `self` lives and accessed in this process only through
        // atomics of this size at this address or copies the protocol makes
        // exclusive (contract of attach).
        let ptr = self.base.cast::<AtomicU64>().as_ptr().wrapping_add(index);
        // SAFETY: see above; `ptr` is in bounds, aligned and valid.
        unsafe { &*ptr }
    }

    /// The futex word in the low half of word `index`. Only ever accessed as
    /// 32 bits, so no mixed-size access races on it.
    #[cfg(not(loom))]
    #[inline]
    fn futex_word(&self, index: usize) -> &AtomicU32 {
        let ptr = self.base.cast::<AtomicU64>().as_ptr().wrapping_add(index);
        // SAFETY: as in `word`, in bounds, aligned (an 8-aligned address is
        // 4-aligned) and valid while `self` lives; this half-word is only
        // accessed as an `AtomicU32` (the other half is unused).
        unsafe { AtomicU32::from_ptr(ptr.cast()) }
    }

    /// Word index of lane `lane`'s header word `index`.
    #[inline]
    fn lane_word(&self, lane: usize, index: usize) -> usize {
        (HEADER_SIZE + lane * self.layout.lane_stride()) / WORD + index
    }

    /// Byte offset in the region of offset `offset` of lane `lane`'s records.
    #[inline]
    fn record_byte(&self, lane: usize, offset: usize) -> usize {
        HEADER_SIZE + lane * self.layout.lane_stride() + LANE_HEADER_SIZE + offset
    }

    /// The slot word at offset `offset` (8-aligned, below the capacity) of
    /// lane `lane`.
    #[inline]
    fn slot(&self, lane: usize, offset: usize) -> &AtomicU64 {
        debug_assert!(offset % WORD == 0 && offset < self.layout.capacity);
        self.word(self.record_byte(lane, offset) / WORD)
    }

    /// The slot word committing a record of `len` bytes (or a wrap marker,
    /// `len` = [`WRAP_LEN`]) at `position`.
    #[inline]
    fn committed(&self, position: u64, len: u64) -> u64 {
        self.lap(position) << LAP_SHIFT | COMMITTED | len
    }

    /// What slot word `word`, found at `position`, says.
    #[inline]
    fn decode(&self, word: u64, position: u64) -> Slot {
        if word == EMPTY {
            return Slot::Empty;
        }
        if word & COMMITTED == 0 {
            return Slot::Corrupt;
        }
        let capacity = self.layout.capacity as u64;
        let lap = word >> LAP_SHIFT;
        if lap == self.lap(position) {
            match word & WRAP_LEN {
                WRAP_LEN => Slot::Wrap,
                // At most `u32::MAX`, which fits `usize`.
                len => Slot::Record(len as usize),
            }
        } else if position >= capacity && lap == self.lap(position - capacity) {
            // Committed a lap ago and consumed since.
            Slot::Empty
        } else {
            Slot::Corrupt
        }
    }

    /// The lap of a position, as slot words keep it.
    #[inline]
    fn lap(&self, position: u64) -> u64 {
        (position >> self.layout.capacity.trailing_zeros()) & LAP_MASK
    }

    /// Offset in a lane of a position.
    #[inline]
    fn offset(&self, position: u64) -> usize {
        // The mask is below the capacity, which fits `usize`: no truncation.
        #[allow(clippy::cast_possible_truncation)]
        let offset = (position & (self.layout.capacity as u64 - 1)) as usize;
        offset
    }

    /// Address of offset `offset` of lane `lane`'s records.
    #[cfg(not(loom))]
    #[inline]
    fn record_ptr(&self, lane: usize, offset: usize) -> *mut u8 {
        self.base
            .as_ptr()
            .wrapping_add(self.record_byte(lane, offset))
    }

    /// Copies `src` into lane `lane` at offset `offset`; the range must be
    /// inside the lane's records and given to this side by the protocol.
    #[inline(always)]
    fn copy_in(&self, lane: usize, offset: usize, src: &[u8]) {
        debug_assert!(offset + src.len() <= self.layout.capacity);
        #[cfg(not(loom))]
        // SAFETY: `src` is private memory, readable for its length; the
        // destination is as the caller promises.
        unsafe {
            self.copy_from(lane, offset, src.as_ptr(), src.len());
        }
        #[cfg(loom)]
        for (i, byte) in src.iter().enumerate() {
            let at = self.record_byte(lane, offset + i);
            let word = self.word(at / WORD);
            let mut bytes = word.load(Ordering::Relaxed).to_ne_bytes();
            bytes[at % WORD] = *byte;
            word.store(u64::from_ne_bytes(bytes), Ordering::Relaxed);
        }
    }

    /// Copies `len` bytes from `src` into lane `lane` at offset `offset`.
    ///
    /// The consumer polls the lines of the block a record starts in, so the
    /// producer's stores there wait until those lines are its own again, and
    /// every later store waits behind them (stores retire in order): the
    /// fewer stores in flight per message, the more messages in flight. So
    /// the part of the range in its first block is copied last, the piece
    /// in the block's first line (the slot word's) last of all, just
    /// before the commit, each in a few 16-byte moves (`memcpy` writes a
    /// 64-byte payload 8 bytes into a block with one vector store spanning
    /// both lines). Measured here side by side, with the hot path inlined
    /// (each call pushes registers: more stores) and `head` published every
    /// few KiB instead of every message: 64-byte messages stream
    /// 1.5-1.9x faster while cross-core traffic bounds them; 64 KiB
    /// messages a few percent faster.
    ///
    /// # Safety
    /// `src` is readable for `len` bytes; the destination range is inside
    /// the lane's records and given to this side by the protocol. The two
    /// do not overlap, unless a third party forged the indices of the ring
    /// `src` points into: then the bytes copied are garbage, but every
    /// access stays inside the two ranges.
    #[cfg(not(loom))]
    #[inline(always)]
    unsafe fn copy_from(&self, lane: usize, offset: usize, src: *const u8, len: usize) {
        let head = first_block_len(offset, len);
        let dst = self.record_ptr(lane, offset);
        if len > head {
            let (src, dst) = (src.wrapping_add(head), dst.wrapping_add(head));
            // SAFETY: the range after its first block, inside both ranges
            // (contract); a `memmove`, defined even for forged overlaps.
            unsafe { std::ptr::copy(src, dst, len - head) };
        }
        let in_first_line = if offset % RECORD_ALIGN < CACHE_LINE {
            (CACHE_LINE - offset % CACHE_LINE).min(head)
        } else {
            0
        };
        let (second_src, second_dst) = (
            src.wrapping_add(in_first_line),
            dst.wrapping_add(in_first_line),
        );
        // SAFETY: the first block's part, split at its line boundary,
        // inside both ranges (contract), each piece within one line.
        unsafe { copy_within_line(second_src, second_dst, head - in_first_line) };
        // SAFETY: as above.
        unsafe { copy_within_line(src, dst, in_first_line) };
    }

    /// Copies `dst.len()` bytes out of lane `lane` at offset `offset`; the
    /// range must be inside the lane's records.
    #[inline]
    fn copy_out(&self, lane: usize, offset: usize, dst: &mut [u8]) {
        debug_assert!(offset + dst.len() <= self.layout.capacity);
        #[cfg(not(loom))]
        {
            let src = self.record_ptr(lane, offset);
            // SAFETY: inside the lane's records (callers check against the
            // capacity) and valid while `self` lives; `dst` is private memory,
            // so the two do not overlap. A hostile producer writing meanwhile
            // changes only the bytes copied, each read once.
            unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
        }
        #[cfg(loom)]
        for (i, byte) in dst.iter_mut().enumerate() {
            let at = self.record_byte(lane, offset + i);
            *byte = self.word(at / WORD).load(Ordering::Relaxed).to_ne_bytes()[at % WORD];
        }
    }
}

/// What a slot word says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// Nothing committed at this position yet.
    Empty,
    /// A record with a payload of this many bytes.
    Record(usize),
    /// A wrap marker: the record is at the start of the next lap.
    Wrap,
    /// No valid slot word.
    Corrupt,
}

/// Writes a fresh ring header and empty lanes at the start of a region.
///
/// The configuration is written first and [`MAGIC`] last, with `Release`,
/// so an attach that sees the magic sees the rest. Record memory must be
/// zero (a fresh memfd or heap allocation is); the lane headers are reset.
///
/// # Errors
/// [`LayoutError::Misaligned`] or [`LayoutError::RegionTooSmall`] if the
/// region cannot hold `layout`.
///
/// # Safety
/// - `ptr..ptr + len` must be valid for reads and writes for the whole call.
/// - Within this process, nothing may access that memory concurrently other
///   than through this module; no `&`/`&mut` reference to it may be alive.
pub unsafe fn init(ptr: NonNull<u8>, len: usize, layout: RingLayout) -> Result<(), LayoutError> {
    if !ptr.cast::<AtomicU64>().is_aligned() {
        return Err(LayoutError::Misaligned);
    }
    if len < layout.region_bytes() {
        return Err(LayoutError::RegionTooSmall {
            needed: layout.region_bytes(),
            len,
        });
    }
    let region = Region {
        base: ptr,
        layout,
        _mapping: None,
    };
    // ORDERING: Relaxed for the configuration and the lane words: published
    // by the Release store of the magic below.
    region.word(header::MAGIC).store(0, Ordering::Relaxed);
    for (index, value) in [
        (header::VERSION, u64::from(LAYOUT_VERSION)),
        (header::HEADER_SIZE, HEADER_SIZE as u64),
        (header::CAPACITY, layout.capacity as u64),
        (header::MAX_MESSAGE, layout.max_message as u64),
        (header::LANES, layout.lanes as u64),
        (header::WAKE, 0),
        (header::PARKED, AWAKE),
        (header::CONSUMER, 0),
    ] {
        region.word(index).store(value, Ordering::Relaxed);
    }
    for lane_index in 0..layout.lanes {
        for index in [
            lane::HEAD,
            lane::OWNER,
            lane::TAIL,
            lane::SPACE,
            lane::PARKED,
        ] {
            region
                .word(region.lane_word(lane_index, index))
                .store(0, Ordering::Relaxed);
        }
    }
    // ORDERING: Release; pairs with the Acquire load of the magic in
    // `Region::attach`, publishing the stores above.
    region.word(header::MAGIC).store(MAGIC, Ordering::Release);
    Ok(())
}

/// Writes a fresh ring into a whole mapping (see [`init`]).
///
/// # Errors
/// [`LayoutError::ReadOnly`], or as for [`init`].
pub fn init_mapping(mapping: &Mapping, layout: RingLayout) -> Result<(), LayoutError> {
    let base = mapping_base(mapping)?;
    // SAFETY: the mapping is valid and writable for the call; this module
    // accesses it only through atomics and exclusive copies, and `Mapping`
    // never hands out references to its memory.
    unsafe { init(base, mapping.len(), layout) }
}

/// The start of a writable mapping.
fn mapping_base(mapping: &Mapping) -> Result<NonNull<u8>, LayoutError> {
    if mapping.access() != Access::ReadWrite {
        return Err(LayoutError::ReadOnly);
    }
    NonNull::new(mapping.as_ptr()).ok_or(LayoutError::Misaligned)
}

/// Who holds an endpoint role (a lane's producer, the consumer), in the
/// role's owner word: 0 when free, else [`Owner::token`] of a process. The
/// token packs the pid (22 bits, `PID_MAX_LIMIT`), the low 20 bits of the
/// process's start time and the low 22 bits of its pid namespace's inode, so
/// a reused pid or a process of another namespace is not taken for the owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Owner {
    pid: u64,
    start: u64,
    namespace: u64,
}

impl Owner {
    const PID_BITS: u32 = 22;
    const START_BITS: u32 = 20;

    /// This process.
    fn current() -> Self {
        let pid = std::process::id();
        #[cfg(not(loom))]
        let (start, namespace) = (
            crate::peer::process_start_time(pid).unwrap_or(0),
            pid_namespace(),
        );
        #[cfg(loom)]
        let (start, namespace) = (0, 0);
        Self::masked(u64::from(pid), start, namespace)
    }

    fn masked(pid: u64, start: u64, namespace: u64) -> Self {
        let mask = |bits: u32| (1_u64 << bits) - 1;
        Self {
            pid: pid & mask(Self::PID_BITS),
            start: start & mask(Self::START_BITS),
            namespace: namespace & mask(64 - Self::PID_BITS - Self::START_BITS),
        }
    }

    fn token(self) -> u64 {
        self.namespace << (Self::PID_BITS + Self::START_BITS)
            | self.start << Self::PID_BITS
            | self.pid
    }

    #[cfg(not(loom))]
    fn from_token(token: u64) -> Self {
        Self::masked(
            token,
            token >> Self::PID_BITS,
            token >> (Self::PID_BITS + Self::START_BITS),
        )
    }

    /// Whether the process behind `token` is surely gone, so its role can be
    /// taken over: its pid is free, or names a process started at another
    /// time, in this pid namespace. Anything else (another namespace, an
    /// unreadable `/proc`) reads as alive, which only keeps the role taken.
    #[cfg(not(loom))]
    fn is_gone(token: u64) -> bool {
        let owner = Self::from_token(token);
        let here = Self::current();
        // A part unknown to the owner or to us (no `/proc`) cannot be
        // compared: alive.
        if [
            owner.pid,
            owner.start,
            owner.namespace,
            here.start,
            here.namespace,
        ]
        .contains(&0)
            || owner.namespace != here.namespace
        {
            return false;
        }
        let Some(pid) = i32::try_from(owner.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        else {
            return false;
        };
        // The kernel says whether the pid exists, even where `/proc` hides
        // other users' processes; `/proc` then says whether it is the same.
        if rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH) {
            return true;
        }
        let pid = pid.as_raw_pid().unsigned_abs();
        crate::peer::process_start_time(pid)
            .is_ok_and(|start| Self::masked(owner.pid, start, owner.namespace) != owner)
    }

    /// Under loom there are no other processes.
    #[cfg(loom)]
    fn is_gone(_token: u64) -> bool {
        false
    }

    /// Takes the role in `word` for this process if it is free or its
    /// holder is gone; returns this process's token if so.
    fn claim(word: &AtomicU64) -> Option<u64> {
        let token = Self::current().token();
        // ORDERING: Acquire on success; pairs with the Release store of 0 in
        // `Owner::release`, so the previous holder's index is visible.
        match word.compare_exchange(0, token, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => Some(token),
            Err(other) if Self::is_gone(other) => word
                // ORDERING: Acquire, as above (a dead holder never released).
                .compare_exchange(other, token, Ordering::Acquire, Ordering::Relaxed)
                .ok()
                .map(|_| token),
            Err(_) => None,
        }
    }

    /// Gives the role in `word` back, if `token` still holds it; returns
    /// whether it did.
    fn release(word: &AtomicU64, token: u64) -> bool {
        // ORDERING: Release; pairs with the Acquire claim in `Owner::claim`,
        // handing this holder's index to the next one.
        word.compare_exchange(token, 0, Ordering::Release, Ordering::Relaxed)
            .is_ok()
    }
}

/// A process's token in a ring's role words (a producer lane's owner, the
/// consumer), as a supervisor outside its pid namespace computes it: from
/// its pid as its own namespace numbers it, its start time (clock ticks
/// after boot) and its pid namespace's inode (see
/// [`peer::namespaced_pid`](crate::peer::namespaced_pid)). `None` if a part
/// is unknown (0), as a process without a readable `/proc` writes it: such
/// a token does not tell it from another process.
#[cfg(not(loom))]
pub fn owner_token(pid: u32, start_time: u64, pid_namespace: u64) -> Option<u64> {
    let owner = Owner::masked(u64::from(pid), start_time, pid_namespace);
    (owner.pid != 0 && owner.start != 0 && owner.namespace != 0).then(|| owner.token())
}

/// Frees the roles the process of `token` (see [`owner_token`]) still holds
/// in the ring in `mapping`: producer lanes and the consumer. For a
/// supervisor that knows the process is gone (the agent learns it from a
/// pidfd): an attaching process tells a gone holder only in its own pid
/// namespace, so without this a producer of another namespace that dies
/// keeps its lane, and a consumer the ring. Returns how many roles it
/// freed; the next process to claim one resumes it as after any holder.
/// The caller must be sure: a live holder's role would go to a second
/// process.
///
/// # Errors
/// As for [`Producer::from_mapping`], if the mapping holds no valid ring.
#[cfg(not(loom))]
pub fn release_roles(mapping: Arc<Mapping>, token: u64) -> Result<usize, LayoutError> {
    let region = Region::from_mapping(mapping)?;
    let lanes = (0..region.layout.lanes).map(|lane| region.lane_word(lane, lane::OWNER));
    Ok(lanes
        .chain([header::CONSUMER])
        .filter(|&index| Owner::release(region.word(index), token))
        .count())
}

/// The inode of this process's pid namespace (0 if unreadable).
#[cfg(not(loom))]
fn pid_namespace() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").map_or(0, |meta| meta.ino())
}

/// The sending side of one lane of a ring.
#[derive(Debug)]
pub struct Producer {
    region: Region,
    lane: usize,
    /// Our index: the only copy we trust.
    head: u64,
    /// `head` as last published in the lane: every [`head_interval`] bytes
    /// and when we let go of it, not every commit, which would add a store
    /// to each (an heir finds the records committed since, see `resume`).
    published_head: u64,
    /// The consumer's index as last loaded and validated.
    tail_cache: u64,
    corrupted: bool,
    /// Our token in the lane's `owner` word.
    token: u64,
    /// Rung when a commit finds the consumer parked on it.
    #[cfg(not(loom))]
    doorbell: Option<OwnedFd>,
}

impl Producer {
    /// Attaches a producer to a free lane of an initialised ring region,
    /// after checking its alignment, size and header. A lane whose producer
    /// process is gone is taken over, from the last record it committed.
    ///
    /// # Errors
    /// A [`LayoutError`] naming the first check that failed, or
    /// [`LayoutError::LanesTaken`].
    ///
    /// # Safety
    /// - `ptr..ptr + len` must be valid for reads and writes (allocated, or
    ///   mapped read-write and sealed against shrinking) until the returned
    ///   producer is dropped.
    /// - Within this process, while the producer lives, nothing may access
    ///   that memory other than ring endpoints; no `&`/`&mut` reference to it
    ///   may be alive. Other processes may write anything: that is checked.
    pub unsafe fn attach(ptr: NonNull<u8>, len: usize) -> Result<Self, LayoutError> {
        // SAFETY: the caller upholds the same contract.
        let region = unsafe { Region::attach(ptr, len, None) }?;
        Self::claim(region)
    }

    /// Attaches a producer to a free lane of the ring in a mapping, which
    /// it keeps alive.
    ///
    /// # Errors
    /// As for [`attach`](Self::attach), and [`LayoutError::ReadOnly`].
    pub fn from_mapping(mapping: Arc<Mapping>) -> Result<Self, LayoutError> {
        Self::claim(Region::from_mapping(mapping)?)
    }

    /// Claims a free lane, or one whose owner is gone.
    fn claim(region: Region) -> Result<Self, LayoutError> {
        for lane_index in 0..region.layout.lanes {
            let owner = region.word(region.lane_word(lane_index, lane::OWNER));
            if let Some(token) = Owner::claim(owner) {
                return Ok(Self::resume(region, lane_index, token));
            }
        }
        Err(LayoutError::LanesTaken {
            lanes: region.layout.lanes,
        })
    }

    /// Starts on a claimed lane where its last producer stopped.
    ///
    /// That producer may have committed records since it last published
    /// `head`, and may have left partial records in free space; so the
    /// committed records from `head` on are skipped, and the free space's
    /// slot words are cleared.
    fn resume(region: Region, lane_index: usize, token: u64) -> Self {
        let mut producer = Self {
            lane: lane_index,
            head: 0,
            published_head: 0,
            tail_cache: 0,
            corrupted: false,
            token,
            #[cfg(not(loom))]
            doorbell: None,
            region,
        };
        // ORDERING: Acquire; pairs with the Release store in `publish_head`,
        // so the records before it are complete.
        let head = producer.lane_word(lane::HEAD).load(Ordering::Acquire);
        let tail = producer.load_tail();
        if head > MAX_POSITION || tail > MAX_POSITION || tail % RECORD_ALIGN as u64 != 0 {
            producer.corrupted = true;
            return producer;
        }
        // `head` is published every few KiB, so records may have
        // been committed past it (or past the consumer's `tail`, if that is
        // further on): skip them. The producer makes the slot after each
        // record read as empty before committing it, so the first slot that
        // holds no committed record or wrap marker of its position's lap
        // ends them. When the lane is full, the slot at `head` is the
        // consumer's next record. Each step moves at least a block.
        let mut head = (head & !(RECORD_ALIGN as u64 - 1)).max(tail);
        let capacity = producer.region.layout.capacity;
        for _ in 0..=capacity / RECORD_ALIGN {
            if head >= tail + capacity as u64 {
                break;
            }
            let offset = producer.region.offset(head);
            // ORDERING: Acquire; pairs with the committing store in
            // `Loan::commit`.
            let word = producer
                .region
                .slot(lane_index, offset)
                .load(Ordering::Acquire);
            head += match producer.region.decode(word, head) {
                Slot::Wrap => (capacity - offset) as u64,
                Slot::Record(len) if len <= producer.region.layout.max_message => {
                    record_size(len) as u64
                }
                Slot::Empty | Slot::Record(_) | Slot::Corrupt => break,
            };
        }
        if head - tail > capacity as u64 {
            producer.corrupted = true;
            return producer;
        }
        producer.head = head;
        producer.tail_cache = tail;
        // A later heir resumes from here, not from before the records
        // skipped above.
        producer.publish_head();
        // Clear leftovers in free space, keeping the slot at `head`.
        let mut position = head + RECORD_ALIGN as u64;
        while position < tail + capacity as u64 {
            let offset = producer.region.offset(position);
            // ORDERING: Relaxed; free space, published to the consumer by our
            // next commit's Release store.
            producer
                .region
                .slot(lane_index, offset)
                .store(EMPTY, Ordering::Relaxed);
            position += RECORD_ALIGN as u64;
        }
        // The last producer may have died between a commit and its wake-up.
        producer.wake_consumer();
        producer
    }

    /// Rings `doorbell` (an eventfd) when a commit finds the consumer
    /// waiting on it asynchronously (see [`Consumer::park_async`]).
    #[cfg(not(loom))]
    pub fn set_doorbell(&mut self, doorbell: OwnedFd) {
        self.doorbell = Some(doorbell);
    }

    /// The ring's sizes.
    pub fn layout(&self) -> RingLayout {
        self.region.layout
    }

    /// The lane this producer writes.
    pub fn lane(&self) -> usize {
        self.lane
    }

    /// Loans space for a message of `len` bytes, without waiting: write it
    /// in place, then [`commit`](Loan::commit). Nothing is sent if the loan
    /// is dropped uncommitted.
    ///
    /// # Errors
    /// [`SendError::TooLarge`] above the max message size,
    /// [`SendError::Full`] if there is no room now,
    /// [`SendError::Corrupted`] if the consumer broke the ring (then on every
    /// later call too).
    #[inline(always)]
    pub fn try_loan(&mut self, len: usize) -> Result<Loan<'_>, SendError> {
        let plan = self.plan(len)?;
        Ok(Loan {
            producer: self,
            plan,
        })
    }

    /// Copies `data` into the ring as one message, without waiting.
    ///
    /// # Errors
    /// As for [`try_loan`](Self::try_loan).
    #[inline(always)]
    pub fn try_send(&mut self, data: &[u8]) -> Result<(), SendError> {
        let mut loan = self.try_loan(data.len())?;
        loan.payload_in(0, data);
        loan.commit();
        Ok(())
    }

    /// Sends as many of `messages` as fit now, in order, and returns how
    /// many; a message that does not fit ends the batch.
    ///
    /// # Errors
    /// [`SendError::TooLarge`] or [`SendError::Corrupted`] for the first
    /// message that is, after sending the ones before it (their count is
    /// lost with the error, so check sizes first when that matters).
    pub fn try_send_batch<'m>(
        &mut self,
        messages: impl IntoIterator<Item = &'m [u8]>,
    ) -> Result<usize, SendError> {
        let mut sent = 0;
        for message in messages {
            match self.try_send(message) {
                Ok(()) => sent += 1,
                Err(SendError::Full) => break,
                Err(error) => return Err(error),
            }
        }
        Ok(sent)
    }

    /// Plans a record of `len` bytes in free space.
    #[inline(always)]
    fn plan(&mut self, len: usize) -> Result<Plan, SendError> {
        if self.corrupted {
            return Err(SendError::Corrupted);
        }
        let layout = self.region.layout;
        if len > layout.max_message {
            return Err(SendError::TooLarge {
                len,
                max: layout.max_message,
            });
        }
        let size = record_size(len);
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
        Ok(Plan {
            start: if wrap { 0 } else { offset },
            wrap_at: wrap.then_some(offset),
            len,
            new_head: self.head + need,
        })
    }

    /// Free bytes by the cached `tail` (never more than `capacity` apart).
    #[inline]
    fn free(&self) -> u64 {
        self.region.layout.capacity as u64 - (self.head - self.tail_cache)
    }

    #[inline]
    fn lane_word(&self, index: usize) -> &AtomicU64 {
        self.region.word(self.region.lane_word(self.lane, index))
    }

    /// The consumer's `tail`.
    #[inline]
    fn load_tail(&self) -> u64 {
        // ORDERING: Acquire; pairs with the Release store of `tail` in
        // `Consumer::publish_tail`, so the consumer's reads of the released
        // space happen before we overwrite it.
        self.lane_word(lane::TAIL).load(Ordering::Acquire)
    }

    /// Publishes `head` for a producer taking the lane over after us, and
    /// for a consumer keeping behind us.
    fn publish_head(&mut self) {
        // ORDERING: Release; pairs with the Acquire load in `resume`, so the
        // records before it are complete for an heir.
        self.lane_word(lane::HEAD)
            .store(self.head, Ordering::Release);
        self.published_head = self.head;
    }

    /// Reloads the consumer's index and checks it and the magic.
    fn refresh_tail(&mut self) -> Result<(), SendError> {
        let tail = self.load_tail();
        // ORDERING: Relaxed; a consistency check of a word written once.
        let magic = self.region.word(header::MAGIC).load(Ordering::Relaxed);
        if magic != MAGIC
            || tail < self.tail_cache
            || tail % RECORD_ALIGN as u64 != 0
            || tail > self.head
        {
            return Err(self.corrupt());
        }
        self.tail_cache = tail;
        Ok(())
    }

    fn corrupt(&mut self) -> SendError {
        self.corrupted = true;
        SendError::Corrupted
    }

    /// Wakes the consumer if it parked; called after every commit.
    #[inline(always)]
    fn wake_consumer(&self) {
        #[cfg(not(loom))]
        {
            barrier::publisher();
            let parked = self.region.word(header::PARKED);
            // ORDERING: Relaxed; the barrier above orders it after our commit
            // against the consumer's flag store (see `barrier`). Exchanged
            // back to AWAKE so that one producer wakes it, not every one, and
            // only by a producer that can (an async park needs the doorbell).
            let how = parked.load(Ordering::Relaxed);
            let take = |how| {
                // ORDERING: Relaxed; as above.
                parked
                    .compare_exchange(how, AWAKE, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            };
            match how {
                PARKED if take(PARKED) => {
                    let wake = self.region.futex_word(header::WAKE);
                    // ORDERING: Release; pairs with the Acquire load in
                    // `Consumer::park`, so a sleeper that read the old value
                    // is woken or does not sleep.
                    wake.fetch_add(1, Ordering::Release);
                    futex::wake(wake, 1);
                }
                PARKED_ASYNC => {
                    if let Some(doorbell) = &self.doorbell {
                        if take(PARKED_ASYNC) {
                            ring_doorbell(doorbell.as_fd());
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(not(loom))]
impl Producer {
    /// Loans space for a message of `len` bytes, waiting for room as
    /// `wait` says, up to `timeout` (`None`: no limit).
    ///
    /// # Errors
    /// As for [`try_loan`](Self::try_loan), with [`SendError::TimedOut`]
    /// instead of `Full`.
    #[inline(always)]
    pub fn loan(
        &mut self,
        len: usize,
        wait: Wait,
        timeout: Option<Duration>,
    ) -> Result<Loan<'_>, SendError> {
        let plan = match self.plan(len) {
            Err(SendError::Full) => self.wait_for_room(len, wait, timeout)?,
            other => other?,
        };
        Ok(Loan {
            producer: self,
            plan,
        })
    }

    /// The slow path of [`loan`](Self::loan): the lane was full.
    fn wait_for_room(
        &mut self,
        len: usize,
        wait: Wait,
        timeout: Option<Duration>,
    ) -> Result<Plan, SendError> {
        let mut waiter = Waiter::new(wait, timeout);
        loop {
            match waiter.next() {
                Step::Poll => {}
                Step::Spin => std::hint::spin_loop(),
                Step::Park => self.park(&waiter.deadline),
                Step::TimedOut => return Err(SendError::TimedOut),
            }
            match self.plan(len) {
                Err(SendError::Full) => {}
                other => return other,
            }
        }
    }

    /// Copies `data` into the ring as one message, waiting for room as
    /// [`loan`](Self::loan) does.
    ///
    /// # Errors
    /// As for [`loan`](Self::loan).
    #[inline]
    pub fn send(
        &mut self,
        data: &[u8],
        wait: Wait,
        timeout: Option<Duration>,
    ) -> Result<(), SendError> {
        let mut loan = self.loan(data.len(), wait, timeout)?;
        loan.payload_in(0, data);
        loan.commit();
        Ok(())
    }

    /// Sleeps until the consumer releases space or the deadline passes.
    fn park(&mut self, deadline: &Deadline) {
        let space = self
            .region
            .futex_word(self.region.lane_word(self.lane, lane::SPACE));
        // ORDERING: Acquire; pairs with the Release increment in
        // `Consumer::publish_tail`.
        let seq = space.load(Ordering::Acquire);
        let parked = self.lane_word(lane::PARKED);
        // ORDERING: Relaxed; ordered before the `tail` load below by the
        // sleeper barrier (see `barrier`).
        parked.store(PARKED, Ordering::Relaxed);
        let bounded = !barrier::sleeper();
        if self.load_tail() == self.tail_cache {
            let _ = futex::wait_until(space, seq, deadline.for_sleep(bounded));
        }
        // ORDERING: Relaxed; only a hint for the consumer's next release.
        parked.store(AWAKE, Ordering::Relaxed);
    }
}

/// Checks that `fd` is an eventfd, the only kind of fd a ring's doorbell
/// may be (a pipe or a socket in its place would be written to or waited
/// on). All eventfds share one anonymous inode, so which one cannot be told.
///
/// # Errors
/// What the fd is instead, as `/proc/self/fd` names it (or why that could
/// not be read).
#[cfg(not(loom))]
pub fn check_doorbell(fd: std::os::fd::BorrowedFd<'_>) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    match std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
        Ok(target) if target.as_os_str() == "anon_inode:[eventfd]" => Ok(()),
        Ok(target) => Err(target.to_string_lossy().into_owned()),
        Err(err) => Err(err.to_string()),
    }
}

/// Adds 1 to an eventfd doorbell without ever blocking: the description is
/// shared with every holder, any of which may have cleared `O_NONBLOCK`, so
/// it is set again first (a wake is pending anyway when the counter is full
/// and the write fails with `EAGAIN`).
#[cfg(not(loom))]
fn ring_doorbell(doorbell: std::os::fd::BorrowedFd<'_>) {
    use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
    if let Ok(flags) = fcntl_getfl(doorbell) {
        if !flags.contains(OFlags::NONBLOCK) {
            let _ = fcntl_setfl(doorbell, flags | OFlags::NONBLOCK);
        }
    }
    let _ = rustix::io::write(doorbell, &1_u64.to_ne_bytes());
}

/// Where a loaned record goes.
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// Offset of the record's slot word.
    start: usize,
    /// Offset of the wrap marker, if the record goes to the next lap.
    wrap_at: Option<usize>,
    /// Payload length.
    len: usize,
    /// `head` once committed.
    new_head: u64,
}

impl Plan {
    /// Offset of the payload's first byte in the lane.
    #[inline(always)]
    fn payload(&self) -> usize {
        self.start + payload_offset(self.len)
    }
}

/// Space loaned for one message: write it in place, then
/// [`commit`](Self::commit). Dropping it uncommitted sends nothing.
#[derive(Debug)]
#[must_use = "a loan sends nothing until committed"]
pub struct Loan<'a> {
    producer: &'a mut Producer,
    plan: Plan,
}

impl Loan<'_> {
    /// Length of the message in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.plan.len
    }

    /// Whether the message is empty.
    pub fn is_empty(&self) -> bool {
        self.plan.len == 0
    }

    /// Writes `data` at `offset` in the message.
    ///
    /// # Errors
    /// [`OutOfBounds`] if the range is not inside the message.
    #[inline]
    pub fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<(), OutOfBounds> {
        check_range(offset, data.len(), self.plan.len)?;
        self.payload_in(offset, data);
        Ok(())
    }

    /// Fills `offset..offset + len` of the message with `byte`.
    ///
    /// # Errors
    /// [`OutOfBounds`] if the range is not inside the message.
    pub fn fill(&mut self, offset: usize, len: usize, byte: u8) -> Result<(), OutOfBounds> {
        check_range(offset, len, self.plan.len)?;
        let chunk = [byte; 256];
        let mut at = offset;
        while at < offset + len {
            let take = (offset + len - at).min(chunk.len());
            self.payload_in(at, &chunk[..take]);
            at += take;
        }
        Ok(())
    }

    /// Copies a received message into this one at `offset`, in one copy
    /// from ring to ring: how a process forwards or echoes a message.
    ///
    /// # Errors
    /// [`OutOfBounds`] if the message does not fit at `offset`.
    #[inline]
    pub fn write_payload_at(
        &mut self,
        offset: usize,
        payload: &Payload<'_>,
    ) -> Result<(), OutOfBounds> {
        check_range(offset, payload.len(), self.plan.len)?;
        #[cfg(not(loom))]
        {
            let from = payload.region;
            let src = from.record_ptr(payload.record.lane, payload.record.payload());
            // SAFETY: the source is a committed record not yet released,
            // inside its lane (checked by `peek`) and valid while the payload
            // lives; the destination is inside this loan (checked above and
            // by `plan`), free space the protocol gives it alone; they
            // overlap only if a third party forged `tail`.
            unsafe {
                self.producer.region.copy_from(
                    self.producer.lane,
                    self.plan.payload() + offset,
                    src,
                    payload.len(),
                );
            }
        }
        #[cfg(loom)]
        self.payload_in(offset, &payload.to_vec());
        Ok(())
    }

    /// Copies `data` (in bounds) into the payload.
    #[inline(always)]
    fn payload_in(&mut self, offset: usize, data: &[u8]) {
        let lane = self.producer.lane;
        self.producer
            .region
            .copy_in(lane, self.plan.payload() + offset, data);
    }

    /// Publishes the message.
    #[inline(always)]
    pub fn commit(self) {
        let Self { producer, plan } = self;
        let region = &producer.region;
        let lane = producer.lane;
        let capacity = region.layout.capacity as u64;
        // The slot after the record must read as empty, not as old payload
        // bytes, if it is free space (if not, it is the slot of the
        // consumer's oldest record, which reads as empty by its lap once
        // consumed). Only this producer writes slot words, so one that
        // already reads empty (`EMPTY`, or the slot word of a record a lap
        // ago, as when messages keep their size) is left alone: a store
        // there, queued in front of the commit's own, costs a line the
        // consumer may hold (it polls that word once caught up, and its
        // prefetcher runs ahead of it), about 20 ns a round trip here.
        if plan.new_head + WORD as u64 <= producer.tail_cache + capacity {
            let next = region.slot(lane, region.offset(plan.new_head));
            // ORDERING: Relaxed for both; our own earlier write if any, and
            // the store is published by the Release store below.
            let word = next.load(Ordering::Relaxed);
            if !matches!(region.decode(word, plan.new_head), Slot::Empty) {
                next.store(EMPTY, Ordering::Relaxed);
            }
        }
        // The length is at most the max message size, below `WRAP_LEN`.
        let len = plan.len as u64;
        match plan.wrap_at {
            Some(wrap_at) => {
                let record_at = producer.head + (capacity - wrap_at as u64);
                // ORDERING: Relaxed; the consumer reaches offset 0 only
                // through the wrap marker, published by the store below.
                region
                    .slot(lane, 0)
                    .store(region.committed(record_at, len), Ordering::Relaxed);
                // ORDERING: Release; pairs with the Acquire load of the slot
                // in `Consumer::peek`, publishing the record and the payload.
                region
                    .slot(lane, wrap_at)
                    .store(region.committed(producer.head, WRAP_LEN), Ordering::Release);
            }
            // ORDERING: Release; as above.
            None => region
                .slot(lane, plan.start)
                .store(region.committed(producer.head, len), Ordering::Release),
        }
        producer.head = plan.new_head;
        if producer.head - producer.published_head >= head_interval(capacity) {
            producer.publish_head();
        }
        producer.wake_consumer();
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        if !self.corrupted {
            self.publish_head();
        }
        Owner::release(self.lane_word(lane::OWNER), self.token);
    }
}

/// Checks `offset..offset + len` lies in a message of `size` bytes.
#[inline]
fn check_range(offset: usize, len: usize, size: usize) -> Result<(), OutOfBounds> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(OutOfBounds { offset, len, size }),
    }
}

/// A committed record found at a lane's `tail`.
#[derive(Clone, Copy, Debug)]
struct Record {
    lane: usize,
    /// Offset of the slot word in the lane.
    offset: usize,
    /// Payload length.
    len: usize,
}

impl Record {
    /// Offset of the payload's first byte in the lane.
    #[inline]
    fn payload(&self) -> usize {
        self.offset + payload_offset(self.len)
    }
}

/// The receiving side of a ring: takes messages from every lane in turn.
#[derive(Debug)]
pub struct Consumer {
    region: Region,
    /// Our index in each lane: the only copies we trust.
    tails: Vec<u64>,
    /// `tail` as last published in each lane. Publishing is deferred by up
    /// to `capacity / 8` bytes while messages keep coming, so a producer
    /// that keeps up reloads `tail` once per batch, not once per message.
    published: Vec<u64>,
    /// Lane to look at first next time, so no lane starves the others.
    next_lane: usize,
    /// Lane of the last message taken.
    #[cfg(not(loom))]
    last_lane: usize,
    #[cfg(not(loom))]
    lag: Lag,
    corrupted: bool,
    /// Our token in the ring's consumer word.
    token: u64,
}

impl Consumer {
    /// Attaches the consumer to an initialised ring region, after checking
    /// its alignment, size and header.
    ///
    /// A ring has one consumer: the role is taken while this one lives, or
    /// until its process is gone. The next consumer then starts from the
    /// last progress the old one published: messages it had not yet
    /// released, and up to an eighth of a lane it had released but not yet
    /// published, are delivered again (a dropped consumer publishes all).
    ///
    /// # Errors
    /// A [`LayoutError`] naming the first check that failed, or
    /// [`LayoutError::ConsumerTaken`].
    ///
    /// # Safety
    /// As for [`Producer::attach`].
    pub unsafe fn attach(ptr: NonNull<u8>, len: usize) -> Result<Self, LayoutError> {
        // SAFETY: the caller upholds the same contract.
        let region = unsafe { Region::attach(ptr, len, None) }?;
        Self::start(region)
    }

    /// Attaches the consumer to the ring in a mapping, which it keeps alive.
    ///
    /// # Errors
    /// As for [`attach`](Self::attach), and [`LayoutError::ReadOnly`].
    pub fn from_mapping(mapping: Arc<Mapping>) -> Result<Self, LayoutError> {
        Self::start(Region::from_mapping(mapping)?)
    }

    /// Takes the consumer role (free, or held by a process that is gone)
    /// and starts where the last consumer published its progress.
    fn start(region: Region) -> Result<Self, LayoutError> {
        let token =
            Owner::claim(region.word(header::CONSUMER)).ok_or(LayoutError::ConsumerTaken)?;
        let tails: Vec<u64> = (0..region.layout.lanes)
            .map(|lane_index| {
                // ORDERING: Relaxed; our own index, published by the previous
                // consumer (or `init`) before this attach was arranged.
                region
                    .word(region.lane_word(lane_index, lane::TAIL))
                    .load(Ordering::Relaxed)
                    & !(RECORD_ALIGN as u64 - 1)
            })
            .collect();
        let mut consumer = Self {
            corrupted: tails.iter().any(|&tail| tail > MAX_POSITION),
            region,
            published: tails.clone(),
            tails,
            next_lane: 0,
            #[cfg(not(loom))]
            last_lane: 0,
            #[cfg(not(loom))]
            lag: Lag::default(),
            token,
        };
        if !consumer.corrupted {
            // The last consumer may have died between a release and its
            // wake-up: wake any producer still waiting for space.
            for lane_index in 0..consumer.region.layout.lanes {
                consumer.publish_tail(lane_index);
            }
        }
        Ok(consumer)
    }

    /// The ring's sizes.
    pub fn layout(&self) -> RingLayout {
        self.region.layout
    }

    /// Borrows the next message where it lies, without waiting; it is
    /// released when the [`Sample`] is dropped. `Ok(None)` if every lane is
    /// empty.
    ///
    /// # Errors
    /// [`RecvError::Corrupted`] if a producer wrote an invalid record (then
    /// on every later call too).
    #[inline]
    pub fn try_recv(&mut self) -> Result<Option<Sample<'_>>, RecvError> {
        Ok(self.poll()?.map(|record| Sample {
            consumer: self,
            record,
        }))
    }

    /// Copies the next message into the start of `buf`, without waiting, and
    /// returns its length. `Ok(None)` if every lane is empty.
    ///
    /// # Errors
    /// [`RecvError::BufferTooSmall`] if the message is longer than `buf`
    /// (it stays in the ring), [`RecvError::Corrupted`] as for
    /// [`try_recv`](Self::try_recv).
    pub fn try_recv_into(&mut self, buf: &mut [u8]) -> Result<Option<usize>, RecvError> {
        let Some(sample) = self.try_recv()? else {
            return Ok(None);
        };
        sample.copy_into(buf).map(Some)
    }

    /// Hands up to `max` waiting messages to `each` in order and releases
    /// them together (one index update for the batch), returning how many.
    ///
    /// # Errors
    /// [`RecvError::Corrupted`] as for [`try_recv`](Self::try_recv), after
    /// releasing the messages handed out before it.
    pub fn try_recv_batch(
        &mut self,
        max: usize,
        mut each: impl FnMut(&Payload<'_>),
    ) -> Result<usize, RecvError> {
        let mut taken = 0;
        let mut result = Ok(());
        while taken < max {
            match self.poll() {
                Ok(Some(record)) => {
                    each(&Payload {
                        region: &self.region,
                        record,
                    });
                    self.consume(record);
                    taken += 1;
                }
                Ok(None) => break,
                Err(error) => {
                    result = Err(error);
                    break;
                }
            }
        }
        self.flush();
        result.map(|()| taken)
    }

    /// Finds the next committed record, looking at each lane once.
    #[inline]
    fn poll(&mut self) -> Result<Option<Record>, RecvError> {
        if self.corrupted {
            return Err(RecvError::Corrupted);
        }
        let lanes = self.region.layout.lanes;
        // Not `% lanes`: a division costs more than the rest of a receive.
        let after = |lane_index: usize| {
            if lane_index + 1 == lanes {
                0
            } else {
                lane_index + 1
            }
        };
        let mut lane_index = self.next_lane;
        for _ in 0..lanes {
            if let Some(record) = self.peek(lane_index)? {
                self.next_lane = after(lane_index);
                #[cfg(not(loom))]
                {
                    self.lag.streak = if record.len > RECORD_ALIGN - WORD {
                        0
                    } else if lane_index == self.last_lane {
                        self.lag.streak.saturating_add(1)
                    } else {
                        1
                    };
                    self.last_lane = lane_index;
                }
                return Ok(Some(record));
            }
            // Caught up with this lane: give its producer all the space we
            // hold, whatever the other lanes carry.
            self.publish_pending(lane_index);
            lane_index = after(lane_index);
        }
        #[cfg(not(loom))]
        {
            self.lag.caught_up_after = self.lag.streak;
            self.lag.streak = 0;
        }
        Ok(None)
    }

    /// Checks the slot at a lane's `tail`, stepping over a wrap marker.
    #[inline]
    fn peek(&mut self, lane_index: usize) -> Result<Option<Record>, RecvError> {
        let capacity = self.region.layout.capacity;
        // At most two rounds: after a wrap the offset is 0, where a second
        // wrap marker is corruption.
        loop {
            let position = self.tails[lane_index];
            if position > MAX_POSITION {
                return Err(self.corrupt());
            }
            let offset = self.region.offset(position);
            // ORDERING: Acquire; pairs with the Release store in
            // `Loan::commit`, so the record's payload is visible.
            let word = self.region.slot(lane_index, offset).load(Ordering::Acquire);
            // The block's second line, loaded with the slot word whether or
            // not a record is there yet: a message longer than 56 bytes
            // reaches into it, and its two lines then travel in parallel
            // instead of one after the other (about 20 ns of a 64-byte round
            // trip here). Offsets are block starts, so the word is in the
            // lane.
            #[cfg(not(loom))]
            std::hint::black_box(
                // ORDERING: Relaxed; the value is not used.
                self.region
                    .slot(lane_index, offset + CACHE_LINE)
                    .load(Ordering::Relaxed),
            );
            match self.region.decode(word, position) {
                Slot::Empty => return Ok(None),
                Slot::Wrap if offset == 0 => return Err(self.corrupt()),
                Slot::Wrap => self.tails[lane_index] += (capacity - offset) as u64,
                Slot::Record(len) => {
                    if len > self.region.layout.max_message || offset + record_size(len) > capacity
                    {
                        return Err(self.corrupt());
                    }
                    return Ok(Some(Record {
                        lane: lane_index,
                        offset,
                        len,
                    }));
                }
                Slot::Corrupt => return Err(self.corrupt()),
            }
        }
    }

    /// Moves past a record; publishes `tail` once a batch of bytes is
    /// pending or the producer waits for space.
    #[inline]
    fn consume(&mut self, record: Record) {
        let lane_index = record.lane;
        self.tails[lane_index] += record_size(record.len) as u64;
        let pending = self.tails[lane_index] - self.published[lane_index];
        if pending >= (self.region.layout.capacity / 8) as u64 || self.producer_parked(lane_index) {
            self.publish_tail(lane_index);
        }
    }

    /// Publishes every lane's pending `tail`.
    fn flush(&mut self) {
        for lane_index in 0..self.region.layout.lanes {
            self.publish_pending(lane_index);
        }
    }

    /// Publishes a lane's `tail` if we released anything since we last did.
    #[inline]
    fn publish_pending(&mut self, lane_index: usize) {
        if self.tails[lane_index] != self.published[lane_index] {
            self.publish_tail(lane_index);
        }
    }

    /// Whether a lane's producer sleeps waiting for space.
    #[inline]
    fn producer_parked(&self, lane_index: usize) -> bool {
        #[cfg(not(loom))]
        {
            barrier::publisher();
            // ORDERING: Relaxed; the barrier above orders it after our last
            // `tail` store against the producer's flag store (see `barrier`).
            self.region
                .word(self.region.lane_word(lane_index, lane::PARKED))
                .load(Ordering::Relaxed)
                != AWAKE
        }
        #[cfg(loom)]
        {
            let _ = lane_index;
            false
        }
    }

    /// Publishes a lane's `tail`, waking its producer if it is parked.
    fn publish_tail(&mut self, lane_index: usize) {
        let word = |index| self.region.word(self.region.lane_word(lane_index, index));
        // ORDERING: Release; pairs with the Acquire load of `tail` in
        // `Producer::load_tail`: our reads of the released space happen
        // before the producer reuses it.
        word(lane::TAIL).store(self.tails[lane_index], Ordering::Release);
        self.published[lane_index] = self.tails[lane_index];
        #[cfg(not(loom))]
        {
            let parked = word(lane::PARKED);
            // ORDERING: Relaxed; as in `producer_parked`, which runs the
            // barrier. Swapped so that only one release makes the wake call.
            if self.producer_parked(lane_index) && parked.swap(AWAKE, Ordering::Relaxed) != AWAKE {
                let space = self
                    .region
                    .futex_word(self.region.lane_word(lane_index, lane::SPACE));
                // ORDERING: Release; pairs with the Acquire load in
                // `Producer::park`.
                space.fetch_add(1, Ordering::Release);
                futex::wake(space, 1);
            }
        }
    }

    fn corrupt(&mut self) -> RecvError {
        self.corrupted = true;
        RecvError::Corrupted
    }

    /// Whether any lane has a message (or a wrap marker) waiting.
    #[cfg(not(loom))]
    fn any_ready(&mut self) -> Result<bool, RecvError> {
        for lane_index in 0..self.region.layout.lanes {
            if self.peek(lane_index)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Announces how the consumer sleeps, then checks for messages; `Ok(true)`
    /// means sleep now (a commit will wake it), and clears the flag otherwise.
    #[cfg(not(loom))]
    fn announce_sleep(&mut self, how: u64) -> Result<Option<bool>, RecvError> {
        // ORDERING: Relaxed; ordered before the slot loads below by the
        // sleeper barrier (see `barrier`).
        self.region
            .word(header::PARKED)
            .store(how, Ordering::Relaxed);
        let bounded = !barrier::sleeper();
        match self.any_ready() {
            Ok(false) => Ok(Some(bounded)),
            other => {
                self.wake_up();
                other.map(|_| None)
            }
        }
    }

    /// Clears the parked flag.
    #[cfg(not(loom))]
    fn wake_up(&self) {
        // ORDERING: Relaxed; a hint for producers only.
        self.region
            .word(header::PARKED)
            .store(AWAKE, Ordering::Relaxed);
    }
}

#[cfg(not(loom))]
impl Consumer {
    /// Borrows the next message, waiting as `wait` says up to `timeout`
    /// (`None`: no limit).
    ///
    /// A receive that spins keeps a few KiB behind a producer streaming
    /// small messages, so that it reads lines the producer has finished
    /// with instead of fighting it for the ones it is writing: once it has
    /// found the ring empty right after taking two or more messages of up
    /// to 120 bytes in a row from one lane, it waits (every 4 KiB, and on
    /// catching up) for the producer to be 8 KiB ahead (half and all of a
    /// quarter of a lane under 32 KiB), for at most 2 µs each time. A wait
    /// during which the producer wrote less than half that stops it, and
    /// makes it start again ever more rarely. Request/response traffic (one
    /// message, then a wait, from each lane) never waits for it.
    ///
    /// # Errors
    /// [`RecvError::TimedOut`], or [`RecvError::Corrupted`] as for
    /// [`try_recv`](Self::try_recv).
    #[inline]
    pub fn recv(&mut self, wait: Wait, timeout: Option<Duration>) -> Result<Sample<'_>, RecvError> {
        let record = match self.poll()? {
            Some(record) => {
                if self.lag.engaged
                    && wait.spins()
                    && self.tails[self.lag.lane] >= self.lag.checkpoint
                {
                    self.keep_behind(self.lag.lane, timeout);
                }
                record
            }
            None => self.wait_for_record(wait, timeout)?,
        };
        Ok(Sample {
            consumer: self,
            record,
        })
    }

    /// The slow path of [`recv`](Self::recv): every lane was empty.
    fn wait_for_record(
        &mut self,
        wait: Wait,
        timeout: Option<Duration>,
    ) -> Result<Record, RecvError> {
        if wait.spins() && (self.lag.engaged || self.lag.caught_up_after >= 2) {
            let lane_index = if self.lag.engaged {
                self.lag.lane
            } else {
                self.last_lane
            };
            self.keep_behind(lane_index, timeout);
        }
        let mut waiter = Waiter::new(wait, timeout);
        loop {
            match waiter.next() {
                Step::Poll => {}
                Step::Spin => std::hint::spin_loop(),
                Step::Park => self.park(&waiter.deadline)?,
                Step::TimedOut => return Err(RecvError::TimedOut),
            }
            if let Some(record) = self.poll()? {
                return Ok(record);
            }
        }
    }

    /// Waits for the producer of a lane to publish a `head` [`STRETCH`]
    /// past our position in it, for at most [`SLIP`], engaging [`Lag`] for
    /// that lane unless it says to skip this time.
    #[cold]
    fn keep_behind(&mut self, lane_index: usize, timeout: Option<Duration>) {
        if timeout.is_some_and(|timeout| timeout < SLIP) {
            return;
        }
        if !self.lag.engaged {
            if self.lag.skips > 0 {
                self.lag.skips -= 1;
                return;
            }
            self.lag.engaged = true;
            self.lag.lane = lane_index;
        }
        // Free what we hold first: the producer may need it to get ahead.
        self.publish_pending(lane_index);
        let stretch = STRETCH.min(self.region.layout.capacity / 4) as u64;
        let target = self.tails[lane_index] + stretch;
        let head = self
            .region
            .word(self.region.lane_word(lane_index, lane::HEAD));
        // ORDERING: Relaxed for every load of `head` here; it is a hint
        // (any value only ends the wait sooner or later), and records are
        // read only after `peek`'s Acquire load of their slot word.
        let load = || head.load(Ordering::Relaxed);
        let mut waited = None;
        while load() < target {
            let (start, from) = *waited.get_or_insert_with(|| (Instant::now(), load()));
            if start.elapsed() >= SLIP {
                // Still a stream if the producer wrote half a stretch in
                // the meantime: keep behind it, as far as it got.
                if load().saturating_sub(from) < stretch / 2 {
                    self.lag.missed();
                }
                break;
            }
            std::hint::spin_loop();
        }
        if self.lag.engaged {
            self.lag.misses = 0;
            self.lag.checkpoint = target - stretch / 2;
        }
    }

    /// Sleeps on the ring's futex until a producer commits or the deadline
    /// passes.
    fn park(&mut self, deadline: &Deadline) -> Result<(), RecvError> {
        // ORDERING: Acquire; pairs with the Release increment in
        // `Producer::wake_consumer`.
        let seq = self.region.futex_word(header::WAKE).load(Ordering::Acquire);
        if let Some(bounded) = self.announce_sleep(PARKED)? {
            let wake = self.region.futex_word(header::WAKE);
            let _ = futex::wait_until(wake, seq, deadline.for_sleep(bounded));
            self.wake_up();
        }
        Ok(())
    }

    /// Prepares to wait on the doorbell (the eventfd given to producers
    /// with [`Producer::set_doorbell`]) and says how (see [`AsyncPark`]).
    /// After the doorbell rings (or on giving up), call
    /// [`unpark_async`](Self::unpark_async), then receive.
    ///
    /// # Errors
    /// [`RecvError::Corrupted`] as for [`try_recv`](Self::try_recv).
    pub fn park_async(&mut self) -> Result<AsyncPark, RecvError> {
        if self.corrupted {
            return Err(RecvError::Corrupted);
        }
        Ok(match self.announce_sleep(PARKED_ASYNC)? {
            None => AsyncPark::MessageWaiting,
            Some(false) => AsyncPark::Parked,
            Some(true) => AsyncPark::ParkedBriefly,
        })
    }

    /// Takes back the announcement of [`park_async`](Self::park_async).
    pub fn unpark_async(&mut self) {
        self.wake_up();
    }
}

/// What [`Consumer::park_async`] did.
#[cfg(not(loom))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsyncPark {
    /// Nothing: a message is already waiting; receive it.
    MessageWaiting,
    /// The next commit rings the doorbell: wait for it.
    Parked,
    /// Parked, but this process could not run the cross-process barrier
    /// (membarrier refused), so a commit may miss the park: wait on the
    /// doorbell a millisecond at a time, looking for messages in between.
    ParkedBriefly,
}

/// A received message, borrowed where it lies in the ring; released (its
/// space given back to the producer) when dropped.
#[derive(Debug)]
pub struct Sample<'a> {
    consumer: &'a mut Consumer,
    record: Record,
}

impl<'a> Sample<'a> {
    /// The message's bytes, for reading.
    #[inline]
    pub fn payload(&self) -> Payload<'_> {
        Payload {
            region: &self.consumer.region,
            record: self.record,
        }
    }

    /// Length of the message in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.record.len
    }

    /// Whether the message is empty.
    pub fn is_empty(&self) -> bool {
        self.record.len == 0
    }

    /// The lane (producer) the message came from.
    pub fn lane(&self) -> usize {
        self.record.lane
    }

    /// Copies the whole message into the start of `buf` and releases it,
    /// returning its length.
    ///
    /// # Errors
    /// [`RecvError::BufferTooSmall`] if `buf` is shorter than the message,
    /// which then stays in the ring.
    pub fn copy_into(self, buf: &mut [u8]) -> Result<usize, RecvError> {
        let len = self.record.len;
        match buf.get_mut(..len) {
            Some(dst) => {
                self.payload().read_exact_at(0, dst);
                Ok(len)
            }
            None => {
                // Keep the message: forget the release.
                std::mem::forget(self);
                Err(RecvError::BufferTooSmall { len })
            }
        }
    }
}

impl Drop for Sample<'_> {
    #[inline]
    fn drop(&mut self) {
        self.consumer.consume(self.record);
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if !self.corrupted {
            self.flush();
        }
        Owner::release(self.region.word(header::CONSUMER), self.token);
    }
}

/// Read access to a message's bytes in the ring.
#[derive(Debug)]
pub struct Payload<'a> {
    region: &'a Region,
    record: Record,
}

impl Payload<'_> {
    /// Length of the message in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.record.len
    }

    /// Whether the message is empty.
    pub fn is_empty(&self) -> bool {
        self.record.len == 0
    }

    /// Copies `buf.len()` bytes from `offset` in the message into `buf`.
    ///
    /// # Errors
    /// [`OutOfBounds`] if the range is not inside the message.
    #[inline]
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), OutOfBounds> {
        check_range(offset, buf.len(), self.record.len)?;
        self.read_exact_at(offset, buf);
        Ok(())
    }

    /// The whole message, copied.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut bytes = vec![0; self.record.len];
        self.read_exact_at(0, &mut bytes);
        bytes
    }

    /// Copies an in-bounds range out.
    #[inline]
    fn read_exact_at(&self, offset: usize, buf: &mut [u8]) {
        self.region
            .copy_out(self.record.lane, self.record.payload() + offset, buf);
    }
}

/// What a blocking call does after finding nothing to do.
#[cfg(not(loom))]
#[derive(Debug)]
enum Step {
    /// Poll again at once.
    Poll,
    /// Pause the CPU, then poll again.
    Spin,
    Park,
    TimedOut,
}

/// How a blocking receive keeps behind a streaming producer.
///
/// A consumer as fast as its producer polls each record's lines while the
/// producer still writes them, so each line crosses between the cores
/// several times and both sides slow down (64-byte streams ran at 25-30 M
/// messages/s here that way). Kept a few KiB behind, the consumer reads
/// only lines the producer has finished with, and the producer writes
/// lines nobody is reading.
///
/// A spinning receive engages it when it finds the ring empty right after
/// taking two or more one-block messages in a row from one lane, so
/// request/response traffic (one message, then a wait) never does, nor do streams of larger
/// messages, whose records have lines the consumer may not read at all.
/// Engaged, before taking a message at least half a [`STRETCH`] past the
/// last check (and on catching up), it waits for the producer's published
/// `head` to be a stretch past it, for at most [`SLIP`]. A wait that runs
/// out with the producer less than half a stretch further (the burst
/// ended, or the stream is too slow to gain from it) disengages it, and it
/// then skips the next 1, 3, 7, ... 1023 chances to engage, so bursty
/// traffic pays that wait rarely. Reading `head` costs the producer's next
/// publish of it a line transfer: once a check, a few KiB apart.
#[cfg(not(loom))]
#[derive(Debug, Default)]
struct Lag {
    /// One-block messages taken in a row from one lane since a receive
    /// last found every lane empty.
    streak: u32,
    /// `streak` when a receive last found every lane empty.
    caught_up_after: u32,
    /// Whether receives keep behind the producer of `lane`.
    engaged: bool,
    lane: usize,
    /// Position in `lane` from which the next message waits for the
    /// producer to be a stretch ahead.
    checkpoint: u64,
    /// Chances to engage to let pass.
    skips: u32,
    /// Waits in a row that ran out, up to [`MAX_MISSES`].
    misses: u32,
}

#[cfg(not(loom))]
impl Lag {
    /// A wait ran out: disengage, and back off from engaging again.
    fn missed(&mut self) {
        self.engaged = false;
        self.misses = (self.misses + 1).min(MAX_MISSES);
        self.skips = (1 << self.misses) - 1;
    }
}

/// A blocking call's wait: spins, then parks if the strategy says so, until
/// the deadline.
#[cfg(not(loom))]
#[derive(Debug)]
struct Waiter {
    /// Polls before parking (`u64::MAX` for busy-polling).
    spins: u64,
    polls: u64,
    /// The caller's timeout, counted from the first clock reading: a wait
    /// that ends within 256 polls never reads the clock at all.
    timeout: Option<Duration>,
    deadline: Deadline,
}

#[cfg(not(loom))]
impl Waiter {
    fn new(wait: Wait, timeout: Option<Duration>) -> Self {
        Self {
            spins: match wait {
                Wait::BusyPoll => u64::MAX,
                Wait::SpinThenPark { spins } => u64::from(spins),
            },
            polls: 0,
            timeout,
            deadline: Deadline(None),
        }
    }

    /// The next step; reads the clock every 256 spins and before each park.
    fn next(&mut self) -> Step {
        self.polls += 1;
        let parking = self.polls > self.spins;
        if (parking || self.polls % 256 == 0) && self.passed() {
            Step::TimedOut
        } else if parking {
            Step::Park
        } else if self.spins == u64::MAX {
            Step::Poll
        } else {
            Step::Spin
        }
    }

    /// Whether the deadline passed, starting its clock on the first call.
    fn passed(&mut self) -> bool {
        if let (None, Some(timeout)) = (self.deadline.0, self.timeout.take()) {
            self.deadline = Deadline(Instant::now().checked_add(timeout));
        }
        self.deadline.passed()
    }
}

/// When a blocking call gives up (`None`: never).
#[cfg(not(loom))]
#[derive(Debug)]
struct Deadline(Option<Instant>);

#[cfg(not(loom))]
impl Deadline {
    fn passed(&self) -> bool {
        self.0.is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// The deadline of one futex sleep; `bounded` (no cross-process barrier
    /// was possible, so a wake may be missed) caps it at a millisecond.
    fn for_sleep(&self, bounded: bool) -> Option<Instant> {
        if !bounded {
            return self.0;
        }
        let cap = Instant::now() + Duration::from_millis(1);
        Some(self.0.map_or(cap, |deadline| deadline.min(cap)))
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    /// A heap region holding an initialised ring, 8-byte aligned.
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
            let heap = Self {
                len: words.len() * 8,
                _words: words,
                ptr,
            };
            // SAFETY: the buffer is ours, valid, and only accessed through the
            // ring module while the test runs.
            unsafe { init(heap.ptr, heap.len, layout) }.unwrap();
            heap
        }

        fn producer(&self) -> Producer {
            // SAFETY: the heap outlives the endpoints in every test, and is
            // accessed only through them and atomics.
            unsafe { Producer::attach(self.ptr, self.len) }.unwrap()
        }

        fn consumer(&self) -> Consumer {
            // SAFETY: as above.
            unsafe { Consumer::attach(self.ptr, self.len) }.unwrap()
        }

        fn pair(&self) -> (Producer, Consumer) {
            (self.producer(), self.consumer())
        }

        /// The region as the endpoints see it, for reading and scribbling.
        fn region(&self) -> Region {
            // SAFETY: as above.
            unsafe { Region::attach(self.ptr, self.len, None) }.unwrap()
        }
    }

    fn layout(capacity: usize, max: usize) -> RingLayout {
        RingLayout::new(capacity, max, 1).unwrap()
    }

    fn message(seed: usize, len: usize) -> Vec<u8> {
        (0..len).map(|i| (seed * 31 + i) as u8).collect()
    }

    fn recv_vec(consumer: &mut Consumer) -> Result<Option<Vec<u8>>, RecvError> {
        Ok(consumer.try_recv()?.map(|sample| sample.payload().to_vec()))
    }

    #[test]
    fn layout_checks_capacity_max_message_and_lanes() {
        assert_eq!(
            layout(256, 24).region_bytes(),
            HEADER_SIZE + LANE_HEADER_SIZE + 256
        );
        assert_eq!(
            RingLayout::new(256, 0, 3).unwrap().region_bytes(),
            HEADER_SIZE + 3 * (LANE_HEADER_SIZE + 256)
        );
        assert_eq!(RingLayout::max_message_for(256), Some(120));
        assert_eq!(RingLayout::max_message_for(128), None);
        assert_eq!(RingLayout::max_message_for(384), None);
        assert_eq!(
            RingLayout::new(256, 121, 1),
            Err(LayoutError::MaxMessage {
                max_message: 121,
                capacity: 256
            })
        );
        assert_eq!(
            RingLayout::new(100, 1, 1),
            Err(LayoutError::Capacity { capacity: 100 })
        );
        assert_eq!(
            RingLayout::new(1 << 62, 1, 64),
            Err(LayoutError::Capacity { capacity: 1 << 62 })
        );
        for lanes in [0, MAX_LANES + 1] {
            assert_eq!(
                RingLayout::new(256, 1, lanes),
                Err(LayoutError::Lanes {
                    lanes: lanes as u64
                })
            );
        }
    }

    #[test]
    fn fill_then_drain_keeps_order_and_content() {
        let heap = Heap::new(layout(1024, 64));
        let (mut producer, mut consumer) = heap.pair();
        let mut sent = 0;
        // One block each: 8 fit in 1024 bytes.
        while producer.try_send(&message(sent, 13)).is_ok() {
            sent += 1;
        }
        assert_eq!(sent, 8);
        assert_eq!(producer.try_send(&message(99, 13)), Err(SendError::Full));
        for i in 0..sent {
            assert_eq!(recv_vec(&mut consumer), Ok(Some(message(i, 13))));
        }
        assert_eq!(recv_vec(&mut consumer), Ok(None));
        producer.try_send(b"again").unwrap();
        assert_eq!(recv_vec(&mut consumer), Ok(Some(b"again".to_vec())));
    }

    #[test]
    fn the_slot_after_a_record_is_cleared_unless_it_reads_empty() {
        let heap = Heap::new(layout(512, 120));
        let (mut producer, mut consumer) = heap.pair();
        for round in 0..4 {
            producer.try_send(&message(round, 20)).unwrap();
            recv_vec(&mut consumer).unwrap().unwrap();
        }
        // A lap later: a slot word of the lap before reads as empty and is
        // left alone, old payload bytes are cleared.
        let region = heap.region();
        let stale = COMMITTED | 99;
        region.slot(0, 128).store(stale, Ordering::Relaxed);
        region.slot(0, 256).store(u64::MAX, Ordering::Relaxed);
        producer.try_send(b"next").unwrap();
        assert_eq!(region.slot(0, 128).load(Ordering::Relaxed), stale);
        producer.try_send(b"last").unwrap();
        assert_eq!(region.slot(0, 256).load(Ordering::Relaxed), EMPTY);
        assert_eq!(recv_vec(&mut consumer), Ok(Some(b"next".to_vec())));
        assert_eq!(recv_vec(&mut consumer), Ok(Some(b"last".to_vec())));
        assert_eq!(recv_vec(&mut consumer), Ok(None));
    }

    #[test]
    fn long_payloads_start_on_a_line_when_their_blocks_have_room() {
        assert_eq!(payload_offset(120), WORD, "one block");
        assert_eq!(payload_offset(121), ALIGNED_PAYLOAD);
        assert_eq!(payload_offset(1024), ALIGNED_PAYLOAD);
        assert_eq!(payload_offset(1100), WORD, "no room: 1100 + 64 > 1152");
        let heap = Heap::new(layout(4096, 1100));
        let (mut producer, mut consumer) = heap.pair();
        let region = heap.region();
        let mut record = 0;
        for len in [1024, 1100] {
            let data = message(len, len);
            producer.try_send(&data).unwrap();
            let first_word =
                region.word(region.record_byte(0, record + payload_offset(len)) / WORD);
            assert_eq!(
                first_word.load(Ordering::Relaxed).to_ne_bytes(),
                data[..WORD],
                "payload of {len} bytes"
            );
            assert_eq!(recv_vec(&mut consumer), Ok(Some(data)));
            record += record_size(len);
        }
    }

    #[test]
    fn records_wrap_around_the_end() {
        let heap = Heap::new(layout(1024, 248));
        let (mut producer, mut consumer) = heap.pair();
        let mut buf = [0; 248];
        for round in 0..100 {
            // One and two blocks, so that wrap markers are needed.
            let data = message(round, round * 37 % 249);
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
        let heap = Heap::new(layout(256, 24));
        let (mut producer, mut consumer) = heap.pair();
        for first in 0..=24 {
            producer.try_send(&message(first, first)).unwrap();
            recv_vec(&mut consumer).unwrap().unwrap();
            producer.try_send(&message(first, 24)).unwrap();
            assert_eq!(recv_vec(&mut consumer), Ok(Some(message(first, 24))));
        }
    }

    #[test]
    fn too_large_and_too_small_buffer_are_reported() {
        let heap = Heap::new(layout(256, 24));
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
    fn loans_are_written_in_place_and_sent_only_on_commit() {
        let heap = Heap::new(layout(256, 64));
        let (mut producer, mut consumer) = heap.pair();
        let mut loan = producer.try_loan(10).unwrap();
        assert_eq!(loan.len(), 10);
        loan.fill(0, 10, b'-').unwrap();
        loan.write_at(2, b"abc").unwrap();
        assert_eq!(
            loan.write_at(8, b"abc"),
            Err(OutOfBounds {
                offset: 8,
                len: 3,
                size: 10
            })
        );
        assert!(loan.write_at(usize::MAX, b"a").is_err());
        drop(loan);
        assert_eq!(recv_vec(&mut consumer), Ok(None), "an uncommitted loan");

        let mut loan = producer.try_loan(10).unwrap();
        loan.fill(0, 10, b'-').unwrap();
        loan.write_at(2, b"abc").unwrap();
        loan.commit();
        let sample = consumer.try_recv().unwrap().unwrap();
        let mut part = [0; 4];
        sample.payload().read_at(1, &mut part).unwrap();
        assert_eq!(&part, b"-abc");
        assert!(sample.payload().read_at(8, &mut part).is_err());
        assert_eq!(sample.payload().to_vec(), b"--abc-----");
    }

    #[test]
    fn copies_keep_every_byte_whatever_the_length_and_offset() {
        // Every split of a first block's part into line pieces and moves of
        // 16, 8, 4 and 1 bytes, with and without a `memmove` of the rest.
        let heap = Heap::new(layout(4096, 1024));
        let (mut producer, mut consumer) = heap.pair();
        let other = Heap::new(layout(4096, 1024));
        let (mut forwarder, mut destination) = other.pair();
        for len in (0..=130).chain([200, 1024 - 5]) {
            let data = message(len, len);
            producer.try_send(&data).unwrap();
            let sample = consumer.try_recv().unwrap().unwrap();
            assert_eq!(sample.payload().to_vec(), data, "{len} bytes sent");
            // Ranges starting in a later block of a message, anywhere in it.
            for at in [130, 189, 250] {
                let mut loan = forwarder.try_loan(at + len.min(200)).unwrap();
                loan.fill(0, at, b'>').unwrap();
                loan.write_at(at, &data[..len.min(200)]).unwrap();
                loan.commit();
                let written = recv_vec(&mut destination).unwrap().unwrap();
                assert_eq!(written[at..], data[..len.min(200)], "{len} bytes at {at}");
            }
            for at in [0, 3] {
                let mut loan = forwarder.try_loan(at + len).unwrap();
                loan.fill(0, at, b'>').unwrap();
                loan.write_payload_at(at, &sample.payload()).unwrap();
                loan.commit();
                let forwarded = recv_vec(&mut destination).unwrap().unwrap();
                assert_eq!(forwarded[at..], data[..], "{len} bytes forwarded to {at}");
            }
            let mut loan = forwarder.try_loan(len + 5).unwrap();
            loan.write_at(5, &data).unwrap();
            loan.write_at(0, b"12345").unwrap();
            loan.commit();
            let written = recv_vec(&mut destination).unwrap().unwrap();
            assert_eq!((&written[..5], &written[5..]), (&b"12345"[..], &data[..]));
        }
    }

    #[test]
    fn a_received_message_is_forwarded_into_a_loan_in_one_copy() {
        let heap = Heap::new(layout(256, 64));
        let (mut producer, mut consumer) = heap.pair();
        let other = Heap::new(layout(256, 64));
        let (mut forwarder, mut destination) = other.pair();
        producer.try_send(b"forward me").unwrap();
        let sample = consumer.try_recv().unwrap().unwrap();
        let mut loan = forwarder.try_loan(12).unwrap();
        loan.write_at(0, b">>").unwrap();
        loan.write_payload_at(2, &sample.payload()).unwrap();
        assert!(loan.write_payload_at(3, &sample.payload()).is_err());
        loan.commit();
        drop(sample);
        assert_eq!(
            recv_vec(&mut destination),
            Ok(Some(b">>forward me".to_vec()))
        );
    }

    #[test]
    fn a_sample_is_released_only_when_dropped() {
        let heap = Heap::new(layout(256, 24));
        let (mut producer, mut consumer) = heap.pair();
        producer.try_send(&[1; 24]).unwrap();
        producer.try_send(&[2; 16]).unwrap();
        assert_eq!(producer.try_send(&[3; 24]), Err(SendError::Full));
        let sample = consumer.try_recv().unwrap().unwrap();
        assert_eq!(producer.try_send(&[3; 24]), Err(SendError::Full));
        drop(sample);
        producer.try_send(&[3; 24]).unwrap();
    }

    #[test]
    fn a_caught_up_lane_is_released_while_other_lanes_keep_coming() {
        let heap = Heap::new(RingLayout::new(4096, 64, 2).unwrap());
        let mut consumer = heap.consumer();
        let (mut first, mut second) = (heap.producer(), heap.producer());
        first.try_send(&[1; 16]).unwrap();
        second.try_send(&[2; 16]).unwrap();
        second.try_send(&[2; 16]).unwrap();
        let region = heap.region();
        let tail = region.word(region.lane_word(0, lane::TAIL));
        for _ in 0..3 {
            recv_vec(&mut consumer).unwrap().unwrap();
        }
        // One block is below a batch (4096 / 8), but lane 0 has nothing
        // more: its producer gets it back although lane 1 is busy.
        assert_eq!(tail.load(Ordering::Relaxed), 128);
    }

    #[test]
    fn batches_send_what_fits_and_release_together() {
        let heap = Heap::new(layout(1024, 64));
        let (mut producer, mut consumer) = heap.pair();
        let messages: Vec<Vec<u8>> = (0..20).map(|i| message(i, 13)).collect();
        let sent = producer
            .try_send_batch(messages.iter().map(Vec::as_slice))
            .unwrap();
        assert_eq!(sent, 8);
        assert_eq!(
            producer.try_send_batch([&[0; 99][..]]),
            Err(SendError::TooLarge { len: 99, max: 64 })
        );
        let mut got = Vec::new();
        assert_eq!(
            consumer.try_recv_batch(4, |payload| got.push(payload.to_vec())),
            Ok(4)
        );
        assert_eq!(
            consumer.try_recv_batch(100, |payload| got.push(payload.to_vec())),
            Ok(4)
        );
        assert_eq!(got, messages[..8]);
        assert_eq!(consumer.try_recv_batch(100, |_| ()), Ok(0));
    }

    #[test]
    fn attach_refuses_bad_headers_and_regions() {
        let heap = Heap::new(layout(256, 24));
        let attach = |len| {
            // SAFETY: in bounds of the heap, which outlives the call.
            unsafe { Consumer::attach(heap.ptr, len) }.map(|_| ())
        };
        assert_eq!(
            attach(100),
            Err(LayoutError::RegionTooSmall {
                needed: HEADER_SIZE,
                len: 100
            })
        );
        let needed = layout(256, 24).region_bytes();
        assert_eq!(
            attach(needed - 1),
            Err(LayoutError::RegionTooSmall {
                needed,
                len: needed - 1
            })
        );
        let misaligned = NonNull::new(heap.ptr.as_ptr().wrapping_add(4)).unwrap();
        assert_eq!(
            // SAFETY: in bounds; refused before any access.
            unsafe { Producer::attach(misaligned, heap.len - 4) }.map(|_| ()),
            Err(LayoutError::Misaligned)
        );

        let region = heap.region();
        let set = |index, value| region.word(index).store(value, Ordering::Relaxed);
        set(header::CAPACITY, 48);
        assert_eq!(
            attach(heap.len),
            Err(LayoutError::Capacity { capacity: 48 })
        );
        set(header::CAPACITY, 1 << 20);
        assert_eq!(
            attach(heap.len),
            Err(LayoutError::RegionTooSmall {
                needed: HEADER_SIZE + LANE_HEADER_SIZE + (1 << 20),
                len: heap.len
            })
        );
        set(header::CAPACITY, 256);
        set(header::MAX_MESSAGE, u64::MAX);
        assert!(matches!(
            attach(heap.len),
            Err(LayoutError::MaxMessage { .. })
        ));
        set(header::MAX_MESSAGE, 24);
        set(header::LANES, 2);
        assert!(matches!(
            attach(heap.len),
            Err(LayoutError::RegionTooSmall { .. })
        ));
        set(header::LANES, 1);
        set(header::VERSION, 1);
        assert!(matches!(
            attach(heap.len),
            Err(LayoutError::Version { version: 1, .. })
        ));
        set(header::VERSION, u64::from(LAYOUT_VERSION));
        set(header::MAGIC, 0xdead_beef);
        assert_eq!(
            attach(heap.len),
            Err(LayoutError::Magic { found: 0xdead_beef })
        );
        set(header::MAGIC, MAGIC);
        assert_eq!(attach(heap.len), Ok(()));
    }

    #[test]
    fn hostile_slot_words_are_corruption() {
        // (slot word written over the first record's, why it is invalid)
        let cases = [
            (COMMITTED | 25, "above the max message size"),
            (COMMITTED | u64::from(u32::MAX), "huge"),
            (2 << 32 | 3, "no valid tag"),
            (COMMITTED | WRAP_LEN, "a wrap marker at offset 0"),
            (COMMITTED | 3 | 5 << LAP_SHIFT, "another lap's"),
        ];
        for (word, why) in cases {
            let heap = Heap::new(layout(256, 24));
            let (mut producer, mut consumer) = heap.pair();
            producer.try_send(b"abc").unwrap();
            heap.region().slot(0, 0).store(word, Ordering::Relaxed);
            assert_eq!(recv_vec(&mut consumer), Err(RecvError::Corrupted), "{why}");
            assert_eq!(
                recv_vec(&mut consumer),
                Err(RecvError::Corrupted),
                "{why} (sticky)"
            );
            assert_eq!(
                consumer.try_recv_batch(1, |_| ()),
                Err(RecvError::Corrupted)
            );
        }
    }

    #[test]
    fn a_record_crossing_the_end_is_corruption() {
        let heap = Heap::new(layout(512, 248));
        let (mut producer, mut consumer) = heap.pair();
        for _ in 0..3 {
            producer.try_send(b"12345678").unwrap();
            recv_vec(&mut consumer).unwrap().unwrap();
        }
        // At offset 384 now: a 200-byte payload would end at 592.
        heap.region()
            .slot(0, 384)
            .store(COMMITTED | 200, Ordering::Relaxed);
        assert_eq!(recv_vec(&mut consumer), Err(RecvError::Corrupted));
    }

    #[test]
    fn hostile_tail_or_magic_is_corruption_for_the_producer() {
        let cases: [(u64, u64, &str); 4] = [
            (12, MAGIC, "unaligned"),
            (384, MAGIC, "beyond head"),
            (!127, MAGIC, "huge"),
            (0, 0, "magic cleared"),
        ];
        for (tail, magic, why) in cases {
            let heap = Heap::new(layout(256, 24));
            let (mut producer, _consumer) = heap.pair();
            while producer.try_send(b"12345678").is_ok() {}
            let region = heap.region();
            region
                .word(region.lane_word(0, lane::TAIL))
                .store(tail, Ordering::Relaxed);
            region.word(header::MAGIC).store(magic, Ordering::Relaxed);
            assert_eq!(producer.try_send(b"x"), Err(SendError::Corrupted), "{why}");
            assert_eq!(
                producer.try_send(b"x"),
                Err(SendError::Corrupted),
                "{why} (sticky)"
            );
            assert_eq!(
                producer.send(b"x", Wait::PARK, Some(Duration::from_secs(5))),
                Err(SendError::Corrupted),
                "{why} (blocking)"
            );
        }
        // Backwards after the consumer made progress.
        let heap = Heap::new(layout(256, 24));
        let (mut producer, mut consumer) = heap.pair();
        while producer.try_send(b"12345678").is_ok() {}
        recv_vec(&mut consumer).unwrap();
        producer.try_send(b"12345678").unwrap();
        let region = heap.region();
        region
            .word(region.lane_word(0, lane::TAIL))
            .store(0, Ordering::Relaxed);
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
            let heap = Heap::new(RingLayout::new(256, 56, 2).unwrap());
            let (mut producer, mut consumer) = heap.pair();
            for _ in 0..(next() % 8) {
                let _ = producer.try_send(&message(0, (next() % 57) as usize));
            }
            let region = heap.region();
            for _ in 0..4 {
                let word = (next() % (region.layout.region_bytes() as u64 / 8)) as usize;
                let value = match next() % 4 {
                    0 => COMMITTED | (next() % 128),
                    1 => COMMITTED | WRAP_LEN | (next() % 4) << LAP_SHIFT,
                    _ => next(),
                };
                // The magic stays, or attach below would be refused.
                if word != header::MAGIC {
                    region.word(word).store(value, Ordering::Relaxed);
                }
            }
            for _ in 0..16 {
                if let Ok(Some(got)) = recv_vec(&mut consumer) {
                    assert!(got.len() <= 56);
                }
                let _ = producer.try_send(&message(1, (next() % 57) as usize));
            }
            // A new endpoint on the scribbled region attaches or refuses.
            // SAFETY: the heap outlives the attempt.
            let _ = unsafe { Producer::attach(heap.ptr, heap.len) };
        }
    }

    #[test]
    fn producers_claim_distinct_lanes_until_none_is_left() {
        let heap = Heap::new(RingLayout::new(256, 24, 3).unwrap());
        let mut consumer = heap.consumer();
        let mut producers: Vec<Producer> = (0..3).map(|_| heap.producer()).collect();
        let lanes: Vec<usize> = producers.iter().map(Producer::lane).collect();
        assert_eq!(lanes, [0, 1, 2]);
        assert_eq!(
            // SAFETY: the heap outlives the attempt.
            unsafe { Producer::attach(heap.ptr, heap.len) }.map(|_| ()),
            Err(LayoutError::LanesTaken { lanes: 3 })
        );
        for (i, producer) in producers.iter_mut().enumerate() {
            producer.try_send(&[i as u8; 3]).unwrap();
            producer.try_send(&[i as u8 + 10; 3]).unwrap();
        }
        // In turn across lanes, in order within each.
        let got: Vec<u8> = std::iter::from_fn(|| recv_vec(&mut consumer).unwrap())
            .map(|message| message[0])
            .collect();
        assert_eq!(got, [0, 1, 2, 10, 11, 12]);

        // A dropped producer frees its lane; the next one resumes there.
        producers.remove(1);
        let mut again = heap.producer();
        assert_eq!(again.lane(), 1);
        again.try_send(b"resumed").unwrap();
        assert_eq!(recv_vec(&mut consumer), Ok(Some(b"resumed".to_vec())));
    }

    /// Leaves `producer`'s lane as a process that died holding it would:
    /// no drop, and the owner word naming a process that exited.
    fn die_holding_the_lane(producer: Producer, region: &Region) {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = u64::from(child.id());
        child.wait().unwrap();
        let index = producer.lane();
        std::mem::forget(producer);
        region.word(region.lane_word(index, lane::OWNER)).store(
            Owner::masked(dead, 1, pid_namespace()).token(),
            Ordering::Relaxed,
        );
    }

    #[test]
    fn a_lane_of_a_dead_process_is_taken_over_past_its_last_commit() {
        let heap = Heap::new(RingLayout::new(512, 24, 1).unwrap());
        let (mut producer, mut consumer) = heap.pair();
        producer.try_send(b"one").unwrap();
        producer.try_send(b"two").unwrap();
        // The "dead" producer committed "two" but died before publishing
        // `head`, and left a stale slot word in free space.
        let region = heap.region();
        region
            .word(region.lane_word(0, lane::HEAD))
            .store(128, Ordering::Relaxed);
        region.slot(0, 384).store(COMMITTED | 5, Ordering::Relaxed);
        die_holding_the_lane(producer, &region);

        let mut heir = heap.producer();
        assert_eq!(heir.lane(), 0);
        let head = region.word(region.lane_word(0, lane::HEAD));
        assert_eq!(
            head.load(Ordering::Relaxed),
            256,
            "the heir publishes where it resumed"
        );
        heir.try_send(b"three").unwrap();
        let got: Vec<Vec<u8>> = std::iter::from_fn(|| recv_vec(&mut consumer).unwrap()).collect();
        assert_eq!(got, [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
    }

    #[test]
    fn an_heir_finds_every_record_committed_since_the_last_published_head() {
        // `head` is published every eighth of the lane: 512 bytes, 4 blocks.
        let heap = Heap::new(RingLayout::new(4096, 64, 1).unwrap());
        let (mut producer, mut consumer) = heap.pair();
        let sent: Vec<Vec<u8>> = (0..7).map(|i| message(i, 10 + i)).collect();
        for data in &sent {
            producer.try_send(data).unwrap();
        }
        let region = heap.region();
        let head = region.word(region.lane_word(0, lane::HEAD));
        assert_eq!(head.load(Ordering::Relaxed), 512, "published once");
        // The producer dies without letting go (no publish on drop).
        die_holding_the_lane(producer, &region);

        let mut heir = heap.producer();
        assert_eq!(head.load(Ordering::Relaxed), 7 * 128, "past all seven");
        heir.try_send(b"eighth").unwrap();
        let got: Vec<Vec<u8>> = std::iter::from_fn(|| recv_vec(&mut consumer).unwrap()).collect();
        assert_eq!(got[..7], sent[..]);
        assert_eq!(got[7..], [b"eighth".to_vec()]);
        // A producer that lets go publishes where it stopped.
        drop(heir);
        assert_eq!(head.load(Ordering::Relaxed), 8 * 128);
    }

    #[test]
    fn a_supervisor_frees_the_roles_of_a_gone_process_by_its_token() {
        use std::os::fd::AsFd;
        let layout = RingLayout::new(256, 8, 1).unwrap();
        let fd = crate::memfd::create_sealed("roles", layout.region_bytes() as u64).unwrap();
        let mapping = Arc::new(Mapping::map(fd.as_fd(), Access::ReadWrite).unwrap());
        init_mapping(&mapping, layout).unwrap();
        // As if this process had died holding the lane and the consumer.
        let mut producer = Producer::from_mapping(Arc::clone(&mapping)).unwrap();
        producer.try_send(b"kept").unwrap();
        std::mem::forget(producer);
        std::mem::forget(Consumer::from_mapping(Arc::clone(&mapping)).unwrap());
        assert_eq!(
            Producer::from_mapping(Arc::clone(&mapping)).map(|_| ()),
            Err(LayoutError::LanesTaken { lanes: 1 })
        );

        let pid = std::process::id();
        let (inner, namespace) = crate::peer::namespaced_pid(pid).unwrap();
        let start = crate::peer::process_start_time(pid).unwrap();
        let other = owner_token(inner + 1, start, namespace).unwrap();
        assert_eq!(release_roles(Arc::clone(&mapping), other), Ok(0));
        let token = owner_token(inner, start, namespace).unwrap();
        assert_eq!(release_roles(Arc::clone(&mapping), token), Ok(2));
        assert_eq!(owner_token(inner, 0, namespace), None, "unknown start");

        let mut heir = Producer::from_mapping(Arc::clone(&mapping)).unwrap();
        heir.try_send(b"after").unwrap();
        let mut consumer = Consumer::from_mapping(mapping).unwrap();
        let got: Vec<Vec<u8>> = std::iter::from_fn(|| recv_vec(&mut consumer).unwrap()).collect();
        assert_eq!(got, [b"kept".to_vec(), b"after".to_vec()]);
    }

    #[test]
    fn owner_tokens_tell_a_gone_process_from_a_live_or_foreign_one() {
        let me = Owner::current();
        assert_ne!(me.start, 0, "this process's start time is readable");
        assert_eq!(Owner::from_token(me.token()), me);
        assert!(!Owner::is_gone(me.token()), "this process");
        let reused = Owner::masked(me.pid, me.start + 1, me.namespace);
        assert!(Owner::is_gone(reused.token()), "a reused pid");
        let foreign = Owner::masked(me.pid, me.start + 1, me.namespace + 1);
        assert!(!Owner::is_gone(foreign.token()), "another pid namespace");
        let unknown = Owner::masked(me.pid, 0, me.namespace);
        assert!(!Owner::is_gone(unknown.token()), "an unknown start time");
        assert!(!Owner::is_gone(0), "no owner");
    }

    #[test]
    fn a_ring_has_one_consumer_until_it_drops_or_its_process_is_gone() {
        let heap = Heap::new(layout(256, 24));
        let (mut producer, consumer) = heap.pair();
        // SAFETY: the heap outlives the attempts.
        let second = || unsafe { Consumer::attach(heap.ptr, heap.len) }.map(|_| ());
        assert_eq!(second(), Err(LayoutError::ConsumerTaken));
        drop(consumer);
        assert_eq!(second(), Ok(()));

        // A consumer that took a message, but died before releasing it, is
        // replaced; the message comes again.
        let mut doomed = heap.consumer();
        producer.try_send(b"again").unwrap();
        std::mem::forget(doomed.try_recv().unwrap().unwrap());
        std::mem::forget(doomed);
        let region = heap.region();
        let consumer_word = region.word(header::CONSUMER);
        let me = Owner::current();
        let dead = Owner::masked(me.pid, me.start + 1, me.namespace).token();
        consumer_word.store(dead, Ordering::Relaxed);
        let mut heir = heap.consumer();
        assert_eq!(recv_vec(&mut heir), Ok(Some(b"again".to_vec())));
    }

    #[test]
    fn blocking_calls_time_out() {
        let heap = Heap::new(layout(256, 24));
        let (mut producer, mut consumer) = heap.pair();
        let short = Some(Duration::from_millis(20));
        for wait in [Wait::BusyPoll, Wait::PARK, Wait::SpinThenPark { spins: 0 }] {
            assert_eq!(
                consumer.recv(wait, short).map(|_| ()),
                Err(RecvError::TimedOut)
            );
        }
        while producer.try_send(&[0; 24]).is_ok() {}
        for wait in [Wait::BusyPoll, Wait::PARK] {
            assert_eq!(
                producer.send(&[0; 24], wait, short),
                Err(SendError::TimedOut)
            );
        }
        // A timed-out park leaves no marker behind.
        assert_eq!(recv_vec(&mut consumer), Ok(Some(vec![0; 24])));
    }

    #[test]
    fn a_receiver_keeps_behind_only_after_a_streak_and_rarely_once_bursts_end() {
        let heap = Heap::new(layout(4096, 24));
        let (mut producer, mut consumer) = heap.pair();
        let short = Some(Duration::from_millis(5));
        let timed_out = |consumer: &mut Consumer| {
            assert_eq!(
                consumer.recv(Wait::BusyPoll, short).map(|_| ()),
                Err(RecvError::TimedOut)
            );
            (consumer.lag.misses, consumer.lag.skips)
        };
        // One message, then a wait, as in request/response: never keeps
        // behind.
        producer.try_send(&[1; 24]).unwrap();
        drop(consumer.recv(Wait::BusyPoll, short).unwrap());
        assert_eq!(timed_out(&mut consumer), (0, 0));
        // Bursts of two that end: each wait for the producer to get ahead
        // runs out, and the chances skipped after it double.
        let mut seen = Vec::new();
        for burst in 0..8 {
            for _ in 0..2 {
                producer.try_send(&[burst; 24]).unwrap();
            }
            for _ in 0..2 {
                let sample = consumer.recv(Wait::BusyPoll, short).unwrap();
                assert_eq!(sample.payload().to_vec(), [burst; 24]);
            }
            seen.push(timed_out(&mut consumer));
        }
        assert_eq!(
            seen,
            [
                (1, 1),
                (1, 0),
                (2, 3),
                (2, 2),
                (2, 1),
                (2, 0),
                (3, 7),
                (3, 6)
            ]
        );
        // A timeout shorter than the slip is never stretched by it.
        producer.try_send(&[9; 24]).unwrap();
        producer.try_send(&[9; 24]).unwrap();
        consumer.lag = Lag::default();
        for _ in 0..2 {
            drop(consumer.recv(Wait::BusyPoll, short).unwrap());
        }
        assert_eq!(
            consumer
                .recv(Wait::BusyPoll, Some(Duration::ZERO))
                .map(|_| ()),
            Err(RecvError::TimedOut)
        );
        assert_eq!((consumer.lag.misses, consumer.lag.skips), (0, 0));
        // Nor is a streak of messages longer than a block.
        let heap = Heap::new(layout(4096, 200));
        let (mut producer, mut consumer) = heap.pair();
        for _ in 0..2 {
            producer.try_send(&[7; 200]).unwrap();
        }
        for _ in 0..2 {
            drop(consumer.recv(Wait::BusyPoll, short).unwrap());
        }
        assert_eq!(timed_out(&mut consumer), (0, 0));
        assert!(!consumer.lag.engaged);
        // Nor is one request from each of two producers.
        let heap = Heap::new(RingLayout::new(4096, 24, 2).unwrap());
        let (mut first, mut consumer) = heap.pair();
        let mut second = heap.producer();
        first.try_send(&[1; 24]).unwrap();
        second.try_send(&[2; 24]).unwrap();
        for _ in 0..2 {
            drop(consumer.recv(Wait::BusyPoll, short).unwrap());
        }
        assert_eq!(timed_out(&mut consumer), (0, 0));
        assert!(!consumer.lag.engaged);
    }

    #[test]
    fn a_receiver_keeping_behind_goes_on_while_the_producer_is_a_stretch_ahead() {
        // A stretch of 1024 bytes (a quarter of the lane), `head` published
        // every 512, one 128-byte block a message.
        let heap = Heap::new(layout(4096, 24));
        let (mut producer, mut consumer) = heap.pair();
        for i in 0..24 {
            producer.try_send(&[i; 24]).unwrap();
        }
        consumer.lag = Lag {
            engaged: true,
            ..Lag::default()
        };
        let mut engaged = Vec::new();
        for i in 0..24 {
            let sample = consumer.recv(Wait::BusyPoll, None).unwrap();
            assert_eq!(sample.payload().to_vec(), [i; 24]);
            drop(sample);
            engaged.push(consumer.lag.engaged);
        }
        // `head` is at 3072: the message at 2560 waits for it to pass 3584
        // in vain, and is delivered all the same.
        assert_eq!(engaged, [[true; 20].as_slice(), &[false; 4]].concat());
        assert_eq!((consumer.lag.misses, consumer.lag.skips), (1, 1));
    }

    /// Spins until `check` holds, failing after a generous deadline.
    fn eventually(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !check() {
            assert!(Instant::now() < deadline, "{what} never happened");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_parked_consumer_is_woken_by_a_commit() {
        let heap = Heap::new(RingLayout::new(256, 24, 2).unwrap());
        let (mut producer, mut consumer) = heap.pair();
        let region = heap.region();
        std::thread::scope(|scope| {
            let receiver = scope.spawn(move || {
                let sample = consumer
                    .recv(
                        Wait::SpinThenPark { spins: 0 },
                        Some(Duration::from_secs(30)),
                    )
                    .unwrap();
                sample.payload().to_vec()
            });
            let parked = region.word(header::PARKED);
            eventually("the consumer parks", || {
                parked.load(Ordering::Relaxed) == PARKED
            });
            producer.try_send(b"wake").unwrap();
            assert_eq!(receiver.join().unwrap(), b"wake");
        });
        assert_eq!(region.word(header::PARKED).load(Ordering::Relaxed), AWAKE);
    }

    #[test]
    fn a_parked_producer_is_woken_by_a_release() {
        let heap = Heap::new(layout(256, 24));
        let (mut producer, mut consumer) = heap.pair();
        while producer.try_send(&[7; 24]).is_ok() {}
        let region = heap.region();
        let parked = region.word(region.lane_word(0, lane::PARKED));
        std::thread::scope(|scope| {
            let sender = scope.spawn(move || {
                producer.send(
                    &[8; 24],
                    Wait::SpinThenPark { spins: 0 },
                    Some(Duration::from_secs(30)),
                )
            });
            eventually("the producer parks", || {
                parked.load(Ordering::Relaxed) == PARKED
            });
            assert_eq!(recv_vec(&mut consumer), Ok(Some(vec![7; 24])));
            assert_eq!(sender.join().unwrap(), Ok(()));
        });
        assert_eq!(parked.load(Ordering::Relaxed), AWAKE);
    }

    #[test]
    fn an_async_park_rings_the_doorbell_once_a_message_is_committed() {
        use rustix::event::{EventfdFlags, eventfd};
        let heap = Heap::new(layout(256, 24));
        let (mut producer, mut consumer) = heap.pair();
        let doorbell = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap();
        producer.set_doorbell(doorbell.try_clone().unwrap());
        let mut count = [0; 8];

        producer.try_send(b"early").unwrap();
        assert_eq!(
            consumer.park_async(),
            Ok(AsyncPark::MessageWaiting),
            "a message is waiting"
        );
        recv_vec(&mut consumer).unwrap().unwrap();

        assert_eq!(consumer.park_async(), Ok(AsyncPark::Parked));
        assert!(
            rustix::io::read(doorbell.as_fd(), &mut count).is_err(),
            "not rung yet"
        );
        producer.try_send(b"late").unwrap();
        assert_eq!(rustix::io::read(doorbell.as_fd(), &mut count), Ok(8));
        assert_eq!(u64::from_ne_bytes(count), 1);
        consumer.unpark_async();
        assert_eq!(recv_vec(&mut consumer), Ok(Some(b"late".to_vec())));

        // Unparked: no ring for the next message.
        producer.try_send(b"quiet").unwrap();
        assert!(rustix::io::read(doorbell.as_fd(), &mut count).is_err());
    }

    /// CPU time this thread has used, in clock ticks (user + system).
    fn thread_cpu_ticks() -> u64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        // utime and stime are fields 14 and 15 of stat(5), 12 and 13 here.
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    #[test]
    fn a_parked_receiver_uses_no_cpu_while_waiting() {
        let heap = Heap::new(layout(256, 24));
        let mut consumer = heap.consumer();
        let before = thread_cpu_ticks();
        assert_eq!(
            consumer
                .recv(Wait::PARK, Some(Duration::from_millis(500)))
                .map(|_| ()),
            Err(RecvError::TimedOut)
        );
        // Half a second asleep after a bounded spin: a busy thread would
        // have used about 50 ticks (100 per second).
        let used = thread_cpu_ticks() - before;
        assert!(used <= 5, "a parked receiver used {used} ticks of CPU");
    }

    #[test]
    fn only_an_eventfd_passes_as_a_doorbell() {
        use rustix::event::{EventfdFlags, eventfd};
        let doorbell = eventfd(0, EventfdFlags::CLOEXEC).unwrap();
        assert_eq!(check_doorbell(doorbell.as_fd()), Ok(()));
        let (read, _write) = rustix::pipe::pipe().unwrap();
        let found = check_doorbell(read.as_fd()).unwrap_err();
        assert!(found.starts_with("pipe:"), "{found}");
    }

    #[test]
    fn endpoints_are_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Producer>();
        assert_send::<Consumer>();
    }
}
