//! [`Error`], what every fallible SDK call returns, and [`ProtocolError`], the
//! ways an agent's reply can break the grant protocol.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use ipcplane_proto::v1::GrantError;
use ipcplane_shm::mapping::{AccessError, MapError};
use ipcplane_shm::{Access, event, ring, semaphore};

use crate::segment::{SegmentId, SegmentKind};

/// Why an SDK call failed.
///
/// Errors wrapping a lower-level cause expose it through
/// [`source`](std::error::Error::source) rather than repeating it in their
/// message; print the whole chain (e.g. `{:#}` of an `anyhow::Error`) to see
/// it. Refusals by the agent carry the agent's message. Data-path errors
/// (rings, semaphores, events, out-of-bounds access) are the primitive's own
/// error, shown as it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The grant socket could not be reached.
    #[error(
        "cannot connect to the ipcplane agent at {} (is the agent running? \
         IPCPLANE_GRANT_SOCKET overrides the path)",
        path.display()
    )]
    Connect {
        /// The socket's path.
        path: PathBuf,
        /// Why `socket` or `connect` failed.
        #[source]
        source: io::Error,
    },
    /// Sending to or receiving from the agent failed, or the connection's
    /// reconnect thread or its pipe could not be created.
    #[error("I/O error on the connection to the ipcplane agent")]
    Io(#[source] io::Error),
    /// The agent went away (it stopped or restarted): it closed the
    /// connection while the call was in flight, or the client had not
    /// reconnected within its timeout. The client keeps reconnecting on its
    /// own (see the [crate docs](crate#agent-restarts)), so a later call may
    /// succeed; the failed one may or may not have taken effect.
    #[error("the ipcplane agent closed the connection")]
    Disconnected,
    /// The agent did not take the request or did not answer it in time (see
    /// [`DEFAULT_TIMEOUT`](crate::DEFAULT_TIMEOUT)). The connection is unusable
    /// afterwards, as after any failure half-way through an exchange: later
    /// calls return [`Error::Broken`] until the agent closes the connection
    /// (say, it is restarted) and the client reconnects.
    #[error("the ipcplane agent did not respond within {after:?} (is it hung or overloaded?)")]
    Timeout {
        /// The connection's timeout that expired.
        after: Duration,
    },
    /// An earlier call failed half-way through an exchange, so replies can no
    /// longer be matched to requests on this connection. The client does not
    /// reconnect on its own while the agent keeps the connection open.
    #[error(
        "the connection to the ipcplane agent is unusable after an earlier error; connect again"
    )]
    Broken,
    /// The agent speaks another grant protocol version.
    #[error(
        "the ipcplane agent speaks grant protocol version {agent}, this SDK speaks version {sdk}"
    )]
    VersionMismatch {
        /// The version of this SDK.
        sdk: u32,
        /// The version of the agent.
        agent: u32,
    },
    /// The agent's reply does not follow the grant protocol.
    #[error("the ipcplane agent's reply violates the grant protocol")]
    Protocol(#[source] ProtocolError),
    /// The request does not fit in one grant datagram.
    #[error(
        "the request is {size} bytes, over the grant protocol's {max}-byte limit \
         (is the segment name too long?)"
    )]
    RequestTooLarge {
        /// Encoded size of the request.
        size: usize,
        /// The limit, [`ipcplane_proto::MAX_GRANT_DATAGRAM`].
        max: usize,
    },
    /// The agent refused the request's arguments (`INVALID_ARGUMENT`).
    #[error("invalid argument: {message}")]
    InvalidArgument {
        /// The agent's explanation.
        message: String,
    },
    /// No such segment (`NOT_FOUND`).
    #[error("not found: {message}")]
    NotFound {
        /// The agent's explanation.
        message: String,
    },
    /// A segment with that name already exists in the tenant (`ALREADY_EXISTS`).
    #[error("already exists: {message}")]
    AlreadyExists {
        /// The agent's explanation.
        message: String,
    },
    /// Policy does not allow this caller to do that (`PERMISSION_DENIED`).
    #[error("permission denied: {message}")]
    PermissionDenied {
        /// The agent's explanation.
        message: String,
    },
    /// A quota of the caller's tenant would be exceeded (`RESOURCE_EXHAUSTED`
    /// naming a quota). Displays the agent's message alone, which already
    /// names the quota.
    #[error("{message}")]
    QuotaExceeded {
        /// The quota that was hit: `max_bytes`, `max_segments` or
        /// `max_segment_bytes`.
        quota: String,
        /// The agent's explanation.
        message: String,
    },
    /// The host ran out of a resource, such as memory (`RESOURCE_EXHAUSTED`
    /// naming no quota).
    #[error("resource exhausted: {message}")]
    ResourceExhausted {
        /// The agent's explanation.
        message: String,
    },
    /// The segment is not in a state that allows the request
    /// (`FAILED_PRECONDITION`), e.g. it is draining.
    #[error("failed precondition: {message}")]
    FailedPrecondition {
        /// The agent's explanation.
        message: String,
    },
    /// The agent cannot serve requests now, e.g. it is shutting down
    /// (`UNAVAILABLE`); retrying later may succeed.
    #[error("the ipcplane agent is unavailable: {message}")]
    Unavailable {
        /// The agent's explanation.
        message: String,
    },
    /// The agent failed (`INTERNAL`).
    #[error("internal error in the ipcplane agent: {message}")]
    Internal {
        /// The agent's explanation.
        message: String,
    },
    /// The agent refused with a code this SDK does not know.
    #[error("the ipcplane agent refused the request (code {code}): {message}")]
    Refused {
        /// The `google.rpc.Code` number.
        code: i32,
        /// The agent's explanation.
        message: String,
    },
    /// The granted memfd could not be mapped.
    #[error("cannot map the granted segment")]
    Map(#[source] MapError),
    /// A read or write was outside the segment, or a write to a read-only one.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The segment opened is of another kind than the call opens, e.g. a
    /// plain segment opened as a ring. The grant was released again.
    #[error("not a {expected} segment: segment {id} is a {found} segment")]
    WrongKind {
        /// The segment.
        id: SegmentId,
        /// The kind the call opens.
        expected: SegmentKind,
        /// The segment's kind.
        found: SegmentKind,
    },
    /// The ring's header is invalid, or every producer lane is taken
    /// ([`ring::LayoutError::LanesTaken`]).
    #[error(transparent)]
    RingLayout(ring::LayoutError),
    /// A send on a ring failed: full (`try_*`), timed out, a message over
    /// the max message size, or a ring the consumer corrupted.
    #[error(transparent)]
    RingSend(ring::SendError),
    /// A receive from a ring failed: timed out, a buffer too small, or a
    /// ring a producer corrupted.
    #[error(transparent)]
    RingRecv(ring::RecvError),
    /// A message's length is not the size of the type it is read as.
    #[error("the message has {found} bytes, the type it is read as {expected}")]
    PodSize {
        /// `size_of` the type.
        expected: usize,
        /// The message's length.
        found: usize,
    },
    /// The semaphore's header is invalid.
    #[error(transparent)]
    SemaphoreLayout(semaphore::LayoutError),
    /// A semaphore operation failed (timed out, or a release would
    /// overflow the count).
    #[error(transparent)]
    Semaphore(semaphore::SemaphoreError),
    /// The event's header is invalid.
    #[error(transparent)]
    EventLayout(event::LayoutError),
    /// A wait on an event failed (timed out).
    #[error(transparent)]
    Event(event::EventError),
}

