//! C ABI of the disk slot file.

use std::ffi::c_char;
use std::path::PathBuf;

use super::handle::BoxedHandle;
use super::job::{kvr_job, submit_batch};
use super::status::{guard, kvr_status};
use super::tier;
use super::{arg_bytes, arg_bytes_mut, arg_key, arg_str, kvr_block_key, write_out};
use super::{arg_segments, arg_whole_key, kvr_key, kvr_segment, write_opt};
use super::{direct_io_from_c, open_handle, write_sized_out, KVR_DIRECT_IO_AUTO};
use crate::disk::{DiskConfig, RawRead, RawWrite, SlotFile};
use crate::{Error, Key};

/// Bytes of a slot file key.
pub const KVR_DISK_KEY_LEN: u32 = 16;
/// Largest user metadata per entry, in bytes (the rest of a slot's 4 KiB header page) under
/// a 16-byte key; under a key of any other length `n`, `KVR_DISK_MAX_META - n` (the whole key
/// shares the page).
pub const KVR_DISK_MAX_META: u32 = 3968;
const _: () = assert!(KVR_DISK_MAX_META as usize == crate::disk::MAX_META);

/// Opaque handle to an open slot file (`kvr_disk_open` / `kvr_disk_close`).
pub struct kvr_disk {
    _opaque: [u8; 0],
}

impl BoxedHandle for kvr_disk {
    type Rust = SlotFile;
    const ARG: &'static str = "disk";
}

/// How to open a slot file. Fill with `kvr_disk_config_default`, then set the fields.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvr_disk_config {
    /// `sizeof(kvr_disk_config)`; lets later versions add fields.
    pub struct_size: u32,
    /// Path of the slot file (required). Created and reserved if absent; an existing file
    /// must have the same geometry. Never a symlink.
    pub path: *const c_char,
    /// Payload capacity of one slot in bytes (required, non-zero); rounded up to 4096.
    pub slot_size: u64,
    /// Number of slots (required, non-zero).
    pub num_slots: u64,
    /// Threads serving `kvr_disk_submit_*` batches (and the recovery scan). Default 4.
    pub io_threads: u32,
    /// `KVR_DIRECT_IO_AUTO` (default), `KVR_DIRECT_IO_ON` or `KVR_DIRECT_IO_OFF`.
    pub direct_io: u32,
    /// Check the payload and metadata checksum on every read. Default true.
    pub verify: bool,
    /// `fdatasync` after each write (survives power loss, not only process death). Default
    /// false.
    pub sync: bool,
    /// The namespace the entries belong to (`kvr_namespace_name`), recorded in the file at
    /// creation; reopening with another one (or none, for a file created with one, and vice
    /// versa) fails with `KVR_ERR_LAYOUT_MISMATCH`. NULL (default): none.
    pub namespace_name: *const c_char,
}

impl Default for kvr_disk_config {
    fn default() -> Self {
        kvr_disk_config {
            struct_size: std::mem::size_of::<Self>() as u32,
            path: std::ptr::null(),
            slot_size: 0,
            num_slots: 0,
            io_threads: 4,
            direct_io: KVR_DIRECT_IO_AUTO,
            verify: true,
            sync: false,
            namespace_name: std::ptr::null(),
        }
    }
}

/// Counters and state of an open slot file (filled by `kvr_disk_get_stats`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kvr_disk_stats {
    /// Set to `sizeof(kvr_disk_stats)` before the call.
    pub struct_size: u32,
    /// True if I/O uses O_DIRECT, false if buffered.
    pub direct_io: bool,
    /// True if this open created the file, false if it reopened (and recovered) one.
    pub created: bool,
    /// Number of slots.
    pub num_slots: u64,
    /// Payload capacity of one slot (rounded up to 4096).
    pub slot_size: u64,
    /// Live entries.
    pub entries: u64,
    /// Free slots.
    pub free_slots: u64,
    /// Entries evicted (least recently used) to make room for writes.
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
    /// Entries the recovery scan found at open.
    pub recovered_entries: u64,
    /// Wall time of the recovery scan at open, in nanoseconds.
    pub recovery_ns: u64,
    /// CPU time of the process during the recovery scan, in nanoseconds.
    pub recovery_cpu_ns: u64,
}

