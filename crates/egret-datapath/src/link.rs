//! Kernel state through rtnetlink: Egret's VXLAN and address-holder devices, static FDB and
//! neighbour entries for peers, per-peer routing tables and fwmark rules, tunnel and hosted
//! addresses. State is read into a set of comparable [`Item`]s so that a sync adds and deletes
//! only what differs.

use crate::DatapathError;
use crate::config::{ADDR_PROTO, Config, OWNER_ALIAS, mac_string, tunnel_ll6, tunnel_mac};
use egret_core::ids::LocalIds;
use egret_core::planner::NodePlan;
use futures_util::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressProtocol, CacheInfo};
use netlink_packet_route::link::{
    AfSpecInet, AfSpecUnspec, InetDevConf, InfoData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, LinkDummy, LinkUnspec, LinkVxlan, RouteMessageBuilder};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One piece of kernel state Egret owns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Item {
    /// This node's tunnel address (its underlay IPv4 address) on the VXLAN device.
    TunnelAddr(Ipv4Addr, u8),
    /// VXLAN FDB entry: peer tunnel MAC -> peer underlay address.
    Fdb([u8; 6], Ipv4Addr),
    /// Permanent neighbour on the VXLAN device: peer tunnel address (its underlay address)
    /// -> peer tunnel MAC.
    Neigh(Ipv4Addr, [u8; 6]),
    /// Route in one of Egret's tables: (table, destination, prefix, gateway).
    Route(u32, Ipv4Addr, u8, Option<Ipv4Addr>),
    /// Rule: (priority, fwmark, fwmask, table).
    Rule(u32, u32, u32, u32),
    /// Permanent IPv6 neighbour on the VXLAN device: the next-hop label of a peer
    /// ([`tunnel_ll6`]) -> peer tunnel MAC.
    Neigh6(Ipv6Addr, [u8; 6]),
    /// IPv6 route in one of Egret's tables: (table, destination, prefix, gateway).
    Route6(u32, Ipv6Addr, u8, Option<Ipv6Addr>),
    /// IPv6 rule: (priority, fwmark, fwmask, table).
    Rule6(u32, u32, u32, u32),
    /// Egress IP hosted here (address, prefix length): IPv4 on the holder device, IPv6 on the
    /// underlay (see [`Net::add`]).
    Hosted(IpAddr, u8),
    /// The exit of an egress subnet: in one of Egret's tables, `default via GATEWAY` on the
    /// underlay, on-link: (table, gateway).
    ExitRoute(u32, Ipv4Addr),
    /// The exit of an interface's egress IP: in one of Egret's tables, `default via NEXT_HOP`
    /// on that interface, on-link: (table, next hop, interface index).
    InterfaceExitRoute(u32, Ipv4Addr, u32),
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::TunnelAddr(a, l) => write!(f, "tunnel address {a}/{l}"),
            Item::Fdb(m, d) => write!(f, "fdb {} dst {d}", mac_string(m)),
            Item::Neigh(a, m) => write!(f, "neighbour {a} lladdr {}", mac_string(m)),
            Item::Route(t, d, l, g) => match g {
                Some(g) => write!(f, "route {d}/{l} via {g} onlink table {t}"),
                None => write!(f, "route {d}/{l} table {t}"),
            },
            Item::Rule(p, m, k, t) => write!(f, "rule pref {p} fwmark {m:#x}/{k:#x} table {t}"),
            Item::Neigh6(a, m) => write!(f, "neighbour {a} lladdr {}", mac_string(m)),
            Item::Route6(t, d, l, g) => match g {
                Some(g) => write!(f, "route {d}/{l} via {g} table {t}"),
                None => write!(f, "route {d}/{l} table {t}"),
            },
            Item::Rule6(p, m, k, t) => write!(f, "rule (IPv6) pref {p} fwmark {m:#x}/{k:#x} table {t}"),
            Item::Hosted(a, l) => write!(f, "hosted address {a}/{l}"),
            Item::ExitRoute(t, g) => write!(f, "route 0.0.0.0/0 via {g} onlink (underlay) table {t}"),
            Item::InterfaceExitRoute(t, g, i) => write!(f, "route 0.0.0.0/0 via {g} onlink dev #{i} table {t}"),
        }
    }
}

/// The kernel message an item was read from, to delete exactly that object.
#[derive(Debug, Clone)]
pub enum Raw {
    /// An address.
    Addr(AddressMessage),
    /// A neighbour or FDB entry.
    Neigh(NeighbourMessage),
    /// A route.
    Route(RouteMessage),
    /// A rule.
    Rule(RuleMessage),
}

/// Interfaces a sync works with.
#[derive(Debug, Clone, Copy)]
pub struct Links {
    /// The underlay interface.
    pub underlay: u32,
    /// Its MAC address.
    pub underlay_mac: [u8; 6],
    /// Egret's VXLAN device.
    pub vxlan: u32,
    /// Egret's address-holder device.
    pub holder: u32,
}

/// The egress subnets of the IPs this node hosts.
pub fn subnets(plan: &NodePlan) -> BTreeSet<egret_core::model::Subnet> {
    plan.hosted.iter().filter_map(|h| h.subnet).collect()
}

/// The interface exits of a plan as resolved on this node (see [`Net::resolve_exits`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exits {
    /// Egress IP -> (interface index, next hop of the interface's default route).
    pub via: BTreeMap<IpAddr, (u32, Ipv4Addr)>,
    /// Egress IPs whose interface gives no way out, with why: their traffic is dropped.
    pub unresolved: BTreeMap<IpAddr, String>,
    /// The underlay's index: an exit through it is the same route as an egress subnet's.
    pub underlay: u32,
}

