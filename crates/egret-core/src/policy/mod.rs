//! The egress firewall: validated policies, which policies apply to a pod and in what order,
//! the decision for one connection ([`evaluate`]), and the same decisions compiled into
//! disjoint cells a datapath can look up ([`compile`]).
//!
//! Order of evaluation for a new connection from a pod to a destination outside the cluster:
//! the ClusterEgressPolicies selecting the pod by priority (ties by name), each rule in order;
//! the first matching `Allow` or `Deny` decides; a matching `Pass` skips the remaining
//! ClusterEgressPolicies. Then the EgressPolicies of the pod's namespace selecting it (by name),
//! the same way (a `Pass` there skips the remaining EgressPolicies). Then, when the agent
//! enforces them, the egress rules of the Kubernetes NetworkPolicies selecting the pod (all
//! `Allow`, unioned): a pod any of them selects is isolated, so a connection none of their
//! rules allows is denied ([`DecidedBy::Isolation`]). When no rule decided and no
//! NetworkPolicy selects the pod, the first `defaultAction` among the policies evaluated (those
//! a `Pass` skipped are not) decides; without one the connection is allowed.

mod compile;
pub mod fqdn;
pub mod netpol;
pub mod validate;

pub use compile::{Cell, CompiledSet, NameRule, Ports, ProtoClass, compile};
pub use fqdn::FqdnPattern;
pub use netpol::validate_network_policies;
pub use validate::{ValidatedPolicies, validate_policies};

use crate::model::AppliedTo;
use crate::selector::{LabelLookup, Labels};
use ipnet::IpNet;
use serde::Serialize;
use std::fmt;
use std::net::IpAddr;

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Action {
    /// Allow the connection.
    Allow,
    /// Deny it.
    Deny,
    /// Stop evaluating this tier (cluster or namespace); go on to the next.
    Pass,
}

/// The outcome for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Verdict {
    /// It may leave.
    Allow,
    /// It is refused.
    Deny,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "Allow",
            Verdict::Deny => "Deny",
        })
    }
}

/// A protocol a rule names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
    /// ICMP for IPv4 destinations, ICMPv6 for IPv6 ones.
    Icmp,
}

impl Protocol {
    /// Whether the protocol has ports.
    pub fn has_ports(self) -> bool {
        !matches!(self, Protocol::Icmp)
    }

    /// The IP protocol number for a destination of this family.
    pub fn number(self, v6: bool) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
            Protocol::Icmp if v6 => 58,
            Protocol::Icmp => 1,
        }
    }

    /// The protocol of an IP protocol number, if a rule can name it.
    pub fn of_number(n: u8) -> Option<Protocol> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            132 => Some(Protocol::Sctp),
            1 | 58 => Some(Protocol::Icmp),
            _ => None,
        }
    }
}

/// A protocol and, for protocols with ports, an inclusive port range (`None`: every port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PortMatch {
    /// The protocol.
    pub protocol: Protocol,
    /// First and last port.
    pub ports: Option<(u16, u16)>,
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Its name, unique in its policy.
    pub name: String,
    /// What it does.
    pub action: Action,
    /// Destinations (empty: every destination).
    pub to: Vec<IpNet>,
    /// Destinations inside `to` it does not match.
    pub except: Vec<IpNet>,
    /// Protocols and ports (empty: all of them).
    pub ports: Vec<PortMatch>,
    /// Audit every new connection it decides.
    pub log: bool,
    /// Name patterns (an Allow rule only, with `to` and `except` empty): the rule matches the
    /// addresses DNS answers for these names gave the pod, which the datapath learns at run
    /// time; see [`Learned`].
    pub fqdns: Vec<FqdnPattern>,
}

/// Which name rules hold a connection's destination among their learned addresses: the run-time
/// state a name rule's match depends on. The index is the rule's policy in the ordered list.
pub trait Learned {
    /// Whether rule `r` of policy number `policy` has learned the destination.
    fn holds(&self, policy: usize, r: &Rule) -> bool;
}

/// No addresses learned: name rules match nothing.
pub struct NothingLearned;

