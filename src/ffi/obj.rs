//! C ABI of the S3 object tier (thin layer over [`crate::obj`]).

use std::ffi::{c_char, c_void};
use std::time::Duration;

use super::fs::{kvr_fs_load_item, kvr_fs_store_item};
use super::handle::BoxedHandle;
use super::items::{kvr_fs_load_segments_item, kvr_fs_store_segments_item};
use super::job::kvr_job;
pub use super::kvr_block_key;
use super::status::{guard, kvr_status};
use super::tier;
use super::{arg_str, kvr_key, kvr_segment};
use super::{open_handle, write_out, write_sized_out};
use crate::obj::{Credentials, ObjConfig, ObjStore};
use crate::Error;

/// Opaque handle to an open object store (`kvr_obj_open` / `kvr_obj_close`).
pub struct kvr_obj {
    _opaque: [u8; 0],
}

impl BoxedHandle for kvr_obj {
    type Rust = ObjStore;
    const ARG: &'static str = "obj";
}

/// One block of an async object store batch (the fs store's item type).
pub type kvr_obj_store_item = kvr_fs_store_item;
/// One block of an async object load batch (the fs store's item type).
pub type kvr_obj_load_item = kvr_fs_load_item;
/// One whole-key, segmented block of a `kvr_obj_submit_store_items` batch (the fs store's
/// item type).
pub type kvr_obj_store_segments_item = kvr_fs_store_segments_item;
/// One whole-key, segmented block of a `kvr_obj_submit_load_items` batch (the fs store's
/// item type).
pub type kvr_obj_load_segments_item = kvr_fs_load_segments_item;

/// How to open an object store. Fill with `kvr_obj_config_default`, then set the fields.
/// String fields left NULL (or "") take the standard `AWS_*` environment variables.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvr_obj_config {
    /// `sizeof(kvr_obj_config)`; lets later versions add fields.
    pub struct_size: u32,
    /// `s3://bucket[/prefix]` (required); blocks live under `<prefix>/<namespace>/<hh>/`.
    pub url: *const c_char,
    /// Namespace, e.g. model + layout digest (required): no `/`, `..`, NUL, leading `.`.
    pub namespace_name: *const c_char,
    /// `http://host:port` or `https://host:port` of the S3 server; NULL:
    /// `AWS_ENDPOINT_URL`, else AWS's regional endpoint.
    pub endpoint: *const c_char,
    /// Region; NULL: `AWS_REGION`, else `AWS_DEFAULT_REGION`, else "us-east-1".
    pub region: *const c_char,
    /// Access key id; NULL: `AWS_ACCESS_KEY_ID` (with `AWS_SECRET_ACCESS_KEY`), else
    /// unsigned requests. No profile file or instance metadata is ever read.
    pub access_key_id: *const c_char,
    /// Secret access key (with `access_key_id`).
    pub secret_access_key: *const c_char,
    /// Session token of temporary credentials, or NULL.
    pub session_token: *const c_char,
    /// Most requests in flight at once, over all callers and batches (1..=4096). Default 32.
    pub concurrency: u32,
    /// Bound on establishing a connection, in milliseconds (non-zero). Default 2000.
    pub connect_timeout_ms: u32,
    /// Bound on one whole request, in milliseconds (non-zero). Default 30000.
    pub request_timeout_ms: u32,
    /// Path of a PEM file of certificates an https endpoint's chain may end in, trusted
    /// besides the built-in public roots (a private CA, a self-signed server certificate);
    /// NULL: `AWS_CA_BUNDLE`, else only the public roots.
    pub ca_bundle: *const c_char,
}

impl Default for kvr_obj_config {
    fn default() -> Self {
        kvr_obj_config {
            struct_size: std::mem::size_of::<Self>() as u32,
            url: std::ptr::null(),
            namespace_name: std::ptr::null(),
            endpoint: std::ptr::null(),
            region: std::ptr::null(),
            access_key_id: std::ptr::null(),
            secret_access_key: std::ptr::null(),
            session_token: std::ptr::null(),
            concurrency: 32,
            connect_timeout_ms: 2000,
            request_timeout_ms: 30000,
            ca_bundle: std::ptr::null(),
        }
    }
}

