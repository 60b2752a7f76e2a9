//! Addresses in nftables sets with per-element timeouts, as netlink messages, without I/O: the
//! batch that adds (or refreshes) or deletes addresses in a set of an `inet` table, the reading
//! of the kernel's acknowledgements, and the reading of `nft -j list set`.
//! [`crate::setwriter::SetWriter`] sends the batches over a socket.
//!
//! The nftables messages themselves are `netlink-packet-netfilter`'s types. Written here are only
//! the batch framing (`NFNL_MSG_BATCH_BEGIN`, one `NFT_MSG_NEWSETELEM`/`NFT_MSG_DELSETELEM` per
//! at most [`MAX_MESSAGE_BYTES`], `NFNL_MSG_BATCH_END`) with its sequence numbers, libnftnl's
//! encoding of an element comment (so that `nft list set` shows it), and the matching of the
//! kernel's answers to the messages sent: every element message asks for an acknowledgement,
//! and the kernel's extended ack names the attribute it refused, which tells a missing table
//! from a missing set or a missing element.
//!
//! The bytes equal what nft 1.0.6 (libnftnl) sends for the same command (pinned in the tests),
//! except that each element message asks for an acknowledgement, names its set without nft's
//! transaction set id, and gives every item of the element list the type `NFTA_LIST_ELEM`
//! where libnftnl numbers them (the kernel does not read that type).

use netlink_packet_core::{
    Emitable, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_REQUEST, NLMSG_ERROR, NetlinkBuffer,
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator,
};
use netlink_packet_netfilter::nftables::{
    DataAttribute, ListAttribute, NfTablesMessage, SetElementAttribute, SetElementList, SetElementMessage,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use std::io;
use std::net::IpAddr;
use std::ops::Range;
use std::time::Duration;

/// An address to put into a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// The address (the set's type decides the family: `ipv4_addr` or `ipv6_addr`).
    pub addr: IpAddr,
    /// How long the element lives (at least 1 ms; rounded up to whole milliseconds). Adding an
    /// element that is already present sets its timeout and expiry to this anew.
    pub timeout: Duration,
    /// Shown by `nft list set` as `comment "..."` (at most [`MAX_COMMENT_BYTES`], no NUL). Kept
    /// from the element's first addition: refreshing an element does not change its comment.
    pub comment: Option<String>,
}

/// An element as the kernel holds it now (read with `nft -j list set`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveElement {
    /// The address.
    pub addr: IpAddr,
    /// The timeout it was given (`None`: it never expires). nft reports whole seconds.
    pub timeout: Option<Duration>,
    /// Time left until it expires (whole seconds, rounded down by nft).
    pub expires: Option<Duration>,
    /// Its comment.
    pub comment: Option<String>,
}

/// Longest comment nft accepts (`NFTNL_UDATA_COMMENT_MAXLEN`).
pub const MAX_COMMENT_BYTES: usize = 128;
/// Longest table or set name (`NFT_NAME_MAXLEN` - 1 for the NUL).
pub const MAX_NAME_BYTES: usize = 255;
/// Upper bound of one element message: far below the 64 KiB an attribute length can describe
/// (the element list is one attribute), and small enough for any kernel allocation.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Upper bound of one batch (one `sendmsg`): below a netlink socket's default send buffer
/// (`net.core.wmem_default`, 208 KiB), so no socket option is needed. About 1,000 IPv6
/// addresses with 128-byte comments, or 4,000 IPv4 addresses without.
pub const MAX_BATCH_BYTES: usize = 192 * 1024;

/// `NFNL_SUBSYS_NFTABLES`: the subsystem a batch is addressed to (its `res_id`).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// libnftnl's udata type of an element comment (`NFTNL_UDATA_SET_ELEM_COMMENT`).
const NFTNL_UDATA_SET_ELEM_COMMENT: u8 = 0;
/// Extended ack attributes (`enum nlmsgerr_attrs`).
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSGERR_ATTR_OFFS: u16 = 2;
/// Netlink message header and `nfgenmsg`.
const HEADERS: usize = 16 + 4;

/// What a missing thing was (the kernel's `ENOENT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// The table.
    Table,
    /// The set (the table exists).
    Set,
    /// An element to delete.
    Element(IpAddr),
    /// The table or the set (the kernel did not say which).
    TableOrSet,
}

