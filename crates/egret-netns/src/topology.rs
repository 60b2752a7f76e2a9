//! The lab's shape (BRIEF §5) in network namespaces: a router with the node network on a bridge,
//! N nodes with routed pod CIDRs (the stand-in CNI), pods, and outside hosts behind the router.
//!
//! ```text
//!  pod ns (eth0 10.244.N.x/32,  ──veth── node-N ns (vpK)    outside ns (eth0: 203.0.113.5/24,
//!          fd00:10:244:N::x/128)         │ eth0 10.10.0.10N/24,   198.51.100.8/24, …,
//!                                        │  fd00:10:10::10N/64    2001:db8:113::5/64, ::8/64)
//!                                        │                          │
//!              router ns: br0 10.10.0.1/24, fd00:10:10::1/64 ────── out0 (203.0.113.1/24, …,
//!                         br1 192.168.100.1/24 (each node's eth1,           2001:db8:113::1/64)
//!                             192.168.100.10N/24: a second uplink)
//! ```
//!
//! Dual-stack throughout: every node, pod and outside host has an IPv4 and an IPv6 address.
//! The stand-in CNI: every node routes its pods' /32s and /128s to their veths, routes the other
//! nodes' pod CIDRs to those nodes (host-gw style), and masquerades pod traffic leaving the pod
//! network to the node's address of the family with its own nft table `inet labcni` (never
//! Egret's table).

use crate::whoami::{WHOAMI_PORT, Whoami};
use crate::{Error, Netns, unique_prefix};
use ipnet::{Ipv4Net, Ipv6Net};
use std::net::{Ipv4Addr, Ipv6Addr};

/// The router's address on the node network.
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
/// The router's IPv6 address on the node network.
pub const ROUTER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x10, 0, 0, 0, 0, 1);
/// `db-a`, an outside whoami server.
pub const DB_A: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
/// `db-a`'s IPv6 address.
pub const DB_A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 5);
/// `bad-host`, another outside whoami server.
pub const BAD_HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 8);
/// `bad-host`'s IPv6 address.
pub const BAD_HOST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 8);
/// The outside IPv6 network (db-a and bad-host).
pub const OUTSIDE_NET6: &str = "2001:db8:113::/64";
/// The router's address on the egress subnet 192.0.2.0/24, a second subnet on the node
/// network's segment (untagged: this kernel has no 802.1Q VLANs), on a port of its own
/// ([`EGRESS_SUBNET_PORT`], its own MAC), so that what leaves by it can be told apart.
pub const EGRESS_SUBNET_GW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The router's port on the egress subnet (in the router's namespace).
pub const EGRESS_SUBNET_PORT: &str = "egw0";
/// The router's address on the second uplink, 192.168.100.0/24: every node's `eth1` is on a
/// segment of its own (bridge `br1` in the router), with a default route of lower priority,
/// the shape of a gateway node with a dedicated egress interface (Cilium's
/// `egressGateway.interface`).
pub const UPLINK2_GW: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
/// The nodes' second uplink interface.
pub const UPLINK2_DEV: &str = "eth1";
/// The metric of the nodes' default route by the second uplink (the node network's is 0).
pub const UPLINK2_METRIC: &str = "200";
/// The node network.
pub const NODE_NET: &str = "10.10.0.0/24";
/// The IPv6 node network.
pub const NODE_NET6: &str = "fd00:10:10::/64";
/// The whole pod network (what the stand-in CNI does not masquerade).
pub const POD_NET: &str = "10.244.0.0/16";
/// The whole IPv6 pod network.
pub const POD_NET6: &str = "fd00:10:244::/48";

/// The underlay address of node `i` (1-based): `10.10.0.(100+i)`.
pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 10, 0, 100 + i as u8)
}

/// The address of node `i` (1-based) on the second uplink: `192.168.100.(100+i)`.
pub fn node_uplink2_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 100, 100 + i as u8)
}

