//! Asynchronous stores overlap each writer thread's block writes with its metadata work.
//!
//! Storing a small block is a chain of metadata calls (dedup check, temp file creation,
//! allocation, then publication) around one data write. Done in sequence, every writer
//! thread leaves the device idle during its metadata calls: at 64 KiB that is a fifth of the
//! time. Here each writer thread keeps its block write in flight on a private io_uring while
//! it stages the next block and publishes the previous one, so the device sees one write
//! per thread at all times (the same queue depth as `fio --numjobs=<threads>`), and the
//! metadata work hides behind it. The last write of a burst is finished by the pool's idle
//! hook ([`flush`]) before the thread sleeps. Without io_uring, blocks are written
//! synchronously, as [`FsStore::store`](super::FsStore::store) does.

use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;

use super::store::{Staged, Staging, Stored};
use crate::io::job::Completer;
use crate::io::uring::WriteRing;
use crate::io::vectored::RawSegment;
use crate::{Error, Result};

/// A caller's payload (its segments, in order), read by a job item until the item completes.
pub(super) struct Payload {
    pub segments: Vec<RawSegment>,
}

impl Payload {
    /// # Safety
    /// Every segment's memory must be valid for reads of its length, and unmodified, for `'a`.
    unsafe fn get<'a>(&self) -> Vec<&'a [u8]> {
        self.segments
            .iter()
            // SAFETY: the caller's guarantee (see above).
            .map(|s| unsafe { std::slice::from_raw_parts(s.ptr.cast_const(), s.len) })
            .collect()
    }

    fn len(&self) -> usize {
        self.segments.iter().map(|s| s.len).sum()
    }
}

/// A block whose write is in flight on this thread's ring.
struct InFlight {
    staged: Staged,
    payload: Payload,
    completer: Completer,
}

/// This writer thread's ring and its write in flight.
struct Pipe {
    /// `None` where io_uring is unavailable. Declared before `pending`: dropping the ring
    /// waits for the kernel before the buffers in `pending` are released.
    ring: Option<WriteRing>,
    pending: Option<InFlight>,
}

thread_local! {
    static PIPE: RefCell<Option<Pipe>> = const { RefCell::new(None) };
}

/// Stores one item of an async batch on the current writer thread: stages it with `stage`
/// (while the thread's previous write is in flight), reaps the previous write, submits this
/// one, then publishes the previous block while this write is in flight.
///
/// # Safety
/// `payload` must stay valid and unmodified until `completer` is finished (the job's
/// contract: the job cannot complete, nor be dropped, before).
pub(super) unsafe fn store(
    stage: impl FnOnce(&[&[u8]]) -> Result<Staging>,
    payload: Payload,
    completer: Completer,
) {
    // SAFETY: valid until `completer` finishes, which happens after the last use below.
    let data = unsafe { payload.get() };
    let staged = match stage(&data) {
        Err(e) => return completer.finish(Err(e)),
        Ok(Staging::Present) => return completer.finish(Ok(0)),
        Ok(Staging::Write(s)) => s,
    };
    let item = InFlight {
        staged,
        payload,
        completer,
    };
    PIPE.with(|cell| {
        let mut guard = cell.borrow_mut();
        let pipe = guard.get_or_insert_with(|| Pipe {
            ring: WriteRing::new().ok(),
            pending: None,
        });
        let Some(ring) = pipe.ring.as_mut() else {
            return item.complete(None);
        };
        let previous = pipe.pending.take().map(|p| {
            let written = ring.wait();
            (p, written)
        });
        let segments = item.staged.segments(&data);
        let fd = item.staged.temp().file().as_raw_fd();
        // More iovecs than one writev takes go to `pwritev_all`, which splits them.
        let submitted = if segments.len() > libc::UIO_MAXIOV as usize {
            Err(io::Error::from_raw_os_error(libc::EINVAL))
        } else {
            // SAFETY: the file and the staging buffer belong to `item.staged`, and the
            // payload stays valid until `item.completer` finishes; `item` is kept in
            // `pipe.pending` until the ring has reaped this write (`flush`, the next call, or
            // the ring's drop, which happens before `pending`'s).
            unsafe { ring.submit_writev(fd, &segments, 0) }
        };
        drop(segments);
        match submitted {
            Ok(()) => pipe.pending = Some(item),
            Err(_) => item.complete(None),
        }
        if let Some((p, written)) = previous {
            p.complete(Some(written));
        }
    })
}

