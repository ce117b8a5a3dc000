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
//! - **O(1) per operation** (hash map + intrusive LRU list, see [`index`]); I/O never holds the
//!   index lock, so reads and writes of different keys run in parallel; a slot being read is
//!   pinned and never reused under the read.
//! - **Single owner**: an exclusive `flock` on the file (released by the kernel when the
//!   owner dies); a second opener gets `Busy`.
//!
//! On-disk format: see [`format`].

pub mod check;
mod file;
pub mod format;
pub mod identity;
pub mod index;
mod metrics;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

pub use crate::io::vectored::RawSegment;
pub use check::{inspect, verify, BadEntry, SlotFileReport, VerifyReport};
pub use format::{Geometry, Key, MAX_META};

use crate::io::job::Completer;
use crate::io::vectored::{
    payload_len, payload_len_mut, preadv_exact, pwritev_all, BatchEntry, SegmentBatch,
};
use crate::io::{direct, BouncePool, DirectIo, IoPool, Job, SegmentPlan};
use crate::{err, Error, ErrorKind, Result};
use format::{SlotHeader, PAGE, SLOT_HEADER_LEN};
use index::{Index, Pinned, Reservation};

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

/// One item of [`SlotFile::submit_write_items`]: a whole engine key, the payload's segments
/// and the metadata (`meta.ptr` may be NULL when `meta.len` is 0).
#[derive(Clone, Copy, Debug)]
pub struct WriteItem<'a> {
    /// The whole engine key (1..=256 bytes).
    pub key: &'a [u8],
    /// The payload's segments, in order.
    pub segments: &'a [RawSegment],
    /// The metadata.
    pub meta: RawSegment,
}

/// One item of [`SlotFile::submit_read_items`]: a whole engine key, the destination
/// segments (summing to the entry's payload), the metadata destination and where its length
/// goes.
#[derive(Clone, Copy, Debug)]
pub struct ReadItem<'a> {
    /// The whole engine key (1..=256 bytes).
    pub key: &'a [u8],
    /// The destination segments, in order.
    pub segments: &'a [RawSegment],
    /// The metadata destination (`ptr` may be NULL when `len` is 0).
    pub meta_dst: RawSegment,
    /// Receives the metadata length (also the needed one on `TooSmall`); may be NULL.
    pub meta_len_out: *mut u64,
}

/// One item of [`SlotFile::submit_write`]: raw caller buffers.
#[derive(Clone, Copy, Debug)]
pub struct RawWrite {
    /// Key.
    pub key: Key,
    /// Payload.
    pub src: *const u8,
    /// Payload bytes.
    pub len: usize,
    /// Metadata (may be NULL when `meta_len` is 0).
    pub meta: *const u8,
    /// Metadata bytes.
    pub meta_len: usize,
}

/// One item of [`SlotFile::submit_read`]: raw caller buffers and outputs.
#[derive(Clone, Copy, Debug)]
pub struct RawRead {
    /// Key.
    pub key: Key,
    /// Payload destination.
    pub dst: *mut u8,
    /// Its capacity.
    pub dst_cap: usize,
    /// Metadata destination (may be NULL when `meta_cap` is 0).
    pub meta_dst: *mut u8,
    /// Its capacity.
    pub meta_cap: usize,
    /// Receives the payload length on success or the needed one on `TooSmall` (may be NULL).
    pub len_out: *mut u64,
    /// Receives the metadata length likewise (may be NULL).
    pub meta_len_out: *mut u64,
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

