//! Reading YAML into typed objects.

use egret_api::compat::{self, Translated};
use egret_api::v1alpha1::{ClusterEgressPolicy, Egress, EgressPolicy, ExternalIPPool};
use egret_core::model;
use egret_core::validate::{Reserved, Validated, validate};
use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where an object came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file.
    pub file: PathBuf,
    /// Index of the document in the file (0-based; items of a top-level list count one each).
    pub doc: usize,
    /// `apiVersion` and kind as written (e.g. `crd.antrea.io/v1alpha2 Egress`).
    pub written_as: String,
}

/// A document that could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    /// The file.
    pub file: PathBuf,
    /// Document index, when the problem is inside one document.
    pub doc: Option<usize>,
    /// The document's kind, when known.
    pub kind: Option<String>,
    /// The document's name, when known.
    pub name: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for LoadError {
    /// `file: Kind/name: document N: reason`, the shape of validation problems.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.file.display())?;
        match (&self.kind, &self.name) {
            (Some(k), Some(n)) => write!(f, " {k}/{n}:")?,
            (Some(k), None) => write!(f, " {k}:")?,
            _ => {}
        }
        if let Some(d) = self.doc {
            write!(f, " document {d}:")?;
        }
        write!(f, " {}", self.reason)
    }
}

/// One loaded object.
#[derive(Debug, Clone)]
pub struct Document<T> {
    /// Where it came from.
    pub origin: Origin,
    /// The object.
    pub object: T,
}

/// Everything read from a set of paths.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    /// Egret Egresses (including translated Antrea and Cilium objects).
    pub egresses: Vec<Document<Egress>>,
    /// Egret pools (including translated ones).
    pub pools: Vec<Document<ExternalIPPool>>,
    /// Nodes.
    pub nodes: Vec<Document<corev1::Node>>,
    /// Namespaces.
    pub namespaces: Vec<Document<corev1::Namespace>>,
    /// Pods.
    pub pods: Vec<Document<corev1::Pod>>,
    /// ClusterEgressPolicies.
    pub cluster_policies: Vec<Document<ClusterEgressPolicy>>,
    /// EgressPolicies (a document without a namespace gets `default`, as `kubectl apply` does).
    pub policies: Vec<Document<EgressPolicy>>,
    /// Kubernetes NetworkPolicies (namespace `default` when absent, likewise).
    pub network_policies: Vec<Document<NetworkPolicy>>,
    /// Foreign objects that were read and deliberately not translated (an Istio ServiceEntry
    /// inside the mesh): `Kind/name` and why.
    pub left_out: Vec<Document<String>>,
}

impl Objects {
    /// Appends everything from `other`.
    pub fn extend(&mut self, other: Objects) {
        self.egresses.extend(other.egresses);
        self.pools.extend(other.pools);
        self.nodes.extend(other.nodes);
        self.namespaces.extend(other.namespaces);
        self.pods.extend(other.pods);
        self.cluster_policies.extend(other.cluster_policies);
        self.policies.extend(other.policies);
        self.network_policies.extend(other.network_policies);
        self.left_out.extend(other.left_out);
    }

    /// Validates the policies, NetworkPolicies included (see
    /// [`egret_core::policy::ValidatedPolicies::without_network_policies`] for an agent that
    /// does not enforce them).
    pub fn validate_policies(&self) -> egret_core::policy::ValidatedPolicies {
        let cluster: Vec<ClusterEgressPolicy> = self.cluster_policies.iter().map(|d| d.object.clone()).collect();
        let namespaced: Vec<EgressPolicy> = self.policies.iter().map(|d| d.object.clone()).collect();
        let network: Vec<NetworkPolicy> = self.network_policies.iter().map(|d| d.object.clone()).collect();
        let mut v = egret_core::policy::validate_policies(&cluster, &namespaced);
        v.extend(egret_core::policy::validate_network_policies(&network));
        v
    }

    /// Validates the Egret objects; pools must not cover the addresses of the Nodes here nor
    /// what `config` reserves.
    pub fn validate(&self, config: &egret_core::planner::ClusterConfig) -> Validated {
        let pools: Vec<ExternalIPPool> = self.pools.iter().map(|d| d.object.clone()).collect();
        let egresses: Vec<Egress> = self.egresses.iter().map(|d| d.object.clone()).collect();
        validate(&pools, &egresses, &Reserved::of(&self.model_nodes(), config))
    }

