//! `egret agent --store DIR --node NAME`: programs this node's datapath from the store and
//! reports what it hosts.
//!
//! The datapath work runs on a plain thread (the datapath drives netlink on its own small
//! runtime); the health endpoints run on a tokio runtime beside it.

use crate::controller::liveness;
use anyhow::{Context, bail};
use egret_core::ipam::allocate;
use egret_core::planner::{ClusterConfig, Inputs, NodePlan, plan};
use egret_datapath::{Config, Datapath};
use egret_store::{AgentReport, Store, now_ms};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;
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
    /// Where to serve /healthz and /readyz.
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
    /// How often this agent writes its heartbeat.
    #[arg(long, default_value = "300")]
    pub heartbeat_ms: u64,
    /// Another agent whose heartbeat is older than this is not alive.
    #[arg(long, default_value = "1500")]
    pub liveness_timeout_ms: u64,
    /// Re-evaluate at least this often (liveness changes have no file event).
    #[arg(long, default_value = "100")]
    pub resync_ms: u64,
    /// Service CIDRs (never steered).
    #[arg(long = "service-cidr", default_value = "10.96.0.0/12", value_delimiter = ',')]
    pub service_cidrs: Vec<ipnet::IpNet>,
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

/// This node's plan from the store, and the newest apply stamp it reflects.
fn compute(store: &Store, node: &str, args: &AgentArgs) -> anyhow::Result<(NodePlan, u64)> {
    let (objs, errs, stamp) = store.load_stamped();
    if let Some(e) = errs.first() {
        bail!("store has {} bad document(s), keeping the last good state; first: {e}", errs.len());
    }
    let reports: Vec<(String, AgentReport)> = store.read_reports();
    let (mut live, _) = liveness(&reports, args.liveness_timeout_ms);
    live.insert(node.to_string());
    let v = objs.validate();
    let allocations = allocate(&v.pools, &v.egresses);
    let config = ClusterConfig { service_cidrs: args.service_cidrs.clone(), internal_cidrs: Vec::new() };
    let nodes = objs.model_nodes();
    let p = plan(&Inputs {
        pools: &v.pools,
        egresses: &v.egresses,
        allocations: &allocations,
        nodes: &nodes,
        namespaces: &objs.model_namespaces(),
        pods: &objs.model_pods(),
        live: &live,
        config: &config,
    });
    let np = p.node_plan(node).with_context(|| format!("node {node:?} is not in the store"))?;
    Ok((np, stamp))
}

fn control_loop(
    store: Store,
    node: String,
    args: AgentArgs,
    health: Arc<Mutex<Health>>,
    wake: std::sync::mpsc::Receiver<()>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut dp = Datapath::new(args.datapath_config())?;
    let mut last: Option<NodePlan> = None;
    let mut report = AgentReport { node: node.clone(), pid: std::process::id(), ..AgentReport::default() };
    let mut last_heartbeat = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match compute(&store, &node, &args) {
            Ok((np, applied_at)) => {
                if last.as_ref() != Some(&np) || !report.ready {
                    match dp.sync(&np) {
                        Ok(r) => {
                            if report.hosted != np.hosted.iter().map(|h| h.ip).collect::<Vec<_>>() {
                                last_heartbeat = 0;
                            }
                            if !r.drift.is_empty() {
                                warn!(drift = ?r.drift, "datapath drifted from what was programmed; repaired");
                            }
                            report.ready = true;
                            report.error = None;
                            report.hosted = np.hosted.iter().map(|h| h.ip).collect();
                            last = Some(np);
                        }
                        Err(e) => {
                            warn!("datapath sync failed: {e}");
                            report.ready = false;
                            report.error = Some(e.to_string());
                        }
                    }
                }
                // Record when this store state was first fully programmed, and tell at once.
                if report.ready && applied_at != report.programmed_stamp_ms {
                    report.programmed_stamp_ms = applied_at;
                    report.programmed_at_ms = now_ms();
                    last_heartbeat = 0;
                }
            }
            Err(e) => {
                warn!("{e:#}");
                report.error = Some(format!("{e:#}"));
            }
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
            Ok(()) => while wake.try_recv().is_ok() {},
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    Ok(())
}

async fn serve_health(addr: SocketAddr, health: Arc<Mutex<Health>>) -> anyhow::Result<()> {
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
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route("/readyz", axum::routing::get(ready));
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
    let stop = Arc::new(AtomicBool::new(false));
    info!(node = %node, store = %store_dir.display(), "agent started");

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let health_addr = args.health_addr;
    let loop_handle = {
        let (health, stop) = (health.clone(), stop.clone());
        std::thread::Builder::new()
            .name("datapath".into())
            .spawn(move || control_loop(store, node, args, health, rx, stop))?
    };
    rt.block_on(async {
        tokio::select! {
            r = serve_health(health_addr, health) => r,
            _ = wait_for_signal() => Ok(()),
        }
    })?;
    // The datapath is left in place: a restarted agent converges without disturbing flows.
    stop.store(true, Ordering::Relaxed);
    let _ = tx.send(());
    match loop_handle.join() {
        Ok(r) => r?,
        Err(_) => bail!("the datapath thread panicked"),
    }
    info!("agent stopped");
    Ok(())
}
