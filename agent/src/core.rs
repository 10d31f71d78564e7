//! The agent's pure core: tables of segments, clients and quotas, and every
//! decision about them. No I/O and no async, so both front doors (grant socket
//! and gRPC) share one policy and it can be tested exhaustively.
//!
//! The core is generic over the memory handle `M` it stores with each segment
//! (the agent uses `Arc<OwnedFd>`, tests use `()`). Creating a segment is two
//! steps, so the (slow) memfd allocation happens outside the core's lock:
//! [`Core::reserve_segment`] checks policy and charges the quota, then
//! [`Core::complete_segment`] or [`Core::abandon_segment`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::SystemTime;

/// Longest segment name accepted.
pub const MAX_NAME_LEN: usize = 255;
/// Most attachments one segment can have (the counter never wraps).
pub const MAX_ATTACHMENTS: u32 = 1 << 20;
/// Longest tenant name accepted.
pub const MAX_TENANT_LEN: usize = 128;

/// A process (or gRPC caller) as the kernel identified it, with the tenant and
/// admin flag that the agent's configuration assigns to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub tenant: String,
    pub admin: bool,
}

/// Agent-assigned segment id, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId(pub u64);

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "segments/{}", self.0)
    }
}

/// Agent-assigned id of one grant-socket connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub u64);

/// Who besides the creator may write a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharingMode {
    ReadWrite,
    ReadOnlyForOthers,
}

/// When the agent deletes a segment on its own. Recorded now; acted on by the
/// reaper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    Persistent,
    OnLastDetach,
    Owner,
    Ttl { ttl_ms: u64 },
}

impl SharingMode {
    /// The stored and audited spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SharingMode::ReadWrite => "read_write",
            SharingMode::ReadOnlyForOthers => "read_only_for_others",
        }
    }
}

impl Lifetime {
    /// The stored and audited spelling (the ttl is separate).
    pub fn as_str(self) -> &'static str {
        match self {
            Lifetime::Persistent => "persistent",
            Lifetime::OnLastDetach => "on_last_detach",
            Lifetime::Owner => "owner",
            Lifetime::Ttl { .. } => "ttl",
        }
    }

    /// The ttl in ms, 0 unless a ttl lifetime.
    pub fn ttl_ms(self) -> u64 {
        match self {
            Lifetime::Ttl { ttl_ms } => ttl_ms,
            _ => 0,
        }
    }
}

/// Access a grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

/// Where a segment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentState {
    /// Reserved, memory not yet allocated: charged, but invisible.
    Creating,
    Active,
    /// Deleted while attached: charged until the last attachment goes.
    Draining,
}

/// What a caller asks for when creating a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSpec {
    pub name: Option<String>,
    pub size_bytes: u64,
    pub mode: SharingMode,
    pub lifetime: Lifetime,
    /// Tenant to charge; `None` for the caller's own.
    pub tenant: Option<String>,
}

/// Everything the agent records about a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRecord {
    pub id: SegmentId,
    pub name: Option<String>,
    pub tenant: String,
    pub size_bytes: u64,
    pub mode: SharingMode,
    pub lifetime: Lifetime,
    pub owner_pid: u32,
    pub owner_uid: u32,
    pub state: SegmentState,
    pub attachments: u32,
    pub created: SystemTime,
    pub attached: Option<SystemTime>,
}

/// Which segment an open names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Id(SegmentId),
    Name(String),
}

/// One tenant's limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: Option<u64>,
    pub max_segments: Option<u64>,
    pub max_segment_bytes: Option<u64>,
}

impl fmt::Display for Limits {
    /// `max_bytes=4096 max_segments=unlimited max_segment_bytes=1024`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show =
            |limit: Option<u64>| limit.map_or_else(|| "unlimited".to_owned(), |v| v.to_string());
        write!(
            f,
            "max_bytes={} max_segments={} max_segment_bytes={}",
            show(self.max_bytes),
            show(self.max_segments),
            show(self.max_segment_bytes)
        )
    }
}

/// Which limit a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    MaxBytes,
    MaxSegments,
    MaxSegmentBytes,
}

impl QuotaKind {
    /// The limit's field name in the API and the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKind::MaxBytes => "max_bytes",
            QuotaKind::MaxSegments => "max_segments",
            QuotaKind::MaxSegmentBytes => "max_segment_bytes",
        }
    }
}

/// A tenant's current consumption, including draining and reserved segments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub segments: u64,
}

/// A tenant's effective quota with its usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaView {
    pub tenant: String,
    pub limits: Limits,
    pub usage: Usage,
    pub overridden: bool,
}

