//! Antrea and Cilium kinds that Egret accepts unchanged, and their translation to `egret.dev`.
//!
//! The translation is pure: a foreign object in, Egret objects out, or an error that names the
//! field Egret cannot honour (rather than silently dropping it).

use crate::v1alpha1::{AppliedTo, Egress, EgressSpec, EgressStatus, ExternalIPPool, ExternalIPPoolSpec, IPRange};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Pod label that Cilium puts on every pod to name its namespace.
pub const CILIUM_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Namespace label that Kubernetes puts on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A foreign field Egret cannot translate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct CompatError {
    /// Field path inside the foreign object.
    pub field: String,
    /// Why it cannot be translated.
    pub reason: String,
}

fn unsupported(field: &str, reason: &str) -> CompatError {
    CompatError { field: field.to_string(), reason: reason.to_string() }
}

/// An Egret object produced by translation.
#[derive(Debug, Clone)]
pub enum Translated {
    /// An `egret.dev` Egress.
    Egress(Box<Egress>),
    /// An `egret.dev` ExternalIPPool.
    Pool(Box<ExternalIPPool>),
}

/// Antrea `Egress` spec (`crd.antrea.io/v1alpha2` and `v1beta1`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct AntreaEgressSpec {
    /// Pod selection.
    #[serde(default)]
    pub applied_to: AntreaAppliedTo,
    /// Static or pool-allocated egress IP.
    #[serde(default, rename = "egressIP")]
    pub egress_ip: Option<String>,
    /// Several egress IPs (v1beta1); not supported yet.
    #[serde(default, rename = "egressIPs")]
    pub egress_ips: Vec<String>,
    /// Pool to allocate from.
    #[serde(default, rename = "externalIPPool")]
    pub external_ip_pool: Option<String>,
    /// Several pools (v1beta1); not supported yet.
    #[serde(default, rename = "externalIPPools")]
    pub external_ip_pools: Vec<String>,
    /// Bandwidth limit (v1beta1); not supported yet.
    #[serde(default)]
    pub bandwidth: Option<serde_json::Value>,
}

/// Antrea `appliedTo`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct AntreaAppliedTo {
    /// Pod selector.
    #[serde(default)]
    pub pod_selector: Option<LabelSelector>,
    /// Namespace selector.
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
}

/// Antrea Egress status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct AntreaEgressStatus {
    /// Node hosting the IP.
    #[serde(default)]
    pub egress_node: Option<String>,
    /// The IP in effect.
    #[serde(default, rename = "egressIP")]
    pub egress_ip: Option<String>,
    /// Antrea's conditions (v1beta1); not carried over: Egret sets its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<serde_json::Value>,
}

/// An Antrea Egress document.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct AntreaEgress {
    /// Object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: AntreaEgressSpec,
    /// Status.
    #[serde(default)]
    pub status: Option<AntreaEgressStatus>,
}

/// Antrea `ExternalIPPool` spec.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct AntreaPoolSpec {
    /// Ranges; same shape as Egret's.
    #[serde(default)]
    pub ip_ranges: Vec<IPRange>,
    /// Node selector.
    #[serde(default)]
    pub node_selector: LabelSelector,
    /// Subnet information for secondary networks (v1beta1); not supported yet.
    #[serde(default)]
    pub subnet_info: Option<serde_json::Value>,
}

/// An Antrea ExternalIPPool document.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct AntreaPool {
    /// Object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: AntreaPoolSpec,
    /// Status as Antrea writes it; not carried over: Egret computes the usage itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<AntreaPoolStatus>,
}

/// Antrea ExternalIPPool status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AntreaPoolStatus {
    /// Addresses of the pool and how many are in use.
    #[serde(default)]
    pub usage: Option<crate::v1alpha1::IPPoolUsage>,
}

