//! The Kubernetes object source: one kube-rs watcher per kind, mapped onto
//! [`egret_core::event::Change`]s sent into a channel.
//!
//! Per kind the watcher lists (pages of 500), then watches from the list's resourceVersion with
//! bookmarks, resumes a broken watch from the last version seen, and relists after `410 Gone`;
//! kube-rs' default backoff spaces retries. Each (re)list becomes one [`Event::Reset`] with the
//! complete list, so whatever a relist no longer contains is removed downstream.

use crate::foreign::{ANTREA_GROUP, ANTREA_VERSIONS, CILIUM_GROUP, CILIUM_VERSIONS, Foreign};
use crate::keyset::KeySet;
use crate::lenient::Lenient;
use crate::slim::{SlimNamespace, SlimNode, SlimPod};
use egret_api::compat::{AntreaEgress, AntreaPool, CiliumPolicy};
use egret_api::v1alpha1::{ClusterEgressPolicy, Egress, EgressPolicy, ExternalIPPool};
use egret_core::event::{Change, Event, Kind, ObjectRef};
use futures::stream::{BoxStream, StreamExt};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::discovery::{ApiGroup, ApiResource};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
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
    /// Watch `networking.k8s.io/v1` NetworkPolicies (an agent that enforces their egress part).
    pub network_policies: bool,
    /// Watch only the pods of this node (field selector `spec.nodeName=NODE`).
    pub pods_on_node: Option<String>,
    /// Stream the Pods' listings: each listed pod as an `Apply` at once, the end of a listing as
    /// the `Delete`s of what it lacked and an [`Update::Synced`], instead of one `Reset` holding
    /// every pod (only [`Source::updates`] carries `Synced`).
    pub stream_pods: bool,
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
        let mut k =
            vec![Kind::Pool, Kind::Egress, Kind::Node, Kind::Namespace, Kind::Pod, Kind::ClusterPolicy, Kind::Policy];
        if self.antrea_pool.is_some() {
            k.push(Kind::AntreaPool);
        }
        if self.antrea_egress.is_some() {
            k.push(Kind::AntreaEgress);
        }
        if self.cilium_policy.is_some() {
            k.push(Kind::CiliumPolicy);
        }
        if self.config.network_policies {
            k.push(Kind::NetworkPolicy);
        }
        k.sort();
        k
    }

    /// The watch streams of every kind, merged (changes only).
    pub fn changes(&self) -> BoxStream<'static, Change> {
        self.updates()
            .filter_map(|u| {
                futures::future::ready(match u {
                    Update::Change(v) => Some(v.change),
                    Update::Unreadable { .. } | Update::Synced(_) => None,
                })
            })
            .boxed()
    }

    /// The watch streams of every kind, merged: each change with its resourceVersion, and the
    /// objects that start or stop failing to parse.
    pub fn updates(&self) -> BoxStream<'static, Update> {
        let c = &self.client;
        let wc = watcher::Config::default();
        let pods_wc = match &self.config.pods_on_node {
            Some(node) => wc.clone().fields(&format!("spec.nodeName={node}")),
            None => wc.clone(),
        };
        let mut streams = vec![
            relay(
                Api::<Lenient<ExternalIPPool>>::all(c.clone()),
                wc.clone(),
                |l| l.object.map(trimmed),
                Change::Pools,
                false,
            ),
            relay(
                Api::<Lenient<Egress>>::all(c.clone()),
                wc.clone(),
                |l| l.object.map(trimmed),
                Change::Egresses,
                false,
            ),
            relay(
                Api::<Lenient<ClusterEgressPolicy>>::all(c.clone()),
                wc.clone(),
                |l| l.object.map(trimmed),
                Change::ClusterPolicies,
                false,
            ),
            relay(
                Api::<Lenient<EgressPolicy>>::all(c.clone()),
                wc.clone(),
                |l| l.object.map(trimmed),
                Change::Policies,
                false,
            ),
            relay(Api::<SlimNode>::all(c.clone()), wc.clone(), |n| Ok(n.into()), Change::Nodes, false),
            relay(Api::<SlimNamespace>::all(c.clone()), wc.clone(), |n| Ok(n.into()), Change::Namespaces, false),
            relay(Api::<SlimPod>::all(c.clone()), pods_wc, |p| Ok(p.into()), Change::Pods, self.config.stream_pods),
        ];
        if self.config.network_policies {
            streams.push(relay(
                Api::<Lenient<NetworkPolicy>>::all(c.clone()),
                wc.clone(),
                |l| l.object.map(trimmed),
                Change::NetworkPolicies,
                false,
            ));
        }
        if let Some(ar) = &self.antrea_pool {
            let api = Api::<Lenient<Foreign<AntreaPool>>>::all_with(c.clone(), ar);
            streams.push(relay(
                api,
                wc.clone(),
                |l| l.object.map(|f| trim_foreign(f, |o: &mut AntreaPool| &mut o.metadata)),
                Change::AntreaPools,
                false,
            ));
        }
        if let Some(ar) = &self.antrea_egress {
            let api = Api::<Lenient<Foreign<AntreaEgress>>>::all_with(c.clone(), ar);
            streams.push(relay(
                api,
                wc.clone(),
                |l| l.object.map(|f| trim_foreign(f, |o: &mut AntreaEgress| &mut o.metadata)),
                Change::AntreaEgresses,
                false,
            ));
        }
        if let Some(ar) = &self.cilium_policy {
            let api = Api::<Lenient<Foreign<CiliumPolicy>>>::all_with(c.clone(), ar);
            streams.push(relay(
                api,
                wc,
                |l| l.object.map(|f| trim_foreign(f, |o: &mut CiliumPolicy| &mut o.metadata)),
                Change::CiliumPolicies,
                false,
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

/// One of Egret's kinds with its metadata trimmed.
fn trimmed<K: Resource>(mut k: K) -> K {
    trim_meta(k.meta_mut());
    k
}

fn trim_foreign<K>(f: Foreign<K>, meta: impl Fn(&mut K) -> &mut ObjectMeta) -> K {
    let mut k = f.0;
    trim_meta(meta(&mut k));
    k
}

/// Turns one kind's watcher events into [`Event`]s: `InitApply`s are gathered and emitted as
/// one `Reset` at `InitDone`. An object that does not convert (does not parse) is reported and
/// not passed on: the index keeps the version it has, and a relist keeps the last version that
/// converted, so the agent keeps its last good state for that object. Pure, so it is tested
/// without a server.
#[derive(Debug)]
pub struct Relay<T> {
    listing: Option<Vec<(ObjectRef, T)>>,
    /// Objects of the listing in progress that did not convert.
    listing_bad: Vec<(ObjectRef, String)>,
    /// The highest resourceVersion of the objects of the listing in progress.
    listed: u64,
    /// The last version of each object that converted (for kinds whose objects may fail to).
    /// Boxed: a map's table keeps room for more entries than it holds, and an Egress is large.
    last_good: HashMap<ObjectRef, Box<T>>,
    /// Objects that fail to convert now, and why.
    bad: HashMap<ObjectRef, String>,
    /// Streaming: each listed object goes out as an `Apply` at once, and the end of a listing
    /// deletes what it lacked, so no list is ever held whole (for Pods, the large kind).
    stream: Option<Streamed>,
}

/// What a streaming relay remembers: the identities of the objects that exist, and of those
/// the listing in progress has sent so far (a few dozen bytes an object, not a copy of it).
#[derive(Debug, Default)]
struct Streamed {
    known: KeySet,
    listing: KeySet,
}

/// An object's identity as one string: `namespace/name` (exact: a namespace holds no `/`).
fn key(r: &ObjectRef) -> String {
    format!("{}/{}", r.namespace.as_deref().unwrap_or(""), r.name)
}

fn unkey(k: &str) -> ObjectRef {
    let (ns, name) = k.split_once('/').unwrap_or(("", k));
    ObjectRef { namespace: (!ns.is_empty()).then(|| ns.to_string()), name: name.to_string() }
}

impl<T> Default for Relay<T> {
    fn default() -> Self {
        Relay {
            listing: None,
            listing_bad: Vec::new(),
            listed: 0,
            last_good: HashMap::new(),
            bad: HashMap::new(),
            stream: None,
        }
    }
}

impl<T> Relay<T> {
    /// A relay that streams listings (see [`Relay::step`]).
    pub fn streaming() -> Relay<T> {
        Relay { stream: Some(Streamed::default()), ..Relay::default() }
    }
}

/// What one watcher event gives.
#[derive(Debug, Clone, PartialEq)]
pub enum Step<T> {
    /// An event for the index.
    Event(Event<T>),
    /// An object started failing to convert (`Some(why)`) or stopped (`None`).
    Unreadable(ObjectRef, Option<String>),
    /// A streamed listing is complete (its applies and deletes are out).
    Synced,
}

/// What the source emits.
#[derive(Debug, Clone)]
pub enum Update {
    /// A change for the index (boxed: changes are large, reports small).
    Change(Box<Versioned>),
    /// An object of `kind` started failing to parse (`reason` is `Some`), with the field and
    /// why, or stopped (`None`: it parses again, or is gone). Until it parses again, the index
    /// keeps its last good version.
    Unreadable {
        /// Its kind.
        kind: Kind,
        /// The object.
        object: ObjectRef,
        /// Why, or `None` once readable again.
        reason: Option<String>,
    },
    /// A kind that streams its listings (Pods) has sent a complete listing as applies and
    /// deletes: its initial sync is over (see `egret_core::index::Index::mark_synced`).
    Synced(Kind),
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

impl<T: Clone> Relay<T> {
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

    /// What one watcher event gives. `convert` fails for an object that does not parse; only
    /// kinds whose conversion can fail pay for remembering last good versions.
    pub fn step<K: Resource>(
        &mut self,
        ev: watcher::Event<K>,
        convert: impl Fn(K) -> Result<T, String>,
        may_fail: bool,
    ) -> Vec<Step<T>> {
        match ev {
            watcher::Event::Init => {
                self.listing = Some(Vec::new());
                self.listing_bad.clear();
                if let Some(st) = &mut self.stream {
                    st.listing.clear();
                }
                Vec::new()
            }
            watcher::Event::InitApply(k) if self.stream.is_some() => {
                let r = object_ref(k.meta());
                if let Some(st) = &mut self.stream {
                    st.listing.insert(&key(&r));
                }
                match convert(k) {
                    Ok(t) => vec![Step::Event(Event::Apply(t))],
                    Err(why) => {
                        self.listing_bad.push((r, why));
                        Vec::new()
                    }
                }
            }
            watcher::Event::InitDone if self.stream.is_some() => {
                let mut out = Vec::new();
                if let Some(st) = &mut self.stream {
                    let listed = std::mem::take(&mut st.listing);
                    out.extend(
                        st.known.iter().filter(|k| !listed.contains(k)).map(|k| Step::Event(Event::Delete(unkey(k)))),
                    );
                    st.known = listed;
                }
                self.listing = None;
                out.push(Step::Synced);
                out.extend(self.settle_bad());
                out
            }
            watcher::Event::InitApply(k) => {
                let r = object_ref(k.meta());
                let listing = self.listing.get_or_insert_with(Vec::new);
                match convert(k) {
                    Ok(t) => listing.push((r, t)),
                    Err(why) => {
                        if let Some(good) = self.last_good.get(&r) {
                            listing.push((r.clone(), T::clone(good)));
                        }
                        self.listing_bad.push((r, why));
                    }
                }
                Vec::new()
            }
            watcher::Event::InitDone => {
                let list = self.listing.take().unwrap_or_default();
                if may_fail {
                    self.last_good = list.iter().map(|(r, t)| (r.clone(), Box::new(t.clone()))).collect();
                }
                let mut out = vec![Step::Event(Event::Reset(list.into_iter().map(|(_, t)| t).collect()))];
                out.extend(self.settle_bad());
                out
            }
            watcher::Event::Apply(k) => {
                let r = object_ref(k.meta());
                if let Some(st) = &mut self.stream {
                    st.known.insert(&key(&r));
                }
                match convert(k) {
                    Ok(t) => {
                        if may_fail {
                            self.last_good.insert(r.clone(), Box::new(t.clone()));
                        }
                        let mut out = vec![Step::Event(Event::Apply(t))];
                        if self.bad.remove(&r).is_some() {
                            out.push(Step::Unreadable(r, None));
                        }
                        out
                    }
                    Err(why) if self.bad.get(&r) == Some(&why) => Vec::new(),
                    Err(why) => {
                        self.bad.insert(r.clone(), why.clone());
                        vec![Step::Unreadable(r, Some(why))]
                    }
                }
            }
            watcher::Event::Delete(k) => {
                let r = object_ref(k.meta());
                self.last_good.remove(&r);
                if let Some(st) = &mut self.stream {
                    st.known.remove(&key(&r));
                }
                let mut out = vec![Step::Event(Event::Delete(r.clone()))];
                if self.bad.remove(&r).is_some() {
                    out.push(Step::Unreadable(r, None));
                }
                out
            }
        }
    }
}

impl<T> Relay<T> {
    /// At the end of a listing: the reports of objects that started or stopped failing.
    fn settle_bad(&mut self) -> Vec<Step<T>> {
        let mut out = Vec::new();
        let now: HashMap<ObjectRef, String> = std::mem::take(&mut self.listing_bad).into_iter().collect();
        for (r, why) in &now {
            if self.bad.get(r) != Some(why) {
                out.push(Step::Unreadable(r.clone(), Some(why.clone())));
            }
        }
        for r in self.bad.keys().filter(|r| !now.contains_key(*r)) {
            out.push(Step::Unreadable(r.clone(), None));
        }
        self.bad = now;
        out
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
    convert: fn(K) -> Result<T, String>,
    tag: fn(Event<T>) -> Change,
    stream: bool,
) -> BoxStream<'static, Update>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    T: Clone + Send + 'static,
{
    relay_with(watcher(api, wc), convert, tag, stream)
}

fn relay_with<K, T>(
    w: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    convert: fn(K) -> Result<T, String>,
    tag: fn(Event<T>) -> Change,
    stream: bool,
) -> BoxStream<'static, Update>
where
    K: Resource + Send + 'static,
    T: Clone + Send + 'static,
{
    let kind = tag(Event::Reset(Vec::new())).kind();
    // Pods, Nodes and Namespaces parse into slim types that accept whatever the API serves.
    let may_fail = !matches!(kind, Kind::Pod | Kind::Node | Kind::Namespace);
    let mut state = if stream { Relay::<T>::streaming() } else { Relay::<T>::default() };
    w.default_backoff()
        .flat_map(move |r| {
            let out: Vec<Update> = match r {
                Ok(ev) => {
                    let version = state.version(&ev);
                    state
                        .step(ev, convert, may_fail)
                        .into_iter()
                        .map(|s| match s {
                            Step::Event(e) => Update::Change(Box::new(Versioned { change: tag(e), version })),
                            Step::Synced => Update::Synced(kind),
                            Step::Unreadable(object, reason) => {
                                match &reason {
                                    Some(why) => warn!(
                                        ?kind,
                                        object = %object,
                                        "does not parse: {why}; keeping its last good version"
                                    ),
                                    None => info!(?kind, object = %object, "parses again (or is gone)"),
                                }
                                Update::Unreadable { kind, object, reason }
                            }
                        })
                        .collect()
                }
                Err(e) => {
                    warn!(?kind, "watch: {e}");
                    Vec::new()
                }
            };
            futures::stream::iter(out)
        })
        .boxed()
}

#[cfg(test)]
#[path = "source_tests.rs"]
mod tests;
