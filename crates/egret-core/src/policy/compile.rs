//! One pod's ordered policies compiled into disjoint cells of (destination range, protocol,
//! port range) with their decision: what a datapath looks up per new connection, at a cost
//! that does not depend on how many policies or rules produced it.
//!
//! The destination space of each family is cut at every CIDR boundary the rules name; within
//! each piece only the rules whose destinations cover it can match, and their port ranges cut
//! the port space of each protocol. Every resulting cell is decided by [`evaluate`] at one of
//! its points, which is exact because no rule's match changes inside a cell. Cells that end
//! like a connection no rule matches (the [`CompiledSet::fallback`]) are left out.

use super::{
    DecidedBy, Decision, Flow, FlowProto, FqdnPattern, Learned, NothingLearned, Policy, PolicyId, Protocol, Rule,
    decide,
};
use crate::net::{Family, from_u128, to_u128};
use ipnet::IpNet;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The protocol part of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum ProtoClass {
    /// A protocol rules can name.
    Named(Protocol),
    /// Every other IP protocol.
    Other,
}

/// The port part of a cell: an inclusive range (TCP, UDP, SCTP) or none.
pub type Ports = Option<(u16, u16)>;

/// A piece of the connection space with one decision.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Cell {
    /// First and last destination address (one family).
    pub dst: (IpAddr, IpAddr),
    /// Protocol.
    pub proto: ProtoClass,
    /// Destination ports, for TCP, UDP and SCTP.
    pub ports: Ports,
    /// The decision when no name rule holds the destination.
    pub decision: Decision,
    /// Name rules that decide here when they hold the destination, in evaluation order: the
    /// first that holds it decides (index into [`CompiledSet::names`], and its decision).
    pub named: Vec<(usize, Decision)>,
}

/// A name rule of a compiled set: its destinations are the addresses learned for its names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct NameRule {
    /// Its policy.
    pub policy: PolicyId,
    /// Its name in the policy.
    pub rule: String,
    /// Its patterns.
    pub fqdns: Vec<FqdnPattern>,
}

/// Only this rule holds the destination.
struct Only<'a>(&'a Rule);

impl Learned for Only<'_> {
    fn holds(&self, _: usize, r: &Rule) -> bool {
        std::ptr::eq(self.0, r)
    }
}

/// The compiled decisions for one ordered list of policies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct CompiledSet {
    /// The decision for a connection no rule matches; cells with this decision are left out.
    pub fallback: Decision,
    /// Disjoint cells, by family, protocol, ports and destination.
    pub cells: Vec<Cell>,
    /// The name rules among the policies, in evaluation order.
    pub names: Vec<NameRule>,
}

const PORTED: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

/// Cut points (starts of pieces) of `[0, max]` from inclusive ranges.
fn pieces(max: u128, ranges: impl Iterator<Item = (u128, u128)>) -> Vec<(u128, u128)> {
    let mut cuts: BTreeSet<u128> = BTreeSet::from([0]);
    for (a, b) in ranges {
        cuts.insert(a);
        if b < max {
            cuts.insert(b + 1);
        }
    }
    let starts: Vec<u128> = cuts.into_iter().collect();
    starts.iter().enumerate().map(|(i, &s)| (s, starts.get(i + 1).map_or(max, |n| n - 1))).collect()
}

fn span(net: &IpNet) -> (u128, u128) {
    (to_u128(&net.network()), to_u128(&net.broadcast()))
}

/// The parts of the family's address space a rule's destinations cover (`to` minus `except`;
/// an empty `to` is everything), as sorted disjoint inclusive ranges.
fn coverage(r: &Rule, fam: Family) -> Vec<(u128, u128)> {
    let of_fam = |n: &&IpNet| Family::of_net(n) == fam;
    let mut to: Vec<(u128, u128)> =
        if r.to.is_empty() { vec![(0, fam.max())] } else { r.to.iter().filter(of_fam).map(span).collect() };
    to.sort_unstable();
    let mut except: Vec<(u128, u128)> = r.except.iter().filter(of_fam).map(span).collect();
    except.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::new();
    for (a, b) in to {
        let mut cur = a;
        let mut done = false;
        for &(x, y) in &except {
            if y < cur || x > b {
                continue;
            }
            if x > cur {
                out.push((cur, x - 1));
            }
            if y >= b {
                done = true;
                break;
            }
            cur = y + 1;
        }
        if !done {
            out.push((cur, b));
        }
    }
    // Overlapping or adjacent ranges joined, so each rule starts and stops once per range.
    let mut joined: Vec<(u128, u128)> = Vec::with_capacity(out.len());
    for (a, b) in out {
        match joined.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => joined.push((a, b)),
        }
    }
    joined
}

