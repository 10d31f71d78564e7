//! Agent restarts: the segment table survives in SQLite, holders present
//! their segments again (token + the fd itself) and the agent adopts only
//! the genuine memfd; segments nobody presents are lost, and audited so.
//! These tests speak the grant protocol directly, as a hostile client would.

use std::os::fd::{AsFd, OwnedFd};

use ipcplane_e2e::TestAgent;
use ipcplane_proto::v1::{self, grant_request, grant_response};
use ipcplane_shm::fdpass;
use ipcplane_shm::memfd;
use prost::Message;

use super::{answer, eventually, hello, raw_connection, request, run, runtime, stderr};

/// A raw connection that has said hello.
fn connected(agent: &TestAgent) -> OwnedFd {
    let socket = raw_connection(agent);
    fdpass::send(socket.as_fd(), &hello(), &[]).unwrap();
    let reply = answer(&socket).expect("hello answered");
    assert!(
        matches!(reply.kind, Some(grant_response::Kind::Hello(_))),
        "{reply:?}"
    );
    socket
}

/// Creates a segment; returns its id, token and read-write fd.
fn create(socket: &OwnedFd, name: &str) -> (u64, Vec<u8>, OwnedFd) {
    let create = request(grant_request::Kind::CreateSegment(v1::CreateSegment {
        name: name.into(),
        size_bytes: 4096,
        ..Default::default()
    }));
    fdpass::send(socket.as_fd(), &create, &[]).unwrap();
    let mut buf = vec![0u8; ipcplane_proto::MAX_GRANT_DATAGRAM];
    let received = fdpass::recv(socket.as_fd(), &mut buf).unwrap();
    let reply = v1::GrantResponse::decode(&buf[..received.len]).unwrap();
    let Some(grant_response::Kind::Segment(grant)) = reply.kind else {
        panic!("expected a grant, got {reply:?}");
    };
    let fd = received.fds.into_iter().next().expect("the grant's fd");
    (grant.segment.unwrap().id, grant.token, fd)
}

/// Presents `fd` as segment `id` with `token`; the agent's answer.
fn reattach(socket: &OwnedFd, id: u64, token: &[u8], fd: &OwnedFd) -> Option<grant_response::Kind> {
    let reattach = request(grant_request::Kind::ReattachSegment(v1::ReattachSegment {
        id,
        token: token.to_vec(),
        access: v1::Access::ReadWrite as i32,
    }));
    fdpass::send(socket.as_fd(), &reattach, &[fd.as_fd()]).unwrap();
    answer(socket).and_then(|reply| reply.kind)
}

fn outcomes(agent: &TestAgent, action: &str) -> Vec<i32> {
    runtime()
        .block_on(agent.audit_events())
        .into_iter()
        .filter(|e| e.action == action)
        .map(|e| e.outcome)
        .collect()
}

