//! The directory's items, keyed by id and kept in insertion order, with a cached snapshot of
//! the order that callers iterate while others keep changing the directory.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use super::lazy::Item;

/// The item ids of a [`TensorDir`](super::TensorDir) in insertion order, as they were at one
/// moment: later puts, removals and adoptions do not change it. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct ItemIds(Arc<[Arc<str>]>);

impl ItemIds {
    /// Number of ids.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The id at `index` (insertion order), or `None` past the end.
    pub fn get(&self, index: usize) -> Option<&str> {
        self.0.get(index).map(|s| &**s)
    }

    /// The ids in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.iter().map(|s| &**s)
    }
}

struct Entry {
    /// Position in insertion order: kept when the item is replaced, as a dict keeps a key's.
    seq: u64,
    item: Arc<Item>,
}

/// Items by id plus their insertion order. Every change happens under the directory's write
/// lock; `ids` is filled under the read lock by the first snapshot after a change.
#[derive(Default)]
pub(super) struct Entries {
    by_id: HashMap<Arc<str>, Entry>,
    order: BTreeMap<u64, Arc<str>>,
    next_seq: u64,
    ids: OnceLock<ItemIds>,
}

impl Entries {
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Every item, in no particular order.
    pub(super) fn items(&self) -> impl Iterator<Item = &Arc<Item>> + '_ {
        self.by_id.values().map(|e| &e.item)
    }

    pub(super) fn get(&self, id: &str) -> Option<&Arc<Item>> {
        self.by_id.get(id).map(|e| &e.item)
    }

    /// Inserts or replaces (keeping the id's position); returns the replaced item, which the
    /// caller drops after releasing the lock (dropping may delete its file).
    #[must_use]
    pub(super) fn insert(&mut self, id: &str, item: Arc<Item>) -> Option<Arc<Item>> {
        if let Some(e) = self.by_id.get_mut(id) {
            return Some(std::mem::replace(&mut e.item, item));
        }
        let id: Arc<str> = id.into();
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, id.clone());
        self.by_id.insert(id, Entry { seq, item });
        self.ids = OnceLock::new();
        None
    }

    /// Removes `id`; returns its item for the caller to drop after releasing the lock.
    #[must_use]
    pub(super) fn remove(&mut self, id: &str) -> Option<Arc<Item>> {
        let e = self.by_id.remove(id)?;
        self.order.remove(&e.seq);
        self.ids = OnceLock::new();
        Some(e.item)
    }

    /// The ids in insertion order now (built once per change, then shared).
    pub(super) fn ids(&self) -> ItemIds {
        self.ids
            .get_or_init(|| ItemIds(self.order.values().cloned().collect()))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensors::dir::lazy::Source;

    fn item() -> Arc<Item> {
        Arc::new(Item::new(
            Arc::new(Source::adopted("/nonexistent".into())),
            None,
        ))
    }

    fn ids(e: &Entries) -> Vec<String> {
        e.ids().iter().map(str::to_string).collect()
    }

    #[test]
    fn insertion_order_survives_replace_and_remove() {
        let mut e = Entries::default();
        for id in ["b", "a", "c"] {
            assert!(e.insert(id, item()).is_none());
        }
        let before = e.ids();
        assert!(e.insert("a", item()).is_some(), "replaced");
        assert_eq!(ids(&e), ["b", "a", "c"], "a replaced id keeps its place");
        assert!(e.remove("b").is_some());
        assert!(e.remove("b").is_none());
        assert!(e.insert("b", item()).is_none());
        assert_eq!(
            ids(&e),
            ["a", "c", "b"],
            "a removed and re-added id goes last"
        );
        assert_eq!(e.len(), 3);
        let snap: Vec<&str> = before.iter().collect();
        assert_eq!(snap, ["b", "a", "c"], "a snapshot does not change");
        assert_eq!(before.get(3), None);
    }
}
