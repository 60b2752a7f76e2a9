//! The in-memory index: object sources feed it [`Change`] events; it keeps what the planner
//! needs in incremental form and answers "what must node N hold" without re-planning the cluster.
//!
//! After linkerd2's policy-controller index: `apply`, `delete` and `reset` per kind, tested
//! synchronously by feeding events. What each change costs:
//!
//! - **Pods** are grouped by `(namespace, labels)`; a group knows the Egresses that select it.
//!   A pod add, delete or move touches its group only; a new group is matched against the
//!   Egresses whose namespace selector admits its namespace (kept per namespace). A pod's
//!   labels live in its group only and its namespace and node names are shared: agents hold
//!   every pod of the cluster, so per-pod memory is the agent's memory (`examples/index_memory.rs`).
//! - **Namespaces**: a label change re-matches that namespace's groups.
//! - **Egresses and pools** are few (thousands at most). A pool change (or many Egress changes
//!   at once) re-validates and re-allocates them all (the cross-object rules need that). A
//!   change of a few native Egresses re-validates only those against the pools' models; when it
//!   keeps what allocation reads (pool, static and status IP, age, family), allocations, the
//!   overlap order and placements are kept too, and only the destination partitions holding a
//!   changed Egress are dropped. Either way an Egress whose selection changed is re-matched
//!   against the groups it selected and those of the namespaces it now admits only.
//! - **Nodes and the live set** re-place egress IPs (a function of Egresses, pools and nodes,
//!   not of pods).
//! - **A node's plan** ([`Index::node_plan`]) is built from the rules of the pods on that node
//!   plus those of the pods it serves as a gateway, never from the whole cluster's rules. The
//!   last few nodes' plans keep each group's rules while the group's version and the plan
//!   epoch (what rules read besides the group) stay the same, so a pod change recomputes the
//!   groups it touched only.
//!
//! The result is the same as [`crate::planner::plan`] over the same objects: a property test
//! feeds random event sequences and compares every node's plan.

use crate::event::{Change, Event, Kind};
use crate::ipam::{self, Allocations};
use crate::model::{Egress, FailurePolicy, Namespace, Node, Pod};
use crate::net::Family;
use crate::placement;
use crate::planner::{self, ClusterConfig, EgressOutcome, Inputs, NodePlan, Plan, PoolOutcome, Rule};
use crate::policy::{
    self, CompiledSet, Firewall, FirewallPod, FirewallSet, PolicyId, ValidatedPolicies, validate_policies,
};
use crate::selector::{Labels, PackedLabels};
use crate::validate::{self, Problem, Validated};
use egret_api::compat::{self, AntreaEgress, AntreaPool, CiliumPolicy, Translated};
use egret_api::v1alpha1 as api;
use hashbrown::HashTable;
use ipnet::IpNet;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

type GroupId = u32;
/// A pod's slot in [`Index::pods`].
type PodId = u32;

/// What the index keeps of a pod. Its labels live in its group only, and the namespace and
/// node names are shared (interned) with every other pod's: at 100,000 pods (agents watch every
/// pod of the cluster) per-pod copies would dominate the agent's memory.
#[derive(Debug)]
struct PodEntry {
    namespace: Arc<str>,
    /// Its own copy (the lookup table [`Index::pod_ids`] holds ids, not names).
    name: Box<str>,
    node: Option<Arc<str>>,
    ips: PodIps,
    group: GroupId,
    /// Whether another pod claims one of its addresses (then the owner rule applies).
    shared: bool,
}

/// A pod's addresses. Pods have one, or two of different families (dual stack): those are
/// kept inline in 24 bytes (an `IpAddr` takes 17, a boxed slice a heap allocation per pod, which
/// at 100,000 pods costs more than the addresses themselves).
#[derive(Debug, Clone, PartialEq, Eq)]
enum PodIps {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
    V4V6(Ipv4Addr, Ipv6Addr),
    V6V4(Ipv6Addr, Ipv4Addr),
    /// None, two of one family, or more than two.
    Other(Box<[IpAddr]>),
}

const _: () = assert!(std::mem::size_of::<PodIps>() == 24);

impl PodIps {
    fn new(ips: &[IpAddr]) -> PodIps {
        match *ips {
            [IpAddr::V4(a)] => PodIps::V4(a),
            [IpAddr::V6(a)] => PodIps::V6(a),
            [IpAddr::V4(a), IpAddr::V6(b)] => PodIps::V4V6(a, b),
            [IpAddr::V6(a), IpAddr::V4(b)] => PodIps::V6V4(a, b),
            _ => PodIps::Other(ips.into()),
        }
    }

    /// The addresses, in the pod's order.
    fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let (inline, rest): ([Option<IpAddr>; 2], &[IpAddr]) = match self {
            PodIps::V4(a) => ([Some((*a).into()), None], &[]),
            PodIps::V6(a) => ([Some((*a).into()), None], &[]),
            PodIps::V4V6(a, b) => ([Some((*a).into()), Some((*b).into())], &[]),
            PodIps::V6V4(a, b) => ([Some((*a).into()), Some((*b).into())], &[]),
            PodIps::Other(v) => ([None, None], v),
        };
        inline.into_iter().flatten().chain(rest.iter().copied())
    }
}

/// The pods claiming each pod address. Almost every address has one claimant (more: a stale
/// pod object beside its successor), so the first is kept without a `Vec` (which cost a heap
/// allocation per pod) and the others, in claim order, apart.
#[derive(Debug, Default)]
struct AddrClaims {
    first: HashMap<IpAddr, PodId>,
    more: HashMap<IpAddr, Vec<PodId>>,
}

impl AddrClaims {
    fn add(&mut self, ip: IpAddr, id: PodId) {
        match self.first.entry(ip) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(id);
            }
            std::collections::hash_map::Entry::Occupied(o) if *o.get() != id => {
                let more = self.more.entry(ip).or_default();
                if !more.contains(&id) {
                    more.push(id);
                }
            }
            std::collections::hash_map::Entry::Occupied(_) => {}
        }
    }

    fn remove(&mut self, ip: &IpAddr, id: PodId) {
        if self.first.get(ip) == Some(&id) {
            // The next claimant, if any, becomes the first.
            match self.more.get_mut(ip) {
                Some(more) => {
                    self.first.insert(*ip, more.remove(0));
                    if more.is_empty() {
                        self.more.remove(ip);
                    }
                }
                None => {
                    self.first.remove(ip);
                }
            }
        } else if let Some(more) = self.more.get_mut(ip) {
            more.retain(|&c| c != id);
            if more.is_empty() {
                self.more.remove(ip);
            }
        }
    }

    /// Every pod claiming `ip`.
    fn of(&self, ip: &IpAddr) -> impl Iterator<Item = PodId> + '_ {
        self.first.get(ip).into_iter().chain(self.more.get(ip).into_iter().flatten()).copied()
    }

    /// The pods claiming `ip` when there are several.
    fn contested(&self, ip: &IpAddr) -> Option<impl Iterator<Item = PodId> + '_> {
        self.more.contains_key(ip).then(|| self.of(ip))
    }

    /// The addresses claimed by several pods.
    fn contested_ips(&self) -> impl Iterator<Item = &IpAddr> {
        self.more.keys()
    }
}

/// Disjoint destination blocks and the rank of the Egress deciding each.
type Partition = Arc<Part>;

/// One partition of the destinations between a set of Egresses.
#[derive(Debug)]
struct Part {
    /// The blocks and the rank of the Egress deciding each.
    blocks: Vec<(IpNet, usize)>,
    /// The blocks each rank decides: a gateway reads only those of the Egresses it serves,
    /// often a few blocks out of thousands.
    by_rank: HashMap<usize, Vec<IpNet>>,
}

impl Part {
    fn new(blocks: Vec<(IpNet, usize)>) -> Part {
        let mut by_rank: HashMap<usize, Vec<IpNet>> = HashMap::new();
        for &(net, r) in &blocks {
            by_rank.entry(r).or_default().push(net);
        }
        Part { blocks, by_rank }
    }
}

/// What rules of one rank carry: the Egress, its IP, its gateway, and whether it is skipped
/// (no gateway and fallback to the node IP), for one family. Resolved once per node plan.
type Resolved = (Arc<str>, Arc<planner::Choices>, bool);

/// The destination blocks a group's pods get rules for, each with what its rule carries.
type Entries = Arc<Vec<(IpNet, Resolved)>>;

/// Pods of one namespace with identical labels: they are selected by the same Egresses.
#[derive(Debug)]
struct Group {
    namespace: Arc<str>,
    /// Packed (one allocation, shared with [`Index::group_ids`]): there are many groups.
    labels: PackedLabels,
    pods: BTreeSet<PodId>,
    /// Egresses whose namespace and pod selectors select this group (node selectors are
    /// applied per pod, since they depend on the pod's node). Sorted; a boxed slice, since a
    /// group has a few and a set's B-tree node is sized for eleven (there are many groups).
    matched: Box<[Arc<str>]>,
    /// The ranks of `matched`, sorted, as of an order generation (`None`: `matched` changed).
    ranks: Option<(u64, Arc<[usize]>)>,
    /// Bumped whenever its pods, their addresses' owners or its matches change: node plans
    /// keep each group's rules while it (and [`Index::plan_epoch`]) stays the same.
    version: u64,
}

/// A gateway asking for the rules it serves: its name and the ranks of the Egresses with an
/// IP on it.
type Served<'a> = (&'a str, &'a BTreeSet<usize>);

/// The rules one group contributes to one node's plan.
type GroupRules = Arc<Vec<Rule>>;

/// The rules of one node's plan per group, as of a plan epoch and each group's version.
#[derive(Debug, Default)]
struct NodeCache {
    epoch: u64,
    /// `(group, served as a gateway)` -> (group version, rules).
    groups: HashMap<(GroupId, bool), (u64, GroupRules)>,
}

/// How many nodes' plans keep their per-group rules (an agent asks for its own only).
const CACHED_NODES: usize = 8;

/// Egresses and pools and what follows from them alone: validation, allocation, order.
#[derive(Debug, Default)]
struct Objects {
    validated: Validated,
    allocations: Allocations,
    /// Egresses with a selection, oldest first then by name (the overlap rule's order).
    order: Vec<Arc<str>>,
    rank: HashMap<Arc<str>, usize>,
    /// Egresses with a node selector (pods of a group then differ by their node).
    node_selective: HashSet<Arc<str>>,
}

/// What follows from the Nodes alone (read from [`Index::nodes`], not copied: agents hold
/// every Node of the cluster).
#[derive(Debug, Default)]
struct NodeFacts {
    /// What no pool may cover (node addresses, pod and service CIDRs, configured addresses).
    reserved: validate::Reserved,
    cluster_cidrs: Vec<IpNet>,
}

/// A translation of a foreign object that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslationProblem {
    /// The foreign kind.
    pub kind: Kind,
    /// The object.
    pub name: String,
    /// What the compat layer said (field and reason).
    pub reason: String,
}

/// The index. See the module documentation.
#[derive(Debug)]
pub struct Index {
    config: ClusterConfig,
    expected: BTreeSet<Kind>,
    synced: BTreeSet<Kind>,

    pools: BTreeMap<String, api::ExternalIPPool>,
    egresses: BTreeMap<String, api::Egress>,
    antrea_pools: BTreeMap<String, AntreaPool>,
    antrea_egresses: BTreeMap<String, AntreaEgress>,
    cilium: BTreeMap<String, CiliumPolicy>,
    translation_problems: BTreeMap<(Kind, String), TranslationProblem>,

    /// The Nodes in name order (the planner's steps take them as a slice: a map would need a
    /// second copy).
    nodes: Vec<Node>,
    namespaces: HashMap<String, Namespace>,
    /// Pod slots (`None`: free, listed in `free_pods`).
    pods: Vec<Option<PodEntry>>,
    free_pods: Vec<PodId>,
    /// Pods by namespace and name: the table holds ids only, hashed and compared through the
    /// pods' own names (a map keyed by names kept a second reference and a map per namespace).
    pod_ids: HashTable<PodId>,
    hasher: RandomState,
    /// Pods per node (the keys are the interned node names).
    node_pods: HashMap<Arc<str>, BTreeSet<PodId>>,
    /// The pods claiming each pod address.
    addr_claims: AddrClaims,

    groups: HashMap<GroupId, Group>,
    group_ids: HashMap<Arc<str>, HashMap<PackedLabels, GroupId>>,
    next_group: GroupId,
    ns_groups: HashMap<String, BTreeSet<GroupId>>,
    egress_groups: HashMap<Arc<str>, BTreeSet<GroupId>>,
    /// Per namespace, the Egresses whose namespace selector admits it (only namespaces that
    /// exist: pods of a namespace the index does not know are selected by nothing).
    /// Namespace and Egress names here are shared (`Arc`): a quarter of the benchmark's
    /// Egresses admit 200 namespaces each, so copies cost a string per pair.
    ns_candidates: HashMap<Arc<str>, BTreeSet<Arc<str>>>,
    /// The reverse: per Egress, the namespaces admitting it.
    admitted: HashMap<Arc<str>, BTreeSet<Arc<str>>>,

    live: BTreeSet<String>,
    /// Validation and allocation, as of the last time they were computed.
    objects: Option<Objects>,
    /// Whether Egress or pool objects changed since `objects` was computed.
    objects_stale: bool,
    /// The native Egresses changed since then, when only those changed (`None`: anything may
    /// have, re-validate everything).
    dirty_egresses: Option<BTreeSet<String>>,
    /// The validated Egresses the groups were last matched against.
    matched_against: BTreeMap<String, Egress>,
    /// Placement and conditions; `None` when objects, Nodes or the live set changed since.
    outcomes: Option<BTreeMap<String, EgressOutcome>>,
    /// `None` when Nodes changed since.
    node_facts: Option<NodeFacts>,
    /// Placement per group of egress IPs (an Egress's), valid while the eligible nodes of
    /// every pool are unchanged (emptied when the live set, the Nodes or the pools change).
    placed: HashMap<Vec<IpAddr>, Vec<Option<String>>>,
    /// Bumped whenever the order (so the ranks) changes: groups' cached ranks are then stale.
    order_gen: u64,
    /// Bumped whenever anything a rule reads besides its group changes (validation,
    /// allocation, order, partitions, placement, Nodes): every cached plan piece is then stale.
    plan_epoch: u64,
    /// Per-group rules of the last few nodes' plans, most recent last.
    plan_cache: Vec<(String, NodeCache)>,
    /// The Egress order the partitions' ranks refer to.
    objects_order: Option<Vec<Arc<str>>>,
    /// Destination partitions per family and set of matching Egresses (by rank); dropped when
    /// the order or a member's destinations change.
    partitions: HashMap<(Family, Vec<usize>), Partition>,

