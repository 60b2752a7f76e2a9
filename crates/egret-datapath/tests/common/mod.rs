//! Shared pieces of the privileged tests: a small cluster builder feeding egret-core's real
//! planner (validate -> allocate -> plan -> node_plans), and helpers to program and inspect
//! node namespaces.
#![allow(dead_code)]

use egret_api::v1alpha1 as api;
use egret_core::model::{Namespace, Node, Pod};
use egret_core::planner::{ClusterConfig, NodePlan, Plan, plan_objects};
use egret_datapath::{Config, Datapath, SyncReport};
use egret_netns::{Topology, node_ip, node_ip6, node_name, pod_cidr, pod_cidr6, pod_ip6};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

pub const T: Duration = Duration::from_secs(3);

/// The address of pod `default/web-1` on node 1 in most scenarios.
pub const WEB1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);

pub fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub fn sel(kv: &[(&str, &str)]) -> LabelSelector {
    LabelSelector { match_labels: Some(labels(kv)), match_expressions: None }
}

/// The objects of a small cluster, shaped like the topology.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub pools: Vec<api::ExternalIPPool>,
    pub egresses: Vec<api::Egress>,
    pub live: BTreeSet<String>,
}

impl Cluster {
    /// `n` nodes like the topology's; `gateways` (1-based) carry `network-role=egress-gateway`.
    pub fn new(n: usize, gateways: &[usize]) -> Cluster {
        let nodes: Vec<Node> = (1..=n)
            .map(|i| {
                let mut l = labels(&[("kubernetes.io/hostname", &node_name(i))]);
                if gateways.contains(&i) {
                    l.insert("network-role".into(), "egress-gateway".into());
                }
                Node {
                    name: node_name(i),
                    labels: l,
                    internal_ips: vec![IpAddr::V4(node_ip(i)), IpAddr::V6(node_ip6(i))],
                    addresses: vec![IpAddr::V4(node_ip(i)), IpAddr::V6(node_ip6(i))],
                    pod_cidrs: vec![pod_cidr(i).into(), pod_cidr6(i).into()],
                    interfaces: Default::default(),
                }
            })
            .collect();
        let live = nodes.iter().map(|n| n.name.clone()).collect();
        Cluster {
            nodes,
            namespaces: vec![Namespace {
                name: "default".into(),
                labels: labels(&[("kubernetes.io/metadata.name", "default")]),
            }],
            pods: vec![],
            pools: vec![],
            egresses: vec![],
            live,
        }
    }

    pub fn namespace(&mut self, name: &str) -> &mut Self {
        self.namespaces.push(Namespace { name: name.into(), labels: labels(&[("kubernetes.io/metadata.name", name)]) });
        self
    }

