//! Building a `kube::Client` for `--kubeconfig`.

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use std::path::Path;

/// Errors building a client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kubeconfig file could not be read or parsed.
    #[error("reading kubeconfig {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// The kubeconfig has no usable context, cluster or user.
    #[error("using kubeconfig {path}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// Neither `$KUBECONFIG`, `~/.kube/config` nor the in-cluster service account is usable.
    #[error("no kubeconfig given and none found (in-cluster or default locations)")]
    Infer(#[source] kube::config::InferConfigError),
    /// The configuration could not make an HTTP client (TLS setup).
    #[error("building the kubernetes client")]
    Client(#[source] kube::Error),
}

/// A client from `kubeconfig` (its current context) when given, otherwise inferred: in-cluster
/// service account, then `$KUBECONFIG` / `~/.kube/config`.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, ClientError> {
    let config = match kubeconfig {
        Some(path) => {
            let shown = path.display().to_string();
            let kc = Kubeconfig::read_from(path).map_err(|source| ClientError::Read { path: shown.clone(), source })?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| ClientError::Kubeconfig { path: shown, source })?
        }
        None => Config::infer().await.map_err(ClientError::Infer)?,
    };
    Client::try_from(config).map_err(ClientError::Client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testserver::TestServer;
    use k8s_openapi::api::core::v1::Namespace;
    use kube::Api;

    #[tokio::test]
    async fn a_client_from_a_kubeconfig_file() {
        let server = TestServer::start().await.unwrap();
        server.put(serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}})).unwrap();
        let path = std::env::temp_dir().join(format!("egret-kube-{}-{}.yaml", std::process::id(), server.url().len()));
        std::fs::write(&path, server.kubeconfig()).unwrap();
        let c = client(Some(&path)).await;
        std::fs::remove_file(&path).unwrap();
        let names: Vec<String> = Api::<Namespace>::all(c.unwrap())
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();
        assert_eq!(names, ["prod"]);
    }

    #[tokio::test]
    async fn a_missing_kubeconfig_names_the_file() {
        let Err(e) = client(Some(Path::new("/nonexistent/kubeconfig"))).await else { panic!("no such file") };
        assert!(matches!(e, ClientError::Read { .. }));
        assert!(e.to_string().contains("/nonexistent/kubeconfig"));
    }
}
