//! The one body of each C entry point that several storage tiers share: the fs store and the
//! object tier take the same arguments and give the same results for every per-key and batch
//! call ([`BlockTier`]), and every tier answers whole-key lookups and removals alike
//! ([`KeyedTier`]). Each `kvr_<tier>_*` function keeps its own signature and documentation
//! (the header's) and calls the body here with its handle.

use std::ffi::c_void;

use super::fs::{kvr_fs_load_item, kvr_fs_store_item};
use super::handle::BoxedHandle;
use super::items::{item_key_and_segments, kvr_fs_load_segments_item, kvr_fs_store_segments_item};
use super::job::{kvr_job, submit_batch};
use super::status::{guard, kvr_status};
use super::{arg_bytes, arg_bytes_mut, arg_key, arg_segments, arg_slice, arg_whole_key};
use super::{kvr_block_key, kvr_key, kvr_segment, write_opt, write_out};
use crate::disk::SlotFile;
use crate::fs::{FsStore, LoadItem, LoadRequest, StoreItem, StoreRequest};
use crate::io::vectored::RawSegment;
use crate::io::Job;
use crate::obj::ObjStore;
use crate::{Error, Key, Result};

/// Whole-key calls every tier has: per-key presence and removal.
pub(crate) trait KeyedTier {
    /// Sets `present[i]` to 1 when `keys[i]` (an empty key stands for a bad one) is held,
    /// else 0; returns how many are.
    fn presence(&self, keys: &[&[u8]], present: &mut [u8]) -> Result<usize>;
    /// Removes the block of the whole key; `NotFound` if there was none.
    fn remove_whole_key(&self, key: &[u8]) -> Result<()>;
}

/// The per-key and batch calls of a content-addressed block tier (the fs store, the object
/// tier), each the Rust call behind one C entry point, its success value dropped.
pub(crate) trait BlockTier: KeyedTier {
    /// Stores a block of a 16-byte key, unless it exists.
    fn store_block(&self, key: &Key, data: &[u8]) -> Result<()>;
    /// Loads a block of a 16-byte key into `dst` (its exact length).
    fn load_block(&self, key: &Key, dst: &mut [u8]) -> Result<()>;
    /// Whether a block of a 16-byte key exists.
    fn contains_block(&self, key: &Key) -> Result<bool>;
    /// How many leading `keys` exist.
    fn leading_blocks(&self, keys: &[Key]) -> Result<usize>;
    /// Removes a block of a 16-byte key; `NotFound` if there was none.
    fn remove_block(&self, key: &Key) -> Result<()>;
    /// Stores the concatenation of `segments` under a whole key, unless it exists.
    fn store_whole_key(&self, key: &[u8], segments: &[&[u8]]) -> Result<()>;
    /// Loads the block of a whole key scattered over `segments`.
    fn load_whole_key(&self, key: &[u8], segments: &mut [&mut [u8]]) -> Result<()>;
    /// Queues a batch of whole-block stores.
    ///
    /// # Safety
    /// Every `src` must be valid for reads of `len` bytes until the job has completed.
    unsafe fn queue_stores(&self, requests: &[StoreRequest]) -> Job;
    /// Queues a batch of whole-block loads.
    ///
    /// # Safety
    /// Every `dst` must be valid for unaliased writes of `len` bytes until the job has
    /// completed.
    unsafe fn queue_loads(&self, requests: &[LoadRequest]) -> Job;
    /// Queues a batch of whole-key, segmented stores.
    ///
    /// # Safety
    /// Every segment must be valid for reads of its length until the job has completed.
    unsafe fn queue_store_items(&self, items: &[StoreItem]) -> Job;
    /// Queues a batch of whole-key, segmented loads.
    ///
    /// # Safety
    /// Every segment must be valid for unaliased writes of its length until the job has
    /// completed.
    unsafe fn queue_load_items(&self, items: &[LoadItem]) -> Job;
}

