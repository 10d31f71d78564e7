//! [`Segment`], a granted and mapped shared-memory segment, and the plain
//! types that describe segments.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipcplane_proto::v1;
use ipcplane_shm::mapping::{AccessError, Mapping};
use ipcplane_shm::{Access, memfd};

use crate::connection::{Attachment, Granted};
use crate::error::{Error, ProtocolError};
use crate::wire::Grant;

/// Agent-assigned id of a segment, never reused on a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentId(u64);

impl SegmentId {
    /// The id with this number.
    pub const fn new(id: u64) -> Self {
        Self(id)
    }

    /// The id's number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl From<u64> for SegmentId {
    fn from(id: u64) -> Self {
        Self(id)
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Which segment to open: by id, or by name within the caller's tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentRef<'a> {
    /// By id.
    Id(SegmentId),
    /// By name.
    Name(&'a str),
}

impl From<SegmentId> for SegmentRef<'_> {
    fn from(id: SegmentId) -> Self {
        Self::Id(id)
    }
}

impl<'a> From<&'a str> for SegmentRef<'a> {
    fn from(name: &'a str) -> Self {
        Self::Name(name)
    }
}

impl<'a> From<&'a String> for SegmentRef<'a> {
    fn from(name: &'a String) -> Self {
        Self::Name(name)
    }
}

impl SegmentRef<'_> {
    /// The `OpenSegment` target.
    pub(crate) fn to_proto(self) -> v1::open_segment::Target {
        match self {
            Self::Id(id) => v1::open_segment::Target::Id(id.get()),
            Self::Name(name) => v1::open_segment::Target::Name(name.to_owned()),
        }
    }
}

/// Who besides the creator may write a segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SharingMode {
    /// Every process of the tenant may open it read-write.
    #[default]
    ReadWrite,
    /// Only the creator's uid may open it read-write; others get read access.
    ReadOnlyForOthers,
}

impl SharingMode {
    /// The proto enum's number.
    pub(crate) fn to_proto(self) -> i32 {
        match self {
            Self::ReadWrite => v1::SharingMode::ReadWrite.into(),
            Self::ReadOnlyForOthers => v1::SharingMode::ReadOnlyForOthers.into(),
        }
    }

    fn from_proto(value: i32) -> Result<Self, ProtocolError> {
        match v1::SharingMode::try_from(value) {
            Ok(v1::SharingMode::Unspecified | v1::SharingMode::ReadWrite) => Ok(Self::ReadWrite),
            Ok(v1::SharingMode::ReadOnlyForOthers) => Ok(Self::ReadOnlyForOthers),
            Err(_) => Err(ProtocolError::UnknownValue {
                field: "mode",
                value,
            }),
        }
    }
}

/// When the agent deletes a segment on its own. A process holds its
/// attachments until it detaches or exits (however it exits: the agent
/// watches it through a pidfd); closing the connection alone keeps them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Lifetime {
    /// Never: it lives until deleted.
    #[default]
    Persistent,
    /// When its last attachment is detached.
    OnLastDetach,
    /// When the process that created it exits.
    Owner,
    /// When it has been unattached for this long (millisecond precision).
    Ttl(Duration),
}

impl Lifetime {
    /// The proto enum's number and `ttl_ms`.
    pub(crate) fn to_proto(self) -> (i32, u64) {
        match self {
            Self::Persistent => (v1::Lifetime::Persistent.into(), 0),
            Self::OnLastDetach => (v1::Lifetime::OnLastDetach.into(), 0),
            Self::Owner => (v1::Lifetime::Owner.into(), 0),
            Self::Ttl(ttl) => (
                v1::Lifetime::Ttl.into(),
                u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            ),
        }
    }

    fn from_proto(value: i32, ttl_ms: u64) -> Result<Self, ProtocolError> {
        match v1::Lifetime::try_from(value) {
            Ok(v1::Lifetime::Unspecified | v1::Lifetime::Persistent) => Ok(Self::Persistent),
            Ok(v1::Lifetime::OnLastDetach) => Ok(Self::OnLastDetach),
            Ok(v1::Lifetime::Owner) => Ok(Self::Owner),
            Ok(v1::Lifetime::Ttl) => Ok(Self::Ttl(Duration::from_millis(ttl_ms))),
            Err(_) => Err(ProtocolError::UnknownValue {
                field: "lifetime",
                value,
            }),
        }
    }
}

/// Where a segment is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SegmentState {
    /// Open for new attachments.
    Active,
    /// Deleted but still attached somewhere: no new opens, still charged to
    /// its tenant until the last attachment goes.
    Draining,
    /// Known from before an agent restart, waiting for a holder to present
    /// it again.
    Unclaimed,
}

