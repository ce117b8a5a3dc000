//! The files blocks are written into before they are published: unnamed (`O_TMPFILE`) where
//! the file system supports it, else the block's own file, unpublished (`in_place`), or, as
//! configured, a named temp file named after the writing store's lock file (cleaners skip the
//! files of live writers, see `writers`); and the fan-out directories they are created in.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::in_place::{clean_unpublished, is_unpublished, InPlaceFile};
use super::path::Entry;
use super::writers::Liveness;
use super::{path, Inner, Key, WriteMode};
use crate::io::file::{describe_type, remove_non_regular, OpenNoFollow};
use crate::io::publish::{remove_if_abandoned, TempFile};
use crate::{err, Error, Result};

/// Which of the 256 `<hh>` fan-out directories exist: one bit each, set once created or
/// seen. A stale bit (a directory removed behind the store's back) only costs the `ENOENT`
/// retry in `create_temp`.
#[derive(Default)]
pub(super) struct DirCache([AtomicU64; 4]);

impl DirCache {
    pub(super) fn test(&self, i: usize) -> bool {
        self.0[i / 64].load(Relaxed) & (1 << (i % 64)) != 0
    }

    pub(super) fn set(&self, i: usize) {
        self.0[i / 64].fetch_or(1 << (i % 64), Relaxed);
    }
}

/// The file a block is written into before it is published: an unnamed file (nameless
/// until linked; a failed or crashed writer leaves nothing), a named temp file of a live
/// writer, whose name is removed on drop unless renamed, or the block's own file, created
/// unpublished (`in_place`), removed on drop unless published.
pub(super) enum BlockTemp {
    Temp(TempFile),
    InPlace(InPlaceFile),
}

impl BlockTemp {
    pub(super) fn file(&self) -> &std::fs::File {
        match self {
            BlockTemp::Temp(t) => t.file(),
            BlockTemp::InPlace(f) => f.file(),
        }
    }

    /// Whether the block is written under its final name.
    pub(super) fn is_in_place(&self) -> bool {
        matches!(self, BlockTemp::InPlace(_))
    }

    /// What the file is, for error messages.
    pub(super) fn describe(&self, dest: &Path) -> String {
        match self {
            BlockTemp::Temp(t) => match t.name() {
                None => format!("unnamed block file for {}", dest.display()),
                Some(path) => format!("block temp file {}", path.display()),
            },
            BlockTemp::InPlace(f) => format!("unpublished block file {}", f.path().display()),
        }
    }

    /// Gives the written file its final name; `Ok(false)` when the name exists (another
    /// writer published the same key, i.e. the same content, first) and nothing changed.
    /// An unnamed file is linked in and vanishes when closed if it lost. A named temp file
    /// is hard-linked in, its temp name removed on drop; on file systems without hard
    /// links it is renamed over the name instead (the loser of a race then replaces the
    /// winner's identical file and also reports `Ok(true)`). A file written in place has
    /// its name already and is published by its permission bits.
    pub(super) fn publish(&mut self, dest: &Path) -> io::Result<bool> {
        let t = match self {
            BlockTemp::InPlace(f) => return f.publish().map(|()| true),
            BlockTemp::Temp(t) => t,
        };
        match t.link_new(dest) {
            Err(e)
                if !t.is_unnamed()
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EPERM) | Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
                    ) =>
            {
                t.rename_over(dest)?;
                Ok(true)
            }
            linked => linked,
        }
    }
}

/// How long a store that finds its block being written in place by a live writer waits for
/// it to be published before counting a dedup all the same. Waiting makes a dedup mean a
/// loadable block, as with the other write modes, and refreshes this host's view of the
/// file: a network file system's client caches what it saw of the file unpublished (on
/// GlusterFS for up to a second in the kernel and again in its md-cache), which loads of it
/// would otherwise meet as a torn file.
const PUBLICATION_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// What became of a block file another writer is writing in place.
enum Publication {
    /// Published: a block of this many bytes.
    Published(u64),
    /// Still unpublished after [`PUBLICATION_WAIT`].
    Pending,
    /// Removed, or replaced by something else.
    Gone,
}