    /// Validates, allocates, places and plans everything here for the given live nodes.
    pub fn plan(
        &self,
        live: &std::collections::BTreeSet<String>,
        config: &egret_core::planner::ClusterConfig,
    ) -> (Validated, egret_core::planner::Plan) {
        let pools: Vec<ExternalIPPool> = self.pools.iter().map(|d| d.object.clone()).collect();
        let egresses: Vec<Egress> = self.egresses.iter().map(|d| d.object.clone()).collect();
        egret_core::planner::plan_objects(
            &pools,
            &egresses,
            &self.model_nodes(),
            &self.model_namespaces(),
            &self.model_pods(),
            live,
            config,
        )
    }

    /// The file a validation problem's object came from (by kind and position).
    pub fn origin_of(&self, kind: &str, index: usize) -> Option<&Origin> {
        match kind {
            "Egress" => self.egresses.get(index).map(|d| &d.origin),
            "ExternalIPPool" => self.pools.get(index).map(|d| &d.origin),
            "ClusterEgressPolicy" => self.cluster_policies.get(index).map(|d| &d.origin),
            "EgressPolicy" => self.policies.get(index).map(|d| &d.origin),
            "NetworkPolicy" => self.network_policies.get(index).map(|d| &d.origin),
            _ => None,
        }
    }

    /// The origin of the Egret object of `kind` called `name`.
    pub fn origin_by_name(&self, kind: &str, name: &str) -> Option<&Origin> {
        let hit = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| m.name.as_deref() == Some(name);
        match kind {
            "Egress" => self.egresses.iter().find(|d| hit(&d.object.metadata)).map(|d| &d.origin),
            "ExternalIPPool" => self.pools.iter().find(|d| hit(&d.object.metadata)).map(|d| &d.origin),
            // Namespaced: problems name it `namespace/name`.
            "NetworkPolicy" => self
                .network_policies
                .iter()
                .find(|d| {
                    let m = &d.object.metadata;
                    name.split_once('/')
                        == Some((m.namespace.as_deref().unwrap_or(""), m.name.as_deref().unwrap_or("")))
                })
                .map(|d| &d.origin),
            _ => None,
        }
    }

    /// Nodes as the core model.
    pub fn model_nodes(&self) -> Vec<model::Node> {
        self.nodes.iter().map(|d| model::Node::from_k8s(&d.object)).collect()
    }

    /// Namespaces as the core model.
    pub fn model_namespaces(&self) -> Vec<model::Namespace> {
        self.namespaces.iter().map(|d| model::Namespace::from_k8s(&d.object)).collect()
    }

