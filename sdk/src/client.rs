//! [`Client`], a blocking connection to the agent's grant socket, and
//! [`SegmentBuilder`].

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ipcplane_proto::v1::{self, grant_request};
use ipcplane_proto::{GRANT_PROTOCOL_VERSION, MAX_GRANT_DATAGRAM, paths};
use ipcplane_shm::mapping::Mapping;
use ipcplane_shm::{Access, fdpass, memfd};
use rustix::net::sockopt::{Timeout, set_socket_timeout};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use tracing::debug;

use crate::error::{Error, ProtocolError};
use crate::segment::{Lifetime, Segment, SegmentId, SegmentRef, SharingMode};
use crate::wire::{self, Reply};

/// How long a [`Client`] waits for the agent by default: to accept the
/// connection, to take each request and to answer it.
///
/// A hung agent would otherwise block a call, and every other call and
/// [`Segment`] drop sharing the connection, forever.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Who the agent says this process is, from the reply to `Hello`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Identity {
    /// This process's pid, as the kernel reported it to the agent.
    pub pid: u32,
    /// Its uid.
    pub uid: u32,
    /// Its gid.
    pub gid: u32,
    /// The tenant it belongs to, which owns the segments it creates.
    pub tenant: String,
    /// The agent's version.
    pub agent_version: String,
}

/// A blocking client of the agent's grant socket.
///
/// Methods take `&self`: the connection is behind a mutex, so a `Client` can
/// be shared between threads (one request is in flight at a time). Segments
/// keep the connection open until they are dropped, even after the `Client`
/// is.
///
/// Each send and each receive on the connection gives up after a timeout
/// ([`DEFAULT_TIMEOUT`], or the one given to
/// [`connect_to_with_timeout`](Self::connect_to_with_timeout)) with
/// [`Error::Timeout`], after which the connection is unusable.
#[derive(Debug)]
pub struct Client {
    connection: Arc<Connection>,
    identity: Identity,
}

impl Client {
    /// Connects to the agent's grant socket at its default path, with
    /// [`DEFAULT_TIMEOUT`]: `$IPCPLANE_GRANT_SOCKET` if set, else `grant.sock`
    /// in `$IPCPLANE_RUNTIME_DIR` if set; else, for root,
    /// `/run/ipcplane/grant.sock`; for other users, the per-user agent's
    /// socket (`$XDG_RUNTIME_DIR/ipcplane/grant.sock`, or
    /// `/tmp/ipcplane-<uid>/grant.sock` without `XDG_RUNTIME_DIR`) if it
    /// exists, else the system agent's `/run/ipcplane/grant.sock`.
    ///
    /// # Errors
    /// As [`connect_to`](Self::connect_to).
    pub fn connect() -> Result<Self, Error> {
        let uid = rustix::process::getuid().as_raw();
        Self::connect_to(paths::client_socket(
            uid,
            paths::ENV_GRANT_SOCKET,
            paths::GRANT_SOCKET,
        ))
    }

    /// Connects to the grant socket at `path` and says hello, with
    /// [`DEFAULT_TIMEOUT`].
    ///
    /// # Errors
    /// As [`connect_to_with_timeout`](Self::connect_to_with_timeout).
    pub fn connect_to(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::connect_to_with_timeout(path, DEFAULT_TIMEOUT)
    }

    /// Connects to the grant socket at `path` and says hello, waiting at most
    /// `timeout` for the agent to accept the connection, and then for each
    /// send and each receive of every request on it (`SO_SNDTIMEO` and
    /// `SO_RCVTIMEO`, microsecond precision).
    ///
    /// # Errors
    /// [`Error::Connect`] if the socket cannot be reached (its source is
    /// [`io::ErrorKind::TimedOut`] if the agent did not accept in time, or
    /// [`io::ErrorKind::InvalidInput`] for a zero `timeout`),
    /// [`Error::Timeout`] if the agent did not answer the hello in time,
    /// [`Error::VersionMismatch`] if the agent speaks another protocol
    /// version, or the agent's refusal.
    pub fn connect_to_with_timeout(
        path: impl AsRef<Path>,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let path = path.as_ref();
        let socket = open_socket(path, timeout).map_err(|source| Error::Connect {
            path: path.to_owned(),
            source,
        })?;
        let connection = Arc::new(Connection::new(path.to_owned(), socket, timeout));
        let hello = v1::Hello {
            protocol_version: GRANT_PROTOCOL_VERSION,
        };
        let identity = connection
            .call(grant_request::Kind::Hello(hello))
            .and_then(Reply::into_hello)
            .inspect_err(|err| debug!(path = %path.display(), error = %err, "hello failed"))?;
        debug!(
            path = %path.display(),
            tenant = %identity.tenant,
            agent.version = %identity.agent_version,
            "connected to the ipcplane agent"
        );
        Ok(Self {
            connection,
            identity,
        })
    }

