//! Failovers as the new holder sees them (pure): which egress IPs this node took over from a
//! member it saw die, and how long after it saw the death verdict the announcement went out.

use egret_gossip::{MemberStatus, MemberView};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How long a death is remembered: an IP taken over later is a placement move, not a failover.
const REMEMBER: Duration = Duration::from_secs(300);

/// Deaths seen in the gossip view.
#[derive(Debug, Default)]
pub struct Deaths {
    /// Members dead now, with when this node first saw them dead and what they held.
    dead: HashMap<String, (Instant, Vec<IpAddr>)>,
    /// The status of every member at the previous look.
    status: HashMap<String, MemberStatus>,
}

impl Deaths {
    /// Looks at the view: a member seen dead for the first time since it was last alive is
    /// noted with `now` and the IPs it held when last heard of.
    pub fn observe(&mut self, members: &[MemberView], now: Instant) {
        for m in members.iter().filter(|m| !m.local) {
            let before = self.status.insert(m.name.clone(), m.status);
            if m.status == MemberStatus::Dead {
                if before != Some(MemberStatus::Dead) && before.is_some() {
                    self.dead.insert(m.name.clone(), (now, m.hosted.clone()));
                }
            } else {
                self.dead.remove(&m.name);
            }
        }
        // An IP a live member announces has moved on: taking it later is a move, not a failover.
        for m in members.iter().filter(|m| m.status != MemberStatus::Dead) {
            for (_, held) in self.dead.values_mut() {
                held.retain(|ip| !m.hosted.contains(ip));
            }
        }
        self.dead.retain(|_, (at, _)| now.duration_since(*at) < REMEMBER);
    }

    /// The IPs in `announced` but not in `before` that a member seen dead held, each with the
    /// time from that death verdict to `now` (the announcement). Each is counted once: the
    /// death is forgotten for that IP.
    pub fn takeovers(&mut self, before: &[IpAddr], announced: &[IpAddr], now: Instant) -> Vec<(IpAddr, Duration)> {
        let mut out = Vec::new();
        for ip in announced.iter().filter(|ip| !before.contains(ip)) {
            // The latest death of a member that held it (in a cascade, the last holder's).
            let from = self.dead.values().filter(|(_, held)| held.contains(ip)).map(|(at, _)| *at).max();
            if let Some(at) = from {
                out.push((*ip, now.duration_since(at)));
                for (_, held) in self.dead.values_mut() {
                    held.retain(|h| h != ip);
                }
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn mk_member(name: &str, status: MemberStatus, hosted: &[&str]) -> MemberView {
        MemberView {
            name: name.into(),
            addr: "10.0.0.1:7946".parse().unwrap(),
            status,
            bump: 1,
            incarnation: 0,
            hosted: hosted.iter().filter_map(|h| h.parse().ok()).collect(),
            eligible: status != MemberStatus::Dead,
            local: false,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_ip_of_a_member_seen_dying_is_a_takeover_timed_from_the_verdict() {
        let t0 = Instant::now();
        let mut d = Deaths::default();
        d.observe(&[mk_member("node-2", MemberStatus::Alive, &["10.10.0.200"])], t0);
        d.observe(&[mk_member("node-2", MemberStatus::Dead, &["10.10.0.200"])], t0 + Duration::from_millis(100));
        let got = d.takeovers(&[], &[ip("10.10.0.200"), ip("10.10.0.201")], t0 + Duration::from_millis(350));
        assert_eq!(got, vec![(ip("10.10.0.200"), Duration::from_millis(250))]);
        // Counted once.
        assert!(d.takeovers(&[], &[ip("10.10.0.200")], t0 + Duration::from_millis(400)).is_empty());
    }

    #[test]
    fn no_takeover_without_a_death_seen_here() {
        let t0 = Instant::now();
        let mut d = Deaths::default();
        // Dead at the first look: the verdict's time is unknown here.
        d.observe(&[mk_member("node-2", MemberStatus::Dead, &["10.10.0.200"])], t0);
        assert!(d.takeovers(&[], &[ip("10.10.0.200")], t0).is_empty());
        // An IP handed over by a live member is a placement move.
        d.observe(&[mk_member("node-3", MemberStatus::Alive, &["10.10.0.201"])], t0);
        assert!(d.takeovers(&[], &[ip("10.10.0.201")], t0).is_empty());
        // Held before: not taken over now.
        d.observe(&[mk_member("node-3", MemberStatus::Dead, &["10.10.0.201"])], t0);
        assert!(d.takeovers(&[ip("10.10.0.201")], &[ip("10.10.0.201")], t0).is_empty());
    }

    #[test]
    fn a_cascade_is_timed_from_the_last_holders_death_and_a_live_handover_is_no_failover() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Deaths::default();
        d.observe(
            &[mk_member("a", MemberStatus::Alive, &["10.10.0.11"]), mk_member("b", MemberStatus::Alive, &[])],
            t0,
        );
        d.observe(&[mk_member("a", MemberStatus::Dead, &["10.10.0.11"]), mk_member("b", MemberStatus::Alive, &[])], t0);
        d.observe(
            &[
                mk_member("a", MemberStatus::Dead, &["10.10.0.11"]),
                mk_member("b", MemberStatus::Alive, &["10.10.0.11"]),
            ],
            t0 + ms(300),
        );
        d.observe(
            &[mk_member("a", MemberStatus::Dead, &["10.10.0.11"]), mk_member("b", MemberStatus::Dead, &["10.10.0.11"])],
            t0 + ms(1000),
        );
        assert_eq!(d.takeovers(&[], &[ip("10.10.0.11")], t0 + ms(1200)), vec![(ip("10.10.0.11"), ms(200))]);
        assert!(d.takeovers(&[], &[ip("10.10.0.11")], t0 + ms(1300)).is_empty(), "counted once");

        // c dies holding .12, which d (alive) takes over and then hands to this node: a move.
        let mut d2 = Deaths::default();
        d2.observe(&[mk_member("c", MemberStatus::Alive, &["10.10.0.12"])], t0);
        d2.observe(&[mk_member("c", MemberStatus::Dead, &["10.10.0.12"])], t0);
        d2.observe(
            &[
                mk_member("c", MemberStatus::Dead, &["10.10.0.12"]),
                mk_member("d", MemberStatus::Alive, &["10.10.0.12"]),
            ],
            t0,
        );
        assert!(d2.takeovers(&[], &[ip("10.10.0.12")], t0 + ms(500)).is_empty());
    }

    #[test]
    fn a_member_back_alive_or_a_death_long_ago_gives_no_takeover() {
        let t0 = Instant::now();
        let mut d = Deaths::default();
        d.observe(&[mk_member("node-2", MemberStatus::Suspect, &["10.10.0.200"])], t0);
        d.observe(&[mk_member("node-2", MemberStatus::Dead, &["10.10.0.200"])], t0);
        d.observe(&[mk_member("node-2", MemberStatus::Alive, &[])], t0);
        assert!(d.takeovers(&[], &[ip("10.10.0.200")], t0).is_empty());
        d.observe(&[mk_member("node-2", MemberStatus::Dead, &["10.10.0.200"])], t0);
        let later = t0 + REMEMBER + Duration::from_secs(1);
        d.observe(&[mk_member("node-2", MemberStatus::Dead, &["10.10.0.200"])], later);
        assert!(d.takeovers(&[], &[ip("10.10.0.200")], later).is_empty());
    }
}