impl Learned for NothingLearned {
    fn holds(&self, _: usize, _: &Rule) -> bool {
        false
    }
}

/// The destination was learned as this name (`egret trace --name`): every name rule with a
/// pattern matching it holds it.
pub struct LearnedAs<'a>(pub &'a str);

impl Learned for LearnedAs<'_> {
    fn holds(&self, _: usize, r: &Rule) -> bool {
        r.fqdns.iter().any(|p| p.matches(self.0))
    }
}

/// Which policy: its kind, name and (for ordering) priority.
///
/// The derived order is the evaluation order: cluster policies by priority then name, then
/// namespaced ones, then NetworkPolicies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum PolicyId {
    /// A ClusterEgressPolicy.
    Cluster {
        /// `spec.priority`.
        priority: i64,
        /// Its name.
        name: String,
    },
    /// An EgressPolicy.
    Namespaced {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The egress part of a Kubernetes NetworkPolicy (`networking.k8s.io/v1`).
    NetworkPolicy {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

/// The tiers of evaluation, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    Cluster,
    Namespaced,
    NetworkPolicy,
}

impl PolicyId {
    /// `ClusterEgressPolicy`, `EgressPolicy` or `NetworkPolicy`.
    pub fn kind(&self) -> &'static str {
        match self {
            PolicyId::Cluster { .. } => "ClusterEgressPolicy",
            PolicyId::Namespaced { .. } => "EgressPolicy",
            PolicyId::NetworkPolicy { .. } => "NetworkPolicy",
        }
    }

    /// `name` or `namespace/name`.
    pub fn object(&self) -> String {
        match self {
            PolicyId::Cluster { name, .. } => name.clone(),
            PolicyId::Namespaced { namespace, name } | PolicyId::NetworkPolicy { namespace, name } => {
                format!("{namespace}/{name}")
            }
        }
    }

    /// Whether this is a Kubernetes NetworkPolicy.
    pub fn is_network_policy(&self) -> bool {
        matches!(self, PolicyId::NetworkPolicy { .. })
    }

    fn tier(&self) -> Tier {
        match self {
            PolicyId::Cluster { .. } => Tier::Cluster,
            PolicyId::Namespaced { .. } => Tier::Namespaced,
            PolicyId::NetworkPolicy { .. } => Tier::NetworkPolicy,
        }
    }
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.object())
    }
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Which policy.
    pub id: PolicyId,
    /// The pods it applies to. For an EgressPolicy or a NetworkPolicy only `pods` is set, and
    /// only pods of its namespace are considered.
    pub applied_to: AppliedTo,
    /// Rules in order.
    pub rules: Vec<Rule>,
    /// What decides when no rule did.
    pub default_action: Option<Verdict>,
    /// Denied connections are dropped without an answer (`denyResponse: Drop`) rather than
    /// refused with a reset or ICMP.
    pub silent: bool,
}

impl Policy {
    /// Whether it applies to a pod with these namespace, pod and node labels.
    pub fn selects(
        &self,
        namespace: &str,
        ns_labels: &Labels,
        pod_labels: &(impl LabelLookup + ?Sized),
        node_labels: &Labels,
    ) -> bool {
        let a = &self.applied_to;
        match &self.id {
            PolicyId::Cluster { .. } => {
                !a.selects_nothing()
                    && a.namespaces.as_ref().is_none_or(|s| s.matches(ns_labels))
                    && a.pods.as_ref().is_none_or(|s| s.matches(pod_labels))
                    && a.nodes.as_ref().is_none_or(|s| s.matches(node_labels))
            }
            PolicyId::Namespaced { namespace: ns, .. } | PolicyId::NetworkPolicy { namespace: ns, .. } => {
                ns == namespace && a.pods.as_ref().is_none_or(|s| s.matches(pod_labels))
            }
        }
    }
}

/// The protocol of a connection as the firewall sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum FlowProto {
    /// A protocol a rule can name (with the destination port for TCP, UDP and SCTP).
    Named(Protocol),
    /// Any other IP protocol number.
    Other(u8),
}

