//! The proxy's sockets: pods' DNS queries arrive by TPROXY (the `dns` chain of Egret's nft table
//! hands UDP and TCP port 53 of pods under name rules to `127.0.0.1:port`), are forwarded
//! unchanged to the resolver the pod addressed, and the answer goes back to the pod from that
//! resolver's address, after the addresses it holds are in the kernel sets.
//!
//! UDP replies leave from a socket bound (transparently) to the resolver's address and port and
//! connected to the pod's: the pod sees the resolver answering, and the pod's next queries from
//! the same port reach that socket directly (TPROXY finds established sockets first), so it
//! serves them too until it has been idle a while.

use crate::answer::{self, Unusable};
use crate::learn::{Element, Learned, Limits, PodRules};
use crate::metrics::DnsMetrics;
use nix::sys::socket::{
    self, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, SockaddrIn, setsockopt, sockopt,
};
use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};

/// Why the proxy cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A socket could not be set up.
    #[error("DNS proxy socket ({what}): {source}")]
    Socket {
        /// Which step.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn sock_err(what: &'static str) -> impl FnOnce(nix::Error) -> ProxyError {
    move |e| ProxyError::Socket { what, source: std::io::Error::from(e) }
}

/// Settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The loopback port the queries are handed to.
    pub port: u16,
    /// Timeouts and limits of learned addresses.
    pub limits: Limits,
    /// Longest an answer is held while its addresses are programmed (`--fqdn-hold-timeout`).
    pub hold_timeout: Duration,
    /// How long to wait for the resolver.
    pub upstream_timeout: Duration,
    /// How long a UDP reply socket serves a pod's port after its last query.
    pub udp_idle: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            port: 15353,
            limits: Limits::default(),
            hold_timeout: Duration::from_millis(100),
            upstream_timeout: Duration::from_secs(5),
            udp_idle: Duration::from_secs(5),
        }
    }
}

/// Writes set elements to the kernel; runs on its own thread (netlink is blocking).
pub trait Programmer: Send + 'static {
    /// Adds (or refreshes) the elements; returns once the kernel holds them.
    fn add(&mut self, elems: &[Element]) -> Result<(), String>;
    /// Deletes elements `(set, address)`.
    fn delete(&mut self, elems: &[(String, IpAddr)]) -> Result<(), String>;
}

struct Job {
    add: Vec<Element>,
    delete: Vec<(String, IpAddr)>,
    done: oneshot::Sender<Result<(), String>>,
}

/// What the proxy shares with the agent: the name rules of the node's pods (the agent replaces
/// them after every datapath sync) and what was learned (the audit log names addresses by it).
#[derive(Debug, Default)]
pub struct Shared {
    /// The name rules of each pod address.
    pub pods: RwLock<PodRules>,
    /// Learned addresses.
    pub learned: Mutex<Learned>,
}

/// The running proxy's parts.
struct Ctx {
    cfg: ProxyConfig,
    shared: Arc<Shared>,
    metrics: Arc<DnsMetrics>,
    jobs: mpsc::UnboundedSender<Job>,
}

