//! Reading DNS messages (sans I/O): a pod's query, and the resolver's answer to it with the
//! addresses its name resolved to. Parsing is hickory-proto's; what this adds is which answers
//! belong to which query and which records count.

use egret_core::policy::fqdn::canonical_name;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use std::net::IpAddr;

/// Why a message is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    /// hickory-proto could not decode it.
    #[error("not a DNS message: {0}")]
    Decode(String),
    /// A query was expected and this is a response (or the other way round).
    #[error("not a {0}")]
    Kind(&'static str),
    /// Queries with other than one question are not something stub resolvers send.
    #[error("{0} questions (one expected)")]
    Questions(usize),
    /// The answer's ID or question is not the query's.
    #[error("does not answer the query (ID or question differ)")]
    Mismatch,
}

/// A pod's query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Its ID.
    pub id: u16,
    /// The name asked for, canonical (lowercase, no trailing dot).
    pub name: String,
    /// The record type asked for.
    pub qtype: RecordType,
}

/// What an answer says about the name asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The response code.
    pub rcode: ResponseCode,
    /// Whether it was truncated (the client retries over TCP).
    pub truncated: bool,
    /// Every A and AAAA address on the question's CNAME chain, with its TTL in seconds.
    pub addresses: Vec<(IpAddr, u32)>,
}

/// Longest CNAME chain followed (resolvers stop far earlier).
const MAX_CHAIN: usize = 16;

/// Reads a pod's query.
pub fn query(bytes: &[u8]) -> Result<Query, Unusable> {
    let m = Message::from_vec(bytes).map_err(|e| Unusable::Decode(e.to_string()))?;
    if m.metadata.message_type != MessageType::Query {
        return Err(Unusable::Kind("query"));
    }
    let [q] = m.queries.as_slice() else { return Err(Unusable::Questions(m.queries.len())) };
    Ok(Query { id: m.metadata.id, name: canonical_name(&q.name.to_ascii()), qtype: q.query_type })
}

