//! Any bytes as a datagram read from the audit log's NFLOG socket: parsing the netlink
//! messages, the logged packets' headers and naming them must never panic.
#![no_main]

use egret_datapath::audit::{AuditIndex, parse_datagram};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let idx = AuditIndex::default();
    for logged in parse_datagram(data) {
        let _ = idx.record(&logged, String::new(), |_, _, _| None);
    }
});
