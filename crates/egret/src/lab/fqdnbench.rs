//! `egret lab bench fqdn`: does the first connection after a lookup succeed, and how long do
//! answers wait for their addresses to reach the kernel?
//!
//! From inside a pod under name rules (e.g. `examples/fqdn-allowlist`), for each of N fresh
//! names of the lab's zone (`n0000.fresh.test` ..., each with its own address and a TTL of 0 to
//! 5 s): one A query over UDP to the pod's resolver (through the node's DNS proxy; sent again
//! once if unanswered after 2 s), then at once one TCP connection to the answered address on
//! port 8080. A first connection counts as successful when it is established within 900 ms:
//! Linux retransmits an unanswered SYN after
//! 1 s, so a success is a first SYN answered; a refused or late one is a failure. Before the
//! run, the first name's address is checked to be refused without a lookup (the pod really is
//! under name rules and nothing of an earlier run is still learned). The agent's
//! `egret_dns_hold_seconds` histogram, read before and after on the pod's node, gives how long
//! answers were held for programming (as histogram bucket bounds), and
//! `egret_dns_hold_timeouts_total` how many were released before the kernel held them.

use super::percentile;
use super::state::LabState;
use anyhow::{Context, bail};
use egret_netns::Netns;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// A SYN that is not answered is sent again after 1 s: anything slower was not a first attempt.
const FIRST_ATTEMPT: Duration = Duration::from_millis(900);

/// One name's outcome.
#[derive(Debug)]
struct Sample {
    dns: Duration,
    connect: Option<Duration>,
    failure: Option<String>,
}

fn lookup(server: SocketAddr, name: &str, id: u16) -> anyhow::Result<IpAddr> {
    let mut n = Name::from_ascii(name)?;
    n.set_fqdn(true);
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(n, RecordType::A));
    let a = super::dns::ask(server, &m)?;
    a.answers
        .iter()
        .find_map(|r| match &r.data {
            RData::A(x) => Some(IpAddr::V4(x.0)),
            _ => None,
        })
        .with_context(|| format!("{name}: no address in the answer"))
}

/// Connects and reads the whoami's first line (the source address it saw; it then echoes, so
/// the connection is dropped after that line).
fn connect(to: SocketAddr) -> Result<(Duration, String), String> {
    let start = Instant::now();
    let s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    let took = start.elapsed();
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    Ok((took, line.trim().to_string()))
}

