//! The grant socket: a `SOCK_SEQPACKET` UNIX socket (mode 0666; trust comes
//! from the kernel's peer credentials) where SDK clients ask for segments and
//! receive their memfds in SCM_RIGHTS, one datagram each way per request.
//!
//! Hostile traffic is expected. Oversized or undecodable datagrams get an
//! error and the connection is closed; fds a client sends are closed at once;
//! requests before `Hello` are refused. Every fd the agent receives or opens
//! for a connection is an `OwnedFd`, so nothing leaks when a task ends.
//!
//! tokio has no SEQPACKET socket type. `Readiness` registers our sockets
//! with the runtime through `UnixDatagram::from_std` (the safe way since
//! `AsyncFd::new` was deprecated); it is used only for readiness, and every
//! system call on the socket is ours (`accept4`, `recvmsg`, `sendmsg`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ipcplane_proto::v1::{self, grant_request, grant_response};
use ipcplane_proto::{GRANT_PROTOCOL_VERSION, MAX_GRANT_DATAGRAM};
use ipcplane_shm::fdpass;
use prost::Message;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use tokio::io::Interest;
use tokio::net::UnixDatagram;
use tokio::task::JoinSet;

use crate::audit::{Event, Outcome};
use crate::convert;
use crate::core::{
    Caller, ClientId, CoreError, Layout, ProcessIdentity, SegmentId, SegmentRecord, SegmentSpec,
    Target,
};
use crate::reaper::Reaper;
use crate::service::{Agent, Memory, PresentedFds, ServiceError};
use crate::shutdown::Shutdown;

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 4096;
/// How long a new connection may take to say hello before it is closed.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before accepting again when the process is out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds the grant socket at `path`, mode 0666. A stale socket file left by a
/// dead agent is replaced; a live agent on it is an error.
///
/// # Errors
/// The socket cannot be created or bound, or another agent is serving it.
pub fn bind(path: &Path) -> io::Result<OwnedFd> {
    let addr = SocketAddrUnix::new(path)?;
    if path.exists() {
        let probe = seqpacket()?;
        match rustix::net::connect(&probe, &addr) {
            Ok(()) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another agent is serving {}", path.display()),
                ));
            }
            Err(_) => std::fs::remove_file(path)?,
        }
    }
    let listener = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::bind(&listener, &addr)?;
    rustix::fs::chmod(path, rustix::fs::Mode::from_raw_mode(0o666))?;
    rustix::net::listen(&listener, 1024)?;
    Ok(listener)
}

fn seqpacket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Accepts connections until shutdown, one task each.
///
/// # Errors
/// The listener cannot be registered with the runtime.
pub async fn serve(
    agent: Arc<Agent>,
    reaper: Arc<Reaper>,
    listener: OwnedFd,
    shutdown: Shutdown,
) -> io::Result<()> {
    let listener = Readiness::new(listener)?;
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        if connections.len() >= MAX_CONNECTIONS {
            // Full: the next client waits in the listen backlog.
            tokio::select! {
                () = shutdown.wait() => break,
                _ = connections.join_next() => continue,
            }
        }
        let accepted = tokio::select! {
            () = shutdown.wait() => break,
            accepted = listener.io(Interest::READABLE, |l| {
                Ok(rustix::net::accept_with(l, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)?)
            }) => accepted,
        };
        match accepted {
            Ok(socket) => {
                let connection =
                    Connection::serve(agent.clone(), reaper.clone(), socket, shutdown.clone());
                connections.spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(cause = %error, "grant connection ended with an error");
                    }
                });
            }
            Err(error) if out_of_descriptors(&error) => {
                // Retrying at once would spin: wait for fds to be freed.
                tracing::warn!(cause = %error, "out of file descriptors; pausing accept");
                tokio::select! {
                    () = shutdown.wait() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
            // ECONNABORTED and friends concern one client only.
            Err(error) => tracing::debug!(cause = %error, "accept on the grant socket failed"),
        }
    }
    // Every connection sees the same shutdown; let them record their ends.
    while connections.join_next().await.is_some() {}
    Ok(())
}

fn out_of_descriptors(error: &io::Error) -> bool {
    matches!(
        rustix::io::Errno::from_io_error(error),
        Some(
            rustix::io::Errno::MFILE
                | rustix::io::Errno::NFILE
                | rustix::io::Errno::NOBUFS
                | rustix::io::Errno::NOMEM
        )
    )
}

