//! The segment layout the tour's `producer` and `consumer` share (a real
//! application would use a ring; plain byte copies keep the examples short):
//!
//! | offset | bytes | content                                        |
//! |--------|-------|------------------------------------------------|
//! | 0      | 8     | sequence number, little endian, +1 per run     |
//! | 8      | 1     | state: 1 = greeting ready, 2 = acknowledged    |
//! | 64     | 256   | greeting, UTF-8, zero padded                   |
//! | 320    | 256   | acknowledgement, UTF-8, zero padded            |
#![allow(dead_code, reason = "shared by both examples; each uses a subset")]

use std::thread;
use std::time::{Duration, Instant};

use anyhow::bail;
use ipcplane::{AccessError, Segment};

pub(crate) const SEQUENCE: usize = 0;
pub(crate) const STATE: usize = 8;
pub(crate) const GREETING: usize = 64;
pub(crate) const ACK: usize = 320;
pub(crate) const READY: u8 = 1;
pub(crate) const ACKNOWLEDGED: u8 = 2;
pub(crate) const TIMEOUT: Duration = Duration::from_secs(30);
const TEXT_LEN: usize = 256;

/// Polls the state byte until it is `wanted`, for at most [`TIMEOUT`];
/// `waiting_for` names what never came.
pub(crate) fn wait_for_state(
    segment: &Segment,
    wanted: u8,
    waiting_for: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    let mut state = [0];
    loop {
        segment.read_at(STATE, &mut state)?;
        if state[0] == wanted {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("no {waiting_for} after {}s", TIMEOUT.as_secs());
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Writes a zero-padded text field, truncated to its size.
pub(crate) fn write_text(segment: &Segment, offset: usize, text: &str) -> Result<(), AccessError> {
    let mut field = [0; TEXT_LEN];
    let len = text.len().min(TEXT_LEN);
    field[..len].copy_from_slice(&text.as_bytes()[..len]);
    segment.write_at(offset, &field)
}

/// Reads a zero-padded text field; the peer may have written anything there.
pub(crate) fn read_text(segment: &Segment, offset: usize) -> Result<String, AccessError> {
    let mut field = [0; TEXT_LEN];
    segment.read_at(offset, &mut field)?;
    let len = field.iter().position(|&byte| byte == 0).unwrap_or(TEXT_LEN);
    Ok(String::from_utf8_lossy(&field[..len]).into_owned())
}
