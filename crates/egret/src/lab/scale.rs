//! `egret lab bench scale`: the resident memory of a real agent and a real controller process
//! fed a generated cluster of the brief's size by a test double of the API server.
//!
//! Everything runs in one network namespace made for the run (removed afterwards, also on
//! failure): an `eth0` (one end of a veth pair) with node-10's address, the test double on the namespace's
//! loopback (a thread of this process), then `egret agent --source kubernetes` as node-10 (a
//! gateway node, so it plans for the pods it may serve) and `egret controller --source
//! kubernetes`, one after the other. The world is the index benchmark's: 5,000 nodes (every
//! tenth a gateway), 2,000 namespaces, 100,000 pods with overlapping selections, one /16 pool
//! and 2,000 Egresses, a quarter of them selecting across 200 namespaces.

use anyhow::{Context, bail};
use egret_kube::testserver::TestServer;
use egret_netns::{KillOnDrop, Netns, unique_prefix};
use egret_store::{AgentReport, Store};
use serde_json::{Value, json};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The size of the generated world.
#[derive(Debug, Clone, Copy)]
pub struct World {
    /// Nodes.
    pub nodes: usize,
    /// Namespaces.
    pub namespaces: usize,
    /// Pods.
    pub pods: usize,
    /// Egresses.
    pub egresses: usize,
}

impl World {
    /// The brief's size divided by `div`.
    pub fn divided(div: usize) -> World {
        let d = div.max(1);
        World { nodes: 5_000 / d, namespaces: 2_000 / d, pods: 100_000 / d, egresses: 2_000 / d }
    }
}

fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 10 + (i / 65536) as u8, (i / 256 % 256) as u8, (i % 256) as u8)
}

/// The objects of the world, as the API server would serve them.
fn objects(w: World) -> Vec<Value> {
    let mut out = Vec::with_capacity(w.nodes + w.namespaces + w.pods + w.egresses + 1);
    for i in 0..w.nodes {
        let mut labels = json!({"kubernetes.io/hostname": format!("node-{i}")});
        if i % 10 == 0 {
            labels["network-role"] = json!("egress-gateway");
        }
        let cidr = format!("10.{}.{}.0/24", 128 + i / 256, i % 256);
        out.push(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{i}"), "labels": labels},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": node_ip(i).to_string()}]}}),
        );
    }
    for n in 0..w.namespaces {
        out.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("ns-{n}"),
            "labels": {"kubernetes.io/metadata.name": format!("ns-{n}"), "team": format!("t{n}"), "tier": format!("{}", n % 10)}}}));
    }
    for j in 0..w.pods {
        let node = j % w.nodes;
        let ip = Ipv4Addr::new(10, (128 + node / 256) as u8, (node % 256) as u8, (2 + j / w.nodes) as u8);
        // Every namespace holds all five apps.
        let app = (j / w.namespaces) % 5;
        out.push(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("pod-{j}"), "namespace": format!("ns-{}", j % w.namespaces),
                "labels": {"app": format!("a{app}"), "pod-template-hash": "5d8f7c9b6d"}},
            "spec": {"nodeName": format!("node-{node}"), "containers": [{"name": "main", "image": "registry.example/app:1.0"}]},
            "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]}}));
    }
    out.push(json!({"apiVersion": "egret.dev/v1alpha1", "kind": "ExternalIPPool", "metadata": {"name": "pool"},
        "spec": {"ipRanges": [{"cidr": "172.16.0.0/16"}], "nodeSelector": {"matchLabels": {"network-role": "egress-gateway"}}}}));
    for k in 0..w.egresses {
        let spec = if k % 4 == 0 {
            json!({"appliedTo": {"namespaceSelector": {"matchLabels": {"tier": format!("{}", k % 10)}},
                    "podSelector": {"matchLabels": {"app": format!("a{}", k % 5)}}},
                "destinationCIDRs": [format!("203.0.{}.0/24", k % 256), "198.51.100.0/24"], "externalIPPool": "pool"})
        } else {
            json!({"appliedTo": {"namespaceSelector": {"matchLabels": {"team": format!("t{k}")}},
                    "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a0", "a1", "a2"]}]}},
                "externalIPPool": "pool"})
        };
        out.push(json!({"apiVersion": "egret.dev/v1alpha1", "kind": "Egress", "metadata": {"name": format!("eg-{k}")}, "spec": spec}));
    }
    out
}

