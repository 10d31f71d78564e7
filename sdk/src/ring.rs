//! Message rings: [`Ring`], a ring segment granted by the agent, and its
//! [`Producer`] and [`Consumer`] endpoints.
//!
//! A ring carries variable-size messages from up to
//! [`producers`](RingBuilder::producers) producers to one consumer, zero-copy
//! on both sides, with no system call, lock or allocation on the fast path
//! (the protocol is [`ipcplane_shm::ring`]'s). The agent creates the segment,
//! writes its header and grants it with an eventfd *doorbell*; the SDK maps
//! it after checking it, and then the agent is out of the way.
//!
//! - Producers [`loan`](Producer::loan) space, write the message in place and
//!   [`commit`](Loan::commit) it, or copy a message in with
//!   [`send`](Producer::send); [`send_pod`](Producer::send_pod) sends any
//!   [`bytemuck::Pod`] value.
//! - The consumer borrows each message where it lies ([`Sample`]) and gives
//!   its space back when the sample is dropped;
//!   [`read_pod`](Sample::read_pod) reads a `Pod` value out.
//! - Blocking calls wait as their endpoint's [`Wait`] strategy says
//!   (default [`Wait::PARK`]: 4096 polls with a CPU pause each, tens of
//!   microseconds to about a hundred, then sleep on a futex in the segment;
//!   [`Wait::BusyPoll`]: poll without pausing, for the lowest latency) up to
//!   its timeout (default none). With the `tokio`
//!   feature (on by default), [`Consumer::recv_async`] waits on the doorbell
//!   instead, without holding a thread.
//!
//! The memory is shared with processes that may write anything: every index
//! and length read from it is checked, and a broken ring is reported as
//! [`RecvError::Corrupted`] or [`SendError::Corrupted`], never as a crash.
//!
//! # Examples
//! ```no_run
//! use ipcplane::Client;
//!
//! let client = Client::connect()?;
//! let ring = client.create_ring("ticks", 64 << 10)?;
//! let mut producer = ring.producer()?;
//! producer.send_pod(&42_u64)?;
//!
//! // In another process of the same tenant:
//! let ring = client.open_ring("ticks")?;
//! let mut consumer = ring.consumer()?;
//! let tick: u64 = consumer.recv()?.read_pod()?;
//! # Ok::<(), ipcplane::Error>(())
//! ```

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use bytemuck::Pod;
use ipcplane_proto::v1;
use ipcplane_shm::mapping::Mapping;
use ipcplane_shm::ring as shm;
pub use ipcplane_shm::ring::{
    LayoutError, Loan, OutOfBounds, Payload, RecvError, RingLayout, SendError, Wait,
};

use crate::client::{Client, TypedOptions, typed_builder_setters};
use crate::connection::{Attachment, Granted};
use crate::error::Error;
use crate::segment::{SegmentId, SegmentInfo, SegmentKind};

/// Capacity of each producer lane when the builder is not told: 64 KiB.
pub const DEFAULT_CAPACITY: u64 = 64 << 10;

/// Describes a ring to create; from [`Client::ring_builder`].
#[derive(Debug)]
#[must_use = "a builder does nothing until `create` is called"]
pub struct RingBuilder<'c> {
    options: TypedOptions<'c>,
    spec: v1::RingSpec,
}

impl<'c> RingBuilder<'c> {
    pub(crate) fn new(client: &'c Client, name: String) -> Self {
        Self {
            options: TypedOptions::new(client, name),
            spec: v1::RingSpec {
                capacity_bytes: DEFAULT_CAPACITY,
                max_message_bytes: 0,
                producers: 1,
            },
        }
    }

    /// Bytes of messages each producer lane holds: a power of two, at least
    /// 256 (default [`DEFAULT_CAPACITY`]). Each message takes its length plus
    /// 8, rounded up to whole 128-byte blocks (one for up to 120 bytes).
    pub fn capacity(mut self, bytes: u64) -> Self {
        self.spec.capacity_bytes = bytes;
        self
    }

    /// The largest message, whose record must fit in half the capacity
    /// (default: the largest that does).
    pub fn max_message(mut self, bytes: u64) -> Self {
        self.spec.max_message_bytes = bytes;
        self
    }

    /// How many producers may be attached at once, 1 to 64 (default 1):
    /// each gets a lane of its own, so they never contend.
    pub fn producers(mut self, producers: u32) -> Self {
        self.spec.producers = producers;
        self
    }

