//! Conversions between the core's types and the wire types, and the one place
//! that chooses a status code for every error, used by both front doors.

use std::time::SystemTime;

use ipcplane_proto::v1;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::audit::{AuditError, Outcome, StoredEvent};
use crate::core::{
    Access, CoreError, Layout, Lifetime, QuotaView, SegmentRecord, SegmentState, SharingMode,
};
use crate::service::ServiceError;
use ipcplane_shm::memfd::CreateError;

/// The status code, the message for the client, and for quota refusals the
/// quota's name and its tenant.
#[derive(Debug)]
pub struct ErrorReply {
    pub code: Code,
    pub message: String,
    pub quota: Option<(&'static str, String)>,
}

impl From<&ServiceError> for ErrorReply {
    fn from(error: &ServiceError) -> Self {
        let message = error.to_string();
        let (code, quota) = match error {
            ServiceError::Core(core) => match core {
                CoreError::InvalidArgument(_) => (Code::InvalidArgument, None),
                CoreError::NotFound(_) => (Code::NotFound, None),
                CoreError::AlreadyExists(_) => (Code::AlreadyExists, None),
                CoreError::PermissionDenied(_) => (Code::PermissionDenied, None),
                CoreError::QuotaExceeded { tenant, quota, .. } => (
                    Code::ResourceExhausted,
                    Some((quota.as_str(), tenant.clone())),
                ),
                CoreError::FailedPrecondition(_) => (Code::FailedPrecondition, None),
            },
            ServiceError::Memory(memory) => match memory {
                CreateError::OutOfMemory { .. } => (Code::ResourceExhausted, None),
                CreateError::ZeroSize => (Code::InvalidArgument, None),
                CreateError::Create(_)
                | CreateError::Resize(_)
                | CreateError::Allocate(_)
                | CreateError::Seal(_)
                | CreateError::Chmod(_) => (Code::Internal, None),
            },
            ServiceError::Grant(_) | ServiceError::Header(_) => (Code::Internal, None),
            ServiceError::Audit(audit) => match audit {
                AuditError::WriterGone => (Code::Unavailable, None),
                AuditError::Blocking(_) => (Code::Internal, None),
                AuditError::Open { .. } | AuditError::Migrate { .. } | AuditError::Sql(_) => {
                    (Code::Internal, None)
                }
            },
        };
        ErrorReply {
            code,
            message,
            quota,
        }
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Self {
        let reply = ErrorReply::from(&error);
        match reply.quota {
            Some((quota, tenant)) => {
                let details =
                    ErrorDetails::with_quota_failure_violation(quota, format!("tenant {tenant}"));
                Status::with_error_details(reply.code, reply.message, details)
            }
            None => Status::new(reply.code, reply.message),
        }
    }
}

impl From<CoreError> for Status {
    fn from(error: CoreError) -> Self {
        ServiceError::Core(error).into()
    }
}

impl From<&ServiceError> for v1::GrantError {
    fn from(error: &ServiceError) -> Self {
        let reply = ErrorReply::from(error);
        v1::GrantError {
            code: reply.code as i32,
            message: reply.message,
            quota: reply
                .quota
                .map(|(quota, _)| quota.to_owned())
                .unwrap_or_default(),
        }
    }
}

/// Reads a proto enum field, refusing values this build does not know.
///
/// # Errors
/// InvalidArgument naming the field.
pub fn sharing_mode(raw: i32) -> Result<SharingMode, CoreError> {
    match v1::SharingMode::try_from(raw) {
        Ok(v1::SharingMode::Unspecified | v1::SharingMode::ReadWrite) => Ok(SharingMode::ReadWrite),
        Ok(v1::SharingMode::ReadOnlyForOthers) => Ok(SharingMode::ReadOnlyForOthers),
        Err(_) => Err(unknown_enum("mode", raw)),
    }
}

/// As [`sharing_mode`] for the lifetime and its ttl.
///
/// # Errors
/// InvalidArgument naming the field.
pub fn lifetime(raw: i32, ttl_ms: u64) -> Result<Lifetime, CoreError> {
    let lifetime = match v1::Lifetime::try_from(raw) {
        Ok(v1::Lifetime::Unspecified | v1::Lifetime::Persistent) => Lifetime::Persistent,
        Ok(v1::Lifetime::OnLastDetach) => Lifetime::OnLastDetach,
        Ok(v1::Lifetime::Owner) => Lifetime::Owner,
        Ok(v1::Lifetime::Ttl) => return Ok(Lifetime::Ttl { ttl_ms }),
        Err(_) => return Err(unknown_enum("lifetime", raw)),
    };
    if ttl_ms != 0 {
        return Err(CoreError::InvalidArgument(
            "ttl_ms is only valid with LIFETIME_TTL".into(),
        ));
    }
    Ok(lifetime)
}

/// As [`sharing_mode`] for an access; unspecified is refused.
///
/// # Errors
/// InvalidArgument.
pub fn access(raw: i32) -> Result<Access, CoreError> {
    match v1::Access::try_from(raw) {
        Ok(v1::Access::Read) => Ok(Access::Read),
        Ok(v1::Access::ReadWrite) => Ok(Access::ReadWrite),
        Ok(v1::Access::Unspecified) => Err(CoreError::InvalidArgument(
            "access must be ACCESS_READ or ACCESS_READ_WRITE".into(),
        )),
        Err(_) => Err(unknown_enum("access", raw)),
    }
}

/// A ring's layout as asked for (the core checks it and fills in defaults).
pub fn ring(spec: &v1::RingSpec) -> Layout {
    Layout::Ring {
        capacity_bytes: spec.capacity_bytes,
        max_message_bytes: spec.max_message_bytes,
        producers: spec.producers,
    }
}

/// A semaphore's layout as asked for.
pub fn semaphore(spec: &v1::SemaphoreSpec) -> Layout {
    Layout::Semaphore {
        initial_value: spec.initial_value,
    }
}

/// The wire form of a layout: the kind, and the parameters a ring or a
/// semaphore has.
pub fn layout(layout: Layout) -> (v1::SegmentKind, Option<v1::segment::Layout>) {
    match layout {
        Layout::Plain => (v1::SegmentKind::Plain, None),
        Layout::Ring {
            capacity_bytes,
            max_message_bytes,
            producers,
        } => (
            v1::SegmentKind::Ring,
            Some(v1::segment::Layout::Ring(v1::RingSpec {
                capacity_bytes,
                max_message_bytes,
                producers,
            })),
        ),
        Layout::Semaphore { initial_value } => (
            v1::SegmentKind::Semaphore,
            Some(v1::segment::Layout::Semaphore(v1::SemaphoreSpec {
                initial_value,
            })),
        ),
        Layout::Event => (v1::SegmentKind::Event, None),
    }
}

/// The filterable name of a kind, as in `kind = RING`.
pub fn kind_name(layout: Layout) -> &'static str {
    match layout {
        Layout::Plain => "PLAIN",
        Layout::Ring { .. } => "RING",
        Layout::Semaphore { .. } => "SEMAPHORE",
        Layout::Event => "EVENT",
    }
}

fn unknown_enum(field: &str, raw: i32) -> CoreError {
    CoreError::InvalidArgument(format!("unknown {field} value {raw}"))
}

/// The wire form of an access.
pub fn access_to_proto(access: Access) -> v1::Access {
    match access {
        Access::Read => v1::Access::Read,
        Access::ReadWrite => v1::Access::ReadWrite,
    }
}

/// The wire form of a segment.
pub fn segment(record: &SegmentRecord) -> v1::Segment {
    let (lifetime, ttl_ms) = match record.lifetime {
        Lifetime::Persistent => (v1::Lifetime::Persistent, 0),
        Lifetime::OnLastDetach => (v1::Lifetime::OnLastDetach, 0),
        Lifetime::Owner => (v1::Lifetime::Owner, 0),
        Lifetime::Ttl { ttl_ms } => (v1::Lifetime::Ttl, ttl_ms),
    };
    let (kind, layout) = layout(record.layout);
    v1::Segment {
        id: record.id.0,
        name: record.name.clone().unwrap_or_default(),
        tenant: record.tenant.clone(),
        size_bytes: record.size_bytes,
        mode: match record.mode {
            SharingMode::ReadWrite => v1::SharingMode::ReadWrite,
            SharingMode::ReadOnlyForOthers => v1::SharingMode::ReadOnlyForOthers,
        } as i32,
        lifetime: lifetime as i32,
        ttl_ms,
        owner_pid: record.owner_pid,
        owner_uid: record.owner_uid,
        state: state_to_proto(record.state) as i32,
        attachment_count: record.attachments,
        create_time: Some(timestamp(record.created)),
        attach_time: record.attached.map(timestamp),
        kind: kind as i32,
        layout,
    }
}

/// The filterable name of a state, as in `state = ACTIVE`.
pub fn state_name(state: SegmentState) -> &'static str {
    match state {
        SegmentState::Creating => "CREATING",
        SegmentState::Active => "ACTIVE",
        SegmentState::Draining => "DRAINING",
        SegmentState::Unclaimed => "UNCLAIMED",
    }
}

