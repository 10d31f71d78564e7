//! The ipcplane agent: owns every shared-memory segment on the host, grants
//! them to processes as sealed memfds over the grant socket, enforces tenant
//! quotas, serves the gRPC control API, and audits every decision in SQLite.
//!
//! # Layout
//! - [`core`]: the pure tables and policy (no I/O); both doors call it.
//! - [`service`]: the operations: core decision, memfd I/O, audit commit.
//! - [`grant`]: the grant socket (SOCK_SEQPACKET, SCM_RIGHTS).
//! - [`control`]: the gRPC control API, health and reflection.
//! - [`audit`]: the SQLite store with group commit.
//! - [`reaper`]: notices client processes exiting, through their pidfds.
//! - [`fdstore`]: systemd readiness and fd store, so unheld segments survive.
//! - [`config`], [`identity`], [`filter`], [`convert`], [`shutdown`]: the rest.
#![forbid(unsafe_code)]

pub mod audit;
pub mod config;
pub mod control;
pub mod convert;
pub mod core;
pub mod fdstore;
pub mod filter;
pub mod grant;
pub mod identity;
pub mod reaper;
pub mod service;
pub mod shutdown;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::audit::{AuditLog, Event, Outcome};
use crate::config::Config;
use crate::core::Core;
use crate::identity::Policy;
use crate::service::Agent;
use crate::shutdown::Shutdown;

/// How long connections may take to finish after shutdown starts.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs the agent until `shutdown` fires or a server fails; on the way out the
/// sockets are removed and the audit log is flushed and closed.
///
/// # Errors
/// Start-up failures (directories, database, sockets) and server failures.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    raise_fd_limit();
    // Taken first, before anything could disturb the descriptors passed in.
    let passed =
        fdstore::passed_segments().context("taking the segments the service manager kept")?;
    let fd_store = fdstore::FdStore::from_env().context("connecting to the service manager")?;
    create_dir(&config.runtime_dir, 0o755)?;
    if let Some(parent) = config.database.parent() {
        create_dir(parent, 0o700)?;
    }
    let (audit, restored) =
        AuditLog::open(&config.database).context("opening the audit database")?;
    let mut core = Core::new(config.default_limits, restored.next_segment_id);
    for (tenant, limits) in &restored.quota_overrides {
        core.load_quota_override(tenant, Some(*limits));
    }
    let unclaimed = restored.segments.len();
    for record in restored.segments {
        core.restore_segment(record, std::time::SystemTime::now());
    }
    let grant_socket = config.grant_socket();
    let control_socket = config.control_socket();
    let grant_listener = grant::bind(&grant_socket)
        .with_context(|| format!("binding the grant socket {}", grant_socket.display()))?;
    let control_listener = control::bind(&control_socket, config.control_gid)
        .with_context(|| format!("binding the control socket {}", control_socket.display()))?;

    let instance = service::new_instance().context("choosing the agent's instance number")?;
    let agent = Arc::new(Agent::new(
        core,
        audit.clone(),
        Policy::new(&config),
        grant_socket.clone(),
        config.database.clone(),
        fd_store,
        instance,
    ));
    let itself = agent.itself.clone();
    agent.adopt_stored(passed).await;
    audit
        .record(Event::new(
            &itself,
            "agent.start",
            "agent",
            Outcome::Allowed,
            format!("version {}", env!("CARGO_PKG_VERSION")),
        ))
        .await?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        grant = %grant_socket.display(),
        control = %control_socket.display(),
        database = %config.database.display(),
        "agent ready"
    );

    // Servers stop on the caller's shutdown, or when either of them fails.
    let (stop_servers, servers_stopping) = shutdown::channel();
    let reaper = reaper::Reaper::start(agent.clone(), servers_stopping.clone())
        .context("starting the reaper")?;
    tokio::spawn(expire_ttl_segments(agent.clone(), servers_stopping.clone()));
    if unclaimed > 0 {
        tracing::info!(segments = unclaimed, grace = ?config.reattach_grace, "waiting for holders to present segments");
        tokio::spawn(lose_unclaimed_segments(
            agent.clone(),
            config.reattach_grace,
            servers_stopping.clone(),
        ));
    }
    if let Some(store) = &agent.fd_store
        && let Err(error) = store.ready()
    {
        tracing::warn!(cause = %error, "cannot tell the service manager the agent is ready");
    }
    let mut grant_task = tokio::spawn(grant::serve(
        agent.clone(),
        reaper,
        grant_listener,
        servers_stopping.clone(),
    ));
    let mut control_task = tokio::spawn(control::serve(
        agent.clone(),
        control_listener,
        servers_stopping,
    ));
    let failure = tokio::select! {
        () = shutdown.wait() => None,
        result = &mut grant_task => Some(anyhow::anyhow!("the grant socket stopped: {:?}", result)),
        result = &mut control_task => Some(anyhow::anyhow!("the control socket stopped: {:?}", result)),
    };
    stop_servers.fire();
    // Idle gRPC connections would hold a graceful shutdown forever.
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        let _ = (&mut grant_task).await;
        let _ = (&mut control_task).await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open at shutdown; closing them");
        grant_task.abort();
        control_task.abort();
    }

    for socket in [&grant_socket, &control_socket] {
        if let Err(error) = std::fs::remove_file(socket) {
            tracing::warn!(cause = %error, socket = %socket.display(), "cannot remove socket");
        }
    }
    audit
        .record(Event::new(
            &itself,
            "agent.stop",
            "agent",
            Outcome::Allowed,
            "",
        ))
        .await?;
    if let Err(error) = audit.checkpoint() {
        tracing::warn!(cause = %error, "cannot checkpoint the audit database");
    }
    if let Some(failure) = failure {
        return Err(failure);
    }
    tracing::info!("agent stopped");
    Ok(())
}