impl From<ProtocolError> for Error {
    fn from(err: ProtocolError) -> Self {
        Self::Protocol(err)
    }
}

/// `google.rpc.Code` numbers the agent uses in `GrantError`.
mod code {
    pub(super) const INVALID_ARGUMENT: i32 = 3;
    pub(super) const NOT_FOUND: i32 = 5;
    pub(super) const ALREADY_EXISTS: i32 = 6;
    pub(super) const PERMISSION_DENIED: i32 = 7;
    pub(super) const RESOURCE_EXHAUSTED: i32 = 8;
    pub(super) const FAILED_PRECONDITION: i32 = 9;
    pub(super) const INTERNAL: i32 = 13;
    pub(super) const UNAVAILABLE: i32 = 14;
}

impl Error {
    /// The error for an agent's refusal.
    pub(crate) fn from_refusal(refusal: GrantError) -> Self {
        let GrantError {
            code,
            message,
            quota,
        } = refusal;
        match code {
            code::INVALID_ARGUMENT => Self::InvalidArgument { message },
            code::NOT_FOUND => Self::NotFound { message },
            code::ALREADY_EXISTS => Self::AlreadyExists { message },
            code::PERMISSION_DENIED => Self::PermissionDenied { message },
            code::RESOURCE_EXHAUSTED if quota.is_empty() => Self::ResourceExhausted { message },
            code::RESOURCE_EXHAUSTED => Self::QuotaExceeded { quota, message },
            code::FAILED_PRECONDITION => Self::FailedPrecondition { message },
            code::INTERNAL => Self::Internal { message },
            code::UNAVAILABLE => Self::Unavailable { message },
            code => Self::Refused { code, message },
        }
    }
}

