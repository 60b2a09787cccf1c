//! kubectl for the controller's commands: apply manifests, read nodes and kube-system's pods,
//! cordon/drain/uncordon, delete a node. Always with an explicit `--kubeconfig` (admin.conf on
//! control planes, kubelet.conf for a node's own status), never the ambient `~/.kube/config`.
//!
//! A drain is bounded by its timeout. When it fails because PodDisruptionBudgets refused
//! evictions, [`KubectlError::DrainBlocked`] names the pods kubectl could not evict (from its
//! "Cannot evict pod as it would violate the pod's disruption budget" lines) and the budgets
//! that select them (kubectl does not name them, so they are read back from the API).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use cks_proto::agent::{KubeNode, SystemPod};
use serde::Deserialize;
use tracing::warn;

/// How long a drain may take when the controller gives no timeout.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest any kubectl run may take (a drain's own timeout is shorter); the running command's
/// deadline cuts it further ([`crate::process`]).
pub const KUBECTL_LIMIT: Duration = Duration::from_secs(30 * 60);
/// The namespace of the cluster's own pods (control plane, kube-proxy, DNS, CNI).
const KUBE_SYSTEM: &str = "kube-system";
/// What kubectl drain prints for an eviction a PodDisruptionBudget refused.
const BUDGET_REFUSAL: &str = "disruption budget";
/// What kubectl drain prints for a pod still on the node at its timeout.
const DRAIN_TIMED_OUT: &str = "global timeout reached";

/// Why a kubectl command failed.
#[derive(Debug, thiserror::Error)]
pub enum KubectlError {
    /// kubectl could not be started.
    #[error("failed to run {binary:?}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// kubectl ran and failed.
    #[error("kubectl {command} failed with exit code {code:?}: {stderr}")]
    Failed {
        /// What was run (`apply`, `drain`…).
        command: String,
        /// Exit code.
        code: Option<i32>,
        /// Its stderr, trimmed.
        stderr: String,
    },
    /// kubectl's output could not be understood.
    #[error("kubectl {command} printed unexpected output: {reason}")]
    Output {
        /// What was run.
        command: String,
        /// Why.
        reason: String,
    },
    /// A node name that kubectl would take for something else.
    #[error("invalid node name {0:?}")]
    InvalidName(String),
    /// PodDisruptionBudgets refused evictions until the drain's timeout. The node stays cordoned.
    #[error(
        "drain of node {node} blocked by a PodDisruptionBudget: cannot evict {} ({}) within {}s; the node stays cordoned",
        plural("pod", pods),
        describe_budgets(budgets),
        timeout.as_secs()
    )]
    DrainBlocked {
        /// The node being drained.
        node: String,
        /// The pods kubectl could not evict, as `namespace/name`.
        pods: Vec<String>,
        /// The budgets that select them, as `namespace/name`; empty when they could not be read.
        budgets: Vec<String>,
        /// The drain's timeout.
        timeout: Duration,
    },
}

/// kubectl with one kubeconfig.
#[derive(Debug, Clone)]
pub struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
    /// `--request-timeout` for every request, when set.
    request_timeout: Option<Duration>,
}

#[derive(Deserialize)]
struct NodeList {
    items: Vec<NodeObject>,
}

#[derive(Deserialize)]
struct NodeObject {
    metadata: Metadata,
    #[serde(default)]
    status: NodeStatusObject,
}

#[derive(Deserialize)]
struct Metadata {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct PodList {
    items: Vec<PodObject>,
}

#[derive(Deserialize)]
struct PodObject {
    metadata: Metadata,
    #[serde(default)]
    spec: PodSpecObject,
    #[serde(default)]
    status: PodStatusObject,
}

#[derive(Default, Deserialize)]
struct PodSpecObject {
    #[serde(default, rename = "nodeName")]
    node_name: String,
}

#[derive(Default, Deserialize)]
struct PodStatusObject {
    #[serde(default)]
    phase: String,
    #[serde(default)]
    conditions: Vec<Condition>,
}

#[derive(Deserialize)]
struct BudgetList {
    items: Vec<BudgetObject>,
}

#[derive(Deserialize)]
struct BudgetObject {
    metadata: Metadata,
    #[serde(default)]
    spec: BudgetSpec,
}

#[derive(Default, Deserialize)]
struct BudgetSpec {
    /// policy/v1: missing selects no pod, empty selects every pod of the namespace.
    #[serde(default)]
    selector: Option<LabelSelector>,
}

#[derive(Default, Deserialize)]
struct LabelSelector {
    #[serde(default, rename = "matchLabels")]
    match_labels: BTreeMap<String, String>,
    #[serde(default, rename = "matchExpressions")]
    match_expressions: Vec<LabelRequirement>,
}

#[derive(Deserialize)]
struct LabelRequirement {
    key: String,
    operator: String,
    #[serde(default)]
    values: Vec<String>,
}

#[derive(Default, Deserialize)]
struct NodeStatusObject {
    #[serde(default)]
    conditions: Vec<Condition>,
    #[serde(default, rename = "nodeInfo")]
    node_info: NodeInfo,
}

#[derive(Deserialize)]
struct Condition {
    #[serde(rename = "type")]
    kind: String,
    status: String,
}

#[derive(Default, Deserialize)]
struct NodeInfo {
    #[serde(default, rename = "kubeletVersion")]
    kubelet_version: String,
}

impl Kubectl {
    /// kubectl at `binary` using `kubeconfig`.
    pub fn new(binary: PathBuf, kubeconfig: PathBuf) -> Self {
        Kubectl {
            binary,
            kubeconfig,
            request_timeout: None,
        }
    }

