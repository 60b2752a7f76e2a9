//! An in-process **test double of the API server**, for testing the real kube-rs code paths
//! (watcher, discovery, patches, Leases, Events) without a cluster.
//!
//! It serves HTTP on `127.0.0.1` (random port) and holds objects per resource in memory with a
//! global resourceVersion counter. What it speaks:
//!
//! - discovery: `GET /api`, `/api/v1`, `/apis`, `/apis/GROUP/VERSION` for the resources it serves
//!   ([`ResourceDef`]; [`TestServer::serve`] adds one, e.g. a foreign CRD);
//! - list: a `*List` with `metadata.resourceVersion`, `limit`/`continue` (offset tokens; the
//!   pages are not a snapshot), `fieldSelector` (`path=value`, `path!=value`, comma-separated);
//! - watch: `?watch=true&resourceVersion=N&allowWatchBookmarks=true`, a chunked stream of
//!   newline-delimited `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":…}`; a field
//!   selector turns an object entering or leaving it into `ADDED`/`DELETED` like the real one;
//!   a watch from a version older than the last [`TestServer::compact`] gets an `ERROR` event
//!   with a `410` Status (as the real server sends it), leading the client to relist;
//! - `GET`/`POST`/`PUT`/`DELETE` of objects, `PUT` of the `status` subresource, with
//!   resourceVersion optimistic concurrency (`409 Conflict` on a stale one);
//! - `PATCH`: server-side apply (`application/apply-patch+yaml`, `fieldManager` required,
//!   `force`) merging the patch (on `/status`: only `status`), returning `409 Conflict` while
//!   the test says another manager owns the fields ([`TestServer::claim_fields`]) unless forced;
//!   JSON merge patch and strategic merge patch (treated as a merge patch).
//!
//! The test steers it directly: [`TestServer::put`] / [`TestServer::remove`] objects,
//! [`TestServer::break_watches`] (connections drop), [`TestServer::partition`] /
//! [`TestServer::heal`] (new watches hang until healed), [`TestServer::compact`],
//! [`TestServer::bookmark`], and [`TestServer::requests`] lists every call made to it.

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::stream::Stream;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// A resource the double serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceDef {
    /// API group (`""` for core).
    pub group: String,
    /// Version.
    pub version: String,
    /// Plural (the URL segment).
    pub plural: String,
    /// Kind.
    pub kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
}

impl ResourceDef {
    /// A resource definition.
    pub fn new(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> ResourceDef {
        ResourceDef {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            kind: kind.into(),
            namespaced,
        }
    }

    fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    fn prefix(&self) -> String {
        if self.group.is_empty() {
            format!("api/{}", self.version)
        } else {
            format!("apis/{}/{}", self.group, self.version)
        }
    }

    fn key(&self) -> String {
        format!("{}/{}", self.prefix(), self.plural)
    }
}

/// What the double serves from the start: the kinds Egret always uses.
fn default_resources() -> Vec<ResourceDef> {
    vec![
        ResourceDef::new("", "v1", "pods", "Pod", true),
        ResourceDef::new("", "v1", "nodes", "Node", false),
        ResourceDef::new("", "v1", "namespaces", "Namespace", false),
        ResourceDef::new("egret.dev", "v1alpha1", "egresses", "Egress", false),
        ResourceDef::new("egret.dev", "v1alpha1", "externalippools", "ExternalIPPool", false),
        ResourceDef::new("egret.dev", "v1alpha1", "clusteregresspolicies", "ClusterEgressPolicy", false),
        ResourceDef::new("egret.dev", "v1alpha1", "egresspolicies", "EgressPolicy", true),
        ResourceDef::new("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", true),
        ResourceDef::new("coordination.k8s.io", "v1", "leases", "Lease", true),
        ResourceDef::new("events.k8s.io", "v1", "events", "Event", true),
    ]
}

/// One request the double received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Query parameters.
    pub query: BTreeMap<String, String>,
    /// `Content-Type`, if any.
    pub content_type: Option<String>,
}

impl Request {
    /// Whether this is a watch.
    pub fn is_watch(&self) -> bool {
        self.query.get("watch").is_some_and(|w| w == "true" || w == "1")
    }
}

/// What watchers wake up on.
#[derive(Debug, Clone, Copy, Default)]
struct Tick {
    rv: u64,
    generation: u64,
    bookmarks: u64,
    partitioned: bool,
}

