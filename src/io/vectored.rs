//! Positional I/O that retries EINTR and short transfers: whole-buffer `pread`/`pwrite`,
//! and vectored `preadv`/`pwritev`, one syscall for [header page | caller's buffer | tail
//! page] in the common case. Shared by every tier.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// One segment of a caller's block: `len` bytes at `ptr`, read for a store and written for a
/// load (C: `kvr_segment`). Async batches copy their segment lists into these.
#[derive(Clone, Copy, Debug)]
pub struct RawSegment {
    /// Start of the segment.
    pub ptr: *mut u8,
    /// Its bytes.
    pub len: usize,
}

/// The keys and segment lists of an async batch, copied at submit so the caller's arrays
/// need not outlive the call (the buffers the segments point to must). Items refer to their
/// part by a [`BatchEntry`] (plain `Copy` data, as worker pools take).
#[derive(Debug, Default)]
pub struct SegmentBatch {
    keys: Vec<u8>,
    segments: Vec<RawSegment>,
}

// SAFETY: the batch only holds pointers into caller buffers, which the submitter guarantees
// valid (and, for loads, unaliased) until the job completes; the batch itself is never
// mutated after it is shared.
unsafe impl Send for SegmentBatch {}
// SAFETY: as above; shared access only reads the copied keys and segment descriptors.
unsafe impl Sync for SegmentBatch {}

/// One item's part of a [`SegmentBatch`].
#[derive(Clone, Copy, Debug)]
pub struct BatchEntry {
    key: (usize, usize),
    segments: (usize, usize),
}

impl SegmentBatch {
    /// Appends one item's key and segments.
    pub fn push(&mut self, key: &[u8], segments: &[RawSegment]) -> BatchEntry {
        let key_at = self.keys.len();
        self.keys.extend_from_slice(key);
        let seg_at = self.segments.len();
        self.segments.extend_from_slice(segments);
        BatchEntry {
            key: (key_at, key.len()),
            segments: (seg_at, segments.len()),
        }
    }

    /// The key of `e`.
    pub fn key(&self, e: BatchEntry) -> &[u8] {
        &self.keys[e.key.0..e.key.0 + e.key.1]
    }

    /// The segments of `e`.
    pub fn segments(&self, e: BatchEntry) -> &[RawSegment] {
        &self.segments[e.segments.0..e.segments.0 + e.segments.1]
    }
}

/// The payload length of a store's segments: their sum; `InvalidArgument` for no segments,
/// an empty one, or a sum that overflows.
pub fn payload_len(segments: &[&[u8]]) -> crate::Result<usize> {
    sum_lengths(segments.iter().map(|s| s.len()))
}

/// [`payload_len`] of a load's segments.
pub fn payload_len_mut(segments: &[&mut [u8]]) -> crate::Result<usize> {
    sum_lengths(segments.iter().map(|s| s.len()))
}

fn sum_lengths(lens: impl Iterator<Item = usize>) -> crate::Result<usize> {
    let mut total: usize = 0;
    let mut n = 0;
    for (i, len) in lens.enumerate() {
        if len == 0 {
            return Err(crate::err!(
                InvalidArgument,
                "segment {i} is empty (length 0)"
            ));
        }
        total = total
            .checked_add(len)
            .filter(|&t| t <= isize::MAX as usize)
            .ok_or_else(|| crate::err!(InvalidArgument, "segment lengths overflow"))?;
        n += 1;
    }
    if n == 0 {
        return Err(crate::err!(
            InvalidArgument,
            "payload is empty (no segments)"
        ));
    }
    Ok(total)
}

/// `pread` until `buf` is full; end of file first is `UnexpectedEof`.
pub fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

/// `pwrite` until all of `buf` is written.
pub fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

/// Writes all of `bufs` at `offset` with `pwritev`, retrying EINTR and short writes.
pub fn pwritev_all(file: &File, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
    let iov: Vec<libc::iovec> = bufs
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let want: usize = iov.iter().map(|v| v.iov_len).sum();
    // SAFETY: every iovec points into a live slice of `bufs`; pwritev only reads from them.
    let n = unsafe { transfer(file, iov, offset, libc::pwritev) }?;
    if n < want {
        // A write that makes no progress: the file cannot grow.
        return Err(io::Error::from_raw_os_error(libc::ENOSPC));
    }
    Ok(())
}

/// Reads into `bufs` from `offset` with `preadv` until they are full or end of file;
/// returns the bytes read.
pub fn preadv_all(file: &File, bufs: &mut [&mut [u8]], offset: u64) -> io::Result<usize> {
    let iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .filter(|b| !b.is_empty())
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: every iovec points into a live, exclusively borrowed slice of `bufs`; preadv
    // writes at most iov_len bytes to each.
    unsafe { transfer(file, iov, offset, libc::preadv) }
}

