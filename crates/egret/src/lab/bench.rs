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
//! (db-a, over the egress IP's family) every 15 ms (each attempt on its own thread, so a hanging attempt never delays the next)
//! and records when it started and which source address the server saw. Each trial:
//!
//! - **failover**: kills the gateway with the same power loss as `lab kill-node` (agent killed,
//!   then link down) and measures from the moment the agent is killed to the start of the first
//!   attempt that succeeds with the egress IP and started after the link went down (an attempt
//!   started before could still leave through the old gateway, whose kernel state outlives its
//!   agent);
//! - **failback**: brings the node back (link up, agent started; it becomes eligible once settled
//!   and in sync and, placed first by rendezvous hashing, takes its IPs back) and measures the
//!   longest outage of the probe meanwhile: from the start of the first attempt of a run of
//!   failed ones (or ones that left with another source) to the start of the next good attempt;
//!   zero when no attempt failed.

use super::state::LabState;
use super::{percentile, power_off, power_on, reports};
use anyhow::{Context, bail};
use egret_core::planner::NodePlan;
use egret_netns::{Netns, WhoamiConn};
use egret_store::{Store, read_paths};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PERIOD: Duration = Duration::from_millis(15);
pub(super) const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);

/// One probe attempt: when it started, and what the server saw (None: failed).
type Sample = (Instant, Option<IpAddr>);

pub(super) struct Probe {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Probe {
    pub(super) fn start(pod: &Netns, to: SocketAddr) -> anyhow::Result<Probe> {
        Probe::every(pod, to, PERIOD)
    }