struct Logged {
    rv: u64,
    key: String,
    type_: &'static str,
    old: Option<Value>,
    new: Value,
}

/// (namespace or "", name) -> object
type Objects = BTreeMap<(String, String), Value>;

#[derive(Default)]
struct Inner {
    rv: u64,
    compacted: u64,
    resources: Vec<ResourceDef>,
    objects: BTreeMap<String, Objects>,
    log: Vec<Logged>,
    requests: Vec<Request>,
    /// open watch streams per path
    open_watches: BTreeMap<String, usize>,
    /// BOOKMARK events queued on watch streams so far
    bookmarks_queued: u64,
    /// object path -> manager that owns its fields (until an apply forces them over)
    claims: BTreeMap<String, String>,
}

struct Shared {
    inner: Mutex<Inner>,
    tick: watch::Sender<Tick>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self, f: impl FnOnce(&mut Tick)) {
        self.tick.send_modify(f);
    }
}

/// The test double of the API server. Dropping it stops the server.
pub struct TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Errors of the double's own (test-side) operations.
#[derive(Debug, thiserror::Error)]
pub enum TestServerError {
    /// Binding or serving failed.
    #[error("test server I/O")]
    Io(#[from] std::io::Error),
    /// The object's apiVersion/kind is not served.
    #[error("{0} is not served by the test double")]
    NotServed(String),
    /// The object has no name.
    #[error("object without metadata.name")]
    NoName,
    /// The client could not be built.
    #[error("building a client")]
    Client(#[source] kube::Error),
    /// The YAML did not parse.
    #[error("parsing an object")]
    Parse(#[source] serde_yaml_ng::Error),
}

/// A kubeconfig whose current context points at the plain-HTTP server `url` (a test double
/// of the API server) with a placeholder token.
pub fn kubeconfig(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: double\nclusters:\n- name: double\n  cluster: {{server: \"{url}\"}}\ncontexts:\n- name: double\n  context: {{cluster: double, user: double}}\nusers:\n- name: double\n  user: {{token: double}}\n"
    )
}

impl TestServer {
    /// Starts the double on a random port of 127.0.0.1.
    pub async fn start() -> Result<TestServer, TestServerError> {
        TestServer::start_on(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts the double on `addr`.
    pub async fn start_on(addr: std::net::SocketAddr) -> Result<TestServer, TestServerError> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (tick, _) = watch::channel(Tick::default());
        let shared =
            Arc::new(Shared { inner: Mutex::new(Inner { resources: default_resources(), ..Inner::default() }), tick });
        let app = axum::Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!("test server: {e}");
            }
        });
        Ok(TestServer { addr, shared, task })
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for this server (see [`kubeconfig`]).
    pub fn kubeconfig(&self) -> String {
        kubeconfig(&self.url())
    }

    /// A kube-rs client pointed at the double through a `kube::Config` with its URL.
    pub fn client(&self) -> Result<kube::Client, TestServerError> {
        let uri: axum::http::Uri = self.url().parse().map_err(|_| TestServerError::NotServed(self.url()))?;
        kube::Client::try_from(kube::Config::new(uri)).map_err(TestServerError::Client)
    }

    /// Serves the foreign kinds Egret reads, as if Antrea's (`crd.antrea.io/v1beta1` Egress and
    /// ExternalIPPool) and Cilium's (`cilium.io/v2` CiliumEgressGatewayPolicy) CRDs were installed.
    pub fn serve_foreign_crds(&self) {
        self.serve(ResourceDef::new("crd.antrea.io", "v1beta1", "egresses", "Egress", false));
        self.serve(ResourceDef::new("crd.antrea.io", "v1beta1", "externalippools", "ExternalIPPool", false));
        self.serve(ResourceDef::new(
            "cilium.io",
            "v2",
            "ciliumegressgatewaypolicies",
            "CiliumEgressGatewayPolicy",
            false,
        ));
    }

    /// Serves one more resource (e.g. a foreign CRD being installed).
    pub fn serve(&self, def: ResourceDef) {
        let mut inner = self.shared.lock();
        if !inner.resources.contains(&def) {
            inner.resources.push(def);
        }
    }

    /// Creates or replaces an object (found by its apiVersion and kind); returns the new
    /// resourceVersion. Watchers see ADDED or MODIFIED.
    pub fn put(&self, mut obj: Value) -> Result<u64, TestServerError> {
        let (def, ns, name) = {
            let inner = self.shared.lock();
            locate(&inner, &obj)?
        };
        let rv = {
            let mut inner = self.shared.lock();
            if let Some(o) = obj.as_object_mut() {
                o.insert("apiVersion".into(), json!(def.api_version()));
                o.insert("kind".into(), json!(def.kind));
            }
            write(&mut inner, &def, &ns, &name, obj)
        };
        self.shared.bump(|t| t.rv = rv);
        Ok(rv)
    }

    /// [`TestServer::put`] that keeps the stored object's `status`, as an update of the main
    /// resource does on a real API server (status is written through its subresource only).
    pub fn put_spec(&self, mut obj: Value) -> Result<u64, TestServerError> {
        let rv = {
            let mut inner = self.shared.lock();
            let (def, ns, name) = locate(&inner, &obj)?;
            let status = inner
                .objects
                .get(&def.key())
                .and_then(|m| m.get(&(ns.clone(), name.clone())))
                .and_then(|o| o.get("status"))
                .cloned();
            if let Some(o) = obj.as_object_mut() {
                match status {
                    Some(st) => o.insert("status".into(), st),
                    None => o.remove("status"),
                };
            }
            write(&mut inner, &def, &ns, &name, obj)
        };
        self.shared.bump(|t| t.rv = rv);
        Ok(rv)
    }

    /// [`TestServer::put`] of a YAML document.
    pub fn put_yaml(&self, yaml: &str) -> Result<u64, TestServerError> {
        let v: Value = serde_yaml_ng::from_str(yaml).map_err(TestServerError::Parse)?;
        self.put(v)
    }

    /// Removes an object; watchers see DELETED. Returns whether it existed.
    pub fn remove(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> bool {
        self.remove_versioned(api_version, kind, namespace, name).is_some()
    }

    /// [`TestServer::remove`] that returns the resourceVersion of the deletion.
    pub fn remove_versioned(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Option<u64> {
        let rv = {
            let mut inner = self.shared.lock();
            let def = inner.resources.iter().find(|d| d.api_version() == api_version && d.kind == kind).cloned()?;
            delete(&mut inner, &def, namespace.unwrap_or(""), name)?
        };
        self.shared.bump(|t| t.rv = rv);
        Some(rv)
    }

    /// An object as stored.
    pub fn get(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let inner = self.shared.lock();
        let def = inner.resources.iter().find(|d| d.api_version() == api_version && d.kind == kind)?;
        inner.objects.get(&def.key())?.get(&(namespace.unwrap_or("").to_string(), name.to_string())).cloned()
    }

    /// Every stored object of a kind.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let inner = self.shared.lock();
        let Some(def) = inner.resources.iter().find(|d| d.api_version() == api_version && d.kind == kind) else {
            return Vec::new();
        };
        inner.objects.get(&def.key()).map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// Forgets the history up to now: a watch from an older resourceVersion gets `410 Gone`.
    /// Open watches that have not yet sent every event miss the forgotten ones: to make a
    /// client miss changes and relist, [`TestServer::partition`] first, change, compact, heal.
    pub fn compact(&self) {
        let mut inner = self.shared.lock();
        inner.compacted = inner.rv;
        inner.log.clear();
    }

    /// Drops every open watch connection (the client resumes from its last resourceVersion).
    pub fn break_watches(&self) {
        self.shared.bump(|t| t.generation += 1);
    }

    /// Drops every open watch and holds new ones without a byte until [`TestServer::heal`].
    pub fn partition(&self) {
        self.shared.bump(|t| {
            t.generation += 1;
            t.partitioned = true;
        });
    }

    /// Ends a [`TestServer::partition`].
    pub fn heal(&self) {
        self.shared.bump(|t| t.partitioned = false);
    }

    /// Sends a BOOKMARK with the current resourceVersion on every watch that allows them.
    pub fn bookmark(&self) {
        self.shared.bump(|t| t.bookmarks += 1);
    }

    /// Another field manager owns the fields of this object (path like
    /// `/apis/egret.dev/v1alpha1/egresses/NAME`): server-side apply to it, or to its
    /// subresources, answers `409 Conflict` unless forced.
    pub fn claim_fields(&self, object_path: &str, manager: &str) {
        self.shared.lock().claims.insert(object_path.trim_end_matches('/').to_string(), manager.to_string());
    }

    /// How many BOOKMARK events watch streams have queued (a queued event is sent before the
    /// connection can be broken).
    pub fn bookmarks_queued(&self) -> u64 {
        self.shared.lock().bookmarks_queued
    }

    /// Watch streams open on this path (a break or partition affects only open ones).
    pub fn open_watches(&self, path: &str) -> usize {
        self.shared.lock().open_watches.get(path).copied().unwrap_or(0)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }
}

/// The resource, namespace and name of an object.
fn locate(inner: &Inner, obj: &Value) -> Result<(ResourceDef, String, String), TestServerError> {
    let av = obj.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    let def = inner
        .resources
        .iter()
        .find(|d| d.api_version() == av && d.kind == kind)
        .cloned()
        .ok_or_else(|| TestServerError::NotServed(format!("{av} {kind}")))?;
    let meta = obj.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str).ok_or(TestServerError::NoName)?.to_string();
    let ns = if def.namespaced {
        meta.and_then(|m| m.get("namespace")).and_then(Value::as_str).unwrap_or("default").to_string()
    } else {
        String::new()
    };
    Ok((def, ns, name))
}

/// Stores an object (creating or replacing), logs the event; returns the new resourceVersion.
fn write(inner: &mut Inner, def: &ResourceDef, ns: &str, name: &str, mut obj: Value) -> u64 {
    inner.rv += 1;
    let rv = inner.rv;
    let key = def.key();
    let old = inner.objects.get(&key).and_then(|m| m.get(&(ns.to_string(), name.to_string()))).cloned();
    if let Some(o) = obj.as_object_mut() {
        o.insert("apiVersion".into(), json!(def.api_version()));
        o.insert("kind".into(), json!(def.kind));
        let meta = o.entry("metadata").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            m.insert("name".into(), json!(name));
            if def.namespaced {
                m.insert("namespace".into(), json!(ns));
            } else {
                m.remove("namespace");
            }
            m.insert("resourceVersion".into(), json!(rv.to_string()));
            let old_meta = old.as_ref().and_then(|o| o.get("metadata"));
            for carried in ["uid", "creationTimestamp"] {
                match old_meta.and_then(|om| om.get(carried)) {
                    Some(v) => {
                        m.insert(carried.into(), v.clone());
                    }
                    None => {
                        m.entry(carried).or_insert_with(|| match carried {
                            "uid" => json!(format!("00000000-0000-0000-0000-{rv:012}")),
                            _ => json!(k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
                        });
                    }
                }
            }
        }
    }
    let type_ = if old.is_some() { "MODIFIED" } else { "ADDED" };
    inner.objects.entry(key.clone()).or_default().insert((ns.to_string(), name.to_string()), obj.clone());
    inner.log.push(Logged { rv, key, type_, old, new: obj });
    rv
}

/// Removes an object and logs the event; `None` when absent.
fn delete(inner: &mut Inner, def: &ResourceDef, ns: &str, name: &str) -> Option<u64> {
    let key = def.key();
    let mut obj = inner.objects.get_mut(&key)?.remove(&(ns.to_string(), name.to_string()))?;
    inner.rv += 1;
    let rv = inner.rv;
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), json!(rv.to_string()));
    }
    inner.log.push(Logged { rv, key, type_: "DELETED", old: Some(obj.clone()), new: obj });
    Some(rv)
}

/// A parsed request path.
#[derive(Debug)]
struct Target {
    def: ResourceDef,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

enum Route {
    CoreVersions,
    Groups,
    Resources(String, String),
    Resource(Target),
    NotFound,
}

fn route(inner: &Inner, path: &str) -> Route {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api"] => return Route::CoreVersions,
        ["apis"] => return Route::Groups,
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Route::NotFound,
    };
    if rest.is_empty() {
        return Route::Resources(group.to_string(), version.to_string());
    }
    let (ns, plural, name, sub) = match rest {
        ["namespaces", ns, plural, more @ ..] if more.len() <= 2 => {
            (Some(ns.to_string()), *plural, more.first().map(|s| s.to_string()), more.get(1).map(|s| s.to_string()))
        }
        [plural, more @ ..] if more.len() <= 2 => {
            (None, *plural, more.first().map(|s| s.to_string()), more.get(1).map(|s| s.to_string()))
        }
        _ => return Route::NotFound,
    };
    match inner.resources.iter().find(|d| d.group == group && d.version == version && d.plural == plural) {
        Some(def) if def.namespaced || ns.is_none() => Route::Resource(Target { def: def.clone(), ns, name, sub }),
        _ => Route::NotFound,
    }
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    let sc = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (sc, [("content-type", "application/json")], body.to_string()).into_response()
}

fn ok_json(code: StatusCode, v: &Value) -> Response {
    (code, [("content-type", "application/json")], v.to_string()).into_response()
}

/// A field selector: `path=value`, `path==value`, `path!=value`, comma-separated.
fn field_matches(selector: Option<&String>, obj: &Value) -> bool {
    let Some(sel) = selector else { return true };
    sel.split(',').filter(|t| !t.is_empty()).all(|term| {
        let (path, want, negate) = if let Some((p, v)) = term.split_once("!=") {
            (p, v, true)
        } else if let Some((p, v)) = term.split_once("==") {
            (p, v, false)
        } else if let Some((p, v)) = term.split_once('=') {
            (p, v, false)
        } else {
            return false;
        };
        let got = path.split('.').try_fold(obj, |o, k| o.get(k)).and_then(Value::as_str).unwrap_or("");
        (got == want) != negate
    })
}

fn in_scope(t: &Target, obj: &Value) -> bool {
    match &t.ns {
        Some(ns) => obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns.as_str()),
        None => true,
    }
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn object_path(t: &Target) -> String {
    let ns = t.ns.as_ref().map(|n| format!("namespaces/{n}/")).unwrap_or_default();
    format!("/{}/{ns}{}/{}", t.def.prefix(), t.def.plural, t.name.as_deref().unwrap_or(""))
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string);
    let req = Request {
        method: method.to_string(),
        path: path.clone(),
        query: query.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        content_type: content_type.clone(),
    };
    let watch = req.is_watch();
    shared.lock().requests.push(req);
    let route = route(&shared.lock(), &path);
    match route {
        Route::CoreVersions => ok_json(StatusCode::OK, &json!({"kind": "APIVersions", "versions": ["v1"]})),
        Route::Groups => ok_json(StatusCode::OK, &groups(&shared.lock())),
        Route::Resources(g, v) => match resources(&shared.lock(), &g, &v) {
            Some(list) => ok_json(StatusCode::OK, &list),
            None => status(404, "NotFound", "the server could not find the requested resource"),
        },
        Route::NotFound => status(404, "NotFound", "the server could not find the requested resource"),
        Route::Resource(t) => {
            if method == Method::GET && t.name.is_none() && watch {
                return watch_response(shared, t, path, query);
            }
            let (resp, rv) = {
                let mut inner = shared.lock();
                resource_call(&mut inner, &method, &t, &query, content_type.as_deref(), &body)
            };
            if let Some(rv) = rv {
                shared.bump(|tk| tk.rv = rv);
            }
            resp
        }
    }
}

