//! Running under systemd: readiness (`READY=1`) and the file descriptor
//! store, so segments survive an agent restart even when no process holds
//! them. Each live segment's memfd is stored as `FDNAME=segment-<id>`
//! (`FDSTORE=1`) and removed when the segment ends (`FDSTOREREMOVE=1`); a
//! restarted agent gets them back as `LISTEN_FDS` and adopts the ones whose
//! device and inode match its segment table.
//!
//! Without `NOTIFY_SOCKET` (not under a service manager) all of this is off.
//!
//! # References
//! - sd_notify(3), sd_pid_notify_with_fds(3), sd_listen_fds(3)
//! - systemd.service(5): `Type=notify`, `FileDescriptorStoreMax=`

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::core::SegmentId;

/// The service manager's notification socket.
const ENV_NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
const ENV_LISTEN_PID: &str = "LISTEN_PID";
const ENV_LISTEN_FDS: &str = "LISTEN_FDS";
const ENV_LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// Stored segment names are this prefix and the id.
const NAME_PREFIX: &str = "segment-";

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub struct FdStore {
    socket: OwnedFd,
}

impl FdStore {
    /// Connects to `$NOTIFY_SOCKET` (a path, or an abstract name after `@`);
    /// `None` when the variable is unset.
    ///
    /// # Errors
    /// The socket cannot be created or connected.
    pub fn from_env() -> io::Result<Option<FdStore>> {
        let Some(target) = std::env::var_os(ENV_NOTIFY_SOCKET) else {
            return Ok(None);
        };
        let target = target.as_encoded_bytes();
        let addr = match target.strip_prefix(b"@") {
            Some(name) => SocketAddrUnix::new_abstract_name(name)?,
            None => SocketAddrUnix::new(target)?,
        };
        let socket = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            None,
        )?;
        rustix::net::connect(&socket, &addr)?;
        Ok(Some(FdStore { socket }))
    }

    /// Tells the service manager the agent serves.
    ///
    /// # Errors
    /// The message cannot be sent.
    pub fn ready(&self) -> io::Result<()> {
        self.send("READY=1\n", None)
    }

    /// Stores a segment's memfd with the service manager.
    ///
    /// # Errors
    /// The message cannot be sent.
    pub fn store(&self, id: SegmentId, memory: BorrowedFd<'_>) -> io::Result<()> {
        self.send(
            &format!("FDSTORE=1\nFDNAME={NAME_PREFIX}{}\n", id.0),
            Some(memory),
        )
    }

    /// Drops a segment's memfd from the store.
    ///
    /// # Errors
    /// The message cannot be sent.
    pub fn remove(&self, id: SegmentId) -> io::Result<()> {
        self.send(
            &format!("FDSTOREREMOVE=1\nFDNAME={NAME_PREFIX}{}\n", id.0),
            None,
        )
    }

    fn send(&self, message: &str, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let fds: Vec<_> = fd.into_iter().collect();
        ipcplane_shm::fdpass::send(self.socket.as_fd(), message.as_bytes(), &fds)
    }
}

/// The segment memfds the service manager passed back at start, by id.
/// Passed descriptors that are not stored segments are closed.
///
/// # Errors
/// Malformed `LISTEN_*` variables, or passed descriptors that are not open.
pub fn passed_segments() -> io::Result<Vec<(SegmentId, OwnedFd)>> {
    let var = |name| std::env::var(name).ok();
    let Some(names) = passed_names(
        var(ENV_LISTEN_PID).as_deref(),
        var(ENV_LISTEN_FDS).as_deref(),
        var(ENV_LISTEN_FDNAMES).as_deref(),
        std::process::id(),
    )?
    else {
        return Ok(Vec::new());
    };
    let fds = ipcplane_shm::inherit::take_passed_fds(names.len())?;
    Ok(names
        .into_iter()
        .zip(fds)
        .filter_map(|(id, fd)| Some((id?, fd)))
        .collect())
}

/// Reads the `LISTEN_*` variables: `None` unless they are meant for `pid`;
/// else the segment id each passed descriptor is named for (`None` for a
/// descriptor of another name).
fn passed_names(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    names: Option<&str>,
    pid: u32,
) -> io::Result<Option<Vec<Option<SegmentId>>>> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let (Some(listen_pid), Some(listen_fds)) = (listen_pid, listen_fds) else {
        return Ok(None);
    };
    if listen_pid.parse() != Ok(pid) {
        return Ok(None);
    }
    let count: usize = listen_fds
        .parse()
        .map_err(|_| invalid(format!("{ENV_LISTEN_FDS}={listen_fds:?} is not a count")))?;
    let mut names: Vec<&str> = names.map(|n| n.split(':').collect()).unwrap_or_default();
    names.resize(count, "");
    Ok(Some(
        names
            .into_iter()
            .map(|name| {
                name.strip_prefix(NAME_PREFIX)
                    .and_then(|id| id.parse().ok())
                    .map(SegmentId)
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_variables_for_another_process_or_absent_are_ignored() {
        assert_eq!(passed_names(None, None, None, 7).unwrap(), None);
        assert_eq!(passed_names(Some("8"), Some("2"), None, 7).unwrap(), None);
    }

    #[test]
    fn names_map_passed_descriptors_to_segments() {
        let names =
            passed_names(Some("7"), Some("3"), Some("segment-5:other:segment-x"), 7).unwrap();
        assert_eq!(names, Some(vec![Some(SegmentId(5)), None, None]));
        let unnamed = passed_names(Some("7"), Some("2"), None, 7).unwrap();
        assert_eq!(unnamed, Some(vec![None, None]));
        assert!(passed_names(Some("7"), Some("many"), None, 7).is_err());
    }
}
