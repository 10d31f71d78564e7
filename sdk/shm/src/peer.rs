//! Identity of a connected UNIX socket's peer.
//!
//! # References
//! - [unix(7), `SO_PEERCRED` and `SO_PEERPIDFD`](https://man7.org/linux/man-pages/man7/unix.7.html)
//! - [pidfd_open(2)](https://man7.org/linux/man-pages/man2/pidfd_open.2.html)
//! - [pid_namespaces(7)](https://man7.org/linux/man-pages/man7/pid_namespaces.7.html)

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use rustix::io::{FdFlags, fcntl_setfd};
use rustix::process::{Pid, PidfdFlags, pidfd_open};

/// `SO_PEERPIDFD` (Linux 6.5), which libc 0.2 does not export yet. Its value
/// is 77 on every architecture except SPARC.
#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
const SO_PEERPIDFD: libc::c_int = 77;
/// `SO_PEERPIDFD` on SPARC.
#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
const SO_PEERPIDFD: libc::c_int = 0x56;

/// The credentials the kernel recorded for a UNIX socket's peer when the
/// connection was made (`SO_PEERCRED`), as seen from this process's pid and
/// user namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCredentials {
    /// The peer's pid; 0 if the peer is not visible in this process's pid
    /// namespace (e.g. a Kubernetes pod without `hostPID`, seen from the
    /// host's or another pod's namespace).
    pub pid: u32,
    /// The peer's effective uid at connect time.
    pub uid: u32,
    /// The peer's effective gid at connect time.
    pub gid: u32,
}

/// The credentials of the process at the other end of a connected UNIX
/// socket: `getsockopt(sock, SOL_SOCKET, SO_PEERCRED)`.
///
/// Unlike rustix's `socket_peercred`, this accepts the pid 0 the kernel
/// reports for a peer in a pid namespace this process cannot see.
///
/// # Errors
/// [`io::ErrorKind::NotConnected`] if the socket has no peer, the
/// `getsockopt` error (e.g. `ENOTSOCK`), or [`io::ErrorKind::InvalidData`] if
/// the kernel's answer is not a `struct ucred` with a pid of at least 0.
pub fn peer_credentials(sock: BorrowedFd<'_>) -> io::Result<PeerCredentials> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are live locals; `len` holds the size of
    // `cred`, so the kernel writes at most that many bytes into it, and every
    // bit pattern is a valid `ucred` (three integers).
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // A socket without a peer (never connected) reports pid 0 and uid and gid
    // `(uid_t)-1`, which no process can have.
    if cred.uid == libc::uid_t::MAX && cred.gid == libc::gid_t::MAX {
        return Err(io::Error::new(
            io::ErrorKind::NotConnected,
            "the socket has no peer credentials (is it connected?)",
        ));
    }
    let pid = u32::try_from(cred.pid).ok();
    match pid {
        Some(pid) if len as usize == size_of::<libc::ucred>() => Ok(PeerCredentials {
            pid,
            uid: cred.uid,
            gid: cred.gid,
        }),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "SO_PEERCRED returned {len} bytes with pid {} instead of a struct ucred",
                cred.pid
            ),
        )),
    }
}

/// A pidfd of the process at the other end of a connected UNIX socket.
///
/// On Linux 6.5 and later this is `getsockopt(sock, SOL_SOCKET,
/// SO_PEERPIDFD)`: the kernel captured the peer when the connection was made,
/// so the pidfd names that process even if it has exited and its pid was
/// reused since, and it works across pid namespaces.
///
/// Older kernels refuse `SO_PEERPIDFD` (`ENOPROTOOPT` or `EINVAL`); then the
/// pidfd is `pidfd_open` of the pid from [`peer_credentials`], and the
/// credentials are read again to check the socket still reports that pid.
/// This fallback is not race-free: `SO_PEERCRED` is also fixed at connect
/// time, so if the peer exits and its pid is reused before `pidfd_open`, the
/// pidfd names the new process and the re-check cannot tell.
///
/// The pidfd is close-on-exec.
///
/// # Errors
/// `ENOTCONN` if the socket is not connected, or another `getsockopt` error;
/// on the fallback, [`io::ErrorKind::Unsupported`] if the peer is in a pid
/// namespace this process cannot see (so the agent must run in the host pid
/// namespace, `hostPID`), `ESRCH` if the peer has exited,
/// [`io::ErrorKind::NotConnected`] if the socket reports another pid on the
/// re-check, or the `pidfd_open` error.
pub fn peer_pidfd(sock: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    match so_peerpidfd(sock) {
        Err(err) if matches!(err.raw_os_error(), Some(libc::ENOPROTOOPT | libc::EINVAL)) => {
            pidfd_of_peer_pid(sock)
        }
        result => result,
    }
}

/// `getsockopt(sock, SOL_SOCKET, SO_PEERPIDFD)`, made close-on-exec.
fn so_peerpidfd(sock: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut raw: libc::c_int = -1;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `raw` and `len` are live locals; `len` holds the size of `raw`,
    // so the kernel writes at most that many bytes into it.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&raw mut raw).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if raw < 0 {
        return Err(io::Error::other("SO_PEERPIDFD returned no file descriptor"));
    }
    // SAFETY: the call succeeded and `raw` is no longer the -1 it was set to,
    // so the kernel installed `raw` as a new fd of this process, which nothing
    // else owns. It is owned (and closed on every path) from here on, before
    // anything else about the answer is checked.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
    if len as usize != size_of::<libc::c_int>() {
        return Err(io::Error::other(format!(
            "SO_PEERPIDFD returned {len} bytes instead of an int"
        )));
    }
    fcntl_setfd(&pidfd, FdFlags::CLOEXEC)?;
    Ok(pidfd)
}

