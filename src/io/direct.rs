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
