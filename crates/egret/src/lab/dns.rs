//! The lab's DNS server: an authoritative server for the zone `test.` at 203.0.113.53 (UDP and
//! TCP port 53) in the outside namespace, which every pod of the lab uses as its resolver.
//!
//! - The zone is `examples/dns/lab.zone` (and the `fresh.zone` it includes), copied into the
//!   lab's directory (`dns/lab.zone`) at `lab up`. It is parsed by hickory-proto's zone file
//!   parser and answered by hickory-server's in-memory authority: exact names, CNAME chains
//!   inside the zone followed in the answer, AAAA, each record's own TTL (also 0), NXDOMAIN
//!   for unknown names, UDP answers larger than the client's limit (512 bytes, or its EDNS
//!   size) truncated with TC set, TCP with any number of queries per connection.
//! - One thing hickory does not do: a name that also holds the TXT record `egret-lab-rotate`
//!   ([`ROTATE_MARK`]) answers an A (AAAA) query with one of its A (AAAA) records, the next one
//!   on each query, in the zone's order ([`rotate`]).
//! - `egret lab serve-dns` (hidden) is the server process, started by `lab up` inside the
//!   outside namespace like the whoami process and stopped by `lab down`. On SIGHUP it reads
//!   the zone again (keeping the old one if the new one does not load) and writes what it
//!   serves to `dns/loaded.json`.
//! - `egret lab dns set` rewrites the lab's copy of the zone (serial + 1), signals the server
//!   and waits until it serves the new serial; `egret lab dns show` prints the copy.
//! - Pods use the server through `/etc/netns/<pod namespace>/resolv.conf`, which `ip netns
//!   exec` (and so `lab exec`) bind-mounts over `/etc/resolv.conf`; made when a pod is made,
//!   removed with it and by `lab down` (by the lab's prefix, also after a crash).

use super::state::LabState;
use anyhow::{Context, bail};
use egret_netns::Netns;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_proto::serialize::txt::Parser;
use hickory_server::server::{Request, RequestInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{
    AuthLookup, AxfrPolicy, Catalog, LookupControlFlow, LookupOptions, LookupRecords, ZoneHandler, ZoneType,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// `egret lab dns`.
#[derive(clap::Subcommand, Debug)]
pub enum DnsCmd {
    /// Replace a name's records of one type in the lab's zone; served once this returns:
    /// `egret lab dns set api.github.test A 198.51.100.8`. A CNAME replaces every other record
    /// of its name, an A or AAAA a CNAME.
    Set {
        /// The name (absolute, inside `test.`).
        #[arg(value_name = "NAME")]
        domain: String,
        /// A, AAAA or CNAME.
        #[arg(value_name = "TYPE")]
        rtype: String,
        /// The new values (addresses, or one name for a CNAME).
        #[arg(value_name = "VALUE", required = true, num_args = 1..)]
        values: Vec<String>,
        /// TTL in seconds (default: the replaced records', else 30).
        #[arg(long)]
        ttl: Option<u32>,
    },
    /// Print the lab's zone as served, or one name's records.
    Show {
        /// Only this name's records.
        #[arg(value_name = "NAME")]
        domain: Option<String>,
    },
}

/// `egret lab serve-dns`'s arguments.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The zone file.
    #[arg(long)]
    pub zone: PathBuf,
    /// Address to listen on (UDP and TCP).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Where to write the serial served after every (re)load.
    #[arg(long)]
    pub loaded: PathBuf,
}

/// Runs `egret lab dns ...`.
pub fn run(lab: &str, cmd: DnsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        DnsCmd::Set { domain, rtype, values, ttl } => set(lab, &domain, &rtype, &values, ttl),
        DnsCmd::Show { domain } => show(lab, domain.as_deref()),
    }
}

/// The lab's DNS server, in the outside namespace.
pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 53);
/// The zone's origin.
pub const ORIGIN: &str = "test.";
/// A TXT record with this text makes its name's A and AAAA answers rotate.
pub const ROTATE_MARK: &str = "egret-lab-rotate";
/// The TTL `lab dns set` gives a new record set when none is given and none is replaced.
pub const DEFAULT_TTL: u32 = 30;
/// Address ranges the outside namespace routes to itself (`local` routes), so that its whoami
/// servers (listening on 0.0.0.0) answer on every address of many.test, rotate.test and the
/// fresh names. 203.0.113.0/24 is on the router's link already; 198.18.0.0/22 is routed to it.
pub const SERVED_RANGES: [&str; 4] = ["203.0.113.64/26", "203.0.113.128/26", "203.0.113.192/26", "198.18.0.0/22"];
/// The range of the fresh names, routed by the router to the outside namespace.
const FRESH_RANGE: &str = "198.18.0.0/22";
/// The number of fresh names (`n0000.fresh.test` ..).
pub const FRESH_NAMES: usize = 1000;

