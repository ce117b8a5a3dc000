//! The fs block store: content-addressed KV blocks, one safetensors file per block, on a local
//! or shared file system, shareable between engine instances and hosts.
//!
//! - Keys are 16 bytes; a block lives at `<root>/<namespace>/[r<rank>/]<hh>/<hex>.kvb`
//!   ([`path`]); its file format is in [`format`].
//! - Writes go to an unnamed `O_TMPFILE` file in the target directory, linked into place
//!   when complete (where the file system lacks `O_TMPFILE`, as NFS does: a unique, `flock`ed
//!   temp file, hard-linked into place): readers never see a partial block, a killed writer
//!   leaves no file behind, and a block that already exists is never rewritten.
//! - Async batches keep one block write per writer thread in flight on io_uring while the
//!   thread does the next block's metadata work ([`pipeline`]).
//! - Loads validate length, key and xxh3-64 checksum; a bad file is removed and reported as
//!   `Corrupt` with its path, never handed to the caller.
//! - O_DIRECT is probed at open (buffered fallback); unaligned caller buffers and tails go
//!   through pooled aligned bounce buffers.
//! - With a capacity, least-recently-used blocks are unlinked (readers holding them open keep
//!   reading); the LRU order is rebuilt from a directory scan at open, which also removes the
//!   temp files of dead writers (their `flock` is gone).
//! - The store directory is marked as a hierarchy top (`chattr +T`) where the file system
//!   supports it, so its 256 fan-out directories spread over ext4's block groups.
//! - No lock file: several processes may share a root; correctness rests on content
//!   addressing and atomic publication (`link`, which fails rather than replace a name).

pub mod format;
pub mod index;
pub mod maintenance;
pub mod path;
mod pipeline;
mod sys;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

pub use format::{Header, TensorSpec};
pub use path::Key;

use crate::io::job::Completer;
use crate::io::{direct, AlignedBuf, BouncePool, DirectIo, IoPool, Job, IO_ALIGN};
use crate::{err, Error, ErrorKind, Result};
use index::Index;

/// When a stored block is flushed to stable storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Rely on the OS to write back (fastest; a power loss may lose recent blocks, but never
    /// makes a torn block visible under its final name on journaling file systems).
    None,
    /// `fdatasync` the block's file before it is linked into place.
    Fdatasync,
    /// `fdatasync` before the link and `fsync` the directory after it.
    FdatasyncDir,
}

/// How to open a store. [`FsConfig::new`] fills the defaults.
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// Root directory (created if missing), shared by every store on it.
    pub root: PathBuf,
    /// Namespace (model + layout digest chosen by the engine); no `/`, `..`, NUL, leading `.`.
    pub namespace: String,
    /// Tensor-parallel rank, giving each rank its own subdirectory; `None` for a shared store.
    pub rank: Option<u32>,
    /// Threads loading blocks for async batches. Default 8.
    pub read_threads: usize,
    /// Threads storing blocks for async batches. Default 8.
    pub write_threads: usize,
    /// O_DIRECT mode. Default `Auto`.
    pub direct_io: DirectIo,
    /// Flushing. Default `None`.
    pub durability: Durability,
    /// Verify the checksum on every load. Default true.
    pub verify: bool,
    /// Bound on the bytes of block files this store keeps (0 = unbounded). Default 0.
    pub capacity: u64,
    /// Write each block into an unnamed `O_TMPFILE` file and link it into place where the
    /// file system supports it (probed at open); a killed writer then leaves nothing behind.
    /// `false` always uses named, `flock`ed temp files linked into place: the protocol for
    /// file systems without `O_TMPFILE` (NFS), selectable to test it anywhere. Default true.
    pub unnamed_temp_files: bool,
}

impl FsConfig {
    /// A config with the defaults: no rank, 8 + 8 threads, direct I/O auto, no flushing,
    /// verification on, unbounded.
    pub fn new(root: impl Into<PathBuf>, namespace: impl Into<String>) -> Self {
        FsConfig {
            root: root.into(),
            namespace: namespace.into(),
            rank: None,
            read_threads: 8,
            write_threads: 8,
            direct_io: DirectIo::Auto,
            durability: Durability::None,
            verify: true,
            capacity: 0,
            unnamed_temp_files: true,
        }
    }
}

