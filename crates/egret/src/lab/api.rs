//! The lab with its objects served by a test double of the API server (`egret lab up
//! --api-server`): `egret lab serve-api` runs the double (egret-kube's `TestServer`) in the
//! router's namespace and mirrors the lab's store into it, so `lab apply` and `lab delete` work
//! as with the store while the agents and two controller replicas use `--source kubernetes`.
//!
//! The mirror copies objects (without status) from the store to the double, and the statuses
//! the controllers write to the double back into the store, where `egret get` and the lab's
//! checks read them. After each pass it writes what the lab needs to observe into `api.json`:
//! the store stamp mirrored, per kind the resourceVersion of its last write of that kind (an
//! agent that has applied, for every kind, at least that version has seen the change: each
//! kind's watch is ordered, different kinds' are not), and the holder of the leader Lease.

use anyhow::Context;
use egret_api::v1alpha1::{EgressStatus, ExternalIPPoolStatus};
use egret_kube::testserver::TestServer;
use egret_store::Store;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tracing::{info, warn};

/// The port of the double, on the router's address.
pub const API_PORT: u16 = 6443;
/// The namespace and name of the controllers' leader Lease in the lab.
pub const LEASE_NAMESPACE: &str = "egret-system";
/// The Lease's name.
pub const LEASE_NAME: &str = "egret-controller";

/// What the mirror last did, for the lab to observe (`api.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiState {
    /// The store stamp mirrored last.
    pub stamp: u64,
    /// Per kind (as the agents name it in their reports), the resourceVersion of the mirror's
    /// last write of that kind.
    pub versions: BTreeMap<String, u64>,
    /// The holder of the leader Lease.
    pub leader: Option<String>,
}

impl ApiState {
    /// Reads `api.json` (None before the mirror's first pass).
    pub fn load(path: &Path) -> Option<ApiState> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(self)?)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

/// A kubeconfig for the double at `addr`.
pub fn kubeconfig(addr: SocketAddr) -> String {
    egret_kube::testserver::kubeconfig(&format!("http://{addr}"))
}

/// Identity of an object in the double: apiVersion, kind, namespace, name.
type Key = (String, String, String, String);

fn key_of(v: &Value) -> Option<Key> {
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
    Some((s("/apiVersion")?, s("/kind")?, s("/metadata/namespace").unwrap_or_default(), s("/metadata/name")?))
}

/// The store's objects as the double stores them: JSON without status.
fn store_objects(store: &Store) -> anyhow::Result<(BTreeMap<Key, Value>, u64)> {
    let (objs, errors, stamp) = store.load_stamped();
    if let Some(e) = errors.first() {
        anyhow::bail!("store: {e}");
    }
    let mut out = BTreeMap::new();
    // Status of Egret's kinds is the controllers' to write; that of Nodes and Pods (addresses)
    // is part of what the lab's cluster is.
    let mut add = |v: Value| {
        let mut v = v;
        if let Some(o) = v.as_object_mut()
            && o.get("apiVersion").and_then(Value::as_str).is_some_and(|a| a.starts_with("egret.dev/"))
        {
            o.remove("status");
        }
        if let Some(k) = key_of(&v) {
            out.insert(k, v);
        }
    };
    for d in objs.pools {
        add(serde_json::to_value(&d.object)?);
    }
    for d in objs.egresses {
        add(serde_json::to_value(&d.object)?);
    }
    for d in objs.cluster_policies {
        add(serde_json::to_value(&d.object)?);
    }
    for d in objs.policies {
        add(serde_json::to_value(&d.object)?);
    }
    for d in objs.network_policies {
        let mut v = serde_json::to_value(&d.object)?;
        if let Some(o) = v.as_object_mut() {
            o.entry("apiVersion").or_insert_with(|| Value::from("networking.k8s.io/v1"));
            o.entry("kind").or_insert_with(|| Value::from("NetworkPolicy"));
        }
        add(v);
    }
    for d in objs.nodes {
        add(serde_json::to_value(&d.object)?);
    }
    for d in objs.namespaces {
        add(serde_json::to_value(&d.object)?);
    }
    for d in objs.pods {
        // The real API server fills in what a store document may leave out.
        let mut v = serde_json::to_value(&d.object)?;
        if let Some(o) = v.as_object_mut() {
            o.entry("apiVersion").or_insert_with(|| Value::from("v1"));
            o.entry("kind").or_insert_with(|| Value::from("Pod"));
        }
        add(v);
    }
    Ok((out, stamp))
}

/// The mirror: what it has put into the double, and the resourceVersion of its last write.
#[derive(Default)]
struct Mirror {
    put: BTreeMap<Key, Value>,
    versions: BTreeMap<String, u64>,
}