/// Polls `path` until the block file there is published, [`PUBLICATION_WAIT`] has passed,
/// or it is gone.
fn wait_for_publication(path: &Path) -> Publication {
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(1);
    while started.elapsed() < PUBLICATION_WAIT {
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(50));
        match std::fs::symlink_metadata(path) {
            Ok(m) if is_unpublished(&m) => {}
            Ok(m) if m.is_file() => return Publication::Published(m.len()),
            _ => return Publication::Gone,
        }
    }
    Publication::Pending
}

/// What creating a block's file found.
pub(super) enum Created {
    /// The file to write the block into.
    File(BlockTemp),
    /// Writing in place: the block exists already (published, or being written by a live
    /// writer, who publishes the same content, but has not within [`PUBLICATION_WAIT`]), of
    /// this many bytes (`None` while unpublished).
    Present(Option<u64>),
}

impl Inner {
    /// Creates the file a block is written into before it is published: an unnamed
    /// `O_TMPFILE` file in the block's directory, a named temp file (below), or the block's
    /// own file, unpublished, as the store's write mode says.
    pub(super) fn create_temp(&self, key: &Key, final_path: &Path) -> Result<Created> {
        let block_dir = final_path.parent().expect("block paths have a parent");
        self.ensure_dir(key, block_dir);
        match self.write_mode {
            WriteMode::InPlace => return self.create_in_place(final_path),
            WriteMode::NamedTemp => {
                return self.create_named_temp(key, block_dir).map(Created::File)
            }
            WriteMode::UnnamedTemp | WriteMode::Auto => {}
        }
        let how = OpenNoFollow::write_only().direct(self.direct).mode(0o644);
        let mut opened = TempFile::create_unnamed(block_dir, how);
        if matches!(&opened, Err(e) if e.kind() == io::ErrorKind::NotFound) {
            std::fs::create_dir_all(block_dir)
                .map_err(|e| Error::io(format!("creating directory {}", block_dir.display()), e))?;
            opened = TempFile::create_unnamed(block_dir, how);
        }
        opened
            .map(|t| Created::File(BlockTemp::Temp(t)))
            .map_err(|e| {
                Error::io(
                    format!("creating an unnamed block file in {}", block_dir.display()),
                    e,
                )
            })
    }

    /// Creates the block's own file, unpublished (see `in_place`). A name that exists is a
    /// published block (a dedup), a live writer's unpublished one (a dedup once published,
    /// or after [`PUBLICATION_WAIT`]: it publishes the same content), a dead writer's
    /// (removed, then created anew), or something planted there (removed unless a
    /// directory, then created anew).
    fn create_in_place(&self, final_path: &Path) -> Result<Created> {
        let how = OpenNoFollow::write_only().direct(self.direct);
        let mut created_dirs = false;
        for _ in 0..8 {
            let e = match InPlaceFile::create(final_path, how) {
                Ok(f) => return Ok(Created::File(BlockTemp::InPlace(f))),
                Err(e) => e,
            };
            match e.kind() {
                io::ErrorKind::NotFound if !created_dirs => {
                    let dir = final_path.parent().expect("block paths have a parent");
                    std::fs::create_dir_all(dir).map_err(|e| {
                        Error::io(format!("creating directory {}", dir.display()), e)
                    })?;
                    created_dirs = true;
                    continue;
                }
                io::ErrorKind::AlreadyExists => {}
                _ => {
                    return Err(Error::io(
                        format!("creating block file {}", final_path.display()),
                        e,
                    ))
                }
            }
            let meta = match std::fs::symlink_metadata(final_path) {
                Ok(m) => m,
                Err(_) => continue, // removed since: try again
            };
            if is_unpublished(&meta) {
                if clean_unpublished(final_path, &mut Liveness::new(&self.dir)) {
                    continue;
                }
                match wait_for_publication(final_path) {
                    Publication::Published(len) => return Ok(Created::Present(Some(len))),
                    Publication::Pending => return Ok(Created::Present(None)),
                    Publication::Gone => continue,
                }
            } else if meta.is_file() {
                return Ok(Created::Present(Some(meta.len())));
            } else if meta.is_dir() || !remove_non_regular(final_path) {
                return Err(err!(
                    Corrupt,
                    "storing block {}: the path holds {}, not a block file; remove it",
                    final_path.display(),
                    describe_type(&meta)
                ));
            }
        }
        Err(err!(
            Io,
            "could not create block file {} after 8 attempts (removed and recreated meanwhile)",
            final_path.display()
        ))
    }