fn state_to_proto(state: SegmentState) -> v1::SegmentState {
    match state {
        SegmentState::Creating => v1::SegmentState::Unspecified,
        SegmentState::Active => v1::SegmentState::Active,
        SegmentState::Draining => v1::SegmentState::Draining,
        SegmentState::Unclaimed => v1::SegmentState::Unclaimed,
    }
}

/// The wire form of a quota.
pub fn quota(view: &QuotaView) -> v1::Quota {
    v1::Quota {
        tenant: view.tenant.clone(),
        max_bytes: view.limits.max_bytes,
        max_segments: view.limits.max_segments,
        max_segment_bytes: view.limits.max_segment_bytes,
        used_bytes: view.usage.bytes,
        used_segments: view.usage.segments,
        overridden: view.overridden,
    }
}

/// The wire form of an audit event.
pub fn event(stored: &StoredEvent) -> v1::AuditEvent {
    v1::AuditEvent {
        id: stored.id,
        time: Some(timestamp(stored.time)),
        pid: stored.pid,
        uid: stored.uid,
        gid: stored.gid,
        tenant: stored.tenant.clone(),
        action: stored.action.clone(),
        resource: stored.resource.clone(),
        outcome: match stored.outcome {
            Outcome::Allowed => v1::Outcome::Allowed,
            Outcome::Denied => v1::Outcome::Denied,
            Outcome::Failed => v1::Outcome::Failed,
        } as i32,
        detail: stored.detail.clone(),
    }
}

