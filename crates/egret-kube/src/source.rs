//! The Kubernetes object source: one kube-rs watcher per kind, mapped onto
//! [`egret_core::event::Change`]s sent into a channel.
//!
//! Per kind the watcher lists (pages of 500), then watches from the list's resourceVersion with
//! bookmarks, resumes a broken watch from the last version seen, and relists after `410 Gone`;
//! kube-rs' default backoff spaces retries. Each (re)list becomes one [`Event::Reset`] with the
//! complete list, so whatever a relist no longer contains is removed downstream.

use crate::foreign::{ANTREA_GROUP, ANTREA_VERSIONS, CILIUM_GROUP, CILIUM_VERSIONS, Foreign};
use crate::slim::{SlimNamespace, SlimNode, SlimPod};
use egret_api::compat::{AntreaEgress, AntreaPool, CiliumPolicy};
use egret_api::v1alpha1::{Egress, ExternalIPPool};
use egret_core::event::{Change, Event, Kind, ObjectRef};
use futures::stream::{BoxStream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::discovery::{ApiGroup, ApiResource};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// Annotation `kubectl apply` fills with a whole copy of the object; never kept.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What the source watches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceConfig {
    /// Watch Antrea `Egress` and `ExternalIPPool` (when their CRDs are installed). Off by default:
    /// while Antrea still acts on its own objects, two systems would steer the same pods.
    pub antrea: bool,
    /// Watch Cilium `CiliumEgressGatewayPolicy` (when its CRD is installed). Off by default, for
    /// the same reason.
    pub cilium: bool,
    /// Watch only the pods of this node (field selector `spec.nodeName=NODE`).
    pub pods_on_node: Option<String>,
}

/// Errors of the source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// API discovery of a foreign group failed for another reason than the group being absent.
    #[error("discovering API group {group}")]
    Discovery {
        /// The API group.
        group: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
}

/// A source ready to run: the kinds it feeds are known (foreign kinds were discovered).
#[derive(Clone)]
pub struct Source {
    client: Client,
    config: SourceConfig,
    antrea_egress: Option<ApiResource>,
    antrea_pool: Option<ApiResource>,
    cilium_policy: Option<ApiResource>,
}

impl Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("config", &self.config).field("kinds", &self.kinds()).finish()
    }
}

/// The served version of `kind` in `group` that Egret reads, preferred version first.
fn find_kind(group: &ApiGroup, kind: &str, supported: &[&str]) -> Option<ApiResource> {
    let mut versions: Vec<&str> = group.preferred_version().into_iter().collect();
    versions.extend(supported.iter().copied());
    versions
        .into_iter()
        .filter(|v| supported.contains(v))
        .find_map(|v| group.versioned_resources(v).into_iter().map(|(ar, _)| ar).find(|ar| ar.kind == kind))
}

/// Discovers an API group; `None` when the cluster does not serve it.
async fn discover_group(client: &Client, name: &str) -> Result<Option<ApiGroup>, SourceError> {
    match kube::discovery::group(client, name).await {
        Ok(g) => Ok(Some(g)),
        Err(kube::Error::Discovery(e)) => {
            debug!(group = name, "not served: {e}");
            Ok(None)
        }
        Err(e) => Err(SourceError::Discovery { group: name.to_string(), source: e }),
    }
}

impl Source {
    /// Prepares the source: for each enabled foreign kind, checks by API discovery that the
    /// cluster serves it (its CRD is installed) and in which version. Installing a CRD later
    /// needs a restart to be noticed.
    pub async fn discover(client: Client, config: SourceConfig) -> Result<Source, SourceError> {
        let mut s = Source { client, config, antrea_egress: None, antrea_pool: None, cilium_policy: None };
        if s.config.antrea
            && let Some(g) = discover_group(&s.client, ANTREA_GROUP).await?
        {
            s.antrea_egress = find_kind(&g, "Egress", ANTREA_VERSIONS);
            s.antrea_pool = find_kind(&g, "ExternalIPPool", ANTREA_VERSIONS);
        }
        if s.config.cilium
            && let Some(g) = discover_group(&s.client, CILIUM_GROUP).await?
        {
            s.cilium_policy = find_kind(&g, "CiliumEgressGatewayPolicy", CILIUM_VERSIONS);
        }
        info!(kinds = ?s.kinds(), "kubernetes source");
        Ok(s)
    }

