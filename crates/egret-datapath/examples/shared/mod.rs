//! Pieces the benchmark examples share: the connection-rate measure, the UDP flood into a
//! counting sink, CPU accounting and the firewall plans. (Not an example itself: cargo builds
//! only `examples/*.rs`.)
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use egret_core::planner::NodePlan;
use egret_core::policy::{self, Firewall, FirewallPod, FirewallSet};
use egret_netns::Topology;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A flag raised by SIGINT, SIGTERM or SIGHUP, so that a benchmark stops after the measure
/// under way and its namespaces are removed by their drop guards (a signal's default action
/// would kill the process and leave them behind). The signals are blocked in every thread
/// (call this first, before any thread or child exists: both inherit the mask) and taken by
/// one thread with `sigwait`: no handler, no unsafe code.
pub fn stop_on_signal() -> Arc<std::sync::atomic::AtomicBool> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block().expect("block the stop signals");
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = flag.clone();
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            eprintln!("{sig}: stopping after the measure under way, then removing the namespaces");
            f.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    flag
}

/// The port of the acceptor that counts connections (accepts and drops each at once).
pub const ACCEPT_PORT: u16 = 9000;

/// Starts the acceptor on db-a (both families): a thread accepting and dropping every
/// connection.
pub fn start_acceptor(topo: &Topology) {
    let acceptor = topo
        .outside
        .run(|| std::net::TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, ACCEPT_PORT)))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for s in acceptor.incoming() {
            drop(s);
        }
    });
}

/// New connections per second from web-1 to the acceptor on db-a (`dst`, either family) over
/// `secs`: each one a TCP handshake through the node's rules, the tunnel and SNAT, then closed
/// with a reset.
pub fn connections(topo: &Topology, secs: u32, dst: IpAddr) -> f64 {
    let ns = &topo.pod("web-1").unwrap().ns;
    ns.run(|| {
        let end = Instant::now() + Duration::from_secs(u64::from(secs));
        let start = Instant::now();
        let mut n = 0u64;
        while Instant::now() < end {
            let stream =
                std::net::TcpStream::connect_timeout(&(dst, ACCEPT_PORT).into(), T).expect("an allowed connection");
            // Closed with a reset: no TIME_WAIT, so tens of thousands of connections never run
            // out of source ports.
            nix::sys::socket::setsockopt(
                &stream,
                nix::sys::socket::sockopt::Linger,
                &libc::linger { l_onoff: 1, l_linger: 0 },
            )
            .unwrap();
            n += 1;
        }
        n as f64 / start.elapsed().as_secs_f64()
    })
    .unwrap()
}

/// The port db-a counts and drops UDP datagrams on ([`start_udp_sink`]).
pub const SINK_PORT: u16 = 9999;

/// Makes db-a count UDP datagrams to [`SINK_PORT`] in an nft counter and drop them in its
/// prerouting hook, before any socket: no receiving process that must be woken per datagram,
/// so what is measured is the path, not a receiver.
pub fn start_udp_sink(topo: &Topology) {
    let rules = format!(
        "table inet bench {{\n counter got {{}}\n chain pre {{\n  type filter hook prerouting priority -300; policy accept;\n  udp dport {SINK_PORT} counter name got drop\n }}\n}}\n"
    );
    topo.outside.exec_stdin("nft", &["-f", "-"], &rules).expect("the UDP sink on db-a");
}

/// Datagrams per second that reached db-a (`dst`, either family) from web-1 over `secs`: one
/// thread in the pod sends `len`-byte UDP payloads as fast as it can, db-a's sink counts what
/// arrives.
pub fn udp_flood(topo: &Topology, secs: u32, len: usize, dst: IpAddr) -> f64 {
    topo.outside.exec("nft", &["reset", "counter", "inet", "bench", "got"]).expect("reset the sink counter");
    let elapsed = topo
        .pod("web-1")
        .expect("pod web-1")
        .ns
        .run(|| {
            let any: IpAddr =
                if dst.is_ipv6() { std::net::Ipv6Addr::UNSPECIFIED.into() } else { Ipv4Addr::UNSPECIFIED.into() };
            let s = std::net::UdpSocket::bind((any, 0)).expect("a UDP socket");
            s.connect((dst, SINK_PORT)).expect("connect");
            let buf = vec![0u8; len];
            let start = Instant::now();
            let end = start + Duration::from_secs(u64::from(secs));
            while Instant::now() < end {
                for _ in 0..64 {
                    // A full queue (ENOBUFS) is a datagram lost on the way, as on a wire.
                    let _ = s.send(&buf);
                }
            }
            start.elapsed()
        })
        .expect("the sender");
    let out = topo.outside.exec("nft", &["-j", "list", "counter", "inet", "bench", "got"]).expect("the sink counter");
    let v: serde_json::Value = serde_json::from_str(&out).expect("nft JSON");
    let got = v["nftables"]
        .as_array()
        .and_then(|a| a.iter().find_map(|x| x["counter"]["packets"].as_f64()))
        .expect("the counter's packets");
    got / elapsed.as_secs_f64()
}