/// One client connection.
struct Connection {
    agent: Arc<Agent>,
    reaper: Arc<Reaper>,
    socket: Readiness,
    caller: Caller,
    peer: Peer,
    client: Option<ClientId>,
}

impl Connection {
    async fn serve(
        agent: Arc<Agent>,
        reaper: Arc<Reaper>,
        socket: OwnedFd,
        shutdown: Shutdown,
    ) -> io::Result<()> {
        let peer = identify(&socket)?;
        let caller = agent.policy.caller(peer.process.pid, peer.uid, peer.gid);
        let mut connection = Connection {
            agent,
            reaper,
            socket: Readiness::new(socket)?,
            caller,
            peer,
            client: None,
        };
        let result = tokio::select! {
            () = shutdown.wait() => Ok(()),
            result = connection.run() => result,
        };
        if let Some(client) = connection.client {
            connection
                .agent
                .disconnect_client(&connection.caller, client)
                .await;
        }
        result
    }

    async fn run(&mut self) -> io::Result<()> {
        let mut buf = vec![0u8; MAX_GRANT_DATAGRAM];
        loop {
            let receive = self
                .socket
                .io(Interest::READABLE, |s| fdpass::recv(s, &mut buf));
            let received = if self.client.is_some() {
                receive.await?
            } else {
                match tokio::time::timeout(HELLO_TIMEOUT, receive).await {
                    Ok(received) => received?,
                    Err(_) => {
                        let message = format!("no hello within {HELLO_TIMEOUT:?}");
                        return self.violation(0, message).await;
                    }
                }
            };
            if received.len == 0 && received.fds.is_empty() && !received.truncated {
                return Ok(());
            }
            if received.truncated {
                let message = format!("datagram larger than {MAX_GRANT_DATAGRAM} bytes");
                return self.violation(0, message).await;
            }
            let request = match v1::GrantRequest::decode(&buf[..received.len]) {
                Ok(request) => request,
                Err(error) => {
                    return self
                        .violation(0, format!("malformed request: {error}"))
                        .await;
                }
            };
            // Only a re-attachment carries file descriptors: the memfd, and
            // a ring's doorbell second. Any other fd is closed when
            // `received` drops, right here.
            let reattach = matches!(request.kind, Some(grant_request::Kind::ReattachSegment(_)));
            let mut fds = received.fds.into_iter();
            let presented = match (reattach, fds.len(), received.fds_truncated) {
                (false, 0, false) => None,
                (true, 1 | 2, false) => fds.next().map(|memfd| PresentedFds {
                    memfd,
                    doorbell: fds.next(),
                }),
                (false, _, _) => {
                    let message = "file descriptors are not accepted with this request".to_owned();
                    return self.violation(request.request_id, message).await;
                }
                (true, _, _) => {
                    let message = "a re-attachment carries the memfd and at most a ring's doorbell"
                        .to_owned();
                    return self.violation(request.request_id, message).await;
                }
            };
            let id = request.request_id;
            match (request.kind, self.client) {
                (Some(grant_request::Kind::Hello(hello)), None) => self.hello(id, hello).await?,
                (None, _) => {
                    let message = "unknown or missing request kind".to_owned();
                    return self.violation(id, message).await;
                }
                (Some(_), None) => {
                    return self
                        .violation(id, "the first request must be hello".into())
                        .await;
                }
                (Some(grant_request::Kind::Hello(_)), Some(_)) => {
                    return self.violation(id, "hello was already done".into()).await;
                }
                (Some(kind), Some(client)) => {
                    let (reply, granted) = match self.operate(client, kind, presented).await {
                        Ok(answer) => answer,
                        Err(error) => (
                            grant_response::Kind::Error(v1::GrantError::from(&error)),
                            None,
                        ),
                    };
                    let fds = granted.as_ref().map(Memory::fds).unwrap_or_default();
                    self.send(id, reply, &fds).await?;
                }
            }
        }
    }

    async fn hello(&mut self, id: u64, hello: v1::Hello) -> io::Result<()> {
        if hello.protocol_version != GRANT_PROTOCOL_VERSION {
            let message = format!(
                "grant protocol version {} is not supported; this agent speaks version {GRANT_PROTOCOL_VERSION}",
                hello.protocol_version
            );
            return self.violation(id, message).await;
        }
        let (client, new) = match self
            .agent
            .connect_client(&self.caller, self.peer.process)
            .await
        {
            Ok(registered) => registered,
            Err(error) => {
                let reply = grant_response::Kind::Error(v1::GrantError::from(&error));
                return self.send(id, reply, &[]).await;
            }
        };
        self.client = Some(client);
        if new && let Some(pidfd) = self.peer.pidfd.take() {
            // Watched from the first connection until the process exits.
            self.reaper.watch_process(client, pidfd)?;
        }
        let reply = grant_response::Kind::Hello(v1::HelloReply {
            protocol_version: GRANT_PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            pid: self.caller.pid,
            uid: self.caller.uid,
            gid: self.caller.gid,
            tenant: self.caller.tenant.clone(),
            agent_instance: self.agent.instance,
        });
        self.send(id, reply, &[]).await
    }

