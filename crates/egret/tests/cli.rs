//! The CLI run as a binary on `examples/` and on broken inputs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure is a test failure

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn egret(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_egret")).args(args).current_dir(root()).output().expect("run egret")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn plan_json(args: &[&str]) -> serde_json::Value {
    let mut a = vec!["plan", "-o", "json"];
    a.extend_from_slice(args);
    let o = egret(&a);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("plan prints JSON")
}

fn egress<'a>(plan: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    plan["egresses"].as_array().unwrap().iter().find(|e| e["name"] == name).unwrap()
}

#[test]
fn every_example_validates() {
    for dir in std::fs::read_dir(root().join("examples")).unwrap() {
        let dir = dir.unwrap().path();
        if dir.file_name().unwrap().to_str().unwrap() == "cluster" {
            continue;
        }
        let o = egret(&["validate", "-f", dir.to_str().unwrap()]);
        assert!(o.status.success(), "{}: {}", dir.display(), stdout(&o));
        assert!(stdout(&o).starts_with("valid: "), "{}", stdout(&o));
        // With the lab's router reserved, as the lab's controller and agents run.
        let o = egret(&["validate", "--reserved-ip", "10.10.0.1", "-f", dir.to_str().unwrap()]);
        assert!(o.status.success(), "{}: {}", dir.display(), stdout(&o));
    }
}

#[test]
fn plan_warns_about_two_pods_with_one_address() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stale.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Pod\nmetadata: {namespace: prod, name: web-old, labels: {app: web}}\nspec: {nodeName: node-9, containers: []}\nstatus: {podIP: 10.244.1.10}\n",
    )
    .unwrap();
    let o = egret(&["plan", "-o", "json", "-f", "examples/seed-002-ha", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning: Pod/prod/web-old: status.podIPs: 10.244.1.10 is also the address of Pod prod/web-1"),
        "{err}"
    );
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(plan["warnings"].as_array().unwrap().len(), 1);
    let rules = plan["rules"].as_array().unwrap();
    assert_eq!(rules.iter().filter(|r| r["sourceIP"] == "10.244.1.10").count(), 1);
}

