//! Cleanup benchmark: how soon after a client process is killed with SIGKILL
//! its exit is committed to the audit log (its `owner` segment freed, its
//! attachments released), and whether the agent's memory and descriptors come
//! back after 10,000 client processes connect, create and exit.
//!
//! Run with `cargo build --release --workspace && cargo bench -p ipcplane-e2e
//! --bench reaper`. What a user would otherwise pick, kernel SysV or POSIX
//! shared memory, never cleans up after a dead process: its segments stay
//! until someone runs `ipcrm` or `rm /dev/shm/...`, so there is no time to
//! compare with; the figures are checked against the targets instead.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use ipcplane_e2e::TestAgent;
use ipcplane_proto::v1;

const KILLS: usize = 1000;
const CYCLES: usize = 10_000;
const PARALLEL: usize = 8;
const PEER: &str = env!("CARGO_BIN_EXE_ipcplane-peer");

fn main() {
    let agent = TestAgent::start_with(
        "[quota]\nmax_bytes = \"unlimited\"\nmax_segments = \"unlimited\"\nmax_segment_bytes = \"unlimited\"\n",
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let channel = runtime.block_on(agent.channel());
    let mut audit = v1::audit_service_client::AuditServiceClient::new(channel.clone());
    let mut control = v1::agent_service_client::AgentServiceClient::new(channel);

    let mut latencies = Vec::with_capacity(KILLS);
    for i in 0..KILLS {
        let mut holder = hold(&agent, &format!("k{i}"));
        let pid = holder.id();
        let killed = Instant::now();
        holder.kill().expect("SIGKILL");
        let filter = format!("action = \"client.exit\" AND pid = {pid}");
        loop {
            let found = runtime
                .block_on(audit.list_audit_events(v1::ListAuditEventsRequest {
                    filter: filter.clone(),
                    page_size: 1,
                    ..Default::default()
                }))
                .expect("list audit events")
                .into_inner()
                .events;
            if !found.is_empty() {
                latencies.push(killed.elapsed());
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(30),
                "pid {pid}'s exit was never audited"
            );
        }
        holder.wait().expect("reap");
    }
    latencies.sort();
    let p50 = latencies[KILLS / 2];
    let p99 = latencies[KILLS * 99 / 100];
    println!(
        "SIGKILL of a client to its client.exit audit row committed and visible, {KILLS} kills:"
    );
    println!(
        "  p50 {p50:.1?}  p99 {p99:.1?}  max {:.1?}  (target p99 < 10 ms: {})",
        latencies[KILLS - 1],
        if p99 < Duration::from_millis(10) {
            "met"
        } else {
            "NOT met"
        }
    );
    println!("  kernel SysV / POSIX shm: the segment outlives the process (no cleanup at all)");

    let clients = |control: &mut v1::agent_service_client::AgentServiceClient<_>| {
        runtime
            .block_on(control.get_agent(v1::GetAgentRequest {}))
            .expect("get agent")
            .into_inner()
    };
    let settle = |control: &mut v1::agent_service_client::AgentServiceClient<_>| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while clients(control).client_count > 0 || clients(control).segment_count > 0 {
            assert!(Instant::now() < deadline, "clients never went away");
        }
    };
    settle(&mut control);
    let before = (rss_kib(agent.pid()), agent.open_fds());
    let started = Instant::now();
    let mut running: Vec<Child> = Vec::with_capacity(PARALLEL);
    for i in 0..CYCLES {
        if running.len() == PARALLEL {
            running.remove(0).wait().expect("cycle exits");
        }
        running.push(
            agent
                .peer(PEER.as_ref())
                .args(["hold", &format!("c{i}"), "4096", "owner"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn a cycle"),
        );
    }
    for mut child in running {
        child.wait().expect("cycle exits");
    }
    let elapsed = started.elapsed();
    settle(&mut control);
    let after = (rss_kib(agent.pid()), agent.open_fds());
    println!(
        "{CYCLES} client processes that connect, create an owner segment and exit ({:.0}/s):",
        CYCLES as f64 / elapsed.as_secs_f64()
    );
    // Allocator and SQLite page caches may keep a little; a leak would grow
    // with the number of cycles.
    let rss_ok = after.0 <= before.0 + before.0 / 10 + 4096;
    println!(
        "  agent RSS {} KiB before, {} KiB after ({:+} KiB; target: within 10% + 4 MiB: {})",
        before.0,
        after.0,
        after.0 as i64 - before.0 as i64,
        if rss_ok { "met" } else { "NOT met" }
    );
    println!(
        "  agent open fds {} before, {} after (target: back to baseline: {})",
        before.1,
        after.1,
        if after.1 <= before.1 {
            "met"
        } else {
            "NOT met"
        }
    );
}

/// A peer that creates an owner segment and holds it until killed.
fn hold(agent: &TestAgent, name: &str) -> Child {
    let mut child = agent
        .peer(PEER.as_ref())
        .args(["hold", name, "4096", "owner"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn a holder");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("holder ready");
    assert!(line.starts_with("id="), "{line}");
    child
}

/// Resident memory of a process, from /proc/<pid>/status.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}
