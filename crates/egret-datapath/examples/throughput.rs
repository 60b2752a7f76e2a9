//! Per-packet cost of Egret's datapath: the same tunnel path with and without Egret's rules.
//!
//! `cargo run --release -p egret-datapath --example throughput [-- SECONDS ROUNDS [--scale | --ipv6] [--only VARIANT[,VARIANT...]] [--measure M] [--no-tunnel-tso] [--underlay-gro] [--mtu N]]`
//! (root, `nft` and `iperf3` needed). Topology: pod web-1 on node-1, gateway node-2, iperf3
//! server and a TCP acceptor on db-a (203.0.113.5) behind the router; every address lives in
//! network namespaces this program creates and removes.
//!
//! Variants, each measured once per round in an order that rotates from round to round:
//! - **baseline**: the VXLAN device, FDB, neighbours and routing tables Egret set up, but table
//!   `inet egret` deleted; pod traffic enters the tunnel by a plain source rule
//!   (`ip rule from 10.244.1.10 lookup TABLE`). Without Egret's SNAT binding, node-1's CNI
//!   masquerade rewrites the pod to an address on node-1's tunnel device (198.19.0.1, in place
//!   of node-1's own address there); plain routes (router -> node-2, node-2 -> tunnel) carry the
//!   replies back the same way. Conntrack and a masquerade are on the path, as on any node.
//! - **hooks**: the baseline plus, on both nodes, a table with Egret's three base chains
//!   (filter prerouting and forward at -150, nat postrouting at 90) holding no rule: what
//!   hooking into netfilter at all costs, the floor of any nftables datapath.
//! - **egret**: both nodes synced by `Datapath::sync` for one Egress (nft table `inet egret`,
//!   marks, fwmark rules, VXLAN, SNAT to the egress IP on node-2).
//! - **firewall**: as egret, plus an egress firewall on node-1 (one ClusterEgressPolicy allowing
//!   the outside network, default deny) applied to web-1.
//! - **scale** (with `--scale`): as egret, but both nodes programmed with 1,000 Egresses and
//!   10,000 pods besides web-1's: every Egress selects 10 pods of node-1 and sends them to
//!   203.0.113.0/24 (web-1's destination too) and to a /25 of its own, so the steering, counter
//!   and SNAT maps web-1's packets are looked up in hold 20,000 entries overlapping its own.
//!
//! With `--ipv6` the same over IPv6 (variants baseline and egret): web-1's IPv6 address
//! (fd00:10:244:1::10) selected by an IPv6 Egress (pool fd00:10:10::11-1f, gateway node-2),
//! traffic to db-a's IPv6 address (2001:db8:113::5), still through the IPv4 tunnel. Its baseline
//! sends the pod's IPv6 traffic into the tunnel by `ip -6 rule from fd00:10:244:1::10`, the CNI
//! masquerade rewrites it to fd00:198:19::1 on node-1's tunnel device, and plain routes carry
//! the replies back through node-2.
//!
//! Each variant, each round: bulk TCP (iperf3, 4 streams), UDP datagrams per second delivered
//! with 64- and 512-byte payloads (one thread in the pod sends as fast as it can; db-a counts
//! them in an nft counter and drops them before any socket, so no receiver is woken per
//! datagram and the path is what limits the rate), and new TCP connections per second (handshake, then reset: every connection
//! a new flow, classified and SNATed). For each of the four, also the CPU time the machine
//! spent busy per unit (MB, datagram, connection; `/proc/stat` without idle and steal): on a
//! host shared with other guests the rates move with the neighbours' load, the cost per unit
//! much less. Printed: every round, then per measure the medians, the ratio of medians and the
//! median and spread of the per-round ratios to the baseline (and of scale to egret); for the
//! CPU figures a ratio above 100% means Egret costs more. SIGINT, SIGTERM or SIGHUP stop it
//! after the measure under way; the whole rounds so far are summarised and every namespace is
//! removed.
//!
//! Link settings, applied once to the whole lab before the first round, so every variant of a
//! run shares them (what a cluster's NICs and MTU choice change; `ethtool` needed for the first
//! two):
//! - `--no-tunnel-tso`: the nodes' underlay devices lose UDP-tunnel segmentation
//!   (`tx-udp_tnl-segmentation`, `tx-udp_tnl-csum-segmentation` off), as on a NIC without it:
//!   the tunnel's large TCP packets are cut to the MTU on the pod's node, and the gateway gets
//!   one packet per MTU. By default the lab's veths carry them whole from end to end.
//! - `--underlay-gro`: GRO on the nodes' underlay devices (`gro on`; off by default on a veth),
//!   so a node aggregates the tunnel packets it receives before they pass its hooks.
//! - `--mtu N`: every link of the lab N bytes, the tunnel device N - 50 (its MSS clamp follows).
//!
//! `--patch DIR` adds a variant, **patched**: egret (with `--scale`: scale), then on each node
//! i the shell script `DIR/node<i>.up`, or else `DIR/all.up`, run in the node's namespace
//! before measuring, and `node<i>.down` / `all.down` after; the next variant's sync puts
//! Egret's own rules back. For trying a
//! change of the ruleset side by side with the real one before writing it in `nft.rs`; the
//! changes tried so far are in `examples/patches/` (docs/datapath.md has what each gave).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "shared/mod.rs"]
mod shared;

