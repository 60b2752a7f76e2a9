//! Announcing an egress IP this node takes over: gratuitous ARP (IPv4) and unsolicited neighbour
//! advertisement (IPv6). Frame construction is pure; sending uses an `AF_PACKET` socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A gratuitous ARP request (sender = target = `ip`), broadcast. Routers update an existing
/// neighbour entry from it even inside their lock time, which is what moves traffic on failover.
pub fn garp(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]); // broadcast
    f.extend_from_slice(&mac);
    f.extend_from_slice(&0x0806u16.to_be_bytes()); // ARP
    f.extend_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f.extend_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f.push(6);
    f.push(4);
    f.extend_from_slice(&1u16.to_be_bytes()); // request
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&ip.octets());
    f
}

/// An unsolicited neighbour advertisement for `ip` to all nodes (RFC 4861 §7.2.6): override
/// flag set, target link-layer address option, hop limit 255.
pub fn unsolicited_na(mac: [u8; 6], ip: Ipv6Addr) -> Vec<u8> {
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut icmp = Vec::with_capacity(32);
    icmp.push(136); // neighbour advertisement
    icmp.push(0);
    icmp.extend_from_slice(&[0, 0]); // checksum, filled below
    icmp.extend_from_slice(&0x2000_0000u32.to_be_bytes()); // O (override)
    icmp.extend_from_slice(&ip.octets());
    icmp.push(2); // option: target link-layer address
    icmp.push(1); // length in 8-octet units
    icmp.extend_from_slice(&mac);
    let sum = icmpv6_checksum(ip, all_nodes, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());

    let mut f = Vec::with_capacity(14 + 40 + icmp.len());
    f.extend_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&0x6000_0000u32.to_be_bytes()); // version 6
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.push(58); // ICMPv6
    f.push(255);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&all_nodes.octets());
    f.extend_from_slice(&icmp);
    f
}

/// The announcement frame for `ip`.
pub fn frame(mac: [u8; 6], ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => garp(mac, v4),
        IpAddr::V6(v6) => unsolicited_na(mac, v6),
    }
}

/// When a newly hosted address is announced, as offsets from the moment it is added: the
/// first at once, then `count - 1` more with gaps doubling from `first_gap` (250 ms: 0, 0.25,
/// 0.75, 1.75, 3.75 s). Repeats cover a router that missed one frame or was busy; the growing
/// gaps spread them over a few seconds without flooding the segment.
pub fn schedule(count: u32, first_gap: std::time::Duration) -> Vec<std::time::Duration> {
    let mut out = Vec::with_capacity(count as usize);
    let mut at = std::time::Duration::ZERO;
    let mut gap = first_gap;
    for i in 0..count {
        if i > 0 {
            at = at.saturating_add(gap);
            gap = gap.saturating_mul(2);
        }
        out.push(at);
    }
    out
}

/// Waits before each retry of a failed send: `tries - 1` of them, doubling from `base`
/// (10 ms, 4 tries: 10, 20, 40 ms), so a transient failure (e.g. `ENOBUFS`) costs little and
/// a persistent one gives up quickly.
pub fn retry_delays(tries: u32, base: std::time::Duration) -> Vec<std::time::Duration> {
    (1..tries.max(1)).map(|i| base.saturating_mul(1 << (i - 1).min(20))).collect()
}

/// Calls `send` until it succeeds, at most once plus once per delay, calling `wait` with each
/// delay between tries. Returns the number of tries, or the last error.
pub fn send_with_retry<E>(
    delays: &[std::time::Duration],
    mut send: impl FnMut() -> Result<(), E>,
    mut wait: impl FnMut(std::time::Duration),
) -> Result<usize, E> {
    let mut tries = 1;
    let mut last = send();
    for d in delays {
        if last.is_ok() {
            break;
        }
        wait(*d);
        tries += 1;
        last = send();
    }
    last.map(|()| tries)
}

fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, body: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for c in bytes.chunks(2) {
            let word = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
            sum += word as u32;
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(body.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(body);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sending raw frames.
#[allow(unsafe_code)]
pub(crate) mod sys {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// An `AF_PACKET` socket bound to no protocol (it never receives), sending on one interface.
    #[derive(Debug)]
    pub struct PacketSocket {
        fd: OwnedFd,
        ifindex: i32,
    }

    impl PacketSocket {
        /// Opens the socket in the calling thread's network namespace.
        pub fn open(ifindex: u32) -> io::Result<PacketSocket> {
            // SAFETY: plain syscall with constant arguments; the result is checked before use.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let ifindex =
                i32::try_from(ifindex).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ifindex too large"))?;
            Ok(PacketSocket { fd, ifindex })
        }

        /// Sends one complete Ethernet frame (its first 6 bytes are the destination MAC).
        pub fn send(&self, frame: &[u8]) -> io::Result<()> {
            if frame.len() < 14 {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "short frame"));
            }
            // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = u16::from_be_bytes([frame[12], frame[13]]).to_be();
            addr.sll_ifindex = self.ifindex;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            // SAFETY: `frame` and `addr` outlive the call and the lengths passed match them.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];

    #[test]
    fn garp_bytes() {
        let f = garp(MAC, Ipv4Addr::new(10, 10, 0, 11));
        let expected: Vec<u8> = [
            &[0xff; 6][..],
            &MAC,
            &[0x08, 0x06],
            &[0, 1, 0x08, 0, 6, 4, 0, 1],
            &MAC,
            &[10, 10, 0, 11],
            &[0; 6],
            &[10, 10, 0, 11],
        ]
        .concat();
        assert_eq!(f, expected);
        assert_eq!(f.len(), 42);
    }

    #[test]
    fn unsolicited_na_bytes() {
        let ip: Ipv6Addr = "2001:db8::11".parse().unwrap();
        let f = unsolicited_na(MAC, ip);
        assert_eq!(f.len(), 14 + 40 + 32);
        assert_eq!(&f[..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        assert_eq!(&f[18..20], &[0, 32], "payload length");
        assert_eq!(f[20], 58);
        assert_eq!(f[21], 255, "hop limit must be 255 or receivers drop it");
        assert_eq!(&f[22..38], &ip.octets());
        assert_eq!(&f[38..54], &"ff02::1".parse::<Ipv6Addr>().unwrap().octets());
        let icmp = &f[54..];
        assert_eq!(icmp[0], 136);
        assert_eq!(&icmp[4..8], &[0x20, 0, 0, 0], "override only");
        assert_eq!(&icmp[8..24], &ip.octets());
        assert_eq!(&icmp[24..26], &[2, 1]);
        assert_eq!(&icmp[26..32], &MAC);
        // Checksum computed independently (Python, RFC 1071 over the pseudo-header).
        assert_eq!(&icmp[2..4], &[0x92, 0x72]);
        // And the one's-complement sum over pseudo-header + message verifies to zero.
        assert_eq!(icmpv6_checksum(ip, "ff02::1".parse().unwrap(), icmp), 0);
    }

    #[test]
    fn announcements_repeat_with_growing_gaps() {
        let ms = |v: &[u64]| v.iter().map(|&m| Duration::from_millis(m)).collect::<Vec<_>>();
        assert_eq!(schedule(5, Duration::from_millis(250)), ms(&[0, 250, 750, 1750, 3750]));
        assert_eq!(schedule(1, Duration::from_millis(250)), ms(&[0]));
        assert!(schedule(0, Duration::from_millis(250)).is_empty());
        assert_eq!(retry_delays(4, Duration::from_millis(10)), ms(&[10, 20, 40]));
        assert!(retry_delays(1, Duration::from_millis(10)).is_empty());
        assert_eq!(retry_delays(40, Duration::from_millis(1)).len(), 39, "bounded, no overflow");
    }

    #[test]
    fn a_failed_send_is_retried_with_backoff_and_gives_up_after_the_last_try() {
        let delays = retry_delays(4, Duration::from_millis(10));
        // Fails twice, then works: three tries, waits of 10 and 20 ms.
        let mut calls = 0;
        let mut waited = Vec::new();
        let r = send_with_retry(
            &delays,
            || {
                calls += 1;
                if calls < 3 { Err("ENOBUFS") } else { Ok(()) }
            },
            |d| waited.push(d),
        );
        assert_eq!(r, Ok(3));
        assert_eq!(waited, vec![Duration::from_millis(10), Duration::from_millis(20)]);
        // Always fails: four tries, then the error.
        let mut calls = 0;
        let r: Result<usize, &str> = send_with_retry(
            &delays,
            || {
                calls += 1;
                Err("down")
            },
            |_| {},
        );
        assert_eq!((r, calls), (Err("down"), 4));
        // Works at once: no wait.
        assert_eq!(send_with_retry::<()>(&delays, || Ok(()), |_| panic!("no wait")), Ok(1));
    }

    #[test]
    fn frame_picks_the_family() {
        assert_eq!(frame(MAC, "10.0.0.1".parse().unwrap())[12..14], [0x08, 0x06]);
        assert_eq!(frame(MAC, "fd00::1".parse().unwrap())[12..14], [0x86, 0xdd]);
    }
}