/// Counters of one open store (this process's view).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsStats {
    /// Blocks this process knows of (scanned at open, plus its own stores, minus removals).
    pub blocks: u64,
    /// File bytes of those blocks (headers included).
    pub bytes: u64,
    /// Loads that returned a block.
    pub hits: u64,
    /// Loads that found no block.
    pub misses: u64,
    /// Corrupt block files found and removed.
    pub corrupt_dropped: u64,
    /// Payload bytes loaded.
    pub bytes_read: u64,
    /// Payload bytes stored (deduplicated stores write nothing).
    pub bytes_written: u64,
    /// Blocks written.
    pub stores: u64,
    /// Stores skipped because the block already existed.
    pub dedup_hits: u64,
    /// Blocks removed to stay under the capacity.
    pub evictions: u64,
    /// True when O_DIRECT is in use, false for buffered I/O.
    pub direct_io: bool,
}

/// What a store call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// The block was written.
    Written,
    /// The block already existed; nothing was written.
    AlreadyPresent,
}

/// One block to store in an async batch: `len` bytes at `src`.
#[derive(Clone, Copy, Debug)]
pub struct StoreRequest {
    /// The block's key.
    pub key: Key,
    /// Start of the payload; must stay valid until the job completes.
    pub src: *const u8,
    /// Payload bytes (non-zero).
    pub len: usize,
}

/// One block to load in an async batch into `len` bytes at `dst`.
#[derive(Clone, Copy, Debug)]
pub struct LoadRequest {
    /// The block's key.
    pub key: Key,
    /// Destination; must stay valid and unaliased until the job completes.
    pub dst: *mut u8,
    /// Expected payload bytes (non-zero).
    pub len: usize,
}

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
    /// Blocks are written into unnamed `O_TMPFILE` files (probed at open), else named temps.
    unnamed_temps: bool,
    /// This process's id, for temp file names (a forked child that keeps using the store
    /// shares it; its names are still unique thanks to `create_new` + retry).
    pid: u32,
}

/// Which of the 256 `<hh>` fan-out directories exist: one bit each, set once created or
/// seen. A stale bit (a directory removed behind the store's back) only costs the `ENOENT`
/// retry in `create_temp`.
#[derive(Default)]
struct DirCache([AtomicU64; 4]);

impl DirCache {
    fn test(&self, i: usize) -> bool {
        self.0[i / 64].load(Relaxed) & (1 << (i % 64)) != 0
    }

    fn set(&self, i: usize) {
        self.0[i / 64].fetch_or(1 << (i % 64), Relaxed);
    }
}

/// An open fs block store. Cheap to share between threads (`&FsStore` is `Sync`).
pub struct FsStore {
    inner: Arc<Inner>,
    // Declared after `inner` only for clarity: pools are joined on drop, finishing queued
    // work, and their tasks hold their own `Arc<Inner>`.
    readers: IoPool,
    writers: IoPool,
}

