//! The store's initial directory scan, run on a background thread so that opening a store
//! does not cost time proportional to what it holds (a shared store of millions of blocks is
//! opened by every engine process on every host).
//!
//! The scan rebuilds this process's index (sizes and LRU order from the files' access and
//! modification times), removes the temp files and unpublished block files of dead writers,
//! and then evicts down to the capacity. Until it is done:
//! - loads, `contains` and prefix lookups are unaffected: they always ask the file system,
//!   the index only orders evictions and feeds the counters;
//! - stores into a capacity-bounded store wait for it (an eviction needs the whole LRU
//!   order); stores into an unbounded store do not;
//! - [`super::FsStats::blocks`] and `bytes` count only what is indexed so far
//!   ([`super::FsStats::scan_complete`] says when they are whole).
//!
//! `open` waits for the scan only while the store looks small: once the directories listed
//! so far extrapolate to more than [`SMALL_STORE_BLOCKS`] entries (at a million blocks: after
//! listing the first of 256 fan-out directories, a few milliseconds even with cold caches),
//! open returns and the scan goes on alone. A small store is fully scanned when open returns,
//! exactly as if the scan were synchronous; [`OPEN_WAIT`] bounds the wait in any case (a
//! slow or cold file system).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::in_place::{clean_unpublished, is_unpublished};
use super::temp::clean_temp;
use super::writers::{remove_dead_writers, Liveness};
use super::{path, Inner, Key};
use crate::{Error, Result};

/// The longest `open` waits for the scan of a small store before returning with it still
/// running.
pub(super) const OPEN_WAIT: Duration = Duration::from_millis(100);

/// Stores estimated to hold more entries than this are not waited for at open: their scan
/// would cost more than the caller should pay (about 3.5 us per block with warm caches, an
/// inode read each with cold ones), while a store this small is scanned in a few
/// milliseconds and opens with its counters whole and its stale temp files gone.
const SMALL_STORE_BLOCKS: usize = 2048;

/// Blocks indexed per lock acquisition, so that loads and stores touching the index are not
/// held up by a million-entry insert.
const INSERT_CHUNK: usize = 4096;

/// How far the scan has come.
#[derive(Default, Clone, Copy)]
struct Progress {
    /// The scan has finished.
    done: bool,
    /// The store holds too many entries for open to wait for the scan.
    large: bool,
}

/// Whether the scan is done, with a way to wait for it and to stop it early (store closed).
#[derive(Default)]
pub(super) struct ScanState {
    progress: Mutex<Progress>,
    changed: Condvar,
    cancel: AtomicBool,
}

impl ScanState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        // A poisoned lock only means a thread panicked while holding it; the flags are sound.
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the scan has finished (or was never needed).
    pub(super) fn is_done(&self) -> bool {
        self.lock().done
    }

    /// Waits until the scan has finished, or `timeout` (forever when `None`) has passed;
    /// returns whether it has finished.
    pub(super) fn wait(&self, timeout: Option<Duration>) -> bool {
        self.wait_until(timeout, |p| p.done).done
    }

    /// What `open` waits for: the scan of a small store to finish, at most [`OPEN_WAIT`]
    /// (a large store's scan is left running as soon as it is known to be large).
    pub(super) fn wait_at_open(&self) {
        self.wait_until(Some(OPEN_WAIT), |p| p.done || p.large);
    }

    fn wait_until(&self, timeout: Option<Duration>, ready: impl Fn(&Progress) -> bool) -> Progress {
        let g = self.lock();
        let not_ready = |p: &mut Progress| !ready(p);
        match timeout {
            None => *self
                .changed
                .wait_while(g, not_ready)
                .unwrap_or_else(|p| p.into_inner()),
            Some(t) => {
                *self
                    .changed
                    .wait_timeout_while(g, t, not_ready)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        }
    }

    /// Asks a running scan to stop at the next directory.
    pub(super) fn cancel(&self) {
        self.cancel.store(true, Relaxed);
    }

    fn finish(&self) {
        self.lock().done = true;
        self.changed.notify_all();
    }

    fn mark_large(&self) {
        let mut p = self.lock();
        if !p.large {
            p.large = true;
            self.changed.notify_all();
        }
    }
}

/// The names of the fan-out directories present in `dir` (one listing of the store
/// directory: cheap, and done at open so that the missing ones are created there).
pub(super) fn fanout_dirs(dir: &Path) -> Result<Vec<usize>> {
    let it = match std::fs::read_dir(dir) {
        Ok(it) => it,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("scanning {}", dir.display()), e)),
    };
    Ok(it
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            // A stray file or symlink named like a fan-out directory is skipped (`kvr fs
            // inspect` and `verify` report it): one bad entry must not fail every open.
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                return None;
            }
            let name = e.file_name();
            let hi = name.to_str().filter(|n| path::is_fanout_dir(n))?;
            Some(usize::from_str_radix(hi, 16).expect("two hex digits"))
        })
        .collect())
}

/// Starts the scan of fan-out directories `dirs` on a thread of its own.
pub(super) fn spawn(inner: Arc<Inner>, dirs: Vec<usize>) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("kvr-fs-scan".into())
        .spawn(move || {
            inner.scan(&dirs);
            inner.scan_state.finish();
        })
        .map_err(|e| Error::io("starting the fs store's scan thread", e))
}

impl Inner {
    /// Indexes the blocks of fan-out directories `dirs` (older than anything this process
    /// has used meanwhile), removes temp files whose writers are gone, then evicts down to
    /// the capacity. A directory that cannot be listed is skipped: its blocks stay loadable,
    /// only unindexed.
    fn scan(&self, dirs: &[usize]) {
        let mut found: Vec<(i64, Key, u64)> = Vec::new();
        let mut listed_entries = 0usize;
        let mut live = Liveness::new(&self.dir);
        for (listed_dirs, &i) in dirs.iter().enumerate() {
            if self.scan_state.cancel.load(Relaxed) {
                return;
            }
            let d = self.dir.join(path::fanout_name(i));
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            // The whole listing first (names only, no inode read): it tells `open` whether
            // the store is too large to wait for before the per-file work starts.
            let entries: Vec<_> = entries.filter_map(|e| e.ok()).collect();
            listed_entries += entries.len();
            if listed_entries * dirs.len() / (listed_dirs + 1) > SMALL_STORE_BLOCKS {
                self.scan_state.mark_large();
            }
            for f in entries {
                let name = f.file_name();
                let Some(name) = name.to_str() else { continue };
                match path::classify(name) {
                    path::Entry::Block(key) => match std::fs::symlink_metadata(f.path()) {
                        Ok(m) if is_unpublished(&m) => {
                            clean_unpublished(&f.path(), &mut live);
                        }
                        Ok(m) if m.is_file() => {
                            found.push((m.atime().max(m.mtime()), key, m.len()));
                        }
                        _ => {}
                    },
                    e @ (path::Entry::Temp(_) | path::Entry::LegacyTemp) => {
                        clean_temp(&f.path(), &e, &mut live)
                    }
                    path::Entry::Other => {}
                }
            }
        }
        remove_dead_writers(&self.dir);
        found.sort_unstable();
        for chunk in found.chunks(INSERT_CHUNK) {
            let mut ix = self.lock_index();
            for &(_, key, size) in chunk {
                ix.insert_scanned(key, size);
            }
        }
        if self.capacity > 0 {
            let mut ix = self.lock_index();
            self.evict_until(&mut ix, 0);
        }
    }
}
