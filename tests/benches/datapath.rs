//! Data-path benchmark: what it costs to move a message from one process to
//! another over each transport, and what a cross-process semaphore costs.
//!
//! For 64 B, 1 KiB and 64 KiB messages, every transport gets
//! - the round-trip latency, p50 and p99: this process sends a message with a
//!   sequence number, the peer process echoes it whole, this process checks
//!   the number;
//! - the one-way throughput: the peer streams messages as fast as the
//!   transport takes them, this process receives them all and checks each
//!   one's sequence number (its first 8 bytes);
//!
//! and at 64 KiB, two single-process copy baselines. Then semaphores: an
//! uncontended post + wait in one process, and a handoff between two
//! processes (each posts the other's semaphore and waits on its own).
//!
//! Every cross-process figure has two real processes: the peer is this
//! binary re-executed with [`ROLE`] set. Its control channel is a
//! `SOCK_SEQPACKET` socketpair given to it as stdin; the transport's fds go
//! over it in `SCM_RIGHTS` and ids in the datagram's text, and it carries the
//! commands and the "done" replies, so nothing waits by sleeping. Each figure
//! is the median of [`REPETITIONS`]; the transports take turns inside each
//! repetition, so they are measured side by side, after a warm-up.
//!
//! The ipcplane rows use the real agent (started by the benchmark) and the
//! SDK: two rings per transport, one per direction, sized by
//! [`ring_capacity`]; the echo copies the received message into the reply's
//! loan ring to ring. Adding a transport or a semaphore: see [`Transport`]
//! and [`SemKind`]. The ratio columns divide by [`REFERENCE`] (the ring,
//! busy-polling) and [`SEM_REFERENCE`] (the ipcplane semaphore).
//!
//! Run with `cargo build --release --workspace && cargo bench -p ipcplane-e2e
//! --bench datapath` (the agent binary must be built).
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant};

use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::prelude::*;
use iceoryx2::service::port_factory::publish_subscribe::PortFactory;
use ipcplane::ring::{self, Ring, Wait};
use ipcplane::{Client, Lifetime};
use ipcplane_e2e::TestAgent;
use ipcplane_shm::kernel_ipc::{PosixSemaphore, SysvMsgQueue, SysvSemaphore};
use ipcplane_shm::mapping::Mapping;
use ipcplane_shm::semaphore::{self, Semaphore};
use ipcplane_shm::{Access, fdpass, memfd};
use rustix::net::{AddressFamily, SocketFlags, SocketType};

/// Environment variable that makes this binary the peer process.
const ROLE: &str = "IPCPLANE_BENCH_ROLE";
/// Environment variable: if set, only transports and semaphores whose name
/// contains one of its comma-separated words (case-insensitive) are measured.
const ONLY: &str = "IPCPLANE_BENCH_ONLY";
/// Message sizes, in bytes; each is at least 8 (the sequence number).
const SIZES: [usize; 3] = [64, 1 << 10, 64 << 10];
/// Repetitions of every figure; the median is printed.
const REPETITIONS: usize = 5;
/// Round trips before the timed ones, in every repetition.
const WARMUP_ROUND_TRIPS: usize = 500;
/// Timed round trips per repetition (the percentiles are over these).
const ROUND_TRIPS: usize = 5_000;
/// Bytes streamed per throughput repetition, capped at [`STREAM_MAX_MESSAGES`].
const STREAM_BYTES: usize = 1 << 30;
const STREAM_MAX_MESSAGES: usize = 200_000;
/// Messages streamed once per transport and size before the repetitions.
const WARMUP_STREAM_MESSAGES: usize = 2_000;
/// Messages an iceoryx2 subscriber queues (the publisher waits when full).
const ICEORYX2_QUEUE: usize = 64;
/// Post + wait pairs per uncontended semaphore repetition.
const SEM_PAIRS: usize = 200_000;
/// Two-process semaphore round trips (two handoffs each) per repetition.
const SEM_ROUNDS: usize = 20_000;
/// The clock of round-trip samples: the CPU's time-stamp counter, read
/// through quanta. Two reads back to back cost about 10 ns on the
/// development VM against about 20 ns for `Instant::now`, a tenth of a 64 B
/// round trip; the header prints what they cost in each run.
static CLOCK: LazyLock<quanta::Clock> = LazyLock::new(quanta::Clock::new);
/// A busy-polling receiver gives up (panics) after this long without a
/// message, so a dead peer fails the bench instead of hanging it.
const SPIN_LIMIT: Duration = Duration::from_secs(30);

/// The transports, in table order.
///
/// Adding a transport: a variant, its entry in [`TRANSPORTS`], an arm in each
/// of [`name`](Self::name), [`unavailable`](Self::unavailable),
/// [`open`](Self::open) (this process's end, made first) and
/// [`join`](Self::join) (the peer's end, from the [`Handoff`]), and an
/// [`Endpoint`] for its end type (`send`, `recv_seq`, `echo`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    /// Two ipcplane rings (one per direction) created by a real agent and
    /// opened through the SDK; every receive busy-polls.
    RingBusyPoll,
    /// As [`RingBusyPoll`](Self::RingBusyPoll), receives spin a few
    /// microseconds then sleep on the ring's futex (the SDK's default).
    RingSpinPark,
    /// Receives sleep on the futex as soon as the ring is empty: the cost
    /// of a futex wake-up on every message.
    RingFutex,
    /// Receives `.await` the ring's eventfd doorbell on a tokio runtime:
    /// the cost of an async wake-up on every message.
    RingAsync,
    /// iceoryx2 publish-subscribe, one service per direction, zero-copy
    /// loans, busy-polling `receive`.
    Iceoryx2,
    /// A `socketpair(AF_UNIX, SOCK_STREAM)`.
    UnixStream,
    /// Two pipes, one per direction.
    Pipe,
    /// Two System V message queues, one per direction.
    SysvMsgQueue,
}

/// Every transport measured, in table order.
const TRANSPORTS: &[Transport] = &[
    Transport::RingBusyPoll,
    Transport::RingSpinPark,
    Transport::RingFutex,
    Transport::RingAsync,
    Transport::Iceoryx2,
    Transport::UnixStream,
    Transport::Pipe,
    Transport::SysvMsgQueue,
];

/// The transport the ratio columns divide by.
const REFERENCE: Transport = Transport::RingBusyPoll;