/// A new connection: destination, protocol and (TCP, UDP, SCTP) destination port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    /// Destination address.
    pub dst: IpAddr,
    /// Protocol.
    pub proto: FlowProto,
    /// Destination port (0 for protocols without ports).
    pub port: u16,
}

impl Rule {
    /// Whether this is a name rule (its destinations are learned from DNS answers).
    pub fn is_named(&self) -> bool {
        !self.fqdns.is_empty()
    }

    /// Whether the rule matches the connection by its CIDRs and ports; a name rule never does
    /// here (its destinations are learned: see [`Rule::matches_ports`] and [`Learned`]).
    pub fn matches(&self, f: &Flow) -> bool {
        let to = self.to.is_empty() || self.to.iter().any(|n| n.contains(&f.dst));
        if self.is_named() || !to || self.except.iter().any(|n| n.contains(&f.dst)) {
            return false;
        }
        self.matches_ports(f)
    }

    /// Whether the rule's protocols and ports match the connection.
    pub fn matches_ports(&self, f: &Flow) -> bool {
        self.ports.is_empty()
            || self.ports.iter().any(|p| match f.proto {
                FlowProto::Named(proto) if proto == p.protocol => {
                    p.ports.is_none_or(|(a, b)| proto.has_ports() && (a..=b).contains(&f.port))
                }
                _ => false,
            })
    }
}

/// What decided a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum DecidedBy {
    /// A rule of a policy.
    Rule {
        /// The policy.
        policy: PolicyId,
        /// The rule's name.
        rule: String,
    },
    /// A policy's `defaultAction`.
    Default {
        /// The policy.
        policy: PolicyId,
    },
    /// NetworkPolicy isolation: NetworkPolicies select the pod and none of their egress rules
    /// allows the connection.
    Isolation {
        /// The first NetworkPolicy selecting the pod.
        policy: PolicyId,
    },
    /// No policy decided (the connection is allowed).
    Nothing,
}

impl fmt::Display for DecidedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecidedBy::Rule { policy, rule } => write!(f, "{policy} rule {rule}"),
            DecidedBy::Default { policy } => write!(f, "{policy} defaultAction"),
            DecidedBy::Isolation { policy } => {
                write!(f, "NetworkPolicy isolation ({policy} selects the pod; no NetworkPolicy egress rule allows it)")
            }
            DecidedBy::Nothing => f.write_str("no policy (allowed)"),
        }
    }
}

/// The decision for one connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Decision {
    /// Allow or deny.
    pub verdict: Verdict,
    /// What decided.
    pub by: DecidedBy,
    /// Whether the connection is audited (`log: true` on the rule, a default deny, or a deny by
    /// NetworkPolicy isolation).
    pub log: bool,
    /// A denial is silent (the deciding policy's `denyResponse: Drop`); false for allowed ones.
    pub silent: bool,
}

/// The decision for `flow` from a pod the `policies` apply to, given in evaluation order
/// (see [`PolicyId`]'s order; [`applicable`] returns them so).
pub fn evaluate(policies: &[&Policy], flow: &Flow) -> Decision {
    evaluate_learned(policies, flow, &NothingLearned)
}

/// [`evaluate`], with name rules matching what `learned` holds.
pub fn evaluate_learned(policies: &[&Policy], flow: &Flow, learned: &dyn Learned) -> Decision {
    let all = policies.iter().enumerate().flat_map(|(i, p)| p.rules.iter().map(move |r| (i, r)));
    decide(policies, all, flow, learned)
}

