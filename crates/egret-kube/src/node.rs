//! What an agent writes on its own Node: facts only the node knows, as annotations.

use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

/// The field manager of the agents' writes.
pub const AGENT_MANAGER: &str = "egret-agent";

/// Sets annotation `key` of Node `node` to `value` by server-side apply (field manager
/// [`AGENT_MANAGER`], forced: the annotation is the agent's alone), leaving every other field
/// to its owner.
pub async fn annotate(client: &Client, node: &str, key: &str, value: &str) -> Result<(), kube::Error> {
    let patch = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node, "annotations": {key: value}},
    });
    Api::<Node>::all(client.clone())
        .patch(node, &PatchParams::apply(AGENT_MANAGER).force(), &Patch::Apply(&patch))
        .await?;
    Ok(())
}
