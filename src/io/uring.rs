//! One asynchronous positional write at a time on a private io_uring: a thread submits a
//! write, does other work (the next block's metadata) while the device is busy, then reaps
//! it. Where io_uring is unavailable (old kernel, seccomp, `io_uring_disabled`) creating the
//! ring fails and callers write synchronously instead.

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, types, IoUring};

/// A private ring for one write in flight.
pub struct WriteRing {
    ring: IoUring,
    /// The iovec array of the write in flight: the kernel may read it until submission has
    /// consumed the entry (before `IORING_FEAT_SUBMIT_STABLE`, until completion), so it lives
    /// here rather than on a caller's stack.
    iov: Vec<libc::iovec>,
    in_flight: bool,
}

// SAFETY: the iovec array only holds pointers into buffers whose validity the submitter
// guarantees (see `submit_writev`); moving the ring to another thread changes nothing there.
unsafe impl Send for WriteRing {}

impl WriteRing {
    /// A ring with room for a few entries; fails where io_uring is not available.
    pub fn new() -> io::Result<Self> {
        Ok(WriteRing {
            ring: IoUring::new(4)?,
            iov: Vec::with_capacity(4),
            in_flight: false,
        })
    }

    /// Whether a submitted write has not been reaped yet.
    #[cfg(test)]
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// Submits `pwritev(fd, segments, offset)`; empty segments are skipped. Fails only when
    /// a write is already in flight or the entry cannot be queued; the write's own error
    /// comes from [`WriteRing::wait`].
    ///
    /// # Safety
    /// `fd` and every segment's memory must stay valid, and the memory unmodified, until
    /// [`WriteRing::wait`] has returned for this write (dropping the ring waits too).
    pub unsafe fn submit_writev(
        &mut self,
        fd: RawFd,
        segments: &[&[u8]],
        offset: u64,
    ) -> io::Result<()> {
        if self.in_flight {
            return Err(io::Error::other(
                "a write is already in flight on this ring",
            ));
        }
        self.iov.clear();
        self.iov.extend(
            segments
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| libc::iovec {
                    iov_base: s.as_ptr() as *mut libc::c_void,
                    iov_len: s.len(),
                }),
        );
        let entry = opcode::Writev::new(types::Fd(fd), self.iov.as_ptr(), self.iov.len() as u32)
            .offset(offset)
            .build();
        // SAFETY: the entry points at `self.iov`, which is not touched until the write is
        // reaped; the buffers it names are the caller's to keep valid (this function's
        // contract).
        unsafe {
            self.ring
                .submission()
                .push(&entry)
                .map_err(|_| io::Error::other("io_uring submission queue is full"))?;
        }
        // In flight from the push on. A failed `submit` (EAGAIN, EBUSY, EINTR: transient)
        // leaves the entry queued, and `wait` submits it again.
        self.in_flight = true;
        let _ = self.ring.submit();
        Ok(())
    }

    /// Waits for the write in flight and returns the bytes it wrote (possibly short).
    pub fn wait(&mut self) -> io::Result<usize> {
        if !self.in_flight {
            return Err(io::Error::other("no write in flight on this ring"));
        }
        loop {
            if let Some(cqe) = self.ring.completion().next() {
                self.in_flight = false;
                let r = cqe.result();
                return if r < 0 {
                    Err(io::Error::from_raw_os_error(-r))
                } else {
                    Ok(r as usize)
                };
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for WriteRing {
    fn drop(&mut self) {
        // Never release the ring (and let callers free buffers) while the kernel may still
        // read from them.
        while self.in_flight {
            if self.wait().is_err() && self.in_flight {
                // The ring itself failed (cannot happen with a valid ring): closing its fd
                // below makes the kernel cancel and finish the request before freeing it.
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::AlignedBuf;
    use std::os::fd::AsRawFd;

    #[test]
    fn vectored_write_round_trip() {
        let mut ring = match WriteRing::new() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("skipped: io_uring unavailable here ({e})");
                return;
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("f")).unwrap();
        let mut a = AlignedBuf::new(4096).unwrap();
        a.as_mut_slice().fill(7);
        // SAFETY: `f`, `a` and the literal outlive the wait below.
        unsafe {
            ring.submit_writev(f.as_raw_fd(), &[a.as_slice(), &[], b"tail"], 10)
                .unwrap();
        }
        assert!(ring.in_flight());
        assert_eq!(ring.wait().unwrap(), 4100);
        assert!(!ring.in_flight());
        assert!(ring.wait().is_err(), "nothing in flight");
        let bytes = std::fs::read(dir.path().join("f")).unwrap();
        assert_eq!(bytes.len(), 4110);
        assert!(bytes[..10].iter().all(|&b| b == 0));
        assert!(bytes[10..4106].iter().all(|&b| b == 7));
        assert_eq!(&bytes[4106..], b"tail");
        // Errors come back as the write's result: a read-only descriptor.
        let ro = std::fs::File::open(dir.path().join("f")).unwrap();
        // SAFETY: as above.
        unsafe { ring.submit_writev(ro.as_raw_fd(), &[b"x"], 0).unwrap() };
        assert_eq!(ring.wait().unwrap_err().raw_os_error(), Some(libc::EBADF));
    }
}