const LAB_ZONE: &str = include_str!("../../../../examples/dns/lab.zone");
const FRESH_ZONE: &str = include_str!("../../../../examples/dns/fresh.zone");

fn origin() -> Name {
    Name::from_ascii(ORIGIN).unwrap_or_else(|_| Name::root())
}

/// The fresh name number `n`.
pub fn fresh_name(n: usize) -> String {
    format!("n{n:04}.fresh.test")
}

/// A zone: its records by name and type.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    /// Record sets by name and type.
    pub records: BTreeMap<RrKey, RecordSet>,
}

/// One change `lab dns set` made.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The record set's name.
    pub name: Name,
    /// Its type.
    pub rtype: RecordType,
    /// What it was (TTL and values), empty if it did not exist.
    pub before: Vec<(u32, String)>,
    /// What it is now, empty if it was removed.
    pub after: Vec<(u32, String)>,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &[(u32, String)]| {
            if v.is_empty() {
                "nothing".to_string()
            } else {
                v.iter().map(|(ttl, d)| format!("{d} (ttl {ttl})")).collect::<Vec<_>>().join(", ")
            }
        };
        write!(f, "{} {}: {} -> {}", self.name, self.rtype, show(&self.before), show(&self.after))
    }
}

fn shown(set: Option<&RecordSet>) -> Vec<(u32, String)> {
    set.map(|s| s.records_without_rrsigs().map(|r| (r.ttl, r.data.to_string())).collect()).unwrap_or_default()
}

/// A name as `lab dns set` and `show` take it: always absolute (`api.github.test` means
/// `api.github.test.`), and inside the zone.
pub fn parse_name(s: &str) -> anyhow::Result<Name> {
    let mut name = Name::from_ascii(s).with_context(|| format!("{s:?} is not a DNS name"))?;
    name.set_fqdn(true);
    if !origin().zone_of(&name) {
        bail!("{name} is outside the lab's zone {ORIGIN}");
    }
    Ok(name)
}

impl Zone {
    /// Parses zone text (origin `test.`); `path` resolves `$INCLUDE`s relative to it.
    pub fn parse(text: &str, path: Option<PathBuf>) -> anyhow::Result<Zone> {
        let (_, records) = Parser::new(text, path, Some(origin())).parse().context("parsing the zone")?;
        let zone = Zone { records };
        zone.soa().context("the zone has no SOA record for test.")?;
        // Hickory's authority refuses what a zone may not hold (a CNAME beside other data):
        // building one here reports it when the zone is loaded, not on the first query.
        zone.handler()?;
        Ok(zone)
    }

