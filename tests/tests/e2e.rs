//! End-to-end tests: the real agent binary, real sockets, memfds, SQLite and
//! child processes. Each test starts its own agent on its own directory.
#![forbid(unsafe_code)]
#![cfg(test)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ipcplane::{Access, Error};
use ipcplane_e2e::{NOBODY, TestAgent, can_switch_uid, run, wait_with_timeout};
use ipcplane_proto::v1;
use ipcplane_shm::fdpass;
use prost::Message;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

mod cli;
mod datapath;
mod lifetimes;
mod purge;
mod reconnect;
mod restart;
mod rings;
mod watch;

pub(crate) const PEER: &str = env!("CARGO_BIN_EXE_ipcplane-peer");
const TIMEOUT: Duration = Duration::from_secs(30);

/// Starts a helper peer command with stdin and stdout piped (closing stdin
/// ends a holding peer) and returns it with the first line it printed.
fn spawn_first_line(command: &mut Command) -> (std::process::Child, String) {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().to_owned())
}

/// Starts a helper peer command with its stdin kept open (closing it ends the
/// peer) and returns it with the id it printed on its first line.
fn spawn_holding(command: &mut Command) -> (std::process::Child, u64) {
    let (child, line) = spawn_first_line(command);
    let id = line
        .strip_prefix("id=")
        .unwrap_or_else(|| panic!("{command:?} printed {line:?}"))
        .parse()
        .unwrap();
    (child, id)
}

/// The `key=value` lines a peer printed.
fn fields(output: &Output) -> BTreeMap<String, String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Polls `condition` until it holds or [`TIMEOUT`] passes.
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The audit events of `action` on `resource`.
fn events(agent: &TestAgent, action: &str, resource: &str) -> Vec<v1::AuditEvent> {
    runtime()
        .block_on(agent.audit_events())
        .into_iter()
        .filter(|e| e.action == action && e.resource == resource)
        .collect()
}

fn events_with(
    events: &[v1::AuditEvent],
    action: &str,
    outcome: v1::Outcome,
) -> Vec<v1::AuditEvent> {
    events
        .iter()
        .filter(|e| e.action == action && e.outcome == outcome as i32)
        .cloned()
        .collect()
}

#[test]
fn a_segment_created_in_one_process_shows_writes_made_in_another() {
    let agent = TestAgent::start();
    let client = agent.client();
    let segment = client
        .segment_builder()
        .name("shared")
        .size(8192)
        .create()
        .unwrap();
    segment.write_at(0, b"hello from the creator").unwrap();

    let output = run(agent.peer(PEER.as_ref()).args(["open", "shared", "rw"]));
    let peer = fields(&output);
    assert!(output.status.success(), "{}", stdout(&output));
    assert_eq!(peer["data"], "hello from the creator");
    assert_eq!(peer["id"], segment.id().to_string());

    let mut reply = [0u8; 64];
    segment.read_at(1024, &mut reply).unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert_eq!(
        reply.trim_end_matches('\0'),
        format!("reply from {}", peer["pid"])
    );
    assert_ne!(peer["pid"], std::process::id().to_string());
}

#[test]
fn a_read_only_grant_cannot_be_mapped_writable_and_no_grant_can_be_truncated() {
    let agent = TestAgent::start();
    let client = agent.client();
    let segment = client
        .segment_builder()
        .name("ro")
        .size(4096)
        .create()
        .unwrap();

    // In another process: the kernel refuses a writable mapping of the
    // read-only grant (EACCES) and any resize of a read-write grant (EPERM:
    // the seals, not the access mode).
    let output = run(agent.peer(PEER.as_ref()).args(["probe", "ro"]));
    assert!(output.status.success(), "{}", stdout(&output));
    let probe = fields(&output);
    assert!(probe["map_rw"].contains("Permission denied"), "{probe:?}");
    assert!(
        probe["shrink"].contains("Operation not permitted"),
        "{probe:?}"
    );
    assert!(
        probe["grow"].contains("Operation not permitted"),
        "{probe:?}"
    );

    // The creator's own read-write fd is sealed too.
    let truncate = rustix::fs::ftruncate(segment.as_fd(), 0);
    assert_eq!(truncate, Err(rustix::io::Errno::PERM));
    let grow = rustix::fs::ftruncate(segment.as_fd(), 1 << 20);
    assert_eq!(grow, Err(rustix::io::Errno::PERM));
}