    typed_builder_setters!();

    /// Asks the agent to create the ring (it computes the size and writes
    /// the header), and maps it.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for parameters no ring can have (the
    /// agent says which), the other refusals of
    /// [`SegmentBuilder::create`](crate::SegmentBuilder::create), or a
    /// connection error.
    pub fn create(self) -> Result<Ring, Error> {
        let layout = v1::create_segment::Layout::Ring(self.spec);
        self.options
            .create(layout, SegmentKind::Ring)
            .map(Ring::new)
    }
}

/// A ring segment granted by the agent and mapped into this process.
///
/// Get endpoints with [`producer`](Self::producer) and
/// [`consumer`](Self::consumer); they keep the ring mapped and attached, so
/// the handle itself may be dropped. The attachment goes (as for a
/// [`Segment`](crate::Segment)) when the handle and every endpoint are
/// dropped, and survives agent restarts like a segment's: the client
/// re-presents the ring and its doorbell.
///
/// `Ring` is cheap to clone (one reference count).
#[derive(Clone, Debug)]
pub struct Ring {
    shared: Arc<Shared>,
}

/// What a ring's handle and endpoints share.
#[derive(Debug)]
struct Shared {
    info: SegmentInfo,
    mapping: Arc<Mapping>,
    doorbell: Arc<OwnedFd>,
    // Last: released once the mapping above is gone.
    _attachment: Attachment,
}

impl Ring {
    /// A ring from a grant checked to be one, so it has a doorbell.
    pub(crate) fn new(granted: Granted) -> Self {
        let Granted {
            info,
            mapping,
            doorbell,
            attachment,
            ..
        } = granted;
        Self {
            shared: Arc::new(Shared {
                info,
                mapping: Arc::new(mapping),
                doorbell: doorbell.expect("a ring grant carries a doorbell (checked in wire)"),
                _attachment: attachment,
            }),
        }
    }

    /// The ring's segment id.
    pub fn id(&self) -> SegmentId {
        self.shared.info.id
    }

    /// The segment as the agent recorded it when granting it; its
    /// [`ring`](SegmentInfo::ring) field has the ring's parameters.
    pub fn info(&self) -> &SegmentInfo {
        &self.shared.info
    }

    /// Attaches a producer to a free lane (or one whose producer process
    /// has died). Its commits ring the doorbell when the consumer waits on it
    /// asynchronously.
    ///
    /// # Errors
    /// [`Error::RingLayout`]: [`LayoutError::LanesTaken`] when every lane
    /// has a live producer, or a header that is not a valid ring;
    /// [`Error::Io`] if the doorbell cannot be duplicated.
    pub fn producer(&self) -> Result<Producer, Error> {
        let mut inner = shm::Producer::from_mapping(Arc::clone(&self.shared.mapping))
            .map_err(Error::RingLayout)?;
        inner.set_doorbell(self.dup_doorbell()?);
        Ok(Producer {
            inner,
            wait: Wait::PARK,
            timeout: None,
            ring: self.clone(),
        })
    }

    /// Attaches the consumer. A ring has one consumer at a time, until it is
    /// dropped or its process exits; the next one starts where it left off
    /// (after a crash, the last messages the old one took may come again:
    /// see [`shm::Consumer::attach`]).
    ///
    /// # Errors
    /// [`Error::RingLayout`]: [`LayoutError::ConsumerTaken`] while another
    /// consumer lives, or a header that is not a valid ring.
    pub fn consumer(&self) -> Result<Consumer, Error> {
        let inner = shm::Consumer::from_mapping(Arc::clone(&self.shared.mapping))
            .map_err(Error::RingLayout)?;
        Ok(Consumer {
            inner,
            wait: Wait::PARK,
            timeout: None,
            #[cfg(feature = "tokio")]
            doorbell: None,
            ring: self.clone(),
        })
    }

    /// A descriptor of the doorbell of this process's own.
    fn dup_doorbell(&self) -> Result<OwnedFd, Error> {
        rustix::io::fcntl_dupfd_cloexec(self.shared.doorbell.as_fd(), 0)
            .map_err(|err| Error::Io(err.into()))
    }
}

/// The sending side of a ring: one lane, owned while the producer lives.
///
/// Blocking calls ([`loan`](Self::loan), [`send`](Self::send),
/// [`send_pod`](Self::send_pod)) wait for room as the producer's [`Wait`]
/// strategy says, up to its timeout; `try_*` calls never wait.
#[derive(Debug)]
pub struct Producer {
    inner: shm::Producer,
    wait: Wait,
    timeout: Option<Duration>,
    ring: Ring,
}

