//! The proxy: pods' DNS queries arrive by TPROXY (the `dns` chain of Egret's nft table hands
//! UDP and TCP port 53 of pods under name rules to `127.0.0.1:port`, or `[::1]:port`), are
//! forwarded unchanged to the resolver the pod addressed, and the answer goes back to the pod
//! from that resolver's address, after the addresses it holds are in the kernel sets. UDP is
//! [`crate::udp`]'s; TCP connections are relayed here, message by message.

use crate::answer::{self, Unusable};
use crate::learn::{Element, Learned, Limits, PodRules};
use crate::metrics::DnsMetrics;
use crate::udp;
use socket2::{Domain, Socket, Type};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
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
    /// A serving task ended; they loop for ever, so it panicked.
    #[error("DNS proxy task ended: {0}")]
    Stopped(String),
}

pub(crate) fn sock_err(what: &'static str) -> impl FnOnce(std::io::Error) -> ProxyError {
    move |source| ProxyError::Socket { what, source }
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
    /// How long a UDP session serves a pod's port after its last query once nothing is pending.
    /// Short: most stub resolvers use a new port per lookup, and every live session is one more
    /// socket bound to its resolver's address, which the kernel walks on each bind there.
    pub udp_idle: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            port: 15353,
            limits: Limits::default(),
            hold_timeout: Duration::from_millis(100),
            upstream_timeout: Duration::from_secs(5),
            udp_idle: Duration::from_millis(250),
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

pub(crate) struct Job {
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
pub(crate) struct Ctx {
    pub(crate) cfg: ProxyConfig,
    pub(crate) shared: Arc<Shared>,
    pub(crate) metrics: Arc<DnsMetrics>,
    pub(crate) jobs: mpsc::UnboundedSender<Job>,
}

/// Binds the sockets (IPv4 and, where the node has it, IPv6) and serves until the task is
/// dropped. `programmer` gets a thread of its own, which takes every job queued so far in one
/// go (one kernel batch per set).
pub async fn run(
    cfg: ProxyConfig,
    shared: Arc<Shared>,
    metrics: Arc<DnsMetrics>,
    programmer: impl Programmer,
) -> Result<(), ProxyError> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, cfg.port));
    let mut listeners = vec![(udp::listener(v4)?, tcp_listener(v4)?)];
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, cfg.port));
    match udp::listener(v6).and_then(|u| Ok((u, tcp_listener(v6)?))) {
        Ok(l) => listeners.push(l),
        // A node without IPv6 has no pods asking over it either.
        Err(e) => {
            tracing::warn!("DNS proxy: no IPv6 listener (DNS over IPv6 of pods under name rules fails closed): {e}")
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let m = metrics.clone();
    std::thread::Builder::new()
        .name("egret-dns-program".into())
        .spawn(move || program_loop(programmer, rx, &m))
        .map_err(|source| ProxyError::Socket { what: "start the programming thread", source })?;
    let ctx = Arc::new(Ctx { cfg, shared, metrics: metrics.clone(), jobs: tx });
    metrics.up.set(1);
    tracing::info!(port = ctx.cfg.port, ipv6 = listeners.len() > 1, "DNS proxy listening (UDP and TCP, by TPROXY)");
    let mut tasks = tokio::task::JoinSet::new();
    // What expired is forgotten now and then, so names asked once do not accumulate.
    let shared = ctx.shared.clone();
    tasks.spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(30));
        loop {
            every.tick().await;
            if let Ok(mut l) = shared.learned.lock() {
                l.prune(Instant::now());
            }
        }
    });
    for (udp, tcp) in listeners {
        tasks.spawn(udp::serve(ctx.clone(), udp));
        let c = ctx.clone();
        tasks.spawn(async move {
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
    }
    // The tasks loop for ever; one ending means it panicked.
    let ended = tasks.join_next().await;
    metrics.up.set(0);
    Err(ProxyError::Stopped(match ended {
        Some(Err(e)) => e.to_string(),
        _ => "no reason given".into(),
    }))
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

/// A non-blocking socket with `IP_TRANSPARENT` (or `IPV6_TRANSPARENT`), bound to `local`.
pub(crate) fn transparent(local: SocketAddr, ty: Type) -> Result<Socket, ProxyError> {
    let s = Socket::new(Domain::for_address(local), ty, None).map_err(sock_err("create socket"))?;
    if local.is_ipv6() {
        s.set_only_v6(true).map_err(sock_err("IPV6_V6ONLY"))?;
        s.set_ip_transparent_v6(true).map_err(sock_err("IPV6_TRANSPARENT (needs CAP_NET_ADMIN)"))?;
    } else {
        s.set_ip_transparent_v4(true).map_err(sock_err("IP_TRANSPARENT (needs CAP_NET_ADMIN)"))?;
    }
    s.set_reuse_address(true).map_err(sock_err("SO_REUSEADDR"))?;
    s.set_nonblocking(true).map_err(sock_err("O_NONBLOCK"))?;
    s.bind(&local.into()).map_err(sock_err("bind"))?;
    Ok(s)
}

fn tcp_listener(local: SocketAddr) -> Result<TcpListener, ProxyError> {
    let s = transparent(local, Type::STREAM)?;
    s.listen(256).map_err(sock_err("listen"))?;
    TcpListener::from_std(s.into()).map_err(sock_err("register TCP"))
}

/// What to do with an answer.
pub(crate) enum Release {
    /// Not the answer to the query: drop it, keep waiting.
    Drop,
    /// Send it to the pod now.
    Now,
    /// Send it once its addresses are programmed (or the hold times out).
    Hold(Hold),
}

/// An answer waiting for its addresses to be programmed.
pub(crate) struct Hold {
    wait: oneshot::Receiver<Result<(), String>>,
    start: Instant,
    name: String,
    proto: &'static str,
}

impl Hold {
    pub(crate) async fn wait(self, ctx: &Ctx, pod: IpAddr) {
        let m = &ctx.metrics;
        match tokio::time::timeout(ctx.cfg.hold_timeout, self.wait).await {
            Ok(Ok(Ok(()))) => {
                m.hold_seconds.observe(self.start.elapsed().as_secs_f64());
                m.queries.get_or_create(&labels(self.proto, "learned")).inc();
            }
            Ok(_) => {
                m.queries.get_or_create(&labels(self.proto, "program_error")).inc();
            }
            Err(_) => {
                m.hold_timeouts.inc();
                tracing::warn!(%pod, name = %self.name, "DNS proxy: answer released before its addresses were programmed");
            }
        }
    }
}

/// Checks an answer to `query` and, for a name one of the pod's rules allows, queues its
/// addresses for programming (without waiting: the caller holds the answer).
pub(crate) fn verdict(ctx: &Ctx, pod: IpAddr, query: &answer::Query, bytes: &[u8], proto: &'static str) -> Release {
    let m = &ctx.metrics;
    let a = match answer::answer(query, bytes) {
        Ok(a) => a,
        Err(Unusable::Mismatch | Unusable::Kind(_)) => {
            m.queries.get_or_create(&labels(proto, "mismatched_answer")).inc();
            return Release::Drop;
        }
        Err(e) => {
            m.queries.get_or_create(&labels(proto, "unusable")).inc();
            tracing::debug!(%pod, "DNS proxy: unusable answer: {e}");
            return Release::Drop;
        }
    };
    let rules = ctx.shared.pods.read().ok().and_then(|p| p.get(&pod).cloned());
    let Some(rules) = rules else {
        m.queries.get_or_create(&labels(proto, "no_rules")).inc();
        return Release::Now;
    };
    let matching = Learned::matching(&rules, &query.name);
    if matching.is_empty() || a.addresses.is_empty() || a.truncated {
        m.queries.get_or_create(&labels(proto, "passed")).inc();
        return Release::Now;
    }
    let program = match ctx.shared.learned.lock() {
        Ok(mut l) => l.learn(&matching, &query.name, &a.addresses, &ctx.cfg.limits, Instant::now()),
        Err(_) => return Release::Now,
    };
    if program.add.is_empty() && program.delete.is_empty() {
        m.queries.get_or_create(&labels(proto, "held")).inc();
        return Release::Now;
    }
    let (done, wait) = oneshot::channel();
    if ctx.jobs.send(Job { add: program.add, delete: program.delete, done }).is_err() {
        m.queries.get_or_create(&labels(proto, "program_error")).inc();
        return Release::Now;
    }
    Release::Hold(Hold { wait, start: Instant::now(), name: query.name.clone(), proto })
}

pub(crate) fn labels(proto: &str, result: &str) -> Vec<(String, String)> {
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
            match verdict(&ctx, peer.ip(), &query, &a, "tcp") {
                Release::Drop => continue,
                Release::Now => {}
                Release::Hold(h) => h.wait(&ctx, peer.ip()).await,
            }
            if write_frame(&mut client, &a).await.is_err() {
                return;
            }
            break;
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
