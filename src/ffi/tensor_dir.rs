//! C ABI of the lazy tensor directory: items written as files at `put`, lazy references
//! that read only when materialized, and the refcounted cleanup.

use std::ffi::{c_char, c_void, CString};

use super::handle::BoxedHandle;
use super::status::{guard, kvr_status};
use super::tensors::{copy_tensor_out, kvr_kv, kvr_tensor, kvr_tensor_ref, opt_name, write_args};
use super::{arg_opt_path, arg_str, hand_out, write_out};
use crate::tensors::{LazyTensor, TensorDir};
use crate::Error;

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
        unsafe { copy_tensor_out(&file, l.name(), dst, cap, out_len, false) }
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
        let t = file.get(l.name())?;
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
