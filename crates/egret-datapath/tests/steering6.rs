//! Privileged: IPv6 and dual-stack steering with real TCP connections in network namespaces.
//! The tunnel stays IPv4 underneath; IPv6 pods' traffic is steered, SNATed, dropped to fail
//! closed and moved on failover exactly like IPv4's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use egret_netns::*;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

const WEB2: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 10);
const WEB3: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 10);
const CLIENT1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);

/// Three dual-stack `app=web` pods (one per node), an unselected client on node 1, an IPv4
/// Egress and an IPv6 Egress both selecting the web pods, gateways on nodes 2 and 3.
fn dual_cluster() -> Cluster {
    let mut c = Cluster::new(3, &[2, 3]);
    c.pod_dual("default", "web-1", "web", 1, WEB1)
        .pod_dual("default", "web-2", "web", 2, WEB2)
        .pod_dual("default", "web-3", "web", 3, WEB3)
        .pod_dual("default", "client-1", "client", 1, CLIENT1)
        .pool("pool4", "10.10.0.11", "10.10.0.20")
        .pool("pool6", "fd00:10:10::11", "fd00:10:10::1f")
        .egress("eg-web4", "web", "pool4", &[], &[])
        .egress("eg-web6", "web", "pool6", &[], &[]);
    c
}

