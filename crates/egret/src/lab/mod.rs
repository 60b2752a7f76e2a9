//! `egret lab`: a whole Egret cluster on one machine, in network namespaces.
//!
//! `up` builds the BRIEF's topology with egret-netns, writes its Nodes, Namespaces and Pods to a
//! local store, and starts one real controller and one real agent per node (inside the node's
//! namespace) as detached processes logging to the lab directory. Nothing is added to the
//! host's own network namespace. `down` removes every namespace, process and file `up` made,
//! also after a crash (it finds the namespaces by their prefix).

mod api;
mod bench;
pub(crate) mod datapath;
mod dns;
mod dnsbench;
mod flood;
mod fqdnbench;
mod logs;
mod monitoring;
mod scale;
mod scrapebench;
mod spreadbench;
mod state;

use crate::table;
use anyhow::{Context, bail};
use egret_netns::{Netns, Topology, TopologySpec, WhoamiConn, plumb_pod};
use egret_store::{AgentReport, Objects, Store, StoreError, now_ms, read_paths, read_str};
use k8s_openapi::api::core::v1 as corev1;
use state::{LabNode, LabPod, LabState};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

pub use state::LABS_DIR;

/// The lab's cluster: the same objects as `examples/cluster/lab.yaml`.
const CLUSTER_YAML: &str = include_str!("../../../../examples/cluster/lab.yaml");

/// `egret lab` and its subcommands.
#[derive(clap::Args, Debug)]
pub struct LabArgs {
    /// The lab's name: labs with different names run side by side.
    #[arg(long, global = true, default_value = "egret")]
    pub name: String,
    #[command(subcommand)]
    pub cmd: LabCmd,
}

/// Lab subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum LabCmd {
    /// Build the lab and start a controller and one agent per node.
    Up {
        /// Number of nodes (the default topology has six).
        #[arg(long, default_value = "6")]
        nodes: usize,
        /// Serve the objects from a test double of the API server (in the router's namespace)
        /// instead of the store: agents and two leader-elected controller replicas then run
        /// with `--source kubernetes`. `apply`/`delete` still go through the store, mirrored.
        #[arg(long)]
        api_server: bool,
        /// Also run Prometheus (Debian's `prometheus`) in the router's namespace, scraping every
        /// agent (and controller replica) each second and evaluating
        /// deploy/monitoring/alerts.yaml; ask it with `egret lab metrics`.
        #[arg(long)]
        monitoring: bool,
        /// Plumb the pods with a real CNI plugin from Debian's `containernetworking-plugins`
        /// (`bridge` or `ptp`, `host-local` IPAM, `ipMasq: true`), invoked through the CNI
        /// protocol like a kubelet's runtime, instead of the lab's stand-in.
        #[arg(long, value_name = "PLUGIN")]
        cni: Option<egret_netns::cni::Plugin>,
    },
    /// An instant PromQL query against the lab's Prometheus (`up --monitoring`): one line per
    /// series, its labels and value.
    Metrics {
        /// The query, e.g. `sum by (egress_ip) (rate(egret_egress_bytes_total{gateway="true"}[1m]))`.
        query: String,
    },
    /// Stop every process and remove every namespace and file of the lab.
    Down,
    /// Show nodes, agents, pods and Egresses.
    Status,
    /// Create or update objects (all or nothing) and wait until every node has programmed them.
    Apply {
        /// Files or directories of YAML manifests.
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
    },
    /// Delete the objects named in manifests.
    Delete {
        /// Files or directories of YAML manifests.
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
    },
    /// Run a command inside a pod: `egret lab exec prod/web-1 -- ip addr`.
    Exec {
        /// `namespace/pod`.
        pod: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Connect from a pod to a whoami server and print the source address it saw.
    Whoami {
        /// `namespace/pod`.
        pod: String,
        /// `db-a`, `bad-host`, an address, or a name the pod resolves (port 8080 unless given).
        #[arg(long, default_value = "db-a")]
        to: String,
        /// Give up after this many milliseconds.
        #[arg(long, default_value = "3000")]
        timeout_ms: u64,
    },
    /// Power loss: kill the node's agent and take its link down.
    KillNode {
        /// Node name.
        node: String,
        /// A network partition instead: only the link goes down, the agent keeps running.
        #[arg(long)]
        keep_agent: bool,
    },
    /// Bring a killed node back (link up, agent restarted).
    RestoreNode {
        /// Node name.
        node: String,
    },
    /// Restart the controller or a node's agent (the datapath stays as it is meanwhile).
    Restart {
        /// `controller`, a node name, or (with `--api-server`) `leader`: kill the controller
        /// replica holding the Lease, wait until the other one takes over, start it again.
        target: String,
        /// Start the agent without the gossip key (it then refuses to host egress IPs).
        #[arg(long)]
        without_key: bool,
    },
    /// The agents' audit logs (JSON lines, oldest first): audited connections of the egress
    /// firewall.
    Logs {
        /// Only this node's.
        #[arg(long)]
        node: Option<String>,
        /// Keep printing new records.
        #[arg(long, short)]
        follow: bool,
    },
    /// The lab's DNS server (203.0.113.53, every pod's resolver): set and show records.
    Dns {
        #[command(subcommand)]
        cmd: dns::DnsCmd,
    },
    /// Measurements in the lab.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
    /// Serve the test double of the API server, mirroring a store (used by `up --api-server`).
    #[command(hide = true)]
    ServeApi {
        /// The store to mirror.
        #[arg(long)]
        store: PathBuf,
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Where to write what the mirror did (`api.json`).
        #[arg(long)]
        state: PathBuf,
    },
    /// Serve the lab's DNS zone (used by `up` inside the outside namespace).
    #[command(hide = true)]
    ServeDns(dns::ServeArgs),
    /// Serve whoami on this namespace (used by `up` inside the outside namespace).
    #[command(hide = true)]
    ServeWhoami {
        /// Ports: the lab's service port, and 443 for seed 001's HTTPS-only NetworkPolicy.
        #[arg(long = "port", value_delimiter = ',', default_values_t = [egret_netns::WHOAMI_PORT, 443])]
        ports: Vec<u16>,
    },
}

