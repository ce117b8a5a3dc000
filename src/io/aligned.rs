//! Alignment to [`IO_ALIGN`](super::IO_ALIGN), as O_DIRECT requires: rounding of lengths and
//! offsets, alignment checks, and aligned heap buffers.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

use super::IO_ALIGN;
use crate::{err, Result};

/// A zero-initialised, 4096-aligned byte buffer whose capacity is a multiple of 4096.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
}

// SAFETY: AlignedBuf exclusively owns its allocation, like Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads through &self.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates at least `len` bytes (rounded up to 4096, minimum 4096).
    pub fn new(len: usize) -> Result<Self> {
        let cap = len.max(1).checked_next_multiple_of(IO_ALIGN);
        let layout = cap.and_then(|c| Layout::from_size_align(c, IO_ALIGN).ok());
        let Some(layout) = layout else {
            return Err(err!(
                InvalidArgument,
                "aligned buffer of {len} bytes overflows"
            ));
        };
        // SAFETY: layout has non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw)
            .ok_or_else(|| err!(NoSpace, "out of memory allocating {} bytes", layout.size()))?;
        Ok(AlignedBuf {
            ptr,
            cap: layout.size(),
        })
    }

    /// Capacity in bytes (a multiple of 4096).
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The whole buffer.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` owns `cap` initialised (zeroed at allocation) bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.cap) }
    }

    /// The whole buffer, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout.
        unsafe {
            dealloc(
                self.ptr.as_ptr(),
                Layout::from_size_align_unchecked(self.cap, IO_ALIGN),
            )
        }
    }
}

/// `n` rounded up to a multiple of 4096.
pub const fn align_up(n: usize) -> usize {
    n.next_multiple_of(IO_ALIGN)
}

/// `n` rounded down to a multiple of 4096.
pub const fn align_down(n: usize) -> usize {
    n - n % IO_ALIGN
}

/// Whether `ptr` and `len` are both 4096-aligned (usable for O_DIRECT without a bounce buffer).
pub fn is_aligned(ptr: *const u8, len: usize) -> bool {
    (ptr as usize) % IO_ALIGN == 0 && len % IO_ALIGN == 0
}

/// Whether `ptr` is 4096-aligned.
pub fn is_aligned_ptr(ptr: *const u8) -> bool {
    (ptr as usize) % IO_ALIGN == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_up_and_aligns() {
        let mut b = AlignedBuf::new(5000).unwrap();
        assert_eq!(b.capacity(), 8192);
        assert!(is_aligned(b.as_slice().as_ptr(), b.capacity()));
        b.as_mut_slice()[8191] = 7;
        assert_eq!(AlignedBuf::new(0).unwrap().capacity(), 4096);
        assert!(AlignedBuf::new(usize::MAX).is_err());
    }

    #[test]
    fn rounding() {
        assert_eq!(
            [0, 1, 4095, 4096, 4097].map(align_up),
            [0, 4096, 4096, 4096, 8192]
        );
        assert_eq!(
            [0, 1, 4095, 4096, 8191].map(align_down),
            [0, 0, 0, 4096, 4096]
        );
    }
}
