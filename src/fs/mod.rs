//! The fs block store: content-addressed KV blocks, one safetensors file per block, on a local
//! or shared file system, shareable between engine instances and hosts.
//!
//! - Keys are the engine's, 1..=256 bytes; a block lives at
//!   `<root>/<namespace>/[r<rank>/]<hh>/<hex of its name>.kvb` ([`path`]; the name is the key
//!   itself for a 16-byte key, else the xxh3-128 of namespace and key, see [`crate::key`]);
//!   its file format is in [`format`](mod@format), which records the whole key, compared on every load.
//! - A block is a list of segments (gathered on store, scattered on load): zero-copy with
//!   O_DIRECT when every segment is 4096-aligned in address and length, else through pooled
//!   bounce buffers; one contiguous buffer is a list of one.
//! - Writes go to an unnamed `O_TMPFILE` file in the target directory, linked into place
//!   when complete. Where the file system lacks `O_TMPFILE`, as NFS and FUSE mounts do, a
//!   block is written under its final name, created exclusively with no permission bits and
//!   published by `fchmod` ([`in_place`]; or, as configured, into a named temp file
//!   hard-linked into place, whose name points to the writing store's lock file, see
//!   `writers`): readers never see a partial block, a killed writer leaves no block behind,
//!   and a block that already exists is never rewritten.
//! - On network file systems (FUSE, NFS, ...) the `close` of a written block file and the
//!   removal of its published temp name, each a round trip there, run on a thread of their
//!   own (`io::close_behind`), off the store's path.
//! - Async batches run whole stores on the writer threads, each block's data written with one
//!   synchronous `pwritev` (the device's queue depth is the number of writer threads).
//! - Loads validate length, key and xxh3-64 checksum; a bad file is removed and reported as
//!   `Corrupt` with its path, never handed to the caller.
//! - O_DIRECT is probed at open (buffered fallback); unaligned caller buffers and tails go
//!   through pooled aligned bounce buffers.
//! - With a capacity, least-recently-used blocks are unlinked (readers holding them open keep
//!   reading); the LRU order is rebuilt by a directory scan that starts at open and runs in
//!   the background (`scan`: open does not grow with the store), which also removes the
//!   temp files and unpublished block files of dead writers (their writer lock is gone).
//! - The store directory is marked as a hierarchy top (`chattr +T`) where the file system
//!   supports it, so its 256 fan-out directories spread over ext4's block groups.
//! - No store-wide lock: several processes may share a root; correctness rests on content
//!   addressing and atomic publication (`link`, which fails rather than replace a name, or an
//!   exclusive create). The only lock files are the writer locks of stores writing named temp
//!   files or in place.

mod config;
pub mod format;
pub mod in_place;
pub(crate) mod index;
mod load;
pub mod maintenance;
mod metrics;
pub mod path;
mod scan;
mod store;
mod temp;
pub(crate) mod writers;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

pub(crate) use config::{as_load_items, as_store_items};
pub use config::{
    Durability, FsConfig, FsStats, LoadItem, LoadRequest, StoreItem, StoreRequest, WriteMode,
};
pub use format::{Header, TensorSpec};
pub use path::Key;
pub use store::Stored;

use crate::io::close_behind::CloseBehind;
use crate::io::file::{is_network_fs, OpenNoFollow};
use crate::io::job::Completer;
use crate::io::publish::probe_unnamed;
use crate::io::vectored::{RawSegment, SegmentBatch};
use crate::io::{direct, BouncePool, IoPool, Job};
use crate::{err, Error, Result};
use index::Index;
use scan::ScanState;
use temp::{clean_temp, DirCache};
use writers::WriterLock;

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    corrupt: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    stores: AtomicU64,
    dedup: AtomicU64,
    evictions: AtomicU64,
}

