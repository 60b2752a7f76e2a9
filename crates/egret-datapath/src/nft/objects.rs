//! Reading the named counters of an `inet` table over netlink, without I/O: the dump request
//! (`NFT_MSG_GETOBJ` for counter objects of one table) and the reading of the kernel's answers
//! (`NFT_MSG_NEWOBJ` per counter, then `NLMSG_DONE`, or an `NLMSG_ERROR`). Scraping metrics
//! reads every counter of the table, one per Egress and per policy decision: a netlink dump
//! costs a fraction of spawning `nft -j list counters`.
//!
//! The messages are `netlink-packet-netfilter`'s (`NfTablesMessage::GetObject`/`NewObject`,
//! whose attributes it leaves raw); written here are the attribute numbers of
//! `linux/netfilter/nf_tables.h` for objects and counters.

use super::Counter;
use netlink_packet_core::{
    DefaultNla, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NlaBuffer, NlasIterator,
};
use netlink_packet_netfilter::nftables::NfTablesMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use std::collections::BTreeMap;

const NFTA_OBJ_TABLE: u16 = 1;
const NFTA_OBJ_NAME: u16 = 2;
const NFTA_OBJ_TYPE: u16 = 3;
const NFTA_OBJ_DATA: u16 = 4;
const NFT_OBJECT_COUNTER: u32 = 1;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
/// Nested attributes carry this flag in their type.
const NLA_F_NESTED: u16 = 0x8000;

/// The request dumping every counter object of table `inet table`.
pub fn counters_request(table: &str, seq: u32) -> Vec<u8> {
    let mut name = table.as_bytes().to_vec();
    name.push(0);
    let attrs = vec![
        DefaultNla::new(NFTA_OBJ_TABLE, name),
        DefaultNla::new(NFTA_OBJ_TYPE, NFT_OBJECT_COUNTER.to_be_bytes().to_vec()),
    ];
    let msg = NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0),
        NfTablesMessage::GetObject(attrs),
    );
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    m.finalize();
    let mut out = vec![0; netlink_packet_core::Emitable::buffer_len(&m)];
    m.serialize(&mut out);
    out
}

/// Where a dump stands after a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dump {
    /// More datagrams follow.
    More,
    /// `NLMSG_DONE`: every counter was read.
    Done,
    /// The kernel refused the request, or failed the dump part-way (negative errno).
    Refused(i32),
}

/// A dump under way: the counters read so far, and whether the table changed while it was
/// dumped (`NLM_F_DUMP_INTR` on any part: what was read may be incomplete; dump again).
#[derive(Debug, Default)]
pub struct CounterDump {
    /// Counters by name.
    pub counters: BTreeMap<String, Counter>,
    /// The dump saw the ruleset change.
    pub interrupted: bool,
}

/// `NLM_F_DUMP_INTR`: the dump saw the ruleset change under it.
const NLM_F_DUMP_INTR: u16 = 16;

/// Reads one datagram of the answer to [`counters_request`] with sequence number `seq` into
/// `into`; messages of other sequence numbers are skipped.
pub fn absorb_counters(datagram: &[u8], seq: u32, into: &mut CounterDump) -> Result<Dump, String> {
    let mut rest = datagram;
    let mut state = Dump::More;
    while let Ok(buf) = NetlinkBuffer::new_checked(rest) {
        let len = buf.length() as usize;
        if buf.sequence_number() == seq {
            if buf.flags() & NLM_F_DUMP_INTR != 0 {
                into.interrupted = true;
            }
            match buf.message_type() {
                NLMSG_DONE => {
                    // Its payload is the dump's result: 0, or the error that ended it early.
                    let errno = buf.payload().get(0..4).and_then(|b| b.try_into().ok()).map_or(0, i32::from_ne_bytes);
                    if errno < 0 {
                        return Ok(Dump::Refused(errno));
                    }
                    state = Dump::Done;
                }
                NLMSG_ERROR => {
                    let errno = buf
                        .payload()
                        .get(0..4)
                        .and_then(|b| b.try_into().ok())
                        .map(i32::from_ne_bytes)
                        .ok_or("a short netlink error message")?;
                    // 0 is an acknowledgement, which a dump does not ask for.
                    if errno != 0 {
                        return Ok(Dump::Refused(errno));
                    }
                }
                _ => {
                    // struct nfgenmsg (4 bytes), then the object's attributes.
                    let attrs = buf.payload().get(4..).ok_or("a short nf_tables message")?;
                    if let Some((name, c)) = counter(attrs)? {
                        into.counters.insert(name, c);
                    }
                }
            }
        }
        // Messages are 4-byte aligned; the last one may lack its padding.
        let step = len.div_ceil(4) * 4;
        match rest.get(step..) {
            Some(r) if !r.is_empty() => rest = r,
            _ => break,
        }
    }
    Ok(state)
}

