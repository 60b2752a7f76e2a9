//! What the controller writes back: Egress and pool status from a plan (pure; the clock is an
//! argument).

use crate::planner::{Condition, Plan};
use crate::validate::Problem;
use egret_api::v1alpha1::{
    EgressCondition, EgressStatus, ExternalIPPoolStatus, IP_ALLOCATED, IP_ASSIGNED, IPPoolUsage,
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
                let confirmed = match (&o.egress_node, o.egress_ip) {
                    // Static IPs outside pools are the node's own: nothing for an agent to add.
                    (Some(_), Some(_)) if !o.from_pool => true,
                    (Some(n), Some(ip)) => hosted.get(n).is_some_and(|s| s.contains(&ip)),
                    _ => true,
                };
                if !confirmed && let Some(c) = conditions.iter_mut().find(|c| c.type_ == IP_ASSIGNED) {
                    c.status = "False".into();
                    c.reason = "Pending".into();
                    c.message = format!("waiting for node {} to host the IP", o.egress_node.as_deref().unwrap_or(""));
                }
                EgressStatus {
                    egress_ip: o.egress_ip.map(|i| i.to_string()),
                    egress_node: if confirmed { o.egress_node.clone() } else { None },
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
    use crate::ipam::allocate;
    use crate::planner::{ClusterConfig, Inputs, plan};
    use crate::testutil::*;
    use crate::validate::validate;

    fn setup() -> (Plan, Vec<Problem>) {
        let (nodes, namespaces, pods) = lab();
        let mut bad = mk_egress("bad", Some("p"), None);
        bad.spec.failure_policy = Some("Leak".into());
        let v =
            validate(&[mk_pool("p", &[("10.10.0.11", "10.10.0.20")], &[])], &[mk_egress("e", Some("p"), None), bad]);
        let a = allocate(&v.pools, &v.egresses);
        let live = nodes.iter().map(|n| n.name.clone()).collect();
        let p = plan(&Inputs {
            pools: &v.pools,
            egresses: &v.egresses,
            allocations: &a,
            nodes: &nodes,
            namespaces: &namespaces,
            pods: &pods,
            live: &live,
            config: &ClusterConfig::default(),
        });
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

        let gw = p.egresses.iter().find(|o| o.name == "e").unwrap().egress_node.clone().unwrap();
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
    fn pool_usage() {
        let (p, _) = setup();
        assert_eq!(
            pool_statuses(&p),
            vec![("p".into(), ExternalIPPoolStatus { usage: IPPoolUsage { total: 10, used: 1 } })]
        );
    }
}
