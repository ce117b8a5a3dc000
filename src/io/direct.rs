//! O_DIRECT: requested mode, a one-time probe of whether a directory's file system takes
//! it, and the plan of a transfer between a caller's buffer and a file opened with it.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::file::{same_inode, OpenNoFollow};
use super::lock::{try_lock, LockMode};
use super::publish::remove_abandoned;
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

/// Name prefix of the probe file [`probe`] creates where unnamed files are unavailable.
pub const PROBE_PREFIX: &str = ".kvr_direct_probe.";

/// Whether files in `dir` can be written and read with O_DIRECT: writes and reads back one
/// aligned page in a scratch file. tmpfs (before 6.6), overlayfs and some NFS mounts fail
/// with EINVAL.
///
/// The scratch file is unnamed (`O_TMPFILE`) where the file system allows, else created
/// under a unique name with `O_CREAT | O_EXCL | O_NOFOLLOW` (a symlink planted there is
/// never followed), `flock`ed while in use and unlinked at the end. Named probe files of
/// killed probers (their `flock` died with them) are removed first.
pub fn probe(dir: &Path) -> bool {
    remove_abandoned(dir, |name| name.starts_with(PROBE_PREFIX));
    let how = OpenNoFollow::read_write().mode(0o600);
    if let Ok(f) = how.open_unnamed(dir) {
        return write_read_direct(&f).is_ok();
    }
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut attempts = 0;
    let (f, path) = loop {
        let path = dir.join(format!(
            "{PROBE_PREFIX}{}.{}",
            std::process::id(),
            SEQ.fetch_add(1, Relaxed)
        ));
        match how.create_new(0o600).open(&path) {
            Ok(f) => break (f, path),
            // Another entry has the name (left by a live process of a reused pid, or
            // planted): take the next one.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempts < 16 => {
                attempts += 1
            }
            Err(_) => return false,
        }
    };
    // Marks the file live for cleaners; a cleaner that locked it first removes the name,
    // which does not matter to the probe.
    let _ = try_lock(&f, LockMode::Exclusive);
    let ok = write_read_direct(&f).is_ok();
    if same_inode(&f, &path) {
        let _ = std::fs::remove_file(&path);
    }
    ok
}

/// Turns O_DIRECT on for `f` (`EINVAL` where the file system has none) and writes and
/// reads back one aligned page.
fn write_read_direct(f: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    // SAFETY: plain syscall on a descriptor `f` keeps open for the call.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, libc::O_DIRECT) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = AlignedBuf::new(IO_ALIGN).map_err(|e| std::io::Error::other(e.to_string()))?;
    f.write_all_at(buf.as_slice(), 0)?;
    f.read_exact_at(buf.as_mut_slice(), 0)
}

/// Resolves `mode` for `dir`: `Ok(true)` to use O_DIRECT. Logs one line when `Auto` falls back.
pub fn resolve(mode: DirectIo, dir: &Path) -> crate::Result<bool> {
    match mode {
        DirectIo::Off => Ok(false),
        DirectIo::On => {
            if probe(dir) {
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
            if !ok {
                eprintln!(
                    "kvr: {} does not support O_DIRECT; using buffered I/O",
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
    fn probe_files_of_dead_probers_go_and_live_ones_stay() {
        let d = tempfile::tempdir().unwrap();
        let dead = d.path().join(format!("{PROBE_PREFIX}1.0"));
        std::fs::write(&dead, b"left by a killed open").unwrap();
        let live = d.path().join(format!("{PROBE_PREFIX}2.0"));
        let held = std::fs::File::create(&live).unwrap();
        assert!(try_lock(&held, LockMode::Exclusive).unwrap());
        let target = d.path().join("target");
        std::fs::write(&target, b"precious").unwrap();
        let planted = d
            .path()
            .join(format!("{PROBE_PREFIX}{}.0", std::process::id()));
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        let _ = probe(d.path());
        assert!(!dead.exists(), "a dead prober's file is removed");
        assert!(live.exists(), "a live prober's file stays");
        assert_eq!(
            std::fs::read(&target).unwrap(),
            b"precious",
            "never followed"
        );
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left.len(),
            2,
            "only the live probe file and the target: {left:?}"
        );
    }

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
