//! `egret agent --node NAME (--store DIR | --source kubernetes)`: programs this node's datapath
//! from the objects, learns which nodes are alive by gossip, hosts the egress IPs placement gives
//! it, and reports.
//!
//! The datapath work runs on a plain thread (the datapath drives netlink on its own small
//! runtime); gossip and the HTTP endpoints run on a tokio runtime beside it. Every membership
//! change wakes the datapath thread, which recomputes placement from the new live set at once:
//! no round trip through the controller on failover.

use crate::audit::{Audit, AuditArgs, SharedIndex};
use crate::controller::liveness;
use crate::metrics::{CounterCollector, Metrics};
use crate::objects::{KubeArgs, Objects, SourceKind};
use crate::serve::{Health, Signals, serve_http};
use anyhow::{Context, bail};
use egret_core::index::Index;
use egret_core::planner::{ClusterConfig, NodePlan};
use egret_datapath::{Config, Datapath};
use egret_gossip::{Gossip, GossipConfig, GossipHandle, GossipKeys, MemberStatus, Seed, View};
use egret_store::{AgentReport, MemberReport, Store, now_ms};
use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Arguments of `egret agent`.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// Where objects come from.
    #[arg(long, value_enum, default_value = "store")]
    pub source: SourceKind,
    /// The local store directory: the objects with `--source store`; with `--source kubernetes`
    /// only where this agent writes its reports (the lab reads them), if given.
    #[arg(long)]
    pub store: Option<PathBuf>,
    #[command(flatten)]
    pub kube: KubeArgs,
    /// This node's name (on a cluster, from the downward API: `spec.nodeName`).
    #[arg(long, env = "EGRET_NODE", required_unless_present = "cleanup")]
    pub node: Option<String>,
    /// Remove everything Egret created on this node and exit.
    #[arg(long)]
    pub cleanup: bool,
    /// Where to serve /healthz, /readyz and /metrics.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub health_addr: SocketAddr,
    /// The underlay interface the tunnel runs over.
    #[arg(long, default_value = "eth0")]
    pub underlay: String,
    /// Name of Egret's VXLAN device.
    #[arg(long, default_value = "egret-vxlan")]
    pub vxlan_name: String,
    /// VXLAN network identifier.
    #[arg(long, default_value_t = Config::default().vni)]
    pub vni: u32,
    /// VXLAN UDP port.
    #[arg(long, default_value_t = Config::default().vxlan_port)]
    pub vxlan_port: u16,
    /// The shared gossip key (64 hex characters), readable by its owner only. During a key
    /// rotation it holds two keys, one per line: the first seals, both open. Without it there is
    /// no gossip and this node never hosts egress IPs.
    #[arg(long)]
    pub gossip_key_file: Option<PathBuf>,
    /// UDP port of the gossip protocol on every node's underlay address.
    #[arg(long, default_value = "7947")]
    pub gossip_port: u16,
    /// After joining, wait this long for the membership view to fill before hosting anything,
    /// so a returning node never announces an IP that another node owns.
    #[arg(long, default_value = "400")]
    pub settle_ms: u64,
    /// How often this agent writes its report (heartbeat) into the store.
    #[arg(long, default_value = "300", value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_ms: u64,
    /// Without gossip: another agent whose heartbeat is older than this is not alive.
    #[arg(long, default_value = "1500")]
    pub liveness_timeout_ms: u64,
    /// Re-evaluate at least this often.
    #[arg(long, default_value = "100", value_parser = clap::value_parser!(u64).range(1..))]
    pub resync_ms: u64,
    /// Service CIDRs (never steered).
    #[arg(long = "service-cidr", default_value = "10.96.0.0/12", value_delimiter = ',')]
    pub service_cidrs: Vec<ipnet::IpNet>,
    /// Addresses no pool may cover that no object names, e.g. the node network's router.
    #[arg(long = "reserved-ip", value_delimiter = ',')]
    pub reserved_ips: Vec<std::net::IpAddr>,
    #[command(flatten)]
    pub audit: AuditArgs,
    /// Also enforce the egress part of Kubernetes NetworkPolicies (`networking.k8s.io/v1`) for
    /// destinations outside the cluster, for CNIs that do not (docs/api.md).
    #[arg(long)]
    pub enforce_network_policy: bool,
    /// Warn (once per crossing) when an egress IP hosted here uses more than this share of its
    /// source ports toward one destination (`egret_snat_port_utilization`).
    #[arg(long, default_value_t = 0.5)]
    pub snat_warn_utilization: f64,
    #[command(flatten)]
    pub dns: crate::dns::DnsArgs,
}

impl AgentArgs {
    fn datapath_config(&self) -> Config {
        Config {
            underlay: self.underlay.clone(),
            vxlan_name: self.vxlan_name.clone(),
            vni: self.vni,
            vxlan_port: self.vxlan_port,
            audit_group: self.audit.audit_nflog_group,
            dns_proxy_port: self.dns.dns_proxy_port,
            ..Config::default()
        }
    }
}

