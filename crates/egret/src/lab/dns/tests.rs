#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a test failure

use super::*;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use std::net::Ipv6Addr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The address of fresh name `n`: 198.18.(n / 250).(n % 250 + 1).
fn fresh_addr(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, (n / 250) as u8, (n % 250 + 1) as u8)
}

/// What `examples/dns/fresh.zone` must hold.
fn fresh_zone_text() -> String {
    let mut s = String::from(
        "; Generated: n0000.fresh.test .. n0999.fresh.test, name N at 198.18.(N / 250).(N % 250 + 1)\n\
         ; with a TTL of N % 6 s. Included by lab.zone; a unit test (lab::dns) checks this file.\n\
         $ORIGIN test.\n",
    );
    for n in 0..FRESH_NAMES {
        s.push_str(&format!("n{n:04}.fresh {} IN A {}\n", n % 6, fresh_addr(n)));
    }
    s
}

/// The lab's zone as committed.
fn example() -> Zone {
    let dir = tempfile::tempdir().unwrap();
    Zone::load(&write_example(dir.path()).unwrap()).unwrap()
}

fn name(s: &str) -> Name {
    parse_name(s).unwrap()
}

/// TTL and data of `name`'s records of type `t`, in order.
fn records(z: &Zone, n: &str, t: RecordType) -> Vec<(u32, RData)> {
    z.records
        .get(&RrKey::new(LowerName::new(&name(n)), t))
        .map(|s| s.records_without_rrsigs().map(|r| (r.ttl, r.data.clone())).collect())
        .unwrap_or_default()
}

fn a(ip: &str) -> RData {
    RData::A(A(ip.parse().unwrap()))
}

fn types_of(z: &Zone, n: &str) -> Vec<RecordType> {
    let n = LowerName::new(&name(n));
    z.records.keys().filter(|k| k.name == n).map(|k| k.record_type).collect()
}

#[test]
fn the_fresh_names_file_is_the_generated_one() {
    assert_eq!(FRESH_ZONE, fresh_zone_text(), "examples/dns/fresh.zone differs from what the test generates");
}

#[test]
fn the_lab_zone_holds_the_documented_names() {
    let z = example();
    assert_eq!(z.serial(), 1);
    let db_a = a("203.0.113.5");
    let bad = a("198.51.100.8");
    assert_eq!(records(&z, "api.github.test", RecordType::A), vec![(30, db_a.clone())]);
    assert_eq!(records(&z, "storage.googleapis.test", RecordType::A), vec![(30, db_a.clone())]);
    assert_eq!(records(&z, "www.example.test", RecordType::A), vec![(30, bad.clone())]);
    assert_eq!(records(&z, "bad.example.test", RecordType::A), vec![(30, bad)]);
    assert_eq!(records(&z, "ns.test", RecordType::A), vec![(30, RData::A(A(DNS_IP)))]);
    assert_eq!(
        records(&z, "alias.github.test", RecordType::CNAME),
        vec![(30, RData::CNAME(CNAME(name("mid.github.test"))))]
    );
    assert_eq!(
        records(&z, "mid.github.test", RecordType::CNAME),
        vec![(30, RData::CNAME(CNAME(name("api.github.test"))))]
    );
    assert_eq!(records(&z, "ttl0.test", RecordType::A), vec![(0, db_a)]);
    assert_eq!(types_of(&z, "v6only.test"), vec![RecordType::AAAA]);
    assert_eq!(
        records(&z, "v6only.test", RecordType::AAAA),
        vec![(30, RData::AAAA(AAAA("2001:db8:113::5".parse().unwrap())))]
    );
    let many: Vec<RData> = (64..184).map(|i| a(&format!("203.0.113.{i}"))).collect();
    assert_eq!(records(&z, "many.test", RecordType::A).into_iter().map(|r| r.1).collect::<Vec<_>>(), many);
    let rotate: Vec<RData> = (192..232).map(|i| a(&format!("203.0.113.{i}"))).collect();
    assert_eq!(records(&z, "rotate.test", RecordType::A).into_iter().map(|r| r.1).collect::<Vec<_>>(), rotate);
    assert_eq!(z.rotating(), BTreeSet::from([LowerName::new(&name("rotate.test"))]));
    let mut fresh = BTreeSet::new();
    for n in 0..FRESH_NAMES {
        let r = records(&z, &fresh_name(n), RecordType::A);
        assert_eq!(r.len(), 1, "{}", fresh_name(n));
        assert!(r[0].0 <= 5, "{} has TTL {}", fresh_name(n), r[0].0);
        fresh.insert(r[0].1.clone());
    }
    assert_eq!(fresh.len(), FRESH_NAMES, "every fresh name has its own address");
    assert!(records(&z, "n1000.fresh.test", RecordType::A).is_empty());
}

