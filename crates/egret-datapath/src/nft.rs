//! Egret's nftables table `inet egret`: the desired content built from a [`NodePlan`] (pure),
//! the content read back from the kernel, and the one transaction that turns the second into
//! the first while touching only what differs.
//!
//! Both sides are brought into one comparable model ([`Table`]): chains with their hook and
//! the comments of their rules (every rule carries `egret:<hash of its expression>`, so a rule
//! is compared by what Egret wrote, not by nft's re-rendering of it), set and map definitions,
//! elements in a canonical text form, and named counters (by name only: their values are state).

pub mod firewall;
pub mod objects;
pub mod setelem;

use crate::config::{Config, TABLE, mac_string, tunnel_mac};
use crate::link::{PeerIds, tunnel_peers};
use egret_core::net::{Family, Span};
use egret_core::planner::{NodePlan, SteerAction};
use ipnet::IpNet;
use serde::{Deserialize, Serialize, Serializer, ser::SerializeMap};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

// Every steering set and map exists once per family: the name with `4` or `6` appended.
const SET_CLUSTER: &str = "cluster";
const SET_SOURCES: &str = "sources";
const MAP_STEER: &str = "steer";
const MAP_SNAT: &str = "snat";
const MAP_COUNTERS_SRC: &str = "counters_src";
const MAP_COUNTERS: &str = "counters";
const MAP_CONNS: &str = "conns";
const MAP_SNAT_SRC: &str = "snat_src";
const MAP_CONNS_SRC: &str = "conns_src";
const MAP_BANDWIDTH: &str = "bandwidth";

/// Gateway: (pod . destination) -> `jump bw_<egress>` for Egresses with a bandwidth limit.
pub const MAP_BANDWIDTH4: &str = "bandwidth4";
/// The IPv6 twin of [`MAP_BANDWIDTH4`].
pub const MAP_BANDWIDTH6: &str = "bandwidth6";

/// The chain limiting the rate of `egress`'s traffic on its gateway (Egress names never hold
/// `_`).
pub fn bandwidth_chain(egress: &str) -> String {
    format!("bw_{egress}")
}

/// Set holding cluster-internal IPv4 destinations (never steered).
pub const SET_CLUSTER4: &str = "cluster4";
/// Set of the local sources `steer4` has entries for (what the steering lookups can match).
pub const SET_SOURCES4: &str = "sources4";
/// Map (pod, destination) -> verdict on the pod's node.
pub const MAP_STEER4: &str = "steer4";
/// Map (pod, destination) -> egress IP on the gateway.
pub const MAP_SNAT4: &str = "snat4";
/// Map pod -> the Egress's named counter, for sources whose every `counters4` entry on this
/// node names that one Egress: their established flows are counted by a hash lookup.
pub const MAP_COUNTERS_SRC4: &str = "counters_src4";
/// Map (pod, destination) -> the Egress's named counter.
pub const MAP_COUNTERS4: &str = "counters4";
/// Gateway: (pod . destination) -> the named counter of new connections SNATed for its Egress.
pub const MAP_CONNS4: &str = "conns4";
/// The IPv6 twin of [`SET_CLUSTER4`].
pub const SET_CLUSTER6: &str = "cluster6";
/// The IPv6 twin of [`SET_SOURCES4`].
pub const SET_SOURCES6: &str = "sources6";
/// The IPv6 twin of [`MAP_STEER4`].
pub const MAP_STEER6: &str = "steer6";
/// The IPv6 twin of [`MAP_SNAT4`].
pub const MAP_SNAT6: &str = "snat6";
/// The IPv6 twin of [`MAP_COUNTERS_SRC4`].
pub const MAP_COUNTERS_SRC6: &str = "counters_src6";
/// The IPv6 twin of [`MAP_COUNTERS4`].
pub const MAP_COUNTERS6: &str = "counters6";
/// The IPv6 twin of [`MAP_CONNS4`].
pub const MAP_CONNS6: &str = "conns6";
/// Gateway: pod -> egress IP, for sources whose every `snat4` entry here names one Egress and
/// one egress IP: their new connections are SNATed by a hash lookup.
pub const MAP_SNAT_SRC4: &str = "snat_src4";
/// The IPv6 twin of [`MAP_SNAT_SRC4`].
pub const MAP_SNAT_SRC6: &str = "snat_src6";
/// Gateway: pod -> its Egress's `conns_<egress>` counter, for the sources of [`MAP_SNAT_SRC4`].
pub const MAP_CONNS_SRC4: &str = "conns_src4";
/// The IPv6 twin of [`MAP_CONNS_SRC4`].
pub const MAP_CONNS_SRC6: &str = "conns_src6";

/// The name of the counter of new connections leaving through `egress` on its gateway (Egress
/// names never hold `_`, so these never meet an Egress's own counter).
pub fn conns_counter(egress: &str) -> String {
    format!("conns_{egress}")
}

/// Why a node drops traffic of an Egress instead of letting it leave (fail closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DropReason {
    /// The Egress has no gateway: its IP is not placed (no eligible node, none alive).
    NoGateway,
    /// The gateway is known but this node has no tunnel to it.
    NoTunnel,
    /// Gateway side: traffic arrived through the tunnel for which this node holds no SNAT (its
    /// view of the gateway differs for a moment, e.g. during a failover). Its Egress is unknown.
    NoSnat,
}

impl DropReason {
    /// Every reason.
    pub const ALL: [DropReason; 3] = [DropReason::NoGateway, DropReason::NoTunnel, DropReason::NoSnat];

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::NoGateway => "no_gateway",
            DropReason::NoTunnel => "no_tunnel",
            DropReason::NoSnat => "no_snat",
        }
    }

    /// Short tag inside counter names (no `_`, so names stay unambiguous).
    fn tag(self) -> &'static str {
        match self {
            DropReason::NoGateway => "nogateway",
            DropReason::NoTunnel => "notunnel",
            DropReason::NoSnat => "nosnat",
        }
    }
}

/// What a named counter of Egret's table counts (firewall rule counters are not among these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterKind<'a> {
    /// Traffic leaving through this Egress that passed the node.
    Egress(&'a str),
    /// New connections SNATed for this Egress ([`conns_counter`]).
    Connections(&'a str),
    /// Packets of this Egress (empty: unknown) dropped for a reason ([`dropped_counter`]).
    Dropped(&'a str, DropReason),
}

impl CounterKind<'_> {
    /// The Egress the counter belongs to (empty: unknown).
    pub fn egress(&self) -> &str {
        match self {
            CounterKind::Egress(e) | CounterKind::Connections(e) | CounterKind::Dropped(e, _) => e,
        }
    }
}

/// Reads a counter name back (Kubernetes names never hold `_`; Egret's own counters do).
pub fn counter_kind(name: &str) -> Option<CounterKind<'_>> {
    let Some((prefix, rest)) = name.split_once('_') else {
        return Some(CounterKind::Egress(name));
    };
    match prefix {
        "conns" => Some(CounterKind::Connections(rest)),
        "dropped" => {
            let (tag, egress) = rest.split_once('_').unwrap_or((rest, ""));
            let reason = DropReason::ALL.into_iter().find(|r| r.tag() == tag)?;
            Some(CounterKind::Dropped(egress, reason))
        }
        _ => None,
    }
}

/// The name of the counter of packets of `egress` dropped for `reason` on this node; `egress`
/// is empty where the node cannot tell it ([`DropReason::NoSnat`]).
pub fn dropped_counter(egress: &str, reason: DropReason) -> String {
    if egress.is_empty() { format!("dropped_{}", reason.tag()) } else { format!("dropped_{}_{egress}", reason.tag()) }
}
/// Map inner source MAC of tunnelled packets -> chain recording the origin node in ct mark.
pub const MAP_PEERS: &str = "tunnel_peers";
/// Map Egret's ct mark bits -> chain setting the packet mark that routes back to that node.
pub const MAP_RESTORE: &str = "tunnel_restore";

/// Priority of the mangle-like filter chains (as `mangle`): after conntrack, before DNAT.
const PRIO_MANGLE: i64 = -150;
/// Egret's SNAT runs before any CNI masquerade at `srcnat` (100): the first NAT binding wins.
const PRIO_SNAT: i64 = 90;

/// A base chain's hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// `filter` or `nat`.
    pub kind: String,
    /// `prerouting`, `forward`, `postrouting`.
    pub hook: String,
    /// Priority.
    pub prio: i64,
    /// `accept`.
    pub policy: String,
}

/// A chain: its hook (base chains) and its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// `None` for regular chains.
    pub hook: Option<Hook>,
    /// `(comment, expression)`; only comments are compared.
    pub rules: Vec<(String, Value)>,
}

/// One element as nft's JSON text. Kept as text, not as a parsed [`Value`]: a parsed element
/// costs kilobytes (a map per object), its text about a hundred bytes, and a gateway's maps
/// hold thousands of elements, twice (desired and read back).
pub type Elem = Box<RawValue>;

fn raw(v: &Value) -> Elem {
    // Serialising a `Value` cannot fail (its keys are strings); `null` keeps this total.
    serde_json::value::to_raw_value(v).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

fn parsed(e: &RawValue) -> Value {
    serde_json::from_str(e.get()).unwrap_or(Value::Null)
}

/// A set or map.
#[derive(Debug, Clone)]
pub struct Set {
    /// `map` data type, `None` for a set.
    pub map: Option<Value>,
    /// Key type.
    pub key: Value,
    /// Flags (e.g. `interval`).
    pub flags: Vec<String>,
    /// Canonical element text (key, and `: value` for maps) -> JSON element (for a one-field
    /// interval set, the JSON array of the elements one canonical range stands for).
    pub elems: BTreeMap<String, Elem>,
}

impl PartialEq for Set {
    fn eq(&self, o: &Set) -> bool {
        self.same_definition(o)
            && self.elems.len() == o.elems.len()
            && self.elems.iter().zip(&o.elems).all(|((ka, a), (kb, b))| ka == kb && a.get() == b.get())
    }
}

impl Eq for Set {}

impl Set {
    fn same_definition(&self, o: &Set) -> bool {
        self.map == o.map && self.key == o.key && self.flags == o.flags
    }
}

/// The content of table `inet egret`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Table {
    /// Chains by name.
    pub chains: BTreeMap<String, Chain>,
    /// Sets and maps by name.
    pub sets: BTreeMap<String, Set>,
    /// Named counters.
    pub counters: BTreeSet<String>,
}

/// A plan entry left out of the datapath (or programmed to drop), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    /// The Egress it belongs to, when it belongs to one (a log field of its own).
    pub egress: Option<String>,
    /// What was left out and why.
    pub why: String,
}