/// Binds the sockets and serves until the task is dropped. `programmer` gets a thread of its
/// own, which takes every job queued so far in one go (one kernel batch per set).
pub async fn run(
    cfg: ProxyConfig,
    shared: Arc<Shared>,
    metrics: Arc<DnsMetrics>,
    programmer: impl Programmer,
) -> Result<(), ProxyError> {
    let udp = Arc::new(transparent_udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, cfg.port), None, true)?);
    let tcp = transparent_tcp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, cfg.port))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let m = metrics.clone();
    std::thread::Builder::new()
        .name("egret-dns-program".into())
        .spawn(move || program_loop(programmer, rx, &m))
        .map_err(|source| ProxyError::Socket { what: "start the programming thread", source })?;
    let ctx = Arc::new(Ctx { cfg, shared, metrics: metrics.clone(), jobs: tx });
    metrics.up.set(1);
    tracing::info!(port = ctx.cfg.port, "DNS proxy listening (UDP and TCP, by TPROXY)");
    // What expired is forgotten now and then, so names asked once do not accumulate.
    let prune = {
        let shared = ctx.shared.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(30));
            loop {
                every.tick().await;
                if let Ok(mut l) = shared.learned.lock() {
                    l.prune(Instant::now());
                }
            }
        })
    };
    let c = ctx.clone();
    let tcp_task = tokio::spawn(async move {
        loop {
            match tcp.accept().await {
                Ok((stream, peer)) => {
                    let c = c.clone();
                    tokio::spawn(async move { serve_tcp(c, stream, peer).await });
                }
                Err(e) => {
                    tracing::warn!("DNS proxy: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    let res = serve_udp_listener(ctx, udp).await;
    tcp_task.abort();
    prune.abort();
    metrics.up.set(0);
    res
}

fn program_loop(mut p: impl Programmer, mut rx: mpsc::UnboundedReceiver<Job>, m: &DnsMetrics) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while let Ok(j) = rx.try_recv() {
            jobs.push(j);
        }
        let start = Instant::now();
        let add: Vec<Element> = jobs.iter().flat_map(|j| j.add.iter().cloned()).collect();
        let delete: Vec<(String, IpAddr)> = jobs.iter().flat_map(|j| j.delete.iter().cloned()).collect();
        let mut res = if add.is_empty() { Ok(()) } else { p.add(&add) };
        if res.is_ok() && !delete.is_empty() {
            res = p.delete(&delete);
            m.evictions.inc_by(delete.len() as u64);
        }
        m.program_seconds.observe(start.elapsed().as_secs_f64());
        if let Err(e) = &res {
            m.program_errors.inc();
            tracing::warn!("DNS proxy: programming learned addresses failed: {e}");
        } else {
            m.learned.inc_by(add.len() as u64);
        }
        for j in jobs {
            let _ = j.done.send(res.clone());
        }
    }
}

/// A non-blocking UDP socket with `IP_TRANSPARENT`, bound to `local` (and connected to `peer`).
fn transparent_udp(local: SocketAddrV4, peer: Option<SocketAddrV4>, origdst: bool) -> Result<UdpSocket, ProxyError> {
    let fd: OwnedFd =
        socket::socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)
            .map_err(sock_err("create UDP socket"))?;
    setsockopt(&fd, sockopt::IpTransparent, &true).map_err(sock_err("IP_TRANSPARENT (needs CAP_NET_ADMIN)"))?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(sock_err("SO_REUSEADDR"))?;
    if origdst {
        setsockopt(&fd, sockopt::Ipv4OrigDstAddr, &true).map_err(sock_err("IP_RECVORIGDSTADDR"))?;
    }
    socket::bind(fd.as_raw_fd(), &SockaddrIn::from(local)).map_err(sock_err("bind UDP"))?;
    if let Some(p) = peer {
        socket::connect(fd.as_raw_fd(), &SockaddrIn::from(p)).map_err(sock_err("connect UDP"))?;
    }
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
        .map_err(|source| ProxyError::Socket { what: "register UDP", source })
}

fn transparent_tcp(local: SocketAddrV4) -> Result<TcpListener, ProxyError> {
    let fd: OwnedFd =
        socket::socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)
            .map_err(sock_err("create TCP socket"))?;
    setsockopt(&fd, sockopt::IpTransparent, &true).map_err(sock_err("IP_TRANSPARENT (needs CAP_NET_ADMIN)"))?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(sock_err("SO_REUSEADDR"))?;
    socket::bind(fd.as_raw_fd(), &SockaddrIn::from(local)).map_err(sock_err("bind TCP"))?;
    socket::listen(&fd, socket::Backlog::new(256).map_err(sock_err("backlog"))?).map_err(sock_err("listen"))?;
    TcpListener::from_std(std::net::TcpListener::from(fd))
        .map_err(|source| ProxyError::Socket { what: "register TCP", source })
}

/// One datagram from the listener: bytes, the pod, and the resolver it addressed.
fn recv_origdst(fd: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddrV4, SocketAddrV4)> {
    let mut cmsg = nix::cmsg_space!(nix::libc::sockaddr_in);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = socket::recvmsg::<SockaddrIn>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty())
        .map_err(std::io::Error::from)?;
    let from = msg.address.map(SocketAddrV4::from).ok_or_else(|| std::io::Error::other("no source address"))?;
    let mut dst = None;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::Ipv4OrigDstAddr(a) = c {
            dst = Some(SocketAddrV4::from(SockaddrIn::from(a)));
        }
    }
    let dst = dst.ok_or_else(|| std::io::Error::other("no original destination"))?;
    Ok((msg.bytes, from, dst))
}

