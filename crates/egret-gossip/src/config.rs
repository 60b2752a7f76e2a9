//! Tuning of the SWIM protocol and its defaults.

use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

/// Protocol tuning. [`Tuning::default`] is sized for a handful of nodes on one LAN (the lab: six
/// nodes on one bridge, sub-millisecond RTT) and a failover budget under one second.
///
/// # How fast a dead member is detected
///
/// foca probes one member per `probe_period`, walking its members in a shuffled round-robin
/// (reshuffled each pass). For one observer with `M` other live members, the worst case after a
/// member dies is:
///
/// 1. up to `(2M - 1) * probe_period` until the observer's next probe of it (it was probed
///    first in one pass and lands last in the next),
/// 2. `probe_period` for that probe to fail: the direct ping waits `probe_rtt`, then
///    `num_indirect_probes` members are asked to ping it, and the verdict comes at the next
///    probe tick; the member becomes Suspect,
/// 3. `suspect_to_down` for it to refute; then it is Down.
///
/// So every observer sees it Dead by its own probing within `2M * probe_period + suspect_to_down`
/// ([`Tuning::detection_bound`]), plus timer lateness in a real runtime. With the defaults and
/// six nodes (M = 5): 10 * 80 ms + 160 ms = **960 ms worst case**, inside the one-second failover
/// budget even in the worst case. That worst case needs the dead member to land at opposite ends
/// of two consecutive passes of *every* observer; usually the first of the five observers probes
/// it within about one period, declares it Down after `probe_period + suspect_to_down`, and
/// periodic gossip (every `gossip_interval`, to `gossip_fanout` members) spreads the verdict in
/// one or two gossip rounds.
///
/// Measured in the deterministic simulation (`tests/sim.rs`, 300 trials, six members, 1-2 ms
/// one-way latency, random victim and kill phase; time until *all* survivors see it Dead):
///
/// | probe_period / probe_rtt / suspect_to_down | p50 | p90 | p99 | max | bound |
/// |---|---|---|---|---|---|
/// | 100 / 40 / 200 ms | 386 ms | 505 ms | 671 ms | 797 ms | 1200 ms |
/// | 100 / 40 / 150 ms | 362 ms | 479 ms | 642 ms | 748 ms | 1150 ms |
/// | **80 / 30 / 160 ms (default)** | **325 ms** | **430 ms** | **549 ms** | **639 ms** | **960 ms** |
/// | 60 / 25 / 150 ms | 284 ms | 356 ms | 452 ms | 487 ms | 750 ms |
/// | 50 / 20 / 150 ms | 252 ms | 316 ms | 380 ms | 422 ms | 650 ms |
///
/// (`cargo test -p egret-gossip --release --test sim tuning_sweep -- --ignored --nocapture`.)
/// These are protocol times with punctual timers; on a real host add scheduling delay. The
/// default leaves the agent roughly 400 ms of the budget at p99 for programming the datapath
/// and announcing the IP, while tolerating a stall of about a quarter second (below).
///
/// # What the short timers cost
///
/// A member is falsely declared Down when it cannot answer any probe for a whole
/// `probe_period` and then cannot refute the suspicion within `suspect_to_down`: a process that
/// stalls for roughly 250 ms (CPU starvation, a stopped process) is declared Down. It notices
/// (foca tells a down member so), renews its identity and is Alive again one round trip later,
/// but the agent will have moved its egress IPs meanwhile. Raise `suspect_to_down` on busy or
/// lossy networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    /// How often a member probes one other member.
    pub probe_period: Duration,
    /// How long a direct ping may take before indirect probes start. Must be below
    /// `probe_period`, and should leave room for the indirect round trip within it.
    pub probe_rtt: Duration,
    /// How many members are asked to ping a member that did not answer directly.
    pub num_indirect_probes: usize,
    /// How long a Suspect member has to refute before it is declared Down.
    pub suspect_to_down: Duration,
    /// How many times each membership update or hosted-IP record is piggy-backed.
    pub max_transmissions: u8,
    /// How often pending updates are gossiped to random members.
    pub gossip_interval: Duration,
    /// How many members each periodic gossip goes to.
    pub gossip_fanout: usize,
    /// How often a member asks a random live member for its member list, to discover members it
    /// has not heard of.
    pub announce_interval: Duration,
    /// How often a member re-announces itself to seeds that are not alive in its view, and
    /// (through foca) to members it believes down: this is how a member that was declared dead,
    /// or was on the other side of a partition, comes back.
    pub rejoin_interval: Duration,
    /// How often a member re-offers its own hosted-IP record for piggy-backing, in case earlier
    /// copies were lost.
    pub hosted_refresh: Duration,
    /// Largest datagram sent or accepted, envelope included. Keep it below the path MTU.
    pub max_datagram: usize,
    /// Datagrams whose sender timestamp is further than this from the receiver's clock are
    /// rejected; accepted datagrams are remembered this long to reject replays.
    pub replay_window: Duration,
    /// How long a Down identity is remembered.
    pub remove_down_after: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            // 80 ms: the longest period whose worst case (960 ms for six nodes) still fits the
            // one-second budget; a probe per member and period is a few dozen small datagrams
            // per second in a six-node cluster.
            probe_period: Duration::from_millis(80),
            // A LAN round trip is well under a millisecond; 30 ms absorbs a busy scheduler and
            // leaves 50 ms for the indirect ping-req round trip.
            probe_rtt: Duration::from_millis(30),
            num_indirect_probes: 3,
            // Two probe periods to refute: enough for the suspect to hear about it through
            // gossip (every 50 ms) and answer, short enough to stay inside the failover budget.
            suspect_to_down: Duration::from_millis(160),
            max_transmissions: 6,
            gossip_interval: Duration::from_millis(50),
            gossip_fanout: 3,
            announce_interval: Duration::from_secs(2),
            rejoin_interval: Duration::from_millis(500),
            hosted_refresh: Duration::from_secs(1),
            max_datagram: 1400,
            replay_window: Duration::from_secs(10),
            remove_down_after: Duration::from_secs(24 * 3600),
        }
    }
}