impl Transport {
    /// The table label, also how the peer is told which transport to join.
    fn name(self) -> &'static str {
        match self {
            Self::RingBusyPoll => "ipcplane ring, busy-poll",
            Self::RingSpinPark => "ipcplane ring, spin-then-park",
            Self::RingFutex => "ipcplane ring, futex wake each",
            Self::RingAsync => "ipcplane ring, tokio wake each",
            Self::Iceoryx2 => "iceoryx2 pub-sub, busy-poll",
            Self::UnixStream => "UNIX stream socketpair",
            Self::Pipe => "pipe pair",
            Self::SysvMsgQueue => "SysV message queue",
        }
    }

    /// Why this transport cannot carry `size`-byte messages, if it cannot.
    fn unavailable(self, size: usize) -> Option<String> {
        match self {
            Self::SysvMsgQueue => {
                let msgmax = std::fs::read_to_string("/proc/sys/kernel/msgmax")
                    .ok()
                    .and_then(|text| text.trim().parse::<usize>().ok())
                    .unwrap_or(8192);
                (size > msgmax).then(|| format!("n/a: above kernel.msgmax ({msgmax} B)"))
            }
            Self::RingBusyPoll
            | Self::RingSpinPark
            | Self::RingFutex
            | Self::RingAsync
            | Self::Iceoryx2
            | Self::UnixStream
            | Self::Pipe => None,
        }
    }

    /// This process's end, and what the peer needs to [`join`](Self::join).
    fn open(self, size: usize) -> (Box<dyn Endpoint>, Handoff) {
        match self {
            Self::RingBusyPoll | Self::RingSpinPark | Self::RingFutex | Self::RingAsync => {
                let (end, names) = RingEnd::create(self, size);
                (Box::new(end), Handoff::text(names))
            }
            Self::Iceoryx2 => {
                let prefix = format!("ipcplane-bench-{}-{size}", std::process::id());
                let end = Iceoryx2End::new(&prefix, size, true);
                (Box::new(end), Handoff::text(prefix))
            }
            Self::UnixStream => {
                let (ours, theirs) = UnixStream::pair().expect("socketpair");
                let end = ByteStream::new(ours.try_clone().expect("dup"), ours, size);
                (Box::new(end), Handoff::fds(vec![theirs.into()]))
            }
            Self::Pipe => {
                let (to_peer_rx, to_peer_tx) = pipe();
                let (to_us_rx, to_us_tx) = pipe();
                let end = ByteStream::new(File::from(to_us_rx), File::from(to_peer_tx), size);
                (Box::new(end), Handoff::fds(vec![to_peer_rx, to_us_tx]))
            }
            Self::SysvMsgQueue => {
                let to_peer = SysvMsgQueue::create_private().expect("msgget");
                let to_us = SysvMsgQueue::create_private().expect("msgget");
                let text = format!("{} {}", to_peer.id(), to_us.id());
                let end = SysvEnd {
                    tx: to_peer,
                    rx: to_us,
                    size,
                };
                (Box::new(end), Handoff::text(text))
            }
        }
    }

    /// The peer's end, from what [`open`](Self::open) handed over.
    fn join(self, size: usize, handoff: Handoff) -> Box<dyn Endpoint> {
        let mut fds = handoff.fds.into_iter();
        match self {
            Self::RingBusyPoll | Self::RingSpinPark | Self::RingFutex | Self::RingAsync => {
                Box::new(RingEnd::open(self, size, &handoff.text))
            }
            Self::Iceoryx2 => Box::new(Iceoryx2End::new(&handoff.text, size, false)),
            Self::UnixStream => {
                let stream = UnixStream::from(fds.next().expect("socket fd"));
                Box::new(ByteStream::new(
                    stream.try_clone().expect("dup"),
                    stream,
                    size,
                ))
            }
            Self::Pipe => {
                let rx = File::from(fds.next().expect("read end"));
                let tx = File::from(fds.next().expect("write end"));
                Box::new(ByteStream::new(rx, tx, size))
            }
            Self::SysvMsgQueue => {
                let [to_us, to_lead] = parse_ids(&handoff.text);
                Box::new(SysvEnd {
                    tx: SysvMsgQueue::open(to_lead),
                    rx: SysvMsgQueue::open(to_us),
                    size,
                })
            }
        }
    }
}

/// What the lead process hands the peer: text in the setup datagram (ids,
/// names) and fds in its `SCM_RIGHTS` (at most [`fdpass::MAX_FDS`]).
#[derive(Debug, Default)]
struct Handoff {
    text: String,
    fds: Vec<OwnedFd>,
}

impl Handoff {
    fn text(text: String) -> Self {
        Self {
            text,
            fds: Vec::new(),
        }
    }

    fn fds(fds: Vec<OwnedFd>) -> Self {
        Self {
            text: String::new(),
            fds,
        }
    }
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> (OwnedFd, OwnedFd) {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe")
}

fn parse_ids(text: &str) -> [i32; 2] {
    let ids: Vec<i32> = text
        .split_whitespace()
        .map(|id| id.parse().expect("an id"))
        .collect();
    ids.try_into().expect("two ids")
}

/// One process's end of a two-way transport of fixed-size messages.
///
/// A transport implements the three required methods; the loops are provided
/// methods so that each implementation gets its own copy of them, in which
/// the per-message calls are static, not virtual.
trait Endpoint {
    /// Sends `msg` (every message has the size the endpoint was made for),
    /// waiting while the transport is full.
    fn send(&mut self, msg: &[u8]);

    /// Receives one message, checks its size, and returns its first 8 bytes
    /// (little endian): a zero-copy transport reads only those, a byte stream
    /// has to read the whole message.
    fn recv_seq(&mut self) -> u64;

    /// Receives one message and sends the same bytes back.
    fn echo(&mut self);

    /// Lead side of `warmup + timed` round trips; returns the timed ones.
    fn round_trips(&mut self, msg: &mut [u8], warmup: usize, timed: usize) -> Vec<Duration> {
        let mut samples = Vec::with_capacity(timed);
        for seq in 0..(warmup + timed) as u64 {
            msg[..8].copy_from_slice(&seq.to_le_bytes());
            let start = CLOCK.raw();
            self.send(msg);
            let echoed = self.recv_seq();
            let elapsed = CLOCK.delta(start, CLOCK.raw());
            assert_eq!(echoed, seq, "the echo carries the sequence number");
            if seq >= warmup as u64 {
                samples.push(elapsed);
            }
        }
        samples
    }

    /// Peer side of `count` round trips.
    fn echo_many(&mut self, count: usize) {
        for _ in 0..count {
            self.echo();
        }
    }

    /// Sends `count` messages numbered from 0.
    fn produce(&mut self, msg: &mut [u8], count: usize) {
        for seq in 0..count as u64 {
            msg[..8].copy_from_slice(&seq.to_le_bytes());
            self.send(msg);
        }
    }

