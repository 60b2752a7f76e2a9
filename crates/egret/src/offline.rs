//! Commands that work on manifests alone: `crds`, `validate`, `plan`, `convert`.

use crate::table;
use anyhow::{Context, bail};
use egret_core::planner::{ClusterConfig, Plan};
use egret_store::{Objects, read_paths};
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Prints (or writes) the CRDs.
pub fn crds(dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    for (file, crd) in egret_api::crds() {
        let yaml = serde_yaml_ng::to_string(&crd)?;
        match dir {
            Some(d) => {
                std::fs::write(d.join(file), yaml).with_context(|| format!("writing {}", d.join(file).display()))?
            }
            None => out!("---\n{yaml}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Cluster settings no object carries, shared by `validate` and `plan`.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Service CIDRs (never steered; no pool may cover them).
    #[arg(long = "service-cidr", default_value = "10.96.0.0/12", value_delimiter = ',')]
    service_cidrs: Vec<IpNet>,
    /// Further cluster-internal CIDRs (never steered; no pool may cover them), e.g. the pod
    /// network.
    #[arg(long = "cluster-cidr", value_delimiter = ',')]
    cluster_cidrs: Vec<IpNet>,
    /// Addresses no pool may cover that no object names, e.g. the node network's router.
    #[arg(long = "reserved-ip", value_delimiter = ',')]
    reserved_ips: Vec<IpAddr>,
}

impl ClusterArgs {
    pub fn config(&self) -> ClusterConfig {
        ClusterConfig {
            service_cidrs: self.service_cidrs.clone(),
            internal_cidrs: self.cluster_cidrs.clone(),
            reserved: self.reserved_ips.clone(),
        }
    }
}

/// Loads manifests; every load error and validation problem as one line each (and, apart,
/// the warnings: parts of policies left out, such as NetworkPolicy ports given by name).
fn load(
    files: &[PathBuf],
    config: &ClusterConfig,
) -> (Objects, egret_core::validate::Validated, Vec<String>, Vec<String>) {
    let (objs, errs) = read_paths(files);
    let mut lines: Vec<String> = errs.iter().map(ToString::to_string).collect();
    let v = objs.validate(config);
    let policies = objs.validate_policies();
    let at = |p: &egret_core::validate::Problem| {
        let file = objs.origin_of(&p.kind, p.index).map(|o| o.file.display().to_string()).unwrap_or_default();
        format!("{file}: {p}")
    };
    lines.extend(v.problems.iter().chain(policies.problems.iter()).map(at));
    let warnings = policies.warnings.iter().map(at).collect();
    (objs, v, lines, warnings)
}

/// `egret validate`.
pub fn validate(files: &[PathBuf], cluster: &ClusterArgs) -> anyhow::Result<ExitCode> {
    let (objs, v, lines, warnings) = load(files, &cluster.config());
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if !lines.is_empty() {
        for l in &lines {
            outln!("{l}");
        }
        return Ok(ExitCode::from(1));
    }
    outln!(
        "valid: {} ExternalIPPools, {} Egresses, {} ClusterEgressPolicies, {} EgressPolicies, {} NetworkPolicies, {} Nodes, {} Namespaces, {} Pods",
        v.pools.len(),
        v.egresses.len(),
        objs.cluster_policies.len(),
        objs.policies.len(),
        objs.network_policies.len(),
        objs.nodes.len(),
        objs.namespaces.len(),
        objs.pods.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Output formats of `plan`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum PlanOutput {
    /// Aligned tables.
    Table,
    /// JSON.
    Json,
}

/// Arguments of `egret plan`.
#[derive(clap::Args)]
pub struct PlanArgs {
    /// Files or directories of YAML manifests.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    files: Vec<PathBuf>,
    /// The live nodes (default: every Node in the manifests).
    #[arg(long, value_delimiter = ',')]
    nodes: Option<Vec<String>>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: PlanOutput,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Answer as agents run with `--enforce-network-policy` would: NetworkPolicies govern pods.
    #[arg(long)]
    enforce_network_policy: bool,
}

/// `egret plan`.
pub fn plan(args: &PlanArgs) -> anyhow::Result<ExitCode> {
    let config = args.cluster.config();
    let (objs, _, lines, warnings) = load(&args.files, &config);
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if !lines.is_empty() {
        for l in &lines {
            eprintln!("{l}");
        }
        eprintln!("error: {} problem(s) in the manifests; nothing planned", lines.len());
        return Ok(ExitCode::from(1));
    }
    let nodes = objs.model_nodes();
    let known: BTreeSet<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let live: BTreeSet<String> = match &args.nodes {
        None => known.clone(),
        Some(list) => {
            let unknown: Vec<&String> = list.iter().filter(|n| !known.contains(*n)).collect();
            if !unknown.is_empty() {
                bail!(
                    "--nodes names nodes that are not in the manifests: {} (known: {})",
                    unknown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                    known.iter().cloned().collect::<Vec<_>>().join(", ")
                );
            }
            list.iter().cloned().collect()
        }
    };
    let (_, p) = objs.plan(&live, &config);
    for w in &p.warnings {
        eprintln!("warning: {w}");
    }
    match args.output {
        PlanOutput::Json => outln!("{}", serde_json::to_string_pretty(&p)?),
        PlanOutput::Table => {
            out!("{}", plan_tables(&p));
            out!("{}", policy_table(&objs, args.enforce_network_policy));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The policies applying to `pod`, in evaluation order, with its namespace's and node's labels
/// taken from the manifests' objects.
pub(crate) fn pod_policies<'a>(
    policies: &'a [egret_core::policy::Policy],
    namespaces: &[egret_core::model::Namespace],
    nodes: &[egret_core::model::Node],
    pod: &egret_core::model::Pod,
) -> Vec<&'a egret_core::policy::Policy> {
    let empty = egret_core::selector::Labels::new();
    let ns_labels = namespaces.iter().find(|n| n.name == pod.namespace).map_or(&empty, |n| &n.labels);
    let node_labels =
        pod.node.as_ref().and_then(|name| nodes.iter().find(|n| &n.name == name)).map_or(&empty, |n| &n.labels);
    egret_core::policy::applicable(policies, &pod.namespace, ns_labels, &pod.labels, node_labels)
}

/// The valid policies an agent evaluates: NetworkPolicies only when it enforces them.
pub(crate) fn enforced_policies(objs: &Objects, network_policies: bool) -> egret_core::policy::ValidatedPolicies {
    let v = objs.validate_policies();
    if network_policies { v } else { v.without_network_policies() }
}

/// Per pod, the policies that apply, in evaluation order.
fn policy_table(objs: &Objects, network_policies: bool) -> String {
    let v = enforced_policies(objs, network_policies);
    if v.policies.is_empty() {
        return String::new();
    }
    let (namespaces, nodes) = (objs.model_namespaces(), objs.model_nodes());
    let mut rows = Vec::new();
    for pod in objs.model_pods() {
        let applying = pod_policies(&v.policies, &namespaces, &nodes, &pod);
        if applying.is_empty() {
            continue;
        }
        let names: Vec<String> = applying.iter().map(|p| p.id.to_string()).collect();
        rows.push(vec![format!("{}/{}", pod.namespace, pod.name), opt(pod.node.as_deref()), names.join(", ")]);
    }
    let mut out = String::from("\n");
    if rows.is_empty() {
        out.push_str("no pod is governed by an egress policy\n");
    } else {
        out.push_str(&table::render(&["Pod", "Node", "Egress policies (in order)"], &rows, " | "));
    }
    out
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "<none>".into())
}

/// The plan as three tables: Egresses, pools, rules.
pub fn plan_tables(p: &Plan) -> String {
    let egresses: Vec<Vec<String>> = p
        .egresses
        .iter()
        .map(|e| {
            let conds = e
                .conditions
                .iter()
                .map(|c| {
                    if c.status == "True" {
                        format!("{}=True", c.type_)
                    } else {
                        format!("{}=False ({}: {})", c.type_, c.reason, c.message)
                    }
                })
                .collect::<Vec<_>>()
                .join(", ");
            let ips: Vec<String> = e.ips.iter().map(|i| i.ip.to_string()).collect();
            let nodes: Vec<&str> = e.ips.iter().map(|i| i.node.as_deref().unwrap_or("-")).collect();
            let (ips, nodes) = if ips.is_empty() { ("-".into(), "-".into()) } else { (ips.join(","), nodes.join(",")) };
            vec![e.name.clone(), ips, nodes, conds]
        })
        .collect();
    let pools: Vec<Vec<String>> =
        p.pools.iter().map(|x| vec![x.name.clone(), x.total.to_string(), x.used.to_string()]).collect();
    let rules: Vec<Vec<String>> = p
        .rules
        .iter()
        .map(|r| {
            vec![
                r.source_ip.to_string(),
                r.destination.to_string(),
                opt(r.egress_ip),
                r.gateway.as_deref().map(str::to_string).unwrap_or_else(|| "<none: dropped>".into()),
            ]
        })
        .collect();
    let mut out = String::new();
    out.push_str(&table::render(&["Egress", "Egress IP", "Node", "Conditions"], &egresses, " | "));
    out.push('\n');
    out.push_str(&table::render(&["Pool", "Total", "Used"], &pools, " | "));
    out.push('\n');
    if rules.is_empty() {
        out.push_str("no pod is steered\n");
    } else {
        out.push_str(&table::render(&["Source IP", "Destination CIDR", "Egress IP", "Gateway"], &rules, " | "));
    }
    let _ = writeln!(out, "\ncluster-internal (never steered): {}", join(&p.cluster_cidrs));
    out
}

fn join(nets: &[IpNet]) -> String {
    nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// `egret convert`.
pub fn convert(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let (objs, errs) = read_paths(files);
    if !errs.is_empty() {
        for e in &errs {
            eprintln!("{e}");
        }
        return Ok(ExitCode::from(1));
    }
    let mut out = String::new();
    for d in &objs.pools {
        let _ = write!(out, "---\n{}", serde_yaml_ng::to_string(&d.object)?);
    }
    for d in &objs.egresses {
        let _ = write!(out, "---\n{}", serde_yaml_ng::to_string(&d.object)?);
    }
    for d in &objs.cluster_policies {
        let _ = write!(out, "---\n{}", serde_yaml_ng::to_string(&d.object)?);
    }
    for d in &objs.policies {
        let _ = write!(out, "---\n{}", serde_yaml_ng::to_string(&d.object)?);
    }
    out!("{out}");
    for d in objs.policies.iter().filter(|d| d.origin.written_as.ends_with(" ServiceEntry")) {
        eprintln!("note: {}", service_entry_note(d));
    }
    for d in &objs.left_out {
        eprintln!("note: {}: {} left out: {}", d.origin.file.display(), d.origin.written_as, d.object);
    }
    let skipped = objs.nodes.len() + objs.namespaces.len() + objs.pods.len();
    if skipped > 0 {
        eprintln!(
            "note: {skipped} core/v1 object(s) (Nodes, Namespaces, Pods) are not egret.dev objects and were left out"
        );
    }
    if !objs.network_policies.is_empty() {
        eprintln!(
            "note: {} NetworkPolicy object(s) are not egret.dev objects and were left out (Egret's agents enforce them as they are with --enforce-network-policy)",
            objs.network_policies.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What a ServiceEntry became, and what it does not cover.
fn service_entry_note(d: &egret_store::Document<egret_api::v1alpha1::EgressPolicy>) -> String {
    let p = &d.object;
    let ns = p.metadata.namespace.as_deref().unwrap_or_default();
    let name = p.metadata.name.as_deref().unwrap_or_default();
    let (names, ports) = match p.spec.rules.first() {
        Some(r) => (
            r.to.as_ref().map(|t| t.fqdns.join(", ")).unwrap_or_default(),
            r.ports
                .iter()
                .map(|x| format!("{} {}", x.protocol.as_deref().unwrap_or("TCP"), x.port.unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        "{}: {} {name} became EgressPolicy {ns}/{name}: every pod of namespace {ns} may reach {names} on {ports}; what no rule allows outside the cluster is denied (defaultAction Deny); DNS to a resolver outside the cluster must be allowed separately",
        d.origin.file.display(),
        d.origin.written_as
    )
}
