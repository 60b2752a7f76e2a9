//! Privileged: peer identities (tunnel MAC and address from the underlay address, local ids
//! for marks and tables) stay put across joins, leaves and agent restarts, and a node holds
//! tunnel state only for the peers it needs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use egret_netns::*;
use std::net::Ipv4Addr;

const API1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 20);

fn on(node: usize) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
    sel(&[("kubernetes.io/hostname", &node_name(node))])
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn peer_ids_survive_joins_leaves_and_restarts_and_keep_an_established_connection() {
    egret_netns::require_privileged();
    let spec = TopologySpec::new("id-stable", 3).pod("web-1", 1, WEB1).pod("api-1", 1, API1);
    let topo = Topology::build(&spec).unwrap();
    let mut c = Cluster::new(3, &[2, 3]);
    c.pod("default", "web-1", "web", 1, WEB1)
        .pod("default", "api-1", "api", 1, API1)
        .pool_on("pool-2", "10.10.0.11", "10.10.0.20", on(2))
        .pool_on("pool-3", "10.10.0.21", "10.10.0.30", on(3));
    let (n2, n3) = (node_ip(2), node_ip(3));

    // 1. Only api-1 is steered (through node-3): node-1 needs node-3 alone.
    c.egress("eg-api", "api", "pool-3", &[], &[]);
    let mut dps = datapaths(3);
    sync_all(&topo, &mut dps, &c.plan());
    assert_eq!(dps[0].peer_id(n3), Some(1));
    assert_eq!(dps[0].peer_id(n2), None, "node-2 is not needed yet");
    // node-2 takes no part: no tunnel state at all for anybody.
    let rules2 = topo.node(2).ns.ip(&["rule", "show"]).unwrap();
    assert!(!rules2.contains("fwmark"), "{rules2}");

    // 2. web-1 is steered through node-2 too: node-2 joins node-1's peers.
    c.egress("eg-web", "web", "pool-2", &[], &[]);
    let plan = c.plan();
    let eip = egress_ip(&plan, "eg-web");
    sync_all(&topo, &mut dps, &plan);
    assert_eq!((dps[0].peer_id(n3), dps[0].peer_id(n2)), (Some(1), Some(2)));
    let web1 = &topo.pod("web-1").unwrap().ns;
    let mut conn = WhoamiConn::open(web1, to(DB_A, WHOAMI_PORT), T).unwrap();
    assert_eq!(conn.seen, eip);
    conn.echo("through node-2").unwrap();

    // 3. eg-api goes away: node-3 leaves node-1's peers; node-2 keeps its id, so web-1's
    // connection (its conntrack mark holds that id) carries on.
    c.egresses.retain(|e| e.metadata.name.as_deref() != Some("eg-api"));
    let plan = c.plan();
    let reports = sync_all(&topo, &mut dps, &plan);
    assert_eq!((dps[0].peer_id(n3), dps[0].peer_id(n2)), (None, Some(2)));
    assert!(reports[0].flows_ended.is_empty(), "web-1's flow did not change: {:?}", reports[0].flows_ended);
    conn.echo("after a peer left").unwrap();
    let rules3 = topo.node(3).ns.ip(&["rule", "show"]).unwrap();
    assert!(!rules3.contains("fwmark"), "node-3 needs no tunnel any more: {rules3}");
    quiesce();
    let snap: Vec<String> = (1..=3).map(|i| snapshot(&topo, i)).collect();

    // 4. Agent restart: the new instances recover the ids from the kernel (a fresh allocation
    // would give node-2 id 1), change nothing, and the connection lives on.
    let mut fresh = datapaths(3);
    for (i, r) in sync_all(&topo, &mut fresh, &plan).iter().enumerate() {
        assert!(r.changes.is_empty(), "node-{}: {:?}", i + 1, r.changes);
    }
    assert_eq!(fresh[0].peer_id(n2), Some(2));
    for i in 1..=3 {
        assert_same("restart", &snap[i - 1], &snapshot(&topo, i));
    }
    conn.echo("after restart").unwrap();
    // The tunnel MAC and address come from the underlay address.
    let link = topo.node(1).ns.ip(&["-d", "link", "show", "egret-vxlan"]).unwrap();
    assert!(link.contains("0e:67:0a:0a:00:65"), "{link}");
    let neigh = topo.node(1).ns.ip(&["neigh", "show", "dev", "egret-vxlan"]).unwrap();
    assert!(neigh.contains(&format!("{n2} lladdr 0e:67:0a:0a:00:66 PERMANENT")), "{neigh}");
}
