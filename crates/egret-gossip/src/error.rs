//! Errors of the gossip crate.

use crate::config::TuningError;
use crate::key::KeyError;
use std::net::SocketAddr;

/// Why gossip could not start or an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    /// The configuration is unusable (empty name, unspecified address, ...).
    #[error("bad gossip configuration: {0}")]
    Config(String),
    /// The tuning values are unusable.
    #[error(transparent)]
    Tuning(#[from] TuningError),
    /// The shared key could not be loaded or made.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The UDP socket could not be bound.
    #[error("cannot bind gossip socket {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// More hosted IPs than a member may announce.
    #[error("cannot announce {count} hosted IPs: at most {max} fit in a member's gossip records")]
    TooManyHosted {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A hosted-IP record could not be encoded.
    #[error("cannot encode hosted-IP record: {0}")]
    Encode(String),
    /// The operating system's random source failed.
    #[error("cannot seed the gossip random generator: {0}")]
    Random(String),
    /// The gossip task is no longer running.
    #[error("gossip has stopped")]
    Stopped,
}
