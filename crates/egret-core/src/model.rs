//! The validated domain model. API objects become these through [`crate::validate`] (Egresses,
//! pools) or the `from_*` constructors (Nodes, Namespaces, Pods, which need no validation).

use crate::net::{Family, Span};
use crate::selector::{Labels, Selector};
use ipnet::IpNet;
use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// A node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Node name.
    pub name: String,
    /// Node labels.
    pub labels: Labels,
    /// `InternalIP` addresses (the first of each family is the node's underlay address).
    pub internal_ips: Vec<IpAddr>,
    /// Every address in `status.addresses` that parses as an IP.
    pub addresses: Vec<IpAddr>,
    /// `spec.podCIDRs` (or `spec.podCIDR`).
    pub pod_cidrs: Vec<IpNet>,
    /// Addresses of its interfaces that Egresses name (`gatewayNodes[].interface`), as its agent
    /// publishes them in the [`INTERFACES_ANNOTATION`], by interface name, in the interface's
    /// order.
    pub interfaces: BTreeMap<String, Vec<IpAddr>>,
}

/// The Node annotation in which a node's agent publishes the addresses of the interfaces that
/// Egresses name: JSON `{"eth1": ["198.18.0.14"]}`.
pub const INTERFACES_ANNOTATION: &str = "egret.dev/interfaces";

/// The interfaces' addresses in an [`INTERFACES_ANNOTATION`] value; what does not parse is left
/// out (the agent rewrites the annotation on its next sync).
pub fn parse_interfaces(text: &str) -> BTreeMap<String, Vec<IpAddr>> {
    let parsed: BTreeMap<String, Vec<String>> = serde_json::from_str(text).unwrap_or_default();
    parsed.into_iter().map(|(name, ips)| (name, ips.iter().filter_map(|ip| ip.parse().ok()).collect())).collect()
}

