//! Builders shared by the benchmarks' generated worlds.

#![allow(dead_code, clippy::unwrap_used)] // each bench uses part of it; fixtures are trusted

use egret_core::model::Node;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

/// Labels from pairs.
pub fn labels(kv: &[(&str, String)]) -> BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// Node `i` of a generated cluster: every tenth is an egress gateway; its pod CIDR is
/// 10.(128 + i / 256).(i % 256).0/24.
pub fn node(i: usize) -> Node {
    let ip = IpAddr::V4(Ipv4Addr::new(10, 10 + (i / 65536) as u8, (i / 256 % 256) as u8, (i % 256) as u8));
    let mut l = labels(&[("kubernetes.io/hostname", format!("node-{i}"))]);
    if i.is_multiple_of(10) {
        l.insert("network-role".into(), "egress-gateway".into());
    }
    Node {
        name: format!("node-{i}"),
        labels: l,
        internal_ips: vec![ip],
        addresses: vec![ip],
        pod_cidrs: vec![format!("10.{}.{}.0/24", 128 + i / 256, i % 256).parse().unwrap()],
        interfaces: Default::default(),
    }
}

pub mod index_world;
