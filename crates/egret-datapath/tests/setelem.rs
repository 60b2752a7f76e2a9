//! Privileged: the set writer against the kernel, in a namespace of its own with table `inet
//! egret` and timeout sets made by `nft -f -`: elements with comments read back by nft, timeouts
//! refreshed by adding again, deletion, a long list in one call, refusals with typed errors
//! (and nothing half-applied), and the socket still usable after each.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use egret_datapath::nft::setelem::Missing;
use egret_datapath::setwriter::read_set;
use egret_datapath::{Config, Element, LiveElement, SetElemError, SetWriter, TABLE};
use egret_netns::{Netns, unique_prefix};
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

/// A namespace with table `inet egret`: sets `dns4`, `dns6` (timeouts) and `small4` (at most 2).
fn namespace(tag: &str) -> Netns {
    let ns = Netns::create(&unique_prefix(tag)).unwrap();
    let ruleset = format!(
        "table inet {TABLE} {{
            set dns4 {{ type ipv4_addr; flags timeout; }}
            set dns6 {{ type ipv6_addr; flags timeout; }}
            set small4 {{ type ipv4_addr; flags timeout; size 2; }}
        }}"
    );
    ns.exec_stdin("nft", &["-f", "-"], &ruleset).unwrap();
    ns
}