/// Cilium `CiliumEgressGatewayPolicy` spec (`cilium.io/v2`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct CiliumPolicySpec {
    /// Source selections; each becomes one Egress.
    #[serde(default)]
    pub selectors: Vec<CiliumSelector>,
    /// Destinations.
    #[serde(default, rename = "destinationCIDRs")]
    pub destination_cidrs: Vec<String>,
    /// Exclusions.
    #[serde(default, rename = "excludedCIDRs")]
    pub excluded_cidrs: Vec<String>,
    /// The gateway.
    #[serde(default)]
    pub egress_gateway: Option<CiliumGateway>,
    /// Several gateways (Cilium Enterprise); not supported yet.
    #[serde(default)]
    pub egress_gateways: Vec<CiliumGateway>,
}

/// One Cilium source selector.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct CiliumSelector {
    /// Pod selector; may name the namespace with `io.kubernetes.pod.namespace`.
    #[serde(default)]
    pub pod_selector: Option<LabelSelector>,
    /// Namespace selector.
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
    /// Only pods on these nodes.
    #[serde(default)]
    pub node_selector: Option<LabelSelector>,
}

/// Cilium gateway.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct CiliumGateway {
    /// Nodes that may act as the gateway.
    #[serde(default)]
    pub node_selector: Option<LabelSelector>,
    /// Source IP to use.
    #[serde(default, rename = "egressIP")]
    pub egress_ip: Option<String>,
    /// Interface whose first address is used; not supported yet.
    #[serde(default)]
    pub interface: Option<String>,
}

/// A CiliumEgressGatewayPolicy document.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct CiliumPolicy {
    /// Object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: CiliumPolicySpec,
    /// Status as Cilium writes it (conditions, observed generation); ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// Metadata carried over to a translated object: name, labels, annotations and creation time.
fn carry_meta(m: &ObjectMeta, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        labels: m.labels.clone(),
        annotations: m.annotations.clone(),
        creation_timestamp: m.creation_timestamp.clone(),
        ..ObjectMeta::default()
    }
}

fn name_of(m: &ObjectMeta) -> String {
    m.name.clone().unwrap_or_default()
}

/// Translates an Antrea Egress. Several egress IPs, several pools and bandwidth limits are
/// errors until Egret supports them, so nothing is silently dropped.
pub fn antrea_egress(a: &AntreaEgress) -> Result<Egress, CompatError> {
    if !a.spec.egress_ips.is_empty() {
        return Err(unsupported("spec.egressIPs", "several egress IPs are not supported yet; use egressIP"));
    }
    if !a.spec.external_ip_pools.is_empty() {
        return Err(unsupported("spec.externalIPPools", "several pools are not supported yet; use externalIPPool"));
    }
    if a.spec.bandwidth.is_some() {
        return Err(unsupported("spec.bandwidth", "bandwidth limits are not supported yet"));
    }
    let spec = EgressSpec {
        applied_to: AppliedTo {
            namespace_selector: a.spec.applied_to.namespace_selector.clone(),
            pod_selector: a.spec.applied_to.pod_selector.clone(),
            node_selector: None,
        },
        egress_ip: a.spec.egress_ip.clone(),
        external_ip_pool: a.spec.external_ip_pool.clone(),
        ..EgressSpec::default()
    };
    let mut e = Egress::new(&name_of(&a.metadata), spec);
    e.metadata = carry_meta(&a.metadata, name_of(&a.metadata));
    // Status is carried so that an allocation made by Antrea is kept, not re-made.
    e.status = a.status.as_ref().map(|s| EgressStatus {
        egress_ip: s.egress_ip.clone(),
        egress_node: s.egress_node.clone(),
        conditions: Vec::new(),
    });
    Ok(e)
}

/// Translates an Antrea ExternalIPPool.
pub fn antrea_pool(a: &AntreaPool) -> Result<ExternalIPPool, CompatError> {
    if a.spec.subnet_info.is_some() {
        return Err(unsupported("spec.subnetInfo", "secondary-network pools are not supported yet"));
    }
    let mut p = ExternalIPPool::new(
        &name_of(&a.metadata),
        ExternalIPPoolSpec { ip_ranges: a.spec.ip_ranges.clone(), node_selector: a.spec.node_selector.clone() },
    );
    p.metadata = carry_meta(&a.metadata, name_of(&a.metadata));
    Ok(p)
}

