//! The in-memory index of a slot file: key -> slot map, slot states, an intrusive LRU list and
//! a free list. Pure bookkeeping, no I/O; every operation is O(1) (eviction skips the few
//! slots pinned by reads in flight). The caller holds it under one mutex and does I/O outside.
//!
//! Slot life cycle:
//!
//! ```text
//! Free --reserve--> Writing --commit--> Live --(superseded, removed, corrupt)--> Retiring
//! Retiring --table entry invalidated, no pins--> Free
//! Retiring --table entry invalidated, still pinned--> Draining --last unpin--> Free
//! Live --evict or overwrite in place (unpinned, by a writer)--> Writing (the writer
//!   invalidates the table entry before its payload lands)
//! ```
//!
//! An entry leaves the file's durable state when the operation that ends it returns: the
//! thread that moves a slot to `Retiring` invalidates its table entry at once, even while
//! reads pin it (reads use the slot's own header page and payload, never the table), so a
//! crash can no longer bring back a removed or superseded value. Only the slot's reuse waits
//! for the reads: a slot that a read has pinned is never handed to a writer, so a read can
//! never see its slot reused under it, and a read that pinned before the removal still
//! returns the bytes it started reading.

use std::collections::HashMap;

use super::format::{Key, SlotHeader};
use super::DiskStats;
use crate::{err, Result};

const NIL: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Free,
    Writing,
    /// In the map and the LRU list.
    Live,
    /// Out of the map; the thread that unlinked it is invalidating its table entry.
    Retiring,
    /// Table entry invalidated; waits for the reads that still pin it before reuse.
    Draining,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    state: State,
    /// The file may hold a valid header in this slot: invalidate it before reuse.
    on_disk: bool,
    pins: u32,
    prev: u32,
    next: u32,
    key: Key,
    len: u64,
    meta_len: u32,
    seq: u64,
}

const FREE_SLOT: Slot = Slot {
    state: State::Free,
    on_disk: false,
    pins: 0,
    prev: NIL,
    next: NIL,
    key: Key([0; 16]),
    len: 0,
    meta_len: 0,
    seq: 0,
};

/// A slot handed to a writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The slot to write.
    pub slot: u32,
    /// The entry's sequence number.
    pub seq: u64,
    /// The slot may hold a valid header on disk: invalidate it in the same write as the
    /// payload (before the payload lands).
    pub invalidate: bool,
    /// The key evicted to free this slot, if any.
    pub evicted: Option<Key>,
}

/// A live entry pinned for a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pinned {
    /// Its slot (pinned: not reused until [`Index::unpin`]).
    pub slot: u32,
    /// Payload bytes.
    pub len: u64,
    /// Metadata bytes.
    pub meta_len: u32,
    /// Sequence number the slot's header must carry.
    pub seq: u64,
}

/// The index. See the module docs.
pub struct Index {
    map: HashMap<Key, u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Most recently used.
    head: u32,
    /// Least recently used: the next eviction victim.
    tail: u32,
    next_seq: u64,
    /// The activity counters of [`DiskStats`] (evictions, hits, ... bytes read), counted
    /// here under the index lock; its geometry and state fields stay zero here and are
    /// filled by `SlotFile::stats`.
    pub counters: DiskStats,
}

impl Index {
    /// An index of `n` free slots whose headers are known to be invalid.
    pub fn new(n: u32) -> Index {
        Index {
            map: HashMap::with_capacity(n as usize),
            slots: vec![FREE_SLOT; n as usize],
            free: (0..n).rev().collect(),
            head: NIL,
            tail: NIL,
            next_seq: 1,
            counters: DiskStats::default(),
        }
    }

