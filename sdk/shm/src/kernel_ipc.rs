//! The kernel's IPC, for comparison: System V message queues and semaphores,
//! and POSIX process-shared semaphores (`sem_t` with `pshared = 1`) in a
//! shared mapping. ipcplane does not use these to move data; they are here,
//! behind safe wrappers, so that benchmarks and the System V shim's tests can
//! measure ipcplane against what the kernel and libc already offer.
//!
//! Each wrapper is the thinnest safe layer over the calls: one system call (or
//! libc call) per operation, retried on `EINTR`, nothing cached.
//!
//! # Trust
//! - A System V object is named by an integer id that any process with the
//!   right permissions may use: the objects made here are `IPC_PRIVATE` with
//!   mode `0600`, so only this uid (and root) can reach them, but those can
//!   send, receive or remove at will. Nothing here relies on their contents
//!   for memory safety: the kernel copies bytes in and out, and checks sizes.
//! - A [`PosixSemaphore`] lives in shared memory that the peer can overwrite.
//!   glibc's `sem_t` is a counter word and a flag that `sem_wait` and
//!   `sem_post` touch with atomic operations and `futex` calls, never as a
//!   pointer, so a peer scribbling on it can make waits block forever, return
//!   early or fail, but cannot make this process touch memory outside the
//!   `sem_t`.
//!
//! # References
//! - [msgget(2)](https://man7.org/linux/man-pages/man2/msgget.2.html),
//!   [msgop(2)](https://man7.org/linux/man-pages/man2/msgop.2.html),
//!   [msgctl(2)](https://man7.org/linux/man-pages/man2/msgctl.2.html)
//! - [semget(2)](https://man7.org/linux/man-pages/man2/semget.2.html),
//!   [semop(2)](https://man7.org/linux/man-pages/man2/semop.2.html),
//!   [semctl(2)](https://man7.org/linux/man-pages/man2/semctl.2.html)
//! - [sem_init(3)](https://man7.org/linux/man-pages/man3/sem_init.3.html),
//!   [sem_wait(3)](https://man7.org/linux/man-pages/man3/sem_wait.3.html),
//!   [sem_post(3)](https://man7.org/linux/man-pages/man3/sem_post.3.html),
//!   [sem_overview(7)](https://man7.org/linux/man-pages/man7/sem_overview.7.html)

use std::ffi::{c_int, c_long, c_ushort, c_void};
use std::io;

use crate::Access;
use crate::mapping::Mapping;

/// `mtype` of every message [`SysvMsgQueue`] sends; it receives any type.
const MSG_TYPE: c_long = 1;

/// Size of the `mtype` field that precedes the text of a System V message.
const TYPE_LEN: usize = size_of::<c_long>();

/// Permissions of the objects created here: this uid only.
const MODE: c_int = 0o600;

