//! `egret lab bench scrape`: what a Prometheus scrape of an agent costs when the node carries
//! many Egresses, and whether scraping slows the programming of a change.
//!
//! Setup: one bench pod on every live node (namespace `egret-bench`, as the latency bench), an
//! ExternalIPPool on the gateway nodes and `--egresses` Egresses all selecting the bench pods,
//! each toward a /25 of its own in 198.18.0.0/15 (so every node steers all of them and holds
//! one traffic counter per Egress; the gateways also their connection counters, SNAT entries
//! and hosted IPs).
//!
//! - **Scrape cost**: 10 s after every node programmed the Egresses, `--samples` scrapes of every agent's
//!   `/metrics` (the nodes in turn for each sample), each a new HTTP connection from inside the
//!   node's namespace to the agent (what Prometheus does), timed from the connect to the last
//!   byte read; the agent reads every counter over netlink and encodes the whole exposition for
//!   each. Every agent of the lab runs on the same cores, so the others' idle work shows too.
//! - **Disturbance**: `--trials` changes, each flipping the destination of one Egress (a real
//!   change of every node's plan, checked with the planner), timed from the store stamp to
//!   "programmed" on every node. Trials alternate between quiet and scraped: during a scraped
//!   trial one thread per node scrapes its agent every `--scrape-interval-ms` (0: back to back,
//!   without pause), from before the change until every node has programmed it. Prometheus
//!   scrapes every 15 s or so; the lab's every second.

use super::state::LabState;
use super::{lab_config, percentile, wait_programmed};
use anyhow::{Context, bail};
use egret_netns::Netns;
use egret_store::{Store, read_paths};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long the lab is left alone after programming the Egresses, before scrapes are timed.
const SETTLE: Duration = Duration::from_secs(10);

/// The pool the bench's Egresses take their IPs from (on the gateway nodes).
const POOL: &str = "bench-scrape";

/// The destination of Egress `k`: the `k`-th /25 of 198.18.0.0/15 (1,024 of them); `alt`
/// halves it (a different plan, same Egress).
fn destination(k: usize, alt: bool) -> String {
    let base = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + (k as u32) * 128;
    format!("{}/{}", std::net::Ipv4Addr::from(base), if alt { 26 } else { 25 })
}

fn egress_yaml(k: usize, alt: bool) -> String {
    format!(
        "apiVersion: egret.dev/v1alpha1\nkind: Egress\nmetadata: {{name: bench-scrape-{k:04}}}\nspec:\n  appliedTo:\n    namespaceSelector: {{matchLabels: {{egret.dev/bench: latency}}}}\n    podSelector: {{matchLabels: {{app: bench-latency}}}}\n  externalIPPool: {POOL}\n  destinationCIDRs: [{}]\n",
        destination(k, alt)
    )
}

/// The pool and `n` Egresses, one YAML stream.
fn objects_yaml(n: usize) -> String {
    let mut y = format!(
        "apiVersion: egret.dev/v1alpha1\nkind: ExternalIPPool\nmetadata: {{name: {POOL}}}\nspec:\n  ipRanges: [{{cidr: 100.64.0.0/21}}]\n  nodeSelector: {{matchLabels: {{network-role: egress-gateway}}}}\n"
    );
    for k in 0..n {
        y.push_str("---\n");
        y.push_str(&egress_yaml(k, false));
    }
    y
}

/// Applies the objects of `file` to the lab's store without printing each one; returns the
/// per-node latency to programmed.
fn apply_quietly(st: &LabState, file: &Path, limit: Duration) -> anyhow::Result<BTreeMap<String, u64>> {
    let (objs, errs) = read_paths(&[file.to_path_buf()]);
    if let Some(e) = errs.first() {
        bail!("{e}");
    }
    let applied = Store::open(st.store())?.apply_with(objs, &lab_config())?;
    wait_programmed(st, applied.stamp_ms, limit)
}

