//! C ABI of the fs block store (thin layer over [`crate::fs`]).

use std::ffi::{c_char, c_void};

use super::handle::BoxedHandle;
use super::job::kvr_job;
pub use super::kvr_block_key;
use super::status::{guard, kvr_status};
use super::tier;
use super::{arg_bytes, arg_bytes_mut, arg_key, arg_str, write_opt, write_out, write_sized_out};
use super::{direct_io_from_c, kvr_key, kvr_segment, open_handle, KVR_DIRECT_IO_AUTO};
use crate::fs::{FsConfig, FsStore, WriteMode};
use crate::{Dtype, Durability, Error, TensorSpec};

/// Opaque handle to an open fs block store (`kvr_fs_open` / `kvr_fs_close`).
pub struct kvr_fs {
    _opaque: [u8; 0],
}

impl BoxedHandle for kvr_fs {
    type Rust = FsStore;
    const ARG: &'static str = "fs";
}

/// `rank` value of a store shared by all ranks (no `r<rank>` subdirectory).
pub const KVR_FS_NO_RANK: i32 = -1;

/// `durability`: no flushing (the OS writes back).
pub const KVR_FS_DURABILITY_NONE: u32 = 0;
/// `durability`: `fdatasync` each block before linking it into place.
pub const KVR_FS_DURABILITY_FDATASYNC: u32 = 1;
/// `durability`: `fdatasync` before the link and `fsync` the directory after it.
pub const KVR_FS_DURABILITY_FDATASYNC_DIR: u32 = 2;

/// `write_mode` (config only): the best the file system offers, probed at open:
/// `KVR_FS_WRITE_UNNAMED_TEMP` where it has `O_TMPFILE`, else `KVR_FS_WRITE_IN_PLACE`.
pub const KVR_FS_WRITE_AUTO: u32 = 0;
/// `write_mode`: each block is written into an unnamed `O_TMPFILE` file, linked into place
/// when complete (a killed writer leaves nothing).
pub const KVR_FS_WRITE_UNNAMED_TEMP: u32 = 1;
/// `write_mode`: each block is written into a named temp file (named after the store's
/// writer lock file, `<store dir>/.writers/<id>`), hard-linked into place when complete.
pub const KVR_FS_WRITE_NAMED_TEMP: u32 = 2;
/// `write_mode`: each block is written under its final name, created with no permission
/// bits (no block yet for any reader or lookup) and published by `fchmod` to 0644 once
/// written; a dead writer's unpublished file is removed once its writer lock is free. The
/// automatic choice on file systems without `O_TMPFILE` (NFS, FUSE mounts such as
/// GlusterFS): 6 requests per block there against the named temp file's 8.
pub const KVR_FS_WRITE_IN_PLACE: u32 = 3;

/// How to open a store. Fill with `kvr_fs_config_default`, then set the fields.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvr_fs_config {
    /// `sizeof(kvr_fs_config)`; lets later versions add fields.
    pub struct_size: u32,
    /// Root directory (required; created if missing).
    pub root: *const c_char,
    /// Namespace (required unless `namespace_config` is set), e.g. `kvr_namespace_name` of
    /// the model and layout: no `/`, `..`, NUL, leading `.`.
    pub namespace_name: *const c_char,
    /// Tensor-parallel rank (own subdirectory `r<rank>`), or `KVR_FS_NO_RANK`. Default
    /// `KVR_FS_NO_RANK`.
    pub rank: i32,
    /// Threads loading async batches. Default 8.
    pub read_threads: u32,
    /// Threads storing async batches. Default 8.
    pub write_threads: u32,
    /// `KVR_DIRECT_IO_*`. Default `KVR_DIRECT_IO_AUTO`.
    pub direct_io: u32,
    /// `KVR_FS_DURABILITY_*`. Default `KVR_FS_DURABILITY_NONE`.
    pub durability: u32,
    /// Verify the xxh3-64 checksum on every load. Default true.
    pub verify: bool,
    /// Bound on the bytes of block files kept; least-recently-used blocks are removed to
    /// stay under it. 0 = unbounded (default).
    pub capacity_bytes: u64,
    /// The fields the namespace is made of: recorded as `<root>/<namespace>/NAMESPACE.json`
    /// (once). With it, `namespace_name` may be NULL (it is then `kvr_namespace_name` of
    /// these fields) or must be that name. NULL (default): no manifest.
    pub namespace_config: *const super::namespace::kvr_namespace_config,
    /// How blocks are written and published: `KVR_FS_WRITE_*`. Default `KVR_FS_WRITE_AUTO`.
    /// Added after `namespace_config`: a caller built against an older header passes a
    /// smaller `struct_size` and gets the default.
    pub write_mode: u32,
}

