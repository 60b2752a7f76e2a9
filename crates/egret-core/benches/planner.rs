//! The planner at the brief's scale: 100,000 pods x 2,000 Egresses x 5,000 nodes.
//!
//! Run: `cargo bench -p egret-core --bench planner` (add `-- --quick` for a short run).
//!
//! The world (see [`world`]): 5,000 nodes (every tenth a gateway), 2,000 namespaces, 100,000
//! pods (every namespace holds all five `app` values), one /16 pool, 2,000 Egresses. Three
//! quarters select one namespace each (`team=tK`, `app In [a0,a1,a2]`); the other quarter select across
//! namespaces (`tier In [gX]`: 50 namespaces each, every namespace is picked by about 12 of
//! them) with pod selectors (`app In [a2,a3]` or `app NotIn [a0,a1,a4]`) that overlap the
//! per-namespace Egresses on `a2` and each other on `a3`, and narrow their destinations to two
//! /24s. So a steered pod is matched by up to 13 Egresses and the overlap rule (longest
//! prefix, then oldest, then name) and the destination partitions really run.
//!
//! What each benchmark measures, all on inputs prepared outside the timed loop:
//! - `whole plan`: validate + allocate + place + plan for the whole cluster.
//! - `node_plan of one node`: only the split of one node's plan out of a finished plan.
//! - `change: ...`: what an agent pays for one change today: the agent recomputes the whole
//!   plan from the changed inputs and then its own node's plan (that of the node the change
//!   concerns). One pod added; one pod's label changed (moving it between Egresses); one
//!   Egress edited (its destinations). Not included: reading the store (parsing the YAML of
//!   every object), which the agent also does on every change, and programming the datapath.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a bad fixture should stop it

mod common;
use common::labels;
use criterion::{Criterion, criterion_group, criterion_main};
use egret_api::v1alpha1 as api;
use egret_core::model::{Namespace, Node, Pod};
use egret_core::planner::{ClusterConfig, plan_objects};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

const PODS: usize = 100_000;
const EGRESSES: usize = 2_000;
const NODES: usize = 5_000;
/// Namespaces carry `tier=g{i % TIERS}`: a cross-namespace Egress's selector matches
/// EGRESSES / TIERS = 50 namespaces.
const TIERS: usize = 40;

fn expr(operator: &str, values: &[&str]) -> LabelSelector {
    LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "app".into(),
            operator: operator.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }]),
    }
}

/// Egress `k`: every fourth (k % 4 == 1) selects across namespaces with a pod selector that
/// overlaps the others and narrowed destinations; the rest select their own namespace.
fn egress(k: usize) -> api::Egress {
    let cross = k % 4 == 1;
    let (namespace_selector, pod_selector) = if cross {
        let ns = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                // Cross-namespace Egresses are k = 4m + 1: spread them over the tiers by m.
                values: Some(vec![format!("g{}", (k / 4) % TIERS)]),
            }]),
        };
        // Two spellings of overlapping pod selectors: both match a3, the first also a2.
        let pods = if k % 8 == 1 { expr("In", &["a2", "a3"]) } else { expr("NotIn", &["a0", "a1", "a4"]) };
        (ns, pods)
    } else {
        let ns = LabelSelector { match_labels: Some(labels(&[("team", format!("t{k}"))])), match_expressions: None };
        (ns, expr("In", &["a0", "a1", "a2"]))
    };
    let mut spec = api::EgressSpec {
        applied_to: api::AppliedTo {
            namespace_selector: Some(namespace_selector),
            pod_selector: Some(pod_selector),
            node_selector: None,
        },
        external_ip_pool: Some("pool".into()),
        ..Default::default()
    };
    if cross {
        spec.destination_cidrs = vec![format!("203.0.{}.0/24", k % 256), "198.51.100.0/24".into()];
    }
    api::Egress::new(&format!("eg-{k}"), spec)
}

#[derive(Clone)]
struct World {
    pools: Vec<api::ExternalIPPool>,
    egresses: Vec<api::Egress>,
    nodes: Vec<Node>,
    namespaces: Vec<Namespace>,
    pods: Vec<Pod>,
    live: BTreeSet<String>,
}

