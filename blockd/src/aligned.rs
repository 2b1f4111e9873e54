//! Page-aligned buffers for O_DIRECT I/O.

use bytes::Bytes;
use std::alloc::{alloc, alloc_zeroed, dealloc, Layout};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

/// Alignment O_DIRECT needs on every device we meet (and a page).
pub const ALIGN: usize = 4096;

/// A heap buffer aligned to [`ALIGN`], always initialised (zeroed, copied or read).
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is uniquely owned plain memory.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access is read-only through `AsRef`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (`len > 0`); `None` if allocation fails.
    pub fn zeroed(len: usize) -> Option<AlignedBuf> {
        let layout = Layout::from_size_align(len.max(1), ALIGN).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        Some(AlignedBuf { ptr, len })
    }

    /// An aligned copy of `data` (written once: not zeroed first).
    pub fn copy_of(data: &[u8]) -> Option<AlignedBuf> {
        let layout = Layout::from_size_align(data.len().max(1), ALIGN).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc(layout) })?;
        // SAFETY: `ptr` is a fresh allocation of at least `data.len()` bytes, so the
        // ranges cannot overlap; after the copy all `len` bytes are initialised.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr.as_ptr(), data.len()) };
        Some(AlignedBuf {
            ptr,
            len: data.len(),
        })
    }

    /// `len` bytes (`len > 0`) read with `pread` from `fd` at `pos`, straight into a fresh
    /// buffer (not zeroed first); a short read is an error.
    pub fn read_at(fd: BorrowedFd<'_>, len: usize, pos: u64) -> io::Result<AlignedBuf> {
        let layout = Layout::from_size_align(len.max(1), ALIGN)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc(layout) })
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        // Owned from here, so an error frees it; its bytes are not read before they are
        // all written.
        let buf = AlignedBuf { ptr, len };
        let mut done = 0;
        while done < len {
            let off = libc::off_t::try_from(pos + done as u64)
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            // SAFETY: writes at most `len - done` bytes into the owned allocation, from
            // `done` on.
            let n = unsafe {
                libc::pread(
                    fd.as_raw_fd(),
                    buf.ptr.as_ptr().add(done).cast(),
                    len - done,
                    off,
                )
            };
            match n {
                n if n > 0 => done += n as usize,
                0 => return Err(io::Error::from_raw_os_error(libc::EIO)),
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        Ok(buf)
    }

    /// Shares the buffer as `Bytes` without copying.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

/// An aligned buffer whose bytes are not initialised yet: where a read the kernel
/// carries out later (io_uring) lands. It never shows its bytes; once they are all
/// written, [`Unfilled::assume_filled`] makes it an [`AlignedBuf`].
pub struct Unfilled(AlignedBuf);

impl Unfilled {
    /// `len` bytes (`len > 0`), not zeroed; `None` if allocation fails.
    pub fn new(len: usize) -> Option<Unfilled> {
        let layout = Layout::from_size_align(len.max(1), ALIGN).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc(layout) })?;
        Some(Unfilled(AlignedBuf { ptr, len }))
    }

    /// Where the bytes go.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.0.ptr.as_ptr()
    }

    /// The buffer, its bytes initialised.
    ///
    /// # Safety
    /// All `len` bytes must have been written since [`Unfilled::new`].
    pub unsafe fn assume_filled(self) -> AlignedBuf {
        self.0
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialised (zeroed, copied or read) bytes we own.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl AsMut<[u8]> for AlignedBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_ref`, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let Ok(layout) = Layout::from_size_align(self.len.max(1), ALIGN) {
            // SAFETY: allocated in `zeroed`, `copy_of`, `read_at` or `Unfilled::new` with
            // this very layout.
            unsafe { dealloc(self.ptr.as_ptr(), layout) }
        }
    }
}

/// Whether a request can go to the O_DIRECT descriptor as it is.
pub fn is_direct_ready(offset: u64, data: &[u8]) -> bool {
    is_direct_range(offset, data.len())
}

/// Whether `len` bytes at `offset` (not none) are block-aligned for O_DIRECT.
pub fn is_direct_range(offset: u64, len: usize) -> bool {
    offset.is_multiple_of(ALIGN as u64) && len.is_multiple_of(ALIGN) && len > 0
}

/// Whether the buffer itself is aligned.
pub fn is_aligned(data: &[u8]) -> bool {
    (data.as_ptr() as usize).is_multiple_of(ALIGN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn aligned_and_shared() {
        let b = AlignedBuf::copy_of(&[7u8; 8192]).unwrap();
        assert!(is_aligned(b.as_ref()));
        let bytes = b.into_bytes();
        assert!(is_aligned(&bytes));
        assert_eq!(&bytes[..], &[7u8; 8192][..]);
        assert!(is_direct_ready(4096, &bytes));
        assert!(!is_direct_ready(512, &bytes));
    }

    #[test]
    fn read_at_fills_a_fresh_aligned_buffer_or_fails_whole() {
        use std::io::Write;
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..12288u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let b = AlignedBuf::read_at(f.as_fd(), 8192, 4096).unwrap();
        assert!(is_aligned(b.as_ref()));
        assert_eq!(b.as_ref(), &data[4096..]);
        // Past the end: a short read is an error, not a half-filled buffer.
        let e = AlignedBuf::read_at(f.as_fd(), 8192, 8192).err().unwrap();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
    }

    #[test]
    fn an_unfilled_buffer_is_aligned_and_becomes_what_was_written_into_it() {
        let mut u = Unfilled::new(8192).unwrap();
        let ptr = u.as_mut_ptr();
        assert!((ptr as usize).is_multiple_of(ALIGN));
        // SAFETY: writes the 8192 bytes the buffer has, then says so.
        let b = unsafe {
            std::ptr::write_bytes(ptr, 0x5a, 8192);
            u.assume_filled()
        };
        assert_eq!(b.as_ref(), &[0x5a; 8192][..]);
        drop(Unfilled::new(4096).unwrap()); // freed unread
    }
}
