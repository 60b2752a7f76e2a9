//! `egret lab bench dns`: DNS lookups from a pod at a steady rate, and their latency.
//!
//! Runs inside the pod's network namespace (a thread of this process that entered it). Query
//! `k` (k = 0, 1, ...) is an A query (recursion desired, no EDNS, as glibc sends them) for name
//! `k mod N` of the list, sent on UDP socket `k mod S` (S connected sockets, fixed source
//! ports for the run; with `--fresh-ports`, a new socket for each query) at `start + k / rate`: an open loop, the schedule never waits for
//! answers, so a slow answer delays no later query. A query's latency runs from just before
//! its `send` to the receipt, in the pod, of the answer with its socket, ID and question;
//! answers that arrive later than `--timeout-ms`, or never, count as lost. Answered queries
//! whose answer is not NOERROR with at least one record are counted as errors (by response
//! code); their latency still counts. The server is the pod's resolver (its resolv.conf,
//! i.e. the lab's DNS server) unless `--server` is given.

use super::percentile;
use super::state::LabState;
use anyhow::{Context, bail};
use egret_netns::Netns;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `egret lab bench dns`'s arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// The pod the queries come from (`namespace/pod`).
    #[arg(long)]
    pub pod: String,
    /// Queries per second, sent on a fixed schedule that never waits for answers.
    #[arg(long, default_value = "1000")]
    pub rate: u32,
    /// How long to send, in seconds.
    #[arg(long, default_value = "10")]
    pub seconds: u64,
    /// Names to query, cycled (default: n0000.fresh.test .. n0999.fresh.test of the lab's zone).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub names: Vec<String>,
    /// The DNS server (default: the pod's resolver, i.e. the lab's DNS server 203.0.113.53).
    #[arg(long)]
    pub server: Option<IpAddr>,
    /// An answer later than this many milliseconds counts as lost.
    #[arg(long, default_value = "1000")]
    pub timeout_ms: u64,
    /// UDP sockets (source ports) the queries are spread over, round robin.
    #[arg(long, default_value = "8")]
    pub sockets: usize,
    /// Send every query from a socket of its own (a new source port), as glibc's stub
    /// resolver does for each lookup, instead of `--sockets` fixed ones.
    #[arg(long)]
    pub fresh_ports: bool,
}

/// What happened to one query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// Answered within the timeout: latency, response code, number of answer records.
    Answered { latency: Duration, rcode: ResponseCode, answers: usize },
    /// No answer within the timeout.
    Lost,
}

/// The bench's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Queries sent.
    pub sent: usize,
    /// Answered within the timeout.
    pub answered: usize,
    /// Not answered within the timeout.
    pub lost: usize,
    /// Answered, but not NOERROR with a record, by response code (NOERROR: no record).
    pub errors: BTreeMap<String, usize>,
    /// Latencies of the answered queries, in nanoseconds, sorted.
    pub latencies_ns: Vec<u64>,
}

/// Sums up the outcomes (pure).
pub fn summarize(outcomes: &[Outcome], timeout: Duration) -> Summary {
    let mut s =
        Summary { sent: outcomes.len(), answered: 0, lost: 0, errors: BTreeMap::new(), latencies_ns: Vec::new() };
    for o in outcomes {
        match *o {
            Outcome::Answered { latency, rcode, answers } if latency <= timeout => {
                s.answered += 1;
                s.latencies_ns.push(latency.as_nanos().min(u128::from(u64::MAX)) as u64);
                if rcode != ResponseCode::NoError || answers == 0 {
                    *s.errors.entry(rcode.to_string()).or_default() += 1;
                }
            }
            _ => s.lost += 1,
        }
    }
    s.latencies_ns.sort_unstable();
    s
}

fn ms(ns: u64) -> String {
    format!("{:.3} ms", ns as f64 / 1e6)
}

impl Summary {
    /// The latency line: p50, p90, p99, p99.9, max.
    pub fn latency_line(&self) -> String {
        let l = &self.latencies_ns;
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            ms(percentile(l, 50.0)),
            ms(percentile(l, 90.0)),
            ms(percentile(l, 99.0)),
            ms(percentile(l, 99.9)),
            ms(l.last().copied().unwrap_or(0))
        )
    }
}

/// The default names: the lab zone's fresh names.
fn default_names() -> Vec<String> {
    (0..super::dns::FRESH_NAMES).map(super::dns::fresh_name).collect()
}