    /// The same kubectl, giving up on any request the API server does not answer in `timeout`.
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// `kubectl apply -f FILE`.
    ///
    /// # Errors
    /// [`KubectlError`].
    pub fn apply_file(&self, file: &Path) -> Result<String, KubectlError> {
        let file = file.to_string_lossy();
        self.run("apply", &["apply", "-f", &file])
    }

    /// Every node, with readiness, kubelet version and roles.
    ///
    /// # Errors
    /// [`KubectlError`].
    pub fn nodes(&self) -> Result<Vec<KubeNode>, KubectlError> {
        let out = self.run("get nodes", &["get", "nodes", "-o", "json"])?;
        let list: NodeList = serde_json::from_str(&out).map_err(|err| KubectlError::Output {
            command: "get nodes".into(),
            reason: err.to_string(),
        })?;
        Ok(list.items.into_iter().map(kube_node).collect())
    }

    /// One node, or `None` when it is not registered.
    ///
    /// # Errors
    /// [`KubectlError`] other than "not found".
    pub fn node(&self, name: &str) -> Result<Option<KubeNode>, KubectlError> {
        check_name(name)?;
        match self.run("get node", &["get", "node", name, "-o", "json"]) {
            Ok(out) => {
                let node: NodeObject =
                    serde_json::from_str(&out).map_err(|err| KubectlError::Output {
                        command: "get node".into(),
                        reason: err.to_string(),
                    })?;
                Ok(Some(kube_node(node)))
            }
            Err(KubectlError::Failed { stderr, .. }) if stderr.contains("NotFound") => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Every pod in kube-system, with its node, phase and readiness.
    ///
    /// # Errors
    /// [`KubectlError`].
    pub fn system_pods(&self) -> Result<Vec<SystemPod>, KubectlError> {
        Ok(self
            .pods_in(KUBE_SYSTEM)?
            .into_iter()
            .map(system_pod)
            .collect())
    }

    /// `kubectl drain` (cordons first), evicting with `grace_seconds`, giving up after
    /// `timeout` (whole seconds, at least one).
    ///
    /// # Errors
    /// [`KubectlError::DrainBlocked`] when PodDisruptionBudgets refused evictions until the
    /// timeout; other [`KubectlError`]s otherwise. Either way the node stays cordoned.
    pub fn drain(
        &self,
        name: &str,
        grace_seconds: u32,
        timeout: Duration,
    ) -> Result<(), KubectlError> {
        check_name(name)?;
        let timeout = Duration::from_secs(timeout.as_secs().max(1));
        let grace = format!("--grace-period={}", i64::from(grace_seconds).max(1));
        let timeout_flag = format!("--timeout={}s", timeout.as_secs());
        let out = self.output(&[
            "drain",
            name,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--force",
            &grace,
            &timeout_flag,
        ])?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let refused = refused_evictions(&stderr);
        if refused.is_empty() {
            return Err(failed("drain", &out));
        }
        let budgets = match self.budgets_selecting(&refused) {
            Ok(budgets) => budgets,
            Err(err) => {
                warn!(node = name, error = %crate::session::identity::error_chain(&err), "cannot read the PodDisruptionBudgets that blocked the drain");
                Vec::new()
            }
        };
        Err(KubectlError::DrainBlocked {
            node: name.to_string(),
            pods: refused
                .iter()
                .map(|(namespace, pod)| format!("{namespace}/{pod}"))
                .collect(),
            budgets,
            timeout,
        })
    }

    /// The budgets (`namespace/name`) that select any of `pods` (namespace, name).
    fn budgets_selecting(
        &self,
        pods: &BTreeSet<(String, String)>,
    ) -> Result<Vec<String>, KubectlError> {
        let namespaces: BTreeSet<&str> = pods.iter().map(|(ns, _)| ns.as_str()).collect();
        let mut found = BTreeSet::new();
        for namespace in namespaces {
            let budgets = self.budgets_in(namespace)?;
            for pod in self.pods_in(namespace)? {
                if !pods.contains(&(namespace.to_string(), pod.metadata.name.clone())) {
                    continue;
                }
                for budget in budgets.iter().filter(|b| selects(b, &pod.metadata.labels)) {
                    found.insert(format!("{namespace}/{}", budget.metadata.name));
                }
            }
        }
        Ok(found.into_iter().collect())
    }

    fn pods_in(&self, namespace: &str) -> Result<Vec<PodObject>, KubectlError> {
        let out = self.run("get pods", &["get", "pods", "-n", namespace, "-o", "json"])?;
        let list: PodList = serde_json::from_str(&out).map_err(|err| KubectlError::Output {
            command: "get pods".into(),
            reason: err.to_string(),
        })?;
        Ok(list.items)
    }

    fn budgets_in(&self, namespace: &str) -> Result<Vec<BudgetObject>, KubectlError> {
        let out = self.run(
            "get poddisruptionbudgets",
            &["get", "poddisruptionbudgets", "-n", namespace, "-o", "json"],
        )?;
        let list: BudgetList = serde_json::from_str(&out).map_err(|err| KubectlError::Output {
            command: "get poddisruptionbudgets".into(),
            reason: err.to_string(),
        })?;
        Ok(list.items)
    }

    /// `kubectl uncordon`.
    ///
    /// # Errors
    /// [`KubectlError`].
    pub fn uncordon(&self, name: &str) -> Result<(), KubectlError> {
        check_name(name)?;
        self.run("uncordon", &["uncordon", name]).map(drop)
    }

    /// `kubectl delete node`; a node already gone is fine.
    ///
    /// # Errors
    /// [`KubectlError`].
    pub fn delete_node(&self, name: &str) -> Result<(), KubectlError> {
        check_name(name)?;
        self.run(
            "delete node",
            &["delete", "node", name, "--ignore-not-found"],
        )
        .map(drop)
    }

    fn run(&self, command: &str, args: &[&str]) -> Result<String, KubectlError> {
        let out = self.output(args)?;
        if !out.status.success() {
            return Err(failed(command, &out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs kubectl with `args`, whatever its exit status.
    fn output(&self, args: &[&str]) -> Result<Output, KubectlError> {
        let kubeconfig = self.kubeconfig.to_string_lossy();
        let mut command = Command::new(&self.binary);
        command.arg("--kubeconfig").arg(kubeconfig.as_ref());
        if let Some(timeout) = self.request_timeout {
            command.arg(format!("--request-timeout={}s", timeout.as_secs().max(1)));
        }
        crate::process::output_within(command.args(args).env_remove("KUBECONFIG"), KUBECTL_LIMIT)
            .map_err(|source| KubectlError::Spawn {
                binary: self.binary.clone(),
                source,
            })
    }
}

fn failed(command: &str, out: &Output) -> KubectlError {
    let stderr = String::from_utf8_lossy(&out.stderr);
    KubectlError::Failed {
        command: command.to_string(),
        code: out.status.code(),
        stderr: truncate(stderr.trim(), 2000),
    }
}

/// The pods (namespace, name) a disruption budget kept on the node, from kubectl drain's
/// stderr: those whose eviction it reports refused (`error when evicting pods/"web-1" -n
/// "default" (will retry after 5s): Cannot evict pod as it would violate the pod's disruption
/// budget.`) and, when it lists the pods left at its timeout (`error when evicting
/// pods/"web-1" -n "default": global timeout reached: 5s`), among those: a pod refused once
/// and evicted later did not block the drain.
fn refused_evictions(stderr: &str) -> BTreeSet<(String, String)> {
    let mut refused = BTreeSet::new();
    let mut left = BTreeSet::new();
    for chunk in stderr.split("evicting pods/\"").skip(1) {
        let Some((name, rest)) = chunk.split_once('"') else {
            continue;
        };
        let Some((namespace, report)) = rest
            .strip_prefix(" -n \"")
            .and_then(|rest| rest.split_once('"'))
        else {
            continue;
        };
        // This pod's report ends with its line or where the next pod's begins.
        let report = report.lines().next().unwrap_or_default();
        let report = report.split("error when").next().unwrap_or_default();
        let pod = (namespace.to_string(), name.to_string());
        if report.contains(BUDGET_REFUSAL) {
            refused.insert(pod);
        } else if report.contains(DRAIN_TIMED_OUT) {
            left.insert(pod);
        }
    }
    if left.is_empty() {
        refused
    } else {
        refused.intersection(&left).cloned().collect()
    }
}

/// Whether `budget` selects a pod with `labels` (policy/v1: a missing selector selects nothing,
/// an empty one everything).
fn selects(budget: &BudgetObject, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = &budget.spec.selector else {
        return false;
    };
    let labels_match = selector
        .match_labels
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_match = selector.match_expressions.iter().all(|r| {
        let value = labels.get(&r.key);
        match r.operator.as_str() {
            "In" => value.is_some_and(|v| r.values.contains(v)),
            "NotIn" => value.is_none_or(|v| !r.values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_match && expressions_match
}

/// `pod a/b` or `pods a/b, c/d`.
fn plural(noun: &str, items: &[String]) -> String {
    let s = if items.len() == 1 { "" } else { "s" };
    format!("{noun}{s} {}", items.join(", "))
}

fn describe_budgets(budgets: &[String]) -> String {
    if budgets.is_empty() {
        return "the budget could not be read back".into();
    }
    format!("protected by {}", plural("PodDisruptionBudget", budgets))
}

fn system_pod(pod: PodObject) -> SystemPod {
    let ready = pod
        .status
        .conditions
        .iter()
        .any(|c| c.kind == "Ready" && c.status == "True");
    SystemPod {
        name: pod.metadata.name,
        node_name: pod.spec.node_name,
        phase: pod.status.phase,
        ready,
    }
}

fn kube_node(node: NodeObject) -> KubeNode {
    let ready = node
        .status
        .conditions
        .iter()
        .any(|c| c.kind == "Ready" && c.status == "True");
    let roles = node
        .metadata
        .labels
        .keys()
        .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
        .map(str::to_string)
        .collect();
    KubeNode {
        name: node.metadata.name,
        ready,
        kubelet_version: node.status.node_info.kubelet_version,
        roles,
    }
}

/// DNS-1123 subdomain: what a Kubernetes node name must be (and never a flag).
fn check_name(name: &str) -> Result<(), KubectlError> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(KubectlError::InvalidName(name.to_string()))
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_json_maps_to_the_proto_node() {
        let json = r#"{"metadata":{"name":"n1","labels":{"node-role.kubernetes.io/control-plane":""}},
            "status":{"conditions":[{"type":"MemoryPressure","status":"False"},{"type":"Ready","status":"True"}],
            "nodeInfo":{"kubeletVersion":"v1.33.1"}}}"#;
        let node = kube_node(serde_json::from_str(json).unwrap());
        assert_eq!(node.name, "n1");
        assert!(node.ready);
        assert_eq!(node.kubelet_version, "v1.33.1");
        assert_eq!(node.roles, vec!["control-plane".to_string()]);
    }

    #[test]
    fn pod_json_maps_to_the_proto_system_pod() {
        let json = r#"{"metadata":{"name":"coredns-1","namespace":"kube-system"},"spec":{"nodeName":"n1"},
            "status":{"phase":"Running","conditions":[{"type":"Ready","status":"False"}]}}"#;
        let pod = system_pod(serde_json::from_str(json).unwrap());
        assert_eq!(
            pod,
            SystemPod {
                name: "coredns-1".into(),
                node_name: "n1".into(),
                phase: "Running".into(),
                ready: false,
            }
        );
        let pending = system_pod(
            serde_json::from_str(r#"{"metadata":{"name":"p"},"status":{"phase":"Pending"}}"#)
                .unwrap(),
        );
        assert_eq!((pending.node_name.as_str(), pending.ready), ("", false));
    }

    #[test]
    fn pods_a_budget_kept_are_read_from_kubectl_drain() {
        // kubectl 1.32's stderr for a drain whose evictions a budget refused.
        let stderr = r#"Warning: ignoring DaemonSet-managed Pods: kube-system/calico-node-lzdxt, kube-system/kube-proxy-c7dsl
error when evicting pods/"web-qt64phbh98-m94w8" -n "default" (will retry after 5s): Cannot evict pod as it would violate the pod's disruption budget.
error when evicting pods/"web-qt64phbh98-fjcbv" -n "default" (will retry after 5s): Cannot evict pod as it would violate the pod's disruption budget.
error when evicting pods/"web-qt64phbh98-m94w8" -n "default" (will retry after 5s): Cannot evict pod as it would violate the pod's disruption budget.
There are pending pods in node "w-1" when an error occurred: [error when evicting pods/"web-qt64phbh98-m94w8" -n "default": global timeout reached: 5s, error when evicting pods/"web-qt64phbh98-fjcbv" -n "default": global timeout reached: 5s]
pod/web-qt64phbh98-fjcbv
pod/web-qt64phbh98-m94w8
error: unable to drain node "w-1" due to error: [error when evicting pods/"web-qt64phbh98-m94w8" -n "default": global timeout reached: 5s, error when evicting pods/"web-qt64phbh98-fjcbv" -n "default": global timeout reached: 5s], continuing command...
There are pending nodes to be drained:
 w-1
error when evicting pods/"web-qt64phbh98-m94w8" -n "default": global timeout reached: 5s
error when evicting pods/"web-qt64phbh98-fjcbv" -n "default": global timeout reached: 5s"#;
        let refused: Vec<(String, String)> = refused_evictions(stderr).into_iter().collect();
        assert_eq!(
            refused,
            vec![
                ("default".to_string(), "web-qt64phbh98-fjcbv".to_string()),
                ("default".to_string(), "web-qt64phbh98-m94w8".to_string()),
            ]
        );
        // A pod refused once and evicted later did not hold the drain, which timed out on
        // another pod.
        let later = r#"error when evicting pods/"a" -n "default" (will retry after 5s): Cannot evict pod as it would violate the pod's disruption budget.
error: unable to drain node "w-1" due to error: [error when evicting pods/"b" -n "default": global timeout reached: 5s], continuing command..."#;
        assert!(refused_evictions(later).is_empty());
        // A drain that timed out for another reason names no budget.
        assert!(
            refused_evictions(r#"error when waiting for pod "x" in namespace "default" to terminate: global timeout reached: 5s"#)
                .is_empty()
        );
    }

    #[test]
    fn budgets_select_pods_as_policy_v1_does() {
        let budget = |selector: &str| -> BudgetObject {
            serde_json::from_str(&format!(
                r#"{{"metadata":{{"name":"b"}},"spec":{selector}}}"#
            ))
            .unwrap()
        };
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        assert!(selects(
            &budget(r#"{"selector":{"matchLabels":{"app":"web"}}}"#),
            &labels
        ));
        assert!(!selects(
            &budget(r#"{"selector":{"matchLabels":{"app":"db"}}}"#),
            &labels
        ));
        assert!(selects(
            &budget(
                r#"{"selector":{"matchExpressions":[{"key":"app","operator":"In","values":["web","api"]}]}}"#
            ),
            &labels
        ));
        assert!(!selects(
            &budget(
                r#"{"selector":{"matchExpressions":[{"key":"app","operator":"DoesNotExist"}]}}"#
            ),
            &labels
        ));
        assert!(
            selects(&budget(r#"{"selector":{}}"#), &labels),
            "empty selects all"
        );
        assert!(!selects(&budget("{}"), &labels), "missing selects none");
    }

    #[test]
    fn a_blocked_drain_names_the_node_the_pods_and_the_budget() {
        let err = KubectlError::DrainBlocked {
            node: "worker-1".into(),
            pods: vec!["default/web-1".into()],
            budgets: vec!["default/web".into()],
            timeout: Duration::from_secs(5),
        };
        assert_eq!(
            err.to_string(),
            "drain of node worker-1 blocked by a PodDisruptionBudget: cannot evict pod default/web-1 (protected by PodDisruptionBudget default/web) within 5s; the node stays cordoned"
        );
        let unknown = KubectlError::DrainBlocked {
            node: "worker-1".into(),
            pods: vec!["default/web-1".into(), "default/web-2".into()],
            budgets: vec![],
            timeout: Duration::from_secs(300),
        };
        assert!(
            unknown
                .to_string()
                .contains("cannot evict pods default/web-1, default/web-2 (the budget could not be read back) within 300s"),
            "{unknown}"
        );
    }

    #[test]
    fn node_names_that_look_like_flags_are_refused() {
        assert!(check_name("--all").is_err());
        assert!(check_name("").is_err());
        assert!(check_name("Node").is_err());
        assert!(check_name("k8s-node-1.example").is_ok());
    }
}
