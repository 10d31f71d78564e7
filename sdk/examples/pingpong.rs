//! Ping-pong over two rings: `pong` echoes every message back, `ping` sends
//! messages and prints the round-trip latency. Run each side in its own
//! process (either may start first):
//!
//! ```sh
//! cargo run --release -p ipcplane --example pingpong -- pong &
//! cargo run --release -p ipcplane --example pingpong -- ping [SIZE] [COUNT] [--busy]
//! ```
//!
//! Both sides spin a few microseconds, then sleep on a futex in the ring
//! (the default wait); `--busy` makes `ping`'s rings busy-poll instead, for
//! the lowest latency at the cost of a core. The rings ("pingpong.ping" and
//! "pingpong.pong") go away when both sides have detached.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use ipcplane::ring::{Ring, Wait};
use ipcplane::{Client, Error, Lifetime};

/// Long enough for the other side to start.
const TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let busy = args.iter().any(|arg| arg == "--busy");
    let numbers: Vec<usize> = args.iter().filter_map(|arg| arg.parse().ok()).collect();
    let client = Client::connect()?;
    let ping = ring(&client, "pingpong.ping")?;
    let pong = ring(&client, "pingpong.pong")?;
    match args.first().map(String::as_str) {
        Some("pong") => echo(&ping, &pong),
        Some("ping") => {
            let size = numbers.first().copied().unwrap_or(64);
            let count = numbers.get(1).copied().unwrap_or(100_000);
            let wait = if busy { Wait::BusyPoll } else { Wait::PARK };
            measure(&ping, &pong, size, count, wait)
        }
        _ => anyhow::bail!("usage: pingpong ping [SIZE] [COUNT] [--busy] | pingpong pong"),
    }
}

/// Creates the ring, or opens it if the other side did first.
fn ring(client: &Client, name: &str) -> Result<Ring, Error> {
    let created = client
        .ring_builder(name)
        .capacity(1 << 20)
        .lifetime(Lifetime::OnLastDetach)
        .create();
    match created {
        Err(Error::AlreadyExists { .. }) => client.open_ring(name),
        other => other,
    }
}

/// Sends back every message from `ping` on `pong`, until an empty one.
fn echo(ping: &Ring, pong: &Ring) -> anyhow::Result<()> {
    let mut requests = ping.consumer()?;
    let mut replies = pong.producer()?;
    let mut buf = vec![0; requests.layout().max_message()];
    println!("pong: echoing on {:?}", ping.info().name);
    loop {
        let len = requests.recv()?.copy_into(&mut buf)?;
        if len == 0 {
            return Ok(());
        }
        replies.send(&buf[..len])?;
    }
}

/// Sends `count` messages of `size` bytes, each after the previous one came
/// back, and prints the round-trip percentiles.
fn measure(ping: &Ring, pong: &Ring, size: usize, count: usize, wait: Wait) -> anyhow::Result<()> {
    let mut requests = ping.producer()?;
    let mut replies = pong.consumer()?;
    requests.set_wait(wait);
    replies.set_wait(wait);
    replies.set_timeout(Some(TIMEOUT));
    let message = vec![0xA5; size];
    let mut rtts = Vec::with_capacity(count);
    for i in 0..count + count / 10 {
        let start = Instant::now();
        requests.send(&message)?;
        drop(replies.recv()?);
        // The first tenth warms up caches and the other side.
        if i >= count / 10 {
            rtts.push(start.elapsed());
        }
    }
    requests.send(&[])?;
    rtts.sort_unstable();
    let at = |fraction: f64| {
        // A fraction of the length, truncated on purpose.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let index = ((rtts.len() - 1) as f64 * fraction) as usize;
        rtts[index]
    };
    println!(
        "{count} round trips of {size} B ({wait:?}): p50 {:?}, p99 {:?}, max {:?}",
        at(0.5),
        at(0.99),
        at(1.0)
    );
    Ok(())
}