/// Lab benchmarks.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCmd {
    /// Gap in a pod's traffic when its gateway node loses power, and when it comes back.
    Failover {
        /// Number of trials (with 100 or more, the p99 is not simply the maximum).
        #[arg(long, default_value = "100")]
        trials: usize,
        /// The Egress whose gateway is killed.
        #[arg(long, default_value = "egress-prod-web")]
        egress: String,
    },
    /// One Egress with four egress IPs on four gateways and many pods: kill one gateway per
    /// trial, count the pods that moved and the gaps of those and of the others (adds its
    /// pods, pool and Egress; removes them afterwards).
    Spread {
        /// Number of trials (each kills one gateway, in turn).
        #[arg(long, default_value = "20")]
        trials: usize,
        /// Pods, alternating between node-1 and node-2.
        #[arg(long, default_value = "24")]
        pods: usize,
    },
    /// Store change -> datapath programmed on every node (adds a bench pod to every node so
    /// that every change changes every node's datapath; removes them afterwards).
    Latency {
        /// Number of changes (each one a sample on every node).
        #[arg(long, default_value = "50")]
        trials: usize,
        /// What changes: an Egress (steering) or a ClusterEgressPolicy (the firewall).
        #[arg(long, value_enum, default_value = "egress")]
        object: bench::BenchObject,
    },
    /// A pod floods denied, audited packets while it keeps opening allowed connections:
    /// lost connections, audit records written and dropped, the agent's memory. Applies
    /// examples/firewall-audit/ (its Egress and policy).
    AuditFlood {
        /// Denied packets per second.
        #[arg(long, default_value = "10000")]
        pps: u32,
        /// How long.
        #[arg(long, default_value = "10")]
        seconds: u64,
    },
    /// DNS lookups from a pod at a steady rate (open loop): sent, answered, lost, latency
    /// percentiles. Queries go to the pod's resolver (the lab's DNS server) unless --server.
    Dns(dnsbench::Opts),
    /// Domain-name rules: for each of N fresh names, a lookup from the pod through the node's
    /// DNS proxy, then at once a TCP connection to the answer: how many first connections
    /// succeed (first SYN answered), and how long answers were held for programming. The pod
    /// must be under name rules allowing `**.fresh.test` (examples/fqdn-allowlist).
    Fqdn {
        /// The pod (`namespace/pod`).
        #[arg(long, default_value = "prod/web-1")]
        pod: String,
        /// How many fresh names (n0000.fresh.test ...; at most 1,000).
        #[arg(long, default_value = "1000")]
        names: usize,
    },
    /// What a scrape of each agent's /metrics costs with many Egresses on every node, and
    /// whether scraping back to back slows the programming of a change (quiet and scraped
    /// changes alternate).
    Scrape {
        /// Egresses selecting a bench pod on every node (at most 1,024).
        #[arg(long, default_value = "1000")]
        egresses: usize,
        /// Scrapes per agent.
        #[arg(long, default_value = "200")]
        samples: usize,
        /// Changes, alternately quiet and scraped (half of them each).
        #[arg(long, default_value = "120")]
        trials: usize,
        /// During scraped changes, scrape every agent this often (0: back to back).
        #[arg(long, default_value = "100")]
        scrape_interval_ms: u64,
    },
    /// Resident memory of a real agent and a real controller fed the brief's cluster (100,000
    /// pods, 2,000 Egresses, 5,000 nodes) by a test double of the API server, in a namespace of
    /// its own (no lab needed).
    Scale {
        /// Divide the world by this (a quick look).
        #[arg(long, default_value = "1")]
        div: usize,
    },
}

