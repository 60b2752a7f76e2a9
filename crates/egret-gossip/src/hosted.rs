//! Hosted-IP records: which egress IPs each member says it holds.
//!
//! A record is `(name, epoch, seq, ips)`. `epoch` is the first bump of the process that wrote it
//! (its start time), `seq` counts its changes, so `(epoch, seq)` orders every record a node ever
//! wrote, across restarts. Records travel two ways:
//!
//! - as foca custom broadcasts, piggy-backed on SWIM traffic and re-disseminated by every member
//!   that learns something new (epidemic: the cost per member does not grow with the cluster);
//! - directly, one datagram to one member: to every live member when the record changes, and to a
//!   member the moment it comes up (joins, restarts, or returns from a partition), since
//!   piggy-backing reaches random members and a newcomer would otherwise wait for luck.
//!
//! Each member also re-offers its own record every `hosted_refresh` so a lost copy is repaired.

use crate::identity::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Most IPs one record may carry (it must fit in one datagram with room to spare).
pub const MAX_HOSTED_IPS: usize = 48;

/// One member's announcement of the IPs it hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HostedRecord {
    pub name: Arc<str>,
    pub epoch: u64,
    pub seq: u64,
    pub ips: Vec<IpAddr>,
}

impl HostedRecord {
    fn newer_than(&self, other: &Self) -> bool {
        (self.epoch, self.seq) > (other.epoch, other.seq)
    }

    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_allocvec(self)
    }

    pub fn decode(data: &[u8]) -> Result<Self, HostedDecodeError> {
        let record: Self = postcard::from_bytes(data).map_err(|_| HostedDecodeError)?;
        if record.name.is_empty() || record.ips.len() > MAX_HOSTED_IPS {
            return Err(HostedDecodeError);
        }
        Ok(record)
    }
}

/// A hosted-IP record could not be decoded.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("malformed hosted-IP record")]
pub struct HostedDecodeError;

/// The newest record seen per node name. Shared between the core and the broadcast handler that
/// foca owns (foca gives no access to its handler), hence the mutex; it is never contended.
#[derive(Debug, Default)]
pub(crate) struct HostedStore {
    pub records: BTreeMap<Arc<str>, HostedRecord>,
}

impl HostedStore {
    /// Keeps `record` if it is newer than what we have; tells whether it was.
    pub fn offer(&mut self, record: HostedRecord) -> bool {
        match self.records.get(&record.name) {
            Some(known) if !record.newer_than(known) => false,
            _ => {
                self.records.insert(record.name.clone(), record);
                true
            }
        }
    }
}

pub(crate) type SharedStore = Arc<Mutex<HostedStore>>;

pub(crate) fn lock(store: &SharedStore) -> std::sync::MutexGuard<'_, HostedStore> {
    // The store holds plain data and no code that can panic runs under the lock.
    store.lock().unwrap_or_else(PoisonError::into_inner)
}

/// foca's key for a pending broadcast: a newer record of a node replaces the older one still
/// being disseminated.
pub(crate) struct HostedKey(Arc<str>);

impl foca::Invalidates for HostedKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

/// Receives records piggy-backed on foca packets.
pub(crate) struct HostedHandler {
    pub local: Arc<str>,
    pub store: SharedStore,
}

impl foca::BroadcastHandler<NodeId> for HostedHandler {
    type Key = HostedKey;
    type Error = HostedDecodeError;

    fn receive_item(&mut self, data: &[u8], sender: Option<&NodeId>) -> Result<Option<HostedKey>, HostedDecodeError> {
        let record = HostedRecord::decode(data)?;
        if sender.is_none() {
            // Our own record, offered by the core (on change or refresh): always disseminate.
            return Ok(Some(HostedKey(record.name)));
        }
        if record.name == self.local {
            // Only we speak for ourselves; a copy of our own record travelling back is old news.
            return Ok(None);
        }
        let name = record.name.clone();
        // Disseminate only what was new to us, or foca would never stop sending it.
        Ok(lock(&self.store).offer(record).then_some(HostedKey(name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::BroadcastHandler;

    fn rec(name: &str, epoch: u64, seq: u64, ips: &[&str]) -> HostedRecord {
        HostedRecord { name: name.into(), epoch, seq, ips: ips.iter().map(|s| s.parse().unwrap()).collect() }
    }

    #[test]
    fn newest_record_wins_across_restarts() {
        let mut s = HostedStore::default();
        assert!(s.offer(rec("a", 10, 1, &["10.0.0.1"])));
        assert!(!s.offer(rec("a", 10, 1, &["10.0.0.2"])), "same version is not new");
        assert!(!s.offer(rec("a", 10, 0, &[])), "older seq");
        assert!(s.offer(rec("a", 10, 2, &["10.0.0.3"])));
        assert!(!s.offer(rec("a", 9, 99, &[])), "older life");
        assert!(s.offer(rec("a", 11, 0, &[])), "a restarted node starts over at seq 0 and still wins");
        assert!(s.records["a"].ips.is_empty());
    }

    #[test]
    fn handler_disseminates_only_news_and_never_others_claims_about_us() {
        let store = SharedStore::default();
        let mut h = HostedHandler { local: "me".into(), store: store.clone() };
        let from = NodeId::new("b", "127.0.0.1:1".parse().unwrap(), 1);
        let r = rec("b", 1, 1, &["2001:db8::1", "10.0.0.1"]).encode().unwrap();
        assert!(h.receive_item(&r, Some(&from)).unwrap().is_some());
        assert!(h.receive_item(&r, Some(&from)).unwrap().is_none());
        let mine = rec("me", 1, 5, &["10.0.0.9"]).encode().unwrap();
        assert!(h.receive_item(&mine, Some(&from)).unwrap().is_none());
        assert!(!lock(&store).records.contains_key("me"));
        assert!(h.receive_item(&mine, None).unwrap().is_some());
        assert!(h.receive_item(b"\xff\xff", Some(&from)).is_err());
        let too_many: Vec<String> = (0..=MAX_HOSTED_IPS).map(|i| format!("10.0.{i}.1")).collect();
        let refs: Vec<&str> = too_many.iter().map(String::as_str).collect();
        let big = rec("c", 1, 1, &refs).encode().unwrap();
        assert!(h.receive_item(&big, Some(&from)).is_err());
    }
}
