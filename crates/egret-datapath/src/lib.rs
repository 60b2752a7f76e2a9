//! Egret's Linux datapath: "make this node's kernel state equal this plan".
//!
//! [`Datapath::sync`] programs, in the network namespace of the calling thread:
//! - links, addresses, FDB and neighbour entries, routing tables and fwmark rules through
//!   rtnetlink ([`link`]),
//! - one nftables table `inet egret` in one atomic `nft -j -f -` transaction ([`nft`]),
//! - gratuitous ARP / unsolicited NA for egress IPs this node starts hosting ([`announce`]),
//! - then deletion of the conntrack entries of established flows the new plan steers differently
//!   ([`conntrack`]),
//!
//! then reads everything back and verifies it. Only what differs is changed, so a resync or a
//! restarted agent leaves established connections alone. [`cleanup`] removes everything Egret
//! created and nothing else. The design is documented in `docs/datapath.md`.
//!
//! Beside it, [`SetWriter`] puts addresses into nftables timeout sets directly over netlink,
//! without spawning `nft` (the DNS proxy's answered addresses; [`setwriter`], [`nft::setelem`]).
//!
//! The API is synchronous: each call runs a private single-threaded runtime for netlink, so
//! call it from a plain thread (or `spawn_blocking`), never from inside an async task.

pub mod announce;
pub mod audit;
pub mod config;
pub mod conntrack;
pub mod dnsroute;
pub mod link;
pub mod nflog;
pub mod nft;
pub mod setwriter;
pub mod view;

pub use config::{Config, OWNER_ALIAS, TABLE};
pub use nft::Counter;
pub use nft::setelem::{Element, LiveElement, SetElemError};
pub use setwriter::SetWriter;

use egret_core::planner::NodePlan;
use link::{Item, Links, Net, PeerIds};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Errors of the datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The settings are unusable.
    #[error("bad datapath settings: {0}")]
    Config(String),
    /// A netlink request failed.
    #[error("netlink: {what}: {source}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: rtnetlink::Error,
    },
    /// `nft` failed.
    #[error("nft {what} failed: {detail}")]
    Nft {
        /// What was being done.
        what: String,
        /// Its standard error, or why it could not run.
        detail: String,
    },
    /// `nft` printed something that is not the expected JSON.
    #[error("unexpected nft output: {0}")]
    NftOutput(String),
    /// nft's JSON (a listing read back, or a transaction to write) could not be parsed or built.
    #[error("nft JSON ({what}): {source}")]
    NftJson {
        /// Which document.
        what: &'static str,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
    /// The underlay interface does not exist.
    #[error("underlay interface {0:?} not found")]
    NoUnderlay(String),
    /// The plan gives this node no IPv4 address for the tunnel endpoint.
    #[error("node {0} has no IPv4 address to terminate the tunnel on")]
    NoNodeAddress(String),
    /// A link with one of Egret's names exists but Egret did not create it.
    #[error("link {0:?} exists but was not created by Egret (no alias \"egret\"); refusing to touch it")]
    NotOurs(String),
    /// The plan needs more tunnel peers than there are local ids.
    #[error("{0}")]
    TooManyPeers(#[from] egret_core::ids::Exhausted),
    /// `conntrack` failed.
    #[error("conntrack {what} failed: {detail}")]
    Conntrack {
        /// What was being done.
        what: String,
        /// Its standard error.
        detail: String,
    },
    /// After applying, the kernel state still differs from the plan.
    #[error("kernel state differs from the plan after applying: {}", .0.join("; "))]
    Verify(Vec<String>),
    /// A system call or file operation failed.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
}

impl DatapathError {
    /// A short name of the kind of failure, for metrics (`reason` label).
    pub fn reason(&self) -> &'static str {
        match self {
            DatapathError::Config(_) => "config",
            DatapathError::Netlink { .. } => "netlink",
            DatapathError::Nft { .. } => "nft",
            DatapathError::NftOutput(_) => "nft_output",
            DatapathError::NftJson { .. } => "nft_json",
            DatapathError::NoUnderlay(_) => "no_underlay",
            DatapathError::NoNodeAddress(_) => "no_node_address",
            DatapathError::NotOurs(_) => "not_ours",
            DatapathError::TooManyPeers(_) => "too_many_peers",
            DatapathError::Conntrack { .. } => "conntrack",
            DatapathError::Verify(_) => "verify",
            DatapathError::Io(..) => "io",
        }
    }
}

