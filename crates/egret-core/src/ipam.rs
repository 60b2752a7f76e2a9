//! Egress IP allocation: pure and deterministic.
//!
//! Order of work, so that a restart never moves an IP that is in use:
//! 1. restore every allocation recorded in status (`egressIP`, `gateways`) that is still valid;
//! 2. claim static `spec.egressIP`s that lie in a pool (several Egresses may share one static IP);
//! 3. hand out the lowest free address, ranges in spec order, to the rest (oldest Egress first).
//!
//! Each step covers every egress IP an Egress asks for (one per entry of `egressIPs` or
//! `externalIPPools`).

use crate::model::{Egress, IpSpec, Pool};
use crate::net::{from_u128, to_u128};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Why an Egress has no egress IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocFailure {
    /// CamelCase reason for the `IPAllocated=False` condition.
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
}

/// An egress IP held by an Egress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocated {
    /// The address.
    pub ip: IpAddr,
    /// Whether it came from a pool (false: a static IP outside any pool, configured on a node).
    pub from_pool: bool,
}

/// Use of one pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Addresses the pool can hand out.
    pub total: u128,
    /// Distinct addresses allocated.
    pub used: u128,
}

/// The outcome of an allocation round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocations {
    /// Per Egress, per egress IP of its spec (in order): the IP or why it has none; `None` for
    /// a gateway node's own address (`gatewayNodes`), which is not allocated.
    pub egresses: BTreeMap<String, Vec<Option<Result<Allocated, AllocFailure>>>>,
    /// Per pool: its usage.
    pub usage: BTreeMap<String, Usage>,
}

#[derive(Default)]
struct PoolState {
    /// Address -> whether it is held statically, and by whom.
    used: BTreeMap<u128, (bool, Vec<String>)>,
    /// Where the search for the lowest free address starts (range index, address): during
    /// dynamic allocation addresses are only taken, so everything before the last address
    /// handed out is taken and each search resumes there (linear, not quadratic, in Egresses).
    from: (usize, u128),
}

