//! Deterministic simulation of a gossip cluster: the sans-I/O cores exchange datagrams through an
//! in-memory network with a simulated clock, controllable latency, loss and partitions. No
//! sockets; every run with the same seed is identical.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure is a test failure

use egret_gossip::envelope::{Envelope, Kind};
use egret_gossip::{
    Counters, Effects, GossipConfig, GossipCore, GossipKey, MemberStatus, NodeId, Seed, Timer, Tuning, View,
};
use foca::Codec;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Unix time at which every simulation starts (the envelope needs a wall clock).
const EPOCH_MS: u64 = 1_700_000_000_000;
const KEY: [u8; 32] = [0x5a; 32];
/// One-way latency is drawn from this range (ms).
const LATENCY_MS: (u64, u64) = (1, 2);

enum Event {
    Deliver { to: usize, data: Vec<u8> },
    Timer { node: usize, generation: u64, timer: Timer },
}

struct Node {
    core: Option<GossipCore>,
    generation: u64,
}

struct Sim {
    now: u64,
    seq: u64,
    events: BTreeMap<(u64, u64), Event>,
    nodes: Vec<Node>,
    by_addr: HashMap<SocketAddr, usize>,
    rng: StdRng,
    seed: u64,
    loss: f64,
    blocked: HashSet<(usize, usize)>,
    tuning: Tuning,
    /// Datagrams delivered to each node, kept when `tapping` (for replay attacks).
    tapping: bool,
    tap: Vec<(usize, Vec<u8>)>,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 17_000 + u16::try_from(i).unwrap()))
}

fn name(i: usize) -> String {
    format!("node-{}", i + 1)
}

impl Sim {
    fn new(n: usize, seed: u64, tuning: Tuning) -> Self {
        let nodes = (0..n).map(|_| Node { core: None, generation: 0 }).collect();
        Self {
            now: 0,
            seq: 0,
            events: BTreeMap::new(),
            nodes,
            by_addr: (0..n).map(|i| (addr(i), i)).collect(),
            rng: StdRng::seed_from_u64(seed),
            seed,
            loss: 0.0,
            blocked: HashSet::new(),
            tuning,
            tapping: false,
            tap: Vec::new(),
        }
    }

    /// A started cluster of `n` members, each seeded with all the others, run until everyone sees
    /// everyone Alive.
    fn cluster(n: usize, seed: u64) -> Self {
        Self::cluster_with(n, seed, Tuning::default())
    }

    fn cluster_with(n: usize, seed: u64, tuning: Tuning) -> Self {
        let mut sim = Self::new(n, seed, tuning);
        for i in 0..n {
            sim.start(i);
        }
        let joined = sim.run_until(5_000, |s| s.all_see_all_alive());
        assert!(joined.is_some(), "cluster of {n} did not converge");
        sim
    }

    fn wall(&self) -> u64 {
        EPOCH_MS + self.now
    }

    fn config(&self, i: usize) -> GossipConfig {
        let seeds = (0..self.nodes.len()).map(|j| Seed { name: name(j), addr: addr(j) }).collect();
        GossipConfig {
            tuning: self.tuning.clone(),
            ..GossipConfig::new(&name(i), addr(i), seeds, GossipKey::from_bytes(KEY))
        }
    }

    /// Starts (or restarts) node `i` as a new process: a new core, a bump from the clock, and
    /// every timer of its previous life discarded.
    fn start(&mut self, i: usize) {
        let cfg = self.config(i);
        let bump = self.wall();
        let rng = StdRng::seed_from_u64(self.seed ^ ((i as u64) << 32) ^ bump);
        let mut core = GossipCore::new(&cfg, bump, rng).unwrap();
        let fx = core.start(self.wall());
        let node = &mut self.nodes[i];
        node.generation += 1;
        node.core = Some(core);
        self.apply(i, fx);
    }

    /// Power loss: the node stops answering and its timers stop.
    fn kill(&mut self, i: usize) {
        self.nodes[i].core = None;
        self.nodes[i].generation += 1;
    }

