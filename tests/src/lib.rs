//! Harness for ipcplane's end-to-end tests: starts the real `ipcplane-agent`
//! binary on a private temporary directory (its own sockets and SQLite file),
//! and gives tests SDK clients, a gRPC channel, `ipcctl` and the helper peer
//! process. Every agent is a separate process, so tests run in parallel.
#![forbid(unsafe_code)]

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipcplane_proto::v1;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use tonic::transport::{Channel, Endpoint};

pub mod datapath;

/// How long an agent may take to start or stop before the test fails.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The uid and gid of `nobody`, the second tenant in multi-user tests.
pub const NOBODY: u32 = 65534;

/// A directory of built binaries: next to the running test's `deps/`.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe
        .parent()
        .expect("test binaries live in target/<profile>/deps");
    deps.parent().expect("target/<profile>").to_owned()
}

/// A workspace binary such as `ipcplane-agent` or `ipcctl`. `cargo test
/// --workspace` builds them before running any test.
pub fn workspace_bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace binaries first (cargo test --workspace or cargo build --workspace)",
        path.display()
    );
    path
}

/// A running agent on its own directory. Killed when dropped.
#[derive(Debug)]
pub struct TestAgent {
    dir: tempfile::TempDir,
    config: PathBuf,
    child: Option<Child>,
    /// Extra environment for every start, e.g. `NOTIFY_SOCKET`.
    env: Vec<(String, PathBuf)>,
}

impl TestAgent {
    /// Starts an agent with an empty config file.
    pub fn start() -> TestAgent {
        TestAgent::start_with("")
    }

    /// Starts an agent with `config` as its TOML file. The directory is
    /// world-traversable and the control socket's group is `nobody`'s, so a
    /// child running as `nobody` can reach both sockets.
    pub fn start_with(config: &str) -> TestAgent {
        TestAgent::start_inner(config, Vec::new())
    }

