//! `egret get` against a local store or a cluster (`--kubeconfig`); `egret apply`, `egret
//! delete` against a local store.

use crate::table;
use anyhow::{Context, bail};
use egret_store::{Objects, Store, StoreError, read_paths};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Output formats of `get`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum GetOutput {
    /// `kubectl get` columns.
    Table,
    /// A `List` of objects as JSON.
    Json,
    /// A `List` of objects as YAML.
    Yaml,
}

/// What to get.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Resource {
    /// Egresses.
    #[value(alias = "egresses", alias = "eg")]
    Egress,
    /// ExternalIPPools.
    #[value(alias = "externalippool", alias = "eip")]
    Externalippools,
    /// Gossip members as one agent sees them.
    #[value(alias = "member")]
    Members,
    /// What a lab node's kernel holds, read back, with its drift from the plan (`--node`).
    Datapath,
}

/// kubectl's age format: `45s`, `12m`, `5h`, `3d`.
pub fn age(created: Option<&Time>) -> String {
    let Some(t) = created else { return "<unknown>".into() };
    let secs = (k8s_openapi::jiff::Timestamp::now().as_second() - t.0.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct List<T> {
    api_version: &'static str,
    kind: &'static str,
    items: Vec<T>,
}

fn print_list<T: Serialize>(items: Vec<T>, out: GetOutput) -> anyhow::Result<()> {
    let list = List { api_version: "v1", kind: "List", items };
    match out {
        GetOutput::Json => outln!("{}", serde_json::to_string_pretty(&list)?),
        _ => out!("{}", serde_yaml_ng::to_string(&list)?),
    }
    Ok(())
}

fn load(store: &Path) -> anyhow::Result<Objects> {
    if !store.is_dir() {
        bail!("no store at {} (is the lab up? `egret lab up`)", store.display());
    }
    let (objs, errs) = Store::open(store)?.load();
    for e in &errs {
        eprintln!("warning: {e}");
    }
    Ok(objs)
}

/// `egret get members`: the membership as the agent of `node` reports it (default: the first
/// node with a fresh report).
pub fn members(store: &Path, node: Option<&str>, out: GetOutput) -> anyhow::Result<ExitCode> {
    if !store.is_dir() {
        bail!("no store at {} (is the lab up? `egret lab up`)", store.display());
    }
    let reports: Vec<(String, egret_store::AgentReport)> = Store::open(store)?.read_reports();
    let now = egret_store::now_ms();
    let fresh = |r: &egret_store::AgentReport| now.saturating_sub(r.heartbeat_ms) < 5_000;
    let (name, report) = match node {
        Some(n) => reports.iter().find(|(m, _)| m == n).with_context(|| format!("no report from node {n:?}"))?,
        None => reports.iter().find(|(_, r)| fresh(r)).context("no agent has reported recently")?,
    };
    if !fresh(report) {
        eprintln!(
            "warning: {name}'s last report is {} s old (is its agent running?)",
            now.saturating_sub(report.heartbeat_ms) / 1000
        );
    }
    if report.members.is_empty() {
        bail!("{name} reports no gossip members (agent running without --gossip-key-file?)");
    }
    match out {
        GetOutput::Table => {
            let rows: Vec<Vec<String>> =
                report.members.iter().map(|m| vec![m.name.clone(), m.ip.to_string(), m.status.clone()]).collect();
            out!("{}", table::render(&["NODE", "IP", "STATUS"], &rows, "   "));
            eprintln!("(as seen by {name})");
        }
        o => {
            #[derive(Serialize)]
            struct Member<'a> {
                node: &'a str,
                ip: std::net::IpAddr,
                status: &'a str,
                #[serde(rename = "seenBy")]
                seen_by: &'a str,
            }
            let items: Vec<Member> = report
                .members
                .iter()
                .map(|m| Member { node: &m.name, ip: m.ip, status: &m.status, seen_by: name })
                .collect();
            print_list(items, o)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `egret get egress|externalippools` from a store.
pub fn get(what: Resource, store: &Path, out: GetOutput) -> anyhow::Result<ExitCode> {
    if let Resource::Members = what {
        return members(store, None, out);
    }
    let objs = load(store)?;
    let egresses = objs.egresses.into_iter().map(|d| d.object).collect();
    let pools = objs.pools.into_iter().map(|d| d.object).collect();
    show(what, egresses, pools, out)
}

/// `egret get egress|externalippools` from the cluster of `kubeconfig`.
pub fn get_from_cluster(what: Resource, kubeconfig: &Path, out: GetOutput) -> anyhow::Result<ExitCode> {
    use egret_api::v1alpha1::{Egress, ExternalIPPool};
    if let Resource::Members = what {
        bail!(
            "members are what the agents see by gossip: on a cluster, read egret_gossip_members on an agent's /metrics"
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (egresses, pools) = rt.block_on(async {
        let client = egret_kube::client(Some(kubeconfig)).await?;
        let lp = kube::api::ListParams::default();
        let (egresses, pools) = match what {
            Resource::Egress => {
                (kube::Api::<Egress>::all(client).list(&lp).await.context("listing Egresses")?.items, vec![])
            }
            _ => (
                vec![],
                kube::Api::<ExternalIPPool>::all(client).list(&lp).await.context("listing ExternalIPPools")?.items,
            ),
        };
        anyhow::Ok((egresses, pools))
    })?;
    show(what, egresses, pools, out)
}

fn show(
    what: Resource,
    egresses: Vec<egret_api::v1alpha1::Egress>,
    pools: Vec<egret_api::v1alpha1::ExternalIPPool>,
    out: GetOutput,
) -> anyhow::Result<ExitCode> {
    match (what, out) {
        (Resource::Egress, GetOutput::Table) => {
            let rows: Vec<Vec<String>> = egresses
                .iter()
                .map(|e| {
                    let st = e.status.as_ref();
                    // Several IPs: every one, comma-separated, nodes in the same order.
                    let (ips, nodes) = match st.map(|s| s.gateways.as_slice()) {
                        Some(g) if !g.is_empty() => (
                            g.iter().map(|g| g.egress_ip.as_deref().unwrap_or("-")).collect::<Vec<_>>().join(","),
                            g.iter().map(|g| g.egress_node.as_deref().unwrap_or("-")).collect::<Vec<_>>().join(","),
                        ),
                        _ => (
                            st.and_then(|s| s.egress_ip.clone()).unwrap_or_default(),
                            st.and_then(|s| s.egress_node.clone()).unwrap_or_default(),
                        ),
                    };
                    vec![
                        e.metadata.name.clone().unwrap_or_default(),
                        ips,
                        nodes,
                        age(e.metadata.creation_timestamp.as_ref()),
                    ]
                })
                .collect();
            if rows.is_empty() {
                eprintln!("No resources found.");
            } else {
                crate::emit(&table::render(&["NAME", "EGRESSIP", "NODE", "AGE"], &rows, "   "));
            }
        }
        (Resource::Externalippools, GetOutput::Table) => {
            let rows: Vec<Vec<String>> = pools
                .iter()
                .map(|p| {
                    let u = p.status.as_ref().map(|s| s.usage).unwrap_or_default();
                    vec![
                        p.metadata.name.clone().unwrap_or_default(),
                        u.total.to_string(),
                        u.used.to_string(),
                        age(p.metadata.creation_timestamp.as_ref()),
                    ]
                })
                .collect();
            if rows.is_empty() {
                eprintln!("No resources found.");
            } else {
                crate::emit(&table::render(&["NAME", "TOTAL", "USED", "AGE"], &rows, "   "));
            }
        }
        (Resource::Egress, o) => print_list(egresses, o)?,
        (Resource::Externalippools, o) => print_list(pools, o)?,
        (Resource::Members, _) => {}
        (Resource::Datapath, _) => bail!("`get datapath` reads a lab node's kernel: run it without --kubeconfig"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Loads manifests for `apply`/`delete`; every problem is printed.
fn manifests(files: &[PathBuf]) -> anyhow::Result<Option<Objects>> {
    let (objs, errs) = read_paths(files);
    if errs.is_empty() {
        for d in &objs.left_out {
            eprintln!("note: {}: {} left out: {}", d.origin.file.display(), d.origin.written_as, d.object);
        }
        return Ok(Some(objs));
    }
    for e in &errs {
        eprintln!("{e}");
    }
    Ok(None)
}

/// `apply -f` into a store: all or nothing.
pub fn apply(files: &[PathBuf], store: &Path) -> anyhow::Result<ExitCode> {
    let Some(objs) = manifests(files)? else { return Ok(ExitCode::from(1)) };
    let applied = objs.clone();
    let s = Store::open(store).with_context(|| format!("opening store {}", store.display()))?;
    match s.apply(objs) {
        Ok(applied) => {
            let changes = applied.changes;
            for (k, created) in &changes {
                outln!("{k} {}", if *created { "created" } else { "configured" });
            }
            if changes.is_empty() {
                outln!("unchanged");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(StoreError::Invalid(problems)) => {
            for p in &problems {
                // Problems of stored objects that the change breaks name the store.
                let file = applied
                    .origin_by_name(&p.kind, &p.name)
                    .map(|o| o.file.display().to_string())
                    .unwrap_or_else(|| store.display().to_string());
                eprintln!("{file}: {p}");
            }
            eprintln!("error: rejected, nothing applied");
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

/// `delete -f` from a store.
pub fn delete(files: &[PathBuf], store: &Path) -> anyhow::Result<ExitCode> {
    let Some(objs) = manifests(files)? else { return Ok(ExitCode::from(1)) };
    let s = Store::open(store)?;
    let gone = s.delete(&objs)?;
    for k in &gone {
        outln!("{k} deleted");
    }
    if gone.is_empty() {
        eprintln!("nothing to delete");
    }
    Ok(ExitCode::SUCCESS)
}
