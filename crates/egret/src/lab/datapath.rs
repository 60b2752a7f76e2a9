//! `egret get datapath --node NODE` (lab): what a node's kernel holds, read back from Egret's
//! nft table in the node's namespace (never from the plan), in the API's terms: pod -> Egress ->
//! path (out here, or through the tunnel to a gateway node) and the SNAT bindings of a gateway
//! with their egress IPs, the tunnel peers; then the drift of that table from the plan the
//! store gives the node now (with the live set the agents report), flagged line by line.

use super::state::LabState;
use anyhow::Context;
use egret_datapath::view::{self, KernelView, Path};
use egret_netns::Netns;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;

/// The names the lab gives addresses: pods and nodes (pure).
pub struct Names {
    /// Pods by address (both families).
    pub pods: BTreeMap<IpAddr, String>,
    /// Nodes by underlay address.
    pub nodes: BTreeMap<Ipv4Addr, String>,
}

/// The text `get datapath` prints for `view` (pure).
pub fn render(node: &str, view: &KernelView, names: &Names, drift: Option<&[String]>) -> String {
    let pod = |ip: &IpAddr| names.pods.get(ip).cloned().unwrap_or_else(|| "-".into());
    let peer = |ip: &Option<Ipv4Addr>, id: u16| match ip {
        Some(ip) => format!("tunnel to {} ({ip}, id {id})", names.nodes.get(ip).map_or("?", String::as_str)),
        None => format!("tunnel id {id} (no peer with that id!)"),
    };
    let mut rows: Vec<Vec<String>> = Vec::new();
    for s in &view.steering {
        let path = match &s.path {
            Path::Local => "out through this node".to_string(),
            Path::Tunnel(ip, id) => peer(ip, *id),
            Path::Drop => "dropped (fails closed)".into(),
            Path::Other(v) => v.clone(),
        };
        rows.push(vec![
            pod(&s.source),
            s.source.to_string(),
            s.destination.clone(),
            s.egress.clone().unwrap_or("-".into()),
            path,
        ]);
    }
    let mut out = format!("{node}: read from its kernel (table inet egret)\n\nSteering of this node's pods:\n");
    if view.steering.is_empty() {
        out.push_str("  none\n");
    } else {
        out.push_str(&crate::table::render(&["POD", "ADDRESS", "DESTINATION", "EGRESS", "PATH"], &rows, "   "));
    }
    out.push_str("\nSNAT on the way out (this node is their gateway):\n");
    if view.snat.is_empty() {
        out.push_str("  none\n");
    } else {
        let rows: Vec<Vec<String>> = view
            .snat
            .iter()
            .map(|s| vec![pod(&s.source), s.source.to_string(), s.destination.clone(), s.egress_ip.to_string()])
            .collect();
        out.push_str(&crate::table::render(&["POD", "ADDRESS", "DESTINATION", "EGRESS IP"], &rows, "   "));
        let hosted: BTreeSet<IpAddr> = view.snat.iter().map(|s| s.egress_ip).collect();
        let hosted: Vec<String> = hosted.iter().map(ToString::to_string).collect();
        out.push_str(&format!("Egress IPs it SNATs to: {}\n", hosted.join(", ")));
    }
    out.push_str("\nTunnel peers:\n");
    if view.peers.is_empty() {
        out.push_str("  none\n");
    }
    for (ip, id) in &view.peers {
        out.push_str(&format!("  {} {ip} (id {id})\n", names.nodes.get(ip).map_or("?", String::as_str)));
    }
    match drift {
        None => out.push_str("\nDrift: unknown (the store gives this node no plan)\n"),
        Some([]) => out.push_str("\nDrift against the plan: none\n"),
        Some(lines) => {
            out.push_str(&format!("\nDRIFT against the plan ({} differences):\n", lines.len()));
            for l in lines {
                out.push_str(&format!("  ! {l}\n"));
            }
        }
    }
    out
}