/// Allocates egress IPs for every Egress from the pools.
pub fn allocate(pools: &BTreeMap<String, Pool>, egresses: &BTreeMap<String, Egress>) -> Allocations {
    let mut state: BTreeMap<&str, PoolState> = pools.keys().map(|k| (k.as_str(), PoolState::default())).collect();
    let mut order: Vec<&Egress> = egresses.values().collect();
    order.sort_by(|a, b| a.age_key().cmp(&b.age_key()));
    // Per Egress, per IP spec: the outcome once decided.
    type Slot = Option<Result<Allocated, AllocFailure>>;
    let mut slots: BTreeMap<&str, Vec<Slot>> =
        order.iter().map(|e| (e.name.as_str(), vec![None; e.ips.len()])).collect();
    let mut each = |f: &mut dyn FnMut(&Egress, &IpSpec, &mut Slot)| {
        for e in &order {
            let Some(out) = slots.get_mut(e.name.as_str()) else { continue };
            for (spec, slot) in e.ips.iter().zip(out.iter_mut()) {
                if slot.is_none() {
                    f(e, spec, slot);
                }
            }
        }
    };

    // Static IPs without a pool need no allocation: the node that owns the address is the gateway.
    each(&mut |_, s, slot| {
        if let (Some(ip), None) = (s.ip, &s.pool) {
            *slot = Some(Ok(Allocated { ip, from_pool: false }));
        }
    });

    // 1. Restore.
    each(&mut |e, s, slot| {
        let (Some(pname), Some(ip)) = (&s.pool, s.status_ip) else {
            return;
        };
        let (Some(pool), Some(st)) = (pools.get(pname), state.get_mut(pname.as_str())) else {
            return;
        };
        if !pool.contains(&ip) || s.ip.is_some_and(|s| s != ip) {
            return;
        }
        let is_static = s.ip.is_some();
        let used = st.used.entry(to_u128(&ip)).or_insert((is_static, Vec::new()));
        if used.1.is_empty() || (used.0 && is_static) {
            used.1.push(e.name.clone());
            *slot = Some(Ok(Allocated { ip, from_pool: true }));
        }
    });

    // 2. Static IPs inside a pool.
    each(&mut |e, s, slot| {
        let (Some(pname), Some(ip)) = (&s.pool, s.ip) else {
            return;
        };
        let Some(st) = state.get_mut(pname.as_str()) else {
            *slot = Some(Err(pool_missing(pname)));
            return;
        };
        let used = st.used.entry(to_u128(&ip)).or_insert((true, Vec::new()));
        if used.1.is_empty() || used.0 {
            used.0 = true;
            used.1.push(e.name.clone());
            *slot = Some(Ok(Allocated { ip, from_pool: true }));
        } else {
            let holder = used.1.first().cloned().unwrap_or_default();
            *slot = Some(Err(AllocFailure {
                reason: "IPConflict",
                message: format!("{ip} is already allocated to Egress {holder:?} from ExternalIPPool {pname:?}"),
            }));
        }
    });

    // 3. Dynamic allocation.
    each(&mut |e, s, slot| {
        let Some(pname) = &s.pool else { return };
        let (Some(pool), Some(st)) = (pools.get(pname), state.get_mut(pname.as_str())) else {
            *slot = Some(Err(pool_missing(pname)));
            return;
        };
        *slot = Some(match lowest_free(pool, st) {
            Some((ri, v)) => {
                st.from = (ri, v);
                st.used.insert(v, (false, vec![e.name.clone()]));
                Ok(Allocated { ip: from_u128(pool.family, v), from_pool: true })
            }
            None => {
                let total = pool.total();
                Err(AllocFailure {
                    reason: "PoolExhausted",
                    message: format!("ExternalIPPool {pname:?} has no free address ({total} of {total} in use)"),
                })
            }
        });
    });

    let mut out = Allocations::default();
    for (name, s) in slots {
        // Every spec with a pool or a static IP is decided; gateway nodes' addresses are not.
        out.egresses.insert(name.to_string(), s);
    }
    for (name, pool) in pools {
        let used = state.get(name.as_str()).map_or(0, |s| s.used.len() as u128);
        out.usage.insert(name.clone(), Usage { total: pool.total(), used });
    }
    out
}

fn pool_missing(pname: &str) -> AllocFailure {
    AllocFailure { reason: "PoolNotFound", message: format!("ExternalIPPool {pname:?} does not exist or is invalid") }
}