/// Why set elements could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SetElemError {
    /// A socket operation failed.
    #[error("nftables netlink socket: {what}: {source}")]
    Socket {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The table, the set or an element to delete does not exist; nothing was changed.
    #[error("{}", missing_text(table, set, missing))]
    NotFound {
        /// The table (family `inet`).
        table: String,
        /// The set.
        set: String,
        /// Which of them is missing.
        missing: Missing,
    },
    /// The set has reached its `size`; nothing was changed.
    #[error("set inet {table} {set} is full")]
    SetFull {
        /// The table.
        table: String,
        /// The set.
        set: String,
    },
    /// The kernel refused the batch for another reason; nothing was changed.
    #[error("set inet {table} {set}: the kernel refused {what}: {source}{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        /// The table.
        table: String,
        /// The set.
        set: String,
        /// What it refused: an element, the set's message or the batch.
        what: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
        /// The kernel's own explanation, when it gave one.
        detail: Option<String>,
    },
    /// A name, comment, timeout or address the kernel would refuse or misread; nothing was sent.
    #[error("invalid set element request: {0}")]
    Invalid(String),
    /// More elements than one batch holds ([`MAX_BATCH_BYTES`]); nothing was sent.
    #[error("{bytes} bytes of set elements exceed one batch ({max} bytes): split the list")]
    TooLarge {
        /// Size the batch would have.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The kernel's answer is incomplete: whether the batch was applied is unknown.
    #[error("nftables answer incomplete: {0}")]
    NoAnswer(String),
}

fn missing_text(table: &str, set: &str, missing: &Missing) -> String {
    match missing {
        Missing::Table => format!("table inet {table} does not exist"),
        Missing::Set => format!("set {set} does not exist in table inet {table}"),
        Missing::Element(addr) => format!("element {addr} is not in set inet {table} {set}"),
        Missing::TableOrSet => format!("table inet {table} or its set {set} does not exist"),
    }
}

/// One element message of a batch: its sequence number and where its parts lie in it, to read
/// the kernel's extended ack (an offset into the message).
#[derive(Debug, Clone)]
struct Sent {
    seq: u32,
    table: Range<u32>,
    set: Range<u32>,
    elems: Vec<(Range<u32>, IpAddr)>,
    /// The kernel's answer: 0 (applied), or a negative errno with the offset it pointed at and
    /// its message.
    answer: Option<(i32, Option<u32>, Option<String>)>,
}

/// One batch to send, and the tracking of the kernel's answers to it.
#[derive(Debug, Clone)]
pub struct Batch {
    table: String,
    set: String,
    bytes: Vec<u8>,
    begin_seq: u32,
    end_seq: u32,
    sent: Vec<Sent>,
    /// An error the kernel reported for the batch as a whole (on its first message).
    batch_error: Option<(i32, Option<String>)>,
}

#[derive(Clone, Copy)]
enum Op {
    Add,
    Delete,
}

