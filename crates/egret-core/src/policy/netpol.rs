//! The egress part of Kubernetes NetworkPolicies (`networking.k8s.io/v1`) as [`Policy`]
//! models, for agents that enforce them (`--enforce-network-policy`): API objects in, policies,
//! problems and warnings out, like [`super::validate_policies`]. Kubernetes types stay here;
//! evaluation and compilation see plain [`Policy`]s of the NetworkPolicy tier.
//!
//! Kubernetes semantics: a policy applies to egress iff `policyTypes` contains `Egress`, or
//! `policyTypes` is absent or empty and `egress` has at least one rule. It selects pods of its namespace by
//! `podSelector` (absent or empty: all). Every egress rule allows (rules are unioned; isolation
//! is the tier's, see [`super::evaluate`]). Of the peers only `ipBlock` names destinations
//! outside the cluster; `podSelector`/`namespaceSelector` peers name pods, which Egret does
//! not govern, so they add nothing here. A rule without `to` (or with an empty one) matches
//! every destination; without `ports`, every protocol and port.
//!
//! A port given by name cannot be resolved (Egret keeps no container ports): that port entry is
//! left out with a warning, so it allows nothing (a rule whose ports are all named allows
//! nothing). Anything else wrong leaves the whole policy out with a problem naming its field.

use super::{Action, Policy, PolicyId, PortMatch, Protocol, Rule, ValidatedPolicies};
use crate::model::AppliedTo;
use crate::validate::{Sink, check_name, compile as compile_selector};
use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeSet;

/// The kind, as problems name it.
const KIND: &str = "NetworkPolicy";