    /// A probe opening a connection every `period`.
    pub(super) fn every(pod: &Netns, to: SocketAddr, period: Duration) -> anyhow::Result<Probe> {
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
                next += period;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })?;
        Ok(Probe { stop, samples, thread: Some(thread) })
    }

    /// Attempts started at or after `since`, by start time.
    pub(super) fn since(&self, since: Instant) -> Vec<Sample> {
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

/// The address every attempt of the probe's last `window` saw, when there were at least three
/// and they all agree (attempts finish within [`ATTEMPT_TIMEOUT`]: those started in the
/// window and that timeout before now have reported).
pub(super) fn settled_on(probe: &Probe, window: Duration) -> Option<IpAddr> {
    let recent = probe.since(Instant::now() - window - ATTEMPT_TIMEOUT);
    let first = recent.first().and_then(|(_, s)| *s);
    (recent.len() >= 3 && recent.iter().all(|(_, s)| *s == first)).then_some(first).flatten()
}

/// Waits until every attempt started in the last `window` saw `ip` (and there were some).
fn wait_steady(probe: &Probe, ip: IpAddr, window: Duration, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        std::thread::sleep(window / 2);
        let now = Instant::now();
        if settled_on(probe, window) == Some(ip) {
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

/// The longest outage among `samples` (sorted by start time): from the start of the first bad
/// attempt of a run to the start of the next attempt that saw `ip`. A run still open at the end
/// counts up to the last attempt. Zero if every attempt saw `ip`.
pub(super) fn longest_outage(samples: &[Sample], ip: IpAddr) -> Duration {
    let mut worst = Duration::ZERO;
    let mut bad_since: Option<Instant> = None;
    for (t, seen) in samples {
        match (*seen == Some(ip), bad_since) {
            (true, Some(since)) => {
                worst = worst.max(*t - since);
                bad_since = None;
            }
            (false, None) => bad_since = Some(*t),
            _ => {}
        }
    }
    if let (Some(since), Some((last, _))) = (bad_since, samples.last()) {
        worst = worst.max(*last - since);
    }
    worst
}

fn summary(what: &str, sorted: &[u64]) -> String {
    format!(
        "{what} gap over {} trials: p50 {} ms, p99 {} ms, max {} ms",
        sorted.len(),
        percentile(sorted, 50.0),
        percentile(sorted, 99.0),
        sorted.last().copied().unwrap_or(0)
    )
}

/// Runs the failover benchmark.
pub fn failover(name: &str, trials: usize, egress: &str) -> anyhow::Result<ExitCode> {
    super::need_root()?;
    let mut st = LabState::load(name)?;
    let mut gaps = Vec::new();
    let mut failback_gaps = Vec::new();
    let mut moved_back = 0usize;
    for trial in 1..=trials {
        let deadline = Instant::now() + Duration::from_secs(30);
        // The gateway per the status, once it agrees with the one node that reports holding
        // the IP (the status follows a failback a moment later).
        let (ip, gateway) = loop {
            if let Ok((ip, node)) = egress_status(&st, egress) {
                let holders: Vec<String> =
                    reports(&st).into_iter().filter(|(_, r)| r.hosted.contains(&ip)).map(|(n, _)| n).collect();
                if holders == [node.clone()] {
                    break (ip, node);
                }
            }
            if Instant::now() > deadline {
                return egress_status(&st, egress).map(|_| ExitCode::FAILURE);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // db-a, over the family of the egress IP.
        let to = match ip {
            IpAddr::V4(_) => SocketAddr::from((egret_netns::DB_A, egret_netns::WHOAMI_PORT)),
            IpAddr::V6(_) => SocketAddr::from((egret_netns::DB_A6, egret_netns::WHOAMI_PORT)),
        };
        // A probe pod steered by this Egress on another node than the gateway (retried: on a
        // busy machine one attempt may time out).
        let find = || {
            st.pods
                .iter()
                .filter(|(_, p)| p.node != gateway)
                .find(|(_, p)| {
                    Netns::attach(&p.netns)
                        .ok()
                        .and_then(|ns| WhoamiConn::open(&ns, to, ATTEMPT_TIMEOUT).ok())
                        .is_some_and(|c| c.seen == ip)
                })
                .map(|(k, p)| (k.clone(), p.netns.clone()))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let pod = loop {
            if let Some(p) = find() {
                break p;
            }
            if Instant::now() > deadline {
                bail!("no pod outside {gateway} leaves as {ip} through Egress {egress:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let probe = Probe::start(&Netns::attach(&pod.1)?, to)?;
        wait_steady(&probe, ip, Duration::from_millis(300), Duration::from_secs(10))?;
        let cut = power_off(&mut st, &gateway)?;
        // The clock starts when the agent is killed; only attempts started once the link was
        // down count as recovered, since until then the old gateway's kernel still forwards.
        let gap = loop {
            std::thread::sleep(Duration::from_millis(20));
            if let Some((t, _)) = probe.since(cut.link_down_at).into_iter().find(|(_, s)| *s == Some(ip)) {
                break t - cut.killed_at;
            }
            if cut.killed_at.elapsed() > Duration::from_secs(20) {
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
        // Failback: from the moment the node is switched back on until traffic is steady again
        // and the probe's last attempts have all reported.
        let back_at = Instant::now();
        power_on(&mut st, &gateway)?;
        wait_steady(&probe, ip, Duration::from_millis(500), Duration::from_secs(20))?;
        std::thread::sleep(ATTEMPT_TIMEOUT);
        let settled_at = Instant::now() - ATTEMPT_TIMEOUT;
        let during: Vec<Sample> = probe.since(back_at).into_iter().filter(|(t, _)| *t <= settled_at).collect();
        let failback = longest_outage(&during, ip);
        let holder_after =
            reports(&st).into_iter().find(|(_, r)| r.hosted.contains(&ip)).map_or_else(|| "?".to_string(), |(n, _)| n);
        if holder_after == gateway {
            moved_back += 1;
        }
        outln!(
            "trial {trial:>3}: killed {gateway}, {} back on {ip} via {new_gateway} after {} ms; failback to {holder_after}: gap {} ms",
            pod.0,
            gap.as_millis(),
            failback.as_millis()
        );
        gaps.push(gap.as_millis() as u64);
        failback_gaps.push(failback.as_millis() as u64);
    }
    gaps.sort_unstable();
    failback_gaps.sort_unstable();
    outln!("{}", summary("failover", &gaps));
    outln!(
        "{} (the IP moved back to the returning node in {moved_back} of {trials})",
        summary("failback", &failback_gaps)
    );
    Ok(ExitCode::SUCCESS)
}

/// The namespace of the latency bench's pods and its label.
const BENCH_NS: &str = "egret-bench";

/// The bench's Namespace and one pod per live node.
pub(super) fn bench_pods_yaml(st: &LabState) -> String {
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
/// What the latency bench changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchObject {
    /// An Egress selecting the bench pods; its destinations alternate.
    Egress,
    /// A ClusterEgressPolicy applying to the bench pods; its allowed port alternates.
    Policy,
}

/// The bench's ClusterEgressPolicy: the bench pods may reach 192.0.2.0/24 on one TCP port,
/// which alternates, and nothing else outside the cluster.
fn bench_policy_yaml(variant: usize) -> String {
    let port = if variant.is_multiple_of(2) { 443 } else { 8443 };
    format!(
        "apiVersion: egret.dev/v1alpha1\nkind: ClusterEgressPolicy\nmetadata: {{name: bench-latency}}\nspec:\n  appliedTo:\n    namespaceSelector: {{matchLabels: {{egret.dev/bench: latency}}}}\n    podSelector: {{matchLabels: {{app: bench-latency}}}}\n  rules:\n  - {{name: api, action: Allow, to: {{cidrs: [192.0.2.0/24]}}, ports: [{{port: {port}}}]}}\n  defaultAction: Deny\n"
    )
}

fn bench_egress_yaml(variant: usize) -> String {
    let dest = if variant.is_multiple_of(2) { "192.0.2.0/24" } else { "192.0.2.0/25" };
    format!(
        "apiVersion: egret.dev/v1alpha1\nkind: Egress\nmetadata: {{name: bench-latency}}\nspec:\n  appliedTo:\n    namespaceSelector: {{matchLabels: {{egret.dev/bench: latency}}}}\n    podSelector: {{matchLabels: {{app: bench-latency}}}}\n  egressIP: {}\n  destinationCIDRs: [{dest}]\n",
        egret_netns::node_ip(1)
    )
}

/// Every live node's plan as the store holds it now, computed the way each agent does (the
/// store's events into an index), firewall included.
pub(super) fn node_plans(st: &LabState, live: &BTreeSet<String>) -> anyhow::Result<BTreeMap<String, NodePlan>> {
    let poll = egret_store::StoreSource::new(Store::open(st.store())?).poll();
    if let Some(e) = poll.errors.first() {
        bail!("the lab store has a bad document: {e}");
    }
    let mut ix = egret_core::index::Index::new(super::lab_config(), egret_core::index::Index::core_kinds());
    for c in poll.changes {
        ix.apply(c);
    }
    ix.set_live(live);
    Ok(live.iter().filter_map(|n| Some((n.clone(), ix.node_plan(n)?))).collect())
}

/// p50, p99 and max of `v` (sorted here).
fn latency_summary(v: &mut [u64]) -> String {
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
pub fn latency(name: &str, trials: usize, object: BenchObject) -> anyhow::Result<ExitCode> {
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
    let result =
        super::apply(name, std::slice::from_ref(&pods)).and_then(|_| latency_trials(name, trials, &egress, object));
    // Remove the Egress and the pods even when a trial failed.
    let mut cleanup = Vec::new();
    for f in [&egress, &pods] {
        if f.exists()
            && let Err(e) = super::delete(name, std::slice::from_ref(f))
        {
            cleanup.push(format!("{e:#}"));
        }
    }
    finish(&dir, result, &cleanup)
}

/// The end of a bench that set objects up in the lab: removes its scratch `dir`, then reports
/// the bench's own failure first, else any failure `cleanup` met removing its objects.
pub(super) fn finish(
    dir: &std::path::Path,
    result: anyhow::Result<ExitCode>,
    cleanup: &[String],
) -> anyhow::Result<ExitCode> {
    let _ = std::fs::remove_dir_all(dir);
    let code = result?;
    if !cleanup.is_empty() {
        bail!("removing the bench objects: {}", cleanup.join("; "));
    }
    Ok(code)
}

fn latency_trials(name: &str, trials: usize, file: &std::path::Path, object: BenchObject) -> anyhow::Result<ExitCode> {
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
        let yaml = match object {
            BenchObject::Egress => bench_egress_yaml(trial),
            BenchObject::Policy => bench_policy_yaml(trial),
        };
        std::fs::write(file, yaml)?;
        let (objs, errs) = read_paths(std::slice::from_ref(&file.to_path_buf()));
        if let Some(e) = errs.first() {
            bail!("{e}");
        }
        let applied = Store::open(st.store())?.apply_with(objs, &super::lab_config())?;
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
    let what = match object {
        BenchObject::Egress => "Egress",
        BenchObject::Policy => "ClusterEgressPolicy",
    };
    outln!(
        "{what} change in the store -> datapath programmed, {trials} changes, each a real change of every node's plan:"
    );
    let mut all = Vec::new();
    for (node, v) in &mut per_node {
        all.extend(v.iter().copied());
        outln!("  {node:<8} {}", latency_summary(v));
    }
    outln!("  {:<8} {}", "all", latency_summary(&mut all));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_outage_runs_from_the_first_bad_attempt_to_the_next_good_one() {
        let t0 = Instant::now();
        let ip: IpAddr = "10.10.0.11".parse().unwrap();
        let other: IpAddr = "10.10.0.104".parse().unwrap();
        let at = |ms: u64, seen: Option<IpAddr>| (t0 + Duration::from_millis(ms), seen);
        assert_eq!(longest_outage(&[], ip), Duration::ZERO);
        assert_eq!(longest_outage(&[at(0, Some(ip)), at(15, Some(ip))], ip), Duration::ZERO);
        let samples = [
            at(0, Some(ip)),
            at(15, None),
            at(30, Some(ip)),
            at(45, Some(other)),
            at(60, None),
            at(75, None),
            at(90, Some(ip)),
            at(105, None),
        ];
        assert_eq!(longest_outage(&samples, ip), Duration::from_millis(45));
        assert_eq!(longest_outage(&samples[..6], ip), Duration::from_millis(30), "open run at the end");
    }
}
