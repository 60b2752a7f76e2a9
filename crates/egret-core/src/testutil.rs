//! Small builders for tests (`mk_*`), after the linkerd policy-controller style.

use crate::model::{Namespace, Node, Pod};
use egret_api::v1alpha1 as api;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, Time};

pub fn labels(kv: &[(&str, &str)]) -> crate::selector::Labels {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub fn ts(secs: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
}

pub fn range(start: Option<&str>, end: Option<&str>, cidr: Option<&str>) -> api::IPRange {
    api::IPRange { cidr: cidr.map(String::from), start: start.map(String::from), end: end.map(String::from) }
}

pub fn mk_match(kv: &[(&str, &str)]) -> LabelSelector {
    LabelSelector { match_labels: Some(labels(kv)), match_expressions: None }
}

pub fn mk_expr(key: &str, op: &str, values: &[&str]) -> LabelSelector {
    LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: if values.is_empty() { None } else { Some(values.iter().map(|s| s.to_string()).collect()) },
        }]),
    }
}

pub fn mk_pool(name: &str, ranges: &[(&str, &str)], cidrs: &[&str]) -> api::ExternalIPPool {
    let mut ip_ranges: Vec<api::IPRange> = ranges.iter().map(|(s, e)| range(Some(s), Some(e), None)).collect();
    ip_ranges.extend(cidrs.iter().map(|c| range(None, None, Some(c))));
    api::ExternalIPPool::new(
        name,
        api::ExternalIPPoolSpec { ip_ranges, node_selector: LabelSelector::default(), subnet_info: None },
    )
}

/// An Egress selecting `app=web` pods in every namespace.
pub fn mk_egress(name: &str, pool: Option<&str>, ip: Option<&str>) -> api::Egress {
    api::Egress::new(
        name,
        api::EgressSpec {
            applied_to: api::AppliedTo { pod_selector: Some(mk_match(&[("app", "web")])), ..Default::default() },
            egress_ip: ip.map(String::from),
            external_ip_pool: pool.map(String::from),
            ..Default::default()
        },
    )
}

pub fn mk_node(name: &str, ip: &str, pod_cidr: &str, kv: &[(&str, &str)]) -> Node {
    let mut l = labels(kv);
    l.insert("kubernetes.io/hostname".into(), name.into());
    Node {
        name: name.into(),
        labels: l,
        internal_ips: vec![ip.parse().unwrap()],
        addresses: vec![ip.parse().unwrap()],
        pod_cidrs: vec![pod_cidr.parse().unwrap()],
        interfaces: Default::default(),
    }
}

pub fn mk_ns(name: &str, kv: &[(&str, &str)]) -> Namespace {
    let mut l = labels(kv);
    l.insert("kubernetes.io/metadata.name".into(), name.into());
    Namespace { name: name.into(), labels: l }
}

pub fn mk_pod(ns: &str, name: &str, kv: &[(&str, &str)], node: &str, ip: &str) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: labels(kv),
        node: Some(node.into()),
        ips: vec![ip.parse().unwrap()],
    }
}

/// The lab topology of the brief: six nodes, three namespaces, six pods.
pub fn lab() -> (Vec<Node>, Vec<Namespace>, Vec<Pod>) {
    let nodes = (1..=6)
        .map(|i| {
            let gw: &[(&str, &str)] = if i >= 4 { &[("network-role", "egress-gateway")] } else { &[] };
            mk_node(&format!("node-{i}"), &format!("10.10.0.{}", 100 + i), &format!("10.244.{i}.0/24"), gw)
        })
        .collect();
    let namespaces =
        vec![mk_ns("prod", &[("env", "prod")]), mk_ns("staging", &[("env", "staging")]), mk_ns("default", &[])];
    let pods = vec![
        mk_pod("prod", "web-1", &[("app", "web"), ("role", "web")], "node-1", "10.244.1.10"),
        mk_pod("prod", "web-2", &[("app", "web")], "node-2", "10.244.2.10"),
        mk_pod("prod", "payment-1", &[("app", "payment")], "node-3", "10.244.3.10"),
        mk_pod("staging", "web-1", &[("app", "web")], "node-2", "10.244.2.11"),
        mk_pod("default", "client-1", &[("app", "client")], "node-1", "10.244.1.11"),
        mk_pod("default", "malicious-1", &[("app", "malicious")], "node-3", "10.244.3.11"),
    ];
    (nodes, namespaces, pods)
}
