//! Grant-path benchmark: what a service pays to get a new shared segment
//! mapped, through the agent versus the bare minimum (a trivial server that
//! creates a sealed memfd and passes it back over SCM_RIGHTS), and how many
//! creates per second the agent sustains with 1, 4 and 16 concurrent client
//! processes, audit log on.
//!
//! Run with `cargo build --release --workspace && cargo bench -p ipcplane-e2e
//! --bench grant`. Each figure is the median over repetitions; the two
//! latency paths are measured alternately in the same run.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipcplane::Client;
use ipcplane_e2e::TestAgent;
use ipcplane_shm::mapping::Mapping;
use ipcplane_shm::{Access, fdpass, memfd};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

const SEGMENT_BYTES: u64 = 64 << 10;
const REPETITIONS: usize = 5;
const SAMPLES: usize = 2000;
const WARMUP: usize = 200;
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(2);
const ROLE: &str = "IPCPLANE_BENCH_ROLE";

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("bare-server") => bare_server(&std::env::args().nth(1).expect("socket path")),
        Ok("creator") => creator(),
        _ => report(),
    }
}

fn report() {
    let agent = TestAgent::start_with(
        "[quota]\nmax_bytes = \"unlimited\"\nmax_segments = \"unlimited\"\nmax_segment_bytes = \"unlimited\"\n",
    );
    let bare_path = agent.scratch().join("bare.sock");
    let mut bare = Command::new(std::env::current_exe().expect("current_exe"))
        .arg(&bare_path)
        .env(ROLE, "bare-server")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the bare server");
    let mut ready = String::new();
    BufReader::new(bare.stdout.as_mut().expect("stdout"))
        .read_line(&mut ready)
        .expect("bare server ready");

    let client = agent.client();
    let bare_socket = connect(&bare_path);
    for _ in 0..WARMUP {
        agent_create(&client);
        bare_create(&bare_socket);
    }
    let mut agent_runs = Vec::new();
    let mut bare_runs = Vec::new();
    for _ in 0..REPETITIONS {
        agent_runs.push(percentiles(
            (0..SAMPLES).map(|_| agent_create(&client)).collect(),
        ));
        bare_runs.push(percentiles(
            (0..SAMPLES).map(|_| bare_create(&bare_socket)).collect(),
        ));
    }
    let _ = bare.kill();
    let _ = bare.wait();

    let median = |runs: &[(Duration, Duration)], pick: fn(&(Duration, Duration)) -> Duration| {
        let mut values: Vec<Duration> = runs.iter().map(pick).collect();
        values.sort();
        values[values.len() / 2]
    };
    let (agent_p50, agent_p99) = (median(&agent_runs, |r| r.0), median(&agent_runs, |r| r.1));
    let (bare_p50, bare_p99) = (median(&bare_runs, |r| r.0), median(&bare_runs, |r| r.1));
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "create-and-map of a {} KiB segment, {REPETITIONS} repetitions x {SAMPLES} samples (median of each percentile):",
        SEGMENT_BYTES >> 10
    );
    println!("  {:<44} {:>10} {:>10}", "path", "p50", "p99");
    println!(
        "  {:<44} {:>10.1?} {:>10.1?}",
        "ipcplane agent (grant socket, audit on)", agent_p50, agent_p99
    );
    println!(
        "  {:<44} {:>10.1?} {:>10.1?}",
        "bare memfd + SCM_RIGHTS round trip", bare_p50, bare_p99
    );
    println!(
        "  ratio agent/bare: p50 {:.2}x, p99 {:.2}x (target: p50 <= 1.50x: {})",
        ratio(agent_p50, bare_p50),
        ratio(agent_p99, bare_p99),
        if ratio(agent_p50, bare_p50) <= 1.5 {
            "met"
        } else {
            "NOT met"
        }
    );

    println!(
        "sustained creates through the agent (create, map, detach, delete), audit on, {REPETITIONS} windows of {THROUGHPUT_WINDOW:?}:"
    );
    for clients in [1, 4, 16] {
        let mut rates: Vec<f64> = (0..REPETITIONS)
            .map(|_| creates_per_second(&agent, clients))
            .collect();
        rates.sort_by(f64::total_cmp);
        println!(
            "  {clients:>2} client process(es): {:>8.0} creates/s (median)",
            rates[REPETITIONS / 2]
        );
    }
}