struct Inner {
    dir: PathBuf,
    /// The namespace, part of every long key's block name (and a metrics label).
    namespace: String,
    /// Latencies of stores, loads and lookups (atomics only).
    latency: crate::metrics::OpLatencies,
    direct: bool,
    durability: Durability,
    verify: bool,
    capacity: u64,
    bounce: BouncePool,
    index: Mutex<Index>,
    counters: Counters,
    seq: AtomicU64,
    /// Fan-out directories known to exist (created or seen by this store).
    dirs: DirCache,
    /// How blocks are written: `UnnamedTemp`, `NamedTemp` or `InPlace` (resolved at open).
    write_mode: WriteMode,
    /// Whether closes and temp-name removals are round trips (a network file system).
    network: bool,
    /// There: the thread that does them off the store's path, started by the first store
    /// (`None` inside if it could not be started: they are done inline then). Declared
    /// before `writer`, so that it is drained before the writer lock goes.
    close_behind: OnceLock<Option<CloseBehind>>,
    /// This store's writer lock, taken before its first named temp file is made.
    writer: OnceLock<WriterLock>,
    writer_init: Mutex<()>,
    /// The background scan started at open.
    scan_state: ScanState,
}

/// An open fs block store. Cheap to share between threads (`&FsStore` is `Sync`).
pub struct FsStore {
    inner: Arc<Inner>,
    // Declared after `inner` only for clarity: pools are joined on drop, finishing queued
    // work, and their tasks hold their own `Arc<Inner>`.
    readers: IoPool,
    writers: IoPool,
    /// The background scan's thread, stopped and joined on drop.
    scanner: Option<std::thread::JoinHandle<()>>,
    /// Listed in `kvr_metrics_text` while open.
    _metrics: crate::metrics::Registration,
}

impl Drop for FsStore {
    fn drop(&mut self) {
        self.inner.scan_state.cancel();
        if let Some(t) = self.scanner.take() {
            let _ = t.join();
        }
    }
}

impl FsStore {
    /// Opens (creating directories as needed) a store and probes O_DIRECT and `O_TMPFILE`.
    /// A background scan (`scan`) then rebuilds the block index and LRU order, removes temp
    /// files left by dead writers and evicts down to the capacity; open waits for it only
    /// while the store looks small (a small store is fully scanned when open returns; a
    /// large one opens in milliseconds, see [`FsStats::scan_complete`]).
    pub fn open(cfg: &FsConfig) -> Result<FsStore> {
        let dir = path::store_dir(&cfg.root, &cfg.namespace, cfg.rank)?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating fs store directory {}", dir.display()), e))?;
        // Spread the fan-out directories over the file system's block groups (ext4 only; a
        // hint, see `io::dir::hint_top_dir`).
        crate::io::dir::hint_top_dir(&dir);
        if let Some(ns) = &cfg.manifest {
            if ns.name()? != cfg.namespace {
                return Err(err!(
                    InvalidArgument,
                    "fs namespace {:?} is not the name of its manifest's fields ({:?})",
                    cfg.namespace,
                    ns.name()?
                ));
            }
            ns.write_manifest(&cfg.root.join(&cfg.namespace))?;
        }
        let direct = direct::resolve(cfg.direct_io, &dir)?;
        let unnamed =
            |dir: &Path| probe_unnamed(dir, OpenNoFollow::write_only().direct(direct).mode(0o644));
        let (write_mode, why) = match cfg.write_mode {
            WriteMode::Auto | WriteMode::UnnamedTemp if unnamed(&dir) => (
                WriteMode::UnnamedTemp,
                "unnamed O_TMPFILE files, linked into place",
            ),
            WriteMode::Auto | WriteMode::UnnamedTemp => (
                WriteMode::InPlace,
                "place, published by fchmod (the file system has no O_TMPFILE)",
            ),
            WriteMode::NamedTemp => (
                WriteMode::NamedTemp,
                "named temp files, hard-linked into place (as configured)",
            ),
            WriteMode::InPlace => (
                WriteMode::InPlace,
                "place, published by fchmod (as configured)",
            ),
        };
        let network = is_network_fs(&dir);
        log::info!(
            target: "kvr::fs",
            "{}: blocks are written in{} {why}, with {}{}",
            dir.display(),
            if write_mode == WriteMode::InPlace { "" } else { "to" },
            if direct { "O_DIRECT" } else { "buffered I/O" },
            if network {
                "; a network file system: written files are closed off the store's path"
            } else {
                ""
            }
        );
        let inner = Arc::new(Inner {
            dir,
            namespace: cfg.namespace.clone(),
            latency: Default::default(),
            direct,
            durability: cfg.durability,
            verify: cfg.verify,
            capacity: cfg.capacity,
            bounce: BouncePool::new(cfg.read_threads + cfg.write_threads + 4),
            index: Mutex::new(Index::default()),
            counters: Counters::default(),
            seq: AtomicU64::new(0),
            dirs: DirCache::default(),
            write_mode,
            network,
            close_behind: OnceLock::new(),
            writer: OnceLock::new(),
            writer_init: Mutex::new(()),
            scan_state: ScanState::default(),
        });
        let present = scan::fanout_dirs(&inner.dir)?;
        for &i in &present {
            inner.dirs.set(i);
        }
        inner.create_fanout_dirs();
        let readers = IoPool::new("kvr-fs-read", cfg.read_threads)?;
        let writers = IoPool::new("kvr-fs-write", cfg.write_threads)?;
        let scanner = scan::spawn(inner.clone(), present)?;
        inner.scan_state.wait_at_open();
        Ok(FsStore {
            readers,
            writers,
            scanner: Some(scanner),
            _metrics: crate::metrics::register(&inner),
            inner,
        })
    }