impl Skip {
    /// An entry of no particular Egress.
    pub fn new(why: impl Into<String>) -> Skip {
        Skip { egress: None, why: why.into() }
    }

    /// An entry of `egress`.
    pub fn of(egress: &str, why: impl Into<String>) -> Skip {
        Skip { egress: Some(egress.to_string()), why: why.into() }
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

/// Things left out of the table, with the reason (logged and reported).
pub type Skipped = Vec<Skip>;

fn payload(proto: &str, field: &str) -> Value {
    json!({"payload": {"protocol": proto, "field": field}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn ct(key: &str) -> Value {
    json!({"ct": {"key": key}})
}

fn matches(op: &str, left: Value, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

fn rule(expr: Vec<Value>) -> (String, Value) {
    let expr = Value::Array(expr);
    let hash = xxhash_rust::xxh3::xxh3_64(expr.to_string().as_bytes());
    (format!("egret:{hash:016x}"), expr)
}

fn prefix(net: &IpNet) -> Value {
    json!({"prefix": {"addr": net.network().to_string(), "len": net.prefix_len()}})
}

/// `KEY = (KEY & ~mask) | value`: sets Egret's bits of a packet or conntrack mark, keeping
/// everyone else's.
fn set_bits(key: Value, mask: u32, value: u32) -> Value {
    json!({"mangle": {"key": key.clone(), "value": {"|": [{"&": [key, !mask]}, value]}}})
}

fn verdict_goto(chain: &str) -> Value {
    json!({"goto": {"target": chain}})
}

fn verdict_jump(chain: &str) -> Value {
    json!({"jump": {"target": chain}})
}

/// Name of the chain that marks packets for the tunnel to the peer with local id `id`.
pub fn tunnel_chain(id: u16) -> String {
    format!("to_node_{id}")
}

/// Name of the chain that sets only the packet mark for the peer with local id `id`: later
/// packets of a flow whose conntrack mark already names the peer.
pub fn mark_chain(id: u16) -> String {
    format!("mark_{id}")
}

/// Name of the chain that marks packets for the exit of the egress subnet whose gateway is
/// `gateway` (local id `id`): its table routes them out through that gateway. The gateway in the
/// name lets a restarted agent recover the id ([`ids_in`]).
pub fn exit_chain(id: u16, gateway: Ipv4Addr) -> String {
    format!("exit_{id}_{gateway}")
}

/// Gateway: (pod . destination) -> `jump exit_<id>_<gw>` for traffic SNATed to an egress IP
/// of an egress subnet.
pub const MAP_EXIT4: &str = "exit4";

/// Regular chain for what arrives through the tunnel (prerouting jumps there first).
const CHAIN_FROM_TUNNEL: &str = "from_tunnel";
/// Regular chain for what leaves through the tunnel (forward jumps there).
const CHAIN_INTO_TUNNEL: &str = "into_tunnel";
/// Marks a flow leaving from this node (its gateway) as steered, out here.
pub const CHAIN_LOCAL: &str = "out_here";
/// Flows without Egret's conntrack mark: steering's classification.
const CHAIN_CLASSIFY: &str = "classify";

/// Name of the chain that records "arrived from the peer with local id `id`" in the
/// conntrack mark.
pub fn origin_chain(id: u16) -> String {
    format!("from_node_{id}")
}

/// Drops what would leave by an interface exit that gives no way out (see
/// [`crate::link::Exits::unresolved`]): never sent another way.
const CHAIN_NO_EXIT: &str = "no_exit";

/// Builds the desired table for `plan`, with `ids` the local ids of its peers and `exits` its
/// interface exits as resolved on this node (pure).
pub fn desired(cfg: &Config, plan: &NodePlan, ids: &PeerIds, exits_here: &crate::link::Exits) -> (Table, Skipped) {
    let (peers, skipped_peers) = tunnel_peers(plan);
    let mut skipped: Skipped = skipped_peers.into_iter().map(Skip::new).collect();
    let mask = cfg.mark_mask();
    let vx = cfg.vxlan_name.as_str();
    let mut t = Table::default();

    // Peers: one marking chain per direction and peer. These grow with the peers this node
    // needs, never with pods or Egresses.
    let mut peer_ids: BTreeMap<&str, u16> = BTreeMap::new();
    let mut peers_elems = BTreeMap::new();
    let mut restore_elems = BTreeMap::new();
    for (name, ip) in &peers {
        let Some(id) = ids.get(ip) else {
            skipped.push(Skip::new(format!("peer {name} has no local id: no tunnel to it")));
            continue;
        };
        peer_ids.insert(name, id);
        let m = cfg.mark(id);
        let set_mark = set_bits(meta("mark"), mask, m);
        // The conntrack mark remembers the decision, so the flow's later packets skip the
        // steering lookups (see the prerouting chain), and then need only the packet mark.
        t.chains.insert(mark_chain(id), Chain { hook: None, rules: vec![rule(vec![set_mark.clone()])] });
        t.chains.insert(
            tunnel_chain(id),
            Chain { hook: None, rules: vec![rule(vec![set_mark, set_bits(ct("mark"), mask, m)])] },
        );
        t.chains.insert(origin_chain(id), Chain { hook: None, rules: vec![rule(vec![set_bits(ct("mark"), mask, m)])] });
        let mac = mac_string(&tunnel_mac(*ip));
        peers_elems
            .insert(format!("{mac} : jump {}", origin_chain(id)), raw(&json!([mac, verdict_jump(&origin_chain(id))])));
        // goto: a restored packet needs nothing else from Egret's chain.
        restore_elems.insert(format!("{m} : goto {}", mark_chain(id)), raw(&json!([m, verdict_goto(&mark_chain(id))])));
    }

    // This node is the gateway: the conntrack mark says "out here", so the flow's later
    // packets (and its replies) skip the steering lookups like tunnelled flows; restored, the
    // value sets no packet mark (plain routing).
    let local_mark = cfg.mark(egret_core::ids::LOCAL_ID);
    t.chains.insert(
        CHAIN_LOCAL.into(),
        Chain { hook: None, rules: vec![rule(vec![set_bits(ct("mark"), mask, local_mark), json!({"accept": null})])] },
    );
    restore_elems.insert(format!("{local_mark} : accept"), raw(&json!([local_mark, {"accept": null}])));

    // Egress subnets: a chain per subnet setting the packet mark its policy routing follows.
    let mut exits: BTreeMap<IpAddr, String> = BTreeMap::new();
    for h in &plan.hosted {
        let Some(sn) = h.subnet else { continue };
        let Some(id) = ids.get(&sn.gateway) else {
            skipped.push(Skip::new(format!("egress subnet via {} has no local id", sn.gateway)));
            continue;
        };
        // The same rule as a peer's `mark_N` chain; named apart so that the id is recoverable.
        let c = exit_chain(id, sn.gateway);
        t.chains.insert(
            c.clone(),
            Chain { hook: None, rules: vec![rule(vec![set_bits(meta("mark"), mask, cfg.mark(id))])] },
        );
        exits.insert(h.ip, c);
    }
    // Interface exits: the same, through the interface's next hop; fail closed without one.
    for e in &plan.interface_exits {
        match (exits_here.via.get(&e.ip), exits_here.unresolved.get(&e.ip)) {
            (Some((_, hop)), _) => {
                let Some(id) = ids.get(hop) else {
                    skipped.push(Skip::new(format!("exit of {} via {hop} has no local id", e.ip)));
                    continue;
                };
                let c = exit_chain(id, *hop);
                t.chains.insert(
                    c.clone(),
                    Chain { hook: None, rules: vec![rule(vec![set_bits(meta("mark"), mask, cfg.mark(id))])] },
                );
                exits.insert(e.ip, c);
            }
            (None, why) => {
                let why = why.map_or("not resolved", String::as_str);
                skipped.push(Skip::new(format!(
                    "egress IP {} leaves by no interface ({why}): its traffic is dropped",
                    e.ip
                )));
                t.chains
                    .insert(CHAIN_NO_EXIT.into(), Chain { hook: None, rules: vec![rule(vec![json!({"drop": null})])] });
                exits.insert(e.ip, CHAIN_NO_EXIT.into());
            }
        }
    }

    // Both families: the same sets and maps, one of each per family (`4`/`6` suffix), and for
    // each rule that reads addresses one copy per family. A rule reading `ip` fields does not
    // match an IPv6 packet (nor `ip6` fields an IPv4 one), so each packet meets its own.
    let mut fam = [Fam::new(Family::V4), Fam::new(Family::V6)];
    for c in &plan.cluster_cidrs {
        let span = Span::of_net(c);
        fam[at(span.family)].cluster.push((span.start, span.end, prefix(c)));
    }

    let mut counter_names = BTreeSet::new();
    // The counters each source's entries name (see MAP_COUNTERS_SRC4).
    let mut by_source: BTreeMap<IpAddr, BTreeSet<String>> = BTreeMap::new();
    // `counter` is the Egress's own (traffic leaving) or one of its drop counters.
    let mut add_counter = |src: IpAddr, key_text: String, key: &Value, counter: &str, f: &mut Fam| {
        by_source.entry(src).or_default().insert(counter.to_string());
        if f.counters.contains_key(&format!("{key_text} : {counter}")) {
            return;
        }
        f.counters.insert(format!("{key_text} : {counter}"), raw(&json!([key, counter])));
        counter_names.insert(counter.to_string());
    };
    for s in &plan.steer {
        if s.source.is_ipv6() != matches!(s.destination, IpNet::V6(_)) {
            skipped.push(Skip::of(
                &s.egress,
                format!("steering {} -> {} ({}) mixes address families", s.source, s.destination, s.egress),
            ));
            continue;
        }
        let (src, dst) = (s.source, s.destination);
        let f = &mut fam[at(Family::of(&src))];
        let key_text = concat_text(src, &dst);
        let key = json!({"concat": [src.to_string(), prefix(&dst)]});
        let drop = ("drop".to_string(), json!({"drop": null}));
        let exit = s.egress_ip.and_then(|ip| exits.get(&ip));
        let ((vtext, v), counter) = match &s.action {
            // Leaving by an egress subnet from here: marked for its exit route.
            SteerAction::Local => match exit {
                Some(c) => ((format!("goto {c}"), verdict_goto(c)), s.egress.clone()),
                None => ((format!("goto {CHAIN_LOCAL}"), verdict_goto(CHAIN_LOCAL)), s.egress.clone()),
            },
            SteerAction::Tunnel { gateway } if peer_ids.contains_key(gateway.as_str()) => {
                let c = tunnel_chain(peer_ids[gateway.as_str()]);
                ((format!("goto {c}"), verdict_goto(&c)), s.egress.clone())
            }
            SteerAction::Tunnel { gateway } => {
                // Fail closed: without a tunnel to the gateway the traffic must not leak.
                skipped.push(Skip::of(
                    &s.egress,
                    format!("gateway {gateway} of {} has no usable tunnel: {src} -> {dst} dropped", s.egress),
                ));
                (drop, dropped_counter(&s.egress, DropReason::NoTunnel))
            }
            SteerAction::Drop => (drop, dropped_counter(&s.egress, DropReason::NoGateway)),
        };
        f.steer.insert(format!("{key_text} : {vtext}"), raw(&json!([key, v])));
        let src_elem = json!(src.to_string());
        f.sources.insert(src_elem.to_string(), raw(&src_elem));
        add_counter(src, key_text, &key, &counter, f);
    }
    let mut conn_names = BTreeSet::new();
    let mut exit_elems = BTreeMap::new();
    // What each source's SNAT entries here name: (Egress, egress IP).
    let mut snat_by_source: BTreeMap<IpAddr, BTreeSet<(String, IpAddr)>> = BTreeMap::new();
    for s in &plan.snat {
        let (src, dst, eip) = (s.source, s.destination, s.egress_ip);
        if src.is_ipv6() != matches!(dst, IpNet::V6(_)) || src.is_ipv6() != eip.is_ipv6() {
            skipped.push(Skip::of(
                &s.egress,
                format!("SNAT {src} -> {dst} as {eip} ({}) mixes address families", s.egress),
            ));
            continue;
        }
        let f = &mut fam[at(Family::of(&src))];
        let key_text = concat_text(src, &dst);
        let key = json!({"concat": [src.to_string(), prefix(&dst)]});
        f.snat.insert(format!("{key_text} : {eip}"), raw(&json!([key, eip.to_string()])));
        let conn = conns_counter(&s.egress);
        f.conns.insert(format!("{key_text} : {conn}"), raw(&json!([key, conn])));
        if let Some(c) = exits.get(&eip) {
            exit_elems.insert(format!("{key_text} : jump {c}"), raw(&json!([key, verdict_jump(c)])));
        }
        if plan.bandwidth.contains_key(&s.egress) {
            let c = bandwidth_chain(&s.egress);
            f.bandwidth.insert(format!("{key_text} : jump {c}"), raw(&json!([key, verdict_jump(&c)])));
        }
        conn_names.insert(conn);
        add_counter(src, key_text, &key, &s.egress, f);
        snat_by_source.entry(src).or_default().insert((s.egress.clone(), eip));
    }
    // New connections of a source SNATed here under one Egress to one IP are counted and
    // SNATed by source alone (hash lookups), for flows Egret steered (tunnel arrivals and local
    // pods marked "out here"): the pair maps' concatenated-interval lookups grow with the
    // entries, and every new connection paid two of them.
    for (src, uses) in &snat_by_source {
        let Some((egress, eip)) = uses.first().filter(|_| uses.len() == 1) else { continue };
        let f = &mut fam[at(Family::of(src))];
        let e = json!([src.to_string(), eip.to_string()]);
        f.snat_src.insert(e.to_string(), raw(&e));
        let e = json!([src.to_string(), conns_counter(egress)]);
        f.conns_src.insert(e.to_string(), raw(&e));
    }
    // Established flows of a source with one Egress here are counted by source alone: a hash
    // lookup whatever the number of entries, where the concatenated-interval lookup of
    // `counters4` grows with them. (Only on paths where the packet is known to be steered:
    // the source alone does not tell whether a destination is.) A source SNATed here must be
    // SNATed by source too: then what it sends through the tunnel from a known peer always leaves
    // SNATed, whatever its destination, and is counted from its first packet.
    for (src, names) in &by_source {
        let Some(one) =
            names.first().filter(|n| names.len() == 1 && matches!(counter_kind(n), Some(CounterKind::Egress(_))))
        else {
            continue;
        };
        if snat_by_source.get(src).is_some_and(|uses| uses.len() != 1) {
            continue;
        }
        let e = json!([src.to_string(), one]);
        fam[at(Family::of(src))].counters_src.insert(e.to_string(), raw(&e));
    }
    // Named counters for every Egress with traffic here, even before its first packet.
    counter_names.extend(plan.egresses.iter().cloned());
    counter_names.extend(conn_names);
    counter_names.insert(dropped_counter("", DropReason::NoSnat));
    t.counters = counter_names;

    for f in fam {
        f.into_sets(&mut t);
    }
    t.sets.insert(
        MAP_PEERS.into(),
        Set { map: Some(json!("verdict")), key: json!("ether_addr"), flags: vec![], elems: peers_elems },
    );
    let has_exits = !exit_elems.is_empty();
    t.sets.insert(
        MAP_EXIT4.into(),
        Set {
            map: Some(json!("verdict")),
            key: json!(["ipv4_addr", "ipv4_addr"]),
            flags: vec!["interval".into()],
            elems: exit_elems,
        },
    );
    t.sets.insert(
        MAP_RESTORE.into(),
        Set { map: Some(json!("verdict")), key: json!("mark"), flags: vec![], elems: restore_elems },
    );

    let hook = |kind: &str, hook: &str, prio: i64| {
        Some(Hook { kind: kind.into(), hook: hook.into(), prio, policy: "accept".into() })
    };
    let set_ref = |n: &str| json!(format!("@{n}"));
    let both = [Family::V4, Family::V6];
    let ct_marked = || matches("!=", json!({"&": [ct("mark"), mask]}), json!(0));
    let restore = || json!({"vmap": {"key": {"&": [ct("mark"), mask]}, "data": set_ref(MAP_RESTORE)}});
    let count_by = |key: Value, map: String| json!({"counter": {"map": {"key": key, "data": set_ref(&map)}}});
    let mut pre: Vec<(String, Value)> = crate::dnsroute::needed(plan)
        .then(|| {
            // A DNS query handed to the DNS proxy (chain `dns`, just before, on nodes with
            // pods under name rules): delivered locally, never steered.
            rule(vec![
                matches("==", json!({"&": [meta("mark"), mask]}), json!(cfg.dns_mark())),
                json!({"return": null}),
            ])
        })
        .into_iter()
        .collect();
    // Interfaces are compared by index (`iif`, `oif`: nft resolves the name when it loads
    // the rule), not by name: a name is copied and compared as a string for every packet.
    // `parse_table` notices a rule left with the index of a device that is gone, so a
    // re-created tunnel device gets its rules again.
    pre.push(rule(vec![matches("==", meta("iif"), json!(vx)), verdict_goto(CHAIN_FROM_TUNNEL)]));
    // No Egret bits in the conntrack mark: a flow Egret has not steered (yet), or not
    // Egret's at all (the tunnel's outer packets, the node's own traffic). Classified in a
    // chain of its own, so these packets skip the marked flows' rules below and marked
    // flows skip the classification.
    pre.push(rule(vec![matches("==", json!({"&": [ct("mark"), mask]}), json!(0)), verdict_goto(CHAIN_CLASSIFY)]));
    // Gateway, reply direction of a flow that came through the tunnel: mark it so policy
    // routing sends it back through the tunnel to the node it came from.
    pre.push(rule(vec![matches("==", ct("direction"), json!("reply")), restore()]));
    // Pod's node, later packets of a flow already steered into the tunnel (original direction:
    // replies with Egret's bits left the rule above): the conntrack mark holds the gateway;
    // count and go, skipping the cluster and steering lookups. Counted by source when the
    // source has one Egress here (a miss leaves the rule), else by source and destination.
    for f in both {
        pre.push(rule(vec![count_by(payload(proto(f), "saddr"), fam_name(f, MAP_COUNTERS_SRC)), restore()]));
        pre.push(rule(vec![count_by(saddr_daddr(f), fam_name(f, MAP_COUNTERS)), restore()]));
    }
    // A marked flow the maps no longer know (its source's treatment changed; the sync deletes
    // such flows, this covers the moment before): classified again, never let out unsteered.
    pre.push(rule(vec![verdict_goto(CHAIN_CLASSIFY)]));
    t.chains.insert("prerouting".into(), Chain { hook: hook("filter", "prerouting", PRIO_MANGLE), rules: pre });
    let mut classify = Vec::new();
    for f in both {
        // Not a source Egret steers (the node's own traffic, the tunnel's outer packets, pods
        // without an Egress): one hash lookup, instead of the cluster and the two steering
        // lookups below, is all Egret costs it.
        classify.push(rule(vec![
            matches("!=", payload(proto(f), "saddr"), set_ref(&fam_name(f, SET_SOURCES))),
            json!({"return": null}),
        ]));
        if f == Family::V4 {
            // A steered pod answering a connection it accepted (from outside, through a
            // NodePort or LoadBalancer keeping the client's address): Egress governs what pods
            // start, so the reply leaves as the CNI sends it; steered, it would reach the
            // client from the egress IP and break the connection. Once, after the IPv4
            // source test: IPv6 packets meet it too, and no unsteered IPv4 packet pays it.
            classify.push(rule(vec![matches("==", ct("direction"), json!("reply")), json!({"return": null})]));
        }
        classify.push(rule(vec![
            matches("==", payload(proto(f), "daddr"), set_ref(&fam_name(f, SET_CLUSTER))),
            json!({"return": null}),
        ]));
        classify.push(rule(vec![count_by(saddr_daddr(f), fam_name(f, MAP_COUNTERS))]));
        classify.push(rule(vec![json!({"vmap": {"key": saddr_daddr(f), "data": set_ref(&fam_name(f, MAP_STEER))}})]));
    }
    t.chains.insert(CHAIN_CLASSIFY.into(), Chain { hook: None, rules: classify });

    // Gateway, new flow from the tunnel: remember the origin node (inner source MAC is the
    // origin's VXLAN device, derived from its underlay address). Tested on the conntrack mark,
    // not on `ct state new`: a flow that never sees a reply (one-way UDP) stays "new" for every
    // packet, and would pay the lookup each time.
    let mut from = vec![rule(vec![
        matches("==", json!({"&": [ct("mark"), mask]}), json!(0)),
        json!({"vmap": {"key": payload("ether", "saddr"), "data": set_ref(MAP_PEERS)}}),
    ])];
    if has_exits {
        // Gateway of an egress subnet: what leaves by it is marked for its exit route, every
        // packet (the conntrack mark holds the origin node). Only where a subnet exists.
        from.push(rule(vec![
            matches("==", ct("direction"), json!("original")),
            json!({"vmap": {"key": saddr_daddr(Family::V4), "data": set_ref(MAP_EXIT4)}}),
        ]));
    }
    // Replies to a local pod (steered out through another node): nothing to count.
    from.push(rule(vec![matches("==", ct("direction"), json!("reply")), json!({"return": null})]));
    // Steered traffic to count here at the gateway (original direction: replies left at the
    // rule above). Nothing to steer and no cluster lookup (the end of a chain entered by goto
    // ends the base chain). A source in `counters_src` here is SNATed by source (see
    // MAP_SNAT_SRC4), so what it sends through the tunnel always leaves SNATed: counted by
    // source from its first packet.
    for f in both {
        from.push(rule(vec![
            count_by(payload(proto(f), "saddr"), fam_name(f, MAP_COUNTERS_SRC)),
            json!({"return": null}),
        ]));
        from.push(rule(vec![count_by(saddr_daddr(f), fam_name(f, MAP_COUNTERS)), json!({"return": null})]));
    }
    t.chains.insert(CHAIN_FROM_TUNNEL.into(), Chain { hook: None, rules: from });
    let mut forward = vec![rule(vec![matches("==", meta("oif"), json!(vx)), verdict_goto(CHAIN_INTO_TUNNEL)])];
    if !plan.bandwidth.is_empty() {
        // Gateway of Egresses with a bandwidth limit: what their pods send out (before SNAT,
        // so still with the pod's address) passes the Egress's limit; over it, dropped, as
        // Antrea's meters do. Only where some Egress has a limit: no lookup otherwise.
        for f in both {
            forward.push(rule(vec![
                matches("==", ct("direction"), json!("original")),
                json!({"vmap": {"key": saddr_daddr(f), "data": set_ref(&fam_name(f, MAP_BANDWIDTH))}}),
            ]));
        }
        for (egress, bw) in &plan.bandwidth {
            // Bytes, as nft counts; one token bucket per rule, shared by all the Egress's flows.
            let limit = json!({"limit": {"rate": (bw.rate_bps / 8).max(1), "per": "second", "rate_unit": "bytes",
                "burst": (bw.burst_bits / 8).max(1), "burst_unit": "bytes", "inv": true}});
            t.chains.insert(
                bandwidth_chain(egress),
                Chain { hook: None, rules: vec![rule(vec![limit, json!({"drop": null})])] },
            );
        }
    }
    t.chains.insert("forward".into(), Chain { hook: hook("filter", "forward", PRIO_MANGLE), rules: forward });
    t.chains.insert(
        CHAIN_INTO_TUNNEL.into(),
        Chain {
            hook: None,
            rules: vec![
                // The tunnel costs 50 bytes: clamp the MSS of SYNs (both directions, both
                // families: `rt mtu` is the route's MTU less the family's headers) entering it.
                rule(vec![
                    matches("==", json!({"&": [payload("tcp", "flags"), ["syn", "rst"]]}), json!("syn")),
                    json!({"mangle": {"key": {"tcp option": {"name": "maxseg", "field": "size"}},
                        "value": {"rt": {"key": "mtu"}}}}),
                ]),
                // The packet is routed (forward comes after routing): Egret's bits have done
                // their work. The VXLAN device routes the encapsulated packet with the inner
                // packet's mark, so they must go, or the outer packet would be routed into
                // the tunnel again. Cleared here rather than in a postrouting chain of its own:
                // one hook fewer for every packet.
                rule(vec![json!({"mangle": {"key": meta("mark"), "value": {"&": [meta("mark"), !mask]}}})]),
            ],
        },
    );
    let mut post = Vec::new();
    for f in both {
        post.push(rule(vec![
            matches("==", payload(proto(f), "daddr"), set_ref(&fam_name(f, SET_CLUSTER))),
            json!({"return": null}),
        ]));
    }
    for f in both {
        // Steered into the tunnel (the conntrack mark names the gateway; the packet's bits
        // were cleared in forward): bind an identity SNAT so that no CNI masquerade later in
        // this hook rewrites the pod address the gateway must see.
        post.push(rule(vec![
            matches("==", meta("oif"), json!(vx)),
            ct_marked(),
            json!({"snat": {"family": proto(f), "addr": payload(proto(f), "saddr")}}),
        ]));
        // A new connection leaving through an Egress here (this hook sees only a connection's
        // first packet): count it for its Egress, and SNAT it. By source alone when the source
        // has one Egress and one IP here and Egret steered the flow (a miss leaves the rule).
        post.push(rule(vec![
            matches("!=", meta("oif"), json!(vx)),
            ct_marked(),
            count_by(payload(proto(f), "saddr"), fam_name(f, MAP_CONNS_SRC)),
            json!({"snat": {"family": proto(f), "addr": {"map": {"key": payload(proto(f), "saddr"), "data": set_ref(&fam_name(f, MAP_SNAT_SRC))}}}}),
        ]));
        post.push(rule(vec![matches("!=", meta("oif"), json!(vx)), count_by(saddr_daddr(f), fam_name(f, MAP_CONNS))]));
        post.push(rule(vec![
            matches("!=", meta("oif"), json!(vx)),
            json!({"snat": {"family": proto(f), "addr": {"map": {"key": saddr_daddr(f), "data": set_ref(&fam_name(f, MAP_SNAT))}}}}),
        ]));
    }
    // Arrived through the tunnel but this node has no SNAT for it (its view of the gateway
    // differs for a moment, e.g. during a failover): fail closed rather than let a CNI
    // masquerade send it out with this node's IP.
    post.push(rule(vec![
        matches("==", meta("iif"), json!(vx)),
        matches("!=", meta("oif"), json!(vx)),
        json!({"counter": dropped_counter("", DropReason::NoSnat)}),
        json!({"drop": null}),
    ]));
    t.chains.insert("postrouting_nat".into(), Chain { hook: hook("nat", "postrouting", PRIO_SNAT), rules: post });
    firewall::add(&mut t, cfg, plan, &mut skipped);
    (t, skipped)
}

/// The key text of a (source . destination block) element (only for telling entries apart
/// while building: [`normalise`] rewrites every key in the canonical form).
fn concat_text(src: IpAddr, dst: &IpNet) -> String {
    format!("{src} . {dst}")
}

/// Index of a family's share in the per-family arrays: IPv4 first.
fn at(f: Family) -> usize {
    match f {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

/// nft's payload protocol (and NAT family) name.
fn proto(f: Family) -> &'static str {
    match f {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn addr_type(f: Family) -> &'static str {
    match f {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    }
}

/// The family's set or map of the kind `base` (a name without its digit).
fn fam_name(f: Family, base: &str) -> String {
    match f {
        Family::V4 => format!("{base}4"),
        Family::V6 => format!("{base}6"),
    }
}

fn saddr_daddr(f: Family) -> Value {
    json!({"concat": [payload(proto(f), "saddr"), payload(proto(f), "daddr")]})
}

/// One family's share of the steering sets and maps, as they are built.
struct Fam {
    family: Family,
    cluster: Vec<(u128, u128, Value)>,
    sources: BTreeMap<String, Elem>,
    steer: BTreeMap<String, Elem>,
    snat: BTreeMap<String, Elem>,
    counters: BTreeMap<String, Elem>,
    counters_src: BTreeMap<String, Elem>,
    conns: BTreeMap<String, Elem>,
    snat_src: BTreeMap<String, Elem>,
    conns_src: BTreeMap<String, Elem>,
    bandwidth: BTreeMap<String, Elem>,
}

impl Fam {
    fn new(family: Family) -> Fam {
        Fam {
            family,
            cluster: Vec::new(),
            sources: BTreeMap::new(),
            steer: BTreeMap::new(),
            snat: BTreeMap::new(),
            counters: BTreeMap::new(),
            counters_src: BTreeMap::new(),
            conns: BTreeMap::new(),
            snat_src: BTreeMap::new(),
            conns_src: BTreeMap::new(),
            bandwidth: BTreeMap::new(),
        }
    }

    fn into_sets(self, t: &mut Table) {
        let f = self.family;
        let addr = json!(addr_type(f));
        let interval = vec!["interval".to_string()];
        let pair = json!([addr_type(f), addr_type(f)]);
        let set = |map: Option<Value>, key: &Value, flags: &Vec<String>, elems| Set {
            map,
            key: key.clone(),
            flags: flags.clone(),
            elems,
        };
        let cluster = canonical_interval_set(self.cluster.into_iter());
        t.sets.insert(fam_name(f, SET_CLUSTER), set(None, &addr, &interval, cluster));
        t.sets.insert(fam_name(f, SET_SOURCES), set(None, &addr, &vec![], self.sources));
        t.sets.insert(fam_name(f, MAP_STEER), set(Some(json!("verdict")), &pair, &interval, self.steer));
        t.sets.insert(fam_name(f, MAP_SNAT), set(Some(addr.clone()), &pair, &interval, self.snat));
        t.sets.insert(fam_name(f, MAP_COUNTERS), set(Some(json!("counter")), &pair, &interval, self.counters));
        t.sets.insert(fam_name(f, MAP_COUNTERS_SRC), set(Some(json!("counter")), &addr, &vec![], self.counters_src));
        t.sets.insert(fam_name(f, MAP_CONNS), set(Some(json!("counter")), &pair, &interval, self.conns));
        t.sets.insert(fam_name(f, MAP_SNAT_SRC), set(Some(addr.clone()), &addr, &vec![], self.snat_src));
        t.sets.insert(fam_name(f, MAP_CONNS_SRC), set(Some(json!("counter")), &addr, &vec![], self.conns_src));
        t.sets.insert(fam_name(f, MAP_BANDWIDTH), set(Some(json!("verdict")), &pair, &interval, self.bandwidth));
    }
}

/// Canonical elements of a one-field interval set: adjacent or overlapping ranges merged, so
/// that however nft splits or joins intervals, equal sets compare equal.
fn canonical_interval_set(ranges: impl Iterator<Item = (u128, u128, Value)>) -> BTreeMap<String, Elem> {
    let mut v: Vec<(u128, u128, Value)> = ranges.collect();
    v.sort_by_key(|r| (r.0, r.1));
    let mut merged: Vec<(u128, u128, Vec<Value>)> = Vec::new();
    for (s, e, j) in v {
        match merged.last_mut() {
            Some(last) if s <= last.1.saturating_add(1) => {
                last.1 = last.1.max(e);
                last.2.push(j);
            }
            _ => merged.push((s, e, vec![j])),
        }
    }
    let mut out = BTreeMap::new();
    for (s, e, js) in merged {
        // One canonical range may stand for several JSON elements; keep them all for adds.
        out.insert(format!("{s}-{e}"), raw(&Value::Array(js)));
    }
    out
}

// ---- reading back ----

fn ip_u128(s: &str) -> Option<u128> {
    match s.parse::<IpAddr>().ok()? {
        IpAddr::V4(v) => Some(u32::from(v) as u128),
        IpAddr::V6(v) => Some(u128::from(v)),
    }
}

/// `start-end` of an address-like element component, or the plain text of anything else.
fn component_text(v: &Value) -> String {
    match v {
        Value::String(s) => match ip_u128(s) {
            Some(n) => format!("{n}-{n}"),
            None => s.clone(),
        },
        // A number alone is the one-value range, as nft prints `443` for `443-443`.
        Value::Number(n) => format!("{n}-{n}"),
        Value::Object(o) => {
            if let Some(p) = o.get("prefix") {
                let addr = p.get("addr").and_then(Value::as_str).unwrap_or("");
                let len = p.get("len").and_then(Value::as_u64).unwrap_or(0) as u32;
                if let Ok(net) = format!("{addr}/{len}").parse::<IpNet>() {
                    let (s, e) = egret_core::planner::block_span(&net);
                    if let (Some(s), Some(e)) = (ip_u128(&s.to_string()), ip_u128(&e.to_string())) {
                        return format!("{s}-{e}");
                    }
                }
            }
            if let Some(Value::Array(r)) = o.get("range") {
                let bound = |v: Option<&Value>| match v {
                    Some(Value::String(s)) => ip_u128(s),
                    Some(Value::Number(n)) => n.as_u64().map(u128::from),
                    _ => None,
                };
                if let (Some(a), Some(b)) = (bound(r.first()), bound(r.get(1))) {
                    return format!("{a}-{b}");
                }
            }
            if let Some(Value::Array(c)) = o.get("concat") {
                return c.iter().map(component_text).collect::<Vec<_>>().join(" . ");
            }
            if let Some(inner) = o.get("elem").and_then(|e| e.get("val")) {
                return component_text(inner);
            }
            for verdict in ["goto", "jump"] {
                if let Some(t) = o.get(verdict).and_then(|g| g.get("target")).and_then(Value::as_str) {
                    return format!("{verdict} {t}");
                }
            }
            if let Some((k, _)) = o.iter().next() {
                return k.clone(); // accept, drop, ...
            }
            String::new()
        }
        other => other.to_string(),
    }
}

fn elem_text(v: &Value, is_map: bool) -> String {
    match (is_map, v) {
        (true, Value::Array(kv)) if kv.len() == 2 => {
            format!("{} : {}", component_text(&kv[0]), component_text(&kv[1]))
        }
        _ => component_text(v),
    }
}

/// One item of nft's JSON listing: its kind (`table`, `chain`, `set`, ...) and body, left as
/// text until the kind is known, so that a large set is never parsed into one `Value` tree.
#[derive(Deserialize)]
struct Listing<'a> {
    #[serde(borrow)]
    nftables: Vec<BTreeMap<String, &'a RawValue>>,
}

/// The parts of a set or map the model reads; its elements stay text until each is read.
#[derive(Deserialize)]
struct SetBody<'a> {
    family: Option<String>,
    table: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    key: Option<Value>,
    map: Option<Value>,
    flags: Option<Value>,
    #[serde(borrow)]
    elem: Option<Vec<&'a RawValue>>,
}

/// Parses `nft -j list table inet egret` output into the model (`Ok(None)`: no such table).
pub fn parse_table(text: &str) -> Result<Option<Table>, serde_json::Error> {
    let listing: Listing = serde_json::from_str(text)?;
    let mut t = Table::default();
    let mut found = false;
    for item in listing.nftables {
        let Some((kind, body)) = item.into_iter().next() else {
            continue;
        };
        if kind == "set" || kind == "map" {
            let body: SetBody = serde_json::from_str(body.get())?;
            if body.family.as_deref() != Some("inet") || body.table.as_deref() != Some(TABLE) {
                continue;
            }
            let is_map = kind == "map";
            let key = body.key.unwrap_or(Value::Null);
            let flags: Vec<String> = body
                .flags
                .as_ref()
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
                .unwrap_or_default();
            // A timeout set's elements are learned at run time (the DNS proxy's), never part of
            // the plan: they are neither compared nor rewritten by a sync.
            let dynamic = flags.iter().any(|f| f == "timeout");
            let raw_elems = if dynamic { Vec::new() } else { body.elem.unwrap_or_default() };
            let single_interval = !is_map && key.as_str().is_some() && flags.iter().any(|f| f == "interval");
            let elems = if single_interval {
                canonical_interval_set(raw_elems.into_iter().filter_map(|e| {
                    let e = parsed(e);
                    let text = component_text(&e);
                    let (s, e2) = text.split_once('-')?;
                    Some((s.parse().ok()?, e2.parse().ok()?, e))
                }))
            } else {
                raw_elems.into_iter().map(|e| (elem_text(&parsed(e), is_map), e.to_owned())).collect()
            };
            let map = if is_map { body.map } else { None };
            t.sets.insert(body.name.unwrap_or_default(), Set { map, key, flags, elems });
            continue;
        }
        let body = parsed(body);
        let mine = body.get("table").and_then(Value::as_str) == Some(TABLE)
            || (kind == "table" && body.get("name").and_then(Value::as_str) == Some(TABLE));
        if body.get("family").and_then(Value::as_str) != Some("inet") || !mine {
            continue;
        }
        let name = body.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        match kind.as_str() {
            "table" => found = true,
            "chain" => {
                let hook = body.get("hook").map(|h| Hook {
                    kind: body.get("type").and_then(Value::as_str).unwrap_or_default().into(),
                    hook: h.as_str().unwrap_or_default().into(),
                    prio: body.get("prio").and_then(Value::as_i64).unwrap_or_default(),
                    policy: body.get("policy").and_then(Value::as_str).unwrap_or_default().into(),
                });
                t.chains.entry(name).or_insert(Chain { hook: None, rules: vec![] }).hook = hook;
            }
            "rule" => {
                let chain = body.get("chain").and_then(Value::as_str).unwrap_or_default().to_string();
                let mut comment = body.get("comment").and_then(Value::as_str).unwrap_or("(no comment)").to_string();
                // The rule holds the index of a device that is gone (nft then prints the
                // number, not a name): not what Egret wrote any more, so it is replaced.
                if refers_to_gone_interface(&body) {
                    comment.push_str(" (interface gone)");
                }
                // Only comments are compared; nft's re-rendering of the expression is not kept.
                t.chains.entry(chain).or_insert(Chain { hook: None, rules: vec![] }).rules.push((comment, Value::Null));
            }
            "counter" => {
                t.counters.insert(name);
            }
            _ => {}
        }
    }
    Ok(found.then_some(t))
}

/// Whether a rule read back compares `iif`/`oif` with an interface index no device has: nft
/// prints a device's name, or the bare number once the device is gone.
fn refers_to_gone_interface(rule: &Value) -> bool {
    let Some(exprs) = rule.get("expr").and_then(Value::as_array) else { return false };
    exprs.iter().filter_map(|e| e.get("match")).any(|m| {
        let key = m.get("left").and_then(|l| l.get("meta")).and_then(|x| x.get("key")).and_then(Value::as_str);
        let numeric = match m.get("right") {
            Some(Value::Number(_)) => true,
            Some(Value::String(s)) => !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()),
            _ => false,
        };
        matches!(key, Some("iif" | "oif")) && numeric
    })
}

/// The local ids a table read back records: `tunnel_peers` maps each peer's tunnel MAC (which
/// is derived from its underlay address) to `from_node_<id>`. Used to recover ids after a
/// restart.
pub fn ids_in(t: &Table) -> Vec<(Ipv4Addr, u16)> {
    let mut out: Vec<(Ipv4Addr, u16)> = t
        .sets
        .get(MAP_PEERS)
        .into_iter()
        .flat_map(|s| s.elems.keys())
        .filter_map(|k| {
            let (mac, verdict) = k.split_once(" : ")?;
            let id = verdict.strip_prefix("jump from_node_")?.parse().ok()?;
            let bytes: Vec<u8> = mac.split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>().ok()?;
            Some((crate::config::mac_ipv4(bytes.try_into().ok()?)?, id))
        })
        .collect();
    // Egress subnets: `exit_<id>_<gateway>`.
    out.extend(t.chains.keys().filter_map(|c| {
        let (id, gw) = c.strip_prefix("exit_")?.split_once('_')?;
        Some((gw.parse().ok()?, id.parse().ok()?))
    }));
    out
}

/// Canonical texts of the desired elements must match the read-back ones: re-key desired
/// elements through the same canonicaliser (the generator's keys are only for dedup).
pub fn normalise(mut t: Table) -> Table {
    for s in t.sets.values_mut() {
        let is_map = s.map.is_some();
        if !is_map && s.key.as_str().is_some() && s.flags.iter().any(|f| f == "interval") {
            continue; // already canonical ranges
        }
        s.elems = std::mem::take(&mut s.elems).into_values().map(|e| (elem_text(&parsed(&e), is_map), e)).collect();
    }
    t
}

// ---- diff ----

fn obj(kind: &str, mut body: serde_json::Map<String, Value>) -> Value {
    body.insert("family".into(), json!("inet"));
    body.insert("table".into(), json!(TABLE));
    json!({ kind: body })
}

fn named(kind: &str, name: &str) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("name".into(), json!(name));
    obj(kind, m)
}

fn elems_of(s: &Set, texts: &BTreeSet<&String>, keys_only: bool) -> Vec<Elem> {
    let mut out = Vec::new();
    for t in texts {
        let Some(e) = s.elems.get(*t) else { continue };
        if s.map.is_none() && e.get().starts_with('[') {
            // A one-field interval set keeps the JSON elements one canonical range stands for.
            if let Value::Array(list) = parsed(e) {
                out.extend(list.iter().map(raw));
            }
        } else if keys_only && s.map.is_some() {
            match parsed(e) {
                Value::Array(kv) if !kv.is_empty() => out.push(raw(&kv[0])),
                _ => out.push(e.clone()),
            }
        } else {
            out.push(e.clone());
        }
    }
    out
}

/// One command of an nft JSON transaction. Element lists stay text (see [`Elem`]).
#[derive(Debug, Clone)]
pub enum Cmd {
    /// Any command, as JSON.
    Json(Value),
    /// `add` or `delete` elements of a set or map of table `inet egret`.
    Elements {
        /// `add` or `delete`.
        verb: &'static str,
        /// The set or map.
        set: String,
        /// The elements (keys only for a map's `delete`).
        elems: Vec<Elem>,
    },
}

#[derive(Serialize)]
struct ElementBody<'a> {
    family: &'static str,
    table: &'static str,
    name: &'a str,
    elem: &'a [Elem],
}

#[derive(Serialize)]
struct ElementCmd<'a> {
    element: ElementBody<'a>,
}

impl Serialize for Cmd {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        match self {
            Cmd::Json(v) => v.serialize(ser),
            Cmd::Elements { verb, set, elems } => {
                let mut m = ser.serialize_map(Some(1))?;
                let body = ElementBody { family: "inet", table: TABLE, name: set, elem: elems };
                m.serialize_entry(verb, &ElementCmd { element: body })?;
                m.end()
            }
        }
    }
}

fn element_cmd(verb: &'static str, set: &str, elems: Vec<Elem>) -> Cmd {
    Cmd::Elements { verb, set: set.to_string(), elems }
}

/// The commands creating a set or map: its definition, then its elements.
fn set_cmds(name: &str, s: &Set) -> Vec<Cmd> {
    let mut m = serde_json::Map::new();
    m.insert("name".into(), json!(name));
    m.insert("type".into(), s.key.clone());
    if !s.flags.is_empty() {
        m.insert("flags".into(), json!(s.flags));
    }
    let def = match &s.map {
        Some(data) => {
            m.insert("map".into(), data.clone());
            json!({"add": obj("map", m)})
        }
        None => json!({"add": obj("set", m)}),
    };
    let mut out = vec![Cmd::Json(def)];
    let all: BTreeSet<&String> = s.elems.keys().collect();
    let elems = elems_of(s, &all, false);
    if !elems.is_empty() {
        out.push(element_cmd("add", name, elems));
    }
    out
}

fn chain_cmd(name: &str, c: &Chain) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("name".into(), json!(name));
    if let Some(h) = &c.hook {
        m.insert("type".into(), json!(h.kind));
        m.insert("hook".into(), json!(h.hook));
        m.insert("prio".into(), json!(h.prio));
        m.insert("policy".into(), json!(h.policy));
    }
    json!({"add": obj("chain", m)})
}