use common::*;
use egret_core::planner::{NodePlan, Plan};
use egret_datapath::Datapath;
use egret_netns::{DB_A, DB_A6, Topology, TopologySpec, node_name};
use shared::*;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Variant {
    Baseline,
    Hooks,
    Egret,
    Firewall,
    Scale,
    Patched,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Baseline => "baseline",
            Variant::Hooks => "hooks",
            Variant::Egret => "egret",
            Variant::Firewall => "firewall",
            Variant::Scale => "scale",
            Variant::Patched => "patched",
        }
    }
}

const MEASURES: [&str; 8] = [
    "bulk TCP, 4 streams (Gbit/s)",
    "UDP 64 B (datagrams/s)",
    "UDP 512 B (datagrams/s)",
    "TCP connections/s",
    "CPU per MB of bulk TCP (us)",
    "CPU per 64 B datagram (us)",
    "CPU per 512 B datagram (us)",
    "CPU per TCP connection (us)",
];

/// The figures of one variant in one round, in the order of [`MEASURES`]: four rates, then the
/// machine's busy CPU time per unit of each (MB, datagram, connection), which a host shared
/// with other guests disturbs far less than the rates.
/// `only` (`--measure bulk|udp64|udp512|conns`) skips the others (NaN), e.g. to profile one.
fn measure(topo: &Topology, secs: u32, only: Option<&str>, dst: IpAddr) -> [f64; 8] {
    let s = f64::from(secs);
    let timed = |name: &str, f: &dyn Fn() -> f64, units_per_rate: f64| {
        if only.is_some_and(|o| o != name) {
            return (f64::NAN, f64::NAN);
        }
        let c = cpu_busy();
        let rate = f();
        (rate, (cpu_busy() - c) * 1e6 / (rate * units_per_rate * s))
    };
    let bulk = timed("bulk", &|| iperf_to(topo, secs, 4, dst), 1.0 / 8e6);
    let u64b = timed("udp64", &|| udp_flood(topo, secs, 64, dst), 1.0);
    let u512 = timed("udp512", &|| udp_flood(topo, secs, 512, dst), 1.0);
    let conns = timed("conns", &|| connections(topo, secs, dst), 1.0);
    [bulk.0 / 1e9, u64b.0, u512.0, conns.0, bulk.1, u64b.1, u512.1, conns.1]
}

