//! Sealed memfds: creation, reopening with narrower access, inspection.
//!
//! # References
//! - [memfd_create(2)](https://man7.org/linux/man-pages/man2/memfd_create.2.html)
//! - [fcntl(2), "File Sealing"](https://man7.org/linux/man-pages/man2/fcntl.2.html)
//! - [fallocate(2)](https://man7.org/linux/man-pages/man2/fallocate.2.html)
//! - [proc_pid_fd(5)](https://man7.org/linux/man-pages/man5/proc_pid_fd.5.html)

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

pub use rustix::fs::SealFlags;
use rustix::fs::{self, FallocateFlags, MemfdFlags, Mode, OFlags};

use crate::Access;

/// Seals every granted memfd carries: its size is fixed (`F_SEAL_SHRINK |
/// F_SEAL_GROW`) and the seals themselves are fixed (`F_SEAL_SEAL`).
pub const REQUIRED_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// Why [`create_sealed`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// A segment must have at least one byte.
    #[error("cannot create an empty memfd (size 0)")]
    ZeroSize,
    /// `memfd_create` failed (bad name, or out of file descriptors).
    #[error("memfd_create failed")]
    Create(#[source] io::Error),
    /// `ftruncate` to the requested size failed.
    #[error("cannot resize the memfd")]
    Resize(#[source] io::Error),
    /// The host has not enough memory (or the memory cgroup's limit is hit).
    #[error("not enough memory to back a {size}-byte memfd")]
    OutOfMemory {
        /// The requested size in bytes.
        size: u64,
    },
    /// `fallocate` failed for another reason.
    #[error("cannot allocate the memfd's memory")]
    Allocate(#[source] io::Error),
    /// Adding the seals failed.
    #[error("cannot seal the memfd")]
    Seal(#[source] io::Error),
    /// Restricting the mode to `0600` failed.
    #[error("cannot restrict the memfd's mode to 0600")]
    Chmod(#[source] io::Error),
}

/// Creates a memfd of `size` bytes, backed up front and sealed with
/// [`REQUIRED_SEALS`].
///
/// `memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL)`,
/// then `fchmod(0600)` (so a process of another uid that receives a read-only
/// fd cannot reopen it read-write through `/proc/self/fd`), `ftruncate(size)`,
/// `fallocate(0, size)` (so memory exhaustion is a clean error now, not
/// `SIGBUS` later), and `F_ADD_SEALS`.
///
/// # Errors
/// [`CreateError::ZeroSize`] if `size` is 0, [`CreateError::OutOfMemory`] if
/// the memory cannot be allocated, otherwise the variant naming the step that
/// failed.
pub fn create_sealed(name: &str, size: u64) -> Result<OwnedFd, CreateError> {
    if size == 0 {
        return Err(CreateError::ZeroSize);
    }
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING | MemfdFlags::NOEXEC_SEAL;
    let fd = fs::memfd_create(name, flags).map_err(|err| CreateError::Create(err.into()))?;
    fs::fchmod(&fd, Mode::RUSR | Mode::WUSR).map_err(|err| CreateError::Chmod(err.into()))?;
    fs::ftruncate(&fd, size).map_err(|err| CreateError::Resize(err.into()))?;
    fs::fallocate(&fd, FallocateFlags::empty(), 0, size).map_err(|err| {
        if err == rustix::io::Errno::NOSPC || err == rustix::io::Errno::NOMEM {
            CreateError::OutOfMemory { size }
        } else {
            CreateError::Allocate(err.into())
        }
    })?;
    fs::fcntl_add_seals(&fd, REQUIRED_SEALS).map_err(|err| CreateError::Seal(err.into()))?;
    Ok(fd)
}

/// Opens a new file description of the same memfd with the given access:
/// `open("/proc/self/fd/N", O_RDONLY or O_RDWR | O_CLOEXEC)`.
///
/// A read-only description cannot be mapped writable, whatever the receiving
/// process does with it.
///
/// # Errors
/// The `open` error, e.g. `EACCES` when asking for more than the file's mode
/// allows this process.
pub fn reopen(fd: BorrowedFd<'_>, access: Access) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let mode = match access {
        Access::Read => OFlags::RDONLY,
        Access::ReadWrite => OFlags::RDWR,
    };
    Ok(fs::openat(
        fs::CWD,
        path,
        mode | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Gives a freed segment's memory back to the system: `fstat` for the size,
/// then `fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, size)`.
///
/// When the agent frees a segment, a process that claimed to have detached
/// may still hold the memfd (or a mapping of it), which would keep the pages,
/// charged to the agent on behalf of the tenant, alive. Punching them out
/// frees them now: whoever still maps the memfd reads zeros from then on, and
/// any page it touches again is allocated anew and charged to its own memory
/// cgroup, not the agent's. The size and the seals do not change (punching is
/// allowed because our memfds are not sealed with `F_SEAL_WRITE`).
///
/// # Errors
/// The `fstat` or `fallocate` error: `EBADF` if `fd` is not open for writing,
/// `EPERM` if the memfd is sealed against writing.
pub fn release_memory(fd: BorrowedFd<'_>) -> io::Result<()> {
    let size = u64::try_from(fs::fstat(fd)?.st_size).unwrap_or(0);
    if size == 0 {
        return Ok(());
    }
    fs::fallocate(
        fd,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        0,
        size,
    )?;
    Ok(())
}

/// The seals of a memfd (`fcntl(F_GET_SEALS)`).
///
/// # Errors
/// `EINVAL` if `fd` is not a file that supports sealing.
pub fn seals(fd: BorrowedFd<'_>) -> io::Result<SealFlags> {
    Ok(fs::fcntl_get_seals(fd)?)
}

/// The access mode of the file description (`fcntl(F_GETFL) & O_ACCMODE`).
///
/// # Errors
/// The `fcntl` error, or [`io::ErrorKind::InvalidInput`] if the description is
/// write-only or an `O_PATH` descriptor, neither of which can be mapped.
pub fn access_of(fd: BorrowedFd<'_>) -> io::Result<Access> {
    let flags = fs::fcntl_getfl(fd)?;
    if flags.contains(OFlags::PATH) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "O_PATH file descriptor has no access mode",
        ));
    }
    let mode = flags & OFlags::ACCMODE;
    if mode == OFlags::RDONLY {
        Ok(Access::Read)
    } else if mode == OFlags::RDWR {
        Ok(Access::ReadWrite)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "write-only file descriptor cannot be mapped",
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use rustix::fs::fstat;
    use rustix::io::Errno;

    use super::*;
    use crate::mapping::Mapping;

    #[test]
    fn create_sealed_returns_a_sized_sealed_private_memfd() {
        let sut = create_sealed("test", 8192).unwrap();

        let stat = fstat(&sut).unwrap();
        assert_eq!(stat.st_size, 8192);
        assert_eq!(stat.st_mode & 0o777, 0o600);
        assert!(seals(sut.as_fd()).unwrap().contains(REQUIRED_SEALS));
        assert_eq!(access_of(sut.as_fd()).unwrap(), Access::ReadWrite);
    }

    #[test]
    fn create_sealed_refuses_size_zero() {
        assert!(matches!(
            create_sealed("test", 0),
            Err(CreateError::ZeroSize)
        ));
    }

    #[test]
    fn create_sealed_reports_a_bad_name_as_create_error() {
        assert!(matches!(
            create_sealed("nul\0inside", 4096),
            Err(CreateError::Create(_))
        ));
    }

    #[test]
    fn sealed_memfd_cannot_shrink_or_grow() {
        let sut = create_sealed("test", 4096).unwrap();

        assert_eq!(fs::ftruncate(&sut, 0), Err(Errno::PERM));
        assert_eq!(fs::ftruncate(&sut, 8192), Err(Errno::PERM));
        assert_eq!(
            fs::fallocate(&sut, FallocateFlags::empty(), 0, 8192),
            Err(Errno::PERM)
        );
        assert_eq!(fstat(&sut).unwrap().st_size, 4096);
    }

    #[test]
    fn sealed_memfd_cannot_be_unsealed_or_sealed_further() {
        let sut = create_sealed("test", 4096).unwrap();

        assert_eq!(
            fs::fcntl_add_seals(&sut, SealFlags::WRITE),
            Err(Errno::PERM)
        );
    }

    #[test]
    fn reopen_gives_a_description_with_the_requested_access() {
        let fd = create_sealed("test", 4096).unwrap();

        let read_only = reopen(fd.as_fd(), Access::Read).unwrap();
        let read_write = reopen(fd.as_fd(), Access::ReadWrite).unwrap();

        assert_eq!(access_of(read_only.as_fd()).unwrap(), Access::Read);
        assert_eq!(access_of(read_write.as_fd()).unwrap(), Access::ReadWrite);
        assert!(seals(read_only.as_fd()).unwrap().contains(REQUIRED_SEALS));
    }

    #[test]
    fn release_memory_zeroes_the_pages_and_keeps_size_and_seals() {
        const SIZE: usize = 1 << 20;
        let sut = create_sealed("test", SIZE as u64).unwrap();
        let seals_before = seals(sut.as_fd()).unwrap();
        let mapping = Mapping::map(sut.as_fd(), Access::ReadWrite).unwrap();
        mapping.write_at(0, &[0xA5; SIZE]).unwrap();

        release_memory(sut.as_fd()).unwrap();

        let mut buf = vec![0xFF; SIZE];
        mapping.read_at(0, &mut buf).unwrap();
        assert!(buf.iter().all(|&byte| byte == 0));
        let stat = fstat(&sut).unwrap();
        assert_eq!(stat.st_size, SIZE as i64);
        assert_eq!(seals(sut.as_fd()).unwrap(), seals_before);
    }

    #[test]
    fn release_memory_frees_the_allocated_blocks() {
        let sut = create_sealed("test", 1 << 20).unwrap();
        assert!(fstat(&sut).unwrap().st_blocks > 0);

        release_memory(sut.as_fd()).unwrap();

        assert_eq!(fstat(&sut).unwrap().st_blocks, 0);
    }

    #[test]
    fn release_memory_needs_a_writable_description() {
        let fd = create_sealed("test", 4096).unwrap();
        let read_only = reopen(fd.as_fd(), Access::Read).unwrap();

        let err = release_memory(read_only.as_fd()).unwrap_err();

        assert_eq!(err.raw_os_error(), Some(Errno::BADF.raw_os_error()));
    }

    #[test]
    fn access_of_refuses_write_only_descriptions() {
        let fd = create_sealed("test", 4096).unwrap();
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let write_only = fs::openat(
            fs::CWD,
            path,
            OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();

        let err = access_of(write_only.as_fd()).unwrap_err();

        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
