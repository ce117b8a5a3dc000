//! C ABI of whole-key, segmented batch items: one shape for the fs store and the slot file
//! (`struct_size`, key, segment list, then the tier's extras), each submitted as a job; the
//! object tier takes the fs store's items.

use super::disk::kvr_disk;
use super::fs::kvr_fs;
use super::job::{kvr_job, submit_batch};
use super::status::{guard, kvr_status};
use super::tier;
use super::{arg_bytes, arg_segments, arg_whole_key, kvr_key, kvr_segment};
use crate::disk::{ReadItem, WriteItem};
use crate::io::vectored::RawSegment;
use crate::{Error, Result};

/// One block of a `kvr_fs_submit_store_items` batch.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvr_fs_store_segments_item {
    /// `sizeof(kvr_fs_store_segments_item)`; lets later versions add fields.
    pub struct_size: u32,
    /// The whole engine key (its bytes are copied at submit).
    pub key: kvr_key,
    /// The payload's segments, in order (the array is copied at submit; the buffers must
    /// stay valid until the job completes).
    pub segments: *const kvr_segment,
    /// Number of segments (>= 1).
    pub num_segments: usize,
}

/// One block of a `kvr_fs_submit_load_items` batch.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvr_fs_load_segments_item {
    /// `sizeof(kvr_fs_load_segments_item)`; lets later versions add fields.
    pub struct_size: u32,
    /// The whole engine key (its bytes are copied at submit).
    pub key: kvr_key,
    /// Destination segments, in order, summing to the block's payload (the array is copied
    /// at submit; the buffers must stay valid and untouched until the job completes).
    pub segments: *const kvr_segment,
    /// Number of segments (>= 1).
    pub num_segments: usize,
}

/// Submits `n` (>= 1) whole-key, segmented blocks to store on the write threads; `*out`
/// receives the job (per-item bytes 0 when deduplicated). Every item is checked first (bad
/// keys, NULL or empty segments, overflowing totals reject the whole batch).
#[no_mangle]
pub extern "C" fn kvr_fs_submit_store_items(
    fs: *const kvr_fs,
    items: *const kvr_fs_store_segments_item,
    n: usize,
    out: *mut *mut kvr_job,
) -> kvr_status {
    tier::submit_store_items(fs, items, n, out)
}

/// Submits `n` (>= 1) whole-key, segmented blocks to load on the read threads; per-item
/// results as for `kvr_fs_load`.
#[no_mangle]
pub extern "C" fn kvr_fs_submit_load_items(
    fs: *const kvr_fs,
    items: *const kvr_fs_load_segments_item,
    n: usize,
    out: *mut *mut kvr_job,
) -> kvr_status {
    tier::submit_load_items(fs, items, n, out)
}

/// One entry of a `kvr_disk_submit_write_items` batch: the fs store item's shape plus the
/// entry's metadata.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvr_disk_write_segments_item {
    /// `sizeof(kvr_disk_write_segments_item)`; lets later versions add fields.
    pub struct_size: u32,
    /// The whole engine key (its bytes are copied at submit).
    pub key: kvr_key,
    /// The payload's segments, in order, 1..=slot_size bytes in all (the array is copied at
    /// submit; the buffers must stay valid until the job completes).
    pub segments: *const kvr_segment,
    /// Number of segments (>= 1).
    pub num_segments: usize,
    /// Metadata (NULL when `meta_len` is 0), valid until the job completes.
    pub meta: *const u8,
    /// Metadata bytes (at most `KVR_DISK_MAX_META`, less the key's length unless it is 16).
    pub meta_len: u64,
}

/// One entry of a `kvr_disk_submit_read_items` batch: the fs load item's shape plus the
/// metadata destination; `meta_len` is an output, written when the item finishes (also on
/// `KVR_ERR_TOO_SMALL`, with the needed length).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvr_disk_read_segments_item {
    /// `sizeof(kvr_disk_read_segments_item)`; lets later versions add fields.
    pub struct_size: u32,
    /// The whole engine key (its bytes are copied at submit).
    pub key: kvr_key,
    /// Destination segments, in order, summing to the entry's payload (the array is copied
    /// at submit; the buffers must stay valid and untouched until the job completes).
    pub segments: *const kvr_segment,
    /// Number of segments (>= 1).
    pub num_segments: usize,
    /// Metadata destination (NULL when `meta_cap` is 0).
    pub meta_dst: *mut u8,
    /// Its capacity.
    pub meta_cap: u64,
    /// Output: metadata bytes read (or needed).
    pub meta_len: u64,
}

/// An item that begins with the shape every whole-key, segmented item has: `struct_size`,
/// key, segment list.
pub(super) trait SegmentedItem: Sized {
    /// Its `struct_size` field.
    fn struct_size(&self) -> u32;
    /// Its key.
    fn key(&self) -> &kvr_key;
    /// Its segment array and count.
    fn segments(&self) -> (*const kvr_segment, usize);
}

macro_rules! segmented_items {
    ($($item:ty),*) => {$(
        impl SegmentedItem for $item {
            fn struct_size(&self) -> u32 {
                self.struct_size
            }
            fn key(&self) -> &kvr_key {
                &self.key
            }
            fn segments(&self) -> (*const kvr_segment, usize) {
                (self.segments, self.num_segments)
            }
        }
    )*};
}
segmented_items!(
    kvr_fs_store_segments_item,
    kvr_fs_load_segments_item,
    kvr_disk_write_segments_item,
    kvr_disk_read_segments_item
);

