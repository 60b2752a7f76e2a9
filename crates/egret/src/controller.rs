//! `egret controller`: validates objects, allocates egress IPs and writes status back, from
//! and to the local store (`--store DIR`) or the Kubernetes API (`--source kubernetes`).
//!
//! On Kubernetes, every replica keeps its index warm from the watchers and joins the agents'
//! gossip as a member that never hosts (so it sees, like the agents do, which nodes are alive
//! and which egress IPs each one holds); only the holder of the Lease writes status, by
//! server-side apply. A new leader acts at once: its index and its gossip view are already
//! current, and allocations are read back from status, never re-numbered.

use crate::metrics::ControllerMetrics;
use crate::objects::{KubeArgs, Objects, SourceKind};
use anyhow::{Context, bail};
use egret_api::v1alpha1::{EgressStatus, ExternalIPPoolStatus};
use egret_core::event::{Kind, ObjectRef};
use egret_core::index::Index;
use egret_core::planner::{ClusterConfig, Warning};
use egret_core::status::{egress_statuses, pool_statuses};
use egret_gossip::{Gossip, GossipConfig, GossipKeys, MemberStatus, View};
use egret_kube::lease::{LeaderElector, LeaseConfig};
use egret_kube::status::{Notice, Reporter, StatusWriter, antrea_vocabulary};
use egret_store::{AgentReport, Store, now_ms};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Arguments of `egret controller`.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Where objects come from and status goes.
    #[arg(long, value_enum, default_value = "store")]
    pub source: SourceKind,
    /// The local store directory (with `--source store`).
    #[arg(long)]
    pub store: Option<PathBuf>,
    #[command(flatten)]
    pub kube: KubeArgs,
    /// An agent whose heartbeat is older than this is not alive (store source).
    #[arg(long, default_value = "1500")]
    pub liveness_timeout_ms: u64,
    /// Re-evaluate at least this often (liveness changes have no object event).
    #[arg(long, default_value = "250", value_parser = clap::value_parser!(u64).range(1..))]
    pub resync_ms: u64,
    /// Service CIDRs (never steered).
    #[arg(long = "service-cidr", default_value = "10.96.0.0/12", value_delimiter = ',')]
    pub service_cidrs: Vec<ipnet::IpNet>,
    /// Addresses no pool may cover that no object names, e.g. the node network's router.
    #[arg(long = "reserved-ip", value_delimiter = ',')]
    pub reserved_ips: Vec<std::net::IpAddr>,
    /// The namespace of the leader Lease (on a cluster, the controller's own).
    #[arg(long, env = "EGRET_NAMESPACE", default_value = "egret-system")]
    pub namespace: String,
    /// The name of the leader Lease.
    #[arg(long, default_value = "egret-controller")]
    pub lease_name: String,
    /// This replica's identity in the Lease and in gossip (on a cluster, its pod name).
    #[arg(long, env = "EGRET_POD_NAME")]
    pub identity: Option<String>,
    /// How long the other replicas wait after the leader's last renewal before taking over.
    #[arg(long, default_value = "15000")]
    pub lease_duration_ms: u64,
    /// How long a leader keeps writing after its last successful renewal (shorter than the
    /// lease duration: it stops before anyone else may start).
    #[arg(long, default_value = "10000")]
    pub renew_deadline_ms: u64,
    /// Time between election rounds.
    #[arg(long, default_value = "2000")]
    pub retry_period_ms: u64,
    /// The agents' gossip key file (required with `--source kubernetes`: the controller learns
    /// which nodes are alive and which egress IPs they hold by gossip).
    #[arg(long)]
    pub gossip_key_file: Option<PathBuf>,
    /// UDP port of gossip on the nodes (the agents' `--gossip-port`).
    #[arg(long, default_value = "7947")]
    pub gossip_port: u16,
    /// This replica's own gossip address (default: `$EGRET_POD_IP` on the gossip port).
    #[arg(long)]
    pub gossip_addr: Option<SocketAddr>,
    /// Where to serve /healthz, /readyz and /metrics (none when not given).
    #[arg(long)]
    pub health_addr: Option<SocketAddr>,
    /// This replica's address, for the default `--gossip-addr` (on a cluster, from the downward
    /// API: `status.podIP`).
    #[arg(long, env = "EGRET_POD_IP", hide = true)]
    pub pod_ip: Option<IpAddr>,
}