/// What one sync did.
#[derive(Debug, Clone, Default)]
pub struct SyncReport {
    /// Every change made, one line each (empty: the kernel already matched the plan).
    pub changes: Vec<String>,
    /// Differences found against what this instance had verified at its previous sync:
    /// someone else changed Egret's state in between. They were repaired.
    pub drift: Vec<String>,
    /// Plan entries left out, with the reason (e.g. IPv6, not programmed yet).
    pub skipped: Vec<nft::Skip>,
    /// Addresses announced (gratuitous ARP / unsolicited NA; repeats follow in the background).
    pub announced: Vec<IpAddr>,
    /// When their first announcement went out (the moment a new holder takes over).
    pub announced_at: Option<Instant>,
    /// Addresses whose first announcement failed on every try (the repeats still follow).
    pub announce_failed: Vec<IpAddr>,
    /// Established flows whose conntrack entries were deleted because the plan now steers
    /// them differently, as `(source, destination)`.
    pub flows_ended: Vec<(IpAddr, IpAddr)>,
    /// Time of the nft transaction, when one was applied.
    pub nft_apply: Option<Duration>,
    /// Number of commands in the nft transaction (0: none was needed).
    pub nft_commands: usize,
    /// Whole sync.
    pub elapsed: Duration,
    /// Elements of each map and set of Egret's nft table that a sync writes (the timeout sets
    /// of name rules, written by the DNS proxy, are left out).
    pub map_elements: BTreeMap<String, usize>,
}

/// What cleanup removed.
#[derive(Debug, Clone, Default)]
pub struct CleanupReport {
    /// One line per removed object.
    pub removed: Vec<String>,
}

/// One node's datapath.
#[derive(Debug)]
pub struct Datapath {
    cfg: Config,
    last_nft: Option<nft::Table>,
    last_items: Option<BTreeSet<Item>>,
    announced: BTreeSet<IpAddr>,
    /// Local ids of the tunnel peers (`None` until recovered from the kernel at the first sync).
    ids: Option<PeerIds>,
    /// The plan of the last successful sync (to find the flows a new plan steers differently).
    last_plan: Option<NodePlan>,
    /// Whether the DNS proxy's policy routing was last put in place (`Some(true)`) or removed.
    dns_routing: Option<bool>,
    /// Addresses hosted now: background repeats of announcements stop for any that leaves,
    /// so a node never re-announces an address that has moved to another node.
    hosting: Arc<Mutex<BTreeSet<IpAddr>>>,
}

fn runtime() -> Result<tokio::runtime::Runtime, DatapathError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| DatapathError::Io("tokio runtime".into(), e))
}

/// Egret's named counters in the calling thread's network namespace, by name (see
/// [`Datapath::counters`]), dumped over netlink (no `nft` process: metrics scrapes read them
/// all); usable beside a running datapath, since it only reads. No table: no counters.
pub fn read_counters() -> Result<BTreeMap<String, Counter>, DatapathError> {
    use netlink_sys::{Socket, constants::NETLINK_NETFILTER};
    let io = |what: &str| {
        let what = format!("reading the nft counters: {what}");
        move |e: std::io::Error| DatapathError::Io(what, e)
    };
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(io("netlink socket"))?;
    socket.bind_auto().map_err(io("binding the netlink socket"))?;
    nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(2, 0),
    )
    .map_err(|e| DatapathError::Io("reading the nft counters: read timeout".into(), e.into()))?;
    let mut buf = vec![0u8; 64 * 1024];
    // A dump the ruleset changed under (a sync meanwhile) is read again, up to three times.
    for seq in 1..=3 {
        socket.send(&nft::objects::counters_request(TABLE, seq), 0).map_err(io("sending the dump request"))?;
        let mut dump = nft::objects::CounterDump::default();
        loop {
            let n = socket.recv(&mut &mut buf[..], 0).map_err(io("reading the dump"))?;
            match nft::objects::absorb_counters(&buf[..n], seq, &mut dump).map_err(DatapathError::NftOutput)? {
                nft::objects::Dump::More => {}
                nft::objects::Dump::Done if dump.interrupted => break,
                nft::objects::Dump::Done => return Ok(dump.counters),
                nft::objects::Dump::Refused(errno) => {
                    return Err(DatapathError::Io(
                        format!("reading the nft counters of table inet {TABLE}"),
                        std::io::Error::from_raw_os_error(-errno),
                    ));
                }
            }
        }
    }
    Err(DatapathError::NftOutput("the nft counters changed under every dump; try again".into()))
}

