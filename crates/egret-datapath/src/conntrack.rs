//! Established flows follow a changed plan. A flow's conntrack entry pins its path: the origin
//! node's entry carries the gateway's mark, the gateway's entry carries the SNAT binding.
//!
//! - On the origin, when the plan changes the address a source's traffic to a destination
//!   leaves with (another Egress or egress IP, no longer or newly steered, dropped), the
//!   entries of those flows are deleted, so the flow's next packet is classified again by the
//!   new plan: it never keeps leaving with an egress IP the plan no longer gives it.
//! - On a gateway, a flow whose SNAT binding differs from the egress IP the plan now gives it
//!   is deleted, whatever the previous plan said (a binding left from an earlier plan too).
//!
//! A move of the same egress IP to another gateway ends nothing: while the IP is away (a
//! gateway restarting, or briefly ineligible) the flow waits, and it carries on when the IP
//! comes back, as TCP does across a short outage; a gateway that died took its NAT state with
//! it anyway. (A TCP peer that sees a new source address resets the connection: the client
//! reconnects, like after a failover.)
//!
//! What to delete is decided here, purely; the `conntrack` tool (Debian package `conntrack`)
//! lists the table and deletes the chosen flows.

use egret_core::net::{Span, to_u128};
use egret_core::planner::{NodePlan, SteerAction};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::IpAddr;

/// Inclusive destination interval, as numbers (an IPv4 address as its 32-bit value; a source's
/// destinations are of its own family).
pub type Interval = (u128, u128);

/// `(start, end, what this node does)` for one source, one layer (steering or SNAT).
type Entries = Vec<(u128, u128, String)>;

/// Per source: steering entries and SNAT entries, each sorted and disjoint.
fn entries(plan: &NodePlan) -> BTreeMap<IpAddr, [Entries; 2]> {
    let mut out: BTreeMap<IpAddr, [Entries; 2]> = BTreeMap::new();
    let same_family = |src: IpAddr, dst: &IpNet| src.is_ipv6() == matches!(dst, IpNet::V6(_));
    for s in plan.steer.iter().filter(|s| same_family(s.source, &s.destination)) {
        // The address the traffic leaves with decides, not the gateway carrying it.
        let what = match (&s.action, s.egress_ip) {
            (SteerAction::Drop, _) | (_, None) => "drop".to_string(),
            (_, Some(ip)) => format!("{} as {ip}", s.egress),
        };
        let d = Span::of_net(&s.destination);
        out.entry(s.source).or_default()[0].push((d.start, d.end, what));
    }
    for s in plan.snat.iter().filter(|s| same_family(s.source, &s.destination)) {
        let d = Span::of_net(&s.destination);
        out.entry(s.source).or_default()[1].push((d.start, d.end, format!("snat {}", s.egress_ip)));
    }
    for layers in out.values_mut() {
        for l in layers.iter_mut() {
            l.sort();
        }
    }
    out
}

/// What `entries` (sorted, disjoint) says for address `x`.
fn lookup(entries: &Entries, x: u128) -> Option<&str> {
    let i = entries.partition_point(|e| e.1 < x);
    entries.get(i).filter(|e| e.0 <= x).map(|e| e.2.as_str())
}

