//! The disk slot file: one preallocated file of fixed-size slots for fast local spill of KV
//! blocks, owned by one process, with an in-memory index rebuilt from slot headers at open.
//!
//! - **One positioned write per spill**, no file-system metadata work: the file is reserved
//!   with `fallocate` at creation (a full disk fails at open with `NoSpace`).
//! - **Crash-safe at any instant (kill -9)**: an entry exists when its slot's 128-byte entry
//!   in the header table is valid. A write goes to a free slot when there is one (the old
//!   entry stays live until the new one is complete), else to the key's own slot or the
//!   least recently used one, whose table entry is invalidated first. Then one positioned
//!   write puts the slot's header page (header + metadata) and the payload; only after it
//!   completes is the table entry written, with a sequence number. A superseded, removed or
//!   evicted entry has its table entry invalidated before the write or remove that ended it
//!   returns, even while a read still uses the slot (only the slot's reuse waits for the
//!   read). A crash so leaves the old entry or no entry, never a mix, and never brings back
//!   an entry that was gone; at recovery, the highest sequence number wins for a key. With
//!   [`DiskConfig::sync`], `fdatasync` between the steps extends this to power loss.
//! - **Fast recovery**: the index is rebuilt from the header table alone (128 bytes per slot,
//!   read sequentially in parallel), not from one random read per slot.
//! - **Never serves bad bytes**: headers carry their own xxh3-64, the payload and metadata
//!   another (checked on read unless [`DiskConfig::verify`] is off); a mismatch drops the
//!   entry, frees its slot and returns `Corrupt`.
//! - **O(1) per operation** (hash map + intrusive LRU list, see `index`); I/O never holds the
//!   index lock, so reads and writes of different keys run in parallel; a slot being read is
//!   pinned and never reused under the read.
//! - **Single owner**: an exclusive `flock` on the file (released by the kernel when the
//!   owner dies); a second opener gets `Busy`.
//!
//! On-disk format: see `format.rs`.

mod batch;
pub(crate) mod check;
mod file;
pub(crate) mod format;
pub(crate) mod identity;
pub(crate) mod index;
mod metrics;
mod read;
mod write;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

pub use crate::io::vectored::RawSegment;
pub use batch::{RawRead, RawWrite, ReadItem, WriteItem};
pub use check::{entry_keys, inspect, verify, BadEntry, EntryKey, SlotFileReport, VerifyReport};
pub use format::{max_meta, Geometry, Key, MAX_META};

use crate::io::{direct, BouncePool, DirectIo, IoPool};
use crate::{err, Error, Result};
use index::Index;

/// How to open a slot file. [`DiskConfig::new`] fills the defaults.
#[derive(Clone, Debug)]
pub struct DiskConfig {
    /// Path of the slot file (created if absent; never a symlink).
    pub path: PathBuf,
    /// Payload capacity of one slot; rounded up to a multiple of 4096.
    pub slot_size: u64,
    /// Number of slots.
    pub num_slots: u64,
    /// Worker threads for batched submits and the recovery scan. Default 4.
    pub io_threads: usize,
    /// O_DIRECT mode, probed in the file's directory. Default `Auto`.
    pub direct_io: DirectIo,
    /// Check the payload and metadata checksum on every read. Default true.
    pub verify: bool,
    /// `fdatasync` after each write's payload and header (power-loss safety). Default false:
    /// writes then survive the death of the process (kill -9), not of the machine.
    pub sync: bool,
    /// The namespace the entries belong to ([`crate::Namespace::name`]): recorded in the
    /// file at creation; a reopen must ask for the same one (or, for a file created
    /// without, for none), else `LayoutMismatch`. Default `None`.
    pub namespace: Option<String>,
}

impl DiskConfig {
    /// A config with defaults: 4 I/O threads, direct I/O if available, verify on, no sync.
    pub fn new(path: impl Into<PathBuf>, slot_size: u64, num_slots: u64) -> Self {
        DiskConfig {
            path: path.into(),
            slot_size,
            num_slots,
            io_threads: 4,
            direct_io: DirectIo::Auto,
            verify: true,
            sync: false,
            namespace: None,
        }
    }
}