#[cfg(test)]
#[test]
fn interface_addresses_round_trip_through_the_annotation_and_bad_text_is_none() {
    let mut m = BTreeMap::new();
    m.insert("eth1".to_string(), vec!["198.18.0.15".parse().unwrap(), "fd00:18::15".parse().unwrap()]);
    let text = format_interfaces(&m);
    assert_eq!(text, r#"{"eth1":["198.18.0.15","fd00:18::15"]}"#);
    assert_eq!(parse_interfaces(&text), m);
    assert!(parse_interfaces("not json").is_empty());
    // An address that does not parse is left out, the others kept.
    assert_eq!(parse_interfaces(r#"{"eth1":["x","198.18.0.15"]}"#)["eth1"].len(), 1);
}

/// The value of an [`INTERFACES_ANNOTATION`] for these addresses.
pub fn format_interfaces(interfaces: &BTreeMap<String, Vec<IpAddr>>) -> String {
    let text: BTreeMap<&String, Vec<String>> =
        interfaces.iter().map(|(n, ips)| (n, ips.iter().map(IpAddr::to_string).collect())).collect();
    serde_json::to_string(&text).unwrap_or_default()
}

impl Node {
    /// The node's underlay address of `family`.
    pub fn ip(&self, family: Family) -> Option<IpAddr> {
        self.internal_ips.iter().find(|ip| Family::of(ip) == family).copied()
    }

    /// The first address of `family` of its interface `name` (as published by its agent).
    pub fn interface_ip(&self, name: &str, family: Family) -> Option<IpAddr> {
        self.interfaces.get(name)?.iter().find(|ip| Family::of(ip) == family).copied()
    }

    /// Builds the model from a core/v1 Node. Unparseable addresses are skipped: they cannot be
    /// egress IPs or tunnel endpoints anyway.
    pub fn from_k8s(n: &corev1::Node) -> Node {
        let addrs = n.status.as_ref().and_then(|s| s.addresses.as_ref());
        let parse = |want_internal: bool| -> Vec<IpAddr> {
            addrs
                .into_iter()
                .flatten()
                .filter(|a| !want_internal || a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect()
        };
        let spec = n.spec.as_ref();
        let mut pod_cidrs: Vec<IpNet> =
            spec.and_then(|s| s.pod_cidrs.as_ref()).into_iter().flatten().filter_map(|c| c.parse().ok()).collect();
        if pod_cidrs.is_empty()
            && let Some(c) = spec.and_then(|s| s.pod_cidr.as_ref()).and_then(|c| c.parse().ok())
        {
            pod_cidrs.push(c);
        }
        Node {
            name: n.metadata.name.clone().unwrap_or_default(),
            labels: n.metadata.labels.clone().unwrap_or_default(),
            internal_ips: parse(true),
            addresses: parse(false),
            pod_cidrs,
            interfaces: n
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(INTERFACES_ANNOTATION))
                .map(|t| parse_interfaces(t))
                .unwrap_or_default(),
        }
    }
}

/// A namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// Namespace name.
    pub name: String,
    /// Namespace labels.
    pub labels: Labels,
}

impl Namespace {
    /// Builds the model from a core/v1 Namespace.
    pub fn from_k8s(n: &corev1::Namespace) -> Namespace {
        Namespace {
            name: n.metadata.name.clone().unwrap_or_default(),
            labels: n.metadata.labels.clone().unwrap_or_default(),
        }
    }
}

/// A pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// Namespace of the pod.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod labels.
    pub labels: Labels,
    /// The node it runs on, once scheduled.
    pub node: Option<String>,
    /// Its addresses (`status.podIPs`, or `status.podIP`). Host-network pods are left out by
    /// [`Pod::from_k8s`]: their traffic is the node's.
    pub ips: Vec<IpAddr>,
}

impl Pod {
    /// Builds the model from a core/v1 Pod.
    pub fn from_k8s(p: &corev1::Pod) -> Pod {
        let spec = p.spec.as_ref();
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let status = p.status.as_ref();
        let mut ips: Vec<IpAddr> =
            status.and_then(|s| s.pod_ips.as_ref()).into_iter().flatten().filter_map(|a| a.ip.parse().ok()).collect();
        if ips.is_empty()
            && let Some(ip) = status.and_then(|s| s.pod_ip.as_ref()).and_then(|ip| ip.parse().ok())
        {
            ips.push(ip);
        }
        if host_network {
            ips.clear();
        }
        Pod {
            namespace: p.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
            name: p.metadata.name.clone().unwrap_or_default(),
            labels: p.metadata.labels.clone().unwrap_or_default(),
            node: spec.and_then(|s| s.node_name.clone()),
            ips,
        }
    }
}

/// A validated ExternalIPPool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// Pool name.
    pub name: String,
    /// Usable addresses, one span per `ipRanges` entry in spec order (network and broadcast
    /// addresses of CIDR ranges already removed).
    pub ranges: Vec<Span>,
    /// The family of every range.
    pub family: Family,
    /// Nodes that may host the pool's addresses.
    pub node_selector: Selector,
    /// `spec.subnetInfo`: the subnet its addresses leave on.
    pub subnet: Option<Subnet>,
}

/// An egress subnet, validated: egress IPs of its pool leave through `gateway`, on the node's
/// uplink (untagged: a VLAN is refused by validation until it is supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Subnet {
    /// The subnet's router.
    pub gateway: std::net::Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
}

impl Pool {
    /// Whether the address is one the pool can hand out.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip))
    }

    /// How many addresses the pool can hand out.
    pub fn total(&self) -> u128 {
        self.ranges.iter().fold(0u128, |acc, r| acc.saturating_add(r.len()))
    }
}

/// What happens to an Egress's traffic while it has no gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Fail closed: drop the traffic (the default).
    #[default]
    Drop,
    /// Let the traffic leave with the node's IP, as if the Egress did not exist.
    FallbackToNodeIP,
}