    /// Submits a batch of writes to the I/O threads; item `i` of the returned job finishes
    /// with the payload bytes written or the error [`SlotFile::write`] would return.
    ///
    /// # Safety
    /// Every `src` (and non-NULL `meta`) must stay valid for reads of its length until the
    /// job has completed (waited on or dropped: dropping a job waits for it).
    pub unsafe fn submit_write(&self, ops: &[RawWrite]) -> Job {
        let inner = self.inner.clone();
        let task = move |op: RawWrite, done: Completer| {
            let r = (|| {
                // SAFETY: the caller keeps the buffers alive until the job completes.
                let data = unsafe { raw_slice(op.src, op.len, "src") }?;
                // SAFETY: as above.
                let meta = unsafe { raw_slice(op.meta, op.meta_len, "meta") }?;
                if data.is_empty() {
                    return Err(err!(InvalidArgument, "src length is 0"));
                }
                inner.write(&op.key.0, &[data], meta).map(|_| op.len as u64)
            })();
            done.finish(r);
        };
        // SAFETY: the buffers stay valid until the job completes (this function's contract).
        unsafe { self.pool.submit_batch(ops, task) }
    }

    /// Submits a batch of reads; item `i` finishes with the payload bytes read or the error
    /// [`SlotFile::read`] would return. Lengths go to `len_out`/`meta_len_out` (also the
    /// needed lengths on `TooSmall`).
    ///
    /// # Safety
    /// Every `dst`/`meta_dst` must stay valid for writes of its capacity, and every non-NULL
    /// `len_out`/`meta_len_out` for a `u64` write, unaliased, until the job has completed.
    pub unsafe fn submit_read(&self, ops: &[RawRead]) -> Job {
        let inner = self.inner.clone();
        let task = move |op: RawRead, done: Completer| {
            let r = (|| {
                // SAFETY: the caller keeps the buffers alive and unaliased until the job
                // completes.
                let dst = unsafe { raw_slice_mut(op.dst, op.dst_cap, "dst") }?;
                // SAFETY: as above.
                let meta = unsafe { raw_slice_mut(op.meta_dst, op.meta_cap, "meta_dst") }?;
                if dst.is_empty() {
                    return Err(err!(InvalidArgument, "dst length is 0"));
                }
                let (out, res) = match inner.read(&op.key.0, &mut [dst], false, meta)? {
                    Ok(n) => (n, Ok(n.len)),
                    Err(need) => (
                        need,
                        Err(too_small(&op.key.0, need, op.dst_cap, op.meta_cap)),
                    ),
                };
                if !op.len_out.is_null() {
                    // SAFETY: non-null outputs are writable until the job completes.
                    unsafe { op.len_out.write(out.len) };
                }
                if !op.meta_len_out.is_null() {
                    // SAFETY: as above.
                    unsafe { op.meta_len_out.write(out.meta_len) };
                }
                res
            })();
            done.finish(r);
        };
        // SAFETY: the buffers and outputs stay valid and unaliased until the job completes
        // (this function's contract).
        unsafe { self.pool.submit_batch(ops, task) }
    }
}

impl SlotFile {
    /// Submits a batch of whole-key, segmented writes; item `i` finishes with the payload
    /// bytes written or the error [`SlotFile::write_segments`] would return. Keys and segment
    /// lists are copied here.
    ///
    /// # Safety
    /// Every segment and non-NULL `meta` must stay valid for reads of its length until the
    /// job has completed (waited on or dropped: dropping a job waits for it).
    pub unsafe fn submit_write_items(&self, items: &[WriteItem]) -> Job {
        let mut batch = SegmentBatch::default();
        let ops: Vec<(BatchEntry, RawSegment)> = items
            .iter()
            .map(|it| (batch.push(it.key, it.segments), it.meta))
            .collect();
        let batch = Arc::new(batch);
        let inner = self.inner.clone();
        let task = move |(e, meta): (BatchEntry, RawSegment), done: Completer| {
            let r = (|| {
                // SAFETY: the caller keeps the buffers alive until the job completes.
                let data = unsafe { raw_segments(batch.segments(e)) }?;
                // SAFETY: as above.
                let meta = unsafe { raw_slice(meta.ptr, meta.len, "meta") }?;
                let n = payload_len(&data)?;
                inner.write(batch.key(e), &data, meta).map(|_| n as u64)
            })();
            done.finish(r);
        };
        // SAFETY: the buffers stay valid until the job completes (this function's contract).
        unsafe { self.pool.submit_batch(&ops, task) }
    }

