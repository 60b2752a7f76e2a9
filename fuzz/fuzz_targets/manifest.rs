//! Any text as a manifest file: reading, validating and planning must never panic, whatever
//! the YAML, and every problem must come back as an error value.
#![no_main]

use egret_core::planner::ClusterConfig;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (objs, _errors) = egret_store::read_str(Path::new("fuzz.yaml"), text);
    let config = ClusterConfig { reserved: vec!["10.10.0.1".parse().expect("address")], ..ClusterConfig::default() };
    let v = objs.validate(&config);
    // What validated is planned with every node live, as `egret plan` does.
    let live: BTreeSet<String> = objs.model_nodes().into_iter().map(|n| n.name).collect();
    let (again, plan) = objs.plan(&live, &config);
    assert_eq!(v.problems, again.problems, "validation is deterministic");
    let _ = plan.node_plans();
});