async fn serve_udp_listener(ctx: Arc<Ctx>, sock: Arc<UdpSocket>) -> Result<(), ProxyError> {
    let mut buf = vec![0u8; 65535];
    loop {
        let got = sock.async_io(tokio::io::Interest::READABLE, || recv_origdst(&sock, &mut buf)).await;
        let (n, pod, resolver) = match got {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!("DNS proxy: UDP receive: {e}");
                continue;
            }
        };
        let query = buf[..n].to_vec();
        let ctx = ctx.clone();
        tokio::spawn(async move { udp_session(ctx, pod, resolver, query).await });
    }
}

/// Answers `first` from `pod`, then serves the pod's further queries to the same resolver
/// from the same port until idle.
async fn udp_session(ctx: Arc<Ctx>, pod: SocketAddrV4, resolver: SocketAddrV4, first: Vec<u8>) {
    let reply = match transparent_udp(resolver, Some(pod), false) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::warn!(%pod, %resolver, "DNS proxy: reply socket: {e}");
            return;
        }
    };
    let mut next = Some(first);
    let mut buf = vec![0u8; 65535];
    loop {
        if let Some(q) = next.take() {
            let (ctx, reply) = (ctx.clone(), reply.clone());
            tokio::spawn(async move {
                if let Some(a) = exchange_udp(&ctx, IpAddr::V4(*pod.ip()), resolver, &q).await {
                    let _ = reply.send(&a).await;
                }
            });
        }
        match tokio::time::timeout(ctx.cfg.udp_idle, reply.recv(&mut buf)).await {
            Ok(Ok(n)) => next = Some(buf[..n].to_vec()),
            _ => return,
        }
    }
}

/// Forwards one UDP query and returns the answer for the pod (`None`: nothing to send).
async fn exchange_udp(ctx: &Ctx, pod: IpAddr, resolver: SocketAddrV4, q: &[u8]) -> Option<Vec<u8>> {
    let m = &ctx.metrics;
    let query = match answer::query(q) {
        Ok(x) => x,
        Err(e) => {
            m.queries.get_or_create(&labels("udp", "unusable")).inc();
            tracing::debug!(%pod, "DNS proxy: dropped a query: {e}");
            return None;
        }
    };
    let up = tokio::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).await.ok()?;
    if up.connect(resolver).await.is_err() || up.send(q).await.is_err() {
        m.queries.get_or_create(&labels("udp", "upstream_error")).inc();
        return None;
    }
    let mut buf = vec![0u8; 65535];
    let deadline = tokio::time::Instant::now() + ctx.cfg.upstream_timeout;
    loop {
        let n = match tokio::time::timeout_at(deadline, up.recv(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => {
                m.queries.get_or_create(&labels("udp", "upstream_timeout")).inc();
                return None;
            }
        };
        match release(ctx, pod, &query, &buf[..n], "udp").await {
            Some(()) => return Some(buf[..n].to_vec()),
            // Not the answer to this query: keep waiting for it.
            None => continue,
        }
    }
}