/// How a reply from the agent broke the grant protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The reply is larger than a grant datagram may be.
    #[error("reply larger than {max} bytes", max = ipcplane_proto::MAX_GRANT_DATAGRAM)]
    Oversized,
    /// The reply carried more file descriptors than one datagram may.
    #[error("reply carried more than {max} file descriptors", max = ipcplane_shm::fdpass::MAX_FDS)]
    TooManyFds,
    /// The reply is not a `GrantResponse`.
    #[error("undecodable reply")]
    Decode(#[source] prost::DecodeError),
    /// The reply answers another request.
    #[error("reply to request {found} while waiting for request {expected}")]
    RequestId {
        /// The id of the request sent.
        expected: u64,
        /// The id in the reply.
        found: u64,
    },
    /// The reply has no outcome.
    #[error("reply without an outcome")]
    Empty,
    /// The reply is of the wrong kind for the request.
    #[error("expected a {expected} reply, got a {found} reply")]
    UnexpectedReply {
        /// The kind the request calls for.
        expected: &'static str,
        /// The kind received.
        found: &'static str,
    },
    /// The reply carried the wrong number of file descriptors.
    #[error("reply carried {found} file descriptors, expected {expected}")]
    FdCount {
        /// How many the reply kind calls for.
        expected: usize,
        /// How many arrived.
        found: usize,
    },
    /// A segment grant without the segment.
    #[error("segment grant without a segment")]
    MissingSegment,
    /// A field holds a value this SDK does not know.
    #[error("unknown {field} value {value}")]
    UnknownValue {
        /// The field's name.
        field: &'static str,
        /// Its value.
        value: i32,
    },
    /// A timestamp outside the range of `SystemTime`.
    #[error("invalid timestamp in {field}")]
    InvalidTimestamp {
        /// The field's name.
        field: &'static str,
    },
    /// The grant's access is not the access requested.
    #[error("granted {granted} access when {requested} was requested")]
    AccessMismatch {
        /// What the request asked for.
        requested: Access,
        /// What the grant says.
        granted: Access,
    },
    /// The granted fd's access mode could not be read.
    #[error("cannot read the access mode of the granted file descriptor")]
    FdAccessMode(#[source] io::Error),
    /// The granted fd allows other access than the grant says.
    #[error("the granted file descriptor is {found} but the grant says {granted}")]
    FdAccess {
        /// What the grant says.
        granted: Access,
        /// What the file description allows.
        found: Access,
    },
    /// The memfd's size differs from the segment's recorded size.
    #[error("the segment's recorded size is {recorded} bytes but its memfd has {actual}")]
    SizeMismatch {
        /// `size_bytes` in the grant.
        recorded: u64,
        /// The memfd's size.
        actual: u64,
    },
    /// A ring's doorbell is not an eventfd.
    #[error("the ring's doorbell is not an eventfd ({found})")]
    Doorbell {
        /// What the fd is, or why that cannot be told.
        found: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(code: i32, quota: &str) -> Error {
        Error::from_refusal(GrantError {
            code,
            message: "why".to_owned(),
            quota: quota.to_owned(),
        })
    }

    #[test]
    fn from_refusal_maps_each_known_code_to_its_variant() {
        assert!(matches!(refusal(3, ""), Error::InvalidArgument { message } if message == "why"));
        assert!(matches!(refusal(5, ""), Error::NotFound { .. }));
        assert!(matches!(refusal(6, ""), Error::AlreadyExists { .. }));
        assert!(matches!(refusal(7, ""), Error::PermissionDenied { .. }));
        assert!(matches!(refusal(9, ""), Error::FailedPrecondition { .. }));
        assert!(matches!(refusal(13, ""), Error::Internal { .. }));
        assert!(matches!(refusal(14, ""), Error::Unavailable { .. }));
    }

    #[test]
    fn from_refusal_tells_quota_from_host_exhaustion() {
        assert!(matches!(
            refusal(8, "max_bytes"),
            Error::QuotaExceeded { quota, message } if quota == "max_bytes" && message == "why"
        ));
        assert!(matches!(refusal(8, ""), Error::ResourceExhausted { .. }));
    }

    #[test]
    fn from_refusal_keeps_unknown_codes() {
        assert!(matches!(refusal(16, ""), Error::Refused { code: 16, .. }));
        assert!(matches!(refusal(0, ""), Error::Refused { code: 0, .. }));
    }

    #[test]
    fn quota_exceeded_shows_the_agents_message_once() {
        let sut = Error::from_refusal(GrantError {
            code: 8,
            message: "quota exceeded: max_bytes of tenant a is 1024".to_owned(),
            quota: "max_bytes".to_owned(),
        });

        assert_eq!(
            sut.to_string(),
            "quota exceeded: max_bytes of tenant a is 1024"
        );
        assert!(matches!(sut, Error::QuotaExceeded { quota, .. } if quota == "max_bytes"));
    }

    #[test]
    fn wrong_kind_says_what_was_expected_and_found() {
        let sut = Error::WrongKind {
            id: SegmentId::new(7),
            expected: SegmentKind::Ring,
            found: SegmentKind::Plain,
        };

        assert_eq!(
            sut.to_string(),
            "not a ring segment: segment 7 is a plain segment"
        );
    }

    #[test]
    fn refusal_messages_name_the_reason_and_the_agents_words() {
        assert_eq!(refusal(8, "max_segments").to_string(), "why");
        assert_eq!(refusal(5, "").to_string(), "not found: why");
    }
}
