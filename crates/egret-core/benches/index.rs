//! The index at the brief's scale: 100,000 pods x 2,000 Egresses x 5,000 nodes, a quarter of
//! the Egresses selecting across 200 namespaces each, so selectors overlap and the overlap rule
//! decides between them.
//!
//! Run: `cargo bench -p egret-core --bench index`. It prints:
//! - the initial sync: every kind's initial list fed into an empty index, then the control plan
//!   (validation, allocation, placement) and one node's plan;
//! - per kind of change (each sample a real change that alters some node's plan): the time the
//!   index takes to apply it, and the time to compute the plan of the pod's own node and of the
//!   gateway node serving it afterwards (what an agent does per change); p50/p99/max over the
//!   samples;
//! - the resident memory the index holds at that scale.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a bad fixture should stop it

use egret_core::event::{Change, Event, ObjectRef};
use egret_core::index::Index;
use egret_core::model::{Namespace, Node, Pod};
use egret_core::planner::ClusterConfig;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

// `EGRET_INDEX_BENCH_DIV=N` divides the world by N (a quick look in a debug build).
static DIV: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| {
    std::env::var("EGRET_INDEX_BENCH_DIV").ok().and_then(|v| v.parse().ok()).filter(|&d| d > 0).unwrap_or(1)
});
macro_rules! scaled {
    ($name:ident, $n:expr) => {
        #[allow(non_snake_case)]
        fn $name() -> usize {
            $n / *DIV
        }
    };
}
scaled!(PODS, 100_000);
scaled!(EGRESSES, 2_000);
scaled!(NAMESPACES, 2_000);
scaled!(NODES, 5_000);
const SAMPLES: usize = 200;

mod common;
use common::index_world::{World, egress, pool};
use common::node;

fn world() -> World {
    World::divided(*DIV)
}

