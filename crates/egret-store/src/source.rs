//! The local store as an event source: the first poll lists everything (one reset per kind),
//! later polls re-read only the files that changed since and emit applies and deletes.
//!
//! A file that fails to load keeps contributing what it held when it last loaded, so a bad
//! edit of one object never removes that object (nor anything else) from the index: the agent
//! keeps its last good state for it, and the error is reported.

use crate::read::{LoadError, Objects, read_str};
use crate::store::Store;
use egret_api::v1alpha1::{ClusterEgressPolicy, Egress, EgressPolicy, ExternalIPPool};
use egret_core::event::{Change, Event, ObjectRef};
use egret_core::model;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What identifies a version of a file: atomic writes replace the inode, edits change the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Signature {
    inode: u64,
    mtime_ns: i128,
    len: u64,
}

fn signature(path: &Path) -> Option<Signature> {
    let m = std::fs::metadata(path).ok()?;
    Some(Signature {
        inode: m.ino(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        len: m.len(),
    })
}

/// The objects one file held when it last loaded, in their event form.
#[derive(Debug, Clone, Default, PartialEq)]
struct FileObjects {
    pools: BTreeMap<String, ExternalIPPool>,
    egresses: BTreeMap<String, Egress>,
    nodes: BTreeMap<String, model::Node>,
    namespaces: BTreeMap<String, model::Namespace>,
    pods: BTreeMap<(String, String), model::Pod>,
    cluster_policies: BTreeMap<String, ClusterEgressPolicy>,
    policies: BTreeMap<(String, String), EgressPolicy>,
    network_policies: BTreeMap<(String, String), NetworkPolicy>,
}

impl FileObjects {
    fn from_objects(o: Objects) -> FileObjects {
        let named = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| m.name.clone();
        FileObjects {
            pools: o.pools.into_iter().filter_map(|d| Some((named(&d.object.metadata)?, d.object))).collect(),
            egresses: o.egresses.into_iter().filter_map(|d| Some((named(&d.object.metadata)?, d.object))).collect(),
            nodes: o.nodes.iter().map(|d| model::Node::from_k8s(&d.object)).map(|n| (n.name.clone(), n)).collect(),
            namespaces: o
                .namespaces
                .iter()
                .map(|d| model::Namespace::from_k8s(&d.object))
                .map(|n| (n.name.clone(), n))
                .collect(),
            pods: o
                .pods
                .iter()
                .map(|d| model::Pod::from_k8s(&d.object))
                .map(|p| ((p.namespace.clone(), p.name.clone()), p))
                .collect(),
            cluster_policies: o
                .cluster_policies
                .into_iter()
                .filter_map(|d| Some((named(&d.object.metadata)?, d.object)))
                .collect(),
            policies: o
                .policies
                .into_iter()
                .filter_map(|d| {
                    let m = &d.object.metadata;
                    Some(((m.namespace.clone()?, m.name.clone()?), d.object))
                })
                .collect(),
            network_policies: o
                .network_policies
                .into_iter()
                .filter_map(|d| {
                    let m = &d.object.metadata;
                    Some(((m.namespace.clone()?, m.name.clone()?), d.object))
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone)]
struct FileState {
    signature: Signature,
    objects: FileObjects,
}

/// The outcome of one poll.
#[derive(Debug, Default)]
pub struct Poll {
    /// Events for the index, deletes before applies.
    pub changes: Vec<Change>,
    /// Files that failed to load (their last good content still counts).
    pub errors: Vec<LoadError>,
    /// The store's change stamp of the state read.
    pub stamp: u64,
}

/// The store as an event source. See the module documentation.
#[derive(Debug)]
pub struct StoreSource {
    store: Store,
    files: BTreeMap<PathBuf, FileState>,
    listed: bool,
}

impl StoreSource {
    /// A source over `store`; its first [`StoreSource::poll`] lists everything.
    pub fn new(store: Store) -> StoreSource {
        StoreSource { store, files: BTreeMap::new(), listed: false }
    }

    /// Reads what changed since the last poll, under the store's shared lock (a poll never
    /// sees half of an apply).
    pub fn poll(&mut self) -> Poll {
        let _lock = self.store.read_lock();
        let mut errors = Vec::new();
        let present = object_files(self.store.dir(), &mut errors);
        let mut old_objects = FileObjects::default();
        let mut new_objects = FileObjects::default();
        let gone: Vec<PathBuf> = self.files.keys().filter(|p| !present.contains(*p)).cloned().collect();
        for p in gone {
            if let Some(st) = self.files.remove(&p) {
                merge(&mut old_objects, st.objects);
            }
        }
        for path in &present {
            let Some(sig) = signature(path) else { continue };
            if self.files.get(path).is_some_and(|st| st.signature == sig) {
                continue;
            }
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(LoadError {
                        file: path.clone(),
                        doc: None,
                        kind: None,
                        name: None,
                        reason: format!("cannot read: {e}"),
                    });
                    continue;
                }
            };
            let (objs, errs) = read_str(path, &text);
            if !errs.is_empty() {
                // Keep the last good content of this file; try again when it changes.
                errors.extend(errs);
                continue;
            }
            let objects = FileObjects::from_objects(objs);
            let previous = self.files.insert(path.clone(), FileState { signature: sig, objects: objects.clone() });
            if let Some(prev) = previous {
                merge(&mut old_objects, prev.objects);
            }
            merge(&mut new_objects, objects);
        }
        let stamp = self.store.stamp();
        let changes = if self.listed {
            diff(old_objects, new_objects)
        } else {
            self.listed = true;
            self.reset()
        };
        Poll { changes, errors, stamp }
    }

    /// One reset per kind with everything currently held.
    fn reset(&self) -> Vec<Change> {
        let mut all = FileObjects::default();
        for st in self.files.values() {
            merge(&mut all, st.objects.clone());
        }
        vec![
            Change::Nodes(Event::Reset(all.nodes.into_values().collect())),
            Change::Namespaces(Event::Reset(all.namespaces.into_values().collect())),
            Change::Pods(Event::Reset(all.pods.into_values().collect())),
            Change::Pools(Event::Reset(all.pools.into_values().collect())),
            Change::Egresses(Event::Reset(all.egresses.into_values().collect())),
            Change::ClusterPolicies(Event::Reset(all.cluster_policies.into_values().collect())),
            Change::Policies(Event::Reset(all.policies.into_values().collect())),
            Change::NetworkPolicies(Event::Reset(all.network_policies.into_values().collect())),
        ]
    }
}

fn merge(into: &mut FileObjects, from: FileObjects) {
    into.pools.extend(from.pools);
    into.egresses.extend(from.egresses);
    into.nodes.extend(from.nodes);
    into.namespaces.extend(from.namespaces);
    into.pods.extend(from.pods);
    into.cluster_policies.extend(from.cluster_policies);
    into.policies.extend(from.policies);
    into.network_policies.extend(from.network_policies);
}

/// Deletes for what disappeared, then applies for what is new or different.
fn diff(old: FileObjects, new: FileObjects) -> Vec<Change> {
    let mut deletes = Vec::new();
    let mut applies = Vec::new();
    fn one<K: Ord + Clone, T: PartialEq>(
        old: BTreeMap<K, T>,
        mut new: BTreeMap<K, T>,
        key: impl Fn(&K) -> ObjectRef,
        wrap: impl Fn(Event<T>) -> Change,
        deletes: &mut Vec<Change>,
        applies: &mut Vec<Change>,
    ) {
        for (k, o) in old {
            match new.remove(&k) {
                Some(n) if n == o => {}
                Some(n) => applies.push(wrap(Event::Apply(n))),
                None => deletes.push(wrap(Event::Delete(key(&k)))),
            }
        }
        applies.extend(new.into_values().map(|n| wrap(Event::Apply(n))));
    }
    one(old.nodes, new.nodes, |n: &String| ObjectRef::cluster(n.clone()), Change::Nodes, &mut deletes, &mut applies);
    one(
        old.namespaces,
        new.namespaces,
        |n: &String| ObjectRef::cluster(n.clone()),
        Change::Namespaces,
        &mut deletes,
        &mut applies,
    );
    one(old.pools, new.pools, |n: &String| ObjectRef::cluster(n.clone()), Change::Pools, &mut deletes, &mut applies);
    one(
        old.egresses,
        new.egresses,
        |n: &String| ObjectRef::cluster(n.clone()),
        Change::Egresses,
        &mut deletes,
        &mut applies,
    );
    one(old.pods, new.pods, |(ns, name)| ObjectRef::namespaced(ns, name), Change::Pods, &mut deletes, &mut applies);
    one(
        old.cluster_policies,
        new.cluster_policies,
        |n: &String| ObjectRef::cluster(n.clone()),
        Change::ClusterPolicies,
        &mut deletes,
        &mut applies,
    );
    one(
        old.policies,
        new.policies,
        |(ns, name)| ObjectRef::namespaced(ns, name),
        Change::Policies,
        &mut deletes,
        &mut applies,
    );
    one(
        old.network_policies,
        new.network_policies,
        |(ns, name)| ObjectRef::namespaced(ns, name),
        Change::NetworkPolicies,
        &mut deletes,
        &mut applies,
    );
    deletes.extend(applies);
    deletes
}

/// The object files directly in `dir` (the same selection as the reader's).
fn object_files(dir: &Path, errors: &mut Vec<LoadError>) -> BTreeSet<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|f| {
                f.is_file()
                    && !f.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
                    && matches!(f.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
            })
            .collect(),
        Err(e) => {
            errors.push(LoadError {
                file: dir.to_path_buf(),
                doc: None,
                kind: None,
                name: None,
                reason: format!("cannot read directory: {e}"),
            });
            BTreeSet::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\nstatus:\n  addresses: [{type: InternalIP, address: 10.10.0.101}]\n";
    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: prod, labels: {app: web}}\nspec: {nodeName: node-1}\nstatus: {podIP: 10.244.1.10}\n";
    const POD_DB: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: prod, labels: {app: db}}\nspec: {nodeName: node-1}\nstatus: {podIP: 10.244.1.10}\n";

    fn kinds(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Pods(Event::Apply(p)) => format!("apply pod {}/{}", p.namespace, p.name),
                Change::Pods(Event::Delete(r)) => format!("delete pod {r}"),
                Change::Nodes(Event::Apply(n)) => format!("apply node {}", n.name),
                Change::Nodes(Event::Delete(r)) => format!("delete node {r}"),
                Change::Nodes(Event::Reset(l)) => format!("reset nodes {}", l.len()),
                Change::Pods(Event::Reset(l)) => format!("reset pods {}", l.len()),
                Change::Namespaces(Event::Reset(l)) => format!("reset namespaces {}", l.len()),
                Change::Pools(Event::Reset(l)) => format!("reset pools {}", l.len()),
                Change::Egresses(Event::Reset(l)) => format!("reset egresses {}", l.len()),
                Change::ClusterPolicies(Event::Reset(l)) => format!("reset cluster policies {}", l.len()),
                Change::Policies(Event::Reset(l)) => format!("reset policies {}", l.len()),
                Change::Policies(Event::Apply(p)) => {
                    format!(
                        "apply policy {}/{}",
                        p.metadata.namespace.as_deref().unwrap_or(""),
                        p.metadata.name.as_deref().unwrap_or("")
                    )
                }
                Change::Policies(Event::Delete(r)) => format!("delete policy {r}"),
                Change::NetworkPolicies(Event::Reset(l)) => format!("reset network policies {}", l.len()),
                Change::NetworkPolicies(Event::Apply(p)) => {
                    format!(
                        "apply network policy {}/{}",
                        p.metadata.namespace.as_deref().unwrap_or(""),
                        p.metadata.name.as_deref().unwrap_or("")
                    )
                }
                Change::NetworkPolicies(Event::Delete(r)) => format!("delete network policy {r}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn first_poll_resets_then_only_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        crate::write_atomic(&dir.path().join("node_node-1.yaml"), NODE.as_bytes()).unwrap();
        crate::write_atomic(&dir.path().join("pod_prod_web-1.yaml"), POD.as_bytes()).unwrap();
        let mut src = StoreSource::new(store);
        let first = src.poll();
        assert_eq!(
            kinds(&first.changes),
            vec![
                "reset nodes 1",
                "reset namespaces 0",
                "reset pods 1",
                "reset pools 0",
                "reset egresses 0",
                "reset cluster policies 0",
                "reset policies 0",
                "reset network policies 0"
            ]
        );
        // Nothing changed: nothing to say.
        assert!(src.poll().changes.is_empty());
        // One file rewritten: one apply; one removed: one delete.
        crate::write_atomic(&dir.path().join("pod_prod_web-1.yaml"), POD_DB.as_bytes()).unwrap();
        assert_eq!(kinds(&src.poll().changes), vec!["apply pod prod/web-1"]);
        std::fs::remove_file(dir.path().join("pod_prod_web-1.yaml")).unwrap();
        assert_eq!(kinds(&src.poll().changes), vec!["delete pod prod/web-1"]);
        // Rewriting identical content emits nothing.
        crate::write_atomic(&dir.path().join("node_node-1.yaml"), NODE.as_bytes()).unwrap();
        assert!(src.poll().changes.is_empty());
        // A namespaced policy without a namespace lands in `default`, and goes by namespace/name.
        let policy =
            "apiVersion: egret.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: p}\nspec: {defaultAction: Deny}\n";
        crate::write_atomic(&dir.path().join("policy.yaml"), policy.as_bytes()).unwrap();
        assert_eq!(kinds(&src.poll().changes), vec!["apply policy default/p"]);
        std::fs::remove_file(dir.path().join("policy.yaml")).unwrap();
        assert_eq!(kinds(&src.poll().changes), vec!["delete policy default/p"]);
        // NetworkPolicies likewise.
        let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n}\nspec: {policyTypes: [Egress]}\n";
        crate::write_atomic(&dir.path().join("np.yaml"), np.as_bytes()).unwrap();
        assert_eq!(kinds(&src.poll().changes), vec!["apply network policy default/n"]);
        std::fs::remove_file(dir.path().join("np.yaml")).unwrap();
        assert_eq!(kinds(&src.poll().changes), vec!["delete network policy default/n"]);
    }

    #[test]
    fn a_bad_edit_keeps_the_last_good_object() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        crate::write_atomic(&dir.path().join("pod_prod_web-1.yaml"), POD.as_bytes()).unwrap();
        let mut src = StoreSource::new(store);
        src.poll();
        crate::write_atomic(&dir.path().join("pod_prod_web-1.yaml"), b"apiVersion: v1\nkind: Pod\nmetadata: [\n")
            .unwrap();
        let p = src.poll();
        assert!(p.changes.is_empty(), "{:?}", kinds(&p.changes));
        assert_eq!(p.errors.len(), 1);
        // Fixed again: the change since the last good content is emitted.
        crate::write_atomic(&dir.path().join("pod_prod_web-1.yaml"), POD_DB.as_bytes()).unwrap();
        assert_eq!(kinds(&src.poll().changes), vec!["apply pod prod/web-1"]);
    }
}