    /// Receives `count` messages, checking they come numbered from 0.
    fn consume(&mut self, count: usize) {
        for seq in 0..count as u64 {
            assert_eq!(self.recv_seq(), seq, "messages arrive in order");
        }
    }
}

/// A byte stream (socket or pipes) carrying fixed-size messages.
struct ByteStream<R, W> {
    rx: R,
    tx: W,
    buf: Vec<u8>,
}

impl<R: Read, W: Write> ByteStream<R, W> {
    fn new(rx: R, tx: W, size: usize) -> Self {
        Self {
            rx,
            tx,
            buf: vec![0; size],
        }
    }
}

impl<R: Read, W: Write> Endpoint for ByteStream<R, W> {
    fn send(&mut self, msg: &[u8]) {
        self.tx.write_all(msg).expect("write");
    }

    fn recv_seq(&mut self) -> u64 {
        self.rx.read_exact(&mut self.buf).expect("read");
        seq_of(&self.buf)
    }

    fn echo(&mut self) {
        self.rx.read_exact(&mut self.buf).expect("read");
        self.tx.write_all(&self.buf).expect("write");
    }
}

/// Two System V message queues, `tx` to the other process, `rx` from it.
struct SysvEnd {
    tx: SysvMsgQueue,
    rx: SysvMsgQueue,
    size: usize,
}

impl Endpoint for SysvEnd {
    fn send(&mut self, msg: &[u8]) {
        self.tx.send(msg).expect("msgsnd");
    }

    fn recv_seq(&mut self) -> u64 {
        let msg = self.rx.recv_in_place(self.size).expect("msgrcv");
        assert_eq!(msg.len(), self.size, "whole messages");
        seq_of(msg)
    }

    fn echo(&mut self) {
        let msg = self.rx.recv_in_place(self.size).expect("msgrcv");
        self.tx.send(msg).expect("msgsnd");
    }
}

/// The grant socket of the agent the lead process creates rings in (the
/// agent lives in [`report`], which stops it when done).
static GRANT_SOCKET: OnceLock<PathBuf> = OnceLock::new();

/// Bytes per ring lane for messages of `size` bytes, as a user would size
/// it: 1 MiB for small messages (deep enough that the producer rarely waits
/// for the consumer's progress), 256 KiB for 64 KiB messages (room for three,
/// so a lane stays in the cores' L2 caches like the memcpy baseline's buffer).
fn ring_capacity(size: usize) -> u64 {
    if size >= 64 << 10 { 256 << 10 } else { 1 << 20 }
}

/// Two ipcplane rings, through the SDK: `tx` to the other process, `rx`
/// from it.
struct RingEnd {
    tx: ring::Producer,
    rx: ring::Consumer,
    /// For [`Transport::RingAsync`]: the runtime its receives run on.
    runtime: Option<tokio::runtime::Runtime>,
    size: usize,
}

impl RingEnd {
    /// The lead's end: creates the two rings in the agent; returns the text
    /// the peer needs (the grant socket and the rings' names).
    fn create(transport: Transport, size: usize) -> (Self, String) {
        let socket = GRANT_SOCKET.get().expect("report started the agent");
        let client = Client::connect_to(socket).expect("connect to the agent");
        let prefix = format!("bench-{size}-{transport:?}");
        let create = |direction: &str| {
            client
                .ring_builder(format!("{prefix}-{direction}"))
                .capacity(ring_capacity(size))
                .max_message(size as u64)
                .lifetime(Lifetime::OnLastDetach)
                .create()
                .expect("create a ring")
        };
        let (to_peer, to_lead) = (create("to-peer"), create("to-lead"));
        let end = Self::new(transport, size, &to_peer, &to_lead);
        (end, format!("{} {prefix}", socket.display()))
    }

    /// The peer's end: opens the rings the lead created.
    fn open(transport: Transport, size: usize, text: &str) -> Self {
        let (socket, prefix) = text.split_once(' ').expect("socket and prefix");
        let client = Client::connect_to(socket).expect("connect to the agent");
        let open = |direction: &str| {
            client
                .open_ring(format!("{prefix}-{direction}").as_str())
                .expect("open a ring")
        };
        Self::new(transport, size, &open("to-lead"), &open("to-peer"))
    }

    fn new(transport: Transport, size: usize, outgoing: &Ring, incoming: &Ring) -> Self {
        let mut tx = outgoing.producer().expect("attach a producer");
        let mut rx = incoming.consumer().expect("attach the consumer");
        let wait = match transport {
            Transport::RingSpinPark => Wait::PARK,
            Transport::RingFutex | Transport::RingAsync => Wait::SpinThenPark { spins: 0 },
            _ => Wait::BusyPoll,
        };
        tx.set_wait(wait);
        rx.set_wait(wait);
        tx.set_timeout(Some(SPIN_LIMIT));
        rx.set_timeout(Some(SPIN_LIMIT));
        let runtime = (transport == Transport::RingAsync).then(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .expect("a tokio runtime")
        });
        Self {
            tx,
            rx,
            runtime,
            size,
        }
    }

    /// Receives one message (awaiting the doorbell on the async runtime, if
    /// there is one) and hands it to `with`.
    fn receive<T>(&mut self, with: impl FnOnce(&ring::Sample<'_>) -> T) -> T {
        match &self.runtime {
            Some(runtime) => {
                let sample = runtime
                    .block_on(async { self.rx.recv_async().await })
                    .expect("receive");
                with(&sample)
            }
            None => with(&self.rx.recv().expect("receive")),
        }
    }
}

impl Endpoint for RingEnd {
    fn send(&mut self, msg: &[u8]) {
        self.tx.send(msg).expect("send");
    }

    fn recv_seq(&mut self) -> u64 {
        let size = self.size;
        self.receive(|sample| {
            assert_eq!(sample.len(), size, "whole messages");
            let mut seq = [0; 8];
            sample.payload().read_at(0, &mut seq).expect("8 bytes");
            u64::from_le_bytes(seq)
        })
    }