/// Runs a lab command.
pub fn run(args: LabArgs) -> anyhow::Result<ExitCode> {
    let name = args.name.as_str();
    // No '-': a lab's namespaces are found by the prefix `egret-lab-NAME-`, which must never
    // also match another lab's (`a` and `a-b`).
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) || name.len() > 20 {
        bail!("lab name {name:?} must be 1-20 letters and digits");
    }
    match args.cmd {
        LabCmd::Up { nodes, api_server, monitoring, cni } => up(name, nodes, api_server, monitoring, cni),
        LabCmd::Metrics { query } => {
            for m in monitoring::query(name, &query)? {
                println!("{} {}", m.labels, m.value);
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Down => down(name),
        LabCmd::Status => status(name),
        LabCmd::Apply { files } => apply(name, &files),
        LabCmd::Delete { files } => delete(name, &files),
        LabCmd::Exec { pod, cmd } => exec(name, &pod, &cmd),
        LabCmd::Whoami { pod, to, timeout_ms } => whoami(name, &pod, &to, Duration::from_millis(timeout_ms)),
        LabCmd::KillNode { node, keep_agent } => kill_node(name, &node, keep_agent),
        LabCmd::RestoreNode { node } => restore_node(name, &node),
        LabCmd::Restart { target, without_key } => restart(name, &target, without_key),
        LabCmd::Logs { node, follow } => logs::run(name, node.as_deref(), follow),
        LabCmd::Bench { what: BenchCmd::Latency { trials, object } } => bench::latency(name, trials, object),
        LabCmd::Bench { what: BenchCmd::Failover { trials, egress } } => bench::failover(name, trials, &egress),
        LabCmd::Bench { what: BenchCmd::Scale { div } } => scale::run(div),
        LabCmd::Bench { what: BenchCmd::Spread { trials, pods } } => spreadbench::run(name, trials, pods),
        LabCmd::Bench { what: BenchCmd::Scrape { egresses, samples, trials, scrape_interval_ms } } => {
            scrapebench::run(name, egresses, samples, trials, Duration::from_millis(scrape_interval_ms))
        }
        LabCmd::Bench { what: BenchCmd::AuditFlood { pps, seconds } } => flood::run(name, pps, seconds),
        LabCmd::Bench { what: BenchCmd::Dns(opts) } => dnsbench::run(name, &opts),
        LabCmd::Bench { what: BenchCmd::Fqdn { pod, names } } => fqdnbench::run(name, &pod, names),
        LabCmd::Dns { cmd } => dns::run(name, cmd),
        LabCmd::ServeDns(args) => dns::serve(&args),
        LabCmd::ServeWhoami { ports } => serve_whoami(&ports),
        LabCmd::ServeApi { store, listen, state } => api::serve(&store, listen, &state),
    }
}

pub(crate) fn need_root() -> anyhow::Result<()> {
    if let Some(why) = egret_netns::skip_reason(&["ip", "nft"]) {
        bail!("the lab needs root and the `ip` and `nft` commands: {why} (install iproute2 and nftables, run as root)");
    }
    Ok(())
}

/// Exclusive lock on the lab's directory for commands that change it.
fn lock(name: &str) -> anyhow::Result<File> {
    let dir = state::dir(name);
    std::fs::create_dir_all(&dir)?;
    let f = File::options().create(true).truncate(false).write(true).open(dir.join("lab.lock"))?;
    f.lock()?;
    Ok(f)
}

/// The lab's Nodes, Namespaces and Pods for `n` nodes: the example cluster, trimmed or
/// extended (nodes 7.. are gateways like 4-6).
fn cluster_objects(n: usize) -> anyhow::Result<Objects> {
    let (mut objs, errs) = read_str(Path::new("examples/cluster/lab.yaml"), CLUSTER_YAML);
    if let Some(e) = errs.first() {
        bail!("built-in cluster: {e}");
    }
    let template = objs.nodes.last().cloned().context("built-in cluster has no node")?;
    objs.nodes.retain(|d| node_index(d.object.metadata.name.as_deref()).is_some_and(|i| i <= n));
    for i in objs.nodes.len() + 1..=n {
        let mut d = template.clone();
        let name = egret_netns::node_name(i);
        let o = &mut d.object;
        o.metadata.name = Some(name.clone());
        let labels = o.metadata.labels.get_or_insert_with(Default::default);
        labels.insert("kubernetes.io/hostname".into(), name.clone());
        labels.insert("node.kubernetes.io/name".into(), format!("node{i}"));
        let cidr = egret_netns::pod_cidr(i).to_string();
        let cidr6 = egret_netns::pod_cidr6(i).to_string();
        o.spec = Some(corev1::NodeSpec {
            pod_cidr: Some(cidr.clone()),
            pod_cidrs: Some(vec![cidr, cidr6]),
            ..Default::default()
        });
        o.status = Some(corev1::NodeStatus {
            addresses: Some(vec![
                corev1::NodeAddress { type_: "InternalIP".into(), address: egret_netns::node_ip(i).to_string() },
                corev1::NodeAddress { type_: "InternalIP".into(), address: egret_netns::node_ip6(i).to_string() },
                corev1::NodeAddress { type_: "Hostname".into(), address: name },
            ]),
            ..Default::default()
        });
        objs.nodes.push(d);
    }
    objs.pods
        .retain(|d| node_index(d.object.spec.as_ref().and_then(|s| s.node_name.as_deref())).is_some_and(|i| i <= n));
    Ok(objs)
}

fn node_index(name: Option<&str>) -> Option<usize> {
    name?.strip_prefix("node-")?.parse().ok()
}

fn pod_key(p: &corev1::Pod) -> String {
    format!("{}/{}", p.metadata.namespace.as_deref().unwrap_or("default"), p.metadata.name.as_deref().unwrap_or(""))
}

fn pod_netns(prefix: &str, key: &str) -> String {
    format!("{prefix}-p-{}", key.replace('/', "-"))
}

fn pod_ip(p: &corev1::Pod) -> Option<Ipv4Addr> {
    p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

/// Starts `egret ARGS...` detached (own process group, output to `log`), inside `netns` if given.
fn spawn_egret(netns: Option<&str>, args: &[&str], log: &Path) -> anyhow::Result<u32> {
    spawn_egret_logging(netns, args, log, "info")
}

/// [`spawn_egret`] with `filter` as the log filter unless `EGRET_LOG` is set.
fn spawn_egret_logging(netns: Option<&str>, args: &[&str], log: &Path, filter: &str) -> anyhow::Result<u32> {
    let exe = std::env::current_exe().context("finding the egret binary")?;
    let out =
        File::options().create(true).append(true).open(log).with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
    if std::env::var_os("EGRET_LOG").is_none() {
        cmd.env("EGRET_LOG", filter);
    }
    let child = cmd.spawn().with_context(|| format!("starting egret {}", args.join(" ")))?;
    Ok(child.id())
}

/// Whether `pid` is a live egret process (guards against a recycled pid).
fn alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("egret"))
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// Whether `pid` runs (a zombie does not count).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.split_whitespace().nth(2) != Some("Z"))
}