fn lowest_free(pool: &Pool, st: &PoolState) -> Option<(usize, u128)> {
    for (ri, r) in pool.ranges.iter().enumerate().skip(st.from.0) {
        let mut cur = if ri == st.from.0 { r.start.max(st.from.1) } else { r.start };
        if cur > r.end {
            continue;
        }
        for (&k, _) in st.used.range(cur..=r.end) {
            if k != cur {
                break;
            }
            if cur == r.end {
                break;
            }
            cur += 1;
        }
        if !st.used.contains_key(&cur) && cur <= r.end {
            return Some((ri, cur));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use crate::validate::{Reserved, validate};
    use egret_api::v1alpha1 as api;

    fn run(pools: Vec<api::ExternalIPPool>, egresses: Vec<api::Egress>) -> Allocations {
        let v = validate(&pools, &egresses, &Reserved::default());
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        allocate(&v.pools, &v.egresses)
    }

    /// The first IP an Egress has.
    fn first_ip(a: &Allocations, egress: &str) -> Option<IpAddr> {
        a.egresses.get(egress).into_iter().flatten().flatten().find_map(|r| r.as_ref().ok()).map(|a| a.ip)
    }

    fn ips(a: &Allocations) -> Vec<(String, String)> {
        a.egresses
            .iter()
            .flat_map(|(k, v)| v.iter().flatten().map(move |v| (k, v)))
            .map(|(k, v)| (k.clone(), v.as_ref().map(|a| a.ip.to_string()).unwrap_or_else(|e| e.reason.to_string())))
            .collect()
    }

    fn cidr_pool(c: &str) -> api::ExternalIPPool {
        mk_pool("p", &[], &[c])
    }

    fn n_egresses(n: usize) -> Vec<api::Egress> {
        (0..n).map(|i| mk_egress(&format!("e{i:02}"), Some("p"), None)).collect()
    }

    #[test]
    fn seed_002_allocates_lowest_addresses_in_order() {
        let mut a = mk_egress("egress-prod-web", Some("external-ip-pool"), None);
        a.metadata.creation_timestamp = Some(ts(1));
        let mut b = mk_egress("egress-staging-web", Some("external-ip-pool"), None);
        b.metadata.creation_timestamp = Some(ts(2));
        let r = run(vec![mk_pool("external-ip-pool", &[("10.10.0.11", "10.10.0.20")], &[])], vec![b, a]);
        assert_eq!(first_ip(&r, "egress-prod-web"), Some("10.10.0.11".parse().unwrap()));
        assert_eq!(first_ip(&r, "egress-staging-web"), Some("10.10.0.12".parse().unwrap()));
        assert_eq!(r.usage["external-ip-pool"], Usage { total: 10, used: 2 });
    }

    #[test]
    fn v4_slash_30_has_two_usable_addresses() {
        let r = run(vec![cidr_pool("10.0.0.0/30")], n_egresses(3));
        assert_eq!(
            ips(&r),
            vec![
                ("e00".into(), "10.0.0.1".into()),
                ("e01".into(), "10.0.0.2".into()),
                ("e02".into(), "PoolExhausted".into())
            ]
        );
        assert_eq!(r.usage["p"], Usage { total: 2, used: 2 });
    }

    #[test]
    fn v6_slash_124_has_fifteen_usable_addresses() {
        let r = run(vec![cidr_pool("fd00::/124")], n_egresses(16));
        assert_eq!(first_ip(&r, "e00"), Some("fd00::1".parse().unwrap()));
        assert_eq!(first_ip(&r, "e14"), Some("fd00::f".parse().unwrap()));
        assert_eq!(r.egresses["e15"][0].clone().unwrap().unwrap_err().reason, "PoolExhausted");
        assert_eq!(r.usage["p"].total, 15);
    }

    #[test]
    fn single_address_ranges() {
        let r = run(vec![mk_pool("p", &[("10.0.0.7", "10.0.0.7")], &[])], n_egresses(2));
        assert_eq!(ips(&r), vec![("e00".into(), "10.0.0.7".into()), ("e01".into(), "PoolExhausted".into())]);
        let r = run(vec![cidr_pool("10.0.0.9/32")], n_egresses(2));
        assert_eq!(first_ip(&r, "e00"), Some("10.0.0.9".parse().unwrap()));
        assert_eq!(r.usage["p"].total, 1);
        let r = run(vec![cidr_pool("10.0.0.8/31")], n_egresses(2));
        assert_eq!(ips(&r), vec![("e00".into(), "10.0.0.8".into()), ("e01".into(), "10.0.0.9".into())]);
        let r = run(vec![cidr_pool("fd00::5/128")], n_egresses(1));
        assert_eq!(first_ip(&r, "e00"), Some("fd00::5".parse().unwrap()));
    }

    #[test]
    fn ranges_are_used_in_spec_order() {
        let r = run(vec![mk_pool("p", &[("10.0.0.20", "10.0.0.20")], &["10.0.0.0/29"])], n_egresses(3));
        assert_eq!(ips(&r).into_iter().map(|x| x.1).collect::<Vec<_>>(), vec!["10.0.0.20", "10.0.0.1", "10.0.0.2"]);
    }

    #[test]
    fn gaps_left_by_restores_and_statics_are_filled_lowest_first_across_ranges() {
        // Ranges .1-.3 and .10-.12; .2 restored, .11 static: the others fill .1, .3, .10, .12.
        let mut eg = n_egresses(6);
        eg[5].status = Some(api::EgressStatus { egress_ip: Some("10.0.0.2".into()), ..Default::default() });
        eg[4].spec.egress_ip = Some("10.0.0.11".into());
        let r = run(vec![mk_pool("p", &[("10.0.0.1", "10.0.0.3"), ("10.0.0.10", "10.0.0.12")], &[])], eg.clone());
        let got: Vec<String> = ips(&r).into_iter().map(|x| x.1).collect();
        assert_eq!(got, vec!["10.0.0.1", "10.0.0.3", "10.0.0.10", "10.0.0.12", "10.0.0.11", "10.0.0.2"]);
        // One more Egress than addresses: the last is refused, the others keep theirs.
        eg.push(mk_egress("e06", Some("p"), None));
        let r = run(vec![mk_pool("p", &[("10.0.0.1", "10.0.0.3"), ("10.0.0.10", "10.0.0.12")], &[])], eg);
        assert_eq!(r.egresses["e06"][0].clone().unwrap().unwrap_err().reason, "PoolExhausted");
        assert_eq!(first_ip(&r, "e03"), Some("10.0.0.12".parse().unwrap()));
    }

    #[test]
    fn restore_happens_before_new_allocations() {
        let mut eg = n_egresses(3);
        eg[2].status = Some(api::EgressStatus { egress_ip: Some("10.0.0.1".into()), ..Default::default() });
        let r = run(vec![cidr_pool("10.0.0.0/29")], eg);
        assert_eq!(ips(&r).into_iter().map(|x| x.1).collect::<Vec<_>>(), vec!["10.0.0.2", "10.0.0.3", "10.0.0.1"]);
    }

    #[test]
    fn stale_status_outside_the_pool_is_reallocated() {
        let mut eg = n_egresses(1);
        eg[0].status = Some(api::EgressStatus { egress_ip: Some("192.0.2.1".into()), ..Default::default() });
        assert_eq!(first_ip(&run(vec![cidr_pool("10.0.0.0/29")], eg), "e00"), Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn two_restores_of_one_address_keep_the_oldest() {
        let mut eg = n_egresses(2);
        for e in &mut eg {
            e.status = Some(api::EgressStatus { egress_ip: Some("10.0.0.3".into()), ..Default::default() });
        }
        let r = run(vec![cidr_pool("10.0.0.0/29")], eg);
        assert_eq!(first_ip(&r, "e00"), Some("10.0.0.3".parse().unwrap()));
        assert_eq!(first_ip(&r, "e01"), Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn static_ip_conflicting_with_an_allocation_is_a_condition() {
        let mut eg = n_egresses(2);
        eg[0].status = Some(api::EgressStatus { egress_ip: Some("10.0.0.1".into()), ..Default::default() });
        eg[1].spec.egress_ip = Some("10.0.0.1".into());
        let r = run(vec![cidr_pool("10.0.0.0/29")], eg);
        let f = r.egresses["e01"][0].clone().unwrap().unwrap_err();
        assert_eq!(f.reason, "IPConflict");
        assert!(f.message.contains("e00"));
    }

    #[test]
    fn static_ips_may_be_shared_and_are_not_handed_out() {
        let mut eg = n_egresses(3);
        eg[1].spec.egress_ip = Some("10.0.0.1".into());
        eg[2].spec.egress_ip = Some("10.0.0.1".into());
        let r = run(vec![cidr_pool("10.0.0.0/29")], eg);
        assert_eq!(ips(&r).into_iter().map(|x| x.1).collect::<Vec<_>>(), vec!["10.0.0.2", "10.0.0.1", "10.0.0.1"]);
        assert_eq!(r.usage["p"].used, 2);
    }

    #[test]
    fn static_without_pool_needs_no_allocation() {
        let e = mk_egress("s", None, Some("10.10.0.104"));
        let r = run(vec![], vec![e]);
        assert_eq!(r.egresses["s"][0], Some(Ok(Allocated { ip: "10.10.0.104".parse().unwrap(), from_pool: false })));
    }

    #[test]
    fn allocation_is_independent_of_input_order() {
        let pools = vec![cidr_pool("10.0.0.0/28")];
        let mut eg = n_egresses(6);
        let a = run(pools.clone(), eg.clone());
        eg.reverse();
        assert_eq!(a, run(pools, eg));
    }
}