/// A counter object's name and values (`None`: another kind of object).
fn counter(attrs: &[u8]) -> Result<Option<(String, Counter)>, String> {
    let (mut name, mut kind, mut data) = (None, None, None);
    for nla in NlasIterator::new(attrs) {
        let nla = nla.map_err(|e| format!("object attribute: {e}"))?;
        let value = nla.value();
        match nla.kind() & !NLA_F_NESTED {
            NFTA_OBJ_NAME => {
                let text = value.split(|b| *b == 0).next().unwrap_or_default();
                name = Some(String::from_utf8_lossy(text).into_owned());
            }
            NFTA_OBJ_TYPE => kind = value.get(0..4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes),
            NFTA_OBJ_DATA => data = Some(value.to_vec()),
            _ => {}
        }
    }
    if kind != Some(NFT_OBJECT_COUNTER) {
        return Ok(None);
    }
    let (Some(name), Some(data)) = (name, data) else { return Err("a counter without a name or values".into()) };
    let mut c = Counter::default();
    for nla in NlasIterator::new(&data[..]) {
        let nla: NlaBuffer<&[u8]> = nla.map_err(|e| format!("counter attribute: {e}"))?;
        let v = nla.value().get(0..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
        match nla.kind() {
            NFTA_COUNTER_BYTES => c.bytes = v.ok_or("a short counter value")?,
            NFTA_COUNTER_PACKETS => c.packets = v.ok_or("a short counter value")?,
            _ => {}
        }
    }
    Ok(Some((name, c)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;

    /// What the kernel sends for one counter object (attributes as nf_tables_fill_obj_info).
    fn newobj(seq: u32, name: &str, kind: u32, packets: u64, bytes: u64) -> Vec<u8> {
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        let counter = [
            DefaultNla::new(NFTA_COUNTER_BYTES, bytes.to_be_bytes().to_vec()),
            DefaultNla::new(NFTA_COUNTER_PACKETS, packets.to_be_bytes().to_vec()),
        ];
        let mut data = vec![0; counter.as_slice().buffer_len()];
        counter.as_slice().emit(&mut data);
        let attrs = [
            DefaultNla::new(NFTA_OBJ_TABLE, b"egret\0".to_vec()),
            DefaultNla::new(NFTA_OBJ_NAME, n),
            DefaultNla::new(NFTA_OBJ_TYPE, kind.to_be_bytes().to_vec()),
            DefaultNla::new(NFTA_OBJ_DATA | NLA_F_NESTED, data),
        ];
        let mut body = vec![1, 0, 0, 0]; // nfgenmsg: NFPROTO_INET, version 0, res_id 0
        let mut a = vec![0; attrs.as_slice().buffer_len()];
        attrs.as_slice().emit(&mut a);
        body.extend(a);
        message(seq, (10 << 8) | 18, &body) // NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWOBJ
    }

    fn message(seq: u32, ty: u16, body: &[u8]) -> Vec<u8> {
        let mut out = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        out.extend(ty.to_ne_bytes());
        out.extend(2u16.to_ne_bytes()); // NLM_F_MULTI
        out.extend(seq.to_ne_bytes());
        out.extend(0u32.to_ne_bytes());
        out.extend(body);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out
    }

    #[test]
    fn the_request_dumps_counter_objects_of_one_table() {
        let r = counters_request("egret", 7);
        let buf = NetlinkBuffer::new_checked(&r[..]).unwrap();
        assert_eq!(buf.message_type(), (10 << 8) | 19); // NFT_MSG_GETOBJ
        assert_eq!(buf.flags(), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(buf.sequence_number(), 7);
        assert_eq!(buf.payload()[0], 1, "family inet");
        let attrs: Vec<(u16, Vec<u8>)> = NlasIterator::new(&buf.payload()[4..])
            .map(|n| n.unwrap())
            .map(|n| (n.kind(), n.value().to_vec()))
            .collect();
        assert_eq!(attrs, vec![(NFTA_OBJ_TABLE, b"egret\0".to_vec()), (NFTA_OBJ_TYPE, vec![0, 0, 0, 1])]);
    }

    #[test]
    fn counters_are_read_across_datagrams_until_done() {
        let mut got = CounterDump::default();
        let mut first = newobj(7, "egress-prod-web", NFT_OBJECT_COUNTER, 12, 3400);
        first.extend(newobj(7, "quota-x", 2, 0, 0)); // another kind of object: skipped
        first.extend(newobj(6, "stale", NFT_OBJECT_COUNTER, 1, 1)); // another request's
        assert_eq!(absorb_counters(&first, 7, &mut got).unwrap(), Dump::More);
        let mut second = newobj(7, "d_0001", NFT_OBJECT_COUNTER, u64::MAX, 0);
        second.extend(message(7, NLMSG_DONE, &0i32.to_ne_bytes()));
        assert_eq!(absorb_counters(&second, 7, &mut got).unwrap(), Dump::Done);
        assert!(!got.interrupted);
        assert_eq!(got.counters.len(), 2);
        assert_eq!(got.counters["egress-prod-web"], Counter { packets: 12, bytes: 3400 });
        assert_eq!(got.counters["d_0001"], Counter { packets: u64::MAX, bytes: 0 });
    }

    #[test]
    fn a_dump_ended_by_an_error_or_interrupted_is_not_complete() {
        let mut got = CounterDump::default();
        let done_err = message(7, NLMSG_DONE, &(-16i32).to_ne_bytes()); // EBUSY
        assert_eq!(absorb_counters(&done_err, 7, &mut got).unwrap(), Dump::Refused(-16));
        let mut intr = newobj(7, "x", NFT_OBJECT_COUNTER, 1, 1);
        intr[6] |= NLM_F_DUMP_INTR as u8; // flags, low byte (little-endian host)
        intr.extend(message(7, NLMSG_DONE, &0i32.to_ne_bytes()));
        assert_eq!(absorb_counters(&intr, 7, &mut got).unwrap(), Dump::Done);
        assert!(got.interrupted);
    }

    #[test]
    fn a_refusal_is_its_errno() {
        let mut body = (-2i32).to_ne_bytes().to_vec(); // ENOENT
        body.extend([0; 16]);
        let e = message(7, NLMSG_ERROR, &body);
        assert_eq!(absorb_counters(&e, 7, &mut CounterDump::default()).unwrap(), Dump::Refused(-2));
    }
}