impl FsStore {
    /// Opens (creating directories as needed) a store; probes O_DIRECT, scans the store's
    /// directory to rebuild the block index and LRU order, removes temp files left by dead
    /// writers, and evicts down to the capacity.
    pub fn open(cfg: &FsConfig) -> Result<FsStore> {
        let dir = path::store_dir(&cfg.root, &cfg.namespace, cfg.rank)?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating fs store directory {}", dir.display()), e))?;
        // Spread the fan-out directories over the file system's block groups (ext4 only; a
        // hint, see `sys::hint_top_dir`).
        sys::hint_top_dir(&dir);
        let direct = direct::resolve(cfg.direct_io, &dir)?;
        let direct_flag = if direct { libc::O_DIRECT } else { 0 };
        let unnamed_temps =
            cfg.unnamed_temp_files && sys::probe_unnamed(&dir, libc::O_CLOEXEC | direct_flag);
        let inner = Arc::new(Inner {
            dir,
            direct,
            durability: cfg.durability,
            verify: cfg.verify,
            capacity: cfg.capacity,
            bounce: BouncePool::new(cfg.read_threads + cfg.write_threads + 4),
            index: Mutex::new(Index::default()),
            counters: Counters::default(),
            seq: AtomicU64::new(0),
            dirs: DirCache::default(),
            unnamed_temps,
            pid: std::process::id(),
        });
        inner.scan()?;
        inner.create_fanout_dirs();
        if inner.capacity > 0 {
            let mut ix = inner.lock_index();
            inner.evict_until(&mut ix, 0);
        }
        Ok(FsStore {
            readers: IoPool::new("kvr-fs-read", cfg.read_threads)?,
            writers: IoPool::with_idle("kvr-fs-write", cfg.write_threads, pipeline::flush)?,
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
    /// and supported by the file system), rather than named temp files.
    pub fn uses_unnamed_temp_files(&self) -> bool {
        self.inner.unnamed_temps
    }

    /// Whether O_DIRECT is in use.
    pub fn direct_io(&self) -> bool {
        self.inner.direct
    }

    /// Stores `data` as a `U8` block under `key`, unless a block of that key exists.
    pub fn store(&self, key: &Key, data: &[u8]) -> Result<Stored> {
        self.inner.store(key, data, None)
    }

    /// Stores `data` recording the tensor's dtype and shape in the block file.
    pub fn store_tensor(&self, key: &Key, data: &[u8], tensor: &TensorSpec) -> Result<Stored> {
        self.inner.store(key, data, Some(tensor))
    }

    /// Loads the block of `key` into `dst`, whose length must equal the stored payload's.
    /// `NotFound` if absent; `Corrupt` (file removed) if it fails validation;
    /// `LayoutMismatch` (file kept) if it is intact but of another length. On error `dst`'s
    /// contents are unspecified.
    pub fn load(&self, key: &Key, dst: &mut [u8]) -> Result<u64> {
        self.inner.load(key, dst)
    }

    /// Whether a block of `key` exists (in this or any other process's writes).
    pub fn contains(&self, key: &Key) -> bool {
        std::fs::symlink_metadata(self.block_path(key)).is_ok()
    }

    /// How many leading `keys` exist: the reusable prefix of a prompt.
    pub fn lookup_prefix(&self, keys: &[Key]) -> usize {
        keys.iter().take_while(|k| self.contains(k)).count()
    }

    /// Removes the block of `key`; `NotFound` if there is none.
    pub fn remove(&self, key: &Key) -> Result<()> {
        let p = self.block_path(key);
        let r = std::fs::remove_file(&p);
        self.inner.lock_index().remove(key);
        r.map_err(|e| Error::io(format!("removing block {}", p.display()), e))
    }

    /// This process's counters.
    pub fn stats(&self) -> FsStats {
        let c = &self.inner.counters;
        let (blocks, bytes) = {
            let ix = self.inner.lock_index();
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
            direct_io: self.inner.direct,
        }
    }

    /// Stores a batch on the write pool; each item ends with `Ok(bytes written)` (0 when
    /// deduplicated) or its error.
    ///
    /// # Safety
    /// Every `src` must be valid for reads of `len` bytes until the returned job has
    /// completed (dropping the job waits for it).
    pub unsafe fn submit_store(&self, items: &[StoreRequest]) -> Job {
        let inner = self.inner.clone();
        let task = move |it: StoreRequest, done: Completer| {
            if it.src.is_null() || it.len == 0 {
                return done.finish(Err(err!(
                    InvalidArgument,
                    "store item has a NULL or empty buffer"
                )));
            }
            let payload = pipeline::Payload {
                ptr: it.src,
                len: it.len,
            };
            // SAFETY: valid for `len` bytes until the job completes (the contract of this
            // function); the job cannot complete before this item's completer finishes.
            unsafe { pipeline::store(&inner, &it.key, payload, done) };
        };
        // SAFETY: the items' buffers stay valid until the job completes (this function's
        // contract).
        unsafe { self.writers.submit_batch(items, task) }
    }

    /// Loads a batch on the read pool; each item ends with `Ok(bytes loaded)` or its error.
    ///
    /// # Safety
    /// Every `dst` must be valid for writes of `len` bytes, and not accessed by anyone else,
    /// until the returned job has completed (dropping the job waits for it).
    pub unsafe fn submit_load(&self, items: &[LoadRequest]) -> Job {
        let inner = self.inner.clone();
        let task = move |it: LoadRequest, done: Completer| {
            if it.dst.is_null() || it.len == 0 {
                return done.finish(Err(err!(
                    InvalidArgument,
                    "load item has a NULL or empty buffer"
                )));
            }
            // SAFETY: valid and exclusively ours for `len` bytes until the job completes (the
            // contract of this function).
            let dst = unsafe { std::slice::from_raw_parts_mut(it.dst, it.len) };
            done.finish(inner.load(&it.key, dst));
        };
        // SAFETY: the items' buffers stay valid and unaliased until the job completes (this
        // function's contract).
        unsafe { self.readers.submit_batch(items, task) }
    }
}

/// The file a block is written into before it is published under its final name.
enum TempFile {
    /// `O_TMPFILE`: nameless until linked; a failed or crashed writer leaves nothing.
    Unnamed(File),
    /// A named temp file, locked by its writer (cleaners skip locked temp files), linked
    /// (or renamed) into place; its name is removed on drop unless renamed.
    Named {
        file: File,
        path: PathBuf,
        /// Renamed into place (or the name was lost to a cleaner): drop leaves `path` alone.
        /// After a hard link the temp name is still ours, and drop removes it.
        published: bool,
    },
}

impl TempFile {
    fn file(&self) -> &File {
        match self {
            TempFile::Unnamed(f) | TempFile::Named { file: f, .. } => f,
        }
    }

    /// Makes drop leave a named temp file's path alone.
    fn disown_name(&mut self) {
        if let TempFile::Named { published, .. } = self {
            *published = true;
        }
    }

    /// What the file is, for error messages.
    fn describe(&self, dest: &Path) -> String {
        match self {
            TempFile::Unnamed(_) => format!("unnamed block file for {}", dest.display()),
            TempFile::Named { path, .. } => format!("block temp file {}", path.display()),
        }
    }

    /// Gives the written file its final name; `Ok(false)` when the name exists (another
    /// writer published the same key, i.e. the same content, first) and nothing changed.
    /// An unnamed file is linked in and vanishes when closed if it lost. A named temp file
    /// is hard-linked in, its temp name removed on drop; on file systems without hard
    /// links it is renamed over the name instead (the loser of a race then replaces the
    /// winner's identical file and also reports `Ok(true)`).
    fn publish(&mut self, dest: &Path) -> io::Result<bool> {
        match self {
            TempFile::Unnamed(f) => match sys::link_unnamed(f, dest) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            },
            TempFile::Named {
                path, published, ..
            } => match std::fs::hard_link(&*path, dest) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EPERM) | Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
                    ) =>
                {
                    std::fs::rename(&*path, dest)?;
                    *published = true;
                    Ok(true)
                }
                Err(e) => Err(e),
            },
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let TempFile::Named {
            path,
            published: false,
            ..
        } = self
        {
            let _ = std::fs::remove_file(&*path);
        }
    }
}

