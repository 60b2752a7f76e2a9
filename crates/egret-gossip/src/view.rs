//! What one member knows about the cluster, as published to the agent.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

/// A member's liveness as this member sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MemberStatus {
    /// Answering probes.
    Alive,
    /// Failed a probe; declared Dead unless it refutes within `suspect_to_down`. Still live for
    /// SWIM; whether to keep hosting on it is the agent's call.
    Suspect,
    /// Declared down by the cluster, or left.
    Dead,
}

/// One known member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// Node name.
    pub name: String,
    /// Its gossip socket address.
    pub addr: SocketAddr,
    /// Alive, Suspect or Dead.
    pub status: MemberStatus,
    /// Which life of the node this is (see [`crate::NodeId`]).
    pub bump: u64,
    /// SWIM incarnation (raised by the member to refute a suspicion).
    pub incarnation: u16,
    /// The egress IPs it last announced it hosts (empty if none heard yet). Kept for a Dead member
    /// too: it is what the member held when last heard of.
    pub hosted: Vec<IpAddr>,
    /// Whether it said it may be given egress IPs (its agent has settled and its datapath is in
    /// sync), in its current life. Never true for a Dead member.
    pub eligible: bool,
    /// Whether this is the member publishing the view.
    pub local: bool,
}

/// Every member this member knows, itself included, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// This member's node name.
    pub local: String,
    /// Whether this member is connected to at least one other live member.
    pub joined: bool,
    /// All known members, by name.
    pub members: Vec<MemberView>,
}

impl View {
    /// The entry for `name`.
    pub fn member(&self, name: &str) -> Option<&MemberView> {
        self.members.iter().find(|m| m.name == name)
    }

    /// Status of `name`, if known.
    pub fn status(&self, name: &str) -> Option<MemberStatus> {
        self.member(name).map(|m| m.status)
    }

    /// Names of members that are Alive (Suspect excluded), this one included.
    pub fn alive(&self) -> Vec<&str> {
        self.members.iter().filter(|m| m.status == MemberStatus::Alive).map(|m| m.name.as_str()).collect()
    }

    /// Names of members that are Alive or Suspect (SWIM's "active"), this one included.
    pub fn active(&self) -> Vec<&str> {
        self.members.iter().filter(|m| m.status != MemberStatus::Dead).map(|m| m.name.as_str()).collect()
    }

    /// Names of active members that are eligible to host egress IPs, this one included if it is:
    /// where placement may put egress IPs.
    pub fn eligible(&self) -> Vec<&str> {
        self.members.iter().filter(|m| m.status != MemberStatus::Dead && m.eligible).map(|m| m.name.as_str()).collect()
    }

    /// Egress IPs announced by more than one active member, with the members announcing each:
    /// what the agent reports as a conflict.
    pub fn conflicts(&self) -> Vec<(IpAddr, Vec<String>)> {
        let mut holders: std::collections::BTreeMap<IpAddr, Vec<String>> = Default::default();
        for m in self.members.iter().filter(|m| m.status != MemberStatus::Dead) {
            for ip in &m.hosted {
                holders.entry(*ip).or_default().push(m.name.clone());
            }
        }
        holders.into_iter().filter(|(_, names)| names.len() > 1).collect()
    }
}
