use super::*;
use crate::testserver::TestServer;
use egret_core::model;
use serde_json::json;
use std::time::Duration;

/// Upper bound on waiting for one change, so a broken test fails instead of hanging (not a
/// timing assertion: every wait normally ends in milliseconds).
const PATIENCE: Duration = Duration::from_secs(60);

type Rx = mpsc::Receiver<Change>;

/// Runs the source as a task (so its watchers make progress while the test waits elsewhere).
fn spawn(src: Source) -> Rx {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(src.run(tx));
    rx
}

async fn next(s: &mut Rx) -> Change {
    tokio::time::timeout(PATIENCE, s.recv()).await.expect("a change in time").expect("source running")
}

/// The next change of `kind`, skipping others.
async fn next_of(s: &mut Rx, kind: Kind) -> Change {
    loop {
        let c = next(s).await;
        if c.kind() == kind {
            return c;
        }
    }
}

/// Collects changes until every kind in `kinds` has sent its Reset; returns the resets.
async fn initial_sync(s: &mut Rx, kinds: &[Kind]) -> Vec<Change> {
    let mut resets: Vec<Change> = Vec::new();
    while !kinds.iter().all(|k| resets.iter().any(|c| c.kind() == *k)) {
        let c = next(s).await;
        assert!(c.is_reset(), "only resets before the initial sync ends, got {c:?}");
        resets.push(c);
    }
    resets.sort_by_key(Change::kind);
    resets
}

/// Waits until every core kind's watch is open on the server.
async fn watching(server: &TestServer) {
    let paths = [
        "/apis/egret.dev/v1alpha1/egresses",
        "/apis/egret.dev/v1alpha1/externalippools",
        "/api/v1/nodes",
        "/api/v1/namespaces",
        "/api/v1/pods",
    ];
    tokio::time::timeout(PATIENCE, async {
        while paths.iter().any(|p| server.open_watches(p) == 0) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("watches open");
}

fn pod(ns: &str, name: &str, node: Option<&str>, ip: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": ns, "labels": {"app": "web"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"big\": true}"},
            "managedFields": [{"manager": "kubelet", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}}],
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "u", "controller": true}]
        },
        "spec": {
            "nodeName": node,
            "containers": [{"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80}],
                "env": [{"name": "A", "value": "1"}], "resources": {"requests": {"cpu": "100m"}}}],
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}]
        },
        "status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.168.0.1",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "web", "ready": true, "restartCount": 0, "image": "nginx:1.27", "imageID": "x"}]
        }
    })
}

fn node(name: &str, ip: &str, cidr: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}, "annotations": {"a": "b"}},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr], "taints": []},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
            "capacity": {"cpu": "2"}, "nodeInfo": {"kubeletVersion": "v1.34.0"}}
    })
}

fn namespace(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}})
}

const POOL: &str = "apiVersion: egret.dev/v1alpha1\nkind: ExternalIPPool\nmetadata: {name: p}\nspec:\n  ipRanges: [{cidr: 10.10.0.0/24}]\n  nodeSelector: {}\n";

