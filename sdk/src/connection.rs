//! The connection to the agent that a [`Client`](crate::Client) and its
//! segments share: one request at a time over the grant socket, the registry
//! of the attachments this process holds, and the `ipcplane-reconnect`
//! thread that replaces the socket when the agent goes away and re-presents
//! those attachments to its successor.
//!
//! # Locking
//! One mutex guards the [`Channel`]: the current link (if any) and the
//! registry. Every exchange with the agent, every change to the registry and
//! the re-presentation after a restart happen under it, so a grant and its
//! registration, or a release and its detach, never straddle a reconnect:
//! each attachment is known to exactly the agent that counts it.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread;
use std::time::{Duration, Instant};

use ipcplane_proto::v1::{self, grant_request};
use ipcplane_proto::{GRANT_PROTOCOL_VERSION, MAX_GRANT_DATAGRAM};
use ipcplane_shm::mapping::Mapping;
use ipcplane_shm::{Access, fdpass};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::sockopt::{Timeout, set_socket_timeout};
use rustix::net::{AddressFamily, Shutdown, SocketAddrUnix, SocketFlags, SocketType};
use rustix::pipe::PipeFlags;
use tracing::{debug, info, warn};

use crate::client::Identity;
use crate::error::Error;
use crate::segment::{Segment, SegmentId, SegmentInfo, SegmentKind, map_grant};
use crate::wire::{self, Reply, Token};

/// The name of the thread that watches each connection.
const THREAD_NAME: &str = "ipcplane-reconnect";

/// Wait before the first reconnection attempt. A killed agent is not back
/// sooner, and it keeps a connection that an agent closes on purpose from
/// being retried in a tight loop.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(10);

/// Longest wait between reconnection attempts: an agent restarted by its
/// service manager is found within a second of being back.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

/// How long to wait before reconnection attempt `attempt` (from 0) after the
/// agent went away: [`FIRST_RETRY_DELAY`], doubling, at most
/// [`MAX_RETRY_DELAY`].
fn retry_delay(attempt: u32) -> Duration {
    FIRST_RETRY_DELAY
        .saturating_mul(2_u32.saturating_pow(attempt))
        .min(MAX_RETRY_DELAY)
}

/// The connection to the agent, shared by a [`Client`](crate::Client) and its
/// segments, and watched by a thread that reconnects it.
pub(crate) struct Connection {
    path: PathBuf,
    /// Bounds each send and receive, and each wait for a reconnection.
    timeout: Duration,
    channel: Mutex<Channel>,
    /// Notified when the reconnect thread installs a new link.
    relinked: Condvar,
    /// From the latest hello; a tenant rule may have changed across an agent
    /// restart. Apart from the channel so reading it never waits for a call.
    identity: Mutex<Identity>,
    /// Successful reconnections so far.
    reconnects: AtomicU64,
    /// Write end of a pipe whose read end the reconnect thread polls. Never
    /// written: dropping it with the connection wakes the thread to exit.
    _stop: OwnedFd,
}

impl fmt::Debug for Connection {
    /// Leaves out the channel: it would list every attachment, and reading
    /// it would take the lock.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("path", &self.path)
            .field("timeout", &self.timeout)
            .field("reconnects", &self.reconnects)
            .finish_non_exhaustive()
    }
}

/// The current link to the agent and the attachments held through it.
#[derive(Debug)]
struct Channel {
    /// `None` from the moment the agent is known to be gone until the
    /// reconnect thread has a new link with every attachment re-presented.
    link: Option<Link>,
    attachments: Attachments,
}

impl Channel {
    /// Sends one request over the current link and returns its reply.
    ///
    /// If the agent is gone ([`Error::Disconnected`]), drops the link.
    fn call(&mut self, request: grant_request::Kind, timeout: Duration) -> Result<Reply, Error> {
        let link = self.link.as_mut().ok_or(Error::Disconnected)?;
        let result = link.exchange(request, &[], timeout);
        if matches!(result, Err(Error::Disconnected)) {
            self.hang_up();
        }
        result
    }

    /// Drops the link, shutting its socket down first so that the reconnect
    /// thread, which polls it for a hangup, notices even if the agent only
    /// looked gone (say, it sent an empty datagram) and did not close it.
    fn hang_up(&mut self) {
        if let Some(link) = self.link.take() {
            // Fails only if the socket is disconnected already, which is the
            // point.
            let _ = rustix::net::shutdown(&*link.socket, Shutdown::Both);
        }
    }
}

/// One connection to the agent that has said hello.
#[derive(Debug)]
struct Link {
    /// Shared with the reconnect thread, which polls it without the lock.
    socket: Arc<OwnedFd>,
    next_request_id: u64,
    /// Set while an exchange is under way and left set if it fails half-way,
    /// after which replies cannot be matched to requests any more.
    broken: bool,
    /// The instance of the agent at the other end, from its hello: random at
    /// each agent start, 0 if the agent does not say (or has not yet).
    agent_instance: u64,
}

impl Link {
    /// A link over `socket`, whose timeouts are set already.
    fn new(socket: OwnedFd) -> Self {
        Self {
            socket: Arc::new(socket),
            next_request_id: 1,
            broken: false,
            agent_instance: 0,
        }
    }

    /// Connects to the grant socket at `path` and says hello.
    ///
    /// # Errors
    /// As [`Client::connect_to_with_timeout`](crate::Client::connect_to_with_timeout).
    fn open(path: &Path, timeout: Duration) -> Result<(Self, Identity), Error> {
        let socket = open_socket(path, timeout).map_err(|source| Error::Connect {
            path: path.to_owned(),
            source,
        })?;
        let mut link = Self::new(socket);
        let hello = grant_request::Kind::Hello(v1::Hello {
            protocol_version: GRANT_PROTOCOL_VERSION,
        });
        let (identity, agent_instance) = link.exchange(hello, &[], timeout)?.into_hello()?;
        link.agent_instance = agent_instance;
        Ok((link, identity))
    }