/// Moves Cilium's `io.kubernetes.pod.namespace` pod-label requirements into a namespace selector
/// on `kubernetes.io/metadata.name`, the label Kubernetes puts on namespaces.
fn split_namespace_label(
    pod: Option<&LabelSelector>,
    ns: Option<&LabelSelector>,
) -> (Option<LabelSelector>, Option<LabelSelector>) {
    let Some(pod) = pod else {
        return (ns.cloned(), None);
    };
    let mut pod = pod.clone();
    let mut ns = ns.cloned();
    let mut moved_labels = BTreeMap::new();
    if let Some(ml) = pod.match_labels.as_mut()
        && let Some(v) = ml.remove(CILIUM_NAMESPACE_LABEL)
    {
        moved_labels.insert(NAMESPACE_NAME_LABEL.to_string(), v);
    }
    let mut moved_exprs = Vec::new();
    if let Some(me) = pod.match_expressions.as_mut() {
        let (ns_exprs, rest): (Vec<_>, Vec<_>) = me.drain(..).partition(|r| r.key == CILIUM_NAMESPACE_LABEL);
        *me = rest;
        for mut r in ns_exprs {
            r.key = NAMESPACE_NAME_LABEL.to_string();
            moved_exprs.push(r);
        }
    }
    if !moved_labels.is_empty() || !moved_exprs.is_empty() {
        let n = ns.get_or_insert_with(LabelSelector::default);
        if !moved_labels.is_empty() {
            n.match_labels.get_or_insert_with(BTreeMap::new).extend(moved_labels);
        }
        if !moved_exprs.is_empty() {
            n.match_expressions.get_or_insert_with(Vec::new).extend(moved_exprs);
        }
    }
    if pod.match_labels.as_ref().is_some_and(BTreeMap::is_empty) {
        pod.match_labels = None;
    }
    if pod.match_expressions.as_ref().is_some_and(Vec::is_empty) {
        pod.match_expressions = None;
    }
    (ns, Some(pod))
}