    /// The kinds this source feeds; each sends a [`Event::Reset`] once listed.
    pub fn kinds(&self) -> Vec<Kind> {
        let mut k = vec![Kind::Pool, Kind::Egress, Kind::Node, Kind::Namespace, Kind::Pod];
        if self.antrea_pool.is_some() {
            k.push(Kind::AntreaPool);
        }
        if self.antrea_egress.is_some() {
            k.push(Kind::AntreaEgress);
        }
        if self.cilium_policy.is_some() {
            k.push(Kind::CiliumPolicy);
        }
        k.sort();
        k
    }

    /// The watch streams of every kind, merged.
    pub fn changes(&self) -> BoxStream<'static, Change> {
        self.versioned_changes().map(|v| v.change).boxed()
    }

    /// The watch streams of every kind, merged, each change with its resourceVersion.
    pub fn versioned_changes(&self) -> BoxStream<'static, Versioned> {
        let c = &self.client;
        let wc = watcher::Config::default();
        let pods_wc = match &self.config.pods_on_node {
            Some(node) => wc.clone().fields(&format!("spec.nodeName={node}")),
            None => wc.clone(),
        };
        let mut streams = vec![
            relay(Api::<ExternalIPPool>::all(c.clone()), wc.clone(), trim_pool, Change::Pools),
            relay(Api::<Egress>::all(c.clone()), wc.clone(), trim_egress, Change::Egresses),
            relay(Api::<SlimNode>::all(c.clone()), wc.clone(), Into::into, Change::Nodes),
            relay(Api::<SlimNamespace>::all(c.clone()), wc.clone(), Into::into, Change::Namespaces),
            relay(Api::<SlimPod>::all(c.clone()), pods_wc, Into::into, Change::Pods),
        ];
        if let Some(ar) = &self.antrea_pool {
            let api = Api::<Foreign<AntreaPool>>::all_with(c.clone(), ar);
            streams.push(relay(
                api,
                wc.clone(),
                |f| trim_foreign(f, |o: &mut AntreaPool| &mut o.metadata),
                Change::AntreaPools,
            ));
        }
        if let Some(ar) = &self.antrea_egress {
            let api = Api::<Foreign<AntreaEgress>>::all_with(c.clone(), ar);
            streams.push(relay(
                api,
                wc.clone(),
                |f| trim_foreign(f, |o: &mut AntreaEgress| &mut o.metadata),
                Change::AntreaEgresses,
            ));
        }
        if let Some(ar) = &self.cilium_policy {
            let api = Api::<Foreign<CiliumPolicy>>::all_with(c.clone(), ar);
            streams.push(relay(
                api,
                wc,
                |f| trim_foreign(f, |o: &mut CiliumPolicy| &mut o.metadata),
                Change::CiliumPolicies,
            ));
        }
        futures::stream::select_all(streams).boxed()
    }

    /// Sends every change into `tx` until the receiver is dropped. Watch errors are logged and
    /// retried with backoff; they never end the source.
    pub async fn run(self, tx: mpsc::Sender<Change>) {
        let mut changes = self.changes();
        while let Some(change) = changes.next().await {
            if tx.send(change).await.is_err() {
                debug!("receiver gone, kubernetes source stops");
                return;
            }
        }
    }
}

/// Drops what no reader needs from metadata: managed fields and kubectl's copy of the object.
fn trim_meta(m: &mut ObjectMeta) {
    m.managed_fields = None;
    if let Some(a) = m.annotations.as_mut() {
        a.remove(LAST_APPLIED);
        if a.is_empty() {
            m.annotations = None;
        }
    }
}

fn trim_egress(mut e: Egress) -> Egress {
    trim_meta(&mut e.metadata);
    e
}

fn trim_pool(mut p: ExternalIPPool) -> ExternalIPPool {
    trim_meta(&mut p.metadata);
    p
}

