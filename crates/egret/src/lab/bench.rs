//! `egret lab bench failover`: the gap in a pod's traffic when its gateway node dies.
//!
//! A probe inside a selected pod opens a new short TCP connection to the outside whoami server
//! every 15 ms (each attempt on its own thread, so a hanging attempt never delays the next)
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
use egret_netns::{Netns, WhoamiConn};
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

/// The longest outage among `samples` (sorted by start time): from the start of the first bad
/// attempt of a run to the start of the next attempt that saw `ip`. A run still open at the end
/// counts up to the last attempt. Zero if every attempt saw `ip`.
fn longest_outage(samples: &[Sample], ip: IpAddr) -> Duration {
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
    let to = SocketAddr::from((egret_netns::DB_A, egret_netns::WHOAMI_PORT));
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