/// Implements [`KeyedTier`] and [`BlockTier`] for a content-addressed tier whose inherent
/// calls have the fs store's names and shapes; the `{ ... }` methods are the ones that differ.
macro_rules! content_addressed_tier {
    ($tier:ty { $($differs:item)* }) => {
        impl KeyedTier for $tier {
            fn presence(&self, keys: &[&[u8]], present: &mut [u8]) -> Result<usize> {
                self.lookup(keys, present)
            }
            fn remove_whole_key(&self, key: &[u8]) -> Result<()> {
                self.remove_key(key)
            }
        }

        impl BlockTier for $tier {
            fn store_block(&self, key: &Key, data: &[u8]) -> Result<()> {
                self.store(key, data).map(|_| ())
            }
            fn load_block(&self, key: &Key, dst: &mut [u8]) -> Result<()> {
                self.load(key, dst).map(|_| ())
            }
            fn remove_block(&self, key: &Key) -> Result<()> {
                self.remove(key)
            }
            fn store_whole_key(&self, key: &[u8], segments: &[&[u8]]) -> Result<()> {
                self.store_segments(key, segments, None).map(|_| ())
            }
            fn load_whole_key(&self, key: &[u8], segments: &mut [&mut [u8]]) -> Result<()> {
                self.load_segments(key, segments).map(|_| ())
            }
            unsafe fn queue_stores(&self, requests: &[StoreRequest]) -> Job {
                // SAFETY: this function's contract.
                unsafe { self.submit_store(requests) }
            }
            unsafe fn queue_loads(&self, requests: &[LoadRequest]) -> Job {
                // SAFETY: this function's contract.
                unsafe { self.submit_load(requests) }
            }
            unsafe fn queue_store_items(&self, items: &[StoreItem]) -> Job {
                // SAFETY: this function's contract.
                unsafe { self.submit_store_items(items) }
            }
            unsafe fn queue_load_items(&self, items: &[LoadItem]) -> Job {
                // SAFETY: this function's contract.
                unsafe { self.submit_load_items(items) }
            }
            $($differs)*
        }
    };
}

content_addressed_tier!(FsStore {
    fn contains_block(&self, key: &Key) -> Result<bool> {
        Ok(self.contains(key))
    }
    fn leading_blocks(&self, keys: &[Key]) -> Result<usize> {
        // One lookup sample per call, as `FsStore::lookup_prefix` and the object tier record.
        Ok(self.lookup_prefix(keys))
    }
});

content_addressed_tier!(ObjStore {
    fn contains_block(&self, key: &Key) -> Result<bool> {
        self.contains(key)
    }
    fn leading_blocks(&self, keys: &[Key]) -> Result<usize> {
        self.lookup_prefix(keys)
    }
});

impl KeyedTier for SlotFile {
    fn presence(&self, keys: &[&[u8]], present: &mut [u8]) -> Result<usize> {
        self.lookup(keys, present)
    }
    fn remove_whole_key(&self, key: &[u8]) -> Result<()> {
        if self.remove_key(key)? {
            Ok(())
        } else {
            Err(crate::err!(NotFound, "no entry to remove"))
        }
    }
}

/// Borrows a segment list as slices for a store.
///
/// # Safety
/// Every segment must be valid for reads of its length for `'a`.
pub(super) unsafe fn read_slices<'a>(segs: &[RawSegment]) -> Vec<&'a [u8]> {
    segs.iter()
        // SAFETY: the caller's contract; checked non-null and non-empty by `arg_segments`.
        .map(|s| unsafe { std::slice::from_raw_parts(s.ptr.cast_const(), s.len) })
        .collect()
}

/// Borrows a segment list as writable slices for a load.
///
/// # Safety
/// Every segment must be valid for unaliased writes of its length for `'a`.
pub(super) unsafe fn write_slices<'a>(segs: &[RawSegment]) -> Vec<&'a mut [u8]> {
    segs.iter()
        // SAFETY: the caller's contract; checked non-null and non-empty by `arg_segments`.
        .map(|s| unsafe { std::slice::from_raw_parts_mut(s.ptr, s.len) })
        .collect()
}

/// `kvr_<tier>_store` of a 16-byte key: `src` is valid for `len` bytes per its contract.
pub(super) fn store_block<H: BoxedHandle>(
    tier: *const H,
    key: *const kvr_block_key,
    src: *const c_void,
    len: usize,
) -> kvr_status
where
    H::Rust: BlockTier,
{
    guard(|| {
        let (t, k) = (H::try_ref(tier)?, arg_key(key)?);
        // SAFETY: `src` is valid for `len` bytes per the contract.
        let data = unsafe { arg_bytes(src.cast(), len, "src", false) }?;
        t.store_block(&k, data)
    })
}

/// `kvr_<tier>_load` of a 16-byte key: `dst` is writable for `len` bytes per its contract.
pub(super) fn load_block<H: BoxedHandle>(
    tier: *const H,
    key: *const kvr_block_key,
    dst: *mut c_void,
    len: usize,
) -> kvr_status
where
    H::Rust: BlockTier,
{
    guard(|| {
        let (t, k) = (H::try_ref(tier)?, arg_key(key)?);
        // SAFETY: `dst` is valid for writes of `len` bytes per the contract.
        let out = unsafe { arg_bytes_mut(dst.cast(), len, "dst") }?;
        t.load_block(&k, out)
    })
}

