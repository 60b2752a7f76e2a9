//! The tokio shell on real UDP sockets, all on 127.0.0.1 in one process: join, hosted IPs, detect
//! a stopped member, re-admit it restarted, graceful leave, and rejection of a stray datagram.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure is a test failure

use egret_gossip::{Gossip, GossipConfig, GossipHandle, GossipKey, GossipKeys, MemberStatus, Seed, Tuning, View};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const KEY: [u8; 32] = [0x42; 32];

fn start(name: &str, addr: SocketAddr, seeds: &[(String, SocketAddr)]) -> (GossipHandle, watch::Receiver<View>) {
    let seeds = seeds.iter().map(|(name, addr)| Seed { name: name.clone(), addr: *addr }).collect();
    Gossip::start(GossipConfig::new(name, addr, seeds, GossipKey::from_bytes(KEY))).unwrap()
}

/// Polls until `pred` holds for every receiver; returns how long it took, or panics at `limit`.
async fn wait_all(
    what: &str,
    rxs: &[&watch::Receiver<View>],
    limit: Duration,
    pred: impl Fn(&View) -> bool,
) -> Duration {
    let t0 = Instant::now();
    loop {
        if rxs.iter().all(|rx| pred(&rx.borrow())) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "{what}: not within {limit:?}: {:#?}",
            rxs.iter().map(|r| r.borrow().clone()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn all_alive(view: &View, names: &[&str]) -> bool {
    names.iter().all(|n| view.status(n) == Some(MemberStatus::Alive))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_cluster_joins_detects_readmits_and_leaves() {
    let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
    // Port 0: the kernel picks; later members seed with the earlier ones' real addresses.
    let mut seeds: Vec<(String, SocketAddr)> = Vec::new();
    let mut handles = Vec::new();
    let mut rxs = Vec::new();
    for i in 1..=4 {
        let name = format!("node-{i}");
        let (h, rx) = start(&name, local(0), &seeds);
        seeds.push((name, h.local_addr()));
        handles.push(Some(h));
        rxs.push(rx);
    }
    let names = ["node-1", "node-2", "node-3", "node-4"];
    let joined =
        wait_all("join", &rxs.iter().collect::<Vec<_>>(), Duration::from_secs(3), |v| all_alive(v, &names)).await;
    eprintln!("4 members joined in {joined:?}");

    // Hosted IPs reach everyone.
    let ip: IpAddr = "192.0.2.7".parse().unwrap();
    handles[1].as_ref().unwrap().set_hosted(vec![ip]).await.unwrap();
    wait_all("hosted", &rxs.iter().collect::<Vec<_>>(), Duration::from_secs(2), |v| {
        v.member("node-2").is_some_and(|m| m.hosted == vec![ip])
    })
    .await;

    // A stray datagram without the key is rejected and counted, and changes nothing.
    let stray = std::net::UdpSocket::bind(local(0)).unwrap();
    stray.send_to(b"\xe1 definitely not a sealed gossip datagram......", seeds[0].1).unwrap();
    let h1 = handles[0].as_ref().unwrap();
    let t0 = Instant::now();
    while h1.counters().rejected_auth == 0 {
        assert!(t0.elapsed() < Duration::from_secs(2), "stray datagram not counted: {:?}", h1.counters());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    // Stop node-3 abruptly: the others see it Dead within the bound (plus scheduling slack).
    let old = handles[2].as_ref().unwrap().identity();
    handles[2].take().unwrap().shutdown().await;
    let survivors: Vec<&watch::Receiver<View>> = [0, 1, 3].iter().map(|&i| &rxs[i]).collect();
    let bound = Tuning::default().detection_bound(4);
    let took =
        wait_all("detect", &survivors, Duration::from_secs(5), |v| v.status("node-3") == Some(MemberStatus::Dead))
            .await;
    eprintln!("stopped member seen Dead by all survivors after {took:?} (bound {bound:?} + timer lateness)");
    // Slack for a loaded two-core CI machine; the protocol bound itself is checked in the simulation.
    assert!(took <= bound + Duration::from_millis(500), "took {took:?}");

    // Restart it on the same address: it is re-admitted under a newer identity.
    let (h3, rx3) = start("node-3", old.addr, &seeds);
    assert!(h3.identity().bump > old.bump);
    handles[2] = Some(h3);
    rxs[2] = rx3;
    let readmitted = wait_all("readmit", &rxs.iter().collect::<Vec<_>>(), Duration::from_secs(3), |v| {
        all_alive(v, &names) && v.member("node-3").is_some_and(|m| m.bump > old.bump)
    })
    .await;
    eprintln!("restarted member re-admitted in {readmitted:?}");
    // It learned node-2's hosted IPs as a newcomer.
    wait_all("hosted to newcomer", &[&rxs[2]], Duration::from_secs(2), |v| {
        v.member("node-2").is_some_and(|m| m.hosted == vec![ip])
    })
    .await;

    // node-4 leaves gracefully: the others know at once, without waiting for probes to fail.
    handles[3].take().unwrap().leave().await.unwrap();
    let left = wait_all("leave", &[&rxs[0], &rxs[1], &rxs[2]], Duration::from_secs(2), |v| {
        v.status("node-4") == Some(MemberStatus::Dead)
    })
    .await;
    eprintln!("graceful leave seen by all in {left:?}");
    assert!(left < Duration::from_millis(500), "{left:?}");

    for h in handles.iter().flatten() {
        let c = h.counters();
        assert!(c.datagrams_in > 0 && c.datagrams_out > 0 && c.accepted > 0, "{c:?}");
        assert_eq!(c.send_errors, 0, "{c:?}");
    }
    let c1 = handles[0].as_ref().unwrap().counters();
    assert!(c1.accepted > 20 && c1.datagrams_out > 20, "node-1 ran all along: {c1:?}");
    assert_eq!((c1.rejected(), c1.rejected_auth), (1, 1), "only the stray datagram: {c1:?}");
    for h in handles.into_iter().flatten() {
        h.shutdown().await;
    }
}

#[tokio::test]
async fn start_rejects_an_unspecified_address_and_a_taken_port() {
    let key = GossipKey::from_bytes(KEY);
    let any = SocketAddr::from(([0, 0, 0, 0], 0));
    let err = Gossip::start(GossipConfig::new("n", any, vec![], key.clone())).err().unwrap();
    assert!(err.to_string().contains("unspecified"), "{err}");
    let (h, _rx) =
        Gossip::start(GossipConfig::new("a", SocketAddr::from(([127, 0, 0, 1], 0)), vec![], key.clone())).unwrap();
    let err = Gossip::start(GossipConfig::new("b", h.local_addr(), vec![], key)).err().unwrap();
    assert!(err.to_string().contains("cannot bind"), "{err}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_keeps_members_talking() {
    let local = SocketAddr::from(([127, 0, 0, 1], 0));
    let (old, new) = (GossipKey::from_bytes(KEY), GossipKey::from_bytes([0x43; 32]));
    let keys = |primary: &GossipKey, secondary: Option<&GossipKey>| GossipKeys {
        primary: primary.clone(),
        secondary: secondary.cloned(),
    };
    // Mid-rotation: node-a already seals with the new key, node-b still with the old one; each
    // opens with both.
    let (a, rx_a) = Gossip::start(GossipConfig::new("node-a", local, vec![], keys(&new, Some(&old)))).unwrap();
    let seeds = vec![Seed { name: "node-a".into(), addr: a.local_addr() }];
    let (b, rx_b) = Gossip::start(GossipConfig::new("node-b", local, seeds.clone(), keys(&old, Some(&new)))).unwrap();
    let both = ["node-a", "node-b"];
    wait_all("join across a rotation", &[&rx_a, &rx_b], Duration::from_secs(3), |v| all_alive(v, &both)).await;
    let ip: IpAddr = "192.0.2.9".parse().unwrap();
    b.announce(vec![ip], true).await.unwrap();
    wait_all("record across a rotation", &[&rx_a], Duration::from_secs(2), |v| {
        v.member("node-b").is_some_and(|m| m.hosted == vec![ip] && m.eligible)
    })
    .await;
    assert_eq!(a.counters().rejected(), 0, "{:?}", a.counters());
    assert_eq!(b.counters().rejected(), 0, "{:?}", b.counters());
    // A member holding only the new key hears node-a (which seals with it) but not node-b.
    let (c, rx_c) = Gossip::start(GossipConfig::new("node-c", local, seeds, keys(&new, None))).unwrap();
    wait_all("new key only", &[&rx_c], Duration::from_secs(3), |v| v.status("node-a") == Some(MemberStatus::Alive))
        .await;
    let t0 = Instant::now();
    while c.counters().rejected_auth == 0 {
        assert!(t0.elapsed() < Duration::from_secs(3), "node-b's old-key datagrams not rejected: {:?}", c.counters());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for h in [a, b, c] {
        h.shutdown().await;
    }
}