    /// The directory holding this store's blocks (`<root>/<namespace>[/r<rank>]`).
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The path a block of `key` has (whether or not it exists).
    pub fn block_path(&self, key: &Key) -> PathBuf {
        path::block_path(&self.inner.dir, key)
    }

    /// Whether blocks are written into unnamed `O_TMPFILE` files (asked for in the config
    /// and supported by the file system), rather than named temp files or in place.
    pub fn uses_unnamed_temp_files(&self) -> bool {
        self.inner.write_mode == WriteMode::UnnamedTemp
    }

    /// How blocks are written: `UnnamedTemp`, `NamedTemp` or `InPlace`.
    pub fn write_mode(&self) -> WriteMode {
        self.inner.write_mode
    }

    /// Whether O_DIRECT is in use.
    pub fn direct_io(&self) -> bool {
        self.inner.direct
    }

    /// Waits until the scan started at open has indexed the store (and, with a capacity,
    /// evicted down to it), or `timeout` has passed (`None`: no limit); returns whether it
    /// is done. Stores into a capacity-bounded store wait for it by themselves.
    pub fn wait_for_scan(&self, timeout: Option<std::time::Duration>) -> bool {
        self.inner.scan_state.wait(timeout)
    }

    /// Stores `data` as a `U8` block under the 16-byte `key`, unless a block of that key
    /// exists.
    pub fn store(&self, key: &Key, data: &[u8]) -> Result<Stored> {
        self.inner.store(&key.0, &[data], None)
    }

    /// Stores `data` recording the tensor's dtype and shape in the block file.
    pub fn store_tensor(&self, key: &Key, data: &[u8], tensor: &TensorSpec) -> Result<Stored> {
        self.inner.store(&key.0, &[data], Some(tensor))
    }

    /// Stores the concatenation of `segments` (each non-empty) under the whole engine `key`
    /// (1..=256 bytes), as a `U8` block or with `tensor`'s dtype and shape, unless a block of
    /// that key's name exists.
    pub fn store_segments(
        &self,
        key: &[u8],
        segments: &[&[u8]],
        tensor: Option<&TensorSpec>,
    ) -> Result<Stored> {
        self.inner.store(key, segments, tensor)
    }

