//! The grant protocol's framing without the I/O: encoding requests and
//! checking that a reply is well formed, answers the request sent, and has
//! the kind and file descriptors the request calls for.

use std::fmt;
use std::os::fd::OwnedFd;

use ipcplane_proto::v1::{GrantRequest, GrantResponse, grant_request, grant_response};
use ipcplane_proto::{GRANT_PROTOCOL_VERSION, MAX_GRANT_DATAGRAM, v1};
use ipcplane_shm::Access;
use ipcplane_shm::fdpass::Received;
use prost::Message;

use crate::client::Identity;
use crate::error::{Error, ProtocolError};
use crate::segment::{SegmentId, SegmentInfo, SegmentKind};

/// Encodes one request datagram.
pub(crate) fn encode_request(request_id: u64, kind: grant_request::Kind) -> Result<Vec<u8>, Error> {
    let datagram = GrantRequest {
        request_id,
        kind: Some(kind),
    }
    .encode_to_vec();
    if datagram.len() > MAX_GRANT_DATAGRAM {
        return Err(Error::RequestTooLarge {
            size: datagram.len(),
            max: MAX_GRANT_DATAGRAM,
        });
    }
    Ok(datagram)
}

/// The proto number of an access.
pub(crate) fn access_to_proto(access: Access) -> i32 {
    match access {
        Access::Read => v1::Access::Read.into(),
        Access::ReadWrite => v1::Access::ReadWrite.into(),
    }
}

fn access_from_proto(value: i32) -> Result<Access, ProtocolError> {
    match v1::Access::try_from(value) {
        Ok(v1::Access::Read) => Ok(Access::Read),
        Ok(v1::Access::ReadWrite) => Ok(Access::ReadWrite),
        Ok(v1::Access::Unspecified) | Err(_) => Err(ProtocolError::UnknownValue {
            field: "access",
            value,
        }),
    }
}

/// A well-formed reply to the request sent: its outcome and the fds that came
/// with it (closed when dropped).
#[derive(Debug)]
pub(crate) struct Reply {
    kind: grant_response::Kind,
    fds: Vec<OwnedFd>,
}

/// Checks a received datagram (`buf` holds its bytes) and decodes it as the
/// reply to request `request_id`.
pub(crate) fn decode_reply(
    buf: &[u8],
    received: Received,
    request_id: u64,
) -> Result<Reply, Error> {
    if received.len == 0 && received.fds.is_empty() && !received.truncated {
        return Err(Error::Disconnected);
    }
    if received.truncated {
        return Err(ProtocolError::Oversized.into());
    }
    if received.fds_truncated {
        return Err(ProtocolError::TooManyFds.into());
    }
    let response = GrantResponse::decode(&buf[..received.len]).map_err(ProtocolError::Decode)?;
    if response.request_id != request_id {
        return Err(ProtocolError::RequestId {
            expected: request_id,
            found: response.request_id,
        }
        .into());
    }
    let kind = response.kind.ok_or(ProtocolError::Empty)?;
    Ok(Reply {
        kind,
        fds: received.fds,
    })
}

fn kind_name(kind: &grant_response::Kind) -> &'static str {
    match kind {
        grant_response::Kind::Hello(_) => "hello",
        grant_response::Kind::Segment(_) => "segment grant",
        grant_response::Kind::Done(_) => "done",
        grant_response::Kind::Error(_) => "error",
    }
}

/// The agent's refusal, or a protocol error for a reply of the wrong kind.
fn unexpected(expected: &'static str, found: grant_response::Kind) -> Error {
    match found {
        grant_response::Kind::Error(refusal) => Error::from_refusal(refusal),
        other => ProtocolError::UnexpectedReply {
            expected,
            found: kind_name(&other),
        }
        .into(),
    }
}

fn expect_no_fds(fds: &[OwnedFd]) -> Result<(), ProtocolError> {
    if fds.is_empty() {
        Ok(())
    } else {
        Err(ProtocolError::FdCount {
            expected: 0,
            found: fds.len(),
        })
    }
}