    fn echo(&mut self) {
        let size = self.size;
        let (rx, tx, runtime) = (&mut self.rx, &mut self.tx, &self.runtime);
        let sample = match runtime {
            Some(runtime) => runtime.block_on(async { rx.recv_async().await }),
            None => rx.recv(),
        }
        .expect("receive");
        let mut reply = tx.loan(size).expect("loan");
        reply
            .write_payload_at(0, &sample.payload())
            .expect("same size");
        reply.commit();
    }
}

type IoxService = iceoryx2::service::ipc::Service;

/// iceoryx2 publish-subscribe of `[u8]` slices: a service per direction, each
/// with one publisher and one subscriber.
struct Iceoryx2End {
    publisher: Publisher<IoxService, [u8], ()>,
    subscriber: Subscriber<IoxService, [u8], ()>,
    _services: [PortFactory<IoxService, [u8], ()>; 2],
    _node: Node<IoxService>,
    size: usize,
}

impl Iceoryx2End {
    /// The lead creates the services `{prefix}/to-peer` and `{prefix}/to-lead`,
    /// the peer opens them.
    fn new(prefix: &str, size: usize, lead: bool) -> Self {
        set_log_level(LogLevel::Error);
        let node = NodeBuilder::new()
            .create::<IoxService>()
            .expect("iceoryx2 node");
        let service = |direction: &str| {
            let name = format!("{prefix}/{direction}");
            let name = ServiceName::new(&name).expect("service name");
            let builder = node.service_builder(&name).publish_subscribe::<[u8]>();
            if lead {
                builder
                    .max_publishers(1)
                    .max_subscribers(1)
                    .max_nodes(4)
                    .history_size(0)
                    .subscriber_max_buffer_size(ICEORYX2_QUEUE)
                    .subscriber_max_borrowed_samples(1)
                    .enable_safe_overflow(false)
                    .create()
                    .expect("create the iceoryx2 service")
            } else {
                builder.open().expect("open the iceoryx2 service")
            }
        };
        let (outgoing, incoming) = if lead {
            (service("to-peer"), service("to-lead"))
        } else {
            (service("to-lead"), service("to-peer"))
        };
        let publisher = outgoing
            .publisher_builder()
            .initial_max_slice_len(size)
            .max_loaned_samples(1)
            .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
            .create()
            .expect("iceoryx2 publisher");
        let subscriber = incoming
            .subscriber_builder()
            .buffer_size(ICEORYX2_QUEUE)
            .create()
            .expect("iceoryx2 subscriber");
        Self {
            publisher,
            subscriber,
            _services: [outgoing, incoming],
            _node: node,
            size,
        }
    }
}

impl Endpoint for Iceoryx2End {
    fn send(&mut self, msg: &[u8]) {
        let sample = self
            .publisher
            .loan_slice_uninit(msg.len())
            .expect("loan")
            .write_from_slice(msg);
        assert_eq!(sample.send().expect("send"), 1, "delivered to the peer");
    }

    fn recv_seq(&mut self) -> u64 {
        let sample = spin(|| self.subscriber.receive().expect("receive"));
        assert_eq!(sample.payload().len(), self.size, "whole messages");
        seq_of(sample.payload())
    }

    fn echo(&mut self) {
        let received = spin(|| self.subscriber.receive().expect("receive"));
        let reply = self
            .publisher
            .loan_slice_uninit(received.payload().len())
            .expect("loan")
            .write_from_slice(received.payload());
        drop(received);
        assert_eq!(reply.send().expect("send"), 1, "delivered to the peer");
    }
}

/// The sequence number at the start of a message.
fn seq_of(msg: &[u8]) -> u64 {
    u64::from_le_bytes(msg[..8].try_into().expect("8 bytes"))
}

/// Calls `poll` until it returns something, panicking after [`SPIN_LIMIT`].
fn spin<T>(mut poll: impl FnMut() -> Option<T>) -> T {
    let mut spins: u32 = 0;
    let mut since = None;
    loop {
        if let Some(value) = poll() {
            return value;
        }
        spins = spins.wrapping_add(1);
        if spins % (1 << 16) == 0 {
            let since: &mut Instant = since.get_or_insert_with(Instant::now);
            assert!(
                since.elapsed() < SPIN_LIMIT,
                "nothing arrived for {SPIN_LIMIT:?}: is the peer alive?"
            );
        }
    }
}

/// The semaphores, in table order.
///
/// Adding a semaphore: a variant, its entry in [`SEMAPHORES`], an arm in each
/// of [`name`](Self::name), [`create`](Self::create) and
/// [`attach`](Self::attach) (two semaphores each, as [`Pair`]s), and a
/// [`CountingSemaphore`] for its handle type (`post`, `wait`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SemKind {
    /// The ipcplane semaphore: a futex word in a shared memfd, with no system
    /// call unless a waiter sleeps.
    Ipcplane,
    /// System V semaphores, a `semop` system call per operation.
    Sysv,
    /// POSIX unnamed `sem_t`s, `pshared = 1`, in a shared memfd mapping.
    Posix,
}

/// Every semaphore measured, in table order.
const SEMAPHORES: &[SemKind] = &[SemKind::Ipcplane, SemKind::Sysv, SemKind::Posix];

/// The semaphore the ratio columns divide by.
const SEM_REFERENCE: SemKind = SemKind::Ipcplane;

impl SemKind {
    fn name(self) -> &'static str {
        match self {
            Self::Ipcplane => "ipcplane semaphore",
            Self::Sysv => "SysV semop",
            Self::Posix => "POSIX sem_t (pshared, glibc)",
        }
    }

    /// The lead's pair (it waits on the first semaphore, posts the second),
    /// and what the peer needs to [`attach`](Self::attach).
    fn create(self) -> (Box<dyn SemaphorePair>, Handoff) {
        match self {
            Self::Ipcplane => {
                let make = |name| {
                    let fd = memfd::create_sealed(name, 4096).expect("memfd");
                    let mapping = map(fd.as_fd());
                    semaphore::init_mapping(&mapping, 0).expect("init");
                    let semaphore = Semaphore::from_mapping(Arc::new(mapping)).expect("attach");
                    (semaphore, fd)
                };
                let (mine, lead_fd) = make("bench-sem-lead");
                let (peer, peer_fd) = make("bench-sem-peer");
                (
                    Box::new(Pair { mine, peer }),
                    Handoff::fds(vec![lead_fd, peer_fd]),
                )
            }
            Self::Sysv => {
                let lead = SysvSemaphore::create_private().expect("semget");
                let peer = SysvSemaphore::create_private().expect("semget");
                let text = format!("{} {}", lead.id(), peer.id());
                (Box::new(Pair { mine: lead, peer }), Handoff::text(text))
            }
            Self::Posix => {
                let lead_fd = memfd::create_sealed("bench-sem-lead", 4096).expect("memfd");
                let peer_fd = memfd::create_sealed("bench-sem-peer", 4096).expect("memfd");
                let pair = Pair {
                    mine: PosixSemaphore::init(map(lead_fd.as_fd()), 0).expect("sem_init"),
                    peer: PosixSemaphore::init(map(peer_fd.as_fd()), 0).expect("sem_init"),
                };
                (Box::new(pair), Handoff::fds(vec![lead_fd, peer_fd]))
            }
        }
    }

    /// The peer's pair (it waits on the second semaphore, posts the first).
    fn attach(self, handoff: Handoff) -> Box<dyn SemaphorePair> {
        match self {
            Self::Ipcplane => {
                let [lead_fd, peer_fd]: [OwnedFd; 2] = handoff.fds.try_into().expect("two memfds");
                let attach = |fd: OwnedFd| {
                    Semaphore::from_mapping(Arc::new(map(fd.as_fd()))).expect("attach")
                };
                Box::new(Pair {
                    mine: attach(peer_fd),
                    peer: attach(lead_fd),
                })
            }
            Self::Sysv => {
                let [lead, peer] = parse_ids(&handoff.text);
                Box::new(Pair {
                    mine: SysvSemaphore::open(peer),
                    peer: SysvSemaphore::open(lead),
                })
            }
            Self::Posix => {
                let [lead_fd, peer_fd]: [OwnedFd; 2] = handoff.fds.try_into().expect("two memfds");
                Box::new(Pair {
                    mine: PosixSemaphore::attach(map(peer_fd.as_fd())).expect("attach"),
                    peer: PosixSemaphore::attach(map(lead_fd.as_fd())).expect("attach"),
                })
            }
        }
    }
}

