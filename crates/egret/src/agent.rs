//! `egret agent --store DIR --node NAME`: programs this node's datapath from the store, learns
//! which nodes are alive by gossip, hosts the egress IPs placement gives it, and reports.
//!
//! The datapath work runs on a plain thread (the datapath drives netlink on its own small
//! runtime); gossip and the HTTP endpoints run on a tokio runtime beside it. Every membership
//! change wakes the datapath thread, which recomputes placement from the new live set at once:
//! no round trip through the controller on failover.

use crate::controller::liveness;
use crate::metrics::Metrics;
use anyhow::{Context, bail};
use egret_core::planner::{ClusterConfig, NodePlan};
use egret_datapath::{Config, Datapath};
use egret_gossip::{Gossip, GossipConfig, GossipHandle, GossipKey, MemberStatus, Seed, View};
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
    /// The local store directory.
    #[arg(long, required_unless_present = "cleanup")]
    pub store: Option<PathBuf>,
    /// This node's name.
    #[arg(long, required_unless_present = "cleanup")]
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
    /// The shared gossip key (64 hex characters). Without it there is no gossip and this node
    /// never hosts egress IPs.
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
}

impl AgentArgs {
    fn datapath_config(&self) -> Config {
        Config {
            underlay: self.underlay.clone(),
            vxlan_name: self.vxlan_name.clone(),
            vni: self.vni,
            vxlan_port: self.vxlan_port,
            ..Config::default()
        }
    }
}

#[derive(Default)]
struct Health {
    ready: bool,
    error: Option<String>,
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
    /// No key: store heartbeats, and this node never hosts.
    Heartbeats,
}

impl Membership {
    /// The live set (this node included) and whether this node may host egress IPs now.
    fn live(&self, store: &Store, node: &str, args: &AgentArgs) -> (BTreeSet<String>, bool) {
        match self {
            Membership::Gossip { view, has_peers, joined_since, .. } => {
                let v = match view.lock() {
                    Ok(v) => v.clone(),
                    // Without a trustworthy view, host nothing.
                    Err(_) => return ([node.to_string()].into(), false),
                };
                // Suspect members are still alive for SWIM until declared Dead.
                let mut live: BTreeSet<String> = v.active().into_iter().map(str::to_string).collect();
                live.insert(node.to_string());
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
                (live, settled)
            }
            Membership::Heartbeats => {
                let (mut live, _) = liveness(&store.read_reports(), args.liveness_timeout_ms);
                live.insert(node.to_string());
                (live, false)
            }
        }
    }
}

/// The last store state that loaded without errors.
type GoodState = Option<(egret_store::Objects, u64)>;

/// This node's plan from the store (or, while the store has a bad document, from the last good
/// state, so membership changes still fail over), and the store stamp it reflects.
fn compute(
    store: &Store,
    good: &mut GoodState,
    node: &str,
    live: &BTreeSet<String>,
    may_host: bool,
    args: &AgentArgs,
    logged: &mut Vec<egret_core::planner::Warning>,
) -> anyhow::Result<(NodePlan, u64)> {
    let (objs, errs, stamp) = store.load_stamped();
    if let Some(e) = errs.first() {
        warn!("store has {} bad document(s), keeping the last good state; first: {e}", errs.len());
    } else {
        *good = Some((objs, stamp));
    }
    let Some((objs, stamp)) = good.as_ref() else { bail!("the store has never loaded without errors") };
    let stamp = *stamp;
    let config = ClusterConfig {
        service_cidrs: args.service_cidrs.clone(),
        internal_cidrs: Vec::new(),
        reserved: args.reserved_ips.clone(),
    };
    // Not settled in the cluster yet (or no gossip key): plan as if this node could not be a
    // gateway, so it holds, announces and SNATs nothing, and the sync removes whatever an
    // earlier life held before anything is announced. Its pods are steered to the others.
    let mut live = live.clone();
    if !may_host {
        live.remove(node);
    }
    let (_, p) = objs.plan(&live, &config);
    crate::controller::log_warnings(&p.warnings, logged);
    let np = p.node_plan(node).ok_or(NotInStore)?;
    Ok((np, stamp))
}

/// This node's Node object is not (or no longer) in the store.
#[derive(Debug, thiserror::Error)]
#[error("this node is not in the store")]
struct NotInStore;