fn trim_foreign<K>(f: Foreign<K>, meta: impl Fn(&mut K) -> &mut ObjectMeta) -> K {
    let mut k = f.0;
    trim_meta(meta(&mut k));
    k
}

/// Turns one kind's watcher events into [`Event`]s: `InitApply`s are gathered and emitted as
/// one `Reset` at `InitDone`. Pure, so it is tested without a server.
#[derive(Debug)]
pub struct Relay<T> {
    listing: Option<Vec<T>>,
    /// The highest resourceVersion of the objects of the listing in progress.
    listed: u64,
}

impl<T> Default for Relay<T> {
    fn default() -> Self {
        Relay { listing: None, listed: 0 }
    }
}

/// A change and the resourceVersion it brings the source to: that of the object for an apply or
/// a delete, the highest of the listed objects for a reset. resourceVersions are opaque to
/// clients; they are read as numbers where they are (etcd's revisions are, and the test double's),
/// and as 0 otherwise. The lab uses them to tell when every agent has seen a change.
#[derive(Debug, Clone)]
pub struct Versioned {
    /// The change.
    pub change: Change,
    /// Its resourceVersion (0 when not numeric).
    pub version: u64,
}

/// An object's resourceVersion as a number (0 when absent or not numeric).
pub fn version_of(m: &ObjectMeta) -> u64 {
    m.resource_version.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0)
}

impl<T> Relay<T> {
    /// The resourceVersion the next [`Relay::step`] with `ev` brings the source to (call it
    /// first: it also gathers the versions of a listing).
    pub fn version<K: Resource>(&mut self, ev: &watcher::Event<K>) -> u64 {
        match ev {
            watcher::Event::Init => {
                self.listed = 0;
                0
            }
            watcher::Event::InitApply(k) => {
                self.listed = self.listed.max(version_of(k.meta()));
                self.listed
            }
            watcher::Event::InitDone => self.listed,
            watcher::Event::Apply(k) | watcher::Event::Delete(k) => version_of(k.meta()),
        }
    }

    /// The event for one watcher event, if any.
    pub fn step<K: Resource>(&mut self, ev: watcher::Event<K>, convert: impl Fn(K) -> T) -> Option<Event<T>> {
        match ev {
            watcher::Event::Init => {
                self.listing = Some(Vec::new());
                None
            }
            watcher::Event::InitApply(k) => {
                self.listing.get_or_insert_with(Vec::new).push(convert(k));
                None
            }
            watcher::Event::InitDone => Some(Event::Reset(self.listing.take().unwrap_or_default())),
            watcher::Event::Apply(k) => Some(Event::Apply(convert(k))),
            watcher::Event::Delete(k) => Some(Event::Delete(object_ref(k.meta()))),
        }
    }
}

/// The identity of an object from its metadata.
pub fn object_ref(m: &ObjectMeta) -> ObjectRef {
    ObjectRef { namespace: m.namespace.clone(), name: m.name.clone().unwrap_or_default() }
}

/// One kind's watcher, relayed and tagged.
fn relay<K, T>(
    api: Api<K>,
    wc: watcher::Config,
    convert: fn(K) -> T,
    tag: fn(Event<T>) -> Change,
) -> BoxStream<'static, Versioned>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    T: Send + 'static,
{
    relay_with(watcher(api, wc), convert, tag)
}

fn relay_with<K, T>(
    w: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    convert: fn(K) -> T,
    tag: fn(Event<T>) -> Change,
) -> BoxStream<'static, Versioned>
where
    K: Resource + Send + 'static,
    T: Send + 'static,
{
    let kind = tag(Event::Reset(Vec::new())).kind();
    let mut state = Relay::<T>::default();
    w.default_backoff()
        .filter_map(move |r| {
            let out = match r {
                Ok(ev) => {
                    let version = state.version(&ev);
                    state.step(ev, convert).map(|e| Versioned { change: tag(e), version })
                }
                Err(e) => {
                    warn!(?kind, "watch: {e}");
                    None
                }
            };
            futures::future::ready(out)
        })
        .boxed()
}

#[cfg(test)]
#[path = "source_tests.rs"]
mod tests;
