//! Events that object sources (the local store, the Kubernetes API) send into the index.
//!
//! A source emits, per kind, one [`Event::Reset`] with the complete list when it starts (and
//! again after a relist), then [`Event::Apply`] and [`Event::Delete`] per change. Objects travel
//! in their slim form: the model types for Nodes, Namespaces and Pods, the API types for
//! Egret's own kinds and for the foreign kinds the index translates itself (so a delete of a
//! Cilium policy removes everything it was translated into).

use crate::model::{Namespace, Node, Pod};
use egret_api::compat::{AntreaEgress, AntreaPool, CiliumPolicy};
use egret_api::v1alpha1::{ClusterEgressPolicy, Egress, EgressPolicy, ExternalIPPool};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use std::fmt;

/// The identity of an object: its namespace (`None` when cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// Namespace, for namespaced kinds.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl ObjectRef {
    /// A cluster-scoped object.
    pub fn cluster(name: impl Into<String>) -> ObjectRef {
        ObjectRef { namespace: None, name: name.into() }
    }

    /// A namespaced object.
    pub fn namespaced(namespace: impl Into<String>, name: impl Into<String>) -> ObjectRef {
        ObjectRef { namespace: Some(namespace.into()), name: name.into() }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// One change of one kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<T> {
    /// The object was created or changed (the whole new object).
    Apply(T),
    /// The object was removed (deleting an unknown object is not an error).
    Delete(ObjectRef),
    /// The complete current list: whatever the index holds of this kind and the list lacks is
    /// removed. The first reset of a kind ends its initial sync.
    Reset(Vec<T>),
}

/// An event tagged with its kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// `egret.dev` ExternalIPPools.
    Pools(Event<ExternalIPPool>),
    /// `egret.dev` Egresses.
    Egresses(Event<Egress>),
    /// Antrea ExternalIPPools (translated by the index).
    AntreaPools(Event<AntreaPool>),
    /// Antrea Egresses (translated by the index).
    AntreaEgresses(Event<AntreaEgress>),
    /// Cilium CiliumEgressGatewayPolicies (translated by the index).
    CiliumPolicies(Event<CiliumPolicy>),
    /// Nodes.
    Nodes(Event<Node>),
    /// Namespaces.
    Namespaces(Event<Namespace>),
    /// Pods.
    Pods(Event<Pod>),
    /// `egret.dev` ClusterEgressPolicies.
    ClusterPolicies(Event<ClusterEgressPolicy>),
    /// `egret.dev` EgressPolicies.
    Policies(Event<EgressPolicy>),
    /// `networking.k8s.io/v1` NetworkPolicies (acted on only by an index that enforces them).
    NetworkPolicies(Event<NetworkPolicy>),
}

/// The kinds a source can feed, for tracking which have finished their initial list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `egret.dev` ExternalIPPool.
    Pool,
    /// `egret.dev` Egress.
    Egress,
    /// Antrea ExternalIPPool.
    AntreaPool,
    /// Antrea Egress.
    AntreaEgress,
    /// Cilium CiliumEgressGatewayPolicy.
    CiliumPolicy,
    /// core/v1 Node.
    Node,
    /// core/v1 Namespace.
    Namespace,
    /// core/v1 Pod.
    Pod,
    /// `egret.dev` ClusterEgressPolicy.
    ClusterPolicy,
    /// `egret.dev` EgressPolicy.
    Policy,
    /// `networking.k8s.io/v1` NetworkPolicy.
    NetworkPolicy,
}

impl Change {
    /// Whether this is a complete list (a reset).
    pub fn is_reset(&self) -> bool {
        matches!(
            self,
            Change::Pools(Event::Reset(_))
                | Change::Egresses(Event::Reset(_))
                | Change::AntreaPools(Event::Reset(_))
                | Change::AntreaEgresses(Event::Reset(_))
                | Change::CiliumPolicies(Event::Reset(_))
                | Change::Nodes(Event::Reset(_))
                | Change::Namespaces(Event::Reset(_))
                | Change::Pods(Event::Reset(_))
                | Change::ClusterPolicies(Event::Reset(_))
                | Change::Policies(Event::Reset(_))
                | Change::NetworkPolicies(Event::Reset(_))
        )
    }

    /// The kind this change is about.
    pub fn kind(&self) -> Kind {
        match self {
            Change::Pools(_) => Kind::Pool,
            Change::Egresses(_) => Kind::Egress,
            Change::AntreaPools(_) => Kind::AntreaPool,
            Change::AntreaEgresses(_) => Kind::AntreaEgress,
            Change::CiliumPolicies(_) => Kind::CiliumPolicy,
            Change::Nodes(_) => Kind::Node,
            Change::Namespaces(_) => Kind::Namespace,
            Change::Pods(_) => Kind::Pod,
            Change::ClusterPolicies(_) => Kind::ClusterPolicy,
            Change::Policies(_) => Kind::Policy,
            Change::NetworkPolicies(_) => Kind::NetworkPolicy,
        }
    }
}
