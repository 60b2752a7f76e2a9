//! Antrea, Cilium and Istio kinds that Egret accepts unchanged, and their translation to
//! `egret.dev`.
//!
//! The translation is pure: a foreign object in, Egret objects out, or an error that names the
//! field Egret cannot honour (rather than silently dropping it).

use crate::v1alpha1::{
    AppliedTo, Egress, EgressGateway, EgressPeer, EgressPolicy, EgressPolicySpec, EgressPort, EgressRule, EgressSpec,
    EgressStatus, ExternalIPPool, ExternalIPPoolSpec, GatewayNode, IPRange,
};
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
    /// Several egress IPs (v1beta1).
    #[serde(default, rename = "egressIPs")]
    pub egress_ips: Vec<String>,
    /// Pool to allocate from.
    #[serde(default, rename = "externalIPPool")]
    pub external_ip_pool: Option<String>,
    /// Several pools (v1beta1).
    #[serde(default, rename = "externalIPPools")]
    pub external_ip_pools: Vec<String>,
    /// Bandwidth limit (v1beta1): `{rate, burst}`.
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
    /// The IPs in effect (later versions).
    #[serde(default, rename = "egressIPs", skip_serializing_if = "Vec::is_empty")]
    pub egress_ips: Vec<String>,
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
    /// The pool's own subnet (v1beta1): `{gateway, prefixLength, vlan}`.
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
    /// Several gateways (Cilium Enterprise): pods spread over them by a stable hash.
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
    /// Source IP to use; absent (with no `interface`): the gateway node's own address.
    #[serde(default, rename = "egressIP")]
    pub egress_ip: Option<String>,
    /// Interface whose first IPv4 address is used (and which the traffic leaves by).
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

/// Translates an Antrea Egress: its fields are Egret's.
pub fn antrea_egress(a: &AntreaEgress) -> Result<Egress, CompatError> {
    // The values are checked where native Egresses' are (with the field named); here only
    // the shape.
    let bandwidth = match &a.spec.bandwidth {
        None => None,
        Some(v) => Some(
            serde_json::from_value::<crate::v1alpha1::Bandwidth>(v.clone())
                .map_err(|e| unsupported("spec.bandwidth", &format!("expected {{rate, burst}} strings: {e}")))?,
        ),
    };
    let spec = EgressSpec {
        applied_to: AppliedTo {
            namespace_selector: a.spec.applied_to.namespace_selector.clone(),
            pod_selector: a.spec.applied_to.pod_selector.clone(),
            node_selector: None,
        },
        egress_ip: a.spec.egress_ip.clone(),
        external_ip_pool: a.spec.external_ip_pool.clone(),
        egress_ips: a.spec.egress_ips.clone(),
        external_ip_pools: a.spec.external_ip_pools.clone(),
        bandwidth,
        ..EgressSpec::default()
    };
    let mut e = Egress::new(&name_of(&a.metadata), spec);
    e.metadata = carry_meta(&a.metadata, name_of(&a.metadata));
    // Status is carried so that an allocation made by Antrea is kept, not re-made.
    e.status = a.status.as_ref().map(|s| EgressStatus {
        egress_ip: s.egress_ip.clone().or_else(|| s.egress_ips.first().cloned()),
        egress_node: s.egress_node.clone(),
        gateways: s
            .egress_ips
            .iter()
            .map(|ip| EgressGateway { egress_ip: Some(ip.clone()), egress_node: s.egress_node.clone() })
            .collect(),
        conditions: Vec::new(),
    });
    Ok(e)
}

