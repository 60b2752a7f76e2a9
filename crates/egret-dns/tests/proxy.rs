//! Privileged: the proxy with real packets over IPv4 and IPv6. A pod namespace asks a resolver
//! namespace through a node namespace whose nft table hands the pod's port-53 traffic to the
//! proxy by TPROXY, as Egret's `dns` chain does (here written by hand: this crate has no
//! datapath). The programmer is a recorder that takes a while; every answer for an allowed name
//! must reach the pod only after its addresses were recorded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use egret_core::policy::fqdn::FqdnPattern;
use egret_dns::{DnsMetrics, Element, NameRuleSets, Programmer, ProxyConfig, Shared};
use egret_netns::{Netns, unique_prefix};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PORT: u16 = 15353;
const POD4: &str = "10.77.0.2";
const POD6: &str = "fd77::2";
const RESOLVER4: &str = "10.78.0.2";
const RESOLVER6: &str = "fd78::2";
/// What the resolver answers: `api.example.test` is allowed to the pod, `other.test` is not.
const ALLOWED4: &str = "192.0.2.10";
const ALLOWED6: &str = "2001:db8::10";
const OTHER4: &str = "192.0.2.20";
/// Per family: the resolver, the record type asked, the rule's set and the address it learns.
const FAMILIES: [(&str, RecordType, &str, &str); 2] =
    [(RESOLVER4, RecordType::A, "fq4_test", ALLOWED4), (RESOLVER6, RecordType::AAAA, "fq6_test", ALLOWED6)];

/// Records what it is asked to program, after a delay (so a released answer that did not
/// wait would be caught).
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Element>>>);

impl Programmer for Recorder {
    fn add(&mut self, elems: &[Element]) -> Result<(), String> {
        std::thread::sleep(Duration::from_millis(20));
        self.0.lock().unwrap().extend_from_slice(elems);
        Ok(())
    }
    fn delete(&mut self, _: &[(String, IpAddr)]) -> Result<(), String> {
        Ok(())
    }
}

impl Recorder {
    fn has(&self, set: &str, addr: &str) -> bool {
        let addr: IpAddr = addr.parse().unwrap();
        self.0.lock().unwrap().iter().any(|e| e.set == set && e.addr == addr)
    }
}

/// The three namespaces, plumbed; the resolver serves until dropped.
struct Lab {
    pod: Netns,
    node: Netns,
    _resolver: Netns,
    stop: Arc<AtomicBool>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn sh(ns: &Netns, args: &[&str]) {
    ns.ip(args).unwrap_or_else(|e| panic!("ip {args:?} in {}: {e}", ns.name()));
}

fn lab(tag: &str) -> Lab {
    let prefix = unique_prefix(tag);
    let pod = Netns::create(&format!("{prefix}-p")).unwrap();
    let node = Netns::create(&format!("{prefix}-n")).unwrap();
    let resolver = Netns::create(&format!("{prefix}-r")).unwrap();
    for ns in [&pod, &node, &resolver] {
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0").unwrap();
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0").unwrap();
        sh(ns, &["link", "set", "lo", "up"]);
    }
    sh(&node, &["link", "add", "n0", "type", "veth", "peer", "name", "p0", "netns", pod.name()]);
    sh(&node, &["link", "add", "n1", "type", "veth", "peer", "name", "r0", "netns", resolver.name()]);
    for (ns, dev, v4, v6, gw4, gw6) in [
        (&pod, "p0", "10.77.0.2/24", "fd77::2/64", Some("10.77.0.1"), Some("fd77::1")),
        (&node, "n0", "10.77.0.1/24", "fd77::1/64", None, None),
        (&node, "n1", "10.78.0.1/24", "fd78::1/64", None, None),
        (&resolver, "r0", "10.78.0.2/24", "fd78::2/64", Some("10.78.0.1"), Some("fd78::1")),
    ] {
        sh(ns, &["addr", "add", v4, "dev", dev]);
        sh(ns, &["-6", "addr", "add", v6, "dev", dev, "nodad"]);
        sh(ns, &["link", "set", dev, "up"]);
        if let (Some(g4), Some(g6)) = (gw4, gw6) {
            sh(ns, &["route", "add", "default", "via", g4]);
            sh(ns, &["-6", "route", "add", "default", "via", g6]);
        }
    }
    node.sysctl("net.ipv4.ip_forward", "1").unwrap();
    node.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    // What Egret's `dns` chain and its policy routing do for pods under name rules.
    let ruleset = format!(
        "table inet egret_test {{
            chain dns {{
                type filter hook prerouting priority -155; policy accept;
                ip saddr {POD4} meta l4proto {{ tcp, udp }} th dport 53 tproxy ip to 127.0.0.1:{PORT} meta mark set 0x100 accept
                ip6 saddr {POD6} meta l4proto {{ tcp, udp }} th dport 53 tproxy ip6 to [::1]:{PORT} meta mark set 0x100 accept
            }}
        }}"
    );
    node.exec_stdin("nft", &["-f", "-"], &ruleset).unwrap();
    sh(&node, &["rule", "add", "fwmark", "0x100", "lookup", "100"]);
    sh(&node, &["route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100"]);
    sh(&node, &["-6", "rule", "add", "fwmark", "0x100", "lookup", "100"]);
    sh(&node, &["-6", "route", "add", "local", "::/0", "dev", "lo", "table", "100"]);
    let stop = Arc::new(AtomicBool::new(false));
    for addr in [RESOLVER4, RESOLVER6] {
        let at = SocketAddr::new(addr.parse().unwrap(), 53);
        let udp = resolver.run(|| UdpSocket::bind(at)).unwrap().unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let s = stop.clone();
        std::thread::spawn(move || serve_udp(&udp, &s));
        let tcp = resolver.run(|| TcpListener::bind(at)).unwrap().unwrap();
        tcp.set_nonblocking(true).unwrap();
        let s = stop.clone();
        std::thread::spawn(move || serve_tcp(&tcp, &s));
    }
    Lab { pod, node, _resolver: resolver, stop }
}

