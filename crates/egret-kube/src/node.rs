//! What an agent writes on its own Node: facts only the node knows, as annotations.

use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

/// The field manager of the agents' writes.
pub const AGENT_MANAGER: &str = "egret-agent";

/// Sets annotation `key` of Node `node` to `value` by a JSON merge patch of that annotation
/// alone (field manager [`AGENT_MANAGER`]), leaving every other field as it is. A merge patch,
/// not an apply: it never creates a Node that does not exist.
pub async fn annotate(client: &Client, node: &str, key: &str, value: &str) -> Result<(), kube::Error> {
    let patch = serde_json::json!({"metadata": {"annotations": {key: value}}});
    let params = PatchParams { field_manager: Some(AGENT_MANAGER.into()), ..PatchParams::default() };
    Api::<Node>::all(client.clone()).patch(node, &params, &Patch::Merge(&patch)).await?;
    Ok(())
}