#[test]
fn a_freed_segment_gives_its_memory_back_even_if_a_holder_kept_its_fd() {
    let agent = TestAgent::start_with("[quota]\nmax_bytes = \"1MiB\"\n");
    let client = agent.client();
    let segment = client.segment_builder().size(1 << 20).create().unwrap();
    let id = segment.id();
    // A holder that lies: it keeps the fd and a mapping, then says it detached.
    let kept = segment.as_fd().try_clone_to_owned().unwrap();
    let mapping = ipcplane_shm::mapping::Mapping::map(kept.as_fd(), Access::ReadWrite).unwrap();
    mapping.write_at(4096, b"pinned?").unwrap();
    segment.detach().unwrap();
    client.delete_segment(id).unwrap();

    // The quota is free again, and so is the memory: the pages were punched
    // out, so the kept mapping reads zeros instead of pinning 1 MiB.
    let mut read = [0xffu8; 7];
    mapping.read_at(4096, &mut read).unwrap();
    assert_eq!(read, [0; 7]);
    assert!(client.segment_builder().size(1 << 20).create().is_ok());
}

#[test]
fn another_uid_cannot_open_list_or_delete_a_tenants_segments_and_each_attempt_is_audited() {
    if !can_switch_uid() {
        println!("SKIPPED: needs root to run a child as uid {NOBODY} (CI runs as root)");
        return;
    }
    let agent = TestAgent::start();
    let client = agent.client();
    let segment = client
        .segment_builder()
        .name("private")
        .size(4096)
        .create()
        .unwrap();
    let id = segment.id().to_string();
    let as_nobody = |command: &mut Command| {
        use std::os::unix::process::CommandExt;
        command.uid(NOBODY).gid(NOBODY);
        run(command)
    };

    let open_by_id = as_nobody(
        agent
            .peer(PEER.as_ref())
            .args(["open", &format!("#{id}"), "read"]),
    );
    assert_eq!(
        fields(&open_by_id)["error"],
        "permission_denied",
        "{}",
        stdout(&open_by_id)
    );
    // By name, the other tenant's namespace is not even searched.
    let open_by_name = as_nobody(agent.peer(PEER.as_ref()).args(["open", "private", "read"]));
    assert_eq!(
        fields(&open_by_name)["error"],
        "not_found",
        "{}",
        stdout(&open_by_name)
    );
    let delete = as_nobody(agent.peer(PEER.as_ref()).args(["delete", &id]));
    assert_eq!(
        fields(&delete)["error"],
        "permission_denied",
        "{}",
        stdout(&delete)
    );

    let list = as_nobody(
        agent
            .ipcctl()
            .args(["segment", "list", "--tenant", "uid-0"]),
    );
    assert_eq!(list.status.code(), Some(4), "{}", stderr(&list));
    let get = as_nobody(agent.ipcctl().args(["segment", "get", &id]));
    assert_eq!(get.status.code(), Some(4), "{}", stderr(&get));
    let cli_delete = as_nobody(agent.ipcctl().args(["segment", "delete", &id]));
    assert_eq!(cli_delete.status.code(), Some(4), "{}", stderr(&cli_delete));
    // The agent's own figures are scoped to nobody's tenant.
    let info = as_nobody(agent.ipcctl().args(["-o", "json", "agent", "info"]));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(
        (info["segment_count"].as_u64(), info["database"].as_str()),
        (Some(0), Some("")),
        "{info}"
    );
    // Listing without naming a tenant shows only nobody's own (none).
    let own = as_nobody(agent.ipcctl().args(["-o", "json", "segment", "list"]));
    assert!(own.status.success(), "{}", stderr(&own));
    assert!(!stdout(&own).contains("private"), "{}", stdout(&own));

    // The segment is untouched and every attempt is a DENIED row for nobody.
    assert!(client.open_segment("private", Access::Read).is_ok());
    let events = runtime().block_on(agent.audit_events());
    let denied: Vec<_> = events
        .iter()
        .filter(|e| e.uid == NOBODY && e.outcome == v1::Outcome::Denied as i32)
        .map(|e| e.action.as_str())
        .collect();
    for action in [
        "segment.open",
        "segment.delete",
        "segment.list",
        "segment.get",
    ] {
        assert!(
            denied.contains(&action),
            "no denied {action} row in {denied:?}"
        );
    }
    assert_eq!(
        denied.iter().filter(|a| **a == "segment.delete").count(),
        2,
        "{denied:?}"
    );
}