/// Nodes that may be given egress IPs: their agent's heartbeat is fresh, it reports it may host
/// (settled and in sync), and the agents' gossip does not declare it dead; and the IPs each
/// fresh, not dead node reports hosting. Gossip declares a dead node in well under a second, long
/// before its last heartbeat goes stale, so the controller follows failovers that fast.
pub fn liveness(reports: &[(String, AgentReport)], timeout_ms: u64) -> Liveness {
    live_at(reports, timeout_ms, now_ms())
}

fn live_at(reports: &[(String, AgentReport)], timeout_ms: u64, now: u64) -> Liveness {
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

/// The same from a gossip view (the controller's own, on a cluster): the members that are not
/// dead and announce they may host, and the IPs every member that is not dead announces.
pub fn liveness_of_view(v: &View) -> Liveness {
    let live = v.eligible().into_iter().map(str::to_string).collect();
    let hosted = v
        .members
        .iter()
        .filter(|m| m.status != MemberStatus::Dead && !m.hosted.is_empty())
        .map(|m| (m.name.clone(), m.hosted.iter().copied().collect()))
        .collect();
    (live, hosted)
}

/// The plan's warnings and the policies left out for their problems (a policy has no status to
/// carry them: the log names the object and field).
pub fn warnings_with_policies(ix: &mut Index) -> Vec<Warning> {
    let mut w = ix.warnings();
    w.extend(ix.policies().problems.iter().map(|p| Warning {
        object: format!("{}/{}", p.kind, p.name),
        field: p.field.clone(),
        reason: format!("{} (the policy is left out until fixed)", p.reason),
    }));
    w.extend(ix.policies().warnings.iter().map(|p| Warning {
        object: format!("{}/{}", p.kind, p.name),
        field: p.field.clone(),
        reason: p.reason.clone(),
    }));
    w
}

/// Logs the plan's warnings when they differ from the last ones logged (`logged`).
pub fn log_warnings(warnings: &[Warning], logged: &mut Vec<Warning>) {
    if warnings != logged.as_slice() {
        for w in warnings {
            // The object as fields, and an Egress's name as `egress` like every other line.
            match w.object.strip_prefix("Egress/") {
                Some(egress) => warn!(object = %w.object, field = %w.field, %egress, "plan: {w}"),
                None => warn!(object = %w.object, field = %w.field, "plan: {w}"),
            }
        }
        *logged = warnings.to_vec();
    }
}

/// The live nodes and the IPs each reports hosting, as the last reconciliation acted on them.
pub type Liveness = (BTreeSet<String>, BTreeMap<String, BTreeSet<IpAddr>>);

/// The statuses a reconciliation computes for every Egress and pool.
pub struct Statuses {
    /// Each Egress: its name, the status it carries now, the one it should carry.
    pub egresses: Vec<(String, Option<EgressStatus>, EgressStatus)>,
    /// Each pool: its name, the status it carries now, the one it should carry.
    pub pools: Vec<(String, Option<ExternalIPPoolStatus>, ExternalIPPoolStatus)>,
}

impl Statuses {
    /// Only the statuses that differ from what the objects carry.
    pub fn changed(self) -> Statuses {
        Statuses {
            egresses: self.egresses.into_iter().filter(|(_, now, next)| now.as_ref() != Some(next)).collect(),
            pools: self.pools.into_iter().filter(|(_, now, next)| now.as_ref() != Some(next)).collect(),
        }
    }
}

/// The statuses every Egress and pool should carry, given who is live and who hosts what;
/// `vocabulary` maps an Egress status onto the condition reasons the destination uses. Pure.
pub fn statuses(
    ix: &mut Index,
    (live, hosted): &Liveness,
    now: &str,
    vocabulary: fn(&EgressStatus) -> EgressStatus,
    logged: &mut Vec<Warning>,
) -> Statuses {
    ix.set_live(live);
    let plan = ix.control_plan();
    let problems = ix.validation_problems().to_vec();
    log_warnings(&warnings_with_policies(ix), logged);
    let all: Vec<(String, Option<EgressStatus>)> =
        ix.api_egresses().into_iter().filter_map(|e| Some((e.metadata.name?, e.status))).collect();
    let current: HashMap<String, Option<EgressStatus>> = all.iter().cloned().collect();
    let egresses = egress_statuses(&plan, &all, &problems, hosted, now)
        .into_iter()
        .map(|(name, next)| {
            let now = current.get(&name).cloned().flatten();
            (name, now, vocabulary(&next))
        })
        .collect();
    let pools_now: HashMap<String, Option<ExternalIPPoolStatus>> =
        ix.api_pools().into_iter().filter_map(|p| Some((p.metadata.name?, p.status))).collect();
    let pools = pool_statuses(&plan)
        .into_iter()
        .map(|(name, next)| {
            let now = pools_now.get(&name).cloned().flatten();
            (name, now, next)
        })
        .collect();
    Statuses { egresses, pools }
}

/// The condition an Egress that does not parse carries, beside those of its last good version.
pub const VALID: &str = "Valid";

/// Marks the Egresses in `unreadable` (name -> field and reason) with a `Valid` condition
/// (`False`, reason `Unparsable`), keeping what their last good version gives (the index acts on
/// it); an Egress that never parsed gets that condition alone. The condition keeps its
/// `lastTransitionTime` while it stays. Pure.
pub fn mark_unreadable(s: &mut Statuses, unreadable: &BTreeMap<String, String>, now: &str) {
    for (name, why) in unreadable {
        let prev_time = |prev: Option<&EgressStatus>| {
            prev.and_then(|p| p.conditions.iter().find(|c| c.type_ == VALID && c.status == "False"))
                .and_then(|c| c.last_transition_time.clone())
        };
        let known = s.egresses.iter().any(|(n, _, _)| n == name);
        if !known {
            s.egresses.push((name.clone(), None, EgressStatus::default()));
        }
        for (n, prev, next) in s.egresses.iter_mut().filter(|(n, _, _)| n == name) {
            let acting = if known { "acting on its last version that parsed" } else { "no version of it parsed yet" };
            next.conditions.retain(|c| c.type_ != VALID);
            next.conditions.push(egret_api::v1alpha1::EgressCondition {
                type_: VALID.into(),
                status: "False".into(),
                reason: "Unparsable".into(),
                message: format!("Egress {n} does not parse: {why}; {acting}"),
                last_transition_time: Some(prev_time(prev.as_ref()).unwrap_or_else(|| now.to_string())),
            });
        }
    }
}

fn cluster_config(args: &ControllerArgs) -> ClusterConfig {
    ClusterConfig {
        service_cidrs: args.service_cidrs.clone(),
        internal_cidrs: Vec::new(),
        reserved: args.reserved_ips.clone(),
    }
}

/// One reconciliation against the store: feeds what changed into the index, then writes
/// statuses. Returns how many statuses were written.
pub fn reconcile(
    store: &Store,
    objects: &mut Objects,
    args: &ControllerArgs,
    logged: &mut Vec<Warning>,
    last: &mut Option<Liveness>,
    metrics: &ControllerMetrics,
) -> anyhow::Result<usize> {
    let changed = objects.poll()?;
    if !objects.index.is_synced() || !objects.loaded_clean {
        return Ok(0);
    }
    let seen = liveness(&store.read_reports(), args.liveness_timeout_ms);
    // The periodic tick only re-reads the agents' reports: nothing else to do unless the
    // objects or what the agents report changed.
    if !changed && last.as_ref() == Some(&seen) {
        return Ok(0);
    }
    let seen = last.insert(seen).clone();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let s = statuses(&mut objects.index, &seen, &now, Clone::clone, logged);
    metrics.statuses(&s);
    let egresses: Vec<(String, EgressStatus)> = s.egresses.into_iter().map(|(n, _, next)| (n, next)).collect();
    let pools: Vec<(String, ExternalIPPoolStatus)> = s.pools.into_iter().map(|(n, _, next)| (n, next)).collect();
    // One kind at a time, so the writes are counted per kind.
    let mut written = 0;
    for (kind, result) in
        [("Egress", store.write_statuses(&egresses, &[])), ("ExternalIPPool", store.write_statuses(&[], &pools))]
    {
        match result {
            Ok(n) => {
                metrics.wrote_n(kind, true, n as u64);
                written += n;
            }
            Err(e) => {
                metrics.wrote_n(kind, false, 1);
                return Err(e.into());
            }
        }
    }
    if written > 0 {
        info!(written, live = seen.0.len(), "status updated");
    }
    Ok(written)
}

/// Runs until interrupted.
pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    match args.source {
        SourceKind::Store => run_store(args).await,
        SourceKind::Kubernetes => run_kubernetes(args).await,
    }
}