impl Exits {
    /// Moves to `unresolved` the exits whose next hop already keys another table (`taken`: a
    /// tunnel peer's address or an egress subnet's gateway), or that of an exit by another
    /// interface: one table cannot route by both, and their traffic must not leave by the
    /// other's way.
    fn drop_conflicts(&mut self, taken: &BTreeSet<Ipv4Addr>) {
        let clash: Vec<IpAddr> = self
            .via
            .iter()
            .filter(|(_, (dev, hop))| taken.contains(hop) || self.via.values().any(|(d, h)| h == hop && d != dev))
            .map(|(ip, _)| *ip)
            .collect();
        for ip in clash {
            if let Some((_, hop)) = self.via.remove(&ip) {
                self.unresolved.insert(
                    ip,
                    format!("its interface's next hop {hop} is also a tunnel peer, an egress subnet's gateway or another interface's next hop"),
                );
            }
        }
    }
}

/// Everything a local id is needed for, by its key: tunnel peers (their underlay address),
/// egress subnets (their gateway) and interface exits (their next hop), one id space (the mark
/// and table per id).
pub fn needed_ids(plan: &NodePlan, exits: &Exits) -> BTreeSet<Ipv4Addr> {
    let mut out: BTreeSet<Ipv4Addr> = tunnel_peers(plan).0.into_iter().map(|(_, ip)| ip).collect();
    out.extend(subnets(plan).into_iter().map(|s| s.gateway));
    out.extend(exits.via.values().map(|(_, hop)| *hop));
    out
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> DatapathError {
    let what = what.into();
    move |source| DatapathError::Netlink { what, source }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().raw_os_error(),
        _ => None,
    }
}

/// Local ids of this node's tunnel peers, keyed by the peer's underlay IPv4 address (its
/// identity in the datapath).
pub type PeerIds = LocalIds<Ipv4Addr>;

fn first_v4(ips: &[IpAddr]) -> Option<Ipv4Addr> {
    ips.iter().find_map(|ip| match ip {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    })
}

/// This node's tunnel address: its first IPv4 underlay address.
pub fn local_address(plan: &NodePlan) -> Option<Ipv4Addr> {
    first_v4(&plan.node_ips)
}

/// The peers a node can tunnel to, `(name, underlay IPv4)`, and the peers left out with why.
pub fn tunnel_peers(plan: &NodePlan) -> (Vec<(String, Ipv4Addr)>, Vec<String>) {
    let me = local_address(plan);
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for p in &plan.peers {
        match first_v4(&p.ips) {
            None => skipped.push(format!("peer {} has no IPv4 address: no IPv4 tunnel to it", p.name)),
            Some(ip) if Some(ip) == me => skipped.push(format!("peer {} has this node's address {ip}", p.name)),
            Some(ip) if !seen.insert(ip) => {
                skipped.push(format!("peer {} shares address {ip} with another peer: no tunnel to it", p.name))
            }
            Some(ip) => out.push((p.name.clone(), ip)),
        }
    }
    (out, skipped)
}

/// Whether this node steers or SNATs IPv6 traffic: only then does it need IPv6 routing for its
/// peers (a node whose kernel has IPv6 disabled keeps working for IPv4).
pub fn needs_ipv6(plan: &NodePlan) -> bool {
    plan.steer.iter().any(|s| s.source.is_ipv6()) || plan.snat.iter().any(|s| s.source.is_ipv6())
}

/// What the kernel must hold for `plan`, with `ids` the local ids of its peers and `exits` its
/// interface exits as resolved here (pure).
pub fn desired(cfg: &Config, plan: &NodePlan, ids: &PeerIds, exits: &Exits) -> BTreeSet<Item> {
    let v6 = needs_ipv6(plan);
    let mut out = BTreeSet::new();
    if let Some(me) = local_address(plan) {
        out.insert(Item::TunnelAddr(me, 32));
    }
    for (_, ip) in tunnel_peers(plan).0 {
        let Some(id) = ids.get(&ip) else { continue };
        let mac = tunnel_mac(ip);
        out.insert(Item::Fdb(mac, ip));
        out.insert(Item::Neigh(ip, mac));
        out.insert(Item::Route(cfg.table(id), Ipv4Addr::UNSPECIFIED, 0, Some(ip)));
        out.insert(Item::Rule(cfg.rule_priority, cfg.mark(id), cfg.mark_mask(), cfg.table(id)));
        if v6 {
            // The same table and mark for IPv6: the tunnel is IPv4 underneath, the peer is
            // reached by MAC, and a link-local label stands for it as the route's next hop.
            let ll = tunnel_ll6(mac);
            out.insert(Item::Neigh6(ll, mac));
            out.insert(Item::Route6(cfg.table(id), Ipv6Addr::UNSPECIFIED, 0, Some(ll)));
            out.insert(Item::Rule6(cfg.rule_priority, cfg.mark(id), cfg.mark_mask(), cfg.table(id)));
        }
    }
    for h in &plan.hosted {
        let len = if h.ip.is_ipv4() { 32 } else { 128 };
        out.insert(Item::Hosted(h.ip, len));
    }
    // Egress subnets: their traffic, marked on the way in (nft), leaves through their gateway.
    for s in subnets(plan) {
        let Some(id) = ids.get(&s.gateway) else { continue };
        out.insert(Item::ExitRoute(cfg.table(id), s.gateway));
        out.insert(Item::Rule(cfg.rule_priority, cfg.mark(id), cfg.mark_mask(), cfg.table(id)));
    }
    // Interface exits: the same, through the interface's next hop.
    for (dev, hop) in exits.via.values() {
        let Some(id) = ids.get(hop) else { continue };
        out.insert(if *dev == exits.underlay {
            Item::ExitRoute(cfg.table(id), *hop)
        } else {
            Item::InterfaceExitRoute(cfg.table(id), *hop, *dev)
        });
        out.insert(Item::Rule(cfg.rule_priority, cfg.mark(id), cfg.mark_mask(), cfg.table(id)));
    }
    out
}