#[test]
fn exceeding_each_quota_is_refused_with_its_name_creates_nothing_and_is_audited() {
    let agent = TestAgent::start_with(
        "[quota]\nmax_bytes = \"100KiB\"\nmax_segments = 2\nmax_segment_bytes = \"64KiB\"\n",
    );
    let client = agent.client();
    let quota_of = |result: Result<ipcplane::Segment, Error>| match result {
        Err(Error::QuotaExceeded { quota, .. }) => quota,
        other => panic!("expected a quota refusal, got {other:?}"),
    };
    let create = |size: u64| client.segment_builder().size(size).create();
    assert_eq!(quota_of(create(65 << 10)), "max_segment_bytes");
    let _first = create(64 << 10).unwrap();
    assert_eq!(quota_of(create(40 << 10)), "max_bytes");
    let _second = create(4 << 10).unwrap();
    assert_eq!(quota_of(create(4 << 10)), "max_segments");

    runtime().block_on(async {
        // The gRPC door applies the same quota, with QuotaFailure details.
        let mut segments =
            v1::segment_service_client::SegmentServiceClient::new(agent.channel().await);
        let status = segments
            .create_segment(v1::CreateSegmentRequest {
                size_bytes: 4096,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        use tonic_types::StatusExt;
        let details = status.get_error_details();
        assert_eq!(
            details.quota_failure().unwrap().violations[0].subject,
            "max_segments"
        );

        let listed = segments
            .list_segments(v1::ListSegmentsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .segments;
        assert_eq!(listed.len(), 2, "refused creates left nothing behind");
        let events = agent.audit_events().await;
        let denied = events_with(&events, "segment.create", v1::Outcome::Denied);
        let details: Vec<_> = denied.iter().map(|e| e.detail.as_str()).collect();
        assert_eq!(denied.len(), 4, "{details:?}");
        for quota in ["max_segment_bytes", "max_bytes", "max_segments"] {
            assert!(
                details.iter().any(|d| d.contains(quota)),
                "{quota} not in {details:?}"
            );
        }
    });
}

/// A raw SEQPACKET connection to the grant socket, for hostile traffic.
fn raw_connection(agent: &TestAgent) -> OwnedFd {
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    rustix::net::connect(&socket, &SocketAddrUnix::new(agent.grant_socket()).unwrap()).unwrap();
    let timeout = Some(TIMEOUT);
    rustix::net::sockopt::set_socket_timeout(&socket, rustix::net::sockopt::Timeout::Recv, timeout)
        .unwrap();
    socket
}

/// The agent's answer to one datagram: an error reply, or `None` if it closed.
fn answer(socket: &OwnedFd) -> Option<v1::GrantResponse> {
    let mut buf = vec![0u8; ipcplane_proto::MAX_GRANT_DATAGRAM];
    let received = fdpass::recv(socket.as_fd(), &mut buf).expect("the agent answers or closes");
    if received.len == 0 {
        return None;
    }
    Some(v1::GrantResponse::decode(&buf[..received.len]).expect("a valid response"))
}

fn request(kind: v1::grant_request::Kind) -> Vec<u8> {
    v1::GrantRequest {
        request_id: 7,
        kind: Some(kind),
    }
    .encode_to_vec()
}

fn hello() -> Vec<u8> {
    request(v1::grant_request::Kind::Hello(v1::Hello {
        protocol_version: ipcplane_proto::GRANT_PROTOCOL_VERSION,
    }))
}

/// Sends `datagrams` (the last with `fds`) and expects an error reply and/or
/// a closed connection afterwards.
fn expect_refusal(
    agent: &TestAgent,
    datagrams: &[Vec<u8>],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> String {
    let socket = raw_connection(agent);
    for (i, datagram) in datagrams.iter().enumerate() {
        let attach = if i + 1 == datagrams.len() { fds } else { &[] };
        fdpass::send(socket.as_fd(), datagram, attach).unwrap();
        if i + 1 < datagrams.len() {
            let reply = answer(&socket).expect("an answer to the earlier datagram");
            assert!(
                matches!(reply.kind, Some(v1::grant_response::Kind::Hello(_))),
                "{reply:?}"
            );
        }
    }
    let message = match answer(&socket) {
        Some(v1::GrantResponse {
            kind: Some(v1::grant_response::Kind::Error(error)),
            ..
        }) => error.message,
        None => String::from("closed"),
        Some(other) => panic!("expected a refusal, got {other:?}"),
    };
    // After a refusal the connection is closed.
    assert!(
        answer(&socket).is_none(),
        "connection still open after: {message}"
    );
    message
}

#[test]
fn malformed_grant_traffic_is_refused_the_agent_keeps_serving_and_leaks_no_fds() {
    let agent = TestAgent::start();
    let rt = runtime();
    // One control connection for the whole test, so it counts in the baseline.
    let mut control = rt.block_on(async {
        v1::agent_service_client::AgentServiceClient::new(agent.channel().await)
    });
    let mut clients_connected = || {
        rt.block_on(control.get_agent(v1::GetAgentRequest {}))
            .unwrap()
            .into_inner()
            .client_count
    };
    // This process is a client for the whole test (hostile connections that
    // say hello belong to it too), so it is part of the baseline.
    let _anchor = agent.client();
    // Warm up lazily opened resources with a client process that leaves no
    // segment behind and exits, so the agent forgets it.
    let cycle = || {
        let output = run(agent.peer(PEER.as_ref()).arg("cycle"));
        assert!(output.status.success(), "{}", stdout(&output));
    };
    cycle();
    eventually("the warm-up client is gone", || clients_connected() == 1);
    let baseline = agent.open_fds();

    let create = request(v1::grant_request::Kind::CreateSegment(v1::CreateSegment {
        name: "x".repeat(200),
        size_bytes: 4096,
        ..Default::default()
    }));
    let random: Vec<u8> = (0..512u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    // Field 99 (unknown to the agent) as a varint: a request of unknown kind.
    let unknown_kind = vec![0x98, 0x06, 0x01];
    let memfd = ipcplane_shm::memfd::create_sealed("stray", 4096).unwrap();

    let cases: Vec<(&str, Vec<Vec<u8>>, bool)> = vec![
        ("random bytes", vec![random.clone()], false),
        (
            "oversized datagram",
            vec![vec![0x0a; ipcplane_proto::MAX_GRANT_DATAGRAM + 1]],
            false,
        ),
        (
            "truncated request after hello",
            vec![hello(), create[..create.len() / 2].to_vec()],
            false,
        ),
        ("unknown message kind", vec![hello(), unknown_kind], false),
        ("request before hello", vec![create.clone()], false),
        ("fd where none is expected", vec![hello()], true),
        ("second hello", vec![hello(), hello()], false),
        (
            "wrong protocol version",
            vec![request(v1::grant_request::Kind::Hello(v1::Hello {
                protocol_version: 999,
            }))],
            false,
        ),
    ];
    for (what, datagrams, with_fd) in cases {
        let fds = if with_fd { vec![memfd.as_fd()] } else { vec![] };
        let datagrams = if with_fd {
            // The fd rides on a second, otherwise valid, datagram.
            [datagrams, vec![create.clone()]].concat()
        } else {
            datagrams
        };
        let message = expect_refusal(&agent, &datagrams, &fds);
        println!("{what}: {message}");
    }

    for _ in 0..1000 {
        drop(raw_connection(&agent));
    }

    // Still serving others.
    cycle();
    eventually("the agent's fd count returns to its baseline", || {
        clients_connected() == 1 && agent.open_fds() <= baseline
    });

    let events = rt.block_on(agent.audit_events());
    assert!(events_with(&events, "grant.protocol", v1::Outcome::Denied).len() >= 8);
}

#[test]
fn a_restart_keeps_the_audit_log_and_quota_overrides() {
    let mut agent = TestAgent::start();
    let rt = runtime();
    let override_quota = v1::Quota {
        tenant: "payments".into(),
        max_bytes: Some(1 << 20),
        max_segments: Some(3),
        max_segment_bytes: None,
        ..Default::default()
    };
    let before = rt.block_on(async {
        let mut tenants =
            v1::tenant_service_client::TenantServiceClient::new(agent.channel().await);
        tenants
            .update_quota(v1::UpdateQuotaRequest {
                quota: Some(override_quota.clone()),
                update_mask: None,
            })
            .await
            .unwrap();
        agent.audit_events().await
    });
    assert_eq!(
        events_with(&before, "quota.update", v1::Outcome::Allowed).len(),
        1
    );

    assert!(agent.terminate().success(), "{}", agent.log());
    agent.restart();

    rt.block_on(async {
        let mut tenants =
            v1::tenant_service_client::TenantServiceClient::new(agent.channel().await);
        let quota = tenants
            .get_quota(v1::GetQuotaRequest {
                tenant: "payments".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(quota.overridden);
        assert_eq!(
            (quota.max_bytes, quota.max_segments, quota.max_segment_bytes),
            (Some(1 << 20), Some(3), None)
        );
        let after = agent.audit_events().await;
        assert_eq!(&after[..before.len()], &before[..], "the old log is intact");
        assert!(after.iter().any(|e| e.action == "agent.stop"));
    });
}

#[test]
fn every_acknowledged_operation_is_audited_even_after_sigkill() {
    let mut agent = TestAgent::start();
    // Four clients at once, so commits are shared (group commit) and most
    // replies are acknowledged by a batch another request led.
    let acknowledged: Vec<(u64, u64)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|worker| {
                let agent = &agent;
                scope.spawn(move || {
                    let client = agent.client();
                    (0..25)
                        .map(|i| {
                            let segment = client
                                .segment_builder()
                                .name(format!("w{worker}-{i}"))
                                .size(4096)
                                .create()
                                .unwrap();
                            let id = segment.id().get();
                            segment.detach().unwrap();
                            (id, worker)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let client = agent.client();
    let deleted = acknowledged[0].0;
    client
        .delete_segment(ipcplane::SegmentId::new(deleted))
        .unwrap();
    // Killed right after the last reply: no chance to flush anything more.
    agent.kill();
    drop(client);
    agent.restart();

    let events = runtime().block_on(agent.audit_events());
    let mut created: Vec<u64> = events_with(&events, "segment.create", v1::Outcome::Allowed)
        .iter()
        .map(|e| e.resource.trim_start_matches("segments/").parse().unwrap())
        .collect();
    created.sort_unstable();
    let mut ids: Vec<u64> = acknowledged.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    assert_eq!(created, ids);
    assert_eq!(
        events_with(&events, "segment.detach", v1::Outcome::Allowed).len(),
        ids.len()
    );
    let deletes = events_with(&events, "segment.delete", v1::Outcome::Allowed);
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].resource, format!("segments/{deleted}"));

    // Ids are never reused across the restart.
    let next = agent
        .client()
        .segment_builder()
        .size(4096)
        .create()
        .unwrap();
    assert!(next.id().get() > *ids.iter().max().unwrap());
}

/// Path of a compiled example of the SDK.
fn example(name: &str) -> PathBuf {
    ipcplane_e2e::workspace_bin(&format!("examples/{name}"))
}

/// The segment named "demo" as `ipcctl -o json segment list` shows it.
fn demo_segment(agent: &TestAgent) -> Option<serde_json::Value> {
    let list = run(agent.ipcctl().args(["-o", "json", "segment", "list"]));
    assert!(list.status.success(), "{}", stderr(&list));
    let segments: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    segments
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "demo")
        .cloned()
}

#[test]
fn the_tour_works_health_example_pair_list_delete_and_audit() {
    let agent = TestAgent::start();
    let health = run(agent.ipcctl().args(["agent", "health"]));
    assert!(health.status.success(), "{}", stderr(&health));
    assert!(stdout(&health).contains("SERVING"));

    let mut producer = Command::new(example("producer"))
        .env(
            ipcplane_proto::paths::ENV_GRANT_SOCKET,
            agent.grant_socket(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the producer has created the segment and written to it.
    let mut lines = BufReader::new(producer.stdout.take().unwrap()).lines();
    let created = lines.next().expect("producer output").unwrap();
    assert!(created.contains("demo"), "{created}");
    let wrote = lines.next().expect("producer output").unwrap();
    assert!(wrote.contains("hello"), "{wrote}");

    // While the producer holds it, the list shows it with its owner.
    let demo = demo_segment(&agent).expect("the demo segment is listed");
    assert_eq!(demo["owner_pid"], producer.id());
    assert_eq!(
        demo["tenant"],
        format!("uid-{}", rustix::process::getuid().as_raw())
    );
    assert_eq!(demo["size_bytes"], 1 << 20);
    assert_eq!(demo["attachment_count"], 1);
    let id = demo["id"].as_u64().unwrap().to_string();

    let consumer = run(Command::new(example("consumer")).env(
        ipcplane_proto::paths::ENV_GRANT_SOCKET,
        agent.grant_socket(),
    ));
    assert!(consumer.status.success(), "{}", stderr(&consumer));
    assert!(stdout(&consumer).contains("hello"), "{}", stdout(&consumer));
    let status = wait_with_timeout(&mut producer, TIMEOUT).expect("producer exits");
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l.contains("consumer replied")),
        "{rest:?}"
    );
    // Both have exited: persistent, so still listed, with no attachment.
    eventually("both attachments are released", || {
        demo_segment(&agent).is_some_and(|s| s["attachment_count"] == 0)
    });

    let delete = run(agent.ipcctl().args(["segment", "delete", &id]));
    assert!(delete.status.success(), "{}", stderr(&delete));
    assert!(demo_segment(&agent).is_none());

    let audit = run(agent.ipcctl().args(["-o", "json", "audit", "list"]));
    assert!(audit.status.success(), "{}", stderr(&audit));
    let events: serde_json::Value = serde_json::from_slice(&audit.stdout).unwrap();
    let actions: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"] == format!("segments/{id}"))
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for step in ["segment.create", "segment.open", "segment.delete"] {
        assert!(actions.contains(&step), "{step} missing from {actions:?}");
    }
}

#[test]
fn bad_arguments_get_clear_errors_with_the_right_status_and_nothing_crashes() {
    let agent = TestAgent::start_with("[quota]\nmax_segment_bytes = \"1MiB\"\n");
    runtime().block_on(async {
        let channel = agent.channel().await;
        let mut segments = v1::segment_service_client::SegmentServiceClient::new(channel.clone());
        let mut audit = v1::audit_service_client::AuditServiceClient::new(channel.clone());
        let code = |result: Result<tonic::Response<_>, tonic::Status>| {
            let status = result.map(|_: tonic::Response<()>| ()).unwrap_err();
            assert!(!status.message().is_empty());
            status.code()
        };
        let unknown = segments
            .get_segment(v1::GetSegmentRequest { id: 999_999 })
            .await;
        assert_eq!(code(unknown.map(|r| r.map(drop))), tonic::Code::NotFound);
        let zero = segments
            .create_segment(v1::CreateSegmentRequest {
                size_bytes: 0,
                ..Default::default()
            })
            .await;
        assert_eq!(
            code(zero.map(|r| r.map(drop))),
            tonic::Code::InvalidArgument
        );
        let huge = segments
            .create_segment(v1::CreateSegmentRequest {
                size_bytes: 2 << 20,
                ..Default::default()
            })
            .await;
        assert_eq!(
            code(huge.map(|r| r.map(drop))),
            tonic::Code::ResourceExhausted
        );
        let bad_mode = segments
            .create_segment(v1::CreateSegmentRequest {
                size_bytes: 1,
                mode: 42,
                ..Default::default()
            })
            .await;
        assert_eq!(
            code(bad_mode.map(|r| r.map(drop))),
            tonic::Code::InvalidArgument
        );
        for filter in [
            "tenant =",
            "colour = red",
            "tenant = \"open",
            "owner_pid = abc",
        ] {
            let listed = segments
                .list_segments(v1::ListSegmentsRequest {
                    filter: filter.into(),
                    ..Default::default()
                })
                .await;
            assert_eq!(
                code(listed.map(|r| r.map(drop))),
                tonic::Code::InvalidArgument,
                "{filter}"
            );
        }
        let token = segments
            .list_segments(v1::ListSegmentsRequest {
                page_token: "garbage".into(),
                ..Default::default()
            })
            .await;
        assert_eq!(
            code(token.map(|r| r.map(drop))),
            tonic::Code::InvalidArgument
        );
        let outcome = audit
            .list_audit_events(v1::ListAuditEventsRequest {
                filter: "outcome = MAYBE".into(),
                ..Default::default()
            })
            .await;
        assert_eq!(
            code(outcome.map(|r| r.map(drop))),
            tonic::Code::InvalidArgument
        );
    });

    let cli = |args: &[&str]| run(agent.ipcctl().args(args));
    let unknown = cli(&["segment", "get", "999999"]);
    assert_eq!(unknown.status.code(), Some(3), "{}", stderr(&unknown));
    assert!(
        stderr(&unknown).contains("not found"),
        "{}",
        stderr(&unknown)
    );
    for size in ["0", "-5", "lots", "1.5MiB"] {
        let bad = cli(&["segment", "create", "--size", size]);
        assert_eq!(bad.status.code(), Some(2), "size {size}: {}", stderr(&bad));
    }
    let too_big = cli(&["segment", "create", "--size", "2MiB"]);
    assert_eq!(too_big.status.code(), Some(5), "{}", stderr(&too_big));
    assert!(
        stderr(&too_big).contains("max_segment_bytes"),
        "{}",
        stderr(&too_big)
    );
    let token = cli(&[
        "segment",
        "list",
        "--page-token",
        "garbage",
        "--all-pages=false",
    ]);
    assert_eq!(token.status.code(), Some(2), "{}", stderr(&token));
    assert!(stderr(&token).contains("page_token"), "{}", stderr(&token));
    let filter = cli(&["segment", "list", "--filter", "tenant ="]);
    assert_ne!(filter.status.code(), Some(0));
    assert!(
        stderr(&filter).contains("invalid filter"),
        "{}",
        stderr(&filter)
    );

    let health = cli(&["agent", "health"]);
    assert!(stdout(&health).contains("SERVING"), "the agent is still up");
}

#[test]
fn server_reflection_lists_every_service_so_grpcurl_works() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let agent = TestAgent::start();
    let services = runtime().block_on(async {
        let mut reflection = ServerReflectionClient::new(agent.channel().await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = reflection
            .server_reflection_info(tokio_stream::once(request))
            .await
            .unwrap()
            .into_inner();
        match answers.message().await.unwrap().unwrap().message_response {
            Some(MessageResponse::ListServicesResponse(list)) => list.service,
            other => panic!("expected a service list, got {other:?}"),
        }
    });
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "ipcplane.v1.AgentService",
        "ipcplane.v1.SegmentService",
        "ipcplane.v1.ClientService",
        "ipcplane.v1.TenantService",
        "ipcplane.v1.AuditService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
}
