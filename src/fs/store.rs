//! Storing a block in three steps: [`Inner::stage`] does everything before the data moves
//! (dedup check, capacity reservation, temp file, staged header), [`Staged::write_sync`]
//! writes the file image, then [`Staged::finish`] publishes the block. A [`Staged`] dropped
//! before it is published undoes the first step.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use super::format::{self, TensorSpec};
use super::in_place::{is_published, is_unpublished, mode_and_links};
use super::temp::{BlockTemp, Created};
use super::{path, Durability, Inner, Key, WriteMode};
use crate::io::file::{describe_type, non_regular_entry, remove_non_regular};
use crate::io::publish::sync_dir;
use crate::io::vectored::pwritev_all;
use crate::io::{AlignedBuf, SegmentPlan, IO_ALIGN};
use crate::{err, Error, Result};

/// What a store call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// The block was written.
    Written,
    /// The block already existed; nothing was written.
    AlreadyPresent,
}

/// What staging a block found.
enum Staging {
    /// The block exists already (deduplicated): nothing to write.
    Present,
    /// The temp file is created and the header staged: write, then [`Staged::finish`].
    Write(Staged),
}

/// A block between its temp file's creation and its publication. Dropping it unpublished
/// removes a named temp file (an unnamed one just vanishes) and releases the capacity
/// reservation and the staging buffer.
struct Staged {
    inner: Arc<Inner>,
    key: Key,
    final_path: PathBuf,
    /// `Some` once created (always, outside `Inner::stage`).
    temp: Option<BlockTemp>,
    /// The header, then the bounce area of the payload's [`SegmentPlan`] (with direct I/O:
    /// the zero-padded tail page, or everything after the first unaligned segment, padded).
    /// `Some` until dropped.
    staging: Option<AlignedBuf>,
    /// Staged bytes written before the payload.
    head: usize,
    /// Which payload bytes are written in place from the caller's segments, after `head`,
    /// and how many staged bytes (from offset `head` of the staging buffer) follow them.
    plan: SegmentPlan,
    file_len: u64,
    payload_len: u64,
    /// Capacity reserved for this block, released on drop.
    reserved: u64,
    /// When staging began: the store's latency ends when this is dropped.
    started: Instant,
}

impl Staged {
    fn temp(&self) -> &BlockTemp {
        self.temp.as_ref().expect("created in Inner::stage")
    }

