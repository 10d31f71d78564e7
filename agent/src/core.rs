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

use ipcplane_shm::ring::RingLayout;

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

/// Agent-assigned id of a client process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub u64);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "clients/{}", self.0)
    }
}

/// Who besides the creator may write a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharingMode {
    ReadWrite,
    ReadOnlyForOthers,
}

/// When the agent deletes a segment on its own.
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

impl SharingMode {
    /// Reads [`SharingMode::as_str`] back; anything else is read-write.
    pub fn parse(text: &str) -> SharingMode {
        if text == SharingMode::ReadOnlyForOthers.as_str() {
            SharingMode::ReadOnlyForOthers
        } else {
            SharingMode::ReadWrite
        }
    }
}

impl Lifetime {
    /// Reads [`Lifetime::as_str`] back; anything else is persistent.
    pub fn parse(text: &str, ttl_ms: u64) -> Lifetime {
        match text {
            "on_last_detach" => Lifetime::OnLastDetach,
            "owner" => Lifetime::Owner,
            "ttl" => Lifetime::Ttl { ttl_ms },
            _ => Lifetime::Persistent,
        }
    }

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
    /// Known from before an agent restart, waiting for a holder to present
    /// it again: charged and listed, but not openable until then.
    Unclaimed,
}

/// What a segment holds: its kind and the kind's parameters, which fix its
/// size and the header the agent writes into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Bytes only, no header.
    Plain,
    /// A message ring: `producers` lanes of `capacity_bytes` each.
    Ring {
        capacity_bytes: u64,
        max_message_bytes: u64,
        producers: u32,
    },
    /// A counting semaphore.
    Semaphore { initial_value: u32 },
    /// A notify-one / notify-all event.
    Event,
}

impl Layout {
    /// The stored and audited spelling of the kind.
    pub fn kind_str(self) -> &'static str {
        match self {
            Layout::Plain => "plain",
            Layout::Ring { .. } => "ring",
            Layout::Semaphore { .. } => "semaphore",
            Layout::Event => "event",
        }
    }

    /// The ring's validated layout, for a ring.
    ///
    /// # Errors
    /// InvalidArgument with the reason the ring's parameters are invalid.
    pub fn ring_layout(self) -> Result<Option<RingLayout>, CoreError> {
        let Layout::Ring {
            capacity_bytes,
            max_message_bytes,
            producers,
        } = self
        else {
            return Ok(None);
        };
        let invalid = |error: ipcplane_shm::ring::LayoutError| {
            CoreError::InvalidArgument(format!("invalid ring: {error}"))
        };
        let too_big = || {
            invalid(ipcplane_shm::ring::LayoutError::Capacity {
                capacity: capacity_bytes,
            })
        };
        let capacity = usize::try_from(capacity_bytes).map_err(|_| too_big())?;
        // A max message size above usize is too large for any capacity.
        let max_message = usize::try_from(max_message_bytes).unwrap_or(usize::MAX);
        let lanes = usize::try_from(producers).unwrap_or(usize::MAX);
        RingLayout::new(capacity, max_message, lanes)
            .map(Some)
            .map_err(invalid)
    }

    /// Fills in the defaults a create request may leave at 0: a ring's
    /// largest message (the most its capacity allows) and producers (1).
    #[must_use]
    pub fn with_defaults(self) -> Layout {
        match self {
            Layout::Ring {
                capacity_bytes,
                max_message_bytes,
                producers,
            } => Layout::Ring {
                capacity_bytes,
                max_message_bytes: match max_message_bytes {
                    0 => usize::try_from(capacity_bytes)
                        .ok()
                        .and_then(RingLayout::max_message_for)
                        .map_or(0, |max| max as u64),
                    given => given,
                },
                producers: producers.max(1),
            },
            other => other,
        }
    }

    /// The size a segment of this layout takes, `None` for a plain segment
    /// (whose size the caller chooses).
    ///
    /// # Errors
    /// InvalidArgument for invalid ring parameters.
    pub fn size_bytes(self) -> Result<Option<u64>, CoreError> {
        Ok(match self {
            Layout::Plain => None,
            Layout::Ring { .. } => self.ring_layout()?.map(|ring| ring.region_bytes() as u64),
            Layout::Semaphore { .. } => Some(ipcplane_shm::semaphore::HEADER_SIZE as u64),
            Layout::Event => Some(ipcplane_shm::event::HEADER_SIZE as u64),
        })
    }
}

impl fmt::Display for Layout {
    /// The audited form: `kind=ring capacity_bytes=4096 ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kind={}", self.kind_str())?;
        match self {
            Layout::Ring {
                capacity_bytes,
                max_message_bytes,
                producers,
            } => write!(
                f,
                " capacity_bytes={capacity_bytes} max_message_bytes={max_message_bytes} producers={producers}"
            ),
            Layout::Semaphore { initial_value } => write!(f, " initial_value={initial_value}"),
            Layout::Plain | Layout::Event => Ok(()),
        }
    }
}

/// What a caller asks for when creating a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSpec {
    pub name: Option<String>,
    /// For a plain segment, its size; for other layouts, 0 or exactly the
    /// size the layout takes.
    pub size_bytes: u64,
    pub mode: SharingMode,
    pub lifetime: Lifetime,
    /// Tenant to charge; `None` for the caller's own.
    pub tenant: Option<String>,
    pub layout: Layout,
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
    /// What it holds, with the defaults filled in.
    pub layout: Layout,
    pub owner_pid: u32,
    pub owner_uid: u32,
    pub state: SegmentState,
    pub attachments: u32,
    pub created: SystemTime,
    pub attached: Option<SystemTime>,
    /// The client process that created it (none for gRPC pre-provisioning).
    pub owner_client: Option<ClientId>,
    /// Since when nobody holds it (for `ttl`); `None` while attached.
    pub unattached_since: Option<SystemTime>,
    /// When its creating process exited; a pre-provisioned segment has no
    /// owning process, so this is its creation time.
    pub owner_exited: Option<SystemTime>,
    /// The secret a holder presents to re-attach it after an agent restart.
    pub token: Token,
    /// Which memfd it is, to recognise it when a holder presents it again.
    pub memory: MemoryIdentity,
}