    /// Creates a unique named temp file next to the block's final path, named after this
    /// store's writer lock (taken on the first call): no lock or `fstat` per file.
    fn create_named_temp(&self, key: &Key, block_dir: &Path) -> Result<BlockTemp> {
        let writer = self.writer_id()?;
        let how = OpenNoFollow::write_only().direct(self.direct);
        let mut created_dirs = false;
        for _ in 0..100 {
            let seq = self.seq.fetch_add(1, Relaxed);
            let temp = block_dir.join(path::temp_name(key, writer, seq));
            // From here on the file is removed on any failure (when the TempFile drops).
            match TempFile::create_named(temp.clone(), how, 0o644) {
                Ok(f) => return Ok(BlockTemp::Temp(f)),
                Err(e) if e.kind() == io::ErrorKind::NotFound && !created_dirs => {
                    std::fs::create_dir_all(block_dir).map_err(|e| {
                        Error::io(format!("creating directory {}", block_dir.display()), e)
                    })?;
                    created_dirs = true;
                }
                // Someone planted something at the name: the next one.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(Error::io(
                        format!("creating block temp file {}", temp.display()),
                        e,
                    ))
                }
            }
        }
        Err(err!(
            Io,
            "could not create a temp file in {} after 100 attempts",
            block_dir.display()
        ))
    }

    /// Creates `key`'s fan-out directory once (one `mkdir`, no failed open first) and
    /// remembers it. Errors are left to `create_temp`, which retries with `create_dir_all`
    /// on `ENOENT` and reports what failed.
    fn ensure_dir(&self, key: &Key, block_dir: &Path) {
        self.make_fanout_dir(path::fanout_index(key), block_dir);
    }

    /// `mkdir` of fan-out directory `i` (at `dir`) unless known to exist; remembers success.
    fn make_fanout_dir(&self, i: usize, dir: &Path) {
        if self.dirs.test(i) {
            return;
        }
        match std::fs::create_dir(dir) {
            Ok(()) => self.dirs.set(i),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => self.dirs.set(i),
            Err(_) => {}
        }
    }

    /// Creates the missing fan-out directories at open, while the disk is quiet (~50 ms for
    /// all 256 on the development machine's ext4). Created lazily under load, each `mkdir` waits behind the queued block
    /// writes (ext4 reads the new directory's group bitmaps) while it holds the store
    /// directory's lock, stalling every writer's path lookups: 10-20% of a fresh store's
    /// first 512 MiB of 64 KiB blocks. Failures are left to `ensure_dir`/`create_temp`.
    pub(super) fn create_fanout_dirs(&self) {
        for i in 0..256 {
            if !self.dirs.test(i) {
                self.make_fanout_dir(i, &self.dir.join(path::fanout_name(i)));
            }
        }
    }
}

/// Removes the temp file `p` (classified as `entry`) if its writer is dead: for a temp file
/// named after a writer lock, when that lock is free or gone (whatever sits at the name,
/// never opened: a FIFO cannot hang the scan); for an older version's, when no live writer
/// holds its `flock` (and whatever else than a regular file sits at the name).
///
/// A block name is taken for an unpublished file written in place (`in_place`), removed by
/// that rule (a published block stays).
pub(super) fn clean_temp(p: &Path, entry: &Entry, live: &mut Liveness) {
    let removed = match *entry {
        Entry::Temp(writer) => !live.is_alive(writer) && std::fs::remove_file(p).is_ok(),
        Entry::LegacyTemp => remove_if_abandoned(p),
        Entry::Block(_) => {
            // Logs what it removes itself.
            clean_unpublished(p, live);
            return;
        }
        Entry::Other => false,
    };
    if removed {
        log::info!(target: "kvr::fs", "removed stale temp file {} (its writer is gone)", p.display());
    }
}