/// The IPv6 underlay address of node `i` (1-based): `fd00:10:10::1XX` (hex digits reading
/// like the decimal of its IPv4 address: node 1 is `::101`).
pub fn node_ip6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x10, 0, 0, 0, 0, decimal_as_hex(100 + i as u16))
}

/// The pod CIDR of node `i` (1-based): `10.244.i.0/24`.
pub fn pod_cidr(i: usize) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 244, i as u8, 0), 24).unwrap_or_default()
}

/// The IPv6 pod CIDR of node `i` (1-based): `fd00:10:244:i::/64`.
pub fn pod_cidr6(i: usize) -> Ipv6Net {
    Ipv6Net::new(Ipv6Addr::new(0xfd00, 0x10, 0x244, decimal_as_hex(i as u16), 0, 0, 0, 0), 64).unwrap_or_default()
}

/// The IPv6 address of the pod with IPv4 address `10.244.N.X`: `fd00:10:244:N::X` (N and X
/// written in the same digits, so the two read alike).
pub fn pod_ip6(ip: Ipv4Addr) -> Ipv6Addr {
    let [_, _, n, x] = ip.octets();
    Ipv6Addr::new(0xfd00, 0x10, 0x244, decimal_as_hex(n as u16), 0, 0, 0, decimal_as_hex(x as u16))
}

/// `123` -> `0x123`: an IPv6 group that reads like the decimal number.
fn decimal_as_hex(n: u16) -> u16 {
    u16::from_str_radix(&n.to_string(), 16).unwrap_or(n)
}

/// The name of node `i` (1-based): `node-i`.
pub fn node_name(i: usize) -> String {
    format!("node-{i}")
}

/// What to build.
#[derive(Debug, Clone)]
pub struct TopologySpec {
    /// Prefix-free tag naming the namespaces (a test name).
    pub tag: String,
    /// Number of nodes (1..=150).
    pub nodes: usize,
    /// Pods.
    pub pods: Vec<PodSpec>,
    /// Outside hosts behind the router, each `address/prefix`; every one runs the whoami.
    pub outside: Vec<Ipv4Net>,
    /// Outside IPv6 hosts behind the router, each `address/prefix`.
    pub outside6: Vec<Ipv6Net>,
    /// Use exactly this namespace prefix (it must start with `egret-`) instead of a unique one:
    /// a lab's namespaces must be findable by name after the building process is gone.
    pub prefix: Option<String>,
    /// Run the whoami server on a thread of this process (tests). A lab that outlives the
    /// building process starts its own whoami process instead.
    pub whoami: bool,
    /// Plumb pods with this real CNI plugin (and `host-local` keeping its allocations in the
    /// directory) instead of the stand-in; the plugin's own masquerade replaces the stand-in's.
    pub cni: Option<(crate::cni::Plugin, std::path::PathBuf)>,
}

/// One pod.
#[derive(Debug, Clone)]
pub struct PodSpec {
    /// Pod name, unique in the topology (e.g. `prod-web-1`).
    pub name: String,
    /// The node it runs on (1-based).
    pub node: usize,
    /// Its address, inside the node's pod CIDR.
    pub ip: Ipv4Addr,
}

impl TopologySpec {
    /// `nodes` nodes, no pods, and the lab's outside hosts db-a and bad-host.
    pub fn new(tag: &str, nodes: usize) -> TopologySpec {
        TopologySpec {
            tag: tag.to_string(),
            nodes,
            pods: Vec::new(),
            outside: vec![Ipv4Net::new(DB_A, 24).unwrap_or_default(), Ipv4Net::new(BAD_HOST, 24).unwrap_or_default()],
            outside6: vec![
                Ipv6Net::new(DB_A6, 64).unwrap_or_default(),
                Ipv6Net::new(BAD_HOST6, 64).unwrap_or_default(),
            ],
            whoami: true,
            prefix: None,
            cni: None,
        }
    }

    /// Adds a pod on node `node` (1-based).
    pub fn pod(mut self, name: &str, node: usize, ip: Ipv4Addr) -> TopologySpec {
        self.pods.push(PodSpec { name: name.to_string(), node, ip });
        self
    }