/// Item `i`'s `struct_size` (this version's size: items are an array of them), key and
/// segment list, checked; the key and the list copied.
///
/// # Safety
/// The item's key bytes and segment array must be valid per the item's contract.
pub(super) unsafe fn item_key_and_segments<I: SegmentedItem>(
    i: usize,
    item: &I,
) -> Result<(Vec<u8>, Vec<RawSegment>)> {
    let (size, want) = (item.struct_size(), std::mem::size_of::<I>());
    if size as usize != want {
        return Err(Error::invalid(format!(
            "items[{i}].struct_size is {size}, this library's item is {want} bytes"
        )));
    }
    // SAFETY: the caller's contract.
    let key = unsafe { arg_whole_key(item.key(), &format!("items[{i}].key")) }?;
    let (segments, num_segments) = item.segments();
    // SAFETY: as above.
    let segs = unsafe { arg_segments(segments, num_segments, &format!("items[{i}].segments")) }?;
    Ok((key.to_vec(), segs))
}

/// Submits `n` (>= 1) whole-key, segmented writes to the slot file's I/O threads; `*out`
/// receives the job: item `i` ends with the payload bytes written or the error
/// `kvr_disk_write_segments` would return. Every item is checked first (bad keys, NULL or
/// empty segments, overflowing totals, NULL metadata of non-zero length reject the whole
/// batch). Every buffer must stay valid until the job completed (`kvr_job_free` waits).
#[no_mangle]
pub extern "C" fn kvr_disk_submit_write_items(
    disk: *const kvr_disk,
    items: *const kvr_disk_write_segments_item,
    n: usize,
    out: *mut *mut kvr_job,
) -> kvr_status {
    let request = |i: usize, it: &kvr_disk_write_segments_item| {
        // SAFETY: the key's bytes and the segment array are valid per the contract.
        let (key, segs) = unsafe { item_key_and_segments(i, it) }?;
        let meta_len = usize::try_from(it.meta_len)
            .map_err(|_| Error::invalid(format!("items[{i}].meta_len overflows")))?;
        // SAFETY: only checks NULL/overflow here; the metadata is read by the job.
        unsafe { arg_bytes(it.meta, meta_len, &format!("items[{i}].meta"), true) }?;
        let meta = RawSegment {
            ptr: it.meta.cast_mut(),
            len: meta_len,
        };
        Ok((key, segs, meta))
    };
    guard(|| {
        // SAFETY: `items` is NULL or points to `n` valid items and `out` is NULL or writable
        // (caller's contract); the caller keeps every buffer valid until the job completes.
        unsafe {
            submit_batch(disk, items, n, out, request, |d, r| {
                let items: Vec<WriteItem> = r
                    .iter()
                    .map(|(k, segs, meta)| WriteItem {
                        key: k,
                        segments: segs,
                        meta: *meta,
                    })
                    .collect();
                d.submit_write_items(&items)
            })
        }
    })
}

/// Submits `n` (>= 1) whole-key, segmented reads to the slot file's I/O threads; `*out`
/// receives the job: item `i` ends with the payload bytes read or the error
/// `kvr_disk_read_segments` would return, and `items[i].meta_len` receives the metadata
/// length. `items` and every buffer must stay valid until the job completed.
#[no_mangle]
pub extern "C" fn kvr_disk_submit_read_items(
    disk: *const kvr_disk,
    items: *mut kvr_disk_read_segments_item,
    n: usize,
    out: *mut *mut kvr_job,
) -> kvr_status {
    // The items are also outputs: `meta_len` is reached through `items` itself, which is
    // writable, not through the shared borrow `submit_batch` lends.
    let request = |i: usize, it: &kvr_disk_read_segments_item| {
        // SAFETY: the key's bytes and the segment array are valid per the contract.
        let (key, segs) = unsafe { item_key_and_segments(i, it) }?;
        let meta_cap = usize::try_from(it.meta_cap)
            .ok()
            .filter(|&c| c <= isize::MAX as usize)
            .ok_or_else(|| Error::invalid(format!("items[{i}].meta_cap overflows")))?;
        if meta_cap > 0 && it.meta_dst.is_null() {
            return Err(Error::invalid(format!(
                "items[{i}].meta_dst is NULL (capacity {meta_cap})"
            )));
        }
        // SAFETY: `submit_batch` calls this only for `i < n`, inside the `n` items.
        let this = unsafe { items.add(i) };
        let meta_dst = RawSegment {
            ptr: it.meta_dst,
            len: meta_cap,
        };
        // SAFETY: an in-bounds field projection of a valid item (no reference is made).
        let meta_len_out = unsafe { std::ptr::addr_of_mut!((*this).meta_len) };
        Ok((key, segs, meta_dst, meta_len_out))
    };
    guard(|| {
        // SAFETY: `items` is NULL or points to `n` valid, writable items and `out` is NULL or
        // writable (caller's contract); the caller keeps `items` and every buffer valid until
        // the job completed.
        unsafe {
            submit_batch(disk, items.cast_const(), n, out, request, |d, r| {
                let items: Vec<ReadItem> = r
                    .iter()
                    .map(|(k, segs, meta_dst, meta_len_out)| ReadItem {
                        key: k,
                        segments: segs,
                        meta_dst: *meta_dst,
                        meta_len_out: *meta_len_out,
                    })
                    .collect();
                d.submit_read_items(&items)
            })
        }
    })
}