/// `VmRSS` and `VmHWM` (peak) of a process, in KiB.
pub(super) fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        s.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Samples a process's memory for `span` and returns (largest VmRSS, VmHWM) in MiB.
fn sample(pid: u32, span: Duration) -> anyhow::Result<(f64, f64)> {
    let end = Instant::now() + span;
    let mut rss = 0;
    let mut hwm = 0;
    while Instant::now() < end {
        let (r, h) = memory_kib(pid).context("the process is gone")?;
        rss = rss.max(r);
        hwm = hwm.max(h);
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((rss as f64 / 1024.0, hwm as f64 / 1024.0))
}

fn spawn(ns: &Netns, args: &[&str], log: &Path) -> anyhow::Result<KillOnDrop> {
    let exe = std::env::current_exe()?;
    let log = std::fs::File::create(log)?;
    let mut cmd = ns.command(&exe.to_string_lossy());
    cmd.args(args).env("EGRET_LOG", "info").stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    let child = cmd.spawn().with_context(|| format!("starting egret {}", args.join(" ")))?;
    Ok(KillOnDrop(child))
}

fn wait(
    limit: Duration,
    what: &str,
    child: &mut KillOnDrop,
    log: &Path,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let tail = || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    };
    while !done() {
        if let Ok(Some(status)) = child.0.try_wait() {
            bail!("{what}: the process exited ({status}); its log ends:\n{}", tail());
        }
        if t0.elapsed() > limit {
            bail!("{what}: not done within {} s; its log ends:\n{}", limit.as_secs(), tail());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(t0.elapsed())
}

/// Runs the measurement and prints the figures.
pub fn run(div: usize) -> anyhow::Result<ExitCode> {
    super::need_root()?;
    let w = World::divided(div);
    let agent_node = 10.min(w.nodes.saturating_sub(1));
    let ns = Netns::create(&unique_prefix("scale"))?;
    // A veth pair inside the namespace stands for the node's interface (the kernel may lack
    // dummy devices).
    ns.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer"])?;
    ns.ip(&["link", "set", "eth0-peer", "up"])?;
    ns.ip(&["addr", "add", &format!("{}/16", node_ip(agent_node)), "dev", "eth0"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    let files = TempDir::new()?;
    let dir = files.0.clone();
    let listen = SocketAddr::from(([127, 0, 0, 1], 6443));
    std::fs::write(dir.join("kubeconfig"), super::api::kubeconfig(listen))?;
    egret_gossip::generate_key_file(&dir.join("gossip.key")).context("creating a gossip key")?;

    // The test double, filled with the world, in a thread inside the namespace.
    let stop = Arc::new(AtomicBool::new(false));
    let with_status = Arc::new(AtomicUsize::new(0));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Duration, String>>();
    let (st, ws) = (stop.clone(), with_status.clone());
    let objs = objects(w);
    let double = ns.spawn_thread(move || {
        let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
                return;
            }
        };
        rt.block_on(async move {
            let t0 = Instant::now();
            let server = match TestServer::start_on(listen).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            for o in objs {
                if let Err(e) = server.put(o) {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            }
            let _ = ready_tx.send(Ok(t0.elapsed()));
            while !st.load(Ordering::Relaxed) {
                let n =
                    server.list("egret.dev/v1alpha1", "Egress").iter().filter(|e| e.get("status").is_some()).count();
                ws.store(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    })?;
    let filled = ready_rx.recv().context("the test double stopped")?.map_err(anyhow::Error::msg)?;
    println!(
        "world: {} nodes, {} namespaces, {} pods, {} Egresses; test double filled in {:.1} s",
        w.nodes,
        w.namespaces,
        w.pods,
        w.egresses,
        filled.as_secs_f64()
    );

    let kubeconfig = dir.join("kubeconfig").to_string_lossy().into_owned();
    let store_dir = dir.join("store");
    let store = Store::open(&store_dir)?;
    let node = format!("node-{agent_node}");
    let mut agent = spawn(
        &ns,
        &[
            "agent",
            "--source",
            "kubernetes",
            "--kubeconfig",
            &kubeconfig,
            "--store",
            &store_dir.to_string_lossy(),
            "--node",
            &node,
            "--underlay",
            "eth0",
            "--health-addr",
            "127.0.0.1:9090",
        ],
        &dir.join("agent.log"),
    )?;
    let took = wait(Duration::from_secs(600), "agent", &mut agent, &dir.join("agent.log"), || {
        store.read_reports::<AgentReport>().iter().any(|(n, r)| *n == node && r.ready)
    })?;
    let (rss, hwm) = sample(agent.0.id(), Duration::from_secs(3))?;
    println!(
        "agent ({node}, every pod watched): ready {:.1} s after start; resident {rss:.0} MiB, peak {hwm:.0} MiB",
        took.as_secs_f64()
    );
    drop(agent);

    let key = dir.join("gossip.key").to_string_lossy().into_owned();
    let mut controller = spawn(
        &ns,
        &[
            "controller",
            "--source",
            "kubernetes",
            "--kubeconfig",
            &kubeconfig,
            "--identity",
            "scale-0",
            "--gossip-key-file",
            &key,
            "--gossip-addr",
            "127.0.0.1:7950",
        ],
        &dir.join("controller.log"),
    )?;
    let want = w.egresses;
    let took = wait(Duration::from_secs(600), "controller", &mut controller, &dir.join("controller.log"), || {
        with_status.load(Ordering::Relaxed) >= want
    })?;
    let (rss, hwm) = sample(controller.0.id(), Duration::from_secs(3))?;
    println!(
        "controller: every Egress's status written {:.1} s after start; resident {rss:.0} MiB, peak {hwm:.0} MiB",
        took.as_secs_f64()
    );
    drop(controller);
    stop.store(true, Ordering::Relaxed);
    let _ = double.join();
    Ok(ExitCode::SUCCESS)
}

/// A directory removed on drop (the logs are copied next to the figures only on failure).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        let dir = std::env::temp_dir().join(unique_prefix("scale-files"));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