/// Validates and translates the egress part of every NetworkPolicy; bad ones are reported and
/// left out whole. Policies that do not apply to egress give no [`Policy`].
pub fn validate_network_policies(list: &[NetworkPolicy]) -> ValidatedPolicies {
    let mut out = ValidatedPolicies::default();
    let mut seen = BTreeSet::new();
    for (index, np) in list.iter().enumerate() {
        let namespace = np.metadata.namespace.clone().unwrap_or_default();
        let name = np.metadata.name.clone().unwrap_or_default();
        let full = format!("{namespace}/{name}");
        let mut sink = Sink { kind: KIND, name: &full, index, problems: Vec::new() };
        let mut warn = Sink { kind: KIND, name: &full, index, problems: Vec::new() };
        let mut named = check_name(np.metadata.name.as_ref(), &mut BTreeSet::new(), &mut sink);
        if namespace.is_empty() {
            sink.push("metadata.namespace", "is required: a NetworkPolicy selects pods of its own namespace");
            named = false;
        } else if named && !seen.insert(full.clone()) {
            sink.push("metadata.name", format!("duplicate NetworkPolicy {full:?} (the first definition is kept)"));
            named = false;
        }
        let spec = np.spec.clone().unwrap_or_default();
        let has_rules = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        let egress = applies_to_egress(spec.policy_types.as_deref(), has_rules, &mut sink);
        let pods = match &spec.pod_selector {
            Some(s) => compile_selector(s, "spec.podSelector", &mut sink),
            None => Some(crate::selector::Selector::default()),
        };
        let rules = match &spec.egress {
            Some(list) if egress => egress_rules(list, &mut sink, &mut warn),
            _ => Vec::new(),
        };
        if named && egress && sink.problems.is_empty() {
            out.policies.push(Policy {
                id: PolicyId::NetworkPolicy { namespace: namespace.clone(), name: name.clone() },
                applied_to: AppliedTo { namespaces: None, pods, nodes: None },
                rules,
                default_action: None,
                // Isolation answers like Kubernetes CNIs that enforce it do not promise
                // anything; Egret's default, a reset or ICMP, fails fast.
                silent: false,
            });
            out.warnings.append(&mut warn.problems);
        }
        out.problems.append(&mut sink.problems);
    }
    out.policies.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Whether the policy governs egress, with Kubernetes' defaulting: `policyTypes` absent or empty
/// means Ingress, plus Egress when there is at least one egress rule.
fn applies_to_egress(types: Option<&[String]>, has_egress_rules: bool, sink: &mut Sink) -> bool {
    let types = types.unwrap_or_default();
    if types.is_empty() {
        return has_egress_rules;
    }
    let mut egress = false;
    for (i, t) in types.iter().enumerate() {
        match t.as_str() {
            "Egress" => egress = true,
            "Ingress" => {}
            other => sink.push(
                format!("spec.policyTypes[{i}]"),
                format!("{other:?} is not a policy type; use Ingress or Egress"),
            ),
        }
    }
    egress
}

/// A CIDR as Kubernetes reads it: host bits are dropped (with a warning), a bare address is not
/// a CIDR.
fn block_cidr(s: &str, at: &str, sink: &mut Sink, warn: &mut Sink) -> Option<IpNet> {
    match s.trim().parse::<IpNet>() {
        Ok(n) => {
            if n.trunc() != n {
                warn.push(at, format!("{s:?} has host bits set; read as {} (as Kubernetes does)", n.trunc()));
            }
            Some(n.trunc())
        }
        Err(_) => {
            sink.push(at, format!("{s:?} is not a CIDR (expected an address and a prefix length, e.g. 10.0.0.0/24)"));
            None
        }
    }
}

fn egress_rules(list: &[NetworkPolicyEgressRule], sink: &mut Sink, warn: &mut Sink) -> Vec<Rule> {
    let mut out = Vec::new();
    for (i, r) in list.iter().enumerate() {
        let at = format!("spec.egress[{i}]");
        let peers = r.to.as_deref().unwrap_or_default();
        let mut destinations: Vec<(String, Vec<IpNet>, Vec<IpNet>)> = Vec::new();
        if peers.is_empty() {
            destinations.push((at.clone(), Vec::new(), Vec::new()));
        }
        for (j, peer) in peers.iter().enumerate() {
            let pat = format!("{at}.to[{j}]");
            if let Some((to, except)) = peer_block(peer, &pat, sink, warn) {
                destinations.push((pat, vec![to], except));
            }
        }
        let given = r.ports.as_deref().unwrap_or_default();
        let ports = ports(given, &at, sink, warn);
        // Ports were given and every one was left out (named): the rule allows nothing.
        if !given.is_empty() && ports.is_empty() {
            continue;
        }
        out.extend(destinations.into_iter().map(|(name, to, except)| Rule {
            name,
            action: Action::Allow,
            to,
            except,
            ports: ports.clone(),
            log: false,
            fqdns: Vec::new(),
        }));
    }
    out
}

/// The destinations of a peer outside the cluster: its `ipBlock` (`None` for a selector peer,
/// which names pods only, or a bad one).
fn peer_block(p: &NetworkPolicyPeer, at: &str, sink: &mut Sink, warn: &mut Sink) -> Option<(IpNet, Vec<IpNet>)> {
    for (field, sel) in [("podSelector", &p.pod_selector), ("namespaceSelector", &p.namespace_selector)] {
        if let Some(s) = sel {
            compile_selector(s, &format!("{at}.{field}"), sink);
        }
    }
    let selectors = p.pod_selector.is_some() || p.namespace_selector.is_some();
    let Some(block) = &p.ip_block else {
        if !selectors {
            sink.push(at, "a peer needs ipBlock, podSelector or namespaceSelector");
        }
        return None;
    };
    if selectors {
        sink.push(at, "ipBlock cannot be combined with podSelector or namespaceSelector in one peer");
    }
    let cidr = block_cidr(&block.cidr, &format!("{at}.ipBlock.cidr"), sink, warn)?;
    let mut except = Vec::new();
    for (k, e) in block.except.as_deref().unwrap_or_default().iter().enumerate() {
        let eat = format!("{at}.ipBlock.except[{k}]");
        let Some(n) = block_cidr(e, &eat, sink, warn) else { continue };
        if !cidr.contains(&n) || n.prefix_len() <= cidr.prefix_len() {
            sink.push(eat, format!("{n} is not strictly inside ipBlock.cidr {cidr}"));
            continue;
        }
        except.push(n);
    }
    Some((cidr, except))
}

fn ports(list: &[NetworkPolicyPort], at: &str, sink: &mut Sink, warn: &mut Sink) -> Vec<PortMatch> {
    let mut out = Vec::new();
    for (k, p) in list.iter().enumerate() {
        let pat = format!("{at}.ports[{k}]");
        let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            other => {
                sink.push(format!("{pat}.protocol"), format!("{other:?} is not a protocol; use TCP, UDP or SCTP"));
                continue;
            }
        };
        let range = match (&p.port, p.end_port) {
            (None, None) => None,
            (None, Some(_)) => {
                sink.push(format!("{pat}.endPort"), "needs port: endPort ends the range that port starts");
                continue;
            }
            (Some(IntOrString::String(name)), end) => {
                if end.is_some() {
                    sink.push(format!("{pat}.endPort"), "needs a numeric port, not a named one");
                } else {
                    warn.push(
                        format!("{pat}.port"),
                        format!(
                            "named port {name:?} cannot be resolved (Egret keeps no container ports): this port entry is left out and allows nothing; use a number"
                        ),
                    );
                }
                continue;
            }
            (Some(IntOrString::Int(a)), end) => {
                match super::validate::port_range(i64::from(*a), end.map(i64::from), &pat, sink) {
                    Some(r) => Some(r),
                    None => continue,
                }
            }
        };
        out.push(PortMatch { protocol, ports: range });
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use super::*;
    use crate::selector::Labels;

    fn nps(yaml: &str) -> Vec<NetworkPolicy> {
        serde_yaml_ng::Deserializer::from_str(yaml)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect::<Vec<serde_yaml_ng::Value>>()
            .into_iter()
            .filter(|v| !v.is_null())
            .map(|v| serde_yaml_ng::from_value(v).unwrap())
            .collect()
    }

    /// The Kubernetes documentation's examples
    /// (kubernetes.io/docs/concepts/services-networking/network-policies), in namespace
    /// `default` where they name none.
    const DEFAULT_DENY_EGRESS: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: default-deny-egress\n  namespace: default\nspec:\n  podSelector: {}\n  policyTypes:\n  - Egress\n";
    const ALLOW_ALL_EGRESS: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: allow-all-egress\n  namespace: default\nspec:\n  podSelector: {}\n  egress:\n  - {}\n  policyTypes:\n  - Egress\n";
    const DEFAULT_DENY_INGRESS: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: default-deny-ingress\n  namespace: default\nspec:\n  podSelector: {}\n  policyTypes:\n  - Ingress\n";
    const TEST_NETWORK_POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: test-network-policy
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
  - Ingress
  - Egress
  ingress:
  - from:
    - ipBlock:
        cidr: 172.17.0.0/16
        except:
        - 172.17.1.0/24
    - namespaceSelector:
        matchLabels:
          project: myproject
    - podSelector:
        matchLabels:
          role: frontend
    ports:
    - protocol: TCP
      port: 6379
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
    ports:
    - protocol: TCP
      port: 5978
"#;
    const MULTI_PORT_EGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: multi-port-egress
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
    - Egress
  egress:
    - to:
        - ipBlock:
            cidr: 10.0.0.0/24
      ports:
        - protocol: TCP
          port: 32000
          endPort: 32768
"#;
    /// Seed 001, verbatim.
    const SEED_001: &str = include_str!("../../../../examples/seed-001-network-policy/network-policy.yaml");

    #[derive(Clone, Copy)]
    enum P {
        Tcp,
        Udp,
        Icmp,
    }

    /// The decision for a pod of `ns` with `labels`, under the policies of `yaml`.
    fn decide(
        yaml: &str,
        extra: &[&Policy],
        ns: &str,
        labels: &[(&str, &str)],
        dst: &str,
        p: P,
        port: u16,
    ) -> Decision {
        let v = validate_network_policies(&nps(yaml));
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        let labels: Labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let all: Vec<&Policy> = v.policies.iter().chain(extra.iter().copied()).collect();
        let ordered = applicable(all, ns, &Labels::new(), &labels, &Labels::new());
        let proto = FlowProto::Named(match p {
            P::Tcp => Protocol::Tcp,
            P::Udp => Protocol::Udp,
            P::Icmp => Protocol::Icmp,
        });
        let flow = Flow { dst: dst.parse().unwrap(), proto, port };
        let d = evaluate(&ordered, &flow);
        assert_eq!(compile(&ordered).lookup(&flow), &d, "compiled cells agree");
        d
    }

    use Verdict::{Allow as A, Deny as D};

    /// Policies, pod namespace, pod labels, destination, protocol, port, verdict.
    type Row<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str, P, u16, Verdict);

    /// Each row: policies, pod (namespace and labels), destination, protocol, port, verdict.
    #[test]
    fn truth_table_of_the_kubernetes_documentation_examples() {
        let db: &[(&str, &str)] = &[("role", "db")];
        let web: &[(&str, &str)] = &[("role", "web")];
        let backend: &[(&str, &str)] = &[("app", "backend")];
        let union = format!("{DEFAULT_DENY_EGRESS}---\n{ALLOW_ALL_EGRESS}");
        // Kubernetes' defaulting: `policyTypes` empty is the same as absent (Ingress, and Egress
        // only with at least one egress rule).
        let types_empty =
            TEST_NETWORK_POLICY.replace("  policyTypes:\n  - Ingress\n  - Egress\n", "  policyTypes: []\n");
        assert!(types_empty.contains("policyTypes: []"));
        let no_egress_rules = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: e, namespace: default}\nspec:\n  podSelector: {}\n  egress: []\n";
        #[rustfmt::skip]
        let rows: &[Row] = &[
            // No NetworkPolicy: nothing isolates.
            ("", "default", db, "192.0.2.1", P::Tcp, 80, A),
            // Default deny all egress: every pod of the namespace, every destination.
            (DEFAULT_DENY_EGRESS, "default", db, "192.0.2.1", P::Tcp, 80, D),
            (DEFAULT_DENY_EGRESS, "default", web, "10.0.0.7", P::Udp, 53, D),
            (DEFAULT_DENY_EGRESS, "default", web, "2001:db8::1", P::Icmp, 0, D),
            // ... and no other namespace's.
            (DEFAULT_DENY_EGRESS, "other", db, "192.0.2.1", P::Tcp, 80, A),
            // Allow all egress, alone and unioned with the default deny.
            (ALLOW_ALL_EGRESS, "default", db, "192.0.2.1", P::Tcp, 80, A),
            (ALLOW_ALL_EGRESS, "default", db, "192.0.2.1", P::Icmp, 0, A),
            (&union, "default", db, "192.0.2.1", P::Tcp, 80, A),
            (&types_empty, "default", db, "10.0.0.7", P::Tcp, 5979, D),
            (&types_empty, "default", db, "10.0.0.7", P::Tcp, 5978, A),
            (no_egress_rules, "default", db, "192.0.2.1", P::Tcp, 80, A),
            // Ingress only: egress is not isolated.
            (DEFAULT_DENY_INGRESS, "default", db, "192.0.2.1", P::Tcp, 80, A),
            // test-network-policy: role=db may reach 10.0.0.0/24 on TCP 5978 only.
            (TEST_NETWORK_POLICY, "default", db, "10.0.0.7", P::Tcp, 5978, A),
            (TEST_NETWORK_POLICY, "default", db, "10.0.0.255", P::Tcp, 5978, A),
            (TEST_NETWORK_POLICY, "default", db, "10.0.0.7", P::Tcp, 5979, D),
            (TEST_NETWORK_POLICY, "default", db, "10.0.0.7", P::Udp, 5978, D),
            (TEST_NETWORK_POLICY, "default", db, "10.0.1.7", P::Tcp, 5978, D),
            // Its ingress peers name no egress destination.
            (TEST_NETWORK_POLICY, "default", db, "172.17.0.1", P::Tcp, 6379, D),
            (TEST_NETWORK_POLICY, "default", web, "10.0.1.7", P::Tcp, 5979, A),
            // endPort: TCP 32000-32768 inclusive.
            (MULTI_PORT_EGRESS, "default", db, "10.0.0.7", P::Tcp, 32000, A),
            (MULTI_PORT_EGRESS, "default", db, "10.0.0.7", P::Tcp, 32768, A),
            (MULTI_PORT_EGRESS, "default", db, "10.0.0.7", P::Tcp, 31999, D),
            (MULTI_PORT_EGRESS, "default", db, "10.0.0.7", P::Tcp, 32769, D),
            (MULTI_PORT_EGRESS, "default", db, "10.0.1.7", P::Tcp, 32000, D),
            // Seed 001: backend reaches 203.0.113.0/24 on TCP 443 only; its selector peers
            // (the database, DNS) are in-cluster and allow nothing outside.
            (SEED_001, "production", backend, "203.0.113.5", P::Tcp, 443, A),
            (SEED_001, "production", backend, "203.0.113.254", P::Tcp, 443, A),
            (SEED_001, "production", backend, "203.0.113.5", P::Tcp, 8080, D),
            (SEED_001, "production", backend, "203.0.114.5", P::Tcp, 443, D),
            (SEED_001, "production", backend, "198.51.100.8", P::Tcp, 5432, D),
            (SEED_001, "production", backend, "198.51.100.53", P::Udp, 53, D),
            (SEED_001, "production", &[("app", "frontend")], "198.51.100.8", P::Tcp, 8080, A),
            (SEED_001, "prod", backend, "198.51.100.8", P::Tcp, 8080, A),
        ];
        for (i, (yaml, ns, labels, dst, p, port, want)) in rows.iter().enumerate() {
            let d = decide(yaml, &[], ns, labels, dst, *p, *port);
            assert_eq!(d.verdict, *want, "row {i}: {ns} {labels:?} -> {dst}:{port}: {}", d.by);
        }
    }

    #[test]
    fn decisions_name_the_network_policy_and_its_rule() {
        let d = decide(SEED_001, &[], "production", &[("app", "backend")], "203.0.113.5", P::Tcp, 443);
        assert_eq!(d.by.to_string(), "NetworkPolicy production/egress-control rule spec.egress[2].to[0]");
        let d = decide(SEED_001, &[], "production", &[("app", "backend")], "203.0.113.5", P::Tcp, 80);
        assert_eq!((d.verdict, d.log), (Verdict::Deny, true));
        assert!(matches!(d.by, DecidedBy::Isolation { .. }), "{:?}", d.by);
        assert!(d.by.to_string().starts_with("NetworkPolicy isolation (NetworkPolicy production/egress-control"));
        let d = decide(ALLOW_ALL_EGRESS, &[], "default", &[], "192.0.2.1", P::Tcp, 80);
        assert_eq!(d.by.to_string(), "NetworkPolicy default/allow-all-egress rule spec.egress[0]");
    }

    /// Compiled, seed 001 is one allowed cell under the isolation: the fallback is the tier's.
    #[test]
    fn seed_001_compiles_to_one_cell_under_isolation() {
        let v = validate_network_policies(&nps(SEED_001));
        let c = compile(&[&v.policies[0]]);
        assert!(matches!(c.fallback.by, DecidedBy::Isolation { .. }), "{:?}", c.fallback);
        assert_eq!(c.cells.len(), 1, "{:#?}", c.cells);
        let cell = &c.cells[0];
        assert_eq!(cell.dst, ("203.0.113.0".parse().unwrap(), "203.0.113.255".parse().unwrap()));
        assert_eq!((cell.proto, cell.ports), (ProtoClass::Named(Protocol::Tcp), Some((443, 443))));
        // Beside a cluster default, isolation still comes first.
        let baseline = mk_cluster("baseline", 10, vec![], Some(Verdict::Allow));
        let c = compile(&[&baseline, &v.policies[0]]);
        assert!(matches!(c.fallback.by, DecidedBy::Isolation { .. }), "{:?}", c.fallback);
    }

    /// The tier sits after the rules of Egret's policies and before every defaultAction.
    #[test]
    fn egret_rules_decide_first_and_defaults_come_after_isolation() {
        let backend: &[(&str, &str)] = &[("app", "backend")];
        let deny_8443 = mk_cluster(
            "no-8443",
            10,
            vec![mk_rule("block", Action::Deny, &["203.0.113.0/24"], &[], &[(Protocol::Tcp, Some((443, 443)))])],
            Some(Verdict::Deny),
        );
        // An explicit Deny beats the NetworkPolicy's allow.
        let d = decide(SEED_001, &[&deny_8443], "production", backend, "203.0.113.5", P::Tcp, 443);
        assert_eq!(d.by.to_string(), "ClusterEgressPolicy no-8443 rule block");
        // The cluster's default deny comes after the NetworkPolicy tier: its allow stands.
        let baseline = mk_cluster("baseline", 10, vec![], Some(Verdict::Deny));
        let d = decide(SEED_001, &[&baseline], "production", backend, "203.0.113.5", P::Tcp, 443);
        assert_eq!(d.verdict, Verdict::Allow);
        // An allow-all default does not lift the isolation.
        let open = mk_cluster("open", 10, vec![], Some(Verdict::Allow));
        let d = decide(SEED_001, &[&open], "production", backend, "198.51.100.8", P::Tcp, 80);
        assert!(matches!(d.by, DecidedBy::Isolation { .. }), "{}", d.by);
        // A pod no NetworkPolicy selects goes on to the defaults as before.
        let d = decide(SEED_001, &[&open], "production", &[("app", "web")], "198.51.100.8", P::Tcp, 80);
        assert_eq!(d.by.to_string(), "ClusterEgressPolicy open defaultAction");
        // A namespace's explicit Allow decides before the isolation.
        let ns_allow = mk_namespaced(
            "production",
            "dns",
            vec![mk_rule("dns", Action::Allow, &["198.51.100.53/32"], &[], &[(Protocol::Udp, Some((53, 53)))])],
            None,
        );
        let d = decide(SEED_001, &[&ns_allow], "production", backend, "198.51.100.53", P::Udp, 53);
        assert_eq!(d.by.to_string(), "EgressPolicy production/dns rule dns");
        // A Pass hands over to the namespace tier; the NetworkPolicy tier still follows.
        let pass = mk_cluster("pass", 1, vec![mk_rule("all", Action::Pass, &[], &[], &[])], Some(Verdict::Allow));
        let d = decide(SEED_001, &[&pass], "production", backend, "203.0.113.5", P::Tcp, 443);
        assert_eq!(d.verdict, Verdict::Allow);
        let d = decide(SEED_001, &[&pass], "production", backend, "203.0.113.5", P::Tcp, 80);
        assert!(matches!(d.by, DecidedBy::Isolation { .. }), "{}", d.by);
    }

    #[test]
    fn ip_blocks_with_except_become_one_rule_each() {
        let y = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: blocks, namespace: a}
