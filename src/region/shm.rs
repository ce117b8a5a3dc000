//! The region file: its header, and the create/attach/close protocol.
//!
//! Liveness is decided by the kernel, never by cleanup code. Every process using the region
//! holds an open-file-description (OFD) read lock on byte 0 of the file; the kernel drops it
//! when the process dies, SIGKILL included. OFD locks (rather than `flock`) because
//! `F_OFD_GETLK` can *ask* whether anyone holds a lock without taking one, so a prober never
//! makes a stale file look live to another prober.
//!
//! - A file with no lock holder was left by processes that all died: a creator claims it with
//!   the write lock, unlinks it and builds a fresh one.
//! - A new file is built under a temporary name (space reserved, header written, read lock
//!   taken) and published with `link(2)`, which fails if the name exists: an attacher
//!   never sees a half-built header and two creators never both win.
//! - On close, a process releases its read lock, then tries to take the write lock: it gets
//!   it only if no one holds a lock, and then unlinks the file. Of processes closing at the
//!   same instant, the last to release its read lock finds none left (or an earlier closer
//!   holding the write lock, which unlinks): the last one out always removes the file.
//!   (Converting the read lock in place, instead, fails for every closer while another
//!   closer still holds its own.)
//! - A forked child gives its inherited handles their own descriptions (`region::fork`),
//!   so a parent's lock never outlives the parent's close through the child.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::layout::{Layout, HEADER_LEN};
use crate::io::file::{parent_dir, same_inode, OpenNoFollow};
use crate::io::lock::{
    byte0_locked_by_others as held_by_others, try_lock_byte0, unlock_byte0, LockMode,
};
use crate::io::publish::{sibling_path, TempFile};
use crate::io::space;
use crate::io::vectored::{read_exact_at, write_all_at};
use crate::{err, Error, Result};

const MAGIC: [u8; 8] = *b"KVRREGN\0";
/// Version of the header format; an attacher refuses other versions.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of the header that are covered by its checksum.
const HEADER_BODY: usize = 72;

/// Encodes the header page (little-endian).
///
/// | off | size | field |
/// |----:|-----:|-------|
/// | 0   | 8 | magic `KVRREGN\0` |
/// | 8   | 4 | format version |
/// | 12  | 4 | header length (4096) |
/// | 16  | 8 | num_blocks |
/// | 24  | 8 | cpu_page_size |
/// | 32  | 4 | num_workers |
/// | 36  | 4 | reserved (0) |
/// | 40  | 8 | data offset (4096) |
/// | 48  | 8 | file length |
/// | 56  | 4 | creator pid |
/// | 60  | 4 | reserved (0) |
/// | 64  | 8 | creation time, ns since the Unix epoch |
/// | 72  | 8 | xxh3-64 of bytes 0..72 |
pub fn encode_header(layout: &Layout, creator_pid: u32, created_ns: u64) -> Vec<u8> {
    let mut h = vec![0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    h[16..24].copy_from_slice(&layout.num_blocks.to_le_bytes());
    h[24..32].copy_from_slice(&layout.cpu_page_size.to_le_bytes());
    h[32..36].copy_from_slice(&layout.num_workers.to_le_bytes());
    h[40..48].copy_from_slice(&HEADER_LEN.to_le_bytes());
    h[48..56].copy_from_slice(&layout.file_len().to_le_bytes());
    h[56..60].copy_from_slice(&creator_pid.to_le_bytes());
    h[64..72].copy_from_slice(&created_ns.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&h[..HEADER_BODY]);
    h[72..80].copy_from_slice(&sum.to_le_bytes());
    h
}

/// Decodes and validates a header page; returns the layout it records.
pub fn decode_header(h: &[u8], path: &Path) -> Result<Layout> {
    let corrupt = |why: String| err!(Corrupt, "region file {}: {why}", path.display());
    if h.len() < 80 {
        return Err(corrupt(format!(
            "header is {} bytes, expected {HEADER_LEN}",
            h.len()
        )));
    }
    let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap());
    if h[0..8] != MAGIC {
        return Err(corrupt("not a kvr region (bad magic)".into()));
    }
    if u32_at(8) != FORMAT_VERSION {
        return Err(err!(
            LayoutMismatch,
            "region file {}: format version {} but this kvr reads version {FORMAT_VERSION}",
            path.display(),
            u32_at(8)
        ));
    }
    if u64_at(72) != xxhash_rust::xxh3::xxh3_64(&h[..HEADER_BODY]) {
        return Err(corrupt("header checksum mismatch".into()));
    }
    let layout = Layout::new(u64_at(16), u64_at(24), u32_at(32))
        .map_err(|e| corrupt(format!("invalid layout in header: {e}")))?;
    if u64_at(40) != HEADER_LEN || u64_at(48) != layout.file_len() {
        return Err(corrupt(
            "data offset or file length disagree with the layout".into(),
        ));
    }
    Ok(layout)
}