impl Producer {
    /// How blocking calls wait for room (default [`Wait::PARK`]).
    pub fn set_wait(&mut self, wait: Wait) {
        self.wait = wait;
    }

    /// How long blocking calls wait for room; `None` (the default) is no
    /// limit.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// The ring's sizes.
    pub fn layout(&self) -> RingLayout {
        self.inner.layout()
    }

    /// The lane this producer writes.
    #[inline]
    pub fn lane(&self) -> usize {
        self.inner.lane()
    }

    /// The ring this producer writes to (which it keeps attached).
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Loans space for a message of `len` bytes without waiting: write it
    /// in place, then [`commit`](Loan::commit) it. Nothing is sent if the
    /// loan is dropped uncommitted.
    ///
    /// # Errors
    /// [`Error::RingSend`]: [`SendError::Full`],
    /// [`SendError::TooLarge`], or [`SendError::Corrupted`].
    #[inline]
    pub fn try_loan(&mut self, len: usize) -> Result<Loan<'_>, Error> {
        self.inner.try_loan(len).map_err(Error::RingSend)
    }

    /// Loans space for a message of `len` bytes, waiting for room.
    ///
    /// # Errors
    /// As [`try_loan`](Self::try_loan), with [`SendError::TimedOut`]
    /// instead of `Full`.
    #[inline]
    pub fn loan(&mut self, len: usize) -> Result<Loan<'_>, Error> {
        self.inner
            .loan(len, self.wait, self.timeout)
            .map_err(Error::RingSend)
    }

    /// Copies `data` into the ring as one message, without waiting.
    ///
    /// # Errors
    /// As [`try_loan`](Self::try_loan).
    #[inline]
    pub fn try_send(&mut self, data: &[u8]) -> Result<(), Error> {
        self.inner.try_send(data).map_err(Error::RingSend)
    }

    /// Copies `data` into the ring as one message, waiting for room.
    ///
    /// # Errors
    /// As [`loan`](Self::loan).
    #[inline]
    pub fn send(&mut self, data: &[u8]) -> Result<(), Error> {
        self.inner
            .send(data, self.wait, self.timeout)
            .map_err(Error::RingSend)
    }

    /// Sends as many of `messages` as fit now, in order, and returns how
    /// many; the first that does not fit ends the batch.
    ///
    /// # Errors
    /// [`Error::RingSend`] for a message too large or a corrupted ring,
    /// after sending the ones before it.
    pub fn try_send_batch<'m>(
        &mut self,
        messages: impl IntoIterator<Item = &'m [u8]>,
    ) -> Result<usize, Error> {
        self.inner.try_send_batch(messages).map_err(Error::RingSend)
    }

    /// Sends the bytes of `value` as one message, without waiting.
    ///
    /// # Errors
    /// As [`try_send`](Self::try_send).
    #[inline]
    pub fn try_send_pod<T: Pod>(&mut self, value: &T) -> Result<(), Error> {
        self.try_send(bytemuck::bytes_of(value))
    }

    /// Sends the bytes of `value` as one message, waiting for room; the
    /// consumer reads it back with [`Sample::read_pod`].
    ///
    /// # Errors
    /// As [`send`](Self::send).
    #[inline]
    pub fn send_pod<T: Pod>(&mut self, value: &T) -> Result<(), Error> {
        self.send(bytemuck::bytes_of(value))
    }
}

/// The receiving side of a ring.
///
/// Blocking calls ([`recv`](Self::recv), [`recv_timeout`](Self::recv_timeout))
/// wait as the consumer's [`Wait`] strategy says; `try_*` calls never wait.
#[derive(Debug)]
pub struct Consumer {
    inner: shm::Consumer,
    wait: Wait,
    timeout: Option<Duration>,
    /// The doorbell registered with tokio's reactor, from the first
    /// [`recv_async`](Self::recv_async) on.
    #[cfg(feature = "tokio")]
    doorbell: Option<tokio::net::UnixDatagram>,
    ring: Ring,
}

impl Consumer {
    /// How blocking calls wait for a message (default [`Wait::PARK`]).
    pub fn set_wait(&mut self, wait: Wait) {
        self.wait = wait;
    }

