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

use common::*;
use egret_core::planner::NodePlan;
use egret_core::policy::{self, Firewall, FirewallPod, FirewallSet};
use egret_netns::{DB_A, Topology, TopologySpec};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The port of the acceptor that counts connections (accepts and drops each at once).
const ACCEPT_PORT: u16 = 9000;

/// New connections per second from web-1 to the acceptor on db-a over `secs`: each one a TCP
/// handshake through the firewall, the tunnel and SNAT, then closed with a reset.
fn connections(topo: &Topology, secs: u32) -> f64 {
    let ns = &topo.pod("web-1").unwrap().ns;
    ns.run(|| {
        let end = Instant::now() + Duration::from_secs(u64::from(secs));
        let start = Instant::now();
        let mut n = 0u64;
        while Instant::now() < end {
            let stream =
                std::net::TcpStream::connect_timeout(&to(DB_A, ACCEPT_PORT), T).expect("an allowed connection");
            // Closed with a reset: no TIME_WAIT, so tens of thousands of connections never run
            // out of source ports.
            nix::sys::socket::setsockopt(
                &stream,
                nix::sys::socket::sockopt::Linger,
                &libc::linger { l_onoff: 1, l_linger: 0 },
            )
            .unwrap();
            n += 1;
        }
        n as f64 / start.elapsed().as_secs_f64()
    })
    .unwrap()
}

fn cluster_policy(name: &str, priority: i64, rules: &str, default: &str) -> egret_api::v1alpha1::ClusterEgressPolicy {
    let y = format!(
        "apiVersion: egret.dev/v1alpha1\nkind: ClusterEgressPolicy\nmetadata: {{name: {name}}}\nspec:\n  priority: {priority}\n  appliedTo: {{namespaceSelector: {{}}}}\n  rules:\n{rules}{default}"
    );
    serde_yaml_ng::from_str(&y).expect("policy YAML")
}

/// 1,000 policies x 10 rules; the last rule of the last policy allows db-a.
fn large_policies() -> Vec<egret_api::v1alpha1::ClusterEgressPolicy> {
    (0..1000u32)
        .map(|i| {
            let mut rules = String::new();
            for j in 0..10u32 {
                let block = i * 10 + j; // a /24 of 100.64.0.0/10 each
                let (b2, b3) = (64 + block / 256, block % 256);
                let rule = if i == 999 && j == 9 {
                    "  - {name: r9, action: Allow, to: {cidrs: [203.0.113.0/24]}, ports: [{port: 8080}, {port: 5201}, {port: 9000}]}\n".to_string()
                } else {
                    let action = if j % 2 == 0 { "Allow" } else { "Deny" };
                    format!(
                        "  - {{name: r{j}, action: {action}, to: {{cidrs: [100.{b2}.{b3}.0/24], except: [100.{b2}.{b3}.128/26]}}, ports: [{{port: {p}, endPort: {e}}}, {{protocol: UDP, port: 53}}]}}\n",
                        p = 1000 + j * 10,
                        e = 1005 + j * 10
                    )
                };
                rules.push_str(&rule);
            }
            cluster_policy(&format!("p{i:04}"), i64::from(i), &rules, "")
        })
        .collect()
}

fn small_policies() -> Vec<egret_api::v1alpha1::ClusterEgressPolicy> {
    vec![cluster_policy(
        "only",
        0,
        "  - {name: outside, action: Allow, to: {cidrs: [203.0.113.0/24]}}\n",
        "  defaultAction: Deny\n",
    )]
}

/// node-1's plan with the firewall of `policies`: web-1 selected by all of them and, when
/// `other_pods` > 0, that many more pods spread over single-policy sets.
fn with_firewall(mut np: NodePlan, policies: &[egret_api::v1alpha1::ClusterEgressPolicy], other_pods: u32) -> NodePlan {
    let v = policy::validate_policies(policies, &[]);
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    let all: Vec<&policy::Policy> = v.policies.iter().collect();
    let t = Instant::now();
    let mut sets = vec![FirewallSet {
        policies: all.iter().map(|p| p.id.clone()).collect(),
        compiled: Arc::new(policy::compile(&all)),
    }];
    eprintln!(
        "  web-1's set: {} policies compiled into {} cells in {:.1} s",
        all.len(),
        sets[0].compiled.cells.len(),
        t.elapsed().as_secs_f64()
    );
    let mut pods = vec![FirewallPod { ip: IpAddr::V4(WEB1), pod: "default/web-1".into(), set: 0 }];
    if other_pods > 0 {
        for p in &all {
            sets.push(FirewallSet { policies: vec![p.id.clone()], compiled: Arc::new(policy::compile(&[p])) });
        }
        let base = u32::from(Ipv4Addr::new(10, 245, 0, 0));
        for k in 0..other_pods {
            pods.push(FirewallPod {
                ip: IpAddr::V4(Ipv4Addr::from(base + k)),
                pod: format!("bench/pod-{k}"),
                set: 1 + (k as usize % all.len()),
            });
        }
    }
    np.firewall = Firewall { pods, sets };
    np
}

fn main() {
    if let Some(why) = egret_netns::skip_reason(&["ip", "nft", "iperf3"]) {
        eprintln!("cannot run: {why}");
        std::process::exit(2);
    }
    let args: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let secs = args.first().copied().unwrap_or(5);
    let rounds = args.get(1).copied().unwrap_or(5);

    let topo = Topology::build(&TopologySpec::new("bench-fw", 2).pod("web-1", 1, WEB1)).unwrap();
    let c = Cluster::web_egress(2, &[2]);
    let plan = c.plan();
    let eip = egress_ip(&plan, "eg-web");
    let _server = topo.outside.spawn("iperf3", &["-s"]).unwrap();
    let acceptor = topo.outside.run(|| std::net::TcpListener::bind((DB_A, ACCEPT_PORT))).unwrap().unwrap();
    std::thread::spawn(move || {
        for s in acceptor.incoming() {
            drop(s);
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut dps = datapaths(2);
    sync_all(&topo, &mut dps, &plan);
    let base = plan.node_plans().remove("node-1").expect("node-1's plan");
    eprintln!("building the plans:");
    let small = with_firewall(base.clone(), &small_policies(), 0);
    let large = with_firewall(base, &large_policies(), 10_000);

    let mut results: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    for round in 0..rounds {
        for (k, (name, np)) in [("small", &small), ("large", &large)].into_iter().enumerate() {
            let t = Instant::now();
            let r = topo.node(1).ns.run(|| dps[0].sync(np)).unwrap().expect("sync node-1");
            assert!(r.drift.is_empty(), "{r:?}");
            let synced = t.elapsed();
            assert_eq!(egret_netns::whoami(&topo.pod("web-1").unwrap().ns, to(DB_A, 8080), T).unwrap(), eip);
            let bulk = iperf(&topo, secs, 4);
            let conns = connections(&topo, secs);
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
        }
    }
    for (i, dp) in dps.iter_mut().enumerate() {
        topo.node(i + 1).ns.run(|| dp.cleanup()).unwrap().unwrap();
    }
    let spread = |v: &[f64]| {
        let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        format!("{lo:.0}..{hi:.0}")
    };
    let ratios = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(l, s)| 100.0 * l / s).collect::<Vec<f64>>();
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