impl Default for kvr_fs_config {
    fn default() -> Self {
        kvr_fs_config {
            struct_size: std::mem::size_of::<Self>() as u32,
            root: std::ptr::null(),
            namespace_name: std::ptr::null(),
            rank: KVR_FS_NO_RANK,
            read_threads: 8,
            write_threads: 8,
            direct_io: KVR_DIRECT_IO_AUTO,
            durability: KVR_FS_DURABILITY_NONE,
            verify: true,
            capacity_bytes: 0,
            namespace_config: std::ptr::null(),
            write_mode: KVR_FS_WRITE_AUTO,
        }
    }
}

/// Counters of an open store, as seen by this process (filled by `kvr_fs_get_stats`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kvr_fs_stats {
    /// Set to `sizeof(kvr_fs_stats)` before the call.
    pub struct_size: u32,
    /// Blocks known to this process (scanned at open, plus its stores, minus removals).
    pub blocks: u64,
    /// File bytes of those blocks (headers included).
    pub bytes: u64,
    /// Loads that returned a block.
    pub hits: u64,
    /// Loads that found no usable block.
    pub misses: u64,
    /// Corrupt block files found and removed.
    pub corrupt_dropped: u64,
    /// Payload bytes loaded.
    pub bytes_read: u64,
    /// Payload bytes stored.
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
    /// `KVR_FS_WRITE_UNNAMED_TEMP`); false on file systems without `O_TMPFILE` (NFS, FUSE
    /// mounts such as GlusterFS: written in place) or as configured. Added after
    /// `direct_io`: a caller built against an older header passes a smaller `struct_size` and
    /// does not receive it.
    pub unnamed_temp_files: bool,
    /// True once the directory scan started at open has finished (`blocks`/`bytes` count
    /// the whole store; the capacity is enforced). Open returns without waiting for the
    /// scan of a large store.
    pub scan_complete: bool,
    /// How blocks are written: `KVR_FS_WRITE_UNNAMED_TEMP`, `KVR_FS_WRITE_NAMED_TEMP` or
    /// `KVR_FS_WRITE_IN_PLACE` (never `AUTO`). Added after `scan_complete`.
    pub write_mode: u32,
}

/// One block of an async store batch.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvr_fs_store_item {
    /// The block's key.
    pub key: kvr_block_key,
    /// Payload; must stay valid until the job completes.
    pub src: *const c_void,
    /// Payload bytes (non-zero).
    pub len: usize,
}

/// One block of an async load batch.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvr_fs_load_item {
    /// The block's key.
    pub key: kvr_block_key,
    /// Destination; must stay valid and untouched until the job completes.
    pub dst: *mut c_void,
    /// Expected payload bytes (non-zero).
    pub len: usize,
}

fn to_rust_config(c: &kvr_fs_config) -> crate::Result<FsConfig> {
    // SAFETY: `root` is a C string per the config contract (checked for NULL).
    let root = unsafe { arg_str(c.root, "config.root") }?;
    if root.is_empty() {
        return Err(Error::invalid("config.root is empty"));
    }
    let manifest = if c.namespace_config.is_null() {
        None
    } else {
        // SAFETY: a non-null `namespace_config` is a valid config per the config contract.
        Some(unsafe { super::namespace::namespace_from_c(c.namespace_config) }?)
    };
    let ns = match &manifest {
        Some(m) if c.namespace_name.is_null() => m.name()?,
        // SAFETY: as above.
        _ => unsafe { arg_str(c.namespace_name, "config.namespace_name") }?.to_string(),
    };
    let mut cfg = FsConfig::new(root, ns);
    cfg.manifest = manifest;
    cfg.rank = match c.rank {
        KVR_FS_NO_RANK => None,
        r if r >= 0 => Some(r as u32),
        r => {
            return Err(Error::invalid(format!(
                "config.rank {r} is negative and not KVR_FS_NO_RANK"
            )))
        }
    };
    if c.read_threads == 0
        || c.write_threads == 0
        || c.read_threads > 1024
        || c.write_threads > 1024
    {
        return Err(Error::invalid(format!(
            "config.read_threads ({}) and write_threads ({}) must be in 1..=1024",
            c.read_threads, c.write_threads
        )));
    }
    cfg.read_threads = c.read_threads as usize;
    cfg.write_threads = c.write_threads as usize;
    cfg.direct_io = direct_io_from_c(c.direct_io)?;
    cfg.durability = match c.durability {
        KVR_FS_DURABILITY_NONE => Durability::None,
        KVR_FS_DURABILITY_FDATASYNC => Durability::Fdatasync,
        KVR_FS_DURABILITY_FDATASYNC_DIR => Durability::FdatasyncDir,
        v => {
            return Err(Error::invalid(format!(
                "config.durability {v} is not a KVR_FS_DURABILITY_* value"
            )))
        }
    };
    cfg.verify = c.verify;
    cfg.capacity = c.capacity_bytes;
    cfg.write_mode = match c.write_mode {
        KVR_FS_WRITE_AUTO => WriteMode::Auto,
        KVR_FS_WRITE_UNNAMED_TEMP => WriteMode::UnnamedTemp,
        KVR_FS_WRITE_NAMED_TEMP => WriteMode::NamedTemp,
        KVR_FS_WRITE_IN_PLACE => WriteMode::InPlace,
        v => {
            return Err(Error::invalid(format!(
                "config.write_mode {v} is not a KVR_FS_WRITE_* value"
            )))
        }
    };
    Ok(cfg)
}