/// A connected grant-socket client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    pub id: ClientId,
    pub caller: Caller,
    pub connected: SystemTime,
    /// Attachment count per segment.
    pub attachments: BTreeMap<SegmentId, u32>,
}

impl ClientRecord {
    /// Total attachments the client holds.
    pub fn attachment_count(&self) -> u32 {
        self.attachments.values().sum()
    }
}

/// A tenant with everything the agent knows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantView {
    pub quota: QuotaView,
    pub clients: u64,
}

/// Why the core refused a request. Each variant maps to one gRPC code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{}", quota_message(tenant, *quota, *limit, *used, *requested))]
    QuotaExceeded {
        tenant: String,
        quota: QuotaKind,
        limit: u64,
        used: u64,
        requested: u64,
    },
    #[error("{0}")]
    FailedPrecondition(String),
}

fn quota_message(tenant: &str, quota: QuotaKind, limit: u64, used: u64, requested: u64) -> String {
    let name = quota.as_str();
    match quota {
        QuotaKind::MaxSegmentBytes => {
            format!("quota exceeded: {name} of tenant {tenant} is {limit}, {requested} requested")
        }
        QuotaKind::MaxBytes | QuotaKind::MaxSegments => format!(
            "quota exceeded: {name} of tenant {tenant} is {limit}, {used} in use, {requested} requested"
        ),
    }
}

/// A segment's memory is no longer referenced by the agent: the handle to drop.
#[derive(Debug)]
pub struct Freed<M> {
    pub record: SegmentRecord,
    pub memory: Option<M>,
}

/// What deleting a segment did.
#[derive(Debug)]
pub enum Deleted<M> {
    /// Nobody held it: gone.
    Freed(Freed<M>),
    /// Still attached: draining until the last attachment goes.
    Draining(SegmentRecord),
}

#[derive(Debug)]
struct Entry<M> {
    record: SegmentRecord,
    memory: Option<M>,
}

/// The tables and the policy. See the module doc.
#[derive(Debug)]
pub struct Core<M> {
    segments: BTreeMap<SegmentId, Entry<M>>,
    names: HashMap<(String, String), SegmentId>,
    next_segment_id: u64,
    clients: BTreeMap<ClientId, ClientRecord>,
    next_client_id: u64,
    default_limits: Limits,
    overrides: HashMap<String, Limits>,
    usage: HashMap<String, Usage>,
}

impl<M: Clone> Core<M> {
    /// An empty core whose next segment id is `next_segment_id` (ids are never
    /// reused across restarts, so the caller passes one past the highest ever).
    pub fn new(default_limits: Limits, next_segment_id: u64) -> Self {
        Core {
            segments: BTreeMap::new(),
            names: HashMap::new(),
            next_segment_id: next_segment_id.max(1),
            clients: BTreeMap::new(),
            next_client_id: 1,
            default_limits,
            overrides: HashMap::new(),
            usage: HashMap::new(),
        }
    }

