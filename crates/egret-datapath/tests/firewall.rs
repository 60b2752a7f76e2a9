//! Privileged: the egress firewall with real TCP connections, in network namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use egret_core::planner::NodePlan;
use egret_core::policy::{self, Firewall, FirewallPod, FirewallSet};
use egret_netns::*;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENT1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);

/// Node-1's plan with `policies` (ClusterEgressPolicy YAML documents) applied to web-1.
fn with_policies(mut np: NodePlan, policies: &str) -> NodePlan {
    let cluster: Vec<egret_api::v1alpha1::ClusterEgressPolicy> =
        policies.split("\n---\n").map(|d| serde_yaml_ng::from_str(d).unwrap()).collect();
    let v = policy::validate_policies(&cluster, &[]);
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    let ordered: Vec<&policy::Policy> = v.policies.iter().collect();
    np.firewall = Firewall {
        pods: vec![FirewallPod { ip: IpAddr::V4(WEB1), pod: "default/web-1".into(), set: 0 }],
        sets: vec![FirewallSet {
            policies: ordered.iter().map(|p| p.id.clone()).collect(),
            compiled: Arc::new(policy::compile(&ordered)),
        }],
    };
    np
}

fn sync_np(topo: &Topology, dp: &mut egret_datapath::Datapath, np: &NodePlan) -> egret_datapath::SyncReport {
    topo.node(1).ns.run(|| dp.sync(np)).unwrap().unwrap_or_else(|e| panic!("sync node-1: {e}"))
}

/// Packets counted by each decision of `np`'s firewall on `node`, named as the audit log names
/// them (`ClusterEgressPolicy web rule db`).
fn packets_by_decision(node: &Netns, dp: &egret_datapath::Datapath, np: &NodePlan) -> Vec<(String, u64)> {
    let counters = node.run(|| dp.counters()).unwrap().unwrap();
    egret_datapath::audit::AuditIndex::from_plan(np)
        .decisions()
        .iter()
        .filter_map(|(chain, d)| counters.get(chain).map(|c| (d.by.to_string(), c.packets)))
        .collect()
}

/// Refused at once (a TCP reset), not left to time out.
fn refused(ns: &Netns, to: std::net::SocketAddr) -> bool {
    let t = Instant::now();
    match whoami(ns, to, T) {
        Err(Error::Io(_, e)) => e.kind() == ErrorKind::ConnectionRefused && t.elapsed() < Duration::from_secs(2),
        _ => false,
    }
}

const POLICY: &str = r#"
apiVersion: egret.dev/v1alpha1
kind: ClusterEgressPolicy
metadata: {name: web}
spec:
  priority: 10
  appliedTo: {namespaceSelector: {}}
  rules:
  - name: not-this-one
    action: Deny
    to: {cidrs: [203.0.113.0/24], except: [203.0.113.0/29]}
    ports: [{port: 8080}]
  - name: db
    action: Allow
    to: {cidrs: [203.0.113.0/24]}
    ports: [{port: 8080, endPort: 8081}]
  defaultAction: Deny