fn bucket_counts(text: &str) -> Vec<(f64, u64)> {
    text.lines()
        .filter(|l| l.starts_with("egret_dns_hold_seconds_bucket{"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// The smallest bucket bound holding at least `p` percent of the observations between two scrapes.
fn bucket_percentile(before: &[(f64, u64)], after: &[(f64, u64)], p: f64) -> Option<f64> {
    let diff: Vec<(f64, u64)> = after
        .iter()
        .map(|(le, n)| (*le, n - before.iter().find(|(b, _)| b == le).map_or(0, |(_, m)| *m).min(*n)))
        .collect();
    let total = diff.last()?.1;
    if total == 0 {
        return None;
    }
    diff.iter().find(|(_, n)| (*n as f64) >= total as f64 * p / 100.0).map(|(le, _)| *le)
}

/// Runs the bench in lab `lab`.
pub fn run(lab: &str, pod: &str, count: usize) -> anyhow::Result<ExitCode> {
    if count == 0 || count > 1000 {
        bail!("--names must be 1..=1000 (the zone has n0000 .. n0999.fresh.test)");
    }
    let st = LabState::load(lab)?;
    let p = st.pod(pod)?;
    let node = st.nodes.get(&p.node).with_context(|| format!("no node {}", p.node))?;
    let node_ns = Netns::attach(&node.netns)?;
    let pod_ns = Netns::attach(&p.netns)?;
    let server = SocketAddr::new(super::dns::pod_resolver(&p.netns).unwrap_or(IpAddr::V4(super::dns::DNS_IP)), 53);
    let names: Vec<String> = (0..count).map(|i| format!("n{i:04}.fresh.test")).collect();
    println!("fqdn bench: {pod} (on {}), {count} fresh names, lookup via {server} then TCP 8080 at once", p.node);
    let scrape = || super::flood::scrape(&node_ns);
    let before = scrape()?;
    // Sanity: the first name's address, which the zone gives, is refused before any lookup.
    let first_addr = {
        let n = names[0].clone();
        node_ns.run(move || lookup(server, &n, 1))??
    };
    let refused = pod_ns.run(move || connect(SocketAddr::new(first_addr, 8080)))?;
    if refused.is_ok() {
        bail!(
            "{first_addr} ({}) is reachable before any lookup: the pod is not under name rules, or an earlier run's addresses are still learned (wait their TTL plus grace)",
            names[0]
        );
    }
    let samples: Vec<Sample> = pod_ns.run(move || {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let t = Instant::now();
                match lookup(server, name, i as u16 + 2) {
                    Err(e) => Sample { dns: t.elapsed(), connect: None, failure: Some(format!("{name}: {e:#}")) },
                    Ok(addr) => {
                        let dns = t.elapsed();
                        match connect(SocketAddr::new(addr, 8080)) {
                            Ok((took, seen)) if took < FIRST_ATTEMPT && !seen.is_empty() => {
                                Sample { dns, connect: Some(took), failure: None }
                            }
                            Ok((took, seen)) if seen.is_empty() => Sample {
                                dns,
                                connect: Some(took),
                                failure: Some(format!("{name} ({addr}): connected, but no whoami answer")),
                            },
                            Ok((took, _)) => Sample {
                                dns,
                                connect: Some(took),
                                failure: Some(format!(
                                    "{name} ({addr}): established after {took:?} (SYN retransmitted)"
                                )),
                            },
                            Err(e) => Sample { dns, connect: None, failure: Some(format!("{name} ({addr}): {e}")) },
                        }
                    }
                }
            })
            .collect()
    })?;
    let after = scrape()?;
    let ok = samples.iter().filter(|s| s.failure.is_none()).count();
    let mut dns: Vec<u64> = samples.iter().map(|s| s.dns.as_nanos() as u64).collect();
    dns.sort_unstable();
    let mut conn: Vec<u64> = samples.iter().filter_map(|s| s.connect).map(|d| d.as_nanos() as u64).collect();
    conn.sort_unstable();
    let ms = |ns: u64| format!("{:.3} ms", ns as f64 / 1e6);
    println!("  first connections established: {ok} of {count} ({:.1}%)", 100.0 * ok as f64 / count as f64);
    for f in samples.iter().filter_map(|s| s.failure.as_ref()).take(10) {
        println!("    failed: {f}");
    }
    println!(
        "  lookup (query to answer, in the pod, through the proxy): p50 {} p99 {} max {}",
        ms(percentile(&dns, 50.0)),
        ms(percentile(&dns, 99.0)),
        ms(dns.last().copied().unwrap_or(0))
    );
    println!(
        "  TCP connect after the answer: p50 {} p99 {} max {}",
        ms(percentile(&conn, 50.0)),
        ms(percentile(&conn, 99.0)),
        ms(conn.last().copied().unwrap_or(0))
    );
    let (b, a) = (bucket_counts(&before), bucket_counts(&after));
    let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |s| format!("<= {} ms", s * 1000.0));
    println!(
        "  answers held for programming (agent histogram, bucket bounds): p50 {} p99 {}",
        fmt(bucket_percentile(&b, &a, 50.0)),
        fmt(bucket_percentile(&b, &a, 99.0))
    );
    let held_out = "egret_dns_hold_timeouts_total";
    let timeouts = super::flood::metric(&after, held_out).saturating_sub(super::flood::metric(&before, held_out));
    println!("  answers released before their addresses were programmed: {timeouts}");
    Ok(if ok == count && timeouts == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_histogram_difference() {
        let before = vec![(0.001, 10), (0.002, 10), (f64::INFINITY, 10)];
        let after = vec![(0.001, 60), (0.002, 109), (f64::INFINITY, 110)];
        // 100 new: 50 within 1 ms, 99 within 2 ms, one beyond.
        assert_eq!(bucket_percentile(&before, &after, 50.0), Some(0.001));
        assert_eq!(bucket_percentile(&before, &after, 99.0), Some(0.002));
        assert_eq!(bucket_percentile(&before, &after, 100.0), Some(f64::INFINITY));
        assert_eq!(bucket_percentile(&after, &after, 50.0), None);
    }
}
