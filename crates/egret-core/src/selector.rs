//! Kubernetes label selectors, compiled once (and checked) so that matching is cheap.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// What a selector reads of an object's labels.
pub trait LabelLookup {
    /// The value of the label `key`, if set.
    fn label(&self, key: &str) -> Option<&str>;
}

impl LabelLookup for Labels {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// A set of labels packed into one shared string, for holding many sets: a [`Labels`] map
/// allocates a whole B-tree node (about 540 bytes) even for two labels, plus a string per key
/// and value; this is one allocation of the text itself. Each key and value is written as its
/// length, `:`, then itself (so any text is exact), in key order (so equal sets are equal
/// strings, and hash alike).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PackedLabels(Arc<str>);

impl PackedLabels {
    /// Packs `labels`.
    pub fn new(labels: &Labels) -> PackedLabels {
        let mut s = String::new();
        for (k, v) in labels {
            for field in [k, v] {
                s.push_str(&field.len().to_string());
                s.push(':');
                s.push_str(field);
            }
        }
        PackedLabels(Arc::from(s))
    }

    /// The labels, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut rest: &str = &self.0;
        std::iter::from_fn(move || {
            let k = next_field(&mut rest)?;
            let v = next_field(&mut rest)?;
            Some((k, v))
        })
    }

    /// The labels as a map.
    pub fn to_labels(&self) -> Labels {
        self.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Whether these are exactly `labels`.
    pub fn same_as(&self, labels: &Labels) -> bool {
        self.iter().eq(labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

/// Takes one `length:text` field off the front of `rest`.
fn next_field<'a>(rest: &mut &'a str) -> Option<&'a str> {
    let (len, tail) = rest.split_once(':')?;
    let len: usize = len.parse().ok()?;
    let field = tail.get(..len)?;
    *rest = tail.get(len..)?;
    Some(field)
}

impl LabelLookup for PackedLabels {
    fn label(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Requirement {
    /// The label has one of the values.
    In(String, Vec<String>),
    /// The label is absent or has none of the values.
    NotIn(String, Vec<String>),
    /// The label is present.
    Exists(String),
    /// The label is absent.
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: &(impl LabelLookup + ?Sized)) -> bool {
        match self {
            Requirement::In(k, vs) => labels.label(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            Requirement::NotIn(k, vs) => labels.label(k).is_none_or(|v| !vs.iter().any(|x| x == v)),
            Requirement::Exists(k) => labels.label(k).is_some(),
            Requirement::DoesNotExist(k) => labels.label(k).is_none(),
        }
    }
}

/// A compiled label selector. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    reqs: Vec<Requirement>,
}

/// A selector that cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SelectorError {
    /// Path below the selector, e.g. `matchExpressions[0].operator`.
    pub field: String,
    /// What is wrong and what is allowed.
    pub reason: String,
}

/// Checks a label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters of alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric.
fn check_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && (p.is_empty()
            || p.len() > 253
            || !p.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            }))
    {
        return Err(format!("invalid label key {key:?}: the prefix must be a DNS subdomain"));
    }
    check_value(name).map_err(|_| {
        format!(
            "invalid label key {key:?}: the name must be 1-63 characters of alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
        )
    })?;
    if name.is_empty() {
        return Err(format!("invalid label key {key:?}: the name part is empty"));
    }
    Ok(())
}

/// Checks a label value: empty, or at most 63 characters of alphanumerics, `-`, `_`, `.`,
/// starting and ending alphanumeric.
fn check_value(v: &str) -> Result<(), String> {
    let ok = v.is_empty()
        || (v.len() <= 63
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && v.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
            && v.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid label value {v:?}: at most 63 characters of alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
        ))
    }
}

