//! Running under systemd: readiness (`READY=1`) and the file descriptor
//! store, so segments survive an agent restart even when no process holds
//! them. Each live segment's memfd is stored as `FDNAME=segment-<id>`
//! (`FDSTORE=1`), a ring's doorbell beside it as `FDNAME=doorbell-<id>`, and
//! both are removed when the segment ends (`FDSTOREREMOVE=1`); a restarted
//! agent gets them back as `LISTEN_FDS`, adopts the memfds whose device and
//! inode match its segment table, and pairs each with its doorbell by id.
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
/// A ring's stored doorbell: this prefix and the ring's id.
const DOORBELL_PREFIX: &str = "doorbell-";

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

    /// Stores a ring's doorbell with the service manager.
    ///
    /// # Errors
    /// The message cannot be sent.
    pub fn store_doorbell(&self, id: SegmentId, doorbell: BorrowedFd<'_>) -> io::Result<()> {
        self.send(
            &format!("FDSTORE=1\nFDNAME={DOORBELL_PREFIX}{}\n", id.0),
            Some(doorbell),
        )
    }

    /// Drops a segment's memfd, and its doorbell if it has one, from the
    /// store.
    ///
    /// # Errors
    /// A message cannot be sent.
    pub fn remove(&self, id: SegmentId) -> io::Result<()> {
        for prefix in [NAME_PREFIX, DOORBELL_PREFIX] {
            self.send(&format!("FDSTOREREMOVE=1\nFDNAME={prefix}{}\n", id.0), None)?;
        }
        Ok(())
    }

    fn send(&self, message: &str, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let fds: Vec<_> = fd.into_iter().collect();
        ipcplane_shm::fdpass::send(self.socket.as_fd(), message.as_bytes(), &fds)
    }
}

/// What the service manager passed back at start.
#[derive(Debug, Default)]
pub struct Passed {
    /// Segment memfds, by id.
    pub segments: Vec<(SegmentId, OwnedFd)>,
    /// Rings' doorbells, by the ring's id.
    pub doorbells: Vec<(SegmentId, OwnedFd)>,
}

/// What a passed descriptor was stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    Segment(SegmentId),
    Doorbell(SegmentId),
}

/// The segment memfds and ring doorbells the service manager passed back at
/// start. Passed descriptors of other names are closed.
///
/// # Errors
/// Malformed `LISTEN_*` variables, or passed descriptors that are not open.
pub fn passed_segments() -> io::Result<Passed> {
    let var = |name| std::env::var(name).ok();
    let Some(names) = passed_names(
        var(ENV_LISTEN_PID).as_deref(),
        var(ENV_LISTEN_FDS).as_deref(),
        var(ENV_LISTEN_FDNAMES).as_deref(),
        std::process::id(),
    )?
    else {
        return Ok(Passed::default());
    };
    let fds = ipcplane_shm::inherit::take_passed_fds(names.len())?;
    let mut passed = Passed::default();
    for (name, fd) in names.into_iter().zip(fds) {
        match name {
            Some(Stored::Segment(id)) => passed.segments.push((id, fd)),
            Some(Stored::Doorbell(id)) => passed.doorbells.push((id, fd)),
            None => {}
        }
    }
    Ok(passed)
}

/// Reads the `LISTEN_*` variables: `None` unless they are meant for `pid`;
/// else what each passed descriptor was stored as (`None` for a descriptor
/// of another name).
fn passed_names(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    names: Option<&str>,
    pid: u32,
) -> io::Result<Option<Vec<Option<Stored>>>> {
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
                let id = |prefix| {
                    name.strip_prefix(prefix)
                        .and_then(|id| id.parse().ok())
                        .map(SegmentId)
                };
                id(NAME_PREFIX)
                    .map(Stored::Segment)
                    .or_else(|| id(DOORBELL_PREFIX).map(Stored::Doorbell))
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
    fn names_map_passed_descriptors_to_segments_and_doorbells() {
        let names = passed_names(
            Some("7"),
            Some("4"),
            Some("segment-5:other:segment-x:doorbell-5"),
            7,
        )
        .unwrap();
        assert_eq!(
            names,
            Some(vec![
                Some(Stored::Segment(SegmentId(5))),
                None,
                None,
                Some(Stored::Doorbell(SegmentId(5)))
            ])
        );
        let unnamed = passed_names(Some("7"), Some("2"), None, 7).unwrap();
        assert_eq!(unnamed, Some(vec![None, None]));
        assert!(passed_names(Some("7"), Some("many"), None, 7).is_err());
    }
}