/// `kvr_<name>.mmap` after validating `name`.
pub fn region_path(dir: &Path, name: &str) -> Result<PathBuf> {
    if name.is_empty() || name.len() > 200 {
        return Err(Error::invalid(format!(
            "region name must be 1..=200 bytes, got {} bytes",
            name.len()
        )));
    }
    if name.contains('/') || name.contains("..") || name.contains('\0') {
        return Err(Error::invalid(format!(
            "region name {name:?} must not contain '/', '..' or NUL"
        )));
    }
    Ok(dir.join(format!("kvr_{name}.mmap")))
}

/// An open, locked region file. Dropping it releases the lock and, if this was the last
/// holder, removes the file.
#[derive(Debug)]
pub struct RegionFile {
    file: File,
    path: PathBuf,
    created: bool,
    /// Close without touching the lock (it belongs to another process too).
    shared_lock: bool,
}

impl RegionFile {
    /// The underlying file (for mapping).
    pub fn file(&self) -> &File {
        &self.file
    }
    /// Where the region lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Whether this handle built the file (as opposed to attaching to an existing one).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Makes dropping this handle only close its descriptor: no lock released, no file
    /// removed. For a handle whose open file description another process shares (see
    /// `region::fork`), whose lock is that process's too.
    pub fn leave_lock_alone(&mut self) {
        self.shared_lock = true;
    }

    /// Opens the region at `path`: attaches to a live one, replaces a stale one (if `create`),
    /// or creates it (if `create`). Without `create`, waits up to `timeout` for a creator.
    pub fn open(path: &Path, layout: &Layout, create: bool, timeout: Duration) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        let mut backoff = Duration::from_micros(200);
        loop {
            match try_open_once(path, layout, create, deadline)? {
                Attempt::Done(f) => return Ok(f),
                Attempt::Retry(why) => {
                    if Instant::now() >= deadline {
                        return Err(err!(
                            Timeout,
                            "region {}: gave up after {} ms: {why}",
                            path.display(),
                            timeout.as_millis()
                        ));
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(20));
                }
                Attempt::RetryNow => {}
            }
        }
    }
}

impl Drop for RegionFile {
    fn drop(&mut self) {
        // Our read lock first, then the write lock, which only a last holder gets (see the
        // module docs). An attacher that finds the file unlocked in between takes it for
        // stale, as it is: every holder has gone.
        if !self.shared_lock
            && unlock_byte0(&self.file).is_ok()
            && matches!(try_lock_byte0(&self.file, LockMode::Exclusive), Ok(true))
            && same_inode(&self.file, &self.path)
        {
            let _ = std::fs::remove_file(&self.path);
        }
        // Closing the descriptor (when `file` drops) releases the write lock.
    }
}

enum Attempt {
    Done(RegionFile),
    /// Wait a little, then try again (bounded by the timeout).
    Retry(String),
    /// A transient race was resolved; try again at once.
    RetryNow,
}

