//! Validation of ClusterEgressPolicies and EgressPolicies: API objects in, [`Policy`] models
//! and problems out. A policy with any problem is left out whole (never half-applied) and each
//! problem names its field, e.g. `spec.rules[1].ports[0].endPort`.

use super::{Action, FqdnPattern, PolicyId, PortMatch, Protocol, Rule, Verdict};
use crate::model::AppliedTo;
use crate::validate::{Problem, Sink, check_name, compile, parse_cidr, parse_ip};
use egret_api::v1alpha1::{self as api, EgressRule};
use ipnet::IpNet;
use std::collections::BTreeSet;

use super::Policy;

/// Valid policies and every problem found.
#[derive(Debug, Clone, Default)]
pub struct ValidatedPolicies {
    /// Valid policies, in evaluation order.
    pub policies: Vec<Policy>,
    /// Problems, cluster policies first, in input order.
    pub problems: Vec<Problem>,
    /// Parts left out of policies that apply otherwise (a NetworkPolicy port given by name),
    /// each naming its field.
    pub warnings: Vec<Problem>,
}

impl ValidatedPolicies {
    /// Adds the policies, problems and warnings of `other`, keeping evaluation order.
    pub fn extend(&mut self, other: ValidatedPolicies) {
        self.policies.extend(other.policies);
        self.policies.sort_by(|a, b| a.id.cmp(&b.id));
        self.problems.extend(other.problems);
        self.warnings.extend(other.warnings);
    }

    /// Leaves out the NetworkPolicies (problems and warnings stay): what an agent that does not
    /// enforce them evaluates.
    pub fn without_network_policies(mut self) -> ValidatedPolicies {
        self.policies.retain(|p| !p.id.is_network_policy());
        self
    }
}

