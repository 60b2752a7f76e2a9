//! Privileged: the stand-in CNI behaves like the lab promises, and nothing is left behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use egret_netns::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

const T: Duration = Duration::from_secs(3);

fn to(ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::from((ip, WHOAMI_PORT))
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn stand_in_cni_routes_pods_and_masquerades_to_the_node_ip() {
    require_privileged();
    let spec = TopologySpec::new("topo-cni", 2).pod("a", 1, Ipv4Addr::new(10, 244, 1, 10)).pod(
        "b",
        2,
        Ipv4Addr::new(10, 244, 2, 10),
    );
    let topo = Topology::build(&spec).unwrap();
    let prefix = topo.prefix.clone();
    let a = topo.pod("a").unwrap();
    // Outside sees the node IP (masquerade).
    assert_eq!(whoami(&a.ns, to(DB_A), T).unwrap(), IpAddr::V4(node_ip(1)));
    assert_eq!(whoami(&a.ns, to(BAD_HOST), T).unwrap(), IpAddr::V4(node_ip(1)));
    // Pod to pod across nodes keeps the pod address.
    let server = Whoami::start(&topo.pod("b").unwrap().ns, 9000).unwrap();
    let seen = whoami(&a.ns, SocketAddr::from(([10, 244, 2, 10], 9000)), T).unwrap();
    assert_eq!(seen, IpAddr::V4(Ipv4Addr::new(10, 244, 1, 10)));
    // A connection stays usable.
    let mut conn = WhoamiConn::open(&a.ns, to(DB_A), T).unwrap();
    conn.echo("hello").unwrap();
    drop(server);
    drop(topo);
    let left = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(!left.contains(&prefix), "left behind: {left}");
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn namespaces_are_removed_on_panic() {
    require_privileged();
    let name = unique_prefix("topo-panic");
    let n2 = name.clone();
    let r = std::panic::catch_unwind(move || {
        let _ns = Netns::create(&n2).unwrap();
        panic!("boom");
    });
    assert!(r.is_err());
    let left = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&left.stdout).contains(&name));
    assert!(Netns::create("not-egret").is_err());
}