    /// Reads and parses a zone file.
    pub fn load(path: &Path) -> anyhow::Result<Zone> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Zone::parse(&text, Some(path.to_path_buf())).with_context(|| format!("loading {}", path.display()))
    }

    fn soa(&self) -> Option<&SOA> {
        let set = self.records.get(&RrKey::new(LowerName::new(&origin()), RecordType::SOA))?;
        match &set.records_without_rrsigs().next()?.data {
            RData::SOA(soa) => Some(soa),
            _ => None,
        }
    }

    /// The zone's serial.
    pub fn serial(&self) -> u32 {
        self.soa().map_or(0, |s| s.serial)
    }

    /// Names whose A and AAAA answers rotate (they hold the TXT record [`ROTATE_MARK`]).
    pub fn rotating(&self) -> BTreeSet<LowerName> {
        self.records
            .iter()
            .filter(|(k, set)| {
                k.record_type == RecordType::TXT
                    && set.records_without_rrsigs().any(|r| match &r.data {
                        RData::TXT(t) => t.to_string() == ROTATE_MARK,
                        _ => false,
                    })
            })
            .map(|(k, _)| k.name.clone())
            .collect()
    }

    /// The records of `name` (all of them if `None`), the SOA first, in zone file syntax.
    pub fn lines(&self, name: Option<&Name>) -> Vec<String> {
        let want = name.map(LowerName::new);
        let mut sets: Vec<&RecordSet> =
            self.records.iter().filter(|(k, _)| want.as_ref().is_none_or(|w| &k.name == w)).map(|(_, s)| s).collect();
        sets.sort_by_key(|s| s.record_type() != RecordType::SOA);
        sets.iter().flat_map(|s| s.records_without_rrsigs().map(ToString::to_string)).collect()
    }

    /// The zone as a zone file (every record on its own line, absolute names). Checked by
    /// parsing it back: a zone whose records would not survive the trip is refused.
    pub fn to_text(&self) -> anyhow::Result<String> {
        let mut s = format!(
            "; The lab's DNS zone as served, written by `egret lab dns set` (from examples/dns/lab.zone).\n$ORIGIN {ORIGIN}\n"
        );
        for l in self.lines(None) {
            s.push_str(&l);
            s.push('\n');
        }
        let back = Zone::parse(&s, None).context("the rewritten zone does not parse")?;
        if back.lines(None) != self.lines(None) {
            bail!("the zone would not read back as it is (a record hickory cannot write as zone text)");
        }
        Ok(s)
    }

    /// Replaces `name`'s records of type `rtype` by `values` (TTL `ttl`, else the replaced
    /// set's, else [`DEFAULT_TTL`]) and raises the serial. A CNAME replaces every other record
    /// of its name; an A or AAAA replaces a CNAME. Returns what changed.
    pub fn set(
        &mut self,
        name: &Name,
        rtype: RecordType,
        values: &[String],
        ttl: Option<u32>,
    ) -> anyhow::Result<Vec<Change>> {
        if values.is_empty() {
            bail!("no value given");
        }
        let data: Vec<RData> = values
            .iter()
            .map(|v| {
                Ok(match rtype {
                    RecordType::A => RData::A(A(v.parse().with_context(|| format!("{v:?} is not an IPv4 address"))?)),
                    RecordType::AAAA => {
                        RData::AAAA(AAAA(v.parse().with_context(|| format!("{v:?} is not an IPv6 address"))?))
                    }
                    RecordType::CNAME => {
                        let mut target = Name::from_ascii(v).with_context(|| format!("{v:?} is not a DNS name"))?;
                        target.set_fqdn(true);
                        RData::CNAME(CNAME(target))
                    }
                    other => bail!("`lab dns set` sets A, AAAA or CNAME records, not {other}"),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        if rtype == RecordType::CNAME && data.len() > 1 {
            bail!("a name holds at most one CNAME");
        }
        if rtype == RecordType::CNAME && name == &origin() {
            bail!("the zone's apex {ORIGIN} cannot be a CNAME");
        }
        let lower = LowerName::new(name);
        let key = RrKey::new(lower.clone(), rtype);
        let mut changes = Vec::new();
        // Record sets the new one cannot live beside.
        let clash: Vec<RrKey> = self
            .records
            .keys()
            .filter(|k| {
                k.name == lower
                    && k.record_type != rtype
                    && (rtype == RecordType::CNAME || k.record_type == RecordType::CNAME)
            })
            .cloned()
            .collect();
        for k in clash {
            if let Some(old) = self.records.remove(&k) {
                changes.push(Change {
                    name: old.name().clone(),
                    rtype: k.record_type,
                    before: shown(Some(&old)),
                    after: Vec::new(),
                });
            }
        }
        let old = self.records.get(&key);
        let ttl =
            ttl.or_else(|| old.and_then(|s| s.records_without_rrsigs().next().map(|r| r.ttl))).unwrap_or(DEFAULT_TTL);
        let before = shown(old);
        let serial = self.serial().wrapping_add(1);
        let mut set = RecordSet::with_ttl(name.clone(), rtype, ttl);
        for d in data {
            let mut r = Record::from_rdata(name.clone(), ttl, d);
            r.dns_class = DNSClass::IN;
            set.insert(r, serial);
        }
        let after = shown(Some(&set));
        self.records.insert(key, set);
        changes.push(Change { name: name.clone(), rtype, before, after });
        self.set_serial(serial);
        Ok(changes)
    }

    fn set_serial(&mut self, serial: u32) {
        let key = RrKey::new(LowerName::new(&origin()), RecordType::SOA);
        if let Some(set) = self.records.get_mut(&key) {
            let records: Vec<Record> = set
                .records_without_rrsigs()
                .map(|r| {
                    let mut r = r.clone();
                    if let RData::SOA(soa) = &mut r.data {
                        soa.serial = serial;
                    }
                    r
                })
                .collect();
            set.set_records(records);
        }
    }

    /// Hickory's in-memory authority for this zone.
    fn handler(&self) -> anyhow::Result<InMemoryZoneHandler> {
        InMemoryZoneHandler::new(origin(), self.records.clone(), ZoneType::Primary, AxfrPolicy::Deny)
            .map_err(|e| anyhow::anyhow!("the zone cannot be served: {e}"))
    }
}

/// Keeps, of each rotating name's A (AAAA) records in `answers`, only one: the one at position
/// `turn % count` of that name's records, `turn` counting that name and type's answers so far
/// (and advanced here). Every other record stays as it is, in order.
pub fn rotate(
    answers: Vec<Record>,
    rotating: &BTreeSet<LowerName>,
    turns: &mut HashMap<(LowerName, RecordType), u64>,
) -> Vec<Record> {
    let key = |r: &Record| -> Option<(LowerName, RecordType)> {
        let t = r.record_type();
        let name = LowerName::new(&r.name);
        (matches!(t, RecordType::A | RecordType::AAAA) && rotating.contains(&name)).then_some((name, t))
    };
    let mut counts: HashMap<(LowerName, RecordType), u64> = HashMap::new();
    for r in &answers {
        if let Some(k) = key(r) {
            *counts.entry(k).or_default() += 1;
        }
    }
    if counts.is_empty() {
        return answers;
    }
    let mut pick: HashMap<(LowerName, RecordType), u64> = HashMap::new();
    for (k, n) in &counts {
        let turn = turns.entry(k.clone()).or_default();
        pick.insert(k.clone(), *turn % n);
        *turn = turn.wrapping_add(1);
    }
    let mut seen: HashMap<(LowerName, RecordType), u64> = HashMap::new();
    answers
        .into_iter()
        .filter(|r| match key(r) {
            None => true,
            Some(k) => {
                let i = seen.entry(k.clone()).or_default();
                let keep = pick.get(&k) == Some(i);
                *i += 1;
                keep
            }
        })
        .collect()
}

/// What the server serves, swapped whole on a reload.
struct Serving {
    handler: InMemoryZoneHandler,
    rotating: BTreeSet<LowerName>,
}

/// The zone handler the server's catalog holds: hickory's in-memory authority for the current
/// zone, with rotation applied to its answers.
struct LabZone {
    origin: LowerName,
    current: RwLock<Arc<Serving>>,
    turns: Mutex<HashMap<(LowerName, RecordType), u64>>,
}

impl LabZone {
    fn new(zone: &Zone) -> anyhow::Result<LabZone> {
        Ok(LabZone {
            origin: LowerName::new(&origin()),
            current: RwLock::new(Arc::new(Serving { handler: zone.handler()?, rotating: zone.rotating() })),
            turns: Mutex::new(HashMap::new()),
        })
    }

    fn replace(&self, zone: &Zone) -> anyhow::Result<()> {
        let loaded = Arc::new(Serving { handler: zone.handler()?, rotating: zone.rotating() });
        match self.current.write() {
            Ok(mut g) => *g = loaded,
            Err(p) => *p.into_inner() = loaded,
        }
        Ok(())
    }

    fn current(&self) -> Arc<Serving> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn rotated(
        &self,
        flow: LookupControlFlow<AuthLookup>,
        rotating: &BTreeSet<LowerName>,
    ) -> LookupControlFlow<AuthLookup> {
        if rotating.is_empty() {
            return flow;
        }
        let fix = |lookup: AuthLookup| match lookup {
            AuthLookup::Records { answers, additionals } => {
                let records: Vec<Record> = answers.iter().cloned().collect();
                let mut turns = match self.turns.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                let kept = rotate(records, rotating, &mut turns);
                AuthLookup::Records { answers: LookupRecords::Section(kept), additionals }
            }
            other => other,
        };
        match flow {
            LookupControlFlow::Continue(Ok(l)) => LookupControlFlow::Continue(Ok(fix(l))),
            LookupControlFlow::Break(Ok(l)) => LookupControlFlow::Break(Ok(fix(l))),
            other => other,
        }
    }
}

#[async_trait::async_trait]
impl ZoneHandler for LabZone {
    fn zone_type(&self) -> ZoneType {
        ZoneType::Primary
    }

    fn axfr_policy(&self) -> AxfrPolicy {
        AxfrPolicy::Deny
    }

    fn origin(&self) -> &LowerName {
        &self.origin
    }

    async fn lookup(
        &self,
        name: &LowerName,
        rtype: RecordType,
        request_info: Option<&RequestInfo<'_>>,
        lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        let cur = self.current();
        let flow = cur.handler.lookup(name, rtype, request_info, lookup_options).await;
        self.rotated(flow, &cur.rotating)
    }

    async fn search(
        &self,
        request: &Request,
        lookup_options: LookupOptions,
    ) -> (LookupControlFlow<AuthLookup>, Option<hickory_proto::rr::TSigResponseContext>) {
        let cur = self.current();
        let (flow, sig) = cur.handler.search(request, lookup_options).await;
        (self.rotated(flow, &cur.rotating), sig)
    }

    async fn nsec_records(&self, name: &LowerName, lookup_options: LookupOptions) -> LookupControlFlow<AuthLookup> {
        self.current().handler.nsec_records(name, lookup_options).await
    }
}

/// What the server serves, written after every (re)load: `lab up` and `lab dns set` wait on it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Loaded {
    /// The serial of the zone served.
    pub serial: u32,
    /// Why the last reload failed (the previous zone is still served), if it did.
    pub error: Option<String>,
}

/// Writes the lab's zone into `dir` (`lab.zone` and the `fresh.zone` it includes).
fn write_example(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("fresh.zone"), FRESH_ZONE)?;
    let p = dir.join("lab.zone");
    std::fs::write(&p, LAB_ZONE)?;
    Ok(p)
}

/// The lab's DNS directory.
fn dir(st: &LabState) -> PathBuf {
    st.dir().join("dns")
}

/// The lab's copy of the zone.
pub fn zone_path(st: &LabState) -> PathBuf {
    dir(st).join("lab.zone")
}

fn loaded_path(st: &LabState) -> PathBuf {
    dir(st).join("loaded.json")
}

fn read_loaded(path: &Path) -> Option<Loaded> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The outside namespace's `local` routes for the served ranges, and the router's route for
/// the fresh names' range (203.0.113.0/24 is on its link already).
pub fn plumb(outside: &Netns, router: &Netns) -> anyhow::Result<()> {
    for r in SERVED_RANGES {
        outside.ip(&["route", "add", "local", r, "dev", "lo"])?;
    }
    router.ip(&["route", "add", FRESH_RANGE, "via", &egret_netns::DB_A.to_string(), "dev", "out0"])?;
    Ok(())
}

/// The resolver file `ip netns exec NS` bind-mounts over `/etc/resolv.conf`.
fn resolv_dir(netns: &str) -> PathBuf {
    Path::new("/etc/netns").join(netns)
}

/// Makes the lab's DNS server pod namespace `netns`'s resolver.
pub fn add_pod_resolver(netns: &str) -> anyhow::Result<()> {
    let d = resolv_dir(netns);
    // Another lab's `down` may remove an empty /etc/netns between our mkdirs: try again.
    if std::fs::create_dir_all(&d).is_err() {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    std::fs::write(
        d.join("resolv.conf"),
        format!(
            "# The egret lab's DNS server (egret lab serve-dns); removed by `egret lab down`.\nnameserver {DNS_IP}\n"
        ),
    )
    .with_context(|| format!("writing {}/resolv.conf", d.display()))
}

/// Removes pod namespace `netns`'s resolver file.
pub fn remove_pod_resolver(netns: &str) {
    let _ = std::fs::remove_dir_all(resolv_dir(netns));
}

/// Removes the resolver files of every namespace of the lab with prefix `prefix` (also those
/// left by a crash); errors are returned for `down` to report.
pub fn remove_resolvers(prefix: &str) -> Vec<String> {
    let dash = format!("{prefix}-");
    let Ok(rd) = std::fs::read_dir("/etc/netns") else { return Vec::new() };
    let mut errors = Vec::new();
    for e in rd.filter_map(Result::ok) {
        if e.file_name().to_str().is_some_and(|n| n.starts_with(&dash))
            && let Err(err) = std::fs::remove_dir_all(e.path())
        {
            errors.push(format!("removing {}: {err}", e.path().display()));
        }
    }
    // Leave /etc/netns as it was if the lab made it (other labs may still use it).
    let _ = std::fs::remove_dir("/etc/netns");
    errors
}

/// The first `nameserver` of a pod's resolver file, if it has one.
pub fn pod_resolver(netns: &str) -> Option<IpAddr> {
    let text = std::fs::read_to_string(resolv_dir(netns).join("resolv.conf")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("nameserver")?.trim().parse().ok())
}

/// Looks `name` up as pod namespace `netns` would: an A (then AAAA) query over UDP to its
/// resolver, from inside the namespace. Returns the first address of the answer.
pub fn lookup(netns: &str, name: &str) -> anyhow::Result<IpAddr> {
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
    let server = SocketAddr::new(pod_resolver(netns).unwrap_or(IpAddr::V4(DNS_IP)), 53);
    let mut qname = Name::from_ascii(name).with_context(|| format!("{name:?} is not a DNS name"))?;
    qname.set_fqdn(true);
    let ns = Netns::attach(netns)?;
    for rtype in [RecordType::A, RecordType::AAAA] {
        let mut q = Message::new(rand_id(), MessageType::Query, OpCode::Query);
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(qname.clone(), rtype));
        // Room for many.test's 120 addresses without falling back to TCP.
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        q.edns = Some(edns);
        let answer = ns.run(|| ask(server, &q))??;
        if answer.metadata.response_code == ResponseCode::NXDomain {
            bail!("{qname}: no such name ({server})");
        }
        if let Some(ip) = answer.answers.iter().find_map(|r| r.data.ip_addr()) {
            return Ok(ip);
        }
    }
    bail!("{qname}: no address ({server})")
}

/// Sends `q` over UDP from the calling thread's network namespace and returns the answer with
/// its ID (asked twice at most, 2 s each).
pub fn ask(server: SocketAddr, q: &hickory_proto::op::Message) -> anyhow::Result<hickory_proto::op::Message> {
    use hickory_proto::op::Message;
    let bytes = q.to_vec()?;
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
    sock.connect(server)?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = vec![0u8; 65536];
    for _ in 0..2 {
        sock.send(&bytes)?;
        if let Ok(n) = sock.recv(&mut buf)
            && let Ok(m) = Message::from_vec(&buf[..n])
            && m.metadata.id == q.metadata.id
        {
            return Ok(m);
        }
    }
    bail!("no answer from {server}")
}

/// A query ID that differs between calls.
fn rand_id() -> u16 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    (nanos ^ std::process::id()) as u16
}

