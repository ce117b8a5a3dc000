//! C ABI of the lazy tensor directory: items written as files at `put` or adopted from
//! existing files, lazy references that read only when materialized, the dictionary surface
//! (count, contains, id snapshots, find, remove) and the refcounted cleanup.

use std::ffi::{c_char, c_void, CString};

use super::handle::BoxedHandle;
use super::namespace::copy_out_str;
use super::status::{guard, kvr_status};
use super::tensors::{copy_tensor_out, kvr_kv, kvr_tensor, kvr_tensor_ref, opt_name, write_args};
use super::{arg_opt_path, arg_slice, arg_str, hand_out, write_opt, write_out};
use crate::tensors::{Adopt, ItemIds, LazyTensor, TensorDir};
use crate::{err, Error, Result};

/// Opaque handle of a lazy tensor directory (`kvr_tensor_dir_open` / `kvr_tensor_dir_close`).
pub struct kvr_tensor_dir {
    _opaque: [u8; 0],
}

/// A lazy tensor directory as C holds it: with its path as a C string, which
/// `kvr_tensor_dir_path` lends out until close.
pub(crate) struct OpenTensorDir {
    dir: TensorDir,
    path_c: CString,
}

impl BoxedHandle for kvr_tensor_dir {
    type Rust = OpenTensorDir;
    const ARG: &'static str = "dir";
}

/// Opaque lazy reference to one tensor of a directory item (`kvr_tensor_dir_get_ref` /
/// `kvr_tensor_lazy_free`).
pub struct kvr_tensor_lazy {
    _opaque: [u8; 0],
}

impl BoxedHandle for kvr_tensor_lazy {
    type Rust = LazyTensor;
    const ARG: &'static str = "lazy";
}

/// Opaque snapshot of a directory's item ids in insertion order
/// (`kvr_tensor_dir_snapshot_ids` / `kvr_tensor_dir_ids_free`).
pub struct kvr_tensor_dir_ids {
    _opaque: [u8; 0],
}

impl BoxedHandle for kvr_tensor_dir_ids {
    type Rust = ItemIds;
    const ARG: &'static str = "ids";
}

/// One entry of `kvr_tensor_dir_adopt`: item `item_id` is tensor `tensor_name` of the
/// safetensors file at `location` (`tensor_name` NULL: the whole file, its tensors chosen by
/// name at `kvr_tensor_dir_get_ref` as for a `put` item).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvr_tensor_dir_adopt_item {
    /// `sizeof(kvr_tensor_dir_adopt_item)`; lets later versions add fields.
    pub struct_size: u32,
    /// The item's id (NUL-terminated UTF-8; any string, it never becomes a file name).
    pub item_id: *const c_char,
    /// The file's location, as `kvr_tensors_open` takes it (NUL-terminated UTF-8).
    pub location: *const c_char,
    /// The tensor's name, or NULL for the whole file.
    pub tensor_name: *const c_char,
}

/// Creates a lazy tensor directory: a fresh private directory inside `parent` (NULL or "":
/// the system temp directory). It is deleted when the handle and every lazy reference have
/// been released, or at once by `kvr_tensor_dir_cleanup`.
#[no_mangle]
pub extern "C" fn kvr_tensor_dir_open(
    parent: *const c_char,
    out: *mut *mut kvr_tensor_dir,
) -> kvr_status {
    guard(|| {
        // SAFETY: NULL or a C string.
        let parent = unsafe { arg_opt_path(parent, "parent") }?;
        let open = || {
            let dir = TensorDir::create(parent.as_deref())?;
            let path_c = CString::new(dir.path().as_os_str().as_encoded_bytes())
                .map_err(|_| Error::invalid("directory path contains NUL"))?;
            Ok(OpenTensorDir { dir, path_c })
        };
        // SAFETY: `out` is NULL (rejected) or writable per the contract.
        unsafe { hand_out(out, open) }
    })
}

/// Releases the directory handle; the directory lives on while lazy references exist.
/// NULL is a no-op.
#[no_mangle]
pub extern "C" fn kvr_tensor_dir_close(dir: *mut kvr_tensor_dir) {
    kvr_tensor_dir::free(dir)
}

/// Deletes the directory and its files now. Later puts, get_refs and materializations fail
/// with `KVR_ERR_CLOSED`; views materialized earlier stay readable until their reference is
/// freed. The handle must still be closed.
#[no_mangle]
pub extern "C" fn kvr_tensor_dir_cleanup(dir: *const kvr_tensor_dir) -> kvr_status {
    guard(|| {
        let d = kvr_tensor_dir::try_ref(dir)?;
        d.dir.cleanup()
    })
}

