//! Label and field selectors, parsed from the query string of LIST, WATCH and DELETE-collection
//! requests and matched against stored objects. It owns the selector grammar; it does not know
//! where objects come from.

use serde_json::Value;

use super::status::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

/// A parsed label selector, e.g. `app.kubernetes.io/managed-by=tka,tka.dev/session`.
///
/// Supports everything the API server does: `a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`,
/// `a notin (x,y)`, `a>1`, `a<1`, combined with commas (all must hold).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

fn parse_error(requirement: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!(
        "unable to parse requirement: {}: {why}",
        super::status::quote(requirement)
    ))
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 317
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(value: &str) -> bool {
    value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn parse_set(requirement: &str, rest: &str) -> Result<Vec<String>, ApiError> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| parse_error(requirement, "expected a parenthesised set of values"))?;
    let values: Vec<String> = inner
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    if values.is_empty() || !values.iter().all(|v| valid_value(v)) {
        return Err(parse_error(requirement, "invalid set of values"));
    }
    Ok(values)
}

fn parse_requirement(raw: &str) -> Result<Requirement, ApiError> {
    let r = raw.trim();
    if let Some(key) = r.strip_prefix('!') {
        let key = key.trim();
        return if valid_key(key) {
            Ok(Requirement::NotExists(key.to_owned()))
        } else {
            Err(parse_error(r, "invalid label key"))
        };
    }
    if let Some(paren) = r.find('(') {
        let head = &r[..paren];
        let mut words = head.split_whitespace();
        let (Some(key), Some(op), None) = (words.next(), words.next(), words.next()) else {
            return Err(parse_error(
                r,
                "expected `key in (...)` or `key notin (...)`",
            ));
        };
        if !valid_key(key) {
            return Err(parse_error(r, "invalid label key"));
        }
        let values = parse_set(r, &r[paren..])?;
        return match op {
            "in" => Ok(Requirement::In(key.to_owned(), values)),
            "notin" => Ok(Requirement::NotIn(key.to_owned(), values)),
            _ => Err(parse_error(r, "unknown set operator")),
        };
    }
    for (op, build) in [
        (
            "!=",
            Requirement::NotEquals as fn(String, String) -> Requirement,
        ),
        ("==", Requirement::Equals),
        ("=", Requirement::Equals),
    ] {
        if let Some((key, value)) = r.split_once(op) {
            let (key, value) = (key.trim(), value.trim());
            if !valid_key(key) || !valid_value(value) {
                return Err(parse_error(r, "invalid label key or value"));
            }
            return Ok(build(key.to_owned(), value.to_owned()));
        }
    }
    for (op, greater) in [(">", true), ("<", false)] {
        if let Some((key, value)) = r.split_once(op) {
            let key = key.trim();
            let number: i64 = value.trim().parse().map_err(|_| {
                parse_error(r, "for 'gt', 'lt' operators, the value must be an integer")
            })?;
            if !valid_key(key) {
                return Err(parse_error(r, "invalid label key"));
            }
            return Ok(if greater {
                Requirement::GreaterThan(key.to_owned(), number)
            } else {
                Requirement::LessThan(key.to_owned(), number)
            });
        }
    }
    if valid_key(r) {
        Ok(Requirement::Exists(r.to_owned()))
    } else {
        Err(parse_error(r, "invalid label key"))
    }
}

impl LabelSelector {
    /// Parses a selector; an empty string selects everything.
    ///
    /// # Errors
    /// A 400 BadRequest [`ApiError`] for a malformed selector, as the API server answers.
    pub fn parse(selector: &str) -> Result<Self, ApiError> {
        if selector.trim().is_empty() {
            return Ok(Self::default());
        }
        let requirements = split_top_level(selector)
            .into_iter()
            .map(parse_requirement)
            .collect::<Result<_, _>>()?;
        Ok(Self { requirements })
    }

    /// Whether an object (its `metadata.labels`) is selected.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.requirements.iter().all(|r| match r {
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            Requirement::GreaterThan(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            Requirement::LessThan(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
        })
    }
}

/// A parsed field selector. Like the API server for most types, only `metadata.name` and
/// `metadata.namespace` are supported, with `=`, `==` and `!=`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

impl FieldSelector {
    pub(crate) fn parse(selector: &str) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for raw in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = raw.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = raw.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = raw.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{selector}'; can't understand '{raw}'"
                )));
            };
            let field = field.trim();
            if field != "metadata.name" && field != "metadata.namespace" {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            terms.push((field.to_owned(), equal, value.trim().to_owned()));
        }
        Ok(Self { terms })
    }

    pub(crate) fn matches(&self, object: &Value) -> bool {
        self.terms.iter().all(|(field, equal, value)| {
            let pointer = if field == "metadata.name" {
                "/metadata/name"
            } else {
                "/metadata/namespace"
            };
            let actual = object
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or("");
            (actual == value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labelled(labels: &Value) -> Value {
        json!({"metadata": {"name": "x", "labels": labels}})
    }

    #[test]
    fn equality_and_existence() {
        let obj = labelled(&json!({"app": "tka", "tier": "1"}));
        for (selector, expected) in [
            ("app=tka", true),
            ("app==tka", true),
            ("app=other", false),
            ("app!=other", true),
            ("app!=tka", false),
            ("missing!=tka", true),
            ("app", true),
            ("missing", false),
            ("!missing", true),
            ("!app", false),
            ("app=tka,tier", true),
            ("app=tka,!tier", false),
            ("tier>0", true),
            ("tier<1", false),
            ("", true),
        ] {
            let sel = LabelSelector::parse(selector).unwrap();
            assert_eq!(sel.matches(&obj), expected, "{selector}");
        }
    }

    #[test]
    fn set_based() {
        let obj = labelled(&json!({"env": "prod"}));
        for (selector, expected) in [
            ("env in (prod,dev)", true),
            ("env in (dev, qa)", false),
            ("env notin (dev,qa)", true),
            ("env notin (prod)", false),
            ("other notin (prod)", true),
            ("other in (prod)", false),
            ("env in (prod),env", true),
        ] {
            let sel = LabelSelector::parse(selector).unwrap();
            assert_eq!(sel.matches(&obj), expected, "{selector}");
        }
    }

    #[test]
    fn malformed_selectors_are_bad_requests() {
        for selector in ["a in prod", "=x", "a in ()", "a>x", "a=b c"] {
            let err = LabelSelector::parse(selector).unwrap_err();
            assert_eq!(err.code, 400, "{selector}");
        }
        assert!(LabelSelector::parse("a in (b)").is_ok());
    }

    #[test]
    fn field_selector_supports_name_and_namespace_only() {
        let obj = json!({"metadata": {"name": "x", "namespace": "ns"}});
        assert!(
            FieldSelector::parse("metadata.name=x")
                .unwrap()
                .matches(&obj)
        );
        assert!(
            !FieldSelector::parse("metadata.name!=x")
                .unwrap()
                .matches(&obj)
        );
        assert!(
            FieldSelector::parse("metadata.namespace==ns,metadata.name=x")
                .unwrap()
                .matches(&obj)
        );
        assert_eq!(FieldSelector::parse("spec.x=1").unwrap_err().code, 400);
    }
}