/// Per source address, the destination intervals (merged, sorted) where the address this
/// node's pods' traffic leaves with differs between `old` and `new`.
pub fn changed(old: &NodePlan, new: &NodePlan) -> BTreeMap<IpAddr, Vec<Interval>> {
    let (o, n) = (entries(old), entries(new));
    let empty: [Entries; 2] = Default::default();
    let mut out = BTreeMap::new();
    let sources: BTreeSet<&IpAddr> = o.keys().chain(n.keys()).collect();
    for src in sources {
        let (a, b) = (o.get(src).unwrap_or(&empty), n.get(src).unwrap_or(&empty));
        if a == b {
            continue;
        }
        // Elementary intervals between every boundary of either plan (an interval ending at
        // the family's last address has no boundary after it: the last one runs to the end).
        let mut cuts: BTreeSet<u128> = BTreeSet::new();
        for l in a.iter().chain(b.iter()) {
            for e in l {
                cuts.insert(e.0);
                cuts.extend(e.1.checked_add(1));
            }
        }
        let cuts: Vec<u128> = cuts.into_iter().collect();
        let mut diff: Vec<Interval> = Vec::new();
        for (i, &start) in cuts.iter().enumerate() {
            let end = cuts.get(i + 1).map_or(u128::MAX, |next| next - 1);
            let differs = lookup(&a[0], start) != lookup(&b[0], start);
            if !differs {
                continue;
            }
            match diff.last_mut() {
                Some(last) if last.1.checked_add(1) == Some(start) => last.1 = end,
                _ => diff.push((start, end)),
            }
        }
        if !diff.is_empty() {
            out.insert(*src, diff);
        }
    }
    out
}

/// One flow of `conntrack -L` (either family): its original source and destination, and the
/// destination of its reply direction (the source address the flow leaves with after SNAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Flow {
    /// Original source.
    pub src: IpAddr,
    /// Original destination.
    pub dst: IpAddr,
    /// Reply destination: `src` unless the flow is SNATed.
    pub reply_dst: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    /// Original source and destination ports (TCP, UDP, SCTP; 0 otherwise).
    pub ports: (u16, u16),
}

/// Every flow in `conntrack -L` output (`-f ipv4` or `-f ipv6`).
pub fn parse_flows(text: &str) -> Vec<Flow> {
    text.lines()
        .filter_map(|line| {
            let mut srcs = line.split_whitespace().filter_map(|t| t.strip_prefix("src=")?.parse().ok());
            let mut dsts = line.split_whitespace().filter_map(|t| t.strip_prefix("dst=")?.parse().ok());
            let (src, dst) = (srcs.next()?, dsts.next()?);
            let _reply_src: Option<IpAddr> = srcs.next();
            let reply_dst = dsts.next().unwrap_or(src);
            // `tcp      6 431999 ESTABLISHED src=...`: the protocol's number is the second word.
            let proto = line.split_whitespace().nth(1).and_then(|w| w.parse().ok()).unwrap_or(0);
            let port = |key: &str| line.split_whitespace().find_map(|t| t.strip_prefix(key)?.parse().ok()).unwrap_or(0);
            Some(Flow { src, dst, reply_dst, proto, ports: (port("sport="), port("dport=")) })
        })
        .collect()
}

/// Source ports SNAT can give one egress IP toward one destination address, port and protocol:
/// Linux maps a source port of 1024 or above into 1024-65535.
pub const SNAT_PORTS: usize = 64512;

/// How much of its source-port space an egress IP uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnatUse {
    /// Flows SNATed to it.
    pub entries: usize,
    /// Those toward its busiest destination (address, protocol, port), each holding a port.
    pub busiest: usize,
    /// That destination: address, protocol number, port.
    pub busiest_dst: Option<(IpAddr, u8, u16)>,
}

impl SnatUse {
    /// The busiest destination's share of [`SNAT_PORTS`].
    pub fn utilization(&self) -> f64 {
        self.busiest as f64 / SNAT_PORTS as f64
    }
}

