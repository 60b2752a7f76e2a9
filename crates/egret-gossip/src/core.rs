//! The sans-I/O gossip member: foca plus the envelope, hosted-IP records and rejoin logic.
//!
//! Every entry point takes the current wall-clock time (unix milliseconds, used for envelope
//! timestamps) and returns [`Effects`]: datagrams to send, timers to schedule and, when it
//! changed, the new [`View`]. Nothing here touches a socket or a clock, so the deterministic
//! simulation in `tests/sim.rs` and the tokio shell in [`crate::shell`] drive the same code.

use crate::config::Tuning;
use crate::envelope::{Envelope, Kind, Reject};
use crate::error::GossipError;
use crate::hosted::{HostedHandler, HostedRecord, HostedState, MAX_HOSTED_TOTAL, SharedStore, lock};
use crate::identity::NodeId;
use crate::key::GossipKeys;
use crate::view::{MemberStatus, MemberView, View};
use foca::{AccumulatingRuntime, Foca, OwnedNotification, PostcardCodec, State};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// A peer to join through: a node from the Node list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seed {
    /// Node name.
    pub name: String,
    /// Its gossip socket address.
    pub addr: SocketAddr,
}

/// Everything a member needs.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// This node's name (unique in the cluster).
    pub name: String,
    /// The socket address to bind and to advertise: the node's underlay IP and the gossip port.
    /// The IP must be a specific address; port 0 picks a free port (tests).
    pub addr: SocketAddr,
    /// Peers to join through; an entry with this node's name is ignored.
    pub seeds: Vec<Seed>,
    /// The shared key (two during a rotation: the first seals, both open). There is no gossip
    /// without one.
    pub keys: GossipKeys,
    /// Protocol tuning.
    pub tuning: Tuning,
}

impl GossipConfig {
    /// A configuration with default tuning.
    pub fn new(name: &str, addr: SocketAddr, seeds: Vec<Seed>, keys: impl Into<GossipKeys>) -> Self {
        Self { name: name.to_string(), addr, seeds, keys: keys.into(), tuning: Tuning::default() }
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), GossipError> {
        if self.name.is_empty() {
            return Err(GossipError::Config("node name is empty".into()));
        }
        if self.addr.ip().is_unspecified() {
            return Err(GossipError::Config(format!(
                "gossip address {} is unspecified: peers need the node's own IP",
                self.addr
            )));
        }
        self.tuning.validate()?;
        Ok(())
    }
}

/// Traffic and rejection counters of one member.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Datagrams received (all, before any check).
    pub datagrams_in: u64,
    /// Datagrams sent (handed to the transport).
    pub datagrams_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Datagrams that opened and were handed on (foca packets and hosted records).
    pub accepted: u64,
    /// Rejected: too short, too long, or an unknown kind.
    pub rejected_malformed: u64,
    /// Rejected: not an Egret envelope (e.g. a plain foca packet).
    pub rejected_unencrypted: u64,
    /// Rejected: failed authentication (wrong key, tampered, forged).
    pub rejected_auth: u64,
    /// Rejected: timestamp outside the replay window.
    pub rejected_stale: u64,
    /// Rejected: a replay of a datagram already accepted.
    pub rejected_replay: u64,
    /// Authenticated, but foca or the record decoder refused the content.
    pub invalid_content: u64,
    /// Datagrams the transport failed to send (counted by the shell).
    pub send_errors: u64,
}

impl Counters {
    /// All datagrams dropped by the envelope.
    pub const fn rejected(&self) -> u64 {
        self.rejected_malformed
            + self.rejected_unencrypted
            + self.rejected_auth
            + self.rejected_stale
            + self.rejected_replay
    }

    fn reject(&mut self, why: Reject) {
        match why {
            Reject::Malformed => self.rejected_malformed += 1,
            Reject::Unencrypted => self.rejected_unencrypted += 1,
            Reject::Auth => self.rejected_auth += 1,
            Reject::Stale => self.rejected_stale += 1,
            Reject::Replay => self.rejected_replay += 1,
        }
    }
}

/// A timer the driver must hand back through [`GossipCore::handle_timer`] after its delay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer(TimerKind);

#[derive(Debug, Clone, PartialEq, Eq)]
enum TimerKind {
    Foca(foca::Timer<NodeId>),
    Rejoin,
    HostedRefresh,
}

/// What the driver must do after a call into the core.
#[derive(Debug, Default)]
pub struct Effects {
    /// Datagrams to send, already sealed.
    pub datagrams: Vec<(SocketAddr, Vec<u8>)>,
    /// Timers to schedule: deliver each after its delay.
    pub timers: Vec<(Duration, Timer)>,
    /// The new view, if it changed.
    pub view: Option<View>,
}