/// The address of an address message, unless it is an IPv6 link-local one (the kernel's own).
fn address_of(a: &AddressMessage) -> Option<IpAddr> {
    let ip = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    })?;
    match ip {
        IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => None,
        ip => Some(ip),
    }
}

/// Whether the address carries Egret's address protocol (an egress IP it put there).
fn marked_ours(a: &AddressMessage) -> bool {
    a.attributes.iter().any(|x| matches!(x, AddressAttribute::Protocol(AddressProtocol::Other(p)) if *p == ADDR_PROTO))
}

fn link_alias(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(n) => Some(n.as_str()),
        _ => None,
    })
}

fn link_mac(m: &LinkMessage) -> Option<[u8; 6]> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) => <[u8; 6]>::try_from(b.as_slice()).ok(),
        _ => None,
    })
}

fn vxlan_info(m: &LinkMessage) -> Option<&Vec<InfoVxlan>> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(v)) => Some(v),
            _ => None,
        }),
        _ => None,
    })
}

/// A netlink connection in the calling thread's network namespace.
pub struct Net {
    /// The request handle.
    pub handle: Handle,
}

/// A device's IPv4 `forwarding` and `rp_filter`, as the kernel reports them in a link dump.
fn inet_conf(link: &LinkMessage) -> Option<(i32, i32)> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::AfSpecUnspec(specs) => specs.iter().find_map(|s| match s {
            AfSpecUnspec::Inet(inet) => inet.iter().find_map(|i| match i {
                AfSpecInet::DevConf(c) => Some((c.forwarding, c.rp_filter)),
                _ => None,
            }),
            _ => None,
        }),
        _ => None,
    })
}

