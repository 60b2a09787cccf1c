//! The simulated clusters' shared state, in `KUBESIM_CLUSTER`: what kubeadm would find in the
//! API server and etcd.
//!
//! Several clusters can share one base directory: each lives in `<base>/<id>/`, where the id is
//! the hex SHA-256 of its CA's public key (the discovery hash without `sha256:`). A node finds
//! its cluster from its own `/etc/kubernetes/pki/ca.crt`; a joining node by the endpoint it was
//! given, narrowed by the CA hash and the token.
//!
//! ```text
//! <base>/<id>/cluster.json   kubeadm's view (ClusterState): endpoint, tokens, certificate key, version, nodes
//! <base>/<id>/ca.crt ca.key  the CA (kubeadm-certs / the controller-manager's signing key), mode 0600 key
//! <base>/<id>/store.json     every API object (see store)
//! ```

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pki::{CertificateAuthority, PkiError, cert_hash_of_pem};
use crate::store::Store;

/// The state file's name inside a cluster directory.
const STATE_FILE: &str = "cluster.json";
/// The CA certificate inside a cluster directory.
const CA_CERT_FILE: &str = "ca.crt";
/// The CA key inside a cluster directory.
const CA_KEY_FILE: &str = "ca.key";

/// Why a cluster could not be found or read.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A file of the cluster directory could not be used.
    #[error("failed to use the cluster state {path:?}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The node has no CA, so it is in no cluster.
    #[error("this node has no cluster CA at {path:?}: it has not run kubeadm init or join")]
    NoCa {
        /// Where the CA was looked for.
        path: PathBuf,
    },
    /// The CA could not be read.
    #[error("failed to read the cluster CA")]
    Ca(#[source] PkiError),
    /// No cluster has this CA.
    #[error("no cluster with CA {hash} in {base:?}")]
    Unknown {
        /// The base directory.
        base: PathBuf,
        /// The CA hash.
        hash: String,
    },
}

/// The cluster as kubeadm knows it.
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
    /// Nodes that ran kubeadm init or join (and not reset).
    pub nodes: Vec<Node>,
    /// Extra API server certificate SANs (`ClusterConfiguration.apiServer.certSANs`).
    #[serde(default)]
    pub cert_sans: Vec<String>,
    /// Pod network CIDR (`networking.podSubnet`), empty when not set.
    #[serde(default)]
    pub pod_subnet: String,
    /// Service CIDR (`networking.serviceSubnet`).
    #[serde(default)]
    pub service_subnet: String,
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

/// A node kubeadm set up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Node name.
    pub name: String,
    /// Whether it runs the control plane.
    pub control_plane: bool,
    /// The kubelet version kubeadm configured it for.
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

/// One cluster's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDir {
    path: PathBuf,
}

impl ClusterDir {
    /// The directory of the cluster whose CA hash is `hash` (`sha256:<hex>` or `<hex>`).
    pub fn for_hash(base: &Path, hash: &str) -> ClusterDir {
        ClusterDir {
            path: base.join(hash.trim_start_matches("sha256:")),
        }
    }

    /// The cluster whose CA certificate is `ca_pem`.
    ///
    /// # Errors
    /// The PEM is not a certificate.
    pub fn for_ca_pem(base: &Path, ca_pem: &str) -> Result<ClusterDir, ClusterError> {
        let hash = cert_hash_of_pem(ca_pem).map_err(ClusterError::Ca)?;
        Ok(ClusterDir::for_hash(base, &hash))
    }

    /// The cluster of the node at `root`, from its `/etc/kubernetes/pki/ca.crt`; it must exist.
    ///
    /// # Errors
    /// The node has no CA or its cluster is unknown.
    pub fn for_node(base: &Path, root: &Path) -> Result<ClusterDir, ClusterError> {
        let ca_path = crate::env::node_path(root, "/etc/kubernetes/pki/ca.crt");
        let pem =
            std::fs::read_to_string(&ca_path).map_err(|_| ClusterError::NoCa { path: ca_path })?;
        let dir = ClusterDir::for_ca_pem(base, &pem)?;
        if dir.path.join(STATE_FILE).is_file() {
            Ok(dir)
        } else {
            Err(ClusterError::Unknown {
                base: base.to_path_buf(),
                hash: cert_hash_of_pem(&pem).map_err(ClusterError::Ca)?,
            })
        }
    }

