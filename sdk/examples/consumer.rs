//! Consumer half of the 5-minute tour: opens the segment `producer` created,
//! prints its greeting and writes an acknowledgement. The segment layout is
//! described in `producer.rs`.
//!
//! ```sh
//! cargo run -p ipcplane --example consumer [NAME]   # NAME defaults to "demo"
//! ```
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};
use std::{env, process, thread};

use anyhow::{Context, bail};
use ipcplane::{Access, Client, Segment};

const STATE: usize = 8;
const GREETING: usize = 64;
const ACK: usize = 320;
const TEXT_LEN: usize = 256;
const READY: u8 = 1;
const ACKNOWLEDGED: u8 = 2;
const TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> anyhow::Result<()> {
    let name = env::args().nth(1).unwrap_or_else(|| "demo".to_owned());
    let client = Client::connect()?;
    let segment = client
        .open_segment(&name, Access::ReadWrite)
        .with_context(|| format!("cannot open segment {name:?}; is the producer running?"))?;
    println!(
        "opened segment {} {name:?} as pid {} of tenant {}",
        segment.id(),
        client.identity().pid,
        client.identity().tenant,
    );

    wait_for_state(&segment, READY)?;
    println!("producer says {:?}", read_text(&segment, GREETING)?);
    write_text(
        &segment,
        ACK,
        &format!("thanks, from pid {}", process::id()),
    )?;
    segment.write_at(STATE, &[ACKNOWLEDGED])?;
    segment.detach()?;
    Ok(())
}

/// Polls the state byte until it is `wanted`, for at most [`TIMEOUT`].
fn wait_for_state(segment: &Segment, wanted: u8) -> anyhow::Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    let mut state = [0];
    loop {
        segment.read_at(STATE, &mut state)?;
        if state[0] == wanted {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("no greeting after {}s", TIMEOUT.as_secs());
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn write_text(segment: &Segment, offset: usize, text: &str) -> Result<(), ipcplane::AccessError> {
    let mut field = [0; TEXT_LEN];
    let len = text.len().min(TEXT_LEN);
    field[..len].copy_from_slice(&text.as_bytes()[..len]);
    segment.write_at(offset, &field)
}

/// Reads a zero-padded text field; the peer may have written anything there.
fn read_text(segment: &Segment, offset: usize) -> Result<String, ipcplane::AccessError> {
    let mut field = [0; TEXT_LEN];
    segment.read_at(offset, &mut field)?;
    let len = field.iter().position(|&byte| byte == 0).unwrap_or(TEXT_LEN);
    Ok(String::from_utf8_lossy(&field[..len]).into_owned())
}