/// The source-port use of each of `ips` (egress IPs) among `flows`, in one pass over them (a
/// gateway may host hundreds of IPs): a flow SNATed to an IP is one whose reply goes to that IP,
/// not to its source. Every IP of `ips` is in the answer, with no use when no flow has it.
pub fn snat_usages(flows: &[Flow], ips: &[IpAddr]) -> BTreeMap<IpAddr, SnatUse> {
    let mut entries: BTreeMap<IpAddr, usize> = ips.iter().map(|ip| (*ip, 0)).collect();
    let mut per_dst: BTreeMap<(IpAddr, IpAddr, u8, u16), usize> = BTreeMap::new();
    for f in flows.iter().filter(|f| f.src != f.reply_dst) {
        if let Some(n) = entries.get_mut(&f.reply_dst) {
            *n += 1;
            *per_dst.entry((f.reply_dst, f.dst, f.proto, f.ports.1)).or_default() += 1;
        }
    }
    let mut out: BTreeMap<IpAddr, SnatUse> =
        entries.into_iter().map(|(ip, n)| (ip, SnatUse { entries: n, ..SnatUse::default() })).collect();
    for ((ip, dst, proto, port), n) in per_dst {
        if let Some(u) = out.get_mut(&ip)
            && n > u.busiest
        {
            u.busiest = n;
            u.busiest_dst = Some((dst, proto, port));
        }
    }
    out
}

/// The flows SNATed to another address than the one `plan` gives their source and
/// destination now (flows the plan does not SNAT here are left alone).
pub fn misbound(flows: &[Flow], plan: &NodePlan) -> BTreeSet<(IpAddr, IpAddr)> {
    let snat: BTreeMap<IpAddr, Entries> = entries(plan).into_iter().map(|(src, [_, snat])| (src, snat)).collect();
    flows
        .iter()
        .filter(|f| f.reply_dst != f.src)
        .filter(|f| {
            snat.get(&f.src)
                .and_then(|e| lookup(e, to_u128(&f.dst)))
                .is_some_and(|want| want != format!("snat {}", f.reply_dst))
        })
        .map(|f| (f.src, f.dst))
        .collect()
}

/// The `(source, destination)` pairs among `flows` whose path changed, leaving out
/// cluster-internal destinations (never steered, so never Egret's to end).
pub fn affected(
    flows: &[Flow],
    changed: &BTreeMap<IpAddr, Vec<Interval>>,
    cluster: &[IpNet],
) -> BTreeSet<(IpAddr, IpAddr)> {
    flows
        .iter()
        .filter(|f| {
            let Some(iv) = changed.get(&f.src) else { return false };
            if f.src.is_ipv6() != f.dst.is_ipv6() {
                return false;
            }
            let x = to_u128(&f.dst);
            let i = iv.partition_point(|e| e.1 < x);
            iv.get(i).is_some_and(|e| e.0 <= x) && !cluster.iter().any(|c| c.contains(&f.dst))
        })
        .map(|f| (f.src, f.dst))
        .collect()
}

/// A conntrack entry of either family, as the firewall sees it: the original direction's
/// addresses, protocol and ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conn {
    /// Source (a pod).
    pub src: IpAddr,
    /// Destination.
    pub dst: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    /// Source and destination port (0 for protocols without ports).
    pub ports: (u16, u16),
}

impl From<&Flow> for Conn {
    fn from(f: &Flow) -> Conn {
        Conn { src: f.src, dst: f.dst, proto: f.proto, ports: f.ports }
    }
}

/// The flows from pods the new firewall denies (decided as a new connection would be), when
/// the firewall changed: a policy change that denies a flow ends it.
pub fn denied(conns: &[Conn], old: &NodePlan, new: &NodePlan) -> Vec<Conn> {
    use egret_core::policy::{FlowProto, Protocol, Verdict};
    if old.firewall == new.firewall {
        return Vec::new();
    }
    conns
        .iter()
        .filter(|f| !new.cluster_cidrs.iter().any(|c| c.contains(&f.dst)) && !link_scoped(f.dst))
        .filter(|f| {
            let proto = match Protocol::of_number(f.proto) {
                Some(p) => FlowProto::Named(p),
                None => FlowProto::Other(f.proto),
            };
            let flow = egret_core::policy::Flow { dst: f.dst, proto, port: f.ports.1 };
            // Which addresses name rules learned is the DNS proxy's: a flow is ended only if it
            // is denied even with every name rule holding its destination.
            new.firewall.decide_learned(f.src, &flow, |_| true).is_some_and(|d| d.verdict == Verdict::Deny)
        })
        .copied()
        .collect()
}

