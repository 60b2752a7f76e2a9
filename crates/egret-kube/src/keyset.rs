//! A set of short strings kept in one buffer: the streaming relay remembers the identity of
//! every pod of the cluster (100,000 at the benchmark's scale), and a heap string per key (plus
//! the allocator's overhead for each) was most of what it held.

use hashbrown::HashTable;
use std::hash::{BuildHasher, RandomState};

/// A set of strings without NUL (keys end with one in the buffer; Kubernetes names and
/// namespaces never hold one), exact (keys are compared, not only hashed).
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    /// The keys, each followed by a NUL, back to back; removed ones stay until the next
    /// compaction.
    bytes: String,
    /// Where each key starts in `bytes`, hashed by its text.
    table: HashTable<usize>,
    hasher: RandomState,
    /// Bytes of removed keys still in `bytes`.
    dead: usize,
}

/// The key starting at `at` in `bytes`.
fn key_at(bytes: &str, at: usize) -> &str {
    let rest = bytes.get(at..).unwrap_or("");
    rest.split('\0').next().unwrap_or("")
}

impl KeySet {
    /// Adds `key` (which must not hold NUL). Returns whether it was new.
    pub(crate) fn insert(&mut self, key: &str) -> bool {
        debug_assert!(!key.contains('\0'));
        let hash = self.hasher.hash_one(key);
        let bytes = &self.bytes;
        if self.table.find(hash, |&at| key_at(bytes, at) == key).is_some() {
            return false;
        }
        let at = self.bytes.len();
        self.bytes.push_str(key);
        self.bytes.push('\0');
        let (bytes, hasher) = (&self.bytes, &self.hasher);
        self.table.insert_unique(hash, at, |&at| hasher.hash_one(key_at(bytes, at)));
        true
    }

    /// Removes `key`. Returns whether it was there.
    pub(crate) fn remove(&mut self, key: &str) -> bool {
        let hash = self.hasher.hash_one(key);
        let bytes = &self.bytes;
        let Ok(entry) = self.table.find_entry(hash, |&at| key_at(bytes, at) == key) else { return false };
        entry.remove();
        self.dead += key.len() + 1;
        // Rewrite the buffer once most of it is removed keys, so it stays within twice the
        // live keys' size.
        if self.dead > 4096 && self.dead > self.bytes.len() / 2 {
            self.compact();
        }
        true
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        let hash = self.hasher.hash_one(key);
        self.table.find(hash, |&at| key_at(&self.bytes, at) == key).is_some()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> {
        self.table.iter().map(|&at| key_at(&self.bytes, at))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn clear(&mut self) {
        self.bytes = String::new();
        self.table = HashTable::new();
        self.dead = 0;
    }

    /// Copies the live keys into a new buffer (their hashes, so the table's layout, stay).
    fn compact(&mut self) {
        let old = std::mem::take(&mut self.bytes);
        let mut bytes = String::with_capacity(old.len() - self.dead);
        for at in self.table.iter_mut() {
            let key = key_at(&old, *at);
            *at = bytes.len();
            bytes.push_str(key);
            bytes.push('\0');
        }
        self.bytes = bytes;
        self.dead = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    proptest! {
        /// Behaves as a `HashSet<String>` under any sequence of inserts and removes (enough of
        /// them to compact the buffer several times).
        #[test]
        fn same_as_a_hash_set(ops in prop::collection::vec((any::<bool>(), "[a-c]{0,3}/[a-z0-9]{0,40}"), 0..2000)) {
            let (mut set, mut model) = (KeySet::default(), HashSet::new());
            for (add, key) in ops {
                if add {
                    prop_assert_eq!(set.insert(&key), model.insert(key.clone()));
                } else {
                    prop_assert_eq!(set.remove(&key), model.remove(&key));
                }
                prop_assert_eq!(set.len(), model.len());
                prop_assert!(set.contains(&key) == model.contains(&key));
            }
            let mut got: Vec<&str> = set.iter().collect();
            let mut want: Vec<&str> = model.iter().map(String::as_str).collect();
            got.sort_unstable();
            want.sort_unstable();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn removed_keys_are_dropped_from_the_buffer() {
        let mut set = KeySet::default();
        for i in 0..10_000 {
            set.insert(&format!("ns/pod-{i}"));
        }
        for i in 0..9_000 {
            set.remove(&format!("ns/pod-{i}"));
        }
        assert_eq!(set.len(), 1_000);
        assert!(set.bytes.len() < 2 * 1_000 * "ns/pod-9999".len() + 4096);
        assert!(set.contains("ns/pod-9500") && !set.contains("ns/pod-10"));
    }
}