    /// Checks a create request against validation, access and quota, and
    /// charges the quota for a reservation that is not yet visible.
    ///
    /// # Errors
    /// InvalidArgument, PermissionDenied, AlreadyExists or QuotaExceeded.
    pub fn reserve_segment(
        &mut self,
        caller: &Caller,
        spec: &SegmentSpec,
        now: SystemTime,
    ) -> Result<SegmentRecord, CoreError> {
        let tenant = match &spec.tenant {
            Some(tenant) => {
                validate_tenant(tenant)?;
                if *tenant != caller.tenant && !caller.admin {
                    return Err(CoreError::PermissionDenied(format!(
                        "tenant {} may not create segments for tenant {tenant}",
                        caller.tenant
                    )));
                }
                tenant.clone()
            }
            None => caller.tenant.clone(),
        };
        if spec.size_bytes == 0 {
            return Err(CoreError::InvalidArgument(
                "size_bytes must be positive".into(),
            ));
        }
        if let Lifetime::Ttl { ttl_ms: 0 } = spec.lifetime {
            return Err(CoreError::InvalidArgument(
                "ttl_ms must be positive for a ttl lifetime".into(),
            ));
        }
        if let Some(name) = &spec.name {
            validate_name(name)?;
            if self.names.contains_key(&(tenant.clone(), name.clone())) {
                return Err(CoreError::AlreadyExists(format!(
                    "segment {name:?} already exists in tenant {tenant}"
                )));
            }
        }
        let limits = self.limits(&tenant);
        let usage = self.usage.get(&tenant).copied().unwrap_or_default();
        let exceeded = |quota, limit, used, requested| CoreError::QuotaExceeded {
            tenant: tenant.clone(),
            quota,
            limit,
            used,
            requested,
        };
        if let Some(limit) = limits.max_segment_bytes
            && spec.size_bytes > limit
        {
            return Err(exceeded(
                QuotaKind::MaxSegmentBytes,
                limit,
                0,
                spec.size_bytes,
            ));
        }
        if let Some(limit) = limits.max_segments
            && usage.segments + 1 > limit
        {
            return Err(exceeded(QuotaKind::MaxSegments, limit, usage.segments, 1));
        }
        if let Some(limit) = limits.max_bytes
            && usage.bytes.saturating_add(spec.size_bytes) > limit
        {
            return Err(exceeded(
                QuotaKind::MaxBytes,
                limit,
                usage.bytes,
                spec.size_bytes,
            ));
        }

        let id = SegmentId(self.next_segment_id);
        self.next_segment_id += 1;
        let record = SegmentRecord {
            id,
            name: spec.name.clone(),
            tenant: tenant.clone(),
            size_bytes: spec.size_bytes,
            mode: spec.mode,
            lifetime: spec.lifetime,
            owner_pid: caller.pid,
            owner_uid: caller.uid,
            state: SegmentState::Creating,
            attachments: 0,
            created: now,
            attached: None,
        };
        if let Some(name) = &spec.name {
            self.names.insert((tenant.clone(), name.clone()), id);
        }
        let usage = self.usage.entry(tenant).or_default();
        usage.bytes += spec.size_bytes;
        usage.segments += 1;
        self.segments.insert(
            id,
            Entry {
                record: record.clone(),
                memory: None,
            },
        );
        Ok(record)
    }

    /// Makes a reserved segment visible with its memory. When `attach_to` is
    /// a client, the creator holds the first attachment.
    ///
    /// # Panics
    /// If `id` is not a reservation of this core (a bug in the caller).
    pub fn complete_segment(
        &mut self,
        id: SegmentId,
        memory: M,
        attach_to: Option<ClientId>,
        now: SystemTime,
    ) -> SegmentRecord {
        let entry = self
            .segments
            .get_mut(&id)
            .expect("complete_segment on an unknown reservation");
        assert_eq!(entry.record.state, SegmentState::Creating);
        entry.record.state = SegmentState::Active;
        entry.memory = Some(memory);
        if let Some(client) = attach_to.and_then(|c| self.clients.get_mut(&c)) {
            entry.record.attachments += 1;
            entry.record.attached = Some(now);
            *client.attachments.entry(id).or_default() += 1;
        }
        entry.record.clone()
    }

    /// Drops a reservation whose memory could not be allocated, returning its
    /// quota.
    pub fn abandon_segment(&mut self, id: SegmentId) {
        if let Some(entry) = self.segments.get(&id)
            && entry.record.state == SegmentState::Creating
        {
            self.remove(id);
        }
    }

    /// Grants `access` to a segment and records the attachment for `client`.
    /// Returns the record and the memory handle to grant from.
    ///
    /// # Errors
    /// NotFound (unknown, draining, or not visible to a non-admin of another
    /// tenant is PermissionDenied), InvalidArgument for a bad name.
    pub fn open_segment(
        &mut self,
        client: ClientId,
        target: &Target,
        access: Access,
        now: SystemTime,
    ) -> Result<(SegmentRecord, M), CoreError> {
        let caller = self
            .clients
            .get(&client)
            .map(|c| c.caller.clone())
            .ok_or_else(|| CoreError::FailedPrecondition("client is not registered".into()))?;
        let id = match target {
            Target::Id(id) => *id,
            Target::Name(name) => {
                validate_name(name)?;
                *self
                    .names
                    .get(&(caller.tenant.clone(), name.clone()))
                    .ok_or_else(|| {
                        CoreError::NotFound(format!(
                            "no segment named {name:?} in tenant {}",
                            caller.tenant
                        ))
                    })?
            }
        };
        let entry = self.visible_entry(&caller, id)?;
        if access == Access::ReadWrite
            && entry.record.mode == SharingMode::ReadOnlyForOthers
            && caller.uid != entry.record.owner_uid
            && !caller.admin
        {
            return Err(CoreError::PermissionDenied(format!(
                "{id} is read-only for users other than uid {}",
                entry.record.owner_uid
            )));
        }
        if entry.record.attachments >= MAX_ATTACHMENTS {
            return Err(CoreError::FailedPrecondition(format!(
                "{id} already has {MAX_ATTACHMENTS} attachments"
            )));
        }
        let entry = self.segments.get_mut(&id).expect("visible_entry found it");
        let memory = entry.memory.clone().expect("active segments have memory");
        entry.record.attachments += 1;
        entry.record.attached = Some(now);
        let client = self.clients.get_mut(&client).expect("checked above");
        *client.attachments.entry(id).or_default() += 1;
        Ok((entry.record.clone(), memory))
    }

