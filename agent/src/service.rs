//! The operations both front doors call: each one asks the core, does the
//! I/O the core decided on (memfds), writes the audit records, and only then
//! returns, so a reply always follows its commit.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use ipcplane_shm::mapping::Mapping;
use ipcplane_shm::memfd::{self, CreateError};

use crate::audit::{AuditError, AuditLog, Event, Outcome, Record};
use crate::core::{
    Access, Caller, ClientId, Core, CoreError, Deleted, EndReason, Freed, Layout, Limits,
    MemoryIdentity, Presented, ProcessIdentity, QuotaView, SegmentId, SegmentRecord, SegmentSpec,
    Target, Token,
};
use crate::fdstore::{FdStore, Passed};
use crate::identity::Policy;

/// Segments at least this large are allocated on a blocking thread, so a big
/// fallocate does not stall other requests.
const BLOCKING_ALLOCATION_BYTES: u64 = 64 << 20;

/// What the core stores with each segment, and what a grant sends: the
/// segment's memfd and, for a ring, its doorbell.
#[derive(Debug, Clone)]
pub struct Memory {
    /// The agent's own read-write memfd (in a grant, one of the access
    /// granted).
    pub memfd: Arc<OwnedFd>,
    /// A ring's eventfd, which its producers write when the consumer waits
    /// on it. `None` for other kinds, and for a ring restored after a
    /// restart until a holder presents its doorbell (or one is made for
    /// the next grant).
    pub doorbell: Option<Arc<OwnedFd>>,
}

/// The fds a holder presents to re-attach a segment.
#[derive(Debug)]
pub struct PresentedFds {
    /// The segment's memfd.
    pub memfd: OwnedFd,
    /// A ring's doorbell, if the holder has it.
    pub doorbell: Option<OwnedFd>,
}