    /// Who the agent says this process is.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The grant socket this client is connected to.
    pub fn socket_path(&self) -> &Path {
        &self.connection.path
    }

    /// Starts describing a new segment; [`SegmentBuilder::create`] asks the
    /// agent for it.
    pub fn segment_builder(&self) -> SegmentBuilder<'_> {
        SegmentBuilder {
            client: self,
            name: String::new(),
            size_bytes: 0,
            mode: SharingMode::default(),
            lifetime: Lifetime::default(),
        }
    }

    /// Opens an existing segment, by id or by name within this process's
    /// tenant, and maps it with `access`.
    ///
    /// # Errors
    /// The agent's refusal ([`Error::NotFound`], [`Error::PermissionDenied`],
    /// ...), [`Error::Protocol`] or [`Error::Map`] if the grant is not what
    /// was asked for, or a connection error.
    pub fn open_segment<'a>(
        &self,
        segment: impl Into<SegmentRef<'a>>,
        access: Access,
    ) -> Result<Segment, Error> {
        let target = segment.into();
        let request = grant_request::Kind::OpenSegment(v1::OpenSegment {
            target: Some(target.to_proto()),
            access: wire::access_to_proto(access),
        });
        self.request_segment(request, access)
            .inspect_err(|err| debug!(segment = ?target, error = %err, "open_segment failed"))
    }

    /// Deletes a segment of this process's tenant. Processes that have it
    /// mapped keep it until they detach; until then it is draining.
    ///
    /// # Errors
    /// The agent's refusal ([`Error::NotFound`], [`Error::PermissionDenied`])
    /// or a connection error.
    pub fn delete_segment(&self, id: SegmentId) -> Result<(), Error> {
        let request = grant_request::Kind::DeleteSegment(v1::DeleteSegment { id: id.get() });
        self.connection
            .call(request)
            .and_then(Reply::into_done)
            .inspect(|()| debug!(segment.id = %id, "deleted segment"))
            .inspect_err(|err| debug!(segment.id = %id, error = %err, "delete_segment failed"))
    }

    /// Sends a request that is answered by a segment grant, checks the grant
    /// and maps it. If anything fails after the agent granted the segment,
    /// the attachment is released again.
    fn request_segment(
        &self,
        request: grant_request::Kind,
        access: Access,
    ) -> Result<Segment, Error> {
        let unchecked = self.connection.call(request)?.into_segment_grant()?;
        let attachment = Attachment {
            connection: Arc::clone(&self.connection),
            id: unchecked.id(),
            live: true,
        };
        let grant = unchecked.validate(access)?;
        let found = memfd::access_of(grant.fd.as_fd()).map_err(ProtocolError::FdAccessMode)?;
        if found != grant.access {
            return Err(ProtocolError::FdAccess {
                granted: grant.access,
                found,
            }
            .into());
        }
        let mapping = Mapping::map(grant.fd.as_fd(), grant.access).map_err(Error::Map)?;
        let actual = mapping.len() as u64;
        if actual != grant.info.size_bytes {
            return Err(ProtocolError::SizeMismatch {
                recorded: grant.info.size_bytes,
                actual,
            }
            .into());
        }
        debug!(
            segment.id = %grant.info.id,
            segment.name = grant.info.name.as_deref().unwrap_or(""),
            size_bytes = actual,
            access = %grant.access,
            "segment granted"
        );
        Ok(Segment::new(grant.info, mapping, grant.fd, attachment))
    }
}

/// Describes a segment to create; from [`Client::segment_builder`].
#[derive(Debug)]
#[must_use = "a builder does nothing until `create` is called"]
pub struct SegmentBuilder<'c> {
    client: &'c Client,
    name: String,
    size_bytes: u64,
    mode: SharingMode,
    lifetime: Lifetime,
}