/// Stops a process: SIGTERM, then SIGKILL after `grace` if it still runs.
fn stop(pid: u32, grace: Duration) {
    if !running(pid) {
        return;
    }
    signal(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while running(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if running(pid) {
        signal(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

/// The lab's cluster settings: its router's address is no object's, so no pool may take it.
pub(crate) fn lab_config() -> egret_core::planner::ClusterConfig {
    egret_core::planner::ClusterConfig {
        reserved: vec![IpAddr::V4(egret_netns::ROUTER_IP)],
        ..egret_core::planner::ClusterConfig::default()
    }
}

/// Starts the controller with the lab's settings (with the API server double: replica 0).
fn spawn_controller(st: &LabState) -> anyhow::Result<u32> {
    if st.api {
        return spawn_replica(st, 0);
    }
    let store = st.store().to_string_lossy().into_owned();
    let reserved = egret_netns::ROUTER_IP.to_string();
    // In the router's namespace, where the lab's Prometheus scrapes it.
    let health = format!("127.0.0.1:{}", monitoring::CONTROLLER_PORT);
    spawn_egret(
        Some(&st.router.clone()),
        &["controller", "--store", &store, "--reserved-ip", &reserved, "--health-addr", &health],
        &st.log("controller"),
    )
}

/// Starts controller replica `controller-I` against the API server double, in the router's
/// namespace (beside the double, reaching every node), leader-elected with short lab timings.
fn spawn_replica(st: &LabState, i: u16) -> anyhow::Result<u32> {
    let kubeconfig = api::kubeconfig_path(&st.dir()).to_string_lossy().into_owned();
    let key = st.dir().join("gossip.key").to_string_lossy().into_owned();
    let reserved = egret_netns::ROUTER_IP.to_string();
    let id = format!("controller-{i}");
    let gossip = SocketAddr::new(IpAddr::V4(egret_netns::ROUTER_IP), 7950 + i).to_string();
    let health = format!("127.0.0.1:{}", monitoring::CONTROLLER_PORT + i);
    let args = [
        "controller",
        "--source",
        "kubernetes",
        "--kubeconfig",
        &kubeconfig,
        "--identity",
        &id,
        "--namespace",
        api::LEASE_NAMESPACE,
        "--lease-name",
        api::LEASE_NAME,
        "--lease-duration-ms",
        "3000",
        "--renew-deadline-ms",
        "2000",
        "--retry-period-ms",
        "500",
        "--gossip-key-file",
        &key,
        "--gossip-addr",
        &gossip,
        "--reserved-ip",
        &reserved,
        "--health-addr",
        &health,
    ];
    spawn_egret(Some(&st.router.clone()), &args, &st.log(&id))
}

fn start_agent(st: &LabState, node: &LabNode) -> anyhow::Result<u32> {
    start_agent_with(st, node, true)
}

fn start_agent_with(st: &LabState, node: &LabNode, with_key: bool) -> anyhow::Result<u32> {
    let store = st.store().to_string_lossy().into_owned();
    let key = st.dir().join("gossip.key").to_string_lossy().into_owned();
    let reserved = egret_netns::ROUTER_IP.to_string();
    let kubeconfig = api::kubeconfig_path(&st.dir()).to_string_lossy().into_owned();
    let mut args = vec!["agent", "--store", &store, "--node", &node.name, "--underlay", "eth0"];
    if st.api {
        // The store only receives the agent's reports.
        args.extend(["--source", "kubernetes", "--kubeconfig", &kubeconfig]);
    }
    let audit = logs::audit_log(st, &node.name).to_string_lossy().into_owned();
    // The lab's agents always enforce NetworkPolicies (seed 001): with none, that costs nothing.
    // On every address of the node: the lab's Prometheus scrapes it from the router.
    let health = format!("0.0.0.0:{}", monitoring::AGENT_PORT);
    args.extend(["--health-addr", &health, "--reserved-ip", &reserved, "--audit-log", &audit]);
    args.push("--enforce-network-policy");
    if with_key {
        args.extend(["--gossip-key-file", &key]);
    }
    spawn_egret(Some(&node.netns), &args, &st.log(&format!("agent-{}", node.name)))
}

fn up(
    name: &str,
    n: usize,
    api_server: bool,
    monitoring: bool,
    cni: Option<egret_netns::cni::Plugin>,
) -> anyhow::Result<ExitCode> {
    need_root()?;
    if !(1..=150).contains(&n) {
        bail!("--nodes must be between 1 and 150");
    }
    let _lock = lock(name)?;
    let prefix = state::prefix(name);
    if state::dir(name).join("lab.json").exists() || !lab_namespaces(&prefix)?.is_empty() {
        bail!("lab {name:?} is already up (or left over from a crash): run `egret lab down --name {name}` first");
    }
    let mut objs = cluster_objects(n)?;
    let mut spec = TopologySpec::new(name, n);
    spec.prefix = Some(prefix.clone());
    spec.whoami = false;
    if let Some(plugin) = cni {
        let plugin_path = Path::new(egret_netns::cni::CNI_PATH).join(plugin.name());
        if !plugin_path.exists() {
            bail!(
                "--cni {}: {} not found: apt-get install containernetworking-plugins iptables",
                plugin.name(),
                plugin_path.display()
            );
        }
        let dir = state::dir(name).join("cni");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        spec.cni = Some((plugin, dir));
    }
    // The lab's DNS server, an outside host like db-a.
    spec = spec.outside_host(ipnet::Ipv4Net::new(dns::DNS_IP, 24)?);
    for d in &objs.pods {
        let p = &d.object;
        let node = node_index(p.spec.as_ref().and_then(|s| s.node_name.as_deref())).context("pod without node")?;
        let ip = pod_ip(p).context("pod without IPv4 address")?;
        spec = spec.pod(&pod_key(p).replace('/', "-"), node, ip);
    }
    println!("building {n} nodes, {} pods, router and outside hosts in namespaces {prefix}-*", objs.pods.len());
    let topo = Topology::build(&spec)?;
    dns::plumb(&topo.outside, &topo.router)?;
    let mut st = LabState {
        name: name.to_string(),
        prefix: prefix.clone(),
        router: topo.router.name().to_string(),
        outside: topo.outside.name().to_string(),
        nodes: topo
            .nodes
            .iter()
            .map(|nd| {
                (
                    nd.name.clone(),
                    LabNode {
                        name: nd.name.clone(),
                        index: nd.index,
                        ip: nd.ip,
                        pod_cidr: nd.pod_cidr,
                        netns: nd.ns.name().to_string(),
                        router_port: format!("n{}", nd.index),
                    },
                )
            })
            .collect(),
        pods: BTreeMap::new(),
        next_veth: objs.pods.len() as u32,
        controller_pid: None,
        api: api_server,
        api_pid: None,
        standby_pid: None,
        agents: BTreeMap::new(),
        whoami_pid: None,
        dns_pid: None,
        prometheus_pid: None,
        killed: BTreeSet::new(),
        router_routes: BTreeSet::new(),
        cni,
    };
    for d in &mut objs.pods {
        if let Some(ip) = pod_ip(&d.object) {
            set_pod_ips(&mut d.object, ip);
        }
    }
    for d in &objs.pods {
        let p = &d.object;
        let key = pod_key(p);
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        st.pods.insert(
            key.clone(),
            LabPod { netns: pod_netns(&prefix, &key), node, ip: pod_ip(p).unwrap_or(Ipv4Addr::UNSPECIFIED) },
        );
    }
    // From here on the namespaces outlive this process; `down` removes them.
    let Topology { pods, nodes, outside, router, .. } = topo;
    for ns in pods.into_iter().map(|p| p.ns).chain(nodes.into_iter().map(|n| n.ns)).chain([outside, router]) {
        let _ = ns.persist();
    }
    st.save()?;
    match start(&mut st, objs, monitoring) {
        Ok(()) => {
            println!(
                "lab {name:?} is up: {} nodes, {} pods; store {}, logs {}",
                st.nodes.len(),
                st.pods.len(),
                st.store().display(),
                st.dir().join("logs").display()
            );
            println!(
                "try: egret lab whoami prod/web-1 --name {name}    egret lab apply -f examples/seed-002-ha --name {name}"
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e:#}; tearing the lab down");
            drop(_lock);
            let _ = down(name);
            Err(e)
        }
    }
}

/// Starts the test double of the API server in the router's namespace and waits until it has
/// mirrored the store.
fn start_api(st: &mut LabState, store: &Store) -> anyhow::Result<()> {
    let listen = SocketAddr::new(IpAddr::V4(egret_netns::ROUTER_IP), api::API_PORT);
    std::fs::write(api::kubeconfig_path(&st.dir()), api::kubeconfig(listen))?;
    let state = api::state_path(&st.dir());
    let args = [
        "lab".to_string(),
        "serve-api".into(),
        "--store".into(),
        st.store().to_string_lossy().into_owned(),
        "--listen".into(),
        listen.to_string(),
        "--state".into(),
        state.to_string_lossy().into_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    st.api_pid = Some(spawn_egret(Some(&st.router.clone()), &args, &st.log("api-server"))?);
    st.save()?;
    let stamp = store.stamp();
    wait_until(Duration::from_secs(30), || Ok(api::ApiState::load(&state).is_some_and(|a| a.stamp >= stamp)))
        .context("the test double of the API server did not mirror the store within 30 s")
}

/// Starts the processes of a freshly built lab and waits until every agent is ready.
fn start(st: &mut LabState, objs: Objects, monitoring: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(st.dir().join("logs"))?;
    // The agents' shared gossip key (mode 0600), made fresh for every lab.
    egret_gossip::generate_key_file(&st.dir().join("gossip.key")).context("creating the gossip key")?;
    st.whoami_pid = Some(spawn_egret(Some(&st.outside.clone()), &["lab", "serve-whoami"], &st.log("whoami"))?);
    st.save()?;
    st.dns_pid = Some(dns::start(st)?);
    st.save()?;
    let store = Store::open(st.store())?;
    store.apply_with(objs, &lab_config())?;
    if st.api {
        start_api(st, &store)?;
    }
    st.controller_pid = Some(spawn_controller(st)?);
    if st.api {
        st.standby_pid = Some(spawn_replica(st, 1)?);
    }
    st.save()?;
    for node in st.nodes.values().cloned().collect::<Vec<_>>() {
        let pid = start_agent(st, &node)?;
        st.agents.insert(node.name.clone(), pid);
    }
    st.save()?;
    let want: BTreeSet<String> = st.nodes.keys().cloned().collect();
    wait_until(Duration::from_secs(60), || {
        let ready: BTreeSet<String> =
            reports(st).into_iter().filter(|(_, r)| r.ready && r.may_host).map(|(n, _)| n).collect();
        Ok(ready == want)
    })
    .with_context(|| format!("agents did not all become ready within 60 s; see {}", st.dir().join("logs").display()))?;
    if monitoring {
        st.prometheus_pid = Some(monitoring::start(st)?);
        st.save()?;
    }
    Ok(())
}

pub(crate) fn reports(st: &LabState) -> Vec<(String, AgentReport)> {
    Store::open(st.store()).map(|s| s.read_reports()).unwrap_or_default()
}

pub(crate) fn wait_until(limit: Duration, mut done: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if done()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes running `egret controller --store STORE`.
fn controllers_of(store: &str) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                args.contains(&b"controller".as_slice()) && args.contains(&store.as_bytes())
            })
        })
        .collect()
}

/// Every namespace of the lab.
fn lab_namespaces(prefix: &str) -> anyhow::Result<Vec<String>> {
    let out = Command::new("ip").args(["netns", "list"]).output().context("running `ip netns list`")?;
    let dash = format!("{prefix}-");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&dash))
        .map(str::to_string)
        .collect())
}

