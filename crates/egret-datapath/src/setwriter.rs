//! Writing addresses into nftables sets with timeouts over netlink, without spawning `nft`: one
//! `NETLINK_NETFILTER` socket, one batch per call, returning once the kernel acknowledged every
//! message (the DNS proxy must have the addresses in the kernel before it releases an answer).
//! The messages and the reading of the answers are [`crate::nft::setelem`]; reading a set back
//! (not latency-critical) spawns `nft -j list set`.

use crate::nft::setelem::{Batch, Element, LiveElement, SetElemError};
use crate::{Config, DatapathError, run_nft};
use netlink_sys::{Socket, constants::NETLINK_NETFILTER};
use std::io;
use std::net::IpAddr;
use std::time::Duration;

/// How long a call waits for an acknowledgement the kernel has not queued. The kernel handles a
/// batch inside `sendmsg` and queues every answer before it returns, so this only bounds a
/// call whose answers were lost (receive buffer overrun).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// Room for the largest answer: acknowledgements are capped to the header, but a kernel
/// without `NETLINK_CAP_ACK` echoes a whole refused message (at most `MAX_MESSAGE_BYTES`).
const RECV_BYTES: usize = 64 * 1024;

/// Writes set elements in the network namespace the socket was opened in. Calls block; use it
/// from one thread (`&mut self`), e.g. a dedicated one.
pub struct SetWriter {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for SetWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetWriter").field("seq", &self.seq).finish()
    }
}

fn sock_err(what: &'static str) -> impl FnOnce(io::Error) -> SetElemError {
    move |source| SetElemError::Socket { what, source }
}

impl SetWriter {
    /// Opens the socket in the calling thread's network namespace (needs `CAP_NET_ADMIN` there
    /// to write).
    pub fn open() -> Result<SetWriter, SetElemError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(sock_err("creating"))?;
        socket.bind_auto().map_err(sock_err("binding an address"))?;
        // Refusals carry only the header of the refused message, plus the offset of the
        // attribute refused (which tells a missing table from a missing set or element). Both
        // are optional: without them answers are larger and less precise, never wrong.
        let _ = socket.set_cap_ack(true);
        let _ = socket.set_ext_ack(true);
        nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(ANSWER_TIMEOUT.as_secs() as i64, ANSWER_TIMEOUT.subsec_micros() as i64),
        )
        .map_err(|e| SetElemError::Socket { what: "setting the read timeout", source: e.into() })?;
        Ok(SetWriter { socket, seq: 1, buf: vec![0; RECV_BYTES] })
    }

    /// Adds the elements (or refreshes the timeout of ones already present) to set `set` of
    /// table `inet table`, in one batch; returns once the kernel acknowledged every message.
    /// All or nothing: on an error no element was added.
    pub fn add(&mut self, table: &str, set: &str, elems: &[Element]) -> Result<(), SetElemError> {
        if elems.is_empty() {
            return Ok(());
        }
        let batch = Batch::add(table, set, elems, self.seq)?;
        self.run(batch)
    }

    /// Deletes the addresses from set `set` of table `inet table`, in one batch. All or nothing:
    /// an address not in the set fails the call ([`SetElemError::NotFound`] naming it) and
    /// nothing is deleted.
    pub fn delete(&mut self, table: &str, set: &str, addrs: &[IpAddr]) -> Result<(), SetElemError> {
        if addrs.is_empty() {
            return Ok(());
        }
        let batch = Batch::delete(table, set, addrs, self.seq)?;
        self.run(batch)
    }

    fn run(&mut self, mut batch: Batch) -> Result<(), SetElemError> {
        // Sequence numbers move on even if this call fails, so answers it leaves behind never
        // match a later batch.
        self.seq = batch.next_seq();
        let n = self.socket.send(batch.bytes(), 0).map_err(sock_err("sending the batch"))?;
        if n != batch.bytes().len() {
            return Err(SetElemError::Socket {
                what: "sending the batch",
                source: io::Error::new(io::ErrorKind::WriteZero, format!("sent {n} of {} bytes", batch.bytes().len())),
            });
        }
        while !batch.answered() {
            // After a failure of the whole batch the kernel may have nothing more to say; what
            // it has is queued already.
            let flags = if batch.failed_as_a_whole() { libc::MSG_DONTWAIT } else { 0 };
            match self.socket.recv(&mut &mut self.buf[..], flags) {
                Ok(n) => {
                    batch.absorb(&self.buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Err(SetElemError::NoAnswer(
                        "the socket's receive buffer overran: acknowledgements were lost".into(),
                    ));
                }
                Err(source) => return Err(SetElemError::Socket { what: "reading the answers", source }),
            }
        }
        batch.outcome()
    }
}

/// The live elements of set `set` of table `inet table` in the calling thread's network
/// namespace, read with `nft -j list set` (timeouts and expiry in whole seconds).
pub fn read_set(cfg: &Config, table: &str, set: &str) -> Result<Vec<LiveElement>, DatapathError> {
    let out = run_nft(cfg, &["-j", "list", "set", "inet", table, set], None)?;
    crate::nft::setelem::parse_listing(&out).map_err(DatapathError::NftOutput)
}