/// The tuning values are unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad gossip tuning: {0}")]
pub struct TuningError(pub String);

/// Smallest datagram size accepted in [`Tuning::max_datagram`]: room for the envelope, two
/// identities and a few updates.
pub const MIN_DATAGRAM: usize = 512;

impl Tuning {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), TuningError> {
        let err = |s: &str| Err(TuningError(s.to_string()));
        if self.probe_period.is_zero() || self.probe_rtt.is_zero() || self.suspect_to_down.is_zero() {
            return err("probe_period, probe_rtt and suspect_to_down must be above zero");
        }
        if self.probe_rtt >= self.probe_period {
            return err("probe_rtt must be below probe_period");
        }
        if self.gossip_interval.is_zero()
            || self.announce_interval.is_zero()
            || self.rejoin_interval.is_zero()
            || self.hosted_refresh.is_zero()
        {
            return err("gossip, announce, rejoin and hosted-refresh intervals must be above zero");
        }
        if self.num_indirect_probes == 0 || self.gossip_fanout == 0 || self.max_transmissions == 0 {
            return err("num_indirect_probes, gossip_fanout and max_transmissions must be above zero");
        }
        if !(MIN_DATAGRAM..=65_000).contains(&self.max_datagram) {
            return err("max_datagram must be between 512 and 65000 bytes");
        }
        if self.replay_window < Duration::from_secs(1) {
            return err("replay_window must be at least one second");
        }
        Ok(())
    }

    /// The worst case, by this member's own probing, from a member's death until this member
    /// sees it Dead, in a cluster of `cluster_size` members (this one included), with timers
    /// firing on time. See the type's documentation for the derivation.
    pub fn detection_bound(&self, cluster_size: usize) -> Duration {
        let others = u32::try_from(cluster_size.saturating_sub(1).max(1)).unwrap_or(u32::MAX);
        self.probe_period.saturating_mul(2 * others).saturating_add(self.suspect_to_down)
    }

    /// The equivalent foca configuration. foca's packet limit is the datagram limit less the
    /// envelope.
    pub(crate) fn to_foca(&self) -> Result<foca::Config, TuningError> {
        self.validate()?;
        let nz = |n: usize| NonZeroUsize::new(n).ok_or_else(|| TuningError("zero count".into()));
        let params = |frequency: Duration, n: usize| -> Result<foca::PeriodicParams, TuningError> {
            Ok(foca::PeriodicParams { frequency, num_members: nz(n)? })
        };
        Ok(foca::Config {
            probe_period: self.probe_period,
            probe_rtt: self.probe_rtt,
            num_indirect_probes: nz(self.num_indirect_probes)?,
            max_transmissions: NonZeroU8::new(self.max_transmissions)
                .ok_or_else(|| TuningError("zero max_transmissions".into()))?,
            suspect_to_down_after: self.suspect_to_down,
            remove_down_after: Some(self.remove_down_after),
            max_packet_size: nz(self.max_datagram - crate::envelope::OVERHEAD)?,
            // Tell a member we consider down that we do: it renews its identity and rejoins
            // instead of talking into the void (healed partitions, false suspicions).
            notify_down_members: true,
            periodic_announce: Some(params(self.announce_interval, 1)?),
            periodic_announce_to_down_members: Some(params(self.rejoin_interval.saturating_mul(2), 2)?),
            periodic_gossip: Some(params(self.gossip_interval, self.gossip_fanout)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bound_is_derived() {
        let t = Tuning::default();
        t.validate().unwrap();
        assert_eq!(t.detection_bound(6), Duration::from_millis(960));
        assert_eq!(t.detection_bound(2), Duration::from_millis(320));
        let f = t.to_foca().unwrap();
        assert_eq!(f.max_packet_size.get(), 1400 - crate::envelope::OVERHEAD);
        assert!(f.notify_down_members);
    }

    #[test]
    fn bad_values_are_rejected() {
        let mut t = Tuning { probe_rtt: Duration::from_millis(80), ..Tuning::default() };
        assert!(t.validate().unwrap_err().to_string().contains("probe_rtt"));
        t = Tuning { max_datagram: 100, ..Tuning::default() };
        assert!(t.validate().is_err());
        t = Tuning { gossip_fanout: 0, ..Tuning::default() };
        assert!(t.to_foca().is_err());
        t = Tuning { replay_window: Duration::from_millis(10), ..Tuning::default() };
        assert!(t.validate().is_err());
    }
}