"#;

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn rules_in_order_except_and_port_ranges_decide_new_connections() {
    egret_netns::require_privileged();
    let spec = TopologySpec::new("fw-rules", 1).pod("web-1", 1, WEB1).pod("client-1", 1, CLIENT1);
    let topo = Topology::build(&spec).unwrap();
    let extra = Whoami::start(&topo.outside, 8081).unwrap();
    let other = Whoami::start(&topo.outside, 9090).unwrap();
    let mut c = Cluster::new(1, &[]);
    c.pod("default", "web-1", "web", 1, WEB1).pod("default", "client-1", "client", 1, CLIENT1);
    let np = with_policies(c.plan().node_plans().remove("node-1").unwrap(), POLICY);
    let mut dp = datapaths(1).remove(0);
    let r = sync_np(&topo, &mut dp, &np);
    assert!(r.drift.is_empty() && r.skipped.is_empty(), "{r:?}");

    let web1 = &topo.pod("web-1").unwrap().ns;
    let client = &topo.pod("client-1").unwrap().ns;
    // 203.0.113.5 is inside the except: the first rule does not match, the second allows.
    assert_eq!(whoami(web1, to(DB_A, 8080), T).unwrap(), v4(node_ip(1)));
    assert_eq!(whoami(web1, to(DB_A, 8081), T).unwrap(), v4(node_ip(1)), "endPort is inclusive");
    // Outside the port range: the default deny, answered with a reset.
    assert!(refused(web1, to(DB_A, 9090)));
    // Another destination: default deny.
    assert!(refused(web1, to(BAD_HOST, 8080)));
    // A pod no policy selects is not governed.
    assert_eq!(whoami(client, to(BAD_HOST, 8080), T).unwrap(), v4(node_ip(1)));
    // A re-sync changes nothing.
    let again = sync_np(&topo, &mut dp, &np);
    assert!(again.changes.is_empty() && again.drift.is_empty(), "{again:?}");
    drop((extra, other));
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn a_policy_change_that_denies_an_established_flow_ends_it() {
    egret_netns::require_privileged();
    let spec = TopologySpec::new("fw-end", 1).pod("web-1", 1, WEB1);
    let topo = Topology::build(&spec).unwrap();
    let mut c = Cluster::new(1, &[]);
    c.pod("default", "web-1", "web", 1, WEB1);
    let base = c.plan().node_plans().remove("node-1").unwrap();
    let mut dp = datapaths(1).remove(0);
    sync_np(&topo, &mut dp, &with_policies(base.clone(), POLICY));
    let web1 = &topo.pod("web-1").unwrap().ns;
    let mut conn = WhoamiConn::open(web1, to(DB_A, 8080), T).unwrap();
    conn.echo("before").unwrap();
    // The same policy without its allow rule: DB_A:8080 is now denied.
    let deny = POLICY.replace("  - name: db\n    action: Allow\n", "  - name: db\n    action: Deny\n");
    let r = sync_np(&topo, &mut dp, &with_policies(base, &deny));
    assert!(r.changes.iter().any(|c| c.contains("a policy now denies")), "{r:?}");
    assert!(conn.echo("after").is_err(), "the denied flow must end");
    assert!(refused(web1, to(DB_A, 8080)));
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn audited_connections_reach_the_nflog_reader_once_each_and_rules_count_them() {
    use egret_datapath::audit::AuditIndex;
    use egret_datapath::nflog::{NflogSocket, Received};
    egret_netns::require_privileged();
    let spec = TopologySpec::new("fw-audit", 1).pod("web-1", 1, WEB1);
    let topo = Topology::build(&spec).unwrap();
    let mut c = Cluster::new(1, &[]);
    c.pod("default", "web-1", "web", 1, WEB1);
    let logged =
        POLICY.replace("ports: [{port: 8080, endPort: 8081}]", "ports: [{port: 8080, endPort: 8081}]\n    log: true");
    let np = with_policies(c.plan().node_plans().remove("node-1").unwrap(), &logged);
    let mut dp = datapaths(1).remove(0);
    sync_np(&topo, &mut dp, &np);
    let node = &topo.node(1).ns;
    let group = egret_datapath::Config::default().audit_group;
    let mut sock = node.run(|| NflogSocket::bind(group, Duration::from_millis(300))).unwrap().unwrap();

    let web1 = &topo.pod("web-1").unwrap().ns;
    assert!(refused(web1, to(BAD_HOST, 8080)));
    assert_eq!(whoami(web1, to(DB_A, 8080), T).unwrap(), v4(node_ip(1)));
    let idx = AuditIndex::from_plan(&np);
    let mut records = Vec::new();
    while let Received::Packets(p) = sock.recv().unwrap() {
        records.extend(p.iter().map(|l| idx.record(l, "now".into(), |_, _, _| None).unwrap()));
    }
    assert_eq!(records.len(), 2, "one record per audited connection: {records:#?}");
    let deny = &records[0];
    assert_eq!((deny.namespace.as_str(), deny.pod.as_str()), ("default", "web-1"));
    assert_eq!(deny.destination, format!("{BAD_HOST}:8080"));
    assert!(deny.source.starts_with(&format!("{WEB1}:")), "{deny:?}");
    assert_eq!((deny.policy.as_str(), deny.rule.as_deref()), ("web", None), "the default decided");
    assert_eq!(deny.verdict, policy::Verdict::Deny);
    let allow = &records[1];
    assert_eq!((allow.rule.as_deref(), allow.verdict), (Some("db"), policy::Verdict::Allow));

    // The decision chains' counters: one connection each.
    let by_rule = packets_by_decision(node, &dp, &np);
    assert!(by_rule.contains(&("ClusterEgressPolicy web rule db".into(), 1)), "{by_rule:?}");
    assert!(by_rule.contains(&("ClusterEgressPolicy web defaultAction".into(), 1)), "{by_rule:?}");
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn deny_response_drop_leaves_the_client_without_an_answer() {
    egret_netns::require_privileged();
    let spec = TopologySpec::new("fw-drop", 1).pod("web-1", 1, WEB1);
    let topo = Topology::build(&spec).unwrap();
    let mut c = Cluster::new(1, &[]);
    c.pod("default", "web-1", "web", 1, WEB1);
    let silent = format!("{POLICY}  denyResponse: Drop\n");
    let np = with_policies(c.plan().node_plans().remove("node-1").unwrap(), &silent);
    let mut dp = datapaths(1).remove(0);
    sync_np(&topo, &mut dp, &np);
    let web1 = &topo.pod("web-1").unwrap().ns;
    match whoami(web1, to(BAD_HOST, 8080), Duration::from_millis(500)) {
        Err(Error::Io(_, e)) => assert!(
            matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
            "a silent drop is never answered: {e}"
        ),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // Allowed traffic is unaffected.
    assert_eq!(whoami(web1, to(DB_A, 8080), T).unwrap(), v4(node_ip(1)));
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn ipv6_connections_are_decided_by_the_ipv6_maps() {
    egret_netns::require_privileged();
    let spec = TopologySpec::new("fw-v6", 1).pod("web-1", 1, WEB1);
    let topo = Topology::build(&spec).unwrap();
    let node = &topo.node(1).ns;
    let web1 = &topo.pod("web-1").unwrap().ns;
    let mut c = Cluster::new(1, &[]);
    c.pod("default", "web-1", "web", 1, WEB1);
    let v6_policy = POLICY
        .replace("203.0.113.0/24], except: [203.0.113.0/29]", "2001:db8:113::/64], except: [2001:db8:113::/125]")
        .replace("cidrs: [203.0.113.0/24]}", "cidrs: [2001:db8:113::/64]}");
    let mut np = with_policies(c.plan().node_plans().remove("node-1").unwrap(), &v6_policy);
    np.firewall.pods.push(FirewallPod { ip: pod_ip6(WEB1).into(), pod: "default/web-1".into(), set: 0 });
    let mut dp = datapaths(1).remove(0);
    let r = sync_np(&topo, &mut dp, &np);
    assert!(r.drift.is_empty() && r.skipped.is_empty(), "{r:?}");
    let again = sync_np(&topo, &mut dp, &np);
    assert!(again.changes.is_empty() && again.drift.is_empty(), "IPv6 elements read back equal: {again:?}");

    let to6 = |a: &str, port| std::net::SocketAddr::new(a.parse().unwrap(), port);
    // Default deny: reset by the firewall on the pod's node.
    assert!(refused(web1, to6("2001:db8:200::1", 8080)));
    // Inside the except: the deny rule does not match; the allow rule does (no Egress: the
    // node's address, through the CNI's masquerade).
    assert_eq!(whoami(web1, to6("2001:db8:113::5", 8080), T).unwrap(), IpAddr::V6(node_ip6(1)));
    let counters = node.run(|| dp.counters()).unwrap().unwrap();
    let idx = egret_datapath::audit::AuditIndex::from_plan(&np);
    let count = |what: &str| {
        idx.decisions()
            .iter()
            .find(|(_, d)| d.by.to_string() == what)
            .and_then(|(chain, _)| counters.get(chain))
            .map(|c| c.packets)
    };
    assert_eq!(count("ClusterEgressPolicy web defaultAction"), Some(1));
    assert!(count("ClusterEgressPolicy web rule db").unwrap_or(0) >= 1, "the allow rule decided the IPv6 SYN");
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn a_one_way_udp_flow_is_decided_once_and_a_denied_one_dropped_every_packet() {
    use std::net::{SocketAddr, UdpSocket};
    egret_netns::require_privileged();
    let spec = TopologySpec::new("fw-oneway", 1).pod("web-1", 1, WEB1);
    let topo = Topology::build(&spec).unwrap();
    let mut c = Cluster::new(1, &[]);
    c.pod("default", "web-1", "web", 1, WEB1);
    let udp = POLICY.replace("ports: [{port: 8080, endPort: 8081}]", "ports: [{port: 5353, protocol: UDP}]");
    let np = with_policies(c.plan().node_plans().remove("node-1").unwrap(), &udp);
    let mut dp = datapaths(1).remove(0);
    sync_np(&topo, &mut dp, &np);
    // A receiver that never answers: the flows stay one-way ("new" in conntrack).
    let sink = topo
        .outside
        .run(|| {
            let s = UdpSocket::bind(SocketAddr::from((DB_A, 5353))).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
            s
        })
        .unwrap();
    let web1 = &topo.pod("web-1").unwrap().ns;
    let sender = web1.run(|| UdpSocket::bind(SocketAddr::from((WEB1, 0))).unwrap()).unwrap();
    const N: u64 = 20;
    for _ in 0..N {
        sender.send_to(b"one way", SocketAddr::from((DB_A, 5353))).unwrap();
        sender.send_to(b"denied", SocketAddr::from((DB_A, 5354))).unwrap();
    }
    let mut got = 0;
    let mut buf = [0u8; 64];
    while sink.recv_from(&mut buf).is_ok() {
        got += 1;
    }
    assert_eq!(got, N, "every datagram of the allowed flow arrives");
    let by_rule = packets_by_decision(&topo.node(1).ns, &dp, &np);
    // The allowed flow's first packet was decided; its entry was then confirmed, and the
    // rest followed it. The denied flow never got an entry: each packet was decided, and
    // dropped.
    assert!(by_rule.contains(&("ClusterEgressPolicy web rule db".into(), 1)), "{by_rule:?}");
    assert!(by_rule.contains(&("ClusterEgressPolicy web defaultAction".into(), N)), "{by_rule:?}");
}
