//! One datagram with file descriptors in `SCM_RIGHTS`, for `SOCK_SEQPACKET`
//! (or `SOCK_DGRAM`) UNIX sockets.
//!
//! # References
//! - [sendmsg(2)](https://man7.org/linux/man-pages/man2/sendmsg.2.html),
//!   [recvmsg(2)](https://man7.org/linux/man-pages/man2/recvmsg.2.html)
//! - [unix(7), "Ancillary messages"](https://man7.org/linux/man-pages/man7/unix.7.html)

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::cmsg_space;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Most file descriptors one datagram carries.
pub const MAX_FDS: usize = 4;

/// Sends one datagram carrying `bytes`, and `fds` in `SCM_RIGHTS` ancillary
/// data: `sendmsg(sock, msg, MSG_NOSIGNAL)`.
///
/// The receiver gets its own descriptions of the same open files; the caller
/// keeps (and still has to close) its fds.
///
/// # Errors
/// [`io::ErrorKind::InvalidInput`] if `fds` has more than [`MAX_FDS`] entries,
/// [`io::ErrorKind::WouldBlock`] on a full nonblocking socket,
/// [`io::ErrorKind::BrokenPipe`] if the peer is gone (no `SIGPIPE` is raised),
/// or another `sendmsg` error.
pub fn send(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "cannot send {} fds in one datagram (at most {MAX_FDS})",
                fds.len()
            ),
        ));
    }
    let mut space = [MaybeUninit::uninit(); cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other(
            "SCM_RIGHTS message does not fit its buffer",
        ));
    }
    let sent = rustix::net::sendmsg(
        sock,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if sent != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes of a datagram", bytes.len()),
        ));
    }
    Ok(())
}

/// One datagram received by [`recv`].
#[derive(Debug)]
pub struct Received {
    /// Bytes of the datagram stored at the start of the buffer.
    pub len: usize,
    /// The file descriptors that arrived with it (close-on-exec). They are
    /// closed when dropped, so unwanted ones need no handling.
    pub fds: Vec<OwnedFd>,
    /// The datagram was larger than the buffer; its tail was discarded
    /// (`MSG_TRUNC`).
    pub truncated: bool,
    /// More file descriptors were sent than fit ([`MAX_FDS`]); the extra ones
    /// were closed (`MSG_CTRUNC`).
    pub fds_truncated: bool,
}

/// Receives one datagram into `buf`, with room for [`MAX_FDS`] fds:
/// `recvmsg(sock, msg, MSG_CMSG_CLOEXEC)`.
///
/// Received fds are always returned as `OwnedFd`, even when the datagram or
/// its fds were truncated, so none leaks. On a `SOCK_SEQPACKET` socket, `len`
/// 0 with no fds means the peer closed the connection.
///
/// # Errors
/// [`io::ErrorKind::WouldBlock`] on an empty nonblocking socket,
/// [`io::ErrorKind::Interrupted`] if a signal arrived first, or another
/// `recvmsg` error.
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    // Rounding in `cmsg_space!` can leave room for a few more than MAX_FDS;
    // extras are closed below so callers see at most MAX_FDS.
    let mut space = [MaybeUninit::uninit(); cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let capacity = buf.len();
    let msg = rustix::net::recvmsg(
        sock,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    let mut fds_truncated = msg.flags.contains(ReturnFlags::CTRUNC);
    if fds.len() > MAX_FDS {
        fds.truncate(MAX_FDS);
        fds_truncated = true;
    }
    Ok(Received {
        len: msg.bytes.min(capacity),
        fds,
        truncated: msg.flags.contains(ReturnFlags::TRUNC),
        fds_truncated,
    })
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use rustix::fs::fstat;
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};

    use super::*;
    use crate::memfd::create_sealed;

    fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap()
    }

    #[test]
    fn send_and_recv_carry_bytes_and_fds() {
        let (a, b) = seqpacket_pair();
        let memfd = create_sealed("test", 8192).unwrap();

        send(a.as_fd(), b"grant", &[memfd.as_fd()]).unwrap();
        let mut buf = [0; 64];
        let sut = recv(b.as_fd(), &mut buf).unwrap();

        assert_eq!(&buf[..sut.len], b"grant");
        assert!(!sut.truncated && !sut.fds_truncated);
        assert_eq!(sut.fds.len(), 1);
        let (ours, theirs) = (fstat(&memfd).unwrap(), fstat(&sut.fds[0]).unwrap());
        assert_eq!((ours.st_dev, ours.st_ino), (theirs.st_dev, theirs.st_ino));
    }

    #[test]
    fn received_fds_are_close_on_exec() {
        let (a, b) = seqpacket_pair();
        let memfd = create_sealed("test", 4096).unwrap();

        send(a.as_fd(), b"x", &[memfd.as_fd()]).unwrap();
        let sut = recv(b.as_fd(), &mut [0; 8]).unwrap();

        let flags = rustix::io::fcntl_getfd(&sut.fds[0]).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
    }

    #[test]
    fn recv_reports_a_datagram_larger_than_the_buffer() {
        let (a, b) = seqpacket_pair();

        send(a.as_fd(), b"0123456789", &[]).unwrap();
        let mut buf = [0; 4];
        let sut = recv(b.as_fd(), &mut buf).unwrap();

        assert!(sut.truncated);
        assert_eq!(sut.len, 4);
        assert_eq!(&buf, b"0123");
    }

    #[test]
    fn recv_keeps_at_most_max_fds_and_reports_the_rest() {
        let (a, b) = seqpacket_pair();
        let memfd = create_sealed("test", 4096).unwrap();
        let many = [memfd.as_fd(); MAX_FDS + 4];
        let mut space = [MaybeUninit::uninit(); cmsg_space!(ScmRights(MAX_FDS + 4))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&many)));
        rustix::net::sendmsg(&a, &[IoSlice::new(b"x")], &mut control, SendFlags::empty()).unwrap();

        let sut = recv(b.as_fd(), &mut [0; 8]).unwrap();

        assert!(sut.fds_truncated);
        assert_eq!(sut.fds.len(), MAX_FDS);
    }

    #[test]
    fn send_refuses_more_than_max_fds() {
        let (a, _b) = seqpacket_pair();
        let memfd = create_sealed("test", 4096).unwrap();

        let err = send(a.as_fd(), b"x", &[memfd.as_fd(); MAX_FDS + 1]).unwrap_err();

        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn recv_returns_an_empty_datagram_when_the_peer_closes() {
        let (a, b) = seqpacket_pair();
        drop(a);

        let sut = recv(b.as_fd(), &mut [0; 8]).unwrap();

        assert_eq!(sut.len, 0);
        assert!(sut.fds.is_empty());
    }

    #[test]
    fn send_to_a_closed_peer_is_broken_pipe_not_sigpipe() {
        let (a, b) = seqpacket_pair();
        drop(b);

        let err = send(a.as_fd(), b"x", &[]).unwrap_err();

        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