/// The resolver's answer to a query (every name is known; TTL 30 s).
fn respond(q: &[u8]) -> Vec<u8> {
    let q = Message::from_vec(q).unwrap();
    let question = q.queries[0].clone();
    let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    let name = question.name.clone();
    let data = match (name.to_ascii().as_str(), question.query_type) {
        ("api.example.test.", RecordType::A) => Some(RData::A(A(ALLOWED4.parse().unwrap()))),
        ("api.example.test.", RecordType::AAAA) => Some(RData::AAAA(AAAA(ALLOWED6.parse().unwrap()))),
        ("other.test.", RecordType::A) => Some(RData::A(A(OTHER4.parse().unwrap()))),
        _ => None,
    };
    m.queries.push(question);
    m.answers.extend(data.map(|d| Record::from_rdata(name, 30, d)));
    m.to_vec().unwrap()
}

fn serve_udp(s: &UdpSocket, stop: &AtomicBool) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&respond(&buf[..n]), from);
        }
    }
}

fn serve_tcp(l: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let Ok((mut c, _)) = l.accept() else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        c.set_nonblocking(false).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        while let Some(q) = read_frame(&mut c) {
            let a = respond(&q);
            let mut out = (a.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(&a);
            if c.write_all(&out).is_err() {
                break;
            }
        }
    }
}

fn read_frame(c: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    c.read_exact(&mut len).ok()?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    c.read_exact(&mut buf).ok()?;
    Some(buf)
}

fn query(id: u16, name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.queries.push(Query::query(Name::from_str(name).unwrap(), t));
    m.to_vec().unwrap()
}

/// The addresses an answer holds, by ID.
fn addresses(bytes: &[u8]) -> (u16, Vec<IpAddr>) {
    let m = Message::from_vec(bytes).unwrap();
    let ips = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    (m.metadata.id, ips)
}

fn rule_sets() -> Arc<NameRuleSets> {
    Arc::new(NameRuleSets {
        policy: "ClusterEgressPolicy test".into(),
        rule: "api".into(),
        patterns: vec![FqdnPattern::parse("api.example.test").unwrap()],
        set4: "fq4_test".into(),
        set6: "fq6_test".into(),
    })
}

/// Starts the proxy in the node namespace (on a runtime of its own thread, as the agent does);
/// it stops when the returned sender is dropped.
fn start_proxy(node: &Netns, rec: &Recorder) -> (tokio::sync::oneshot::Sender<()>, Arc<DnsMetrics>) {
    let shared = Arc::new(Shared::default());
    let rules = Arc::new(vec![rule_sets()]);
    let mut pods = HashMap::new();
    pods.insert(POD4.parse().unwrap(), rules.clone());
    pods.insert(POD6.parse().unwrap(), rules);
    *shared.pods.write().unwrap() = pods;
    let metrics = Arc::new(DnsMetrics::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let cfg = ProxyConfig { port: PORT, ..ProxyConfig::default() };
    let (m, rec) = (metrics.clone(), rec.clone());
    node.spawn_thread(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            tokio::select! {
                res = egret_dns::run(cfg, shared, m, rec) => panic!("the proxy stopped: {res:?}"),
                _ = stopped => {}
            }
        });
    })
    .unwrap();
    // Listening once the gauge says so.
    for _ in 0..200 {
        if metrics.up.get() == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(metrics.up.get(), 1, "the proxy did not come up");
    (stop, metrics)
}

fn count(m: &DnsMetrics, proto: &str, result: &str) -> u64 {
    let labels = vec![("protocol".to_string(), proto.to_string()), ("result".to_string(), result.to_string())];
    m.queries.get_or_create(&labels).get()
}