/// One write of a `kvr_disk_submit_write` batch.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvr_disk_write_item {
    /// Key.
    pub key: kvr_block_key,
    /// Payload (1..=slot_size bytes), valid until the job completes.
    pub src: *const u8,
    /// Payload bytes.
    pub len: u64,
    /// Metadata (NULL when `meta_len` is 0), valid until the job completes.
    pub meta: *const u8,
    /// Metadata bytes (at most `KVR_DISK_MAX_META`).
    pub meta_len: u64,
}

/// One read of a `kvr_disk_submit_read` batch. `len` and `meta_len` are outputs, written
/// when the item finishes (also on `KVR_ERR_TOO_SMALL`, with the needed sizes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvr_disk_read_item {
    /// Key.
    pub key: kvr_block_key,
    /// Payload destination, valid until the job completes.
    pub dst: *mut u8,
    /// Its capacity.
    pub dst_cap: u64,
    /// Metadata destination (NULL when `meta_cap` is 0).
    pub meta_dst: *mut u8,
    /// Its capacity.
    pub meta_cap: u64,
    /// Output: payload bytes read (or needed).
    pub len: u64,
    /// Output: metadata bytes read (or needed).
    pub meta_len: u64,
}

/// Fills `*config` with the documented defaults (fields required by `kvr_disk_open` are
/// left zero/NULL).
#[no_mangle]
pub extern "C" fn kvr_disk_config_default(config: *mut kvr_disk_config) -> kvr_status {
    guard(|| {
        // SAFETY: checked for NULL; the caller provides a writable config struct.
        unsafe { write_out(config, kvr_disk_config::default(), "config") }
    })
}

fn to_rust_config(c: &kvr_disk_config) -> crate::Result<DiskConfig> {
    // SAFETY: `path` is a C string per the config contract (checked for NULL).
    let path = unsafe { arg_str(c.path, "config.path") }?;
    if path.is_empty() {
        return Err(Error::invalid("config.path is empty"));
    }
    let mut cfg = DiskConfig::new(PathBuf::from(path), c.slot_size, c.num_slots);
    cfg.io_threads = c.io_threads as usize;
    cfg.direct_io = direct_io_from_c(c.direct_io)?;
    cfg.verify = c.verify;
    cfg.sync = c.sync;
    if !c.namespace_name.is_null() {
        // SAFETY: a non-null `namespace_name` is a C string per the config contract.
        cfg.namespace = Some(unsafe { arg_str(c.namespace_name, "config.namespace_name") }?.into());
    }
    Ok(cfg)
}

/// Creates and reserves (`fallocate`) or reopens a slot file, takes its owner lock and
/// rebuilds the index from the slot headers. On success `*out` owns the handle; close it
/// with `kvr_disk_close`.
/// Errors: `KVR_ERR_INVALID_ARGUMENT`, `KVR_ERR_NO_SPACE` (the file does not fit),
/// `KVR_ERR_LAYOUT_MISMATCH` (existing file of another geometry or namespace, or not a
/// slot file),
/// `KVR_ERR_BUSY` (another live handle owns the file), `KVR_ERR_UNSUPPORTED` (direct I/O
/// `ON` where O_DIRECT fails), `KVR_ERR_CORRUPT` (damaged file header), `KVR_ERR_IO`.
#[no_mangle]
pub extern "C" fn kvr_disk_open(
    config: *const kvr_disk_config,
    out: *mut *mut kvr_disk,
) -> kvr_status {
    guard(|| {
        // SAFETY: `config` is NULL or a config of `struct_size` bytes; `out` NULL or writable.
        unsafe { open_handle(config, out, |c| SlotFile::open(&to_rust_config(c)?)) }
    })
}

/// Closes a slot file: waits for submitted batch items, releases the owner lock. Entries
/// stay in the file for the next open. `kvr_disk_close(NULL)` is a no-op.
#[no_mangle]
pub extern "C" fn kvr_disk_close(disk: *mut kvr_disk) {
    kvr_disk::free(disk)
}

