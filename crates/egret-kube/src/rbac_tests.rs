//! The install manifests' RBAC covers exactly the calls the code makes.
//!
//! Each scenario drives the real code paths of one workload against the test double of the
//! API server (the agent: the source; the controller: the source, the Lease, status writes and
//! Events), maps every request it recorded to what the API server authorizes (the request-info
//! rules of `k8s.io/apiserver`: API group, resource[/subresource], verb, namespace), and checks
//! the Roles and ClusterRoles bound to the workload's ServiceAccount in `deploy/` (as listed by
//! its `kustomization.yaml`, plus the optional components when their kinds are on):
//!
//! - every call is allowed (a Role's rules only in its namespace);
//! - every (group, resource, verb) granted is used by some call, and a grant in every namespace
//!   is used cluster-wide, not only in some namespaces (unless listed in [`CLUSTER_WIDE`]).
//!
//! Discovery (`/api`, `/apis`, `/apis/GROUP/VERSION`) is made of non-resource URLs that the
//! default `system:discovery` ClusterRole allows to every authenticated user; they are checked
//! against that role's URLs and not granted by Egret's manifests.

use crate::lease::{LeaderElector, LeaseConfig};
use crate::source::{Source, SourceConfig};
use crate::status::{Reporter, StatusError, StatusWriter};
use crate::testserver::{Request, TestServer};
use egret_api::v1alpha1::{EgressCondition, EgressStatus, ExternalIPPoolStatus, IP_ALLOCATED, IPPoolUsage};
use egret_core::event::{Change, Kind};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// Upper bound on waiting for the source, so a broken test fails instead of hanging (not a
/// timing assertion: every wait normally ends in milliseconds).
const PATIENCE: Duration = Duration::from_secs(60);

/// Where the workloads run (`deploy/namespace.yaml`); the Lease lives here.
const NAMESPACE: &str = "egret-system";

/// Namespaced resources granted in every namespace on purpose, though the calls name a
/// namespace: Events about the cluster-scoped Egret kinds go to `default` (kube-rs' recorder)
/// and `LeaderElected` to the controller's own namespace, which a kustomization may change;
/// Roles would have to follow both.
const CLUSTER_WIDE: &[(&str, &str)] = &[("events.k8s.io", "events")];

/// The `nonResourceURLs` of Kubernetes' default `system:discovery` ClusterRole (verb `get`),
/// bound to every authenticated user.
const SYSTEM_DISCOVERY: &[&str] = &[
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/healthz",
    "/livez",
    "/openapi",
    "/openapi/*",
    "/readyz",
    "/version",
    "/version/",
];

// ---------------------------------------------------------------------------------------------
// Request info: what the API server authorizes for one HTTP request.

/// One authorized resource request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Call {
    verb: String,
    group: String,
    /// `resource` or `resource/subresource`, as RBAC names it.
    resource: String,
    /// `None`: cluster-scoped, or a collection across all namespaces.
    namespace: Option<String>,
    name: Option<String>,
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "verb {:?} apiGroup {:?} resource {:?}", self.verb, self.group, self.resource)?;
        match &self.namespace {
            Some(ns) => write!(f, " in namespace {ns:?}"),
            None => write!(f, " cluster-wide"),
        }
    }
}

/// What a request is to the authorizer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Access {
    /// A resource request.
    Resource(Call),
    /// A non-resource URL (discovery, health, version), with the lowercase method as verb.
    NonResource { verb: String, path: String },
}

