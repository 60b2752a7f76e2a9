//! What the controller writes back: Egress and pool status from a plan (pure; the clock is an
//! argument).

use crate::planner::{Condition, Plan};
use crate::validate::Problem;
use egret_api::v1alpha1::{
    EgressCondition, EgressGateway, EgressStatus, ExternalIPPoolStatus, IP_ALLOCATED, IP_ASSIGNED, IPPoolUsage,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Keeps a condition's `lastTransitionTime` while its status is unchanged.
fn carry(prev: Option<&EgressStatus>, mut c: EgressCondition, now: &str) -> EgressCondition {
    let before = prev.and_then(|p| p.conditions.iter().find(|o| o.type_ == c.type_));
    c.last_transition_time = match before {
        Some(o) if o.status == c.status => o.last_transition_time.clone(),
        _ => Some(now.to_string()),
    };
    c
}

fn api_cond(c: &Condition) -> EgressCondition {
    EgressCondition {
        type_: c.type_.to_string(),
        status: c.status.to_string(),
        reason: c.reason.to_string(),
        message: c.message.clone(),
        last_transition_time: None,
    }
}

/// Egress statuses for every Egress name in `all`: from the plan when valid, a `Invalid`
/// condition carrying the problems otherwise. `IPAssigned` is `True` only once the gateway's
/// agent reports hosting the IP (`hosted`: node -> IPs it reports); until then `Pending`.
pub fn egress_statuses(
    plan: &Plan,
    all: &[(String, Option<EgressStatus>)],
    problems: &[Problem],
    hosted: &BTreeMap<String, BTreeSet<IpAddr>>,
    now: &str,
) -> Vec<(String, EgressStatus)> {
    let outcomes: BTreeMap<&str, _> = plan.egresses.iter().map(|e| (e.name.as_str(), e)).collect();
    let mut out = Vec::new();
    for (name, prev) in all {
        let prev = prev.as_ref();
        let status = match outcomes.get(name.as_str()) {
            Some(o) => {
                let mut conditions: Vec<EgressCondition> = o.conditions.iter().map(api_cond).collect();
                // Agents place IPs from their own (gossip) view, which may be ahead of this
                // one: an IP's node is whichever live node reports holding it, preferring the
                // planned one. Per IP: (ip, node, confirmed).
                let per: Vec<(IpAddr, Option<String>, bool)> = o
                    .ips
                    .iter()
                    .map(|i| {
                        let holds = |n: &&String| hosted.get(*n).is_some_and(|s| s.contains(&i.ip));
                        let holder = i.node.iter().find(holds).or_else(|| hosted.keys().find(holds)).cloned();
                        let (confirmed, node) = match &i.node {
                            // Static IPs outside pools are the node's own: nothing for an agent to add.
                            Some(n) if !i.from_pool => (true, Some(n.clone())),
                            _ if holder.is_some() => (true, holder),
                            Some(n) => (false, Some(n.clone())),
                            None => (true, None),
                        };
                        (i.ip, node, confirmed)
                    })
                    .collect();
                let several = per.len() > 1;
                if let Some(c) = conditions.iter_mut().find(|c| c.type_ == IP_ASSIGNED) {
                    let all_hosted = !per.is_empty() && per.iter().all(|p| p.1.is_some());
                    if let Some((ip, node, _)) = per.iter().find(|p| !p.2) {
                        let what = if several { ip.to_string() } else { "the IP".into() };
                        c.status = "False".into();
                        c.reason = "Pending".into();
                        c.message = format!("waiting for node {} to host {what}", node.as_deref().unwrap_or(""));
                    } else if c.status == "False" && all_hosted && !several {
                        // The controller's view lags the agents': trust what the agents hold.
                        c.status = "True".into();
                        c.reason = "Assigned".into();
                        c.message = format!("hosted on node {}", per[0].1.as_deref().unwrap_or(""));
                    } else if (c.status == "True" || several) && all_hosted {
                        c.status = "True".into();
                        c.reason = "Assigned".into();
                        let each: Vec<String> = per
                            .iter()
                            .zip(&o.ips)
                            .map(|((ip, n, _), i)| {
                                let n = n.as_deref().unwrap_or("");
                                match (&i.interface, i.from_pool) {
                                    (_, true) => format!("{ip} is hosted on node {n}"),
                                    (Some(dev), false) => format!("{ip} is the address of interface {dev} of node {n}"),
                                    (None, false) => format!("{ip} is the address of node {n}"),
                                }
                            })
                            .collect();
                        c.message = each.join("; ");
                        if let Some(note) = o.sharing_note() {
                            c.message = format!("{}; {note}", c.message);
                        }
                    }
                }
                let shown = |p: &(IpAddr, Option<String>, bool)| if p.2 { p.1.clone() } else { None };
                EgressStatus {
                    egress_ip: per.first().map(|p| p.0.to_string()),
                    egress_node: per.first().and_then(shown),
                    gateways: if several {
                        per.iter()
                            .map(|p| EgressGateway { egress_ip: Some(p.0.to_string()), egress_node: shown(p) })
                            .collect()
                    } else {
                        Vec::new()
                    },
                    conditions: conditions.into_iter().map(|c| carry(prev, c, now)).collect(),
                }
            }
            None => {
                let msg: Vec<String> = problems
                    .iter()
                    .filter(|p| p.kind == "Egress" && &p.name == name)
                    .map(|p| format!("{}: {}", p.field, p.reason))
                    .collect();
                let invalid = |type_: &str| EgressCondition {
                    type_: type_.into(),
                    status: "False".into(),
                    reason: "Invalid".into(),
                    message: msg.join("; "),
                    last_transition_time: None,
                };
                EgressStatus {
                    // An allocation is kept while the object is invalid, so fixing it does not move the IP.
                    egress_ip: prev.and_then(|p| p.egress_ip.clone()),
                    egress_node: None,
                    gateways: prev
                        .map(|p| p.gateways.iter().map(|g| EgressGateway { egress_node: None, ..g.clone() }).collect())
                        .unwrap_or_default(),
                    conditions: vec![carry(prev, invalid(IP_ALLOCATED), now), carry(prev, invalid(IP_ASSIGNED), now)],
                }
            }
        };
        out.push((name.clone(), status));
    }
    out
}

/// Pool statuses: usage from the plan.
pub fn pool_statuses(plan: &Plan) -> Vec<(String, ExternalIPPoolStatus)> {
    plan.pools
        .iter()
        .map(|p| {
            let clamp = |v: u128| i64::try_from(v).unwrap_or(i64::MAX);
            (p.name.clone(), ExternalIPPoolStatus { usage: IPPoolUsage { total: clamp(p.total), used: clamp(p.used) } })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::{ClusterConfig, plan_objects};
    use crate::testutil::*;

    fn setup() -> (Plan, Vec<Problem>) {
        let (nodes, namespaces, pods) = lab();
        let mut bad = mk_egress("bad", Some("p"), None);
        bad.spec.failure_policy = Some("Leak".into());
        let live = nodes.iter().map(|n| n.name.clone()).collect();
        let (v, p) = plan_objects(
            &[mk_pool("p", &[("10.10.0.11", "10.10.0.20")], &[])],
            &[mk_egress("e", Some("p"), None), bad],
            &nodes,
            &namespaces,
            &pods,
            &live,
            &ClusterConfig::default(),
        );
        (p, v.problems)
    }

    #[test]
    fn assigned_only_once_the_agent_hosts_the_ip() {
        let (p, problems) = setup();
        let all = vec![("e".to_string(), None), ("bad".to_string(), None)];
        let st = egress_statuses(&p, &all, &problems, &BTreeMap::new(), "t1");
        let e = &st[0].1;
        assert_eq!(e.egress_ip.as_deref(), Some("10.10.0.11"));
        assert_eq!(e.egress_node, None);
        let assigned = e.conditions.iter().find(|c| c.type_ == IP_ASSIGNED).unwrap();
        assert_eq!((assigned.status.as_str(), assigned.reason.as_str()), ("False", "Pending"));
        let bad = &st[1].1;
        assert_eq!(bad.conditions[0].reason, "Invalid");
        assert!(bad.conditions[0].message.contains("spec.failurePolicy"));

        let gw = p.egresses.iter().find(|o| o.name == "e").unwrap().egress_node().map(String::from).unwrap();
        let hosted = BTreeMap::from([(gw.clone(), BTreeSet::from(["10.10.0.11".parse().unwrap()]))]);
        let st2 = egress_statuses(&p, &[("e".to_string(), Some(e.clone()))], &problems, &hosted, "t2");
        let e2 = &st2[0].1;
        assert_eq!(e2.egress_node.as_deref(), Some(gw.as_str()));
        let allocated = e2.conditions.iter().find(|c| c.type_ == IP_ALLOCATED).unwrap();
        assert_eq!(allocated.last_transition_time.as_deref(), Some("t1"), "unchanged status keeps its time");
        let assigned = e2.conditions.iter().find(|c| c.type_ == IP_ASSIGNED).unwrap();
        assert_eq!((assigned.status.as_str(), assigned.last_transition_time.as_deref()), ("True", Some("t2")));
    }

    #[test]
    fn the_node_is_whichever_live_node_holds_the_ip() {
        let (p, problems) = setup();
        let planned = p.egresses.iter().find(|o| o.name == "e").unwrap().egress_node().map(String::from).unwrap();
        let other = if planned == "node-5" { "node-6" } else { "node-5" };
        let hosted = BTreeMap::from([(other.to_string(), BTreeSet::from(["10.10.0.11".parse().unwrap()]))]);
        let st = egress_statuses(&p, &[("e".to_string(), None)], &problems, &hosted, "t");
        assert_eq!(st[0].1.egress_node.as_deref(), Some(other));
        let assigned = st[0].1.conditions.iter().find(|c| c.type_ == IP_ASSIGNED).unwrap();
        assert_eq!(assigned.status, "True");
        assert!(assigned.message.contains(other));
    }

    #[test]
    fn pool_usage() {
        let (p, _) = setup();
        assert_eq!(
            pool_statuses(&p),
            vec![("p".into(), ExternalIPPoolStatus { usage: IPPoolUsage { total: 10, used: 1 } })]
        );
    }
}