fn map(fd: BorrowedFd<'_>) -> Mapping {
    Mapping::map(fd, Access::ReadWrite).expect("map")
}

/// A counting semaphore shared between processes.
trait CountingSemaphore {
    fn post(&self);
    fn wait(&self);
}

impl CountingSemaphore for Semaphore {
    fn post(&self) {
        self.release().expect("release");
    }

    fn wait(&self) {
        self.acquire(None).expect("acquire");
    }
}

impl CountingSemaphore for SysvSemaphore {
    fn post(&self) {
        SysvSemaphore::post(self).expect("semop +1");
    }

    fn wait(&self) {
        SysvSemaphore::wait(self).expect("semop -1");
    }
}

impl CountingSemaphore for PosixSemaphore {
    fn post(&self) {
        PosixSemaphore::post(self).expect("sem_post");
    }

    fn wait(&self) {
        PosixSemaphore::wait(self).expect("sem_wait");
    }
}

/// One process's two semaphores: its own, which it waits on, and the
/// other process's, which it posts.
struct Pair<S> {
    mine: S,
    peer: S,
}

/// The semaphore loops, over a [`Pair`] of any [`CountingSemaphore`]; provided
/// methods, so the per-operation calls are static.
trait SemaphorePair {
    fn post_mine(&self);
    fn wait_mine(&self);
    fn post_peer(&self);

    /// `pairs` uncontended post + wait on this process's own semaphore.
    fn uncontended(&self, pairs: usize) -> Duration {
        let start = Instant::now();
        for _ in 0..pairs {
            self.post_mine();
            self.wait_mine();
        }
        start.elapsed()
    }

    /// Lead side of `rounds` round trips: post the peer's, wait on mine.
    fn lead_rounds(&self, rounds: usize) -> Duration {
        let start = Instant::now();
        for _ in 0..rounds {
            self.post_peer();
            self.wait_mine();
        }
        start.elapsed()
    }

    /// Peer side of `rounds` round trips: wait on mine, post the lead's.
    fn follow_rounds(&self, rounds: usize) {
        for _ in 0..rounds {
            self.wait_mine();
            self.post_peer();
        }
    }
}

impl<S: CountingSemaphore> SemaphorePair for Pair<S> {
    fn post_mine(&self) {
        self.mine.post();
    }

    fn wait_mine(&self) {
        self.mine.wait();
    }

    fn post_peer(&self) {
        self.peer.post();
    }
}

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("peer") => peer(),
        _ => report(),
    }
}

/// The peer process, driven over its stdin (a `SOCK_SEQPACKET` socket): a
/// setup datagram `kind\nname\nsize\ntext` with the handoff's fds, then
/// commands, each answered with "done"; it exits on "quit" or EOF.
fn peer() {
    let stdin = std::io::stdin();
    let control = stdin.as_fd();
    let (setup, fds) = recv_control(control);
    let mut fields = setup.splitn(4, '\n');
    let mut field = || fields.next().expect("setup field").to_owned();
    let (kind, name, size, text) = (field(), field(), field(), field());
    let size: usize = size.parse().expect("size");
    let handoff = Handoff { text, fds };
    match kind.as_str() {
        "transport" => {
            let transport = *TRANSPORTS
                .iter()
                .find(|t| t.name() == name)
                .expect("known transport");
            let mut endpoint = transport.join(size, handoff);
            let mut msg = message(size);
            serve(control, |command, count| match command {
                "pingpong" => endpoint.echo_many(count),
                "stream" => endpoint.produce(msg.as_mut_slice(), count),
                _ => panic!("unknown command {command}"),
            });
        }
        "semaphore" => {
            let kind = *SEMAPHORES
                .iter()
                .find(|k| k.name() == name)
                .expect("known semaphore");
            let pair = kind.attach(handoff);
            serve(control, |command, count| match command {
                "rounds" => pair.follow_rounds(count),
                _ => panic!("unknown command {command}"),
            });
        }
        "cacheline" => {
            let fd = handoff.fds.into_iter().next().expect("a memfd");
            let lines = CacheLines::new(map(fd.as_fd()));
            serve(control, |command, count| match command {
                "bounce" => lines.bounce(count),
                _ => panic!("unknown command {command}"),
            });
        }
        _ => panic!("unknown setup {kind}"),
    }
}

/// Says "ready", then runs `command count` datagrams until "quit" or EOF.
fn serve(control: BorrowedFd<'_>, mut run: impl FnMut(&str, usize)) {
    send_control(control, "ready", &[]);
    loop {
        let (line, _) = recv_control(control);
        let Some((command, count)) = line.split_once(' ') else {
            return; // "quit", or "" at EOF
        };
        run(command, count.parse().expect("count"));
        send_control(control, "done", &[]);
    }
}

fn send_control(control: BorrowedFd<'_>, text: &str, fds: &[BorrowedFd<'_>]) {
    fdpass::send(control, text.as_bytes(), fds).expect("control send");
}

fn recv_control(control: BorrowedFd<'_>) -> (String, Vec<OwnedFd>) {
    let mut buf = [0; 512];
    let received = fdpass::recv(control, &mut buf).expect("control recv");
    assert!(!received.truncated && !received.fds_truncated);
    let text = std::str::from_utf8(&buf[..received.len]).expect("utf-8");
    (text.to_owned(), received.fds)
}

/// A peer process and the lead's end of its control socket.
struct Peer {
    control: OwnedFd,
    child: Child,
}