    /// The file image at offset 0: the staged header, the in-place parts of the payload's
    /// segments `data`, then the staged bounce area (empty parts left out).
    fn segments<'a>(&'a self, data: &[&'a [u8]]) -> Vec<&'a [u8]> {
        let s = self.staging.as_ref().expect("staged").as_slice();
        let mut parts = Vec::with_capacity(data.len() + 2);
        parts.push(&s[..self.head]);
        parts.extend(self.plan.in_place_parts(data));
        if self.plan.bounce_len > 0 {
            parts.push(&s[self.head..self.head + self.plan.bounce_len]);
        }
        parts
    }

    fn describe(&self) -> String {
        self.temp().describe(&self.final_path)
    }

    /// Writes the file image with `pwritev` (`data`: the payload's segments given to `stage`).
    fn write_sync(&self, data: &[&[u8]]) -> Result<()> {
        pwritev_all(self.temp().file(), &self.segments(data), 0)
            .map_err(|e| Error::io(format!("writing {}", self.describe()), e))
    }

    /// Links the written file in under the block's name; `Ok(false)` when that name holds
    /// a file already. Stores skip the existence check before writing where the index says
    /// the block is new, so a FIFO or symlink planted at the name is met here: it is removed
    /// (as that check would have) and the link retried once.
    fn publish(&mut self) -> std::io::Result<bool> {
        let temp = self.temp.as_mut().expect("created in Inner::stage");
        let published = temp.publish(&self.final_path)?;
        if !published && remove_non_regular(&self.final_path) {
            return temp.publish(&self.final_path);
        }
        Ok(published)
    }

    /// After the write: cuts the file to its exact length, syncs as configured, publishes
    /// it under the block's name and records it. `None` when a file written in place was
    /// removed before it was published (a cleaner took it for a dead writer's: its writer
    /// stalled for longer than `in_place::UNPUBLISHED_GRACE`): the store is to be redone.
    fn finish(mut self) -> Result<Option<Stored>> {
        let file = self.temp().file();
        if self.file_len % IO_ALIGN as u64 != 0 {
            file.set_len(self.file_len)
                .map_err(|e| Error::io(format!("truncating {}", self.describe()), e))?;
        }
        if self.inner.durability != Durability::None {
            file.sync_data()
                .map_err(|e| Error::io(format!("fdatasync of {}", self.describe()), e))?;
        }
        let published = match self.publish() {
            Ok(p) => p,
            Err(e) => {
                let what = format!(
                    "publishing {} as {}",
                    self.describe(),
                    self.final_path.display()
                );
                return Err(Error::io(what, e));
            }
        };
        // The attributes the `fchmod` returned (no request on FUSE or NFS, which cache them).
        if self.temp().is_in_place()
            && mode_and_links(self.temp().file(), false).is_ok_and(|(_, links)| links == 0)
        {
            return Ok(None);
        }
        let inner = &self.inner;
        let block_dir = self.final_path.parent().expect("block paths have a parent");
        if inner.durability == Durability::FdatasyncDir {
            if self.temp().is_in_place() {
                // The permission bits that published it, with the inode.
                self.temp()
                    .file()
                    .sync_all()
                    .map_err(|e| Error::io(format!("fsync of {}", self.describe()), e))?;
            }
            sync_dir(block_dir)
                .map_err(|e| Error::io(format!("fsync of directory {}", block_dir.display()), e))?;
        }
        if !published {
            // Another writer published the same key (same content) first, unless what took
            // the name is no block at all.
            if let Some(meta) = non_regular_entry(&self.final_path) {
                return Err(not_a_block(&self.final_path, &meta));
            }
            inner.note_present(&self.key, self.file_len);
            return Ok(Some(Stored::AlreadyPresent));
        }
        inner.lock_index().insert(self.key, self.file_len);
        inner.counters.stores.fetch_add(1, Relaxed);
        inner
            .counters
            .bytes_written
            .fetch_add(self.payload_len, Relaxed);
        Ok(Some(Stored::Written))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        self.inner.latency.store.record_since(self.started);
        // The temp file first: a named one is removed unless published (its name once
        // published; off this path where that is a round trip).
        if let Some(t) = self.temp.take() {
            self.inner.finish_with(t);
        }
        if let Some(b) = self.staging.take() {
            self.inner.bounce.put(b);
        }
        if self.reserved > 0 {
            self.inner.lock_index().unreserve(self.reserved);
        }
    }
}

/// The error for a block path held by something that is no block file and cannot be
/// removed (a directory), or that came back while storing.
fn not_a_block(path: &std::path::Path, meta: &std::fs::Metadata) -> Error {
    err!(
        Corrupt,
        "storing block {}: the path holds {}, not a block file; remove it",
        path.display(),
        describe_type(meta)
    )
}

impl Inner {
    /// Stores a block (the concatenation of `data`'s segments) under the whole engine `key`,
    /// synchronously on the calling thread.
    pub(super) fn store(
        self: &Arc<Self>,
        key: &[u8],
        data: &[&[u8]],
        tensor: Option<&TensorSpec>,
    ) -> Result<Stored> {
        for _ in 0..3 {
            match self.stage(key, data, tensor)? {
                Staging::Present => return Ok(Stored::AlreadyPresent),
                Staging::Write(staged) => {
                    staged.write_sync(data)?;
                    if let Some(stored) = staged.finish()? {
                        return Ok(stored);
                    }
                }
            }
        }
        Err(err!(
            Io,
            "storing block {}: the file was removed before it was published, 3 times (writes \
             stalled for longer than {} s each?)",
            path::block_path(&self.dir, &self.name(key)).display(),
            super::in_place::UNPUBLISHED_GRACE.as_secs()
        ))
    }

