//! Label selectors (`app=web,tier in (a,b),!canary`) and field selectors
//! (`spec.nodeName=node-1,metadata.namespace!=kube-system`), as list requests carry them, and
//! the `matchLabels`/`matchExpressions` selectors of workload objects.

use serde_json::{Map, Value};

/// Why a selector could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse requirement {requirement:?}: {reason}")]
pub struct SelectorError {
    /// The offending part.
    pub requirement: String,
    /// Why.
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelOp {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<(String, LabelOp)>,
}

/// Splits at commas outside parentheses.
fn split_top_level(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut current = String::new();
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    parts
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

fn set_values(text: &str, requirement: &str) -> Result<Vec<String>, SelectorError> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or(SelectorError {
            requirement: requirement.to_string(),
            reason: "expected a set of values in parentheses",
        })?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl LabelSelector {
    /// Parses the `labelSelector` query parameter.
    ///
    /// # Errors
    /// [`SelectorError`].
    pub fn parse(text: &str) -> Result<LabelSelector, SelectorError> {
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let error = |reason| SelectorError {
                requirement: part.clone(),
                reason,
            };
            let requirement = if let Some(key) = part.strip_prefix('!') {
                (key.trim().to_string(), LabelOp::DoesNotExist)
            } else if let Some((key, value)) = part.split_once("!=") {
                (
                    key.trim().to_string(),
                    LabelOp::NotEquals(value.trim().to_string()),
                )
            } else if let Some((key, value)) = part.split_once("==") {
                (
                    key.trim().to_string(),
                    LabelOp::Equals(value.trim().to_string()),
                )
            } else if let Some((key, value)) = part.split_once('=') {
                (
                    key.trim().to_string(),
                    LabelOp::Equals(value.trim().to_string()),
                )
            } else if let Some((key, values)) = part.split_once(" notin ") {
                (
                    key.trim().to_string(),
                    LabelOp::NotIn(set_values(values, &part)?),
                )
            } else if let Some((key, values)) = part.split_once(" in ") {
                (
                    key.trim().to_string(),
                    LabelOp::In(set_values(values, &part)?),
                )
            } else if part.contains(' ') || part.contains('(') {
                return Err(error("unknown operator"));
            } else {
                (part.clone(), LabelOp::Exists)
            };
            if requirement.0.is_empty() {
                return Err(error("empty key"));
            }
            requirements.push(requirement);
        }
        Ok(LabelSelector { requirements })
    }

    /// Whether `labels` (a JSON object or null) satisfy every requirement.
    pub fn matches(&self, labels: Option<&Value>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.requirements.iter().all(|(key, op)| match op {
            LabelOp::Equals(v) => get(key) == Some(v.as_str()),
            LabelOp::NotEquals(v) => get(key) != Some(v.as_str()),
            LabelOp::In(vs) => get(key).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelOp::NotIn(vs) => get(key).is_none_or(|l| vs.iter().all(|v| v != l)),
            LabelOp::Exists => get(key).is_some(),
            LabelOp::DoesNotExist => get(key).is_none(),
        })
    }
}

/// A parsed field selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// Parses the `fieldSelector` query parameter (`=`, `==`, `!=` on dotted paths).
    ///
    /// # Errors
    /// [`SelectorError`].
    pub fn parse(text: &str) -> Result<FieldSelector, SelectorError> {
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(SelectorError {
                    requirement: part.clone(),
                    reason: "expected field=value or field!=value",
                });
            };
            requirements.push((field.trim().to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector { requirements })
    }

    /// Whether `obj` satisfies every requirement (a missing field reads as "").
    pub fn matches(&self, obj: &Value) -> bool {
        self.requirements.iter().all(|(field, equal, value)| {
            let pointer = format!("/{}", field.replace('.', "/"));
            let actual = match obj.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            (actual == *value) == *equal
        })
    }
}

/// Whether `labels` match a workload's `selector` (`matchLabels` and `matchExpressions`). An
/// empty or missing selector matches nothing, as for workloads.
pub fn matches_selector(selector: Option<&Value>, labels: Option<&Value>) -> bool {
    let Some(selector) = selector.and_then(Value::as_object) else {
        return false;
    };
    let empty = Map::new();
    let labels_map = labels.and_then(Value::as_object).unwrap_or(&empty);
    let match_labels = selector.get("matchLabels").and_then(Value::as_object);
    let expressions = selector.get("matchExpressions").and_then(Value::as_array);
    if match_labels.is_none_or(Map::is_empty) && expressions.is_none_or(Vec::is_empty) {
        return false;
    }
    let labels_ok = match_labels.is_none_or(|m| {
        m.iter()
            .all(|(k, v)| labels_map.get(k).is_some_and(|l| l == v))
    });
    let expressions_ok = expressions.is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let actual = labels_map.get(key).and_then(Value::as_str);
            match e
                .get("operator")
                .and_then(Value::as_str)
                .unwrap_or_default()
            {
                "In" => actual.is_some_and(|a| values.contains(&a)),
                "NotIn" => actual.is_none_or(|a| !values.contains(&a)),
                "Exists" => actual.is_some(),
                "DoesNotExist" => actual.is_none(),
                _ => false,
            }
        })
    });
    labels_ok && expressions_ok
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn label_selectors_parse_every_operator() {
        let labels = json!({"app": "web", "tier": "a"});
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(Some(&labels));
        assert!(m(""));
        assert!(m("app=web"));
        assert!(m("app==web,tier in (a, b)"));
        assert!(!m("app!=web"));
        assert!(m("tier notin (c),!canary"));
        assert!(!m("canary"));
        assert!(LabelSelector::parse("app in a").is_err());
    }

    #[test]
    fn field_selectors_read_dotted_paths() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let m = |s: &str| FieldSelector::parse(s).unwrap().matches(&pod);
        assert!(m("spec.nodeName=n1"));
        assert!(!m("spec.nodeName=n2"));
        assert!(m(
            "spec.nodeName==n1,status.phase!=Succeeded,status.phase!=Failed"
        ));
        assert!(m("spec.schedulerName="));
        assert!(FieldSelector::parse("spec.nodeName").is_err());
    }

    #[test]
    fn workload_selectors_need_labels_or_expressions() {
        let labels = json!({"k8s-app": "calico-node"});
        assert!(matches_selector(
            Some(&json!({"matchLabels": {"k8s-app": "calico-node"}})),
            Some(&labels)
        ));
        assert!(!matches_selector(Some(&json!({})), Some(&labels)));
        assert!(matches_selector(
            Some(
                &json!({"matchExpressions": [{"key": "k8s-app", "operator": "In", "values": ["calico-node"]}]})
            ),
            Some(&labels)
        ));
    }
}