/// Translates an Antrea ExternalIPPool.
pub fn antrea_pool(a: &AntreaPool) -> Result<ExternalIPPool, CompatError> {
    // The values are checked where native pools' are (with the field named); here the shape.
    let subnet_info =
        match &a.spec.subnet_info {
            None => None,
            Some(v) => Some(serde_json::from_value::<crate::v1alpha1::SubnetInfo>(v.clone()).map_err(|e| {
                unsupported("spec.subnetInfo", &format!("expected {{gateway, prefixLength, vlan}}: {e}"))
            })?),
        };
    let mut p = ExternalIPPool::new(
        &name_of(&a.metadata),
        ExternalIPPoolSpec {
            ip_ranges: a.spec.ip_ranges.clone(),
            node_selector: a.spec.node_selector.clone(),
            subnet_info,
        },
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
/// gateways (which Cilium OSS does not do). With `egressGateways` (several gateways), gateway
/// `i` becomes pool `cilium-<policy>-<i>`, and each Egress lists them all in
/// `externalIPPools`: pods spread over the gateways by a stable hash, as in Cilium. A gateway
/// without `egressIP` (and without `interface`) becomes a `gatewayNodes` entry: the egress IP
/// is the chosen gateway node's own address, as Cilium uses its default-route address.
pub fn cilium_policy(c: &CiliumPolicy) -> Result<Vec<Translated>, CompatError> {
    let name = name_of(&c.metadata);
    let gateways: Vec<(&CiliumGateway, String)> = match (&c.spec.egress_gateway, c.spec.egress_gateways.as_slice()) {
        (Some(_), [_, ..]) => {
            return Err(unsupported(
                "spec.egressGateways",
                "cannot be set with egressGateway; list every gateway here",
            ));
        }
        (Some(gw), []) => vec![(gw, "spec.egressGateway".to_string())],
        (None, []) => return Err(unsupported("spec.egressGateway", "is required")),
        (None, many) => many.iter().enumerate().map(|(i, g)| (g, format!("spec.egressGateways[{i}]"))).collect(),
    };
    if c.spec.selectors.is_empty() {
        return Err(unsupported("spec.selectors", "at least one selector is required"));
    }
    let several = !c.spec.egress_gateways.is_empty();
    let mut out = Vec::new();
    let (mut pools, mut ips, mut nodes) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (gw, at)) in gateways.iter().enumerate() {
        if gw.interface.is_some() && gw.egress_ip.is_some() {
            return Err(unsupported(at, "egressIP and interface are mutually exclusive"));
        }
        let Some(ip) = gw.egress_ip.clone() else {
            // No egressIP: the gateway's own address (of `interface`, or its InternalIP), as in
            // Cilium.
            nodes.push(GatewayNode {
                node_selector: gw.node_selector.clone().unwrap_or_default(),
                ip_family: None,
                interface: gw.interface.clone(),
            });
            continue;
        };
        if ips.contains(&ip) {
            return Err(unsupported(&format!("{at}.egressIP"), &format!("{ip} is already another gateway's")));
        }
        let pool_name = if several { format!("cilium-{name}-{i}") } else { format!("cilium-{name}") };
        let host = if ip.contains(':') { 128 } else { 32 };
        let mut pool = ExternalIPPool::new(
            &pool_name,
            ExternalIPPoolSpec {
                ip_ranges: vec![IPRange { cidr: Some(format!("{ip}/{host}")), ..IPRange::default() }],
                node_selector: gw.node_selector.clone().unwrap_or_default(),
                subnet_info: None,
            },
        );
        pool.metadata = carry_meta(&c.metadata, pool_name.clone());
        out.push(Translated::Pool(Box::new(pool)));
        pools.push(pool_name);
        ips.push(ip);
    }
    let many = c.spec.selectors.len() > 1;
    for (i, s) in c.spec.selectors.iter().enumerate() {
        let (namespace_selector, pod_selector) =
            split_namespace_label(s.pod_selector.as_ref(), s.namespace_selector.as_ref());
        let eg_name = if many { format!("{name}-{i}") } else { name.clone() };
        let mut spec = EgressSpec {
            applied_to: AppliedTo { namespace_selector, pod_selector, node_selector: s.node_selector.clone() },
            destination_cidrs: c.spec.destination_cidrs.clone(),
            excluded_cidrs: c.spec.excluded_cidrs.clone(),
            ..EgressSpec::default()
        };
        if several {
            spec.egress_ips = ips.clone();
            spec.external_ip_pools = pools.clone();
        } else {
            spec.egress_ip = ips.first().cloned();
            spec.external_ip_pool = pools.first().cloned();
        }
        spec.gateway_nodes = nodes.clone();
        let mut e = Egress::new(&eg_name, spec);
        e.metadata = carry_meta(&c.metadata, eg_name);
        out.push(Translated::Egress(Box::new(e)));
    }
    Ok(out)
}

/// An Istio `ServiceEntry` document (`networking.istio.io/v1`, `v1beta1`, `v1alpha3`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct IstioServiceEntry {
    /// Object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: IstioServiceEntrySpec,
    /// Status as Istio writes it (conditions, validation messages); ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// Istio `ServiceEntry` spec: every field Istio defines, so a misspelt one is an error.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct IstioServiceEntrySpec {
    /// Names of the service; a leading `*.` label matches subdomains at any depth, `*` alone
    /// every host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Virtual IPs or CIDRs of the service; not translated yet.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Ports of the service.
    #[serde(default)]
    pub ports: Vec<IstioPort>,
    /// `MESH_EXTERNAL` or `MESH_INTERNAL` (Istio's default).
    #[serde(default)]
    pub location: Option<String>,
    /// `NONE`, `STATIC`, `DNS` or `DNS_ROUND_ROBIN`: how the sidecar finds endpoints. Egret
    /// allows what the pod's own DNS answers say, whatever this is.
    #[serde(default)]
    pub resolution: Option<String>,
    /// Endpoints the hosts are sent to instead of their DNS addresses; not translatable.
    #[serde(default)]
    pub endpoints: Vec<serde_json::Value>,
    /// Workloads as endpoints (`MESH_INTERNAL` only in Istio); not translatable.
    #[serde(default)]
    pub workload_selector: Option<serde_json::Value>,
    /// Namespaces the entry is visible to.
    #[serde(default)]
    pub export_to: Vec<String>,
    /// Identities the sidecar verifies in the server's certificate; nothing for a firewall.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

/// One Istio service port.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct IstioPort {
    /// The port the workload connects to.
    #[serde(default)]
    pub number: Option<i64>,
    /// `HTTP`, `HTTPS`, `HTTP2`, `GRPC`, `TLS`, `TCP`, `MONGO`, `UDP`, ...
    #[serde(default)]
    pub protocol: Option<String>,
    /// The port's label; not needed by a firewall.
    #[serde(default)]
    pub name: Option<String>,
    /// Where the sidecar sends the traffic on the endpoint; only accepted equal to `number`.
    #[serde(default)]
    pub target_port: Option<i64>,
}

