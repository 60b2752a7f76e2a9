//! Egret's API: the `egret.dev/v1alpha1` custom resources, and the Antrea and Cilium kinds that
//! Egret accepts unchanged (translated by [`compat`]).
//!
//! Addresses and CIDRs stay strings here: parsing them is validation's job, so a malformed value
//! becomes an error that names its field instead of a deserialisation failure.

pub mod compat;
pub mod v1alpha1;

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

/// The API group of Egret's own kinds.
pub const GROUP: &str = "egret.dev";
/// The API version of Egret's own kinds.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of Egret's own kinds.
pub const API_VERSION: &str = "egret.dev/v1alpha1";

/// The CustomResourceDefinitions of Egret's kinds, with the file name each is committed under
/// in `deploy/crds/`.
pub fn crds()
-> Vec<(&'static str, k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition)> {
    use kube::CustomResourceExt;
    vec![
        ("externalippools.yaml", v1alpha1::ExternalIPPool::crd()),
        ("egresses.yaml", v1alpha1::Egress::crd()),
        ("clusteregresspolicies.yaml", v1alpha1::ClusterEgressPolicy::crd()),
        ("egresspolicies.yaml", v1alpha1::EgressPolicy::crd()),
    ]
}
