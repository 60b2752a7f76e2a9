//! Privileged: an egress IP taken from an interface of the gateway (`gatewayNodes[].interface`,
//! Cilium's `egressGateway.interface`): what is SNATed to it leaves through that interface (its
//! default route, by policy routing), and without a way out by it the traffic is dropped, never
//! sent another way. Every node of the topology has a second uplink, `eth1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use egret_api::v1alpha1 as api;
use egret_netns::*;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

const WEB2: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 10);

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn an_interfaces_egress_ip_leaves_through_that_interface_or_not_at_all() {
    egret_netns::require_privileged();
    let spec = TopologySpec::new("iface", 2).pod("web-1", 1, WEB1).pod("web-2", 2, WEB2);
    let topo = Topology::build(&spec).unwrap();
    // What node-2's agent publishes: the addresses of its eth1, read from its kernel.
    let names = BTreeSet::from([UPLINK2_DEV.to_string()]);
    let published = topo.node(2).ns.run(|| egret_datapath::interface_addresses(&names)).unwrap().unwrap();
    let eth1 = IpAddr::V4(node_uplink2_ip(2));
    assert_eq!(published[UPLINK2_DEV], [eth1]);
    let mut c = Cluster::new(2, &[2]);
    c.nodes[1].interfaces = published;
    c.pod("default", "web-1", "web", 1, WEB1).pod("default", "web-2", "web", 2, WEB2);
    let mut e = api::Egress::new(
        "eg-web",
        api::EgressSpec {
            applied_to: api::AppliedTo { pod_selector: Some(sel(&[("app", "web")])), ..Default::default() },
            gateway_nodes: vec![api::GatewayNode {
                node_selector: sel(&[("network-role", "egress-gateway")]),
                ip_family: None,
                interface: Some(UPLINK2_DEV.into()),
            }],
            ..Default::default()
        },
    );
    e.metadata.creation_timestamp = None;
    c.egresses.push(e);
    let plan = c.plan();
    assert_eq!(egress_ip(&plan, "eg-web"), eth1);
    let mut dps = datapaths(2);
    for r in sync_all(&topo, &mut dps, &plan) {
        assert!(r.drift.is_empty() && r.skipped.is_empty(), "{r:?}");
    }

    // From the tunnel and from the gateway's own pod: eth1's address, by the second uplink.
    let before = uplink2_forwarded(&topo.router).unwrap();
    for pod in ["web-1", "web-2"] {
        assert_eq!(whoami(&topo.pod(pod).unwrap().ns, to(DB_A, WHOAMI_PORT), T).unwrap(), eth1, "{pod}");
    }
    let through = uplink2_forwarded(&topo.router).unwrap() - before;
    assert!(through >= 6, "only {through} packets left by the second uplink");
    // Replies come in by eth1 from sources the main table routes by eth0: loose filtering there.
    let rp = topo.node(2).ns.exec("sysctl", &["-n", "net.ipv4.conf.eth1.rp_filter"]).unwrap();
    assert_eq!(rp.trim(), "2");
    // A second sync changes nothing; a restarted agent recovers the exit's id.
    assert!(sync(&topo, &mut dps[1], 2, &plan).changes.is_empty());
    let mut fresh = datapaths(2).remove(1);
    assert!(sync(&topo, &mut fresh, 2, &plan).changes.is_empty());

    // The interface loses its default route: the traffic is dropped, not sent by eth0.
    let n2 = &topo.node(2).ns;
    n2.ip(&["route", "del", "default", "via", &UPLINK2_GW.to_string(), "dev", UPLINK2_DEV]).unwrap();
    let r = sync(&topo, &mut fresh, 2, &plan);
    assert!(r.skipped.iter().any(|s| s.why.contains("no default route")), "{:?}", r.skipped);
    assert!(whoami(&topo.pod("web-2").unwrap().ns, to(DB_A, WHOAMI_PORT), T).is_err());
    assert!(whoami(&topo.pod("web-1").unwrap().ns, to(DB_A, WHOAMI_PORT), T).is_err());
    n2.run(|| fresh.cleanup()).unwrap().unwrap();
}
