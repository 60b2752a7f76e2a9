//! The agent's side of domain-name rules: flags, the DNS proxy's view of the node's pods (from
//! each programmed plan), the kernel writer it programs learned addresses with, and re-reading
//! what an earlier run learned.

use egret_core::planner::NodePlan;
use egret_datapath::nft::firewall::{name_set, name_sets};
use egret_datapath::{Config, SetWriter, TABLE};
use egret_dns::{Element, Limits, NameRuleSets, PodRules, Programmer, ProxyConfig, Shared};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Flags of the DNS proxy.
#[derive(clap::Args, Debug, Clone)]
pub struct DnsArgs {
    /// Loopback port (UDP and TCP) the DNS queries of pods under name rules are handed to.
    #[arg(long, default_value_t = egret_datapath::config::DEFAULT_DNS_PROXY_PORT)]
    pub dns_proxy_port: u16,
    /// Shortest time a learned address stays allowed, whatever its TTL (e.g. `5s`).
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub fqdn_min_ttl: Duration,
    /// Added to every learned address's timeout.
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub fqdn_grace: Duration,
    /// Longest an answer is held back while its addresses are programmed; after it the answer
    /// is released anyway and `egret_dns_hold_timeouts_total` counts it.
    #[arg(long, default_value = "100ms", value_parser = duration)]
    pub fqdn_hold_timeout: Duration,
    /// Most addresses kept per name and rule; the oldest is evicted first.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub fqdn_max_ips_per_name: u32,
}

/// Parses `500ms`, `5s`, `2m` or a plain number of seconds.
fn duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration (e.g. 100ms, 5s, 2m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (use ms, s or m)")),
    }
}

impl DnsArgs {
    /// The proxy's settings.
    pub fn proxy_config(&self) -> ProxyConfig {
        ProxyConfig {
            port: self.dns_proxy_port,
            limits: Limits {
                min_ttl: self.fqdn_min_ttl,
                grace: self.fqdn_grace,
                max_ips_per_name: self.fqdn_max_ips_per_name as usize,
            },
            hold_timeout: self.fqdn_hold_timeout,
            ..ProxyConfig::default()
        }
    }
}

/// The name rules of each pod of `plan` that has any (pure).
pub fn pod_rules(plan: &NodePlan) -> PodRules {
    let sets: Vec<Arc<Vec<Arc<NameRuleSets>>>> = plan
        .firewall
        .sets
        .iter()
        .map(|s| {
            Arc::new(
                s.compiled
                    .names
                    .iter()
                    .map(|n| {
                        Arc::new(NameRuleSets {
                            policy: n.policy.to_string(),
                            rule: n.rule.clone(),
                            patterns: n.fqdns.clone(),
                            set4: name_set(&n.policy, &n.rule, false),
                            set6: name_set(&n.policy, &n.rule, true),
                        })
                    })
                    .collect(),
            )
        })
        .collect();
    let mut out = HashMap::new();
    for p in &plan.firewall.pods {
        if let Some(s) = sets.get(p.set).filter(|s| !s.is_empty()) {
            out.insert(p.ip, s.clone());
        }
    }
    out
}

/// Writes learned addresses with a netlink socket of the agent's network namespace, opened
/// again after a failure.
#[derive(Default)]
pub struct NetlinkProgrammer {
    writer: Option<SetWriter>,
}

impl NetlinkProgrammer {
    fn writer(&mut self) -> Result<&mut SetWriter, String> {
        if self.writer.is_none() {
            self.writer = Some(SetWriter::open().map_err(|e| e.to_string())?);
        }
        self.writer.as_mut().ok_or_else(|| "no netlink socket".to_string())
    }
}

impl Programmer for NetlinkProgrammer {
    fn add(&mut self, elems: &[Element]) -> Result<(), String> {
        let mut by_set: BTreeMap<&str, Vec<egret_datapath::Element>> = BTreeMap::new();
        for e in elems {
            // The comment names the address's name, for the audit log after a restart.
            let comment = e.name.get(..egret_datapath::nft::setelem::MAX_COMMENT_BYTES.min(e.name.len()));
            by_set.entry(&e.set).or_default().push(egret_datapath::Element {
                addr: e.addr,
                timeout: e.timeout,
                comment: comment.map(str::to_string),
            });
        }
        for (set, list) in by_set {
            let res = self.writer()?.add(TABLE, set, &list);
            if let Err(e) = res {
                self.writer = None;
                return Err(format!("set {set}: {e}"));
            }
        }
        Ok(())
    }

    fn delete(&mut self, elems: &[(String, IpAddr)]) -> Result<(), String> {
        let mut by_set: BTreeMap<&str, Vec<IpAddr>> = BTreeMap::new();
        for (s, ip) in elems {
            by_set.entry(s).or_default().push(*ip);
        }
        for (set, list) in by_set {
            // One by one: an address may have expired meanwhile, and a delete of a missing
            // element fails its whole batch.
            for ip in list {
                match self.writer()?.delete(TABLE, set, &[ip]) {
                    Ok(()) | Err(egret_datapath::SetElemError::NotFound { .. }) => {}
                    Err(e) => {
                        self.writer = None;
                        return Err(format!("set {set}: {e}"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Re-reads what the kernel sets of `plan`'s name rules still hold (learned by an earlier run
/// of the agent; the sets outlive it), so limits and the audit log's names carry on.
pub fn restore(cfg: &Config, plan: &NodePlan, shared: &Shared) -> usize {
    let now = Instant::now();
    let mut n = 0;
    let Ok(mut learned) = shared.learned.lock() else { return 0 };
    for (v4, v6) in name_sets(plan).into_values() {
        for set in [v4, v6] {
            match egret_datapath::setwriter::read_set(cfg, TABLE, &set) {
                Ok(live) => {
                    for e in live {
                        let expires = now + e.expires.unwrap_or_default();
                        learned.restore(&set, e.addr, e.comment.as_deref().unwrap_or(""), expires);
                        n += 1;
                    }
                }
                Err(e) => tracing::warn!(set, "reading learned addresses: {e}"),
            }
        }
    }
    n
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(duration("7").unwrap(), Duration::from_secs(7));
        assert_eq!(duration("2m").unwrap(), Duration::from_secs(120));
        assert!(duration("5h").is_err() && duration("x").is_err());
    }
}