    /// Every cluster in `base` (sorted).
    pub fn all(base: &Path) -> Vec<ClusterDir> {
        let Ok(entries) = std::fs::read_dir(base) else {
            return Vec::new();
        };
        let mut dirs: Vec<ClusterDir> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.join(STATE_FILE).is_file())
            .map(|path| ClusterDir { path })
            .collect();
        dirs.sort_by(|a, b| a.path.cmp(&b.path));
        dirs
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// kubeadm's state, locked for an update.
    ///
    /// # Errors
    /// [`ClusterError::Io`].
    pub fn lock_state(&self) -> Result<LockedCluster, ClusterError> {
        LockedCluster::open(&self.path)
    }

    /// kubeadm's state, read under a shared lock.
    ///
    /// # Errors
    /// [`ClusterError::Io`].
    pub fn read_state(&self) -> Result<ClusterState, ClusterError> {
        let path = self.path.join(STATE_FILE);
        let io = |source| ClusterError::Io {
            path: path.clone(),
            source,
        };
        let mut file = File::open(&path).map_err(io)?;
        file.lock_shared().map_err(io)?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io)?;
        if text.trim().is_empty() {
            return Ok(ClusterState::default());
        }
        serde_json::from_str(&text).map_err(|e| io(std::io::Error::other(e)))
    }

    /// The API objects.
    pub fn store(&self) -> Store {
        Store::new(&self.path)
    }

    /// Writes the CA (the key with mode 0600).
    ///
    /// # Errors
    /// [`ClusterError::Io`].
    pub fn save_ca(&self, ca: &CertificateAuthority) -> Result<(), ClusterError> {
        std::fs::create_dir_all(&self.path).map_err(|source| ClusterError::Io {
            path: self.path.clone(),
            source,
        })?;
        write_file(&self.path.join(CA_CERT_FILE), ca.cert_pem(), 0o644)?;
        write_file(&self.path.join(CA_KEY_FILE), &ca.key_pem(), 0o600)
    }

    /// The CA with its key.
    ///
    /// # Errors
    /// [`ClusterError`].
    pub fn ca(&self) -> Result<CertificateAuthority, ClusterError> {
        let read = |name: &str| {
            let path = self.path.join(name);
            std::fs::read_to_string(&path).map_err(|source| ClusterError::Io { path, source })
        };
        CertificateAuthority::from_pem(&read(CA_CERT_FILE)?, &read(CA_KEY_FILE)?)
            .map_err(ClusterError::Ca)
    }
}

/// Writes `content` to `path` with `mode`, atomically (temporary file + rename).
///
/// # Errors
/// [`ClusterError::Io`].
pub fn write_file(path: &Path, content: &str, mode: u32) -> Result<(), ClusterError> {
    write_atomic(path, content.as_bytes(), mode).map_err(|source| ClusterError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to `path` with `mode` by writing a temporary file beside it and renaming it.
///
/// # Errors
/// The I/O error.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
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
    ///
    /// # Errors
    /// [`ClusterError::Io`].
    pub fn open(dir: &Path) -> Result<LockedCluster, ClusterError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(STATE_FILE);
        let io = |source| ClusterError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        // Tokens and the certificate key are in it: readable by its owner only.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        file.lock().map_err(io)?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io)?;
        let state = if text.trim().is_empty() {
            ClusterState::default()
        } else {
            serde_json::from_str(&text).map_err(|e| io(std::io::Error::other(e)))?
        };
        Ok(LockedCluster { file, path, state })
    }

    /// Writes the state back (still under the lock).
    ///
    /// # Errors
    /// [`ClusterError::Io`].
    pub fn save(&mut self) -> Result<(), ClusterError> {
        let io = |source| ClusterError::Io {
            path: self.path.clone(),
            source,
        };
        let bytes =
            serde_json::to_vec_pretty(&self.state).map_err(|e| io(std::io::Error::other(e)))?;
        self.file.set_len(0).map_err(io)?;
        self.file.rewind().map_err(io)?;
        self.file.write_all(&bytes).map_err(io)?;
        self.file.sync_all().map_err(io)
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
