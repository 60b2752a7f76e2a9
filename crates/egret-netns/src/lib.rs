//! Network-namespace topologies for Egret's privileged tests, benchmarks and the lab.
//!
//! - [`Netns`]: one uniquely named namespace (prefix `egret-`), deleted when dropped, even
//!   while unwinding from a panic; run a closure ([`Netns::run`]) or a command
//!   ([`Netns::exec`]) inside it.
//! - [`Topology`]: the lab's shape (BRIEF §5): router, node network bridge, nodes with routed pod
//!   CIDRs and a CNI-style masquerade, pods, outside hosts running [`Whoami`].
//! - [`Whoami`]: a TCP server answering with the source address it sees.
//!
//! Plumbing uses the `ip` command. Nothing is ever created in the caller's own namespace:
//! veth pairs are created from inside one lab namespace with their peer placed straight into
//! another.

mod ns;
mod topology;
mod whoami;

pub use ns::{KillOnDrop, Netns, unique_prefix};
pub use topology::{
    BAD_HOST, DB_A, NODE_NET, Node, POD_NET, Pod, PodSpec, ROUTER_IP, Topology, TopologySpec, node_ip, node_name,
    plumb_pod, pod_cidr,
};
pub use whoami::{WHOAMI_PORT, Whoami, WhoamiConn, whoami};

/// Errors of topology plumbing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command could not be started.
    #[error("cannot run {0}: {1}")]
    Spawn(String, #[source] std::io::Error),
    /// A command failed.
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on standard error.
        stderr: String,
    },
    /// A namespace name that does not start with `egret-` (never touch others' namespaces).
    #[error("namespace name {0:?} must start with \"egret-\"")]
    Name(String),
    /// A namespace file could not be opened.
    #[error("cannot open {0}: {1}")]
    Open(String, #[source] std::io::Error),
    /// Entering a namespace failed.
    #[error("cannot enter network namespace {0}: {1}")]
    Setns(String, #[source] nix::Error),
    /// The closure run inside a namespace panicked.
    #[error("code run inside network namespace {0} panicked")]
    Panicked(String),
    /// A socket operation failed.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// A peer answered something unexpected.
    #[error("{0}")]
    Protocol(String),
    /// The topology asked for is inconsistent.
    #[error("bad topology: {0}")]
    Spec(String),
}

/// Why privileged tests cannot run here (`None`: they can): not root, or `ip`/`nft` missing.
pub fn skip_reason(need: &[&str]) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    for tool in need {
        let found = std::process::Command::new(tool)
            .arg(if *tool == "iperf3" { "--version" } else { "-V" })
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}