/// Writes the zone into the lab's directory, starts the server in the outside namespace, waits
/// until it serves, and gives every pod its resolver file. Returns the server's pid.
pub fn start(st: &LabState) -> anyhow::Result<u32> {
    let zone = write_example(&dir(st))?;
    let loaded = loaded_path(st);
    let args = [
        "lab".to_string(),
        "serve-dns".into(),
        "--zone".into(),
        zone.to_string_lossy().into_owned(),
        "--listen".into(),
        SocketAddr::new(IpAddr::V4(DNS_IP), 53).to_string(),
        "--loaded".into(),
        loaded.to_string_lossy().into_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // hickory logs every query at info: only its warnings.
    let pid = super::spawn_egret_logging(Some(&st.outside), &args, &st.log("dns"), "info,hickory_server=warn")?;
    super::wait_until(Duration::from_secs(15), || Ok(read_loaded(&loaded).is_some() || !super::running(pid)))?;
    if read_loaded(&loaded).is_none() {
        // `up` removes the lab (and its logs) on failure: say why here.
        let log = std::fs::read_to_string(st.log("dns")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
        bail!("the lab's DNS server did not start:\n{}", tail.join("\n"));
    }
    for p in st.pods.values() {
        add_pod_resolver(&p.netns)?;
    }
    Ok(pid)
}

/// `egret lab serve-dns`: serves `zone` on `listen` (UDP and TCP) until SIGTERM, reading it
/// again on SIGHUP.
pub fn serve(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let (zone_path, listen, loaded) = (args.zone.as_path(), args.listen, args.loaded.as_path());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let zone = Zone::load(zone_path)?;
        let handler = Arc::new(LabZone::new(&zone)?);
        let udp = tokio::net::UdpSocket::bind(listen).await.with_context(|| format!("binding UDP {listen}"))?;
        let tcp = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding TCP {listen}"))?;
        let mut server = server(handler.clone(), udp, tcp);
        write_loaded(loaded, &Loaded { serial: zone.serial(), error: None })?;
        tracing::info!(%listen, serial = zone.serial(), "lab DNS server serving {}", zone_path.display());
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    let state = match Zone::load(zone_path).and_then(|z| handler.replace(&z).map(|()| z.serial())) {
                        Ok(serial) => {
                            tracing::info!(serial, "zone reloaded");
                            Loaded { serial, error: None }
                        }
                        Err(e) => {
                            tracing::error!(error = format!("{e:#}"), "zone not reloaded; serving the previous one");
                            let serial = read_loaded(loaded).map_or(0, |l| l.serial);
                            Loaded { serial, error: Some(format!("{e:#}")) }
                        }
                    };
                    write_loaded(loaded, &state)?;
                }
                _ = term.recv() => break,
                r = server.block_until_done() => {
                    r.context("the DNS server stopped")?;
                    bail!("the DNS server stopped");
                }
            }
        }
        let _ = server.shutdown_gracefully().await;
        Ok(ExitCode::SUCCESS)
    })
}

