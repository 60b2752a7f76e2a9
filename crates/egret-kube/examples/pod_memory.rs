//! Resident memory of N pods kept as full k8s-openapi `Pod`s, as slim pods, or as the model
//! pods the index keeps after parsing slim ones.
//!
//! ```sh
//! cargo run -p egret-kube --example pod_memory -- full 100000
//! cargo run -p egret-kube --example pod_memory -- slim 100000
//! cargo run -p egret-kube --example pod_memory -- model 100000
//! ```
//!
//! Each pod is a realistic Deployment pod as the API server returns it (managed fields,
//! projected service-account volume, probes, five conditions, one container status; about
//! 5 KB of JSON), with its own name, namespace, node, IPs and labels. The figure is the growth
//! of `VmRSS` (from `/proc/self/status`) while the parsed pods are kept in a `Vec`, divided by
//! N. Run each mode in its own process so one does not reuse the other's freed memory.

use egret_core::model;
use egret_kube::slim::SlimPod;
use k8s_openapi::api::core::v1::Pod;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn pod_json(i: usize) -> String {
    let ns = i % 2000;
    let deploy = i % 50;
    let node = i % 5000;
    let (a, b) = ((i >> 8) & 255, i & 255);
    let hex = format!("{i:064x}");
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"web-{deploy}-7d9f8c6b5-{i:05}","generateName":"web-{deploy}-7d9f8c6b5-","namespace":"ns-{ns}","uid":"0b7e7f1c-3b1e-4c55-9a3e-{i:012}","resourceVersion":"{i}","creationTimestamp":"2026-11-21T10:00:00Z","labels":{{"app":"web-{deploy}","pod-template-hash":"7d9f8c6b5","tier":"frontend","version":"v{deploy}"}},"annotations":{{"kubectl.kubernetes.io/restartedAt":"2026-11-20T09:00:00Z"}},"ownerReferences":[{{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-{deploy}-7d9f8c6b5","uid":"5f0c3a4e-8d2b-4f7a-9c1d-{deploy:012}","controller":true,"blockOwnerDeletion":true}}],"managedFields":[{{"manager":"kube-controller-manager","operation":"Update","apiVersion":"v1","time":"2026-11-21T10:00:00Z","fieldsType":"FieldsV1","fieldsV1":{{"f:metadata":{{"f:generateName":{{}},"f:labels":{{".":{{}},"f:app":{{}},"f:pod-template-hash":{{}},"f:tier":{{}},"f:version":{{}}}},"f:ownerReferences":{{".":{{}},"k:{{\"uid\":\"5f0c3a4e\"}}":{{}}}}}},"f:spec":{{"f:containers":{{"k:{{\"name\":\"web\"}}":{{".":{{}},"f:image":{{}},"f:imagePullPolicy":{{}},"f:livenessProbe":{{}},"f:name":{{}},"f:ports":{{}},"f:readinessProbe":{{}},"f:resources":{{}},"f:terminationMessagePath":{{}},"f:terminationMessagePolicy":{{}}}}}},"f:dnsPolicy":{{}},"f:enableServiceLinks":{{}},"f:restartPolicy":{{}},"f:schedulerName":{{}},"f:securityContext":{{}},"f:terminationGracePeriodSeconds":{{}}}}}}}},{{"manager":"kubelet","operation":"Update","apiVersion":"v1","time":"2026-11-21T10:00:05Z","fieldsType":"FieldsV1","fieldsV1":{{"f:status":{{"f:conditions":{{"k:{{\"type\":\"Ready\"}}":{{".":{{}},"f:lastProbeTime":{{}},"f:lastTransitionTime":{{}},"f:status":{{}},"f:type":{{}}}}}},"f:containerStatuses":{{}},"f:hostIP":{{}},"f:hostIPs":{{}},"f:phase":{{}},"f:podIP":{{}},"f:podIPs":{{".":{{}},"k:{{\"ip\":\"10.{a}.{b}.1\"}}":{{}}}},"f:startTime":{{}}}}}},"subresource":"status"}}]}},"spec":{{"volumes":[{{"name":"kube-api-access-x{b}","projected":{{"sources":[{{"serviceAccountToken":{{"expirationSeconds":3607,"path":"token"}}}},{{"configMap":{{"name":"kube-root-ca.crt","items":[{{"key":"ca.crt","path":"ca.crt"}}]}}}},{{"downwardAPI":{{"items":[{{"path":"namespace","fieldRef":{{"apiVersion":"v1","fieldPath":"metadata.namespace"}}}}]}}}}],"defaultMode":420}}}}],"containers":[{{"name":"web","image":"registry.example/web:1.{deploy}.3","ports":[{{"containerPort":8080,"protocol":"TCP"}}],"env":[{{"name":"LOG_LEVEL","value":"info"}}],"resources":{{"limits":{{"cpu":"500m","memory":"256Mi"}},"requests":{{"cpu":"100m","memory":"128Mi"}}}},"volumeMounts":[{{"name":"kube-api-access-x{b}","readOnly":true,"mountPath":"/var/run/secrets/kubernetes.io/serviceaccount"}}],"livenessProbe":{{"httpGet":{{"path":"/healthz","port":8080,"scheme":"HTTP"}},"timeoutSeconds":1,"periodSeconds":10,"successThreshold":1,"failureThreshold":3}},"readinessProbe":{{"httpGet":{{"path":"/ready","port":8080,"scheme":"HTTP"}},"timeoutSeconds":1,"periodSeconds":5,"successThreshold":1,"failureThreshold":3}},"terminationMessagePath":"/dev/termination-log","terminationMessagePolicy":"File","imagePullPolicy":"IfNotPresent"}}],"restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","serviceAccountName":"default","serviceAccount":"default","nodeName":"node-{node}","securityContext":{{}},"schedulerName":"default-scheduler","tolerations":[{{"key":"node.kubernetes.io/not-ready","operator":"Exists","effect":"NoExecute","tolerationSeconds":300}},{{"key":"node.kubernetes.io/unreachable","operator":"Exists","effect":"NoExecute","tolerationSeconds":300}}],"priority":0,"enableServiceLinks":true,"preemptionPolicy":"PreemptLowerPriority"}},"status":{{"phase":"Running","conditions":[{{"type":"PodReadyToStartContainers","status":"True","lastProbeTime":null,"lastTransitionTime":"2026-11-21T10:00:03Z"}},{{"type":"Initialized","status":"True","lastProbeTime":null,"lastTransitionTime":"2026-11-21T10:00:01Z"}},{{"type":"Ready","status":"True","lastProbeTime":null,"lastTransitionTime":"2026-11-21T10:00:05Z"}},{{"type":"ContainersReady","status":"True","lastProbeTime":null,"lastTransitionTime":"2026-11-21T10:00:05Z"}},{{"type":"PodScheduled","status":"True","lastProbeTime":null,"lastTransitionTime":"2026-11-21T10:00:00Z"}}],"hostIP":"192.168.{}.{}","hostIPs":[{{"ip":"192.168.{}.{}"}}],"podIP":"10.{a}.{b}.1","podIPs":[{{"ip":"10.{a}.{b}.1"}}],"startTime":"2026-11-21T10:00:01Z","containerStatuses":[{{"name":"web","state":{{"running":{{"startedAt":"2026-11-21T10:00:04Z"}}}},"lastState":{{}},"ready":true,"restartCount":0,"image":"registry.example/web:1.{deploy}.3","imageID":"registry.example/web@sha256:{hex}","containerID":"containerd://{hex}","started":true}}],"qosClass":"Burstable"}}}}"#,
        node / 256,
        node % 256,
        node / 256,
        node % 256,
    )
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "slim".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let json_bytes = pod_json(n / 2).len();
    let mut full: Vec<Pod> = Vec::new();
    let mut slim: Vec<SlimPod> = Vec::new();
    let mut models: Vec<model::Pod> = Vec::new();
    let before = rss_kib();
    for i in 0..n {
        let text = pod_json(i);
        match mode.as_str() {
            "full" => full.push(serde_json::from_str(&text).unwrap_or_default()),
            "slim" => slim.push(serde_json::from_str(&text).unwrap_or_default()),
            _ => models.push(model::Pod::from(serde_json::from_str::<SlimPod>(&text).unwrap_or_default())),
        }
    }
    let after = rss_kib();
    let kept = full.len() + slim.len() + models.len();
    let grown = after.saturating_sub(before) * 1024;
    println!(
        "mode={mode} pods={kept} json={json_bytes} B/pod rss_growth={:.1} MiB bytes/pod={}",
        grown as f64 / (1024.0 * 1024.0),
        grown / kept.max(1) as u64
    );
}