impl SegmentBuilder<'_> {
    /// Names the segment, uniquely within the tenant (default: unnamed).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Its size in bytes (required; the agent refuses 0).
    pub fn size(mut self, size_bytes: u64) -> Self {
        self.size_bytes = size_bytes;
        self
    }

    /// Who besides the creator may write it (default
    /// [`SharingMode::ReadWrite`]).
    pub fn mode(mut self, mode: SharingMode) -> Self {
        self.mode = mode;
        self
    }

    /// When the agent deletes it on its own (default
    /// [`Lifetime::Persistent`], the only lifetime agents of this version
    /// enforce; see [`Lifetime`]).
    pub fn lifetime(mut self, lifetime: Lifetime) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Asks the agent to create the segment, and maps it read-write.
    ///
    /// # Errors
    /// The agent's refusal ([`Error::InvalidArgument`] for size 0,
    /// [`Error::AlreadyExists`], [`Error::QuotaExceeded`],
    /// [`Error::ResourceExhausted`], ...), [`Error::RequestTooLarge`] for a
    /// very long name, [`Error::Protocol`] or [`Error::Map`] if the grant is
    /// not what was asked for, or a connection error.
    pub fn create(self) -> Result<Segment, Error> {
        let (lifetime, ttl_ms) = self.lifetime.to_proto();
        let request = grant_request::Kind::CreateSegment(v1::CreateSegment {
            name: self.name,
            size_bytes: self.size_bytes,
            mode: self.mode.to_proto(),
            lifetime,
            ttl_ms,
        });
        self.client
            .request_segment(request, Access::ReadWrite)
            .inspect_err(|err| debug!(error = %err, "create_segment failed"))
    }
}

/// The connection to the agent, shared by a [`Client`] and its segments.
#[derive(Debug)]
struct Connection {
    path: PathBuf,
    /// The socket's send and receive timeout.
    timeout: Duration,
    channel: Mutex<Channel>,
}

/// The socket and the state of the exchange on it.
#[derive(Debug)]
struct Channel {
    socket: OwnedFd,
    next_request_id: u64,
    /// Set while an exchange is under way and left set if it fails half-way,
    /// after which replies cannot be matched to requests any more.
    broken: bool,
}

impl Connection {
    /// A connection over `socket`, whose timeouts are already `timeout`.
    fn new(path: PathBuf, socket: OwnedFd, timeout: Duration) -> Self {
        Self {
            path,
            timeout,
            channel: Mutex::new(Channel {
                socket,
                next_request_id: 1,
                broken: false,
            }),
        }
    }

    /// Sends one request and returns its reply.
    ///
    /// A socket timeout (`EAGAIN` from a blocking socket with `SO_SNDTIMEO`
    /// or `SO_RCVTIMEO`) is [`Error::Timeout`] and, like any failure after
    /// the request was started, leaves the connection broken.
    fn call(&self, request: grant_request::Kind) -> Result<Reply, Error> {
        let mut channel = self.channel.lock().unwrap_or_else(PoisonError::into_inner);
        if channel.broken {
            return Err(Error::Broken);
        }
        let request_id = channel.next_request_id;
        channel.next_request_id += 1;
        let datagram = wire::encode_request(request_id, request)?;
        channel.broken = true;
        let socket = channel.socket.as_fd();
        retry_interrupted(|| fdpass::send(socket, &datagram, &[])).map_err(|err| {
            match err.kind() {
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => Error::Disconnected,
                io::ErrorKind::WouldBlock => Error::Timeout {
                    after: self.timeout,
                },
                _ => Error::Io(err),
            }
        })?;
        let mut buf = [0; MAX_GRANT_DATAGRAM];
        let received =
            retry_interrupted(|| fdpass::recv(socket, &mut buf)).map_err(|err| {
                match err.kind() {
                    io::ErrorKind::ConnectionReset => Error::Disconnected,
                    io::ErrorKind::WouldBlock => Error::Timeout {
                        after: self.timeout,
                    },
                    _ => Error::Io(err),
                }
            })?;
        let reply = wire::decode_reply(&buf, received, request_id)?;
        channel.broken = false;
        Ok(reply)
    }

    /// Releases one attachment to segment `id`.
    fn detach(&self, id: SegmentId) -> Result<(), Error> {
        let request = grant_request::Kind::DetachSegment(v1::DetachSegment { id: id.get() });
        self.call(request).and_then(Reply::into_done)
    }
}

/// One attachment to a segment at the agent, released on drop.
#[derive(Debug)]
pub(crate) struct Attachment {
    connection: Arc<Connection>,
    id: SegmentId,
    live: bool,
}

