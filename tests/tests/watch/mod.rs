//! Watching the audit log live: `ipcctl watch` as a process and WatchEvents
//! over gRPC against the real agent: live order, resume without gap or
//! duplicate, a slow reader under 10,000 events in bounded memory, tenant
//! confinement, and the end of the stream when the agent stops.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipcplane::Access;
use ipcplane_e2e::{NOBODY, TestAgent, can_switch_uid, run, wait_with_timeout};
use ipcplane_proto::v1;
use ipcplane_proto::v1::audit_service_client::AuditServiceClient;
use serde_json::Value;
use tonic::transport::{Channel, Endpoint};

use super::{PEER, TIMEOUT, fields, runtime, stderr, stdout};

/// A running `ipcctl` whose stdout is read line by line as it prints.
/// Killed when dropped, so a failing test leaves no process behind.
struct Streaming {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Streaming {
    fn spawn(command: &mut Command) -> Streaming {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Streaming { child, lines }
    }

    /// The next line, waiting at most until `deadline`.
    fn next_line(&self, deadline: Instant, what: &str) -> String {
        let left = deadline.saturating_duration_since(Instant::now());
        self.lines
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no line from ipcctl while waiting for {what}: {e}"))
    }

    /// Reads JSON lines until one satisfies `wanted`; returns it.
    fn until(&self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let line = self.next_line(deadline, what);
            let event: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
            if wanted(&event) {
                return event;
            }
        }
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Sends `signal`, waits for the exit and returns the exit code and stderr.
    fn stop(self, signal: rustix::process::Signal) -> (Option<i32>, String) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, signal).expect("signal ipcctl");
        self.wait()
    }

    /// Waits for the exit and returns the exit code and stderr.
    fn wait(mut self) -> (Option<i32>, String) {
        let status = wait_with_timeout(&mut self.child, TIMEOUT).expect("ipcctl exits");
        let mut text = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            std::io::Read::read_to_string(&mut pipe, &mut text).expect("read stderr");
        }
        (status.code(), text)
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The id of the newest audit event.
fn last_event_id(agent: &TestAgent) -> u64 {
    let events = runtime().block_on(agent.audit_events());
    events.last().map_or(0, |e| e.id)
}

/// Ids of the stored `segment.open` events above `after`, oldest first.
async fn stored_open_ids(agent: &TestAgent, after: u64) -> Vec<u64> {
    agent
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e.action == "segment.open" && e.id > after)
        .map(|e| e.id)
        .collect()
}

/// Cheap, real audit events: each open of a segment that does not exist is
/// one `segment.open` DENIED row, and costs no memory in the agent.
fn denied_opens(agent: &TestAgent, count: usize) {
    let client = agent.client();
    for _ in 0..count {
        let refused = client.open_segment("no-such-segment", Access::Read);
        assert!(refused.is_err(), "the segment must not exist");
    }
}

const SEGMENT_OPENS: &str = r#"action = "segment.open""#;

async fn watch(channel: Channel, after_id: Option<u64>) -> tonic::Streaming<v1::AuditEvent> {
    AuditServiceClient::new(channel)
        .watch_events(v1::WatchEventsRequest {
            filter: SEGMENT_OPENS.into(),
            after_id,
        })
        .await
        .expect("watch events")
        .into_inner()
}

/// The ids of the next `count` events of `stream`; `pause` is called after
/// each one (the slow reader's think time).
async fn receive(
    stream: &mut tonic::Streaming<v1::AuditEvent>,
    count: usize,
    mut pause: impl AsyncFnMut(usize),
) -> Vec<u64> {
    let mut ids = Vec::with_capacity(count);
    while ids.len() < count {
        let event = tokio::time::timeout(TIMEOUT, stream.message())
            .await
            .unwrap_or_else(|_| panic!("no event after {} of {count}", ids.len()))
            .expect("the stream stays healthy")
            .expect("the stream goes on");
        assert_eq!(event.action, "segment.open", "the filter holds");
        ids.push(event.id);
        pause(ids.len()).await;
    }
    ids
}

/// The agent's resident memory, from /proc.
fn rss_bytes(agent: &TestAgent) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid()))
        .expect("read the agent's /proc status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line");
    kib * 1024
}

