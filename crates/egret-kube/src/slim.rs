//! Slim object types for Pods, Nodes and Namespaces.
//!
//! They implement `kube::Resource` (through k8s-openapi's static kind, group and version of the
//! full types) so the kube-rs watcher can list and watch them, but deserialize only the fields
//! Egret's model reads: serde skips `managedFields`, annotations (but Egret's own), container specs and conditions
//! while parsing, so they are never allocated. The model types ([`egret_core::model`]) are built
//! from these and the slim objects are dropped at once.

use egret_core::model;
use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The part of `metadata` a slim object keeps: identity, labels and the resource version the
/// watcher resumes from.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimMeta {
    name: Option<String>,
    namespace: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    resource_version: Option<String>,
    /// Only Egret's own annotations (a node's published interfaces); the others are skipped
    /// while parsing.
    #[serde(default, deserialize_with = "egret_annotations")]
    annotations: Option<BTreeMap<String, String>>,
}

/// The `egret.dev/` annotations of a map of annotations, skipping the values of the others.
fn egret_annotations<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    struct Visit;
    impl<'de> serde::de::Visitor<'de> for Visit {
        type Value = Option<BTreeMap<String, String>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of annotations")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(k) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                if k.starts_with("egret.dev/") {
                    out.insert(k.into_owned(), m.next_value::<String>()?);
                } else {
                    m.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok((!out.is_empty()).then_some(out))
        }
    }
    d.deserialize_option(Visit)
}

fn slim_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = SlimMeta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        labels: m.labels,
        resource_version: m.resource_version,
        annotations: m.annotations,
        ..ObjectMeta::default()
    })
}

/// Implements k8s-openapi's `Resource` and `Metadata` with the constants of the full type, which
/// gives `kube::Resource` through kube's blanket implementation.
macro_rules! slim_resource {
    ($slim:ty, $full:ty) => {
        impl k8s_openapi::Resource for $slim {
            const API_VERSION: &'static str = <$full as k8s_openapi::Resource>::API_VERSION;
            const GROUP: &'static str = <$full as k8s_openapi::Resource>::GROUP;
            const KIND: &'static str = <$full as k8s_openapi::Resource>::KIND;
            const VERSION: &'static str = <$full as k8s_openapi::Resource>::VERSION;
            const URL_PATH_SEGMENT: &'static str = <$full as k8s_openapi::Resource>::URL_PATH_SEGMENT;
            type Scope = <$full as k8s_openapi::Resource>::Scope;
        }

        impl k8s_openapi::Metadata for $slim {
            type Ty = ObjectMeta;

            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }

            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

/// A Pod as Egret reads it.
#[derive(Deserialize, Debug, Clone, Default, PartialEq)]
pub struct SlimPod {
    /// Name, namespace, labels, resourceVersion.
    #[serde(deserialize_with = "slim_meta", default)]
    pub metadata: ObjectMeta,
    /// `spec.nodeName`, `spec.hostNetwork`.
    #[serde(default)]
    pub spec: SlimPodSpec,
    /// `status.podIP`, `status.podIPs`.
    #[serde(default)]
    pub status: SlimPodStatus,
}

/// The read part of a pod's spec.
#[derive(Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SlimPodSpec {
    /// The node it is scheduled on.
    pub node_name: Option<String>,
    /// Host-network pods send as the node.
    pub host_network: Option<bool>,
}

/// The read part of a pod's status.
#[derive(Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SlimPodStatus {
    /// `status.podIP`.
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    /// `status.podIPs`.
    #[serde(rename = "podIPs")]
    pub pod_ips: Option<Vec<SlimIp>>,
}

/// One entry of `status.podIPs`.
#[derive(Deserialize, Debug, Clone, Default, PartialEq)]
pub struct SlimIp {
    /// The address.
    pub ip: String,
}

slim_resource!(SlimPod, corev1::Pod);