type Swim = Foca<NodeId, PostcardCodec, StdRng, HostedHandler>;

/// One gossip member, without I/O.
pub struct GossipCore {
    foca: Swim,
    runtime: AccumulatingRuntime<NodeId>,
    envelope: Envelope,
    nonce_rng: StdRng,
    store: SharedStore,
    name: Arc<str>,
    /// What this member announces about itself.
    own: HostedState,
    seeds: Vec<Seed>,
    tuning: Tuning,
    counters: Counters,
    view: View,
    left: bool,
}

impl GossipCore {
    /// A member named and addressed by `cfg`, in its life `bump` (the shell uses the start time
    /// in unix milliseconds, so a restart always wins), drawing randomness from `rng`.
    pub fn new(cfg: &GossipConfig, bump: u64, mut rng: StdRng) -> Result<Self, GossipError> {
        cfg.validate()?;
        let foca_config = cfg.tuning.to_foca()?;
        let id = NodeId::new(&cfg.name, cfg.addr, bump);
        let store = SharedStore::default();
        // A member starts ineligible: its agent says when it may host.
        let own = HostedState { epoch: bump, seq: 0, eligible: false, ips: Vec::new() };
        let name = id.name.clone();
        let handler = HostedHandler { local: id.name.clone(), store: store.clone() };
        let foca_rng = StdRng::from_rng(&mut rng);
        let seeds = cfg.seeds.iter().filter(|s| s.name != cfg.name && s.addr != cfg.addr).cloned().collect();
        let mut core = Self {
            foca: Foca::with_custom_broadcast(id, foca_config, foca_rng, PostcardCodec, handler),
            runtime: AccumulatingRuntime::new(),
            envelope: Envelope::with_keys(&cfg.keys, cfg.tuning.replay_window, cfg.tuning.max_datagram),
            nonce_rng: rng,
            store,
            name,
            own,
            seeds,
            tuning: cfg.tuning.clone(),
            counters: Counters::default(),
            view: View::default(),
            left: false,
        };
        core.view = core.build_view();
        Ok(core)
    }

    /// This member's current identity (the bump grows when it rejoins).
    pub fn identity(&self) -> &NodeId {
        self.foca.identity()
    }

    /// The last view (also returned in [`Effects::view`] whenever it changes).
    pub const fn view(&self) -> &View {
        &self.view
    }

    /// The counters.
    pub const fn counters(&self) -> Counters {
        self.counters
    }

    /// Lets the shell count transport failures.
    pub const fn count_send_error(&mut self) {
        self.counters.send_errors += 1;
    }

    /// Joins: announces to every seed and starts the periodic work. Call once.
    pub fn start(&mut self, now_ms: u64) -> Effects {
        let mut fx = Effects::default();
        info!(member = ?self.identity(), seeds = self.seeds.len(), "gossip member starting");
        self.offer_own_record();
        for seed in self.seeds.clone() {
            let dst = NodeId::new(&seed.name, seed.addr, 0);
            if let Err(e) = self.foca.announce(dst, &mut self.runtime) {
                debug!(seed = %seed.name, error = %e, "announce failed");
            }
        }
        fx.timers.push((self.tuning.rejoin_interval, Timer(TimerKind::Rejoin)));
        fx.timers.push((self.tuning.hosted_refresh, Timer(TimerKind::HostedRefresh)));
        self.drain(now_ms, &mut fx);
        self.finish(&mut fx);
        fx
    }

    /// Handles one datagram from the network.
    pub fn handle_datagram(&mut self, now_ms: u64, datagram: &[u8]) -> Effects {
        let mut fx = Effects::default();
        self.counters.datagrams_in += 1;
        self.counters.bytes_in += datagram.len() as u64;
        if self.left {
            return fx;
        }
        let (kind, body) = match self.envelope.open(datagram, now_ms) {
            Ok(opened) => opened,
            Err(why) => {
                self.counters.reject(why);
                // debug, not warn: whoever can reach the port can send garbage at any rate.
                debug!(reason = ?why, len = datagram.len(), "gossip datagram rejected");
                return fx;
            }
        };
        self.counters.accepted += 1;
        match kind {
            Kind::Foca => {
                if let Err(e) = self.foca.handle_data(&body, &mut self.runtime) {
                    self.counters.invalid_content += 1;
                    debug!(error = %e, "foca refused an authenticated packet");
                }
            }
            Kind::Hosted => match HostedRecord::decode(&body) {
                Ok(record) if record.name != self.name => {
                    lock(&self.store).offer(record);
                }
                Ok(_) => {}
                Err(e) => {
                    self.counters.invalid_content += 1;
                    debug!(error = %e, "bad hosted-IP record");
                }
            },
        }
        self.drain(now_ms, &mut fx);
        self.finish(&mut fx);
        fx
    }

