//! `egret trace NS/POD DEST[:PORT[/PROTO]]`: from the objects alone, what happens to one new
//! connection: the Egress, gateway and egress IP it leaves with, and the policy rule that
//! decides whether it may.

use crate::offline::ClusterArgs;
use anyhow::{Context, bail};
use egret_core::policy::{self, Flow, FlowProto, Protocol};
use egret_store::read_paths;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `egret trace`.
#[derive(clap::Args)]
pub struct TraceArgs {
    /// The pod, `namespace/name`.
    pod: String,
    /// The destination: `ADDRESS`, `ADDRESS:PORT` or `ADDRESS:PORT/PROTO` (TCP, UDP, SCTP; or
    /// `ADDRESS/ICMP`); IPv6 addresses in brackets with a port (`[2001:db8::1]:443`).
    destination: String,
    /// Files or directories of YAML manifests.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    files: Vec<PathBuf>,
    /// The live nodes (default: every Node in the manifests).
    #[arg(long, value_delimiter = ',')]
    nodes: Option<Vec<String>>,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Answer as an agent run with `--enforce-network-policy` would: NetworkPolicies govern pods.
    #[arg(long)]
    enforce_network_policy: bool,
    /// The pod learned the destination as this DNS name (an answer to its lookup): domain-name
    /// rules whose patterns match it hold the address. Without it, name rules hold nothing.
    #[arg(long)]
    name: Option<String>,
}

/// Parses `DEST[:PORT[/PROTO]]` (TCP when no protocol is given).
pub fn parse_destination(s: &str) -> anyhow::Result<Flow> {
    let (rest, proto) = match s.rsplit_once('/') {
        Some((r, p)) => (r, Some(p.to_ascii_uppercase())),
        None => (s, None),
    };
    let (addr, port) = if let Some(r) = rest.strip_prefix('[') {
        let (a, p) = r.split_once(']').with_context(|| format!("{s:?}: unclosed '['"))?;
        (a, p.strip_prefix(':'))
    } else if rest.matches(':').count() == 1 {
        let (a, p) = rest.split_once(':').unwrap_or((rest, ""));
        (a, Some(p))
    } else {
        (rest, None)
    };
    let dst: IpAddr = addr.parse().with_context(|| format!("{addr:?} is not an IP address"))?;
    let port: u16 = match port {
        Some(p) => p.parse().with_context(|| format!("{p:?} is not a port"))?,
        None => 0,
    };
    let proto = match proto.as_deref() {
        None | Some("TCP") => FlowProto::Named(Protocol::Tcp),
        Some("UDP") => FlowProto::Named(Protocol::Udp),
        Some("SCTP") => FlowProto::Named(Protocol::Sctp),
        Some("ICMP") => FlowProto::Named(Protocol::Icmp),
        Some(other) => match other.parse::<u8>() {
            Ok(n) => FlowProto::Other(n),
            Err(_) => bail!("{other:?} is not a protocol (TCP, UDP, SCTP, ICMP or a number)"),
        },
    };
    if matches!(proto, FlowProto::Named(p) if p.has_ports()) && port == 0 {
        bail!("{s:?}: give the destination port, e.g. {addr}:443");
    }
    Ok(Flow { dst, proto, port })
}

