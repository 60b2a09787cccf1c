//! The kube-controller-manager (and kube-scheduler) stand-in: one idempotent pass over a
//! cluster's objects, [`reconcile`], run under the store's lock by every control plane's
//! controller manager (several may run; the lock makes them take turns, as leader election
//! would), plus [`pod_status`], the status a kubelet reports for a pod it runs.
//!
//! What it does, like the real controllers:
//! * namespaces `default`, `kube-system`, `kube-public`, `kube-node-lease` exist;
//! * node lifecycle: a node whose kubelet has not posted status for [`NODE_MONITOR_GRACE`]
//!   becomes `Unknown` and is tainted unreachable; not-ready nodes are tainted not-ready;
//!   nodes get a pod CIDR from the cluster CIDR;
//! * garbage collection: pods and replica sets whose owner is gone, and pods bound to a node
//!   that is gone, are deleted;
//! * DaemonSets run one pod per eligible node (taints and `nodeSelector` honoured, with the
//!   tolerations DaemonSet pods get automatically), replaced when the template changes;
//! * Deployments own one ReplicaSet per template (`<name>-<pod-template-hash>`), older ones are
//!   scaled to 0; ReplicaSets keep `replicas` pods;
//! * scheduling: unbound pods go to the Ready, schedulable node with the fewest pods whose
//!   taints they tolerate and whose labels match their `nodeSelector`;
//! * node lifecycle also marks the pods of a node whose kubelet went silent not Ready (their
//!   phase stays as the kubelet last reported it), as `MarkPodsNotReady` does;
//! * workload statuses (`kubectl get ds/deploy/rs`) are kept up to date;
//! * the disruption controller keeps each PodDisruptionBudget's status (`kubectl get pdb`):
//!   expected and healthy (Ready) pods, and how many disruptions it allows now. Evictions ask
//!   [`budget_allowance`] the same question.
//!
//! Pods do not run anywhere: the kubelet of the pod's node reports them `Running` once the node
//! has a network (or the pod uses the host network), which is what a drain waits on.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde_json::{Map, Value, json};

use crate::clock::{parse_rfc3339, rfc3339};
use crate::ids::{name_suffix, stable_hash};
use crate::store::{Objects, name_of, namespace_of, uid_of};

/// How long a node may be silent before it is `Unknown` (kube-controller-manager's
/// `--node-monitor-grace-period` default).
pub const NODE_MONITOR_GRACE: u64 = 40;
/// Namespaces the API server creates.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Controller settings (from kube-controller-manager's flags).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    /// `--cluster-cidr` when `--allocate-node-cidrs=true`: (network, prefix length).
    pub cluster_cidr: Option<(Ipv4Addr, u8)>,
}

fn text<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Stores `new` when it differs from `old`.
fn save_if_changed(objects: &mut Objects, resource: &str, old: &Value, new: Value, now: u64) {
    if *old != new {
        objects.put(resource, new, now);
    }
}

/// The Ready condition's status of a node (`True`, `False`, `Unknown`, or "" without one).
pub fn node_ready(node: &Value) -> &str {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| text(c, "/type") == "Ready"))
        .map(|c| text(c, "/status"))
        .unwrap_or_default()
}

fn node_internal_ip(node: &Value) -> String {
    node.pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|x| text(x, "/type") == "InternalIP"))
        .map(|x| text(x, "/address").to_string())
        .unwrap_or_default()
}

/// One pass of every controller. Idempotent: a second pass on its result changes nothing
/// except to create the pods scheduling could not place before.
pub fn reconcile(objects: &mut Objects, now: u64, settings: &Settings) {
    ensure_namespaces(objects, now);
    node_lifecycle(objects, now, settings);
    mark_pods_not_ready(objects, now);
    collect_garbage(objects, now);
    daemonsets(objects, now);
    deployments(objects, now);
    replicasets(objects, now);
    schedule(objects, now);
    workload_statuses(objects, now);
    disruption_budgets(objects, now);
}

fn ensure_namespaces(objects: &mut Objects, now: u64) {
    for ns in SYSTEM_NAMESPACES {
        if objects.get("namespaces", "", ns).is_none() {
            objects.put(
                "namespaces",
                json!({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}},
                       "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
                now,
            );
        }
    }
}

fn set_taint(taints: &mut Vec<Value>, key: &str, effect: &str, present: bool, now: u64) {
    let exists = taints
        .iter()
        .any(|t| text(t, "/key") == key && text(t, "/effect") == effect);
    if present && !exists {
        let mut taint = json!({"key": key, "effect": effect});
        if effect == "NoExecute" {
            taint["timeAdded"] = json!(rfc3339(now));
        }
        taints.push(taint);
    } else if !present && exists {
        taints.retain(|t| !(text(t, "/key") == key && text(t, "/effect") == effect));
    }
}

