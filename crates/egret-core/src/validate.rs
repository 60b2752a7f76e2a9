//! Validation of `egret.dev` objects: API objects in, model objects and problems out.
//!
//! Every problem names the object and the field path and says what is wrong and what is
//! allowed. A bad object is reported and left out; it never stops the others from being checked.

use crate::model::{AppliedTo, Bandwidth, Egress, FailurePolicy, IpSpec, Pool, Subnet};
use crate::net::{Family, Span};
use crate::selector::Selector;
use egret_api::v1alpha1::{self as api, IPRange};
use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

/// One thing wrong with one object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// The object's kind, e.g. `Egress`.
    pub kind: String,
    /// The object's name.
    pub name: String,
    /// Position of the object in the input slice of its kind (to find the file it came from).
    pub index: usize,
    /// Field path, e.g. `spec.ipRanges[0].start`.
    pub field: String,
    /// What is wrong and what is allowed.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}: {}: {}", self.kind, self.name, self.field, self.reason)
    }
}

/// The outcome of validating a set of objects.
#[derive(Debug, Clone, Default)]
pub struct Validated {
    /// Valid pools, by name.
    pub pools: BTreeMap<String, Pool>,
    /// Valid Egresses, by name.
    pub egresses: BTreeMap<String, Egress>,
    /// Every problem found, in input order.
    pub problems: Vec<Problem>,
}

pub(crate) struct Sink<'a> {
    pub(crate) kind: &'static str,
    pub(crate) name: &'a str,
    pub(crate) index: usize,
    pub(crate) problems: Vec<Problem>,
}

impl Sink<'_> {
    pub(crate) fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(Problem {
            kind: self.kind.to_string(),
            name: self.name.to_string(),
            index: self.index,
            field: field.into(),
            reason: reason.into(),
        });
    }
}

pub(crate) fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.trim().parse().map_err(|_| format!("{s:?} is not an IPv4 or IPv6 address"))
}

/// Parses a CIDR, refusing host bits so that `10.0.0.1/24` is not silently read as `10.0.0.0/24`.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let net: IpNet = s.trim().parse().map_err(|_| {
        format!("{s:?} is not a CIDR (expected an address and a prefix length, e.g. 10.10.1.0/28 or fd00::/64)")
    })?;
    if net.trunc() != net {
        return Err(format!("{s:?} has host bits set; did you mean {}?", net.trunc()));
    }
    Ok(net)
}

/// The addresses a CIDR range hands out: all but the network address (and, for IPv4, the
/// broadcast address); /31 and /32 (IPv6: /127 and /128) hand out every address.
pub fn usable_span(net: &IpNet) -> Span {
    let mut s = Span::of_net(net);
    let host_bits = net.max_prefix_len() - net.prefix_len();
    if host_bits >= 2 {
        s.start += 1;
        if Family::of_net(net) == Family::V4 {
            s.end -= 1;
        }
    }
    s
}

fn range_span(r: &IPRange, at: &str, sink: &mut Sink) -> Option<Span> {
    match (&r.cidr, &r.start, &r.end) {
        (Some(c), None, None) => match parse_cidr(c) {
            Ok(net) => Some(usable_span(&net)),
            Err(e) => {
                sink.push(format!("{at}.cidr"), e);
                None
            }
        },
        (None, Some(s), Some(e)) => {
            let start = parse_ip(s).map_err(|m| sink.push(format!("{at}.start"), m)).ok();
            let end = parse_ip(e).map_err(|m| sink.push(format!("{at}.end"), m)).ok();
            let (start, end) = (start?, end?);
            if Family::of(&start) != Family::of(&end) {
                sink.push(
                    at,
                    format!(
                        "start {start} is {} but end {end} is {}; both ends must be of one family",
                        Family::of(&start),
                        Family::of(&end)
                    ),
                );
                return None;
            }
            let span = Span::new(start, end);
            if span.is_none() {
                sink.push(at, format!("start {start} is after end {end}; start must not exceed end"));
            }
            span
        }
        (Some(_), _, _) => {
            sink.push(at, "set either cidr, or start and end, not both");
            None
        }
        (None, None, None) => {
            sink.push(at, "empty range; set cidr, or start and end");
            None
        }
        (None, _, _) => {
            sink.push(at, "start and end must be set together");
            None
        }
    }
}

pub(crate) fn compile(sel: &LabelSelector, at: &str, sink: &mut Sink) -> Option<Selector> {
    Selector::compile(sel).map_err(|e| sink.push(format!("{at}.{}", e.field), e.reason)).ok()
}

fn describe(s: &Span) -> String {
    if s.start == s.end { s.first().to_string() } else { format!("{}-{}", s.first(), s.last()) }
}

/// What pools must not hand out: addresses and networks the cluster already uses. Taking one
/// over would break the cluster (an agent would hold and announce the router's address).
/// Loopback, link-local, multicast, unspecified and broadcast addresses are always reserved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reserved {
    /// Node addresses (`status.addresses`), with the node's name.
    pub node_ips: Vec<(String, IpAddr)>,
    /// Pod CIDRs, with the node's name; `None` for a cluster-wide pod network (`--cluster-cidr`).
    pub pod_cidrs: Vec<(Option<String>, IpNet)>,
    /// Service CIDRs.
    pub service_cidrs: Vec<IpNet>,
    /// Further addresses no object names, such as the node network's router (`--reserved-ip`).
    pub addresses: Vec<IpAddr>,
}

