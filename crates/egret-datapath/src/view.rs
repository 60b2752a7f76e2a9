//! What a node's kernel holds, read back from Egret's nft table and put in the API's terms
//! (pure): per pod and destination block, the Egress counting its traffic and the path it takes
//! (out through this node, through the tunnel to a peer, or dropped), the SNAT bindings a
//! gateway applies, and the tunnel peers; and the drift of that table from a plan.

use crate::Config;
use crate::link::PeerIds;
use crate::nft::{self, MAP_COUNTERS4, MAP_COUNTERS6, MAP_SNAT4, MAP_SNAT6, MAP_STEER4, MAP_STEER6, Table};
use egret_core::net::{Family, Span};
use egret_core::planner::NodePlan;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

/// One pod's steering toward one destination block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steering {
    /// The pod's address.
    pub source: IpAddr,
    /// The destination block (a CIDR, or `first-last` when not one).
    pub destination: String,
    /// The Egress whose counter counts it (`None`: no counter for it).
    pub egress: Option<String>,
    /// Where it goes.
    pub path: Path,
}

/// Where steered traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Path {
    /// Out through this node (it is the gateway).
    Local,
    /// Through the tunnel to the peer with this underlay address (`None`: an unknown id).
    Tunnel(Option<Ipv4Addr>, u16),
    /// Dropped (the Egress fails closed).
    Drop,
    /// A verdict this reader does not know.
    Other(String),
}

/// One SNAT binding of a gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snat {
    /// The pod's address.
    pub source: IpAddr,
    /// The destination block.
    pub destination: String,
    /// The address its traffic leaves with.
    pub egress_ip: IpAddr,
}

/// A node's kernel state in the API's terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelView {
    /// Steering of local pods, by source then destination.
    pub steering: Vec<Steering>,
    /// SNAT bindings (on a gateway).
    pub snat: Vec<Snat>,
    /// Tunnel peers: underlay address and local id.
    pub peers: Vec<(Ipv4Addr, u16)>,
}

/// `a-b` (numbers) as a span of `family`.
fn range(text: &str, family: Family) -> Option<Span> {
    let (a, b) = text.trim().split_once('-')?;
    let (start, end) = (a.parse::<u128>().ok()?, b.parse::<u128>().ok()?);
    (start <= end && end <= family.max()).then_some(Span { family, start, end })
}

/// A span as a CIDR when it is one.
fn block(span: Span) -> String {
    match span.to_cidrs()[..] {
        [one] => one.to_string(),
        _ => format!("{}-{}", span.first(), span.last()),
    }
}

/// The `(source, destination) : value` elements of an interval map keyed by pod and block.
fn pairs(t: &Table, map: &str, family: Family) -> Vec<(IpAddr, String, String)> {
    let Some(set) = t.sets.get(map) else { return Vec::new() };
    set.elems
        .keys()
        .filter_map(|k| {
            let (key, value) = k.split_once(" : ")?;
            let (src, dst) = key.split_once(" . ")?;
            let src = range(src, family)?.first();
            Some((src, block(range(dst, family)?), value.trim().to_string()))
        })
        .collect()
}