    fn core(&self, i: usize) -> &GossipCore {
        self.nodes[i].core.as_ref().unwrap()
    }

    fn view(&self, i: usize) -> &View {
        self.core(i).view()
    }

    fn counters(&self, i: usize) -> Counters {
        self.core(i).counters()
    }

    fn status(&self, observer: usize, of: usize) -> Option<MemberStatus> {
        self.view(observer).status(&name(of))
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].core.is_some()).collect()
    }

    fn all_see_all_alive(&self) -> bool {
        let alive = self.alive();
        alive.iter().all(|&o| alive.iter().all(|&m| self.status(o, m) == Some(MemberStatus::Alive)))
    }

    fn partition(&mut self, a: &[usize], b: &[usize]) {
        for &x in a {
            for &y in b {
                self.blocked.insert((x, y));
                self.blocked.insert((y, x));
            }
        }
    }

    fn heal(&mut self) {
        self.blocked.clear();
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.events.insert((at, self.seq), event);
    }

    fn apply(&mut self, from: usize, fx: Effects) {
        for (to_addr, data) in fx.datagrams {
            let Some(&to) = self.by_addr.get(&to_addr) else { continue };
            if self.blocked.contains(&(from, to)) || (self.loss > 0.0 && self.rng.random_bool(self.loss)) {
                continue;
            }
            let at = self.now + self.rng.random_range(LATENCY_MS.0..=LATENCY_MS.1);
            self.schedule(at, Event::Deliver { to, data });
        }
        let generation = self.nodes[from].generation;
        for (after, timer) in fx.timers {
            let at = self.now + u64::try_from(after.as_millis()).unwrap();
            self.schedule(at, Event::Timer { node: from, generation, timer });
        }
    }

    /// Hands `data` to node `to` now, as if it came from the network.
    fn inject(&mut self, to: usize, data: &[u8]) {
        let wall = self.wall();
        let fx = self.nodes[to].core.as_mut().unwrap().handle_datagram(wall, data);
        self.apply(to, fx);
    }

    /// Runs events up to `deadline` ms (absolute) and stops early, returning the time, when
    /// `done` holds after an event.
    fn run_until(&mut self, deadline: u64, mut done: impl FnMut(&Self) -> bool) -> Option<u64> {
        if done(self) {
            return Some(self.now);
        }
        while let Some(entry) = self.events.first_entry() {
            if entry.key().0 > deadline {
                break;
            }
            let ((at, _), event) = entry.remove_entry();
            self.now = at;
            let wall = self.wall();
            match event {
                Event::Deliver { to, data } => {
                    if self.tapping {
                        self.tap.push((to, data.clone()));
                    }
                    if let Some(core) = self.nodes[to].core.as_mut() {
                        let fx = core.handle_datagram(wall, &data);
                        self.apply(to, fx);
                    }
                }
                Event::Timer { node, generation, timer } => {
                    if self.nodes[node].generation == generation
                        && let Some(core) = self.nodes[node].core.as_mut()
                    {
                        let fx = core.handle_timer(wall, timer);
                        self.apply(node, fx);
                    }
                }
            }
            if done(self) {
                return Some(self.now);
            }
        }
        self.now = self.now.max(deadline);
        None
    }

    fn run_for(&mut self, ms: u64) {
        let deadline = self.now + ms;
        self.run_until(deadline, |_| false);
    }

    fn set_hosted(&mut self, i: usize, ips: &[&str]) {
        let ips: Vec<IpAddr> = ips.iter().map(|s| s.parse().unwrap()).collect();
        let wall = self.wall();
        let fx = self.nodes[i].core.as_mut().unwrap().set_hosted(wall, ips).unwrap();
        self.apply(i, fx);
    }

    fn hosted_seen(&self, observer: usize, of: usize) -> Vec<IpAddr> {
        self.view(observer).member(&name(of)).map(|m| m.hosted.clone()).unwrap_or_default()
    }

    /// Kills `victim` and returns how long until every survivor sees it Dead (ms), or None if
    /// that did not happen within `limit` ms.
    fn time_to_detect(&mut self, victim: usize, limit: u64) -> Option<u64> {
        self.kill(victim);
        let t0 = self.now;
        let survivors = self.alive();
        self.run_until(t0 + limit, |s| survivors.iter().all(|&o| s.status(o, victim) == Some(MemberStatus::Dead)))
            .map(|t| t - t0)
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap()
}