impl SegmentState {
    fn from_proto(value: i32) -> Result<Self, ProtocolError> {
        match v1::SegmentState::try_from(value) {
            Ok(v1::SegmentState::Active) => Ok(Self::Active),
            Ok(v1::SegmentState::Draining) => Ok(Self::Draining),
            Ok(v1::SegmentState::Unclaimed) => Ok(Self::Unclaimed),
            Ok(v1::SegmentState::Unspecified) | Err(_) => Err(ProtocolError::UnknownValue {
                field: "state",
                value,
            }),
        }
    }
}

/// What a segment holds. The agent writes the header of every kind but
/// [`Plain`](Self::Plain) before the first grant; open each kind with its
/// own call ([`Client::open_segment`](crate::Client::open_segment),
/// [`Client::open_ring`](crate::Client::open_ring), ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SegmentKind {
    /// Bytes only, no header.
    Plain,
    /// A message ring ([`Ring`](crate::ring::Ring)).
    Ring,
    /// A counting semaphore ([`Semaphore`](crate::Semaphore)).
    Semaphore,
    /// An event ([`Event`](crate::Event)).
    Event,
}

impl SegmentKind {
    fn from_proto(value: i32) -> Result<Self, ProtocolError> {
        match v1::SegmentKind::try_from(value) {
            // An agent from before kinds existed knows only plain segments.
            Ok(v1::SegmentKind::Unspecified | v1::SegmentKind::Plain) => Ok(Self::Plain),
            Ok(v1::SegmentKind::Ring) => Ok(Self::Ring),
            Ok(v1::SegmentKind::Semaphore) => Ok(Self::Semaphore),
            Ok(v1::SegmentKind::Event) => Ok(Self::Event),
            Err(_) => Err(ProtocolError::UnknownValue {
                field: "kind",
                value,
            }),
        }
    }
}

impl fmt::Display for SegmentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Plain => "plain",
            Self::Ring => "ring",
            Self::Semaphore => "semaphore",
            Self::Event => "event",
        })
    }
}

/// A ring's parameters as the agent created it (defaults filled in).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct RingParams {
    /// Bytes of records per producer lane.
    pub capacity_bytes: u64,
    /// Largest message in bytes.
    pub max_message_bytes: u64,
    /// Most producers at once.
    pub producers: u32,
}

/// A segment as the agent recorded it when it was granted.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SegmentInfo {
    /// The segment's id.
    pub id: SegmentId,
    /// Its name, unique within the tenant; `None` if unnamed.
    pub name: Option<String>,
    /// The tenant it is charged to.
    pub tenant: String,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Who besides the creator may write it.
    pub mode: SharingMode,
    /// When the agent deletes it on its own.
    pub lifetime: Lifetime,
    /// The process that created it, if known.
    pub owner_pid: Option<u32>,
    /// The user that created it.
    pub owner_uid: u32,
    /// Active or draining.
    pub state: SegmentState,
    /// Live attachments, including the one being granted.
    pub attachment_count: u32,
    /// When it was created.
    pub create_time: Option<SystemTime>,
    /// When it was last attached.
    pub attach_time: Option<SystemTime>,
    /// What it holds.
    pub kind: SegmentKind,
    /// A ring's parameters; `None` for other kinds.
    pub ring: Option<RingParams>,
    /// A semaphore's units at creation; `None` for other kinds.
    pub semaphore_initial_value: Option<u32>,
}

impl SegmentInfo {
    /// Converts the proto `Segment`, refusing values this SDK does not know.
    pub(crate) fn from_proto(segment: v1::Segment) -> Result<Self, ProtocolError> {
        let time = |field, timestamp: Option<prost_types::Timestamp>| {
            timestamp
                .map(SystemTime::try_from)
                .transpose()
                .map_err(|_| ProtocolError::InvalidTimestamp { field })
        };
        let (ring, semaphore_initial_value) = match segment.layout {
            Some(v1::segment::Layout::Ring(ring)) => (
                Some(RingParams {
                    capacity_bytes: ring.capacity_bytes,
                    max_message_bytes: ring.max_message_bytes,
                    producers: ring.producers,
                }),
                None,
            ),
            Some(v1::segment::Layout::Semaphore(semaphore)) => {
                (None, Some(semaphore.initial_value))
            }
            None => (None, None),
        };
        Ok(Self {
            kind: SegmentKind::from_proto(segment.kind)?,
            ring,
            semaphore_initial_value,
            id: SegmentId(segment.id),
            name: Some(segment.name).filter(|name| !name.is_empty()),
            tenant: segment.tenant,
            size_bytes: segment.size_bytes,
            mode: SharingMode::from_proto(segment.mode)?,
            lifetime: Lifetime::from_proto(segment.lifetime, segment.ttl_ms)?,
            owner_pid: Some(segment.owner_pid).filter(|&pid| pid != 0),
            owner_uid: segment.owner_uid,
            state: SegmentState::from_proto(segment.state)?,
            attachment_count: segment.attachment_count,
            create_time: time("create_time", segment.create_time)?,
            attach_time: time("attach_time", segment.attach_time)?,
        })
    }
}

