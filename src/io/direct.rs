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

/// The plan of a vectored transfer: a block's payload as an ordered list of segments (the
/// caller's buffers, gathered on a write and scattered on a read). Generalises
/// [`TransferPlan`] (a list of one segment gives the same plan): with O_DIRECT, the leading
/// segments that are 4096-aligned in address and length move in place, then the whole pages
/// of the next one if its address is aligned; every byte after that goes through one
/// zero-padded bounce area of [`SegmentPlan::bounce_len`] bytes. Buffered I/O moves every
/// segment in place. Pure arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentPlan {
    /// Leading segments moved in place whole.
    pub whole: usize,
    /// Bytes of segment `whole` moved in place after them (a multiple of 4096).
    pub partial: usize,
    /// Bytes of the bounce area (a multiple of 4096; 0 when nothing is bounced).
    pub bounce_len: usize,
    /// Payload bytes moved in place.
    pub in_place: usize,
    /// Payload bytes (the sum of the segment lengths).
    pub len: usize,
}

impl SegmentPlan {
    /// The plan for segments of the given `(address, length)`, with O_DIRECT when `direct`.
    /// The caller has checked that the lengths sum without overflow.
    pub fn new(direct: bool, segments: impl IntoIterator<Item = (*const u8, usize)>) -> Self {
        let mut plan = SegmentPlan {
            whole: 0,
            partial: 0,
            bounce_len: 0,
            in_place: 0,
            len: 0,
        };
        let mut open = true; // still moving segments in place
        for (ptr, len) in segments {
            plan.len += len;
            if !open {
                continue;
            }
            if !direct || (is_aligned_ptr(ptr) && len % IO_ALIGN == 0) {
                plan.whole += 1;
                plan.in_place += len;
                continue;
            }
            if is_aligned_ptr(ptr) {
                plan.partial = align_down(len);
                plan.in_place += plan.partial;
            }
            open = false;
        }
        let bounced = plan.len - plan.in_place;
        plan.bounce_len = if bounced == 0 { 0 } else { align_up(bounced) };
        plan
    }

    /// The plan of `segments`.
    pub fn of(direct: bool, segments: &[&[u8]]) -> Self {
        Self::new(direct, segments.iter().map(|s| (s.as_ptr(), s.len())))
    }

    /// The plan of writable `segments`.
    pub fn of_mut(direct: bool, segments: &[&mut [u8]]) -> Self {
        Self::new(direct, segments.iter().map(|s| (s.as_ptr(), s.len())))
    }

    /// Payload bytes that go through the bounce area.
    pub fn bounced(&self) -> usize {
        self.len - self.in_place
    }

    /// Whether every payload byte moves in place (zero-copy).
    pub fn zero_copy(&self) -> bool {
        self.bounced() == 0
    }