#[test]
fn all_members_see_each_other_alive_after_joining_and_stay_so() {
    let mut sim = Sim::new(6, 1, Tuning::default());
    for i in 0..6 {
        sim.start(i);
    }
    let t = sim.run_until(5_000, |s| s.all_see_all_alive()).expect("cluster converges");
    assert!(t < 500, "joined in {t} ms");
    // No false suspicion on a clean network over a long stretch: nobody is ever seen other
    // than Alive, and nobody had to renew its identity.
    let bumps: Vec<u64> = (0..6).map(|i| sim.core(i).identity().bump).collect();
    let deadline = sim.now + 30_000;
    let broke = sim.run_until(deadline, |s| !s.all_see_all_alive());
    assert_eq!(broke, None, "someone was seen not Alive at {broke:?}");
    assert_eq!(bumps, (0..6).map(|i| sim.core(i).identity().bump).collect::<Vec<_>>());
    for i in 0..6 {
        let c = sim.counters(i);
        assert_eq!((c.rejected(), c.invalid_content), (0, 0), "node {i}: {c:?}");
        assert!(sim.view(i).joined);
        assert_eq!(sim.view(i).members.len(), 6);
    }
}

#[test]
fn a_dead_member_is_seen_dead_by_all_within_the_bound() {
    let mut sim = Sim::cluster(6, 2);
    sim.run_for(1_000);
    let bound = ms(sim.tuning.detection_bound(6));
    let took = sim.time_to_detect(3, 5_000).expect("detected");
    assert!(took <= bound, "took {took} ms, bound {bound} ms");
    // And it stays Dead while it is gone (no one resurrects it).
    sim.run_for(3_000);
    for o in sim.alive() {
        assert_eq!(sim.status(o, 3), Some(MemberStatus::Dead));
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// Many trials with different seeds, kill times and victims: the worst case stays within the
/// derived bound, and the distribution is printed (run with `--nocapture`).
fn detection_distribution(loss: f64, trials: u64) -> Vec<u64> {
    detection_distribution_with(&Tuning::default(), loss, trials)
}

fn detection_distribution_with(tuning: &Tuning, loss: f64, trials: u64) -> Vec<u64> {
    let mut times = Vec::new();
    for trial in 0..trials {
        let mut sim = Sim::cluster_with(6, 1000 + trial, tuning.clone());
        sim.loss = loss;
        let mut rng = StdRng::seed_from_u64(trial);
        // Kill at a random phase relative to the probe cycles.
        sim.run_for(500 + rng.random_range(0..1000));
        let victim = rng.random_range(0..6);
        let bound = ms(sim.tuning.detection_bound(6));
        let took = sim.time_to_detect(victim, 5_000).expect("detected");
        assert!(took <= bound + 2 * LATENCY_MS.1, "trial {trial}: took {took} ms, bound {bound} ms");
        times.push(took);
    }
    times.sort_unstable();
    eprintln!(
        "detection time until all survivors see the member Dead (6 members, loss {:.0}%, {} trials): \
         p50 {} ms, p90 {} ms, p99 {} ms, max {} ms, bound {} ms",
        loss * 100.0,
        trials,
        percentile(&times, 0.5),
        percentile(&times, 0.9),
        percentile(&times, 0.99),
        times[times.len() - 1],
        ms(tuning.detection_bound(6)),
    );
    times
}

/// Not a check: prints the detection distribution for a few tunings, to choose the defaults.
/// `cargo test -p egret-gossip --release --test sim tuning_sweep -- --ignored --nocapture`
#[test]
#[ignore]
fn tuning_sweep() {
    for (period, rtt, suspect) in [(100, 40, 200), (100, 40, 150), (80, 30, 160), (60, 25, 150), (50, 20, 150)] {
        let tuning = Tuning {
            probe_period: Duration::from_millis(period),
            probe_rtt: Duration::from_millis(rtt),
            suspect_to_down: Duration::from_millis(suspect),
            ..Tuning::default()
        };
        eprintln!("probe_period {period} ms, probe_rtt {rtt} ms, suspect_to_down {suspect} ms:");
        detection_distribution_with(&tuning, 0.0, 300);
    }
}

#[test]
fn detection_time_distribution() {
    let times = detection_distribution(0.0, 200);
    // SWIM's floor is one probe period to fail the probe plus the suspicion time.
    let floor = ms(Tuning::default().probe_period + Tuning::default().suspect_to_down);
    assert!(times[0] >= floor, "faster than the protocol allows: {} ms", times[0]);
}

#[test]
fn detection_under_packet_loss_stays_within_the_bound_without_false_deaths() {
    detection_distribution(0.02, 50);
    // 2% loss for 30 s: nobody alive is ever declared Dead.
    let mut sim = Sim::cluster(6, 77);
    sim.loss = 0.02;
    let deadline = sim.now + 30_000;
    let dead = sim.run_until(deadline, |s| {
        s.alive().iter().any(|&o| s.view(o).members.iter().any(|m| m.status == MemberStatus::Dead))
    });
    assert_eq!(dead, None, "a live member was declared Dead");
}

#[test]
fn a_restarted_member_is_readmitted() {
    let mut sim = Sim::cluster(6, 3);
    sim.run_for(500);
    let old_bump = sim.core(2).identity().bump;
    sim.time_to_detect(2, 5_000).expect("detected");
    sim.run_for(2_000);
    sim.start(2);
    let new_bump = sim.core(2).identity().bump;
    assert!(new_bump > old_bump);
    let t0 = sim.now;
    let t = sim.run_until(t0 + 5_000, |s| s.all_see_all_alive()).expect("re-admitted");
    assert!(t - t0 < 500, "re-admitted after {} ms", t - t0);
    for o in 0..6 {
        assert_eq!(sim.view(o).member("node-3").unwrap().bump, new_bump);
    }
}

#[test]
fn a_quickly_restarted_member_replaces_its_old_identity_without_being_declared_dead() {
    // An agent restart: the process is gone for 30 ms, far less than detection takes.
    let mut sim = Sim::cluster(6, 4);
    sim.run_for(500);
    sim.kill(4);
    sim.run_for(30);
    sim.start(4);
    let new_bump = sim.core(4).identity().bump;
    let t0 = sim.now;
    let t = sim
        .run_until(t0 + 5_000, |s| {
            s.all_see_all_alive() && (0..6).all(|o| s.view(o).member("node-5").unwrap().bump == new_bump)
        })
        .expect("new identity adopted");
    assert!(t - t0 < 300, "{} ms", t - t0);
}

#[test]
fn a_member_falsely_declared_dead_rejoins_by_itself() {
    // Node 2 is cut off from everyone (its links go down) long enough to be declared Dead,
    // then comes back without restarting: it must renew its identity and be Alive again.
    let mut sim = Sim::cluster(6, 5);
    sim.run_for(500);
    let others: Vec<usize> = (0..6).filter(|&i| i != 1).collect();
    sim.partition(&[1], &others);
    let deadline = sim.now + 5_000;
    sim.run_until(deadline, |s| others.iter().all(|&o| s.status(o, 1) == Some(MemberStatus::Dead)))
        .expect("isolated member declared dead");
    sim.run_for(2_000);
    assert!(!sim.view(1).joined, "the isolated member sees no live peer");
    let bump = sim.core(1).identity().bump;
    sim.heal();
    let t0 = sim.now;
    let t = sim.run_until(t0 + 10_000, |s| s.all_see_all_alive()).expect("rejoined");
    assert!(sim.core(1).identity().bump > bump, "it renewed its identity");
    // Re-announce interval plus a few round trips.
    assert!(t - t0 <= ms(sim.tuning.rejoin_interval) * 2 + 100, "rejoined after {} ms", t - t0);
}

#[test]
fn views_converge_after_a_partition_heals() {
    let mut sim = Sim::cluster(6, 6);
    sim.run_for(500);
    let (a, b) = ([0, 1, 2], [3, 4, 5]);
    sim.partition(&a, &b);
    let deadline = sim.now + 5_000;
    sim.run_until(deadline, |s| {
        a.iter().all(|&x| {
            b.iter().all(|&y| s.status(x, y) == Some(MemberStatus::Dead) && s.status(y, x) == Some(MemberStatus::Dead))
        })
    })
    .expect("both sides see the other side Dead");
    // Each side stays healthy internally, and changes its hosted IPs meanwhile.
    sim.run_for(2_000);
    for &x in &a {
        for &y in &a {
            assert_eq!(sim.status(x, y), Some(MemberStatus::Alive));
        }
    }
    sim.set_hosted(0, &["192.0.2.10"]);
    sim.set_hosted(3, &["192.0.2.10", "2001:db8::10"]);
    sim.run_for(500);
    assert!(sim.hosted_seen(4, 0).is_empty(), "the other side cannot know yet");
    sim.heal();
    let t0 = sim.now;
    let t = sim
        .run_until(t0 + 10_000, |s| {
            s.all_see_all_alive() && (0..6).all(|o| s.hosted_seen(o, 0).len() == 1 && s.hosted_seen(o, 3).len() == 2)
        })
        .expect("views converge");
    eprintln!("partition healed: views and hosted IPs converged after {} ms", t - t0);
    assert!(t - t0 <= 3_000, "{} ms", t - t0);
    // Every member now sees the same conflict.
    for o in 0..6 {
        let conflicts = sim.view(o).conflicts();
        assert_eq!(conflicts.len(), 1, "observer {o}: {conflicts:?}");
        assert_eq!(conflicts[0].0, "192.0.2.10".parse::<IpAddr>().unwrap());
        assert_eq!(conflicts[0].1, vec!["node-1".to_string(), "node-4".to_string()]);
    }
}

#[test]
fn hosted_ips_propagate_to_all_and_to_late_joiners() {
    let mut sim = Sim::new(7, 7, Tuning::default());
    for i in 0..6 {
        sim.start(i);
    }
    sim.run_until(5_000, |s| s.all_see_all_alive()).unwrap();
    sim.set_hosted(2, &["10.0.0.5", "10.0.0.4", "10.0.0.5"]);
    let t0 = sim.now;
    let want: Vec<IpAddr> = vec!["10.0.0.4".parse().unwrap(), "10.0.0.5".parse().unwrap()];
    let t = sim.run_until(t0 + 2_000, |s| (0..6).all(|o| s.hosted_seen(o, 2) == want)).expect("propagated");
    assert!(t - t0 <= 2 * LATENCY_MS.1, "direct push took {} ms", t - t0);
    sim.set_hosted(2, &[]);
    sim.set_hosted(5, &["10.0.0.4"]);
    let t0 = sim.now;
    sim.run_until(t0 + 2_000, |s| (0..6).all(|o| s.hosted_seen(o, 2).is_empty() && s.hosted_seen(o, 5).len() == 1))
        .expect("changes propagate");
    // A member that joins later learns every record, and everyone learns its.
    sim.start(6);
    sim.set_hosted(6, &["10.0.0.7"]);
    let t0 = sim.now;
    let t = sim
        .run_until(t0 + 5_000, |s| {
            s.all_see_all_alive()
                && s.hosted_seen(6, 5).len() == 1
                && s.hosted_seen(6, 2).is_empty()
                && (0..6).all(|o| s.hosted_seen(o, 6).len() == 1)
        })
        .expect("late joiner converges");
    assert!(t - t0 < 500, "{} ms", t - t0);
    // Records survive loss too: with 30% loss the periodic refresh still gets a change through.
    sim.loss = 0.3;
    sim.set_hosted(0, &["10.0.0.1"]);
    let t0 = sim.now;
    sim.run_until(t0 + 10_000, |s| (1..7).all(|o| s.hosted_seen(o, 0).len() == 1)).expect("propagated despite loss");
}

/// A foca packet from an outsider, addressed to `dst`, claiming `victim` is Down.
fn forged_down_packet(dst: &NodeId, victim: &NodeId) -> Vec<u8> {
    let mut codec = foca::PostcardCodec;
    let mut buf = Vec::new();
    let header = foca::Header {
        src: NodeId::new("intruder", SocketAddr::from(([127, 0, 0, 1], 9)), 1),
        src_incarnation: 0,
        dst: dst.clone(),
        message: foca::Message::Gossip,
    };
    codec.encode_header(&header, &mut buf).unwrap();
    buf.extend_from_slice(&1u16.to_be_bytes());
    codec.encode_member(&foca::Member::new(victim.clone(), 0, foca::State::Down), &mut buf).unwrap();
    buf
}

#[test]
fn forged_unencrypted_and_replayed_datagrams_are_rejected_and_cannot_kill_a_live_member() {
    let mut sim = Sim::cluster(6, 8);
    sim.run_for(500);
    let victim_id = sim.core(1).identity().clone();
    let wrong = Envelope::new(&GossipKey::from_bytes([0x77; 32]), Duration::from_secs(10), 1400);
    let right = Envelope::new(&GossipKey::from_bytes(KEY), Duration::from_secs(10), 1400);
    let mut attacker = StdRng::seed_from_u64(99);

    // Capture genuine traffic to replay later.
    sim.tapping = true;
    sim.run_for(1_000);
    sim.tapping = false;
    let captured = std::mem::take(&mut sim.tap);
    assert!(captured.len() >= 40, "{}", captured.len());

    let before: Vec<Counters> = (0..6).map(|i| sim.counters(i)).collect();
    let rounds = 100;
    for _ in 0..rounds {
        for target in [0, 2, 3, 4, 5] {
            let dst = sim.core(target).identity().clone();
            let plain = forged_down_packet(&dst, &victim_id);
            let wall = sim.wall();
            // 1. Random bytes of random length.
            let len = attacker.random_range(0..300);
            let mut noise = vec![0u8; len];
            attacker.fill(&mut noise[..]);
            if noise.first() == Some(&egret_gossip::envelope::VERSION) {
                noise[0] = 0;
            }
            sim.inject(target, &noise);
            // 2. The forged claim, unencrypted.
            sim.inject(target, &plain);
            // 3. The forged claim, properly sealed but with another key.
            let sealed = wrong.seal(Kind::Foca, &plain, wall, &mut attacker).unwrap();
            sim.inject(target, &sealed);
            // 4. Random bytes behind a valid version byte.
            let mut fake = vec![egret_gossip::envelope::VERSION];
            fake.extend((0..100).map(|_| attacker.random::<u8>()));
            sim.inject(target, &fake);
        }
        sim.run_for(10);
        for o in [0, 2, 3, 4, 5] {
            assert_eq!(sim.status(o, 1), Some(MemberStatus::Alive), "forgery made node-2 look dead to {o}");
        }
    }
    // 5. Replays: genuine datagrams again, within the window (duplicates) and after it (stale).
    for (to, data) in captured.iter().take(20) {
        sim.inject(*to, data);
    }
    sim.run_for(11_000);
    for (to, data) in captured.iter().skip(20).take(20) {
        sim.inject(*to, data);
    }
    sim.run_for(100);
    assert!(sim.all_see_all_alive());
    assert_eq!(sim.core(1).identity().bump, victim_id.bump, "the victim never had to rejoin");

    let mut total = Counters::default();
    for (i, then) in before.iter().enumerate() {
        let now = sim.counters(i);
        total.rejected_malformed += now.rejected_malformed - then.rejected_malformed;
        total.rejected_unencrypted += now.rejected_unencrypted - then.rejected_unencrypted;
        total.rejected_auth += now.rejected_auth - then.rejected_auth;
        total.rejected_stale += now.rejected_stale - then.rejected_stale;
        total.rejected_replay += now.rejected_replay - then.rejected_replay;
        total.invalid_content += now.invalid_content - then.invalid_content;
    }
    let injected = rounds * 5;
    // Noise shorter than an envelope is malformed, longer is "unencrypted" (no version byte).
    assert_eq!(total.rejected_malformed + total.rejected_unencrypted, 2 * injected, "{total:?}");
    assert!(total.rejected_unencrypted >= injected, "{total:?}");
    assert_eq!(total.rejected_auth, 2 * injected, "{total:?}");
    assert_eq!(total.rejected_replay, 20, "{total:?}");
    assert_eq!(total.rejected_stale, 20, "{total:?}");
    assert_eq!(total.invalid_content, 0, "nothing forged reached foca: {total:?}");

    // Control: the same forged claim sealed with the right key does make node-2 Dead for its
    // receiver, so the checks above guard against something real. (Node-2 then renews its
    // identity and rejoins: a key holder is trusted.)
    let dst = sim.core(0).identity().clone();
    let wall = sim.wall();
    let sealed = right.seal(Kind::Foca, &forged_down_packet(&dst, &victim_id), wall, &mut attacker).unwrap();
    sim.inject(0, &sealed);
    assert_eq!(sim.status(0, 1), Some(MemberStatus::Dead));
    let t0 = sim.now;
    sim.run_until(t0 + 5_000, |s| s.all_see_all_alive() && s.core(1).identity().bump > victim_id.bump)
        .expect("victim rejoins after a false Down");
}

fn many_ips(base: u32, n: u32) -> Vec<IpAddr> {
    (0..n).map(|i| IpAddr::from(std::net::Ipv4Addr::from(base + i))).collect()
}

#[test]
fn a_conflict_on_one_of_a_thousand_hosted_ips_is_detected() {
    let mut sim = Sim::cluster(6, 21);
    sim.run_for(500);
    // node-1 hosts 1,000 IPs: far more than one datagram carries.
    let thousand = many_ips(0x0a64_0000, 1000);
    let wall = sim.wall();
    let fx = sim.nodes[0].core.as_mut().unwrap().set_hosted(wall, thousand.clone()).unwrap();
    sim.apply(0, fx);
    let t0 = sim.now;
    sim.run_until(t0 + 5_000, |s| (1..6).all(|o| s.hosted_seen(o, 0) == thousand))
        .expect("every member learns all 1,000 IPs");
    for o in 0..6 {
        assert!(sim.view(o).conflicts().is_empty(), "observer {o}");
    }
    // node-4 claims one of them, the 777th: everyone sees exactly that conflict.
    let contested = thousand[776];
    let wall = sim.wall();
    let fx = sim.nodes[3].core.as_mut().unwrap().set_hosted(wall, vec![contested]).unwrap();
    sim.apply(3, fx);
    let t0 = sim.now;
    sim.run_until(t0 + 2_000, |s| (0..6).all(|o| !s.view(o).conflicts().is_empty())).expect("conflict detected");
    for o in 0..6 {
        assert_eq!(
            sim.view(o).conflicts(),
            vec![(contested, vec!["node-1".to_string(), "node-4".to_string()])],
            "observer {o}"
        );
    }
    // A late joiner learns the whole set too (pushed directly on join, chunk by chunk).
    sim.kill(5);
    sim.time_to_detect(5, 5_000);
    sim.run_for(1_000);
    sim.start(5);
    let t0 = sim.now;
    sim.run_until(t0 + 5_000, |s| s.all_see_all_alive() && s.hosted_seen(5, 0) == thousand)
        .expect("restarted member learns all 1,000 IPs");
    assert_eq!(sim.view(5).conflicts().len(), 1);
}

fn eligible_seen(sim: &Sim, observer: usize, of: usize) -> bool {
    sim.view(observer).eligible().contains(&name(of).as_str())
}

fn announce(sim: &mut Sim, i: usize, ips: &[&str], eligible: bool) {
    let ips: Vec<IpAddr> = ips.iter().map(|s| s.parse().unwrap()).collect();
    let wall = sim.wall();
    let fx = sim.nodes[i].core.as_mut().unwrap().announce(wall, ips, eligible).unwrap();
    sim.apply(i, fx);
}

#[test]
fn eligibility_propagates_and_a_restarted_member_starts_ineligible() {
    let mut sim = Sim::cluster(6, 22);
    // Alive is not eligible: a member says when it may host.
    for o in 0..6 {
        assert!(sim.view(o).eligible().is_empty(), "observer {o}: {:?}", sim.view(o).eligible());
    }
    for i in 0..6 {
        announce(&mut sim, i, &[], true);
    }
    let t0 = sim.now;
    sim.run_until(t0 + 1_000, |s| (0..6).all(|o| s.view(o).eligible().len() == 6)).expect("all eligible");
    // A member whose datapath fails says so; it stays alive but is no longer eligible anywhere.
    announce(&mut sim, 2, &["10.0.0.3"], false);
    let t0 = sim.now;
    sim.run_until(t0 + 1_000, |s| (0..6).all(|o| !eligible_seen(s, o, 2))).expect("ineligible everywhere");
    assert!((0..6).all(|o| sim.status(o, 2) == Some(MemberStatus::Alive)));
    assert_eq!(sim.hosted_seen(4, 2), vec!["10.0.0.3".parse::<IpAddr>().unwrap()]);
    announce(&mut sim, 2, &[], true);
    let t0 = sim.now;
    sim.run_until(t0 + 1_000, |s| (0..6).all(|o| eligible_seen(s, o, 2))).expect("eligible again");
    // Power loss: dead members are not eligible, and when it restarts it is alive but not
    // eligible until it says so, whatever its earlier life said.
    sim.time_to_detect(4, 5_000).expect("detected");
    assert!((0..6).filter(|&o| o != 4).all(|o| !eligible_seen(&sim, o, 4)));
    sim.run_for(1_000);
    sim.start(4);
    let t0 = sim.now;
    sim.run_until(t0 + 5_000, |s| s.all_see_all_alive()).expect("readmitted");
    sim.run_for(1_000);
    for o in 0..6 {
        assert!(!eligible_seen(&sim, o, 4), "observer {o} sees the restarted member eligible");
    }
    announce(&mut sim, 4, &[], true);
    let t0 = sim.now;
    sim.run_until(t0 + 1_000, |s| (0..6).all(|o| eligible_seen(s, o, 4))).expect("eligible after saying so");
}

#[test]
fn a_member_falsely_declared_dead_is_ineligible_until_it_speaks_again() {
    let mut sim = Sim::cluster(4, 23);
    for i in 0..4 {
        announce(&mut sim, i, &[], true);
    }
    sim.run_until(sim.now + 1_000, |s| (0..4).all(|o| s.view(o).eligible().len() == 4)).expect("all eligible");
    let others = [0, 2, 3];
    sim.partition(&[1], &others);
    sim.run_until(sim.now + 5_000, |s| others.iter().all(|&o| s.status(o, 1) == Some(MemberStatus::Dead)))
        .expect("declared dead");
    assert!(others.iter().all(|&o| !eligible_seen(&sim, o, 1)));
    sim.run_for(2_000);
    sim.heal();
    // It comes back on its own (same process, same announced state) and is eligible again once
    // its record reaches the others.
    sim.run_until(sim.now + 10_000, |s| s.all_see_all_alive() && others.iter().all(|&o| eligible_seen(s, o, 1)))
        .expect("eligible again after rejoining");
}