/// What staging a block found.
enum Staging {
    /// The block exists already (deduplicated): nothing to write.
    Present,
    /// The temp file is allocated and the header staged: write, then [`Staged::finish`].
    Write(Staged),
}

/// A block between its temp file's creation and its publication. Dropping it unpublished
/// removes a named temp file (an unnamed one just vanishes) and releases the capacity
/// reservation and the staging buffer.
struct Staged {
    inner: Arc<Inner>,
    key: Key,
    final_path: PathBuf,
    /// `Some` once created (always, outside `Inner::stage`).
    temp: Option<TempFile>,
    /// The header and, with direct I/O, the payload's zero-padded tail page (or, for an
    /// unaligned payload, the whole padded file image). `Some` until dropped.
    staging: Option<AlignedBuf>,
    /// Staged bytes written before the payload.
    head: usize,
    /// Payload bytes written in place from the caller's buffer, after `head`.
    main: usize,
    /// Staged bytes (from offset `head` of the staging buffer) written after them.
    tail: usize,
    file_len: u64,
    payload_len: u64,
    /// Capacity reserved for this block, released on drop.
    reserved: u64,
}

impl Staged {
    fn temp(&self) -> &TempFile {
        self.temp.as_ref().expect("created in Inner::stage")
    }

    /// The file image at offset 0, as up to three segments (empty ones included).
    fn segments<'a>(&'a self, data: &'a [u8]) -> [&'a [u8]; 3] {
        let s = self.staging.as_ref().expect("staged").as_slice();
        [
            &s[..self.head],
            &data[..self.main],
            &s[self.head..self.head + self.tail],
        ]
    }

    /// Bytes one write of [`Staged::segments`] moves.
    fn write_len(&self) -> usize {
        self.head + self.main + self.tail
    }

    fn describe(&self) -> String {
        self.temp().describe(&self.final_path)
    }

    /// Writes the file image with `pwritev` (`data` is the payload given to `stage`).
    fn write_sync(&self, data: &[u8]) -> Result<()> {
        sys::pwritev_all(self.temp().file(), &self.segments(data), 0)
            .map_err(|e| Error::io(format!("writing {}", self.describe()), e))
    }

    /// After the write: cuts the file to its exact length, syncs as configured, publishes
    /// it under the block's name and records it.
    fn finish(mut self) -> Result<Stored> {
        let file = self.temp().file();
        if self.file_len % IO_ALIGN as u64 != 0 {
            file.set_len(self.file_len)
                .map_err(|e| Error::io(format!("truncating {}", self.describe()), e))?;
        }
        if self.inner.durability != Durability::None {
            sys::fdatasync(file)
                .map_err(|e| Error::io(format!("fdatasync of {}", self.describe()), e))?;
        }
        let temp = self.temp.as_mut().expect("created in Inner::stage");
        let published = match temp.publish(&self.final_path) {
            Ok(p) => p,
            Err(e) => {
                let what = format!(
                    "publishing {} as {}",
                    self.describe(),
                    self.final_path.display()
                );
                return Err(Error::io(what, e));
            }
        };
        let inner = &self.inner;
        let block_dir = self.final_path.parent().expect("block paths have a parent");
        if inner.durability == Durability::FdatasyncDir {
            sys::fsync_dir(block_dir)
                .map_err(|e| Error::io(format!("fsync of directory {}", block_dir.display()), e))?;
        }
        if !published {
            // Another writer published the same key (same content) first.
            inner.note_present(&self.key, self.file_len);
            return Ok(Stored::AlreadyPresent);
        }
        inner.lock_index().insert(self.key, self.file_len);
        inner.counters.stores.fetch_add(1, Relaxed);
        inner
            .counters
            .bytes_written
            .fetch_add(self.payload_len, Relaxed);
        Ok(Stored::Written)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // The temp file first: a named one is removed unless published.
        self.temp.take();
        if let Some(b) = self.staging.take() {
            self.inner.bounce.put(b);
        }
        if self.reserved > 0 {
            self.inner.lock_index().unreserve(self.reserved);
        }
    }
}