/// IPv6 link-local and multicast destinations: the firewall never governs them (they never
/// leave the link), so no policy change ends their flows.
pub fn link_scoped(dst: IpAddr) -> bool {
    match dst {
        IpAddr::V6(v6) => v6.is_unicast_link_local() || v6.is_multicast(),
        IpAddr::V4(_) => false,
    }
}

/// The input of `conntrack -R -` deleting exactly these flows (of either family).
pub fn delete_flows_script(conns: &[Conn]) -> String {
    let mut out = String::new();
    for f in conns {
        let family = if f.src.is_ipv6() { "-f ipv6 " } else { "" };
        let named = match f.proto {
            6 => Some("tcp"),
            17 => Some("udp"),
            132 => Some("sctp"),
            _ => None,
        };
        let _ = match named {
            Some(p) => writeln!(
                out,
                "-D {family}-s {} -d {} -p {p} --orig-port-src {} --orig-port-dst {}",
                f.src, f.dst, f.ports.0, f.ports.1
            ),
            None => writeln!(out, "-D {family}-s {} -d {} -p {}", f.src, f.dst, f.proto),
        };
    }
    out
}

/// The input of `conntrack -R -` deleting every flow between each pair (of either family).
pub fn delete_script(pairs: &BTreeSet<(IpAddr, IpAddr)>) -> String {
    let mut out = String::new();
    for (s, d) in pairs {
        let family = if s.is_ipv6() { "-f ipv6 " } else { "" };
        let _ = writeln!(out, "-D {family}-s {s} -d {d}");
    }
    out
}

/// Cluster-internal CIDRs of both plans.
pub fn cluster(old: &NodePlan, new: &NodePlan) -> Vec<IpNet> {
    old.cluster_cidrs.iter().chain(new.cluster_cidrs.iter()).copied().collect()
}

#[cfg(test)]
mod snat_tests {
    use super::*;

    fn flow(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, proto: u8, reply_dst: [u8; 4]) -> Flow {
        Flow { src: src.into(), dst: dst.into(), reply_dst: reply_dst.into(), proto, ports: (sport, dport) }
    }