#[test]
fn ipcctl_watch_prints_a_create_an_open_by_another_process_a_delete_and_a_kill_live_in_order() {
    let agent = TestAgent::start();
    let listed = run(agent
        .ipcctl()
        .args(["-o", "json", "audit", "list", "--limit", "1"]));
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("audit list JSON");
    let mut list_fields: Vec<&String> = listed[0].as_object().expect("an event").keys().collect();
    list_fields.sort();
    // Resuming from the current end of the log means the first event cannot
    // race the watch's start; each step below then waits for the previous
    // line, so every line is printed live, while the watch runs.
    let start = last_event_id(&agent).to_string();
    let sut = Streaming::spawn(
        agent
            .ipcctl()
            .args(["-o", "json", "watch", "--after-id", &start]),
    );

    let client = agent.client();
    let segment = client
        .segment_builder()
        .name("watched")
        .size(4096)
        .create()
        .unwrap();
    let id = segment.id();
    let resource = format!("segments/{id}");
    let about = |action: &'static str| {
        let resource = resource.clone();
        move |event: &Value| event["action"] == action && event["resource"] == resource.as_str()
    };
    let created = sut.until("the create", about("segment.create"));

    let peer = run(agent.peer(PEER.as_ref()).args(["open", "watched", "read"]));
    assert!(peer.status.success(), "{}", stdout(&peer));
    let peer_pid: u64 = fields(&peer)["pid"].parse().unwrap();
    let opened = sut.until("the open by the peer", about("segment.open"));

    segment.detach().unwrap();
    client.delete_segment(id).unwrap();
    let deleted = sut.until("the delete", about("segment.delete"));

    // A holder killed with SIGKILL shows as its exit and its segment's end.
    let mut holder = agent
        .peer(PEER.as_ref())
        .args(["hold", "killed", "4096", "owner"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let killed_pid = u64::from(holder.id());
    holder.kill().unwrap();
    holder.wait().unwrap();
    let exited = sut.until("the killed holder's exit", move |event: &Value| {
        event["action"] == "client.exit" && event["pid"].as_u64() == Some(killed_pid)
    });
    assert_eq!(exited["outcome"], "ALLOWED");
    sut.until("the killed holder's segment ending", |event: &Value| {
        event["action"] == "segment.free"
            && event["detail"]
                .as_str()
                .is_some_and(|d| d.contains("owner"))
    });

    let ids: Vec<u64> = [&created, &opened, &deleted]
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert!(ids.is_sorted() && ids[0] < ids[2], "in log order: {ids:?}");
    assert_eq!(opened["pid"].as_u64(), Some(peer_pid), "{opened}");
    assert_ne!(created["pid"], opened["pid"]);
    assert_eq!(created["outcome"], "ALLOWED");
    let mut watch_fields: Vec<&String> = created.as_object().unwrap().keys().collect();
    watch_fields.sort();
    assert_eq!(
        watch_fields, list_fields,
        "the fields of audit list -o json"
    );

    let (code, errors) = sut.stop(rustix::process::Signal::TERM);
    assert_eq!(code, Some(0), "SIGTERM ends a watch successfully: {errors}");
    assert_eq!(errors, "");
}

#[test]
fn segment_list_watch_prints_the_list_then_only_segment_events_as_they_happen() {
    let agent = TestAgent::start();
    let client = agent.client();
    let before = client
        .segment_builder()
        .name("before")
        .size(4096)
        .create()
        .unwrap();
    let sut = Streaming::spawn(agent.ipcctl().args(["segment", "list", "-w"]));
    let deadline = Instant::now() + TIMEOUT;
    let list: Vec<String> = (0..2)
        .map(|_| sut.next_line(deadline, "the list"))
        .collect();
    assert!(
        list[0].starts_with("ID ") && list[1].contains("before"),
        "{list:?}"
    );
    // The events header comes once the list is printed; the watch opened
    // before the list was read, so everything from here on shows.
    let header = sut.next_line(deadline, "the events header");
    assert!(header.contains("ACTION"), "{header}");

    let other = agent.client(); // client.connect: not a segment event
    let after = other
        .segment_builder()
        .name("after")
        .size(4096)
        .create()
        .unwrap();
    before.detach().unwrap();
    let lines: Vec<String> = (0..2)
        .map(|_| sut.next_line(deadline, "the events"))
        .collect();
    assert!(
        lines[0].contains("segment.create")
            && lines[0].contains(&format!("segments/{}", after.id())),
        "{lines:?}"
    );
    assert!(lines[1].contains("segment.detach"), "{lines:?}");

    let (code, errors) = sut.stop(rustix::process::Signal::INT);
    assert_eq!(code, Some(0), "Ctrl-C ends a watch successfully: {errors}");
}

#[test]
fn watch_events_after_an_id_replays_then_goes_live_without_gap_or_duplicate() {
    let agent = TestAgent::start();
    denied_opens(&agent, 50);

    runtime().block_on(async {
        let resume = stored_open_ids(&agent, 0).await[24];
        // Events keep coming while the watch replays, so the hand-over from
        // the store to the live channel happens under load.
        let writer = {
            let socket = agent.grant_socket();
            std::thread::spawn(move || {
                let client = ipcplane::Client::connect_to(socket).expect("connect");
                for _ in 0..500 {
                    assert!(
                        client
                            .open_segment("no-such-segment", Access::Read)
                            .is_err()
                    );
                }
            })
        };
        let mut sut = watch(agent.channel().await, Some(resume)).await;
        let mut received = receive(&mut sut, 25, async |_| {}).await;
        tokio::task::spawn_blocking(move || writer.join().expect("writer"))
            .await
            .unwrap();
        let expected = stored_open_ids(&agent, resume).await;
        assert_eq!(expected.len(), 525);
        received.extend(receive(&mut sut, expected.len() - 25, async |_| {}).await);
        assert_eq!(
            received, expected,
            "every id after the resume point, once, in order"
        );

        // And it goes on live.
        denied_opens(&agent, 1);
        let next = receive(&mut sut, 1, async |_| {}).await;
        assert_eq!(
            next,
            stored_open_ids(&agent, *expected.last().unwrap()).await
        );
    });
}

#[test]
fn a_slow_watcher_gets_ten_thousand_events_completely_in_order_and_memory_stays_bounded() {
    const EVENTS: usize = 10_000;
    const WRITERS: usize = 4;
    let agent = TestAgent::start();
    denied_opens(&agent, 100);
    let rss_before = rss_bytes(&agent);

    let received = runtime().block_on(async {
        // A small flow-control window, so the slow reader pushes back on the
        // agent at once instead of after megabytes of buffering.
        let endpoint = Endpoint::from_static("http://localhost")
            .initial_stream_window_size(16 * 1024)
            .initial_connection_window_size(16 * 1024);
        let channel = agent.channel_with(endpoint).await;
        let mut sut = watch(channel, None).await;
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                let socket = agent.grant_socket();
                std::thread::spawn(move || {
                    let client = ipcplane::Client::connect_to(socket).expect("connect");
                    for _ in 0..EVENTS / WRITERS {
                        assert!(
                            client
                                .open_segment("no-such-segment", Access::Read)
                                .is_err()
                        );
                    }
                })
            })
            .collect();
        // The slow reader: a few milliseconds of work every ten events.
        let received = receive(&mut sut, EVENTS, async |n| {
            if n % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        for writer in writers {
            writer.join().expect("writer");
        }
        received
    });

    let stored = runtime().block_on(async {
        let after_start = stored_open_ids(&agent, 0).await[99];
        stored_open_ids(&agent, after_start).await
    });
    assert_eq!(received, stored);
    let rss_after = rss_bytes(&agent);
    println!("agent RSS: {rss_before} bytes before, {rss_after} after {EVENTS} events");
    assert!(
        rss_after <= rss_before + (32 << 20),
        "the agent's memory grew from {rss_before} to {rss_after} bytes"
    );
}

#[test]
fn a_non_admin_cannot_watch_another_tenant_and_the_refusal_is_audited() {
    if !can_switch_uid() {
        println!("SKIPPED: needs root to run ipcctl as uid {NOBODY} (CI runs as root)");
        return;
    }
    let agent = TestAgent::start();
    let mut command = agent.ipcctl();
    {
        use std::os::unix::process::CommandExt;
        command.uid(NOBODY).gid(NOBODY);
    }
    let output = run(command.args(["watch", "--tenant", "uid-0"]));
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(stdout(&output).is_empty(), "{}", stdout(&output));

    let events = runtime().block_on(agent.audit_events());
    assert!(
        events.iter().any(|e| e.action == "audit.watch"
            && e.uid == NOBODY
            && e.resource == "tenants/uid-0"
            && e.outcome == v1::Outcome::Denied as i32),
        "no denied audit.watch row in {events:?}"
    );
}

#[test]
fn a_watch_outlives_the_timeout_and_exits_69_when_the_agent_stops_without_holding_its_shutdown() {
    let mut agent = TestAgent::start();
    let timeout = Duration::from_millis(200);
    let started = Instant::now();
    let mut sut =
        Streaming::spawn(
            agent
                .ipcctl()
                .args(["--timeout", "200ms", "watch", "--after-id", "0"]),
        );
    let deadline = Instant::now() + TIMEOUT;
    let header = sut.next_line(deadline, "the header");
    assert!(header.starts_with("ID "), "{header}");
    let first = sut.next_line(deadline, "the agent.start event");
    assert!(first.contains("agent.start"), "{first}");
    // --timeout bounds starting the watch, not watching.
    std::thread::sleep((5 * timeout).saturating_sub(started.elapsed()));
    assert!(sut.is_running(), "the watch ended after --timeout");

    assert!(agent.terminate().success(), "{}", agent.log());
    let (code, errors) = sut.wait();
    assert_eq!(code, Some(69), "{errors}");
    assert_eq!(
        errors,
        "ipcctl: the agent ended the watch: the agent is shutting down\n"
    );
    assert!(
        !agent.log().contains("still open at shutdown"),
        "the watch held the graceful shutdown:\n{}",
        agent.log()
    );
}