    /// Loads the block of the 16-byte `key` into `dst`, whose length must equal the stored
    /// payload's. `NotFound` if absent; `Corrupt` (file removed) if it fails validation;
    /// `LayoutMismatch` (file kept) if it is intact but of another length. On error `dst`'s
    /// contents are unspecified.
    pub fn load(&self, key: &Key, dst: &mut [u8]) -> Result<u64> {
        self.inner.load(&key.0, &mut [dst])
    }

    /// Loads the block of the whole engine `key` scattered over `segments` (each non-empty),
    /// whose lengths must sum to the stored payload's (else `LayoutMismatch`). Errors as for
    /// [`FsStore::load`]; a block of another key with the same name is `NotFound`.
    pub fn load_segments(&self, key: &[u8], segments: &mut [&mut [u8]]) -> Result<u64> {
        self.inner.load(key, segments)
    }

    /// The path a block of the whole engine `key` has (whether or not it exists).
    pub fn block_path_of(&self, key: &[u8]) -> PathBuf {
        path::block_path(&self.inner.dir, &self.inner.name(key))
    }

    /// Whether a block of `key` exists (in this or any other process's writes): a published
    /// regular file at its path (a FIFO or a symlink planted there is no block, nor a file
    /// still being written in place).
    pub fn contains(&self, key: &Key) -> bool {
        let started = std::time::Instant::now();
        let found = self.exists(key);
        self.inner.latency.lookup.record_since(started);
        found
    }

    /// How many leading `keys` exist: the reusable prefix of a prompt.
    pub fn lookup_prefix(&self, keys: &[Key]) -> usize {
        let started = std::time::Instant::now();
        let n = keys.iter().take_while(|k| self.exists(k)).count();
        self.inner.latency.lookup.record_since(started);
        n
    }

    fn exists(&self, key: &Key) -> bool {
        std::fs::symlink_metadata(self.block_path(key)).is_ok_and(|m| in_place::is_published(&m))
    }

    /// Per-key presence of whole engine keys: `present[i]` is set to 1 when a block of
    /// `keys[i]` exists, else 0; returns how many exist. A key this process's index knows
    /// is present without any I/O (stored or seen by this process; another process may have
    /// removed it since, which the load then reports as `NotFound`); any other key costs one
    /// `stat` of its path, which finds blocks other processes and hosts stored (a found one
    /// joins the index). Keys that are not 1..=256 bytes are absent.
    pub fn lookup(&self, keys: &[&[u8]], present: &mut [u8]) -> Result<usize> {
        let started = std::time::Instant::now();
        let r = self.lookup_untimed(keys, present);
        self.inner.latency.lookup.record_since(started);
        r
    }

    fn lookup_untimed(&self, keys: &[&[u8]], present: &mut [u8]) -> Result<usize> {
        if keys.len() != present.len() {
            return Err(err!(
                InvalidArgument,
                "{} keys but {} presence bytes",
                keys.len(),
                present.len()
            ));
        }
        let names: Vec<Option<Key>> = keys
            .iter()
            .map(|k| crate::key::check_key(k).ok().map(|_| self.inner.name(k)))
            .collect();
        let mut unknown = Vec::new();
        {
            let ix = self.inner.lock_index();
            for (i, name) in names.iter().enumerate() {
                present[i] = match name {
                    Some(n) if ix.contains(n) => 1,
                    Some(_) => {
                        unknown.push(i);
                        0
                    }
                    None => 0,
                };
            }
        }
        // Outside the lock: ask the file system about the keys the index does not know.
        let mut found = Vec::new();
        for i in unknown {
            let name = names[i].expect("only named keys are unknown");
            let meta = std::fs::symlink_metadata(path::block_path(&self.inner.dir, &name));
            // Only a published regular file is a block (a FIFO or a symlink planted there is
            // none, nor a file still being written in place).
            if let Some(m) = meta.ok().filter(in_place::is_published) {
                present[i] = 1;
                found.push((name, m.len()));
            }
        }
        if !found.is_empty() {
            let mut ix = self.inner.lock_index();
            for (name, len) in found {
                if !ix.contains(&name) {
                    ix.insert(name, len);
                }
            }
        }
        Ok(present.iter().filter(|&&p| p != 0).count())
    }