fn node_lifecycle(objects: &mut Objects, now: u64, settings: &Settings) {
    let mut used_cidrs: BTreeSet<String> = objects
        .list("nodes", None)
        .iter()
        .map(|n| text(n, "/spec/podCIDR").to_string())
        .filter(|c| !c.is_empty())
        .collect();
    for old in objects.snapshot("nodes") {
        let mut node = old.clone();
        let heartbeat = node
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| text(c, "/type") == "Ready"))
            .and_then(|c| parse_rfc3339(text(c, "/lastHeartbeatTime")));
        if let Some(beat) = heartbeat
            && now.saturating_sub(beat) > NODE_MONITOR_GRACE
            && node_ready(&node) != "Unknown"
            && let Some(conditions) = node
                .pointer_mut("/status/conditions")
                .and_then(Value::as_array_mut)
        {
            for c in conditions {
                c["status"] = json!("Unknown");
                c["reason"] = json!("NodeStatusUnknown");
                c["message"] = json!("Kubelet stopped posting node status.");
                c["lastTransitionTime"] = json!(rfc3339(now));
            }
        }
        let ready = node_ready(&node).to_string();
        let mut taints = node
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if !ready.is_empty() {
            set_taint(
                &mut taints,
                "node.kubernetes.io/unreachable",
                "NoSchedule",
                ready == "Unknown",
                now,
            );
            set_taint(
                &mut taints,
                "node.kubernetes.io/unreachable",
                "NoExecute",
                ready == "Unknown",
                now,
            );
            set_taint(
                &mut taints,
                "node.kubernetes.io/not-ready",
                "NoSchedule",
                ready == "False",
                now,
            );
        }
        let unschedulable =
            node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true);
        set_taint(
            &mut taints,
            "node.kubernetes.io/unschedulable",
            "NoSchedule",
            unschedulable,
            now,
        );
        if !node.get("spec").is_some_and(Value::is_object) {
            node["spec"] = json!({});
        }
        if taints.is_empty() {
            node["spec"].as_object_mut().map(|s| s.remove("taints"));
        } else {
            node["spec"]["taints"] = json!(taints);
        }
        if let Some((network, prefix)) = settings.cluster_cidr
            && text(&node, "/spec/podCIDR").is_empty()
            && prefix <= 24
        {
            let base = u32::from(network);
            let count = 1u32 << (24 - prefix);
            if let Some(cidr) = (0..count)
                .map(|i| format!("{}/24", Ipv4Addr::from(base + (i << 8))))
                .find(|c| !used_cidrs.contains(c))
            {
                used_cidrs.insert(cidr.clone());
                node["spec"]["podCIDR"] = json!(cidr);
                node["spec"]["podCIDRs"] = json!([cidr]);
            }
        }
        save_if_changed(objects, "nodes", &old, node, now);
    }
}

/// The pods of a node whose kubelet stopped posting status (Ready `Unknown`) are no longer
/// Ready: nobody knows whether they still run.
fn mark_pods_not_ready(objects: &mut Objects, now: u64) {
    let silent: BTreeSet<String> = objects
        .list("nodes", None)
        .into_iter()
        .filter(|n| node_ready(n) == "Unknown")
        .map(|n| name_of(n).to_string())
        .collect();
    if silent.is_empty() {
        return;
    }
    for old in objects.snapshot("pods") {
        if !silent.contains(text(&old, "/spec/nodeName")) {
            continue;
        }
        let mut pod = old.clone();
        if let Some(ready) = pod
            .pointer_mut("/status/conditions")
            .and_then(Value::as_array_mut)
            .and_then(|cs| cs.iter_mut().find(|c| text(c, "/type") == "Ready"))
            && text(ready, "/status") != "False"
        {
            ready["status"] = json!("False");
            ready["lastTransitionTime"] = json!(rfc3339(now));
        }
        save_if_changed(objects, "pods", &old, pod, now);
    }
}

/// The store key of the resource an owner reference's kind names.
fn owner_resource(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "DaemonSet" => "daemonsets.apps",
        "ReplicaSet" => "replicasets.apps",
        "Deployment" => "deployments.apps",
        "StatefulSet" => "statefulsets.apps",
        "Job" => "jobs.batch",
        "CronJob" => "cronjobs.batch",
        "Node" => "nodes",
        _ => return None,
    })
}

fn owner_exists(objects: &Objects, namespace: &str, owner: &Value) -> bool {
    let Some(resource) = owner_resource(text(owner, "/kind")) else {
        return true;
    };
    let namespace = if resource == "nodes" { "" } else { namespace };
    objects
        .get(resource, namespace, text(owner, "/name"))
        .is_some_and(|o| uid_of(o) == text(owner, "/uid"))
}

fn collect_garbage(objects: &mut Objects, _now: u64) {
    for resource in ["replicasets.apps", "pods"] {
        for obj in objects.snapshot(resource) {
            let owners = obj
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let orphaned = !owners.is_empty()
                && !owners
                    .iter()
                    .any(|o| owner_exists(objects, namespace_of(&obj), o));
            let node = text(&obj, "/spec/nodeName");
            let node_gone =
                resource == "pods" && !node.is_empty() && objects.get("nodes", "", node).is_none();
            if orphaned || node_gone {
                objects.remove(resource, namespace_of(&obj), name_of(&obj));
            }
        }
    }
}

fn controller_of(obj: &Value) -> Option<&Value> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .and_then(|os| {
            os.iter()
                .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true))
        })
}