/// Addresses no pool may hold on any network, and why.
const SPECIAL: &[(&str, &str)] = &[
    ("0.0.0.0/8", "unspecified ('this network')"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

impl Reserved {
    /// Everything reserved in a cluster of `nodes` with `config`.
    pub fn of(nodes: &[crate::model::Node], config: &crate::planner::ClusterConfig) -> Reserved {
        Reserved {
            node_ips: nodes.iter().flat_map(|n| n.addresses.iter().map(|ip| (n.name.clone(), *ip))).collect(),
            pod_cidrs: nodes
                .iter()
                .flat_map(|n| n.pod_cidrs.iter().map(|c| (Some(n.name.clone()), *c)))
                .chain(config.internal_cidrs.iter().map(|c| (None, *c)))
                .collect(),
            service_cidrs: config.service_cidrs.clone(),
            addresses: config.reserved.clone(),
        }
    }

    /// Every reserved block with what it is, for messages.
    fn blocks(&self) -> Vec<(Span, String)> {
        let mut out: Vec<(Span, String)> = SPECIAL
            .iter()
            .filter_map(|(c, what)| c.parse::<IpNet>().ok().map(|n| (Span::of_net(&n), format!("{n} ({what})"))))
            .collect();
        out.extend(
            self.node_ips
                .iter()
                .map(|(n, ip)| (Span::of_net(&IpNet::from(*ip)), format!("{ip}, an address of Node {n}"))),
        );
        out.extend(self.pod_cidrs.iter().map(|(n, c)| {
            let what = match n {
                Some(n) => format!("{c}, the pod CIDR of Node {n}"),
                None => format!("{c}, a cluster CIDR (--cluster-cidr)"),
            };
            (Span::of_net(c), what)
        }));
        out.extend(self.service_cidrs.iter().map(|c| (Span::of_net(c), format!("{c}, a service CIDR"))));
        out.extend(self.addresses.iter().map(|ip| {
            (Span::of_net(&IpNet::from(*ip)), format!("{ip}, a reserved address (--reserved-ip, e.g. the router)"))
        }));
        out
    }
}

/// Validates one pool on its own (not against other pools).
fn validate_pool(p: &api::ExternalIPPool, reserved: &[(Span, String)], sink: &mut Sink) -> Option<Pool> {
    let before = sink.problems.len();
    if p.spec.ip_ranges.is_empty() {
        sink.push("spec.ipRanges", "at least one range (cidr, or start and end) is required");
    }
    let mut spans: Vec<(usize, Span)> = Vec::new();
    for (i, r) in p.spec.ip_ranges.iter().enumerate() {
        let at = format!("spec.ipRanges[{i}]");
        let Some(span) = range_span(r, &at, sink) else {
            continue;
        };
        if let Some((j, first)) = spans.first()
            && first.family != span.family
        {
            sink.push(
                &at,
                format!(
                    "{} range in a pool whose spec.ipRanges[{j}] is {}; a pool holds one family",
                    span.family, first.family
                ),
            );
            continue;
        }
        if let Some((j, o)) = spans.iter().find(|(_, o)| o.overlaps(&span)) {
            sink.push(
                &at,
                format!("{} overlaps spec.ipRanges[{j}] ({}); ranges must not overlap", describe(&span), describe(o)),
            );
            continue;
        }
        let mut hits: Vec<&(Span, String)> = reserved.iter().filter(|(r, _)| r.overlaps(&span)).collect();
        hits.sort_by_key(|(r, _)| (r.start, r.end));
        if let Some((_, what)) = hits.first() {
            let more = match hits.len() - 1 {
                0 => String::new(),
                n => format!(" and {n} more reserved address(es) or network(s)"),
            };
            sink.push(
                &at,
                format!(
                    "{} covers {what}{more}; a pool must not hold addresses the cluster already uses",
                    describe(&span)
                ),
            );
            continue;
        }
        spans.push((i, span));
    }
    let node_selector = compile(&p.spec.node_selector, "spec.nodeSelector", sink);
    let subnet = p.spec.subnet_info.as_ref().and_then(|si| subnet(si, &spans, sink));
    if sink.problems.len() > before {
        return None;
    }
    let family = spans.first().map(|(_, s)| s.family)?;
    Some(Pool {
        name: p.metadata.name.clone().unwrap_or_default(),
        ranges: spans.into_iter().map(|(_, s)| s).collect(),
        family,
        node_selector: node_selector?,
        subnet,
    })
}

/// `spec.subnetInfo`, checked against the pool's ranges: every range inside the subnet, the
/// gateway inside it but not one of the addresses handed out, a VLAN id a switch accepts.
fn subnet(si: &api::SubnetInfo, spans: &[(usize, Span)], sink: &mut Sink) -> Option<Subnet> {
    let before = sink.problems.len();
    let gateway = match si.gateway.parse::<IpAddr>() {
        Ok(IpAddr::V4(g)) => Some(g),
        Ok(IpAddr::V6(_)) => {
            sink.push("spec.subnetInfo.gateway", "IPv6 egress subnets are not supported yet");
            None
        }
        Err(_) => {
            sink.push("spec.subnetInfo.gateway", format!("{:?} is not an IP address", si.gateway));
            None
        }
    };
    let prefix_len = match u8::try_from(si.prefix_length) {
        Ok(l @ 1..=32) => Some(l),
        _ => {
            sink.push(
                "spec.subnetInfo.prefixLength",
                format!("{} is not an IPv4 prefix length (1..32)", si.prefix_length),
            );
            None
        }
    };
    match si.vlan.unwrap_or(0) {
        0 => {}
        v @ 1..=4094 => sink.push(
            "spec.subnetInfo.vlan",
            format!("VLAN {v}: egress subnets on a VLAN are not supported yet (absent or 0: untagged, on the uplink)"),
        ),
        v => sink.push("spec.subnetInfo.vlan", format!("VLAN id {v} is outside 1..4094 (0 or absent: untagged)")),
    }
    let (Some(gateway), Some(prefix_len)) = (gateway, prefix_len) else { return None };
    let net = ipnet::Ipv4Net::new(gateway, prefix_len).ok()?.trunc();
    for (i, span) in spans {
        if span.family != crate::net::Family::V4 {
            sink.push("spec.subnetInfo.gateway", "an IPv4 subnet for a pool of IPv6 ranges");
            break;
        }
        let (IpAddr::V4(first), IpAddr::V4(last)) = (span.first(), span.last()) else { continue };
        if !net.contains(&first) || !net.contains(&last) {
            sink.push(
                "spec.subnetInfo.gateway",
                format!("{gateway}/{prefix_len} does not contain spec.ipRanges[{i}] ({}): the pool's addresses must be on the gateway's subnet", describe(span)),
            );
        }
        if span.contains(&IpAddr::V4(gateway)) {
            sink.push(
                "spec.subnetInfo.gateway",
                format!("{gateway} is inside spec.ipRanges[{i}]: the pool would hand out its router's address"),
            );
        }
    }
    (sink.problems.len() == before).then_some(Subnet { gateway, prefix_len })
}

/// The egress IPs an Egress asks for, checked field by field (a problem for each bad entry;
/// the good ones are returned either way).
fn egress_ips(
    e: &api::Egress,
    pools: &BTreeMap<String, Pool>,
    invalid_pools: &BTreeSet<String>,
    sink: &mut Sink,
) -> Vec<IpSpec> {
    let spec = &e.spec;
    if spec.egress_ip.is_some() && !spec.egress_ips.is_empty() {
        sink.push("spec.egressIPs", "cannot be set with egressIP; list every egress IP in egressIPs");
        return Vec::new();
    }
    if spec.external_ip_pool.is_some() && !spec.external_ip_pools.is_empty() {
        sink.push("spec.externalIPPools", "cannot be set with externalIPPool; list every pool in externalIPPools");
        return Vec::new();
    }
    if !spec.egress_ips.is_empty()
        && !spec.external_ip_pools.is_empty()
        && spec.egress_ips.len() != spec.external_ip_pools.len()
    {
        sink.push(
            "spec.egressIPs",
            format!(
                "lists {} addresses but externalIPPools lists {} pools; entries with the same index go together",
                spec.egress_ips.len(),
                spec.external_ip_pools.len()
            ),
        );
        return Vec::new();
    }
    // (static IP, its field, pool, its field), in spec order.
    let mut wanted: Vec<(Option<&String>, String, Option<&String>, String)> = Vec::new();
    if !spec.external_ip_pools.is_empty() {
        for (i, p) in spec.external_ip_pools.iter().enumerate() {
            if spec.external_ip_pools[..i].contains(p) {
                sink.push(format!("spec.externalIPPools[{i}]"), format!("ExternalIPPool {p:?} is listed twice"));
                continue;
            }
            wanted.push((
                spec.egress_ips.get(i),
                format!("spec.egressIPs[{i}]"),
                Some(p),
                format!("spec.externalIPPools[{i}]"),
            ));
        }
    } else if !spec.egress_ips.is_empty() {
        for (i, ip) in spec.egress_ips.iter().enumerate() {
            if spec.egress_ips[..i].contains(ip) {
                sink.push(format!("spec.egressIPs[{i}]"), format!("{ip} is listed twice"));
                continue;
            }
            wanted.push((
                Some(ip),
                format!("spec.egressIPs[{i}]"),
                spec.external_ip_pool.as_ref(),
                "spec.externalIPPool".into(),
            ));
        }
    } else if spec.egress_ip.is_some() || spec.external_ip_pool.is_some() {
        wanted.push((
            spec.egress_ip.as_ref(),
            "spec.egressIP".into(),
            spec.external_ip_pool.as_ref(),
            "spec.externalIPPool".into(),
        ));
    } else if spec.gateway_nodes.is_empty() {
        sink.push(
            "spec",
            "none of egressIP, egressIPs, externalIPPool, externalIPPools and gatewayNodes is set; set egressIP (static), externalIPPool (allocated), both, or gatewayNodes (a gateway node's own address)",
        );
    }
    // Addresses recorded in status, to restore allocations from.
    let recorded: Vec<IpAddr> = e
        .status
        .iter()
        .flat_map(|s| s.gateways.iter().filter_map(|g| g.egress_ip.as_deref()).chain(s.egress_ip.as_deref()))
        .filter_map(|s| s.parse().ok())
        .collect();
    let mut out: Vec<IpSpec> = Vec::new();
    for (ip_text, ip_field, pname, pool_field) in wanted {
        let ip = ip_text.and_then(|s| parse_ip(s).map_err(|m| sink.push(ip_field.clone(), m)).ok());
        if ip_text.is_some() && ip.is_none() {
            continue;
        }
        let mut family = ip.as_ref().map(Family::of);
        let mut status_ip = None;
        if let Some(pname) = pname {
            match pools.get(pname) {
                Some(pool) => {
                    if let Some(ip) = &ip
                        && !pool.contains(ip)
                    {
                        let ranges: Vec<String> = pool.ranges.iter().map(describe).collect();
                        sink.push(ip_field.clone(), format!("{ip} is not in ExternalIPPool {pname:?} (usable: {}); an egress IP given with its pool must lie in the pool", ranges.join(", ")));
                        continue;
                    }
                    family.get_or_insert(pool.family);
                    status_ip = recorded
                        .iter()
                        .find(|r| {
                            pool.contains(r) && !out.iter().any(|o| o.status_ip == Some(**r) || o.ip == Some(**r))
                        })
                        .copied();
                }
                None if invalid_pools.contains(pname) => {
                    sink.push(pool_field, format!("ExternalIPPool {pname:?} is invalid (see its own errors)"));
                    continue;
                }
                None => {
                    sink.push(pool_field, format!("ExternalIPPool {pname:?} does not exist"));
                    continue;
                }
            }
        }
        let Some(family) = family else { continue };
        out.push(IpSpec { ip, pool: pname.cloned(), family, status_ip, gateway_nodes: None, interface: None });
    }
    for (i, g) in spec.gateway_nodes.iter().enumerate() {
        let at = format!("spec.gatewayNodes[{i}]");
        let selector = compile(&g.node_selector, &format!("{at}.nodeSelector"), sink);
        let family = match g.ip_family.as_deref() {
            None | Some("IPv4") => Family::V4,
            Some("IPv6") => Family::V6,
            Some(other) => {
                sink.push(format!("{at}.ipFamily"), format!("unknown value {other:?}; allowed: IPv4, IPv6"));
                continue;
            }
        };
        let interface = match g.interface.as_deref().map(|n| (n, interface_name(n))) {
            Some((_, Err(m))) => {
                sink.push(format!("{at}.interface"), m);
                continue;
            }
            Some((_, Ok(()))) if family == Family::V6 => {
                sink.push(
                    format!("{at}.interface"),
                    "an IPv6 egress IP taken from an interface is not supported yet (IPv4 only, as in Cilium)",
                );
                continue;
            }
            Some((n, Ok(()))) => Some(n.to_string()),
            None => None,
        };
        if let Some(selector) = selector {
            out.push(IpSpec {
                ip: None,
                pool: None,
                family,
                status_ip: None,
                gateway_nodes: Some(selector),
                interface,
            });
        }
    }
    out
}

/// Whether `name` can name a Linux network interface: 1 to 15 bytes, no `/`, `:` or
/// whitespace, not `.` or `..`.
fn interface_name(name: &str) -> Result<(), String> {
    let bad = name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if bad {
        return Err(format!("{name:?} is not an interface name: 1 to 15 characters, without '/', ':' or whitespace"));
    }
    Ok(())
}

fn validate_egress(
    e: &api::Egress,
    pools: &BTreeMap<String, Pool>,
    invalid_pools: &BTreeSet<String>,
    sink: &mut Sink,
) -> Option<Egress> {
    let before = sink.problems.len();
    let spec = &e.spec;
    let at = &spec.applied_to;
    let namespaces = at.namespace_selector.as_ref().map(|s| compile(s, "spec.appliedTo.namespaceSelector", sink));
    let pods = at.pod_selector.as_ref().map(|s| compile(s, "spec.appliedTo.podSelector", sink));
    let nodes = at.node_selector.as_ref().map(|s| compile(s, "spec.appliedTo.nodeSelector", sink));

    let ips = egress_ips(e, pools, invalid_pools, sink);
    let mut families: Vec<Family> = ips.iter().map(|s| s.family).collect();
    families.sort();
    families.dedup();
    let mut cidrs = |list: &[String], field: &str| -> Vec<IpNet> {
        let mut out = Vec::new();
        for (i, c) in list.iter().enumerate() {
            let at = format!("{field}[{i}]");
            match parse_cidr(c) {
                Ok(net) => {
                    let f = Family::of_net(&net);
                    if !families.is_empty() && !families.contains(&f) {
                        let have: Vec<String> = families.iter().map(|f| f.to_string()).collect();
                        sink.push(
                            at,
                            format!(
                                "{net} is {f} but the Egress has no {f} egress IP (only {}); a destination must be of an egress IP's family",
                                have.join(" and ")
                            ),
                        );
                        continue;
                    }
                    out.push(net);
                }
                Err(m) => sink.push(at, m),
            }
        }
        out
    };
    let destinations = cidrs(&spec.destination_cidrs, "spec.destinationCIDRs");
    let excluded = cidrs(&spec.excluded_cidrs, "spec.excludedCIDRs");
    if !spec.destination_cidrs.is_empty() {
        for (i, x) in excluded.iter().enumerate() {
            if !destinations.iter().any(|d| d.contains(x)) {
                sink.push(
                    format!("spec.excludedCIDRs[{i}]"),
                    format!("{x} is not inside any of destinationCIDRs; an exclusion must narrow a destination"),
                );
            }
        }
    }
    let failure_policy = match spec.failure_policy.as_deref() {
        None | Some("Drop") => FailurePolicy::Drop,
        Some("FallbackToNodeIP") => FailurePolicy::FallbackToNodeIP,
        Some(other) => {
            sink.push("spec.failurePolicy", format!("unknown value {other:?}; allowed: Drop, FallbackToNodeIP"));
            FailurePolicy::Drop
        }
    };
    let bandwidth = spec.bandwidth.as_ref().and_then(|b| {
        let rate = bits(&b.rate, "bps").map_err(|m| sink.push("spec.bandwidth.rate", m)).ok();
        let burst = bits(&b.burst, "b").map_err(|m| sink.push("spec.bandwidth.burst", m)).ok();
        Some(Bandwidth { rate_bps: rate?, burst_bits: burst? })
    });
    if sink.problems.len() > before || ips.is_empty() {
        return None;
    }
    Some(Egress {
        name: e.metadata.name.clone().unwrap_or_default(),
        created: e.metadata.creation_timestamp.clone(),
        applied_to: AppliedTo { namespaces: namespaces.flatten(), pods: pods.flatten(), nodes: nodes.flatten() },
        destinations: if destinations.is_empty() {
            families.iter().map(|f| f.everything()).collect()
        } else {
            destinations
        },
        ips,
        excluded,
        families,
        failure_policy,
        bandwidth,
    })
}

/// A number of bits (per second) as Antrea writes them: digits, an optional SI (`k`, `M`, `G`,
/// `T`) or binary (`Ki`, `Mi`, `Gi`, `Ti`) multiplier, an optional `unit` (`bps`, `b`).
pub(crate) fn bits(text: &str, unit: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "{text:?} is not a quantity of bits: digits with an optional k, M, G, T, Ki, Mi, Gi or Ti and an optional {unit:?}, e.g. \"100M{unit}\""
        )
    };
    let t = text.trim();
    let t = t.strip_suffix(unit).unwrap_or(t);
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match suffix {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return Err(bad()),
    };
    match n.checked_mul(mult) {
        Some(0) => Err(format!("{text:?} is zero: a limit must let something through")),
        // nft counts in bytes per second; beyond this the limit would not be one.
        Some(v) if v <= u64::MAX / 8 => Ok(v),
        _ => Err(format!("{text:?} is too large")),
    }
}