fn write_loaded(path: &Path, state: &Loaded) -> anyhow::Result<()> {
    egret_store::write_atomic(path, &serde_json::to_vec(state)?)?;
    Ok(())
}

/// A hickory server for `handler` on these sockets.
fn server(
    handler: Arc<LabZone>,
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
) -> hickory_server::Server<Catalog> {
    let mut catalog = Catalog::new();
    catalog.upsert(handler.origin.clone(), vec![handler as Arc<dyn ZoneHandler>]);
    let mut server = hickory_server::Server::new(catalog);
    server.register_socket(udp);
    // Idle TCP connections are closed after 10 s; up to 64 answers queue per connection.
    server.register_listener(tcp, Duration::from_secs(10), 64);
    server
}

/// `egret lab dns set`.
pub fn set(lab: &str, name: &str, rtype: &str, values: &[String], ttl: Option<u32>) -> anyhow::Result<ExitCode> {
    super::need_root()?;
    let _lock = super::lock(lab)?;
    let st = LabState::load(lab)?;
    let rtype = RecordType::from_str(&rtype.to_ascii_uppercase()).map_err(|e| anyhow::anyhow!("{rtype}: {e}"))?;
    let name = parse_name(name)?;
    let pid = st.dns_pid.filter(|&p| super::alive(p)).context("the lab's DNS server is not running")?;
    let path = zone_path(&st);
    let mut zone = Zone::load(&path)?;
    let changes = zone.set(&name, rtype, values, ttl)?;
    egret_store::write_atomic(&path, zone.to_text()?.as_bytes())?;
    super::signal(pid, nix::sys::signal::Signal::SIGHUP);
    let serial = zone.serial();
    let loaded = loaded_path(&st);
    super::wait_until(Duration::from_secs(10), || {
        Ok(read_loaded(&loaded).is_some_and(|l| l.serial == serial || l.error.is_some()))
    })
    .context("the lab's DNS server did not load the change within 10 s")?;
    if let Some(e) = read_loaded(&loaded).and_then(|l| l.error) {
        bail!("the lab's DNS server did not load the change: {e}");
    }
    for c in &changes {
        outln!("{c}");
    }
    outln!("zone {ORIGIN} serial {serial}: served");
    Ok(ExitCode::SUCCESS)
}

/// `egret lab dns show`.
pub fn show(lab: &str, name: Option<&str>) -> anyhow::Result<ExitCode> {
    let st = LabState::load(lab)?;
    let zone = Zone::load(&zone_path(&st))?;
    let name = name.map(parse_name).transpose()?;
    let lines = zone.lines(name.as_ref());
    if lines.is_empty() {
        eprintln!("no records for {} in the lab's zone", name.map(|n| n.to_string()).unwrap_or_default());
        return Ok(ExitCode::from(1));
    }
    for l in lines {
        outln!("{l}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests;
