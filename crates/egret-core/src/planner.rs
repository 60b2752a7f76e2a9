//! The planner: objects + live nodes -> what the cluster does and what every node's datapath
//! must hold.
//!
//! Overlap rule (documented in docs/api.md): when several Egresses select a pod for a
//! destination, the entry with the longest matching prefix wins, where an Egress's
//! `excludedCIDRs` compete as "not steered" entries; ties go to the oldest Egress, then to the
//! name that sorts first. Cluster-internal destinations are never steered: they are listed in
//! [`Plan::cluster_cidrs`] and the datapath checks them before any rule.

use crate::ipam::Allocations;
use crate::model::{Egress, FailurePolicy, Namespace, Node, Pod, Pool};
use crate::net::{Family, Span, SpanSet, from_u128};
use crate::placement::{self, Request};
use crate::selector::Labels;
use ipnet::IpNet;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

/// Cluster-wide settings the objects do not carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Service CIDRs (never steered).
    pub service_cidrs: Vec<IpNet>,
    /// Further cluster-internal CIDRs, e.g. the whole pod network when Nodes lack `podCIDRs`.
    pub internal_cidrs: Vec<IpNet>,
    /// Addresses no pool may hold that no object names, e.g. the node network's router.
    pub reserved: Vec<IpAddr>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            service_cidrs: vec![IpNet::V4(ipnet::Ipv4Net::new_assert([10, 96, 0, 0].into(), 12))],
            internal_cidrs: Vec::new(),
            reserved: Vec::new(),
        }
    }
}

/// Everything the planner looks at.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// Valid pools.
    pub pools: &'a BTreeMap<String, Pool>,
    /// Valid Egresses.
    pub egresses: &'a BTreeMap<String, Egress>,
    /// Allocated egress IPs.
    pub allocations: &'a Allocations,
    /// Nodes.
    pub nodes: &'a [Node],
    /// Namespaces.
    pub namespaces: &'a [Namespace],
    /// Pods.
    pub pods: &'a [Pod],
    /// Names of the nodes that may host egress IPs: alive and eligible (settled after joining,
    /// datapath in sync). Only the placement of egress IPs looks at it; pods are steered
    /// whichever node they run on.
    pub live: &'a BTreeSet<String>,
    /// Cluster settings.
    pub config: &'a ClusterConfig,
}

/// A condition of an Egress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Condition {
    /// `IPAllocated` or `IPAssigned`.
    #[serde(rename = "type")]
    pub type_: &'static str,
    /// `True` or `False`.
    pub status: &'static str,
    /// CamelCase reason.
    pub reason: &'static str,
    /// Explanation.
    pub message: String,
}

/// One egress IP of an Egress and where it lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IpOutcome {
    /// The address.
    #[serde(rename = "egressIP")]
    pub ip: IpAddr,
    /// The gateway node hosting it.
    #[serde(rename = "egressNode")]
    pub node: Option<String>,
    /// Whether it came from a pool (and so must be hosted on the gateway's dummy device).
    #[serde(skip)]
    pub from_pool: bool,
    /// The egress subnet of its pool.
    #[serde(skip)]
    pub subnet: Option<crate::model::Subnet>,
    /// The gateway's interface it is the address of (`gatewayNodes[].interface`), which its
    /// traffic leaves by.
    #[serde(skip)]
    pub interface: Option<String>,
}

/// What happens to one Egress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressOutcome {
    /// Egress name.
    pub name: String,
    /// The egress IPs it has, in spec order, each with its gateway.
    pub ips: Vec<IpOutcome>,
    /// `IPAllocated` and `IPAssigned`.
    pub conditions: Vec<Condition>,
    /// Its bandwidth limit, enforced on each gateway.
    pub bandwidth: Option<crate::model::Bandwidth>,
    /// The spec field listing its IPs (see [`Egress::ips_field`]), for messages.
    pub ips_field: &'static str,
}

/// Shown as its status is: `egressIP` and `egressNode` of the first IP, and every IP under
/// `egressIPs` when there are several.
impl Serialize for EgressOutcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Shown<'a> {
            name: &'a str,
            #[serde(rename = "egressIP")]
            egress_ip: Option<IpAddr>,
            #[serde(rename = "egressNode")]
            egress_node: Option<&'a str>,
            #[serde(rename = "egressIPs", skip_serializing_if = "Option::is_none")]
            ips: Option<&'a [IpOutcome]>,
            conditions: &'a [Condition],
        }
        Shown {
            name: &self.name,
            egress_ip: self.egress_ip(),
            egress_node: self.egress_node(),
            ips: (self.ips.len() > 1).then_some(self.ips.as_slice()),
            conditions: &self.conditions,
        }
        .serialize(s)
    }
}

impl EgressOutcome {
    /// Its first egress IP (what `status.egressIP` shows).
    pub fn egress_ip(&self) -> Option<IpAddr> {
        self.ips.first().map(|i| i.ip)
    }

    /// The gateway of its first egress IP (what `status.egressNode` shows).
    pub fn egress_node(&self) -> Option<&str> {
        self.ips.first().and_then(|i| i.node.as_deref())
    }

    /// Whether `node` hosts any of its IPs.
    pub fn served_by(&self, node: &str) -> bool {
        self.ips.iter().any(|i| i.node.as_deref() == Some(node))
    }

    /// The share of its bandwidth limit that gateway `node` enforces: the limit is the whole
    /// Egress's, so with its IPs on several gateways each holds the part of its own IPs
    /// (rate and burst times the IPs it hosts over the IPs with a gateway). `None` without a
    /// limit or when `node` hosts none of its IPs.
    pub fn bandwidth_on(&self, node: &str) -> Option<crate::model::Bandwidth> {
        let bw = self.bandwidth?;
        let placed = self.ips.iter().filter(|i| i.node.is_some()).count() as u128;
        let here = self.ips.iter().filter(|i| i.node.as_deref() == Some(node)).count() as u128;
        if here == 0 {
            return None;
        }
        // u128: rate times a count never overflows; at least 1, as a zero limit means none.
        let part = |v: u64| u64::try_from(u128::from(v) * here / placed).unwrap_or(v).max(1);
        Some(crate::model::Bandwidth { rate_bps: part(bw.rate_bps), burst_bits: part(bw.burst_bits) })
    }

    /// What `IPAssigned` adds when its pool IPs have fewer gateways than IPs (fewer live
    /// eligible nodes than IPs): `None` while each is on a node of its own.
    pub fn sharing_note(&self) -> Option<String> {
        let hosts: Vec<&str> = self.ips.iter().filter(|i| i.from_pool).filter_map(|i| i.node.as_deref()).collect();
        let distinct: BTreeSet<&str> = hosts.iter().copied().collect();
        (distinct.len() < hosts.len()).then(|| {
            format!(
                "{}: {} egress IPs share {} gateways: fewer live eligible nodes than egress IPs, so some share a gateway",
                self.ips_field,
                hosts.len(),
                distinct.len()
            )
        })
    }
}

/// What a pod address uses: its egress IP and gateway (`None`: dropped or not steered).
pub type Chosen = (Option<IpAddr>, Option<Arc<str>>);

/// The egress IPs of one Egress and one family that its pods choose from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Choices {
    /// Those with a gateway, in spec order.
    pub live: Vec<(IpAddr, Arc<str>)>,
    /// All of them, in spec order.
    pub all: Vec<IpAddr>,
}

impl Choices {
    /// The IPs of `outcome` of `family`.
    pub fn of(outcome: Option<&EgressOutcome>, family: Family) -> Choices {
        let mut c = Choices::default();
        for i in outcome.into_iter().flat_map(|o| &o.ips).filter(|i| Family::of(&i.ip) == family) {
            c.all.push(i.ip);
            if let Some(n) = &i.node {
                c.live.push((i.ip, Arc::from(n.as_str())));
            }
        }
        c
    }

    /// What traffic from the pod address `source` uses: one of the IPs with a gateway, by a
    /// stable hash of the address, so a pod keeps its IP while that IP has a gateway; with
    /// none, the IP it would use, and no gateway (dropped, or not steered); `None` without IPs.
    pub fn choose(&self, source: &IpAddr) -> Chosen {
        if let Some(i) = placement::pick(source, &self.live, |c| c.0) {
            let (ip, node) = &self.live[i];
            return (Some(*ip), Some(node.clone()));
        }
        (placement::pick(source, &self.all, |ip| *ip).map(|i| self.all[i]), None)
    }
}

/// Use of one pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolOutcome {
    /// Pool name.
    pub name: String,
    /// Addresses it can hand out.
    pub total: u128,
    /// Addresses allocated.
    pub used: u128,
}

/// One steering decision: traffic from `source_ip` to `destination` leaves as `egress_ip`
/// through `gateway` (`None`: dropped, the Egress has no gateway and fails closed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// Pod address.
    #[serde(rename = "sourceIP")]
    pub source_ip: IpAddr,
    /// Destination block (disjoint from every other block of the same source).
    #[serde(rename = "destinationCIDR")]
    pub destination: IpNet,
    /// The Egress deciding it.
    pub egress: Arc<str>,
    /// The source IP seen outside.
    #[serde(rename = "egressIP")]
    pub egress_ip: Option<IpAddr>,
    /// Gateway node; `None` means dropped.
    #[serde(rename = "gatewayNode")]
    pub gateway: Option<Arc<str>>,
    /// The node the pod runs on.
    #[serde(skip)]
    pub source_node: Option<Arc<str>>,
}

