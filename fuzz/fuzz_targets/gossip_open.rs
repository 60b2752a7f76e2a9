//! Any bytes as a received gossip datagram: opening must never panic, accept only what the
//! key sealed, and refuse a replay; any body must survive a seal/open round trip, and any
//! changed byte of a sealed datagram must be refused.
#![no_main]

use egret_gossip::GossipKey;
use egret_gossip::envelope::{Envelope, Kind, Reject};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::time::Duration;

/// The key and clock the seed generator (`crates/egret-gossip/examples/fuzz_seeds.rs`) uses.
const KEY: [u8; 32] = [7; 32];
const NOW_MS: u64 = 1_750_000_000_000;
const MAX_DATAGRAM: usize = 1400;

fn envelope() -> Envelope {
    Envelope::new(&GossipKey::from_bytes(KEY), Duration::from_secs(10), MAX_DATAGRAM)
}

fuzz_target!(|data: &[u8]| {
    let mut env = envelope();
    if env.open(data, NOW_MS).is_ok() {
        assert_eq!(env.open(data, NOW_MS), Err(Reject::Replay));
    }
    // The input as a body.
    if data.len() + egret_gossip::envelope::OVERHEAD > MAX_DATAGRAM {
        return;
    }
    let mut rng = StdRng::seed_from_u64(data.len() as u64);
    let kind = if data.first().is_some_and(|b| b % 2 == 1) { Kind::Hosted } else { Kind::Foca };
    let Ok(sealed) = env.seal(kind, data, NOW_MS, &mut rng) else { panic!("sealing a small body failed") };
    let mut receiver = envelope();
    let mut tampered = sealed.clone();
    let at = data.iter().map(|&b| usize::from(b)).sum::<usize>() % tampered.len();
    tampered[at] ^= 0x01;
    assert!(receiver.open(&tampered, NOW_MS).is_err(), "a changed byte must be refused");
    assert_eq!(receiver.open(&sealed, NOW_MS), Ok((kind, data.to_vec())));
});
