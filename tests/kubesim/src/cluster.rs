//! The simulated cluster's shared state: what kubeadm would find in the API server
//! (the `cluster-info` ConfigMap's CA, bootstrap token Secrets, the `kubeadm-certs` Secret's key,
//! Node objects). One JSON file in `KUBESIM_CLUSTER`, read and written under an exclusive lock.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The state file's name inside the cluster directory.
const STATE_FILE: &str = "cluster.json";

/// The cluster as the API server would know it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// `host:port` of the control-plane endpoint.
    pub endpoint: String,
    /// `sha256:<hex>` of the CA's SubjectPublicKeyInfo.
    pub ca_cert_hash: String,
    /// The CA certificate (PEM), handed to joining nodes.
    pub ca_pem: String,
    /// Bootstrap tokens.
    pub tokens: Vec<BootstrapToken>,
    /// The key the control-plane certificates were uploaded with, if any.
    pub certificate_key: Option<Expiring>,
    /// Cluster version (`v1.33.1`).
    pub kubernetes_version: String,
    /// Nodes.
    pub nodes: Vec<Node>,
}

/// A bootstrap token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapToken {
    /// `abcdef.0123456789abcdef`.
    pub token: String,
    /// Unix seconds; 0 = never.
    pub expires_unix: u64,
}

/// A secret value with an expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expiring {
    /// The value.
    pub value: String,
    /// Unix seconds; 0 = never.
    pub expires_unix: u64,
}

/// A node object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Node name.
    pub name: String,
    /// Whether it runs the control plane.
    pub control_plane: bool,
    /// Its kubelet version.
    pub kubelet_version: String,
}

impl ClusterState {
    /// Whether `token` exists and has not expired at `now`.
    pub fn token_valid(&self, token: &str, now: u64) -> bool {
        self.tokens
            .iter()
            .any(|t| t.token == token && (t.expires_unix == 0 || t.expires_unix > now))
    }
}

/// The locked state file; changes are written back by [`LockedCluster::save`].
pub struct LockedCluster {
    file: File,
    path: PathBuf,
    /// The state read.
    pub state: ClusterState,
}

impl LockedCluster {
    /// Opens (creating) and locks the state in `dir`.
    pub fn open(dir: &Path) -> std::io::Result<LockedCluster> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(STATE_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        file.lock()?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        let state = if text.trim().is_empty() {
            ClusterState::default()
        } else {
            serde_json::from_str(&text).map_err(std::io::Error::other)?
        };
        Ok(LockedCluster { file, path, state })
    }

    /// Writes the state back (still under the lock).
    pub fn save(&mut self) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.state).map_err(std::io::Error::other)?;
        self.file.set_len(0)?;
        self.file.rewind()?;
        self.file.write_all(&bytes)?;
        self.file.sync_all()
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