/// The directory's path (valid until the handle is closed).
#[no_mangle]
pub extern "C" fn kvr_tensor_dir_path(
    dir: *const kvr_tensor_dir,
    out: *mut *const c_char,
) -> kvr_status {
    guard(|| {
        let d = kvr_tensor_dir::try_ref(dir)?;
        // SAFETY: NULL (rejected) or writable.
        unsafe { write_out(out, d.path_c.as_ptr(), "out") }
    })
}

/// Writes `n` tensors as item `item_id` (one safetensors file; replaces an earlier item of
/// that id, whose references keep working). Same arguments and flags as `kvr_tensors_write`.
#[no_mangle]
pub extern "C" fn kvr_tensor_dir_put(
    dir: *const kvr_tensor_dir,
    item_id: *const c_char,
    tensors: *const kvr_tensor,
    n: usize,
    metadata: *const kvr_kv,
    m: usize,
    flags: u32,
) -> kvr_status {
    guard(|| {
        let d = kvr_tensor_dir::try_ref(dir)?;
        // SAFETY: NULL or a C string.
        let id = unsafe { arg_str(item_id, "item_id") }?;
        // SAFETY: `n` descriptors and `m` entries per the contract.
        let (t, md, opts) = unsafe { write_args(tensors, n, metadata, m, flags) }?;
        d.dir.put(id, &t, &md, opts)
    })
}

/// A lazy reference to tensor `name` (NULL: the item's only tensor) of item `item_id`.
/// Nothing is read until it is materialized. Free with `kvr_tensor_lazy_free`; it keeps the
/// directory alive. `KVR_ERR_NOT_FOUND` for an unknown item, `KVR_ERR_CLOSED` after cleanup.
#[no_mangle]
pub extern "C" fn kvr_tensor_dir_get_ref(
    dir: *const kvr_tensor_dir,
    item_id: *const c_char,
    name: *const c_char,
    out: *mut *mut kvr_tensor_lazy,
) -> kvr_status {
    guard(|| {
        let d = kvr_tensor_dir::try_ref(dir)?;
        // SAFETY: NULL or a C string.
        let id = unsafe { arg_str(item_id, "item_id") }?;
        // SAFETY: NULL or a C string.
        let name = unsafe { opt_name(name) }?;
        // SAFETY: `out` is NULL (rejected) or writable per the contract.
        unsafe { hand_out(out, || d.dir.get_ref(id, name)) }
    })
}

/// Loads the referenced tensor into `dst` of `cap` bytes (thread-safe; many threads may
/// materialize one reference). `*out_len` (may be NULL) gets the bytes copied, or on
/// `KVR_ERR_TOO_SMALL` the size needed. `KVR_ERR_CLOSED` after cleanup.
#[no_mangle]
pub extern "C" fn kvr_tensor_lazy_materialize(
    lazy: *const kvr_tensor_lazy,
    dst: *mut c_void,
    cap: usize,
    out_len: *mut usize,
) -> kvr_status {
    guard(|| {
        let l = kvr_tensor_lazy::try_ref(lazy)?;
        let file = l.load()?;
        // SAFETY: forwarded from the caller's contract for `dst`, `cap` and `out_len`.
        unsafe { copy_tensor_out(&file, l.tensor_name()?, dst, cap, out_len, false) }
    })
}

/// Materializes the referenced tensor as a zero-copy mapped view, valid until the reference
/// is freed (even across `kvr_tensor_dir_cleanup`). `KVR_ERR_CLOSED` after cleanup.
#[no_mangle]
pub extern "C" fn kvr_tensor_lazy_view(
    lazy: *const kvr_tensor_lazy,
    out: *mut kvr_tensor_ref,
) -> kvr_status {
    guard(|| {
        let l = kvr_tensor_lazy::try_ref(lazy)?;
        if out.is_null() {
            return Err(Error::invalid("out is NULL"));
        }
        // The file stays mapped while the item lives, and the reference keeps the item.
        let file = l.load()?;
        let t = file.get(l.tensor_name()?)?;
        // SAFETY: checked non-null; writable.
        unsafe { write_out(out, kvr_tensor_ref::new(t.entry, t.data), "out") }
    })
}

/// Releases a lazy reference (from any thread); the last release of the directory's handle
/// and references deletes the directory. NULL is a no-op.
#[no_mangle]
pub extern "C" fn kvr_tensor_lazy_free(lazy: *mut kvr_tensor_lazy) {
    kvr_tensor_lazy::free(lazy)
}

