//! The DNS proxy's metrics (registered by the agent under `egret_dns_`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Every metric of the proxy.
#[derive(Debug)]
pub struct DnsMetrics {
    /// Queries by protocol and result: `learned` (addresses programmed before the answer was
    /// released), `held` (every address already held long enough: released at once), `passed` (no rule of the pod names it, no address, or truncated),
    /// `no_rules`, `unusable`, `mismatched_answer`, `upstream_error`, `upstream_timeout`,
    /// `program_error`.
    pub queries: Family<Vec<(String, String)>, Counter>,
    /// Answers released before their addresses were programmed (`--fqdn-hold-timeout`).
    pub hold_timeouts: Counter,
    /// Set elements added or refreshed.
    pub learned: Counter,
    /// Addresses evicted by the per-name limit.
    pub evictions: Counter,
    /// Failed kernel writes.
    pub program_errors: Counter,
    /// 1 while the proxy's sockets are bound.
    pub up: Gauge,
    /// Seconds an answer was held until the kernel held its addresses.
    pub hold_seconds: Histogram,
    /// Seconds one kernel batch took.
    pub program_seconds: Histogram,
}

fn buckets() -> impl Iterator<Item = f64> {
    [
        0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.025, 0.05,
        0.1, 0.25,
    ]
    .into_iter()
}

impl Default for DnsMetrics {
    fn default() -> Self {
        DnsMetrics {
            queries: Family::default(),
            hold_timeouts: Counter::default(),
            learned: Counter::default(),
            evictions: Counter::default(),
            program_errors: Counter::default(),
            up: Gauge::default(),
            hold_seconds: Histogram::new(buckets()),
            program_seconds: Histogram::new(buckets()),
        }
    }
}

impl DnsMetrics {
    /// Registers clones of every metric (they share their values) in `r`.
    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("egret_dns");
        r.register("queries", "DNS queries of pods under name rules, by protocol and result", self.queries.clone());
        r.register(
            "hold_timeouts",
            "Answers released before their addresses were programmed",
            self.hold_timeouts.clone(),
        );
        r.register(
            "learned_addresses",
            "Learned addresses added to (or refreshed in) the kernel sets",
            self.learned.clone(),
        );
        r.register("evictions", "Learned addresses evicted by the per-name limit", self.evictions.clone());
        r.register("program_errors", "Failed writes of learned addresses to the kernel", self.program_errors.clone());
        r.register("proxy_up", "1 while the DNS proxy's sockets are bound", self.up.clone());
        r.register(
            "hold_seconds",
            "Time an answer was held until the kernel held its addresses",
            self.hold_seconds.clone(),
        );
        r.register("program_seconds", "Time of one kernel batch of learned addresses", self.program_seconds.clone());
    }
}
