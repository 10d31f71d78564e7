//! The SPSC ring against a `VecDeque` model (proptest), and across two threads.

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::ptr::NonNull;

    use std::time::Duration;

    use ipcplane_shm::ring::{self, Consumer, Producer, RecvError, RingLayout, SendError, Wait};
    use proptest::prelude::*;

    /// A heap region holding an initialised ring; 8-byte aligned through `u64`.
    struct Heap {
        /// Owns the buffer; accessed only through `ptr` while endpoints live.
        _words: Vec<u64>,
        ptr: NonNull<u8>,
        len: usize,
    }

    // SAFETY: the buffer is owned by the heap and touched only atomically through
    // the ring endpoints, from whichever thread holds them.
    unsafe impl Send for Heap {}
    // SAFETY: as above; `&Heap` only hands out the pointer.
    unsafe impl Sync for Heap {}

    impl Heap {
        fn new(layout: RingLayout) -> Self {
            let mut words = vec![0_u64; layout.region_bytes().div_ceil(8)];
            let ptr = NonNull::new(words.as_mut_ptr().cast()).unwrap();
            let heap = Self {
                len: words.len() * 8,
                _words: words,
                ptr,
            };
            // SAFETY: the buffer is valid for the call and nothing else uses it.
            unsafe { ring::init(heap.ptr, heap.len, layout) }.unwrap();
            heap
        }

        /// Attaches both endpoints; the caller keeps `self` alive longer.
        fn pair(&self) -> (Producer, Consumer) {
            // SAFETY: the heap outlives the endpoints in every test, and is
            // accessed only through them.
            let producer = unsafe { Producer::attach(self.ptr, self.len) }.unwrap();
            // SAFETY: as above.
            let consumer = unsafe { Consumer::attach(self.ptr, self.len) }.unwrap();
            (producer, consumer)
        }
    }

    /// Moves the next message into `buf`, as the model expects.
    fn recv_vec(consumer: &mut Consumer, buf: &mut Vec<u8>) -> Result<Option<usize>, RecvError> {
        Ok(consumer.try_recv()?.map(|sample| {
            *buf = sample.payload().to_vec();
            buf.len()
        }))
    }

    fn message(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect()
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Send a message of this length (`0..=max`, or above to test `TooLarge`).
        Send(usize),
        /// Receive with `try_recv`.
        Recv,
        /// Receive with `try_recv_into` into a buffer of this size.
        RecvInto(usize),
    }

    fn ops(max: usize) -> impl Strategy<Value = Vec<Op>> {
        let op = prop_oneof![
            4 => (0..=max).prop_map(Op::Send),
            1 => (max + 1..=max + 8).prop_map(Op::Send),
            3 => Just(Op::Recv),
            2 => (0..=max).prop_map(Op::RecvInto),
        ];
        prop::collection::vec(op, 0..400)
    }

    proptest! {
        #[test]
        fn ring_behaves_like_a_bounded_queue(
            capacity_log2 in 8_u32..=12,
            max_fraction in 0.0_f64..=1.0,
            ops in ops(256),
        ) {
            let capacity = 1_usize << capacity_log2;
            let largest = RingLayout::max_message_for(capacity).unwrap();
            // Truncation is intended: a fraction of the largest size.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let max = (largest as f64 * max_fraction) as usize;
            let layout = RingLayout::new(capacity, max, 1).unwrap();
            let heap = Heap::new(layout);
            let (mut producer, mut consumer) = heap.pair();
            // Messages in flight, and the byte positions of the format in the
            // module docs: records in whole 128-byte blocks, a wrap when one
            // does not fit the end.
            // The consumer publishes its `tail` once capacity / 8 bytes are
            // pending, or when it finds the ring empty.
            let mut model = VecDeque::new();
            let (mut head, mut tail, mut published) = (0_usize, 0_usize, 0_usize);
            let batch = capacity / 8;
            let mut ends = VecDeque::new();
            let mut seed = 0_u64;
            let mut buf = Vec::new();

            for op in ops {
                match op {
                    Op::Send(len) => {
                        let len = if len > 256 { max + (len - 256) } else { len.min(max) };
                        seed += 1;
                        let data = message(seed, len);
                        let size = (len + 8 + 127) & !127;
                        let to_end = capacity - head % capacity;
                        let need = if size > to_end { to_end + size } else { size };
                        let fits = need <= capacity - (head - published);
                        match producer.try_send(&data) {
                            Ok(()) => {
                                prop_assert!(fits);
                                head += need;
                                ends.push_back((head, size));
                                model.push_back(data);
                            }
                            Err(SendError::TooLarge { len: l, max: m }) => {
                                prop_assert!(len > max);
                                prop_assert_eq!((l, m), (len, max));
                            }
                            Err(SendError::Full) => {
                                prop_assert!(len <= max && !fits);
                                // The largest record fits an empty ring, wrap included.
                                prop_assert!(!model.is_empty() || published != tail);
                            }
                            Err(other) => prop_assert!(false, "{other}"),
                        }
                    }
                    Op::Recv => {
                        let got = recv_vec(&mut consumer, &mut buf);
                        match model.pop_front() {
                            Some(want) => {
                                tail = ends.pop_front().unwrap().0;
                                if tail - published >= batch {
                                    published = tail;
                                }
                                prop_assert_eq!(got, Ok(Some(want.len())));
                                prop_assert_eq!(&buf, &want);
                            }
                            None => {
                                published = tail;
                                prop_assert_eq!(got, Ok(None));
                            }
                        }
                    }
                    Op::RecvInto(size) => {
                        let mut into = vec![0xEE; size.min(max)];
                        let got = consumer.try_recv_into(&mut into);
                        match model.front() {
                            Some(want) if want.len() > into.len() => {
                                prop_assert_eq!(got, Err(RecvError::BufferTooSmall { len: want.len() }));
                                // The consumer has released a wrap before the record.
                                let (end, size) = ends[0];
                                tail = end - size;
                            }
                            Some(_) => {
                                let want = model.pop_front().unwrap();
                                tail = ends.pop_front().unwrap().0;
                                if tail - published >= batch {
                                    published = tail;
                                }
                                prop_assert_eq!(got, Ok(Some(want.len())));
                                prop_assert_eq!(&into[..want.len()], &want[..]);
                            }
                            None => {
                                published = tail;
                                prop_assert_eq!(got, Ok(None));
                            }
                        }
                    }
                }
            }
            while let Some(want) = model.pop_front() {
                prop_assert_eq!(recv_vec(&mut consumer, &mut buf), Ok(Some(want.len())));
                prop_assert_eq!(&buf, &want);
            }
            prop_assert_eq!(recv_vec(&mut consumer, &mut buf), Ok(None));
        }
    }

    /// Long enough for any wait in a test; a hang fails instead of blocking CI.
    const PATIENCE: Option<Duration> = Some(Duration::from_secs(30));

    #[test]
    fn two_threads_pass_100_000_messages_in_order_parking_when_idle() {
        const COUNT: u64 = 100_000;
        let layout = RingLayout::new(4096, 200, 1).unwrap();
        let heap = Heap::new(layout);
        let (mut producer, mut consumer) = heap.pair();
        let len_of = |i: u64| usize::try_from(i * 7 % 201).unwrap();

        std::thread::scope(|scope| {
            scope.spawn(move || {
                for i in 0..COUNT {
                    let data = message(i, len_of(i));
                    // Short spins, so both sides park often.
                    let wait = Wait::SpinThenPark { spins: 8 };
                    producer.send(&data, wait, PATIENCE).unwrap();
                }
            });
            scope.spawn(move || {
                for i in 0..COUNT {
                    let sample = consumer
                        .recv(Wait::SpinThenPark { spins: 8 }, PATIENCE)
                        .unwrap();
                    assert_eq!(sample.len(), len_of(i), "message {i}");
                    assert_eq!(
                        sample.payload().to_vec(),
                        message(i, sample.len()),
                        "message {i}"
                    );
                }
                assert!(consumer.try_recv().unwrap().is_none());
            });
        });
    }

    #[test]
    fn four_producer_threads_into_one_consumer_keep_per_producer_order() {
        const PER_PRODUCER: u64 = 25_000;
        const PRODUCERS: usize = 4;
        let layout = RingLayout::new(1024, 64, PRODUCERS).unwrap();
        let heap = Heap::new(layout);
        // SAFETY: the heap outlives the endpoints (scoped threads below).
        let mut consumer = unsafe { Consumer::attach(heap.ptr, heap.len) }.unwrap();
        // All attach before any sends: a producer done and dropped early
        // would free its lane for a late one, which would number from 0 again.
        let attached = std::sync::Barrier::new(PRODUCERS);
        std::thread::scope(|scope| {
            for _ in 0..PRODUCERS {
                let (heap, attached) = (&heap, &attached);
                scope.spawn(move || {
                    // SAFETY: as above.
                    let mut producer = unsafe { Producer::attach(heap.ptr, heap.len) }.unwrap();
                    attached.wait();
                    let lane = producer.lane() as u64;
                    for i in 0..PER_PRODUCER {
                        let mut data = (lane << 32 | i).to_le_bytes().to_vec();
                        data.resize(8 + usize::try_from(i % 57).unwrap(), 0xAB);
                        producer.send(&data, Wait::PARK, PATIENCE).unwrap();
                    }
                });
            }
            let mut next = [0_u64; PRODUCERS];
            for _ in 0..PER_PRODUCER * PRODUCERS as u64 {
                let sample = consumer.recv(Wait::PARK, PATIENCE).unwrap();
                let mut word = [0; 8];
                sample.payload().read_at(0, &mut word).unwrap();
                let word = u64::from_le_bytes(word);
                let (lane, i) = (usize::try_from(word >> 32).unwrap(), word & 0xFFFF_FFFF);
                assert_eq!(lane, sample.lane());
                assert_eq!(i, next[lane], "lane {lane} out of order");
                assert_eq!(sample.len(), 8 + usize::try_from(i % 57).unwrap());
                next[lane] += 1;
            }
            assert_eq!(next, [PER_PRODUCER; PRODUCERS]);
        });
    }
}
