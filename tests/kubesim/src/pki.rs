//! The cluster's certificates, made the way kubeadm makes them: one CA (`CN=kubernetes`, ten
//! years) signing a serving certificate for the API server and client certificates whose
//! subject is the identity (`CN=<user>`, `O=<group>`), one year each. ECDSA P-256 keys.
//!
//! Everything is real x509: kubectl verifies the API server against the CA in its kubeconfig,
//! and the API server verifies kubectl's client certificate against the same CA.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};

use crate::clock::civil_from_days;

/// Lifetime of the CA, in days (kubeadm: ten years).
const CA_DAYS: i64 = 3650;
/// Lifetime of every other certificate, in days (kubeadm: one year).
const LEAF_DAYS: i64 = 365;

/// Why a certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Key generation failed.
    #[error("failed to generate a key pair")]
    GenerateKey(#[source] rcgen::Error),
    /// A subject alternative name is not valid.
    #[error("invalid subject alternative name {name:?}")]
    InvalidSan {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
    /// Signing failed.
    #[error("failed to sign the certificate for {subject:?}")]
    Sign {
        /// The certificate's common name.
        subject: String,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
    /// A PEM key could not be read.
    #[error("failed to read the {what} key")]
    ReadKey {
        /// Which key.
        what: &'static str,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
    /// A PEM certificate could not be read.
    #[error("failed to read the {what} certificate: not a PEM x509 certificate")]
    ReadCertificate {
        /// Which certificate.
        what: &'static str,
    },
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// TLS server (the API server).
    Server,
    /// TLS client (kubeconfig users, the API server towards kubelets).
    Client,
}

/// A certificate to issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafRequest {
    /// `CN`: the user name for client certificates.
    pub common_name: String,
    /// `O`: the groups for client certificates.
    pub organizations: Vec<String>,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
    /// Server or client.
    pub usage: Usage,
}

impl LeafRequest {
    /// A client certificate for `user` in `groups`.
    pub fn client(user: &str, groups: &[&str]) -> LeafRequest {
        LeafRequest {
            common_name: user.to_string(),
            organizations: groups.iter().map(|g| g.to_string()).collect(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            usage: Usage::Client,
        }
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8). A secret: never logged.
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The cluster CA.
pub struct CertificateAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// Sets `params` valid from yesterday (so nodes whose clocks differ a little accept it at
/// once) for `days` from `now`.
fn set_validity(params: &mut CertificateParams, now: u64, days: i64) {
    let today = i64::try_from(now / 86_400).unwrap_or(0);
    let date = |days: i64| {
        let (y, m, d) = civil_from_days(days);
        rcgen::date_time_ymd(
            i32::try_from(y).unwrap_or(9999),
            u8::try_from(m).unwrap_or(1),
            u8::try_from(d).unwrap_or(1),
        )
    };
    params.not_before = date(today - 1);
    params.not_after = date(today + days);
}

impl CertificateAuthority {
    /// A new CA (`CN=kubernetes`), valid ten years from `now`.
    ///
    /// # Errors
    /// [`PkiError`].
    pub fn generate(now: u64) -> Result<CertificateAuthority, PkiError> {
        let mut params =
            CertificateParams::new(vec!["kubernetes".to_string()]).map_err(|source| {
                PkiError::InvalidSan {
                    name: "kubernetes".into(),
                    source,
                }
            })?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "kubernetes");
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyCertSign,
        ];
        set_validity(&mut params, now, CA_DAYS);
        let key = KeyPair::generate().map_err(PkiError::GenerateKey)?;
        let cert = params.self_signed(&key).map_err(|source| PkiError::Sign {
            subject: "kubernetes".into(),
            source,
        })?;
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA written by [`CertificateAuthority::generate`] (`ca.crt`, `ca.key`).
    ///
    /// # Errors
    /// [`PkiError`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<CertificateAuthority, PkiError> {
        let key = KeyPair::from_pem(key_pem)
            .map_err(|source| PkiError::ReadKey { what: "CA", source })?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|_| PkiError::ReadCertificate { what: "CA" })?;
        Ok(CertificateAuthority {
            cert_pem: cert_pem.to_string(),
            issuer,
        })
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA key (PEM). A secret.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// `sha256:<hex>` of the CA's SubjectPublicKeyInfo: kubeadm's discovery hash.
    pub fn cert_hash(&self) -> String {
        use rcgen::PublicKeyData;
        format!(
            "sha256:{}",
            hex::encode(Sha256::digest(self.issuer.key().subject_public_key_info()))
        )
    }

    /// Issues a certificate signed by this CA, valid one year from `now`.
    ///
    /// # Errors
    /// [`PkiError`].
    pub fn issue(&self, request: &LeafRequest, now: u64) -> Result<IssuedCert, PkiError> {
        let mut sans = Vec::new();
        for name in &request.dns_names {
            let ia5 = name
                .as_str()
                .try_into()
                .map_err(|source| PkiError::InvalidSan {
                    name: name.clone(),
                    source,
                })?;
            sans.push(SanType::DnsName(ia5));
        }
        sans.extend(
            request
                .ip_addresses
                .iter()
                .map(|ip| SanType::IpAddress(*ip)),
        );
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.distinguished_name = rcgen::DistinguishedName::new();
        for org in &request.organizations {
            params
                .distinguished_name
                .push(DnType::OrganizationName, org.as_str());
        }
        params
            .distinguished_name
            .push(DnType::CommonName, request.common_name.as_str());
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![match request.usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, now, LEAF_DAYS);
        let key = KeyPair::generate().map_err(PkiError::GenerateKey)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| PkiError::Sign {
                subject: request.common_name.clone(),
                source,
            })?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A new key pair as PEM (the service-account signing key `sa.key`).
///
/// # Errors
/// [`PkiError::GenerateKey`].
pub fn generate_key_pem() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(PkiError::GenerateKey)?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

/// The DER of the first certificate in `pem`.
pub fn first_cert_der(pem: &str) -> Option<Vec<u8>> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    (parsed.label == "CERTIFICATE").then_some(parsed.contents)
}

/// `sha256:<hex>` of the SubjectPublicKeyInfo of the certificate in `pem`.
///
/// # Errors
/// [`PkiError::ReadCertificate`].
pub fn cert_hash_of_pem(pem: &str) -> Result<String, PkiError> {
    let der = first_cert_der(pem).ok_or(PkiError::ReadCertificate { what: "CA" })?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|_| PkiError::ReadCertificate { what: "CA" })?;
    Ok(format!(
        "sha256:{}",
        hex::encode(Sha256::digest(cert.tbs_certificate.subject_pki.raw))
    ))
}

/// The identity in a client certificate: (`CN`, every `O`).
pub fn subject_of_der(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok())
        .map(str::to_string)
        .collect();
    Some((cn, groups))
}