fn elem(addr: &str, secs: u64, comment: Option<&str>) -> Element {
    Element { addr: addr.parse().unwrap(), timeout: Duration::from_secs(secs), comment: comment.map(str::to_string) }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn read(set: &str) -> Vec<LiveElement> {
    let mut v = read_set(&Config::default(), TABLE, set).unwrap();
    v.sort_by_key(|e| e.addr);
    v
}

fn addrs(set: &str) -> Vec<IpAddr> {
    read(set).into_iter().map(|e| e.addr).collect()
}

/// The live element `addr` of `set`.
fn live(set: &str, addr: &str) -> LiveElement {
    read(set).into_iter().find(|e| e.addr == ip(addr)).unwrap_or_else(|| panic!("{addr} not in {set}"))
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn elements_with_timeouts_and_comments_are_in_the_kernel_when_add_returns() {
    egret_netns::require_privileged();
    let ns = namespace("setelem-add");
    ns.run(|| {
        let mut w = SetWriter::open().unwrap();
        w.add(TABLE, "dns4", &[elem("192.0.2.1", 300, Some("example.com")), elem("192.0.2.2", 3600, None)]).unwrap();
        w.add(TABLE, "dns6", &[elem("2001:db8::1", 120, Some("ipv6.example.com"))]).unwrap();

        let a = live("dns4", "192.0.2.1");
        assert_eq!(a.timeout, Some(Duration::from_secs(300)));
        assert!(a.expires.is_some_and(|e| e <= Duration::from_secs(300) && e >= Duration::from_secs(240)), "{a:?}");
        assert_eq!(a.comment.as_deref(), Some("example.com"));
        let b = live("dns4", "192.0.2.2");
        assert_eq!((b.timeout, b.comment), (Some(Duration::from_secs(3600)), None));
        let c = live("dns6", "2001:db8::1");
        assert_eq!((c.timeout, c.comment.as_deref()), (Some(Duration::from_secs(120)), Some("ipv6.example.com")));
    })
    .unwrap();
    // nft's own rendering shows the comment as it shows one nft wrote.
    let text = ns.exec("nft", &["list", "set", "inet", TABLE, "dns4"]).unwrap();
    assert!(text.contains("192.0.2.1 timeout 5m expires") && text.contains("comment \"example.com\""), "{text}");
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn adding_an_element_again_refreshes_its_timeout_and_expiry() {
    egret_netns::require_privileged();
    let ns = namespace("setelem-refresh");
    ns.run(|| {
        let mut w = SetWriter::open().unwrap();
        w.add(TABLE, "dns4", &[elem("192.0.2.1", 60, Some("first"))]).unwrap();
        assert_eq!(live("dns4", "192.0.2.1").timeout, Some(Duration::from_secs(60)));

        // Longer: both the timeout and the time left grow past what the first add gave.
        w.add(TABLE, "dns4", &[elem("192.0.2.1", 7200, Some("second"))]).unwrap();
        let e = live("dns4", "192.0.2.1");
        assert_eq!(e.timeout, Some(Duration::from_secs(7200)));
        assert!(e.expires.is_some_and(|x| x > Duration::from_secs(3600)), "{e:?}");
        // The comment stays the one of the first addition.
        assert_eq!(e.comment.as_deref(), Some("first"));

        // Shorter: the expiry moves earlier too.
        w.add(TABLE, "dns4", &[elem("192.0.2.1", 30, None)]).unwrap();
        let e = live("dns4", "192.0.2.1");
        assert_eq!(e.timeout, Some(Duration::from_secs(30)));
        assert!(e.expires.is_some_and(|x| x <= Duration::from_secs(30)), "{e:?}");
        assert_eq!(addrs("dns4").len(), 1);
    })
    .unwrap();
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn deleting_removes_elements_and_a_missing_one_deletes_nothing() {
    egret_netns::require_privileged();
    let ns = namespace("setelem-del");
    ns.run(|| {
        let mut w = SetWriter::open().unwrap();
        w.add(TABLE, "dns4", &[elem("192.0.2.1", 60, None), elem("192.0.2.2", 60, None), elem("192.0.2.3", 60, None)])
            .unwrap();
        w.delete(TABLE, "dns4", &[ip("192.0.2.1"), ip("192.0.2.3")]).unwrap();
        assert_eq!(addrs("dns4"), vec![ip("192.0.2.2")]);

        // One address not in the set: the call fails naming it, and the other stays.
        match w.delete(TABLE, "dns4", &[ip("192.0.2.2"), ip("192.0.2.9")]) {
            Err(SetElemError::NotFound { missing: Missing::Element(a), .. }) => assert_eq!(a, ip("192.0.2.9")),
            other => panic!("{other:?}"),
        }
        assert_eq!(addrs("dns4"), vec![ip("192.0.2.2")]);
        w.delete(TABLE, "dns4", &[ip("192.0.2.2")]).unwrap();
        assert!(addrs("dns4").is_empty());
    })
    .unwrap();
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn a_hundred_and_twenty_ipv6_addresses_with_comments_go_in_one_call() {
    egret_netns::require_privileged();
    let ns = namespace("setelem-many");
    ns.run(|| {
        let mut w = SetWriter::open().unwrap();
        let comment = format!("{}.example.com", "a".repeat(100));
        let elems: Vec<Element> = (1..=120u128)
            .map(|i| Element {
                addr: IpAddr::V6(Ipv6Addr::from(0x2001_0db8_0000_0000_0000_0000_0000_0000 + i)),
                timeout: Duration::from_secs(600),
                comment: Some(comment.clone()),
            })
            .collect();
        w.add(TABLE, "dns6", &elems).unwrap();
        let got = read("dns6");
        assert_eq!(got.iter().map(|e| e.addr).collect::<Vec<_>>(), elems.iter().map(|e| e.addr).collect::<Vec<_>>());
        assert!(
            got.iter()
                .all(|e| e.comment.as_deref() == Some(comment.as_str()) && e.timeout == Some(Duration::from_secs(600)))
        );
        w.delete(TABLE, "dns6", &elems.iter().map(|e| e.addr).collect::<Vec<_>>()).unwrap();
        assert!(read("dns6").is_empty());
    })
    .unwrap();
}

#[test]
#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]
fn refusals_are_typed_change_nothing_and_leave_the_socket_usable() {
    egret_netns::require_privileged();
    let ns = namespace("setelem-err");
    ns.run(|| {
        let mut w = SetWriter::open().unwrap();
        let one = [elem("192.0.2.1", 60, None)];
        match w.add(TABLE, "nosuch", &one) {
            Err(SetElemError::NotFound { missing: Missing::Set, set, .. }) => assert_eq!(set, "nosuch"),
            other => panic!("{other:?}"),
        }
        w.add(TABLE, "dns4", &one).unwrap();
        match w.add("nosuch", "dns4", &one) {
            Err(SetElemError::NotFound { missing: Missing::Table, table, .. }) => assert_eq!(table, "nosuch"),
            other => panic!("{other:?}"),
        }
        // An IPv4 address in an IPv6 set: the kernel refuses that element (key length).
        match w.add(TABLE, "dns6", &one) {
            Err(SetElemError::Refused { what, source, .. }) => {
                assert_eq!(what, "element 192.0.2.1");
                assert_eq!(source.raw_os_error(), Some(libc::EINVAL));
            }
            other => panic!("{other:?}"),
        }
        assert!(addrs("dns6").is_empty());
        // Past the set's size: refused as a whole.
        match w.add(
            TABLE,
            "small4",
            &[elem("192.0.2.1", 60, None), elem("192.0.2.2", 60, None), elem("192.0.2.3", 60, None)],
        ) {
            Err(SetElemError::SetFull { set, .. }) => assert_eq!(set, "small4"),
            other => panic!("{other:?}"),
        }
        assert!(addrs("small4").is_empty());
        assert_eq!(addrs("dns4"), vec![ip("192.0.2.1")]);

        // After every refusal the same socket goes on working.
        w.add(TABLE, "dns4", &[elem("192.0.2.2", 60, Some("after"))]).unwrap();
        w.add(TABLE, "small4", &[elem("192.0.2.1", 60, None), elem("192.0.2.2", 60, None)]).unwrap();
        assert_eq!(addrs("dns4"), vec![ip("192.0.2.1"), ip("192.0.2.2")]);
        assert_eq!(addrs("small4").len(), 2);
    })
    .unwrap();
}