/// Pod selection of an Egress.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AppliedTo {
    /// Namespace selector.
    pub namespaces: Option<Selector>,
    /// Pod selector.
    pub pods: Option<Selector>,
    /// Node selector (only pods running on matching nodes).
    pub nodes: Option<Selector>,
}

impl AppliedTo {
    /// Whether this selects nothing at all (both pod and namespace selectors absent).
    pub fn selects_nothing(&self) -> bool {
        self.namespaces.is_none() && self.pods.is_none()
    }
}

/// A validated Egress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Egress {
    /// Egress name.
    pub name: String,
    /// Creation time, for the overlap rule (oldest wins); absent sorts first.
    pub created: Option<Time>,
    /// Pod selection.
    pub applied_to: AppliedTo,
    /// Its egress IPs, in spec order: `egressIP`/`externalIPPool`, or one per entry of
    /// `egressIPs`/`externalIPPools`. Never empty.
    pub ips: Vec<IpSpec>,
    /// Destinations (each served family's whole space when the spec lists none).
    pub destinations: Vec<IpNet>,
    /// Exclusions.
    pub excluded: Vec<IpNet>,
    /// The families of its egress IPs, sorted: its pods' traffic of other families is left
    /// alone.
    pub families: Vec<Family>,
    /// Fail closed or fall back to the node IP.
    pub failure_policy: FailurePolicy,
    /// `spec.bandwidth`: a limit on the Egress's traffic through its gateway.
    pub bandwidth: Option<Bandwidth>,
}

/// A rate limit, parsed: traffic beyond `rate_bps` after a burst of `burst_bits` is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Bandwidth {
    /// Bits per second.
    pub rate_bps: u64,
    /// Bits allowed above the rate at once.
    pub burst_bits: u64,
}

/// One egress IP of an Egress as its spec asks for it: a static address, an allocation from a
/// pool, a static address inside a pool, or a gateway node's own address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpSpec {
    /// The static address (`egressIP`, `egressIPs[i]`).
    pub ip: Option<IpAddr>,
    /// The pool (`externalIPPool`, `externalIPPools[i]`).
    pub pool: Option<String>,
    /// Its family.
    pub family: Family,
    /// The address the Egress's status records for it (an earlier allocation to restore).
    pub status_ip: Option<IpAddr>,
    /// `gatewayNodes[i].nodeSelector`: the egress IP is the `InternalIP` (of `family`) of the
    /// matching node chosen as the gateway; `ip` and `pool` are then absent.
    pub gateway_nodes: Option<Selector>,
    /// `gatewayNodes[i].interface`: the address is that interface's, and the traffic leaves
    /// through it.
    pub interface: Option<String>,
}

impl Egress {
    /// Whether it steers traffic of `family` (it has an egress IP of that family).
    pub fn serves(&self, family: Family) -> bool {
        self.families.contains(&family)
    }

    /// The spec field that lists its IPs: several pools are listed only in `externalIPPools`,
    /// several IPs of one pool (or none) in `egressIPs`; one IP in `egressIP`.
    pub fn ips_field(&self) -> &'static str {
        if !self.ips.is_empty() && self.ips.iter().all(|s| s.gateway_nodes.is_some()) {
            return "spec.gatewayNodes";
        }
        let addressed: Vec<&IpSpec> = self.ips.iter().filter(|s| s.gateway_nodes.is_none()).collect();
        let pools: std::collections::BTreeSet<Option<&String>> = addressed.iter().map(|s| s.pool.as_ref()).collect();
        match (addressed.len(), pools.len()) {
            (0 | 1, _) => "spec.egressIP",
            (_, 1) => "spec.egressIPs",
            _ => "spec.externalIPPools",
        }
    }

    /// The overlap tie-break order: older first, then by name.
    pub fn age_key(&self) -> (Option<&Time>, &str) {
        (self.created.as_ref(), &self.name)
    }
}