/// The DNS and IP names a certificate in `pem` is valid for.
pub fn sans_of_pem(pem: &str) -> Vec<String> {
    let Some(der) = first_cert_der(pem) else {
        return Vec::new();
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
        return Vec::new();
    };
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            x509_parser::extensions::GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes)
                    .ok()
                    .map(|b| IpAddr::from(b).to_string()),
                16 => <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(|b| IpAddr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reloaded_ca_signs_leaves_with_the_requested_identity_and_names() {
        let ca = CertificateAuthority::generate(1_800_000_000).unwrap();
        let hash = ca.cert_hash();
        assert_eq!(cert_hash_of_pem(ca.cert_pem()).unwrap(), hash);
        let again = CertificateAuthority::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.cert_hash(), hash);

        let client = again
            .issue(
                &LeafRequest::client("kubernetes-admin", &["kubeadm:cluster-admins"]),
                1_800_000_000,
            )
            .unwrap();
        let der = first_cert_der(&client.cert_pem).unwrap();
        assert_eq!(
            subject_of_der(&der).unwrap(),
            (
                "kubernetes-admin".to_string(),
                vec!["kubeadm:cluster-admins".to_string()]
            )
        );
        assert!(!format!("{client:?}").contains("PRIVATE KEY"));

        let server = again
            .issue(
                &LeafRequest {
                    common_name: "kube-apiserver".into(),
                    organizations: vec![],
                    dns_names: vec!["kubernetes".into(), "api.example".into()],
                    ip_addresses: vec!["10.96.0.1".parse().unwrap()],
                    usage: Usage::Server,
                },
                1_800_000_000,
            )
            .unwrap();
        assert_eq!(
            sans_of_pem(&server.cert_pem),
            ["kubernetes", "api.example", "10.96.0.1"]
        );
    }
}