/// Runs the bench in lab `lab`.
pub fn run(lab: &str, o: &Opts) -> anyhow::Result<ExitCode> {
    if o.rate == 0 || o.seconds == 0 || o.sockets == 0 {
        bail!("--rate, --seconds and --sockets must be at least 1");
    }
    let st = LabState::load(lab)?;
    let pod = st.pod(&o.pod)?;
    let server = o.server.or_else(|| super::dns::pod_resolver(&pod.netns)).unwrap_or(IpAddr::V4(super::dns::DNS_IP));
    let to = SocketAddr::new(server, 53);
    let names = if o.names.is_empty() { default_names() } else { o.names.clone() };
    let names: Vec<Name> = names
        .iter()
        .map(|n| {
            let mut name = Name::from_ascii(n).with_context(|| format!("{n:?} is not a DNS name"))?;
            name.set_fqdn(true);
            Ok(name)
        })
        .collect::<anyhow::Result<_>>()?;
    let total = (u64::from(o.rate) * o.seconds) as usize;
    let ports = if o.fresh_ports { "a new socket per query".to_string() } else { format!("{} sockets", o.sockets) };
    println!(
        "dns bench: {} -> {to} (UDP), A queries for {} names cycled ({} .. {}), {}/s for {} s ({total} queries) on {ports}, timeout {} ms",
        o.pod,
        names.len(),
        names.first().map(ToString::to_string).unwrap_or_default(),
        names.last().map(ToString::to_string).unwrap_or_default(),
        o.rate,
        o.seconds,
        o.timeout_ms
    );
    let ns = Netns::attach(&pod.netns)?;
    let (outcomes, send_span) = ns.run(|| -> anyhow::Result<(Vec<Outcome>, Duration)> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        if o.fresh_ports {
            rt.block_on(bench_fresh(to, &names, o, total))
        } else {
            rt.block_on(bench(to, &names, o, total))
        }
    })??;
    let s = summarize(&outcomes, Duration::from_millis(o.timeout_ms));
    // `sent` queries span `sent - 1` periods of the schedule.
    let achieved = s.sent.saturating_sub(1) as f64 / send_span.as_secs_f64().max(1e-9);
    println!("  sent {} ({achieved:.0}/s achieved), answered {}, lost {}", s.sent, s.answered, s.lost);
    if !s.errors.is_empty() {
        let e: Vec<String> = s.errors.iter().map(|(rc, n)| format!("{rc} {n}")).collect();
        println!("  answered without an address: {}", e.join(", "));
    }
    println!("  latency, send to answer, in the pod: {}", s.latency_line());
    Ok(if s.lost == 0 && s.errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// A query for `name` with `id`, as bytes.
fn query(id: u16, name: &Name) -> anyhow::Result<Vec<u8>> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name.clone(), RecordType::A));
    Ok(m.to_vec()?)
}

/// In flight: (socket, id) -> (name index, sent at, query number).
type Pending = Arc<Mutex<HashMap<(usize, u16), (usize, Instant, usize)>>>;

async fn bench(to: SocketAddr, names: &[Name], o: &Opts, total: usize) -> anyhow::Result<(Vec<Outcome>, Duration)> {
    let mut sockets = Vec::new();
    for _ in 0..o.sockets {
        let s = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
        s.connect(to).await?;
        sockets.push(Arc::new(s));
    }
    let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
    let outcomes = Arc::new(Mutex::new(vec![Outcome::Lost; total]));
    let mut receivers = Vec::new();
    for (i, sock) in sockets.iter().enumerate() {
        let (sock, pending, outcomes, names) = (sock.clone(), pending.clone(), outcomes.clone(), names.to_vec());
        receivers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok(n) = sock.recv(&mut buf).await else { continue };
                let at = Instant::now();
                let Ok(m) = Message::from_vec(&buf[..n]) else { continue };
                let entry = pending.lock().ok().and_then(|mut p| {
                    let key = (i, m.metadata.id);
                    let name_i = p.get(&key)?.0;
                    // The same question, or it is not this query's answer.
                    if m.queries.first().map(|q| &q.name) != names.get(name_i) {
                        return None;
                    }
                    p.remove(&key)
                });
                if let Some((_, sent, k)) = entry
                    && let Ok(mut out) = outcomes.lock()
                    && let Some(slot) = out.get_mut(k)
                {
                    *slot = Outcome::Answered {
                        latency: at - sent,
                        rcode: m.metadata.response_code,
                        answers: m.answers.len(),
                    };
                }
            }
        }));
    }
    let period = Duration::from_secs(1).as_secs_f64() / f64::from(o.rate);
    let start = Instant::now();
    for k in 0..total {
        let due = start + Duration::from_secs_f64(period * k as f64);
        tokio::time::sleep_until(due.into()).await;
        let sock_i = k % sockets.len();
        let id = ((k / sockets.len()) % 65536) as u16;
        let name_i = k % names.len();
        let bytes = query(id, &names[name_i])?;
        if let Ok(mut p) = pending.lock() {
            p.insert((sock_i, id), (name_i, Instant::now(), k));
        }
        // A failed send is a lost query (it stays pending).
        let _ = sockets[sock_i].send(&bytes).await;
    }
    let send_span = start.elapsed();
    // Wait for the last answers (an answer later than the timeout is lost anyway).
    let deadline = Instant::now() + Duration::from_millis(o.timeout_ms);
    while Instant::now() < deadline && pending.lock().map(|p| !p.is_empty()).unwrap_or(false) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for r in receivers {
        r.abort();
    }
    let out = outcomes.lock().map(|o| o.clone()).map_err(|_| anyhow::anyhow!("a receiver panicked"))?;
    Ok((out, send_span))
}

