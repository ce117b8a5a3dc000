//! The read path: pin the entry, one positioned read of header page and payload, then the
//! checks (header, sequence, whole key, checksum) before the bytes count as the entry's.

use super::format::{self, PAGE};
use super::index::Pinned;
use super::{hex, name_of, EntryLen, Inner, Key};
use crate::io::vectored::{payload_len_mut, preadv_exact};
use crate::io::SegmentPlan;
use crate::{err, Error, ErrorKind, Result};

impl Inner {
    /// Reads the entry of `key` into `dst`'s segments: with `exact`, their lengths must sum
    /// to the payload's (else `LayoutMismatch`); without, `dst` is one buffer of at least the
    /// payload's length (else the needed lengths come back as `Ok(Err(..))`).
    pub(super) fn read(
        &self,
        key: &[u8],
        dst: &mut [&mut [u8]],
        exact: bool,
        meta_dst: &mut [u8],
    ) -> Result<std::result::Result<EntryLen, EntryLen>> {
        let started = std::time::Instant::now();
        let r = self.read_untimed(key, dst, exact, meta_dst);
        self.latency.load.record_since(started);
        r
    }

    fn read_untimed(
        &self,
        key: &[u8],
        dst: &mut [&mut [u8]],
        exact: bool,
        meta_dst: &mut [u8],
    ) -> Result<std::result::Result<EntryLen, EntryLen>> {
        crate::key::check_key(key)?;
        // One buffer may be empty (a size query answered with `TooSmall`); segments may not.
        let cap = if exact {
            payload_len_mut(dst).map_err(|e| e.context(format!("entry {}", hex(key))))?
        } else {
            dst[0].len()
        };
        let name = name_of(key);
        let p = {
            let mut ix = self.lock();
            let Some(p) = ix.pin(&name) else {
                return Err(err!(
                    NotFound,
                    "no entry {} in slot file {}",
                    hex(key),
                    self.path.display()
                ));
            };
            let need = EntryLen {
                len: p.len,
                meta_len: p.meta_len as u64,
            };
            if exact && cap as u64 != p.len {
                ix.unpin(p.slot);
                return Err(err!(
                    LayoutMismatch,
                    "entry {} holds {} payload bytes, the segments hold {cap}",
                    hex(key),
                    p.len
                ));
            }
            if (cap as u64) < p.len || (meta_dst.len() as u64) < p.meta_len as u64 {
                ix.unpin(p.slot);
                return Ok(Err(need));
            }
            p
        };
        if !exact {
            // One buffer of at least the payload's length: read into its start.
            let whole = std::mem::take(&mut dst[0]);
            dst[0] = &mut whole[..p.len as usize];
        }
        let result = self.read_slot(&p, key, &name, dst, meta_dst);
        let mut ix = self.lock();
        match result {
            Ok(()) => {
                ix.counters.hits += 1;
                ix.counters.bytes_read += p.len;
                ix.unpin(p.slot);
                Ok(Ok(EntryLen {
                    len: p.len,
                    meta_len: p.meta_len as u64,
                }))
            }
            Err(e) => {
                let retire = if e.kind() == ErrorKind::Corrupt {
                    ix.drop_corrupt(&p)
                } else {
                    ix.unpin(p.slot);
                    None
                };
                drop(ix);
                if let Some(s) = retire {
                    log::warn!(
                        target: "kvr::disk",
                        "dropped corrupt entry {} in slot {} of {}: {e}",
                        hex(key),
                        p.slot,
                        self.path.display()
                    );
                    self.retire(s);
                }
                Err(e)
            }
        }
    }

    fn read_slot(
        &self,
        p: &Pinned,
        key: &[u8],
        name: &Key,
        dst: &mut [&mut [u8]],
        meta_dst: &mut [u8],
    ) -> Result<()> {
        let off = self.geometry.slot_offset(p.slot);
        let plan = SegmentPlan::of_mut(self.direct, dst);
        // One pooled buffer: the header page, then the payload's bounce area (if any).
        let mut buf = self.bounce.get(PAGE as usize + plan.bounce_len)?;
        let (page, bounce) = buf.as_mut_slice().split_at_mut(PAGE as usize);
        {
            let mut parts: Vec<&mut [u8]> = Vec::with_capacity(dst.len() + 2);
            parts.push(&mut page[..]);
            parts.extend(plan.in_place_parts_mut(dst));
            parts.push(&mut bounce[..plan.bounce_len]);
            preadv_exact(&self.file, &mut parts, off).map_err(|e| {
                Error::io(
                    format!(
                        "reading entry {} from slot {} of {}",
                        hex(key),
                        p.slot,
                        self.path.display()
                    ),
                    e,
                )
            })?;
        }
        plan.drain_bounce(bounce, dst);
        let corrupt = |why: String| {
            err!(
                Corrupt,
                "entry {} in slot {} of {}: {why}; entry dropped",
                hex(key),
                p.slot,
                self.path.display()
            )
        };
        let page = &page[..];
        let h = format::decode_slot_header(page, p.slot, self.geometry.slot_size)
            .ok_or_else(|| corrupt("slot header is damaged (checksum or fields)".into()))?;
        if h.key != *name || h.seq != p.seq || h.len != p.len || h.meta_len != p.meta_len {
            return Err(corrupt(format!(
                "slot header holds name {} seq {} len {}, index expected seq {} len {}",
                h.key, h.seq, h.len, p.seq, p.len
            )));
        }
        let (stored_key, meta) = format::slot_key_and_meta(page, &h);
        if stored_key != key {
            if name_of(stored_key) == *name {
                // Another key of the same name owns the slot: intact, never ours.
                return Err(err!(
                    NotFound,
                    "no entry {} in slot file {} (slot {} holds another key of the same name)",
                    hex(key),
                    self.path.display(),
                    p.slot
                ));
            }
            return Err(corrupt(format!("slot holds key {}", hex(stored_key))));
        }
        if self.verify {
            let parts: Vec<&[u8]> = dst.iter().map(|s| &s[..]).collect();
            let sum = format::data_checksum_segments(&parts, meta);
            if sum != h.data_sum {
                return Err(corrupt(format!(
                    "payload checksum mismatch (stored {:016x}, computed {sum:016x})",
                    h.data_sum
                )));
            }
        }
        meta_dst[..meta.len()].copy_from_slice(meta);
        Ok(())
    }
}