/// How often `ttl` segments are checked; their expiry is this precise.
const TTL_TICK: std::time::Duration = std::time::Duration::from_millis(50);

/// Frees `ttl` segments left unattached for their ttl, until shutdown.
async fn expire_ttl_segments(agent: Arc<Agent>, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(TTL_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.wait() => return,
            _ = tick.tick() => agent.expire_ttl().await,
        }
    }
}

/// After `grace`, ends the segments from before the restart that nobody
/// presented again.
async fn lose_unclaimed_segments(
    agent: Arc<Agent>,
    grace: std::time::Duration,
    shutdown: Shutdown,
) {
    tokio::select! {
        () = shutdown.wait() => {}
        () = tokio::time::sleep(grace) => agent.lose_unclaimed().await,
    }
}

/// Every connection and every live segment costs a descriptor; the usual soft
/// limit of 1024 would let a few hundred idle clients starve everyone else.
/// Raise it to the hard limit the service manager allows.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            ..limit
        };
        if let Err(error) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(cause = %error, "cannot raise the open-file limit");
        }
    }
    let limit = getrlimit(Resource::Nofile);
    tracing::debug!(soft = ?limit.current, hard = ?limit.maximum, "open-file limit");
}

/// Creates `path` (and parents) with `mode`, then checks that the directory
/// is ours and not writable by others: in a shared directory such as /tmp,
/// another user could otherwise plant sockets our clients would trust.
fn create_dir(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let metadata = std::fs::symlink_metadata(path)
        .with_context(|| format!("inspecting {}", path.display()))?;
    let uid = rustix::process::geteuid().as_raw();
    if !metadata.is_dir() || metadata.uid() != uid || metadata.mode() & 0o022 != 0 {
        anyhow::bail!(
            "{} must be a directory owned by uid {uid} and not writable by group or others \
             (it is owned by uid {} with mode {:o}); remove it or choose another directory",
            path.display(),
            metadata.uid(),
            metadata.mode() & 0o7777
        );
    }
    Ok(())
}