fn egress(name: &str) -> serde_json::Value {
    json!({"apiVersion": "egret.dev/v1alpha1", "kind": "Egress",
        "metadata": {"name": name,
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
            "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
        "spec": {"appliedTo": {"podSelector": {"matchLabels": {"app": "web"}}}, "externalIPPool": "p"}})
}

async fn world() -> TestServer {
    let server = TestServer::start().await.unwrap();
    server.put_yaml(POOL).unwrap();
    server.put(egress("e1")).unwrap();
    server.put(node("node-1", "192.168.0.1", "10.244.1.0/24")).unwrap();
    server.put(node("node-2", "192.168.0.2", "10.244.2.0/24")).unwrap();
    server.put(namespace("default")).unwrap();
    server.put(namespace("prod")).unwrap();
    server.put(pod("prod", "a", Some("node-1"), "10.244.1.5")).unwrap();
    server.put(pod("prod", "b", Some("node-2"), "10.244.2.5")).unwrap();
    server.put(pod("default", "c", Some("node-1"), "10.244.1.6")).unwrap();
    server
}

async fn source(server: &TestServer, config: SourceConfig) -> Source {
    Source::discover(server.client().unwrap(), config).await.unwrap()
}

fn pod_names(c: &Change) -> Vec<String> {
    match c {
        Change::Pods(Event::Reset(pods)) => pods.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect(),
        other => panic!("expected a pod reset, got {other:?}"),
    }
}

const CORE: [Kind; 7] =
    [Kind::Pool, Kind::Egress, Kind::Node, Kind::Namespace, Kind::Pod, Kind::ClusterPolicy, Kind::Policy];

#[test]
fn relay_gathers_the_list_into_one_reset() {
    let mut r = Relay::<String>::default();
    let name = |p: SlimNamespace| Ok(p.metadata.name.unwrap_or_default());
    let ns = |n: &str| SlimNamespace { metadata: ObjectMeta { name: Some(n.into()), ..ObjectMeta::default() } };
    let ev = |e: Event<String>| vec![Step::Event(e)];
    assert_eq!(r.step(watcher::Event::Init, name, false), vec![]);
    assert_eq!(r.step(watcher::Event::InitApply(ns("a")), name, false), vec![]);
    assert_eq!(r.step(watcher::Event::InitApply(ns("b")), name, false), vec![]);
    assert_eq!(r.step(watcher::Event::InitDone, name, false), ev(Event::Reset(vec!["a".into(), "b".into()])));
    assert_eq!(r.step(watcher::Event::Apply(ns("c")), name, false), ev(Event::Apply("c".into())));
    assert_eq!(r.step(watcher::Event::Delete(ns("a")), name, false), ev(Event::Delete(ObjectRef::cluster("a"))));
    // A relist starts from an empty list again.
    assert_eq!(r.step(watcher::Event::Init, name, false), vec![]);
    assert_eq!(r.step(watcher::Event::InitDone, name, false), ev(Event::Reset(vec![])));
}

/// A streaming relay sends each listed object at once and ends a listing with the deletes of
/// what it lacked and `Synced`: a relist removes what is gone without a whole list in memory.
#[test]
fn a_streaming_relay_applies_as_it_lists_and_deletes_what_a_relist_lacks() {
    let mut r = Relay::<String>::streaming();
    let name = |p: SlimNamespace| Ok(p.metadata.name.unwrap_or_default());
    let ns = |n: &str| SlimNamespace { metadata: ObjectMeta { name: Some(n.into()), ..ObjectMeta::default() } };
    let apply = |n: &str| Step::Event(Event::Apply(n.to_string()));
    let delete = |n: &str| Step::Event(Event::Delete(ObjectRef::cluster(n)));
    assert_eq!(r.step(watcher::Event::Init, name, false), vec![]);
    assert_eq!(r.step(watcher::Event::InitApply(ns("a")), name, false), vec![apply("a")]);
    assert_eq!(r.step(watcher::Event::InitApply(ns("b")), name, false), vec![apply("b")]);
    assert_eq!(r.step(watcher::Event::InitDone, name, false), vec![Step::Synced]);
    assert_eq!(r.step(watcher::Event::Apply(ns("c")), name, false), vec![apply("c")]);
    assert_eq!(r.step(watcher::Event::Delete(ns("b")), name, false), vec![delete("b")]);
    // A relist that lacks "a" (deleted while the watch was down) and brings "d".
    r.step(watcher::Event::Init, name, false);
    assert_eq!(r.step(watcher::Event::InitApply(ns("c")), name, false), vec![apply("c")]);
    assert_eq!(r.step(watcher::Event::InitApply(ns("d")), name, false), vec![apply("d")]);
    assert_eq!(r.step(watcher::Event::InitDone, name, false), vec![delete("a"), Step::Synced]);
    // A namespaced object's identity survives the round trip.
    r.step(watcher::Event::Init, name, false);
    let mut pod = ns("p");
    pod.metadata.namespace = Some("prod".into());
    r.step(watcher::Event::InitApply(pod), name, false);
    r.step(watcher::Event::InitDone, name, false);
    r.step(watcher::Event::Init, name, false);
    let out = r.step(watcher::Event::InitDone, name, false);
    assert!(out.contains(&Step::Event(Event::Delete(ObjectRef::namespaced("prod", "p")))), "{out:?}");
}

/// An object that does not parse is reported once, never passed on; its last good version
/// stays (also across a relist) until it parses again or is deleted.
#[test]
fn relay_keeps_the_last_good_version_of_an_object_that_stops_parsing() {
    let mut r = Relay::<String>::default();
    // The "object" is a namespace whose name carries its content; "bad:…" does not convert.
    let conv = |p: SlimNamespace| {
        let n = p.metadata.labels.and_then(|l| l.get("v").cloned()).unwrap_or_default();
        if n.starts_with("bad") { Err(format!("spec.x: {n}")) } else { Ok(n) }
    };
    let obj = |name: &str, v: &str| SlimNamespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([("v".to_string(), v.to_string())].into()),
            ..ObjectMeta::default()
        },
    };
    let a = ObjectRef::cluster("a");
    r.step(watcher::Event::Init, conv, true);
    r.step(watcher::Event::InitApply(obj("a", "a1")), conv, true);
    assert_eq!(r.step(watcher::Event::InitDone, conv, true), vec![Step::Event(Event::Reset(vec!["a1".into()]))]);
    // It stops parsing: reported, no event (the index keeps a1); the same failure is not repeated.
    let bad = Step::Unreadable(a.clone(), Some("spec.x: bad1".into()));
    assert_eq!(r.step(watcher::Event::Apply(obj("a", "bad1")), conv, true), vec![bad.clone()]);
    assert_eq!(r.step(watcher::Event::Apply(obj("a", "bad1")), conv, true), vec![]);
    // A relist while it is bad keeps a1 and does not report it again.
    r.step(watcher::Event::Init, conv, true);
    r.step(watcher::Event::InitApply(obj("a", "bad1")), conv, true);
    r.step(watcher::Event::InitApply(obj("b", "b1")), conv, true);
    assert_eq!(
        r.step(watcher::Event::InitDone, conv, true),
        vec![Step::Event(Event::Reset(vec!["a1".into(), "b1".into()]))]
    );
    // It parses again: applied, and the report is cleared.
    assert_eq!(
        r.step(watcher::Event::Apply(obj("a", "a2")), conv, true),
        vec![Step::Event(Event::Apply("a2".into())), Step::Unreadable(a.clone(), None)]
    );
    // Bad, then deleted: the delete goes through and clears the report.
    r.step(watcher::Event::Apply(obj("a", "bad2")), conv, true);
    assert_eq!(
        r.step(watcher::Event::Delete(obj("a", "bad2")), conv, true),
        vec![Step::Event(Event::Delete(a.clone())), Step::Unreadable(a.clone(), None)]
    );
    // A relist in which a bad object is gone clears it too.
    r.step(watcher::Event::Apply(obj("b", "bad3")), conv, true);
    r.step(watcher::Event::Init, conv, true);
    assert_eq!(
        r.step(watcher::Event::InitDone, conv, true),
        vec![Step::Event(Event::Reset(vec![])), Step::Unreadable(ObjectRef::cluster("b"), None)]
    );
}

