//! `egret lab bench spread`: one Egress with four egress IPs on four gateways, many pods; each
//! trial kills one gateway and counts who moved.
//!
//! Set-up (removed afterwards): namespace `egret-spread` with `--pods` pods alternating between
//! node-1 and node-2, a pool of four addresses (10.10.0.40-43) that node-3 .. node-6 may host,
//! and an Egress listing the four in `egressIPs`. Every pod runs a probe: a new TCP connection
//! to db-a every 40 ms, recording which source address db-a saw (or a failure).
//!
//! Each trial waits until every pod's recent attempts all leave with one address, its own
//! (pods use one of the four each, by a stable hash), and every IP is held by the one node its
//! status names. It then kills the gateway of IP `trial mod 4` like `lab kill-node` (agent
//! killed, then link down) and, over the following seconds:
//! - counts the pods that moved: whose address's holder changed (those of the dead gateway's
//!   IP, whose IP moved to another gateway), against the pods that used that IP;
//! - per moved pod, the gap: from the kill to the start of its first attempt that left with
//!   its own address and started after the link went down;
//! - per other pod, its longest outage (a run of attempts that failed or left with another
//!   address) from the kill until 2 s after the last moved pod recovered: zero when none
//!   failed (the probe cannot see a gap shorter than its 40 ms period), and whether its
//!   address ever changed;
//! - as a control, how many attempts of all pods failed in a quiet 2 s window just before the
//!   kill, with every gateway up (the lab's own noise).
//!
//! Then the node is brought back, takes its IP back, and the probes stop.

use super::bench::{ATTEMPT_TIMEOUT, Probe, longest_outage, settled_on};
use super::state::LabState;
use super::{percentile, power_off, power_on, reports};
use anyhow::{Context, bail};
use egret_netns::Netns;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const NS: &str = "egret-spread";
const EGRESS: &str = "egret-spread";
const PERIOD: Duration = Duration::from_millis(40);
/// The control window before each kill.
const QUIET: Duration = Duration::from_secs(2);
const GATEWAYS: [&str; 4] = ["node-3", "node-4", "node-5", "node-6"];
const IPS: [&str; 4] = ["10.10.0.40", "10.10.0.41", "10.10.0.42", "10.10.0.43"];

/// The bench's namespace, pods, pool and Egress.
fn objects_yaml(pods: usize) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NS}\n  labels: {{kubernetes.io/metadata.name: {NS}}}\n"
    );
    for i in 0..pods {
        let node = if i % 2 == 0 { "node-1" } else { "node-2" };
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  namespace: {NS}\n  name: p{i}\n  labels: {{app: spread}}\nspec:\n  nodeName: {node}\n  containers: [{{name: main, image: egret-lab/none}}]\n"
        ));
    }
    y.push_str(&format!(
        "---\napiVersion: egret.dev/v1alpha1\nkind: ExternalIPPool\nmetadata:\n  name: {EGRESS}\nspec:\n  ipRanges: [{{start: {}, end: {}}}]\n  nodeSelector:\n    matchExpressions:\n    - {{key: kubernetes.io/hostname, operator: In, values: [{}]}}\n",
        IPS[0],
        IPS[3],
        GATEWAYS.join(", ")
    ));
    y.push_str(&format!(
        "---\napiVersion: egret.dev/v1alpha1\nkind: Egress\nmetadata:\n  name: {EGRESS}\nspec:\n  appliedTo:\n    namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {NS}}}}}\n  egressIPs: [{}]\n  externalIPPool: {EGRESS}\n",
        IPS.join(", ")
    ));
    y
}

/// Runs the benchmark.
pub fn run(name: &str, trials: usize, pods: usize) -> anyhow::Result<ExitCode> {
    super::need_root()?;
    if trials == 0 || pods < 4 {
        bail!("--trials must be at least 1 and --pods at least 4");
    }
    let st = LabState::load(name)?;
    for n in GATEWAYS.iter().chain(&["node-1", "node-2"]) {
        st.node(n).with_context(|| "the spread bench needs the default six-node lab")?;
    }
    let dir = super::tempfile_dir()?;
    let file = dir.join("spread.yaml");
    std::fs::write(&file, objects_yaml(pods))?;
    outln!("adding {pods} pods (namespace {NS}) and Egress {EGRESS} with four egress IPs on {}", GATEWAYS.join(", "));
    let result = super::apply(name, std::slice::from_ref(&file)).and_then(|_| trials_of(name, trials, pods));
    let mut cleanup = Vec::new();
    if let Err(e) = super::delete(name, std::slice::from_ref(&file)) {
        cleanup.push(format!("{e:#}"));
    }
    super::bench::finish(&dir, result, &cleanup)
}

