//! The egress firewall at scale vs. at its smallest, on the same path: pod web-1 on node-1,
//! through its firewall and the tunnel to gateway node-2 (SNAT), to db-a behind the router.
//!
//! `cargo run --release -p egret-datapath --example firewall_throughput [-- SECONDS ROUNDS]`
//! (root, `nft` and `iperf3` needed; every address lives in namespaces this program creates).
//!
//! - **small**: one ClusterEgressPolicy with one rule (allow 203.0.113.0/24) and a default deny,
//!   applied to web-1 only.
//! - **large**: 1,000 ClusterEgressPolicies x 10 rules (Allow and Deny, CIDRs with `except`,
//!   port ranges) and 10,000 pods programmed on node-1. web-1 is selected by all 1,000 (the hard
//!   case: its set holds all 10,000 rules); the 10,000 other pods are spread over 1,000
//!   single-policy sets. The last policy's rule allows db-a, so every lookup for web-1 crosses
//!   the whole ordered list before deciding.
//!
//! Each round measures both, one after the other (re-syncing node-1 between them): bulk TCP
//! (iperf3, 4 streams) and new TCP connections per second (connect, read the whoami answer,
//! close: every connection is a new flow the firewall decides). Medians and the per-round spread
//! are printed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "shared/mod.rs"]
mod shared;

use common::*;
use egret_netns::{DB_A, Topology, TopologySpec};
use shared::*;
use std::time::{Duration, Instant};

fn main() {
    if let Some(why) = egret_netns::skip_reason(&["ip", "nft", "iperf3"]) {
        eprintln!("cannot run: {why}");
        std::process::exit(2);
    }
    let stop = stop_on_signal();
    let args: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let secs = args.first().copied().unwrap_or(5);
    let rounds = args.get(1).copied().unwrap_or(5);

    let topo = Topology::build(&TopologySpec::new("bench-fw", 2).pod("web-1", 1, WEB1)).unwrap();
    let c = Cluster::web_egress(2, &[2]);
    let plan = c.plan();
    let eip = egress_ip(&plan, "eg-web");
    let _server = topo.outside.spawn("iperf3", &["-s"]).unwrap();
    start_acceptor(&topo);
    std::thread::sleep(Duration::from_millis(300));
    let mut dps = datapaths(2);
    sync_all(&topo, &mut dps, &plan);
    let base = plan.node_plans().remove("node-1").expect("node-1's plan");
    eprintln!("building the plans:");
    let small = with_firewall(base.clone(), &small_policies(), 0);
    let large = with_firewall(base, &large_policies(), 10_000);

    let mut results: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    let mut done_rounds = 0;
    'rounds: for round in 0..rounds {
        for (k, (name, np)) in [("small", &small), ("large", &large)].into_iter().enumerate() {
            let t = Instant::now();
            let r = topo.node(1).ns.run(|| dps[0].sync(np)).unwrap().expect("sync node-1");
            assert!(r.drift.is_empty(), "{r:?}");
            let synced = t.elapsed();
            assert_eq!(egret_netns::whoami(&topo.pod("web-1").unwrap().ns, to(DB_A, 8080), T).unwrap(), eip);
            let bulk = iperf(&topo, secs, 4);
            let conns = connections(&topo, secs, DB_A.into());
            println!(
                "round {}: {name}: bulk {:.2} Gbit/s, {:.0} connections/s (synced in {} ms, nft transaction {} ms)",
                round + 1,
                bulk / 1e9,
                conns,
                synced.as_millis(),
                r.nft_apply.map_or(0, |d| d.as_millis())
            );
            results[k].0.push(bulk);
            results[k].1.push(conns);
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break 'rounds;
            }
        }
        done_rounds += 1;
    }
    for (i, dp) in dps.iter_mut().enumerate() {
        topo.node(i + 1).ns.run(|| dp.cleanup()).unwrap().unwrap();
    }
    if done_rounds == 0 {
        println!("stopped before a whole round: no summary");
        return;
    }
    let rounds = done_rounds;
    for r in &mut results {
        r.0.truncate(rounds);
        r.1.truncate(rounds);
    }
    let (s, l) = (&results[0], &results[1]);
    let bulk_ratio = ratios(&l.0, &s.0);
    let conn_ratio = ratios(&l.1, &s.1);
    println!("bulk TCP, 4 streams ({rounds} rounds x {secs} s):");
    println!("  small (1 policy x 1 rule):              {:.2} Gbit/s", median(s.0.clone()) / 1e9);
    println!("  large (1,000 x 10, 10,000 pods):        {:.2} Gbit/s", median(l.0.clone()) / 1e9);
    println!("  large/small: median {:.1}%, per round {}%", median(bulk_ratio.clone()), spread(&bulk_ratio));
    println!("new TCP connections per second:");
    println!("  small: {:.0}/s, large: {:.0}/s", median(s.1.clone()), median(l.1.clone()));
    println!("  large/small: median {:.1}%, per round {}%", median(conn_ratio.clone()), spread(&conn_ratio));
}
