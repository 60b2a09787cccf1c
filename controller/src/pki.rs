//! The agent PKI: the controller's own certificate authority for node agents (contract 2).
//!
//! * One CA per controller installation, created on first start in the CA directory
//!   (`agent-ca.crt`, and `agent-ca.key` with mode 0600) and loaded afterwards. Its SHA-256
//!   fingerprint goes into every node's userdata so the agent can pin it before it has any
//!   certificate.
//! * The agent endpoint's server certificate is issued from that CA at every start for the
//!   addresses agents dial (serverAuth only).
//! * Node certificates are issued from a node's CSR at enrollment. Only the CSR's public key is
//!   used: subject, names and usages are the controller's (CN = node name, O = `cks-cluster:<id>`,
//!   OU = role, clientAuth only), so a node cannot ask for more than its token allows and a node
//!   certificate can never serve as the controller's.
//! * Node certificates are renewed over the node's own mTLS stream ([`AgentCa::issue_node`]
//!   again, for a new key, same identity); a node's certificate is only honoured while the
//!   controller's records still hold that node (see `agents::Roster`).
//! * Private key files must be readable by their owner only: [`check_private_file`] refuses a
//!   key whose mode gives group or others any access, naming the file and the fix.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cks_proto::agent::NodeRole;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};

/// File name of the CA certificate in the CA directory.
pub const CA_CERT_FILE: &str = "agent-ca.crt";
/// File name of the CA private key in the CA directory (mode 0600).
pub const CA_KEY_FILE: &str = "agent-ca.key";
/// Lifetime of a node certificate.
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Lifetime of the CA.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Prefix of the organisation (O) that binds a node certificate to its cluster.
const CLUSTER_ORG_PREFIX: &str = "cks-cluster:";

/// A PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing the CA directory failed.
    #[error("CA directory {path:?}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Certificate generation or parsing failed.
    #[error("{what}")]
    Certificate {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: rcgen::Error,
    },
    /// A CSR was refused.
    #[error("certificate signing request refused: {0}")]
    BadCsr(String),
    /// A peer certificate does not carry a node identity.
    #[error("not a node certificate: {0}")]
    NotANodeCertificate(String),
    /// A private key file is readable by others than its owner.
    #[error(
        "private key file {path:?} has mode {mode:04o}, readable by others than its owner; \
         run `chmod 600 {path:?}` (and check who may have read it)"
    )]
    KeyFileMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// A CSR that parsed and whose signature verified: only its public key is ever used.
pub struct VerifiedCsr {
    public_key: rcgen::PublicKey,
    key_sha256: String,
}

impl VerifiedCsr {
    /// Parses `csr_pem` and verifies its self-signature.
    ///
    /// # Errors
    /// [`PkiError::BadCsr`] when it does not parse or its signature is wrong.
    pub fn parse(csr_pem: &str) -> Result<VerifiedCsr, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|err| PkiError::BadCsr(err.to_string()))?;
        let key_sha256 = hex::encode(Sha256::digest(
            rcgen::PublicKeyData::subject_public_key_info(&csr.public_key),
        ));
        Ok(VerifiedCsr {
            public_key: csr.public_key,
            key_sha256,
        })
    }

    /// SHA-256 (hex) of the requested public key's SubjectPublicKeyInfo: what an enrollment
    /// token is bound to, so a retried enrollment with the same key is recognised.
    pub fn key_sha256(&self) -> &str {
        &self.key_sha256
    }
}

impl std::fmt::Debug for VerifiedCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedCsr")
            .field("key_sha256", &self.key_sha256)
            .finish()
    }
}

/// Who a node certificate names: the cluster, the node (its VM name) and its role.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeIdentity {
    /// The cluster's id.
    pub cluster_id: String,
    /// The node name (the VM's name in CloudStack, the Kubernetes node name).
    pub node_name: String,
    /// The node's role.
    pub role: NodeRole,
}

/// The controller's agent CA.
pub struct AgentCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
    node_validity: Duration,
}

impl std::fmt::Debug for AgentCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCa")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// A certificate and its private key, PEM-encoded. The key is secret: `Debug` hides it.
#[derive(Clone)]
pub struct CertifiedKey {
    /// Certificate (PEM).
    pub cert_pem: String,
    /// Private key (PEM, PKCS#8). Secret.
    pub key_pem: String,
}

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

// === impl AgentCa ===