/// The one-Egress cluster plus 1,000 Egresses x 10 pods of node-1, all through node-2.
fn scale_plan() -> Plan {
    let mut c = Cluster::web_egress(2, &[2]);
    c.pool("scale", "100.64.0.1", "100.64.7.254");
    let base = u32::from(Ipv4Addr::new(10, 245, 0, 0));
    for k in 0..1000u32 {
        let app = format!("sc-{k:04}");
        for j in 0..10 {
            c.pod("default", &format!("sc-{k:04}-{j}"), &app, 1, Ipv4Addr::from(base + k * 10 + j));
        }
        let own = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + k * 128);
        c.egress(&app, &app, "scale", &[&format!("{own}/25"), "203.0.113.0/24"], &[]);
    }
    c.plan()
}

/// web-1 dual-stack, selected by one IPv6 Egress whose gateway is node-2.
fn ipv6_plan() -> Plan {
    let mut c = Cluster::new(2, &[2]);
    c.pod_dual("default", "web-1", "web", 1, WEB1).pool("pool6", "fd00:10:10::11", "fd00:10:10::1f").egress(
        "eg-web6",
        "web",
        "pool6",
        &[],
        &[],
    );
    c.plan()
}

/// The per-node plans of a variant (index 0 = node-1).
fn plans_of(plan: &Plan) -> Vec<NodePlan> {
    let mut all = plan.node_plans();
    (1..=2).map(|i| all.remove(&node_name(i)).expect("node plan")).collect()
}

/// Programs both nodes; returns how long the slower sync took.
fn program(topo: &Topology, dps: &mut [Datapath], plans: &[NodePlan]) -> Duration {
    let mut slowest = Duration::ZERO;
    for (k, (dp, np)) in dps.iter_mut().zip(plans).enumerate() {
        let t = Instant::now();
        topo.node(k + 1).ns.run(|| dp.sync(np)).unwrap().unwrap_or_else(|e| panic!("sync node-{}: {e}", k + 1));
        slowest = slowest.max(t.elapsed());
    }
    slowest
}

/// The baseline's changes on top of Egret's links and tables (see the module doc); undone by
/// [`Baseline::undo`].
struct Baseline {
    table: String,
    ipv6: bool,
    hooks: bool,
}

/// The `hooks` variant's table: base chains at Egret's hooks and priorities, with no rule.
const FLOOR_TABLE: &str = "egret_floor";

const N1_TUNNEL: &str = "198.19.0.1/32";
const N1_TUNNEL6: &str = "fd00:198:19::1/128";