    /// ClusterEgressPolicies by name.
    cluster_policies: BTreeMap<String, api::ClusterEgressPolicy>,
    /// EgressPolicies by `namespace/name`.
    egress_policies: BTreeMap<String, api::EgressPolicy>,
    /// NetworkPolicies by `namespace/name` (kept only while enforcing them).
    network_policies: BTreeMap<String, NetworkPolicy>,
    /// Whether NetworkPolicies are enforced (see [`Index::enforce_network_policies`]).
    enforce_network_policies: bool,
    /// All validated; `None` when any changed since.
    valid_policies: Option<Arc<ValidatedPolicies>>,
    /// Compiled policy sets by their policies; emptied when any policy changes.
    compiled: HashMap<Vec<PolicyId>, Arc<CompiledSet>>,
}

/// Applies an event to a map of objects keyed by name. Returns whether anything changed.
fn objects_event<T: PartialEq>(
    map: &mut BTreeMap<String, T>,
    ev: Event<T>,
    name: impl Fn(&T) -> Option<String>,
) -> bool {
    match ev {
        Event::Apply(obj) => {
            let Some(n) = name(&obj) else { return false };
            if map.get(&n) == Some(&obj) {
                return false;
            }
            map.insert(n, obj);
            true
        }
        Event::Delete(r) => map.remove(&r.name).is_some(),
        Event::Reset(list) => {
            let new: BTreeMap<String, T> = list.into_iter().filter_map(|o| Some((name(&o)?, o))).collect();
            if *map == new {
                return false;
            }
            *map = new;
            true
        }
    }
}

/// Removes `v` from the set under `key`, and the set once it is empty.
fn unlink<K, Q, V>(map: &mut HashMap<K, BTreeSet<V>>, key: &Q, v: &V)
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
    V: Ord,
{
    if let Some(set) = map.get_mut(key) {
        set.remove(v);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

fn pool_outcomes(a: &Allocations) -> Vec<PoolOutcome> {
    a.usage.iter().map(|(name, u)| PoolOutcome { name: name.clone(), total: u.total, used: u.used }).collect()
}

/// Whether an Egress's namespace and pod selectors select pods with `labels` in a namespace
/// with `ns_labels`.
fn selects(e: &Egress, ns_labels: &Labels, labels: &PackedLabels) -> bool {
    !e.applied_to.selects_nothing()
        && e.applied_to.namespaces.as_ref().is_none_or(|s| s.matches(ns_labels))
        && e.applied_to.pods.as_ref().is_none_or(|s| s.matches(labels))
}

/// The rules of some groups, sorted by source, then destination. Each group's rules come in
/// runs of one source (one pod address's rules, already in destination order): sorting the
/// runs is enough, and each rule is copied once.
fn sort_rules(pieces: &[GroupRules]) -> Vec<Rule> {
    let key = |r: &Rule| (r.source_ip, r.destination.network(), r.destination.prefix_len());
    let mut runs: Vec<&[Rule]> = Vec::new();
    for piece in pieces {
        let mut rest: &[Rule] = piece;
        while let Some(first) = rest.first() {
            let n = rest.iter().position(|r| r.source_ip != first.source_ip).unwrap_or(rest.len());
            let (run, tail) = rest.split_at(n);
            runs.push(run);
            rest = tail;
        }
    }
    runs.sort_unstable_by_key(|run| run[0].source_ip);
    let mut out: Vec<Rule> = Vec::with_capacity(runs.iter().map(|r| r.len()).sum());
    for run in runs {
        out.extend_from_slice(run);
    }
    // Two runs of one source (not produced today) would need the full sort.
    if !out.is_sorted_by_key(key) {
        out.sort_unstable_by_key(key);
    }
    out
}

/// [`planner::owner_rank`] of a pod the index holds.
fn owner_rank<'a>(e: &'a PodEntry, nodes: &[Node]) -> (bool, &'a str, &'a str) {
    (e.node.as_deref().is_none_or(|n| find_node(nodes, n).is_none()), &e.namespace, &e.name)
}

/// The Node named `name` in a list sorted by name.
fn find_node<'a>(nodes: &'a [Node], name: &str) -> Option<&'a Node> {
    nodes.binary_search_by(|n| n.name.as_str().cmp(name)).ok().map(|i| &nodes[i])
}

/// Applies an event to the Nodes, kept sorted by name. Returns whether anything changed.
fn nodes_event(nodes: &mut Vec<Node>, ev: Event<Node>) -> bool {
    match ev {
        Event::Apply(node) => match nodes.binary_search_by(|n| n.name.cmp(&node.name)) {
            Ok(i) if nodes[i] == node => false,
            Ok(i) => {
                nodes[i] = node;
                true
            }
            Err(i) => {
                nodes.insert(i, node);
                true
            }
        },
        Event::Delete(r) => match nodes.binary_search_by(|n| n.name.cmp(&r.name)) {
            Ok(i) => {
                nodes.remove(i);
                true
            }
            Err(_) => false,
        },
        Event::Reset(mut list) => {
            // The last of several Nodes of one name wins (as an apply of each in turn would).
            list.reverse();
            list.sort_by(|a, b| a.name.cmp(&b.name));
            list.dedup_by(|later, first| later.name == first.name);
            if *nodes == list {
                return false;
            }
            *nodes = list;
            true
        }
    }
}

/// What allocation and placement read of an Egress (besides its name).
fn allocation_inputs(e: &Egress) -> impl PartialEq + '_ {
    (&e.ips, &e.created, &e.families)
}

fn admits_namespace(e: &Egress, ns_labels: &Labels) -> bool {
    !e.applied_to.selects_nothing() && e.applied_to.namespaces.as_ref().is_none_or(|s| s.matches(ns_labels))
}

impl Index {
    /// An empty index that waits for the initial list of every kind in `expected`.
    pub fn new(config: ClusterConfig, expected: impl IntoIterator<Item = Kind>) -> Index {
        Index {
            config,
            expected: expected.into_iter().collect(),
            synced: BTreeSet::new(),
            pools: BTreeMap::new(),
            egresses: BTreeMap::new(),
            antrea_pools: BTreeMap::new(),
            antrea_egresses: BTreeMap::new(),
            cilium: BTreeMap::new(),
            translation_problems: BTreeMap::new(),
            nodes: Vec::new(),
            namespaces: HashMap::new(),
            pods: Vec::new(),
            free_pods: Vec::new(),
            pod_ids: HashTable::new(),
            hasher: RandomState::new(),
            node_pods: HashMap::new(),
            addr_claims: AddrClaims::default(),
            groups: HashMap::new(),
            group_ids: HashMap::new(),
            next_group: 0,
            ns_groups: HashMap::new(),
            egress_groups: HashMap::new(),
            ns_candidates: HashMap::new(),
            admitted: HashMap::new(),
            live: BTreeSet::new(),
            objects: None,
            objects_stale: true,
            dirty_egresses: None,
            matched_against: BTreeMap::new(),
            outcomes: None,
            node_facts: None,
            placed: HashMap::new(),
            order_gen: 0,
            plan_epoch: 0,
            plan_cache: Vec::new(),
            objects_order: None,
            partitions: HashMap::new(),
            cluster_policies: BTreeMap::new(),
            egress_policies: BTreeMap::new(),
            network_policies: BTreeMap::new(),
            enforce_network_policies: false,
            valid_policies: None,
            compiled: HashMap::new(),
        }
    }

    /// The kinds Egret's own sources always feed: Egret's kinds, Nodes, Namespaces and Pods.
    pub fn core_kinds() -> [Kind; 7] {
        [Kind::Pool, Kind::Egress, Kind::Node, Kind::Namespace, Kind::Pod, Kind::ClusterPolicy, Kind::Policy]
    }

    /// Enforces the egress part of Kubernetes NetworkPolicies (`egret agent
    /// --enforce-network-policy`): waits for their initial list, and the firewall evaluates
    /// them. Without it, NetworkPolicy changes are dropped on arrival.
    pub fn enforce_network_policies(&mut self) {
        self.enforce_network_policies = true;
        self.expected.insert(Kind::NetworkPolicy);
        self.policies_changed();
    }

    /// Whether every expected kind has delivered its initial list: nothing may reconcile
    /// before that, or a half-listed cluster would look like deletions.
    pub fn is_synced(&self) -> bool {
        self.expected.is_subset(&self.synced)
    }

    /// Marks `kind`'s initial list as delivered when a source streams it as applies and deletes
    /// instead of one [`Event::Reset`] (to never hold a second copy of a large list).
    pub fn mark_synced(&mut self, kind: Kind) {
        self.synced.insert(kind);
    }

    /// Kinds still waiting for their initial list.
    pub fn waiting_for(&self) -> Vec<Kind> {
        self.expected.difference(&self.synced).copied().collect()
    }

    /// Applies one change.
    pub fn apply(&mut self, change: Change) {
        let kind = change.kind();
        if change.is_reset() {
            self.synced.insert(kind);
        }
        let objects_changed = match change {
            Change::Pools(ev) => objects_event(&mut self.pools, ev, |p| p.metadata.name.clone()),
            Change::Egresses(ev) => {
                let names = match &ev {
                    Event::Apply(e) => e.metadata.name.clone().map(|n| vec![n]),
                    Event::Delete(r) => Some(vec![r.name.clone()]),
                    Event::Reset(_) => None,
                };
                let changed = objects_event(&mut self.egresses, ev, |e| e.metadata.name.clone());
                if changed {
                    match (names, self.dirty_egresses.as_mut()) {
                        (Some(names), Some(dirty)) => dirty.extend(names),
                        _ => self.dirty_egresses = None,
                    }
                }
                changed
            }
            Change::AntreaPools(ev) => objects_event(&mut self.antrea_pools, ev, |p| p.metadata.name.clone()),
            Change::AntreaEgresses(ev) => objects_event(&mut self.antrea_egresses, ev, |e| e.metadata.name.clone()),
            Change::CiliumPolicies(ev) => objects_event(&mut self.cilium, ev, |c| c.metadata.name.clone()),
            Change::Nodes(ev) => {
                self.node_event(ev);
                false
            }
            Change::Namespaces(ev) => {
                self.namespace_event(ev);
                false
            }
            Change::Pods(ev) => {
                self.pod_event(ev);
                false
            }
            Change::ClusterPolicies(ev) => {
                if objects_event(&mut self.cluster_policies, ev, |p| p.metadata.name.clone()) {
                    self.policies_changed();
                }
                false
            }
            Change::Policies(ev) => {
                // Keyed by `namespace/name`: a delete names its object the same way.
                let ev = match ev {
                    Event::Delete(r) => Event::Delete(crate::event::ObjectRef::cluster(r.to_string())),
                    other => other,
                };
                let key = |p: &api::EgressPolicy| {
                    Some(format!("{}/{}", p.metadata.namespace.as_deref()?, p.metadata.name.as_deref()?))
                };
                if objects_event(&mut self.egress_policies, ev, key) {
                    self.policies_changed();
                }
                false
            }
            Change::NetworkPolicies(ev) => {
                if !self.enforce_network_policies {
                    return;
                }
                let ev = match ev {
                    Event::Delete(r) => Event::Delete(crate::event::ObjectRef::cluster(r.to_string())),
                    other => other,
                };
                let key = |p: &NetworkPolicy| {
                    Some(format!("{}/{}", p.metadata.namespace.as_deref()?, p.metadata.name.as_deref()?))
                };
                if objects_event(&mut self.network_policies, ev, key) {
                    self.policies_changed();
                }
                false
            }
        };
        if objects_changed {
            if !matches!(kind, Kind::Egress) {
                self.dirty_egresses = None;
                // A pool's node selector decides its eligible nodes.
                self.placed.clear();
                self.outcomes = None;
            }
            // Native Egress changes: `objects` drops the outcomes unless the change keeps every
            // allocation (it re-validates before anything reads them).
            self.objects_stale = true;
        }
    }

    fn policies_changed(&mut self) {
        self.valid_policies = None;
        self.compiled.clear();
    }

    /// The valid policies and the problems of the others.
    pub fn policies(&mut self) -> Arc<ValidatedPolicies> {
        if let Some(v) = &self.valid_policies {
            return v.clone();
        }
        let cluster: Vec<api::ClusterEgressPolicy> = self.cluster_policies.values().cloned().collect();
        let namespaced: Vec<api::EgressPolicy> = self.egress_policies.values().cloned().collect();
        let mut v = validate_policies(&cluster, &namespaced);
        if self.enforce_network_policies {
            let np: Vec<NetworkPolicy> = self.network_policies.values().cloned().collect();
            v.extend(policy::validate_network_policies(&np));
        }
        let v = Arc::new(v);
        self.valid_policies = Some(v.clone());
        v
    }

    /// The firewall of `node`'s pods: the policies applying to each, compiled once per distinct
    /// list of policies.
    pub fn firewall(&mut self, node: &str) -> Firewall {
        let valid = self.policies();
        let mut fw = Firewall::default();
        if valid.policies.is_empty() {
            return fw;
        }
        let empty = Labels::new();
        let node_labels = find_node(&self.nodes, node).map_or(&empty, |n| &n.labels);
        let mut sets: HashMap<Vec<PolicyId>, usize> = HashMap::new();
        let mut ids: Vec<PodId> = self.node_pods.get(node).map(|s| s.iter().copied().collect()).unwrap_or_default();
        ids.sort_by(|a, b| {
            let key = |id: &PodId| self.pod(*id).map(|e| (e.namespace.clone(), e.name.clone()));
            key(a).cmp(&key(b))
        });
        let mut seen_ips = HashSet::new();
        let mut fresh: HashMap<Vec<PolicyId>, Arc<CompiledSet>> = HashMap::new();
        for id in ids {
            let Some(e) = self.pod(id) else { continue };
            let Some(g) = self.groups.get(&e.group) else { continue };
            let ns_labels = self.namespaces.get(&*e.namespace).map_or(&empty, |n| &n.labels);
            let applying = policy::applicable(&valid.policies, &e.namespace, ns_labels, &g.labels, node_labels);
            if applying.is_empty() {
                continue;
            }
            let key: Vec<PolicyId> = applying.iter().map(|p| p.id.clone()).collect();
            let set = match sets.get(&key) {
                Some(&i) => i,
                None => {
                    let compiled = match self.compiled.get(&key).or_else(|| fresh.get(&key)) {
                        Some(c) => c.clone(),
                        None => {
                            let c = Arc::new(policy::compile(&applying));
                            fresh.insert(key.clone(), c.clone());
                            c
                        }
                    };
                    fw.sets.push(FirewallSet { policies: key.clone(), compiled });
                    sets.insert(key, fw.sets.len() - 1);
                    fw.sets.len() - 1
                }
            };
            for ip in e.ips.iter() {
                // An address two pod objects claim (a stale one) is governed as its owner's.
                if e.shared && self.contested_owner(&ip).is_some_and(|owner| owner != id) {
                    continue;
                }
                if seen_ips.insert(ip) {
                    fw.pods.push(FirewallPod { ip, pod: format!("{}/{}", e.namespace, e.name), set });
                }
            }
        }
        self.compiled.extend(fresh);
        fw.pods.sort_by_key(|p| p.ip);
        fw
    }

