//! Node-local ids for tunnel peers: the small number (1..=65535) a node uses in its packet and
//! conntrack marks and routing tables for one peer it needs.
//!
//! Each node allocates them for itself (no cluster-wide agreement), so only the peers a node
//! actually needs take an id. The one rule: **an id never changes while its peer stays
//! needed**. Established flows carry the id in their conntrack mark, so renumbering a live peer
//! would send them to the wrong node. New peers take free ids from a cursor that moves forward,
//! so an id freed by a peer that left is not handed out again until the cursor has gone round
//! the whole space (a stale mark never points at a new peer in the meantime), and a peer that
//! comes back (a gateway whose IP went away for a moment and returned) gets its old id again,
//! so the flows still marked with it find their way once more.

use std::collections::{BTreeMap, BTreeSet};

/// The largest id; 0 means "no peer" (Egret's mark bits clear), and [`LOCAL_ID`] and
/// [`DNS_PROXY_ID`] are taken.
pub const MAX_ID: u16 = u16::MAX - 2;

/// The conntrack mark value (as an id) of a flow that leaves from this node, its gateway:
/// "steered, out here", so its later packets skip the steering lookups like tunnelled ones.
pub const LOCAL_ID: u16 = u16::MAX - 1;

/// The mark value (as an id) of DNS queries handed to the node's DNS proxy.
pub const DNS_PROXY_ID: u16 = u16::MAX;

/// More peers are needed than there are ids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{needed} peers needed but only {MAX_ID} local ids exist")]
pub struct Exhausted {
    /// How many peers were needed.
    pub needed: usize,
}

/// An assignment of local ids to peers, and where the next new id is looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalIds<K: Ord> {
    ids: BTreeMap<K, u16>,
    next: u16,
    /// Peers no longer needed and the id each had, at most [`REMEMBERED`] of them.
    released: BTreeMap<K, u16>,
}

/// How many released peers keep a claim on their old id.
pub const REMEMBERED: usize = 4096;

impl<K: Ord> Default for LocalIds<K> {
    fn default() -> Self {
        LocalIds { ids: BTreeMap::new(), next: 1, released: BTreeMap::new() }
    }
}

fn after(id: u16) -> u16 {
    if id == MAX_ID { 1 } else { id + 1 }
}

impl<K: Ord + Clone> LocalIds<K> {
    /// An assignment read back from the kernel after a restart. Entries with id 0 or above
    /// [`MAX_ID`] (a reserved value) and second
    /// claims on one id (only possible if someone else edited Egret's state) are dropped, so
    /// the result is always a valid assignment; the cursor continues after the largest id.
    pub fn recovered(found: impl IntoIterator<Item = (K, u16)>) -> LocalIds<K> {
        let mut ids = BTreeMap::new();
        let mut taken = BTreeSet::new();
        for (k, id) in found {
            if (1..=MAX_ID).contains(&id) && !ids.contains_key(&k) && taken.insert(id) {
                ids.insert(k, id);
            }
        }
        let next = taken.last().map_or(1, |&m| after(m));
        LocalIds { ids, next, released: BTreeMap::new() }
    }

    /// The id of `peer`, if it has one.
    pub fn get(&self, peer: &K) -> Option<u16> {
        self.ids.get(peer).copied()
    }

    /// Every `(peer, id)`.
    pub fn iter(&self) -> impl Iterator<Item = (&K, u16)> {
        self.ids.iter().map(|(k, &v)| (k, v))
    }