impl Attachment {
    /// Releases the attachment, reporting errors.
    pub(crate) fn detach(mut self) -> Result<(), Error> {
        self.live = false;
        self.connection
            .detach(self.id)
            .inspect(|()| debug!(segment.id = %self.id, "detached segment"))
            .inspect_err(|err| debug!(segment.id = %self.id, error = %err, "detach failed"))
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if self.live {
            match self.connection.detach(self.id) {
                Ok(()) => debug!(segment.id = %self.id, "detached segment on drop"),
                Err(err) => debug!(segment.id = %self.id, error = %err, "detach on drop failed"),
            }
        }
    }
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
mod tests {
    use super::*;

    #[test]
    fn client_and_segment_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Client>();
        assert_send_sync::<Segment>();
    }

    #[test]
    fn connect_to_a_missing_socket_names_the_path() {
        let path = Path::new("/nonexistent/ipcplane/grant.sock");

        let err = Client::connect_to(path).unwrap_err();

        match &err {
            Error::Connect {
                path: reported,
                source,
            } => {
                assert_eq!(reported, path);
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("expected Connect, got {other:?}"),
        }
        assert!(err.to_string().contains("/nonexistent/ipcplane/grant.sock"));
    }

    const SHORT: Duration = Duration::from_millis(50);

    /// A connection whose agent end is returned but never answers.
    fn silent_agent() -> (Connection, OwnedFd) {
        let (client, agent) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        set_socket_timeout(&client, Timeout::Send, Some(SHORT)).unwrap();
        set_socket_timeout(&client, Timeout::Recv, Some(SHORT)).unwrap();
        (Connection::new("test".into(), client, SHORT), agent)
    }

    fn hello() -> grant_request::Kind {
        grant_request::Kind::Hello(v1::Hello {
            protocol_version: GRANT_PROTOCOL_VERSION,
        })
    }

    #[test]
    fn call_times_out_when_the_agent_does_not_answer_and_breaks_the_connection() {
        let (sut, _agent) = silent_agent();

        let err = sut.call(hello()).unwrap_err();

        assert!(
            matches!(err, Error::Timeout { after } if after == SHORT),
            "{err:?}"
        );
        assert!(matches!(sut.call(hello()), Err(Error::Broken)));
    }

    #[test]
    fn call_times_out_when_the_agent_does_not_take_the_request() {
        let (sut, _agent) = silent_agent();
        let filler = [0; 1024];
        let socket = sut.channel.lock().unwrap().socket.try_clone().unwrap();
        while rustix::net::send(&socket, &filler, rustix::net::SendFlags::DONTWAIT).is_ok() {}

        let err = sut.call(hello()).unwrap_err();

        assert!(
            matches!(err, Error::Timeout { after } if after == SHORT),
            "{err:?}"
        );
    }

    #[test]
    fn connect_to_with_timeout_gives_up_on_an_agent_that_never_answers() {
        let path = std::env::temp_dir().join(format!(
            "ipcplane-sdk-test-{}-silent.sock",
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
        rustix::net::listen(&listener, 1).unwrap();

        let result = Client::connect_to_with_timeout(&path, SHORT);

        std::fs::remove_file(&path).unwrap();
        let err = result.unwrap_err();
        assert!(
            matches!(err, Error::Timeout { after } if after == SHORT),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "the ipcplane agent did not respond within 50ms (is it hung or overloaded?)"
        );
    }

    #[test]
    fn connect_to_with_timeout_gives_up_on_an_agent_whose_backlog_is_full() {
        let path = std::env::temp_dir().join(format!(
            "ipcplane-sdk-test-{}-full.sock",
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
        rustix::net::listen(&listener, 0).unwrap();
        let _queued = open_socket(&path, SHORT).unwrap();

        let result = Client::connect_to_with_timeout(&path, SHORT);

        std::fs::remove_file(&path).unwrap();
        let err = result.unwrap_err();
        assert!(
            matches!(&err, Error::Connect { source, .. } if source.kind() == io::ErrorKind::TimedOut),
            "{err:?}"
        );
    }

    #[test]
    fn connect_to_with_a_zero_timeout_is_invalid_input() {
        let err =
            Client::connect_to_with_timeout("/nonexistent/grant.sock", Duration::ZERO).unwrap_err();

        assert!(
            matches!(&err, Error::Connect { source, .. } if source.kind() == io::ErrorKind::InvalidInput),
            "{err:?}"
        );
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