    /// Sends one request, with `fds` in `SCM_RIGHTS`, and returns its reply.
    ///
    /// A socket timeout (`EAGAIN` from a blocking socket with `SO_SNDTIMEO`
    /// or `SO_RCVTIMEO`) is [`Error::Timeout`] and, like any failure after
    /// the request was started, leaves the link broken.
    fn exchange(
        &mut self,
        request: grant_request::Kind,
        fds: &[BorrowedFd<'_>],
        timeout: Duration,
    ) -> Result<Reply, Error> {
        if self.broken {
            return Err(Error::Broken);
        }
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let datagram = wire::encode_request(request_id, request)?;
        self.broken = true;
        let socket = self.socket.as_fd();
        retry_interrupted(|| fdpass::send(socket, &datagram, fds)).map_err(|err| {
            match err.kind() {
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => Error::Disconnected,
                io::ErrorKind::WouldBlock => Error::Timeout { after: timeout },
                _ => Error::Io(err),
            }
        })?;
        let mut buf = [0; MAX_GRANT_DATAGRAM];
        let received =
            retry_interrupted(|| fdpass::recv(socket, &mut buf)).map_err(|err| {
                match err.kind() {
                    io::ErrorKind::ConnectionReset => Error::Disconnected,
                    io::ErrorKind::WouldBlock => Error::Timeout { after: timeout },
                    _ => Error::Io(err),
                }
            })?;
        let reply = wire::decode_reply(&buf, received, request_id)?;
        self.broken = false;
        Ok(reply)
    }

    /// Presents a held attachment to the agent so it adopts it again.
    ///
    /// The outer error means the link failed (retry on another one); the
    /// inner one that the agent refused this attachment.
    fn reattach(&mut self, held: &Held, timeout: Duration) -> Result<Result<(), Error>, Error> {
        let request = grant_request::Kind::ReattachSegment(v1::ReattachSegment {
            id: held.id.get(),
            token: held.token.to_vec(),
            access: wire::access_to_proto(held.access),
        });
        let fds: Vec<BorrowedFd<'_>> = std::iter::once(held.fd.as_fd())
            .chain(held.doorbell.as_deref().map(AsFd::as_fd))
            .collect();
        let reply = self.exchange(request, &fds, timeout)?;
        Ok(reply.into_reattached(held.access))
    }
}

/// The attachments this process holds at the agent through mapped segments,
/// to re-present after a restart. Each attachment has its own key: a process
/// may open one segment several times and holds an attachment per open.
#[derive(Debug, Default)]
struct Attachments {
    next_key: u64,
    held: BTreeMap<u64, Held>,
}

/// What re-presenting one attachment takes.
#[derive(Debug)]
struct Held {
    id: SegmentId,
    token: Token,
    access: Access,
    /// The segment's own memfd, shared rather than duplicated: no extra
    /// descriptor per segment and no `dup` that could fail (`EMFILE`) after
    /// the agent granted it. It closes when the segment is dropped, as
    /// releasing the attachment removes this entry.
    fd: Arc<OwnedFd>,
    /// A ring's doorbell, shared likewise: presented with the memfd so a
    /// restarted agent keeps granting the one every holder rings.
    doorbell: Option<Arc<OwnedFd>>,
    /// The instance of the agent that counts this attachment: the one that
    /// granted it, or the last one that adopted it.
    counted_by: u64,
}

impl Held {
    /// Whether agent instance `agent` counts this attachment already: an
    /// agent keeps a process's attachments across its connections, and would
    /// count a re-presented one twice. An agent that does not say its
    /// instance (0) may have restarted, so it is presented everything.
    fn is_counted_by(&self, agent: u64) -> bool {
        agent != 0 && self.counted_by == agent
    }
}

impl Attachments {
    /// Registers an attachment; returns its key.
    fn insert(&mut self, held: Held) -> u64 {
        let key = self.next_key;
        self.next_key += 1;
        self.held.insert(key, held);
        key
    }

    /// Unregisters attachment `key`, if it is still registered.
    fn remove(&mut self, key: u64) -> Option<Held> {
        self.held.remove(&key)
    }

    /// Keeps the attachments for which `keep` is true, oldest first.
    fn retain(&mut self, mut keep: impl FnMut(&mut Held) -> bool) {
        self.held.retain(|_, held| keep(held));
    }

    fn len(&self) -> usize {
        self.held.len()
    }
}

impl Connection {
    /// Connects to the grant socket at `path`, says hello, and starts the
    /// thread that reconnects when the agent goes away.
    ///
    /// # Errors
    /// As [`Client::connect_to_with_timeout`](crate::Client::connect_to_with_timeout),
    /// or [`Error::Io`] if the thread or its pipe cannot be created.
    pub(crate) fn open(path: &Path, timeout: Duration) -> Result<Arc<Self>, Error> {
        let (link, identity) = Link::open(path, timeout)?;
        Self::start(path.to_owned(), timeout, link, identity)
    }

    /// A connection over `link`, with its reconnect thread running.
    fn start(
        path: PathBuf,
        timeout: Duration,
        link: Link,
        identity: Identity,
    ) -> Result<Arc<Self>, Error> {
        let (stop_reader, stop_writer) =
            rustix::pipe::pipe_with(PipeFlags::CLOEXEC).map_err(|err| Error::Io(err.into()))?;
        let socket = Arc::clone(&link.socket);
        let connection = Arc::new(Self {
            path,
            timeout,
            channel: Mutex::new(Channel {
                link: Some(link),
                attachments: Attachments::default(),
            }),
            relinked: Condvar::new(),
            identity: Mutex::new(identity),
            reconnects: AtomicU64::new(0),
            _stop: stop_writer,
        });
        // Only a weak reference: the thread must not keep the connection, and
        // so itself, alive once the client and its segments are gone.
        let weak = Arc::downgrade(&connection);
        thread::Builder::new()
            .name(THREAD_NAME.to_owned())
            .spawn(move || reconnect_thread(&weak, socket, &stop_reader))
            .map_err(Error::Io)?;
        Ok(connection)
    }

    /// The grant socket's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Who the agent said this process is in the latest hello.
    pub(crate) fn identity(&self) -> Identity {
        self.identity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many times the connection was re-established.
    pub(crate) fn reconnects(&self) -> u64 {
        // Acquire pairs with the increment in `reconnect`: whoever sees the
        // count also sees the link that came with it.
        self.reconnects.load(Ordering::Acquire)
    }

    fn channel(&self) -> MutexGuard<'_, Channel> {
        self.channel.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The channel, once it has a link: while the agent is away, waits up to
    /// the timeout for the reconnect thread to install a new one.
    ///
    /// # Errors
    /// [`Error::Disconnected`] if none came in time.
    fn linked_channel(&self) -> Result<MutexGuard<'_, Channel>, Error> {
        let (channel, _) = self
            .relinked
            .wait_timeout_while(self.channel(), self.timeout, |channel| {
                channel.link.is_none()
            })
            .unwrap_or_else(PoisonError::into_inner);
        if channel.link.is_none() {
            return Err(Error::Disconnected);
        }
        Ok(channel)
    }

