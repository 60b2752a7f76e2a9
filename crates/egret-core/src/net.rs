//! Address arithmetic shared by allocation and planning. Addresses of both families map onto
//! `u128` inside a [`Family`], so one implementation serves IPv4 and IPv6.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The family of a network.
    pub fn of_net(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    /// Address width in bits.
    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// The largest address value.
    pub fn max(self) -> u128 {
        match self {
            Family::V4 => u32::MAX as u128,
            Family::V6 => u128::MAX,
        }
    }

    /// The network covering every address of the family.
    pub fn everything(self) -> IpNet {
        match self {
            Family::V4 => IpNet::V4(Ipv4Net::default()),
            Family::V6 => IpNet::V6(Ipv6Net::default()),
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// An address as a number.
pub fn to_u128(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(*a) as u128,
        IpAddr::V6(a) => u128::from(*a),
    }
}

/// A number as an address of `family`. Values above the IPv4 maximum are truncated, which never
/// happens for values produced from IPv4 ranges.
pub fn from_u128(family: Family, v: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span {
    /// The family of both ends.
    pub family: Family,
    /// First address.
    pub start: u128,
    /// Last address (inclusive).
    pub end: u128,
}

impl Span {
    /// The span from `start` to `end`; `None` unless both are of one family and `start <= end`.
    pub fn new(start: IpAddr, end: IpAddr) -> Option<Span> {
        let family = Family::of(&start);
        if family != Family::of(&end) {
            return None;
        }
        let (s, e) = (to_u128(&start), to_u128(&end));
        (s <= e).then_some(Span { family, start: s, end: e })
    }

    /// Every address of a network.
    pub fn of_net(net: &IpNet) -> Span {
        let family = Family::of_net(net);
        Span { family, start: to_u128(&net.network()), end: to_u128(&net.broadcast()) }
    }

    /// Number of addresses, saturating at `u128::MAX` for the whole IPv6 space.
    pub fn len(&self) -> u128 {
        (self.end - self.start).saturating_add(1)
    }

    /// A span always holds at least one address.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether the address lies in the span.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        Family::of(ip) == self.family && (self.start..=self.end).contains(&to_u128(ip))
    }

    /// Whether the two spans share an address.
    pub fn overlaps(&self, o: &Span) -> bool {
        self.family == o.family && self.start <= o.end && o.start <= self.end
    }

    /// Whether `o` lies entirely inside this span.
    pub fn covers(&self, o: &Span) -> bool {
        self.family == o.family && self.start <= o.start && o.end <= self.end
    }

    /// First address.
    pub fn first(&self) -> IpAddr {
        from_u128(self.family, self.start)
    }

    /// Last address.
    pub fn last(&self) -> IpAddr {
        from_u128(self.family, self.end)
    }

    /// The smallest list of CIDRs covering exactly this span, in address order.
    pub fn to_cidrs(&self) -> Vec<IpNet> {
        fn mask(k: u32) -> u128 {
            if k >= 128 { u128::MAX } else { (1u128 << k) - 1 }
        }
        let bits = self.family.bits() as u32;
        let mut out = Vec::new();
        let mut cur = self.start;
        loop {
            // Largest block aligned at `cur` that does not pass `end`; alignment keeps
            // `cur + mask(k)` from overflowing.
            let mut k = if cur == 0 { bits } else { cur.trailing_zeros().min(bits) };
            while k > 0 && cur + mask(k) > self.end {
                k -= 1;
            }
            let prefix = (bits - k) as u8;
            out.push(match self.family {
                Family::V4 => IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::from(cur as u32), prefix)),
                Family::V6 => IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::from(cur), prefix)),
            });
            let last = cur + mask(k);
            if last >= self.end {
                break;
            }
            cur = last + 1;
        }
        out
    }
}

/// A set of addresses of one family kept as sorted, disjoint, non-adjacent spans.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpanSet {
    spans: Vec<(u128, u128)>,
}

impl SpanSet {
    /// The empty set.
    pub fn new() -> SpanSet {
        SpanSet::default()
    }

    /// Whether the set holds no address.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The spans, in address order.
    pub fn spans(&self) -> &[(u128, u128)] {
        &self.spans
    }

    /// The union of many spans: sorted and merged in one pass (cheaper than repeated inserts).
    pub fn from_spans(mut spans: Vec<(u128, u128)>) -> SpanSet {
        spans.sort_unstable();
        let mut out: Vec<(u128, u128)> = Vec::with_capacity(spans.len());
        for (s, e) in spans {
            match out.last_mut() {
                Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        SpanSet { spans: out }
    }

    /// Adds `[s, e]`.
    pub fn insert(&mut self, s: u128, e: u128) {
        let mut ns = s;
        let mut ne = e;
        let mut out = Vec::with_capacity(self.spans.len() + 1);
        let mut placed = false;
        for &(a, b) in &self.spans {
            if b.saturating_add(1) < ns {
                out.push((a, b));
            } else if ne.saturating_add(1) < a {
                if !placed {
                    out.push((ns, ne));
                    placed = true;
                }
                out.push((a, b));
            } else {
                ns = ns.min(a);
                ne = ne.max(b);
            }
        }
        if !placed {
            out.push((ns, ne));
            out.sort_unstable();
        }
        self.spans = out;
    }

    /// The parts of `[s, e]` not in the set, in address order.
    pub fn gaps(&self, s: u128, e: u128) -> Vec<(u128, u128)> {
        let mut out = Vec::new();
        let mut cur = s;
        for &(a, b) in &self.spans {
            if b < cur {
                continue;
            }
            if a > e {
                break;
            }
            if a > cur {
                out.push((cur, a - 1));
            }
            if b >= e {
                return out;
            }
            cur = b + 1;
        }
        out.push((cur, e));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_decomposition_is_minimal_and_exact() {
        let s = Span::new("10.0.0.1".parse().unwrap(), "10.0.0.6".parse().unwrap()).unwrap();
        let c: Vec<String> = s.to_cidrs().iter().map(|n| n.to_string()).collect();
        assert_eq!(c, vec!["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]);
        assert_eq!(Span::of_net(&net("0.0.0.0/0")).to_cidrs(), vec![net("0.0.0.0/0")]);
        assert_eq!(Span::of_net(&net("::/0")).to_cidrs(), vec![net("::/0")]);
        assert_eq!(Span::of_net(&net("::/1")).to_cidrs(), vec![net("::/1")]);
        let top = Span { family: Family::V6, start: u128::MAX - 1, end: u128::MAX };
        assert_eq!(top.to_cidrs(), vec![net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127")]);
    }

    #[test]
    fn spanset_merges_and_finds_gaps() {
        let mut s = SpanSet::new();
        s.insert(10, 20);
        s.insert(30, 40);
        s.insert(21, 25);
        assert_eq!(s.spans(), &[(10, 25), (30, 40)]);
        assert_eq!(s.gaps(0, 50), vec![(0, 9), (26, 29), (41, 50)]);
        assert_eq!(s.gaps(12, 24), vec![]);
        s.insert(0, 100);
        assert_eq!(s.spans(), &[(0, 100)]);
        let u = SpanSet::from_spans(vec![(30, 40), (10, 20), (21, 25), (35, 50), (60, 60)]);
        assert_eq!(u.spans(), &[(10, 25), (30, 50), (60, 60)]);
        let mut t = SpanSet::new();
        t.insert(0, u128::MAX);
        assert_eq!(t.gaps(5, 6), vec![]);
    }
}