fn learned(m: &DnsMetrics, proto: &str) -> u64 {
    count(m, proto, "learned")
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn udp_answers_reach_the_pod_from_its_resolver_after_programming_over_ipv4_and_ipv6() {
    egret_netns::require_privileged();
    let lab = lab("dnsp-udp");
    let rec = Recorder::default();
    let (_stop, metrics) = start_proxy(&lab.node, &rec);
    for (resolver, qtype, set, allowed) in FAMILIES {
        let to = SocketAddr::new(resolver.parse().unwrap(), 53);
        let rec = rec.clone();
        lab.pod
            .run(move || {
                let any: SocketAddr =
                    if to.is_ipv6() { "[::]:0".parse().unwrap() } else { "0.0.0.0:0".parse().unwrap() };
                let s = UdpSocket::bind(any).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                // The allowed name and another, back to back on one port: both answered, and
                // the allowed one only once the kernel (here the recorder) holds its address.
                s.send_to(&query(100, "api.example.test.", qtype), to).unwrap();
                s.send_to(&query(101, "other.test.", RecordType::A), to).unwrap();
                let mut got = HashMap::new();
                let mut buf = [0u8; 4096];
                while got.len() < 2 {
                    let (n, from) = s.recv_from(&mut buf).unwrap_or_else(|e| panic!("no answer from {to}: {e}"));
                    assert_eq!(from, to, "the answer must come from the resolver the pod asked");
                    let (id, ips) = addresses(&buf[..n]);
                    if id == 100 {
                        assert!(rec.has(set, allowed), "answer released before {allowed} was programmed");
                    }
                    got.insert(id, ips);
                }
                assert_eq!(got[&100], vec![allowed.parse::<IpAddr>().unwrap()]);
                assert_eq!(got[&101], vec![OTHER4.parse::<IpAddr>().unwrap()]);
                // A later query from the same port is served by the same session.
                s.send_to(&query(102, "other.test.", RecordType::A), to).unwrap();
                let (n, _) = s.recv_from(&mut buf).unwrap();
                assert_eq!(addresses(&buf[..n]).0, 102);
            })
            .unwrap();
    }
    assert!(!rec.has("fq4_test", OTHER4), "a name no rule allows was programmed");
    assert_eq!(learned(&metrics, "udp"), 2);
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn tcp_queries_split_across_segments_are_answered_in_order_over_ipv4_and_ipv6() {
    egret_netns::require_privileged();
    let lab = lab("dnsp-tcp");
    let rec = Recorder::default();
    let (_stop, metrics) = start_proxy(&lab.node, &rec);
    for (resolver, qtype, set, allowed) in FAMILIES {
        let to = SocketAddr::new(resolver.parse().unwrap(), 53);
        let rec = rec.clone();
        lab.pod
            .run(move || {
                let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(2)).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                c.set_nodelay(true).unwrap();
                let mut first = query(200, "api.example.test.", qtype);
                first.splice(0..0, (first.len() as u16).to_be_bytes());
                let (head, tail) = first.split_at(5);
                c.write_all(head).unwrap();
                std::thread::sleep(Duration::from_millis(30));
                c.write_all(tail).unwrap();
                let second = query(201, "other.test.", RecordType::A);
                c.write_all(&(second.len() as u16).to_be_bytes()).unwrap();
                c.write_all(&second).unwrap();
                let a = read_frame(&mut c).expect("first answer");
                assert!(rec.has(set, allowed), "answer released before {allowed} was programmed");
                assert_eq!(addresses(&a), (200, vec![allowed.parse::<IpAddr>().unwrap()]));
                let b = read_frame(&mut c).expect("second answer");
                assert_eq!(addresses(&b), (201, vec![OTHER4.parse::<IpAddr>().unwrap()]));
                assert_eq!(c.peer_addr().unwrap(), to, "the pod talks to the resolver it addressed");
            })
            .unwrap();
    }
    assert_eq!(learned(&metrics, "tcp"), 2);
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn every_answer_reaches_its_own_port_when_many_ports_ask_at_once() {
    egret_netns::require_privileged();
    let lab = lab("dnsp-many");
    let rec = Recorder::default();
    let (_stop, metrics) = start_proxy(&lab.node, &rec);
    let to = SocketAddr::new(RESOLVER4.parse().unwrap(), 53);
    // Bursts of new ports, as stub resolvers that open a socket per lookup make: sessions are
    // being set up while the next ports' first queries arrive.
    let wrong = lab
        .pod
        .run(move || {
            let mut wrong = Vec::new();
            for burst in 0..40u16 {
                let socks: Vec<(u16, UdpSocket)> = (0..50u16)
                    .map(|i| {
                        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                        let id = burst * 50 + i;
                        s.send_to(&query(id, "other.test.", RecordType::A), to).unwrap();
                        (id, s)
                    })
                    .collect();
                let mut buf = [0u8; 4096];
                for (id, s) in socks {
                    match s.recv_from(&mut buf) {
                        Ok((n, _)) if addresses(&buf[..n]).0 == id => {}
                        Ok((n, _)) => wrong.push(format!("query {id} got the answer to {}", addresses(&buf[..n]).0)),
                        Err(e) => wrong.push(format!("query {id}: no answer ({e})")),
                    }
                }
            }
            wrong
        })
        .unwrap();
    let results: Vec<(&str, u64)> =
        ["passed", "mismatched_answer", "unusable", "upstream_error", "upstream_timeout", "no_rules"]
            .into_iter()
            .map(|r| (r, count(&metrics, "udp", r)))
            .collect();
    assert!(
        wrong.is_empty(),
        "{} of 2000 answers went wrong: {:?}; the proxy's counts: {results:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
}