/// What an Istio ServiceEntry becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum ServiceEntryTranslation {
    /// A `MESH_EXTERNAL` entry: an allowlist EgressPolicy in its namespace.
    Policy(Box<EgressPolicy>),
    /// Not egress (`MESH_INTERNAL`, or no location): nothing to translate, and why.
    LeftOut(String),
}

/// An Istio host as an Egret name pattern. Istio's only wildcard is a leading label: `*.x`
/// matches every name below `x` at any depth (never `x` itself), which is Egret's `**.x`; a
/// plain name stays as it is. `*` alone (every host) cannot be an allowlist.
pub fn istio_host(host: &str) -> Result<String, String> {
    if host == "*" {
        return Err("\"*\" (every host) cannot be translated into an allowlist: Egret allows names, \
                    and a rule for every name would allow everything; list the hosts (\"*.example.com\")"
            .into());
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("{host:?} is an address, not a name: allow it with an EgressPolicy rule's to.cidrs"));
    }
    let (prefix, rest) = match host.strip_prefix("*.") {
        Some(rest) => ("**.", rest),
        None => ("", host),
    };
    if rest.contains('*') {
        return Err(format!(
            "{host:?}: only a whole leading \"*.\" label is translated (Istio's and Envoy's meanings of other \
             wildcards differ)"
        ));
    }
    Ok(format!("{prefix}{rest}"))
}

/// Egret's protocol for an Istio port protocol (case-insensitive, as Istio reads them).
fn istio_protocol(p: &str) -> Option<&'static str> {
    match p.to_ascii_uppercase().as_str() {
        "HTTP" | "HTTPS" | "HTTP2" | "GRPC" | "GRPC-WEB" | "TLS" | "TCP" | "MONGO" | "MYSQL" | "REDIS" => Some("TCP"),
        "UDP" => Some("UDP"),
        _ => None,
    }
}