/// Counters of an open object store, as seen by this process (filled by
/// `kvr_obj_get_stats`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kvr_obj_stats {
    /// Set to `sizeof(kvr_obj_stats)` before the call.
    pub struct_size: u32,
    /// Loads that returned a block.
    pub hits: u64,
    /// Loads that found no usable block (absent or bad).
    pub misses: u64,
    /// Bad objects found by loads (kept until `kvr obj verify --repair`).
    pub corrupt: u64,
    /// Payload bytes loaded.
    pub bytes_read: u64,
    /// Payload bytes stored.
    pub bytes_written: u64,
    /// Blocks written.
    pub stores: u64,
    /// Stores skipped because the object existed (the server's 412).
    pub dedup_hits: u64,
    /// Blocks removed.
    pub removes: u64,
    /// Requests that failed because the server was down, too slow or refusing.
    pub unavailable: u64,
}

/// An optional string field: NULL or "" means "take the environment's".
///
/// # Safety
/// As [`arg_str`].
unsafe fn arg_opt_str(ptr: *const c_char, name: &str) -> crate::Result<Option<String>> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded contract.
    let s = unsafe { arg_str(ptr, name) }?;
    Ok((!s.is_empty()).then(|| s.to_string()))
}

pub(super) fn to_rust_config(c: &kvr_obj_config) -> crate::Result<ObjConfig> {
    // SAFETY: the string fields are NULL or C strings per the config contract.
    let url = unsafe { arg_str(c.url, "config.url") }?;
    // SAFETY: as above.
    let ns = unsafe { arg_str(c.namespace_name, "config.namespace_name") }?;
    let mut cfg = ObjConfig::new(url, ns);
    // SAFETY: as above.
    unsafe {
        cfg.endpoint = arg_opt_str(c.endpoint, "config.endpoint")?;
        cfg.region = arg_opt_str(c.region, "config.region")?;
        let id = arg_opt_str(c.access_key_id, "config.access_key_id")?;
        let secret = arg_opt_str(c.secret_access_key, "config.secret_access_key")?;
        let token = arg_opt_str(c.session_token, "config.session_token")?;
        cfg.credentials = match (id, secret) {
            (Some(access_key_id), Some(secret_access_key)) => Some(Credentials {
                access_key_id,
                secret_access_key,
                session_token: token,
            }),
            (None, None) => None,
            _ => {
                return Err(Error::invalid(
                    "config.access_key_id and config.secret_access_key go together",
                ))
            }
        };
    }
    cfg.concurrency = c.concurrency as usize;
    cfg.connect_timeout = Duration::from_millis(c.connect_timeout_ms.into());
    cfg.request_timeout = Duration::from_millis(c.request_timeout_ms.into());
    // SAFETY: as above.
    cfg.ca_bundle = unsafe { arg_opt_str(c.ca_bundle, "config.ca_bundle") }?.map(Into::into);
    Ok(cfg)
}

/// Fills `*config` with the documented defaults (strings NULL).
#[no_mangle]
pub extern "C" fn kvr_obj_config_default(config: *mut kvr_obj_config) -> kvr_status {
    guard(|| {
        // SAFETY: checked for NULL; the caller provides a writable config struct.
        unsafe { write_out(config, kvr_obj_config::default(), "config") }
    })
}

/// Opens an object store at `config->url` / `config->namespace_name`, starting kvr's own
/// I/O threads (`kvr-obj-*`) with the first store of the process, and makes one request to
/// check endpoint, bucket and credentials. On success `*out` owns the handle; close it with
/// `kvr_obj_close`. Errors: `KVR_ERR_INVALID_ARGUMENT` (URL, namespace, values, a CA bundle
/// that cannot be read or holds no PEM certificate), `KVR_ERR_UNAVAILABLE` (server down, too slow or refusing, or an https server whose
/// certificate is not trusted), `KVR_ERR_PERMISSION`.
#[no_mangle]
pub extern "C" fn kvr_obj_open(
    config: *const kvr_obj_config,
    out: *mut *mut kvr_obj,
) -> kvr_status {
    guard(|| {
        // SAFETY: `config` is NULL or a config of `struct_size` bytes; `out` NULL or writable.
        unsafe { open_handle(config, out, |c| ObjStore::open(&to_rust_config(c)?)) }
    })
}

/// Closes a store after its async items have finished (each is bounded by the request
/// timeout); the last store closed stops kvr's object I/O threads. Jobs may be freed before
/// or after. `kvr_obj_close(NULL)` is a no-op.
#[no_mangle]
pub extern "C" fn kvr_obj_close(obj: *mut kvr_obj) {
    kvr_obj::free(obj)
}