    /// Handles a timer scheduled through [`Effects::timers`].
    pub fn handle_timer(&mut self, now_ms: u64, timer: Timer) -> Effects {
        let mut fx = Effects::default();
        if self.left {
            return fx;
        }
        match timer.0 {
            TimerKind::Foca(t) => {
                if let Err(e) = self.foca.handle_timer(t, &mut self.runtime) {
                    debug!(error = %e, "foca timer");
                }
            }
            TimerKind::Rejoin => {
                self.rejoin();
                fx.timers.push((self.tuning.rejoin_interval, Timer(TimerKind::Rejoin)));
            }
            TimerKind::HostedRefresh => {
                self.offer_own_record();
                fx.timers.push((self.tuning.hosted_refresh, Timer(TimerKind::HostedRefresh)));
            }
        }
        self.drain(now_ms, &mut fx);
        self.finish(&mut fx);
        fx
    }

    /// Announces the egress IPs this member now hosts (order and duplicates do not matter),
    /// keeping its eligibility as it is.
    pub fn set_hosted(&mut self, now_ms: u64, ips: Vec<IpAddr>) -> Result<Effects, GossipError> {
        let eligible = self.own.eligible;
        self.announce(now_ms, ips, eligible)
    }

    /// Announces the egress IPs this member now hosts (order and duplicates do not matter) and
    /// whether it is eligible to be given egress IPs (settled and its datapath in sync), as one
    /// new version.
    pub fn announce(&mut self, now_ms: u64, mut ips: Vec<IpAddr>, eligible: bool) -> Result<Effects, GossipError> {
        let mut fx = Effects::default();
        ips.sort_unstable();
        ips.dedup();
        if ips.len() > MAX_HOSTED_TOTAL {
            return Err(GossipError::TooManyHosted { count: ips.len(), max: MAX_HOSTED_TOTAL });
        }
        if (ips == self.own.ips && eligible == self.own.eligible) || self.left {
            return Ok(fx);
        }
        self.own.seq += 1;
        self.own.ips = ips;
        self.own.eligible = eligible;
        info!(seq = self.own.seq, eligible, hosted = self.own.ips.len(), "announcing hosted IPs");
        debug!(hosted = ?self.own.ips, "hosted IPs");
        self.offer_own_record();
        // A change is rare and matters now (conflict detection, placement): send it to every
        // live member directly instead of waiting for piggy-backing to reach them all.
        let targets: Vec<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
        for addr in targets {
            self.send_record(now_ms, addr, &mut fx);
        }
        self.drain(now_ms, &mut fx);
        self.finish(&mut fx);
        Ok(fx)
    }

    /// Leaves the cluster gracefully: tells a few members this identity is down (they spread it)
    /// and stops reacting to anything.
    pub fn leave(&mut self, now_ms: u64) -> Effects {
        let mut fx = Effects::default();
        if self.left {
            return fx;
        }
        info!(member = ?self.identity(), "leaving the gossip cluster");
        if let Err(e) = self.foca.leave_cluster(&mut self.runtime) {
            warn!(error = %e, "leave");
        }
        self.drain(now_ms, &mut fx);
        self.left = true;
        self.finish(&mut fx);
        fx
    }

    /// Re-announces to every seed that is not active in our view. A member that the cluster
    /// declared Down (or that sat on the other side of a partition) is thereby told so (foca
    /// answers a down member with TurnUndead), renews its identity and is admitted again; and a
    /// member left alone (all peers down, e.g. its links were cut) finds its way back.
    fn rejoin(&mut self) {
        let known: Vec<(Arc<str>, bool, u64)> = self
            .foca
            .iter_membership_state()
            .map(|m| (m.id().name.clone(), m.state() != State::Down, m.id().bump))
            .collect();
        for seed in &self.seeds {
            let entry = known.iter().find(|(name, _, _)| **name == *seed.name);
            if matches!(entry, Some((_, true, _))) {
                continue;
            }
            let bump = entry.map_or(0, |(_, _, bump)| *bump);
            debug!(seed = %seed.name, "re-announcing to a seed that is not alive in our view");
            if let Err(e) = self.foca.announce(NodeId::new(&seed.name, seed.addr, bump), &mut self.runtime) {
                debug!(seed = %seed.name, error = %e, "announce failed");
            }
        }
    }

