//! What a metrics scrape of an agent with 1,000 Egresses costs in reading its counters: the
//! named counters of table `inet egret` read over netlink (`read_counters`, what the agent does)
//! side by side with spawning `nft -j list counters table inet egret` (what it did before), in
//! a network namespace of its own holding 2,000 counters (1,000 Egresses and 1,000 policy
//! decisions), alternating the two, 200 samples each; p50/p99/max of each. Needs root (it says
//! so and stops otherwise).
//!
//! Run: `cargo bench -p egret-datapath --bench counters`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a bad fixture should stop it

use std::process::Command;
use std::time::{Duration, Instant};

const SAMPLES: usize = 200;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p / 100.0).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn line(what: &str, mut d: Vec<Duration>) {
    d.sort();
    println!(
        "{what:<28} p50 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms  ({} samples)",
        pct(&d, 50.0).as_secs_f64() * 1e3,
        pct(&d, 99.0).as_secs_f64() * 1e3,
        d.last().unwrap().as_secs_f64() * 1e3,
        d.len()
    );
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("counters bench: skipped, it needs root (a network namespace and nftables)");
        return;
    }
    let ns = egret_netns::Netns::create(&egret_netns::unique_prefix("bench-counters")).unwrap();
    let mut ruleset = format!("table inet {} {{\n", egret_datapath::TABLE);
    for i in 0..1000u64 {
        ruleset.push_str(&format!("  counter egress-{i:04} {{ packets {i} bytes {} }}\n", i * 1500));
        ruleset.push_str(&format!("  counter d_{i:016x} {{ packets {i} bytes {} }}\n", i * 60));
    }
    ruleset.push_str("}\n");
    ns.exec_stdin("nft", &["-f", "-"], &ruleset).unwrap();
    let (netlink, nft) = ns
        .run(|| {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for _ in 0..SAMPLES {
                let t = Instant::now();
                let c = egret_datapath::read_counters().unwrap();
                a.push(t.elapsed());
                assert_eq!(c.len(), 2000);
                let t = Instant::now();
                let out = Command::new("nft")
                    .args(["-j", "list", "counters", "table", "inet", egret_datapath::TABLE])
                    .output()
                    .unwrap();
                b.push(t.elapsed());
                assert!(out.status.success());
            }
            (a, b)
        })
        .unwrap();
    println!("reading 2,000 named counters (1,000 Egresses + 1,000 policy decisions):");
    line("netlink dump (read_counters)", netlink);
    line("nft -j list counters", nft);
}
