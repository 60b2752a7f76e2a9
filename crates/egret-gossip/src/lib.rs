//! Egret's node liveness: SWIM membership among agents, built on [`foca`].
//!
//! One member runs per node, on the node's underlay IP and a UDP port. It learns which members are
//! Alive, Suspect or Dead, and which egress IPs each one says it hosts; the agent recomputes
//! placement from that [`View`] on every change.
//!
//! - [`GossipCore`] is the member without I/O (foca is sans-I/O too): datagrams and timers in,
//!   datagrams, timers and views out. A deterministic simulation drives it in `tests/sim.rs`.
//! - [`Gossip::start`] runs it on a tokio UDP socket and publishes views on a `watch` channel.
//! - Every datagram is sealed in an authenticated, encrypted [`envelope`] with the shared
//!   [`GossipKey`]; anything that does not open is dropped and counted, never given to foca.
//! - Identities ([`NodeId`]) carry a bump so a restarted or wrongly-declared-dead node rejoins
//!   at once; seeds that are not alive in the view are re-announced to periodically, so both
//!   sides of a healed partition converge.
//! - Hosted-IP records ride on foca's custom broadcasts and are pushed directly to members that
//!   come up ([`hosted`]).
//!
//! Detection time, the defaults and what they cost are derived in [`Tuning`].

pub mod config;
pub mod core;
pub mod envelope;
pub mod error;
pub mod hosted;
pub mod identity;
pub mod key;
pub mod shell;
pub mod view;

pub use crate::config::Tuning;
pub use crate::core::{Counters, Effects, GossipConfig, GossipCore, Seed, Timer};
pub use crate::error::GossipError;
pub use crate::identity::NodeId;
pub use crate::key::{GossipKey, GossipKeys, KeyError, generate_key_file};
pub use crate::shell::{Gossip, GossipHandle};
pub use crate::view::{MemberStatus, MemberView, View};