/// Something in the inputs the plan had to work around (the inputs are still planned).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Warning {
    /// The object, e.g. `Pod/prod/web-1`.
    pub object: String,
    /// Field path, e.g. `status.podIPs`.
    pub field: String,
    /// What happened and why.
    pub reason: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.field, self.reason)
    }
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Plan {
    /// Per Egress, by name.
    pub egresses: Vec<EgressOutcome>,
    /// Per pool, by name.
    pub pools: Vec<PoolOutcome>,
    /// Steering rules, by source then destination.
    pub rules: Vec<Rule>,
    /// Destinations never steered: pod CIDRs, service CIDRs, node addresses.
    #[serde(rename = "clusterCIDRs")]
    pub cluster_cidrs: Vec<IpNet>,
    /// Every node's underlay addresses (its tunnel endpoint and identity), by node name.
    #[serde(skip)]
    pub node_ips: BTreeMap<String, Vec<IpAddr>>,
    /// Problems worked around, e.g. two pods with one address.
    pub warnings: Vec<Warning>,
}

/// What a node does with a steered flow of one of its pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action")]
pub enum SteerAction {
    /// This node is the gateway: no tunnel, just SNAT on the way out.
    Local,
    /// Send through the tunnel to the gateway (one of the node's [`NodePlan::peers`]).
    Tunnel {
        /// Gateway node.
        gateway: String,
    },
    /// No gateway: drop (fail closed).
    Drop,
}

/// Steering of one local pod's traffic to one destination block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Steer {
    /// Pod address.
    pub source: IpAddr,
    /// Destination block.
    pub destination: IpNet,
    /// Egress name.
    pub egress: String,
    /// What to do.
    #[serde(flatten)]
    pub action: SteerAction,
    /// The source address the traffic leaves with (`None`: dropped). A move of the same IP to
    /// another gateway keeps it; an Egress edit that gives the flow another IP changes it.
    #[serde(rename = "egressIP")]
    pub egress_ip: Option<IpAddr>,
}

/// SNAT on the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snat {
    /// Pod address (of any node).
    pub source: IpAddr,
    /// Destination block.
    pub destination: IpNet,
    /// Egress name.
    pub egress: String,
    /// Address to rewrite the source to.
    pub egress_ip: IpAddr,
}

/// A node this node exchanges tunnelled traffic with. Its underlay IPv4 address is its
/// identity in the datapath (tunnel MAC and address derive from it); the mark and routing
/// table used for it are allocated by the datapath of each node (see [`crate::ids`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Peer {
    /// Node name.
    pub name: String,
    /// Underlay addresses.
    pub ips: Vec<IpAddr>,
}

/// An egress IP this node must host (hold on its dummy device and announce).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hosted {
    /// The address.
    pub ip: IpAddr,
    /// The Egresses using it.
    pub egresses: Vec<String>,
    /// The egress subnet it leaves on (its pool's `subnetInfo`); `None`: the node network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet: Option<crate::model::Subnet>,
}

/// An egress IP that is the address of one of the gateway's interfaces.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct InterfaceExit {
    /// The address.
    pub ip: IpAddr,
    /// The interface (its name on the node).
    pub interface: String,
}

/// What one node's datapath must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct NodePlan {
    /// Node name.
    pub node: String,
    /// This node's underlay addresses.
    pub node_ips: Vec<IpAddr>,
    /// The nodes this node needs a tunnel to, by name: gateways of its pods' steered traffic,
    /// and, as a gateway, the nodes whose pods it SNATs (replies go back to them).
    pub peers: Vec<Peer>,
    /// Never steered.
    pub cluster_cidrs: Vec<IpNet>,
    /// Egresses with traffic on this node, by name (for per-Egress counters).
    pub egresses: Vec<String>,
    /// Steering of local pods.
    pub steer: Vec<Steer>,
    /// SNAT done here as a gateway.
    pub snat: Vec<Snat>,
    /// Egress IPs hosted here.
    pub hosted: Vec<Hosted>,
    /// Egress IPs that are addresses of this node's interfaces (`gatewayNodes[].interface`):
    /// what is SNATed to one leaves through its interface.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interface_exits: Vec<InterfaceExit>,
    /// Bandwidth limits of the Egresses whose traffic this node SNATs (it is their gateway).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub bandwidth: BTreeMap<String, crate::model::Bandwidth>,
    /// The egress firewall for this node's pods.
    #[serde(skip_serializing_if = "crate::policy::Firewall::is_empty")]
    pub firewall: crate::policy::Firewall,
}

impl NodePlan {
    /// The Egresses this node knows to use `ip` (hosted here, steered to it or SNATed to it),
    /// sorted, comma-separated; empty when none (log fields).
    pub fn egresses_of_ip(&self, ip: IpAddr) -> String {
        let mut names: BTreeSet<&str> = BTreeSet::new();
        names.extend(self.hosted.iter().filter(|h| h.ip == ip).flat_map(|h| h.egresses.iter().map(String::as_str)));
        names.extend(self.steer.iter().filter(|s| s.egress_ip == Some(ip)).map(|s| s.egress.as_str()));
        names.extend(self.snat.iter().filter(|s| s.egress_ip == ip).map(|s| s.egress.as_str()));
        names.into_iter().collect::<Vec<_>>().join(",")
    }
}

fn cond(type_: &'static str, ok: bool, reason: &'static str, message: String) -> Condition {
    Condition { type_, status: if ok { "True" } else { "False" }, reason, message }
}

/// Where each Egress's IPs live, and its conditions.
pub(crate) fn gateways(inp: &Inputs) -> BTreeMap<String, EgressOutcome> {
    gateways_with(inp, placement::place)
}

/// Whether `n` has an address of `ip`'s family (a node listing no address at all is taken at
/// its word: nothing to check against).
fn has_family(n: &Node, ip: IpAddr) -> bool {
    let mut all = n.internal_ips.iter().chain(&n.addresses).peekable();
    all.peek().is_none() || all.any(|a| Family::of(a) == Family::of(&ip))
}

/// The conditions of one egress IP: `(IPAllocated, IPAssigned)`.
fn ip_conditions(
    inp: &Inputs,
    live_nodes: &[&Node],
    spec: &crate::model::IpSpec,
    alloc: &Result<crate::ipam::Allocated, crate::ipam::AllocFailure>,
    placed: &BTreeMap<IpAddr, Option<String>>,
) -> (Condition, Condition, Option<String>) {
    use egret_api::v1alpha1::{IP_ALLOCATED, IP_ASSIGNED};
    let a = match alloc {
        Ok(a) => a,
        Err(f) => {
            return (
                cond(IP_ALLOCATED, false, f.reason, f.message.clone()),
                cond(IP_ASSIGNED, false, "NotAllocated", "no egress IP to assign".into()),
                None,
            );
        }
    };
    if a.from_pool {
        let pool = spec.pool.as_deref().unwrap_or("");
        let allocated =
            cond(IP_ALLOCATED, true, "Allocated", format!("{} allocated from ExternalIPPool {pool:?}", a.ip));
        let node = placed.get(&a.ip).cloned().flatten();
        let assigned = match &node {
            Some(n) => cond(IP_ASSIGNED, true, "Assigned", format!("{} is hosted on node {n}", a.ip)),
            None => {
                let selected =
                    live_nodes.iter().any(|n| inp.pools.get(pool).is_some_and(|p| p.node_selector.matches(&n.labels)));
                let why = if selected {
                    format!(
                        "no live node that matches the nodeSelector of ExternalIPPool {pool:?} has an {} address",
                        Family::of(&a.ip)
                    )
                } else {
                    format!("no live node matches the nodeSelector of ExternalIPPool {pool:?}")
                };
                cond(IP_ASSIGNED, false, "NoEligibleNode", why)
            }
        };
        return (allocated, assigned, node);
    }
    let allocated = cond(IP_ALLOCATED, true, "Static", format!("static egress IP {}", a.ip));
    let mut owners = inp.nodes.iter().filter(|n| n.addresses.contains(&a.ip));
    let (assigned, node) = match owners.next() {
        Some(n) if inp.live.contains(&n.name) => (
            cond(IP_ASSIGNED, true, "Assigned", format!("{} is configured on node {}", a.ip, n.name)),
            Some(n.name.clone()),
        ),
        Some(n) => (
            cond(
                IP_ASSIGNED,
                false,
                "NodeNotLive",
                format!("{} is configured on node {}, which is not alive", a.ip, n.name),
            ),
            None,
        ),
        None => (
            cond(
                IP_ASSIGNED,
                false,
                "NoNodeHasIP",
                format!("no node has {} in status.addresses; configure it on a node or use externalIPPool", a.ip),
            ),
            None,
        ),
    };
    (allocated, assigned, node)
}

/// The key a gateway-node slot is placed by: an address in the discard-only prefix `100::/64`
/// (RFC 6666) derived from the Egress name and the slot, used as a hash seed only. Placement
/// hashes egress IPs; a slot has none until its node is chosen.
fn slot_key(egress: &str, slot: usize) -> IpAddr {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(egress.as_bytes(), slot as u64);
    IpAddr::V6(std::net::Ipv6Addr::from((0x0100_u128 << 112) | u128::from(h)))
}