    /// Rebuilds an index from the valid headers a scan found (`found[i]` for slot `i`). For a
    /// key found in several slots the highest sequence number wins; the returned slots held
    /// the losers and must have their headers invalidated (then [`Index::finish_retire`]),
    /// or an older value could resurface after the winner is evicted. Recency is rebuilt from
    /// the sequence numbers (the most recently written entry is the most recently used).
    pub fn recover(found: &[Option<SlotHeader>]) -> (Index, Vec<u32>) {
        let n = found.len() as u32;
        let mut ix = Index::new(n);
        ix.free.clear();
        let mut winners: HashMap<Key, u32> = HashMap::with_capacity(found.len());
        let mut losers = Vec::new();
        let mut max_seq = 0;
        for (i, h) in found.iter().enumerate() {
            let Some(h) = h else { continue };
            max_seq = max_seq.max(h.seq);
            let i = i as u32;
            match winners.get_mut(&h.key) {
                None => {
                    winners.insert(h.key, i);
                }
                Some(w) => {
                    let prev = found[*w as usize].as_ref().unwrap();
                    if h.seq > prev.seq {
                        losers.push(*w);
                        *w = i;
                    } else {
                        losers.push(i);
                    }
                }
            }
        }
        let mut live: Vec<(u64, u32)> = winners
            .values()
            .map(|&s| (found[s as usize].unwrap().seq, s))
            .collect();
        live.sort_unstable();
        for &(_, s) in &live {
            let h = found[s as usize].unwrap();
            let slot = &mut ix.slots[s as usize];
            slot.state = State::Live;
            slot.on_disk = true;
            slot.key = h.key;
            slot.len = h.len;
            slot.meta_len = h.meta_len;
            slot.seq = h.seq;
            ix.map.insert(h.key, s);
            ix.linked_push_front(s);
        }
        for &s in &losers {
            let slot = &mut ix.slots[s as usize];
            slot.state = State::Retiring;
            slot.on_disk = true;
        }
        for s in (0..n).rev() {
            if ix.slots[s as usize].state == State::Free {
                ix.free.push(s);
            }
        }
        ix.next_seq = max_seq + 1;
        (ix, losers)
    }

    fn linked_push_front(&mut self, s: u32) {
        let old = self.head;
        {
            let slot = &mut self.slots[s as usize];
            slot.prev = NIL;
            slot.next = old;
        }
        if old != NIL {
            self.slots[old as usize].prev = s;
        } else {
            self.tail = s;
        }
        self.head = s;
    }

    fn list_unlink(&mut self, s: u32) {
        let Slot { prev, next, .. } = self.slots[s as usize];
        if prev != NIL {
            self.slots[prev as usize].next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            self.slots[next as usize].prev = prev;
        } else {
            self.tail = prev;
        }
        let slot = &mut self.slots[s as usize];
        slot.prev = NIL;
        slot.next = NIL;
    }

    /// Takes a live slot out of the map and the LRU list (its state is the caller's to set).
    fn unlink_entry(&mut self, s: u32) {
        debug_assert_eq!(self.slots[s as usize].state, State::Live);
        let key = self.slots[s as usize].key;
        self.map.remove(&key);
        self.list_unlink(s);
    }

    /// Ends live entry `s`: it leaves the map and becomes `Retiring`, pinned or not. Returns
    /// `s`: the caller invalidates its table entry now, then calls [`Index::finish_retire`].
    fn retire_entry(&mut self, s: u32) -> u32 {
        self.unlink_entry(s);
        self.slots[s as usize].state = State::Retiring;
        s
    }

    /// Number of live entries.
    pub fn entries(&self) -> u64 {
        self.map.len() as u64
    }

    /// Number of free slots.
    pub fn free_slots(&self) -> u64 {
        self.free.len() as u64
    }

    /// Whether `key` has a live entry (does not touch recency).
    pub fn contains(&self, key: &Key) -> bool {
        self.map.contains_key(key)
    }

    /// Payload and metadata length of `key`'s live entry (does not touch recency).
    pub fn lengths(&self, key: &Key) -> Option<(u64, u32)> {
        self.map.get(key).map(|&s| {
            let slot = &self.slots[s as usize];
            (slot.len, slot.meta_len)
        })
    }