/// Compiles `policies` (in evaluation order, as [`super::applicable`] returns them).
///
/// The address space is swept once per family: at each piece the rules covering it are known
/// from start and end events, and only they are evaluated, so the cost follows the number of
/// cells, not cells times rules.
pub fn compile(policies: &[&Policy]) -> CompiledSet {
    let fallback = decide(
        policies,
        std::iter::empty(),
        &Flow { dst: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), proto: FlowProto::Other(255), port: 0 },
        &NothingLearned,
    );
    // Every rule with the index of its policy, in evaluation order.
    let rules: Vec<(usize, &Rule)> =
        policies.iter().enumerate().flat_map(|(i, p)| p.rules.iter().map(move |r| (i, r))).collect();
    let names: Vec<NameRule> = rules
        .iter()
        .filter(|(_, r)| r.is_named())
        .filter_map(|(i, r)| {
            Some(NameRule { policy: policies.get(*i)?.id.clone(), rule: r.name.clone(), fqdns: r.fqdns.clone() })
        })
        .collect();
    // Index into `names` of each named rule, by its place in `rules`.
    let name_index: BTreeMap<usize, usize> =
        rules.iter().enumerate().filter(|(_, (_, r))| r.is_named()).enumerate().map(|(k, (g, _))| (g, k)).collect();
    let mut cells = Vec::new();
    for fam in [Family::V4, Family::V6] {
        // Rule g starts covering at `a` and stops after `b`.
        let mut starts: BTreeMap<u128, Vec<usize>> = BTreeMap::new();
        let mut ends: BTreeMap<u128, Vec<usize>> = BTreeMap::new();
        let mut ranges = Vec::new();
        for (g, (_, r)) in rules.iter().enumerate() {
            for (a, b) in coverage(r, fam) {
                starts.entry(a).or_default().push(g);
                ends.entry(b).or_default().push(g);
                ranges.push((a, b));
            }
        }
        let mut active: BTreeSet<usize> = BTreeSet::new();
        for (a, b) in pieces(fam.max(), ranges.into_iter()) {
            // Ends before starts: one rule's adjacent ranges hand over at the same point.
            if a > 0 {
                for g in ends.get(&(a - 1)).into_iter().flatten() {
                    active.remove(g);
                }
            }
            for g in starts.get(&a).into_iter().flatten() {
                active.insert(*g);
            }
            let here: Vec<(usize, &Rule)> = active.iter().filter_map(|g| rules.get(*g).copied()).collect();
            // Name rules cover every address (which ones they hold is learned at run time).
            let here_named: Vec<(usize, usize, &Rule)> = active
                .iter()
                .filter_map(|g| Some((*name_index.get(g)?, *rules.get(*g)?)))
                .map(|(k, (i, r))| (k, i, r))
                .collect();
            let dst = (from_u128(fam, a), from_u128(fam, b));
            let mut push = |proto: ProtoClass, ports: Ports, flow: Flow| {
                let decision = decide(policies, here.iter().copied(), &flow, &NothingLearned);
                // A name rule decides here if, holding the destination alone, it is the one that
                // decides. Name rules only allow and never pass, so whether one decides does not
                // depend on the others: the first holder that decides alone decides.
                let named: Vec<(usize, Decision)> = here_named
                    .iter()
                    .filter(|(_, _, r)| r.matches_ports(&flow))
                    .filter_map(|&(k, i, r)| {
                        let d = decide(policies, here.iter().copied(), &flow, &Only(r));
                        let by_it = matches!(&d.by, DecidedBy::Rule { policy, rule }
                            if policies.get(i).is_some_and(|p| &p.id == policy) && rule == &r.name);
                        by_it.then_some((k, d))
                    })
                    .collect();
                if decision != fallback || !named.is_empty() {
                    cells.push(Cell { dst, proto, ports, decision, named });
                }
            };
            for proto in PORTED {
                let port_ranges = here
                    .iter()
                    .flat_map(|(_, r)| r.ports.iter())
                    .filter(|p| p.protocol == proto)
                    .filter_map(|p| p.ports.map(|(x, y)| (x as u128, y as u128)));
                for (x, y) in pieces(u16::MAX as u128, port_ranges) {
                    let flow = Flow { dst: dst.0, proto: FlowProto::Named(proto), port: x as u16 };
                    push(ProtoClass::Named(proto), Some((x as u16, y as u16)), flow);
                }
            }
            push(
                ProtoClass::Named(Protocol::Icmp),
                None,
                Flow { dst: dst.0, proto: FlowProto::Named(Protocol::Icmp), port: 0 },
            );
            push(ProtoClass::Other, None, Flow { dst: dst.0, proto: FlowProto::Other(255), port: 0 });
        }
    }
    CompiledSet { fallback, cells: merge(cells), names }
}

