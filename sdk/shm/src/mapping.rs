//! [`Mapping`]: a `MAP_SHARED` mapping of a whole sealed memfd.
//!
//! # References
//! - [mmap(2)](https://man7.org/linux/man-pages/man2/mmap.2.html)
//! - [fcntl(2), "File Sealing"](https://man7.org/linux/man-pages/man2/fcntl.2.html)

use std::ffi::c_void;
use std::io;
use std::os::fd::BorrowedFd;
use std::ptr;

use rustix::fs::{self, SealFlags};
use rustix::mm::{self, MapFlags, ProtFlags};

use crate::Access;
use crate::memfd::REQUIRED_SEALS;

/// Why [`Mapping::map`] failed.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// `fstat` of the fd failed.
    #[error("cannot stat the memfd")]
    Stat(#[source] io::Error),
    /// The memfd has no bytes to map.
    #[error("the memfd is empty")]
    Empty,
    /// The memfd is larger than this process can map.
    #[error("the memfd's {size} bytes do not fit in this process's address space")]
    TooLarge {
        /// The memfd's size in bytes.
        size: u64,
    },
    /// Reading the seals failed (the fd is probably not a memfd).
    #[error("cannot read the seals (is the fd a memfd?)")]
    Seals(#[source] io::Error),
    /// The memfd lacks some of [`REQUIRED_SEALS`], so a peer could resize it
    /// under the mapping.
    #[error("the memfd is not sealed against resizing (seals found: {found:?})")]
    MissingSeals {
        /// The seals the memfd has.
        found: SealFlags,
    },
    /// `mmap` failed; `EACCES` when mapping a read-only fd writable.
    #[error("mmap failed")]
    Mmap(#[source] io::Error),
}

/// Why [`Mapping::read_at`] or [`Mapping::write_at`] failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// The range `offset..offset + len` is not inside the mapping.
    #[error("{len} bytes at offset {offset} are outside the {size}-byte mapping")]
    OutOfBounds {
        /// Start of the range.
        offset: usize,
        /// Length of the range.
        len: usize,
        /// Size of the mapping.
        size: usize,
    },
    /// The mapping is read-only.
    #[error("the mapping is read-only")]
    ReadOnly,
}

/// A `MAP_SHARED` mapping of a whole sealed memfd, unmapped on drop.
///
/// The memory is shared with other, untrusted processes, so this type never
/// hands out references to it: use [`read_at`](Self::read_at) and
/// [`write_at`](Self::write_at), or [`as_ptr`](Self::as_ptr) with volatile or
/// atomic access.
#[derive(Debug)]
pub struct Mapping {
    /// Start of the mapping, as returned by `mmap`.
    ptr: *mut c_void,
    /// Length of the mapping in bytes; never 0.
    len: usize,
    /// Whether the mapping is writable.
    access: Access,
}

// SAFETY: the mapping is owned by this value and unmapped once, in `drop`.
// The memory is addressed only through raw pointers (no references), and a
// mapping is valid in every thread of the process.
unsafe impl Send for Mapping {}

// SAFETY: `&self` methods only copy bytes in and out through raw pointers. The
// memory can change under them anyway (peers in other processes write it), so
// concurrent use from several threads adds nothing the copies do not already
// tolerate, and no reference to the memory is ever formed.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps all of a sealed memfd.
    ///
    /// `fstat` gives the size (must be positive and fit `usize`), the seals
    /// must contain [`REQUIRED_SEALS`], then `mmap(NULL, size, PROT_READ [|
    /// PROT_WRITE], MAP_SHARED, fd, 0)`. The fd's access mode is not
    /// pre-checked: the kernel refuses a writable mapping of a read-only fd.
    ///
    /// # Errors
    /// [`MapError::Empty`], [`MapError::TooLarge`] or
    /// [`MapError::MissingSeals`] for an unsuitable memfd, [`MapError::Mmap`]
    /// with `EACCES` when `access` is more than the fd allows, or the failing
    /// system call's error.
    pub fn map(fd: BorrowedFd<'_>, access: Access) -> Result<Self, MapError> {
        let stat = fs::fstat(fd).map_err(|err| MapError::Stat(err.into()))?;
        // A negative size cannot happen for a memfd; treat it as empty.
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        if size == 0 {
            return Err(MapError::Empty);
        }
        let len = usize::try_from(size)
            .ok()
            .filter(|&len| isize::try_from(len).is_ok())
            .ok_or(MapError::TooLarge { size })?;
        let found = fs::fcntl_get_seals(fd).map_err(|err| MapError::Seals(err.into()))?;
        if !found.contains(REQUIRED_SEALS) {
            return Err(MapError::MissingSeals { found });
        }
        let prot = match access {
            Access::Read => ProtFlags::READ,
            Access::ReadWrite => ProtFlags::READ | ProtFlags::WRITE,
        };
        // SAFETY: a null hint without MAP_FIXED lets the kernel pick an unused
        // range, so no existing memory is replaced. The memfd is sealed against
        // shrinking, so all `len` bytes stay backed for the mapping's lifetime.
        let ptr = unsafe { mm::mmap(ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0) }
            .map_err(|err| MapError::Mmap(err.into()))?;
        Ok(Self { ptr, len, access })
    }

    /// Size of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: empty memfds are refused by [`map`](Self::map).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the mapping is writable.
    pub fn access(&self) -> Access {
        self.access
    }

    /// Start of the mapping, for zero-copy users.
    ///
    /// The memory is shared with other processes that may write it at any
    /// time: access it with volatile or atomic operations, never through
    /// `&T`/`&mut T`, and never write through it if [`access`](Self::access)
    /// is [`Access::Read`] (the process would get `SIGSEGV`).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.cast()
    }

    /// Copies `buf.len()` bytes starting at `offset` out of the mapping.
    ///
    /// The bytes are a snapshot that a peer may be changing concurrently:
    /// treat them as untrusted input.
    ///
    /// # Errors
    /// [`AccessError::OutOfBounds`] if the range is not inside the mapping.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), AccessError> {
        let src = self.range(offset, buf.len())?;
        // SAFETY: `range` checked that `src..src + buf.len()` lies inside the
        // mapping, which stays mapped while `self` lives. `buf` is a Rust slice,
        // and this module never hands out slices into the mapping, so the two
        // ranges do not overlap. Bytes are plain data: any value is valid.
        unsafe { ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `data` into the mapping starting at `offset`.
    ///
    /// # Errors
    /// [`AccessError::ReadOnly`] if the mapping is read-only,
    /// [`AccessError::OutOfBounds`] if the range is not inside the mapping.
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), AccessError> {
        if self.access == Access::Read {
            return Err(AccessError::ReadOnly);
        }
        let dst = self.range(offset, data.len())?;
        // SAFETY: `range` checked that `dst..dst + data.len()` lies inside the
        // mapping, which is writable (checked above) and stays mapped while
        // `self` lives. `data` is a Rust slice, and this module never hands out
        // slices into the mapping, so the two ranges do not overlap.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        Ok(())
    }

    /// The address of `offset`, if `offset..offset + len` is inside the mapping.
    fn range(&self, offset: usize, len: usize) -> Result<*mut u8, AccessError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.as_ptr().wrapping_add(offset)),
            _ => Err(AccessError::OutOfBounds {
                offset,
                len,
                size: self.len,
            }),
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` describe a mapping created by `map` and owned
        // by `self`; no reference into it exists, and it is unmapped only here.
        let result = unsafe { mm::munmap(self.ptr, self.len) };
        debug_assert!(
            result.is_ok(),
            "munmap of an owned mapping failed: {result:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use rustix::fs::{MemfdFlags, memfd_create};
    use rustix::io::Errno;

    use super::*;
    use crate::memfd::{create_sealed, reopen};

    #[test]
    fn map_gives_the_whole_memfd() {
        let fd = create_sealed("test", 12288).unwrap();

        let sut = Mapping::map(fd.as_fd(), Access::ReadWrite).unwrap();

        assert_eq!(sut.len(), 12288);
        assert!(!sut.is_empty());
        assert_eq!(sut.access(), Access::ReadWrite);
        assert!(!sut.as_ptr().is_null());
    }

    #[test]
    fn map_refuses_unsealed_memfd() {
        let fd = memfd_create("test", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        fs::ftruncate(&fd, 4096).unwrap();
        fs::fcntl_add_seals(&fd, SealFlags::SHRINK).unwrap();

        let err = Mapping::map(fd.as_fd(), Access::Read).unwrap_err();

        assert!(
            matches!(err, MapError::MissingSeals { found } if found == SealFlags::SHRINK),
            "{err:?}"
        );
    }

    #[test]
    fn map_refuses_empty_memfd() {
        let fd = memfd_create("test", MemfdFlags::CLOEXEC).unwrap();

        let err = Mapping::map(fd.as_fd(), Access::Read).unwrap_err();

        assert!(matches!(err, MapError::Empty), "{err:?}");
    }

    #[test]
    fn map_refuses_read_only_fd_for_read_write_with_eacces() {
        let fd = create_sealed("test", 4096).unwrap();
        let read_only = reopen(fd.as_fd(), Access::Read).unwrap();

        let err = Mapping::map(read_only.as_fd(), Access::ReadWrite).unwrap_err();

        match err {
            MapError::Mmap(io) => assert_eq!(io.raw_os_error(), Some(Errno::ACCESS.raw_os_error())),
            other => panic!("expected Mmap(EACCES), got {other:?}"),
        }
    }

    #[test]
    fn read_only_mapping_sees_writes_of_a_read_write_mapping() {
        let fd = create_sealed("test", 4096).unwrap();
        let writer = Mapping::map(fd.as_fd(), Access::ReadWrite).unwrap();
        let read_only = reopen(fd.as_fd(), Access::Read).unwrap();
        let sut = Mapping::map(read_only.as_fd(), Access::Read).unwrap();

        writer.write_at(4090, b"abcdef").unwrap();
        let mut buf = [0; 6];
        sut.read_at(4090, &mut buf).unwrap();

        assert_eq!(&buf, b"abcdef");
    }

    #[test]
    fn write_at_refuses_read_only_mapping() {
        let fd = create_sealed("test", 4096).unwrap();
        let sut = Mapping::map(fd.as_fd(), Access::Read).unwrap();

        assert_eq!(sut.write_at(0, b"x"), Err(AccessError::ReadOnly));
    }

    #[test]
    fn read_at_and_write_at_check_bounds() {
        let fd = create_sealed("test", 4096).unwrap();
        let sut = Mapping::map(fd.as_fd(), Access::ReadWrite).unwrap();
        let mut buf = [0; 2];

        assert_eq!(
            sut.read_at(4095, &mut buf),
            Err(AccessError::OutOfBounds {
                offset: 4095,
                len: 2,
                size: 4096
            })
        );
        assert_eq!(
            sut.write_at(usize::MAX, b"xy"),
            Err(AccessError::OutOfBounds {
                offset: usize::MAX,
                len: 2,
                size: 4096
            })
        );
        assert_eq!(sut.read_at(4096, &mut []), Ok(()));
        assert_eq!(sut.write_at(4094, b"xy"), Ok(()));
        assert_eq!(sut.read_at(4094, &mut buf), Ok(()));
        assert_eq!(&buf, b"xy");
    }

    #[test]
    fn mapping_outlives_the_fd_it_was_made_from() {
        let fd = create_sealed("test", 4096).unwrap();
        let sut = Mapping::map(fd.as_fd(), Access::ReadWrite).unwrap();
        drop(fd);

        sut.write_at(0, b"still here").unwrap();
        let mut buf = [0; 10];
        sut.read_at(0, &mut buf).unwrap();

        assert_eq!(&buf, b"still here");
    }

    #[test]
    fn mapping_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Mapping>();
    }
}
