//! The write path: reserve a slot, invalidate its old table entry, one positioned write of
//! header page and payload, then the new table entry (the crash-safety order of the module
//! docs).

use super::format::{self, SlotHeader, PAGE, SLOT_HEADER_LEN};
use super::index::Reservation;
use super::{hex, name_of, Inner, Key};
use crate::io::vectored::{payload_len, pwritev_all};
use crate::io::SegmentPlan;
use crate::{err, Error, Result};

impl Inner {
    /// Writes slot `s`'s header table entry (zeros: the slot holds no entry).
    ///
    /// The table is a shared mapping of the file: a store lands in the page cache at once, so
    /// it survives the death of the process like a `pwrite` would, without a syscall or the
    /// inode lock that buffered writes take (which would serialise the O_DIRECT slot writes).
    /// Only the thread owning slot `s` (writer or retirer, by the index's slot state) writes
    /// its entry. A store torn by a kill fails the entry's checksum: no entry.
    pub(super) fn write_table(&self, s: u32, entry: &[u8; SLOT_HEADER_LEN]) -> std::io::Result<()> {
        let off = s as usize * SLOT_HEADER_LEN;
        debug_assert!(off + SLOT_HEADER_LEN <= self.table_map.len());
        // SAFETY: `off + 128` is inside the mapping (s < num_slots, the mapping covers
        // num_slots * 128 bytes); no other thread writes this entry concurrently (see above)
        // and nothing in this process reads the mapping while it is shared.
        unsafe {
            std::ptr::copy_nonoverlapping(
                entry.as_ptr(),
                self.table_map.as_mut_ptr().add(off),
                SLOT_HEADER_LEN,
            )
        };
        if self.sync {
            let page = off / PAGE as usize * PAGE as usize;
            self.table_map.flush_range(page, PAGE as usize)?;
        }
        Ok(())
    }

    /// Invalidates a retiring slot's table entry, then frees the slot (or leaves it to the
    /// last read that still pins it).
    pub(super) fn retire(&self, s: u32) {
        let ok = self.write_table(s, &[0; SLOT_HEADER_LEN]).is_ok();
        self.lock().finish_retire(s, ok);
    }

    pub(super) fn write(&self, key: &[u8], data: &[&[u8]], meta: &[u8]) -> Result<()> {
        let started = std::time::Instant::now();
        let r = self.write_untimed(key, data, meta);
        self.latency.store.record_since(started);
        r
    }

    fn write_untimed(&self, key: &[u8], data: &[&[u8]], meta: &[u8]) -> Result<()> {
        let g = &self.geometry;
        crate::key::check_key(key)?;
        let len = payload_len(data).map_err(|e| e.context(format!("entry {}", hex(key))))?;
        if len as u64 > g.slot_size {
            return Err(err!(
                TooLarge,
                "entry {}: payload of {len} bytes does not fit a slot of {} bytes",
                hex(key),
                g.slot_size
            ));
        }
        let max_meta = format::max_meta(key.len());
        if meta.len() > max_meta {
            return Err(err!(
                TooLarge,
                "entry {}: metadata of {} bytes exceeds the {max_meta} bytes a slot holds \
                 with a {}-byte key",
                hex(key),
                meta.len(),
                key.len()
            ));
        }
        let name = name_of(key);
        let data_sum = format::data_checksum_segments(data, meta);
        let r = self.lock().reserve(&name)?;
        match self.write_slot(&r, &name, key, data, len, meta, data_sum) {
            Ok(()) => {
                let retire = self.lock().commit(&r, &name, len as u64, meta.len() as u32);
                if let Some(s) = retire {
                    self.retire(s);
                }
                Ok(())
            }
            Err(e) => {
                let s = self.lock().abort(&r);
                self.retire(s);
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn write_slot(
        &self,
        r: &Reservation,
        name: &Key,
        key: &[u8],
        data: &[&[u8]],
        len: usize,
        meta: &[u8],
        data_sum: u64,
    ) -> Result<()> {
        let off = self.geometry.slot_offset(r.slot);
        let plan = SegmentPlan::of(self.direct, data);
        // One pooled buffer: the header page, then the payload's bounce area (if any).
        let mut buf = self.bounce.get(PAGE as usize + plan.bounce_len)?;
        let (page, bounce) = buf.as_mut_slice().split_at_mut(PAGE as usize);
        let h = SlotHeader {
            key: *name,
            len: len as u64,
            meta_len: meta.len() as u32,
            seq: r.seq,
            data_sum,
            slot: r.slot,
        };
        if key.len() == 16 {
            // A 16-byte key is its own name: the version-1 entry, as before version 2.
            page[SLOT_HEADER_LEN + meta.len()..].fill(0);
            format::encode_slot_header(&h, meta, page);
        } else {
            page[SLOT_HEADER_LEN + key.len() + meta.len()..].fill(0);
            format::encode_slot_header_v2(&h, key, meta, page);
        }
        plan.fill_bounce(data, bounce);

        let io_err = |what: &str, e| {
            Error::io(
                format!(
                    "writing {what} of entry {} to slot {} of {}",
                    hex(key),
                    r.slot,
                    self.path.display()
                ),
                e,
            )
        };
        let sync = |what: &str| -> Result<()> {
            if self.sync {
                self.file.sync_data().map_err(|e| io_err(what, e))?;
            }
            Ok(())
        };
        // 1. The slot may hold a live or stale entry: drop its table entry first, so a crash
        //    during the payload write can never pair that entry with new bytes.
        if r.invalidate {
            self.write_table(r.slot, &[0; SLOT_HEADER_LEN])
                .map_err(|e| io_err("the table entry (invalidation)", e))?;
            sync("(sync) the table entry")?;
        }
        // 2. Header page (header, key, metadata) and payload in one positioned write.
        let mut parts: Vec<&[u8]> = Vec::with_capacity(data.len() + 2);
        parts.push(&page[..]);
        parts.extend(plan.in_place_parts(data));
        parts.push(&bounce[..plan.bounce_len]);
        pwritev_all(&self.file, &parts, off).map_err(|e| io_err("the payload", e))?;
        sync("(sync) the payload")?;
        // 3. The table entry: from now on a recovery finds the entry.
        let mut entry = [0u8; SLOT_HEADER_LEN];
        entry.copy_from_slice(&page[..SLOT_HEADER_LEN]);
        self.write_table(r.slot, &entry)
            .map_err(|e| io_err("the table entry", e))?;
        sync("(sync) the table entry")?;
        Ok(())
    }
}