fn owned_by<'a>(objects: &'a Objects, resource: &str, owner: &Value) -> Vec<&'a Value> {
    objects
        .list(resource, Some(namespace_of(owner)))
        .into_iter()
        .filter(|o| controller_of(o).is_some_and(|c| text(c, "/uid") == uid_of(owner)))
        .collect()
}

fn owner_ref(owner: &Value, api_version: &str, kind: &str) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "name": name_of(owner), "uid": uid_of(owner),
           "controller": true, "blockOwnerDeletion": true})
}

/// A pod from a template.
fn new_pod(
    template: &Value,
    namespace: &str,
    name: String,
    owner: Value,
    extra_labels: &Map<String, Value>,
) -> Value {
    let mut labels = template
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    labels.extend(extra_labels.clone());
    let mut spec = template.get("spec").cloned().unwrap_or(json!({}));
    for (k, v) in [
        ("restartPolicy", json!("Always")),
        ("schedulerName", json!("default-scheduler")),
        ("dnsPolicy", json!("ClusterFirst")),
        ("terminationGracePeriodSeconds", json!(30)),
    ] {
        if spec.get(k).is_none() {
            spec[k] = v;
        }
    }
    let mut metadata =
        json!({"name": name, "namespace": namespace, "labels": labels, "ownerReferences": [owner]});
    if let Some(annotations) = template.pointer("/metadata/annotations") {
        metadata["annotations"] = annotations.clone();
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec,
           "status": {"phase": "Pending", "qosClass": "BestEffort"}})
}

/// Whether `tolerations` tolerate `taint`.
fn tolerates(tolerations: &[Value], taint: &Value) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok =
            text(t, "/effect").is_empty() || text(t, "/effect") == text(taint, "/effect");
        let key_ok = text(t, "/key").is_empty() && text(t, "/operator") == "Exists"
            || text(t, "/key") == text(taint, "/key")
                && (text(t, "/operator") == "Exists" || text(t, "/value") == text(taint, "/value"));
        effect_ok && key_ok
    })
}

/// Whether a pod with `spec` may run on `node` (taints with NoSchedule/NoExecute tolerated,
/// `nodeSelector` matched).
fn fits(spec: &Value, node: &Value, extra_tolerations: &[Value]) -> bool {
    let mut tolerations = spec
        .get("tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    tolerations.extend_from_slice(extra_tolerations);
    let taints_ok = node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .is_none_or(|taints| {
            taints
                .iter()
                .filter(|t| matches!(text(t, "/effect"), "NoSchedule" | "NoExecute"))
                .all(|t| tolerates(&tolerations, t))
        });
    let selector_ok = spec
        .get("nodeSelector")
        .and_then(Value::as_object)
        .is_none_or(|sel| {
            sel.iter()
                .all(|(k, v)| node.pointer("/metadata/labels").and_then(|l| l.get(k)) == Some(v))
        });
    taints_ok && selector_ok
}

/// Tolerations the DaemonSet controller adds to its pods.
fn daemonset_tolerations() -> Vec<Value> {
    [
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
        ("node.kubernetes.io/not-ready", "NoSchedule"),
        ("node.kubernetes.io/network-unavailable", "NoSchedule"),
    ]
    .iter()
    .map(|(key, effect)| json!({"key": key, "operator": "Exists", "effect": effect}))
    .collect()
}

fn template_hash(obj: &Value) -> String {
    stable_hash(
        &obj.pointer("/spec/template")
            .cloned()
            .unwrap_or(Value::Null)
            .to_string(),
        10,
    )
}

fn daemonsets(objects: &mut Objects, now: u64) {
    let nodes = objects.snapshot("nodes");
    for ds in objects.snapshot("daemonsets.apps") {
        let namespace = namespace_of(&ds).to_string();
        let hash = template_hash(&ds);
        let template = ds.pointer("/spec/template").cloned().unwrap_or(json!({}));
        let spec = template.get("spec").cloned().unwrap_or(json!({}));
        let tolerations = daemonset_tolerations();
        let pods: Vec<Value> = owned_by(objects, "pods", &ds)
            .into_iter()
            .cloned()
            .collect();
        let eligible: Vec<&Value> = nodes
            .iter()
            .filter(|n| fits(&spec, n, &tolerations))
            .collect();
        for pod in &pods {
            let node = text(pod, "/spec/nodeName");
            let stale = text(pod, "/metadata/labels/controller-revision-hash") != hash;
            if stale || !eligible.iter().any(|n| name_of(n) == node) {
                objects.remove("pods", &namespace, name_of(pod));
            }
        }
        for node in eligible {
            let has_pod = objects.list("pods", Some(&namespace)).iter().any(|p| {
                controller_of(p).is_some_and(|c| text(c, "/uid") == uid_of(&ds))
                    && text(p, "/spec/nodeName") == name_of(node)
            });
            if has_pod {
                continue;
            }
            let mut extra = Map::new();
            extra.insert("controller-revision-hash".into(), json!(hash));
            extra.insert(
                "pod-template-generation".into(),
                json!(
                    ds.pointer("/metadata/generation")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                        .to_string()
                ),
            );
            let mut pod = new_pod(
                &template,
                &namespace,
                format!("{}-{}", name_of(&ds), name_suffix()),
                owner_ref(&ds, "apps/v1", "DaemonSet"),
                &extra,
            );
            pod["spec"]["nodeName"] = json!(name_of(node));
            let mut all = pod["spec"]
                .get("tolerations")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            all.extend(tolerations.iter().cloned());
            pod["spec"]["tolerations"] = json!(all);
            objects.put("pods", pod, now);
        }
    }
}

fn deployments(objects: &mut Objects, now: u64) {
    for deploy in objects.snapshot("deployments.apps") {
        let namespace = namespace_of(&deploy).to_string();
        let hash = template_hash(&deploy);
        let replicas = deploy
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let name = format!("{}-{hash}", name_of(&deploy));
        let owned: Vec<Value> = owned_by(objects, "replicasets.apps", &deploy)
            .into_iter()
            .cloned()
            .collect();
        let revision = owned
            .iter()
            .filter_map(|rs| {
                text(
                    rs,
                    "/metadata/annotations/deployment.kubernetes.io~1revision",
                )
                .parse::<i64>()
                .ok()
            })
            .max()
            .unwrap_or(0);
        for rs in &owned {
            if name_of(rs) != name
                && rs.pointer("/spec/replicas").and_then(Value::as_i64) != Some(0)
            {
                let mut scaled = rs.clone();
                scaled["spec"]["replicas"] = json!(0);
                objects.put("replicasets.apps", scaled, now);
            }
        }
        match owned.iter().find(|rs| name_of(rs) == name) {
            Some(rs) => {
                if rs.pointer("/spec/replicas").and_then(Value::as_i64) != Some(replicas) {
                    let mut scaled = rs.clone();
                    scaled["spec"]["replicas"] = json!(replicas);
                    objects.put("replicasets.apps", scaled, now);
                }
            }
            None => {
                let mut template = deploy
                    .pointer("/spec/template")
                    .cloned()
                    .unwrap_or(json!({}));
                template["metadata"]["labels"]["pod-template-hash"] = json!(hash);
                let mut selector = deploy
                    .pointer("/spec/selector")
                    .cloned()
                    .unwrap_or(json!({}));
                selector["matchLabels"]["pod-template-hash"] = json!(hash);
                let mut labels = deploy
                    .pointer("/spec/template/metadata/labels")
                    .cloned()
                    .unwrap_or(json!({}));
                labels["pod-template-hash"] = json!(hash);
                objects.put(
                    "replicasets.apps",
                    json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                           "metadata": {"name": name, "namespace": namespace, "labels": labels, "generation": 1,
                                        "annotations": {"deployment.kubernetes.io/revision": (revision + 1).to_string(),
                                                        "deployment.kubernetes.io/desired-replicas": replicas.to_string()},
                                        "ownerReferences": [owner_ref(&deploy, "apps/v1", "Deployment")]},
                           "spec": {"replicas": replicas, "selector": selector, "template": template}}),
                    now,
                );
            }
        }
    }
}