/// Checks an answer and, for a name one of the pod's rules allows, has its addresses
/// programmed before it is released. `None`: not the answer to `query` (dropped).
async fn release(ctx: &Ctx, pod: IpAddr, query: &answer::Query, bytes: &[u8], proto: &str) -> Option<()> {
    let m = &ctx.metrics;
    let a = match answer::answer(query, bytes) {
        Ok(a) => a,
        Err(Unusable::Mismatch | Unusable::Kind(_)) => {
            m.queries.get_or_create(&labels(proto, "mismatched_answer")).inc();
            return None;
        }
        Err(e) => {
            m.queries.get_or_create(&labels(proto, "unusable")).inc();
            tracing::debug!(%pod, "DNS proxy: unusable answer: {e}");
            return None;
        }
    };
    let rules = ctx.shared.pods.read().ok().and_then(|p| p.get(&pod).cloned());
    let Some(rules) = rules else {
        m.queries.get_or_create(&labels(proto, "no_rules")).inc();
        return Some(());
    };
    let matching = Learned::matching(&rules, &query.name);
    if matching.is_empty() || a.addresses.is_empty() || a.truncated {
        m.queries.get_or_create(&labels(proto, "passed")).inc();
        return Some(());
    }
    let program = match ctx.shared.learned.lock() {
        Ok(mut l) => l.learn(&matching, &query.name, &a.addresses, &ctx.cfg.limits, Instant::now()),
        Err(_) => return Some(()),
    };
    if program.add.is_empty() && program.delete.is_empty() {
        m.queries.get_or_create(&labels(proto, "held")).inc();
        return Some(());
    }
    let (done, wait) = oneshot::channel();
    let start = Instant::now();
    if ctx.jobs.send(Job { add: program.add, delete: program.delete, done }).is_err() {
        m.queries.get_or_create(&labels(proto, "program_error")).inc();
        return Some(());
    }
    match tokio::time::timeout(ctx.cfg.hold_timeout, wait).await {
        Ok(Ok(Ok(()))) => {
            m.hold_seconds.observe(start.elapsed().as_secs_f64());
            m.queries.get_or_create(&labels(proto, "learned")).inc();
        }
        Ok(_) => {
            m.queries.get_or_create(&labels(proto, "program_error")).inc();
        }
        Err(_) => {
            m.hold_timeouts.inc();
            tracing::warn!(%pod, name = %query.name, "DNS proxy: answer released before its addresses were programmed");
        }
    }
    Some(())
}

fn labels(proto: &str, result: &str) -> Vec<(String, String)> {
    vec![("protocol".into(), proto.into()), ("result".into(), result.into())]
}

/// Serves one pod's TCP connection: length-prefixed queries in order, each forwarded over one
/// upstream connection to the resolver the pod addressed.
async fn serve_tcp(ctx: Arc<Ctx>, mut client: TcpStream, peer: SocketAddr) {
    let resolver = match client.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let mut upstream: Option<TcpStream> = None;
    loop {
        let q = match read_frame(&mut client, Duration::from_secs(10)).await {
            Some(q) => q,
            None => return,
        };
        let query = match answer::query(&q) {
            Ok(x) => x,
            Err(_) => {
                ctx.metrics.queries.get_or_create(&labels("tcp", "unusable")).inc();
                return;
            }
        };
        if upstream.is_none() {
            match tokio::time::timeout(ctx.cfg.upstream_timeout, TcpStream::connect(resolver)).await {
                Ok(Ok(s)) => upstream = Some(s),
                _ => {
                    ctx.metrics.queries.get_or_create(&labels("tcp", "upstream_error")).inc();
                    return;
                }
            }
        }
        let Some(up) = upstream.as_mut() else { return };
        if write_frame(up, &q).await.is_err() {
            return;
        }
        // The resolver answers this connection's queries in order here (one at a time).
        loop {
            let Some(a) = read_frame(up, ctx.cfg.upstream_timeout).await else {
                ctx.metrics.queries.get_or_create(&labels("tcp", "upstream_timeout")).inc();
                return;
            };
            if release(&ctx, peer.ip(), &query, &a, "tcp").await.is_some() {
                if write_frame(&mut client, &a).await.is_err() {
                    return;
                }
                break;
            }
        }
    }
}

async fn read_frame(s: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    tokio::time::timeout(wait, s.read_exact(&mut len)).await.ok()?.ok()?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    tokio::time::timeout(wait, s.read_exact(&mut buf)).await.ok()?.ok()?;
    Some(buf)
}

async fn write_frame(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| std::io::Error::other("DNS message over 65535 bytes"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    s.write_all(&out).await
}