/// One `preadv` into `bufs` from `offset` (retrying only EINTR); returns the bytes read,
/// which may be fewer than asked for without being the end of the file. For a reader that
/// asks for more than it expects so that a short count tells it the file's size, and must
/// not pay a second call (a network round trip on FUSE) to see the end of file.
pub fn preadv_once(file: &File, bufs: &mut [&mut [u8]], offset: u64) -> io::Result<usize> {
    let iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .filter(|b| !b.is_empty())
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let cnt = iov.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
    loop {
        // SAFETY: every iovec points into a live, exclusively borrowed slice of `bufs`;
        // preadv writes at most iov_len bytes to each.
        let n = unsafe { libc::preadv(file.as_raw_fd(), iov.as_ptr(), cnt, offset as libc::off_t) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The positional vectored syscall shape shared by `preadv` and `pwritev`.
type VectoredOp =
    unsafe extern "C" fn(libc::c_int, *const libc::iovec, libc::c_int, libc::off_t) -> isize;

/// Runs `op` over `iov` from `offset` until every iovec is consumed or `op` transfers
/// nothing (end of file, or a write that cannot progress), retrying EINTR and continuing
/// after short transfers. Returns the bytes transferred.
///
/// # Safety
/// Every iovec must describe memory valid for what `op` does with it (reads for
/// `pwritev`, exclusive writes for `preadv`) for the duration of the call.
unsafe fn transfer(
    file: &File,
    mut iov: Vec<libc::iovec>,
    mut offset: u64,
    op: VectoredOp,
) -> io::Result<usize> {
    let mut start = 0;
    let mut total = 0;
    while start < iov.len() {
        let cnt = (iov.len() - start).min(libc::UIO_MAXIOV as usize) as libc::c_int;
        // SAFETY: the iovecs are valid per this function's contract and only advanced
        // within their buffers (see `advance`).
        let n = unsafe {
            op(
                file.as_raw_fd(),
                iov[start..].as_ptr(),
                cnt,
                offset as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        offset += n as u64;
        total += n as usize;
        start = advance(&mut iov, start, n as usize);
    }
    Ok(total)
}

/// Consumes `n` bytes from `iov[start..]`; returns the new start.
fn advance(iov: &mut [libc::iovec], mut start: usize, mut n: usize) -> usize {
    while n > 0 && start < iov.len() {
        let v = &mut iov[start];
        if n >= v.iov_len {
            n -= v.iov_len;
            start += 1;
        } else {
            // SAFETY: n < iov_len, so the new base stays inside the same buffer.
            v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
            v.iov_len -= n;
            n = 0;
        }
    }
    start
}

/// Like [`preadv_all`], but end of file before every buffer is full is an error
/// (`UnexpectedEof`).
pub fn preadv_exact(file: &File, bufs: &mut [&mut [u8]], offset: u64) -> io::Result<()> {
    let want: usize = bufs.iter().map(|b| b.len()).sum();
    if preadv_all(file, bufs, offset)? < want {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Moved from the fs tier's syscall helpers (now all in `io`), with its assertions.
    #[test]
    fn vectored_round_trip_and_eof() {
        use crate::io::file::same_inode;
        use crate::io::lock::{try_lock, LockMode};
        use crate::io::publish::sync_dir;
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        pwritev_all(&f, &[b"abc", b"", b"defgh"], 2).unwrap();
        let (mut a, mut b) = ([0u8; 4], [9u8; 10]);
        let n = preadv_all(&f, &mut [&mut a, &mut b], 0).unwrap();
        assert_eq!(n, 10);
        assert_eq!(&a, b"\0\0ab");
        assert_eq!(&b[..6], b"cdefgh");
        assert_eq!(b[6], 9);
        assert!(try_lock(&f, LockMode::Exclusive).unwrap());
        let g = std::fs::File::open(dir.path().join("f")).unwrap();
        assert!(!try_lock(&g, LockMode::Exclusive).unwrap());
        drop(f);
        assert!(try_lock(&g, LockMode::Exclusive).unwrap());
        assert!(same_inode(&g, &dir.path().join("f")));
        assert!(!same_inode(&g, &dir.path().join("nope")));
        sync_dir(dir.path()).unwrap();
        let mut c = [0u8; 3];
        read_exact_at(&g, &mut c, 4).unwrap();
        assert_eq!(&c, b"cde");
        assert!(write_all_at(&g, b"x", 0).is_err(), "read-only descriptor");
    }

    #[test]
    fn round_trips_across_buffers_and_reports_eof() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("v"))
            .unwrap();
        let a = vec![1u8; 3];
        let b = vec![2u8; 5000];
        pwritev_all(&f, &[&a, &[], &b], 10).unwrap();
        let (mut x, mut y) = (vec![0u8; 4], vec![0u8; 4999]);
        preadv_exact(&f, &mut [&mut x, &mut y], 10).unwrap();
        assert_eq!(x, [1, 1, 1, 2]);
        assert!(y.iter().all(|&v| v == 2));
        let mut z = vec![0u8; 10];
        assert_eq!(preadv_all(&f, &mut [&mut z], 5005).unwrap(), 8); // file ends at 5013
        assert_eq!(preadv_once(&f, &mut [&mut z], 5005).unwrap(), 8);
        assert_eq!(preadv_once(&f, &mut [&mut z], 6000).unwrap(), 0);
        let e = preadv_exact(&f, &mut [&mut z], 5005).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let mut iov = vec![
            libc::iovec {
                iov_base: a.as_ptr() as *mut _,
                iov_len: 3,
            },
            libc::iovec {
                iov_base: b.as_ptr() as *mut _,
                iov_len: 5000,
            },
        ];
        assert_eq!(advance(&mut iov, 0, 4), 1);
        assert_eq!(iov[1].iov_len, 4999);
    }

    #[test]
    fn advance_splits_buffers() {
        let (a, b) = ([0u8; 4], [0u8; 4]);
        let mut iov = [
            libc::iovec {
                iov_base: a.as_ptr() as *mut _,
                iov_len: 4,
            },
            libc::iovec {
                iov_base: b.as_ptr() as *mut _,
                iov_len: 4,
            },
        ];
        assert_eq!(advance(&mut iov, 0, 5), 1);
        assert_eq!(iov[1].iov_len, 3);
        assert_eq!(advance(&mut iov, 1, 3), 2);
    }
}