/// Stores `len` bytes at `src` as the block `*key`, publish-once: a conditional PUT that the
/// server refuses if the object exists (deduplicated: `KVR_OK`, nothing written).
/// Errors: `KVR_ERR_INVALID_ARGUMENT`, `KVR_ERR_UNAVAILABLE`, `KVR_ERR_PERMISSION`,
/// `KVR_ERR_IO`.
#[no_mangle]
pub extern "C" fn kvr_obj_store(
    obj: *const kvr_obj,
    key: *const kvr_block_key,
    src: *const c_void,
    len: usize,
) -> kvr_status {
    tier::store_block(obj, key, src, len)
}

/// Loads the block `*key` into `len` bytes at `dst`, verifying key, length and checksum.
/// `KVR_ERR_NOT_FOUND` if absent or bad (a bad object is counted in `corrupt` and left for
/// `kvr obj verify --repair`; the message says which); `KVR_ERR_LAYOUT_MISMATCH` if the
/// block is intact but not `len` bytes long; `KVR_ERR_UNAVAILABLE`. On any error the
/// contents of `dst` are unspecified.
#[no_mangle]
pub extern "C" fn kvr_obj_load(
    obj: *const kvr_obj,
    key: *const kvr_block_key,
    dst: *mut c_void,
    len: usize,
) -> kvr_status {
    tier::load_block(obj, key, dst, len)
}

/// Sets `*out` to whether an object of `*key` exists (one HEAD request).
#[no_mangle]
pub extern "C" fn kvr_obj_contains(
    obj: *const kvr_obj,
    key: *const kvr_block_key,
    out: *mut bool,
) -> kvr_status {
    tier::contains(obj, key, out)
}

/// Sets `*hits` to how many leading keys of `keys[0..n]` exist (the reusable prefix), asking
/// up to `concurrency` keys at once. `n` may be 0 (then `keys` may be NULL).
#[no_mangle]
pub extern "C" fn kvr_obj_lookup_prefix(
    obj: *const kvr_obj,
    keys: *const kvr_block_key,
    n: usize,
    hits: *mut usize,
) -> kvr_status {
    tier::lookup_prefix(obj, keys, n, hits)
}

/// Removes the block `*key`: `KVR_OK`, or `KVR_ERR_NOT_FOUND` if there was none.
#[no_mangle]
pub extern "C" fn kvr_obj_remove(obj: *const kvr_obj, key: *const kvr_block_key) -> kvr_status {
    tier::remove(obj, key)
}

/// Fills `*out` with this process's counters. Set `out->struct_size = sizeof(kvr_obj_stats)`.
#[no_mangle]
pub extern "C" fn kvr_obj_get_stats(obj: *const kvr_obj, out: *mut kvr_obj_stats) -> kvr_status {
    guard(|| {
        let st = kvr_obj::try_ref(obj)?.stats();
        let full = kvr_obj_stats {
            struct_size: std::mem::size_of::<kvr_obj_stats>() as u32,
            hits: st.hits,
            misses: st.misses,
            corrupt: st.corrupt,
            bytes_read: st.bytes_read,
            bytes_written: st.bytes_written,
            stores: st.stores,
            dedup_hits: st.dedup_hits,
            removes: st.removes,
            unavailable: st.unavailable,
        };
        // SAFETY: `out` is NULL or points to at least `out->struct_size` writable bytes.
        unsafe { write_sized_out(out, full, "out") }
    })
}

/// Submits `n` (>= 1) blocks to store, up to `concurrency` requests in flight; `*out`
/// receives the job (`kvr_job_*`; an item's bytes are 0 for a deduplicated block). Every item
/// is checked first (NULL or empty buffers reject the whole batch). The `src` buffers must
/// stay valid until the job is done.
#[no_mangle]
pub extern "C" fn kvr_obj_submit_store(
    obj: *const kvr_obj,
    items: *const kvr_obj_store_item,
    n: usize,
    out: *mut *mut kvr_job,
) -> kvr_status {
    tier::submit_store(obj, items, n, out)
}

