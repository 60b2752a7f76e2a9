//! `ClusterEgressPolicy` and `EgressPolicy`: ordered allow/deny rules for traffic leaving the
//! cluster, decided per pod.
//!
//! Actions, protocols and addresses stay strings, as elsewhere in the API: validation turns a
//! bad value into an error naming its field (`spec.rules[2].ports[0].endPort`).

use super::AppliedTo;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Egress rules for the platform team: applies to pods of any namespace, evaluated before every
/// namespace's `EgressPolicy` objects.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "egret.dev",
    version = "v1alpha1",
    kind = "ClusterEgressPolicy",
    plural = "clusteregresspolicies",
    shortname = "cep",
    derive = "PartialEq",
    printcolumn = r#"{"name":"PRIORITY","type":"integer","jsonPath":".spec.priority"}"#,
    printcolumn = r#"{"name":"DEFAULT","type":"string","jsonPath":".spec.defaultAction"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct ClusterEgressPolicySpec {
    /// 0..1000; lower is evaluated first, ties by name.
    #[serde(default)]
    pub priority: i64,
    /// The pods this policy applies to (the same selector as an Egress's).
    #[serde(default)]
    pub applied_to: AppliedTo,
    /// Evaluated in order; the first rule that matches a new connection decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<EgressRule>,
    /// `Allow` or `Deny`: what happens to a selected pod's connection no rule matched. Absent:
    /// evaluation goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_action: Option<String>,
    /// `Reject` (default: a TCP reset, or ICMP administratively prohibited, so applications fail
    /// at once) or `Drop` (silently: the client sees a timeout) for connections this policy
    /// denies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_response: Option<String>,
}

/// Egress rules for a namespace's own pods, evaluated after the ClusterEgressPolicies (and after
/// a cluster rule's `Pass`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "egret.dev",
    version = "v1alpha1",
    kind = "EgressPolicy",
    plural = "egresspolicies",
    shortname = "ep",
    namespaced,
    derive = "PartialEq",
    printcolumn = r#"{"name":"DEFAULT","type":"string","jsonPath":".spec.defaultAction"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct EgressPolicySpec {
    /// The pods of this policy's namespace it applies to (`podSelector` only; absent: all).
    #[serde(default)]
    pub applied_to: AppliedTo,
    /// Evaluated in order; the first rule that matches a new connection decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<EgressRule>,
    /// `Allow` or `Deny` for a selected pod's connection no rule matched. Absent: evaluation
    /// goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_action: Option<String>,
    /// `Reject` (default: a TCP reset, or ICMP administratively prohibited, so applications fail
    /// at once) or `Drop` (silently: the client sees a timeout) for connections this policy
    /// denies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_response: Option<String>,
}

/// One rule: what it matches and what it decides.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    /// A DNS-1123 label, unique in the policy; names the rule in logs, metrics and traces.
    pub name: String,
    /// `Allow`, `Deny` or `Pass` (stop evaluating ClusterEgressPolicies, go on to the
    /// namespace's EgressPolicies).
    pub action: String,
    /// Destinations matched (absent: every destination outside the cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<EgressPeer>,
    /// Protocols and ports matched (absent or empty: every protocol and port).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<EgressPort>,
    /// Write an audit record for every new connection this rule decides.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub log: bool,
}

/// Destinations of a rule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct EgressPeer {
    /// IPv4 or IPv6 CIDRs (a bare address is a /32 or /128).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cidrs: Vec<String>,
    /// Parts of `cidrs` the rule does not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
    /// Domain names (Allow rules only, instead of `cidrs`): the addresses the pod's DNS answers
    /// for these names hold, while their TTL lasts. `*` matches within one label,
    /// a leading `**.` one or more labels; international names in punycode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fqdns: Vec<String>,
}

/// A protocol, with a port or port range for TCP, UDP and SCTP.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct EgressPort {
    /// `TCP` (default), `UDP`, `SCTP` or `ICMP` (ICMP and ICMPv6; takes no port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// A destination port (absent: every port of the protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// With `port`: the last port of the range (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i64>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn scopes_and_names() {
        let c = ClusterEgressPolicy::crd();
        assert_eq!(c.spec.scope, "Cluster");
        assert_eq!(c.spec.names.short_names, Some(vec!["cep".to_string()]));
        let n = EgressPolicy::crd();
        assert_eq!(n.spec.scope, "Namespaced");
        assert_eq!(n.spec.names.plural, "egresspolicies");
    }

    #[test]
    fn the_issue_example_parses() {
        let y = r#"
priority: 100
appliedTo: {namespaceSelector: {matchLabels: {team: a}}, podSelector: {matchLabels: {app: web}}}
rules:
- name: github
  action: Allow
  to: {cidrs: [203.0.113.0/24], except: [203.0.113.128/25]}
  ports: [{protocol: TCP, port: 443}, {protocol: TCP, port: 8000, endPort: 8099}]
  log: true
defaultAction: Deny
"#;
        let spec: ClusterEgressPolicySpec = serde_yaml_ng::from_str(y).unwrap();
        assert_eq!(spec.priority, 100);
        assert_eq!(spec.rules[0].ports[1].end_port, Some(8099));
        assert!(spec.rules[0].log);
        let e =
            serde_yaml_ng::from_str::<EgressRule>("name: a\naction: Allow\nto: {cidr: [1.2.3.4/32]}\n").unwrap_err();
        assert!(e.to_string().contains("cidr"), "{e}");
    }
}
