//! Any bytes as a DNS message the proxy reads: as a pod's query, as the resolver's answer to a
//! fixed query, and the learning step for the answer's addresses under a rule matching the
//! name. None of it may panic, whatever the message holds (compression loops, truncated
//! records, hundreds of addresses, long CNAME chains).
#![no_main]

use egret_core::policy::FqdnPattern;
use egret_dns::answer::{Query, answer, query};
use egret_dns::learn::{Learned, Limits, NameRuleSets};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

/// The query the seeds in fuzz/seeds/dns_message answer (ID 0x2a2a, `api.github.test` A).
const QUERY: (u16, &str) = (0x2a2a, "api.github.test");

static RULES: LazyLock<Vec<Arc<NameRuleSets>>> = LazyLock::new(|| {
    let rule = |name: &str, patterns: &[&str]| {
        Arc::new(NameRuleSets {
            policy: "EgressPolicy fuzz/p".into(),
            rule: name.into(),
            patterns: patterns.iter().filter_map(|p| FqdnPattern::parse(p).ok()).collect(),
            set4: format!("fq4_{name}"),
            set6: format!("fq6_{name}"),
        })
    };
    vec![rule("exact", &["api.github.test"]), rule("below", &["**.github.test", "*.test"]), rule("other", &["x.test"])]
});

fuzz_target!(|data: &[u8]| {
    let _ = query(data);
    let q = Query { id: QUERY.0, name: QUERY.1.into(), qtype: hickory_proto::rr::RecordType::A };
    let Ok(a) = answer(&q, data) else { return };
    let rules = Learned::matching(&RULES, &q.name);
    // A small per-name limit, so an answer with many addresses also evicts.
    let limits = Limits { max_ips_per_name: 50, ..Limits::default() };
    let mut learned = Learned::default();
    let now = Instant::now();
    let p = learned.learn(&rules, &q.name, &a.addresses, &limits, now);
    for e in &p.add {
        let _ = learned.name_of(&e.set, e.addr, now);
    }
    // The same answer again later: refreshes, then everything expires.
    let later = now + Duration::from_secs(3);
    let _ = learned.learn(&rules, &q.name, &a.addresses, &limits, later);
    learned.prune(later + Duration::from_secs(u64::from(u32::MAX) + 60));
});
