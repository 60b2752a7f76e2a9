//! Privileged: resync, restart, drift repair, cleanup and scale of the datapath.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use egret_datapath::{Config, Datapath};
use egret_netns::*;
use std::net::Ipv4Addr;
use std::time::Instant;

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn resync_and_restart_change_nothing_and_keep_a_connection_alive() {
    egret_netns::require_privileged();
    let topo = Topology::build(&TopologySpec::new("life-resync", 2).pod("web-1", 1, WEB1)).unwrap();
    let c = Cluster::web_egress(2, &[2]);
    let plan = c.plan();
    let eip = egress_ip(&plan, "eg-web");
    let mut dps = datapaths(2);
    sync_all(&topo, &mut dps, &plan);

    let web1 = &topo.pod("web-1").unwrap().ns;
    let mut conn = WhoamiConn::open(web1, to(DB_A, WHOAMI_PORT), T).unwrap();
    assert_eq!(conn.seen, eip);
    conn.echo("before").unwrap();
    quiesce();
    let snap: Vec<String> = (1..=2).map(|i| snapshot(&topo, i)).collect();
    assert!(snap[1].contains("table inet egret") && snap[1].contains("egret-vxlan"));

    // Same plan, same instance: nothing to do, nothing touched (counters included).
    for r in sync_all(&topo, &mut dps, &plan) {
        assert!(r.changes.is_empty(), "{:?}", r.changes);
        assert!(r.drift.is_empty(), "{:?}", r.drift);
        assert_eq!(r.nft_commands, 0);
        assert!(r.announced.is_empty());
    }
    for i in 1..=2 {
        assert_same("resync", &snap[i - 1], &snapshot(&topo, i));
    }

    // Agent restart: new instances converge without changing anything.
    let mut fresh = datapaths(2);
    for r in sync_all(&topo, &mut fresh, &plan) {
        assert!(r.changes.is_empty(), "{:?}", r.changes);
        assert_eq!(r.nft_commands, 0);
    }
    for i in 1..=2 {
        assert_same("restart", &snap[i - 1], &snapshot(&topo, i));
    }
    conn.echo("after restart").unwrap();

    // Someone deletes a rule, a route and an nft element behind Egret's back: reported as
    // drift and repaired, and the connection still works. (Quiesce first: a delayed ACK sent
    // while the map is empty would leave unsteered and be answered with a reset.)
    quiesce();
    let n1 = &topo.node(1).ns;
    n1.ip(&["rule", "del", "pref", "1700"]).unwrap();
    n1.exec("nft", &["flush", "map", "inet", "egret", "steer4"]).unwrap();
    let r = sync(&topo, &mut fresh[0], 1, &plan);
    assert!(r.drift.iter().any(|d| d.contains("missing rule")), "{:?}", r.drift);
    assert!(r.drift.iter().any(|d| d.contains("steer4")), "{:?}", r.drift);
    assert!(r.nft_commands > 0 && r.nft_commands < 5, "only the map is refilled: {}", r.nft_commands);
    conn.echo("after repair").unwrap();
    let c1 = counter(&topo, &fresh[0], 1, "eg-web");
    assert!(c1.packets > 0, "counters survived the repair: {c1:?}");

    // The tunnel's IPv4 settings are set over netlink (no writable /proc/sys needed) and
    // repaired the same way.
    let conf = |key: &str| n1.exec("cat", &[&format!("/proc/sys/net/ipv4/conf/egret-vxlan/{key}")]).unwrap();
    assert_eq!((conf("forwarding").trim(), conf("rp_filter").trim()), ("1", "2"));
    n1.sysctl("net.ipv4.conf.egret-vxlan.rp_filter", "1").unwrap();
    let r = sync(&topo, &mut fresh[0], 1, &plan);
    assert!(r.changes.iter().any(|c| c.contains("rp_filter=2")), "{:?}", r.changes);
    assert_eq!(conf("rp_filter").trim(), "2");
    let r = sync(&topo, &mut fresh[0], 1, &plan);
    assert!(r.changes.is_empty(), "{:?}", r.changes);

    // Someone deletes the tunnel device: it is created again, and the rules comparing
    // interface indexes (`iif`/`oif`, resolved when a rule is loaded) are loaded again for
    // the new device, so steered traffic flows as before.
    n1.ip(&["link", "del", "egret-vxlan"]).unwrap();
    let r = sync(&topo, &mut fresh[0], 1, &plan);
    assert!(r.drift.iter().any(|d| d.contains("rules of chain forward differ")), "{:?}", r.drift);
    assert_eq!(whoami(web1, to(DB_A, WHOAMI_PORT), T).unwrap(), eip);
    let r = sync(&topo, &mut fresh[0], 1, &plan);
    assert!(r.changes.is_empty() && r.drift.is_empty(), "{r:?}");
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn cleanup_leaves_the_node_exactly_as_before_and_touches_nothing_else() {
    egret_netns::require_privileged();
    let topo = Topology::build(&TopologySpec::new("life-clean", 2).pod("web-1", 1, WEB1)).unwrap();
    let n1 = &topo.node(1).ns;
    // Other parties' state that Egret must leave alone, including look-alikes.
    n1.exec("nft", &["add", "table", "inet", "other"]).unwrap();
    n1.ip(&["link", "add", "other-vx", "type", "vxlan", "id", "9", "dstport", "4789", "dev", "eth0"]).unwrap();
    n1.ip(&["rule", "add", "pref", "1700", "fwmark", "0x4000/0x4000", "table", "100"]).unwrap();
    n1.ip(&["route", "add", "192.0.2.0/24", "via", "10.10.0.1", "table", "100"]).unwrap();
    let before = snapshot(&topo, 1);

    let c = Cluster::web_egress(2, &[1]);
    let plan = c.plan();
    let mut dp = Datapath::new(Config::default()).unwrap();
    sync(&topo, &mut dp, 1, &plan);
    assert_ne!(snapshot(&topo, 1), before);

    let report = n1.run(|| dp.cleanup()).unwrap().unwrap();
    assert!(report.removed.iter().any(|r| r.contains("nft table")), "{:?}", report.removed);
    assert_same("cleanup", &before, &snapshot(&topo, 1));
    // Again: nothing left to remove.
    let again = n1.run(|| egret_datapath::cleanup(&Config::default())).unwrap().unwrap();
    assert!(again.removed.is_empty(), "{:?}", again.removed);

    // A link with Egret's name that Egret did not create is refused, not adopted or deleted.
    n1.ip(&["link", "add", "egret-vxlan", "type", "vxlan", "id", "10", "dstport", "4790", "dev", "eth0"]).unwrap();
    let err = n1.run(|| dp.sync(&plan.node_plans()["node-1"])).unwrap().unwrap_err();
    assert!(err.to_string().contains("not created by Egret"), "{err}");
    n1.run(|| egret_datapath::cleanup(&Config::default())).unwrap().unwrap();
    assert!(n1.ip(&["link", "show", "egret-vxlan"]).is_ok(), "foreign link kept");
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn a_large_plan_applies_in_one_transaction_without_growing_the_rules() {
    egret_netns::require_privileged();
    let topo = Topology::build(&TopologySpec::new("life-large", 2)).unwrap();
    // 10,000 pods on node-1 in 1,000 namespaces, one Egress per namespace, gateways on node-2.
    let mut c = Cluster::new(2, &[2]);
    for k in 0..1000u32 {
        let ns = format!("ns-{k}");
        c.namespace(&ns);
        for j in 0..10u32 {
            let n = k * 10 + j;
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 64, 0)) + n);
            c.pod(&ns, &format!("p-{n}"), &format!("app-{k}"), 1, ip);
        }
        c.egresses.push(egret_api::v1alpha1::Egress::new(
            &format!("eg-{k}"),
            egret_api::v1alpha1::EgressSpec {
                applied_to: egret_api::v1alpha1::AppliedTo {
                    namespace_selector: Some(sel(&[("kubernetes.io/metadata.name", &ns)])),
                    ..Default::default()
                },
                external_ip_pool: Some("pool".into()),
                ..Default::default()
            },
        ));
    }
    c.pool("pool", "100.64.0.1", "100.64.3.254");
    let t = Instant::now();
    let plan = c.plan();
    let nps = plan.node_plans();
    let planning = t.elapsed();
    assert_eq!(nps["node-1"].egresses.len(), 1000);
    assert_eq!(nps["node-1"].steer.len(), 10_000);
    assert_eq!(nps["node-2"].hosted.len(), 1000);

    let mut dps = datapaths(2);
    let r1 = sync(&topo, &mut dps[0], 1, &plan);
    let r2 = sync(&topo, &mut dps[1], 2, &plan);
    println!(
        "large plan: planner {planning:?}; node-1 ({} steer entries): nft transaction {:?} ({} commands), sync {:?}; node-2 ({} SNAT entries, {} hosted IPs): nft {:?}, sync {:?}",
        nps["node-1"].steer.len(),
        r1.nft_apply.unwrap(),
        r1.nft_commands,
        r1.elapsed,
        nps["node-2"].snat.len(),
        nps["node-2"].hosted.len(),
        r2.nft_apply.unwrap(),
        r2.elapsed
    );
    // One transaction; the rule count is that of a one-Egress plan.
    let rules = |i: usize| {
        topo.node(i)
            .ns
            .exec("nft", &["-a", "list", "table", "inet", "egret"])
            .unwrap()
            .lines()
            .filter(|l| l.contains("# handle") && !l.contains("chain ") && !l.contains("counter "))
            .count()
    };
    let big_rules = rules(1);
    let r = sync(&topo, &mut dps[0], 1, &plan);
    assert!(r.changes.is_empty() && r.nft_commands == 0, "{:?}", r.changes);

    // A one-pod change is a small element diff, not a reload.
    c.pods.pop();
    let smaller = c.plan();
    let r = sync(&topo, &mut dps[0], 1, &smaller);
    // (The table, then one element each out of steer4, counters4, counters_src4, sources4.)
    assert!(r.nft_commands <= 5, "{} commands for a one-pod change", r.nft_commands);

    let mut small = Cluster::new(2, &[2]);
    small.pod("default", "web-1", "web", 1, WEB1).pool("pool", "100.64.0.1", "100.64.3.254").egress(
        "eg-web",
        "web",
        "pool",
        &[],
        &[],
    );
    let mut fresh = Datapath::new(Config::default()).unwrap();
    topo.node(1).ns.run(|| egret_datapath::cleanup(&Config::default())).unwrap().unwrap();
    sync(&topo, &mut fresh, 1, &small.plan());
    assert_eq!(rules(1), big_rules, "rules must not grow with pods or Egresses");
}
