//! The SPSC ring against a `VecDeque` model (proptest), and across two threads.

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::ptr::NonNull;

    use ipcplane_shm::ring::{self, Consumer, Producer, RecvError, RingLayout, SendError};
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
            capacity_log2 in 4_u32..=10,
            max_fraction in 0.0_f64..=1.0,
            ops in ops(256),
        ) {
            let capacity = 1_usize << capacity_log2;
            let largest = RingLayout::max_message_for(capacity).unwrap();
            // Truncation is intended: a fraction of the largest size.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let max = (largest as f64 * max_fraction) as usize;
            let layout = RingLayout::new(capacity, max).unwrap();
            let heap = Heap::new(layout);
            let (mut producer, mut consumer) = heap.pair();
            // Messages in flight, and the byte positions of the format in the
            // module docs: 8-byte records, a wrap when one does not fit the end.
            let mut model = VecDeque::new();
            let (mut head, mut tail) = (0_usize, 0_usize);
            let mut ends = VecDeque::new();
            let mut seed = 0_u64;
            let mut buf = Vec::new();

            for op in ops {
                match op {
                    Op::Send(len) => {
                        let len = if len > 256 { max + (len - 256) } else { len.min(max) };
                        seed += 1;
                        let data = message(seed, len);
                        let size = (len + 15) & !7;
                        let to_end = capacity - head % capacity;
                        let need = if size > to_end { to_end + size } else { size };
                        let fits = need <= capacity - (head - tail);
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
                                prop_assert!(!model.is_empty());
                            }
                            Err(SendError::Corrupted) => prop_assert!(false, "corrupted"),
                        }
                    }
                    Op::Recv => {
                        let got = consumer.try_recv(&mut buf);
                        match model.pop_front() {
                            Some(want) => {
                                tail = ends.pop_front().unwrap().0;
                                prop_assert_eq!(got, Ok(Some(want.len())));
                                prop_assert_eq!(&buf, &want);
                            }
                            None => prop_assert_eq!(got, Ok(None)),
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
                                prop_assert_eq!(got, Ok(Some(want.len())));
                                prop_assert_eq!(&into[..want.len()], &want[..]);
                            }
                            None => prop_assert_eq!(got, Ok(None)),
                        }
                    }
                }
            }
            while let Some(want) = model.pop_front() {
                prop_assert_eq!(consumer.try_recv(&mut buf), Ok(Some(want.len())));
                prop_assert_eq!(&buf, &want);
            }
            prop_assert_eq!(consumer.try_recv(&mut buf), Ok(None));
        }
    }

    #[test]
    fn two_threads_pass_100_000_messages_in_order() {
        const COUNT: u64 = 100_000;
        let layout = RingLayout::new(4096, 200).unwrap();
        let heap = Heap::new(layout);
        let (mut producer, mut consumer) = heap.pair();
        let len_of = |i: u64| usize::try_from(i * 7 % 201).unwrap();

        std::thread::scope(|scope| {
            scope.spawn(move || {
                for i in 0..COUNT {
                    let data = message(i, len_of(i));
                    loop {
                        match producer.try_send(&data) {
                            Ok(()) => break,
                            Err(SendError::Full) => std::thread::yield_now(),
                            Err(err) => panic!("send {i}: {err}"),
                        }
                    }
                }
            });
            scope.spawn(move || {
                let mut buf = Vec::new();
                for i in 0..COUNT {
                    loop {
                        match consumer.try_recv(&mut buf) {
                            Ok(Some(len)) => {
                                assert_eq!(len, len_of(i), "message {i}");
                                assert_eq!(buf, message(i, len), "message {i}");
                                break;
                            }
                            Ok(None) => std::thread::yield_now(),
                            Err(err) => panic!("recv {i}: {err}"),
                        }
                    }
                }
                assert_eq!(consumer.try_recv(&mut buf), Ok(None));
            });
        });
    }
}
