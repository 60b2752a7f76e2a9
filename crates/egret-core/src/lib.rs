//! Egret's pure core. Everything here is a plain function of its inputs: no I/O, no clocks, no
//! async. Sources, the datapath, gossip and the CLI are shells around it.
//!
//! - [`event`]: what object sources send into the index (apply, delete, reset per kind).
//! - [`index`]: the in-memory index that events keep up to date; node plans without re-planning.
//! - [`model`]: the validated domain objects, built from API objects by [`validate`].
//! - [`selector`]: Kubernetes label selectors, compiled once and matched many times.
//! - [`net`]: address arithmetic (ranges, CIDR decomposition).
//! - [`ipam`]: egress IP allocation from pools.
//! - [`ids`]: node-local ids for tunnel peers (marks, routing tables), stable while needed.
//! - [`placement`]: which node hosts an egress IP.
//! - [`planner`]: objects + live nodes -> what every node's datapath must hold.

pub mod event;
pub mod ids;
pub mod index;
pub mod ipam;
pub mod model;
pub mod net;
pub mod placement;
pub mod planner;
pub mod policy;
pub mod selector;
pub mod status;
pub mod validate;

#[cfg(test)]
pub(crate) mod testutil;
