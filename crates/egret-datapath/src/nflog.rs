//! The NFLOG socket the audit log reads: bound to one group in the caller's network namespace,
//! receiving the packets the firewall's decision chains log (parsed by [`crate::audit`]).

use crate::audit::{Logged, parse_datagram};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{ConfigCmd, ConfigMode, ConfigNla, Timeout, config_request};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::{Socket, constants::NETLINK_NETFILTER};
use std::io;
use std::time::Duration;

/// Why the NFLOG socket could not be set up or read.
#[derive(Debug, thiserror::Error)]
pub enum NflogError {
    /// A socket operation failed.
    #[error("NFLOG socket: {what}: {source}")]
    Socket {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused to bind the group (`EBUSY`: another program, such as ulogd, holds it).
    #[error("binding NFLOG group {group}: {source}{hint}")]
    Bind {
        /// The group.
        group: u16,
        /// The kernel's answer.
        #[source]
        source: io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// The kernel's answer to a configuration request was not an acknowledgement.
    #[error("NFLOG group {0}: unexpected answer to the bind request")]
    Unexpected(u16),
}

/// What one read gave.
#[derive(Debug)]
pub enum Received {
    /// Logged packets (possibly none: a message that was not a packet).
    Packets(Vec<Logged>),
    /// The kernel dropped messages because the socket's buffer was full (`ENOBUFS`); how many
    /// is not known.
    Overrun,
    /// Nothing arrived within the read timeout.
    Idle,
}

/// A socket bound to one NFLOG group.
pub struct NflogSocket {
    socket: Socket,
    group: u16,
    buf: Vec<u8>,
}

impl std::fmt::Debug for NflogSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NflogSocket").field("group", &self.group).finish()
    }
}

/// Bytes of each packet the kernel copies: the IP header, IPv6 extension headers and the ports.
const COPY_RANGE: u32 = 128;
/// Packets the kernel batches into one datagram (its default, 100, with a 1 s flush, would
/// hold a lone record back for a second).
const QTHRESH: u32 = 64;
/// The batch's size limit; it stays below the read buffer.
const BATCH_BYTES: u32 = 1 << 15;
/// A batch is sent at the latest this many hundredths of a second after its first packet.
const FLUSH_AFTER_HUNDREDTHS: u32 = 1;
/// The socket's receive buffer: room for a burst of some thousands of logged packets (batches
/// of up to 64, each packet's message about 250 bytes).
const RECV_BUFFER: usize = 4 << 20;

impl NflogSocket {
    /// Binds `group` in the current network namespace; reads wait at most `timeout`.
    pub fn bind(group: u16, timeout: Duration) -> Result<NflogSocket, NflogError> {
        let sock_err = |what| move |source| NflogError::Socket { what, source };
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(sock_err("creating"))?;
        socket.bind_auto().map_err(sock_err("binding an address"))?;
        // Past net.core.rmem_max (208 KiB by default) with CAP_NET_ADMIN, which the agent has;
        // without it, as much as the limit allows.
        if nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBufForce, &RECV_BUFFER).is_err() {
            let _ = socket.set_rx_buf_sz(RECV_BUFFER);
        }
        nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(timeout.as_secs() as i64, timeout.subsec_micros() as i64),
        )
        .map_err(|e| NflogError::Socket { what: "setting the read timeout", source: e.into() })?;
        let mut s = NflogSocket { socket, group, buf: vec![0; 1 << 16] };
        // The kernel batches up to QTHRESH packets or FLUSH_AFTER, whichever comes first: one
        // read per batch under a flood, a record at most 10 ms late otherwise.
        s.configure(vec![
            ConfigCmd::Bind.into(),
            ConfigMode::new_packet(COPY_RANGE).into(),
            ConfigNla::QThresh(QTHRESH),
            ConfigNla::NlBufSiz(BATCH_BYTES),
            Timeout::new(FLUSH_AFTER_HUNDREDTHS).into(),
        ])?;
        Ok(s)
    }

    /// The group bound.
    pub fn group(&self) -> u16 {
        self.group
    }

    fn configure(&mut self, nlas: Vec<ConfigNla>) -> Result<(), NflogError> {
        let req = config_request(NetfilterProtoFamily::Unspec, self.group, nlas);
        let mut out = vec![0; req.buffer_len()];
        req.serialize(&mut out);
        self.socket.send(&out, 0).map_err(|source| NflogError::Socket { what: "sending the bind request", source })?;
        let n = self
            .socket
            .recv(&mut &mut self.buf[..], 0)
            .map_err(|source| NflogError::Socket { what: "reading the bind answer", source })?;
        match NetlinkMessage::<NetfilterMessage>::deserialize(&self.buf[..n]).map(|m| m.payload) {
            Ok(NetlinkPayload::Error(e)) => match e.code {
                None => Ok(()),
                Some(code) => {
                    let source = io::Error::from_raw_os_error(-code.get());
                    let hint = if source.raw_os_error() == Some(libc::EBUSY) {
                        " (another program holds this group: choose another with --audit-nflog-group)"
                    } else {
                        ""
                    };
                    Err(NflogError::Bind { group: self.group, source, hint })
                }
            },
            _ => Err(NflogError::Unexpected(self.group)),
        }
    }

    /// Waits for the next datagram (up to the read timeout).
    pub fn recv(&mut self) -> Result<Received, NflogError> {
        match self.socket.recv(&mut &mut self.buf[..], 0) {
            Ok(n) => Ok(Received::Packets(parse_datagram(&self.buf[..n]))),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(Received::Overrun),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => Ok(Received::Idle),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Received::Idle),
            Err(source) => Err(NflogError::Socket { what: "reading", source }),
        }
    }
}

impl Drop for NflogSocket {
    fn drop(&mut self) {
        // Closing the socket unbinds the group too; saying so frees it at once.
        let _ = self.configure(vec![ConfigCmd::Unbind.into()]);
    }
}