impl Memory {
    /// The fds a grant carries, memfd first.
    pub fn fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        std::iter::once(self.memfd.as_fd())
            .chain(self.doorbell.as_deref().map(AsFd::as_fd))
            .collect()
    }
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("cannot allocate segment memory: {0}")]
    Memory(#[from] CreateError),
    #[error("cannot grant access: {0}")]
    Grant(std::io::Error),
    #[error("cannot write the segment's header: {0}")]
    Header(String),
    #[error("{0}")]
    Audit(#[from] AuditError),
}

/// Everything the agent shares between connections and RPCs.
#[derive(Debug)]
pub struct Agent {
    core: Mutex<Core<Memory>>,
    pub audit: AuditLog,
    pub policy: Policy,
    pub started: SystemTime,
    pub started_at: Instant,
    pub grant_socket: PathBuf,
    pub database: PathBuf,
    /// The agent as the subject of its own audit events.
    pub itself: Caller,
    /// The service manager's fd store, when running under one.
    pub fd_store: Option<FdStore>,
    /// This run of the agent, from [`new_instance`], told to each client in
    /// its hello: a client that reconnects to the same instance knows its
    /// attachments are still counted and must not present them again.
    pub instance: u64,
}

impl Agent {
    /// An agent over a restored core.
    pub fn new(
        core: Core<Memory>,
        audit: AuditLog,
        policy: Policy,
        grant_socket: PathBuf,
        database: PathBuf,
        fd_store: Option<FdStore>,
        instance: u64,
    ) -> Agent {
        Agent {
            core: Mutex::new(core),
            fd_store,
            instance,
            audit,
            policy,
            started: SystemTime::now(),
            started_at: Instant::now(),
            grant_socket,
            database,
            itself: Caller {
                pid: std::process::id(),
                uid: rustix::process::getuid().as_raw(),
                gid: rustix::process::getgid().as_raw(),
                tenant: "agent".into(),
                admin: true,
            },
        }
    }

    /// The core, for reads and for the few decisions that need no I/O.
    pub fn core(&self) -> MutexGuard<'_, Core<Memory>> {
        // A panic while holding the lock is a bug; the tables are still
        // consistent at every await-free step, so keep serving.
        self.core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates a segment charged to `caller` (or `spec.tenant`), attached to
    /// `client` when given. Returns the record and the read-write memfd.
    ///
    /// # Errors
    /// Refusals from the core, allocation failures, audit failures.
    pub async fn create_segment(
        &self,
        caller: &Caller,
        spec: SegmentSpec,
        client: Option<ClientId>,
    ) -> Result<(SegmentRecord, Memory), ServiceError> {
        let reserved = self
            .core()
            .reserve_segment(caller, &spec, client, SystemTime::now());
        let reserved = match reserved {
            Ok(reserved) => reserved,
            Err(refusal) => {
                return Err(self
                    .refused(caller, "segment.create", "segments", refusal)
                    .await);
            }
        };
        let id = reserved.id;
        let memory = match allocate(&reserved).await {
            Ok(memory) => memory,
            Err(error) => {
                self.core().abandon_segment(id);
                let event = Event::new(
                    caller,
                    "segment.create",
                    id.to_string(),
                    Outcome::Failed,
                    error.to_string(),
                );
                self.audit.record(event).await?;
                return Err(error);
            }
        };
        let (identity, token) = match identify_memory(&memory.memfd) {
            Ok(identity) => identity,
            Err(error) => {
                self.core().abandon_segment(id);
                return Err(ServiceError::Grant(error));
            }
        };
        let record =
            self.core()
                .complete_segment(id, memory.clone(), identity, token, SystemTime::now());
        let event = Event::new(
            caller,
            "segment.create",
            id.to_string(),
            Outcome::Allowed,
            describe(&record),
        );
        if let Err(error) = self
            .audit
            .commit(vec![
                Record::Event(event),
                Record::SegmentCreated(record.clone()),
            ])
            .await
        {
            // Not acknowledged, so it must not exist either.
            self.forget(caller, client, id);
            return Err(error.into());
        }
        self.store(id, &memory);
        Ok((record, memory))
    }

    /// Opens a segment for `client` with `access`; returns the record and a
    /// file description that allows exactly that access.
    ///
    /// # Errors
    /// Refusals from the core, reopen failures, audit failures.
    pub async fn open_segment(
        &self,
        caller: &Caller,
        client: ClientId,
        target: &Target,
        access: Access,
    ) -> Result<(SegmentRecord, Memory), ServiceError> {
        let resource = match target {
            Target::Id(id) => id.to_string(),
            Target::Name(name) => format!("segments/{name}"),
        };
        let opened = self
            .core()
            .open_segment(client, target, access, SystemTime::now());
        let (record, memory) = match opened {
            Ok(opened) => opened,
            Err(refusal) => {
                return Err(self
                    .refused(caller, "segment.open", &resource, refusal)
                    .await);
            }
        };
        let doorbell = match record.layout {
            Layout::Ring { .. } => self.ring_doorbell(record.id).map(Some),
            _ => Ok(None),
        };
        let granted = doorbell.and_then(|doorbell| {
            let memfd = match access {
                Access::ReadWrite => memory.memfd,
                Access::Read => Arc::new(memfd::reopen(
                    memory.memfd.as_fd(),
                    ipcplane_shm::Access::Read,
                )?),
            };
            Ok((memfd, doorbell))
        });
        let granted = match granted {
            Ok(granted) => granted,
            Err(error) => {
                let _ = self
                    .core()
                    .detach_segment(client, record.id, SystemTime::now());
                let event = Event::new(
                    caller,
                    "segment.open",
                    record.id.to_string(),
                    Outcome::Failed,
                    error.to_string(),
                );
                self.audit.record(event).await?;
                return Err(ServiceError::Grant(error));
            }
        };
        let (memfd, doorbell) = granted;
        let mut detail = format!("access={}", access_name(access));
        if let Some((_, true)) = doorbell {
            detail.push_str(" doorbell=created");
        }
        let event = Event::new(
            caller,
            "segment.open",
            record.id.to_string(),
            Outcome::Allowed,
            detail,
        );
        if let Err(error) = self.audit.record(event).await {
            let _ = self
                .core()
                .detach_segment(client, record.id, SystemTime::now());
            return Err(error.into());
        }
        let doorbell = doorbell.map(|(doorbell, _)| doorbell);
        Ok((record, Memory { memfd, doorbell }))
    }

    /// A holder presents a segment again (after an agent restart): checks
    /// the fd (size, seals, access mode) and lets the core check the token
    /// and that it is the very memfd; an unclaimed segment adopts it. A
    /// ring's `doorbell` is adopted if the ring has none yet and it is an
    /// eventfd (else ignored, and audited so).
    ///
    /// # Errors
    /// Refusals from the core or of the fd, audit failures.
    pub async fn reattach_segment(
        &self,
        caller: &Caller,
        client: ClientId,
        id: SegmentId,
        token: &[u8],
        access: Access,
        fds: PresentedFds,
    ) -> Result<SegmentRecord, ServiceError> {
        let PresentedFds {
            memfd: fd,
            doorbell,
        } = fds;
        let checked = check_presented(&fd, access);
        let reattached = checked.and_then(|(identity, size_bytes)| {
            let memory = || {
                let memfd = match memfd::access_of(fd.as_fd()) {
                    Ok(ipcplane_shm::Access::ReadWrite) => Some(Arc::new(fd)),
                    _ => memfd::reopen(fd.as_fd(), ipcplane_shm::Access::ReadWrite)
                        .ok()
                        .map(Arc::new),
                };
                memfd.map(|memfd| Memory {
                    memfd,
                    doorbell: None,
                })
            };
            let presented = Presented {
                token,
                identity,
                size_bytes,
                doorbell: doorbell.is_some(),
            };
            self.core()
                .reattach_segment(client, id, &presented, memory, SystemTime::now())
        });
        let record = match reattached {
            Ok(record) => record,
            Err(refusal) => {
                return Err(self
                    .refused(caller, "segment.reattach", &id.to_string(), refusal)
                    .await);
            }
        };
        let mut detail = format!("access={}", access_name(access));
        if let Some(doorbell) = doorbell {
            detail.push_str(" doorbell=");
            detail.push_str(self.adopt_doorbell(id, doorbell));
        }
        let event = Event::new(
            caller,
            "segment.reattach",
            id.to_string(),
            Outcome::Allowed,
            detail,
        );
        if let Err(error) = self.audit.record(event).await {
            let _ = self.core().detach_segment(client, id, SystemTime::now());
            return Err(error.into());
        }
        if let Some(memory) = self.core().memory_of(id) {
            self.store(id, &memory);
        }
        Ok(record)
    }

    /// Releases one attachment of `client`.
    ///
    /// # Errors
    /// Refusals from the core, audit failures.
    pub async fn detach_segment(
        &self,
        caller: &Caller,
        client: ClientId,
        id: SegmentId,
    ) -> Result<(), ServiceError> {
        let detached = self.core().detach_segment(client, id, SystemTime::now());
        match detached {
            Ok(freed) => {
                let event = Event::new(
                    caller,
                    "segment.detach",
                    id.to_string(),
                    Outcome::Allowed,
                    "",
                );
                let mut records = vec![Record::Event(event)];
                records.extend(freed.into_iter().flat_map(|f| self.ended(caller, f)));
                Ok(self.audit.commit(records).await?)
            }
            Err(refusal) => Err(self
                .refused(caller, "segment.detach", &id.to_string(), refusal)
                .await),
        }
    }

    /// Deletes a segment (draining if still attached).
    ///
    /// # Errors
    /// Refusals from the core, audit failures.
    pub async fn delete_segment(
        &self,
        caller: &Caller,
        id: SegmentId,
    ) -> Result<SegmentRecord, ServiceError> {
        let deleted = self.core().delete_segment(caller, id);
        let (record, records) = match deleted {
            Ok(Deleted::Freed(freed)) => {
                self.release(&freed);
                let record = freed.record;
                let event = Event::new(
                    caller,
                    "segment.delete",
                    id.to_string(),
                    Outcome::Allowed,
                    "freed",
                );
                let freed_row = Record::SegmentFreed {
                    id: id.0,
                    at: SystemTime::now(),
                };
                (record, vec![Record::Event(event), freed_row])
            }
            Ok(Deleted::Draining(record)) => {
                let detail = format!("draining: {} attachment(s) left", record.attachments);
                let event = Event::new(
                    caller,
                    "segment.delete",
                    id.to_string(),
                    Outcome::Allowed,
                    detail,
                );
                (record, vec![Record::Event(event)])
            }
            Err(refusal) => {
                return Err(self
                    .refused(caller, "segment.delete", &id.to_string(), refusal)
                    .await);
            }
        };
        self.audit.commit(records).await?;
        Ok(record)
    }

    /// Registers a grant connection of `process` and audits it. Returns the
    /// process's client id and whether it is new (then the caller watches
    /// the process for its exit).
    ///
    /// # Errors
    /// Audit failures (the connection is then refused).
    pub async fn connect_client(
        &self,
        caller: &Caller,
        process: ProcessIdentity,
    ) -> Result<(ClientId, bool), ServiceError> {
        let (client, new) = self
            .core()
            .register_client(caller.clone(), process, SystemTime::now());
        let event = Event::new(
            caller,
            "client.connect",
            client.to_string(),
            Outcome::Allowed,
            "",
        );
        if let Err(error) = self.audit.record(event).await {
            self.core().disconnect_client(client);
            return Err(error.into());
        }
        Ok((client, new))
    }

    /// A grant connection closed; the process keeps what it holds.
    pub async fn disconnect_client(&self, caller: &Caller, client: ClientId) {
        self.core().disconnect_client(client);
        let event = Event::new(
            caller,
            "client.disconnect",
            client.to_string(),
            Outcome::Allowed,
            "",
        );
        if let Err(error) = self.audit.record(event).await {
            tracing::error!(cause = %error, client = client.0, "cannot audit a disconnect");
        }
    }

    /// A client process exited: its attachments go, its `owner` segments end,
    /// and all of it is audited.
    pub async fn process_exited(&self, client: ClientId) {
        let exit = self.core().process_exited(client, SystemTime::now());
        let Some(exit) = exit else {
            return;
        };
        let caller = &exit.client.caller;
        let detail = format!(
            "pid {} exited holding {} attachment(s)",
            caller.pid,
            exit.client.attachment_count()
        );
        let mut records = vec![Record::Event(Event::new(
            caller,
            "client.exit",
            client.to_string(),
            Outcome::Allowed,
            detail,
        ))];
        for record in exit.draining {
            let detail = format!(
                "owner exited; draining: {} attachment(s) left",
                record.attachments
            );
            records.push(Record::Event(Event::new(
                caller,
                "segment.expire",
                record.id.to_string(),
                Outcome::Allowed,
                detail,
            )));
        }
        if let Some(token) = exit.client.process.ring_owner {
            records.extend(exit.rings.iter().filter_map(|(id, memory)| {
                let freed = release_ring_roles(memory, token)
                    .inspect_err(|error| {
                        tracing::warn!(cause = %error, segment = id.0, "cannot free an exited process's ring roles");
                    })
                    .ok()
                    .filter(|&freed| freed > 0)?;
                let detail = format!("freed {freed} role(s) of exited pid {}", caller.pid);
                Some(Record::Event(Event::new(
                    caller,
                    "ring.release",
                    id.to_string(),
                    Outcome::Allowed,
                    detail,
                )))
            }));
        }
        records.extend(exit.freed.into_iter().flat_map(|f| self.ended(caller, f)));
        if let Err(error) = self.audit.commit(records).await {
            tracing::error!(cause = %error, client = client.0, "cannot audit a process exit");
        }
    }

    /// The orphans `caller` may purge that `wanted` accepts; with `force`,
    /// removes them (each audited as `segment.purge`), else only lists them.
    ///
    /// # Errors
    /// Audit failures.
    pub async fn purge_segments(
        &self,
        caller: &Caller,
        wanted: impl Fn(&SegmentRecord) -> bool,
        force: bool,
    ) -> Result<Vec<SegmentRecord>, ServiceError> {
        let now = SystemTime::now();
        let orphans = self
            .core()
            .orphans(caller, now, |tenant| self.policy.orphan_grace(tenant));
        let orphans: Vec<SegmentRecord> = orphans.into_iter().filter(|r| wanted(r)).collect();
        if !force {
            return Ok(orphans);
        }
        let purged: Vec<Freed<Memory>> = {
            let mut core = self.core();
            orphans.iter().filter_map(|r| core.purge(r.id)).collect()
        };
        let records: Vec<SegmentRecord> = purged.iter().map(|f| f.record.clone()).collect();
        let audit: Vec<Record> = purged
            .into_iter()
            .flat_map(|f| self.ended(caller, f))
            .collect();
        self.audit.commit(audit).await?;
        Ok(records)
    }

    /// Adopts the segment memfds the service manager kept across the restart
    /// (each checked to be the segment's sealed memfd), with each ring's
    /// stored doorbell if it is an eventfd, auditing each.
    pub async fn adopt_stored(&self, passed: Passed) {
        let Passed {
            segments,
            mut doorbells,
        } = passed;
        let mut records = Vec::new();
        for (id, fd) in segments {
            let doorbell = doorbells
                .iter()
                .position(|(ring, _)| *ring == id)
                .map(|at| doorbells.swap_remove(at).1)
                .filter(is_eventfd)
                .map(Arc::new);
            let with_doorbell = doorbell.is_some();
            let adopted =
                check_presented(&fd, Access::ReadWrite).and_then(|(identity, size_bytes)| {
                    let memory = Memory {
                        memfd: Arc::new(fd),
                        doorbell,
                    };
                    self.core().adopt_stored(id, identity, size_bytes, memory)
                });
            let (outcome, detail) = match adopted {
                Ok(record) => {
                    let mut detail = "from the service manager's fd store".to_owned();
                    match (record.layout, with_doorbell) {
                        (Layout::Ring { .. }, true) => detail.push_str(", with its doorbell"),
                        (Layout::Ring { .. }, false) => {
                            detail.push_str(", without a doorbell (the next holder's is adopted)");
                        }
                        _ => {}
                    }
                    (Outcome::Allowed, detail)
                }
                Err(refusal) => (Outcome::Denied, refusal.to_string()),
            };
            records.push(Record::Event(Event::new(
                &self.itself,
                "segment.restore",
                id.to_string(),
                outcome,
                detail,
            )));
        }
        if !records.is_empty()
            && let Err(error) = self.audit.commit(records).await
        {
            tracing::error!(cause = %error, "cannot audit restored segments");
        }
    }

    /// Ends the segments nobody presented again after a restart.
    pub async fn lose_unclaimed(&self) {
        let lost = self.core().lose_unclaimed();
        if lost.is_empty() {
            return;
        }
        let records: Vec<Record> = lost
            .into_iter()
            .flat_map(|f| self.ended(&self.itself, f))
            .collect();
        if let Err(error) = self.audit.commit(records).await {
            tracing::error!(cause = %error, "cannot audit lost segments");
        }
    }

    /// Ends every `ttl` segment that has been unattached for its ttl.
    pub async fn expire_ttl(&self) {
        let freed = self.core().expire_ttl(SystemTime::now());
        if freed.is_empty() {
            return;
        }
        let records: Vec<Record> = freed
            .into_iter()
            .flat_map(|f| self.ended(&self.itself, f))
            .collect();
        if let Err(error) = self.audit.commit(records).await {
            tracing::error!(cause = %error, "cannot audit ttl expiry");
        }
    }

    /// Changes a tenant's quota override (see
    /// [`Core::update_quota_override`]), persisting it before answering; if
    /// the commit fails, the previous override is put back.
    ///
    /// # Errors
    /// Refusals from the core or `update`, audit failures.
    pub async fn set_quota(
        &self,
        caller: &Caller,
        tenant: &str,
        update: impl FnOnce(Limits) -> Result<Option<Limits>, CoreError>,
    ) -> Result<QuotaView, ServiceError> {
        let resource = format!("tenants/{tenant}");
        let updated = self.core().update_quota_override(caller, tenant, update);
        let (view, limits, previous) = match updated {
            Ok(updated) => updated,
            Err(refusal) => {
                return Err(self
                    .refused(caller, "quota.update", &resource, refusal)
                    .await);
            }
        };
        let detail = match limits {
            Some(limits) => limits.to_string(),
            None => "reset to defaults".into(),
        };
        let event = Event::new(caller, "quota.update", resource, Outcome::Allowed, detail);
        let records = vec![
            Record::Event(event),
            Record::QuotaOverride {
                tenant: tenant.to_owned(),
                limits,
            },
        ];
        if let Err(error) = self.audit.commit(records).await {
            self.core().restore_quota_override(tenant, limits, previous);
            return Err(error.into());
        }
        Ok(view)
    }

    /// Keeps a segment's memfd (and a ring's doorbell) in the service
    /// manager's fd store, if any, so it survives an agent restart even with
    /// no holder.
    fn store(&self, id: SegmentId, memory: &Memory) {
        if let Some(store) = &self.fd_store
            && let Err(error) = store.store(id, memory.memfd.as_fd())
        {
            tracing::warn!(cause = %error, segment = id.0, "cannot store a segment in the fd store");
        }
        if let Some(doorbell) = &memory.doorbell {
            self.store_doorbell(id, doorbell);
        }
    }

    fn store_doorbell(&self, id: SegmentId, doorbell: &OwnedFd) {
        if let Some(store) = &self.fd_store
            && let Err(error) = store.store_doorbell(id, doorbell.as_fd())
        {
            tracing::warn!(cause = %error, segment = id.0, "cannot store a doorbell in the fd store");
        }
    }

    /// A ring's doorbell for a grant, made now if the ring has none (a ring
    /// restored after a restart that no holder presented one for): returns
    /// it, and whether it was made now.
    fn ring_doorbell(&self, id: SegmentId) -> std::io::Result<(Arc<OwnedFd>, bool)> {
        let made = {
            let mut core = self.core();
            let Some(memory) = core.memory_mut(id) else {
                return Err(std::io::Error::other(format!("{id} has no memory")));
            };
            if let Some(doorbell) = &memory.doorbell {
                return Ok((doorbell.clone(), false));
            }
            let doorbell = Arc::new(new_doorbell()?);
            memory.doorbell = Some(doorbell.clone());
            doorbell
        };
        self.store_doorbell(id, &made);
        Ok((made, true))
    }

    /// Takes a presented doorbell as ring `id`'s if the ring has none and it
    /// is an eventfd; says what became of it, for the audit log.
    fn adopt_doorbell(&self, id: SegmentId, doorbell: OwnedFd) -> &'static str {
        if !is_eventfd(&doorbell) {
            return "ignored (not an eventfd)";
        }
        let adopted = {
            let mut core = self.core();
            match core.memory_mut(id) {
                Some(memory) if memory.doorbell.is_none() => {
                    let doorbell = Arc::new(doorbell);
                    memory.doorbell = Some(doorbell.clone());
                    doorbell
                }
                _ => return "kept (the ring has one)",
            }
        };
        self.store_doorbell(id, &adopted);
        "adopted"
    }

    /// Gives a freed segment's memory back to the system now. A process that
    /// claimed to detach may still hold the memfd; it keeps a valid mapping, but
    /// the pages charged to its tenant are gone, and anything it touches again is
    /// charged to its own cgroup, so a quota cannot be bypassed by lying.
    fn release(&self, freed: &Freed<Memory>) {
        if let Some(memory) = &freed.memory
            && let Err(error) = memfd::release_memory(memory.memfd.as_fd())
        {
            tracing::warn!(cause = %error, segment = freed.record.id.0, "cannot release segment memory");
        }
        if let Some(store) = &self.fd_store
            && freed.memory.is_some()
            && let Err(error) = store.remove(freed.record.id)
        {
            tracing::warn!(cause = %error, segment = freed.record.id.0, "cannot drop a segment from the fd store");
        }
    }

    /// The records that end a segment's life (its memory is released first).
    fn ended(&self, caller: &Caller, freed: Freed<Memory>) -> Vec<Record> {
        self.release(&freed);
        let id = freed.record.id;
        let action = match freed.reason {
            EndReason::Purged => "segment.purge",
            EndReason::Lost => "segment.lost",
            EndReason::Deleted
            | EndReason::LastDetach
            | EndReason::OwnerExited
            | EndReason::TtlExpired => "segment.free",
        };
        let event = Event::new(
            caller,
            action,
            id.to_string(),
            Outcome::Allowed,
            freed.reason.as_str(),
        );
        vec![
            Record::Event(event),
            Record::SegmentFreed {
                id: id.0,
                at: SystemTime::now(),
            },
        ]
    }

    /// Audits a refusal and returns it as the error to answer with. If the
    /// denial cannot be audited, the audit failure is the answer.
    pub async fn refused(
        &self,
        caller: &Caller,
        action: &'static str,
        resource: &str,
        refusal: CoreError,
    ) -> ServiceError {
        let event = Event::new(
            caller,
            action,
            resource,
            Outcome::Denied,
            refusal.to_string(),
        );
        match self.audit.record(event).await {
            Ok(()) => refusal.into(),
            Err(error) => error.into(),
        }
    }

    fn forget(&self, caller: &Caller, client: Option<ClientId>, id: SegmentId) {
        let mut core = self.core();
        if let Some(client) = client {
            let _ = core.detach_segment(client, id, SystemTime::now());
        }
        let _ = core.delete_segment(
            &Caller {
                admin: true,
                ..caller.clone()
            },
            id,
        );
    }
}

