//! Blocks written under their final name (`WriteMode::InPlace`), for file systems without
//! `O_TMPFILE`, where a named temp file costs two more requests per block than writing in
//! place (on a GlusterFS FUSE mount: `LOOKUP`+`LINK` and `UNLINK` against one `SETATTR`).
//!
//! The writer creates the block's file exclusively (`O_CREAT | O_EXCL`) with no permission
//! bits, writes the whole file image (its header naming the writer's lock file, see
//! `writers`), then gives it mode 0644: the `fchmod` publishes it. Until then the file is
//! *unpublished*: no block for loads, lookups, dedup checks, the scan, `inspect` or `verify`;
//! a second writer of the same key meets it at its exclusive create and counts a dedup while
//! the first lives. A dead writer's unpublished file is removed by whoever meets it (the
//! scan at open, `kvr fs gc`, a writer of the same key) once the writer's lock is free; one
//! whose writer cannot be told (killed before its first write landed, or unreadable to this
//! process: mode 0 keeps out all but root) once it is [`UNPUBLISHED_GRACE`] old; a live
//! writer whose file went so finds it unlinked after its `fchmod` and writes it again.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::format;
use super::writers::Liveness;
use crate::io::file::{same_inode, OpenNoFollow};

/// The permission bits that publish a block written in place.
pub(super) const PUBLISHED_MODE: u32 = 0o644;

/// How old an unpublished file whose writer cannot be told must be before a cleaner takes
/// it for abandoned. Its writer names itself in its first write, microseconds after the
/// create; one stalled longer than this loses the file and, seeing it unlinked after its
/// `fchmod`, stores the block again.
pub const UNPUBLISHED_GRACE: Duration = Duration::from_secs(60);

/// Whether `m` is a block file still being written in place (a regular file with no
/// permission bits at all; published blocks have some, whatever the umask).
pub fn is_unpublished(m: &std::fs::Metadata) -> bool {
    is_unpublished_mode(m.mode())
}

/// [`is_unpublished`] of a file's `st_mode` (type and permission bits).
fn is_unpublished_mode(mode: u32) -> bool {
    mode & libc::S_IFMT == libc::S_IFREG && mode & 0o7777 == 0
}

/// Whether `m` is a published block file: a regular file that is not [`is_unpublished`].
pub fn is_published(m: &std::fs::Metadata) -> bool {
    m.is_file() && !is_unpublished(m)
}

/// The permission bits (with the file type) and link count of the open file `f`, as this
/// host last learned them (`fresh` false: `statx` with `AT_STATX_DONT_SYNC`, no round trip
/// on FUSE or NFS, where a plain `fstat` after a read asks the server again, the read having
/// invalidated the atime) or from the file system (`fresh`: `AT_STATX_FORCE_SYNC`).
/// Cached is enough where it decides: an inode's mode only goes from unpublished to
/// published, and a link count read right after this host's own `fchmod` is what that
/// reply said.
pub(super) fn mode_and_links(f: &File, fresh: bool) -> io::Result<(u32, u32)> {
    let sync = if fresh {
        libc::AT_STATX_FORCE_SYNC
    } else {
        libc::AT_STATX_DONT_SYNC
    };
    // SAFETY: `statx` is plain C data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor, an empty NUL-terminated path with AT_EMPTY_PATH (the
    // descriptor itself), and a writable statx buffer.
    let r = unsafe {
        libc::statx(
            f.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | sync,
            libc::STATX_TYPE | libc::STATX_MODE | libc::STATX_NLINK,
            &mut stx,
        )
    };
    if r == 0 {
        return Ok((u32::from(stx.stx_mode), stx.stx_nlink));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::ENOSYS) {
        return Err(e);
    }
    let m = f.metadata()?;
    Ok((m.mode(), m.nlink() as u32))
}

/// Whether the open file `f` is a regular file still unpublished: published as this host
/// last learned it ([`mode_and_links`]) is final; unpublished there (learned before its
/// writer's `fchmod`, maybe) is asked again of the file system.
pub(super) fn is_unpublished_file(f: &File) -> bool {
    let unpublished = |fresh| mode_and_links(f, fresh).is_ok_and(|(m, _)| is_unpublished_mode(m));
    unpublished(false) && unpublished(true)
}

/// A block file being written under its final name; removed on drop unless published.
pub(super) struct InPlaceFile {
    file: File,
    path: PathBuf,
    published: bool,
}

impl InPlaceFile {
    /// Creates `path` exclusively with no permission bits (`AlreadyExists` if the name
    /// exists, whatever it names), opened as `how` says.
    pub(super) fn create(path: &Path, how: OpenNoFollow) -> io::Result<InPlaceFile> {
        Ok(InPlaceFile {
            file: how.create_new(0).open(path)?,
            path: path.to_owned(),
            published: false,
        })
    }

