//! O_DIRECT: requested mode, a one-time probe of whether a directory's file system takes
//! it, and the plan of a transfer between a caller's buffer and a file opened with it.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{align_down, align_up, is_aligned_ptr, AlignedBuf, IO_ALIGN};

/// Requested direct-I/O mode (C: `KVR_DIRECT_IO_AUTO/ON/OFF`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectIo {
    /// Use O_DIRECT if the file system accepts it, else buffered I/O (one log line).
    Auto,
    /// Require O_DIRECT; opening fails with `Unsupported` if the file system rejects it.
    On,
    /// Always buffered I/O through the page cache.
    Off,
}

/// Whether files in `dir` can be written and read with O_DIRECT: writes and reads back one
/// aligned page in a temporary file. tmpfs (before 6.6), overlayfs and some NFS mounts fail
/// with EINVAL.
pub fn probe(dir: &Path) -> bool {
    let path = dir.join(format!(
        ".kvr_direct_probe.{}.{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let result = (|| -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
            .open(&path)?;
        let mut buf = AlignedBuf::new(4096).map_err(|e| std::io::Error::other(e.to_string()))?;
        f.write_all_at(buf.as_slice(), 0)?;
        f.read_exact_at(buf.as_mut_slice(), 0)?;
        Ok(())
    })();
    let _ = std::fs::remove_file(&path);
    result.is_ok()
}

/// Resolves `mode` for `dir`: `Ok(true)` to use O_DIRECT. Logs one line when `Auto` falls back.
pub fn resolve(mode: DirectIo, dir: &Path) -> crate::Result<bool> {
    match mode {
        DirectIo::Off => {
            log::info!(target: "kvr::io", "{}: buffered I/O (direct I/O off)", dir.display());
            Ok(false)
        }
        DirectIo::On => {
            if probe(dir) {
                log::info!(target: "kvr::io", "{}: O_DIRECT (required; probe passed)", dir.display());
                Ok(true)
            } else {
                Err(crate::err!(
                    Unsupported,
                    "direct I/O requested but {} does not support O_DIRECT",
                    dir.display()
                ))
            }
        }
        DirectIo::Auto => {
            let ok = probe(dir);
            if ok {
                log::info!(target: "kvr::io", "{}: O_DIRECT (auto; probe passed)", dir.display());
            } else {
                log::warn!(
                    target: "kvr::io",
                    "{} does not support O_DIRECT; using buffered I/O",
                    dir.display()
                );
            }
            Ok(ok)
        }
    }
}

/// How `len` bytes of a caller's buffer move to or from a file: a leading part in place
/// (O_DIRECT takes the caller's memory when it is 4096-aligned, for whole pages), the rest
/// through a zero-padded, aligned bounce area of [`TransferPlan::bounce_len`] bytes that the
/// caller takes from its pool. Pure arithmetic: planning allocates nothing.
///
/// | I/O      | caller's buffer | in place           | bounced                 |
/// |----------|-----------------|--------------------|-------------------------|
/// | buffered | any             | all                | nothing                 |
/// | direct   | aligned         | whole pages        | the tail, in one page   |
/// | direct   | unaligned       | nothing            | all, padded to a page   |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferPlan {
    /// Bytes at the start of the caller's buffer transferred in place.
    pub in_place: usize,
    /// Bytes of the bounce area (a multiple of 4096; 0 when nothing is bounced).
    pub bounce_len: usize,
    /// The caller's bytes.
    len: usize,
}

impl TransferPlan {
    /// The plan for `len` bytes at `buf`, with O_DIRECT when `direct`.
    pub fn new(direct: bool, buf: *const u8, len: usize) -> Self {
        let in_place = if !direct {
            len
        } else if is_aligned_ptr(buf) {
            align_down(len)
        } else {
            0
        };
        let bounced = len - in_place;
        let bounce_len = if bounced == 0 {
            0
        } else if is_aligned_ptr(buf) {
            IO_ALIGN // only a partial last page is left
        } else {
            align_up(len)
        };
        TransferPlan {
            in_place,
            bounce_len,
            len,
        }
    }

    /// The caller's bytes that go through the bounce area (after [`TransferPlan::in_place`]).
    pub fn bounced(&self) -> usize {
        self.len - self.in_place
    }

    /// For a write: copies the bounced part of `data` to the start of `bounce` (at least
    /// [`TransferPlan::bounce_len`] bytes) and zeroes the padding up to `bounce_len`.
    pub fn fill_bounce(&self, data: &[u8], bounce: &mut [u8]) {
        debug_assert_eq!(data.len(), self.len);
        let n = self.bounced();
        bounce[..n].copy_from_slice(&data[self.in_place..]);
        bounce[n..self.bounce_len].fill(0);
    }

    /// For a read: copies the bounced part from the start of `bounce` to the end of `dst`.
    pub fn drain_bounce(&self, bounce: &[u8], dst: &mut [u8]) {
        debug_assert_eq!(dst.len(), self.len);
        let n = self.bounced();
        dst[self.in_place..].copy_from_slice(&bounce[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_in_place_pages_and_bounces_the_rest() {
        let buf = AlignedBuf::new(3 * IO_ALIGN).unwrap();
        let aligned = buf.as_slice().as_ptr();
        let unaligned = aligned.wrapping_add(1);
        let plan = |direct, p, len| {
            let t = TransferPlan::new(direct, p, len);
            (t.in_place, t.bounced(), t.bounce_len)
        };
        assert_eq!(plan(false, unaligned, 5000), (5000, 0, 0));
        assert_eq!(plan(true, aligned, 8192), (8192, 0, 0));
        assert_eq!(plan(true, aligned, 5000), (4096, 904, 4096));
        assert_eq!(plan(true, aligned, 100), (0, 100, 4096));
        assert_eq!(plan(true, unaligned, 5000), (0, 5000, 8192));
        assert_eq!(plan(true, unaligned, 4096), (0, 4096, 4096));
    }

    #[test]
    fn bounce_round_trip() {
        let buf = AlignedBuf::new(2 * IO_ALIGN).unwrap();
        let data: Vec<u8> = (0..5000).map(|i| i as u8).collect();
        let t = TransferPlan::new(true, buf.as_slice().as_ptr(), data.len());
        let mut bounce = vec![7u8; t.bounce_len];
        t.fill_bounce(&data, &mut bounce);
        assert_eq!(&bounce[..904], &data[4096..]);
        assert!(bounce[904..].iter().all(|&b| b == 0), "padding zeroed");
        let mut back = vec![0u8; data.len()];
        t.drain_bounce(&bounce, &mut back);
        assert_eq!(&back[4096..], &data[4096..]);
        assert!(
            back[..4096].iter().all(|&b| b == 0),
            "in-place part untouched"
        );
    }
}