    /// Sends one request and returns its reply. A request is never resent:
    /// one the agent may have acted on before going away fails with
    /// [`Error::Disconnected`].
    pub(crate) fn call(&self, request: grant_request::Kind) -> Result<Reply, Error> {
        self.linked_channel()?.call(request, self.timeout)
    }

    /// Sends a request that is answered by a segment grant, checks the grant
    /// and maps it with `access`. If anything fails after the agent granted
    /// the segment, the attachment is released again.
    pub(crate) fn request_segment(
        self: &Arc<Self>,
        request: grant_request::Kind,
        access: Access,
    ) -> Result<Segment, Error> {
        self.request_grant(request, access, None).map(Segment::new)
    }

    /// As [`request_segment`](Self::request_segment), for a segment that
    /// must be of `kind` when given ([`Error::WrongKind`] otherwise); returns
    /// the parts of the grant, registered.
    ///
    /// The channel stays locked until the attachment is registered, so no
    /// reconnection comes between the grant and the registration (the new
    /// agent would never hear of the attachment).
    pub(crate) fn request_grant(
        self: &Arc<Self>,
        request: grant_request::Kind,
        access: Access,
        kind: Option<SegmentKind>,
    ) -> Result<Granted, Error> {
        let mut channel = self.linked_channel()?;
        let unchecked = channel.call(request, self.timeout)?.into_segment_grant()?;
        let id = unchecked.id();
        let checked = unchecked
            .validate(access)
            .map_err(Error::from)
            .and_then(|grant| match kind {
                Some(expected) if grant.info.kind != expected => Err(Error::WrongKind {
                    id,
                    expected,
                    found: grant.info.kind,
                }),
                _ => Ok(grant),
            })
            .and_then(|grant| map_grant(&grant).map(|mapping| (grant, mapping)));
        let (grant, mapping) = match checked {
            Ok(checked) => checked,
            Err(err) => {
                let released = channel
                    .call(detach_request(id), self.timeout)
                    .and_then(Reply::into_done);
                if let Err(detach_err) = released {
                    debug!(segment.id = %id, error = %detach_err, "cannot release a refused grant");
                }
                return Err(err);
            }
        };
        let fd = Arc::new(grant.fd);
        let doorbell = grant.doorbell.map(Arc::new);
        // The agent on the link the grant came over (there, as the call
        // succeeded) counts the attachment.
        let counted_by = channel.link.as_ref().map_or(0, |link| link.agent_instance);
        let key = channel.attachments.insert(Held {
            id,
            token: grant.token,
            access: grant.access,
            fd: Arc::clone(&fd),
            doorbell: doorbell.clone(),
            counted_by,
        });
        drop(channel);
        debug!(
            segment.id = %id,
            segment.name = grant.info.name.as_deref().unwrap_or(""),
            size_bytes = mapping.len(),
            access = %grant.access,
            "segment granted"
        );
        let attachment = Attachment {
            connection: Arc::clone(self),
            key,
            id,
            live: true,
        };
        Ok(Granted {
            info: grant.info,
            mapping,
            fd,
            doorbell,
            attachment,
        })
    }

    /// Releases attachment `key` to segment `id`: unregisters it, closing
    /// its fd, then tells the agent, if the agent counts it.
    fn release(&self, key: u64, id: SegmentId) -> Result<(), Error> {
        let mut channel = self.channel();
        if channel.attachments.remove(key).is_none() {
            // The agent refused to adopt it after a restart: it counts no
            // attachment to release.
            return Ok(());
        }
        if channel.link.is_none() {
            // The agent that counted it is gone, and its successor will not
            // be told about it: nothing to release, and no need to wait.
            return Ok(());
        }
        channel
            .call(detach_request(id), self.timeout)
            .and_then(Reply::into_done)
    }