/// Reads Egret's table (as listed back from the kernel) in the API's terms.
pub fn read(t: &Table) -> KernelView {
    let peers = nft::ids_in(t);
    let by_id: BTreeMap<u16, Ipv4Addr> = peers.iter().map(|(ip, id)| (*id, *ip)).collect();
    let both = |v4: &str, v6: &str| {
        let mut out = pairs(t, v4, Family::V4);
        out.extend(pairs(t, v6, Family::V6));
        out
    };
    let counters: BTreeMap<(IpAddr, String), String> = both(MAP_COUNTERS4, MAP_COUNTERS6)
        .into_iter()
        .map(|(s, d, v)| ((s, d), v.trim_matches('"').to_string()))
        .collect();
    let steering = both(MAP_STEER4, MAP_STEER6)
        .into_iter()
        .map(|(source, destination, v)| {
            let path = match v.as_str() {
                "accept" => Path::Local,
                // Out through this node, by an egress subnet's router.
                other if other.starts_with("goto exit_") => Path::Local,
                "goto out_here" => Path::Local,
                "drop" | "goto no_exit" => Path::Drop,
                other => match other.strip_prefix("goto to_node_").and_then(|id| id.parse::<u16>().ok()) {
                    Some(id) => Path::Tunnel(by_id.get(&id).copied(), id),
                    None => Path::Other(other.to_string()),
                },
            };
            let egress = counters
                .get(&(source, destination.clone()))
                .and_then(|c| Some(nft::counter_kind(c)?.egress().to_string()));
            Steering { source, destination, egress, path }
        })
        .collect();
    let snat = both(MAP_SNAT4, MAP_SNAT6)
        .into_iter()
        // The value in the canonical text is a one-address range of numbers.
        .filter_map(|(source, destination, v)| {
            let egress_ip = v.parse().ok().or_else(|| range(&v, Family::of(&source)).map(|r| r.first()))?;
            Some(Snat { source, destination, egress_ip })
        })
        .collect();
    KernelView { steering, snat, peers }
}