fn groups(inner: &Inner) -> Value {
    let mut by_group: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for d in inner.resources.iter().filter(|d| !d.group.is_empty()) {
        by_group.entry(&d.group).or_default().insert(&d.version);
    }
    let groups: Vec<Value> = by_group
        .iter()
        .map(|(g, vs)| {
            let versions: Vec<Value> =
                vs.iter().rev().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect();
            json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resources(inner: &Inner, group: &str, version: &str) -> Option<Value> {
    let defs: Vec<&ResourceDef> = inner.resources.iter().filter(|d| d.group == group && d.version == version).collect();
    if defs.is_empty() {
        return None;
    }
    let mut list = Vec::new();
    for d in &defs {
        let verbs = json!(["create", "delete", "get", "list", "patch", "update", "watch"]);
        list.push(
            json!({"name": d.plural, "singularName": "", "namespaced": d.namespaced, "kind": d.kind, "verbs": verbs}),
        );
        list.push(json!({"name": format!("{}/status", d.plural), "singularName": "", "namespaced": d.namespaced, "kind": d.kind, "verbs": ["get", "patch", "update"]}));
    }
    let gv = defs[0].api_version();
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}))
}

/// Every non-watch call on a resource. Returns the response and the new resourceVersion if
/// something was written.
fn resource_call(
    inner: &mut Inner,
    method: &Method,
    t: &Target,
    query: &HashMap<String, String>,
    content_type: Option<&str>,
    body: &[u8],
) -> (Response, Option<u64>) {
    let key = t.def.key();
    let ns = t.ns.clone().unwrap_or_default();
    match (method, &t.name) {
        (&Method::GET, None) => (list(inner, t, query), None),
        (&Method::POST, None) => {
            let Ok(obj) = serde_json::from_slice::<Value>(body) else {
                return (status(400, "BadRequest", "body is not JSON"), None);
            };
            let Some(name) = obj.pointer("/metadata/name").and_then(Value::as_str).map(str::to_string) else {
                return (status(422, "Invalid", "metadata.name: Required value"), None);
            };
            if inner.objects.get(&key).is_some_and(|m| m.contains_key(&(ns.clone(), name.clone()))) {
                let msg = format!("{} \"{name}\" already exists", t.def.plural);
                return (status(409, "AlreadyExists", &msg), None);
            }
            let rv = write(inner, &t.def, &ns, &name, obj);
            let stored = inner.objects.get(&key).and_then(|m| m.get(&(ns, name))).cloned().unwrap_or_default();
            (ok_json(StatusCode::CREATED, &stored), Some(rv))
        }
        (_, Some(name)) => {
            let id = (ns.clone(), name.clone());
            let current = inner.objects.get(&key).and_then(|m| m.get(&id)).cloned();
            let not_found = || status(404, "NotFound", &format!("{} \"{name}\" not found", t.def.plural));
            let sub = t.sub.as_deref();
            if sub.is_some_and(|s| s != "status") {
                return (not_found(), None);
            }
            match *method {
                Method::GET => match current {
                    Some(o) => (ok_json(StatusCode::OK, &o), None),
                    None => (not_found(), None),
                },
                Method::DELETE => match delete(inner, &t.def, &ns, name) {
                    Some(rv) => (ok_json(StatusCode::OK, &json!({"kind": "Status", "status": "Success"})), Some(rv)),
                    None => (not_found(), None),
                },
                Method::PUT => {
                    let Some(cur) = current else { return (not_found(), None) };
                    let Ok(obj) = serde_json::from_slice::<Value>(body) else {
                        return (status(400, "BadRequest", "body is not JSON"), None);
                    };
                    if let Some(conflict) = stale(&cur, &obj, &t.def, name) {
                        return (conflict, None);
                    }
                    let new = if sub == Some("status") {
                        let mut n = cur.clone();
                        if let Some(o) = n.as_object_mut() {
                            o.insert("status".into(), obj.get("status").cloned().unwrap_or(Value::Null));
                        }
                        n
                    } else {
                        let mut n = obj;
                        if let (Some(o), Some(s)) = (n.as_object_mut(), cur.get("status")) {
                            o.insert("status".into(), s.clone());
                        }
                        n
                    };
                    let rv = write(inner, &t.def, &ns, name, new);
                    let stored = inner.objects.get(&key).and_then(|m| m.get(&id)).cloned().unwrap_or_default();
                    (ok_json(StatusCode::OK, &stored), Some(rv))
                }
                Method::PATCH => patch(inner, t, name, current, query, content_type, body),
                _ => (status(405, "MethodNotAllowed", "method not allowed"), None),
            }
        }
        _ => (status(405, "MethodNotAllowed", "method not allowed"), None),
    }
}