/// Why this node cannot forward its pods' IPv6 traffic, if it cannot: IPv6 forwarding is off
/// (or IPv6 absent). Egret does not turn it on: that would also stop the node accepting router
/// advertisements on every interface. A node with IPv6 pods has it on for them anyway; without
/// it their steered IPv6 packets are not forwarded at all, so nothing leaks.
fn ipv6_forwarding_off() -> Option<String> {
    const ALL: &str = "/proc/sys/net/ipv6/conf/all/forwarding";
    match std::fs::read_to_string(ALL) {
        Ok(v) if v.trim() == "1" => None,
        Ok(_) => Some("IPv6 forwarding (net.ipv6.conf.all.forwarding) is off: this node's pods' IPv6 traffic is not forwarded (Egret leaves it off)".into()),
        Err(e) => Some(format!("IPv6 forwarding cannot be read ({ALL}: {e}): this node's pods' IPv6 traffic is not forwarded")),
    }
}

fn run_nft(cfg: &Config, args: &[&str], input: Option<&str>) -> Result<String, DatapathError> {
    let what = if input.is_some() { "transaction".to_string() } else { args.join(" ") };
    let mut child = Command::new(&cfg.nft)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| DatapathError::Nft { what: what.clone(), detail: format!("cannot run {:?}: {e}", cfg.nft) })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input.as_bytes()).map_err(|e| DatapathError::Io("writing to nft".into(), e))?;
    }
    let out = child.wait_with_output().map_err(|e| DatapathError::Io("waiting for nft".into(), e))?;
    if !out.status.success() {
        return Err(DatapathError::Nft { what, detail: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Reads table `inet egret` (`None`: it does not exist).
/// Egret's nft table as the kernel holds it, read back (`None`: there is none), for
/// [`view::read`] and [`view::drift`].
pub fn read_table(cfg: &Config) -> Result<Option<nft::Table>, DatapathError> {
    match run_nft(cfg, &["-j", "list", "table", "inet", TABLE], None) {
        Ok(out) => nft::parse_table(&out).map_err(|source| DatapathError::NftJson { what: "table listing", source }),
        Err(DatapathError::Nft { detail, .. }) if detail.contains("No such file or directory") => Ok(None),
        Err(e) => Err(e),
    }
}

/// The plan's interface exits as this network namespace's kernel resolves them (for
/// [`view::drift`]; a sync does the same).
pub fn resolve_exits(cfg: &Config, plan: &NodePlan) -> Result<link::Exits, DatapathError> {
    runtime()?.block_on(async { Net::connect()?.resolve_exits(cfg, plan).await })
}

/// The addresses of the interfaces `names` in this network namespace (see
/// [`Net::interface_addresses`]).
pub fn interface_addresses(names: &BTreeSet<String>) -> Result<BTreeMap<String, Vec<IpAddr>>, DatapathError> {
    runtime()?.block_on(async { Net::connect()?.interface_addresses(names).await })
}

impl Datapath {
    /// A datapath with these settings. Touches nothing yet.
    pub fn new(cfg: Config) -> Result<Datapath, DatapathError> {
        cfg.check()?;
        Ok(Datapath {
            cfg,
            last_nft: None,
            last_items: None,
            announced: BTreeSet::new(),
            ids: None,
            last_plan: None,
            dns_routing: None,
            hosting: Arc::new(Mutex::new(BTreeSet::new())),
        })
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Makes the kernel state of the calling thread's network namespace equal `plan`, then
    /// verifies it. Idempotent: with an unchanged plan and untouched kernel state, it changes
    /// nothing at all.
    pub fn sync(&mut self, plan: &NodePlan) -> Result<SyncReport, DatapathError> {
        let start = Instant::now();
        let cfg = self.cfg.clone();
        let mut report = SyncReport::default();
        let rt = runtime()?;

        // 0. Local ids of the peers: kept while a peer stays needed; after a restart, first
        // recovered from Egret's own routing tables and nft map, so established flows keep
        // the marks they carry.
        let prev = match self.ids.take() {
            Some(ids) => ids,
            None => {
                let mut found = rt.block_on(async { Net::connect()?.read_ids(&cfg).await })?;
                if let Some(t) = read_table(&cfg)? {
                    found.extend(nft::ids_in(&t));
                }
                PeerIds::recovered(found)
            }
        };
        // Interface exits: their interface and next hop, looked up here.
        // (No netlink connection for it on a node without any, nearly every node.)
        let exits = if plan.interface_exits.is_empty() {
            link::Exits::default()
        } else {
            rt.block_on(async { Net::connect()?.resolve_exits(&cfg, plan).await })?
        };
        let needed = link::needed_ids(plan, &exits);
        let ids = match prev.allocate(&needed) {
            Ok(ids) => ids,
            Err(e) => {
                self.ids = Some(prev);
                return Err(e.into());
            }
        };
        self.ids = Some(ids.clone());

        let (want_nft, skipped) = nft::desired(&cfg, plan, &ids, &exits);
        let want_nft = nft::normalise(want_nft);
        report.skipped = skipped;
        if link::needs_ipv6(plan)
            && let Some(why) = ipv6_forwarding_off()
        {
            report.skipped.push(nft::Skip::new(why));
        }
        report.map_elements = want_nft
            .sets
            .iter()
            .filter(|(name, _)| !nft::firewall::is_name_set(name))
            .map(|(name, set)| (name.clone(), set.elems.len()))
            .collect();
        for s in &report.skipped {
            match &s.egress {
                Some(egress) => tracing::warn!(node = %plan.node, %egress, "{}", s.why),
                None => tracing::warn!(node = %plan.node, "{}", s.why),
            }
        }
        let want_items = link::desired(&cfg, plan, &ids, &exits);

        // 1. Links, addresses, tunnel and routing (rtnetlink).
        let (links, added_hosted) = rt.block_on(async {
            let net = Net::connect()?;
            let links = net.ensure_links(&cfg, plan, &mut report.changes).await?;
            // The DNS proxy's routing, only while pods here are under name rules (checked on
            // every sync then, which repairs it; removed once when no longer needed).
            let want_dns = dnsroute::needed(plan);
            if want_dns || self.dns_routing != Some(false) {
                let changed = if want_dns {
                    dnsroute::ensure(&net.handle, &cfg).await?
                } else {
                    dnsroute::remove(&net.handle, &cfg).await?
                };
                report.changes.extend(changed);
                self.dns_routing = Some(want_dns);
            }
            // Forwarding, and loose reverse-path filtering on the tunnel only: pod sources
            // arrive through it although the main table routes them elsewhere.
            net.ensure_inet_conf(&cfg.vxlan_name, 1, 2, &mut report.changes).await?;
            // Interface exits: replies to their egress IPs arrive there and are forwarded to
            // the pods, from sources the main table routes by another interface.
            let exit_devs: BTreeSet<&str> = plan
                .interface_exits
                .iter()
                .filter(|e| exits.via.contains_key(&e.ip))
                .map(|e| e.interface.as_str())
                .filter(|d| *d != cfg.underlay)
                .collect();
            for dev in exit_devs {
                net.ensure_inet_conf(dev, 1, 2, &mut report.changes).await?;
            }
            let have = net.read(&cfg, &links).await?;
            if let Some(last) = &self.last_items {
                let now: BTreeSet<Item> = have.keys().cloned().collect();
                for i in now.difference(last) {
                    report.drift.push(format!("unexpected {i}"));
                }
                for i in last.difference(&now) {
                    report.drift.push(format!("missing {i}"));
                }
            }
            // Stale items go first (a changed neighbour or route must make room), except the
            // old tunnel address, which goes last: removing the VXLAN device's last IPv4
            // address (when the node's address changes) makes the kernel flush every route and
            // neighbour through it.
            let stale: Vec<(&Item, &link::Raw)> = have.iter().filter(|(i, _)| !want_items.contains(*i)).collect();
            let (old_addr, stale): (Vec<_>, Vec<_>) =
                stale.into_iter().partition(|(i, _)| matches!(i, Item::TunnelAddr(..)));
            for (item, raw) in stale {
                net.delete(item, raw).await?;
                report.changes.push(format!("deleted {item}"));
            }
            let mut added_hosted = Vec::new();
            for item in &want_items {
                if !have.contains_key(item) {
                    net.add(item, &links).await?;
                    report.changes.push(format!("added {item}"));
                    if let Item::Hosted(ip, _) = item {
                        added_hosted.push(*ip);
                    }
                }
            }
            for (item, raw) in old_addr {
                net.delete(item, raw).await?;
                report.changes.push(format!("deleted {item}"));
            }
            let check: BTreeSet<Item> = net.read(&cfg, &links).await?.into_keys().collect();
            if check != want_items {
                let mut diff: Vec<String> = check.difference(&want_items).map(|i| format!("unexpected {i}")).collect();
                diff.extend(want_items.difference(&check).map(|i| format!("missing {i}")));
                return Err(DatapathError::Verify(diff));
            }
            Ok::<_, DatapathError>((links, added_hosted))
        })?;
        self.last_items = Some(want_items);

        // 2. nftables: one transaction with only the differences.
        let have = read_table(&cfg)?;
        if let Some(last) = &self.last_nft {
            report.drift.extend(nft::describe(last, have.as_ref()));
        }
        let cmds = nft::transaction(&want_nft, have.as_ref());
        if !cmds.is_empty() {
            report.changes.extend(nft::describe(&want_nft, have.as_ref()));
            report.nft_commands = cmds.len();
            let doc = nft::document(cmds).map_err(|source| DatapathError::NftJson { what: "transaction", source })?;
            let t = Instant::now();
            run_nft(&cfg, &["-j", "-f", "-"], Some(&doc))?;
            report.nft_apply = Some(t.elapsed());
            let check = read_table(&cfg)?;
            let diff = nft::describe(&want_nft, check.as_ref());
            if !diff.is_empty() {
                return Err(DatapathError::Verify(diff));
            }
        }
        self.last_nft = Some(want_nft);

        // 3. Announce addresses this node starts hosting (and, after a restart, all of them:
        // the previous instance may have died before announcing). Before the conntrack step,
        // which lists the whole table: on a busy gateway taking over an IP that took hundreds
        // of milliseconds, during which the router still sent the IP's traffic to the dead node.
        let hosted: BTreeSet<IpAddr> = plan.hosted.iter().map(|h| h.ip).collect();
        if let Ok(mut h) = self.hosting.lock() {
            h.clone_from(&hosted);
        }
        let mut to_announce: BTreeSet<IpAddr> = added_hosted.into_iter().collect();
        to_announce.extend(hosted.difference(&self.announced));
        self.announced = hosted;
        if !to_announce.is_empty() {
            let ips: Vec<IpAddr> = to_announce.into_iter().collect();
            report.announce_failed = announce_all(&cfg, &links, &ips, self.hosting.clone())?;
            report.announced_at = Some(Instant::now());
            report.announced = ips;
        }

        // 4. Established flows the new plan steers differently lose their conntrack entries
        // (after the new state is in place, so their next packet follows the new plan).
        if let Some(old) = &self.last_plan {
            end_changed_flows(&cfg, old, plan, &mut report)?;
        }
        self.last_plan = Some(plan.clone());
        report.elapsed = start.elapsed();
        if !report.changes.is_empty() || !report.drift.is_empty() {
            tracing::info!(
                node = %plan.node,
                changes = report.changes.len(),
                drift = report.drift.len(),
                "datapath synced"
            );
        }
        Ok(report)
    }

    /// Makes the next [`Datapath::sync`] announce `ips` again if this node still hosts them
    /// (e.g. after another node wrongly announced them: the router must learn the owner again).
    pub fn reannounce(&mut self, ips: &[IpAddr]) {
        for ip in ips {
            self.announced.remove(ip);
        }
    }

    /// The local id (mark value, routing table) this node uses for the peer with underlay
    /// address `peer`, once a sync has allocated one.
    pub fn peer_id(&self, peer: std::net::Ipv4Addr) -> Option<u16> {
        self.ids.as_ref()?.get(&peer)
    }

    /// Egret's named counters (packets and bytes as u64), by name: per Egress, and per
    /// firewall decision chain.
    pub fn counters(&self) -> Result<BTreeMap<String, Counter>, DatapathError> {
        read_counters()
    }

    /// Removes everything Egret created (see [`cleanup`]) and forgets what was programmed.
    pub fn cleanup(&mut self) -> Result<CleanupReport, DatapathError> {
        self.last_nft = None;
        self.last_items = None;
        self.announced.clear();
        self.ids = None;
        self.last_plan = None;
        self.dns_routing = None;
        if let Ok(mut h) = self.hosting.lock() {
            h.clear();
        }
        cleanup(&self.cfg)
    }
}

/// Runs `conntrack` with `args` (and `input` on stdin); `Ok(None)` when it is not installed.
fn run_conntrack(cfg: &Config, args: &[&str], input: Option<&str>) -> Result<Option<String>, DatapathError> {
    let what = args.join(" ");
    let child = Command::new(&cfg.conntrack)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(DatapathError::Conntrack { what, detail: format!("cannot run {:?}: {e}", cfg.conntrack) });
        }
    };
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input.as_bytes()).map_err(|e| DatapathError::Io("writing to conntrack".into(), e))?;
    }
    let out = child.wait_with_output().map_err(|e| DatapathError::Io("waiting for conntrack".into(), e))?;
    if !out.status.success() {
        return Err(DatapathError::Conntrack { what, detail: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// The source-port use of each of `ips` (egress IPs this node hosts), from one listing of the
/// conntrack table whatever their number (a listing per IP, filtered by the kernel, cost a full
/// table walk and a process each: with hundreds of IPs, most of a gateway's CPU). `None`: the
/// `conntrack` tool is missing.
pub fn snat_usage(cfg: &Config, ips: &[IpAddr]) -> Result<Option<BTreeMap<IpAddr, conntrack::SnatUse>>, DatapathError> {
    let mut flows = Vec::new();
    for (family, v6) in [("ipv4", false), ("ipv6", true)] {
        if !ips.iter().any(|ip| ip.is_ipv6() == v6) {
            continue;
        }
        let Some(list) = run_conntrack(cfg, &["-L", "-f", family], None)? else {
            return Ok(None);
        };
        flows.extend(conntrack::parse_flows(&list));
    }
    Ok(Some(conntrack::snat_usages(&flows, ips)))
}

/// Deletes the conntrack entries of the flows whose treatment on this node differs between
/// `old` and `new` (see [`conntrack`]).
fn end_changed_flows(
    cfg: &Config,
    old: &NodePlan,
    new: &NodePlan,
    report: &mut SyncReport,
) -> Result<(), DatapathError> {
    let changed = conntrack::changed(old, new);
    if changed.is_empty() && old.snat == new.snat && old.firewall == new.firewall {
        return Ok(());
    }
    let missing = || {
        let why = format!(
            "{:?} not found: established flows of {} source(s) keep their old path until they end",
            cfg.conntrack,
            changed.len()
        );
        tracing::warn!(node = %new.node, "{why}");
        why
    };
    let Some(list) = run_conntrack(cfg, &["-L", "-f", "ipv4"], None)? else {
        report.skipped.push(nft::Skip::new(missing()));
        return Ok(());
    };
    let mut flows = conntrack::parse_flows(&list);
    // IPv6 flows where either plan steers or SNATs IPv6 here, or the firewall decides IPv6
    // pods' flows.
    let v6_fw = old.firewall != new.firewall && new.firewall.pods.iter().any(|p| p.ip.is_ipv6());
    if link::needs_ipv6(old) || link::needs_ipv6(new) || v6_fw {
        let Some(list6) = run_conntrack(cfg, &["-L", "-f", "ipv6"], None)? else {
            report.skipped.push(nft::Skip::new(missing()));
            return Ok(());
        };
        flows.extend(conntrack::parse_flows(&list6));
    }
    if old.firewall != new.firewall {
        let conns: Vec<conntrack::Conn> = flows.iter().map(conntrack::Conn::from).collect();
        let denied = conntrack::denied(&conns, old, new);
        if !denied.is_empty() {
            if run_conntrack(cfg, &["-R", "-"], Some(&conntrack::delete_flows_script(&denied)))?.is_none() {
                report.skipped.push(nft::Skip::new(missing()));
                return Ok(());
            }
            report.changes.push(format!("conntrack: ended {} flow(s) that a policy now denies", denied.len()));
            report.flows_ended.extend(denied.iter().map(|f| (f.src, f.dst)));
        }
    }
    let mut hit = conntrack::affected(&flows, &changed, &conntrack::cluster(old, new));
    hit.extend(conntrack::misbound(&flows, new));
    if hit.is_empty() {
        return Ok(());
    }
    if run_conntrack(cfg, &["-R", "-"], Some(&conntrack::delete_script(&hit)))?.is_none() {
        report.skipped.push(nft::Skip::new(missing()));
        return Ok(());
    }
    report.changes.push(format!("conntrack: ended {} flow(s) that the plan now steers differently", hit.len()));
    report.flows_ended.extend(hit);
    Ok(())
}

/// Sends the first announcement of every address now (each send retried with backoff) and the
/// repeats of [`announce::schedule`] from a background thread, which stops announcing an address
/// as soon as it leaves `hosting` (the packet socket stays bound to this namespace wherever it
/// is used). Returns the addresses whose first announcement failed on every try.
fn announce_all(
    cfg: &Config,
    links: &Links,
    ips: &[IpAddr],
    hosting: Arc<Mutex<BTreeSet<IpAddr>>>,
) -> Result<Vec<IpAddr>, DatapathError> {
    let sock = announce::sys::PacketSocket::open(links.underlay)
        .map_err(|e| DatapathError::Io(format!("packet socket on {}", cfg.underlay), e))?;
    let frames: Vec<(IpAddr, Vec<u8>)> = ips.iter().map(|ip| (*ip, announce::frame(links.underlay_mac, *ip))).collect();
    let delays = announce::retry_delays(cfg.announce_tries, cfg.announce_retry);
    let send = move |sock: &announce::sys::PacketSocket, ip: &IpAddr, f: &[u8]| {
        announce::send_with_retry(&delays, || sock.send(f), std::thread::sleep).map_err(|e| {
            tracing::warn!(%ip, error = %e, "announcement failed on every try");
        })
    };
    let failed: Vec<IpAddr> = frames.iter().filter(|(ip, f)| send(&sock, ip, f).is_err()).map(|(ip, _)| *ip).collect();
    let schedule = announce::schedule(cfg.announce_count, cfg.announce_interval);
    if schedule.len() > 1 {
        std::thread::spawn(move || {
            for w in schedule.windows(2) {
                std::thread::sleep(w[1].saturating_sub(w[0]));
                let now: BTreeSet<IpAddr> = match hosting.lock() {
                    Ok(h) => h.clone(),
                    Err(_) => return,
                };
                let still: Vec<&(IpAddr, Vec<u8>)> = frames.iter().filter(|(ip, _)| now.contains(ip)).collect();
                if still.is_empty() {
                    return;
                }
                for (ip, f) in still {
                    let _ = send(&sock, ip, f);
                }
            }
        });
    }
    Ok(failed)
}

/// Removes, in the calling thread's network namespace, everything Egret creates: the nft table
/// `inet egret`, fwmark rules at Egret's priority or pointing to Egret's tables, routes in
/// Egret's tables, and the VXLAN and holder devices (only if they carry Egret's alias). Other
/// tables, rules, routes and links are never touched. Safe to run when nothing is there.
pub fn cleanup(cfg: &Config) -> Result<CleanupReport, DatapathError> {
    cfg.check()?;
    let mut report = CleanupReport::default();
    if read_table(cfg)?.is_some() {
        let doc = nft::document(vec![nft::Cmd::Json(serde_json::json!(
            {"delete": {"table": {"family": "inet", "name": TABLE}}}
        ))])
        .map_err(|source| DatapathError::NftJson { what: "cleanup", source })?;
        run_nft(cfg, &["-j", "-f", "-"], Some(&doc))?;
        report.removed.push(format!("nft table inet {TABLE}"));
    }
    let rt = runtime()?;
    rt.block_on(async {
        let net = Net::connect()?;
        for (item, raw) in net.read_routing(cfg).await? {
            net.delete(&item, &raw).await?;
            report.removed.push(item.to_string());
        }
        report.removed.extend(net.delete_links(cfg).await?);
        report.removed.extend(dnsroute::remove(&net.handle, cfg).await?);
        Ok::<_, DatapathError>(())
    })?;
    Ok(report)
}
