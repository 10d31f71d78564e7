//! Model checks of the ring's index protocol with loom: every interleaving
//! (within a bounded number of preemptions) of producers and a consumer on
//! a tiny ring delivers each message once, whole, and in order per lane.
//!
//! Run with `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test
//! --release -p ipcplane-shm --test loom` (as `.ci/run` does).
#![cfg(loom)]

#[cfg(test)]
mod tests {
    use std::ptr::NonNull;
    use std::sync::Arc;

    use ipcplane_shm::ring::{self, Consumer, Producer, RingLayout, SendError};
    use loom::sync::atomic::AtomicU64;

    /// A ring region made of loom's atomics, addressed word by word.
    struct Region {
        words: Vec<AtomicU64>,
    }

    // SAFETY: the words are only accessed through loom's atomics.
    unsafe impl Send for Region {}
    // SAFETY: as above.
    unsafe impl Sync for Region {}

    impl Region {
        fn new(layout: RingLayout) -> Arc<Self> {
            let words = (0..layout.region_bytes() / 8)
                .map(|_| AtomicU64::new(0))
                .collect();
            let region = Arc::new(Self { words });
            // SAFETY: the words live as long as the region, which outlives every
            // endpoint of a test, and are accessed only through the ring module.
            unsafe { ring::init(region.base(), region.len(), layout) }.unwrap();
            region
        }

        fn base(&self) -> NonNull<u8> {
            NonNull::from(&self.words[0]).cast()
        }

        /// The length the ring module sees: 8 bytes per word.
        fn len(&self) -> usize {
            self.words.len() * 8
        }

        fn producer(&self) -> Producer {
            // SAFETY: as in `new`.
            unsafe { Producer::attach(self.base(), self.len()) }.unwrap()
        }

        fn consumer(&self) -> Consumer {
            // SAFETY: as in `new`.
            unsafe { Consumer::attach(self.base(), self.len()) }.unwrap()
        }
    }

    /// Message `i` of `lane`: its length varies, so records wrap at different
    /// offsets.
    fn message(lane: u8, i: u8) -> Vec<u8> {
        vec![lane * 16 + i; usize::from(i % 3) * 3 + 1]
    }

    fn send(producer: &mut Producer, data: &[u8]) {
        loop {
            match producer.try_send(data) {
                Ok(()) => return,
                Err(SendError::Full) => loom::thread::yield_now(),
                Err(error) => panic!("send: {error}"),
            }
        }
    }

    fn recv(consumer: &mut Consumer) -> (usize, Vec<u8>) {
        loop {
            if let Some(sample) = consumer.try_recv().unwrap() {
                return (sample.lane(), sample.payload().to_vec());
            }
            loom::thread::yield_now();
        }
    }

    #[test]
    fn spsc_delivers_every_message_once_in_order_through_wraps_and_full() {
        loom::model(|| {
            // A lane of two blocks, messages up to 8 bytes (a block each):
            // it fills after two messages and wraps on the third.
            let region = Region::new(RingLayout::new(256, 8, 1).unwrap());
            let mut producer = region.producer();
            let mut consumer = region.consumer();
            let sender = loom::thread::spawn(move || {
                for i in 0..3 {
                    send(&mut producer, &message(0, i));
                }
            });
            for i in 0..3 {
                assert_eq!(recv(&mut consumer), (0, message(0, i)));
            }
            sender.join().unwrap();
            assert!(consumer.try_recv().unwrap().is_none());
        });
    }

    #[test]
    fn mpsc_delivers_each_producers_messages_once_in_order() {
        loom::model(|| {
            let region = Region::new(RingLayout::new(256, 8, 2).unwrap());
            let mut consumer = region.consumer();
            // A producer that finishes first frees its lane, and the other may
            // take it over: order per producer must hold either way.
            let senders: Vec<_> = (0..2_u8)
                .map(|id| {
                    let mut producer = region.producer();
                    loom::thread::spawn(move || {
                        for i in 0..2 {
                            send(&mut producer, &message(id, i));
                        }
                    })
                })
                .collect();
            let mut next = [0_u8; 2];
            for _ in 0..4 {
                let (_, got) = recv(&mut consumer);
                let id = usize::from(got[0] / 16);
                assert_eq!(got, message(u8::try_from(id).unwrap(), next[id]));
                next[id] += 1;
            }
            for sender in senders {
                sender.join().unwrap();
            }
            assert_eq!(next, [2, 2]);
            assert!(consumer.try_recv().unwrap().is_none());
        });
    }
}
