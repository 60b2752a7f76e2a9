//! The index benchmark's world (shared with `examples/index_memory.rs`): 100,000 pods x 2,000
//! Egresses x 5,000 nodes divided by `div`. Every namespace holds pods of all five apps; three in
//! four Egresses select app a0..a2 in their own namespace, one in four selects one app in the
//! 200 namespaces of a tier, towards two /24s, overlapping the per-namespace ones.

#![allow(dead_code, clippy::unwrap_used)] // each user takes part of it; fixtures are trusted

use super::labels;
use egret_api::v1alpha1 as api;
use egret_core::model::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use std::net::{IpAddr, Ipv4Addr};

/// The world's sizes.
#[derive(Debug, Clone, Copy)]
pub struct World {
    pub pods: usize,
    pub egresses: usize,
    pub namespaces: usize,
    pub nodes: usize,
}

impl World {
    /// The full-scale world divided by `div`.
    pub fn divided(div: usize) -> World {
        World { pods: 100_000 / div, egresses: 2_000 / div, namespaces: 2_000 / div, nodes: 5_000 / div }
    }

    /// Pod `j`, of app `app`.
    pub fn pod(&self, j: usize, app: usize) -> Pod {
        let node = j % self.nodes;
        Pod {
            namespace: format!("ns-{}", j % self.namespaces),
            name: format!("pod-{j}"),
            labels: labels(&[("app", format!("a{app}"))]),
            node: Some(format!("node-{node}")),
            ips: vec![IpAddr::V4(Ipv4Addr::new(
                10,
                (128 + node / 256) as u8,
                (node % 256) as u8,
                (2 + j / self.nodes) as u8,
            ))],
        }
    }

    /// Pod `j` of the initial world (apps spread so that every namespace holds all five).
    pub fn initial_pod(&self, j: usize) -> Pod {
        self.pod(j, j / self.namespaces % 5)
    }

    /// Namespace `i`: labels `team=tI`, `tier=I mod 10`.
    pub fn namespace(&self, i: usize) -> Namespace {
        Namespace {
            name: format!("ns-{i}"),
            labels: labels(&[("team", format!("t{i}")), ("tier", format!("{}", i % 10))]),
        }
    }
}

fn sel(kv: &[(&str, String)]) -> LabelSelector {
    LabelSelector { match_labels: Some(labels(kv)), match_expressions: None }
}

fn apps_in(values: &[&str]) -> LabelSelector {
    LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "app".into(),
            operator: "In".into(),
            values: Some(values.iter().map(|s| s.to_string()).collect()),
        }]),
    }
}

/// Egress `k`: three in four select `apps` in their own namespace; one in four selects one
/// app in the 200 namespaces of a tier, towards two /24s, overlapping the per-namespace ones.
pub fn egress(k: usize, apps: &[&str]) -> api::Egress {
    let mut spec = api::EgressSpec { external_ip_pool: Some("pool".into()), ..Default::default() };
    if k.is_multiple_of(4) {
        spec.applied_to.namespace_selector = Some(sel(&[("tier", format!("{}", k % 10))]));
        spec.applied_to.pod_selector = Some(sel(&[("app", format!("a{}", k % 5))]));
        spec.destination_cidrs = vec![format!("203.0.{}.0/24", k % 256), "198.51.100.0/24".into()];
    } else {
        spec.applied_to.namespace_selector = Some(sel(&[("team", format!("t{k}"))]));
        spec.applied_to.pod_selector = Some(apps_in(apps));
    }
    api::Egress::new(&format!("eg-{k}"), spec)
}

/// The one pool, a /16, hosted by the gateway nodes.
pub fn pool() -> api::ExternalIPPool {
    api::ExternalIPPool::new(
        "pool",
        api::ExternalIPPoolSpec {
            ip_ranges: vec![api::IPRange { cidr: Some("172.16.0.0/16".into()), ..Default::default() }],
            node_selector: sel(&[("network-role", "egress-gateway".into())]),
            subnet_info: None,
        },
    )
}
