//! Privileged: established flows follow the plan when their Egress moves to another egress IP
//! or is deleted (their conntrack entries are ended on the origin node and the old gateway).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use egret_netns::*;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const UDP_PORT: u16 = 9053;

/// A UDP server in the outside namespace answering each datagram with the source address it
/// saw; stops when dropped.
struct UdpWhoami(Arc<AtomicBool>);

impl UdpWhoami {
    fn start(topo: &Topology) -> UdpWhoami {
        let stop = Arc::new(AtomicBool::new(false));
        // One socket per address: an unbound reply could leave from another address of the
        // same IPv6 subnet (bad-host's), which no conntrack entry expects.
        for addr in [IpAddr::V4(DB_A), IpAddr::V6(DB_A6)] {
            let sock = topo.outside.run(|| UdpSocket::bind((addr, UDP_PORT))).unwrap().unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let s = stop.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while !s.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                        let _ = sock.send_to(peer.ip().to_string().as_bytes(), peer);
                    }
                }
            });
        }
        UdpWhoami(stop)
    }
}

impl Drop for UdpWhoami {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One UDP flow from a pod: the same socket (same 5-tuple, same conntrack entry) every time.
struct Flow(UdpSocket);

impl Flow {
    fn open(ns: &Netns) -> Flow {
        Flow::open_to(ns, IpAddr::V4(DB_A))
    }

    fn open_to(ns: &Netns, dst: IpAddr) -> Flow {
        let any = if dst.is_ipv6() { "::" } else { "0.0.0.0" };
        let sock = ns.run(|| UdpSocket::bind((any, 40053))).unwrap().unwrap();
        sock.connect(SocketAddr::from((dst, UDP_PORT))).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        Flow(sock)
    }

    /// The source address the outside saw for this flow (a few tries: UDP may lose one).
    fn seen(&self) -> IpAddr {
        let mut buf = [0u8; 64];
        for _ in 0..6 {
            self.0.send(b"?").unwrap();
            if let Ok(n) = self.0.recv(&mut buf) {
                return std::str::from_utf8(&buf[..n]).unwrap().parse().unwrap();
            }
        }
        panic!("no answer from the outside");
    }
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn an_established_flow_leaves_the_old_egress_ip_when_its_egress_moves_or_is_deleted() {
    egret_netns::require_privileged();
    let web2 = std::net::Ipv4Addr::new(10, 244, 2, 10);
    let spec = TopologySpec::new("resteer", 3).pod("web-1", 1, WEB1).pod("web-2", 2, web2);
    let topo = Topology::build(&spec).unwrap();
    let _server = UdpWhoami::start(&topo);
    let mut c = Cluster::new(3, &[2, 3]);
    let on = |i: usize| sel(&[("kubernetes.io/hostname", &node_name(i))]);
    c.pod("default", "web-1", "web", 1, WEB1)
        .pod("default", "web-2", "web", 2, web2)
        .pool_on("pool-2", "10.10.0.11", "10.10.0.20", on(2))
        .pool_on("pool-3", "10.10.0.21", "10.10.0.30", on(3))
        .egress("eg-web", "web", "pool-2", &[], &[]);
    let plan = c.plan();
    let old_ip = egress_ip(&plan, "eg-web");
    assert_eq!(gateway(&plan, "eg-web"), Some(2));
    let mut dps = datapaths(3);
    sync_all(&topo, &mut dps, &plan);
    let flow = Flow::open(&topo.pod("web-1").unwrap().ns);
    assert_eq!(flow.seen(), old_ip);
    assert_eq!(flow.seen(), old_ip, "one flow, one conntrack entry");
    // web-2 runs on the gateway itself: SNAT there, no tunnel.
    let local = Flow::open(&topo.pod("web-2").unwrap().ns);
    assert_eq!(local.seen(), old_ip);

    // The Egress moves to another pool: another egress IP on another gateway.
    c.egresses[0].spec.external_ip_pool = Some("pool-3".into());
    let plan = c.plan();
    let new_ip = egress_ip(&plan, "eg-web");
    assert_eq!(gateway(&plan, "eg-web"), Some(3));
    assert_ne!(new_ip, old_ip);
    let reports = sync_all(&topo, &mut dps, &plan);
    let flow_key = (std::net::IpAddr::V4(WEB1), std::net::IpAddr::V4(DB_A));
    assert!(reports[0].flows_ended.contains(&flow_key), "origin: {:?}", reports[0].flows_ended);
    // The old gateway leaves its stale binding alone: no packet of the flow reaches it now.
    assert!(!reports[1].flows_ended.contains(&flow_key), "old gateway: {:?}", reports[1].flows_ended);
    assert_eq!(flow.seen(), new_ip, "the established flow still left with the old egress IP");
    assert_eq!(local.seen(), new_ip, "the flow of the old gateway's own pod too");

    // The Egress is deleted: the flow leaves like any unselected traffic, with the node IP.
    c.egresses.clear();
    let plan = c.plan();
    let reports = sync_all(&topo, &mut dps, &plan);
    assert!(reports[0].flows_ended.contains(&flow_key), "origin: {:?}", reports[0].flows_ended);
    assert_eq!(flow.seen(), IpAddr::V4(node_ip(1)));
    assert_eq!(local.seen(), IpAddr::V4(node_ip(2)));
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn an_established_ipv6_flow_leaves_the_old_egress_ip_when_its_egress_moves() {
    egret_netns::require_privileged();
    let spec = TopologySpec::new("resteer6", 3).pod("web-1", 1, WEB1);
    let topo = Topology::build(&spec).unwrap();
    let _server = UdpWhoami::start(&topo);
    let mut c = Cluster::new(3, &[2, 3]);
    let on = |i: usize| sel(&[("kubernetes.io/hostname", &node_name(i))]);
    c.pod_dual("default", "web-1", "web", 1, WEB1)
        .pool_on("pool-2", "fd00:10:10::11", "fd00:10:10::1f", on(2))
        .pool_on("pool-3", "fd00:10:10::21", "fd00:10:10::2f", on(3))
        .egress("eg-web6", "web", "pool-2", &[], &[]);
    let plan = c.plan();
    let old_ip = egress_ip(&plan, "eg-web6");
    let mut dps = datapaths(3);
    sync_all(&topo, &mut dps, &plan);
    let flow = Flow::open_to(&topo.pod("web-1").unwrap().ns, IpAddr::V6(DB_A6));
    assert_eq!(flow.seen(), old_ip);

    c.egresses[0].spec.external_ip_pool = Some("pool-3".into());
    let plan = c.plan();
    let new_ip = egress_ip(&plan, "eg-web6");
    assert_ne!(new_ip, old_ip);
    let reports = sync_all(&topo, &mut dps, &plan);
    let flow_key = (IpAddr::V6(pod_ip6(WEB1)), IpAddr::V6(DB_A6));
    assert!(reports[0].flows_ended.contains(&flow_key), "origin: {:?}", reports[0].flows_ended);
    assert_eq!(flow.seen(), new_ip, "the established IPv6 flow still left with the old egress IP");
}
