//! kubectl for the controller's commands: apply manifests, read nodes, cordon/drain/uncordon,
//! delete a node. Always with an explicit `--kubeconfig` (admin.conf on control planes,
//! kubelet.conf for a node's own status), never the ambient `~/.kube/config`.

use std::path::{Path, PathBuf};
use std::process::Command;

use cks_proto::agent::KubeNode;
use serde::Deserialize;

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
}

/// kubectl with one kubeconfig.
#[derive(Debug, Clone)]
pub struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
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
    labels: std::collections::BTreeMap<String, String>,
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
        Kubectl { binary, kubeconfig }
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

    /// `kubectl drain` (cordons first), evicting with `grace_seconds`.
    ///
    /// # Errors
    /// [`KubectlError`].
    pub fn drain(&self, name: &str, grace_seconds: u32) -> Result<(), KubectlError> {
        check_name(name)?;
        let grace = format!("--grace-period={}", i64::from(grace_seconds).max(1));
        self.run(
            "drain",
            &[
                "drain",
                name,
                "--ignore-daemonsets",
                "--delete-emptydir-data",
                "--force",
                &grace,
                "--timeout=300s",
            ],
        )
        .map(drop)
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
        let kubeconfig = self.kubeconfig.to_string_lossy();
        let out = Command::new(&self.binary)
            .arg("--kubeconfig")
            .arg(kubeconfig.as_ref())
            .args(args)
            .env_remove("KUBECONFIG")
            .output()
            .map_err(|source| KubectlError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(KubectlError::Failed {
                command: command.to_string(),
                code: out.status.code(),
                stderr: truncate(stderr.trim(), 2000),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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
    fn node_names_that_look_like_flags_are_refused() {
        assert!(check_name("--all").is_err());
        assert!(check_name("").is_err());
        assert!(check_name("Node").is_err());
        assert!(check_name("k8s-node-1.example").is_ok());
    }
}