async fn run_store(args: ControllerArgs) -> anyhow::Result<()> {
    let Some(dir) = args.store.clone() else { bail!("--store is required with --source store") };
    let store = Store::open(&dir).with_context(|| format!("opening store {}", dir.display()))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _watch = egret_store::watch(store.dir(), move || {
        let _ = tx.send(());
    })?;
    info!(store = %dir.display(), "controller started");
    // The only controller of a store leads it.
    let metrics = Arc::new(ControllerMetrics::new());
    metrics.leader.set(1);
    let health =
        Arc::new(std::sync::Mutex::new(crate::serve::Health { ready: false, error: Some("reading the store".into()) }));
    if let Some(addr) = args.health_addr {
        let (h, m) = (health.clone(), metrics.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::serve::serve_http(addr, h, Arc::new(move || m.encode())).await {
                warn!("serving health and metrics on {addr}: {e:#}");
            }
        });
    }
    let mut objects = Objects::store(store.clone(), cluster_config(&args));
    let mut tick = tokio::time::interval(Duration::from_millis(args.resync_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut logged = Vec::new();
    let mut last = None;
    let mut signals = crate::serve::Signals::new();
    loop {
        let result = reconcile(&store, &mut objects, &args, &mut logged, &mut last, &metrics);
        if let Ok(mut h) = health.lock() {
            (h.ready, h.error) = match &result {
                Ok(_) if objects.index.is_synced() && objects.loaded_clean => (true, None),
                Ok(_) => (false, Some("the store holds objects that do not load".into())),
                Err(e) => (false, Some(format!("{e:#}"))),
            };
        }
        if let Err(e) = result {
            warn!("reconcile: {e:#}");
        }
        tokio::select! {
            _ = rx.recv() => { while rx.try_recv().is_ok() {} }
            _ = tick.tick() => {}
            _ = signals.recv() => break,
        }
    }
    info!("controller stopped");
    Ok(())
}

/// The apiVersion Events name for an object of `kind`.
fn api_version_of(kind: Kind) -> &'static str {
    match kind {
        Kind::Pool | Kind::Egress | Kind::ClusterPolicy | Kind::Policy => "egret.dev/v1alpha1",
        Kind::AntreaPool | Kind::AntreaEgress => "crd.antrea.io/v1beta1",
        Kind::CiliumPolicy => "cilium.io/v2",
        Kind::Node | Kind::Namespace | Kind::Pod => "v1",
        Kind::NetworkPolicy => "networking.k8s.io/v1",
    }
}