/// What a presented fd is, if it is fit to be a segment: sealed, and open
/// for at least `access`.
fn check_presented(fd: &OwnedFd, access: Access) -> Result<(MemoryIdentity, u64), CoreError> {
    let unfit = |why: String| CoreError::PermissionDenied(format!("the presented file {why}"));
    let stat = rustix::fs::fstat(fd).map_err(|e| unfit(format!("cannot be inspected: {e}")))?;
    let seals = memfd::seals(fd.as_fd()).map_err(|e| unfit(format!("has no seals: {e}")))?;
    if !seals.contains(memfd::REQUIRED_SEALS) {
        return Err(unfit("is not sealed against resizing".into()));
    }
    let mode = memfd::access_of(fd.as_fd())
        .map_err(|e| unfit(format!("has no usable access mode: {e}")))?;
    if access == Access::ReadWrite && mode != ipcplane_shm::Access::ReadWrite {
        return Err(unfit(
            "is read-only but read-write access was claimed".into(),
        ));
    }
    let identity = MemoryIdentity {
        dev: stat.st_dev,
        ino: stat.st_ino,
    };
    Ok((identity, u64::try_from(stat.st_size).unwrap_or_default()))
}

/// A number for this run of the agent: random, so that a restarted agent
/// differs from its predecessor, and never 0, which is what an agent from
/// before instances sends.
///
/// # Errors
/// The kernel's random source fails.
pub fn new_instance() -> std::io::Result<u64> {
    let mut bytes = [0; 8];
    rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty())?;
    Ok(u64::from_ne_bytes(bytes).max(1))
}

