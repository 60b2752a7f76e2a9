//! `egret lab bench failover`: the gap in a pod's traffic when its gateway node dies.
//!
//! A probe inside a selected pod opens a new short TCP connection to the outside whoami server
//! every 15 ms (each attempt on its own thread, so a hanging attempt never delays the next)
//! and records when it started and which source address the server saw. Each trial kills the
//! gateway with the same power loss as `lab kill-node`, measures the time from the kill to the
//! start of the first attempt that succeeds again with the egress IP, restores the node, and
//! waits for traffic to be steady again.

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