    /// Keys from least to most recently used (for tests and diagnostics; O(n)).
    pub fn lru_order(&self) -> Vec<Key> {
        let mut out = Vec::with_capacity(self.map.len());
        let mut s = self.tail;
        while s != NIL {
            out.push(self.slots[s as usize].key);
            s = self.slots[s as usize].prev;
        }
        out
    }

    /// Looks `key` up for a read: marks it most recently used and pins its slot. Counts a
    /// miss when absent (the caller counts the hit once the read succeeded).
    pub fn pin(&mut self, key: &Key) -> Option<Pinned> {
        let Some(&s) = self.map.get(key) else {
            self.counters.misses += 1;
            return None;
        };
        if self.head != s {
            self.list_unlink(s);
            self.linked_push_front(s);
        }
        let slot = &mut self.slots[s as usize];
        slot.pins += 1;
        Some(Pinned {
            slot: s,
            len: slot.len,
            meta_len: slot.meta_len,
            seq: slot.seq,
        })
    }

    /// Drops a read's pin. The last pin of a `Draining` slot frees it (its table entry is
    /// already invalid: no I/O is left to do).
    pub fn unpin(&mut self, s: u32) {
        let slot = &mut self.slots[s as usize];
        debug_assert!(
            slot.pins > 0 && matches!(slot.state, State::Live | State::Retiring | State::Draining)
        );
        slot.pins -= 1;
        if slot.pins == 0 && slot.state == State::Draining {
            self.free_slot(s);
        }
    }

    /// The read of pinned entry `p` found a bad header or checksum: drops the entry (if it is
    /// still the live one) and unpins. Returns a slot to retire (see [`Index::remove`]), if
    /// any.
    pub fn drop_corrupt(&mut self, p: &Pinned) -> Option<u32> {
        self.counters.corrupt_dropped += 1;
        let slot = self.slots[p.slot as usize];
        let retire =
            (slot.state == State::Live && slot.seq == p.seq).then(|| self.retire_entry(p.slot));
        self.unpin(p.slot);
        retire
    }

    /// Hands a slot to a writer of `key`: a free slot (an existing entry of the key stays
    /// live until the new one commits), else the key's own unpinned slot, else the least
    /// recently used entry no read pins (evicted). `Busy` when every slot is being written or
    /// read.
    pub fn reserve(&mut self, key: &Key) -> Result<Reservation> {
        if let Some(s) = self.free.pop() {
            return Ok(self.claim(s, None));
        }
        // No free slot: overwrite the key's own entry in place if no read pins it (a crash
        // then leaves no entry, as its header is invalidated first), else evict.
        if let Some(&s) = self.map.get(key) {
            if self.slots[s as usize].pins == 0 {
                self.unlink_entry(s);
                return Ok(self.claim(s, None));
            }
        }
        let mut s = self.tail;
        while s != NIL && self.slots[s as usize].pins > 0 {
            s = self.slots[s as usize].prev;
        }
        if s == NIL {
            return Err(err!(
                Busy,
                "all {} slots are being written or read; retry, or use more slots",
                self.slots.len()
            ));
        }
        let key = self.slots[s as usize].key;
        self.unlink_entry(s);
        self.counters.evictions += 1;
        Ok(self.claim(s, Some(key)))
    }

    /// Hands unlinked slot `s` to a writer with the next sequence number.
    fn claim(&mut self, s: u32, evicted: Option<Key>) -> Reservation {
        let seq = self.next_seq;
        self.next_seq += 1;
        let slot = &mut self.slots[s as usize];
        slot.state = State::Writing;
        Reservation {
            slot: s,
            seq,
            invalidate: slot.on_disk,
            evicted,
        }
    }

