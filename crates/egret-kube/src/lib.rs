//! Egret on a Kubernetes cluster: the client side.
//!
//! - [`source`]: the object source. One kube-rs watcher per kind, mapped onto
//!   [`egret_core::event::Change`]s (a `Reset` per (re)list, then `Apply`/`Delete`), with slim
//!   Pods, Nodes and Namespaces ([`slim`]) and the foreign kinds behind a flag ([`foreign`]).
//! - [`lease`]: leader election on a `coordination.k8s.io/v1` Lease, with fencing.
//! - [`status`]: status writes by server-side apply, Antrea's condition vocabulary, Events.
//! - [`client`]: a `kube::Client` from `--kubeconfig` or the in-cluster configuration.
//! - `testserver` (feature `test-double`, and in this crate's tests): an in-process test double
//!   of the API server speaking list/watch, against which all of the above is tested.
//!
//! # HTTP calls, per kind (what RBAC must allow)
//!
//! Agent and controller, [`source::Source`] (each kind: `list` then `watch`, both `GET` on the
//! collection, `?watch=true` for the watch; cluster-wide unless noted):
//!
//! | resource | verbs |
//! |---|---|
//! | `egret.dev` `egresses`, `externalippools` | list, watch |
//! | core `nodes`, `namespaces` | list, watch |
//! | core `pods` (all namespaces; `fieldSelector=spec.nodeName=NODE` with `pods_on_node`) | list, watch |
//! | `crd.antrea.io` `egresses`, `externalippools` (only with `antrea` on and the CRDs served) | list, watch |
//! | `cilium.io` `ciliumegressgatewaypolicies` (only with `cilium` on and the CRD served) | list, watch |
//! | discovery: `GET /apis`, `GET /apis/crd.antrea.io/VERSION`, `GET /apis/cilium.io/VERSION` (only for the enabled foreign kinds) | non-resource URLs, allowed to every authenticated user by the default `system:discovery` role |
//!
//! Controller only:
//!
//! | resource | verbs | by |
//! |---|---|---|
//! | `egret.dev` `egresses/status`, `externalippools/status` | patch (server-side apply, field manager `egret-controller`) | [`status::StatusWriter`] |
//! | `coordination.k8s.io` `leases` (one, in the controller's namespace) | get, create, update | [`lease::LeaderElector`] |
//! | `events.k8s.io` `events` (namespace `default` for the cluster-scoped Egret kinds, the Lease's namespace for `LeaderElected`) | create, patch | [`status::Reporter`] (kube-rs' `Recorder` patches a repeated event) |
//!
//! The install's RBAC (`deploy/rbac/`, `deploy/components/*`) grants exactly these: a test
//! (`rbac_tests.rs`) runs the agent's and the controller's code against the test double, maps
//! each request to its (API group, resource, verb, namespace) as the API server does, and
//! fails on a call not allowed or a grant not used.

pub mod client;
pub mod foreign;
mod keyset;
pub mod lease;
pub mod lenient;
pub mod node;
pub mod slim;
pub mod source;
pub mod status;
#[cfg(any(test, feature = "test-double"))]
pub mod testserver;

/// The install manifests' RBAC (`deploy/`) covers exactly the calls above.
#[cfg(test)]
mod rbac_tests;

pub use client::{ClientError, client};
pub use source::{Source, SourceConfig, SourceError};
