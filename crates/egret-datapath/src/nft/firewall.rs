//! The egress firewall's part of table `inet egret`, built from a plan's [`Firewall`].
//!
//! The lookups per new connection are the same whatever the number of policies, rules or pods: a new
//! connection from a pod address listed in `fw_pods4` jumps to the chain of its policy set,
//! which looks the destination (and port) up in one interval map per protocol and ends with
//! the set's fallback verdict. Established connections skip all of it (conntrack), and
//! cluster-internal destinations are never governed.
//!
//! Denied TCP is answered with a reset, everything else with ICMP administratively prohibited,
//! so applications fail at once rather than time out (unless the policy asks for a silent drop).
//!
//! Every decision a policy makes here (a rule, or a policy's default) has its own small chain
//! the maps jump to: a named counter (packets and bytes per rule, for the metrics), the NFLOG
//! statement when the decision is audited (its prefix names the chain, which the agent maps
//! back to the policy and rule), and the verdict. The per-packet cost stays one map lookup and
//! one jump.

use super::{Chain, Elem, Hook, Set, Skipped, Table, ct, matches, meta, payload, raw, rule, verdict_goto};
use crate::config::Config;
use egret_core::planner::NodePlan;
use egret_core::policy::{
    Cell, CompiledSet, DecidedBy, Decision, FirewallSet, PolicyId, ProtoClass, Protocol, Verdict,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The base chain: before steering (`mangle`, -150), after conntrack (-200).
pub const CHAIN_FIREWALL: &str = "firewall";
/// The chain refusing a denied connection.
pub const CHAIN_DENY: &str = "fw_deny";
/// Map pod address -> the chain of its policy set.
pub const MAP_PODS4: &str = "fw_pods4";
const PRIO_FIREWALL: i64 = -160;

/// The protocols of a set's maps, with the nft name of the protocol.
const PROTOS: [(ProtoClass, &str); 5] = [
    (ProtoClass::Named(Protocol::Tcp), "tcp"),
    (ProtoClass::Named(Protocol::Udp), "udp"),
    (ProtoClass::Named(Protocol::Sctp), "sctp"),
    (ProtoClass::Named(Protocol::Icmp), "icmp"),
    (ProtoClass::Other, "other"),
];

/// The chain of a policy set: named by a hash of its policies, so a set keeps its name (and
/// its maps stay in place) while other sets come and go.
pub fn set_chain(set: &FirewallSet) -> String {
    let key: Vec<String> = set.policies.iter().map(|p| p.to_string()).collect();
    format!("fw_{:012x}", xxhash_rust::xxh3::xxh3_64(key.join("\n").as_bytes()) & 0xffff_ffff_ffff)
}

/// The chain (and named counter, and NFLOG prefix) of a decision; `None` for "no policy
/// decided", which is a plain accept.
pub fn decision_chain(d: &Decision) -> Option<String> {
    if d.by == DecidedBy::Nothing {
        return None;
    }
    let key = format!("{}|{}|{}|{}", d.by, d.verdict, d.log, d.silent);
    // All 64 bits: two decisions sharing a chain would share a verdict, a counter and records.
    Some(format!("fwd_{:016x}", xxhash_rust::xxh3::xxh3_64(key.as_bytes())))
}

/// The set of addresses a name rule learned, for one family: named by a hash of the policy and
/// rule, so every policy set holding the rule shares it, and it keeps its name (and its learned
/// addresses) while other rules come and go.
pub fn name_set(policy: &PolicyId, rule: &str, v6: bool) -> String {
    let h = xxhash_rust::xxh3::xxh3_64(format!("{policy}|{rule}").as_bytes());
    format!("fq{}_{h:016x}", if v6 { 6 } else { 4 })
}

/// Whether `set` is a name rule's set (its elements are the DNS proxy's).
pub fn is_name_set(set: &str) -> bool {
    set.starts_with("fq4_") || set.starts_with("fq6_")
}

/// The base chain handing DNS queries of pods under name rules to the DNS proxy.
pub const CHAIN_DNS: &str = "dns";
/// Pod addresses whose DNS queries go to the DNS proxy.
pub const SET_DNS_PODS4: &str = "dns_pods4";
/// The same for IPv6 pod addresses.
pub const SET_DNS_PODS6: &str = "dns_pods6";
/// After the firewall (-160), before steering (-150): a query handed to the proxy is never
/// steered.
const PRIO_DNS: i64 = -155;

/// Every decision the plan's firewall can make, by its chain: what the agent needs to name the
/// policy and rule of a counter or an audit record.
pub fn decisions(plan: &NodePlan) -> BTreeMap<String, Decision> {
    let mut out = BTreeMap::new();
    for set in &plan.firewall.sets {
        let c = &set.compiled;
        let named = c.cells.iter().flat_map(|c| c.named.iter().map(|(_, d)| d));
        for d in c.cells.iter().map(|c| &c.decision).chain(named).chain([&c.fallback]) {
            if let Some(chain) = decision_chain(d) {
                out.entry(chain).or_insert_with(|| d.clone());
            }
        }
    }
    out
}

/// What a map element or a set's last rule does with a connection `d` decides.
fn verdict(d: &Decision) -> Value {
    match decision_chain(d) {
        Some(chain) => verdict_goto(&chain),
        None => json!({"accept": null}),
    }
}

/// How many bytes of a logged packet reach the agent: the IP header (with IPv6 extension
/// headers) and the ports are all it reads.
const AUDIT_SNAPLEN: u32 = 128;

/// The chain of one decision: count, audit if asked, decide.
fn decision_rules(cfg: &Config, chain: &str, d: &Decision) -> Chain {
    let mut exprs = vec![json!({"counter": chain})];
    if d.log {
        exprs.push(json!({"log": {"prefix": chain, "group": cfg.audit_group, "snaplen": AUDIT_SNAPLEN}}));
    }
    exprs.push(match (d.verdict, d.silent) {
        (Verdict::Allow, _) => json!({"accept": null}),
        (Verdict::Deny, false) => verdict_goto(CHAIN_DENY),
        (Verdict::Deny, true) => json!({"drop": null}),
    });
    Chain { hook: None, rules: vec![rule(exprs)] }
}

fn range(a: IpAddr, b: IpAddr) -> Value {
    json!({"range": [a.to_string(), b.to_string()]})
}

/// The two address families, with what the firewall needs to know of each.
#[derive(Clone, Copy)]
struct Fam {
    /// Map name suffix and `meta nfproto` value.
    suffix: &'static str,
    nfproto: &'static str,
    /// The payload protocol for addresses (`ip`, `ip6`) and its address type.
    payload: &'static str,
    addr_type: &'static str,
    /// The ICMP of this family.
    icmp: &'static str,
}

const FAMS: [Fam; 2] = [
    Fam { suffix: "4", nfproto: "ipv4", payload: "ip", addr_type: "ipv4_addr", icmp: "icmp" },
    Fam { suffix: "6", nfproto: "ipv6", payload: "ip6", addr_type: "ipv6_addr", icmp: "ipv6-icmp" },
];

impl Fam {
    fn of(ip: IpAddr) -> Fam {
        if ip.is_ipv4() { FAMS[0] } else { FAMS[1] }
    }
}

/// Map pod address -> the chain of its policy set, for IPv6 pods.
pub const MAP_PODS6: &str = "fw_pods6";
/// The cluster's IPv6 networks (pod, service, node), never governed.
pub const SET_CLUSTER6: &str = "fw_cluster6";

/// The chain of a cell where name rules may decide: each name rule's learned set in order, then
/// the cell's own decision. Named by a hash of what it does, so cells alike share it.
fn branch_chain(c: &CompiledSet, cell: &Cell) -> (String, Chain) {
    let fam = Fam::of(cell.dst.0);
    let mut rules = Vec::new();
    for (k, d) in &cell.named {
        let Some(n) = c.names.get(*k) else { continue };
        let set = name_set(&n.policy, &n.rule, cell.dst.0.is_ipv6());
        rules.push(rule(vec![matches("==", payload(fam.payload, "daddr"), json!(format!("@{set}"))), verdict(d)]));
    }
    rules.push(rule(vec![verdict(&cell.decision)]));
    let key: Vec<&str> = rules.iter().map(|(c, _)| c.as_str()).collect();
    let name = format!("fqb_{:016x}", xxhash_rust::xxh3::xxh3_64(key.join("|").as_bytes()));
    (name, Chain { hook: None, rules })
}

/// The maps of one compiled set, by (protocol name, family suffix), and the branch chains its
/// cells with name rules go to.
type Maps = BTreeMap<(&'static str, &'static str), BTreeMap<String, Elem>>;

fn maps(c: &CompiledSet) -> (Maps, BTreeMap<String, Chain>) {
    let mut out: Maps = BTreeMap::new();
    let mut branches = BTreeMap::new();
    for cell in &c.cells {
        let Some((_, name)) = PROTOS.iter().find(|(p, _)| *p == cell.proto) else { continue };
        let dst = range(cell.dst.0, cell.dst.1);
        let key = match cell.ports {
            Some((a, b)) => json!({"concat": [dst, {"range": [a, b]}]}),
            None => dst,
        };
        let v = if cell.named.is_empty() {
            verdict(&cell.decision)
        } else {
            let (chain, rules) = branch_chain(c, cell);
            let v = verdict_goto(&chain);
            branches.insert(chain, rules);
            v
        };
        let e = json!([key, v]);
        // Keyed by the JSON for now; `normalise` re-keys by the canonical text.
        out.entry((name, Fam::of(cell.dst.0).suffix)).or_default().insert(e.to_string(), raw(&e));
    }
    (out, branches)
}

/// Every name rule of the plan's sets: its learned sets, `(IPv4 set, IPv6 set)`.
pub fn name_sets(plan: &NodePlan) -> BTreeMap<(PolicyId, String), (String, String)> {
    let mut out = BTreeMap::new();
    for set in &plan.firewall.sets {
        for n in &set.compiled.names {
            out.entry((n.policy.clone(), n.rule.clone()))
                .or_insert_with(|| (name_set(&n.policy, &n.rule, false), name_set(&n.policy, &n.rule, true)));
        }
    }
    out
}

/// Adds the firewall's chains and maps for `plan` to `t`.
pub(super) fn add(t: &mut Table, cfg: &Config, plan: &NodePlan, _skipped: &mut Skipped) {
    let set_ref = |n: &str| json!(format!("@{n}"));
    let chains: Vec<String> = plan.firewall.sets.iter().map(set_chain).collect();
    let mut pods: [BTreeMap<String, Elem>; 2] = Default::default();
    let mut dns_pods: [BTreeMap<String, Elem>; 2] = Default::default();
    for p in &plan.firewall.pods {
        let Some(chain) = chains.get(p.set) else { continue };
        let e = json!([p.ip.to_string(), verdict_goto(chain)]);
        pods[usize::from(p.ip.is_ipv6())].insert(e.to_string(), raw(&e));
        if plan.firewall.sets.get(p.set).is_some_and(|s| s.compiled.has_names()) {
            let e = json!(p.ip.to_string());
            dns_pods[usize::from(p.ip.is_ipv6())].insert(e.to_string(), raw(&e));
        }
    }
    for (fam, (name, elems)) in FAMS.iter().zip([SET_DNS_PODS4, SET_DNS_PODS6].into_iter().zip(dns_pods)) {
        t.sets.insert(name.into(), Set { map: None, key: json!(fam.addr_type), flags: vec![], elems });
    }
    for (v4, v6) in name_sets(plan).into_values() {
        for (set, fam) in [(v4, FAMS[0]), (v6, FAMS[1])] {
            t.sets.insert(
                set,
                Set { map: None, key: json!(fam.addr_type), flags: vec!["timeout".into()], elems: BTreeMap::new() },
            );
        }
    }
    // Only on nodes with pods under name rules: every packet passes a base chain.
    if crate::dnsroute::needed(plan) {
        t.chains.insert(CHAIN_DNS.into(), dns_chain(cfg));
    }
    for (fam, (name, elems)) in FAMS.iter().zip([MAP_PODS4, MAP_PODS6].into_iter().zip(pods)) {
        t.sets
            .insert(name.into(), Set { map: Some(json!("verdict")), key: json!(fam.addr_type), flags: vec![], elems });
    }
    let interval = vec!["interval".to_string()];
    // IPv4 cluster networks are the shared `cluster4` set; IPv6 ones are only the firewall's
    // concern until the datapath steers IPv6.
    let cluster6 = plan.cluster_cidrs.iter().filter(|n| matches!(n, ipnet::IpNet::V6(_)));
    let cluster6 = super::canonical_interval_set(cluster6.map(|n| {
        let (a, b) = egret_core::planner::block_span(n);
        (u128::from(ipv6(a)), u128::from(ipv6(b)), super::prefix(n))
    }));
    t.sets.insert(
        SET_CLUSTER6.into(),
        Set { map: None, key: json!("ipv6_addr"), flags: interval.clone(), elems: cluster6 },
    );
    for (set, chain) in plan.firewall.sets.iter().zip(&chains) {
        let (mut by_proto, branches) = maps(&set.compiled);
        t.chains.extend(branches);
        let mut rules = Vec::new();
        for fam in FAMS {
            for (proto, name) in PROTOS {
                let map = format!("{chain}_{name}{}", fam.suffix);
                let daddr = payload(fam.payload, "daddr");
                let (key_type, key, guard) = match proto {
                    ProtoClass::Named(p) if p.has_ports() => (
                        json!([fam.addr_type, "inet_service"]),
                        json!({"concat": [daddr, payload(name, "dport")]}),
                        matches("==", meta("l4proto"), json!(name)),
                    ),
                    ProtoClass::Named(_) => {
                        (json!(fam.addr_type), daddr, matches("==", meta("l4proto"), json!(fam.icmp)))
                    }
                    ProtoClass::Other => (
                        json!(fam.addr_type),
                        daddr,
                        matches("!=", meta("l4proto"), json!({"set": ["tcp", "udp", "sctp", fam.icmp]})),
                    ),
                };
                let elems = by_proto.remove(&(name, fam.suffix)).unwrap_or_default();
                t.sets.insert(
                    map.clone(),
                    Set { map: Some(json!("verdict")), key: key_type, flags: interval.clone(), elems },
                );
                rules.push(rule(vec![
                    matches("==", meta("nfproto"), json!(fam.nfproto)),
                    guard,
                    json!({"vmap": {"key": key, "data": set_ref(&map)}}),
                ]));
            }
        }
        rules.push(rule(vec![verdict(&set.compiled.fallback)]));
        t.chains.insert(chain.clone(), Chain { hook: None, rules });
    }
    for (chain, d) in decisions(plan) {
        t.chains.insert(chain.clone(), decision_rules(cfg, &chain, &d));
        t.counters.insert(chain);
    }
    t.chains.insert(
        CHAIN_DENY.into(),
        Chain {
            hook: None,
            rules: vec![
                rule(vec![matches("==", meta("l4proto"), json!("tcp")), json!({"reject": {"type": "tcp reset"}})]),
                rule(vec![json!({"reject": {"type": "icmpx", "expr": "admin-prohibited"}})]),
            ],
        },
    );
    if plan.firewall.is_empty() {
        // No pod here is governed: no base chain, so this node's packets never pass a hook
        // of the firewall's (each hook costs every packet, one-way UDP flows stay "new"
        // and would pay the cluster lookup each time).
        return;
    }
    let ret = || json!({"return": null});
    t.chains.insert(
        CHAIN_FIREWALL.into(),
        Chain {
            hook: Some(Hook {
                kind: "filter".into(),
                hook: "prerouting".into(),
                prio: PRIO_FIREWALL,
                policy: "accept".into(),
            }),
            rules: vec![
                // Rules decide new connections; established ones follow conntrack (a policy
                // change that denies one ends its entry).
                rule(vec![matches("!=", ct("state"), json!("new")), ret()]),
                // A flow that never sees a reply (one-way UDP) stays "new" for every packet;
                // once its first packet passed, its entry is confirmed: decided already.
                rule(vec![matches("in", ct("status"), json!("confirmed")), ret()]),
                // Pod, service and node networks are the CNI's NetworkPolicy domain.
                rule(vec![matches("==", payload("ip", "daddr"), set_ref(super::SET_CLUSTER4)), ret()]),
                rule(vec![matches("==", payload("ip6", "daddr"), set_ref(SET_CLUSTER6)), ret()]),
                // Link-local and multicast IPv6 (neighbour discovery, router solicitations) never
                // leave the link.
                rule(vec![
                    matches(
                        "==",
                        payload("ip6", "daddr"),
                        json!({"set": [prefix6("fe80::", 10), prefix6("ff00::", 8)]}),
                    ),
                    ret(),
                ]),
                rule(vec![json!({"vmap": {"key": payload("ip", "saddr"), "data": set_ref(MAP_PODS4)}})]),
                rule(vec![json!({"vmap": {"key": payload("ip6", "saddr"), "data": set_ref(MAP_PODS6)}})]),
            ],
        },
    );
}

/// The chain handing DNS queries (UDP and TCP port 53, to whatever resolver) of pods under name
/// rules to the DNS proxy on this node; when no proxy socket takes them (the proxy is down),
/// they are dropped: DNS for those pods fails closed, others are never touched.
fn dns_chain(cfg: &Config) -> Chain {
    let mask = cfg.mark_mask();
    let mark = json!({"mangle": {"key": meta("mark"), "value": {"|": [{"&": [meta("mark"), !mask]}, cfg.dns_mark()]}}});
    let mut rules = Vec::new();
    for (fam, set, local) in [(FAMS[0], SET_DNS_PODS4, "127.0.0.1"), (FAMS[1], SET_DNS_PODS6, "::1")] {
        let from = || matches("==", payload(fam.payload, "saddr"), json!(format!("@{set}")));
        for proto in ["udp", "tcp"] {
            // Cheap comparisons first: most packets leave the rule at the port.
            rules.push(rule(vec![
                matches("==", meta("l4proto"), json!(proto)),
                matches("==", payload(proto, "dport"), json!(53)),
                matches("==", meta("nfproto"), json!(fam.nfproto)),
                from(),
                json!({"tproxy": {"family": fam.payload, "addr": local, "port": cfg.dns_proxy_port}}),
                mark.clone(),
                json!({"accept": null}),
            ]));
        }
        rules.push(rule(vec![
            matches("==", meta("l4proto"), json!({"set": ["tcp", "udp"]})),
            matches("==", payload("th", "dport"), json!(53)),
            matches("==", meta("nfproto"), json!(fam.nfproto)),
            from(),
            json!({"drop": null}),
        ]));
    }
    Chain {
        hook: Some(Hook { kind: "filter".into(), hook: "prerouting".into(), prio: PRIO_DNS, policy: "accept".into() }),
        rules,
    }
}

fn prefix6(addr: &str, len: u8) -> Value {
    json!({"prefix": {"addr": addr, "len": len}})
}

fn ipv6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V6(v) => v,
        IpAddr::V4(v) => v.to_ipv6_mapped(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::link::PeerIds;
    use egret_core::policy::{self, Firewall, FirewallPod};
    use std::sync::Arc;

    fn policy(name: &str, cidr: &str, port: u16) -> egret_api::v1alpha1::ClusterEgressPolicy {
        let y = format!(
            "apiVersion: egret.dev/v1alpha1\nkind: ClusterEgressPolicy\nmetadata: {{name: {name}}}\nspec:\n  appliedTo: {{namespaceSelector: {{}}}}\n  rules: [{{name: r, action: Allow, to: {{cidrs: [{cidr}]}}, ports: [{{port: {port}}}]}}]\n  defaultAction: Deny\n"
        );
        serde_yaml_ng::from_str(&y).unwrap()
    }

    /// A plan whose `pods` pods are spread over the sets of `policies` policies.
    fn plan(pods: u32, policies: usize) -> NodePlan {
        let api: Vec<_> = (0..policies).map(|i| policy(&format!("p{i}"), &format!("203.0.{i}.0/24"), 443)).collect();
        let v = policy::validate_policies(&api, &[]);
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        let sets: Vec<FirewallSet> = v
            .policies
            .iter()
            .map(|p| FirewallSet { policies: vec![p.id.clone()], compiled: Arc::new(policy::compile(&[p])) })
            .collect();
        let pods = (0..pods)
            .map(|i| FirewallPod {
                ip: IpAddr::V4(std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 244, 1, 0)) + i)),
                pod: format!("ns/p{i}"),
                set: i as usize % sets.len(),
            })
            .collect();
        NodePlan { node: "node-1".into(), firewall: Firewall { pods, sets }, ..NodePlan::default() }
    }

    fn rules(t: &Table) -> usize {
        t.chains.values().map(|c| c.rules.len()).sum()
    }

    #[test]
    fn the_dns_chain_is_there_only_for_pods_under_name_rules() {
        let ids = PeerIds::recovered([]);
        let cfg = Config::default();
        let plain = plan(2, 1);
        let (t, _) = crate::nft::desired(&cfg, &plain, &ids, &Default::default());
        assert!(!t.chains.contains_key(CHAIN_DNS));
        let y = "apiVersion: egret.dev/v1alpha1\nkind: ClusterEgressPolicy\nmetadata: {name: n}\nspec:\n  appliedTo: {namespaceSelector: {}}\n  rules: [{name: r, action: Allow, to: {fqdns: [api.github.test]}, ports: [{port: 443}]}]\n  defaultAction: Deny\n";
        let v = policy::validate_policies(&[serde_yaml_ng::from_str(y).unwrap()], &[]);
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        let mut named = plain.clone();
        named.firewall.sets[0].compiled = Arc::new(policy::compile(&[&v.policies[0]]));
        let (n, _) = crate::nft::desired(&cfg, &named, &ids, &Default::default());
        assert_eq!(n.chains[CHAIN_DNS].rules.len(), 6, "UDP and TCP handed over, the rest dropped, per family");
        // Steering skips the proxy's mark only where the chain exists.
        assert_eq!(n.chains["prerouting"].rules.len(), t.chains["prerouting"].rules.len() + 1);
        assert!(n.sets.keys().any(|k| k.starts_with("fq4_")) && n.sets.keys().any(|k| k.starts_with("fq6_")));
    }

    #[test]
    fn a_node_without_governed_pods_has_no_firewall_hook() {
        let (cfg, ids) = (Config::default(), PeerIds::recovered([]));
        let (governed, _) = crate::nft::desired(&cfg, &plan(2, 1), &ids, &Default::default());
        assert!(governed.chains[CHAIN_FIREWALL].hook.is_some());
        let (none, _) = crate::nft::desired(
            &cfg,
            &NodePlan { node: "node-1".into(), ..NodePlan::default() },
            &ids,
            &Default::default(),
        );
        assert!(!none.chains.contains_key(CHAIN_FIREWALL));
        assert!(none.chains.values().all(|c| c.hook.as_ref().is_none_or(|h| h.prio != PRIO_FIREWALL)));
    }

    #[test]
    fn rules_grow_with_policy_sets_only_never_with_pods_or_rules() {
        let cfg = Config::default();
        let ids = PeerIds::recovered([]);
        let (small, _) = crate::nft::desired(&cfg, &plan(1, 2), &ids, &Default::default());
        let (big, skipped) = crate::nft::desired(&cfg, &plan(5000, 2), &ids, &Default::default());
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(rules(&small), rules(&big));
        assert_eq!(big.sets[MAP_PODS4].elems.len(), 5000);
        // Each set: one allowed cell (TCP 443 to its /24) under a default deny.
        let t = crate::nft::normalise(big);
        let chain = set_chain(&plan(1, 2).firewall.sets[0]);
        let tcp: Vec<&String> = t.sets[&format!("{chain}_tcp4")].elems.keys().collect();
        assert_eq!(tcp.len(), 1);
        assert!(tcp[0].starts_with("3405774848-3405775103 . 443-443 : goto fwd_"), "{tcp:?}");
        assert_eq!(t.chains[&chain].rules.len(), 2 * PROTOS.len() + 1);
    }

    #[test]
    fn ipv6_pods_and_destinations_get_their_own_maps() {
        let api = policy("v6", "2001:db8:113::/64", 443);
        let v = policy::validate_policies(&[api], &[]);
        let ps: Vec<&policy::Policy> = v.policies.iter().collect();
        let mut p = plan(0, 1);
        p.firewall.sets =
            vec![FirewallSet { policies: vec![ps[0].id.clone()], compiled: Arc::new(policy::compile(&ps)) }];
        p.firewall.pods = vec![
            FirewallPod { ip: "10.244.1.5".parse().unwrap(), pod: "ns/a".into(), set: 0 },
            FirewallPod { ip: "fd00:10:244:1::5".parse().unwrap(), pod: "ns/a".into(), set: 0 },
        ];
        p.cluster_cidrs = vec!["10.244.0.0/16".parse().unwrap(), "fd00:10:244::/48".parse().unwrap()];
        let (t, skipped) = crate::nft::desired(&Config::default(), &p, &PeerIds::recovered([]), &Default::default());
        assert!(skipped.is_empty(), "{skipped:?}");
        let t = crate::nft::normalise(t);
        let chain = set_chain(&p.firewall.sets[0]);
        assert_eq!(t.sets[MAP_PODS4].elems.len(), 1);
        assert_eq!(t.sets[MAP_PODS6].elems.len(), 1);
        let v6: Vec<&String> = t.sets[&format!("{chain}_tcp6")].elems.keys().collect();
        let (a, b) = (
            u128::from(0x2001_0db8_0113_0000_u64) << 64,
            (u128::from(0x2001_0db8_0113_0000_u64) << 64) | u128::from(u64::MAX),
        );
        assert_eq!(v6.len(), 1);
        assert!(v6[0].starts_with(&format!("{a}-{b} . 443-443 : goto fwd_")), "{v6:?}");
        assert!(t.sets[&format!("{chain}_tcp4")].elems.is_empty(), "no IPv4 destination is allowed");
        assert_eq!(t.sets[SET_CLUSTER6].elems.len(), 1);
        // The set chain looks IPv6 connections up in the IPv6 maps, ICMPv6 included.
        let rules: Vec<String> = t.chains[&chain].rules.iter().map(|(_, r)| r.to_string()).collect();
        assert!(rules.iter().any(|r| r.contains("ipv6-icmp") && r.contains(&format!("@{chain}_icmp6"))), "{rules:#?}");
    }
}