pub(crate) fn check_name(name: Option<&String>, seen: &mut BTreeSet<String>, sink: &mut Sink) -> bool {
    match name {
        None => {
            sink.push("metadata.name", "is required");
            false
        }
        Some(n) if n.is_empty() => {
            sink.push("metadata.name", "is required");
            false
        }
        Some(n) if let Err(why) = dns1123_subdomain(n) => {
            sink.push(
                "metadata.name",
                format!("{n:?} is not a valid name: {why} (names must be DNS-1123 subdomains, as Kubernetes requires: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters)"),
            );
            false
        }
        Some(n) if !seen.insert(n.clone()) => {
            sink.push(
                "metadata.name",
                format!("duplicate {} {n:?}; names are unique per kind (the first definition is kept)", sink.kind),
            );
            false
        }
        Some(_) => true,
    }
}

/// Checks a DNS-1123 subdomain (RFC 1123 host names, as Kubernetes checks the names of most
/// objects): dot-separated labels of lowercase letters, digits and `-`, each starting and
/// ending with a letter or digit, 253 characters at most.
pub fn dns1123_subdomain(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err(format!("{} characters, more than 253", name.len()));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label (leading, trailing or double '.')".into());
        }
        if let Some(c) = label.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
            return Err(format!("{c:?} is not allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("{label:?} starts or ends with '-'"));
        }
    }
    Ok(())
}