impl Peer {
    /// Starts a peer, sends it the setup and the handoff, waits for "ready".
    fn spawn(kind: &str, name: &str, size: usize, handoff: Handoff) -> Self {
        let (control, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socketpair");
        let child = Command::new(std::env::current_exe().expect("current_exe"))
            .env(ROLE, "peer")
            .stdin(Stdio::from(theirs))
            .spawn()
            .expect("spawn the peer");
        let peer = Self { control, child };
        let fds: Vec<BorrowedFd<'_>> = handoff.fds.iter().map(AsFd::as_fd).collect();
        let setup = format!("{kind}\n{name}\n{size}\n{}", handoff.text);
        send_control(peer.control.as_fd(), &setup, &fds);
        peer.expect("ready");
        peer
    }

    fn command(&self, command: &str, count: usize) {
        send_control(self.control.as_fd(), &format!("{command} {count}"), &[]);
    }

    fn expect(&self, reply: &str) {
        let (text, _) = recv_control(self.control.as_fd());
        assert_eq!(text, reply, "the peer's reply");
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = fdpass::send(self.control.as_fd(), b"quit", &[]);
        let status = self.child.wait().expect("wait for the peer");
        if !std::thread::panicking() {
            assert!(status.success(), "the peer failed: {status}");
        }
    }
}

/// A transport under measurement: this process's end and the peer process.
struct Running {
    // The peer quits before this process's end goes away.
    peer: Peer,
    endpoint: Box<dyn Endpoint>,
    msg: PageAligned,
}

impl Running {
    fn start(transport: Transport, size: usize) -> Self {
        let (endpoint, handoff) = transport.open(size);
        let peer = Peer::spawn("transport", transport.name(), size, handoff);
        let mut running = Self {
            peer,
            endpoint,
            msg: message(size),
        };
        running.round_trips(WARMUP_ROUND_TRIPS, 1);
        running.messages_per_second(WARMUP_STREAM_MESSAGES);
        running
    }

    /// p50 and p99 of `timed` round trips, after `warmup` untimed ones.
    fn round_trips(&mut self, warmup: usize, timed: usize) -> (Duration, Duration) {
        self.peer.command("pingpong", warmup + timed);
        let samples = self
            .endpoint
            .round_trips(self.msg.as_mut_slice(), warmup, timed);
        self.peer.expect("done");
        percentiles(samples)
    }

    /// The peer streams `count` messages; this process receives them all.
    fn messages_per_second(&mut self, count: usize) -> f64 {
        self.peer.command("stream", count);
        let start = Instant::now();
        self.endpoint.consume(count);
        let elapsed = start.elapsed();
        self.peer.expect("done");
        count as f64 / elapsed.as_secs_f64()
    }
}

/// A page-aligned buffer. Every buffer a copy measured here reads or
/// writes is one, so the copies have the same relative alignment in every
/// run: glibc's `memcpy` here runs up to 17x slower when the destination
/// lies a few bytes past the source modulo 4 KiB (its loads wait on
/// stores they only seem to alias), which made buffers at heap addresses
/// vary a 64 KiB baseline between 29 and 56 GB/s from run to run.
struct PageAligned {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

impl PageAligned {
    const PAGE: usize = 4096;

    fn zeroed(len: usize) -> Self {
        let bytes = vec![0; len + Self::PAGE];
        let start = bytes.as_ptr().align_offset(Self::PAGE);
        Self { bytes, start, len }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[self.start..self.start + self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + self.len]
    }
}

/// A message of `size` bytes, not all zero.
fn message(size: usize) -> PageAligned {
    let mut msg = PageAligned::zeroed(size);
    for (i, byte) in msg.as_mut_slice().iter_mut().enumerate() {
        *byte = i as u8 | 1;
    }
    msg
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    )
}

fn median<T: Copy>(mut values: Vec<T>, cmp: impl Fn(&T, &T) -> std::cmp::Ordering) -> T {
    values.sort_by(cmp);
    values[values.len() / 2]
}

fn stream_messages(size: usize) -> usize {
    (STREAM_BYTES / size).min(STREAM_MAX_MESSAGES)
}

/// One table row: medians over the repetitions.
struct Row {
    label: String,
    latency: Option<(Duration, Duration)>,
    rate: Option<f64>,
    note: Option<String>,
}

fn report() {
    println!(
        "data path between two processes ({} CPUs), median of {REPETITIONS} repetitions; \
         ratio columns: value / value of the reference (ref) transport",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  latency: {ROUND_TRIPS} timed round trips per repetition (after {WARMUP_ROUND_TRIPS}), \
         the peer echoes each message whole; timed with quanta (TSC reads), two of them back to back \
         take {} p50 (included in every figure)",
        duration_text(clock_cost())
    );
    println!(
        "  throughput: the peer streams min({} MiB, {STREAM_MAX_MESSAGES} messages), \
         this process checks each sequence number (zero-copy transports read only \
         those 8 bytes, byte streams copy every byte); GB = 10^9 bytes",
        STREAM_BYTES >> 20
    );
    println!("  iceoryx2: subscriber queue of {ICEORYX2_QUEUE} samples, publisher waits when full");
    let agent = TestAgent::start_with(
        "[quota]\nmax_bytes = \"unlimited\"\nmax_segments = \"unlimited\"\n\
         max_segment_bytes = \"unlimited\"\n",
    );
    GRANT_SOCKET
        .set(agent.grant_socket())
        .expect("one report per process");
    println!(
        "  the floor: a bare cache-line ping-pong between two processes (a counter bounced \
         through two words of a shared memfd), measured in turn with the transports"
    );
    let load_before = load_average();
    let started = Instant::now();
    let mut floor = Floor::start();
    for size in SIZES {
        let rows = measure_size(size, &mut floor);
        print_table(size, &rows);
    }
    measure_semaphores();
    println!(
        "(total {:.0?}; load average {load_before} before, {} after: busy-polling figures \
         suffer when other work competes for the CPUs)",
        started.elapsed(),
        load_average()
    );
}

/// Two words on lines of their own in a shared memfd: the lead writes a
/// counter into `ping`, the peer copies it into `pong`.
struct CacheLines {
    mapping: Mapping,
}

impl CacheLines {
    const PING: usize = 0;
    const PONG: usize = 128;

    fn new(mapping: Mapping) -> Self {
        Self { mapping }
    }

    fn word(&self, offset: usize) -> &std::sync::atomic::AtomicU64 {
        self.mapping.atomic_u64(offset).expect("an aligned word")
    }