spec:
  egress:
  - to:
    - ipBlock: {cidr: 172.17.0.0/16, except: [172.17.1.0/24]}
    - namespaceSelector: {}
    - ipBlock: {cidr: 192.0.2.0/24}
    - ipBlock: {cidr: "2001:db8::/32", except: ["2001:db8:1::/48"]}
"#;
        let v = validate_network_policies(&nps(y));
        assert!(v.problems.is_empty() && v.warnings.is_empty(), "{:?} {:?}", v.problems, v.warnings);
        let names: Vec<&str> = v.policies[0].rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["spec.egress[0].to[0]", "spec.egress[0].to[2]", "spec.egress[0].to[3]"]);
        let p = [&v.policies[0]];
        for (dst, want) in [
            ("172.17.0.1", A),
            ("172.17.1.1", D),
            ("192.0.2.9", A),
            ("2001:db8::1", A),
            ("2001:db8:1::1", D),
            ("198.51.100.1", D),
        ] {
            assert_eq!(evaluate(&p, &tcp(dst, 1)).verdict, want, "{dst}");
        }
        // No policyTypes, egress given: an egress policy (Kubernetes' defaulting).
        assert_eq!(v.policies[0].id, PolicyId::NetworkPolicy { namespace: "a".into(), name: "blocks".into() });
    }

    #[test]
    fn named_ports_are_left_out_with_a_warning() {
        let y = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named, namespace: a}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 192.0.2.0/24}}]
    ports: [{port: https}, {protocol: UDP, port: 53}]
  - to: [{ipBlock: {cidr: 198.51.100.0/24}}]
    ports: [{port: http}]
