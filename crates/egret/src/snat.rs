//! SNAT source-port pressure: an egress IP has about 64k source ports per destination address,
//! port and protocol; a busy Egress toward one endpoint can run out, and its new connections
//! then fail with nothing to say why. Every few seconds the conntrack entries SNATed to each
//! egress IP hosted here are counted; the busiest destination's share is exported and a
//! warning logged when it crosses `--snat-warn-utilization`.

use crate::metrics::Metrics;
use egret_datapath::conntrack::{SNAT_PORTS, SnatUse};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often the conntrack table is read.
const EVERY: Duration = Duration::from_secs(5);

/// The IPs whose use crossed `warn_at` since the last look, and those back under it (pure).
pub fn crossings(
    usage: &[(IpAddr, SnatUse)],
    warned: &BTreeSet<IpAddr>,
    warn_at: f64,
) -> (Vec<(IpAddr, SnatUse)>, Vec<IpAddr>) {
    let over: Vec<(IpAddr, SnatUse)> =
        usage.iter().filter(|(ip, u)| u.utilization() >= warn_at && !warned.contains(ip)).copied().collect();
    let under =
        warned.iter().filter(|ip| usage.iter().all(|(i, u)| i != *ip || u.utilization() < warn_at)).copied().collect();
    (over, under)
}

/// Reads, exports and warns until `stop`.
pub fn watch(cfg: &egret_datapath::Config, m: &Metrics, stop: &AtomicBool, warn_at: f64) {
    let mut warned = BTreeSet::new();
    let mut seen: BTreeSet<IpAddr> = BTreeSet::new();
    let mut said_missing = false;
    while !stop.load(Ordering::Relaxed) {
        let ips: Vec<IpAddr> = m.hosted_ips.read().map(|h| h.iter().copied().collect()).unwrap_or_default();
        match egret_datapath::snat_usage(cfg, &ips) {
            Ok(Some(usage)) => {
                let usage: Vec<(IpAddr, SnatUse)> = usage.into_iter().collect();
                // Only what is no longer hosted goes: a scrape never sees a hosted IP missing.
                for gone in seen.iter().filter(|ip| !usage.iter().any(|(i, _)| i == *ip)) {
                    let l = vec![("egress_ip".to_string(), gone.to_string())];
                    m.snat_entries.remove(&l);
                    m.snat_utilization.remove(&l);
                }
                seen = usage.iter().map(|(ip, _)| *ip).collect();
                for (ip, u) in &usage {
                    let l = vec![("egress_ip".to_string(), ip.to_string())];
                    m.snat_entries.get_or_create(&l).set(u.entries as i64);
                    m.snat_utilization.get_or_create(&l).set(u.utilization());
                }
                let (over, under) = crossings(&usage, &warned, warn_at);
                for (ip, u) in over {
                    let dst =
                        u.busiest_dst.map(|(a, p, port)| format!("{a}:{port} (protocol {p})")).unwrap_or_default();
                    tracing::warn!(
                        egress_ip = %ip,
                        destination = %dst,
                        used = u.busiest,
                        available = SNAT_PORTS,
                        "SNAT source ports of an egress IP toward one destination are {:.0}% used: new connections to it will fail when they run out",
                        u.utilization() * 100.0
                    );
                    warned.insert(ip);
                }
                for ip in under {
                    tracing::info!(egress_ip = %ip, "SNAT source-port use back under the warning threshold");
                    warned.remove(&ip);
                }
            }
            Ok(None) => {
                if !said_missing {
                    tracing::warn!("the conntrack tool is missing: SNAT source-port use is not measured");
                    said_missing = true;
                }
            }
            Err(e) => tracing::warn!("reading SNAT source-port use: {e}"),
        }
        std::thread::sleep(EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn use_of(busiest: usize) -> SnatUse {
        SnatUse { entries: busiest, busiest, busiest_dst: None }
    }

    #[test]
    fn a_crossing_is_said_once_and_again_after_falling_back() {
        let a = IpAddr::from([10, 10, 0, 11]);
        let b: IpAddr = "fd00:10:10::e1".parse().unwrap();
        let half = SNAT_PORTS / 2;
        let mut warned = BTreeSet::new();
        let (over, under) = crossings(&[(a, use_of(half)), (b, use_of(10))], &warned, 0.5);
        assert_eq!(over.iter().map(|o| o.0).collect::<Vec<_>>(), vec![a]);
        assert!(under.is_empty());
        warned.insert(a);
        // Still over: nothing new.
        let (over, under) = crossings(&[(a, use_of(half + 5))], &warned, 0.5);
        assert!(over.is_empty() && under.is_empty());
        // Under again (or no longer hosted): re-armed.
        let (_, under) = crossings(&[(a, use_of(half - 1))], &warned, 0.5);
        assert_eq!(under, vec![a]);
        let (_, under) = crossings(&[], &warned, 0.5);
        assert_eq!(under, vec![a]);
    }
}