impl Reply {
    /// The reply to `Hello`: who the agent says the caller is, and the
    /// agent's instance (0 from an agent too old to say).
    pub(crate) fn into_hello(self) -> Result<(Identity, u64), Error> {
        let hello = match self.kind {
            grant_response::Kind::Hello(hello) => hello,
            other => return Err(unexpected("hello", other)),
        };
        expect_no_fds(&self.fds)?;
        if hello.protocol_version != GRANT_PROTOCOL_VERSION {
            return Err(Error::VersionMismatch {
                sdk: GRANT_PROTOCOL_VERSION,
                agent: hello.protocol_version,
            });
        }
        let identity = Identity {
            pid: hello.pid,
            uid: hello.uid,
            gid: hello.gid,
            tenant: hello.tenant,
            agent_version: hello.agent_version,
        };
        Ok((identity, hello.agent_instance))
    }

    /// The reply to `CreateSegment` or `OpenSegment`, not yet validated.
    pub(crate) fn into_segment_grant(self) -> Result<UncheckedGrant, Error> {
        let grant = match self.kind {
            grant_response::Kind::Segment(grant) => grant,
            other => return Err(unexpected("segment grant", other)),
        };
        let segment = grant.segment.ok_or(ProtocolError::MissingSegment)?;
        Ok(UncheckedGrant {
            segment,
            access: grant.access,
            token: Token::from(grant.token),
            fds: self.fds,
        })
    }

    /// The reply to `ReattachSegment`: a grant of `held` access with no fd,
    /// since the caller presented the one it holds.
    pub(crate) fn into_reattached(self, held: Access) -> Result<(), Error> {
        let grant = match self.kind {
            grant_response::Kind::Segment(grant) => grant,
            other => return Err(unexpected("segment grant", other)),
        };
        expect_no_fds(&self.fds)?;
        let granted = access_from_proto(grant.access)?;
        if granted != held {
            return Err(ProtocolError::AccessMismatch {
                requested: held,
                granted,
            }
            .into());
        }
        Ok(())
    }

    /// The reply to `DetachSegment` or `DeleteSegment`.
    pub(crate) fn into_done(self) -> Result<(), Error> {
        match self.kind {
            grant_response::Kind::Done(_) => Ok(expect_no_fds(&self.fds)?),
            other => Err(unexpected("done", other)),
        }
    }
}

/// A segment grant whose contents are not checked yet. The agent counts it as
/// an attachment already, so its [`id`](Self::id) is known before validation.
#[derive(Debug)]
pub(crate) struct UncheckedGrant {
    segment: v1::Segment,
    access: i32,
    token: Token,
    fds: Vec<OwnedFd>,
}

/// A grant of the access requested, with its memfd and, for a ring, the
/// ring's doorbell.
#[derive(Debug)]
pub(crate) struct Grant {
    pub(crate) info: SegmentInfo,
    pub(crate) access: Access,
    pub(crate) token: Token,
    pub(crate) fd: OwnedFd,
    pub(crate) doorbell: Option<OwnedFd>,
}

/// A segment's secret from its grant. With it and the fd, the holder
/// re-presents the segment to a restarted agent (`ReattachSegment`).
///
/// Anyone who has it and the fd can claim an attachment in this process's
/// name, so its `Debug` shows only its length: it stays out of logs.
#[derive(PartialEq, Eq)]
pub(crate) struct Token(Vec<u8>);

impl From<Vec<u8>> for Token {
    fn from(token: Vec<u8>) -> Self {
        Self(token)
    }
}

impl Token {
    /// The bytes, for a `ReattachSegment` request.
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        self.0.clone()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(<{} secret bytes>)", self.0.len())
    }
}

impl UncheckedGrant {
    /// The granted segment's id.
    pub(crate) fn id(&self) -> SegmentId {
        SegmentId::new(self.segment.id)
    }