fn rule_cmds(name: &str, c: &Chain) -> Vec<Value> {
    c.rules
        .iter()
        .map(|(comment, expr)| {
            let mut m = serde_json::Map::new();
            m.insert("chain".into(), json!(name));
            m.insert("comment".into(), json!(comment));
            m.insert("expr".into(), expr.clone());
            json!({"add": obj("rule", m)})
        })
        .collect()
}

fn rule_comments(c: &Chain) -> Vec<&str> {
    c.rules.iter().map(|(c, _)| c.as_str()).collect()
}

/// The differences between two tables, one line each (for reports and drift).
pub fn describe(want: &Table, have: Option<&Table>) -> Vec<String> {
    let empty = Table::default();
    let Some(have) = have else {
        return vec![format!("nft: table inet {TABLE} missing")];
    };
    let _ = &empty;
    let mut out = Vec::new();
    for (n, c) in &want.chains {
        match have.chains.get(n) {
            None => out.push(format!("nft: chain {n} missing")),
            Some(h) if h.hook != c.hook => out.push(format!("nft: chain {n} hook differs")),
            Some(h) if rule_comments(h) != rule_comments(c) => out.push(format!("nft: rules of chain {n} differ")),
            _ => {}
        }
    }
    for n in have.chains.keys().filter(|n| !want.chains.contains_key(*n)) {
        out.push(format!("nft: chain {n} unexpected"));
    }
    for (n, s) in &want.sets {
        match have.sets.get(n) {
            None => out.push(format!("nft: set {n} missing")),
            Some(h) if !h.same_definition(s) => out.push(format!("nft: set {n} definition differs")),
            Some(h) => {
                let missing = s.elems.keys().filter(|k| !h.elems.contains_key(*k)).count();
                let extra = h.elems.keys().filter(|k| !s.elems.contains_key(*k)).count();
                if missing + extra > 0 {
                    out.push(format!("nft: set {n}: {missing} element(s) to add, {extra} to delete"));
                }
            }
        }
    }
    for n in have.sets.keys().filter(|n| !want.sets.contains_key(*n)) {
        out.push(format!("nft: set {n} unexpected"));
    }
    for n in want.counters.difference(&have.counters) {
        out.push(format!("nft: counter {n} missing"));
    }
    for n in have.counters.difference(&want.counters) {
        out.push(format!("nft: counter {n} unexpected"));
    }
    out
}

