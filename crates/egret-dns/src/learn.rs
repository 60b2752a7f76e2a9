//! What to program for an answer (pure): which name rules of the asking pod allow the name,
//! the set elements with their timeouts, and the per-name limit with oldest-first eviction.

use egret_core::policy::FqdnPattern;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One name rule as the proxy sees it: its patterns and the kernel sets of its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRuleSets {
    /// The policy, as `Kind name` (for logs).
    pub policy: String,
    /// The rule's name.
    pub rule: String,
    /// Its patterns.
    pub patterns: Vec<FqdnPattern>,
    /// The IPv4 set.
    pub set4: String,
    /// The IPv6 set.
    pub set6: String,
}

impl NameRuleSets {
    /// The set an address goes to.
    pub fn set_for(&self, ip: IpAddr) -> &str {
        if ip.is_ipv4() { &self.set4 } else { &self.set6 }
    }
}

/// The name rules of each pod address on this node (pods without any are absent).
pub type PodRules = HashMap<IpAddr, Arc<Vec<Arc<NameRuleSets>>>>;

/// Timeouts and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// An address is kept at least this long, whatever its TTL (`--fqdn-min-ttl`).
    pub min_ttl: Duration,
    /// Added to every timeout, so a client that connects right as the TTL ends still gets in.
    pub grace: Duration,
    /// At most this many addresses per name and rule (`--fqdn-max-ips-per-name`).
    pub max_ips_per_name: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { min_ttl: Duration::from_secs(5), grace: Duration::from_secs(2), max_ips_per_name: 1000 }
    }
}

/// One kernel set element to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// The set.
    pub set: String,
    /// The address.
    pub addr: IpAddr,
    /// Its timeout.
    pub timeout: Duration,
    /// The name it was learned for.
    pub name: String,
}

/// What one answer changes in the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Program {
    /// Elements to add (or refresh).
    pub add: Vec<Element>,
    /// Elements to delete (evicted by the per-name limit), `(set, address)`.
    pub delete: Vec<(String, IpAddr)>,
}

/// Addresses learned per (set, name), oldest first, with when they expire.
#[derive(Debug, Default)]
pub struct Learned {
    by_name: HashMap<(String, String), VecDeque<(IpAddr, Instant)>>,
    /// Latest name and expiry of every (set, address): for the audit log, and so an address
    /// another name still holds is not evicted.
    holders: HashMap<(String, IpAddr), Vec<(String, Instant)>>,
}