fn dual_topology(tag: &str) -> Topology {
    let spec = TopologySpec::new(tag, 3)
        .pod("web-1", 1, WEB1)
        .pod("web-2", 2, WEB2)
        .pod("web-3", 3, WEB3)
        .pod("client-1", 1, CLIENT1);
    Topology::build(&spec).unwrap()
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn a_dual_stack_pod_leaves_with_the_egress_ip_of_each_family() {
    egret_netns::require_privileged();
    let topo = dual_topology("steer6");
    let c = dual_cluster();
    let plan = c.plan();
    let eip4 = egress_ip(&plan, "eg-web4");
    let eip6 = egress_ip(&plan, "eg-web6");
    assert!(eip4.is_ipv4() && eip6.is_ipv6(), "{eip4} {eip6}");
    let mut dps = datapaths(3);
    let reports = sync_all(&topo, &mut dps, &plan);
    for r in &reports {
        assert!(r.drift.is_empty(), "{:?}", r.drift);
        assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    }
    let g6 = gateway(&plan, "eg-web6").unwrap();
    assert_eq!(reports[g6 - 1].announced.iter().filter(|ip| ip.is_ipv6()).count(), 1);

    for pod in ["web-1", "web-2", "web-3"] {
        let ns = &topo.pod(pod).unwrap().ns;
        assert_eq!(whoami(ns, to(DB_A, WHOAMI_PORT), T).unwrap(), eip4, "{pod} over IPv4");
        let mut conn = WhoamiConn::open(ns, to6(DB_A6, WHOAMI_PORT), T).unwrap();
        assert_eq!(conn.seen, eip6, "{pod} over IPv6");
        conn.echo(&"y".repeat(4000)).unwrap();
        if topo.pod(pod).unwrap().node != g6 {
            // Through the tunnel: MSS clamped to the route MTU (1450 - 60 for IPv6).
            let mss = conn.mss().unwrap();
            assert!(mss <= 1390, "{pod}: MSS {mss} not clamped");
        }
    }
    // Unselected dual-stack pod: the node's address of each family (the CNI's masquerade).
    let client = &topo.pod("client-1").unwrap().ns;
    assert_eq!(whoami(client, to(DB_A, WHOAMI_PORT), T).unwrap(), v4(node_ip(1)));
    assert_eq!(whoami(client, to6(DB_A6, WHOAMI_PORT), T).unwrap(), v6(node_ip6(1)));
    // Pod to pod over IPv6: its own address, never steered.
    let server = Whoami::start(&topo.pod("web-3").unwrap().ns, 9000).unwrap();
    let web1 = &topo.pod("web-1").unwrap().ns;
    assert_eq!(whoami(web1, to6(pod_ip6(WEB3), 9000), T).unwrap(), v6(pod_ip6(WEB1)));
    drop(server);

    // The egress IPv6 address never becomes the node's own source: it is deprecated.
    let addrs = topo.node(g6).ns.ip(&["-6", "addr", "show", "dev", "eth0"]).unwrap();
    let line = addrs.lines().find(|l| l.contains(&format!("{eip6}/128"))).unwrap_or_else(|| panic!("{addrs}"));
    assert!(line.contains("deprecated"), "{line}");

    // Counted per Egress and family-blind: the IPv6 Egress's counter moved on node 1.
    assert!(counter(&topo, &dps[0], 1, "eg-web6").bytes > 4000);

    // A second sync changes nothing.
    for (k, dp) in dps.iter_mut().enumerate() {
        let r = sync(&topo, dp, k + 1, &plan);
        assert!(r.changes.is_empty(), "node-{}: {:?}", k + 1, r.changes);
    }
    // Cleanup removes the IPv6 address from the underlay, and IPv6 rules and routes.
    for (k, dp) in dps.iter_mut().enumerate() {
        topo.node(k + 1).ns.run(|| dp.cleanup()).unwrap().unwrap();
        let ns = &topo.node(k + 1).ns;
        assert!(!ns.ip(&["-6", "addr", "show"]).unwrap().contains(&eip6.to_string()));
        assert!(!ns.ip(&["-6", "rule", "show"]).unwrap().contains("fwmark"));
    }
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn ipv6_fails_closed_without_a_gateway_and_fails_over_to_another() {
    egret_netns::require_privileged();
    let topo = dual_topology("steer6-fail");
    let mut c = dual_cluster();
    let before = c.plan();
    let eip6 = egress_ip(&before, "eg-web6");
    let IpAddr::V6(eip6_addr) = eip6 else { panic!("IPv6 expected") };
    let first = gateway(&before, "eg-web6").unwrap();
    let mut dps = datapaths(3);
    sync_all(&topo, &mut dps, &before);
    let web1 = &topo.pod("web-1").unwrap().ns;
    assert_eq!(whoami(web1, to6(DB_A6, WHOAMI_PORT), T).unwrap(), eip6);
    assert_eq!(topo.router_neighbour(eip6_addr).unwrap(), Some(topo.node_mac(first).unwrap()));

    // The first gateway leaves: the IP moves, the unsolicited NA moves the router's entry.
    c.live.remove(&node_name(first));
    let after = c.plan();
    let second = gateway(&after, "eg-web6").unwrap();
    assert_ne!(first, second);
    assert_eq!(egress_ip(&after, "eg-web6"), eip6);
    let reports = sync_all(&topo, &mut dps, &after);
    assert!(reports[second - 1].announced.contains(&eip6), "{:?}", reports[second - 1].announced);
    let want = Some(topo.node_mac(second).unwrap());
    assert_eq!(router_neighbour_after_move(&topo, eip6, &want), want);
    assert_eq!(whoami(web1, to6(DB_A6, WHOAMI_PORT), T).unwrap(), eip6);

    // No gateway left at all: IPv6 traffic of the Egress is dropped, never sent with a node
    // address.
    c.live.remove(&node_name(second));
    let none = c.plan();
    assert_eq!(gateway(&none, "eg-web6"), None);
    sync_all(&topo, &mut dps, &none);
    let seen_before = topo.seen().len();
    let r = whoami(web1, to6(DB_A6, WHOAMI_PORT), Duration::from_millis(1500));
    assert!(r.is_err(), "IPv6 traffic of an Egress without gateway got out: {r:?}");
    assert_eq!(topo.seen().len(), seen_before, "the outside saw {:?}", &topo.seen()[seen_before..]);
    let dropped = egret_datapath::nft::dropped_counter("eg-web6", egret_datapath::nft::DropReason::NoGateway);
    assert!(counter(&topo, &dps[0], 1, &dropped).packets > 0, "drops are counted");
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn with_ipv6_forwarding_off_the_node_says_so_and_nothing_leaks() {
    egret_netns::require_privileged();
    let topo = dual_topology("steer6-nofwd");
    let plan = dual_cluster().plan();
    let g6 = gateway(&plan, "eg-web6").unwrap();
    let origin = if g6 == 1 { 2 } else { 1 };
    let pod = if origin == 1 { "web-1" } else { "web-2" };
    topo.node(origin).ns.sysctl("net.ipv6.conf.all.forwarding", "0").unwrap();
    let mut dps = datapaths(3);
    let reports = sync_all(&topo, &mut dps, &plan);
    let skipped: Vec<String> = reports[origin - 1].skipped.iter().map(|s| s.why.clone()).collect();
    assert!(skipped.iter().any(|s| s.contains("IPv6 forwarding")), "{skipped:?}");
    assert!(reports[g6 - 1].skipped.is_empty(), "{:?}", reports[g6 - 1].skipped);
    let ns = &topo.pod(pod).unwrap().ns;
    let r = whoami(ns, to6(DB_A6, WHOAMI_PORT), Duration::from_millis(1000));
    assert!(r.is_err(), "IPv6 left a node that does not forward it: {r:?}");
    // IPv4 is not affected.
    assert_eq!(whoami(ns, to(DB_A, WHOAMI_PORT), T).unwrap(), egress_ip(&plan, "eg-web4"));
}
