//! What opening a store takes and what it reports: the config, the durability modes, the
//! counters, and the batch request types.

use std::path::PathBuf;

use super::Key;
use crate::io::vectored::RawSegment;
use crate::io::DirectIo;

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

/// How a store writes a block and publishes it under its final name, so that no reader ever
/// takes a partial block for a whole one and a killed writer leaves no block behind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WriteMode {
    /// The best the file system offers (probed at open): `UnnamedTemp` where it has
    /// `O_TMPFILE`, else `InPlace`. Only asked for; a store reports what it uses.
    #[default]
    Auto,
    /// Into an unnamed `O_TMPFILE` file, linked into place when complete: nothing to clean
    /// after a crash. Asked for where the file system lacks it, a store uses `InPlace`.
    UnnamedTemp,
    /// Into a named temp file (named after the store's writer lock file,
    /// `<store dir>/.writers/<id>`), hard-linked into place when complete: the protocol of
    /// file systems without `O_TMPFILE` before `InPlace`, kept selectable (8 requests per
    /// block on a FUSE mount such as GlusterFS).
    NamedTemp,
    /// Under the block's final name, created exclusively with no permission bits (mode
    /// 0: no block yet for any reader, lookup or dedup check), its header naming the
    /// writer's lock file; made readable (`fchmod` 0644) once written, which publishes it.
    /// A dead writer's unpublished file is removed by any cleaner (open, gc) once its
    /// writer lock is free. For file systems without `O_TMPFILE` (FUSE, NFS), where it
    /// takes 6 requests per block against the named temp file's 8.
    InPlace,
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
    /// How blocks are written and published. Default `Auto`.
    pub write_mode: WriteMode,
    /// The fields `namespace` was made from ([`crate::Namespace::name`]): recorded at open
    /// as `<root>/<namespace>/NAMESPACE.json` (once; an existing manifest must name the same
    /// namespace). `None` (default): no manifest.
    pub manifest: Option<crate::Namespace>,
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
            write_mode: WriteMode::Auto,
            manifest: None,
        }
    }

    /// A config with the defaults whose namespace is `ns`'s canonical name, recording `ns`
    /// as the namespace's manifest. `InvalidArgument` if `ns` has invalid fields.
    pub fn for_namespace(root: impl Into<PathBuf>, ns: &crate::Namespace) -> crate::Result<Self> {
        let mut cfg = FsConfig::new(root, ns.name()?);
        cfg.manifest = Some(ns.clone());
        Ok(cfg)
    }
}

/// Counters of one open store (this process's view).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsStats {
    /// Blocks this process knows of (found by the scan started at open, plus its own
    /// stores, minus removals; partial until `scan_complete`).
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
    /// True when blocks are written into unnamed `O_TMPFILE` files (`write_mode` is
    /// `UnnamedTemp`).
    pub unnamed_temp_files: bool,
    /// How blocks are written and published: `UnnamedTemp`, `NamedTemp` or `InPlace` (file
    /// systems without `O_TMPFILE`, such as NFS and FUSE mounts like GlusterFS).
    pub write_mode: WriteMode,
    /// True once the directory scan started at open has finished: `blocks` and `bytes`
    /// then count the whole store (as this process knows it), and the capacity is enforced.
    pub scan_complete: bool,
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

/// One block of an async batch of whole-key, segmented stores
/// ([`FsStore::submit_store_items`](super::FsStore::submit_store_items)).
#[derive(Clone, Copy, Debug)]
pub struct StoreItem<'a> {
    /// The whole engine key (1..=256 bytes).
    pub key: &'a [u8],
    /// The payload's segments, in order; each must stay valid until the job completes.
    pub segments: &'a [RawSegment],
}

/// One block of an async batch of whole-key, segmented loads
/// ([`FsStore::submit_load_items`](super::FsStore::submit_load_items)).
#[derive(Clone, Copy, Debug)]
pub struct LoadItem<'a> {
    /// The whole engine key (1..=256 bytes).
    pub key: &'a [u8],
    /// The destination segments, in order; their lengths sum to the block's payload. Each
    /// must stay valid and unaliased until the job completes.
    pub segments: &'a [RawSegment],
}

/// Whole-block requests seen as items of one segment each, for the tiers whose batches take
/// segment lists (the fs store and the object tier): `f` gets the items.
pub(crate) fn as_store_items<R>(reqs: &[StoreRequest], f: impl FnOnce(&[StoreItem]) -> R) -> R {
    let segments: Vec<[RawSegment; 1]> = reqs
        .iter()
        .map(|r| {
            [RawSegment {
                ptr: r.src.cast_mut(),
                len: r.len,
            }]
        })
        .collect();
    let items: Vec<StoreItem> = reqs
        .iter()
        .zip(&segments)
        .map(|(r, s)| StoreItem {
            key: &r.key.0,
            segments: s,
        })
        .collect();
    f(&items)
}

/// [`as_store_items`] for loads.
pub(crate) fn as_load_items<R>(reqs: &[LoadRequest], f: impl FnOnce(&[LoadItem]) -> R) -> R {
    let segments: Vec<[RawSegment; 1]> = reqs
        .iter()
        .map(|r| {
            [RawSegment {
                ptr: r.dst,
                len: r.len,
            }]
        })
        .collect();
    let items: Vec<LoadItem> = reqs
        .iter()
        .zip(&segments)
        .map(|(r, s)| LoadItem {
            key: &r.key.0,
            segments: s,
        })
        .collect();
    f(&items)
}