/// How often an agent re-verifies its datapath even when nothing changed (drift repair).
const VERIFY_EVERY: Duration = Duration::from_secs(10);

/// Where the live set comes from.
enum Membership {
    /// Gossip: the latest view, and the moment this member first saw another live member.
    Gossip {
        view: Arc<Mutex<View>>,
        handle: Arc<GossipHandle>,
        rt: tokio::runtime::Handle,
        /// Whether the store lists other nodes (a one-node cluster may host without joining).
        has_peers: bool,
        /// Since when this member has been joined (connected to a live peer) without a break;
        /// every (re)join starts a new settle period.
        joined_since: Mutex<Option<Instant>>,
    },
    /// No key: store heartbeats (none without a store), and this node never hosts.
    Heartbeats(Option<Store>),
}

impl Membership {
    /// The other nodes placement may give egress IPs to, and whether this node has settled in
    /// the cluster (joined long enough for its membership view to fill).
    fn live(&self, node: &str, args: &AgentArgs) -> (BTreeSet<String>, bool) {
        match self {
            Membership::Gossip { view, has_peers, joined_since, .. } => {
                let v = match view.lock() {
                    Ok(v) => v.clone(),
                    // Without a trustworthy view, host nothing.
                    Err(_) => return (BTreeSet::new(), false),
                };
                let settled = match joined_since.lock() {
                    Ok(mut since) => {
                        if v.joined || !has_peers {
                            since.get_or_insert_with(Instant::now).elapsed() >= Duration::from_millis(args.settle_ms)
                        } else {
                            *since = None;
                            false
                        }
                    }
                    Err(_) => false,
                };
                (hosting_set(&v, node, false), settled)
            }
            Membership::Heartbeats(store) => {
                // Nodes whose reports say they may host (heartbeat liveness).
                let reports = store.as_ref().map(Store::read_reports).unwrap_or_default();
                let (mut live, _) = liveness(&reports, args.liveness_timeout_ms);
                live.remove(node);
                (live, false)
            }
        }
    }
}

/// The nodes placement may give egress IPs to: the active members that announce they are
/// eligible (settled and in sync), and this node by its own verdict, which it knows before
/// anyone else. An alive member that is not eligible gets no IPs; its pods are still steered.
fn hosting_set(view: &View, node: &str, self_eligible: bool) -> BTreeSet<String> {
    let mut set: BTreeSet<String> = view.eligible().into_iter().filter(|n| *n != node).map(str::to_string).collect();
    if self_eligible {
        set.insert(node.to_string());
    }
    set
}

/// Whether to leave the kernel as it is for now: a (re)started agent with gossip programs
/// nothing before its membership view has settled, since a plan made from an empty view fails
/// every Egress closed and would cut the established flows its earlier life left running.
const fn hold_first_sync(gossip: bool, synced_before: bool, settled: bool) -> bool {
    gossip && !synced_before && !settled
}

/// Whether this node may be given egress IPs now: it has settled after (re)joining, its
/// datapath is in sync, and it is in the store.
const fn eligible(settled: bool, in_sync: bool, in_store: bool) -> bool {
    settled && in_sync && in_store
}

/// The first retry after a failed sync comes after this long; each further failure doubles it.
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Retries are never further apart than this.
const RETRY_MAX: Duration = Duration::from_secs(10);
/// A failure streak is forgotten after this long without a failure.
const FORGET_FAILURES: Duration = Duration::from_secs(60);

/// How long to wait after the `failures`-th failed sync in a row: 100 ms, doubling, at most 10 s.
fn retry_delay(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    RETRY_FIRST.saturating_mul(1u32 << (failures - 1).min(16)).min(RETRY_MAX)
}

/// Failed-sync bookkeeping: when the next attempt may run, and whether the datapath counts as
/// in sync (and so this node as eligible to host).
#[derive(Debug, Clone, Copy, Default)]
struct SyncHealth {
    /// Failed syncs in the current streak.
    failures: u32,
    /// When the last one failed.
    last_failure: Option<Instant>,
    /// Whether the last attempt succeeded.
    ok: bool,
}

impl SyncHealth {
    fn record(&mut self, ok: bool, now: Instant) {
        self.ok = ok;
        if !ok {
            let forgotten = self.last_failure.is_none_or(|t| now.saturating_duration_since(t) >= FORGET_FAILURES);
            self.failures = if forgotten { 1 } else { self.failures.saturating_add(1) };
            self.last_failure = Some(now);
        }
    }

    /// Whether the hold-down after the last failure is over.
    fn held_down(&self, now: Instant) -> bool {
        self.last_failure.is_some_and(|t| now.saturating_duration_since(t) < retry_delay(self.failures))
    }

    /// Whether a sync may be attempted now: at once while syncs succeed, after the back-off
    /// delay while they fail (each failed attempt is a full reload: no busy loop).
    fn may_attempt(&self, now: Instant) -> bool {
        self.ok || !self.held_down(now)
    }

    /// Whether the datapath is in sync: the last sync succeeded and the hold-down after the last
    /// failure is over, so a node whose syncs fail only while it hosts does not flap between
    /// eligible and not faster than the back-off.
    fn in_sync(&self, now: Instant) -> bool {
        self.ok && !self.held_down(now)
    }
}

