//! Helper process for the end-to-end tests: one SDK operation per run, the
//! result printed as `key=value` lines, so tests can act as a second process
//! (or a second uid) against a real agent.
//!
//! Usage: `ipcplane-peer <command> [args]`, with `IPCPLANE_GRANT_SOCKET` set.
//! - `open <name|#id> <read|rw>`: print the first line of the segment as
//!   `data=`; with rw also write `reply from <pid>` at offset 1024.
//! - `hold <name> <size> [persistent|owner|on-last-detach|ttl <ms>]`: create a
//!   segment, print `id=`, keep it until stdin closes, then exit without
//!   detaching.
//! - `hold-open <name|#id> <read|rw>`: open and hold likewise.
//! - `hold-both <owned> <other>`: create `owned` with an owner lifetime and
//!   open `other` read-only; hold both likewise.
//! - `cycle`: create, write, detach and delete a segment, then exit.
//! - `stream-produce <name>` / `stream-consume <name>`: exchange numbered
//!   messages through one word each way, in lockstep, until stdin closes;
//!   print `sent=` / `received=` (the consumer fails on any gap or reorder).
//! - `delete <id>`: delete a segment.
//! - `probe <name>`: try what a hostile holder would: map a read-only grant
//!   writable (`map_rw=`), and shrink and grow a read-write grant
//!   (`shrink=`, `grow=`); print each outcome.
//!
//! - `reattach-stdin <id> <token-hex>`: present stdin's fd as segment `id`
//!   over a raw grant connection; print `outcome=allowed` or `error=<code>`.
//! - `ring-consume <name> <count>`: open ring `name`, receive `count`
//!   `u64` messages that must be 1, 2, ... in order; print `received=` and
//!   `lanes=` (how many producer lanes they came from).
//! - `ring-produce <name> <count>`: open ring `name` and attach a producer,
//!   print `ready=1`, wait for a line on stdin, then send `u64` messages
//!   1 to `count`; print `sent=`.
//! - `sem-pong <ping> <pong> <rounds>`: open both semaphores; `rounds` times
//!   acquire `ping` and release `pong`; print `rounds=`.
//! - `event-wait <name>`: open event `name`, read its sequence, print
//!   `ready=1`, and wait for a notification after it; print `woken=1`.
//!
//! Failures print `error=<kind>` and `message=<text>` and exit 3.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;

use std::time::Duration;

use ipcplane::{Access, Client, Error, Lifetime, SegmentId, SegmentRef};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            println!("error={}", kind(&error));
            println!("message={error}");
            ExitCode::from(3)
        }
    }
}