fn down(name: &str) -> anyhow::Result<ExitCode> {
    need_root()?;
    let _lock = lock(name)?;
    let prefix = state::prefix(name);
    let st = LabState::load(name).ok();
    let mut removed = 0;
    if let Some(pid) = st.as_ref().and_then(|s| s.controller_pid) {
        stop(pid, Duration::from_secs(2));
    }
    // The controller runs outside the lab's namespaces: find any left without a record.
    let store_arg = state::dir(name).join("store").to_string_lossy().into_owned();
    for pid in controllers_of(&store_arg) {
        stop(pid, Duration::from_secs(2));
    }
    // Processes inside the lab's namespaces (agents, whoami, anything a user started). Keep
    // going past errors: whatever can be removed is, and the errors are reported at the end.
    let mut errors = Vec::new();
    let namespaces = lab_namespaces(&prefix)?;
    for ns in &namespaces {
        let out = match Command::new("ip").args(["netns", "pids", ns]).output() {
            Ok(o) => o,
            Err(e) => {
                errors.push(format!("listing processes of {ns}: {e}"));
                continue;
            }
        };
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
            stop(pid, Duration::from_secs(2));
        }
    }
    // Pods first, router last, so no veth outlives its peer's namespace by surprise.
    let mut ordered = namespaces.clone();
    ordered.sort_by_key(|n| {
        if n.contains("-p-") {
            0
        } else if n.ends_with("-r") {
            2
        } else {
            1
        }
    });
    for ns in ordered {
        match Netns::attach(&ns).and_then(Netns::delete) {
            Ok(()) => removed += 1,
            Err(e) => errors.push(format!("deleting {ns}: {e}")),
        }
    }
    errors.extend(dns::remove_resolvers(&prefix));
    let dir = state::dir(name);
    drop(_lock);
    if dir.exists()
        && let Err(e) = std::fs::remove_dir_all(&dir)
    {
        errors.push(format!("removing {}: {e}", dir.display()));
    }
    if !errors.is_empty() {
        bail!("lab {name:?} is only partly down:\n  {}", errors.join("\n  "));
    }
    if removed == 0 && st.is_none() {
        println!("lab {name:?} was not up; nothing to do");
    } else {
        println!("lab {name:?} is down: {removed} namespaces and their processes removed");
    }
    Ok(ExitCode::SUCCESS)
}