/// Where the gateway-node slots of `e` (`gatewayNodes`, in spec order) are: each the chosen
/// node's name and its `InternalIP` of the slot's family, or `None` without a live matching
/// node. The slots are placed as one group ([`placement::place_group`]), so they are on
/// different nodes while there are enough, and a death moves only the dead node's slot.
fn place_gateway_nodes(inp: &Inputs, e: &Egress) -> Vec<Option<(IpAddr, String)>> {
    let slots: Vec<(usize, &crate::model::IpSpec, &crate::selector::Selector)> =
        e.ips.iter().enumerate().filter_map(|(i, s)| s.gateway_nodes.as_ref().map(|sel| (i, s, sel))).collect();
    if slots.is_empty() {
        return Vec::new();
    }
    let sets: Vec<(BTreeSet<String>, BTreeSet<String>)> = slots
        .iter()
        .map(|(_, spec, sel)| {
            let all: BTreeSet<String> = inp
                .nodes
                .iter()
                .filter(|n| sel.matches(&n.labels) && gateway_node_ip(n, spec).is_some())
                .map(|n| n.name.clone())
                .collect();
            let live = all.iter().filter(|n| inp.live.contains(*n)).cloned().collect();
            (live, all)
        })
        .collect();
    let requests: Vec<Request> = slots
        .iter()
        .zip(&sets)
        .enumerate()
        .map(|(k, (_, (eligible, universe)))| Request { ip: slot_key(&e.name, k), eligible, universe })
        .collect();
    placement::place_group(&requests)
        .into_iter()
        .zip(&slots)
        .map(|(node, (_, spec, _))| {
            let node = node?;
            let ip = gateway_node_ip(inp.nodes.iter().find(|n| n.name == node)?, spec)?;
            Some((ip, node))
        })
        .collect()
}

/// The address a gateway-node slot takes on node `n`: the first of its family on the slot's
/// interface, or the node's `InternalIP`.
fn gateway_node_ip(n: &Node, spec: &crate::model::IpSpec) -> Option<IpAddr> {
    match &spec.interface {
        Some(i) => n.interface_ip(i, spec.family),
        None => n.ip(spec.family),
    }
}

/// The conditions of the gateway-node slot `e.ips[i]` placed `at` (its address and node).
fn gateway_node_conditions(
    e: &Egress,
    i: usize,
    spec: &crate::model::IpSpec,
    at: Option<&(IpAddr, String)>,
) -> (Condition, Condition) {
    use egret_api::v1alpha1::{IP_ALLOCATED, IP_ASSIGNED};
    // Its index among gatewayNodes: the slots come after every other spec, in order.
    let k = i - e.ips.iter().take_while(|s| s.gateway_nodes.is_none()).count();
    let field = format!("spec.gatewayNodes[{k}]");
    let (what, lacking) = match &spec.interface {
        Some(i) => (
            format!("the {} address of interface {i} of a gateway node", spec.family),
            format!(
                "an {} address on interface {i} (published by its agent in the {} annotation)",
                spec.family,
                crate::model::INTERFACES_ANNOTATION
            ),
        ),
        None => (format!("the {} address of a gateway node", spec.family), format!("an {} InternalIP", spec.family)),
    };
    let allocated = cond(IP_ALLOCATED, true, "GatewayNode", format!("{field}: {what}"));
    let assigned = match (at, &spec.interface) {
        (Some((ip, node)), Some(i)) => {
            cond(IP_ASSIGNED, true, "Assigned", format!("{ip} is the address of interface {i} of gateway node {node}"))
        }
        (Some((ip, node)), None) => {
            cond(IP_ASSIGNED, true, "Assigned", format!("{ip} is the address of gateway node {node}"))
        }
        (None, _) => cond(
            IP_ASSIGNED,
            false,
            "NoEligibleNode",
            format!("no live node matches {field}.nodeSelector and has {lacking}"),
        ),
    };
    (allocated, assigned)
}

/// One condition from those of an Egress's several IPs: true when all are, with the first
/// false one's reason, and every message.
fn combine(mut each: Vec<Condition>) -> Option<Condition> {
    if each.len() <= 1 {
        return each.pop();
    }
    let first = each.iter().find(|c| c.status == "False").unwrap_or(&each[0]);
    let (type_, status, reason) = (first.type_, first.status, first.reason);
    let message = each.iter().map(|c| c.message.as_str()).collect::<Vec<_>>().join("; ");
    Some(Condition { type_, status, reason, message })
}

/// [`gateways`] with the placement step supplied (the index memoises it: each group's
/// placement depends on its IPs and their eligible nodes only).
pub(crate) fn gateways_with(
    inp: &Inputs,
    place: impl FnOnce(&[Vec<Request>]) -> BTreeMap<IpAddr, Option<String>>,
) -> BTreeMap<String, EgressOutcome> {
    let live_nodes: Vec<&Node> = inp.nodes.iter().filter(|n| inp.live.contains(&n.name)).collect();
    // Eligible nodes per pool and family, live and all, computed once each rather than once
    // per Egress: a node hosts an IP only if it has an address of the IP's family (an IPv6
    // egress IP on a node without IPv6 would have no way out, or leak through the node's IPv4).
    type Eligible = (BTreeSet<String>, BTreeSet<String>);
    let mut eligible_by_pool: BTreeMap<(&str, Family), Eligible> = BTreeMap::new();
    // Per Egress, its pool IPs: placed together, on different nodes when possible.
    let mut wanted: Vec<Vec<(IpAddr, &str)>> = Vec::new();
    for e in inp.egresses.values() {
        let allocs = inp.allocations.egresses.get(&e.name).map(Vec::as_slice).unwrap_or_default();
        let mut group = Vec::new();
        for (spec, alloc) in e.ips.iter().zip(allocs) {
            let (Some(Ok(a)), Some(pool)) = (alloc, spec.pool.as_ref().and_then(|p| inp.pools.get(p))) else {
                continue;
            };
            let ip = a.ip;
            eligible_by_pool.entry((pool.name.as_str(), Family::of(&ip))).or_insert_with(|| {
                let all: BTreeSet<String> = inp
                    .nodes
                    .iter()
                    .filter(|n| pool.node_selector.matches(&n.labels) && has_family(n, ip))
                    .map(|n| n.name.clone())
                    .collect();
                let live = all.iter().filter(|n| inp.live.contains(*n)).cloned().collect();
                (live, all)
            });
            group.push((ip, pool.name.as_str()));
        }
        if !group.is_empty() {
            wanted.push(group);
        }
    }
    let requests: Vec<Vec<Request>> = wanted
        .into_iter()
        .map(|g| {
            g.into_iter()
                .filter_map(|(ip, pool)| {
                    eligible_by_pool.get(&(pool, Family::of(&ip))).map(|(eligible, universe)| Request {
                        ip,
                        eligible,
                        universe,
                    })
                })
                .collect()
        })
        .collect();
    let placed = place(&requests);
    let mut out = BTreeMap::new();
    for e in inp.egresses.values() {
        let allocs = inp.allocations.egresses.get(&e.name).map(Vec::as_slice).unwrap_or_default();
        let (mut allocated, mut assigned, mut ips) = (Vec::new(), Vec::new(), Vec::new());
        let mut on_nodes = place_gateway_nodes(inp, e).into_iter();
        for (i, (spec, alloc)) in e.ips.iter().zip(allocs).enumerate() {
            let Some(alloc) = alloc else {
                let at = on_nodes.next().flatten();
                let (a, b) = gateway_node_conditions(e, i, spec, at.as_ref());
                allocated.push(a);
                assigned.push(b);
                ips.extend(at.map(|(ip, node)| IpOutcome {
                    ip,
                    node: Some(node),
                    from_pool: false,
                    subnet: None,
                    interface: spec.interface.clone(),
                }));
                continue;
            };
            let (a, b, node) = ip_conditions(inp, &live_nodes, spec, alloc, &placed);
            allocated.push(a);
            assigned.push(b);
            if let Ok(a) = alloc {
                let subnet = spec.pool.as_ref().and_then(|p| inp.pools.get(p)).and_then(|p| p.subnet);
                ips.push(IpOutcome { ip: a.ip, node, from_pool: a.from_pool, subnet, interface: None });
            }
        }
        let mut o = EgressOutcome {
            name: e.name.clone(),
            ips,
            conditions: combine(allocated).into_iter().chain(combine(assigned)).collect(),
            bandwidth: e.bandwidth,
            ips_field: e.ips_field(),
        };
        // Fewer live eligible nodes than IPs: some share a gateway (said on the object).
        if let Some(note) = o.sharing_note()
            && let Some(c) = o.conditions.iter_mut().find(|c| c.type_ == egret_api::v1alpha1::IP_ASSIGNED)
        {
            c.message = format!("{}; {note}", c.message);
        }
        out.insert(e.name.clone(), o);
    }
    out
}

/// Disjoint destination blocks and the index of the Egress deciding each.
type Partition = Arc<Vec<(IpNet, usize)>>;

