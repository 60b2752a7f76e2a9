//! Leader election on a `coordination.k8s.io/v1` Lease, with fencing.
//!
//! The algorithm is client-go's: `GET` the Lease; if another identity holds it and its record
//! changed less than `leaseDurationSeconds` ago *on this replica's clock*, wait; otherwise `PUT`
//! it back with this identity, guarded by the resourceVersion that was read, so of two replicas
//! racing only one wins (the other gets `409 Conflict`). A missing Lease is created (`POST`).
//!
//! **Fencing.** [`Leadership::is_leader`] is true only until `renew_deadline` after the start of
//! the last successful acquire or renew, measured on a monotonic clock. A replica that cannot
//! renew (API unreachable, conflict, task gone) stops being leader by itself, before
//! `lease_duration` (longer than `renew_deadline`) lets another replica take over; a replica
//! that sees another holder or loses a race stops at once. Writers check `is_leader()` right
//! before each write (it is two atomic loads).
//!
//! kube-lease-manager 0.13 builds on kube 5, but it reports leadership only when its loop
//! changes state: a holder that can no longer reach the API server keeps reporting `true`
//! until a later call succeeds, which is the fencing this module needs, so the loop is here.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{info, warn};

/// Lease timing and identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Namespace of the Lease (the controller's own).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long others wait after the last change they saw before taking over.
    pub lease_duration: Duration,
    /// How long this replica stays leader after the start of its last successful renew.
    /// Must be shorter than `lease_duration`.
    pub renew_deadline: Duration,
    /// Time between attempts (renewals while leader).
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, identity: impl Into<String>) -> LeaseConfig {
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Errors of one election round.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The configuration cannot fence (`renew_deadline` must be shorter than `lease_duration`).
    #[error("renew deadline {renew:?} must be shorter than the lease duration {lease:?}")]
    Timing {
        /// The renew deadline.
        renew: Duration,
        /// The lease duration.
        lease: Duration,
    },
    /// The API server refused or could not be reached.
    #[error("lease {name}")]
    Api {
        /// The Lease.
        name: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
}

/// Whether this replica leads, shared by the election loop and every writer.
#[derive(Debug)]
struct Fence {
    base: Instant,
    /// Milliseconds after `base` until which this replica leads; 0 when it does not.
    until_ms: AtomicU64,
    changes: watch::Sender<bool>,
}

impl Fence {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lead_until(&self, until: Instant) {
        let ms = u64::try_from(until.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX).max(1);
        self.until_ms.store(ms, Ordering::SeqCst);
        self.changes.send_if_modified(|v| !std::mem::replace(v, true));
    }

    fn step_down(&self) {
        self.until_ms.store(0, Ordering::SeqCst);
        self.changes.send_if_modified(|v| std::mem::replace(v, false));
    }

    fn leads(&self) -> bool {
        let until = self.until_ms.load(Ordering::SeqCst);
        until != 0 && self.now_ms() < until
    }
}

/// A cheap handle on this replica's leadership.
#[derive(Debug, Clone)]
pub struct Leadership {
    fence: Arc<Fence>,
}

impl Leadership {
    fn new() -> Leadership {
        let (changes, _) = watch::channel(false);
        Leadership { fence: Arc::new(Fence { base: Instant::now(), until_ms: AtomicU64::new(0), changes }) }
    }

    /// Whether this replica may write now.
    pub fn is_leader(&self) -> bool {
        self.fence.leads()
    }

    /// Wakes on acquiring or losing the lease (losing by deadline is seen by
    /// [`Leadership::is_leader`] first: the loop publishes it on its next round).
    pub fn changes(&self) -> watch::Receiver<bool> {
        self.fence.changes.subscribe()
    }
}

/// Clears leadership when the election loop ends in any way (return, panic, abort).
struct StepDownOnDrop(Arc<Fence>);

impl Drop for StepDownOnDrop {
    fn drop(&mut self) {
        self.0.step_down();
    }
}

/// What this replica last saw of the Lease, and when (on its own clock).
#[derive(Debug, Clone, PartialEq)]
struct Observed {
    holder: Option<String>,
    renew: Option<MicroTime>,
    transitions: Option<i32>,
    at: Instant,
}

/// The election loop of one replica.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    fence: Arc<Fence>,
    observed: Option<Observed>,
    reporter: Option<crate::status::Reporter>,
}