"#;
        let v = validate_network_policies(&nps(y));
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        let w: Vec<String> = v.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with(
                "NetworkPolicy/a/named: spec.egress[0].ports[0].port: named port \"https\" cannot be resolved"
            ),
            "{w:?}"
        );
        let p = [&v.policies[0]];
        // The numeric entry still applies; the named one allows nothing; a rule of named ports
        // only allows nothing (it never widens to every port).
        let udp = Flow { dst: "192.0.2.1".parse().unwrap(), proto: FlowProto::Named(Protocol::Udp), port: 53 };
        assert_eq!(evaluate(&p, &udp).verdict, A);
        assert_eq!(evaluate(&p, &tcp("192.0.2.1", 443)).verdict, D);
        assert_eq!(evaluate(&p, &tcp("198.51.100.1", 80)).verdict, D);
        assert_eq!(v.policies[0].rules.len(), 1);
    }

    #[test]
    fn bad_content_is_named_and_the_policy_left_out() {
        let y = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: a}
spec:
  podSelector: {matchExpressions: [{key: app, operator: Equals, values: [x]}]}
  policyTypes: [Egress, Outbound]
  egress:
  - to:
    - ipBlock: {cidr: 10.0.0.0/33}
    - ipBlock: {cidr: 10.0.0.0/24, except: [10.1.0.0/24, 10.0.0.0/24]}
      podSelector: {}
    - {}
    ports:
    - {protocol: ICMP}
    - {port: 80, endPort: 79}
    - {endPort: 90}
    - {port: 0}
    - {port: http, endPort: 90}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: no-namespace}