impl Baseline {
    fn apply(topo: &Topology, dps: &[Datapath], ipv6: bool, hooks: bool) -> Baseline {
        let cfg = egret_datapath::Config::default();
        let (n1_ip, n2_ip) = (egret_netns::node_ip(1).to_string(), egret_netns::node_ip(2));
        let table = cfg.table(dps[0].peer_id(n2_ip).expect("node-1 has a local id for node-2")).to_string();
        for i in 1..=2 {
            topo.node(i).ns.exec("nft", &["delete", "table", "inet", "egret"]).unwrap();
            if hooks {
                let ruleset = format!(
                    "table inet {FLOOR_TABLE} {{\n chain prerouting {{ type filter hook prerouting priority -150; }}\n \
                     chain forward {{ type filter hook forward priority -150; }}\n \
                     chain postrouting_nat {{ type nat hook postrouting priority 90; }}\n}}\n"
                );
                topo.node(i).ns.exec_stdin("nft", &["-f", "-"], &ruleset).unwrap();
            }
        }
        let n1 = &topo.node(1).ns;
        if ipv6 {
            let pod6 = egret_netns::pod_ip6(WEB1).to_string();
            n1.ip(&["-6", "rule", "add", "from", &pod6, "lookup", &table, "pref", "1600"]).unwrap();
            n1.ip(&["-6", "addr", "add", N1_TUNNEL6, "dev", &cfg.vxlan_name, "nodad"]).unwrap();
            // node-2 reaches node-1 through the tunnel by the label Egret's own routes use.
            let label = egret_datapath::config::tunnel_ll6(egret_datapath::config::tunnel_mac(egret_netns::node_ip(1)));
            let n2 = &topo.node(2).ns;
            n2.ip(&["-6", "route", "add", N1_TUNNEL6, "via", &label.to_string(), "dev", &cfg.vxlan_name]).unwrap();
            let n2_ip6 = egret_netns::node_ip6(2).to_string();
            topo.router.ip(&["-6", "route", "add", N1_TUNNEL6, "via", &n2_ip6]).unwrap();
            let seen = egret_netns::whoami(&topo.pod("web-1").unwrap().ns, to6(DB_A6, 8080), T).unwrap();
            assert_eq!(
                seen.to_string(),
                N1_TUNNEL6.trim_end_matches("/128"),
                "baseline goes through the tunnel and node-2"
            );
            return Baseline { table, ipv6, hooks };
        }
        n1.ip(&["rule", "add", "from", &WEB1.to_string(), "lookup", &table, "pref", "1600"]).unwrap();
        // Add before deleting: removing a device's last IPv4 address flushes its routes and
        // neighbours.
        n1.ip(&["addr", "add", N1_TUNNEL, "dev", &cfg.vxlan_name]).unwrap();
        n1.ip(&["addr", "del", &format!("{n1_ip}/32"), "dev", &cfg.vxlan_name]).unwrap();
        let n2 = &topo.node(2).ns;
        n2.ip(&["route", "add", N1_TUNNEL, "via", &n1_ip, "dev", &cfg.vxlan_name, "onlink"]).unwrap();
        topo.router.ip(&["route", "add", N1_TUNNEL, "via", &n2_ip.to_string()]).unwrap();
        let seen = egret_netns::whoami(&topo.pod("web-1").unwrap().ns, to(DB_A, 8080), T).unwrap();
        assert_eq!(seen.to_string(), N1_TUNNEL.trim_end_matches("/32"), "baseline goes through the tunnel and node-2");
        Baseline { table, ipv6, hooks }
    }

    fn undo(self, topo: &Topology) {
        let cfg = egret_datapath::Config::default();
        if self.hooks {
            for i in 1..=2 {
                topo.node(i).ns.exec("nft", &["delete", "table", "inet", FLOOR_TABLE]).unwrap();
            }
        }
        if self.ipv6 {
            let n1 = &topo.node(1).ns;
            n1.ip(&["-6", "rule", "del", "pref", "1600", "lookup", &self.table]).unwrap();
            n1.ip(&["-6", "addr", "del", N1_TUNNEL6, "dev", &cfg.vxlan_name]).unwrap();
            topo.node(2).ns.ip(&["-6", "route", "del", N1_TUNNEL6]).unwrap();
            topo.router.ip(&["-6", "route", "del", N1_TUNNEL6]).unwrap();
            return;
        }
        let n1_ip = egret_netns::node_ip(1).to_string();
        let n1 = &topo.node(1).ns;
        n1.ip(&["rule", "del", "pref", "1600", "lookup", &self.table]).unwrap();
        n1.ip(&["addr", "add", &format!("{n1_ip}/32"), "dev", &cfg.vxlan_name]).unwrap();
        n1.ip(&["addr", "del", N1_TUNNEL, "dev", &cfg.vxlan_name]).unwrap();
        topo.node(2).ns.ip(&["route", "del", N1_TUNNEL]).unwrap();
        topo.router.ip(&["route", "del", N1_TUNNEL]).unwrap();
    }
}

/// The link settings of a run (see the module doc).
#[derive(Default)]
struct Links {
    no_tunnel_tso: bool,
    underlay_gro: bool,
    mtu: Option<u32>,
}

impl Links {
    fn describe(&self) -> String {
        let mut d = vec![if self.no_tunnel_tso { "no UDP-tunnel TSO" } else { "UDP-tunnel TSO" }.to_string()];
        d.push(if self.underlay_gro { "underlay GRO on" } else { "underlay GRO off" }.to_string());
        d.push(format!("MTU {}", self.mtu.unwrap_or(1500)));
        d.join(", ")
    }