    /// Releases one attachment of `client` to `id`. A draining segment whose
    /// last attachment goes is freed.
    ///
    /// # Errors
    /// NotFound when the client holds no attachment to `id`.
    pub fn detach_segment(
        &mut self,
        client: ClientId,
        id: SegmentId,
    ) -> Result<Option<Freed<M>>, CoreError> {
        let record = self
            .clients
            .get_mut(&client)
            .ok_or_else(|| CoreError::FailedPrecondition("client is not registered".into()))?;
        let held = record.attachments.get_mut(&id).ok_or_else(|| {
            CoreError::NotFound(format!("this client holds no attachment to {id}"))
        })?;
        *held -= 1;
        if *held == 0 {
            record.attachments.remove(&id);
        }
        Ok(self.release_attachments(id, 1))
    }

    /// Deletes a segment: freed now if unattached, else draining.
    ///
    /// # Errors
    /// NotFound or PermissionDenied.
    pub fn delete_segment(
        &mut self,
        caller: &Caller,
        id: SegmentId,
    ) -> Result<Deleted<M>, CoreError> {
        let entry = self.visible_entry(caller, id)?;
        if entry.record.attachments == 0 {
            return Ok(Deleted::Freed(self.remove(id)));
        }
        let entry = self.segments.get_mut(&id).expect("visible_entry found it");
        entry.record.state = SegmentState::Draining;
        let record = entry.record.clone();
        if let Some(name) = &record.name {
            self.names.remove(&(record.tenant.clone(), name.clone()));
        }
        Ok(Deleted::Draining(record))
    }

    /// A segment as `caller` may see it.
    ///
    /// # Errors
    /// NotFound or PermissionDenied.
    pub fn get_segment(&self, caller: &Caller, id: SegmentId) -> Result<SegmentRecord, CoreError> {
        self.visible_entry(caller, id).map(|e| e.record.clone())
    }

    /// Active and draining segments, in id order, from `after` on.
    pub fn segments_after(&self, after: SegmentId) -> impl Iterator<Item = &SegmentRecord> {
        self.segments
            .range(SegmentId(after.0.saturating_add(1))..)
            .map(|(_, e)| &e.record)
            .filter(|r| r.state != SegmentState::Creating)
    }

    /// Registers a connected client.
    pub fn register_client(&mut self, caller: Caller, now: SystemTime) -> ClientId {
        let id = ClientId(self.next_client_id);
        self.next_client_id += 1;
        self.clients.insert(
            id,
            ClientRecord {
                id,
                caller,
                connected: now,
                attachments: BTreeMap::new(),
            },
        );
        id
    }

    /// Forgets a client and releases every attachment it held; returns the
    /// segments this freed (draining ones whose last attachment it was).
    pub fn unregister_client(&mut self, client: ClientId) -> Vec<Freed<M>> {
        let Some(record) = self.clients.remove(&client) else {
            return Vec::new();
        };
        record
            .attachments
            .into_iter()
            .filter_map(|(id, count)| self.release_attachments(id, count))
            .collect()
    }

    /// Connected clients, in id order, from `after` on.
    pub fn clients_after(&self, after: ClientId) -> impl Iterator<Item = &ClientRecord> {
        self.clients
            .range(ClientId(after.0.saturating_add(1))..)
            .map(|(_, c)| c)
    }

    /// The effective limits of a tenant.
    pub fn limits(&self, tenant: &str) -> Limits {
        self.overrides
            .get(tenant)
            .copied()
            .unwrap_or(self.default_limits)
    }

    /// A tenant's quota and usage.
    ///
    /// # Errors
    /// PermissionDenied for another tenant's quota unless admin.
    pub fn quota(&self, caller: &Caller, tenant: &str) -> Result<QuotaView, CoreError> {
        validate_tenant(tenant)?;
        check_tenant_access(caller, tenant)?;
        Ok(self.quota_view(tenant))
    }