/// Runs `call` until it does not fail with `EINTR`; `-1` is failure.
fn retry<T: PartialEq + From<i8>>(mut call: impl FnMut() -> T) -> io::Result<T> {
    loop {
        let ret = call();
        if ret != T::from(-1) {
            return Ok(ret);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// A System V message queue (`msgget`), the kernel's IPC, for comparison.
///
/// Messages are sent with `mtype` 1 and received in order of arrival (`msgtyp`
/// 0). One message holds at most `/proc/sys/kernel/msgmax` bytes (8 KiB by
/// default), and the queue at most `/proc/sys/kernel/msgmnb` bytes (16 KiB by
/// default); a full queue blocks the sender.
#[derive(Debug)]
pub struct SysvMsgQueue {
    /// The queue's id, as `msgget` returned it.
    id: c_int,
    /// Whether `drop` removes the queue (`IPC_RMID`).
    owned: bool,
    /// A `struct msgbuf`: `mtype` in the first [`TYPE_LEN`] bytes, then the
    /// text. The kernel reads and writes it with user copies, which need no
    /// alignment.
    scratch: Vec<u8>,
}

impl SysvMsgQueue {
    /// Creates a new private queue, `msgget(IPC_PRIVATE, IPC_CREAT | 0600)`,
    /// removed (`msgctl(IPC_RMID)`) when this value is dropped.
    ///
    /// # Errors
    /// The `msgget` error, e.g. `ENOSPC` when the system's queue limit is hit.
    pub fn create_private() -> io::Result<Self> {
        // SAFETY: msgget takes no pointers.
        let id = retry(|| unsafe { libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | MODE) })?;
        Ok(Self {
            id,
            owned: true,
            scratch: Vec::new(),
        })
    }

    /// Uses the existing queue `id` (another process's [`id`](Self::id))
    /// without owning it: dropping this value leaves the queue in place. A
    /// wrong id only makes the calls fail (`EINVAL`, `EACCES`), or reach
    /// another queue of this uid.
    pub fn open(id: i32) -> Self {
        Self {
            id,
            owned: false,
            scratch: Vec::new(),
        }
    }

    /// The queue's id, to hand to the peer for [`open`](Self::open).
    pub fn id(&self) -> i32 {
        self.id
    }

    /// Sends `data` as one message: `msgsnd(id, msg, len, 0)`, blocking while
    /// the queue is full. The bytes are copied into a `struct msgbuf` first.
    ///
    /// # Errors
    /// The `msgsnd` error: `EINVAL` for a message above `msgmax` bytes (or a
    /// removed queue), `EIDRM` if the queue is removed while waiting.
    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.scratch.clear();
        self.scratch.extend_from_slice(&MSG_TYPE.to_ne_bytes());
        self.scratch.extend_from_slice(data);
        let msg = self.scratch.as_ptr().cast::<c_void>();
        // SAFETY: `msg` points at `TYPE_LEN + data.len()` initialised bytes
        // (`mtype`, then the text), which the kernel only reads, and which
        // stay alive and unchanged for the call.
        retry(|| unsafe { libc::msgsnd(self.id, msg, data.len(), 0) })?;
        Ok(())
    }

    /// Receives the oldest message into `buf`, returning its length. The
    /// kernel copies it into a `struct msgbuf`, then the text is copied into
    /// `buf`; [`recv_in_place`](Self::recv_in_place) skips the second copy.
    ///
    /// # Errors
    /// As [`recv_in_place`](Self::recv_in_place), with `buf.len()` as `max`.
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let text = self.recv_in_place(buf.len())?;
        let len = text.len();
        buf[..len].copy_from_slice(text);
        Ok(len)
    }

    /// Receives the oldest message, `msgrcv(id, msg, max, 0, 0)`, blocking
    /// while the queue is empty, and returns its text, which stays in this
    /// value's buffer until the next call.
    ///
    /// # Errors
    /// The `msgrcv` error: `E2BIG` for a message longer than `max` bytes
    /// (which stays queued), `EIDRM` if the queue is removed while waiting.
    pub fn recv_in_place(&mut self, max: usize) -> io::Result<&[u8]> {
        self.scratch.resize(TYPE_LEN + max, 0);
        let msg = self.scratch.as_mut_ptr().cast::<c_void>();
        // SAFETY: `msg` points at `TYPE_LEN + max` bytes owned by `scratch`,
        // which the kernel writes at most of (`mtype`, then up to `max` bytes
        // of text: no `MSG_NOERROR`, so longer messages fail with `E2BIG`),
        // and nothing else uses them during the call.
        let len = retry(|| unsafe { libc::msgrcv(self.id, msg, max, 0, 0) })?;
        let len = usize::try_from(len).expect("msgrcv returns -1 or a length");
        Ok(&self.scratch[TYPE_LEN..TYPE_LEN + len])
    }
}

impl Drop for SysvMsgQueue {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: IPC_RMID takes no buffer, so a null pointer is allowed.
            let _ = unsafe { libc::msgctl(self.id, libc::IPC_RMID, std::ptr::null_mut()) };
        }
    }
}

/// The fourth argument of `semctl`, `union semun` (which the caller defines).
#[repr(C)]
#[derive(Clone, Copy)]
union Semun {
    /// For `SETVAL`.
    val: c_int,
    /// For `IPC_STAT` and `IPC_SET`; unused, but part of the union's size.
    buf: *mut c_void,
    /// For `GETALL` and `SETALL`; unused.
    array: *mut c_ushort,
}

/// A System V semaphore set of one semaphore (`semget`), the kernel's IPC,
/// for comparison. Every operation is a `semop` system call, contended or not.
#[derive(Debug)]
pub struct SysvSemaphore {
    /// The set's id, as `semget` returned it.
    id: c_int,
    /// Whether `drop` removes the set (`IPC_RMID`).
    owned: bool,
}

impl SysvSemaphore {
    /// Creates a new private set of one semaphore with value 0,
    /// `semget(IPC_PRIVATE, 1, IPC_CREAT | 0600)` then `semctl(SETVAL, 0)`,
    /// removed (`semctl(IPC_RMID)`) when this value is dropped.
    ///
    /// # Errors
    /// The `semget` or `semctl` error, e.g. `ENOSPC` at the system's limit.
    pub fn create_private() -> io::Result<Self> {
        // SAFETY: semget takes no pointers.
        let id = retry(|| unsafe { libc::semget(libc::IPC_PRIVATE, 1, libc::IPC_CREAT | MODE) })?;
        let sem = Self { id, owned: true };
        let zero = Semun { val: 0 };
        // SAFETY: SETVAL reads the `val` member of the `union semun` passed
        // by value as the fourth argument, which is initialised.
        retry(|| unsafe { libc::semctl(id, 0, libc::SETVAL, zero) })?;
        Ok(sem)
    }

