//! The data path across real processes: rings created by the real agent,
//! producers in other processes (`ipcplane-ring-peer`), this test process
//! as the consumer. Every message must arrive exactly once, whole, and in
//! order per producer; a producer's death or a hostile peer must not stall
//! or crash the other side.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use ipcplane::ring::{Consumer, LayoutError, Ring};
use ipcplane::{Access, Error};
use ipcplane_e2e::{TestAgent, can_switch_uid, datapath};

use super::{events, eventually};

const RING_PEER: &str = env!("CARGO_BIN_EXE_ipcplane-ring-peer");

/// Messages per test run across all producers, as the acceptance asks.
const MESSAGES: u64 = 10_000_000;

/// Long enough for any single wait; a stall fails the test instead.
const PATIENCE: Duration = Duration::from_secs(120);

fn create_ring(agent: &TestAgent, name: &str, capacity: u64, producers: u32) -> Ring {
    agent
        .client()
        .ring_builder(name)
        .capacity(capacity)
        .max_message(256)
        .producers(producers)
        .create()
        .expect("create ring")
}

fn spawn_producer(agent: &TestAgent, ring: &str, id: u32, count: u64, hang: bool) -> Child {
    let mut command = agent.peer(Path::new(RING_PEER));
    command.args([ring, &id.to_string(), &count.to_string()]);
    if hang {
        command.arg("hang");
    }
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn ipcplane-ring-peer")
}

/// Receives one message and checks it; returns its producer and number.
fn receive(consumer: &mut Consumer) -> (u32, u64) {
    let sample = consumer.recv().expect("receive within the timeout");
    let payload = sample.payload();
    datapath::check(sample.len(), |offset, buf| {
        payload.read_at(offset, buf).expect("in bounds");
    })
}

/// Receives `total` messages and checks each producer's arrive in order
/// from 0; returns how many came from each.
fn receive_in_order(consumer: &mut Consumer, producers: usize, total: u64) -> Vec<u64> {
    let mut next = vec![0_u64; producers];
    for _ in 0..total {
        let (id, seq) = receive(consumer);
        let id = usize::try_from(id).unwrap();
        assert_eq!(seq, next[id], "producer {id} out of order");
        next[id] += 1;
    }
    next
}

fn consumer_of(ring: &Ring) -> Consumer {
    let mut consumer = ring.consumer().expect("attach the consumer");
    consumer.set_timeout(Some(PATIENCE));
    consumer
}

fn assert_drained(consumer: &mut Consumer) {
    assert!(
        consumer.try_recv().expect("ring intact").is_none(),
        "a message too many"
    );
}

