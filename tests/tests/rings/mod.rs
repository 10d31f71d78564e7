//! Rings, semaphores and events: the agent creates them (computing the size
//! and writing the header), grants a ring with its eventfd doorbell, and two
//! real processes exchange messages, units and notifications through them,
//! blocking and async, across an agent restart too.

use std::io::Write;
use std::process::{Child, ChildStdin, Command};
use std::time::Duration;

use ipcplane::ring::{RecvError, RingLayout};
use ipcplane::{Error, SegmentKind};
use ipcplane_e2e::{TestAgent, run, wait_with_timeout};
use ipcplane_proto::v1;

use super::{
    PEER, TIMEOUT, events_with, eventually, fields, runtime, spawn_first_line, stderr, stdout,
};

/// A peer command started with stdin and stdout piped, once it printed
/// `ready=1`: its stdin (a line on it is its go) and the child.
fn spawn_ready(command: &mut Command) -> (Child, ChildStdin) {
    let (mut child, line) = spawn_first_line(command);
    assert_eq!(line, "ready=1", "{command:?} printed {line:?}");
    let stdin = child.stdin.take().unwrap();
    (child, stdin)
}

/// Waits for a peer to exit successfully and returns its `key=value` lines.
fn finished(mut child: Child) -> std::collections::BTreeMap<String, String> {
    let status = wait_with_timeout(&mut child, TIMEOUT).expect("the peer exits");
    let output = child.wait_with_output().unwrap();
    assert!(status.success(), "{}", stdout(&output));
    fields(&output)
}

#[test]
fn a_ring_created_in_one_process_streams_messages_to_a_consumer_in_another() {
    let agent = TestAgent::start();
    let client = agent.client();
    // A small ring, so the stream wraps and the producer waits for room.
    let ring = client
        .ring_builder("stream")
        .capacity(256)
        .create()
        .unwrap();
    let mut producer = ring.producer().unwrap();
    producer.set_timeout(Some(TIMEOUT));
    const COUNT: u64 = 20_000;

    let mut command = agent.peer(PEER.as_ref());
    command.args(["ring-consume", "stream", &COUNT.to_string()]);
    let consumer = std::thread::spawn(move || run(&mut command));
    for value in 1..=COUNT {
        producer.send_pod(&value).unwrap();
    }
    let output = consumer.join().unwrap();

    assert!(output.status.success(), "{}", stdout(&output));
    let peer = fields(&output);
    assert_eq!(
        (peer["received"].as_str(), peer["lanes"].as_str()),
        (COUNT.to_string().as_str(), "1")
    );
    let info = ring.info();
    assert_eq!(info.kind, SegmentKind::Ring);
    let params = info.ring.unwrap();
    assert_eq!(
        (
            params.capacity_bytes,
            params.max_message_bytes,
            params.producers
        ),
        (256, 256 / 2 - 8, 1)
    );
    assert_eq!(
        info.size_bytes,
        RingLayout::new(256, 120, 1).unwrap().region_bytes() as u64
    );
}