    /// Number of peers with an id.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no peer has an id.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The assignment for exactly the peers in `needed`: every peer of `self` that is still
    /// needed keeps its id; peers no longer needed release theirs; new peers take free ids
    /// from the cursor onwards.
    pub fn allocate(&self, needed: &BTreeSet<K>) -> Result<LocalIds<K>, Exhausted> {
        if needed.len() > MAX_ID as usize {
            return Err(Exhausted { needed: needed.len() });
        }
        let mut ids: BTreeMap<K, u16> =
            self.ids.iter().filter(|(k, _)| needed.contains(*k)).map(|(k, &v)| (k.clone(), v)).collect();
        let mut taken: BTreeSet<u16> = ids.values().copied().collect();
        // Returning peers first: their old id, unless another peer holds it now.
        for k in needed {
            if let (false, Some(&old)) = (ids.contains_key(k), self.released.get(k))
                && taken.insert(old)
            {
                ids.insert(k.clone(), old);
            }
        }
        let mut released: BTreeMap<K, u16> = self
            .released
            .iter()
            .chain(self.ids.iter())
            .filter(|(k, _)| !needed.contains(*k))
            .map(|(k, &v)| (k.clone(), v))
            .collect();
        while released.len() > REMEMBERED {
            released.pop_first();
        }
        let claimed: BTreeSet<u16> = released.values().copied().collect();
        let mut next = self.next.max(1);
        for k in needed {
            if ids.contains_key(k) {
                continue;
            }
            // At most MAX_ID - 1 steps: `needed` fits, so a free id exists (ids claimed by
            // released peers are skipped while some other id is free).
            let start = next;
            while taken.contains(&next) || claimed.contains(&next) {
                next = after(next);
                if next == start {
                    break;
                }
            }
            while taken.contains(&next) {
                next = after(next);
            }
            taken.insert(next);
            ids.insert(k.clone(), next);
            next = after(next);
        }
        Ok(LocalIds { ids, next, released })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(v: &[u32]) -> BTreeSet<u32> {
        v.iter().copied().collect()
    }

    #[test]
    fn kept_peers_keep_their_ids_and_freed_ids_are_not_reused_at_once() {
        let a = LocalIds::default().allocate(&set(&[10, 20, 30])).unwrap();
        assert_eq!((a.get(&10), a.get(&20), a.get(&30)), (Some(1), Some(2), Some(3)));
        // 20 leaves, 40 joins: 10 and 30 keep theirs, 40 does not get 20's old id.
        let b = a.allocate(&set(&[10, 30, 40])).unwrap();
        assert_eq!((b.get(&10), b.get(&30), b.get(&40), b.get(&20)), (Some(1), Some(3), Some(4), None));
    }

    #[test]
    fn a_peer_that_comes_back_gets_its_old_id() {
        let a = LocalIds::default().allocate(&set(&[10, 20])).unwrap();
        let b = a.allocate(&set(&[10, 30])).unwrap(); // 20 gone for a moment, 30 new
        let c = b.allocate(&set(&[10, 20])).unwrap(); // 20 back
        assert_eq!((c.get(&10), c.get(&20), b.get(&30)), (Some(1), Some(2), Some(3)));
    }

    #[test]
    fn recovery_keeps_what_the_kernel_holds_and_drops_bad_entries() {
        let r = LocalIds::recovered([(1u32, 7), (2, 7), (3, 0), (4, 9)]);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(&1, 7), (&4, 9)]);
        let next = r.allocate(&set(&[1, 4, 5])).unwrap();
        assert_eq!((next.get(&1), next.get(&4), next.get(&5)), (Some(7), Some(9), Some(10)));
    }

    #[test]
    fn the_cursor_wraps_around_and_skips_ids_in_use() {
        let r = LocalIds::recovered([(1u32, MAX_ID), (2, 1)]);
        let n = r.allocate(&set(&[1, 2, 3])).unwrap();
        assert_eq!(n.get(&3), Some(2));
        assert!(LocalIds::<u32>::default().allocate(&(0..=MAX_ID as u32).collect()).is_err());
    }

    #[test]
    fn five_thousand_peers_get_distinct_ids() {
        let all: BTreeSet<u32> = (0..5000).collect();
        let a = LocalIds::default().allocate(&all).unwrap();
        let distinct: BTreeSet<u16> = a.iter().map(|(_, v)| v).collect();
        assert_eq!(distinct.len(), 5000);
        assert!(!distinct.contains(&0));
    }

    proptest! {
        /// Any sequence of joins and leaves: a peer that stays needed never changes its id, and
        /// ids are always unique and non-zero.
        #[test]
        fn ids_of_staying_peers_never_change(
            steps in proptest::collection::vec(proptest::collection::btree_set(0u32..200, 0..80), 1..40),
            start in 1u16..=MAX_ID,
        ) {
            let mut cur = LocalIds { ids: BTreeMap::new(), next: start, released: BTreeMap::new() };
            for needed in steps {
                let new = cur.allocate(&needed).unwrap();
                prop_assert_eq!(new.len(), needed.len());
                let mut seen = BTreeSet::new();
                for (k, id) in new.iter() {
                    prop_assert!(needed.contains(k));
                    prop_assert!(id != 0);
                    prop_assert!(seen.insert(id), "id {} given twice", id);
                    if let Some(old) = cur.get(k) {
                        prop_assert_eq!(old, id, "peer {} renumbered", k);
                    }
                }
                cur = new;
            }
        }
    }
}