/// `409 Conflict` when `obj` names a resourceVersion other than the stored one.
fn stale(cur: &Value, obj: &Value, def: &ResourceDef, name: &str) -> Option<Response> {
    let want = obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).filter(|s| !s.is_empty())?;
    let have = cur.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("");
    (want != have).then(|| {
        let msg = format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            def.plural
        );
        status(409, "Conflict", &msg)
    })
}

fn patch(
    inner: &mut Inner,
    t: &Target,
    name: &str,
    current: Option<Value>,
    query: &HashMap<String, String>,
    content_type: Option<&str>,
    body: &[u8],
) -> (Response, Option<u64>) {
    let ns = t.ns.clone().unwrap_or_default();
    let ct = content_type.unwrap_or("").split(';').next().unwrap_or("").trim();
    let status_only = t.sub.as_deref() == Some("status");
    let parsed: Option<Value> = match ct {
        "application/apply-patch+yaml" => serde_json::from_slice(body)
            .ok()
            .or_else(|| std::str::from_utf8(body).ok().and_then(|s| serde_yaml_ng::from_str(s).ok())),
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => serde_json::from_slice(body).ok(),
        _ => return (status(415, "UnsupportedMediaType", &format!("unsupported patch type {ct:?}")), None),
    };
    let Some(p) = parsed else { return (status(400, "BadRequest", "patch body does not parse"), None) };
    if let Some(cur) = &current
        && let Some(conflict) = stale(cur, &p, &t.def, name)
    {
        return (conflict, None);
    }
    let mut obj = match (current, ct) {
        (Some(c), _) => c,
        // Server-side apply creates; the other patches need an object.
        (None, "application/apply-patch+yaml") if !status_only => json!({"metadata": {"name": name}}),
        (None, _) => return (status(404, "NotFound", &format!("{} \"{name}\" not found", t.def.plural)), None),
    };
    if ct == "application/apply-patch+yaml" {
        let Some(manager) = query.get("fieldManager").filter(|m| !m.is_empty()) else {
            return (status(400, "BadRequest", "PATCH with apply requires fieldManager"), None);
        };
        let force = query.get("force").is_some_and(|f| f == "true");
        let opath = object_path(t);
        match inner.claims.get(&opath) {
            Some(owner) if owner != manager && !force => {
                let msg = format!("Apply failed with 1 conflict: conflict with \"{owner}\": .status");
                return (status(409, "Conflict", &msg), None);
            }
            Some(_) => {
                inner.claims.remove(&opath);
            }
            None => {}
        }
    }
    if status_only {
        let mut s = obj.get("status").cloned().unwrap_or(json!({}));
        merge(&mut s, p.get("status").unwrap_or(&json!({})));
        if let Some(o) = obj.as_object_mut() {
            o.insert("status".into(), s);
        }
    } else {
        let mut p = p;
        if let Some(o) = p.as_object_mut() {
            o.remove("status");
            if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
        }
        merge(&mut obj, &p);
    }
    let rv = write(inner, &t.def, &ns, name, obj);
    let stored = inner.objects.get(&t.def.key()).and_then(|m| m.get(&(ns, name.to_string()))).cloned();
    (ok_json(StatusCode::OK, &stored.unwrap_or_default()), Some(rv))
}

