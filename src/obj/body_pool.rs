//! Request bodies for object stores, in buffers that are reused. A freshly allocated body
//! is faulted in page by page as the payload is copied into it: for a 2 MiB block, 512
//! page faults cost ~1.3 ms of CPU on the bench machine (`kvr bench --tier obj` reports
//! client CPU per request: ~3.0 ms per 2 MiB store with a new buffer each time, ~1.8 ms with
//! glibc told to keep freed memory), more than the copy and the checksum together. Bodies
//! whose request has ended come back here and are handed to the next store.

use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

/// Bodies larger than this are not kept (tensor-sized stores are rare; holding them would
/// pin that much memory for good).
const MAX_KEPT_BODY: usize = 8 << 20;

/// The most bytes of idle bodies a store keeps, over all of them.
const MAX_KEPT_BYTES: usize = 64 << 20;

/// Idle body buffers of one object store, at most `keep` of them (its concurrency: the
/// stores in flight at once; the slots bound them) and [`MAX_KEPT_BYTES`] in all.
pub(crate) struct BodyPool {
    idle: Arc<Mutex<Idle>>,
}

struct Idle {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
    keep: usize,
}

impl BodyPool {
    pub(crate) fn new(keep: usize) -> BodyPool {
        BodyPool {
            idle: Arc::new(Mutex::new(Idle {
                buffers: Vec::new(),
                bytes: 0,
                keep,
            })),
        }
    }

    /// The concatenation of `segments` (`len` bytes in all) as one body, and its xxh3-64
    /// checksum (equal to [`crate::fs::format::checksum`] of those bytes), computed while
    /// copying: each piece is hashed right after it is read, while it is in the cache.
    pub(crate) fn gather(&self, segments: &[&[u8]], len: usize) -> (Bytes, u64) {
        // Pieces of this size stay in the L2 cache between the copy and the hash.
        const PIECE: usize = 64 << 10;
        let mut buf = self.take(len);
        let mut sum = xxhash_rust::xxh3::Xxh3::new();
        for s in segments {
            for piece in s.chunks(PIECE) {
                buf.extend_from_slice(piece);
                sum.update(piece);
            }
        }
        debug_assert_eq!(buf.len(), len);
        let body = Bytes::from_owner(Body {
            buf,
            home: Arc::downgrade(&self.idle),
        });
        (body, sum.digest())
    }

    /// An empty buffer with room for `len` bytes: the smallest idle one that fits, else a
    /// new one.
    fn take(&self, len: usize) -> Vec<u8> {
        let mut idle = lock(&self.idle);
        let fit = idle
            .buffers
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        match fit {
            Some(i) => {
                let mut b = idle.buffers.swap_remove(i);
                idle.bytes -= b.capacity();
                b.clear();
                b
            }
            None => {
                drop(idle);
                Vec::with_capacity(len)
            }
        }
    }

    /// Idle buffers and their bytes, for tests.
    #[cfg(test)]
    fn idle(&self) -> (usize, usize) {
        let idle = lock(&self.idle);
        (idle.buffers.len(), idle.bytes)
    }
}

/// A poisoned lock still guards a consistent list (no code panics while holding it).
fn lock(idle: &Mutex<Idle>) -> std::sync::MutexGuard<'_, Idle> {
    idle.lock().unwrap_or_else(|e| e.into_inner())
}

/// A body's bytes; back to its pool when the HTTP client lets go of the last reference.
struct Body {
    buf: Vec<u8>,
    home: Weak<Mutex<Idle>>,
}

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        let Some(home) = self.home.upgrade() else {
            return; // the store is closed
        };
        let size = self.buf.capacity();
        let mut idle = lock(&home);
        if size <= MAX_KEPT_BODY
            && idle.buffers.len() < idle.keep
            && idle.bytes + size <= MAX_KEPT_BYTES
        {
            idle.bytes += size;
            idle.buffers.push(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathers_and_checksums_every_segment() {
        let pool = BodyPool::new(4);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let parts: Vec<&[u8]> = vec![&data[..1], &data[1..70_000], &data[70_000..]];
        let (body, sum) = pool.gather(&parts, data.len());
        assert_eq!(&body[..], &data[..]);
        assert_eq!(sum, crate::fs::format::checksum(&data));
        let (empty, sum) = pool.gather(&[], 0);
        assert!(empty.is_empty());
        assert_eq!(sum, crate::fs::format::checksum(&[]));
    }

    #[test]
    fn bodies_come_back_and_are_reused() {
        let pool = BodyPool::new(2);
        let data = vec![5u8; 100_000];
        let (a, _) = pool.gather(&[&data], data.len());
        let (b, _) = pool.gather(&[&data], data.len());
        let (c, _) = pool.gather(&[&data], data.len());
        assert_eq!(pool.idle().0, 0);
        // A clone keeps the body in use: it comes back only with its last reference.
        let a2 = a.clone();
        drop(a);
        assert_eq!(pool.idle().0, 0);
        drop(a2);
        assert_eq!(pool.idle(), (1, 100_000));
        drop((b, c)); // only `keep` (2) are kept
        assert_eq!(pool.idle(), (2, 200_000));
        // The next body of that size reuses a kept buffer; new bytes, not the old ones.
        let other = vec![9u8; 100_000];
        let (d, sum) = pool.gather(&[&other], other.len());
        assert_eq!(&d[..], &other[..]);
        assert_eq!(sum, crate::fs::format::checksum(&other));
        assert_eq!(pool.idle(), (1, 100_000));
        // A larger body does not fit the kept one and gets its own.
        let big = vec![1u8; 200_000];
        let (e, _) = pool.gather(&[&big], big.len());
        assert_eq!(pool.idle().0, 1);
        drop((d, e)); // `d`'s comes back; `e`'s finds the pool full (`keep`)
        assert_eq!(pool.idle(), (2, 200_000));
        // Bodies outliving their pool are simply freed.
        let (f, _) = pool.gather(&[&data], data.len());
        drop(pool);
        assert_eq!(&f[..], &data[..]);
    }

    #[test]
    fn huge_bodies_are_not_kept() {
        let pool = BodyPool::new(4);
        let big = vec![0u8; MAX_KEPT_BODY + 1];
        drop(pool.gather(&[&big], big.len()));
        assert_eq!(pool.idle(), (0, 0));
    }
}
