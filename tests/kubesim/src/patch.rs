//! The three patch formats of the API: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and
//! Kubernetes' strategic merge patch, which kubectl's client-side apply, `cordon` and `drain`
//! send for built-in types.
//!
//! The strategic merge patch follows the Go implementation for what kubectl generates: maps
//! merge, `null` deletes, lists with a merge key (`containers` by `name`, `ports` by
//! `containerPort` or `port`, …) merge element by element, `finalizers` merge as a set, every
//! other list is replaced; the directives `$patch` (`replace`, `delete`, `merge`), `$retainKeys`,
//! `$setElementOrder/<list>` and `$deleteFromPrimitiveList/<list>` are honoured. Merge keys are
//! known by field name (the Go code reads them from struct tags), which is exact for every
//! built-in type kubectl patches.

use serde_json::{Map, Value};

/// Why a patch could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The patch document has the wrong shape.
    #[error("invalid patch: {0}")]
    Invalid(String),
    /// A JSON patch operation failed (missing path, failed test).
    #[error("the JSON patch operation {index} ({op}) failed: {reason}")]
    Operation {
        /// Index of the operation.
        index: usize,
        /// The operation.
        op: String,
        /// Why.
        reason: String,
    },
}

// === JSON merge patch ===

/// Applies an RFC 7386 merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else { return };
    for (key, value) in patch {
        if value.is_null() {
            map.remove(key);
        } else {
            merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

// === JSON patch ===

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(path: &str) -> Result<(Vec<String>, String), String> {
    if path.is_empty() {
        return Err("the root cannot be patched".into());
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("path {path:?} does not start with /"))?;
    let mut tokens: Vec<String> = rest.split('/').map(unescape).collect();
    let last = tokens.pop().unwrap_or_default();
    Ok((tokens, last))
}

fn parent_mut<'a>(target: &'a mut Value, tokens: &[String]) -> Result<&'a mut Value, String> {
    let mut current = target;
    for token in tokens {
        current = match current {
            Value::Object(map) => map
                .get_mut(token)
                .ok_or_else(|| format!("missing key {token:?}"))?,
            Value::Array(items) => {
                let index: usize = token
                    .parse()
                    .map_err(|_| format!("{token:?} is not an array index"))?;
                items
                    .get_mut(index)
                    .ok_or_else(|| format!("index {index} out of range"))?
            }
            _ => return Err(format!("{token:?} is inside a scalar")),
        };
    }
    Ok(current)
}

fn add(target: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let (tokens, last) = split_pointer(path)?;
    match parent_mut(target, &tokens)? {
        Value::Object(map) => {
            map.insert(last, value);
            Ok(())
        }
        Value::Array(items) => {
            let index = if last == "-" {
                items.len()
            } else {
                last.parse::<usize>()
                    .map_err(|_| format!("{last:?} is not an array index"))?
            };
            if index > items.len() {
                return Err(format!("index {index} out of range"));
            }
            items.insert(index, value);
            Ok(())
        }
        _ => Err("the parent is a scalar".into()),
    }
}

fn remove(target: &mut Value, path: &str) -> Result<Value, String> {
    let (tokens, last) = split_pointer(path)?;
    match parent_mut(target, &tokens)? {
        Value::Object(map) => map
            .remove(&last)
            .ok_or_else(|| format!("missing key {last:?}")),
        Value::Array(items) => {
            let index: usize = last
                .parse()
                .map_err(|_| format!("{last:?} is not an array index"))?;
            if index >= items.len() {
                return Err(format!("index {index} out of range"));
            }
            Ok(items.remove(index))
        }
        _ => Err("the parent is a scalar".into()),
    }
}

fn pointer_get(target: &Value, path: &str) -> Result<Value, String> {
    target
        .pointer(path)
        .cloned()
        .ok_or_else(|| format!("path {path:?} does not exist"))
}

/// Applies an RFC 6902 JSON patch (a list of operations), all or nothing.
///
/// # Errors
/// [`PatchError`]; `target` is unchanged then.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), PatchError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| PatchError::Invalid("a JSON patch is a list of operations".into()))?;
    let mut work = target.clone();
    for (index, op) in ops.iter().enumerate() {
        let name = op.get("op").and_then(Value::as_str).unwrap_or_default();
        let path = op.get("path").and_then(Value::as_str).unwrap_or_default();
        let from = op.get("from").and_then(Value::as_str).unwrap_or_default();
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| "the operation has no value".to_string())
        };
        let result = match name {
            "add" => value().and_then(|v| add(&mut work, path, v)),
            "remove" => remove(&mut work, path).map(drop),
            "replace" => value().and_then(|v| {
                remove(&mut work, path)?;
                add(&mut work, path, v)
            }),
            "move" => remove(&mut work, from).and_then(|v| add(&mut work, path, v)),
            "copy" => pointer_get(&work, from).and_then(|v| add(&mut work, path, v)),
            "test" => value().and_then(|v| {
                if pointer_get(&work, path)? == v {
                    Ok(())
                } else {
                    Err(format!("the value at {path:?} differs"))
                }
            }),
            other => Err(format!("unknown operation {other:?}")),
        };
        result.map_err(|reason| PatchError::Operation {
            index,
            op: name.to_string(),
            reason,
        })?;
    }
    *target = work;
    Ok(())
}

