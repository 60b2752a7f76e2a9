//! The agent's audit log: records of audited connections, received from the kernel by NFLOG,
//! named from the plan the datapath holds, written as JSON lines to a file that rotates by
//! size (and to stdout when asked), under a rate limit per node that counts what it drops.
//!
//! Runs on a thread of its own: a flood of denied packets costs that thread and the bounded
//! socket buffer, never the datapath loop or unbounded memory.

use crate::metrics::AuditMetrics;
use egret_core::policy::{DecidedBy, Verdict};
use egret_datapath::audit::{AuditIndex, Unmatched};
use egret_datapath::nflog::{NflogSocket, Received};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Audit log settings of `egret agent`.
#[derive(clap::Args, Debug, Clone)]
pub struct AuditArgs {
    /// The audit log file (`none`: no file). Rotated by size: `PATH.1` is the newest old file.
    #[arg(long, default_value = "/var/log/egret/audit.log")]
    pub audit_log: PathBuf,
    /// Also write audit records to standard output.
    #[arg(long)]
    pub audit_stdout: bool,
    /// Rotate the audit log when it would grow past this many MiB.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub audit_max_size_mib: u64,
    /// Rotated files kept besides the current one.
    #[arg(long, default_value_t = 5)]
    pub audit_max_files: u32,
    /// At most this many records per second on this node for each verdict (a burst of as many
    /// is allowed), so a flood of denied packets never crowds out the allowed connections'
    /// records; records over it are dropped and counted.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub audit_rate: u32,
    /// The NFLOG group the firewall logs audited connections to.
    #[arg(long, default_value_t = egret_datapath::config::DEFAULT_AUDIT_GROUP)]
    pub audit_nflog_group: u16,
}

impl AuditArgs {
    fn file(&self) -> Option<&Path> {
        (self.audit_log.as_os_str() != "none").then_some(self.audit_log.as_path())
    }
}

/// A token bucket: `rate` records per second, bursts of up to `rate`.
#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    /// A full bucket at `now`.
    pub fn new(rate: u32, now: Instant) -> RateLimit {
        RateLimit { rate: f64::from(rate), tokens: f64::from(rate), last: now }
    }

    /// Whether one more record may be written at `now`.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A file that is rotated when a line would take it past `max_bytes`: `path` -> `path.1` ->
/// ... -> `path.keep`, the oldest dropped.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    out: BufWriter<File>,
    size: u64,
}

/// The `n`th rotated file of `path` (`PATH.n`; 1 is the newest).
pub(crate) fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl RotatingFile {
    /// Opens (appending to) `path`, creating its directory.
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<RotatingFile> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile { path: path.to_path_buf(), max_bytes, keep, out: BufWriter::new(file), size })
    }

    /// Writes one line (`line` without its newline).
    pub fn write_line(&mut self, line: &str) -> io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(line.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.size += len;
        Ok(())
    }

    /// Pushes buffered lines to the file.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for n in (1..self.keep).rev() {
                let from = rotated(&self.path, n);
                if from.exists() {
                    std::fs::rename(&from, rotated(&self.path, n + 1))?;
                }
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        // The old file is rotated whatever comes next: if reopening fails, later lines go to the
        // old handle rather than rotating the kept files away one write after another.
        self.size = 0;
        let file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.out = BufWriter::new(file);
        self.size = 0;
        Ok(())
    }
}

/// The plan's names for logged packets, replaced after each sync that changed the plan.
pub type SharedIndex = Arc<RwLock<Arc<AuditIndex>>>;

/// Where records go.
struct Sinks {
    file: Option<RotatingFile>,
    stdout: bool,
    /// Write errors are logged once until a write succeeds again.
    failing: bool,
}

impl Sinks {
    fn line(&mut self, line: &str, metrics: &AuditMetrics) {
        // Not `println!`: a closed stdout must not end the audit thread.
        if self.stdout && writeln!(io::stdout().lock(), "{line}").is_err() {
            metrics.write_errors.inc();
        }
        if let Some(f) = &mut self.file {
            match f.write_line(line) {
                Ok(()) => self.failing = false,
                Err(e) => {
                    metrics.write_errors.inc();
                    if !self.failing {
                        warn!("writing the audit log {}: {e}", f.path.display());
                    }
                    self.failing = true;
                }
            }
        }
    }

    fn flush(&mut self) {
        if let Some(f) = &mut self.file
            && let Err(e) = f.flush()
            && !self.failing
        {
            warn!("writing the audit log {}: {e}", f.path.display());
            self.failing = true;
        }
    }
}

/// The label of an unmatched packet in the metrics.
fn unmatched_reason(u: &Unmatched) -> &'static str {
    match u {
        Unmatched::Unreadable => "unreadable",
        Unmatched::UnknownDecision => "unknown_decision",
        Unmatched::UnknownPod => "unknown_pod",
    }
}