/// Joins cells that differ only by adjacent destination ranges.
fn merge(mut cells: Vec<Cell>) -> Vec<Cell> {
    cells.sort_by(|x, y| {
        (Family::of(&x.dst.0), x.proto, x.ports, to_u128(&x.dst.0)).cmp(&(
            Family::of(&y.dst.0),
            y.proto,
            y.ports,
            to_u128(&y.dst.0),
        ))
    });
    let mut out: Vec<Cell> = Vec::with_capacity(cells.len());
    for c in cells {
        if let Some(last) = out.last_mut()
            && last.proto == c.proto
            && last.ports == c.ports
            && last.decision == c.decision
            && last.named == c.named
            && Family::of(&last.dst.1) == Family::of(&c.dst.0)
            && to_u128(&last.dst.1).checked_add(1) == Some(to_u128(&c.dst.0))
        {
            last.dst.1 = c.dst.1;
            continue;
        }
        out.push(c);
    }
    out
}

impl CompiledSet {
    /// Whether a name rule can decide anything here (the pods of this set need their DNS
    /// answers read).
    pub fn has_names(&self) -> bool {
        !self.names.is_empty()
    }

    /// The decision for `flow` when no name rule holds its destination.
    pub fn lookup(&self, flow: &Flow) -> &Decision {
        self.lookup_learned(flow, |_| false)
    }

