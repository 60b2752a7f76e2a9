//! Throughput through the gateway with Egret's rules vs. the same tunnel path without them.
//!
//! `cargo run --release -p egret-datapath --example throughput [-- SECONDS ROUNDS]`
//! (root, `nft` and `iperf3` needed). Topology: pod web-1 on node-1, gateway node-2, iperf3
//! server on db-a (203.0.113.5) behind the router; every address lives in network namespaces
//! this program creates and removes.
//!
//! - **egret**: both nodes synced by `Datapath::sync` (nft table `inet egret`, marks, fwmark
//!   rules, VXLAN, SNAT to the egress IP on node-2).
//! - **baseline**: the same VXLAN device, FDB, neighbours and routing tables, but table
//!   `inet egret` deleted; pod traffic enters the tunnel by a plain source rule
//!   (`ip rule from 10.244.1.10 lookup TABLE`). Without Egret's SNAT binding, node-1's CNI
//!   masquerade rewrites the pod to an address on node-1's tunnel device (198.19.0.1 for the
//!   baseline, in place of node-1's own address there); plain routes (router -> node-2,
//!   node-2 -> tunnel) carry the replies back the same way.
//!
//! Rounds alternate between the two; the medians are compared.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use egret_netns::{DB_A, Topology, TopologySpec};

fn main() {
    if let Some(why) = egret_netns::skip_reason(&["ip", "nft", "iperf3"]) {
        eprintln!("cannot run: {why}");
        std::process::exit(2);
    }
    let args: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let secs = args.first().copied().unwrap_or(5);
    let rounds = args.get(1).copied().unwrap_or(3);

    let topo = Topology::build(&TopologySpec::new("bench-tput", 2).pod("web-1", 1, WEB1)).unwrap();
    let c = Cluster::web_egress(2, &[2]);
    let plan = c.plan();
    let eip = egress_ip(&plan, "eg-web");
    let cfg = egret_datapath::Config::default();
    // The CNI masquerade on node-1 rewrites the pod to the address of node-1's tunnel device
    // when no Egret rule binds the SNAT first; node-2 routes that address back into the tunnel.
    let n1_tunnel = "198.19.0.1/32";
    let (n1_ip, n2_ip) = (egret_netns::node_ip(1).to_string(), egret_netns::node_ip(2));
    let _server = topo.outside.spawn("iperf3", &["-s"]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));

    let mut dps = datapaths(2);
    let mut with = Vec::new();
    let mut without = Vec::new();
    for round in 0..rounds {
        // Egret.
        sync_all(&topo, &mut dps, &plan);
        assert_eq!(egret_netns::whoami(&topo.pod("web-1").unwrap().ns, to(DB_A, 8080), T).unwrap(), eip);
        let e = iperf(&topo, secs, 1);
        let table = cfg.table(dps[0].peer_id(n2_ip).expect("node-1 has a local id for node-2")).to_string();
        // Baseline: same tunnel, no Egret table.
        for i in 1..=2 {
            topo.node(i).ns.exec("nft", &["delete", "table", "inet", "egret"]).unwrap();
        }
        let n1 = &topo.node(1).ns;
        n1.ip(&["rule", "add", "from", &WEB1.to_string(), "lookup", &table, "pref", "1600"]).unwrap();
        // Add before deleting: removing a device's last IPv4 address flushes its routes and
        // neighbours.
        n1.ip(&["addr", "add", n1_tunnel, "dev", &cfg.vxlan_name]).unwrap();
        n1.ip(&["addr", "del", &format!("{n1_ip}/32"), "dev", &cfg.vxlan_name]).unwrap();
        let n2 = &topo.node(2).ns;
        n2.ip(&["route", "add", n1_tunnel, "via", &n1_ip, "dev", &cfg.vxlan_name, "onlink"]).unwrap();
        topo.router.ip(&["route", "add", n1_tunnel, "via", &n2_ip.to_string()]).unwrap();
        let seen = egret_netns::whoami(&topo.pod("web-1").unwrap().ns, to(DB_A, 8080), T).unwrap();
        assert_eq!(seen.to_string(), n1_tunnel.trim_end_matches("/32"), "baseline goes through the tunnel and node-2");
        let b = iperf(&topo, secs, 1);
        n1.ip(&["rule", "del", "pref", "1600"]).unwrap();
        n1.ip(&["addr", "add", &format!("{n1_ip}/32"), "dev", &cfg.vxlan_name]).unwrap();
        n1.ip(&["addr", "del", n1_tunnel, "dev", &cfg.vxlan_name]).unwrap();
        n2.ip(&["route", "del", n1_tunnel]).unwrap();
        topo.router.ip(&["route", "del", n1_tunnel]).unwrap();
        println!("round {}: egret {:.2} Gbit/s, baseline {:.2} Gbit/s", round + 1, e / 1e9, b / 1e9);
        with.push(e);
        without.push(b);
    }
    for (i, dp) in dps.iter_mut().enumerate() {
        topo.node(i + 1).ns.run(|| dp.cleanup()).unwrap().unwrap();
    }
    let (e, b) = (median(with), median(without));
    println!("through the gateway with Egret's rules:    {:.2} Gbit/s (median of {rounds} x {secs} s)", e / 1e9);
    println!("same tunnel path without Egret's rules:    {:.2} Gbit/s", b / 1e9);
    println!("ratio: {:.1}%", 100.0 * e / b);
}
