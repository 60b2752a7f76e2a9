//! The controller's writes on a cluster: Egress and ExternalIPPool status by server-side apply
//! on the `status` subresource (field manager [`FIELD_MANAGER`]), and Kubernetes Events for
//! allocation failures, failovers and conflicts.
//!
//! The statuses themselves come from `egret_core::status` (the same computation the local
//! store writes); [`antrea_vocabulary`] turns their condition reasons into Antrea's
//! (`IPAllocated` True/`Allocated`, False/`AllocationError`; `IPAssigned` True/`Assigned`,
//! False/`AssignmentError`), keeping Egret's precise reason at the front of the message.
//!
//! Every write first checks [`Leadership::is_leader`]: a replica that lost the lease writes
//! nothing more. Applies are not forced: if another field manager owns the status (a second
//! controller), the API server answers `409 Conflict`, which is reported as an Event and an
//! error rather than overwritten.

use crate::lease::Leadership;
use crate::lenient::Lenient;
use egret_api::v1alpha1::{
    Egress, EgressCondition, EgressStatus, ExternalIPPool, ExternalIPPoolStatus, IP_ALLOCATED, IP_ASSIGNED,
};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter as KubeReporter};
use kube::{Api, Client, Resource};
use serde_json::json;
use tracing::warn;

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "egret-controller";

/// Errors of a status write.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// This replica does not hold the lease (any more).
    #[error("not the leader: status of {kind} {name} not written")]
    NotLeader {
        /// Kind.
        kind: &'static str,
        /// Name.
        name: String,
    },
    /// Another field manager owns the status.
    #[error("status of {kind} {name} is owned by another field manager: {message}")]
    Conflict {
        /// Kind.
        kind: &'static str,
        /// Name.
        name: String,
        /// The API server's message.
        message: String,
    },
    /// Any other API error.
    #[error("writing status of {kind} {name}")]
    Api {
        /// Kind.
        kind: &'static str,
        /// Name.
        name: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
}

/// Rewrites condition reasons into Antrea's vocabulary, one condition per type (the last one
/// of a type wins), `IPAllocated` before `IPAssigned`; conditions of other types (Egret's own)
/// follow unchanged.
pub fn antrea_vocabulary(status: &EgressStatus) -> EgressStatus {
    let mut out: Vec<EgressCondition> = Vec::new();
    for c in &status.conditions {
        let (ok, err) = match c.type_.as_str() {
            IP_ALLOCATED => ("Allocated", "AllocationError"),
            IP_ASSIGNED => ("Assigned", "AssignmentError"),
            _ => {
                out.retain(|o| o.type_ != c.type_);
                out.push(c.clone());
                continue;
            }
        };
        let mut c = c.clone();
        match c.status.as_str() {
            "True" => c.reason = ok.to_string(),
            "False" if c.reason != err => {
                c.message = match (c.reason.is_empty(), c.message.is_empty()) {
                    (true, _) => c.message,
                    (false, true) => c.reason.clone(),
                    (false, false) => format!("{}: {}", c.reason, c.message),
                };
                c.reason = err.to_string();
            }
            _ => {}
        }
        out.retain(|o| o.type_ != c.type_);
        out.push(c);
    }
    out.sort_by_key(|c| match c.type_.as_str() {
        IP_ALLOCATED => 0,
        IP_ASSIGNED => 1,
        _ => 2,
    });
    EgressStatus { conditions: out, ..status.clone() }
}

/// An Event to publish about an Egress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Warning or not.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// What happened.
    pub note: String,
}

fn condition<'a>(s: Option<&'a EgressStatus>, type_: &str) -> Option<&'a EgressCondition> {
    s.and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
}

/// The Events a status change deserves: an allocation that starts failing, and a failover
/// (the IP moving from one node to another). Unchanged failures make no new Event.
pub fn notices(prev: Option<&EgressStatus>, next: &EgressStatus) -> Vec<Notice> {
    let mut out = Vec::new();
    let failed = |s: Option<&EgressStatus>| condition(s, IP_ALLOCATED).is_some_and(|c| c.status == "False");
    if failed(Some(next)) && !failed(prev) {
        let note = condition(Some(next), IP_ALLOCATED).map(|c| c.message.clone()).unwrap_or_default();
        out.push(Notice { warning: true, reason: "AllocationError", note });
    }
    if let (Some(from), Some(to)) = (prev.and_then(|p| p.egress_node.as_deref()), next.egress_node.as_deref())
        && from != to
    {
        let ip = next.egress_ip.as_deref().unwrap_or("");
        out.push(Notice {
            warning: false,
            reason: "Failover",
            note: format!("{ip} moved from node {from} to node {to}"),
        });
    }
    out
}