#[test]
fn after_a_restart_only_the_genuine_memfd_with_its_token_is_adopted() {
    let mut agent = TestAgent::start();
    let (id, token, genuine) = create(&connected(&agent), "genuine");
    agent.kill();
    agent.restart();
    let unclaimed = agent.listed_segments();
    assert_eq!(
        (unclaimed[0]["id"].as_u64(), unclaimed[0]["state"].as_str()),
        (Some(id), Some("UNCLAIMED"))
    );

    let socket = connected(&agent);
    let refused = |kind: Option<grant_response::Kind>| matches!(kind, Some(grant_response::Kind::Error(e)) if e.code == tonic::Code::PermissionDenied as i32);
    // A forged token with the genuine fd.
    assert!(refused(reattach(&socket, id, &[0; 16], &genuine)));
    // The genuine token with another memfd of the same size.
    let impostor = memfd::create_sealed("impostor", 4096).unwrap();
    assert!(refused(reattach(&socket, id, &token, &impostor)));
    // An unsealed memfd.
    let unsealed = rustix::fs::memfd_create("unsealed", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&unsealed, 4096).unwrap();
    assert!(refused(reattach(&socket, id, &token, &unsealed)));
    // A read-only description claimed as read-write.
    let read_only = memfd::reopen(genuine.as_fd(), ipcplane_shm::Access::Read).unwrap();
    assert!(refused(reattach(&socket, id, &token, &read_only)));
    assert_eq!(
        agent.listed_segments()[0]["state"],
        "UNCLAIMED",
        "the genuine segment is unaffected"
    );

    match reattach(&socket, id, &token, &genuine) {
        Some(grant_response::Kind::Segment(grant)) => assert_eq!(grant.segment.unwrap().id, id),
        other => panic!("the genuine segment was refused: {other:?}"),
    }
    let adopted = agent.listed_segments();
    assert_eq!(
        (
            adopted[0]["state"].as_str(),
            adopted[0]["attachment_count"].as_u64()
        ),
        (Some("ACTIVE"), Some(1))
    );
    let denied = v1::Outcome::Denied as i32;
    let allowed = v1::Outcome::Allowed as i32;
    assert_eq!(
        outcomes(&agent, "segment.reattach"),
        [denied, denied, denied, denied, allowed]
    );

    // Adopted means usable: another process can open it and sees its bytes.
    rustix::io::pwrite(&genuine, b"survived", 0).unwrap();
    let output = run(agent
        .peer(super::PEER.as_ref())
        .args(["open", "genuine", "read"]));
    assert_eq!(
        super::fields(&output)["data"],
        "survived",
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_segment_nobody_holds_is_lost_at_restart_without_an_fd_store() {
    let mut agent = TestAgent::start_with("reattach_grace_seconds = 0\n");
    let socket = connected(&agent);
    let (id, _, fd) = create(&socket, "unheld");
    drop((socket, fd));
    agent.kill();
    agent.restart();
    eventually("the unheld segment is lost", || {
        agent.listed_segments().is_empty()
    });
    let lost: Vec<_> = runtime()
        .block_on(agent.audit_events())
        .into_iter()
        .filter(|e| e.action == "segment.lost")
        .map(|e| e.resource)
        .collect();
    assert_eq!(lost, [format!("segments/{id}")]);
}

#[test]
fn under_systemd_a_segment_nobody_holds_survives_through_the_fd_store() {
    // This test plays the service manager: it receives the notifications
    // and keeps the stored memfd, then passes it back at restart.
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let manager = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    manager.set_read_timeout(Some(super::TIMEOUT)).unwrap();
    let receive = || {
        let mut buf = [0u8; 512];
        let received = fdpass::recv(manager.as_fd(), &mut buf).unwrap();
        (
            String::from_utf8_lossy(&buf[..received.len]).into_owned(),
            received.fds,
        )
    };
    let mut agent = TestAgent::start_with_env("NOTIFY_SOCKET", notify_path.clone());
    assert_eq!(receive().0, "READY=1\n");

    let client = agent.client();
    let segment = client
        .segment_builder()
        .name("stored")
        .size(4096)
        .create()
        .unwrap();
    segment.write_at(0, b"kept by the manager").unwrap();
    let id = segment.id().get();
    let (message, mut fds) = receive();
    assert_eq!(message, format!("FDSTORE=1\nFDNAME=segment-{id}\n"));
    let stored = fds.pop().expect("the memfd rides with FDSTORE");
    segment.detach().unwrap();
    drop(client);

    // Nobody holds it now but the manager; the agent dies and comes back.
    agent.kill();
    agent.restart_with_stored_fd(stored, &format!("segment-{id}"));
    assert_eq!(receive().0, "READY=1\n");
    let listed = agent.listed_segments();
    assert_eq!(
        (listed[0]["id"].as_u64(), listed[0]["state"].as_str()),
        (Some(id), Some("ACTIVE"))
    );
    let output = run(agent
        .peer(super::PEER.as_ref())
        .args(["open", "stored", "read"]));
    assert_eq!(
        super::fields(&output)["data"],
        "kept by the manager",
        "{}",
        stderr(&output)
    );
    assert_eq!(
        outcomes(&agent, "segment.restore"),
        [v1::Outcome::Allowed as i32]
    );

    // Deleting it drops it from the store as well.
    let delete = run(agent.ipcctl().args(["segment", "delete", &id.to_string()]));
    assert!(delete.status.success(), "{}", stderr(&delete));
    assert_eq!(
        receive().0,
        format!("FDSTOREREMOVE=1\nFDNAME=segment-{id}\n")
    );
}

/// A streaming peer and the id it printed.
fn streamer(agent: &TestAgent, role: &str) -> (std::process::Child, u64) {
    super::spawn_holding(agent.peer(super::PEER.as_ref()).args([role, "stream"]))
}

/// The `key=value` lines a finished peer printed after its first line.
fn finish(mut child: std::process::Child) -> std::collections::BTreeMap<String, String> {
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    super::fields(&output)
}

#[test]
fn two_processes_stream_through_twenty_agent_kills_and_every_segment_is_readopted() {
    const RESTARTS: usize = 20;
    let mut agent = TestAgent::start();
    let (producer, id) = streamer(&agent, "stream-produce");
    let (consumer, opened) = streamer(&agent, "stream-consume");
    assert_eq!(id, opened);
    let producer_pid = producer.id();

    for round in 0..RESTARTS {
        agent.kill();
        agent.restart();
        eventually(
            &format!("both holders present the segment again after restart {round}"),
            || {
                agent.listed_segments().iter().any(|s| {
                    s["id"] == id
                        && s["state"] == "ACTIVE"
                        && s["attachment_count"] == 2
                        && s["owner_pid"] == producer_pid
                })
            },
        );
    }

    let sent = finish(producer);
    let received = finish(consumer);
    assert_eq!(
        sent["sent"], received["received"],
        "every message arrived, in order"
    );
    assert!(sent["sent"].parse::<u64>().unwrap() > 0);

    let events = runtime().block_on(agent.audit_events());
    assert!(
        events.windows(2).all(|pair| pair[0].id < pair[1].id),
        "the audit log is intact"
    );
    let count = |action: &str, outcome: v1::Outcome| {
        events
            .iter()
            .filter(|e| e.action == action && e.outcome == outcome as i32)
            .count()
    };
    assert_eq!(count("agent.start", v1::Outcome::Allowed), RESTARTS + 1);
    assert_eq!(
        count("segment.reattach", v1::Outcome::Allowed),
        2 * RESTARTS
    );
    assert_eq!(count("segment.reattach", v1::Outcome::Denied), 0);
}

#[test]
fn another_tenant_presenting_a_segment_with_its_token_and_fd_is_refused_and_audited() {
    use std::os::unix::process::CommandExt;
    if !ipcplane_e2e::can_switch_uid() {
        println!(
            "SKIPPED: needs root to run a child as uid {} (CI runs as root)",
            ipcplane_e2e::NOBODY
        );
        return;
    }
    let mut agent = TestAgent::start();
    let (id, token, genuine) = create(&connected(&agent), "mine");
    agent.kill();
    agent.restart();
    // Even holding the genuine fd and token, another tenant cannot adopt it.
    let hex: String = token.iter().map(|b| format!("{b:02x}")).collect();
    let output = run(agent
        .peer(super::PEER.as_ref())
        .args(["reattach-stdin", &id.to_string(), &hex])
        .uid(ipcplane_e2e::NOBODY)
        .gid(ipcplane_e2e::NOBODY)
        .stdin(genuine.try_clone().unwrap()));
    assert_eq!(
        super::fields(&output).get("error").map(String::as_str),
        Some((tonic::Code::PermissionDenied as i32).to_string().as_str()),
        "{}",
        super::stdout(&output)
    );
    assert_eq!(agent.listed_segments()[0]["state"], "UNCLAIMED");
    let denied: Vec<_> = runtime()
        .block_on(agent.audit_events())
        .into_iter()
        .filter(|e| e.action == "segment.reattach" && e.uid == ipcplane_e2e::NOBODY)
        .map(|e| e.outcome)
        .collect();
    assert_eq!(denied, [v1::Outcome::Denied as i32]);
    // The genuine holder still can.
    assert!(matches!(
        reattach(&connected(&agent), id, &token, &genuine),
        Some(grant_response::Kind::Segment(_))
    ));
}
