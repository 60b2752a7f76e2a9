//! `egret.dev/v1alpha1`: `ExternalIPPool` and `Egress`, and (in [`policy`]) the egress firewall's
//! `ClusterEgressPolicy` and `EgressPolicy`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod policy;
pub use policy::*;

/// A set of external IP addresses that Egret hands out as egress IPs, and the nodes that may
/// host them.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "egret.dev",
    version = "v1alpha1",
    kind = "ExternalIPPool",
    plural = "externalippools",
    shortname = "eip",
    status = "ExternalIPPoolStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"TOTAL","type":"integer","jsonPath":".status.usage.total"}"#,
    printcolumn = r#"{"name":"USED","type":"integer","jsonPath":".status.usage.used"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct ExternalIPPoolSpec {
    /// Address ranges of the pool, each a `cidr` or an inclusive `start`/`end` pair.
    pub ip_ranges: Vec<IPRange>,
    /// Nodes that may host this pool's addresses; `{}` selects every node.
    #[serde(default)]
    pub node_selector: LabelSelector,
    /// The pool's addresses are on a subnet of their own (Antrea's field): they leave through its
    /// gateway, optionally on a VLAN of the node's uplink, not through the node network's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_info: Option<SubnetInfo>,
}

/// An egress subnet: its gateway and prefix length, and the VLAN it is on.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct SubnetInfo {
    /// The subnet's router, inside the subnet.
    pub gateway: String,
    /// The subnet's prefix length; every range of the pool lies inside it.
    pub prefix_length: i32,
    /// VLAN id (1..4094) on the node's uplink; absent or 0: untagged, on the uplink itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<i32>,
}

/// One range of a pool: either `cidr`, or `start` and `end` (inclusive).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct IPRange {
    /// A CIDR; its network address (and, for IPv4, its broadcast address) is never handed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// First address of the range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Last address of the range (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
}

/// Observed state of a pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct ExternalIPPoolStatus {
    /// How many addresses the pool has and how many are allocated.
    #[serde(default)]
    pub usage: IPPoolUsage,
}

/// Size and use of a pool.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IPPoolUsage {
    /// Addresses the pool can hand out (saturates at `i64::MAX` for huge IPv6 ranges).
    pub total: i64,
    /// Addresses allocated to Egresses.
    pub used: i64,
}

/// Pods chosen by labels leave the cluster with a fixed source IP through a gateway node.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "egret.dev",
    version = "v1alpha1",
    kind = "Egress",
    plural = "egresses",
    shortname = "eg",
    status = "EgressStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"EGRESSIP","type":"string","jsonPath":".status.egressIP"}"#,
    printcolumn = r#"{"name":"NODE","type":"string","jsonPath":".status.egressNode"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct EgressSpec {
    /// The pods this Egress applies to. Both selectors absent selects nothing.
    #[serde(default)]
    pub applied_to: AppliedTo,
    /// A static egress IP. Alone: it must already be configured on a node, which becomes the
    /// gateway. With `externalIPPool`: it must lie in that pool.
    #[serde(default, rename = "egressIP", skip_serializing_if = "Option::is_none")]
    pub egress_ip: Option<String>,
    /// The pool to allocate the egress IP from; its `nodeSelector` chooses the gateway nodes.
    #[serde(default, rename = "externalIPPool", skip_serializing_if = "Option::is_none")]
    pub external_ip_pool: Option<String>,
    /// Several egress IPs (not with `egressIP`): static ones, ones inside `externalIPPool`, or,
    /// entry by entry, inside `externalIPPools`. Each is hosted on a different gateway when
    /// there are enough; each selected pod uses one of them per family, chosen by a stable hash.
    #[serde(default, rename = "egressIPs", skip_serializing_if = "Vec::is_empty")]
    pub egress_ips: Vec<String>,
    /// Several pools (not with `externalIPPool`), all different: one egress IP from each
    /// (`egressIPs[i]` when given, allocated otherwise).
    #[serde(default, rename = "externalIPPools", skip_serializing_if = "Vec::is_empty")]
    pub external_ip_pools: Vec<String>,
    /// Egress IPs that are gateway nodes' own addresses (Cilium's gateway without `egressIP`):
    /// each entry is one egress IP, the `InternalIP` of one node its `nodeSelector` matches,
    /// chosen by a stable hash and moving to another matching node (with that node's address)
    /// when the gateway dies. Nothing is allocated or hosted. May be combined with the fields
    /// above; pods spread over all the Egress's IPs alike.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway_nodes: Vec<GatewayNode>,
    /// Destinations steered through the gateway (default: everything outside the cluster).
    #[serde(default, rename = "destinationCIDRs", skip_serializing_if = "Vec::is_empty")]
    pub destination_cidrs: Vec<String>,
    /// Destinations inside `destinationCIDRs` that are left alone.
    #[serde(default, rename = "excludedCIDRs", skip_serializing_if = "Vec::is_empty")]
    pub excluded_cidrs: Vec<String>,
    /// What happens while no gateway is available: `Drop` (default, fail closed) or
    /// `FallbackToNodeIP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_policy: Option<String>,
    /// A limit on the total rate of the Egress's traffic through its gateway (Antrea's field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Bandwidth>,
}

/// One egress IP that is a gateway node's own address.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct GatewayNode {
    /// The nodes that may be the gateway (every node when empty).
    #[serde(default)]
    pub node_selector: LabelSelector,
    /// `IPv4` (default) or `IPv6`: which of the node's addresses is the egress IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_family: Option<String>,
    /// The interface the egress IP is taken from (Cilium's `egressGateway.interface`): its first
    /// address of the family, as the node's agent publishes it, and the traffic leaves through
    /// that interface. Absent: the node's `InternalIP`, leaving by the node's routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
}