    /// Changes a tenant's override in one step: `update` gets the effective
    /// limits and returns the new override (`None` drops it). Admins only.
    /// Returns the new view and the override it replaced, for a rollback.
    ///
    /// # Errors
    /// PermissionDenied or InvalidArgument, or what `update` refuses.
    pub fn update_quota_override(
        &mut self,
        caller: &Caller,
        tenant: &str,
        update: impl FnOnce(Limits) -> Result<Option<Limits>, CoreError>,
    ) -> Result<(QuotaView, Option<Limits>, Option<Limits>), CoreError> {
        validate_tenant(tenant)?;
        if !caller.admin {
            return Err(CoreError::PermissionDenied(
                "only admins may change quotas".into(),
            ));
        }
        let updated = update(self.limits(tenant))?;
        let previous = self.overrides.get(tenant).copied();
        self.load_quota_override(tenant, updated);
        Ok((self.quota_view(tenant), updated, previous))
    }

    /// Puts `previous` back if the override is still `expected` (a later
    /// update wins over the rollback of an earlier one).
    pub fn restore_quota_override(
        &mut self,
        tenant: &str,
        expected: Option<Limits>,
        previous: Option<Limits>,
    ) {
        if self.overrides.get(tenant).copied() == expected {
            self.load_quota_override(tenant, previous);
        }
    }

    /// Restores an override from the store at start-up.
    pub fn load_quota_override(&mut self, tenant: &str, limits: Option<Limits>) {
        match limits {
            Some(limits) => self.overrides.insert(tenant.to_owned(), limits),
            None => self.overrides.remove(tenant),
        };
    }

    /// Every tenant with segments, clients or an override, in name order.
    pub fn tenants(&self) -> Vec<TenantView> {
        let mut names: Vec<&String> = self
            .usage
            .iter()
            .filter(|(_, u)| u.segments > 0)
            .map(|(t, _)| t)
            .chain(self.overrides.keys())
            .chain(self.clients.values().map(|c| &c.caller.tenant))
            .collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|tenant| self.tenant(tenant))
            .collect()
    }

    /// One tenant as [`Core::tenants`] shows it (known or not).
    pub fn tenant(&self, tenant: &str) -> TenantView {
        TenantView {
            quota: self.quota_view(tenant),
            clients: self
                .clients
                .values()
                .filter(|c| c.caller.tenant == tenant)
                .count() as u64,
        }
    }

    /// Live segments (active and draining), connected clients, and total bytes.
    pub fn totals(&self) -> (u64, u64, u64) {
        let (segments, bytes) = self
            .usage
            .values()
            .fold((0, 0), |(s, b), u| (s + u.segments, b + u.bytes));
        (segments, self.clients.len() as u64, bytes)
    }

    fn quota_view(&self, tenant: &str) -> QuotaView {
        QuotaView {
            tenant: tenant.to_owned(),
            limits: self.limits(tenant),
            usage: self.usage.get(tenant).copied().unwrap_or_default(),
            overridden: self.overrides.contains_key(tenant),
        }
    }

    fn visible_entry(&self, caller: &Caller, id: SegmentId) -> Result<&Entry<M>, CoreError> {
        let entry = self
            .segments
            .get(&id)
            .filter(|e| e.record.state == SegmentState::Active)
            .ok_or_else(|| CoreError::NotFound(format!("{id} not found")))?;
        check_tenant_access(caller, &entry.record.tenant)?;
        Ok(entry)
    }

    fn release_attachments(&mut self, id: SegmentId, count: u32) -> Option<Freed<M>> {
        let entry = self.segments.get_mut(&id)?;
        entry.record.attachments = entry.record.attachments.saturating_sub(count);
        (entry.record.state == SegmentState::Draining && entry.record.attachments == 0)
            .then(|| self.remove(id))
    }

    fn remove(&mut self, id: SegmentId) -> Freed<M> {
        let entry = self
            .segments
            .remove(&id)
            .expect("remove of a known segment");
        let record = entry.record;
        if let Some(name) = &record.name
            && self.names.get(&(record.tenant.clone(), name.clone())) == Some(&id)
        {
            self.names.remove(&(record.tenant.clone(), name.clone()));
        }
        if let Some(usage) = self.usage.get_mut(&record.tenant) {
            usage.bytes -= record.size_bytes;
            usage.segments -= 1;
        }
        Freed {
            record,
            memory: entry.memory,
        }
    }
}

/// Non-admins act only within their own tenant.
///
/// # Errors
/// PermissionDenied.
pub fn check_tenant_access(caller: &Caller, tenant: &str) -> Result<(), CoreError> {
    if caller.admin || caller.tenant == tenant {
        Ok(())
    } else {
        Err(CoreError::PermissionDenied(format!(
            "tenant {} may not access tenant {tenant}",
            caller.tenant
        )))
    }
}

fn validate_name(name: &str) -> Result<(), CoreError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(CoreError::InvalidArgument(format!(
            "segment name must be 1 to {MAX_NAME_LEN} bytes without control characters, got {name:?}"
        )));
    }
    Ok(())
}