/// `k8s.io/apiserver/pkg/endpoints/request.RequestInfoFactory.NewRequestInfo`, for the
/// prefixes `api` (groupless) and `apis`.
fn request_info(method: &str, path: &str, query: &BTreeMap<String, String>) -> Access {
    let non_resource = || Access::NonResource { verb: method.to_lowercase(), path: path.to_string() };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if parts.len() < 3 || !matches!(parts[0], "api" | "apis") {
        return non_resource();
    }
    let mut rest = &parts[1..];
    let mut group = "";
    if parts[0] == "apis" {
        if rest.len() < 3 {
            return non_resource();
        }
        group = rest[0];
        rest = &rest[1..];
    }
    rest = &rest[1..]; // the version
    let mut verb = match method {
        "POST" => "create",
        "GET" | "HEAD" => "get",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "",
    }
    .to_string();
    if matches!(rest[0], "watch" | "proxy") && rest.len() > 1 {
        verb = rest[0].to_string();
        rest = &rest[1..];
    }
    let mut namespace = None;
    if rest[0] == "namespaces" && rest.len() > 1 {
        namespace = Some(rest[1].to_string());
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    let mut resource = rest[0].to_string();
    let mut name = rest.get(1).map(|s| s.to_string());
    if rest.len() >= 3 && verb != "proxy" {
        resource = format!("{resource}/{}", rest[2]);
    }
    if name.is_none() && verb == "get" {
        let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
        verb = if watch { "watch" } else { "list" }.to_string();
        name = query
            .get("fieldSelector")
            .and_then(|s| s.strip_prefix("metadata.name=").or_else(|| s.strip_prefix("metadata.name==")))
            .filter(|n| !n.contains(','))
            .map(str::to_string);
    }
    if name.is_none() && verb == "delete" {
        verb = "deletecollection".to_string();
    }
    Access::Resource(Call { verb, group: group.to_string(), resource, namespace, name })
}

/// Whether `system:discovery` allows this non-resource request.
fn discovery_allows(verb: &str, path: &str) -> bool {
    verb == "get"
        && SYSTEM_DISCOVERY.iter().any(|u| match u.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == *u,
        })
}

// ---------------------------------------------------------------------------------------------
// The manifests: what is granted to one ServiceAccount.

/// One (group, resource, verb) granted, and where.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Grant {
    group: String,
    resource: String,
    verb: String,
    /// `None`: every namespace and cluster scope (a ClusterRole bound by a ClusterRoleBinding).
    namespace: Option<String>,
    /// `resourceNames` (empty: any).
    names: Vec<String>,
    /// The role and binding it comes from, for messages.
    from: String,
}

impl Grant {
    fn allows(&self, c: &Call) -> bool {
        self.group == c.group
            && self.resource == c.resource
            && self.verb == c.verb
            && (self.namespace.is_none() || self.namespace == c.namespace)
            && (self.names.is_empty() || c.name.as_ref().is_some_and(|n| self.names.contains(n)))
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "verb {:?} apiGroup {:?} resource {:?}", self.verb, self.group, self.resource)?;
        if !self.names.is_empty() {
            write!(f, " resourceNames {:?}", self.names)?;
        }
        match &self.namespace {
            Some(ns) => write!(f, " in namespace {ns:?} ({})", self.from),
            None => write!(f, " in every namespace ({})", self.from),
        }
    }
}

/// A manifest document and the file it comes from.
struct Doc {
    file: String,
    value: Value,
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// The files a kustomization lists under `resources` (files only: `deploy/` has no nesting).
fn kustomization_files(dir: &Path) -> Vec<PathBuf> {
    let k = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    let k: Value = serde_yaml_ng::from_str(&k).unwrap();
    assert!(k.get("namespace").is_none(), "{}: a namespace transformer would move the Roles", dir.display());
    let files: Vec<PathBuf> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| dir.join(r.as_str().unwrap()))
        .inspect(|p| assert!(p.is_file(), "{} is not a file", p.display()))
        .collect();
    assert!(!files.is_empty());
    files
}

/// Every document of these multi-document YAML files.
fn load(files: &[PathBuf]) -> Vec<Doc> {
    let base = deploy_dir();
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        let file =
            f.strip_prefix(&base).map_or_else(|_| f.display().to_string(), |p| format!("deploy/{}", p.display()));
        for d in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(d).unwrap();
            if !value.is_null() {
                docs.push(Doc { file: file.clone(), value });
            }
        }
    }
    docs
}