#[test]
fn relay_versions_are_the_objects_and_a_listing_its_highest() {
    let mut r = Relay::<String>::default();
    let ns = |n: &str, rv: &str| SlimNamespace {
        metadata: ObjectMeta { name: Some(n.into()), resource_version: Some(rv.into()), ..ObjectMeta::default() },
    };
    let evs = [
        watcher::Event::Init,
        watcher::Event::InitApply(ns("a", "7")),
        watcher::Event::InitApply(ns("b", "5")),
        watcher::Event::InitDone,
        watcher::Event::Apply(ns("c", "9")),
        watcher::Event::Delete(ns("a", "12")),
        watcher::Event::Apply(ns("d", "opaque")),
    ];
    let versions: Vec<u64> = evs.iter().map(|e| r.version(e)).collect();
    assert_eq!(versions, [0, 7, 7, 7, 9, 12, 0]);
}

#[test]
fn slim_types_give_the_same_model_as_full_objects() {
    let mut variants = vec![pod("prod", "a", Some("node-1"), "10.244.1.5"), pod("prod", "pending", None, "")];
    let mut host = pod("kube-system", "h", Some("node-1"), "192.168.0.1");
    host["spec"]["hostNetwork"] = json!(true);
    variants.push(host);
    let mut only_ip = pod("prod", "d", Some("node-2"), "10.244.2.9");
    only_ip["status"].as_object_mut().unwrap().remove("podIPs");
    variants.push(only_ip);
    let mut no_ns = pod("x", "n", None, "10.0.0.1");
    no_ns["metadata"].as_object_mut().unwrap().remove("namespace");
    variants.push(no_ns);
    for v in variants {
        let full: k8s_openapi::api::core::v1::Pod = serde_json::from_value(v.clone()).unwrap();
        let slim: SlimPod = serde_json::from_value(v).unwrap();
        assert_eq!(model::Pod::from(slim), model::Pod::from_k8s(&full));
    }
    let mut n = node("node-1", "192.168.0.1", "10.244.1.0/24");
    for v in [n.clone(), {
        n["spec"].as_object_mut().unwrap().remove("podCIDRs");
        n
    }] {
        let full: k8s_openapi::api::core::v1::Node = serde_json::from_value(v.clone()).unwrap();
        let slim: SlimNode = serde_json::from_value(v).unwrap();
        assert_eq!(model::Node::from(slim), model::Node::from_k8s(&full));
    }
    // A node's published interfaces are read; other annotations are skipped.
    let mut annotated = node("node-1", "192.168.0.1", "10.244.1.0/24");
    annotated["metadata"]["annotations"] =
        serde_json::json!({model::INTERFACES_ANNOTATION: r#"{"eth1":["198.18.0.11"]}"#, "other": "x"});
    let full: k8s_openapi::api::core::v1::Node = serde_json::from_value(annotated.clone()).unwrap();
    let slim: SlimNode = serde_json::from_value(annotated).unwrap();
    assert_eq!(slim.metadata.annotations.as_ref().map(|a| a.len()), Some(1), "only Egret's");
    let m = model::Node::from(slim);
    assert_eq!(m, model::Node::from_k8s(&full));
    assert_eq!(m.interface_ip("eth1", egret_core::net::Family::V4), Some("198.18.0.11".parse().unwrap()));
    let slim: SlimPod = serde_json::from_value(pod("prod", "a", None, "10.0.0.1")).unwrap();
    assert_eq!(slim.metadata.annotations, None, "annotations are not even parsed");
    assert_eq!(slim.metadata.managed_fields, None);
}

#[tokio::test]
async fn initial_sync_then_apply_and_delete() {
    let server = world().await;
    let src = source(&server, SourceConfig::default()).await;
    assert_eq!(src.kinds(), CORE.to_vec());
    let mut s = spawn(src);
    let resets = initial_sync(&mut s, &CORE).await;
    let Change::Pools(Event::Reset(pools)) = &resets[0] else { panic!("{:?}", resets[0]) };
    assert_eq!(pools.len(), 1);
    let Change::Egresses(Event::Reset(egs)) = &resets[1] else { panic!("{:?}", resets[1]) };
    assert_eq!(egs[0].metadata.name.as_deref(), Some("e1"));
    assert_eq!(egs[0].metadata.managed_fields, None, "managed fields dropped");
    assert_eq!(egs[0].metadata.annotations, None, "kubectl's copy of the object dropped");
    let Change::Nodes(Event::Reset(nodes)) = &resets[2] else { panic!("{:?}", resets[2]) };
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[0].internal_ips, vec!["192.168.0.1".parse::<std::net::IpAddr>().unwrap()]);
    let Change::Namespaces(Event::Reset(nss)) = &resets[3] else { panic!("{:?}", resets[3]) };
    assert_eq!(nss.len(), 2);
    assert_eq!(pod_names(&resets[4]), vec!["default/c", "prod/a", "prod/b"]);

    server.put(pod("prod", "z", Some("node-2"), "10.244.2.77")).unwrap();
    match next_of(&mut s, Kind::Pod).await {
        Change::Pods(Event::Apply(p)) => {
            assert_eq!((p.name.as_str(), p.node.as_deref()), ("z", Some("node-2")));
            assert_eq!(p.ips, vec!["10.244.2.77".parse::<std::net::IpAddr>().unwrap()]);
        }
        other => panic!("{other:?}"),
    }
    let mut e = egress("e1");
    e["spec"]["egressIP"] = json!("10.10.0.9");
    server.put(e).unwrap();
    match next_of(&mut s, Kind::Egress).await {
        Change::Egresses(Event::Apply(e)) => assert_eq!(e.spec.egress_ip.as_deref(), Some("10.10.0.9")),
        other => panic!("{other:?}"),
    }
    server.remove("v1", "Node", None, "node-2");
    assert_eq!(next_of(&mut s, Kind::Node).await, Change::Nodes(Event::Delete(ObjectRef::cluster("node-2"))));
    server.remove("v1", "Pod", Some("prod"), "a");
    assert_eq!(next_of(&mut s, Kind::Pod).await, Change::Pods(Event::Delete(ObjectRef::namespaced("prod", "a"))));
}

#[tokio::test]
async fn gone_leads_to_a_relist_whose_reset_drops_what_vanished() {
    let server = world().await;
    let mut s = spawn(source(&server, SourceConfig::default()).await);
    initial_sync(&mut s, &CORE).await;
    watching(&server).await;
    // The watches drop and cannot come back while objects change and history is compacted.
    server.partition();
    server.remove("v1", "Pod", Some("prod"), "a");
    server.put(pod("prod", "new", Some("node-1"), "10.244.1.99")).unwrap();
    server.compact();
    server.heal();
    let c = next_of(&mut s, Kind::Pod).await;
    assert_eq!(pod_names(&c), vec!["default/c", "prod/b", "prod/new"]);
    let pod_lists = server.requests().iter().filter(|r| r.path == "/api/v1/pods" && !r.is_watch()).count();
    assert_eq!(pod_lists, 2, "one list, one relist");
}

#[tokio::test]
async fn a_broken_watch_resumes_without_relisting() {
    let server = world().await;
    let mut s = spawn(source(&server, SourceConfig::default()).await);
    initial_sync(&mut s, &CORE).await;
    watching(&server).await;
    server.break_watches();
    server.put(pod("prod", "after", Some("node-1"), "10.244.1.50")).unwrap();
    match next_of(&mut s, Kind::Pod).await {
        Change::Pods(Event::Apply(p)) => assert_eq!(p.name, "after"),
        other => panic!("expected the change, not a relist: {other:?}"),
    }
    let reqs = server.requests();
    let pods: Vec<_> = reqs.iter().filter(|r| r.path == "/api/v1/pods").collect();
    assert_eq!(pods.iter().filter(|r| !r.is_watch()).count(), 1, "no relist");
    let watches: Vec<_> = pods.iter().filter(|r| r.is_watch()).collect();
    assert!(watches.len() >= 2, "the watch was resumed");
    assert_eq!(watches[0].query.get("resourceVersion"), watches[1].query.get("resourceVersion"));
    assert_eq!(watches[0].query.get("allowWatchBookmarks").map(String::as_str), Some("true"));
}

#[tokio::test]
async fn bookmarks_move_the_resume_point_past_a_compaction() {
    let server = world().await;
    let mut s = spawn(source(&server, SourceConfig::default()).await);
    initial_sync(&mut s, &CORE).await;
    // Other kinds move the resourceVersion on; the pod watch has nothing to say...
    server.put(egress("e2")).unwrap();
    server.put(egress("e3")).unwrap();
    next_of(&mut s, Kind::Egress).await;
    next_of(&mut s, Kind::Egress).await;
    // ...until a bookmark tells it the current version.
    watching(&server).await;
    server.bookmark();
    tokio::time::timeout(PATIENCE, async {
        while server.bookmarks_queued() < CORE.len() as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("bookmarks sent");
    server.compact();
    server.break_watches();
    server.put(pod("prod", "after", Some("node-1"), "10.244.1.50")).unwrap();
    match next_of(&mut s, Kind::Pod).await {
        Change::Pods(Event::Apply(p)) => assert_eq!(p.name, "after"),
        other => panic!("the bookmark should have spared a relist: {other:?}"),
    }
}

#[tokio::test]
async fn pods_of_one_node_by_field_selector() {
    let server = world().await;
    server.put(pod("prod", "pending", None, "")).unwrap();
    let config = SourceConfig { pods_on_node: Some("node-1".into()), ..SourceConfig::default() };
    let mut s = spawn(source(&server, config).await);
    let resets = initial_sync(&mut s, &CORE).await;
    assert_eq!(pod_names(&resets[4]), vec!["default/c", "prod/a"]);
    server.put(pod("prod", "b2", Some("node-2"), "10.244.2.6")).unwrap();
    // Scheduling the pending pod onto this node brings it into the selection.
    server.put(pod("prod", "pending", Some("node-1"), "10.244.1.7")).unwrap();
    match next_of(&mut s, Kind::Pod).await {
        Change::Pods(Event::Apply(p)) => assert_eq!(p.name, "pending", "node-2's pod is not seen"),
        other => panic!("{other:?}"),
    }
    let reqs = server.requests();
    assert!(
        reqs.iter()
            .filter(|r| r.path == "/api/v1/pods")
            .all(|r| r.query.get("fieldSelector").map(String::as_str) == Some("spec.nodeName=node-1"))
    );
}

fn serve_foreign(server: &TestServer) {
    server.serve_foreign_crds();
    server
        .put_yaml("apiVersion: crd.antrea.io/v1beta1\nkind: Egress\nmetadata: {name: ae}\nspec:\n  appliedTo: {podSelector: {}}\n  externalIPPool: ap\n")
        .unwrap();
    server
        .put_yaml("apiVersion: crd.antrea.io/v1beta1\nkind: ExternalIPPool\nmetadata: {name: ap}\nspec:\n  ipRanges: [{cidr: 10.20.0.0/24}]\n")
        .unwrap();
    server
        .put_yaml("apiVersion: cilium.io/v2\nkind: CiliumEgressGatewayPolicy\nmetadata: {name: cp}\nspec:\n  selectors: [{podSelector: {}}]\n  egressGateway: {egressIP: 10.30.0.1}\n")
        .unwrap();
}

#[tokio::test]
async fn foreign_kinds_are_off_by_default() {
    let server = world().await;
    serve_foreign(&server);
    let src = source(&server, SourceConfig::default()).await;
    assert_eq!(src.kinds(), CORE.to_vec());
    let mut s = spawn(src);
    initial_sync(&mut s, &CORE).await;
    server.put(pod("prod", "marker", None, "")).unwrap();
    // Everything up to the marker: no foreign kind among it.
    loop {
        let c = next(&mut s).await;
        assert!(!matches!(c.kind(), Kind::AntreaEgress | Kind::AntreaPool | Kind::CiliumPolicy), "{c:?}");
        if c.kind() == Kind::Pod {
            break;
        }
    }
    assert!(server.requests().iter().all(|r| !r.path.contains("antrea") && !r.path.contains("cilium")));
}

#[tokio::test]
async fn foreign_kinds_need_their_crds() {
    let server = world().await;
    let src = source(&server, SourceConfig { antrea: true, cilium: true, ..SourceConfig::default() }).await;
    assert_eq!(src.kinds(), CORE.to_vec(), "enabled but not installed");
}

/// Also the list of HTTP calls the crate documents for RBAC (lib.rs).
#[tokio::test]
async fn foreign_kinds_when_enabled_and_installed_and_the_calls_made() {
    let server = world().await;
    serve_foreign(&server);
    let src = source(&server, SourceConfig { antrea: true, cilium: true, ..SourceConfig::default() }).await;
    let all = [
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
    assert_eq!(src.kinds(), all.to_vec());
    let mut s = spawn(src);
    let resets = initial_sync(&mut s, &all).await;
    match &resets[2] {
        Change::AntreaPools(Event::Reset(p)) => {
            assert_eq!(p[0].spec.ip_ranges[0].cidr.as_deref(), Some("10.20.0.0/24"))
        }
        other => panic!("{other:?}"),
    }
    match &resets[3] {
        Change::AntreaEgresses(Event::Reset(e)) => assert_eq!(e[0].spec.external_ip_pool.as_deref(), Some("ap")),
        other => panic!("{other:?}"),
    }
    match &resets[4] {
        Change::CiliumPolicies(Event::Reset(c)) => {
            assert_eq!(c[0].spec.egress_gateway.as_ref().unwrap().egress_ip.as_deref(), Some("10.30.0.1"))
        }
        other => panic!("{other:?}"),
    }
    server.remove("crd.antrea.io/v1beta1", "Egress", None, "ae");
    assert_eq!(
        next_of(&mut s, Kind::AntreaEgress).await,
        Change::AntreaEgresses(Event::Delete(ObjectRef::cluster("ae")))
    );

    let calls: std::collections::BTreeSet<(String, String, bool)> =
        server.requests().into_iter().map(|r| (r.method.clone(), r.path.clone(), r.is_watch())).collect();
    let get = |p: &str, w: bool| ("GET".to_string(), p.to_string(), w);
    let mut want = std::collections::BTreeSet::from([
        get("/apis", false),
        get("/apis/crd.antrea.io/v1beta1", false),
        get("/apis/cilium.io/v2", false),
    ]);
    for p in [
        "/apis/egret.dev/v1alpha1/egresses",
        "/apis/egret.dev/v1alpha1/externalippools",
        "/apis/egret.dev/v1alpha1/clusteregresspolicies",
        "/apis/egret.dev/v1alpha1/egresspolicies",
        "/apis/crd.antrea.io/v1beta1/egresses",
        "/apis/crd.antrea.io/v1beta1/externalippools",
        "/apis/cilium.io/v2/ciliumegressgatewaypolicies",
        "/api/v1/nodes",
        "/api/v1/namespaces",
        "/api/v1/pods",
    ] {
        want.insert(get(p, false));
        want.insert(get(p, true));
    }
    assert_eq!(calls, want);
}

async fn next_update(s: &mut BoxStream<'static, Update>) -> Update {
    tokio::time::timeout(PATIENCE, s.next()).await.expect("an update in time").expect("source running")
}

/// An Egress that does not parse (here a number where a pool name belongs) neither stops the
/// initial list nor the watch: the other objects arrive, the bad one is reported with its field,
/// and its last good version stays in place until it parses again.
#[tokio::test]
async fn a_bad_object_is_reported_and_does_not_stop_the_watch() {
    let server = world().await;
    let mut bad = egress("e2");
    bad["spec"]["externalIPPool"] = json!(5);
    server.put(bad).unwrap();
    let src = source(&server, SourceConfig::default()).await;
    let mut updates = src.updates();
    let (mut resets, mut unreadable) = (Vec::new(), Vec::new());
    while resets.len() < CORE.len() || unreadable.is_empty() {
        match next_update(&mut updates).await {
            Update::Change(v) => resets.push(v.change),
            Update::Unreadable { kind, object, reason } => unreadable.push((kind, object, reason)),
            Update::Synced(_) => {}
        }
    }
    let egresses = resets.iter().find(|c| c.kind() == Kind::Egress).unwrap();
    let Change::Egresses(Event::Reset(list)) = egresses else { panic!("{egresses:?}") };
    let names: Vec<_> = list.iter().filter_map(|e| e.metadata.name.clone()).collect();
    assert_eq!(names, ["e1"], "the good Egress arrives; the bad one has no good version yet");
    assert_eq!(unreadable.len(), 1);
    let (kind, object, reason) = &unreadable[0];
    assert_eq!((*kind, object.name.as_str()), (Kind::Egress, "e2"));
    assert!(reason.as_deref().is_some_and(|r| r.starts_with("spec.externalIPPool")), "{reason:?}");
    // The watch goes on: fixing it applies it and clears the report; breaking e1 keeps e1.
    server.put(egress("e2")).unwrap();
    let mut bad1 = egress("e1");
    bad1["spec"]["appliedTo"] = json!("everything");
    server.put(bad1).unwrap();
    // One watch keeps its order: once e1's report is in, anything about e2 and e1 before it is.
    let mut seen = Vec::new();
    loop {
        let u = next_update(&mut updates).await;
        let done = matches!(&u, Update::Unreadable { object, reason: Some(_), .. } if object.name == "e1");
        seen.push(u);
        if done {
            break;
        }
    }
    let applied: Vec<String> = seen
        .iter()
        .filter_map(|u| match u {
            Update::Change(v) => match &v.change {
                Change::Egresses(Event::Apply(e)) => e.metadata.name.clone(),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(applied, ["e2"], "e1's broken version is not applied");
    let reports: Vec<(String, bool)> = seen
        .iter()
        .filter_map(|u| match u {
            Update::Unreadable { object, reason, .. } => Some((object.name.clone(), reason.is_some())),
            _ => None,
        })
        .collect();
    assert_eq!(reports, [("e2".to_string(), false), ("e1".to_string(), true)]);
}

/// With `stream_pods`, pods arrive as applies then `Synced`; after a 410 the relist streams
/// again and deletes the pod that vanished while the watch was down.
#[tokio::test]
async fn streamed_pods_are_applied_then_synced_and_a_relist_deletes_what_vanished() {
    let server = world().await;
    let src = source(&server, SourceConfig { stream_pods: true, ..SourceConfig::default() }).await;
    // A task drives the watchers while the test waits on the server.
    let (tx, mut rx) = mpsc::channel(64);
    let mut stream = src.updates();
    tokio::spawn(async move {
        while let Some(u) = stream.next().await {
            if tx.send(u).await.is_err() {
                return;
            }
        }
    });
    let mut pods = Vec::new();
    loop {
        match tokio::time::timeout(PATIENCE, rx.recv()).await.expect("an update in time").expect("source running") {
            Update::Change(v) => match &v.change {
                Change::Pods(Event::Apply(p)) => pods.push(format!("{}/{}", p.namespace, p.name)),
                Change::Pods(other) => panic!("a streamed listing sends applies only: {other:?}"),
                _ => {}
            },
            Update::Synced(Kind::Pod) => break,
            _ => {}
        }
    }
    pods.sort();
    assert_eq!(pods, ["default/c", "prod/a", "prod/b"]);
    watching(&server).await;
    server.partition();
    server.remove("v1", "Pod", Some("prod"), "a");
    server.compact();
    server.heal();
    let mut deleted = Vec::new();
    loop {
        match tokio::time::timeout(PATIENCE, rx.recv()).await.expect("an update in time").expect("source running") {
            Update::Change(v) => {
                if let Change::Pods(Event::Delete(r)) = &v.change {
                    deleted.push(r.to_string());
                }
            }
            Update::Synced(Kind::Pod) => break,
            _ => {}
        }
    }
    assert_eq!(deleted, ["prod/a"]);
}

const NETWORK_POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: egress-control\n  namespace: prod\n  annotations: {kubectl.kubernetes.io/last-applied-configuration: '{}'}\nspec:\n  podSelector: {matchLabels: {app: backend}}\n  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: 203.0.113.0/24}}], ports: [{protocol: TCP, port: 443}]}]\n";

#[tokio::test]
async fn network_policies_are_watched_only_when_enforced() {
    let server = world().await;
    server.put_yaml(NETWORK_POLICY).unwrap();
    // Not enforced: never listed nor watched.
    let src = source(&server, SourceConfig::default()).await;
    assert_eq!(src.kinds(), CORE.to_vec());
    let mut s = spawn(src);
    initial_sync(&mut s, &CORE).await;
    watching(&server).await;
    assert!(server.requests().iter().all(|r| !r.path.contains("networkpolicies")));
    drop(s);

    let src = source(&server, SourceConfig { network_policies: true, ..SourceConfig::default() }).await;
    let mut kinds = CORE.to_vec();
    kinds.push(Kind::NetworkPolicy);
    assert_eq!(src.kinds(), kinds);
    let mut s = spawn(src);
    let resets = initial_sync(&mut s, &kinds).await;
    match resets.last() {
        Some(Change::NetworkPolicies(Event::Reset(l))) => {
            assert_eq!(l.len(), 1);
            assert_eq!(l[0].metadata.namespace.as_deref(), Some("prod"));
            assert!(l[0].metadata.annotations.is_none(), "kubectl's copy is trimmed");
            let v = egret_core::policy::validate_network_policies(l);
            assert!(v.problems.is_empty(), "{:?}", v.problems);
            assert_eq!(v.policies[0].rules[0].name, "spec.egress[0].to[0]");
        }
        other => panic!("{other:?}"),
    }
    server.remove("networking.k8s.io/v1", "NetworkPolicy", Some("prod"), "egress-control");
    assert_eq!(
        next_of(&mut s, Kind::NetworkPolicy).await,
        Change::NetworkPolicies(Event::Delete(ObjectRef::namespaced("prod", "egress-control")))
    );
}