fn replicasets(objects: &mut Objects, now: u64) {
    for rs in objects.snapshot("replicasets.apps") {
        let namespace = namespace_of(&rs).to_string();
        let replicas = rs
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let mut pods: Vec<Value> = owned_by(objects, "pods", &rs)
            .into_iter()
            .cloned()
            .collect();
        // Unscheduled first, then newest: the ones a real ReplicaSet deletes first.
        pods.sort_by_key(|p| {
            (
                !text(p, "/spec/nodeName").is_empty(),
                std::cmp::Reverse(
                    parse_rfc3339(text(p, "/metadata/creationTimestamp")).unwrap_or(0),
                ),
            )
        });
        let have = i64::try_from(pods.len()).unwrap_or(i64::MAX);
        for pod in pods
            .iter()
            .take(usize::try_from(have - replicas).unwrap_or(0))
        {
            objects.remove("pods", &namespace, name_of(pod));
        }
        let template = rs.pointer("/spec/template").cloned().unwrap_or(json!({}));
        for _ in have..replicas {
            let pod = new_pod(
                &template,
                &namespace,
                format!("{}-{}", name_of(&rs), name_suffix()),
                owner_ref(&rs, "apps/v1", "ReplicaSet"),
                &Map::new(),
            );
            objects.put("pods", pod, now);
        }
    }
}

fn schedule(objects: &mut Objects, now: u64) {
    let nodes: Vec<Value> = objects
        .snapshot("nodes")
        .into_iter()
        .filter(|n| node_ready(n) == "True")
        .filter(|n| n.pointer("/spec/unschedulable").and_then(Value::as_bool) != Some(true))
        .collect();
    for old in objects.snapshot("pods") {
        if !text(&old, "/spec/nodeName").is_empty() {
            continue;
        }
        let spec = old.get("spec").cloned().unwrap_or(json!({}));
        let load = |node: &Value| {
            objects
                .list("pods", None)
                .iter()
                .filter(|p| text(p, "/spec/nodeName") == name_of(node))
                .count()
        };
        let best = nodes
            .iter()
            .filter(|n| fits(&spec, n, &[]))
            .min_by_key(|n| (load(n), name_of(n).to_string()));
        let mut pod = old.clone();
        match best {
            Some(node) => {
                pod["spec"]["nodeName"] = json!(name_of(node));
                pod["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "True", "lastTransitionTime": rfc3339(now)}]);
            }
            None => {
                let already = text(&old, "/status/conditions/0/reason") == "Unschedulable";
                if !already {
                    pod["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                        "message": format!("0/{} nodes are available: no node is Ready, schedulable and tolerated by the pod.", objects.list("nodes", None).len()),
                        "lastTransitionTime": rfc3339(now)}]);
                }
            }
        }
        save_if_changed(objects, "pods", &old, pod, now);
    }
}