    /// Checks the grant's fields, that its access is `requested`, and that
    /// its fds came with it: the memfd, and a ring's doorbell second.
    pub(crate) fn validate(self, requested: Access) -> Result<Grant, ProtocolError> {
        let info = SegmentInfo::from_proto(self.segment)?;
        let access = access_from_proto(self.access)?;
        if access != requested {
            return Err(ProtocolError::AccessMismatch {
                requested,
                granted: access,
            });
        }
        let expected = if info.kind == SegmentKind::Ring { 2 } else { 1 };
        if self.fds.len() != expected {
            return Err(ProtocolError::FdCount {
                expected,
                found: self.fds.len(),
            });
        }
        let mut fds = self.fds.into_iter();
        let fd = fds.next().expect("counted above");
        Ok(Grant {
            info,
            access,
            token: self.token,
            fd,
            doorbell: fds.next(),
        })
    }
}

#[cfg(test)]
mod tests {
    use ipcplane_proto::v1::{Done, GrantError, HelloReply, SegmentGrant};
    use ipcplane_shm::memfd::create_sealed;

    use super::*;

    fn datagram(request_id: u64, kind: grant_response::Kind) -> Vec<u8> {
        GrantResponse {
            request_id,
            kind: Some(kind),
        }
        .encode_to_vec()
    }

    fn received(buf: &[u8], fds: Vec<OwnedFd>) -> Received {
        Received {
            len: buf.len(),
            fds,
            truncated: false,
            fds_truncated: false,
        }
    }

    fn reply(kind: grant_response::Kind, fds: Vec<OwnedFd>) -> Reply {
        let buf = datagram(1, kind);
        decode_reply(&buf, received(&buf, fds), 1).unwrap()
    }

    fn memfd() -> OwnedFd {
        create_sealed("test", 4096).unwrap()
    }

    fn hello(protocol_version: u32) -> grant_response::Kind {
        grant_response::Kind::Hello(HelloReply {
            protocol_version,
            agent_version: "0.1.0".to_owned(),
            pid: 1,
            uid: 2,
            gid: 3,
            tenant: "uid-2".to_owned(),
            agent_instance: 42,
        })
    }

    fn segment_grant(access: v1::Access) -> grant_response::Kind {
        grant_response::Kind::Segment(SegmentGrant {
            segment: Some(v1::Segment {
                id: 9,
                size_bytes: 4096,
                state: v1::SegmentState::Active.into(),
                ..v1::Segment::default()
            }),
            access: access.into(),
            token: vec![7; 16],
        })
    }

    #[test]
    fn encode_request_refuses_requests_over_the_datagram_limit() {
        let create = |name: String| {
            encode_request(
                1,
                grant_request::Kind::CreateSegment(v1::CreateSegment {
                    name,
                    size_bytes: 4096,
                    ..v1::CreateSegment::default()
                }),
            )
        };

        assert!(create("n".repeat(100)).is_ok());
        assert!(matches!(
            create("n".repeat(MAX_GRANT_DATAGRAM)),
            Err(Error::RequestTooLarge {
                max: MAX_GRANT_DATAGRAM,
                ..
            })
        ));
    }

    #[test]
    fn decode_reply_reads_an_empty_datagram_as_disconnection() {
        let err = decode_reply(&[], received(&[], Vec::new()), 1).unwrap_err();

        assert!(matches!(err, Error::Disconnected), "{err:?}");
    }

    #[test]
    fn decode_reply_refuses_truncated_datagrams_and_fds() {
        let buf = datagram(1, grant_response::Kind::Done(Done {}));
        let truncated = Received {
            truncated: true,
            ..received(&buf, Vec::new())
        };
        let fds_truncated = Received {
            fds_truncated: true,
            ..received(&buf, Vec::new())
        };

        assert!(matches!(
            decode_reply(&buf, truncated, 1),
            Err(Error::Protocol(ProtocolError::Oversized))
        ));
        assert!(matches!(
            decode_reply(&buf, fds_truncated, 1),
            Err(Error::Protocol(ProtocolError::TooManyFds))
        ));
    }