/// The name agents report a kind by (`egret_core::event::Kind`'s).
fn kind_name(kind: &str) -> String {
    match kind {
        "ExternalIPPool" => "Pool".into(),
        "ClusterEgressPolicy" => "ClusterPolicy".into(),
        "EgressPolicy" => "Policy".into(),
        other => other.into(),
    }
}

impl Mirror {
    /// Makes the double hold exactly `want` (statuses aside).
    fn sync(&mut self, server: &TestServer, want: BTreeMap<Key, Value>) -> anyhow::Result<()> {
        for (k, v) in &want {
            if self.put.get(k) != Some(v) {
                let put =
                    if k.0.starts_with("egret.dev/") { server.put_spec(v.clone()) } else { server.put(v.clone()) };
                let rv = put.with_context(|| format!("putting {} {}", k.1, k.3))?;
                self.versions.insert(kind_name(&k.1), rv);
            }
        }
        for k in self.put.keys().filter(|k| !want.contains_key(*k)) {
            let ns = (!k.2.is_empty()).then_some(k.2.as_str());
            if let Some(rv) = server.remove_versioned(&k.0, &k.1, ns, &k.3) {
                self.versions.insert(kind_name(&k.1), rv);
            }
        }
        self.put = want;
        Ok(())
    }
}

/// Named statuses of one kind.
type Named<S> = Vec<(String, S)>;

/// The statuses the controllers wrote, as the store keeps them.
fn statuses(server: &TestServer) -> (Named<EgressStatus>, Named<ExternalIPPoolStatus>) {
    fn of<S: serde::de::DeserializeOwned>(objs: Vec<Value>) -> Named<S> {
        objs.into_iter()
            .filter_map(|o| {
                let name = o.pointer("/metadata/name")?.as_str()?.to_string();
                Some((name, serde_json::from_value(o.get("status")?.clone()).ok()?))
            })
            .collect()
    }
    (of(server.list("egret.dev/v1alpha1", "Egress")), of(server.list("egret.dev/v1alpha1", "ExternalIPPool")))
}

fn leader(server: &TestServer) -> Option<String> {
    let lease = server.get("coordination.k8s.io/v1", "Lease", Some(LEASE_NAMESPACE), LEASE_NAME)?;
    lease.pointer("/spec/holderIdentity")?.as_str().map(str::to_string)
}

/// `egret lab serve-api`: runs the double on `listen` and mirrors `store` into it until killed.
pub fn serve(store: &Path, listen: SocketAddr, state: &Path) -> anyhow::Result<ExitCode> {
    let store = Store::open(store).with_context(|| format!("opening store {}", store.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let server = TestServer::start_on(listen).await.with_context(|| format!("serving on {listen}"))?;
        info!(%listen, "test double of the API server started");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _watch = egret_store::watch(store.dir(), move || {
            let _ = tx.send(());
        })?;
        let mut mirror = Mirror::default();
        let mut seen = ApiState { stamp: u64::MAX, ..ApiState::default() };
        let mut mirrored_stamp = None;
        let mut copied = None;
        let mut signals = crate::serve::Signals::new();
        loop {
            if mirrored_stamp != Some(store.stamp()) {
                match store_objects(&store) {
                    Ok((want, stamp)) => match mirror.sync(&server, want) {
                        Ok(()) => mirrored_stamp = Some(stamp),
                        Err(e) => warn!("mirror: {e:#}"),
                    },
                    Err(e) => warn!("mirror: {e:#}"),
                }
            }
            // Into the store only when the controllers wrote something new: the store compares
            // file by file, which is not worth doing every pass.
            let now_statuses = statuses(&server);
            if Some(&now_statuses) != copied.as_ref() {
                match store.write_statuses(&now_statuses.0, &now_statuses.1) {
                    Ok(_) => copied = Some(now_statuses),
                    Err(e) => warn!("writing statuses into the store: {e}"),
                }
            }
            let now = ApiState {
                stamp: mirrored_stamp.unwrap_or(0),
                versions: mirror.versions.clone(),
                leader: leader(&server),
            };
            if now != seen && mirrored_stamp.is_some() {
                if let Err(e) = now.save(state) {
                    warn!("writing {}: {e:#}", state.display());
                }
                seen = now;
            }
            tokio::select! {
                _ = rx.recv() => { while rx.try_recv().is_ok() {} }
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = signals.recv() => break,
            }
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Where the lab's API files live.
pub fn state_path(dir: &Path) -> PathBuf {
    dir.join("api.json")
}

/// The lab's kubeconfig file.
pub fn kubeconfig_path(dir: &Path) -> PathBuf {
    dir.join("kubeconfig")
}