fn run(args: &[String]) -> Result<(), Error> {
    if args.first().map(String::as_str) == Some("reattach-stdin") {
        return reattach_stdin(args);
    }
    let client = Client::connect()?;
    if let Some(result) = run_typed(&client, args) {
        return result;
    }
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    match arg(0) {
        "open" => {
            let access = if arg(2) == "rw" {
                Access::ReadWrite
            } else {
                Access::Read
            };
            let segment = client.open_segment(target(arg(1)), access)?;
            let mut head = [0u8; 64];
            segment.read_at(0, &mut head)?;
            let text = String::from_utf8_lossy(&head);
            println!("data={}", text.trim_end_matches('\0'));
            println!("id={}", segment.id());
            println!("pid={}", std::process::id());
            if access == Access::ReadWrite {
                segment.write_at(
                    1024,
                    format!("reply from {}", std::process::id()).as_bytes(),
                )?;
            }
        }
        "hold" => {
            let size = arg(2).parse().unwrap_or(4096);
            let lifetime = match (arg(3), arg(4).parse()) {
                ("owner", _) => Lifetime::Owner,
                ("on-last-detach", _) => Lifetime::OnLastDetach,
                ("ttl", Ok(ms)) => Lifetime::Ttl(Duration::from_millis(ms)),
                _ => Lifetime::Persistent,
            };
            let segment = client
                .segment_builder()
                .name(arg(1))
                .size(size)
                .lifetime(lifetime)
                .create()?;
            println!("id={}", segment.id());
            hold_until_stdin_closes(segment);
        }
        "hold-open" => {
            let access = if arg(2) == "rw" {
                Access::ReadWrite
            } else {
                Access::Read
            };
            let segment = client.open_segment(target(arg(1)), access)?;
            println!("id={}", segment.id());
            hold_until_stdin_closes(segment);
        }
        "hold-both" => {
            let owned = client
                .segment_builder()
                .name(arg(1))
                .size(4096)
                .lifetime(Lifetime::Owner)
                .create()?;
            let opened = client.open_segment(target(arg(2)), Access::Read)?;
            println!("id={}", owned.id());
            hold_until_stdin_closes((owned, opened));
        }
        "stream-produce" => {
            let segment = client.segment_builder().name(arg(1)).size(4096).create()?;
            println!("id={}", segment.id());
            let stop = stop_when_stdin_closes();
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let next = sent + 1;
                segment.write_at(DATA, &next.to_ne_bytes())?;
                while word(&segment, ACK)? != next {
                    std::thread::yield_now();
                }
                sent = next;
            }
            segment.write_at(DATA, &u64::MAX.to_ne_bytes())?;
            println!("sent={sent}");
        }
        "stream-consume" => {
            let segment = client.open_segment(target(arg(1)), Access::ReadWrite)?;
            println!("id={}", segment.id());
            let mut received = 0u64;
            loop {
                let value = word(&segment, DATA)?;
                if value == u64::MAX {
                    break;
                }
                if value == received + 1 {
                    received = value;
                    segment.write_at(ACK, &value.to_ne_bytes())?;
                } else if value != received {
                    println!("error=out_of_order");
                    println!(
                        "message=expected {} or {received}, read {value}",
                        received + 1
                    );
                    std::process::exit(3);
                }
                std::thread::yield_now();
            }
            println!("received={received}");
        }
        "cycle" => {
            let segment = client.segment_builder().size(4096).create()?;
            segment.write_at(0, b"cycle")?;
            let id = segment.id();
            segment.detach()?;
            client.delete_segment(id)?;
        }
        "delete" => client.delete_segment(SegmentId::new(arg(1).parse().unwrap_or(0)))?,
        "probe" => {
            let read_only = client.open_segment(target(arg(1)), Access::Read)?;
            let writable =
                ipcplane_shm::mapping::Mapping::map(read_only.as_fd(), Access::ReadWrite);
            println!("map_rw={}", outcome(writable.map(drop)));
            let read_write = client.open_segment(target(arg(1)), Access::ReadWrite)?;
            println!(
                "shrink={}",
                outcome(rustix::fs::ftruncate(read_write.as_fd(), 0))
            );
            let grow = rustix::fs::ftruncate(read_write.as_fd(), (read_write.len() as u64) * 2);
            println!("grow={}", outcome(grow));
        }
        other => panic!("unknown command {other:?}"),
    }
    Ok(())
}

/// `reattach-stdin <id> <token-hex>`: over a raw grant connection, presents
/// our stdin (a memfd the test passed) as segment `id`; prints `outcome=`
/// `allowed`, or the agent's status code as `error=` (e.g. `7`).
fn reattach_stdin(args: &[String]) -> Result<(), Error> {
    use ipcplane_proto::v1::{self, grant_request, grant_response};
    use prost::Message;

    let id = args.get(1).and_then(|id| id.parse().ok()).unwrap_or(0);
    let token: Vec<u8> = args
        .get(2)
        .map(|hex| {
            (0..hex.len() / 2)
                .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                .collect()
        })
        .unwrap_or_default();
    let path = std::env::var(ipcplane_proto::paths::ENV_GRANT_SOCKET).unwrap_or_default();
    let socket = rustix::net::socket(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        None,
    )
    .map_err(|e| Error::Io(e.into()))?;
    let address =
        rustix::net::SocketAddrUnix::new(path.as_str()).map_err(|e| Error::Io(e.into()))?;
    rustix::net::connect(&socket, &address).map_err(|e| Error::Io(e.into()))?;
    let exchange = |kind,
                    fd: Option<std::os::fd::BorrowedFd<'_>>|
     -> Result<Option<grant_response::Kind>, Error> {
        let request = v1::GrantRequest {
            request_id: 1,
            kind: Some(kind),
        }
        .encode_to_vec();
        let fds: Vec<_> = fd.into_iter().collect();
        ipcplane_shm::fdpass::send(socket.as_fd(), &request, &fds).map_err(Error::Io)?;
        let mut buf = vec![0u8; ipcplane_proto::MAX_GRANT_DATAGRAM];
        let received = ipcplane_shm::fdpass::recv(socket.as_fd(), &mut buf).map_err(Error::Io)?;
        Ok(v1::GrantResponse::decode(&buf[..received.len])
            .ok()
            .and_then(|r| r.kind))
    };
    let hello = v1::Hello {
        protocol_version: ipcplane_proto::GRANT_PROTOCOL_VERSION,
    };
    exchange(grant_request::Kind::Hello(hello), None)?;
    let reattach = v1::ReattachSegment {
        id,
        token,
        access: v1::Access::ReadWrite as i32,
    };
    match exchange(
        grant_request::Kind::ReattachSegment(reattach),
        Some(std::io::stdin().as_fd()),
    )? {
        Some(grant_response::Kind::Segment(_)) => println!("outcome=allowed"),
        Some(grant_response::Kind::Error(error)) => println!("error={}", error.code),
        other => println!("error=unexpected {other:?}"),
    }
    Ok(())
}