    fn start_inner(config: &str, env: Vec<(String, PathBuf)>) -> TestAgent {
        let dir = tempfile::Builder::new()
            .prefix("ipcplane-e2e")
            .tempdir()
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod tempdir");
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, format!("control_group = \"{NOBODY}\"\n{config}"))
            .expect("write config");
        let mut agent = TestAgent {
            dir,
            config: path,
            child: None,
            env,
        };
        agent.launch(None);
        agent
    }

    /// Starts the agent; `passed` is a descriptor handed to it as a service
    /// manager would (fd 3, with `LISTEN_PID`, `LISTEN_FDS` and
    /// `LISTEN_FDNAMES`), through a shell that moves it from stdin.
    fn launch(&mut self, passed: Option<(OwnedFd, &str)>) {
        let log = std::fs::File::create(self.dir.path().join("agent.log")).expect("agent log");
        let mut command = match passed {
            None => {
                let mut command = Command::new(workspace_bin("ipcplane-agent"));
                command.stdin(Stdio::null());
                command
            }
            Some((fd, name)) => {
                let mut command = Command::new("/bin/sh");
                command
                    .arg("-c")
                    .arg(r#"exec 3<&0 0</dev/null; export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES="$1"; shift; exec "$@""#)
                    .arg("sh")
                    .arg(name)
                    .arg(workspace_bin("ipcplane-agent"))
                    .stdin(Stdio::from(fd));
                command
            }
        };
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = command
            .arg("--config")
            .arg(&self.config)
            .arg("--runtime-dir")
            .arg(self.runtime_dir())
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .env("IPCPLANE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ipcplane-agent");
        self.child = Some(child);
        self.wait_until_serving();
    }

    fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if self.grant_socket_accepts() && self.control_socket().exists() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("try_wait"))
            {
                panic!(
                    "the agent exited with {status} during start-up:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not start in time:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn grant_socket_accepts(&self) -> bool {
        let Ok(addr) = SocketAddrUnix::new(self.grant_socket()) else {
            return false;
        };
        let Ok(probe) = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        ) else {
            return false;
        };
        rustix::net::connect(&probe, &addr).is_ok()
    }

    /// What the agent has logged so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(self.dir.path().join("agent.log")) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent running").id()
    }

    /// Directory of the sockets.
    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// Path of grant.sock.
    pub fn grant_socket(&self) -> PathBuf {
        self.runtime_dir().join("grant.sock")
    }

    /// Path of control.sock.
    pub fn control_socket(&self) -> PathBuf {
        self.runtime_dir().join("control.sock")
    }

    /// A directory tests may use for their own files.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// A new SDK client in this process.
    pub fn client(&self) -> ipcplane::Client {
        ipcplane::Client::connect_to(self.grant_socket()).expect("connect to the test agent")
    }

    /// A gRPC channel to the control socket.
    pub async fn channel(&self) -> Channel {
        self.channel_with(Endpoint::from_static("http://localhost"))
            .await
    }

    /// A gRPC channel to the control socket with `endpoint`'s settings (its
    /// address is ignored: the connection is the UNIX socket).
    pub async fn channel_with(&self, endpoint: Endpoint) -> Channel {
        let path = self.control_socket();
        endpoint
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .expect("connect to the control socket")
    }

    /// `ipcctl --socket <control.sock> <args>`.
    pub fn ipcctl(&self) -> Command {
        let mut command = Command::new(workspace_bin("ipcctl"));
        command.arg("--socket").arg(self.control_socket());
        command
    }

    /// The helper peer process, pointed at this agent's grant socket.
    pub fn peer(&self, peer_bin: &Path) -> Command {
        let mut command = Command::new(peer_bin);
        command.env(ipcplane_proto::paths::ENV_GRANT_SOCKET, self.grant_socket());
        command
    }

    /// Every segment `ipcctl -o json segment list` shows, as JSON objects.
    ///
    /// # Panics
    /// If ipcctl fails.
    pub fn listed_segments(&self) -> Vec<serde_json::Value> {
        let output = run(self.ipcctl().args(["-o", "json", "segment", "list"]));
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        match serde_json::from_slice(&output.stdout) {
            Ok(serde_json::Value::Array(segments)) => segments,
            other => panic!("ipcctl printed no JSON array: {other:?}"),
        }
    }

    /// Open file descriptors of the agent process.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read the agent's fd table")
            .count()
    }

    /// Kills the agent with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("agent running");
        child.kill().expect("SIGKILL the agent");
        child.wait().expect("reap the agent");
    }

    /// Stops the agent with SIGTERM and returns its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("agent running");
        let pid =
            rustix::process::Pid::from_raw(i32::try_from(child.id()).expect("pid")).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .expect("SIGTERM the agent");
        wait_with_timeout(&mut child, STARTUP_TIMEOUT).expect("the agent stops after SIGTERM")
    }

    /// Starts the agent again on the same directory (after kill or terminate).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the agent before restarting it");
        self.launch(None);
    }

    /// Restarts it as systemd would with one stored descriptor named `name`.
    pub fn restart_with_stored_fd(&mut self, fd: OwnedFd, name: &str) {
        assert!(self.child.is_none(), "stop the agent before restarting it");
        self.launch(Some((fd, name)));
    }

    /// Starts an agent (empty config) with an extra environment variable
    /// set on every start.
    pub fn start_with_env(name: &str, value: PathBuf) -> TestAgent {
        TestAgent::start_inner("", vec![(name.to_owned(), value)])
    }

    /// Every audit event (admin view), oldest first, through the gRPC API.
    pub async fn audit_events(&self) -> Vec<v1::AuditEvent> {
        let mut client = v1::audit_service_client::AuditServiceClient::new(self.channel().await);
        let mut events = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = client
                .list_audit_events(v1::ListAuditEventsRequest {
                    page_size: 1000,
                    page_token,
                    ..Default::default()
                })
                .await
                .expect("list audit events")
                .into_inner();
            events.extend(page.events);
            if page.next_page_token.is_empty() {
                return events;
            }
            page_token = page.next_page_token;
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How long a helper process (ipcctl, a peer, an example) may run in a test.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `command` to completion within [`COMMAND_TIMEOUT`], with stdin closed.
/// Its output is read while it runs, so a long listing cannot fill a pipe and
/// stall it.
///
/// # Panics
/// If it cannot be started or does not finish in time.
pub fn run(command: &mut Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let finished = wait_with_timeout(&mut child, COMMAND_TIMEOUT);
    if finished.is_none() {
        let _ = child.kill();
    }
    let status = child.wait().expect("reap the child");
    assert!(
        finished.is_some(),
        "{command:?} did not finish within {COMMAND_TIMEOUT:?}"
    );
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// Waits for a child to exit, polling, for at most `timeout`.
pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// True when this process may switch a child to another uid. Tests that need
/// it print why they skip otherwise; in CI (`CI=true`, which runs as root) a
/// skip would hide a missing test, so it fails instead.
///
/// # Panics
/// In CI when not root.
pub fn can_switch_uid() -> bool {
    let root = rustix::process::geteuid().is_root();
    assert!(
        root || std::env::var("CI").as_deref() != Ok("true"),
        "CI must run the tests as root"
    );
    root
}