    /// Submits a batch of whole-key, segmented reads; item `i` finishes with the payload
    /// bytes read or the error [`SlotFile::read_segments`] would return, and its metadata
    /// length goes to `meta_len_out` (also the needed length on `TooSmall`).
    ///
    /// # Safety
    /// Every segment, `meta_dst` (for its capacity) and non-NULL `meta_len_out` must stay
    /// valid for writes, unaliased, until the job has completed.
    pub unsafe fn submit_read_items(&self, items: &[ReadItem]) -> Job {
        let mut batch = SegmentBatch::default();
        let ops: Vec<(BatchEntry, RawSegment, *mut u64)> = items
            .iter()
            .map(|it| {
                (
                    batch.push(it.key, it.segments),
                    it.meta_dst,
                    it.meta_len_out,
                )
            })
            .collect();
        let batch = Arc::new(batch);
        let inner = self.inner.clone();
        let task = move |(e, meta, out): (BatchEntry, RawSegment, *mut u64), done: Completer| {
            let r = (|| {
                // SAFETY: the caller keeps the buffers alive and unaliased until the job
                // completes.
                let mut dst = unsafe { raw_segments_mut(batch.segments(e)) }?;
                // SAFETY: as above.
                let meta_dst = unsafe { raw_slice_mut(meta.ptr, meta.len, "meta_dst") }?;
                let key = batch.key(e);
                let (lens, res) = match inner.read(key, &mut dst, true, meta_dst)? {
                    Ok(n) => (n, Ok(n.len)),
                    Err(need) => (need, Err(too_small(key, need, 0, meta.len))),
                };
                if !out.is_null() {
                    // SAFETY: non-null outputs are writable until the job completes.
                    unsafe { out.write(lens.meta_len) };
                }
                res
            })();
            done.finish(r);
        };
        // SAFETY: the buffers and outputs stay valid and unaliased until the job completes
        // (this function's contract).
        unsafe { self.pool.submit_batch(&ops, task) }
    }
}

/// The block name of a whole engine key in a slot file (which has no namespace).
fn name_of(key: &[u8]) -> Key {
    crate::key::block_name(b"", key)
}

/// # Safety
/// Every segment must be valid for reads of its length for `'a`.
unsafe fn raw_segments<'a>(segments: &[RawSegment]) -> Result<Vec<&'a [u8]>> {
    segments
        .iter()
        .enumerate()
        // SAFETY: the caller's contract.
        .map(|(i, s)| unsafe { raw_slice(s.ptr, s.len, &format!("segment {i}")) })
        .collect()
}

/// # Safety
/// Every segment must be valid for unaliased writes of its length for `'a`.
unsafe fn raw_segments_mut<'a>(segments: &[RawSegment]) -> Result<Vec<&'a mut [u8]>> {
    segments
        .iter()
        .enumerate()
        // SAFETY: the caller's contract.
        .map(|(i, s)| unsafe { raw_slice_mut(s.ptr, s.len, &format!("segment {i}")) })
        .collect()
}

/// # Safety
/// A non-null `p` must be valid for reads of `len` bytes for `'a`.
unsafe fn raw_slice<'a>(p: *const u8, len: usize, name: &str) -> Result<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() || len > isize::MAX as usize {
        return Err(err!(
            InvalidArgument,
            "{name} is NULL or too long ({len} bytes)"
        ));
    }
    // SAFETY: non-null, bounded length; validity is the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// # Safety