/// [`evaluate`] given only the rules that may match `flow`, as `(index of its policy in
/// policies, rule)` in evaluation order: every rule left out must not match. The compiler
/// passes the few rules whose destinations cover a piece of the address space, so a pod under
/// thousands of rules is compiled without walking all of them for every cell.
pub(crate) fn decide<'a>(
    policies: &[&Policy],
    candidates: impl IntoIterator<Item = (usize, &'a Rule)>,
    flow: &Flow,
    learned: &dyn Learned,
) -> Decision {
    // Where a matching Pass stopped each tier: that policy's later rules and every later
    // policy of the tier are skipped.
    let mut pass_at: [Option<usize>; 2] = [None, None];
    let tier_slot = |t: Tier| match t {
        Tier::Cluster => Some(0),
        Tier::Namespaced => Some(1),
        Tier::NetworkPolicy => None,
    };
    for (i, r) in candidates {
        let Some(p) = policies.get(i) else { continue };
        let slot = tier_slot(p.id.tier());
        let hit = if r.is_named() { r.matches_ports(flow) && learned.holds(i, r) } else { r.matches(flow) };
        if slot.and_then(|s| pass_at[s]).is_some_and(|k| i >= k) || !hit {
            continue;
        }
        let verdict = match r.action {
            Action::Allow => Verdict::Allow,
            Action::Deny => Verdict::Deny,
            Action::Pass => {
                if let Some(s) = slot {
                    pass_at[s] = Some(i);
                }
                continue;
            }
        };
        return Decision::by_rule(p, r, verdict);
    }
    let isolated_by = policies.iter().map(|p| &p.id).find(|id| id.tier() == Tier::NetworkPolicy);
    // The first default among the policies evaluated: a Pass skips the later policies of its
    // tier, not its own default.
    let first_default = policies.iter().enumerate().find_map(|(i, p)| {
        let skipped = tier_slot(p.id.tier()).and_then(|s| pass_at[s]).is_some_and(|k| i > k);
        p.default_action.filter(|_| !skipped).map(|d| (*p, d))
    });
    no_rule_matched(isolated_by, first_default)
}

/// The decision when no rule decided: NetworkPolicy isolation first (it sits before every
/// `defaultAction`), then the first default met, else allowed.
pub(crate) fn no_rule_matched(isolated_by: Option<&PolicyId>, first_default: Option<(&Policy, Verdict)>) -> Decision {
    match (isolated_by, first_default) {
        (Some(id), _) => Decision {
            verdict: Verdict::Deny,
            by: DecidedBy::Isolation { policy: id.clone() },
            log: true,
            silent: false,
        },
        (None, Some((p, verdict))) => Decision::by_default(p, verdict),
        (None, None) => Decision::nothing(),
    }
}

impl Decision {
    /// Decided by rule `r` of `p`.
    fn by_rule(p: &Policy, r: &Rule, verdict: Verdict) -> Decision {
        Decision {
            verdict,
            by: DecidedBy::Rule { policy: p.id.clone(), rule: r.name.clone() },
            log: r.log,
            silent: verdict == Verdict::Deny && p.silent,
        }
    }

    /// Decided by `p`'s `defaultAction` (a default deny is always audited).
    fn by_default(p: &Policy, verdict: Verdict) -> Decision {
        Decision {
            verdict,
            by: DecidedBy::Default { policy: p.id.clone() },
            log: verdict == Verdict::Deny,
            silent: verdict == Verdict::Deny && p.silent,
        }
    }

    /// No policy decided: allowed, not audited.
    fn nothing() -> Decision {
        Decision { verdict: Verdict::Allow, by: DecidedBy::Nothing, log: false, silent: false }
    }
}

/// One local pod address the firewall governs, and its policy set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FirewallPod {
    /// The pod's address.
    pub ip: IpAddr,
    /// `namespace/name`.
    pub pod: String,
    /// Its set: an index into [`Firewall::sets`].
    pub set: usize,
}

/// One distinct ordered list of policies, compiled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FirewallSet {
    /// The policies, in evaluation order.
    pub policies: Vec<PolicyId>,
    /// Their decisions.
    pub compiled: std::sync::Arc<CompiledSet>,
}

/// What a node enforces: each local pod that some policy applies to, and the distinct policy
/// sets of those pods (pods with the same policies share one).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Firewall {
    /// Governed pod addresses, by address.
    pub pods: Vec<FirewallPod>,
    /// The sets.
    pub sets: Vec<FirewallSet>,
}

