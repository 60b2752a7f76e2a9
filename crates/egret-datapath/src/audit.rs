//! The audit log without I/O: the NFLOG datagrams the firewall's decision chains send, parsed
//! into the packets they carry, and a logged packet turned into an audit record named in the
//! API's terms (pod, policy, rule, Egress) from the node's plan.
//!
//! The NFLOG prefix of a logged packet is the decision chain that logged it
//! ([`crate::nft::firewall::decision_chain`]), so the policy and rule come from the plan, never
//! from text the kernel formats.

use crate::nft::firewall::decisions;
use egret_core::planner::NodePlan;
use egret_core::policy::{DecidedBy, Decision, PolicyId, Protocol, Verdict};
use ipnet::IpNet;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{PacketNla, ULogMessage};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

/// The header fields of a logged packet that an audit record names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number (of the transport header, after IPv6 extension headers).
    pub proto: u8,
    /// Source and destination ports, for TCP, UDP and SCTP.
    pub ports: Option<(u16, u16)>,
}

/// One packet the kernel logged, with the prefix of the rule that logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// The NFLOG prefix.
    pub prefix: String,
    /// The packet, when its headers could be read.
    pub packet: Option<Packet>,
}

/// Reads the IP header and the ports of a packet that may be cut short (NFLOG copies only the
/// first bytes). `None` when not even the IP header is there.
pub fn parse_packet(ip: &[u8]) -> Option<Packet> {
    let (slice, _) = etherparse::LaxIpSlice::from_slice(ip).ok()?;
    let payload = slice.payload();
    let proto = payload.ip_number.0;
    // TCP, UDP and SCTP all start with the source and destination port.
    let ports = match (proto, payload.fragmented, payload.payload) {
        (6 | 17 | 132, false, [a, b, c, d, ..]) => Some((u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d]))),
        _ => None,
    };
    Some(Packet { src: slice.source_addr(), dst: slice.destination_addr(), proto, ports })
}

/// The logged packets in one datagram read from an NFLOG socket. Messages that are not logged
/// packets (acknowledgements, errors) are skipped; a message that cannot be decoded but whose
/// length is sound gives a [`Logged`] without prefix or packet (counted as unreadable) and the
/// walk goes on; a broken length ends it.
pub fn parse_datagram(buf: &[u8]) -> Vec<Logged> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        let msg = match NetlinkMessage::<NetfilterMessage>::deserialize(rest) {
            Ok(m) => m,
            Err(_) => {
                // The netlink header's first field is the message length (host order).
                let len = rest.get(..4).map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize);
                let step = len.next_multiple_of(4);
                if len < 16 || step > rest.len() {
                    break;
                }
                out.push(Logged { prefix: String::new(), packet: None });
                rest = &rest[step..];
                continue;
            }
        };
        let len = msg.header.length as usize;
        if let NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)),
            ..
        }) = &msg.payload
        {
            let mut prefix = None;
            let mut packet = None;
            for nla in nlas {
                match nla {
                    PacketNla::Prefix(p) => prefix = Some(p.to_string_lossy().into_owned()),
                    PacketNla::Payload(p) => packet = parse_packet(p),
                    _ => {}
                }
            }
            if let Some(prefix) = prefix {
                out.push(Logged { prefix, packet });
            }
        }
        // Netlink messages are 4-byte aligned within a datagram.
        let step = len.next_multiple_of(4);
        if len == 0 || step > rest.len() {
            break;
        }
        rest = &rest[step..];
    }
    out
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    /// When the agent received it (RFC 3339).
    pub time: String,
    /// The node whose firewall decided.
    pub node: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// Source address and port (`ip:port`, or the address alone for protocols without ports).
    pub source: String,
    /// Destination address and port.
    pub destination: String,
    /// `TCP`, `UDP`, `SCTP`, `ICMP`, or the IP protocol number.
    pub protocol: String,
    /// `ClusterEgressPolicy`, `EgressPolicy` or `NetworkPolicy`.
    #[serde(rename = "policyKind")]
    pub policy_kind: String,
    /// The policy (`name`, or `namespace/name`).
    pub policy: String,
    /// The rule's name (a NetworkPolicy's: its field path); absent when the policy's
    /// `defaultAction` decided, or NetworkPolicy isolation denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// `Allow` or `Deny`.
    pub verdict: Verdict,
    /// For allowed connections: the Egress they leave through, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<String>,
    /// For allowed connections leaving through an Egress: its egress IP (absent while the
    /// Egress has none and its traffic is dropped).
    #[serde(rename = "egressIP", skip_serializing_if = "Option::is_none")]
    pub egress_ip: Option<IpAddr>,
    /// For connections a domain-name rule allowed: the name the destination was learned for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fqdn: Option<String>,
}