    /// Lead side: `count` round trips from `first`, each timed.
    fn round_trips(&self, first: u64, count: usize) -> Vec<Duration> {
        let (ping, pong) = (self.word(Self::PING), self.word(Self::PONG));
        (first..first + count as u64)
            .map(|seq| {
                let start = CLOCK.raw();
                // ORDERING: Release/Acquire pair with the peer's in `bounce`,
                // as a real protocol would (data before the flag).
                ping.store(seq, std::sync::atomic::Ordering::Release);
                spin(|| (pong.load(std::sync::atomic::Ordering::Acquire) == seq).then_some(()));
                CLOCK.delta(start, CLOCK.raw())
            })
            .collect()
    }

    /// Peer side: copies `count` new counter values from `ping` to `pong`.
    fn bounce(&self, count: usize) {
        let (ping, pong) = (self.word(Self::PING), self.word(Self::PONG));
        // ORDERING: Relaxed; the peer's own last answer.
        let mut last = pong.load(std::sync::atomic::Ordering::Relaxed);
        for _ in 0..count {
            // ORDERING: Acquire; pairs with the lead's Release store.
            last = spin(|| {
                let seen = ping.load(std::sync::atomic::Ordering::Acquire);
                (seen != last).then_some(seen)
            });
            // ORDERING: Release; pairs with the lead's Acquire load.
            pong.store(last, std::sync::atomic::Ordering::Release);
        }
    }
}

/// The bare cache-line round trip, measured in every repetition next to
/// the transports: the VM this runs on moves between states where all
/// cross-core traffic is up to three times slower, so a floor measured once
/// says little about a row measured a second later.
struct Floor {
    lines: CacheLines,
    peer: Peer,
    next: u64,
}

impl Floor {
    fn start() -> Self {
        let fd = memfd::create_sealed("bench-cachelines", 4096).expect("memfd");
        let lines = CacheLines::new(map(fd.as_fd()));
        let peer = Peer::spawn("cacheline", "bare", 8, Handoff::fds(vec![fd]));
        Self {
            lines,
            peer,
            next: 1,
        }
    }

    /// p50 and p99 of one repetition's round trips.
    fn round_trips(&mut self) -> (Duration, Duration) {
        let count = WARMUP_ROUND_TRIPS + ROUND_TRIPS;
        self.peer.command("bounce", count);
        let mut samples = self.lines.round_trips(self.next, count);
        self.next += count as u64;
        self.peer.expect("done");
        percentiles(samples.split_off(WARMUP_ROUND_TRIPS))
    }
}

fn measure_size(size: usize, floor: &mut Floor) -> Vec<Row> {
    let mut running: Vec<(Transport, Option<Running>)> = TRANSPORTS
        .iter()
        .map(|&t| {
            let measured = t.unavailable(size).is_none() && selected(t.name());
            (t, measured.then(|| Running::start(t, size)))
        })
        .collect();
    let count = stream_messages(size);
    let mut latencies: Vec<Vec<(Duration, Duration)>> = vec![Vec::new(); running.len()];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); running.len()];
    let mut copy_rates = [Vec::new(), Vec::new()];
    let mut floor_latencies = Vec::new();
    for _ in 0..REPETITIONS {
        floor_latencies.push(floor.round_trips());
        for (i, (_, run)) in running.iter_mut().enumerate() {
            if let Some(run) = run {
                latencies[i].push(run.round_trips(WARMUP_ROUND_TRIPS, ROUND_TRIPS));
                rates[i].push(run.messages_per_second(count));
            }
        }
        if size == 64 << 10 {
            let (write_at, plain) = copies_per_second(size, count);
            copy_rates[0].push(write_at);
            copy_rates[1].push(plain);
        }
    }
    // Each repetition measures the ring and the memcpy a moment apart, so
    // their ratio per repetition drifts less with the VM than the ratio of
    // the medians.
    let reference = TRANSPORTS.iter().position(|&t| t == REFERENCE);
    let ring_to_memcpy = reference
        .map(|i| &rates[i])
        .filter(|ring| ring.len() == copy_rates[1].len() && !ring.is_empty())
        .map(|ring| {
            let ratios = ring
                .iter()
                .zip(&copy_rates[1])
                .map(|(r, m)| r / m)
                .collect();
            median(ratios, f64::total_cmp)
        });
    let mut rows: Vec<Row> = running
        .drain(..)
        .zip(latencies.into_iter().zip(rates))
        .map(|((transport, _), (latency, rate))| Row {
            label: format!(
                "{}{}",
                transport.name(),
                if transport == REFERENCE { " (ref)" } else { "" }
            ),
            latency: (!latency.is_empty()).then(|| median_latency(&latency)),
            rate: (!rate.is_empty()).then(|| median(rate, f64::total_cmp)),
            note: transport
                .unavailable(size)
                .or_else(|| (!selected(transport.name())).then(|| format!("skipped ({ONLY})"))),
        })
        .collect();
    rows.push(Row {
        label: "the floor: bare cache lines".into(),
        latency: Some(median_latency(&floor_latencies)),
        rate: None,
        note: Some("no message, a counter".into()),
    });
    if size == 64 << 10 {
        let [write_at, plain] = copy_rates;
        rows.push(Row {
            label: "copy into memfd Mapping (write_at)".into(),
            latency: None,
            rate: Some(median(write_at, f64::total_cmp)),
            note: Some("one process; atomic word copies".into()),
        });
        rows.push(Row {
            label: "memcpy into page-aligned memory".into(),
            latency: None,
            rate: Some(median(plain, f64::total_cmp)),
            note: Some(match ring_to_memcpy {
                Some(ratio) => format!(
                    "one process; the ring reaches {ratio:.2}x of it (median of per-repetition ratios)"
                ),
                None => "one process; plain memcpy".into(),
            }),
        });
    }
    rows
}

/// Copies of one `size`-byte message per second, `count` times each: with
/// [`Mapping::write_at`] into a mapped memfd (the only safe copy into a
/// mapping, word-by-word atomic stores), and with `copy_from_slice` into a
/// page-aligned buffer (a plain `memcpy`).
fn copies_per_second(size: usize, count: usize) -> (f64, f64) {
    let fd = memfd::create_sealed("bench-memcpy", size as u64).expect("memfd");
    let mapping = map(fd.as_fd());
    let mut src = message(size);
    let start = Instant::now();
    for seq in 0..count as u64 {
        src.as_mut_slice()[..8].copy_from_slice(&seq.to_le_bytes());
        mapping.write_at(0, src.as_slice()).expect("write_at");
    }
    let write_at = count as f64 / start.elapsed().as_secs_f64();
    let mut dst = PageAligned::zeroed(size);
    let start = Instant::now();
    for seq in 0..count as u64 {
        src.as_mut_slice()[..8].copy_from_slice(&seq.to_le_bytes());
        dst.as_mut_slice().copy_from_slice(src.as_slice());
        std::hint::black_box(&mut dst);
    }
    let plain = count as f64 / start.elapsed().as_secs_f64();
    (write_at, plain)
}

