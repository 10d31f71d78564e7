//! [`Client`], a blocking connection to the agent's grant socket, and
//! [`SegmentBuilder`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ipcplane_proto::paths;
use ipcplane_proto::v1::{self, grant_request};
use ipcplane_shm::Access;
use tracing::debug;

use crate::connection::{Connection, Granted};
use crate::error::Error;
use crate::ring::{Ring, RingBuilder};
use crate::segment::{Lifetime, Segment, SegmentId, SegmentKind, SegmentRef, SharingMode};
use crate::sync::{Event, EventBuilder, Semaphore, SemaphoreBuilder};
use crate::wire::{self, Reply};

/// How long a [`Client`] waits for the agent by default: to accept the
/// connection, to take each request and to answer it.
///
/// A hung agent would otherwise block a call, and every other call and
/// [`Segment`] drop sharing the connection, forever. While the agent restarts,
/// calls wait this long for the client to reconnect.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Who the agent says this process is, from the reply to `Hello`.
///
/// The client says hello again after each reconnection: the pid, uid and gid
/// stay the same, while the tenant follows the restarted agent's
/// configuration and the agent's version may change with an upgrade.
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
///
/// If the agent goes away, the client reconnects on its own and re-presents
/// its segments to the restarted agent (see the [crate
/// docs](crate#agent-restarts)); a background thread,
/// `ipcplane-reconnect`, watches the connection for as long as the client or
/// any of its segments exists.
#[derive(Debug)]
pub struct Client {
    connection: Arc<Connection>,
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
    /// [`TimedOut`](std::io::ErrorKind::TimedOut) if the agent did not
    /// accept in time, or [`InvalidInput`](std::io::ErrorKind::InvalidInput)
    /// for a zero `timeout`),
    /// [`Error::Timeout`] if the agent did not answer the hello in time,
    /// [`Error::VersionMismatch`] if the agent speaks another protocol
    /// version, the agent's refusal, or [`Error::Io`] if the reconnect thread
    /// cannot be started.
    pub fn connect_to_with_timeout(
        path: impl AsRef<Path>,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let path = path.as_ref();
        let connection = Connection::open(path, timeout)
            .inspect_err(|err| debug!(path = %path.display(), error = %err, "connect failed"))?;
        let identity = connection.identity();
        debug!(
            path = %path.display(),
            tenant = %identity.tenant,
            agent.version = %identity.agent_version,
            "connected to the ipcplane agent"
        );
        Ok(Self { connection })
    }

    /// Who the agent says this process is, as of the latest hello (see
    /// [`Identity`]).
    pub fn identity(&self) -> Identity {
        self.connection.identity()
    }

    /// How many times this client has reconnected to the agent after losing
    /// the connection (and re-presented its segments, if the agent had
    /// restarted): 0 until the connection is first lost.
    pub fn reconnects(&self) -> u64 {
        self.connection.reconnects()
    }

    /// The grant socket this client is connected to.
    pub fn socket_path(&self) -> &Path {
        self.connection.path()
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
        self.connection
            .request_segment(request, access)
            .inspect_err(|err| debug!(segment = ?target, error = %err, "open_segment failed"))
    }

