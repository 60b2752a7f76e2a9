//! Which node hosts each egress IP.
//!
//! Rendezvous (highest-random-weight) hashing: every eligible node gets a score for the IP from a
//! stable hash of `(ip, node name)`, and the best-scoring node wins. This gives what failover
//! needs with no coordination:
//! - every agent computes the same answer from the same inputs, in any order;
//! - when a node leaves, only the IPs it held move (every other IP's best node is unchanged);
//! - when a node joins, only the IPs for which it now scores best move, about `1/n` of them;
//! - IPs spread evenly in expectation (each node is the best for a uniform share).
//!
//! The IPs of one Egress form a group placed on different nodes ([`place_group`]), with the
//! same properties when a node leaves or comes back; pods choose among them by the same kind of
//! hash ([`pick`]).
//!
//! The hash is xxh3-64, a fixed, documented function, so agents of different builds and
//! platforms agree; Rust's `DefaultHasher` makes no such promise.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// One IP to place and the nodes that may host it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// The egress IP.
    pub ip: IpAddr,
    /// Eligible, live nodes.
    pub eligible: &'a BTreeSet<String>,
    /// Every eligible node, live or not (a superset of `eligible`). The IPs of one group get
    /// their homes from it, so that a node's liveness never changes another IP's home.
    pub universe: &'a BTreeSet<String>,
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

/// The best-scoring node for `ip` among `nodes`.
fn best<'a>(ip: &IpAddr, nodes: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    let seed = ip_seed(ip);
    nodes
        .map(|n| (xxh3_64_with_seed(n.as_bytes(), seed), n))
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, n)| n)
}

/// Places the IPs of one group (the egress IPs of one Egress), on different nodes while
/// there are enough, and moving only the IPs of a node that dies:
/// 1. homes, from the universe: in address order, each IP's best-scoring node not already
///    another's home (any node of its universe when none is left);
/// 2. an IP whose home is live is there;
/// 3. the others go to their best live node that is not another IP's live home (any live node
///    when none is left), or nowhere.
///
/// A node dying changes neither homes nor the other IPs' candidates, so only its own IPs move;
/// coming back, it takes back the IP it is home to. A node joining the universe may take homes
/// (and so shift others' homes). An IP alone is placed on its best-scoring live node.
pub fn place_group(group: &[Request]) -> Vec<Option<String>> {
    let mut order: Vec<usize> = (0..group.len()).collect();
    order.sort_by_key(|&i| group[i].ip);
    let mut homes: Vec<Option<&String>> = vec![None; group.len()];
    for &i in &order {
        let r = &group[i];
        let taken = |n: &&String| homes.iter().any(|h| h == &Some(*n));
        homes[i] = best(&r.ip, r.universe.iter().filter(|n| !taken(n))).or_else(|| best(&r.ip, r.universe.iter()));
    }
    let live_homes: Vec<Option<&String>> =
        group.iter().zip(&homes).map(|(r, h)| h.filter(|h| r.eligible.contains(*h))).collect();
    group
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if let Some(h) = live_homes[i] {
                return Some(h.clone());
            }
            let others = |n: &&String| live_homes.iter().enumerate().any(|(j, h)| j != i && h == &Some(*n));
            best(&r.ip, r.eligible.iter().filter(|n| !others(n))).or_else(|| best(&r.ip, r.eligible.iter())).cloned()
        })
        .collect()
}

/// Places every group ([`place_group`]). An IP in several groups (a static IP two Egresses
/// share) is where the first group by address order puts it.
pub fn place(groups: &[Vec<Request>]) -> BTreeMap<IpAddr, Option<String>> {
    place_with(groups, place_group)
}

/// [`place`] with the placement of one group supplied (the index memoises it).
pub fn place_with(
    groups: &[Vec<Request>],
    mut group: impl FnMut(&[Request]) -> Vec<Option<String>>,
) -> BTreeMap<IpAddr, Option<String>> {
    let mut sorted: Vec<&Vec<Request>> = groups.iter().collect();
    sorted.sort_by_key(|g| g.iter().map(|r| r.ip).min());
    let mut out = BTreeMap::new();
    for g in sorted {
        for (r, node) in g.iter().zip(group(g)) {
            out.entry(r.ip).or_insert(node);
        }
    }
    out
}

