//! Producer half of the 5-minute tour: creates a persistent 1 MiB segment (or
//! opens it if it already exists), writes a numbered greeting into it, and
//! waits for `consumer` to acknowledge it.
//!
//! ```sh
//! cargo run -p ipcplane --example producer [NAME]   # NAME defaults to "demo"
//! ```
//!
//! The segment layout it shares with `consumer.rs` is in `tour/mod.rs`.
#![forbid(unsafe_code)]

mod tour;

use std::{env, process};

use ipcplane::{Access, Client, Error, Lifetime};
use tour::{ACK, ACKNOWLEDGED, GREETING, READY, SEQUENCE, STATE, TIMEOUT, read_text, write_text};

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

    tour::wait_for_state(&segment, ACKNOWLEDGED, "acknowledgement")?;
    println!("consumer replied {:?}", read_text(&segment, ACK)?);
    Ok(())
}