/// This node's plan from the index, and the store stamp it reflects.
fn compute(
    objects: &mut Objects,
    node: &str,
    live: &BTreeSet<String>,
    may_host: bool,
    logged: &mut Vec<egret_core::planner::Warning>,
) -> anyhow::Result<(NodePlan, u64)> {
    if !objects.index.is_synced() {
        bail!("waiting for the initial list of {:?}", objects.index.waiting_for());
    }
    // Not eligible (not settled in the cluster yet, datapath not in sync, or no gossip key):
    // plan as if this node could not be a gateway, so it holds, announces and SNATs nothing,
    // and the sync removes whatever an earlier life held before anything is announced. Its pods
    // are steered to the others. `live` is the set placement may put egress IPs on.
    let mut live = live.clone();
    if may_host {
        live.insert(node.to_string());
    } else {
        live.remove(node);
    }
    objects.index.set_live(&live);
    let np = objects.index.node_plan(node).ok_or(NotANode)?;
    crate::controller::log_warnings(&crate::controller::warnings_with_policies(&mut objects.index), logged);
    Ok((np, objects.stamp))
}

/// Now as Unix time in seconds.
fn unix_seconds() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// This node's Node object is not (or no longer) in the store.
#[derive(Debug, thiserror::Error)]
#[error("this node is not among the Nodes")]
struct NotANode;

/// A loop that has not turned for this long is wedged: its heartbeats stop (store source), so
/// the node looks dead. A sync may take seconds at scale; this is far beyond any.
const LOOP_STALL: Duration = Duration::from_secs(30);

struct Loop {
    /// Where reports go, when there is a store.
    store: Option<Store>,
    /// Where this node's own facts are published (its Node).
    publisher: crate::publish::Publisher,
    objects: Objects,
    node: String,
    args: AgentArgs,
    health: Arc<Mutex<Health>>,
    metrics: Arc<Metrics>,
    membership: Membership,
    /// The names the audit log and the rule counters give to what the datapath holds.
    audit_index: SharedIndex,
    /// The DNS proxy's view of this node's pods and what it learned.
    dns: Arc<egret_dns::Shared>,
    dns_metrics: Arc<egret_dns::DnsMetrics>,
}