/// The memfd's device and inode, and a fresh secret for re-attaching it.
fn identify_memory(memory: &OwnedFd) -> std::io::Result<(MemoryIdentity, Token)> {
    let stat = rustix::fs::fstat(memory)?;
    let mut token = Token::default();
    rustix::rand::getrandom(&mut token, rustix::rand::GetRandomFlags::empty())?;
    let identity = MemoryIdentity {
        dev: stat.st_dev,
        ino: stat.st_ino,
    };
    Ok((identity, token))
}

/// A new segment's memory: its sealed memfd with the layout's header
/// written, and a ring's doorbell.
async fn allocate(record: &SegmentRecord) -> Result<Memory, ServiceError> {
    let name = format!("ipcplane:{}:{}", record.tenant, record.id.0);
    let size = record.size_bytes;
    let layout = record.layout;
    let make = move || {
        let memfd = memfd::create_sealed(&name, size)?;
        write_header(&memfd, layout)?;
        let doorbell = match layout {
            Layout::Ring { .. } => Some(Arc::new(new_doorbell().map_err(ServiceError::Grant)?)),
            _ => None,
        };
        Ok(Memory {
            memfd: Arc::new(memfd),
            doorbell,
        })
    };
    if size < BLOCKING_ALLOCATION_BYTES {
        return make();
    }
    tokio::task::spawn_blocking(make)
        .await
        .unwrap_or_else(|join| {
            Err(CreateError::Create(std::io::Error::other(join.to_string())).into())
        })
}