/// Tenant names: 1 to 128 of `[A-Za-z0-9._-]`.
///
/// # Errors
/// InvalidArgument.
pub fn validate_tenant(tenant: &str) -> Result<(), CoreError> {
    let valid = !tenant.is_empty()
        && tenant.len() <= MAX_TENANT_LEN
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(CoreError::InvalidArgument(format!(
            "tenant must be 1 to {MAX_TENANT_LEN} characters of [A-Za-z0-9._-], got {tenant:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: SystemTime = SystemTime::UNIX_EPOCH;

    fn caller(uid: u32) -> Caller {
        Caller {
            pid: 100 + uid,
            uid,
            gid: uid,
            tenant: format!("uid-{uid}"),
            admin: false,
        }
    }

    fn admin() -> Caller {
        Caller {
            admin: true,
            ..caller(0)
        }
    }

    fn spec(name: Option<&str>, size_bytes: u64) -> SegmentSpec {
        SegmentSpec {
            name: name.map(str::to_owned),
            size_bytes,
            mode: SharingMode::ReadWrite,
            lifetime: Lifetime::Persistent,
            tenant: None,
        }
    }

    fn unlimited() -> Core<()> {
        Core::new(Limits::default(), 1)
    }

    /// Creates a segment and returns its id, with the creator attached when a
    /// client is given.
    fn create(
        sut: &mut Core<()>,
        who: &Caller,
        spec: &SegmentSpec,
        client: Option<ClientId>,
    ) -> SegmentId {
        let record = sut.reserve_segment(who, spec, NOW).unwrap();
        sut.complete_segment(record.id, (), client, NOW).id
    }

    #[test]
    fn create_charges_quota_and_becomes_visible_only_when_complete() {
        let mut sut = unlimited();
        let alice = caller(1000);
        let reserved = sut
            .reserve_segment(&alice, &spec(Some("a"), 4096), NOW)
            .unwrap();
        assert_eq!(sut.segments_after(SegmentId(0)).count(), 0);
        assert_eq!(
            sut.quota(&alice, "uid-1000").unwrap().usage,
            Usage {
                bytes: 4096,
                segments: 1
            }
        );
        sut.complete_segment(reserved.id, (), None, NOW);
        let listed: Vec<_> = sut.segments_after(SegmentId(0)).collect();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, SegmentState::Active);
        assert_eq!(listed[0].owner_pid, alice.pid);
        assert_eq!(listed[0].tenant, "uid-1000");
    }

    #[test]
    fn abandoned_reservation_returns_quota_and_name() {
        let mut sut = unlimited();
        let alice = caller(1000);
        let reserved = sut
            .reserve_segment(&alice, &spec(Some("a"), 4096), NOW)
            .unwrap();
        sut.abandon_segment(reserved.id);
        assert_eq!(
            sut.quota(&alice, "uid-1000").unwrap().usage,
            Usage::default()
        );
        assert!(
            sut.reserve_segment(&alice, &spec(Some("a"), 4096), NOW)
                .is_ok()
        );
    }

    #[test]
    fn ids_are_never_reused() {
        let mut sut: Core<()> = Core::new(Limits::default(), 41);
        let alice = caller(1000);
        let first = create(&mut sut, &alice, &spec(None, 1), None);
        sut.delete_segment(&alice, first).unwrap();
        let second = create(&mut sut, &alice, &spec(None, 1), None);
        assert_eq!((first, second), (SegmentId(41), SegmentId(42)));
    }

    #[test]
    fn create_rejects_zero_size_bad_names_and_zero_ttl() {
        let mut sut = unlimited();
        let alice = caller(1000);
        for bad in [
            spec(None, 0),
            spec(Some(""), 1),
            spec(Some("a\nb"), 1),
            spec(Some(&"x".repeat(MAX_NAME_LEN + 1)), 1),
            SegmentSpec {
                lifetime: Lifetime::Ttl { ttl_ms: 0 },
                ..spec(None, 1)
            },
        ] {
            assert!(
                matches!(
                    sut.reserve_segment(&alice, &bad, NOW),
                    Err(CoreError::InvalidArgument(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn names_are_unique_per_tenant_only() {
        let mut sut = unlimited();
        create(&mut sut, &caller(1000), &spec(Some("same"), 1), None);
        assert!(matches!(
            sut.reserve_segment(&caller(1000), &spec(Some("same"), 1), NOW),
            Err(CoreError::AlreadyExists(_))
        ));
        assert!(
            sut.reserve_segment(&caller(1001), &spec(Some("same"), 1), NOW)
                .is_ok()
        );
    }

    #[test]
    fn each_quota_is_enforced_and_named() {
        let limits = Limits {
            max_bytes: Some(10_000),
            max_segments: Some(2),
            max_segment_bytes: Some(6_000),
        };
        let mut sut: Core<()> = Core::new(limits, 1);
        let alice = caller(1000);
        let quota_of = |r: Result<SegmentRecord, CoreError>| match r {
            Err(CoreError::QuotaExceeded { quota, .. }) => quota,
            other => panic!("expected a quota error, got {other:?}"),
        };
        assert_eq!(
            quota_of(sut.reserve_segment(&alice, &spec(None, 6_001), NOW)),
            QuotaKind::MaxSegmentBytes
        );
        create(&mut sut, &alice, &spec(None, 6_000), None);
        assert_eq!(
            quota_of(sut.reserve_segment(&alice, &spec(None, 4_001), NOW)),
            QuotaKind::MaxBytes
        );
        create(&mut sut, &alice, &spec(None, 4_000), None);
        assert_eq!(
            quota_of(sut.reserve_segment(&alice, &spec(None, 1), NOW)),
            QuotaKind::MaxSegments
        );
        // Nothing was created by the refused requests.
        assert_eq!(
            sut.quota(&alice, "uid-1000").unwrap().usage,
            Usage {
                bytes: 10_000,
                segments: 2
            }
        );
        let message = sut
            .reserve_segment(&alice, &spec(None, 7_000), NOW)
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "quota exceeded: max_segment_bytes of tenant uid-1000 is 6000, 7000 requested"
        );
        // Another tenant has its own budget.
        assert!(
            sut.reserve_segment(&caller(1001), &spec(None, 6_000), NOW)
                .is_ok()
        );
    }

    #[test]
    fn overrides_replace_defaults_and_reset_restores_them() {
        let mut sut: Core<()> = Core::new(
            Limits {
                max_segments: Some(1),
                ..Limits::default()
            },
            1,
        );
        let alice = caller(1000);
        let raised = Limits {
            max_segments: Some(5),
            ..Limits::default()
        };
        assert!(matches!(
            sut.update_quota_override(&alice, "uid-1000", |_| Ok(Some(raised))),
            Err(CoreError::PermissionDenied(_))
        ));
        let (view, set, previous) = sut
            .update_quota_override(&admin(), "uid-1000", |_| Ok(Some(raised)))
            .unwrap();
        assert!(view.overridden);
        assert_eq!((set, previous), (Some(raised), None));
        assert_eq!(sut.limits("uid-1000"), raised);
        // A rollback applies only while the override is still what it set.
        sut.restore_quota_override("uid-1000", None, previous);
        assert_eq!(sut.limits("uid-1000"), raised);
        sut.restore_quota_override("uid-1000", set, previous);
        assert_eq!(sut.limits("uid-1000").max_segments, Some(1));
        sut.update_quota_override(&admin(), "uid-1000", |_| Ok(Some(raised)))
            .unwrap();
        sut.update_quota_override(&admin(), "uid-1000", |_| Ok(None))
            .unwrap();
        assert_eq!(sut.limits("uid-1000").max_segments, Some(1));
    }

    #[test]
    fn other_tenants_cannot_open_get_or_delete() {
        let mut sut = unlimited();
        let id = create(&mut sut, &caller(1000), &spec(Some("a"), 1), None);
        let mallory = caller(65534);
        let client = sut.register_client(mallory.clone(), NOW);
        assert!(matches!(
            sut.open_segment(client, &Target::Id(id), Access::Read, NOW),
            Err(CoreError::PermissionDenied(_))
        ));
        // By name, the other tenant's namespace is not even searched.
        assert!(matches!(
            sut.open_segment(client, &Target::Name("a".into()), Access::Read, NOW),
            Err(CoreError::NotFound(_))
        ));
        assert!(matches!(
            sut.get_segment(&mallory, id),
            Err(CoreError::PermissionDenied(_))
        ));
        assert!(matches!(
            sut.delete_segment(&mallory, id),
            Err(CoreError::PermissionDenied(_))
        ));
        assert!(sut.get_segment(&admin(), id).is_ok());
    }

    #[test]
    fn read_only_for_others_refuses_writers_of_other_uids() {
        let mut sut = unlimited();
        let owner = caller(1000);
        let id = create(
            &mut sut,
            &owner,
            &SegmentSpec {
                mode: SharingMode::ReadOnlyForOthers,
                ..spec(None, 1)
            },
            None,
        );
        // Same tenant, other uid (a tenant rule can group uids).
        let peer = Caller {
            uid: 1001,
            ..owner.clone()
        };
        let client = sut.register_client(peer, NOW);
        assert!(matches!(
            sut.open_segment(client, &Target::Id(id), Access::ReadWrite, NOW),
            Err(CoreError::PermissionDenied(_))
        ));
        assert!(
            sut.open_segment(client, &Target::Id(id), Access::Read, NOW)
                .is_ok()
        );
        let owner_client = sut.register_client(owner, NOW);
        assert!(
            sut.open_segment(owner_client, &Target::Id(id), Access::ReadWrite, NOW)
                .is_ok()
        );
    }

    #[test]
    fn attachments_follow_open_detach_and_disconnect() {
        let mut sut = unlimited();
        let alice = caller(1000);
        let creator = sut.register_client(alice.clone(), NOW);
        let id = create(&mut sut, &alice, &spec(Some("a"), 1), Some(creator));
        let reader = sut.register_client(alice.clone(), NOW);
        sut.open_segment(reader, &Target::Name("a".into()), Access::Read, NOW)
            .unwrap();
        sut.open_segment(reader, &Target::Id(id), Access::Read, NOW)
            .unwrap();
        assert_eq!(sut.get_segment(&alice, id).unwrap().attachments, 3);
        assert_eq!(
            sut.clients_after(ClientId(0))
                .map(|c| c.attachment_count())
                .sum::<u32>(),
            3
        );
        sut.detach_segment(creator, id).unwrap();
        assert!(matches!(
            sut.detach_segment(creator, id),
            Err(CoreError::NotFound(_))
        ));
        assert!(sut.unregister_client(reader).is_empty());
        assert_eq!(sut.get_segment(&alice, id).unwrap().attachments, 0);
    }

    #[test]
    fn deleting_an_attached_segment_drains_until_the_last_detach() {
        let mut sut = unlimited();
        let alice = caller(1000);
        let client = sut.register_client(alice.clone(), NOW);
        let id = create(&mut sut, &alice, &spec(Some("a"), 4096), Some(client));
        assert!(matches!(
            sut.delete_segment(&alice, id),
            Ok(Deleted::Draining(_))
        ));
        // Invisible to opens and gets, still charged, name free for reuse.
        assert!(matches!(
            sut.get_segment(&alice, id),
            Err(CoreError::NotFound(_))
        ));
        assert_eq!(sut.quota(&alice, "uid-1000").unwrap().usage.bytes, 4096);
        assert!(
            sut.reserve_segment(&alice, &spec(Some("a"), 1), NOW)
                .is_ok()
        );
        let freed = sut.unregister_client(client);
        assert_eq!(freed.len(), 1);
        assert_eq!(freed[0].record.id, id);
        assert_eq!(
            sut.quota(&alice, "uid-1000").unwrap().usage,
            Usage {
                bytes: 1,
                segments: 1
            }
        );
    }

    #[test]
    fn tenants_lists_every_known_tenant_once() {
        let mut sut = unlimited();
        create(&mut sut, &caller(1000), &spec(None, 10), None);
        create(&mut sut, &caller(1000), &spec(None, 10), None);
        sut.register_client(caller(1000), NOW);
        sut.register_client(caller(1001), NOW);
        sut.update_quota_override(&admin(), "payments", |_| Ok(Some(Limits::default())))
            .unwrap();
        let tenants: Vec<_> = sut
            .tenants()
            .into_iter()
            .map(|t| (t.quota.tenant, t.clients))
            .collect();
        assert_eq!(
            tenants,
            [
                ("payments".into(), 0),
                ("uid-1000".into(), 1),
                ("uid-1001".into(), 1)
            ]
        );
        assert_eq!(sut.totals(), (2, 2, 20));
    }

    #[test]
    fn non_admins_cannot_create_for_other_tenants() {
        let mut sut = unlimited();
        let other = SegmentSpec {
            tenant: Some("uid-1".into()),
            ..spec(None, 1)
        };
        assert!(matches!(
            sut.reserve_segment(&caller(1000), &other, NOW),
            Err(CoreError::PermissionDenied(_))
        ));
        assert_eq!(
            sut.reserve_segment(&admin(), &other, NOW).unwrap().tenant,
            "uid-1"
        );
        let bad = SegmentSpec {
            tenant: Some("no spaces".into()),
            ..spec(None, 1)
        };
        assert!(matches!(
            sut.reserve_segment(&admin(), &bad, NOW),
            Err(CoreError::InvalidArgument(_))
        ));
    }
}
