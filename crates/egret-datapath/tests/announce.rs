//! Privileged: announcements of an egress IP repeat for a few seconds, but never after the
//! node has stopped hosting it (the repeats would pull the router back to the old node).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use egret_netns::*;
use std::time::Duration;

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn a_node_stops_announcing_an_ip_as_soon_as_it_moves_away() {
    egret_netns::require_privileged();
    let topo = Topology::build(&TopologySpec::new("ann-stop", 3).pod("web-1", 1, WEB1)).unwrap();
    let mut c = Cluster::web_egress(3, &[2, 3]);
    let before = c.plan();
    let std::net::IpAddr::V4(eip) = egress_ip(&before, "eg-web") else { panic!("IPv4 expected") };
    let first = gateway(&before, "eg-web").unwrap();
    let mut dps = datapaths(3);
    let r = sync(&topo, &mut dps[first - 1], first, &before);
    assert_eq!(r.announced, vec![std::net::IpAddr::V4(eip)]);
    assert!(r.announce_failed.is_empty());
    // The router learns the address the way traffic makes it (a gratuitous ARP only updates an
    // existing entry): a connection attempt from the router, answered by a reset.
    let to_eip = std::net::SocketAddr::from((eip, 9));
    let _ = topo.router.run(|| std::net::TcpStream::connect_timeout(&to_eip, Duration::from_secs(2))).unwrap();
    assert_eq!(topo.router_neighbour(eip).unwrap(), Some(topo.node_mac(first).unwrap()));

    // The IP moves on at once, while the first node's repeats are still due.
    c.live.remove(&node_name(first));
    let after = c.plan();
    let second = gateway(&after, "eg-web").unwrap();
    assert_ne!(first, second);
    sync(&topo, &mut dps[first - 1], first, &after);
    // The new holder announces once only, so any later repeat of the old one would win.
    let mut once = egret_datapath::Datapath::new(egret_datapath::Config {
        announce_count: 1,
        ..egret_datapath::Config::default()
    })
    .unwrap();
    sync(&topo, &mut once, second, &after);
    // Past the old holder's whole repeat schedule (0.25 .. 3.75 s): the router must still
    // point at the new holder.
    std::thread::sleep(Duration::from_millis(4500));
    assert_eq!(topo.router_neighbour(eip).unwrap(), Some(topo.node_mac(second).unwrap()));
}