/// Publishes Events as `egret-controller` (kube-rs' `Recorder`: `POST` to `events.k8s.io/v1`,
/// `PATCH` when the same event repeats).
#[derive(Clone)]
pub struct Reporter {
    recorder: Recorder,
}

impl Reporter {
    /// A reporter; `instance` is this replica (its pod name).
    pub fn new(client: Client, instance: Option<String>) -> Reporter {
        Reporter { recorder: Recorder::new(client, KubeReporter { controller: FIELD_MANAGER.into(), instance }) }
    }

    /// Publishes one notice about an object; failures are logged, never fatal.
    pub async fn publish(&self, regarding: &ObjectReference, n: &Notice) {
        let ev = Event {
            type_: if n.warning { EventType::Warning } else { EventType::Normal },
            reason: n.reason.into(),
            note: Some(n.note.clone()),
            action: "WriteStatus".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, regarding).await {
            let object = regarding.name.as_deref().unwrap_or("");
            match regarding.kind.as_deref() {
                Some("Egress") => warn!(egress = %object, reason = n.reason, "publishing event {}: {e}", n.reason),
                kind => warn!(kind = ?kind, %object, reason = n.reason, "publishing event {}: {e}", n.reason),
            }
        }
    }
}

fn reference<K: Resource<DynamicType = ()>>(name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: Some(name.to_string()),
        ..ObjectReference::default()
    }
}

/// Writes statuses while this replica leads.
#[derive(Clone)]
pub struct StatusWriter {
    // Lenient: the API server answers a status write with the whole object, which must not
    // fail to parse when its spec does (an Egress that does not parse is marked by a status).
    egresses: Api<Lenient<Egress>>,
    pools: Api<Lenient<ExternalIPPool>>,
    leadership: Leadership,
    reporter: Option<Reporter>,
}

impl StatusWriter {
    /// A writer fenced by `leadership`, publishing Events through `reporter` when given.
    pub fn new(client: Client, leadership: Leadership, reporter: Option<Reporter>) -> StatusWriter {
        StatusWriter { egresses: Api::all(client.clone()), pools: Api::all(client), leadership, reporter }
    }