    /// Runs one operation; granted fds are returned beside the reply.
    async fn operate(
        &self,
        client: ClientId,
        kind: grant_request::Kind,
        presented: Option<PresentedFds>,
    ) -> Result<(grant_response::Kind, Option<Memory>), ServiceError> {
        let agent = &self.agent;
        let caller = &self.caller;
        let grant = |record: SegmentRecord, access, fd| {
            let segment = grant_response::Kind::Segment(v1::SegmentGrant {
                segment: Some(convert::segment(&record)),
                access: convert::access_to_proto(access) as i32,
                token: record.token.to_vec(),
            });
            (segment, fd)
        };
        match kind {
            grant_request::Kind::CreateSegment(create) => {
                let spec = match create_spec(&create) {
                    Ok(spec) => spec,
                    Err(refusal) => {
                        return Err(agent
                            .refused(caller, "segment.create", "segments", refusal)
                            .await);
                    }
                };
                let (record, fd) = agent.create_segment(caller, spec, Some(client)).await?;
                Ok(grant(record, crate::core::Access::ReadWrite, Some(fd)))
            }
            grant_request::Kind::OpenSegment(open) => {
                let parsed =
                    open_target(&open).and_then(|t| Ok((t, convert::access(open.access)?)));
                let (target, access) = match parsed {
                    Ok(parsed) => parsed,
                    Err(refusal) => {
                        return Err(agent
                            .refused(caller, "segment.open", "segments", refusal)
                            .await);
                    }
                };
                let (record, fd) = agent.open_segment(caller, client, &target, access).await?;
                Ok(grant(record, access, Some(fd)))
            }
            grant_request::Kind::ReattachSegment(reattach) => {
                let id = SegmentId(reattach.id);
                let access = match convert::access(reattach.access) {
                    Ok(access) => access,
                    Err(refusal) => {
                        return Err(agent
                            .refused(caller, "segment.reattach", &id.to_string(), refusal)
                            .await);
                    }
                };
                let fds = presented.expect("a re-attachment carries its fd (checked in run)");
                let record = agent
                    .reattach_segment(caller, client, id, &reattach.token, access, fds)
                    .await?;
                Ok(grant(record, access, None))
            }
            grant_request::Kind::DetachSegment(detach) => {
                agent
                    .detach_segment(caller, client, SegmentId(detach.id))
                    .await?;
                Ok((grant_response::Kind::Done(v1::Done {}), None))
            }
            grant_request::Kind::DeleteSegment(delete) => {
                agent.delete_segment(caller, SegmentId(delete.id)).await?;
                Ok((grant_response::Kind::Done(v1::Done {}), None))
            }
            grant_request::Kind::Hello(_) => unreachable!("hello is handled before operate"),
        }
    }

    /// Refuses a protocol violation: audits it, answers with an error, and
    /// returns the error that ends the connection.
    async fn violation(&mut self, id: u64, message: String) -> io::Result<()> {
        tracing::warn!(pid = self.caller.pid, uid = self.caller.uid, %message, "grant protocol violation");
        let event = Event::new(
            &self.caller,
            "grant.protocol",
            "grant.sock",
            Outcome::Denied,
            message.clone(),
        );
        if let Err(error) = self.agent.audit.record(event).await {
            tracing::error!(cause = %error, "cannot audit a protocol violation");
        }
        let reply = grant_response::Kind::Error(v1::GrantError {
            code: tonic::Code::InvalidArgument as i32,
            message,
            quota: String::new(),
        });
        // The peer may already be gone; the connection ends either way.
        let _ = self.send(id, reply, &[]).await;
        Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "protocol violation",
        ))
    }

    async fn send(
        &self,
        request_id: u64,
        kind: grant_response::Kind,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> io::Result<()> {
        let bytes = v1::GrantResponse {
            request_id,
            kind: Some(kind),
        }
        .encode_to_vec();
        self.socket
            .io(Interest::WRITABLE, |s| fdpass::send(s, &bytes, fds))
            .await
    }
}

