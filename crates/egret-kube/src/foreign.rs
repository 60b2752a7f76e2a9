//! Antrea and Cilium kinds as `kube::Resource`s.
//!
//! `egret_api::compat` keeps them as plain serde structs; [`Foreign`] wraps one so the kube-rs
//! watcher can list and watch it. The group, version and plural come from API discovery at run
//! time ([`kube::discovery::ApiResource`]), which is how Antrea's `v1alpha2` and `v1beta1` are
//! both served by the same type.

use egret_api::compat::{AntreaEgress, AntreaPool, CiliumPolicy};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::discovery::ApiResource;
use serde::Deserialize;
use std::borrow::Cow;

/// A foreign object, watched through its discovered [`ApiResource`].
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(transparent)]
pub struct Foreign<K>(pub K);

macro_rules! foreign_resource {
    ($k:ty) => {
        impl kube::Resource for Foreign<$k> {
            type DynamicType = ApiResource;
            type Scope = k8s_openapi::ClusterResourceScope;

            fn kind(dt: &ApiResource) -> Cow<'_, str> {
                Cow::Borrowed(&dt.kind)
            }

            fn group(dt: &ApiResource) -> Cow<'_, str> {
                Cow::Borrowed(&dt.group)
            }

            fn version(dt: &ApiResource) -> Cow<'_, str> {
                Cow::Borrowed(&dt.version)
            }

            fn api_version(dt: &ApiResource) -> Cow<'_, str> {
                Cow::Borrowed(&dt.api_version)
            }

            fn plural(dt: &ApiResource) -> Cow<'_, str> {
                Cow::Borrowed(&dt.plural)
            }

            fn meta(&self) -> &ObjectMeta {
                &self.0.metadata
            }

            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.0.metadata
            }
        }
    };
}

foreign_resource!(AntreaEgress);
foreign_resource!(AntreaPool);
foreign_resource!(CiliumPolicy);

/// Antrea's API group.
pub const ANTREA_GROUP: &str = "crd.antrea.io";
/// The Antrea versions whose Egress and ExternalIPPool `egret_api::compat` reads, preferred first.
pub const ANTREA_VERSIONS: &[&str] = &["v1beta1", "v1alpha2"];
/// Cilium's API group.
pub const CILIUM_GROUP: &str = "cilium.io";
/// The Cilium version whose CiliumEgressGatewayPolicy `egret_api::compat` reads.
pub const CILIUM_VERSIONS: &[&str] = &["v2"];