/// How Egret's table `have` differs from what `plan` asks for, one line per difference (empty:
/// none). The tunnel ids are those the table holds, with new ones for peers it lacks.
pub fn drift(
    cfg: &Config,
    plan: &NodePlan,
    exits: &crate::link::Exits,
    have: &Table,
) -> Result<Vec<String>, egret_core::ids::Exhausted> {
    let needed: BTreeSet<Ipv4Addr> = crate::link::needed_ids(plan, exits);
    let ids = PeerIds::recovered(nft::ids_in(have)).allocate(&needed)?;
    let (want, _) = nft::desired(cfg, plan, &ids, exits);
    Ok(nft::describe(&nft::normalise(want), Some(have)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use egret_core::planner::{Peer, Snat as PlanSnat, Steer, SteerAction};

    fn plan() -> NodePlan {
        let steer = |src: &str, dst: &str, egress: &str, action, ip: Option<&str>| Steer {
            source: src.parse().unwrap(),
            destination: dst.parse().unwrap(),
            egress: egress.into(),
            action,
            egress_ip: ip.map(|i| i.parse().unwrap()),
        };
        NodePlan {
            node: "node-1".into(),
            node_ips: vec!["10.10.0.101".parse().unwrap()],
            peers: vec![Peer { name: "node-2".into(), ips: vec!["10.10.0.102".parse().unwrap()] }],
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            egresses: vec!["web".into(), "db".into(), "closed".into(), "web6".into()],
            steer: vec![
                steer("10.244.1.10", "0.0.0.0/0", "web", SteerAction::Local, Some("10.10.0.11")),
                steer(
                    "10.244.1.11",
                    "203.0.113.0/24",
                    "db",
                    SteerAction::Tunnel { gateway: "node-2".into() },
                    Some("10.10.0.12"),
                ),
                steer("10.244.1.12", "0.0.0.0/0", "closed", SteerAction::Drop, None),
                steer("fd00:10:244:1::10", "2001:db8::/32", "web6", SteerAction::Local, Some("fd00:10:10::e1")),
            ],
            snat: vec![
                PlanSnat {
                    source: "10.244.1.10".parse().unwrap(),
                    destination: "0.0.0.0/0".parse().unwrap(),
                    egress: "web".into(),
                    egress_ip: "10.10.0.11".parse().unwrap(),
                },
                PlanSnat {
                    source: "fd00:10:244:1::10".parse().unwrap(),
                    destination: "2001:db8::/32".parse().unwrap(),
                    egress: "web6".into(),
                    egress_ip: "fd00:10:10::e1".parse().unwrap(),
                },
            ],
            ..NodePlan::default()
        }
    }

    fn table(plan: &NodePlan) -> Table {
        let cfg = Config::default();
        let needed = BTreeSet::from(["10.10.0.102".parse().unwrap()]);
        let ids = PeerIds::default().allocate(&needed).unwrap();
        nft::normalise(nft::desired(&cfg, plan, &ids, &Default::default()).0)
    }

    #[test]
    fn the_table_reads_as_pods_egresses_paths_and_bindings() {
        let v = read(&table(&plan()));
        let id = v.peers.iter().find(|(ip, _)| *ip == Ipv4Addr::new(10, 10, 0, 102)).unwrap().1;
        let row = |src: &str| v.steering.iter().find(|s| s.source == src.parse::<IpAddr>().unwrap()).unwrap();
        assert_eq!(row("10.244.1.10").path, Path::Local);
        assert_eq!(row("10.244.1.10").egress.as_deref(), Some("web"));
        assert_eq!(row("10.244.1.10").destination, "0.0.0.0/0");
        assert_eq!(row("10.244.1.11").path, Path::Tunnel(Some(Ipv4Addr::new(10, 10, 0, 102)), id));
        assert_eq!(row("10.244.1.11").destination, "203.0.113.0/24");
        assert_eq!(row("10.244.1.11").egress.as_deref(), Some("db"));
        assert_eq!(row("10.244.1.12").path, Path::Drop);
        assert_eq!(row("10.244.1.12").egress.as_deref(), Some("closed"), "its drop counter names it");
        assert_eq!(row("fd00:10:244:1::10").path, Path::Local);
        assert_eq!(row("fd00:10:244:1::10").destination, "2001:db8::/32");
        assert_eq!(row("fd00:10:244:1::10").egress.as_deref(), Some("web6"));
        assert_eq!(
            v.snat,
            vec![
                Snat {
                    source: "10.244.1.10".parse().unwrap(),
                    destination: "0.0.0.0/0".into(),
                    egress_ip: "10.10.0.11".parse().unwrap()
                },
                Snat {
                    source: "fd00:10:244:1::10".parse().unwrap(),
                    destination: "2001:db8::/32".into(),
                    egress_ip: "fd00:10:10::e1".parse().unwrap()
                }
            ]
        );
    }

    #[test]
    fn drift_is_what_the_table_lacks_or_holds_beyond_the_plan() {
        let p = plan();
        let t = table(&p);
        assert_eq!(drift(&Config::default(), &p, &Default::default(), &t).unwrap(), Vec::<String>::new());
        let mut edited = t.clone();
        let steer = edited.sets.get_mut(MAP_STEER4).unwrap();
        let first = steer.elems.keys().next().unwrap().clone();
        steer.elems.remove(&first);
        let d = drift(&Config::default(), &p, &Default::default(), &edited).unwrap();
        assert!(!d.is_empty() && d.iter().any(|l| l.contains(MAP_STEER4)), "{d:?}");
    }

    #[test]
    fn blocks_that_are_not_cidrs_are_ranges() {
        let b = |a: &str, z: &str| block(Span::new(a.parse().unwrap(), z.parse().unwrap()).unwrap());
        assert_eq!(b("10.0.0.0", "10.0.0.255"), "10.0.0.0/24");
        assert_eq!(b("10.0.0.5", "10.0.0.5"), "10.0.0.5/32");
        assert_eq!(b("10.0.0.1", "10.0.0.6"), "10.0.0.1-10.0.0.6");
        assert_eq!(b("0.0.0.0", "255.255.255.255"), "0.0.0.0/0");
        assert_eq!(b("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), "::/0");
        assert_eq!(b("2001:db8::", "2001:db8:0:0:ffff:ffff:ffff:ffff"), "2001:db8::/64");
        assert_eq!(b("fd00::1", "fd00::1"), "fd00::1/128");
        assert_eq!(b("fd00::1", "fd00::6"), "fd00::1-fd00::6");
    }
}