    /// Connects to the agent again, says hello, and re-presents every
    /// registered attachment the agent does not count yet; then makes the new
    /// link the one calls use and returns its socket, for the reconnect thread
    /// to watch.
    ///
    /// An agent counts a process's attachments across its connections for as
    /// long as it runs: the same agent (one that closed the connection on
    /// purpose, after a protocol violation) still counts them all, and a
    /// restarted one those it adopted in an attempt that failed half-way.
    /// Each attachment remembers the instance of the agent that counts it, so
    /// none is counted twice.
    ///
    /// Attachments the agent refuses are unregistered (their segments stay
    /// mapped). The channel is locked while re-presenting (not while
    /// connecting), so no attachment is taken or released half-way.
    ///
    /// # Errors
    /// If connecting, the hello, or an exchange fails; try again later.
    fn reconnect(&self) -> Result<Arc<OwnedFd>, Error> {
        let (mut link, identity) = Link::open(&self.path, self.timeout)?;
        let agent = link.agent_instance;
        let mut channel = self.channel();
        let registered = channel.attachments.len();
        let mut presented = 0;
        let mut failure = None;
        channel.attachments.retain(|held| {
            if failure.is_some() || held.is_counted_by(agent) {
                return true;
            }
            presented += 1;
            match link.reattach(held, self.timeout) {
                Ok(Ok(())) => {
                    held.counted_by = agent;
                    true
                }
                Ok(Err(refusal)) => {
                    warn!(
                        segment.id = %held.id,
                        error = %refusal,
                        "the restarted ipcplane agent refused to adopt a segment; it stays \
                         mapped here, but the agent no longer counts this attachment"
                    );
                    false
                }
                Err(err) => {
                    failure = Some(err);
                    true
                }
            }
        });
        if let Some(err) = failure {
            return Err(err);
        }
        let refused = registered - channel.attachments.len();
        let socket = Arc::clone(&link.socket);
        channel.link = Some(link);
        *self.identity.lock().unwrap_or_else(PoisonError::into_inner) = identity;
        self.reconnects.fetch_add(1, Ordering::Release);
        drop(channel);
        self.relinked.notify_all();
        info!(
            path = %self.path.display(),
            segments.adopted = presented - refused,
            segments.refused = refused,
            segments.still_counted = registered - presented,
            "reconnected to the ipcplane agent"
        );
        Ok(socket)
    }
}

/// A checked, mapped grant whose attachment is registered: what every kind
/// of handle is built from.
#[derive(Debug)]
pub(crate) struct Granted {
    pub(crate) info: SegmentInfo,
    pub(crate) mapping: Mapping,
    /// Shared with the registry, which presents it after an agent restart.
    pub(crate) fd: Arc<OwnedFd>,
    /// A ring's doorbell, shared likewise.
    pub(crate) doorbell: Option<Arc<OwnedFd>>,
    pub(crate) attachment: Attachment,
}

/// The request releasing one attachment to segment `id`.
fn detach_request(id: SegmentId) -> grant_request::Kind {
    grant_request::Kind::DetachSegment(v1::DetachSegment { id: id.get() })
}

/// One attachment to a segment at the agent, released on drop.
#[derive(Debug)]
pub(crate) struct Attachment {
    connection: Arc<Connection>,
    key: u64,
    id: SegmentId,
    live: bool,
}

impl Attachment {
    /// Releases the attachment, reporting errors.
    pub(crate) fn detach(mut self) -> Result<(), Error> {
        self.live = false;
        self.connection
            .release(self.key, self.id)
            .inspect(|()| debug!(segment.id = %self.id, "detached segment"))
            .inspect_err(|err| debug!(segment.id = %self.id, error = %err, "detach failed"))
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if self.live {
            match self.connection.release(self.key, self.id) {
                Ok(()) => debug!(segment.id = %self.id, "detached segment on drop"),
                Err(err) => debug!(segment.id = %self.id, error = %err, "detach on drop failed"),
            }
        }
    }
}

/// Body of the `ipcplane-reconnect` thread of `connection`, whose current
/// socket is `socket`. Returns once `stop` hangs up, i.e. once the connection
/// is dropped.
fn reconnect_thread(connection: &Weak<Connection>, socket: Arc<OwnedFd>, stop: &OwnedFd) {
    if let Err(err) = watch(connection, socket, stop) {
        warn!(
            error = %err,
            "cannot watch the connection to the ipcplane agent; it will not be \
             re-established if the agent restarts"
        );
    }
}

/// Waits for the agent to hang up `socket`, then reconnects with backoff,
/// for as long as the connection exists.
///
/// Holds the connection only while marking it down and during each attempt,
/// never while waiting, so dropping the last handle is noticed at once.
fn watch(
    connection: &Weak<Connection>,
    mut socket: Arc<OwnedFd>,
    stop: &OwnedFd,
) -> io::Result<()> {
    loop {
        if !wait_for_hangup(&socket, stop)? {
            return Ok(());
        }
        drop(socket);
        let Some(strong) = connection.upgrade() else {
            return Ok(());
        };
        // Only this thread installs links, so the current one, if any, is
        // the one that hung up.
        strong.channel().hang_up();
        info!(path = %strong.path.display(), "the ipcplane agent went away; reconnecting");
        drop(strong);
        let mut attempt = 0_u32;
        socket = loop {
            if !sleep_unless_stopped(stop, retry_delay(attempt))? {
                return Ok(());
            }
            let Some(strong) = connection.upgrade() else {
                return Ok(());
            };
            match strong.reconnect() {
                Ok(socket) => break socket,
                Err(err) => {
                    debug!(attempt, error = %err, "cannot reconnect to the ipcplane agent yet");
                }
            }
            attempt = attempt.saturating_add(1);
        };
    }
}

/// Waits until `socket` hangs up (`true`) or `stop` does (`false`; it wins a
/// tie). Only hangups and errors wake it, not replies arriving on `socket`.
fn wait_for_hangup(socket: &OwnedFd, stop: &OwnedFd) -> io::Result<bool> {
    let mut fds = [
        PollFd::new(socket, PollFlags::RDHUP),
        PollFd::new(stop, PollFlags::IN),
    ];
    retry_interrupted(|| Ok(rustix::event::poll(&mut fds, None)?))?;
    Ok(fds[1].revents().is_empty())
}

/// Sleeps for `delay`; `false` if `stop` hung up first.
fn sleep_unless_stopped(stop: &OwnedFd, delay: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + delay;
    let mut fds = [PollFd::new(stop, PollFlags::IN)];
    let ready = retry_interrupted(|| {
        let left = deadline.saturating_duration_since(Instant::now());
        // Delays are at most MAX_RETRY_DELAY, far from overflowing.
        let timeout = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        Ok(rustix::event::poll(&mut fds, Some(&timeout))?)
    })?;
    Ok(ready == 0)
}

/// A connected `SOCK_SEQPACKET` UNIX socket whose sends and receives give up
/// after `timeout`. The send timeout also bounds `connect`, which waits while
/// the agent's backlog is full.
fn open_socket(path: &Path, timeout: Duration) -> io::Result<OwnedFd> {
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    set_socket_timeout(&socket, Timeout::Send, Some(timeout))?;
    set_socket_timeout(&socket, Timeout::Recv, Some(timeout))?;
    let address = SocketAddrUnix::new(path)?;
    retry_interrupted(|| Ok(rustix::net::connect(&socket, &address)?)).map_err(|err| {
        if err.kind() == io::ErrorKind::WouldBlock {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the agent did not accept the connection within {timeout:?}"),
            )
        } else {
            err
        }
    })?;
    Ok(socket)
}