/// A nonblocking socket registered with the runtime for readiness only.
struct Readiness(UnixDatagram);

impl Readiness {
    fn new(socket: OwnedFd) -> io::Result<Readiness> {
        UnixDatagram::from_std(std::os::unix::net::UnixDatagram::from(socket)).map(Readiness)
    }

    /// Runs the nonblocking `op` whenever the socket is ready for `interest`,
    /// until it stops returning `WouldBlock`.
    async fn io<R>(
        &self,
        interest: Interest,
        mut op: impl FnMut(std::os::fd::BorrowedFd<'_>) -> io::Result<R>,
    ) -> io::Result<R> {
        self.0.async_io(interest, || op(self.0.as_fd())).await
    }
}

/// A connected process as the kernel identifies it.
struct Peer {
    process: ProcessIdentity,
    uid: u32,
    gid: u32,
    /// Handed to the reaper when this is the process's first connection.
    pidfd: Option<OwnedFd>,
}

/// The peer's kernel credentials and identity. The pid from SO_PEERCRED must
/// still be the process a pidfd of the peer refers to after its start time
/// was read, else the peer has exited (and its pid may have been reused) and
/// the connection is refused. A peer in another pid namespace (pid 0) is
/// refused too: the agent must see its clients' pids to tell them apart.
fn identify(socket: &OwnedFd) -> io::Result<Peer> {
    let refuse = |error: io::Error| {
        tracing::warn!(cause = %error, "refusing a grant connection whose peer cannot be identified");
        error
    };
    let cred = ipcplane_shm::peer::peer_credentials(socket.as_fd()).map_err(refuse)?;
    if cred.pid == 0 {
        return Err(refuse(io::Error::new(
            io::ErrorKind::Unsupported,
            "peer is in another pid namespace; run the agent in the host pid namespace (hostPID)",
        )));
    }
    let pidfd = ipcplane_shm::peer::peer_pidfd(socket.as_fd()).map_err(refuse)?;
    let start_time = ipcplane_shm::peer::process_start_time(cred.pid);
    if pidfd_pid(&pidfd)? != Some(cred.pid) {
        let gone = io::Error::new(
            io::ErrorKind::NotConnected,
            format!("peer pid {} has exited", cred.pid),
        );
        return Err(refuse(gone));
    }
    let start_time = start_time.map_err(refuse)?;
    let ring_owner =
        ipcplane_shm::peer::namespaced_pid(cred.pid)
            .ok()
            .and_then(|(inner, namespace)| {
                ipcplane_shm::ring::owner_token(inner, start_time, namespace)
            });
    Ok(Peer {
        process: ProcessIdentity {
            pid: cred.pid,
            start_time,
            ring_owner,
        },
        uid: cred.uid,
        gid: cred.gid,
        pidfd: Some(pidfd),
    })
}

/// The pid a pidfd refers to (`Pid:` in its fdinfo), `None` once it exited.
fn pidfd_pid(pidfd: &OwnedFd) -> io::Result<Option<u32>> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))?;
    let pid = info
        .lines()
        .find_map(|line| line.strip_prefix("Pid:"))
        .and_then(|pid| pid.trim().parse::<i64>().ok())
        .ok_or_else(|| io::Error::other("pidfd fdinfo has no Pid line"))?;
    Ok(u32::try_from(pid).ok().filter(|pid| *pid > 0))
}

fn create_spec(create: &v1::CreateSegment) -> Result<SegmentSpec, CoreError> {
    use v1::create_segment::Layout as Spec;
    Ok(SegmentSpec {
        name: Some(create.name.clone()).filter(|n| !n.is_empty()),
        size_bytes: create.size_bytes,
        mode: convert::sharing_mode(create.mode)?,
        lifetime: convert::lifetime(create.lifetime, create.ttl_ms)?,
        tenant: None,
        layout: match &create.layout {
            None => Layout::Plain,
            Some(Spec::Ring(ring)) => convert::ring(ring),
            Some(Spec::Semaphore(semaphore)) => convert::semaphore(semaphore),
            Some(Spec::Event(_)) => Layout::Event,
        },
    })
}

fn open_target(open: &v1::OpenSegment) -> Result<Target, CoreError> {
    match &open.target {
        Some(v1::open_segment::Target::Id(id)) => Ok(Target::Id(SegmentId(*id))),
        Some(v1::open_segment::Target::Name(name)) => Ok(Target::Name(name.clone())),
        None => Err(CoreError::InvalidArgument(
            "open_segment needs an id or a name".into(),
        )),
    }
}
