//! Which node hosts each egress IP.
//!
//! Rendezvous (highest-random-weight) hashing: every eligible node gets a score for the IP from a
//! stable hash of `(ip, node name)`, and the best-scoring node with spare capacity wins. This
//! gives what failover needs with no coordination:
//! - every agent computes the same answer from the same inputs, in any order;
//! - when a node leaves, only the IPs it held move (every other IP's best node is unchanged);
//! - when a node joins, only the IPs for which it now scores best move, about `1/n` of them;
//! - IPs spread evenly in expectation (each node is the best for a uniform share).
//!
//! The hash is xxh3-64, a fixed, documented function, so agents of different builds and
//! platforms agree; Rust's `DefaultHasher` makes no such promise.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// One IP to place and the nodes that may host it (already narrowed to live nodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// The egress IP.
    pub ip: IpAddr,
    /// Eligible, live nodes.
    pub eligible: &'a BTreeSet<String>,
}

/// The seed of an IP's scores: xxh3 of its address bytes.
fn ip_seed(ip: &IpAddr) -> u64 {
    match ip {
        IpAddr::V4(a) => xxh3_64(&a.octets()),
        IpAddr::V6(a) => xxh3_64(&a.octets()),
    }
}

/// The score of `node` for `ip`: xxh3 of the node name, seeded by the IP. Higher wins; ties
/// (astronomically rare) go to the smaller name.
pub fn score(ip: &IpAddr, node: &str) -> u64 {
    xxh3_64_with_seed(node.as_bytes(), ip_seed(ip))
}

