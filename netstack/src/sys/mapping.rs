//! Anonymous memory mappings whose pages can be handed back to the kernel
//! while the mapping stays: what TCP socket buffers are carved from (see
//! `stack::buffers`).
//!
//! A page of a private anonymous mapping costs no resident memory until it
//! is first written; `madvise(MADV_DONTNEED)` returns it, and the next
//! access sees a fresh zero page. The mapping is made with `MAP_NORESERVE`:
//! reserving address space for buffers that are mostly never filled would
//! only make the kernel's overcommit accounting refuse them.

use std::io;
use std::ptr::NonNull;

/// The page size the mappings are aligned to.
pub(crate) const PAGE: usize = 4096;

/// One private anonymous read-write mapping, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: a Mapping is plain memory with no thread affinity; every access to
// its bytes goes through the unsafe functions below, whose callers promise
// exclusive use.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps `len` bytes (rounded up to whole pages), none of them resident.
    pub(crate) fn new(len: usize) -> io::Result<Self> {
        let len = len.max(1).next_multiple_of(PAGE);
        // SAFETY: an anonymous mapping at an address the kernel picks takes
        // no pointer from us and aliases nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned address 0"))?;
        Ok(Self { base, len })
    }

    /// The mapping's length in bytes (whole pages).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes of the mapping resident in memory now (`mincore(2)`; costs a
    /// byte of scratch per page).
    pub(crate) fn resident_bytes(&self) -> usize {
        let mut pages = vec![0u8; self.len / PAGE];
        // SAFETY: mincore writes one byte per page of our mapping into
        // `pages`, which has exactly that many.
        let rc = unsafe { libc::mincore(self.base.as_ptr().cast(), self.len, pages.as_mut_ptr()) };
        if rc != 0 {
            return 0;
        }
        pages.iter().filter(|&&b| b & 1 == 1).count() * PAGE
    }

    /// `len` bytes at `offset` as a slice that outlives this borrow.
    ///
    /// Panics if the range is not inside the mapping.
    ///
    /// # Safety
    /// The caller must drop the slice before the mapping is dropped, and
    /// must never hold two live slices that overlap.
    pub(crate) unsafe fn slice(&self, offset: usize, len: usize) -> &'static mut [u8] {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len), "slice outside its mapping");
        // SAFETY: the range is inside the mapping (checked above), which is
        // readable, writable and initialized (zero pages); the caller
        // promises the slice ends before the mapping and overlaps no other.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(offset), len) }
    }

    /// Returns the pages of `len` bytes at `offset` (both multiples of
    /// [`PAGE`]) to the kernel: they stop counting as resident and read as
    /// zeros from now on.
    ///
    /// Panics if the range is not page-aligned or not inside the mapping.
    ///
    /// # Safety
    /// The bytes' contents are lost. The caller must hold every slice into
    /// the range exclusively for the duration of the call (nothing reads or
    /// writes it concurrently) and must not need what they held.
    pub(crate) unsafe fn discard(&self, offset: usize, len: usize) {
        assert!(offset.is_multiple_of(PAGE) && len.is_multiple_of(PAGE), "discard range not page-aligned");
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len), "discard outside its mapping");
        if len == 0 {
            return;
        }
        // SAFETY: the range is page-aligned and inside our mapping; the
        // caller promises that nobody uses it meanwhile and that zeros are
        // acceptable afterwards. MADV_DONTNEED cannot fail on a valid
        // private anonymous range, so the result needs no handling beyond
        // a debug check.
        let rc = unsafe { libc::madvise(self.base.as_ptr().add(offset).cast(), len, libc::MADV_DONTNEED) };
        debug_assert_eq!(rc, 0, "madvise(MADV_DONTNEED): {}", io::Error::last_os_error());
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped; slices into it are gone
        // (the contract of `slice`).
        let rc = unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
        debug_assert_eq!(rc, 0, "munmap: {}", io::Error::last_os_error());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resident_pages(m: &Mapping) -> usize {
        m.resident_bytes() / PAGE
    }

    #[test]
    fn pages_become_resident_when_written_and_leave_when_discarded() {
        let m = Mapping::new(16 * PAGE).unwrap();
        assert_eq!(resident_pages(&m), 0, "a fresh mapping holds no pages");
        // SAFETY: the only slice into the mapping, dropped before it.
        let s = unsafe { m.slice(0, 16 * PAGE) };
        s[..3 * PAGE].fill(7);
        assert_eq!(resident_pages(&m), 3);
        // SAFETY: `s` is not used during the call; its contents are not needed.
        unsafe { m.discard(0, 2 * PAGE) };
        assert_eq!(resident_pages(&m), 1);
        assert!(s[..2 * PAGE].iter().all(|&b| b == 0), "discarded pages read as zeros");
        assert!(s[2 * PAGE..3 * PAGE].iter().all(|&b| b == 7), "the rest is kept");
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn slices_stay_inside() {
        let m = Mapping::new(PAGE).unwrap();
        // SAFETY: panics before any slice exists.
        let _ = unsafe { m.slice(PAGE - 1, 2) };
    }
}