    /// Once, after the tunnel device exists: the nodes' underlay features, every link's MTU.
    fn apply(&self, topo: &Topology) {
        let cfg = egret_datapath::Config::default();
        for node in &topo.nodes {
            let mut features = Vec::new();
            if self.no_tunnel_tso {
                features.extend(["tx-udp_tnl-segmentation", "off", "tx-udp_tnl-csum-segmentation", "off"]);
            }
            if self.underlay_gro {
                features.extend(["gro", "on"]);
            }
            if !features.is_empty() {
                let mut args = vec!["-K", cfg.underlay.as_str()];
                args.extend(features);
                node.ns.exec("ethtool", &args).unwrap();
            }
        }
        let Some(mtu) = self.mtu else { return };
        let all = [&topo.router, &topo.outside]
            .into_iter()
            .chain(topo.nodes.iter().map(|n| &n.ns))
            .chain(topo.pods.iter().map(|p| &p.ns));
        for ns in all {
            let links = ns.ip(&["-o", "link", "show"]).unwrap();
            let names: Vec<&str> = links
                .lines()
                .filter_map(|l| l.split(": ").nth(1))
                .map(|n| n.split('@').next().unwrap_or(n))
                .filter(|n| *n != "lo" && *n != cfg.vxlan_name)
                .collect();
            // Bridges last: a bridge's MTU may not exceed its ports'.
            let (bridges, others): (Vec<&str>, Vec<&str>) = names.iter().partition(|n| n.starts_with("br"));
            for n in others.into_iter().chain(bridges) {
                ns.ip(&["link", "set", "dev", n, "mtu", &mtu.to_string()]).unwrap();
            }
        }
        for node in &topo.nodes {
            node.ns.ip(&["link", "set", "dev", &cfg.vxlan_name, "mtu", &(mtu - 50).to_string()]).unwrap();
        }
    }
}

