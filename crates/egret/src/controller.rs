//! `egret controller --store DIR`: validates, allocates egress IPs and writes status back.

use crate::objects::StoreIndex;
use anyhow::Context;
use egret_core::planner::ClusterConfig;
use egret_core::status::{egress_statuses, pool_statuses};
use egret_store::{AgentReport, Store, now_ms};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;
use tracing::{info, warn};

/// Arguments of `egret controller`.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// The local store directory.
    #[arg(long)]
    pub store: PathBuf,
    /// An agent whose heartbeat is older than this is not alive.
    #[arg(long, default_value = "1500")]
    pub liveness_timeout_ms: u64,
    /// Re-evaluate at least this often (liveness changes have no file event).
    #[arg(long, default_value = "250", value_parser = clap::value_parser!(u64).range(1..))]
    pub resync_ms: u64,
    /// Service CIDRs (never steered).
    #[arg(long = "service-cidr", default_value = "10.96.0.0/12", value_delimiter = ',')]
    pub service_cidrs: Vec<ipnet::IpNet>,
    /// Addresses no pool may cover that no object names, e.g. the node network's router.
    #[arg(long = "reserved-ip", value_delimiter = ',')]
    pub reserved_ips: Vec<std::net::IpAddr>,
}

/// Nodes that may be given egress IPs: their agent's heartbeat is fresh, it reports it may host
/// (settled and in sync), and the agents' gossip does not declare it dead; and the IPs each
/// fresh, not dead node reports hosting. Gossip declares a dead node in well under a second, long
/// before its last heartbeat goes stale, so the controller follows failovers that fast.
pub fn liveness(
    reports: &[(String, AgentReport)],
    timeout_ms: u64,
) -> (BTreeSet<String>, BTreeMap<String, BTreeSet<IpAddr>>) {
    live_at(reports, timeout_ms, now_ms())
}

fn live_at(
    reports: &[(String, AgentReport)],
    timeout_ms: u64,
    now: u64,
) -> (BTreeSet<String>, BTreeMap<String, BTreeSet<IpAddr>>) {
    let fresh: Vec<&(String, AgentReport)> =
        reports.iter().filter(|(_, r)| now.saturating_sub(r.heartbeat_ms) <= timeout_ms).collect();
    // A node is dead by gossip when most fresh reports that carry a membership say so.
    let views: Vec<&AgentReport> = fresh.iter().map(|(_, r)| r).filter(|r| !r.members.is_empty()).collect();
    let dead_by_gossip = |node: &str| {
        let dead = views.iter().filter(|r| r.members.iter().any(|m| m.name == node && m.status == "Dead")).count();
        !views.is_empty() && dead * 2 > views.len()
    };
    let mut live = BTreeSet::new();
    let mut hosted = BTreeMap::new();
    for (node, r) in fresh {
        if !dead_by_gossip(node) {
            if r.may_host {
                live.insert(node.clone());
            }
            hosted.insert(node.clone(), r.hosted.iter().copied().collect());
        }
    }
    (live, hosted)
}

/// Logs the plan's warnings when they differ from the last ones logged (`logged`).
pub fn log_warnings(warnings: &[egret_core::planner::Warning], logged: &mut Vec<egret_core::planner::Warning>) {
    if warnings != logged.as_slice() {
        for w in warnings {
            warn!("plan: {w}");
        }
        *logged = warnings.to_vec();
    }
}

/// The live nodes and the IPs each reports hosting, as the last reconciliation acted on them.
pub type Liveness = (BTreeSet<String>, BTreeMap<String, BTreeSet<IpAddr>>);

