//! The index's memory at the benchmark's scale (100,000 pods x 2,000 Egresses x 5,000 nodes,
//! the world of `benches/index.rs`): what an agent holds, since agents watch every pod.
//!
//! Run: `cargo run --release -p egret-core --example index_memory` (`EGRET_INDEX_BENCH_DIV=N`
//! divides the world by N). Pods are fed one at a time (after an empty initial list), so the
//! generated world is never held in full beside the index. It prints the heap bytes the index
//! holds (counted by the allocator: exact) and the process's resident memory (`VmRSS`) before
//! and after, both in total and per pod.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a measurement: a bad fixture should stop it

#[path = "../benches/common/mod.rs"]
mod common;

use common::index_world::{World, egress, pool};
use egret_core::event::{Change, Event};
use egret_core::index::Index;
use egret_core::planner::ClusterConfig;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// Counting needs a global allocator, whose trait is unsafe. SAFETY: every call is forwarded to
// the system allocator unchanged; only a counter is kept.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn rss_kib() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn main() {
    let div = std::env::var("EGRET_INDEX_BENCH_DIV").ok().and_then(|v| v.parse().ok()).filter(|&d| d > 0).unwrap_or(1);
    let w = World::divided(div);
    let (heap0, rss0) = (LIVE.load(Ordering::Relaxed), rss_kib());
    let mut ix = Index::new(ClusterConfig::default(), Index::core_kinds());
    ix.set_live(&(0..w.nodes).map(|i| format!("node-{i}")).collect::<BTreeSet<_>>());
    ix.apply(Change::Nodes(Event::Reset((0..w.nodes).map(common::node).collect())));
    ix.apply(Change::Namespaces(Event::Reset((0..w.namespaces).map(|i| w.namespace(i)).collect())));
    ix.apply(Change::Pools(Event::Reset(vec![pool()])));
    ix.apply(Change::Egresses(Event::Reset((0..w.egresses).map(|k| egress(k, &["a0", "a1", "a2"])).collect())));
    ix.apply(Change::ClusterPolicies(Event::Reset(Vec::new())));
    ix.apply(Change::Policies(Event::Reset(Vec::new())));
    ix.apply(Change::Pods(Event::Reset(Vec::new())));
    let (heap1, rss1) = (LIVE.load(Ordering::Relaxed), rss_kib());
    for j in 0..w.pods {
        ix.apply(Change::Pods(Event::Apply(w.initial_pod(j))));
    }
    ix.settle();
    // What an agent computes once synced: its node's plan (kept, as the agent keeps it).
    let plan = ix.node_plan("node-1").expect("node-1 exists");
    assert!(ix.is_synced() && !plan.steer.is_empty());
    let (heap2, rss2) = (LIVE.load(Ordering::Relaxed), rss_kib());
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    println!(
        "world: {} pods ({} groups), {} Egresses, {} namespaces, {} nodes",
        w.pods,
        ix.group_count(),
        w.egresses,
        w.namespaces,
        w.nodes
    );
    println!(
        "index heap: {:.1} MiB without pods, {:.1} MiB with them: {:.0} bytes per pod",
        mib(heap1 - heap0),
        mib(heap2 - heap0),
        (heap2 - heap1) as f64 / w.pods as f64
    );
    println!(
        "resident (VmRSS): {:.1} MiB at start, {:.1} MiB without pods, {:.1} MiB after the initial sync: {:.0} bytes per pod",
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        rss2 as f64 / 1024.0,
        (rss2 - rss1) as f64 * 1024.0 / w.pods as f64
    );
    drop(plan);
    drop(ix);
}