/// Time to create a segment through the agent and have it mapped; the
/// detach and delete that follow are not timed.
fn agent_create(client: &Client) -> Duration {
    let start = Instant::now();
    let segment = client
        .segment_builder()
        .size(SEGMENT_BYTES)
        .create()
        .expect("create");
    let elapsed = start.elapsed();
    let id = segment.id();
    segment.detach().expect("detach");
    client.delete_segment(id).expect("delete");
    elapsed
}

/// Time for the same through a server that only creates and passes a memfd.
fn bare_create(socket: &OwnedFd) -> Duration {
    let start = Instant::now();
    fdpass::send(socket.as_fd(), &SEGMENT_BYTES.to_le_bytes(), &[]).expect("send");
    let mut buf = [0u8; 16];
    let received = fdpass::recv(socket.as_fd(), &mut buf).expect("recv");
    let fd = received.fds.into_iter().next().expect("one fd");
    let mapping = Mapping::map(fd.as_fd(), Access::ReadWrite).expect("map");
    let elapsed = start.elapsed();
    drop(mapping);
    elapsed
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    )
}

fn connect(path: &Path) -> OwnedFd {
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socket");
    rustix::net::connect(&socket, &SocketAddrUnix::new(path).expect("address")).expect("connect");
    socket
}

/// The trivial server: one connection, a sealed memfd of the asked size per
/// datagram, passed back in SCM_RIGHTS.
fn bare_server(path: &str) {
    let listener = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socket");
    rustix::net::bind(&listener, &SocketAddrUnix::new(path).expect("address")).expect("bind");
    rustix::net::listen(&listener, 8).expect("listen");
    println!("ready");
    std::io::stdout().flush().expect("flush");
    let connection = rustix::net::accept_with(&listener, SocketFlags::CLOEXEC).expect("accept");
    let mut buf = [0u8; 16];
    loop {
        let received = fdpass::recv(connection.as_fd(), &mut buf).expect("recv");
        if received.len != 8 {
            return;
        }
        let size = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
        let fd = memfd::create_sealed("bare", size).expect("memfd");
        fdpass::send(connection.as_fd(), b"k", &[fd.as_fd()]).expect("send");
    }
}

/// Creates per second with `clients` processes creating in a loop at once.
fn creates_per_second(agent: &TestAgent, clients: usize) -> f64 {
    let mut children: Vec<_> = (0..clients)
        .map(|_| {
            Command::new(std::env::current_exe().expect("current_exe"))
                .env(ROLE, "creator")
                .env(
                    ipcplane_proto::paths::ENV_GRANT_SOCKET,
                    agent.grant_socket(),
                )
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn a creator")
        })
        .collect();
    let mut outputs: Vec<_> = children
        .iter_mut()
        .map(|c| BufReader::new(c.stdout.take().expect("stdout")).lines())
        .collect();
    for output in &mut outputs {
        assert_eq!(output.next().expect("ready line").expect("read"), "ready");
    }
    // Start them together: each begins when its stdin closes.
    for child in &mut children {
        drop(child.stdin.take());
    }
    let total: u64 = outputs
        .iter_mut()
        .map(|o| {
            o.next()
                .expect("count line")
                .expect("read")
                .parse::<u64>()
                .expect("count")
        })
        .sum();
    for mut child in children {
        child.wait().expect("creator exits");
    }
    total as f64 / THROUGHPUT_WINDOW.as_secs_f64()
}

/// A creator process: connect, say ready, wait for the start, then create
/// (and clean up) segments for the window and print how many.
fn creator() {
    let client = Client::connect().expect("connect");
    println!("ready");
    std::io::stdout().flush().expect("flush");
    let _ = std::io::stdin().lines().count();
    let start = Instant::now();
    let mut created = 0u64;
    while start.elapsed() < THROUGHPUT_WINDOW {
        agent_create(&client);
        created += 1;
    }
    println!("{created}");
}
