//! Reconnecting to an agent that did not restart: it counts a process's
//! attachments across that process's connections, so the SDK must not
//! present them again. The agent says which run of it answers each hello
//! (`agent_instance`); these tests check both sides against the real agent.

use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use ipcplane::{Access, Lifetime};
use ipcplane_e2e::TestAgent;
use ipcplane_proto::v1::{self, grant_response};
use ipcplane_shm::fdpass;
use rustix::process::{PidfdFlags, PidfdGetfdFlags};

use super::{answer, eventually, hello, raw_connection, runtime};

/// The agent instance that answers a hello on a new raw connection.
fn instance(agent: &TestAgent) -> u64 {
    let socket = raw_connection(agent);
    fdpass::send(socket.as_fd(), &hello(), &[]).unwrap();
    match answer(&socket).and_then(|reply| reply.kind) {
        Some(grant_response::Kind::Hello(hello)) => hello.agent_instance,
        other => panic!("expected a hello reply, got {other:?}"),
    }
}

/// The attachment count of every listed segment.
fn attachment_counts(agent: &TestAgent) -> Vec<u64> {
    agent
        .listed_segments()
        .iter()
        .map(|segment| segment["attachment_count"].as_u64().unwrap())
        .collect()
}

/// How many audit events `action` has with `outcome`.
fn audited(agent: &TestAgent, action: &str, outcome: v1::Outcome) -> usize {
    runtime()
        .block_on(agent.audit_events())
        .iter()
        .filter(|event| event.action == action && event.outcome == outcome as i32)
        .count()
}

/// A duplicate of this process's one connection to `agent`'s grant socket,
/// the SDK's own, taken from this process's fd table with `pidfd_getfd`:
/// the SDK does not hand its socket out. Only sockets are duplicated (closing
/// a duplicate of anything else could drop its record locks).
fn own_grant_connection(agent: &TestAgent) -> OwnedFd {
    let me = rustix::process::pidfd_open(rustix::process::getpid(), PidfdFlags::empty()).unwrap();
    let grant_socket = agent.grant_socket();
    let mut connections: Vec<OwnedFd> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            if !target.as_os_str().as_bytes().starts_with(b"socket:") {
                return None;
            }
            let fd: RawFd = entry.file_name().to_str()?.parse().ok()?;
            match rustix::process::pidfd_getfd(&me, fd, PidfdGetfdFlags::empty()) {
                Ok(socket) => Some(socket),
                // Closed since it was listed, by another test's thread.
                Err(rustix::io::Errno::BADF) => None,
                Err(error) => panic!("cannot duplicate this process's fd {fd}: {error}"),
            }
        })
        .filter(|socket| {
            rustix::net::getpeername(socket)
                .ok()
                .flatten()
                .and_then(|peer| rustix::net::SocketAddrUnix::try_from(peer).ok())
                .is_some_and(|peer| peer.path_bytes() == Some(grant_socket.as_os_str().as_bytes()))
        })
        .collect();
    assert_eq!(
        connections.len(),
        1,
        "expected exactly one connection to {}",
        grant_socket.display()
    );
    connections.pop().unwrap()
}

#[test]
fn the_agent_says_the_same_instance_on_every_connection_and_another_after_a_restart() {
    let mut agent = TestAgent::start();
    let first = instance(&agent);
    assert_ne!(first, 0, "0 is what an agent from before instances says");
    assert_eq!(instance(&agent), first);

    agent.kill();
    agent.restart();

    let restarted = instance(&agent);
    assert_ne!(restarted, 0);
    assert_ne!(restarted, first);
    assert_eq!(instance(&agent), restarted);
}

#[test]
fn a_process_keeps_exactly_its_attachments_when_the_agent_closes_its_connection() {
    let agent = TestAgent::start();
    let holder = agent.client();
    let segment = holder
        .segment_builder()
        .name("held")
        .size(4096)
        .lifetime(Lifetime::OnLastDetach)
        .create()
        .unwrap();
    let connection = own_grant_connection(&agent);
    assert_eq!(attachment_counts(&agent), [1]);

    // Other connections of the same process come and go.
    let other = agent.client();
    let opened = other.open_segment("held", Access::Read).unwrap();
    assert_eq!(attachment_counts(&agent), [2]);
    drop(opened);
    drop(other);
    drop(agent.client());
    assert_eq!(attachment_counts(&agent), [1]);

    // A malformed datagram on the holder's connection: the agent closes it
    // for the protocol violation, and keeps running.
    fdpass::send(connection.as_fd(), &[0xff, 0xff], &[]).unwrap();
    drop(connection);
    eventually("the holder reconnected", || holder.reconnects() == 1);
    assert_eq!(
        audited(&agent, "grant.protocol", v1::Outcome::Denied),
        1,
        "{}",
        agent.log()
    );

    // The same agent still counts the attachment: the SDK presented nothing.
    assert_eq!(attachment_counts(&agent), [1]);
    assert_eq!(audited(&agent, "segment.reattach", v1::Outcome::Allowed), 0);
    segment.write_at(0, b"still mapped").unwrap();

    // Its one attachment released over the new connection, the segment ends.
    segment.detach().unwrap();
    assert!(agent.listed_segments().is_empty());
}
