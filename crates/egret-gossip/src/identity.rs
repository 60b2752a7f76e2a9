//! A member's identity on the wire: node name, gossip socket address and a bump.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;

/// Who a member is.
///
/// The node name is the stable address (foca's [`foca::Identity::Addr`]): two identities with the
/// same name are two lives of one node, and the one with the higher `bump` wins. A starting
/// process takes its wall clock in milliseconds as its first bump, so a restarted agent always
/// beats the identity its previous life left behind, without any state on disk. When the
/// cluster declares a live member down (a false suspicion, a healed partition) foca calls
/// [`foca::Identity::renew`], which adds one to the bump, and the member rejoins at once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    /// The Kubernetes node name (unique in the cluster).
    pub name: Arc<str>,
    /// Where the member receives gossip.
    pub addr: SocketAddr,
    /// Which life of this node this is; higher wins.
    pub bump: u64,
}

impl NodeId {
    /// An identity.
    pub fn new(name: &str, addr: SocketAddr, bump: u64) -> Self {
        Self { name: Arc::from(name), addr, bump }
    }
}

impl foca::Identity for NodeId {
    // `Arc<str>` rather than `String`: foca asks for the address on every membership lookup and a
    // clone of an `Arc` does not allocate.
    type Addr = Arc<str>;

    fn renew(&self) -> Option<Self> {
        self.bump.checked_add(1).map(|bump| Self { bump, ..self.clone() })
    }

    fn addr(&self) -> Arc<str> {
        self.name.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        // Two lives of one node: the later one wins. The socket address only breaks a tie (two
        // processes started in the same millisecond), so that every member picks the same one.
        (self.bump, self.addr) > (adversary.bump, adversary.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    #[test]
    fn renewed_identity_wins_and_keeps_the_address() {
        let a = NodeId::new("node-1", "127.0.0.1:7946".parse().unwrap(), 5);
        let b = a.renew().unwrap();
        assert_eq!(b.bump, 6);
        assert_eq!(a.addr(), b.addr());
        assert!(b.win_addr_conflict(&a));
        assert!(!a.win_addr_conflict(&b));
        let mut max = a.clone();
        max.bump = u64::MAX;
        assert_eq!(max.renew(), None);
        let c = NodeId::new("node-1", "127.0.0.1:7947".parse().unwrap(), 5);
        assert_ne!(c.win_addr_conflict(&a), a.win_addr_conflict(&c), "ties are broken one way");
    }
}