impl Firewall {
    /// Whether no pod here is governed.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// The decision for a connection from `src`, as the node enforces it (`None`: no policy
    /// applies to that address).
    pub fn decide(&self, src: IpAddr, flow: &Flow) -> Option<&Decision> {
        let p = self.pods.iter().find(|p| p.ip == src)?;
        Some(self.sets.get(p.set)?.compiled.lookup(flow))
    }

    /// [`Firewall::decide`] with `holds(rule)` saying whether a name rule holds the destination.
    pub fn decide_learned(&self, src: IpAddr, flow: &Flow, holds: impl Fn(&NameRule) -> bool) -> Option<&Decision> {
        let p = self.pods.iter().find(|p| p.ip == src)?;
        let c = &self.sets.get(p.set)?.compiled;
        Some(c.lookup_learned(flow, |k| c.names.get(k).is_some_and(&holds)))
    }
}

/// The policies applying to a pod, in evaluation order.
pub fn applicable<'a>(
    policies: impl IntoIterator<Item = &'a Policy>,
    namespace: &str,
    ns_labels: &Labels,
    pod_labels: &(impl LabelLookup + ?Sized),
    node_labels: &Labels,
) -> Vec<&'a Policy> {
    let mut out: Vec<&Policy> =
        policies.into_iter().filter(|p| p.selects(namespace, ns_labels, pod_labels, node_labels)).collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// `mk_rule("r", Action::Allow, &["203.0.113.0/24"], &[], &[(Protocol::Tcp, Some((443, 443)))])`.
    pub fn mk_rule(
        name: &str,
        action: Action,
        to: &[&str],
        except: &[&str],
        ports: &[(Protocol, Option<(u16, u16)>)],
    ) -> Rule {
        Rule {
            name: name.into(),
            action,
            to: to.iter().map(|c| c.parse().unwrap_or_else(|_| panic!("bad CIDR {c}"))).collect(),
            except: except.iter().map(|c| c.parse().unwrap_or_else(|_| panic!("bad CIDR {c}"))).collect(),
            ports: ports.iter().map(|&(protocol, ports)| PortMatch { protocol, ports }).collect(),
            log: false,
            fqdns: Vec::new(),
        }
    }

    pub fn mk_named(name: &str, fqdns: &[&str], ports: &[(Protocol, Option<(u16, u16)>)]) -> Rule {
        Rule {
            fqdns: fqdns
                .iter()
                .map(|f| FqdnPattern::parse(f).unwrap_or_else(|e| panic!("bad pattern {f}: {e}")))
                .collect(),
            ..mk_rule(name, Action::Allow, &[], &[], ports)
        }
    }

    /// A cluster policy selecting every pod.
    pub fn mk_cluster(name: &str, priority: i64, rules: Vec<Rule>, default_action: Option<Verdict>) -> Policy {
        Policy {
            id: PolicyId::Cluster { priority, name: name.into() },
            applied_to: AppliedTo { namespaces: Some(Default::default()), pods: None, nodes: None },
            rules,
            default_action,
            silent: false,
        }
    }

    /// A namespaced policy selecting every pod of `namespace`.
    pub fn mk_namespaced(namespace: &str, name: &str, rules: Vec<Rule>, default_action: Option<Verdict>) -> Policy {
        Policy {
            id: PolicyId::Namespaced { namespace: namespace.into(), name: name.into() },
            applied_to: AppliedTo::default(),
            rules,
            default_action,
            silent: false,
        }
    }

    /// The egress part of a NetworkPolicy selecting every pod of `namespace`.
    pub fn mk_network_policy(namespace: &str, name: &str, rules: Vec<Rule>) -> Policy {
        Policy {
            id: PolicyId::NetworkPolicy { namespace: namespace.into(), name: name.into() },
            applied_to: AppliedTo::default(),
            rules,
            default_action: None,
            silent: false,
        }
    }

    pub fn tcp(dst: &str, port: u16) -> Flow {
        Flow {
            dst: dst.parse().unwrap_or_else(|_| panic!("bad address {dst}")),
            proto: FlowProto::Named(Protocol::Tcp),
            port,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn first_matching_rule_decides_in_priority_order() {
        let web = mk_rule(
            "web",
            Action::Allow,
            &["203.0.113.0/24"],
            &["203.0.113.128/25"],
            &[(Protocol::Tcp, Some((443, 443)))],
        );
        let deny = mk_cluster("deny-all", 200, vec![mk_rule("all", Action::Deny, &[], &[], &[])], None);
        let allow = mk_cluster("allow-web", 100, vec![web], None);
        let ps = [&deny, &allow];
        let ordered = applicable(ps, "a", &Labels::new(), &Labels::new(), &Labels::new());
        assert_eq!(ordered[0].id, allow.id, "lower priority first");
        let d = evaluate(&ordered, &tcp("203.0.113.5", 443));
        assert_eq!((d.verdict, d.by.to_string()), (Verdict::Allow, "ClusterEgressPolicy allow-web rule web".into()));
        // except, other port, other address: the deny-all rule.
        for f in [tcp("203.0.113.200", 443), tcp("203.0.113.5", 80), tcp("198.51.100.1", 443)] {
            assert_eq!(evaluate(&ordered, &f).verdict, Verdict::Deny, "{f:?}");
        }
    }

    #[test]
    fn pass_hands_over_to_the_namespace_and_defaults_follow_evaluation() {
        let cluster = mk_cluster(
            "baseline",
            10,
            vec![mk_rule("to-tenant", Action::Pass, &["198.51.100.0/24"], &[], &[])],
            Some(Verdict::Deny),
        );
        let later = mk_cluster("later", 20, vec![mk_rule("never", Action::Allow, &[], &[], &[])], None);
        let tenant = mk_namespaced(
            "team-a",
            "tenant",
            vec![mk_rule("api", Action::Allow, &["198.51.100.10/32"], &[], &[(Protocol::Tcp, None)])],
            None,
        );
        let ordered = applicable([&tenant, &later, &cluster], "team-a", &Labels::new(), &Labels::new(), &Labels::new());
        // Passed: the later cluster policy is skipped, the tenant's rule decides.
        let d = evaluate(&ordered, &tcp("198.51.100.10", 8080));
        assert_eq!(d.by.to_string(), "EgressPolicy team-a/tenant rule api");
        // Passed, nothing matched in the namespace: the first default met (the cluster's).
        let d = evaluate(&ordered, &tcp("198.51.100.11", 80));
        assert_eq!((d.verdict, d.log), (Verdict::Deny, true));
        assert_eq!(d.by.to_string(), "ClusterEgressPolicy baseline defaultAction");
        // Not passed: the later cluster policy allows.
        assert_eq!(evaluate(&ordered, &tcp("192.0.2.1", 80)).by.to_string(), "ClusterEgressPolicy later rule never");
        // Another namespace: the tenant policy does not apply.
        assert_eq!(applicable([&tenant], "team-b", &Labels::new(), &Labels::new(), &Labels::new()).len(), 0);
    }

    #[test]
    fn no_policy_allows_and_icmp_has_no_ports() {
        assert_eq!(evaluate(&[], &tcp("192.0.2.1", 1)).by, DecidedBy::Nothing);
        let p = mk_cluster(
            "icmp",
            1,
            vec![mk_rule("ping", Action::Allow, &[], &[], &[(Protocol::Icmp, None)])],
            Some(Verdict::Deny),
        );
        let ping = Flow { dst: "192.0.2.1".parse().unwrap(), proto: FlowProto::Named(Protocol::Icmp), port: 0 };
        assert_eq!(evaluate(&[&p], &ping).verdict, Verdict::Allow);
        let gre = Flow { proto: FlowProto::Other(47), ..ping };
        assert_eq!(evaluate(&[&p], &gre).verdict, Verdict::Deny);
        // A v6 destination is not inside a v4 rule.
        let r = mk_rule("v4", Action::Deny, &["0.0.0.0/0"], &[], &[]);
        assert!(!r.matches(&tcp("2001:db8::1", 443)));
        assert!(mk_rule("any", Action::Deny, &[], &[], &[]).matches(&tcp("2001:db8::1", 443)));
    }
}