impl Net {
    /// Opens the connection; its driver runs on the current (single-threaded) runtime.
    pub fn connect() -> Result<Net, DatapathError> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| DatapathError::Io("netlink socket".into(), e))?;
        tokio::spawn(conn);
        Ok(Net { handle })
    }

    /// The link called `name`, if any.
    pub async fn link(&self, name: &str) -> Result<Option<LinkMessage>, DatapathError> {
        let r = self.handle.link().get().match_name(name.to_string()).execute().try_next().await;
        match r {
            Ok(m) => Ok(m),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(nl(format!("get link {name}"))(e)),
        }
    }

    /// The addresses of the interfaces `names` that exist, in the kernel's order (the primary
    /// first), without IPv6 link-local ones and without the egress IPs Egret hosts: what an
    /// agent publishes for `gatewayNodes[].interface`.
    pub async fn interface_addresses(
        &self,
        names: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, Vec<IpAddr>>, DatapathError> {
        let mut by_index: BTreeMap<u32, &String> = BTreeMap::new();
        for n in names {
            if let Some(l) = self.link(n).await? {
                by_index.insert(l.header.index, n);
            }
        }
        let mut out: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        if by_index.is_empty() {
            return Ok(out);
        }
        let mut addrs = self.handle.address().get().execute();
        while let Some(a) = addrs.try_next().await.map_err(nl("dump addresses"))? {
            let Some(name) = by_index.get(&a.header.index) else { continue };
            if let Some(ip) = address_of(&a)
                && !marked_ours(&a)
            {
                out.entry((*name).clone()).or_default().push(ip);
            }
        }
        Ok(out)
    }

    /// Resolves the plan's interface exits: each egress IP's interface, and the next hop of the
    /// interface's default route in the main table (the lowest metric). An IP whose interface
    /// does not exist, or has no such route, or that is IPv6, is unresolved (its traffic is
    /// dropped, never sent another way).
    pub async fn resolve_exits(&self, cfg: &Config, plan: &NodePlan) -> Result<Exits, DatapathError> {
        let mut out = Exits::default();
        if plan.interface_exits.is_empty() {
            return Ok(out);
        }
        out.underlay = self.link(&cfg.underlay).await?.map_or(u32::MAX, |l| l.header.index);
        // Default routes of the main table with a gateway: (interface, metric, next hop).
        let mut defaults: Vec<(u32, u32, Ipv4Addr)> = Vec::new();
        let mut routes = self.handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
        while let Some(r) = routes.try_next().await.map_err(nl("dump routes"))? {
            if route_table(&r) != u32::from(libc::RT_TABLE_MAIN) || r.header.destination_prefix_length != 0 {
                continue;
            }
            let metric =
                r.attributes.iter().find_map(|a| if let RouteAttribute::Priority(p) = a { Some(*p) } else { None });
            if let (_, Some(IpAddr::V4(g)), Some(oif)) = route_fields(&r) {
                defaults.push((oif, metric.unwrap_or(0), g));
            }
        }
        for e in &plan.interface_exits {
            if e.ip.is_ipv6() {
                out.unresolved
                    .insert(e.ip, format!("{}: IPv6 egress IPs of an interface are not supported", e.interface));
                continue;
            }
            let Some(link) = self.link(&e.interface).await? else {
                out.unresolved.insert(e.ip, format!("interface {} does not exist", e.interface));
                continue;
            };
            let dev = link.header.index;
            match defaults.iter().filter(|(oif, _, _)| *oif == dev).min_by_key(|(_, metric, _)| *metric) {
                Some((_, _, hop)) => {
                    out.via.insert(e.ip, (dev, *hop));
                }
                None => {
                    out.unresolved.insert(
                        e.ip,
                        format!("interface {} has no default route with a gateway in the main table", e.interface),
                    );
                }
            }
        }
        let mut taken: BTreeSet<Ipv4Addr> = tunnel_peers(plan).0.into_iter().map(|(_, ip)| ip).collect();
        taken.extend(subnets(plan).into_iter().map(|s| s.gateway));
        out.drop_conflicts(&taken);
        Ok(out)
    }

    /// Sets the IPv4 `forwarding` and `rp_filter` of device `name` over netlink (`RTM_SETLINK`
    /// with `IFLA_AF_SPEC`), when they differ: that needs `CAP_NET_ADMIN` only, where writing
    /// `/proc/sys` needs it mounted writable, which container runtimes do not do for an
    /// unprivileged container.
    pub async fn ensure_inet_conf(
        &self,
        name: &str,
        forwarding: i32,
        rp_filter: i32,
        changes: &mut Vec<String>,
    ) -> Result<(), DatapathError> {
        let link = self
            .link(name)
            .await?
            .ok_or_else(|| DatapathError::Io(name.into(), std::io::ErrorKind::NotFound.into()))?;
        if inet_conf(&link) == Some((forwarding, rp_filter)) {
            return Ok(());
        }
        let mut conf = InetDevConf::default();
        conf.forwarding = forwarding;
        conf.rp_filter = rp_filter;
        let mut msg = LinkUnspec::new_with_index(link.header.index).build();
        msg.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![AfSpecInet::DevConfRequest(conf)])]));
        self.handle.link().set(msg).execute().await.map_err(nl(format!("set ipv4 settings of {name}")))?;
        changes.push(format!("{name}: ipv4 forwarding={forwarding} rp_filter={rp_filter}"));
        Ok(())
    }

    async fn set_up_alias(&self, index: u32, name: &str) -> Result<(), DatapathError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).alias(OWNER_ALIAS).up().build())
            .execute()
            .await
            .map_err(nl(format!("set {name} up")))
    }

    async fn delete_link(&self, index: u32, name: &str) -> Result<(), DatapathError> {
        self.handle.link().del(index).execute().await.map_err(nl(format!("delete link {name}")))
    }

    /// Creates or repairs Egret's devices; returns them and what changed.
    pub async fn ensure_links(
        &self,
        cfg: &Config,
        plan: &NodePlan,
        changes: &mut Vec<String>,
    ) -> Result<Links, DatapathError> {
        let under = self.link(&cfg.underlay).await?.ok_or_else(|| DatapathError::NoUnderlay(cfg.underlay.clone()))?;
        let underlay = under.header.index;
        let underlay_mac = link_mac(&under).ok_or_else(|| DatapathError::NoUnderlay(cfg.underlay.clone()))?;
        let local = local_address(plan).ok_or_else(|| DatapathError::NoNodeAddress(plan.node.clone()))?;
        let mac = tunnel_mac(local);

        // VXLAN: recreate only when its identity (VNI, port, endpoints) changed.
        let want_info = [
            InfoVxlan::Id(cfg.vni),
            InfoVxlan::Port(cfg.vxlan_port),
            InfoVxlan::Local(local),
            InfoVxlan::Link(underlay),
            InfoVxlan::Learning(false),
        ];
        let mut vx = self.link(&cfg.vxlan_name).await?;
        if let Some(l) = &vx {
            if link_alias(l) != Some(OWNER_ALIAS) {
                return Err(DatapathError::NotOurs(cfg.vxlan_name.clone()));
            }
            let have = vxlan_info(l);
            let same = have.is_some_and(|h| want_info.iter().all(|w| h.contains(w)));
            if !same {
                changes.push(format!("link {}: VXLAN settings changed, recreated", cfg.vxlan_name));
                self.delete_link(l.header.index, &cfg.vxlan_name).await?;
                vx = None;
            }
        }
        let vx = match vx {
            Some(l) => l,
            None => {
                let msg = LinkVxlan::new(&cfg.vxlan_name, cfg.vni)
                    .dev(underlay)
                    .port(cfg.vxlan_port)
                    .local(local)
                    .learning(false)
                    .address(mac.to_vec())
                    .build();
                self.handle.link().add(msg).execute().await.map_err(nl(format!("create VXLAN {}", cfg.vxlan_name)))?;
                changes.push(format!(
                    "link {}: created (VNI {}, UDP {}, local {local}, dev {})",
                    cfg.vxlan_name, cfg.vni, cfg.vxlan_port, cfg.underlay
                ));
                self.link(&cfg.vxlan_name)
                    .await?
                    .ok_or_else(|| DatapathError::Verify(vec![format!("{} vanished", cfg.vxlan_name)]))?
            }
        };
        if link_mac(&vx) != Some(mac) {
            self.handle
                .link()
                .set(LinkUnspec::new_with_index(vx.header.index).address(mac.to_vec()).build())
                .execute()
                .await
                .map_err(nl(format!("set MAC of {}", cfg.vxlan_name)))?;
            changes.push(format!("link {}: MAC set to {}", cfg.vxlan_name, mac_string(&mac)));
        }
        if link_alias(&vx) != Some(OWNER_ALIAS) || !vx.header.flags.contains(LinkFlags::Up) {
            self.set_up_alias(vx.header.index, &cfg.vxlan_name).await?;
            changes.push(format!("link {}: up", cfg.vxlan_name));
        }

        // Holder: a dummy device; kernels built without dummy get an ifb device, which
        // likewise carries addresses and never passes traffic on its own.
        let holder = match self.link(&cfg.holder_name).await? {
            Some(l) if link_alias(&l) != Some(OWNER_ALIAS) => {
                return Err(DatapathError::NotOurs(cfg.holder_name.clone()));
            }
            Some(l) => l,
            None => {
                let r = self.handle.link().add(LinkDummy::new(&cfg.holder_name).build()).execute().await;
                match r {
                    Ok(()) => {}
                    Err(e) if errno(&e) == Some(libc::EOPNOTSUPP) => {
                        tracing::warn!(
                            device = %cfg.holder_name,
                            "kernel has no dummy devices; holding egress IPs on an ifb device"
                        );
                        self.handle
                            .link()
                            .add(rtnetlink::LinkIfb::new(&cfg.holder_name).build())
                            .execute()
                            .await
                            .map_err(nl(format!("create ifb {}", cfg.holder_name)))?;
                    }
                    Err(e) => return Err(nl(format!("create dummy {}", cfg.holder_name))(e)),
                }
                changes.push(format!("link {}: created", cfg.holder_name));
                self.link(&cfg.holder_name)
                    .await?
                    .ok_or_else(|| DatapathError::Verify(vec![format!("{} vanished", cfg.holder_name)]))?
            }
        };
        if link_alias(&holder) != Some(OWNER_ALIAS) || !holder.header.flags.contains(LinkFlags::Up) {
            self.set_up_alias(holder.header.index, &cfg.holder_name).await?;
            changes.push(format!("link {}: up", cfg.holder_name));
        }
        Ok(Links { underlay, underlay_mac, vxlan: vx.header.index, holder: holder.header.index })
    }

    /// Reads every item Egret owns.
    pub async fn read(&self, cfg: &Config, links: &Links) -> Result<BTreeMap<Item, Raw>, DatapathError> {
        let mut out = BTreeMap::new();
        let mut addrs = self.handle.address().get().execute();
        while let Some(a) = addrs.try_next().await.map_err(nl("dump addresses"))? {
            let Some(ip) = address_of(&a) else { continue };
            let len = a.header.prefix_len;
            let marked = marked_ours(&a);
            if a.header.index == links.vxlan {
                if let IpAddr::V4(v4) = ip {
                    out.insert(Item::TunnelAddr(v4, len), Raw::Addr(a));
                }
            } else if a.header.index == links.holder || marked {
                // Marked: an IPv6 egress IP Egret put on a device it does not own.
                out.insert(Item::Hosted(ip, len), Raw::Addr(a));
            }
        }

        let mut fdb = self.handle.neighbours().get().set_address_family(AddressFamily::Bridge).execute();
        while let Some(n) = fdb.try_next().await.map_err(nl("dump FDB"))? {
            if n.header.ifindex != links.vxlan {
                continue;
            }
            if let (Some(mac), Some(IpAddr::V4(dst))) = mac_and_ip(&n.attributes) {
                out.insert(Item::Fdb(mac, dst), Raw::Neigh(n));
            }
        }

        // Both families: IPv4 first, then IPv6 (whose dumps a kernel without IPv6 refuses).
        for v6 in [false, true] {
            let family = if v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
            let mut neigh = self.handle.neighbours().get().set_address_family(family).execute();
            while let Some(n) = dump_next(neigh.try_next().await, v6, "dump neighbours")? {
                if n.header.ifindex != links.vxlan || n.header.state != NeighbourState::Permanent {
                    continue;
                }
                match mac_and_ip(&n.attributes) {
                    (Some(mac), Some(IpAddr::V4(dst))) => out.insert(Item::Neigh(dst, mac), Raw::Neigh(n)),
                    (Some(mac), Some(IpAddr::V6(dst))) => out.insert(Item::Neigh6(dst, mac), Raw::Neigh(n)),
                    _ => None,
                };
            }

            let filter = if v6 {
                RouteMessageBuilder::<Ipv6Addr>::new().build()
            } else {
                RouteMessageBuilder::<Ipv4Addr>::new().build()
            };
            let mut routes = self.handle.route().get(filter).execute();
            while let Some(r) = dump_next(routes.try_next().await, v6, "dump routes")? {
                let table = route_table(&r);
                if !cfg.is_our_table(table) {
                    continue;
                }
                let len = r.header.destination_prefix_length;
                let item = match route_fields(&r) {
                    // Leaving by the underlay: an egress subnet's exit.
                    (_, Some(IpAddr::V4(g)), Some(oif)) if oif == links.underlay && len == 0 => {
                        Item::ExitRoute(table, g)
                    }
                    // Leaving by another interface than the tunnel: an interface exit (read
                    // with Egret's devices known only).
                    (_, Some(IpAddr::V4(g)), Some(oif))
                        if len == 0 && links.vxlan != u32::MAX && oif != links.vxlan =>
                    {
                        Item::InterfaceExitRoute(table, g, oif)
                    }
                    (dst, gw, _) if v6 => Item::Route6(
                        table,
                        dst.and_then(v6_of).unwrap_or(Ipv6Addr::UNSPECIFIED),
                        len,
                        gw.and_then(v6_of),
                    ),
                    (dst, gw, _) => Item::Route(
                        table,
                        dst.and_then(v4_of).unwrap_or(Ipv4Addr::UNSPECIFIED),
                        len,
                        gw.and_then(v4_of),
                    ),
                };
                out.insert(item, Raw::Route(r));
            }

            let mut rules = self.handle.rule().get(if v6 { IpVersion::V6 } else { IpVersion::V4 }).execute();
            while let Some(r) = dump_next(rules.try_next().await, v6, "dump rules")? {
                let (prio, mark, mask, table) = rule_fields(&r);
                // Ours: pointing into Egret's tables (a rule at the same priority elsewhere is not).
                if cfg.is_our_table(table) {
                    let item =
                        if v6 { Item::Rule6(prio, mark, mask, table) } else { Item::Rule(prio, mark, mask, table) };
                    out.insert(item, Raw::Rule(r));
                }
            }
        }
        Ok(out)
    }

    /// Deletes one item.
    pub async fn delete(&self, item: &Item, raw: &Raw) -> Result<(), DatapathError> {
        let what = format!("delete {item}");
        match raw {
            Raw::Addr(m) => self.handle.address().del(m.clone()).execute().await,
            Raw::Neigh(m) => self.handle.neighbours().del(m.clone()).execute().await,
            Raw::Route(m) => self.handle.route().del(m.clone()).execute().await,
            Raw::Rule(m) => self.handle.rule().del(m.clone()).execute().await,
        }
        .map_err(nl(what))
    }

    /// Adds one item.
    pub async fn add(&self, item: &Item, links: &Links) -> Result<(), DatapathError> {
        let what = format!("add {item}");
        match item {
            Item::TunnelAddr(a, l) => self.handle.address().add(links.vxlan, IpAddr::V4(*a), *l).execute().await,
            Item::Hosted(a @ IpAddr::V4(_), l) => self.handle.address().add(links.holder, *a, *l).execute().await,
            Item::Hosted(a @ IpAddr::V6(_), l) => {
                // On the underlay: the kernel answers neighbour solicitations only for addresses
                // of the interface they arrive on (for IPv4 it answers ARP for any local one).
                let mut req = self.handle.address().add(links.underlay, *a, *l);
                let attrs = &mut req.message_mut().attributes;
                // The address moved here on purpose: no duplicate detection delay.
                attrs.push(AddressAttribute::Flags(AddressFlags::Nodad));
                // Deprecated (preferred lifetime 0, valid forever): never chosen as the source
                // of the node's own connections, yet owned, answered for and SNATed to.
                let mut life = CacheInfo::default();
                life.ifa_preferred = 0;
                life.ifa_valid = u32::MAX;
                attrs.push(AddressAttribute::CacheInfo(life));
                attrs.push(AddressAttribute::Protocol(AddressProtocol::Other(ADDR_PROTO)));
                req.execute().await
            }
            Item::Fdb(mac, dst) => {
                self.handle
                    .neighbours()
                    .add_bridge(links.vxlan, mac)
                    .destination(IpAddr::V4(*dst))
                    .flags(NeighbourFlags::Own)
                    .state(NeighbourState::Permanent)
                    .execute()
                    .await
            }
            Item::Neigh(ip, mac) => self.add_neighbour(links.vxlan, IpAddr::V4(*ip), mac).await,
            Item::Neigh6(ip, mac) => self.add_neighbour(links.vxlan, IpAddr::V6(*ip), mac).await,
            Item::Route(table, dst, len, gw) => {
                let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                    .table_id(*table)
                    .destination_prefix(*dst, *len)
                    .output_interface(links.vxlan);
                if let Some(g) = gw {
                    // On-link: the peer's tunnel address is a /32 with no connected route,
                    // so no route that could shadow a real network is ever added.
                    b = b.gateway(*g).onlink();
                }
                self.handle.route().add(b.build()).execute().await
            }
            Item::Route6(table, dst, len, gw) => {
                let mut b = RouteMessageBuilder::<Ipv6Addr>::new()
                    .table_id(*table)
                    .destination_prefix(*dst, *len)
                    .output_interface(links.vxlan);
                if let Some(g) = gw {
                    b = b.gateway(*g);
                }
                self.handle.route().add(b.build()).execute().await
            }
            Item::ExitRoute(table, gw) => self.add_exit_route(*table, *gw, links.underlay).await,
            Item::InterfaceExitRoute(table, gw, dev) => self.add_exit_route(*table, *gw, *dev).await,
            Item::Rule(prio, mark, mask, table) => {
                self.add_rule(AddressFamily::Inet, *prio, *mark, *mask, *table).await
            }
            Item::Rule6(prio, mark, mask, table) => {
                self.add_rule(AddressFamily::Inet6, *prio, *mark, *mask, *table).await
            }
        }
        .map_err(nl(what))
    }

    /// Create or replace: the kernel may hold a resolved or failed (not permanent, so not
    /// Egret's) entry for the address, left by traffic to a peer while it was not needed; a
    /// plain add then fails with "File exists" on every sync.
    async fn add_neighbour(&self, dev: u32, ip: IpAddr, mac: &[u8; 6]) -> Result<(), rtnetlink::Error> {
        self.handle
            .neighbours()
            .add(dev, ip)
            .link_layer_address(mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
    }

    /// An exit's route: `default via GW dev DEV onlink` in `table`.
    async fn add_exit_route(&self, table: u32, gw: Ipv4Addr, dev: u32) -> Result<(), rtnetlink::Error> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .table_id(table)
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .output_interface(dev)
            .gateway(gw)
            .onlink()
            .build();
        self.handle.route().add(msg).execute().await
    }

    /// A rule `fwmark MARK/MASK lookup TABLE` at `prio` of `family`.
    async fn add_rule(
        &self,
        family: AddressFamily,
        prio: u32,
        mark: u32,
        mask: u32,
        table: u32,
    ) -> Result<(), rtnetlink::Error> {
        let mut req = self.handle.rule().add().priority(prio).fw_mark(mark).table_id(table).action(RuleAction::ToTable);
        let msg = req.message_mut();
        msg.header.family = family;
        msg.attributes.push(RuleAttribute::FwMask(mask));
        req.execute().await
    }

    /// Deletes Egret's devices (only those carrying its alias); returns what was removed.
    pub async fn delete_links(&self, cfg: &Config) -> Result<Vec<String>, DatapathError> {
        let mut out = Vec::new();
        for name in [&cfg.vxlan_name, &cfg.holder_name] {
            match self.link(name).await? {
                Some(l) if link_alias(&l) == Some(OWNER_ALIAS) => {
                    self.delete_link(l.header.index, name).await?;
                    out.push(format!("link {name}"));
                }
                Some(_) => {
                    tracing::warn!(link = %name, "not created by Egret; left alone");
                }
                None => {}
            }
        }
        Ok(out)
    }

    /// The local ids found in the kernel (after a restart): each route in one of Egret's
    /// tables names the peer (its gateway) the table's id belongs to.
    pub async fn read_ids(&self, cfg: &Config) -> Result<Vec<(Ipv4Addr, u16)>, DatapathError> {
        Ok(self
            .read_routing(cfg)
            .await?
            .into_keys()
            .filter_map(|i| match i {
                Item::Route(table, _, 0, Some(gw))
                | Item::ExitRoute(table, gw)
                | Item::InterfaceExitRoute(table, gw, _) => Some((gw, cfg.table_id(table)?)),
                _ => None,
            })
            .collect())
    }

    /// Rules, routes and underlay addresses Egret owns (for cleanup, without needing its links;
    /// what lives on its own devices goes with them).
    pub async fn read_routing(&self, cfg: &Config) -> Result<BTreeMap<Item, Raw>, DatapathError> {
        // Device indexes that match nothing: only routes and rules are collected.
        let none = Links { underlay: u32::MAX, underlay_mac: [0; 6], vxlan: u32::MAX, holder: u32::MAX };
        Ok(self
            .read(cfg, &none)
            .await?
            .into_iter()
            .filter(|(i, _)| {
                matches!(i, Item::Route(..) | Item::Rule(..) | Item::Route6(..) | Item::Rule6(..) | Item::Hosted(..))
            })
            .collect())
    }
}

