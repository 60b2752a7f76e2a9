//! DNS over UDP. Every pod datagram the proxy takes arrives on the listener (TPROXY finds no
//! established socket of ours: none is connected), which reads the resolver the pod addressed
//! from the original destination and hands the query to the session of that pod port and
//! resolver, starting one if there is none. A session forwards its queries on one upstream
//! socket of its own (the pod keeps its IDs apart on one port, so the resolver sees the same on
//! ours), matches answers to pending queries by ID and question, and sends each answer to the
//! pod from a socket bound (transparently, unconnected) to the resolver's address and port: the
//! pod sees the resolver answering. One such reply socket per resolver address serves every
//! session; a datagram that reaches it anyway is treated like one from the listener.
//!
//! Sessions end a while after their last query once nothing is pending; their channel is
//! closed and drained first, so a query handed over meanwhile is answered, and the next one
//! from that port starts a new session.

use crate::answer;
use crate::proxy::{Ctx, ProxyError, Release, labels, sock_err, transparent};
use nix::sys::socket::{
    self, ControlMessageOwned, MsgFlags, SockaddrIn, SockaddrIn6, SockaddrStorage, setsockopt, sockopt,
};
use socket2::Type;
use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Largest DNS message over UDP.
const MAX_MESSAGE: usize = 65535;
/// Reply sockets of resolver addresses no query used for this long are closed.
const REPLY_IDLE: Duration = Duration::from_secs(60);
/// Most sessions at once (each holds an upstream socket until its queries are answered or
/// time out): past it, new pod ports' queries are dropped and counted (`refused`).
const MAX_SESSIONS: usize = 8192;
/// Most resolver addresses answered from at once (each a bound socket and a task).
const MAX_RESOLVERS: usize = 64;

/// The listener for one family: it takes the first query of each pod port and learns the
/// resolver the pod addressed from the original destination.
pub(crate) fn listener(local: SocketAddr) -> Result<UdpSocket, ProxyError> {
    let s = transparent(local, Type::DGRAM)?;
    let on = if local.is_ipv6() {
        setsockopt(&s, sockopt::Ipv6OrigDstAddr, &true)
    } else {
        setsockopt(&s, sockopt::Ipv4OrigDstAddr, &true)
    };
    on.map_err(|e| ProxyError::Socket { what: "IP_RECVORIGDSTADDR", source: e.into() })?;
    UdpSocket::from_std(s.into()).map_err(sock_err("register UDP"))
}

/// The socket answers to pods leave from: bound (transparently) to the resolver's address,
/// never connected, so TPROXY never hands it a pod's query.
fn reply_socket(resolver: SocketAddr) -> Result<UdpSocket, ProxyError> {
    let s = transparent(resolver, Type::DGRAM)?;
    UdpSocket::from_std(s.into()).map_err(sock_err("register UDP"))
}

/// A session's socket to the resolver, from this node's own address.
fn upstream_socket(resolver: SocketAddr) -> Result<UdpSocket, ProxyError> {
    let any: SocketAddr = match resolver {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = std::net::UdpSocket::bind(any).map_err(sock_err("bind upstream UDP"))?;
    s.connect(resolver).map_err(sock_err("connect upstream UDP"))?;
    s.set_nonblocking(true).map_err(sock_err("O_NONBLOCK"))?;
    UdpSocket::from_std(s).map_err(sock_err("register UDP"))
}

/// One datagram from the listener: bytes, the pod, and the resolver it addressed.
fn recv_origdst(fd: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, SocketAddr)> {
    let mut cmsg = nix::cmsg_space!(nix::libc::sockaddr_in6);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = socket::recvmsg::<SockaddrStorage>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty())
        .map_err(std::io::Error::from)?;
    let from = msg.address.as_ref().and_then(std_addr).ok_or_else(|| std::io::Error::other("no source address"))?;
    let mut dst = None;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        match c {
            ControlMessageOwned::Ipv4OrigDstAddr(a) => dst = Some(SocketAddr::V4(SockaddrIn::from(a).into())),
            ControlMessageOwned::Ipv6OrigDstAddr(a) => dst = Some(SocketAddr::V6(SockaddrIn6::from(a).into())),
            _ => {}
        }
    }
    let dst = dst.ok_or_else(|| std::io::Error::other("no original destination"))?;
    Ok((msg.bytes, from, dst))
}

