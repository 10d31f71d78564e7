//! The `ipcplane-agent` binary as an operator runs it: configuration errors,
//! start-up from flags and environment, and a clean stop on SIGTERM/SIGINT.
#![forbid(unsafe_code)]
#![cfg(test)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const AGENT: &str = env!("CARGO_BIN_EXE_ipcplane-agent");
const TIMEOUT: Duration = Duration::from_secs(30);

fn agent() -> Command {
    let mut command = Command::new(AGENT);
    command
        .env_remove("IPCPLANE_CONFIG")
        .env_remove("IPCPLANE_RUNTIME_DIR")
        .env_remove("IPCPLANE_STATE_DIR")
        .env_remove("IPCPLANE_DATABASE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn wait(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_for(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + TIMEOUT;
    while !path.exists() {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!(
                "the agent exited with {status} before creating {}",
                path.display()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn signal(child: &Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

fn stderr(child: Child) -> String {
    String::from_utf8_lossy(&child.wait_with_output().unwrap().stderr).into_owned()
}

#[test]
fn bad_configuration_prints_one_message_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(&bad_toml, "[quota]\nmax_bytes = \"lots\"\n").unwrap();
    let unknown_key = dir.path().join("unknown.toml");
    std::fs::write(&unknown_key, "colour = \"blue\"\n").unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &["--config", "/nonexistent/agent.toml"],
            "cannot read config file /nonexistent/agent.toml",
        ),
        (&["--config", bad_toml.to_str().unwrap()], "quota.max_bytes"),
        (&["--config", unknown_key.to_str().unwrap()], "colour"),
        (
            &["--database", "relative.db"],
            "database must be an absolute path",
        ),
    ];
    for (args, expected) in cases {
        let output = agent().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let unknown_flag = agent().arg("--no-such-flag").output().unwrap();
    assert_eq!(unknown_flag.status.code(), Some(64));
}

#[test]
fn starts_from_environment_and_stops_cleanly_on_sigterm_and_sigint() {
    for stop in [rustix::process::Signal::TERM, rustix::process::Signal::INT] {
        let dir = tempfile::tempdir().unwrap();
        let runtime = dir.path().join("run");
        let state = dir.path().join("state");
        let mut child = agent()
            .env("IPCPLANE_RUNTIME_DIR", &runtime)
            .env("IPCPLANE_STATE_DIR", &state)
            .spawn()
            .unwrap();
        wait_for(&runtime.join("control.sock"), &mut child);
        assert!(runtime.join("grant.sock").exists());
        signal(&child, stop);
        let status = wait(&mut child);
        assert!(status.success(), "{stop:?}: {status}: {}", stderr(child));
        assert!(!runtime.join("grant.sock").exists(), "grant.sock removed");
        assert!(
            !runtime.join("control.sock").exists(),
            "control.sock removed"
        );
        let db = rusqlite::Connection::open(state.join("ipcplane.db")).unwrap();
        let actions: Vec<String> = db
            .prepare("SELECT action FROM audit_events ORDER BY id")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(actions, ["agent.start", "agent.stop"]);
        // The WAL was folded back: the database file alone is complete.
        let wal = state.join("ipcplane.db-wal");
        assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0);
    }
}

#[test]
fn flags_beat_environment_variables() {
    let dir = tempfile::tempdir().unwrap();
    let from_flag = dir.path().join("flag");
    let from_env = dir.path().join("env");
    let mut child = agent()
        .env("IPCPLANE_RUNTIME_DIR", &from_env)
        .env("IPCPLANE_STATE_DIR", dir.path().join("state"))
        .arg("--runtime-dir")
        .arg(&from_flag)
        .spawn()
        .unwrap();
    wait_for(&from_flag.join("control.sock"), &mut child);
    assert!(!from_env.exists());
    signal(&child, rustix::process::Signal::TERM);
    assert!(wait(&mut child).success());
}

#[test]
fn a_second_agent_on_the_same_sockets_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("run");
    let start = |db: &str| {
        agent()
            .arg("--runtime-dir")
            .arg(&runtime)
            .arg("--database")
            .arg(dir.path().join(db))
            .spawn()
            .unwrap()
    };
    let mut first = start("first.db");
    wait_for(&runtime.join("control.sock"), &mut first);
    let mut second = start("second.db");
    let status = wait(&mut second);
    let message = stderr(second);
    assert_eq!(status.code(), Some(69), "{message}");
    assert!(message.contains("another agent is serving"), "{message}");
    // The first agent is unaffected.
    assert!(first.try_wait().unwrap().is_none());
    signal(&first, rustix::process::Signal::TERM);
    assert!(wait(&mut first).success());
}
