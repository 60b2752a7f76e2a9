//! Privileged: real TCP connections through the datapath in network namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use egret_netns::*;
use std::net::Ipv4Addr;

const CLIENT1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const WEB2: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 10);

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn selected_pods_leave_with_the_egress_ip_from_any_node_and_others_with_their_node_ip() {
    egret_netns::require_privileged();
    let spec =
        TopologySpec::new("steer-basic", 3).pod("web-1", 1, WEB1).pod("client-1", 1, CLIENT1).pod("web-2", 2, WEB2);
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
    // Selected pod on the gateway node itself: its flow's conntrack mark says "out here", so
    // its later packets skip the steering lookups (and take no tunnel), and it keeps working.
    let web2 = &topo.pod("web-2").unwrap().ns;
    assert_eq!(whoami(web2, to(BAD_HOST, WHOAMI_PORT), T).unwrap(), eip);
    let mut local = WhoamiConn::open(web2, to(DB_A, WHOAMI_PORT), T).unwrap();
    assert_eq!(local.seen, eip);
    local.echo(&"y".repeat(4000)).unwrap();
    let flows = topo.node(2).ns.exec("conntrack", &["-L", "-p", "tcp", "-s", &WEB2.to_string()]).unwrap();
    let out_here = format!("mark={}", egret_datapath::Config::default().mark(egret_core::ids::LOCAL_ID));
    assert!(
        flows.lines().any(|l| l.contains(&format!("dst={DB_A}")) && l.contains(&out_here)),
        "{out_here} expected:\n{flows}"
    );
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

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn excluded_outside_destination_and_cluster_internal_traffic_are_not_steered() {
    egret_netns::require_privileged();
    let service = Ipv4Addr::new(10, 96, 0, 10);
    let api1 = Ipv4Addr::new(10, 244, 1, 20);
    let peer = Ipv4Addr::new(10, 244, 3, 10);
    let spec = TopologySpec::new("steer-not", 3)
        .pod("web-1", 1, WEB1)
        .pod("api-1", 1, api1)
        .pod("peer-3", 3, peer)
        .outside_host(format!("{service}/32").parse().unwrap());
    let topo = Topology::build(&spec).unwrap();
    let mut c = Cluster::new(3, &[2]);
    c.pod("default", "web-1", "web", 1, WEB1)
        .pod("default", "api-1", "api", 1, api1)
        .pod("default", "peer-3", "peer", 3, peer)
        .pool("pool", "10.10.0.11", "10.10.0.20")
        .egress("eg-web", "web", "pool", &[], &["198.51.100.0/24"])
        .egress("eg-api", "api", "pool", &["203.0.113.0/24"], &[]);
    let plan = c.plan();
    let eip_web = egress_ip(&plan, "eg-web");
    let eip_api = egress_ip(&plan, "eg-api");
    let mut dps = datapaths(3);
    sync_all(&topo, &mut dps, &plan);

    let web1 = &topo.pod("web-1").unwrap().ns;
    let api = &topo.pod("api-1").unwrap().ns;
    let node1 = v4(node_ip(1));
    // Steered destinations still are...
    assert_eq!(whoami(web1, to(DB_A, WHOAMI_PORT), T).unwrap(), eip_web);
    assert_eq!(whoami(api, to(DB_A, WHOAMI_PORT), T).unwrap(), eip_api);
    // ...but not a destination in excludedCIDRs, nor one outside destinationCIDRs.
    assert_eq!(whoami(web1, to(BAD_HOST, WHOAMI_PORT), T).unwrap(), node1);
    assert_eq!(whoami(api, to(BAD_HOST, WHOAMI_PORT), T).unwrap(), node1);
    // Service CIDR (a stand-in host at 10.96.0.10 behind the router): CNI path, node IP.
    assert_eq!(whoami(web1, to(service, WHOAMI_PORT), T).unwrap(), node1);
    // Pod to pod on another node: the pod's own address, no tunnel, no SNAT.
    let pod_server = Whoami::start(&topo.pod("peer-3").unwrap().ns, 9000).unwrap();
    assert_eq!(whoami(web1, to(peer, 9000), T).unwrap(), v4(WEB1));
    drop(pod_server);
    // Pod to another node's IP: what the CNI does (masquerade to node-1), never the egress IP.
    let node_server = Whoami::start(&topo.node(2).ns, 9001).unwrap();
    assert_eq!(whoami(web1, to(node_ip(2), 9001), T).unwrap(), node1);
    drop(node_server);
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn a_steered_pod_answers_a_connection_from_outside_with_its_own_address() {
    egret_netns::require_privileged();
    // A client outside reaching pods directly (as through a NodePort or LoadBalancer that
    // keeps the client's address; the lab's router routes each pod CIDR to its node).
    let spec = TopologySpec::new("steer-inbound", 2).pod("web-1", 1, WEB1).pod("web-2", 2, WEB2);
    let topo = Topology::build(&spec).unwrap();
    let mut c = Cluster::new(2, &[2]);
    c.pod("default", "web-1", "web", 1, WEB1)
        .pod("default", "web-2", "web", 2, WEB2)
        .pool("pool", "10.10.0.11", "10.10.0.20")
        .egress("eg-web", "web", "pool", &[], &[]);
    let plan = c.plan();
    assert_eq!(gateway(&plan, "eg-web"), Some(2));
    let eip = egress_ip(&plan, "eg-web");
    let mut dps = datapaths(2);
    sync_all(&topo, &mut dps, &plan);

    // web-1 (steered through the tunnel) and web-2 (on its gateway) serve a connection from
    // outside: the reply leaves as the connection came, so the client talks to the pod, and
    // the pod sees the client's own address.
    for (name, ip) in [("web-1", WEB1), ("web-2", WEB2)] {
        let pod = &topo.pod(name).unwrap().ns;
        let server = Whoami::start(pod, 9002).unwrap();
        let mut conn = WhoamiConn::open(&topo.outside, to(ip, 9002), T)
            .unwrap_or_else(|e| panic!("connecting to {name} from outside: {e}"));
        conn.echo(&"z".repeat(4000)).unwrap();
        assert!(
            matches!(conn.seen, std::net::IpAddr::V4(v) if v.octets()[..3] == [203, 0, 113]),
            "{name} saw {}: the client's own address expected",
            conn.seen
        );
        drop(server);
        // The pod's own connections out are still steered.
        assert_eq!(whoami(pod, to(DB_A, WHOAMI_PORT), T).unwrap(), eip);
    }
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn an_egress_without_gateway_drops_its_traffic_and_never_leaks_the_node_ip() {
    egret_netns::require_privileged();
    let spec = TopologySpec::new("steer-drop", 2).pod("web-1", 1, WEB1).pod("client-1", 1, CLIENT1);
    let topo = Topology::build(&spec).unwrap();
    // No node carries the gateway label: the IP is allocated but has no gateway.
    let mut c = Cluster::new(2, &[]);
    c.pod("default", "web-1", "web", 1, WEB1)
        .pod("default", "client-1", "client", 1, CLIENT1)
        .pool("pool", "10.10.0.11", "10.10.0.20")
        .egress("eg-web", "web", "pool", &[], &[]);
    let plan = c.plan();
    assert_eq!(gateway(&plan, "eg-web"), None);
    let mut dps = datapaths(2);
    sync_all(&topo, &mut dps, &plan);

    let web1 = &topo.pod("web-1").unwrap().ns;
    let r = whoami(web1, to(DB_A, WHOAMI_PORT), std::time::Duration::from_millis(1500));
    assert!(r.is_err(), "traffic of an Egress without gateway got out: {r:?}");
    // Counted as dropped for want of a gateway, not as traffic leaving.
    let dropped = egret_datapath::nft::dropped_counter("eg-web", egret_datapath::nft::DropReason::NoGateway);
    assert!(counter(&topo, &dps[0], 1, &dropped).packets > 0, "drops are counted");
    assert_eq!(counter(&topo, &dps[0], 1, "eg-web").packets, 0, "drops are not traffic");
    // Unselected traffic on the same node still flows.
    let client = &topo.pod("client-1").unwrap().ns;
    assert_eq!(whoami(client, to(DB_A, WHOAMI_PORT), T).unwrap(), v4(node_ip(1)));
    assert!(
        !topo.seen().iter().any(|s| *s != v4(node_ip(1))) && topo.seen().len() == 1,
        "the outside saw {:?}: only client-1's connection may arrive",
        topo.seen()
    );
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn moving_the_gateway_moves_new_connections_and_the_routers_neighbour_entry() {
    egret_netns::require_privileged();
    let spec = TopologySpec::new("steer-move", 3).pod("web-1", 1, WEB1);
    let topo = Topology::build(&spec).unwrap();
    let mut c = Cluster::web_egress(3, &[2, 3]);
    let before = c.plan();
    let eip = egress_ip(&before, "eg-web");
    let std::net::IpAddr::V4(eip4) = eip else { panic!("IPv4 expected") };
    let first = gateway(&before, "eg-web").unwrap();
    let mut dps = datapaths(3);
    sync_all(&topo, &mut dps, &before);
    let web1 = &topo.pod("web-1").unwrap().ns;
    assert_eq!(whoami(web1, to(DB_A, WHOAMI_PORT), T).unwrap(), eip);
    assert_eq!(topo.router_neighbour(eip4).unwrap(), Some(topo.node_mac(first).unwrap()));

    // The first gateway leaves the live set: placement moves the IP to the other one.
    c.live.remove(&node_name(first));
    let after = c.plan();
    let second = gateway(&after, "eg-web").unwrap();
    assert_ne!(first, second);
    assert_eq!(egress_ip(&after, "eg-web"), eip);
    let reports = sync_all(&topo, &mut dps, &after);
    assert_eq!(reports[second - 1].announced, vec![eip]);
    assert!(
        reports[first - 1].changes.iter().any(|l| l.contains("deleted hosted address")),
        "{:?}",
        reports[first - 1].changes
    );

    // The gratuitous ARP moved the router's entry.
    let want = Some(topo.node_mac(second).unwrap());
    assert_eq!(router_neighbour_after_move(&topo, eip, &want), want);
    let before_count = counter(&topo, &dps[second - 1], second, "eg-web").packets;
    assert_eq!(whoami(web1, to(DB_A, WHOAMI_PORT), T).unwrap(), eip);
    assert!(
        counter(&topo, &dps[second - 1], second, "eg-web").packets > before_count,
        "the new connection went through the new gateway"
    );
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn a_kernel_made_neighbour_entry_for_a_peer_is_replaced_not_a_sync_failure() {
    egret_netns::require_privileged();
    let spec = TopologySpec::new("steer-neigh", 2).pod("web-1", 1, WEB1);
    let topo = Topology::build(&spec).unwrap();
    let plan = Cluster::web_egress(2, &[2]).plan();
    let eip = egress_ip(&plan, "eg-web");
    let mut dps = datapaths(2);
    sync_all(&topo, &mut dps, &plan);
    // Node 1's permanent entry for its peer becomes one the kernel could have made by
    // resolving the address itself (stale, another MAC), as after the peer was dropped while
    // traffic still went to it: not Egret's, so the next sync adds its own over it.
    let ns = &topo.node(1).ns;
    let permanent = |ns: &Netns| ns.ip(&["neigh", "show", "dev", "egret-vxlan", "nud", "permanent"]).unwrap();
    let entry = permanent(ns);
    let (peer, mac) = {
        let w: Vec<&str> = entry.split_whitespace().collect();
        (w[0].to_string(), w[w.iter().position(|x| *x == "lladdr").unwrap() + 1].to_string())
    };
    ns.ip(&["neigh", "replace", &peer, "lladdr", "02:00:00:00:00:01", "dev", "egret-vxlan", "nud", "stale"]).unwrap();
    assert!(permanent(ns).trim().is_empty());
    let r = sync(&topo, &mut dps[0], 1, &plan);
    assert!(r.drift.iter().any(|d| d.contains("neighbour")), "{:?}", r.drift);
    assert!(permanent(ns).contains(&format!("{peer} lladdr {mac}")), "{}", permanent(ns));
    let web1 = &topo.pod("web-1").unwrap().ns;
    assert_eq!(whoami(web1, to(DB_A, WHOAMI_PORT), T).unwrap(), eip);
}