/// A segment granted by the agent and mapped into this process.
///
/// Dropping it unmaps the memory, closes the memfd and detaches from the
/// agent (best effort; use [`detach`](Self::detach) to see errors).
///
/// It survives agent restarts: the memory stays mapped, and the client
/// re-presents the segment to the restarted agent (see the [crate
/// docs](crate#agent-restarts)).
///
/// The memory is shared with other processes that may write it at any time:
/// bytes read from it are untrusted input.
#[derive(Debug)]
pub struct Segment {
    info: SegmentInfo,
    // Fields drop in declaration order: unmap and close before detaching.
    // The connection's registry shares the fd, to re-present it after an
    // agent restart, and closes it on detaching, before telling the agent.
    mapping: Mapping,
    fd: Arc<OwnedFd>,
    attachment: Attachment,
}

/// Checks that a grant's fd allows the access granted, maps it and checks
/// its size against the agent's record.
pub(crate) fn map_grant(grant: &Grant) -> Result<Mapping, Error> {
    if let Some(doorbell) = &grant.doorbell {
        check_doorbell(doorbell)?;
    }
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
    Ok(mapping)
}

/// Checks that a ring's doorbell is an eventfd, so that nothing else (a
/// pipe or a socket the agent never sends) is written to or waited on.
fn check_doorbell(doorbell: &OwnedFd) -> Result<(), ProtocolError> {
    ipcplane_shm::ring::check_doorbell(doorbell.as_fd())
        .map_err(|found| ProtocolError::Doorbell { found })
}

impl Segment {
    /// Assembles a segment from a validated, registered grant.
    pub(crate) fn new(granted: Granted) -> Self {
        let Granted {
            info,
            mapping,
            fd,
            attachment,
            ..
        } = granted;
        Self {
            info,
            mapping,
            fd,
            attachment,
        }
    }

    /// The segment's id.
    pub fn id(&self) -> SegmentId {
        self.info.id
    }

    /// The segment as the agent recorded it when granting it (a snapshot:
    /// `state` and `attachment_count` are not updated).
    pub fn info(&self) -> &SegmentInfo {
        &self.info
    }

    /// Size of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.mapping.len()
    }

    /// Always `false`: segments have at least one byte.
    pub fn is_empty(&self) -> bool {
        self.mapping.is_empty()
    }

    /// Whether this process may write the segment.
    pub fn access(&self) -> Access {
        self.mapping.access()
    }

    /// Copies `buf.len()` bytes starting at `offset` out of the segment.
    ///
    /// # Errors
    /// [`AccessError::OutOfBounds`] if the range is not inside the segment.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), AccessError> {
        self.mapping.read_at(offset, buf)
    }

    /// Copies `data` into the segment starting at `offset`.
    ///
    /// # Errors
    /// [`AccessError::ReadOnly`] if the segment was opened read-only,
    /// [`AccessError::OutOfBounds`] if the range is not inside the segment.
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), AccessError> {
        self.mapping.write_at(offset, data)
    }

    /// Start of the mapping, for zero-copy users. See
    /// [`Mapping::as_ptr`] for the rules.
    pub fn as_ptr(&self) -> *mut u8 {
        self.mapping.as_ptr()
    }

    /// Unmaps the segment and releases this attachment at the agent.
    ///
    /// # Errors
    /// The agent's refusal, or a connection error; the memory is unmapped
    /// either way.
    pub fn detach(self) -> Result<(), Error> {
        let Self {
            mapping,
            fd,
            attachment,
            ..
        } = self;
        drop(mapping);
        drop(fd);
        attachment.detach()
    }
}