/// Places every requested IP. `capacity` optionally bounds how many IPs a node may host; IPs are
/// placed in address order so the bound is applied deterministically. An IP with no eligible
/// node with room maps to `None`.
pub fn place(requests: &[Request], capacity: Option<&BTreeMap<String, usize>>) -> BTreeMap<IpAddr, Option<String>> {
    let mut sorted: Vec<&Request> = requests.iter().collect();
    sorted.sort_by_key(|r| r.ip);
    let mut load: BTreeMap<&str, usize> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for r in sorted {
        if out.contains_key(&r.ip) {
            continue;
        }
        let seed = ip_seed(&r.ip);
        let best = r
            .eligible
            .iter()
            .filter(|n| match capacity.and_then(|c| c.get(n.as_str())) {
                Some(&cap) => load.get(n.as_str()).copied().unwrap_or(0) < cap,
                None => true,
            })
            .map(|n| (xxh3_64_with_seed(n.as_bytes(), seed), n))
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
            .map(|(_, n)| n);
        if let Some(n) = best {
            *load.entry(n.as_str()).or_insert(0) += 1;
        }
        out.insert(r.ip, best.cloned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn nodes(n: usize) -> BTreeSet<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    fn reqs(k: usize, eligible: &BTreeSet<String>) -> Vec<Request<'_>> {
        (0..k).map(|i| Request { ip: IpAddr::V4(Ipv4Addr::from(0x0a0a_0000u32 + i as u32)), eligible }).collect()
    }

    /// Places `k` IPs: even-numbered ones on any live node, odd-numbered ones only on live nodes
    /// of `even` (as with a pool nodeSelector). Returns each IP's eligible set and the placement.
    #[allow(clippy::type_complexity)]
    fn place_mixed(
        k: usize,
        live: &BTreeSet<String>,
        even: &BTreeSet<String>,
    ) -> (Vec<(IpAddr, BTreeSet<String>)>, BTreeMap<IpAddr, Option<String>>) {
        let live_even: BTreeSet<String> = live.intersection(even).cloned().collect();
        let eligible: Vec<(IpAddr, BTreeSet<String>)> = reqs(k, live)
            .iter()
            .enumerate()
            .map(|(i, r)| (r.ip, if i % 2 == 1 { live_even.clone() } else { live.clone() }))
            .collect();
        let requests: Vec<Request> = eligible.iter().map(|(ip, e)| Request { ip: *ip, eligible: e }).collect();
        let placed = place(&requests, None);
        (eligible, placed)
    }

    proptest! {
        #[test]
        fn deterministic_regardless_of_input_order(k in 1usize..60, n in 1usize..12, seed in any::<u64>()) {
            let all = nodes(n);
            let r = reqs(k, &all);
            let mut shuffled = r.clone();
            // A seeded permutation: rotate and reverse.
            let len = shuffled.len();
            shuffled.rotate_left((seed as usize) % len);
            if seed % 2 == 0 { shuffled.reverse(); }
            prop_assert_eq!(place(&r, None), place(&shuffled, None));
        }

        #[test]
        fn leave_moves_only_the_leavers_ips(k in 1usize..80, n in 2usize..12, gone in 0usize..12) {
            let all = nodes(n);
            let leaver = format!("node-{}", gone % n);
            let mut rest = all.clone();
            rest.remove(&leaver);
            let before = place(&reqs(k, &all), None);
            let after = place(&reqs(k, &rest), None);
            for (ip, owner) in &before {
                if owner.as_deref() != Some(leaver.as_str()) {
                    prop_assert_eq!(owner, &after[ip]);
                } else {
                    prop_assert!(after[ip].is_some() && after[ip].as_deref() != Some(leaver.as_str()));
                }
            }
        }

        #[test]
        fn join_moves_ips_only_to_the_joiner(k in 1usize..80, n in 1usize..12) {
            let before_nodes = nodes(n);
            let mut after_nodes = before_nodes.clone();
            after_nodes.insert("joiner".to_string());
            let before = place(&reqs(k, &before_nodes), None);
            let after = place(&reqs(k, &after_nodes), None);
            for (ip, owner) in &before {
                if &after[ip] != owner {
                    prop_assert_eq!(after[ip].as_deref(), Some("joiner"));
                }
            }
        }

        /// Stated bound: no node hosts more than k/n + 5*sqrt(k/n) + 5 IPs (a Poisson tail far
        /// beyond anything a uniform hash produces).
        #[test]
        fn spread_is_balanced_within_bound(k in 1usize..400, n in 1usize..20) {
            let placed = place(&reqs(k, &nodes(n)), None);
            let mut load: BTreeMap<String, usize> = BTreeMap::new();
            for o in placed.values().flatten() { *load.entry(o.clone()).or_default() += 1; }
            let mean = k as f64 / n as f64;
            let bound = mean + 5.0 * mean.sqrt() + 5.0;
            for (node, l) in load { prop_assert!((l as f64) <= bound, "{node} holds {l} > {bound}"); }
        }

        /// Seeded random sequences of joins, leaves and flaps over a fixed set of candidates:
        /// after every step each IP has exactly one owner, a live eligible node, and the only
        /// IPs that moved are those whose owner left or that moved to a node that just joined.
        #[test]
        fn membership_sequences_keep_one_owner_and_move_minimally(
            k in 1usize..40,
            steps in proptest::collection::vec((0usize..8, any::<bool>()), 1..40),
        ) {
            let all = nodes(8);
            let names: Vec<String> = all.iter().cloned().collect();
            // Only even-numbered nodes are eligible for half of the IPs (a pool nodeSelector).
            let even: BTreeSet<String> = names.iter().step_by(2).cloned().collect();
            let mut live: BTreeSet<String> = all.clone();
            let mut before = place_mixed(k, &live, &even).1;
            for (n, join) in steps {
                let node = names[n].clone();
                let changed = if join { live.insert(node.clone()) } else { live.remove(&node) };
                let (eligible, after) = place_mixed(k, &live, &even);
                for (i, (ip, eligible)) in eligible.iter().enumerate() {
                    let owner = &after[ip];
                    match owner {
                        Some(o) => prop_assert!(eligible.contains(o), "IP {i} on ineligible or dead {o}"),
                        None => prop_assert!(eligible.is_empty(), "IP {i} unplaced with eligible nodes"),
                    }
                    let prev = &before[ip];
                    if changed && prev != owner {
                        let owner_left = !join && prev.as_deref() == Some(node.as_str());
                        let moved_to_joiner = join && owner.as_deref() == Some(node.as_str());
                        prop_assert!(owner_left || moved_to_joiner || prev.is_none(), "IP {i} moved from {prev:?} to {owner:?}");
                    }
                }
                before = after;
            }
        }

        #[test]
        fn capacity_is_respected(k in 1usize..60, n in 1usize..8, cap in 0usize..10) {
            let all = nodes(n);
            let caps: BTreeMap<String, usize> = all.iter().map(|n| (n.clone(), cap)).collect();
            let placed = place(&reqs(k, &all), Some(&caps));
            let mut load: BTreeMap<String, usize> = BTreeMap::new();
            for o in placed.values().flatten() { *load.entry(o.clone()).or_default() += 1; }
            prop_assert!(load.values().all(|&l| l <= cap));
            let unplaced = placed.values().filter(|o| o.is_none()).count();
            // IPs go unplaced only when every node is full.
            prop_assert_eq!(unplaced, k.saturating_sub(cap * n));
        }
    }

    #[test]
    fn no_eligible_node_means_no_owner() {
        let none = BTreeSet::new();
        let r = reqs(1, &none);
        assert_eq!(place(&r, None).values().next(), Some(&None));
    }

    #[test]
    fn placement_is_pinned_across_builds() {
        // Agents of different builds must agree; a change of hash would move every IP on
        // upgrade. These owners were computed once and must never change.
        let six: BTreeSet<String> = (1..=6).map(|i| format!("node-{i}")).collect();
        let r = |ip: &str| Request { ip: ip.parse().unwrap(), eligible: &six };
        let placed = place(&[r("10.10.0.11"), r("10.10.0.12")], None);
        assert_eq!(placed[&"10.10.0.11".parse::<IpAddr>().unwrap()].as_deref(), Some("node-1"));
        assert_eq!(placed[&"10.10.0.12".parse::<IpAddr>().unwrap()].as_deref(), Some("node-6"));
    }
}
