//! Streaming over one ring: `produce` sends numbered messages as fast as the
//! ring takes them, written in place through loans; `consume` checks they
//! arrive in order and prints the rate. Run each side in its own process
//! (either may start first):
//!
//! ```sh
//! cargo run --release -p ipcplane --example stream -- consume &
//! cargo run --release -p ipcplane --example stream -- produce [SIZE] [COUNT]
//! ```
//!
//! The ring ("stream") goes away when both sides have detached.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use ipcplane::ring::Ring;
use ipcplane::{Client, Error, Lifetime};

/// Long enough for the other side to start.
const TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let numbers: Vec<usize> = args.iter().filter_map(|arg| arg.parse().ok()).collect();
    let client = Client::connect()?;
    let created = client
        .ring_builder("stream")
        .capacity(1 << 20)
        .lifetime(Lifetime::OnLastDetach)
        .create();
    let ring = match created {
        Err(Error::AlreadyExists { .. }) => client.open_ring("stream")?,
        other => other?,
    };
    match args.first().map(String::as_str) {
        Some("produce") => {
            let size = numbers.first().copied().unwrap_or(64).max(8);
            let count = numbers.get(1).copied().unwrap_or(10_000_000);
            produce(&ring, size, count as u64)
        }
        Some("consume") => consume(&ring),
        _ => anyhow::bail!("usage: stream produce [SIZE] [COUNT] | stream consume"),
    }
}

/// Sends `count` messages of `size` bytes starting with their number, then
/// an empty one to say it is done.
fn produce(ring: &Ring, size: usize, count: u64) -> anyhow::Result<()> {
    let mut producer = ring.producer()?;
    producer.set_timeout(Some(TIMEOUT));
    let start = Instant::now();
    for seq in 0..count {
        let mut loan = producer.loan(size)?;
        loan.write_at(0, &seq.to_le_bytes())?;
        loan.commit();
    }
    producer.send(&[])?;
    report("sent", count, size, start.elapsed());
    Ok(())
}

/// Receives until the empty message, checking the numbers.
fn consume(ring: &Ring) -> anyhow::Result<()> {
    let mut consumer = ring.consumer()?;
    consumer.set_timeout(Some(TIMEOUT));
    println!("consume: waiting on {:?}", ring.info().name);
    let mut expected = 0_u64;
    let mut bytes = 0;
    let mut start = None;
    loop {
        let sample = consumer.recv()?;
        let started = *start.get_or_insert_with(Instant::now);
        if sample.is_empty() {
            report(
                "received",
                expected,
                bytes / expected.max(1) as usize,
                started.elapsed(),
            );
            return Ok(());
        }
        let mut seq = [0; 8];
        sample.payload().read_at(0, &mut seq)?;
        let seq = u64::from_le_bytes(seq);
        anyhow::ensure!(
            seq == expected,
            "message {seq} arrived where {expected} was due"
        );
        expected += 1;
        bytes += sample.len();
    }
}

fn report(what: &str, count: u64, size: usize, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64();
    // Rates for display only.
    #[allow(clippy::cast_precision_loss)]
    let (rate, gbps) = (
        count as f64 / seconds,
        (count as f64 * size as f64) / seconds / 1e9,
    );
    println!(
        "{what} {count} messages of {size} B in {elapsed:.2?}: {:.1} M msgs/s, {gbps:.2} GB/s",
        rate / 1e6
    );
}