fn std_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// A query for the dispatcher: bytes, the pod, the resolver it addressed.
type Incoming = (Vec<u8>, SocketAddr, SocketAddr);

/// A resolver address's reply socket and the task reading strays from it.
struct Reply {
    socket: Arc<UdpSocket>,
    reader: tokio::task::JoinHandle<()>,
    used: Instant,
}

impl Drop for Reply {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Serves the listener of one family: hands each query to its session.
pub(crate) async fn serve(ctx: Arc<Ctx>, listener: UdpSocket) {
    let (stray_tx, mut strays) = mpsc::unbounded_channel::<Incoming>();
    let mut sessions: HashMap<(SocketAddr, SocketAddr), mpsc::UnboundedSender<Vec<u8>>> = HashMap::new();
    let mut replies: HashMap<SocketAddr, Reply> = HashMap::new();
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        let (query, pod, resolver) = tokio::select! {
            got = listener.async_io(tokio::io::Interest::READABLE, || recv_origdst(&listener, &mut buf)) => match got {
                Ok((n, pod, resolver)) => (buf[..n].to_vec(), pod, resolver),
                Err(e) => {
                    tracing::debug!("DNS proxy: UDP receive: {e}");
                    continue;
                }
            },
            Some(stray) = strays.recv() => stray,
            _ = sweep.tick() => {
                sessions.retain(|_, s| !s.is_closed());
                replies.retain(|_, r| r.used.elapsed() < REPLY_IDLE);
                continue;
            }
        };
        // Sent straight to the listener (not handed over by TPROXY): forwarding it would loop.
        if resolver.ip().is_loopback() {
            ctx.metrics.queries.get_or_create(&labels("udp", "refused")).inc();
            continue;
        }
        if let Some(r) = replies.get_mut(&resolver) {
            r.used = Instant::now();
        }
        let query = match sessions.get(&(pod, resolver)) {
            Some(s) => match s.send(query) {
                Ok(()) => continue,
                // That session has just ended.
                Err(mpsc::error::SendError(q)) => q,
            },
            None => query,
        };
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| !s.is_closed());
        }
        if sessions.len() >= MAX_SESSIONS || (!replies.contains_key(&resolver) && replies.len() >= MAX_RESOLVERS) {
            ctx.metrics.queries.get_or_create(&labels("udp", "refused")).inc();
            tracing::debug!(%pod, %resolver, "DNS proxy: at its limit of sessions or resolvers; query dropped");
            continue;
        }
        let reply = match replies.get_mut(&resolver) {
            Some(r) => {
                r.used = Instant::now();
                r.socket.clone()
            }
            None => match reply_socket(resolver) {
                Ok(s) => {
                    let socket = Arc::new(s);
                    let reader = tokio::spawn(read_strays(socket.clone(), resolver, stray_tx.clone()));
                    replies.insert(resolver, Reply { socket: socket.clone(), reader, used: Instant::now() });
                    socket
                }
                Err(e) => {
                    ctx.metrics.queries.get_or_create(&labels("udp", "upstream_error")).inc();
                    tracing::warn!(%resolver, "DNS proxy: reply socket: {e}");
                    continue;
                }
            },
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(query);
        sessions.insert((pod, resolver), tx);
        tokio::spawn(session(ctx.clone(), pod, resolver, reply, rx));
    }
}

/// Datagrams that reached a reply socket (none should): queries to its resolver.
async fn read_strays(socket: Arc<UdpSocket>, resolver: SocketAddr, to: mpsc::UnboundedSender<Incoming>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        if let Ok((n, pod)) = socket.recv_from(&mut buf).await
            && to.send((buf[..n].to_vec(), pod, resolver)).is_err()
        {
            return;
        }
    }
}

/// What woke a session.
enum Event {
    /// A query from the pod (`None`: the dispatcher is gone).
    Query(Option<Vec<u8>>),
    /// A datagram from the resolver.
    Answer(std::io::Result<usize>),
    /// A pending query's deadline or the idle end.
    Tick,
}

/// A query forwarded and not answered yet.
struct Pending {
    query: answer::Query,
    deadline: Instant,
}