/// A non-null `p` must be valid for unaliased writes of `len` bytes for `'a`.
unsafe fn raw_slice_mut<'a>(p: *mut u8, len: usize, name: &str) -> Result<&'a mut [u8]> {
    if len == 0 {
        return Ok(&mut []);
    }
    if p.is_null() || len > isize::MAX as usize {
        return Err(err!(
            InvalidArgument,
            "{name} is NULL or too long ({len} bytes)"
        ));
    }
    // SAFETY: non-null, bounded length; validity is the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, len) })
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
    fn lock(&self) -> MutexGuard<'_, Index> {
        // A poisoned lock only means a panic elsewhere; every index update is completed
        // before anything that can panic, so the data is consistent.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes slot `s`'s header table entry (zeros: the slot holds no entry).
    ///
    /// The table is a shared mapping of the file: a store lands in the page cache at once, so
    /// it survives the death of the process like a `pwrite` would, without a syscall or the
    /// inode lock that buffered writes take (which would serialise the O_DIRECT slot writes).
    /// Only the thread owning slot `s` (writer or retirer, by the index's slot state) writes
    /// its entry. A store torn by a kill fails the entry's checksum: no entry.
    fn write_table(&self, s: u32, entry: &[u8; SLOT_HEADER_LEN]) -> std::io::Result<()> {
        let off = s as usize * SLOT_HEADER_LEN;
        debug_assert!(off + SLOT_HEADER_LEN <= self.table_map.len());
        // SAFETY: `off + 128` is inside the mapping (s < num_slots, the mapping covers
        // num_slots * 128 bytes); no other thread writes this entry concurrently (see above)
        // and nothing in this process reads the mapping while it is shared.
        unsafe {
            std::ptr::copy_nonoverlapping(
                entry.as_ptr(),
                self.table_map.as_mut_ptr().add(off),
                SLOT_HEADER_LEN,
            )
        };
        if self.sync {
            let page = off / PAGE as usize * PAGE as usize;
            self.table_map.flush_range(page, PAGE as usize)?;
        }
        Ok(())
    }

    /// Invalidates a retiring slot's table entry, then frees the slot (or leaves it to the
    /// last read that still pins it).
    fn retire(&self, s: u32) {
        let ok = self.write_table(s, &[0; SLOT_HEADER_LEN]).is_ok();
        self.lock().finish_retire(s, ok);
    }

    fn write(&self, key: &[u8], data: &[&[u8]], meta: &[u8]) -> Result<()> {
        let started = Instant::now();
        let r = self.write_untimed(key, data, meta);
        self.latency.store.record_since(started);
        r
    }

    fn write_untimed(&self, key: &[u8], data: &[&[u8]], meta: &[u8]) -> Result<()> {
        let g = &self.geometry;
        crate::key::check_key(key)?;
        let len = payload_len(data).map_err(|e| e.context(format!("entry {}", hex(key))))?;
        if len as u64 > g.slot_size {
            return Err(err!(
                TooLarge,
                "entry {}: payload of {len} bytes does not fit a slot of {} bytes",
                hex(key),
                g.slot_size
            ));
        }
        let max_meta = format::max_meta(key.len());
        if meta.len() > max_meta {
            return Err(err!(
                TooLarge,
                "entry {}: metadata of {} bytes exceeds the {max_meta} bytes a slot holds \
                 with a {}-byte key",
                hex(key),
                meta.len(),
                key.len()
            ));
        }
        let name = name_of(key);
        let data_sum = format::data_checksum_segments(data, meta);
        let r = self.lock().reserve(&name)?;
        match self.write_slot(&r, &name, key, data, len, meta, data_sum) {
            Ok(()) => {
                let retire = self.lock().commit(&r, &name, len as u64, meta.len() as u32);
                if let Some(s) = retire {
                    self.retire(s);
                }
                Ok(())
            }
            Err(e) => {
                let s = self.lock().abort(&r);
                self.retire(s);
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn write_slot(
        &self,
        r: &Reservation,
        name: &Key,
        key: &[u8],
        data: &[&[u8]],
        len: usize,
        meta: &[u8],
        data_sum: u64,
    ) -> Result<()> {
        let off = self.geometry.slot_offset(r.slot);
        let plan = SegmentPlan::of(self.direct, data);
        // One pooled buffer: the header page, then the payload's bounce area (if any).
        let mut buf = self.bounce.get(PAGE as usize + plan.bounce_len)?;
        let (page, bounce) = buf.as_mut_slice().split_at_mut(PAGE as usize);
        let h = SlotHeader {
            key: *name,
            len: len as u64,
            meta_len: meta.len() as u32,
            seq: r.seq,
            data_sum,
            slot: r.slot,
        };
        if key.len() == 16 {
            // A 16-byte key is its own name: the version-1 entry, as before version 2.
            page[SLOT_HEADER_LEN + meta.len()..].fill(0);
            format::encode_slot_header(&h, meta, page);
        } else {
            page[SLOT_HEADER_LEN + key.len() + meta.len()..].fill(0);
            format::encode_slot_header_v2(&h, key, meta, page);
        }
        plan.fill_bounce(data, bounce);

        let io_err = |what: &str, e| {
            Error::io(
                format!(
                    "writing {what} of entry {} to slot {} of {}",
                    hex(key),
                    r.slot,
                    self.path.display()
                ),
                e,
            )
        };
        let sync = |what: &str| -> Result<()> {
            if self.sync {
                self.file.sync_data().map_err(|e| io_err(what, e))?;
            }
            Ok(())
        };
        // 1. The slot may hold a live or stale entry: drop its table entry first, so a crash
        //    during the payload write can never pair that entry with new bytes.
        if r.invalidate {
            self.write_table(r.slot, &[0; SLOT_HEADER_LEN])
                .map_err(|e| io_err("the table entry (invalidation)", e))?;
            sync("(sync) the table entry")?;
        }
        // 2. Header page (header, key, metadata) and payload in one positioned write.
        let mut parts: Vec<&[u8]> = Vec::with_capacity(data.len() + 2);
        parts.push(&page[..]);
        parts.extend(plan.in_place_parts(data));
        parts.push(&bounce[..plan.bounce_len]);
        pwritev_all(&self.file, &parts, off).map_err(|e| io_err("the payload", e))?;
        sync("(sync) the payload")?;
        // 3. The table entry: from now on a recovery finds the entry.
        let mut entry = [0u8; SLOT_HEADER_LEN];
        entry.copy_from_slice(&page[..SLOT_HEADER_LEN]);
        self.write_table(r.slot, &entry)
            .map_err(|e| io_err("the table entry", e))?;
        sync("(sync) the table entry")?;
        Ok(())
    }

    /// Reads the entry of `key` into `dst`'s segments: with `exact`, their lengths must sum
    /// to the payload's (else `LayoutMismatch`); without, `dst` is one buffer of at least the
    /// payload's length (else the needed lengths come back as `Ok(Err(..))`).
    fn read(
        &self,
        key: &[u8],
        dst: &mut [&mut [u8]],
        exact: bool,
        meta_dst: &mut [u8],
    ) -> Result<std::result::Result<EntryLen, EntryLen>> {
        let started = Instant::now();
        let r = self.read_untimed(key, dst, exact, meta_dst);
        self.latency.load.record_since(started);
        r
    }

    fn read_untimed(
        &self,
        key: &[u8],
        dst: &mut [&mut [u8]],
        exact: bool,
        meta_dst: &mut [u8],
    ) -> Result<std::result::Result<EntryLen, EntryLen>> {
        crate::key::check_key(key)?;
        // One buffer may be empty (a size query answered with `TooSmall`); segments may not.
        let cap = if exact {
            payload_len_mut(dst).map_err(|e| e.context(format!("entry {}", hex(key))))?
        } else {
            dst[0].len()
        };
        let name = name_of(key);
        let p = {
            let mut ix = self.lock();
            let Some(p) = ix.pin(&name) else {
                return Err(err!(
                    NotFound,
                    "no entry {} in slot file {}",
                    hex(key),
                    self.path.display()
                ));
            };
            let need = EntryLen {
                len: p.len,
                meta_len: p.meta_len as u64,
            };
            if exact && cap as u64 != p.len {
                ix.unpin(p.slot);
                return Err(err!(
                    LayoutMismatch,
                    "entry {} holds {} payload bytes, the segments hold {cap}",
                    hex(key),
                    p.len
                ));
            }
            if (cap as u64) < p.len || (meta_dst.len() as u64) < p.meta_len as u64 {
                ix.unpin(p.slot);
                return Ok(Err(need));
            }
            p
        };
        if !exact {
            // One buffer of at least the payload's length: read into its start.
            let whole = std::mem::take(&mut dst[0]);
            dst[0] = &mut whole[..p.len as usize];
        }
        let result = self.read_slot(&p, key, &name, dst, meta_dst);
        let mut ix = self.lock();
        match result {
            Ok(()) => {
                ix.counters.hits += 1;
                ix.counters.bytes_read += p.len;
                ix.unpin(p.slot);
                Ok(Ok(EntryLen {
                    len: p.len,
                    meta_len: p.meta_len as u64,
                }))
            }
            Err(e) => {
                let retire = if e.kind() == ErrorKind::Corrupt {
                    ix.drop_corrupt(&p)
                } else {
                    ix.unpin(p.slot);
                    None
                };
                drop(ix);
                if let Some(s) = retire {
                    log::warn!(
                        target: "kvr::disk",
                        "dropped corrupt entry {} in slot {} of {}: {e}",
                        hex(key),
                        p.slot,
                        self.path.display()
                    );
                    self.retire(s);
                }
                Err(e)
            }
        }
    }

    fn read_slot(
        &self,
        p: &Pinned,
        key: &[u8],
        name: &Key,
        dst: &mut [&mut [u8]],
        meta_dst: &mut [u8],
    ) -> Result<()> {
        let off = self.geometry.slot_offset(p.slot);
        let plan = SegmentPlan::of_mut(self.direct, dst);
        // One pooled buffer: the header page, then the payload's bounce area (if any).
        let mut buf = self.bounce.get(PAGE as usize + plan.bounce_len)?;
        let (page, bounce) = buf.as_mut_slice().split_at_mut(PAGE as usize);
        {
            let mut parts: Vec<&mut [u8]> = Vec::with_capacity(dst.len() + 2);
            parts.push(&mut page[..]);
            parts.extend(plan.in_place_parts_mut(dst));
            parts.push(&mut bounce[..plan.bounce_len]);
            preadv_exact(&self.file, &mut parts, off).map_err(|e| {
                Error::io(
                    format!(
                        "reading entry {} from slot {} of {}",
                        hex(key),
                        p.slot,
                        self.path.display()
                    ),
                    e,
                )
            })?;
        }
        plan.drain_bounce(bounce, dst);
        let corrupt = |why: String| {
            err!(
                Corrupt,
                "entry {} in slot {} of {}: {why}; entry dropped",
                hex(key),
                p.slot,
                self.path.display()
            )
        };
        let page = &page[..];
        let h = format::decode_slot_header(page, p.slot, self.geometry.slot_size)
            .ok_or_else(|| corrupt("slot header is damaged (checksum or fields)".into()))?;
        if h.key != *name || h.seq != p.seq || h.len != p.len || h.meta_len != p.meta_len {
            return Err(corrupt(format!(
                "slot header holds name {} seq {} len {}, index expected seq {} len {}",
                h.key, h.seq, h.len, p.seq, p.len
            )));
        }
        let (stored_key, meta) = format::slot_key_and_meta(page, &h);
        if stored_key != key {
            if name_of(stored_key) == *name {
                // Another key of the same name owns the slot: intact, never ours.
                return Err(err!(
                    NotFound,
                    "no entry {} in slot file {} (slot {} holds another key of the same name)",
                    hex(key),
                    self.path.display(),
                    p.slot
                ));
            }
            return Err(corrupt(format!("slot holds key {}", hex(stored_key))));
        }
        if self.verify {
            let parts: Vec<&[u8]> = dst.iter().map(|s| &s[..]).collect();
            let sum = format::data_checksum_segments(&parts, meta);
            if sum != h.data_sum {
                return Err(corrupt(format!(
                    "payload checksum mismatch (stored {:016x}, computed {sum:016x})",
                    h.data_sum
                )));
            }
        }
        meta_dst[..meta.len()].copy_from_slice(meta);
        Ok(())
    }
}
