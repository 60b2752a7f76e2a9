//! The tokio shell: one UDP socket, a timer queue and the [`GossipCore`].

use crate::core::{Counters, Effects, GossipConfig, GossipCore, Timer};
use crate::error::GossipError;
use crate::identity::NodeId;
use crate::view::View;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Starts gossip members.
pub struct Gossip;

/// Controls a running member. Dropping it stops the member without leaving, like a crash: peers
/// detect it as failed. Use [`GossipHandle::leave`] for a graceful exit.
pub struct GossipHandle {
    commands: mpsc::Sender<Command>,
    shared: Arc<Mutex<Shared>>,
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

struct Shared {
    counters: Counters,
    identity: NodeId,
}

enum Command {
    Announce(Vec<IpAddr>, Option<bool>, oneshot::Sender<Result<(), GossipError>>),
    Leave(oneshot::Sender<()>),
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Gossip {
    /// Binds `cfg.addr` (UDP), announces to the seeds and runs the member on the current tokio
    /// runtime. Returns a handle and a receiver that gets a new [`View`] on every membership or
    /// hosted-IP change.
    ///
    /// The member's first bump is the wall clock in milliseconds, so a restarted agent wins over
    /// the identity its previous life left behind. If the clock steps back across a restart by
    /// more than the downtime, peers keep preferring the old identity until it is forgotten
    /// ([`crate::Tuning::remove_down_after`]): keep node clocks synchronised.
    ///
    /// Must be called from within a tokio runtime.
    pub fn start(cfg: GossipConfig) -> Result<(GossipHandle, watch::Receiver<View>), GossipError> {
        cfg.validate()?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| GossipError::Config("Gossip::start must be called within a tokio runtime".into()))?;
        let std_socket =
            std::net::UdpSocket::bind(cfg.addr).map_err(|source| GossipError::Bind { addr: cfg.addr, source })?;
        std_socket.set_nonblocking(true).map_err(|source| GossipError::Bind { addr: cfg.addr, source })?;
        let local_addr = std_socket.local_addr().map_err(|source| GossipError::Bind { addr: cfg.addr, source })?;
        let socket = {
            let _guard = runtime.enter();
            UdpSocket::from_std(std_socket).map_err(|source| GossipError::Bind { addr: cfg.addr, source })?
        };
        // With port 0 the kernel picked the port; peers must learn the real one.
        let cfg = GossipConfig { addr: local_addr, ..cfg };
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| GossipError::Random(e.to_string()))?;
        let max_datagram = cfg.tuning.max_datagram;
        let core = GossipCore::new(&cfg, now_ms(), StdRng::from_seed(seed))?;
        let (view_tx, view_rx) = watch::channel(core.view().clone());
        let shared = Arc::new(Mutex::new(Shared { counters: core.counters(), identity: core.identity().clone() }));
        let (commands, command_rx) = mpsc::channel(16);
        let driver = Driver { core, socket, views: view_tx, shared: shared.clone(), timers: BTreeMap::new(), seq: 0 };
        let task = runtime.spawn(driver.run(command_rx, max_datagram));
        Ok((GossipHandle { commands, shared, local_addr, task }, view_rx))
    }
}

impl GossipHandle {
    /// The bound socket address (the advertised one).
    pub const fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The member's current identity.
    pub fn identity(&self) -> NodeId {
        lock(&self.shared).identity.clone()
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        lock(&self.shared).counters
    }

    /// Announces the egress IPs this node now hosts, keeping its eligibility.
    pub async fn set_hosted(&self, ips: Vec<IpAddr>) -> Result<(), GossipError> {
        self.command(ips, None).await
    }

    /// Announces the egress IPs this node now hosts and whether it is eligible to host (see
    /// [`GossipCore::announce`]).
    pub async fn announce(&self, ips: Vec<IpAddr>, eligible: bool) -> Result<(), GossipError> {
        self.command(ips, Some(eligible)).await
    }

    async fn command(&self, ips: Vec<IpAddr>, eligible: Option<bool>) -> Result<(), GossipError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Announce(ips, eligible, reply)).await.map_err(|_| GossipError::Stopped)?;
        answer.await.map_err(|_| GossipError::Stopped)?
    }

    /// Leaves gracefully (peers learn this member is down at once, not after a timeout) and stops.
    pub async fn leave(self) -> Result<(), GossipError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Leave(reply)).await.map_err(|_| GossipError::Stopped)?;
        answer.await.map_err(|_| GossipError::Stopped)?;
        let _ = self.task.await;
        Ok(())
    }

    /// Stops at once without telling anyone, as a crash would; the socket is closed when this
    /// returns.
    pub async fn shutdown(self) {
        drop(self.commands);
        let _ = self.task.await;
    }
}

struct Driver {
    core: GossipCore,
    socket: UdpSocket,
    views: watch::Sender<View>,
    shared: Arc<Mutex<Shared>>,
    // Due time and an insertion number (so equal due times keep their order) -> timer.
    timers: BTreeMap<(Instant, u64), Timer>,
    seq: u64,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, max_datagram: usize) {
        // One byte more than the largest datagram, so an oversized one shows up as such
        // instead of being silently truncated into something that might parse.
        let mut buf = vec![0u8; max_datagram + 1];
        let fx = self.core.start(now_ms());
        self.apply(fx).await;
        loop {
            let next_timer = self.timers.keys().next().map(|(at, _)| *at);
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(Command::Announce(ips, eligible, reply)) => {
                        let result = match eligible {
                            Some(eligible) => self.core.announce(now_ms(), ips, eligible),
                            None => self.core.set_hosted(now_ms(), ips),
                        };
                        match result {
                            Ok(fx) => {
                                self.apply(fx).await;
                                let _ = reply.send(Ok(()));
                            }
                            Err(e) => {
                                let _ = reply.send(Err(e));
                            }
                        }
                    }
                    Some(Command::Leave(reply)) => {
                        let fx = self.core.leave(now_ms());
                        self.apply(fx).await;
                        let _ = reply.send(());
                        break;
                    }
                    None => {
                        info!(member = ?self.core.identity(), "gossip member stopped without leaving");
                        break;
                    }
                },
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, _from)) => {
                        let fx = self.core.handle_datagram(now_ms(), &buf[..len]);
                        self.apply(fx).await;
                    }
                    // Transient (e.g. an ICMP error reported on the socket); the next datagram
                    // will do.
                    Err(e) => debug!(error = %e, "gossip receive"),
                },
                () = tokio::time::sleep_until(next_timer.unwrap_or_else(Instant::now)), if next_timer.is_some() => {
                    let now = Instant::now();
                    while let Some(entry) = self.timers.first_entry() {
                        if entry.key().0 > now {
                            break;
                        }
                        let timer = entry.remove();
                        let fx = self.core.handle_timer(now_ms(), timer);
                        self.apply(fx).await;
                    }
                }
            }
        }
    }

    async fn apply(&mut self, fx: Effects) {
        for (to, datagram) in fx.datagrams {
            if let Err(e) = self.socket.send_to(&datagram, to).await {
                self.core.count_send_error();
                debug!(%to, error = %e, "gossip send");
            }
        }
        let now = Instant::now();
        for (after, timer) in fx.timers {
            self.seq += 1;
            self.timers.insert((now + after, self.seq), timer);
        }
        if let Some(view) = fx.view {
            self.views.send_replace(view);
        }
        let mut shared = lock(&self.shared);
        shared.counters = self.core.counters();
        if shared.identity != *self.core.identity() {
            warn!(new = ?self.core.identity(), "gossip identity renewed");
            shared.identity = self.core.identity().clone();
        }
    }
}