    /// A reserved write finished: the entry becomes `key`'s live entry unless a write with a
    /// higher sequence number already committed. Returns a slot to retire at once (the
    /// superseded entry, even while reads pin it, or this one if it lost), if any.
    pub fn commit(&mut self, r: &Reservation, key: &Key, len: u64, meta_len: u32) -> Option<u32> {
        let s = r.slot;
        {
            let slot = &mut self.slots[s as usize];
            debug_assert_eq!(slot.state, State::Writing);
            slot.state = State::Live;
            slot.on_disk = true;
            slot.key = *key;
            slot.len = len;
            slot.meta_len = meta_len;
            slot.seq = r.seq;
            slot.pins = 0;
        }
        self.counters.writes += 1;
        self.counters.bytes_written += len;
        let mut retire = None;
        if let Some(&old) = self.map.get(key) {
            if self.slots[old as usize].seq > r.seq {
                // A later write of the same key won the race: this one is already stale.
                self.slots[s as usize].state = State::Retiring;
                return Some(s);
            }
            retire = Some(self.retire_entry(old));
        }
        self.map.insert(*key, s);
        self.linked_push_front(s);
        retire
    }

    /// A reserved write failed: the slot is retired (its on-disk state is unknown).
    pub fn abort(&mut self, r: &Reservation) -> u32 {
        let slot = &mut self.slots[r.slot as usize];
        slot.state = State::Retiring;
        slot.on_disk = true;
        r.slot
    }

    /// Removes `key`'s entry. `None` if absent, else the slot to retire: the caller
    /// invalidates its table entry before returning (even while reads pin the slot), then
    /// calls [`Index::finish_retire`].
    pub fn remove(&mut self, key: &Key) -> Option<u32> {
        let &s = self.map.get(key)?;
        Some(self.retire_entry(s))
    }

    /// A retiring slot's table entry was invalidated (`invalidated`), or could not be (then
    /// the next writer invalidates it first): the slot becomes free, or `Draining` until the
    /// last read pinning it unpins.
    pub fn finish_retire(&mut self, s: u32, invalidated: bool) {
        let slot = &mut self.slots[s as usize];
        debug_assert_eq!(slot.state, State::Retiring);
        slot.on_disk = !invalidated;
        if slot.pins == 0 {
            self.free_slot(s);
        } else {
            slot.state = State::Draining;
        }
    }

