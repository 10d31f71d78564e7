//! `ipcctl` on its own: what it does before (or instead of) reaching an
//! agent. Everything that needs an agent runs against the real one in the
//! end-to-end tests (`tests/tests/cli/`).
#![forbid(unsafe_code)]
#![cfg(test)]

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output};

fn ipcctl_at(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ipcctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run ipcctl")
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("ipcctl prints UTF-8")
}

#[test]
fn usage_errors_exit_2_without_contacting_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    let ttl_with_owner = [
        "segment",
        "create",
        "--size",
        "4096",
        "--lifetime",
        "owner",
        "--ttl",
        "30s",
    ];
    let cases: [&[&str]; 10] = [
        &["segment", "create", "--size", "0"],
        &["segment", "create", "--size", "lots"],
        &ttl_with_owner,
        &["segment", "get", "abc"],
        &["segment", "list", "--page-size", "0"],
        &["segment", "frobnicate"],
        &["quota", "set", "uid-0"],
        &["audit", "list", "--outcome", "maybe"],
        &["--timeout", "5", "agent", "info"],
        &["-o", "xml", "agent", "info"],
    ];
    for args in cases {
        let output = ipcctl_at(&socket, args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&output.stderr)
        );
        assert_eq!(text(&output.stdout), "", "{args:?}");
        assert!(
            text(&output.stderr).starts_with("error: "),
            "{args:?}: {}",
            text(&output.stderr)
        );
    }
    let size = ipcctl_at(&socket, &["segment", "create", "--size", "0"]);
    assert!(
        text(&size.stderr).contains("must be positive"),
        "{}",
        text(&size.stderr)
    );
    match listener.accept() {
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("ipcctl connected to the socket: {other:?}"),
    }
}

#[test]
fn a_missing_socket_exits_69_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nope.sock");
    let output = ipcctl_at(&socket, &["agent", "health"]);
    assert_eq!(output.status.code(), Some(69));
    assert_eq!(text(&output.stdout), "");
    let stderr = text(&output.stderr);
    let prefix = format!(
        "ipcctl: cannot connect to the agent at {}: ",
        socket.display()
    );
    assert!(stderr.starts_with(&prefix), "{stderr}");
    assert!(stderr.contains("No such file or directory"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn a_peer_that_never_answers_times_out_as_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hung.sock");
    // Bound and listening, so connecting succeeds, but nothing ever accepts.
    let _listener = UnixListener::bind(&socket).unwrap();
    let output = ipcctl_at(&socket, &["--timeout", "1s", "segment", "list"]);
    assert_eq!(output.status.code(), Some(69));
    assert_eq!(
        text(&output.stderr),
        "ipcctl: the agent did not answer within 1s (see --timeout)\n"
    );
    assert_eq!(text(&output.stdout), "");
}

#[test]
fn help_documents_the_exit_codes() {
    let output = Command::new(env!("CARGO_BIN_EXE_ipcctl"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = text(&output.stdout);
    for line in [
        "0  success",
        "3  not found",
        "5  quota exceeded",
        "69  agent unavailable",
    ] {
        assert!(help.contains(line), "{line:?} missing from --help");
    }
}
