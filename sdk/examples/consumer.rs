//! Consumer half of the 5-minute tour: opens the segment `producer` created,
//! prints its greeting and writes an acknowledgement. The segment layout is
//! described in `tour/mod.rs`.
//!
//! ```sh
//! cargo run -p ipcplane --example consumer [NAME]   # NAME defaults to "demo"
//! ```
#![forbid(unsafe_code)]

mod tour;

use std::{env, process};

use anyhow::Context;
use ipcplane::{Access, Client};
use tour::{ACK, ACKNOWLEDGED, GREETING, READY, STATE, read_text, write_text};

fn main() -> anyhow::Result<()> {
    let name = env::args().nth(1).unwrap_or_else(|| "demo".to_owned());
    let client = Client::connect()?;
    let segment = client
        .open_segment(&name, Access::ReadWrite)
        .with_context(|| format!("cannot open segment {name:?}; is the producer running?"))?;
    let identity = client.identity();
    println!(
        "opened segment {} {name:?} as pid {} of tenant {}",
        segment.id(),
        identity.pid,
        identity.tenant,
    );

    tour::wait_for_state(&segment, READY, "greeting")?;
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