    /// Adds an outside host, e.g. `10.96.0.10/32` to stand in for a service address.
    pub fn outside_host(mut self, host: Ipv4Net) -> TopologySpec {
        self.outside.push(host);
        self
    }
}

/// A node namespace.
#[derive(Debug)]
pub struct Node {
    /// `node-i`.
    pub name: String,
    /// 1-based index.
    pub index: usize,
    /// Its underlay address.
    pub ip: Ipv4Addr,
    /// Its IPv6 underlay address.
    pub ip6: Ipv6Addr,
    /// Its pod CIDR.
    pub pod_cidr: Ipv4Net,
    /// The underlay interface inside the namespace.
    pub underlay: String,
    /// The namespace.
    pub ns: Netns,
}

/// A pod namespace.
#[derive(Debug)]
pub struct Pod {
    /// Pod name.
    pub name: String,
    /// 1-based node index.
    pub node: usize,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its IPv6 address ([`pod_ip6`]).
    pub ip6: Ipv6Addr,
    /// The namespace.
    pub ns: Netns,
}

/// The pods' IPv6 default gateway: a link-local address on every pod veth of a node (IPv6
/// neighbour discovery answers only for addresses of the asking interface).
const POD_GW6: &str = "fe80::1";

/// Connects pod namespace `pod` to node namespace `node` the way the stand-in CNI does: a veth
/// (`veth` on the node side, `eth0` in the pod), the pod's /32 and its IPv6 /128
/// ([`pod_ip6`]), host routes on the node, and the node-local gateways (the first address of
/// the pod CIDR; `fe80::1` for IPv6) as the pod's default routes.
pub fn plumb_pod(node: &Netns, pod_cidr: Ipv4Net, pod: &Netns, ip: Ipv4Addr, veth: &str) -> Result<(), Error> {
    // No duplicate address detection in the pod: its addresses are usable at once.
    pod.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
    pod.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
    node.ip(&["link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", pod.name()])?;
    node.ip(&["addr", "add", &format!("{POD_GW6}/64"), "dev", veth, "nodad"])?;
    node.ip(&["link", "set", veth, "up"])?;
    // Replace, not add: a deleted pod's namespace (and so its veth and host routes) is torn
    // down by the kernel a moment later; a new pod given its address must not wait for that.
    node.ip(&["route", "replace", &format!("{ip}/32"), "dev", veth])?;
    let ip6 = pod_ip6(ip);
    node.ip(&["-6", "route", "replace", &format!("{ip6}/128"), "dev", veth])?;
    let gw = Ipv4Addr::from(u32::from(pod_cidr.network()) + 1).to_string();
    pod.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
    pod.ip(&["addr", "add", &format!("{ip6}/128"), "dev", "eth0", "nodad"])?;
    pod.ip(&["link", "set", "eth0", "up"])?;
    pod.ip(&["route", "add", &gw, "dev", "eth0", "scope", "link"])?;
    pod.ip(&["route", "add", "default", "via", &gw, "dev", "eth0"])?;
    pod.ip(&["-6", "route", "add", "default", "via", POD_GW6, "dev", "eth0"])?;
    Ok(())
}

/// Packets the router namespace `router` forwarded that came in by its egress subnet port
/// (also for a lab's router, attached by name).
pub fn egress_subnet_forwarded(router: &Netns) -> Result<u64, Error> {
    router_counter(router, "egress_subnet")
}

/// The packets of the router's counter `name` (table `inet lab`).
fn router_counter(router: &Netns, name: &str) -> Result<u64, Error> {
    let out = router.exec("nft", &["list", "counter", "inet", "lab", name])?;
    let words: Vec<&str> = out.split_whitespace().collect();
    words
        .iter()
        .position(|w| *w == "packets")
        .and_then(|i| words.get(i + 1))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::Protocol(format!("no packet count in {out:?}")))
}