fn try_open_once(path: &Path, layout: &Layout, create: bool, deadline: Instant) -> Result<Attempt> {
    let file = match OpenNoFollow::read_write().open(path) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            if !create {
                return Ok(Attempt::Retry("no creator has published it yet".into()));
            }
            return create_and_publish(path, layout, deadline);
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(err!(
                Permission,
                "region path {} is a symlink; refusing to follow it",
                path.display()
            ));
        }
        Err(e) => {
            return Err(Error::io(
                format!("opening region file {}", path.display()),
                e,
            ))
        }
    };
    let lock_err = |e| Error::io(format!("locking region file {}", path.display()), e);
    if !held_by_others(&file).map_err(lock_err)? {
        // Left by processes that all died: only a creator may replace it.
        if !create {
            return Ok(Attempt::Retry(
                "the existing file is stale (its processes died) and no creator has replaced it"
                    .into(),
            ));
        }
        return replace_stale(file, path).map_err(lock_err);
    }
    if !try_lock_byte0(&file, LockMode::Shared).map_err(lock_err)? {
        // Someone holds the write lock: a creator replacing it or the last holder removing it.
        return Ok(Attempt::Retry(
            "the file is being replaced or removed".into(),
        ));
    }
    if !same_inode(&file, path) {
        return Ok(Attempt::RetryNow); // unlinked or replaced while we waited
    }
    if !held_by_others(&file).map_err(lock_err)? {
        // All other holders died between our probe and our lock: it went stale.
        if !create {
            return Ok(Attempt::Retry("the existing file went stale".into()));
        }
        return replace_stale(file, path).map_err(lock_err);
    }
    let mut header = vec![0u8; HEADER_LEN as usize];
    read_exact_at(&file, &mut header, 0)
        .map_err(|e| Error::io(format!("reading region header {}", path.display()), e))?;
    let found = decode_header(&header, path)?;
    if found != *layout {
        return Err(err!(
            LayoutMismatch,
            "region {} has layout {found}, but this process asked for {layout}",
            path.display()
        ));
    }
    let len = file
        .metadata()
        .map_err(|e| Error::io(format!("stat {}", path.display()), e))?
        .len();
    if len != layout.file_len() {
        return Err(err!(
            Corrupt,
            "region file {} is {len} bytes, header says {}",
            path.display(),
            layout.file_len()
        ));
    }
    Ok(Attempt::Done(RegionFile {
        file,
        path: path.to_owned(),
        created: false,
        shared_lock: false,
    }))
}

fn replace_stale(file: File, path: &Path) -> io::Result<Attempt> {
    if try_lock_byte0(&file, LockMode::Exclusive)? && same_inode(&file, path) {
        std::fs::remove_file(path).or_else(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(e)
            }
        })?;
        log::info!(target: "kvr::region", "removed stale region file {} (its processes died)", path.display());
    }
    Ok(Attempt::RetryNow)
}

fn create_and_publish(path: &Path, layout: &Layout, deadline: Instant) -> Result<Attempt> {
    let dir = parent_dir(path);
    let file_name = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    remove_orphan_temps(dir, &file_name);
    let pid = std::process::id();
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let created = sibling_path(path, format_args!("{pid}.{now_ns}.tmp"))
        .and_then(|tmp| TempFile::create_named(tmp, OpenNoFollow::read_write(), 0o600));
    // From here on the temp file is removed on any failure (when `temp` drops).
    let mut temp = created.map_err(|e| {
        Error::io(
            format!("creating a temp file for region file {}", path.display()),
            e,
        )
    })?;
    let tmp = temp.name().expect("named").to_owned();
    let lock_err = |e| Error::io(format!("locking region file {}", tmp.display()), e);
    if !try_lock_byte0(temp.file(), LockMode::Shared).map_err(lock_err)? {
        return Ok(Attempt::RetryNow);
    }
    let wait = deadline.saturating_duration_since(Instant::now());
    let Some(_turn) = space::take_turn(dir, wait) else {
        return Ok(Attempt::Retry(format!(
            "another process kept the turn to reserve space in {}",
            dir.display()
        )));
    };
    space::reserve_all(
        temp.file(),
        layout.file_len(),
        &format!("region {}", path.display()),
        dir,
    )?;
    let header = encode_header(layout, pid, now_ns);
    write_all_at(temp.file(), &header, 0)
        .map_err(|e| Error::io(format!("writing region header {}", tmp.display()), e))?;
    match temp.link_new(path) {
        Ok(true) => {}
        // Another creator won the race: attach instead.
        Ok(false) => return Ok(Attempt::RetryNow),
        // An orphan cleaner removed our temp: start over.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Attempt::RetryNow),
        Err(e) => {
            return Err(Error::io(
                format!("publishing region file {}", path.display()),
                e,
            ))
        }
    }
    Ok(Attempt::Done(RegionFile {
        // Removes the temporary name; the file lives on under `path`.
        file: temp.into_file(),
        path: path.to_owned(),
        created: true,
        shared_lock: false,
    }))
}

