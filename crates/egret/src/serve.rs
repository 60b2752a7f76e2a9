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
        // Off the runtime's thread: encoding may read kernel counters (an `nft` run), and gossip
        // shares this runtime.
        async move { tokio::task::spawn_blocking(move || metrics()).await.unwrap_or_default() }
    };
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route("/readyz", axum::routing::get(ready))
        .route("/metrics", axum::routing::get(scrape));
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// SIGTERM and SIGINT, registered once before the loop that waits for them: a signal that
/// arrives while the loop is busy stays pending until the loop next waits (a signal stream
/// created for each wait misses it, and the process would then ignore its stop signal).
pub(crate) struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Registers the handlers (inside a Tokio runtime). A signal that cannot be registered is
    /// logged and never fires.
    pub(crate) fn new() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        let reg = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("cannot handle {name}: {e}");
                None
            }
        };
        Signals { term: reg(SignalKind::terminate(), "SIGTERM"), int: reg(SignalKind::interrupt(), "SIGINT") }
    }

    /// Waits for the next SIGTERM or SIGINT (including one that arrived since the last wait).
    pub(crate) async fn recv(&mut self) {
        async fn one(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = one(&mut self.term) => {}
            _ = one(&mut self.int) => {}
        }
    }
}