/// Fills `*config` with the documented defaults (`root` and `namespace_name` left NULL).
#[no_mangle]
pub extern "C" fn kvr_fs_config_default(config: *mut kvr_fs_config) -> kvr_status {
    guard(|| {
        // SAFETY: checked for NULL; the caller provides a writable config struct.
        unsafe { write_out(config, kvr_fs_config::default(), "config") }
    })
}

/// Opens a store on `config->root` / `config->namespace_name` [/ `r<rank>`], creating
/// directories, probing O_DIRECT, scanning existing blocks and removing dead writers' temp
/// files. On success `*out` owns the handle; close it with `kvr_fs_close`.
/// Errors: `KVR_ERR_INVALID_ARGUMENT` (bad namespace, values), `KVR_ERR_UNSUPPORTED`
/// (`KVR_DIRECT_IO_ON` where O_DIRECT is refused), `KVR_ERR_PERMISSION`, `KVR_ERR_IO`.
#[no_mangle]
pub extern "C" fn kvr_fs_open(config: *const kvr_fs_config, out: *mut *mut kvr_fs) -> kvr_status {
    guard(|| {
        // SAFETY: `config` is NULL or a config of `struct_size` bytes; `out` NULL or writable.
        unsafe { open_handle(config, out, |c| FsStore::open(&to_rust_config(c)?)) }
    })
}

/// Closes a store after finishing queued async work. Jobs must be freed first or later
/// (a job outlives its store safely). `kvr_fs_close(NULL)` is a no-op.
#[no_mangle]
pub extern "C" fn kvr_fs_close(fs: *mut kvr_fs) {
    kvr_fs::free(fs)
}

/// Stores `len` bytes at `src` as the block `*key` (a `U8` tensor), unless it exists
/// (deduplicated: `KVR_OK`, nothing written). Atomic: readers see the whole block or none.
/// Errors: `KVR_ERR_INVALID_ARGUMENT`, `KVR_ERR_NO_SPACE` (ENOSPC, EDQUOT, EFBIG; nothing
/// partial is left), `KVR_ERR_TOO_LARGE` (bigger than the capacity), `KVR_ERR_IO`.
#[no_mangle]
pub extern "C" fn kvr_store_block(
    fs: *const kvr_fs,
    key: *const kvr_block_key,
    src: *const c_void,
    len: usize,
) -> kvr_status {
    tier::store_block(fs, key, src, len)
}

/// Like `kvr_store_block`, recording the payload's safetensors `dtype` ("F16", "BF16", ...)
/// and `shape` (`ndim` dimensions, whose product times the dtype size must be `len`).
#[no_mangle]
pub extern "C" fn kvr_store_block_tensor(
    fs: *const kvr_fs,
    key: *const kvr_block_key,
    src: *const c_void,
    len: usize,
    dtype: *const c_char,
    shape: *const u64,
    ndim: usize,
) -> kvr_status {
    guard(|| {
        let (s, k) = (kvr_fs::try_ref(fs)?, arg_key(key)?);
        // SAFETY: `src` is valid for `len` bytes per the contract.
        let data = unsafe { arg_bytes(src.cast(), len, "src", false) }?;
        // SAFETY: NUL-terminated string per the contract.
        let dtype = unsafe { arg_str(dtype, "dtype") }?;
        if ndim > 64 {
            return Err(Error::invalid(format!("ndim {ndim} exceeds 64")));
        }
        let dims = if ndim == 0 {
            &[][..]
        } else {
            if shape.is_null() {
                return Err(Error::invalid(format!("shape is NULL (ndim {ndim})")));
            }
            // SAFETY: non-null and valid for `ndim` u64 values per the contract.
            unsafe { std::slice::from_raw_parts(shape, ndim) }
        };
        let spec = TensorSpec {
            dtype: Dtype::from_name(dtype)?,
            shape: dims.to_vec(),
        };
        s.store_tensor(&k, data, &spec).map(|_| ())
    })
}