    /// Removes the block of `key`; `NotFound` if there is none.
    pub fn remove(&self, key: &Key) -> Result<()> {
        self.remove_name(key)
    }

    /// Removes the block of the whole engine `key` (whatever key a colliding block of the
    /// same name holds); `NotFound` if there is none.
    pub fn remove_key(&self, key: &[u8]) -> Result<()> {
        crate::key::check_key(key)?;
        self.remove_name(&self.inner.name(key))
    }

    fn remove_name(&self, name: &Key) -> Result<()> {
        let p = self.block_path(name);
        let r = std::fs::remove_file(&p);
        self.inner.lock_index().remove(name);
        r.map_err(|e| Error::io(format!("removing block {}", p.display()), e))
    }

    /// This process's counters.
    pub fn stats(&self) -> FsStats {
        self.inner.stats()
    }

    /// Stores a batch on the write pool; each item ends with `Ok(bytes written)` (0 when
    /// deduplicated) or its error.
    ///
    /// # Safety
    /// Every `src` must be valid for reads of `len` bytes until the returned job has
    /// completed (dropping the job waits for it).
    pub unsafe fn submit_store(&self, items: &[StoreRequest]) -> Job {
        // SAFETY: the items' segments are the requests' buffers: this function's contract.
        as_store_items(items, |items| unsafe { self.submit_store_items(items) })
    }

    /// Stores a batch of whole-key, segmented blocks on the write pool; each item ends with
    /// `Ok(bytes written)` (0 when deduplicated) or its error. The keys and segment lists are
    /// copied here.
    ///
    /// # Safety
    /// Every segment must be valid for reads of its length until the returned job has
    /// completed (dropping the job waits for it).
    pub unsafe fn submit_store_items(&self, items: &[StoreItem]) -> Job {
        let mut batch = SegmentBatch::default();
        let entries: Vec<_> = items
            .iter()
            .map(|it| batch.push(it.key, it.segments))
            .collect();
        let batch = Arc::new(batch);
        let inner = self.inner.clone();
        let task = move |e, done: Completer| {
            let (key, segments) = (batch.key(e), batch.segments(e));
            if let Err(e) = check_raw_segments(segments, "store") {
                return done.finish(Err(e));
            }
            let data: Vec<&[u8]> = segments
                .iter()
                // SAFETY: valid for reads until the job completes (the contract of this
                // function); checked non-null and non-empty above.
                .map(|s| unsafe { std::slice::from_raw_parts(s.ptr.cast_const(), s.len) })
                .collect();
            // Written synchronously on this thread: an O_DIRECT write that allocates cannot
            // be issued without blocking on ext4, so an io_uring would hand it to a kernel
            // worker thread, two more context switches per block (README, "CPU cost of one
            // stored 64 KiB block").
            let stored = inner.store(key, &data, None).map(|s| match s {
                Stored::Written => data.iter().map(|d| d.len() as u64).sum(),
                Stored::AlreadyPresent => 0,
            });
            done.finish(stored);
        };
        // SAFETY: the items' buffers stay valid until the job completes (this function's
        // contract); the batch itself travels in the task.
        unsafe { self.writers.submit_batch(&entries, task) }
    }

    /// Loads a batch on the read pool; each item ends with `Ok(bytes loaded)` or its error.
    ///
    /// # Safety
    /// Every `dst` must be valid for writes of `len` bytes, and not accessed by anyone else,
    /// until the returned job has completed (dropping the job waits for it).
    pub unsafe fn submit_load(&self, items: &[LoadRequest]) -> Job {
        // SAFETY: the items' segments are the requests' buffers: this function's contract.
        as_load_items(items, |items| unsafe { self.submit_load_items(items) })
    }