/// How long the ring, semaphore and event commands wait for their peer.
const WAIT: Duration = Duration::from_secs(30);

/// The ring, semaphore and event commands, `None` for another command.
fn run_typed(client: &Client, args: &[String]) -> Option<Result<(), Error>> {
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    let count = || arg(2).parse::<u64>().unwrap_or(0);
    let result = match arg(0) {
        "ring-consume" => (|| {
            let ring = client.open_ring(target(arg(1)))?;
            let mut consumer = ring.consumer()?;
            consumer.set_timeout(Some(WAIT));
            let mut lanes = std::collections::BTreeSet::new();
            for expected in 1..=count() {
                let sample = consumer.recv()?;
                let value: u64 = sample.read_pod()?;
                lanes.insert(sample.lane());
                if value != expected {
                    println!("error=out_of_order");
                    println!("message=expected {expected}, received {value}");
                    std::process::exit(3);
                }
            }
            println!("received={}", count());
            println!("lanes={}", lanes.len());
            Ok(())
        })(),
        "ring-produce" => (|| {
            let ring = client.open_ring(target(arg(1)))?;
            let mut producer = ring.producer()?;
            producer.set_timeout(Some(WAIT));
            println!("ready=1");
            let _ = std::io::stdout().flush();
            std::io::stdin()
                .read_line(&mut String::new())
                .map_err(Error::Io)?;
            for value in 1..=count() {
                producer.send_pod(&value)?;
            }
            println!("sent={}", count());
            Ok(())
        })(),
        "sem-pong" => (|| {
            let ping = client.open_semaphore(target(arg(1)))?;
            let pong = client.open_semaphore(target(arg(2)))?;
            let rounds = arg(3).parse::<u64>().unwrap_or(0);
            for _ in 0..rounds {
                ping.acquire(Some(WAIT))?;
                pong.release()?;
            }
            println!("rounds={rounds}");
            Ok(())
        })(),
        "event-wait" => (|| {
            let event = client.open_event(target(arg(1)))?;
            let seen = event.sequence();
            println!("ready=1");
            let _ = std::io::stdout().flush();
            event.wait_since(seen, Some(WAIT))?;
            println!("woken=1");
            Ok(())
        })(),
        _ => return None,
    };
    Some(result)
}

/// Offsets of the stream commands' two words: the producer's latest
/// message number, and the consumer's acknowledgement of it.
const DATA: usize = 0;
const ACK: usize = 64;

fn word(segment: &ipcplane::Segment, offset: usize) -> Result<u64, Error> {
    let mut bytes = [0u8; 8];
    segment.read_at(offset, &mut bytes)?;
    Ok(u64::from_ne_bytes(bytes))
}

/// A flag raised when the test closes our stdin.
fn stop_when_stdin_closes() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    stop
}

/// Keeps `segment` mapped (and attached) until the test closes our stdin,
/// then exits without detaching: the agent must notice the exit itself.
fn hold_until_stdin_closes<T>(_held: T) {
    let _ = std::io::stdout().flush();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    // Exit skips destructors: no detach is sent.
    std::process::exit(0);
}

fn target(text: &str) -> SegmentRef<'_> {
    match text.strip_prefix('#') {
        Some(id) => SegmentRef::Id(SegmentId::new(id.parse().unwrap_or(0))),
        None => SegmentRef::Name(text),
    }
}

/// `allowed`, or `refused: ` and the error with its sources.
fn outcome<E: std::error::Error>(result: Result<(), E>) -> String {
    let Err(error) = result else {
        return "allowed".into();
    };
    let mut text = format!("refused: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn kind(error: &Error) -> &'static str {
    match error {
        Error::NotFound { .. } => "not_found",
        Error::PermissionDenied { .. } => "permission_denied",
        Error::QuotaExceeded { .. } => "quota_exceeded",
        Error::InvalidArgument { .. } => "invalid_argument",
        Error::AlreadyExists { .. } => "already_exists",
        Error::Connect { .. } => "connect",
        Error::WrongKind { .. } => "wrong_kind",
        _ => "other",
    }
}