    /// The nodes the index holds, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter()
    }

    /// Sets the nodes that may host egress IPs (alive and eligible). Placement follows it.
    pub fn set_live(&mut self, live: &BTreeSet<String>) {
        if &self.live != live {
            self.live = live.clone();
            self.outcomes = None;
            self.placed.clear();
        }
    }

    /// The interfaces valid Egresses take egress IPs from (`gatewayNodes[].interface`): those
    /// whose addresses agents publish on their Node.
    pub fn named_interfaces(&mut self) -> BTreeSet<String> {
        let v = &self.objects().validated;
        v.egresses.values().flat_map(|e| &e.ips).filter_map(|s| s.interface.clone()).collect()
    }

    /// Validation problems of the Egret objects (translated ones included).
    pub fn validation_problems(&mut self) -> &[Problem] {
        &self.objects().validated.problems
    }

    /// Failed translations of foreign objects.
    pub fn translation_problems(&mut self) -> Vec<TranslationProblem> {
        self.objects();
        self.translation_problems.values().cloned().collect()
    }

    /// The Egresses (native and translated) as API objects.
    pub fn api_egresses(&self) -> Vec<api::Egress> {
        self.all_objects().1
    }

    /// The pools (native and translated) as API objects.
    pub fn api_pools(&self) -> Vec<api::ExternalIPPool> {
        self.all_objects().0
    }

    /// Brings validation, allocation, placement and the Node facts up to date now (they are
    /// otherwise computed on the first read after a change).
    pub fn settle(&mut self) {
        self.refresh();
    }

    /// Number of pod groups (distinct namespace and labels).
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// The cluster-level plan without steering rules: Egress outcomes (IP, gateway,
    /// conditions), pool usage and cluster CIDRs. What the controller writes as status.
    pub fn control_plan(&mut self) -> Plan {
        self.refresh();
        let (Some(o), Some(out), Some(f)) = (&self.objects, &self.outcomes, &self.node_facts) else {
            return Plan::default();
        };
        Plan {
            egresses: out.values().cloned().collect(),
            pools: pool_outcomes(&o.allocations),
            rules: Vec::new(),
            cluster_cidrs: f.cluster_cidrs.clone(),
            node_ips: self.nodes.iter().map(|n| (n.name.clone(), n.internal_ips.clone())).collect(),
            warnings: self.warnings(),
        }
    }

    /// What `node` must hold, or `None` when the node is unknown.
    pub fn node_plan(&mut self, node: &str) -> Option<NodePlan> {
        // An unknown node has no plan.
        find_node(&self.nodes, node)?;
        self.refresh();
        let rules = self.rules_for(node);
        let (out, f) = (self.outcomes.as_ref()?, self.node_facts.as_ref()?);
        // A node's plan reads the addresses of itself and of the nodes its rules name only.
        let mut names: HashSet<&str> = HashSet::from([node]);
        // Neighbouring rules mostly name the same nodes (one pod's, one gateway's): insert a
        // name only when it differs from the previous rule's.
        let (mut gateway, mut source): (Option<&Arc<str>>, Option<&Arc<str>>) = (None, None);
        for r in &rules {
            if let Some(g) = &r.gateway
                && !gateway.is_some_and(|x| Arc::ptr_eq(x, g))
            {
                names.insert(g);
                gateway = Some(g);
            }
            if let Some(n) = &r.source_node
                && !source.is_some_and(|x| Arc::ptr_eq(x, n))
            {
                names.insert(n);
                source = Some(n);
            }
        }
        let node_ips = names
            .into_iter()
            .filter_map(|n| Some((n.to_string(), find_node(&self.nodes, n)?.internal_ips.clone())))
            .collect();
        let plan = Plan {
            // A node's plan reads only the outcomes of the IPs it hosts.
            egresses: out.values().filter(|o| o.served_by(node)).cloned().collect(),
            pools: Vec::new(),
            rules,
            cluster_cidrs: f.cluster_cidrs.clone(),
            node_ips,
            warnings: Vec::new(),
        };
        let mut np = plan.node_plan(node)?;
        np.firewall = self.firewall(node);
        Some(np)
    }

    // ---- Egresses and pools ----

    /// Native objects plus the translations of foreign ones, native first.
    fn all_objects(&self) -> (Vec<api::ExternalIPPool>, Vec<api::Egress>) {
        let mut pools: Vec<api::ExternalIPPool> = self.pools.values().cloned().collect();
        let mut egresses: Vec<api::Egress> = self.egresses.values().cloned().collect();
        pools.extend(self.antrea_pools.values().filter_map(|a| compat::antrea_pool(a).ok()));
        egresses.extend(self.antrea_egresses.values().filter_map(|a| compat::antrea_egress(a).ok()));
        for c in self.cilium.values() {
            for t in compat::cilium_policy(c).into_iter().flatten() {
                match t {
                    Translated::Pool(p) => pools.push(*p),
                    Translated::Egress(e) => egresses.push(*e),
                }
            }
        }
        (pools, egresses)
    }

    fn translate_problems(&mut self) {
        let mut out = BTreeMap::new();
        let mut note = |kind: Kind, name: &Option<String>, e: compat::CompatError| {
            let name = name.clone().unwrap_or_default();
            out.insert((kind, name.clone()), TranslationProblem { kind, name, reason: e.to_string() });
        };
        for a in self.antrea_pools.values() {
            if let Err(e) = compat::antrea_pool(a) {
                note(Kind::AntreaPool, &a.metadata.name, e);
            }
        }
        for a in self.antrea_egresses.values() {
            if let Err(e) = compat::antrea_egress(a) {
                note(Kind::AntreaEgress, &a.metadata.name, e);
            }
        }
        for c in self.cilium.values() {
            if let Err(e) = compat::cilium_policy(c) {
                note(Kind::CiliumPolicy, &c.metadata.name, e);
            }
        }
        self.translation_problems = out;
    }

    /// Brings validation and allocation up to date, re-matching groups against the Egresses
    /// whose selection changed.
    /// Drops the destination partitions that hold an Egress of these ranks.
    fn drop_partitions_of(&mut self, stale: &BTreeSet<usize>) {
        if !stale.is_empty() {
            self.partitions.retain(|(_, ranks), _| !ranks.iter().any(|r| stale.contains(r)));
        }
    }

    fn objects(&mut self) -> &Objects {
        if self.objects.is_none() || self.objects_stale {
            if self.node_facts.is_none() {
                self.node_facts = Some(self.compute_node_facts());
            }
            let (validated, before, candidates, partial) = match self.revalidate_some() {
                Some((v, b, c)) => (v, b, c, true),
                None => {
                    self.translate_problems();
                    let (pools, egresses) = self.all_objects();
                    let reserved = self.node_facts.as_ref().map(|f| &f.reserved);
                    let validated =
                        validate::validate(&pools, &egresses, reserved.unwrap_or(&validate::Reserved::default()));
                    let before = std::mem::replace(&mut self.matched_against, validated.egresses.clone());
                    let candidates: BTreeSet<String> =
                        before.keys().chain(validated.egresses.keys()).cloned().collect();
                    (validated, before, candidates, false)
                }
            };
            self.rematch(&candidates, &before);
            // An edit that keeps every changed Egress's allocation inputs (the usual selector or
            // destination edit) keeps every allocation, the overlap order and every placement.
            let neutral = partial
                && self.outcomes.is_some()
                && candidates.iter().all(|n| match (before.get(n), validated.egresses.get(n)) {
                    (Some(a), Some(b)) => {
                        allocation_inputs(a) == allocation_inputs(b)
                            && a.applied_to.selects_nothing() == b.applied_to.selects_nothing()
                    }
                    (None, None) => true,
                    _ => false,
                });
            if neutral && let Some(old) = self.objects.take() {
                let rank = &old.rank;
                self.drop_partitions_of(&destinations_changed(&candidates, &before, &validated.egresses, rank));
                let mut node_selective = old.node_selective;
                for n in &candidates {
                    match validated.egresses.get(n) {
                        Some(e) if e.applied_to.nodes.is_some() => node_selective.insert(Arc::from(n.as_str())),
                        _ => node_selective.remove(n.as_str()),
                    };
                }
                self.objects = Some(Objects { validated, node_selective, ..old });
                // Only the rules of the groups a changed Egress selects read its model (those
                // it stopped selecting were bumped by the re-match).
                for n in &candidates {
                    for gid in self.egress_groups.get(n.as_str()).into_iter().flatten() {
                        if let Some(g) = self.groups.get_mut(gid) {
                            g.version += 1;
                        }
                    }
                }
                self.objects_stale = false;
                self.dirty_egresses = Some(BTreeSet::new());
                return self.objects.get_or_insert_with(Objects::default);
            }
            self.outcomes = None;
            self.plan_epoch += 1;
            let allocations = ipam::allocate(&validated.pools, &validated.egresses);
            let mut order: Vec<&Egress> =
                validated.egresses.values().filter(|e| !e.applied_to.selects_nothing()).collect();
            order.sort_by(|a, b| a.age_key().cmp(&b.age_key()));
            let order: Vec<Arc<str>> = order.iter().map(|e| Arc::from(e.name.as_str())).collect();
            let rank: HashMap<Arc<str>, usize> = order.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();
            // Partitions are keyed by rank: when the order is unchanged only those holding an
            // Egress whose destinations changed are stale (a selector edit keeps them all).
            let same_order = self.objects_order.as_deref() == Some(order.as_slice());
            if same_order {
                self.drop_partitions_of(&destinations_changed(&candidates, &before, &validated.egresses, &rank));
            } else {
                self.partitions.clear();
                self.order_gen += 1;
            }
            self.objects_order = Some(order.clone());
            let node_selective = validated
                .egresses
                .values()
                .filter(|e| e.applied_to.nodes.is_some())
                .map(|e| Arc::from(e.name.as_str()))
                .collect();
            self.objects = Some(Objects { validated, allocations, order, rank, node_selective });
            self.objects_stale = false;
            self.dirty_egresses = Some(BTreeSet::new());
        }
        self.objects.get_or_insert_with(Objects::default)
    }

    /// When only a few native Egresses changed (and no foreign objects exist, whose translated
    /// names could collide with them), validates just those against the unchanged pools.
    /// Returns the new validation, the changed Egresses' previous models and their names.
    #[allow(clippy::type_complexity)]
    fn revalidate_some(&mut self) -> Option<(Validated, BTreeMap<String, Egress>, BTreeSet<String>)> {
        let few = self.dirty_egresses.as_ref().is_some_and(|d| d.len() <= 16);
        let foreign = !(self.antrea_pools.is_empty() && self.antrea_egresses.is_empty() && self.cilium.is_empty());
        if !few || foreign || self.objects.is_none() {
            return None;
        }
        let dirty = self.dirty_egresses.take().unwrap_or_default();
        let mut validated = self.objects.as_mut().map(|o| std::mem::take(&mut o.validated)).unwrap_or_default();
        // The pools are unchanged: the changed Egresses are checked against their models.
        let invalid_pools: BTreeSet<String> = self
            .pools
            .keys()
            .filter(|n| !validated.pools.contains_key(*n) && validate::dns1123_subdomain(n).is_ok())
            .cloned()
            .collect();
        let mut before = BTreeMap::new();
        for name in &dirty {
            validated.egresses.remove(name);
            if let Some(old) = self.matched_against.remove(name) {
                before.insert(name.clone(), old);
            }
            validated.problems.retain(|p| !(p.kind == "Egress" && &p.name == name));
        }
        // The changed Egresses that still exist, validated together against the pools once.
        let objs: Vec<api::Egress> = dirty.iter().filter_map(|n| self.egresses.get(n).cloned()).collect();
        let (egresses, problems) = validate::validate_egresses(&objs, &validated.pools, &invalid_pools);
        validated.problems.extend(problems);
        for (name, m) in egresses {
            self.matched_against.insert(name.clone(), m.clone());
            validated.egresses.insert(name, m);
        }
        Some((validated, before, dirty))
    }

    /// Brings every derived part up to date.
    fn refresh(&mut self) {
        self.objects();
        if self.node_facts.is_none() || self.outcomes.is_none() {
            self.plan_epoch += 1;
        }
        if self.node_facts.is_none() {
            self.node_facts = Some(self.compute_node_facts());
        }
        if self.outcomes.is_none() {
            let (Some(o), Some(_)) = (self.objects.as_ref(), self.node_facts.as_ref()) else { return };
            let memo = &mut self.placed;
            let place = |groups: &[Vec<placement::Request>]| {
                placement::place_with(groups, |g| {
                    let key: Vec<IpAddr> = g.iter().map(|r| r.ip).collect();
                    memo.entry(key).or_insert_with(|| placement::place_group(g)).clone()
                })
            };
            let inputs = Inputs {
                pools: &o.validated.pools,
                egresses: &o.validated.egresses,
                allocations: &o.allocations,
                nodes: &self.nodes,
                namespaces: &[],
                pods: &[],
                live: &self.live,
                config: &self.config,
            };
            let outcomes = planner::gateways_with(&inputs, place);
            self.outcomes = Some(outcomes);
        }
    }

    fn compute_node_facts(&self) -> NodeFacts {
        NodeFacts {
            reserved: validate::Reserved::of(&self.nodes, &self.config),
            cluster_cidrs: planner::cluster_cidrs(&self.nodes, &self.config),
        }
    }

    /// Re-matches every group against each Egress among `candidates` whose selection differs
    /// between `before` and now (added, removed or changed), and updates the per-namespace
    /// candidates.
    fn rematch(&mut self, candidates: &BTreeSet<String>, before: &BTreeMap<String, Egress>) {
        let after = &self.matched_against;
        let changed: Vec<String> = candidates
            .iter()
            .filter(|n| before.get(*n).map(|e| &e.applied_to) != after.get(*n).map(|e| &e.applied_to))
            .cloned()
            .collect();
        if changed.is_empty() {
            return;
        }
        // Many changes at once (an initial list, a relist): one pass over namespaces and
        // groups beats one pass per Egress.
        if changed.len() > 16 {
            self.rematch_all();
            return;
        }
        let empty = Labels::new();
        for name in changed {
            let key: Arc<str> = Arc::from(name.as_str());
            let new = self.matched_against.get(&name);
            // The namespaces admitting it change only with its namespace selector (or whether
            // it selects anything): a pod selector edit skips the pass over every namespace.
            let ns_part = |e: &Egress| (e.applied_to.namespaces.clone(), e.applied_to.selects_nothing());
            let same_namespaces = matches!((before.get(&name), new), (Some(a), Some(b)) if ns_part(a) == ns_part(b));
            if !same_namespaces {
                let mut admitted = BTreeSet::new();
                for (ns, cands) in self.ns_candidates.iter_mut() {
                    let ns_labels = self.namespaces.get(&**ns).map(|n| &n.labels).unwrap_or(&empty);
                    if new.is_some_and(|e| admits_namespace(e, ns_labels)) {
                        cands.insert(key.clone());
                        admitted.insert(ns.clone());
                    } else {
                        cands.remove(&key);
                    }
                }
                if admitted.is_empty() {
                    self.admitted.remove(&key);
                } else {
                    self.admitted.insert(key.clone(), admitted);
                }
            }
            // Only the groups it selected and those of the namespaces it now admits can change.
            let mut gids: BTreeSet<GroupId> = self.egress_groups.get(&key).cloned().unwrap_or_default();
            for ns in self.admitted.get(&key).into_iter().flatten() {
                gids.extend(self.ns_groups.get(&**ns).into_iter().flatten().copied());
            }
            let mut selected = BTreeSet::new();
            for gid in gids {
                let Some(g) = self.groups.get_mut(&gid) else { continue };
                let hit = match (new, self.namespaces.get(&*g.namespace)) {
                    (Some(e), Some(ns)) => selects(e, &ns.labels, &g.labels),
                    _ => false,
                };
                if hit {
                    if let Err(i) = g.matched.binary_search(&key) {
                        let mut m = g.matched.to_vec();
                        m.insert(i, key.clone());
                        g.matched = m.into();
                    }
                    g.ranks = None;
                    g.version += 1;
                    selected.insert(gid);
                } else if let Ok(i) = g.matched.binary_search(&key) {
                    let mut m = g.matched.to_vec();
                    m.remove(i);
                    g.matched = m.into();
                    g.ranks = None;
                    g.version += 1;
                }
            }
            if selected.is_empty() {
                self.egress_groups.remove(&key);
            } else {
                self.egress_groups.insert(key, selected);
            }
        }
    }

    /// Recomputes every namespace's candidates and every group's matches from scratch.
    fn rematch_all(&mut self) {
        let names: Vec<(Arc<str>, &Egress)> =
            self.matched_against.iter().map(|(n, e)| (Arc::from(n.as_str()), e)).collect();
        let mut candidates = HashMap::with_capacity(self.namespaces.len());
        for (ns_name, ns) in &self.namespaces {
            let cands: BTreeSet<Arc<str>> =
                names.iter().filter(|(_, e)| admits_namespace(e, &ns.labels)).map(|(n, _)| n.clone()).collect();
            candidates.insert(Arc::<str>::from(ns_name.as_str()), cands);
        }
        let mut admitted: HashMap<Arc<str>, BTreeSet<Arc<str>>> = HashMap::new();
        for (ns, cands) in &candidates {
            for e in cands {
                admitted.entry(e.clone()).or_default().insert(ns.clone());
            }
        }
        self.ns_candidates = candidates;
        self.admitted = admitted;
        self.egress_groups.clear();
        let gids: Vec<GroupId> = self.groups.keys().copied().collect();
        for gid in gids {
            self.match_group(gid);
        }
    }

    // ---- Nodes ----

    fn node_event(&mut self, ev: Event<Node>) {
        let changed = nodes_event(&mut self.nodes, ev);
        if changed {
            // Pools are checked against node addresses and pod CIDRs: validate everything again.
            self.node_facts = None;
            self.outcomes = None;
            self.placed.clear();
            self.objects_stale = true;
            self.dirty_egresses = None;
        }
    }

    // ---- Namespaces ----

    fn namespace_event(&mut self, ev: Event<Namespace>) {
        match ev {
            Event::Apply(ns) => self.put_namespace(ns),
            Event::Delete(r) => self.remove_namespace(&r.name),
            Event::Reset(list) => {
                let keep: BTreeSet<String> = list.iter().map(|n| n.name.clone()).collect();
                let gone: Vec<String> = self.namespaces.keys().filter(|n| !keep.contains(*n)).cloned().collect();
                for n in gone {
                    self.remove_namespace(&n);
                }
                for ns in list {
                    self.put_namespace(ns);
                }
            }
        }
    }

    fn put_namespace(&mut self, ns: Namespace) {
        if self.namespaces.get(&ns.name) == Some(&ns) {
            return;
        }
        let name = ns.name.clone();
        self.namespaces.insert(name.clone(), ns);
        self.namespace_changed(&name);
    }

    fn remove_namespace(&mut self, name: &str) {
        if self.namespaces.remove(name).is_some() {
            self.namespace_changed(name);
        }
    }

    /// Recomputes a namespace's candidates and re-matches its groups.
    fn namespace_changed(&mut self, name: &str) {
        let egresses = &self.matched_against;
        // Shared names: the Egress's as the index already holds it, if it does.
        let shared = |n: &str| match self.admitted.get_key_value(n) {
            Some((k, _)) => k.clone(),
            None => Arc::from(n),
        };
        let cands: Option<BTreeSet<Arc<str>>> = self
            .namespaces
            .get(name)
            .map(|ns| egresses.values().filter(|e| admits_namespace(e, &ns.labels)).map(|e| shared(&e.name)).collect());
        let ns_name: Arc<str> = match self.ns_candidates.get_key_value(name) {
            Some((k, _)) => k.clone(),
            None => Arc::from(name),
        };
        let new = cands.clone().unwrap_or_default();
        let old = match cands {
            Some(c) => self.ns_candidates.insert(ns_name.clone(), c),
            None => self.ns_candidates.remove(name),
        }
        .unwrap_or_default();
        for e in old.difference(&new) {
            unlink(&mut self.admitted, e, &ns_name);
        }
        for e in new.difference(&old) {
            self.admitted.entry(e.clone()).or_default().insert(ns_name.clone());
        }
        let gids: Vec<GroupId> = self.ns_groups.get(name).map(|g| g.iter().copied().collect()).unwrap_or_default();
        for gid in gids {
            self.match_group(gid);
        }
    }

    /// Matches one group against its namespace's candidates from scratch.
    fn match_group(&mut self, gid: GroupId) {
        let Some(g) = self.groups.get(&gid) else { return };
        let mut matched = BTreeSet::new();
        if let (Some(ns), Some(cands)) = (self.namespaces.get(&*g.namespace), self.ns_candidates.get(&*g.namespace)) {
            for name in cands {
                if let Some(e) = self.matched_against.get(&**name)
                    && selects(e, &ns.labels, &g.labels)
                {
                    matched.insert(name.clone());
                }
            }
        }
        let old = self.groups.get_mut(&gid).map(|g| {
            g.ranks = None;
            g.version += 1;
            std::mem::replace(&mut g.matched, matched.iter().cloned().collect())
        });
        for name in old.iter().flatten().filter(|n| !matched.contains(*n)) {
            unlink(&mut self.egress_groups, name, &gid);
        }
        for name in matched {
            self.egress_groups.entry(name).or_default().insert(gid);
        }
    }

    // ---- Pods ----

    fn pod_event(&mut self, ev: Event<Pod>) {
        match ev {
            Event::Apply(p) => self.put_pod(p),
            Event::Delete(r) => {
                if let Some(ns) = &r.namespace {
                    self.remove_pod(ns, &r.name);
                }
            }
            Event::Reset(list) => {
                let keep: HashSet<(&str, &str)> =
                    list.iter().map(|p| (p.namespace.as_str(), p.name.as_str())).collect();
                let gone: Vec<(Arc<str>, String)> = self
                    .pods
                    .iter()
                    .flatten()
                    .filter(|e| !keep.contains(&(&*e.namespace, &*e.name)))
                    .map(|e| (e.namespace.clone(), e.name.to_string()))
                    .collect();
                drop(keep);
                for (ns, n) in gone {
                    self.remove_pod(&ns, &n);
                }
                for p in list {
                    self.put_pod(p);
                }
            }
        }
    }

    fn pod_id(&self, namespace: &str, name: &str) -> Option<PodId> {
        let hash = self.hasher.hash_one((namespace, name));
        self.pod_ids
            .find(hash, |&id| self.pod(id).is_some_and(|e| (&*e.namespace, &*e.name) == (namespace, name)))
            .copied()
    }

    fn pod(&self, id: PodId) -> Option<&PodEntry> {
        self.pods.get(id as usize)?.as_ref()
    }

    /// Whether the index holds `pod` exactly as given.
    fn holds(&self, pod: &Pod) -> bool {
        let Some(e) = self.pod_id(&pod.namespace, &pod.name).and_then(|id| self.pod(id)) else { return false };
        e.node.as_deref() == pod.node.as_deref()
            && e.ips.iter().eq(pod.ips.iter().copied())
            && self.groups.get(&e.group).is_some_and(|g| g.labels.same_as(&pod.labels))
    }

    /// The model of a pod the index holds.
    fn pod_model(&self, e: &PodEntry) -> Pod {
        Pod {
            namespace: e.namespace.to_string(),
            name: e.name.to_string(),
            labels: self.groups.get(&e.group).map(|g| g.labels.to_labels()).unwrap_or_default(),
            node: e.node.as_deref().map(str::to_string),
            ips: e.ips.iter().collect(),
        }
    }

    fn put_pod(&mut self, pod: Pod) {
        if self.holds(&pod) {
            return;
        }
        self.remove_pod(&pod.namespace, &pod.name);
        let Pod { namespace, name, labels, node, ips } = pod;
        let namespace: Arc<str> = match self.group_ids.get_key_value(namespace.as_str()) {
            Some((k, _)) => k.clone(),
            None => Arc::from(namespace),
        };
        let gid = self.group_for(&namespace, &labels);
        let node: Option<Arc<str>> = node.map(|n| match self.node_pods.get_key_value(n.as_str()) {
            Some((k, _)) => k.clone(),
            None => Arc::from(n),
        });
        let id = match self.free_pods.pop() {
            Some(id) => id,
            None => {
                self.pods.push(None);
                (self.pods.len() - 1) as PodId
            }
        };
        if let Some(g) = self.groups.get_mut(&gid) {
            g.pods.insert(id);
            g.version += 1;
        }
        if let Some(n) = &node {
            self.node_pods.entry(n.clone()).or_default().insert(id);
        }
        for ip in &ips {
            self.addr_claims.add(*ip, id);
        }
        let hash = self.hasher.hash_one((&*namespace, name.as_str()));
        let (pods, hasher) = (&self.pods, &self.hasher);
        self.pod_ids.insert_unique(hash, id, |&other| match pods.get(other as usize) {
            Some(Some(e)) => hasher.hash_one((&*e.namespace, &*e.name)),
            _ => 0,
        });
        self.pods[id as usize] = Some(PodEntry {
            namespace,
            name: name.into_boxed_str(),
            node,
            ips: PodIps::new(&ips),
            group: gid,
            shared: false,
        });
        self.recheck_shared(&ips);
    }

    /// Recomputes whether each pod claiming one of `ips` shares an address.
    fn recheck_shared(&mut self, ips: &[IpAddr]) {
        for ip in ips {
            let claimants: Vec<PodId> = self.addr_claims.of(ip).collect();
            for c in claimants {
                let shared =
                    self.pod(c).is_some_and(|e| e.ips.iter().any(|x| self.addr_claims.contested(&x).is_some()));
                if let Some(Some(e)) = self.pods.get_mut(c as usize) {
                    e.shared = shared;
                    // Who owns the address may have changed: the claimant's rules with it.
                    let gid = e.group;
                    if let Some(g) = self.groups.get_mut(&gid) {
                        g.version += 1;
                    }
                }
            }
        }
    }

    fn remove_pod(&mut self, namespace: &str, name: &str) {
        let hash = self.hasher.hash_one((namespace, name));
        let pods = &self.pods;
        let Ok(slot) = self.pod_ids.find_entry(hash, |&id| {
            pods.get(id as usize)
                .and_then(Option::as_ref)
                .is_some_and(|e| (&*e.namespace, &*e.name) == (namespace, name))
        }) else {
            return;
        };
        let id = slot.remove().0;
        let Some(pod) = self.pods.get_mut(id as usize).and_then(Option::take) else { return };
        self.free_pods.push(id);
        let ips: Vec<IpAddr> = pod.ips.iter().collect();
        for ip in &ips {
            self.addr_claims.remove(ip, id);
        }
        self.recheck_shared(&ips);
        if let Some(n) = &pod.node {
            unlink(&mut self.node_pods, &**n, &id);
        }
        let gid = pod.group;
        let empty = match self.groups.get_mut(&gid) {
            Some(g) => {
                g.pods.remove(&id);
                g.version += 1;
                g.pods.is_empty()
            }
            None => false,
        };
        if empty && let Some(g) = self.groups.remove(&gid) {
            if let Some(ids) = self.group_ids.get_mut(&*g.namespace) {
                ids.remove(&g.labels);
                if ids.is_empty() {
                    self.group_ids.remove(&*g.namespace);
                }
            }
            unlink(&mut self.ns_groups, &*g.namespace, &gid);
            for name in g.matched.iter() {
                unlink(&mut self.egress_groups, name, &gid);
            }
        }
    }

    /// The group of pods with these labels in this namespace, created (and matched) if new.
    fn group_for(&mut self, namespace: &Arc<str>, labels: &Labels) -> GroupId {
        let labels = PackedLabels::new(labels);
        if let Some(&gid) = self.group_ids.get(&**namespace).and_then(|ids| ids.get(&labels)) {
            return gid;
        }
        let gid = self.next_group;
        self.next_group += 1;
        self.groups.insert(
            gid,
            Group {
                namespace: namespace.clone(),
                labels: labels.clone(),
                pods: BTreeSet::new(),
                matched: Box::default(),
                ranks: None,
                version: 0,
            },
        );
        self.ns_groups.entry(namespace.to_string()).or_default().insert(gid);
        self.group_ids.entry(namespace.clone()).or_default().insert(labels, gid);
        self.match_group(gid);
        gid
    }

    /// The pod that owns `ip` when several claim it (the planner's rule), `None` when one does.
    fn contested_owner(&self, ip: &IpAddr) -> Option<PodId> {
        self.addr_claims
            .contested(ip)?
            .filter_map(|id| Some((id, self.pod(id)?)))
            .min_by_key(|(_, e)| owner_rank(e, &self.nodes))
            .map(|(id, _)| id)
    }

    /// Pods not steered for an address because another pod owns it, by object.
    pub fn warnings(&self) -> Vec<planner::Warning> {
        let mut out = Vec::new();
        for ip in self.addr_claims.contested_ips() {
            let Some(owner) = self.contested_owner(ip).and_then(|id| self.pod(id)) else { continue };
            let owner = self.pod_model(owner);
            for id in self.addr_claims.of(ip) {
                if let Some(e) = self.pod(id)
                    && (&*e.namespace, &*e.name) != (owner.namespace.as_str(), owner.name.as_str())
                {
                    out.push(planner::lost_address(&self.pod_model(e), ip, &owner));
                }
            }
        }
        out.sort();
        out
    }

    // ---- Rules ----

    /// The steering rules that concern `node`: those of its own pods, and those of other
    /// nodes' pods whose gateway it is. Work is per group: pods of a group share their
    /// partition unless an Egress restricts source nodes.
    fn rules_for(&mut self, node: &str) -> Vec<Rule> {
        // This node's cached pieces (valid for the current epoch), or a fresh cache.
        let mut old = match self.plan_cache.iter().position(|(n, _)| n == node) {
            Some(i) => self.plan_cache.remove(i).1,
            None => NodeCache::default(),
        };
        if old.epoch != self.plan_epoch {
            old.groups.clear();
        }
        let mut cache = NodeCache { epoch: self.plan_epoch, groups: HashMap::new() };
        let mut rules: Vec<GroupRules> = Vec::new();
        let mut local: BTreeMap<GroupId, Vec<PodId>> = BTreeMap::new();
        for &id in self.node_pods.get(node).into_iter().flatten() {
            if let Some(e) = self.pod(id) {
                local.entry(e.group).or_default().push(id);
            }
        }
        // Per rank and family.
        let mut resolved: Vec<Option<Resolved>> = vec![None; 2 * self.objects.as_ref().map_or(0, |o| o.order.len())];
        for (gid, keys) in &local {
            self.cached_group_rules(*gid, None, keys, &mut old, &mut cache, &mut resolved, &mut rules);
        }
        // Egresses this node is the gateway of, by rank.
        let served: Vec<(Arc<str>, usize)> = match (&self.outcomes, &self.objects) {
            (Some(out), Some(o)) => out
                .values()
                .filter(|e| e.served_by(node))
                .filter_map(|e| o.rank.get_key_value(e.name.as_str()).map(|(k, &r)| (k.clone(), r)))
                .collect(),
            _ => Vec::new(),
        };
        let gids: BTreeSet<GroupId> =
            served.iter().flat_map(|(name, _)| self.egress_groups.get(name).into_iter().flatten().copied()).collect();
        let ranks: BTreeSet<usize> = served.iter().map(|(_, r)| *r).collect();
        for gid in gids {
            self.cached_group_rules(gid, Some((node, &ranks)), &[], &mut old, &mut cache, &mut resolved, &mut rules);
        }
        self.plan_cache.push((node.to_string(), cache));
        if self.plan_cache.len() > CACHED_NODES {
            self.plan_cache.remove(0);
        }
        sort_rules(&rules)
    }

    /// [`Index::group_rules`] through the node's cache: a group unchanged since the node's
    /// last plan (same version, same epoch) gives its rules again without recomputing them.
    /// `served` is given when the node serves the group as a gateway: the group's pods on other
    /// nodes then count (gathered only when recomputing); otherwise `keys` are the pods.
    #[allow(clippy::too_many_arguments)]
    fn cached_group_rules(
        &mut self,
        gid: GroupId,
        served: Option<Served>,
        keys: &[PodId],
        old: &mut NodeCache,
        cache: &mut NodeCache,
        resolved: &mut [Option<Resolved>],
        out: &mut Vec<GroupRules>,
    ) {
        let Some(version) = self.groups.get(&gid).map(|g| g.version) else { return };
        let key = (gid, served.is_some());
        let group = match old.groups.remove(&key) {
            Some((v, r)) if v == version => r,
            _ => {
                let remote: Vec<PodId>;
                let keys = match served {
                    Some((node, _)) => {
                        remote = self
                            .groups
                            .get(&gid)
                            .into_iter()
                            .flat_map(|g| g.pods.iter().copied())
                            .filter(|&id| self.pod(id).is_some_and(|e| e.node.as_deref() != Some(node)))
                            .collect();
                        &remote
                    }
                    None => keys,
                };
                let mut fresh = Vec::new();
                self.group_rules(gid, keys, served, resolved, &mut fresh);
                Arc::new(fresh)
            }
        };
        out.push(group.clone());
        cache.groups.insert(key, (version, group));
    }

    /// The rules of some pods of one group (for a gateway, `served`: only those decided by an
    /// Egress it serves, whose pods use an IP on it).
    fn group_rules(
        &mut self,
        gid: GroupId,
        keys: &[PodId],
        served: Option<Served>,
        resolved: &mut [Option<Resolved>],
        out: &mut Vec<Rule>,
    ) {
        // The ranks of the Egresses selecting the group, kept with the group until its
        // matches or the order change (a gateway reads hundreds of groups per plan).
        let order_gen = self.order_gen;
        let cached = self.groups.get(&gid).and_then(|g| g.ranks.as_ref()).filter(|(g, _)| *g == order_gen);
        let all_ranks: Arc<[usize]> = match cached {
            Some((_, r)) => r.clone(),
            None => {
                let (Some(g), Some(o)) = (self.groups.get(&gid), &self.objects) else { return };
                let mut r: Vec<usize> = g.matched.iter().filter_map(|name| o.rank.get(name).copied()).collect();
                r.sort_unstable();
                let r: Arc<[usize]> = r.into();
                if let Some(g) = self.groups.get_mut(&gid) {
                    g.ranks = Some((order_gen, r.clone()));
                }
                r
            }
        };
        if all_ranks.is_empty() {
            return;
        }
        let (Some(o), Some(outcomes)) = (&self.objects, &self.outcomes) else { return };
        // (rank, node selector) of every Egress selecting the group; node selectors are rare.
        let matched: Vec<(usize, Option<&crate::selector::Selector>)> = if o.node_selective.is_empty() {
            Vec::new()
        } else {
            all_ranks
                .iter()
                .map(|&r| {
                    let name = &o.order[r];
                    let sel = o.node_selective.get(name).and_then(|_| o.validated.egresses.get(&**name));
                    (r, sel.and_then(|e| e.applied_to.nodes.as_ref()))
                })
                .collect()
        };
        let per_node = matched.iter().any(|(_, n)| n.is_some());
        let (gateway_asking, only) = (served.map(|(node, _)| node), served.map(|(_, ranks)| ranks));
        let mut resolve = |i: usize, family: Family| -> Resolved {
            let at = 2 * i + usize::from(family == Family::V6);
            if let Some(Some(r)) = resolved.get(at) {
                return r.clone();
            }
            let name = o.order[i].clone();
            let choices = planner::Choices::of(outcomes.get(&*name), family);
            let fallback =
                o.validated.egresses.get(&*name).is_some_and(|e| e.failure_policy == FailurePolicy::FallbackToNodeIP);
            // No gateway and fallback to the node IP: not steered at all.
            let skip = choices.live.is_empty() && fallback;
            let r = (name, Arc::new(choices), skip);
            if let Some(slot) = resolved.get_mut(at) {
                *slot = Some(r.clone());
            }
            r
        };
        let partitions = &mut self.partitions;
        // The blocks emitted for one family and set of ranks, each with what its rule carries
        // (only those of the ranks in `only`, when given).
        let mut entries_for = |family: Family, ranks: &[usize]| -> Entries {
            let k = (family, ranks.to_vec());
            let part = match partitions.get(&k) {
                Some(p) => p.clone(),
                None => {
                    let order: Vec<&Egress> = o.order.iter().filter_map(|n| o.validated.egresses.get(&**n)).collect();
                    let p = Arc::new(Part::new(planner::partition(ranks, &order, family)));
                    partitions.insert(k, p.clone());
                    p
                }
            };
            let mut out = Vec::new();
            match only {
                Some(only) => {
                    for &i in only {
                        let blocks = part.by_rank.get(&i).map(Vec::as_slice).unwrap_or_default();
                        if !blocks.is_empty() {
                            let r = resolve(i, family);
                            out.extend(blocks.iter().map(|&d| (d, r.clone())));
                        }
                    }
                }
                None => out.extend(part.blocks.iter().map(|&(d, i)| (d, resolve(i, family)))),
            }
            out.retain(|(_, r)| !r.2);
            if only.is_some_and(|o| o.len() > 1) {
                out.sort_unstable_by_key(|(d, _)| (d.network(), d.prefix_len()));
            }
            Arc::new(out)
        };
        let empty = Labels::new();
        // Without node selectors every pod of the group shares its entries: computed once per
        // family for the group; with them, once per distinct set of ranks.
        let mut group_entries: [Option<Entries>; 2] = [None, None];
        let mut per_ranks: HashMap<(Family, Vec<usize>), Entries> = HashMap::new();
        for &key in keys {
            let Some(pod) = self.pods.get(key as usize).and_then(Option::as_ref) else { continue };
            if pod.ips.iter().next().is_none() {
                continue;
            }
            let pod_ranks: Option<Vec<usize>> = per_node.then(|| {
                let nl =
                    pod.node.as_deref().and_then(|n| find_node(&self.nodes, n)).map(|n| &n.labels).unwrap_or(&empty);
                matched.iter().filter(|(_, s)| s.is_none_or(|s| s.matches(nl))).map(|(r, _)| *r).collect()
            });
            let ranks: &[usize] = pod_ranks.as_deref().unwrap_or(&all_ranks);
            if ranks.is_empty() {
                continue;
            }
            for ip in pod.ips.iter() {
                if pod.shared
                    && let Some(claims) = self.addr_claims.contested(&ip)
                    && claims
                        .filter_map(|id| Some((id, self.pods.get(id as usize)?.as_ref()?)))
                        .min_by_key(|(_, e)| owner_rank(e, &self.nodes))
                        .is_some_and(|(owner, _)| owner != key)
                {
                    continue;
                }
                let family = Family::of(&ip);
                let entries = if per_node {
                    per_ranks.entry((family, ranks.to_vec())).or_insert_with(|| entries_for(family, ranks)).clone()
                } else {
                    group_entries[usize::from(family == Family::V6)]
                        .get_or_insert_with(|| entries_for(family, ranks))
                        .clone()
                };
                // One choice per Egress for this address (its blocks are mostly adjacent).
                let mut chosen: Option<(&Arc<planner::Choices>, planner::Chosen)> = None;
                for (dest, (egress, choices, _)) in entries.iter() {
                    let (egress_ip, gateway) = match &chosen {
                        Some((c, x)) if Arc::ptr_eq(c, choices) => x.clone(),
                        _ => {
                            let x = choices.choose(&ip);
                            chosen = Some((choices, x.clone()));
                            x
                        }
                    };
                    // A gateway reads only the rules of the pods whose IP it hosts.
                    if let Some(g) = gateway_asking
                        && gateway.as_deref() != Some(g)
                    {
                        continue;
                    }
                    out.push(Rule {
                        source_ip: ip,
                        destination: *dest,
                        egress: egress.clone(),
                        egress_ip,
                        gateway,
                        source_node: pod.node.clone(),
                    });
                }
            }
        }
    }
}

