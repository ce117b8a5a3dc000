//! Loading a block: open, read (in place where O_DIRECT allows, scattered over the caller's
//! segments), validate length, whole key and checksum; a bad file is removed (if it is still
//! the one read) and reported `Corrupt`. A file that holds another key of the same name (a
//! name collision) is kept and reported `NotFound`: its bytes are never returned.

use std::fs::File;
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::format::{self, Header};
use super::in_place::{is_unpublished, is_unpublished_file};
use super::{path, Inner, Key, WriteMode};
use crate::io::direct::scatter;
use crate::io::file::{
    check_regular, describe_type, is_not_regular, non_regular_entry, remove_non_regular,
    same_inode, OpenNoFollow,
};
use crate::io::vectored::{preadv_all, preadv_once};
use crate::io::{align_up, is_aligned_ptr, SegmentPlan, IO_ALIGN};
use crate::{err, Error, ErrorKind, Result};

/// How recently a block file written in place on a network file system must have changed
/// for a failed validation to leave it in place (see `Inner::load_untimed`).
const RECENT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether `file` changed (was created, written or published) within [`RECENT`] and looks
/// shorter than a block of `payload_len` bytes (header page included), as this host sees it.
fn recently_changed_and_short(file: &File, payload_len: usize) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = file.metadata() else { return true };
    if m.len() >= (payload_len + IO_ALIGN) as u64 {
        return false;
    }
    let changed = std::time::UNIX_EPOCH + std::time::Duration::new(m.ctime().max(0) as u64, 0);
    std::time::SystemTime::now()
        .duration_since(changed)
        .map_or(true, |age| age < RECENT)
}

impl Inner {
    /// Loads the block of the whole engine `key` into the concatenation of `dst`'s segments.
    pub(super) fn load(&self, key: &[u8], dst: &mut [&mut [u8]]) -> Result<u64> {
        let started = Instant::now();
        let r = self.load_untimed(key, dst);
        self.latency.load.record_since(started);
        r
    }

    fn load_untimed(&self, key: &[u8], dst: &mut [&mut [u8]]) -> Result<u64> {
        crate::key::check_key(key)?;
        let name = self.name(key);
        let p = path::block_path(&self.dir, &name);
        let len = crate::io::vectored::payload_len_mut(dst)
            .map_err(|e| e.context(format!("loading block {}", p.display())))?;
        let missing = || -> Result<u64> {
            self.counters.misses.fetch_add(1, Relaxed);
            self.lock_index().remove(&name);
            Err(err!(NotFound, "block {name} not found ({})", p.display()))
        };
        // Read with plain preadv only (O_NONBLOCK can stay: no fcntl), and no fstat: the
        // read itself tells the size of a well-formed block (`read_verified`).
        let how = OpenNoFollow::read_only().direct(self.direct);
        let file = match how.open_unchecked(&p) {
            Ok(f) => f,
            Err(e) if vanished(&e) => return missing(),
            // Mode 0 keeps all but root out of a block still being written in place.
            Err(e)
                if e.kind() == io::ErrorKind::PermissionDenied
                    && std::fs::symlink_metadata(&p).is_ok_and(|m| is_unpublished(&m)) =>
            {
                return missing()
            }
            Err(e) if is_not_regular(&e) => {
                // Planted or left by someone else (a FIFO, a symlink, a directory): never
                // read or waited on; removed unless it is a directory.
                let what =
                    non_regular_entry(&p).map_or_else(|| e.to_string(), |m| describe_type(&m));
                let removed = remove_non_regular(&p);
                self.lock_index().remove(&name);
                self.counters.corrupt.fetch_add(1, Relaxed);
                self.counters.misses.fetch_add(1, Relaxed);
                let fate = if removed { "removed" } else { "left in place" };
                return Err(err!(
                    Corrupt,
                    "block path {} holds {what}, not a block file ({fate})",
                    p.display()
                ));
            }
            Err(e) => return Err(Error::io(format!("opening block {}", p.display()), e)),
        };
        let read = self.read_verified(&file, key, &name, dst, len);
        // A file still being written in place (or left so by a killed writer) is no block,
        // whether or not what it holds so far reads as one: a miss, left to its writer (or
        // to the cleaners). Asked where such files are written or the read proves nothing,
        // and after a read that found the file damaged; after the read, so that a client
        // cache refreshed by it answers (GlusterFS's md-cache), and of this host's cached
        // attributes first (a published file stays so: no round trip then).
        let asks = match &read {
            Ok(()) => self.write_mode == WriteMode::InPlace || !self.verify,
            Err(e) => e.kind() == ErrorKind::Corrupt,
        };
        if asks && is_unpublished_file(&file) {
            return missing();
        }
        match read {
            Ok(()) => {
                self.counters.hits.fetch_add(1, Relaxed);
                self.counters.bytes_read.fetch_add(len as u64, Relaxed);
                self.lock_index().touch(&name);
                Ok(len as u64)
            }
            Err(e) if e.kind() == ErrorKind::Corrupt && !is_regular(&file) => {
                // A FIFO or directory planted at the name (opened unchecked): as above.
                let removed = remove_non_regular(&p);
                self.lock_index().remove(&name);
                self.counters.corrupt.fetch_add(1, Relaxed);
                self.counters.misses.fetch_add(1, Relaxed);
                let fate = if removed { "removed" } else { "left in place" };
                Err(err!(
                    Corrupt,
                    "block path {} holds {}, not a block file ({fate})",
                    p.display(),
                    file.metadata()
                        .map_or_else(|e| e.to_string(), |m| describe_type(&m))
                ))
            }
            Err(e)
                if e.kind() == ErrorKind::Corrupt
                    && self.write_mode == WriteMode::InPlace
                    && self.network
                    && recently_changed_and_short(&file, len) =>
            {
                // Published seconds ago and shorter than its block: this host's client caches
                // may still hold the size they saw of it unpublished, so the read may have met
                // a stale view, not a bad file. Reported, kept; a later load removes it if it
                // is bad.
                self.counters.misses.fetch_add(1, Relaxed);
                Err(e.context(format!(
                    "block {} fails validation (left in place: written within the last {} s, \
                     this host's view of it may lag)",
                    p.display(),
                    RECENT.as_secs()
                )))
            }
            Err(e) if e.kind() == ErrorKind::Corrupt => {
                // Only remove the file we read, not one a writer has renamed over it since.
                if same_inode(&file, &p) {
                    let _ = std::fs::remove_file(&p);
                }
                self.lock_index().remove(&name);
                self.counters.corrupt.fetch_add(1, Relaxed);
                self.counters.misses.fetch_add(1, Relaxed);
                log::warn!(target: "kvr::fs", "dropped corrupt block {}: {e}", p.display());
                Err(e.context(format!("block {} is corrupt and was removed", p.display())))
            }
            // Removed (by gc, eviction or another host) after our open: on file systems that
            // defer the real open to the first read (GlusterFS's open-behind) or whose
            // handles go stale when the name goes (NFS), the read fails instead. A miss.
            Err(e) if e.os_error().is_some_and(vanished) => missing(),
            Err(e) => {
                self.counters.misses.fetch_add(1, Relaxed);
                Err(e.context(format!("loading block {}", p.display())))
            }
        }
    }