impl AgentCa {
    /// Loads the CA from `dir`, creating it (and `dir`) on first use.
    ///
    /// # Errors
    /// The directory cannot be read or written, or holds a damaged CA.
    pub fn load_or_create(dir: &Path) -> Result<AgentCa, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if cert_path.exists() && key_path.exists() {
            check_private_file(&key_path)?;
            let cert_pem = read(&cert_path)?;
            let key_pem = read(&key_path)?;
            let key = KeyPair::from_pem(&key_pem).map_err(|source| PkiError::Certificate {
                what: format!("CA key {key_path:?} is damaged"),
                source,
            })?;
            let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|source| {
                PkiError::Certificate {
                    what: format!("CA certificate {cert_path:?} is damaged"),
                    source,
                }
            })?;
            let cert_der = pem_to_der(&cert_pem).ok_or_else(|| PkiError::Certificate {
                what: format!("CA certificate {cert_path:?} is not PEM"),
                source: rcgen::Error::CouldNotParseCertificate,
            })?;
            return Ok(AgentCa {
                issuer,
                cert_pem,
                cert_der,
                node_validity: NODE_CERT_VALIDITY,
            });
        }
        create_private_dir(dir).map_err(|source| PkiError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let key = KeyPair::generate().map_err(cert_err("generating the CA key"))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "cks-controller agent CA");
        name.push(DnType::OrganizationName, "cks-controller");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + CA_VALIDITY;
        let cert = params
            .self_signed(&key)
            .map_err(cert_err("self-signing the CA"))?;
        // Key first: a crash between the two writes leaves no certificate without its key.
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        write_private(&cert_path, cert.pem().as_bytes())?;
        let cert_pem = cert.pem();
        let cert_der = cert.der().to_vec();
        Ok(AgentCa {
            issuer: Issuer::new(params, key),
            cert_pem,
            cert_der,
            node_validity: NODE_CERT_VALIDITY,
        })
    }

    /// The same CA issuing node certificates valid for `validity` (tests of renewal; operators
    /// keep [`NODE_CERT_VALIDITY`]).
    #[must_use]
    pub fn with_node_validity(mut self, validity: Duration) -> AgentCa {
        self.node_validity = validity;
        self
    }

    /// The CA certificate (PEM), which agents trust after enrollment.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// `sha256:<hex>` of the CA certificate's DER, as written into userdata.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_der)
    }

    /// Issues the agent endpoint's server certificate for `addresses` (IPs or DNS names).
    ///
    /// # Errors
    /// Certificate generation failed.
    pub fn issue_server(&self, addresses: &[String]) -> Result<CertifiedKey, PkiError> {
        let key = KeyPair::generate().map_err(cert_err("generating the server key"))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "cks-controller agent endpoint");
        params.distinguished_name = name;
        params.subject_alt_names = addresses
            .iter()
            .map(|a| san_for(a))
            .collect::<Result<_, _>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + NODE_CERT_VALIDITY;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(cert_err("signing the server certificate"))?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a node certificate for the public key of `csr`, naming `identity`.
    ///
    /// # Errors
    /// Signing failed.
    pub fn issue_node(
        &self,
        csr: VerifiedCsr,
        identity: &NodeIdentity,
    ) -> Result<String, PkiError> {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, identity.node_name.as_str());
        name.push(
            DnType::OrganizationName,
            format!("{CLUSTER_ORG_PREFIX}{}", identity.cluster_id),
        );
        name.push(
            DnType::OrganizationalUnitName,
            identity.role.as_str_name().to_string(),
        );
        params.distinguished_name = name;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + self.node_validity;
        let signed = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)
        .map_err(cert_err("signing the node certificate"))?;
        Ok(signed.pem())
    }
}

/// Reads the node identity from a (verified) node certificate's DER.
///
/// # Errors
/// [`PkiError::NotANodeCertificate`] when it lacks the node name, cluster or role.
pub fn node_identity(cert_der: &[u8]) -> Result<NodeIdentity, PkiError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|err| PkiError::NotANodeCertificate(err.to_string()))?;
    let subject = cert.subject();
    let first = |attrs: &mut dyn Iterator<Item = &AttributeTypeAndValue<'_>>| {
        attrs
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_owned)
    };
    let node_name = first(&mut subject.iter_common_name())
        .ok_or_else(|| PkiError::NotANodeCertificate("no common name".into()))?;
    let cluster_id = first(&mut subject.iter_organization())
        .and_then(|o| o.strip_prefix(CLUSTER_ORG_PREFIX).map(str::to_owned))
        .ok_or_else(|| PkiError::NotANodeCertificate("no cluster organisation".into()))?;
    let role = first(&mut subject.iter_organizational_unit())
        .and_then(|ou| NodeRole::from_str_name(&ou))
        .filter(|role| *role != NodeRole::Unspecified)
        .ok_or_else(|| PkiError::NotANodeCertificate("no node role".into()))?;
    Ok(NodeIdentity {
        cluster_id,
        node_name,
        role,
    })
}