impl Batch {
    /// A batch adding `elems` to set `set` of table `inet table` (or refreshing the timeout of
    /// those present), with sequence numbers from `first_seq` on.
    pub fn add(table: &str, set: &str, elems: &[Element], first_seq: u32) -> Result<Batch, SetElemError> {
        let mut attrs = Vec::with_capacity(elems.len());
        for e in elems {
            if e.timeout.is_zero() {
                // The kernel reads 0 as "the set's default timeout", often none: a permanent entry.
                return Err(SetElemError::Invalid(format!("element {}: zero timeout", e.addr)));
            }
            let ms = u64::try_from(e.timeout.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
            let mut a = vec![SetElementAttribute::Timeout(ms), key(e.addr)];
            if let Some(c) = &e.comment {
                a.push(SetElementAttribute::UserData(
                    comment_udata(c)
                        .map_err(|why| SetElemError::Invalid(format!("element {}: comment {c:?}: {why}", e.addr)))?,
                ));
            }
            attrs.push((e.addr, a));
        }
        Batch::build(Op::Add, table, set, attrs, first_seq)
    }

    /// A batch deleting `addrs` from set `set` of table `inet table` (each address once).
    pub fn delete(table: &str, set: &str, addrs: &[IpAddr], first_seq: u32) -> Result<Batch, SetElemError> {
        let mut seen = std::collections::HashSet::new();
        // The kernel would refuse the second deletion of one address inside one transaction.
        let attrs = addrs.iter().filter(|a| seen.insert(**a)).map(|a| (*a, vec![key(*a)])).collect();
        Batch::build(Op::Delete, table, set, attrs, first_seq)
    }

    fn build(
        op: Op,
        table: &str,
        set: &str,
        elems: Vec<(IpAddr, Vec<SetElementAttribute>)>,
        first_seq: u32,
    ) -> Result<Batch, SetElemError> {
        check_name("table", table)?;
        check_name("set", set)?;
        if let Some((first, _)) = elems.first()
            && let Some((other, _)) = elems.iter().find(|(a, _)| a.is_ipv4() != first.is_ipv4())
        {
            return Err(SetElemError::Invalid(format!("{first} and {other} cannot be in one set")));
        }
        let table_attr = SetElementList::Table(table.to_string());
        let set_attr = SetElementList::Set(set.to_string());
        // Element list header (4 bytes) after the headers and the two names.
        let fixed = HEADERS + table_attr.buffer_len() + set_attr.buffer_len() + 4;
        let mut groups: Vec<Vec<(IpAddr, ListAttribute<SetElementAttribute>)>> = Vec::new();
        let mut size = 0;
        for (addr, a) in elems {
            let item = ListAttribute::Element(a);
            let len = item.buffer_len();
            if fixed + len > MAX_MESSAGE_BYTES {
                return Err(SetElemError::Invalid(format!("element {addr} alone exceeds one message")));
            }
            match groups.last_mut() {
                Some(g) if size + len <= MAX_MESSAGE_BYTES => g.push((addr, item)),
                _ => {
                    groups.push(vec![(addr, item)]);
                    size = fixed;
                }
            }
            size += len;
        }

        // As nft: "add element" creates and never fails on an element already present.
        let flags = match op {
            Op::Add => NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK,
            Op::Delete => NLM_F_REQUEST | NLM_F_ACK,
        };
        let mut bytes = Vec::new();
        let mut seq = first_seq;
        let mut next = || {
            let s = seq;
            seq = seq.wrapping_add(1);
            s
        };
        let begin_seq = next();
        push(&mut bytes, batch_marker(ControlMessage::BatchBegin), NLM_F_REQUEST, begin_seq);
        let mut sent = Vec::with_capacity(groups.len());
        let table_at = HEADERS as u32..(HEADERS + table_attr.buffer_len()) as u32;
        let set_at = table_at.end..table_at.end + set_attr.buffer_len() as u32;
        for group in groups {
            let mut at = fixed as u32;
            let mut elems = Vec::with_capacity(group.len());
            let mut items = Vec::with_capacity(group.len());
            for (addr, item) in group {
                let len = item.buffer_len() as u32;
                elems.push((at..at + len, addr));
                at += len;
                items.push(item);
            }
            let m = SetElementMessage {
                attributes: vec![table_attr.clone(), set_attr.clone(), SetElementList::Elements(items)],
            };
            let msg = match op {
                Op::Add => NfTablesMessage::NewSetElement(m),
                Op::Delete => NfTablesMessage::DeleteSetElement(m),
            };
            let seq = next();
            push(&mut bytes, NetfilterMessage::new(family_header(NetfilterProtoFamily::Inet, 0), msg), flags, seq);
            sent.push(Sent { seq, table: table_at.clone(), set: set_at.clone(), elems, answer: None });
        }
        let end_seq = next();
        push(&mut bytes, batch_marker(ControlMessage::BatchEnd), NLM_F_REQUEST, end_seq);
        if bytes.len() > MAX_BATCH_BYTES {
            return Err(SetElemError::TooLarge { bytes: bytes.len(), max: MAX_BATCH_BYTES });
        }
        Ok(Batch { table: table.to_string(), set: set.to_string(), bytes, begin_seq, end_seq, sent, batch_error: None })
    }

    /// The bytes to send in one `sendmsg`.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The first sequence number after this batch's.
    pub fn next_seq(&self) -> u32 {
        self.end_seq.wrapping_add(1)
    }

    /// Number of element messages (each answered by one acknowledgement).
    pub fn messages(&self) -> usize {
        self.sent.len()
    }

    /// Records the answers in one datagram read from the socket. Answers to other sequence
    /// numbers (left over from an earlier batch) are ignored. Returns how many were this batch's.
    pub fn absorb(&mut self, datagram: &[u8]) -> usize {
        let mut ours = 0;
        for r in parse_replies(datagram) {
            if r.seq == self.begin_seq && r.errno != 0 {
                self.batch_error.get_or_insert((r.errno, r.message));
                ours += 1;
            } else if let Some(s) = self.sent.iter_mut().find(|s| s.seq == r.seq) {
                s.answer.get_or_insert((r.errno, r.bad_offset, r.message));
                ours += 1;
            }
        }
        ours
    }

    /// Every element message has been answered.
    pub fn answered(&self) -> bool {
        self.sent.iter().all(|s| s.answer.is_some())
    }

    /// The kernel reported a failure of the batch as a whole (its other answers, if any, are
    /// already queued: it answers before `sendmsg` returns).
    pub fn failed_as_a_whole(&self) -> bool {
        self.batch_error.is_some()
    }

    /// The outcome from the answers recorded so far: `Ok` once every message was applied; the
    /// first refusal (in message order, then the batch's own); [`SetElemError::NoAnswer`] when
    /// messages are still unanswered.
    pub fn outcome(&self) -> Result<(), SetElemError> {
        for s in &self.sent {
            if let Some((errno, offset, message)) = &s.answer
                && *errno != 0
            {
                return Err(self.refusal(s, *errno, *offset, message.clone()));
            }
        }
        if let Some((errno, message)) = &self.batch_error {
            return Err(SetElemError::Refused {
                table: self.table.clone(),
                set: self.set.clone(),
                what: "the batch".into(),
                source: io::Error::from_raw_os_error(errno.saturating_neg()),
                detail: message.clone(),
            });
        }
        match self.sent.iter().find(|s| s.answer.is_none()) {
            Some(s) => Err(SetElemError::NoAnswer(format!("no acknowledgement of message {}", s.seq))),
            None => Ok(()),
        }
    }

    fn refusal(&self, s: &Sent, errno: i32, offset: Option<u32>, detail: Option<String>) -> SetElemError {
        let (table, set) = (self.table.clone(), self.set.clone());
        let elem = offset.and_then(|o| s.elems.iter().find(|(r, _)| r.contains(&o)).map(|(_, a)| *a));
        let on = |r: &Range<u32>| offset.is_some_and(|o| r.contains(&o));
        let errno = errno.saturating_neg();
        match errno {
            libc::ENOENT => {
                let missing = if on(&s.table) {
                    Missing::Table
                } else if on(&s.set) {
                    Missing::Set
                } else if let Some(a) = elem {
                    Missing::Element(a)
                } else {
                    Missing::TableOrSet
                };
                SetElemError::NotFound { table, set, missing }
            }
            libc::ENFILE => SetElemError::SetFull { table, set },
            _ => SetElemError::Refused {
                table,
                set,
                what: match elem {
                    Some(a) => format!("element {a}"),
                    None => format!("message {}", s.seq),
                },
                source: io::Error::from_raw_os_error(errno),
                detail,
            },
        }
    }
}

fn check_name(what: &str, name: &str) -> Result<(), SetElemError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.contains('\0') {
        return Err(SetElemError::Invalid(format!(
            "{what} name {name:?}: 1 to {MAX_NAME_BYTES} bytes without NUL expected"
        )));
    }
    Ok(())
}