/// The disjoint destination blocks of one set of matching Egresses (indices in priority
/// order), for one family: `(block, egress index)`.
pub(crate) fn partition(matched: &[usize], egresses: &[&Egress], family: Family) -> Vec<(IpNet, usize)> {
    // (prefix length, egress rank, exclusion first, span)
    let mut entries: Vec<(u8, usize, bool, Span)> = Vec::new();
    for &i in matched {
        let e = egresses[i];
        if !e.serves(family) {
            continue;
        }
        // A dual-stack Egress lists blocks of both families: only this family's count here.
        let of_family = |n: &&IpNet| Family::of_net(n) == family;
        entries.extend(e.excluded.iter().filter(of_family).map(|x| (x.prefix_len(), i, false, Span::of_net(x))));
        entries.extend(e.destinations.iter().filter(of_family).map(|d| (d.prefix_len(), i, true, Span::of_net(d))));
    }
    entries.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut claimed = SpanSet::new();
    let mut out = Vec::new();
    for (_, i, steer, span) in entries {
        for (s, e) in claimed.gaps(span.start, span.end) {
            if steer {
                out.extend(Span { family, start: s, end: e }.to_cidrs().into_iter().map(|n| (n, i)));
            }
        }
        claimed.insert(span.start, span.end);
    }
    out.sort_by_key(|(n, _)| (n.network(), n.prefix_len()));
    out
}

fn collapse(nets: impl IntoIterator<Item = IpNet>) -> Vec<IpNet> {
    let mut by_family: BTreeMap<Family, Vec<(u128, u128)>> = BTreeMap::new();
    for n in nets {
        let s = Span::of_net(&n);
        by_family.entry(s.family).or_default().push((s.start, s.end));
    }
    by_family
        .into_iter()
        .flat_map(|(family, spans)| {
            SpanSet::from_spans(spans)
                .spans()
                .iter()
                .flat_map(|&(start, end)| Span { family, start, end }.to_cidrs())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Destinations never steered: every node's pod CIDRs and addresses, the service CIDRs and
/// the other configured internal CIDRs, collapsed.
pub(crate) fn cluster_cidrs<'a>(nodes: impl IntoIterator<Item = &'a Node>, config: &ClusterConfig) -> Vec<IpNet> {
    let internal = nodes
        .into_iter()
        .flat_map(|n| {
            n.pod_cidrs
                .iter()
                .copied()
                .chain(n.internal_ips.iter().chain(n.addresses.iter()).map(|ip| IpNet::from(*ip)))
        })
        .chain(config.service_cidrs.iter().copied())
        .chain(config.internal_cidrs.iter().copied());
    collapse(internal)
}

/// The order in which pods claiming one address win it (smaller wins): a pod scheduled on a
/// node that exists, then namespace, then name.
pub(crate) fn owner_rank(p: &Pod, node_exists: impl Fn(&str) -> bool) -> (bool, &str, &str) {
    (!p.node.as_deref().is_some_and(node_exists), p.namespace.as_str(), p.name.as_str())
}

/// The warning for `pod`, which lost `ip` to `winner`.
pub(crate) fn lost_address(pod: &Pod, ip: &IpAddr, winner: &Pod) -> Warning {
    Warning {
        object: format!("Pod/{}/{}", pod.namespace, pod.name),
        field: "status.podIPs".into(),
        reason: format!(
            "{ip} is also the address of Pod {}/{}, which keeps it (a pod on an existing node beats one that is not, then namespace/name order); this pod is not steered for {ip}",
            winner.namespace, winner.name
        ),
    }
}

/// Which pod each pod address belongs to, when several pods claim one (a stale pod object
/// left behind): the pod scheduled on a node that exists beats one that is not, then the
/// namespace, then the name that sorts first (then the first listed). Two owners would give the
/// datapath overlapping entries for one source, which it cannot hold. Returns `(pod index per
/// address, warnings for the pods that lost)`.
fn address_owners(pods: &[Pod], nodes: &[Node]) -> (HashMap<IpAddr, usize>, Vec<Warning>) {
    let known: BTreeSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    let rank = |p| owner_rank(p, |n| known.contains(n));
    let mut owners: HashMap<IpAddr, usize> = HashMap::with_capacity(pods.len());
    let mut contested = BTreeSet::new();
    for (i, pod) in pods.iter().enumerate() {
        for ip in &pod.ips {
            match owners.entry(*ip) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(i);
                }
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    contested.insert(*ip);
                    if rank(pod) < rank(&pods[*o.get()]) {
                        o.insert(i);
                    }
                }
            }
        }
    }
    let mut warnings = Vec::new();
    if !contested.is_empty() {
        for (i, pod) in pods.iter().enumerate() {
            for ip in pod.ips.iter().filter(|ip| contested.contains(*ip)) {
                let Some(&w) = owners.get(ip) else { continue };
                if w == i {
                    continue;
                }
                warnings.push(lost_address(pod, ip, &pods[w]));
            }
        }
        warnings.sort();
    }
    (owners, warnings)
}

/// Computes the plan.
pub fn plan(inp: &Inputs) -> Plan {
    let outcomes = gateways(inp);
    let (owners, warnings) = address_owners(inp.pods, inp.nodes);

    // Egresses in priority order: oldest first, then by name.
    let mut order: Vec<&Egress> = inp.egresses.values().filter(|e| !e.applied_to.selects_nothing()).collect();
    order.sort_by(|a, b| a.age_key().cmp(&b.age_key()));
    let names: Vec<Arc<str>> = order.iter().map(|e| Arc::from(e.name.as_str())).collect();
    // What pods of each family choose from, per Egress.
    let choices: Vec<[Choices; 2]> = order
        .iter()
        .map(|e| {
            let o = outcomes.get(&e.name);
            [Choices::of(o, Family::V4), Choices::of(o, Family::V6)]
        })
        .collect();
    let node_labels: HashMap<&str, &Labels> = inp.nodes.iter().map(|n| (n.name.as_str(), &n.labels)).collect();
    let node_names: HashMap<&str, Arc<str>> =
        inp.nodes.iter().map(|n| (n.name.as_str(), Arc::from(n.name.as_str()))).collect();
    let empty = Labels::new();

    // Egresses whose namespace selector admits each namespace.
    let mut by_ns: HashMap<&str, (&Labels, Vec<usize>)> = HashMap::new();
    for ns in inp.namespaces {
        let cands = order
            .iter()
            .enumerate()
            .filter(|(_, e)| e.applied_to.namespaces.as_ref().is_none_or(|s| s.matches(&ns.labels)))
            .map(|(i, _)| i)
            .collect();
        by_ns.insert(ns.name.as_str(), (&ns.labels, cands));
    }
    let no_ns: (&Labels, Vec<usize>) = (&empty, Vec::new());

    let mut by_pod_labels: HashMap<(&str, &Labels), Vec<usize>> = HashMap::new();
    // Destination partitions, computed once per family and distinct set of matching Egresses.
    let mut partitions: HashMap<Family, HashMap<Vec<usize>, Partition>> = HashMap::new();
    let mut rules = Vec::new();
    for (idx, pod) in inp.pods.iter().enumerate() {
        if pod.ips.is_empty() {
            continue;
        }
        let (_, cands) = by_ns.get(pod.namespace.as_str()).unwrap_or(&no_ns);
        let matched = by_pod_labels.entry((pod.namespace.as_str(), &pod.labels)).or_insert_with(|| {
            cands
                .iter()
                .copied()
                .filter(|&i| order[i].applied_to.pods.as_ref().is_none_or(|s| s.matches(&pod.labels)))
                .collect()
        });
        if matched.is_empty() {
            continue;
        }
        let nl = pod.node.as_deref().and_then(|n| node_labels.get(n).copied()).unwrap_or(&empty);
        let matched: std::borrow::Cow<[usize]> = if matched.iter().any(|&i| order[i].applied_to.nodes.is_some()) {
            matched
                .iter()
                .copied()
                .filter(|&i| order[i].applied_to.nodes.as_ref().is_none_or(|s| s.matches(nl)))
                .collect::<Vec<_>>()
                .into()
        } else {
            matched.as_slice().into()
        };
        let source_node = pod.node.as_deref().map(|n| node_names.get(n).cloned().unwrap_or_else(|| Arc::from(n)));
        for ip in pod.ips.iter().filter(|ip| owners.get(*ip) == Some(&idx)) {
            let family = Family::of(ip);
            let cache = partitions.entry(family).or_default();
            let part = match cache.get(matched.as_ref()) {
                Some(p) => p.clone(),
                None => {
                    let p = Arc::new(partition(&matched, &order, family));
                    cache.insert(matched.to_vec(), p.clone());
                    p
                }
            };
            // One choice per Egress for this address, whatever the number of its blocks.
            let mut chosen: Option<(usize, Chosen)> = None;
            for &(dest, i) in part.iter() {
                let (egress_ip, gateway) = match &chosen {
                    Some((j, c)) if *j == i => c.clone(),
                    _ => {
                        let c = choices[i][usize::from(family == Family::V6)].choose(ip);
                        chosen = Some((i, c.clone()));
                        c
                    }
                };
                if gateway.is_none() && order[i].failure_policy == FailurePolicy::FallbackToNodeIP {
                    continue;
                }
                rules.push(Rule {
                    source_ip: *ip,
                    destination: dest,
                    egress: names[i].clone(),
                    egress_ip,
                    gateway,
                    source_node: source_node.clone(),
                });
            }
        }
    }
    rules.sort_unstable_by_key(|r| (r.source_ip, r.destination.network(), r.destination.prefix_len()));

    let cluster_cidrs = cluster_cidrs(inp.nodes, inp.config);

    let pools = inp
        .allocations
        .usage
        .iter()
        .map(|(name, u)| PoolOutcome { name: name.clone(), total: u.total, used: u.used })
        .collect();
    Plan {
        egresses: outcomes.into_values().collect(),
        pools,
        rules,
        cluster_cidrs,
        node_ips: inp.nodes.iter().map(|n| (n.name.clone(), n.internal_ips.clone())).collect(),
        warnings,
    }
}

