//! What a running lab is made of, kept in `/run/egret/labs/NAME/lab.json` so that every lab
//! command (and `down` after a crash) can find it.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Root of every lab's directory.
pub const LABS_DIR: &str = "/run/egret/labs";

/// The namespace prefix of lab `name`.
pub fn prefix(name: &str) -> String {
    format!("egret-lab-{name}")
}

/// The directory of lab `name`.
pub fn dir(name: &str) -> PathBuf {
    Path::new(LABS_DIR).join(name)
}

/// A node of the lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabNode {
    /// `node-N`.
    pub name: String,
    /// N.
    pub index: usize,
    /// Underlay address.
    pub ip: Ipv4Addr,
    /// Pod CIDR.
    pub pod_cidr: ipnet::Ipv4Net,
    /// Its namespace.
    pub netns: String,
    /// The router's port towards it.
    pub router_port: String,
}

/// A pod of the lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabPod {
    /// Its namespace (network).
    pub netns: String,
    /// Its node.
    pub node: String,
    /// Its address.
    pub ip: Ipv4Addr,
}

/// The whole lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    /// Lab name.
    pub name: String,
    /// Namespace prefix.
    pub prefix: String,
    /// Router namespace.
    pub router: String,
    /// Outside hosts' namespace.
    pub outside: String,
    /// Nodes by name.
    pub nodes: BTreeMap<String, LabNode>,
    /// Pods by `namespace/name`.
    pub pods: BTreeMap<String, LabPod>,
    /// Counter for node-side veth names.
    pub next_veth: u32,
    /// Process id of the controller (with the API server double: replica `controller-0`).
    pub controller_pid: Option<u32>,
    /// Whether objects are served by the test double of the API server (`up --api-server`).
    #[serde(default)]
    pub api: bool,
    /// Process id of the test double of the API server.
    #[serde(default)]
    pub api_pid: Option<u32>,
    /// Process id of the second controller replica (`controller-1`, with the double only).
    #[serde(default)]
    pub standby_pid: Option<u32>,
    /// Process id of each node's agent.
    pub agents: BTreeMap<String, u32>,
    /// Process id of the whoami server.
    pub whoami_pid: Option<u32>,
    /// Process id of the lab's DNS server.
    #[serde(default)]
    pub dns_pid: Option<u32>,
    /// The lab's Prometheus (`up --monitoring`).
    #[serde(default)]
    pub prometheus_pid: Option<u32>,
    /// Nodes taken down by `kill-node`.
    pub killed: BTreeSet<String>,
    /// On-link routes added to the router for egress IPs outside the node network.
    pub router_routes: BTreeSet<String>,
    /// The CNI plugin plumbing pods (`up --cni`); `None`: the stand-in.
    #[serde(default)]
    pub cni: Option<egret_netns::cni::Plugin>,
}

impl LabState {
    /// The lab's directory.
    /// The CNI network of node `node` (with `up --cni`).
    pub fn cni_net(&self, node: &LabNode) -> Option<egret_netns::cni::CniNet> {
        Some(egret_netns::cni::CniNet { plugin: self.cni?, node: node.index, data_dir: self.cni_dir() })
    }

    /// Where `host-local` keeps the lab's pod address allocations.
    pub fn cni_dir(&self) -> PathBuf {
        self.dir().join("cni")
    }

    pub fn dir(&self) -> PathBuf {
        dir(&self.name)
    }

    /// The lab's store.
    pub fn store(&self) -> PathBuf {
        self.dir().join("store")
    }

    /// The log file of a component.
    pub fn log(&self, what: &str) -> PathBuf {
        self.dir().join("logs").join(format!("{what}.log"))
    }

    /// Reads lab `name`'s state.
    pub fn load(name: &str) -> anyhow::Result<LabState> {
        let path = dir(name).join("lab.json");
        let text = std::fs::read(&path).with_context(|| format!("lab {name:?} is not up (no {})", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("reading {}", path.display()))
    }

    /// Writes the state atomically.
    pub fn save(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(self.dir().join("logs"))?;
        let json = serde_json::to_vec_pretty(self)?;
        egret_store::write_atomic(&self.dir().join("lab.json"), &json)?;
        Ok(())
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> anyhow::Result<&LabNode> {
        self.nodes.get(name).with_context(|| {
            format!(
                "no node {name:?} in lab {:?} (nodes: {})",
                self.name,
                self.nodes.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }

    /// The pod called `ns/name`.
    pub fn pod(&self, key: &str) -> anyhow::Result<&LabPod> {
        self.pods.get(key).with_context(|| {
            format!(
                "no pod {key:?} in lab {:?} (pods: {})",
                self.name,
                self.pods.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }
}