fn main() {
    let needs_ethtool = std::env::args().any(|a| a == "--no-tunnel-tso" || a == "--underlay-gro");
    let tools: &[&str] = if needs_ethtool { &["ip", "nft", "iperf3", "ethtool"] } else { &["ip", "nft", "iperf3"] };
    if let Some(why) = egret_netns::skip_reason(tools) {
        eprintln!("cannot run: {why}");
        std::process::exit(2);
    }
    let stop = stop_on_signal();
    let scale = std::env::args().any(|a| a == "--scale");
    let ipv6 = std::env::args().any(|a| a == "--ipv6");
    if scale && ipv6 {
        eprintln!("--scale and --ipv6: one or the other");
        std::process::exit(2);
    }
    // The flags that take a value; the two leading numbers are the other numeric arguments.
    const VALUED: [&str; 4] = ["--only", "--measure", "--mtu", "--patch"];
    let argv: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        debug_assert!(VALUED.contains(&name));
        argv.iter().position(|a| a == name).and_then(|i| argv.get(i + 1)).cloned()
    };
    let args: Vec<u32> = argv
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(i, _)| !VALUED.contains(&argv[i - 1].as_str()))
        .filter_map(|(_, a)| a.parse().ok())
        .collect();
    let secs = args.first().copied().unwrap_or(4);
    let rounds = args.get(1).copied().unwrap_or(9);
    // `--only NAME[,NAME...]` / `--measure M`: some variants / one measure alone, e.g. to profile it.
    // Checked before anything is built: `exit` would skip the namespaces' drop guards.
    let (only_variant, only_measure) = (flag("--only"), flag("--measure"));
    let known = if scale {
        &["baseline", "hooks", "egret", "firewall", "scale", "patched"][..]
    } else if ipv6 {
        &["baseline", "hooks", "egret", "patched"][..]
    } else {
        &["baseline", "hooks", "egret", "firewall", "patched"][..]
    };
    if only_variant.as_deref().is_some_and(|v| v.split(',').any(|v| !known.contains(&v))) {
        eprintln!("--only: one or several (comma-separated) of {}", known.join(", "));
        std::process::exit(2);
    }
    if only_measure.as_deref().is_some_and(|m| !["bulk", "udp64", "udp512", "conns"].contains(&m)) {
        eprintln!("--measure: one of bulk, udp64, udp512, conns");
        std::process::exit(2);
    }
    let mtu = match flag("--mtu").map(|m| m.parse::<u32>()) {
        None => None,
        Some(Ok(m)) if (1280..=65_000).contains(&m) => Some(m),
        Some(_) => {
            eprintln!("--mtu: a number of bytes, 1280..=65000");
            std::process::exit(2);
        }
    };
    let patch = flag("--patch").map(std::path::PathBuf::from);
    if let Some(dir) =
        patch.as_ref().filter(|d| ["node1", "node2", "all"].iter().all(|n| !d.join(format!("{n}.up")).is_file()))
    {
        eprintln!("--patch: {} holds none of node1.up, node2.up, all.up", dir.display());
        std::process::exit(2);
    }
    let links = Links {
        no_tunnel_tso: argv.iter().any(|a| a == "--no-tunnel-tso"),
        underlay_gro: argv.iter().any(|a| a == "--underlay-gro"),
        mtu,
    };

    let topo = Topology::build(&TopologySpec::new("bench-tput", 2).pod("web-1", 1, WEB1)).unwrap();
    let one = if ipv6 { ipv6_plan() } else { Cluster::web_egress(2, &[2]).plan() };
    let eip = egress_ip(&one, if ipv6 { "eg-web6" } else { "eg-web" });
    let dst: IpAddr = if ipv6 { DB_A6.into() } else { DB_A.into() };
    let _server = topo.outside.spawn("iperf3", &["-s"]).unwrap();
    start_acceptor(&topo);
    start_udp_sink(&topo);
    std::thread::sleep(Duration::from_millis(300));

    let mut plans: BTreeMap<Variant, Vec<NodePlan>> = BTreeMap::new();
    plans.insert(Variant::Egret, plans_of(&one));
    let mut fw = plans_of(&one);
    fw[0] = with_firewall(fw[0].clone(), &small_policies(), 0);
    plans.insert(Variant::Firewall, fw);
    if scale {
        let t = Instant::now();
        let p = scale_plan();
        assert_eq!(egress_ip(&p, "eg-web"), eip, "web-1 keeps its egress IP at scale");
        let np = plans_of(&p);
        eprintln!(
            "scale plan: {} Egresses, node-1 {} steering entries, node-2 {} SNAT entries (planned in {:.1} s)",
            p.egresses.len(),
            np[0].steer.len(),
            np[1].snat.len(),
            t.elapsed().as_secs_f64()
        );
        plans.insert(Variant::Scale, np);
    }
    let mut variants = vec![Variant::Baseline, Variant::Hooks, Variant::Egret, Variant::Firewall];
    if ipv6 {
        // The firewall variant's policies are IPv4's.
        variants.retain(|v| *v != Variant::Firewall);
    }
    if scale {
        variants.push(Variant::Scale);
    }
    // The patched variant patches what the run is about: at scale, the scale plan.
    let patched_base = if scale { Variant::Scale } else { Variant::Egret };
    if patch.is_some() {
        variants.push(Variant::Patched);
    }
    if let Some(only) = &only_variant {
        variants.retain(|v| only.split(',').any(|o| o == v.name()));
    }

    let mut dps = datapaths(2);
    if links.mtu.is_some() {
        // The tunnel device, whose MTU follows, exists once a node is synced.
        program(&topo, &mut dps, &plans[&Variant::Egret]);
    }
    links.apply(&topo);
    println!("links: {}", links.describe());
    let mut results: BTreeMap<Variant, Vec<[f64; 8]>> = BTreeMap::new();
    let mut done_rounds = 0;
    'rounds: for round in 0..rounds as usize {
        let mut order = variants.clone();
        order.rotate_left(round % variants.len());
        for v in order {
            let unplanned = if v == Variant::Patched { patched_base } else { Variant::Egret };
            let plan = plans.get(&v).unwrap_or(&plans[&unplanned]);
            let synced = program(&topo, &mut dps, plan);
            let baseline = matches!(v, Variant::Baseline | Variant::Hooks)
                .then(|| Baseline::apply(&topo, &dps, ipv6, v == Variant::Hooks));
            let patched = |step: &str| {
                for (i, node) in topo.nodes.iter().enumerate() {
                    let script = patch
                        .iter()
                        .flat_map(|d| [d.join(format!("node{}.{step}", i + 1)), d.join(format!("all.{step}"))])
                        .find(|f| f.is_file());
                    if let Some(f) = script.filter(|_| v == Variant::Patched) {
                        node.ns.exec("sh", &[&f.to_string_lossy()]).unwrap();
                    }
                }
            };
            patched("up");
            if baseline.is_none() {
                let seen = egret_netns::whoami(&topo.pod("web-1").unwrap().ns, (dst, 8080).into(), T).unwrap();
                assert_eq!(seen, eip);
            }
            let m = measure(&topo, secs, only_measure.as_deref(), dst);
            if let Some(b) = baseline {
                b.undo(&topo);
            }
            patched("down");
            println!(
                "round {} {:>8}: bulk {:.2} Gbit/s, UDP64 {:.0}/s, UDP512 {:.0}/s, {:.0} conn/s; CPU {:.0} us/MB, {:.2} us/datagram (64 B), {:.2} us/datagram (512 B), {:.1} us/conn (synced in {} ms)",
                round + 1,
                v.name(),
                m[0],
                m[1],
                m[2],
                m[3],
                m[4],
                m[5],
                m[6],
                m[7],
                synced.as_millis()
            );
            results.entry(v).or_default().push(m);
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break 'rounds;
            }
        }
        done_rounds += 1;
    }
    // A round cut short leaves variants with one more sample than others: keep whole rounds.
    for r in results.values_mut() {
        r.truncate(done_rounds);
    }
    for (i, dp) in dps.iter_mut().enumerate() {
        topo.node(i + 1).ns.run(|| dp.cleanup()).unwrap().unwrap();
    }

    if done_rounds == 0 {
        println!("\nstopped before a whole round: no summary");
        return;
    }
    let rounds = done_rounds;
    let col = |v: Variant, k: usize| results[&v].iter().map(|m| m[k]).collect::<Vec<f64>>();
    println!("\n{rounds} rounds x {secs} s per measure and variant");
    for (k, what) in MEASURES.iter().enumerate() {
        if variants.iter().all(|&v| col(v, k).iter().all(|x| x.is_nan())) {
            println!("{what}: not measured (--measure)");
            continue;
        }
        println!("{what}:");
        let base = results.contains_key(&Variant::Baseline).then(|| col(Variant::Baseline, k));
        for &v in &variants {
            let c = col(v, k);
            match &base {
                Some(base) if v != Variant::Baseline => {
                    let r = ratios(&c, base);
                    println!(
                        "  {:>8}: median {:.2}, spread {}; vs baseline: ratio of medians {:.1}%, per round median {:.1}% ({}%)",
                        v.name(),
                        median(c.clone()),
                        spread(&c),
                        100.0 * median(c.clone()) / median(base.clone()),
                        median(r.clone()),
                        spread(&r)
                    );
                }
                _ => println!("  {:>8}: median {:.2}, spread {}", v.name(), median(c.clone()), spread(&c)),
            }
        }
        // Side by side with what they change: scale with one Egress, the patch with its base.
        for (a, b) in [(Variant::Scale, Variant::Egret), (Variant::Patched, patched_base)] {
            if variants.contains(&a) && variants.contains(&b) {
                let r = ratios(&col(a, k), &col(b, k));
                let name = format!("{}/{}", a.name(), b.name());
                println!("  {name:>16}: per round median {:.1}% ({}%)", median(r.clone()), spread(&r));
            }
        }
    }
}