// === strategic merge patch ===

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";

/// The merge key of the list `field` whose elements look like `sample`, or `None` for a list
/// that is replaced as a whole.
fn merge_key(field: &str, sample: Option<&Value>) -> Option<&'static str> {
    let has = |k: &str| sample.and_then(|s| s.get(k)).is_some();
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "ports" if has("containerPort") => Some("containerPort"),
        "ports" if has("port") => Some("port"),
        "hostAliases" => Some("ip"),
        "conditions" | "addresses" => Some("type"),
        "ownerReferences" => Some("uid"),
        "taints" => Some("key"),
        "topologySpreadConstraints" => Some("topologyKey"),
        _ => None,
    }
}

/// Lists of scalars merged as sets.
fn is_primitive_merge_list(field: &str) -> bool {
    matches!(field, "finalizers" | "podCIDRs")
}

/// `value` without directives and without `null` members (a new subtree).
fn clean(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, v)| !k.starts_with('$') && !v.is_null())
                .map(|(k, v)| (k.clone(), clean(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .filter(|v| v.get(PATCH).is_none())
                .map(clean)
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Applies a strategic merge patch.
///
/// # Errors
/// [`PatchError::Invalid`] when the patch is not an object or a directive is malformed.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let Value::Object(patch) = patch else {
        return Err(PatchError::Invalid(
            "a strategic merge patch is a JSON object".into(),
        ));
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(map) = target {
        merge_map(map, patch)?;
    }
    Ok(())
}

fn merge_map(
    original: &mut Map<String, Value>,
    patch: &Map<String, Value>,
) -> Result<(), PatchError> {
    match patch.get(PATCH).and_then(Value::as_str) {
        Some("replace") => {
            if let Value::Object(replacement) = clean(&Value::Object(patch.clone())) {
                *original = replacement;
            }
            return Ok(());
        }
        Some("delete") => {
            original.clear();
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(PatchError::Invalid(format!(
                "unknown $patch directive {other:?}"
            )));
        }
    }
    let mut orders: Vec<(&str, &Value)> = Vec::new();
    for (key, value) in patch {
        if key == PATCH || key == RETAIN_KEYS {
            continue;
        }
        if let Some(field) = key.strip_prefix(SET_ELEMENT_ORDER) {
            orders.push((field, value));
            continue;
        }
        if let Some(field) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            let doomed = value.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(items)) = original.get_mut(field) {
                items.retain(|v| !doomed.contains(v));
            }
            continue;
        }
        match value {
            Value::Null => {
                original.remove(key);
            }
            Value::Object(sub) => match sub.get(PATCH).and_then(Value::as_str) {
                Some("delete") => {
                    original.remove(key);
                }
                _ => match original.get_mut(key) {
                    Some(Value::Object(existing)) => merge_map(existing, sub)?,
                    _ => {
                        original.insert(key.clone(), clean(value));
                    }
                },
            },
            Value::Array(items) => {
                let merged = merge_list(key, original.remove(key), items)?;
                original.insert(key.clone(), merged);
            }
            scalar => {
                original.insert(key.clone(), scalar.clone());
            }
        }
    }
    if let Some(Value::Array(keep)) = patch.get(RETAIN_KEYS) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        original.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (field, order) in orders {
        if let (Some(Value::Array(items)), Some(order)) =
            (original.get_mut(field), order.as_array())
        {
            reorder(field, items, order);
        }
    }
    Ok(())
}

fn merge_list(field: &str, original: Option<Value>, patch: &[Value]) -> Result<Value, PatchError> {
    let mut items = match original {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    };
    if patch
        .iter()
        .any(|p| p.get(PATCH).and_then(Value::as_str) == Some("replace"))
    {
        return Ok(clean(&Value::Array(patch.to_vec())));
    }
    if is_primitive_merge_list(field) {
        for value in patch {
            if !items.contains(value) {
                items.push(value.clone());
            }
        }
        return Ok(Value::Array(items));
    }
    let sample = patch.iter().chain(items.iter()).find(|v| v.is_object());
    let Some(key) = merge_key(field, sample) else {
        return Ok(clean(&Value::Array(patch.to_vec())));
    };
    for element in patch {
        let Value::Object(element_map) = element else {
            return Err(PatchError::Invalid(format!(
                "the list {field:?} merges by {key:?} and needs objects"
            )));
        };
        let id = element_map.get(key);
        let position = id.and_then(|id| items.iter().position(|i| i.get(key) == Some(id)));
        match (element_map.get(PATCH).and_then(Value::as_str), position) {
            (Some("delete"), _) => {
                if let Some(id) = id {
                    items.retain(|i| i.get(key) != Some(id));
                }
            }
            (_, Some(at)) => {
                if let Value::Object(existing) = &mut items[at] {
                    merge_map(existing, element_map)?;
                }
            }
            (_, None) => items.push(clean(element)),
        }
    }
    Ok(Value::Array(items))
}