fn pod(j: usize, app: usize) -> Pod {
    world().pod(j, app)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn pct(d: &mut [Duration], p: f64) -> Duration {
    d.sort();
    let i = ((d.len() as f64 - 1.0) * p).round() as usize;
    d[i.min(d.len() - 1)]
}

fn show(what: &str, d: &mut [Duration]) {
    let ms = |x: Duration| x.as_secs_f64() * 1e3;
    println!(
        "{what:<44} n={:<4} p50 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms",
        d.len(),
        ms(pct(d, 0.5)),
        ms(pct(d, 0.99)),
        ms(pct(d, 1.0))
    );
}

/// The gateway node of the Egress that decides most of a pod's traffic (its first steer rule).
fn gateway_of(ix: &mut Index, node: &str) -> Option<String> {
    let np = ix.node_plan(node)?;
    np.steer.iter().find_map(|s| match &s.action {
        egret_core::planner::SteerAction::Tunnel { gateway, .. } => Some(gateway.clone()),
        egret_core::planner::SteerAction::Local => Some(node.to_string()),
        egret_core::planner::SteerAction::Drop => None,
    })
}

struct Samples {
    apply: Vec<Duration>,
    origin: Vec<Duration>,
    gateway: Vec<Duration>,
}

impl Samples {
    fn new() -> Samples {
        Samples { apply: Vec::new(), origin: Vec::new(), gateway: Vec::new() }
    }

    /// Applies `change`, then computes the origin node's and the gateway's plans; checks that
    /// the origin's (or gateway's) plan really changed.
    fn take(&mut self, ix: &mut Index, change: Change, origin: &str, gateway: &str) {
        let before = (ix.node_plan(origin), ix.node_plan(gateway));
        let t = Instant::now();
        ix.apply(change);
        // Validation and placement run lazily on the first read: count them with the change.
        ix.settle();
        self.apply.push(t.elapsed());
        let t = Instant::now();
        let o = ix.node_plan(origin);
        self.origin.push(t.elapsed());
        let t = Instant::now();
        let g = ix.node_plan(gateway);
        self.gateway.push(t.elapsed());
        assert!(before != (o, g), "every sample must be a real change");
    }

    fn show(&mut self, what: &str) {
        show(&format!("{what}: index apply"), &mut self.apply);
        show(&format!("{what}: origin node plan"), &mut self.origin);
        show(&format!("{what}: gateway node plan"), &mut self.gateway);
    }
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: keep that cheap.
    if !std::env::args().any(|a| a == "--bench") {
        println!("index benchmark: run with `cargo bench -p egret-core --bench index`");
        return;
    }
    let rss0 = rss_kib();
    let nodes: Vec<Node> = (0..NODES()).map(node).collect();
    let namespaces: Vec<Namespace> = (0..NAMESPACES()).map(|i| world().namespace(i)).collect();
    // Every namespace holds pods of all five apps: 10,000 distinct (namespace, labels) groups.
    let pods: Vec<Pod> = (0..PODS()).map(|j| world().initial_pod(j)).collect();
    let egresses: Vec<_> = (0..EGRESSES()).map(|k| egress(k, &["a0", "a1", "a2"])).collect();
    let live: BTreeSet<String> = nodes.iter().map(|n| n.name.clone()).collect();

    let t = Instant::now();
    let mut phases = Vec::new();
    let mut lap = |what: &'static str, since: &mut Instant| {
        phases.push(format!("{what} {:.1} ms", since.elapsed().as_secs_f64() * 1e3));
        *since = Instant::now();
    };
    let mut since = Instant::now();
    let mut ix = Index::new(ClusterConfig::default(), Index::core_kinds());
    ix.set_live(&live);
    ix.apply(Change::Nodes(Event::Reset(nodes)));
    lap("nodes", &mut since);
    ix.apply(Change::Namespaces(Event::Reset(namespaces)));
    lap("namespaces", &mut since);
    ix.apply(Change::Pods(Event::Reset(pods)));
    lap("pods", &mut since);
    ix.apply(Change::Pools(Event::Reset(vec![pool()])));
    ix.apply(Change::Egresses(Event::Reset(egresses)));
    ix.apply(Change::ClusterPolicies(Event::Reset(Vec::new())));
    ix.apply(Change::Policies(Event::Reset(Vec::new())));
    lap("pools and Egresses", &mut since);
    let control = ix.control_plan();
    lap("control plan", &mut since);
    let first = ix.node_plan("node-1").unwrap();
    lap("node-1's plan", &mut since);
    let sync = t.elapsed();
    assert!(ix.is_synced() && !first.steer.is_empty());
    assert!(control.egresses.iter().all(|e| e.egress_node().is_some()));
    let rss1 = rss_kib();
    println!(
        "world: {} pods ({} groups), {} Egresses, {} namespaces, {} nodes",
        PODS(),
        ix.group_count(),
        EGRESSES(),
        NAMESPACES(),
        NODES()
    );
    println!(
        "initial sync (all lists + control plan + one node plan): {:.1} ms ({})",
        sync.as_secs_f64() * 1e3,
        phases.join(", ")
    );
    println!("resident memory of the process: {} MiB before, {} MiB after the initial sync", rss0 / 1024, rss1 / 1024);

    // Pod added, then deleted: a pod of app a0 (selected) in a rotating namespace and node.
    let mut add = Samples::new();
    let mut del = Samples::new();
    for s in 0..SAMPLES {
        // A namespace whose own Egress selects app a0 (every fourth has a cross-namespace one).
        let mut j = PODS() + s * 7919 % PODS();
        while (j % NAMESPACES()).is_multiple_of(4) {
            j += 1;
        }
        let mut p = pod(j, 0);
        p.name = format!("extra-{s}");
        let origin = p.node.clone().unwrap();
        add.take(&mut ix, Change::Pods(Event::Apply(p.clone())), &origin, &origin);
        let gw = gateway_of(&mut ix, &origin).unwrap_or_else(|| origin.clone());
        del.take(&mut ix, Change::Pods(Event::Delete(ObjectRef::namespaced(&p.namespace, &p.name))), &origin, &gw);
    }
    add.show("pod add");
    del.show("pod delete");

    // Label change: a pod flips between app a0 (selected) and a3 (selected only by the
    // cross-namespace Egresses of some tiers).
    let mut relabel = Samples::new();
    let mut relabeled = BTreeSet::new();
    for s in 0..SAMPLES {
        // A selected pod (app a0..a2 in a namespace with its own Egress) becomes app a3.
        let mut j = s * 4793 % PODS();
        while (j % NAMESPACES()).is_multiple_of(4) || j / NAMESPACES() % 5 > 2 || relabeled.contains(&j) {
            j = (j + 1) % PODS();
        }
        relabeled.insert(j);
        let p = pod(j, 3);
        let origin = p.node.clone().unwrap();
        let gw = gateway_of(&mut ix, &origin).unwrap_or_else(|| origin.clone());
        relabel.take(&mut ix, Change::Pods(Event::Apply(p)), &origin, &gw);
    }
    relabel.show("pod label change");

    // Egress edit: a per-namespace Egress stops (or starts again) selecting app a2.
    let mut edit = Samples::new();
    let mut narrowed = BTreeSet::new();
    for s in 0..SAMPLES {
        let k = (1 + 4 * (s % (EGRESSES() / 4)) + s % 3).min(EGRESSES() - 1);
        let apps: &[&str] = if narrowed.insert(k) {
            &["a0", "a1"]
        } else {
            narrowed.remove(&k);
            &["a0", "a1", "a2"]
        };
        // Pod k + NAMESPACES * 2 is in ns-k, of app a2.
        let j = k + NAMESPACES() * 2;
        let origin = format!("node-{}", j % NODES());
        let gw = ix
            .control_plan()
            .egresses
            .iter()
            .find(|e| e.name == format!("eg-{k}"))
            .and_then(|e| e.egress_node().map(String::from))
            .unwrap();
        edit.take(&mut ix, Change::Egresses(Event::Apply(egress(k, apps))), &origin, &gw);
    }
    edit.show("Egress edit");
    println!("resident memory at the end: {} MiB", rss_kib() / 1024);
}