/// Loads the block `*key` into `len` bytes at `dst`. `KVR_ERR_NOT_FOUND` if absent;
/// `KVR_ERR_CORRUPT` if the file failed validation (it was removed; the message names it);
/// `KVR_ERR_LAYOUT_MISMATCH` if the block is intact but not `len` bytes long. On any error
/// the contents of `dst` are unspecified; success always means exactly the stored bytes.
#[no_mangle]
pub extern "C" fn kvr_load_block(
    fs: *const kvr_fs,
    key: *const kvr_block_key,
    dst: *mut c_void,
    len: usize,
) -> kvr_status {
    tier::load_block(fs, key, dst, len)
}

/// Sets `*out` to whether the block `*key` exists (written by any process).
#[no_mangle]
pub extern "C" fn kvr_fs_contains(
    fs: *const kvr_fs,
    key: *const kvr_block_key,
    out: *mut bool,
) -> kvr_status {
    tier::contains(fs, key, out)
}

/// Sets `*hits` to how many leading keys of `keys[0..n]` exist (the reusable prefix).
/// `n` may be 0 (then `keys` may be NULL).
#[no_mangle]
pub extern "C" fn kvr_fs_lookup_prefix(
    fs: *const kvr_fs,
    keys: *const kvr_block_key,
    n: usize,
    hits: *mut usize,
) -> kvr_status {
    tier::lookup_prefix(fs, keys, n, hits)
}

/// Removes the block `*key`: `KVR_OK`, or `KVR_ERR_NOT_FOUND` if there was none. Readers
/// that already opened it finish reading it.
#[no_mangle]
pub extern "C" fn kvr_fs_remove(fs: *const kvr_fs, key: *const kvr_block_key) -> kvr_status {
    tier::remove(fs, key)
}