#[test]
fn rings_open_by_name_or_id_and_other_kinds_are_refused_and_released() {
    let agent = TestAgent::start();
    let client = agent.client();
    let ring = client.create_ring("r", 4096).unwrap();
    let _plain = client
        .segment_builder()
        .name("plain")
        .size(4096)
        .create()
        .unwrap();

    let by_id = client.open_ring(ring.id()).unwrap();
    let by_name = client.open_ring("r").unwrap();
    let mut producer = by_id.producer().unwrap();
    let mut consumer = by_name.consumer().unwrap();
    producer.send(b"hello").unwrap();
    assert_eq!(consumer.try_recv().unwrap().unwrap().to_vec(), b"hello");

    let plain_as_ring = client.open_ring("plain").unwrap_err();
    assert!(
        matches!(
            plain_as_ring,
            Error::WrongKind {
                expected: SegmentKind::Ring,
                found: SegmentKind::Plain,
                ..
            }
        ),
        "{plain_as_ring:?}"
    );
    assert!(
        plain_as_ring.to_string().starts_with("not a ring segment"),
        "{plain_as_ring}"
    );
    assert!(matches!(
        client.open_semaphore("r").unwrap_err(),
        Error::WrongKind {
            expected: SegmentKind::Semaphore,
            found: SegmentKind::Ring,
            ..
        }
    ));
    assert!(matches!(
        client.open_event("plain").unwrap_err(),
        Error::WrongKind {
            expected: SegmentKind::Event,
            ..
        }
    ));
    // The refused grants were released: only the handles above count.
    let counts: Vec<(String, u64)> = agent
        .listed_segments()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["attachment_count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(counts, [("r".to_owned(), 3), ("plain".to_owned(), 1)]);
}

#[test]
fn invalid_ring_specs_are_refused_as_invalid_arguments_and_audited() {
    let agent = TestAgent::start();
    let client = agent.client();
    let refusal = |capacity, max_message, producers| match client
        .ring_builder("bad")
        .capacity(capacity)
        .max_message(max_message)
        .producers(producers)
        .create()
    {
        Err(Error::InvalidArgument { message }) => message,
        other => panic!("expected InvalidArgument, got {other:?}"),
    };

    assert!(refusal(1000, 0, 1).contains("power of two"));
    assert!(refusal(4096, 4096, 1).contains("max message size 4096"));
    assert!(refusal(4096, 0, 65).contains("1 to 64 lanes"));

    assert!(agent.listed_segments().is_empty(), "nothing was created");
    let denied = events_with(
        &runtime().block_on(agent.audit_events()),
        "segment.create",
        v1::Outcome::Denied,
    );
    assert_eq!(denied.len(), 3);
    assert!(
        denied
            .iter()
            .all(|e| e.detail.starts_with("invalid ring: ")),
        "{denied:?}"
    );
}

#[test]
fn quotas_apply_to_the_size_a_ring_takes() {
    let agent = TestAgent::start_with("[quota]\nmax_segment_bytes = \"64KiB\"\n");
    let client = agent.client();

    match client.ring_builder("big").capacity(64 << 10).create() {
        Err(Error::QuotaExceeded { quota, .. }) => assert_eq!(quota, "max_segment_bytes"),
        other => panic!("expected a quota refusal, got {other:?}"),
    }
    let fits = client
        .ring_builder("fits")
        .capacity(32 << 10)
        .create()
        .unwrap();

    let size = RingLayout::new(32 << 10, 0, 1).unwrap().region_bytes() as u64;
    assert_eq!(fits.info().size_bytes, size);
    assert_eq!(agent.listed_segments()[0]["size_bytes"], size);
}

#[test]
fn ipcctl_creates_and_lists_rings_semaphores_and_events_that_the_sdk_opens() {
    let agent = TestAgent::start();
    for args in [
        &["--name", "r", "--ring-capacity", "4KiB", "--producers", "2"][..],
        &["--name", "s", "--semaphore", "2"],
        &["--name", "e", "--event"],
    ] {
        let output = run(agent.ipcctl().args(["segment", "create"]).args(args));
        assert!(output.status.success(), "{}", stderr(&output));
    }

    let listed = agent.listed_segments();
    let kinds: Vec<&str> = listed.iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["RING", "SEMAPHORE", "EVENT"]);
    assert_eq!(
        listed[0]["ring"],
        serde_json::json!({"capacity_bytes": 4096, "max_message_bytes": 2040, "producers": 2})
    );
    assert_eq!(listed[1]["semaphore"]["initial_value"], 2);
    let table = run(agent.ipcctl().args(["segment", "list", "--kind", "ring"]));
    assert!(table.status.success(), "{}", stderr(&table));
    let lines: Vec<String> = stdout(&table).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains("KIND"), "{lines:?}");
    assert!(lines[1].contains(" ring "), "{lines:?}");
    let wide =
        run(agent
            .ipcctl()
            .args(["-o", "wide", "segment", "get", &listed[0]["id"].to_string()]));
    assert!(
        stdout(&wide).contains("capacity=4KiB,max_message=2040B,producers=2"),
        "{}",
        stdout(&wide)
    );

    // The agent wrote each header on the gRPC path too.
    let client = agent.client();
    let ring = client.open_ring("r").unwrap();
    let (mut first, mut second) = (ring.producer().unwrap(), ring.producer().unwrap());
    assert!(matches!(
        ring.producer().unwrap_err(),
        Error::RingLayout(ipcplane::ring::LayoutError::LanesTaken { lanes: 2 })
    ));
    first.send(b"one").unwrap();
    second.send(b"two").unwrap();
    let mut consumer = ring.consumer().unwrap();
    let mut got = Vec::new();
    while let Some(sample) = consumer.try_recv().unwrap() {
        got.push(sample.to_vec());
    }
    got.sort();
    assert_eq!(got, [b"one".to_vec(), b"two".to_vec()]);
    assert_eq!(client.open_semaphore("s").unwrap().value(), 2);
    client.open_event("e").unwrap().notify_all();
}