/// Submits `n` (>= 1) blocks to load, up to `concurrency` requests in flight; per-item
/// results as for `kvr_obj_load`. The `dst` buffers must stay valid and untouched until the
/// job is done.
#[no_mangle]
pub extern "C" fn kvr_obj_submit_load(
    obj: *const kvr_obj,
    items: *const kvr_obj_load_item,
    n: usize,
    out: *mut *mut kvr_job,
) -> kvr_status {
    tier::submit_load(obj, items, n, out)
}

/// Stores the concatenation of `segments[0..num_segments]` (each non-NULL and non-empty) as a
/// `U8` block under the whole engine `key` (1..=`KVR_MAX_KEY_LEN` bytes, stored in the
/// object's header and compared on every load), publish-once as `kvr_obj_store` (a 16-byte
/// key is the same object as that `kvr_block_key`). The object's name is the fs store's block
/// file name of the key. Errors: as `kvr_obj_store`, also `KVR_ERR_INVALID_ARGUMENT` for a
/// NULL, empty or over-long key, a NULL or empty segment, no segments, or lengths that
/// overflow.
#[no_mangle]
pub extern "C" fn kvr_obj_store_key(
    obj: *const kvr_obj,
    key: kvr_key,
    segments: *const kvr_segment,
    num_segments: usize,
) -> kvr_status {
    tier::store_key(obj, key, segments, num_segments)
}

/// Loads the block of the whole engine `key` scattered over `segments[0..num_segments]`,
/// whose lengths must sum to the block's payload: `KVR_ERR_LAYOUT_MISMATCH` (object kept)
/// otherwise. `KVR_ERR_NOT_FOUND` when absent or bad (as `kvr_obj_load`), and when the
/// object of its name holds another key (a name collision: never another key's bytes, and
/// not counted as corrupt); `KVR_ERR_UNAVAILABLE`. On any error the segments' contents are
/// unspecified.
#[no_mangle]
pub extern "C" fn kvr_obj_load_key(
    obj: *const kvr_obj,
    key: kvr_key,
    segments: *const kvr_segment,
    num_segments: usize,
) -> kvr_status {
    tier::load_key(obj, key, segments, num_segments)
}

/// Per-key presence: `present[i]` = 1 when an object of `keys[i]`'s name exists, else 0 (one
/// byte per key, as `kvr_fs_lookup`); `*hits` (may be NULL) receives how many exist. Every
/// key costs one HEAD request, all of them concurrent (up to `concurrency` in flight): the
/// server is the only index, shared with other hosts. Keys that are NULL, empty or over-long
/// are absent. `n` may be 0. `KVR_ERR_UNAVAILABLE` if the server does not answer.
#[no_mangle]
pub extern "C" fn kvr_obj_lookup(
    obj: *const kvr_obj,
    keys: *const kvr_key,
    n: usize,
    present: *mut u8,
    hits: *mut usize,
) -> kvr_status {
    tier::lookup(obj, keys, n, present, hits)
}

/// Removes the block of the whole engine `key`: `KVR_OK`, or `KVR_ERR_NOT_FOUND` if there
/// was none.
#[no_mangle]
pub extern "C" fn kvr_obj_remove_key(obj: *const kvr_obj, key: kvr_key) -> kvr_status {
    tier::remove_key(obj, key)
}

/// Submits `n` (>= 1) whole-key, segmented blocks to store, up to `concurrency` requests in
/// flight; `*out` receives the job (per-item bytes 0 when deduplicated). Every item is checked
/// first (bad keys, NULL or empty segments, overflowing totals reject the whole batch). The
/// segments' buffers must stay valid until the job is done.
#[no_mangle]
pub extern "C" fn kvr_obj_submit_store_items(
    obj: *const kvr_obj,
    items: *const kvr_obj_store_segments_item,
    n: usize,
    out: *mut *mut kvr_job,
) -> kvr_status {
    tier::submit_store_items(obj, items, n, out)
}

/// Submits `n` (>= 1) whole-key, segmented blocks to load, up to `concurrency` requests in
/// flight; per-item results as for `kvr_obj_load_key`. The segments' buffers must stay valid
/// and untouched until the job is done.
#[no_mangle]
pub extern "C" fn kvr_obj_submit_load_items(
    obj: *const kvr_obj,
    items: *const kvr_obj_load_segments_item,
    n: usize,
    out: *mut *mut kvr_job,
) -> kvr_status {
    tier::submit_load_items(obj, items, n, out)
}
