//! The store's own access tracking: which blocks this process knows of, their sizes on
//! disk, and their least-recently-used order (pure bookkeeping, no I/O).

use std::collections::{BTreeMap, HashMap};

use super::path::Key;

/// Blocks known to this process, in LRU order, plus bytes reserved by writes in flight.
#[derive(Default, Debug)]
pub struct Index {
    map: HashMap<Key, (u64, u64)>, // key -> (file bytes, tick)
    order: BTreeMap<u64, Key>,     // tick -> key, oldest first
    /// Ticks of this process's own uses: from [`USED_TICKS`] up.
    tick: u64,
    /// Ticks of blocks found by the directory scan: below [`USED_TICKS`], so older than
    /// anything used since the store opened.
    scanned_tick: u64,
    bytes: u64,
    reserved: u64,
}

/// Where the ticks of blocks used by this process start; the scan's are below.
const USED_TICKS: u64 = 1 << 63;

impl Index {
    /// Records `key` (of `size` file bytes) as most recently used; replaces a previous entry.
    pub fn insert(&mut self, key: Key, size: u64) {
        self.remove(&key);
        let tick = self.next_tick();
        self.map.insert(key, (size, tick));
        self.order.insert(tick, key);
        self.bytes += size;
    }

    /// Records a block found by the directory scan (called oldest first) as older than any
    /// block used since the store opened; a key already known is left as it is.
    pub fn insert_scanned(&mut self, key: Key, size: u64) {
        if self.map.contains_key(&key) {
            return;
        }
        let tick = self.scanned_tick;
        self.scanned_tick += 1;
        self.map.insert(key, (size, tick));
        self.order.insert(tick, key);
        self.bytes += size;
    }

    fn next_tick(&mut self) -> u64 {
        self.tick = self.tick.max(USED_TICKS) + 1;
        self.tick
    }

    /// Marks `key` as used now; returns false if it is not known.
    pub fn touch(&mut self, key: &Key) -> bool {
        let Some(entry) = self.map.get_mut(key) else {
            return false;
        };
        self.order.remove(&entry.1);
        self.tick = self.tick.max(USED_TICKS) + 1;
        entry.1 = self.tick;
        self.order.insert(self.tick, *key);
        true
    }

    /// Forgets `key`; returns its size if it was known.
    pub fn remove(&mut self, key: &Key) -> Option<u64> {
        let (size, tick) = self.map.remove(key)?;
        self.order.remove(&tick);
        self.bytes -= size;
        Some(size)
    }

    /// Removes and returns the least recently used block.
    pub fn pop_lru(&mut self) -> Option<(Key, u64)> {
        let (_, key) = self.order.pop_first()?;
        let (size, _) = self.map.remove(&key).expect("order and map agree");
        self.bytes -= size;
        Some((key, size))
    }

    /// Whether `key` is known.
    pub fn contains(&self, key: &Key) -> bool {
        self.map.contains_key(key)
    }

    /// Number of known blocks.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no block is known.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// File bytes of the known blocks.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Bytes reserved by writes in flight.
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// Reserves `n` bytes for a write in flight.
    pub fn reserve(&mut self, n: u64) {
        self.reserved += n;
    }

    /// Releases a reservation made with [`Index::reserve`].
    pub fn unreserve(&mut self, n: u64) {
        self.reserved -= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: u8) -> Key {
        Key([i; 16])
    }

    #[test]
    fn lru_order_sizes_and_touch() {
        let mut ix = Index::default();
        assert!(ix.is_empty());
        ix.insert(k(1), 10);
        ix.insert(k(2), 20);
        ix.insert(k(3), 30);
        assert_eq!((ix.len(), ix.bytes()), (3, 60));
        assert!(ix.touch(&k(1)));
        assert!(!ix.touch(&k(9)));
        assert_eq!(ix.pop_lru(), Some((k(2), 20)));
        ix.insert(k(3), 33); // re-insert replaces and refreshes
        assert_eq!(ix.bytes(), 43);
        assert_eq!(ix.pop_lru(), Some((k(1), 10)));
        assert_eq!(ix.remove(&k(3)), Some(33));
        assert_eq!(ix.remove(&k(3)), None);
        assert_eq!(ix.pop_lru(), None);
        assert_eq!(ix.bytes(), 0);
        // Scanned blocks are older than used ones, in the order scanned; known keys stay.
        ix.insert(k(4), 4);
        ix.insert_scanned(k(5), 5);
        ix.insert_scanned(k(6), 6);
        ix.insert_scanned(k(4), 40);
        assert_eq!(ix.pop_lru(), Some((k(5), 5)));
        assert_eq!(ix.pop_lru(), Some((k(6), 6)));
        assert_eq!(ix.pop_lru(), Some((k(4), 4)));
        ix.reserve(5);
        ix.reserve(7);
        ix.unreserve(5);
        assert_eq!(ix.reserved(), 7);
        assert!(!ix.contains(&k(1)));
    }
}