    /// Reads and validates a block into `dst`'s segments (`len` bytes in all). `Corrupt` for
    /// a damaged file or one that is no regular file, `LayoutMismatch` for an intact block
    /// whose payload length is not `len`, `NotFound` for a block of another key that has the
    /// same name.
    ///
    /// The common case takes one `preadv` and no `fstat`: [header page | segments | bounce
    /// area | one spare page]. A block file of the expected shape ends inside that request,
    /// so the bytes one `preadv` returns are the file's size; anything else (a bigger
    /// header, a longer file, not a regular file) takes the general path, which asks for
    /// the size.
    fn read_verified(
        &self,
        file: &File,
        key: &[u8],
        name: &Key,
        dst: &mut [&mut [u8]],
        len: usize,
    ) -> Result<()> {
        let io_err = |what: &str, e: io::Error| Error::io(what.to_string(), e);
        // An unaligned first segment under O_DIRECT would be bounced whole: the general path
        // below does that in one read whatever the header's size.
        let aligned_dst = !self.direct || is_aligned_ptr(dst[0].as_ptr());
        if aligned_dst {
            let plan = SegmentPlan::of_mut(self.direct, dst);
            // One bounce buffer holds the header page, the bounce area and the spare page.
            let mut b = self.bounce.get(IO_ALIGN + plan.bounce_len + IO_ALIGN)?;
            let (hb, rest) = b.as_mut_slice().split_at_mut(IO_ALIGN);
            let (tail, spare) = rest.split_at_mut(plan.bounce_len);
            let spare = &mut spare[..IO_ALIGN];
            let got = {
                let mut parts: Vec<&mut [u8]> = Vec::with_capacity(dst.len() + 3);
                parts.push(&mut hb[..]);
                parts.extend(plan.in_place_parts_mut(dst));
                parts.push(&mut tail[..]);
                parts.push(&mut spare[..]);
                // One call: a block of the expected shape ends before the spare page, so
                // a short count is its size (a second call to see end of file would be
                // one more network round trip on FUSE). Any other count: general path.
                match preadv_once(file, &mut parts, 0) {
                    Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
                        return Err(err!(Corrupt, "not a regular file (a directory)"))
                    }
                    r => r.map_err(|e| io_err("reading", e))?,
                }
            };
            let size = got as u64;
            let prefix: Option<[u8; 8]> = hb.get(..8).and_then(|p| p.try_into().ok());
            let page_header = prefix.is_some_and(|p| format::header_len(&p).ok() == Some(IO_ALIGN));
            if size == (IO_ALIGN + len) as u64 && page_header {
                let header = format::decode_header(hb)?;
                self.check(&header, key, name, size, len)?;
                plan.drain_bounce(tail, dst);
                return self.verify_sum(&header, dst);
            }
            // Another shape (or garbage): take the general path below.
        }
        // General path: check what the file is, then read it whole (bounded) into a bounce
        // buffer.
        let meta = file.metadata().map_err(|e| io_err("stat", e))?;
        check_regular(&meta).map_err(|e| err!(Corrupt, "{e}"))?;
        let size = meta.len();
        let want = (size as usize).min(len + format::MAX_HEADER);
        let cap = align_up(want.max(8));
        let mut b = self.bounce.get(cap)?;
        let got = preadv_all(file, &mut [&mut b.as_mut_slice()[..cap]], 0)
            .map_err(|e| io_err("reading", e))?;
        let bytes = &b.as_slice()[..got.min(want)];
        let header = format::decode_header(bytes)?;
        self.check(&header, key, name, size, len)?;
        if got as u64 != size {
            return Err(err!(Corrupt, "short read: {got} of {size} bytes"));
        }
        scatter(&bytes[header.data_offset..header.data_offset + len], dst);
        self.verify_sum(&header, dst)
    }

    fn check(&self, h: &Header, key: &[u8], name: &Key, size: u64, len: usize) -> Result<()> {
        if h.key != key {
            let shown = crate::key::Key::display_bytes(&h.key);
            if self.name(&h.key) == *name {
                // Another key of the same name: its block, intact; never ours.
                return Err(err!(
                    NotFound,
                    "the block named {name} holds another key ({shown}): a name collision"
                ));
            }
            return Err(err!(
                Corrupt,
                "header holds key {shown} instead of {}",
                crate::key::Key::display_bytes(key)
            ));
        }
        let expect = h.data_offset as u64 + h.payload_len;
        if size != expect {
            return Err(err!(
                Corrupt,
                "file is {size} bytes, header says {expect} ({} + {} payload)",
                h.data_offset,
                h.payload_len
            ));
        }
        if h.payload_len != len as u64 {
            return Err(err!(
                LayoutMismatch,
                "block holds {} payload bytes, the caller's buffer is {len} bytes",
                h.payload_len
            ));
        }
        Ok(())
    }

    fn verify_sum(&self, h: &Header, payload: &[&mut [u8]]) -> Result<()> {
        if self.verify {
            let parts: Vec<&[u8]> = payload.iter().map(|s| &s[..]).collect();
            let sum = format::checksum_segments(&parts);
            if sum != h.checksum {
                return Err(err!(
                    Corrupt,
                    "checksum mismatch: xxh3-64 of the payload is {sum:016x}, header says {:016x}",
                    h.checksum
                ));
            }
        }
        Ok(())
    }
}