pub fn cluster_policy(
    name: &str,
    priority: i64,
    rules: &str,
    default: &str,
) -> egret_api::v1alpha1::ClusterEgressPolicy {
    let y = format!(
        "apiVersion: egret.dev/v1alpha1\nkind: ClusterEgressPolicy\nmetadata: {{name: {name}}}\nspec:\n  priority: {priority}\n  appliedTo: {{namespaceSelector: {{}}}}\n  rules:\n{rules}{default}"
    );
    serde_yaml_ng::from_str(&y).expect("policy YAML")
}

/// 1,000 policies x 10 rules; the last rule of the last policy allows db-a.
pub fn large_policies() -> Vec<egret_api::v1alpha1::ClusterEgressPolicy> {
    (0..1000u32)
        .map(|i| {
            let mut rules = String::new();
            for j in 0..10u32 {
                let block = i * 10 + j; // a /24 of 100.64.0.0/10 each
                let (b2, b3) = (64 + block / 256, block % 256);
                let rule = if i == 999 && j == 9 {
                    "  - {name: r9, action: Allow, to: {cidrs: [203.0.113.0/24]}, ports: [{port: 8080}, {port: 5201}, {port: 9000}]}\n".to_string()
                } else {
                    let action = if j % 2 == 0 { "Allow" } else { "Deny" };
                    format!(
                        "  - {{name: r{j}, action: {action}, to: {{cidrs: [100.{b2}.{b3}.0/24], except: [100.{b2}.{b3}.128/26]}}, ports: [{{port: {p}, endPort: {e}}}, {{protocol: UDP, port: 53}}]}}\n",
                        p = 1000 + j * 10,
                        e = 1005 + j * 10
                    )
                };
                rules.push_str(&rule);
            }
            cluster_policy(&format!("p{i:04}"), i64::from(i), &rules, "")
        })
        .collect()
}

/// One policy: allow the outside network, deny everything else.
pub fn small_policies() -> Vec<egret_api::v1alpha1::ClusterEgressPolicy> {
    vec![cluster_policy(
        "only",
        0,
        "  - {name: outside, action: Allow, to: {cidrs: [203.0.113.0/24]}}\n",
        "  defaultAction: Deny\n",
    )]
}

/// `np` with the firewall of `policies`: web-1 selected by all of them and, when `other_pods`
/// > 0, that many more pods spread over single-policy sets.
pub fn with_firewall(
    mut np: NodePlan,
    policies: &[egret_api::v1alpha1::ClusterEgressPolicy],
    other_pods: u32,
) -> NodePlan {
    let v = policy::validate_policies(policies, &[]);
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    let all: Vec<&policy::Policy> = v.policies.iter().collect();
    let t = Instant::now();
    let mut sets = vec![FirewallSet {
        policies: all.iter().map(|p| p.id.clone()).collect(),
        compiled: Arc::new(policy::compile(&all)),
    }];
    eprintln!(
        "  web-1's set: {} policies compiled into {} cells in {:.1} s",
        all.len(),
        sets[0].compiled.cells.len(),
        t.elapsed().as_secs_f64()
    );
    let mut pods = vec![FirewallPod { ip: IpAddr::V4(WEB1), pod: "default/web-1".into(), set: 0 }];
    if other_pods > 0 {
        for p in &all {
            sets.push(FirewallSet { policies: vec![p.id.clone()], compiled: Arc::new(policy::compile(&[p])) });
        }
        let base = u32::from(Ipv4Addr::new(10, 245, 0, 0));
        for k in 0..other_pods {
            pods.push(FirewallPod {
                ip: IpAddr::V4(Ipv4Addr::from(base + k)),
                pod: format!("bench/pod-{k}"),
                set: 1 + (k as usize % all.len()),
            });
        }
    }
    np.firewall = Firewall { pods, sets };
    np
}

/// CPU time the whole machine spent busy so far, in seconds: user, nice, system, irq and
/// softirq of `/proc/stat` (not namespaced). Idle, I/O wait and steal (time the hypervisor gave
/// another guest) are left out, so the figure measures work done, not a busy neighbour.
pub fn cpu_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let line = stat.lines().next().expect("the cpu line");
    let v: Vec<f64> = line.split_whitespace().skip(1).map(|x| x.parse().expect("a number")).collect();
    // user nice system idle iowait irq softirq steal ...
    let ticks = v[0] + v[1] + v[2] + v[5] + v[6];
    // USER_HZ is 100 on every Linux architecture's /proc interface.
    ticks / 100.0
}

/// "lo..hi" of `v` (two decimals below 100, none above).
pub fn spread(v: &[f64]) -> String {
    let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    if hi < 100.0 { format!("{lo:.2}..{hi:.2}") } else { format!("{lo:.0}..{hi:.0}") }
}

/// Per-round ratios `a[i] / b[i]` in percent.
pub fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| 100.0 * x / y).collect()
}