impl LeaderElector {
    /// An elector and the handle writers check.
    pub fn new(client: Client, config: LeaseConfig) -> Result<(LeaderElector, Leadership), LeaseError> {
        if config.renew_deadline >= config.lease_duration {
            return Err(LeaseError::Timing { renew: config.renew_deadline, lease: config.lease_duration });
        }
        let leadership = Leadership::new();
        let api = Api::namespaced(client, &config.namespace);
        Ok((LeaderElector { api, config, fence: leadership.fence.clone(), observed: None, reporter: None }, leadership))
    }

    /// Publishes a `LeaderElected` Event on the Lease whenever this replica takes it over.
    pub fn with_reporter(mut self, reporter: crate::status::Reporter) -> LeaderElector {
        self.reporter = Some(reporter);
        self
    }

    async fn announce(&self, previous: Option<&str>) {
        let Some(r) = &self.reporter else { return };
        let regarding = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("coordination.k8s.io/v1".into()),
            kind: Some("Lease".into()),
            name: Some(self.config.name.clone()),
            namespace: Some(self.config.namespace.clone()),
            ..Default::default()
        };
        let note = match previous {
            Some(p) => format!("{} took over from {p}", self.config.identity),
            None => format!("{} became leader", self.config.identity),
        };
        r.publish(&regarding, &crate::status::Notice { warning: false, reason: "LeaderElected", note }).await;
    }

    fn api_err(&self, source: kube::Error) -> LeaseError {
        LeaseError::Api { name: format!("{}/{}", self.config.namespace, self.config.name), source }
    }

    fn spec(&self, now: &MicroTime, acquire: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX)),
            acquire_time: Some(acquire),
            renew_time: Some(now.clone()),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Notes the Lease record; the clock for others' expiry restarts whenever it changes.
    fn observe(&mut self, spec: &LeaseSpec) -> Instant {
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let same = self.observed.as_ref().is_some_and(|o| {
            o.holder == holder && o.renew == spec.renew_time && o.transitions == spec.lease_transitions
        });
        if !same {
            self.observed = Some(Observed {
                holder,
                renew: spec.renew_time.clone(),
                transitions: spec.lease_transitions,
                at: Instant::now(),
            });
        }
        self.observed.as_ref().map_or_else(Instant::now, |o| o.at)
    }

    /// One round: acquire or renew. Returns whether this replica leads afterwards. On an
    /// error, leadership lapses by itself at the deadline of the last successful round.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaseError> {
        let start = Instant::now();
        let now = MicroTime(Timestamp::now());
        let current = self.api.get_opt(&self.config.name).await.map_err(|e| self.api_err(e))?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(&now, now.clone(), 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created.spec.unwrap_or_default());
                    self.fence.lead_until(start + self.config.renew_deadline);
                    info!(identity = %self.config.identity, "acquired the lease (created it)");
                    self.announce(None).await;
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    self.fence.step_down();
                    Ok(false)
                }
                Err(e) => Err(self.api_err(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let seen_at = self.observe(&spec);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.config.identity.as_str());
        let their_duration = Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0));
        if holder.is_some() && !mine && seen_at.elapsed() < their_duration {
            self.fence.step_down();
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(if mine {
            self.spec(&now, spec.acquire_time.clone().unwrap_or_else(|| now.clone()), transitions)
        } else {
            self.spec(&now, now.clone(), transitions.saturating_add(1))
        });
        // PUT carries the resourceVersion read above: a concurrent writer makes this a 409.
        match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
            Ok(updated) => {
                self.observe(&updated.spec.unwrap_or_default());
                self.fence.lead_until(start + self.config.renew_deadline);
                if !mine {
                    info!(identity = %self.config.identity, previous = ?holder, "acquired the lease");
                    self.announce(holder.as_deref()).await;
                }
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                self.fence.step_down();
                Ok(false)
            }
            Err(e) => Err(self.api_err(e)),
        }
    }

    /// Gives the lease up (if held) so another replica takes over without waiting.
    pub async fn release(&mut self) -> Result<(), LeaseError> {
        self.fence.step_down();
        let Some(mut lease) = self.api.get_opt(&self.config.name).await.map_err(|e| self.api_err(e))? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api.replace(&self.config.name, &PostParams::default(), &lease).await.map_err(|e| self.api_err(e))?;
        Ok(())
    }

    /// Runs rounds every `retry_period` until the task is dropped or aborted; leadership ends
    /// with it. Round errors are logged (leadership lapses at its deadline meanwhile).
    pub async fn run(mut self) {
        let _guard = StepDownOnDrop(self.fence.clone());
        loop {
            self.round().await;
        }
    }

    /// Runs rounds like [`LeaderElector::run`] until `shutdown` completes, then gives the lease
    /// up, so that on a clean shutdown (a rolling update) another replica takes over at its
    /// next round instead of waiting out the lease.
    pub async fn run_until(mut self, shutdown: impl std::future::Future<Output = ()>) {
        let _guard = StepDownOnDrop(self.fence.clone());
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = self.round() => {}
            }
        }
        if let Err(e) = self.release().await {
            warn!(identity = %self.config.identity, "releasing the lease: {e}");
        } else {
            info!(identity = %self.config.identity, "released the lease");
        }
    }

    /// One election round and the wait before the next.
    async fn round(&mut self) {
        if let Err(e) = self.try_acquire_or_renew().await {
            warn!(identity = %self.config.identity, "leader election: {e}");
        }
        if !self.fence.leads() {
            self.fence.step_down();
        }
        tokio::time::sleep(self.config.retry_period).await;
    }
}