/// Whether `s` is a DNS-1123 label (what names an Egret rule).
fn dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Translates an Istio ServiceEntry. A `MESH_EXTERNAL` entry registers hosts the mesh may
/// reach; under Istio's `REGISTRY_ONLY` outbound policy nothing else is reachable. Egret says
/// the same with an EgressPolicy in the entry's namespace (`default` when it has none) for all
/// of its pods: one Allow rule named after the entry, for the hosts (by name) on the entry's
/// ports, and `defaultAction: Deny`. Host `i` becomes `to.fqdns[i]`. Fields that would change
/// where traffic goes (`addresses`, `endpoints`, `workloadSelector`, a `targetPort` other than
/// the port) or who may use it (`exportTo` to other namespaces) are errors, never dropped.
pub fn istio_service_entry(se: &IstioServiceEntry) -> Result<ServiceEntryTranslation, CompatError> {
    let s = &se.spec;
    match s.location.as_deref() {
        Some("MESH_EXTERNAL") => {}
        Some("MESH_INTERNAL") => {
            return Ok(ServiceEntryTranslation::LeftOut(
                "location MESH_INTERNAL: a service inside the mesh, not egress".into(),
            ));
        }
        None => {
            return Ok(ServiceEntryTranslation::LeftOut(
                "no location, which Istio reads as MESH_INTERNAL: a service inside the mesh, not egress".into(),
            ));
        }
        Some(other) => {
            return Err(unsupported("spec.location", &format!("{other:?} is not MESH_EXTERNAL or MESH_INTERNAL")));
        }
    }
    let name = name_of(&se.metadata);
    if !dns1123_label(&name) {
        return Err(unsupported(
            "metadata.name",
            &format!(
                "{name:?} also names the rule, which must be a DNS-1123 label (1 to 63 lowercase letters, digits \
                 and '-')"
            ),
        ));
    }
    let namespace = se.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    if let Some(r) = s.resolution.as_deref()
        && !matches!(r, "NONE" | "STATIC" | "DNS" | "DNS_ROUND_ROBIN")
    {
        return Err(unsupported("spec.resolution", &format!("{r:?} is not NONE, STATIC, DNS or DNS_ROUND_ROBIN")));
    }
    if !s.addresses.is_empty() {
        return Err(unsupported(
            "spec.addresses",
            "not translated yet: allow the addresses with an EgressPolicy rule's to.cidrs",
        ));
    }
    if !s.endpoints.is_empty() {
        return Err(unsupported(
            "spec.endpoints",
            "cannot be translated: the sidecar sends the hosts' traffic to these endpoints, while Egret allows \
             the addresses the pods' own DNS answers give",
        ));
    }
    if s.workload_selector.is_some() {
        return Err(unsupported("spec.workloadSelector", "selects endpoints inside the mesh (MESH_INTERNAL only)"));
    }
    for (i, e) in s.export_to.iter().enumerate() {
        if e != "." && *e != namespace {
            return Err(unsupported(
                &format!("spec.exportTo[{i}]"),
                &format!(
                    "{e:?}: the translation allows the hosts to the pods of the entry's own namespace \
                     ({namespace}) only; write a ServiceEntry (or an EgressPolicy) per namespace"
                ),
            ));
        }
    }
    if s.hosts.is_empty() {
        return Err(unsupported("spec.hosts", "at least one host is required"));
    }
    let mut fqdns = Vec::with_capacity(s.hosts.len());
    for (i, h) in s.hosts.iter().enumerate() {
        fqdns.push(istio_host(h).map_err(|why| unsupported(&format!("spec.hosts[{i}]"), &why))?);
    }
    if s.ports.is_empty() {
        return Err(unsupported("spec.ports", "at least one port is required"));
    }
    let mut ports: Vec<EgressPort> = Vec::new();
    for (i, p) in s.ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        let Some(number) = p.number else {
            return Err(unsupported(&format!("{at}.number"), "is required"));
        };
        if !(1..=65535).contains(&number) {
            return Err(unsupported(&format!("{at}.number"), &format!("{number} is not a port (1..65535)")));
        }
        if let Some(t) = p.target_port
            && t != number
        {
            return Err(unsupported(
                &format!("{at}.targetPort"),
                &format!("{t} differs from number {number}: Egret does not rewrite ports (pods connect to {number})"),
            ));
        }
        let Some(proto) = p.protocol.as_deref() else {
            return Err(unsupported(&format!("{at}.protocol"), "is required"));
        };
        let Some(protocol) = istio_protocol(proto) else {
            return Err(unsupported(
                &format!("{at}.protocol"),
                &format!(
                    "{proto:?} is not an Istio protocol Egret translates (HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, TLS, \
                     TCP, MONGO, MYSQL, REDIS: TCP; UDP: UDP)"
                ),
            ));
        };
        let port = EgressPort { protocol: Some(protocol.into()), port: Some(number), end_port: None };
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    let rule = EgressRule {
        name: name.clone(),
        action: "Allow".into(),
        to: Some(EgressPeer { fqdns, ..EgressPeer::default() }),
        ports,
        log: false,
    };
    let spec = EgressPolicySpec {
        applied_to: AppliedTo { pod_selector: Some(LabelSelector::default()), ..AppliedTo::default() },
        rules: vec![rule],
        default_action: Some("Deny".into()),
        deny_response: None,
    };
    let mut p = EgressPolicy::new(&name, spec);
    p.metadata = carry_meta(&se.metadata, name);
    p.metadata.namespace = Some(namespace);
    Ok(ServiceEntryTranslation::Policy(Box::new(p)))
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
    fn several_cilium_gateways_become_a_pool_each() {
        let y = SEED_004.replace(
            "  egressGateway:\n    nodeSelector:\n      matchLabels:\n        node.kubernetes.io/name: node2\n    egressIP: 10.168.60.100\n",
            "  egressGateways:\n  - nodeSelector: {matchLabels: {node.kubernetes.io/name: node2}}\n    egressIP: 10.168.60.100\n  - nodeSelector: {matchLabels: {node.kubernetes.io/name: node3}}\n    egressIP: 10.168.60.101\n",
        );
        let c: CiliumPolicy = serde_yaml_ng::from_str(&y).unwrap();
        let out = cilium_policy(&c).unwrap();
        let pools: Vec<&str> = out
            .iter()
            .filter_map(|t| match t {
                Translated::Pool(p) => p.metadata.name.as_deref(),
                _ => None,
            })
            .collect();
        assert_eq!(pools, ["cilium-egress-sample-0", "cilium-egress-sample-1"]);
        let Some(Translated::Egress(e)) = out.last() else { panic!("egress last") };
        assert_eq!(e.spec.external_ip_pools, ["cilium-egress-sample-0", "cilium-egress-sample-1"]);
        assert_eq!(e.spec.egress_ips, ["10.168.60.100", "10.168.60.101"]);
        assert!(e.spec.egress_ip.is_none() && e.spec.external_ip_pool.is_none());
        // Both forms at once, or one IP twice, name their field.
        let mut both = c.clone();
        both.spec.egress_gateway = Some(c.spec.egress_gateways[0].clone());
        assert_eq!(cilium_policy(&both).unwrap_err().field, "spec.egressGateways");
        let mut twice = c.clone();
        twice.spec.egress_gateways[1].egress_ip = Some("10.168.60.100".into());
        assert_eq!(cilium_policy(&twice).unwrap_err().field, "spec.egressGateways[1].egressIP");
    }

    #[test]
    fn a_cilium_gateway_without_egress_ip_uses_the_gateway_nodes_address() {
        let mut c: CiliumPolicy = serde_yaml_ng::from_str(SEED_004).unwrap();
        c.spec.egress_gateway.as_mut().unwrap().egress_ip = None;
        let out = cilium_policy(&c).unwrap();
        assert_eq!(out.len(), 1, "no pool: nothing to allocate");
        let Translated::Egress(e) = &out[0] else { panic!("{out:?}") };
        assert_eq!(e.spec.egress_ip, None);
        assert_eq!(e.spec.external_ip_pool, None);
        let want = c.spec.egress_gateway.as_ref().unwrap().node_selector.clone().unwrap();
        assert_eq!(e.spec.gateway_nodes, [GatewayNode { node_selector: want, ip_family: None, interface: None }]);

        // Several gateways, one with an egressIP and one without: a pool and a gateway node.
        let mut several = c.clone();
        let gw = several.spec.egress_gateway.take().unwrap();
        let mut with_ip = gw.clone();
        with_ip.egress_ip = Some("10.168.60.100".into());
        several.spec.egress_gateways = vec![with_ip, gw];
        let out = cilium_policy(&several).unwrap();
        let Translated::Egress(e) = &out[1] else { panic!("{out:?}") };
        assert_eq!(e.spec.external_ip_pools, ["cilium-egress-sample-0"]);
        assert_eq!(e.spec.egress_ips, ["10.168.60.100"]);
        assert_eq!(e.spec.gateway_nodes.len(), 1);
    }

    #[test]
    fn a_cilium_interface_is_a_gateway_node_entry_and_not_with_egress_ip() {
        let mut c: CiliumPolicy = serde_yaml_ng::from_str(SEED_004).unwrap();
        let gw = c.spec.egress_gateway.as_mut().unwrap();
        gw.interface = Some("eth1".into());
        assert_eq!(cilium_policy(&c).unwrap_err().field, "spec.egressGateway", "egressIP and interface");
        c.spec.egress_gateway.as_mut().unwrap().egress_ip = None;
        let out = cilium_policy(&c).unwrap();
        let Translated::Egress(e) = &out[0] else { panic!("{out:?}") };
        assert_eq!(e.spec.gateway_nodes[0].interface.as_deref(), Some("eth1"));
    }

    #[test]
    fn antrea_egress_keeps_status_and_bandwidth() {
        let y = "metadata: {name: e}\nspec:\n  appliedTo: {podSelector: {}}\n  egressIP: 10.10.0.8\n  externalIPPool: p\n  bandwidth: {rate: 100Mbps, burst: 200Mb}\nstatus:\n  egressNode: node01\n";
        let a: AntreaEgress = serde_yaml_ng::from_str(y).unwrap();
        let e = antrea_egress(&a).unwrap();
        assert_eq!(e.status.unwrap().egress_node.as_deref(), Some("node01"));
        let bw = e.spec.bandwidth.unwrap();
        assert_eq!((bw.rate.as_str(), bw.burst.as_str()), ("100Mbps", "200Mb"));
        // A shape that is not {rate, burst} is named; bad values are the validator's.
        let mut b = a.clone();
        b.spec.bandwidth = Some(serde_json::json!({"rate": "100M"}));
        assert_eq!(antrea_egress(&b).unwrap_err().field, "spec.bandwidth");
    }

    const SEED_001: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: allowed-external
spec:
  hosts:
  - "*.googleapis.com"
  - "api.github.com"
  ports:
  - number: 443
    name: https
    protocol: HTTPS
  resolution: DNS
  location: MESH_EXTERNAL
"#;

    fn se(yaml: &str) -> IstioServiceEntry {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn policy(t: ServiceEntryTranslation) -> EgressPolicy {
        match t {
            ServiceEntryTranslation::Policy(p) => *p,
            ServiceEntryTranslation::LeftOut(why) => panic!("left out: {why}"),
        }
    }

    #[test]
    fn istio_hosts_map_onto_egret_patterns() {
        assert_eq!(istio_host("api.github.com").unwrap(), "api.github.com");
        // Istio's `*.x` is any depth below x: Egret's `**.x`, not its one-label `*.x`.
        assert_eq!(istio_host("*.googleapis.com").unwrap(), "**.googleapis.com");
        assert_eq!(istio_host("*.a.b.example").unwrap(), "**.a.b.example");
        for bad in ["*", "*foo.com", "*-bar.foo.com", "api.*.com", "*.*.com", "10.1.2.3", "2001:db8::1"] {
            assert!(istio_host(bad).is_err(), "{bad}");
        }
        assert!(istio_host("*").unwrap_err().contains("every host"));
    }

    #[test]
    fn seed_001_service_entry_becomes_an_allowlist() {
        let p = policy(istio_service_entry(&se(SEED_001)).unwrap());
        assert_eq!(p.metadata.name.as_deref(), Some("allowed-external"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(p.spec.applied_to.pod_selector, Some(LabelSelector::default()));
        assert_eq!(p.spec.default_action.as_deref(), Some("Deny"));
        let [r] = p.spec.rules.as_slice() else { panic!("one rule") };
        assert_eq!((r.name.as_str(), r.action.as_str()), ("allowed-external", "Allow"));
        assert_eq!(r.to.as_ref().unwrap().fqdns, vec!["**.googleapis.com", "api.github.com"]);
        assert_eq!(r.ports, vec![EgressPort { protocol: Some("TCP".into()), port: Some(443), end_port: None }]);
        // The namespace is kept; UDP stays UDP, TLS and TCP on one port collapse into one entry.
        let y = SEED_001.replace("name: allowed-external", "name: x\n  namespace: prod").replace(
            "protocol: HTTPS",
            "protocol: tls\n  - {number: 443, name: t, protocol: TCP, targetPort: 443}\n  - {number: 53, name: d, protocol: UDP}",
        );
        let p = policy(istio_service_entry(&se(&y)).unwrap());
        assert_eq!(p.metadata.namespace.as_deref(), Some("prod"));
        let ports: Vec<_> =
            p.spec.rules[0].ports.iter().map(|p| (p.protocol.clone().unwrap(), p.port.unwrap())).collect();
        assert_eq!(ports, vec![("TCP".to_string(), 443), ("UDP".to_string(), 53)]);
    }

    #[test]
    fn mesh_internal_is_left_out() {
        let internal = SEED_001.replace("MESH_EXTERNAL", "MESH_INTERNAL");
        assert!(matches!(istio_service_entry(&se(&internal)), Ok(ServiceEntryTranslation::LeftOut(_))));
        let absent = SEED_001.replace("  location: MESH_EXTERNAL\n", "");
        let Ok(ServiceEntryTranslation::LeftOut(why)) = istio_service_entry(&se(&absent)) else { panic!() };
        assert!(why.contains("MESH_INTERNAL"), "{why}");
    }

    #[test]
    fn untranslatable_service_entries_name_the_field() {
        let field = |from: &str, to: &str| {
            let y = SEED_001.replace(from, to);
            assert_ne!(y, SEED_001, "{from}");
            istio_service_entry(&se(&y)).unwrap_err().field
        };
        assert_eq!(field("\"*.googleapis.com\"", "\"*\""), "spec.hosts[0]");
        assert_eq!(field("\"api.github.com\"", "\"*foo.github.com\""), "spec.hosts[1]");
        assert_eq!(field("protocol: HTTPS", "protocol: QUIC"), "spec.ports[0].protocol");
        assert_eq!(field("    protocol: HTTPS\n", ""), "spec.ports[0].protocol");
        assert_eq!(field("number: 443", "number: 70000"), "spec.ports[0].number");
        assert_eq!(field("number: 443", "number: 443\n    targetPort: 8443"), "spec.ports[0].targetPort");
        assert_eq!(field("location: MESH_EXTERNAL", "location: OUTSIDE"), "spec.location");
        assert_eq!(field("resolution: DNS", "resolution: MAGIC"), "spec.resolution");
        assert_eq!(field("resolution: DNS", "resolution: STATIC\n  endpoints: [{address: 1.2.3.4}]"), "spec.endpoints");
        assert_eq!(field("resolution: DNS", "resolution: DNS\n  addresses: [192.0.2.0/24]"), "spec.addresses");
        assert_eq!(field("resolution: DNS", "resolution: DNS\n  exportTo: [\".\", \"*\"]"), "spec.exportTo[1]");
        assert_eq!(field("name: allowed-external", "name: allowed.external"), "metadata.name");
        // Exported to its own namespace only: the translation is exact.
        let own = SEED_001.replace("resolution: DNS", "resolution: DNS\n  exportTo: [\".\"]");
        assert!(istio_service_entry(&se(&own)).is_ok());
        // A misspelt field is an error when parsed strictly, like every foreign kind.
        let e = serde_yaml_ng::from_str::<IstioServiceEntry>(&SEED_001.replace("hosts:", "host:")).unwrap_err();
        assert!(e.to_string().contains("host"), "{e}");
    }
}