    /// The in-place parts of `segments`, in order (for a write's iovecs).
    pub fn in_place_parts<'a>(&self, segments: &[&'a [u8]]) -> Vec<&'a [u8]> {
        let mut parts: Vec<&'a [u8]> = segments[..self.whole].to_vec();
        if self.partial > 0 {
            parts.push(&segments[self.whole][..self.partial]);
        }
        parts
    }

    /// The in-place parts of writable `segments`, in order (for a read's iovecs).
    pub fn in_place_parts_mut<'s, 'a>(
        &self,
        segments: &'s mut [&'a mut [u8]],
    ) -> Vec<&'s mut [u8]> {
        let (whole, rest) = segments.split_at_mut(self.whole);
        let mut parts: Vec<&'s mut [u8]> = whole.iter_mut().map(|s| &mut s[..]).collect();
        if self.partial > 0 {
            parts.push(&mut rest[0][..self.partial]);
        }
        parts
    }

    /// For a write: gathers the bounced bytes of `segments` to the start of `bounce` (at
    /// least [`SegmentPlan::bounce_len`] bytes) and zeroes the padding up to `bounce_len`.
    pub fn fill_bounce(&self, segments: &[&[u8]], bounce: &mut [u8]) {
        let mut at = 0;
        for (i, s) in segments.iter().enumerate().skip(self.whole) {
            let from = if i == self.whole { self.partial } else { 0 };
            let part = &s[from..];
            bounce[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        debug_assert_eq!(at, self.bounced());
        bounce[at..self.bounce_len].fill(0);
    }

    /// For a read: scatters the bounced bytes from the start of `bounce` into `segments`.
    pub fn drain_bounce(&self, bounce: &[u8], segments: &mut [&mut [u8]]) {
        let mut at = 0;
        for (i, s) in segments.iter_mut().enumerate().skip(self.whole) {
            let from = if i == self.whole { self.partial } else { 0 };
            let part = &mut s[from..];
            let n = part.len();
            part.copy_from_slice(&bounce[at..at + n]);
            at += n;
        }
        debug_assert_eq!(at, self.bounced());
    }
}

/// Copies `src` into the concatenation of `segments` (their lengths sum to `src.len()`).
pub fn scatter(src: &[u8], segments: &mut [&mut [u8]]) {
    let mut at = 0;
    for s in segments.iter_mut() {
        let n = s.len();
        s.copy_from_slice(&src[at..at + n]);
        at += n;
    }
    debug_assert_eq!(at, src.len());
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

    #[test]
    fn segment_plans_match_the_single_buffer_plan_and_gather_scatter() {
        let buf = AlignedBuf::new(8 * IO_ALIGN).unwrap();
        let aligned = buf.as_slice().as_ptr();
        let unaligned = aligned.wrapping_add(1);
        for (direct, p, len) in [
            (false, unaligned, 5000),
            (true, aligned, 8192),
            (true, aligned, 5000),
            (true, aligned, 100),
            (true, unaligned, 5000),
            (true, unaligned, 4096),
        ] {
            let t = TransferPlan::new(direct, p, len);
            let s = SegmentPlan::new(direct, [(p, len)]);
            assert_eq!(
                (s.in_place, s.bounce_len, s.bounced()),
                (t.in_place, t.bounce_len, t.bounced())
            );
        }
        // Aligned segments move in place; the first unaligned one ends the in-place run.
        let a2 = aligned.wrapping_add(2 * IO_ALIGN);
        let s = SegmentPlan::new(true, [(aligned, IO_ALIGN), (a2, 5000), (aligned, 4096)]);
        assert_eq!(
            (s.whole, s.partial, s.in_place, s.bounce_len),
            (1, 4096, 8192, 8192)
        );
        let s = SegmentPlan::new(true, [(aligned, IO_ALIGN), (aligned, IO_ALIGN)]);
        assert!(s.zero_copy());
        let s = SegmentPlan::new(false, [(unaligned, 3), (unaligned, 5)]);
        assert!(s.zero_copy());
        // Gather then scatter round-trips the bounced bytes.
        let data: Vec<u8> = (0..9000).map(|i| i as u8).collect();
        let segs: Vec<&[u8]> = vec![&data[..100], &data[100..9000]];
        let plan = SegmentPlan::of(true, &segs);
        let mut bounce = vec![7u8; plan.bounce_len];
        plan.fill_bounce(&segs, &mut bounce);
        assert_eq!(&bounce[..plan.bounced()], &data[plan.in_place..]);
        assert!(bounce[plan.bounced()..].iter().all(|&b| b == 0));
        let (mut x, mut y) = (vec![0u8; 100], vec![0u8; 8900]);
        let mut out: Vec<&mut [u8]> = vec![&mut x, &mut y];
        plan.drain_bounce(&bounce, &mut out);
        assert_eq!(&x[..], &data[..100]);
        assert_eq!(&y[..], &data[100..]);
        let (mut x, mut y) = (vec![0u8; 10], vec![0u8; 20]);
        scatter(&data[..30], &mut [&mut x, &mut y]);
        assert_eq!((&x[..], &y[..]), (&data[..10], &data[10..30]));
    }
}