    /// Loads a batch of whole-key, segmented blocks on the read pool; each item ends with
    /// `Ok(bytes loaded)` or its error. The keys and segment lists are copied here.
    ///
    /// # Safety
    /// Every segment must be valid for writes of its length, and not accessed by anyone
    /// else, until the returned job has completed (dropping the job waits for it).
    pub unsafe fn submit_load_items(&self, items: &[LoadItem]) -> Job {
        let mut batch = SegmentBatch::default();
        let entries: Vec<_> = items
            .iter()
            .map(|it| batch.push(it.key, it.segments))
            .collect();
        let batch = Arc::new(batch);
        let inner = self.inner.clone();
        let task = move |e, done: Completer| {
            let (key, segments) = (batch.key(e), batch.segments(e));
            if let Err(e) = check_raw_segments(segments, "load") {
                return done.finish(Err(e));
            }
            let mut dst: Vec<&mut [u8]> = segments
                .iter()
                // SAFETY: valid and exclusively ours until the job completes (the contract
                // of this function); checked non-null and non-empty above.
                .map(|s| unsafe { std::slice::from_raw_parts_mut(s.ptr, s.len) })
                .collect();
            done.finish(inner.load(key, &mut dst));
        };
        // SAFETY: the items' buffers stay valid and unaliased until the job completes (this
        // function's contract).
        unsafe { self.readers.submit_batch(&entries, task) }
    }
}

/// Checks an async item's segments: at least one, none NULL or empty, a total that fits.
pub(crate) fn check_raw_segments(segments: &[RawSegment], what: &str) -> Result<()> {
    if segments.is_empty() {
        return Err(err!(InvalidArgument, "{what} item has no segments"));
    }
    let mut total: usize = 0;
    for (i, s) in segments.iter().enumerate() {
        if s.ptr.is_null() || s.len == 0 {
            return Err(err!(
                InvalidArgument,
                "{what} item has a NULL or empty buffer (segment {i})"
            ));
        }
        total = total
            .checked_add(s.len)
            .filter(|&t| t <= isize::MAX as usize)
            .ok_or_else(|| err!(InvalidArgument, "{what} item's segment lengths overflow"))?;
    }
    Ok(())
}

impl Inner {
    /// The id this store's named temp files carry, taking its writer lock the first time.
    fn writer_id(&self) -> Result<u64> {
        if let Some(w) = self.writer.get() {
            return Ok(w.id());
        }
        let _one_at_a_time = self.writer_init.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = self.writer.get() {
            return Ok(w.id());
        }
        let w = WriterLock::acquire(&self.dir)?;
        log::debug!(target: "kvr::fs", "{}: writer lock {:016x} taken", self.dir.display(), w.id());
        Ok(self.writer.get_or_init(|| w).id())
    }

    /// Closes a finished temp file (published or abandoned: dropping it does the work) off
    /// the caller's path where that is a round trip, else here.
    fn finish_with(&self, finished: impl Send + 'static) {
        if !self.network {
            return drop(finished);
        }
        // Started here, not at open: a store that only loads never needs the thread.
        let thread = self.close_behind.get_or_init(|| {
            CloseBehind::start("kvr-fs-close")
                .map_err(|e| {
                    log::warn!(target: "kvr::fs", "{}: {e}; closing written files inline", self.dir.display())
                })
                .ok()
        });
        match thread {
            Some(c) => c.defer(Box::new(finished)),
            None => drop(finished),
        }
    }

    /// This process's counters.
    fn stats(&self) -> FsStats {
        let c = &self.counters;
        let (blocks, bytes) = {
            let ix = self.lock_index();
            (ix.len() as u64, ix.bytes())
        };
        FsStats {
            blocks,
            bytes,
            hits: c.hits.load(Relaxed),
            misses: c.misses.load(Relaxed),
            corrupt_dropped: c.corrupt.load(Relaxed),
            bytes_read: c.bytes_read.load(Relaxed),
            bytes_written: c.bytes_written.load(Relaxed),
            stores: c.stores.load(Relaxed),
            dedup_hits: c.dedup.load(Relaxed),
            evictions: c.evictions.load(Relaxed),
            direct_io: self.direct,
            unnamed_temp_files: self.write_mode == WriteMode::UnnamedTemp,
            write_mode: self.write_mode,
            scan_complete: self.scan_state.is_done(),
        }
    }