impl AsFd for Segment {
    /// The segment's memfd, e.g. to inspect its seals or pass it on.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proto_segment() -> v1::Segment {
        v1::Segment {
            id: 7,
            name: "demo".to_owned(),
            tenant: "uid-1000".to_owned(),
            size_bytes: 4096,
            mode: v1::SharingMode::ReadOnlyForOthers.into(),
            lifetime: v1::Lifetime::Ttl.into(),
            ttl_ms: 1500,
            owner_pid: 42,
            owner_uid: 1000,
            state: v1::SegmentState::Active.into(),
            attachment_count: 2,
            create_time: Some(prost_types::Timestamp {
                seconds: 10,
                nanos: 5,
            }),
            attach_time: None,
            kind: v1::SegmentKind::Ring.into(),
            layout: Some(v1::segment::Layout::Ring(v1::RingSpec {
                capacity_bytes: 4096,
                max_message_bytes: 100,
                producers: 2,
            })),
        }
    }

    #[test]
    fn segment_info_converts_every_field() {
        let sut = SegmentInfo::from_proto(proto_segment()).unwrap();

        assert_eq!(
            sut,
            SegmentInfo {
                id: SegmentId::new(7),
                name: Some("demo".to_owned()),
                tenant: "uid-1000".to_owned(),
                size_bytes: 4096,
                mode: SharingMode::ReadOnlyForOthers,
                lifetime: Lifetime::Ttl(Duration::from_millis(1500)),
                owner_pid: Some(42),
                owner_uid: 1000,
                state: SegmentState::Active,
                attachment_count: 2,
                create_time: Some(SystemTime::UNIX_EPOCH + Duration::new(10, 5)),
                attach_time: None,
                kind: SegmentKind::Ring,
                ring: Some(RingParams {
                    capacity_bytes: 4096,
                    max_message_bytes: 100,
                    producers: 2,
                }),
                semaphore_initial_value: None,
            }
        );
    }

    #[test]
    fn segment_info_reads_an_unspecified_kind_as_plain_and_a_semaphores_value() {
        let plain = SegmentInfo::from_proto(v1::Segment {
            kind: 0,
            layout: None,
            ..proto_segment()
        })
        .unwrap();
        let semaphore = SegmentInfo::from_proto(v1::Segment {
            kind: v1::SegmentKind::Semaphore.into(),
            layout: Some(v1::segment::Layout::Semaphore(v1::SemaphoreSpec {
                initial_value: 3,
            })),
            ..proto_segment()
        })
        .unwrap();

        assert_eq!((plain.kind, plain.ring), (SegmentKind::Plain, None));
        assert_eq!(
            (semaphore.kind, semaphore.semaphore_initial_value),
            (SegmentKind::Semaphore, Some(3))
        );
        assert!(matches!(
            SegmentInfo::from_proto(v1::Segment {
                kind: 9,
                ..proto_segment()
            }),
            Err(ProtocolError::UnknownValue {
                field: "kind",
                value: 9
            })
        ));
    }

    #[test]
    fn segment_info_reads_empty_name_and_zero_pid_as_absent() {
        let sut = SegmentInfo::from_proto(v1::Segment {
            name: String::new(),
            owner_pid: 0,
            ..proto_segment()
        })
        .unwrap();

        assert_eq!((sut.name, sut.owner_pid), (None, None));
    }

    #[test]
    fn segment_info_applies_the_documented_defaults() {
        let sut = SegmentInfo::from_proto(v1::Segment {
            mode: 0,
            lifetime: 0,
            ..proto_segment()
        })
        .unwrap();

        assert_eq!(sut.mode, SharingMode::ReadWrite);
        assert_eq!(sut.lifetime, Lifetime::Persistent);
    }

    #[test]
    fn segment_info_refuses_unknown_enum_values() {
        let unknown = |segment| SegmentInfo::from_proto(segment).unwrap_err();

        assert!(matches!(
            unknown(v1::Segment {
                mode: 9,
                ..proto_segment()
            }),
            ProtocolError::UnknownValue {
                field: "mode",
                value: 9
            }
        ));
        assert!(matches!(
            unknown(v1::Segment {
                lifetime: 9,
                ..proto_segment()
            }),
            ProtocolError::UnknownValue {
                field: "lifetime",
                value: 9
            }
        ));
        assert!(matches!(
            unknown(v1::Segment {
                state: 0,
                ..proto_segment()
            }),
            ProtocolError::UnknownValue {
                field: "state",
                value: 0
            }
        ));
    }

    #[test]
    fn segment_info_refuses_timestamps_out_of_range() {
        let err = SegmentInfo::from_proto(v1::Segment {
            attach_time: Some(prost_types::Timestamp {
                seconds: i64::MIN,
                nanos: 0,
            }),
            ..proto_segment()
        })
        .unwrap_err();

        assert!(matches!(
            err,
            ProtocolError::InvalidTimestamp {
                field: "attach_time"
            }
        ));
    }

    #[test]
    fn lifetime_round_trips_through_proto() {
        for sut in [
            Lifetime::Persistent,
            Lifetime::OnLastDetach,
            Lifetime::Owner,
            Lifetime::Ttl(Duration::from_secs(3)),
        ] {
            let (value, ttl_ms) = sut.to_proto();
            assert_eq!(Lifetime::from_proto(value, ttl_ms).unwrap(), sut);
        }
    }

    #[test]
    fn sharing_mode_round_trips_through_proto() {
        for sut in [SharingMode::ReadWrite, SharingMode::ReadOnlyForOthers] {
            assert_eq!(SharingMode::from_proto(sut.to_proto()).unwrap(), sut);
        }
    }
}