    async fn apply<K>(&self, api: &Api<K>, name: &str, body: serde_json::Value) -> Result<(), StatusError>
    where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let kind: &'static str = if K::kind(&()) == "Egress" { "Egress" } else { "ExternalIPPool" };
        if !self.leadership.is_leader() {
            return Err(StatusError::NotLeader { kind, name: name.to_string() });
        }
        let pp = PatchParams::apply(FIELD_MANAGER);
        match api.patch_status(name, &pp, &Patch::Apply(&body)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                if let Some(r) = &self.reporter {
                    let n = Notice { warning: true, reason: "StatusConflict", note: s.message.clone() };
                    r.publish(&reference::<K>(name), &n).await;
                }
                Err(StatusError::Conflict { kind, name: name.to_string(), message: s.message })
            }
            Err(source) => Err(StatusError::Api { kind, name: name.to_string(), source }),
        }
    }

    /// Writes one Egress status (in Antrea's vocabulary) and publishes the Events the change
    /// from `prev` deserves.
    pub async fn egress(
        &self,
        name: &str,
        prev: Option<&EgressStatus>,
        next: &EgressStatus,
    ) -> Result<(), StatusError> {
        let status = antrea_vocabulary(next);
        let body = json!({
            "apiVersion": Egress::api_version(&()),
            "kind": "Egress",
            "metadata": {"name": name},
            "status": status,
        });
        self.apply(&self.egresses, name, body).await?;
        if let Some(r) = &self.reporter {
            for n in notices(prev, &status) {
                r.publish(&reference::<Egress>(name), &n).await;
            }
        }
        Ok(())
    }

    /// Writes one pool status.
    pub async fn pool(&self, name: &str, status: &ExternalIPPoolStatus) -> Result<(), StatusError> {
        let body = json!({
            "apiVersion": ExternalIPPool::api_version(&()),
            "kind": "ExternalIPPool",
            "metadata": {"name": name},
            "status": status,
        });
        self.apply(&self.pools, name, body).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{LeaderElector, LeaseConfig};
    use crate::testserver::TestServer;
    use egret_api::v1alpha1::IPPoolUsage;

    fn cond(type_: &str, status: &str, reason: &str, message: &str) -> EgressCondition {
        EgressCondition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: Some("t".into()),
        }
    }

    #[test]
    fn vocabulary_is_antreas() {
        let s = EgressStatus {
            egress_ip: Some("10.10.0.11".into()),
            egress_node: None,
            gateways: Vec::new(),
            conditions: vec![
                cond(IP_ASSIGNED, "False", "Pending", "waiting for node node-5 to host the IP"),
                cond(IP_ALLOCATED, "True", "", "allocated from p"),
                cond(IP_ALLOCATED, "False", "PoolExhausted", "pool p has no free address"),
            ],
        };
        let out = antrea_vocabulary(&s);
        assert_eq!(
            out.conditions,
            vec![
                cond(IP_ALLOCATED, "False", "AllocationError", "PoolExhausted: pool p has no free address"),
                cond(IP_ASSIGNED, "False", "AssignmentError", "Pending: waiting for node node-5 to host the IP"),
            ]
        );
        let ok = EgressStatus { conditions: vec![cond(IP_ASSIGNED, "True", "", "hosted")], ..s };
        assert_eq!(antrea_vocabulary(&ok).conditions, vec![cond(IP_ASSIGNED, "True", "Assigned", "hosted")]);
        assert_eq!(antrea_vocabulary(&antrea_vocabulary(&out)), antrea_vocabulary(&out), "idempotent");
        // Egret's own condition types pass through, after Antrea's.
        let valid = cond("Valid", "False", "Unparsable", "spec.x: bad");
        let mixed = EgressStatus {
            conditions: vec![valid.clone(), cond(IP_ASSIGNED, "True", "", "hosted")],
            ..EgressStatus::default()
        };
        assert_eq!(
            antrea_vocabulary(&mixed).conditions,
            vec![cond(IP_ASSIGNED, "True", "Assigned", "hosted"), valid],
            "other types are kept"
        );
    }

    #[test]
    fn events_for_new_failures_and_failovers_only() {
        let failing = EgressStatus {
            conditions: vec![cond(IP_ALLOCATED, "False", "AllocationError", "pool p is exhausted")],
            ..EgressStatus::default()
        };
        assert_eq!(notices(None, &failing)[0].reason, "AllocationError");
        assert!(notices(Some(&failing), &failing).is_empty(), "no repeat");
        let on = |n: &str| EgressStatus {
            egress_ip: Some("10.10.0.11".into()),
            egress_node: Some(n.into()),
            gateways: Vec::new(),
            conditions: vec![cond(IP_ALLOCATED, "True", "Allocated", "")],
        };
        let n = notices(Some(&on("node-5")), &on("node-6"));
        assert_eq!(n.len(), 1);
        assert_eq!((n[0].reason, n[0].note.as_str()), ("Failover", "10.10.0.11 moved from node node-5 to node node-6"));
        assert!(notices(Some(&on("node-5")), &on("node-5")).is_empty());
    }

    async fn leader(server: &TestServer) -> Leadership {
        let (mut e, l) =
            LeaderElector::new(server.client().unwrap(), LeaseConfig::new("egret-system", "egret", "me")).unwrap();
        assert!(e.try_acquire_or_renew().await.unwrap());
        l
    }

    const EGRESS: &str = "apiVersion: egret.dev/v1alpha1\nkind: Egress\nmetadata: {name: e1}\nspec:\n  appliedTo: {podSelector: {}}\n  externalIPPool: p\n";

    #[tokio::test]
    async fn status_by_server_side_apply_on_the_subresource() {
        let server = TestServer::start().await.unwrap();
        server.put_yaml(EGRESS).unwrap();
        server
            .put_yaml(
                "apiVersion: egret.dev/v1alpha1\nkind: ExternalIPPool\nmetadata: {name: p}\nspec: {ipRanges: []}\n",
            )
            .unwrap();
        let client = server.client().unwrap();
        let w = StatusWriter::new(client.clone(), leader(&server).await, Some(Reporter::new(client, None)));
        let first = EgressStatus {
            egress_ip: Some("10.10.0.11".into()),
            egress_node: Some("node-5".into()),
            gateways: Vec::new(),
            conditions: vec![cond(IP_ALLOCATED, "True", "", "ok"), cond(IP_ASSIGNED, "True", "", "hosted")],
        };
        w.egress("e1", None, &first).await.unwrap();
        let stored = server.get("egret.dev/v1alpha1", "Egress", None, "e1").unwrap();
        assert_eq!(stored["status"]["egressIP"], "10.10.0.11");
        assert_eq!(stored["status"]["conditions"][0]["reason"], "Allocated");
        assert_eq!(stored["spec"]["externalIPPool"], "p", "spec untouched");
        w.pool("p", &ExternalIPPoolStatus { usage: IPPoolUsage { total: 254, used: 1 } }).await.unwrap();
        let pool = server.get("egret.dev/v1alpha1", "ExternalIPPool", None, "p").unwrap();
        assert_eq!(pool["status"]["usage"]["used"], 1);

        // The gateway died; the IP moved: a Failover event.
        let second = EgressStatus { egress_node: Some("node-6".into()), ..first.clone() };
        w.egress("e1", Some(&first), &second).await.unwrap();
        let events = server.list("events.k8s.io/v1", "Event");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["reason"], "Failover");
        assert_eq!(events[0]["regarding"]["kind"], "Egress");
        assert_eq!(events[0]["reportingController"], FIELD_MANAGER);

        let reqs = server.requests();
        let patches: Vec<_> = reqs.iter().filter(|r| r.method == "PATCH").collect();
        assert_eq!(patches.len(), 3);
        for p in &patches {
            assert!(p.path.ends_with("/status"), "{}", p.path);
            assert_eq!(p.content_type.as_deref(), Some("application/apply-patch+yaml"));
            assert_eq!(p.query.get("fieldManager").map(String::as_str), Some(FIELD_MANAGER));
            assert_eq!(p.query.get("force"), None, "not forced");
        }
        let posts: Vec<_> = reqs.iter().filter(|r| r.method == "POST").map(|r| r.path.as_str()).collect();
        assert_eq!(
            posts,
            [
                "/apis/coordination.k8s.io/v1/namespaces/egret-system/leases",
                "/apis/events.k8s.io/v1/namespaces/default/events"
            ]
        );
    }

    #[tokio::test]
    async fn a_replica_without_the_lease_writes_nothing() {
        let server = TestServer::start().await.unwrap();
        server.put_yaml(EGRESS).unwrap();
        let (_e, l) =
            LeaderElector::new(server.client().unwrap(), LeaseConfig::new("egret-system", "egret", "me")).unwrap();
        let w = StatusWriter::new(server.client().unwrap(), l, None);
        let r = w.egress("e1", None, &EgressStatus::default()).await;
        assert!(matches!(r, Err(StatusError::NotLeader { .. })), "{r:?}");
        assert!(server.requests().is_empty());
    }

    #[tokio::test]
    async fn a_conflict_is_reported_not_overwritten() {
        let server = TestServer::start().await.unwrap();
        server.put_yaml(EGRESS).unwrap();
        server.claim_fields("/apis/egret.dev/v1alpha1/egresses/e1", "another-controller");
        let client = server.client().unwrap();
        let w =
            StatusWriter::new(client.clone(), leader(&server).await, Some(Reporter::new(client, Some("pod-a".into()))));
        let s = EgressStatus { egress_ip: Some("10.10.0.11".into()), ..EgressStatus::default() };
        match w.egress("e1", None, &s).await {
            Err(StatusError::Conflict { message, .. }) => assert!(message.contains("another-controller")),
            other => panic!("{other:?}"),
        }
        let stored = server.get("egret.dev/v1alpha1", "Egress", None, "e1").unwrap();
        assert!(stored.get("status").is_none(), "nothing written");
        let events = server.list("events.k8s.io/v1", "Event");
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0]["reason"].as_str(), events[0]["type"].as_str()),
            (Some("StatusConflict"), Some("Warning"))
        );
        assert_eq!(events[0]["reportingInstance"], "pod-a");
        // The same conflict again: kube-rs' recorder patches the event into a series.
        assert!(matches!(w.egress("e1", None, &s).await, Err(StatusError::Conflict { .. })));
        let events = server.list("events.k8s.io/v1", "Event");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["series"]["count"], 2);
        assert!(server.requests().iter().any(|r| r.method == "PATCH" && r.path.contains("/events/")));
    }

    #[tokio::test]
    async fn allocation_failures_become_warning_events() {
        let server = TestServer::start().await.unwrap();
        server.put_yaml(EGRESS).unwrap();
        let client = server.client().unwrap();
        let w = StatusWriter::new(client.clone(), leader(&server).await, Some(Reporter::new(client, None)));
        let s = EgressStatus {
            conditions: vec![cond(IP_ALLOCATED, "False", "PoolExhausted", "pool p has no free address")],
            ..EgressStatus::default()
        };
        w.egress("e1", None, &s).await.unwrap();
        let events = server.list("events.k8s.io/v1", "Event");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["reason"], "AllocationError");
        assert_eq!(events[0]["note"], "PoolExhausted: pool p has no free address");
        let stored = server.get("egret.dev/v1alpha1", "Egress", None, "e1").unwrap();
        assert_eq!(stored["status"]["conditions"][0]["reason"], "AllocationError");
    }
}