impl Loop {
    fn run(self, wake: std::sync::mpsc::Receiver<()>, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
        let Loop {
            store,
            publisher,
            mut objects,
            node,
            args,
            health,
            metrics,
            membership,
            audit_index,
            dns,
            dns_metrics,
        } = self;
        let mut dns_restored = false;
        let mut dp = Datapath::new(args.datapath_config())?;
        let mut last: Option<NodePlan> = None;
        let mut report = AgentReport { node: node.clone(), pid: std::process::id(), ..AgentReport::default() };
        // The report changed since it was last written (it is written at once then).
        let mut report_changed = true;
        let heartbeat = store
            .map(|s| crate::heartbeat::Heartbeat::start(s, &node, Duration::from_millis(args.heartbeat_ms), LOOP_STALL))
            .transpose()
            .context("starting the heartbeat thread")?;
        let mut conflicts_seen: HashSet<(IpAddr, Vec<String>)> = HashSet::new();
        let mut announced: Option<(Vec<IpAddr>, bool)> = None;
        // When the last sync sent the first gratuitous ARP / NA of IPs it started hosting: a
        // take-over is timed to it, not to the end of the sync (which then ends changed flows).
        let mut arp_at: Option<Instant> = None;
        // Work only when something may have changed: a store or membership event (wake), a
        // change of the live set or of the right to host, a failed sync to retry, or the
        // periodic check that repairs drift made behind our back.
        let mut dirty = true;
        let mut last_verify = Instant::now();
        let mut last_inputs: Option<(BTreeSet<String>, bool)> = None;
        let mut health_of_sync = SyncHealth::default();
        let mut in_store = true;
        // Whether the plan last programmed had this node eligible: only then does it tell the
        // others it is, so they move IPs to it only once it holds them (make before break).
        let mut programmed_eligible = false;
        let mut gossip_seen = egret_gossip::Counters::default();
        let mut logged = Vec::new();
        let mut warned_v6_services = false;
        let mut deaths = crate::takeover::Deaths::default();
        let mut maps_seen: BTreeSet<String> = BTreeSet::new();
        while !stop.load(Ordering::Relaxed) {
            if let Membership::Gossip { view, .. } = &membership {
                let members = view.lock().map(|v| v.members.clone()).unwrap_or_default();
                deaths.observe(&members, Instant::now());
            }
            let (others, settled) = membership.live(&node, &args);
            let may_host = eligible(settled, health_of_sync.in_sync(Instant::now()), in_store);
            let verify = last_verify.elapsed() >= VERIFY_EVERY;
            // The live set of heartbeat liveness, the end of a settle period and of a sync
            // hold-down change without any event.
            let inputs = (others, may_host);
            if last_inputs.as_ref() != Some(&inputs) {
                dirty = true;
            }
            let (live, may_host) = last_inputs.insert(inputs).clone();
            let gossip = matches!(membership, Membership::Gossip { .. });
            if (dirty || verify || !report.ready)
                && health_of_sync.may_attempt(Instant::now())
                && !hold_first_sync(gossip, last.is_some(), settled)
            {
                dirty = false;
                // A source that is gone for good ends the loop, so the agent exits and restarts.
                objects.poll()?;
                // Failing to publish is logged and retried: only Egresses taking an IP from an
                // interface of this node depend on it.
                if let Err(e) = crate::publish::interfaces(&mut objects, &node, &publisher) {
                    warn!("publishing the addresses of interfaces on node {node}: {e:#}");
                }
                match compute(&mut objects, &node, &live, may_host, &mut logged) {
                    Ok((np, stamp)) => {
                        in_store = true;
                        if last.as_ref() != Some(&np) || !report.ready || verify {
                            last_verify = Instant::now();
                            let started = Instant::now();
                            let result = dp.sync(&np);
                            metrics.timings.sync_seconds.observe(started.elapsed().as_secs_f64());
                            health_of_sync.record(result.is_ok(), Instant::now());
                            match result {
                                Ok(r) => {
                                    arp_at = r.announced_at;
                                    metrics.syncs.get_or_create(&vec![("result".into(), "ok".into())]).inc();
                                    metrics.last_sync.set(unix_seconds());
                                    for (map, n) in &r.map_elements {
                                        metrics
                                            .map_elements
                                            .get_or_create(&vec![("map".into(), map.clone())])
                                            .set(*n as i64);
                                    }
                                    // Maps of policy sets come and go with the policies.
                                    for gone in maps_seen.iter().filter(|m| !r.map_elements.contains_key(*m)) {
                                        metrics.map_elements.remove(&vec![("map".into(), gone.clone())]);
                                    }
                                    maps_seen = r.map_elements.keys().cloned().collect();
                                    if last.as_ref().is_none_or(|l| {
                                        l.egresses != np.egresses
                                            || l.steer != np.steer
                                            || l.snat != np.snat
                                            || l.hosted != np.hosted
                                    }) {
                                        let labels = crate::metrics::egress_labels(&np);
                                        *metrics.egresses.write().unwrap_or_else(|e| e.into_inner()) = labels;
                                    }
                                    if !r.drift.is_empty() {
                                        warn!(drift = ?r.drift, "datapath drifted from what was programmed; repaired");
                                    }
                                    let hosted: Vec<IpAddr> = np.hosted.iter().map(|h| h.ip).collect();
                                    if report.hosted != hosted {
                                        let egresses: BTreeSet<&str> = np
                                            .hosted
                                            .iter()
                                            .flat_map(|h| h.egresses.iter().map(String::as_str))
                                            .collect();
                                        info!(hosted = ?hosted, ?egresses, "egress IPs hosted here changed");
                                        let added = hosted.iter().filter(|ip| !report.hosted.contains(ip)).count();
                                        let removed = report.hosted.iter().filter(|ip| !hosted.contains(ip)).count();
                                        for (change, n) in [("added", added), ("removed", removed)] {
                                            metrics
                                                .placement_changes
                                                .get_or_create(&vec![("change".into(), change.into())])
                                                .inc_by(n as u64);
                                        }
                                        report_changed = true;
                                    }
                                    metrics.hosted.set(hosted.len() as i64);
                                    *metrics.hosted_ips.write().unwrap_or_else(|e| e.into_inner()) = hosted.clone();
                                    report.ready = true;
                                    report.error = None;
                                    report.hosted = hosted;
                                    if !warned_v6_services
                                        && np.firewall.pods.iter().any(|p| p.ip.is_ipv6())
                                        && !args.service_cidrs.iter().any(|c| matches!(c, ipnet::IpNet::V6(_)))
                                    {
                                        // The firewall sees Service addresses before kube-proxy
                                        // translates them: unknown ones are governed as outside.
                                        warn!(
                                            "the egress firewall governs IPv6 pods but no IPv6 --service-cidr is set: their IPv6 Service traffic (DNS included) is decided like traffic leaving the cluster"
                                        );
                                        warned_v6_services = true;
                                    }
                                    if last.as_ref().is_none_or(|l| l.firewall != np.firewall || l.steer != np.steer) {
                                        // Built before taking the lock: readers never wait for it.
                                        let fresh = Arc::new(egret_datapath::audit::AuditIndex::from_plan(&np));
                                        *audit_index.write().unwrap_or_else(|e| e.into_inner()) = fresh;
                                        let rules = crate::dns::pod_rules(&np);
                                        *dns.pods.write().unwrap_or_else(|e| e.into_inner()) = rules;
                                        let sets = egret_datapath::nft::firewall::name_sets(&np)
                                            .into_values()
                                            .flat_map(|(a, b)| [a, b])
                                            .collect();
                                        if let Ok(mut l) = dns.learned.lock() {
                                            l.retain_sets(&sets);
                                        }
                                    }
                                    if !dns_restored {
                                        let n = crate::dns::restore(dp.config(), &np, &dns);
                                        if n > 0 {
                                            info!(addresses = n, "re-read the addresses name rules learned before");
                                        }
                                        dns_restored = true;
                                    }
                                    last = Some(np.clone());
                                }
                                Err(e) => {
                                    metrics.syncs.get_or_create(&vec![("result".into(), "error".into())]).inc();
                                    metrics
                                        .sync_failures
                                        .get_or_create(&vec![("reason".into(), e.reason().into())])
                                        .inc();
                                    warn!(
                                        retry_in_ms = retry_delay(health_of_sync.failures).as_millis() as u64,
                                        "datapath sync failed; not eligible to host until it succeeds: {e}"
                                    );
                                    programmed_eligible = false;
                                    report.ready = false;
                                    report.error = Some(e.to_string());
                                }
                            }
                        }
                        // The datapath holds the plan made with this eligibility.
                        if report.ready && last.as_ref() == Some(&np) {
                            programmed_eligible = may_host;
                        }
                        // Record when this store state was first fully programmed, and tell at once.
                        // Per kind, since a kind's change may carry a lower version than
                        // another kind's seen before it.
                        let versions: std::collections::BTreeMap<String, u64> =
                            objects.versions.iter().map(|(k, v)| (format!("{k:?}"), *v)).collect();
                        if report.ready
                            && (stamp != report.programmed_stamp_ms || versions != report.programmed_versions)
                        {
                            report.programmed_stamp_ms = stamp;
                            report.programmed_versions = versions;
                            report.programmed_at_ms = now_ms();
                            report_changed = true;
                        }
                    }
                    Err(e) if e.is::<NotANode>() => {
                        in_store = false;
                        programmed_eligible = false;
                        // Removed from the cluster: hold and steer nothing, so no IP is held twice.
                        if last.take().is_some() || !report.hosted.is_empty() {
                            warn!("{node} is no longer among the Nodes: removing Egret's datapath state");
                            if let Err(e) = dp.cleanup() {
                                warn!("cleanup: {e}");
                            }
                            report.hosted.clear();
                            report_changed = true;
                        }
                        report.error = Some(format!("node {node} is not among the Nodes"));
                    }
                    Err(e) => {
                        warn!("{e:#}");
                        report.error = Some(format!("{e:#}"));
                    }
                }
            }
            // What this node tells the others, after this iteration's sync.
            let announce_eligible =
                programmed_eligible && eligible(settled, health_of_sync.in_sync(Instant::now()), in_store);
            if report.may_host != announce_eligible {
                report.may_host = announce_eligible;
                report_changed = true;
            }
            if let Membership::Gossip { view, handle, rt, .. } = &membership {
                let state = (report.hosted.clone(), announce_eligible);
                if announced.as_ref() != Some(&state) {
                    match rt.block_on(handle.announce(state.0.clone(), state.1)) {
                        Ok(()) => {
                            let before = announced.as_ref().map(|a| a.0.as_slice()).unwrap_or_default();
                            for (ip, took) in deaths.takeovers(before, &state.0, arp_at.unwrap_or_else(Instant::now)) {
                                let egresses = last.as_ref().map(|p| p.egresses_of_ip(ip)).unwrap_or_default();
                                info!(%ip, %egresses, took_ms = took.as_millis() as u64, "took over an egress IP of a dead node");
                                metrics.failovers.get_or_create(&vec![("egress_ip".into(), ip.to_string())]).inc();
                                metrics.timings.takeover_seconds.observe(took.as_secs_f64());
                            }
                            announced = Some(state);
                        }
                        Err(e) => warn!("announcing hosted IPs by gossip: {e}"),
                    }
                }
                let v = view.lock().map(|v| v.clone()).unwrap_or_default();
                let now: HashSet<(IpAddr, Vec<String>)> = v.conflicts().into_iter().collect();
                for c in now.difference(&conflicts_seen) {
                    metrics.conflicts.inc();
                    let egresses = last.as_ref().map(|p| p.egresses_of_ip(c.0)).unwrap_or_default();
                    warn!(ip = %c.0, %egresses, holders = ?c.1, "egress IP conflict: held by more than one live node");
                }
                // A conflict over an IP this node still holds has cleared: the other node may
                // have moved the router's entry for it, so announce it again.
                let cleared: Vec<IpAddr> = conflicts_seen
                    .iter()
                    .filter(|c| !now.contains(*c) && report.hosted.contains(&c.0))
                    .map(|c| c.0)
                    .collect();
                if !cleared.is_empty() {
                    info!(ips = ?cleared, "conflict cleared; announcing again");
                    dp.reannounce(&cleared);
                    report.ready = false; // forces the next iteration to sync
                }
                conflicts_seen = now;
                for status in [MemberStatus::Alive, MemberStatus::Suspect, MemberStatus::Dead] {
                    let n = v.members.iter().filter(|m| m.status == status).count();
                    metrics.members.get_or_create(&vec![("status".into(), format!("{status:?}"))]).set(n as i64);
                }
                let counters = handle.counters();
                metrics.gossip_counters(&counters, &gossip_seen);
                gossip_seen = counters;
                report.members = v
                    .members
                    .iter()
                    .map(|m| MemberReport { name: m.name.clone(), ip: m.addr.ip(), status: format!("{:?}", m.status) })
                    .collect();
            }
            if let Ok(mut h) = health.lock() {
                h.ready = report.ready;
                h.error = report.error.clone();
                let names_here = dns.pods.read().map(|p| !p.is_empty()).unwrap_or(false);
                if names_here && dns_metrics.up.get() == 0 {
                    h.ready = false;
                    h.error = Some("the DNS proxy is down: DNS of pods under name rules fails closed".into());
                }
            }
            // Written at once when it changed, else by the heartbeat thread, which goes on
            // through a long sync.
            if let Some(hb) = &heartbeat {
                hb.publish(&report, report_changed);
            }
            report_changed = false;
            let wait = Duration::from_millis(args.resync_ms.min(args.heartbeat_ms));
            match wake.recv_timeout(wait) {
                Ok(()) => {
                    while wake.try_recv().is_ok() {}
                    dirty = true;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        Ok(())
    }
}

/// A Node's gossip address: one rule for every node, so peers reach each other where they listen.
fn gossip_ip(n: &egret_core::model::Node) -> Option<IpAddr> {
    n.ip(egret_core::net::Family::V4).or_else(|| n.internal_ips.first().copied())
}

/// Every Node but `except` as a gossip seed on `port`.
pub(crate) fn gossip_seeds(index: &Index, except: &str, port: u16) -> Vec<Seed> {
    index
        .nodes()
        .filter(|n| n.name != except)
        .filter_map(|n| Some(Seed { name: n.name.clone(), addr: SocketAddr::new(gossip_ip(n)?, port) }))
        .collect()
}

/// The gossip configuration: this node's underlay address and every other Node as a seed.
fn gossip_config(index: &Index, node: &str, key: GossipKeys, port: u16) -> anyhow::Result<GossipConfig> {
    let me = index.nodes().find(|n| n.name == node).with_context(|| format!("node {node:?} is not among the Nodes"))?;
    let ip = gossip_ip(me).with_context(|| format!("node {node:?} has no InternalIP"))?;
    Ok(GossipConfig::new(node, SocketAddr::new(ip, port), gossip_seeds(index, node, port), key))
}

/// Signals the main thread when the datapath thread ends, also by panic (drop runs on unwind).
struct DoneOnDrop(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for DoneOnDrop {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Blocks until every kind has sent its initial list (logging what it waits for now and then).
fn wait_for_initial_lists(objects: &mut Objects, wake: &std::sync::mpsc::Receiver<()>) -> anyhow::Result<()> {
    let mut last_log = Instant::now();
    loop {
        objects.poll()?;
        if objects.index.is_synced() {
            return Ok(());
        }
        if last_log.elapsed() >= Duration::from_secs(10) {
            info!(waiting_for = ?objects.index.waiting_for(), "waiting for the initial lists");
            last_log = Instant::now();
        }
        match wake.recv_timeout(Duration::from_millis(200)) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => bail!("stopped while waiting for the initial lists"),
        }
    }
}

/// Runs the agent (or its cleanup).
pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    if args.cleanup {
        let report = egret_datapath::cleanup(&args.datapath_config())?;
        for r in &report.removed {
            println!("removed {r}");
        }
        if report.removed.is_empty() {
            println!("nothing to clean up");
        }
        return Ok(());
    }
    let Some(node) = args.node.clone() else {
        bail!("--node is required");
    };
    // Every line of this agent names its node (a field of the JSON log lines); threads started
    // here enter the span too.
    let span = tracing::info_span!("agent", node = %node);
    let _entered = span.enter();
    let store = match &args.store {
        Some(dir) => Some(Store::open(dir).with_context(|| format!("opening store {}", dir.display()))?),
        None if args.source == SourceKind::Store => bail!("--store is required with --source store"),
        None => None,
    };
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let _watch = match &store {
        Some(store) if args.source == SourceKind::Store => {
            let watch_tx: Sender<()> = tx.clone();
            Some(egret_store::watch(store.dir(), move || {
                let _ = watch_tx.send(());
            })?)
        }
        _ => None,
    };
    let health = Arc::new(Mutex::new(Health::default()));
    let audit_index = SharedIndex::default();
    let dns = Arc::new(egret_dns::Shared::default());
    let dns_metrics = Arc::new(egret_dns::DnsMetrics::default());
    let metrics = {
        let mut m = Metrics::new();
        dns_metrics.register(&mut m.registry);
        let egresses = m.egresses.clone();
        m.registry.register_collector(Box::new(CounterCollector { index: audit_index.clone(), egresses }));
        Arc::new(m)
    };
    let stop = Arc::new(AtomicBool::new(false));
    // The audit log reads what the firewall logs in this network namespace. Without it the
    // firewall still decides; only the records are missing, which is said loudly.
    match Audit::open(&args.audit, &node) {
        Ok(audit) => {
            let (idx, m, stop, dns) = (audit_index.clone(), metrics.audit.clone(), stop.clone(), dns.clone());
            let span = span.clone();
            std::thread::Builder::new().name("audit".into()).spawn(move || {
                let _entered = span.enter();
                audit.run(idx, m, dns, stop)
            })?;
        }
        Err(e) => warn!("audit log disabled: {e:#}"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    // The DNS proxy for pods under name rules. If it cannot run, their DNS fails closed (the
    // nft table drops what no proxy takes) and /readyz says so; other pods are not affected.
    // It runs on a thread and a single-threaded runtime of its own: a pod's query waits
    // neither for the agent's other work nor for tasks moving between threads.
    {
        let (cfg, shared, m) = (args.dns.proxy_config(), dns.clone(), dns_metrics.clone());
        let proxy_rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let span = span.clone();
        std::thread::Builder::new().name("dns-proxy".into()).spawn(move || {
            let _entered = span.enter();
            // Binding fails while an agent that just stopped still holds the port: try again.
            let mut wait = Duration::from_millis(200);
            loop {
                let programmer = crate::dns::NetlinkProgrammer::default();
                let res = proxy_rt.block_on(egret_dns::run(cfg.clone(), shared.clone(), m.clone(), programmer));
                m.up.set(0);
                if let Err(e) = res {
                    warn!("DNS proxy down: DNS of pods under name rules fails closed; retrying in {wait:?}: {e}");
                }
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        })?;
    }
    // SNAT source-port use of the egress IPs hosted here, off the datapath loop (a busy
    // gateway's conntrack table takes a while to list).
    {
        let (cfg, m, stop, warn_at) =
            (args.datapath_config(), metrics.clone(), stop.clone(), args.snat_warn_utilization);
        let span = span.clone();
        std::thread::Builder::new().name("snat".into()).spawn(move || {
            let _entered = span.enter();
            crate::snat::watch(&cfg, &m, &stop, warn_at);
        })?;
    }
    let config = ClusterConfig {
        service_cidrs: args.service_cidrs.clone(),
        internal_cidrs: Vec::new(),
        reserved: args.reserved_ips.clone(),
    };
    let (mut objects, publisher) = match (args.source, &store) {
        (SourceKind::Store, Some(store)) => {
            let mut objects = Objects::store(store.clone(), config);
            if args.enforce_network_policy {
                objects.index.enforce_network_policies();
            }
            (objects, crate::publish::Publisher::Store(store.clone()))
        }
        _ => {
            let kube = crate::objects::KubeArgs { network_policies: args.enforce_network_policy, ..args.kube.clone() };
            let wake = tx.clone();
            // Every agent watches every pod (slim): a gateway needs the addresses of the pods it
            // serves on other nodes. docs/architecture.md weighs this against endpoint groups.
            rt.block_on(async {
                let client = egret_kube::client(args.kube.kubeconfig.as_deref()).await?;
                let publisher = crate::publish::Publisher::Kube(client.clone(), rt.handle().clone());
                let objects = Objects::kubernetes(client, &kube, None, config, move || {
                    let _ = wake.send(());
                })
                .await?;
                anyhow::Ok((objects, publisher))
            })?
        }
    };
    // Gossip seeds come from the Nodes: wait for the initial lists.
    wait_for_initial_lists(&mut objects, &rx)?;

    let membership = match &args.gossip_key_file {
        Some(path) => {
            let key = GossipKeys::load(path).with_context(|| format!("gossip key {}", path.display()))?;
            let cfg = gossip_config(&objects.index, &node, key, args.gossip_port)?;
            let addr = cfg.addr;
            let has_peers = !cfg.seeds.is_empty();
            let (handle, mut views) = {
                let _guard = rt.enter();
                Gossip::start(cfg).with_context(|| format!("starting gossip on {addr}"))?
            };
            let view = Arc::new(Mutex::new(views.borrow().clone()));
            let (v, wake) = (view.clone(), tx.clone());
            rt.spawn(async move {
                while views.changed().await.is_ok() {
                    let latest = views.borrow_and_update().clone();
                    if let Ok(mut g) = v.lock() {
                        *g = latest;
                    }
                    let _ = wake.send(());
                }
            });
            info!(%addr, "gossip started");
            Membership::Gossip {
                view,
                handle: Arc::new(handle),
                rt: rt.handle().clone(),
                has_peers,
                joined_since: Mutex::new(None),
            }
        }
        None => {
            warn!("no --gossip-key-file: no gossip, and this node will not host egress IPs");
            Membership::Heartbeats(store.clone())
        }
    };
    info!(node = %node, source = ?args.source, network_policies = args.enforce_network_policy, "agent started");

    let health_addr = args.health_addr;
    let worker = Loop {
        store,
        publisher,
        objects,
        node,
        args,
        health: health.clone(),
        metrics: metrics.clone(),
        membership,
        audit_index,
        dns,
        dns_metrics,
    };
    // If the datapath loop ends on its own (an error or a panic), the whole agent must exit:
    // otherwise gossip would keep telling peers this node is alive while nothing hosts its IPs.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let loop_handle = {
        let stop = stop.clone();
        let span = span.clone();
        std::thread::Builder::new().name("datapath".into()).spawn(move || {
            let _entered = span.enter();
            let _done = DoneOnDrop(Some(done_tx));
            worker.run(rx, stop)
        })?
    };
    let served = rt.block_on(async {
        let mut signals = Signals::new();
        tokio::select! {
            r = serve_http(health_addr, health, Arc::new(move || metrics.encode())) => r,
            _ = signals.recv() => Ok(()),
            _ = done_rx => Err(anyhow::anyhow!("the datapath loop stopped")),
        }
    });
    // The datapath is left in place: a restarted agent converges without disturbing flows.
    stop.store(true, Ordering::Relaxed);
    let _ = tx.send(());
    match loop_handle.join() {
        Ok(r) => r?,
        Err(_) => bail!("the datapath thread panicked"),
    }
    served?;
    info!("agent stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use egret_gossip::MemberView;

    fn member(name: &str, status: MemberStatus, eligible: bool) -> MemberView {
        MemberView {
            name: name.into(),
            addr: "10.10.0.1:7947".parse().unwrap(),
            status,
            bump: 1,
            incarnation: 0,
            hosted: vec![],
            eligible,
            local: name == "node-1",
        }
    }

    #[test]
    fn a_restarted_agent_waits_for_its_view_before_its_first_sync() {
        assert!(hold_first_sync(true, false, false));
        assert!(!hold_first_sync(true, false, true), "settled: sync");
        assert!(!hold_first_sync(true, true, false), "a later unsettled period keeps syncing");
        assert!(!hold_first_sync(false, false, false), "without gossip there is nothing to wait for");
    }

    #[test]
    fn placement_uses_only_members_that_can_host() {
        let view = View {
            local: "node-1".into(),
            joined: true,
            members: vec![
                // The view's idea of this node is what it last announced; its own verdict wins.
                member("node-1", MemberStatus::Alive, true),
                member("node-2", MemberStatus::Alive, true),
                // Alive but settling after a restart, or its datapath sync fails.
                member("node-3", MemberStatus::Alive, false),
                member("node-4", MemberStatus::Suspect, true),
                member("node-5", MemberStatus::Dead, true),
            ],
        };
        let names = |s: BTreeSet<String>| s.into_iter().collect::<Vec<_>>();
        assert_eq!(names(hosting_set(&view, "node-1", true)), vec!["node-1", "node-2", "node-4"]);
        assert_eq!(names(hosting_set(&view, "node-1", false)), vec!["node-2", "node-4"]);
    }

    #[test]
    fn a_node_is_eligible_only_settled_in_sync_and_in_the_store() {
        assert!(eligible(true, true, true));
        for (settled, in_sync, in_store) in
            [(false, true, true), (true, false, true), (true, true, false), (false, false, false)]
        {
            assert!(!eligible(settled, in_sync, in_store), "{settled} {in_sync} {in_store}");
        }
    }

    #[test]
    fn failed_syncs_back_off_exponentially_up_to_a_cap() {
        let ms = |n| retry_delay(n).as_millis();
        assert_eq!([ms(0), ms(1), ms(2), ms(3), ms(4), ms(7)], [0, 100, 200, 400, 800, 6400]);
        assert_eq!(retry_delay(8), RETRY_MAX);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX, "no overflow");
    }

    #[test]
    fn a_failing_sync_is_retried_after_the_back_off_and_makes_the_node_ineligible() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut h = SyncHealth::default();
        assert!(h.may_attempt(t0), "the first sync runs at once");
        assert!(!h.in_sync(t0), "not in sync before the first sync");
        h.record(true, at(0));
        assert!(h.in_sync(at(0)) && h.may_attempt(at(0)));
        // Three failures in a row: 100, 200, 400 ms between attempts, never in sync meanwhile.
        let mut now = 10;
        for (n, wait) in [(1, 100), (2, 200), (3, 400)] {
            h.record(false, at(now));
            assert_eq!(h.failures, n);
            assert!(!h.in_sync(at(now)));
            assert!(!h.may_attempt(at(now + wait - 1)), "failure {n}: too early at {}", wait - 1);
            assert!(h.may_attempt(at(now + wait)), "failure {n}: due after {wait} ms");
            now += wait;
        }
        // A success right after a failure: attempts run freely again, but the node counts as in
        // sync only once the hold-down is over (no flapping faster than the back-off).
        h.record(false, at(now));
        h.record(true, at(now + 800));
        assert!(h.may_attempt(at(now + 801)));
        assert!(h.in_sync(at(now + 800)), "hold-down of 800 ms is over");
        h.record(false, at(now + 900));
        h.record(true, at(now + 1000));
        assert!(!h.in_sync(at(now + 1000)), "hold-down of 1.6 s after the fifth failure");
        assert!(h.in_sync(at(now + 900 + 1600)));
        // A minute without failures forgets the streak.
        h.record(false, at(now + 900 + 61_000));
        assert_eq!(h.failures, 1);
    }
}