/// Writes the NUL-terminated path of block `*key` (existing or not) into `buf` of `cap`
/// bytes; `*needed` (may be NULL) receives the size including the NUL. `KVR_ERR_TOO_SMALL`
/// if `cap` is too small (then only `*needed` is written).
#[no_mangle]
pub extern "C" fn kvr_fs_block_path(
    fs: *const kvr_fs,
    key: *const kvr_block_key,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> kvr_status {
    guard(|| {
        let (s, k) = (kvr_fs::try_ref(fs)?, arg_key(key)?);
        let p = s.block_path(&k);
        let text = p.to_string_lossy();
        let need = text.len() + 1;
        // SAFETY: `needed` is NULL or writable per the contract.
        unsafe { write_opt(needed, need) };
        if cap < need {
            return Err(crate::err!(
                TooSmall,
                "path needs {need} bytes, buffer has {cap}"
            ));
        }
        // SAFETY: `buf` is valid for `cap` >= need bytes per the contract (NULL rejected).
        let out = unsafe { arg_bytes_mut(buf.cast(), cap, "buf") }?;
        out[..text.len()].copy_from_slice(text.as_bytes());
        out[text.len()] = 0;
        Ok(())
    })
}

/// Fills `*out` with this process's counters. Set `out->struct_size = sizeof(kvr_fs_stats)`.
#[no_mangle]
pub extern "C" fn kvr_fs_get_stats(fs: *const kvr_fs, out: *mut kvr_fs_stats) -> kvr_status {
    guard(|| {
        let s = kvr_fs::try_ref(fs)?;
        let st = s.stats();
        let full = kvr_fs_stats {
            struct_size: std::mem::size_of::<kvr_fs_stats>() as u32,
            blocks: st.blocks,
            bytes: st.bytes,
            hits: st.hits,
            misses: st.misses,
            corrupt_dropped: st.corrupt_dropped,
            bytes_read: st.bytes_read,
            bytes_written: st.bytes_written,
            stores: st.stores,
            dedup_hits: st.dedup_hits,
            evictions: st.evictions,
            direct_io: st.direct_io,
            unnamed_temp_files: st.unnamed_temp_files,
            scan_complete: st.scan_complete,
            write_mode: match st.write_mode {
                WriteMode::Auto | WriteMode::UnnamedTemp => KVR_FS_WRITE_UNNAMED_TEMP,
                WriteMode::NamedTemp => KVR_FS_WRITE_NAMED_TEMP,
                WriteMode::InPlace => KVR_FS_WRITE_IN_PLACE,
            },
        };
        // SAFETY: `out` is NULL or points to at least `out->struct_size` writable bytes.
        unsafe { write_sized_out(out, full, "out") }
    })
}

/// Submits `n` (>= 1) blocks to store on the store's write threads; `*out` receives the job
/// (`kvr_job_wait` / `kvr_job_poll` / `kvr_job_item_status`, whose bytes are 0 for a
/// deduplicated block; free with `kvr_job_free`). Every item is checked first (NULL or empty
/// buffers reject the whole batch). The `src` buffers must stay valid until the job is done.
#[no_mangle]
pub extern "C" fn kvr_fs_submit_store(
    fs: *const kvr_fs,
    items: *const kvr_fs_store_item,
    n: usize,
    out: *mut *mut kvr_job,
) -> kvr_status {
    tier::submit_store(fs, items, n, out)
}

/// Submits `n` (>= 1) blocks to load on the store's read threads; per-item results as for
/// `kvr_load_block`. The `dst` buffers must stay valid and untouched until the job is done.
#[no_mangle]
pub extern "C" fn kvr_fs_submit_load(
    fs: *const kvr_fs,
    items: *const kvr_fs_load_item,
    n: usize,
    out: *mut *mut kvr_job,
) -> kvr_status {
    tier::submit_load(fs, items, n, out)
}

/// Stores the concatenation of `segments[0..num_segments]` (each non-NULL and non-empty) as
/// a `U8` block under the whole engine `key` (1..=`KVR_MAX_KEY_LEN` bytes, stored in the
/// block and compared on every load), unless a block of that key exists. Otherwise as
/// `kvr_store_block` (a 16-byte key is the same block as that `kvr_block_key`).
/// Errors: also `KVR_ERR_INVALID_ARGUMENT` for a NULL, empty or over-long key, a NULL or
/// empty segment, no segments, or lengths that overflow.
#[no_mangle]
pub extern "C" fn kvr_fs_store(
    fs: *const kvr_fs,
    key: kvr_key,
    segments: *const kvr_segment,
    num_segments: usize,
) -> kvr_status {
    tier::store_key(fs, key, segments, num_segments)
}

/// Loads the block of the whole engine `key` scattered over `segments[0..num_segments]`,
/// whose lengths must sum to the block's payload: `KVR_ERR_LAYOUT_MISMATCH` (block kept)
/// otherwise. `KVR_ERR_NOT_FOUND` when absent (also when the file of its name holds another
/// key: never another key's bytes); other errors as `kvr_load_block`.
#[no_mangle]
pub extern "C" fn kvr_fs_load(
    fs: *const kvr_fs,
    key: kvr_key,
    segments: *const kvr_segment,
    num_segments: usize,
) -> kvr_status {
    tier::load_key(fs, key, segments, num_segments)
}

/// Per-key presence: `present[i]` = 1 when a block of `keys[i]` exists, else 0 (one byte per
/// key, so a connector hands the array to numpy/torch as booleans without unpacking bits);
/// `*hits` (may be NULL) receives how many exist. Keys this process stored or has seen are
/// answered from the in-memory index without I/O; any other key costs one `stat` of its
/// path (blocks other processes or hosts stored; a found one joins the index). Keys that
/// are NULL, empty or over-long are absent. `n` may be 0.
#[no_mangle]
pub extern "C" fn kvr_fs_lookup(
    fs: *const kvr_fs,
    keys: *const kvr_key,
    n: usize,
    present: *mut u8,
    hits: *mut usize,
) -> kvr_status {
    tier::lookup(fs, keys, n, present, hits)
}

/// Removes the block of the whole engine `key`: `KVR_OK`, or `KVR_ERR_NOT_FOUND`.
#[no_mangle]
pub extern "C" fn kvr_fs_remove_key(fs: *const kvr_fs, key: kvr_key) -> kvr_status {
    tier::remove_key(fs, key)
}