/// Whether a pod is Running with its Ready condition True (what "healthy" and "available"
/// mean to the workload and disruption controllers).
pub fn pod_ready(pod: &Value) -> bool {
    text(pod, "/status/phase") == "Running"
        && pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| text(c, "/type") == "Ready" && text(c, "/status") == "True")
            })
}

fn pod_counts(pods: &[&Value]) -> (i64, i64) {
    let total = i64::try_from(pods.len()).unwrap_or(0);
    let ready = i64::try_from(pods.iter().filter(|p| pod_ready(p)).count()).unwrap_or(0);
    (total, ready)
}

fn workload_statuses(objects: &mut Objects, now: u64) {
    for rs in objects.snapshot("replicasets.apps") {
        let pods = owned_by(objects, "pods", &rs);
        let (total, ready) = pod_counts(&pods);
        let mut next = rs.clone();
        next["status"] = json!({"replicas": total, "fullyLabeledReplicas": total, "readyReplicas": ready,
            "availableReplicas": ready, "observedGeneration": rs.pointer("/metadata/generation").cloned().unwrap_or(json!(1))});
        save_if_changed(objects, "replicasets.apps", &rs, next, now);
    }
    for deploy in objects.snapshot("deployments.apps") {
        let hash = template_hash(&deploy);
        let sets = owned_by(objects, "replicasets.apps", &deploy);
        let mut all = Vec::new();
        let mut updated = 0;
        for rs in &sets {
            let pods = owned_by(objects, "pods", rs);
            if text(rs, "/metadata/labels/pod-template-hash") == hash {
                updated = i64::try_from(pods.len()).unwrap_or(0);
            }
            all.extend(pods);
        }
        let (total, ready) = pod_counts(&all);
        let wanted = deploy
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let available = ready >= wanted;
        let mut next = deploy.clone();
        let transition = deploy
            .pointer("/status/conditions/0")
            .filter(|c| text(c, "/status") == if available { "True" } else { "False" })
            .map_or_else(
                || rfc3339(now),
                |c| text(c, "/lastTransitionTime").to_string(),
            );
        next["status"] = json!({
            "observedGeneration": deploy.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
            "replicas": total, "updatedReplicas": updated, "readyReplicas": ready, "availableReplicas": ready,
            "unavailableReplicas": (wanted - ready).max(0),
            "conditions": [{"type": "Available", "status": if available { "True" } else { "False" },
                "reason": if available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
                "message": if available { "Deployment has minimum availability." } else { "Deployment does not have minimum availability." },
                "lastTransitionTime": transition, "lastUpdateTime": transition}],
        });
        if ready == 0 {
            next["status"]
                .as_object_mut()
                .map(|s| s.remove("readyReplicas"));
        }
        save_if_changed(objects, "deployments.apps", &deploy, next, now);
    }
    let nodes = objects.snapshot("nodes");
    for ds in objects.snapshot("daemonsets.apps") {
        let hash = template_hash(&ds);
        let spec = ds
            .pointer("/spec/template/spec")
            .cloned()
            .unwrap_or(json!({}));
        let desired = i64::try_from(
            nodes
                .iter()
                .filter(|n| fits(&spec, n, &daemonset_tolerations()))
                .count(),
        )
        .unwrap_or(0);
        let pods = owned_by(objects, "pods", &ds);
        let (current, ready) = pod_counts(&pods);
        let updated = i64::try_from(
            pods.iter()
                .filter(|p| text(p, "/metadata/labels/controller-revision-hash") == hash)
                .count(),
        )
        .unwrap_or(0);
        let mut next = ds.clone();
        next["status"] = json!({"desiredNumberScheduled": desired, "currentNumberScheduled": current, "numberReady": ready,
            "updatedNumberScheduled": updated, "numberAvailable": ready, "numberMisscheduled": 0,
            "numberUnavailable": (desired - ready).max(0),
            "observedGeneration": ds.pointer("/metadata/generation").cloned().unwrap_or(json!(1))});
        save_if_changed(objects, "daemonsets.apps", &ds, next, now);
    }
}

/// What a PodDisruptionBudget allows now, as the disruption controller computes it (and the
/// eviction subresource checks it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    /// Pods the budget selects.
    pub expected: i64,
    /// Of those, the Running and Ready ones.
    pub current_healthy: i64,
    /// How many must stay healthy (`minAvailable`, or `expected - maxUnavailable`).
    pub desired_healthy: i64,
    /// How many may be evicted now; never negative.
    pub disruptions_allowed: i64,
}