/// Sets `*out` to the number of items (0 after cleanup). Other threads may change it at once;
/// for a consistent list use `kvr_tensor_dir_snapshot_ids`.
#[no_mangle]
pub extern "C" fn kvr_tensor_dir_count(dir: *const kvr_tensor_dir, out: *mut usize) -> kvr_status {
    guard(|| {
        let d = kvr_tensor_dir::try_ref(dir)?;
        // SAFETY: NULL (rejected) or writable.
        unsafe { write_out(out, d.dir.len(), "out") }
    })
}

/// Sets `*out` to whether item `item_id` exists (false after cleanup).
#[no_mangle]
pub extern "C" fn kvr_tensor_dir_contains(
    dir: *const kvr_tensor_dir,
    item_id: *const c_char,
    out: *mut bool,
) -> kvr_status {
    guard(|| {
        let d = kvr_tensor_dir::try_ref(dir)?;
        // SAFETY: NULL or a C string.
        let id = unsafe { arg_str(item_id, "item_id") }?;
        // SAFETY: NULL (rejected) or writable.
        unsafe { write_out(out, d.dir.contains(id), "out") }
    })
}

/// Takes a snapshot of the item ids in insertion order (a replaced item keeps its place, a
/// removed and re-added one goes last). Index `i` of `kvr_tensor_dir_ids_at` means the
/// `i`-th id of this moment: puts and removals by other threads afterwards do not change
/// the snapshot. Free it with `kvr_tensor_dir_ids_free`; it does not keep the directory
/// alive. Empty after cleanup.
#[no_mangle]
pub extern "C" fn kvr_tensor_dir_snapshot_ids(
    dir: *const kvr_tensor_dir,
    out: *mut *mut kvr_tensor_dir_ids,
) -> kvr_status {
    guard(|| {
        let d = kvr_tensor_dir::try_ref(dir)?;
        // SAFETY: `out` is NULL (rejected) or writable per the contract.
        unsafe { hand_out(out, || Ok(d.dir.ids())) }
    })
}

/// Sets `*out` to the number of ids in the snapshot.
#[no_mangle]
pub extern "C" fn kvr_tensor_dir_ids_count(
    ids: *const kvr_tensor_dir_ids,
    out: *mut usize,
) -> kvr_status {
    guard(|| {
        let ids = kvr_tensor_dir_ids::try_ref(ids)?;
        // SAFETY: NULL (rejected) or writable.
        unsafe { write_out(out, ids.len(), "out") }
    })
}