fn round_up(n: usize) -> usize {
    n.div_ceil(IO_ALIGN) * IO_ALIGN
}

impl Inner {
    fn lock_index(&self) -> MutexGuard<'_, Index> {
        // A poisoned lock only means a thread panicked while holding it; the index is sound.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open_flags(&self) -> i32 {
        libc::O_CLOEXEC | libc::O_NOFOLLOW | if self.direct { libc::O_DIRECT } else { 0 }
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

    /// Stores a block synchronously on the calling thread.
    fn store(
        self: &Arc<Self>,
        key: &Key,
        data: &[u8],
        tensor: Option<&TensorSpec>,
    ) -> Result<Stored> {
        match self.stage(key, data, tensor)? {
            Staging::Present => Ok(Stored::AlreadyPresent),
            Staging::Write(staged) => {
                staged.write_sync(data)?;
                staged.finish()
            }
        }
    }

    /// Everything before a block's data moves: validation, the dedup check, the capacity
    /// reservation, the allocated temp file and the staged header. A full disk fails here.
    fn stage(
        self: &Arc<Self>,
        key: &Key,
        data: &[u8],
        tensor: Option<&TensorSpec>,
    ) -> Result<Staging> {
        let final_path = path::block_path(&self.dir, key);
        let ctx = || format!("storing block {}", final_path.display());
        if data.is_empty() {
            return Err(err!(InvalidArgument, "{}: payload is empty", ctx()));
        }
        let default_spec;
        let spec = match tensor {
            Some(t) => t,
            None => {
                default_spec = TensorSpec::bytes(data.len() as u64);
                &default_spec
            }
        };
        spec.check(data.len() as u64)
            .map_err(|e| e.context(ctx()))?;
        if let Ok(meta) = std::fs::symlink_metadata(&final_path) {
            self.note_present(key, meta.len());
            return Ok(Staging::Present);
        }
        let sum = format::checksum(data);
        let header = format::encode_header(key, data.len() as u64, sum, spec);
        let file_len = (header.len() + data.len()) as u64;
        let reserved = if self.capacity > 0 {
            if file_len > self.capacity {
                return Err(err!(
                    TooLarge,
                    "{}: block file of {file_len} bytes exceeds the store capacity of {} bytes",
                    ctx(),
                    self.capacity
                ));
            }
            let mut ix = self.lock_index();
            self.evict_until(&mut ix, file_len);
            ix.reserve(file_len);
            file_len
        } else {
            0
        };
        // From here on, dropping `staged` undoes everything (reservation, temp file, buffer).
        let mut staged = Staged {
            inner: self.clone(),
            key: *key,
            temp: None,
            staging: None,
            head: 0,
            main: 0,
            tail: 0,
            file_len,
            payload_len: data.len() as u64,
            reserved,
            final_path,
        };
        let block_dir = staged
            .final_path
            .parent()
            .expect("block paths have a parent");
        let temp = self.create_temp(key, block_dir)?;
        // Allocate the whole (page-rounded) file first: a full disk fails here before any
        // data moves, and the O_DIRECT write is then not a file-extending write (which ext4
        // journals separately, an orphan-list update per file).
        sys::preallocate(temp.file(), round_up(file_len as usize) as u64).map_err(|e| {
            Error::io(
                format!("allocating {}", temp.describe(&staged.final_path)),
                e,
            )
        })?;
        staged.temp = Some(temp);
        self.stage_buffers(&mut staged, &header, data)?;
        Ok(Staging::Write(staged))
    }