    /// Uses the existing set `id` (another process's [`id`](Self::id))
    /// without owning it: dropping this value leaves the set in place. A wrong
    /// id only makes the calls fail, or reach another set of this uid.
    pub fn open(id: i32) -> Self {
        Self { id, owned: false }
    }

    /// The set's id, to hand to the peer for [`open`](Self::open).
    pub fn id(&self) -> i32 {
        self.id
    }

    /// Adds `delta` to the semaphore, `semop(id, {0, delta, 0}, 1)`: a
    /// negative `delta` blocks until the value is at least `-delta`, a zero
    /// `delta` until the value is 0.
    ///
    /// # Errors
    /// The `semop` error: `EIDRM` if the set is removed while waiting,
    /// `ERANGE` above `SEMVMX` (32767).
    pub fn op(&self, delta: i16) -> io::Result<()> {
        let mut op = libc::sembuf {
            sem_num: 0,
            sem_op: delta,
            sem_flg: 0,
        };
        let op_ptr = &raw mut op;
        // SAFETY: `op_ptr` points at one initialised `sembuf` that lives for
        // the call, and the count is 1.
        retry(|| unsafe { libc::semop(self.id, op_ptr, 1) })?;
        Ok(())
    }

    /// `V`: [`op(1)`](Self::op).
    ///
    /// # Errors
    /// As [`op`](Self::op).
    pub fn post(&self) -> io::Result<()> {
        self.op(1)
    }

    /// `P`: [`op(-1)`](Self::op), blocking while the value is 0.
    ///
    /// # Errors
    /// As [`op`](Self::op).
    pub fn wait(&self) -> io::Result<()> {
        self.op(-1)
    }
}

impl Drop for SysvSemaphore {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: IPC_RMID takes no fourth argument.
            let _ = unsafe { libc::semctl(self.id, 0, libc::IPC_RMID) };
        }
    }
}

/// A POSIX unnamed semaphore shared between processes: a `sem_t` at offset 0
/// of a [`Mapping`], initialised with `sem_init(pshared = 1)`; the kernel's
/// (and glibc's) IPC, for comparison.
///
/// glibc's `sem_wait` and `sem_post` are atomic operations on the shared
/// counter; they enter the kernel (`futex`) only to sleep or to wake a
/// sleeper. A [`Mapping`] is always `MAP_SHARED`, so every process that maps
/// the same memfd sees the same `sem_t`. This value owns the mapping and
/// touches those bytes only through the `sem_*` calls (see the
/// [module docs](self#trust) for what a peer writing them can do).
#[derive(Debug)]
pub struct PosixSemaphore {
    /// Read-write, at least [`Self::SIZE`] bytes; page aligned, so the
    /// `sem_t` at its start is aligned.
    mapping: Mapping,
}

impl PosixSemaphore {
    /// Bytes of the mapping the semaphore takes, from offset 0.
    pub const SIZE: usize = size_of::<libc::sem_t>();