fn assert_success(child: Child) {
    let output = child.wait_with_output().expect("producer output");
    assert!(
        output.status.success(),
        "producer failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn spsc_delivers_ten_million_messages_once_and_in_order() {
    let agent = TestAgent::start();
    let ring = create_ring(&agent, "spsc", 1 << 20, 1);
    let mut consumer = consumer_of(&ring);
    let producer = spawn_producer(&agent, "spsc", 0, MESSAGES, false);
    assert_eq!(receive_in_order(&mut consumer, 1, MESSAGES), [MESSAGES]);
    assert_success(producer);
    assert_drained(&mut consumer);
}

#[test]
fn four_producer_processes_deliver_ten_million_messages_in_per_producer_order() {
    let agent = TestAgent::start();
    let ring = create_ring(&agent, "mpsc", 256 << 10, 4);
    let mut consumer = consumer_of(&ring);
    let each = MESSAGES / 4;
    let producers: Vec<Child> = (0..4)
        .map(|id| spawn_producer(&agent, "mpsc", id, each, false))
        .collect();
    assert_eq!(receive_in_order(&mut consumer, 4, MESSAGES), [each; 4]);
    producers.into_iter().for_each(assert_success);
    assert_drained(&mut consumer);
}

#[test]
fn a_producer_killed_mid_write_stalls_nobody_and_its_lane_is_taken_over() {
    let agent = TestAgent::start();
    let ring = create_ring(&agent, "kill", 64 << 10, 3);
    let mut consumer = consumer_of(&ring);
    // Producer 0 sends 200 messages (they fit its lane), then dies holding a
    // half-written loan.
    let mut doomed = spawn_producer(&agent, "kill", 0, 200, true);
    let mut lines = BufReader::new(doomed.stdout.take().unwrap()).lines();
    for expected in ["sent=200", "loaned=1"] {
        assert_eq!(lines.next().unwrap().unwrap(), expected);
    }
    let steady = spawn_producer(&agent, "kill", 1, 100_000, false);
    doomed.kill().unwrap();
    doomed.wait().unwrap();

    // Its messages before the loan all arrive; the other keeps flowing.
    let counts = receive_in_order(&mut consumer, 2, 100_200);
    assert_eq!(counts, [200, 100_000]);
    assert_success(steady);
    assert_drained(&mut consumer);

    // A new producer takes over a lane (the dead one's, or a free one) and
    // is heard, after everything before it.
    let heir = spawn_producer(&agent, "kill", 2, 1000, false);
    for next in 0..1000 {
        assert_eq!(receive(&mut consumer), (2, next));
    }
    assert_success(heir);
    assert_drained(&mut consumer);
}

#[test]
fn a_producer_of_another_pid_namespace_that_dies_gets_its_lane_freed_by_the_agent() {
    if !can_switch_uid() {
        println!(
            "SKIPPED: needs root to start a producer in a pid namespace of its own (CI runs as root)"
        );
        return;
    }
    let agent = TestAgent::start();
    let ring = create_ring(&agent, "contained", 64 << 10, 1);
    let mut consumer = consumer_of(&ring);
    // Pid 1 of a namespace of its own, as in a container: it sends 10
    // messages, then dies holding a half-written loan (`unshare` dying takes
    // it along).
    let mut doomed = agent
        .peer(Path::new("unshare"))
        .args(["--pid", "--kill-child", "--mount-proc", RING_PEER])
        .args(["contained", "0", "10", "hang"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn unshare");
    let mut lines = BufReader::new(doomed.stdout.take().unwrap()).lines();
    for expected in ["sent=10", "loaned=1"] {
        assert_eq!(lines.next().unwrap().unwrap(), expected);
    }
    let lane_taken = |ring: &Ring| {
        matches!(
            ring.producer(),
            Err(Error::RingLayout(LayoutError::LanesTaken { lanes: 1 }))
        )
    };
    assert!(lane_taken(&ring), "its lane is taken while it lives");
    // Its stdin stays open until it is gone (`wait` would close it first,
    // and an end of input would let it exit cleanly before `unshare`'s
    // death signal reaches it).
    let stdin = doomed.stdin.take();
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    drop(stdin);
    for next in 0..10 {
        assert_eq!(receive(&mut consumer), (0, next));
    }

    // No process here can tell that a pid of that namespace is gone; the
    // agent, told by the peer's pidfd, frees the lane, and audits it.
    eventually("the agent frees the lane", || !lane_taken(&ring));
    let mut heir = ring.producer().unwrap();
    heir.send(b"heir").unwrap();
    let mut got = [0; 4];
    assert_eq!(consumer.recv().unwrap().copy_into(&mut got).unwrap(), 4);
    assert_eq!(&got, b"heir");
    let resource = format!("segments/{}", ring.id());
    eventually("the release is audited", || {
        !events(&agent, "ring.release", &resource).is_empty()
    });
    let released = events(&agent, "ring.release", &resource);
    assert_eq!(released.len(), 1, "{released:?}");
    assert!(
        released[0].detail.starts_with("freed 1 role(s)"),
        "{released:?}"
    );
}

#[test]
fn a_consumer_that_corrupts_the_header_makes_the_producer_fail() {
    let agent = TestAgent::start();
    let ring = create_ring(&agent, "hostile", 4096, 1);
    let mut consumer = consumer_of(&ring);
    let producer = spawn_producer(&agent, "hostile", 0, 1_000_000, false);
    receive_in_order(&mut consumer, 1, 100);

    // The consumer side overwrites the ring's header (its magic) through a
    // plain read-write mapping of the segment, then keeps consuming, so the
    // producer finds it when it next looks at the consumer's progress.
    let client = agent.client();
    let raw = match client.open_segment(ring.id(), Access::ReadWrite) {
        Ok(raw) => raw,
        Err(error) => panic!("a hostile holder maps the ring's bytes: {error}"),
    };
    raw.write_at(0, &[0xA5; 64]).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let output = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(Some(sample)) = consumer.try_recv() {
                    drop(sample);
                }
            }
        });
        let output = producer.wait_with_output().unwrap();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        output
    });
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(3), "{stdout}");
    assert!(
        stdout.contains("the ring is corrupted"),
        "the producer reports the corruption: {stdout}"
    );
}