/// The next item of a dump; of an IPv6 dump, none when the kernel has no IPv6 at all (the dump
/// fails with `EAFNOSUPPORT`: then Egret has nothing of IPv6 to read either).
fn dump_next<T>(r: Result<Option<T>, rtnetlink::Error>, v6: bool, what: &str) -> Result<Option<T>, DatapathError> {
    match r {
        Err(e) if v6 && errno(&e) == Some(libc::EAFNOSUPPORT) => Ok(None),
        r => r.map_err(nl(if v6 { format!("{what} (IPv6)") } else { what.to_string() })),
    }
}

/// The table a route lives in (`RTA_TABLE` when the number needs more than the header's byte).
fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(r.header.table as u32)
}

/// A rule's (priority, fwmark, fwmask, table).
fn rule_fields(r: &RuleMessage) -> (u32, u32, u32, u32) {
    let mut prio = 0;
    let mut mark = 0;
    let mut mask = 0;
    let mut table = r.header.table as u32;
    for a in &r.attributes {
        match a {
            RuleAttribute::Priority(p) => prio = *p,
            RuleAttribute::FwMark(m) => mark = *m,
            RuleAttribute::FwMask(m) => mask = *m,
            RuleAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    (prio, mark, mask, table)
}

/// The link-layer address and destination of a neighbour or FDB entry.
fn mac_and_ip(attrs: &[NeighbourAttribute]) -> (Option<[u8; 6]>, Option<IpAddr>) {
    let mut mac = None;
    let mut dst = None;
    for a in attrs {
        match a {
            NeighbourAttribute::LinkLayerAddress(b) => mac = <[u8; 6]>::try_from(b.as_slice()).ok(),
            NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => dst = Some(IpAddr::V4(*d)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(d)) => dst = Some(IpAddr::V6(*d)),
            // Bridge-family (FDB) dumps carry the remote as raw bytes.
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                dst = <[u8; 4]>::try_from(b.as_slice()).ok().map(|o| IpAddr::V4(o.into()))
            }
            _ => {}
        }
    }
    (mac, dst)
}

/// A route's destination, gateway and output device.
fn route_fields(r: &RouteMessage) -> (Option<IpAddr>, Option<IpAddr>, Option<u32>) {
    let ip = |a: &RouteAddress| match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    };
    let (mut dst, mut gw, mut oif) = (None, None, None);
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = ip(d),
            RouteAttribute::Gateway(g) => gw = ip(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    (dst, gw, oif)
}

fn v4_of(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v) => Some(v),
        IpAddr::V6(_) => None,
    }
}