/// The audit log: the NFLOG socket (bound again after a failure), and where records go.
pub struct Audit {
    sock: Option<NflogSocket>,
    group: u16,
    sinks: Sinks,
    node: String,
    rate: u32,
}

/// Waits between attempts to bind the NFLOG group again: 2 s after the first failure, doubling,
/// at most 30 s.
fn rebind_delay(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(5)).min(Duration::from_secs(30))
}

impl Audit {
    /// Opens the file and binds the NFLOG group (in this process's network namespace). A group
    /// that cannot be bound yet (another process holds it, say an agent being replaced) is
    /// retried by [`Audit::run`]; a file that cannot be opened is an error.
    pub fn open(args: &AuditArgs, node: &str) -> anyhow::Result<Audit> {
        use anyhow::Context;
        let file = match args.file() {
            Some(p) => Some(
                RotatingFile::open(p, args.audit_max_size_mib.saturating_mul(1 << 20), args.audit_max_files)
                    .with_context(|| format!("opening the audit log {}", p.display()))?,
            ),
            None => None,
        };
        let sock = match NflogSocket::bind(args.audit_nflog_group, RECV_WAIT) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!("audit log: {e}; retrying");
                None
            }
        };
        info!(group = args.audit_nflog_group, file = ?args.file(), "audit log: reading audited connections by NFLOG");
        Ok(Audit {
            sock,
            group: args.audit_nflog_group,
            sinks: Sinks { file, stdout: args.audit_stdout, failing: false },
            node: node.to_string(),
            rate: args.audit_rate,
        })
    }

    /// Reads and writes records until `stop`. A socket that fails is bound again, with backoff;
    /// `egret_audit_up` says whether records are being received.
    pub fn run(
        mut self,
        index: SharedIndex,
        metrics: Arc<AuditMetrics>,
        dns: Arc<egret_dns::Shared>,
        stop: Arc<AtomicBool>,
    ) {
        // The name a name rule learned the destination for (the DNS proxy's bookkeeping).
        let fqdn = |policy: &egret_core::policy::PolicyId, rule: &str, ip: std::net::IpAddr| {
            let set = egret_datapath::nft::firewall::name_set(policy, rule, ip.is_ipv6());
            let learned = dns.learned.lock().ok()?;
            learned.name_of(&set, ip, Instant::now()).map(str::to_string)
        };
        // One bucket per verdict: a flood of denials must not silence the allowed records.
        let mut limit_allow = RateLimit::new(self.rate, Instant::now());
        let mut limit_deny = RateLimit::new(self.rate, Instant::now());
        let mut suppressed = Suppressed::default();
        let mut last_summary = Instant::now();
        let mut failures = 0u32;
        let mut retry_at = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            metrics.up.set(i64::from(self.sock.is_some()));
            let Some(sock) = self.sock.as_mut() else {
                if Instant::now() >= retry_at {
                    match NflogSocket::bind(self.group, RECV_WAIT) {
                        Ok(s) => {
                            info!(group = self.group, "audit log: NFLOG group bound");
                            self.sock = Some(s);
                            failures = 0;
                        }
                        Err(e) => {
                            failures += 1;
                            retry_at = Instant::now() + rebind_delay(failures);
                            warn!("audit log: {e}; retrying in {} s", rebind_delay(failures).as_secs());
                        }
                    }
                }
                std::thread::sleep(RECV_WAIT);
                continue;
            };
            let received = match sock.recv() {
                Ok(r) => r,
                Err(e) => {
                    warn!("audit log: {e}; binding the group again");
                    self.sock = None;
                    failures += 1;
                    retry_at = Instant::now() + rebind_delay(failures);
                    continue;
                }
            };
            match received {
                Received::Packets(packets) => {
                    // A poisoned lock still holds the last index the datapath loop wrote.
                    let idx = index.read().map(|i| i.clone()).unwrap_or_else(|e| e.into_inner().clone());
                    let time = format!("{:.6}", jiff::Timestamp::now());
                    for l in &packets {
                        match idx.record(l, time.clone(), fqdn) {
                            Ok(r) => {
                                let limit = match r.verdict {
                                    Verdict::Allow => &mut limit_allow,
                                    Verdict::Deny => &mut limit_deny,
                                };
                                if !limit.allow(Instant::now()) {
                                    suppressed.rate_limited += 1;
                                    metrics.dropped.get_or_create(&vec![("reason".into(), "rate_limit".into())]).inc();
                                    continue;
                                }
                                let verdict = r.verdict.to_string();
                                match serde_json::to_string(&r) {
                                    Ok(line) => self.sinks.line(&line, &metrics),
                                    Err(e) => warn!("encoding an audit record: {e}"),
                                }
                                metrics.records.get_or_create(&vec![("verdict".into(), verdict)]).inc();
                            }
                            Err(u) => {
                                metrics
                                    .dropped
                                    .get_or_create(&vec![("reason".into(), unmatched_reason(&u).into())])
                                    .inc();
                            }
                        }
                    }
                    self.sinks.flush();
                }
                Received::Overrun => {
                    suppressed.overruns += 1;
                    metrics.dropped.get_or_create(&vec![("reason".into(), "overrun".into())]).inc();
                }
                Received::Idle => {}
            }
            // Readers of the file learn that records are missing, and how many, once a second.
            if last_summary.elapsed() >= Duration::from_secs(1) {
                if let Some(line) = suppressed.take_line(&self.node) {
                    self.sinks.line(&line, &metrics);
                    self.sinks.flush();
                }
                last_summary = Instant::now();
            }
        }
        metrics.up.set(0);
    }
}

