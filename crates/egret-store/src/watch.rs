//! Change notification for the store directory (inotify through `notify`).

use notify::{EventKind, RecursiveMode, Watcher};
use std::path::Path;

/// Keeps the directory watched until dropped.
pub struct StoreWatcher {
    _inner: notify::RecommendedWatcher,
}

/// A watch that could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {dir}: {source}")]
pub struct WatchError {
    /// The directory.
    pub dir: String,
    /// The cause.
    pub source: notify::Error,
}

/// Whether a changed path is an object file (not a lock, a temporary file or an agent report).
fn is_object(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.') && matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

/// Calls `on_change` whenever an object file in `dir` is created, replaced or removed. Atomic
/// writes show up as a rename onto the object's name, so each write is seen exactly when the
/// new content is complete.
pub fn watch(dir: &Path, on_change: impl Fn() + Send + 'static) -> Result<StoreWatcher, WatchError> {
    let err = |source| WatchError { dir: dir.display().to_string(), source };
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && !matches!(ev.kind, EventKind::Access(_))
            && ev.paths.iter().any(|p| is_object(p))
        {
            on_change();
        }
    })
    .map_err(err)?;
    w.watch(dir, RecursiveMode::NonRecursive).map_err(err)?;
    Ok(StoreWatcher { _inner: w })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn object_writes_notify_and_reports_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open(dir.path()).unwrap();
        let (tx, rx) = mpsc::channel();
        let _w = watch(dir.path(), move || {
            let _ = tx.send(());
        })
        .unwrap();
        store.write_report("node-1", &1).unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "agent reports are not object changes");
        crate::write_atomic(&dir.path().join("egress_e.yaml"), b"x: 1\n").unwrap();
        assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok());
    }
}