/// Stores `len` bytes at `src` (1..=slot_size) and `meta_len` bytes of metadata at `meta`
/// (NULL when `meta_len` is 0; at most `KVR_DISK_MAX_META`) under the 16-byte `key`:
/// replaces the key's entry, else takes a free slot, else evicts the least recently used
/// entry. A crash at any point leaves the old entry or none, never a mix.
/// Errors: `KVR_ERR_TOO_LARGE` (payload or metadata does not fit; message gives both sizes),
/// `KVR_ERR_INVALID_ARGUMENT`, `KVR_ERR_BUSY` (every slot is being read or written),
/// `KVR_ERR_IO`.
#[no_mangle]
pub extern "C" fn kvr_disk_write(
    disk: *const kvr_disk,
    key: *const kvr_block_key,
    src: *const u8,
    len: u64,
    meta: *const u8,
    meta_len: u64,
) -> kvr_status {
    guard(|| {
        let (d, key) = (kvr_disk::try_ref(disk)?, arg_key(key)?);
        // SAFETY: `src` is NULL or readable for `len` bytes.
        let data = unsafe { arg_bytes(src, len as usize, "src", false) }?;
        // SAFETY: `meta` is NULL or readable for `meta_len` bytes.
        let meta = unsafe { arg_bytes(meta, meta_len as usize, "meta", true) }?;
        d.write(&key, data, meta)
    })
}

/// Reads `key`'s entry into `dst` (capacity `dst_cap`) and its metadata into `meta_dst`
/// (capacity `meta_cap`; may be NULL/0 when entries carry no metadata); writes the lengths
/// to `*len` and `*meta_len` and marks the entry most recently used.
/// Errors: `KVR_ERR_NOT_FOUND`; `KVR_ERR_TOO_SMALL` (the needed sizes are written to `*len`
/// and `*meta_len`); `KVR_ERR_CORRUPT` (header or checksum failed: the entry was dropped and
/// its slot freed; the next read gives `KVR_ERR_NOT_FOUND`); `KVR_ERR_INVALID_ARGUMENT`;
/// `KVR_ERR_IO`. The contents of `dst` are unspecified after an error.
#[no_mangle]
pub extern "C" fn kvr_disk_read(
    disk: *const kvr_disk,
    key: *const kvr_block_key,
    dst: *mut u8,
    dst_cap: u64,
    len: *mut u64,
    meta_dst: *mut u8,
    meta_cap: u64,
    meta_len: *mut u64,
) -> kvr_status {
    guard(|| {
        let (d, key) = (kvr_disk::try_ref(disk)?, arg_key(key)?);
        // SAFETY: `dst` is NULL or writable for `dst_cap` bytes.
        let dst = unsafe { arg_bytes_mut(dst, dst_cap as usize, "dst") }?;
        let meta: &mut [u8] = if meta_cap == 0 {
            &mut []
        } else {
            // SAFETY: `meta_dst` is NULL or writable for `meta_cap` bytes.
            unsafe { arg_bytes_mut(meta_dst, meta_cap as usize, "meta_dst") }?
        };
        if len.is_null() || meta_len.is_null() {
            return Err(Error::invalid("len or meta_len is NULL"));
        }
        let (caps, metacap) = (dst.len(), meta.len());
        let (n, res) = match d.read_sized(&key, dst, meta)? {
            Ok(n) => (n, Ok(())),
            Err(need) => {
                let e = crate::err!(
                    TooSmall,
                    "entry needs {} payload bytes and {} metadata bytes; buffers hold {caps} and {metacap}",
                    need.len,
                    need.meta_len
                );
                (need, Err(e))
            }
        };
        // SAFETY: both checked non-null above; writable per the contract.
        unsafe {
            len.write(n.len);
            meta_len.write(n.meta_len);
        }
        res
    })
}

/// Writes to `*out` whether `key` has an entry (does not change recency).
#[no_mangle]
pub extern "C" fn kvr_disk_contains(
    disk: *const kvr_disk,
    key: *const kvr_block_key,
    out: *mut bool,
) -> kvr_status {
    guard(|| {
        let (d, key) = (kvr_disk::try_ref(disk)?, arg_key(key)?);
        // SAFETY: `out` is NULL (rejected) or writable.
        unsafe { write_out(out, d.contains(&key), "out") }
    })
}

/// Removes `key`'s entry; it stays removed after a crash. `KVR_ERR_NOT_FOUND` if absent.
#[no_mangle]
pub extern "C" fn kvr_disk_remove(disk: *const kvr_disk, key: *const kvr_block_key) -> kvr_status {
    guard(|| {
        let (d, key) = (kvr_disk::try_ref(disk)?, arg_key(key)?);
        if d.remove(&key) {
            Ok(())
        } else {
            Err(crate::err!(NotFound, "no entry to remove"))
        }
    })
}