/// The open loop with a new socket for each query, which waits for its one answer.
async fn bench_fresh(
    to: SocketAddr,
    names: &[Name],
    o: &Opts,
    total: usize,
) -> anyhow::Result<(Vec<Outcome>, Duration)> {
    let any: SocketAddr = if to.is_ipv6() { "[::]:0".parse()? } else { "0.0.0.0:0".parse()? };
    let timeout = Duration::from_millis(o.timeout_ms);
    let period = Duration::from_secs(1).as_secs_f64() / f64::from(o.rate);
    let mut tasks = Vec::with_capacity(total);
    let start = Instant::now();
    for k in 0..total {
        let due = start + Duration::from_secs_f64(period * k as f64);
        tokio::time::sleep_until(due.into()).await;
        let name = names[k % names.len()].clone();
        let id = (k % 65536) as u16;
        let bytes = query(id, &name)?;
        let sock = tokio::net::UdpSocket::bind(any).await?;
        sock.connect(to).await?;
        let sent = Instant::now();
        // A failed send is a lost query.
        if sock.send(&bytes).await.is_err() {
            tasks.push(None);
            continue;
        }
        tasks.push(Some(tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            let deadline = tokio::time::Instant::from(sent + timeout);
            loop {
                let Ok(Ok(n)) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await else {
                    return Outcome::Lost;
                };
                let at = Instant::now();
                let Ok(m) = Message::from_vec(&buf[..n]) else { continue };
                if m.metadata.id == id && m.queries.first().map(|q| &q.name) == Some(&name) {
                    return Outcome::Answered {
                        latency: at - sent,
                        rcode: m.metadata.response_code,
                        answers: m.answers.len(),
                    };
                }
            }
        })));
    }
    let send_span = start.elapsed();
    let mut out = Vec::with_capacity(total);
    for t in tasks {
        out.push(match t {
            Some(t) => t.await.unwrap_or(Outcome::Lost),
            None => Outcome::Lost,
        });
    }
    Ok((out, send_span))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_lost_late_and_errors() {
        let t = Duration::from_millis(100);
        let ok =
            |us| Outcome::Answered { latency: Duration::from_micros(us), rcode: ResponseCode::NoError, answers: 1 };
        let outcomes = [
            ok(300),
            ok(100),
            ok(200),
            Outcome::Lost,
            // Later than the timeout: lost.
            ok(150_000),
            Outcome::Answered { latency: Duration::from_micros(50), rcode: ResponseCode::NXDomain, answers: 0 },
            Outcome::Answered { latency: Duration::from_micros(60), rcode: ResponseCode::NoError, answers: 0 },
        ];
        let s = summarize(&outcomes, t);
        assert_eq!((s.sent, s.answered, s.lost), (7, 5, 2));
        assert_eq!(s.errors.get("Non-Existent Domain").copied().or(s.errors.get("NXDomain").copied()), Some(1));
        assert_eq!(s.errors.values().sum::<usize>(), 2);
        assert_eq!(s.latencies_ns, vec![50_000, 60_000, 100_000, 200_000, 300_000]);
        assert!(s.latency_line().starts_with("p50 0.100 ms"), "{}", s.latency_line());
        assert!(s.latency_line().ends_with("max 0.300 ms"), "{}", s.latency_line());
    }
}