/// The ranks of the `candidates` whose destinations differ between `before` and `after`: the
/// partitions holding them are stale.
fn destinations_changed(
    candidates: &BTreeSet<String>,
    before: &BTreeMap<String, Egress>,
    after: &BTreeMap<String, Egress>,
    rank: &HashMap<Arc<str>, usize>,
) -> BTreeSet<usize> {
    candidates
        .iter()
        .filter(|n| {
            let (a, b) = (before.get(*n), after.get(*n));
            a.map(|e| (&e.destinations, &e.excluded, &e.families))
                != b.map(|e| (&e.destinations, &e.excluded, &e.families))
        })
        .filter_map(|n| rank.get(n.as_str()).copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ObjectRef;
    use crate::testutil::*;
    use proptest::prelude::*;

    fn mk_index() -> Index {
        Index::new(ClusterConfig::default(), Index::core_kinds())
    }

    /// An index holding the lab's nodes, namespaces and pods, all kinds synced, every node live.
    fn lab_index() -> Index {
        let (nodes, namespaces, pods) = lab();
        let mut ix = mk_index();
        ix.set_live(&nodes.iter().map(|n| n.name.clone()).collect());
        ix.apply(Change::Nodes(Event::Reset(nodes)));
        ix.apply(Change::Namespaces(Event::Reset(namespaces)));
        ix.apply(Change::Pods(Event::Reset(pods)));
        ix.apply(Change::Pools(Event::Reset(vec![])));
        ix.apply(Change::Egresses(Event::Reset(vec![])));
        ix.apply(Change::ClusterPolicies(Event::Reset(vec![])));
        ix.apply(Change::Policies(Event::Reset(vec![])));
        ix
    }

    fn mk_cluster_policy(yaml: &str) -> api::ClusterEgressPolicy {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn firewall_follows_policy_and_pod_events() {
        use crate::policy::{Flow, FlowProto, Protocol, Verdict};
        let mut ix = lab_index();
        assert!(ix.is_synced());
        assert!(ix.node_plan("node-1").unwrap().firewall.is_empty(), "no policy, nothing governed");
        let deny_prod = mk_cluster_policy(
            "apiVersion: egret.dev/v1alpha1\nkind: ClusterEgressPolicy\nmetadata: {name: prod}\nspec:\n  priority: 10\n  appliedTo: {namespaceSelector: {matchLabels: {env: prod}}}\n  rules:\n  - {name: https, action: Allow, to: {cidrs: [203.0.113.0/24]}, ports: [{port: 443}]}\n  defaultAction: Deny\n",
        );
        ix.apply(Change::ClusterPolicies(Event::Apply(deny_prod.clone())));
        let fw = ix.node_plan("node-1").unwrap().firewall;
        // prod/web-1 is governed; default/client-1 on the same node is not.
        assert_eq!(fw.pods.iter().map(|p| p.pod.as_str()).collect::<Vec<_>>(), vec!["prod/web-1"]);
        let flow = |dst: &str, port| Flow { dst: dst.parse().unwrap(), proto: FlowProto::Named(Protocol::Tcp), port };
        let web1 = "10.244.1.10".parse().unwrap();
        assert_eq!(fw.decide(web1, &flow("203.0.113.9", 443)).unwrap().verdict, Verdict::Allow);
        assert_eq!(fw.decide(web1, &flow("203.0.113.9", 80)).unwrap().verdict, Verdict::Deny);
        // A namespaced policy of another namespace changes nothing here; one of prod adds a set.
        let mut ns_policy: api::EgressPolicy = serde_yaml_ng::from_str(
            "apiVersion: egret.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: web, namespace: prod}\nspec:\n  appliedTo: {podSelector: {matchLabels: {role: web}}}\n  rules: [{name: dns, action: Allow, to: {cidrs: [198.51.100.53/32]}, ports: [{protocol: UDP, port: 53}]}]\n",
        )
        .unwrap();
        ix.apply(Change::Policies(Event::Apply(ns_policy.clone())));
        let fw = ix.node_plan("node-1").unwrap().firewall;
        assert_eq!(fw.sets[0].policies.len(), 2);
        // A label change moves web-2 (node-2) under the same policies as web-1.
        let plan2 = ix.node_plan("node-2").unwrap().firewall;
        assert_eq!(plan2.sets[0].policies.len(), 1);
        ix.apply(Change::Pods(Event::Apply(mk_pod(
            "prod",
            "web-2",
            &[("app", "web"), ("role", "web")],
            "node-2",
            "10.244.2.10",
        ))));
        assert_eq!(ix.node_plan("node-2").unwrap().firewall.sets[0].policies.len(), 2);
        // Deletes, including the namespaced one by namespace/name.
        ns_policy.metadata.namespace = Some("prod".into());
        ix.apply(Change::Policies(Event::Delete(ObjectRef::namespaced("prod", "web"))));
        ix.apply(Change::ClusterPolicies(Event::Delete(ObjectRef::cluster("prod"))));
        assert!(ix.node_plan("node-1").unwrap().firewall.is_empty());
        // An invalid policy is left out whole and reported.
        let bad = mk_cluster_policy(&serde_yaml_ng::to_string(&deny_prod).unwrap().replace("443", "70000"));
        ix.apply(Change::ClusterPolicies(Event::Reset(vec![bad])));
        assert!(ix.node_plan("node-1").unwrap().firewall.is_empty());
        assert_eq!(ix.policies().problems[0].field, "spec.rules[0].ports[0].port");
    }

    #[test]
    fn network_policies_are_acted_on_only_when_enforced() {
        use crate::policy::{DecidedBy, Flow, FlowProto, Protocol, Verdict};
        let np: NetworkPolicy = serde_yaml_ng::from_str(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: prod}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: 203.0.113.0/24}}], ports: [{port: 443}]}]\n",
        )
        .unwrap();
        let mut ix = lab_index();
        ix.apply(Change::NetworkPolicies(Event::Reset(vec![np.clone()])));
        assert!(ix.node_plan("node-1").unwrap().firewall.is_empty(), "not enforced: ignored");
        assert!(ix.policies().policies.is_empty());

        let mut ix = lab_index();
        ix.enforce_network_policies();
        assert_eq!(ix.waiting_for(), vec![Kind::NetworkPolicy]);
        ix.apply(Change::NetworkPolicies(Event::Reset(vec![np.clone()])));
        assert!(ix.is_synced());
        let fw = ix.node_plan("node-1").unwrap().firewall;
        assert_eq!(fw.pods.iter().map(|p| p.pod.as_str()).collect::<Vec<_>>(), vec!["prod/web-1"]);
        assert_eq!(fw.sets[0].policies[0].to_string(), "NetworkPolicy prod/web");
        let flow = |port| Flow { dst: "203.0.113.9".parse().unwrap(), proto: FlowProto::Named(Protocol::Tcp), port };
        let web1 = "10.244.1.10".parse().unwrap();
        assert_eq!(fw.decide(web1, &flow(443)).unwrap().verdict, Verdict::Allow);
        let denied = fw.decide(web1, &flow(80)).unwrap();
        assert!(matches!(denied.by, DecidedBy::Isolation { .. }), "{:?}", denied.by);
        // Deleted by namespace/name: nothing governed any more.
        ix.apply(Change::NetworkPolicies(Event::Delete(ObjectRef::namespaced("prod", "web"))));
        assert!(ix.node_plan("node-1").unwrap().firewall.is_empty());
        ix.apply(Change::NetworkPolicies(Event::Apply(np)));
        assert!(!ix.node_plan("node-1").unwrap().firewall.is_empty());
    }

    /// Every node's plan from the whole-cluster planner over the same objects.
    fn reference(ix: &Index) -> BTreeMap<String, NodePlan> {
        let (pools, egresses) = ix.all_objects();
        let nodes: Vec<Node> = ix.nodes.clone();
        let namespaces: Vec<Namespace> = ix.namespaces.values().cloned().collect();
        let pods: Vec<Pod> = ix.pods.iter().flatten().map(|e| ix.pod_model(e)).collect();
        let (_, plan) = planner::plan_objects(&pools, &egresses, &nodes, &namespaces, &pods, &ix.live, &ix.config);
        plan.node_plans()
    }

    fn assert_same_as_planner(ix: &mut Index) {
        let want = reference(ix);
        let names: Vec<String> = ix.nodes.iter().map(|n| n.name.clone()).collect();
        for n in names {
            assert_eq!(ix.node_plan(&n).as_ref(), want.get(&n), "node {n}");
        }
    }

    fn web_egress(name: &str) -> api::Egress {
        let mut e = mk_egress(name, Some("p"), None);
        e.spec.applied_to.namespace_selector = Some(mk_match(&[("env", "prod")]));
        e
    }

    #[test]
    fn nothing_is_synced_before_every_initial_list() {
        let mut ix = mk_index();
        assert!(!ix.is_synced());
        ix.apply(Change::Nodes(Event::Reset(vec![])));
        ix.apply(Change::Pods(Event::Apply(mk_pod("prod", "a", &[], "node-1", "10.244.1.9"))));
        assert_eq!(
            ix.waiting_for(),
            vec![Kind::Pool, Kind::Egress, Kind::Namespace, Kind::Pod, Kind::ClusterPolicy, Kind::Policy]
        );
        ix.apply(Change::Pools(Event::Reset(vec![])));
        ix.apply(Change::Egresses(Event::Reset(vec![])));
        ix.apply(Change::Namespaces(Event::Reset(vec![])));
        ix.apply(Change::Pods(Event::Reset(vec![])));
        ix.apply(Change::ClusterPolicies(Event::Reset(vec![])));
        assert!(!ix.is_synced(), "EgressPolicies not listed yet");
        ix.apply(Change::Policies(Event::Reset(vec![])));
        assert!(ix.is_synced());
    }

    #[test]
    fn seed_002_through_events() {
        let mut ix = lab_index();
        ix.apply(Change::Pools(Event::Apply(mk_pool("p", &[("10.10.0.11", "10.10.0.20")], &[]))));
        ix.apply(Change::Egresses(Event::Apply(web_egress("eg"))));
        let np = ix.node_plan("node-1").unwrap();
        let sources: Vec<String> = np.steer.iter().map(|s| s.source.to_string()).collect();
        assert_eq!(sources, vec!["10.244.1.10"]);
        assert_same_as_planner(&mut ix);
        let gw = ix.control_plan().egresses[0].egress_node().map(String::from).unwrap();
        let gw_plan = ix.node_plan(&gw).unwrap();
        let snat: BTreeSet<String> = gw_plan.snat.iter().map(|s| s.source.to_string()).collect();
        assert_eq!(snat, ["10.244.1.10", "10.244.2.10"].map(String::from).into());
    }

    #[test]
    fn pod_label_change_and_delete_follow() {
        let mut ix = lab_index();
        ix.apply(Change::Pools(Event::Apply(mk_pool("p", &[("10.10.0.11", "10.10.0.20")], &[]))));
        ix.apply(Change::Egresses(Event::Apply(web_egress("eg"))));
        // payment-1 on node-3 becomes a web pod.
        ix.apply(Change::Pods(Event::Apply(mk_pod("prod", "payment-1", &[("app", "web")], "node-3", "10.244.3.10"))));
        assert_eq!(ix.node_plan("node-3").unwrap().steer.len(), 1);
        assert_same_as_planner(&mut ix);
        ix.apply(Change::Pods(Event::Delete(ObjectRef::namespaced("prod", "payment-1"))));
        assert!(ix.node_plan("node-3").unwrap().steer.is_empty());
        // Deleting what is not there is not an error.
        ix.apply(Change::Pods(Event::Delete(ObjectRef::namespaced("prod", "nobody"))));
        ix.apply(Change::Egresses(Event::Delete(ObjectRef::cluster("nothing"))));
        assert_same_as_planner(&mut ix);
    }

    #[test]
    fn pod_addresses_keep_their_order_whatever_their_shape() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v4b: IpAddr = "10.0.0.2".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        for ips in [vec![], vec![v4], vec![v6], vec![v4, v6], vec![v6, v4], vec![v4, v4b], vec![v4, v6, v4b]] {
            let packed = PodIps::new(&ips);
            assert_eq!(packed.iter().collect::<Vec<_>>(), ips);
            assert_eq!(matches!(packed, PodIps::Other(_)), !(1..=2).contains(&ips.len()) || ips == [v4, v4b]);
        }
    }

    #[test]
    fn pods_share_names_and_reuse_slots() {
        let mut ix = lab_index();
        ix.apply(Change::Pools(Event::Apply(mk_pool("p", &[("10.10.0.11", "10.10.0.20")], &[]))));
        ix.apply(Change::Egresses(Event::Apply(web_egress("eg"))));
        let slots = ix.pods.len();
        // Two pods of one namespace and node hold one copy of each name.
        ix.apply(Change::Pods(Event::Apply(mk_pod("prod", "web-3", &[("app", "web")], "node-1", "10.244.1.12"))));
        let entry = |ix: &Index, name: &str| {
            let id = ix.pod_id("prod", name).unwrap();
            (ix.pod(id).unwrap().namespace.clone(), ix.pod(id).unwrap().node.clone().unwrap())
        };
        let (a, b) = (entry(&ix, "web-1"), entry(&ix, "web-3"));
        assert!(Arc::ptr_eq(&a.0, &b.0) && Arc::ptr_eq(&a.1, &b.1));
        // A pod's labels live in its group: the same labels, the same group.
        let group = |ix: &Index, name: &str| ix.pod(ix.pod_id("prod", name).unwrap()).unwrap().group;
        assert_eq!(group(&ix, "web-3"), group(&ix, "web-2"));
        assert_same_as_planner(&mut ix);
        // A deleted pod's slot is taken by the next pod; the plan follows both.
        ix.apply(Change::Pods(Event::Delete(ObjectRef::namespaced("prod", "web-3"))));
        ix.apply(Change::Pods(Event::Apply(mk_pod("prod", "web-4", &[("app", "web")], "node-2", "10.244.2.12"))));
        assert_eq!(ix.pods.len(), slots + 1);
        assert!(ix.node_plan("node-1").unwrap().steer.iter().all(|s| s.source.to_string() != "10.244.1.12"));
        assert!(ix.node_plan("node-2").unwrap().steer.iter().any(|s| s.source.to_string() == "10.244.2.12"));
        // Re-applying a pod unchanged keeps it; changing only its labels moves it to a group.
        ix.apply(Change::Pods(Event::Apply(mk_pod("prod", "web-4", &[("app", "web")], "node-2", "10.244.2.12"))));
        ix.apply(Change::Pods(Event::Apply(mk_pod("prod", "web-4", &[("app", "db")], "node-2", "10.244.2.12"))));
        assert!(ix.node_plan("node-2").unwrap().steer.iter().all(|s| s.source.to_string() != "10.244.2.12"));
        assert_same_as_planner(&mut ix);
    }

    /// The control plan and every node's plan equal the planner's.
    fn assert_all_same(ix: &mut Index) {
        assert_same_as_planner(ix);
        let (pools, egresses) = ix.all_objects();
        let nodes: Vec<Node> = ix.nodes.clone();
        let (_, whole) = planner::plan_objects(&pools, &egresses, &nodes, &[], &[], &ix.live, &ix.config);
        assert_eq!(ix.control_plan().egresses, whole.egresses);
        assert_eq!(ix.control_plan().pools, whole.pools);
    }

    #[test]
    fn egress_edits_follow_whether_or_not_they_keep_allocations() {
        let mut ix = lab_index();
        ix.apply(Change::Pools(Event::Apply(mk_pool("p", &[("10.10.0.11", "10.10.0.20")], &[]))));
        let mut old = web_egress("old");
        old.metadata.creation_timestamp = Some(ts(1));
        old.spec.destination_cidrs = vec!["203.0.113.0/24".into()];
        let mut new = web_egress("new");
        new.metadata.creation_timestamp = Some(ts(2));
        ix.apply(Change::Egresses(Event::Apply(old.clone())));
        ix.apply(Change::Egresses(Event::Apply(new.clone())));
        assert_all_same(&mut ix);
        let steer = |ix: &mut Index, node: &str| -> Vec<(String, String)> {
            let np = ix.node_plan(node).unwrap();
            np.steer.iter().map(|s| (s.destination.to_string(), s.egress.clone())).collect()
        };
        assert!(steer(&mut ix, "node-1").contains(&("203.0.113.0/24".into(), "old".into())));
        // Keeps allocations, changes the overlap: the cached partitions must follow.
        old.spec.destination_cidrs = vec!["198.51.100.0/24".into()];
        ix.apply(Change::Egresses(Event::Apply(old.clone())));
        let now = steer(&mut ix, "node-1");
        assert!(now.contains(&("198.51.100.0/24".into(), "old".into())), "{now:?}");
        assert!(!now.iter().any(|(d, e)| d == "203.0.113.0/24" && e == "old"), "{now:?}");
        assert_all_same(&mut ix);
        // Keeps allocations, changes the selection.
        new.spec.applied_to.pod_selector = Some(mk_match(&[("app", "payment")]));
        ix.apply(Change::Egresses(Event::Apply(new.clone())));
        assert!(steer(&mut ix, "node-3").iter().any(|(_, e)| e == "new"));
        assert_all_same(&mut ix);
        // Moves to another namespace: the groups it selected there are let go.
        new.spec.applied_to.namespace_selector = Some(mk_match(&[("env", "staging")]));
        new.spec.applied_to.pod_selector = None;
        ix.apply(Change::Egresses(Event::Apply(new.clone())));
        assert!(!steer(&mut ix, "node-3").iter().any(|(_, e)| e == "new"));
        assert_all_same(&mut ix);
        new.spec.applied_to.namespace_selector = Some(mk_match(&[("env", "prod")]));
        new.spec.applied_to.pod_selector = Some(mk_match(&[("app", "payment")]));
        ix.apply(Change::Egresses(Event::Apply(new.clone())));
        // Keeps allocations, fails open: the rules read the new failure policy.
        new.spec.failure_policy = Some("FallbackToNodeIP".into());
        ix.apply(Change::Egresses(Event::Apply(new.clone())));
        assert_all_same(&mut ix);
        // Changes the allocation: a static IP, then a restored status IP, then an older age
        // (the overlap order), then invalid, then valid again.
        new.spec.egress_ip = Some("10.10.0.15".into());
        ix.apply(Change::Egresses(Event::Apply(new.clone())));
        assert_eq!(
            ix.control_plan().egresses.iter().find(|e| e.name == "new").unwrap().egress_ip(),
            Some("10.10.0.15".parse().unwrap())
        );
        assert_all_same(&mut ix);
        new.spec.egress_ip = None;
        ix.apply(Change::Egresses(Event::Apply(new.clone())));
        assert_all_same(&mut ix);
        new.status = Some(api::EgressStatus { egress_ip: Some("10.10.0.17".into()), ..Default::default() });
        ix.apply(Change::Egresses(Event::Apply(new.clone())));
        let ip = |ix: &mut Index| ix.control_plan().egresses.iter().find(|e| e.name == "new").unwrap().egress_ip();
        assert_eq!(ip(&mut ix), Some("10.10.0.17".parse().unwrap()));
        assert_all_same(&mut ix);
        new.metadata.creation_timestamp = Some(ts(0));
        ix.apply(Change::Egresses(Event::Apply(new.clone())));
        assert_all_same(&mut ix);
        new.spec.external_ip_pool = Some("missing".into());
        ix.apply(Change::Egresses(Event::Apply(new.clone())));
        assert_eq!(ix.validation_problems().len(), 1);
        assert_all_same(&mut ix);
        new.spec.external_ip_pool = Some("p".into());
        ix.apply(Change::Egresses(Event::Apply(new.clone())));
        assert!(ix.validation_problems().is_empty());
        assert_all_same(&mut ix);
        // An invalid pool: the Egress's problem says so, as a full validation would.
        let mut bad = mk_pool("bad", &[("10.10.0.30", "10.10.0.20")], &[]);
        bad.metadata.creation_timestamp = Some(ts(0));
        ix.apply(Change::Pools(Event::Apply(bad)));
        ix.settle();
        new.spec.external_ip_pool = Some("bad".into());
        ix.apply(Change::Egresses(Event::Apply(new)));
        let whole = validate::validate(&ix.all_objects().0, &ix.all_objects().1, &validate::Reserved::default());
        assert_eq!(ix.validation_problems(), whole.problems.as_slice());
        assert_all_same(&mut ix);
    }

    #[test]
    fn cached_ranks_and_partitions_follow_order_and_node_selectors() {
        let mut ix = lab_index();
        ix.apply(Change::Pools(Event::Apply(mk_pool("p", &[("10.10.0.11", "10.10.0.20")], &[]))));
        let mut a = web_egress("a");
        a.metadata.creation_timestamp = Some(ts(5));
        a.spec.destination_cidrs = vec!["203.0.113.0/24".into()];
        ix.apply(Change::Egresses(Event::Apply(a.clone())));
        // Every node's plan computed: the groups' ranks and partitions are cached.
        assert_all_same(&mut ix);
        // An older Egress selecting no pod shifts `a`'s rank, not the web group's matches.
        let mut c = web_egress("c");
        c.metadata.creation_timestamp = Some(ts(0));
        c.spec.applied_to.pod_selector = Some(mk_match(&[("app", "none")]));
        ix.apply(Change::Egresses(Event::Apply(c)));
        assert!(ix.node_plan("node-1").unwrap().steer.iter().all(|s| s.egress == "a"));
        assert_all_same(&mut ix);
        // An older Egress overlapping `a` shifts every rank: the caches must not be reused.
        let mut b = web_egress("b");
        b.metadata.creation_timestamp = Some(ts(1));
        b.spec.destination_cidrs = vec!["203.0.113.0/25".into()];
        ix.apply(Change::Egresses(Event::Apply(b.clone())));
        let np = ix.node_plan("node-1").unwrap();
        assert!(np.steer.iter().any(|s| s.egress == "b" && s.destination.to_string() == "203.0.113.0/25"));
        assert_all_same(&mut ix);
        // A node selector added by an edit that keeps allocations: pods now differ by node.
        b.spec.applied_to.node_selector = Some(mk_match(&[("kubernetes.io/hostname", "node-2")]));
        ix.apply(Change::Egresses(Event::Apply(b.clone())));
        assert!(!ix.node_plan("node-1").unwrap().steer.iter().any(|s| s.egress == "b"));
        assert_all_same(&mut ix);
        b.spec.applied_to.node_selector = None;
        ix.apply(Change::Egresses(Event::Apply(b.clone())));
        assert!(ix.node_plan("node-1").unwrap().steer.iter().any(|s| s.egress == "b"));
        assert_all_same(&mut ix);
        // `b` deleted: ranks shift back.
        ix.apply(Change::Egresses(Event::Delete(ObjectRef::cluster("b"))));
        assert_all_same(&mut ix);
        // A group's matches change (a pod relabelled into it) after its ranks were cached.
        ix.apply(Change::Pods(Event::Apply(mk_pod("prod", "payment-1", &[("app", "web")], "node-3", "10.244.3.10"))));
        assert!(ix.node_plan("node-3").unwrap().steer.iter().any(|s| s.egress == "a"));
        assert_all_same(&mut ix);
    }

    #[test]
    fn pod_selector_edits_reach_namespaces_admitted_since() {
        let mut ix = lab_index();
        ix.apply(Change::Pools(Event::Apply(mk_pool("p", &[("10.10.0.11", "10.10.0.20")], &[]))));
        let mut eg = web_egress("eg");
        eg.spec.applied_to.pod_selector = Some(mk_match(&[("app", "db")]));
        ix.apply(Change::Egresses(Event::Apply(eg.clone())));
        assert_all_same(&mut ix);
        // staging now admitted, then the pod selector (alone) widens to its web pod.
        ix.apply(Change::Namespaces(Event::Apply(mk_ns("staging", &[("env", "prod")]))));
        eg.spec.applied_to.pod_selector = Some(mk_match(&[("app", "web")]));
        ix.apply(Change::Egresses(Event::Apply(eg.clone())));
        assert!(ix.node_plan("node-2").unwrap().steer.iter().any(|s| s.source.to_string() == "10.244.2.11"));
        assert_all_same(&mut ix);
        // prod no longer admitted, then the pod selector moves to payment (in prod): nothing.
        ix.apply(Change::Namespaces(Event::Apply(mk_ns("prod", &[("env", "dev")]))));
        eg.spec.applied_to.pod_selector = Some(mk_match(&[("app", "payment")]));
        ix.apply(Change::Egresses(Event::Apply(eg.clone())));
        assert!(ix.node_plan("node-3").unwrap().steer.is_empty());
        assert_all_same(&mut ix);
        // A namespace deleted and created again.
        ix.apply(Change::Namespaces(Event::Delete(ObjectRef::cluster("prod"))));
        ix.apply(Change::Namespaces(Event::Apply(mk_ns("prod", &[("env", "prod")]))));
        eg.spec.applied_to.pod_selector = None;
        ix.apply(Change::Egresses(Event::Apply(eg)));
        assert!(!ix.node_plan("node-3").unwrap().steer.is_empty());
        assert_all_same(&mut ix);
    }

    #[test]
    fn a_shared_address_is_steered_for_its_owner_only() {
        let mut ix = lab_index();
        ix.apply(Change::Pools(Event::Apply(mk_pool("p", &[("10.10.0.11", "10.10.0.20")], &[]))));
        ix.apply(Change::Egresses(Event::Apply(web_egress("eg"))));
        ix.node_plan("node-3").unwrap();
        // A stale web pod on node-3 claims web-1's address: prod/web-1 sorts first and keeps it.
        ix.apply(Change::Pods(Event::Apply(mk_pod("prod", "web-9", &[("app", "web")], "node-3", "10.244.1.10"))));
        assert!(ix.node_plan("node-3").unwrap().steer.is_empty());
        assert_eq!(ix.warnings().len(), 1);
        assert_same_as_planner(&mut ix);
        // The owner goes: the other pod is steered for the address now.
        ix.apply(Change::Pods(Event::Delete(ObjectRef::namespaced("prod", "web-1"))));
        assert!(ix.node_plan("node-3").unwrap().steer.iter().any(|s| s.source.to_string() == "10.244.1.10"));
        assert!(ix.warnings().is_empty());
        assert_same_as_planner(&mut ix);
    }

    #[test]
    fn cached_plan_pieces_follow_every_kind_of_change() {
        let mut ix = lab_index();
        let mut pool = mk_pool("p", &[("10.10.0.11", "10.10.0.20")], &[]);
        pool.spec.node_selector = mk_match(&[("network-role", "egress-gateway")]);
        ix.apply(Change::Pools(Event::Apply(pool)));
        ix.apply(Change::Egresses(Event::Apply(web_egress("eg"))));
        let gw = ix.control_plan().egresses[0].egress_node().map(String::from).unwrap();
        let snat = |ix: &mut Index| -> BTreeSet<String> {
            ix.node_plan(&gw).unwrap().snat.iter().map(|s| s.source.to_string()).collect()
        };
        let before = snat(&mut ix);
        // A pod joins a served group on another node; then leaves it; then moves node.
        ix.apply(Change::Pods(Event::Apply(mk_pod("prod", "web-5", &[("app", "web")], "node-3", "10.244.3.20"))));
        assert!(snat(&mut ix).contains("10.244.3.20"));
        assert_same_as_planner(&mut ix);
        ix.apply(Change::Pods(Event::Apply(mk_pod("prod", "web-5", &[("app", "db")], "node-3", "10.244.3.20"))));
        assert_eq!(snat(&mut ix), before);
        ix.apply(Change::Pods(Event::Apply(mk_pod("prod", "web-5", &[("app", "web")], "node-2", "10.244.2.20"))));
        assert!(snat(&mut ix).contains("10.244.2.20"));
        assert_same_as_planner(&mut ix);
        // The gateway's node is relabelled out of the pool: another node serves.
        let n = find_node(&ix.nodes, &gw).cloned().unwrap();
        let mut moved = n.clone();
        moved.labels.remove("network-role");
        ix.apply(Change::Nodes(Event::Apply(moved)));
        assert!(ix.node_plan(&gw).unwrap().snat.is_empty());
        assert_same_as_planner(&mut ix);
        ix.apply(Change::Nodes(Event::Apply(n)));
        assert_same_as_planner(&mut ix);
        // The gateway goes down and comes back.
        let mut live: BTreeSet<String> = ix.live.clone();
        live.remove(&gw);
        ix.set_live(&live);
        assert!(ix.node_plan(&gw).unwrap().snat.is_empty());
        assert_same_as_planner(&mut ix);
        live.insert(gw.clone());
        ix.set_live(&live);
        assert!(!snat(&mut ix).is_empty());
        assert_same_as_planner(&mut ix);
    }

    #[test]
    fn namespace_label_change_rematches_its_pods() {
        let mut ix = lab_index();
        ix.apply(Change::Pools(Event::Apply(mk_pool("p", &[("10.10.0.11", "10.10.0.20")], &[]))));
        ix.apply(Change::Egresses(Event::Apply(web_egress("eg"))));
        assert!(ix.node_plan("node-2").unwrap().steer.iter().all(|s| s.source.to_string() != "10.244.2.11"));
        ix.apply(Change::Namespaces(Event::Apply(mk_ns("staging", &[("env", "prod")]))));
        assert!(ix.node_plan("node-2").unwrap().steer.iter().any(|s| s.source.to_string() == "10.244.2.11"));
        assert_same_as_planner(&mut ix);
    }

    #[test]
    fn reset_removes_what_the_new_list_lacks() {
        let mut ix = lab_index();
        ix.apply(Change::Pools(Event::Apply(mk_pool("p", &[("10.10.0.11", "10.10.0.20")], &[]))));
        ix.apply(Change::Egresses(Event::Apply(web_egress("eg"))));
        let (_, _, pods) = lab();
        let keep: Vec<Pod> = pods.into_iter().filter(|p| p.name != "web-1" || p.namespace != "prod").collect();
        ix.apply(Change::Pods(Event::Reset(keep)));
        assert!(ix.node_plan("node-1").unwrap().steer.is_empty());
        ix.apply(Change::Egresses(Event::Reset(vec![])));
        assert!(ix.node_plan("node-2").unwrap().steer.is_empty());
        assert_same_as_planner(&mut ix);
    }

    #[test]
    fn events_in_any_order_give_the_same_plan() {
        // Egresses before pods, pods before namespaces: the result does not depend on it.
        let (nodes, namespaces, pods) = lab();
        let mut a = mk_index();
        a.set_live(&nodes.iter().map(|n| n.name.clone()).collect());
        a.apply(Change::Egresses(Event::Apply(web_egress("eg"))));
        a.apply(Change::Pools(Event::Apply(mk_pool("p", &[("10.10.0.11", "10.10.0.20")], &[]))));
        for p in pods.iter().cloned() {
            a.apply(Change::Pods(Event::Apply(p)));
        }
        for n in namespaces.iter().cloned() {
            a.apply(Change::Namespaces(Event::Apply(n)));
        }
        for n in nodes.iter().cloned() {
            a.apply(Change::Nodes(Event::Apply(n)));
        }
        let mut b = lab_index();
        b.apply(Change::Pools(Event::Apply(mk_pool("p", &[("10.10.0.11", "10.10.0.20")], &[]))));
        b.apply(Change::Egresses(Event::Apply(web_egress("eg"))));
        for n in ["node-1", "node-2", "node-4", "node-5", "node-6"] {
            assert_eq!(a.node_plan(n), b.node_plan(n), "{n}");
        }
    }

    /// The gateway and egress IP of every steered pod address of `node`'s plan.
    fn choices_of(ix: &mut Index, nodes: &[String]) -> BTreeMap<IpAddr, (Option<IpAddr>, String)> {
        let mut out = BTreeMap::new();
        for n in nodes {
            for s in ix.node_plan(n).unwrap().steer {
                let gw = match &s.action {
                    planner::SteerAction::Local => n.clone(),
                    planner::SteerAction::Tunnel { gateway } => gateway.clone(),
                    planner::SteerAction::Drop => "drop".into(),
                };
                out.insert(s.source, (s.egress_ip, gw));
            }
        }
        out
    }

    #[test]
    fn several_ips_spread_pods_over_gateways_and_only_a_dead_ones_share_moves() {
        let mut ix = lab_index();
        // Sixty more web pods on the three worker nodes.
        let (_, _, mut pods) = lab();
        for i in 0..60u32 {
            let node = format!("node-{}", 1 + i % 3);
            let ip = format!("10.244.{}.{}", 1 + i % 3, 100 + i);
            pods.push(mk_pod("prod", &format!("w-{i}"), &[("app", "web")], &node, &ip));
        }
        ix.apply(Change::Pods(Event::Reset(pods)));
        let pool = |name: &str, cidr: &str| {
            let mut p = mk_pool(name, &[], &[cidr]);
            p.spec.node_selector = mk_match(&[("network-role", "egress-gateway")]);
            p
        };
        ix.apply(Change::Pools(Event::Reset(vec![
            pool("a", "10.10.0.40/32"),
            pool("b", "10.10.0.41/32"),
            pool("c", "10.10.0.42/32"),
        ])));
        let mut e = web_egress("spread");
        e.spec.external_ip_pool = None;
        e.spec.external_ip_pools = vec!["a".into(), "b".into(), "c".into()];
        ix.apply(Change::Egresses(Event::Apply(e)));
        assert!(ix.validation_problems().is_empty(), "{:?}", ix.validation_problems());
        assert_same_as_planner(&mut ix);
        let out = ix.control_plan().egresses.remove(0);
        let ips: Vec<String> = out.ips.iter().map(|i| i.ip.to_string()).collect();
        assert_eq!(ips, ["10.10.0.40", "10.10.0.41", "10.10.0.42"]);
        let gws: BTreeSet<&str> = out.ips.iter().filter_map(|i| i.node.as_deref()).collect();
        assert_eq!(gws.len(), 3, "one IP per gateway: {out:?}");
        let workers: Vec<String> = (1..=3).map(|i| format!("node-{i}")).collect();
        let before = choices_of(&mut ix, &workers);
        let used: BTreeSet<Option<IpAddr>> = before.values().map(|c| c.0).collect();
        assert_eq!(used.len(), 3, "pods use every IP");
        // A gateway dies: its IP moves to another gateway with its pods; no other pod moves.
        let dead = out.ips[1].node.clone().unwrap();
        let mut live: BTreeSet<String> = ix.nodes.iter().map(|n| n.name.clone()).collect();
        live.remove(&dead);
        ix.set_live(&live);
        assert_same_as_planner(&mut ix);
        let after = choices_of(&mut ix, &workers);
        let mut moved = 0;
        for (src, (ip, gw)) in &before {
            let (ip2, gw2) = &after[src];
            assert_eq!(ip, ip2, "{src} keeps its egress IP");
            if gw == &dead {
                assert_ne!(gw2, &dead);
                moved += 1;
            } else {
                assert_eq!(gw, gw2, "{src} stays on its gateway");
            }
        }
        assert!(moved > 0);
        // Two IPs now share a gateway, which the object says.
        let out = ix.control_plan().egresses.remove(0);
        let assigned = out.conditions.iter().find(|c| c.type_ == api::IP_ASSIGNED).unwrap();
        assert!(assigned.message.contains("spec.externalIPPools: 3 egress IPs share 2 gateways"), "{assigned:?}");
        // It comes back and takes its IP back.
        live.insert(dead);
        ix.set_live(&live);
        assert_eq!(choices_of(&mut ix, &workers), before);
        assert_same_as_planner(&mut ix);
    }

    #[test]
    fn foreign_kinds_are_translated_and_deleted_with_their_object() {
        let mut ix = lab_index();
        let cilium: CiliumPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "c"},
            "spec": {
                "selectors": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                "destinationCIDRs": ["0.0.0.0/0"],
                "egressGateway": {"nodeSelector": {"matchLabels": {"network-role": "egress-gateway"}}, "egressIP": "10.10.0.30"}
            }
        }))
        .unwrap();
        ix.apply(Change::CiliumPolicies(Event::Apply(cilium)));
        assert!(ix.api_pools().iter().any(|p| p.metadata.name.as_deref() == Some("cilium-c")));
        assert!(!ix.node_plan("node-1").unwrap().steer.is_empty());
        assert_same_as_planner(&mut ix);
        ix.apply(Change::CiliumPolicies(Event::Delete(ObjectRef::cluster("c"))));
        assert!(ix.api_pools().is_empty() && ix.api_egresses().is_empty());
        assert!(ix.node_plan("node-1").unwrap().steer.is_empty());
        let bad: AntreaEgress = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a"}, "spec": {"egressIP": "10.10.0.8", "bandwidth": {"rate": "1M"}}
        }))
        .unwrap();
        ix.apply(Change::AntreaEgresses(Event::Apply(bad)));
        assert_eq!(ix.translation_problems().len(), 1);
    }

    #[test]
    fn many_egresses_at_once_match_like_one_at_a_time() {
        // More Egresses in one reset than the per-Egress re-match handles: the bulk path.
        let mut ix = lab_index();
        ix.apply(Change::Pools(Event::Apply(mk_pool("p", &[("10.10.0.11", "10.10.0.90")], &[]))));
        let many: Vec<api::Egress> = (0..40)
            .map(|i| {
                let mut e = mk_egress(&format!("e{i:02}"), Some("p"), None);
                e.spec.applied_to.namespace_selector =
                    (i % 3 != 0).then(|| mk_match(&[("env", ["prod", "staging"][i % 2])]));
                e.spec.applied_to.pod_selector =
                    (i % 4 != 0).then(|| mk_match(&[("app", ["web", "payment", "client"][i % 3])]));
                e.spec.destination_cidrs = vec![format!("203.0.113.{}/32", i)];
                e
            })
            .collect();
        ix.apply(Change::Egresses(Event::Reset(many.clone())));
        assert_same_as_planner(&mut ix);
        let mut one_by_one = lab_index();
        one_by_one.apply(Change::Pools(Event::Apply(mk_pool("p", &[("10.10.0.11", "10.10.0.90")], &[]))));
        for e in many {
            one_by_one.apply(Change::Egresses(Event::Apply(e)));
            one_by_one.settle();
        }
        for n in ["node-1", "node-2", "node-3", "node-4", "node-5", "node-6"] {
            assert_eq!(ix.node_plan(n), one_by_one.node_plan(n), "{n}");
        }
        // And a namespace change afterwards still follows.
        ix.apply(Change::Namespaces(Event::Apply(mk_ns("default", &[("env", "prod")]))));
        assert_same_as_planner(&mut ix);
    }

    /// One step of a random history.
    #[derive(Debug, Clone)]
    enum Op {
        Pod {
            ns: usize,
            name: usize,
            app: usize,
            node: usize,
            ip6: bool,
            dup: bool,
        },
        DeletePod {
            ns: usize,
            name: usize,
        },
        Namespace {
            ns: usize,
            env: usize,
        },
        /// `ips`: 0 a static IP, 1 one from pool `p`, 2 one from each of `p` and `q` (spread),
        /// 3 one from each of `p` and `p6` (dual-stack), 4 two gateway nodes' own addresses.
        Egress {
            name: usize,
            ns_env: Option<usize>,
            app: Option<usize>,
            dest: usize,
            ips: usize,
            created: i64,
        },
        DeleteEgress {
            name: usize,
        },
        NodeLabel {
            node: usize,
            gw: bool,
        },
        Live {
            node: usize,
            up: bool,
        },
    }

    const NS: [&str; 3] = ["prod", "staging", "default"];
    const APPS: [&str; 3] = ["web", "db", "api"];
    const ENVS: [&str; 2] = ["prod", "staging"];
    const DESTS: [&[&str]; 3] = [&[], &["203.0.113.0/24"], &["203.0.113.0/25", "198.51.100.0/24"]];

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            // node 6 does not exist; `dup` pods share one address (stale pod objects).
            4 => (0..3usize, 0..6usize, 0..3usize, 0..7usize, any::<bool>(), proptest::bool::weighted(0.2))
                .prop_map(|(ns, name, app, node, ip6, dup)| Op::Pod { ns, name, app, node, ip6, dup }),
            1 => (0..3usize, 0..6usize).prop_map(|(ns, name)| Op::DeletePod { ns, name }),
            1 => (0..3usize, 0..2usize).prop_map(|(ns, env)| Op::Namespace { ns, env }),
            3 => (0..5usize, proptest::option::of(0..2usize), proptest::option::of(0..3usize), 0..3usize, 0..5usize, 0..4i64)
                .prop_map(|(name, ns_env, app, dest, ips, created)| Op::Egress { name, ns_env, app, dest, ips, created }),
            1 => (0..5usize).prop_map(|name| Op::DeleteEgress { name }),
            1 => (0..6usize, any::<bool>()).prop_map(|(node, gw)| Op::NodeLabel { node, gw }),
            1 => (0..6usize, any::<bool>()).prop_map(|(node, up)| Op::Live { node, up }),
        ]
    }

    fn run(ix: &mut Index, op: Op) {
        match op {
            Op::Pod { ns, name, app, node, ip6, dup } => {
                // One stable address per pod identity, unless `dup`: then one shared address.
                let id = ns * 6 + name;
                let ip = if dup {
                    "10.244.1.250".to_string()
                } else if ip6 {
                    format!("fd00:244::{}", id + 1)
                } else {
                    format!("10.244.{}.{}", node + 1, id + 20)
                };
                let mut p =
                    mk_pod(NS[ns], &format!("p{name}"), &[("app", APPS[app])], &format!("node-{}", node + 1), &ip);
                if ip6 {
                    p.ips.insert(0, format!("10.244.{}.{}", node + 1, id + 20).parse().unwrap());
                }
                ix.apply(Change::Pods(Event::Apply(p)));
            }
            Op::DeletePod { ns, name } => {
                ix.apply(Change::Pods(Event::Delete(ObjectRef::namespaced(NS[ns], format!("p{name}")))))
            }
            Op::Namespace { ns, env } => {
                ix.apply(Change::Namespaces(Event::Apply(mk_ns(NS[ns], &[("env", ENVS[env])]))))
            }
            Op::Egress { name, ns_env, app, dest, ips, created } => {
                let ip = (ips == 0).then(|| format!("10.10.0.{}", 104 + name % 3));
                let mut e = mk_egress(&format!("e{name}"), (ips == 1).then_some("p"), ip.as_deref());
                match ips {
                    2 => e.spec.external_ip_pools = vec!["p".into(), "q".into()],
                    3 => e.spec.external_ip_pools = vec!["p".into(), "p6".into()],
                    4 => {
                        let node_selector = mk_match(&[("network-role", "egress-gateway")]);
                        e.spec.gateway_nodes =
                            vec![api::GatewayNode { node_selector, ip_family: None, interface: None }; 2];
                    }
                    _ => {}
                }
                e.spec.applied_to.namespace_selector = ns_env.map(|i| mk_match(&[("env", ENVS[i])]));
                e.spec.applied_to.pod_selector = app.map(|i| mk_match(&[("app", APPS[i])]));
                e.spec.destination_cidrs = DESTS[dest].iter().map(|s| s.to_string()).collect();
                e.metadata.creation_timestamp = Some(ts(created));
                ix.apply(Change::Egresses(Event::Apply(e)));
            }
            Op::DeleteEgress { name } => {
                ix.apply(Change::Egresses(Event::Delete(ObjectRef::cluster(format!("e{name}")))))
            }
            Op::NodeLabel { node, gw } => {
                let i = node + 1;
                let kv: &[(&str, &str)] = if gw { &[("network-role", "egress-gateway")] } else { &[] };
                let n = mk_node(&format!("node-{i}"), &format!("10.10.0.{}", 100 + i), &format!("10.244.{i}.0/24"), kv);
                ix.apply(Change::Nodes(Event::Apply(n)));
            }
            Op::Live { node, up } => {
                let mut live = ix.live.clone();
                let n = format!("node-{}", node + 1);
                if up {
                    live.insert(n);
                } else {
                    live.remove(&n);
                }
                ix.set_live(&live);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
        /// After any history of events, every node's plan equals the whole-cluster planner's.
        #[test]
        fn same_as_the_planner_after_any_history(ops in proptest::collection::vec(op(), 1..40), check_every in 1usize..8) {
            let mut ix = lab_index();
            let mut pool = mk_pool("p", &[("10.10.0.11", "10.10.0.13")], &[]);
            pool.spec.node_selector = mk_match(&[("network-role", "egress-gateway")]);
            ix.apply(Change::Pools(Event::Apply(pool)));
            // Any node for `q`; IPv6 for `p6` (nodes without IPv6: its IPs go unplaced).
            ix.apply(Change::Pools(Event::Apply(mk_pool("q", &[("10.10.0.14", "10.10.0.16")], &[]))));
            ix.apply(Change::Pools(Event::Apply(mk_pool("p6", &[], &["fd00:10::/125"]))));
            for (i, op) in ops.into_iter().enumerate() {
                run(&mut ix, op);
                if i % check_every == 0 {
                    assert_same_as_planner(&mut ix);
                }
            }
            assert_same_as_planner(&mut ix);
            // The generated Egresses are all valid (several IPs, dual-stack included).
            prop_assert!(ix.validation_problems().is_empty(), "{:?}", ix.validation_problems());
            let (pools, egresses) = ix.all_objects();
            let nodes: Vec<Node> = ix.nodes.clone();
            let (_, whole) = planner::plan_objects(&pools, &egresses, &nodes, &[], &[], &ix.live, &ix.config);
            prop_assert_eq!(ix.control_plan().egresses, whole.egresses);
        }
    }
}
