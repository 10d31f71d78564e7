//! Producer process for the data-path end-to-end tests: streams numbered
//! messages of pseudo-random sizes into a ring, so a test can check, as the
//! consumer, that every message arrives once, whole and in order.
//!
//! Usage: `ipcplane-ring-peer <ring-name> <producer-id> <count> [hang]`, with
//! `IPCPLANE_GRANT_SOCKET` set. Sends `count` messages (see
//! [`ipcplane_e2e::datapath::message`]), prints `sent=<count>` and exits;
//! with `hang`, it then loans space for one more message, writes half of
//! it, prints `loaned=1` and waits on stdin forever, so a test can kill it mid-write.
//! Failures print `error=<text>` (with its causes) and exit 3.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use ipcplane::{Client, Error};
use ipcplane_e2e::datapath;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The whole chain, so a test can tell a timeout from corruption.
            let mut text = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                text = format!("{text}: {cause}");
                source = cause.source();
            }
            println!("error={text}");
            ExitCode::from(3)
        }
    }
}

fn run(args: &[String]) -> Result<(), Error> {
    let [name, id, count, rest @ ..] = args else {
        panic!("usage: ipcplane-ring-peer <ring-name> <producer-id> <count> [hang]");
    };
    let id: u32 = id.parse().expect("producer id");
    let count: u64 = count.parse().expect("message count");
    let client = Client::connect()?;
    let ring = client.open_ring(name.as_str())?;
    let mut producer = ring.producer()?;
    producer.set_timeout(Some(Duration::from_secs(120)));
    let max = producer.layout().max_message();
    let mut payload = Vec::with_capacity(max);
    for seq in 0..count {
        datapath::message(id, seq, max, &mut payload);
        producer.send(&payload)?;
    }
    println!("sent={count}");
    if rest.first().map(String::as_str) == Some("hang") {
        let mut loan = producer.loan(max)?;
        datapath::message(id, count, max, &mut payload);
        loan.write_at(0, &payload[..payload.len() / 2])
            .expect("in bounds");
        println!("loaned=1");
        std::io::stdout().flush().map_err(Error::Io)?;
        // Killed here, with the loan open.
        let _ = std::io::stdin().read(&mut [0]);
    }
    Ok(())
}
