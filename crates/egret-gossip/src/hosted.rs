//! Hosted-IP records: which egress IPs each member says it holds, and whether it is eligible to
//! host at all.
//!
//! A member's state is `(epoch, seq, eligible, ips)`. `epoch` is the first bump of the process
//! that wrote it (its start time), `seq` counts its changes, so `(epoch, seq)` orders every state
//! a node ever announced, across restarts. `eligible` says whether the member may be given egress
//! IPs now (its agent has settled after joining and its datapath is in sync): placement uses only
//! eligible members.
//!
//! A state travels as one or more **chunks** of at most [`MAX_HOSTED_IPS`] IPs each, so that every
//! chunk fits one datagram whatever the number of IPs a node hosts. Every chunk carries the
//! version, the eligibility and the number of chunks of its version; a receiver takes a newer
//! version into use only once it holds all of its chunks, and keeps the previous complete one
//! until then. So a reader never sees half of a node's IPs.
//!
//! Chunks travel two ways:
//!
//! - as foca custom broadcasts, piggy-backed on SWIM traffic and re-disseminated by every member
//!   that learns something new (epidemic: the cost per member does not grow with the cluster);
//! - directly, one datagram per chunk to one member: to every live member when the state changes,
//!   and to a member the moment it comes up (joins, restarts, or returns from a partition), since
//!   piggy-backing reaches random members and a newcomer would otherwise wait for luck.
//!
//! Each member also re-offers its own chunks every `hosted_refresh` so a lost copy is repaired.
//! When a member goes down, its eligibility is forgotten until it speaks again: a node that comes
//! back (restarted, or readmitted after a false suspicion) is not given IPs on the strength of
//! what its earlier life said.

use crate::identity::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Most IPs one chunk may carry (it must fit in one datagram with room to spare: 48 IPv6
/// addresses are about 820 bytes).
pub const MAX_HOSTED_IPS: usize = 48;

/// Most chunks one state may have: bounds what a receiver buffers per member.
pub const MAX_CHUNKS: u16 = 1024;

/// Most IPs one member may announce.
pub const MAX_HOSTED_TOTAL: usize = MAX_HOSTED_IPS * MAX_CHUNKS as usize;

/// One chunk of a member's announcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HostedRecord {
    pub name: Arc<str>,
    pub epoch: u64,
    pub seq: u64,
    pub eligible: bool,
    /// Index of this chunk, below `chunks`.
    pub chunk: u16,
    /// Number of chunks of this version (at least one).
    pub chunks: u16,
    pub ips: Vec<IpAddr>,
}

impl HostedRecord {
    const fn version(&self) -> (u64, u64) {
        (self.epoch, self.seq)
    }

    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_allocvec(self)
    }

    pub fn decode(data: &[u8]) -> Result<Self, HostedDecodeError> {
        let record: Self = postcard::from_bytes(data).map_err(|_| HostedDecodeError)?;
        if record.name.is_empty()
            || record.ips.len() > MAX_HOSTED_IPS
            || record.chunks == 0
            || record.chunks > MAX_CHUNKS
            || record.chunk >= record.chunks
        {
            return Err(HostedDecodeError);
        }
        Ok(record)
    }
}

/// What one member announced about itself, complete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HostedState {
    pub epoch: u64,
    pub seq: u64,
    pub eligible: bool,
    /// Sorted, without duplicates.
    pub ips: Vec<IpAddr>,
}

impl HostedState {
    const fn version(&self) -> (u64, u64) {
        (self.epoch, self.seq)
    }

    /// The chunks that carry this state (at least one, even without IPs).
    pub fn records(&self, name: &Arc<str>) -> Vec<HostedRecord> {
        let parts: Vec<&[IpAddr]> =
            if self.ips.is_empty() { vec![&[]] } else { self.ips.chunks(MAX_HOSTED_IPS).collect() };
        let chunks = u16::try_from(parts.len()).unwrap_or(u16::MAX);
        parts
            .into_iter()
            .enumerate()
            .map(|(i, ips)| HostedRecord {
                name: name.clone(),
                epoch: self.epoch,
                seq: self.seq,
                eligible: self.eligible,
                chunk: u16::try_from(i).unwrap_or(u16::MAX),
                chunks,
                ips: ips.to_vec(),
            })
            .collect()
    }
}

/// A hosted-IP record could not be decoded.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("malformed hosted-IP record")]
pub struct HostedDecodeError;

/// A newer version being assembled from its chunks.
#[derive(Debug)]
struct Pending {
    version: (u64, u64),
    eligible: bool,
    chunks: u16,
    parts: BTreeMap<u16, Vec<IpAddr>>,
}