    /// Everything before a block's data moves: validation, the dedup check, the capacity
    /// reservation, the allocated temp file and the staged header. A full disk fails here.
    fn stage(
        self: &Arc<Self>,
        key: &[u8],
        data: &[&[u8]],
        tensor: Option<&TensorSpec>,
    ) -> Result<Staging> {
        let started = Instant::now();
        crate::key::check_key(key)?;
        let name = self.name(key);
        let final_path = path::block_path(&self.dir, &name);
        let ctx = || format!("storing block {}", final_path.display());
        let payload_len = crate::io::vectored::payload_len(data).map_err(|e| e.context(ctx()))?;
        let default_spec;
        let spec = match tensor {
            Some(t) => t,
            None => {
                default_spec = TensorSpec::bytes(payload_len as u64);
                &default_spec
            }
        };
        spec.check(payload_len as u64)
            .map_err(|e| e.context(ctx()))?;
        if self.may_be_present(&name) {
            match std::fs::symlink_metadata(&final_path) {
                // A block of this name exists: the same key (deduplicated), or, for a name
                // collision, another key, which loads of this key then never return. (One
                // being written in place is met at its exclusive create.)
                Ok(meta) if is_published(&meta) => {
                    self.note_present(&name, meta.len());
                    self.latency.store.record_since(started);
                    return Ok(Staging::Present);
                }
                Ok(meta) if meta.is_dir() => return Err(not_a_block(&final_path, &meta)),
                Ok(meta) if is_unpublished(&meta) => {}
                // A FIFO, a symlink, a socket planted at the block's name: no block, and in
                // the way of publishing one (`link` never replaces a name): removed.
                Ok(_) => {
                    remove_non_regular(&final_path);
                }
                Err(_) => {}
            }
        }
        let sum = format::checksum_segments(data);
        // Written in place, a block names its writer until published (see `in_place`).
        let writer = match self.write_mode {
            WriteMode::InPlace => Some(self.writer_id()?),
            _ => None,
        };
        let header = format::encode_header_by(key, payload_len as u64, sum, spec, writer);
        let file_len = (header.len() + payload_len) as u64;
        let reserved = if self.capacity > 0 {
            // Evictions need the whole LRU order: wait for the scan started at open.
            self.scan_state.wait(None);
            if file_len > self.capacity {
                return Err(err!(
                    TooLarge,
                    "{}: block file of {file_len} bytes exceeds the store capacity of {} bytes",
                    ctx(),
                    self.capacity
                ));
            }
            let mut ix = self.lock_index();
            self.evict_until(&mut ix, file_len);
            ix.reserve(file_len);
            file_len
        } else {
            0
        };
        // From here on, dropping `staged` undoes everything (reservation, temp file, buffer).
        let mut staged = Staged {
            inner: self.clone(),
            key: name,
            temp: None,
            staging: None,
            head: 0,
            plan: SegmentPlan::new(false, []),
            file_len,
            payload_len: payload_len as u64,
            reserved,
            final_path,
            started,
        };
        // No `fallocate` first: the block is written whole right away, and that write
        // allocates; a full file system fails it with `ENOSPC` (`NoSpace`) and the temp file
        // goes with `staged`, so no partial block is ever published. (One syscall and ~9% of
        // a 64 KiB block's CPU saved, a network round trip on FUSE.)
        match self.create_temp(&name, &staged.final_path)? {
            Created::File(temp) => staged.temp = Some(temp),
            Created::Present(Some(len)) => {
                self.note_present(&name, len);
                return Ok(Staging::Present);
            }
            // Being written by a live writer: a dedup, but no block yet (not indexed).
            Created::Present(None) => {
                self.counters.dedup.fetch_add(1, Relaxed);
                return Ok(Staging::Present);
            }
        }
        self.stage_buffers(&mut staged, &header, data)?;
        Ok(Staging::Write(staged))
    }

    /// Fills the staging buffer: the header, then the bounce area the payload's segment
    /// plan asks for. Direct I/O: aligned segments go to the kernel in place, with only the
    /// header and the zero-padded tail page staged; the bytes from the first unaligned
    /// segment on are gathered after the header, padded to a page.
    fn stage_buffers(&self, st: &mut Staged, header: &[u8], data: &[&[u8]]) -> Result<()> {
        let plan = SegmentPlan::of(self.direct, data);
        let mut b = self.bounce.take(header.len() + plan.bounce_len)?;
        let (head, bounce) = b.as_mut_slice().split_at_mut(header.len());
        head.copy_from_slice(header);
        plan.fill_bounce(data, bounce);
        st.staging = Some(b);
        (st.head, st.plan) = (header.len(), plan);
        Ok(())
    }

    /// Whether the block `name` may exist already, so that a store checks for it before
    /// writing. Once the scan is done, a block this process does not know of is new unless
    /// another process or host stored it since: for those, the publishing `link` fails with
    /// `EEXIST` and the store counts a dedup all the same, so skipping the check (a `statx`,
    /// a network round trip on FUSE) only costs the rare late duplicate its write.
    fn may_be_present(&self, name: &Key) -> bool {
        !self.scan_state.is_done() || self.lock_index().contains(name)
    }

    /// Records a block found on disk (deduplicated store).
    pub(super) fn note_present(&self, key: &Key, file_len: u64) {
        let mut ix = self.lock_index();
        if !ix.touch(key) {
            ix.insert(*key, file_len);
        }
        self.counters.dedup.fetch_add(1, Relaxed);
    }
}