/// One scrape of the agent serving on 127.0.0.1:9090 in the current namespace: the whole
/// response (status line, headers, exposition).
fn scrape_here() -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect("127.0.0.1:9090")?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    if !out.starts_with("HTTP/1.0 200") && !out.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("scrape answered {}", out.lines().next().unwrap_or(""))));
    }
    Ok(out)
}

/// `p50 / p99 / max` of microsecond samples, in ms.
fn summary_us(v: &mut [u64]) -> String {
    v.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    format!(
        "{:>3} samples: p50 {:>7.2} ms, p99 {:>7.2} ms, max {:>7.2} ms",
        v.len(),
        ms(percentile(v, 50.0)),
        ms(percentile(v, 99.0)),
        ms(v.last().copied().unwrap_or(0))
    )
}

/// Scrapers running in every node's namespace, back to back, until dropped.
struct Scrapers {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Scrapers {
    fn start(nodes: &[(String, Netns)], every: Duration) -> anyhow::Result<Scrapers> {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();
        for (_, ns) in nodes {
            let (stop, done) = (stop.clone(), done.clone());
            threads.push(ns.spawn_thread(move || {
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    if scrape_here().is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    next += every;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            })?);
        }
        Ok(Scrapers { stop, done, threads })
    }
}

impl Drop for Scrapers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Runs the bench in lab `name`.
pub fn run(name: &str, egresses: usize, samples: usize, trials: usize, every: Duration) -> anyhow::Result<ExitCode> {
    super::need_root()?;
    if !(1..=1024).contains(&egresses) {
        bail!("--egresses must be 1..=1024 (one /25 of 198.18.0.0/15 each)");
    }
    if samples == 0 || trials < 2 {
        bail!("--samples must be at least 1 and --trials at least 2 (half of them scraped)");
    }
    let st = LabState::load(name)?;
    let dir = super::tempfile_dir()?;
    let pods = dir.join("bench-pods.yaml");
    let objects = dir.join("bench-scrape.yaml");
    std::fs::write(&pods, super::bench::bench_pods_yaml(&st))?;
    std::fs::write(&objects, objects_yaml(egresses))?;
    outln!("adding a bench pod to every node (namespace egret-bench)");
    let result = super::apply(name, std::slice::from_ref(&pods))
        .and_then(|_| measure(name, (egresses, samples, trials, every), &objects, &dir));
    // Remove the Egresses, the pool and the pods even when the bench failed.
    let mut cleanup = Vec::new();
    for f in [&objects, &pods] {
        let (objs, errs) = read_paths(std::slice::from_ref(f));
        let gone = match errs.first() {
            Some(e) => Err(anyhow::anyhow!("{e}")),
            None if f == &objects => LabState::load(name)
                .and_then(|st| Ok(Store::open(st.store())?.delete(&objs)?))
                .map(|_| ExitCode::SUCCESS),
            None => super::delete(name, std::slice::from_ref(f)),
        };
        if let Err(e) = gone {
            cleanup.push(format!("{e:#}"));
        }
    }
    super::bench::finish(&dir, result, &cleanup)
}

/// `(egresses, samples, trials, scrape interval)`.
type Sizes = (usize, usize, usize, Duration);

fn measure(name: &str, sizes: Sizes, objects: &Path, dir: &Path) -> anyhow::Result<ExitCode> {
    let (egresses, samples, trials, every) = sizes;
    let st = LabState::load(name)?;
    let live: BTreeSet<String> = st.nodes.keys().filter(|n| !st.killed.contains(*n)).cloned().collect();
    outln!("applying a pool and {egresses} Egresses selecting the bench pods");
    let t = Instant::now();
    let lat = apply_quietly(&st, objects, Duration::from_secs(300))?;
    outln!(
        "programmed on {} nodes in {:.1} s (slowest node {} ms after the store change)",
        lat.len(),
        t.elapsed().as_secs_f64(),
        lat.values().max().copied().unwrap_or(0)
    );
    let nodes: Vec<(String, Netns)> =
        live.iter().map(|n| Ok((n.clone(), Netns::attach(&st.node(n)?.netns)?))).collect::<anyhow::Result<_>>()?;

    // Scrape cost: every node in turn for each sample, so they all share the same moments of
    // the machine, once the work that followed the Egresses' arrival (status, announcements)
    // is over. The agents' periodic verification (every 10 s) goes on: that is steady state.
    std::thread::sleep(SETTLE);
    outln!("scrape of /metrics (new connection each, connect to last byte), {samples} per node, nodes in turn:");
    let mut us: Vec<Vec<u64>> = vec![Vec::with_capacity(samples); nodes.len()];
    let mut last = vec![String::new(); nodes.len()];
    for _ in 0..samples {
        for (k, (node, ns)) in nodes.iter().enumerate() {
            let t = Instant::now();
            last[k] = ns.run(scrape_here)?.with_context(|| format!("scraping {node}'s agent"))?;
            us[k].push(t.elapsed().as_micros() as u64);
        }
    }
    let mut all = Vec::new();
    for (k, (node, _)) in nodes.iter().enumerate() {
        let text = &last[k];
        let series = text.lines().filter(|l| l.starts_with("egret_egress_packets_total{")).count();
        let gateway = text.lines().filter(|l| l.starts_with("egret_egress_connections_total{")).count();
        if series < egresses {
            bail!("{node}'s agent exports {series} Egress series, not the {egresses} the bench set up");
        }
        all.extend(us[k].iter().copied());
        outln!(
            "  {node:<8} {}  ({} KiB, {series} Egress series, {gateway} gateway connection series)",
            summary_us(&mut us[k]),
            text.len() / 1024
        );
    }
    outln!("  {:<8} {}", "all", summary_us(&mut all));

    // Disturbance: the same change, quiet and scraped alternately.
    let flip = dir.join("bench-scrape-flip.yaml");
    let mut before = super::bench::node_plans(&st, &live)?;
    let (mut quiet, mut scraped) = (Vec::new(), Vec::new());
    let mut scrapes = 0usize;
    let mut scraped_ms = 0u128;
    for trial in 0..trials {
        std::fs::write(&flip, egress_yaml(0, trial % 2 == 0))?;
        let busy = trial % 2 == 1;
        let scrapers = if busy { Some(Scrapers::start(&nodes, every)?) } else { None };
        // Let the scrapers reach their pace before the change.
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        let lat = apply_quietly(&st, &flip, Duration::from_secs(30))?;
        if let Some(s) = scrapers {
            scrapes += s.done.load(Ordering::Relaxed);
            scraped_ms += t.elapsed().as_millis() + 200;
        }
        let after = super::bench::node_plans(&st, &live)?;
        for node in &live {
            if before.get(node) == after.get(node) {
                bail!("change {trial}: {node}'s plan did not change, so its sample would not be a real change");
            }
        }
        before = after;
        (if busy { &mut scraped } else { &mut quiet }).extend(lat.into_values().map(|ms| ms * 1000));
    }
    outln!(
        "store change -> programmed on every node ({trials} changes of one Egress, alternating; scraped: every agent every {} ms):",
        every.as_millis()
    );
    outln!("  quiet    {}", summary_us(&mut quiet));
    outln!("  scraped  {}", summary_us(&mut scraped));
    outln!(
        "  while scraped: {scrapes} scrapes completed over {:.1} s ({:.0}/s across {} agents)",
        scraped_ms as f64 / 1000.0,
        scrapes as f64 * 1000.0 / scraped_ms.max(1) as f64,
        nodes.len()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_egress_has_a_destination_of_its_own() {
        let d: BTreeSet<String> = (0..1024).map(|k| destination(k, false)).collect();
        assert_eq!(d.len(), 1024);
        assert_eq!(destination(0, false), "198.18.0.0/25");
        assert_eq!(destination(1023, false), "198.19.255.128/25");
        assert_eq!(destination(3, true), "198.18.1.128/26");
        let (objs, errs) = egret_store::read_str(Path::new("bench.yaml"), &objects_yaml(3));
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!((objs.pools.len(), objs.egresses.len()), (1, 3));
    }
}
