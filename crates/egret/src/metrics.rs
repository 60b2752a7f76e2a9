//! The agent's Prometheus metrics (served on `/metrics`).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

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
    pub gossip_rejected: Counter,
    /// The audit log's counts.
    pub audit: Arc<AuditMetrics>,
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

/// Per policy rule: packets and bytes each rule (or policy default) decided, read from the
/// decision chains' nft counters at each scrape. Only a connection's first packet is decided;
/// later packets follow conntrack.
#[derive(Debug)]
pub struct PolicyRuleCollector {
    /// The datapath settings (the `nft` program).
    pub cfg: egret_datapath::Config,
    /// The plan's decisions, by chain.
    pub index: crate::audit::SharedIndex,
}

impl Collector for PolicyRuleCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let idx = self.index.read().map(|i| i.clone()).unwrap_or_else(|e| e.into_inner().clone());
        if idx.decisions().is_empty() {
            return Ok(());
        }
        let counters = match egret_datapath::read_counters(&self.cfg) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("reading the policy rule counters: {e}");
                return Ok(());
            }
        };
        let rows: Vec<(Labels, u64, u64)> = idx
            .decisions()
            .iter()
            .filter_map(|(chain, d)| {
                let c = counters.get(chain)?;
                Some((crate::audit::rule_labels(&d.by, d.verdict)?, c.packets, c.bytes))
            })
            .collect();
        for (name, help, bytes) in [
            (
                "egret_policy_rule_packets",
                "Packets each policy rule (or default) decided: a connection's first packet",
                false,
            ),
            ("egret_policy_rule_bytes", "Bytes of the packets each policy rule (or default) decided", true),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, packets, b) in &rows {
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
        m.registry.register("egret_hosted_egress_ips", "Egress IPs this node hosts", m.hosted.clone());
        m.registry.register("egret_gossip_members", "Gossip members by status", m.members.clone());
        // A counter: the text encoding adds the `_total` suffix.
        m.registry.register(
            "egret_gossip_rejected_datagrams",
            "Gossip datagrams dropped before membership processing",
            m.gossip_rejected.clone(),
        );
        m
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
        m
    }

    /// Counts one status write.
    pub fn wrote(&self, kind: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.status_writes.get_or_create(&vec![("kind".into(), kind.into()), ("result".into(), result.into())]).inc();
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
mod tests {
    use super::*;

    #[test]
    fn rejected_gossip_datagrams_are_a_counter_named_by_the_convention() {
        let m = Metrics::new();
        m.gossip_rejected.inc_by(3);
        let text = m.encode();
        assert!(text.contains("# TYPE egret_gossip_rejected_datagrams counter"), "{text}");
        assert!(text.contains("egret_gossip_rejected_datagrams_total 3"), "{text}");
    }
}
