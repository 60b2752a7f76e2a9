//! Lab benchmarks.
//!
//! `egret lab bench latency`: from a store change to "programmed" on every node. The bench
//! first puts one pod on every node (namespace `egret-bench`), then applies [`latency`]'s
//! Egress selecting exactly those pods again and again, alternating its destinations, so
//! that every change changes the plan, and so the datapath, of every node. Before counting a
//! sample it checks with the planner that the node's plan really changed (and stops if not).
//! A node's latency is the time from the store stamp of the change to the moment its agent
//! reports having programmed a state at least that new (`programmed_at_ms`).
//!
//! `egret lab bench failover`: the gap in a pod's traffic when its gateway node dies.
//! A probe inside a selected pod opens a new short TCP connection to the outside whoami server
//! every 15 ms (each attempt on its own thread, so a hanging attempt never delays the next)
//! and records when it started and which source address the server saw. Each trial kills the
//! gateway with the same power loss as `lab kill-node`, measures the time from the kill to the
//! start of the first attempt that succeeds again with the egress IP, restores the node, and
//! waits for traffic to be steady again.

use super::state::LabState;
use super::{percentile, power_off, power_on, reports};
use anyhow::{Context, bail};
use egret_core::planner::{ClusterConfig, NodePlan};
use egret_netns::{Netns, WhoamiConn};
use egret_store::{Store, read_paths};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PERIOD: Duration = Duration::from_millis(15);
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);

/// One probe attempt: when it started, and what the server saw (None: failed).
type Sample = (Instant, Option<IpAddr>);