/// Translates a CiliumEgressGatewayPolicy.
///
/// Cilium pins the egress IP to a gateway chosen by node selector. Egret expresses that as a
/// one-address `ExternalIPPool` named after the policy, whose `nodeSelector` is the gateway's, and
/// one Egress per source selector using that IP, so the IP also fails over between the selected
/// gateways (which Cilium OSS does not do).
pub fn cilium_policy(c: &CiliumPolicy) -> Result<Vec<Translated>, CompatError> {
    let name = name_of(&c.metadata);
    if !c.spec.egress_gateways.is_empty() {
        return Err(unsupported("spec.egressGateways", "several gateways are not supported yet; use egressGateway"));
    }
    let Some(gw) = c.spec.egress_gateway.as_ref() else {
        return Err(unsupported("spec.egressGateway", "is required"));
    };
    if gw.interface.is_some() && gw.egress_ip.is_some() {
        return Err(unsupported("spec.egressGateway", "egressIP and interface are mutually exclusive"));
    }
    if gw.interface.is_some() {
        return Err(unsupported(
            "spec.egressGateway.interface",
            "choosing the IP by interface is not supported yet; set egressIP",
        ));
    }
    let Some(ip) = gw.egress_ip.clone() else {
        return Err(unsupported(
            "spec.egressGateway.egressIP",
            "is required (Egret does not yet pick the gateway's default-route address)",
        ));
    };
    if c.spec.selectors.is_empty() {
        return Err(unsupported("spec.selectors", "at least one selector is required"));
    }
    let pool_name = format!("cilium-{name}");
    let host = if ip.contains(':') { 128 } else { 32 };
    let mut pool = ExternalIPPool::new(
        &pool_name,
        ExternalIPPoolSpec {
            ip_ranges: vec![IPRange { cidr: Some(format!("{ip}/{host}")), ..IPRange::default() }],
            node_selector: gw.node_selector.clone().unwrap_or_default(),
        },
    );
    pool.metadata = carry_meta(&c.metadata, pool_name.clone());
    let mut out = vec![Translated::Pool(Box::new(pool))];
    let many = c.spec.selectors.len() > 1;
    for (i, s) in c.spec.selectors.iter().enumerate() {
        let (namespace_selector, pod_selector) =
            split_namespace_label(s.pod_selector.as_ref(), s.namespace_selector.as_ref());
        let eg_name = if many { format!("{name}-{i}") } else { name.clone() };
        let spec = EgressSpec {
            applied_to: AppliedTo { namespace_selector, pod_selector, node_selector: s.node_selector.clone() },
            egress_ip: Some(ip.clone()),
            external_ip_pool: Some(pool_name.clone()),
            destination_cidrs: c.spec.destination_cidrs.clone(),
            excluded_cidrs: c.spec.excluded_cidrs.clone(),
            failure_policy: None,
        };
        let mut e = Egress::new(&eg_name, spec);
        e.metadata = carry_meta(&c.metadata, eg_name);
        out.push(Translated::Egress(Box::new(e)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_004: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumEgressGatewayPolicy
metadata:
  name: egress-sample
spec:
  selectors:
  - podSelector:
      matchLabels:
        org: empire
        class: mediabot
        io.kubernetes.pod.namespace: default
    nodeSelector:
      matchLabels:
        node.kubernetes.io/name: node1
  destinationCIDRs:
  - "0.0.0.0/0"
  egressGateway:
    nodeSelector:
      matchLabels:
        node.kubernetes.io/name: node2
    egressIP: 10.168.60.100
"#;

    #[test]
    fn cilium_policy_becomes_pool_and_egress() {
        let c: CiliumPolicy = serde_yaml_ng::from_str(SEED_004).unwrap();
        let out = cilium_policy(&c).unwrap();
        assert_eq!(out.len(), 2);
        let Translated::Pool(p) = &out[0] else { panic!("pool first") };
        assert_eq!(p.metadata.name.as_deref(), Some("cilium-egress-sample"));
        assert_eq!(p.spec.ip_ranges[0].cidr.as_deref(), Some("10.168.60.100/32"));
        let Translated::Egress(e) = &out[1] else { panic!("egress second") };
        let ns = e.spec.applied_to.namespace_selector.as_ref().unwrap();
        assert_eq!(ns.match_labels.as_ref().unwrap()[NAMESPACE_NAME_LABEL], "default");
        let pod = e.spec.applied_to.pod_selector.as_ref().unwrap();
        assert!(!pod.match_labels.as_ref().unwrap().contains_key(CILIUM_NAMESPACE_LABEL));
        assert_eq!(pod.match_labels.as_ref().unwrap()["org"], "empire");
        assert!(e.spec.applied_to.node_selector.is_some());
        assert_eq!(e.spec.egress_ip.as_deref(), Some("10.168.60.100"));
        assert_eq!(e.spec.destination_cidrs, vec!["0.0.0.0/0"]);
    }

    #[test]
    fn cilium_interface_is_a_named_error() {
        let mut c: CiliumPolicy = serde_yaml_ng::from_str(SEED_004).unwrap();
        let gw = c.spec.egress_gateway.as_mut().unwrap();
        gw.egress_ip = None;
        gw.interface = Some("eth1".into());
        assert_eq!(cilium_policy(&c).unwrap_err().field, "spec.egressGateway.interface");
    }

    #[test]
    fn antrea_egress_keeps_status_and_rejects_bandwidth() {
        let y = "metadata: {name: e}\nspec:\n  appliedTo: {podSelector: {}}\n  egressIP: 10.10.0.8\n  externalIPPool: p\nstatus:\n  egressNode: node01\n";
        let a: AntreaEgress = serde_yaml_ng::from_str(y).unwrap();
        let e = antrea_egress(&a).unwrap();
        assert_eq!(e.status.unwrap().egress_node.as_deref(), Some("node01"));
        let mut b = a.clone();
        b.spec.bandwidth = Some(serde_json::json!({"rate": "100M"}));
        assert_eq!(antrea_egress(&b).unwrap_err().field, "spec.bandwidth");
    }
}