    #[test]
    fn decode_reply_refuses_garbage() {
        let buf = [0xff; 8];

        assert!(matches!(
            decode_reply(&buf, received(&buf, Vec::new()), 1),
            Err(Error::Protocol(ProtocolError::Decode(_)))
        ));
    }

    #[test]
    fn decode_reply_refuses_a_reply_to_another_request() {
        let buf = datagram(3, grant_response::Kind::Done(Done {}));

        assert!(matches!(
            decode_reply(&buf, received(&buf, Vec::new()), 4),
            Err(Error::Protocol(ProtocolError::RequestId {
                expected: 4,
                found: 3
            }))
        ));
    }

    #[test]
    fn decode_reply_refuses_a_reply_without_outcome() {
        let buf = GrantResponse {
            request_id: 1,
            kind: None,
        }
        .encode_to_vec();

        assert!(matches!(
            decode_reply(&buf, received(&buf, Vec::new()), 1),
            Err(Error::Protocol(ProtocolError::Empty))
        ));
    }

    #[test]
    fn into_hello_gives_the_identity_and_the_agent_instance() {
        let sut = reply(hello(GRANT_PROTOCOL_VERSION), Vec::new())
            .into_hello()
            .unwrap();

        assert_eq!(
            sut,
            (
                Identity {
                    pid: 1,
                    uid: 2,
                    gid: 3,
                    tenant: "uid-2".to_owned(),
                    agent_version: "0.1.0".to_owned(),
                },
                42
            )
        );
    }

    #[test]
    fn into_hello_refuses_another_protocol_version() {
        let err = reply(hello(GRANT_PROTOCOL_VERSION + 1), Vec::new())
            .into_hello()
            .unwrap_err();

        assert!(matches!(err, Error::VersionMismatch { sdk, agent } if agent == sdk + 1));
    }

    #[test]
    fn into_hello_returns_the_agents_refusal() {
        let refusal = grant_response::Kind::Error(GrantError {
            code: 9,
            message: "unsupported protocol version 1".to_owned(),
            quota: String::new(),
        });

        let err = reply(refusal, Vec::new()).into_hello().unwrap_err();

        assert!(matches!(err, Error::FailedPrecondition { .. }), "{err:?}");
    }

    #[test]
    fn replies_of_the_wrong_kind_are_protocol_errors() {
        let err = reply(grant_response::Kind::Done(Done {}), Vec::new())
            .into_segment_grant()
            .unwrap_err();

        assert!(matches!(
            err,
            Error::Protocol(ProtocolError::UnexpectedReply {
                expected: "segment grant",
                found: "done"
            })
        ));
    }

    #[test]
    fn into_done_refuses_attached_fds() {
        let err = reply(grant_response::Kind::Done(Done {}), vec![memfd()])
            .into_done()
            .unwrap_err();

        assert!(matches!(
            err,
            Error::Protocol(ProtocolError::FdCount {
                expected: 0,
                found: 1
            })
        ));
    }

    #[test]
    fn segment_grant_validates_with_one_fd_of_the_requested_access() {
        let sut = reply(segment_grant(v1::Access::Read), vec![memfd()])
            .into_segment_grant()
            .unwrap();

        assert_eq!(sut.id(), SegmentId::new(9));
        let grant = sut.validate(Access::Read).unwrap();
        assert_eq!(
            (grant.info.id, grant.access),
            (SegmentId::new(9), Access::Read)
        );
        assert_eq!(grant.token.to_vec(), vec![7; 16]);
    }

    #[test]
    fn a_token_does_not_show_its_secret_when_debug_printed() {
        let sut = Token::from(b"hunter2".to_vec());

        assert_eq!(format!("{sut:?}"), "Token(<7 secret bytes>)");
    }

    #[test]
    fn into_reattached_accepts_a_grant_of_the_held_access_without_fds() {
        let sut = reply(segment_grant(v1::Access::ReadWrite), Vec::new());

        sut.into_reattached(Access::ReadWrite).unwrap();
    }

