//! A small pool of page-aligned bounce buffers, for O_DIRECT transfers whose caller buffer is
//! not 4096-aligned (and for header pages). Buffers are reused instead of allocated per call.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use super::AlignedBuf;
use crate::Result;

/// Keeps up to `max_kept` released buffers for reuse.
pub struct BouncePool {
    kept: Mutex<Vec<AlignedBuf>>,
    max_kept: usize,
}

/// A buffer on loan from a [`BouncePool`]; goes back to the pool when dropped.
pub struct Bounce<'a> {
    buf: Option<AlignedBuf>,
    pool: &'a BouncePool,
}

impl BouncePool {
    /// An empty pool keeping at most `max_kept` buffers.
    pub fn new(max_kept: usize) -> Self {
        BouncePool {
            kept: Mutex::new(Vec::new()),
            max_kept,
        }
    }

    /// A buffer of at least `len` bytes (4096-aligned; contents unspecified).
    pub fn take(&self, len: usize) -> Result<Bounce<'_>> {
        let reused = {
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            kept.iter()
                .position(|b| b.capacity() >= len)
                .map(|i| kept.swap_remove(i))
        };
        let buf = match reused {
            Some(b) => b,
            None => AlignedBuf::new(len)?,
        };
        Ok(Bounce {
            buf: Some(buf),
            pool: self,
        })
    }
}

impl Deref for Bounce<'_> {
    type Target = AlignedBuf;
    fn deref(&self) -> &AlignedBuf {
        self.buf.as_ref().expect("bounce buffer present until drop")
    }
}

impl DerefMut for Bounce<'_> {
    fn deref_mut(&mut self) -> &mut AlignedBuf {
        self.buf.as_mut().expect("bounce buffer present until drop")
    }
}

impl Drop for Bounce<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            let mut kept = self.pool.kept.lock().unwrap_or_else(|p| p.into_inner());
            if kept.len() < self.pool.max_kept {
                kept.push(b);
            } else if let Some(smallest) = kept.iter_mut().min_by_key(|k| k.capacity()) {
                // Keep the larger buffers: they serve every request size.
                if smallest.capacity() < b.capacity() {
                    *smallest = b;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_buffers_large_enough() {
        let pool = BouncePool::new(2);
        let p = {
            let b = pool.take(10_000).unwrap();
            assert_eq!(b.capacity(), 12288);
            b.as_slice().as_ptr()
        };
        let b = pool.take(4096).unwrap();
        assert_eq!(b.as_slice().as_ptr(), p);
        let c = pool.take(4096).unwrap();
        assert_ne!(c.as_slice().as_ptr(), p);
        drop((b, c));
        assert_eq!(pool.kept.lock().unwrap().len(), 2);
        drop(pool.take(1 << 20).unwrap());
        let kept = pool.kept.lock().unwrap();
        assert!(kept.iter().any(|b| b.capacity() == 1 << 20));
        assert_eq!(kept.len(), 2);
    }
}
