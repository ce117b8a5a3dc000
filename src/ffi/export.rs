//! C ABI of region export and import: chosen blocks of a region as a tensor file, and back.

use std::ffi::c_char;

use super::handle::BoxedHandle;
use super::region::kvr_region;
use super::status::{guard, kvr_status};
use super::tensors::write_options;
use super::{arg_slice, arg_str, write_opt};
use crate::tensors::{export_blocks, import_blocks};

/// Writes blocks `block_ids[0..n]` of a region to the tensor file `path`: whole rows for a
/// scheduler handle, this rank's slices for a rank handle, with the layout and role recorded
/// in the metadata and an xxh3-64 checksum per block, seeded with the block's id and the
/// layout (so a damaged id or layout fails the check). `flags` as for `kvr_tensors_write`.
#[no_mangle]
pub extern "C" fn kvr_region_export(
    region: *const kvr_region,
    block_ids: *const u64,
    n: usize,
    path: *const c_char,
    flags: u32,
) -> kvr_status {
    guard(|| {
        let r = kvr_region::try_ref(region)?;
        // SAFETY: `block_ids` is NULL or points to `n` ids (caller's contract).
        let ids = unsafe { arg_slice(block_ids, n, "block_ids", false) }?;
        // SAFETY: NULL or a C string.
        let path = unsafe { arg_str(path, "path") }?;
        export_blocks(r, ids, path.as_ref(), write_options(flags)?).map(|_| ())
    })
}

/// Loads a file written by `kvr_region_export` into the region, which must have the same
/// layout and role (`KVR_ERR_LAYOUT_MISMATCH` naming both otherwise). Every block's checksum
/// is verified before anything is copied (`KVR_ERR_CORRUPT`). `*out_count` (may be NULL)
/// receives the number of blocks loaded.
#[no_mangle]
pub extern "C" fn kvr_region_import(
    region: *const kvr_region,
    path: *const c_char,
    out_count: *mut usize,
) -> kvr_status {
    guard(|| {
        let r = kvr_region::try_ref(region)?;
        // SAFETY: NULL or a C string.
        let path = unsafe { arg_str(path, "path") }?;
        let ids = import_blocks(r, path.as_ref())?;
        // SAFETY: `out_count` is NULL or writable per the contract.
        unsafe { write_opt(out_count, ids.len()) };
        Ok(())
    })
}