    fn offer_own_record(&mut self) {
        for record in self.own.records(&self.name) {
            match record.encode() {
                Ok(data) => {
                    if let Err(e) = self.foca.add_broadcast(&data) {
                        warn!(error = %e, "cannot queue hosted-IP record");
                    }
                }
                Err(e) => warn!(error = %e, "cannot encode hosted-IP record"),
            }
        }
    }

    fn send_record(&mut self, now_ms: u64, to: SocketAddr, fx: &mut Effects) {
        for record in self.own.records(&self.name) {
            match record.encode() {
                Ok(data) => self.seal_to(now_ms, Kind::Hosted, to, &data, fx),
                Err(e) => warn!(error = %e, "cannot encode hosted-IP record"),
            }
        }
    }

    fn seal_to(&mut self, now_ms: u64, kind: Kind, to: SocketAddr, body: &[u8], fx: &mut Effects) {
        match self.envelope.seal(kind, body, now_ms, &mut self.nonce_rng) {
            Ok(datagram) => {
                self.counters.datagrams_out += 1;
                self.counters.bytes_out += datagram.len() as u64;
                fx.datagrams.push((to, datagram));
            }
            Err(e) => warn!(error = %e, "cannot seal gossip datagram"),
        }
    }

    /// Moves what foca asked for into `fx`: sealed datagrams, timers, and reactions to its
    /// notifications.
    fn drain(&mut self, now_ms: u64, fx: &mut Effects) {
        while let Some((to, data)) = self.runtime.to_send() {
            self.seal_to(now_ms, Kind::Foca, to.addr, &data, fx);
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            fx.timers.push((after, Timer(TimerKind::Foca(timer))));
        }
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(id) => {
                    info!(member = %id.name, addr = %id.addr, bump = id.bump, "member up");
                    // A member that just came up (joined, restarted, back from a partition)
                    // gets our record straight away.
                    self.send_record(now_ms, id.addr, fx);
                }
                OwnedNotification::MemberDown(id) => {
                    info!(member = %id.name, addr = %id.addr, bump = id.bump, "member down");
                    // Only if no newer identity of the node is up (a renewed identity retires
                    // the old one, which may be reported down after the new one is up).
                    if !self.foca.iter_members().any(|m| m.id().name == id.name) {
                        lock(&self.store).mark_down(&id.name);
                    }
                }
                OwnedNotification::Rename(old, new) => {
                    info!(member = %new.name, old_bump = old.bump, new_bump = new.bump, "member has a new identity");
                    self.send_record(now_ms, new.addr, fx);
                }
                OwnedNotification::Rejoin(id) => {
                    warn!(bump = id.bump, "the cluster declared this member down; rejoined with a new identity");
                }
                OwnedNotification::Active => info!("joined the gossip cluster"),
                OwnedNotification::Idle => warn!("no live gossip peer left"),
                OwnedNotification::Defunct => warn!("this member is down for the cluster and cannot rejoin"),
            }
        }
    }

    fn finish(&mut self, fx: &mut Effects) {
        let view = self.build_view();
        if view != self.view {
            self.view = view.clone();
            fx.view = Some(view);
        }
    }

    fn build_view(&self) -> View {
        let store = lock(&self.store);
        let hosted =
            |name: &str| store.get(name).and_then(|e| e.complete.as_ref()).map(|c| c.ips.clone()).unwrap_or_default();
        let eligible = |name: &str| store.get(name).is_some_and(|e| e.eligible());
        let mut members: Vec<MemberView> = self
            .foca
            .iter_membership_state()
            .map(|m| MemberView {
                name: m.id().name.to_string(),
                addr: m.id().addr,
                status: match m.state() {
                    State::Alive => MemberStatus::Alive,
                    State::Suspect => MemberStatus::Suspect,
                    State::Down => MemberStatus::Dead,
                },
                bump: m.id().bump,
                incarnation: m.incarnation(),
                hosted: hosted(&m.id().name),
                eligible: m.state() != State::Down && eligible(&m.id().name),
                local: false,
            })
            .collect();
        let me = self.foca.identity();
        members.push(MemberView {
            name: me.name.to_string(),
            addr: me.addr,
            status: if self.left { MemberStatus::Dead } else { MemberStatus::Alive },
            bump: me.bump,
            // foca does not expose its own incarnation; it only matters to peers.
            incarnation: 0,
            hosted: self.own.ips.clone(),
            eligible: !self.left && self.own.eligible,
            local: true,
        });
        members.sort_by(|a, b| a.name.cmp(&b.name));
        View { local: me.name.to_string(), joined: !self.left && self.foca.num_members() > 0, members }
    }
}