/// What a holder presents to re-attach a segment: the token, and what the
/// agent found out about the fd it sent.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    pub token: &'a [u8],
    pub identity: MemoryIdentity,
    pub size_bytes: u64,
    /// Whether a doorbell came with it (only a ring has one).
    pub doorbell: bool,
}

/// A segment's re-attachment secret.
pub type Token = [u8; 16];

/// The device and inode of a segment's memfd: the same file whatever fd or
/// process it is seen through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryIdentity {
    pub dev: u64,
    pub ino: u64,
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

/// A process known from the grant socket: it holds attachments from its
/// first connection until it exits, whether or not it stays connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    pub id: ClientId,
    pub caller: Caller,
    pub process: ProcessIdentity,
    pub connected: SystemTime,
    /// Open grant connections of the process.
    pub connections: u32,
    /// Attachment count per segment.
    pub attachments: BTreeMap<SegmentId, u32>,
}

/// One process for as long as it lives: a pid alone can be reused, its start
/// time (in clock ticks since boot) makes it unique.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessIdentity {
    pub pid: u32,
    pub start_time: u64,
    /// Its token in rings' role words (`ipcplane_shm::ring::owner_token`),
    /// to free the roles it still holds when it exits; `None` where its pid
    /// namespace could not be read.
    pub ring_owner: Option<u64>,
}

/// Why the agent ended a segment's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Deleted with no attachment, or the last attachment of a draining one went.
    Deleted,
    /// `on_last_detach`: its last attachment went.
    LastDetach,
    /// `owner`: its creating process exited.
    OwnerExited,
    /// `ttl`: unattached for longer than its ttl.
    TtlExpired,
    /// An orphan removed by a purge.
    Purged,
    /// Nobody presented it again within the grace after an agent restart.
    Lost,
}

impl EndReason {
    /// The audited wording.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Deleted => "deleted and released",
            EndReason::LastDetach => "on_last_detach: last attachment released",
            EndReason::OwnerExited => "owner: creating process exited",
            EndReason::TtlExpired => "ttl: unattached for longer than its ttl",
            EndReason::Purged => "purged as an orphan",
            EndReason::Lost => "lost: nobody presented it again after the agent restarted",
        }
    }
}