/// Validates pools and Egresses together (Egresses refer to pools; pools must not overlap).
///
/// When two pools overlap, the older one (then the one whose name sorts first) is kept and the
/// other is reported, so adding a bad pool never breaks a working one.
///
/// Pool ranges must not cover anything in `reserved` (node addresses, pod and service CIDRs,
/// the router) nor loopback, link-local, multicast, unspecified or broadcast addresses.
pub fn validate(pools: &[api::ExternalIPPool], egresses: &[api::Egress], reserved: &Reserved) -> Validated {
    let reserved = reserved.blocks();
    let mut out = Validated::default();
    let mut seen = BTreeSet::new();
    let mut candidates: Vec<(usize, &api::ExternalIPPool, Pool)> = Vec::new();
    let mut invalid_pools = BTreeSet::new();
    let mut pool_problems: Vec<(usize, Problem)> = Vec::new();
    for (idx, p) in pools.iter().enumerate() {
        let name = p.metadata.name.clone().unwrap_or_default();
        let mut sink = Sink { kind: "ExternalIPPool", name: &name, index: idx, problems: Vec::new() };
        if check_name(p.metadata.name.as_ref(), &mut seen, &mut sink) {
            match validate_pool(p, &reserved, &mut sink) {
                Some(model) => candidates.push((idx, p, model)),
                None => {
                    invalid_pools.insert(name.clone());
                }
            }
        }
        pool_problems.extend(sink.problems.into_iter().map(|pr| (idx, pr)));
    }
    // Older pools claim their addresses first.
    candidates.sort_by(|a, b| {
        (a.1.metadata.creation_timestamp.as_ref(), &a.2.name)
            .cmp(&(b.1.metadata.creation_timestamp.as_ref(), &b.2.name))
    });
    for (idx, _, model) in candidates {
        let mut sink = Sink { kind: "ExternalIPPool", name: &model.name, index: idx, problems: Vec::new() };
        for (i, r) in model.ranges.iter().enumerate() {
            for other in out.pools.values() {
                if let Some(o) = other.ranges.iter().find(|o| o.overlaps(r)) {
                    sink.push(
                        format!("spec.ipRanges[{i}]"),
                        format!(
                            "{} overlaps ExternalIPPool {:?} ({}); pools must not share addresses",
                            describe(r),
                            other.name,
                            describe(o)
                        ),
                    );
                }
            }
        }
        if sink.problems.is_empty() {
            out.pools.insert(model.name.clone(), model);
        } else {
            invalid_pools.insert(model.name.clone());
            pool_problems.extend(sink.problems.into_iter().map(|pr| (idx, pr)));
        }
    }
    pool_problems.sort_by_key(|(i, _)| *i);
    out.problems.extend(pool_problems.into_iter().map(|(_, p)| p));

    let (egresses, problems) = validate_egresses(egresses, &out.pools, &invalid_pools);
    out.egresses = egresses;
    out.problems.extend(problems);
    out
}