/// A protobuf timestamp.
pub fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::QuotaKind;

    #[test]
    fn quota_refusals_carry_the_quota_in_status_details_and_grant_errors() {
        let error = ServiceError::Core(CoreError::QuotaExceeded {
            tenant: "uid-1000".into(),
            quota: QuotaKind::MaxSegments,
            limit: 1,
            used: 1,
            requested: 1,
        });
        let grant = v1::GrantError::from(&error);
        assert_eq!(
            (grant.code, grant.quota.as_str()),
            (Code::ResourceExhausted as i32, "max_segments")
        );
        let status = Status::from(error);
        assert_eq!(status.code(), Code::ResourceExhausted);
        let details = status.get_error_details();
        let violations = &details.quota_failure().unwrap().violations;
        assert_eq!(violations[0].subject, "max_segments");
    }

    #[test]
    fn unknown_enum_values_and_stray_ttls_are_invalid() {
        assert!(sharing_mode(99).is_err());
        assert!(lifetime(99, 0).is_err());
        assert!(lifetime(v1::Lifetime::Persistent as i32, 5).is_err());
        assert_eq!(
            lifetime(v1::Lifetime::Ttl as i32, 5),
            Ok(Lifetime::Ttl { ttl_ms: 5 })
        );
        assert!(access(v1::Access::Unspecified as i32).is_err());
        assert!(access(-1).is_err());
    }
}
