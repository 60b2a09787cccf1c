//! The node's identity towards the controller: its own key, the certificate the controller
//! issued at enrollment, and the controller's CA. Kept in `<data dir>/pki/` (key and
//! certificate mode 0600), so enrollment happens once per node and a restarted agent resumes
//! with mTLS right away.
//!
//! * The enrollment key is made once and kept (`<data dir>/enroll.key`, 0600) until enrollment
//!   succeeds, so a retried enrollment (a lost reply) presents the same key, which the
//!   controller's token is bound to.
//! * A renewed identity replaces the old one as a whole: it is written to `pki.new/` and swapped
//!   in by renames; [`load`] finishes a swap a crash interrupted, so the key and the certificate
//!   on disk always belong together.

use std::path::{Path, PathBuf};

use cks_proto::agent::EnrollRequest;
use cks_proto::agent::enrollment_client::EnrollmentClient;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use serde::{Deserialize, Serialize};
use tracing::info;

use super::tls;
use crate::journal::write_atomic;

/// Sub-directory of the data dir holding the identity.
pub const PKI_DIR: &str = "pki";
const KEY_FILE: &str = "node.key";
const CERT_FILE: &str = "node.crt";
const CA_FILE: &str = "controller-ca.crt";
const IDENTITY_FILE: &str = "identity.json";
/// The key being enrolled, kept across attempts.
const ENROLL_KEY_FILE: &str = "enroll.key";
/// A certificate with less than this share of its lifetime left is renewed.
const RENEW_WHEN_LEFT: f64 = 1.0 / 3.0;

/// The enrolled identity.
#[derive(Clone)]
pub struct NodeIdentity {
    /// Private key, PKCS#8 DER. Secret.
    pub key_der: Vec<u8>,
    /// Node certificate (PEM).
    pub cert_pem: String,
    /// Controller CA (PEM).
    pub ca_pem: String,
    /// What the certificate binds the node to.
    pub facts: IdentityFacts,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("facts", &self.facts)
            .finish_non_exhaustive()
    }
}

/// The cluster and role the controller enrolled this node for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityFacts {
    /// Cluster id.
    pub cluster_id: String,
    /// Node name.
    pub node_name: String,
    /// `NodeRole` as its proto name.
    pub role: String,
}

/// Enrollment or identity storage failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing `<data dir>/pki` failed.
    #[error("node identity in {path:?}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Key or CSR generation failed.
    #[error("generating the node key or CSR")]
    Key(#[source] rcgen::Error),
    /// No enrollment token in the configuration, and no identity on disk.
    #[error("this node has no certificate yet and no enrollment token in its configuration")]
    NoToken,
    /// The controller refused the token (unknown, used, expired, other node).
    #[error("the controller refused enrollment: {0}")]
    Refused(String),
    /// Network or TLS failure; worth retrying.
    #[error("cannot reach the controller for enrollment at {address}: {reason}")]
    Unreachable {
        /// Address tried.
        address: String,
        /// Why (never holds the token).
        reason: String,
    },
    /// TLS setup.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The node certificate cannot be read.
    #[error("node certificate: {0}")]
    Certificate(String),
}

impl IdentityError {
    /// Whether trying again later can help.
    pub fn is_transient(&self) -> bool {
        matches!(self, IdentityError::Unreachable { .. })
    }
}

/// Loads the identity from `data_dir`, if the node enrolled before.
///
/// # Errors
/// A damaged identity directory.
pub fn load(data_dir: &Path) -> Result<Option<NodeIdentity>, IdentityError> {
    finish_swap(data_dir)?;
    let dir = data_dir.join(PKI_DIR);
    let files = [KEY_FILE, CERT_FILE, CA_FILE, IDENTITY_FILE].map(|f| dir.join(f));
    if !files.iter().all(|f| f.exists()) {
        return Ok(None);
    }
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| IdentityError::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    let key_der = read(&files[0])?;
    let cert_pem = String::from_utf8_lossy(&read(&files[1])?).into_owned();
    let ca_pem = String::from_utf8_lossy(&read(&files[2])?).into_owned();
    let facts = serde_json::from_slice(&read(&files[3])?).map_err(|err| IdentityError::Io {
        path: files[3].clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, err),
    })?;
    Ok(Some(NodeIdentity {
        key_der,
        cert_pem,
        ca_pem,
        facts,
    }))
}

/// Enrolls at the first controller address that answers: a fresh key, a CSR, the one-time
/// token; stores and returns the identity.
///
/// # Errors
/// [`IdentityError`]; [`IdentityError::is_transient`] tells whether to retry.
pub async fn enroll(
    data_dir: &Path,
    addresses: &[String],
    ca_fingerprint: &str,
    token: &str,
    node_name: &str,
) -> Result<NodeIdentity, IdentityError> {
    let key = enrollment_key(data_dir)?;
    let csr_pem = csr(&key, node_name)?;
    let config = tls::enrollment_config(ca_fingerprint)?;
    let mut last = None;
    for address in addresses {
        let channel = match tls::connect(address, config.clone()).await {
            Ok(channel) => channel,
            Err(err) => {
                last = Some(IdentityError::Unreachable {
                    address: address.clone(),
                    reason: error_chain(err.as_ref()),
                });
                continue;
            }
        };
        let request = EnrollRequest {
            token: token.to_string(),
            csr_pem: csr_pem.clone(),
            node_name: node_name.to_string(),
        };
        match EnrollmentClient::new(channel).enroll(request).await {
            Ok(response) => {
                let response = response.into_inner();
                let role = cks_proto::agent::NodeRole::try_from(response.role)
                    .unwrap_or_default()
                    .as_str_name()
                    .to_string();
                let identity = NodeIdentity {
                    key_der: key.serialize_der(),
                    cert_pem: response.certificate_pem,
                    ca_pem: response.ca_pem,
                    facts: IdentityFacts {
                        cluster_id: response.cluster_id,
                        node_name: node_name.to_string(),
                        role,
                    },
                };
                store(data_dir, &identity)?;
                let _ = std::fs::remove_file(data_dir.join(ENROLL_KEY_FILE));
                info!(cluster = identity.facts.cluster_id, role = identity.facts.role, %address, "enrolled with the controller");
                return Ok(identity);
            }
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::PermissionDenied | tonic::Code::InvalidArgument
                ) =>
            {
                return Err(IdentityError::Refused(status.message().to_string()));
            }
            Err(status) => {
                last = Some(IdentityError::Unreachable {
                    address: address.clone(),
                    reason: format!("{:?}: {}", status.code(), status.message()),
                });
            }
        }
    }
    Err(last.unwrap_or(IdentityError::Unreachable {
        address: String::new(),
        reason: "no controller address configured".into(),
    }))
}