/// The Egress half of [`validate`]: Egresses against pools validated already (`invalid_pools`
/// names the pools that exist, with a valid name, but failed validation). Returns the valid
/// Egresses and the problems found, in input order.
pub fn validate_egresses(
    egresses: &[api::Egress],
    pools: &BTreeMap<String, Pool>,
    invalid_pools: &BTreeSet<String>,
) -> (BTreeMap<String, Egress>, Vec<Problem>) {
    let mut seen = BTreeSet::new();
    let mut valid = BTreeMap::new();
    let mut problems = Vec::new();
    for (idx, e) in egresses.iter().enumerate() {
        let name = e.metadata.name.clone().unwrap_or_default();
        let mut sink = Sink { kind: "Egress", name: &name, index: idx, problems: Vec::new() };
        if check_name(e.metadata.name.as_ref(), &mut seen, &mut sink)
            && let Some(model) = validate_egress(e, pools, invalid_pools, &mut sink)
        {
            valid.insert(model.name.clone(), model);
        }
        problems.extend(sink.problems);
    }
    (valid, problems)
}

/// Checks an update of a pool against its allocations: a range may not be changed or removed
/// while an address it held is allocated. `allocated` lists `(ip, egress name)`.
pub fn check_pool_update(new: &Pool, index: usize, allocated: &[(IpAddr, String)]) -> Vec<Problem> {
    allocated
        .iter()
        .filter(|(ip, _)| !new.contains(ip))
        .map(|(ip, eg)| Problem {
            kind: "ExternalIPPool".into(),
            name: new.name.clone(),
            index,
            field: "spec.ipRanges".into(),
            reason: format!("{ip} is allocated to Egress {eg:?} but the new ranges no longer hold it; release it (delete or change that Egress) before changing or removing its range"),
        })
        .collect()
}

#[cfg(test)]
mod subnet_tests {
    use super::*;
    use crate::testutil::mk_pool;

    fn check(gateway: &str, prefix: i32, vlan: Option<i32>) -> Result<Subnet, Vec<(String, String)>> {
        let mut p = mk_pool("p", &[("192.0.2.10", "192.0.2.20")], &[]);
        p.spec.subnet_info = Some(api::SubnetInfo { gateway: gateway.into(), prefix_length: prefix, vlan });
        let v = validate(&[p], &[], &Reserved::default());
        match v.pools.get("p").and_then(|p| p.subnet) {
            Some(s) => Ok(s),
            None => Err(v.problems.iter().map(|p| (p.field.clone(), p.reason.clone())).collect()),
        }
    }

    fn field_of(r: Result<Subnet, Vec<(String, String)>>) -> String {
        r.err().and_then(|e| e.first().map(|f| f.0.clone())).unwrap_or_default()
    }

    #[test]
    fn a_subnet_holds_its_ranges_and_its_gateway_is_not_handed_out() {
        let s = check("192.0.2.1", 24, None).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((s.gateway, s.prefix_len), ("192.0.2.1".parse().unwrap(), 24));
        assert!(check("192.0.2.1", 24, Some(0)).is_ok(), "VLAN 0: untagged");
        assert_eq!(field_of(check("192.0.3.1", 24, None)), "spec.subnetInfo.gateway", "ranges outside the subnet");
        assert_eq!(field_of(check("192.0.2.15", 24, None)), "spec.subnetInfo.gateway", "gateway handed out");
        assert_eq!(field_of(check("192.0.2.1", 33, None)), "spec.subnetInfo.prefixLength");
        assert_eq!(field_of(check("router", 24, None)), "spec.subnetInfo.gateway");
        assert_eq!(field_of(check("192.0.2.1", 24, Some(5000))), "spec.subnetInfo.vlan");
        assert_eq!(field_of(check("192.0.2.1", 24, Some(-1))), "spec.subnetInfo.vlan");
        let r = check("192.0.2.1", 24, Some(100));
        assert!(r.as_ref().err().is_some_and(|e| e[0].1.contains("not supported yet")), "{r:?}");
    }
}

#[cfg(test)]
mod bits_tests {
    use super::bits;

