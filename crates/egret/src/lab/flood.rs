//! `egret lab bench audit-flood`: a pod floods denied packets (each one a new connection the
//! firewall audits) while it keeps opening allowed connections; measures whether an allowed
//! connection is lost, what the audit log wrote and dropped, and the agent's memory.

use super::logs::audit_log;
use super::state::LabState;
use anyhow::{Context, bail};
use egret_netns::{BAD_HOST, DB_A, Netns, WHOAMI_PORT};
use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The pod that floods, and the objects that make its flood denied and audited.
const POD: &str = "prod/web-1";
const EGRESS: &str = include_str!("../../../../examples/firewall-audit/egress.yaml");
const POLICY: &str = include_str!("../../../../examples/firewall-audit/policy.yaml");
/// A UDP port bad-host does not serve: every packet is denied by the policy's default.
const FLOOD_PORT: u16 = 9;

/// Sends `pps` UDP packets per second from `pod` to bad-host for `span`, paced per millisecond.
fn flood(pod: &Netns, pps: u32, span: Duration, sent: Arc<AtomicU64>) -> anyhow::Result<()> {
    pod.run(|| -> anyhow::Result<()> {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        let to = SocketAddr::from((BAD_HOST, FLOOD_PORT));
        let start = Instant::now();
        let mut n: u64 = 0;
        while start.elapsed() < span {
            let due = (start.elapsed().as_secs_f64() * f64::from(pps)) as u64;
            while n < due {
                // ICMP answers to earlier packets are no error on an unconnected socket.
                let _ = sock.send_to(b"flood", to);
                n += 1;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        sent.store(n, Ordering::Relaxed);
        Ok(())
    })?
}

/// A counter's value in a Prometheus text scrape (the sum over matching label sets).
pub(crate) fn metric(text: &str, prefix: &str) -> u64 {
    text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).sum()
}

pub(crate) fn scrape(node_ns: &Netns) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    node_ns.run(|| -> anyhow::Result<String> {
        let mut s = std::net::TcpStream::connect("127.0.0.1:9090")?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })?
}

/// Runs the bench in lab `name`.
pub fn run(name: &str, pps: u32, seconds: u64) -> anyhow::Result<ExitCode> {
    let dir = LabState::load(name)?.dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let files = [("audit-flood-egress.yaml", EGRESS), ("audit-flood-policy.yaml", POLICY)]
        .iter()
        .map(|(f, text)| {
            let p = dir.join(f);
            std::fs::write(&p, text).map(|_| p)
        })
        .collect::<Result<Vec<_>, _>>()?;
    super::apply(name, &files)?;
    let st = LabState::load(name)?;
    let pod = st.pods.get(POD).with_context(|| format!("no pod {POD} in the lab"))?;
    let node = st.nodes.get(&pod.node).context("the pod's node is not in the lab")?;
    let agent = *st.agents.get(&node.name).context("the node has no agent")?;
    let pod_ns = Netns::attach(&pod.netns)?;
    let node_ns = Netns::attach(&node.netns)?;
    let db = SocketAddr::from((DB_A, WHOAMI_PORT));
    if egret_netns::whoami(&pod_ns, db, Duration::from_secs(2)).is_err() {
        bail!("{POD} cannot reach db-a before the flood: the lab is not in the state the bench needs");
    }
    let before = scrape(&node_ns)?;
    let log_before = std::fs::metadata(audit_log(&st, &node.name)).map_or(0, |m| m.len());

    let span = Duration::from_secs(seconds);
    let sent = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let flooder = {
        let (pod_ns, sent, done) = (Netns::attach(&pod.netns)?, sent.clone(), done.clone());
        std::thread::spawn(move || {
            let r = flood(&pod_ns, pps, span, sent);
            done.store(true, Ordering::Relaxed);
            r
        })
    };
    // Allowed connections during the flood, one every 100 ms, and the agent's memory.
    let (mut ok, mut lost) = (0u32, 0u32);
    let mut rss_max = 0u64;
    while !done.load(Ordering::Relaxed) {
        match egret_netns::whoami(&pod_ns, db, Duration::from_secs(1)) {
            Ok(_) => ok += 1,
            Err(_) => lost += 1,
        }
        if let Some((rss, _)) = super::scale::memory_kib(agent) {
            rss_max = rss_max.max(rss);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    flooder.join().map_err(|_| anyhow::anyhow!("the flood thread panicked"))??;
    // Let the last batches reach the log.
    std::thread::sleep(Duration::from_millis(1500));
    let after = scrape(&node_ns)?;
    let hwm = super::scale::memory_kib(agent).map_or(0, |m| m.1);
    let log_bytes = std::fs::metadata(audit_log(&st, &node.name)).map_or(0, |m| m.len()).saturating_sub(log_before);
    let delta = |prefix: &str| metric(&after, prefix).saturating_sub(metric(&before, prefix));
    let sent = sent.load(Ordering::Relaxed);
    println!("audit flood: {POD} sent {sent} denied UDP packets in {seconds} s ({pps}/s asked) on {}", node.name);
    println!("  allowed connections during the flood: {ok} ok, {lost} lost");
    println!(
        "  audit records written: {} (denied {}), dropped by the rate limit: {}, kernel overruns: {}, unmatched: {}",
        delta("egret_audit_records_total"),
        delta("egret_audit_records_total{verdict=\"Deny\"}"),
        delta("egret_audit_dropped_total{reason=\"rate_limit\"}"),
        delta("egret_audit_dropped_total{reason=\"overrun\"}"),
        delta("egret_audit_dropped_total{reason=\"unknown"),
    );
    println!("  audit log grew {:.1} KiB", log_bytes as f64 / 1024.0);
    println!(
        "  agent memory: largest VmRSS sampled {:.1} MiB, peak (VmHWM) {:.1} MiB",
        rss_max as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    Ok(if lost == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_the_matching_series() {
        let t = "# TYPE x counter\negret_audit_dropped_total{reason=\"rate_limit\"} 7\negret_audit_dropped_total{reason=\"overrun\"} 2\n";
        assert_eq!(metric(t, "egret_audit_dropped_total"), 9);
        assert_eq!(metric(t, "egret_audit_dropped_total{reason=\"overrun\"}"), 2);
    }
}