/// Runs `op` again while it fails with `EINTR`.
fn retry_interrupted<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match op() {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            result => return result,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use ipcplane_proto::v1::{GrantRequest, GrantResponse, grant_response};
    use ipcplane_shm::memfd::create_sealed;

    use crate::error::ProtocolError;
    use prost::Message;
    use rustix::net::SendFlags;

    use super::*;

    const SHORT: Duration = Duration::from_millis(50);
    /// Long enough never to expire in a passing test.
    const LONG: Duration = Duration::from_secs(10);
    /// The fake agent's instance when a client first connects.
    const FIRST_RUN: u64 = 1;
    /// Its instance after it restarted.
    const RESTARTED: u64 = 2;

    fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
        rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap()
    }

    fn identity(tenant: &str) -> Identity {
        Identity {
            pid: 1,
            uid: 2,
            gid: 3,
            tenant: tenant.to_owned(),
            agent_version: "test".to_owned(),
        }
    }

    /// A connection over a socketpair, to a grant socket path nobody
    /// listens on, and the agent's end of the pair.
    fn connection_to_a_socketpair(timeout: Duration) -> (Arc<Connection>, OwnedFd) {
        let (client, agent) = seqpacket_pair();
        set_socket_timeout(&client, Timeout::Send, Some(timeout)).unwrap();
        set_socket_timeout(&client, Timeout::Recv, Some(timeout)).unwrap();
        let sut = Connection::start(
            "/nonexistent/ipcplane/grant.sock".into(),
            timeout,
            Link::new(client),
            identity("a"),
        )
        .unwrap();
        (sut, agent)
    }

    fn hello() -> grant_request::Kind {
        grant_request::Kind::Hello(v1::Hello {
            protocol_version: GRANT_PROTOCOL_VERSION,
        })
    }

    fn delete(id: u64) -> grant_request::Kind {
        grant_request::Kind::DeleteSegment(v1::DeleteSegment { id })
    }

    /// Polls `condition` until it holds, failing the test after [`LONG`].
    fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + LONG;
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// A stand-in for the agent: a grant socket that the test answers by
    /// hand, request by request.
    struct FakeAgent {
        path: PathBuf,
        listener: OwnedFd,
    }

    /// A listening SEQPACKET socket at a fresh temporary path (the path is
    /// returned, for clients to connect to and the test to remove).
    pub(crate) fn listen_seqpacket(name: &str, backlog: i32) -> (PathBuf, OwnedFd) {
        let path = std::env::temp_dir().join(format!(
            "ipcplane-sdk-test-{}-{name}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let listener = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        rustix::net::bind(&listener, &SocketAddrUnix::new(&path).unwrap()).unwrap();
        rustix::net::listen(&listener, backlog).unwrap();
        (path, listener)
    }

    impl FakeAgent {
        fn bind(name: &str) -> Self {
            let (path, listener) = listen_seqpacket(name, 8);
            Self { path, listener }
        }

        /// Accepts the next connection and answers its hello as agent
        /// `instance`, placing the caller in `tenant`.
        fn accept(&self, tenant: &str, instance: u64) -> Peer {
            let mut fds = [PollFd::new(&self.listener, PollFlags::IN)];
            let timeout = Timespec::try_from(LONG).unwrap();
            let ready = rustix::event::poll(&mut fds, Some(&timeout)).unwrap();
            assert_eq!(ready, 1, "nobody connected");
            let socket = rustix::net::accept_with(&self.listener, SocketFlags::CLOEXEC).unwrap();
            set_socket_timeout(&socket, Timeout::Recv, Some(LONG)).unwrap();
            let peer = Peer { socket };
            let (request_id, kind, _) = peer.recv();
            assert!(matches!(kind, grant_request::Kind::Hello(_)), "{kind:?}");
            peer.reply(
                request_id,
                grant_response::Kind::Hello(v1::HelloReply {
                    protocol_version: GRANT_PROTOCOL_VERSION,
                    agent_version: "fake".to_owned(),
                    pid: 1,
                    uid: 2,
                    gid: 3,
                    tenant: tenant.to_owned(),
                    agent_instance: instance,
                }),
                &[],
            );
            peer
        }

        /// A client of this agent, and the agent's end of its connection.
        fn client(&self) -> (Arc<Connection>, Peer) {
            thread::scope(|scope| {
                let client = scope.spawn(|| Connection::open(&self.path, LONG).unwrap());
                let peer = self.accept("a", FIRST_RUN);
                (client.join().unwrap(), peer)
            })
        }
    }

    impl Drop for FakeAgent {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// The agent's end of one connection. Dropping it is the agent dying.
    struct Peer {
        socket: OwnedFd,
    }

    impl Peer {
        fn recv(&self) -> (u64, grant_request::Kind, Vec<OwnedFd>) {
            let mut buf = [0; MAX_GRANT_DATAGRAM];
            let received = fdpass::recv(self.socket.as_fd(), &mut buf).unwrap();
            let request = GrantRequest::decode(&buf[..received.len]).unwrap();
            (request.request_id, request.kind.unwrap(), received.fds)
        }

        fn reply(&self, request_id: u64, kind: grant_response::Kind, fds: &[BorrowedFd<'_>]) {
            let datagram = GrantResponse {
                request_id,
                kind: Some(kind),
            }
            .encode_to_vec();
            fdpass::send(self.socket.as_fd(), &datagram, fds).unwrap();
        }

        fn reply_done(&self, request_id: u64) {
            self.reply(request_id, grant_response::Kind::Done(v1::Done {}), &[]);
        }

        /// Receives the next request, which must be a `DeleteSegment`, and
        /// answers it.
        fn expect_delete(&self, id: u64) {
            let (request_id, kind, _) = self.recv();
            assert!(
                matches!(kind, grant_request::Kind::DeleteSegment(ref delete) if delete.id == id),
                "{kind:?}"
            );
            self.reply_done(request_id);
        }

        /// Receives the next request, which must present segment `id`
        /// through `memfd`, and adopts it.
        fn adopt(&self, id: u64, memfd: &OwnedFd) {
            let (request_id, kind, fds) = self.recv();
            assert!(
                matches!(kind, grant_request::Kind::ReattachSegment(ref reattach) if reattach.id == id),
                "{kind:?}"
            );
            assert!(same_file(fds[0].as_fd(), memfd.as_fd()));
            let adopted = v1::SegmentGrant {
                segment: Some(v1::Segment {
                    id,
                    ..v1::Segment::default()
                }),
                access: v1::Access::ReadWrite.into(),
                token: Vec::new(),
            };
            self.reply(request_id, grant_response::Kind::Segment(adopted), &[]);
        }

        /// Answers a `CreateSegment` with segment `id` (a fresh memfd, whose
        /// copy it returns) and `token`.
        fn grant_create(&self, id: u64, token: &[u8]) -> OwnedFd {
            let (request_id, kind, _) = self.recv();
            assert!(
                matches!(kind, grant_request::Kind::CreateSegment(_)),
                "{kind:?}"
            );
            let memfd = create_sealed("test", 4096).unwrap();
            let grant = v1::SegmentGrant {
                segment: Some(v1::Segment {
                    id,
                    size_bytes: 4096,
                    state: v1::SegmentState::Active.into(),
                    ..v1::Segment::default()
                }),
                access: v1::Access::ReadWrite.into(),
                token: token.to_vec(),
            };
            self.reply(
                request_id,
                grant_response::Kind::Segment(grant),
                &[memfd.as_fd()],
            );
            memfd
        }
    }

    fn create(connection: &Arc<Connection>) -> Segment {
        let request = grant_request::Kind::CreateSegment(v1::CreateSegment {
            size_bytes: 4096,
            ..v1::CreateSegment::default()
        });
        connection
            .request_segment(request, Access::ReadWrite)
            .unwrap()
    }

    /// Has `sut` create a segment that `peer` grants as `id`, with token
    /// `secret-<id>`; returns it and the memfd granted.
    fn grant_segment(sut: &Arc<Connection>, peer: &Peer, id: u64) -> (Segment, OwnedFd) {
        thread::scope(|scope| {
            let segment = scope.spawn(|| create(sut));
            let memfd = peer.grant_create(id, format!("secret-{id}").as_bytes());
            (segment.join().unwrap(), memfd)
        })
    }

    /// A client holding segment 7 (token `secret-7`) of `agent`, the
    /// agent's end of the connection, and the memfd it granted.
    fn client_with_a_segment(agent: &FakeAgent) -> (Arc<Connection>, Segment, Peer, OwnedFd) {
        let (sut, peer) = agent.client();
        let (segment, memfd) = grant_segment(&sut, &peer, 7);
        (sut, segment, peer, memfd)
    }

    /// Makes a call and checks that it is the first request `peer`
    /// receives: the client re-presented nothing before it.
    fn assert_nothing_is_presented_before_the_next_call(sut: &Arc<Connection>, peer: &Peer) {
        thread::scope(|scope| {
            let deleted = scope.spawn(|| sut.call(delete(1)));
            peer.expect_delete(1);
            deleted.join().unwrap().unwrap();
        });
    }

    fn same_file(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
        let (a, b) = (rustix::fs::fstat(a).unwrap(), rustix::fs::fstat(b).unwrap());
        (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    }

    #[test]
    fn retry_delays_start_at_10ms_double_and_stop_growing_at_a_second() {
        let delays: Vec<u64> = (0..10)
            .map(|attempt| retry_delay(attempt).as_millis() as u64)
            .collect();

        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY_DELAY);
    }

    #[test]
    fn attachments_have_a_key_each_even_for_the_same_segment_and_go_once() {
        let mut sut = Attachments::default();
        let held = || Held {
            id: SegmentId::new(7),
            token: Token::from(b"t".to_vec()),
            access: Access::Read,
            fd: Arc::new(create_sealed("test", 4096).unwrap()),
            doorbell: None,
            counted_by: FIRST_RUN,
        };

        let first = sut.insert(held());
        let second = sut.insert(held());

        assert_ne!(first, second);
        assert_eq!(sut.len(), 2);
        assert_eq!(sut.remove(first).unwrap().id, SegmentId::new(7));
        assert!(sut.remove(first).is_none());
        assert_eq!(sut.len(), 1);
        assert!(sut.remove(second).is_some());
        assert_eq!(sut.len(), 0);
    }

    #[test]
    fn removing_an_attachment_closes_its_fd_once_the_segment_let_go_of_it() {
        let mut sut = Attachments::default();
        let (segment_end, other_end) = seqpacket_pair();
        let fd = Arc::new(segment_end);
        let key = sut.insert(Held {
            id: SegmentId::new(7),
            token: Token::from(Vec::new()),
            access: Access::Read,
            fd: Arc::clone(&fd),
            doorbell: None,
            counted_by: FIRST_RUN,
        });
        drop(fd);

        drop(sut.remove(key));

        assert!(matches!(
            rustix::net::send(&other_end, b"x", SendFlags::NOSIGNAL),
            Err(rustix::io::Errno::PIPE)
        ));
    }

    #[test]
    fn call_times_out_when_the_agent_does_not_answer_and_breaks_the_connection() {
        let (sut, _agent) = connection_to_a_socketpair(SHORT);

        let err = sut.call(hello()).unwrap_err();

        assert!(
            matches!(err, Error::Timeout { after } if after == SHORT),
            "{err:?}"
        );
        assert!(matches!(sut.call(hello()), Err(Error::Broken)));
    }

    #[test]
    fn call_times_out_when_the_agent_does_not_take_the_request() {
        let (sut, _agent) = connection_to_a_socketpair(SHORT);
        let socket = sut
            .channel()
            .link
            .as_ref()
            .unwrap()
            .socket
            .try_clone()
            .unwrap();
        let filler = [0; 1024];
        while rustix::net::send(&socket, &filler, SendFlags::DONTWAIT).is_ok() {}

        let err = sut.call(hello()).unwrap_err();

        assert!(
            matches!(err, Error::Timeout { after } if after == SHORT),
            "{err:?}"
        );
    }

    #[test]
    fn calls_while_the_agent_is_gone_wait_for_the_timeout_then_fail_as_disconnected() {
        let (sut, agent) = connection_to_a_socketpair(SHORT);
        drop(agent);
        eventually("the link is down", || sut.channel().link.is_none());

        let started = Instant::now();
        let err = sut.call(hello()).unwrap_err();

        assert!(matches!(err, Error::Disconnected), "{err:?}");
        assert!(started.elapsed() >= SHORT);
        assert!(
            matches!(sut.call(hello()), Err(Error::Disconnected)),
            "still Disconnected, never Broken"
        );
    }

    #[test]
    fn the_reconnect_thread_lets_go_of_the_socket_when_the_connection_is_dropped() {
        let (sut, agent) = connection_to_a_socketpair(LONG);

        drop(sut);

        let mut fds = [PollFd::new(&agent, PollFlags::RDHUP)];
        let timeout = Timespec::try_from(LONG).unwrap();
        assert_eq!(rustix::event::poll(&mut fds, Some(&timeout)).unwrap(), 1);
        assert!(fds[0].revents().contains(PollFlags::HUP));
    }

    #[test]
    fn sleep_unless_stopped_wakes_as_soon_as_the_stop_pipe_hangs_up() {
        let (reader, writer) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC).unwrap();

        let sleeper =
            thread::spawn(move || sleep_unless_stopped(&reader, Duration::from_secs(600)));
        drop(writer);

        assert!(!sleeper.join().unwrap().unwrap());
    }

    #[test]
    fn sleep_unless_stopped_sleeps_the_whole_delay_otherwise() {
        let (reader, _writer) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC).unwrap();
        let started = Instant::now();

        assert!(sleep_unless_stopped(&reader, SHORT).unwrap());
        assert!(started.elapsed() >= SHORT);
    }

    #[test]
    fn wait_for_hangup_tells_a_hangup_from_a_stop_and_lets_the_stop_win() {
        let hung_up = || {
            let (socket, agent) = seqpacket_pair();
            drop(agent);
            socket
        };
        let stopped = || rustix::pipe::pipe_with(PipeFlags::CLOEXEC).unwrap().0;
        let (open_stop, _writer) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC).unwrap();
        let (live_socket, _agent) = seqpacket_pair();

        assert!(wait_for_hangup(&hung_up(), &open_stop).unwrap());
        assert!(!wait_for_hangup(&live_socket, &stopped()).unwrap());
        assert!(!wait_for_hangup(&hung_up(), &stopped()).unwrap());
    }

    #[test]
    fn wait_for_hangup_ignores_replies_arriving() {
        let (socket, agent) = seqpacket_pair();
        let (stop, writer) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC).unwrap();
        rustix::net::send(&agent, b"reply", SendFlags::empty()).unwrap();

        let waiter = thread::spawn(move || wait_for_hangup(&socket, &stop));
        thread::sleep(SHORT);
        assert!(!waiter.is_finished());
        drop(writer);

        assert!(!waiter.join().unwrap().unwrap());
    }

    #[test]
    fn after_the_agent_restarts_the_client_reconnects_and_re_presents_its_segment() {
        let agent = FakeAgent::bind("restart");
        let (sut, segment, peer, memfd) = client_with_a_segment(&agent);

        drop(peer);
        let peer = agent.accept("b", RESTARTED);
        let (request_id, kind, fds) = peer.recv();

        let grant_request::Kind::ReattachSegment(reattach) = kind else {
            panic!("expected ReattachSegment, got {kind:?}");
        };
        assert_eq!(
            (reattach.id, reattach.token.as_slice(), reattach.access),
            (7, &b"secret-7"[..], i32::from(v1::Access::ReadWrite))
        );
        assert_eq!(fds.len(), 1);
        assert!(same_file(fds[0].as_fd(), memfd.as_fd()));
        peer.reply(
            request_id,
            grant_response::Kind::Segment(v1::SegmentGrant {
                segment: Some(v1::Segment {
                    id: 7,
                    ..v1::Segment::default()
                }),
                access: v1::Access::ReadWrite.into(),
                token: Vec::new(),
            }),
            &[],
        );
        eventually("the client reconnected", || sut.reconnects() == 1);
        assert_eq!(sut.identity().tenant, "b");
        segment.write_at(0, b"still mapped").unwrap();
        thread::scope(|scope| {
            let detached = scope.spawn(|| segment.detach());
            let (request_id, kind, _) = peer.recv();
            assert!(
                matches!(kind, grant_request::Kind::DetachSegment(ref detach) if detach.id == 7),
                "{kind:?}"
            );
            peer.reply_done(request_id);
            detached.join().unwrap().unwrap();
        });
    }

    /// Has `sut` create a segment that `peer` grants as ring 9 with
    /// `doorbell` as its second fd, then answers what else the client asks
    /// with `then`; the result of the request.
    fn grant_ring(
        sut: &Arc<Connection>,
        peer: &Peer,
        doorbell: &OwnedFd,
        then: impl FnOnce(&Peer),
    ) -> Result<Segment, Error> {
        thread::scope(|scope| {
            let segment = scope.spawn(|| {
                let request = grant_request::Kind::CreateSegment(v1::CreateSegment::default());
                sut.request_segment(request, Access::ReadWrite)
            });
            let (request_id, _, _) = peer.recv();
            let memfd = create_sealed("ring", 4096).unwrap();
            let grant = v1::SegmentGrant {
                segment: Some(v1::Segment {
                    id: 9,
                    size_bytes: 4096,
                    state: v1::SegmentState::Active.into(),
                    kind: v1::SegmentKind::Ring.into(),
                    ..v1::Segment::default()
                }),
                access: v1::Access::ReadWrite.into(),
                token: b"secret-9".to_vec(),
            };
            peer.reply(
                request_id,
                grant_response::Kind::Segment(grant),
                &[memfd.as_fd(), doorbell.as_fd()],
            );
            then(peer);
            segment.join().unwrap()
        })
    }

    #[test]
    fn a_ring_is_re_presented_with_its_doorbell() {
        let agent = FakeAgent::bind("doorbell");
        let (sut, peer) = agent.client();
        let doorbell = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        let _ring = grant_ring(&sut, &peer, &doorbell, |_| {}).unwrap();

        drop(peer);
        let peer = agent.accept("a", RESTARTED);
        let (request_id, kind, fds) = peer.recv();

        assert!(
            matches!(kind, grant_request::Kind::ReattachSegment(ref reattach) if reattach.id == 9),
            "{kind:?}"
        );
        assert_eq!(fds.len(), 2);
        assert_eq!(ipcplane_shm::ring::check_doorbell(fds[1].as_fd()), Ok(()));
        peer.reply(
            request_id,
            grant_response::Kind::Segment(v1::SegmentGrant {
                segment: Some(v1::Segment {
                    id: 9,
                    ..v1::Segment::default()
                }),
                access: v1::Access::ReadWrite.into(),
                token: Vec::new(),
            }),
            &[],
        );
        eventually("the client reconnected", || sut.reconnects() == 1);
    }

    #[test]
    fn a_ring_whose_doorbell_is_no_eventfd_is_refused_and_released() {
        let agent = FakeAgent::bind("not-a-doorbell");
        let (sut, peer) = agent.client();
        let (pipe, _writer) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC).unwrap();

        let err = grant_ring(&sut, &peer, &pipe, |peer| {
            let (request_id, kind, _) = peer.recv();
            assert!(
                matches!(kind, grant_request::Kind::DetachSegment(ref detach) if detach.id == 9),
                "{kind:?}"
            );
            peer.reply_done(request_id);
        })
        .unwrap_err();

        assert!(
            matches!(err, Error::Protocol(ProtocolError::Doorbell { ref found }) if found.starts_with("pipe:")),
            "{err:?}"
        );
    }

    #[test]
    fn a_segment_the_restarted_agent_refuses_stays_mapped_and_is_not_detached() {
        let agent = FakeAgent::bind("refuse");
        let (sut, segment, peer, _memfd) = client_with_a_segment(&agent);

        drop(peer);
        let peer = agent.accept("a", RESTARTED);
        let (request_id, kind, _) = peer.recv();
        assert!(
            matches!(kind, grant_request::Kind::ReattachSegment(_)),
            "{kind:?}"
        );
        peer.reply(
            request_id,
            grant_response::Kind::Error(v1::GrantError {
                code: 7,
                message: "the token or the file presented is not this segment's".to_owned(),
                quota: String::new(),
            }),
            &[],
        );
        eventually("the client reconnected", || sut.reconnects() == 1);

        segment.write_at(0, b"still mapped").unwrap();
        segment.detach().unwrap();
        thread::scope(|scope| {
            let deleted = scope.spawn(|| sut.call(delete(7)));
            peer.expect_delete(7);
            deleted.join().unwrap().unwrap();
        });
    }

    #[test]
    fn a_client_re_presents_its_segments_only_to_another_agent_instance() {
        let agent = FakeAgent::bind("instance");
        let (sut, _segment, peer, memfd) = client_with_a_segment(&agent);

        // The same agent closes the connection (say, after a protocol
        // error) and keeps running: it still counts the attachment.
        drop(peer);
        let peer = agent.accept("a", FIRST_RUN);
        assert_nothing_is_presented_before_the_next_call(&sut, &peer);
        assert_eq!(sut.reconnects(), 1);

        drop(peer);
        let peer = agent.accept("a", RESTARTED);
        peer.adopt(7, &memfd);
        eventually("the client reconnected", || sut.reconnects() == 2);

        // The restarted agent counts it now.
        drop(peer);
        let peer = agent.accept("a", RESTARTED);
        assert_nothing_is_presented_before_the_next_call(&sut, &peer);
        assert_eq!(sut.reconnects(), 3);
    }

    #[test]
    fn an_agent_that_does_not_say_its_instance_is_presented_every_segment_each_time() {
        let agent = FakeAgent::bind("no-instance");
        let (sut, _segment, peer, memfd) = client_with_a_segment(&agent);

        drop(peer);
        let peer = agent.accept("a", 0);
        peer.adopt(7, &memfd);
        eventually("the client reconnected", || sut.reconnects() == 1);

        drop(peer);
        let peer = agent.accept("a", 0);
        peer.adopt(7, &memfd);
        eventually("the client reconnected again", || sut.reconnects() == 2);
    }

    #[test]
    fn a_segment_adopted_before_a_reconnection_failed_is_not_presented_again() {
        let agent = FakeAgent::bind("half-way");
        let (sut, _first, peer, first_memfd) = client_with_a_segment(&agent);
        let (_second, second_memfd) = grant_segment(&sut, &peer, 8);

        drop(peer);
        let peer = agent.accept("a", RESTARTED);
        peer.adopt(7, &first_memfd);
        let (_, kind, _) = peer.recv();
        assert!(
            matches!(kind, grant_request::Kind::ReattachSegment(ref reattach) if reattach.id == 8),
            "{kind:?}"
        );
        // The connection fails before segment 8 is adopted.
        drop(peer);
        let peer = agent.accept("a", RESTARTED);
        peer.adopt(8, &second_memfd);
        assert_nothing_is_presented_before_the_next_call(&sut, &peer);
        assert_eq!(sut.reconnects(), 1);
    }

    #[test]
    fn a_call_in_flight_when_the_agent_dies_fails_and_the_next_one_waits_and_works() {
        let agent = FakeAgent::bind("in-flight");
        let (sut, peer) = agent.client();

        thread::scope(|scope| {
            let in_flight = scope.spawn(|| sut.call(delete(1)));
            let (_, kind, _) = peer.recv();
            assert!(matches!(kind, grant_request::Kind::DeleteSegment(_)));
            drop(peer);
            let err = in_flight.join().unwrap().unwrap_err();
            assert!(matches!(err, Error::Disconnected), "{err:?}");

            let next = scope.spawn(|| sut.call(delete(2)));
            let peer = agent.accept("a", RESTARTED);
            peer.expect_delete(2);
            next.join().unwrap().unwrap();
        });
        assert_eq!(sut.reconnects(), 1);
    }

    #[test]
    fn a_segment_dropped_while_the_agent_is_away_is_neither_detached_nor_re_presented() {
        let agent = FakeAgent::bind("dropped");
        let (sut, segment, peer, _memfd) = client_with_a_segment(&agent);

        drop(peer);
        drop(segment);
        let peer = agent.accept("a", RESTARTED);

        thread::scope(|scope| {
            let deleted = scope.spawn(|| sut.call(delete(7)));
            peer.expect_delete(7);
            deleted.join().unwrap().unwrap();
        });
    }

    #[test]
    fn an_empty_datagram_from_a_live_agent_makes_the_client_reconnect() {
        let agent = FakeAgent::bind("empty");
        let (sut, peer) = agent.client();

        thread::scope(|scope| {
            let in_flight = scope.spawn(|| sut.call(delete(1)));
            peer.recv();
            rustix::net::send(&peer.socket, &[], SendFlags::empty()).unwrap();
            let err = in_flight.join().unwrap().unwrap_err();
            assert!(matches!(err, Error::Disconnected), "{err:?}");
        });
        let _replacement = agent.accept("a", FIRST_RUN);
        eventually("the client reconnected", || sut.reconnects() == 1);
        drop(peer);
    }

    #[test]
    fn retry_interrupted_retries_only_eintr() {
        let mut calls = 0;
        let result = retry_interrupted(|| {
            calls += 1;
            match calls {
                1 => Err(io::Error::from(io::ErrorKind::Interrupted)),
                2 => Err(io::Error::from(io::ErrorKind::WouldBlock)),
                _ => Ok(()),
            }
        });

        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert_eq!(calls, 2);
    }
}