/// Packets the router namespace `router` forwarded that came in by the nodes' second uplink.
pub fn uplink2_forwarded(router: &Netns) -> Result<u64, Error> {
    router_counter(router, "uplink2")
}

/// A built topology. Dropping it stops the servers and deletes every namespace (and so every
/// link) it created, pods first, router last.
#[derive(Debug)]
pub struct Topology {
    /// Whoami servers (one per outside namespace, listening on every outside address).
    pub whoami: Vec<Whoami>,
    /// Pods.
    pub pods: Vec<Pod>,
    /// Nodes, `nodes[i-1]` is `node-i`.
    pub nodes: Vec<Node>,
    /// The outside hosts' namespace.
    pub outside: Netns,
    /// The router.
    pub router: Netns,
    /// The namespace name prefix (`egret-TAG-PID-SEQ`).
    pub prefix: String,
}

impl Topology {
    /// Builds the topology. On error, whatever was built is removed again.
    pub fn build(spec: &TopologySpec) -> Result<Topology, Error> {
        if spec.nodes == 0 || spec.nodes > 150 {
            return Err(Error::Spec(format!("nodes must be 1..=150, not {}", spec.nodes)));
        }
        let prefix = spec.prefix.clone().unwrap_or_else(|| unique_prefix(&spec.tag));
        let router = Netns::create(&format!("{prefix}-r"))?;
        router.sysctl("net.ipv4.ip_forward", "1")?;
        router.sysctl("net.ipv4.conf.all.send_redirects", "0")?;
        router.sysctl("net.ipv4.conf.default.send_redirects", "0")?;
        router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        router.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        router.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        router.ip(&["link", "add", "br0", "type", "bridge"])?;
        router.ip(&["addr", "add", &format!("{ROUTER_IP}/24"), "dev", "br0"])?;
        router.ip(&["addr", "add", &format!("{ROUTER_IP6}/64"), "dev", "br0", "nodad"])?;
        // The egress subnet's router port, on the same segment as the node network.
        router.ip(&["link", "add", EGRESS_SUBNET_PORT, "type", "veth", "peer", "name", "egw0p"])?;
        router.ip(&["link", "set", "egw0p", "master", "br0", "up"])?;
        router.ip(&["addr", "add", &format!("{EGRESS_SUBNET_GW}/24"), "dev", EGRESS_SUBNET_PORT])?;
        router.ip(&["link", "set", EGRESS_SUBNET_PORT, "up"])?;
        // br0 answers ARP only for its own addresses, as separate routers would: else it also
        // answers for the subnet's gateway, and traffic would not reach the subnet's port.
        router.sysctl("net.ipv4.conf.br0.arp_ignore", "1")?;
        // The second uplink's segment.
        router.ip(&["link", "add", "br1", "type", "bridge"])?;
        router.ip(&["addr", "add", &format!("{UPLINK2_GW}/24"), "dev", "br1"])?;
        router.ip(&["link", "set", "br1", "up"])?;
        // Packets the router forwards that came in by the subnet's port (not its ARP or ND),
        // and by the second uplink.
        router.exec_stdin(
            "nft",
            &["-f", "-"],
            &format!(
                "table inet lab {{\n counter egress_subnet {{}}\n counter uplink2 {{}}\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  iifname {EGRESS_SUBNET_PORT} counter name egress_subnet\n  iifname br1 counter name uplink2\n }}\n}}\n"
            ),
        )?;
        router.ip(&["link", "set", "br0", "up"])?;

        let outside = Netns::create(&format!("{prefix}-x"))?;
        outside.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        outside.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        router.ip(&["link", "add", "out0", "type", "veth", "peer", "name", "eth0", "netns", outside.name()])?;
        router.ip(&["link", "set", "out0", "up"])?;
        // An egress IP may lie inside an outside subnet (seed 000's 198.51.100.100): outside
        // hosts then ARP for it directly, and the router answers for what it routes elsewhere.
        router.sysctl("net.ipv4.conf.out0.proxy_arp", "1")?;
        // Answer at once: by default proxy ARP replies are delayed up to 0.8 s.
        router.sysctl("net.ipv4.neigh.out0.proxy_delay", "0")?;
        outside.ip(&["link", "set", "eth0", "up"])?;
        let mut default_gw = None;
        for host in &spec.outside {
            outside.ip(&["addr", "add", &host.to_string(), "dev", "eth0"])?;
            if host.prefix_len() < 31 {
                let gw = Ipv4Addr::from(u32::from(host.network()) + 1);
                let gw_net = format!("{gw}/{}", host.prefix_len());
                if !router.ip(&["-4", "addr", "show", "dev", "out0"])?.contains(&gw_net) {
                    router.ip(&["addr", "add", &gw_net, "dev", "out0"])?;
                }
                default_gw.get_or_insert(gw);
            } else {
                router.ip(&["route", "add", &host.to_string(), "dev", "out0"])?;
            }
        }
        if let Some(gw) = default_gw {
            outside.ip(&["route", "add", "default", "via", &gw.to_string()])?;
        }
        let mut default_gw6 = None;
        for host in &spec.outside6 {
            outside.ip(&["addr", "add", &host.to_string(), "dev", "eth0", "nodad"])?;
            let gw = Ipv6Addr::from(u128::from(host.network()) + 1);
            let gw_net = format!("{gw}/{}", host.prefix_len());
            if !router.ip(&["-6", "addr", "show", "dev", "out0"])?.contains(&gw_net) {
                router.ip(&["addr", "add", &gw_net, "dev", "out0", "nodad"])?;
            }
            default_gw6.get_or_insert(gw);
        }
        if let Some(gw) = default_gw6 {
            outside.ip(&["-6", "route", "add", "default", "via", &gw.to_string()])?;
        }

        let mut nodes = Vec::new();
        for i in 1..=spec.nodes {
            let ns = Netns::create(&format!("{prefix}-n{i}"))?;
            // No IPv6 duplicate address detection: addresses settle at once, state compares.
            ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
            ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
            let port = format!("n{i}");
            router.ip(&["link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns.name()])?;
            router.ip(&["link", "set", &port, "master", "br0", "up"])?;
            let ip = node_ip(i);
            let ip6 = node_ip6(i);
            let cidr = pod_cidr(i);
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            ns.ip(&["addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            ns.ip(&["route", "add", "default", "via", &ROUTER_IP.to_string()])?;
            ns.ip(&["-6", "route", "add", "default", "via", &ROUTER_IP6.to_string()])?;
            // The second uplink: a way out the node's routing does not use by itself.
            let port2 = format!("m{i}");
            router.ip(&["link", "add", &port2, "type", "veth", "peer", "name", UPLINK2_DEV, "netns", ns.name()])?;
            router.ip(&["link", "set", &port2, "master", "br1", "up"])?;
            ns.ip(&["addr", "add", &format!("{}/24", node_uplink2_ip(i)), "dev", UPLINK2_DEV])?;
            ns.ip(&["link", "set", UPLINK2_DEV, "up"])?;
            ns.ip(&["route", "add", "default", "via", &UPLINK2_GW.to_string(), "metric", UPLINK2_METRIC])?;
            // The pods' default gateway: a node-local address answered by ARP on every veth
            // (a CNI plugin puts its own on its bridge or veths).
            if spec.cni.is_none() {
                let gw = Ipv4Addr::from(u32::from(cidr.network()) + 1);
                ns.ip(&["addr", "add", &format!("{gw}/32"), "dev", "lo"])?;
            }
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            // Strict reverse-path filtering, as many distributions ship it.
            ns.sysctl("net.ipv4.conf.all.rp_filter", "1")?;
            ns.sysctl("net.ipv4.conf.default.rp_filter", "1")?;
            // With a CNI plugin, its ipMasq masquerades instead.
            if spec.cni.is_none() {
                ns.exec_stdin(
                    "nft",
                    &["-f", "-"],
                    &format!(
                        "table inet labcni {{\n chain postrouting {{\n  type nat hook postrouting priority srcnat; policy accept;\n  ip saddr {POD_NET} ip daddr != {POD_NET} masquerade\n  ip6 saddr {POD_NET6} ip6 daddr != {POD_NET6} masquerade\n }}\n}}\n"
                    ),
                )?;
            }
            router.ip(&["route", "add", &cidr.to_string(), "via", &ip.to_string()])?;
            router.ip(&["-6", "route", "add", &pod_cidr6(i).to_string(), "via", &ip6.to_string()])?;
            nodes.push(Node { name: node_name(i), index: i, ip, ip6, pod_cidr: cidr, underlay: "eth0".into(), ns });
        }
        for n in &nodes {
            for m in &nodes {
                if n.index != m.index {
                    n.ns.ip(&["route", "add", &m.pod_cidr.to_string(), "via", &m.ip.to_string()])?;
                    n.ns.ip(&["-6", "route", "add", &pod_cidr6(m.index).to_string(), "via", &m.ip6.to_string()])?;
                }
            }
        }

        let mut pods = Vec::new();
        for (k, p) in spec.pods.iter().enumerate() {
            let node = nodes
                .get(p.node.wrapping_sub(1))
                .ok_or_else(|| Error::Spec(format!("pod {} on unknown node {}", p.name, p.node)))?;
            if !node.pod_cidr.contains(&p.ip) {
                return Err(Error::Spec(format!("pod {} address {} is outside {}", p.name, p.ip, node.pod_cidr)));
            }
            let ns = Netns::create(&format!("{prefix}-p-{}", p.name))?;
            match &spec.cni {
                None => plumb_pod(&node.ns, node.pod_cidr, &ns, p.ip, &format!("vp{k}"))?,
                Some((plugin, dir)) => crate::cni::CniNet { plugin: *plugin, node: node.index, data_dir: dir.clone() }
                    .add(&node.ns, &ns, ns.name(), p.ip)?,
            }
            pods.push(Pod { name: p.name.clone(), node: p.node, ip: p.ip, ip6: pod_ip6(p.ip), ns });
        }
        let whoami = if spec.whoami { vec![Whoami::start(&outside, WHOAMI_PORT)?] } else { Vec::new() };
        Ok(Topology { whoami, pods, nodes, outside, router, prefix })
    }

    /// Node `i` (1-based).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i - 1]
    }

    /// The pod named `name`.
    pub fn pod(&self, name: &str) -> Result<&Pod, Error> {
        self.pods.iter().find(|p| p.name == name).ok_or_else(|| Error::Spec(format!("no pod {name}")))
    }

    /// The MAC address of a node's underlay interface.
    pub fn node_mac(&self, i: usize) -> Result<String, Error> {
        let out = self.node(i).ns.ip(&["-br", "link", "show", "dev", "eth0"])?;
        out.split_whitespace().nth(2).map(str::to_string).ok_or_else(|| Error::Protocol(format!("no MAC in {out:?}")))
    }

    /// Packets the router forwarded that came in by its egress subnet port.
    pub fn egress_subnet_forwarded(&self) -> Result<u64, Error> {
        egress_subnet_forwarded(&self.router)
    }

    /// The MAC address the router's neighbour table holds for `ip` on the node network, if any.
    pub fn router_neighbour(&self, ip: impl Into<std::net::IpAddr>) -> Result<Option<String>, Error> {
        let ip: std::net::IpAddr = ip.into();
        let out = self.router.ip(&["neigh", "show", "to", &ip.to_string(), "dev", "br0"])?;
        let words: Vec<&str> = out.split_whitespace().collect();
        Ok(words.iter().position(|w| *w == "lladdr").and_then(|i| words.get(i + 1)).map(|s| s.to_string()))
    }

    /// Every source address the outside whoami servers saw, in order.
    pub fn seen(&self) -> Vec<std::net::IpAddr> {
        self.whoami.iter().flat_map(|w| w.seen()).collect()
    }
}