/// What two back-to-back reads of [`CLOCK`] measure, p50; calibrates the
/// clock first.
fn clock_cost() -> Duration {
    let samples = (0..ROUND_TRIPS)
        .map(|_| CLOCK.delta(CLOCK.raw(), CLOCK.raw()))
        .collect();
    percentiles(samples).0
}

/// Medians of p50 and p99 over repetitions.
fn median_latency(repetitions: &[(Duration, Duration)]) -> (Duration, Duration) {
    (
        median(repetitions.iter().map(|l| l.0).collect(), Ord::cmp),
        median(repetitions.iter().map(|l| l.1).collect(), Ord::cmp),
    )
}

fn print_table(size: usize, rows: &[Row]) {
    let reference = rows
        .iter()
        .zip(TRANSPORTS)
        .find(|(_, t)| **t == REFERENCE)
        .map(|(row, _)| row);
    let ref_latency = reference.and_then(|r| r.latency);
    let ref_rate = reference.and_then(|r| r.rate);
    println!();
    println!("{} messages", size_name(size));
    println!(
        "  {:<37} {:>9} {:>7} {:>9} {:>7} {:>13} {:>7} {:>7}",
        "transport", "rtt p50", "x ref", "rtt p99", "x ref", "msgs/s", "x ref", "GB/s"
    );
    for row in rows {
        let mut line = format!("  {:<37}", row.label);
        match row.latency {
            Some((p50, p99)) => {
                let ratio = |value: Duration, pick: fn(&(Duration, Duration)) -> Duration| {
                    ref_latency.map(|r| value.as_secs_f64() / pick(&r).as_secs_f64())
                };
                let _ = write!(
                    line,
                    " {:>9} {:>7} {:>9} {:>7}",
                    duration_text(p50),
                    ratio_text(ratio(p50, |r| r.0)),
                    duration_text(p99),
                    ratio_text(ratio(p99, |r| r.1))
                );
            }
            None => {
                let _ = write!(line, " {:>9} {:>7} {:>9} {:>7}", "-", "", "-", "");
            }
        }
        match row.rate {
            Some(rate) => {
                let _ = write!(
                    line,
                    " {:>13} {:>7} {:>7.2}",
                    thousands(rate),
                    ratio_text(ref_rate.map(|r| rate / r)),
                    rate * size as f64 / 1e9
                );
            }
            None => {
                let _ = write!(line, " {:>13} {:>7} {:>7}", "-", "", "");
            }
        }
        if let Some(note) = &row.note {
            let _ = write!(line, "  {note}");
        }
        println!("{}", line.trim_end());
    }
}

fn measure_semaphores() {
    let kinds: Vec<SemKind> = SEMAPHORES
        .iter()
        .copied()
        .filter(|k| selected(k.name()))
        .collect();
    if kinds.is_empty() {
        return;
    }
    let pairs: Vec<(Box<dyn SemaphorePair>, Peer)> = kinds
        .iter()
        .map(|&kind| {
            let (pair, handoff) = kind.create();
            let peer = Peer::spawn("semaphore", kind.name(), 0, handoff);
            pair.uncontended(SEM_PAIRS / 10);
            peer.command("rounds", SEM_ROUNDS / 10);
            pair.lead_rounds(SEM_ROUNDS / 10);
            peer.expect("done");
            (pair, peer)
        })
        .collect();
    // Nanoseconds per uncontended pair and per handoff, for each repetition.
    let mut runs: Vec<(Vec<f64>, Vec<f64>)> = vec![Default::default(); kinds.len()];
    for _ in 0..REPETITIONS {
        for ((pair, peer), (uncontended, handoff)) in pairs.iter().zip(&mut runs) {
            let elapsed = pair.uncontended(SEM_PAIRS);
            uncontended.push(elapsed.as_secs_f64() * 1e9 / SEM_PAIRS as f64);
            peer.command("rounds", SEM_ROUNDS);
            let elapsed = pair.lead_rounds(SEM_ROUNDS);
            peer.expect("done");
            handoff.push(elapsed.as_secs_f64() * 1e9 / (2 * SEM_ROUNDS) as f64);
        }
    }
    drop(pairs);
    let results: Vec<(f64, f64)> = runs
        .into_iter()
        .map(|(u, h)| (median(u, f64::total_cmp), median(h, f64::total_cmp)))
        .collect();
    let reference = kinds
        .iter()
        .position(|&k| k == SEM_REFERENCE)
        .map(|i| results[i]);
    println!();
    println!(
        "semaphores: uncontended post + wait in one process ({SEM_PAIRS} pairs); two processes \
         each posting the other's and waiting on its own ({SEM_ROUNDS} round trips, 2 handoffs each)"
    );
    println!(
        "  {:<37} {:>12} {:>7} {:>15} {:>7}",
        "semaphore", "P+V ns/pair", "x ref", "ns per handoff", "x ref"
    );
    for (kind, (uncontended, handoff)) in kinds.iter().zip(results) {
        let label = format!(
            "{}{}",
            kind.name(),
            if *kind == SEM_REFERENCE { " (ref)" } else { "" }
        );
        println!(
            "  {label:<37} {uncontended:>12.1} {:>7} {handoff:>15.0} {:>7}",
            ratio_text(reference.map(|r| uncontended / r.0)),
            ratio_text(reference.map(|r| handoff / r.1))
        );
    }
}

/// The 1-minute load average, from `/proc/loadavg`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// Whether `name` passes the [`ONLY`] filter.
fn selected(name: &str) -> bool {
    std::env::var(ONLY).map_or(true, |only| {
        let name = name.to_lowercase();
        only.split(',')
            .any(|word| name.contains(word.trim().to_lowercase().as_str()))
    })
}

fn size_name(size: usize) -> String {
    if size >= 1 << 10 {
        format!("{} KiB", size >> 10)
    } else {
        format!("{size} B")
    }
}

fn duration_text(d: Duration) -> String {
    let nanos = d.as_secs_f64() * 1e9;
    if nanos < 10_000.0 {
        format!("{nanos:.0} ns")
    } else if nanos < 10_000_000.0 {
        format!("{:.1} us", nanos / 1e3)
    } else {
        format!("{:.1} ms", nanos / 1e6)
    }
}

fn ratio_text(ratio: Option<f64>) -> String {
    ratio.map_or_else(
        || "-".into(),
        |r| {
            if r < 0.1 {
                format!("{r:.3}x")
            } else {
                format!("{r:.2}x")
            }
        },
    )
}

fn thousands(value: f64) -> String {
    let digits = format!("{value:.0}");
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