/// Each IP's node per the Egress's status, once every IP has one and is held by exactly that
/// node per the agents' reports.
fn settled_gateways(st: &LabState, limit: Duration) -> anyhow::Result<BTreeMap<IpAddr, String>> {
    let deadline = Instant::now() + limit;
    loop {
        let (objs, _) = egret_store::Store::open(st.store())?.load();
        let status = objs
            .egresses
            .iter()
            .find(|d| d.object.metadata.name.as_deref() == Some(EGRESS))
            .and_then(|d| d.object.status.clone())
            .unwrap_or_default();
        let placed: BTreeMap<IpAddr, String> = status
            .gateways
            .iter()
            .filter_map(|g| Some((g.egress_ip.as_deref()?.parse().ok()?, g.egress_node.clone()?)))
            .collect();
        let r = reports(st);
        let agreed = placed.len() == IPS.len()
            && placed.iter().all(|(ip, node)| {
                let holders: Vec<&String> = r
                    .iter()
                    .filter(|(n, rep)| !st.killed.contains(n) && rep.hosted.contains(ip))
                    .map(|(n, _)| n)
                    .collect();
                holders == [node]
            });
        if agreed {
            return Ok(placed);
        }
        if Instant::now() > deadline {
            bail!(
                "Egress {EGRESS}'s four IPs did not settle on their gateways within {} s: {placed:?}",
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every probe's attempts of the last `window` all saw one address; returns it
/// per pod.
fn steady(probes: &[(String, Probe)], window: Duration, limit: Duration) -> anyhow::Result<Vec<IpAddr>> {
    let deadline = Instant::now() + limit;
    loop {
        std::thread::sleep(window / 2);
        let seen: Vec<Option<IpAddr>> = probes.iter().map(|(_, p)| settled_on(p, window)).collect();
        if seen.iter().all(Option::is_some) {
            return Ok(seen.into_iter().flatten().collect());
        }
        if Instant::now() > deadline {
            let unsettled: Vec<&str> =
                probes.iter().zip(&seen).filter(|(_, s)| s.is_none()).map(|((k, _), _)| k.as_str()).collect();
            bail!("pods {unsettled:?} did not settle on one egress IP within {} s", limit.as_secs());
        }
    }
}

fn trials_of(name: &str, trials: usize, pods: usize) -> anyhow::Result<ExitCode> {
    let mut st = LabState::load(name)?;
    let to = SocketAddr::from((egret_netns::DB_A, egret_netns::WHOAMI_PORT));
    let keys: Vec<String> = (0..pods).map(|i| format!("{NS}/p{i}")).collect();
    let mut moved_gaps: Vec<u64> = Vec::new();
    let mut others_worst: Vec<u64> = Vec::new();
    let (mut moved_total, mut expected_total, mut changed_total) = (0usize, 0usize, 0usize);
    let (mut quiet_failed_total, mut quiet_total) = (0usize, 0usize);
    for trial in 1..=trials {
        let gateways = settled_gateways(&st, Duration::from_secs(30))?;
        let probes: Vec<(String, Probe)> = keys
            .iter()
            .map(|k| {
                let ns = Netns::attach(&st.pod(k)?.netns)?;
                Ok((k.clone(), Probe::every(&ns, to, PERIOD)?))
            })
            .collect::<anyhow::Result<_>>()?;
        let own = steady(&probes, Duration::from_millis(400), Duration::from_secs(15))?;
        if let Some((k, ip)) = keys.iter().zip(&own).find(|(_, ip)| !gateways.contains_key(ip)) {
            bail!("{k} leaves as {ip}, not one of the Egress's IPs");
        }
        // A quiet window first, as a control: attempts that fail with no gateway dying (the
        // lab's own noise: a busy machine, the whoami server's backlog).
        let quiet_from = Instant::now();
        std::thread::sleep(QUIET + ATTEMPT_TIMEOUT);
        let (mut quiet_failed, mut quiet_all) = (0usize, 0usize);
        for (i, (_, p)) in probes.iter().enumerate() {
            let window: Vec<_> = p.since(quiet_from).into_iter().filter(|(t, _)| *t <= quiet_from + QUIET).collect();
            quiet_all += window.len();
            quiet_failed += window.iter().filter(|(_, s)| *s != Some(own[i])).count();
        }
        let victim_ip: IpAddr = IPS[(trial - 1) % IPS.len()].parse()?;
        let victim = gateways.get(&victim_ip).cloned().context("victim IP unplaced")?;
        let users: BTreeSet<usize> = (0..pods).filter(|&i| own[i] == victim_ip).collect();
        let cut = power_off(&mut st, &victim)?;
        // Every user back with its own address after the link went down.
        let mut recovered: BTreeMap<usize, Duration> = BTreeMap::new();
        while recovered.len() < users.len() {
            std::thread::sleep(Duration::from_millis(20));
            for &i in &users {
                if !recovered.contains_key(&i)
                    && let Some((t, _)) =
                        probes[i].1.since(cut.link_down_at).into_iter().find(|(_, s)| *s == Some(victim_ip))
                {
                    recovered.insert(i, t - cut.killed_at);
                }
            }
            if cut.killed_at.elapsed() > Duration::from_secs(20) {
                power_on(&mut st, &victim)?;
                bail!(
                    "trial {trial}: {} of {} pods of {victim_ip} never came back",
                    users.len() - recovered.len(),
                    users.len()
                );
            }
        }
        std::thread::sleep(Duration::from_secs(2));
        let until = Instant::now() - ATTEMPT_TIMEOUT;
        // Who moved: pods whose address is now held elsewhere than before.
        let after = settled_gateways(&st, Duration::from_secs(10))?;
        let moved: BTreeSet<usize> = (0..pods).filter(|&i| after.get(&own[i]) != gateways.get(&own[i])).collect();
        let mut worst = Duration::ZERO;
        // Where the worst outage of another pod was: the pod, and when its first failed attempt
        // started, after the kill.
        let mut worst_at: Option<(usize, Duration)> = None;
        let mut changed = 0usize;
        for i in (0..pods).filter(|i| !users.contains(i)) {
            let during: Vec<_> = probes[i].1.since(cut.killed_at).into_iter().filter(|(t, _)| *t <= until).collect();
            let o = longest_outage(&during, own[i]);
            if o > worst {
                worst = o;
                let first_bad = during.iter().find(|(_, s)| *s != Some(own[i])).map(|(t, _)| *t - cut.killed_at);
                worst_at = first_bad.map(|t| (i, t));
            }
            if let Some((t, Some(other))) = during.iter().find(|(_, s)| s.is_some() && *s != Some(own[i])) {
                changed += 1;
                outln!(
                    "  {} (own {}) left as {other} at +{} ms",
                    keys[i],
                    own[i],
                    t.saturating_duration_since(cut.killed_at).as_millis()
                );
            }
        }
        let gaps: Vec<u64> = recovered.values().map(|d| d.as_millis() as u64).collect();
        let where_ = worst_at.map_or(String::new(), |(i, t)| {
            format!(
                " ({} from +{} ms, via {})",
                keys[i],
                t.as_millis(),
                gateways.get(&own[i]).map_or("?", String::as_str)
            )
        });
        outln!(
            "trial {trial:>3}: killed {victim} ({victim_ip}, now on {}): moved {} of {pods} pods ({} used {victim_ip}), gaps {} ms; the other {}: longest gap {} ms{where_}, {changed} changed address; quiet {} s before: {quiet_failed} of {quiet_all} attempts failed",
            after.get(&victim_ip).map_or("?", String::as_str),
            moved.len(),
            users.len(),
            gaps.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
            pods - users.len(),
            worst.as_millis(),
            QUIET.as_secs(),
        );
        quiet_failed_total += quiet_failed;
        quiet_total += quiet_all;
        moved_total += moved.len();
        expected_total += users.len();
        changed_total += changed;
        moved_gaps.extend(gaps);
        others_worst.push(worst.as_millis() as u64);
        power_on(&mut st, &victim)?;
        // Back home before the next trial, with the probes still running, so that the next
        // trial starts from the full placement.
        let home = settled_gateways(&st, Duration::from_secs(30))?;
        if home != gateways {
            bail!("trial {trial}: after {victim} came back the IPs are on {home:?}, not {gateways:?}");
        }
        drop(probes);
    }
    moved_gaps.sort_unstable();
    others_worst.sort_unstable();
    outln!(
        "moved {moved_total} pods over {trials} trials, exactly those of the dead gateway's IP: {}",
        if moved_total == expected_total { "yes" } else { "NO" }
    );
    outln!(
        "their gap over {} pods: p50 {} ms, p99 {} ms, max {} ms",
        moved_gaps.len(),
        percentile(&moved_gaps, 50.0),
        percentile(&moved_gaps, 99.0),
        moved_gaps.last().copied().unwrap_or(0)
    );
    outln!(
        "the other pods: longest gap per trial p50 {} ms, max {} ms; {changed_total} changed address",
        percentile(&others_worst, 50.0),
        others_worst.last().copied().unwrap_or(0)
    );
    outln!(
        "control: {quiet_failed_total} of {quiet_total} attempts failed in the quiet windows ({} s before each kill, no gateway dying)",
        QUIET.as_secs()
    );
    Ok(if moved_total == expected_total && changed_total == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_objects_load_and_plan_four_ips_on_four_gateways() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("spread.yaml");
        std::fs::write(&f, objects_yaml(8)).unwrap();
        let cluster = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/cluster/lab.yaml");
        let (objs, problems) = egret_store::read_paths(&[cluster, f]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(objs.pods.len() - 7, 8, "the lab's seven pods and the bench's eight");
        let e = objs.egresses.iter().find(|e| e.object.metadata.name.as_deref() == Some(EGRESS)).unwrap();
        assert_eq!(e.object.spec.egress_ips.len(), 4);
        let pools: Vec<_> = objs.pools.iter().map(|d| d.object.clone()).collect();
        let egresses: Vec<_> = objs.egresses.iter().map(|d| d.object.clone()).collect();
        let v = egret_core::validate::validate(&pools, &egresses, &egret_core::validate::Reserved::default());
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        assert_eq!(v.egresses[EGRESS].ips.len(), 4);
    }
}