/// Copies id `index` of the snapshot and a NUL into `buf` of `cap` bytes. `*needed` (may be
/// NULL) receives the size including the NUL, also on `KVR_ERR_TOO_SMALL` (then `buf` is
/// untouched; `buf` may be NULL with `cap` 0 to ask for the size). `KVR_ERR_NOT_FOUND`
/// when `index >= count`.
#[no_mangle]
pub extern "C" fn kvr_tensor_dir_ids_at(
    ids: *const kvr_tensor_dir_ids,
    index: usize,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> kvr_status {
    guard(|| {
        let ids = kvr_tensor_dir_ids::try_ref(ids)?;
        let id = ids.get(index).ok_or_else(|| {
            err!(
                NotFound,
                "id index {index} out of range ({} ids in the snapshot)",
                ids.len()
            )
        })?;
        // SAFETY: `needed` NULL or writable, `buf` writable for `cap` bytes (contract).
        unsafe { copy_out_str(id, buf, cap, needed) }
    })
}

/// Releases a snapshot of ids. NULL is a no-op.
#[no_mangle]
pub extern "C" fn kvr_tensor_dir_ids_free(ids: *mut kvr_tensor_dir_ids) {
    kvr_tensor_dir_ids::free(ids)
}

/// Looks up item `item_id`: a lazy reference to its tensor `name` (NULL: the item's only
/// tensor) in `*out` and `*found` true, or, for a missing item, `KVR_OK` with `*found` false
/// and `*out` NULL: a miss is not an error. Nothing is read until the reference is
/// materialized, so a broken file shows there (`KVR_ERR_CORRUPT`, `KVR_ERR_IO`,
/// `KVR_ERR_NOT_FOUND` for a vanished adopted file), never as a miss. `KVR_ERR_CLOSED` after
/// cleanup. Free the reference with `kvr_tensor_lazy_free`.
#[no_mangle]
pub extern "C" fn kvr_tensor_dir_find(
    dir: *const kvr_tensor_dir,
    item_id: *const c_char,
    name: *const c_char,
    found: *mut bool,
    out: *mut *mut kvr_tensor_lazy,
) -> kvr_status {
    guard(|| {
        let d = kvr_tensor_dir::try_ref(dir)?;
        // SAFETY: NULL or a C string.
        let id = unsafe { arg_str(item_id, "item_id") }?;
        // SAFETY: NULL or a C string.
        let name = unsafe { opt_name(name) }?;
        if found.is_null() || out.is_null() {
            return Err(Error::invalid(if found.is_null() {
                "found is NULL"
            } else {
                "out is NULL"
            }));
        }
        let lazy = d.dir.find(id, name)?;
        let hit = lazy.is_some();
        let handle = lazy.map_or(std::ptr::null_mut(), kvr_tensor_lazy::into_c);
        // SAFETY: both checked non-null above; writable per the contract.
        unsafe {
            write_opt(out, handle);
            write_opt(found, hit);
        }
        Ok(())
    })
}

/// Removes item `item_id`; `*removed` (may be NULL) tells whether it existed (a missing item
/// is `KVR_OK` with false). Its lazy references keep working until freed; the last one
/// deletes the item's own file. An adopted file is never deleted. `KVR_ERR_CLOSED` after
/// cleanup.
#[no_mangle]
pub extern "C" fn kvr_tensor_dir_remove(
    dir: *const kvr_tensor_dir,
    item_id: *const c_char,
    removed: *mut bool,
) -> kvr_status {
    guard(|| {
        let d = kvr_tensor_dir::try_ref(dir)?;
        // SAFETY: NULL or a C string.
        let id = unsafe { arg_str(item_id, "item_id") }?;
        let was = d.dir.remove(id)?;
        // SAFETY: NULL or writable per the contract.
        unsafe { write_opt(removed, was) };
        Ok(())
    })
}

/// Adds `n` (>= 1) items that are existing safetensors files, or single tensors of them:
/// the mapping `item_id -> (location, tensor_name)`. Every file is opened and its header
/// validated, and every named tensor looked up, before anything is added; on any error
/// nothing is adopted: `KVR_ERR_NOT_FOUND` (missing file or tensor), `KVR_ERR_CORRUPT`
/// (malformed file), `KVR_ERR_INVALID_ARGUMENT` (NULL or bad fields, a wrong `struct_size`,
/// an id twice in `items`, a file inside this directory). An id already present is replaced,
/// as by `kvr_tensor_dir_put`. Adopted files are opened again at the first materialize, once
/// per file of one call (its items share the mapping); they are not the directory's: removal
/// and cleanup never delete them.
/// `KVR_ERR_CLOSED` after cleanup.
#[no_mangle]
pub extern "C" fn kvr_tensor_dir_adopt(
    dir: *const kvr_tensor_dir,
    items: *const kvr_tensor_dir_adopt_item,
    n: usize,
) -> kvr_status {
    guard(|| {
        let d = kvr_tensor_dir::try_ref(dir)?;
        // SAFETY: `n` items per the contract (NULL and n == 0 rejected).
        let raw = unsafe { arg_slice(items, n, "items", false) }?;
        let adopt = raw
            .iter()
            .enumerate()
            .map(|(i, it)| {
                // SAFETY: the item's strings are NULL or C strings per the contract.
                unsafe { adopt_item(it) }.map_err(|e| e.context(format!("items[{i}]")))
            })
            .collect::<Result<Vec<_>>>()?;
        d.dir.adopt(&adopt)
    })
}

/// Reads one adoption entry.
///
/// # Safety
/// The item's string fields are NULL or NUL-terminated strings valid for `'a`.
unsafe fn adopt_item<'a>(it: &kvr_tensor_dir_adopt_item) -> Result<Adopt<'a>> {
    let want = std::mem::size_of::<kvr_tensor_dir_adopt_item>();
    if it.struct_size as usize != want {
        return Err(Error::invalid(format!(
            "struct_size is {}, this library's item is {want} bytes",
            it.struct_size
        )));
    }
    Ok(Adopt {
        // SAFETY: forwarded contract.
        item_id: unsafe { arg_str(it.item_id, "item_id") }?,
        // SAFETY: forwarded contract.
        location: unsafe { arg_str(it.location, "location") }?,
        // SAFETY: forwarded contract.
        tensor: unsafe { opt_name(it.tensor_name) }?,
    })
}