/// `kvr_<tier>_contains`: `out` is checked before the tier is asked.
pub(super) fn contains<H: BoxedHandle>(
    tier: *const H,
    key: *const kvr_block_key,
    out: *mut bool,
) -> kvr_status
where
    H::Rust: BlockTier,
{
    guard(|| {
        let (t, k) = (H::try_ref(tier)?, arg_key(key)?);
        if out.is_null() {
            return Err(Error::invalid("out is NULL"));
        }
        let v = t.contains_block(&k)?;
        // SAFETY: non-null and writable per the contract.
        unsafe { write_out(out, v, "out") }
    })
}

/// `kvr_<tier>_lookup_prefix`: `keys` is NULL or `n` valid keys (NULL only for `n == 0`).
pub(super) fn lookup_prefix<H: BoxedHandle>(
    tier: *const H,
    keys: *const kvr_block_key,
    n: usize,
    hits: *mut usize,
) -> kvr_status
where
    H::Rust: BlockTier,
{
    guard(|| {
        let t = H::try_ref(tier)?;
        if hits.is_null() {
            return Err(Error::invalid("hits is NULL"));
        }
        // SAFETY: `keys` is NULL or points to `n` valid keys (caller's contract).
        let ks = unsafe { arg_slice(keys, n, "keys", true) }?;
        let keys: Vec<Key> = ks.iter().map(|k| Key::from(*k)).collect();
        let found = t.leading_blocks(&keys)?;
        // SAFETY: non-null and writable per the contract.
        unsafe { write_out(hits, found, "hits") }
    })
}

/// `kvr_<tier>_remove` of a 16-byte key.
pub(super) fn remove<H: BoxedHandle>(tier: *const H, key: *const kvr_block_key) -> kvr_status
where
    H::Rust: BlockTier,
{
    guard(|| {
        let (t, k) = (H::try_ref(tier)?, arg_key(key)?);
        t.remove_block(&k)
    })
}

/// `kvr_<tier>_submit_store`: every item's buffer is checked (NULL or empty rejects the
/// batch); the caller keeps every `src` valid until the job completes.
pub(super) fn submit_store<H: BoxedHandle>(
    tier: *const H,
    items: *const kvr_fs_store_item,
    n: usize,
    out: *mut *mut kvr_job,
) -> kvr_status
where
    H::Rust: BlockTier,
{
    let request = |i: usize, it: &kvr_fs_store_item| {
        // SAFETY: only checks NULL/zero/overflow here; the buffer is read by the job.
        unsafe { arg_bytes(it.src.cast(), it.len, &format!("items[{i}].src"), false) }?;
        Ok(StoreRequest {
            key: Key::from(it.key),
            src: it.src.cast(),
            len: it.len,
        })
    };
    guard(|| {
        // SAFETY: `items` is NULL or points to `n` valid items and `out` is NULL or writable
        // (caller's contract); the caller keeps every `src` valid until the job completes.
        unsafe { submit_batch(tier, items, n, out, request, |t, r| t.queue_stores(r)) }
    })
}

/// `kvr_<tier>_submit_load`: as [`submit_store`]; the caller keeps every `dst` valid and
/// unaliased until the job completes.
pub(super) fn submit_load<H: BoxedHandle>(
    tier: *const H,
    items: *const kvr_fs_load_item,
    n: usize,
    out: *mut *mut kvr_job,
) -> kvr_status
where
    H::Rust: BlockTier,
{
    let request = |i: usize, it: &kvr_fs_load_item| {
        // SAFETY: only checks NULL/zero/overflow here; the buffer is written by the job.
        unsafe { arg_bytes_mut(it.dst.cast(), it.len, &format!("items[{i}].dst")) }?;
        Ok(LoadRequest {
            key: Key::from(it.key),
            dst: it.dst.cast(),
            len: it.len,
        })
    };
    guard(|| {
        // SAFETY: `items` is NULL or points to `n` valid items and `out` is NULL or writable
        // (caller's contract); the caller keeps every `dst` valid and unaliased until the job
        // completes.
        unsafe { submit_batch(tier, items, n, out, request, |t, r| t.queue_loads(r)) }
    })
}

/// `kvr_<tier>_store` of a whole key: the key's bytes and the `num_segments` segments are
/// valid (and readable) per its contract.
pub(super) fn store_key<H: BoxedHandle>(
    tier: *const H,
    key: kvr_key,
    segments: *const kvr_segment,
    num_segments: usize,
) -> kvr_status
where
    H::Rust: BlockTier,
{
    guard(|| {
        let t = H::try_ref(tier)?;
        // SAFETY: the key's bytes are valid per the contract.
        let k = unsafe { arg_whole_key(&key, "key") }?;
        // SAFETY: `segments` points to `num_segments` segments per the contract.
        let segs = unsafe { arg_segments(segments, num_segments, "segments") }?;
        // SAFETY: every segment is readable for its length per the contract.
        let data = unsafe { read_slices(&segs) };
        t.store_whole_key(k, &data)
    })
}

