//! Latency of putting freshly answered addresses into an nftables timeout set: `SetWriter::add`
//! (netlink, one batch, returns on the kernel's acknowledgement) vs. spawning `nft -f -` as
//! Egret's datapath does for its transactions.
//!
//! `cargo run --release -p egret-datapath --example setelem_latency [-- SAMPLES]` (root and `nft`
//! needed; default 1,000 samples each). It makes its own namespace with table `inet egret` and
//! set `dns4` (`type ipv4_addr; flags timeout`), and measures, interleaved so that all three see
//! the same background load:
//!
//! - `SetWriter::add` of 1 address,
//! - `SetWriter::add` of 10 addresses (one call),
//! - `nft -f -` adding 1 address (spawn, write the command, wait for the exit),
//!
//! every sample a real change: fresh addresses each time, each with a 1 h timeout and a comment
//! (the answered name). The set is checked to hold all of them at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use egret_datapath::{Element, SetWriter, TABLE};
use egret_netns::{Netns, unique_prefix};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SET: &str = "dns4";
const COMMENT: &str = "bench.example.com";
const TIMEOUT: Duration = Duration::from_secs(3600);

/// Hands out addresses never used before in this run.
struct Fresh(u32);

impl Fresh {
    fn next(&mut self) -> IpAddr {
        self.0 += 1;
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + self.0))
    }
}

fn writer_add(w: &mut SetWriter, fresh: &mut Fresh, n: usize) -> Duration {
    let elems: Vec<Element> =
        (0..n).map(|_| Element { addr: fresh.next(), timeout: TIMEOUT, comment: Some(COMMENT.into()) }).collect();
    let t = Instant::now();
    w.add(TABLE, SET, &elems).unwrap();
    t.elapsed()
}

/// As the datapath's `run_nft`: spawn, command on standard input, wait for the output.
fn nft_add(fresh: &mut Fresh) -> Duration {
    let cmd = format!(
        "add element inet {TABLE} {SET} {{ {} timeout {}s comment \"{COMMENT}\" }}\n",
        fresh.next(),
        TIMEOUT.as_secs()
    );
    let t = Instant::now();
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(cmd.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let d = t.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    d
}

fn line(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let q = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1e3);
    println!(
        "| {name:<28} | {:>6} | {:>8} | {:>8} | {:>8} | {:>8} |",
        v.len(),
        ms(q(0.5)),
        ms(q(0.9)),
        ms(q(0.99)),
        ms(v[v.len() - 1])
    );
}

fn main() {
    if let Some(why) = egret_netns::skip_reason(&["ip", "nft"]) {
        eprintln!("cannot run: {why}");
        std::process::exit(2);
    }
    let samples: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let ns = Netns::create(&unique_prefix("bench-setelem")).unwrap();
    ns.exec_stdin(
        "nft",
        &["-f", "-"],
        &format!("table inet {TABLE} {{\n set {SET} {{ type ipv4_addr; flags timeout; }}\n}}\n"),
    )
    .unwrap();

    let (one, ten, nft, total) = ns
        .run(|| {
            let mut w = SetWriter::open().unwrap();
            let mut fresh = Fresh(0);
            // Warm-up: page cache for nft, first allocations of the set.
            for _ in 0..20 {
                writer_add(&mut w, &mut fresh, 10);
                nft_add(&mut fresh);
            }
            let (mut one, mut ten, mut nft) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..samples {
                one.push(writer_add(&mut w, &mut fresh, 1));
                ten.push(writer_add(&mut w, &mut fresh, 10));
                nft.push(nft_add(&mut fresh));
            }
            let total = egret_datapath::setwriter::read_set(&egret_datapath::Config::default(), TABLE, SET).unwrap();
            assert_eq!(total.len() as u32, fresh.0, "every sample added fresh addresses");
            (one, ten, nft, total.len())
        })
        .unwrap();

    println!("{samples} samples each, interleaved; {total} elements in the set at the end");
    println!("| {:<28} | {:>6} | {:>8} | {:>8} | {:>8} | {:>8} |", "", "n", "p50 ms", "p90 ms", "p99 ms", "max ms");
    println!("|{:-<30}|{:-<8}|{:-<10}|{:-<10}|{:-<10}|{:-<10}|", "", "", "", "", "", "");
    line("SetWriter::add, 1 address", one);
    line("SetWriter::add, 10 addresses", ten);
    line("nft -f -, 1 address", nft);
}