/// Why a logged packet gave no record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmatched {
    /// Its headers could not be read.
    Unreadable,
    /// The prefix names no decision of the current plan (a packet logged just before a change).
    UnknownDecision,
    /// The source is no local pod of the current plan.
    UnknownPod,
}

/// What the agent needs to name a logged packet, built from the plan it programmed.
#[derive(Debug, Clone, Default)]
pub struct AuditIndex {
    node: String,
    pods: HashMap<IpAddr, String>,
    decisions: BTreeMap<String, Decision>,
    /// Steering of local pods: (pod, destination block) -> Egress and egress IP.
    steer: HashMap<IpAddr, Vec<(IpNet, String, Option<IpAddr>)>>,
}

fn protocol_name(n: u8) -> String {
    match Protocol::of_number(n) {
        Some(Protocol::Tcp) => "TCP".into(),
        Some(Protocol::Udp) => "UDP".into(),
        Some(Protocol::Sctp) => "SCTP".into(),
        Some(Protocol::Icmp) => "ICMP".into(),
        None => n.to_string(),
    }
}

fn endpoint(ip: IpAddr, port: Option<u16>) -> String {
    match port {
        Some(p) => SocketAddr::new(ip, p).to_string(),
        None => ip.to_string(),
    }
}

impl AuditIndex {
    /// The index of `plan`.
    pub fn from_plan(plan: &NodePlan) -> AuditIndex {
        let mut steer: HashMap<IpAddr, Vec<(IpNet, String, Option<IpAddr>)>> = HashMap::new();
        for s in &plan.steer {
            steer.entry(s.source).or_default().push((s.destination, s.egress.clone(), s.egress_ip));
        }
        AuditIndex {
            node: plan.node.clone(),
            pods: plan.firewall.pods.iter().map(|p| (p.ip, p.pod.clone())).collect(),
            decisions: decisions(plan),
            steer,
        }
    }

    /// The decision a chain (an NFLOG prefix, a counter) stands for.
    pub fn decision(&self, chain: &str) -> Option<&Decision> {
        self.decisions.get(chain)
    }

    /// Every decision, by chain.
    pub fn decisions(&self) -> &BTreeMap<String, Decision> {
        &self.decisions
    }

    /// The record for a logged packet received at `time`.
    /// With `fqdn` naming the destination a name rule learned (policy, rule, address), if any.
    pub fn record(
        &self,
        logged: &Logged,
        time: String,
        fqdn: impl Fn(&PolicyId, &str, IpAddr) -> Option<String>,
    ) -> Result<Record, Unmatched> {
        let p = logged.packet.ok_or(Unmatched::Unreadable)?;
        let d = self.decision(&logged.prefix).ok_or(Unmatched::UnknownDecision)?;
        let pod = self.pods.get(&p.src).ok_or(Unmatched::UnknownPod)?;
        let (namespace, name) = pod.split_once('/').unwrap_or(("", pod));
        let (policy, rule) = match &d.by {
            DecidedBy::Rule { policy, rule } => (policy, Some(rule.clone())),
            // A NetworkPolicy has no default: its deny without a rule is isolation.
            DecidedBy::Default { policy } | DecidedBy::Isolation { policy } => (policy, None),
            DecidedBy::Nothing => return Err(Unmatched::UnknownDecision),
        };
        let (egress, egress_ip) = match d.verdict {
            Verdict::Allow => self.leaves_with(p.src, p.dst),
            Verdict::Deny => (None, None),
        };
        let fqdn = match (&rule, d.verdict) {
            (Some(r), Verdict::Allow) => fqdn(policy, r, p.dst),
            _ => None,
        };
        Ok(Record {
            time,
            node: self.node.clone(),
            namespace: namespace.into(),
            pod: name.into(),
            source: endpoint(p.src, p.ports.map(|x| x.0)),
            destination: endpoint(p.dst, p.ports.map(|x| x.1)),
            protocol: protocol_name(p.proto),
            policy_kind: policy.kind().into(),
            policy: policy.object(),
            rule,
            verdict: d.verdict,
            egress,
            egress_ip,
            fqdn,
        })
    }

