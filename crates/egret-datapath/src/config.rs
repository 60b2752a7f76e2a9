//! Datapath settings and the numbers derived from them: marks and routing tables of a peer's
//! local id, and the tunnel MAC derived from a node's underlay address. Every derivation is a
//! pure function so that two agents (and a restarted agent) agree on them without talking to
//! each other.

use crate::DatapathError;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// The alias set on every link Egret creates: cleanup and sync only touch links carrying it.
pub const OWNER_ALIAS: &str = "egret";

/// The address protocol (`IFA_PROTO`) marking addresses Egret put on a device it does not own
/// (IPv6 egress IPs on the underlay): how they are told apart from the node's own.
pub const ADDR_PROTO: u8 = 0xe6;

/// Settings of one node's datapath.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Name of Egret's VXLAN device.
    pub vxlan_name: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// VXLAN UDP port. Not 4789/8472 by default: Antrea and Cilium hold those with
    /// metadata-mode devices, which would refuse a second device on the same port.
    pub vxlan_port: u16,
    /// Underlay interface the tunnel runs over (and announcements leave from).
    pub underlay: String,
    /// Name of the device holding the egress IPs this node hosts.
    pub holder_name: String,
    /// Lowest bit of Egret's 16-bit mark field (packet mark and conntrack mark).
    pub mark_shift: u8,
    /// Routing table of the peer with local id N is `table_base + N`.
    pub table_base: u32,
    /// Priority (`pref`) of Egret's fwmark rules.
    pub rule_priority: u32,
    /// Gratuitous ARP / unsolicited NA: how many times a newly hosted address is announced.
    pub announce_count: u32,
    /// Gap between the first and second announcement; each later gap doubles.
    pub announce_interval: Duration,
    /// How many times one announcement is tried when sending fails.
    pub announce_tries: u32,
    /// Wait before the first retry of a failed send; each later wait doubles.
    pub announce_retry: Duration,
    /// The `nft` program.
    pub nft: String,
    /// The `conntrack` program (Debian package `conntrack`), to end established flows the plan
    /// steers elsewhere. Without it such flows keep their old path (logged, reported skipped).
    pub conntrack: String,
    /// The NFLOG group audited connections are sent to (the agent's audit log reads it).
    pub audit_group: u16,
    /// The port of the node's DNS proxy on loopback (`127.0.0.1` and `::1`, UDP and TCP), where
    /// the DNS queries of pods under name rules are handed (TPROXY).
    pub dns_proxy_port: u16,
}

/// The NFLOG group of the audit log unless configured: one no common tool defaults to (ulogd
/// and the iptables examples use small numbers).
pub const DEFAULT_AUDIT_GROUP: u16 = 7123;

impl Default for Config {
    fn default() -> Self {
        Config {
            vxlan_name: "egret-vxlan".into(),
            vni: 0xe667,
            vxlan_port: 14789,
            underlay: "eth0".into(),
            holder_name: "egret-eip".into(),
            mark_shift: 16,
            table_base: 0x0e67_0000,
            rule_priority: 1700,
            announce_count: 5,
            announce_interval: Duration::from_millis(250),
            announce_tries: 4,
            announce_retry: Duration::from_millis(10),
            nft: "nft".into(),
            conntrack: "conntrack".into(),
            audit_group: DEFAULT_AUDIT_GROUP,
            dns_proxy_port: DEFAULT_DNS_PROXY_PORT,
        }
    }
}

/// The DNS proxy's port unless configured.
pub const DEFAULT_DNS_PROXY_PORT: u16 = 15353;

/// The nft table Egret owns.
pub const TABLE: &str = "egret";

impl Config {
    /// Checks that the settings are usable.
    pub fn check(&self) -> Result<(), DatapathError> {
        for n in [&self.vxlan_name, &self.holder_name, &self.underlay] {
            if n.is_empty() || n.len() > 15 || n.contains(['/', ' ', '"']) {
                return Err(DatapathError::Config(format!(
                    "interface name {n:?} must be 1..=15 characters without '/', ' ' or '\"'"
                )));
            }
        }
        if self.vxlan_name == self.holder_name {
            return Err(DatapathError::Config("vxlan_name and holder_name must differ".into()));
        }
        if self.mark_shift > 16 {
            return Err(DatapathError::Config(format!(
                "mark_shift {} leaves no room for a 16-bit field",
                self.mark_shift
            )));
        }
        if self.vni == 0 || self.vni >= 1 << 24 {
            return Err(DatapathError::Config(format!("VNI {} is not in 1..2^24", self.vni)));
        }
        if self.table_base.checked_add(u16::MAX as u32).is_none() || self.table_base < 256 {
            return Err(DatapathError::Config(format!(
                "table_base {} must leave room for 65535 tables above 255",
                self.table_base
            )));
        }
        if self.announce_count == 0 || self.announce_tries == 0 {
            return Err(DatapathError::Config("announce_count and announce_tries must be at least 1".into()));
        }
        Ok(())
    }

