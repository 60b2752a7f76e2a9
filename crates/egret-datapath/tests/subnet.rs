//! Privileged: an egress subnet (`subnetInfo`): its egress IP lives on a subnet of its own on
//! the node network's segment, its traffic leaves through that subnet's gateway (policy
//! routing), and the outside sees the subnet's address, not the node network's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use egret_netns::*;
use std::net::{IpAddr, Ipv4Addr};

const WEB2: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 10);

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn an_egress_subnet_leaves_through_its_own_gateway() {
    egret_netns::require_privileged();
    let spec = TopologySpec::new("subnet", 2).pod("web-1", 1, WEB1).pod("web-2", 2, WEB2);
    let topo = Topology::build(&spec).unwrap();
    let mut c = Cluster::new(2, &[2]);
    c.pod("default", "web-1", "web", 1, WEB1)
        .pod("default", "web-2", "web", 2, WEB2)
        .pool_subnet("sub", "192.0.2.10", "192.0.2.20", &EGRESS_SUBNET_GW.to_string(), 24, 0)
        .egress("eg-web", "web", "sub", &[], &[]);
    let plan = c.plan();
    let eip = egress_ip(&plan, "eg-web");
    assert_eq!(eip, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)));
    assert_eq!(gateway(&plan, "eg-web"), Some(2));
    let mut dps = datapaths(2);
    let reports = sync_all(&topo, &mut dps, &plan);
    for r in &reports {
        assert!(r.drift.is_empty() && r.skipped.is_empty(), "{r:?}");
    }

    // Through the tunnel from node-1, and from the gateway's own pod: the subnet's address,
    // sent to the subnet's own router port (not the node network's router address).
    let before = topo.egress_subnet_forwarded().unwrap();
    assert_eq!(whoami(&topo.pod("web-1").unwrap().ns, to(DB_A, WHOAMI_PORT), T).unwrap(), eip);
    assert_eq!(whoami(&topo.pod("web-2").unwrap().ns, to(DB_A, WHOAMI_PORT), T).unwrap(), eip);
    let through = topo.egress_subnet_forwarded().unwrap() - before;
    assert!(through >= 6, "only {through} packets reached the subnet's gateway port");
    // Unselected traffic still leaves by the node network's router, not by the subnet's.
    let before = topo.egress_subnet_forwarded().unwrap();
    c.egresses.clear();
    let plain = c.plan();
    sync_all(&topo, &mut dps, &plain);
    assert_eq!(whoami(&topo.pod("web-1").unwrap().ns, to(DB_A, WHOAMI_PORT), T).unwrap(), IpAddr::V4(node_ip(1)));
    assert_eq!(topo.egress_subnet_forwarded().unwrap(), before, "unselected traffic went by the subnet's gateway");
    sync_all(&topo, &mut dps, &plan);
    let routes = topo.node(2).ns.ip(&["route", "show", "table", "all"]).unwrap();
    assert!(routes.contains(&format!("default via {EGRESS_SUBNET_GW} dev eth0")), "{routes}");

    // Nothing changes on a second sync; a restarted agent recovers the subnet's id.
    let again = sync(&topo, &mut dps[1], 2, &plan);
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    let mut fresh = datapaths(2).remove(1);
    let restarted = sync(&topo, &mut fresh, 2, &plan);
    assert!(restarted.changes.is_empty(), "{:?}", restarted.changes);
    topo.node(2).ns.run(|| fresh.cleanup()).unwrap().unwrap();
    assert!(!topo.node(2).ns.ip(&["route", "show", "table", "all"]).unwrap().contains("192.0.2.1"));
}