/// Orders `items` as `order` says (by merge key, or by value for scalar lists); items not
/// named keep their relative order after the named ones.
fn reorder(field: &str, items: &mut [Value], order: &[Value]) {
    let sample = order.first();
    let key = merge_key(field, sample);
    let identity = |v: &Value| -> Value {
        match key {
            Some(k) => v.get(k).cloned().unwrap_or(Value::Null),
            None => v.clone(),
        }
    };
    let wanted: Vec<Value> = order.iter().map(&identity).collect();
    let rank = |v: &Value| {
        let id = identity(v);
        wanted.iter().position(|w| *w == id).unwrap_or(usize::MAX)
    };
    items.sort_by_key(rank);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patch_deletes_with_null_and_replaces_lists() {
        let mut doc = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge_patch(&mut doc, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(doc, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
    }

    #[test]
    fn json_patch_is_all_or_nothing() {
        let mut doc = json!({"spec": {"taints": [{"key": "a"}]}});
        json_patch(
            &mut doc,
            &json!([{"op": "add", "path": "/spec/taints/-", "value": {"key": "b"}},
                    {"op": "replace", "path": "/spec/unschedulable", "value": true}]),
        )
        .unwrap_err();
        assert_eq!(doc, json!({"spec": {"taints": [{"key": "a"}]}}));
        json_patch(
            &mut doc,
            &json!([{"op": "add", "path": "/spec/taints/-", "value": {"key": "b"}},
                    {"op": "add", "path": "/spec/unschedulable", "value": true},
                    {"op": "test", "path": "/spec/taints/1/key", "value": "b"}]),
        )
        .unwrap();
        assert_eq!(doc["spec"]["taints"][1]["key"], "b");
        assert_eq!(doc["spec"]["unschedulable"], true);
    }

    #[test]
    fn strategic_patches_merge_containers_by_name_and_keep_order() {
        let mut deploy = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"}]}}}});
        // What kubectl apply sends when a's image changes and a container c is added.
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "c"}, {"name": "a"}, {"name": "b"}],
            "containers": [{"name": "a", "image": "a:2"}, {"name": "c", "image": "c:1"}]}}}});
        strategic_merge_patch(&mut deploy, &patch).unwrap();
        let containers = &deploy["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers[0]["name"], "c");
        assert_eq!(containers[1]["image"], "a:2");
        assert_eq!(containers[1]["env"][0]["value"], "1");
        assert_eq!(containers[2]["name"], "b");

        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "b", "$patch": "delete"}]}}}});
        strategic_merge_patch(&mut deploy, &patch).unwrap();
        assert_eq!(
            deploy["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn strategic_patches_replace_plain_lists_and_honour_directives() {
        let mut node = json!({"metadata": {"finalizers": ["a"], "labels": {"x": "1", "y": "2"}},
            "spec": {"taints": [{"key": "t1", "effect": "NoSchedule"}]}});
        strategic_merge_patch(
            &mut node,
            &json!({"metadata": {"finalizers": ["b"], "labels": {"x": null}},
                    "spec": {"unschedulable": true, "taints": [{"key": "t2", "effect": "NoExecute"}]}}),
        )
        .unwrap();
        assert_eq!(node["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(node["metadata"]["labels"], json!({"y": "2"}));
        assert_eq!(node["spec"]["taints"].as_array().unwrap().len(), 2);
        assert_eq!(node["spec"]["unschedulable"], true);

        let mut obj = json!({"spec": {"args": ["a", "b"], "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        strategic_merge_patch(
            &mut obj,
            &json!({"spec": {"args": ["c"], "strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}}),
        )
        .unwrap();
        assert_eq!(
            obj,
            json!({"spec": {"args": ["c"], "strategy": {"type": "Recreate"}}})
        );
        strategic_merge_patch(&mut obj, &json!({"spec": {"$patch": "replace", "x": 1}})).unwrap();
        assert_eq!(obj, json!({"spec": {"x": 1}}));
        assert!(strategic_merge_patch(&mut obj, &json!([1])).is_err());
    }
}