fn world() -> World {
    let nodes: Vec<Node> = (0..NODES).map(common::node).collect();
    let namespaces: Vec<Namespace> = (0..EGRESSES)
        .map(|i| Namespace {
            name: format!("ns-{i}"),
            labels: labels(&[("team", format!("t{i}")), ("tier", format!("g{}", i % TIERS))]),
        })
        .collect();
    let pods: Vec<Pod> = (0..PODS)
        .map(|j| {
            let node = j % NODES;
            Pod {
                namespace: format!("ns-{}", j % EGRESSES),
                name: format!("pod-{j}"),
                // Every namespace holds pods of all five app values (not one per namespace).
                labels: labels(&[("app", format!("a{}", (j / EGRESSES) % 5))]),
                node: Some(format!("node-{node}")),
                ips: vec![IpAddr::V4(Ipv4Addr::new(
                    10,
                    (128 + node / 256) as u8,
                    (node % 256) as u8,
                    (2 + j / NODES) as u8,
                ))],
            }
        })
        .collect();
    let pool = api::ExternalIPPool::new(
        "pool",
        api::ExternalIPPoolSpec {
            ip_ranges: vec![api::IPRange { cidr: Some("172.16.0.0/16".into()), ..Default::default() }],
            node_selector: LabelSelector {
                match_labels: Some(labels(&[("network-role", "egress-gateway".into())])),
                match_expressions: None,
            },
            subnet_info: None,
        },
    );
    let egresses = (0..EGRESSES).map(egress).collect();
    let live = nodes.iter().map(|n| n.name.clone()).collect();
    World { pools: vec![pool], egresses, nodes, namespaces, pods, live }
}

/// One pod of the world as it would be added: node-7, namespace ns-3, app=a2 (selected by its
/// namespace's Egress and by the cross-namespace ones of its tier).
fn new_pod() -> Pod {
    Pod {
        namespace: "ns-3".into(),
        name: "pod-new".into(),
        labels: labels(&[("app", "a2".into())]),
        node: Some("node-7".into()),
        ips: vec![IpAddr::V4(Ipv4Addr::new(10, 128, 7, 250))],
    }
}

fn bench(c: &mut Criterion) {
    let w = world();
    let config = ClusterConfig::default();
    let plan = |w: &World| plan_objects(&w.pools, &w.egresses, &w.nodes, &w.namespaces, &w.pods, &w.live, &config).1;
    let p = plan(&w);
    assert!(p.rules.len() >= PODS / 2, "the benchmark world steers most pods");
    // The overlap rule must really run: many pods' destinations split between several Egresses.
    let mut by_source: BTreeMap<IpAddr, BTreeSet<&str>> = BTreeMap::new();
    for r in &p.rules {
        by_source.entry(r.source_ip).or_default().insert(&r.egress);
    }
    let shared = by_source.values().filter(|e| e.len() > 1).count();
    assert!(shared >= PODS / 10, "only {shared} pods are steered by more than one Egress");
    eprintln!("world: {} steering rules; {shared} pods split between several Egresses", p.rules.len());

    // The changed worlds, built outside the timed loops.
    let mut added = w.clone();
    added.pods.push(new_pod());
    let mut relabelled = w.clone();
    // pod-10346 (ns-346, node-346) moves from app=a0 to app=a3: from its namespace's Egress to
    // the cross-namespace ones of its tier.
    let moved = relabelled.pods.iter_mut().find(|p| p.name == "pod-10346").expect("pod-10346");
    assert_eq!(moved.labels.get("app").map(String::as_str), Some("a0"));
    moved.labels.insert("app".into(), "a3".into());
    let moved_node = moved.node.clone().expect("scheduled");
    let mut edited = w.clone();
    edited.egresses[1].spec.destination_cidrs = vec!["203.0.1.0/25".into(), "198.51.100.0/24".into()];
    for (world, node) in [(&added, "node-7"), (&relabelled, moved_node.as_str())] {
        assert_ne!(plan(world).node_plan(node), p.node_plan(node), "the change must change {node}'s plan");
    }
    // A node whose steering the edit of eg-1 changes (one holding a pod it steers).
    let edited_plan = plan(&edited);
    let edited_node = edited_plan
        .node_plans()
        .into_iter()
        .find(|(n, np)| p.node_plan(n).as_ref() != Some(np) && !np.steer.is_empty())
        .map(|(n, _)| n)
        .expect("editing eg-1 changes some node's steering");

    let mut g = c.benchmark_group("planner");
    g.sample_size(10);
    g.bench_function("whole plan: validate+allocate+place+plan, 100k pods x 2k egresses x 5k nodes", |b| {
        b.iter(|| black_box(plan(&w).rules.len()))
    });
    g.bench_function("node_plan of one node from a finished plan", |b| {
        b.iter(|| black_box(p.node_plan("node-10").map(|n| n.steer.len())))
    });
    for (what, world, node) in [
        ("change: one pod added (whole plan + node-7's plan)", &added, "node-7"),
        ("change: one pod's label changed (whole plan + its node's plan)", &relabelled, moved_node.as_str()),
        ("change: one Egress's destinations edited (whole plan + one node's plan)", &edited, edited_node.as_str()),
    ] {
        g.bench_function(what, |b| b.iter(|| black_box(plan(world).node_plan(node).map(|n| n.steer.len()))));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