    /// How long [`recv`](Self::recv) waits; `None` (the default) is no
    /// limit.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// The ring's sizes.
    pub fn layout(&self) -> RingLayout {
        self.inner.layout()
    }

    /// The ring this consumer reads (which it keeps attached).
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Borrows the next message without waiting; `Ok(None)` if there is
    /// none. Its space goes back to the producer when the sample is dropped.
    ///
    /// # Errors
    /// [`Error::RingRecv`] with [`RecvError::Corrupted`].
    #[inline]
    pub fn try_recv(&mut self) -> Result<Option<Sample<'_>>, Error> {
        Ok(self.inner.try_recv().map_err(Error::RingRecv)?.map(Sample))
    }

    /// Borrows the next message, waiting up to the consumer's timeout.
    ///
    /// # Errors
    /// [`Error::RingRecv`] with [`RecvError::TimedOut`] or
    /// [`RecvError::Corrupted`].
    #[inline]
    pub fn recv(&mut self) -> Result<Sample<'_>, Error> {
        let timeout = self.timeout;
        self.recv_inner(timeout)
    }

    /// Borrows the next message, waiting up to `timeout`.
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    #[inline]
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Sample<'_>, Error> {
        self.recv_inner(Some(timeout))
    }

    #[inline]
    fn recv_inner(&mut self, timeout: Option<Duration>) -> Result<Sample<'_>, Error> {
        self.inner
            .recv(self.wait, timeout)
            .map(Sample)
            .map_err(Error::RingRecv)
    }

    /// Copies the next message into the start of `buf` without waiting and
    /// returns its length; `Ok(None)` if there is none.
    ///
    /// # Errors
    /// [`Error::RingRecv`] with [`RecvError::BufferTooSmall`] (the message
    /// stays in the ring) or [`RecvError::Corrupted`].
    #[inline]
    pub fn try_recv_into(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Error> {
        self.inner.try_recv_into(buf).map_err(Error::RingRecv)
    }

    /// Hands up to `max` waiting messages to `each`, in order, and gives
    /// their space back together; returns how many.
    ///
    /// # Errors
    /// [`Error::RingRecv`] with [`RecvError::Corrupted`], after the
    /// messages handed out before it.
    pub fn try_recv_batch(
        &mut self,
        max: usize,
        each: impl FnMut(&Payload<'_>),
    ) -> Result<usize, Error> {
        self.inner
            .try_recv_batch(max, each)
            .map_err(Error::RingRecv)
    }

    /// Whether a message waits, leaving it in the ring. (A sample that is
    /// forgotten is not released: the next receive finds it again.)
    #[cfg(feature = "tokio")]
    fn has_message(&mut self) -> Result<bool, Error> {
        match self.inner.try_recv().map_err(Error::RingRecv)? {
            Some(sample) => {
                std::mem::forget(sample);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

#[cfg(feature = "tokio")]
impl Consumer {
    /// Borrows the next message, waiting for it without blocking the
    /// thread: the consumer says it is parked, so that the next commit writes
    /// the ring's doorbell (an eventfd, registered with tokio's reactor on
    /// the first call), and sleeps until it does. Needs a tokio runtime with
    /// I/O and time enabled (it panics outside one, as tokio's sockets do);
    /// the consumer stays registered with the runtime of its first call.
    /// Cancel-safe: dropping the future takes the park back. It has no
    /// timeout of its own: wrap it in `tokio::time::timeout` if a silent
    /// producer must not make it wait forever.
    ///
    /// # Errors
    /// [`Error::RingRecv`] with [`RecvError::Corrupted`], or [`Error::Io`]
    /// if the doorbell cannot be registered or read.
    pub async fn recv_async(&mut self) -> Result<Sample<'_>, Error> {
        loop {
            if self.has_message()? {
                break;
            }
            if self.doorbell.is_none() {
                self.doorbell = Some(register(self.ring.dup_doorbell()?)?);
            }
            let how = self.inner.park_async().map_err(Error::RingRecv)?;
            let parked = Parked(&mut self.inner);
            let doorbell = self.doorbell.as_ref().expect("registered above");
            let rung = match how {
                // A message arrived meanwhile: look again.
                shm::AsyncPark::MessageWaiting => Ok(()),
                shm::AsyncPark::Parked => ring_heard(doorbell).await,
                shm::AsyncPark::ParkedBriefly => {
                    tokio::time::timeout(BRIEF_PARK, ring_heard(doorbell))
                        .await
                        .unwrap_or(Ok(()))
                }
            };
            drop(parked);
            rung?;
        }
        // A message waits and nothing else takes it: only a peer rewriting
        // the ring under us makes it vanish.
        match self.inner.try_recv().map_err(Error::RingRecv)? {
            Some(sample) => Ok(Sample(sample)),
            None => Err(Error::RingRecv(RecvError::Corrupted)),
        }
    }
}

/// How long [`Consumer::recv_async`] waits on the doorbell at a time where
/// this process cannot run the cross-process barrier (a commit may then
/// miss the park; see [`shm::AsyncPark::ParkedBriefly`]).
#[cfg(feature = "tokio")]
const BRIEF_PARK: Duration = Duration::from_millis(1);

/// Takes a consumer's async park back when dropped, also when the future
/// waiting on the doorbell is.
#[cfg(feature = "tokio")]
struct Parked<'a>(&'a mut shm::Consumer);

#[cfg(feature = "tokio")]
impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.unpark_async();
    }
}

/// Registers a doorbell with tokio's reactor, for readiness only. tokio has
/// no safe type for an arbitrary fd (`AsyncFd::new` is deprecated as
/// unsound), so it goes in as a datagram socket whose only use is
/// `async_io`, where every system call is ours.
#[cfg(feature = "tokio")]
fn register(doorbell: OwnedFd) -> Result<tokio::net::UnixDatagram, Error> {
    // The description is shared with every holder; make sure a read never
    // blocks the runtime, whatever another holder set.
    let flags = rustix::fs::fcntl_getfl(&doorbell).map_err(|err| Error::Io(err.into()))?;
    rustix::fs::fcntl_setfl(&doorbell, flags | rustix::fs::OFlags::NONBLOCK)
        .map_err(|err| Error::Io(err.into()))?;
    tokio::net::UnixDatagram::from_std(std::os::unix::net::UnixDatagram::from(doorbell))
        .map_err(Error::Io)
}

/// Waits until the doorbell has been written, and drains it.
#[cfg(feature = "tokio")]
async fn ring_heard(doorbell: &tokio::net::UnixDatagram) -> Result<(), Error> {
    doorbell
        .async_io(tokio::io::Interest::READABLE, || {
            let mut count = [0_u8; 8];
            rustix::io::read(doorbell.as_fd(), &mut count)?;
            Ok(())
        })
        .await
        .map_err(Error::Io)
}

/// A received message, borrowed where it lies in the ring; its space goes
/// back to the producer when it is dropped.
///
/// The bytes are shared with the producer's process: read each one once and
/// check it, as any untrusted input.
#[derive(Debug)]
pub struct Sample<'a>(shm::Sample<'a>);