impl Learned {
    /// The name rules of `rules` whose patterns match `name`.
    pub fn matching<'a>(rules: &'a [Arc<NameRuleSets>], name: &str) -> Vec<&'a Arc<NameRuleSets>> {
        rules.iter().filter(|r| r.patterns.iter().any(|p| p.matches(name))).collect()
    }

    /// Records an answer for `name` (canonical) with `addresses` for the rules that allow it,
    /// and says what the kernel must do.
    pub fn learn(
        &mut self,
        rules: &[&Arc<NameRuleSets>],
        name: &str,
        addresses: &[(IpAddr, u32)],
        limits: &Limits,
        now: Instant,
    ) -> Program {
        let mut out = Program::default();
        for r in rules {
            for &(ip, ttl) in addresses {
                let timeout = Duration::from_secs(u64::from(ttl)).max(limits.min_ttl) + limits.grace;
                let set = r.set_for(ip).to_string();
                let expires = now + timeout;
                let list = self.by_name.entry((set.clone(), name.to_string())).or_default();
                // Already held for at least half the new timeout: the kernel has it, nothing to
                // write, and the answer need not wait.
                let held = list.iter().any(|(a, e)| *a == ip && *e >= now + timeout / 2);
                list.retain(|(a, e)| *a != ip && *e > now);
                list.push_back((ip, expires));
                let holders = self.holders.entry((set.clone(), ip)).or_default();
                holders.retain(|(n, e)| n != name && *e > now);
                holders.push((name.to_string(), expires));
                if !held {
                    out.add.push(Element { set: set.clone(), addr: ip, timeout, name: name.to_string() });
                }
                while list.len() > limits.max_ips_per_name.max(1) {
                    let Some((old, _)) = list.pop_front() else { break };
                    let key = (set.clone(), old);
                    let still_held = self.holders.get_mut(&key).is_some_and(|h| {
                        h.retain(|(n, e)| n != name && *e > now);
                        !h.is_empty()
                    });
                    if !still_held {
                        self.holders.remove(&key);
                        out.delete.push(key);
                    }
                }
            }
        }
        out
    }

    /// The name `set` learned `ip` for most recently, while it is live.
    pub fn name_of(&self, set: &str, ip: IpAddr, now: Instant) -> Option<&str> {
        let h = self.holders.get(&(set.to_string(), ip))?;
        h.iter().rev().find(|(_, e)| *e > now).map(|(n, _)| n.as_str())
    }

    /// Records an element found in the kernel at start (what a previous run learned).
    pub fn restore(&mut self, set: &str, ip: IpAddr, name: &str, expires: Instant) {
        self.by_name.entry((set.to_string(), name.to_string())).or_default().push_back((ip, expires));
        self.holders.entry((set.to_string(), ip)).or_default().push((name.to_string(), expires));
    }

    /// Forgets everything about sets other than `sets` (a rule removed takes its sets with it;
    /// if it comes back, its sets start empty).
    pub fn retain_sets(&mut self, sets: &std::collections::HashSet<String>) {
        self.by_name.retain(|(s, _), _| sets.contains(s));
        self.holders.retain(|(s, _), _| sets.contains(s));
    }

    /// Forgets what has expired (the kernel has dropped those elements by itself).
    pub fn prune(&mut self, now: Instant) {
        self.by_name.retain(|_, l| {
            l.retain(|(_, e)| *e > now);
            !l.is_empty()
        });
        self.holders.retain(|_, h| {
            h.retain(|(_, e)| *e > now);
            !h.is_empty()
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rule(patterns: &[&str]) -> Arc<NameRuleSets> {
        Arc::new(NameRuleSets {
            policy: "ClusterEgressPolicy p".into(),
            rule: "r".into(),
            patterns: patterns.iter().map(|p| FqdnPattern::parse(p).unwrap()).collect(),
            set4: "fq4_x".into(),
            set6: "fq6_x".into(),
        })
    }

    #[test]
    fn timeouts_follow_the_ttl_with_a_floor_and_a_grace() {
        let rules = vec![rule(&["*.github.test"]), rule(&["other.test"])];
        let m = Learned::matching(&rules, "api.github.test");
        assert_eq!(m.len(), 1);
        let mut l = Learned::default();
        let now = Instant::now();
        let p = l.learn(
            &m,
            "api.github.test",
            &[("203.0.113.5".parse().unwrap(), 0), ("2001:db8::5".parse().unwrap(), 300)],
            &Limits::default(),
            now,
        );
        assert_eq!(p.add[0].timeout, Duration::from_secs(7), "TTL 0: the 5 s floor plus 2 s grace");
        assert_eq!((p.add[1].set.as_str(), p.add[1].timeout), ("fq6_x", Duration::from_secs(302)));
        assert_eq!(l.name_of("fq4_x", "203.0.113.5".parse().unwrap(), now), Some("api.github.test"));
        assert_eq!(l.name_of("fq4_x", "203.0.113.5".parse().unwrap(), now + Duration::from_secs(8)), None);
        // Asked again at once: held long enough, nothing to write; later, refreshed.
        let a = [("203.0.113.5".parse().unwrap(), 0)];
        assert!(l.learn(&m, "api.github.test", &a, &Limits::default(), now + Duration::from_secs(1)).add.is_empty());
        assert_eq!(l.learn(&m, "api.github.test", &a, &Limits::default(), now + Duration::from_secs(5)).add.len(), 1);
        // Expired entries are forgotten.
        l.prune(now + Duration::from_secs(400));
        assert_eq!(l.name_of("fq4_x", "203.0.113.5".parse().unwrap(), now), None);
        assert!(l.by_name.is_empty() && l.holders.is_empty());
        // A set gone from the plan is forgotten: the address is written again.
        l.retain_sets(&Default::default());
        assert_eq!(l.learn(&m, "api.github.test", &a, &Limits::default(), now + Duration::from_secs(5)).add.len(), 1);
    }

    #[test]
    fn the_oldest_address_of_a_name_is_evicted_unless_another_name_holds_it() {
        let rules = vec![rule(&["*.test"])];
        let m = Learned::matching(&rules, "a.test");
        let limits = Limits { max_ips_per_name: 2, ..Limits::default() };
        let mut l = Learned::default();
        let now = Instant::now();
        let ip = |n: u8| IpAddr::from([203, 0, 113, n]);
        l.learn(&m, "b.test", &[(ip(1), 60)], &limits, now);
        l.learn(&m, "a.test", &[(ip(1), 60), (ip(2), 60)], &limits, now);
        // Refreshing .2 makes .1 the oldest of a.test; b.test still holds .1.
        let p = l.learn(&m, "a.test", &[(ip(2), 60), (ip(3), 60)], &limits, now);
        assert!(p.delete.is_empty(), "{p:?}");
        // Now .2 is the oldest, and nothing else holds it.
        let p = l.learn(&m, "a.test", &[(ip(4), 60)], &limits, now);
        assert_eq!(p.delete, vec![("fq4_x".to_string(), ip(2))]);
    }
}
