//! Nothing leaks: when a client process exits, by exit or by SIGKILL, the
//! agent notices through its pidfd, releases what it held, ends its `owner`
//! segments and audits it all; `on_last_detach`, `ttl` and draining segments
//! end when they should. Real agent, real child processes.

use std::process::Child;
use std::time::{Duration, Instant};

use ipcplane_e2e::TestAgent;
use ipcplane_proto::v1;
use serde_json::Value;

use super::{PEER, events, eventually, run, runtime, spawn_holding, stderr};

/// A peer holding segments until it is told to exit or killed.
struct Holder {
    child: Child,
    /// The id the peer printed (the segment it created or opened).
    id: u64,
}

impl Holder {
    fn start(agent: &TestAgent, args: &[&str]) -> Holder {
        let (child, id) = spawn_holding(agent.peer(PEER.as_ref()).args(args));
        Holder { child, id }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Exits normally, without detaching anything.
    fn exit(mut self) {
        drop(self.child.stdin.take());
        assert!(self.child.wait().unwrap().success());
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

fn segment(agent: &TestAgent, id: u64) -> Option<Value> {
    agent.listed_segments().into_iter().find(|s| s["id"] == id)
}

fn attachments(agent: &TestAgent, id: u64) -> Option<u64> {
    segment(agent, id).and_then(|s| s["attachment_count"].as_u64())
}

/// A persistent segment made by this test process, which then detaches.
fn persistent(agent: &TestAgent, name: &str) -> u64 {
    let segment = agent
        .client()
        .segment_builder()
        .name(name)
        .size(4096)
        .create()
        .unwrap();
    let id = segment.id().get();
    segment.detach().unwrap();
    id
}

fn a_dead_holder_releases_everything(end: fn(Holder)) {
    let agent = TestAgent::start();
    let shared = persistent(&agent, "shared");
    let holder = Holder::start(&agent, &["hold-both", "own", "shared"]);
    let (pid, own) = (holder.pid(), holder.id);
    assert_eq!(attachments(&agent, shared), Some(1));
    assert_eq!(attachments(&agent, own), Some(1));

    end(holder);
    eventually(
        "the owner segment is freed and the attachment released",
        || segment(&agent, own).is_none() && attachments(&agent, shared) == Some(0),
    );
    let exits: Vec<_> = runtime()
        .block_on(agent.audit_events())
        .into_iter()
        .filter(|e| e.action == "client.exit" && e.pid == pid)
        .collect();
    assert_eq!(exits.len(), 1, "one client.exit row for pid {pid}");
    let freed = events(&agent, "segment.free", &format!("segments/{own}"));
    assert_eq!(freed.len(), 1);
    assert!(freed[0].detail.contains("owner"), "{}", freed[0].detail);
}

#[test]
fn a_holder_killed_with_sigkill_loses_its_owner_segments_and_attachments() {
    a_dead_holder_releases_everything(Holder::kill);
}

#[test]
fn a_holder_that_exits_without_detaching_loses_them_too() {
    a_dead_holder_releases_everything(Holder::exit);
}

#[test]
fn on_last_detach_ends_when_the_second_of_two_holders_exits() {
    let agent = TestAgent::start();
    let first = Holder::start(&agent, &["hold", "d", "4096", "on-last-detach"]);
    let id = first.id;
    let second = Holder::start(&agent, &["hold-open", "d", "read"]);
    assert_eq!(attachments(&agent, id), Some(2));
    first.kill();
    eventually("the first holder is released", || {
        attachments(&agent, id) == Some(1)
    });
    second.exit();
    eventually("the segment ends with its last holder", || {
        segment(&agent, id).is_none()
    });
    let freed = events(&agent, "segment.free", &format!("segments/{id}"));
    assert!(
        freed[0].detail.contains("on_last_detach"),
        "{}",
        freed[0].detail
    );
}

#[test]
fn a_ttl_segment_outlives_its_holder_by_its_ttl_and_never_while_held() {
    const TTL: Duration = Duration::from_millis(300);
    let agent = TestAgent::start();
    let holder = Holder::start(
        &agent,
        &["hold", "t", "4096", "ttl", &TTL.as_millis().to_string()],
    );
    let (id, pid) = (holder.id, holder.pid());
    // Held for twice its ttl, it stays.
    let held_since = Instant::now();
    while held_since.elapsed() < TTL * 2 {
        assert!(segment(&agent, id).is_some(), "expired while held");
    }
    holder.kill();
    eventually("the ttl segment expires", || segment(&agent, id).is_none());
    let exited: Vec<_> = runtime()
        .block_on(agent.audit_events())
        .into_iter()
        .filter(|e| e.action == "client.exit" && e.pid == pid)
        .collect();
    let freed = events(&agent, "segment.free", &format!("segments/{id}"));
    assert!(freed[0].detail.contains("ttl"), "{}", freed[0].detail);
    let micros = |e: &v1::AuditEvent| {
        let t = e.time.unwrap();
        t.seconds as i128 * 1_000_000 + i128::from(t.nanos) / 1_000
    };
    // The exit row is stamped a moment after the agent starts the ttl clock,
    // so allow that moment (a millisecond) below the ttl.
    let unattached = micros(&freed[0]) - micros(&exited[0]);
    assert!(
        unattached >= TTL.as_micros() as i128 - 1_000,
        "freed {unattached} us after the exit"
    );
}

#[test]
fn a_segment_deleted_while_mapped_drains_stays_charged_and_frees_with_its_last_holder() {
    let agent = TestAgent::start();
    let id = persistent(&agent, "dr");
    let holder = Holder::start(&agent, &["hold-open", "dr", "rw"]);
    let delete = run(agent.ipcctl().args(["segment", "delete", &id.to_string()]));
    assert!(delete.status.success(), "{}", stderr(&delete));
    let listed = segment(&agent, id).expect("a draining segment is still listed");
    assert_eq!(listed["state"], "DRAINING");
    // Invisible to new opens, still charged to the tenant.
    let open = run(agent.peer(PEER.as_ref()).args(["open", "dr", "read"]));
    assert_eq!(super::fields(&open)["error"], "not_found");
    let used = |agent: &TestAgent| {
        let quota = run(agent.ipcctl().args(["-o", "json", "quota", "get"]));
        serde_json::from_slice::<Value>(&quota.stdout).unwrap()["used_bytes"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(used(&agent), 4096);
    holder.kill();
    eventually("the draining segment is freed", || {
        segment(&agent, id).is_none()
    });
    assert_eq!(used(&agent), 0);
    let freed = events(&agent, "segment.free", &format!("segments/{id}"));
    assert_eq!(freed.len(), 1);
}

#[test]
fn a_zombie_nobody_has_reaped_counts_as_exited() {
    let agent = TestAgent::start();
    let mut holder = Holder::start(&agent, &["hold", "z", "4096", "owner"]);
    let id = holder.id;
    // It exits, but this test (its parent) does not reap it yet: a zombie.
    drop(holder.child.stdin.take());
    eventually("the zombie's owner segment is freed", || {
        segment(&agent, id).is_none()
    });
    assert!(holder.child.wait().unwrap().success());
}