/// Validates every policy; bad ones are reported and left out.
pub fn validate_policies(cluster: &[api::ClusterEgressPolicy], namespaced: &[api::EgressPolicy]) -> ValidatedPolicies {
    let mut out = ValidatedPolicies::default();
    let mut seen = BTreeSet::new();
    for (index, p) in cluster.iter().enumerate() {
        let name = p.metadata.name.clone().unwrap_or_default();
        let mut sink = Sink { kind: "ClusterEgressPolicy", name: &name, index, problems: Vec::new() };
        let named = check_name(p.metadata.name.as_ref(), &mut seen, &mut sink);
        if !(0..=1000).contains(&p.spec.priority) {
            sink.push(
                "spec.priority",
                format!("{} is out of range; priorities are 0..1000, lower first", p.spec.priority),
            );
        }
        let applied_to = applied_to(&p.spec.applied_to, false, &mut sink);
        let rules = rules(&p.spec.rules, &mut sink);
        let default_action = default_action(p.spec.default_action.as_deref(), &mut sink);
        let silent = silent(p.spec.deny_response.as_deref(), &mut sink);
        if named && sink.problems.is_empty() {
            out.policies.push(Policy {
                id: PolicyId::Cluster { priority: p.spec.priority, name: name.clone() },
                applied_to,
                rules,
                default_action,
                silent,
            });
        }
        out.problems.append(&mut sink.problems);
    }
    let mut seen_ns = BTreeSet::new();
    for (index, p) in namespaced.iter().enumerate() {
        let namespace = p.metadata.namespace.clone().unwrap_or_default();
        let name = p.metadata.name.clone().unwrap_or_default();
        let full = format!("{namespace}/{name}");
        let mut sink = Sink { kind: "EgressPolicy", name: &full, index, problems: Vec::new() };
        let mut own = BTreeSet::new();
        let mut named = check_name(p.metadata.name.as_ref(), &mut own, &mut sink);
        if namespace.is_empty() {
            sink.push("metadata.namespace", "is required: an EgressPolicy applies to pods of its own namespace");
            named = false;
        } else if named && !seen_ns.insert(full.clone()) {
            sink.push("metadata.name", format!("duplicate EgressPolicy {full:?} (the first definition is kept)"));
            named = false;
        }
        let applied_to = applied_to(&p.spec.applied_to, true, &mut sink);
        let rules = rules(&p.spec.rules, &mut sink);
        let default_action = default_action(p.spec.default_action.as_deref(), &mut sink);
        let silent = silent(p.spec.deny_response.as_deref(), &mut sink);
        if named && sink.problems.is_empty() {
            out.policies.push(Policy {
                id: PolicyId::Namespaced { namespace: namespace.clone(), name: name.clone() },
                applied_to,
                rules,
                default_action,
                silent,
            });
        }
        out.problems.append(&mut sink.problems);
    }
    out.policies.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

fn applied_to(a: &api::AppliedTo, namespaced: bool, sink: &mut Sink) -> AppliedTo {
    if namespaced {
        for (field, set) in
            [("namespaceSelector", a.namespace_selector.is_some()), ("nodeSelector", a.node_selector.is_some())]
        {
            if set {
                sink.push(
                    format!("spec.appliedTo.{field}"),
                    "is not allowed in an EgressPolicy: it applies to pods of its own namespace (use podSelector; a ClusterEgressPolicy selects across namespaces and nodes)",
                );
            }
        }
    }
    AppliedTo {
        namespaces: a.namespace_selector.as_ref().and_then(|s| compile(s, "spec.appliedTo.namespaceSelector", sink)),
        pods: a.pod_selector.as_ref().and_then(|s| compile(s, "spec.appliedTo.podSelector", sink)),
        nodes: a.node_selector.as_ref().and_then(|s| compile(s, "spec.appliedTo.nodeSelector", sink)),
    }
}

fn default_action(v: Option<&str>, sink: &mut Sink) -> Option<Verdict> {
    match v? {
        "Allow" => Some(Verdict::Allow),
        "Deny" => Some(Verdict::Deny),
        other => {
            sink.push(
                "spec.defaultAction",
                format!("{other:?} is not an action here; use Allow or Deny (or leave it out to go on)"),
            );
            None
        }
    }
}

/// `port` .. `endPort` (absent: `port` alone) as a port range, or the problem named at
/// `{at}.port` / `{at}.endPort`. Shared by Egret's policies and NetworkPolicies.
pub(crate) fn port_range(a: i64, end: Option<i64>, at: &str, sink: &mut Sink) -> Option<(u16, u16)> {
    let b = end.unwrap_or(a);
    let in_range = |v: i64| (1..=65535).contains(&v);
    if !in_range(a) {
        sink.push(format!("{at}.port"), format!("{a} is not a port (1..65535)"));
        return None;
    }
    if !in_range(b) {
        sink.push(format!("{at}.endPort"), format!("{b} is not a port (1..65535)"));
        return None;
    }
    if b < a {
        sink.push(format!("{at}.endPort"), format!("{b} is below port {a}; endPort must be >= port"));
        return None;
    }
    Some((a as u16, b as u16))
}

/// Whether denied connections are dropped silently (`denyResponse: Drop`).
fn silent(v: Option<&str>, sink: &mut Sink) -> bool {
    match v {
        None | Some("Reject") => false,
        Some("Drop") => true,
        Some(other) => {
            sink.push(
                "spec.denyResponse",
                format!("{other:?} is not a deny response; use Reject (reset or ICMP, the default) or Drop (silent)"),
            );
            false
        }
    }
}

/// Checks a DNS-1123 label: at most 63 lowercase letters, digits and `-`, starting and ending
/// with a letter or digit.
fn dns1123_label(s: &str) -> Result<(), String> {
    let ok_chars = s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let ends = s.starts_with(|c: char| c.is_ascii_alphanumeric()) && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    if s.is_empty() || s.len() > 63 || !ok_chars || !ends {
        return Err(format!(
            "{s:?} is not a DNS-1123 label (1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// A CIDR, or a bare address as its host prefix.
fn cidr(s: &str) -> Result<IpNet, String> {
    if !s.contains('/')
        && let Ok(ip) = parse_ip(s)
    {
        return Ok(IpNet::from(ip));
    }
    parse_cidr(s)
}

fn nets(list: &[String], at: &str, sink: &mut Sink) -> Vec<IpNet> {
    let mut out: Vec<(usize, IpNet)> = Vec::new();
    for (i, c) in list.iter().enumerate() {
        match cidr(c) {
            Ok(n) => {
                if let Some((j, other)) = out.iter().find(|(_, o)| o.contains(&n) || n.contains(o)) {
                    sink.push(
                        format!("{at}[{i}]"),
                        format!("{n} overlaps {at}[{j}] ({other}); list each destination once"),
                    );
                }
                out.push((i, n));
            }
            Err(why) => sink.push(format!("{at}[{i}]"), why),
        }
    }
    out.into_iter().map(|(_, n)| n).collect()
}

fn rules(list: &[EgressRule], sink: &mut Sink) -> Vec<Rule> {
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for (i, r) in list.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        if let Err(why) = dns1123_label(&r.name) {
            sink.push(format!("{at}.name"), why);
        } else if !names.insert(r.name.clone()) {
            sink.push(
                format!("{at}.name"),
                format!("duplicate rule name {:?}; rule names are unique in a policy", r.name),
            );
        }
        let action = match r.action.as_str() {
            "Allow" => Action::Allow,
            "Deny" => Action::Deny,
            "Pass" => Action::Pass,
            other => {
                sink.push(format!("{at}.action"), format!("{other:?} is not an action; use Allow, Deny or Pass"));
                Action::Deny
            }
        };
        let mut fqdns = Vec::new();
        if let Some(peer) = &r.to {
            for (j, f) in peer.fqdns.iter().enumerate() {
                match FqdnPattern::parse(f) {
                    Ok(p) if fqdns.contains(&p) => {
                        sink.push(format!("{at}.to.fqdns[{j}]"), format!("{p} is listed twice"));
                    }
                    Ok(p) => fqdns.push(p),
                    Err(why) => sink.push(format!("{at}.to.fqdns[{j}]"), why.to_string()),
                }
            }
            if !peer.fqdns.is_empty() && (!peer.cidrs.is_empty() || !peer.except.is_empty()) {
                sink.push(
                    format!("{at}.to"),
                    "names fqdns and cidrs/except together; a rule matches either names or addresses: write two rules",
                );
            }
            if !peer.fqdns.is_empty() && action != Action::Allow {
                sink.push(
                    format!("{at}.to.fqdns"),
                    "is only allowed in Allow rules: one address can serve many names, so denying or passing by name cannot be exact; deny by CIDR, or allow the names you want under a default deny",
                );
            }
        }
        let (to, except) = match &r.to {
            Some(peer) => {
                let to = nets(&peer.cidrs, &format!("{at}.to.cidrs"), sink);
                let except = nets(&peer.except, &format!("{at}.to.except"), sink);
                if peer.cidrs.is_empty() && !peer.except.is_empty() {
                    sink.push(format!("{at}.to.except"), "needs to.cidrs: except names parts of the listed CIDRs");
                }
                for (j, e) in except.iter().enumerate() {
                    if !to.is_empty() && !to.iter().any(|c| c.contains(e)) {
                        sink.push(format!("{at}.to.except[{j}]"), format!("{e} is not inside any of to.cidrs"));
                    }
                }
                (to, except)
            }
            None => (Vec::new(), Vec::new()),
        };
        let mut ports = Vec::new();
        for (k, p) in r.ports.iter().enumerate() {
            let pat = format!("{at}.ports[{k}]");
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                "SCTP" => Protocol::Sctp,
                "ICMP" => Protocol::Icmp,
                other => {
                    sink.push(
                        format!("{pat}.protocol"),
                        format!("{other:?} is not a protocol; use TCP, UDP, SCTP or ICMP"),
                    );
                    continue;
                }
            };
            let range = match (p.port, p.end_port) {
                (None, None) => None,
                (None, Some(_)) => {
                    sink.push(format!("{pat}.endPort"), "needs port: endPort ends the range that port starts");
                    continue;
                }
                _ if !protocol.has_ports() => {
                    sink.push(format!("{pat}.port"), "ICMP has no ports; leave port and endPort out");
                    continue;
                }
                (Some(a), end) => match port_range(a, end, &pat, sink) {
                    Some(r) => Some(r),
                    None => continue,
                },
            };
            ports.push(PortMatch { protocol, ports: range });
        }
        out.push(Rule { name: r.name.clone(), action, to, except, ports, log: r.log, fqdns });
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cluster(yaml: &str) -> api::ClusterEgressPolicy {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn problems(c: &[api::ClusterEgressPolicy], n: &[api::EgressPolicy]) -> Vec<String> {
        let v = validate_policies(c, n);
        assert!(v.problems.is_empty() || v.policies.len() < c.len() + n.len(), "a bad policy is left out");
        v.problems.iter().map(|p| format!("{}: {}", p.field, p.reason)).collect()
    }

    const GOOD: &str = r#"
apiVersion: egret.dev/v1alpha1
kind: ClusterEgressPolicy
metadata: {name: web}
spec:
  priority: 100
  appliedTo: {namespaceSelector: {}}
  rules:
  - name: github
    action: Allow
    to: {cidrs: [203.0.113.0/24, 192.0.2.7], except: [203.0.113.128/25]}
    ports: [{protocol: TCP, port: 443}, {port: 8000, endPort: 8099}, {protocol: ICMP}]
    log: true
  defaultAction: Deny
"#;

    #[test]
    fn a_good_policy_validates() {
        let v = validate_policies(&[cluster(GOOD)], &[]);
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        let p = &v.policies[0];
        assert_eq!(p.default_action, Some(Verdict::Deny));
        let r = &p.rules[0];
        assert_eq!(r.to[1].to_string(), "192.0.2.7/32");
        assert_eq!(r.ports[1], PortMatch { protocol: Protocol::Tcp, ports: Some((8000, 8099)) });
        assert_eq!(r.ports[2], PortMatch { protocol: Protocol::Icmp, ports: None });
        assert!(!p.silent, "denials are answered unless denyResponse says Drop");
    }

    #[test]
    fn deny_response_drop_makes_denials_silent_and_a_bad_one_is_named() {
        let drop = format!("{GOOD}  denyResponse: Drop\n");
        let v = validate_policies(&[cluster(&drop)], &[]);
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        let set = crate::policy::compile(&[&v.policies[0]]);
        assert!(set.fallback.silent && set.fallback.verdict == Verdict::Deny);
        // An allowing decision is never "silent".
        assert!(set.cells.iter().all(|c| c.decision.verdict == Verdict::Allow && !c.decision.silent));
        let got = problems(&[cluster(&format!("{GOOD}  denyResponse: Ignore\n"))], &[]);
        assert!(got.iter().any(|g| g.starts_with("spec.denyResponse: \"Ignore\" is not a deny response")), "{got:?}");
    }

    #[test]
    fn bad_fields_are_named_and_the_policy_left_out() {
        let bad = GOOD
            .replace("priority: 100", "priority: 1001")
            .replace("action: Allow", "action: Permit")
            .replace("203.0.113.0/24, ", "203.0.113.1/24, ")
            .replace("{protocol: ICMP}", "{protocol: ICMP, port: 8}")
            .replace("endPort: 8099", "endPort: 7999")
            .replace("defaultAction: Deny", "defaultAction: Pass");
        let got = problems(&[cluster(&bad)], &[]);
        for want in [
            "spec.priority: 1001 is out of range",
            "spec.rules[0].action: \"Permit\" is not an action",
            "spec.rules[0].to.cidrs[0]: \"203.0.113.1/24\" has host bits set",
            "spec.rules[0].ports[2].port: ICMP has no ports",
            "spec.rules[0].ports[1].endPort: 7999 is below port 8000",
            "spec.defaultAction: \"Pass\" is not an action here",
        ] {
            assert!(got.iter().any(|g| g.starts_with(want)), "missing {want:?} in {got:#?}");
        }
    }

    #[test]
    fn rule_names_overlaps_and_except_outside() {
        let bad = GOOD.replace(
            "  defaultAction: Deny",
            "  - name: github\n    action: Deny\n    to: {cidrs: [10.0.0.0/8, 10.1.0.0/16], except: [192.168.0.0/16]}\n  - name: Bad_Name\n    action: Deny\n  defaultAction: Deny",
        );
        let got = problems(&[cluster(&bad)], &[]);
        for want in [
            "spec.rules[1].name: duplicate rule name \"github\"",
            "spec.rules[1].to.cidrs[1]: 10.1.0.0/16 overlaps spec.rules[1].to.cidrs[0]",
            "spec.rules[1].to.except[0]: 192.168.0.0/16 is not inside any of to.cidrs",
            "spec.rules[2].name: \"Bad_Name\" is not a DNS-1123 label",
        ] {
            assert!(got.iter().any(|g| g.starts_with(want)), "missing {want:?} in {got:#?}");
        }
    }

    #[test]
    fn namespaced_policies_select_only_their_namespace() {
        let y = "apiVersion: egret.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: p, namespace: team-a}\nspec:\n  appliedTo: {namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}\n  rules: [{name: r, action: Pass}]\n";
        let p: api::EgressPolicy = serde_yaml_ng::from_str(y).unwrap();
        let got = problems(&[], std::slice::from_ref(&p));
        assert!(got[0].starts_with("spec.appliedTo.namespaceSelector: is not allowed in an EgressPolicy"), "{got:?}");
        let ok: api::EgressPolicy = serde_yaml_ng::from_str(&y.replace("namespaceSelector: {}, ", "")).unwrap();
        let v = validate_policies(&[], &[ok.clone(), ok]);
        assert_eq!(v.policies.len(), 1);
        assert!(v.problems[0].reason.starts_with("duplicate EgressPolicy \"team-a/p\""), "{:?}", v.problems);
    }

    #[test]
    fn name_rules_validate_and_bad_ones_say_why() {
        let named = GOOD.replace(
            "  defaultAction: Deny",
            "  - name: names\n    action: Allow\n    to: {fqdns: [api.github.com, \"*.googleapis.com\", \"**.corp.example.\"]}\n    ports: [{port: 443}]\n  defaultAction: Deny",
        );
        let v = validate_policies(&[cluster(&named)], &[]);
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        let fq: Vec<&str> = v.policies[0].rules[1].fqdns.iter().map(|p| p.as_str()).collect();
        assert_eq!(fq, ["api.github.com", "*.googleapis.com", "**.corp.example"]);
        let bad = GOOD.replace(
            "  defaultAction: Deny",
            "  - name: deny-names\n    action: Deny\n    to: {fqdns: [\"*.example.com\"]}\n  - name: both\n    action: Allow\n    to: {cidrs: [192.0.2.0/24], fqdns: [a.test]}\n  - name: bad\n    action: Allow\n    to: {fqdns: [bücher.example, \"a.**.test\", a.test, A.test.]}\n  defaultAction: Deny",
        );
        let got = problems(&[cluster(&bad)], &[]);
        for want in [
            "spec.rules[1].to.fqdns: is only allowed in Allow rules: one address can serve many names",
            "spec.rules[2].to: names fqdns and cidrs/except together",
            "spec.rules[3].to.fqdns[0]: \"bücher.example\" is not ASCII; write international names in punycode: \"xn--bcher-kva.example\"",
            "spec.rules[3].to.fqdns[1]: \"a.**.test\": '**' is only allowed as a whole leading label",
            "spec.rules[3].to.fqdns[3]: a.test is listed twice",
        ] {
            assert!(got.iter().any(|g| g.starts_with(want)), "missing {want:?} in {got:#?}");
        }
    }
}