/// The install's documents: `deploy/` with the named optional components.
fn install(components: &[&str]) -> Vec<Doc> {
    let dir = deploy_dir();
    let mut files = kustomization_files(&dir);
    for c in components {
        files.extend(kustomization_files(&dir.join("components").join(c)));
    }
    load(&files)
}

fn typed<T: serde::de::DeserializeOwned>(d: &Doc) -> T {
    serde_json::from_value(d.value.clone()).unwrap_or_else(|e| panic!("{}: {e}", d.file))
}

fn is_subject(s: &Subject, binding_ns: Option<&str>, sa: &str) -> bool {
    s.kind == "ServiceAccount" && s.name == sa && s.namespace.as_deref().or(binding_ns) == Some(NAMESPACE)
}

/// Expands the rules of one role into grants; wildcards and non-resource rules are problems.
fn expand(
    rules: &[PolicyRule],
    namespace: Option<&str>,
    from: &str,
    grants: &mut Vec<Grant>,
    problems: &mut Vec<String>,
) {
    for r in rules {
        let groups = r.api_groups.clone().unwrap_or_default();
        let resources = r.resources.clone().unwrap_or_default();
        if r.non_resource_urls.as_ref().is_some_and(|u| !u.is_empty()) {
            problems.push(format!("{from}: nonResourceURLs {:?}: discovery needs none", r.non_resource_urls));
        }
        for w in [&groups, &resources, &r.verbs] {
            if w.iter().any(|x| x.contains('*')) {
                problems.push(format!("{from}: wildcard in a rule ({w:?}) grants more than any call uses"));
            }
        }
        for g in &groups {
            for res in &resources {
                for v in &r.verbs {
                    grants.push(Grant {
                        group: g.clone(),
                        resource: res.clone(),
                        verb: v.clone(),
                        namespace: namespace.map(str::to_string),
                        names: r.resource_names.clone().unwrap_or_default(),
                        from: from.to_string(),
                    });
                }
            }
        }
    }
}

/// What the manifests grant to ServiceAccount `sa` in [`NAMESPACE`].
fn grants_for(docs: &[Doc], sa: &str) -> (Vec<Grant>, Vec<String>) {
    let mut grants = Vec::new();
    let mut problems = Vec::new();
    let of_kind = |k: &'static str| docs.iter().filter(move |d| d.value["kind"] == k);
    let cluster_roles: Vec<(ClusterRole, &str)> = of_kind("ClusterRole").map(|d| (typed(d), d.file.as_str())).collect();
    let roles: Vec<(Role, &str)> = of_kind("Role").map(|d| (typed(d), d.file.as_str())).collect();
    let cluster_role = |name: &str| cluster_roles.iter().find(|(r, _)| r.metadata.name.as_deref() == Some(name));
    for (cr, _) in &cluster_roles {
        if cr.aggregation_rule.is_some() {
            problems.push(format!("ClusterRole {:?}: aggregated roles are not checked", cr.metadata.name));
        }
    }
    for d in of_kind("ClusterRoleBinding") {
        let b: ClusterRoleBinding = typed(d);
        if !b.subjects.iter().flatten().any(|s| is_subject(s, None, sa)) {
            continue;
        }
        let bname = b.metadata.name.unwrap_or_default();
        match (b.role_ref.kind.as_str(), cluster_role(&b.role_ref.name)) {
            ("ClusterRole", Some((cr, file))) => {
                let from = format!("ClusterRole {} by ClusterRoleBinding {bname}, {file}", b.role_ref.name);
                expand(cr.rules.as_deref().unwrap_or_default(), None, &from, &mut grants, &mut problems);
            }
            _ => problems.push(format!("{}: ClusterRoleBinding {bname}: no ClusterRole {:?}", d.file, b.role_ref.name)),
        }
    }
    for d in of_kind("RoleBinding") {
        let b: RoleBinding = typed(d);
        let ns = b.metadata.namespace.clone();
        if !b.subjects.iter().flatten().any(|s| is_subject(s, ns.as_deref(), sa)) {
            continue;
        }
        let bname = b.metadata.name.unwrap_or_default();
        let Some(ns) = ns else {
            problems.push(format!("{}: RoleBinding {bname} without a namespace", d.file));
            continue;
        };
        let rules = match b.role_ref.kind.as_str() {
            "Role" => roles
                .iter()
                .find(|(r, _)| {
                    r.metadata.name.as_deref() == Some(&b.role_ref.name) && r.metadata.namespace.as_deref() == Some(&ns)
                })
                .map(|(r, file)| (r.rules.clone(), *file)),
            _ => cluster_role(&b.role_ref.name).map(|(r, file)| (r.rules.clone(), *file)),
        };
        match rules {
            Some((rules, file)) => {
                let from = format!("{} {} by RoleBinding {ns}/{bname}, {file}", b.role_ref.kind, b.role_ref.name);
                expand(rules.as_deref().unwrap_or_default(), Some(&ns), &from, &mut grants, &mut problems);
            }
            None => problems.push(format!(
                "{}: RoleBinding {ns}/{bname}: no {} {:?} in its namespace",
                d.file, b.role_ref.kind, b.role_ref.name
            )),
        }
    }
    (grants, problems)
}