    #[test]
    fn antrea_bandwidth_quantities_parse_as_bits() {
        assert_eq!(bits("100Mbps", "bps"), Ok(100_000_000));
        assert_eq!(bits("100M", "bps"), Ok(100_000_000));
        assert_eq!(bits("1Gbps", "bps"), Ok(1_000_000_000));
        assert_eq!(bits("512Kibps", "bps"), Ok(512 * 1024));
        assert_eq!(bits("200Mb", "b"), Ok(200_000_000));
        assert_eq!(bits("8000", "b"), Ok(8000));
        for bad in ["", "Mbps", "1.5M", "-1M", "10Q", "100 Mbps x", "99999999999999999999T"] {
            assert!(bits(bad, "bps").is_err(), "{bad:?}");
        }
        assert!(bits("0M", "bps").unwrap_err().contains("zero"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    /// Validation with nothing reserved but the special ranges.
    fn validate(pools: &[api::ExternalIPPool], egresses: &[api::Egress]) -> Validated {
        super::validate(pools, egresses, &Reserved::default())
    }

    fn fields(v: &Validated) -> Vec<String> {
        v.problems.iter().map(|p| format!("{}/{}: {}", p.kind, p.name, p.field)).collect()
    }

    #[test]
    fn valid_seed_objects_pass() {
        let v = validate(
            &[mk_pool("external-ip-pool", &[("10.10.0.11", "10.10.0.20")], &[])],
            &[mk_egress("egress-prod-web", Some("external-ip-pool"), None)],
        );
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        assert_eq!(v.egresses["egress-prod-web"].destinations, vec!["0.0.0.0/0".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn range_errors_name_their_field() {
        let bad = |r: IPRange| {
            let mut p = mk_pool("p", &[], &[]);
            p.spec.ip_ranges = vec![r];
            let v = validate(&[p], &[]);
            assert!(v.pools.is_empty());
            (v.problems[0].field.clone(), v.problems[0].reason.clone())
        };
        let (f, r) = bad(range(Some("10.0.0.9"), Some("10.0.0.1"), None));
        assert_eq!(f, "spec.ipRanges[0]");
        assert!(r.contains("after end"), "{r}");
        let (f, r) = bad(range(Some("10.0.0.1"), Some("fd00::1"), None));
        assert_eq!(f, "spec.ipRanges[0]");
        assert!(r.contains("one family"), "{r}");
        assert_eq!(bad(range(Some("10.0.0.300"), Some("10.0.0.1"), None)).0, "spec.ipRanges[0].start");
        assert_eq!(bad(range(Some("10.0.0.1"), Some("nope"), None)).0, "spec.ipRanges[0].end");
        assert_eq!(bad(range(None, None, Some("10.0.0.0/33"))).0, "spec.ipRanges[0].cidr");
        let (f, r) = bad(range(None, None, Some("10.0.0.1/24")));
        assert_eq!(f, "spec.ipRanges[0].cidr");
        assert!(r.contains("10.0.0.0/24"), "{r}");
        assert!(bad(range(Some("10.0.0.1"), Some("10.0.0.2"), Some("10.0.0.0/24"))).1.contains("not both"));
        assert!(bad(range(Some("10.0.0.1"), None, None)).1.contains("together"));
        assert!(bad(range(None, None, None)).1.contains("empty range"));
    }

    #[test]
    fn mixed_families_and_overlaps_within_a_pool() {
        let mut p = mk_pool("p", &[("10.0.0.1", "10.0.0.10"), ("10.0.0.5", "10.0.0.20")], &[]);
        p.spec.ip_ranges.push(range(None, None, Some("fd00::/120")));
        let v = validate(&[p], &[]);
        assert_eq!(fields(&v), vec!["ExternalIPPool/p: spec.ipRanges[1]", "ExternalIPPool/p: spec.ipRanges[2]"]);
        assert!(v.problems[0].reason.contains("overlaps spec.ipRanges[0]"));
        assert!(v.problems[1].reason.contains("one family"));
    }

    #[test]
    fn overlapping_pools_keep_the_older() {
        let mut a = mk_pool("b-old", &[("10.0.0.1", "10.0.0.10")], &[]);
        a.metadata.creation_timestamp = Some(ts(100));
        let mut b = mk_pool("a-new", &[("10.0.0.10", "10.0.0.20")], &[]);
        b.metadata.creation_timestamp = Some(ts(200));
        let v = validate(&[a, b], &[mk_egress("e", Some("a-new"), None)]);
        assert!(v.pools.contains_key("b-old"));
        assert_eq!(fields(&v), vec!["ExternalIPPool/a-new: spec.ipRanges[0]", "Egress/e: spec.externalIPPool"]);
        assert!(v.problems[1].reason.contains("invalid"));
    }

    #[test]
    fn duplicate_names_are_reported_once_each() {
        let p = mk_pool("p", &[("10.0.0.1", "10.0.0.2")], &[]);
        let e = mk_egress("e", Some("p"), None);
        let v = validate(&[p.clone(), p], &[e.clone(), e]);
        assert_eq!(fields(&v), vec!["ExternalIPPool/p: metadata.name", "Egress/e: metadata.name"]);
        assert!(v.problems[0].reason.contains("duplicate"));
        assert_eq!(v.egresses.len(), 1);
    }

    #[test]
    fn egress_errors_name_their_field() {
        let pool = mk_pool("p", &[("10.0.0.1", "10.0.0.10")], &[]);
        let check = |f: &dyn Fn(&mut api::Egress), want: &str| {
            let mut e = mk_egress("e", Some("p"), None);
            f(&mut e);
            let v = validate(std::slice::from_ref(&pool), &[e]);
            assert_eq!(fields(&v), vec![format!("Egress/e: {want}")], "{:?}", v.problems);
            v.problems[0].reason.clone()
        };
        assert!(
            check(&|e| e.spec.egress_ip = Some("10.0.0.99".into()), "spec.egressIP").contains("not in ExternalIPPool")
        );
        check(&|e| e.spec.egress_ip = Some("ten".into()), "spec.egressIP");
        check(&|e| e.spec.external_ip_pool = Some("missing".into()), "spec.externalIPPool");
        check(
            &|e| {
                e.spec.external_ip_pool = None;
            },
            "spec",
        );
        check(&|e| e.spec.destination_cidrs = vec!["1.2.3.0/33".into()], "spec.destinationCIDRs[0]");
        assert!(
            check(&|e| e.spec.destination_cidrs = vec!["fd00::/64".into()], "spec.destinationCIDRs[0]")
                .contains("family")
        );
        assert!(
            check(
                &|e| {
                    e.spec.destination_cidrs = vec!["203.0.113.0/24".into()];
                    e.spec.excluded_cidrs = vec!["198.51.100.0/24".into()];
                },
                "spec.excludedCIDRs[0]"
            )
            .contains("not inside")
        );
        check(&|e| e.spec.excluded_cidrs = vec!["x".into()], "spec.excludedCIDRs[0]");
        check(&|e| e.spec.failure_policy = Some("Leak".into()), "spec.failurePolicy");
        let bw = |rate: &str, burst: &str| Some(api::Bandwidth { rate: rate.into(), burst: burst.into() });
        assert!(check(&|e| e.spec.bandwidth = bw("fast", "200Mb"), "spec.bandwidth.rate").contains("not a quantity"));
        check(&|e| e.spec.bandwidth = bw("100Mbps", "200Xb"), "spec.bandwidth.burst");
        assert!(check(&|e| e.spec.bandwidth = bw("0", "1M"), "spec.bandwidth.rate").contains("zero"));
        check(
            &|e| e.spec.applied_to.pod_selector = Some(mk_expr("app", "Equals", &["web"])),
            "spec.appliedTo.podSelector.matchExpressions[0].operator",
        );
        check(
            &|e| e.spec.applied_to.namespace_selector = Some(mk_expr("env", "In", &[])),
            "spec.appliedTo.namespaceSelector.matchExpressions[0].values",
        );
        let gateway = |sel: LabelSelector, family: Option<&str>| {
            vec![api::GatewayNode { node_selector: sel, ip_family: family.map(String::from), interface: None }]
        };
        check(
            &|e| e.spec.gateway_nodes = gateway(mk_expr("role", "Exists", &["x"]), None),
            "spec.gatewayNodes[0].nodeSelector.matchExpressions[0].values",
        );
        assert!(
            check(
                &|e| e.spec.gateway_nodes = gateway(LabelSelector::default(), Some("IPv5")),
                "spec.gatewayNodes[0].ipFamily"
            )
            .contains("IPv4, IPv6")
        );
        for bad in ["", "a-name-of-16-chr", "eth/1", "eth 1", ".."] {
            let reason = check(
                &|e| {
                    e.spec.gateway_nodes = gateway(LabelSelector::default(), None);
                    e.spec.gateway_nodes[0].interface = Some(bad.into());
                },
                "spec.gatewayNodes[0].interface",
            );
            assert!(reason.contains("not an interface name"), "{bad:?}: {reason}");
        }
        check(
            &|e| {
                e.spec.gateway_nodes = gateway(LabelSelector::default(), Some("IPv6"));
                e.spec.gateway_nodes[0].interface = Some("eth1".into());
            },
            "spec.gatewayNodes[0].interface",
        );
    }

    #[test]
    fn gateway_nodes_are_egress_ips_of_their_family_after_the_others() {
        let pool = mk_pool("p", &[("10.0.0.1", "10.0.0.10")], &[]);
        let mut e = mk_egress("e", None, None);
        e.spec.gateway_nodes = vec![
            api::GatewayNode { node_selector: mk_match(&[("gw", "a")]), ip_family: None, interface: None },
            api::GatewayNode {
                node_selector: LabelSelector::default(),
                ip_family: Some("IPv6".into()),
                interface: None,
            },
        ];
        let v = validate(std::slice::from_ref(&pool), std::slice::from_ref(&e));
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        let m = &v.egresses["e"];
        assert_eq!(m.families, [Family::V4, Family::V6]);
        assert!(m.ips.iter().all(|s| s.gateway_nodes.is_some() && s.ip.is_none() && s.pool.is_none()));
        assert_eq!(m.ips_field(), "spec.gatewayNodes");
        // With a pool: the pool's IP first, then the gateway nodes.
        e.spec.external_ip_pool = Some("p".into());
        let v = validate(std::slice::from_ref(&pool), &[e]);
        let m = &v.egresses["e"];
        assert_eq!(m.ips.iter().map(|s| s.gateway_nodes.is_some()).collect::<Vec<_>>(), [false, true, true]);
        assert_eq!(m.ips_field(), "spec.egressIP");
    }

    #[test]
    fn several_egress_ips_name_their_entry() {
        let pools = [
            mk_pool("p", &[("10.0.0.1", "10.0.0.10")], &[]),
            mk_pool("q", &[("10.0.1.1", "10.0.1.10")], &[]),
            mk_pool("six", &[], &["fd00:1::/124"]),
        ];
        let check = |f: &dyn Fn(&mut api::EgressSpec), want: &str| {
            let mut e = mk_egress("e", None, None);
            f(&mut e.spec);
            let v = validate(&pools, &[e]);
            assert_eq!(fields(&v), vec![format!("Egress/e: {want}")], "{:?}", v.problems);
            v.problems[0].reason.clone()
        };
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        check(
            &|e| {
                e.egress_ip = Some("10.0.0.1".into());
                e.egress_ips = s(&["10.0.0.2"]);
            },
            "spec.egressIPs",
        );
        check(
            &|e| {
                e.external_ip_pool = Some("p".into());
                e.external_ip_pools = s(&["q"]);
            },
            "spec.externalIPPools",
        );
        assert!(
            check(
                &|e| {
                    e.external_ip_pools = s(&["p", "q"]);
                    e.egress_ips = s(&["10.0.0.2"]);
                },
                "spec.egressIPs"
            )
            .contains("same index")
        );
        assert!(check(&|e| e.external_ip_pools = s(&["p", "q", "p"]), "spec.externalIPPools[2]").contains("twice"));
        check(&|e| e.external_ip_pools = s(&["p", "missing"]), "spec.externalIPPools[1]");
        assert!(
            check(
                &|e| {
                    e.external_ip_pools = s(&["p", "q"]);
                    e.egress_ips = s(&["10.0.0.2", "10.0.0.3"]);
                },
                "spec.egressIPs[1]"
            )
            .contains("not in ExternalIPPool \"q\"")
        );
        check(
            &|e| {
                e.external_ip_pool = Some("p".into());
                e.egress_ips = s(&["10.0.0.2", "10.0.0.2"]);
            },
            "spec.egressIPs[1]",
        );
        check(&|e| e.egress_ips = s(&["10.0.0.2", "nope"]), "spec.egressIPs[1]");
        // One IPv4 and one IPv6 pool: a dual-stack Egress, steering both families by default,
        // and a destination of either family is accepted.
        let mut e = mk_egress("e", None, None);
        e.spec.external_ip_pools = s(&["p", "six"]);
        let v = validate(&pools, std::slice::from_ref(&e));
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        let m = &v.egresses["e"];
        assert_eq!(m.families, [Family::V4, Family::V6]);
        assert_eq!(m.destinations, ["0.0.0.0/0".parse::<IpNet>().unwrap(), "::/0".parse().unwrap()]);
        assert_eq!(m.ips.len(), 2);
        // Status records restore each entry's allocation from its own pool.
        e.status = Some(api::EgressStatus {
            egress_ip: Some("10.0.0.7".into()),
            gateways: vec![
                api::EgressGateway { egress_ip: Some("10.0.0.7".into()), egress_node: None },
                api::EgressGateway { egress_ip: Some("fd00:1::9".into()), egress_node: None },
            ],
            ..Default::default()
        });
        let v = validate(&pools, &[e]);
        let restored: Vec<Option<IpAddr>> = v.egresses["e"].ips.iter().map(|i| i.status_ip).collect();
        assert_eq!(restored, [Some("10.0.0.7".parse().unwrap()), Some("fd00:1::9".parse().unwrap())]);
    }

    #[test]
    fn names_must_be_dns1123_subdomains() {
        for bad in ["Bad_Name!", "UPPER", "-lead", "trail-", "a..b", ".a", "a.", "a b", &"x".repeat(254)] {
            let v =
                validate(&[mk_pool(bad, &[("10.0.0.1", "10.0.0.2")], &[])], &[mk_egress(bad, None, Some("10.0.0.1"))]);
            assert_eq!(
                fields(&v),
                vec![format!("ExternalIPPool/{bad}: metadata.name"), format!("Egress/{bad}: metadata.name")]
            );
            assert!(v.problems[0].reason.contains("DNS-1123"), "{}", v.problems[0].reason);
            assert!(v.pools.is_empty() && v.egresses.is_empty());
        }
        for good in ["a", "egress-prod-web", "cilium-egress-sample", "a.b-c.d0", "0", &"x".repeat(253)] {
            assert_eq!(dns1123_subdomain(good), Ok(()), "{good}");
        }
    }

    #[test]
    fn missing_names_are_reported() {
        let mut e = mk_egress("e", None, Some("10.0.0.1"));
        e.metadata.name = None;
        let v = validate(&[], &[e]);
        assert_eq!(fields(&v), vec!["Egress/: metadata.name"]);
    }

    #[test]
    fn one_bad_object_does_not_hide_others() {
        let mut bad_pool = mk_pool("bad", &[("10.0.0.9", "10.0.0.1")], &[]);
        bad_pool.spec.node_selector = mk_expr("x", "Nope", &[]);
        let good = mk_pool("good", &[("10.1.0.1", "10.1.0.9")], &[]);
        let mut e1 = mk_egress("e1", Some("good"), None);
        e1.spec.egress_ip = Some("bogus".into());
        e1.spec.failure_policy = Some("Leak".into());
        let e2 = mk_egress("e2", Some("good"), None);
        let v = validate(&[bad_pool, good], &[e1, e2]);
        assert_eq!(
            fields(&v),
            vec![
                "ExternalIPPool/bad: spec.ipRanges[0]",
                "ExternalIPPool/bad: spec.nodeSelector.matchExpressions[0].operator",
                "Egress/e1: spec.egressIP",
                "Egress/e1: spec.failurePolicy",
            ]
        );
        assert!(v.pools.contains_key("good") && v.egresses.contains_key("e2"));
    }

    #[test]
    fn pools_must_not_cover_reserved_addresses() {
        let (nodes, _, _) = lab();
        let config = crate::planner::ClusterConfig {
            reserved: vec!["10.10.0.1".parse().unwrap()],
            internal_cidrs: vec!["10.250.0.0/16".parse().unwrap()],
            ..Default::default()
        };
        let reserved = Reserved::of(&nodes, &config);
        let check = |start: &str, end: &str| {
            let v = super::validate(&[mk_pool("p", &[(start, end)], &[])], &[], &reserved);
            v.problems.first().map(|p| {
                assert_eq!(p.field, "spec.ipRanges[0]");
                p.reason.clone()
            })
        };
        // The examples' pool stays valid.
        assert_eq!(check("10.10.0.11", "10.10.0.20"), None);
        // The pool: the router, then the nodes.
        let r = check("10.10.0.1", "10.10.0.254").unwrap();
        assert!(r.contains("10.10.0.1, a reserved address") && r.contains("more reserved"), "{r}");
        assert!(check("10.10.0.100", "10.10.0.110").unwrap().contains("10.10.0.101, an address of Node node-1"));
        assert!(check("10.244.3.0", "10.244.3.9").unwrap().contains("pod CIDR of Node node-3"));
        assert!(check("10.96.0.10", "10.96.0.10").unwrap().contains("service CIDR"));
        assert!(check("10.250.1.1", "10.250.1.2").unwrap().contains("cluster CIDR"));
        for (a, b, what) in [
            ("127.0.0.1", "127.0.0.1", "loopback"),
            ("169.254.1.1", "169.254.1.9", "link-local"),
            ("224.0.0.5", "224.0.0.6", "multicast"),
            ("0.0.0.0", "0.0.0.3", "unspecified"),
            ("255.255.255.250", "255.255.255.255", "broadcast"),
            ("::1", "::1", "loopback"),
            ("fe80::1", "fe80::9", "link-local"),
            ("ff02::1", "ff02::2", "multicast"),
            ("::", "::", "unspecified"),
        ] {
            assert!(check(a, b).unwrap_or_default().contains(what), "{a}-{b}: {what}");
        }
        // A CIDR's usable addresses count: 10.10.0.0/24 hands out .1 to .254.
        let mut p = mk_pool("p", &[], &["10.10.0.0/24"]);
        p.metadata.name = Some("wide".into());
        let v = super::validate(&[p], &[], &reserved);
        assert!(v.pools.is_empty());
        assert!(v.problems[0].reason.starts_with("10.10.0.1-10.10.0.254 covers 10.10.0.1"), "{}", v.problems[0].reason);
    }

    #[test]
    fn pool_update_cannot_drop_allocated_addresses() {
        let v = validate(&[mk_pool("p", &[("10.0.0.1", "10.0.0.5")], &[])], &[]);
        let p = &v.pools["p"];
        assert!(check_pool_update(p, 0, &[("10.0.0.3".parse().unwrap(), "e".into())]).is_empty());
        let probs = check_pool_update(p, 0, &[("10.0.0.9".parse().unwrap(), "e".into())]);
        assert_eq!(probs[0].field, "spec.ipRanges");
        assert!(probs[0].reason.contains("10.0.0.9"));
    }
}