fn list(inner: &Inner, t: &Target, query: &HashMap<String, String>) -> Response {
    let sel = query.get("fieldSelector");
    let all: Vec<&Value> = inner
        .objects
        .get(&t.def.key())
        .into_iter()
        .flat_map(|m| m.values())
        .filter(|o| in_scope(t, o) && field_matches(sel, o))
        .collect();
    let offset: usize = query.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
    let limit: usize = query.get("limit").and_then(|l| l.parse().ok()).filter(|&l| l > 0).unwrap_or(usize::MAX);
    let items: Vec<Value> = all.iter().skip(offset).take(limit).map(|v| (*v).clone()).collect();
    let mut meta = json!({"resourceVersion": inner.rv.to_string()});
    let next = offset.saturating_add(items.len());
    if next < all.len() {
        meta["continue"] = json!(next.to_string());
    }
    let body = json!({"apiVersion": t.def.api_version(), "kind": format!("{}List", t.def.kind), "metadata": meta, "items": items});
    ok_json(StatusCode::OK, &body)
}

/// What one logged event looks like to a watcher with this scope and selector.
fn view(t: &Target, sel: Option<&String>, e: &Logged) -> Option<Value> {
    if e.key != t.def.key() {
        return None;
    }
    let was = e.old.as_ref().is_some_and(|o| e.type_ != "ADDED" && in_scope(t, o) && field_matches(sel, o));
    let is = e.type_ != "DELETED" && in_scope(t, &e.new) && field_matches(sel, &e.new);
    let type_ = match (was, is) {
        (false, true) => "ADDED",
        (true, false) => "DELETED",
        (true, true) => e.type_,
        (false, false) => return None,
    };
    Some(json!({"type": type_, "object": e.new}))
}