/// A new key and a CSR for it, for renewing the certificate of `node_name`.
///
/// # Errors
/// Key or CSR generation failed.
pub fn renewal_request(node_name: &str) -> Result<(KeyPair, String), IdentityError> {
    let key = KeyPair::generate().map_err(IdentityError::Key)?;
    let csr_pem = csr(&key, node_name)?;
    Ok((key, csr_pem))
}

/// Whether the certificate in `cert_pem` has less than a third of its lifetime left at `now`.
///
/// # Errors
/// [`IdentityError::Certificate`] when it cannot be parsed.
pub fn renewal_due(cert_pem: &str, now: std::time::SystemTime) -> Result<bool, IdentityError> {
    let der = tls::pem_certificates(cert_pem)
        .into_iter()
        .next()
        .ok_or_else(|| IdentityError::Certificate("no certificate in node.crt".into()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|err| IdentityError::Certificate(err.to_string()))?;
    let validity = cert.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    let now = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    #[allow(clippy::cast_precision_loss)]
    let (lifetime, left) = ((not_after - not_before) as f64, (not_after - now) as f64);
    Ok(left < lifetime * RENEW_WHEN_LEFT)
}

/// Replaces the stored identity with `identity` (a renewed key and certificate) as a whole.
///
/// # Errors
/// Writing failed; the old identity is then still in place.
pub fn store_renewed(data_dir: &Path, identity: &NodeIdentity) -> Result<(), IdentityError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IdentityError::Io { path, source }
    };
    let staged = data_dir.join(format!("{PKI_DIR}.new"));
    if staged.exists() {
        std::fs::remove_dir_all(&staged).map_err(io(&staged))?;
    }
    write_identity(&staged, identity)?;
    let old = data_dir.join(format!("{PKI_DIR}.old"));
    let current = data_dir.join(PKI_DIR);
    std::fs::rename(&current, &old).map_err(io(&current))?;
    finish_swap(data_dir)
}

/// Completes an identity swap: `pki.new` (complete) becomes `pki`; without it, `pki.old` goes
/// back; a leftover `pki.old` beside `pki` is removed.
fn finish_swap(data_dir: &Path) -> Result<(), IdentityError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IdentityError::Io { path, source }
    };
    let current = data_dir.join(PKI_DIR);
    let staged = data_dir.join(format!("{PKI_DIR}.new"));
    let old = data_dir.join(format!("{PKI_DIR}.old"));
    if !current.exists() {
        if staged.join(IDENTITY_FILE).exists() {
            std::fs::rename(&staged, &current).map_err(io(&staged))?;
        } else if old.exists() {
            std::fs::rename(&old, &current).map_err(io(&old))?;
        }
    }
    for leftover in [&old, &staged] {
        if current.exists() && leftover.exists() {
            std::fs::remove_dir_all(leftover).map_err(io(leftover))?;
        }
    }
    Ok(())
}

/// The key to enroll with: the one a previous attempt made, or a new one (kept, 0600).
fn enrollment_key(data_dir: &Path) -> Result<KeyPair, IdentityError> {
    let path = data_dir.join(ENROLL_KEY_FILE);
    let io = |source| IdentityError::Io {
        path: path.clone(),
        source,
    };
    if let Ok(der) = std::fs::read(&path)
        && let Ok(key) = KeyPair::try_from(der.as_slice())
    {
        return Ok(key);
    }
    let key = KeyPair::generate().map_err(IdentityError::Key)?;
    std::fs::create_dir_all(data_dir).map_err(io)?;
    write_atomic(&path, &key.serialize_der(), 0o600).map_err(io)?;
    Ok(key)
}

fn csr(key: &KeyPair, node_name: &str) -> Result<String, IdentityError> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, node_name);
    params.distinguished_name = name;
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(IdentityError::Key)
}

fn store(data_dir: &Path, identity: &NodeIdentity) -> Result<(), IdentityError> {
    write_identity(&data_dir.join(PKI_DIR), identity)
}

fn write_identity(dir: &Path, identity: &NodeIdentity) -> Result<(), IdentityError> {
    let dir = dir.to_path_buf();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IdentityError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let facts = serde_json::to_vec_pretty(&identity.facts).unwrap_or_default();
    // The identity file last: its presence means the other three are complete.
    for (file, bytes, mode) in [
        (KEY_FILE, identity.key_der.as_slice(), 0o600),
        (CERT_FILE, identity.cert_pem.as_bytes(), 0o600),
        (CA_FILE, identity.ca_pem.as_bytes(), 0o644),
        (IDENTITY_FILE, facts.as_slice(), 0o644),
    ] {
        let path = dir.join(file);
        write_atomic(&path, bytes, mode).map_err(io(&path))?;
    }
    Ok(())
}

/// An error and its causes on one line.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}