struct Probe {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Probe {
    fn start(pod: &Netns, to: SocketAddr) -> anyhow::Result<Probe> {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (stop.clone(), samples.clone());
        let ns = Netns::attach(pod.name())?;
        // Threads spawned from a thread inside the pod's namespace live there too.
        let thread = ns.spawn_thread(move || {
            let mut next = Instant::now();
            while !s.load(Ordering::Relaxed) {
                let v = v.clone();
                let started = Instant::now();
                std::thread::spawn(move || {
                    let seen = std::net::TcpStream::connect_timeout(&to, ATTEMPT_TIMEOUT).ok().and_then(|stream| {
                        stream.set_read_timeout(Some(ATTEMPT_TIMEOUT)).ok()?;
                        let mut line = String::new();
                        std::io::BufRead::read_line(&mut std::io::BufReader::new(stream), &mut line).ok()?;
                        line.trim().parse().ok()
                    });
                    if let Ok(mut g) = v.lock() {
                        g.push((started, seen));
                    }
                });
                next += PERIOD;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })?;
        Ok(Probe { stop, samples, thread: Some(thread) })
    }

    /// Attempts started at or after `since`, by start time.
    fn since(&self, since: Instant) -> Vec<Sample> {
        let mut v: Vec<Sample> =
            self.samples.lock().map(|g| g.iter().filter(|(t, _)| *t >= since).copied().collect()).unwrap_or_default();
        v.sort_by_key(|(t, _)| *t);
        v
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits until every attempt started in the last `window` saw `ip` (and there were some).
fn wait_steady(probe: &Probe, ip: IpAddr, window: Duration, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        std::thread::sleep(window / 2);
        let now = Instant::now();
        // Attempts finish within ATTEMPT_TIMEOUT; those of the last window+timeout have reported.
        let recent = probe.since(now - window - ATTEMPT_TIMEOUT);
        if recent.len() >= 3 && recent.iter().all(|(_, s)| *s == Some(ip)) {
            return Ok(());
        }
        if now > deadline {
            bail!("traffic from the probe pod did not settle on {ip} within {} s", limit.as_secs());
        }
    }
}

fn egress_status(st: &LabState, egress: &str) -> anyhow::Result<(IpAddr, String)> {
    let (objs, _) = egret_store::Store::open(st.store())?.load();
    let e = objs
        .egresses
        .iter()
        .find(|d| d.object.metadata.name.as_deref() == Some(egress))
        .with_context(|| format!("no Egress {egress:?} in the lab (apply one first, e.g. examples/seed-002-ha)"))?;
    let status = e.object.status.clone().unwrap_or_default();
    match (status.egress_ip.and_then(|i| i.parse().ok()), status.egress_node) {
        (Some(ip), Some(node)) => Ok((ip, node)),
        _ => bail!("Egress {egress:?} has no egress IP or node yet"),
    }
}

/// Runs the failover benchmark.
pub fn failover(name: &str, trials: usize, egress: &str) -> anyhow::Result<ExitCode> {
    super::need_root()?;
    let mut st = LabState::load(name)?;
    let to = SocketAddr::from((egret_netns::DB_A, egret_netns::WHOAMI_PORT));
    let mut gaps = Vec::new();
    for trial in 1..=trials {
        let deadline = Instant::now() + Duration::from_secs(30);
        let (ip, gateway) = loop {
            if let Ok(v) = egress_status(&st, egress) {
                break v;
            }
            if Instant::now() > deadline {
                return egress_status(&st, egress).map(|_| ExitCode::FAILURE);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // A probe pod steered by this Egress on another node than the gateway.
        let pod = st
            .pods
            .iter()
            .filter(|(_, p)| p.node != gateway)
            .find(|(_, p)| {
                Netns::attach(&p.netns)
                    .ok()
                    .and_then(|ns| WhoamiConn::open(&ns, to, ATTEMPT_TIMEOUT).ok())
                    .is_some_and(|c| c.seen == ip)
            })
            .map(|(k, p)| (k.clone(), p.netns.clone()))
            .with_context(|| format!("no pod outside {gateway} leaves as {ip} through Egress {egress:?}"))?;
        let probe = Probe::start(&Netns::attach(&pod.1)?, to)?;
        wait_steady(&probe, ip, Duration::from_millis(300), Duration::from_secs(10))?;
        power_off(&mut st, &gateway)?;
        // From the moment the link is down: an attempt started earlier could still succeed
        // through the old gateway and make the gap look shorter.
        let killed_at = Instant::now();
        let gap = loop {
            std::thread::sleep(Duration::from_millis(20));
            let now = Instant::now();
            if let Some((t, _)) = probe.since(killed_at).into_iter().find(|(_, s)| *s == Some(ip)) {
                break t - killed_at;
            }
            if now - killed_at > Duration::from_secs(20) {
                power_on(&mut st, &gateway)?;
                bail!("trial {trial}: {} never reached {ip} again within 20 s of killing {gateway}", pod.0);
            }
        };
        // The new holder: a node other than the dead one that reports the IP (reports are
        // written every few hundred milliseconds).
        let mut new_gateway = "?".to_string();
        let _ = super::wait_until(Duration::from_secs(2), || {
            if let Some((n, _)) = reports(&st).into_iter().find(|(n, r)| *n != gateway && r.hosted.contains(&ip)) {
                new_gateway = n;
                return Ok(true);
            }
            Ok(false)
        });
        outln!(
            "trial {trial:>2}: killed {gateway}, {} back on {ip} via {new_gateway} after {} ms",
            pod.0,
            gap.as_millis()
        );
        gaps.push(gap.as_millis() as u64);
        power_on(&mut st, &gateway)?;
        wait_steady(&probe, ip, Duration::from_millis(500), Duration::from_secs(20))?;
    }
    gaps.sort_unstable();
    outln!(
        "failover gap over {} trials: p50 {} ms, p99 {} ms, max {} ms",
        gaps.len(),
        percentile(&gaps, 50.0),
        percentile(&gaps, 99.0),
        gaps.last().copied().unwrap_or(0)
    );
    Ok(ExitCode::SUCCESS)
}

/// The namespace of the latency bench's pods and its label.
const BENCH_NS: &str = "egret-bench";

/// The bench's Namespace and one pod per live node.
fn bench_pods_yaml(st: &LabState) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {BENCH_NS}\n  labels: {{kubernetes.io/metadata.name: {BENCH_NS}, egret.dev/bench: latency}}\n"
    );
    for node in st.nodes.keys().filter(|n| !st.killed.contains(*n)) {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  namespace: {BENCH_NS}\n  name: bench-{node}\n  labels: {{app: bench-latency}}\nspec:\n  nodeName: {node}\n  containers: [{{name: main, image: egret-lab/none}}]\n"
        ));
    }
    y
}

/// The bench's Egress: the bench pods only, leaving through node-1's own address, to one of
/// two destination sets.
fn bench_egress_yaml(variant: usize) -> String {
    let dest = if variant.is_multiple_of(2) { "192.0.2.0/24" } else { "192.0.2.0/25" };
    format!(
        "apiVersion: egret.dev/v1alpha1\nkind: Egress\nmetadata: {{name: bench-latency}}\nspec:\n  appliedTo:\n    namespaceSelector: {{matchLabels: {{egret.dev/bench: latency}}}}\n    podSelector: {{matchLabels: {{app: bench-latency}}}}\n  egressIP: {}\n  destinationCIDRs: [{dest}]\n",
        egret_netns::node_ip(1)
    )
}

/// Every live node's plan as the store holds it now (what each agent computes).
fn node_plans(st: &LabState, live: &BTreeSet<String>) -> anyhow::Result<BTreeMap<String, NodePlan>> {
    let (objs, errs) = Store::open(st.store())?.load();
    if let Some(e) = errs.first() {
        bail!("the lab store has a bad document: {e}");
    }
    let (_, plan) = objs.plan(live, &ClusterConfig::default());
    Ok(live.iter().filter_map(|n| Some((n.clone(), plan.node_plan(n)?))).collect())
}

/// p50, p99 and max of `v` (sorted here).
fn summary(v: &mut [u64]) -> String {
    v.sort_unstable();
    format!(
        "{:>3} samples: p50 {:>3} ms, p99 {:>3} ms, max {:>3} ms",
        v.len(),
        percentile(v, 50.0),
        percentile(v, 99.0),
        v.last().copied().unwrap_or(0)
    )
}

/// Runs the latency benchmark: `trials` changes, each one a sample on every live node.
pub fn latency(name: &str, trials: usize) -> anyhow::Result<ExitCode> {
    super::need_root()?;
    if trials == 0 {
        bail!("--trials must be at least 1");
    }
    let st = LabState::load(name)?;
    let dir = super::tempfile_dir()?;
    let pods = dir.join("bench-pods.yaml");
    let egress = dir.join("bench-egress.yaml");
    std::fs::write(&pods, bench_pods_yaml(&st))?;
    outln!("adding a bench pod to every node (namespace {BENCH_NS})");
    // A rejected apply prints why; the trials then stop at the first node without a pod.
    let result = super::apply(name, std::slice::from_ref(&pods)).and_then(|_| latency_trials(name, trials, &egress));
    // Remove the Egress and the pods even when a trial failed.
    let mut cleanup = Vec::new();
    for f in [&egress, &pods] {
        if f.exists()
            && let Err(e) = super::delete(name, std::slice::from_ref(f))
        {
            cleanup.push(format!("{e:#}"));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let code = result?;
    if !cleanup.is_empty() {
        bail!("removing the bench objects: {}", cleanup.join("; "));
    }
    Ok(code)
}

fn latency_trials(name: &str, trials: usize, file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let st = LabState::load(name)?;
    let live: BTreeSet<String> = st.nodes.keys().filter(|n| !st.killed.contains(*n)).cloned().collect();
    let missing: Vec<&String> = live.iter().filter(|n| !st.pods.values().any(|p| p.node == **n)).collect();
    if !missing.is_empty() {
        bail!("nodes {missing:?} have no pod; the bench pods were not added");
    }
    let mut before = node_plans(&st, &live)?;
    let mut per_node: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    // Trial 0 creates the Egress (or resets a leftover one): a change, but not a sample.
    for trial in 0..=trials {
        std::fs::write(file, bench_egress_yaml(trial))?;
        let (objs, errs) = read_paths(std::slice::from_ref(&file.to_path_buf()));
        if let Some(e) = errs.first() {
            bail!("{e}");
        }
        let applied = Store::open(st.store())?.apply(objs)?;
        let lat = super::wait_programmed(&st, applied.stamp_ms, Duration::from_secs(15))?;
        let after = node_plans(&st, &live)?;
        if trial > 0 {
            for node in &live {
                if before.get(node) == after.get(node) {
                    bail!("change {trial}: {node}'s plan did not change, so its sample would not be a real change");
                }
                let ms = lat.get(node).copied().with_context(|| format!("no latency for {node}"))?;
                per_node.entry(node.clone()).or_default().push(ms);
            }
        }
        before = after;
    }
    outln!("store change -> datapath programmed, {trials} changes, each a real change of every node's plan:");
    let mut all = Vec::new();
    for (node, v) in &mut per_node {
        all.extend(v.iter().copied());
        outln!("  {node:<8} {}", summary(v));
    }
    outln!("  {:<8} {}", "all", summary(&mut all));
    Ok(ExitCode::SUCCESS)
}