    pub(super) fn file(&self) -> &File {
        &self.file
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Publishes the written file: gives it its permission bits.
    pub(super) fn publish(&mut self) -> io::Result<()> {
        self.file
            .set_permissions(std::fs::Permissions::from_mode(PUBLISHED_MODE))?;
        self.published = true;
        Ok(())
    }
}

impl Drop for InPlaceFile {
    fn drop(&mut self) {
        // Only our own file: a cleaner may have taken it for a dead writer's, and another
        // writer may have created the name anew since.
        if !self.published && same_inode(&self.file, &self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes the unpublished block file at `p` if its writer is dead (see the module docs);
/// returns whether it went. A published or vanished file, or anything else, stays.
pub(super) fn clean_unpublished(p: &Path, live: &mut Liveness) -> bool {
    let f = match OpenNoFollow::read_only().open(p) {
        Ok(f) => f,
        // Mode 0 keeps out all but root: go by the age alone.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return std::fs::symlink_metadata(p)
                .is_ok_and(|m| is_unpublished(&m) && older_than(&m, UNPUBLISHED_GRACE))
                && std::fs::remove_file(p).is_ok();
        }
        Err(_) => return false,
    };
    let Ok(meta) = f.metadata() else { return false };
    if !is_unpublished(&meta) {
        return false;
    }
    let dead = match writer_of(&f) {
        Some(id) => !live.is_alive(id),
        None => older_than(&meta, UNPUBLISHED_GRACE),
    };
    let removed = dead && same_inode(&f, p) && std::fs::remove_file(p).is_ok();
    if removed {
        log::info!(target: "kvr::fs", "removed unpublished block file {} (its writer is gone)", p.display());
    }
    removed
}

/// The writer a block file's header names, if its header is complete and says.
fn writer_of(f: &File) -> Option<u64> {
    let mut prefix = [0u8; 8];
    f.read_exact_at(&mut prefix, 0).ok()?;
    let len = format::header_len(&prefix).ok()?;
    let mut header = vec![0u8; len];
    f.read_exact_at(&mut header, 0).ok()?;
    format::decode_header(&header).ok()?.writer
}

fn older_than(m: &std::fs::Metadata, age: Duration) -> bool {
    let modified = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    SystemTime::now()
        .duration_since(modified)
        .is_ok_and(|a| a > age)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::writers::WriterLock;
    use crate::fs::{format, FsConfig, FsStore, Key, Stored, TensorSpec, WriteMode};
    use crate::ErrorKind;

    fn open(dir: &Path) -> FsStore {
        let mut c = FsConfig::new(dir, "ns");
        c.write_mode = WriteMode::InPlace;
        c.read_threads = 1;
        c.write_threads = 1;
        FsStore::open(&c).unwrap()
    }

    /// Leaves at `k`'s block path what a writer `writer` stopped before its `fchmod` leaves:
    /// the first `written` bytes of the block's file image, no permission bits, modified
    /// `age` ago.
    fn unpublished(s: &FsStore, k: &Key, writer: Option<u64>, written: usize, age: Duration) {
        let payload = vec![7u8; 10_000];
        let sum = format::checksum(&payload);
        let spec = TensorSpec::bytes(payload.len() as u64);
        let mut image = format::encode_header_by(&k.0, payload.len() as u64, sum, &spec, writer);
        image.extend_from_slice(&payload);
        let p = s.block_path(k);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &image[..written]).unwrap();
        let f = File::options().write(true).open(&p).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
        f.set_permissions(std::fs::Permissions::from_mode(0o0))
            .unwrap();
    }

    fn mode_of(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn stores_publish_by_permission_bits() {
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path());
        assert_eq!(s.write_mode(), WriteMode::InPlace);
        assert!(!s.uses_unnamed_temp_files());
        let k = Key([1; 16]);
        assert_eq!(s.store(&k, b"hello").unwrap(), Stored::Written);
        assert_eq!(mode_of(&s.block_path(&k)), PUBLISHED_MODE);
        assert_eq!(s.store(&k, b"hello").unwrap(), Stored::AlreadyPresent);
        let mut out = [0u8; 5];
        assert_eq!(s.load(&k, &mut out).unwrap(), 5);
        assert_eq!(&out, b"hello");
        // Written in place, the header names the writer; any safetensors reader opens it.
        let bytes = std::fs::read(s.block_path(&k)).unwrap();
        let h = format::decode_header(&bytes).unwrap();
        assert!(h.writer.is_some());
        assert_eq!(s.stats().write_mode, WriteMode::InPlace);
    }

    #[test]
    fn a_live_writers_unpublished_file_is_no_block_and_stays() {
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path());
        let other = WriterLock::acquire(s.dir()).unwrap();
        let k = Key([2; 16]);
        let p = s.block_path(&k);
        // Whole (checksum and all) or torn: no block until published.
        // (Each dedup below waits PUBLICATION_WAIT for the file to be published.)
        for written in [4096 + 10_000, 100] {
            unpublished(&s, &k, Some(other.id()), written, Duration::ZERO);
            assert!(!s.contains(&k));
            assert_eq!(s.lookup_prefix(&[k]), 0);
            let mut present = [9u8];
            assert_eq!(s.lookup(&[&k.0], &mut present).unwrap(), 0);
            assert_eq!(present, [0]);
            let mut out = vec![0u8; 10_000];
            let e = s.load(&k, &mut out).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::NotFound, "{written}: {e}");
            assert!(p.exists(), "a load leaves a live writer's file alone");
            // A second writer of the key counts a dedup: the first publishes the same bytes.
            assert_eq!(s.store(&k, &out).unwrap(), Stored::AlreadyPresent);
            assert_eq!(mode_of(&p), 0);
            // Reopening (the scan) leaves it too.
            drop(open(d.path()));
            assert!(p.exists());
            std::fs::remove_file(&p).unwrap();
        }
        assert_eq!(s.stats().corrupt_dropped, 0);
        let summary = crate::fs::maintenance::inspect(d.path(), Some("ns")).unwrap();
        assert_eq!((summary[0].blocks, summary[0].temp_files), (0, 0));
    }

