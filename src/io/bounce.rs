//! A pool of page-aligned bounce buffers, reused across O_DIRECT transfers whose caller
//! pointer or length is not 4096-aligned (and for block headers and tails).

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use super::AlignedBuf;
use crate::Result;

/// Keeps up to `max_kept` freed buffers for reuse; hands out the smallest kept buffer that is
/// large enough, else allocates a new one.
pub struct BouncePool {
    free: Mutex<Vec<AlignedBuf>>,
    max_kept: usize,
}

/// A buffer borrowed from a [`BouncePool`]; returned to the pool on drop.
pub struct Bounce<'a> {
    buf: Option<AlignedBuf>,
    pool: &'a BouncePool,
}

impl BouncePool {
    /// A pool keeping at most `max_kept` idle buffers.
    pub fn new(max_kept: usize) -> Self {
        BouncePool {
            free: Mutex::new(Vec::new()),
            max_kept,
        }
    }

    /// A buffer of at least `len` bytes (capacity a multiple of 4096), returned to the pool
    /// when the guard drops. Its contents are whatever the last user left there.
    pub fn get(&self, len: usize) -> Result<Bounce<'_>> {
        Ok(Bounce {
            buf: Some(self.take(len)?),
            pool: self,
        })
    }

    /// Like [`BouncePool::get`], but the caller owns the buffer (for a transfer that
    /// outlives the current call) and hands it back with [`BouncePool::put`].
    pub fn take(&self, len: usize) -> Result<AlignedBuf> {
        let reused = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            best.map(|i| free.swap_remove(i))
        };
        match reused {
            Some(b) => Ok(b),
            None => AlignedBuf::new(len),
        }
    }

    /// Returns a buffer for reuse (kept if the pool has room, or if it is larger than the
    /// smallest kept one, which it then replaces).
    pub fn put(&self, buf: AlignedBuf) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < self.max_kept {
            free.push(buf);
        } else if let Some(smallest) = free
            .iter_mut()
            .min_by_key(|b| b.capacity())
            .filter(|b| b.capacity() < buf.capacity())
        {
            // Keep the larger buffer: big transfers are the ones that pay for allocation.
            *smallest = buf;
        }
    }

    /// Number of idle buffers kept.
    pub fn idle(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Deref for Bounce<'_> {
    type Target = AlignedBuf;
    fn deref(&self) -> &AlignedBuf {
        self.buf.as_ref().expect("buffer present until drop")
    }
}

impl DerefMut for Bounce<'_> {
    fn deref_mut(&mut self) -> &mut AlignedBuf {
        self.buf.as_mut().expect("buffer present until drop")
    }
}

impl Drop for Bounce<'_> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.put(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_bounds() {
        let pool = BouncePool::new(2);
        let p1 = {
            let mut b = pool.get(10_000).unwrap();
            assert_eq!(b.capacity(), 12_288);
            b.as_mut_slice()[0] = 1;
            b.as_slice().as_ptr()
        };
        assert_eq!(pool.idle(), 1);
        let b = pool.get(5000).unwrap(); // reuses the 12 KiB one
        assert_eq!(b.as_slice().as_ptr(), p1);
        let c = pool.get(4096).unwrap();
        let d = pool.get(4096).unwrap();
        assert_eq!(c.capacity(), 4096);
        drop((b, c, d));
        assert_eq!(pool.idle(), 2);
        // The kept buffers are the larger ones.
        assert_eq!(pool.get(12_288).unwrap().capacity(), 12_288);
    }
}