#[test]
fn a_semaphore_ping_pongs_between_two_processes() {
    let agent = TestAgent::start();
    let client = agent.client();
    let ping = client.create_semaphore("ping", 0).unwrap();
    let pong = client.semaphore_builder("pong").create().unwrap();
    assert_eq!(ping.info().semaphore_initial_value, Some(0));
    const ROUNDS: u64 = 2_000;

    let mut command = agent.peer(PEER.as_ref());
    command.args(["sem-pong", "ping", "pong", &ROUNDS.to_string()]);
    let peer = std::thread::spawn(move || run(&mut command));
    for _ in 0..ROUNDS {
        ping.release().unwrap();
        pong.acquire(Some(TIMEOUT)).unwrap();
    }
    let output = peer.join().unwrap();

    assert!(output.status.success(), "{}", stdout(&output));
    assert_eq!(fields(&output)["rounds"], ROUNDS.to_string());
    assert_eq!((ping.value(), pong.value()), (0, 0));
}

#[test]
fn an_event_wakes_a_waiter_in_another_process() {
    let agent = TestAgent::start();
    let client = agent.client();
    let bell = client.create_event("bell").unwrap();
    // Nobody waits yet: this notification must not count for the waiter.
    bell.notify_all();

    let (waiter, _stdin) = spawn_ready(agent.peer(PEER.as_ref()).args(["event-wait", "bell"]));
    bell.notify_all();

    assert_eq!(finished(waiter)["woken"], "1");
}

/// Receives `count` messages 1, 2, ... with `recv_async`, the first of them
/// only after the consumer is parked on the doorbell and `go` has let the
/// producer start.
fn receive_async(consumer: &mut ipcplane::ring::Consumer, go: &mut ChildStdin, count: u64) {
    runtime().block_on(async {
        {
            let mut first = std::pin::pin!(consumer.recv_async());
            let parked = tokio::select! {
                biased;
                _ = &mut first => false,
                () = std::future::ready(()) => true,
            };
            assert!(
                parked,
                "a message arrived before the producer was told to send"
            );
            writeln!(go, "go").unwrap();
            let sample = tokio::time::timeout(TIMEOUT, first)
                .await
                .expect("the doorbell woke the consumer")
                .unwrap();
            assert_eq!(sample.read_pod::<u64>().unwrap(), 1);
        }
        for expected in 2..=count {
            let sample = tokio::time::timeout(TIMEOUT, consumer.recv_async())
                .await
                .expect("each message wakes the consumer")
                .unwrap();
            assert_eq!(sample.read_pod::<u64>().unwrap(), expected);
        }
    });
}

#[test]
fn async_receive_is_woken_by_a_commit_in_another_process() {
    let agent = TestAgent::start();
    let client = agent.client();
    let ring = client
        .ring_builder("async")
        .capacity(1024)
        .create()
        .unwrap();
    let mut consumer = ring.consumer().unwrap();
    let (producer, mut go) =
        spawn_ready(
            agent
                .peer(PEER.as_ref())
                .args(["ring-produce", "async", "500"]),
        );

    receive_async(&mut consumer, &mut go, 500);

    assert_eq!(finished(producer)["sent"], "500");
    assert!(matches!(
        consumer.recv_timeout(Duration::from_millis(1)),
        Err(Error::RingRecv(RecvError::TimedOut))
    ));
}

#[test]
fn the_doorbell_survives_an_agent_restart_and_async_receive_keeps_working() {
    let mut agent = TestAgent::start();
    let client = agent.client();
    let ring = client
        .ring_builder("durable")
        .capacity(1024)
        .producers(2)
        .create()
        .unwrap();
    let mut consumer = ring.consumer().unwrap();

    agent.kill();
    agent.restart();
    eventually("the client re-presented the ring", || {
        client.reconnects() == 1
    });
    let listed = agent.listed_segments();
    assert_eq!(
        (listed[0]["kind"].as_str(), listed[0]["state"].as_str()),
        (Some("RING"), Some("ACTIVE"))
    );
    assert_eq!(listed[0]["ring"]["producers"], 2);
    // A process that opens the ring now gets the doorbell the consumer
    // waits on: the agent adopted it, and made no new one.
    let (producer, mut go) =
        spawn_ready(
            agent
                .peer(PEER.as_ref())
                .args(["ring-produce", "durable", "100"]),
        );
    receive_async(&mut consumer, &mut go, 100);

    assert_eq!(finished(producer)["sent"], "100");
    let reattached = events_with(
        &runtime().block_on(agent.audit_events()),
        "segment.reattach",
        v1::Outcome::Allowed,
    );
    assert_eq!(reattached.len(), 1);
    assert!(
        reattached[0].detail.contains("doorbell=adopted"),
        "{reattached:?}"
    );
}
