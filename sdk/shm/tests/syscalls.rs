//! The grant path end to end within one process, on real system calls: the
//! "agent" side creates and seals a memfd, grants a read-only and a read-write
//! description over a `SOCK_SEQPACKET` socketpair, and the "client" side maps
//! what it received.

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, OwnedFd};

    use ipcplane_shm::Access;
    use ipcplane_shm::fdpass::{self, MAX_FDS};
    use ipcplane_shm::mapping::{MapError, Mapping};
    use ipcplane_shm::memfd::{self, REQUIRED_SEALS};
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};

    fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap()
    }

    /// Receives one datagram that must carry exactly one fd.
    fn recv_one_fd(sock: &OwnedFd) -> (Vec<u8>, OwnedFd) {
        let mut buf = [0; 64];
        let received = fdpass::recv(sock.as_fd(), &mut buf).unwrap();
        assert!(!received.truncated && !received.fds_truncated);
        let [fd]: [OwnedFd; 1] = received.fds.try_into().unwrap();
        (buf[..received.len].to_vec(), fd)
    }

    #[test]
    fn granted_read_only_fd_maps_read_only_and_sees_the_writers_bytes() {
        let (agent, client) = seqpacket_pair();
        let memfd = memfd::create_sealed("segment", 65536).unwrap();
        let read_only = memfd::reopen(memfd.as_fd(), Access::Read).unwrap();
        let read_write = memfd::reopen(memfd.as_fd(), Access::ReadWrite).unwrap();

        fdpass::send(agent.as_fd(), b"ro", &[read_only.as_fd()]).unwrap();
        fdpass::send(agent.as_fd(), b"rw", &[read_write.as_fd()]).unwrap();
        drop((read_only, read_write, memfd));
        let (ro_tag, ro_fd) = recv_one_fd(&client);
        let (rw_tag, rw_fd) = recv_one_fd(&client);

        assert_eq!(
            (ro_tag.as_slice(), rw_tag.as_slice()),
            (&b"ro"[..], &b"rw"[..])
        );
        assert_eq!(memfd::access_of(ro_fd.as_fd()).unwrap(), Access::Read);
        assert_eq!(memfd::access_of(rw_fd.as_fd()).unwrap(), Access::ReadWrite);
        assert!(
            memfd::seals(ro_fd.as_fd())
                .unwrap()
                .contains(REQUIRED_SEALS)
        );

        match Mapping::map(ro_fd.as_fd(), Access::ReadWrite) {
            Err(MapError::Mmap(err)) => assert_eq!(err.raw_os_error(), Some(libc::EACCES)),
            other => panic!("expected Mmap(EACCES), got {other:?}"),
        }
        let reader = Mapping::map(ro_fd.as_fd(), Access::Read).unwrap();
        let writer = Mapping::map(rw_fd.as_fd(), Access::ReadWrite).unwrap();
        writer.write_at(65536 - 5, b"hello").unwrap();
        let mut buf = [0; 5];
        reader.read_at(65536 - 5, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
    }

    #[test]
    fn a_datagram_carries_up_to_max_fds_in_order() {
        let (agent, client) = seqpacket_pair();
        let memfds: Vec<OwnedFd> = (1..=MAX_FDS as u64)
            .map(|pages| memfd::create_sealed("segment", pages * 4096).unwrap())
            .collect();
        let borrowed: Vec<_> = memfds.iter().map(AsFd::as_fd).collect();

        fdpass::send(agent.as_fd(), b"batch", &borrowed).unwrap();
        let received = fdpass::recv(client.as_fd(), &mut [0; 16]).unwrap();

        let sizes: Vec<usize> = received
            .fds
            .iter()
            .map(|fd| Mapping::map(fd.as_fd(), Access::Read).unwrap().len())
            .collect();
        assert_eq!(sizes, [4096, 8192, 12288, 16384]);
    }

    /// Whether thread `tid` of this process is asleep (state `S`).
    fn is_sleeping(tid: rustix::thread::Pid) -> bool {
        let path = format!("/proc/self/task/{}/stat", tid.as_raw_nonzero());
        let stat = std::fs::read_to_string(path).unwrap();
        // The state follows the command name, which is in parentheses and may
        // itself contain spaces or parentheses.
        let after_comm = &stat[stat.rfind(')').unwrap() + 1..];
        after_comm.split_whitespace().next() == Some("S")
    }

    #[test]
    fn a_release_through_one_mapping_wakes_a_sleeper_on_another() {
        use std::sync::{Arc, mpsc};
        use std::thread;
        use std::time::{Duration, Instant};

        use ipcplane_shm::semaphore::{self, Semaphore};

        // Two mappings of one memfd, at two addresses, as two processes
        // would have: a private futex (keyed by address) would never wake.
        let memfd = memfd::create_sealed("semaphore", 4096).unwrap();
        let first = Mapping::map(memfd.as_fd(), Access::ReadWrite).unwrap();
        let second = Mapping::map(memfd.as_fd(), Access::ReadWrite).unwrap();
        assert_ne!(first.as_ptr(), second.as_ptr());
        semaphore::init_mapping(&first, 0).unwrap();
        let sleeper_side = Semaphore::from_mapping(Arc::new(first)).unwrap();
        let releaser_side = Semaphore::from_mapping(Arc::new(second)).unwrap();

        let timeout = Duration::from_secs(10);
        let (tid_tx, tid) = mpsc::channel();
        let sleeper = thread::spawn(move || {
            tid_tx.send(rustix::thread::gettid()).unwrap();
            let start = Instant::now();
            let acquired = sleeper_side.acquire(Some(timeout)).is_ok();
            (acquired, start.elapsed())
        });
        let tid = tid.recv().unwrap();
        // Once registered, the sleeper's only blocking call is the futex
        // wait, so registered and asleep means asleep in the kernel.
        while releaser_side.waiters() != 1 || !is_sleeping(tid) {
            thread::yield_now();
        }
        releaser_side.release().unwrap();

        let (acquired, waited) = sleeper.join().unwrap();
        // A sleeper the wake missed would take the unit only at its timeout.
        assert!(acquired && waited < timeout, "waited {waited:?}");
        assert_eq!((releaser_side.value(), releaser_side.waiters()), (0, 0));
    }
}