/// What a process exit changed.
#[derive(Debug)]
pub struct Exit<M> {
    pub client: ClientRecord,
    /// The rings the client had attached, whose roles it may still hold.
    pub rings: Vec<(SegmentId, M)>,
    /// Segments whose memory is now unreferenced.
    pub freed: Vec<Freed<M>>,
    /// `owner` segments still attached by others: now draining.
    pub draining: Vec<SegmentRecord>,
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
    pub reason: EndReason,
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
    processes: HashMap<ProcessIdentity, ClientId>,
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
            processes: HashMap::new(),
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
        owner: Option<ClientId>,
        now: SystemTime,
    ) -> Result<SegmentRecord, CoreError> {
        if spec.lifetime == Lifetime::Owner && owner.is_none() {
            return Err(CoreError::InvalidArgument(
                "an owner lifetime needs an owning process: create it through the grant socket"
                    .into(),
            ));
        }
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
        let layout = spec.layout.with_defaults();
        let size_bytes = match layout.size_bytes()? {
            None if spec.size_bytes == 0 => {
                return Err(CoreError::InvalidArgument(
                    "size_bytes must be positive".into(),
                ));
            }
            None => spec.size_bytes,
            Some(size) if spec.size_bytes == 0 || spec.size_bytes == size => size,
            Some(size) => {
                return Err(CoreError::InvalidArgument(format!(
                    "a {} takes {size} bytes: leave size_bytes 0 or give exactly that, not {}",
                    layout.kind_str(),
                    spec.size_bytes
                )));
            }
        };
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
            && size_bytes > limit
        {
            return Err(exceeded(QuotaKind::MaxSegmentBytes, limit, 0, size_bytes));
        }
        if let Some(limit) = limits.max_segments
            && usage.segments + 1 > limit
        {
            return Err(exceeded(QuotaKind::MaxSegments, limit, usage.segments, 1));
        }
        if let Some(limit) = limits.max_bytes
            && usage.bytes.saturating_add(size_bytes) > limit
        {
            return Err(exceeded(
                QuotaKind::MaxBytes,
                limit,
                usage.bytes,
                size_bytes,
            ));
        }

        let id = SegmentId(self.next_segment_id);
        self.next_segment_id += 1;
        let record = SegmentRecord {
            id,
            name: spec.name.clone(),
            tenant: tenant.clone(),
            size_bytes,
            mode: spec.mode,
            lifetime: spec.lifetime,
            layout,
            owner_pid: caller.pid,
            owner_uid: caller.uid,
            state: SegmentState::Creating,
            attachments: 0,
            created: now,
            attached: None,
            owner_client: owner,
            unattached_since: Some(now),
            owner_exited: owner.is_none().then_some(now),
            token: Token::default(),
            memory: MemoryIdentity::default(),
        };
        if let Some(name) = &spec.name {
            self.names.insert((tenant.clone(), name.clone()), id);
        }
        let usage = self.usage.entry(tenant).or_default();
        usage.bytes += size_bytes;
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

    /// Makes a reserved segment visible with its memory; its owning client,
    /// if any, holds the first attachment.
    ///
    /// # Panics
    /// If `id` is not a reservation of this core (a bug in the caller).
    pub fn complete_segment(
        &mut self,
        id: SegmentId,
        memory: M,
        identity: MemoryIdentity,
        token: Token,
        now: SystemTime,
    ) -> SegmentRecord {
        let entry = self
            .segments
            .get_mut(&id)
            .expect("complete_segment on an unknown reservation");
        assert_eq!(entry.record.state, SegmentState::Creating);
        entry.record.state = SegmentState::Active;
        entry.record.memory = identity;
        entry.record.token = token;
        entry.memory = Some(memory);
        if let Some(client) = entry.record.owner_client {
            self.attach(client, id, now);
        }
        self.segments[&id].record.clone()
    }

    /// Drops a reservation whose memory could not be allocated, returning its
    /// quota.
    pub fn abandon_segment(&mut self, id: SegmentId) {
        if let Some(entry) = self.segments.get(&id)
            && entry.record.state == SegmentState::Creating
        {
            self.remove(id, EndReason::Deleted);
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
        self.attach(client, id, now);
        let entry = &self.segments[&id];
        let memory = entry.memory.clone().expect("active segments have memory");
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
        now: SystemTime,
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
        Ok(self.release_attachments(id, 1, now))
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
            return Ok(Deleted::Freed(self.remove(id, EndReason::Deleted)));
        }
        Ok(Deleted::Draining(self.start_draining(id)))
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

    /// Registers a grant connection of a process. Returns the process's
    /// client id and whether the process is new (and must be watched).
    pub fn register_client(
        &mut self,
        caller: Caller,
        process: ProcessIdentity,
        now: SystemTime,
    ) -> (ClientId, bool) {
        if let Some(&id) = self.processes.get(&process) {
            let record = self.clients.get_mut(&id).expect("processes index clients");
            record.connections += 1;
            return (id, false);
        }
        let id = ClientId(self.next_client_id);
        self.next_client_id += 1;
        self.processes.insert(process, id);
        self.clients.insert(
            id,
            ClientRecord {
                id,
                caller,
                process,
                connected: now,
                connections: 1,
                attachments: BTreeMap::new(),
            },
        );
        (id, true)
    }

    /// A grant connection closed. The process keeps its attachments: it may
    /// still have the segments mapped. They go when the process exits.
    pub fn disconnect_client(&mut self, client: ClientId) {
        if let Some(record) = self.clients.get_mut(&client) {
            record.connections = record.connections.saturating_sub(1);
        }
    }

    /// A client process exited (however: exit, signal, or a zombie not yet
    /// reaped): releases its attachments and ends its `owner` segments.
    pub fn process_exited(&mut self, client: ClientId, now: SystemTime) -> Option<Exit<M>> {
        let record = self.clients.remove(&client)?;
        self.processes.remove(&record.process);
        let rings = record
            .attachments
            .keys()
            .filter(|id| {
                self.segments
                    .get(id)
                    .is_some_and(|e| matches!(e.record.layout, Layout::Ring { .. }))
            })
            .filter_map(|&id| Some((id, self.memory_of(id)?)))
            .collect();
        let mut freed: Vec<Freed<M>> = record
            .attachments
            .iter()
            .filter_map(|(&id, &count)| self.release_attachments(id, count, now))
            .collect();
        let mut owned = Vec::new();
        for entry in self
            .segments
            .values_mut()
            .filter(|e| e.record.owner_client == Some(client))
        {
            entry.record.owner_exited = Some(now);
            if entry.record.lifetime == Lifetime::Owner
                && entry.record.state == SegmentState::Active
            {
                owned.push(entry.record.id);
            }
        }
        let mut draining = Vec::new();
        for id in owned {
            if self.segments[&id].record.attachments == 0 {
                freed.push(self.remove(id, EndReason::OwnerExited));
            } else {
                draining.push(self.start_draining(id));
            }
        }
        Some(Exit {
            client: record,
            rings,
            freed,
            draining,
        })
    }

    /// Restores a segment known from before a restart, unclaimed until a
    /// holder presents it again (its memory lives only in those holders).
    pub fn restore_segment(&mut self, mut record: SegmentRecord, now: SystemTime) {
        record.state = SegmentState::Unclaimed;
        record.attachments = 0;
        record.owner_client = None;
        record.unattached_since = Some(now);
        if let Some(name) = &record.name {
            self.names
                .insert((record.tenant.clone(), name.clone()), record.id);
        }
        let usage = self.usage.entry(record.tenant.clone()).or_default();
        usage.bytes += record.size_bytes;
        usage.segments += 1;
        self.next_segment_id = self.next_segment_id.max(record.id.0 + 1);
        self.segments.insert(
            record.id,
            Entry {
                record,
                memory: None,
            },
        );
    }

    /// A holder presents segment `id` again with `token`, through a memfd
    /// whose identity the caller established. An unclaimed segment adopts
    /// `memory` (the agent's own read-write handle); an active one only gains
    /// the attachment. The owner's pid taking it back becomes its owner again.
    ///
    /// # Errors
    /// NotFound, PermissionDenied (tenant, token, a different memfd).
    pub fn reattach_segment(
        &mut self,
        client: ClientId,
        id: SegmentId,
        presented: &Presented<'_>,
        memory: impl FnOnce() -> Option<M>,
        now: SystemTime,
    ) -> Result<SegmentRecord, CoreError> {
        let caller = self
            .clients
            .get(&client)
            .map(|c| c.caller.clone())
            .ok_or_else(|| CoreError::FailedPrecondition("client is not registered".into()))?;
        let entry = self
            .segments
            .get(&id)
            .filter(|e| {
                matches!(
                    e.record.state,
                    SegmentState::Active | SegmentState::Unclaimed
                )
            })
            .ok_or_else(|| CoreError::NotFound(format!("{id} not found")))?;
        check_tenant_access(&caller, &entry.record.tenant)?;
        if presented.doorbell && !matches!(entry.record.layout, Layout::Ring { .. }) {
            return Err(CoreError::InvalidArgument(format!(
                "{id} is a {} segment: only a ring's doorbell is presented with it",
                entry.record.layout.kind_str()
            )));
        }
        if !same_token(&entry.record.token, presented.token)
            || entry.record.memory != presented.identity
            || entry.record.size_bytes != presented.size_bytes
        {
            return Err(CoreError::PermissionDenied(format!(
                "{id}: the token or the file presented is not this segment's"
            )));
        }
        if entry.record.state == SegmentState::Unclaimed {
            let memory = memory().ok_or_else(|| {
                CoreError::FailedPrecondition(format!(
                    "{id}: cannot take the presented memory back"
                ))
            })?;
            let entry = self.segments.get_mut(&id).expect("checked above");
            entry.memory = Some(memory);
            entry.record.state = SegmentState::Active;
            if entry.record.owner_pid == caller.pid && entry.record.owner_exited.is_none() {
                entry.record.owner_client = Some(client);
            }
        }
        self.attach(client, id, now);
        Ok(self.segments[&id].record.clone())
    }

    /// The memory handle of a live segment.
    pub fn memory_of(&self, id: SegmentId) -> Option<M> {
        self.segments.get(&id).and_then(|e| e.memory.clone())
    }

    /// The memory handle of a live segment, to change in place (the agent
    /// adds a ring's doorbell to it).
    pub fn memory_mut(&mut self, id: SegmentId) -> Option<&mut M> {
        self.segments.get_mut(&id).and_then(|e| e.memory.as_mut())
    }

    /// Adopts a segment's memfd that the service manager kept in its fd
    /// store across the restart: an unclaimed segment becomes active with
    /// no holder, if the memfd is its very file, unchanged in size.
    ///
    /// # Errors
    /// NotFound (not an unclaimed segment), PermissionDenied (another file).
    pub fn adopt_stored(
        &mut self,
        id: SegmentId,
        identity: MemoryIdentity,
        size_bytes: u64,
        memory: M,
    ) -> Result<SegmentRecord, CoreError> {
        let entry = self
            .segments
            .get_mut(&id)
            .filter(|e| e.record.state == SegmentState::Unclaimed)
            .ok_or_else(|| CoreError::NotFound(format!("{id} is not waiting to be adopted")))?;
        if entry.record.memory != identity || entry.record.size_bytes != size_bytes {
            return Err(CoreError::PermissionDenied(format!(
                "the stored file is not {id}'s"
            )));
        }
        entry.memory = Some(memory);
        entry.record.state = SegmentState::Active;
        Ok(entry.record.clone())
    }

    /// Ends every segment still unclaimed: nobody presented it in time.
    pub fn lose_unclaimed(&mut self) -> Vec<Freed<M>> {
        let lost: Vec<SegmentId> = self
            .segments
            .values()
            .filter(|e| e.record.state == SegmentState::Unclaimed)
            .map(|e| e.record.id)
            .collect();
        lost.into_iter()
            .map(|id| self.remove(id, EndReason::Lost))
            .collect()
    }

    /// Orphans visible to `caller`: active segments whose owner has exited and
    /// that nobody has attached for longer than their tenant's `grace`.
    pub fn orphans(
        &self,
        caller: &Caller,
        now: SystemTime,
        grace: impl Fn(&str) -> std::time::Duration,
    ) -> Vec<SegmentRecord> {
        let idle_for = |since: Option<SystemTime>| since.and_then(|t| now.duration_since(t).ok());
        self.segments
            .values()
            .map(|e| &e.record)
            .filter(|r| r.state == SegmentState::Active && r.attachments == 0)
            .filter(|r| check_tenant_access(caller, &r.tenant).is_ok())
            .filter(|r| {
                let grace = grace(&r.tenant);
                idle_for(r.owner_exited).is_some_and(|idle| idle >= grace)
                    && idle_for(r.unattached_since).is_some_and(|idle| idle >= grace)
            })
            .cloned()
            .collect()
    }

    /// Removes an orphan listed by [`Core::orphans`], if it still is one
    /// (nobody attached it since).
    pub fn purge(&mut self, id: SegmentId) -> Option<Freed<M>> {
        let entry = self.segments.get(&id)?;
        (entry.record.state == SegmentState::Active && entry.record.attachments == 0)
            .then(|| self.remove(id, EndReason::Purged))
    }

    /// Frees every `ttl` segment unattached for longer than its ttl.
    pub fn expire_ttl(&mut self, now: SystemTime) -> Vec<Freed<M>> {
        let expired: Vec<SegmentId> = self
            .segments
            .values()
            .filter(|e| e.record.state == SegmentState::Active)
            .filter_map(|e| match (e.record.lifetime, e.record.unattached_since) {
                (Lifetime::Ttl { ttl_ms }, Some(since)) => now
                    .duration_since(since)
                    .is_ok_and(|idle| idle >= std::time::Duration::from_millis(ttl_ms))
                    .then_some(e.record.id),
                _ => None,
            })
            .collect();
        expired
            .into_iter()
            .map(|id| self.remove(id, EndReason::TtlExpired))
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

    /// Records one more attachment of `client` to `id`.
    fn attach(&mut self, client: ClientId, id: SegmentId, now: SystemTime) {
        let Some(holder) = self.clients.get_mut(&client) else {
            return;
        };
        *holder.attachments.entry(id).or_default() += 1;
        let record = &mut self
            .segments
            .get_mut(&id)
            .expect("attach to a known segment")
            .record;
        record.attachments += 1;
        record.attached = Some(now);
        record.unattached_since = None;
    }

    /// Drops `count` attachments; the last one frees a draining or
    /// `on_last_detach` segment and starts a `ttl` segment's clock.
    fn release_attachments(
        &mut self,
        id: SegmentId,
        count: u32,
        now: SystemTime,
    ) -> Option<Freed<M>> {
        let record = &mut self.segments.get_mut(&id)?.record;
        record.attachments = record.attachments.saturating_sub(count);
        if record.attachments > 0 {
            return None;
        }
        record.unattached_since = Some(now);
        match (record.state, record.lifetime) {
            (SegmentState::Draining, _) => Some(self.remove(id, EndReason::Deleted)),
            (SegmentState::Active, Lifetime::OnLastDetach) => {
                Some(self.remove(id, EndReason::LastDetach))
            }
            _ => None,
        }
    }

    /// Deleted while attached: invisible to opens and its name free, still
    /// charged until the last attachment goes.
    fn start_draining(&mut self, id: SegmentId) -> SegmentRecord {
        let record = &mut self
            .segments
            .get_mut(&id)
            .expect("draining a known segment")
            .record;
        record.state = SegmentState::Draining;
        let record = record.clone();
        if let Some(name) = &record.name
            && self.names.get(&(record.tenant.clone(), name.clone())) == Some(&id)
        {
            self.names.remove(&(record.tenant.clone(), name.clone()));
        }
        record
    }

    fn remove(&mut self, id: SegmentId, reason: EndReason) -> Freed<M> {
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
            reason,
        }
    }
}

/// Compares tokens in time independent of where they differ.
fn same_token(expected: &Token, presented: &[u8]) -> bool {
    presented.len() == expected.len()
        && expected
            .iter()
            .zip(presented)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
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
            layout: Layout::Plain,
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
        let record = sut.reserve_segment(who, spec, client, NOW).unwrap();
        sut.complete_segment(
            record.id,
            (),
            MemoryIdentity {
                dev: 1,
                ino: record.id.0,
            },
            [record.id.0 as u8; 16],
            NOW,
        )
        .id
    }

    /// Registers a connection of a new process of `who`.
    fn connect(sut: &mut Core<()>, who: Caller) -> ClientId {
        let start_time = sut.next_client_id;
        let process = ProcessIdentity {
            pid: who.pid,
            start_time,
            ring_owner: None,
        };
        let (client, new) = sut.register_client(who, process, NOW);
        assert!(new);
        client
    }

    fn at_ms(ms: u64) -> SystemTime {
        NOW + std::time::Duration::from_millis(ms)
    }

    #[test]
    fn create_charges_quota_and_becomes_visible_only_when_complete() {
        let mut sut = unlimited();
        let alice = caller(1000);
        let reserved = sut
            .reserve_segment(&alice, &spec(Some("a"), 4096), None, NOW)
            .unwrap();
        assert_eq!(sut.segments_after(SegmentId(0)).count(), 0);
        assert_eq!(
            sut.quota(&alice, "uid-1000").unwrap().usage,
            Usage {
                bytes: 4096,
                segments: 1
            }
        );
        sut.complete_segment(
            reserved.id,
            (),
            MemoryIdentity::default(),
            Token::default(),
            NOW,
        );
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
            .reserve_segment(&alice, &spec(Some("a"), 4096), None, NOW)
            .unwrap();
        sut.abandon_segment(reserved.id);
        assert_eq!(
            sut.quota(&alice, "uid-1000").unwrap().usage,
            Usage::default()
        );
        assert!(
            sut.reserve_segment(&alice, &spec(Some("a"), 4096), None, NOW)
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
                    sut.reserve_segment(&alice, &bad, None, NOW),
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
            sut.reserve_segment(&caller(1000), &spec(Some("same"), 1), None, NOW),
            Err(CoreError::AlreadyExists(_))
        ));
        assert!(
            sut.reserve_segment(&caller(1001), &spec(Some("same"), 1), None, NOW)
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
            quota_of(sut.reserve_segment(&alice, &spec(None, 6_001), None, NOW)),
            QuotaKind::MaxSegmentBytes
        );
        create(&mut sut, &alice, &spec(None, 6_000), None);
        assert_eq!(
            quota_of(sut.reserve_segment(&alice, &spec(None, 4_001), None, NOW)),
            QuotaKind::MaxBytes
        );
        create(&mut sut, &alice, &spec(None, 4_000), None);
        assert_eq!(
            quota_of(sut.reserve_segment(&alice, &spec(None, 1), None, NOW)),
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
            .reserve_segment(&alice, &spec(None, 7_000), None, NOW)
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "quota exceeded: max_segment_bytes of tenant uid-1000 is 6000, 7000 requested"
        );
        // Another tenant has its own budget.
        assert!(
            sut.reserve_segment(&caller(1001), &spec(None, 6_000), None, NOW)
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
        let client = connect(&mut sut, mallory.clone());
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
        let client = connect(&mut sut, peer);
        assert!(matches!(
            sut.open_segment(client, &Target::Id(id), Access::ReadWrite, NOW),
            Err(CoreError::PermissionDenied(_))
        ));
        assert!(
            sut.open_segment(client, &Target::Id(id), Access::Read, NOW)
                .is_ok()
        );
        let owner_client = connect(&mut sut, owner);
        assert!(
            sut.open_segment(owner_client, &Target::Id(id), Access::ReadWrite, NOW)
                .is_ok()
        );
    }

    #[test]
    fn attachments_follow_open_detach_and_disconnect() {
        let mut sut = unlimited();
        let alice = caller(1000);
        let creator = connect(&mut sut, alice.clone());
        let id = create(&mut sut, &alice, &spec(Some("a"), 1), Some(creator));
        let reader = connect(&mut sut, alice.clone());
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
        sut.detach_segment(creator, id, NOW).unwrap();
        assert!(matches!(
            sut.detach_segment(creator, id, NOW),
            Err(CoreError::NotFound(_))
        ));
        // A closed connection keeps the process's attachments...
        sut.disconnect_client(reader);
        assert_eq!(sut.get_segment(&alice, id).unwrap().attachments, 2);
        // ...until the process exits.
        let exit = sut.process_exited(reader, NOW).unwrap();
        assert!(exit.freed.is_empty() && exit.draining.is_empty());
        assert_eq!(sut.get_segment(&alice, id).unwrap().attachments, 0);
        assert!(sut.process_exited(reader, NOW).is_none());
    }

    #[test]
    fn a_second_connection_of_the_same_process_is_the_same_client() {
        let mut sut = unlimited();
        let process = ProcessIdentity {
            pid: 7,
            start_time: 1,
            ring_owner: None,
        };
        let (first, new) = sut.register_client(caller(1000), process, NOW);
        let (second, again) = sut.register_client(caller(1000), process, NOW);
        assert_eq!((first, new, again), (second, true, false));
        let reused_pid = ProcessIdentity {
            pid: 7,
            start_time: 2,
            ring_owner: None,
        };
        assert_ne!(sut.register_client(caller(1000), reused_pid, NOW).0, first);
    }

    #[test]
    fn an_owner_segment_ends_with_its_creator_draining_while_others_hold_it() {
        let mut sut = unlimited();
        let alice = caller(1000);
        let owner = connect(&mut sut, alice.clone());
        let spec = SegmentSpec {
            lifetime: Lifetime::Owner,
            ..spec(Some("o"), 10)
        };
        let alone = create(&mut sut, &alice, &spec, Some(owner));
        let shared = create(
            &mut sut,
            &alice,
            &SegmentSpec {
                name: Some("p".into()),
                ..spec.clone()
            },
            Some(owner),
        );
        let reader = connect(&mut sut, alice.clone());
        sut.open_segment(reader, &Target::Id(shared), Access::Read, NOW)
            .unwrap();

        let exit = sut.process_exited(owner, NOW).unwrap();
        let freed: Vec<_> = exit.freed.iter().map(|f| (f.record.id, f.reason)).collect();
        assert_eq!(freed, [(alone, EndReason::OwnerExited)]);
        assert_eq!(
            exit.draining.iter().map(|r| r.id).collect::<Vec<_>>(),
            [shared]
        );
        // Still charged while the reader holds it; freed when it exits.
        assert_eq!(sut.quota(&alice, "uid-1000").unwrap().usage.segments, 1);
        let exit = sut.process_exited(reader, NOW).unwrap();
        assert_eq!(
            exit.freed.iter().map(|f| f.record.id).collect::<Vec<_>>(),
            [shared]
        );
        assert_eq!(
            sut.quota(&alice, "uid-1000").unwrap().usage,
            Usage::default()
        );
        // Owner lifetimes need an owning process.
        assert!(matches!(
            sut.reserve_segment(&alice, &spec, None, NOW),
            Err(CoreError::InvalidArgument(_))
        ));
    }

    #[test]
    fn on_last_detach_ends_when_the_last_of_two_holders_goes() {
        let mut sut = unlimited();
        let alice = caller(1000);
        let first = connect(&mut sut, alice.clone());
        let spec = SegmentSpec {
            lifetime: Lifetime::OnLastDetach,
            ..spec(Some("d"), 10)
        };
        let id = create(&mut sut, &alice, &spec, Some(first));
        let second = connect(&mut sut, alice.clone());
        sut.open_segment(second, &Target::Id(id), Access::Read, NOW)
            .unwrap();
        assert!(sut.process_exited(first, NOW).unwrap().freed.is_empty());
        assert_eq!(sut.get_segment(&alice, id).unwrap().attachments, 1);
        let freed = sut.detach_segment(second, id, NOW).unwrap().unwrap();
        assert_eq!((freed.record.id, freed.reason), (id, EndReason::LastDetach));
    }

    #[test]
    fn orphans_are_unattached_segments_of_exited_owners_past_their_grace() {
        let mut sut = unlimited();
        let alice = caller(1000);
        let grace = |_: &str| std::time::Duration::from_millis(100);
        let owner = connect(&mut sut, alice.clone());
        let kept = create(&mut sut, &alice, &spec(Some("kept"), 1), Some(owner));
        let left = create(&mut sut, &alice, &spec(Some("left"), 1), Some(owner));
        sut.detach_segment(owner, left, NOW).unwrap();
        // The owner is alive: nothing is an orphan yet.
        assert!(sut.orphans(&alice, at_ms(1_000), grace).is_empty());
        let reader = connect(&mut sut, alice.clone());
        sut.open_segment(reader, &Target::Id(kept), Access::Read, NOW)
            .unwrap();
        sut.process_exited(owner, at_ms(1_000));
        // Within the grace, then past it; `kept` is still attached by the reader.
        assert!(sut.orphans(&alice, at_ms(1_050), grace).is_empty());
        let orphans: Vec<_> = sut
            .orphans(&alice, at_ms(1_100), grace)
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(orphans, [left]);
        assert!(
            sut.orphans(&caller(1001), at_ms(1_100), grace).is_empty(),
            "other tenants see none"
        );
        let purged = sut.purge(left).unwrap();
        assert_eq!(purged.reason, EndReason::Purged);
        assert!(
            sut.purge(kept).is_none(),
            "an attached segment is never purged"
        );
    }

    #[test]
    fn a_restored_segment_is_adopted_only_with_its_token_and_its_very_memfd() {
        let mut sut = unlimited();
        let alice = caller(1000);
        let holder = connect(&mut sut, alice.clone());
        let id = create(&mut sut, &alice, &spec(Some("r"), 4096), Some(holder));
        let record = sut.get_segment(&alice, id).unwrap();
        let (token, identity) = (record.token, record.memory);

        // The agent restarts: a new core knows the segment only from its row.
        let mut sut: Core<()> = Core::new(Limits::default(), 1);
        sut.restore_segment(record, NOW);
        assert_eq!(sut.quota(&alice, "uid-1000").unwrap().usage.segments, 1);
        let presenter = connect(&mut sut, alice.clone());
        let stranger = connect(&mut sut, caller(1001));
        let reattach = |sut: &mut Core<()>, who, token: &[u8], identity, size_bytes| {
            let presented = Presented {
                token,
                identity,
                size_bytes,
                doorbell: false,
            };
            sut.reattach_segment(who, id, &presented, || Some(()), NOW)
        };
        let other_file = MemoryIdentity {
            ino: identity.ino + 1,
            ..identity
        };
        for refused in [
            reattach(&mut sut, presenter, &[0; 16], identity, 4096),
            reattach(&mut sut, presenter, &token[..8], identity, 4096),
            reattach(&mut sut, presenter, &token, other_file, 4096),
            reattach(&mut sut, presenter, &token, identity, 8192),
            reattach(&mut sut, stranger, &token, identity, 4096),
        ] {
            assert!(
                matches!(refused, Err(CoreError::PermissionDenied(_))),
                "{refused:?}"
            );
        }
        assert!(
            matches!(
                sut.open_segment(presenter, &Target::Id(id), Access::Read, NOW),
                Err(CoreError::NotFound(_))
            ),
            "unclaimed segments cannot be opened"
        );
        let adopted = reattach(&mut sut, presenter, &token, identity, 4096).unwrap();
        assert_eq!(
            (adopted.state, adopted.attachments),
            (SegmentState::Active, 1)
        );
        assert!(
            sut.open_segment(presenter, &Target::Name("r".into()), Access::Read, NOW)
                .is_ok()
        );
        assert!(sut.lose_unclaimed().is_empty());
    }

    #[test]
    fn segments_nobody_presents_are_lost() {
        let mut sut = unlimited();
        let alice = caller(1000);
        let id = create(&mut sut, &alice, &spec(None, 10), None);
        let record = sut.get_segment(&alice, id).unwrap();
        let mut sut: Core<()> = Core::new(Limits::default(), 1);
        sut.restore_segment(record, NOW);
        let lost = sut.lose_unclaimed();
        assert_eq!(
            lost.iter()
                .map(|f| (f.record.id, f.reason))
                .collect::<Vec<_>>(),
            [(id, EndReason::Lost)]
        );
        assert_eq!(
            sut.quota(&alice, "uid-1000").unwrap().usage,
            Usage::default()
        );
        // Ids stay unique after a restart that restored higher ones.
        assert!(
            sut.reserve_segment(&alice, &spec(None, 1), None, NOW)
                .unwrap()
                .id
                > id
        );
    }

    #[test]
    fn a_ttl_segment_expires_only_after_its_ttl_unattached() {
        let mut sut = unlimited();
        let alice = caller(1000);
        let holder = connect(&mut sut, alice.clone());
        let spec = SegmentSpec {
            lifetime: Lifetime::Ttl { ttl_ms: 100 },
            ..spec(Some("t"), 10)
        };
        let id = create(&mut sut, &alice, &spec, Some(holder));
        // Attached: never expires, however long.
        assert!(sut.expire_ttl(at_ms(10_000)).is_empty());
        sut.detach_segment(holder, id, at_ms(10_000)).unwrap();
        assert!(sut.expire_ttl(at_ms(10_099)).is_empty());
        let expired = sut.expire_ttl(at_ms(10_100));
        assert_eq!(
            expired
                .iter()
                .map(|f| (f.record.id, f.reason))
                .collect::<Vec<_>>(),
            [(id, EndReason::TtlExpired)]
        );
        // Pre-provisioned and never attached: counts from creation.
        let idle = create(&mut sut, &alice, &SegmentSpec { name: None, ..spec }, None);
        assert_eq!(
            sut.expire_ttl(at_ms(100))
                .iter()
                .map(|f| f.record.id)
                .collect::<Vec<_>>(),
            [idle]
        );
    }

    #[test]
    fn deleting_an_attached_segment_drains_until_the_last_detach() {
        let mut sut = unlimited();
        let alice = caller(1000);
        let client = connect(&mut sut, alice.clone());
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
            sut.reserve_segment(&alice, &spec(Some("a"), 1), None, NOW)
                .is_ok()
        );
        let freed = sut.process_exited(client, NOW).unwrap().freed;
        assert_eq!(freed.len(), 1);
        assert_eq!(
            (freed[0].record.id, freed[0].reason),
            (id, EndReason::Deleted)
        );
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
        connect(&mut sut, caller(1000));
        connect(&mut sut, caller(1001));
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
            sut.reserve_segment(&caller(1000), &other, None, NOW),
            Err(CoreError::PermissionDenied(_))
        ));
        assert_eq!(
            sut.reserve_segment(&admin(), &other, None, NOW)
                .unwrap()
                .tenant,
            "uid-1"
        );
        let bad = SegmentSpec {
            tenant: Some("no spaces".into()),
            ..spec(None, 1)
        };
        assert!(matches!(
            sut.reserve_segment(&admin(), &bad, None, NOW),
            Err(CoreError::InvalidArgument(_))
        ));
    }

    fn ring(capacity_bytes: u64, max_message_bytes: u64, producers: u32) -> SegmentSpec {
        SegmentSpec {
            layout: Layout::Ring {
                capacity_bytes,
                max_message_bytes,
                producers,
            },
            ..spec(Some("ring"), 0)
        }
    }

    /// The refusal's message for a spec, which must be InvalidArgument.
    fn invalid(sut: &mut Core<()>, spec: &SegmentSpec) -> String {
        match sut.reserve_segment(&caller(1000), spec, None, NOW) {
            Err(CoreError::InvalidArgument(message)) => message,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn an_exiting_client_hands_back_the_rings_it_had_attached() {
        let mut sut = unlimited();
        let alice = caller(1000);
        let client = connect(&mut sut, alice.clone());
        let ring_id = create(&mut sut, &alice, &ring(4096, 0, 1), Some(client));
        create(&mut sut, &alice, &spec(Some("plain"), 4096), Some(client));
        let other = connect(&mut sut, alice.clone());
        let elsewhere = create(
            &mut sut,
            &alice,
            &SegmentSpec {
                name: Some("other".into()),
                ..ring(4096, 0, 1)
            },
            Some(other),
        );
        let exit = sut.process_exited(client, NOW).unwrap();
        let rings: Vec<SegmentId> = exit.rings.iter().map(|(id, ())| *id).collect();
        assert_eq!(rings, [ring_id], "not the plain segment, nor {elsewhere}");
    }

    #[test]
    fn a_ring_takes_the_size_of_its_region_with_defaults_filled_in() {
        let mut sut = unlimited();
        let record = sut
            .reserve_segment(&caller(1000), &ring(4096, 0, 0), None, NOW)
            .unwrap();

        let expected = RingLayout::new(4096, 4096 / 2 - 8, 1).unwrap();
        assert_eq!(record.size_bytes, expected.region_bytes() as u64);
        assert_eq!(
            record.layout,
            Layout::Ring {
                capacity_bytes: 4096,
                max_message_bytes: 4096 / 2 - 8,
                producers: 1,
            }
        );
        let four = sut
            .reserve_segment(
                &caller(1000),
                &SegmentSpec {
                    name: None,
                    ..ring(1024, 100, 4)
                },
                None,
                NOW,
            )
            .unwrap();
        assert_eq!(
            four.size_bytes,
            RingLayout::new(1024, 100, 4).unwrap().region_bytes() as u64
        );
    }

    #[test]
    fn invalid_ring_specs_are_refused_with_the_layout_error() {
        let mut sut = unlimited();

        assert!(invalid(&mut sut, &ring(1000, 0, 1)).contains("power of two"));
        assert!(invalid(&mut sut, &ring(8, 0, 1)).contains("capacity 8"));
        assert!(invalid(&mut sut, &ring(4096, 4096, 1)).contains("max message size 4096"));
        assert!(invalid(&mut sut, &ring(4096, 0, 65)).contains("1 to 64 lanes"));
        assert!(invalid(&mut sut, &ring(u64::MAX, 0, 1)).starts_with("invalid ring: "));
        assert_eq!(
            sut.quota(&caller(1000), "uid-1000").unwrap().usage,
            Usage::default()
        );
    }

    #[test]
    fn a_typed_segment_takes_size_zero_or_its_exact_size_only() {
        let mut sut = unlimited();
        let size = RingLayout::new(4096, 100, 1).unwrap().region_bytes() as u64;
        let exact = SegmentSpec {
            size_bytes: size,
            ..ring(4096, 100, 1)
        };
        assert_eq!(
            sut.reserve_segment(&caller(1000), &exact, None, NOW)
                .unwrap()
                .size_bytes,
            size
        );
        let other = SegmentSpec {
            name: Some("other".into()),
            size_bytes: size + 1,
            ..ring(4096, 100, 1)
        };
        assert!(invalid(&mut sut, &other).contains(&format!("a ring takes {size} bytes")));

        for (layout, kind) in [
            (Layout::Semaphore { initial_value: 3 }, "semaphore"),
            (Layout::Event, "event"),
        ] {
            let record = sut
                .reserve_segment(
                    &caller(1000),
                    &SegmentSpec {
                        name: Some(kind.into()),
                        layout,
                        ..spec(None, 0)
                    },
                    None,
                    NOW,
                )
                .unwrap();
            assert_eq!((record.size_bytes, record.layout), (256, layout));
            assert_eq!(layout.kind_str(), kind);
        }
    }

    #[test]
    fn quotas_apply_to_the_computed_size_of_a_ring() {
        let size = RingLayout::new(1 << 20, 0, 1).unwrap().region_bytes() as u64;
        let mut sut: Core<()> = Core::new(
            Limits {
                max_segment_bytes: Some(1 << 20),
                ..Limits::default()
            },
            1,
        );

        let refused = sut.reserve_segment(&caller(1000), &ring(1 << 20, 0, 1), None, NOW);

        assert_eq!(
            refused,
            Err(CoreError::QuotaExceeded {
                tenant: "uid-1000".into(),
                quota: QuotaKind::MaxSegmentBytes,
                limit: 1 << 20,
                used: 0,
                requested: size,
            })
        );
        assert!(
            sut.reserve_segment(&caller(1000), &ring(1 << 19, 0, 1), None, NOW)
                .is_ok()
        );
    }

    #[test]
    fn only_a_ring_is_presented_with_a_doorbell() {
        let mut sut = unlimited();
        let alice = caller(1000);
        let holder = connect(&mut sut, alice.clone());
        let plain = create(&mut sut, &alice, &spec(Some("p"), 4096), Some(holder));
        let ring_id = create(&mut sut, &alice, &ring(4096, 0, 1), Some(holder));
        let present = |sut: &mut Core<()>, id| {
            let record = sut.get_segment(&alice, id).unwrap();
            let presented = Presented {
                token: &record.token,
                identity: record.memory,
                size_bytes: record.size_bytes,
                doorbell: true,
            };
            sut.reattach_segment(holder, id, &presented, || Some(()), NOW)
        };

        assert!(matches!(
            present(&mut sut, plain),
            Err(CoreError::InvalidArgument(message)) if message.contains("only a ring's doorbell")
        ));
        assert!(present(&mut sut, ring_id).is_ok());
    }
}
