//! Privileged: real TCP connections through the datapath in network namespaces.

mod common;
use common::*;
use egret_netns::*;
use std::net::Ipv4Addr;

const WEB1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const CLIENT1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const WEB2: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 10);

#[test]
fn selected_pods_leave_with_the_egress_ip_from_any_node_and_others_with_their_node_ip() {
    if skip() {
        return;
    }
    let spec = TopologySpec::new("steer-basic", 3)
        .pod("web-1", 1, WEB1)
        .pod("client-1", 1, CLIENT1)
        .pod("web-2", 2, WEB2);
    let topo = Topology::build(&spec).unwrap();
    let mut c = Cluster::new(3, &[2]);
    c.pod("default", "web-1", "web", 1, WEB1)
        .pod("default", "client-1", "client", 1, CLIENT1)
        .pod("default", "web-2", "web", 2, WEB2)
        .pool("pool", "10.10.0.11", "10.10.0.20")
        .egress("eg-web", "web", "pool", &[], &[]);
    let plan = c.plan();
    assert_eq!(gateway(&plan, "eg-web"), Some(2));
    let eip = egress_ip(&plan, "eg-web");
    let mut dps = datapaths(3);
    let reports = sync_all(&topo, &mut dps, &plan);
    for r in &reports {
        assert!(!r.changes.is_empty());
        assert!(r.drift.is_empty(), "{:?}", r.drift);
    }
    assert_eq!(reports[1].announced, vec![eip]);

    // Selected pod on a non-gateway node: through the tunnel, SNAT on node-2.
    let web1 = &topo.pod("web-1").unwrap().ns;
    let mut conn = WhoamiConn::open(web1, to(DB_A, WHOAMI_PORT), T).unwrap();
    assert_eq!(conn.seen, eip);
    conn.echo(&"x".repeat(4000)).unwrap();
    // MSS clamped for the tunnel (1450 - 40 = 1410, minus TCP timestamps).
    let mss = conn.mss().unwrap();
    assert!(mss <= 1410, "MSS {mss} not clamped");
    // Selected pod on the gateway node itself.
    let web2 = &topo.pod("web-2").unwrap().ns;
    assert_eq!(whoami(web2, to(BAD_HOST, WHOAMI_PORT), T).unwrap(), eip);
    // Unselected pod: its node's IP, through the CNI masquerade, with an unclamped MSS.
    let client = &topo.pod("client-1").unwrap().ns;
    let plain = WhoamiConn::open(client, to(DB_A, WHOAMI_PORT), T).unwrap();
    assert_eq!(plain.seen, v4(node_ip(1)));
    assert!(plain.mss().unwrap() > 1410);

    // Per-Egress counters on the source node and the gateway.
    let c1 = counter(&topo, &dps[0], 1, "eg-web");
    let c2 = counter(&topo, &dps[1], 2, "eg-web");
    assert!(c1.packets > 0 && c1.bytes > 4000, "{c1:?}");
    assert!(c2.packets >= c1.packets, "{c2:?} vs {c1:?}");
    assert_eq!(counter(&topo, &dps[2], 3, "eg-web").packets, 0);
}
