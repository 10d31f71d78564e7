//! File descriptors a service manager passed at exec (`LISTEN_FDS`, see
//! sd_listen_fds(3)): the agent gets its stored memfds back this way after a
//! restart under systemd.
//!
//! # References
//! - sd_listen_fds(3), sd_pid_notify_with_fds(3)

use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// The first passed descriptor (`SD_LISTEN_FDS_START`).
pub const FIRST_FD: RawFd = 3;

/// Most descriptors taken, so a bogus count cannot walk the fd table.
pub const MAX_FDS: usize = 1 << 20;

static TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes ownership of descriptors `3 .. 3 + count` that the service manager
/// passed to this process. Only the first call in a process takes anything
/// (later calls return an empty list), so no descriptor gets two owners.
/// Each is checked to be open and made close-on-exec.
///
/// The caller must only call this when the environment says the descriptors
/// are meant for this process (`LISTEN_PID` is our pid), before anything else
/// could have opened or closed descriptors 3 and up.
///
/// # Errors
/// `count` above [`MAX_FDS`], or a descriptor in the range is not open.
pub fn take_passed_fds(count: usize) -> io::Result<Vec<OwnedFd>> {
    if count > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{count} passed fds is too many"),
        ));
    }
    // ORDERING: Relaxed: the flag only decides which call takes the fds;
    // it publishes no other memory.
    if TAKEN.swap(true, Ordering::Relaxed) {
        return Ok(Vec::new());
    }
    let last = FIRST_FD + RawFd::try_from(count).expect("MAX_FDS fits a RawFd");
    (FIRST_FD..last)
        .map(|raw| {
            // SAFETY: the borrow lives only for the fcntl calls below, while
            // nothing else in the process uses `raw` (caller obligation).
            let fd = unsafe { BorrowedFd::borrow_raw(raw) };
            let flags = rustix::io::fcntl_getfd(fd)?;
            rustix::io::fcntl_setfd(fd, flags | rustix::io::FdFlags::CLOEXEC)?;
            // SAFETY: `raw` is open (fcntl succeeded), the service manager
            // handed it to this process, and the swap above guarantees this
            // is the only call that wraps it, so it gets exactly one owner.
            Ok(unsafe { OwnedFd::from_raw_fd(raw) })
        })
        .collect::<Result<_, rustix::io::Errno>>()
        .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_is_refused_before_anything_is_taken() {
        assert_eq!(
            take_passed_fds(MAX_FDS + 1).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