impl Selector {
    /// Compiles a selector, checking keys, values and operators.
    pub fn compile(sel: &LabelSelector) -> Result<Selector, SelectorError> {
        let mut reqs = Vec::new();
        if let Some(ml) = &sel.match_labels {
            for (k, v) in ml {
                let field = format!("matchLabels.{k}");
                check_key(k).map_err(|reason| SelectorError { field: field.clone(), reason })?;
                check_value(v).map_err(|reason| SelectorError { field, reason })?;
                reqs.push(Requirement::In(k.clone(), vec![v.clone()]));
            }
        }
        for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
            let at = |f: &str| format!("matchExpressions[{i}].{f}");
            check_key(&e.key).map_err(|reason| SelectorError { field: at("key"), reason })?;
            let values = e.values.clone().unwrap_or_default();
            for (j, v) in values.iter().enumerate() {
                check_value(v).map_err(|reason| SelectorError { field: at(&format!("values[{j}]")), reason })?;
            }
            let req = match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(SelectorError {
                        field: at("values"),
                        reason: format!("operator {} needs at least one value", e.operator),
                    });
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(SelectorError {
                        field: at("values"),
                        reason: format!("operator {} takes no values", e.operator),
                    });
                }
                "In" => Requirement::In(e.key.clone(), values),
                "NotIn" => Requirement::NotIn(e.key.clone(), values),
                "Exists" => Requirement::Exists(e.key.clone()),
                "DoesNotExist" => Requirement::DoesNotExist(e.key.clone()),
                other => {
                    return Err(SelectorError {
                        field: at("operator"),
                        reason: format!("unknown operator {other:?}; allowed: In, NotIn, Exists, DoesNotExist"),
                    });
                }
            };
            reqs.push(req);
        }
        Ok(Selector { reqs })
    }

    /// The selector that matches everything.
    pub fn everything() -> Selector {
        Selector::default()
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &(impl LabelLookup + ?Sized)) -> bool {
        self.reqs.iter().all(|r| r.matches(labels))
    }

    /// Whether this selector matches every object.
    pub fn is_everything(&self) -> bool {
        self.reqs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    proptest::proptest! {
        /// Packed labels give back exactly the map, whatever the text (digits, `:`, empty).
        #[test]
        fn packed_labels_round_trip(map in proptest::collection::btree_map(".{0,12}", ".{0,12}", 0..6), probe in ".{0,12}") {
            let packed = PackedLabels::new(&map);
            proptest::prop_assert_eq!(packed.to_labels(), map.clone());
            proptest::prop_assert!(packed.same_as(&map));
            proptest::prop_assert_eq!(packed.label(&probe), map.label(&probe));
            for (k, v) in &map {
                proptest::prop_assert_eq!(packed.label(k), Some(v.as_str()));
            }
        }
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: if values.is_empty() { None } else { Some(values.iter().map(|s| s.to_string()).collect()) },
            }]),
            match_labels: None,
        }
    }

    #[test]
    fn operators_match_like_kubernetes() {
        let web = labels(&[("app", "web")]);
        let none = labels(&[]);
        let s = |k, o, v: &[&str]| Selector::compile(&expr(k, o, v)).unwrap();
        assert!(s("app", "In", &["web", "db"]).matches(&web));
        assert!(!s("app", "In", &["db"]).matches(&web));
        assert!(!s("app", "In", &["web"]).matches(&none));
        assert!(s("app", "NotIn", &["db"]).matches(&web));
        assert!(s("app", "NotIn", &["db"]).matches(&none));
        assert!(!s("app", "NotIn", &["web"]).matches(&web));
        assert!(s("app", "Exists", &[]).matches(&web));
        assert!(!s("app", "Exists", &[]).matches(&none));
        assert!(s("app", "DoesNotExist", &[]).matches(&none));
        assert!(Selector::compile(&LabelSelector::default()).unwrap().matches(&web));
    }

    #[test]
    fn bad_selectors_name_their_field() {
        let e = Selector::compile(&expr("app", "Equals", &["x"])).unwrap_err();
        assert_eq!(e.field, "matchExpressions[0].operator");
        assert!(e.reason.contains("allowed: In, NotIn, Exists, DoesNotExist"));
        assert_eq!(Selector::compile(&expr("app", "In", &[])).unwrap_err().field, "matchExpressions[0].values");
        assert_eq!(Selector::compile(&expr("app", "Exists", &["a"])).unwrap_err().field, "matchExpressions[0].values");
        assert_eq!(Selector::compile(&expr("bad key!", "Exists", &[])).unwrap_err().field, "matchExpressions[0].key");
        let ml = LabelSelector { match_labels: Some(labels(&[("app", "-web")])), match_expressions: None };
        assert_eq!(Selector::compile(&ml).unwrap_err().field, "matchLabels.app");
        let ok = LabelSelector {
            match_labels: Some(labels(&[("kubernetes.io/metadata.name", "prod")])),
            match_expressions: None,
        };
        assert!(Selector::compile(&ok).is_ok());
    }
}