/// `kvr_<tier>_load` of a whole key: as [`store_key`], the segments writable and unaliased.
pub(super) fn load_key<H: BoxedHandle>(
    tier: *const H,
    key: kvr_key,
    segments: *const kvr_segment,
    num_segments: usize,
) -> kvr_status
where
    H::Rust: BlockTier,
{
    guard(|| {
        let t = H::try_ref(tier)?;
        // SAFETY: the key's bytes are valid per the contract.
        let k = unsafe { arg_whole_key(&key, "key") }?;
        // SAFETY: `segments` points to `num_segments` segments per the contract.
        let segs = unsafe { arg_segments(segments, num_segments, "segments") }?;
        // SAFETY: every segment is writable and unaliased for its length per the contract.
        let mut dst = unsafe { write_slices(&segs) };
        t.load_whole_key(k, &mut dst)
    })
}

/// `kvr_<tier>_lookup`: reads the `n` keys (a bad key counts as absent), lets the tier fill
/// the `present` bytes and writes the hit count to `hits` (may be NULL). `keys` is NULL or
/// `n` valid keys, `present` writable for `n` bytes when `n > 0`, per its contract.
pub(super) fn lookup<H: BoxedHandle>(
    tier: *const H,
    keys: *const kvr_key,
    n: usize,
    present: *mut u8,
    hits: *mut usize,
) -> kvr_status
where
    H::Rust: KeyedTier,
{
    guard(|| {
        let t = H::try_ref(tier)?;
        // SAFETY: the caller's contract.
        let ks = unsafe { super::arg_lookup_keys(keys, n) }?;
        let out: &mut [u8] = if n == 0 {
            &mut []
        } else {
            // SAFETY: the caller's contract (NULL rejected).
            unsafe { arg_bytes_mut(present, n, "present") }?
        };
        let found = t.presence(&ks, out)?;
        // SAFETY: the caller's contract.
        unsafe { write_opt(hits, found) };
        Ok(())
    })
}

/// `kvr_<tier>_remove_key`: the key's bytes are valid per its contract.
pub(super) fn remove_key<H: BoxedHandle>(tier: *const H, key: kvr_key) -> kvr_status
where
    H::Rust: KeyedTier,
{
    guard(|| {
        let t = H::try_ref(tier)?;
        // SAFETY: the key's bytes are valid per the contract.
        let k = unsafe { arg_whole_key(&key, "key") }?;
        t.remove_whole_key(k)
    })
}

/// `kvr_<tier>_submit_store_items`: every item is checked first (its size, key and
/// segments; one bad item rejects the batch); the caller keeps every buffer valid until the
/// job completes.
pub(super) fn submit_store_items<H: BoxedHandle>(
    tier: *const H,
    items: *const kvr_fs_store_segments_item,
    n: usize,
    out: *mut *mut kvr_job,
) -> kvr_status
where
    H::Rust: BlockTier,
{
    guard(|| {
        // SAFETY: `items` is NULL or points to `n` valid items (whose keys and segment
        // arrays are valid) and `out` is NULL or writable (caller's contract); the caller
        // keeps every buffer valid until the job completes.
        unsafe {
            submit_batch(
                tier,
                items,
                n,
                out,
                |i, it| item_key_and_segments(i, it),
                |t, r| {
                    let items: Vec<StoreItem> = r
                        .iter()
                        .map(|(k, segs)| StoreItem {
                            key: k,
                            segments: segs,
                        })
                        .collect();
                    t.queue_store_items(&items)
                },
            )
        }
    })
}

/// `kvr_<tier>_submit_load_items`: as [`submit_store_items`]; the caller keeps every buffer
/// valid and unaliased until the job completes.
pub(super) fn submit_load_items<H: BoxedHandle>(
    tier: *const H,
    items: *const kvr_fs_load_segments_item,
    n: usize,
    out: *mut *mut kvr_job,
) -> kvr_status
where
    H::Rust: BlockTier,
{
    guard(|| {
        // SAFETY: `items` is NULL or points to `n` valid items (whose keys and segment
        // arrays are valid) and `out` is NULL or writable (caller's contract); the caller
        // keeps every buffer valid and unaliased until the job completes.
        unsafe {
            submit_batch(
                tier,
                items,
                n,
                out,
                |i, it| item_key_and_segments(i, it),
                |t, r| {
                    let items: Vec<LoadItem> = r
                        .iter()
                        .map(|(k, segs)| LoadItem {
                            key: k,
                            segments: segs,
                        })
                        .collect();
                    t.queue_load_items(&items)
                },
            )
        }
    })
}