/// Whether `pdb` selects `pod` (same namespace; in policy/v1 an empty selector selects every
/// pod of the namespace, a missing one none).
pub fn budget_selects(pdb: &Value, pod: &Value) -> bool {
    if namespace_of(pdb) != namespace_of(pod) {
        return false;
    }
    match pdb.pointer("/spec/selector") {
        Some(Value::Object(selector))
            if selector.values().all(|v| match v {
                Value::Object(m) => m.is_empty(),
                Value::Array(a) => a.is_empty(),
                _ => v.is_null(),
            }) =>
        {
            true
        }
        selector => crate::selectors::matches_selector(selector, pod.pointer("/metadata/labels")),
    }
}

/// The allowance of `pdb` over the pods in `objects`; `None` when it sets neither
/// `minAvailable` nor `maxUnavailable` (the API server refuses such a budget).
pub fn budget_allowance(objects: &Objects, pdb: &Value) -> Option<Allowance> {
    let selected: Vec<&Value> = objects
        .list("pods", Some(namespace_of(pdb)))
        .into_iter()
        .filter(|p| budget_selects(pdb, p))
        .collect();
    let expected = i64::try_from(selected.len()).unwrap_or(i64::MAX);
    let current_healthy =
        i64::try_from(selected.iter().filter(|p| pod_ready(p)).count()).unwrap_or(i64::MAX);
    // Integers as given; percentages of the selected pods, rounded up.
    let resolve = |v: &Value| -> Option<i64> {
        match v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s
                .strip_suffix('%')
                .and_then(|p| p.parse::<i64>().ok())
                .map(|p| (p * expected + 99) / 100),
            _ => None,
        }
    };
    let desired_healthy = if let Some(min) = pdb.pointer("/spec/minAvailable").and_then(resolve) {
        min
    } else {
        let max = pdb.pointer("/spec/maxUnavailable").and_then(resolve)?;
        (expected - max).max(0)
    };
    Some(Allowance {
        expected,
        current_healthy,
        desired_healthy,
        disruptions_allowed: (current_healthy - desired_healthy).max(0),
    })
}

/// The disruption controller: every PodDisruptionBudget's status.
fn disruption_budgets(objects: &mut Objects, now: u64) {
    for pdb in objects.snapshot("poddisruptionbudgets.policy") {
        let Some(allowance) = budget_allowance(objects, &pdb) else {
            continue;
        };
        let generation = pdb
            .pointer("/metadata/generation")
            .cloned()
            .unwrap_or(json!(1));
        let allowed = allowance.disruptions_allowed > 0;
        let status = if allowed { "True" } else { "False" };
        let transition = pdb
            .pointer("/status/conditions/0")
            .filter(|c| text(c, "/status") == status)
            .map_or_else(
                || rfc3339(now),
                |c| text(c, "/lastTransitionTime").to_string(),
            );
        let mut next = pdb.clone();
        next["status"] = json!({
            "observedGeneration": generation,
            "disruptionsAllowed": allowance.disruptions_allowed,
            "currentHealthy": allowance.current_healthy,
            "desiredHealthy": allowance.desired_healthy,
            "expectedPods": allowance.expected,
            "conditions": [{"type": "DisruptionAllowed", "status": status,
                "reason": if allowed { "SufficientPods" } else { "InsufficientPods" },
                "message": "", "observedGeneration": generation, "lastTransitionTime": transition}],
        });
        save_if_changed(objects, "poddisruptionbudgets.policy", &pdb, next, now);
    }
}

/// What the kubelet knows of a pod's containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodState {
    /// Started and running: phase `Running`, Ready.
    Running,
    /// Not started yet (no pod network yet, or a static pod whose new manifest is not running
    /// yet): phase `Pending`, containers waiting in `ContainerCreating`, not Ready.
    Creating,
    /// Started before, now exited and waiting to be restarted: phase `Running`, containers
    /// waiting in `CrashLoopBackOff`, not Ready.
    Restarting,
}

/// The status the kubelet of `node` reports for `pod`: `Running` and ready when the node has
/// a pod network or the pod uses the host's, else `Pending` with its containers waiting in
/// `ContainerCreating`. `network_ready` says whether a CNI is installed.
pub fn pod_status(pod: &Value, node: &Value, network_ready: bool, now: u64) -> Value {
    let host_network = pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true);
    let state = if network_ready || host_network {
        PodState::Running
    } else {
        PodState::Creating
    };
    pod_status_in(pod, node, state, now)
}

