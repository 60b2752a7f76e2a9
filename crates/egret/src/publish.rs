//! What an agent publishes on its own Node: facts only the node knows, which every agent and
//! the controller need to plan alike. Today: the addresses of the interfaces Egresses take egress
//! IPs from (`gatewayNodes[].interface`), in the `egret.dev/interfaces` annotation.

use crate::objects::Objects;
use egret_core::model::{INTERFACES_ANNOTATION, format_interfaces};
use egret_store::Store;
use std::collections::BTreeMap;
use std::net::IpAddr;
use tracing::info;

/// Where the agent's Node lives.
pub enum Publisher {
    /// The local store: the Node's file, rewritten under the store's lock.
    Store(Store),
    /// The API server: server-side apply of the annotation alone.
    Kube(kube::Client, tokio::runtime::Handle),
}

impl Publisher {
    fn annotate(&self, node: &str, key: &str, value: &str) -> anyhow::Result<()> {
        match self {
            Publisher::Store(s) => {
                s.annotate_node(node, key, value)?;
            }
            Publisher::Kube(client, rt) => rt.block_on(egret_kube::node::annotate(client, node, key, value))?,
        }
        Ok(())
    }
}

/// The annotation value to write when what the node has (`local`: the named interfaces that
/// exist, with their addresses) differs from what its Node says (`published`); `None` when
/// they agree.
fn to_publish(local: &BTreeMap<String, Vec<IpAddr>>, published: &BTreeMap<String, Vec<IpAddr>>) -> Option<String> {
    (local != published).then(|| format_interfaces(local))
}

/// Publishes the addresses of the interfaces that valid Egresses name, when they differ from
/// what the Node says (nothing is read or written while no Egress names one and the Node
/// lists none). The next change of the objects, or the periodic check, sees an address change.
pub fn interfaces(objects: &mut Objects, node: &str, publisher: &Publisher) -> anyhow::Result<()> {
    // Before every kind's first listing, "no Egress names an interface" may only mean that
    // the Egresses (or their pools) are not listed yet: publishing then would clear the Node.
    if !objects.index.is_synced() || !objects.loaded_clean {
        return Ok(());
    }
    let named = objects.index.named_interfaces();
    let published = objects.index.nodes().find(|n| n.name == node).map(|n| n.interfaces.clone()).unwrap_or_default();
    if named.is_empty() && published.is_empty() {
        return Ok(());
    }
    let local = egret_datapath::interface_addresses(&named)?;
    if let Some(value) = to_publish(&local, &published) {
        publisher.annotate(node, INTERFACES_ANNOTATION, &value)?;
        info!(interfaces = %value, "published the addresses of the interfaces Egresses name");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(entries: &[(&str, &[&str])]) -> BTreeMap<String, Vec<IpAddr>> {
        entries.iter().map(|(n, ips)| (n.to_string(), ips.iter().map(|i| i.parse().unwrap()).collect())).collect()
    }

    #[test]
    fn publishes_only_what_differs_and_an_empty_map_clears() {
        let have = m(&[("eth1", &["198.18.0.14"])]);
        assert_eq!(to_publish(&have, &have), None);
        assert_eq!(to_publish(&have, &m(&[])).as_deref(), Some(r#"{"eth1":["198.18.0.14"]}"#));
        // An address changed, or the order (the first is the egress IP).
        let two = m(&[("eth1", &["198.18.0.14", "198.18.0.15"])]);
        let swapped = m(&[("eth1", &["198.18.0.15", "198.18.0.14"])]);
        assert!(to_publish(&two, &swapped).is_some());
        // No longer named (or gone): the Node's list is emptied, not left stale.
        assert_eq!(to_publish(&m(&[]), &have).as_deref(), Some("{}"));
    }
}