/// Serves one pod port's queries to one resolver until idle.
async fn session(
    ctx: Arc<Ctx>,
    pod: SocketAddr,
    resolver: SocketAddr,
    reply: Arc<UdpSocket>,
    mut queries: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let up = match upstream_socket(resolver) {
        Ok(u) => u,
        Err(e) => {
            ctx.metrics.queries.get_or_create(&labels("udp", "upstream_error")).inc();
            tracing::warn!(%pod, %resolver, "DNS proxy: upstream socket: {e}");
            return;
        }
    };
    let mut pending: HashMap<u16, Pending> = HashMap::new();
    let mut last_query = Instant::now();
    let mut closing = false;
    // Capacity only: a new session (most stub resolvers use a new port per lookup) zeroes
    // nothing.
    let mut abuf = Vec::with_capacity(MAX_MESSAGE);
    loop {
        abuf.clear();
        let idle_end = last_query + ctx.cfg.udp_idle;
        let next_deadline = pending.values().map(|p| p.deadline).min();
        // Once closing (idle_end passed), only the pending queries' deadlines wake it.
        let wake = match (closing, next_deadline) {
            (true, Some(d)) => d,
            (true, None) => Instant::now(),
            (false, d) => d.map_or(idle_end, |d| d.min(idle_end)),
        };
        let event = tokio::select! {
            biased;
            q = queries.recv(), if !closing => Event::Query(q),
            got = up.recv_buf(&mut abuf) => Event::Answer(got),
            () = tokio::time::sleep_until(wake.into()) => Event::Tick,
        };
        match event {
            Event::Query(Some(q)) => {
                last_query = Instant::now();
                forward(&ctx, &up, &mut pending, &q).await;
            }
            Event::Query(None) => return,
            Event::Answer(Ok(n)) => on_answer(&ctx, pod, &reply, &mut pending, &abuf[..n]).await,
            Event::Answer(Err(_)) => {}
            Event::Tick => {
                let now = Instant::now();
                let before = pending.len();
                pending.retain(|_, p| p.deadline > now);
                let expired = before - pending.len();
                if expired > 0 {
                    ctx.metrics.queries.get_or_create(&labels("udp", "upstream_timeout")).inc_by(expired as u64);
                }
                if !closing && now >= idle_end {
                    // No query is taken after this; one handed over meanwhile is still served.
                    closing = true;
                    queries.close();
                    while let Ok(q) = queries.try_recv() {
                        forward(&ctx, &up, &mut pending, &q).await;
                    }
                }
                if closing && pending.is_empty() {
                    return;
                }
            }
        }
    }
}

/// Sends a pod's query on to the resolver and notes it as pending.
async fn forward(ctx: &Ctx, up: &UdpSocket, pending: &mut HashMap<u16, Pending>, q: &[u8]) {
    let m = &ctx.metrics;
    let query = match answer::query(q) {
        Ok(x) => x,
        Err(e) => {
            m.queries.get_or_create(&labels("udp", "unusable")).inc();
            tracing::debug!("DNS proxy: dropped a query: {e}");
            return;
        }
    };
    if up.send(q).await.is_err() {
        m.queries.get_or_create(&labels("udp", "upstream_error")).inc();
        return;
    }
    pending.insert(query.id, Pending { query, deadline: Instant::now() + ctx.cfg.upstream_timeout });
}

/// An answer from the resolver: released to the pod at once, after its addresses are
/// programmed, or dropped (not the answer to a pending query; the query stays pending).
async fn on_answer(
    ctx: &Arc<Ctx>,
    pod: SocketAddr,
    reply: &Arc<UdpSocket>,
    pending: &mut HashMap<u16, Pending>,
    a: &[u8],
) {
    let Some(id) = a.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else { return };
    let Some(p) = pending.get(&id) else {
        ctx.metrics.queries.get_or_create(&labels("udp", "mismatched_answer")).inc();
        return;
    };
    let ip: IpAddr = pod.ip();
    match crate::proxy::verdict(ctx, ip, &p.query, a, "udp") {
        Release::Drop => {}
        Release::Now => {
            pending.remove(&id);
            let _ = reply.send_to(a, pod).await;
        }
        Release::Hold(h) => {
            pending.remove(&id);
            let (ctx, reply, a) = (ctx.clone(), reply.clone(), a.to_vec());
            tokio::spawn(async move {
                h.wait(&ctx, ip).await;
                let _ = reply.send_to(&a, pod).await;
            });
        }
    }
}