    /// The Egress (and egress IP) a connection from `src` to `dst` leaves through: the most
    /// specific steering block holding `dst`.
    fn leaves_with(&self, src: IpAddr, dst: IpAddr) -> (Option<String>, Option<IpAddr>) {
        self.steer
            .get(&src)
            .and_then(|v| v.iter().filter(|(net, ..)| net.contains(&dst)).max_by_key(|(net, ..)| net.prefix_len()))
            .map_or((None, None), |(_, e, ip)| (Some(e.clone()), *ip))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::nft::firewall::decision_chain;
    use egret_core::planner::{Steer, SteerAction};
    use egret_core::policy::{self, Firewall, FirewallPod, FirewallSet};
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage};
    use netlink_packet_netfilter::{NetfilterHeader, NetfilterProtoFamily};
    use std::ffi::CString;
    use std::sync::Arc;

    /// An IPv4 TCP SYN header from `src:sport` to `dst:dport`, cut after the ports.
    fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut b = vec![0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6, 0, 0];
        b.extend(src);
        b.extend(dst);
        b.extend(sport.to_be_bytes());
        b.extend(dport.to_be_bytes());
        b
    }

    fn datagram(prefix: &str, payload: Vec<u8>) -> Vec<u8> {
        let nlas = vec![PacketNla::Prefix(CString::new(prefix).unwrap()), PacketNla::Payload(payload)];
        let mut m = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::from(NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 7123),
                ULogMessage::Packet(nlas),
            )),
        );
        m.finalize();
        let mut buf = vec![0; m.buffer_len()];
        m.serialize(&mut buf);
        buf
    }

    fn plan() -> NodePlan {
        let y = "apiVersion: egret.dev/v1alpha1\nkind: ClusterEgressPolicy\nmetadata: {name: web}\nspec:\n  appliedTo: {namespaceSelector: {}}\n  rules: [{name: https, action: Allow, to: {cidrs: [203.0.113.0/24]}, ports: [{port: 443}], log: true}]\n  defaultAction: Deny\n";
        let api: egret_api::v1alpha1::ClusterEgressPolicy = serde_yaml_ng::from_str(y).unwrap();
        let v = policy::validate_policies(&[api], &[]);
        let ps: Vec<&policy::Policy> = v.policies.iter().collect();
        NodePlan {
            node: "node-1".into(),
            steer: vec![Steer {
                source: "10.244.1.11".parse().unwrap(),
                destination: "203.0.113.0/24".parse().unwrap(),
                egress: "web".into(),
                action: SteerAction::Local,
                egress_ip: Some("10.10.0.100".parse().unwrap()),
            }],
            firewall: Firewall {
                pods: vec![FirewallPod { ip: "10.244.1.11".parse().unwrap(), pod: "prod/web-1".into(), set: 0 }],
                sets: vec![FirewallSet {
                    policies: ps.iter().map(|p| p.id.clone()).collect(),
                    compiled: Arc::new(policy::compile(&ps)),
                }],
            },
            ..NodePlan::default()
        }
    }

    #[test]
    fn a_logged_packet_becomes_a_record_with_every_field() {
        let np = plan();
        let idx = AuditIndex::from_plan(&np);
        let set = &np.firewall.sets[0].compiled;
        let deny = decision_chain(&set.fallback).unwrap();
        let allow = decision_chain(&set.cells[0].decision).unwrap();
        let mut buf = datagram(&deny, tcp4([10, 244, 1, 11], [198, 51, 100, 7], 40000, 22));
        buf.extend(datagram(&allow, tcp4([10, 244, 1, 11], [203, 0, 113, 7], 40001, 443)));
        let logged = parse_datagram(&buf);
        assert_eq!(logged.len(), 2);
        let denied = idx.record(&logged[0], "t".into(), |_, _, _| None).unwrap();
        let line = serde_json::to_value(&denied).unwrap();
        assert_eq!(
            line,
            serde_json::json!({"time": "t", "node": "node-1", "namespace": "prod", "pod": "web-1",
                "source": "10.244.1.11:40000", "destination": "198.51.100.7:22", "protocol": "TCP",
                "policyKind": "ClusterEgressPolicy", "policy": "web", "verdict": "Deny"})
        );
        let allowed = idx.record(&logged[1], "t".into(), |_, _, _| Some("api.github.test".into())).unwrap();
        assert_eq!(allowed.rule.as_deref(), Some("https"));
        assert_eq!(allowed.fqdn.as_deref(), Some("api.github.test"), "what a name rule learned is named");
        assert_eq!((allowed.egress.as_deref(), allowed.egress_ip), (Some("web"), Some("10.10.0.100".parse().unwrap())));
    }

    #[test]
    fn unknown_prefixes_pods_and_cut_headers_are_told_apart() {
        let idx = AuditIndex::from_plan(&plan());
        let deny = decision_chain(&plan().firewall.sets[0].compiled.fallback).unwrap();
        let rec = |prefix: &str, payload: Vec<u8>| {
            idx.record(&parse_datagram(&datagram(prefix, payload))[0], "t".into(), |_, _, _| None)
        };
        assert_eq!(
            rec("fwd_000000000000", tcp4([10, 244, 1, 11], [1, 1, 1, 1], 1, 2)),
            Err(Unmatched::UnknownDecision)
        );
        assert_eq!(rec(&deny, tcp4([10, 244, 9, 9], [1, 1, 1, 1], 1, 2)), Err(Unmatched::UnknownPod));
        assert_eq!(rec(&deny, vec![0x45, 0, 0]), Err(Unmatched::Unreadable));
        // Cut inside the ports: the addresses are known, the ports are not.
        let mut short = tcp4([10, 244, 1, 11], [1, 1, 1, 1], 1, 2);
        short.truncate(22);
        assert_eq!(rec(&deny, short).unwrap().destination, "1.1.1.1");
    }

    #[test]
    fn ipv6_and_icmp_headers_are_read() {
        let mut v6 = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
        v6.extend("fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        v6.extend("2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        v6.extend([0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
        let p = parse_packet(&v6).unwrap();
        assert_eq!((p.proto, p.ports), (17, Some((40000, 53))));
        let mut icmp = tcp4([10, 0, 0, 1], [10, 0, 0, 2], 0, 0);
        icmp[9] = 1;
        assert_eq!(parse_packet(&icmp).unwrap().ports, None);
    }

    #[test]
    fn the_fuzz_seeds_are_real_datagrams() {
        let one = parse_datagram(include_bytes!("../../../fuzz/seeds/nflog_datagram/tcp4-denied"));
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].prefix, "fwd_44863532a153");
        assert_eq!(one[0].packet.unwrap().ports, Some((40000, 22)));
        assert_eq!(parse_datagram(include_bytes!("../../../fuzz/seeds/nflog_datagram/two-messages")).len(), 2);
    }

    #[test]
    fn an_undecodable_message_is_counted_and_the_next_one_still_read() {
        let good = include_bytes!("../../../fuzz/seeds/nflog_datagram/tcp4-denied").to_vec();
        // Same length, but an attribute whose own length runs past the message.
        let mut bad = good.clone();
        bad[20] = 0xff;
        bad[21] = 0x0f;
        let mut buf = bad;
        buf.extend(&good);
        let got = parse_datagram(&buf);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!((got[0].prefix.as_str(), got[0].packet), ("", None));
        assert_eq!(got[1].prefix, "fwd_44863532a153");
        let idx = AuditIndex::default();
        assert_eq!(idx.record(&got[0], String::new(), |_, _, _| None), Err(Unmatched::Unreadable));
    }

    #[test]
    fn garbage_never_panics() {
        for n in 0..64u8 {
            let junk: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37).wrapping_add(n)).collect();
            let _ = parse_datagram(&junk);
            let _ = parse_packet(&junk);
        }
    }
}