    /// Starts describing a new message ring named `name` (unique within the
    /// tenant; empty for an unnamed one); [`RingBuilder::create`] asks the
    /// agent for it.
    pub fn ring_builder(&self, name: impl Into<String>) -> RingBuilder<'_> {
        RingBuilder::new(self, name.into())
    }

    /// Creates a single-producer ring named `name` with lanes of `capacity`
    /// bytes and the builder's other defaults (persistent, messages up to
    /// half the capacity); [`ring_builder`](Self::ring_builder) sets more.
    ///
    /// # Errors
    /// As [`RingBuilder::create`].
    pub fn create_ring(&self, name: impl Into<String>, capacity: u64) -> Result<Ring, Error> {
        self.ring_builder(name).capacity(capacity).create()
    }

    /// Opens an existing ring, by id or by name within this process's
    /// tenant, read-write (both endpoints write to it).
    ///
    /// # Errors
    /// [`Error::WrongKind`] if the segment is not a ring, else as
    /// [`open_segment`](Self::open_segment).
    pub fn open_ring<'a>(&self, ring: impl Into<SegmentRef<'a>>) -> Result<Ring, Error> {
        self.open_existing(ring.into(), SegmentKind::Ring)
            .map(Ring::new)
    }

    /// Starts describing a new semaphore named `name`;
    /// [`SemaphoreBuilder::create`] asks the agent for it.
    pub fn semaphore_builder(&self, name: impl Into<String>) -> SemaphoreBuilder<'_> {
        SemaphoreBuilder::new(self, name.into())
    }

    /// Creates a persistent semaphore named `name` with `initial` units.
    ///
    /// # Errors
    /// As [`SemaphoreBuilder::create`].
    pub fn create_semaphore(
        &self,
        name: impl Into<String>,
        initial: u32,
    ) -> Result<Semaphore, Error> {
        self.semaphore_builder(name).initial(initial).create()
    }

    /// Opens an existing semaphore, by id or by name.
    ///
    /// # Errors
    /// [`Error::WrongKind`] if the segment is not a semaphore, else as
    /// [`open_segment`](Self::open_segment).
    pub fn open_semaphore<'a>(
        &self,
        semaphore: impl Into<SegmentRef<'a>>,
    ) -> Result<Semaphore, Error> {
        Semaphore::new(self.open_existing(semaphore.into(), SegmentKind::Semaphore)?)
    }

    /// Starts describing a new event named `name`; [`EventBuilder::create`]
    /// asks the agent for it.
    pub fn event_builder(&self, name: impl Into<String>) -> EventBuilder<'_> {
        EventBuilder::new(self, name.into())
    }

    /// Creates a persistent event named `name`.
    ///
    /// # Errors
    /// As [`EventBuilder::create`].
    pub fn create_event(&self, name: impl Into<String>) -> Result<Event, Error> {
        self.event_builder(name).create()
    }

    /// Opens an existing event, by id or by name.
    ///
    /// # Errors
    /// [`Error::WrongKind`] if the segment is not an event, else as
    /// [`open_segment`](Self::open_segment).
    pub fn open_event<'a>(&self, event: impl Into<SegmentRef<'a>>) -> Result<Event, Error> {
        Event::new(self.open_existing(event.into(), SegmentKind::Event)?)
    }

    /// Opens segment `target` read-write, which must be of `kind`.
    fn open_existing(&self, target: SegmentRef<'_>, kind: SegmentKind) -> Result<Granted, Error> {
        let request = grant_request::Kind::OpenSegment(v1::OpenSegment {
            target: Some(target.to_proto()),
            access: wire::access_to_proto(Access::ReadWrite),
        });
        self.open_typed(request, kind)
            .inspect_err(|err| debug!(segment = ?target, %kind, error = %err, "open failed"))
    }

    /// Sends a create or open of a segment of `kind`, and maps the grant
    /// read-write.
    pub(crate) fn open_typed(
        &self,
        request: grant_request::Kind,
        kind: SegmentKind,
    ) -> Result<Granted, Error> {
        self.connection
            .request_grant(request, Access::ReadWrite, Some(kind))
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
            layout: None,
        });
        self.client
            .connection
            .request_segment(request, Access::ReadWrite)
            .inspect_err(|err| debug!(error = %err, "create_segment failed"))
    }
}

/// What every builder of a typed segment (ring, semaphore, event) holds
/// besides its layout.
#[derive(Debug)]
pub(crate) struct TypedOptions<'c> {
    client: &'c Client,
    name: String,
    pub(crate) mode: SharingMode,
    pub(crate) lifetime: Lifetime,
}

impl<'c> TypedOptions<'c> {
    /// Defaults for a segment named `name` (empty for unnamed).
    pub(crate) fn new(client: &'c Client, name: String) -> Self {
        Self {
            client,
            name,
            mode: SharingMode::default(),
            lifetime: Lifetime::default(),
        }
    }

    /// Asks the agent for a segment of `layout` (it computes the size and
    /// writes the header), which must come back as `kind`, and maps it.
    pub(crate) fn create(
        self,
        layout: v1::create_segment::Layout,
        kind: SegmentKind,
    ) -> Result<Granted, Error> {
        let (lifetime, ttl_ms) = self.lifetime.to_proto();
        let request = grant_request::Kind::CreateSegment(v1::CreateSegment {
            name: self.name,
            size_bytes: 0,
            mode: self.mode.to_proto(),
            lifetime,
            ttl_ms,
            layout: Some(layout),
        });
        self.client.open_typed(request, kind)
    }
}

/// The `mode` and `lifetime` setters of a typed segment's builder (a type
/// with an `options: TypedOptions` field).
macro_rules! typed_builder_setters {
    () => {
        /// Who besides the creator may use it (default
        /// [`SharingMode::ReadWrite`](crate::SharingMode::ReadWrite)); its
        /// users write to it.
        pub fn mode(mut self, mode: $crate::SharingMode) -> Self {
            self.options.mode = mode;
            self
        }

        /// When the agent deletes it on its own (default
        /// [`Lifetime::Persistent`](crate::Lifetime::Persistent)).
        pub fn lifetime(mut self, lifetime: $crate::Lifetime) -> Self {
            self.options.lifetime = lifetime;
            self
        }
    };
}
pub(crate) use typed_builder_setters;

#[cfg(test)]
mod tests {
    use std::io;

    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

    use super::*;
    use crate::connection::tests::listen_seqpacket;

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

    #[test]
    fn connect_to_with_timeout_gives_up_on_an_agent_that_never_answers() {
        let (path, _listener) = listen_seqpacket("silent", 1);

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
        let (path, _listener) = listen_seqpacket("full", 0);
        let queued = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        rustix::net::connect(&queued, &SocketAddrUnix::new(&path).unwrap()).unwrap();

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
}
