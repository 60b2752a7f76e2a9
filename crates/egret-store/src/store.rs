//! The writable local store: one YAML file per object in a directory, written atomically
//! (temporary file + rename, so no reader ever sees half a file) under an exclusive lock
//! (`DIR/.lock`), plus per-node agent reports in `DIR/.agents/`.

use crate::read::{LoadError, Objects, read_paths};
use egret_api::v1alpha1::{Egress, ExternalIPPool};
use egret_core::planner::ClusterConfig;
use egret_core::validate::Problem;
use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An object could not be serialised.
    #[error("cannot serialise {what}: {reason}")]
    Serialise {
        /// Which object.
        what: String,
        /// Why.
        reason: String,
    },
    /// The input did not load; nothing was written.
    #[error("{} document(s) did not load; nothing was applied", .0.len())]
    Load(Vec<LoadError>),
    /// The change would make objects invalid; nothing was written.
    #[error("{} problem(s); nothing was applied", .0.len())]
    Invalid(Vec<Problem>),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// A local store directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// Holds the store's exclusive lock until dropped.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

/// What an apply wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Each object written, and whether it was created (`false`: updated).
    pub changes: Vec<(Key, bool)>,
    /// The store's change stamp after the apply (see [`Store::stamp`]).
    pub stamp_ms: u64,
}

/// The key of an object: kind, namespace (pods only) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// Kind.
    pub kind: &'static str,
    /// Namespace, for namespaced kinds.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