#[test]
fn strict_inputs_are_rejected_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("strict.yaml");
    std::fs::write(
        &file,
        r#"apiVersion: egret.dev/v1alpha1
kind: Egress
metadata: {name: typo}
spec:
  appliedTo: {podSelector: {}}
  egressIP: 10.10.0.104
  destinationCIDR: [203.0.113.5/32]
---
apiVersion: egret.dev/v1alpha1
kind: Egress
metadata: {name: Bad_Name!}
spec: {appliedTo: {podSelector: {}}, egressIP: 10.10.0.104}
---
apiVersion: egret.dev/v1alpha1
kind: ExternalIPPool
metadata: {name: whole-node-net}
spec: {ipRanges: [{cidr: 10.10.0.0/24}]}
"#,
    )
    .unwrap();
    let cluster = root().join("examples/cluster/lab.yaml");
    let o = egret(&["validate", "--reserved-ip", "10.10.0.1", "-f", cluster.to_str().unwrap(), file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    let f = file.display().to_string();
    let lines: Vec<&str> = out.lines().collect();
    let expect = [
        format!("{f}: Egress/typo: document 0: malformed object: spec.destinationCIDR: unknown field"),
        format!(
            "{f}: ExternalIPPool/whole-node-net: spec.ipRanges[0]: 10.10.0.1-10.10.0.254 covers 10.10.0.1, a reserved address"
        ),
        format!("{f}: Egress/Bad_Name!: metadata.name: \"Bad_Name!\" is not a valid name"),
    ];
    assert_eq!(lines.len(), expect.len(), "{out}");
    for (line, want) in lines.iter().zip(&expect) {
        assert!(line.starts_with(want.as_str()), "\n got: {line}\nwant: {want}...");
    }
}

#[test]
fn seed_002_ha_allocates_from_the_pool() {
    let p = plan_json(&["-f", "examples/seed-002-ha"]);
    assert_eq!(egress(&p, "egress-prod-web")["egressIP"], "10.10.0.11");
    assert_eq!(egress(&p, "egress-staging-web")["egressIP"], "10.10.0.12");
    assert!(egress(&p, "egress-prod-web")["egressNode"].is_string());
    assert_eq!(p["pools"][0], serde_json::json!({"name": "external-ip-pool", "total": 10, "used": 2}));
    let rules = p["rules"].as_array().unwrap();
    let by_src = |ip: &str| rules.iter().filter(|r| r["sourceIP"] == ip).collect::<Vec<_>>();
    assert_eq!(by_src("10.244.1.10")[0]["egressIP"], "10.10.0.11"); // prod/web-1
    assert_eq!(by_src("10.244.2.10")[0]["egressIP"], "10.10.0.11"); // prod/web-2
    assert_eq!(by_src("10.244.2.11")[0]["egressIP"], "10.10.0.12"); // staging/web-1
    assert!(by_src("10.244.1.11").is_empty()); // default/client-1 keeps its node IP
    let r = &by_src("10.244.1.10")[0];
    for key in ["sourceIP", "destinationCIDR", "egressIP", "gatewayNode"] {
        assert!(r.get(key).is_some(), "rule lacks {key}: {r}");
    }
}

#[test]
fn seed_002_static_uses_node_4_and_node_5() {
    let p = plan_json(&["-f", "examples/seed-002-static"]);
    assert_eq!(egress(&p, "egress-prod")["egressNode"], "node-4");
    assert_eq!(egress(&p, "egress-staging")["egressNode"], "node-5");
    let rules = p["rules"].as_array().unwrap();
    assert!(rules.iter().any(|r| r["sourceIP"] == "10.244.3.10" && r["gatewayNode"] == "node-4"));
}

#[test]
fn seed_004_cilium_policy_loads_unchanged() {
    let p = plan_json(&["-f", "examples/seed-004-cilium"]);
    let e = egress(&p, "egress-sample");
    assert_eq!(e["egressIP"], "10.168.60.100");
    assert_eq!(e["egressNode"], "node-2");
    let srcs: Vec<&str> = p["rules"].as_array().unwrap().iter().map(|r| r["sourceIP"].as_str().unwrap()).collect();
    assert_eq!(srcs, vec!["10.244.1.12"]);
}

#[test]
fn seed_000_web_pods_reach_db_a_with_the_fixed_ip() {
    let p = plan_json(&["-f", "examples/seed-000-web-to-db"]);
    for r in p["rules"].as_array().unwrap() {
        assert_eq!(r["destinationCIDR"], "203.0.113.5/32");
        assert_eq!(r["egressIP"], "198.51.100.100");
    }
    assert_eq!(p["rules"].as_array().unwrap().len(), 3);
}

#[test]
fn live_nodes_choose_the_gateway() {
    let p = plan_json(&["-f", "examples/seed-002-reference", "--nodes", "node-1,node-2,node-5"]);
    assert_eq!(egress(&p, "egress-prod-web")["egressNode"], "node-5");
    let p = plan_json(&["-f", "examples/seed-002-reference", "--nodes", "node-1,node-2"]);
    let e = egress(&p, "egress-prod-web");
    assert!(e["egressNode"].is_null());
    let assigned = e["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "IPAssigned").unwrap();
    assert_eq!(assigned["status"], "False");
    assert_eq!(assigned["reason"], "NoEligibleNode");
    assert!(p["rules"][0]["gatewayNode"].is_null(), "fail closed: the rule stays, with no gateway");
    let o = egret(&["plan", "-f", "examples/seed-002-reference", "--nodes", "node-9"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("node-9"));
}

#[test]
fn plan_table_has_the_documented_columns() {
    let o = egret(&["plan", "-f", "examples/seed-002-ha"]);
    let out = stdout(&o);
    assert!(out.contains("Source IP   | Destination CIDR | Egress IP  | Gateway"), "{out}");
    assert!(out.contains("egress-prod-web    | 10.10.0.11"), "{out}");
}

const BROKEN: &str = r#"
apiVersion: egret.dev/v1alpha1
kind: ExternalIPPool
metadata: {name: backwards}
spec:
  ipRanges: [{start: 10.10.0.20, end: 10.10.0.11}]
---
apiVersion: egret.dev/v1alpha1
kind: ExternalIPPool
metadata: {name: good}
spec:
  ipRanges: [{cidr: 10.10.1.0/28}]
---
apiVersion: egret.dev/v1alpha1
kind: ExternalIPPool
metadata: {name: overlapping}
spec:
  ipRanges: [{cidr: 10.10.1.8/29}]
---
apiVersion: egret.dev/v1alpha1
kind: Egress
metadata: {name: outside-pool}
spec:
  appliedTo: {podSelector: {matchLabels: {app: web}}}
  egressIP: 10.99.0.1
  externalIPPool: good
---
apiVersion: egret.dev/v1alpha1
kind: Egress
metadata: {name: bad-operator}
spec:
  appliedTo: {podSelector: {matchExpressions: [{key: app, operator: Equals, values: [web]}]}}
  externalIPPool: good
---
apiVersion: egret.dev/v1alpha1
kind: Egress
metadata: {name: bad-exclusion}
spec:
  appliedTo: {podSelector: {}}
  externalIPPool: good
  destinationCIDRs: [203.0.113.0/24]
  excludedCIDRs: [198.51.100.0/24]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
"#;

#[test]
fn broken_inputs_are_rejected_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, BROKEN).unwrap();
    let o = egret(&["validate", "-f", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    let f = file.display().to_string();
    let lines: Vec<&str> = out.lines().collect();
    let expect = [
        format!("{f}: Deployment/web: document 6: unknown kind apps/v1/Deployment"),
        format!("{f}: ExternalIPPool/backwards: spec.ipRanges[0]: start 10.10.0.20 is after end 10.10.0.11"),
        format!(
            "{f}: ExternalIPPool/overlapping: spec.ipRanges[0]: 10.10.1.9-10.10.1.14 overlaps ExternalIPPool \"good\""
        ),
        format!("{f}: Egress/outside-pool: spec.egressIP: 10.99.0.1 is not in ExternalIPPool \"good\""),
        format!(
            "{f}: Egress/bad-operator: spec.appliedTo.podSelector.matchExpressions[0].operator: unknown operator \"Equals\""
        ),
        format!(
            "{f}: Egress/bad-exclusion: spec.excludedCIDRs[0]: 198.51.100.0/24 is not inside any of destinationCIDRs"
        ),
    ];
    assert_eq!(lines.len(), expect.len(), "{out}");
    for (line, want) in lines.iter().zip(&expect) {
        assert!(line.starts_with(want.as_str()), "\n got: {line}\nwant: {want}...");
    }
    let o = egret(&["plan", "-f", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty(), "nothing is planned from broken input");
}

#[test]
fn convert_emits_egret_manifests_that_load_again() {
    let o = egret(&["convert", "-f", "examples/seed-004-cilium/policy.yaml", "examples/seed-002-ha/egress.yaml"]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(!out.contains("cilium.io") && !out.contains("antrea.io"), "{out}");
    assert_eq!(out.matches("apiVersion: egret.dev/v1alpha1").count(), 5, "{out}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("converted.yaml"), &out).unwrap();
    std::fs::copy(root().join("examples/cluster/lab.yaml"), dir.path().join("cluster.yaml")).unwrap();
    let o = egret(&["validate", "-f", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(stdout(&o).starts_with("valid: 2 ExternalIPPools, 3 Egresses"));
}

/// What seed 001's ServiceEntries become (docs/api.md, "Accepted foreign kinds").
const SEED_001_CONVERTED: &str = "---
apiVersion: egret.dev/v1alpha1
kind: EgressPolicy
metadata:
  name: external-api
  namespace: default
spec:
  appliedTo:
    podSelector: {}
  rules:
  - name: external-api
    action: Allow
    to:
      fqdns:
      - api.external.com
    ports:
    - protocol: TCP
      port: 443
  defaultAction: Deny
---
apiVersion: egret.dev/v1alpha1
kind: EgressPolicy
metadata:
  name: allowed-external
  namespace: default
spec:
  appliedTo:
    podSelector: {}
  rules:
  - name: allowed-external
    action: Allow
    to:
      fqdns:
      - '**.googleapis.com'
      - api.github.com
    ports:
    - protocol: TCP
      port: 443
  defaultAction: Deny
";

#[test]
fn convert_turns_istio_service_entries_into_allowlists_that_validate() {
    let file = "examples/seed-001-service-entry/service-entries.yaml";
    let o = egret(&["convert", "-f", file]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(stdout(&o), SEED_001_CONVERTED);
    let notes: Vec<&str> = err.lines().collect();
    assert_eq!(notes.len(), 2, "{err}");
    assert!(notes[0].starts_with(&format!(
        "note: {file}: networking.istio.io/v1 ServiceEntry external-api became EgressPolicy default/external-api: every pod of namespace default may reach api.external.com on TCP 443;"
    )), "{err}");
    assert!(notes[1].contains("ServiceEntry allowed-external became EgressPolicy default/allowed-external"), "{err}");
    assert!(notes.iter().all(|n| n.ends_with("DNS to a resolver outside the cluster must be allowed separately")));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("converted.yaml"), stdout(&o)).unwrap();
    std::fs::copy(root().join("examples/cluster/lab.yaml"), dir.path().join("cluster.yaml")).unwrap();
    let o = egret(&["validate", "-f", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(stdout(&o).starts_with("valid: 0 ExternalIPPools, 0 Egresses, 0 ClusterEgressPolicies, 2 EgressPolicies"));

    // Inside the mesh: left out with a note, not an error; `*` (everything): an error naming it.
    let se = |host: &str, location: &str| {
        format!(
            "apiVersion: networking.istio.io/v1beta1\nkind: ServiceEntry\nmetadata: {{name: se, namespace: prod}}\nspec:\n  hosts: [a.example, \"{host}\"]\n  ports: [{{number: 443, name: https, protocol: TLS}}]\n  location: {location}\n"
        )
    };
    let f = dir.path().join("se.yaml");
    std::fs::write(&f, se("b.example", "MESH_INTERNAL")).unwrap();
    let o = egret(&["convert", "-f", f.to_str().unwrap()]);
    assert!(o.status.success());
    assert_eq!(stdout(&o), "");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("networking.istio.io/v1beta1 ServiceEntry left out: ServiceEntry/se: location MESH_INTERNAL"),
        "{err}"
    );
    // `apply` into a store says so too, and stores nothing.
    let store = dir.path().join("store");
    let o = egret(&["apply", "--store", store.to_str().unwrap(), "-f", f.to_str().unwrap()]);
    assert!(o.status.success());
    assert_eq!(stdout(&o), "unchanged\n");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("ServiceEntry left out: ServiceEntry/se: location MESH_INTERNAL")
    );
    std::fs::write(&f, se("*", "MESH_EXTERNAL")).unwrap();
    let o = egret(&["convert", "-f", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("ServiceEntry/se: document 0: spec.hosts[1]: \"*\" (every host) cannot be translated"),
        "{err}"
    );
    assert_eq!(stdout(&o), "");
}

#[test]
fn committed_crds_are_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let o = egret(&["crds", "--dir", dir.path().to_str().unwrap()]);
    assert!(o.status.success());
    for f in ["egresses.yaml", "externalippools.yaml"] {
        let fresh = std::fs::read_to_string(dir.path().join(f)).unwrap();
        let committed = std::fs::read_to_string(root().join("deploy/crds").join(f)).unwrap_or_default();
        assert!(fresh == committed, "deploy/crds/{f} is stale: run `egret crds --dir deploy/crds`");
    }
}

#[test]
fn store_apply_get_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let s = store.to_str().unwrap();
    let o = egret(&["apply", "--store", s, "-f", "examples/cluster/lab.yaml", "examples/seed-002-ha/egress.yaml"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout(&o).contains("Egress/egress-prod-web created"));
    // Re-applying the same manifests changes nothing.
    assert_eq!(stdout(&egret(&["apply", "--store", s, "-f", "examples/seed-002-ha/egress.yaml"])).trim(), "unchanged");
    // Bad input is rejected with its field named, and nothing is written.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: egret.dev/v1alpha1\nkind: Egress\nmetadata: {name: egress-prod-web}\nspec: {appliedTo: {podSelector: {}}, externalIPPool: nope}\n").unwrap();
    let o = egret(&["apply", "--store", s, "-f", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Egress/egress-prod-web: spec.externalIPPool: ExternalIPPool \"nope\" does not exist"),
        "{err}"
    );
    let o = egret(&["get", "egress", "--store", s]);
    let out = stdout(&o);
    assert!(out.starts_with("NAME                 EGRESSIP   NODE   AGE\n"), "{out}");
    let o = egret(&["get", "eg", "--store", s, "-o", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"][0]["spec"]["externalIPPool"], "external-ip-pool");
    let o = egret(&["get", "externalippools", "--store", s]);
    assert!(stdout(&o).starts_with("NAME               TOTAL   USED   AGE\n"), "{}", stdout(&o));
    let o = egret(&["delete", "--store", s, "-f", "examples/seed-002-ha/egress.yaml"]);
    assert!(stdout(&o).contains("Egress/egress-staging-web deleted"));
    assert!(String::from_utf8_lossy(&egret(&["get", "egress", "--store", s]).stderr).contains("No resources found"));
}

#[test]
fn controller_allocates_and_writes_status() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().to_str().unwrap();
    assert!(
        egret(&["apply", "--store", s, "-f", "examples/cluster/lab.yaml", "examples/seed-002-ha/egress.yaml"])
            .status
            .success()
    );
    let mut ctl = Command::new(env!("CARGO_BIN_EXE_egret")).args(["controller", "--store", s]).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut out = String::new();
    while std::time::Instant::now() < deadline {
        out = stdout(&egret(&["get", "egress", "--store", s]));
        if out.contains("10.10.0.12") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = ctl.kill();
    let _ = ctl.wait();
    assert!(out.contains("egress-prod-web      10.10.0.11"), "{out}");
    assert!(out.contains("egress-staging-web   10.10.0.12"), "{out}");
    let pools = stdout(&egret(&["get", "eip", "--store", s]));
    assert!(pools.contains("external-ip-pool   10      2"), "{pools}");
}

/// `egret get --kubeconfig` lists from a cluster: here the test double of the API server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_reads_a_cluster_through_a_kubeconfig() {
    let server = egret_kube::testserver::TestServer::start().await.unwrap();
    server
        .put_yaml(
            "apiVersion: egret.dev/v1alpha1\nkind: Egress\nmetadata: {name: eg-web}\nspec:\n  appliedTo: {podSelector: {matchLabels: {app: web}}}\n  externalIPPool: pool-a\nstatus: {egressIP: 10.10.0.11, egressNode: node-1}\n",
        )
        .unwrap();
    server
        .put_yaml("apiVersion: egret.dev/v1alpha1\nkind: ExternalIPPool\nmetadata: {name: pool-a}\nspec:\n  ipRanges: [{cidr: 10.10.0.8/29}]\n  nodeSelector: {}\nstatus: {usage: {total: 8, used: 1}}\n")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, server.kubeconfig()).unwrap();
    let kc = kc.to_string_lossy().into_owned();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || egret(&args.iter().map(String::as_str).collect::<Vec<_>>()))
    };
    let o = run(vec!["get".into(), "egress".into(), "--kubeconfig".into(), kc.clone()]).await.unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout(&o).contains("eg-web   10.10.0.11   node-1"), "{}", stdout(&o));
    let o = run(vec!["get".into(), "eip".into(), "--kubeconfig".into(), kc.clone(), "-o".into(), "json".into()])
        .await
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list["items"][0]["status"]["usage"]["total"], 8, "{list:#}");
    let o = run(vec!["get".into(), "members".into(), "--kubeconfig".into(), kc]).await.unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/metrics"));
}

/// A free port on the loopback (`udp` or TCP).
fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    // Never wait forever: a failure must say so rather than hang the run.
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// `egret controller --source kubernetes` against the test double of the API server: it takes
/// the Lease, allocates and writes status by server-side apply, marks an Egress that does not
/// parse and publishes an Event for it, serves its health and metrics, and gives the Lease up
/// when stopped. (Its gossip stays on the loopback: the Nodes' addresses are loopback ones.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_on_the_api_server_double() {
    use egret_kube::testserver::TestServer;
    let server = TestServer::start().await.unwrap();
    for (i, ip) in [(1, "127.0.0.2"), (2, "127.0.0.3")] {
        server
            .put(serde_json::json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": format!("node-{i}"), "labels": {"kubernetes.io/hostname": format!("node-{i}")}},
                "spec": {"podCIDR": format!("10.244.{i}.0/24")},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}))
            .unwrap();
    }
    server.put(serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}})).unwrap();
    server
        .put_yaml("apiVersion: egret.dev/v1alpha1\nkind: ExternalIPPool\nmetadata: {name: pool-a}\nspec:\n  ipRanges: [{start: 10.10.0.11, end: 10.10.0.20}]\n  nodeSelector: {}\n")
        .unwrap();
    server
        .put_yaml("apiVersion: egret.dev/v1alpha1\nkind: Egress\nmetadata: {name: eg-good}\nspec:\n  appliedTo: {podSelector: {matchLabels: {app: web}}}\n  externalIPPool: pool-a\n")
        .unwrap();
    server
        .put_yaml("apiVersion: egret.dev/v1alpha1\nkind: Egress\nmetadata: {name: eg-bad}\nspec:\n  appliedTo: {podSelector: {matchLabels: {app: web}}}\n  externalIPPool: 5\n")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, server.kubeconfig()).unwrap();
    let key = dir.path().join("gossip.key");
    egret_gossip::generate_key_file(&key).unwrap();
    let (gossip, health) = (free_port(true), free_port(false));
    let mut child = Command::new(env!("CARGO_BIN_EXE_egret"))
        .args(["controller", "--source", "kubernetes", "--kubeconfig"])
        .arg(&kc)
        .args(["--identity", "t-0", "--gossip-key-file"])
        .arg(&key)
        .args(["--gossip-addr", &format!("127.0.0.1:{gossip}"), "--health-addr", &format!("127.0.0.1:{health}")])
        .args(["--lease-duration-ms", "3000", "--renew-deadline-ms", "2000", "--retry-period-ms", "500"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("controller.log")).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(dir.path().join("controller.log")).unwrap_or_default();
    let egress = |name: &str| server.get("egret.dev/v1alpha1", "Egress", None, name).unwrap_or_default();
    let cond = |e: &serde_json::Value, t: &str| {
        e["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == t).cloned())
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let good = egress("eg-good");
        let bad = egress("eg-bad");
        let events = server.list("events.k8s.io/v1", "Event");
        if cond(&good, "IPAllocated")["reason"] == "Allocated"
            && cond(&bad, "Valid")["reason"] == "Unparsable"
            && events.iter().any(|e| e["reason"] == "Unparsable")
        {
            assert_eq!(good["status"]["egressIP"], "10.10.0.11");
            assert!(cond(&bad, "Valid")["message"].as_str().unwrap().contains("spec.externalIPPool"), "{bad:#}");
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the controller exited: {status}\n{}", log());
        }
        assert!(std::time::Instant::now() < deadline, "no status in time: {good:#} {bad:#} {events:#?}\n{}", log());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let lease = server.get("coordination.k8s.io/v1", "Lease", Some("egret-system"), "egret-controller").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "t-0");
    let metrics = tokio::task::spawn_blocking(move || http_get(health, "/metrics")).await.unwrap();
    assert!(metrics.contains("egret_controller_leader 1"), "{metrics}");
    // Stopped cleanly, it hands the Lease over at once.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let stop_deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > stop_deadline {
            let _ = child.kill();
            panic!("the controller did not stop on SIGTERM\n{}", log());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    let lease = server.get("coordination.k8s.io/v1", "Lease", Some("egret-system"), "egret-controller").unwrap();
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease:#}");
}

#[test]
fn trace_names_the_egress_and_the_deciding_rule() {
    let o = egret(&["trace", "prod/web-1", "203.0.113.5:8080", "-f", "examples/seed-000-web-to-db"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = stdout(&o);
    assert!(out.contains("egress:      web-to-db-a leaves as 198.51.100.100 through node-"), "{out}");
    assert!(out.contains("verdict:     Allow by ClusterEgressPolicy web-to-db-a-only rule db-a"), "{out}");
    let o = egret(&["trace", "staging/web-1", "198.51.100.8:8080", "-f", "examples/firewall-tenant-pass"]);
    assert!(
        stdout(&o).contains("verdict:     Allow by EgressPolicy staging/web-to-partner rule partner-api"),
        "{}",
        stdout(&o)
    );
    let o = egret(&["trace", "prod/web-1", "198.51.100.8:8080", "-f", "examples/firewall-tenant-pass"]);
    assert!(stdout(&o).contains("verdict:     Deny by ClusterEgressPolicy baseline defaultAction"), "{}", stdout(&o));
    let o = egret(&["trace", "prod/nobody", "198.51.100.8:8080", "-f", "examples/firewall-tenant-pass"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no pod prod/nobody"));
}

#[test]
fn trace_answers_for_an_address_learned_as_a_name() {
    let ex = "examples/fqdn-allowlist";
    let o = egret(&["trace", "prod/web-1", "203.0.113.5:8080", "-f", ex]);
    let out = stdout(&o);
    assert!(out.contains("verdict:     Deny by EgressPolicy prod/web-names defaultAction"), "{out}");
    assert!(out.contains("note:        domain-name rules apply to this pod"), "{out}");
    let o = egret(&["trace", "prod/web-1", "203.0.113.5:8080", "-f", ex, "--name", "Alias.GitHub.test."]);
    let out = stdout(&o);
    assert!(out.contains("verdict:     Allow by EgressPolicy prod/web-names rule github"), "{out}");
    assert!(out.contains("name:        Alias.GitHub.test. matches alias.github.test"), "{out}");
    let o = egret(&["trace", "prod/web-1", "203.0.113.5:8080", "-f", ex, "--name", "n0001.fresh.test"]);
    assert!(stdout(&o).contains("rule lab-names"), "{}", stdout(&o));
    // A name no rule names, or a port the rule does not allow: the default.
    for (dest, name) in [("203.0.113.5:8080", "www.example.test"), ("203.0.113.5:22", "api.github.test")] {
        let o = egret(&["trace", "prod/web-1", dest, "-f", ex, "--name", name]);
        assert!(stdout(&o).contains("Deny by EgressPolicy prod/web-names defaultAction"), "{}", stdout(&o));
    }
}

#[test]
fn a_bad_policy_is_rejected_with_its_field_paths() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: egret.dev/v1alpha1\nkind: ClusterEgressPolicy\nmetadata: {name: bad}\nspec:\n  appliedTo: {namespaceSelector: {}}\n  rules:\n  - {name: a, action: Allow, ports: [{protocol: ICMP, port: 8}]}\n  - {name: a, action: Maybe, to: {cidrs: [10.0.0.1/8]}, ports: [{port: 90, endPort: 80}]}\n",
    )
    .unwrap();
    let o = egret(&["validate", "-f", "examples/cluster", file.to_str().unwrap()]);
    assert!(!o.status.success());
    let out = stdout(&o);
    for want in [
        "ClusterEgressPolicy/bad: spec.rules[0].ports[0].port: ICMP has no ports",
        "ClusterEgressPolicy/bad: spec.rules[1].name: duplicate rule name",
        "ClusterEgressPolicy/bad: spec.rules[1].action: \"Maybe\" is not an action",
        "ClusterEgressPolicy/bad: spec.rules[1].to.cidrs[0]: \"10.0.0.1/8\" has host bits set",
        "ClusterEgressPolicy/bad: spec.rules[1].ports[0].endPort: 80 is below port 90",
    ] {
        assert!(out.contains(want), "missing {want:?} in {out}");
    }
    // A field the API does not have, named by its path.
    std::fs::write(&file, "apiVersion: egret.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: p, namespace: a}\nspec:\n  rules: [{name: a, action: Allow, to: {cidr: [10.0.0.0/8]}}]\n").unwrap();
    let o = egret(&["validate", "-f", file.to_str().unwrap()]);
    assert!(stdout(&o).contains("spec.rules[0].to.cidr: unknown field"), "{}", stdout(&o));
}

#[test]
fn trace_and_plan_answer_as_an_agent_enforcing_network_policies() {
    let dir = "examples/seed-001-network-policy";
    let trace = |to: &str, enforce: bool| {
        let mut args = vec!["trace", "production/backend-1", to, "-f", dir];
        if enforce {
            args.push("--enforce-network-policy");
        }
        let o = egret(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        stdout(&o)
    };
    let out = trace("203.0.113.5:443", true);
    assert!(out.contains("policies:    NetworkPolicy production/egress-control"), "{out}");
    assert!(
        out.contains("verdict:     Allow by NetworkPolicy production/egress-control rule spec.egress[2].to[0]"),
        "{out}"
    );
    let out = trace("203.0.113.5:8080", true);
    assert!(
        out.contains(
            "verdict:     Deny by NetworkPolicy isolation (NetworkPolicy production/egress-control selects the pod"
        ),
        "{out}"
    );
    // Without the flag: as an agent that does not enforce them, with a note saying so.
    let out = trace("203.0.113.5:8080", false);
    assert!(out.contains("verdict:     Allow by no policy"), "{out}");
    assert!(out.contains("note:        NetworkPolicy production/egress-control selects this pod"), "{out}");

    let o = egret(&["plan", "-f", dir, "--enforce-network-policy"]);
    let out = stdout(&o);
    assert!(out.contains("production/backend-1 | node-1 | NetworkPolicy production/egress-control"), "{out}");
    assert!(!out.contains("production/frontend-1"), "{out}");
    let o = egret(&["plan", "-f", dir]);
    assert!(!stdout(&o).contains("NetworkPolicy"), "{}", stdout(&o));
}

#[test]
fn network_policy_problems_and_named_ports() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("np.yaml");
    let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: prod}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 203.0.113.0/24}}]\n    ports: [{port: https}, {port: 8080}]\n";
    std::fs::write(&file, np).unwrap();
    // A named port: a warning naming the field; the rest applies.
    let o = egret(&["validate", "-f", "examples/cluster", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(stdout(&o).contains("1 NetworkPolicies"), "{}", stdout(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning: ")
            && err.contains(
                "NetworkPolicy/prod/np: spec.egress[0].ports[0].port: named port \"https\" cannot be resolved"
            ),
        "{err}"
    );
    let o = egret(&[
        "trace",
        "prod/web-1",
        "203.0.113.5:443",
        "-f",
        "examples/cluster",
        file.to_str().unwrap(),
        "--enforce-network-policy",
    ]);
    assert!(stdout(&o).contains("verdict:     Deny by NetworkPolicy isolation"), "{}", stdout(&o));
    // Bad content: rejected, naming the file and the field.
    std::fs::write(&file, np.replace("203.0.113.0/24", "203.0.113.0/24, except: [198.51.100.0/24]")).unwrap();
    let o = egret(&["validate", "-f", "examples/cluster", file.to_str().unwrap()]);
    assert!(!o.status.success());
    let out = stdout(&o);
    assert!(out.contains("np.yaml: NetworkPolicy/prod/np: spec.egress[0].to[0].ipBlock.except[0]: 198.51.100.0/24 is not strictly inside"), "{out}");
}

#[test]
fn json_logs_are_one_object_per_line_with_the_span_fields() {
    let dir = std::env::temp_dir().join(format!("egret-cli-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_egret"))
        .args(["--log-format", "json", "controller", "--store", dir.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run egret controller");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // SIGTERM: the controller stops cleanly and says so.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}"))).collect();
    let messages: Vec<&str> = lines.iter().filter_map(|l| l["fields"]["message"].as_str()).collect();
    assert!(messages.contains(&"controller started"), "{text}");
    assert!(messages.contains(&"controller stopped"), "{text}");
    for l in &lines {
        assert_eq!(l["spans"][0]["name"], "controller", "{l}");
        assert!(l["level"].is_string() && l["timestamp"].is_string(), "{l}");
    }
}
