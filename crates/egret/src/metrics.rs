//! The agent's Prometheus metrics (served on `/metrics`).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

/// Every metric of the agent.
#[derive(Debug, Default)]
pub struct Metrics {
    /// The registry they are in.
    pub registry: Registry,
    /// Egress IPs seen announced by more than one live member, each time a new one appears.
    pub conflicts: Counter,
    /// Datapath syncs by result (`ok`, `error`).
    pub syncs: Family<Vec<(String, String)>, Counter>,
    /// Egress IPs this node hosts.
    pub hosted: Gauge,
    /// Gossip members by status as this agent sees them.
    pub members: Family<Vec<(String, String)>, Gauge>,
    /// Gossip datagrams dropped (failed authentication, unencrypted, stale, replayed, malformed),
    /// since the agent started.
    pub gossip_rejected: Family<Vec<(String, String)>, Counter>,
    /// The audit log's counts.
    pub audit: Arc<AuditMetrics>,
    /// Failed datapath syncs by reason (the kind of error).
    pub sync_failures: Family<Vec<(String, String)>, Counter>,
    /// When the datapath last synced successfully (Unix time, seconds).
    pub last_sync: Gauge<f64, AtomicU64>,
    /// Elements of each map and set of Egret's nft table, as last programmed.
    pub map_elements: Family<Vec<(String, String)>, Gauge>,
    /// Egress IPs this node started (`added`) or stopped (`removed`) hosting.
    pub placement_changes: Family<Vec<(String, String)>, Counter>,
    /// Egress IPs this node took over from a member it saw die, by egress IP.
    pub failovers: Family<Vec<(String, String)>, Counter>,
    /// The histograms.
    pub timings: Timings,
    /// The labels of the per-Egress traffic series (the Egresses with traffic here).
    pub egresses: SharedEgressLabels,
    /// The egress IPs this node hosts, as last programmed.
    pub hosted_ips: RwLock<Vec<std::net::IpAddr>>,
    /// Flows SNATed to each egress IP hosted here.
    pub snat_entries: Family<Vec<(String, String)>, Gauge>,
    /// Per egress IP hosted here, its busiest destination's share of the source ports.
    pub snat_utilization: Family<Vec<(String, String)>, Gauge<f64, AtomicU64>>,
}

/// The agent's histograms.
#[derive(Debug)]
pub struct Timings {
    /// Duration of each datapath sync that ran (seconds).
    pub sync_seconds: Histogram,
    /// From this node seeing a member's death verdict to its announcement of an egress IP that
    /// member held (seconds).
    pub takeover_seconds: Histogram,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            // 1 ms .. about 16 s.
            sync_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            // Around the target (1 s), which is a bucket bound.
            takeover_seconds: Histogram::new([
                0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
            ]),
        }
    }
}

/// The audit log's metrics.
#[derive(Debug, Default)]
pub struct AuditMetrics {
    /// Records written, by verdict.
    pub records: Family<Vec<(String, String)>, Counter>,
    /// Logged packets that gave no line, by reason (`rate_limit`, `overrun`: the kernel's
    /// socket buffer was full, counted per overrun not per packet; `unknown_decision`,
    /// `unknown_pod`, `unreadable`).
    pub dropped: Family<Vec<(String, String)>, Counter>,
    /// Failed writes to the audit log file (or standard output).
    pub write_errors: Counter,
    /// 1 while the NFLOG group is bound and records are received.
    pub up: Gauge,
}

/// A metric's label pairs.
type Labels = Vec<(String, String)>;

/// `N` label pairs borrowed from what the collector reads.
type Borrowed<'a, const N: usize> = [(&'static str, &'a str); N];

/// What the per-Egress traffic series of one Egress are labelled with on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressLabel {
    /// Its egress IPs here, sorted, comma-separated (one for now).
    pub egress_ip: String,
    /// Whether this node is a gateway of the Egress (hosts one of its IPs): then its counter
    /// holds everything of the Egress that leaves through this node, its own pods' and what
    /// other nodes steered here; on other nodes only what their pods send.
    pub gateway: bool,
}