// ---------------------------------------------------------------------------------------------
// The audit.

/// Every way the grants differ from the calls, one line each naming the tuple; empty when the
/// grants cover exactly the calls.
fn audit(who: &str, grants: &[Grant], requests: &[Request]) -> Vec<String> {
    let mut problems = BTreeSet::new();
    let mut calls: BTreeMap<Call, String> = BTreeMap::new();
    for r in requests {
        let shown = match r.query.get("watch") {
            Some(w) => format!("{} {}?watch={w}", r.method, r.path),
            None => format!("{} {}", r.method, r.path),
        };
        match request_info(&r.method, &r.path, &r.query) {
            Access::NonResource { verb, path } => {
                if !discovery_allows(&verb, &path) {
                    problems.insert(format!("{who}: non-resource call not allowed by system:discovery: {shown}"));
                }
            }
            Access::Resource(c) => {
                calls.entry(c).or_insert(shown);
            }
        }
    }
    // One line per tuple (calls on several objects differ only by name).
    let mut missing: BTreeMap<String, &str> = BTreeMap::new();
    for (c, shown) in &calls {
        if !grants.iter().any(|g| g.allows(c)) {
            missing.entry(c.to_string()).or_insert(shown);
        }
    }
    for (c, shown) in missing {
        problems.insert(format!("{who}: MISSING: the code calls {c} ({shown}), RBAC does not allow it"));
    }
    for g in grants {
        let used: Vec<&Call> = calls.keys().filter(|c| g.allows(c)).collect();
        if used.is_empty() {
            problems.insert(format!("{who}: EXCESS: RBAC grants {g}, no call uses it"));
        } else if g.namespace.is_none()
            && used.iter().all(|c| c.namespace.is_some())
            && !CLUSTER_WIDE.contains(&(g.group.as_str(), g.resource.as_str()))
        {
            let nss: BTreeSet<&str> = used.iter().filter_map(|c| c.namespace.as_deref()).collect();
            problems.insert(format!("{who}: EXCESS: RBAC grants {g}, calls use it only in namespaces {nss:?}"));
        }
    }
    problems.into_iter().collect()
}

/// Audits one workload's recorded requests against the install (with `components`).
fn assert_exact(who: &str, sa: &str, components: &[&str], requests: &[Request]) {
    let (grants, mut problems) = grants_for(&install(components), sa);
    assert!(!grants.is_empty(), "{who}: nothing granted to ServiceAccount {sa}");
    problems.extend(audit(who, &grants, requests));
    assert!(problems.is_empty(), "RBAC of {who} (components {components:?}):\n  {}", problems.join("\n  "));
}