    #[test]
    fn a_dedup_waits_for_the_writer_to_publish() {
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path());
        let other = WriterLock::acquire(s.dir()).unwrap();
        let k = Key([7; 16]);
        let p = s.block_path(&k);
        unpublished(&s, &k, Some(other.id()), 4096 + 10_000, Duration::ZERO);
        let publisher = {
            let p = p.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(PUBLISHED_MODE))
                    .unwrap();
            })
        };
        let payload = vec![7u8; 10_000];
        assert_eq!(s.store(&k, &payload).unwrap(), Stored::AlreadyPresent);
        publisher.join().unwrap();
        // A dedup means a loadable block.
        assert!(s.contains(&k));
        let mut out = vec![0u8; 10_000];
        assert_eq!(s.load(&k, &mut out).unwrap(), 10_000);
        assert!(out == payload);
        assert_eq!(s.stats().dedup_hits, 1);
    }

    #[test]
    fn a_dead_writers_unpublished_file_goes() {
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path());
        let dead = WriterLock::acquire(s.dir()).unwrap();
        let id = dead.id();
        drop(dead);
        let (k1, k2, k3) = (Key([3; 16]), Key([4; 16]), Key([5; 16]));
        unpublished(&s, &k1, Some(id), 4096 + 300, Duration::ZERO);
        unpublished(&s, &k2, Some(id), 4096 + 300, Duration::ZERO);
        unpublished(&s, &k3, Some(id), 4096 + 300, Duration::ZERO);
        let summary = crate::fs::maintenance::inspect(d.path(), Some("ns")).unwrap();
        assert_eq!((summary[0].blocks, summary[0].temp_files), (0, 3));
        let report = crate::fs::maintenance::verify(d.path(), Some("ns"), 1, true).unwrap();
        assert!(report.bad.is_empty() && report.checked == 0, "{report:?}");
        // A writer of the key takes the name over.
        assert_eq!(s.store(&k1, b"fresh").unwrap(), Stored::Written);
        assert_eq!(mode_of(&s.block_path(&k1)), PUBLISHED_MODE);
        // gc removes the dead writer's file; so does the scan at open.
        let gc = crate::fs::maintenance::gc(d.path(), Some("ns"), u64::MAX).unwrap();
        assert_eq!(gc.removed_temp_files, 2);
        assert!(!s.block_path(&k2).exists() && !s.block_path(&k3).exists());
        unpublished(&s, &k2, Some(id), 4096 + 300, Duration::ZERO);
        let reopened = open(d.path());
        assert!(reopened.wait_for_scan(Some(Duration::from_secs(10))));
        assert!(!s.block_path(&k2).exists());
        assert!(s.block_path(&k1).exists(), "a published block stays");
    }

    #[test]
    fn an_unpublished_file_without_a_writer_goes_only_when_old() {
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path());
        let k = Key([6; 16]);
        let p = s.block_path(&k);
        // Killed between its create and its first write: nothing says whose it is.
        unpublished(&s, &k, None, 0, Duration::from_secs(5));
        assert_eq!(s.store(&k, b"x").unwrap(), Stored::AlreadyPresent);
        assert!(p.exists(), "young: its writer may be about to write");
        unpublished(&s, &k, None, 0, UNPUBLISHED_GRACE + Duration::from_secs(60));
        assert_eq!(s.store(&k, b"x").unwrap(), Stored::Written);
        let mut out = [0u8; 1];
        s.load(&k, &mut out).unwrap();
        assert_eq!(out, *b"x");
    }
}