/// What is known of one member.
#[derive(Debug, Default)]
pub(crate) struct Entry {
    /// The newest version of which every chunk arrived.
    pub complete: Option<HostedState>,
    pending: Option<Pending>,
    /// The member went down since `complete` arrived: its eligibility no longer holds.
    pub stale: bool,
}

impl Entry {
    /// Whether this member said it may host, in its current life.
    pub fn eligible(&self) -> bool {
        !self.stale && self.complete.as_ref().is_some_and(|c| c.eligible)
    }
}

/// The newest state seen per node name. Shared between the core and the broadcast handler that
/// foca owns (foca gives no access to its handler), hence the mutex; it is never contended.
#[derive(Debug, Default)]
pub(crate) struct HostedStore {
    pub nodes: BTreeMap<Arc<str>, Entry>,
}

impl HostedStore {
    /// Takes `record` in if it is news (a newer version, a missing chunk of one, or a sign of life
    /// of a member that went down); tells whether it was.
    pub fn offer(&mut self, record: HostedRecord) -> bool {
        let entry = self.nodes.entry(record.name.clone()).or_default();
        let version = record.version();
        if let Some(c) = &entry.complete {
            if version < c.version() {
                return false;
            }
            if version == c.version() {
                // The same life speaking again after it was seen down: it is back.
                let news = entry.stale;
                entry.stale = false;
                return news;
            }
        }
        match &mut entry.pending {
            Some(p) if p.version > version => return false,
            Some(p) if p.version == version => {
                if p.chunks != record.chunks || p.parts.contains_key(&record.chunk) {
                    return false;
                }
                p.parts.insert(record.chunk, record.ips);
            }
            _ => {
                entry.pending = Some(Pending {
                    version,
                    eligible: record.eligible,
                    chunks: record.chunks,
                    parts: [(record.chunk, record.ips)].into(),
                });
            }
        }
        if let Some(p) = entry.pending.take_if(|p| p.parts.len() == usize::from(p.chunks)) {
            let mut ips: Vec<IpAddr> = p.parts.into_values().flatten().collect();
            ips.sort_unstable();
            ips.dedup();
            entry.complete = Some(HostedState { epoch: p.version.0, seq: p.version.1, eligible: p.eligible, ips });
            entry.stale = false;
        }
        true
    }

    /// The member went down: forget that it was eligible until it speaks again.
    pub fn mark_down(&mut self, name: &str) {
        if let Some(e) = self.nodes.get_mut(name) {
            e.stale = true;
        }
    }

    /// What is known of `name`.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.nodes.get(name)
    }
}

pub(crate) type SharedStore = Arc<Mutex<HostedStore>>;

pub(crate) fn lock(store: &SharedStore) -> std::sync::MutexGuard<'_, HostedStore> {
    // The store holds plain data and no code that can panic runs under the lock.
    store.lock().unwrap_or_else(PoisonError::into_inner)
}

/// foca's key for a pending broadcast: a newer chunk of a node replaces the older chunk with the
/// same index still being disseminated.
pub(crate) struct HostedKey(Arc<str>, u16);