/// Whether an I/O error means the block file is gone: `ENOENT`, or `ESTALE` (the handle of a
/// file another host removed, on GlusterFS and NFS).
fn vanished(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESTALE)
}

/// Whether an open file is a regular file (an unreadable one counts as regular: its error is
/// reported as it is).
fn is_regular(file: &File) -> bool {
    file.metadata().map_or(true, |m| m.is_file())
}

#[cfg(test)]
mod tests {
    use crate::fs::{FsConfig, FsStore, Key, Stored};
    use crate::io::{AlignedBuf, DirectIo};
    use crate::ErrorKind;

    /// The one-`preadv` fast path learns the size from the read: a file longer or shorter
    /// than its header says is still corrupt, with and without O_DIRECT, and a block stored
    /// by another store of the same directory (unknown to this one's index) deduplicates.
    #[test]
    fn sizes_found_by_the_read_still_catch_longer_and_shorter_files() {
        for direct in [DirectIo::Off, DirectIo::Auto] {
            let d = tempfile::tempdir().unwrap();
            let mut c = FsConfig::new(d.path(), "ns");
            c.direct_io = direct;
            let s = FsStore::open(&c).unwrap();
            let mut data = AlignedBuf::new(64 << 10).unwrap();
            data.as_mut_slice().fill(7);
            let mut out = AlignedBuf::new(64 << 10).unwrap();
            for (i, extra) in [1i64, 4096, 8192, -1, -4096].into_iter().enumerate() {
                let k = Key([i as u8 + 1; 16]);
                assert_eq!(s.store(&k, data.as_slice()).unwrap(), Stored::Written);
                assert_eq!(s.load(&k, out.as_mut_slice()).unwrap(), 64 << 10);
                let p = s.block_path(&k);
                let len = std::fs::metadata(&p).unwrap().len();
                let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
                f.set_len((len as i64 + extra) as u64).unwrap();
                drop(f);
                let e = s.load(&k, out.as_mut_slice()).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::Corrupt, "{extra:+} bytes: {e}");
                assert!(!p.exists(), "a corrupt block is removed");
            }
            let k = Key([9; 16]);
            let other = FsStore::open(&c).unwrap();
            assert_eq!(other.store(&k, data.as_slice()).unwrap(), Stored::Written);
            assert_eq!(
                s.store(&k, data.as_slice()).unwrap(),
                Stored::AlreadyPresent
            );
            assert_eq!(s.stats().dedup_hits, 1);
        }
    }
}