impl From<SlimPod> for model::Pod {
    /// Same rules as [`model::Pod::from_k8s`]: `podIPs` before `podIP`, no addresses for
    /// host-network pods, namespace `default` when absent.
    fn from(p: SlimPod) -> model::Pod {
        let host_network = p.spec.host_network.unwrap_or(false);
        let mut ips: Vec<IpAddr> = if host_network {
            Vec::new()
        } else {
            p.status.pod_ips.iter().flatten().filter_map(|a| a.ip.parse().ok()).collect()
        };
        if ips.is_empty()
            && !host_network
            && let Some(ip) = p.status.pod_ip.as_deref().and_then(|ip| ip.parse().ok())
        {
            ips.push(ip);
        }
        model::Pod {
            namespace: p.metadata.namespace.unwrap_or_else(|| "default".into()),
            name: p.metadata.name.unwrap_or_default(),
            labels: p.metadata.labels.unwrap_or_default(),
            node: p.spec.node_name,
            ips,
        }
    }
}

/// A Node as Egret reads it.
#[derive(Deserialize, Debug, Clone, Default, PartialEq)]
pub struct SlimNode {
    /// Name, labels, resourceVersion.
    #[serde(deserialize_with = "slim_meta", default)]
    pub metadata: ObjectMeta,
    /// `spec.podCIDR(s)`.
    #[serde(default)]
    pub spec: SlimNodeSpec,
    /// `status.addresses`.
    #[serde(default)]
    pub status: SlimNodeStatus,
}

/// The read part of a node's spec.
#[derive(Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SlimNodeSpec {
    /// `spec.podCIDR`.
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    /// `spec.podCIDRs`.
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Option<Vec<String>>,
}

/// The read part of a node's status.
#[derive(Deserialize, Debug, Clone, Default, PartialEq)]
pub struct SlimNodeStatus {
    /// `status.addresses`.
    #[serde(default)]
    pub addresses: Vec<SlimAddress>,
}

/// One node address.
#[derive(Deserialize, Debug, Clone, Default, PartialEq)]
pub struct SlimAddress {
    /// `InternalIP`, `ExternalIP`, `Hostname`…
    #[serde(rename = "type")]
    pub type_: String,
    /// The address.
    pub address: String,
}

slim_resource!(SlimNode, corev1::Node);

impl From<SlimNode> for model::Node {
    /// Same rules as [`model::Node::from_k8s`].
    fn from(n: SlimNode) -> model::Node {
        let addrs = &n.status.addresses;
        let parse = |want_internal: bool| -> Vec<IpAddr> {
            addrs
                .iter()
                .filter(|a| !want_internal || a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect()
        };
        let mut pod_cidrs: Vec<ipnet::IpNet> =
            n.spec.pod_cidrs.iter().flatten().filter_map(|c| c.parse().ok()).collect();
        if pod_cidrs.is_empty()
            && let Some(c) = n.spec.pod_cidr.as_deref().and_then(|c| c.parse().ok())
        {
            pod_cidrs.push(c);
        }
        model::Node {
            internal_ips: parse(true),
            addresses: parse(false),
            name: n.metadata.name.unwrap_or_default(),
            labels: n.metadata.labels.unwrap_or_default(),
            pod_cidrs,
            interfaces: n
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(model::INTERFACES_ANNOTATION))
                .map(|t| model::parse_interfaces(t))
                .unwrap_or_default(),
        }
    }
}

/// A Namespace as Egret reads it.
#[derive(Deserialize, Debug, Clone, Default, PartialEq)]
pub struct SlimNamespace {
    /// Name, labels, resourceVersion.
    #[serde(deserialize_with = "slim_meta", default)]
    pub metadata: ObjectMeta,
}

slim_resource!(SlimNamespace, corev1::Namespace);

impl From<SlimNamespace> for model::Namespace {
    fn from(n: SlimNamespace) -> model::Namespace {
        model::Namespace { name: n.metadata.name.unwrap_or_default(), labels: n.metadata.labels.unwrap_or_default() }
    }
}