fn status(name: &str) -> anyhow::Result<ExitCode> {
    let st = LabState::load(name)?;
    let reps: BTreeMap<String, AgentReport> = reports(&st).into_iter().collect();
    let now = now_ms();
    let rows: Vec<Vec<String>> = st
        .nodes
        .values()
        .map(|n| {
            let r = reps.get(&n.name);
            let agent = match st.agents.get(&n.name) {
                _ if st.killed.contains(&n.name) => "killed".to_string(),
                Some(&pid) if alive(pid) => format!("running ({pid})"),
                _ => "not running".into(),
            };
            vec![
                n.name.clone(),
                n.ip.to_string(),
                agent,
                r.map(|r| if r.ready { "yes" } else { "no" }).unwrap_or("-").to_string(),
                r.map(|r| format!("{} ms", now.saturating_sub(r.heartbeat_ms))).unwrap_or_default(),
                r.map(|r| r.hosted.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")).unwrap_or_default(),
            ]
        })
        .collect();
    out!("{}", table::render(&["NODE", "IP", "AGENT", "READY", "HEARTBEAT", "HOSTS"], &rows, "   "));
    let ctl = match st.controller_pid {
        Some(pid) if alive(pid) => format!("running ({pid})"),
        _ => "not running".into(),
    };
    outln!("\ncontroller: {ctl}");
    let dns = st.dns_pid.filter(|&pid| alive(pid)).map_or("not running".into(), |pid| format!("running ({pid})"));
    outln!("dns server {}: {dns}", dns::DNS_IP);
    if st.api {
        let standby = match st.standby_pid {
            Some(pid) if alive(pid) => format!("running ({pid})"),
            _ => "not running".into(),
        };
        let leader = api::ApiState::load(&api::state_path(&st.dir())).and_then(|a| a.leader);
        outln!("controller-1: {standby}; leader: {}", leader.as_deref().unwrap_or("none"));
    }
    let pods: Vec<Vec<String>> =
        st.pods.iter().map(|(k, p)| vec![k.clone(), p.ip.to_string(), p.node.clone()]).collect();
    out!("\n{}", table::render(&["POD", "IP", "NODE"], &pods, "   "));
    outln!("");
    crate::get::get(crate::get::Resource::Egress, &st.store(), crate::get::GetOutput::Table)
}

/// Checks pods of `objs` against the lab and fills in missing addresses; returns the new pods.
fn prepare_pods(st: &LabState, objs: &mut Objects) -> anyhow::Result<Vec<String>> {
    let mut taken: BTreeSet<Ipv4Addr> = st.pods.values().map(|p| p.ip).collect();
    let mut new = Vec::new();
    for d in &mut objs.pods {
        let key = pod_key(&d.object);
        let p = &mut d.object;
        let node_name = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .with_context(|| format!("pod {key}: spec.nodeName is required in the lab"))?;
        let node = st.node(&node_name).with_context(|| format!("pod {key}: spec.nodeName"))?;
        if let Some(existing) = st.pods.get(&key) {
            if existing.node != node_name {
                bail!(
                    "pod {key}: spec.nodeName: cannot move a running pod from {} to {node_name}; delete it first",
                    existing.node
                );
            }
            set_pod_ips(p, existing.ip);
            continue;
        }
        let ip = match pod_ip(p) {
            Some(ip) => {
                if !node.pod_cidr.contains(&ip) || taken.contains(&ip) {
                    bail!(
                        "pod {key}: status.podIP {ip} is not a free address of {node_name}'s pod CIDR {}",
                        node.pod_cidr
                    );
                }
                ip
            }
            None => node
                .pod_cidr
                .hosts()
                .skip(9)
                .find(|ip| !taken.contains(ip))
                .with_context(|| format!("pod {key}: no free address left in {}", node.pod_cidr))?,
        };
        taken.insert(ip);
        set_pod_ips(p, ip);
        new.push(key);
    }
    for d in &objs.nodes {
        let n = d.object.metadata.name.clone().unwrap_or_default();
        if !st.nodes.contains_key(&n) {
            bail!(
                "Node/{n}: the lab's nodes are fixed when it comes up (use `lab up --nodes N`); only their labels may change"
            );
        }
    }
    Ok(new)
}

/// The lab's pods are dual-stack: `ip` and its IPv6 twin, as `plumb_pod` gives them.
fn set_pod_ips(p: &mut corev1::Pod, ip: Ipv4Addr) {
    let status = p.status.get_or_insert_with(Default::default);
    status.pod_ip = Some(ip.to_string());
    status.pod_ips =
        Some(vec![corev1::PodIP { ip: ip.to_string() }, corev1::PodIP { ip: egret_netns::pod_ip6(ip).to_string() }]);
}

/// Routes on the router for egress IPs outside the node network, so that it reaches them by
/// ARP on the node network like an upstream router with those addresses on-link.
fn sync_router_routes(st: &mut LabState) -> anyhow::Result<()> {
    let (objs, _) = Store::open(st.store())?.load();
    let node_net: ipnet::Ipv4Net = egret_netns::NODE_NET.parse()?;
    let node_net6: ipnet::Ipv6Net = egret_netns::NODE_NET6.parse()?;
    let v = objs.validate(&lab_config());
    let mut want = BTreeSet::new();
    for pool in v.pools.values() {
        // An egress subnet is the router's own subnet (its egress subnet port): no route.
        if pool.subnet.is_some() {
            continue;
        }
        for r in &pool.ranges {
            for c in r.to_cidrs() {
                let outside = match c {
                    ipnet::IpNet::V4(c4) => !node_net.contains(&c4),
                    ipnet::IpNet::V6(c6) => !node_net6.contains(&c6),
                };
                if outside {
                    want.insert(c.to_string());
                }
            }
        }
    }
    for ip in v.egresses.values().flat_map(|e| &e.ips).filter_map(|s| s.ip) {
        match Some(ip) {
            Some(IpAddr::V4(ip)) if !node_net.contains(&ip) => {
                want.insert(format!("{ip}/32"));
            }
            Some(IpAddr::V6(ip)) if !node_net6.contains(&ip) => {
                want.insert(format!("{ip}/128"));
            }
            _ => {}
        }
    }
    let router = Netns::attach(&st.router)?;
    for r in want.difference(&st.router_routes) {
        router.ip(&["route", "replace", r, "dev", "br0"])?;
    }
    for r in st.router_routes.difference(&want) {
        let _ = router.ip(&["route", "del", r, "dev", "br0"]);
    }
    st.router_routes = want;
    Ok(())
}

/// Waits until every running agent has programmed the store as of `stamp`; returns the
/// latency of each node.
fn wait_programmed(st: &LabState, stamp: u64, limit: Duration) -> anyhow::Result<BTreeMap<String, u64>> {
    let want: BTreeSet<&String> = st.nodes.keys().filter(|n| !st.killed.contains(*n)).collect();
    let mut lat = BTreeMap::new();
    // With the API server double, agents count in resourceVersions per kind: the change is the
    // mirror's writes that carried the store stamp over.
    let mut versions = None;
    wait_until(limit, || {
        if st.api && versions.is_none() {
            versions =
                api::ApiState::load(&api::state_path(&st.dir())).filter(|a| a.stamp >= stamp).map(|a| a.versions);
            if versions.is_none() {
                return Ok(false);
            }
        }
        let programmed = |r: &AgentReport| match &versions {
            None => r.programmed_stamp_ms >= stamp,
            Some(want) => want.iter().all(|(k, v)| r.programmed_versions.get(k).is_some_and(|p| p >= v)),
        };
        for (node, r) in reports(st) {
            if want.contains(&node) && programmed(&r) && !lat.contains_key(&node) {
                lat.insert(node, r.programmed_at_ms.saturating_sub(stamp));
            }
        }
        Ok(lat.len() == want.len())
    })
    .with_context(|| {
        let missing: Vec<&&String> = want.iter().filter(|n| !lat.contains_key(**n)).collect();
        format!("nodes {missing:?} did not program the change within {} s", limit.as_secs())
    })?;
    Ok(lat)
}

fn apply(name: &str, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    need_root()?;
    let _lock = lock(name)?;
    let mut st = LabState::load(name)?;
    let (mut objs, errs) = read_paths(files);
    if !errs.is_empty() {
        for e in &errs {
            eprintln!("{e}");
        }
        eprintln!("error: rejected, nothing applied");
        return Ok(ExitCode::from(1));
    }
    let new_pods = prepare_pods(&st, &mut objs)?;
    let applied_objs = objs.clone();
    let store = Store::open(st.store())?;
    let applied = match store.apply_with(objs, &lab_config()) {
        Ok(a) => a,
        Err(StoreError::Invalid(problems)) => {
            for p in &problems {
                let file = applied_objs
                    .origin_by_name(&p.kind, &p.name)
                    .map(|o| o.file.display().to_string())
                    .unwrap_or_else(|| "(lab store)".into());
                eprintln!("{file}: {p}");
            }
            eprintln!("error: rejected, nothing applied");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    for key in &new_pods {
        let Some(d) = applied_objs.pods.iter().find(|d| pod_key(&d.object) == *key) else { continue };
        let ip = pod_ip(&d.object).context("pod address")?;
        let node = st.node(d.object.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or(""))?.clone();
        let ns = Netns::create(&pod_netns(&st.prefix, key))?;
        let node_ns = Netns::attach(&node.netns)?;
        match st.cni_net(&node) {
            Some(net) => net.add(&node_ns, &ns, ns.name(), ip)?,
            None => plumb_pod(&node_ns, node.pod_cidr, &ns, ip, &format!("vp{}", st.next_veth))?,
        }
        let _ = ns.persist();
        dns::add_pod_resolver(&pod_netns(&st.prefix, key))?;
        st.next_veth += 1;
        st.pods.insert(key.clone(), LabPod { netns: pod_netns(&st.prefix, key), node: node.name.clone(), ip });
        st.save()?;
    }
    sync_router_routes(&mut st)?;
    st.save()?;
    for (k, created) in &applied.changes {
        outln!("{k} {}", if *created { "created" } else { "configured" });
    }
    if applied.changes.is_empty() {
        outln!("unchanged");
        return Ok(ExitCode::SUCCESS);
    }
    let lat = wait_programmed(&st, applied.stamp_ms, Duration::from_secs(15))?;
    let slowest = lat.values().max().copied().unwrap_or(0);
    outln!("programmed on {} nodes within {slowest} ms", lat.len());
    Ok(ExitCode::SUCCESS)
}

fn delete(name: &str, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    need_root()?;
    let _lock = lock(name)?;
    let mut st = LabState::load(name)?;
    let (objs, errs) = read_paths(files);
    if let Some(e) = errs.first() {
        bail!("{e}");
    }
    let store = Store::open(st.store())?;
    let gone = store.delete(&objs)?;
    for k in &gone {
        if k.kind == "Pod" {
            let key = format!("{}/{}", k.namespace.as_deref().unwrap_or("default"), k.name);
            if let Some(p) = st.pods.remove(&key) {
                // The plugin releases the pod's addresses (host-local would refuse them again).
                let node = st.node(&p.node)?;
                if let Some(net) = st.cni_net(node) {
                    net.del(&Netns::attach(&node.netns)?, &Netns::attach(&p.netns)?, &p.netns, p.ip)?;
                }
                Netns::attach(&p.netns)?.delete()?;
                dns::remove_pod_resolver(&p.netns);
            }
        }
        outln!("{k} deleted");
    }
    sync_router_routes(&mut st)?;
    st.save()?;
    if gone.is_empty() {
        eprintln!("nothing to delete");
        return Ok(ExitCode::SUCCESS);
    }
    let lat = wait_programmed(&st, store.stamp(), Duration::from_secs(15))?;
    outln!("programmed on {} nodes within {} ms", lat.len(), lat.values().max().copied().unwrap_or(0));
    Ok(ExitCode::SUCCESS)
}

fn exec(name: &str, pod: &str, cmd: &[String]) -> anyhow::Result<ExitCode> {
    let st = LabState::load(name)?;
    let p = st.pod(pod)?;
    let status =
        Command::new("ip").args(["netns", "exec", &p.netns]).args(cmd).status().context("running ip netns exec")?;
    Ok(ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8))
}

/// `db-a`, `bad-host` (`db-a6`, `bad-host6`: their IPv6 addresses), an address or a name (port 8080 unless given); a name is looked up as
/// the pod `netns` would, through its resolver (the lab's DNS server), never the host's.
fn resolve(to: &str, netns: &str) -> anyhow::Result<SocketAddr> {
    let host = match to {
        "db-a" => egret_netns::DB_A.to_string(),
        "bad-host" => egret_netns::BAD_HOST.to_string(),
        "db-a6" => egret_netns::DB_A6.to_string(),
        "bad-host6" => egret_netns::BAD_HOST6.to_string(),
        other => other.to_string(),
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, egret_netns::WHOAMI_PORT));
    }
    if let Ok(addr) = host.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, p.parse().with_context(|| format!("{to:?}: bad port"))?),
        None => (host.as_str(), egret_netns::WHOAMI_PORT),
    };
    Ok(SocketAddr::new(dns::lookup(netns, name).with_context(|| format!("cannot resolve {to:?}"))?, port))
}