    /// The decision for `flow` read from the cells, as a datapath would find it, with
    /// `holds(k)` saying whether name rule `k` (of [`CompiledSet::names`]) holds the destination.
    pub fn lookup_learned(&self, flow: &Flow, holds: impl Fn(usize) -> bool) -> &Decision {
        let x = to_u128(&flow.dst);
        let fam = Family::of(&flow.dst);
        let (proto, port) = match flow.proto {
            FlowProto::Named(p) if p.has_ports() => (ProtoClass::Named(p), Some(flow.port)),
            FlowProto::Named(p) => (ProtoClass::Named(p), None),
            FlowProto::Other(_) => (ProtoClass::Other, None),
        };
        self.cells
            .iter()
            .find(|c| {
                c.proto == proto
                    && Family::of(&c.dst.0) == fam
                    && (to_u128(&c.dst.0)..=to_u128(&c.dst.1)).contains(&x)
                    && match (c.ports, port) {
                        (Some((a, b)), Some(p)) => (a..=b).contains(&p),
                        (None, None) => true,
                        _ => false,
                    }
            })
            .map_or(&self.fallback, |c| c.named.iter().find(|(k, _)| holds(*k)).map_or(&c.decision, |(_, d)| d))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_web_allowlist_under_a_default_deny() {
        let p = mk_cluster(
            "web",
            1,
            vec![mk_rule(
                "https",
                Action::Allow,
                &["203.0.113.0/24"],
                &["203.0.113.128/25"],
                &[(Protocol::Tcp, Some((443, 443)))],
            )],
            Some(Verdict::Deny),
        );
        let c = compile(&[&p]);
        assert_eq!(c.fallback.verdict, Verdict::Deny);
        // One allowed cell: TCP 443 to the lower half of the /24.
        assert_eq!(c.cells.len(), 1, "{:#?}", c.cells);
        let cell = &c.cells[0];
        assert_eq!(cell.dst, ("203.0.113.0".parse().unwrap(), "203.0.113.127".parse().unwrap()));
        assert_eq!((cell.proto, cell.ports), (ProtoClass::Named(Protocol::Tcp), Some((443, 443))));
        assert_eq!(c.lookup(&tcp("203.0.113.7", 443)).verdict, Verdict::Allow);
        assert_eq!(c.lookup(&tcp("203.0.113.200", 443)).verdict, Verdict::Deny);
    }

    #[test]
    fn name_rules_decide_where_nothing_earlier_does() {
        let p = mk_cluster(
            "names",
            1,
            vec![
                mk_rule("no-bad", Action::Deny, &["198.51.100.0/24"], &[], &[]),
                mk_named("github", &["api.github.test"], &[(Protocol::Tcp, Some((443, 443)))]),
                mk_named("google", &["**.googleapis.test"], &[(Protocol::Tcp, None)]),
            ],
            Some(Verdict::Deny),
        );
        let c = compile(&[&p]);
        assert_eq!(c.names.len(), 2);
        assert!(c.has_names());
        // Unlearned: the default denies; learned by github: allowed on 443 only.
        let f = tcp("203.0.113.5", 443);
        assert_eq!(c.lookup(&f).by.to_string(), "ClusterEgressPolicy names defaultAction");
        assert_eq!(c.lookup_learned(&f, |k| k == 0).by.to_string(), "ClusterEgressPolicy names rule github");
        assert_eq!(c.lookup_learned(&tcp("203.0.113.5", 80), |k| k == 0).verdict, Verdict::Deny);
        // Both hold it: the first in order decides; only google on other ports.
        assert_eq!(c.lookup_learned(&f, |_| true).by.to_string(), "ClusterEgressPolicy names rule github");
        assert_eq!(
            c.lookup_learned(&tcp("203.0.113.5", 80), |_| true).by.to_string(),
            "ClusterEgressPolicy names rule google"
        );
        // The deny before them wins even for a learned address.
        assert_eq!(
            c.lookup_learned(&tcp("198.51.100.8", 443), |_| true).by.to_string(),
            "ClusterEgressPolicy names rule no-bad"
        );
        // Trace's view: a destination learned as a name.
        let d = evaluate_learned(&[&p], &f, &LearnedAs("API.github.test."));
        assert_eq!(d.by.to_string(), "ClusterEgressPolicy names rule github");
        assert_eq!(evaluate_learned(&[&p], &f, &LearnedAs("evil.test")).verdict, Verdict::Deny);
    }

    #[test]
    fn no_policies_compile_to_nothing() {
        let c = compile(&[]);
        assert!(c.cells.is_empty());
        assert_eq!(c.fallback.verdict, Verdict::Allow);
    }

    fn arb_net() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<u8>(), 0u8..4, 8u8..=32)
                .prop_map(|(a, b, len)| { IpNet::new(IpAddr::from([10, a % 4, b, 0]), len).unwrap().trunc() }),
            (0u16..4, 16u8..=128).prop_map(|(a, len)| {
                IpNet::new(IpAddr::from([0x2001, 0xdb8, a, 0, 0, 0, 0, 0]), len).unwrap().trunc()
            }),
        ]
    }

    fn arb_rule() -> impl Strategy<Value = Rule> {
        let port = prop_oneof![
            Just((Protocol::Icmp, None)),
            (prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp), Just(Protocol::Sctp)], 0u16..20, 0u16..10)
                .prop_map(|(p, a, w)| (p, Some((a * 100, a * 100 + w * 50)))),
            prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)].prop_map(|p| (p, None)),
        ];
        (
            0..3usize,
            prop::collection::vec(arb_net(), 0..3),
            prop::collection::vec(arb_net(), 0..2),
            prop::collection::vec(port, 0..3),
            any::<bool>(),
            0..5u8,
        )
            .prop_map(|(action, to, except, ports, log, named)| {
                let mut r = Rule {
                    name: "r".into(),
                    action: [Action::Allow, Action::Deny, Action::Pass][action],
                    to,
                    except,
                    ports: ports.into_iter().map(|(protocol, ports)| PortMatch { protocol, ports }).collect(),
                    log,
                    fqdns: Vec::new(),
                };
                // One rule in five is a name rule (Allow, no CIDRs).
                if named == 0 {
                    r.action = Action::Allow;
                    r.to.clear();
                    r.except.clear();
                    r.fqdns = vec![FqdnPattern::parse("*.test").unwrap()];
                }
                r
            })
    }

    /// A random choice of which name rules hold a destination, by the rule's place among all
    /// rules of the ordered policies.
    struct Mask<'a>(&'a [&'a Policy], u64);

    impl Mask<'_> {
        fn place(&self, policy: &PolicyId, rule: &str) -> Option<usize> {
            self.0
                .iter()
                .flat_map(|p| p.rules.iter().map(move |r| (&p.id, r.name.as_str())))
                .position(|(p, r)| p == policy && r == rule)
        }

        fn has(&self, policy: &PolicyId, rule: &str) -> bool {
            self.place(policy, rule).is_some_and(|k| k < 64 && self.1 & (1 << k) != 0)
        }
    }

    impl Learned for Mask<'_> {
        fn holds(&self, policy: usize, r: &Rule) -> bool {
            self.0.get(policy).is_some_and(|p| self.has(&p.id, &r.name))
        }
    }

    fn arb_policies() -> impl Strategy<Value = Vec<Policy>> {
        // Cluster, namespaced and NetworkPolicy tiers (NetworkPolicies: Allow rules, no default).
        prop::collection::vec((0..3usize, 0i64..3, prop::collection::vec(arb_rule(), 0..4), 0..3usize), 0..4).prop_map(
            |ps| {
                ps.into_iter()
                    .enumerate()
                    .map(|(i, (tier, prio, mut rules, d))| {
                        for (j, r) in rules.iter_mut().enumerate() {
                            r.name = format!("r{j}");
                        }
                        let d = [None, Some(Verdict::Allow), Some(Verdict::Deny)][d];
                        match tier {
                            0 => mk_cluster(&format!("c{i}"), prio, rules, d),
                            1 => mk_namespaced("ns", &format!("n{i}"), rules, d),
                            _ => {
                                for r in &mut rules {
                                    r.action = Action::Allow;
                                    r.log = false;
                                }
                                mk_network_policy("ns", &format!("k{i}"), rules)
                            }
                        }
                    })
                    .collect()
            },
        )
    }

    fn arb_flow() -> impl Strategy<Value = Flow> {
        let dst = prop_oneof![
            (0u8..4, any::<u8>(), any::<u8>()).prop_map(|(a, b, c)| IpAddr::from([10, a, b, c])),
            (0u16..4, any::<u16>()).prop_map(|(a, b)| IpAddr::from([0x2001, 0xdb8, a, 0, 0, 0, 0, b])),
            Just(IpAddr::from([192, 0, 2, 1])),
        ];
        let proto = prop_oneof![
            Just(FlowProto::Named(Protocol::Tcp)),
            Just(FlowProto::Named(Protocol::Udp)),
            Just(FlowProto::Named(Protocol::Sctp)),
            Just(FlowProto::Named(Protocol::Icmp)),
            Just(FlowProto::Other(47)),
        ];
        (dst, proto, 0u16..2100).prop_map(|(dst, proto, port)| {
            let port = if matches!(proto, FlowProto::Named(p) if p.has_ports()) { port } else { 0 };
            Flow { dst, proto, port }
        })
    }

    /// The semantics written as plainly as possible, for the property test of [`evaluate`]:
    /// every policy in order, every rule in order; a matching Pass skips the rest of its tier;
    /// then NetworkPolicy isolation; then the first default of the policies not skipped.
    fn reference(policies: &[&Policy], flow: &Flow, learned: &Mask) -> (Verdict, String) {
        let mut skip = [false, false];
        let mut first_default: Option<(&Policy, Verdict)> = None;
        let mut isolated: Option<&PolicyId> = None;
        for p in policies {
            let slot = match p.id {
                PolicyId::Cluster { .. } => Some(0),
                PolicyId::Namespaced { .. } => Some(1),
                PolicyId::NetworkPolicy { .. } => None,
            };
            if slot.is_some_and(|s| skip[s]) {
                continue;
            }
            if slot.is_none() && isolated.is_none() {
                isolated = Some(&p.id);
            }
            if first_default.is_none() && p.default_action.is_some() {
                first_default = p.default_action.map(|d| (*p, d));
            }
            for r in &p.rules {
                let hit = if r.fqdns.is_empty() {
                    r.matches(flow)
                } else {
                    r.matches_ports(flow) && learned.has(&p.id, &r.name)
                };
                if !hit {
                    continue;
                }
                match r.action {
                    Action::Allow => return (Verdict::Allow, format!("{} rule {}", p.id, r.name)),
                    Action::Deny => return (Verdict::Deny, format!("{} rule {}", p.id, r.name)),
                    Action::Pass => {
                        if let Some(s) = slot {
                            skip[s] = true;
                        }
                        break;
                    }
                }
            }
        }
        match (isolated, first_default) {
            (Some(id), _) => (Verdict::Deny, format!("isolation {id}")),
            (None, Some((p, d))) => (d, format!("{} defaultAction", p.id)),
            (None, None) => (Verdict::Allow, "nothing".into()),
        }
    }

    fn summary(d: &Decision) -> (Verdict, String) {
        let by = match &d.by {
            DecidedBy::Rule { .. } | DecidedBy::Default { .. } => d.by.to_string(),
            DecidedBy::Isolation { policy } => format!("isolation {policy}"),
            DecidedBy::Nothing => "nothing".into(),
        };
        (d.verdict, by)
    }

    proptest! {
        /// `evaluate` (the decision procedure the compiler shares) agrees with the plain loop.
        #[test]
        fn evaluation_agrees_with_the_reference_loop(ps in arb_policies(), flows in prop::collection::vec((arb_flow(), any::<u64>()), 1..40)) {
            let ordered = applicable(&ps, "ns", &Labels::new(), &Labels::new(), &Labels::new());
            for (f, bits) in &flows {
                let learned = Mask(&ordered, *bits);
                prop_assert_eq!(summary(&evaluate_learned(&ordered, f, &learned)), reference(&ordered, f, &learned), "{:?}", f);
            }
        }

        /// The compiled cells give every connection the decision evaluation gives it.
        #[test]
        fn cells_agree_with_evaluation(ps in arb_policies(), flows in prop::collection::vec((arb_flow(), any::<u64>()), 1..40)) {
            let ordered = applicable(&ps, "ns", &Labels::new(), &Labels::new(), &Labels::new());
            let c = compile(&ordered);
            for (f, bits) in &flows {
                let learned = Mask(&ordered, *bits);
                prop_assert_eq!(c.lookup(f), &evaluate(&ordered, f), "{:?}", f);
                let holds = |k: usize| c.names.get(k).is_some_and(|n| learned.has(&n.policy, &n.rule));
                prop_assert_eq!(c.lookup_learned(f, holds), &evaluate_learned(&ordered, f, &learned), "{:?} {:b}", f, bits);
            }
        }

        /// Cells never overlap.
        #[test]
        fn cells_are_disjoint(ps in arb_policies()) {
            let ordered = applicable(&ps, "ns", &Labels::new(), &Labels::new(), &Labels::new());
            let c = compile(&ordered);
            for (i, x) in c.cells.iter().enumerate() {
                for y in &c.cells[i + 1..] {
                    let same_space = x.proto == y.proto && Family::of(&x.dst.0) == Family::of(&y.dst.0);
                    let addr = to_u128(&x.dst.0) <= to_u128(&y.dst.1) && to_u128(&y.dst.0) <= to_u128(&x.dst.1);
                    let ports = match (x.ports, y.ports) {
                        (Some((a, b)), Some((c2, d))) => a <= d && c2 <= b,
                        _ => true,
                    };
                    prop_assert!(!(same_space && addr && ports), "{:?} overlaps {:?}", x, y);
                }
            }
        }
    }
}