/// Fills `*out` with counters and state. Set `out->struct_size = sizeof(kvr_disk_stats)`
/// first.
#[no_mangle]
pub extern "C" fn kvr_disk_get_stats(
    disk: *const kvr_disk,
    out: *mut kvr_disk_stats,
) -> kvr_status {
    guard(|| {
        let d = kvr_disk::try_ref(disk)?;
        let s = d.stats();
        let full = kvr_disk_stats {
            struct_size: std::mem::size_of::<kvr_disk_stats>() as u32,
            direct_io: s.direct,
            created: s.created,
            num_slots: s.num_slots,
            slot_size: s.slot_size,
            entries: s.entries,
            free_slots: s.free_slots,
            evictions: s.evictions,
            hits: s.hits,
            misses: s.misses,
            corrupt_dropped: s.corrupt_dropped,
            writes: s.writes,
            bytes_written: s.bytes_written,
            bytes_read: s.bytes_read,
            recovered_entries: s.recovered_entries,
            recovery_ns: s.recovery_ns,
            recovery_cpu_ns: s.recovery_cpu_ns,
        };
        // SAFETY: `out` is NULL or points to at least `out->struct_size` writable bytes.
        unsafe { write_sized_out(out, full, "out") }
    })
}

/// Submits `n` writes to the I/O threads; `*out` receives the job (see `kvr_job_*`): item
/// `i` ends with the payload bytes written or the error `kvr_disk_write` would return.
/// Every buffer must stay valid until the job completed (`kvr_job_free` waits for it).
#[no_mangle]
pub extern "C" fn kvr_disk_submit_write(
    disk: *const kvr_disk,
    items: *const kvr_disk_write_item,
    n: usize,
    out: *mut *mut kvr_job,
) -> kvr_status {
    let request = |_: usize, it: &kvr_disk_write_item| {
        Ok(RawWrite {
            key: Key::from(it.key),
            src: it.src,
            len: it.len as usize,
            meta: it.meta,
            meta_len: it.meta_len as usize,
        })
    };
    guard(|| {
        // SAFETY: `items` is NULL or points to `n` valid items and `out` is NULL or writable
        // (caller's contract); the caller keeps every buffer valid until the job completed.
        unsafe { submit_batch(disk, items, n, out, request, |d, r| d.submit_write(r)) }
    })
}

/// Submits `n` reads to the I/O threads; `*out` receives the job: item `i` ends with the
/// payload bytes read or the error `kvr_disk_read` would return, and `items[i].len` /
/// `items[i].meta_len` receive the lengths. `items` and every buffer must stay valid until
/// the job completed (`kvr_job_free` waits for it).
#[no_mangle]
pub extern "C" fn kvr_disk_submit_read(
    disk: *const kvr_disk,
    items: *mut kvr_disk_read_item,
    n: usize,
    out: *mut *mut kvr_job,
) -> kvr_status {
    // The items are also outputs: their length fields are reached through `items` itself,
    // which is writable, not through the shared borrow `submit_batch` lends.
    let request = |i: usize, it: &kvr_disk_read_item| {
        // SAFETY: `submit_batch` calls this only for `i < n`, inside the `n` items.
        let this = unsafe { items.add(i) };
        Ok(RawRead {
            key: Key::from(it.key),
            dst: it.dst,
            dst_cap: it.dst_cap as usize,
            meta_dst: it.meta_dst,
            meta_cap: it.meta_cap as usize,
            // SAFETY: in-bounds field projections of a valid item (no reference is made).
            len_out: unsafe { std::ptr::addr_of_mut!((*this).len) },
            // SAFETY: as above.
            meta_len_out: unsafe { std::ptr::addr_of_mut!((*this).meta_len) },
        })
    };
    guard(|| {
        // SAFETY: `items` is NULL or points to `n` valid, writable items and `out` is NULL or
        // writable (caller's contract); the caller keeps `items` and every buffer valid until
        // the job completed.
        unsafe {
            submit_batch(disk, items.cast_const(), n, out, request, |d, r| {
                d.submit_read(r)
            })
        }
    })
}