/// Which of `choices` the pod address `source` uses: the best-scoring one for it (rendezvous,
/// so a pod keeps its choice while that choice stays offered, and when one goes away only its
/// pods move).
pub fn pick<T>(source: &IpAddr, choices: &[T], ip: impl Fn(&T) -> IpAddr) -> Option<usize> {
    if choices.len() <= 1 {
        return if choices.is_empty() { None } else { Some(0) };
    }
    let bytes: [u8; 16] = match source {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    choices
        .iter()
        .enumerate()
        .map(|(i, c)| (xxh3_64_with_seed(&bytes, ip_seed(&ip(c))), i))
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(&a.1)))
        .map(|(_, i)| i)
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
        (0..k)
            .map(|i| Request {
                ip: IpAddr::V4(Ipv4Addr::from(0x0a0a_0000u32 + i as u32)),
                eligible,
                universe: eligible,
            })
            .collect()
    }

    /// Each request a group of its own.
    fn alone<'a>(r: &[Request<'a>]) -> Vec<Vec<Request<'a>>> {
        r.iter().map(|r| vec![*r]).collect()
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
        let requests: Vec<Request> =
            eligible.iter().map(|(ip, e)| Request { ip: *ip, eligible: e, universe: e }).collect();
        let placed = place(&alone(&requests));
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
            prop_assert_eq!(place(&alone(&r)), place(&alone(&shuffled)));
        }

        #[test]
        fn leave_moves_only_the_leavers_ips(k in 1usize..80, n in 2usize..12, gone in 0usize..12) {
            let all = nodes(n);
            let leaver = format!("node-{}", gone % n);
            let mut rest = all.clone();
            rest.remove(&leaver);
            let before = place(&alone(&reqs(k, &all)));
            let after = place(&alone(&reqs(k, &rest)));
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
            let before = place(&alone(&reqs(k, &before_nodes)));
            let after = place(&alone(&reqs(k, &after_nodes)));
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
            let placed = place(&alone(&reqs(k, &nodes(n))));
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
    }

    /// `k` IPs of one group over the live part of a fixed universe.
    fn group_on(k: usize, universe: &BTreeSet<String>, live: &BTreeSet<String>) -> Vec<Option<String>> {
        let g: Vec<Request> = reqs(k, live).into_iter().map(|r| Request { universe, ..r }).collect();
        place_group(&g)
    }

    proptest! {
        #[test]
        fn a_group_spreads_over_distinct_nodes(k in 1usize..8, extra in 0usize..6) {
            let all = nodes(k + extra);
            let placed = group_on(k, &all, &all);
            let distinct: BTreeSet<_> = placed.iter().flatten().collect();
            prop_assert_eq!(distinct.len(), k);
        }

        /// Seeded sequences of gateway deaths and returns: only the IPs of a node that died
        /// move, or an IP going back to the node that returned; every IP is on a live node;
        /// IPs share a node only when fewer live nodes than IPs remain... or when a dead
        /// home's IP had to double up while others were also down.
        #[test]
        fn a_group_moves_only_the_ips_of_a_dying_node(
            k in 1usize..6,
            n in 1usize..9,
            steps in proptest::collection::vec((0usize..9, any::<bool>()), 1..30),
        ) {
            let all = nodes(n);
            let names: Vec<String> = all.iter().cloned().collect();
            let mut live = all.clone();
            let mut before = group_on(k, &all, &live);
            for (x, back) in steps {
                let node = names[x % n].clone();
                let changed = if back { live.insert(node.clone()) } else { live.remove(&node) };
                let after = group_on(k, &all, &live);
                for (i, owner) in after.iter().enumerate() {
                    match owner {
                        Some(o) => prop_assert!(live.contains(o)),
                        None => prop_assert!(live.is_empty()),
                    }
                    let prev = &before[i];
                    if changed && prev != owner {
                        let died = !back && prev.as_deref() == Some(node.as_str());
                        let went_home = back && owner.as_deref() == Some(node.as_str());
                        prop_assert!(died || went_home || prev.is_none(), "IP {i} moved from {prev:?} to {owner:?}");
                    }
                }
                // With every home live the group is as at full strength.
                if live == all {
                    prop_assert_eq!(&after, &group_on(k, &all, &all));
                }
                before = after;
            }
        }

        #[test]
        fn a_pod_keeps_its_choice_unless_it_goes(pods in 1u32..200, k in 2usize..6, gone in 0usize..6) {
            let ips: Vec<IpAddr> = (0..k).map(|i| IpAddr::V4(Ipv4Addr::new(192, 0, 2, i as u8 + 1))).collect();
            let gone = gone % k;
            let rest: Vec<IpAddr> = ips.iter().copied().filter(|&ip| ip != ips[gone]).collect();
            for p in 0..pods {
                let src = IpAddr::V4(Ipv4Addr::from(0x0af4_0000 + p));
                let before = ips[pick(&src, &ips, |i| *i).unwrap()];
                let after = rest[pick(&src, &rest, |i| *i).unwrap()];
                if before != ips[gone] {
                    prop_assert_eq!(before, after);
                }
            }
        }
    }

    #[test]
    fn pods_spread_over_a_groups_ips() {
        let ips: Vec<IpAddr> = (1..=4).map(|i| IpAddr::V4(Ipv4Addr::new(192, 0, 2, i))).collect();
        let mut count = [0usize; 4];
        for p in 0..4000u32 {
            let src = IpAddr::V4(Ipv4Addr::from(0x0af4_0000 + p));
            count[pick(&src, &ips, |i| *i).unwrap()] += 1;
        }
        // Each share within 20% of a quarter.
        assert!(count.iter().all(|&c| (800..=1200).contains(&c)), "{count:?}");
        assert_eq!(pick::<IpAddr>(&ips[0], &[], |i| *i), None);
    }

    #[test]
    fn no_eligible_node_means_no_owner() {
        let none = BTreeSet::new();
        let r = reqs(1, &none);
        assert_eq!(place(&alone(&r)).values().next(), Some(&None));
    }

    #[test]
    fn placement_is_pinned_across_builds() {
        // Agents of different builds must agree; a change of hash would move every IP on
        // upgrade. These owners were computed once and must never change.
        let six: BTreeSet<String> = (1..=6).map(|i| format!("node-{i}")).collect();
        let r = |ip: &str| Request { ip: ip.parse().unwrap(), eligible: &six, universe: &six };
        let placed = place(&alone(&[r("10.10.0.11"), r("10.10.0.12")]));
        assert_eq!(placed[&"10.10.0.11".parse::<IpAddr>().unwrap()].as_deref(), Some("node-1"));
        assert_eq!(placed[&"10.10.0.12".parse::<IpAddr>().unwrap()].as_deref(), Some("node-6"));
    }
}
