//! Name patterns, as NATS subjects: names are split at `.` into segments; in a pattern, `*`
//! stands for exactly one segment and `>`, last only, for one or more.

use std::fmt;

/// One compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    One,
    Rest,
}

impl Pattern {
    /// Compiles a pattern.
    ///
    /// # Errors
    /// Why the text is not a pattern: empty, an empty segment, `>` not last, or a segment that
    /// mixes a wildcard with other characters.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("a pattern must not be empty".into());
        }
        if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!(
                "pattern {text:?} holds a control character or white space"
            ));
        }
        let parts: Vec<&str> = text.split('.').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let segment = match *part {
                "" => return Err(format!("pattern {text:?} has an empty segment")),
                "*" => Segment::One,
                ">" if i + 1 == parts.len() => Segment::Rest,
                ">" => return Err(format!("in pattern {text:?}, '>' may only come last")),
                p if p.contains('*') || p.contains('>') => {
                    return Err(format!(
                        "in pattern {text:?}, '*' and '>' must be whole segments"
                    ));
                }
                p => Segment::Literal(p.to_owned()),
            };
            segments.push(segment);
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let mut parts = name.split('.');
        for segment in &self.segments {
            match segment {
                Segment::Rest => return parts.next().is_some(),
                Segment::One => {
                    if parts.next().is_none_or(str::is_empty) {
                        return false;
                    }
                }
                Segment::Literal(l) => {
                    if parts.next() != Some(l.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What an action may reach: names matching an allowed pattern and no denied one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Allowed {
    allow: Vec<Pattern>,
    deny: Vec<Pattern>,
}

impl Allowed {
    /// Compiles lists of patterns; `allow` absent means every name.
    ///
    /// # Errors
    /// The first pattern that does not compile, with `what` it is for.
    pub fn new(what: &str, allow: Option<&[String]>, deny: &[String]) -> Result<Self, String> {
        let compile = |list: &[String]| -> Result<Vec<Pattern>, String> {
            list.iter()
                .map(|p| Pattern::parse(p).map_err(|e| format!("{what}: {e}")))
                .collect()
        };
        let allow = match allow {
            Some(list) => compile(list)?,
            None => vec![Pattern::parse(">").expect("a valid pattern")],
        };
        Ok(Self {
            allow,
            deny: compile(deny)?,
        })
    }

    /// Whether `name` may be reached: deny wins over allow.
    pub fn permits(&self, name: &str) -> bool {
        self.allow.iter().any(|p| p.matches(name)) && !self.deny.iter().any(|p| p.matches(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn wildcards_match_as_nats_subjects() {
        assert!(p("billing").matches("billing"));
        assert!(!p("billing").matches("billing.eu"));
        assert!(!p("billing").matches("billings"));
        assert!(p("billing.*").matches("billing.eu"));
        assert!(!p("billing.*").matches("billing"));
        assert!(!p("billing.*").matches("billing.eu.1"));
        assert!(p("billing.>").matches("billing.eu.1"));
        assert!(p("billing.>").matches("billing.eu"));
        assert!(!p("billing.>").matches("billing"));
        assert!(p("*.audit").matches("billing.audit"));
        assert!(!p("*.audit").matches("audit"));
        assert!(p(">").matches("anything.at.all"));
        assert!(!p("*").matches("a.b"));
        assert!(!p("a.*").matches("a."));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in ["", "a..b", ".a", "a.", "a.>.b", "a*", "b>", "a b"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn deny_wins_and_no_allow_list_means_everything() {
        let a = Allowed::new("x", None, &["secret.>".into()]).unwrap();
        assert!(a.permits("news"));
        assert!(!a.permits("secret.plans"));
        let a = Allowed::new("x", Some(&["news.*".into()]), &["news.private".into()]).unwrap();
        assert!(a.permits("news.sports"));
        assert!(!a.permits("news.private"));
        assert!(!a.permits("weather"));
        let none = Allowed::new("x", Some(&[]), &[]).unwrap();
        assert!(!none.permits("news"));
    }

    proptest! {
        #[test]
        fn a_literal_pattern_matches_only_its_own_text(
            a in "[a-c]{1,2}(\\.[a-c]{1,2}){0,2}",
            b in "[a-c]{1,2}(\\.[a-c]{1,2}){0,2}",
        ) {
            prop_assert_eq!(p(&a).matches(&b), a == b);
        }

        #[test]
        fn a_rest_pattern_matches_what_starts_with_its_prefix_and_a_dot(
            prefix in "[a-c]{1,2}",
            name in "[a-c]{1,2}(\\.[a-c]{1,2}){0,3}",
        ) {
            let expected = name.len() > prefix.len() + 1
                && name.starts_with(&format!("{prefix}."));
            prop_assert_eq!(p(&format!("{prefix}.>")).matches(&name), expected);
        }
    }
}
