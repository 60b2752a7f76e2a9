//! End-to-end tests through the lab: real controller and agents in network namespaces, real
//! TCP connections from pods to the outside whoami servers. Privileged: ignored by default; run
//! as root with `EGRET_PRIVILEGED_TESTS=1 cargo test -- --include-ignored`, and they fail,
//! saying why, when run that way without root, the variable, `ip` or `nft`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure is a test failure

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicU32 = AtomicU32::new(0);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn egret(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_egret")).args(args).current_dir(root()).output().expect("run egret")
}

/// A lab brought up for one test and brought down when dropped, even on panic.
struct Lab {
    name: String,
}

impl Lab {
    fn up() -> Lab {
        Lab::up_with(&[])
    }

    /// A lab brought up with extra `lab up` arguments.
    fn up_with(extra: &[&str]) -> Lab {
        egret_netns::require_privileged();
        let name = format!("t{}x{}", std::process::id() % 100_000, SEQ.fetch_add(1, Ordering::Relaxed));
        let lab = Lab { name };
        let mut args = vec!["lab", "up"];
        args.extend(extra);
        let o = lab.run(&args);
        assert!(
            o.status.success(),
            "lab up: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        lab
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--name", &self.name]);
        egret(&a)
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "egret {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn apply(&self, file: &str) -> String {
        self.ok(&["lab", "apply", "-f", file])
    }

    /// The source address db-a (or `to`) sees from `pod`, on the first attempt.
    fn whoami(&self, pod: &str, to: &str) -> String {
        let o = self.run(&["lab", "whoami", pod, "--to", to]);
        if o.status.success() { String::from_utf8_lossy(&o.stdout).trim().to_string() } else { "no answer".into() }
    }

    /// Waits up to 5 s until `pod` reaches `to` with the source `want`; fails with `what`.
    fn wait_source(&self, pod: &str, to: &str, want: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.whoami(pod, to) != want {
            assert!(Instant::now() < deadline, "{what}");
        }
    }

    fn store(&self) -> String {
        format!("/run/egret/labs/{}/store", self.name)
    }

    fn get_egress(&self) -> serde_json::Value {
        let o = egret(&["get", "egress", "--store", &self.store(), "-o", "json"]);
        serde_json::from_slice(&o.stdout).unwrap()
    }

    fn egress(&self, name: &str) -> serde_json::Value {
        self.get_egress()["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["metadata"]["name"] == name)
            .cloned()
            .unwrap_or_default()
    }

    /// Polls until `check` holds for the named Egress (the controller writes status shortly
    /// after the agents report).
    fn wait_egress(&self, name: &str, check: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let e = self.egress(name);
            if check(&e) {
                return e;
            }
            assert!(Instant::now() < deadline, "Egress {name} never satisfied the check: {e:#}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the named Egress has a gateway; returns the Egress and its node.
    fn wait_placed(&self, name: &str) -> (serde_json::Value, String) {
        let e = self.wait_egress(name, |e| e["status"]["egressNode"].is_string());
        let node = e["status"]["egressNode"].as_str().unwrap_or_default().to_string();
        (e, node)
    }

    fn pod_netns(&self, pod: &str) -> egret_netns::Netns {
        egret_netns::Netns::attach(&format!("egret-lab-{}-p-{}", self.name, pod.replace('/', "-"))).unwrap()
    }

    /// The Prometheus text of a node's agent.
    fn scrape(&self, node: &str) -> String {
        use std::io::{Read, Write};
        let ns = egret_netns::Netns::attach(&format!("egret-lab-{}-n{}", self.name, node.trim_start_matches("node-")))
            .unwrap();
        ns.run(|| {
            let mut s = std::net::TcpStream::connect("127.0.0.1:9090").unwrap();
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .unwrap()
    }
}

/// The value of the one series of `text` whose line starts with `series` (name and labels).
fn series(text: &str, series: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(series))?.rsplit(' ').next()?.parse().ok()
}

impl Drop for Lab {
    fn drop(&mut self) {
        let o = self.run(&["lab", "down"]);
        if !o.status.success() {
            eprintln!("lab down {}: {}", self.name, String::from_utf8_lossy(&o.stderr));
        }
    }
}

fn condition<'a>(e: &'a serde_json::Value, type_: &str) -> &'a serde_json::Value {
    e["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or(&serde_json::Value::Null)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

/// What seed 002 (HA) promises once applied: prod's web pods leave with 10.10.0.11, staging's
/// with 10.10.0.12, other pods with their node's address.
fn seed_002_ha_sources(lab: &Lab) {
    assert_eq!(lab.whoami("prod/web-1", "db-a"), "10.10.0.11");
    assert_eq!(lab.whoami("prod/web-2", "db-a"), "10.10.0.11");
    assert_eq!(lab.whoami("staging/web-1", "db-a"), "10.10.0.12");
    assert_eq!(lab.whoami("default/client-1", "db-a"), "10.10.0.101");
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn seed_002_ha_example() {
    let lab = Lab::up();
    assert_eq!(lab.whoami("prod/web-1", "db-a"), "10.10.0.101", "before any Egress: the node IP");
    lab.apply("examples/seed-002-ha/egress.yaml");
    seed_002_ha_sources(&lab);
    for name in ["egress-prod-web", "egress-staging-web"] {
        let (e, _) = lab.wait_placed(name);
        assert_eq!(condition(&e, "IPAssigned")["status"], "True");
    }
    let table = lab.ok(&["get", "egress", "--store", &lab.store()]);
    assert!(table.contains("egress-prod-web      10.10.0.11   node-"), "{table}");
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn seed_002_static_example() {
    let lab = Lab::up();
    lab.apply("examples/seed-002-static/egress.yaml");
    assert_eq!(lab.whoami("prod/web-1", "db-a"), "10.10.0.104");
    assert_eq!(lab.whoami("prod/payment-1", "db-a"), "10.10.0.104");
    assert_eq!(lab.whoami("staging/web-1", "db-a"), "10.10.0.105");
    assert_eq!(lab.whoami("default/client-1", "db-a"), "10.10.0.101");
    let e = lab.wait_egress("egress-prod", |e| e["status"]["egressNode"] == "node-4");
    assert_eq!(e["status"]["egressIP"], "10.10.0.104");
    lab.wait_egress("egress-staging", |e| e["status"]["egressNode"] == "node-5");
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn seed_004_cilium_and_seed_000_unchanged() {
    let lab = Lab::up();
    lab.apply("examples/seed-004-cilium/policy.yaml");
    assert_eq!(lab.whoami("default/mediabot-1", "db-a"), "10.168.60.100");
    assert_eq!(lab.whoami("default/client-1", "db-a"), "10.10.0.101");
    lab.wait_egress("egress-sample", |e| e["status"]["egressNode"] == "node-2");
    lab.ok(&["lab", "delete", "-f", "examples/seed-004-cilium/policy.yaml"]);
    assert_eq!(lab.whoami("default/mediabot-1", "db-a"), "10.10.0.101");

    lab.apply("examples/seed-000-web-to-db/egress.yaml");
    assert_eq!(lab.whoami("prod/web-1", "db-a"), "198.51.100.100");
    assert_eq!(lab.whoami("staging/web-1", "db-a"), "198.51.100.100");
    // Only database A is steered; other destinations keep the node IP.
    assert_eq!(lab.whoami("prod/web-1", "bad-host"), "10.10.0.101");
    assert_eq!(lab.whoami("default/malicious-1", "db-a"), "10.10.0.103");
}

/// The seed 000 figure's access control and a Pass hand-over to a namespace, through the
/// real agents: allowed connections work, denied ones are refused, deleting the policies
/// restores everything.
#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn egress_policies_allow_deny_and_pass() {
    let lab = Lab::up();
    lab.apply("examples/seed-000-web-to-db/egress.yaml");
    lab.apply("examples/seed-000-web-to-db/policy.yaml");
    // app=web reaches database A, with the Egress's IP, and nothing else.
    assert_eq!(lab.whoami("prod/web-1", "db-a"), "198.51.100.100");
    assert_eq!(lab.whoami("staging/web-1", "db-a"), "198.51.100.100");
    assert_eq!(lab.whoami("prod/web-1", "bad-host"), "no answer");
    // Every other pod reaches nothing outside the cluster.
    assert_eq!(lab.whoami("default/malicious-1", "db-a"), "no answer");
    assert_eq!(lab.whoami("default/client-1", "bad-host"), "no answer");
    lab.ok(&["lab", "delete", "-f", "examples/seed-000-web-to-db/policy.yaml"]);
    assert_eq!(lab.whoami("default/malicious-1", "db-a"), "10.10.0.103");

    lab.apply("examples/firewall-tenant-pass/policy.yaml");
    // Passed to staging's own policy, which allows its web pods to reach bad-host.
    assert_eq!(lab.whoami("staging/web-1", "bad-host"), "10.10.0.102");
    // prod has no policy of its own: the cluster's default deny.
    assert_eq!(lab.whoami("prod/web-1", "bad-host"), "no answer");
    // Not passed: the cluster's default deny, also for staging.
    assert_eq!(lab.whoami("staging/web-1", "db-a"), "no answer");
    lab.ok(&["lab", "delete", "-f", "examples/firewall-tenant-pass/policy.yaml"]);
    assert_eq!(lab.whoami("prod/web-1", "bad-host"), "10.10.0.101");
}

/// Seed 001's NetworkPolicy, verbatim, enforced by the lab's agents (they run with
/// `--enforce-network-policy`): backend pods of production reach 203.0.113.0/24 on TCP 443 only
/// (the outside hosts serve whoami on 443 and 8080), a pod it does not select is unaffected, and
/// deleting it lifts the isolation.
fn seed_001_network_policy(lab: &Lab) {
    lab.apply("examples/seed-001-network-policy/production.yaml");
    assert_eq!(lab.whoami("production/backend-1", "203.0.113.5:8080"), "10.10.0.101", "before: not isolated");
    // The whole example directory (the lab's cluster, production, the policy).
    lab.apply("examples/seed-001-network-policy");
    assert_eq!(lab.whoami("production/backend-1", "203.0.113.5:443"), "10.10.0.101");
    assert_eq!(lab.whoami("production/backend-2", "203.0.113.5:443"), "10.10.0.103");
    // Another port, another destination: refused.
    assert_eq!(lab.whoami("production/backend-1", "203.0.113.5:8080"), "no answer");
    assert_eq!(lab.whoami("production/backend-2", "198.51.100.8:443"), "no answer");
    assert_eq!(lab.whoami("production/backend-1", "bad-host"), "no answer");
    // Not selected: unaffected.
    assert_eq!(lab.whoami("production/frontend-1", "203.0.113.5:8080"), "10.10.0.101");
    assert_eq!(lab.whoami("prod/web-1", "bad-host"), "10.10.0.101");
    // A bad edit is rejected whole, naming its field; the running policy stays.
    let dir = tempfile::tempdir().unwrap();
    let seed = std::fs::read_to_string(root().join("examples/seed-001-network-policy/network-policy.yaml")).unwrap();
    let bad = seed.replace("      port: 443", "      port: 443\n      endPort: 80");
    let o = lab.run(&["lab", "apply", "-f", &write(dir.path(), "bad.yaml", &bad)]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(
            "bad.yaml: NetworkPolicy/production/egress-control: spec.egress[2].ports[0].endPort: 80 is below port 443"
        ),
        "{err}"
    );
    assert_eq!(lab.whoami("production/backend-1", "203.0.113.5:443"), "10.10.0.101");
    assert_eq!(lab.whoami("production/backend-1", "203.0.113.5:8080"), "no answer");
    lab.ok(&["lab", "delete", "-f", "examples/seed-001-network-policy/network-policy.yaml"]);
    assert_eq!(lab.whoami("production/backend-1", "203.0.113.5:8080"), "10.10.0.101");
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn seed_001_network_policy_example() {
    seed_001_network_policy(&Lab::up());
}

/// The same with the agents watching NetworkPolicies through the API server double.
#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn seed_001_network_policy_through_the_api_server_double() {
    seed_001_network_policy(&Lab::up_with(&["--api-server"]));
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn live_changes() {
    let lab = Lab::up();
    let dir = tempfile::tempdir().unwrap();
    lab.apply("examples/seed-002-ha/egress.yaml");
    assert_eq!(lab.whoami("prod/web-1", "db-a"), "10.10.0.11");

    // Editing appliedTo: now app=payment instead of app=web.
    let payment = std::fs::read_to_string(root().join("examples/seed-002-ha/egress.yaml")).unwrap().replacen(
        "app: web",
        "app: payment",
        1,
    );
    lab.apply(&write(dir.path(), "payment.yaml", &payment));
    assert_eq!(lab.whoami("prod/payment-1", "db-a"), "10.10.0.11");
    assert_eq!(lab.whoami("prod/web-1", "db-a"), "10.10.0.101");

    // Changing egressIP (inside the pool).
    let moved = payment.replacen(
        "  externalIPPool: external-ip-pool",
        "  externalIPPool: external-ip-pool\n  egressIP: 10.10.0.15",
        1,
    );
    lab.apply(&write(dir.path(), "moved.yaml", &moved));
    assert_eq!(lab.whoami("prod/payment-1", "db-a"), "10.10.0.15");
    lab.wait_egress("egress-prod-web", |e| e["status"]["egressIP"] == "10.10.0.15");

    // A pod created after the Egress uses the egress IP on its very first connection.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {namespace: prod, name: payment-2, labels: {app: payment}}\nspec: {nodeName: node-5, containers: [{name: main, image: x}]}\n";
    lab.apply(&write(dir.path(), "pod.yaml", pod));
    assert_eq!(lab.whoami("prod/payment-2", "db-a"), "10.10.0.15");

    // Deleting the Egress: back to the node IP.
    lab.ok(&["lab", "delete", "-f", &write(dir.path(), "moved2.yaml", &moved)]);
    assert_eq!(lab.whoami("prod/payment-1", "db-a"), "10.10.0.103");
    assert_eq!(lab.whoami("prod/payment-2", "db-a"), "10.10.0.105");

    // A pool with no eligible node: IPAssigned=False with a reason, and traffic fails closed.
    let nowhere = "apiVersion: egret.dev/v1alpha1\nkind: ExternalIPPool\nmetadata: {name: nowhere}\nspec:\n  ipRanges: [{start: 10.10.0.30, end: 10.10.0.31}]\n  nodeSelector: {matchLabels: {network-role: nowhere}}\n---\napiVersion: egret.dev/v1alpha1\nkind: Egress\nmetadata: {name: stranded}\nspec:\n  appliedTo: {podSelector: {matchLabels: {app: client}}}\n  externalIPPool: nowhere\n";
    lab.apply(&write(dir.path(), "nowhere.yaml", nowhere));
    let e = lab.wait_egress("stranded", |e| condition(e, "IPAssigned")["reason"] == "NoEligibleNode");
    assert_eq!(condition(&e, "IPAssigned")["status"], "False");
    assert_eq!(e["status"]["egressIP"], "10.10.0.30");
    assert_eq!(lab.whoami("default/client-1", "db-a"), "no answer", "fail closed: no node-IP leak");
    // The drops are counted on client-1's node, for the Egress and why, not as traffic leaving.
    let m = scrape(&lab, 1);
    let dropped = series(&m, r#"egret_egress_dropped_packets_total{egress="stranded",reason="no_gateway"}"#);
    assert!(dropped.is_some_and(|n| n > 0.0), "{dropped:?} in\n{m}");
    assert!(series(&m, r#"egret_egress_packets_total{egress="stranded""#).is_none_or(|n| n == 0.0), "{m}");
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn bad_input_is_rejected_and_changes_nothing() {
    let lab = Lab::up();
    lab.apply("examples/seed-002-ha/egress.yaml");
    let dir = tempfile::tempdir().unwrap();
    let bad = "apiVersion: egret.dev/v1alpha1\nkind: Egress\nmetadata: {name: egress-prod-web}\nspec:\n  appliedTo: {podSelector: {matchExpressions: [{key: app, operator: Equals, values: [web]}]}}\n  externalIPPool: external-ip-pool\n";
    let o = lab.run(&["lab", "apply", "-f", &write(dir.path(), "bad.yaml", bad)]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Egress/egress-prod-web: spec.appliedTo.podSelector.matchExpressions[0].operator"), "{err}");
    assert_eq!(lab.whoami("prod/web-1", "db-a"), "10.10.0.11", "the running state is untouched");
    let e = lab.egress("egress-prod-web");
    assert_eq!(e["spec"]["appliedTo"]["podSelector"]["matchLabels"]["app"], "web");
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn restarts_keep_allocations_and_connections() {
    let lab = Lab::up();
    lab.apply("examples/seed-002-ha/egress.yaml");
    let (before, gateway) = lab.wait_placed("egress-prod-web");
    let mut conn = egret_netns::WhoamiConn::open(
        &lab.pod_netns("prod/web-2"),
        "203.0.113.5:8080".parse().unwrap(),
        Duration::from_secs(15),
    )
    .unwrap();
    assert_eq!(conn.seen.to_string(), "10.10.0.11");
    lab.ok(&["lab", "restart", "controller"]);
    lab.ok(&["lab", "restart", "node-2"]);
    lab.ok(&["lab", "restart", &gateway]);
    conn.echo("still there after restarts").unwrap();
    let (after, _) = lab.wait_placed("egress-prod-web");
    assert_eq!(after["status"]["egressIP"], before["status"]["egressIP"]);
    assert_eq!(lab.egress("egress-staging-web")["status"]["egressIP"], "10.10.0.12");
    assert_eq!(lab.whoami("prod/web-1", "db-a"), "10.10.0.11");
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn second_up_is_an_error_and_down_cleans_everything_even_after_a_crash() {
    let lab = Lab::up();
    let o = lab.run(&["lab", "up"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already up"));
    let status = lab.ok(&["lab", "status"]);
    assert!(status.contains("node-6") && status.contains("controller: running"), "{status}");
    // A crash: every lab process dies at once and the lab's record is lost; `down` still
    // finds and removes everything by the namespace prefix.
    let state_file = format!("/run/egret/labs/{}/lab.json", lab.name);
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    let mut pids: Vec<u64> = state["agents"].as_object().unwrap().values().filter_map(|v| v.as_u64()).collect();
    // The controller is left running: `down` must find it without the record.
    pids.extend(state["whoami_pid"].as_u64());
    let controller = state["controller_pid"].as_u64().unwrap();
    for pid in &pids {
        // A crash: SIGKILL, with no `kill` command needed on the machine.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    std::fs::remove_file(&state_file).unwrap();
    lab.ok(&["lab", "down"]);
    // Gone, or a zombie waiting for whoever adopted it to reap it.
    let stat = std::fs::read_to_string(format!("/proc/{controller}/stat")).unwrap_or_default();
    assert!(stat.is_empty() || stat.split_whitespace().nth(2) == Some("Z"), "the controller survived down: {stat}");
    let left =
        String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).into_owned();
    assert!(!left.contains(&format!("egret-lab-{}-", lab.name)), "{left}");
    assert!(!Path::new(&format!("/run/egret/labs/{}", lab.name)).exists());
}

fn mac_of(netns: &str, dev: &str) -> String {
    let out = egret_netns::Netns::attach(netns).unwrap().ip(&["-br", "link", "show", "dev", dev]).unwrap();
    out.split_whitespace().nth(2).unwrap().to_string()
}

fn router_neighbour(lab: &Lab, ip: &str) -> Option<String> {
    let out = egret_netns::Netns::attach(&format!("egret-lab-{}-r", lab.name))
        .unwrap()
        .ip(&["neigh", "show", "to", ip, "dev", "br0"])
        .unwrap();
    let words: Vec<&str> = out.split_whitespace().collect();
    words.iter().position(|w| *w == "lladdr").map(|i| words[i + 1].to_string())
}

fn holders(lab: &Lab, ip: &str) -> Vec<String> {
    let ip: std::net::IpAddr = ip.parse().unwrap();
    let store = egret_store::Store::open(lab.store()).unwrap();
    let reports: Vec<(String, egret_store::AgentReport)> = store.read_reports();
    reports.into_iter().filter(|(_, r)| r.hosted.contains(&ip)).map(|(n, _)| n).collect()
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn failover_moves_the_ip_and_the_routers_neighbour_entry() {
    let lab = Lab::up();
    lab.apply("examples/seed-002-ha/egress.yaml");
    let (_, gw) = lab.wait_placed("egress-prod-web");
    let (_, staging_gw) = lab.wait_placed("egress-staging-web");
    let probe = if gw == "node-2" { "prod/web-1" } else { "prod/web-2" };
    assert_eq!(lab.whoami(probe, "db-a"), "10.10.0.11");
    // Read from the kernels of the probe's node and of the gateway: the probe's traffic goes
    // through the tunnel to the gateway, which SNATs it to the egress IP; no drift.
    let probe_node = if probe == "prod/web-1" { "node-1" } else { "node-2" };
    let view = lab.ok(&["get", "datapath", "--node", probe_node]);
    assert!(view.contains(probe) && view.contains("egress-prod-web"), "{view}");
    assert!(view.contains(&format!("tunnel to {gw} (")), "{view}");
    assert!(view.contains("Drift against the plan: none"), "{view}");
    let view = lab.ok(&["get", "datapath", "--node", &gw]);
    assert!(view.contains("Egress IPs it SNATs to: ") && view.contains("10.10.0.11"), "{view}");
    assert!(view.contains("Drift against the plan: none"), "{view}");

    // Kill a node that is neither gateway nor hosts the probe: no egress IP moves.
    let bystander = ["node-3", "node-4", "node-5"].into_iter().find(|n| *n != gw && *n != staging_gw).unwrap();
    lab.ok(&["lab", "kill-node", bystander]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(holders(&lab, "10.10.0.11"), vec![gw.clone()]);
    assert_eq!(holders(&lab, "10.10.0.12"), vec![staging_gw.clone()]);
    assert_eq!(lab.whoami(probe, "db-a"), "10.10.0.11");
    lab.ok(&["lab", "restore-node", bystander]);

    // Kill the gateway: the IP moves, traffic comes back with the same source, and the
    // router's neighbour entry follows the gratuitous ARP.
    lab.ok(&["lab", "kill-node", &gw]);
    // Also bounds the settling of the other IP below.
    let deadline = Instant::now() + Duration::from_secs(5);
    lab.wait_source(probe, "db-a", "10.10.0.11", &format!("traffic never came back after killing {gw}"));
    let moved = lab.wait_egress("egress-prod-web", |e| {
        e["status"]["egressNode"].is_string() && e["status"]["egressNode"] != gw.as_str()
    });
    let new_gw = moved["status"]["egressNode"].as_str().unwrap().to_string();
    let new_mac = mac_of(&format!("egret-lab-{}-n{}", lab.name, new_gw.trim_start_matches("node-")), "eth0");
    assert_eq!(router_neighbour(&lab, "10.10.0.11").as_deref(), Some(new_mac.as_str()));
    let members = lab.ok(&["get", "members", "--store", &lab.store(), "--node", &new_gw]);
    assert!(members.lines().any(|l| l.starts_with(&gw) && l.ends_with("Dead")), "{members}");
    // The new holder counted the failover, timed it, and counts the traffic it now carries.
    let m = lab.scrape(&new_gw);
    assert_eq!(series(&m, r#"egret_failovers_total{egress_ip="10.10.0.11"}"#), Some(1.0), "{m}");
    let count = series(&m, "egret_failover_takeover_seconds_count").unwrap_or(0.0);
    let sum = series(&m, "egret_failover_takeover_seconds_sum").unwrap_or(f64::MAX);
    assert!(count >= 1.0 && sum / count < 1.0, "take-over: {count} samples, {sum} s in all");
    assert!(series(&m, r#"egret_failover_takeover_seconds_bucket{le="1.0"}"#).unwrap_or(0.0) >= 1.0, "{m}");
    let bytes = r#"egret_egress_bytes_total{egress="egress-prod-web",egress_ip="10.10.0.11",gateway="true"}"#;
    assert!(series(&m, bytes).unwrap_or(0.0) > 0.0, "{m}");
    let conns = r#"egret_egress_connections_total{egress="egress-prod-web",egress_ip="10.10.0.11"}"#;
    assert!(series(&m, conns).unwrap_or(0.0) >= 1.0, "{m}");

    // Restore it: in the end exactly one node holds each IP.
    lab.ok(&["lab", "restore-node", &gw]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(holders(&lab, "10.10.0.11").len(), 1, "{:?}", holders(&lab, "10.10.0.11"));
    // The other IP settles too (it may still be moving back when the first has).
    while holders(&lab, "10.10.0.12").len() != 1 {
        assert!(Instant::now() < deadline, "after healing: holders of .12 {:?}", holders(&lab, "10.10.0.12"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(lab.whoami(probe, "db-a"), "10.10.0.11");
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn dual_stack_pods_leave_with_each_familys_egress_ip_and_ipv6_fails_over_and_fails_closed() {
    let lab = Lab::up();
    lab.apply("examples/seed-002-ha/egress.yaml");
    lab.apply("examples/dual-stack/egress.yaml");
    let (e, gw) = lab.wait_placed("egress-prod-web-v6");
    assert_eq!(e["status"]["egressIP"], "fd00:10:10::e1", "the /124's first usable address: {e:#}");
    // Each family its own Egress: IPv4 and IPv6 from the same dual-stack pods.
    for pod in ["prod/web-1", "prod/web-2"] {
        assert_eq!(lab.whoami(pod, "db-a"), "10.10.0.11", "{pod}");
        assert_eq!(lab.whoami(pod, "db-a6"), "fd00:10:10::e1", "{pod}");
    }
    // Unselected over IPv6: the node's IPv6 address (the stand-in CNI's masquerade).
    assert_eq!(lab.whoami("default/client-1", "db-a6"), "fd00:10:10::101");
    let view = lab.ok(&["get", "datapath", "--node", "node-1"]);
    assert!(view.contains("fd00:10:244:1::10") && view.contains("egress-prod-web-v6"), "{view}");
    assert!(view.contains("Drift against the plan: none"), "{view}");

    // Kill the IPv6 gateway: the address moves, the router follows the unsolicited NA.
    let probe = if gw == "node-1" { "prod/web-2" } else { "prod/web-1" };
    lab.ok(&["lab", "kill-node", &gw]);
    lab.wait_source(probe, "db-a6", "fd00:10:10::e1", &format!("IPv6 traffic never came back after killing {gw}"));
    let moved = lab.wait_egress("egress-prod-web-v6", |e| {
        e["status"]["egressNode"].is_string() && e["status"]["egressNode"] != gw.as_str()
    });
    let new_gw = moved["status"]["egressNode"].as_str().unwrap().to_string();
    let new_mac = mac_of(&format!("egret-lab-{}-n{}", lab.name, new_gw.trim_start_matches("node-")), "eth0");
    assert_eq!(router_neighbour(&lab, "fd00:10:10::e1").as_deref(), Some(new_mac.as_str()));
    lab.ok(&["lab", "restore-node", &gw]);

    // An IPv6 Egress whose pool no node may host: its pods' IPv6 traffic is dropped, never
    // sent with a node address; their IPv4 traffic is not its business.
    let dir = tempfile::tempdir().unwrap();
    let nowhere = "apiVersion: crd.antrea.io/v1beta1\nkind: ExternalIPPool\nmetadata: {name: v6-nowhere}\nspec:\n  ipRanges: [{cidr: 'fd00:10:10::f0/124'}]\n  nodeSelector: {matchLabels: {network-role: nowhere}}\n---\napiVersion: crd.antrea.io/v1beta1\nkind: Egress\nmetadata: {name: client-v6}\nspec:\n  appliedTo: {podSelector: {matchLabels: {app: client}}}\n  externalIPPool: v6-nowhere\n";
    lab.apply(&write(dir.path(), "nowhere.yaml", nowhere));
    assert_eq!(lab.whoami("default/client-1", "db-a6"), "no answer");
    assert_eq!(lab.whoami("default/client-1", "db-a"), "10.10.0.101");
}

/// `(egress IP, node)` of each of an Egress's several IPs, from its status.
fn gateways_of(e: &serde_json::Value) -> Vec<(String, Option<String>)> {
    e["status"]["gateways"]
        .as_array()
        .map(|g| {
            g.iter()
                .map(|g| (g["egressIP"].as_str().unwrap_or("").to_string(), g["egressNode"].as_str().map(String::from)))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn several_egress_ips_spread_pods_over_gateways_and_a_dead_gateway_moves_only_its_pods() {
    let lab = Lab::up();
    lab.apply("examples/several-ips/pods.yaml");
    lab.apply("examples/several-ips/egress.yaml");
    let all_placed = |e: &serde_json::Value| {
        let g = gateways_of(e);
        let nodes: BTreeSet<_> = g.iter().filter_map(|(_, n)| n.clone()).collect();
        g.len() == 4 && nodes.len() == 4
    };
    let e = lab.wait_egress("spread", all_placed);
    let before = gateways_of(&e);
    let ips: Vec<&str> = before.iter().map(|(ip, _)| ip.as_str()).collect();
    assert_eq!(ips, ["10.10.0.40", "10.10.0.41", "10.10.0.42", "10.10.0.43"], "{e:#}");
    assert_eq!(e["status"]["egressIP"], "10.10.0.40");
    // Each pod leaves with one of the four; together they use several.
    let pods: Vec<String> = (0..8).map(|i| format!("spread/app-{i}")).collect();
    let seen: BTreeMap<&str, String> = pods.iter().map(|p| (p.as_str(), lab.whoami(p, "db-a"))).collect();
    for (p, ip) in &seen {
        assert!(ips.contains(&ip.as_str()), "{p} left as {ip}");
    }
    let used: BTreeSet<&String> = seen.values().collect();
    assert!(used.len() >= 2, "{seen:?}");
    // The datapath says the same as the plan on a worker.
    let view = lab.ok(&["get", "datapath", "--node", "node-1"]);
    assert!(view.contains("Drift against the plan: none"), "{view}");

    // Kill the gateway of an IP that pods use: it moves to another gateway; its pods come back
    // with the same address; the other pods never change address or gateway.
    let (victim_ip, victim) = before.iter().find(|(ip, _)| used.contains(ip)).cloned().unwrap();
    let victim = victim.unwrap();
    lab.ok(&["lab", "kill-node", &victim]);
    for (p, ip) in &seen {
        lab.wait_source(p, "db-a", ip, &format!("{p} did not come back as {ip} after killing {victim}"));
    }
    let moved =
        lab.wait_egress("spread", |e| gateways_of(e).iter().all(|(_, n)| n.as_ref().is_some_and(|n| *n != victim)));
    let after = gateways_of(&moved);
    for ((ip, n0), (ip2, n1)) in before.iter().zip(&after) {
        assert_eq!(ip, ip2);
        if *ip == victim_ip {
            assert_ne!(n1, n0, "{ip} moved off {victim}");
        } else {
            assert_eq!(n1, n0, "{ip} stayed where it was");
        }
    }
    let assigned = condition(&moved, "IPAssigned");
    assert!(assigned["message"].as_str().unwrap().contains("share a gateway"), "{assigned:#}");
    // One live holder (the dead node's last report still lists it).
    let h = holders(&lab, &victim_ip);
    assert_eq!(h.iter().filter(|n| **n != victim).count(), 1, "{h:?}");

    // Back: it takes its IP back; the status is as at first.
    lab.ok(&["lab", "restore-node", &victim]);
    lab.wait_egress("spread", |e| gateways_of(e) == before);
    for (p, ip) in &seen {
        lab.wait_source(p, "db-a", ip, &format!("{p} did not stay {ip} after {victim} came back"));
    }
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn one_dual_stack_egress_and_ciliums_several_gateways() {
    let lab = Lab::up();
    // Antrea's dual-stack form: one pool per family, each IP on its own gateway.
    lab.apply("examples/several-ips/dual-stack.yaml");
    let e = lab.wait_egress("prod-web-dual", |e| gateways_of(e).iter().all(|(_, n)| n.is_some()));
    let g = gateways_of(&e);
    assert_eq!(g.iter().map(|(ip, _)| ip.as_str()).collect::<Vec<_>>(), ["10.10.0.45", "fd00:10:10::d1"], "{e:#}");
    assert_ne!(g[0].1, g[1].1, "{e:#}");
    for pod in ["prod/web-1", "prod/web-2"] {
        assert_eq!(lab.whoami(pod, "db-a"), "10.10.0.45", "{pod}");
        assert_eq!(lab.whoami(pod, "db-a6"), "fd00:10:10::d1", "{pod}");
    }
    // Cilium's egressGateways: the spread pods leave through both gateways' IPs.
    lab.apply("examples/several-ips/pods.yaml");
    lab.apply("examples/several-ips/cilium.yaml");
    lab.wait_egress("spread-cilium", |e| gateways_of(e).iter().filter(|(_, n)| n.is_some()).count() == 2);
    let seen: BTreeSet<String> = (0..8).map(|i| lab.whoami(&format!("spread/app-{i}"), "db-a")).collect();
    assert_eq!(seen, BTreeSet::from(["10.10.0.50".to_string(), "10.10.0.51".to_string()]));
}

/// The lab's address of `node` (node-N is 10.10.0.10N).
fn node_address(node: &str) -> String {
    egret_netns::node_ip(node.trim_start_matches("node-").parse().unwrap()).to_string()
}

/// The address of `node` on the lab's second uplink, eth1 (node-N is 192.168.100.10N).
fn eth1_address(node: &str) -> String {
    egret_netns::node_uplink2_ip(node.trim_start_matches("node-").parse().unwrap()).to_string()
}

/// Kills `gw`, the gateway of a gateway-node Egress: another gateway node takes over, shown in
/// the status with its own address (`address` of the node), and the mediabot leaves with it.
/// Returns the new gateway.
fn fails_over_with_the_new_gateways_address(lab: &Lab, egress: &str, gw: &str, address: fn(&str) -> String) -> String {
    lab.ok(&["lab", "kill-node", gw]);
    let moved = lab.wait_egress(egress, |e| e["status"]["egressNode"].is_string() && e["status"]["egressNode"] != gw);
    let next = moved["status"]["egressNode"].as_str().unwrap().to_string();
    assert_eq!(moved["status"]["egressIP"], address(&next).as_str(), "{moved:#}");
    lab.wait_source("default/mediabot-1", "db-a", &address(&next), &format!("no way out after killing {gw}"));
    next
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn a_cilium_gateway_without_egress_ip_leaves_with_the_gateway_nodes_own_address_and_fails_over() {
    let lab = Lab::up();
    lab.apply("examples/gateway-node/cilium.yaml");
    let (e, gw) = lab.wait_placed("egress-gateway-node");
    assert!(["node-4", "node-5", "node-6"].contains(&gw.as_str()), "{e:#}");
    let own = node_address(&gw);
    assert_eq!(e["status"]["egressIP"], own.as_str(), "{e:#}");
    assert_eq!(condition(&e, "IPAllocated")["reason"], "GatewayNode");
    lab.wait_source("default/mediabot-1", "db-a", &own, "the mediabot never left with its gateway's address");
    assert_eq!(lab.whoami("default/client-1", "db-a"), "10.10.0.101", "unselected: its own node's address");
    // Nothing is hosted: the address is the node's own.
    assert!(holders(&lab, &own).is_empty(), "{:?}", holders(&lab, &own));
    let view = lab.ok(&["get", "datapath", "--node", "node-1"]);
    assert!(view.contains("Drift against the plan: none"), "{view}");

    // The gateway dies: another gateway node takes over, with its own address.
    fails_over_with_the_new_gateways_address(&lab, "egress-gateway-node", &gw, node_address);
    // Back: the first gateway is the best-scoring node again.
    lab.ok(&["lab", "restore-node", &gw]);
    lab.wait_egress("egress-gateway-node", |e| e["status"]["egressNode"] == gw.as_str());
    lab.wait_source("default/mediabot-1", "db-a", &own, &format!("did not go back to {gw}"));

    // Egret's own form, two gateway nodes: each web pod leaves with one of their addresses.
    lab.apply("examples/gateway-node/egress.yaml");
    let e = lab.wait_egress("prod-web-gateway-nodes", |e| gateways_of(e).iter().all(|(_, n)| n.is_some()));
    let g = gateways_of(&e);
    assert_eq!(g.len(), 2, "{e:#}");
    assert_ne!(g[0].1, g[1].1, "two different gateways: {e:#}");
    for (ip, node) in &g {
        assert_eq!(ip, &node_address(node.as_deref().unwrap()), "{e:#}");
    }
    for pod in ["prod/web-1", "prod/web-2"] {
        let seen = lab.whoami(pod, "db-a");
        assert!(g.iter().any(|(ip, _)| *ip == seen), "{pod} left as {seen}: {e:#}");
    }
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn a_cilium_gateway_interface_leaves_with_that_interfaces_address_through_it_and_fails_over() {
    let lab = Lab::up();
    let router = egret_netns::Netns::attach(&format!("egret-lab-{}-r", lab.name)).unwrap();
    let before = egret_netns::uplink2_forwarded(&router).unwrap();
    lab.apply("examples/gateway-node/interface.yaml");
    let (e, gw) = lab.wait_placed("egress-interface");
    let eth1 = eth1_address;
    assert_eq!(e["status"]["egressIP"], eth1(&gw).as_str(), "{e:#}");
    assert!(condition(&e, "IPAssigned")["message"].as_str().unwrap().contains("interface eth1"), "{e:#}");
    lab.wait_source(
        "default/mediabot-1",
        "db-a",
        &eth1(&gw),
        "the mediabot never left with the gateway's eth1 address",
    );
    assert!(egret_netns::uplink2_forwarded(&router).unwrap() > before, "it left by the second uplink");
    assert_eq!(lab.whoami("default/client-1", "db-a"), "10.10.0.101", "unselected: its node's address, by eth0");
    let view = lab.ok(&["get", "datapath", "--node", &gw]);
    assert!(view.contains("Drift against the plan: none"), "{view}");

    // The gateway dies: another gateway node, with its own eth1 address.
    fails_over_with_the_new_gateways_address(&lab, "egress-interface", &gw, eth1_address);
    lab.ok(&["lab", "restore-node", &gw]);
}

/// Bits per second iperf3 received from `pod` to db-a (the first two seconds left out).
fn iperf(lab: &Lab, pod: &str, secs: u32) -> f64 {
    let out = exec(lab, pod, &["iperf3", "-c", "203.0.113.5", "-t", &secs.to_string(), "-O", "2", "-J"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap()
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn antreas_bandwidth_holds_an_egress_to_its_rate_and_leaves_others_on_the_gateway_alone() {
    let lab = Lab::up();
    let _server =
        egret_netns::Netns::attach(&format!("egret-lab-{}-x", lab.name)).unwrap().spawn("iperf3", &["-s"]).unwrap();
    lab.apply("examples/bandwidth/egress.yaml");
    let (limited, limited_gw) = lab.wait_placed("egress-prod-web-limited");
    let (_, free_gw) = lab.wait_placed("egress-client");
    assert_eq!(limited_gw, "node-3");
    assert_eq!(free_gw, "node-3", "both through the same gateway");
    assert_eq!(lab.whoami("prod/web-1", "db-a"), limited["status"]["egressIP"].as_str().unwrap());
    let got = iperf(&lab, "prod/web-1", 8);
    assert!((90e6..=110e6).contains(&got), "100Mbps Egress: {:.1} Mbit/s, not within 10%", got / 1e6);
    let other = iperf(&lab, "default/client-1", 4);
    assert!(other > 500e6, "the unlimited Egress on the same gateway: {:.1} Mbit/s", other / 1e6);

    // The limit is the Egress's total: with one IP on node-3 and one on node-4, each gateway
    // holds half of it, so a pod gets about 50 Mbit/s through either.
    let dir = tempfile::tempdir().unwrap();
    let two = std::fs::read_to_string(root().join("examples/bandwidth/egress.yaml")).unwrap().replace(
        "  externalIPPool: node-3-pool\n  bandwidth:",
        "  externalIPPools: [node-3-pool, node-4-pool]\n  bandwidth:",
    ) + "---\napiVersion: crd.antrea.io/v1beta1\nkind: ExternalIPPool\nmetadata: {name: node-4-pool}\n\
           spec:\n  ipRanges: [{start: 10.10.0.41, end: 10.10.0.45}]\n  \
           nodeSelector: {matchLabels: {kubernetes.io/hostname: node-4}}\n";
    assert!(two.contains("externalIPPools: [node-3-pool, node-4-pool]"));
    lab.apply(&write(dir.path(), "two.yaml", &two));
    let e = lab.wait_egress("egress-prod-web-limited", |e| {
        let nodes: Vec<Option<String>> = gateways_of(e).into_iter().map(|(_, n)| n).collect();
        nodes == [Some("node-3".to_string()), Some("node-4".to_string())]
    });
    let ips: Vec<String> = gateways_of(&e).into_iter().map(|(ip, _)| ip).collect();
    assert!(ips.contains(&lab.whoami("prod/web-1", "db-a")), "{ips:?}");
    let half = iperf(&lab, "prod/web-1", 8);
    assert!((45e6..=55e6).contains(&half), "half of 100Mbps: {:.1} Mbit/s, not within 10%", half / 1e6);

    // A rate that does not parse is refused with its field, and nothing changes.
    let dir = tempfile::tempdir().unwrap();
    let bad = std::fs::read_to_string(root().join("examples/bandwidth/egress.yaml"))
        .unwrap()
        .replace("rate: 100Mbps", "rate: fast");
    let o = lab.run(&["lab", "apply", "-f", &write(dir.path(), "bad.yaml", &bad)]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("spec.bandwidth.rate"), "{err}");
}

/// The seeds, failover and egress policies with pods plumbed by a real CNI plugin (`--cni`),
/// whose own `ipMasq` masquerade (iptables) is in place: it never catches steered traffic.
fn beside_a_real_cni(plugin: &str) {
    let lab = Lab::up_with(&["--cni", plugin]);
    let n1 = egret_netns::Netns::attach(&format!("egret-lab-{}-n1", lab.name)).unwrap();
    let nat = n1.exec("nft", &["list", "table", "ip", "nat"]).unwrap();
    assert!(nat.contains("CNI-"), "the plugin's masquerade is in place: {nat}");
    assert_eq!(lab.whoami("prod/web-1", "db-a"), "10.10.0.101", "before any Egress: the plugin's masquerade");
    lab.apply("examples/seed-002-ha/egress.yaml");
    seed_002_ha_sources(&lab);
    lab.apply("examples/dual-stack/egress.yaml");
    assert_eq!(lab.whoami("prod/web-1", "db-a6"), "fd00:10:10::e1");
    assert_eq!(lab.whoami("default/client-1", "db-a6"), "fd00:10:10::101");

    // Failover of the IPv4 egress IP.
    let (gw, probe) = gateway_and_probe(&lab);
    lab.ok(&["lab", "kill-node", &gw]);
    lab.wait_source(probe, "db-a", "10.10.0.11", &format!("traffic never came back after killing {gw}"));
    lab.ok(&["lab", "restore-node", &gw]);

    // Egress policies: seed 000's access control.
    lab.ok(&["lab", "delete", "-f", "examples/seed-002-ha/egress.yaml", "-f", "examples/dual-stack/egress.yaml"]);
    lab.apply("examples/seed-000-web-to-db/egress.yaml");
    lab.apply("examples/seed-000-web-to-db/policy.yaml");
    assert_eq!(lab.whoami("prod/web-1", "db-a"), "198.51.100.100");
    assert_eq!(lab.whoami("prod/web-1", "bad-host"), "no answer");
    assert_eq!(lab.whoami("default/malicious-1", "db-a"), "no answer");
    // A pod added after the lab came up is plumbed by the plugin too, and removed through it.
    let dir = tempfile::tempdir().unwrap();
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {namespace: prod, name: web-9, labels: {app: web}}\nspec: {nodeName: node-5, containers: [{name: main, image: x}]}\n";
    let f = write(dir.path(), "pod.yaml", pod);
    lab.apply(&f);
    assert_eq!(lab.whoami("prod/web-9", "db-a"), "198.51.100.100");
    lab.ok(&["lab", "delete", "-f", &f]);
    lab.apply(&f);
    assert_eq!(lab.whoami("prod/web-9", "db-a"), "198.51.100.100", "its address was released and given again");
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn beside_the_bridge_cni_plugin() {
    beside_a_real_cni("bridge");
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn beside_the_ptp_cni_plugin() {
    beside_a_real_cni("ptp");
}

/// Packets the lab router forwarded that came in by its egress subnet port.
fn subnet_forwarded(lab: &Lab) -> u64 {
    let router = egret_netns::Netns::attach(&format!("egret-lab-{}-r", lab.name)).unwrap();
    egret_netns::egress_subnet_forwarded(&router).unwrap()
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn antreas_egress_subnet_leaves_through_its_own_router_and_fails_over() {
    let lab = Lab::up();
    lab.apply("examples/egress-subnet/egress.yaml");
    let (e, gw) = lab.wait_placed("egress-prod-web-subnet");
    assert_eq!(e["status"]["egressIP"], "192.0.2.10");
    let before = subnet_forwarded(&lab);
    assert_eq!(lab.whoami("prod/web-1", "db-a"), "192.0.2.10");
    assert_eq!(lab.whoami("prod/web-2", "db-a"), "192.0.2.10");
    assert!(subnet_forwarded(&lab) >= before + 6, "the subnet's router port carried the traffic");
    // Unselected pods: the node network, not the subnet.
    let before = subnet_forwarded(&lab);
    assert_eq!(lab.whoami("default/client-1", "db-a"), "10.10.0.101");
    assert_eq!(subnet_forwarded(&lab), before);

    // The gateway dies: the address moves with its subnet routing.
    let probe = if gw == "node-1" { "prod/web-2" } else { "prod/web-1" };
    lab.ok(&["lab", "kill-node", &gw]);
    lab.wait_source(probe, "db-a", "192.0.2.10", &format!("subnet traffic never came back after killing {gw}"));
    lab.ok(&["lab", "restore-node", &gw]);

    // Bad subnets are refused with their field, nothing applied.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("examples/egress-subnet/egress.yaml")).unwrap();
    for (bad, field) in [
        (text.replace("prefixLength: 24", "prefixLength: 24\n    vlan: 5000"), "spec.subnetInfo.vlan"),
        (text.replace("gateway: 192.0.2.1", "gateway: 192.0.3.1"), "spec.subnetInfo.gateway"),
    ] {
        let o = lab.run(&["lab", "apply", "-f", &write(dir.path(), "bad.yaml", &bad)]);
        assert_eq!(o.status.code(), Some(1));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(field), "{field}: {err}");
    }
}

/// The gateway of egress-prod-web (once assigned) and a pod it serves on another node.
fn gateway_and_probe(lab: &Lab) -> (String, &'static str) {
    let (_, gw) = lab.wait_placed("egress-prod-web");
    let probe = if gw == "node-2" { "prod/web-1" } else { "prod/web-2" };
    (gw, probe)
}

/// Waits until exactly one node other than `old` holds `ip`.
fn wait_taken_over(lab: &Lab, ip: &str, old: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = holders(lab, ip);
        if h.len() == 1 && h[0] != old {
            return;
        }
        assert!(Instant::now() < deadline, "{ip} not taken over from {old}: holders {h:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn partition_heals_with_exactly_one_holder() {
    let lab = Lab::up();
    lab.apply("examples/seed-002-ha/egress.yaml");
    let (gw, probe) = gateway_and_probe(&lab);
    // Cut the gateway off the network; its agent keeps running and sees everyone else dead.
    lab.ok(&["lab", "kill-node", &gw, "--keep-agent"]);
    // The isolated side holds nothing (it is alone); the majority side took the IP over.
    wait_taken_over(&lab, "10.10.0.11", &gw);
    assert_eq!(lab.whoami(probe, "db-a"), "10.10.0.11");
    // Heal: the isolated node rejoins, and in the end exactly one node holds each IP.
    lab.ok(&["lab", "restore-node", &gw]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while holders(&lab, "10.10.0.11") != vec![gw.clone()] {
        assert!(Instant::now() < deadline, "after healing: holders {:?}", holders(&lab, "10.10.0.11"));
        std::thread::sleep(Duration::from_millis(100));
    }
    // The other IP settles too (it may still be moving back when the first has).
    while holders(&lab, "10.10.0.12").len() != 1 {
        assert!(Instant::now() < deadline, "after healing: holders of .12 {:?}", holders(&lab, "10.10.0.12"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(lab.whoami(probe, "db-a"), "10.10.0.11");
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn an_agent_without_the_gossip_key_hosts_nothing() {
    let lab = Lab::up();
    lab.apply("examples/seed-002-ha/egress.yaml");
    let (gw, probe) = gateway_and_probe(&lab);
    lab.ok(&["lab", "restart", &gw, "--without-key"]);
    wait_taken_over(&lab, "10.10.0.11", &gw);
    assert_eq!(lab.whoami(probe, "db-a"), "10.10.0.11");
    let log = std::fs::read_to_string(format!("/run/egret/labs/{}/logs/agent-{gw}.log", lab.name)).unwrap();
    assert!(log.contains("will not host egress IPs"), "{log}");
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn a_gateway_whose_datapath_sync_fails_hands_its_ip_over_and_takes_it_back_once_repaired() {
    let lab = Lab::up();
    lab.apply("examples/seed-002-ha/egress.yaml");
    let (gw, probe) = gateway_and_probe(&lab);
    assert_eq!(lab.whoami(probe, "db-a"), "10.10.0.11");
    // Someone replaces Egret's address-holding device with one of their own: the gateway loses
    // the IP, and every sync of its datapath now fails ("not created by Egret"), while its agent
    // stays alive in gossip. It must stop being eligible so the others take the IP over.
    let ns =
        egret_netns::Netns::attach(&format!("egret-lab-{}-n{}", lab.name, gw.trim_start_matches("node-"))).unwrap();
    ns.ip(&["link", "del", "egret-eip"]).unwrap();
    // (a veth pair: every kernel that runs the lab has veth, not every one has dummy)
    ns.ip(&["link", "add", "egret-eip", "type", "veth", "peer", "name", "not-egret"]).unwrap();
    // The agent notices at its next periodic verification (every 10 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let others: Vec<String> = holders(&lab, "10.10.0.11").into_iter().filter(|h| *h != gw).collect();
        if others.len() == 1 && lab.whoami(probe, "db-a") == "10.10.0.11" {
            break;
        }
        assert!(Instant::now() < deadline, "10.10.0.11 not taken over from {gw} (sync failing): holders {others:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    lab.wait_egress("egress-prod-web", |e| {
        e["status"]["egressNode"].is_string() && e["status"]["egressNode"] != gw.as_str()
    });
    let log = std::fs::read_to_string(format!("/run/egret/labs/{}/logs/agent-{gw}.log", lab.name)).unwrap();
    assert!(log.contains("not eligible to host"), "{log}");
    // Repair: the retry (with back-off) succeeds, the node is eligible again and, placed first by
    // rendezvous hashing, takes the IP back.
    ns.ip(&["link", "del", "egret-eip"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while holders(&lab, "10.10.0.11") != vec![gw.clone()] {
        assert!(Instant::now() < deadline, "after repair: holders {:?}", holders(&lab, "10.10.0.11"));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(lab.whoami(probe, "db-a"), "10.10.0.11");
    assert_eq!(holders(&lab, "10.10.0.12").len(), 1);
}

/// The lab with its objects served by the test double of the API server: agents and two
/// controller replicas use the Kubernetes source, status comes back by server-side apply in
/// Antrea's vocabulary, and the seeds, a gateway failover and a leader handover behave as with
/// the store.
#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn through_the_api_server_double_seeds_failover_and_leader_handover() {
    let lab = Lab::up_with(&["--api-server"]);
    assert_eq!(lab.whoami("prod/web-1", "db-a"), "10.10.0.101", "before any Egress: the node IP");

    // Seed 002 (HA): same addresses as with the store.
    lab.apply("examples/seed-002-ha/egress.yaml");
    seed_002_ha_sources(&lab);
    for name in ["egress-prod-web", "egress-staging-web"] {
        let e = lab.wait_egress(name, |e| condition(e, "IPAssigned")["reason"] == "Assigned");
        assert_eq!(condition(&e, "IPAllocated")["reason"], "Allocated");
        assert!(e["status"]["egressNode"].is_string(), "{e:#}");
    }

    // Seed 004 (Cilium) and seed 000.
    lab.apply("examples/seed-004-cilium/policy.yaml");
    assert_eq!(lab.whoami("default/mediabot-1", "db-a"), "10.168.60.100");
    lab.ok(&["lab", "delete", "-f", "examples/seed-004-cilium/policy.yaml"]);
    assert_eq!(lab.whoami("default/mediabot-1", "db-a"), "10.10.0.101");
    lab.apply("examples/seed-000-web-to-db/egress.yaml");
    assert_eq!(lab.whoami("default/malicious-1", "db-a"), "10.10.0.103");
    lab.ok(&["lab", "delete", "-f", "examples/seed-000-web-to-db/egress.yaml"]);

    // A gateway loses power: the IP moves and traffic keeps its source address.
    let (gw, probe) = gateway_and_probe(&lab);
    lab.ok(&["lab", "kill-node", &gw]);
    lab.wait_source(probe, "db-a", "10.10.0.11", &format!("traffic never came back after killing {gw}"));
    let moved = lab.wait_egress("egress-prod-web", |e| {
        e["status"]["egressNode"].is_string() && e["status"]["egressNode"] != gw.as_str()
    });
    assert_eq!(moved["status"]["egressIP"], "10.10.0.11");
    lab.ok(&["lab", "restore-node", &gw]);

    // Kill the leading controller: the other replica takes over and no allocation changes.
    let ips = |lab: &Lab| -> Vec<(String, String)> {
        lab.get_egress()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["metadata"]["name"].to_string(), e["status"]["egressIP"].to_string()))
            .collect()
    };
    let before = ips(&lab);
    let out = lab.ok(&["lab", "restart", "leader"]);
    assert!(out.contains("took over"), "{out}");
    // The new leader acts: a new Egress gets its IP from it.
    let extra = "apiVersion: egret.dev/v1alpha1\nkind: Egress\nmetadata: {name: after-handover}\nspec:\n  appliedTo: {podSelector: {matchLabels: {app: client}}}\n  externalIPPool: external-ip-pool\n";
    let dir = tempfile::tempdir().unwrap();
    lab.apply(&write(dir.path(), "extra.yaml", extra));
    let e = lab.wait_egress("after-handover", |e| condition(e, "IPAssigned")["reason"] == "Assigned");
    assert_eq!(e["status"]["egressIP"], "10.10.0.13", "the next free address: nothing was re-numbered");
    let after: Vec<(String, String)> = ips(&lab).into_iter().filter(|(n, _)| !n.contains("after-handover")).collect();
    assert_eq!(after, before, "allocations survive the leader change");
    assert_eq!(lab.whoami("prod/web-1", "db-a"), "10.10.0.11");

    // Lose the API server: the datapath stays, and gossip still fails a gateway over on the
    // last known objects.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("/run/egret/labs/{}/lab.json", lab.name)).unwrap()).unwrap();
    let api = state["api_pid"].as_u64().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(api), nix::sys::signal::Signal::SIGKILL).unwrap();
    assert_eq!(lab.whoami("prod/web-1", "db-a"), "10.10.0.11", "untouched without the API server");
    let gw = holders(&lab, "10.10.0.11").pop().unwrap();
    let probe = if gw == "node-2" { "prod/web-1" } else { "prod/web-2" };
    lab.ok(&["lab", "kill-node", &gw]);
    lab.wait_source(probe, "db-a", "10.10.0.11", &format!("no failover from {gw} without the API server"));
    // Another node reports holding it (the dead node's last report stays in the store).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !holders(&lab, "10.10.0.11").iter().any(|h| *h != gw) {
        assert!(Instant::now() < deadline, "no other node holds 10.10.0.11 after {gw} died");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `egret lab logs`: the records, parsed.
fn audit_records(lab: &Lab, node: &str) -> Vec<serde_json::Value> {
    lab.ok(&["lab", "logs", "--node", node]).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Polls the node's audit log until `want` records satisfy `check` (records reach the file
/// within the kernel's 10 ms batch and the agent's write).
fn wait_records(
    lab: &Lab,
    node: &str,
    want: usize,
    check: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got: Vec<serde_json::Value> = audit_records(lab, node).into_iter().filter(|r| check(r)).collect();
        if got.len() >= want || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A scrape of a node's agent metrics (`/metrics` on 127.0.0.1:9090 in the node's namespace).
fn scrape(lab: &Lab, node_index: usize) -> String {
    use std::io::{Read, Write};
    let ns = egret_netns::Netns::attach(&format!("egret-lab-{}-n{node_index}", lab.name)).unwrap();
    ns.run(|| {
        let mut s = std::net::TcpStream::connect("127.0.0.1:9090").unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .unwrap()
}

/// The audit log end to end: a denied connection shows up exactly once with every field, an
/// allowed one with the Egress and egress IP it left with, and the per-rule counters count both.
#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn audit_log_records_each_connection_once_with_every_field() {
    let lab = Lab::up();
    lab.apply("examples/seed-000-web-to-db/egress.yaml");
    lab.apply("examples/firewall-audit/policy.yaml");
    assert_eq!(lab.whoami("prod/web-1", "bad-host"), "no answer");
    assert_eq!(lab.whoami("prod/web-1", "db-a"), "198.51.100.100");
    let is_deny = |r: &serde_json::Value| r["verdict"] == "Deny" && r["destination"] == "198.51.100.8:8080";
    let denied = wait_records(&lab, "node-1", 1, is_deny);
    // Give a duplicate the time to show up before counting.
    std::thread::sleep(Duration::from_millis(500));
    let denied_again: Vec<_> = audit_records(&lab, "node-1").into_iter().filter(|r| is_deny(r)).collect();
    assert_eq!(denied_again.len(), 1, "exactly once: {denied_again:#?}");
    let r = &denied[0];
    for (field, want) in [
        ("node", "node-1"),
        ("namespace", "prod"),
        ("pod", "web-1"),
        ("protocol", "TCP"),
        ("policyKind", "EgressPolicy"),
        ("policy", "prod/web-egress"),
    ] {
        assert_eq!(r[field], want, "{field} in {r:#}");
    }
    assert!(r["source"].as_str().unwrap().starts_with("10.244.1.10:"), "{r:#}");
    assert!(r["time"].as_str().unwrap().ends_with('Z'), "{r:#}");
    assert!(r.get("rule").is_none() && r.get("egress").is_none(), "the default denied: {r:#}");

    let allowed = wait_records(&lab, "node-1", 1, |r| r["verdict"] == "Allow");
    assert_eq!(allowed.len(), 1, "{allowed:#?}");
    let a = &allowed[0];
    assert_eq!((a["rule"].as_str(), a["destination"].as_str()), (Some("db-a"), Some("203.0.113.5:8080")));
    assert_eq!((a["egress"].as_str(), a["egressIP"].as_str()), (Some("web-to-db-a"), Some("198.51.100.100")), "{a:#}");

    let m = scrape(&lab, 1);
    for want in [
        r#"egret_policy_rule_packets_total{policy_kind="EgressPolicy",policy="prod/web-egress",rule="db-a",verdict="Allow"} 1"#,
        r#"egret_policy_rule_packets_total{policy_kind="EgressPolicy",policy="prod/web-egress",rule="defaultAction",verdict="Deny"} 1"#,
        r#"egret_audit_records_total{verdict="Deny"} 1"#,
    ] {
        assert!(m.contains(want), "missing {want} in\n{m}");
    }
}

/// A flood of denied packets is rate limited: the log says how much it left out, the metrics
/// count it, and allowed connections keep working.
#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn a_flood_of_denied_packets_is_rate_limited_and_counted() {
    let lab = Lab::up();
    lab.apply("examples/seed-000-web-to-db/egress.yaml");
    lab.apply("examples/firewall-audit/policy.yaml");
    // Every packet is a new, denied, audited connection: 20,000 per second for 2 s, far more
    // than the agent's default 1,000 records per second (and its burst of as many).
    let flooding = {
        let pod = lab.pod_netns("prod/web-1");
        std::thread::spawn(move || {
            pod.run(|| {
                let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                let start = Instant::now();
                let mut sent = 0usize;
                while start.elapsed() < Duration::from_secs(2) {
                    while sent < (start.elapsed().as_secs_f64() * 20_000.0) as usize {
                        let _ = s.send_to(b"x", "198.51.100.8:9");
                        sent += 1;
                    }
                    std::thread::sleep(Duration::from_micros(500));
                }
                sent
            })
            .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    // During the flood.
    assert_eq!(lab.whoami("prod/web-1", "db-a"), "198.51.100.100", "allowed traffic is unaffected");
    let sent = flooding.join().unwrap();
    // Denials have a bucket of their own: the allowed connection's record is still written.
    let allowed = wait_records(&lab, "node-1", 1, |r| r["verdict"] == "Allow");
    assert_eq!(allowed.len(), 1, "the flood crowded out the allowed record");
    let summary = wait_records(&lab, "node-1", 1, |r| r.get("suppressed").is_some());
    assert!(!summary.is_empty(), "a summary line says records were left out");
    let suppressed: u64 = summary.iter().map(|r| r["suppressed"]["rateLimited"].as_u64().unwrap()).sum();
    let written = audit_records(&lab, "node-1").iter().filter(|r| r["destination"] == "198.51.100.8:9").count();
    assert!(suppressed > 0 && written < sent, "sent {sent}, written {written}, suppressed {suppressed}");
    let m = scrape(&lab, 1);
    let dropped = m
        .lines()
        .find(|l| l.starts_with(r#"egret_audit_dropped_total{reason="rate_limit"}"#))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(dropped >= suppressed, "the metric counts every record left out: {dropped} < {suppressed}\n{m}");
}

/// What `CMD` prints inside `pod` (`lab exec`); it must succeed.
fn exec(lab: &Lab, pod: &str, cmd: &[&str]) -> String {
    let mut a = vec!["lab", "exec", "--name", &lab.name, pod, "--"];
    a.extend(cmd);
    let o = egret(&a);
    assert!(o.status.success(), "{a:?}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What `dig +short ARGS` prints inside `pod`, one line per record.
fn dig(lab: &Lab, pod: &str, args: &[&str]) -> Vec<String> {
    let mut a = vec!["dig", "+short"];
    a.extend(args);
    exec(lab, pod, &a).lines().map(str::to_string).collect()
}

/// The lab's DNS server is every pod's resolver: exact names, the CNAME chain, 120 addresses
/// (truncated over UDP, complete over TCP), rotation, changes by `lab dns set`, and the
/// addresses it gives are answered by the outside whoami. Pods made by `lab apply` get the
/// resolver too; `lab down` leaves no resolver file behind.
#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn the_labs_dns_server_answers_the_pods() {
    egret_netns::require_privileged();
    if Command::new("dig").arg("-v").output().is_err() {
        panic!("`dig` is not installed (dnsutils; scripts/test.sh installs it)");
    }
    let lab = Lab::up_with(&["--nodes", "2"]);
    let pod = "prod/web-1";
    // getent goes through the C library's resolver, i.e. the pod's resolv.conf.
    let hosts = exec(&lab, pod, &["getent", "hosts", "api.github.test"]);
    assert_eq!(hosts.split_whitespace().collect::<Vec<_>>(), ["203.0.113.5", "api.github.test"]);
    assert_eq!(dig(&lab, pod, &["storage.googleapis.test"]), ["203.0.113.5"]);
    assert_eq!(dig(&lab, pod, &["www.example.test"]), ["198.51.100.8"]);
    assert_eq!(dig(&lab, pod, &["alias.github.test"]), ["mid.github.test.", "api.github.test.", "203.0.113.5"]);
    assert_eq!(dig(&lab, pod, &["v6only.test", "AAAA"]), ["2001:db8:113::5"]);
    let ttl0 = exec(&lab, pod, &["dig", "+noall", "+answer", "ttl0.test"]);
    assert_eq!(ttl0.split_whitespace().collect::<Vec<_>>(), ["ttl0.test.", "0", "IN", "A", "203.0.113.5"]);
    let nx = exec(&lab, pod, &["dig", "nothere.test"]);
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");

    // many.test: over UDP the answer is truncated (TC); dig retries over TCP by itself.
    let udp_only = exec(&lab, pod, &["dig", "+ignore", "many.test"]);
    assert!(udp_only.contains("flags: qr aa tc"), "{udp_only}");
    let full = exec(&lab, pod, &["dig", "many.test"]);
    assert!(full.contains("Truncated, retrying in TCP mode"), "{full}");
    let many = dig(&lab, pod, &["many.test"]);
    let want: Vec<String> = (64..184).map(|i| format!("203.0.113.{i}")).collect();
    let mut got = many.clone();
    got.sort_by_key(|a| a.parse::<std::net::Ipv4Addr>().unwrap());
    assert_eq!(got, want);
    // One of its addresses is served by the outside whoami, which sees the node's address.
    assert_eq!(lab.whoami(pod, &many[0]), "10.10.0.101");
    assert_eq!(lab.whoami(pod, &dig(&lab, pod, &["n0999.fresh.test"])[0]), "10.10.0.101");
    // `lab whoami --to NAME` resolves the name as the pod does.
    assert_eq!(lab.whoami(pod, "api.github.test"), "10.10.0.101");
    assert_eq!(lab.whoami(pod, "many.test:443"), "10.10.0.101");
    assert_eq!(lab.whoami(pod, "nothere.test"), "no answer");

    // rotate.test: one address per answer, the next one each time.
    let first = dig(&lab, pod, &["rotate.test"]);
    let second = dig(&lab, pod, &["rotate.test"]);
    assert_eq!((first.len(), second.len()), (1, 1), "{first:?} {second:?}");
    assert_ne!(first, second);
    assert_eq!(lab.whoami(pod, &second[0]), "10.10.0.101");

    // lab dns set: served when it returns.
    let out = lab.ok(&["lab", "dns", "set", "api.github.test", "A", "198.51.100.8"]);
    assert!(out.contains("api.github.test. A: 203.0.113.5 (ttl 30) -> 198.51.100.8 (ttl 30)"), "{out}");
    assert_eq!(dig(&lab, pod, &["api.github.test"]), ["198.51.100.8"]);
    assert_eq!(dig(&lab, pod, &["alias.github.test"]), ["mid.github.test.", "api.github.test.", "198.51.100.8"]);
    assert_eq!(lab.ok(&["lab", "dns", "show", "api.github.test"]).trim(), "api.github.test. 30 IN A 198.51.100.8");
    let refused = lab.run(&["lab", "dns", "set", "api.github.com", "A", "198.51.100.8"]);
    assert!(!refused.status.success(), "a name outside the zone");

    // A pod made later resolves through the server too; a deleted one leaves no resolver file.
    let dir = tempfile::tempdir().unwrap();
    let new_pod = "apiVersion: v1\nkind: Pod\nmetadata: {namespace: prod, name: dns-1, labels: {app: dns}}\nspec: {nodeName: node-2, containers: [{name: main, image: x}]}\n";
    let file = write(dir.path(), "pod.yaml", new_pod);
    lab.apply(&file);
    assert_eq!(dig(&lab, "prod/dns-1", &["www.example.test"]), ["198.51.100.8"]);
    let resolv = format!("/etc/netns/egret-lab-{}-p-prod-dns-1/resolv.conf", lab.name);
    assert!(Path::new(&resolv).exists());
    lab.ok(&["lab", "delete", "-f", &file]);
    assert!(!Path::new(&resolv).exists(), "{resolv} left behind");

    lab.ok(&["lab", "down"]);
    let prefix = format!("egret-lab-{}-", lab.name);
    let left: Vec<String> = std::fs::read_dir("/etc/netns")
        .map(|rd| rd.filter_map(Result::ok).filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    assert!(!left.iter().any(|n| n.starts_with(&prefix)), "resolver files left behind: {left:?}");
}

/// Domain-name rules end to end (examples/fqdn-allowlist): nothing is reachable before a lookup;
/// the first connection after a lookup succeeds, for a run of fresh names; a CNAME chain; 120
/// addresses over TCP; a name resolved but not allowed stays refused; pods without name rules
/// resolve as before; the audit log names the name that allowed a connection.
#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn name_rules_allow_what_the_pod_looked_up_from_its_first_connection() {
    let lab = Lab::up();
    lab.apply("examples/fqdn-allowlist");
    let pod = "prod/web-1";
    // Not looked up yet: refused.
    assert_eq!(lab.whoami(pod, "203.0.113.5"), "no answer");
    // Through the CNAME chain: its final address is learned for the name asked.
    let chain = dig(&lab, pod, &["alias.github.test"]);
    assert_eq!(chain.last().map(String::as_str), Some("203.0.113.5"));
    assert_eq!(lab.whoami(pod, "203.0.113.5"), "10.10.0.101");
    // The audit log (the rule has `log: true`) names the name the address was learned for.
    let rec = wait_records(&lab, "node-1", 1, |r| r["rule"] == "github" && r["verdict"] == "Allow");
    assert_eq!(rec.first().map(|r| r["fqdn"].clone()), Some(serde_json::json!("alias.github.test")), "{rec:?}");
    // Fresh names, each connected to once, right after its lookup: the answer reached the pod
    // only once the kernel held the address, so every first attempt succeeds.
    let mut failed = Vec::new();
    for i in 0..100 {
        let name = format!("n{i:04}.fresh.test");
        let Some(addr) = dig(&lab, pod, &[&name]).pop() else {
            failed.push(format!("{name}: no answer"));
            continue;
        };
        if lab.whoami(pod, &addr) != "10.10.0.101" {
            failed.push(format!("{name} ({addr})"));
        }
    }
    assert!(failed.is_empty(), "first connections refused: {failed:?}");
    // 120 addresses: truncated over UDP, the retry over TCP goes through the proxy too.
    let many = dig(&lab, pod, &["many.test"]);
    assert_eq!(many.len(), 120);
    assert_eq!(lab.whoami(pod, &many[119]), "10.10.0.101");
    // TTL 0: kept for the floor (--fqdn-min-ttl) plus the grace, so the connection that follows
    // the lookup gets in; a rotating name: every address handed out works while it lives.
    assert_eq!(dig(&lab, pod, &["ttl0.test"]), ["203.0.113.5"]);
    assert_eq!(lab.whoami(pod, "203.0.113.5"), "10.10.0.101");
    for _ in 0..3 {
        let r = dig(&lab, pod, &["rotate.test"]);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(lab.whoami(pod, &r[0]), "10.10.0.101", "rotate.test -> {}", r[0]);
    }
    // Resolved, but no rule names it: still refused; never resolved: refused.
    assert_eq!(dig(&lab, pod, &["www.example.test"]), ["198.51.100.8"]);
    assert_eq!(lab.whoami(pod, "198.51.100.8"), "no answer");
    // A pod under no name rule resolves and connects as before.
    assert_eq!(dig(&lab, "default/client-1", &["www.example.test"]), ["198.51.100.8"]);
    assert_eq!(lab.whoami("default/client-1", "198.51.100.8"), "10.10.0.101");
    // The proxy's metrics count what it learned.
    let m = scrape(&lab, 1);
    let learned: f64 = m
        .lines()
        .filter(|l| l.starts_with("egret_dns_queries_total{") && l.contains("result=\"learned\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(learned >= 100.0, "{m}");
    assert!(m.contains("egret_dns_hold_timeouts_total 0"), "{m}");

    // A forged answer sent as a query (a response for www.example.test -> bad-host) opens
    // nothing: the proxy only reads answers from the resolver to a query it forwarded.
    let forged = "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);         q=b'\\x03www\\x07example\\x04test\\x00\\x00\\x01\\x00\\x01';         s.sendto(b'\\x12\\x34\\x81\\x80\\x00\\x01\\x00\\x01\\x00\\x00\\x00\\x00' + q +         b'\\xc0\\x0c\\x00\\x01\\x00\\x01\\x00\\x00\\x00\\x3c\\x00\\x04\\xc6\\x33\\x64\\x08', ('203.0.113.53', 53))";
    exec(&lab, pod, &["python3", "-c", forged]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(lab.whoami(pod, "198.51.100.8"), "no answer");

    // The agent killed: DNS of pods under name rules fails closed, other pods resolve as
    // before; started again, it keeps what was learned (api.github.test's TTL is 30 s).
    assert_eq!(dig(&lab, pod, &["api.github.test"]), ["203.0.113.5"]);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("/run/egret/labs/{}/lab.json", lab.name)).unwrap()).unwrap();
    let pid = state["agents"]["node-1"].as_u64().unwrap().to_string();
    assert!(Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(300));
    let o = egret(&[
        "lab",
        "exec",
        "--name",
        &lab.name,
        pod,
        "--",
        "dig",
        "+short",
        "+time=1",
        "+tries=1",
        "api.github.test",
    ]);
    assert!(
        !o.status.success() || String::from_utf8_lossy(&o.stdout).trim().is_empty(),
        "answered with the proxy down: {o:?}"
    );
    assert_eq!(dig(&lab, "default/client-1", &["www.example.test"]), ["198.51.100.8"]);
    // The kernel keeps what was learned meanwhile: the address still connects.
    assert_eq!(lab.whoami(pod, "203.0.113.5"), "10.10.0.101");
    lab.ok(&["lab", "restart", "node-1"]);
    assert_eq!(lab.whoami(pod, "203.0.113.5"), "10.10.0.101", "learned addresses survive a restart");
    assert_eq!(dig(&lab, pod, &["storage.googleapis.test"]), ["203.0.113.5"]);
    let m = scrape(&lab, 1);
    assert!(m.contains("egret_dns_proxy_up 1"), "{m}");
}

/// An instant query against the lab's Prometheus: (labels, value) per series.
fn promql(lab: &Lab, q: &str) -> Vec<(String, f64)> {
    let out = lab.ok(&["lab", "metrics", q]);
    out.lines()
        .filter_map(|l| {
            let (labels, v) = l.rsplit_once(' ')?;
            Some((labels.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The first value of `q` once `ok` holds for it, within `limit`.
fn wait_promql(lab: &Lab, q: &str, limit: Duration, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + limit;
    loop {
        let v = promql(lab, q).first().map(|s| s.1);
        if let Some(v) = v.filter(|v| ok(*v)) {
            return v;
        }
        assert!(Instant::now() < deadline, "{q}: {v:?} after {limit:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `lab up --monitoring`: the lab's own Prometheus scrapes every agent; through PromQL, the
/// bytes per egress IP grow with traffic, and after the gateway is killed the new holder has
/// counted the failover, with a take-over under 1 s.
#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn prometheus_in_the_lab_sees_traffic_per_egress_ip_and_the_failover() {
    let lab = Lab::up_with(&["--monitoring"]);
    lab.apply("examples/seed-002-ha/egress.yaml");
    let (gw, probe) = gateway_and_probe(&lab);
    let up = wait_promql(&lab, r#"count(up{job="egret-agent"} == 1)"#, Duration::from_secs(15), |v| v >= 6.0);
    assert_eq!(up, 6.0);
    // The store's controller is scraped too: the seed's pool of 10 addresses, one for each of
    // its two Egresses.
    let pool = r#"egret_pool_allocated_addresses{job="egret-controller",pool="external-ip-pool"}"#;
    assert_eq!(wait_promql(&lab, pool, Duration::from_secs(15), |v| v >= 2.0), 2.0);
    assert_eq!(promql(&lab, r#"egret_pool_addresses{pool="external-ip-pool"}"#)[0].1, 10.0);
    assert_eq!(promql(&lab, r#"egret_controller_leader{job="egret-controller"}"#)[0].1, 1.0);
    let bytes = r#"sum(egret_egress_bytes_total{egress_ip="10.10.0.11",gateway="true"})"#;
    assert_eq!(lab.whoami(probe, "db-a"), "10.10.0.11");
    let before = wait_promql(&lab, bytes, Duration::from_secs(15), |v| v > 0.0);
    for _ in 0..5 {
        assert_eq!(lab.whoami(probe, "db-a"), "10.10.0.11");
    }
    wait_promql(&lab, bytes, Duration::from_secs(15), |v| v > before);

    lab.ok(&["lab", "kill-node", &gw]);
    lab.wait_source(probe, "db-a", "10.10.0.11", &format!("traffic never came back after killing {gw}"));
    let failovers = promql(&lab, r#"egret_failovers_total{egress_ip="10.10.0.11"}"#);
    let failovers = if failovers.is_empty() {
        wait_promql(&lab, r#"sum(egret_failovers_total{egress_ip="10.10.0.11"})"#, Duration::from_secs(15), |v| {
            v >= 1.0
        });
        promql(&lab, r#"egret_failovers_total{egress_ip="10.10.0.11"}"#)
    } else {
        failovers
    };
    assert_eq!(failovers.len(), 1, "one new holder: {failovers:?}");
    assert!(!failovers[0].0.contains(&format!("node=\"{gw}\"")), "counted by the new holder: {failovers:?}");
    let fast = r#"sum(egret_failover_takeover_seconds_bucket{le="1.0"})"#;
    wait_promql(&lab, fast, Duration::from_secs(15), |v| v >= 1.0);
    // Every query of the Grafana dashboard is one this Prometheus accepts.
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/monitoring/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap().replace("$__rate_interval", "10s").replace("$__range", "5m");
            let o = lab.run(&["lab", "metrics", &expr]);
            assert!(o.status.success(), "{expr}: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
}

/// SNAT port pressure: one pod opens UDP flows from over half of the source ports toward one
/// destination; the gateway's agent exports the egress IP's utilization over 50% and warns,
/// naming the destination.
#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn snat_port_pressure_is_exported_and_warned_about() {
    let lab = Lab::up();
    lab.apply("examples/seed-002-ha/egress.yaml");
    let (gw, probe) = gateway_and_probe(&lab);
    assert_eq!(lab.whoami(probe, "db-a"), "10.10.0.11");
    // 33,000 flows, one per source port, to db-a's UDP port 9: each is a conntrack entry on the
    // gateway, SNATed to the egress IP (unreplied UDP entries live 30 s).
    let sent = lab
        .pod_netns(probe)
        .run(|| {
            let mut sent = 0u32;
            for port in 1024..34024u16 {
                if let Ok(s) = std::net::UdpSocket::bind(("0.0.0.0", port))
                    && s.send_to(b"x", "203.0.113.5:9").is_ok()
                {
                    sent += 1;
                }
            }
            sent
        })
        .unwrap();
    assert!(sent >= 32_800, "only {sent} flows opened");
    let util = r#"egret_snat_port_utilization{egress_ip="10.10.0.11"}"#;
    let deadline = Instant::now() + Duration::from_secs(20);
    let value = loop {
        let v = series(&lab.scrape(&gw), util).unwrap_or(0.0);
        if v >= 0.5 {
            break v;
        }
        assert!(Instant::now() < deadline, "{util} stayed at {v}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(value < 0.6, "{value}: more flows than were opened");
    let log = std::fs::read_to_string(Path::new(&lab.store()).with_file_name("logs").join(format!("agent-{gw}.log")))
        .unwrap();
    assert!(
        log.lines().any(|l| l.contains("SNAT source ports") && l.contains("203.0.113.5:9") && l.contains("10.10.0.11")),
        "no warning in the gateway's log"
    );
}
