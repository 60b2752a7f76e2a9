//! The whoami server: answers every TCP connection with the source address it sees, then echoes
//! what it receives (so a test can keep one connection open and prove it still works).

use crate::{Error, Netns};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The port the lab's outside servers listen on.
pub const WHOAMI_PORT: u16 = 8080;

/// A whoami server running on a thread inside a namespace; stopped when dropped.
#[derive(Debug)]
pub struct Whoami {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<IpAddr>>>,
    thread: Option<JoinHandle<()>>,
}

impl Whoami {
    /// Listens on `[::]:port` inside `ns`: both families (IPv4 clients are seen as themselves,
    /// not as IPv4-mapped IPv6 addresses).
    pub fn start(ns: &Netns, port: u16) -> Result<Whoami, Error> {
        let listener = ns.run(|| {
            let l = TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))?;
            l.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(l)
        })?;
        let listener = listener.map_err(|e| Error::Io("whoami bind".into(), e))?;
        Ok(Whoami::from_listener(listener))
    }

    /// Serves on a listener already bound (in whatever namespace it was bound in), e.g. by a
    /// whoami process started inside a lab namespace. The listener must be non-blocking.
    pub fn from_listener(listener: TcpListener) -> Whoami {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (stop.clone(), seen.clone());
        // The listening socket already lives in `ns`; the thread needs no setns.
        let thread = std::thread::spawn(move || serve(listener, s, v));
        Whoami { stop, seen, thread: Some(thread) }
    }

    /// Every source address seen so far, in order.
    pub fn seen(&self) -> Vec<IpAddr> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

fn serve(listener: TcpListener, stop: Arc<AtomicBool>, seen: Arc<Mutex<Vec<IpAddr>>>) {
    let mut handlers = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Ok(mut v) = seen.lock() {
                    v.push(peer.ip().to_canonical());
                }
                let stop = stop.clone();
                handlers.push(std::thread::spawn(move || handle(stream, peer, stop)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                tracing::warn!(error = %e, "whoami accept failed");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        handlers.retain(|h: &JoinHandle<()>| !h.is_finished());
    }
    for h in handlers {
        let _ = h.join();
    }
}

fn handle(mut stream: TcpStream, peer: SocketAddr, stop: Arc<AtomicBool>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    if writeln!(stream, "{}", peer.ip().to_canonical()).is_err() {
        return;
    }
    let mut buf = [0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

impl Drop for Whoami {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A client connection to a whoami server that stays open.
#[derive(Debug)]
pub struct WhoamiConn {
    reader: BufReader<TcpStream>,
    /// The source address the server saw.
    pub seen: IpAddr,
}

impl WhoamiConn {
    /// Connects from inside `ns` to `to` and reads the first line.
    pub fn open(ns: &Netns, to: SocketAddr, timeout: Duration) -> Result<WhoamiConn, Error> {
        let stream = ns
            .run(|| TcpStream::connect_timeout(&to, timeout))?
            .map_err(|e| Error::Io(format!("connect from {} to {to}", ns.name()), e))?;
        stream.set_read_timeout(Some(timeout)).map_err(|e| Error::Io("set timeout".into(), e))?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| Error::Io(format!("read from {to}"), e))?;
        let seen = line.trim().parse().map_err(|_| Error::Protocol(format!("whoami {to} answered {line:?}")))?;
        Ok(WhoamiConn { reader, seen })
    }

    /// The connection's current maximum segment size (`TCP_MAXSEG`): shows MSS clamping.
    pub fn mss(&self) -> Result<u32, Error> {
        nix::sys::socket::getsockopt(self.reader.get_ref(), nix::sys::socket::sockopt::TcpMaxSeg)
            .map_err(|e| Error::Io("TCP_MAXSEG".into(), e.into()))
    }

    /// Sends `msg` (one line) and waits for the echo: proves the connection still carries data.
    pub fn echo(&mut self, msg: &str) -> Result<(), Error> {
        writeln!(self.reader.get_mut(), "{msg}").map_err(|e| Error::Io("echo write".into(), e))?;
        let mut line = String::new();
        self.reader.read_line(&mut line).map_err(|e| Error::Io("echo read".into(), e))?;
        if line.trim_end() != msg {
            return Err(Error::Protocol(format!("echo {msg:?} came back as {line:?}")));
        }
        Ok(())
    }
}

/// Connects from inside `ns` to the whoami server at `to` and returns the source address it saw.
pub fn whoami(ns: &Netns, to: SocketAddr, timeout: Duration) -> Result<IpAddr, Error> {
    WhoamiConn::open(ns, to, timeout).map(|c| c.seen)
}