/// A region file found in a directory by [`list`].
#[derive(Debug)]
pub struct RegionEntry {
    /// The region name (file `kvr_<name>.mmap`).
    pub name: String,
    /// Path of the file.
    pub path: PathBuf,
    /// File size in bytes.
    pub size: u64,
    /// The layout its header records, or why it could not be read.
    pub layout: Result<Layout>,
    /// Whether a live process holds the region (its kernel lock is held).
    pub live: bool,
}

/// Lists the kvr region files in `dir` with their layout and whether a live process holds them.
pub fn list(dir: &Path) -> Result<Vec<RegionEntry>> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(name) = file_name
            .strip_prefix("kvr_")
            .and_then(|n| n.strip_suffix(".mmap"))
        else {
            continue;
        };
        let path = entry.path();
        let Ok(file) = OpenNoFollow::read_only().open(&path) else {
            continue;
        };
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut header = vec![0u8; HEADER_LEN as usize];
        let layout = read_exact_at(&file, &mut header, 0)
            .map_err(|e| Error::io(format!("reading header of {}", path.display()), e))
            .and_then(|()| decode_header(&header, &path));
        let live = held_by_others(&file).unwrap_or(false);
        out.push(RegionEntry {
            name: name.to_owned(),
            path,
            size,
            layout,
            live,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes region `name` in `dir`, refusing with `Busy` while a live process holds it.
pub fn remove(dir: &Path, name: &str) -> Result<()> {
    let path = region_path(dir, name)?;
    let file = OpenNoFollow::read_write()
        .open(&path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    // Taking the write lock both proves no one holds it and keeps attachers out while we unlink.
    if !try_lock_byte0(&file, LockMode::Exclusive)
        .map_err(|e| Error::io(format!("locking {}", path.display()), e))?
    {
        return Err(err!(
            Busy,
            "region {} is held by a live process; refusing to remove it",
            path.display()
        ));
    }
    if same_inode(&file, &path) {
        std::fs::remove_file(&path)
            .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
    }
    Ok(())
}

/// Removes temp files of interrupted creators (no lock holder means their creator died).
fn remove_orphan_temps(dir: &Path, file_name: &str) {
    let prefix = format!(".{file_name}.");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(&prefix) && name.ends_with(".tmp")) {
            continue;
        }
        let p = entry.path();
        if let Ok(f) = OpenNoFollow::read_write().open(&p) {
            if matches!(held_by_others(&f), Ok(false)) {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn header_round_trips_and_detects_damage() {
        let layout = Layout::new(10, 4096, 4).unwrap();
        let h = encode_header(&layout, 42, 7);
        assert_eq!(decode_header(&h, Path::new("x")).unwrap(), layout);
        let mut bad = h.clone();
        bad[20] ^= 1;
        assert_eq!(
            decode_header(&bad, Path::new("x")).unwrap_err().kind(),
            ErrorKind::Corrupt
        );
        let mut bad = h;
        bad[0] = b'X';
        assert_eq!(
            decode_header(&bad, Path::new("x")).unwrap_err().kind(),
            ErrorKind::Corrupt
        );
    }

    #[test]
    fn names_are_validated() {
        let d = Path::new("/dev/shm");
        assert_eq!(
            region_path(d, "a").unwrap(),
            Path::new("/dev/shm/kvr_a.mmap")
        );
        for bad in ["", "a/b", "..", "x..y", "a\0b"] {
            assert!(region_path(d, bad).is_err(), "{bad:?}");
        }
        assert!(region_path(d, &"n".repeat(201)).is_err());
    }
}