fn key(addr: IpAddr) -> SetElementAttribute {
    let bytes = match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    SetElementAttribute::Key(DataAttribute::Value(bytes))
}

/// libnftnl's udata TLV of an element comment: type, length (with the NUL), text, NUL.
fn comment_udata(comment: &str) -> Result<Vec<u8>, &'static str> {
    if comment.len() > MAX_COMMENT_BYTES {
        return Err("longer than 128 bytes");
    }
    if comment.contains('\0') {
        return Err("contains NUL");
    }
    let mut out = Vec::with_capacity(comment.len() + 3);
    out.push(NFTNL_UDATA_SET_ELEM_COMMENT);
    out.push((comment.len() + 1) as u8);
    out.extend_from_slice(comment.as_bytes());
    out.push(0);
    Ok(out)
}

fn family_header(family: NetfilterProtoFamily, res_id: u16) -> NetfilterHeader {
    NetfilterHeader::new(family, 0, res_id)
}

fn batch_marker(m: ControlMessage) -> NetfilterMessage {
    NetfilterMessage::new(family_header(NetfilterProtoFamily::Unspec, NFNL_SUBSYS_NFTABLES), m)
}

fn push(out: &mut Vec<u8>, msg: NetfilterMessage, flags: u16, seq: u32) {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    m.finalize();
    let at = out.len();
    out.resize(at + m.buffer_len(), 0);
    m.serialize(&mut out[at..]);
}

/// One `NLMSG_ERROR` answer: an acknowledgement (`errno` 0) or a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Sequence number of the message answered.
    pub seq: u32,
    /// 0, or the negative errno.
    pub errno: i32,
    /// Extended ack: offset of the refused attribute from the start of the message answered.
    pub bad_offset: Option<u32>,
    /// Extended ack: the kernel's message.
    pub message: Option<String>,
}

/// The `NLMSG_ERROR` answers in one datagram, in order; other messages are skipped and reading
/// stops at the first malformed one.
pub fn parse_replies(datagram: &[u8]) -> Vec<Reply> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while let Ok(buf) = NetlinkBuffer::new_checked(rest) {
        let len = buf.length() as usize;
        if buf.message_type() == NLMSG_ERROR
            && let Some(r) = parse_error(buf.sequence_number(), buf.flags(), buf.payload())
        {
            out.push(r);
        }
        // Messages are 4-byte aligned; the last one may lack its padding.
        let step = len.div_ceil(4) * 4;
        match rest.get(step..) {
            Some(r) if !r.is_empty() => rest = r,
            _ => break,
        }
    }
    out
}

/// `struct nlmsgerr` (errno, the header of the message answered, all of it unless capped) and
/// the extended ack attributes after it.
fn parse_error(seq: u32, flags: u16, payload: &[u8]) -> Option<Reply> {
    let errno = i32::from_ne_bytes(payload.get(0..4)?.try_into().ok()?);
    let mut reply = Reply { seq, errno, bad_offset: None, message: None };
    if flags & NLM_F_ACK_TLVS == 0 {
        return Some(reply);
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        let len = u32::from_ne_bytes(payload.get(4..8)?.try_into().ok()?) as usize;
        len.checked_add(3)? / 4 * 4
    };
    let tlvs = payload.get(4usize.checked_add(echoed)?..).unwrap_or_default();
    for nla in NlasIterator::new(tlvs) {
        let Ok(nla) = nla else { break };
        match nla.kind() {
            NLMSGERR_ATTR_OFFS => {
                reply.bad_offset = nla.value().get(0..4).and_then(|b| b.try_into().ok()).map(u32::from_ne_bytes);
            }
            NLMSGERR_ATTR_MSG => {
                let text = nla.value().split(|b| *b == 0).next().unwrap_or_default();
                reply.message = Some(String::from_utf8_lossy(text).into_owned());
            }
            _ => {}
        }
    }
    Some(reply)
}

