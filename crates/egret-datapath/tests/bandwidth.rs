//! Privileged: an Egress's bandwidth limit holds its traffic through the gateway to the rate
//! (iperf3, real TCP), while an unlimited Egress on the same gateway is not held back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use egret_api::v1alpha1 as api;
use egret_netns::*;
use std::net::Ipv4Addr;

const BULK1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 20);

/// Bits per second iperf3 received from `pod` to db-a over `secs`, the first two seconds (the
/// burst, TCP's ramp) left out.
fn iperf_from(topo: &Topology, pod: &str, secs: u32) -> f64 {
    let out = topo
        .pod(pod)
        .unwrap()
        .ns
        .exec("iperf3", &["-c", &DB_A.to_string(), "-t", &secs.to_string(), "-O", "2", "-J"])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap()
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn a_limited_egress_gets_its_rate_and_an_unlimited_one_on_the_same_gateway_keeps_its_speed() {
    egret_netns::require_privileged();
    if let Some(why) = egret_netns::skip_reason(&["iperf3"]) {
        panic!("this privileged test cannot run: {why}");
    }
    let spec = TopologySpec::new("bw", 2).pod("web-1", 1, WEB1).pod("bulk-1", 1, BULK1);
    let topo = Topology::build(&spec).unwrap();
    let _server = topo.outside.spawn("iperf3", &["-s"]).unwrap();
    let mut c = Cluster::new(2, &[2]);
    c.pod("default", "web-1", "web", 1, WEB1)
        .pod("default", "bulk-1", "bulk", 1, BULK1)
        .pool("pool", "10.10.0.11", "10.10.0.20")
        .egress("eg-web", "web", "pool", &[], &[])
        .egress("eg-bulk", "bulk", "pool", &[], &[]);
    c.egresses[0].spec.bandwidth = Some(api::Bandwidth { rate: "100Mbps".into(), burst: "200Mb".into() });
    let plan = c.plan();
    assert_eq!(gateway(&plan, "eg-web"), Some(2));
    let mut dps = datapaths(2);
    let reports = sync_all(&topo, &mut dps, &plan);
    assert!(reports.iter().all(|r| r.drift.is_empty() && r.skipped.is_empty()), "{reports:?}");
    std::thread::sleep(std::time::Duration::from_millis(300));

    let limited = iperf_from(&topo, "web-1", 8);
    let free = iperf_from(&topo, "bulk-1", 4);
    eprintln!("limited {:.1} Mbit/s, unlimited {:.1} Mbit/s", limited / 1e6, free / 1e6);
    assert!((90e6..=110e6).contains(&limited), "limited Egress: {:.1} Mbit/s, not 100 +- 10%", limited / 1e6);
    assert!(free > 500e6, "the unlimited Egress on the same gateway is held back: {:.1} Mbit/s", free / 1e6);

    // Limit removed: the same pod is no longer held to it; a second sync changes nothing.
    c.egresses[0].spec.bandwidth = None;
    let plan = c.plan();
    sync_all(&topo, &mut dps, &plan);
    assert!(sync(&topo, &mut dps[1], 2, &plan).changes.is_empty());
    let unlimited = iperf_from(&topo, "web-1", 4);
    assert!(unlimited > 500e6, "after the limit is removed: {:.1} Mbit/s", unlimited / 1e6);
}