/// The status the kubelet of `node` reports for `pod` in `state`; `now` is its start time
/// unless the pod already has one.
pub fn pod_status_in(pod: &Value, node: &Value, state: PodState, now: u64) -> Value {
    let host_network = pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true);
    let running = state == PodState::Running;
    let started_once = state != PodState::Creating;
    let host_ip = node_internal_ip(node);
    let started = pod
        .pointer("/status/startTime")
        .and_then(Value::as_str)
        .map_or_else(|| rfc3339(now), str::to_string);
    let names = |field: &str| -> Vec<(String, String)> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .map(|c| (text(c, "/name").to_string(), text(c, "/image").to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let container_status = |(name, image): &(String, String), init: bool| {
        let container = if init && started_once {
            json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started, "finishedAt": started}})
        } else if running {
            json!({"running": {"startedAt": started}})
        } else if started_once {
            json!({"waiting": {"reason": "CrashLoopBackOff", "message": format!("back-off restarting failed container {name}")}})
        } else {
            json!({"waiting": {"reason": if init { "PodInitializing" } else { "ContainerCreating" }}})
        };
        json!({"name": name, "image": image, "imageID": "", "ready": running && !init,
               "restartCount": i32::from(state == PodState::Restarting), "started": running && !init, "state": container})
    };
    let pod_ip = if host_network {
        host_ip.clone()
    } else if started_once {
        pod_ip(pod, node)
    } else {
        String::new()
    };
    let condition = |kind: &str, ok: bool| json!({"type": kind, "status": if ok { "True" } else { "False" }, "lastTransitionTime": started});
    let mut status = json!({
        "phase": if started_once { "Running" } else { "Pending" },
        "conditions": [
            condition("Initialized", started_once),
            condition("Ready", running),
            condition("ContainersReady", running),
            condition("PodScheduled", true),
        ],
        "hostIP": host_ip,
        "startTime": started,
        "qosClass": "BestEffort",
        "containerStatuses": names("containers").iter().map(|c| container_status(c, false)).collect::<Vec<_>>(),
    });
    let init = names("initContainers");
    if !init.is_empty() {
        status["initContainerStatuses"] = json!(
            init.iter()
                .map(|c| container_status(c, true))
                .collect::<Vec<_>>()
        );
    }
    if !pod_ip.is_empty() {
        status["podIP"] = json!(pod_ip);
        status["podIPs"] = json!([{"ip": pod_ip}]);
    }
    status
}