/// How long one read waits, which is also how soon a stop is noticed.
const RECV_WAIT: Duration = Duration::from_millis(200);

/// Records left out since the last summary line.
#[derive(Debug, Default)]
struct Suppressed {
    rate_limited: u64,
    overruns: u64,
}

impl Suppressed {
    /// The summary line, when something was left out; resets the counts.
    fn take_line(&mut self, node: &str) -> Option<String> {
        if self.rate_limited == 0 && self.overruns == 0 {
            return None;
        }
        let line = serde_json::json!({
            "time": format!("{:.6}", jiff::Timestamp::now()),
            "node": node,
            "suppressed": {"rateLimited": self.rate_limited, "kernelOverruns": self.overruns},
        });
        *self = Suppressed::default();
        Some(line.to_string())
    }
}

/// The labels of a decision's counter: `policy_kind`, `policy`, `rule` (`defaultAction` for a
/// policy's default and `isolation` for a NetworkPolicy's deny without a rule, which no rule
/// name can be: Egret's rule names are DNS labels, a NetworkPolicy's are field paths) and
/// `verdict`.
pub fn rule_labels(by: &DecidedBy, verdict: Verdict) -> Option<Vec<(String, String)>> {
    let (policy, rule) = match by {
        DecidedBy::Rule { policy, rule } => (policy, rule.clone()),
        DecidedBy::Default { policy } => (policy, "defaultAction".to_string()),
        DecidedBy::Isolation { policy } => (policy, "isolation".to_string()),
        DecidedBy::Nothing => return None,
    };
    Some(vec![
        ("policy_kind".into(), policy.kind().into()),
        ("policy".into(), policy.object()),
        ("rule".into(), rule),
        ("verdict".into(), verdict.to_string()),
    ])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut l = RateLimit::new(10, t0);
        assert_eq!((0..25).filter(|_| l.allow(t0)).count(), 10, "a burst of the rate");
        // Half a second later: five more.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..25).filter(|_| l.allow(t1)).count(), 5);
        // A long pause refills to the burst, never beyond.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..25).filter(|_| l.allow(t2)).count(), 10);
    }

    #[test]
    fn the_file_rotates_by_size_and_keeps_as_many_as_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/audit.log");
        let mut f = RotatingFile::open(&path, 25, 2).unwrap();
        for i in 0..7 {
            f.write_line(&format!("line-{i}-0123456")).unwrap(); // 16 bytes with the newline
        }
        f.flush().unwrap();
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(path.clone()), "line-6-0123456\n");
        assert_eq!(read(rotated(&path, 1)), "line-5-0123456\n");
        assert_eq!(read(rotated(&path, 2)), "line-4-0123456\n");
        assert!(!rotated(&path, 3).exists(), "older files beyond --audit-max-files are dropped");
        // Reopening appends and knows the size.
        let mut again = RotatingFile::open(&path, 25, 2).unwrap();
        again.write_line("next-0123456789").unwrap();
        again.flush().unwrap();
        assert_eq!(read(rotated(&path, 1)), "line-6-0123456\n");
    }

    #[test]
    fn record_times_have_a_fixed_precision_so_they_sort_as_text() {
        let t = format!("{:.6}", jiff::Timestamp::from_second(1_800_000_000).unwrap());
        assert_eq!(t, "2027-01-15T08:00:00.000000Z");
    }

    #[test]
    fn binding_again_backs_off_to_thirty_seconds() {
        let waits: Vec<u64> = (1..=7).map(|f| rebind_delay(f).as_secs()).collect();
        assert_eq!(waits, vec![2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn suppressed_records_are_summarised_once() {
        let mut s = Suppressed { rate_limited: 3, overruns: 1 };
        let line: serde_json::Value = serde_json::from_str(&s.take_line("node-1").unwrap()).unwrap();
        assert_eq!(line["suppressed"], serde_json::json!({"rateLimited": 3, "kernelOverruns": 1}));
        assert_eq!(s.take_line("node-1"), None);
    }
}
