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

pub mod cni;
mod ns;
mod topology;
mod whoami;

pub use ns::{KillOnDrop, Netns, unique_prefix};
pub use topology::{
    BAD_HOST, BAD_HOST6, DB_A, DB_A6, EGRESS_SUBNET_GW, EGRESS_SUBNET_PORT, NODE_NET, NODE_NET6, Node, OUTSIDE_NET6,
    POD_NET, POD_NET6, Pod, PodSpec, ROUTER_IP, ROUTER_IP6, Topology, TopologySpec, UPLINK2_DEV, UPLINK2_GW,
    UPLINK2_METRIC, egress_subnet_forwarded, node_ip, node_ip6, node_name, node_uplink2_ip, plumb_pod, pod_cidr,
    pod_cidr6, pod_ip6, uplink2_forwarded,
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

/// Why privileged code cannot run here (`None`: it can): not root, or a tool of `need` missing.
pub fn skip_reason(need: &[&str]) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    missing_tool(need).map(|tool| format!("`{tool}` is not installed"))
}

/// The first tool of `need` that cannot be run.
fn missing_tool<'a>(need: &[&'a str]) -> Option<&'a str> {
    need.iter().copied().find(|tool| {
        std::process::Command::new(tool)
            .arg(if *tool == "iperf3" { "--version" } else { "-V" })
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_err()
    })
}

/// The environment variable that privileged tests require to be `1`, so that they run only
/// where someone asked for them (they create namespaces and nftables tables).
pub const PRIVILEGED_ENV: &str = "EGRET_PRIVILEGED_TESTS";

/// Why a privileged test may not run (`None`: it may): pure, so the decision is unit-tested.
fn privileged_problem(root: bool, env: Option<&str>, missing: Option<&str>) -> Option<String> {
    let mut why = Vec::new();
    if !root {
        why.push("not running as root".to_string());
    }
    if env != Some("1") {
        why.push(format!("{PRIVILEGED_ENV} is not set to 1"));
    }
    if let Some(tool) = missing {
        why.push(format!("`{tool}` is not installed (iproute2, nftables)"));
    }
    (!why.is_empty()).then(|| {
        format!(
            "this privileged test cannot run: {}; run it as root with `{PRIVILEGED_ENV}=1 cargo test -- --include-ignored` (scripts/test.sh does)",
            why.join(", ")
        )
    })
}

/// Called first by every privileged test (those marked
/// `#[ignore = "privileged: needs root and EGRET_PRIVILEGED_TESTS=1"]`): panics, saying why,
/// unless the test runs as root with `EGRET_PRIVILEGED_TESTS=1` and `ip` and `nft` installed.
/// A privileged test that cannot run must fail, never pass by returning early.
pub fn require_privileged() {
    let env = std::env::var(PRIVILEGED_ENV).ok();
    let root = nix::unistd::geteuid().is_root();
    // Probing tools only makes sense once the rest holds; it also keeps the message short.
    let missing = if root && env.as_deref() == Some("1") { missing_tool(&["ip", "nft"]) } else { None };
    if let Some(why) = privileged_problem(root, env.as_deref(), missing) {
        panic!("{why}");
    }
}

#[cfg(test)]
mod privileged_tests {
    use super::privileged_problem;

    #[test]
    fn privileged_tests_run_only_as_root_with_the_variable_and_the_tools() {
        assert_eq!(privileged_problem(true, Some("1"), None), None);
        let not_root = privileged_problem(false, Some("1"), None).unwrap_or_default();
        assert!(not_root.contains("not running as root"), "{not_root}");
        for env in [None, Some("0"), Some("yes")] {
            let why = privileged_problem(true, env, None).unwrap_or_default();
            assert!(why.contains("EGRET_PRIVILEGED_TESTS is not set to 1"), "{why}");
        }
        let tool = privileged_problem(true, Some("1"), Some("nft")).unwrap_or_default();
        assert!(tool.contains("`nft` is not installed"), "{tool}");
    }
}