/// Refuses a private key file that group or others may access in any way.
///
/// # Errors
/// [`PkiError::KeyFileMode`] naming the file and the `chmod 600` that fixes it;
/// [`PkiError::Io`] when it cannot be examined.
pub fn check_private_file(path: &Path) -> Result<(), PkiError> {
    let meta = fs::metadata(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PkiError::KeyFileMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Creates `dir` (and its parents) if needed and makes `dir` itself mode 0700 whatever the
/// umask, also when it existed with a wider mode.
///
/// # Errors
/// It cannot be created or its mode cannot be set.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// `sha256:<hex>` of a certificate's DER.
pub fn fingerprint(cert_der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(cert_der)))
}

/// The DER of the first certificate in a PEM text.
pub fn pem_to_der(pem_text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let begin = "-----BEGIN CERTIFICATE-----";
    let start = pem_text.find(begin)? + begin.len();
    let end = pem_text[start..].find("-----END CERTIFICATE-----")? + start;
    let body: String = pem_text[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

fn san_for(address: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = address.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let name = address
        .to_string()
        .try_into()
        .map_err(cert_err(&format!("server name {address:?}")))?;
    Ok(SanType::DnsName(name))
}

fn cert_err(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Certificate {
        what: what.to_string(),
        source,
    }
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a file readable by its owner only, atomically (temp file, fsync, rename).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    let io_err = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err)?;
    file.write_all(bytes).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    fs::rename(&tmp, path).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr() -> (KeyPair, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = params.serialize_request(&key).unwrap();
        (key, csr.pem().unwrap())
    }

    #[test]
    fn ca_is_created_once_and_reloaded_with_the_same_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let first = AgentCa::load_or_create(dir.path()).unwrap();
        let second = AgentCa::load_or_create(dir.path()).unwrap();
        assert_eq!(first.fingerprint(), second.fingerprint());
        assert!(first.fingerprint().starts_with("sha256:"));
        let mode = fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn node_certificate_names_what_the_controller_says_not_what_the_csr_asks() {
        let dir = tempfile::tempdir().unwrap();
        let ca = AgentCa::load_or_create(dir.path()).unwrap();
        let (_key, csr) = csr();
        let identity = NodeIdentity {
            cluster_id: "c-1".into(),
            node_name: "k8s-node-1".into(),
            role: NodeRole::Worker,
        };
        let pem = ca
            .issue_node(VerifiedCsr::parse(&csr).unwrap(), &identity)
            .unwrap();
        let der = pem_to_der(&pem).unwrap();
        assert_eq!(node_identity(&der).unwrap(), identity);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(!cert.is_ca());
        assert!(cert.subject_alternative_name().unwrap().is_none());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
    }

    #[test]
    fn garbage_csr_is_refused() {
        assert!(matches!(
            VerifiedCsr::parse("not a csr"),
            Err(PkiError::BadCsr(_))
        ));
        let (_key, good) = csr();
        // Flip one character inside the base64 body: the signature no longer verifies.
        let mut bad = good.clone().into_bytes();
        let at = bad.len() / 2;
        bad[at] = if bad[at] == b'A' { b'B' } else { b'A' };
        assert!(VerifiedCsr::parse(&String::from_utf8(bad).unwrap()).is_err());
    }

    #[test]
    fn a_csr_is_known_by_its_public_key() {
        let (key, first) = csr();
        let again = CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let (_other, other) = csr();
        let digest = |pem: &str| VerifiedCsr::parse(pem).unwrap().key_sha256().to_string();
        assert_eq!(digest(&first), digest(&again));
        assert_ne!(digest(&first), digest(&other));
    }

    #[test]
    fn a_ca_key_readable_by_others_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        AgentCa::load_or_create(dir.path()).unwrap();
        let key = dir.path().join(CA_KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = AgentCa::load_or_create(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, PkiError::KeyFileMode { mode: 0o644, .. }),
            "{text}"
        );
        assert!(
            text.contains(CA_KEY_FILE) && text.contains("chmod 600"),
            "{text}"
        );
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        AgentCa::load_or_create(dir.path()).unwrap();
    }

    #[test]
    fn a_private_dir_is_0700_whatever_the_umask_and_its_old_mode() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("data");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&dir).unwrap();
        let fresh = base.path().join("a/b");
        create_private_dir(&fresh).unwrap();
        for path in [&dir, &fresh] {
            let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{path:?}");
        }
    }

    #[test]
    fn server_certificate_is_not_a_node_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = AgentCa::load_or_create(dir.path()).unwrap();
        let server = ca.issue_server(&["127.0.0.1".into()]).unwrap();
        let der = pem_to_der(&server.cert_pem).unwrap();
        assert!(node_identity(&der).is_err());
        assert!(!format!("{server:?}").contains("PRIVATE"));
    }
}
