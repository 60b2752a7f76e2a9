//! Datapath settings and the numbers derived from node ids (marks, tables, tunnel addresses).
//! Every derivation is a pure function so that two agents (and a restarted agent) agree on
//! them without talking to each other.

use crate::DatapathError;
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use std::time::Duration;

/// The alias set on every link Egret creates: cleanup and sync only touch links carrying it.
pub const OWNER_ALIAS: &str = "egret";

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
    /// Routing table of the peer with node id N is `table_base + N`.
    pub table_base: u32,
    /// Priority (`pref`) of Egret's fwmark rules.
    pub rule_priority: u32,
    /// Tunnel addresses: node id N gets `tunnel_net` + N as a /32.
    pub tunnel_net: Ipv4Net,
    /// Gratuitous ARP / unsolicited NA: how many, and how far apart.
    pub announce_count: u32,
    /// Gap between two announcements of one address.
    pub announce_interval: Duration,
    /// The `nft` program.
    pub nft: String,
}

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
            tunnel_net: Ipv4Net::new(Ipv4Addr::new(198, 19, 0, 0), 16).unwrap_or_default(),
            announce_count: 3,
            announce_interval: Duration::from_millis(250),
            nft: "nft".into(),
        }
    }
}

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
        if self.tunnel_net.prefix_len() > 16 {
            return Err(DatapathError::Config(format!(
                "tunnel_net {} must be /16 or larger to number 65535 nodes",
                self.tunnel_net
            )));
        }
        Ok(())
    }

    /// The bits of the packet and conntrack marks that Egret owns. Egret only ever reads and
    /// writes these bits and preserves all others.
    pub fn mark_mask(&self) -> u32 {
        0xffffu32 << self.mark_shift
    }

    /// The mark value meaning "route through the tunnel to node `id`".
    pub fn mark(&self, id: u16) -> u32 {
        (id as u32) << self.mark_shift
    }

    /// The routing table holding the route to node `id` through the tunnel.
    pub fn table(&self, id: u16) -> u32 {
        self.table_base + id as u32
    }

    /// Whether `table` is one of Egret's tables.
    pub fn is_our_table(&self, table: u32) -> bool {
        table > self.table_base && table <= self.table_base + u16::MAX as u32
    }

    /// The tunnel address of node `id`.
    pub fn tunnel_ip(&self, id: u16) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.tunnel_net.network()) | id as u32)
    }
}

/// The MAC address of node `id`'s VXLAN device: locally administered, unicast, and derived from
/// the id so that FDB, neighbour entries and the gateway's "which node sent this" lookup need
/// no exchange between nodes.
pub fn tunnel_mac(id: u16) -> [u8; 6] {
    let [hi, lo] = id.to_be_bytes();
    [0x0e, 0x67, 0x72, 0x74, hi, lo]
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
        assert_eq!(c.tunnel_ip(0x0102), Ipv4Addr::new(198, 19, 1, 2));
        assert_eq!(tunnel_mac(0x0102), [0x0e, 0x67, 0x72, 0x74, 1, 2]);
        assert_eq!(tunnel_mac(1)[0] & 0b11, 0b10, "locally administered unicast");
        assert_eq!(mac_string(&tunnel_mac(258)), "0e:67:72:74:01:02");

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
            Config { tunnel_net: "10.0.0.0/24".parse().unwrap(), ..Config::default() },
            Config { holder_name: "egret-vxlan".into(), ..Config::default() },
        ];
        for c in bad {
            assert!(c.check().is_err(), "{c:?}");
        }
    }
}