/// The kind name of `kind`.
fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Pool | Kind::AntreaPool => "ExternalIPPool",
        Kind::Egress | Kind::AntreaEgress => "Egress",
        Kind::CiliumPolicy => "CiliumEgressGatewayPolicy",
        Kind::Node => "Node",
        Kind::Namespace => "Namespace",
        Kind::Pod => "Pod",
        Kind::ClusterPolicy => "ClusterEgressPolicy",
        Kind::Policy => "EgressPolicy",
        Kind::NetworkPolicy => "NetworkPolicy",
    }
}

/// This replica's identity: `--identity`, else the host name.
fn identity(args: &ControllerArgs) -> anyhow::Result<String> {
    if let Some(id) = &args.identity {
        return Ok(id.clone());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").context("reading the host name for --identity")?;
    Ok(host.trim().to_string())
}

async fn run_kubernetes(args: ControllerArgs) -> anyhow::Result<()> {
    let Some(key_file) = &args.gossip_key_file else {
        bail!(
            "--gossip-key-file is required with --source kubernetes: the controller learns by gossip which nodes are alive and which egress IPs they hold"
        );
    };
    let keys = GossipKeys::load(key_file).with_context(|| format!("gossip key {}", key_file.display()))?;
    let id = identity(&args)?;
    let gossip_addr = match (args.gossip_addr, args.pod_ip) {
        (Some(a), _) => a,
        (None, Some(ip)) => SocketAddr::new(ip, args.gossip_port),
        (None, None) => bail!("--gossip-addr (or $EGRET_POD_IP) is required with --source kubernetes"),
    };
    let lease = LeaseConfig {
        lease_duration: Duration::from_millis(args.lease_duration_ms),
        renew_deadline: Duration::from_millis(args.renew_deadline_ms),
        retry_period: Duration::from_millis(args.retry_period_ms),
        ..LeaseConfig::new(&args.namespace, &args.lease_name, &id)
    };
    let health = Arc::new(std::sync::Mutex::new(crate::serve::Health {
        ready: false,
        error: Some("waiting for the initial lists".into()),
    }));
    let metrics = Arc::new(ControllerMetrics::new());
    if let Some(addr) = args.health_addr {
        let (h, m) = (health.clone(), metrics.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::serve::serve_http(addr, h, Arc::new(move || m.encode())).await {
                warn!("serving health and metrics on {addr}: {e:#}");
            }
        });
    }
    let set_health = |ready: bool, note: &str| {
        if let Ok(mut h) = health.lock() {
            h.ready = ready;
            h.error = Some(note.to_string());
        }
    };
    let client = egret_kube::client(args.kube.kubeconfig.as_deref()).await?;
    let wake = Arc::new(tokio::sync::Notify::new());
    let w = wake.clone();
    let mut objects =
        Objects::kubernetes(client.clone(), &args.kube, None, cluster_config(&args), move || w.notify_one()).await?;
    // Gossip seeds come from the Nodes: wait for the initial lists first.
    while !objects.index.is_synced() {
        objects.poll()?;
        if !objects.index.is_synced() && tokio::time::timeout(Duration::from_secs(10), wake.notified()).await.is_err() {
            info!(waiting_for = ?objects.index.waiting_for(), "waiting for the initial lists");
        }
    }
    let member = format!("controller/{id}");
    let seeds = crate::agent::gossip_seeds(&objects.index, &member, args.gossip_port);
    let (gossip, mut views) = Gossip::start(GossipConfig::new(&member, gossip_addr, seeds, keys))
        .with_context(|| format!("starting gossip on {gossip_addr}"))?;
    // A member that never hosts: placement never gives it an egress IP.
    gossip.announce(Vec::new(), false).await.context("announcing by gossip")?;
    let reporter = Reporter::new(client.clone(), Some(id.clone()));
    let (elector, leadership) = LeaderElector::new(client.clone(), lease)?;
    let (stop_election, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut election = tokio::spawn(elector.with_reporter(reporter.clone()).run_until(async {
        let _ = stopped.await;
    }));
    let writer = StatusWriter::new(client, leadership.clone(), Some(reporter.clone()));
    let mut leader_changes = leadership.changes();
    info!(identity = %id, %gossip_addr, "controller started");
    set_health(true, "standby");
    let mut tick = tokio::time::interval(Duration::from_millis(args.resync_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut logged = Vec::new();
    // What this replica wrote while leading, so a write whose watch event is still on its way is
    // not repeated (nor its Events published twice).
    let mut written: HashMap<String, EgressStatus> = HashMap::new();
    // The unparsable objects an Event was published for, with the reason.
    let mut reported: BTreeMap<(Kind, ObjectRef), String> = BTreeMap::new();
    let mut was_leader = false;
    // What the last pass acted on, and whether a write of it failed (so the next tick retries).
    let mut last_seen: Option<Liveness> = None;
    let mut retry = false;
    let mut signals = crate::serve::Signals::new();
    loop {
        let changed = objects.poll()?;
        let leading = leadership.is_leader();
        if leading != was_leader {
            info!(leading, "leadership changed");
            written.clear();
            last_seen = None;
            was_leader = leading;
            metrics.leader.set(i64::from(leading));
            if !leading {
                metrics.standby();
            }
            // Both replicas are ready: the standby's index and view are warm.
            set_health(true, if leading { "leader" } else { "standby" });
        }
        {
            let v = views.borrow();
            for status in [MemberStatus::Alive, MemberStatus::Suspect, MemberStatus::Dead] {
                let n = v.members.iter().filter(|m| m.status == status).count();
                metrics.members.get_or_create(&vec![("status".into(), format!("{status:?}"))]).set(n as i64);
            }
        }
        let seen = liveness_of_view(&views.borrow());
        // The periodic tick re-reads the view only: nothing to do unless the objects, the
        // view or the leadership changed, or a write failed last time.
        if leading && (changed || retry || last_seen.as_ref() != Some(&seen)) {
            let seen = last_seen.insert(seen);
            retry = false;
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let mut s = statuses(&mut objects.index, seen, &now, antrea_vocabulary, &mut logged);
            metrics.statuses(&s);
            let unreadable: BTreeMap<String, String> = objects
                .unreadable
                .iter()
                .filter(|((kind, _), _)| *kind == Kind::Egress)
                .map(|((_, o), why)| (o.name.clone(), why.clone()))
                .collect();
            mark_unreadable(&mut s, &unreadable, &now);
            for ((kind, object), why) in &objects.unreadable {
                if reported.get(&(*kind, object.clone())) != Some(why) {
                    let regarding = k8s_openapi::api::core::v1::ObjectReference {
                        api_version: Some(api_version_of(*kind).into()),
                        kind: Some(kind_name(*kind).into()),
                        name: Some(object.name.clone()),
                        namespace: object.namespace.clone(),
                        ..Default::default()
                    };
                    let note = format!("does not parse: {why}; Egret acts on its last version that parsed, if any");
                    reporter.publish(&regarding, &Notice { warning: true, reason: "Unparsable", note }).await;
                    reported.insert((*kind, object.clone()), why.clone());
                }
            }
            reported.retain(|k, _| objects.unreadable.contains_key(k));
            let s = s.changed();
            let mut n = 0;
            for (name, prev, next) in &s.egresses {
                if written.get(name) == Some(next) {
                    continue;
                }
                let r = writer.egress(name, prev.as_ref(), next).await;
                metrics.wrote("Egress", r.is_ok());
                match r {
                    Ok(()) => {
                        written.insert(name.clone(), next.clone());
                        n += 1;
                    }
                    Err(e) => {
                        warn!("{e}");
                        retry = true;
                    }
                }
            }
            for (name, _, next) in &s.pools {
                let r = writer.pool(name, next).await;
                metrics.wrote("ExternalIPPool", r.is_ok());
                match r {
                    Ok(()) => n += 1,
                    Err(e) => {
                        warn!("{e}");
                        retry = true;
                    }
                }
            }
            if n > 0 {
                info!(written = n, live = seen.0.len(), "status updated");
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = views.changed() => {}
            _ = leader_changes.changed() => {}
            _ = tick.tick() => {}
            r = &mut election => bail!("leader election stopped: {r:?}"),
            _ = signals.recv() => break,
        }
    }
    // Hand the Lease over at once rather than after it expires.
    let _ = stop_election.send(());
    if tokio::time::timeout(Duration::from_secs(5), election).await.is_err() {
        warn!("the Lease was not released within 5 s");
    }
    info!("controller stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_left_out_are_warned_about_by_object_and_field() {
        use egret_core::event::{Change, Event};
        let bad: egret_api::v1alpha1::ClusterEgressPolicy = serde_yaml_ng::from_str(
            "apiVersion: egret.dev/v1alpha1\nkind: ClusterEgressPolicy\nmetadata: {name: bad}\nspec: {priority: 5000}\n",
        )
        .unwrap();
        let mut ix = Index::new(egret_core::planner::ClusterConfig::default(), Index::core_kinds());
        ix.apply(Change::ClusterPolicies(Event::Reset(vec![bad])));
        let w = warnings_with_policies(&mut ix);
        assert_eq!((w[0].object.as_str(), w[0].field.as_str()), ("ClusterEgressPolicy/bad", "spec.priority"));
        assert!(w[0].reason.contains("left out"), "{}", w[0].reason);
        // An enforcing agent's named NetworkPolicy port: a warning naming the field.
        let named: k8s_openapi::api::networking::v1::NetworkPolicy = serde_yaml_ng::from_str(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: a}\nspec:\n  egress: [{ports: [{port: https}]}]\n",
        )
        .unwrap();
        ix.enforce_network_policies();
        ix.apply(Change::NetworkPolicies(Event::Reset(vec![named])));
        let w = warnings_with_policies(&mut ix);
        let np = w.iter().find(|w| w.object == "NetworkPolicy/a/np").expect("the named port is warned about");
        assert_eq!(np.field, "spec.egress[0].ports[0].port");
        assert!(np.reason.contains("named port \"https\" cannot be resolved"), "{}", np.reason);
    }
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
    fn from_a_gossip_view_only_eligible_members_are_live_and_dead_ones_hold_nothing() {
        use egret_gossip::MemberView;
        let m = |name: &str, status, eligible, hosted: &[&str]| MemberView {
            name: name.into(),
            addr: "10.10.0.1:7947".parse().unwrap(),
            status,
            bump: 1,
            incarnation: 0,
            hosted: hosted.iter().map(|h| h.parse().unwrap()).collect(),
            eligible,
            local: false,
        };
        let v = View {
            local: "controller/c-0".into(),
            joined: true,
            members: vec![
                // The controller itself: a member that never hosts.
                m("controller/c-0", MemberStatus::Alive, false, &[]),
                m("node-1", MemberStatus::Alive, true, &["10.10.0.11"]),
                m("node-2", MemberStatus::Suspect, true, &[]),
                // Settling: alive, not eligible, still holding what it held.
                m("node-3", MemberStatus::Alive, false, &["10.10.0.12"]),
                m("node-4", MemberStatus::Dead, true, &["10.10.0.13"]),
            ],
        };
        let (live, hosted) = liveness_of_view(&v);
        assert_eq!(live.into_iter().collect::<Vec<_>>(), vec!["node-1", "node-2"]);
        assert_eq!(hosted.keys().collect::<Vec<_>>(), vec!["node-1", "node-3"]);
    }

    #[test]
    fn only_statuses_that_differ_are_written() {
        let st = |ip: &str| EgressStatus { egress_ip: Some(ip.into()), ..EgressStatus::default() };
        let s = Statuses {
            egresses: vec![
                ("same".into(), Some(st("10.10.0.11")), st("10.10.0.11")),
                ("moved".into(), Some(st("10.10.0.11")), st("10.10.0.12")),
                ("new".into(), None, st("10.10.0.13")),
            ],
            pools: vec![("p".into(), Some(ExternalIPPoolStatus::default()), ExternalIPPoolStatus::default())],
        }
        .changed();
        assert_eq!(s.egresses.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), vec!["moved", "new"]);
        assert!(s.pools.is_empty());
    }

    #[test]
    fn an_unparsable_egress_keeps_its_last_good_status_and_says_why() {
        let good = EgressStatus { egress_ip: Some("10.10.0.11".into()), ..EgressStatus::default() };
        let mut s = Statuses {
            egresses: vec![("eg".into(), Some(good.clone()), good.clone()), ("ok".into(), None, good.clone())],
            pools: vec![],
        };
        let why: BTreeMap<String, String> = [
            ("eg".to_string(), "spec.externalIPPool: invalid type".to_string()),
            ("never".to_string(), "spec: missing field `appliedTo`".to_string()),
        ]
        .into();
        mark_unreadable(&mut s, &why, "t1");
        let find = |s: &Statuses, n: &str| s.egresses.iter().find(|e| e.0 == n).unwrap().2.clone();
        let eg = find(&s, "eg");
        assert_eq!(eg.egress_ip.as_deref(), Some("10.10.0.11"), "the allocation stays");
        let c = eg.conditions.iter().find(|c| c.type_ == VALID).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Unparsable"));
        assert!(c.message.contains("spec.externalIPPool") && c.message.contains("last version that parsed"));
        assert!(find(&s, "ok").conditions.is_empty());
        let never = find(&s, "never");
        assert!(never.egress_ip.is_none() && never.conditions[0].message.contains("no version of it parsed"));
        // Still unparsable on the next pass: same transition time, so nothing to write.
        let mut again = Statuses { egresses: vec![("eg".into(), Some(eg.clone()), good)], pools: vec![] };
        mark_unreadable(&mut again, &why, "t2");
        assert!(again.changed().egresses.iter().all(|e| e.0 != "eg"));
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