/// Writes the versioned header of a ring, semaphore or event into its fresh
/// (zeroed) memfd, so that every holder finds a valid one from the first
/// grant on. A plain segment has none.
fn write_header(memfd: &OwnedFd, layout: Layout) -> Result<(), ServiceError> {
    if layout == Layout::Plain {
        return Ok(());
    }
    let failed = |error: &dyn std::fmt::Display| ServiceError::Header(error.to_string());
    let mapping =
        Mapping::map(memfd.as_fd(), ipcplane_shm::Access::ReadWrite).map_err(|e| failed(&e))?;
    match layout {
        Layout::Plain => Ok(()),
        Layout::Ring { .. } => match layout.ring_layout()? {
            Some(ring) => ipcplane_shm::ring::init_mapping(&mapping, ring).map_err(|e| failed(&e)),
            None => Err(failed(&"not a ring layout")),
        },
        Layout::Semaphore { initial_value } => {
            ipcplane_shm::semaphore::init_mapping(&mapping, initial_value).map_err(|e| failed(&e))
        }
        Layout::Event => ipcplane_shm::event::init_mapping(&mapping).map_err(|e| failed(&e)),
    }
}

/// Frees the roles (producer lanes, consumer) that the exited process of
/// `token` still holds in a ring: another process tells a gone holder only
/// in its own pid namespace, so one of a container would keep its lane for
/// the ring's life; the agent knows it exited from its pidfd.
fn release_ring_roles(memory: &Memory, token: u64) -> Result<usize, String> {
    let mapping = Mapping::map(memory.memfd.as_fd(), ipcplane_shm::Access::ReadWrite)
        .map_err(|e| e.to_string())?;
    ipcplane_shm::ring::release_roles(Arc::new(mapping), token).map_err(|e| e.to_string())
}

/// A ring's doorbell: an eventfd, nonblocking so that neither a producer
/// ringing a saturated one nor a consumer draining an empty one blocks.
fn new_doorbell() -> std::io::Result<OwnedFd> {
    use rustix::event::{EventfdFlags, eventfd};
    Ok(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?)
}

/// Whether `fd` is an eventfd: only one can be a ring's doorbell.
fn is_eventfd(fd: &OwnedFd) -> bool {
    ipcplane_shm::ring::check_doorbell(fd.as_fd()).is_ok()
}

/// The audit detail of a created segment.
fn describe(record: &SegmentRecord) -> String {
    format!(
        "name={:?} size_bytes={} mode={} lifetime={} ttl_ms={} tenant={} {}",
        record.name.as_deref().unwrap_or(""),
        record.size_bytes,
        record.mode.as_str(),
        record.lifetime.as_str(),
        record.lifetime.ttl_ms(),
        record.tenant,
        record.layout
    )
}

fn access_name(access: Access) -> &'static str {
    match access {
        Access::Read => "read",
        Access::ReadWrite => "read_write",
    }
}