fn v6_of(ip: IpAddr) -> Option<Ipv6Addr> {
    match ip {
        IpAddr::V6(v) => Some(v),
        IpAddr::V4(_) => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use egret_core::planner::{Hosted, Peer};

    #[test]
    fn desired_items_follow_the_plan() {
        let cfg = Config::default();
        let plan = NodePlan {
            node: "node-1".into(),
            node_ips: vec!["10.10.0.101".parse().unwrap()],
            peers: vec![
                Peer { name: "node-2".into(), ips: vec!["10.10.0.102".parse().unwrap()] },
                Peer { name: "v6-only".into(), ips: vec!["fd00::2".parse().unwrap()] },
                Peer { name: "twin".into(), ips: vec!["10.10.0.102".parse().unwrap()] },
            ],
            hosted: vec![Hosted { ip: "10.10.0.11".parse().unwrap(), egresses: vec!["e".into()], subnet: None }],
            ..NodePlan::default()
        };
        let (peers, skipped) = tunnel_peers(&plan);
        assert_eq!(peers, vec![("node-2".to_string(), Ipv4Addr::new(10, 10, 0, 102))]);
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        let ids = PeerIds::recovered([(Ipv4Addr::new(10, 10, 0, 102), 9)]);
        let items: Vec<String> =
            desired(&cfg, &plan, &ids, &Default::default()).iter().map(|i| i.to_string()).collect();
        assert_eq!(
            items,
            vec![
                "tunnel address 10.10.0.101/32",
                "fdb 0e:67:0a:0a:00:66 dst 10.10.0.102",
                "neighbour 10.10.0.102 lladdr 0e:67:0a:0a:00:66",
                "route 0.0.0.0/0 via 10.10.0.102 onlink table 241631241",
                "rule pref 1700 fwmark 0x90000/0xffff0000 table 241631241",
                "hosted address 10.10.0.11/32",
            ]
        );
    }

    #[test]
    fn an_interface_exit_routes_by_its_next_hop_on_its_interface_or_on_the_underlay() {
        let cfg = Config::default();
        let ip: IpAddr = "198.18.0.14".parse().unwrap();
        let hop = Ipv4Addr::new(198, 18, 0, 1);
        let plan = NodePlan {
            node: "node-4".into(),
            interface_exits: vec![egret_core::planner::InterfaceExit { ip, interface: "eth1".into() }],
            ..NodePlan::default()
        };
        let mut exits = Exits { underlay: 2, ..Exits::default() };
        exits.via.insert(ip, (7, hop));
        assert_eq!(needed_ids(&plan, &exits), BTreeSet::from([hop]));
        let ids = PeerIds::recovered([(hop, 3)]);
        let items: Vec<String> = desired(&cfg, &plan, &ids, &exits).iter().map(|i| i.to_string()).collect();
        assert_eq!(
            items,
            [
                "rule pref 1700 fwmark 0x30000/0xffff0000 table 241631235",
                "route 0.0.0.0/0 via 198.18.0.1 onlink dev #7 table 241631235"
            ]
        );
        // Through the underlay it is the route an egress subnet's exit is.
        exits.via.insert(ip, (2, hop));
        assert!(desired(&cfg, &plan, &ids, &exits).contains(&Item::ExitRoute(cfg.table(3), hop)));
        // A next hop that keys another table, or another interface's: unresolved.
        let mut clash = exits.clone();
        clash.drop_conflicts(&BTreeSet::from([hop]));
        assert!(clash.via.is_empty() && clash.unresolved.contains_key(&ip));
        let mut two = exits.clone();
        let other: IpAddr = "198.18.0.99".parse().unwrap();
        two.via.insert(other, (9, hop));
        two.drop_conflicts(&BTreeSet::new());
        assert_eq!(two.unresolved.len(), 2, "both, by different interfaces");
        // Unresolved: nothing in routing (nft drops its traffic).
        let none = Exits { unresolved: BTreeMap::from([(ip, "no route".to_string())]), ..Exits::default() };
        assert!(needed_ids(&plan, &none).is_empty());
        assert!(desired(&cfg, &plan, &PeerIds::default(), &none).is_empty());
    }

    /// The items of one peer depend only on that peer and its local id: other nodes joining
    /// or leaving the plan never change them (they did when ids were a hash of node names
    /// with linear probing).
    #[test]
    fn a_peers_items_do_not_change_when_other_peers_come_and_go() {
        let cfg = Config::default();
        let peer = |i: u32| Peer { name: format!("n{i}"), ips: vec![IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))] };
        let plan = |peers: Vec<Peer>| NodePlan {
            node: "me".into(),
            node_ips: vec!["10.255.255.1".parse().unwrap()],
            peers,
            ..NodePlan::default()
        };
        let of = |items: &BTreeSet<Item>, ip: Ipv4Addr| -> Vec<Item> {
            items
                .iter()
                .filter(|i| match i {
                    Item::Fdb(_, d) | Item::Neigh(d, _) | Item::Route(_, _, _, Some(d)) => *d == ip,
                    _ => false,
                })
                .cloned()
                .collect()
        };
        let watched = Ipv4Addr::from(0x0a00_0000 + 2500);
        let mut ids = PeerIds::default();
        let mut before: Option<Vec<Item>> = None;
        // 5,000 peers, then 2,000 leave, then 3,000 others join.
        for range in [0..5000u32, 2000..5000, 2000..8000] {
            let p = plan(range.map(peer).collect());
            let needed = tunnel_peers(&p).0.into_iter().map(|(_, ip)| ip).collect();
            ids = ids.allocate(&needed).unwrap();
            let items = desired(&cfg, &p, &ids, &Default::default());
            let rules = items.iter().filter(|i| matches!(i, Item::Rule(..))).count();
            assert_eq!(rules, needed.len(), "one rule (and table) per peer, all distinct");
            let mine = of(&items, watched);
            assert_eq!(mine.len(), 3);
            if let Some(b) = &before {
                assert_eq!(b, &mine, "the watched peer's tunnel state changed");
            }
            before = Some(mine);
        }
    }
}