    pub fn pod(&mut self, ns: &str, name: &str, app: &str, node: usize, ip: Ipv4Addr) -> &mut Self {
        self.pods.push(Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: labels(&[("app", app)]),
            node: Some(node_name(node)),
            ips: vec![IpAddr::V4(ip)],
        });
        self
    }

    /// A dual-stack pod: `ip` and its IPv6 twin ([`pod_ip6`]), as the topology plumbs it.
    pub fn pod_dual(&mut self, ns: &str, name: &str, app: &str, node: usize, ip: Ipv4Addr) -> &mut Self {
        self.pod(ns, name, app, node, ip);
        if let Some(p) = self.pods.last_mut() {
            p.ips.push(IpAddr::V6(pod_ip6(ip)));
        }
        self
    }

    /// A pool like [`Cluster::pool`] on an egress subnet (`subnetInfo`).
    pub fn pool_subnet(
        &mut self,
        name: &str,
        start: &str,
        end: &str,
        gateway: &str,
        prefix: i32,
        vlan: i32,
    ) -> &mut Self {
        self.pool(name, start, end);
        if let Some(p) = self.pools.last_mut() {
            p.spec.subnet_info = Some(api::SubnetInfo {
                gateway: gateway.into(),
                prefix_length: prefix,
                vlan: (vlan != 0).then_some(vlan),
            });
        }
        self
    }

    /// A pool whose IPs may live on nodes labelled `network-role=egress-gateway`.
    pub fn pool(&mut self, name: &str, start: &str, end: &str) -> &mut Self {
        self.pool_on(name, start, end, sel(&[("network-role", "egress-gateway")]))
    }

    pub fn pool_on(&mut self, name: &str, start: &str, end: &str, nodes: LabelSelector) -> &mut Self {
        self.pools.push(api::ExternalIPPool::new(
            name,
            api::ExternalIPPoolSpec {
                ip_ranges: vec![api::IPRange { cidr: None, start: Some(start.into()), end: Some(end.into()) }],
                node_selector: nodes,
                subnet_info: None,
            },
        ));
        self
    }

    /// An Egress for pods labelled `app=APP` in every namespace.
    pub fn egress(&mut self, name: &str, app: &str, pool: &str, destinations: &[&str], excluded: &[&str]) -> &mut Self {
        self.egresses.push(api::Egress::new(
            name,
            api::EgressSpec {
                applied_to: api::AppliedTo { pod_selector: Some(sel(&[("app", app)])), ..Default::default() },
                external_ip_pool: Some(pool.into()),
                destination_cidrs: destinations.iter().map(|s| s.to_string()).collect(),
                excluded_cidrs: excluded.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        ));
        self
    }

    /// The common scenario: `n` nodes (`gateways` eligible), pod `default/web-1` (app=web) on
    /// node 1 at [`WEB1`], a pool 10.10.0.11-20 and Egress `eg-web` selecting it.
    pub fn web_egress(n: usize, gateways: &[usize]) -> Cluster {
        let mut c = Cluster::new(n, gateways);
        c.pod("default", "web-1", "web", 1, WEB1).pool("pool", "10.10.0.11", "10.10.0.20").egress(
            "eg-web",
            "web",
            "pool",
            &[],
            &[],
        );
        c
    }

    /// Runs the real planner.
    pub fn plan(&self) -> Plan {
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

pub fn egress_ip(p: &Plan, egress: &str) -> IpAddr {
    p.egresses.iter().find(|e| e.name == egress).and_then(|e| e.egress_ip()).expect("egress IP allocated")
}

/// 1-based index of the gateway node of `egress`.
pub fn gateway(p: &Plan, egress: &str) -> Option<usize> {
    let node = p.egresses.iter().find(|e| e.name == egress)?.egress_node()?.to_string();
    node.strip_prefix("node-")?.parse().ok()
}

/// One Datapath per node (index 0 = node-1).
pub fn datapaths(n: usize) -> Vec<Datapath> {
    (0..n).map(|_| Datapath::new(Config::default()).unwrap()).collect()
}

/// Syncs node `i` (1-based) to its share of `plan`, inside the node's namespace.
pub fn sync(topo: &Topology, dp: &mut Datapath, i: usize, plan: &Plan) -> SyncReport {
    let np: NodePlan = plan.node_plans().remove(&node_name(i)).expect("node plan");
    topo.node(i).ns.run(|| dp.sync(&np)).unwrap().unwrap_or_else(|e| panic!("sync node-{i}: {e}"))
}

/// Syncs every node.
pub fn sync_all(topo: &Topology, dps: &mut [Datapath], plan: &Plan) -> Vec<SyncReport> {
    dps.iter_mut().enumerate().map(|(k, dp)| sync(topo, dp, k + 1, plan)).collect()
}

pub fn to(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

pub fn v4(ip: Ipv4Addr) -> IpAddr {
    IpAddr::V4(ip)
}

pub fn to6(ip: Ipv6Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

pub fn v6(ip: Ipv6Addr) -> IpAddr {
    IpAddr::V6(ip)
}

/// Everything a node's state is compared by: nft ruleset, links, addresses, routes of every
/// table, rules, FDB of Egret's device and permanent neighbours.
pub fn snapshot(topo: &Topology, i: usize) -> String {
    let ns = &topo.node(i).ns;
    let mut out = String::new();
    out += &ns.exec("nft", &["list", "ruleset"]).unwrap();
    out += &ns.ip(&["-d", "link", "show"]).unwrap();
    out += &ns.ip(&["addr", "show"]).unwrap();
    out += &ns.ip(&["route", "show", "table", "all"]).unwrap();
    out += &ns.ip(&["-6", "route", "show", "table", "all"]).unwrap();
    out += &ns.ip(&["rule", "show"]).unwrap();
    out += &ns.ip(&["-6", "rule", "show"]).unwrap();
    out += &ns.ip(&["neigh", "show", "nud", "permanent"]).unwrap();
    out += &ns.exec("bridge", &["fdb", "show"]).unwrap();
    // IPv6 duplicate address detection finishes on its own schedule.
    out.replace(" tentative", "")
}

/// Asserts two snapshots are equal, printing only the lines that differ.
pub fn assert_same(what: &str, a: &str, b: &str) {
    if a == b {
        return;
    }
    let la: Vec<&str> = a.lines().collect();
    let lb: Vec<&str> = b.lines().collect();
    let gone: Vec<&&str> = la.iter().filter(|l| !lb.contains(l)).collect();
    let new: Vec<&&str> = lb.iter().filter(|l| !la.contains(l)).collect();
    panic!("{what} changed:\n- {gone:#?}\n+ {new:#?}");
}

/// The router's neighbour entry for `ip` once it names `want` (an announcement moved it), or
/// as it is after 3 s.
pub fn router_neighbour_after_move(topo: &Topology, ip: IpAddr, want: &Option<String>) -> Option<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let now = topo.router_neighbour(ip).unwrap();
        if now == *want || std::time::Instant::now() >= deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until a connection is idle (delayed ACKs sent) so that counters stop moving.
pub fn quiesce() {
    std::thread::sleep(Duration::from_millis(400));
}

/// Counter of `egress` on node `i`.
pub fn counter(topo: &Topology, dp: &Datapath, i: usize, egress: &str) -> egret_datapath::Counter {
    topo.node(i).ns.run(|| dp.counters()).unwrap().unwrap().get(egress).copied().unwrap_or_default()
}

/// Bits per second iperf3 measured from pod web-1 to db-a over `secs`, with `streams` parallel
/// TCP streams (the benchmark examples; needs `iperf3 -s` on db-a).
pub fn iperf(topo: &Topology, secs: u32, streams: u32) -> f64 {
    iperf_to(topo, secs, streams, IpAddr::V4(egret_netns::DB_A))
}

/// [`iperf`] to `dst` (db-a's address of either family).
pub fn iperf_to(topo: &Topology, secs: u32, streams: u32, dst: IpAddr) -> f64 {
    let out = topo
        .pod("web-1")
        .expect("pod web-1")
        .ns
        .exec("iperf3", &["-c", &dst.to_string(), "-t", &secs.to_string(), "-P", &streams.to_string(), "-J"])
        .expect("iperf3 client");
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"].as_f64().expect("bits_per_second")
}

/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
