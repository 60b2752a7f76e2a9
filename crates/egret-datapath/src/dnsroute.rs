//! Policy routing that delivers the DNS queries the `dns` chain marked to the local DNS proxy:
//! a fwmark rule per family into [`Config::dns_table`], which holds `local` default routes
//! through loopback (the TPROXY recipe). Kept apart from the tunnel's routing state: these few
//! objects never change with the plan.

use crate::DatapathError;
use crate::config::Config;
use futures_util::TryStreamExt;
use netlink_packet_route::route::{RouteMessage, RouteScope, RouteType};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};
use std::net::{Ipv4Addr, Ipv6Addr};

fn nl(what: &str) -> impl FnOnce(rtnetlink::Error) -> DatapathError + '_ {
    move |source| DatapathError::Netlink { what: what.to_string(), source }
}

/// Whether `plan` hands any pod's DNS to the proxy (a pod of this node under a name rule).
pub fn needed(plan: &egret_core::planner::NodePlan) -> bool {
    let f = &plan.firewall;
    f.pods.iter().any(|p| f.sets.get(p.set).is_some_and(|s| s.compiled.has_names()))
}

/// The rule's priority: just before the tunnel's rules.
fn priority(cfg: &Config) -> u32 {
    cfg.rule_priority.saturating_sub(1)
}

async fn our_rules(h: &Handle, cfg: &Config, v: IpVersion) -> Result<Vec<RuleMessage>, DatapathError> {
    let mut out = Vec::new();
    let mut rules = h.rule().get(v).execute();
    while let Some(r) = rules.try_next().await.map_err(nl("dump rules"))? {
        let table = r.attributes.iter().find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        });
        if table.unwrap_or(r.header.table as u32) == cfg.dns_table() {
            out.push(r);
        }
    }
    Ok(out)
}

async fn our_routes(h: &Handle, cfg: &Config, v6: bool) -> Result<Vec<RouteMessage>, DatapathError> {
    let filter = if v6 {
        RouteMessageBuilder::<Ipv6Addr>::new().table_id(cfg.dns_table()).build()
    } else {
        RouteMessageBuilder::<Ipv4Addr>::new().table_id(cfg.dns_table()).build()
    };
    let mut out = Vec::new();
    let mut routes = h.route().get(filter).execute();
    while let Some(r) = routes.try_next().await.map_err(nl("dump routes"))? {
        let table = r.attributes.iter().find_map(|a| match a {
            netlink_packet_route::route::RouteAttribute::Table(t) => Some(*t),
            _ => None,
        });
        if table.unwrap_or(r.header.table as u32) == cfg.dns_table() {
            out.push(r);
        }
    }
    Ok(out)
}

/// Makes sure the rules and routes exist; returns what was added.
pub async fn ensure(h: &Handle, cfg: &Config) -> Result<Vec<String>, DatapathError> {
    let mut added = Vec::new();
    let lo = loopback(h).await?;
    for v6 in [false, true] {
        let version = if v6 { IpVersion::V6 } else { IpVersion::V4 };
        let have = our_rules(h, cfg, version).await?;
        let ok = have.iter().any(|r| {
            r.attributes.contains(&RuleAttribute::FwMark(cfg.dns_mark()))
                && r.attributes.contains(&RuleAttribute::FwMask(cfg.mark_mask()))
                && r.attributes.contains(&RuleAttribute::Priority(priority(cfg)))
        });
        if !ok {
            let req = h.rule().add().priority(priority(cfg)).fw_mark(cfg.dns_mark()).table_id(cfg.dns_table());
            let done = if v6 {
                let mut req = req.v6().action(RuleAction::ToTable);
                req.message_mut().attributes.push(RuleAttribute::FwMask(cfg.mark_mask()));
                req.execute().await
            } else {
                let mut req = req.v4().action(RuleAction::ToTable);
                req.message_mut().attributes.push(RuleAttribute::FwMask(cfg.mark_mask()));
                req.execute().await
            };
            done.map_err(nl("add the DNS proxy's rule"))?;
            added.push(format!(
                "rule pref {} fwmark {:#x} table {} ({})",
                priority(cfg),
                cfg.dns_mark(),
                cfg.dns_table(),
                if v6 { "IPv6" } else { "IPv4" }
            ));
        }
        if our_routes(h, cfg, v6).await?.is_empty() {
            let msg = if v6 {
                RouteMessageBuilder::<Ipv6Addr>::new()
                    .table_id(cfg.dns_table())
                    .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
                    .kind(RouteType::Local)
                    .scope(RouteScope::Host)
                    .output_interface(lo)
                    .build()
            } else {
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .table_id(cfg.dns_table())
                    .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
                    .kind(RouteType::Local)
                    .scope(RouteScope::Host)
                    .output_interface(lo)
                    .build()
            };
            h.route().add(msg).replace().execute().await.map_err(nl("add the DNS proxy's local route"))?;
            added.push(format!(
                "route local default dev lo table {} ({})",
                cfg.dns_table(),
                if v6 { "IPv6" } else { "IPv4" }
            ));
        }
    }
    Ok(added)
}

/// Removes the rules and routes; returns what was removed.
pub async fn remove(h: &Handle, cfg: &Config) -> Result<Vec<String>, DatapathError> {
    let mut removed = Vec::new();
    for v6 in [false, true] {
        let version = if v6 { IpVersion::V6 } else { IpVersion::V4 };
        for r in our_rules(h, cfg, version).await? {
            h.rule().del(r).execute().await.map_err(nl("delete the DNS proxy's rule"))?;
            removed.push(format!("DNS proxy rule ({})", if v6 { "IPv6" } else { "IPv4" }));
        }
        for r in our_routes(h, cfg, v6).await? {
            h.route().del(r).execute().await.map_err(nl("delete the DNS proxy's route"))?;
            removed.push(format!("DNS proxy route ({})", if v6 { "IPv6" } else { "IPv4" }));
        }
    }
    Ok(removed)
}

async fn loopback(h: &Handle) -> Result<u32, DatapathError> {
    let mut links = h.link().get().match_name("lo").execute();
    match links.try_next().await.map_err(nl("find lo"))? {
        Some(l) => Ok(l.header.index),
        None => Err(DatapathError::Config("no loopback device".into())),
    }
}