/// Every address of the zone is one the lab's outside namespace answers on, and the ranges it
/// routes to itself hold no address the lab uses otherwise.
#[test]
fn every_address_of_the_zone_is_served_by_the_outside_namespace() {
    let ranges: Vec<ipnet::Ipv4Net> = SERVED_RANGES.iter().map(|r| r.parse().unwrap()).collect();
    let hosts = [egret_netns::DB_A, egret_netns::BAD_HOST, DNS_IP];
    for ip in [egret_netns::DB_A, DNS_IP, egret_netns::ROUTER_IP, Ipv4Addr::new(203, 0, 113, 1)] {
        assert!(!ranges.iter().any(|r| r.contains(&ip)), "{ip} lies in a served range");
    }
    let z = example();
    for set in z.records.values() {
        for r in set.records_without_rrsigs() {
            if let RData::A(A(ip)) = r.data {
                assert!(hosts.contains(&ip) || ranges.iter().any(|n| n.contains(&ip)), "{} {ip} is not served", r.name);
            }
        }
    }
}

fn rec(n: &str, ip: &str) -> Record {
    Record::from_rdata(name(n), 30, a(ip))
}

fn ips(rs: &[Record]) -> Vec<String> {
    rs.iter().map(|r| r.data.to_string()).collect()
}

#[test]
fn rotation_answers_one_address_the_next_one_each_time() {
    let rotating = BTreeSet::from([LowerName::new(&name("rotate.test"))]);
    let mut turns = HashMap::new();
    let set = vec![rec("rotate.test", "10.0.0.1"), rec("rotate.test", "10.0.0.2"), rec("rotate.test", "10.0.0.3")];
    let seen: Vec<Vec<String>> = (0..4).map(|_| ips(&rotate(set.clone(), &rotating, &mut turns))).collect();
    assert_eq!(seen, [["10.0.0.1"], ["10.0.0.2"], ["10.0.0.3"], ["10.0.0.1"]]);

    // Other names, and rotating names' other record types, are left alone; a CNAME chain ending
    // at a rotating name keeps its CNAMEs.
    let other = vec![rec("many.test", "10.0.1.1"), rec("many.test", "10.0.1.2")];
    assert_eq!(rotate(other.clone(), &rotating, &mut turns), other);
    let cname = Record::from_rdata(name("r.test"), 30, RData::CNAME(CNAME(name("rotate.test"))));
    let mut chain = vec![cname.clone()];
    chain.extend(set.clone());
    let out = rotate(chain, &rotating, &mut turns);
    assert_eq!(out[0], cname);
    assert_eq!(ips(&out[1..]), ["10.0.0.2"], "the turn carried on from the earlier answers");

    // AAAA answers count their own turns.
    let v6 = vec![
        Record::from_rdata(name("rotate.test"), 30, RData::AAAA(AAAA(Ipv6Addr::LOCALHOST))),
        Record::from_rdata(name("rotate.test"), 30, RData::AAAA(AAAA(Ipv6Addr::UNSPECIFIED))),
    ];
    assert_eq!(ips(&rotate(v6.clone(), &rotating, &mut turns)), ["::1"]);
    assert_eq!(ips(&rotate(v6, &rotating, &mut turns)), ["::"]);
    assert_eq!(ips(&rotate(set, &rotating, &mut turns)), ["10.0.0.3"]);
}

