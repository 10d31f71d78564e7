//! PurgeSegments and `ipcctl segment purge`: a dry run lists exactly the
//! orphans, `--force` removes them and audits each, and non-admins purge only
//! their own tenant. Orphan grace is 0 here, so an orphan is one at once.

use std::os::unix::process::CommandExt;
use std::process::{Child, Output};

use ipcplane_e2e::{NOBODY, TestAgent, can_switch_uid};
use ipcplane_proto::v1;
use serde_json::Value;

use super::{PEER, eventually, run, runtime, spawn_holding, stderr};

/// Starts a peer that prints the segment id it holds; returns both.
fn holder(agent: &TestAgent, args: &[&str], as_nobody: bool) -> (Child, u64) {
    let mut command = agent.peer(PEER.as_ref());
    if as_nobody {
        command.uid(NOBODY).gid(NOBODY);
    }
    spawn_holding(command.args(args))
}

/// Ends a holder normally (it does not detach: the agent notices the exit).
fn end(mut child: Child) {
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}

fn purge(agent: &TestAgent, args: &[&str], as_nobody: bool) -> Output {
    let mut command = agent.ipcctl();
    if as_nobody {
        command.uid(NOBODY).gid(NOBODY);
    }
    run(command.args(["-o", "json", "segment", "purge"]).args(args))
}

fn ids(output: &Output) -> Vec<u64> {
    assert!(output.status.success(), "{}", stderr(output));
    let listed: Value = serde_json::from_slice(&output.stdout).unwrap();
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_u64().unwrap())
        .collect()
}

fn listed(agent: &TestAgent) -> Vec<u64> {
    agent
        .listed_segments()
        .iter()
        .map(|s| s["id"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_dry_run_lists_exactly_the_orphans_and_force_purges_and_audits_each() {
    let agent = TestAgent::start_with("orphan_grace_seconds = 0\n");
    // Owner exited, nobody attached: an orphan.
    let (left, orphan) = holder(&agent, &["hold", "left", "4096"], false);
    end(left);
    // Owner alive: not an orphan.
    let (alive, kept) = holder(&agent, &["hold", "kept", "4096"], false);
    // Owner exited but still attached by a reader: not an orphan.
    let (owner, shared) = holder(&agent, &["hold", "shared", "4096"], false);
    let (reader, _) = holder(&agent, &["hold-open", "shared", "read"], false);
    end(owner);
    // Pre-provisioned: no owning process, never attached: an orphan.
    let created = run(agent.ipcctl().args([
        "-o", "json", "segment", "create", "--size", "4KiB", "--name", "pre",
    ]));
    assert!(created.status.success(), "{}", stderr(&created));
    let pre = serde_json::from_slice::<Value>(&created.stdout).unwrap()["id"]
        .as_u64()
        .unwrap();
    eventually("the exits are noticed", || {
        let events = runtime().block_on(agent.audit_events());
        events.iter().filter(|e| e.action == "client.exit").count() == 2
    });

    let dry = purge(&agent, &[], false);
    assert_eq!(ids(&dry), [orphan, pre]);
    assert!(stderr(&dry).contains("dry run"), "{}", stderr(&dry));
    assert_eq!(
        listed(&agent),
        [orphan, kept, shared, pre],
        "a dry run removes nothing"
    );
    // A filter narrows it.
    assert_eq!(
        ids(&purge(&agent, &["--filter", "name = \"pre\""], false)),
        [pre]
    );

    let forced = purge(&agent, &["--force"], false);
    assert_eq!(ids(&forced), [orphan, pre]);
    assert_eq!(listed(&agent), [kept, shared]);
    let events = runtime().block_on(agent.audit_events());
    let purged: Vec<&str> = events
        .iter()
        .filter(|e| e.action == "segment.purge" && e.outcome == v1::Outcome::Allowed as i32)
        .map(|e| e.resource.as_str())
        .collect();
    assert_eq!(
        purged,
        [format!("segments/{orphan}"), format!("segments/{pre}")]
    );
    end(alive);
    end(reader);
}

#[test]
fn non_admins_purge_only_their_own_tenant() {
    if !can_switch_uid() {
        println!("SKIPPED: needs root to run children as uid {NOBODY} (CI runs as root)");
        return;
    }
    let agent = TestAgent::start_with("orphan_grace_seconds = 0\n");
    let (root_holder, root_orphan) = holder(&agent, &["hold", "root-left", "4096"], false);
    end(root_holder);
    let (nobody_holder, nobody_orphan) = holder(&agent, &["hold", "nobody-left", "4096"], true);
    end(nobody_holder);
    eventually("both owners' exits are noticed", || {
        let events = runtime().block_on(agent.audit_events());
        events.iter().filter(|e| e.action == "client.exit").count() == 2
    });

    let other = purge(&agent, &["--tenant", "uid-0", "--force"], true);
    assert_eq!(other.status.code(), Some(4), "{}", stderr(&other));
    let own = purge(&agent, &["--force"], true);
    assert_eq!(ids(&own), [nobody_orphan]);
    assert_eq!(listed(&agent), [root_orphan], "root's orphan is untouched");
    let events = runtime().block_on(agent.audit_events());
    assert!(
        events.iter().any(|e| e.action == "segment.purge"
            && e.uid == NOBODY
            && e.outcome == v1::Outcome::Denied as i32),
        "the refused purge is audited"
    );
}