impl foca::Invalidates for HostedKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.0 == other.0 && self.1 == other.1
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
            return Ok(Some(HostedKey(record.name, record.chunk)));
        }
        if record.name == self.local {
            // Only we speak for ourselves; a copy of our own record travelling back is old news.
            return Ok(None);
        }
        let key = HostedKey(record.name.clone(), record.chunk);
        // Disseminate only what was new to us, or foca would never stop sending it.
        Ok(lock(&self.store).offer(record).then_some(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::BroadcastHandler;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn rec(name: &str, epoch: u64, seq: u64, list: &[&str]) -> HostedRecord {
        HostedRecord { name: name.into(), epoch, seq, eligible: true, chunk: 0, chunks: 1, ips: ips(list) }
    }

    fn seen(s: &HostedStore, name: &str) -> Option<Vec<IpAddr>> {
        s.get(name).and_then(|e| e.complete.as_ref()).map(|c| c.ips.clone())
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
        assert_eq!(seen(&s, "a"), Some(vec![]));
    }

    #[test]
    fn a_large_state_is_chunked_and_used_only_once_complete() {
        let all: Vec<IpAddr> = (0..1000u32).map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i))).collect();
        let state = HostedState { epoch: 5, seq: 3, eligible: true, ips: all.clone() };
        let name: Arc<str> = "a".into();
        let records = state.records(&name);
        assert_eq!(records.len(), 1000usize.div_ceil(MAX_HOSTED_IPS));
        for r in &records {
            let data = r.encode().unwrap();
            assert!(data.len() < 400, "an IPv4 chunk is small: {}", data.len());
            assert_eq!(HostedRecord::decode(&data).unwrap(), *r);
        }
        // The largest chunk (48 IPv6 addresses, a long name) fits one datagram with the envelope
        // and foca's header, with room to spare.
        let v6: Vec<IpAddr> =
            (0..MAX_HOSTED_IPS as u128).map(|i| IpAddr::from(std::net::Ipv6Addr::from(u128::MAX - i))).collect();
        let long: Arc<str> = "n".repeat(253).into();
        let big = HostedState { epoch: u64::MAX, seq: u64::MAX, eligible: true, ips: v6 }.records(&long);
        assert_eq!(big.len(), 1);
        let size = big[0].encode().unwrap().len();
        let budget = crate::Tuning::default().max_datagram - crate::envelope::OVERHEAD;
        assert!(size + 200 < budget, "{size} bytes of {budget}");
        let mut s = HostedStore::default();
        assert!(s.offer(rec("a", 5, 2, &["192.0.2.1"])));
        // All but the last chunk, out of order and with a duplicate: the old state stays.
        for r in records.iter().rev().skip(1) {
            assert!(s.offer(r.clone()));
            assert!(!s.offer(r.clone()), "a chunk already held is not news");
            assert_eq!(seen(&s, "a"), Some(ips(&["192.0.2.1"])));
        }
        assert!(s.offer(records.last().unwrap().clone()));
        assert_eq!(seen(&s, "a"), Some(all));
        // An empty state is one chunk.
        let empty = HostedState { epoch: 5, seq: 4, eligible: false, ips: vec![] }.records(&name);
        assert_eq!(empty.len(), 1);
        assert!(s.offer(empty[0].clone()));
        assert_eq!(seen(&s, "a"), Some(vec![]));
        assert!(!s.get("a").unwrap().eligible());
    }

    #[test]
    fn a_newer_version_replaces_one_being_assembled() {
        let name: Arc<str> = "a".into();
        let many: Vec<IpAddr> = (0..100u32).map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i))).collect();
        let v1 = HostedState { epoch: 1, seq: 1, eligible: true, ips: many }.records(&name);
        let v2 = HostedState { epoch: 1, seq: 2, eligible: true, ips: ips(&["10.9.9.9"]) }.records(&name);
        let mut s = HostedStore::default();
        assert!(s.offer(v1[0].clone()));
        assert!(s.offer(v2[0].clone()));
        assert!(!s.offer(v1[1].clone()), "a chunk of the abandoned version is old news");
        assert_eq!(seen(&s, "a"), Some(ips(&["10.9.9.9"])));
    }

    #[test]
    fn eligibility_is_forgotten_when_the_member_goes_down_until_it_speaks_again() {
        let mut s = HostedStore::default();
        assert!(s.offer(rec("a", 1, 1, &["10.0.0.1"])));
        assert!(s.get("a").unwrap().eligible());
        s.mark_down("a");
        assert!(!s.get("a").unwrap().eligible());
        assert_eq!(seen(&s, "a"), Some(ips(&["10.0.0.1"])), "what it held is kept");
        assert!(s.offer(rec("a", 1, 1, &["10.0.0.1"])), "the same life speaking again is news");
        assert!(s.get("a").unwrap().eligible());
        let mut ineligible = rec("a", 1, 2, &[]);
        ineligible.eligible = false;
        assert!(s.offer(ineligible));
        assert!(!s.get("a").unwrap().eligible());
    }

    #[test]
    fn malformed_chunks_are_rejected() {
        let mut r = rec("a", 1, 1, &[]);
        r.chunk = 1;
        assert!(HostedRecord::decode(&r.encode().unwrap()).is_err(), "index past the count");
        r.chunks = 0;
        r.chunk = 0;
        assert!(HostedRecord::decode(&r.encode().unwrap()).is_err(), "no chunks");
        r.chunks = MAX_CHUNKS + 1;
        assert!(HostedRecord::decode(&r.encode().unwrap()).is_err(), "too many chunks");
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
        assert!(lock(&store).get("me").is_none());
        assert!(h.receive_item(&mine, None).unwrap().is_some());
        assert!(h.receive_item(b"\xff\xff", Some(&from)).is_err());
        let too_many: Vec<String> = (0..=MAX_HOSTED_IPS).map(|i| format!("10.0.{i}.1")).collect();
        let refs: Vec<&str> = too_many.iter().map(String::as_str).collect();
        let big = rec("c", 1, 1, &refs).encode().unwrap();
        assert!(h.receive_item(&big, Some(&from)).is_err());
    }
}