fn line(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

struct WatchState {
    shared: Arc<Shared>,
    t: Target,
    sel: Option<String>,
    bookmarks_allowed: bool,
    rx: watch::Receiver<Tick>,
    generation: u64,
    bookmarks_seen: u64,
    cursor: Option<u64>,
    from: Option<u64>,
    pending: VecDeque<Bytes>,
    done: bool,
    path: String,
}

impl Drop for WatchState {
    fn drop(&mut self) {
        if let Some(n) = self.shared.lock().open_watches.get_mut(&self.path) {
            *n = n.saturating_sub(1);
        }
    }
}

fn watch_response(shared: Arc<Shared>, t: Target, path: String, query: HashMap<String, String>) -> Response {
    let rx = shared.tick.subscribe();
    let start = *rx.borrow();
    *shared.lock().open_watches.entry(path.clone()).or_default() += 1;
    let from = query.get("resourceVersion").and_then(|v| v.parse::<u64>().ok()).filter(|&v| v > 0);
    let state = WatchState {
        shared,
        t,
        sel: query.get("fieldSelector").cloned(),
        bookmarks_allowed: query.get("allowWatchBookmarks").is_some_and(|b| b == "true"),
        generation: start.generation,
        bookmarks_seen: start.bookmarks,
        rx,
        cursor: None,
        from,
        pending: VecDeque::new(),
        done: false,
        path,
    };
    let body = Body::from_stream(watch_stream(state));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(body)
        .unwrap_or_else(|_| status(500, "InternalError", "response"))
}

fn watch_stream(state: WatchState) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    futures::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(b) = s.pending.pop_front() {
                return Some((Ok(b), s));
            }
            if s.done {
                return None;
            }
            let tick = *s.rx.borrow_and_update();
            if s.cursor.is_none() && tick.partitioned {
                // Held: the connection is open but nothing comes until healed.
                if s.rx.changed().await.is_err() {
                    return None;
                }
                continue;
            }
            if tick.generation != s.generation {
                return None;
            }
            fill(&mut s, tick);
            if s.pending.is_empty() && !s.done && s.rx.changed().await.is_err() {
                return None;
            }
        }
    })
}