/// Validates, allocates, places and plans in one go from API objects: what the controller,
/// the agents, `egret plan`, the tests and the benchmark all do.
pub fn plan_objects(
    pools: &[egret_api::v1alpha1::ExternalIPPool],
    egresses: &[egret_api::v1alpha1::Egress],
    nodes: &[Node],
    namespaces: &[Namespace],
    pods: &[Pod],
    live: &BTreeSet<String>,
    config: &ClusterConfig,
) -> (crate::validate::Validated, Plan) {
    let v = crate::validate::validate(pools, egresses, &crate::validate::Reserved::of(nodes, config));
    let allocations = crate::ipam::allocate(&v.pools, &v.egresses);
    let p = plan(&Inputs {
        pools: &v.pools,
        egresses: &v.egresses,
        allocations: &allocations,
        nodes,
        namespaces,
        pods,
        live,
        config,
    });
    (v, p)
}

impl Plan {
    /// What one node must hold: one pass over the rules. This is what an agent computes.
    pub fn node_plan(&self, node: &str) -> Option<NodePlan> {
        self.build(Some(node)).remove(node)
    }

    /// What every node must hold, in one pass over the rules.
    pub fn node_plans(&self) -> BTreeMap<String, NodePlan> {
        self.build(None)
    }

    fn build<'a>(&'a self, only: Option<&str>) -> BTreeMap<String, NodePlan> {
        let mut out: BTreeMap<String, NodePlan> = self
            .node_ips
            .iter()
            .filter(|(name, _)| only.is_none_or(|o| o == name.as_str()))
            .map(|(name, ips)| {
                let np = NodePlan {
                    node: name.clone(),
                    node_ips: ips.clone(),
                    cluster_cidrs: self.cluster_cidrs.clone(),
                    ..NodePlan::default()
                };
                (name.clone(), np)
            })
            .collect();
        // Names per node, sorted and deduplicated at the end; neighbouring rules mostly repeat
        // a name, so only changes are pushed (a node's plan holds thousands of rules).
        let push = |v: &mut Vec<&'a str>, name: &'a str| {
            if v.last() != Some(&name) {
                v.push(name);
            }
        };
        let mut counters: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        // Tunnel peers a node needs: the gateways of its pods, and the origins of what it SNATs.
        let mut peers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        // Egresses with a bandwidth limit, by name: each gateway that SNATs an Egress's traffic
        // gets its share of the limit.
        let limits: BTreeMap<&str, &EgressOutcome> =
            self.egresses.iter().filter(|e| e.bandwidth.is_some()).map(|e| (e.name.as_str(), e)).collect();
        for r in &self.rules {
            if let Some(src) = r.source_node.as_deref()
                && let Some(np) = out.get_mut(src)
            {
                let action = match r.gateway.as_deref() {
                    None => SteerAction::Drop,
                    Some(gw) if gw == src => SteerAction::Local,
                    Some(gw) => {
                        push(peers.entry(src).or_default(), gw);
                        SteerAction::Tunnel { gateway: gw.to_string() }
                    }
                };
                np.steer.push(Steer {
                    source: r.source_ip,
                    destination: r.destination,
                    egress: r.egress.to_string(),
                    action,
                    egress_ip: r.egress_ip,
                });
                push(counters.entry(src).or_default(), &r.egress);
            }
            if let (Some(gw), Some(ip)) = (r.gateway.as_deref(), r.egress_ip)
                && let Some(np) = out.get_mut(gw)
            {
                np.snat.push(Snat {
                    source: r.source_ip,
                    destination: r.destination,
                    egress: r.egress.to_string(),
                    egress_ip: ip,
                });
                if let Some(e) = limits.get(&*r.egress)
                    && !np.bandwidth.contains_key(&*r.egress)
                    && let Some(bw) = e.bandwidth_on(gw)
                {
                    np.bandwidth.insert(r.egress.to_string(), bw);
                }
                push(counters.entry(gw).or_default(), &r.egress);
                if let Some(src) = r.source_node.as_deref()
                    && src != gw
                {
                    push(peers.entry(gw).or_default(), src);
                }
            }
        }
        for e in &self.egresses {
            for i in &e.ips {
                if let (Some(node), Some(interface)) = (&i.node, &i.interface)
                    && let Some(np) = out.get_mut(node)
                {
                    let exit = InterfaceExit { ip: i.ip, interface: interface.clone() };
                    if !np.interface_exits.contains(&exit) {
                        np.interface_exits.push(exit);
                    }
                }
                // Static IPs outside pools are already configured on their node.
                let (Some(node), true) = (&i.node, i.from_pool) else {
                    continue;
                };
                if let Some(np) = out.get_mut(node) {
                    match np.hosted.iter_mut().find(|h| h.ip == i.ip) {
                        Some(h) => h.egresses.push(e.name.clone()),
                        None => np.hosted.push(Hosted { ip: i.ip, egresses: vec![e.name.clone()], subnet: i.subnet }),
                    }
                }
            }
        }
        for (node, mut names) in counters {
            names.sort_unstable();
            names.dedup();
            if let Some(np) = out.get_mut(node) {
                np.egresses = names.into_iter().map(str::to_string).collect();
            }
        }
        for (node, mut names) in peers {
            names.sort_unstable();
            names.dedup();
            if let Some(np) = out.get_mut(node) {
                np.peers = names
                    .into_iter()
                    .map(|n| Peer { name: n.to_string(), ips: self.node_ips.get(n).cloned().unwrap_or_default() })
                    .collect();
            }
        }
        out
    }
}

