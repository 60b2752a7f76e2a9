//! What the daemons serve and wait for: `/healthz`, `/readyz` and `/metrics` over HTTP, and the
//! signals that stop them.

use anyhow::Context;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// What `/readyz` answers.
#[derive(Default)]
pub(crate) struct Health {
    /// Ready or not.
    pub ready: bool,
    /// Why not (or, when ready, what it is doing).
    pub error: Option<String>,
}

/// Serves `/healthz`, `/readyz` (from `health`) and `/metrics` (from `metrics`) on `addr`.
pub(crate) async fn serve_http(
    addr: SocketAddr,
    health: Arc<Mutex<Health>>,
    metrics: Arc<dyn Fn() -> String + Send + Sync>,
) -> anyhow::Result<()> {
    use axum::http::StatusCode;
    let ready = move || {
        let health = health.clone();
        async move {
            match health.lock() {
                Ok(h) if h.ready => (StatusCode::OK, "ready\n".to_string()),
                Ok(h) => {
                    (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", h.error.clone().unwrap_or_default()))
                }
                Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "poisoned\n".to_string()),
            }
        }
    };
    let scrape = move || {
        let metrics = metrics.clone();
        async move { metrics() }
    };
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route("/readyz", axum::routing::get(ready))
        .route("/metrics", axum::routing::get(scrape));
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    axum::serve(listener, app).await?;
    Ok(())
}

pub(crate) async fn wait_for_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
