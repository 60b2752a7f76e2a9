//! Writes the seed corpus of the `gossip_open` fuzz target: valid sealed datagrams (with the
//! target's fixed key and clock), plus the edge cases around them.
//!
//! `cargo run -p egret-gossip --example fuzz_seeds -- fuzz/seeds/gossip_open`

use egret_gossip::GossipKey;
use egret_gossip::envelope::{Envelope, Kind, VERSION};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::path::PathBuf;
use std::time::Duration;

/// Must match `fuzz/fuzz_targets/gossip_open.rs`.
const KEY: [u8; 32] = [7; 32];
const NOW_MS: u64 = 1_750_000_000_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/seeds/gossip_open".into()));
    std::fs::create_dir_all(&dir)?;
    let env = Envelope::new(&GossipKey::from_bytes(KEY), Duration::from_secs(10), 1400);
    let mut rng = StdRng::seed_from_u64(1);
    let bodies: [(&str, Kind, &[u8]); 4] = [
        ("foca-empty", Kind::Foca, b""),
        ("foca-small", Kind::Foca, b"\x00\x01\x02\x03swim"),
        ("hosted", Kind::Hosted, b"\x06node-4\x01\x02\x01\x00\x04\x0a\x0a\x00\x0b"),
        ("hosted-long", Kind::Hosted, &[0x55; 300]),
    ];
    for (name, kind, body) in bodies {
        std::fs::write(dir.join(format!("sealed-{name}")), env.seal(kind, body, NOW_MS, &mut rng)?)?;
    }
    // Stale (one hour old) and unencrypted datagrams, and a bare header.
    std::fs::write(dir.join("sealed-stale"), env.seal(Kind::Foca, b"old", NOW_MS - 3_600_000, &mut rng)?)?;
    std::fs::write(dir.join("plain-foca"), b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f\x20\x21\x22\x23\x24\x25\x26\x27\x28")?;
    let mut header = vec![VERSION];
    header.extend_from_slice(&[0; 12 + 16 + 9]);
    std::fs::write(dir.join("header-only"), header)?;
    println!("seeds written to {}", dir.display());
    Ok(())
}
