//! Batched slot-file I/O on the pool threads: raw-buffer items (16-byte keys, one buffer)
//! and whole-key, segmented items, each item finishing as its synchronous call would.

use std::sync::Arc;

use super::{too_small, Key, RawSegment, SlotFile};
use crate::io::job::Completer;
use crate::io::vectored::{payload_len, BatchEntry, SegmentBatch};
use crate::io::Job;
use crate::{err, Result};

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

impl SlotFile {
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