#[test]
fn set_replaces_a_names_records_of_one_type() {
    let mut z = example();
    let changes = z.set(&name("api.github.test"), RecordType::A, &["198.51.100.8".into()], None).unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].to_string(), "api.github.test. A: 203.0.113.5 (ttl 30) -> 198.51.100.8 (ttl 30)");
    assert_eq!(records(&z, "api.github.test", RecordType::A), vec![(30, a("198.51.100.8"))]);
    assert_eq!(z.serial(), 2);

    // A new name with two addresses and a TTL.
    let c = z.set(&name("new.test"), RecordType::A, &["203.0.113.70".into(), "203.0.113.71".into()], Some(0)).unwrap();
    assert_eq!(c[0].to_string(), "new.test. A: nothing -> 203.0.113.70 (ttl 0), 203.0.113.71 (ttl 0)");
    assert_eq!(z.serial(), 3);

    // A CNAME replaces the name's other records; an address replaces a CNAME.
    let c = z.set(&name("rotate.test"), RecordType::CNAME, &["api.github.test".into()], None).unwrap();
    let removed: Vec<RecordType> = c.iter().filter(|c| c.after.is_empty()).map(|c| c.rtype).collect();
    assert_eq!(removed, [RecordType::A, RecordType::TXT]);
    assert_eq!(types_of(&z, "rotate.test"), [RecordType::CNAME]);
    assert!(z.rotating().is_empty());
    let c = z.set(&name("alias.github.test"), RecordType::AAAA, &["2001:db8::1".into()], Some(7)).unwrap();
    assert_eq!(c[0].to_string(), "alias.github.test. CNAME: mid.github.test. (ttl 30) -> nothing");
    assert_eq!(types_of(&z, "alias.github.test"), [RecordType::AAAA]);

    // What the zone must not hold, or `set` does not set.
    for (n, t, v) in [
        ("api.github.test", RecordType::A, "2001:db8::1"),
        ("api.github.test", RecordType::AAAA, "203.0.113.5"),
        ("api.github.test", RecordType::TXT, "x"),
        ("test", RecordType::CNAME, "api.github.test"),
    ] {
        let before = z.clone();
        assert!(z.set(&name(n), t, &[v.into()], None).is_err(), "{n} {t} {v}");
        assert_eq!(z, before, "a refused change changes nothing");
    }
    assert!(z.set(&name("x.test"), RecordType::CNAME, &["a.test".into(), "b.test".into()], None).is_err());
    assert!(parse_name("api.github.com").is_err(), "outside the zone");

    // The rewritten zone reads back the same.
    let text = z.to_text().unwrap();
    assert_eq!(Zone::parse(&text, None).unwrap().lines(None), z.lines(None));
    for line in [
        "test. 30 IN SOA ns.test. hostmaster.test. 5 3600 600 86400 5",
        "new.test. 0 IN A 203.0.113.71",
        "rotate.test. 30 IN CNAME api.github.test.",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in {text}");
    }
}

#[test]
fn zones_hickory_cannot_serve_are_refused_when_loaded() {
    let soa = "$ORIGIN test.\n$TTL 30\n@ IN SOA ns.test. h.test. 1 3600 600 86400 5\n";
    if let Err(e) = Zone::parse(soa, None) {
        panic!("{e:#}");
    }
    assert!(Zone::parse("$ORIGIN test.\nx IN A 10.0.0.1\n", None).is_err(), "no SOA");
    assert!(Zone::parse(&format!("{soa}x IN A 10.0.0.1\nx IN CNAME y\n"), None).is_err(), "CNAME beside data");
    assert!(Zone::parse(&format!("{soa}x IN A 300.0.0.1\n"), None).is_err());
}

// The server, on loopback: real UDP and TCP exchanges with hickory's server and the rotation.

struct Running {
    udp: SocketAddr,
    tcp: SocketAddr,
    handler: Arc<LabZone>,
    _server: hickory_server::Server<Catalog>,
}

async fn running(zone: &Zone) -> Running {
    let handler = Arc::new(LabZone::new(zone).unwrap());
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (u, t) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
    Running { udp: u, tcp: t, handler: handler.clone(), _server: server(handler, udp, tcp) }
}

fn query(id: u16, n: &str, t: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(name(n), t));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.edns = Some(e);
    }
    m.to_vec().unwrap()
}

/// One UDP exchange: the answer and its size in bytes.
async fn udp(to: SocketAddr, n: &str, t: RecordType, edns: Option<u16>) -> (Message, usize) {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(&query(7, n, t, edns), to).await.unwrap();
    let mut buf = vec![0; 65536];
    let len = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf)).await.expect("no answer").unwrap();
    let m = Message::from_vec(&buf[..len]).unwrap();
    assert_eq!(m.metadata.id, 7);
    (m, len)
}

/// Several queries on one TCP connection, answered in turn.
async fn tcp(to: SocketAddr, queries: &[(&str, RecordType)]) -> Vec<Message> {
    let mut c = tokio::net::TcpStream::connect(to).await.unwrap();
    let mut out = Vec::new();
    for (i, (n, t)) in queries.iter().enumerate() {
        let q = query(i as u16, n, *t, None);
        c.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
        c.write_all(&q).await.unwrap();
        let len = c.read_u16().await.unwrap();
        let mut buf = vec![0; usize::from(len)];
        c.read_exact(&mut buf).await.unwrap();
        let m = Message::from_vec(&buf).unwrap();
        assert_eq!(m.metadata.id, i as u16);
        out.push(m);
    }
    out
}