struct Loop {
    store: Store,
    node: String,
    args: AgentArgs,
    health: Arc<Mutex<Health>>,
    metrics: Arc<Metrics>,
    membership: Membership,
}

impl Loop {
    fn run(self, wake: std::sync::mpsc::Receiver<()>, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
        let Loop { store, node, args, health, metrics, membership } = self;
        let mut dp = Datapath::new(args.datapath_config())?;
        let mut last: Option<NodePlan> = None;
        let mut report = AgentReport { node: node.clone(), pid: std::process::id(), ..AgentReport::default() };
        let mut last_heartbeat = 0u64;
        let mut conflicts_seen: HashSet<(IpAddr, Vec<String>)> = HashSet::new();
        let mut announced_hosted: Option<Vec<IpAddr>> = None;
        // Work only when something may have changed: a store or membership event (wake), a
        // change of the live set or of the right to host, a failed sync to retry, or the
        // periodic check that repairs drift made behind our back.
        let mut dirty = true;
        let mut last_verify = Instant::now();
        let mut last_inputs: Option<(BTreeSet<String>, bool)> = None;
        let mut good: GoodState = None;
        let mut logged = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let (live, may_host) = membership.live(&store, &node, &args);
            let verify = last_verify.elapsed() >= VERIFY_EVERY;
            // The live set of heartbeat liveness, and the end of a settle period, change
            // without any event.
            let inputs = (live, may_host);
            if last_inputs.as_ref() != Some(&inputs) {
                dirty = true;
            }
            let (live, may_host) = last_inputs.insert(inputs).clone();
            if report.may_host != may_host {
                report.may_host = may_host;
                last_heartbeat = 0;
            }
            if dirty || verify || !report.ready {
                dirty = false;
                match compute(&store, &mut good, &node, &live, may_host, &args, &mut logged) {
                    Ok((np, stamp)) => {
                        if last.as_ref() != Some(&np) || !report.ready || verify {
                            last_verify = Instant::now();
                            match dp.sync(&np) {
                                Ok(r) => {
                                    metrics.syncs.get_or_create(&vec![("result".into(), "ok".into())]).inc();
                                    if !r.drift.is_empty() {
                                        warn!(drift = ?r.drift, "datapath drifted from what was programmed; repaired");
                                    }
                                    let hosted: Vec<IpAddr> = np.hosted.iter().map(|h| h.ip).collect();
                                    if report.hosted != hosted {
                                        info!(hosted = ?hosted, "egress IPs hosted here changed");
                                        last_heartbeat = 0;
                                    }
                                    metrics.hosted.set(hosted.len() as i64);
                                    report.ready = true;
                                    report.error = None;
                                    report.hosted = hosted;
                                    last = Some(np);
                                }
                                Err(e) => {
                                    metrics.syncs.get_or_create(&vec![("result".into(), "error".into())]).inc();
                                    warn!("datapath sync failed: {e}");
                                    report.ready = false;
                                    report.error = Some(e.to_string());
                                }
                            }
                        }
                        // Record when this store state was first fully programmed, and tell at once.
                        if report.ready && stamp != report.programmed_stamp_ms {
                            report.programmed_stamp_ms = stamp;
                            report.programmed_at_ms = now_ms();
                            last_heartbeat = 0;
                        }
                    }
                    Err(e) if e.is::<NotInStore>() => {
                        // Removed from the cluster: hold and steer nothing, so no IP is held twice.
                        if last.take().is_some() || !report.hosted.is_empty() {
                            warn!("{node} is no longer in the store: removing Egret's datapath state");
                            if let Err(e) = dp.cleanup() {
                                warn!("cleanup: {e}");
                            }
                            report.hosted.clear();
                            last_heartbeat = 0;
                        }
                        report.error = Some(format!("node {node} is not in the store"));
                    }
                    Err(e) => {
                        warn!("{e:#}");
                        report.error = Some(format!("{e:#}"));
                    }
                }
            }
            if let Membership::Gossip { view, handle, rt, .. } = &membership {
                if announced_hosted.as_ref() != Some(&report.hosted) {
                    match rt.block_on(handle.set_hosted(report.hosted.clone())) {
                        Ok(()) => announced_hosted = Some(report.hosted.clone()),
                        Err(e) => warn!("announcing hosted IPs by gossip: {e}"),
                    }
                }
                let v = view.lock().map(|v| v.clone()).unwrap_or_default();
                let now: HashSet<(IpAddr, Vec<String>)> = v.conflicts().into_iter().collect();
                for c in now.difference(&conflicts_seen) {
                    metrics.conflicts.inc();
                    warn!(ip = %c.0, holders = ?c.1, "egress IP conflict: held by more than one live node");
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
                metrics.gossip_rejected.set(handle.counters().rejected() as i64);
                report.members = v
                    .members
                    .iter()
                    .map(|m| MemberReport { name: m.name.clone(), ip: m.addr.ip(), status: format!("{:?}", m.status) })
                    .collect();
            }
            if let Ok(mut h) = health.lock() {
                h.ready = report.ready;
                h.error = report.error.clone();
            }
            let now = now_ms();
            if now.saturating_sub(last_heartbeat) >= args.heartbeat_ms {
                report.heartbeat_ms = now;
                if let Err(e) = store.write_report(&node, &report) {
                    warn!("writing report: {e}");
                }
                last_heartbeat = now;
            }
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

async fn serve_http(addr: SocketAddr, health: Arc<Mutex<Health>>, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    use axum::http::StatusCode;
    let ready = move || {
        let health = health.clone();
        async move {
            match health.lock() {
                Ok(h) if h.ready => (StatusCode::OK, "ready\n".to_string()),
                Ok(h) => {
                    (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", h.error.clone().unwrap_or_default()))
                }
                Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "poisoned\n".to_string()),
            }
        }
    };
    let scrape = move || {
        let metrics = metrics.clone();
        async move { metrics.encode() }
    };
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route("/readyz", axum::routing::get(ready))
        .route("/metrics", axum::routing::get(scrape));
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn wait_for_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// The gossip configuration: this node's underlay address and every other Node as a seed.
fn gossip_config(store: &Store, node: &str, key: GossipKey, port: u16) -> anyhow::Result<GossipConfig> {
    let (objs, errs) = store.load();
    if let Some(e) = errs.first() {
        bail!("store: {e}");
    }
    let nodes = objs.model_nodes();
    // One rule for every node's gossip address, so peers reach each other where they listen.
    let addr_of =
        |n: &egret_core::model::Node| n.ip(egret_core::net::Family::V4).or_else(|| n.internal_ips.first().copied());
    let me = nodes.iter().find(|n| n.name == node).with_context(|| format!("node {node:?} is not in the store"))?;
    let ip = addr_of(me).with_context(|| format!("node {node:?} has no InternalIP"))?;
    let seeds = nodes
        .iter()
        .filter(|n| n.name != node)
        .filter_map(|n| Some(Seed { name: n.name.clone(), addr: SocketAddr::new(addr_of(n)?, port) }))
        .collect();
    Ok(GossipConfig::new(node, SocketAddr::new(ip, port), seeds, key))
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
    let (Some(store_dir), Some(node)) = (args.store.clone(), args.node.clone()) else {
        bail!("--store and --node are required");
    };
    let store = Store::open(&store_dir).with_context(|| format!("opening store {}", store_dir.display()))?;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let watch_tx: Sender<()> = tx.clone();
    let _watch = egret_store::watch(store.dir(), move || {
        let _ = watch_tx.send(());
    })?;
    let health = Arc::new(Mutex::new(Health::default()));
    let metrics = Arc::new(Metrics::new());
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;

    let membership = match &args.gossip_key_file {
        Some(path) => {
            let key = GossipKey::load(path).with_context(|| format!("gossip key {}", path.display()))?;
            let cfg = gossip_config(&store, &node, key, args.gossip_port)?;
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
            Membership::Heartbeats
        }
    };
    info!(node = %node, store = %store_dir.display(), "agent started");

    let health_addr = args.health_addr;
    let worker = Loop { store, node, args, health: health.clone(), metrics: metrics.clone(), membership };
    // If the datapath loop ends on its own (an error or a panic), the whole agent must exit:
    // otherwise gossip would keep telling peers this node is alive while nothing hosts its IPs.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let loop_handle = {
        let stop = stop.clone();
        std::thread::Builder::new().name("datapath".into()).spawn(move || {
            let _done = DoneOnDrop(Some(done_tx));
            worker.run(rx, stop)
        })?
    };
    let served = rt.block_on(async {
        tokio::select! {
            r = serve_http(health_addr, health, metrics) => r,
            _ = wait_for_signal() => Ok(()),
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