    /// The bits of the packet and conntrack marks that Egret owns. Egret only ever reads and
    /// writes these bits and preserves all others.
    pub fn mark_mask(&self) -> u32 {
        0xffffu32 << self.mark_shift
    }

    /// The mark value meaning "route through the tunnel to the peer with local id `id`".
    pub fn mark(&self, id: u16) -> u32 {
        (id as u32) << self.mark_shift
    }

    /// The mark of DNS queries handed to the DNS proxy (policy routing delivers them locally).
    pub fn dns_mark(&self) -> u32 {
        self.mark(egret_core::ids::DNS_PROXY_ID)
    }

    /// The routing table delivering marked DNS queries to the proxy (`local` default routes):
    /// the one below the peers' tables (ids start at 1).
    pub fn dns_table(&self) -> u32 {
        self.table_base
    }

    /// The routing table holding the route through the tunnel to the peer with local id `id`.
    pub fn table(&self, id: u16) -> u32 {
        self.table_base + id as u32
    }

    /// Whether `table` is one of Egret's tables.
    pub fn is_our_table(&self, table: u32) -> bool {
        table > self.table_base && table <= self.table_base + u16::MAX as u32
    }

    /// The id whose routing table is `table`, if it is one of Egret's.
    pub fn table_id(&self, table: u32) -> Option<u16> {
        if self.is_our_table(table) { u16::try_from(table - self.table_base).ok() } else { None }
    }
}

/// The MAC address of the VXLAN device of the node with underlay address `ip`: `0e:67` (locally
/// administered, unicast) followed by the four address bytes. Underlay addresses are unique in
/// a cluster, so this is too, and every node derives it alike: FDB, neighbour entries and the
/// gateway's "which node sent this" lookup need no exchange, and it never changes while the
/// node keeps its address.
pub fn tunnel_mac(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x0e, 0x67, a, b, c, d]
}

/// The IPv6 next hop that stands for the peer with tunnel MAC `mac` in Egret's IPv6 routes:
/// the link-local address derived from the MAC (modified EUI-64). Only a label: a permanent
/// neighbour entry maps it to the MAC, so the peer need not hold the address itself.
pub fn tunnel_ll6(mac: [u8; 6]) -> Ipv6Addr {
    let [a, b, c, d, e, f] = mac;
    Ipv6Addr::from([0xfe, 0x80, 0, 0, 0, 0, 0, 0, a ^ 2, b, c, 0xff, 0xfe, d, e, f])
}

/// The underlay address a tunnel MAC was derived from (`None`: not one of Egret's).
pub fn mac_ipv4(mac: [u8; 6]) -> Option<Ipv4Addr> {
    match mac {
        [0x0e, 0x67, a, b, c, d] => Some(Ipv4Addr::new(a, b, c, d)),
        _ => None,
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn derivations_are_disjoint_and_masked() {
        let c = Config::default();
        c.check().unwrap();
        assert_eq!(c.mark_mask(), 0xffff_0000);
        assert_eq!(c.mark(1), 0x0001_0000);
        assert_eq!(c.mark(u16::MAX), 0xffff_0000);
        assert_eq!(c.mark(7) & !c.mark_mask(), 0, "marks stay inside the mask");
        assert_eq!(c.table(1), 0x0e67_0001);
        assert!(c.is_our_table(c.table(1)) && c.is_our_table(c.table(u16::MAX)));
        assert!(!c.is_our_table(c.table_base) && !c.is_our_table(254));
        assert_eq!(c.table_id(c.table(9)), Some(9));
        assert_eq!(c.table_id(254), None);
        let ip = Ipv4Addr::new(10, 10, 0, 102);
        assert_eq!(tunnel_mac(ip), [0x0e, 0x67, 10, 10, 0, 102]);
        assert_eq!(tunnel_mac(ip)[0] & 0b11, 0b10, "locally administered unicast");
        assert_eq!(mac_string(&tunnel_mac(ip)), "0e:67:0a:0a:00:66");
        assert_eq!(mac_ipv4(tunnel_mac(ip)), Some(ip));
        assert_eq!(mac_ipv4([2, 0, 0, 0, 0, 1]), None);

        let shifted = Config { mark_shift: 4, ..Config::default() };
        assert_eq!(shifted.mark_mask(), 0x000f_fff0);
        assert_eq!(shifted.mark(1), 0x10);
    }

    #[test]
    fn bad_settings_are_refused() {
        let bad = [
            Config { mark_shift: 17, ..Config::default() },
            Config { vxlan_name: "a-name-that-is-too-long".into(), ..Config::default() },
            Config { vni: 0, ..Config::default() },
            Config { announce_tries: 0, ..Config::default() },
            Config { holder_name: "egret-vxlan".into(), ..Config::default() },
        ];
        for c in bad {
            assert!(c.check().is_err(), "{c:?}");
        }
    }
}