/// The elements of the set in `nft -j list set` output.
pub fn parse_listing(json: &str) -> Result<Vec<LiveElement>, String> {
    let doc: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let items = doc.get("nftables").and_then(|v| v.as_array()).ok_or("no \"nftables\" array")?;
    let set = items.iter().find_map(|i| i.get("set")).ok_or("no set in the listing")?;
    let Some(elems) = set.get("elem") else { return Ok(Vec::new()) };
    let elems = elems.as_array().ok_or("\"elem\" is not an array")?;
    let secs =
        |v: Option<&serde_json::Value>| v.and_then(|t| t.as_f64()).and_then(|t| Duration::try_from_secs_f64(t).ok());
    let mut out = Vec::with_capacity(elems.len());
    for e in elems {
        // An element with nothing but its key is a bare value.
        let (val, detail) = match e.get("elem") {
            Some(d) => (d.get("val"), Some(d)),
            None => (Some(e), None),
        };
        let addr = val
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse::<IpAddr>().ok())
            .ok_or_else(|| format!("element {e} is not an address"))?;
        out.push(LiveElement {
            addr,
            timeout: secs(detail.and_then(|d| d.get("timeout"))),
            expires: secs(detail.and_then(|d| d.get("expires"))),
            comment: detail.and_then(|d| d.get("comment")).and_then(|c| c.as_str()).map(str::to_string),
        });
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use netlink_packet_netfilter::NetfilterMessageInner;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// A netlink header (native byte order, as the kernel reads it on this machine).
    fn nlh(len: u32, ty: u16, flags: u16, seq: u32) -> Vec<u8> {
        [&len.to_ne_bytes()[..], &ty.to_ne_bytes(), &flags.to_ne_bytes(), &seq.to_ne_bytes(), &[0; 4]].concat()
    }

    fn begin(seq: u32) -> Vec<u8> {
        [nlh(20, 0x10, NLM_F_REQUEST, seq), hex("00 00 00 0a")].concat()
    }

    fn end(seq: u32) -> Vec<u8> {
        [nlh(20, 0x11, NLM_F_REQUEST, seq), hex("00 00 00 0a")].concat()
    }

    /// NFTA_SET_ELEM_LIST_TABLE "egret", NFTA_SET_ELEM_LIST_SET `set` (3 bytes with the NUL).
    fn names(set: &str) -> Vec<u8> {
        [hex("0a 00 01 00 65 67 72 65 74 00 00 00 07 00 02 00"), set.as_bytes().to_vec(), hex("00 00")].concat()
    }

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    // What `nft add element inet egret s4 { 192.0.2.1 timeout 30s comment "example.com" }`
    // (nft 1.0.6) sent as NFTA_SET_ELEM_LIST_ELEMENTS, captured with strace: timeout 30000 ms
    // big-endian, key, udata (type 0, length 12 = "example.com" and its NUL).
    const NFT_ELEMS_V4: &str = "34 00 03 80  30 00 01 80  0c 00 04 00 00 00 00 00 00 00 75 30
        0c 00 01 80 08 00 01 00 c0 00 02 01  12 00 06 00 00 0c 65 78 61 6d 70 6c 65 2e 63 6f 6d 00 00 00";

    #[test]
    fn adding_an_ipv4_address_with_a_comment_is_what_nft_sends_plus_an_ack_request() {
        let e =
            Element { addr: v4("192.0.2.1"), timeout: Duration::from_secs(30), comment: Some("example.com".into()) };
        let b = Batch::add("egret", "s4", &[e], 7).unwrap();
        // nft's NEWSETELEM was 100 bytes with flags REQUEST|CREATE and an 8-byte
        // NFTA_SET_ELEM_LIST_SET_ID (the set's id in nft's own transaction); ours asks for an
        // acknowledgement and has no set id.
        let msg = [
            nlh(92, 0x0a0c, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK, 8),
            hex("01 00 00 00"),
            names("s4"),
            hex(NFT_ELEMS_V4),
        ]
        .concat();
        assert_eq!(b.bytes(), [begin(7), msg, end(9)].concat());
        assert_eq!((b.messages(), b.next_seq()), (1, 10));
    }

    #[test]
    fn adding_ipv6_addresses_is_what_nft_sends() {
        // `nft add element inet egret s6 { 2001:db8::1 timeout 1h comment "a.example",
        // 2001:db8::2 timeout 5m }`, except that libnftnl numbers the list's items (type 1, 2,
        // ...) where the kernel reads any type; ours are all NFTA_LIST_ELEM (1).
        let nft = "64 00 03 80
            38 00 01 80 0c 00 04 00 00 00 00 00 00 36 ee 80 18 00 01 80 14 00 01 00
              20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01 10 00 06 00 00 0a 61 2e 65 78 61 6d 70 6c 65 00
            28 00 01 80 0c 00 04 00 00 00 00 00 00 04 93 e0 18 00 01 80 14 00 01 00
              20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 02";
        let elems = [
            Element { addr: v4("2001:db8::1"), timeout: Duration::from_secs(3600), comment: Some("a.example".into()) },
            Element { addr: v4("2001:db8::2"), timeout: Duration::from_secs(300), comment: None },
        ];
        let b = Batch::add("egret", "s6", &elems, 0).unwrap();
        let msg =
            [nlh(140, 0x0a0c, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK, 1), hex("01 00 00 00"), names("s6"), hex(nft)]
                .concat();
        assert_eq!(b.bytes(), [begin(0), msg, end(2)].concat());
    }

    #[test]
    fn deleting_is_what_nft_sends_plus_an_ack_request() {
        // `nft delete element inet egret s4 { 192.0.2.1 }`: flags REQUEST only, no set id.
        let nft = "14 00 03 80 10 00 01 80 0c 00 01 80 08 00 01 00 c0 00 02 01";
        // The duplicate is dropped: a second deletion in one transaction would fail.
        let b = Batch::delete("egret", "s4", &[v4("192.0.2.1"), v4("192.0.2.1")], 1).unwrap();
        let msg = [nlh(60, 0x0a0e, NLM_F_REQUEST | NLM_F_ACK, 2), hex("01 00 00 00"), names("s4"), hex(nft)].concat();
        assert_eq!(b.bytes(), [begin(1), msg, end(3)].concat());
    }

    #[test]
    fn sub_millisecond_timeouts_round_up() {
        let e = Element { addr: v4("192.0.2.1"), timeout: Duration::from_micros(1500), comment: None };
        let b = Batch::add("egret", "s4", &[e], 0).unwrap();
        // NFTA_SET_ELEM_TIMEOUT: 2 ms.
        let t = hex("0c 00 04 00 00 00 00 00 00 00 00 02");
        assert!(b.bytes().windows(t.len()).any(|w| w == t));
    }

    fn v6(i: u32) -> IpAddr {
        IpAddr::V6(std::net::Ipv6Addr::from(0x2001_0db8_0000_0000_0000_0000_0000_0000u128 + u128::from(i)))
    }

    /// The messages of a batch, parsed back with netlink-packet-netfilter.
    fn parse_batch(bytes: &[u8]) -> Vec<NetlinkMessage<NetfilterMessage>> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let m = NetlinkMessage::<NetfilterMessage>::deserialize(rest).unwrap();
            rest = &rest[m.header.length as usize..];
            out.push(m);
        }
        out
    }

    fn keys(m: &NetlinkMessage<NetfilterMessage>) -> Vec<IpAddr> {
        let NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::NfTables(NfTablesMessage::NewSetElement(m)),
            ..
        }) = &m.payload
        else {
            panic!("not a NEWSETELEM: {m:?}")
        };
        let mut out = Vec::new();
        for a in &m.attributes {
            if let SetElementList::Elements(items) = a {
                for item in items {
                    let ListAttribute::Element(attrs) = item else { panic!() };
                    for a in attrs {
                        if let SetElementAttribute::Key(DataAttribute::Value(k)) = a {
                            let k: [u8; 16] = k.as_slice().try_into().unwrap();
                            out.push(IpAddr::from(k));
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn long_lists_are_split_into_bounded_messages_of_one_batch() {
        let comment = "x".repeat(MAX_COMMENT_BYTES);
        let elems: Vec<Element> = (0..120)
            .map(|i| Element { addr: v6(i), timeout: Duration::from_secs(60), comment: Some(comment.clone()) })
            .collect();
        let b = Batch::add("egret", "s6", &elems, 100).unwrap();
        let msgs = parse_batch(b.bytes());
        assert!(msgs.len() >= 4, "120 x ~170 bytes need at least 2 element messages");
        assert_eq!(msgs.len(), b.messages() + 2);
        let seqs: Vec<u32> = msgs.iter().map(|m| m.header.sequence_number).collect();
        assert_eq!(seqs, (100..100 + msgs.len() as u32).collect::<Vec<_>>());
        assert!(msgs.iter().all(|m| m.header.length as usize <= MAX_MESSAGE_BYTES));
        let inner = &msgs[1..msgs.len() - 1];
        assert!(inner.iter().all(|m| m.header.flags == NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK));
        let all: Vec<IpAddr> = inner.iter().flat_map(keys).collect();
        assert_eq!(all, (0..120).map(v6).collect::<Vec<_>>());
    }

    #[test]
    fn a_batch_larger_than_the_send_buffer_is_refused_before_sending() {
        let elems: Vec<Element> = (0..2000)
            .map(|i| Element { addr: v6(i), timeout: Duration::from_secs(60), comment: Some("x".repeat(100)) })
            .collect();
        assert!(matches!(Batch::add("egret", "s6", &elems, 0), Err(SetElemError::TooLarge { .. })));
    }

    #[test]
    fn requests_the_kernel_would_refuse_or_misread_are_refused() {
        let ok = Element { addr: v4("192.0.2.1"), timeout: Duration::from_secs(1), comment: None };
        let with = |f: &dyn Fn(&mut Element)| {
            let mut e = ok.clone();
            f(&mut e);
            Batch::add("egret", "s4", &[e], 0)
        };
        assert!(with(&|_| {}).is_ok());
        assert!(with(&|e| e.comment = Some("y".repeat(MAX_COMMENT_BYTES))).is_ok());
        for bad in [
            with(&|e| e.timeout = Duration::ZERO),
            with(&|e| e.comment = Some("y".repeat(MAX_COMMENT_BYTES + 1))),
            with(&|e| e.comment = Some("a\0b".into())),
            Batch::add("egret", "s4", &[ok.clone(), Element { addr: v6(1), ..ok.clone() }], 0),
            Batch::add("", "s4", std::slice::from_ref(&ok), 0),
            Batch::add("egret", &"s".repeat(256), std::slice::from_ref(&ok), 0),
            Batch::delete("eg\0ret", "s4", &[ok.addr], 0),
        ] {
            assert!(matches!(bad, Err(SetElemError::Invalid(_))), "{bad:?}");
        }
    }

    /// An NLMSG_ERROR answer as the kernel sends it with NETLINK_CAP_ACK and NETLINK_EXT_ACK:
    /// errno, the header of the message answered, then the offset of the refused attribute.
    fn answer(seq: u32, errno: i32, offset: Option<u32>) -> Vec<u8> {
        let tlv =
            offset.map(|o| [&8u16.to_ne_bytes()[..], &NLMSGERR_ATTR_OFFS.to_ne_bytes(), &o.to_ne_bytes()].concat());
        let flags = NLM_F_CAPPED | if tlv.is_some() { NLM_F_ACK_TLVS } else { 0 };
        let tlv = tlv.unwrap_or_default();
        let len = 16 + 4 + 16 + tlv.len() as u32;
        [nlh(len, NLMSG_ERROR, flags, seq), errno.to_ne_bytes().to_vec(), nlh(60, 0x0a0c, 5, seq), tlv].concat()
    }

    /// A batch of two IPv4 element messages (seqs 11 and 12; 10 and 13 are begin and end).
    fn two_messages(op: Op) -> Batch {
        let elems: Vec<(IpAddr, Vec<SetElementAttribute>)> = (0..1200u32)
            .map(|i| {
                let a = IpAddr::V4(std::net::Ipv4Addr::from(0xc000_0200 + i));
                (a, vec![key(a)])
            })
            .collect();
        let b = Batch::build(op, "egret", "s4", elems, 10).unwrap();
        assert_eq!(b.messages(), 2);
        b
    }

    #[test]
    fn acknowledgements_of_every_message_complete_the_batch() {
        let mut b = two_messages(Op::Add);
        assert_eq!(b.absorb(&answer(11, 0, None)), 1);
        assert!(!b.answered());
        assert!(matches!(b.outcome(), Err(SetElemError::NoAnswer(_))));
        assert_eq!(b.absorb(&answer(12, 0, None)), 1);
        assert!(b.answered());
        assert!(b.outcome().is_ok());
    }

    #[test]
    fn answers_to_an_earlier_batch_are_ignored() {
        let mut b = two_messages(Op::Add);
        // Left over from a failed call: a refusal of sequence number 9 and of the batch before.
        assert_eq!(b.absorb(&[answer(9, -libc::ENOENT, None), answer(3, -libc::EINVAL, None)].concat()), 0);
        b.absorb(&[answer(11, 0, None), answer(12, 0, None)].concat());
        assert!(b.outcome().is_ok());
    }

    #[test]
    fn the_refused_attribute_names_what_is_missing() {
        let missing = |op, seq, offset| {
            let mut b = two_messages(op);
            b.absorb(&[answer(11, 0, None), answer(seq, -libc::ENOENT, offset)].concat());
            match b.outcome() {
                Err(SetElemError::NotFound { missing, .. }) => missing,
                other => panic!("{other:?}"),
            }
        };
        // Table at 20, set at 32, the elements' list from 40 + 4; each element 16 bytes.
        assert_eq!(missing(Op::Add, 12, Some(20)), Missing::Table);
        assert_eq!(missing(Op::Add, 12, Some(32)), Missing::Set);
        assert_eq!(missing(Op::Add, 12, None), Missing::TableOrSet);
        let first_of_second = 0xc000_0200u32 + (MAX_MESSAGE_BYTES as u32 - 44) / 16;
        assert_eq!(missing(Op::Delete, 12, Some(44 + 16)), Missing::Element(IpAddr::V4((first_of_second + 1).into())));
        let text = SetElemError::NotFound { table: "egret".into(), set: "dns4".into(), missing: Missing::Set };
        assert_eq!(text.to_string(), "set dns4 does not exist in table inet egret");
    }

    #[test]
    fn other_refusals_name_the_element_and_keep_the_errno() {
        let mut b = two_messages(Op::Add);
        b.absorb(&[answer(11, -libc::EINVAL, Some(44)), answer(12, 0, None)].concat());
        match b.outcome() {
            Err(SetElemError::Refused { what, source, .. }) => {
                assert_eq!(what, "element 192.0.2.0");
                assert_eq!(source.raw_os_error(), Some(libc::EINVAL));
            }
            other => panic!("{other:?}"),
        }
        let mut b = two_messages(Op::Add);
        b.absorb(&[answer(11, 0, None), answer(12, -libc::ENFILE, Some(44))].concat());
        assert!(matches!(b.outcome(), Err(SetElemError::SetFull { .. })));
    }

    #[test]
    fn a_failure_of_the_whole_batch_is_reported() {
        let mut b = two_messages(Op::Add);
        b.absorb(&answer(10, -libc::ENOMEM, None));
        assert!(b.failed_as_a_whole() && !b.answered());
        match b.outcome() {
            Err(SetElemError::Refused { what, .. }) => assert_eq!(what, "the batch"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_uncapped_refusal_is_read_past_the_echoed_message() {
        // Without NETLINK_CAP_ACK the whole refused message (here 28 bytes) comes back before
        // the extended ack attributes, then a message text.
        let echoed = [nlh(28, 0x0a0c, 5, 5), vec![0; 12]].concat();
        let offs = [&8u16.to_ne_bytes()[..], &NLMSGERR_ATTR_OFFS.to_ne_bytes(), &32u32.to_ne_bytes()].concat();
        let msg = [&9u16.to_ne_bytes()[..], &NLMSGERR_ATTR_MSG.to_ne_bytes(), b"nope\0", &[0; 3]].concat();
        let len = (16 + 4 + echoed.len() + offs.len() + msg.len()) as u32;
        let bytes =
            [nlh(len, NLMSG_ERROR, NLM_F_ACK_TLVS, 5), (-22i32).to_ne_bytes().to_vec(), echoed, offs, msg].concat();
        assert_eq!(
            parse_replies(&bytes),
            vec![Reply { seq: 5, errno: -22, bad_offset: Some(32), message: Some("nope".into()) }]
        );
    }

    #[test]
    fn a_set_listing_is_read() {
        // `nft -j list set inet egret s6` (nft 1.0.6), plus a bare element without timeout.
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"set": {"family": "inet", "name": "s6", "table": "egret", "type": "ipv6_addr", "handle": 2, "flags": ["timeout"], "elem": [{"elem": {"val": "2001:db8::1", "timeout": 3600, "expires": 3597, "comment": "a.example"}}, {"elem": {"val": "2001:db8::2", "timeout": 600, "expires": 599}}, "2001:db8::3"]}}]}"#;
        let got = parse_listing(json).unwrap();
        assert_eq!(
            got[0],
            LiveElement {
                addr: v4("2001:db8::1"),
                timeout: Some(Duration::from_secs(3600)),
                expires: Some(Duration::from_secs(3597)),
                comment: Some("a.example".into()),
            }
        );
        assert_eq!((got[1].expires, got[1].comment.as_deref()), (Some(Duration::from_secs(599)), None));
        assert_eq!((got[2].addr, got[2].timeout), (v4("2001:db8::3"), None));
        let empty =
            r#"{"nftables": [{"set": {"family": "inet", "name": "s4", "table": "egret", "type": "ipv4_addr"}}]}"#;
        assert_eq!(parse_listing(empty).unwrap(), vec![]);
        assert!(parse_listing(r#"{"nftables": [{"set": {"elem": [{"elem": {"val": 7}}]}}]}"#).is_err());
    }

    proptest! {
        #[test]
        fn reading_answers_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_replies(&bytes);
            let mut b = two_messages(Op::Delete);
            b.absorb(&bytes);
            let _ = b.outcome();
        }

        #[test]
        fn reading_framed_answers_never_panics(
            seq in 8u32..16,
            flags in any::<u16>(),
            len_delta in -8i32..8,
            payload in proptest::collection::vec(any::<u8>(), 0..96),
        ) {
            // A header whose length roughly fits, so the error and ack parsing is reached.
            let len = (16 + payload.len() as i32 + len_delta).max(0) as u32;
            let bytes = [nlh(len, NLMSG_ERROR, flags, seq), payload].concat();
            let _ = parse_replies(&bytes);
            let mut b = two_messages(Op::Add);
            b.absorb(&bytes);
            let _ = b.outcome();
        }
    }
}