    /// Fills the staging buffer. Direct I/O: an aligned caller's payload goes to the kernel
    /// in place, with only the header and the zero-padded tail page staged; an unaligned
    /// payload is copied with the header into one padded file image.
    fn stage_buffers(&self, st: &mut Staged, header: &[u8], data: &[u8]) -> Result<()> {
        let file_len = st.file_len as usize;
        if !self.direct {
            let mut b = self.bounce.take(header.len())?;
            b.as_mut_slice()[..header.len()].copy_from_slice(header);
            st.staging = Some(b);
            (st.head, st.main, st.tail) = (header.len(), data.len(), 0);
        } else if data.as_ptr() as usize % IO_ALIGN == 0 {
            let main = data.len() / IO_ALIGN * IO_ALIGN;
            let tail = data.len() - main;
            let mut b = self.bounce.take(header.len() + IO_ALIGN)?;
            let (hb, tb) = b.as_mut_slice()[..header.len() + IO_ALIGN].split_at_mut(header.len());
            hb.copy_from_slice(header);
            tb[..tail].copy_from_slice(&data[main..]);
            tb[tail..].fill(0);
            st.staging = Some(b);
            let tail_len = if tail > 0 { IO_ALIGN } else { 0 };
            (st.head, st.main, st.tail) = (header.len(), main, tail_len);
        } else {
            let padded = round_up(file_len);
            let mut b = self.bounce.take(padded)?;
            let img = &mut b.as_mut_slice()[..padded];
            img[..header.len()].copy_from_slice(header);
            img[header.len()..file_len].copy_from_slice(data);
            img[file_len..].fill(0);
            st.staging = Some(b);
            (st.head, st.main, st.tail) = (padded, 0, 0);
        }
        Ok(())
    }

    /// Records a block found on disk (deduplicated store).
    fn note_present(&self, key: &Key, file_len: u64) {
        let mut ix = self.lock_index();
        if !ix.touch(key) {
            ix.insert(*key, file_len);
        }
        self.counters.dedup.fetch_add(1, Relaxed);
    }

    /// Creates the file a block is written into before it is published: an unnamed
    /// `O_TMPFILE` file in the block's directory where the file system supports it (nothing
    /// to lock, nothing left behind by a crash), else a named temp file (below).
    fn create_temp(&self, key: &Key, block_dir: &Path) -> Result<TempFile> {
        self.ensure_dir(key, block_dir);
        if !self.unnamed_temps {
            return self.create_named_temp(key, block_dir);
        }
        let mut opened = sys::open_unnamed(block_dir, self.open_flags());
        if matches!(&opened, Err(e) if e.kind() == io::ErrorKind::NotFound) {
            std::fs::create_dir_all(block_dir)
                .map_err(|e| Error::io(format!("creating directory {}", block_dir.display()), e))?;
            opened = sys::open_unnamed(block_dir, self.open_flags());
        }
        opened.map(TempFile::Unnamed).map_err(|e| {
            Error::io(
                format!("creating an unnamed block file in {}", block_dir.display()),
                e,
            )
        })
    }