/// Starts leader election as a task. Leadership ends when the task ends; await the handle to
/// exit the process if it ever does (it only ends by panic or abort).
pub fn spawn(client: Client, config: LeaseConfig) -> Result<(Leadership, tokio::task::JoinHandle<()>), LeaseError> {
    let (elector, leadership) = LeaderElector::new(client, config)?;
    Ok((leadership, tokio::spawn(elector.run())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testserver::TestServer;
    use serde_json::json;

    fn config(identity: &str) -> LeaseConfig {
        LeaseConfig::new("egret-system", "egret-controller", identity)
    }

    #[tokio::test]
    async fn one_leader_and_the_other_waits() {
        let server = TestServer::start().await.unwrap();
        let (mut a, la) = LeaderElector::new(server.client().unwrap(), config("a")).unwrap();
        let (mut b, lb) = LeaderElector::new(server.client().unwrap(), config("b")).unwrap();
        assert!(!la.is_leader());
        assert!(a.try_acquire_or_renew().await.unwrap());
        assert!(la.is_leader());
        assert!(!b.try_acquire_or_renew().await.unwrap());
        assert!(!lb.is_leader());
        assert!(a.try_acquire_or_renew().await.unwrap(), "renewal");
        let lease = server.get("coordination.k8s.io/v1", "Lease", Some("egret-system"), "egret-controller").unwrap();
        assert_eq!(lease["spec"]["holderIdentity"], "a");
        assert_eq!(lease["spec"]["leaseTransitions"], 0);
        // Calls: GET, POST (create), then GET + PUT per round.
        let methods: Vec<String> = server.requests().iter().map(|r| r.method.clone()).collect();
        assert_eq!(methods, ["GET", "POST", "GET", "GET", "PUT"]);

        a.release().await.unwrap();
        assert!(!la.is_leader());
        assert!(b.try_acquire_or_renew().await.unwrap(), "a released lease is taken at once");
        let lease = server.get("coordination.k8s.io/v1", "Lease", Some("egret-system"), "egret-controller").unwrap();
        assert_eq!(
            (lease["spec"]["holderIdentity"].as_str(), lease["spec"]["leaseTransitions"].as_i64()),
            (Some("b"), Some(1))
        );
    }

    #[tokio::test]
    async fn a_takeover_is_an_event_on_the_lease() {
        let server = TestServer::start().await.unwrap();
        let client = server.client().unwrap();
        let short = |id: &str| LeaseConfig {
            lease_duration: Duration::from_secs(1),
            renew_deadline: Duration::from_millis(500),
            ..config(id)
        };
        let (mut a, _) = LeaderElector::new(client.clone(), short("a")).unwrap();
        let (b, _) = LeaderElector::new(client.clone(), short("b")).unwrap();
        let mut b = b.with_reporter(crate::status::Reporter::new(client, Some("b".into())));
        assert!(a.try_acquire_or_renew().await.unwrap());
        assert!(!b.try_acquire_or_renew().await.unwrap());
        // a stops renewing; once b has seen the record unchanged for a whole lease, it takes over.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(b.try_acquire_or_renew().await.unwrap());
        let events = server.list("events.k8s.io/v1", "Event");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["reason"], "LeaderElected");
        assert_eq!(events[0]["note"], "b took over from a");
        assert_eq!(events[0]["metadata"]["namespace"], "egret-system");
    }

    #[tokio::test]
    async fn a_leader_that_sees_another_holder_steps_down_at_once() {
        let server = TestServer::start().await.unwrap();
        let (mut a, la) = LeaderElector::new(server.client().unwrap(), config("a")).unwrap();
        assert!(a.try_acquire_or_renew().await.unwrap());
        // Another replica took the lease (e.g. after a's renewals failed for too long).
        let mut lease =
            server.get("coordination.k8s.io/v1", "Lease", Some("egret-system"), "egret-controller").unwrap();
        lease["spec"]["holderIdentity"] = json!("b");
        lease["spec"]["renewTime"] = json!(MicroTime(Timestamp::now()));
        server.put(lease).unwrap();
        assert!(la.is_leader(), "not yet known");
        assert!(!a.try_acquire_or_renew().await.unwrap());
        assert!(!la.is_leader());
    }

    #[tokio::test]
    async fn a_stale_resource_version_is_a_conflict() {
        let server = TestServer::start().await.unwrap();
        let (mut a, _) = LeaderElector::new(server.client().unwrap(), config("a")).unwrap();
        assert!(a.try_acquire_or_renew().await.unwrap());
        let api: Api<Lease> = Api::namespaced(server.client().unwrap(), "egret-system");
        let old = api.get("egret-controller").await.unwrap();
        assert!(a.try_acquire_or_renew().await.unwrap());
        match api.replace("egret-controller", &PostParams::default(), &old).await {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 409),
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn leadership_lapses_when_renewals_fail() {
        let server = TestServer::start().await.unwrap();
        let mut cfg = config("a");
        cfg.renew_deadline = Duration::from_millis(200);
        let (mut a, la) = LeaderElector::new(server.client().unwrap(), cfg).unwrap();
        assert!(a.try_acquire_or_renew().await.unwrap());
        drop(server);
        assert!(a.try_acquire_or_renew().await.is_err(), "the API server is gone");
        // No successful renewal since: once the deadline has passed, this replica is no leader.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!la.is_leader());
    }

    #[tokio::test]
    async fn leadership_ends_with_the_task() {
        let server = TestServer::start().await.unwrap();
        let (leadership, task) = spawn(server.client().unwrap(), config("a")).unwrap();
        let mut changes = leadership.changes();
        tokio::time::timeout(Duration::from_secs(60), changes.wait_for(|l| *l)).await.unwrap().unwrap();
        assert!(leadership.is_leader());
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert!(!leadership.is_leader());
        assert!(!*changes.borrow_and_update());
    }

    #[tokio::test]
    async fn a_clean_shutdown_releases_the_lease() {
        let server = TestServer::start().await.unwrap();
        let (elector, leadership) = LeaderElector::new(server.client().unwrap(), config("a")).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(elector.run_until(async {
            let _ = stopped.await;
        }));
        let mut changes = leadership.changes();
        tokio::time::timeout(Duration::from_secs(60), changes.wait_for(|l| *l)).await.unwrap().unwrap();
        stop.send(()).unwrap();
        task.await.unwrap();
        assert!(!leadership.is_leader());
        let lease = server.get("coordination.k8s.io/v1", "Lease", Some("egret-system"), "egret-controller").unwrap();
        assert!(lease["spec"]["holderIdentity"].is_null(), "{lease:#}");
        let (mut b, _) = LeaderElector::new(server.client().unwrap(), config("b")).unwrap();
        assert!(b.try_acquire_or_renew().await.unwrap(), "taken at once, without waiting out the lease");
    }

    #[tokio::test]
    async fn renew_deadline_must_be_shorter_than_the_lease() {
        let server = TestServer::start().await.unwrap();
        let mut cfg = config("a");
        cfg.renew_deadline = cfg.lease_duration;
        assert!(matches!(LeaderElector::new(server.client().unwrap(), cfg), Err(LeaseError::Timing { .. })));
    }
}