    #[test]
    fn into_reattached_refuses_fds_and_other_access() {
        let with_fd = reply(segment_grant(v1::Access::Read), vec![memfd()])
            .into_reattached(Access::Read)
            .unwrap_err();
        let other_access = reply(segment_grant(v1::Access::Read), Vec::new())
            .into_reattached(Access::ReadWrite)
            .unwrap_err();

        assert!(
            matches!(
                with_fd,
                Error::Protocol(ProtocolError::FdCount {
                    expected: 0,
                    found: 1
                })
            ),
            "{with_fd:?}"
        );
        assert!(
            matches!(
                other_access,
                Error::Protocol(ProtocolError::AccessMismatch {
                    requested: Access::ReadWrite,
                    granted: Access::Read
                })
            ),
            "{other_access:?}"
        );
    }

    #[test]
    fn into_reattached_returns_the_agents_refusal() {
        let refusal = grant_response::Kind::Error(GrantError {
            code: 7,
            message: "token does not match".to_owned(),
            quota: String::new(),
        });

        let err = reply(refusal, Vec::new())
            .into_reattached(Access::Read)
            .unwrap_err();

        assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
    }

    #[test]
    fn segment_grant_refuses_missing_or_extra_fds() {
        let count = |fds| {
            reply(segment_grant(v1::Access::Read), fds)
                .into_segment_grant()
                .unwrap()
                .validate(Access::Read)
                .unwrap_err()
        };

        assert!(matches!(
            count(Vec::new()),
            ProtocolError::FdCount {
                expected: 1,
                found: 0
            }
        ));
        assert!(matches!(
            count(vec![memfd(), memfd()]),
            ProtocolError::FdCount {
                expected: 1,
                found: 2
            }
        ));
    }

    #[test]
    fn a_ring_grant_carries_the_memfd_and_the_doorbell() {
        let ring_grant = || {
            grant_response::Kind::Segment(SegmentGrant {
                segment: Some(v1::Segment {
                    id: 9,
                    size_bytes: 4096,
                    state: v1::SegmentState::Active.into(),
                    kind: v1::SegmentKind::Ring.into(),
                    ..v1::Segment::default()
                }),
                access: v1::Access::ReadWrite.into(),
                token: vec![7; 16],
            })
        };

        let grant = reply(ring_grant(), vec![memfd(), memfd()])
            .into_segment_grant()
            .unwrap()
            .validate(Access::ReadWrite)
            .unwrap();
        let err = reply(ring_grant(), vec![memfd()])
            .into_segment_grant()
            .unwrap()
            .validate(Access::ReadWrite)
            .unwrap_err();

        assert!(grant.doorbell.is_some());
        assert!(matches!(
            err,
            ProtocolError::FdCount {
                expected: 2,
                found: 1
            }
        ));
    }

    #[test]
    fn segment_grant_refuses_access_other_than_requested() {
        let err = reply(segment_grant(v1::Access::Read), vec![memfd()])
            .into_segment_grant()
            .unwrap()
            .validate(Access::ReadWrite)
            .unwrap_err();

        assert!(matches!(
            err,
            ProtocolError::AccessMismatch {
                requested: Access::ReadWrite,
                granted: Access::Read
            }
        ));
    }

    #[test]
    fn segment_grant_refuses_unspecified_access() {
        let err = reply(segment_grant(v1::Access::Unspecified), vec![memfd()])
            .into_segment_grant()
            .unwrap()
            .validate(Access::Read)
            .unwrap_err();

        assert!(matches!(
            err,
            ProtocolError::UnknownValue {
                field: "access",
                value: 0
            }
        ));
    }

    #[test]
    fn segment_grant_without_segment_is_a_protocol_error() {
        let grant = grant_response::Kind::Segment(SegmentGrant {
            segment: None,
            access: v1::Access::Read.into(),
            token: Vec::new(),
        });

        let err = reply(grant, vec![memfd()])
            .into_segment_grant()
            .unwrap_err();

        assert!(matches!(
            err,
            Error::Protocol(ProtocolError::MissingSegment)
        ));
    }
}
