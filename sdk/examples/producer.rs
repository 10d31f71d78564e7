//! Producer half of the 5-minute tour: creates a persistent 1 MiB segment (or
//! opens it if it already exists), writes a numbered greeting into it, and
//! waits for `consumer` to acknowledge it.
//!
//! ```sh
//! cargo run -p ipcplane --example producer [NAME]   # NAME defaults to "demo"
//! ```
//!
//! Segment layout shared with `consumer.rs` (a real application would use a
//! ring; plain byte copies keep this example short):
//!
//! | offset | bytes | content                                        |
//! |--------|-------|------------------------------------------------|
//! | 0      | 8     | sequence number, little endian, +1 per run     |
//! | 8      | 1     | state: 1 = greeting ready, 2 = acknowledged    |
//! | 64     | 256   | greeting, UTF-8, zero padded                   |
//! | 320    | 256   | acknowledgement, UTF-8, zero padded            |
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};
use std::{env, process, thread};

use anyhow::bail;
use ipcplane::{Access, Client, Error, Lifetime, Segment};

const SEQUENCE: usize = 0;
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
    let created = client
        .segment_builder()
        .name(&name)
        .size(1 << 20)
        .lifetime(Lifetime::Persistent)
        .create();
    let segment = match created {
        Err(Error::AlreadyExists { .. }) => client.open_segment(&name, Access::ReadWrite)?,
        other => other?,
    };
    let info = segment.info();
    println!(
        "segment {} {name:?}: {} bytes, tenant {}, owner pid {}",
        info.id,
        info.size_bytes,
        info.tenant,
        info.owner_pid
            .map_or("unknown".to_owned(), |pid| pid.to_string()),
    );

    let mut sequence = [0; 8];
    segment.read_at(SEQUENCE, &mut sequence)?;
    let sequence = u64::from_le_bytes(sequence).wrapping_add(1);
    segment.write_at(SEQUENCE, &sequence.to_le_bytes())?;
    write_text(&segment, ACK, "")?;
    let greeting = format!("hello #{sequence} from pid {}", process::id());
    write_text(&segment, GREETING, &greeting)?;
    segment.write_at(STATE, &[READY])?;
    println!(
        "wrote {greeting:?}; run the consumer within {}s",
        TIMEOUT.as_secs()
    );

    wait_for_state(&segment, ACKNOWLEDGED)?;
    println!("consumer replied {:?}", read_text(&segment, ACK)?);
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
            bail!("no acknowledgement after {}s", TIMEOUT.as_secs());
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
