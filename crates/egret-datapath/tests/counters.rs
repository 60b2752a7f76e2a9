//! Privileged: the named counters of Egret's table read over netlink, against what `nft` wrote
//! and reads back: every counter of a table with 1,000 of them, values up to 64 bits (which
//! nft's JSON does not carry), and no table read as no counters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use egret_datapath::{TABLE, read_counters};
use egret_netns::{Netns, unique_prefix};

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn every_counter_is_read_with_its_values() {
    egret_netns::require_privileged();
    let ns = Netns::create(&unique_prefix("counters")).unwrap();
    // A table without counters yet: an empty answer, not an error.
    ns.exec_stdin("nft", &["-f", "-"], &format!("table inet {TABLE} {{ }}")).unwrap();
    assert!(ns.run(read_counters).unwrap().unwrap().is_empty());
    let mut ruleset = format!("table inet {TABLE} {{\n");
    for i in 0..1000u64 {
        ruleset.push_str(&format!("  counter egress-{i:04} {{ packets {} bytes {} }}\n", i, i * 1500));
    }
    ruleset.push_str(&format!("  counter big {{ packets {} bytes {} }}\n}}\n", u64::MAX - 1, 1u64 << 40));
    ns.exec_stdin("nft", &["-f", "-"], &ruleset).unwrap();
    let got = ns.run(read_counters).unwrap().unwrap();
    assert_eq!(got.len(), 1001);
    for i in [0u64, 1, 499, 999] {
        let c = got[&format!("egress-{i:04}")];
        assert_eq!((c.packets, c.bytes), (i, i * 1500));
    }
    assert_eq!((got["big"].packets, got["big"].bytes), (u64::MAX - 1, 1 << 40));
    // The same as nft reads back (but for the value beyond what its JSON numbers carry).
    let listed = ns.exec("nft", &["-j", "list", "counters", "table", "inet", TABLE]).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let mut by_nft = egret_datapath::nft::parse_counters(&doc);
    by_nft.remove("big");
    let mut ours = got.clone();
    ours.remove("big");
    let differ: Vec<&String> = by_nft.keys().filter(|k| by_nft.get(*k) != ours.get(*k)).collect();
    assert!(by_nft.len() == 1000 && differ.is_empty(), "{} counters by nft; differ: {differ:?}", by_nft.len());
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn no_table_reads_as_no_counters() {
    egret_netns::require_privileged();
    let ns = Netns::create(&unique_prefix("counters-none")).unwrap();
    assert!(ns.run(read_counters).unwrap().unwrap().is_empty());
}