/// The commands of the single transaction turning `have` into `want` (empty: nothing to do).
/// Existing counters are never deleted while still wanted, so their values survive.
pub fn transaction(want: &Table, have: Option<&Table>) -> Vec<Cmd> {
    let empty = Table::default();
    let fresh = have.is_none();
    let have = have.unwrap_or(&empty);
    if !fresh && describe(want, Some(have)).is_empty() {
        return Vec::new();
    }
    let mut cmds = vec![Cmd::Json(json!({"add": {"table": {"family": "inet", "name": TABLE}}}))];

    let recreate_sets: BTreeSet<&String> = want
        .sets
        .iter()
        .filter(|(n, s)| have.sets.get(*n).is_some_and(|h| !h.same_definition(s)))
        .map(|(n, _)| n)
        .collect();
    let drop_sets: BTreeSet<&String> = have.sets.keys().filter(|n| !want.sets.contains_key(*n)).collect();
    let recreate_chains: BTreeSet<&String> = want
        .chains
        .iter()
        .filter(|(n, c)| have.chains.get(*n).is_some_and(|h| h.hook != c.hook))
        .map(|(n, _)| n)
        .collect();
    let drop_chains: BTreeSet<&String> = have.chains.keys().filter(|n| !want.chains.contains_key(*n)).collect();
    // Rules reference sets by name: when any set is dropped or recreated, re-add every rule.
    let all_rules = !recreate_sets.is_empty() || !drop_sets.is_empty();
    let rewrite_rules: BTreeSet<&String> = want
        .chains
        .iter()
        .filter(|(n, c)| {
            all_rules || have.chains.get(*n).is_none_or(|h| rule_comments(h) != rule_comments(c) || h.hook != c.hook)
        })
        .map(|(n, _)| n)
        .collect();

    // 1. Flush rules that will be rewritten or whose chain goes away.
    for n in have.chains.keys() {
        if (rewrite_rules.contains(n) || drop_chains.contains(n))
            && have.chains.get(n).is_some_and(|c| !c.rules.is_empty())
        {
            cmds.push(Cmd::Json(json!({"flush": named("chain", n)})));
        }
    }
    // 2. Sets that go away or change shape.
    for n in drop_sets.iter().chain(recreate_sets.iter()) {
        let kind = if have.sets.get(*n).is_some_and(|s| s.map.is_some()) { "map" } else { "set" };
        cmds.push(Cmd::Json(json!({"delete": named(kind, n)})));
    }
    // 3. Elements that go away (before the chains and counters they reference).
    let mut adds = Vec::new();
    for (n, s) in &want.sets {
        if recreate_sets.contains(n) {
            adds.extend(set_cmds(n, s));
            continue;
        }
        let Some(h) = have.sets.get(n) else {
            adds.extend(set_cmds(n, s));
            continue;
        };
        let gone: BTreeSet<&String> = h.elems.keys().filter(|k| !s.elems.contains_key(*k)).collect();
        let new: BTreeSet<&String> = s.elems.keys().filter(|k| !h.elems.contains_key(*k)).collect();
        if !gone.is_empty() {
            cmds.push(element_cmd("delete", n, elems_of(h, &gone, true)));
        }
        if !new.is_empty() {
            adds.push(element_cmd("add", n, elems_of(s, &new, false)));
        }
    }
    // 4. Chains and counters that go away.
    for n in drop_chains.iter().chain(recreate_chains.iter()) {
        cmds.push(Cmd::Json(json!({"delete": named("chain", n)})));
    }
    for n in have.counters.difference(&want.counters) {
        cmds.push(Cmd::Json(json!({"delete": named("counter", n)})));
    }
    // 5. New counters, chains, sets and elements, then rules.
    for n in want.counters.difference(&have.counters) {
        cmds.push(Cmd::Json(json!({"add": named("counter", n)})));
    }
    for (n, c) in &want.chains {
        if !have.chains.contains_key(n) || recreate_chains.contains(n) {
            cmds.push(Cmd::Json(chain_cmd(n, c)));
        }
    }
    cmds.extend(adds);
    for (n, c) in &want.chains {
        if rewrite_rules.contains(n) {
            cmds.extend(rule_cmds(n, c).into_iter().map(Cmd::Json));
        }
    }
    cmds
}