spec: {policyTypes: [Egress]}
"#;
        let v = validate_network_policies(&nps(y));
        assert!(v.policies.is_empty(), "nothing half-applied: {:?}", v.policies);
        let got: Vec<String> = v.problems.iter().map(|p| format!("{}: {}", p.field, p.reason)).collect();
        for want in [
            "spec.policyTypes[1]: \"Outbound\" is not a policy type",
            "spec.podSelector.matchExpressions[0].operator",
            "spec.egress[0].to[0].ipBlock.cidr: \"10.0.0.0/33\" is not a CIDR",
            "spec.egress[0].to[1]: ipBlock cannot be combined",
            "spec.egress[0].to[1].ipBlock.except[0]: 10.1.0.0/24 is not strictly inside",
            "spec.egress[0].to[1].ipBlock.except[1]: 10.0.0.0/24 is not strictly inside",
            "spec.egress[0].to[2]: a peer needs ipBlock",
            "spec.egress[0].ports[0].protocol: \"ICMP\" is not a protocol",
            "spec.egress[0].ports[1].endPort: 79 is below port 80",
            "spec.egress[0].ports[2].endPort: needs port",
            "spec.egress[0].ports[3].port: 0 is not a port",
            "spec.egress[0].ports[4].endPort: needs a numeric port",
            "metadata.namespace: is required",
        ] {
            assert!(got.iter().any(|g| g.starts_with(want)), "missing {want:?} in {got:#?}");
        }
        assert!(v.problems.iter().all(|p| p.kind == "NetworkPolicy"));
    }

    #[test]
    fn host_bits_are_dropped_with_a_warning_and_ingress_only_policies_give_nothing() {
        let y = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: h, namespace: a}\nspec:\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.1/24}}]}]\n";
        let v = validate_network_policies(&nps(y));
        assert_eq!(v.policies[0].rules[0].to[0].to_string(), "10.0.0.0/24");
        assert!(v.warnings[0].reason.contains("read as 10.0.0.0/24"), "{:?}", v.warnings);
        // policyTypes absent and no egress: ingress only (Kubernetes' defaulting).
        let ingress = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: i, namespace: a}\nspec:\n  podSelector: {}\n";
        let v = validate_network_policies(&nps(ingress));
        assert!(v.policies.is_empty() && v.problems.is_empty());
        // Duplicates: the first is kept.
        let v = validate_network_policies(&nps(&format!("{y}---\n{y}")));
        assert_eq!(v.policies.len(), 1);
        assert!(v.problems[0].reason.starts_with("duplicate NetworkPolicy \"a/h\""), "{:?}", v.problems);
    }
}