// ---------------------------------------------------------------------------------------------
// The workloads' calls, made by the real code against the test double.

const CORE: [Kind; 7] =
    [Kind::Pool, Kind::Egress, Kind::Node, Kind::Namespace, Kind::Pod, Kind::ClusterPolicy, Kind::Policy];
const ALL: [Kind; 10] = [
    Kind::Pool,
    Kind::Egress,
    Kind::AntreaPool,
    Kind::AntreaEgress,
    Kind::CiliumPolicy,
    Kind::Node,
    Kind::Namespace,
    Kind::Pod,
    Kind::ClusterPolicy,
    Kind::Policy,
];

async fn world(foreign: bool) -> TestServer {
    let server = TestServer::start().await.unwrap();
    for yaml in [
        "apiVersion: egret.dev/v1alpha1\nkind: ExternalIPPool\nmetadata: {name: p}\nspec:\n  ipRanges: [{cidr: 10.10.0.0/24}]\n  nodeSelector: {}\n",
        "apiVersion: egret.dev/v1alpha1\nkind: Egress\nmetadata: {name: e1}\nspec:\n  appliedTo: {podSelector: {}}\n  externalIPPool: p\n",
        "apiVersion: egret.dev/v1alpha1\nkind: Egress\nmetadata: {name: e2}\nspec:\n  appliedTo: {podSelector: {}}\n  externalIPPool: p\n",
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\nspec: {podCIDR: 10.244.1.0/24}\n",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: prod}\nspec: {nodeName: node-1}\nstatus: {podIP: 10.244.1.5}\n",
    ] {
        server.put_yaml(yaml).unwrap();
    }
    if foreign {
        server.serve_foreign_crds();
    }
    server
}

