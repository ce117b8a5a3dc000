//! Who is still writing: one lock file per writing store handle, instead of one `flock` per
//! named temp file.
//!
//! Where the file system has no `O_TMPFILE` (FUSE mounts, NFS), a block is written into a
//! named temp file first, and a cleaner (another process, another host) must tell a live
//! writer's temp file from a dead one's. Locking each temp file says so, but costs a `flock`
//! and an `fstat` per block: two network round trips on FUSE. Instead, a store that writes
//! named temp files takes one lock file, `<store dir>/.writers/<id>` (`id`: 64 random bits,
//! 16 hex digits), and holds its `flock` until it closes; its temp files carry the id in
//! their names. A cleaner that meets a temp file of writer `id` removes it only when
//! `.writers/<id>` is gone or can be locked (the kernel drops a killed holder's lock).
//!
//! A lock file is made under a pending name, locked, then renamed into place, so that the
//! name `<id>` is never seen unlocked while its writer lives; a cleaner that removes a
//! pending file before it is locked makes the rename fail, and the writer starts over.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::path::parse_writer_id;
use crate::io::file::{same_inode, OpenNoFollow};
use crate::io::lock::{try_lock, LockMode};
use crate::{err, Error, Result};

/// The directory under a store's directory that holds its writers' lock files.
pub const WRITERS_DIR: &str = ".writers";

/// Name prefix of a lock file not yet locked and renamed into place.
const PENDING_PREFIX: &str = ".pending.";

/// A writing store's lock file, held (`flock`ed) while the store is open; removed on drop.
pub(super) struct WriterLock {
    id: u64,
    path: PathBuf,
    file: File,
}

impl WriterLock {
    /// Makes and locks a new lock file under `store_dir/.writers`.
    pub(super) fn acquire(store_dir: &Path) -> Result<WriterLock> {
        let dir = store_dir.join(WRITERS_DIR);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(format!("creating {}", dir.display()), e)),
        }
        for _ in 0..16 {
            let id = random_id()?;
            let pending = dir.join(format!("{PENDING_PREFIX}{id:016x}"));
            let file = match OpenNoFollow::read_write().create_new(0o644).open(&pending) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(format!("creating {}", pending.display()), e)),
            };
            // A cleaner that took the fresh file for abandoned holds (or held) its lock:
            // start over (it removes the file).
            if !try_lock(&file, LockMode::Exclusive)
                .map_err(|e| Error::io(format!("locking {}", pending.display()), e))?
            {
                continue;
            }
            let path = dir.join(format!("{id:016x}"));
            match std::fs::rename(&pending, &path) {
                Ok(()) => return Ok(WriterLock { id, path, file }),
                // Removed by a cleaner between create and lock: ours is an orphan inode.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    let _ = std::fs::remove_file(&pending);
                    return Err(Error::io(format!("renaming {}", pending.display()), e));
                }
            }
        }
        Err(err!(
            Io,
            "could not create a writer lock file in {} after 16 attempts",
            dir.display()
        ))
    }

    /// The id the writer's temp file names carry.
    pub(super) fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        // Still locked while it goes: no cleaner can take it for a dead writer's and remove
        // a successor's file of the same name (ids are random, but never trust that).
        if same_inode(&self.file, &self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// 64 random bits from the kernel.
fn random_id() -> Result<u64> {
    let mut b = [0u8; 8];
    loop {
        // SAFETY: `b` is a writable buffer of the length passed.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        if n == b.len() as isize {
            return Ok(u64::from_le_bytes(b));
        }
        let e = io::Error::last_os_error();
        if n < 0 && e.raw_os_error() != Some(libc::EINTR) {
            return Err(Error::io("getrandom for a writer id", e));
        }
    }
}

/// Whether writers are alive, asked once per writer for one cleaning pass of a store.
pub(super) struct Liveness {
    dir: PathBuf,
    known: HashMap<u64, bool>,
}

impl Liveness {
    /// For the store at `store_dir`.
    pub(super) fn new(store_dir: &Path) -> Liveness {
        Liveness {
            dir: store_dir.join(WRITERS_DIR),
            known: HashMap::new(),
        }
    }

    /// Whether writer `id` holds its lock file. A missing lock file means a dead writer
    /// (temp files are only made once it is in place); an unreadable one counts as live
    /// (leaving a temp file is always safe).
    pub(super) fn is_alive(&mut self, id: u64) -> bool {
        let dir = &self.dir;
        *self.known.entry(id).or_insert_with(|| {
            match OpenNoFollow::read_only().open(&dir.join(format!("{id:016x}"))) {
                Ok(f) => !matches!(try_lock(&f, LockMode::Exclusive), Ok(true)),
                Err(e) => e.kind() != io::ErrorKind::NotFound,
            }
        })
    }
}

/// Removes the lock files (and pending ones) of dead writers under `store_dir/.writers`;
/// returns how many went. Their temp files need not be gone first: a temp file whose
/// writer's lock file is missing is a dead writer's too.
pub(super) fn remove_dead_writers(store_dir: &Path) -> usize {
    let dir = store_dir.join(WRITERS_DIR);
    crate::io::publish::remove_abandoned(&dir, |name| {
        parse_writer_id(name).is_some()
            || name
                .strip_prefix(PENDING_PREFIX)
                .is_some_and(|id| parse_writer_id(id).is_some())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_writers_are_seen_and_dead_ones_cleaned() {
        let d = tempfile::tempdir().unwrap();
        let a = WriterLock::acquire(d.path()).unwrap();
        let b = WriterLock::acquire(d.path()).unwrap();
        assert_ne!(a.id(), b.id());
        let lock_path =
            |w: &WriterLock| d.path().join(WRITERS_DIR).join(format!("{:016x}", w.id()));
        assert!(lock_path(&a).is_file());
        let mut l = Liveness::new(d.path());
        assert!(l.is_alive(a.id()) && l.is_alive(b.id()));
        assert!(!l.is_alive(0x1234), "no lock file: dead");
        assert_eq!(remove_dead_writers(d.path()), 0, "both alive");

        // What a killed writer leaves: its lock file, no longer locked by anyone.
        let a_id = 0xdead_0000_0000_0001u64;
        let a_path = d.path().join(WRITERS_DIR).join(format!("{a_id:016x}"));
        std::fs::write(&a_path, b"").unwrap();
        assert!(!Liveness::new(d.path()).is_alive(a_id));
        drop(a);
        std::fs::write(
            d.path().join(WRITERS_DIR).join(".pending.00000000000000ff"),
            b"",
        )
        .unwrap();
        std::fs::write(d.path().join(WRITERS_DIR).join("notes"), b"").unwrap();
        assert_eq!(
            remove_dead_writers(d.path()),
            2,
            "the dead lock file and the pending one"
        );
        assert!(!a_path.exists());
        assert!(
            d.path().join(WRITERS_DIR).join("notes").exists(),
            "not ours"
        );

        let b_path = lock_path(&b);
        drop(b);
        assert!(!b_path.exists(), "a closed writer removes its lock file");
    }
}