/// A destination block as a span of addresses (for datapath interval sets).
pub fn block_span(net: &IpNet) -> (IpAddr, IpAddr) {
    let s = Span::of_net(net);
    (from_u128(s.family, s.start), from_u128(s.family, s.end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use egret_api::v1alpha1 as api;

    struct Fixture {
        pools: Vec<api::ExternalIPPool>,
        egresses: Vec<api::Egress>,
        nodes: Vec<Node>,
        namespaces: Vec<Namespace>,
        pods: Vec<Pod>,
        live: BTreeSet<String>,
    }

    impl Fixture {
        fn lab() -> Fixture {
            let (nodes, namespaces, pods) = lab();
            let live = nodes.iter().map(|n| n.name.clone()).collect();
            Fixture { pools: vec![], egresses: vec![], nodes, namespaces, pods, live }
        }

        fn plan(&self) -> Plan {
            let (v, p) = plan_objects(
                &self.pools,
                &self.egresses,
                &self.nodes,
                &self.namespaces,
                &self.pods,
                &self.live,
                &ClusterConfig::default(),
            );
            assert!(v.problems.is_empty(), "{:?}", v.problems);
            p
        }
    }

    fn ns_egress(name: &str, ns: &str, app: Option<&str>, pool: Option<&str>, ip: Option<&str>) -> api::Egress {
        let mut e = mk_egress(name, pool, ip);
        e.spec.applied_to.namespace_selector = Some(mk_match(&[("kubernetes.io/metadata.name", ns)]));
        e.spec.applied_to.pod_selector = app.map(|a| mk_match(&[("app", a)]));
        e
    }

    fn rows(p: &Plan) -> Vec<String> {
        p.rules
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} {}",
                    r.source_ip,
                    r.destination,
                    r.egress_ip.map(|i| i.to_string()).unwrap_or("-".into()),
                    r.gateway.as_deref().unwrap_or("DROP")
                )
            })
            .collect()
    }

    fn outcome<'a>(p: &'a Plan, name: &str) -> &'a EgressOutcome {
        p.egresses.iter().find(|e| e.name == name).unwrap()
    }

    #[test]
    fn seed_002_ha_example() {
        let mut f = Fixture::lab();
        f.pools.push(mk_pool("external-ip-pool", &[("10.10.0.11", "10.10.0.20")], &[]));
        let mut prod = ns_egress("egress-prod-web", "prod", Some("web"), Some("external-ip-pool"), None);
        prod.metadata.creation_timestamp = Some(ts(1));
        let mut staging = ns_egress("egress-staging-web", "staging", Some("web"), Some("external-ip-pool"), None);
        staging.metadata.creation_timestamp = Some(ts(2));
        f.egresses = vec![prod, staging];
        let p = f.plan();
        let prod = outcome(&p, "egress-prod-web");
        let staging = outcome(&p, "egress-staging-web");
        assert_eq!(prod.egress_ip(), Some("10.10.0.11".parse().unwrap()));
        assert_eq!(staging.egress_ip(), Some("10.10.0.12".parse().unwrap()));
        assert!(prod.conditions.iter().all(|c| c.status == "True"), "{:?}", prod.conditions);
        let gw_prod = prod.egress_node().map(String::from).unwrap();
        let gw_staging = staging.egress_node().map(String::from).unwrap();
        assert_eq!(
            rows(&p),
            vec![
                format!("10.244.1.10 0.0.0.0/0 10.10.0.11 {gw_prod}"),
                format!("10.244.2.10 0.0.0.0/0 10.10.0.11 {gw_prod}"),
                format!("10.244.2.11 0.0.0.0/0 10.10.0.12 {gw_staging}"),
            ]
        );
        assert_eq!(p.pools, vec![PoolOutcome { name: "external-ip-pool".into(), total: 10, used: 2 }]);

        let nps = p.node_plans();
        let n1 = &nps["node-1"];
        assert_eq!(n1.steer.len(), 1);
        assert_eq!(n1.steer[0].source, "10.244.1.10".parse::<IpAddr>().unwrap());
        let expected =
            if gw_prod == "node-1" { SteerAction::Local } else { SteerAction::Tunnel { gateway: gw_prod.clone() } };
        assert_eq!(n1.steer[0].action, expected);
        let gw = &nps[&gw_prod];
        assert!(gw.hosted.iter().any(|h| h.ip == "10.10.0.11".parse::<IpAddr>().unwrap()));
        assert!(gw.snat.iter().any(|s| s.source == "10.244.2.10".parse::<IpAddr>().unwrap()));
        // Tunnel peers: only what each node needs, not every node of the cluster.
        let names = |np: &NodePlan| np.peers.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        if gw_prod != "node-1" {
            assert_eq!(names(n1), vec![gw_prod.clone()]);
            assert_eq!(n1.peers[0].ips, p.node_ips[&gw_prod]);
        }
        // Cluster-internal destinations: pod CIDRs, service CIDR and node addresses.
        let internal: Vec<String> = p.cluster_cidrs.iter().map(|c| c.to_string()).collect();
        assert!(internal.contains(&"10.96.0.0/12".to_string()));
        assert!(internal.contains(&"10.244.1.0/24".to_string()));
        assert!(internal.iter().any(|c| c.starts_with("10.10.0.10")));
    }

    #[test]
    fn seed_002_static_example_uses_the_nodes_owning_the_ips() {
        let mut f = Fixture::lab();
        f.egresses = vec![
            ns_egress("egress-prod", "prod", None, None, Some("10.10.0.104")),
            ns_egress("egress-staging", "staging", None, None, Some("10.10.0.105")),
        ];
        let p = f.plan();
        assert_eq!(outcome(&p, "egress-prod").egress_node(), Some("node-4"));
        assert_eq!(outcome(&p, "egress-staging").egress_node(), Some("node-5"));
        assert_eq!(
            rows(&p),
            vec![
                "10.244.1.10 0.0.0.0/0 10.10.0.104 node-4",
                "10.244.2.10 0.0.0.0/0 10.10.0.104 node-4",
                "10.244.2.11 0.0.0.0/0 10.10.0.105 node-5",
                "10.244.3.10 0.0.0.0/0 10.10.0.104 node-4",
            ]
        );
        // A node's own address is not hosted on the dummy device.
        assert!(p.node_plans().values().all(|np| np.hosted.is_empty()));
    }

    #[test]
    fn static_ip_owner_down_fails_closed() {
        let mut f = Fixture::lab();
        f.egresses = vec![ns_egress("e", "prod", Some("web"), None, Some("10.10.0.104"))];
        f.live.remove("node-4");
        let p = f.plan();
        let o = outcome(&p, "e");
        assert_eq!(o.egress_node(), None);
        assert!(o.conditions.iter().any(|c| c.reason == "NodeNotLive"));
        assert!(rows(&p).iter().all(|r| r.ends_with("DROP")));
        let nps = p.node_plans();
        assert_eq!(nps["node-1"].steer[0].action, SteerAction::Drop);
    }

    #[test]
    fn the_egresses_of_an_ip_are_known_on_its_gateway_and_on_the_pods_nodes() {
        let mut f = Fixture::lab();
        f.egresses = vec![ns_egress("e", "prod", Some("web"), None, Some("10.10.0.104"))];
        let nps = f.plan().node_plans();
        let ip: IpAddr = "10.10.0.104".parse().unwrap();
        assert_eq!(nps["node-4"].egresses_of_ip(ip), "e");
        assert_eq!(nps["node-1"].egresses_of_ip(ip), "e");
        assert_eq!(nps["node-1"].egresses_of_ip("10.10.0.99".parse().unwrap()), "");
    }

    #[test]
    fn static_ip_on_no_node() {
        let mut f = Fixture::lab();
        f.egresses = vec![ns_egress("e", "prod", Some("web"), None, Some("192.0.2.9"))];
        let p = f.plan();
        assert!(outcome(&p, "e").conditions.iter().any(|c| c.reason == "NoNodeHasIP"));
    }

    fn gateway_nodes_egress(name: &str, slots: usize) -> api::Egress {
        let mut e = ns_egress(name, "prod", None, None, None);
        let node_selector = mk_match(&[("network-role", "egress-gateway")]);
        e.spec.gateway_nodes = vec![api::GatewayNode { node_selector, ip_family: None, interface: None }; slots];
        e
    }

    #[test]
    fn a_gateway_node_slot_leaves_with_the_chosen_nodes_own_address_and_follows_it() {
        let mut f = Fixture::lab();
        f.egresses = vec![gateway_nodes_egress("e", 1)];
        let p = f.plan();
        let o = outcome(&p, "e");
        let gw = o.egress_node().unwrap().to_string();
        assert!(["node-4", "node-5", "node-6"].contains(&gw.as_str()), "{gw}");
        let own = f.nodes.iter().find(|n| n.name == gw).unwrap().internal_ips[0];
        assert_eq!(o.egress_ip(), Some(own));
        let reasons: Vec<&str> = o.conditions.iter().map(|c| c.reason).collect();
        assert_eq!(reasons, ["GatewayNode", "Assigned"]);
        let plans = p.node_plans();
        assert!(plans.values().all(|np| np.hosted.is_empty()), "its own address: nothing to host");
        assert!(!plans[&gw].snat.is_empty() && plans[&gw].snat.iter().all(|s| s.egress_ip == own));
        assert!(rows(&p).iter().all(|r| r.ends_with(&format!("{own} {gw}"))), "{:?}", rows(&p));

        // The gateway dies: another selected node, with its own address.
        f.live.remove(&gw);
        let p = f.plan();
        let o = outcome(&p, "e");
        let next = o.egress_node().unwrap().to_string();
        assert_ne!(next, gw);
        assert_eq!(o.egress_ip(), f.nodes.iter().find(|n| n.name == next).map(|n| n.internal_ips[0]));

        // None left: IPAssigned says why, and the pods fail closed with no address.
        for n in ["node-4", "node-5", "node-6"] {
            f.live.remove(n);
        }
        let p = f.plan();
        let assigned = outcome(&p, "e").conditions.iter().find(|c| c.type_ == "IPAssigned").unwrap().clone();
        assert_eq!((assigned.status, assigned.reason), ("False", "NoEligibleNode"));
        assert!(assigned.message.contains("spec.gatewayNodes[0].nodeSelector"), "{}", assigned.message);
        assert_eq!(
            rows(&p),
            vec!["10.244.1.10 0.0.0.0/0 - DROP", "10.244.2.10 0.0.0.0/0 - DROP", "10.244.3.10 0.0.0.0/0 - DROP"]
        );
    }

    #[test]
    fn an_interface_slot_takes_the_interfaces_address_on_nodes_that_published_one() {
        let mut f = Fixture::lab();
        // Only node-5 and node-6 published an eth1 address (node-6 IPv6 only).
        for (n, ips) in [("node-5", vec!["198.18.0.15"]), ("node-6", vec!["fd00:18::16"])] {
            let node = f.nodes.iter_mut().find(|x| x.name == n).unwrap();
            node.interfaces.insert("eth1".into(), ips.iter().map(|i| i.parse().unwrap()).collect());
        }
        let mut e = gateway_nodes_egress("e", 1);
        e.spec.gateway_nodes[0].interface = Some("eth1".into());
        f.egresses = vec![e];
        let p = f.plan();
        let o = outcome(&p, "e");
        assert_eq!(o.egress_node(), Some("node-5"));
        assert_eq!(o.egress_ip(), Some("198.18.0.15".parse().unwrap()));
        let plans = p.node_plans();
        let exit = InterfaceExit { ip: "198.18.0.15".parse().unwrap(), interface: "eth1".into() };
        assert_eq!(plans["node-5"].interface_exits, [exit]);
        assert!(plans["node-5"].snat.iter().all(|s| s.egress_ip.to_string() == "198.18.0.15"));
        assert!(plans.iter().filter(|(n, _)| *n != "node-5").all(|(_, np)| np.interface_exits.is_empty()));
        // node-5 dies: no other node has an IPv4 address on eth1.
        f.live.remove("node-5");
        let p = f.plan();
        let assigned = outcome(&p, "e").conditions.iter().find(|c| c.type_ == "IPAssigned").unwrap().clone();
        assert_eq!(assigned.reason, "NoEligibleNode");
        assert!(assigned.message.contains("interface eth1"), "{}", assigned.message);
    }

    #[test]
    fn gateway_node_slots_take_different_nodes_and_a_death_moves_only_its_own() {
        let mut f = Fixture::lab();
        f.egresses = vec![gateway_nodes_egress("e", 2)];
        let nodes_of =
            |p: &Plan| -> Vec<String> { outcome(p, "e").ips.iter().filter_map(|i| i.node.clone()).collect() };
        let before = nodes_of(&f.plan());
        assert_eq!(before.len(), 2);
        assert_ne!(before[0], before[1]);
        // The node no slot uses dies: nothing moves. One slot's node dies: only that slot moves.
        let spare = ["node-4", "node-5", "node-6"].into_iter().find(|n| !before.iter().any(|b| b == n)).unwrap();
        f.live.remove(spare);
        assert_eq!(nodes_of(&f.plan()), before);
        f.live.insert(spare.into());
        f.live.remove(&before[1]);
        let after = nodes_of(&f.plan());
        assert_eq!((after[0].as_str(), after[1].as_str()), (before[0].as_str(), spare));
    }

    #[test]
    fn no_eligible_node_fails_closed_unless_fallback() {
        let mut f = Fixture::lab();
        let mut pool = mk_pool("p", &[("10.10.0.11", "10.10.0.20")], &[]);
        pool.spec.node_selector = mk_match(&[("network-role", "nowhere")]);
        f.pools.push(pool);
        f.egresses = vec![ns_egress("e", "prod", Some("web"), Some("p"), None)];
        let p = f.plan();
        let o = outcome(&p, "e");
        assert_eq!(o.egress_ip(), Some("10.10.0.11".parse().unwrap()));
        let assigned = o.conditions.iter().find(|c| c.type_ == "IPAssigned").unwrap();
        assert_eq!((assigned.status, assigned.reason), ("False", "NoEligibleNode"));
        assert_eq!(rows(&p), vec!["10.244.1.10 0.0.0.0/0 10.10.0.11 DROP", "10.244.2.10 0.0.0.0/0 10.10.0.11 DROP"]);
        f.egresses[0].spec.failure_policy = Some("FallbackToNodeIP".into());
        assert!(f.plan().rules.is_empty());
    }

    #[test]
    fn a_bandwidth_limit_goes_to_the_gateway_only() {
        let mut f = Fixture::lab();
        f.pools.push(mk_pool("p", &[("10.10.0.11", "10.10.0.20")], &[]));
        let mut e = ns_egress("e", "prod", Some("web"), Some("p"), None);
        e.spec.bandwidth = Some(api::Bandwidth { rate: "100Mbps".into(), burst: "200Mb".into() });
        f.egresses = vec![e];
        let p = f.plan();
        let gw = outcome(&p, "e").egress_node().map(String::from).unwrap();
        let plans = p.node_plans();
        let want = crate::model::Bandwidth { rate_bps: 100_000_000, burst_bits: 200_000_000 };
        for (node, np) in &plans {
            if *node == gw {
                assert_eq!(np.bandwidth.get("e"), Some(&want));
            } else {
                assert!(np.bandwidth.is_empty(), "{node}: {:?}", np.bandwidth);
            }
        }
    }

    #[test]
    fn a_bandwidth_limit_is_the_egress_total_each_gateway_enforcing_the_share_of_its_ips() {
        let mut f = Fixture::lab();
        for (name, ip) in [("a", "10.10.0.40"), ("b", "10.10.0.41"), ("c", "10.10.0.42")] {
            f.pools.push(mk_pool(name, &[(ip, ip)], &[]));
        }
        let mut e = ns_egress("e", "prod", Some("web"), None, None);
        e.spec.external_ip_pools = vec!["a".into(), "b".into(), "c".into()];
        e.spec.bandwidth = Some(api::Bandwidth { rate: "90Mbps".into(), burst: "30Mb".into() });
        f.egresses = vec![e];
        let shares = |p: &Plan| -> BTreeMap<String, u64> {
            p.node_plans().into_iter().filter_map(|(n, np)| Some((n, np.bandwidth.get("e")?.rate_bps))).collect()
        };
        // Each gateway's share, and what the node plans of the gateways with traffic hold.
        let check = |p: &Plan| -> BTreeMap<String, u64> {
            let o = outcome(p, "e");
            let all: BTreeMap<String, u64> = o
                .ips
                .iter()
                .filter_map(|i| i.node.clone())
                .map(|n| {
                    let bw = o.bandwidth_on(&n).unwrap();
                    (n, bw.rate_bps)
                })
                .collect();
            for (n, rate) in shares(p) {
                assert_eq!(all.get(&n), Some(&rate), "{n}: the plan holds the gateway's share");
            }
            assert!(!shares(p).is_empty(), "some gateway carries the pods' traffic");
            all
        };
        let p = f.plan();
        let gws: Vec<String> = outcome(&p, "e").ips.iter().filter_map(|i| i.node.clone()).collect();
        let want: BTreeMap<String, u64> = gws.iter().map(|g| (g.clone(), 30_000_000)).collect();
        assert_eq!(want.len(), 3, "{gws:?}");
        assert_eq!(check(&p), want, "three gateways, a third each");
        assert_eq!(outcome(&p, "e").bandwidth_on(&gws[0]).unwrap().burst_bits, 10_000_000, "the burst is shared");
        assert_eq!(outcome(&p, "e").bandwidth_on("no-such-node"), None);
        // Two gateways left (no other live node): one holds two of the IPs, and two thirds
        // of the limit.
        f.live = gws[..2].iter().cloned().collect();
        let s = check(&f.plan());
        assert_eq!(s.values().sum::<u64>(), 90_000_000, "{s:?}");
        let mut rates: Vec<u64> = s.values().copied().collect();
        rates.sort();
        assert_eq!(rates, [30_000_000, 60_000_000]);
    }

    #[test]
    fn an_ipv6_pool_is_hosted_only_by_nodes_with_an_ipv6_address() {
        let mut f = Fixture::lab();
        f.pools.push(mk_pool("p6", &[], &["fd00:10:10::e0/124"]));
        f.egresses = vec![ns_egress("e", "prod", Some("web"), Some("p6"), None)];
        // The lab fixture's nodes are IPv4-only: nothing may host the IPv6 address.
        let p = f.plan();
        let o = outcome(&p, "e");
        assert_eq!(o.egress_ip(), Some("fd00:10:10::e1".parse().unwrap()));
        assert_eq!(o.egress_node(), None);
        let assigned = o.conditions.iter().find(|c| c.type_ == "IPAssigned").unwrap();
        assert_eq!((assigned.status, assigned.reason), ("False", "NoEligibleNode"));
        assert!(assigned.message.contains("has an IPv6 address"), "{}", assigned.message);
        // One node gains an IPv6 address: it, and only it, hosts the IP.
        let n5 = f.nodes.iter_mut().find(|n| n.name == "node-5").unwrap();
        n5.addresses.push("fd00:10:10::105".parse().unwrap());
        assert_eq!(outcome(&f.plan(), "e").egress_node(), Some("node-5"));
    }

    #[test]
    fn gateway_follows_the_live_set() {
        let mut f = Fixture::lab();
        let mut pool = mk_pool("p", &[("10.10.0.11", "10.10.0.20")], &[]);
        pool.spec.node_selector = mk_match(&[("network-role", "egress-gateway")]);
        f.pools.push(pool);
        f.egresses = vec![ns_egress("e", "prod", Some("web"), Some("p"), None)];
        let first = outcome(&f.plan(), "e").egress_node().map(String::from).unwrap();
        assert!(["node-4", "node-5", "node-6"].contains(&first.as_str()));
        f.live.remove(&first);
        let second = outcome(&f.plan(), "e").egress_node().map(String::from).unwrap();
        assert_ne!(first, second);
        assert!(["node-4", "node-5", "node-6"].contains(&second.as_str()));
    }

    #[test]
    fn overlap_longest_prefix_then_oldest_then_name() {
        let mut f = Fixture::lab();
        f.pools.push(mk_pool("p", &[("10.10.0.11", "10.10.0.20")], &[]));
        let mk = |name: &str, t: i64, dest: &[&str], excl: &[&str]| {
            let mut e = ns_egress(name, "prod", Some("payment"), Some("p"), None);
            e.metadata.creation_timestamp = Some(ts(t));
            e.spec.destination_cidrs = dest.iter().map(|s| s.to_string()).collect();
            e.spec.excluded_cidrs = excl.iter().map(|s| s.to_string()).collect();
            e
        };
        // "wide" is oldest and covers everything; "narrow" is newer but more specific.
        f.egresses = vec![
            mk("wide", 1, &[], &[]),
            mk("narrow", 2, &["203.0.113.0/24"], &["203.0.113.0/25"]),
            mk("same", 3, &["203.0.113.0/24"], &[]),
        ];
        let p = f.plan();
        let by_dest: BTreeMap<String, String> =
            p.rules.iter().map(|r| (r.destination.to_string(), r.egress.to_string())).collect();
        // The /25 exclusion of "narrow" is the longest prefix: not steered at all.
        assert!(!by_dest.contains_key("203.0.113.0/25"));
        // Same prefix /24 for "narrow" and "same": the older wins.
        assert_eq!(by_dest["203.0.113.128/25"], "narrow");
        // Everything else goes through "wide", in CIDR blocks around the /24.
        assert_eq!(by_dest["0.0.0.0/1"], "wide");
        assert_eq!(by_dest["203.0.112.0/24"], "wide");
        assert!(by_dest.values().all(|e| e != "same"));
        // Same age: the name decides.
        f.egresses = vec![mk("b", 1, &["198.51.100.0/24"], &[]), mk("a", 1, &["198.51.100.0/24"], &[])];
        assert!(f.plan().rules.iter().all(|r| &*r.egress == "a"));
    }

    #[test]
    fn selection_semantics() {
        let mut f = Fixture::lab();
        f.pools.push(mk_pool("p", &[("10.10.0.11", "10.10.0.20")], &[]));
        // Pod selector alone: every namespace.
        let mut e = mk_egress("e", Some("p"), None);
        f.egresses = vec![e.clone()];
        let srcs: Vec<String> = f.plan().rules.iter().map(|r| r.source_ip.to_string()).collect();
        assert_eq!(srcs, vec!["10.244.1.10", "10.244.2.10", "10.244.2.11"]);
        // Namespace selector alone: every pod of the namespace.
        e.spec.applied_to.pod_selector = None;
        e.spec.applied_to.namespace_selector = Some(mk_match(&[("env", "staging")]));
        f.egresses = vec![e.clone()];
        assert_eq!(f.plan().rules.len(), 1);
        // Neither: nothing.
        e.spec.applied_to.namespace_selector = None;
        f.egresses = vec![e.clone()];
        assert!(f.plan().rules.is_empty());
        // Node selector (Cilium's source-node restriction).
        e.spec.applied_to.pod_selector = Some(mk_match(&[("app", "web")]));
        e.spec.applied_to.node_selector = Some(mk_match(&[("kubernetes.io/hostname", "node-2")]));
        f.egresses = vec![e];
        let srcs: Vec<String> = f.plan().rules.iter().map(|r| r.source_ip.to_string()).collect();
        assert_eq!(srcs, vec!["10.244.2.10", "10.244.2.11"]);
    }

    #[test]
    fn ipv6_pods_use_ipv6_egresses_only() {
        let mut f = Fixture::lab();
        f.pods[0].ips.push("fd00:244:1::10".parse().unwrap());
        f.pools.push(mk_pool("p6", &[], &["fd00:10::/124"]));
        f.pools.push(mk_pool("p4", &[("10.10.0.11", "10.10.0.20")], &[]));
        f.egresses = vec![
            ns_egress("e6", "prod", Some("web"), Some("p6"), None),
            ns_egress("e4", "prod", Some("web"), Some("p4"), None),
        ];
        let p = f.plan();
        let web1: Vec<String> = p
            .rules
            .iter()
            .filter(|r| r.source_node.as_deref() == Some("node-1"))
            .map(|r| format!("{} {} {}", r.source_ip, r.destination, r.egress))
            .collect();
        assert_eq!(web1, vec!["10.244.1.10 0.0.0.0/0 e4", "fd00:244:1::10 ::/0 e6"]);
    }

    #[test]
    fn a_dual_stack_egress_steers_each_family_with_its_own_ip() {
        let mut f = Fixture::lab();
        f.pods[0].ips.push("fd00:244:1::10".parse().unwrap());
        for (i, n) in f.nodes.iter_mut().enumerate() {
            n.internal_ips.push(format!("fd00:10:10::{}", 101 + i).parse().unwrap());
        }
        f.pools.push(mk_pool("p6", &[], &["fd00:10::/124"]));
        f.pools.push(mk_pool("p4", &[("10.10.0.11", "10.10.0.20")], &[]));
        let mut e = ns_egress("dual", "prod", Some("web"), None, None);
        e.spec.external_ip_pools = vec!["p4".into(), "p6".into()];
        f.egresses = vec![e];
        let p = f.plan();
        let web1: Vec<String> = p
            .rules
            .iter()
            .filter(|r| r.source_node.as_deref() == Some("node-1"))
            .map(|r| format!("{} {} {}", r.source_ip, r.destination, r.egress_ip.unwrap()))
            .collect();
        assert_eq!(web1, vec!["10.244.1.10 0.0.0.0/0 10.10.0.11", "fd00:244:1::10 ::/0 fd00:10::1"]);
        let o = outcome(&p, "dual");
        assert_eq!(o.ips.len(), 2);
        assert_ne!(o.ips[0].node, o.ips[1].node, "each IP on its own gateway: {o:?}");
        assert!(o.ips.iter().all(|i| i.node.is_some()));
    }

    #[test]
    fn nodes_peer_only_with_the_nodes_they_exchange_tunnelled_traffic_with() {
        let mut f = Fixture::lab();
        // prod/web-1 on node-1 and prod/web-2 on node-2 leave through node-4 (static IP).
        f.egresses = vec![ns_egress("e", "prod", Some("web"), None, Some("10.10.0.104"))];
        let nps = f.plan().node_plans();
        let peers = |n: &str| nps[n].peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>();
        assert_eq!(peers("node-1"), vec!["node-4"]);
        assert_eq!(peers("node-2"), vec!["node-4"]);
        assert_eq!(peers("node-4"), vec!["node-1", "node-2"]);
        assert!(peers("node-3").is_empty() && peers("node-5").is_empty() && peers("node-6").is_empty());
        assert_eq!(nps["node-4"].peers[0].ips, vec!["10.10.0.101".parse::<IpAddr>().unwrap()]);
        // A pod on its own gateway needs no tunnel; no Egress at all, no peers anywhere.
        f.egresses = vec![ns_egress("e", "prod", Some("web"), None, Some("10.10.0.102"))];
        let nps = f.plan().node_plans();
        assert_eq!(nps["node-2"].peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), vec!["node-1"]);
        f.egresses.clear();
        assert!(f.plan().node_plans().values().all(|np| np.peers.is_empty()));
        // node_plan (what an agent computes) agrees with node_plans.
        f.egresses = vec![ns_egress("e", "prod", Some("web"), None, Some("10.10.0.104"))];
        let p = f.plan();
        assert_eq!(p.node_plan("node-4"), p.node_plans().remove("node-4"));
    }

    #[test]
    fn two_pods_with_one_address_steer_once_and_warn() {
        let mut f = Fixture::lab();
        f.pools.push(mk_pool("p", &[("10.10.0.11", "10.10.0.20")], &[]));
        f.egresses = vec![ns_egress("e", "prod", Some("web"), Some("p"), None)];
        // A stale copy of prod/web-1 on a node that no longer exists, sorting first by name.
        let mut stale = mk_pod("prod", "web-0", &[("app", "web")], "node-gone", "10.244.1.10");
        f.pods.insert(0, stale.clone());
        let p = f.plan();
        let web1: Vec<&Rule> = p.rules.iter().filter(|r| r.source_ip.to_string() == "10.244.1.10").collect();
        assert_eq!(web1.len(), 1, "{:?}", p.rules);
        assert_eq!(web1[0].source_node.as_deref(), Some("node-1"));
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        let w = p.warnings[0].to_string();
        assert!(
            w.starts_with("Pod/prod/web-0: status.podIPs: 10.244.1.10 is also the address of Pod prod/web-1"),
            "{w}"
        );
        // Both on existing nodes: namespace/name order decides, whatever the input order.
        stale.node = Some("node-3".into());
        f.pods[0] = stale.clone();
        let a = f.plan();
        f.pods.remove(0);
        f.pods.push(stale);
        let b = f.plan();
        assert_eq!(a.rules, b.rules);
        assert_eq!(a.warnings, b.warnings);
        let r: Vec<&Rule> = a.rules.iter().filter(|r| r.source_ip.to_string() == "10.244.1.10").collect();
        assert_eq!((r.len(), r[0].source_node.as_deref()), (1, Some("node-3")));
        assert!(a.warnings[0].object == "Pod/prod/web-1");
        // The node plans hold one entry per (source, destination): what nft needs.
        for np in a.node_plans().values() {
            let mut seen = BTreeSet::new();
            assert!(np.snat.iter().all(|s| seen.insert((s.source, s.destination))));
        }
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever the pods (addresses shared, nodes missing) and Egresses (overlapping
            /// destinations and exclusions), no source holds two overlapping destinations: the
            /// datapath's interval maps could not take them.
            #[test]
            fn one_entry_per_source_and_destination(
                pods in proptest::collection::vec((0u8..4, 0u8..4, 0u8..8, any::<bool>()), 0..12),
                egresses in proptest::collection::vec((0u8..3, 0u8..4, any::<bool>(), 0i64..3), 1..5),
            ) {
                let mut f = Fixture::lab();
                f.pools.push(mk_pool("p", &[("10.10.0.11", "10.10.0.20")], &[]));
                let nss = ["prod", "staging", "default", "other"];
                f.pods = pods.iter().enumerate().map(|(i, &(ns, ip, node, web))| {
                    let mut p = mk_pod(nss[ns as usize], &format!("p{i}"), &[("app", if web { "web" } else { "db" })], &format!("node-{node}"), &format!("10.244.1.{ip}"));
                    if node == 0 { p.node = None; }
                    p
                }).collect();
                let dests = ["0.0.0.0/0", "203.0.113.0/24", "203.0.113.0/25", "198.51.100.0/24"];
                f.egresses = egresses.iter().enumerate().map(|(i, &(ns, d, excl, t))| {
                    let mut e = ns_egress(&format!("e{i}"), nss[ns as usize], Some("web"), Some("p"), None);
                    e.metadata.creation_timestamp = Some(ts(t));
                    e.spec.destination_cidrs = vec![dests[d as usize].to_string()];
                    if excl && d == 1 { e.spec.excluded_cidrs = vec!["203.0.113.0/26".into()]; }
                    e
                }).collect();
                let p = f.plan();
                let mut by_source: BTreeMap<IpAddr, Vec<Span>> = BTreeMap::new();
                for r in &p.rules {
                    let s = Span::of_net(&r.destination);
                    let seen = by_source.entry(r.source_ip).or_default();
                    prop_assert!(!seen.iter().any(|o| o.overlaps(&s)), "{} {} twice", r.source_ip, r.destination);
                    seen.push(s);
                }
            }
        }
    }
}