/// The nft JSON document (text) of a transaction.
pub fn document(cmds: Vec<Cmd>) -> Result<String, serde_json::Error> {
    #[derive(Serialize)]
    struct Doc {
        nftables: Vec<Cmd>,
    }
    let mut all = vec![Cmd::Json(json!({"metainfo": {"json_schema_version": 1}}))];
    all.extend(cmds);
    serde_json::to_string(&Doc { nftables: all })
}

/// Packets and bytes of one named counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counter {
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted.
    pub bytes: u64,
}

/// Parses `nft -j list counters table inet egret` (values as u64).
pub fn parse_counters(doc: &Value) -> BTreeMap<String, Counter> {
    let mut out = BTreeMap::new();
    for item in doc.get("nftables").and_then(Value::as_array).into_iter().flatten() {
        let Some(c) = item.get("counter") else {
            continue;
        };
        if c.get("table").and_then(Value::as_str) != Some(TABLE)
            || c.get("family").and_then(Value::as_str) != Some("inet")
        {
            continue;
        }
        if let Some(name) = c.get("name").and_then(Value::as_str) {
            out.insert(
                name.to_string(),
                Counter {
                    packets: c.get("packets").and_then(Value::as_u64).unwrap_or(0),
                    bytes: c.get("bytes").and_then(Value::as_u64).unwrap_or(0),
                },
            );
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use egret_core::planner::{Hosted, Peer, Snat, Steer};

    fn plan(pods: u32) -> NodePlan {
        let mut steer = Vec::new();
        for i in 0..pods {
            steer.push(Steer {
                source: IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 1, 0)) + i)),
                destination: "0.0.0.0/0".parse().unwrap(),
                egress: format!("eg-{}", i % 3),
                action: if i % 2 == 0 { SteerAction::Tunnel { gateway: "node-2".into() } } else { SteerAction::Drop },
                egress_ip: (i % 2 == 0).then(|| "10.10.0.11".parse().unwrap()),
            });
        }
        NodePlan {
            node: "node-1".into(),
            node_ips: vec!["10.10.0.101".parse().unwrap()],
            peers: vec![Peer { name: "node-2".into(), ips: vec!["10.10.0.102".parse().unwrap()] }],
            cluster_cidrs: vec![
                "10.244.0.0/16".parse().unwrap(),
                "10.96.0.0/12".parse().unwrap(),
                "fd00::/64".parse().unwrap(),
            ],
            egresses: vec!["eg-0".into(), "eg-1".into(), "eg-2".into()],
            steer,
            snat: vec![Snat {
                source: "10.244.2.10".parse().unwrap(),
                destination: "203.0.113.0/24".parse().unwrap(),
                egress: "eg-9".into(),
                egress_ip: "10.10.0.11".parse().unwrap(),
            }],
            hosted: vec![Hosted { ip: "10.10.0.11".parse().unwrap(), egresses: vec!["eg-9".into()], subnet: None }],
            ..NodePlan::default()
        }
    }

    /// node-2 (10.10.0.102) has local id 7.
    fn ids() -> PeerIds {
        PeerIds::recovered([(Ipv4Addr::new(10, 10, 0, 102), 7)])
    }

    fn json_of(cmds: &[Cmd]) -> Vec<Value> {
        cmds.iter().map(|c| serde_json::to_value(c).unwrap()).collect()
    }

    fn rule_count(t: &Table) -> usize {
        t.chains.values().map(|c| c.rules.len()).sum()
    }

    #[test]
    fn rules_do_not_grow_with_pods_or_egresses() {
        let cfg = Config::default();
        let (small, _) = desired(&cfg, &plan(1), &ids(), &Default::default());
        let (big, _) = desired(&cfg, &plan(5000), &ids(), &Default::default());
        assert_eq!(rule_count(&small), rule_count(&big));
        assert_eq!(big.sets[MAP_STEER4].elems.len(), 5000);
        assert_eq!(big.sets[SET_SOURCES4].elems.len(), 5000, "every steered source, once");
        assert_eq!(big.sets[MAP_COUNTERS4].elems.len(), 5001);
        assert!(big.counters.contains("eg-2") && big.counters.contains("eg-9"));
    }

    #[test]
    fn new_connections_of_a_source_with_one_egress_and_ip_are_counted_and_snated_by_source() {
        let mut p = plan(0);
        let snat = |src: &str, dst: &str, egress: &str, ip: &str| Snat {
            source: src.parse().unwrap(),
            destination: dst.parse().unwrap(),
            egress: egress.into(),
            egress_ip: ip.parse().unwrap(),
        };
        // 10.244.2.10: eg-9 to two blocks, one IP. 10.244.2.11: two Egresses, two IPs.
        p.snat.push(snat("10.244.2.10", "198.51.100.0/24", "eg-9", "10.10.0.11"));
        p.snat.push(snat("10.244.2.11", "203.0.113.0/24", "eg-9", "10.10.0.11"));
        p.snat.push(snat("10.244.2.11", "198.51.100.0/24", "eg-8", "10.10.0.12"));
        let (t, _) = desired(&Config::default(), &p, &ids(), &Default::default());
        let keys = |m: &str| t.sets[m].elems.values().map(|e| e.get().to_string()).collect::<Vec<_>>();
        assert_eq!(keys(MAP_SNAT_SRC4), vec![r#"["10.244.2.10","10.10.0.11"]"#]);
        assert_eq!(keys(MAP_CONNS_SRC4), vec![r#"["10.244.2.10","conns_eg-9"]"#]);
        // Counted by source from its first packet through the tunnel only where SNATed by
        // source: never for the source with two Egresses.
        assert_eq!(keys(MAP_COUNTERS_SRC4), vec![r#"["10.244.2.10","eg-9"]"#]);
        assert_eq!(t.sets[MAP_SNAT4].elems.len(), 4, "the pair maps keep every entry");
        // The by-source rule comes before the pair rules, for Egret's flows only.
        let post: Vec<String> = t.chains["postrouting_nat"].rules.iter().map(|(_, e)| e.to_string()).collect();
        let by_src = post.iter().position(|r| r.contains(MAP_SNAT_SRC4)).unwrap();
        let by_pair = post.iter().position(|r| r.contains(MAP_CONNS4)).unwrap();
        assert!(by_src < by_pair && post[by_src].contains(MAP_CONNS_SRC4) && post[by_src].contains("\"ct\""));
    }

    #[test]
    fn a_source_with_one_egress_but_two_ips_here_is_not_counted_by_source() {
        let mut p = plan(0);
        for (dst, ip) in [("203.0.113.0/24", "10.10.0.11"), ("198.51.100.0/24", "10.10.0.12")] {
            p.snat.push(Snat {
                source: "10.244.2.12".parse().unwrap(),
                destination: dst.parse().unwrap(),
                egress: "eg-9".into(),
                egress_ip: ip.parse().unwrap(),
            });
        }
        let (t, _) = desired(&Config::default(), &p, &ids(), &Default::default());
        let has = |m: &str| t.sets[m].elems.values().any(|e| e.get().contains("10.244.2.12"));
        assert!(!has(MAP_SNAT_SRC4) && !has(MAP_CONNS_SRC4) && !has(MAP_COUNTERS_SRC4));
        assert!(has(MAP_COUNTERS4) && has(MAP_SNAT4));
    }

    #[test]
    fn replies_are_never_classified_but_unsteered_sources_leave_first() {
        let (t, _) = desired(&Config::default(), &plan(1), &ids(), &Default::default());
        let rules: Vec<String> = t.chains[CHAIN_CLASSIFY].rules.iter().map(|(_, e)| e.to_string()).collect();
        let reply = rules.iter().position(|r| r.contains("\"direction\"") && r.contains("\"reply\"")).unwrap();
        assert_eq!(reply, 1, "right after the IPv4 source test: {rules:#?}");
        assert!(rules[0].contains(SET_SOURCES4) && rules[reply].contains("return"));
        // Before any counting or steering of either family.
        assert!(rules.iter().skip(reply).any(|r| r.contains(MAP_STEER6)));
        assert!(rules.iter().take(reply).all(|r| !r.contains(MAP_STEER4) && !r.contains(MAP_COUNTERS4)));
    }

    #[test]
    fn steering_entries_map_to_tunnel_chains_drop_and_snat() {
        let cfg = Config::default();
        let (t, skipped) = desired(&cfg, &plan(2), &ids(), &Default::default());
        assert!(skipped.is_empty(), "the IPv6 cluster CIDR is the firewall's, not skipped: {skipped:?}");
        let t = normalise(t);
        let steer: Vec<&String> = t.sets[MAP_STEER4].elems.keys().collect();
        assert_eq!(
            steer,
            vec!["183763200-183763200 . 0-4294967295 : goto to_node_7", "183763201-183763201 . 0-4294967295 : drop",]
        );
        let snat: Vec<&String> = t.sets[MAP_SNAT4].elems.keys().collect();
        assert_eq!(snat, vec!["183763466-183763466 . 3405803776-3405804031 : 168427531-168427531"]);
        // The tunnel chain sets only Egret's bits.
        let (_, expr) = &t.chains[&tunnel_chain(7)].rules[0];
        let m = cfg.mark(7);
        assert_eq!(expr[0]["mangle"]["value"], json!({"|": [{"&": [meta("mark"), !cfg.mark_mask()]}, m]}));
        let restore: Vec<String> = t.sets[MAP_RESTORE].elems.keys().cloned().collect();
        let local = cfg.mark(egret_core::ids::LOCAL_ID);
        assert_eq!(restore, vec![format!("{local}-{local} : accept"), format!("{m}-{m} : goto mark_7")]);
        assert_eq!(ids_in(&t), vec![(Ipv4Addr::new(10, 10, 0, 102), 7)], "ids are recoverable");
        assert_eq!(t.sets[MAP_PEERS].elems.keys().next().unwrap(), "0e:67:0a:0a:00:66 : jump from_node_7");
        // SNAT runs before a CNI masquerade at srcnat (100).
        assert_eq!(t.chains["postrouting_nat"].hook.as_ref().unwrap().prio, 90);
        // Restored packets only get the packet mark: their conntrack mark already names the peer.
        assert!(t.sets[MAP_RESTORE].elems.contains_key(&format!("{m}-{m} : goto mark_7")));
        // Egret's bits are cleared after routing, in forward: no postrouting filter hook.
        assert!(
            !t.chains.values().any(|c| c.hook.as_ref().is_some_and(|h| h.hook == "postrouting" && h.kind == "filter"))
        );
    }

    #[test]
    fn ipv6_entries_go_to_the_ipv6_maps_and_rules_read_their_family() {
        let cfg = Config::default();
        let mut p = plan(1);
        p.steer.push(Steer {
            source: "fd00:10:244:1::10".parse().unwrap(),
            destination: "2001:db8::/32".parse().unwrap(),
            egress: "eg-6".into(),
            action: SteerAction::Tunnel { gateway: "node-2".into() },
            egress_ip: Some("fd00:10:10::e1".parse().unwrap()),
        });
        p.snat.push(Snat {
            source: "fd00:10:244:2::10".parse().unwrap(),
            destination: "::/0".parse().unwrap(),
            egress: "eg-6".into(),
            egress_ip: "fd00:10:10::e1".parse().unwrap(),
        });
        let (t, skipped) = desired(&cfg, &p, &ids(), &Default::default());
        assert!(skipped.is_empty(), "{skipped:?}");
        let t = normalise(t);
        assert_eq!(t.sets[MAP_STEER4].elems.len(), 1);
        let steer6: Vec<&String> = t.sets[MAP_STEER6].elems.keys().collect();
        assert_eq!(steer6.len(), 1);
        assert!(steer6[0].ends_with(": goto to_node_7"), "{steer6:?}");
        assert_eq!(t.sets[MAP_SNAT6].elems.len(), 1);
        assert_eq!(t.sets[SET_SOURCES6].elems.len(), 1);
        assert_eq!(t.sets[SET_CLUSTER6].elems.len(), 1, "fd00::/64");
        assert_eq!(t.sets[SET_CLUSTER6].key, json!("ipv6_addr"));
        // Each family's SNAT rule reads its own fields.
        let nat: Vec<String> = t.chains["postrouting_nat"].rules.iter().map(|(_, e)| e.to_string()).collect();
        assert!(nat.iter().any(|r| r.contains("@snat6") && r.contains(r#""family":"ip6""#)), "{nat:?}");
        assert!(nat.iter().any(|r| r.contains("@snat4") && r.contains(r#""family":"ip""#)), "{nat:?}");
    }

    #[test]
    fn an_interface_exit_marks_its_traffic_for_its_route_and_fails_closed_unresolved() {
        let cfg = Config::default();
        let mut p = plan(0);
        // The gateway's SNAT to an interface's address, from a tunnelled pod and a local one.
        let ip: IpAddr = "198.18.0.14".parse().unwrap();
        p.snat[0].egress_ip = ip;
        p.steer.push(Steer {
            source: "10.244.1.10".parse().unwrap(),
            destination: "0.0.0.0/0".parse().unwrap(),
            egress: "eg-9".into(),
            action: SteerAction::Local,
            egress_ip: Some(ip),
        });
        p.interface_exits = vec![egret_core::planner::InterfaceExit { ip, interface: "eth1".into() }];
        let hop = Ipv4Addr::new(198, 18, 0, 1);
        let mut exits = crate::link::Exits::default();
        exits.via.insert(ip, (7, hop));
        let ids = PeerIds::recovered([(Ipv4Addr::new(10, 10, 0, 102), 7), (hop, 3)]);
        let (t, skipped) = desired(&cfg, &p, &ids, &exits);
        assert!(skipped.is_empty(), "{skipped:?}");
        let t = normalise(t);
        let c = exit_chain(3, hop);
        assert!(t.chains.contains_key(&c));
        assert!(t.sets[MAP_STEER4].elems.keys().any(|k| k.ends_with(&format!(": goto {c}"))));
        assert!(t.sets[MAP_EXIT4].elems.keys().all(|k| k.ends_with(&format!(": jump {c}"))));
        assert_eq!(t.sets[MAP_EXIT4].elems.len(), 1);
        assert!(ids_in(&t).contains(&(hop, 3)), "the exit's id is recoverable");
        // No way out by the interface: dropped, never routed another way.
        let mut none = crate::link::Exits::default();
        none.unresolved.insert(ip, "interface eth1 does not exist".into());
        let (t, skipped) = desired(&cfg, &p, &ids, &none);
        assert!(skipped.iter().any(|s| s.why.contains("eth1 does not exist")), "{skipped:?}");
        let t = normalise(t);
        assert!(t.sets[MAP_STEER4].elems.keys().any(|k| k.ends_with(": goto no_exit")));
        assert!(t.sets[MAP_EXIT4].elems.keys().all(|k| k.ends_with(": jump no_exit")));
        assert_eq!(t.chains[CHAIN_NO_EXIT].rules[0].1, json!([{"drop": null}]));
    }

    #[test]
    fn a_bandwidth_limit_is_one_chain_per_egress_and_rules_only_where_needed() {
        let cfg = Config::default();
        let (without, _) = desired(&cfg, &plan(2), &ids(), &Default::default());
        let mut p = plan(2);
        p.bandwidth
            .insert("eg-9".into(), egret_core::model::Bandwidth { rate_bps: 100_000_000, burst_bits: 200_000_000 });
        let (with, _) = desired(&cfg, &p, &ids(), &Default::default());
        assert_eq!(without.chains["forward"].rules.len(), 1, "no lookup without a limit");
        assert_eq!(with.chains["forward"].rules.len(), 3, "one lookup per family");
        let (_, expr) = &with.chains[&bandwidth_chain("eg-9")].rules[0];
        assert_eq!(expr[0]["limit"]["rate"], json!(12_500_000));
        assert_eq!(expr[0]["limit"]["burst"], json!(25_000_000));
        assert_eq!(expr[0]["limit"]["inv"], json!(true));
        let with = normalise(with);
        let bw: Vec<&String> = with.sets[MAP_BANDWIDTH4].elems.keys().collect();
        assert_eq!(bw, vec!["183763466-183763466 . 3405803776-3405804031 : jump bw_eg-9"]);
    }

    #[test]
    fn dropped_traffic_counts_on_its_own_counter_per_reason() {
        let cfg = Config::default();
        let (t, _) = desired(&cfg, &plan(2), &ids(), &Default::default());
        let t = normalise(t);
        // Pod .0 is steered (its Egress's counter), pod .1 has no gateway (a drop counter).
        let counters: Vec<&String> = t.sets[MAP_COUNTERS4].elems.keys().collect();
        assert!(counters.contains(&&"183763200-183763200 . 0-4294967295 : eg-0".to_string()), "{counters:?}");
        assert!(counters.contains(&&"183763201-183763201 . 0-4294967295 : dropped_nogateway_eg-1".to_string()));
        assert!(t.counters.contains("dropped_nogateway_eg-1") && t.counters.contains("dropped_nosnat"));
        // Established flows are counted by source only where the source has one Egress counter
        // here; a source with a drop counter is never (it has no established steered flows).
        let by_source: Vec<&String> = t.sets[MAP_COUNTERS_SRC4].elems.keys().collect();
        assert!(by_source.iter().any(|k| k.contains("eg-0")), "{by_source:?}");
        assert!(!by_source.iter().any(|k| k.contains("eg-1")), "{by_source:?}");
        // The gateway's fail-closed drop counts before it drops.
        let nat = t.chains["postrouting_nat"].rules.last().unwrap().1.to_string();
        assert!(nat.contains("{\"counter\":\"dropped_nosnat\"},{\"drop\":null}"), "{nat}");
        // Without the tunnel: the reason says so.
        let mut p = plan(1);
        p.peers.clear();
        let (t, _) = desired(&cfg, &p, &ids(), &Default::default());
        assert!(t.counters.contains(&dropped_counter("eg-0", DropReason::NoTunnel)), "{:?}", t.counters);
        assert!(!t.counters.iter().any(|c| c.starts_with("dropped_nogateway")));
    }

    #[test]
    fn counter_names_read_back_to_what_they_count() {
        for reason in DropReason::ALL {
            for egress in ["", "eg-1", "a.b-c"] {
                let name = dropped_counter(egress, reason);
                assert_eq!(counter_kind(&name), Some(CounterKind::Dropped(egress, reason)), "{name}");
            }
        }
        assert_eq!(counter_kind(&conns_counter("eg-1")), Some(CounterKind::Connections("eg-1")));
        assert_eq!(counter_kind("eg-1"), Some(CounterKind::Egress("eg-1")));
        assert_eq!(counter_kind("fw_0123456789ab"), None);
        assert_eq!(counter_kind("dropped_other_eg-1"), None);
    }

    #[test]
    fn tunnel_to_unknown_gateway_fails_closed() {
        let cfg = Config::default();
        let mut p = plan(1);
        p.peers.clear();
        let (t, skipped) = desired(&cfg, &p, &ids(), &Default::default());
        let t = normalise(t);
        assert!(t.sets[MAP_STEER4].elems.keys().all(|k| k.ends_with(": drop")));
        assert!(skipped.iter().any(|s| s.why.contains("dropped") && s.egress.as_deref() == Some("eg-0")));
    }

    #[test]
    fn transaction_touches_only_differences() {
        let cfg = Config::default();
        let want = normalise(desired(&cfg, &plan(10), &ids(), &Default::default()).0);
        // Fresh: everything in one transaction.
        let all = transaction(&want, None);
        assert!(all.len() > 10);
        // Equal: nothing.
        assert!(transaction(&want, Some(&want)).is_empty());
        // One pod fewer: one element deletion per map, no flush, no counter touched.
        let have = want.clone();
        let want2 = normalise(desired(&cfg, &plan(9), &ids(), &Default::default()).0);
        let cmds = json_of(&transaction(&want2, Some(&have)));
        let text = serde_json::to_string(&cmds).unwrap();
        assert!(!text.contains("flush") && !text.contains("\"counter\":{\"family"), "{text}");
        assert_eq!(cmds.iter().filter(|c| c.get("delete").is_some()).count(), 3, "steer4, counters4, sources4: {text}");
        // An Egress gone: its counter is deleted after the elements that use it.
        let mut p = plan(10);
        p.egresses.retain(|e| e != "eg-0");
        p.steer.retain(|s| s.egress != "eg-0");
        let cmds = json_of(&transaction(&normalise(desired(&cfg, &p, &ids(), &Default::default()).0), Some(&have)));
        let pos = |needle: &str| cmds.iter().position(|c| c.to_string().contains(needle)).unwrap_or(usize::MAX);
        assert!(pos("\"element\"") < pos("\"counter\""), "{cmds:?}");
    }

    #[test]
    fn read_back_parses_into_the_same_model() {
        let cfg = Config::default();
        let want = normalise(desired(&cfg, &plan(3), &ids(), &Default::default()).0);
        // What nft 1.0.6 prints for such a table (abridged to the parts the model reads).
        let doc = json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "egret", "handle": 1}},
            {"set": {"family": "inet", "table": "egret", "name": "cluster4", "type": "ipv4_addr",
                "flags": ["interval"], "elem": [
                    {"prefix": {"addr": "10.96.0.0", "len": 12}},
                    {"range": ["10.244.0.0", "10.244.127.255"]},
                    {"prefix": {"addr": "10.244.128.0", "len": 17}}]}},
            {"map": {"family": "inet", "table": "egret", "name": "steer4",
                "type": ["ipv4_addr", "ipv4_addr"], "map": "verdict", "flags": ["interval"],
                "elem": [[{"concat": ["10.244.1.0", {"prefix": {"addr": "0.0.0.0", "len": 0}}]},
                          {"goto": {"target": "to_node_7"}}]]}},
            {"counter": {"family": "inet", "table": "egret", "name": "eg-0", "packets": 5_000_000_000u64, "bytes": 1}},
            {"counter": {"family": "inet", "table": "other", "name": "x", "packets": 1, "bytes": 1}},
        ]});
        let have = parse_table(&doc.to_string()).unwrap().unwrap();
        assert_eq!(
            have.sets[SET_CLUSTER4].elems.keys().collect::<Vec<_>>(),
            want.sets[SET_CLUSTER4].elems.keys().collect::<Vec<_>>(),
            "adjacent ranges merge"
        );
        assert!(have.sets[MAP_STEER4].elems.keys().all(|k| want.sets[MAP_STEER4].elems.contains_key(k)));
        assert!(parse_table(r#"{"nftables": []}"#).unwrap().is_none());
        assert!(parse_table("not json").is_err());
        let counters = parse_counters(&doc);
        assert_eq!(counters.len(), 1);
        assert_eq!(counters["eg-0"].packets, 5_000_000_000, "u64, not u32");
    }

    #[test]
    fn a_rule_left_with_the_index_of_a_gone_device_reads_as_changed() {
        let rule = |right: Value| {
            json!({"nftables": [
                {"table": {"family": "inet", "name": "egret"}},
                {"rule": {"family": "inet", "table": "egret", "chain": "forward", "comment": "egret:1",
                    "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oif"}}, "right": right}},
                             {"goto": {"target": "into_tunnel"}}]}},
            ]})
            .to_string()
        };
        let comment = |doc: String| parse_table(&doc).unwrap().unwrap().chains["forward"].rules[0].0.clone();
        assert_eq!(comment(rule(json!("egret-vxlan"))), "egret:1", "a live device: as written");
        assert_eq!(comment(rule(json!("17"))), "egret:1 (interface gone)");
        assert_eq!(comment(rule(json!(17))), "egret:1 (interface gone)");
    }
}