/// A stable address for `pod` inside its node's pod CIDR.
fn pod_ip(pod: &Value, node: &Value) -> String {
    let cidr = text(node, "/spec/podCIDR");
    let Some(base) = cidr
        .split('/')
        .next()
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
    else {
        return String::new();
    };
    let digest = stable_hash(uid_of(pod), 2);
    let host = 2 + digest.bytes().map(u32::from).sum::<u32>() % 250;
    Ipv4Addr::from(u32::from(base) + host).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn node(objects: &mut Objects, name: &str, ready: &str, taints: Value) {
        objects.put(
            "nodes",
            json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                   "spec": {"taints": taints},
                   "status": {"conditions": [{"type": "Ready", "status": ready, "lastHeartbeatTime": rfc3339(NOW)}]}}),
            NOW,
        );
    }

    fn pods_of<'a>(objects: &'a Objects, prefix: &str) -> Vec<&'a Value> {
        objects
            .list("pods", None)
            .into_iter()
            .filter(|p| name_of(p).starts_with(prefix))
            .collect()
    }

    #[test]
    fn daemonsets_cover_every_tolerated_node_and_deployments_schedule_on_ready_ones() {
        let mut o = Objects::default();
        node(
            &mut o,
            "cp-1",
            "True",
            json!([{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]),
        );
        node(&mut o, "w-1", "True", json!([]));
        node(&mut o, "w-2", "False", json!([]));
        let template = json!({"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        o.put(
            "daemonsets.apps",
            json!({"metadata": {"name": "ds", "namespace": "kube-system"},
            "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template}}),
            NOW,
        );
        o.put("deployments.apps", json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "x"}}, "template": template}}), NOW);
        reconcile(&mut o, NOW, &Settings::default());
        let ds_nodes: BTreeSet<&str> = pods_of(&o, "ds-")
            .iter()
            .map(|p| text(p, "/spec/nodeName"))
            .collect();
        assert_eq!(
            ds_nodes,
            BTreeSet::from(["w-1", "w-2"]),
            "the control-plane taint is not tolerated"
        );
        let web: Vec<String> = pods_of(&o, "web-")
            .iter()
            .map(|p| name_of(p).to_string())
            .collect();
        assert_eq!(web.len(), 2);
        assert!(
            pods_of(&o, "web-")
                .iter()
                .all(|p| text(p, "/spec/nodeName") == "w-1"),
            "only w-1 is Ready and untainted"
        );
        // Idempotent.
        let before = o.clone();
        reconcile(&mut o, NOW, &Settings::default());
        assert_eq!(o, before);

        // Drained: an evicted pod comes back elsewhere only when a node can take it.
        let mut w1 = o.get("nodes", "", "w-1").unwrap().clone();
        w1["spec"]["unschedulable"] = json!(true);
        o.put("nodes", w1, NOW);
        o.remove("pods", "default", &web[0]);
        reconcile(&mut o, NOW, &Settings::default());
        let web = pods_of(&o, "web-");
        assert_eq!(web.len(), 2);
        assert!(
            web.iter().any(|p| text(p, "/spec/nodeName").is_empty()),
            "pending: no schedulable Ready node"
        );
    }

    #[test]
    fn silent_nodes_become_unknown_and_their_pods_go_with_them() {
        let mut o = Objects::default();
        node(&mut o, "w-1", "True", json!([]));
        o.put(
            "pods",
            json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {"nodeName": "w-1"}}),
            NOW,
        );
        reconcile(
            &mut o,
            NOW + NODE_MONITOR_GRACE + 1,
            &Settings {
                cluster_cidr: Some((Ipv4Addr::new(10, 244, 0, 0), 16)),
            },
        );
        let n = o.get("nodes", "", "w-1").unwrap();
        assert_eq!(node_ready(n), "Unknown");
        assert_eq!(text(n, "/spec/podCIDR"), "10.244.0.0/24");
        assert!(
            n["spec"]["taints"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| text(t, "/key") == "node.kubernetes.io/unreachable")
        );
        o.remove("nodes", "", "w-1");
        reconcile(&mut o, NOW, &Settings::default());
        assert!(o.get("pods", "default", "p").is_none());
    }

    #[test]
    fn budgets_report_what_they_allow_and_select_as_policy_v1_does() {
        let mut o = Objects::default();
        node(&mut o, "w-1", "True", json!([]));
        let pod = |o: &mut Objects, name: &str, app: &str, ready: &str| {
            o.put(
                "pods",
                json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
                       "spec": {"nodeName": "w-1"}, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": ready}]}}),
                NOW,
            );
        };
        pod(&mut o, "web-1", "web", "True");
        pod(&mut o, "web-2", "web", "True");
        pod(&mut o, "db-1", "db", "False");
        let budget = |name: &str, spec: Value| {
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                   "metadata": {"name": name, "namespace": "default", "generation": 1}, "spec": spec})
        };
        let all = budget(
            "all",
            json!({"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}),
        );
        assert_eq!(
            budget_allowance(&o, &all),
            Some(Allowance {
                expected: 2,
                current_healthy: 2,
                desired_healthy: 2,
                disruptions_allowed: 0
            })
        );
        let half = budget(
            "half",
            json!({"maxUnavailable": "50%", "selector": {"matchLabels": {"app": "web"}}}),
        );
        assert_eq!(budget_allowance(&o, &half).unwrap().disruptions_allowed, 1);
        // An empty selector selects every pod of the namespace; the not-Ready one is not healthy.
        let everything = budget("everything", json!({"minAvailable": 1, "selector": {}}));
        let allowance = budget_allowance(&o, &everything).unwrap();
        assert_eq!((allowance.expected, allowance.current_healthy), (3, 2));
        assert!(budget_allowance(&o, &budget("neither", json!({"selector": {}}))).is_none());

        o.put("poddisruptionbudgets.policy", all, NOW);
        reconcile(&mut o, NOW, &Settings::default());
        let status = &o
            .get("poddisruptionbudgets.policy", "default", "all")
            .unwrap()["status"];
        assert_eq!(status["disruptionsAllowed"], 0);
        assert_eq!(status["currentHealthy"], 2);
        assert_eq!(status["desiredHealthy"], 2);
        assert_eq!(status["expectedPods"], 2);
        assert_eq!(status["conditions"][0]["reason"], "InsufficientPods");
    }

    #[test]
    fn the_pods_of_a_silent_node_are_no_longer_ready() {
        let mut o = Objects::default();
        node(&mut o, "w-1", "True", json!([]));
        let running = pod_status(
            &json!({"spec": {"containers": [{"name": "c", "image": "i"}]}}),
            o.get("nodes", "", "w-1").unwrap(),
            true,
            NOW,
        );
        o.put(
            "pods",
            json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {"nodeName": "w-1"}, "status": running}),
            NOW,
        );
        reconcile(&mut o, NOW, &Settings::default());
        assert!(pod_ready(o.get("pods", "default", "p").unwrap()));
        reconcile(&mut o, NOW + NODE_MONITOR_GRACE + 1, &Settings::default());
        let pod = o.get("pods", "default", "p").unwrap();
        assert!(!pod_ready(pod));
        assert_eq!(
            pod["status"]["phase"], "Running",
            "the phase stays as last reported"
        );
    }

    #[test]
    fn a_restarting_pod_runs_but_is_not_ready_and_a_new_one_is_pending() {
        let node = json!({"metadata": {"name": "n"}, "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}});
        let pod =
            json!({"spec": {"hostNetwork": true, "containers": [{"name": "c", "image": "i"}]}});
        let restarting = pod_status_in(&pod, &node, PodState::Restarting, NOW);
        assert_eq!(restarting["phase"], "Running");
        assert!(!pod_ready(&json!({"status": restarting})));
        assert_eq!(
            restarting["containerStatuses"][0]["state"]["waiting"]["reason"],
            "CrashLoopBackOff"
        );
        let creating = pod_status_in(&pod, &node, PodState::Creating, NOW);
        assert_eq!(creating["phase"], "Pending");
        let running = pod_status_in(&pod, &node, PodState::Running, NOW);
        assert!(pod_ready(&json!({"status": running})));
    }

    #[test]
    fn pods_run_once_the_node_has_a_network() {
        let node = json!({"metadata": {"name": "n"}, "spec": {"podCIDR": "10.244.1.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}});
        let pod = json!({"metadata": {"uid": "u"}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        assert_eq!(pod_status(&pod, &node, false, NOW)["phase"], "Pending");
        let running = pod_status(&pod, &node, true, NOW);
        assert_eq!(running["phase"], "Running");
        assert!(text(&running, "/podIP").starts_with("10.244.1."));
        let mut host = pod.clone();
        host["spec"]["hostNetwork"] = json!(true);
        assert_eq!(pod_status(&host, &node, false, NOW)["podIP"], "10.0.0.1");
    }
}
