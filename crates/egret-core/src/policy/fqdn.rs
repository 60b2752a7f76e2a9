//! Name patterns of a rule's `to.fqdns`, with Cilium's semantics: names are compared without
//! regard to case or a trailing dot; `*` matches zero or more characters inside one label
//! (never a dot), so `*.example.com` never matches `example.com` itself; a leading `**.`
//! matches one or more whole labels. International names are written in punycode.

use serde::Serialize;
use std::fmt;

/// Why a pattern is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FqdnError {
    /// The pattern is empty (or only a dot).
    #[error("is empty")]
    Empty,
    /// The pattern holds characters outside ASCII; its punycode form is given.
    #[error("{name:?} is not ASCII; write international names in punycode: {punycode:?}")]
    Unicode {
        /// The pattern as given.
        name: String,
        /// Its punycode (ACE) form, when it has one.
        punycode: String,
    },
    /// The pattern holds an ASCII character names cannot have.
    #[error("{name:?} has {ch:?}; names use letters, digits, '-', '_', '.' and the wildcards '*' and '**.'")]
    Character {
        /// The pattern as given.
        name: String,
        /// The character.
        ch: char,
    },
    /// A label is empty (two dots in a row, or a leading dot).
    #[error("{0:?} has an empty label")]
    EmptyLabel(String),
    /// A label is longer than DNS allows.
    #[error("{0:?} has a label longer than 63 characters")]
    LongLabel(String),
    /// The name is longer than DNS allows.
    #[error("{0:?} is longer than 253 characters")]
    Long(String),
    /// `**` used anywhere but as the whole first label.
    #[error("{0:?}: '**' is only allowed as a whole leading label ('**.example.com')")]
    DoubleStar(String),
}

/// One label of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Label {
    /// Letters to match exactly (lowercase).
    Exact(String),
    /// A glob of literal pieces separated by `*`.
    Glob(Vec<String>),
}

/// A valid name pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FqdnPattern {
    /// Canonical text: lowercase, no trailing dot.
    text: String,
    /// A leading `**.`: one or more whole labels before `labels`.
    any_prefix: bool,
    labels: Vec<Label>,
}

impl Serialize for FqdnPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl fmt::Display for FqdnPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A name as DNS carries it, lowercased and without its trailing dot: the form patterns are
/// matched against and names are logged in.
pub fn canonical_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

impl FqdnPattern {
    /// Parses and checks a pattern.
    pub fn parse(s: &str) -> Result<FqdnPattern, FqdnError> {
        if !s.is_ascii() {
            let punycode = s.split('.').map(|l| idna::domain_to_ascii(l).unwrap_or_else(|_| l.to_string()));
            return Err(FqdnError::Unicode { name: s.into(), punycode: punycode.collect::<Vec<_>>().join(".") });
        }
        let text = canonical_name(s);
        if text.is_empty() {
            return Err(FqdnError::Empty);
        }
        if let Some(ch) = text.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '*'))) {
            return Err(FqdnError::Character { name: s.into(), ch });
        }
        if text.len() > 253 {
            return Err(FqdnError::Long(s.into()));
        }
        let mut parts: Vec<&str> = text.split('.').collect();
        let any_prefix = parts.first() == Some(&"**") && parts.len() > 1;
        if any_prefix {
            parts.remove(0);
        }
        let mut labels = Vec::with_capacity(parts.len());
        for p in parts {
            if p.is_empty() {
                return Err(FqdnError::EmptyLabel(s.into()));
            }
            if p.len() > 63 {
                return Err(FqdnError::LongLabel(s.into()));
            }
            if p.contains("**") {
                return Err(FqdnError::DoubleStar(s.into()));
            }
            labels.push(if p.contains('*') {
                Label::Glob(p.split('*').map(str::to_string).collect())
            } else {
                Label::Exact(p.to_string())
            });
        }
        Ok(FqdnPattern { text, any_prefix, labels })
    }

    /// The canonical text (lowercase, no trailing dot).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `name` (any case, with or without its trailing dot) matches.
    pub fn matches(&self, name: &str) -> bool {
        let name = canonical_name(name);
        let got: Vec<&str> = name.split('.').collect();
        let n = self.labels.len();
        let fixed = if self.any_prefix {
            if got.len() <= n {
                return false;
            }
            &got[got.len() - n..]
        } else {
            if got.len() != n {
                return false;
            }
            &got[..]
        };
        if got.iter().any(|l| l.is_empty()) {
            return false;
        }
        self.labels.iter().zip(fixed).all(|(l, g)| match l {
            Label::Exact(e) => e == g,
            Label::Glob(pieces) => glob(pieces, g),
        })
    }
}