/// Runs the source until every kind in `kinds` has listed and its watch is open; returns the
/// running task.
async fn sync_source(server: &TestServer, config: SourceConfig, kinds: &[Kind]) -> tokio::task::JoinHandle<()> {
    let src = Source::discover(server.client().unwrap(), config).await.unwrap();
    assert_eq!(src.kinds(), kinds.to_vec());
    let (tx, mut rx) = mpsc::channel(64);
    let task = tokio::spawn(src.run(tx));
    let mut listed = BTreeSet::new();
    tokio::time::timeout(PATIENCE, async {
        while !kinds.iter().all(|k| listed.contains(k)) {
            let c: Change = rx.recv().await.expect("source running");
            if c.is_reset() {
                listed.insert(c.kind());
            }
        }
        // Every list is followed by a watch on the same collection.
        loop {
            let reqs = server.requests();
            let lists: BTreeSet<&str> = reqs
                .iter()
                .filter(|r| r.method == "GET" && r.query.contains_key("limit"))
                .map(|r| r.path.as_str())
                .collect();
            let watched = |p: &str| reqs.iter().any(|r| r.path == p && r.is_watch());
            if lists.len() == kinds.len() && lists.iter().all(|p| watched(p)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("source synced and watching");
    task
}

/// The agent: the source only.
/// The agent: the source, and its interfaces published on its Node.
async fn agent_requests(config: SourceConfig, kinds: &[Kind]) -> Vec<Request> {
    let server = world(config.antrea || config.cilium).await;
    sync_source(&server, config, kinds).await.abort();
    let client = server.client().unwrap();
    crate::node::annotate(&client, "node-1", egret_core::model::INTERFACES_ANNOTATION, "{}").await.unwrap();
    server.requests()
}

fn allocated(status: &str, message: &str) -> EgressStatus {
    EgressStatus {
        egress_ip: Some("10.10.0.11".into()),
        egress_node: Some("node-1".into()),
        gateways: Vec::new(),
        conditions: vec![EgressCondition {
            type_: IP_ALLOCATED.into(),
            status: status.into(),
            reason: String::new(),
            message: message.into(),
            last_transition_time: None,
        }],
    }
}

/// The controller: the source, the Lease (created, renewed, released), an Egress and a pool
/// status, Events (new and repeated).
async fn controller_requests(config: SourceConfig, kinds: &[Kind]) -> Vec<Request> {
    let server = world(config.antrea || config.cilium).await;
    let source = sync_source(&server, config, kinds).await;
    let client = server.client().unwrap();
    let identity = "egret-controller-0";
    let reporter = Reporter::new(client.clone(), Some(identity.into()));
    let (elector, leadership) =
        LeaderElector::new(client.clone(), LeaseConfig::new(NAMESPACE, "egret-controller", identity)).unwrap();
    let mut elector = elector.with_reporter(reporter.clone());
    assert!(elector.try_acquire_or_renew().await.unwrap(), "acquired by creating the Lease");
    assert!(elector.try_acquire_or_renew().await.unwrap(), "renewed");
    let lease = server.get("coordination.k8s.io/v1", "Lease", Some(NAMESPACE), "egret-controller").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], identity);

    let w = StatusWriter::new(client, leadership, Some(reporter));
    let ok = allocated("True", "allocated from p");
    w.egress("e1", None, &ok).await.unwrap();
    w.pool("p", &ExternalIPPoolStatus { usage: IPPoolUsage { total: 254, used: 1 } }).await.unwrap();
    // An allocation failure: a Warning Event.
    w.egress("e1", Some(&ok), &allocated("False", "pool p has no free address")).await.unwrap();
    // A field-ownership conflict, twice: an Event, then the same Event patched into a series.
    server.claim_fields("/apis/egret.dev/v1alpha1/egresses/e2", "another-controller");
    for _ in 0..2 {
        assert!(matches!(w.egress("e2", None, &ok).await, Err(StatusError::Conflict { .. })));
    }
    let reasons: BTreeSet<String> = server
        .list("events.k8s.io/v1", "Event")
        .iter()
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect();
    assert_eq!(reasons, BTreeSet::from(["LeaderElected", "AllocationError", "StatusConflict"].map(String::from)));
    elector.release().await.unwrap();
    source.abort();
    server.requests()
}

#[tokio::test]
async fn agent_rbac_is_exactly_its_calls() {
    let reqs = agent_requests(SourceConfig::default(), &CORE).await;
    assert_exact("agent", "egret-agent", &[], &reqs);
    let on_node = SourceConfig { pods_on_node: Some("node-1".into()), ..SourceConfig::default() };
    let reqs = agent_requests(on_node, &CORE).await;
    assert!(reqs.iter().any(|r| r.query.get("fieldSelector").is_some_and(|s| s == "spec.nodeName=node-1")));
    assert_exact("agent (pods of its node)", "egret-agent", &[], &reqs);
}

#[tokio::test]
async fn controller_rbac_is_exactly_its_calls() {
    let reqs = controller_requests(SourceConfig::default(), &CORE).await;
    assert_exact("controller", "egret-controller", &[], &reqs);
}

#[tokio::test]
async fn with_the_antrea_and_cilium_components_rbac_is_exactly_the_calls() {
    let foreign = SourceConfig { antrea: true, cilium: true, ..SourceConfig::default() };
    let components = ["antrea", "cilium"];
    let reqs = agent_requests(foreign.clone(), &ALL).await;
    assert_exact("agent", "egret-agent", &components, &reqs);
    let reqs = controller_requests(foreign, &ALL).await;
    assert_exact("controller", "egret-controller", &components, &reqs);
}

#[tokio::test]
async fn with_the_network_policy_component_rbac_is_exactly_the_agents_calls() {
    let enforcing = SourceConfig { network_policies: true, ..SourceConfig::default() };
    let mut kinds = CORE.to_vec();
    kinds.push(Kind::NetworkPolicy);
    let reqs = agent_requests(enforcing, &kinds).await;
    assert!(reqs.iter().any(|r| r.path == "/apis/networking.k8s.io/v1/networkpolicies" && r.is_watch()));
    assert_exact("agent", "egret-agent", &["network-policy"], &reqs);
    // The controller never reads NetworkPolicies, and the component grants it nothing.
    let reqs = controller_requests(SourceConfig::default(), &CORE).await;
    assert_exact("controller", "egret-controller", &["network-policy"], &reqs);
}

#[test]
fn every_component_is_covered_here() {
    let mut found: Vec<String> = std::fs::read_dir(deploy_dir().join("components"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    assert_eq!(found, ["antrea", "cilium", "network-policy"], "a new component needs its kinds enabled in these tests");
}

// ---------------------------------------------------------------------------------------------
// The checker itself.

fn q(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn call(verb: &str, group: &str, resource: &str, namespace: Option<&str>, name: Option<&str>) -> Access {
    Access::Resource(Call {
        verb: verb.into(),
        group: group.into(),
        resource: resource.into(),
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
    })
}

#[test]
fn request_info_follows_the_api_servers_rules() {
    let none = q(&[]);
    let cases = [
        ("GET", "/api/v1/pods", q(&[("limit", "500")]), call("list", "", "pods", None, None)),
        ("GET", "/api/v1/pods", q(&[("watch", "true")]), call("watch", "", "pods", None, None)),
        ("GET", "/api/v1/namespaces/prod/pods/a", none.clone(), call("get", "", "pods", Some("prod"), Some("a"))),
        ("GET", "/api/v1/namespaces", none.clone(), call("list", "", "namespaces", None, None)),
        ("GET", "/api/v1/namespaces/prod", none.clone(), call("get", "", "namespaces", Some("prod"), Some("prod"))),
        (
            "PUT",
            "/api/v1/namespaces/prod/finalize",
            none.clone(),
            call("update", "", "namespaces/finalize", Some("prod"), Some("prod")),
        ),
        (
            "PATCH",
            "/apis/egret.dev/v1alpha1/egresses/e1/status",
            none.clone(),
            call("patch", "egret.dev", "egresses/status", None, Some("e1")),
        ),
        (
            "POST",
            "/apis/coordination.k8s.io/v1/namespaces/egret-system/leases",
            none.clone(),
            call("create", "coordination.k8s.io", "leases", Some("egret-system"), None),
        ),
        (
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/egret-system/leases/l",
            none.clone(),
            call("update", "coordination.k8s.io", "leases", Some("egret-system"), Some("l")),
        ),
        ("DELETE", "/api/v1/nodes", none.clone(), call("deletecollection", "", "nodes", None, None)),
        ("DELETE", "/api/v1/nodes/n", none.clone(), call("delete", "", "nodes", None, Some("n"))),
        ("GET", "/api/v1/watch/nodes", none.clone(), call("watch", "", "nodes", None, None)),
        (
            "GET",
            "/api/v1/nodes",
            q(&[("fieldSelector", "metadata.name=n"), ("watch", "true")]),
            call("watch", "", "nodes", None, Some("n")),
        ),
    ];
    for (method, path, query, want) in cases {
        assert_eq!(request_info(method, path, &query), want, "{method} {path} {query:?}");
    }
    for path in ["/api", "/api/v1", "/apis", "/apis/egret.dev", "/apis/egret.dev/v1alpha1", "/version", "/healthz"] {
        let Access::NonResource { verb, path } = request_info("GET", path, &none) else { panic!("{path}") };
        assert!(discovery_allows(&verb, &path), "{path}");
    }
    let Access::NonResource { verb, path } = request_info("GET", "/metrics", &none) else { panic!() };
    assert!(!discovery_allows(&verb, &path), "/metrics is not discovery");
}

fn docs(yaml: &str) -> Vec<Doc> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| Doc { file: "test.yaml".into(), value: Value::deserialize(d).unwrap() })
        .collect()
}

fn req(method: &str, path: &str, query: &[(&str, &str)]) -> Request {
    Request { method: method.into(), path: path.into(), query: q(query), content_type: None }
}

const POLICY: &str = r#"
kind: ClusterRole
apiVersion: rbac.authorization.k8s.io/v1
metadata: {name: reader}
rules:
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
---
kind: ClusterRoleBinding
apiVersion: rbac.authorization.k8s.io/v1
metadata: {name: reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: reader}
subjects: [{kind: ServiceAccount, name: sa, namespace: egret-system}]
---
kind: Role
apiVersion: rbac.authorization.k8s.io/v1
metadata: {name: lease, namespace: egret-system}
rules:
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get"]
---
kind: RoleBinding
apiVersion: rbac.authorization.k8s.io/v1
metadata: {name: lease, namespace: egret-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: lease}
subjects: [{kind: ServiceAccount, name: sa, namespace: egret-system}]
"#;

#[test]
fn the_audit_names_what_is_missing_and_what_is_excess() {
    let (grants, problems) = grants_for(&docs(POLICY), "sa");
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(grants.len(), 3);
    let exact = [
        req("GET", "/apis", &[]),
        req("GET", "/api/v1/pods", &[("limit", "500")]),
        req("GET", "/api/v1/pods", &[("watch", "true")]),
        req("GET", "/apis/coordination.k8s.io/v1/namespaces/egret-system/leases/l", &[]),
    ];
    assert_eq!(audit("t", &grants, &exact), Vec::<String>::new());

    // A verb the code uses and RBAC lacks; a Role used outside its namespace; a non-resource
    // URL that is not discovery.
    let more = [
        &exact[..],
        &[
            req("PUT", "/apis/coordination.k8s.io/v1/namespaces/egret-system/leases/l", &[]),
            req("GET", "/apis/coordination.k8s.io/v1/namespaces/other/leases/l", &[]),
            req("GET", "/metrics", &[]),
        ],
    ]
    .concat();
    assert_eq!(
        audit("t", &grants, &more),
        [
            "t: MISSING: the code calls verb \"get\" apiGroup \"coordination.k8s.io\" resource \"leases\" in namespace \"other\" (GET /apis/coordination.k8s.io/v1/namespaces/other/leases/l), RBAC does not allow it",
            "t: MISSING: the code calls verb \"update\" apiGroup \"coordination.k8s.io\" resource \"leases\" in namespace \"egret-system\" (PUT /apis/coordination.k8s.io/v1/namespaces/egret-system/leases/l), RBAC does not allow it",
            "t: non-resource call not allowed by system:discovery: GET /metrics",
        ]
    );

    // A verb RBAC grants that no call uses.
    let fewer = &exact[..2];
    assert_eq!(
        audit("t", &grants, fewer),
        [
            "t: EXCESS: RBAC grants verb \"get\" apiGroup \"coordination.k8s.io\" resource \"leases\" in namespace \"egret-system\" (Role lease by RoleBinding egret-system/lease, test.yaml), no call uses it",
            "t: EXCESS: RBAC grants verb \"watch\" apiGroup \"\" resource \"pods\" in every namespace (ClusterRole reader by ClusterRoleBinding reader, test.yaml), no call uses it",
        ]
    );

    // Granted in every namespace, used in one.
    let one_ns = [
        req("GET", "/api/v1/namespaces/prod/pods", &[("limit", "500")]),
        req("GET", "/api/v1/namespaces/prod/pods", &[("watch", "true")]),
        exact[3].clone(),
    ];
    let p = audit("t", &grants, &one_ns);
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p[0].contains("verb \"list\"") && p[0].ends_with("calls use it only in namespaces {\"prod\"}"), "{p:?}");

    // Another ServiceAccount is granted nothing; a wildcard is a problem of its own.
    assert!(grants_for(&docs(POLICY), "other").0.is_empty());
    let (_, problems) = grants_for(&docs(&POLICY.replace("[\"list\", \"watch\"]", "[\"*\"]")), "sa");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("wildcard"), "{problems:?}");
}