    fn free_slot(&mut self, s: u32) {
        let slot = &mut self.slots[s as usize];
        debug_assert_eq!(slot.pins, 0);
        *slot = Slot {
            on_disk: slot.on_disk,
            ..FREE_SLOT
        };
        self.free.push(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: u8) -> Key {
        Key([i; 16])
    }

    fn put(ix: &mut Index, key: u8, len: u64) -> Reservation {
        let r = ix.reserve(&k(key)).unwrap();
        if let Some(s) = ix.commit(&r, &k(key), len, 0) {
            ix.finish_retire(s, true);
        }
        r
    }

    #[test]
    fn free_slots_first_then_lru_eviction() {
        let mut ix = Index::new(3);
        for i in 0..3 {
            let r = put(&mut ix, i, 10);
            assert_eq!(r.slot, i as u32);
            assert!(r.evicted.is_none() && !r.invalidate);
        }
        assert_eq!(ix.free_slots(), 0);
        assert_eq!(ix.lru_order(), vec![k(0), k(1), k(2)]);
        ix.pin(&k(0)).unwrap();
        ix.unpin(0);
        assert_eq!(ix.free_slots(), 0, "unpinning a live entry frees nothing");
        assert_eq!(ix.lru_order(), vec![k(1), k(2), k(0)]);
        let r = put(&mut ix, 9, 10);
        assert_eq!(r.evicted, Some(k(1)));
        assert!(r.invalidate);
        assert_eq!(ix.lru_order(), vec![k(2), k(0), k(9)]);
        assert_eq!(ix.counters.evictions, 1);
        assert!(ix.pin(&k(1)).is_none());
        assert_eq!(ix.counters.misses, 1);
    }

    #[test]
    fn pinned_slots_are_never_reused() {
        let mut ix = Index::new(2);
        put(&mut ix, 1, 1);
        put(&mut ix, 2, 1);
        let p1 = ix.pin(&k(1)).unwrap();
        let p2 = ix.pin(&k(2)).unwrap();
        assert_eq!(
            ix.reserve(&k(0xee)).unwrap_err().kind(),
            crate::ErrorKind::Busy
        );
        // Overwrite of a pinned key: the old slot is retired at once (its table entry is
        // invalidated when the write returns), its reuse waits for the pin.
        ix.unpin(p2.slot);
        assert_eq!(ix.free_slots(), 0);
        let r = ix.reserve(&k(1)).unwrap();
        assert_eq!(r.slot, p2.slot); // 2 was the unpinned LRU entry
        assert_eq!(ix.commit(&r, &k(1), 5, 0), Some(p1.slot));
        ix.finish_retire(p1.slot, true);
        assert_eq!(ix.free_slots(), 0, "old slot of 1 still pinned");
        assert_eq!(ix.lengths(&k(1)), Some((5, 0)));
        ix.unpin(p1.slot);
        assert_eq!(ix.free_slots(), 1);
        assert_eq!(ix.entries(), 1);
    }

    #[test]
    fn remove_and_corrupt_drop() {
        let mut ix = Index::new(4);
        put(&mut ix, 1, 1);
        put(&mut ix, 2, 1);
        assert_eq!(ix.remove(&k(1)), Some(0));
        ix.finish_retire(0, true);
        assert_eq!(ix.remove(&k(1)), None);
        let p = ix.pin(&k(2)).unwrap();
        // Retired at once although a read pins it; freed by the last unpin.
        assert_eq!(ix.remove(&k(2)), Some(p.slot));
        ix.finish_retire(p.slot, false);
        assert_eq!(ix.free_slots(), 3);
        ix.unpin(p.slot);
        assert_eq!(ix.free_slots(), 4);
        // A slot whose invalidation failed is invalidated by its next writer.
        let r = ix.reserve(&k(3)).unwrap();
        assert_eq!(r.slot, p.slot);
        assert!(r.invalidate);
        assert!(ix.commit(&r, &k(3), 1, 0).is_none());
        let p = ix.pin(&k(3)).unwrap();
        assert_eq!(ix.drop_corrupt(&p), Some(p.slot));
        ix.finish_retire(p.slot, true);
        assert_eq!(ix.counters.corrupt_dropped, 1);
        assert_eq!((ix.entries(), ix.free_slots()), (0, 4));
    }

    #[test]
    fn ended_entries_retire_at_once_but_pinned_slots_wait_for_their_reads() {
        let mut ix = Index::new(3);
        put(&mut ix, 1, 1);
        put(&mut ix, 2, 1);
        put(&mut ix, 3, 1);
        // Two reads pin key 1; the key is removed, its slot retired at once.
        let a = ix.pin(&k(1)).unwrap();
        let b = ix.pin(&k(1)).unwrap();
        assert_eq!(ix.remove(&k(1)), Some(a.slot));
        ix.finish_retire(a.slot, true);
        assert!(!ix.contains(&k(1)) && ix.pin(&k(1)).is_none());
        // Keys 2 and 3 pinned too: the draining slot is not handed out, so every slot is busy.
        let p2 = ix.pin(&k(2)).unwrap();
        let p3 = ix.pin(&k(3)).unwrap();
        assert_eq!(
            ix.reserve(&k(9)).unwrap_err().kind(),
            crate::ErrorKind::Busy
        );
        // A corrupt read of an entry already retired drops nothing more.
        assert_eq!(ix.drop_corrupt(&a), None);
        assert_eq!(ix.free_slots(), 0);
        ix.unpin(b.slot);
        assert_eq!(ix.free_slots(), 1);
        // Its table entry is already invalid: the next writer need not invalidate it.
        let r = ix.reserve(&k(9)).unwrap();
        assert_eq!((r.slot, r.invalidate, r.evicted), (a.slot, false, None));
        // A corrupt read of a live entry retires it at once, even while another read pins it.
        assert!(ix.commit(&r, &k(9), 1, 0).is_none());
        let c = ix.pin(&k(2)).unwrap();
        assert_eq!(ix.drop_corrupt(&p2), Some(p2.slot));
        ix.finish_retire(p2.slot, true);
        assert_eq!((ix.entries(), ix.free_slots()), (2, 0));
        ix.unpin(c.slot);
        ix.unpin(p3.slot);
        assert_eq!((ix.entries(), ix.free_slots()), (2, 1));
        assert_eq!(ix.counters.corrupt_dropped, 2);
    }

    #[test]
    fn concurrent_writes_of_one_key_highest_seq_wins() {
        let mut ix = Index::new(4);
        let a = ix.reserve(&k(0xee)).unwrap();
        let b = ix.reserve(&k(0xee)).unwrap();
        assert!(b.seq > a.seq);
        assert!(ix.commit(&b, &k(1), 2, 0).is_none());
        assert_eq!(ix.commit(&a, &k(1), 1, 0), Some(a.slot));
        ix.finish_retire(a.slot, true);
        assert_eq!(ix.lengths(&k(1)), Some((2, 0)));
        let c = ix.reserve(&k(0xee)).unwrap();
        assert_eq!(ix.abort(&c), c.slot);
        ix.finish_retire(c.slot, false);
        assert_eq!(ix.entries(), 1);
    }

    #[test]
    fn recover_keeps_highest_seq_and_orders_by_seq() {
        let h = |key: u8, seq: u64, slot: u32| {
            Some(SlotHeader {
                key: k(key),
                len: seq,
                meta_len: 0,
                seq,
                data_sum: 0,
                slot,
            })
        };
        let found = vec![h(1, 5, 0), None, h(1, 9, 2), h(2, 3, 3), h(3, 7, 4), None];
        let (mut ix, losers) = Index::recover(&found);
        assert_eq!(losers, vec![0]);
        assert_eq!(ix.lru_order(), vec![k(2), k(3), k(1)]);
        assert_eq!(ix.lengths(&k(1)), Some((9, 0)));
        assert_eq!(ix.free_slots(), 2);
        ix.finish_retire(0, true);
        assert_eq!(ix.free_slots(), 3);
        assert!(ix.reserve(&k(0xee)).unwrap().seq > 9);
    }

    #[test]
    fn random_trace_matches_a_model() {
        // Model: a Vec in LRU order. Checks map, list and free list stay consistent.
        let mut ix = Index::new(8);
        let mut model: Vec<Key> = Vec::new();
        let mut x = 12345u64;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = k((x % 13) as u8);
            match (x >> 8) % 3 {
                0 | 1 => {
                    let r = ix.reserve(&key).unwrap();
                    if model.len() == 8 && !model.contains(&key) {
                        assert_eq!(r.evicted, Some(model.remove(0)));
                    } else {
                        assert_eq!(r.evicted, None);
                    }
                    if let Some(s) = ix.commit(&r, &key, 1, 0) {
                        ix.finish_retire(s, true);
                    }
                    model.retain(|m| *m != key);
                    model.push(key);
                }
                _ => match ix.pin(&key) {
                    Some(p) => {
                        ix.unpin(p.slot);
                        model.retain(|m| *m != key);
                        model.push(key);
                    }
                    None => assert!(!model.contains(&key)),
                },
            }
            assert_eq!(ix.lru_order(), model);
            assert_eq!(ix.entries() + ix.free_slots(), 8);
        }
    }
}
