//! Egret's transparent DNS proxy: the shell that makes domain-name egress rules exact.
//!
//! Pods under name rules have their DNS queries handed to this proxy by Egret's nft table; it
//! forwards each query unchanged to the resolver the pod addressed, reads the answer, and, when
//! a name rule of that pod allows the name, adds every address on the answer's CNAME chain to
//! that rule's kernel sets (with a timeout from the TTL) *before* the pod sees the answer. So
//! the pod's first connection to a name it just resolved is already allowed.
//!
//! [`answer`] and [`learn`] are pure (messages in, what to program out); [`proxy`] (with its UDP
//! side in `udp`) is the I/O.

pub mod answer;
pub mod learn;
pub mod metrics;
pub mod proxy;
mod udp;

pub use learn::{Element, Learned, Limits, NameRuleSets, PodRules};
pub use metrics::DnsMetrics;
pub use proxy::{Programmer, ProxyConfig, ProxyError, Shared, run};