/// Stores the concatenation of `segments[0..num_segments]` (each non-NULL and non-empty;
/// 1..=slot_size bytes in all) and `meta_len` bytes of metadata under the whole engine `key`
/// (1..=`KVR_MAX_KEY_LEN` bytes, stored in the slot and compared on every read; a 16-byte
/// key is the same entry as that `kvr_block_key`). Metadata is at most `KVR_DISK_MAX_META`
/// bytes under a 16-byte key, `KVR_DISK_MAX_META - key.len` under any other. Otherwise as
/// `kvr_disk_write`.
#[no_mangle]
pub extern "C" fn kvr_disk_write_segments(
    disk: *const kvr_disk,
    key: kvr_key,
    segments: *const kvr_segment,
    num_segments: usize,
    meta: *const u8,
    meta_len: u64,
) -> kvr_status {
    guard(|| {
        let d = kvr_disk::try_ref(disk)?;
        // SAFETY: the key's bytes are valid per the contract.
        let k = unsafe { arg_whole_key(&key, "key") }?;
        // SAFETY: `segments` points to `num_segments` segments per the contract.
        let segs = unsafe { arg_segments(segments, num_segments, "segments") }?;
        // SAFETY: every segment is readable for its length per the contract.
        let data = unsafe { tier::read_slices(&segs) };
        // SAFETY: `meta` is NULL or readable for `meta_len` bytes.
        let meta = unsafe { arg_bytes(meta, meta_len as usize, "meta", true) }?;
        d.write_segments(k, &data, meta)
    })
}

/// Reads the entry of the whole engine `key` scattered over `segments[0..num_segments]`,
/// whose lengths must sum to the entry's payload (`KVR_ERR_LAYOUT_MISMATCH` otherwise), and
/// its metadata into `meta_dst` (capacity `meta_cap`; NULL/0 when entries carry none);
/// `*meta_len` (may be NULL) receives the metadata length (the needed one on
/// `KVR_ERR_TOO_SMALL`). `KVR_ERR_NOT_FOUND` when absent (also when the slot of its name
/// holds another key); other errors as `kvr_disk_read`.
#[no_mangle]
pub extern "C" fn kvr_disk_read_segments(
    disk: *const kvr_disk,
    key: kvr_key,
    segments: *const kvr_segment,
    num_segments: usize,
    meta_dst: *mut u8,
    meta_cap: u64,
    meta_len: *mut u64,
) -> kvr_status {
    guard(|| {
        let d = kvr_disk::try_ref(disk)?;
        // SAFETY: the key's bytes are valid per the contract.
        let k = unsafe { arg_whole_key(&key, "key") }?;
        // SAFETY: `segments` points to `num_segments` segments per the contract.
        let segs = unsafe { arg_segments(segments, num_segments, "segments") }?;
        // SAFETY: every segment is writable and unaliased for its length per the contract.
        let mut dst = unsafe { tier::write_slices(&segs) };
        let meta: &mut [u8] = if meta_cap == 0 {
            &mut []
        } else {
            // SAFETY: `meta_dst` is NULL or writable for `meta_cap` bytes.
            unsafe { arg_bytes_mut(meta_dst, meta_cap as usize, "meta_dst") }?
        };
        let r = d.read_segments(k, &mut dst, meta);
        if let Some(n) = d.entry_len_of(k) {
            // SAFETY: `meta_len` is NULL or writable per the contract.
            unsafe { write_opt(meta_len, n.meta_len) };
        }
        r.map(|_| ())
    })
}

/// Per-key presence from the slot file's index (complete: this handle owns the file; no
/// I/O): `present[i]` = 1 when `keys[i]` has an entry, else 0; `*hits` (may be NULL)
/// receives how many do. Recency is unchanged; NULL, empty or over-long keys are absent.
/// `n` may be 0.
#[no_mangle]
pub extern "C" fn kvr_disk_lookup(
    disk: *const kvr_disk,
    keys: *const kvr_key,
    n: usize,
    present: *mut u8,
    hits: *mut usize,
) -> kvr_status {
    tier::lookup(disk, keys, n, present, hits)
}

/// Removes the entry of the whole engine `key`; `KVR_ERR_NOT_FOUND` if absent.
#[no_mangle]
pub extern "C" fn kvr_disk_remove_key(disk: *const kvr_disk, key: kvr_key) -> kvr_status {
    tier::remove_key(disk, key)
}