    /// Creates and locks a unique named temp file next to the block's final path. A cleaner
    /// in another process may unlink a fresh temp file before its writer locks it; the
    /// writer notices (no links left) and starts over with a new name.
    fn create_named_temp(&self, key: &Key, block_dir: &Path) -> Result<TempFile> {
        let mut created_dirs = false;
        for _ in 0..100 {
            let seq = self.seq.fetch_add(1, Relaxed);
            let temp = block_dir.join(path::temp_name(key, self.pid, seq));
            let opened = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(self.open_flags())
                .open(&temp);
            let file = match opened {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound && !created_dirs => {
                    std::fs::create_dir_all(block_dir).map_err(|e| {
                        Error::io(format!("creating directory {}", block_dir.display()), e)
                    })?;
                    created_dirs = true;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(Error::io(
                        format!("creating block temp file {}", temp.display()),
                        e,
                    ))
                }
            };
            // From here on the file is removed on any failure.
            let mut named = TempFile::Named {
                file,
                path: temp.clone(),
                published: false,
            };
            sys::flock_exclusive(named.file(), true)
                .map_err(|e| Error::io(format!("locking {}", temp.display()), e))?;
            match named.file().metadata() {
                Ok(m) if m.nlink() > 0 => return Ok(named),
                Ok(_) => {
                    // A cleaner removed it between create and lock: the name is not ours
                    // any more, so dropping `named` must not remove it.
                    named.disown_name();
                    continue;
                }
                Err(e) => return Err(Error::io(format!("stat of {}", temp.display()), e)),
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
    fn create_fanout_dirs(&self) {
        for i in 0..256 {
            if !self.dirs.test(i) {
                self.make_fanout_dir(i, &self.dir.join(path::fanout_name(i)));
            }
        }
    }

    fn load(&self, key: &Key, dst: &mut [u8]) -> Result<u64> {
        let p = path::block_path(&self.dir, key);
        if dst.is_empty() {
            return Err(err!(
                InvalidArgument,
                "loading block {}: buffer length is 0",
                p.display()
            ));
        }
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(self.open_flags())
            .open(&p)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.counters.misses.fetch_add(1, Relaxed);
                self.lock_index().remove(key);
                return Err(err!(NotFound, "block {key} not found ({})", p.display()));
            }
            Err(e) => return Err(Error::io(format!("opening block {}", p.display()), e)),
        };
        match self.read_verified(&file, key, dst) {
            Ok(()) => {
                self.counters.hits.fetch_add(1, Relaxed);
                self.counters
                    .bytes_read
                    .fetch_add(dst.len() as u64, Relaxed);
                self.lock_index().touch(key);
                Ok(dst.len() as u64)
            }
            Err(e) if e.kind() == ErrorKind::Corrupt => {
                // Only remove the file we read, not one a writer has renamed over it since.
                if sys::same_file(&file, &p) {
                    let _ = std::fs::remove_file(&p);
                }
                self.lock_index().remove(key);
                self.counters.corrupt.fetch_add(1, Relaxed);
                self.counters.misses.fetch_add(1, Relaxed);
                Err(e.context(format!("block {} is corrupt and was removed", p.display())))
            }
            Err(e) => {
                self.counters.misses.fetch_add(1, Relaxed);
                Err(e.context(format!("loading block {}", p.display())))
            }
        }
    }

    /// Reads and validates a block into `dst`. `Corrupt` for a damaged file, `LayoutMismatch`
    /// for an intact block whose payload length is not `dst.len()`.
    fn read_verified(&self, file: &File, key: &Key, dst: &mut [u8]) -> Result<()> {
        let io_err = |what: &str, e: io::Error| Error::io(what.to_string(), e);
        let size = file.metadata().map_err(|e| io_err("stat", e))?.len();
        let len = dst.len();
        let aligned_dst = !self.direct || dst.as_ptr() as usize % IO_ALIGN == 0;
        if aligned_dst && size == (IO_ALIGN + len) as u64 {
            // Fast path: one preadv of [header page | payload in place | tail page].
            let main = if self.direct {
                len / IO_ALIGN * IO_ALIGN
            } else {
                len
            };
            let tail = len - main;
            // One bounce buffer holds the header page and the tail page (one pool visit).
            let mut b = self.bounce.get(2 * IO_ALIGN)?;
            let (hb, tb) = b.as_mut_slice()[..2 * IO_ALIGN].split_at_mut(IO_ALIGN);
            let (head, _) = dst.split_at_mut(main);
            let tail_buf: &mut [u8] = if tail > 0 { &mut tb[..] } else { &mut [] };
            let got = sys::preadv_all(file, &mut [&mut hb[..], head, tail_buf], 0)
                .map_err(|e| io_err("reading", e))?;
            let prefix: [u8; 8] = hb[..8].try_into().expect("8 bytes");
            if format::header_len(&prefix).ok() == Some(IO_ALIGN) {
                let header = format::decode_header(hb)?;
                self.check(&header, key, size, len)?;
                if got as u64 != size {
                    return Err(err!(Corrupt, "short read: {got} of {size} bytes"));
                }
                if tail > 0 {
                    dst[main..].copy_from_slice(&tb[..tail]);
                }
                return self.verify_sum(&header, dst);
            }
            // A bigger header (or garbage): take the general path below.
        }
        // General path: read the whole file (bounded) into a bounce buffer.
        let want = (size as usize).min(len + format::MAX_HEADER);
        let mut b = self.bounce.get(round_up(want.max(8)))?;
        let cap = round_up(want.max(8));
        let got = sys::preadv_all(file, &mut [&mut b.as_mut_slice()[..cap]], 0)
            .map_err(|e| io_err("reading", e))?;
        let bytes = &b.as_slice()[..got.min(want)];
        let header = format::decode_header(bytes)?;
        self.check(&header, key, size, len)?;
        if got as u64 != size {
            return Err(err!(Corrupt, "short read: {got} of {size} bytes"));
        }
        dst.copy_from_slice(&bytes[header.data_offset..header.data_offset + len]);
        self.verify_sum(&header, dst)
    }

    fn check(&self, h: &Header, key: &Key, size: u64, len: usize) -> Result<()> {
        if h.key != *key {
            return Err(err!(Corrupt, "header holds key {} instead of {key}", h.key));
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

    fn verify_sum(&self, h: &Header, payload: &[u8]) -> Result<()> {
        if self.verify {
            let sum = format::checksum(payload);
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

    /// Rebuilds the index from the directory tree (LRU order from the files' access and
    /// modification times) and removes temp files whose writers are gone.
    fn scan(&self) -> Result<()> {
        let mut found: Vec<(i64, Key, u64)> = Vec::new();
        let read = |d: &Path| -> Result<Vec<std::fs::DirEntry>> {
            match std::fs::read_dir(d) {
                Ok(it) => Ok(it.filter_map(|e| e.ok()).collect()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(Error::io(format!("scanning {}", d.display()), e)),
            }
        };
        for a in read(&self.dir)? {
            let an = a.file_name();
            let Some(hi) = an.to_str().filter(|n| path::is_fanout_dir(n)) else {
                continue;
            };
            self.dirs
                .set(usize::from_str_radix(hi, 16).expect("two hex digits"));
            for f in read(&a.path())? {
                let name = f.file_name();
                let Some(name) = name.to_str() else { continue };
                match path::classify(name) {
                    path::Entry::Block(key) => {
                        if let Ok(m) = std::fs::symlink_metadata(f.path()) {
                            if m.is_file() {
                                found.push((m.atime().max(m.mtime()), key, m.len()));
                            }
                        }
                    }
                    path::Entry::Temp => clean_temp(&f.path()),
                    path::Entry::Other => {}
                }
            }
        }
        found.sort();
        let mut ix = self.lock_index();
        for (_, key, size) in found {
            ix.insert(key, size);
        }
        Ok(())
    }
}

/// Removes a temp file if no live writer holds its lock.
fn clean_temp(p: &Path) {
    let Ok(f) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(p)
    else {
        return;
    };
    if sys::flock_exclusive(&f, false).is_ok() && sys::same_file(&f, p) {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn clean_temp_respects_live_locks() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(path::temp_name(&Key([3; 16]), 1, 1));
        let f = File::create(&p).unwrap();
        sys::flock_exclusive(&f, false).unwrap();
        clean_temp(&p);
        assert!(p.exists(), "a locked temp file belongs to a live writer");
        drop(f);
        clean_temp(&p);
        assert!(!p.exists());
    }
}