/// A rate limit: traffic beyond `rate` (after a `burst`) is dropped at the gateway, as Antrea's
/// meters do.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct Bandwidth {
    /// Bits per second: a number with an optional SI (`k`, `M`, `G`, `T`) or binary (`Ki`, `Mi`,
    /// `Gi`, `Ti`) suffix and an optional `bps`, e.g. `100Mbps`, `1G`.
    pub rate: String,
    /// Bits that may pass above the rate at once: the same form with an optional `b`, e.g.
    /// `200Mb`.
    pub burst: String,
}

/// Pod selection of an Egress.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct AppliedTo {
    /// Namespaces whose pods are selected (all namespaces when only `podSelector` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Pods selected (all pods of the selected namespaces when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Only pods running on these nodes (Cilium's `selectors[].nodeSelector`); absent: any node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
}

/// Observed state of an Egress.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct EgressStatus {
    /// The egress IP in effect.
    #[serde(default, rename = "egressIP", skip_serializing_if = "Option::is_none")]
    pub egress_ip: Option<String>,
    /// The node hosting the egress IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_node: Option<String>,
    /// With several egress IPs: each, in spec order, and the node hosting it (`egressIP` and
    /// `egressNode` are then the first's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<EgressGateway>,
    /// `IPAllocated` and `IPAssigned`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<EgressCondition>,
}

/// One egress IP of an Egress and the node hosting it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct EgressGateway {
    /// The egress IP (absent while it cannot be allocated).
    #[serde(default, rename = "egressIP", skip_serializing_if = "Option::is_none")]
    pub egress_ip: Option<String>,
    /// The node hosting it (absent while none does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_node: Option<String>,
}

/// One condition of an Egress.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct EgressCondition {
    /// `IPAllocated` or `IPAssigned`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// A human-readable explanation.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When the status last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// Condition type: the egress IP was allocated.
pub const IP_ALLOCATED: &str = "IPAllocated";
/// Condition type: the egress IP is hosted by a node.
pub const IP_ASSIGNED: &str = "IPAssigned";

#[cfg(test)]
mod tests {
    use super::*;
    use kube::{CustomResourceExt, Resource};

    #[test]
    fn kinds_are_cluster_scoped_with_short_names() {
        let eg = Egress::crd();
        assert_eq!(eg.spec.scope, "Cluster");
        assert_eq!(eg.spec.names.short_names, Some(vec!["eg".to_string()]));
        let eip = ExternalIPPool::crd();
        assert_eq!(eip.spec.scope, "Cluster");
        assert_eq!(eip.spec.names.short_names, Some(vec!["eip".to_string()]));
        assert_eq!(Egress::api_version(&()), "egret.dev/v1alpha1");
    }

    /// Kubernetes prunes (or, with `kubectl apply --validate=strict`, rejects) unknown fields
    /// only where the schema is structural and does not preserve unknown fields.
    #[test]
    fn crd_schemas_never_preserve_unknown_fields() {
        fn walk(v: &serde_json::Value, at: &str, bad: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, x) in m {
                        if k == "x-kubernetes-preserve-unknown-fields" && x != &serde_json::Value::Bool(false) {
                            bad.push(at.to_string());
                        }
                        walk(x, &format!("{at}.{k}"), bad);
                    }
                }
                serde_json::Value::Array(a) => {
                    a.iter().enumerate().for_each(|(i, x)| walk(x, &format!("{at}[{i}]"), bad))
                }
                _ => {}
            }
        }
        for (file, crd) in crate::crds() {
            let json = serde_json::to_value(&crd).unwrap();
            let mut bad = Vec::new();
            walk(&json, file, &mut bad);
            assert!(bad.is_empty(), "{bad:?}");
            // Every object in the schema lists its properties (or is a string map), so it is
            // structural and unknown fields are pruned.
            let schema = &json["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            assert!(schema["properties"]["spec"]["properties"].is_object(), "{file}");
        }
    }

    #[test]
    fn spec_types_reject_unknown_fields() {
        let e = serde_yaml_ng::from_str::<EgressSpec>("appliedTo: {}\ndestinationCIDR: [10.0.0.0/8]\n").unwrap_err();
        assert!(e.to_string().contains("destinationCIDR"), "{e}");
        assert!(serde_yaml_ng::from_str::<IPRange>("cidr: 10.0.0.0/8\nbegin: 10.0.0.1\n").is_err());
    }

    #[test]
    fn egress_fields_use_api_names() {
        let y = "appliedTo:\n  podSelector: {matchLabels: {app: web}}\negressIP: 10.10.0.8\nexternalIPPool: p\ndestinationCIDRs: [0.0.0.0/0]\nexcludedCIDRs: [10.0.0.0/8]\n";
        let spec: EgressSpec = serde_yaml_ng::from_str(y).unwrap();
        assert_eq!(spec.egress_ip.as_deref(), Some("10.10.0.8"));
        assert_eq!(spec.external_ip_pool.as_deref(), Some("p"));
        assert_eq!(spec.destination_cidrs, vec!["0.0.0.0/0"]);
        assert_eq!(spec.excluded_cidrs, vec!["10.0.0.0/8"]);
        let back = serde_json::to_value(&spec).unwrap();
        assert!(back.get("egressIP").is_some());
        assert!(back.get("destinationCIDRs").is_some());
    }
}