/// `egret trace`.
pub fn trace(args: &TraceArgs) -> anyhow::Result<ExitCode> {
    let flow = parse_destination(&args.destination)?;
    let Some((ns, name)) = args.pod.split_once('/') else { bail!("{:?}: name the pod as namespace/name", args.pod) };
    let (objs, errs) = read_paths(&args.files);
    if let Some(e) = errs.first() {
        bail!("{e}");
    }
    let config = args.cluster.config();
    let pods = objs.model_pods();
    let Some(pod) = pods.iter().find(|p| p.namespace == ns && p.name == name) else {
        bail!("no pod {ns}/{name} in the manifests");
    };
    let Some(src) = pod.ips.iter().find(|ip| ip.is_ipv4() == flow.dst.is_ipv4()).copied() else {
        bail!("pod {ns}/{name} has no address of the destination's family");
    };
    let nodes = objs.model_nodes();
    let live: BTreeSet<String> = match &args.nodes {
        Some(l) => l.iter().cloned().collect(),
        None => nodes.iter().map(|n| n.name.clone()).collect(),
    };
    let (_, plan) = objs.plan(&live, &config);
    outln!("pod:         {ns}/{name} ({src}) on {}", pod.node.as_deref().unwrap_or("<unscheduled>"));
    let internal = plan.cluster_cidrs.iter().any(|c| c.contains(&flow.dst));
    if internal {
        outln!("destination: {} is inside the cluster: neither steered nor governed by Egret", flow.dst);
        return Ok(ExitCode::SUCCESS);
    }
    let rule = plan.rules.iter().find(|r| r.source_ip == src && r.destination.contains(&flow.dst));
    match rule {
        Some(r) => match (&r.gateway, r.egress_ip) {
            (Some(gw), Some(ip)) => outln!("egress:      {} leaves as {ip} through {gw}", r.egress),
            _ => outln!("egress:      {} has no gateway now: the traffic is dropped", r.egress),
        },
        None => outln!("egress:      no Egress: leaves with its node's address (the CNI's path)"),
    }
    let policies = objs.validate_policies();
    let namespaces = objs.model_namespaces();
    let selecting = crate::offline::pod_policies(&policies.policies, &namespaces, &nodes, pod);
    let applying: Vec<&policy::Policy> =
        selecting.iter().copied().filter(|p| args.enforce_network_policy || !p.id.is_network_policy()).collect();
    let decision = match &args.name {
        Some(n) => policy::evaluate_learned(&applying, &flow, &policy::LearnedAs(n)),
        None => policy::evaluate(&applying, &flow),
    };
    let names: Vec<String> = applying.iter().map(|p| p.id.to_string()).collect();
    outln!("policies:    {}", if names.is_empty() { "none apply".to_string() } else { names.join(", ") });
    outln!("verdict:     {} by {}", decision.verdict, decision.by);
    if let policy::DecidedBy::Rule { policy: id, rule } = &decision.by
        && let Some(p) = applying.iter().find(|p| &p.id == id).and_then(|p| p.rules.iter().find(|r| &r.name == rule))
        && let Some(n) = &args.name
        && let Some(pattern) = p.fqdns.iter().find(|pat| pat.matches(n))
    {
        outln!(
            "name:        {} matches {pattern}: allowed while the answer's TTL lasts",
            args.name.as_deref().unwrap_or("")
        );
    }
    if args.name.is_none() && applying.iter().any(|p| p.rules.iter().any(|r| r.is_named())) {
        outln!("note:        domain-name rules apply to this pod; --name NAME answers for an address learned as NAME");
    }
    if !args.enforce_network_policy {
        for p in selecting.iter().filter(|p| p.id.is_network_policy()) {
            outln!("note:        {} selects this pod; agents enforce it only with --enforce-network-policy", p.id);
        }
    }
    for p in &policies.problems {
        outln!("warning:     {p} (left out)");
    }
    for p in &policies.warnings {
        outln!("warning:     {p}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse() {
        let f = parse_destination("203.0.113.5:443").unwrap();
        assert_eq!((f.port, f.proto), (443, FlowProto::Named(Protocol::Tcp)));
        assert_eq!(parse_destination("203.0.113.5:53/udp").unwrap().proto, FlowProto::Named(Protocol::Udp));
        assert_eq!(parse_destination("[2001:db8::1]:443").unwrap().dst, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(parse_destination("2001:db8::1/ICMP").unwrap().port, 0);
        assert_eq!(parse_destination("192.0.2.1/47").unwrap().proto, FlowProto::Other(47));
        assert!(parse_destination("203.0.113.5").is_err(), "TCP needs a port");
        assert!(parse_destination("203.0.113.5:99999").is_err());
        assert!(parse_destination("nope:1").is_err());
    }
}