/// Whether `s` is `pieces` joined by runs of any characters (the pieces of a `*` glob).
fn glob(pieces: &[String], s: &str) -> bool {
    let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else { return true };
    if pieces.len() == 1 {
        return first == s;
    }
    if s.len() < first.len() + last.len() || !s.starts_with(first.as_str()) || !s.ends_with(last.as_str()) {
        return false;
    }
    // Greedy left-to-right for the middle pieces is exact for `*` globs.
    let mut rest = &s[first.len()..s.len() - last.len()];
    for p in &pieces[1..pieces.len() - 1] {
        match rest.find(p.as_str()) {
            Some(at) => rest = &rest[at + p.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(p: &str, name: &str) -> bool {
        FqdnPattern::parse(p).unwrap().matches(name)
    }

    #[test]
    fn truth_table() {
        let rows: &[(&str, &str, bool)] = &[
            // Cilium's own cases.
            ("*.ci*.io.", "anysub.ciliumandmore.io.", true),
            ("*.ci*.io.", "cilium.io.", false),
            ("**.cilium.io.", "a.b._tcp.cilium.io.", true),
            ("**.cilium.io.", "cilium.io.", false),
            ("*.ci*.io", "sub.cilium.io", true),
            // Case and trailing dot, either side.
            ("api.github.com", "API.GitHub.com.", true),
            ("API.GITHUB.COM.", "api.github.com", true),
            // Apex vs wildcard.
            ("*.example.com", "example.com", false),
            ("*.example.com", "www.example.com", true),
            ("*.example.com", "a.b.example.com", false),
            ("**.example.com", "a.b.example.com", true),
            ("example.com", "www.example.com", false),
            // Look-alikes.
            ("*.example.com", "evilexample.com", false),
            ("*.example.com", "example.com.evil.net", false),
            ("example.com", "example.com.evil.net", false),
            ("**.example.com", "example.com.evil.net", false),
            // `*` matches zero characters, never a dot.
            ("api*.test", "api.test", true),
            ("api*.test", "api-v2.test", true),
            ("a*b*c.test", "abc.test", true),
            ("a*b*c.test", "axxbyyc.test", true),
            ("a*b*c.test", "acb.test", false),
            ("*", "localhost", true),
            ("*", "a.b", false),
        ];
        for (p, n, want) in rows {
            assert_eq!(m(p, n), *want, "{p} vs {n}");
        }
    }

    #[test]
    fn bad_patterns_say_why() {
        let e = FqdnPattern::parse("bücher.example").unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"bücher.example\" is not ASCII; write international names in punycode: \"xn--bcher-kva.example\""
        );
        assert!(matches!(FqdnPattern::parse("a b.com"), Err(FqdnError::Character { ch: ' ', .. })));
        assert!(matches!(FqdnPattern::parse("a..com"), Err(FqdnError::EmptyLabel(_))));
        assert!(matches!(FqdnPattern::parse(".com"), Err(FqdnError::EmptyLabel(_))));
        assert!(matches!(FqdnPattern::parse("a.**.com"), Err(FqdnError::DoubleStar(_))));
        assert!(matches!(FqdnPattern::parse("**x.com"), Err(FqdnError::DoubleStar(_))));
        assert!(matches!(FqdnPattern::parse("."), Err(FqdnError::Empty)));
        assert!(matches!(FqdnPattern::parse(&"a".repeat(64)), Err(FqdnError::LongLabel(_))));
        assert!(matches!(FqdnPattern::parse(&["a"; 130].join(".")), Err(FqdnError::Long(_))));
        assert_eq!(FqdnPattern::parse("API.Example.COM.").unwrap().as_str(), "api.example.com");
    }

    proptest! {
        /// A pattern without wildcards matches exactly its own name, in any case.
        #[test]
        fn exact_patterns_match_only_themselves(a in "[a-z0-9]{1,8}(\\.[a-z0-9_-]{1,8}){0,3}", b in "[a-z0-9]{1,8}(\\.[a-z0-9]{1,8}){0,3}") {
            let p = FqdnPattern::parse(&a).unwrap();
            prop_assert!(p.matches(&a.to_uppercase()));
            let dotted = format!("{a}.");
            prop_assert!(p.matches(&dotted));
            prop_assert_eq!(p.matches(&b), a == b);
        }

        /// `*.x` matches exactly the names one label below x; `**.x` every name below it.
        #[test]
        fn wildcards_follow_labels(base in "[a-z]{1,6}\\.[a-z]{2,3}", sub in prop::collection::vec("[a-z0-9]{1,5}", 0..4)) {
            let name = if sub.is_empty() { base.clone() } else { format!("{}.{base}", sub.join(".")) };
            prop_assert_eq!(FqdnPattern::parse(&format!("*.{base}")).unwrap().matches(&name), sub.len() == 1);
            prop_assert_eq!(FqdnPattern::parse(&format!("**.{base}")).unwrap().matches(&name), !sub.is_empty());
        }

        /// Matching never panics on arbitrary names.
        #[test]
        fn any_name(p in "(\\*\\*\\.)?[a-z*]{1,5}(\\.[a-z*]{1,5}){0,2}", n in "\\PC{0,40}") {
            if let Ok(p) = FqdnPattern::parse(&p) {
                let _ = p.matches(&n);
            }
        }
    }
}