    /// Initialises a semaphore with `value` at offset 0 of `mapping`:
    /// `sem_init(sem, 1, value)`. One process initialises it, once, before
    /// any process uses it; the others [`attach`](Self::attach).
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] for a read-only mapping or one smaller
    /// than [`Self::SIZE`], or the `sem_init` error (`EINVAL` for a `value`
    /// above `SEM_VALUE_MAX`).
    pub fn init(mapping: Mapping, value: u32) -> io::Result<Self> {
        let sem = Self::attach(mapping)?;
        let ptr = sem.sem_ptr();
        // SAFETY: `ptr` is the page-aligned start of a mapping of at least
        // `SIZE` writable bytes (checked by `attach`), which `sem` keeps
        // mapped, and which nothing else in this process accesses.
        retry(|| unsafe { libc::sem_init(ptr, 1, value) })?;
        Ok(sem)
    }

    /// Uses the semaphore that another process (or another mapping of the
    /// same memfd) [`init`](Self::init)ialised at offset 0 of `mapping`.
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] for a read-only mapping or one smaller
    /// than [`Self::SIZE`].
    pub fn attach(mapping: Mapping) -> io::Result<Self> {
        if mapping.access() != Access::ReadWrite || mapping.len() < Self::SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a process-shared semaphore needs {} writable bytes, the mapping has {} ({})",
                    Self::SIZE,
                    mapping.len(),
                    mapping.access()
                ),
            ));
        }
        debug_assert!(
            mapping.as_ptr().cast::<libc::sem_t>().is_aligned(),
            "mappings are page aligned"
        );
        Ok(Self { mapping })
    }

    /// `P`: `sem_wait`, blocking while the value is 0.
    ///
    /// # Errors
    /// The `sem_wait` error (`EINVAL` if the peer wrote garbage over it).
    pub fn wait(&self) -> io::Result<()> {
        let ptr = self.sem_ptr();
        // SAFETY: `ptr` is the aligned start of `SIZE` writable bytes that
        // `self.mapping` keeps mapped; glibc touches only those bytes.
        retry(|| unsafe { libc::sem_wait(ptr) })?;
        Ok(())
    }

    /// `V`: `sem_post`.
    ///
    /// # Errors
    /// The `sem_post` error: `EOVERFLOW` above `SEM_VALUE_MAX`.
    pub fn post(&self) -> io::Result<()> {
        let ptr = self.sem_ptr();
        // SAFETY: as in `wait`.
        retry(|| unsafe { libc::sem_post(ptr) })?;
        Ok(())
    }

    fn sem_ptr(&self) -> *mut libc::sem_t {
        self.mapping.as_ptr().cast()
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;
    use crate::memfd::create_sealed;

    #[test]
    fn a_message_queue_keeps_messages_in_order_and_whole() {
        let mut sut = SysvMsgQueue::create_private().unwrap();
        let mut peer = SysvMsgQueue::open(sut.id());

        sut.send(b"first").unwrap();
        sut.send(&[7; 1000]).unwrap();
        let mut buf = [0; 1000];

        assert_eq!(peer.recv(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"first");
        assert_eq!(peer.recv_in_place(1000).unwrap(), &[7; 1000][..]);
    }

    #[test]
    fn a_message_longer_than_the_buffer_is_refused_and_kept() {
        let mut sut = SysvMsgQueue::create_private().unwrap();
        sut.send(b"twelve bytes").unwrap();

        let err = sut.recv(&mut [0; 4]).unwrap_err();

        assert_eq!(err.raw_os_error(), Some(libc::E2BIG));
        assert_eq!(sut.recv_in_place(12).unwrap(), b"twelve bytes");
    }

    #[test]
    fn dropping_the_owner_removes_the_queue() {
        let sut = SysvMsgQueue::create_private().unwrap();
        let mut peer = SysvMsgQueue::open(sut.id());

        drop(sut);

        let err = peer.send(b"x").unwrap_err();
        assert!(matches!(
            err.raw_os_error(),
            Some(libc::EINVAL | libc::EIDRM)
        ));
    }

    #[test]
    fn a_sysv_semaphore_hands_off_between_threads() {
        let ping = SysvSemaphore::create_private().unwrap();
        let pong = SysvSemaphore::create_private().unwrap();
        let (ping_id, pong_id) = (ping.id(), pong.id());

        std::thread::scope(|scope| {
            scope.spawn(move || {
                let (ping, pong) = (SysvSemaphore::open(ping_id), SysvSemaphore::open(pong_id));
                for _ in 0..100 {
                    ping.wait().unwrap();
                    pong.post().unwrap();
                }
            });
            for _ in 0..100 {
                ping.post().unwrap();
                pong.wait().unwrap();
            }
        });
    }

    #[test]
    fn a_posix_semaphore_hands_off_through_two_mappings_of_one_memfd() {
        let fd = create_sealed("sem", 4096).unwrap();
        let sut =
            PosixSemaphore::init(Mapping::map(fd.as_fd(), Access::ReadWrite).unwrap(), 1).unwrap();
        let other =
            PosixSemaphore::attach(Mapping::map(fd.as_fd(), Access::ReadWrite).unwrap()).unwrap();

        sut.wait().unwrap();
        std::thread::scope(|scope| {
            scope.spawn(|| other.post().unwrap());
            sut.wait().unwrap();
        });
        other.post().unwrap();
        sut.wait().unwrap();
    }

    #[test]
    fn a_posix_semaphore_needs_a_writable_mapping() {
        let fd = create_sealed("sem", 4096).unwrap();
        let read_only = crate::memfd::reopen(fd.as_fd(), Access::Read).unwrap();

        let err = PosixSemaphore::init(Mapping::map(read_only.as_fd(), Access::Read).unwrap(), 0)
            .unwrap_err();

        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
