//! The agent's report in the store (store source), written by a thread of its own.
//!
//! The report's `heartbeat_ms` is how the controller (and agents without gossip) tell a live
//! agent. Written from the agent's loop, a heartbeat waited for the iteration to end: with
//! 1,000 Egresses on a loaded machine one sync can take longer than the liveness timeout, the
//! controller then saw every node dead at once and rewrote every Egress's status, and that
//! change made every agent plan and sync again: a loop that fed itself. Here the heartbeat goes
//! on while the loop works, but only while the loop keeps turning: once it has not published
//! for `stall`, heartbeats stop and the node looks dead, as a wedged agent should.

use egret_store::{AgentReport, Store, now_ms};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::warn;

/// What the heartbeat thread writes, and when the loop last published.
struct Shared {
    report: AgentReport,
    published: Instant,
}

/// Writes the latest report every `period` while the loop is alive.
pub struct Heartbeat {
    shared: Arc<Mutex<Shared>>,
    store: Store,
    node: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Whether a heartbeat is due: the loop published within `stall` (pure).
pub fn alive(published: Instant, now: Instant, stall: Duration) -> bool {
    now.saturating_duration_since(published) < stall
}

fn write(store: &Store, node: &str, shared: &mut Shared) {
    shared.report.heartbeat_ms = now_ms();
    if let Err(e) = store.write_report(node, &shared.report) {
        warn!("writing report: {e}");
    }
}

impl Heartbeat {
    /// Starts the thread; nothing is written before the first [`Heartbeat::publish`].
    pub fn start(store: Store, node: &str, period: Duration, stall: Duration) -> std::io::Result<Heartbeat> {
        let shared = Arc::new(Mutex::new(Shared { report: AgentReport::default(), published: Instant::now() }));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, n, stop2) = (shared.clone(), store.clone(), node.to_string(), stop.clone());
        let thread = std::thread::Builder::new().name("heartbeat".into()).spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                std::thread::sleep(period);
                let mut g = s.lock().unwrap_or_else(|e| e.into_inner());
                // Before the first publish the report is empty: not a heartbeat to write.
                if !g.report.node.is_empty() && alive(g.published, Instant::now(), stall) {
                    write(&st, &n, &mut g);
                }
            }
        })?;
        Ok(Heartbeat { shared, store, node: node.to_string(), stop, thread: Some(thread) })
    }

    /// The loop's latest report; written at once when `now` (the state changed), else by the
    /// thread's next heartbeat. Every call tells the thread the loop is alive.
    pub fn publish(&self, report: &AgentReport, now: bool) {
        let mut g = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        g.report = report.clone();
        g.published = Instant::now();
        if now {
            write(&self.store, &self.node, &mut g);
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_go_on_while_the_loop_publishes_and_stop_when_it_stalls() {
        let t0 = Instant::now();
        let stall = Duration::from_secs(10);
        assert!(alive(t0, t0 + Duration::from_secs(3), stall), "a long sync is not a dead agent");
        assert!(!alive(t0, t0 + Duration::from_secs(10), stall), "a wedged loop is");
    }

    #[test]
    fn the_thread_keeps_the_heartbeat_fresh_between_publishes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let hb = Heartbeat::start(store.clone(), "node-1", Duration::from_millis(20), Duration::from_secs(5)).unwrap();
        let report = AgentReport { node: "node-1".into(), ready: true, ..Default::default() };
        hb.publish(&report, true);
        let first = store.read_reports::<AgentReport>()[0].1.heartbeat_ms;
        std::thread::sleep(Duration::from_millis(200));
        let later = store.read_reports::<AgentReport>()[0].1.clone();
        assert!(later.heartbeat_ms > first, "{} after {first}", later.heartbeat_ms);
        assert!(later.ready && later.node == "node-1");
    }
}