    #[test]
    fn snat_use_counts_the_busiest_destination_of_each_egress_ip() {
        let eip = [10, 10, 0, 11];
        let mut flows = Vec::new();
        for p in 0..300u16 {
            flows.push(flow([10, 244, 1, 10], 40000 + p, [203, 0, 113, 5], 443, 6, eip));
        }
        for p in 0..100u16 {
            // Same address, other port; and UDP to the same port: other destinations.
            flows.push(flow([10, 244, 1, 10], 40000 + p, [203, 0, 113, 5], 8080, 6, eip));
            flows.push(flow([10, 244, 2, 10], 40000 + p, [203, 0, 113, 5], 443, 17, eip));
        }
        // Another egress IP's flows, and a flow not SNATed.
        flows.push(flow([10, 244, 1, 11], 40000, [203, 0, 113, 5], 443, 6, [10, 10, 0, 12]));
        flows.push(flow([10, 244, 1, 12], 40000, [203, 0, 113, 5], 443, 6, [10, 244, 1, 12]));
        let all = snat_usages(&flows, &[eip.into(), [10, 10, 0, 12].into(), [10, 10, 0, 99].into()]);
        let u = &all[&eip.into()];
        assert_eq!(u.entries, 500);
        assert_eq!(u.busiest, 300);
        assert_eq!(u.busiest_dst, Some(([203, 0, 113, 5].into(), 6, 443)));
        assert!((u.utilization() - 300.0 / 64512.0).abs() < 1e-12);
        assert_eq!(all[&[10, 10, 0, 12].into()].entries, 1, "each IP its own flows");
        assert_eq!(all[&[10, 10, 0, 99].into()], SnatUse::default(), "an IP with no flow is there, unused");
        assert_eq!(all.len(), 3);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use egret_core::planner::{Snat, Steer};

    /// Steering as egress IP `eip` (dropped traffic has none).
    fn steer(src: &str, dst: &str, action: SteerAction, eip: &str) -> Steer {
        let egress_ip = (action != SteerAction::Drop).then(|| eip.parse().unwrap());
        Steer { source: src.parse().unwrap(), destination: dst.parse().unwrap(), egress: "e".into(), action, egress_ip }
    }

    fn snat(src: &str, dst: &str, eip: &str) -> Snat {
        Snat {
            source: src.parse().unwrap(),
            destination: dst.parse().unwrap(),
            egress: "e".into(),
            egress_ip: eip.parse().unwrap(),
        }
    }

    fn tunnel(gw: &str) -> SteerAction {
        SteerAction::Tunnel { gateway: gw.into() }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn show(c: &BTreeMap<IpAddr, Vec<Interval>>) -> Vec<String> {
        use egret_core::net::{Family, from_u128};
        c.iter()
            .flat_map(|(s, iv)| {
                let f = Family::of(s);
                iv.iter().map(move |(a, b)| format!("{s} {}-{}", from_u128(f, *a), from_u128(f, *b)))
            })
            .collect()
    }

    #[test]
    fn only_what_changed_for_a_source_is_ended() {
        let (a, b) = ("10.10.0.11", "10.10.0.12");
        let old = NodePlan {
            steer: vec![
                steer("10.244.1.10", "0.0.0.0/0", tunnel("node-2"), a),
                steer("10.244.1.11", "203.0.113.0/24", tunnel("node-2"), a),
                steer("10.244.1.12", "0.0.0.0/0", SteerAction::Local, a),
                steer("10.244.1.13", "198.51.100.0/24", tunnel("node-2"), a),
                steer("10.244.1.14", "203.0.113.0/24", tunnel("node-2"), a),
            ],
            snat: vec![snat("10.244.1.12", "0.0.0.0/0", a)],
            ..NodePlan::default()
        };
        // Unchanged plan: nothing.
        assert!(changed(&old, &old).is_empty());
        // .10: same gateway, blocks split differently (no change); .11: the same egress IP
        // moved to node-3 (no change: the flow waits for it); .12 stays here with another
        // egress IP; .13 is no longer steered; .14 leaves through node-3 with another IP.
        let new = NodePlan {
            steer: vec![
                steer("10.244.1.10", "0.0.0.0/1", tunnel("node-2"), a),
                steer("10.244.1.10", "128.0.0.0/1", tunnel("node-2"), a),
                steer("10.244.1.11", "203.0.113.0/24", tunnel("node-3"), a),
                steer("10.244.1.12", "0.0.0.0/0", SteerAction::Local, b),
                steer("10.244.1.14", "203.0.113.0/24", tunnel("node-3"), b),
            ],
            snat: vec![snat("10.244.1.12", "0.0.0.0/0", b)],
            ..NodePlan::default()
        };
        let c = changed(&old, &new);
        assert_eq!(
            show(&c),
            vec![
                "10.244.1.12 0.0.0.0-255.255.255.255",
                "10.244.1.13 198.51.100.0-198.51.100.255",
                "10.244.1.14 203.0.113.0-203.0.113.255",
            ]
        );

        let flows = parse_flows(
            "tcp      6 431999 ESTABLISHED src=10.244.1.10 dst=203.0.113.5 sport=40000 dport=8080 src=203.0.113.5 dst=10.10.0.11 sport=8080 dport=40000 [ASSURED] mark=65536 use=1\n\
             tcp      6 431999 ESTABLISHED src=10.244.1.11 dst=203.0.113.5 sport=40001 dport=8080 src=203.0.113.5 dst=10.10.0.11 sport=8080 dport=40001 [ASSURED] mark=65536 use=1\n\
             tcp      6 431999 ESTABLISHED src=10.244.1.14 dst=203.0.113.5 sport=40002 dport=8080 src=203.0.113.5 dst=10.10.0.11 sport=8080 dport=40002 [ASSURED] mark=65536 use=1\n\
             udp      17 29 src=10.244.1.12 dst=10.96.0.10 sport=5353 dport=53 src=10.96.0.10 dst=10.244.1.12 sport=53 dport=5353 mark=0 use=1\n\
             udp      17 29 src=10.244.1.12 dst=8.8.8.8 sport=5353 dport=53 [UNREPLIED] src=8.8.8.8 dst=10.10.0.11 sport=53 dport=5353 mark=0 use=1\n\
             icmp     1 29 src=10.244.1.13 dst=198.51.100.8 type=8 code=0 id=7 src=198.51.100.8 dst=10.10.0.11 type=0 code=0 id=7 mark=0 use=1\n\
             garbage\n",
        );
        assert_eq!(flows.len(), 6);
        assert_eq!(flows[0].reply_dst, ip("10.10.0.11"));
        assert_eq!(flows[3].reply_dst, ip("10.244.1.12"), "not SNATed");
        let cluster: Vec<IpNet> = vec!["10.96.0.0/12".parse().unwrap()];
        let hit = affected(&flows, &c, &cluster);
        assert_eq!(
            hit.into_iter().collect::<Vec<_>>(),
            vec![
                (ip("10.244.1.12"), ip("8.8.8.8")),
                (ip("10.244.1.13"), ip("198.51.100.8")),
                (ip("10.244.1.14"), ip("203.0.113.5")),
            ],
            "re-addressed and no longer steered flows; not moved, unchanged ones or the service"
        );
        // As a gateway: the flow SNATed to the old address is bound wrongly now.
        assert_eq!(misbound(&flows, &new).into_iter().collect::<Vec<_>>(), vec![(ip("10.244.1.12"), ip("8.8.8.8"))]);
        assert!(misbound(&flows, &old).is_empty(), "every binding agrees with the old plan");
        let script = delete_script(&[(ip("10.244.1.11"), ip("203.0.113.5"))].into());
        assert_eq!(script, "-D -s 10.244.1.11 -d 203.0.113.5\n");
    }

    #[test]
    fn ipv6_flows_whose_egress_ip_changed_are_ended_whole_family_ranges_included() {
        let old = NodePlan {
            steer: vec![
                steer("fd00:10:244:1::10", "::/0", tunnel("node-2"), "fd00:10:10::e1"),
                steer("fd00:10:244:1::11", "2001:db8::/32", tunnel("node-2"), "fd00:10:10::e1"),
                steer("10.244.1.10", "0.0.0.0/0", tunnel("node-2"), "10.10.0.11"),
            ],
            ..NodePlan::default()
        };
        let mut new = old.clone();
        // ::10 now leaves with another address; ::11 and the IPv4 source are unchanged.
        new.steer[0].egress_ip = Some("fd00:10:10::e2".parse().unwrap());
        let c = changed(&old, &new);
        assert_eq!(show(&c), vec!["fd00:10:244:1::10 ::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]);
        let flows = parse_flows(
            "tcp      6 431999 ESTABLISHED src=fd00:10:244:1::10 dst=2001:db8:113::5 sport=40000 dport=8080 src=2001:db8:113::5 dst=fd00:10:10::e1 sport=8080 dport=40000 [ASSURED] mark=65536 use=1\n\
             tcp      6 431999 ESTABLISHED src=fd00:10:244:1::11 dst=2001:db8:113::5 sport=40001 dport=8080 src=2001:db8:113::5 dst=fd00:10:10::e1 sport=8080 dport=40001 [ASSURED] mark=65536 use=1\n\
             tcp      6 431999 ESTABLISHED src=fd00:10:244:1::10 dst=fd00:10:244:2::10 sport=40002 dport=8080 src=fd00:10:244:2::10 dst=fd00:10:244:1::10 sport=8080 dport=40002 [ASSURED] mark=0 use=1\n",
        );
        assert_eq!(flows.len(), 3);
        let cluster: Vec<IpNet> = vec!["fd00:10:244::/48".parse().unwrap()];
        let hit = affected(&flows, &c, &cluster);
        assert_eq!(hit.iter().copied().collect::<Vec<_>>(), vec![(ip("fd00:10:244:1::10"), ip("2001:db8:113::5"))]);
        assert_eq!(delete_script(&hit), "-D -f ipv6 -s fd00:10:244:1::10 -d 2001:db8:113::5\n");
        // A gateway: the flow bound to the old IPv6 address is misbound under the new SNAT.
        let gw = |eip: &str| NodePlan { snat: vec![snat("fd00:10:244:1::10", "::/0", eip)], ..NodePlan::default() };
        assert!(misbound(&flows, &gw("fd00:10:10::e1")).is_empty());
        assert_eq!(misbound(&flows, &gw("fd00:10:10::e2")).len(), 1);
    }

    #[test]
    fn deleting_an_egress_ends_its_flows_on_the_origin() {
        let origin_old = NodePlan {
            steer: vec![steer("10.244.1.10", "0.0.0.0/0", tunnel("node-2"), "10.10.0.11")],
            ..NodePlan::default()
        };
        let gone = NodePlan::default();
        assert_eq!(show(&changed(&origin_old, &gone)), vec!["10.244.1.10 0.0.0.0-255.255.255.255"]);
        // Newly steered traffic is re-classified too (it was masqueraded to the node IP).
        assert_eq!(show(&changed(&gone, &origin_old)), vec!["10.244.1.10 0.0.0.0-255.255.255.255"]);
    }

    #[test]
    fn flows_a_policy_now_denies_are_found_in_both_families() {
        use egret_core::policy::{self as pol, Firewall, FirewallPod, FirewallSet};
        let y = "apiVersion: egret.dev/v1alpha1\nkind: ClusterEgressPolicy\nmetadata: {name: p}\nspec:\n  appliedTo: {namespaceSelector: {}}\n  rules: [{name: web, action: Allow, to: {cidrs: [203.0.113.0/24, '2001:db8:113::/64']}, ports: [{port: 443}]}]\n  defaultAction: Deny\n";
        let api: egret_api::v1alpha1::ClusterEgressPolicy = serde_yaml_ng::from_str(y).unwrap();
        let v = pol::validate_policies(&[api], &[]);
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        let ps: Vec<&pol::Policy> = v.policies.iter().collect();
        let pod = |ip: &str| FirewallPod { ip: ip.parse().unwrap(), pod: "ns/a".into(), set: 0 };
        let new = NodePlan {
            firewall: Firewall {
                pods: vec![pod("10.244.1.10"), pod("fd00:10:244:1::10")],
                sets: vec![FirewallSet {
                    policies: vec![ps[0].id.clone()],
                    compiled: std::sync::Arc::new(pol::compile(&ps)),
                }],
            },
            cluster_cidrs: vec!["fd00:10:244::/48".parse().unwrap()],
            ..NodePlan::default()
        };
        let v4 = parse_flows(
            "tcp 6 1 ESTABLISHED src=10.244.1.10 dst=198.51.100.8 sport=1 dport=8080 src=198.51.100.8 dst=10.10.0.101 sport=8080 dport=1 mark=0 use=1\n",
        );
        let v6 = parse_flows(
            "tcp 6 1 ESTABLISHED src=fd00:10:244:1::10 dst=2001:db8:200::1 sport=2 dport=22 src=2001:db8:200::1 dst=fd00:10:244:1::10 sport=22 dport=2 mark=0 use=1\n\
             tcp 6 1 ESTABLISHED src=fd00:10:244:1::10 dst=2001:db8:113::5 sport=3 dport=443 src=2001:db8:113::5 dst=fd00:10:244:1::10 sport=443 dport=3 mark=0 use=1\n\
             tcp 6 1 ESTABLISHED src=fd00:10:244:1::10 dst=fd00:10:244:2::7 sport=4 dport=22 src=fd00:10:244:2::7 dst=fd00:10:244:1::10 sport=22 dport=4 mark=0 use=1\n\
             udp 17 1 src=fd00:10:244:1::10 dst=ff02::fb sport=5353 dport=5353 src=ff02::fb dst=fd00:10:244:1::10 sport=5353 dport=5353 mark=0 use=1\n",
        );
        let all: Vec<Conn> = v4.iter().chain(&v6).map(Conn::from).collect();
        let ended = denied(&all, &NodePlan::default(), &new);
        let shown: Vec<String> = ended.iter().map(|c| format!("{} {}", c.dst, c.ports.1)).collect();
        // Allowed (443), cluster-internal and link-scoped (mDNS) flows stay.
        assert_eq!(shown, vec!["198.51.100.8 8080", "2001:db8:200::1 22"]);
        // A name rule on 8080 may have learned 198.51.100.8: that flow stays too.
        let named = "  - {name: names, action: Allow, to: {fqdns: [\"*.example.test\"]}, ports: [{port: 8080}]}\n";
        let y2 = y
            .replace("  defaultAction", &format!("{named}  defaultAction"))
            .replace("rules: [", "rules:\n  - ")
            .replace("}]}]\n", "}]}\n");
        let api: egret_api::v1alpha1::ClusterEgressPolicy = serde_yaml_ng::from_str(&y2).unwrap();
        let v2 = pol::validate_policies(&[api], &[]);
        assert!(v2.problems.is_empty(), "{:?}", v2.problems);
        let ps2: Vec<&pol::Policy> = v2.policies.iter().collect();
        let mut with_names = new.clone();
        with_names.firewall.sets[0].compiled = std::sync::Arc::new(pol::compile(&ps2));
        let kept: Vec<String> = denied(&all, &NodePlan::default(), &with_names)
            .iter()
            .map(|c| format!("{} {}", c.dst, c.ports.1))
            .collect();
        assert_eq!(kept, vec!["2001:db8:200::1 22"]);
        assert_eq!(
            delete_flows_script(&ended),
            "-D -s 10.244.1.10 -d 198.51.100.8 -p tcp --orig-port-src 1 --orig-port-dst 8080\n\
             -D -f ipv6 -s fd00:10:244:1::10 -d 2001:db8:200::1 -p tcp --orig-port-src 2 --orig-port-dst 22\n"
        );
    }

    #[test]
    fn a_gateway_keeps_flows_bound_as_its_plan_says_and_leaves_the_rest() {
        let gw = NodePlan { snat: vec![snat("10.244.1.10", "0.0.0.0/0", "10.10.0.11")], ..NodePlan::default() };
        let flows = parse_flows(
            "tcp 6 1 ESTABLISHED src=10.244.1.10 dst=203.0.113.5 sport=1 dport=8080 src=203.0.113.5 dst=10.10.0.11 sport=8080 dport=1 mark=0 use=1\n\
             tcp 6 1 ESTABLISHED src=10.244.1.10 dst=198.51.100.8 sport=2 dport=8080 src=198.51.100.8 dst=10.10.0.102 sport=8080 dport=2 mark=0 use=1\n\
             tcp 6 1 ESTABLISHED src=10.244.2.10 dst=203.0.113.5 sport=3 dport=8080 src=203.0.113.5 dst=10.10.0.12 sport=8080 dport=3 mark=0 use=1\n",
        );
        // The second flow was masqueraded to the node address before the Egress steered it; the
        // third is SNATed for an Egress this node no longer serves (its IP moved away): kept.
        assert_eq!(
            misbound(&flows, &gw).into_iter().collect::<Vec<_>>(),
            vec![(ip("10.244.1.10"), ip("198.51.100.8"))]
        );
        // Its IP moved away (a restart, a failback): nothing here is ended.
        assert!(misbound(&flows, &NodePlan::default()).is_empty());
    }
}
