//! The planner at the brief's scale: 100,000 pods x 2,000 Egresses x 5,000 nodes.
//!
//! Run: `cargo bench -p egret-core --bench planner`. Measured: validation, allocation, placement
//! and the whole plan, then the split into per-node plans.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a bad fixture should stop it

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

fn labels(kv: &[(&str, String)]) -> BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

struct World {
    pools: Vec<api::ExternalIPPool>,
    egresses: Vec<api::Egress>,
    nodes: Vec<Node>,
    namespaces: Vec<Namespace>,
    pods: Vec<Pod>,
    live: BTreeSet<String>,
}

fn world() -> World {
    let nodes: Vec<Node> = (0..NODES)
        .map(|i| {
            let ip = IpAddr::V4(Ipv4Addr::new(10, 10 + (i / 65536) as u8, (i / 256 % 256) as u8, (i % 256) as u8));
            let mut l = labels(&[("kubernetes.io/hostname", format!("node-{i}"))]);
            if i % 10 == 0 {
                l.insert("network-role".into(), "egress-gateway".into());
            }
            Node {
                name: format!("node-{i}"),
                labels: l,
                internal_ips: vec![ip],
                addresses: vec![ip],
                pod_cidrs: vec![format!("10.{}.{}.0/24", 128 + i / 256, i % 256).parse().unwrap()],
            }
        })
        .collect();
    let namespaces: Vec<Namespace> = (0..EGRESSES)
        .map(|i| Namespace { name: format!("ns-{i}"), labels: labels(&[("team", format!("t{i}"))]) })
        .collect();
    let pods: Vec<Pod> = (0..PODS)
        .map(|j| {
            let node = j % NODES;
            Pod {
                namespace: format!("ns-{}", j % EGRESSES),
                name: format!("pod-{j}"),
                labels: labels(&[("app", format!("a{}", j % 5))]),
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
        },
    );
    let egresses = (0..EGRESSES)
        .map(|k| {
            let mut spec = api::EgressSpec {
                applied_to: api::AppliedTo {
                    namespace_selector: Some(LabelSelector {
                        match_labels: Some(labels(&[("team", format!("t{k}"))])),
                        match_expressions: None,
                    }),
                    pod_selector: Some(LabelSelector {
                        match_labels: None,
                        match_expressions: Some(vec![LabelSelectorRequirement {
                            key: "app".into(),
                            operator: "In".into(),
                            values: Some(vec!["a0".into(), "a1".into(), "a2".into()]),
                        }]),
                    }),
                    node_selector: None,
                },
                external_ip_pool: Some("pool".into()),
                ..Default::default()
            };
            // A quarter of the Egresses narrow their destinations, so partitions overlap.
            if k % 4 == 0 {
                spec.destination_cidrs = vec![format!("203.0.{}.0/24", k % 256), "198.51.100.0/24".into()];
            }
            api::Egress::new(&format!("eg-{k}"), spec)
        })
        .collect();
    let live = nodes.iter().map(|n| n.name.clone()).collect();
    World { pools: vec![pool], egresses, nodes, namespaces, pods, live }
}

fn bench(c: &mut Criterion) {
    let w = world();
    let config = ClusterConfig::default();
    let mut g = c.benchmark_group("planner");
    g.sample_size(10);
    g.bench_function("validate+allocate+plan 100k pods x 2k egresses x 5k nodes", |b| {
        b.iter(|| {
            let (_, p) = plan_objects(&w.pools, &w.egresses, &w.nodes, &w.namespaces, &w.pods, &w.live, &config);
            black_box(p.rules.len())
        })
    });
    let (_, p) = plan_objects(&w.pools, &w.egresses, &w.nodes, &w.namespaces, &w.pods, &w.live, &config);
    assert!(p.rules.len() >= PODS / 2, "the benchmark world steers most pods");
    g.bench_function("node_plan of one node (what an agent computes)", |b| {
        b.iter(|| black_box(p.node_plan("node-10").map(|n| n.steer.len())))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