/// Reads the answer to `q`: the message must be a response with the query's ID and question.
/// Only the records on the question's CNAME chain count: the others (additional data, records
/// for other names) are not what the name resolved to.
pub fn answer(q: &Query, bytes: &[u8]) -> Result<Answer, Unusable> {
    let m = Message::from_vec(bytes).map_err(|e| Unusable::Decode(e.to_string()))?;
    if m.metadata.message_type != MessageType::Response {
        return Err(Unusable::Kind("response"));
    }
    let same_question =
        matches!(m.queries.as_slice(), [a] if a.query_type == q.qtype && canonical_name(&a.name.to_ascii()) == q.name);
    if m.metadata.id != q.id || !same_question {
        return Err(Unusable::Mismatch);
    }
    let mut addresses = Vec::new();
    if m.metadata.response_code == ResponseCode::NoError {
        let mut chain = vec![q.name.clone()];
        // Follow CNAMEs from the question's name, in whatever order the records come.
        while chain.len() <= MAX_CHAIN {
            let Some(last) = chain.last() else { break };
            let next = m.answers.iter().find_map(|r| match &r.data {
                RData::CNAME(c) if canonical_name(&r.name.to_ascii()) == *last => Some(canonical_name(&c.0.to_ascii())),
                _ => None,
            });
            match next {
                Some(n) if !chain.contains(&n) => chain.push(n),
                _ => break,
            }
        }
        for r in &m.answers {
            let ip = match &r.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => continue,
            };
            if chain.contains(&canonical_name(&r.name.to_ascii())) && !addresses.iter().any(|(x, _)| *x == ip) {
                addresses.push((ip, r.ttl));
            }
        }
    }
    Ok(Answer { rcode: m.metadata.response_code, truncated: m.metadata.truncation, addresses })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, OpCode, Query as Q};
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA};
    use hickory_proto::rr::{Name, Record};
    use proptest::prelude::*;
    use std::str::FromStr;

    pub fn mk_query(id: u16, name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.queries.push(Q::query(Name::from_str(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    pub fn mk_answer(id: u16, name: &str, t: RecordType, records: &[(&str, RData, u32)]) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Response, OpCode::Query);
        m.queries.push(Q::query(Name::from_str(name).unwrap(), t));
        for (n, d, ttl) in records {
            m.answers.push(Record::from_rdata(Name::from_str(n).unwrap(), *ttl, d.clone()));
        }
        m.to_vec().unwrap()
    }

    fn a(ip: &str) -> RData {
        RData::A(A(ip.parse().unwrap()))
    }

    fn cname(n: &str) -> RData {
        RData::CNAME(CNAME(Name::from_str(n).unwrap()))
    }

    #[test]
    fn cname_chains_are_followed_and_strays_ignored() {
        let q = query(&mk_query(7, "Alias.GitHub.test.", RecordType::A)).unwrap();
        assert_eq!(q.name, "alias.github.test");
        let bytes = mk_answer(
            7,
            "alias.github.test.",
            RecordType::A,
            &[
                // Out of order on purpose; a record for another name adds nothing.
                ("api.github.test.", a("203.0.113.5"), 30),
                ("evil.test.", a("198.51.100.8"), 30),
                ("alias.github.test.", cname("mid.github.test."), 60),
                ("mid.github.test.", cname("api.github.test."), 60),
            ],
        );
        let got = answer(&q, &bytes).unwrap();
        assert_eq!(got.addresses, vec![("203.0.113.5".parse().unwrap(), 30)]);
    }

    #[test]
    fn aaaa_and_loops() {
        let q = query(&mk_query(1, "v6only.test.", RecordType::AAAA)).unwrap();
        let bytes = mk_answer(
            1,
            "v6only.test.",
            RecordType::AAAA,
            &[("v6only.test.", RData::AAAA(AAAA("2001:db8:113::5".parse().unwrap())), 0)],
        );
        assert_eq!(answer(&q, &bytes).unwrap().addresses, vec![("2001:db8:113::5".parse().unwrap(), 0)]);
        let q = query(&mk_query(2, "a.test.", RecordType::A)).unwrap();
        let looped = mk_answer(
            2,
            "a.test.",
            RecordType::A,
            &[("a.test.", cname("b.test."), 1), ("b.test.", cname("a.test."), 1)],
        );
        assert!(answer(&q, &looped).unwrap().addresses.is_empty());
    }

    #[test]
    fn answers_to_other_queries_are_refused() {
        let q = query(&mk_query(9, "api.github.test.", RecordType::A)).unwrap();
        let other_id = mk_answer(10, "api.github.test.", RecordType::A, &[("api.github.test.", a("203.0.113.5"), 5)]);
        assert_eq!(answer(&q, &other_id), Err(Unusable::Mismatch));
        let other_name = mk_answer(9, "evil.test.", RecordType::A, &[("evil.test.", a("198.51.100.8"), 5)]);
        assert_eq!(answer(&q, &other_name), Err(Unusable::Mismatch));
        let other_type = mk_answer(9, "api.github.test.", RecordType::AAAA, &[]);
        assert_eq!(answer(&q, &other_type), Err(Unusable::Mismatch));
        // A query is not an answer, and an answer is not a query.
        assert_eq!(answer(&q, &mk_query(9, "api.github.test.", RecordType::A)), Err(Unusable::Kind("response")));
        assert_eq!(query(&other_id), Err(Unusable::Kind("query")));
        assert!(matches!(query(b"\x00\x01"), Err(Unusable::Decode(_))));
    }

    /// The query the fuzz target `dns_message` (fuzz/) answers with its seeds: ID 0x2a2a,
    /// `api.github.test` A.
    fn fuzz_query() -> Message {
        let mut m = Message::new(0x2a2a, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.queries.push(Q::query(Name::from_str("api.github.test.").unwrap(), RecordType::A));
        m
    }

    fn fuzz_response(records: &[(&str, RData, u32)]) -> Message {
        let mut m = fuzz_query();
        m.metadata.message_type = MessageType::Response;
        m.metadata.recursion_available = true;
        for (n, d, ttl) in records {
            m.answers.push(Record::from_rdata(Name::from_str(n).unwrap(), *ttl, d.clone()));
        }
        m
    }

    /// The seeds of the fuzz target `dns_message`, as resolvers send them.
    fn fuzz_seeds() -> Vec<(&'static str, Vec<u8>)> {
        let chain = fuzz_response(&[
            ("api.github.test.", cname("edge.github.test."), 60),
            ("edge.github.test.", cname("cdn.example.test."), 300),
            ("cdn.example.test.", a("203.0.113.5"), 30),
            ("cdn.example.test.", a("203.0.113.6"), 30),
            ("cdn.example.test.", RData::AAAA(AAAA("2001:db8:113::5".parse().unwrap())), 30),
        ]);
        let many: Vec<(String, RData, u32)> = (0..120u8)
            .map(|i| ("api.github.test.".to_string(), a(&format!("198.51.{}.{}", 100 + i / 100, 1 + i % 100)), 60))
            .collect();
        let many: Vec<(&str, RData, u32)> = many.iter().map(|(n, d, t)| (n.as_str(), d.clone(), *t)).collect();
        let mut nx = fuzz_response(&[]);
        nx.metadata.response_code = ResponseCode::NXDomain;
        nx.metadata.authoritative = true;
        let soa = SOA::new(
            Name::from_str("ns.test.").unwrap(),
            Name::from_str("hostmaster.test.").unwrap(),
            2026112201,
            3600,
            600,
            86400,
            60,
        );
        nx.authorities.push(Record::from_rdata(Name::from_str("test.").unwrap(), 60, RData::SOA(soa)));
        vec![
            ("query", fuzz_query().to_vec().unwrap()),
            ("answer-cname-chain", chain.to_vec().unwrap()),
            ("answer-120-a", fuzz_response(&many).to_vec().unwrap()),
            ("answer-nxdomain", nx.to_vec().unwrap()),
        ]
    }

    /// The committed seeds are these messages (`EGRET_WRITE_FUZZ_SEEDS=1 cargo test -p
    /// egret-dns fuzz_seeds` rewrites them), and they read as the target expects.
    #[test]
    fn fuzz_seeds_are_current() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/dns_message");
        let seeds = fuzz_seeds();
        if std::env::var_os("EGRET_WRITE_FUZZ_SEEDS").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            for (name, bytes) in &seeds {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
        for (name, bytes) in &seeds {
            let committed = std::fs::read(dir.join(name)).unwrap_or_default();
            assert!(
                committed == *bytes,
                "fuzz/seeds/dns_message/{name} is stale: EGRET_WRITE_FUZZ_SEEDS=1 cargo test -p egret-dns fuzz_seeds"
            );
        }
        let q = query(&seeds[0].1).unwrap();
        assert_eq!((q.id, q.name.as_str(), q.qtype), (0x2a2a, "api.github.test", RecordType::A));
        let chain = answer(&q, &seeds[1].1).unwrap();
        assert_eq!(chain.addresses.len(), 3);
        assert_eq!(answer(&q, &seeds[2].1).unwrap().addresses.len(), 120);
        let nx = answer(&q, &seeds[3].1).unwrap();
        assert_eq!((nx.rcode, nx.addresses.len()), (ResponseCode::NXDomain, 0));
    }

    proptest! {
        /// No input makes the readers panic.
        #[test]
        fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = query(&bytes);
            let q = Query { id: 1, name: "a.test".into(), qtype: RecordType::A };
            let _ = answer(&q, &bytes);
        }
    }
}
