//! What an agent reports about itself, in `DIR/.agents/<node>.json`: liveness (a heartbeat
//! until gossip takes over), the egress IPs it hosts, and how far it has programmed the store.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// One agent's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct AgentReport {
    /// Node name.
    pub node: String,
    /// Process id of the agent.
    pub pid: u32,
    /// Unix milliseconds of the last heartbeat.
    pub heartbeat_ms: u64,
    /// Whether the datapath matches the latest plan.
    pub ready: bool,
    /// Whether this node may host egress IPs now: it has a gossip key, its membership view has
    /// settled, its datapath is in sync, and it has programmed the plan that has it eligible
    /// (what it announces by gossip).
    #[serde(default)]
    pub may_host: bool,
    /// Egress IPs this node hosts now.
    pub hosted: Vec<IpAddr>,
    /// The store stamp ([`crate::Store::stamp`]) of the last state fully programmed; how the
    /// store-change-to-datapath latency is measured.
    pub programmed_stamp_ms: u64,
    /// Unix milliseconds when that state was programmed.
    pub programmed_at_ms: u64,
    /// With a Kubernetes source: per kind, the resourceVersion of the last change of that kind
    /// in the state programmed (each kind's watch is ordered, the kinds are not with respect to
    /// each other, so one number cannot say "everything up to here").
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub programmed_versions: std::collections::BTreeMap<String, u64>,
    /// The gossip membership as this agent sees it (empty without gossip).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberReport>,
    /// The last error, if the last sync failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// One gossip member as an agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberReport {
    /// Node name.
    pub name: String,
    /// Its gossip address.
    pub ip: IpAddr,
    /// `Alive`, `Suspect` or `Dead`.
    pub status: String,
}