    /// The block name of a whole engine key in this store's namespace.
    fn name(&self, key: &[u8]) -> Key {
        crate::key::block_name(self.namespace.as_bytes(), key)
    }

    fn lock_index(&self) -> MutexGuard<'_, Index> {
        // A poisoned lock only means a thread panicked while holding it; the index is sound.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Unlinks least-recently-used blocks until `incoming` more bytes fit under the capacity.
    fn evict_until(&self, ix: &mut Index, incoming: u64) {
        while ix.bytes() + ix.reserved() + incoming > self.capacity {
            let Some((key, _)) = ix.pop_lru() else { break };
            // ENOENT: another process removed it already. Open readers keep their inode.
            let _ = std::fs::remove_file(path::block_path(&self.dir, &key));
            self.counters.evictions.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::DirectIo;
    use crate::ErrorKind;
    use std::fs::File;

    fn open(dir: &Path, direct: DirectIo) -> FsStore {
        let mut c = FsConfig::new(dir, "ns");
        c.direct_io = direct;
        c.read_threads = 2;
        c.write_threads = 2;
        FsStore::open(&c).unwrap()
    }

    #[test]
    fn store_load_dedup_remove() {
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path(), DirectIo::Off);
        let k = Key([1; 16]);
        assert_eq!(s.store(&k, b"hello").unwrap(), Stored::Written);
        assert_eq!(s.store(&k, b"hello").unwrap(), Stored::AlreadyPresent);
        let mut out = [0u8; 5];
        assert_eq!(s.load(&k, &mut out).unwrap(), 5);
        assert_eq!(&out, b"hello");
        let mut wrong = [0u8; 6];
        assert_eq!(
            s.load(&k, &mut wrong).unwrap_err().kind(),
            ErrorKind::LayoutMismatch
        );
        assert!(s.contains(&k)); // an intact block of another length is kept
        assert_eq!(s.lookup_prefix(&[k, Key([2; 16]), k]), 1);
        s.remove(&k).unwrap();
        assert_eq!(s.remove(&k).unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(
            s.load(&k, &mut out).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        let st = s.stats();
        assert_eq!((st.stores, st.dedup_hits, st.hits, st.blocks), (1, 1, 1, 0));
        assert_eq!(st.misses, 2);
    }

    #[test]
    fn clean_temp_respects_live_writers() {
        let d = tempfile::tempdir().unwrap();
        let live = |d: &Path| writers::Liveness::new(d);
        // An older version's temp file: live while `flock`ed.
        let p = d.path().join(path::legacy_temp_name(&Key([3; 16]), 1, 1));
        let f = File::create(&p).unwrap();
        assert!(crate::io::lock::try_lock(&f, crate::io::lock::LockMode::Exclusive).unwrap());
        clean_temp(&p, &path::Entry::LegacyTemp, &mut live(d.path()));
        assert!(p.exists(), "a locked temp file belongs to a live writer");
        drop(f);
        clean_temp(&p, &path::Entry::LegacyTemp, &mut live(d.path()));
        assert!(!p.exists());
        // Today's: live while the writer holds its lock file.
        let w = WriterLock::acquire(d.path()).unwrap();
        let p = d.path().join(path::temp_name(&Key([3; 16]), w.id(), 1));
        File::create(&p).unwrap();
        clean_temp(&p, &path::Entry::Temp(w.id()), &mut live(d.path()));
        assert!(p.exists(), "its writer holds the lock");
        let id = w.id();
        drop(w);
        clean_temp(&p, &path::Entry::Temp(id), &mut live(d.path()));
        assert!(!p.exists(), "its writer closed");
    }
}