/// The fallback of [`peer_pidfd`] for kernels without `SO_PEERPIDFD`.
fn pidfd_of_peer_pid(sock: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let pid = peer_credentials(sock)?.pid;
    let pidfd = open_pidfd(pid)?;
    let now = peer_credentials(sock)?.pid;
    if now != pid {
        return Err(io::Error::new(
            io::ErrorKind::NotConnected,
            format!("peer changed: the socket reported pid {pid}, then pid {now}"),
        ));
    }
    Ok(pidfd)
}

/// `pidfd_open(pid, 0)` (always close-on-exec), for a pid from `SO_PEERCRED`.
fn open_pidfd(pid: u32) -> io::Result<OwnedFd> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "the peer is in another pid namespace (SO_PEERCRED reports pid 0) and this kernel \
             has no SO_PEERPIDFD (Linux 6.5): run the agent in the host pid namespace \
             (hostPID: true in Kubernetes)",
            )
        })?;
    Ok(pidfd_open(pid, PidfdFlags::empty())?)
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks
/// after boot. With the pid it names one process for good (a reused pid has
/// another start time). The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its last `)`.
///
/// # Errors
/// `NotFound` once the process is gone, or the error of reading or parsing
/// the file.
pub fn process_start_time(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19))
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| io::Error::other(format!("cannot read the start time of pid {pid}")))
}

/// A process's pid as its own pid namespace numbers it (the last `NSpid:`
/// field of its status) and that namespace's inode: what the process sees
/// as `getpid()` and `/proc/self/ns/pid`, read from outside.
///
/// # Errors
/// `NotFound` once the process is gone, or the error of reading or parsing
/// its files (its namespace needs the right to inspect it).
pub fn namespaced_pid(pid: u32) -> io::Result<(u32, u64)> {
    use std::os::unix::fs::MetadataExt;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let inner = status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))
        .and_then(|field| field.split_whitespace().last())
        .and_then(|inner| inner.parse().ok())
        .ok_or_else(|| io::Error::other(format!("cannot read the NSpid of pid {pid}")))?;
    let namespace = std::fs::metadata(format!("/proc/{pid}/ns/pid"))?.ino();
    Ok((inner, namespace))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};

    use super::*;

    #[test]
    fn a_process_in_its_own_namespace_is_numbered_as_it_sees_itself() {
        use std::os::unix::fs::MetadataExt;
        let namespace = std::fs::metadata("/proc/self/ns/pid").unwrap().ino();
        let pid = std::process::id();
        assert_eq!(namespaced_pid(pid).unwrap(), (pid, namespace));
        let gone = namespaced_pid(u32::MAX).unwrap_err();
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
    }

    /// The `Pid:` line of a pidfd's fdinfo.
    fn pid_of(pidfd: &OwnedFd) -> u32 {
        let info =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).unwrap();
        info.lines()
            .find_map(|line| line.strip_prefix("Pid:"))
            .expect("fdinfo of a pidfd has a Pid: line")
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn peer_pidfd_of_a_socketpair_names_this_process() {
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();

        let sut = peer_pidfd(a.as_fd()).unwrap();

        assert_eq!(pid_of(&sut), std::process::id());
        assert_eq!(pid_of(&peer_pidfd(b.as_fd()).unwrap()), std::process::id());
        assert!(
            rustix::io::fcntl_getfd(&sut)
                .unwrap()
                .contains(FdFlags::CLOEXEC)
        );
    }

    #[test]
    fn peer_credentials_of_a_socketpair_name_this_process() {
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();

        let sut = peer_credentials(a.as_fd()).unwrap();

        let this = PeerCredentials {
            pid: std::process::id(),
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
        };
        assert_eq!(sut, this);
        assert_eq!(peer_credentials(b.as_fd()).unwrap(), this);
    }

    #[test]
    fn peer_credentials_refuse_an_unconnected_socket() {
        let sock = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();

        let err = peer_credentials(sock.as_fd()).unwrap_err();

        assert_eq!(err.kind(), io::ErrorKind::NotConnected);
    }

    #[test]
    fn pidfd_of_peer_pid_of_a_socketpair_names_this_process() {
        let (a, _b) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();

        let sut = pidfd_of_peer_pid(a.as_fd()).unwrap();

        assert_eq!(pid_of(&sut), std::process::id());
        assert!(
            rustix::io::fcntl_getfd(&sut)
                .unwrap()
                .contains(FdFlags::CLOEXEC)
        );
    }

    #[test]
    fn open_pidfd_of_pid_0_asks_for_the_host_pid_namespace() {
        let err = open_pidfd(0).unwrap_err();

        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
        assert!(err.to_string().contains("another pid namespace"), "{err}");
        assert!(err.to_string().contains("hostPID"), "{err}");
    }

    #[test]
    fn peer_pidfd_refuses_an_unconnected_socket() {
        let sock = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();

        assert!(peer_pidfd(sock.as_fd()).is_err());
    }
}