fn answer_ips(m: &Message) -> Vec<String> {
    m.answers.iter().filter_map(|r| r.data.ip_addr()).map(|ip| ip.to_string()).collect()
}

#[tokio::test]
async fn the_server_answers_as_an_authoritative_server() {
    let s = running(&example()).await;

    let (m, _) = udp(s.udp, "api.github.test", RecordType::A, None).await;
    assert!(m.metadata.authoritative);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answer_ips(&m), ["203.0.113.5"]);

    // The CNAME chain is followed inside the answer.
    let (m, _) = udp(s.udp, "alias.github.test", RecordType::A, None).await;
    let answer: Vec<String> = m.answers.iter().map(|r| format!("{} {}", r.name, r.data)).collect();
    assert_eq!(
        answer,
        ["alias.github.test. mid.github.test.", "mid.github.test. api.github.test.", "api.github.test. 203.0.113.5"]
    );

    let (m, _) = udp(s.udp, "ttl0.test", RecordType::A, None).await;
    assert_eq!(m.answers.iter().map(|r| r.ttl).collect::<Vec<_>>(), [0]);
    let (m, _) = udp(s.udp, "n0005.fresh.test", RecordType::A, None).await;
    assert_eq!((answer_ips(&m), m.answers[0].ttl), (vec!["198.18.0.6".to_string()], 5));

    let (m, _) = udp(s.udp, "v6only.test", RecordType::AAAA, None).await;
    assert_eq!(answer_ips(&m), ["2001:db8:113::5"]);
    let (m, _) = udp(s.udp, "v6only.test", RecordType::A, None).await;
    assert_eq!((m.metadata.response_code, m.answers.len()), (ResponseCode::NoError, 0));

    let (m, _) = udp(s.udp, "nothere.test", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.authoritative);

    // 120 addresses do not fit in 512 bytes (no EDNS) nor in 1232 (EDNS): truncated, TC set.
    let (m, len) = udp(s.udp, "many.test", RecordType::A, None).await;
    assert!(m.metadata.truncation, "TC without EDNS");
    assert!(len <= 512, "{len} bytes");
    let (m, len) = udp(s.udp, "many.test", RecordType::A, Some(1232)).await;
    assert!(m.metadata.truncation, "TC with EDNS 1232");
    assert!(len <= 1232, "{len} bytes");
    // A client announcing 4096 bytes gets all of them over UDP.
    let (m, _) = udp(s.udp, "many.test", RecordType::A, Some(4096)).await;
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 120);

    // TCP: every address, several queries on one connection.
    let ms = tcp(
        s.tcp,
        &[("many.test", RecordType::A), ("api.github.test", RecordType::A), ("nothere.test", RecordType::A)],
    )
    .await;
    assert_eq!(answer_ips(&ms[0]).len(), 120);
    assert!(!ms[0].metadata.truncation);
    assert_eq!(answer_ips(&ms[1]), ["203.0.113.5"]);
    assert_eq!(ms[2].metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn rotate_test_answers_the_next_address_each_query_over_udp_and_tcp() {
    let s = running(&example()).await;
    let mut seen = Vec::new();
    for _ in 0..40 {
        let (m, _) = udp(s.udp, "rotate.test", RecordType::A, None).await;
        let ips = answer_ips(&m);
        assert_eq!(ips.len(), 1, "{ips:?}");
        seen.push(ips[0].clone());
    }
    let want: Vec<String> = (192..232).map(|i| format!("203.0.113.{i}")).collect();
    assert_eq!(seen, want);
    let ms = tcp(s.tcp, &[("rotate.test", RecordType::A), ("rotate.test", RecordType::A)]).await;
    assert_eq!(answer_ips(&ms[0]), ["203.0.113.192"], "round and round");
    assert_eq!(answer_ips(&ms[1]), ["203.0.113.193"]);
}

#[tokio::test]
async fn a_reloaded_zone_is_served_at_once() {
    let mut z = example();
    let s = running(&z).await;
    z.set(&name("api.github.test"), RecordType::A, &["198.51.100.8".into()], Some(0)).unwrap();
    z.set(&name("rotate.test"), RecordType::CNAME, &["www.example.test".into()], None).unwrap();
    s.handler.replace(&z).unwrap();
    let (m, _) = udp(s.udp, "api.github.test", RecordType::A, None).await;
    assert_eq!(answer_ips(&m), ["198.51.100.8"]);
    let (m, _) = udp(s.udp, "rotate.test", RecordType::A, None).await;
    assert_eq!(answer_ips(&m), ["198.51.100.8"]);
    assert_eq!(m.answers.len(), 2, "the CNAME and the address");
}