/// The Egresses with traffic on this node, by name, as last programmed.
pub type SharedEgressLabels = Arc<RwLock<BTreeMap<String, EgressLabel>>>;

/// The labels of every Egress of `plan` (pure).
pub fn egress_labels(plan: &egret_core::planner::NodePlan) -> BTreeMap<String, EgressLabel> {
    let mut ips: BTreeMap<&str, std::collections::BTreeSet<std::net::IpAddr>> = BTreeMap::new();
    for s in &plan.steer {
        if let Some(ip) = s.egress_ip {
            ips.entry(&s.egress).or_default().insert(ip);
        }
    }
    for s in &plan.snat {
        ips.entry(&s.egress).or_default().insert(s.egress_ip);
    }
    plan.egresses
        .iter()
        .map(|e| {
            let egress_ip =
                ips.get(e.as_str()).map(|s| s.iter().map(ToString::to_string).collect::<Vec<_>>().join(","));
            let gateway = plan.hosted.iter().any(|h| h.egresses.contains(e));
            (e.clone(), EgressLabel { egress_ip: egress_ip.unwrap_or_default(), gateway })
        })
        .collect()
}

/// The counters [`CounterCollector`] makes at scrape time (only those with data appear).
pub const COLLECTED: [&str; 6] = [
    "egret_policy_rule_packets",
    "egret_policy_rule_bytes",
    "egret_egress_packets",
    "egret_egress_bytes",
    "egret_egress_connections",
    "egret_egress_dropped_packets",
];

/// The series read from the nft counters at each scrape (one netlink dump for all):
/// - per policy rule: packets and bytes each rule (or policy default) decided. Only a
///   connection's first packet is decided; later packets follow conntrack.
/// - per Egress: packets and bytes of the traffic leaving through it that passed this node
///   (original direction).
#[derive(Debug)]
pub struct CounterCollector {
    /// The plan's decisions, by chain.
    pub index: crate::audit::SharedIndex,
    /// The Egresses with traffic here.
    pub egresses: SharedEgressLabels,
}