/// One reconciliation: feeds what changed in the store into the index, then writes statuses.
/// Returns how many statuses were written.
pub fn reconcile(
    store: &Store,
    objects: &mut StoreIndex,
    args: &ControllerArgs,
    logged: &mut Vec<egret_core::planner::Warning>,
    last: &mut Option<Liveness>,
) -> anyhow::Result<usize> {
    let changed = objects.poll();
    if !objects.index.is_synced() || !objects.loaded_clean {
        return Ok(0);
    }
    let reports: Vec<(String, AgentReport)> = store.read_reports();
    let seen = liveness(&reports, args.liveness_timeout_ms);
    // The periodic tick only re-reads the agents' reports: nothing else to do unless the
    // objects or what the agents report changed.
    if !changed && last.as_ref() == Some(&seen) {
        return Ok(0);
    }
    let (live, hosted) = last.insert(seen).clone();
    let ix = &mut objects.index;
    ix.set_live(&live);
    let plan = ix.control_plan();
    let problems = ix.validation_problems().to_vec();
    log_warnings(&ix.warnings(), logged);
    let all: Vec<(String, Option<egret_api::v1alpha1::EgressStatus>)> =
        ix.api_egresses().into_iter().filter_map(|e| Some((e.metadata.name?, e.status))).collect();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let egresses = egress_statuses(&plan, &all, &problems, &hosted, &now);
    let written = store.write_statuses(&egresses, &pool_statuses(&plan))?;
    if written > 0 {
        info!(written, live = live.len(), problems = problems.len(), "status updated");
    }
    Ok(written)
}

/// Runs until interrupted.
pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let store = Store::open(&args.store).with_context(|| format!("opening store {}", args.store.display()))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _watch = egret_store::watch(store.dir(), move || {
        let _ = tx.send(());
    })?;
    info!(store = %args.store.display(), "controller started");
    let config = ClusterConfig {
        service_cidrs: args.service_cidrs.clone(),
        internal_cidrs: Vec::new(),
        reserved: args.reserved_ips.clone(),
    };
    let mut objects = StoreIndex::new(store.clone(), config);
    let mut tick = tokio::time::interval(Duration::from_millis(args.resync_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut logged = Vec::new();
    let mut last = None;
    loop {
        if let Err(e) = reconcile(&store, &mut objects, &args, &mut logged, &mut last) {
            warn!("reconcile: {e:#}");
        }
        tokio::select! {
            _ = rx.recv() => { while rx.try_recv().is_ok() {} }
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    info!("controller stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use egret_store::MemberReport;

    fn report(node: &str, heartbeat: u64, dead: &[&str]) -> (String, AgentReport) {
        let members = ["node-1", "node-2", "node-3"]
            .iter()
            .map(|n| MemberReport {
                name: n.to_string(),
                ip: "10.10.0.1".parse().unwrap(),
                status: if dead.contains(n) { "Dead".into() } else { "Alive".into() },
            })
            .collect();
        (
            node.to_string(),
            AgentReport {
                node: node.into(),
                heartbeat_ms: heartbeat,
                members,
                may_host: true,
                ..AgentReport::default()
            },
        )
    }

    #[test]
    fn gossip_verdict_beats_a_fresh_heartbeat() {
        // node-1 died 200 ms ago: its last heartbeat is still fresh, the others' gossip says Dead.
        let reports =
            vec![report("node-1", 800, &[]), report("node-2", 1000, &["node-1"]), report("node-3", 1000, &["node-1"])];
        let (live, _) = live_at(&reports, 1500, 1000);
        assert_eq!(live.into_iter().collect::<Vec<_>>(), vec!["node-2", "node-3"]);
        // One dissenting view is not a majority.
        let reports =
            vec![report("node-1", 800, &[]), report("node-2", 1000, &["node-1"]), report("node-3", 1000, &[])];
        assert_eq!(live_at(&reports, 1500, 1000).0.len(), 3);
        // A stale heartbeat is dead without gossip.
        let reports = vec![(String::from("node-1"), AgentReport { heartbeat_ms: 0, ..AgentReport::default() })];
        assert!(live_at(&reports, 1500, 5000).0.is_empty());
    }

    #[test]
    fn a_node_that_may_not_host_gets_no_egress_ip_but_its_holdings_count() {
        // node-2 is alive but not eligible (settling, or its datapath sync fails).
        let mut reports = vec![report("node-1", 1000, &[]), report("node-2", 1000, &[]), report("node-3", 1000, &[])];
        reports[1].1.may_host = false;
        reports[1].1.hosted = vec!["10.10.0.11".parse().unwrap()];
        let (live, hosted) = live_at(&reports, 1500, 1000);
        assert_eq!(live.into_iter().collect::<Vec<_>>(), vec!["node-1", "node-3"]);
        assert_eq!(hosted["node-2"].len(), 1, "what it still holds is reported");
    }
}