    /// Pods as the core model.
    pub fn model_pods(&self) -> Vec<model::Pod> {
        self.pods.iter().map(|d| model::Pod::from_k8s(&d.object)).collect()
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Head {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<HeadMeta>,
}

#[derive(Deserialize, Default)]
struct HeadMeta {
    #[serde(default)]
    name: Option<String>,
}

/// Reads files and directories (the `*.yaml`, `*.yml` and `*.json` files directly inside, in
/// name order). Returns what loaded and every error.
pub fn read_paths(paths: &[PathBuf]) -> (Objects, Vec<LoadError>) {
    let mut objs = Objects::default();
    let mut errs = Vec::new();
    for p in paths {
        for file in expand(p, &mut errs) {
            match std::fs::read_to_string(&file) {
                Ok(text) => {
                    let (o, e) = read_str(&file, &text);
                    objs.extend(o);
                    errs.extend(e);
                }
                Err(e) => errs.push(LoadError {
                    file: file.clone(),
                    doc: None,
                    kind: None,
                    name: None,
                    reason: format!("cannot read: {e}"),
                }),
            }
        }
    }
    (objs, errs)
}

fn expand(p: &Path, errs: &mut Vec<LoadError>) -> Vec<PathBuf> {
    if p.is_dir() {
        let entries = match std::fs::read_dir(p) {
            Ok(rd) => rd,
            Err(e) => {
                errs.push(LoadError {
                    file: p.to_path_buf(),
                    doc: None,
                    kind: None,
                    name: None,
                    reason: format!("cannot read directory: {e}"),
                });
                return Vec::new();
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|f| f.is_file() && matches!(f.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")))
            .collect();
        files.sort();
        files
    } else if p.exists() {
        vec![p.to_path_buf()]
    } else {
        errs.push(LoadError {
            file: p.to_path_buf(),
            doc: None,
            kind: None,
            name: None,
            reason: "no such file or directory".into(),
        });
        Vec::new()
    }
}

/// Parses the text of one file.
pub fn read_str(file: &Path, text: &str) -> (Objects, Vec<LoadError>) {
    let mut objs = Objects::default();
    let mut errs = Vec::new();
    let mut index = 0usize;
    for de in serde_yaml_ng::Deserializer::from_str(text) {
        let value = match serde_yaml_ng::Value::deserialize(de) {
            Ok(v) => v,
            Err(e) => {
                errs.push(LoadError {
                    file: file.to_path_buf(),
                    doc: Some(index),
                    kind: None,
                    name: None,
                    reason: format!("malformed YAML: {e}"),
                });
                // The YAML stream cannot be resynchronised after a syntax error.
                break;
            }
        };
        // A top-level sequence of objects (as in the Antrea docs) counts one document per item.
        let items = match value {
            serde_yaml_ng::Value::Null => continue,
            serde_yaml_ng::Value::Sequence(items) => items,
            other => vec![other],
        };
        for item in items {
            load_one(file, index, item, &mut objs, &mut errs);
            index += 1;
        }
    }
    (objs, errs)
}

fn load_one(file: &Path, doc: usize, value: serde_yaml_ng::Value, objs: &mut Objects, errs: &mut Vec<LoadError>) {
    let json: serde_json::Value = match serde_json::to_value(&value) {
        Ok(j) => j,
        Err(e) => {
            errs.push(LoadError {
                file: file.into(),
                doc: Some(doc),
                kind: None,
                name: None,
                reason: format!("not a Kubernetes object: {e}"),
            });
            return;
        }
    };
    let head: Head = serde_json::from_value(json.clone()).unwrap_or_default();
    let kind = head.kind.clone();
    let name = head.metadata.as_ref().and_then(|m| m.name.clone());
    let err = |reason: String| LoadError {
        file: file.into(),
        doc: Some(doc),
        kind: kind.clone(),
        name: name.clone(),
        reason,
    };
    let (Some(api_version), Some(k)) = (head.api_version.as_deref(), head.kind.as_deref()) else {
        errs.push(err("not a Kubernetes object: apiVersion and kind are required".into()));
        return;
    };
    let origin = Origin { file: file.into(), doc, written_as: format!("{api_version} {k}") };
    // Egret's and the foreign kinds are strict: a misspelt field would otherwise be dropped
    // and the object would mean something else (an Egress without its destinations steers
    // everything). core/v1 objects mirror the API server's state and tolerate fields newer
    // Kubernetes versions add.
    let push_translated = |t: Vec<Translated>, objs: &mut Objects| {
        for t in t {
            match t {
                Translated::Egress(e) => objs.egresses.push(Document { origin: origin.clone(), object: *e }),
                Translated::Pool(p) => objs.pools.push(Document { origin: origin.clone(), object: *p }),
            }
        }
    };
    let res: Result<(), String> = match (api_version, k) {
        ("egret.dev/v1alpha1", "Egress") => {
            parse_strict(json, true).map(|e| objs.egresses.push(Document { origin: origin.clone(), object: e }))
        }
        ("egret.dev/v1alpha1", "ExternalIPPool") => {
            parse_strict(json, true).map(|p| objs.pools.push(Document { origin: origin.clone(), object: p }))
        }
        ("egret.dev/v1alpha1", "ClusterEgressPolicy") => {
            parse_strict(json, true).map(|p| objs.cluster_policies.push(Document { origin: origin.clone(), object: p }))
        }
        ("egret.dev/v1alpha1", "EgressPolicy") => parse_strict::<EgressPolicy>(json, true).map(|mut p| {
            p.metadata.namespace.get_or_insert_with(|| "default".to_string());
            objs.policies.push(Document { origin: origin.clone(), object: p })
        }),
        ("networking.k8s.io/v1", "NetworkPolicy") => parse_strict::<NetworkPolicy>(json, true).map(|mut p| {
            p.metadata.namespace.get_or_insert_with(|| "default".to_string());
            objs.network_policies.push(Document { origin: origin.clone(), object: p })
        }),
        ("crd.antrea.io/v1alpha2" | "crd.antrea.io/v1beta1", "Egress") => {
            parse_strict::<compat::AntreaEgress>(json, true)
                .and_then(|a| compat::antrea_egress(&a).map_err(|e| e.to_string()))
                .map(|e| push_translated(vec![Translated::Egress(Box::new(e))], objs))
        }
        ("crd.antrea.io/v1alpha2" | "crd.antrea.io/v1beta1", "ExternalIPPool") => {
            parse_strict::<compat::AntreaPool>(json, true)
                .and_then(|a| compat::antrea_pool(&a).map_err(|e| e.to_string()))
                .map(|p| push_translated(vec![Translated::Pool(Box::new(p))], objs))
        }
        ("cilium.io/v2", "CiliumEgressGatewayPolicy") => parse_strict::<compat::CiliumPolicy>(json, true)
            .and_then(|c| compat::cilium_policy(&c).map_err(|e| e.to_string()))
            .map(|t| push_translated(t, objs)),
        ("networking.istio.io/v1" | "networking.istio.io/v1beta1" | "networking.istio.io/v1alpha3", "ServiceEntry") => {
            parse_strict::<compat::IstioServiceEntry>(json, true)
                .and_then(|se| compat::istio_service_entry(&se).map_err(|e| e.to_string()))
                .and_then(|t| match t {
                    compat::ServiceEntryTranslation::Policy(p) => {
                        check_service_entry_policy(&p)?;
                        objs.policies.push(Document { origin: origin.clone(), object: *p });
                        Ok(())
                    }
                    compat::ServiceEntryTranslation::LeftOut(why) => {
                        let what = format!("{k}/{}: {why}", name.as_deref().unwrap_or(""));
                        objs.left_out.push(Document { origin: origin.clone(), object: what });
                        Ok(())
                    }
                })
        }
        ("v1", "Node") => {
            parse_strict(json, false).map(|n| objs.nodes.push(Document { origin: origin.clone(), object: n }))
        }
        ("v1", "Namespace") => {
            parse_strict(json, false).map(|n| objs.namespaces.push(Document { origin: origin.clone(), object: n }))
        }
        ("v1", "Pod") => {
            parse_strict(json, false).map(|p| objs.pods.push(Document { origin: origin.clone(), object: p }))
        }
        (av, k) => Err(format!(
            "unknown kind {av}/{k}; accepted: egret.dev/v1alpha1 Egress, ExternalIPPool, ClusterEgressPolicy and EgressPolicy, crd.antrea.io/v1alpha2 and v1beta1 Egress and ExternalIPPool, cilium.io/v2 CiliumEgressGatewayPolicy, networking.istio.io/v1, v1beta1 and v1alpha3 ServiceEntry, networking.k8s.io/v1 NetworkPolicy, v1 Node, Namespace and Pod"
        )),
    };
    if let Err(reason) = res {
        errs.push(err(reason));
    }
}

/// Validates the EgressPolicy a ServiceEntry became as Egret would, naming the entry's own
/// fields: host `i` is the rule's `to.fqdns[i]` (a name Egret cannot match, one listed twice).
fn check_service_entry_policy(p: &EgressPolicy) -> Result<(), String> {
    let v = egret_core::policy::validate_policies(&[], std::slice::from_ref(p));
    let lines: Vec<String> = v
        .problems
        .iter()
        .map(|pr| {
            let field = match pr.field.strip_prefix("spec.rules[0].to.fqdns[") {
                Some(rest) => format!("spec.hosts[{rest}"),
                None if pr.field == "spec.rules[0].name" => "metadata.name".to_string(),
                None => format!("{} (of the EgressPolicy it becomes)", pr.field),
            };
            format!("{field}: {}", pr.reason)
        })
        .collect();
    if lines.is_empty() { Ok(()) } else { Err(lines.join("; ")) }
}

/// A field path as written in manifests: `spec.selectors[0].podSelector`.
fn field_path(p: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match p {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => match field_path(parent) {
            s if s.is_empty() => key.clone(),
            s => format!("{s}.{key}"),
        },
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

/// Deserialises one object. Errors name the field path (`spec.appliedTo: invalid type…`);
/// with `strict`, a field the type does not know is an error too, named by its path.
fn parse_strict<T: DeserializeOwned>(json: serde_json::Value, strict: bool) -> Result<T, String> {
    let mut unknown: Vec<String> = Vec::new();
    let mut note = |p: serde_ignored::Path| unknown.push(field_path(&p));
    let de = serde_ignored::Deserializer::new(json, &mut note);
    let obj: T =
        serde_path_to_error::deserialize(de).map_err(|e| format!("malformed object: {}: {}", e.path(), e.inner()))?;
    // `apiVersion` and `kind` were read already; the typed roots do not keep them.
    unknown.retain(|p| p != "apiVersion" && p != "kind");
    match unknown.as_slice() {
        [] => Ok(obj),
        _ if !strict => Ok(obj),
        [one] => Err(format!("{one}: unknown field; check its spelling (see docs/api.md for the fields of each kind)")),
        many => Err(format!(
            "{}: unknown fields; check their spelling (see docs/api.md for the fields of each kind)",
            many.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> (Objects, Vec<LoadError>) {
        read_str(Path::new("t.yaml"), text)
    }

    #[test]
    fn multi_document_and_top_level_lists() {
        let text = r#"
- apiVersion: crd.antrea.io/v1alpha2
  kind: ExternalIPPool
  metadata:
    name: external-ip-pool
  spec:
    ipRanges:
    - start: 10.10.0.11  # 10.10.0.11-10.10.0.20 can be used as Egress IPs
      end: 10.10.0.20
    nodeSelector: {}     # All Nodes can be Egress Nodes
---
apiVersion: crd.antrea.io/v1alpha2
kind: Egress
metadata:
  name: egress-prod-web
spec:
  appliedTo:
    namespaceSelector:
      matchLabels:
        kubernetes.io/metadata.name: prod
    podSelector:
      matchLabels:
        app: web
  externalIPPool: external-ip-pool
---
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {kubernetes.io/metadata.name: prod}}
---
"#;
        let (o, e) = load(text);
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(o.pools.len(), 1);
        assert_eq!(o.egresses.len(), 1);
        assert_eq!(o.namespaces.len(), 1);
        assert_eq!(o.egresses[0].origin.doc, 1);
        assert_eq!(o.egresses[0].origin.written_as, "crd.antrea.io/v1alpha2 Egress");
        assert!(o.validate(&Default::default()).problems.is_empty());
    }

    #[test]
    fn unknown_kind_names_file_document_kind_and_name() {
        let (o, e) = load(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n",
        );
        assert_eq!(o.pods.len(), 1);
        let msg = e[0].to_string();
        assert!(msg.starts_with("t.yaml: Deployment/web: document 1: unknown kind apps/v1/Deployment"), "{msg}");
    }

    #[test]
    fn malformed_documents_are_reported() {
        let (_, e) = load("apiVersion: egret.dev/v1alpha1\nkind: Egress\nmetadata: {name: e}\nspec: {appliedTo: 5}\n");
        assert!(e[0].to_string().contains("Egress/e: document 0: malformed object: spec.appliedTo:"), "{}", e[0]);
        let (_, e) = load("a: [1, 2\n");
        assert!(e[0].to_string().contains("malformed YAML"), "{}", e[0]);
        let (_, e) = load("just: a map\n");
        assert!(e[0].to_string().contains("apiVersion and kind are required"));
        let (_, e) = load(
            "apiVersion: cilium.io/v2\nkind: CiliumEgressGatewayPolicy\nmetadata: {name: c}\nspec: {selectors: [{podSelector: {}}], egressGateway: {interface: eth1, egressIP: 10.0.0.1}}\n",
        );
        assert!(e[0].to_string().contains("spec.egressGateway: egressIP and interface"), "{}", e[0]);
    }

    #[test]
    fn unknown_fields_are_errors_naming_their_path() {
        let one = |text: &str| {
            let (o, e) = load(text);
            assert_eq!(o.egresses.len() + o.pools.len(), 0, "{text}");
            assert_eq!(e.len(), 1, "{e:?}");
            e[0].to_string()
        };
        // The misspelt destinationCIDRs of the issue: the Egress would steer everything.
        let msg = one(
            "apiVersion: egret.dev/v1alpha1\nkind: Egress\nmetadata: {name: e}\nspec: {appliedTo: {podSelector: {}}, externalIPPool: p, destinationCIDR: [203.0.113.5/32]}\n",
        );
        assert!(msg.starts_with("t.yaml: Egress/e: document 0: "), "{msg}");
        assert!(msg.contains("spec") && msg.contains("destinationCIDR") && msg.contains("destinationCIDRs"), "{msg}");
        // Inside a k8s-openapi selector, at the root, in metadata.
        let msg = one(
            "apiVersion: egret.dev/v1alpha1\nkind: Egress\nmetadata: {name: e}\nspec: {appliedTo: {podSelector: {matchLabel: {app: web}}}, externalIPPool: p}\n",
        );
        assert!(msg.contains("spec.appliedTo.podSelector.matchLabel: unknown field"), "{msg}");
        let msg = one(
            "apiVersion: egret.dev/v1alpha1\nkind: ExternalIPPool\nmetadata: {name: p}\nspec: {ipRanges: [{cidr: 10.0.0.0/30}]}\nstatu: {}\n",
        );
        assert!(msg.contains("ExternalIPPool/p: document 0: statu: unknown field"), "{msg}");
        let msg = one(
            "apiVersion: egret.dev/v1alpha1\nkind: ExternalIPPool\nmetadata: {name: p, label: {a: b}}\nspec: {ipRanges: [{cidr: 10.0.0.0/30}]}\n",
        );
        assert!(msg.contains("metadata.label: unknown field"), "{msg}");
        let msg = one(
            "apiVersion: egret.dev/v1alpha1\nkind: ExternalIPPool\nmetadata: {name: p}\nspec: {ipRanges: [{cidr: 10.0.0.0/30, stop: 10.0.0.9}]}\n",
        );
        assert!(msg.contains("spec.ipRanges[0]") && msg.contains("stop"), "{msg}");
        // Foreign kinds are strict too.
        let msg = one(
            "apiVersion: crd.antrea.io/v1beta1\nkind: Egress\nmetadata: {name: a}\nspec: {appliedTo: {podSelector: {}}, externalIPPol: p}\n",
        );
        assert!(msg.contains("externalIPPol"), "{msg}");
        let msg = one(
            "apiVersion: cilium.io/v2\nkind: CiliumEgressGatewayPolicy\nmetadata: {name: c}\nspec: {selectors: [{podSelector: {}, nodeSelecter: {}}], egressGateway: {egressIP: 10.1.1.1}}\n",
        );
        assert!(msg.contains("spec.selectors[0]") && msg.contains("nodeSelecter"), "{msg}");
    }

    #[test]
    fn istio_service_entries_become_egress_policies_or_are_left_out() {
        let se = |version: &str, extra: &str| {
            format!(
                "apiVersion: networking.istio.io/{version}\nkind: ServiceEntry\nmetadata: {{name: ext, namespace: prod}}\nspec:\n  hosts: [\"*.googleapis.com\", api.github.com]\n  ports: [{{number: 443, name: https, protocol: TLS}}]\n  resolution: DNS\n{extra}"
            )
        };
        for v in ["v1", "v1beta1", "v1alpha3"] {
            let (o, e) = load(&se(v, "  location: MESH_EXTERNAL\n"));
            assert!(e.is_empty(), "{e:?}");
            let p = &o.policies[0];
            assert_eq!(p.origin.written_as, format!("networking.istio.io/{v} ServiceEntry"));
            assert_eq!(p.object.metadata.namespace.as_deref(), Some("prod"));
            assert_eq!(p.object.spec.rules[0].to.as_ref().unwrap().fqdns, vec!["**.googleapis.com", "api.github.com"]);
            assert!(o.validate_policies().problems.is_empty(), "{:?}", o.validate_policies().problems);
        }
        // Inside the mesh: read, left out with the reason, not an error.
        let (o, e) = load(&se("v1", "  location: MESH_INTERNAL\n"));
        assert!(e.is_empty() && o.policies.is_empty(), "{e:?}");
        assert!(o.left_out[0].object.starts_with("ServiceEntry/ext: location MESH_INTERNAL"), "{:?}", o.left_out);
        // A host Egret cannot match is named by the entry's own field.
        let (o, e) = load(&se("v1", "  location: MESH_EXTERNAL\n").replace("api.github.com", "bücher.example"));
        assert!(o.policies.is_empty());
        let msg = e[0].to_string();
        assert!(msg.contains("ServiceEntry/ext: document 0: spec.hosts[1]: \"bücher.example\" is not ASCII"), "{msg}");
        let (_, e) = load(&se("v1", "  location: MESH_EXTERNAL\n").replace("api.github.com", "\"*\""));
        assert!(e[0].to_string().contains("spec.hosts[1]: \"*\" (every host) cannot be translated"), "{}", e[0]);
        // Strict like the other foreign kinds.
        let (_, e) = load(&se("v1", "  location: MESH_EXTERNAL\n  exportto: [\".\"]\n"));
        assert!(e[0].to_string().contains("spec.exportto: unknown field"), "{}", e[0]);
    }

    #[test]
    fn network_policies_load_strictly_into_default() {
        let (o, e) = load(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n}\nspec: {podSelector: {}, policyTypes: [Egress]}\n",
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(o.network_policies[0].object.metadata.namespace.as_deref(), Some("default"));
        // Problems name it namespace/name; `lab apply` finds its file so.
        assert_eq!(o.origin_by_name("NetworkPolicy", "default/n").map(|o| o.doc), Some(0));
        // A misspelt egress would leave the pods isolated with no rule at all.
        let (o, e) = load(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n}\nspec: {policyTypes: [Egress], egres: [{}]}\n",
        );
        assert!(o.network_policies.is_empty());
        assert!(e[0].to_string().contains("spec.egres: unknown field"), "{}", e[0]);
    }

    #[test]
    fn status_metadata_and_upstream_fields_still_load() {
        let text = r#"
apiVersion: egret.dev/v1alpha1
kind: Egress
metadata:
  name: e
  labels: {a: b}
  annotations: {x: y}
  creationTimestamp: "2026-01-01T00:00:00Z"
  resourceVersion: "12"
  uid: 0b3c
spec: {appliedTo: {podSelector: {}}, externalIPPool: p}
status:
  egressIP: 10.10.0.11
  egressNode: node-4
  conditions:
  - {type: IPAllocated, status: "True", reason: Allocated, message: m, lastTransitionTime: "2026-01-01T00:00:00Z"}
---
apiVersion: egret.dev/v1alpha1
kind: ExternalIPPool
metadata: {name: p}
spec: {ipRanges: [{start: 10.10.0.11, end: 10.10.0.20}], nodeSelector: {}}
status: {usage: {total: 10, used: 1}}
---
apiVersion: crd.antrea.io/v1beta1
kind: Egress
metadata: {name: a}
spec: {appliedTo: {podSelector: {}}, externalIPPool: p}
status:
  egressNode: node-4
  egressIP: 10.10.0.12
  conditions: [{type: IPAssigned, status: "True", reason: Assigned}]
---
apiVersion: crd.antrea.io/v1beta1
kind: ExternalIPPool
metadata: {name: q}
spec: {ipRanges: [{cidr: 10.10.1.0/28}], nodeSelector: {}}
status: {usage: {total: 14, used: 0}}
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: prod}
spec: {nodeName: node-1, containers: [{name: c, image: i}], someFutureField: true}
status: {podIP: 10.244.1.10}
"#;
        let (o, e) = load(text);
        assert!(e.is_empty(), "{e:?}");
        assert_eq!((o.egresses.len(), o.pools.len(), o.pods.len()), (2, 2, 1));
        assert_eq!(o.egresses[0].object.status.as_ref().unwrap().conditions.len(), 1);
    }

    #[test]
    fn every_example_loads() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mut dirs = 0;
        for d in std::fs::read_dir(&root).unwrap() {
            let d = d.unwrap().path();
            // examples/dns holds zone files, no manifests.
            if expand(&d, &mut Vec::new()).is_empty() {
                continue;
            }
            let (o, e) = read_paths(&[d]);
            assert!(e.is_empty(), "{e:?}");
            assert!(!o.nodes.is_empty());
            assert!(o.validate_policies().problems.is_empty(), "{:?}", o.validate_policies().problems);
            dirs += 1;
        }
        assert!(dirs >= 6);
    }

    #[test]
    fn directories_are_read_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n").unwrap();
        std::fs::write(dir.path().join("a.yml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let (o, e) = read_paths(&[dir.path().to_path_buf(), dir.path().join("missing.yaml")]);
        let names: Vec<_> = o.namespaces.iter().map(|d| d.object.metadata.name.clone().unwrap()).collect();
        assert_eq!(names, vec!["a", "b"]);
        assert!(e[0].reason.contains("no such file"));
    }
}