impl Collector for CounterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Read guards, not copies: the agent loop replaces these rarely, and a scrape with
        // 1,000 Egresses should not allocate for what it only reads.
        let idx = self.index.read().unwrap_or_else(|e| e.into_inner());
        let egresses = self.egresses.read().unwrap_or_else(|e| e.into_inner());
        if idx.decisions().is_empty() && egresses.is_empty() {
            return Ok(());
        }
        let counters = match egret_datapath::read_counters() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("reading the nft counters: {e}");
                return Ok(());
            }
        };
        let rules: Vec<(Labels, u64, u64)> = idx
            .decisions()
            .iter()
            .filter_map(|(chain, d)| {
                let c = counters.get(chain)?;
                Some((crate::audit::rule_labels(&d.by, d.verdict)?, c.packets, c.bytes))
            })
            .collect();
        // One pass over the counters, each told by its name what it counts:
        // - an Egress's traffic that passed this node;
        // - new connections of an Egress, counted on its gateway where they are SNATed;
        // - fail-closed drops by Egress and reason (their counters exist only while some traffic
        //   of the Egress is set to be dropped here, and `no_snat` on every node with Egresses).
        let mut traffic: Vec<(Borrowed<3>, u64, u64)> = Vec::with_capacity(egresses.len());
        let mut conns: Vec<(Borrowed<2>, u64)> = Vec::new();
        let mut dropped: Vec<(Borrowed<2>, u64)> = Vec::new();
        for (name, c) in &counters {
            use egret_datapath::nft::CounterKind;
            match egret_datapath::nft::counter_kind(name) {
                Some(CounterKind::Egress(e)) => {
                    if let Some((e, l)) = egresses.get_key_value(e) {
                        let gateway = if l.gateway { "true" } else { "false" };
                        let labels =
                            [("egress", e.as_str()), ("egress_ip", l.egress_ip.as_str()), ("gateway", gateway)];
                        traffic.push((labels, c.packets, c.bytes));
                    }
                }
                Some(CounterKind::Connections(e)) => {
                    if let Some((e, l)) = egresses.get_key_value(e) {
                        conns.push(([("egress", e.as_str()), ("egress_ip", l.egress_ip.as_str())], c.packets));
                    }
                }
                Some(CounterKind::Dropped(e, reason)) => {
                    dropped.push(([("egress", e), ("reason", reason.label())], c.packets));
                }
                None => {}
            }
        }
        let [rule_packets, rule_bytes, egress_packets, egress_bytes, egress_connections, egress_dropped] = COLLECTED;
        for (rows, name, help) in [
            (&conns, egress_connections, "New connections leaving through each Egress, counted on its gateway"),
            (
                &dropped,
                egress_dropped,
                "Packets of each Egress dropped to fail closed, by reason (egress is empty where the node cannot tell)",
            ),
        ] {
            if rows.is_empty() {
                continue;
            }
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, n) in rows {
                ConstCounter::new(*n).encode(family.encode_family(labels)?)?;
            }
        }
        if !traffic.is_empty() {
            for (name, help, bytes) in [
                (
                    egress_packets,
                    "Packets leaving through each Egress that passed this node (original direction)",
                    false,
                ),
                (egress_bytes, "Bytes leaving through each Egress that passed this node", true),
            ] {
                let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                for (labels, packets, b) in &traffic {
                    ConstCounter::new(if bytes { *b } else { *packets }).encode(family.encode_family(labels)?)?;
                }
            }
        }
        for (rows, name, help, bytes) in [
            (&rules, rule_packets, "Packets each policy rule (or default) decided: a connection's first packet", false),
            (&rules, rule_bytes, "Bytes of the packets each policy rule (or default) decided", true),
        ] {
            if rows.is_empty() {
                continue;
            }
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, packets, b) in rows {
                let v = if bytes { *b } else { *packets };
                ConstCounter::new(v).encode(family.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Metrics {
        let mut m = Metrics::default();
        m.registry.register("egret_audit_records", "Audit log records written, by verdict", m.audit.records.clone());
        m.registry.register(
            "egret_audit_dropped",
            "Audited packets that gave no record, by reason",
            m.audit.dropped.clone(),
        );
        m.registry.register(
            "egret_audit_up",
            "1 while the audit log receives audited connections from the kernel",
            m.audit.up.clone(),
        );
        m.registry.register(
            "egret_audit_write_errors",
            "Failed writes to the audit log file",
            m.audit.write_errors.clone(),
        );
        m.registry.register(
            "egret_egress_ip_conflicts",
            "Egress IPs seen held by more than one live node",
            m.conflicts.clone(),
        );
        m.registry.register("egret_datapath_syncs", "Datapath syncs by result", m.syncs.clone());
        m.registry.register("egret_datapath_sync_failures", "Failed datapath syncs by reason", m.sync_failures.clone());
        m.registry.register(
            "egret_datapath_sync_duration_seconds",
            "Duration of each datapath sync that ran",
            m.timings.sync_seconds.clone(),
        );
        m.registry.register(
            "egret_datapath_last_sync_timestamp_seconds",
            "When the datapath last synced successfully (Unix time)",
            m.last_sync.clone(),
        );
        m.registry.register(
            "egret_datapath_map_elements",
            "Elements of each map and set of Egret's nft table, as last programmed",
            m.map_elements.clone(),
        );
        m.registry.register(
            "egret_placement_changes",
            "Egress IPs this node started (added) or stopped (removed) hosting",
            m.placement_changes.clone(),
        );
        m.registry.register(
            "egret_failovers",
            "Egress IPs this node took over from a member it saw die, by egress IP",
            m.failovers.clone(),
        );
        m.registry.register(
            "egret_failover_takeover_seconds",
            "From this node seeing a member's death verdict to its announcement of an egress IP that member held",
            m.timings.takeover_seconds.clone(),
        );
        m.registry.register("egret_hosted_egress_ips", "Egress IPs this node hosts", m.hosted.clone());
        m.registry.register(
            "egret_snat_conntrack_entries",
            "Flows SNATed to each egress IP this node hosts",
            m.snat_entries.clone(),
        );
        m.registry.register(
            "egret_snat_port_utilization",
            "Per egress IP hosted here, the share of its source ports used toward its busiest destination",
            m.snat_utilization.clone(),
        );
        m.registry.register("egret_gossip_members", "Gossip members by status", m.members.clone());
        // A counter: the text encoding adds the `_total` suffix.
        m.registry.register(
            "egret_gossip_rejected_datagrams",
            "Gossip datagrams dropped, by reason",
            m.gossip_rejected.clone(),
        );
        m
    }

    /// Counts what the gossip layer rejected since `before`, by reason.
    pub fn gossip_counters(&self, now: &egret_gossip::Counters, before: &egret_gossip::Counters) {
        for (reason, n, b) in [
            ("malformed", now.rejected_malformed, before.rejected_malformed),
            ("unencrypted", now.rejected_unencrypted, before.rejected_unencrypted),
            ("auth", now.rejected_auth, before.rejected_auth),
            ("stale", now.rejected_stale, before.rejected_stale),
            ("replay", now.rejected_replay, before.rejected_replay),
            ("invalid_content", now.invalid_content, before.invalid_content),
        ] {
            if n > b {
                self.gossip_rejected.get_or_create(&vec![("reason".into(), reason.into())]).inc_by(n - b);
            }
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Every metric of the controller.
#[derive(Debug, Default)]
pub struct ControllerMetrics {
    /// The registry they are in.
    pub registry: Registry,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
    /// Status writes by kind and result (`ok`, `error`).
    pub status_writes: Family<Vec<(String, String)>, Counter>,
    /// Gossip members by status as this replica sees them.
    pub members: Family<Vec<(String, String)>, Gauge>,
    /// Addresses of each pool (leader only).
    pub pool_addresses: Family<Vec<(String, String)>, Gauge>,
    /// Addresses of each pool allocated to Egresses (leader only).
    pub pool_allocated: Family<Vec<(String, String)>, Gauge>,
    /// Egresses with an egress IP that no live node hosts: their traffic is dropped (leader
    /// only).
    pub unplaced: Gauge,
    /// The pools the gauges were last set for.
    pub pools_seen: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl ControllerMetrics {
    /// Creates and registers the metrics.
    pub fn new() -> ControllerMetrics {
        let mut m = ControllerMetrics::default();
        m.registry.register("egret_controller_leader", "1 while this replica holds the leader Lease", m.leader.clone());
        m.registry.register(
            "egret_controller_status_writes",
            "Status writes by kind and result",
            m.status_writes.clone(),
        );
        m.registry.register("egret_gossip_members", "Gossip members by status", m.members.clone());
        m.registry.register("egret_pool_addresses", "Addresses of each pool", m.pool_addresses.clone());
        m.registry.register(
            "egret_pool_allocated_addresses",
            "Addresses of each pool allocated to Egresses",
            m.pool_allocated.clone(),
        );
        m.registry.register(
            "egret_egresses_unplaced",
            "Egresses with an egress IP that no live node hosts (their traffic is dropped)",
            m.unplaced.clone(),
        );
        m
    }

    /// Sets the pool and placement gauges from the statuses the leader computed.
    pub fn statuses(&self, s: &crate::controller::Statuses) {
        let mut seen = self.pools_seen.lock().unwrap_or_else(|e| e.into_inner());
        for (pool, _, next) in &s.pools {
            let l = vec![("pool".to_string(), pool.clone())];
            self.pool_addresses.get_or_create(&l).set(next.usage.total);
            self.pool_allocated.get_or_create(&l).set(next.usage.used);
        }
        // A deleted pool's series go with it (a full pool deleted must not alert on).
        let now: std::collections::BTreeSet<String> = s.pools.iter().map(|(p, _, _)| p.clone()).collect();
        for gone in seen.difference(&now) {
            let l = vec![("pool".to_string(), gone.clone())];
            self.pool_addresses.remove(&l);
            self.pool_allocated.remove(&l);
        }
        *seen = now;
        let unplaced = s.egresses.iter().filter(|(_, _, e)| e.egress_ip.is_some() && e.egress_node.is_none()).count();
        self.unplaced.set(unplaced as i64);
    }

    /// A standby says nothing about pools and placement: only the leader computes them.
    pub fn standby(&self) {
        self.pool_addresses.clear();
        self.pool_allocated.clear();
        self.pools_seen.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.unplaced.set(0);
    }

    /// Counts one status write.
    pub fn wrote(&self, kind: &str, ok: bool) {
        self.wrote_n(kind, ok, 1);
    }

    /// Counts `n` status writes.
    pub fn wrote_n(&self, kind: &str, ok: bool, n: u64) {
        let result = if ok { "ok" } else { "error" };
        self.status_writes
            .get_or_create(&vec![("kind".into(), kind.into()), ("result".into(), result.into())])
            .inc_by(n);
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use egret_core::planner::{Hosted, NodePlan, Snat, Steer, SteerAction};

    /// Every metric the agent and the controller export, as docs/metrics.md names them
    /// (counters with `_total`), with its type.
    fn exported() -> BTreeMap<String, String> {
        let mut agent = Metrics::new();
        let dns = egret_dns::DnsMetrics::default();
        dns.register(&mut agent.registry);
        // A family appears in the exposition once it has a child.
        let l = vec![("x".to_string(), "y".to_string())];
        let _ = agent.syncs.get_or_create(&l);
        let _ = agent.sync_failures.get_or_create(&l);
        let _ = agent.members.get_or_create(&l);
        let _ = agent.map_elements.get_or_create(&l);
        let _ = agent.failovers.get_or_create(&l);
        let _ = agent.placement_changes.get_or_create(&l);
        let _ = agent.gossip_rejected.get_or_create(&l);
        let _ = agent.snat_entries.get_or_create(&l);
        let _ = agent.snat_utilization.get_or_create(&l);
        let _ = agent.audit.records.get_or_create(&l);
        let _ = agent.audit.dropped.get_or_create(&l);
        let _ = dns.queries.get_or_create(&l);
        let controller = ControllerMetrics::new();
        let _ = controller.status_writes.get_or_create(&l);
        let _ = controller.members.get_or_create(&l);
        let _ = controller.pool_addresses.get_or_create(&l);
        let _ = controller.pool_allocated.get_or_create(&l);
        let text = format!("{}{}", agent.encode(), controller.encode());
        let mut out = BTreeMap::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                let name = if kind == "counter" { format!("{name}_total") } else { name.to_string() };
                out.insert(name, kind.to_string());
            }
        }
        for name in COLLECTED {
            out.insert(format!("{name}_total"), "counter".into());
        }
        out
    }

    fn repo_file(path: &str) -> String {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn docs_list_exactly_the_metrics_exported() {
        let exported = exported();
        let documented: BTreeMap<String, String> = repo_file("docs/metrics.md")
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
                name.starts_with("egret_").then(|| (name.to_string(), cells.get(2).unwrap_or(&"").to_string()))
            })
            .collect();
        let names = |m: &BTreeMap<String, String>| m.keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(&documented), names(&exported), "docs/metrics.md vs what is registered");
        for (name, kind) in &exported {
            assert_eq!(&documented[name], kind, "{name}: documented type");
        }
    }

    /// How many metric names `text` uses; panics on one nothing exports.
    fn uses_only_exported(what: &str, text: &str, exported: &BTreeMap<String, String>) -> usize {
        let mut used = 0;
        for token in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !token.starts_with("egret_") {
                continue;
            }
            used += 1;
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| token.strip_suffix(s).filter(|b| exported.get(*b).is_some_and(|k| k == "histogram")))
                .unwrap_or(token);
            assert!(exported.contains_key(base), "{what} uses {token}, which nothing exports");
        }
        used
    }

    #[test]
    fn alerting_rules_use_only_exported_metrics() {
        let rules = repo_file("deploy/monitoring/alerts.yaml");
        let used = uses_only_exported("deploy/monitoring/alerts.yaml", &rules, &exported());
        assert!(used >= 7, "only {used} metric names found in the rules");
    }

    #[test]
    fn the_dashboard_queries_only_exported_metrics() {
        let exported = exported();
        let dash: serde_json::Value =
            serde_json::from_str(&repo_file("deploy/monitoring/grafana-dashboard.json")).unwrap();
        let panels = dash["panels"].as_array().unwrap();
        assert!(!panels.is_empty());
        for p in panels {
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
            for t in targets {
                let expr = t["expr"].as_str().unwrap();
                let used = uses_only_exported(&format!("dashboard panel {}", p["title"]), expr, &exported);
                assert!(used >= 1, "panel {}: {expr} uses no Egret metric", p["title"]);
            }
        }
    }

    #[test]
    fn egress_series_are_labelled_with_their_ip_and_whether_this_node_is_a_gateway() {
        let steer = |egress: &str, ip: Option<&str>, action| Steer {
            source: "10.244.1.10".parse().unwrap(),
            destination: "0.0.0.0/0".parse().unwrap(),
            egress: egress.into(),
            action,
            egress_ip: ip.map(|i| i.parse().unwrap()),
        };
        let plan = NodePlan {
            node: "node-1".into(),
            egresses: vec!["web".into(), "db".into(), "closed".into()],
            steer: vec![
                steer("web", Some("10.10.0.200"), SteerAction::Local),
                steer("db", Some("10.10.0.201"), SteerAction::Tunnel { gateway: "node-2".into() }),
                steer("closed", None, SteerAction::Drop),
            ],
            snat: vec![Snat {
                source: "10.244.2.10".parse().unwrap(),
                destination: "0.0.0.0/0".parse().unwrap(),
                egress: "web".into(),
                egress_ip: "10.10.0.200".parse().unwrap(),
            }],
            hosted: vec![Hosted { ip: "10.10.0.200".parse().unwrap(), egresses: vec!["web".into()], subnet: None }],
            ..NodePlan::default()
        };
        let l = egress_labels(&plan);
        assert_eq!(l["web"], EgressLabel { egress_ip: "10.10.0.200".into(), gateway: true });
        assert_eq!(l["db"], EgressLabel { egress_ip: "10.10.0.201".into(), gateway: false });
        // Fail closed: no IP to name.
        assert_eq!(l["closed"], EgressLabel { egress_ip: String::new(), gateway: false });
    }

    #[test]
    fn rejected_gossip_datagrams_are_a_counter_named_by_the_convention() {
        let m = Metrics::new();
        let mut before = egret_gossip::Counters::default();
        let mut now = before;
        now.rejected_auth = 3;
        m.gossip_counters(&now, &before);
        before = now;
        now.rejected_auth = 4;
        now.rejected_replay = 2;
        m.gossip_counters(&now, &before);
        let text = m.encode();
        assert!(text.contains("# TYPE egret_gossip_rejected_datagrams counter"), "{text}");
        assert!(text.contains(r#"egret_gossip_rejected_datagrams_total{reason="auth"} 4"#), "{text}");
        assert!(text.contains(r#"egret_gossip_rejected_datagrams_total{reason="replay"} 2"#), "{text}");
    }
}