fn whoami(name: &str, pod: &str, to: &str, timeout: Duration) -> anyhow::Result<ExitCode> {
    let st = LabState::load(name)?;
    let p = st.pod(pod)?;
    let addr = resolve(to, &p.netns)?;
    match WhoamiConn::open(&Netns::attach(&p.netns)?, addr, timeout) {
        Ok(c) => {
            outln!("{}", c.seen);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{pod} -> {addr}: no answer: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// Power loss on `node`: its agent is killed and the router's port to it goes down (the node
/// loses carrier, as with a pulled cable).
fn power_off(st: &mut LabState, node: &str) -> anyhow::Result<CutOff> {
    cut_off(st, node, true)
}

/// When a node was cut off: its agent killed, then its link taken down.
pub(crate) struct CutOff {
    /// Just before the agent was killed (or the link taken down, if the agent was kept).
    pub killed_at: Instant,
    /// Once the link was down.
    pub link_down_at: Instant,
}

/// Takes `node`'s link down; with `kill_agent`, kills its agent too (power loss).
fn cut_off(st: &mut LabState, node: &str, kill_agent: bool) -> anyhow::Result<CutOff> {
    let n = st.node(node)?.clone();
    let router = Netns::attach(&st.router)?;
    let killed_at = Instant::now();
    if let Some(&pid) = st.agents.get(node)
        && kill_agent
        && alive(pid)
    {
        signal(pid, nix::sys::signal::Signal::SIGKILL);
    }
    router.ip(&["link", "set", &n.router_port, "down"])?;
    let link_down_at = Instant::now();
    st.killed.insert(node.to_string());
    st.save()?;
    Ok(CutOff { killed_at, link_down_at })
}

/// Brings `node` back: link up, agent restarted, waits until it is ready.
fn power_on(st: &mut LabState, node: &str) -> anyhow::Result<()> {
    let n = st.node(node)?.clone();
    Netns::attach(&st.router)?.ip(&["link", "set", &n.router_port, "up"])?;
    if !st.agents.get(node).is_some_and(|&pid| alive(pid)) {
        let pid = start_agent(st, &n)?;
        st.agents.insert(node.to_string(), pid);
    }
    st.killed.remove(node);
    st.save()?;
    let pid = st.agents.get(node).copied().unwrap_or(0);
    wait_until(Duration::from_secs(30), || {
        Ok(reports(st).iter().any(|(nm, r)| nm == node && r.ready && r.may_host && r.pid == pid))
    })
    .with_context(|| format!("agent of {node} did not become ready"))
}

fn kill_node(name: &str, node: &str, keep_agent: bool) -> anyhow::Result<ExitCode> {
    need_root()?;
    let _lock = lock(name)?;
    let mut st = LabState::load(name)?;
    cut_off(&mut st, node, !keep_agent)?;
    outln!("{node}: {}link down", if keep_agent { "partitioned, agent running, " } else { "agent killed, " });
    Ok(ExitCode::SUCCESS)
}

fn restore_node(name: &str, node: &str) -> anyhow::Result<ExitCode> {
    need_root()?;
    let _lock = lock(name)?;
    let mut st = LabState::load(name)?;
    power_on(&mut st, node)?;
    outln!("{node}: link up, agent running");
    Ok(ExitCode::SUCCESS)
}

fn restart(name: &str, target: &str, without_key: bool) -> anyhow::Result<ExitCode> {
    need_root()?;
    let _lock = lock(name)?;
    let mut st = LabState::load(name)?;
    if target == "leader" {
        return restart_leader(&mut st);
    }
    if target == "controller" {
        if let Some(pid) = st.controller_pid {
            stop(pid, Duration::from_secs(5));
        }
        st.controller_pid = Some(spawn_controller(&st)?);
        st.save()?;
        outln!("controller restarted");
        return Ok(ExitCode::SUCCESS);
    }
    let n = st.node(target)?.clone();
    if st.killed.contains(target) {
        bail!("{target} is killed; use `egret lab restore-node {target}`");
    }
    if let Some(&pid) = st.agents.get(target) {
        stop(pid, Duration::from_secs(5));
    }
    let pid = start_agent_with(&st, &n, !without_key)?;
    st.agents.insert(target.to_string(), pid);
    st.save()?;
    wait_until(Duration::from_secs(30), || {
        Ok(reports(&st).iter().any(|(nm, r)| nm == target && r.ready && (r.may_host || without_key) && r.pid == pid))
    })
    .with_context(|| format!("agent of {target} did not become ready"))?;
    outln!("{target}: agent restarted");
    Ok(ExitCode::SUCCESS)
}

/// Kills the controller replica that holds the Lease, waits until the other one holds it, and
/// starts the killed one again as the standby.
fn restart_leader(st: &mut LabState) -> anyhow::Result<ExitCode> {
    if !st.api {
        bail!("`restart leader` needs a lab started with --api-server (the store lab has one controller)");
    }
    let state = api::state_path(&st.dir());
    let leader = api::ApiState::load(&state).and_then(|a| a.leader).context("no controller holds the Lease")?;
    let (killed, other) = match leader.as_str() {
        "controller-0" => (0, "controller-1"),
        "controller-1" => (1, "controller-0"),
        other => bail!("the Lease is held by {other:?}, not by a lab replica"),
    };
    let pid = if killed == 0 { st.controller_pid } else { st.standby_pid };
    let t0 = Instant::now();
    if let Some(pid) = pid {
        signal(pid, nix::sys::signal::Signal::SIGKILL);
        while running(pid) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    wait_until(Duration::from_secs(30), || {
        Ok(api::ApiState::load(&state).and_then(|a| a.leader).as_deref() == Some(other))
    })
    .with_context(|| format!("{other} did not take the Lease over within 30 s"))?;
    let took = t0.elapsed();
    let pid = spawn_replica(st, killed)?;
    if killed == 0 {
        st.controller_pid = Some(pid);
    } else {
        st.standby_pid = Some(pid);
    }
    st.save()?;
    outln!("{leader} killed; {other} took over in {} ms; {leader} restarted as the standby", took.as_millis());
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("egret-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn serve_whoami(ports: &[u16]) -> anyhow::Result<ExitCode> {
    let mut _servers = Vec::new();
    for &port in ports {
        // Both families: the outside hosts answer on IPv4 and IPv6.
        let l = std::net::TcpListener::bind(("::", port)).with_context(|| format!("binding [::]:{port}"))?;
        l.set_nonblocking(true)?;
        _servers.push(egret_netns::Whoami::from_listener(l));
    }
    tracing::info!(?ports, "whoami serving");
    loop {
        std::thread::park();
    }
}