/// `egret get datapath --node NODE` in lab `lab`; exit 1 when the kernel drifted from the plan.
pub fn get(lab: &str, node: Option<&str>) -> anyhow::Result<ExitCode> {
    super::need_root()?;
    let node = node.context("--node is required: whose kernel to read")?;
    let st = LabState::load(lab)?;
    let n = st.nodes.get(node).with_context(|| format!("lab {lab:?} has no node {node:?}"))?;
    // The lab's agents run with the default datapath settings on eth0.
    let cfg = egret_datapath::Config { underlay: "eth0".into(), ..egret_datapath::Config::default() };
    let ns = Netns::attach(&n.netns)?;
    let Some(have) = ns.run(|| egret_datapath::read_table(&cfg))?? else {
        println!("{node}: its kernel holds no Egret table (is its agent running?)");
        return Ok(ExitCode::FAILURE);
    };
    let names = Names {
        pods: st
            .pods
            .iter()
            .flat_map(|(k, p)| [(p.ip.into(), k.clone()), (egret_netns::pod_ip6(p.ip).into(), k.clone())])
            .collect(),
        nodes: st.nodes.values().map(|n| (n.ip, n.name.clone())).collect(),
    };
    // The plan as the node's agent computes it: the store's objects, with the nodes the agents
    // report able to host as the live set.
    let mut objects = crate::objects::Objects::store(egret_store::Store::open(st.store())?, super::lab_config());
    objects.index.enforce_network_policies();
    objects.poll()?;
    let live: BTreeSet<String> = super::reports(&st)
        .into_iter()
        .filter(|(name, r)| r.ready && r.may_host && !st.killed.contains(name))
        .map(|(name, _)| name)
        .collect();
    objects.index.set_live(&live);
    let drift = match objects.index.node_plan(node) {
        Some(plan) => {
            let exits = ns.run(|| egret_datapath::resolve_exits(&cfg, &plan))??;
            Some(view::drift(&cfg, &plan, &exits, &have)?)
        }
        None => None,
    };
    print!("{}", render(node, &view::read(&have), &names, drift.as_deref()));
    Ok(if drift.as_ref().is_some_and(|d| !d.is_empty()) { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

#[cfg(test)]
mod tests {
    use super::*;
    use egret_datapath::view::{Snat, Steering};

    #[test]
    fn the_view_names_pods_gateways_and_flags_drift() {
        let v = KernelView {
            steering: vec![
                Steering {
                    source: Ipv4Addr::new(10, 244, 1, 10).into(),
                    destination: "203.0.113.0/24".into(),
                    egress: Some("egress-prod-web".into()),
                    path: Path::Tunnel(Some(Ipv4Addr::new(10, 10, 0, 102)), 1),
                },
                Steering {
                    source: Ipv4Addr::new(10, 244, 1, 11).into(),
                    destination: "0.0.0.0/0".into(),
                    egress: Some("closed".into()),
                    path: Path::Drop,
                },
            ],
            snat: vec![Snat {
                source: Ipv4Addr::new(10, 244, 2, 10).into(),
                destination: "0.0.0.0/0".into(),
                egress_ip: Ipv4Addr::new(10, 10, 0, 11).into(),
            }],
            peers: vec![(Ipv4Addr::new(10, 10, 0, 102), 1)],
        };
        let names = Names {
            pods: BTreeMap::from([(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 10)), "prod/web-1".to_string())]),
            nodes: BTreeMap::from([(Ipv4Addr::new(10, 10, 0, 102), "node-2".to_string())]),
        };
        let text = render("node-1", &v, &names, Some(&["nft: map steer4 element x missing".to_string()]));
        assert!(text.contains("prod/web-1"), "{text}");
        assert!(text.contains("tunnel to node-2 (10.10.0.102, id 1)"), "{text}");
        assert!(text.contains("dropped (fails closed)"), "{text}");
        assert!(text.contains("Egress IPs it SNATs to: 10.10.0.11"), "{text}");
        assert!(
            text.contains("DRIFT against the plan (1 differences)") && text.contains("! nft: map steer4"),
            "{text}"
        );
        let clean = render("node-1", &v, &names, Some(&[]));
        assert!(clean.contains("Drift against the plan: none"), "{clean}");
    }
}