/// Queues what a watcher has not seen yet.
fn fill(s: &mut WatchState, tick: Tick) {
    let mut inner = s.shared.lock();
    let cursor = match s.cursor {
        Some(c) => c,
        None => match s.from {
            Some(from) if from < inner.compacted => {
                let msg = format!("too old resource version: {from} ({})", inner.compacted);
                let st = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": msg, "reason": "Expired", "code": 410});
                s.pending.push_back(line(&json!({"type": "ERROR", "object": st})));
                s.done = true;
                return;
            }
            Some(from) => from,
            None => {
                // No version: the current objects as ADDED, then changes.
                let sel = s.sel.as_ref();
                for o in inner.objects.get(&s.t.def.key()).into_iter().flat_map(|m| m.values()) {
                    if in_scope(&s.t, o) && field_matches(sel, o) {
                        s.pending.push_back(line(&json!({"type": "ADDED", "object": o})));
                    }
                }
                inner.rv
            }
        },
    };
    let mut last = cursor;
    for e in inner.log.iter().filter(|e| e.rv > cursor) {
        if let Some(v) = view(&s.t, s.sel.as_ref(), e) {
            s.pending.push_back(line(&v));
        }
        last = e.rv;
    }
    s.cursor = Some(last.max(cursor));
    if tick.bookmarks != s.bookmarks_seen {
        s.bookmarks_seen = tick.bookmarks;
        if s.bookmarks_allowed {
            let obj = json!({"apiVersion": s.t.def.api_version(), "kind": s.t.def.kind,
                "metadata": {"resourceVersion": inner.rv.to_string()}});
            s.pending.push_back(line(&json!({"type": "BOOKMARK", "object": obj})));
            s.cursor = Some(inner.rv);
            inner.bookmarks_queued += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Namespace;
    use kube::Api;
    use kube::api::ListParams;

    #[tokio::test]
    async fn lists_in_pages() {
        let server = TestServer::start().await.unwrap();
        for n in ["a", "b", "c", "d", "e"] {
            server.put(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}})).unwrap();
        }
        let api: Api<Namespace> = Api::all(server.client().unwrap());
        let mut names = Vec::new();
        let mut lp = ListParams::default().limit(2);
        loop {
            let page = api.list(&lp).await.unwrap();
            assert!(page.items.len() <= 2);
            assert_eq!(page.metadata.resource_version.as_deref(), Some("5"));
            names.extend(page.items.into_iter().filter_map(|n| n.metadata.name));
            match page.metadata.continue_ {
                Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
                _ => break,
            }
        }
        assert_eq!(names, ["a", "b", "c", "d", "e"]);
    }

    #[test]
    fn field_selectors() {
        let pod = json!({"spec": {"nodeName": "node-1"}, "metadata": {"name": "p"}});
        let sel = |s: &str| field_matches(Some(&s.to_string()), &pod);
        assert!(sel("spec.nodeName=node-1"));
        assert!(sel("spec.nodeName==node-1,metadata.name=p"));
        assert!(!sel("spec.nodeName=node-2"));
        assert!(sel("spec.nodeName!=node-2"));
        assert!(!sel("spec.nodeName!=node-1"));
        assert!(sel("spec.nodeName!=") && !sel("spec.nodeName="));
    }
}
