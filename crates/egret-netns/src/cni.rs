//! Pods plumbed by real CNI plugins (Debian's `containernetworking-plugins`), invoked through the
//! CNI protocol the way a kubelet's runtime does: the plugin binary runs in the node's network
//! namespace with `CNI_COMMAND`, `CNI_NETNS`, `CNI_IFNAME`, ... in its environment and the network
//! configuration on standard input. `host-local` IPAM hands out the lab's pod addresses (asked for
//! by `args.cni.ips`) from the node's pod CIDRs of both families, and `ipMasq: true` makes the
//! plugin install its own masquerade (iptables), as on a real cluster.

use crate::topology::{pod_cidr, pod_cidr6, pod_ip6};
use crate::{Error, Netns};
use serde_json::{Value, json};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Where Debian installs the plugins.
pub const CNI_PATH: &str = "/usr/lib/cni";

/// The main plugin that plumbs pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plugin {
    /// `bridge`: every pod's veth on the node's `cni0` bridge, which holds the gateway address.
    Bridge,
    /// `ptp`: a veth pair per pod, routed point to point.
    Ptp,
}

impl Plugin {
    /// The plugin's binary name.
    pub fn name(self) -> &'static str {
        match self {
            Plugin::Bridge => "bridge",
            Plugin::Ptp => "ptp",
        }
    }
}

impl std::str::FromStr for Plugin {
    type Err = String;
    fn from_str(s: &str) -> Result<Plugin, String> {
        match s {
            "bridge" => Ok(Plugin::Bridge),
            "ptp" => Ok(Plugin::Ptp),
            other => Err(format!("unknown CNI plugin {other:?}: bridge or ptp")),
        }
    }
}

/// One node's CNI network: the plugin, the node (1-based) whose pod CIDRs it hands out, and the
/// directory `host-local` keeps its allocations in.
#[derive(Debug, Clone)]
pub struct CniNet {
    /// The plugin.
    pub plugin: Plugin,
    /// The node's index.
    pub node: usize,
    /// `host-local`'s data directory (one per lab, networks apart by name).
    pub data_dir: PathBuf,
}

impl CniNet {
    /// The network configuration for the pod with address `ip` (pure).
    pub fn config(&self, ip: Ipv4Addr) -> Value {
        let mut c = json!({
            "cniVersion": "1.0.0",
            "name": format!("egret-lab-n{}", self.node),
            "type": self.plugin.name(),
            "ipMasq": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": pod_cidr(self.node).to_string()}], [{"subnet": pod_cidr6(self.node).to_string()}]],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                "dataDir": self.data_dir.to_string_lossy(),
            },
            "args": {"cni": {"ips": [ip.to_string(), pod_ip6(ip).to_string()]}},
        });
        if self.plugin == Plugin::Bridge {
            c["bridge"] = json!("cni0");
            c["isGateway"] = json!(true);
        }
        c
    }

    fn invoke(&self, command: &str, node: &Netns, pod: &Netns, id: &str, ip: Ipv4Addr) -> Result<String, Error> {
        let netns = Path::new("/run/netns").join(pod.name());
        let env = [
            format!("CNI_COMMAND={command}"),
            format!("CNI_CONTAINERID={id}"),
            format!("CNI_NETNS={}", netns.display()),
            "CNI_IFNAME=eth0".to_string(),
            format!("CNI_PATH={CNI_PATH}"),
        ];
        let plugin = format!("{CNI_PATH}/{}", self.plugin.name());
        let mut args: Vec<&str> = env.iter().map(String::as_str).collect();
        args.push(&plugin);
        node.exec_stdin("env", &args, &self.config(ip).to_string())
    }

    /// `ADD`: plumbs `pod` (container id `id`) with address `ip` and its IPv6 twin; checks that
    /// the plugin gave exactly those.
    pub fn add(&self, node: &Netns, pod: &Netns, id: &str, ip: Ipv4Addr) -> Result<(), Error> {
        // No duplicate address detection in the pod: its addresses are usable at once.
        pod.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        pod.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        let out = self.invoke("ADD", node, pod, id, ip)?;
        let result: Value = serde_json::from_str(&out)
            .map_err(|e| Error::Protocol(format!("{} ADD printed no CNI result ({e}): {out}", self.plugin.name())))?;
        let got: Vec<&str> =
            result["ips"].as_array().into_iter().flatten().filter_map(|i| i["address"].as_str()).collect();
        for want in [ip.to_string(), pod_ip6(ip).to_string()] {
            if !got.iter().any(|g| g.split('/').next() == Some(want.as_str())) {
                return Err(Error::Protocol(format!("{} gave {got:?}, not {want}", self.plugin.name())));
            }
        }
        Ok(())
    }

    /// `DEL`: unplumbs the pod and releases its addresses.
    pub fn del(&self, node: &Netns, pod: &Netns, id: &str, ip: Ipv4Addr) -> Result<(), Error> {
        self.invoke("DEL", node, pod, id, ip).map(|_| ())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_asks_host_local_for_the_pods_addresses_in_both_families() {
        let net = CniNet { plugin: Plugin::Bridge, node: 2, data_dir: "/run/x".into() };
        let c = net.config(Ipv4Addr::new(10, 244, 2, 10));
        assert_eq!(c["type"], "bridge");
        assert_eq!(c["bridge"], "cni0");
        assert_eq!(c["ipMasq"], true);
        assert_eq!(c["ipam"]["ranges"][0][0]["subnet"], "10.244.2.0/24");
        assert_eq!(c["ipam"]["ranges"][1][0]["subnet"], "fd00:10:244:2::/64");
        assert_eq!(c["args"]["cni"]["ips"], json!(["10.244.2.10", "fd00:10:244:2::10"]));
        let ptp = CniNet { plugin: Plugin::Ptp, ..net }.config(Ipv4Addr::new(10, 244, 2, 10));
        assert_eq!(ptp["type"], "ptp");
        assert!(ptp.get("bridge").is_none());
        assert_eq!("ptp".parse::<Plugin>(), Ok(Plugin::Ptp));
        assert!("flannel".parse::<Plugin>().is_err());
    }
}