/// Counters and state of an open slot file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Number of slots.
    pub num_slots: u64,
    /// Payload capacity of one slot.
    pub slot_size: u64,
    /// Live entries.
    pub entries: u64,
    /// Free slots.
    pub free_slots: u64,
    /// Entries evicted (least recently used) to make room.
    pub evictions: u64,
    /// Reads that returned an entry.
    pub hits: u64,
    /// Reads of absent keys.
    pub misses: u64,
    /// Entries dropped because their header or checksum failed on read.
    pub corrupt_dropped: u64,
    /// Completed writes.
    pub writes: u64,
    /// Payload bytes written.
    pub bytes_written: u64,
    /// Payload bytes read.
    pub bytes_read: u64,
    /// Whether I/O uses O_DIRECT.
    pub direct: bool,
    /// Whether this open created the file (false: reopened and recovered).
    pub created: bool,
    /// Entries found by the recovery scan at open.
    pub recovered_entries: u64,
    /// Wall time of the recovery scan at open, in nanoseconds.
    pub recovery_ns: u64,
    /// CPU time (all threads of the process) spent during the recovery scan, nanoseconds.
    pub recovery_cpu_ns: u64,
}

/// Lengths of an entry: payload and metadata bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryLen {
    /// Payload bytes.
    pub len: u64,
    /// Metadata bytes.
    pub meta_len: u64,
}

struct Inner {
    file: File,
    table_map: memmap2::MmapRaw,
    path: PathBuf,
    geometry: Geometry,
    direct: bool,
    verify: bool,
    sync: bool,
    created: bool,
    index: Mutex<Index>,
    bounce: BouncePool,
    recovered: u64,
    recovery_ns: u64,
    recovery_cpu_ns: u64,
    /// The namespace recorded in the file, if any.
    identity: Option<String>,
    /// Latencies of writes, reads and lookups (atomics only).
    latency: crate::metrics::OpLatencies,
}

/// An open slot file. Cheap to share between threads (`&SlotFile` is `Sync`).
pub struct SlotFile {
    // Drop order: the pool first (it finishes queued batch items, which use `inner`).
    pool: IoPool,
    inner: Arc<Inner>,
    /// Listed in `kvr_metrics_text` while open.
    _metrics: crate::metrics::Registration,
}

impl std::fmt::Debug for SlotFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotFile")
            .field("path", &self.inner.path)
            .field("geometry", &self.inner.geometry)
            .field("direct", &self.inner.direct)
            .finish()
    }
}

fn hex(key: &[u8]) -> String {
    Key::display_bytes(key)
}