/// One part of a file name: lowercase letters, digits, `-` and `.` as they are, every other
/// byte as `%XX`. `_` (the separator of parts) and `%` are thus always escaped, so distinct keys
/// never share a file (`(a, b_c)` and `(a_b, c)` did), and no name can reach outside the store
/// (`/` is escaped too). Valid Kubernetes names need no escaping, so their files keep the names
/// they always had.
fn file_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Key {
    /// The object's file: `kind_name.yaml` or `kind_namespace_name.yaml`, parts escaped so
    /// the mapping is injective.
    fn file_name(&self) -> String {
        let kind = file_part(&self.kind.to_ascii_lowercase());
        match &self.namespace {
            Some(ns) => format!("{kind}_{}_{}.yaml", file_part(ns), file_part(&self.name)),
            None => format!("{kind}_{}.yaml", file_part(&self.name)),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{ns}/{}", self.kind, self.name),
            None => write!(f, "{}/{}", self.kind, self.name),
        }
    }
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("object");
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

impl Store {
    /// Opens (creating if needed) a store directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let dir = dir.into();
        std::fs::create_dir_all(dir.join(".agents")).map_err(io(&dir))?;
        Ok(Store { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the exclusive write lock (blocking).
    pub fn lock(&self) -> Result<StoreLock, StoreError> {
        let path = self.dir.join(".lock");
        let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
        file.lock().map_err(io(&path))?;
        Ok(StoreLock { _file: file })
    }

    /// Takes the shared read lock (blocking) for as long as the returned file lives; `None`
    /// (reading without it, with a warning) when the lock file cannot be opened or locked.
    pub(crate) fn read_lock(&self) -> Option<File> {
        let path = self.dir.join(".lock");
        match File::options().create(true).truncate(false).write(true).open(&path) {
            Ok(f) if f.lock_shared().is_ok() => Some(f),
            _ => {
                tracing::warn!(path = %path.display(), "cannot take the store's shared lock; reading without it");
                None
            }
        }
    }

    /// Reads every object, under a shared lock: a reader never sees half of an apply (an apply
    /// of several objects writes several files under the exclusive lock).
    pub fn load(&self) -> (Objects, Vec<LoadError>) {
        let path = self.dir.join(".lock");
        let guard = File::options().create(true).truncate(false).write(true).open(&path);
        let locked = guard.as_ref().map(|f| f.lock_shared());
        if !matches!(locked, Ok(Ok(()))) {
            tracing::warn!(path = %path.display(), "cannot take the store's shared lock; reading without it");
        }
        self.load_unlocked()
    }

    /// Like [`Store::load`], with the stamp of the state read (taken under the same lock).
    pub fn load_stamped(&self) -> (Objects, Vec<LoadError>, u64) {
        let path = self.dir.join(".lock");
        let guard = File::options().create(true).truncate(false).write(true).open(&path);
        let _locked = guard.as_ref().map(|f| f.lock_shared());
        let (o, e) = self.load_unlocked();
        (o, e, self.stamp())
    }

    fn load_unlocked(&self) -> (Objects, Vec<LoadError>) {
        read_paths(std::slice::from_ref(&self.dir))
    }

    /// Writes one object (under the lock).
    pub fn put<T: Serialize>(&self, _lock: &StoreLock, key: &Key, obj: &T) -> Result<(), StoreError> {
        let yaml = serde_yaml_ng::to_string(obj)
            .map_err(|e| StoreError::Serialise { what: key.to_string(), reason: e.to_string() })?;
        write_atomic(&self.dir.join(key.file_name()), yaml.as_bytes())
    }

    /// Removes one object (under the lock); `false` when it did not exist.
    pub fn remove(&self, _lock: &StoreLock, key: &Key) -> Result<bool, StoreError> {
        let path = self.dir.join(key.file_name());
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::Io { path, source: e }),
        }
    }

    /// [`Store::apply_with`] the default cluster settings.
    pub fn apply(&self, new: Objects) -> Result<Applied, StoreError> {
        self.apply_with(new, &ClusterConfig::default())
    }

    /// Applies objects like `kubectl apply`: creates or replaces each object's spec and labels,
    /// keeping the stored status and creation time. The whole change is validated together
    /// with what the store holds (and what `config` reserves); if it adds any problem, nothing
    /// is written.
    pub fn apply_with(&self, new: Objects, config: &ClusterConfig) -> Result<Applied, StoreError> {
        let lock = self.lock()?;
        let (mut cur, errs) = self.load_unlocked();
        if !errs.is_empty() {
            return Err(StoreError::Load(errs));
        }
        let before: BTreeSet<String> = problem_keys(&cur, config);
        let allocated = allocated_ips(&cur);
        let mut changes = Vec::new();
        merge(
            &mut cur.pools,
            new.pools,
            |d| key_of("ExternalIPPool", None, &d.metadata.name),
            &mut changes,
            |o, n| {
                n.status = o.status.clone();
                n.metadata.creation_timestamp = o.metadata.creation_timestamp.clone();
            },
        );
        merge(
            &mut cur.egresses,
            new.egresses,
            |d| key_of("Egress", None, &d.metadata.name),
            &mut changes,
            |o, n| {
                n.status = o.status.clone();
                n.metadata.creation_timestamp = o.metadata.creation_timestamp.clone();
            },
        );
        merge(
            &mut cur.nodes,
            new.nodes,
            |d| key_of("Node", None, &d.metadata.name),
            &mut changes,
            |o, n| {
                keep_created(o, n);
                // What the node's agent published stays unless the applied object says otherwise
                // (as with another field manager's field under `kubectl apply`).
                let key = egret_core::model::INTERFACES_ANNOTATION;
                if let Some(v) = o.metadata.annotations.as_ref().and_then(|a| a.get(key))
                    && n.metadata.annotations.as_ref().is_none_or(|a| !a.contains_key(key))
                {
                    n.metadata.annotations.get_or_insert_with(Default::default).insert(key.to_string(), v.clone());
                }
            },
        );
        merge(
            &mut cur.namespaces,
            new.namespaces,
            |d| key_of("Namespace", None, &d.metadata.name),
            &mut changes,
            keep_created,
        );
        merge(
            &mut cur.pods,
            new.pods,
            |d| key_of("Pod", d.metadata.namespace.clone(), &d.metadata.name),
            &mut changes,
            keep_created,
        );
        merge(
            &mut cur.cluster_policies,
            new.cluster_policies,
            |d| key_of("ClusterEgressPolicy", None, &d.metadata.name),
            &mut changes,
            keep_created,
        );
        merge(
            &mut cur.policies,
            new.policies,
            |d| key_of("EgressPolicy", d.metadata.namespace.clone(), &d.metadata.name),
            &mut changes,
            keep_created,
        );
        merge(
            &mut cur.network_policies,
            new.network_policies,
            |d| key_of("NetworkPolicy", d.metadata.namespace.clone(), &d.metadata.name),
            &mut changes,
            keep_created,
        );

        let v = cur.validate(config);
        let mut fresh: Vec<Problem> = v
            .problems
            .iter()
            .chain(cur.validate_policies().problems.iter())
            .filter(|p| !before.contains(&problem_key(p)))
            .cloned()
            .collect();
        for (name, pool) in &v.pools {
            let idx = cur.pools.iter().position(|d| d.object.metadata.name.as_deref() == Some(name)).unwrap_or(0);
            let held: Vec<_> =
                allocated.iter().filter(|(_, _, p)| p == name).map(|(ip, e, _)| (*ip, e.clone())).collect();
            fresh.extend(egret_core::validate::check_pool_update(pool, idx, &held));
        }
        if !fresh.is_empty() {
            return Err(StoreError::Invalid(fresh));
        }
        for (key, _) in &changes {
            match key.kind {
                "ExternalIPPool" => put_doc(self, &lock, key, &cur.pools)?,
                "Egress" => put_doc(self, &lock, key, &cur.egresses)?,
                "Node" => put_doc(self, &lock, key, &cur.nodes)?,
                "Namespace" => put_doc(self, &lock, key, &cur.namespaces)?,
                "ClusterEgressPolicy" => put_doc(self, &lock, key, &cur.cluster_policies)?,
                "EgressPolicy" => put_doc(self, &lock, key, &cur.policies)?,
                "NetworkPolicy" => put_doc(self, &lock, key, &cur.network_policies)?,
                _ => put_doc(self, &lock, key, &cur.pods)?,
            }
        }
        let stamp_ms = if changes.is_empty() { self.stamp() } else { self.bump(&lock)? };
        Ok(Applied { changes, stamp_ms })
    }

    /// The store's change stamp: Unix milliseconds of the last apply or delete that changed
    /// something (0 for a new store). Readers report the stamp of the state they acted on, so a
    /// writer can wait until every reader has seen its change, deletions included.
    pub fn stamp(&self) -> u64 {
        std::fs::read_to_string(self.dir.join(".stamp")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
    }

    /// Sets a new stamp, strictly greater than the previous one (under the lock).
    fn bump(&self, _lock: &StoreLock) -> Result<u64, StoreError> {
        let stamp = crate::report::now_ms().max(self.stamp() + 1);
        write_atomic(&self.dir.join(".stamp"), stamp.to_string().as_bytes())?;
        Ok(stamp)
    }

    /// Deletes the objects named in `objs` (their specs are ignored); returns those that existed.
    pub fn delete(&self, objs: &Objects) -> Result<Vec<Key>, StoreError> {
        let lock = self.lock()?;
        let mut keys: Vec<Key> = Vec::new();
        keys.extend(objs.pools.iter().map(|d| key_of("ExternalIPPool", None, &d.object.metadata.name)));
        keys.extend(objs.egresses.iter().map(|d| key_of("Egress", None, &d.object.metadata.name)));
        keys.extend(objs.nodes.iter().map(|d| key_of("Node", None, &d.object.metadata.name)));
        keys.extend(objs.namespaces.iter().map(|d| key_of("Namespace", None, &d.object.metadata.name)));
        keys.extend(
            objs.pods.iter().map(|d| key_of("Pod", d.object.metadata.namespace.clone(), &d.object.metadata.name)),
        );
        keys.extend(objs.cluster_policies.iter().map(|d| key_of("ClusterEgressPolicy", None, &d.object.metadata.name)));
        keys.extend(
            objs.policies
                .iter()
                .map(|d| key_of("EgressPolicy", d.object.metadata.namespace.clone(), &d.object.metadata.name)),
        );
        keys.extend(
            objs.network_policies
                .iter()
                .map(|d| key_of("NetworkPolicy", d.object.metadata.namespace.clone(), &d.object.metadata.name)),
        );
        let mut gone = Vec::new();
        for k in keys {
            if self.remove(&lock, &k)? {
                gone.push(k);
            }
        }
        if !gone.is_empty() {
            self.bump(&lock)?;
        }
        Ok(gone)
    }

    /// Rewrites the status of Egresses and pools whose status changed (under the lock),
    /// re-reading each file first so a concurrent spec change is never lost.
    pub fn write_statuses(
        &self,
        egresses: &[(String, egret_api::v1alpha1::EgressStatus)],
        pools: &[(String, egret_api::v1alpha1::ExternalIPPoolStatus)],
    ) -> Result<usize, StoreError> {
        let lock = self.lock()?;
        let mut written = 0;
        for (name, status) in egresses {
            let key = key_of("Egress", None, &Some(name.clone()));
            if let Some(mut e) = self.read_one::<Egress>(&key)?
                && e.status.as_ref() != Some(status)
            {
                e.status = Some(status.clone());
                self.put(&lock, &key, &e)?;
                written += 1;
            }
        }
        for (name, status) in pools {
            let key = key_of("ExternalIPPool", None, &Some(name.clone()));
            if let Some(mut p) = self.read_one::<ExternalIPPool>(&key)?
                && p.status.as_ref() != Some(status)
            {
                p.status = Some(status.clone());
                self.put(&lock, &key, &p)?;
                written += 1;
            }
        }
        Ok(written)
    }

    /// Sets one annotation of a Node (under the lock), re-reading its file first so a
    /// concurrent change is never lost: how an agent publishes facts only its node knows.
    /// `false` when the Node does not exist or already has that value.
    pub fn annotate_node(&self, node: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        let lock = self.lock()?;
        let k = key_of("Node", None, &Some(node.to_string()));
        let Some(mut n) = self.read_one::<k8s_openapi::api::core::v1::Node>(&k)? else {
            return Ok(false);
        };
        let annotations = n.metadata.annotations.get_or_insert_with(Default::default);
        if annotations.get(key).map(String::as_str) == Some(value) {
            return Ok(false);
        }
        annotations.insert(key.to_string(), value.to_string());
        self.put(&lock, &k, &n)?;
        Ok(true)
    }

    fn read_one<T: DeserializeOwned>(&self, key: &Key) -> Result<Option<T>, StoreError> {
        let path = self.dir.join(key.file_name());
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_yaml_ng::from_str(&text)
                .map(Some)
                .map_err(|e| StoreError::Serialise { what: key.to_string(), reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io { path, source: e }),
        }
    }

    /// Writes this node's agent report.
    pub fn write_report<T: Serialize>(&self, node: &str, report: &T) -> Result<(), StoreError> {
        let path = self.dir.join(".agents").join(format!("{node}.json"));
        let json = serde_json::to_vec_pretty(report)
            .map_err(|e| StoreError::Serialise { what: format!("report of {node}"), reason: e.to_string() })?;
        write_atomic(&path, &json)
    }

    /// Reads every agent report that parses, by node.
    pub fn read_reports<T: DeserializeOwned>(&self) -> Vec<(String, T)> {
        let Ok(rd) = std::fs::read_dir(self.dir.join(".agents")) else { return Vec::new() };
        let mut out: Vec<(String, T)> = rd
            .filter_map(Result::ok)
            .filter_map(|e| {
                let p = e.path();
                let node = p.file_name()?.to_str()?.strip_suffix(".json")?.to_string();
                let r = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
                Some((node, r))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

fn keep_created<T: HasMeta>(o: &T, n: &mut T) {
    n.meta_mut().creation_timestamp = o.meta().creation_timestamp.clone();
}

fn key_of(kind: &'static str, namespace: Option<String>, name: &Option<String>) -> Key {
    Key {
        kind,
        namespace: namespace.or_else(|| (kind == "Pod").then(|| "default".to_string())),
        name: name.clone().unwrap_or_default(),
    }
}

/// Merges `new` into `cur` by key; records `(key, created)` for each changed object.
fn merge<T, K, F>(
    cur: &mut Vec<crate::read::Document<T>>,
    new: Vec<crate::read::Document<T>>,
    key: K,
    changes: &mut Vec<(Key, bool)>,
    keep: F,
) where
    T: Clone + PartialEq + HasMeta,
    K: Fn(&T) -> Key,
    F: Fn(&T, &mut T),
{
    for mut d in new {
        let k = key(&d.object);
        match cur.iter_mut().find(|c| key(&c.object) == k) {
            Some(existing) => {
                keep(&existing.object, &mut d.object);
                if existing.object != d.object {
                    existing.object = d.object;
                    changes.push((k, false));
                }
            }
            None => {
                if d.object.meta_mut().creation_timestamp.is_none() {
                    d.object.meta_mut().creation_timestamp = Some(now());
                }
                cur.push(d);
                changes.push((k, true));
            }
        }
    }
}

/// Access to object metadata for the kinds the store holds.
pub trait HasMeta {
    /// Metadata.
    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    /// Mutable metadata.
    fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
}

macro_rules! has_meta {
    ($($t:ty),*) => {$(
        impl HasMeta for $t {
            fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &mut self.metadata
            }
        }
    )*};
}
has_meta!(
    Egress,
    ExternalIPPool,
    corev1::Node,
    corev1::Namespace,
    corev1::Pod,
    egret_api::v1alpha1::ClusterEgressPolicy,
    egret_api::v1alpha1::EgressPolicy,
    k8s_openapi::api::networking::v1::NetworkPolicy
);

fn put_doc<T: Serialize + HasMeta>(
    store: &Store,
    lock: &StoreLock,
    key: &Key,
    docs: &[crate::read::Document<T>],
) -> Result<(), StoreError> {
    for d in docs {
        let m = d.object.meta();
        let ns_ok = key.namespace.as_deref().is_none_or(|ns| m.namespace.as_deref().unwrap_or("default") == ns);
        if m.name.as_deref() == Some(key.name.as_str()) && ns_ok {
            return store.put(lock, key, &d.object);
        }
    }
    Ok(())
}

fn problem_key(p: &Problem) -> String {
    format!("{}/{}/{}/{}", p.kind, p.name, p.field, p.reason)
}

fn problem_keys(o: &Objects, config: &ClusterConfig) -> BTreeSet<String> {
    o.validate(config).problems.iter().chain(o.validate_policies().problems.iter()).map(problem_key).collect()
}

/// `(ip, egress, pool)` for every allocation recorded in Egress status.
fn allocated_ips(o: &Objects) -> Vec<(std::net::IpAddr, String, String)> {
    o.egresses
        .iter()
        .filter_map(|d| {
            let e = &d.object;
            let ip = e.status.as_ref()?.egress_ip.as_deref()?.parse().ok()?;
            Some((ip, e.metadata.name.clone()?, e.spec.external_ip_pool.clone()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::read_str;
    use egret_api::v1alpha1::EgressStatus;

    fn objs(text: &str) -> Objects {
        let (o, e) = read_str(Path::new("in.yaml"), text);
        assert!(e.is_empty(), "{e:?}");
        o
    }

    const POOL: &str = "apiVersion: egret.dev/v1alpha1\nkind: ExternalIPPool\nmetadata: {name: p}\nspec: {ipRanges: [{start: 10.10.0.11, end: 10.10.0.20}]}\n";
    const EGRESS: &str = "apiVersion: egret.dev/v1alpha1\nkind: Egress\nmetadata: {name: e}\nspec: {appliedTo: {podSelector: {}}, externalIPPool: p}\n";

    #[test]
    fn apply_creates_then_updates_keeping_status_and_creation_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let changes = store.apply(objs(&format!("{POOL}---\n{EGRESS}"))).unwrap().changes;
        assert_eq!(changes.iter().filter(|(_, created)| *created).count(), 2);
        let status = EgressStatus { egress_ip: Some("10.10.0.11".into()), ..Default::default() };
        assert_eq!(store.write_statuses(&[("e".into(), status.clone())], &[]).unwrap(), 1);
        // Unchanged status: nothing rewritten.
        assert_eq!(store.write_statuses(&[("e".into(), status.clone())], &[]).unwrap(), 0);
        let (loaded, _) = store.load();
        let created = loaded.egresses[0].object.metadata.creation_timestamp.clone();
        assert!(created.is_some());
        // Re-applying the same spec changes nothing; a new spec keeps status and creation time.
        assert!(store.apply(objs(EGRESS)).unwrap().changes.is_empty());
        store.apply(objs(&EGRESS.replace("podSelector: {}", "podSelector: {matchLabels: {app: web}}"))).unwrap();
        let (loaded, _) = store.load();
        let e = &loaded.egresses[0].object;
        assert_eq!(e.status.as_ref(), Some(&status));
        assert_eq!(e.metadata.creation_timestamp, created);
        assert!(e.spec.applied_to.pod_selector.as_ref().unwrap().match_labels.is_some());
    }

    #[test]
    fn bad_input_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.apply(objs(&format!("{POOL}---\n{EGRESS}"))).unwrap();
        let before: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
        let bad = format!(
            "{}---\n{}",
            EGRESS.replace("name: e", "name: f").replace("externalIPPool: p", "externalIPPool: nope"),
            EGRESS.replace("name: e", "name: g")
        );
        match store.apply(objs(&bad)) {
            Err(StoreError::Invalid(p)) => {
                assert_eq!(p.len(), 1);
                assert_eq!((p[0].name.as_str(), p[0].field.as_str()), ("f", "spec.externalIPPool"));
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
        let after: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(before, after, "nothing written, not even the valid object");
    }

    #[test]
    fn pool_ranges_holding_allocations_cannot_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.apply(objs(&format!("{POOL}---\n{EGRESS}"))).unwrap();
        store
            .write_statuses(
                &[("e".into(), EgressStatus { egress_ip: Some("10.10.0.11".into()), ..Default::default() })],
                &[],
            )
            .unwrap();
        let shrunk = POOL.replace("start: 10.10.0.11", "start: 10.10.0.15");
        let Err(StoreError::Invalid(p)) = store.apply(objs(&shrunk)) else {
            panic!("shrinking under an allocation must fail")
        };
        assert_eq!(p[0].field, "spec.ipRanges");
        assert!(p[0].reason.contains("10.10.0.11"));
        let grown = POOL.replace("end: 10.10.0.20", "end: 10.10.0.30");
        assert_eq!(store.apply(objs(&grown)).unwrap().changes.len(), 1);
    }

    #[test]
    fn an_agent_annotates_its_node_and_a_later_apply_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let node = "apiVersion: v1\nkind: Node\nmetadata: {name: node-1, labels: {a: b}}\nstatus: {addresses: [{type: InternalIP, address: 10.10.0.101}]}\n";
        store.apply(objs(node)).unwrap();
        let key = egret_core::model::INTERFACES_ANNOTATION;
        assert!(store.annotate_node("node-1", key, r#"{"eth1":["198.18.0.11"]}"#).unwrap());
        assert!(!store.annotate_node("node-1", key, r#"{"eth1":["198.18.0.11"]}"#).unwrap(), "unchanged");
        assert!(!store.annotate_node("node-9", key, "{}").unwrap(), "no such node");
        let read = |s: &Store| {
            let (o, _) = s.load();
            egret_core::model::Node::from_k8s(&o.nodes[0].object)
        };
        assert_eq!(
            read(&store).interface_ip("eth1", egret_core::net::Family::V4),
            Some("198.18.0.11".parse().unwrap())
        );
        // Re-applying the Node (spec and labels) keeps what the agent published.
        store.apply(objs(&node.replace("a: b", "a: c"))).unwrap();
        assert_eq!(read(&store).interfaces.len(), 1);
        assert_eq!(read(&store).labels["a"], "c");
    }

    #[test]
    fn pools_covering_reserved_addresses_are_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let node = "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\nstatus: {addresses: [{type: InternalIP, address: 10.10.0.101}]}\n";
        let config = ClusterConfig { reserved: vec!["10.10.0.1".parse().unwrap()], ..ClusterConfig::default() };
        store.apply_with(objs(node), &config).unwrap();
        let wide = POOL.replace("{start: 10.10.0.11, end: 10.10.0.20}", "{cidr: 10.10.0.0/24}");
        let Err(StoreError::Invalid(p)) = store.apply_with(objs(&wide), &config) else { panic!("must be rejected") };
        assert_eq!(p[0].field, "spec.ipRanges[0]");
        assert!(p[0].reason.contains("10.10.0.1, a reserved address"), "{}", p[0].reason);
        // A node address, without any configured reservation.
        let on_node = POOL.replace("{start: 10.10.0.11, end: 10.10.0.20}", "{cidr: 10.10.0.101/32}");
        assert!(matches!(store.apply(objs(&on_node)), Err(StoreError::Invalid(_))));
        store.apply_with(objs(POOL), &config).unwrap();
    }

    #[test]
    fn network_policies_are_stored_validated_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: egress, namespace: prod}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: 203.0.113.0/24}}], ports: [{port: 443}]}]\n";
        let applied = store.apply(objs(np)).unwrap();
        assert_eq!(applied.changes[0].0.to_string(), "NetworkPolicy/prod/egress");
        assert!(dir.path().join("networkpolicy_prod_egress.yaml").is_file());
        assert_eq!(store.load().0.network_policies.len(), 1);
        // A bad edit (endPort below port, a bad CIDR) is rejected whole, naming the fields.
        let bad = np.replace("{port: 443}", "{port: 443, endPort: 80}").replace("203.0.113.0/24", "203.0.113.0/33");
        let Err(StoreError::Invalid(p)) = store.apply(objs(&bad)) else { panic!("must be rejected") };
        let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["spec.egress[0].to[0].ipBlock.cidr", "spec.egress[0].ports[0].endPort"]);
        assert_eq!(p[0].kind, "NetworkPolicy");
        // The stored one is untouched.
        assert_eq!(store.load().0.network_policies[0].object.spec, objs(np).network_policies[0].object.spec);
        let gone = store.delete(&objs(np)).unwrap();
        assert_eq!(gone.len(), 1);
        assert!(store.load().0.network_policies.is_empty());
    }

    #[test]
    fn delete_removes_files_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.apply(objs(&format!("{POOL}---\n{EGRESS}"))).unwrap();
        let gone = store.delete(&objs(EGRESS)).unwrap();
        assert_eq!(gone.iter().map(ToString::to_string).collect::<Vec<_>>(), vec!["Egress/e"]);
        assert!(store.delete(&objs(EGRESS)).unwrap().is_empty());
        assert!(store.load().0.egresses.is_empty());
    }

    #[test]
    fn file_names_never_collide() {
        let pod = |ns: &str, name: &str| Key { kind: "Pod", namespace: Some(ns.into()), name: name.into() };
        assert_ne!(pod("a", "b_c").file_name(), pod("a_b", "c").file_name());
        assert_eq!(pod("prod", "web-1").file_name(), "pod_prod_web-1.yaml");
        let eg = Key { kind: "Egress", namespace: None, name: "../../etc/x".into() };
        assert!(!eg.file_name().contains('/'), "{}", eg.file_name());
    }

    proptest::proptest! {
        /// Distinct keys map to distinct files (names drawn from an alphabet rich in the
        /// characters that matter: separators, escapes, case).
        #[test]
        fn file_names_are_injective(
            a in ("[a_%B/.-]{0,4}", "[a_%B/.-]{0,4}", proptest::bool::ANY),
            b in ("[a_%B/.-]{0,4}", "[a_%B/.-]{0,4}", proptest::bool::ANY),
        ) {
            let key = |(ns, name, pod): (String, String, bool)| if pod {
                Key { kind: "Pod", namespace: Some(ns), name }
            } else {
                Key { kind: "Egress", namespace: None, name: format!("{ns}{name}") }
            };
            let (ka, kb) = (key(a), key(b));
            proptest::prop_assert_eq!(ka == kb, ka.file_name() == kb.file_name(), "{} {}", ka, kb);
        }
    }

    #[test]
    fn pods_whose_keys_collided_before_are_both_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let pod = |ns: &str, name: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{namespace: {ns}, name: {name}}}\nspec: {{containers: []}}\n"
            )
        };
        store.apply(objs(&format!("{}---\n{}", pod("a", "b_c"), pod("a_b", "c")))).unwrap();
        let (loaded, errs) = store.load();
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(loaded.pods.len(), 2);
        let gone = store.delete(&objs(&pod("a", "b_c"))).unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(store.load().0.pods[0].object.metadata.namespace.as_deref(), Some("a_b"));
    }

    #[test]
    fn reports_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.write_report("node-1", &serde_json::json!({"hosted": ["10.10.0.11"]})).unwrap();
        let r: Vec<(String, serde_json::Value)> = store.read_reports();
        assert_eq!(r[0].0, "node-1");
        assert_eq!(r[0].1["hosted"][0], "10.10.0.11");
        // Reports never show up as objects.
        assert!(store.load().1.is_empty());
    }
}
