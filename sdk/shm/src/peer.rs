//! Identity of a connected UNIX socket's peer.
//!
//! # References
//! - [unix(7), `SO_PEERPIDFD`](https://man7.org/linux/man-pages/man7/unix.7.html)
//! - [pidfd_open(2)](https://man7.org/linux/man-pages/man2/pidfd_open.2.html)

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use rustix::io::{FdFlags, fcntl_setfd};

/// `SO_PEERPIDFD` (Linux 6.5), which libc 0.2 does not export yet. Its value
/// is 77 on every architecture except SPARC.
#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
const SO_PEERPIDFD: libc::c_int = 77;
/// `SO_PEERPIDFD` on SPARC.
#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
const SO_PEERPIDFD: libc::c_int = 0x56;

/// A pidfd of the process at the other end of a connected UNIX socket:
/// `getsockopt(sock, SOL_SOCKET, SO_PEERPIDFD)`.
///
/// The kernel captured the peer when the connection was made, so the pidfd
/// names that process even if it has exited and its pid was reused since. The
/// pidfd is made close-on-exec right after it is received.
///
/// # Errors
/// `ENOPROTOOPT` on kernels before 6.5, `ENOTCONN` if the socket is not
/// connected, or another `getsockopt` error.
pub fn peer_pidfd(sock: BorrowedFd<'_>) -> io::Result<OwnedFd> {
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
    if raw < 0 || len as usize != size_of::<libc::c_int>() {
        return Err(io::Error::other("SO_PEERPIDFD returned no file descriptor"));
    }
    // SAFETY: on success the kernel installed `raw` as a new fd of this
    // process, which nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
    fcntl_setfd(&pidfd, FdFlags::CLOEXEC)?;
    Ok(pidfd)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};

    use super::*;

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