fn cpu_time_ns() -> u64 {
    // SAFETY: rusage is plain data; getrusage writes it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

impl SlotFile {
    /// Creates (and reserves) or reopens the slot file, takes the owner lock, and rebuilds
    /// the index from the slot headers. Errors: `InvalidArgument`, `NoSpace`,
    /// `LayoutMismatch` (existing file of another geometry or not a slot file), `Busy`
    /// (another handle owns it), `Unsupported` (direct I/O `On` where O_DIRECT fails),
    /// `Permission`, `Io`.
    pub fn open(cfg: &DiskConfig) -> Result<SlotFile> {
        let g = Geometry::new(cfg.slot_size, cfg.num_slots)
            .map_err(|e| e.context(format!("opening slot file {}", cfg.path.display())))?;
        if cfg.path.as_os_str().is_empty() {
            return Err(Error::invalid("slot file path is empty"));
        }
        let threads = if cfg.io_threads == 0 {
            4
        } else {
            cfg.io_threads
        };
        if threads > 1024 {
            return Err(err!(InvalidArgument, "{threads} I/O threads is too many"));
        }
        let dir = match cfg.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if let Some(ns) = &cfg.namespace {
            identity::validate(ns)?;
        }
        let direct = direct::resolve(cfg.direct_io, &dir)?;
        let owned = file::open_or_create(&cfg.path, &g, direct, cfg.namespace.as_deref())?;
        let (t0, c0) = (Instant::now(), cpu_time_ns());
        let (index, losers, recovered) = if owned.created {
            (Index::new(g.num_slots as u32), Vec::new(), 0)
        } else {
            let found = file::scan_table(&owned.table, &g, threads.max(8))
                .map_err(|e| e.context(format!("recovering slot file {}", cfg.path.display())))?;
            let (ix, losers) = Index::recover(&found);
            let n = ix.entries();
            (ix, losers, n)
        };
        // The mapping shares the page cache the scan just filled.
        let table_map = memmap2::MmapOptions::new()
            .offset(g.table_offset())
            .len(g.table_len() as usize)
            .map_raw(&owned.table)
            .map_err(|e| {
                Error::io(
                    format!("mapping the header table of {}", cfg.path.display()),
                    e,
                )
            })?;
        let recovery_ns = t0.elapsed().as_nanos() as u64;
        let recovery_cpu_ns = cpu_time_ns().saturating_sub(c0);
        let inner = Arc::new(Inner {
            table_map,
            file: owned.file,
            path: cfg.path.clone(),
            geometry: g,
            direct,
            verify: cfg.verify,
            sync: cfg.sync,
            created: owned.created,
            index: Mutex::new(index),
            bounce: BouncePool::new(2 * threads + 4),
            recovered,
            recovery_ns,
            recovery_cpu_ns,
            identity: cfg.namespace.clone(),
            latency: Default::default(),
        });
        // Older copies of a key left by a crash: invalidate them so they never resurface.
        for s in losers {
            inner.retire(s);
        }
        let pool = IoPool::new("kvr-disk", threads)?;
        let _metrics = crate::metrics::register(&inner);
        Ok(SlotFile {
            pool,
            inner,
            _metrics,
        })
    }

    /// The file's geometry.
    pub fn geometry(&self) -> Geometry {
        self.inner.geometry
    }

    /// Path of the file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Stores `data` (1..=slot_size bytes) and `meta` (0..=[`MAX_META`] bytes) under `key`,
    /// replacing its entry if present, else in a free slot, else evicting the least recently
    /// used entry. Errors: `TooLarge` (with both sizes), `InvalidArgument` (empty payload),
    /// `Busy` (every slot is being read or written right now), `Io`.
    pub fn write(&self, key: &Key, data: &[u8], meta: &[u8]) -> Result<()> {
        self.inner.write(&key.0, &[data], meta)
    }

    /// Like [`SlotFile::write`], under the whole engine `key` (1..=256 bytes, stored in the
    /// slot and compared on every read), the payload the concatenation of `segments` (each
    /// non-empty).
    pub fn write_segments(&self, key: &[u8], segments: &[&[u8]], meta: &[u8]) -> Result<()> {
        self.inner.write(key, segments, meta)
    }

    /// Reads the entry of the whole engine `key` scattered over `segments`, whose lengths
    /// must sum to the entry's payload (else `LayoutMismatch`), and its metadata into
    /// `meta_dst` (`TooSmall` if it does not fit). Returns the lengths. A slot holding
    /// another key of the same block name is `NotFound`.
    pub fn read_segments(
        &self,
        key: &[u8],
        segments: &mut [&mut [u8]],
        meta_dst: &mut [u8],
    ) -> Result<EntryLen> {
        match self.inner.read(key, segments, true, meta_dst)? {
            Ok(n) => Ok(n),
            Err(need) => Err(too_small(key, need, 0, meta_dst.len())),
        }
    }

    /// Reads `key`'s entry into `dst` and its metadata into `meta_dst`, and marks it most
    /// recently used. Errors: `NotFound`, `Corrupt` (the entry was dropped and its slot
    /// freed), `TooSmall` (see [`SlotFile::read_sized`] for the needed sizes), `Io`.
    pub fn read(&self, key: &Key, dst: &mut [u8], meta_dst: &mut [u8]) -> Result<EntryLen> {
        let cap = dst.len();
        match self.inner.read(&key.0, &mut [dst], false, meta_dst)? {
            Ok(n) => Ok(n),
            Err(need) => Err(too_small(&key.0, need, cap, meta_dst.len())),
        }
    }

    /// Like [`SlotFile::read`], but a too-small buffer gives `Ok(Err(needed lengths))`.
    pub fn read_sized(
        &self,
        key: &Key,
        dst: &mut [u8],
        meta_dst: &mut [u8],
    ) -> Result<std::result::Result<EntryLen, EntryLen>> {
        self.inner.read(&key.0, &mut [dst], false, meta_dst)
    }

    /// Whether `key` has an entry (does not change recency).
    pub fn contains(&self, key: &Key) -> bool {
        let started = Instant::now();
        let found = self.inner.lock().contains(key);
        self.inner.latency.lookup.record_since(started);
        found
    }

    /// Per-key presence of whole engine keys, from the index alone (this process owns the
    /// file, so the index is complete; no I/O): `present[i]` is set to 1 when `keys[i]` has
    /// an entry, else 0; returns how many do. Recency is unchanged. Keys that are not 1..=256
    /// bytes are absent.
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
        // Names first, outside the lock.
        let names: Vec<Option<Key>> = keys
            .iter()
            .map(|k| crate::key::check_key(k).ok().map(|_| name_of(k)))
            .collect();
        let ix = self.inner.lock();
        let mut hits = 0;
        for (p, name) in present.iter_mut().zip(&names) {
            *p = name.is_some_and(|n| ix.contains(&n)) as u8;
            hits += *p as usize;
        }
        Ok(hits)
    }

    /// Lengths of the entry of the whole engine `key`, if its name has one (does not change
    /// recency).
    pub fn entry_len_of(&self, key: &[u8]) -> Option<EntryLen> {
        crate::key::check_key(key).ok()?;
        self.entry_len(&name_of(key))
    }

    /// Removes the entry of the whole engine `key` (see [`SlotFile::remove`]).
    pub fn remove_key(&self, key: &[u8]) -> Result<bool> {
        crate::key::check_key(key)?;
        Ok(self.remove(&name_of(key)))
    }

    /// Lengths of `key`'s entry, if present (does not change recency).
    pub fn entry_len(&self, key: &Key) -> Option<EntryLen> {
        self.inner.lock().lengths(key).map(|(len, m)| EntryLen {
            len,
            meta_len: m as u64,
        })
    }

    /// Removes `key`'s entry (its header is invalidated on disk, so it stays gone after a
    /// crash). Returns whether it was present.
    pub fn remove(&self, key: &Key) -> bool {
        let retire = self.inner.lock().remove(key);
        match retire {
            None => false,
            Some(s) => {
                self.inner.retire(s);
                true
            }
        }
    }

    /// Keys from least to most recently used (O(n); for tests and diagnostics).
    pub fn lru_keys(&self) -> Vec<Key> {
        self.inner.lock().lru_order()
    }

    /// Counters and state.
    pub fn stats(&self) -> DiskStats {
        let i = &self.inner;
        let ix = i.lock();
        DiskStats {
            num_slots: i.geometry.num_slots,
            slot_size: i.geometry.slot_size,
            entries: ix.entries(),
            free_slots: ix.free_slots(),
            direct: i.direct,
            created: i.created,
            recovered_entries: i.recovered,
            recovery_ns: i.recovery_ns,
            recovery_cpu_ns: i.recovery_cpu_ns,
            // The activity counters, as the index counted them.
            ..ix.counters
        }
    }
}

/// The block name of a whole engine key in a slot file (which has no namespace).
fn name_of(key: &[u8]) -> Key {
    crate::key::block_name(b"", key)
}

fn too_small(key: &[u8], need: EntryLen, cap: usize, meta_cap: usize) -> Error {
    err!(
        TooSmall,
        "entry {} needs {} payload bytes and {} metadata bytes; buffers hold {cap} and {meta_cap}",
        Key::display_bytes(key),
        need.len,
        need.meta_len
    )
}

impl Inner {
    pub(super) fn lock(&self) -> MutexGuard<'_, Index> {
        // A poisoned lock only means a panic elsewhere; every index update is completed
        // before anything that can panic, so the data is consistent.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }
}