/// Finishes this thread's write in flight, if any (the writer pool's idle hook).
pub(super) fn flush() {
    PIPE.with(|cell| {
        let Ok(mut guard) = cell.try_borrow_mut() else {
            return;
        };
        if let Some(pipe) = guard.as_mut() {
            if let (Some(p), Some(ring)) = (pipe.pending.take(), pipe.ring.as_mut()) {
                let written = ring.wait();
                p.complete(Some(written));
            }
        }
    })
}

impl InFlight {
    /// Completes the item after its ring write (`Some(result)`) or, for `None`, writes it
    /// synchronously first; then publishes it. A short or interrupted ring write is redone
    /// whole with `pwritev`.
    fn complete(self, written: Option<io::Result<usize>>) {
        let InFlight {
            staged,
            payload,
            completer,
        } = self;
        // SAFETY: valid until `completer` finishes, below.
        let data = unsafe { payload.get() };
        let wrote = match written {
            Some(Ok(n)) if n == staged.write_len() => Ok(()),
            Some(Err(e)) if !matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN)) => {
                Err(Error::io(format!("writing {}", staged.describe()), e))
            }
            _ => staged.write_sync(&data),
        };
        let result = wrote.and_then(|()| staged.finish()).map(|s| match s {
            Stored::Written => payload.len() as u64,
            Stored::AlreadyPresent => 0,
        });
        completer.finish(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{FsConfig, FsStore, Key};
    use crate::io::Job;

    fn payloads(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![i as u8 + 1; 5000 + i]).collect()
    }

    fn item(p: &[u8]) -> Payload {
        Payload {
            segments: vec![RawSegment {
                ptr: p.as_ptr().cast_mut(),
                len: p.len(),
            }],
        }
    }

    fn check_loads(s: &FsStore, data: &[Vec<u8>]) {
        for (i, d) in data.iter().enumerate() {
            let mut out = vec![0u8; d.len()];
            s.load(&Key([i as u8 + 1; 16]), &mut out).unwrap();
            assert!(out == *d, "block {i}");
        }
    }

    /// On this thread: each store completes the previous item, `flush` the last one.
    #[test]
    fn each_store_finishes_the_previous_write_and_flush_the_last() {
        let d = tempfile::tempdir().unwrap();
        let s = FsStore::open(&FsConfig::new(d.path(), "ns")).unwrap();
        PIPE.with(|p| *p.borrow_mut() = None);
        let data = payloads(3);
        let (job, completers) = Job::new(3);
        let uring = WriteRing::new().is_ok();
        for (i, (c, d)) in completers.into_iter().zip(&data).enumerate() {
            let key = Key([i as u8 + 1; 16]);
            // SAFETY: `data` outlives the job, which is finished below.
            unsafe { store(|d| s.inner.stage(&key.0, d, None), item(d), c) };
            // With io_uring the newest item is still in flight; without, it is done.
            let expected_done = if uring { i } else { i + 1 };
            assert_eq!(job.poll().done, expected_done, "after item {i}");
        }
        flush();
        let p = job.wait(Some(std::time::Duration::from_secs(10))).unwrap();
        assert_eq!((p.done, p.failed), (3, 0));
        for (i, d) in data.iter().enumerate() {
            assert_eq!(job.item(i).unwrap(), d.len() as u64);
        }
        check_loads(&s, &data);
        flush(); // nothing in flight: a no-op
    }

    /// Where io_uring is unavailable (no ring), items are written synchronously.
    #[test]
    fn without_a_ring_items_are_written_synchronously() {
        let d = tempfile::tempdir().unwrap();
        let s = FsStore::open(&FsConfig::new(d.path(), "ns")).unwrap();
        PIPE.with(|p| {
            *p.borrow_mut() = Some(Pipe {
                ring: None,
                pending: None,
            })
        });
        let data = payloads(2);
        let (job, completers) = Job::new(2);
        for (i, (c, d)) in completers.into_iter().zip(&data).enumerate() {
            let key = Key([i as u8 + 1; 16]);
            // SAFETY: `data` outlives the job.
            unsafe { store(|d| s.inner.stage(&key.0, d, None), item(d), c) };
            assert_eq!(job.poll().done, i + 1);
        }
        assert_eq!(job.poll().failed, 0);
        check_loads(&s, &data);
        PIPE.with(|p| *p.borrow_mut() = None);
    }
}