impl Sample<'_> {
    /// The message's bytes, for reading.
    #[inline]
    pub fn payload(&self) -> Payload<'_> {
        self.0.payload()
    }

    /// Length of the message in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the message is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The lane (producer) the message came from.
    #[inline]
    pub fn lane(&self) -> usize {
        self.0.lane()
    }

    /// The whole message, copied.
    #[inline]
    pub fn to_vec(&self) -> Vec<u8> {
        self.0.payload().to_vec()
    }

    /// Copies the message into the start of `buf` and releases it,
    /// returning its length.
    ///
    /// # Errors
    /// [`Error::RingRecv`] with [`RecvError::BufferTooSmall`]; the message
    /// then stays in the ring.
    #[inline]
    pub fn copy_into(self, buf: &mut [u8]) -> Result<usize, Error> {
        self.0.copy_into(buf).map_err(Error::RingRecv)
    }

    /// The message as a `T`, copied out (so the ring's alignment does not
    /// matter). Any bytes are a valid `T`, which is what `Pod` promises.
    ///
    /// # Errors
    /// [`Error::PodSize`] if the message is not exactly `size_of::<T>()`
    /// bytes long.
    #[inline]
    pub fn read_pod<T: Pod>(&self) -> Result<T, Error> {
        let mut value = T::zeroed();
        let bytes = bytemuck::bytes_of_mut(&mut value);
        if bytes.len() != self.len() {
            return Err(Error::PodSize {
                expected: bytes.len(),
                found: self.len(),
            });
        }
        self.0
            .payload()
            .read_at(0, bytes)
            .expect("the whole message is in bounds");
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_rings_can_move_between_threads() {
        fn assert_send<T: Send>() {}
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Ring>();
        assert_send::<Producer>();
        assert_send::<Consumer>();
    }
}
