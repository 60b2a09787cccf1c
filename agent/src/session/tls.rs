//! TLS towards the controller (contract 2): the agent always dials out, and always knows whom it
//! talks to.
//!
//! * Before enrollment the agent has no certificate and no CA, only the CA's SHA-256 fingerprint
//!   from its userdata. [`enrollment_config`] accepts a server only if the chain it presents
//!   contains a certificate with that fingerprint *and* the server certificate verifies against
//!   it (name and validity included): pinning without trust-on-first-use.
//! * After enrollment [`session_config`] trusts exactly the CA the controller returned and
//!   presents the node certificate (mTLS).
//!
//! tonic's own TLS cannot pin a fingerprint, so [`connect`] does the TCP + TLS handshake itself
//! (tokio-rustls, ALPN `h2`) and hands the stream to tonic.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tonic::transport::{Channel, Endpoint, Uri};

/// How long a TCP connect + TLS handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS setup problem (not a network one).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The fingerprint in the configuration is not `sha256:<64 hex>`.
    #[error("controller CA fingerprint {0:?} is not sha256:<64 hex digits>")]
    BadFingerprint(String),
    /// A certificate or key could not be used.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    /// The address is not `host:port`.
    #[error("controller address {0:?} is not host:port")]
    BadAddress(String),
    /// PEM could not be decoded.
    #[error("{what} is not valid PEM")]
    Pem {
        /// What.
        what: &'static str,
    },
}

/// Parses `sha256:<hex>` (or bare hex) into the 32 bytes.
///
/// # Errors
/// [`TlsError::BadFingerprint`].
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], TlsError> {
    let hex_part = text.trim().strip_prefix("sha256:").unwrap_or(text.trim());
    let bytes = hex::decode(hex_part).map_err(|_| TlsError::BadFingerprint(text.to_string()))?;
    bytes
        .try_into()
        .map_err(|_| TlsError::BadFingerprint(text.to_string()))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Client configuration for enrollment: server authenticated by the pinned CA fingerprint.
///
/// # Errors
/// [`TlsError`] for a malformed fingerprint.
pub fn enrollment_config(fingerprint: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = PinnedCa {
        fingerprint: parse_fingerprint(fingerprint)?,
        provider: provider.clone(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Client configuration for the session: the controller's CA, and the node's certificate.
///
/// # Errors
/// [`TlsError`] when the PEM or key is unusable.
pub fn session_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pkcs8_der: &[u8],
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for der in pem_certificates(ca_pem) {
        roots.add(der)?;
    }
    if roots.is_empty() {
        return Err(TlsError::Pem { what: "CA" });
    }
    let chain = pem_certificates(cert_pem);
    if chain.is_empty() {
        return Err(TlsError::Pem {
            what: "node certificate",
        });
    }
    let key = PrivateKeyDer::Pkcs8(key_pkcs8_der.to_vec().into());
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Opens a gRPC channel to `address` (`host:port`) over TLS with `config`.
///
/// # Errors
/// [`TlsError::BadAddress`] for a malformed address; connection failures as
/// `tonic::transport::Error` inside the boxed error.
pub async fn connect(
    address: &str,
    config: Arc<ClientConfig>,
) -> Result<Channel, Box<dyn std::error::Error + Send + Sync>> {
    let (host, _port) = split_host_port(address)?;
    let server_name = ServerName::try_from(host.to_string())
        .map_err(|_| TlsError::BadAddress(address.to_string()))?;
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|_| TlsError::BadAddress(address.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    let connector = tower::service_fn(move |uri: Uri| {
        let config = config.clone();
        let server_name = server_name.clone();
        async move {
            let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::net::TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(server_name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector(connector).await?)
}

/// `host:port` → (`host`, port); IPv6 hosts in brackets.
///
/// # Errors
/// [`TlsError::BadAddress`].
pub fn split_host_port(address: &str) -> Result<(&str, u16), TlsError> {
    let bad = || TlsError::BadAddress(address.to_string());
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host, port))
}

/// DER certificates in a PEM text.
pub fn pem_certificates(pem_text: &str) -> Vec<CertificateDer<'static>> {
    use base64::Engine as _;
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = pem_text;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start + BEGIN.len()..];
        let Some(end) = after.find(END) else { break };
        let body: String = after[..end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(body) {
            out.push(CertificateDer::from(der));
        }
        rest = &after[end + END.len()..];
    }
    out
}

/// Accepts the server whose chain holds the pinned CA and verifies against it.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|cert| Sha256::digest(cert.as_ref()).as_slice() == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the controller's CA does not match the pinned fingerprint".into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|err| rustls::Error::General(err.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_prefix() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_fingerprint(&hex).unwrap(), [0xab; 32]);
        assert_eq!(
            parse_fingerprint(&format!("sha256:{hex}")).unwrap(),
            [0xab; 32]
        );
        assert!(parse_fingerprint("sha256:abcd").is_err());
        assert!(parse_fingerprint("zz").is_err());
    }

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(
            split_host_port("10.0.0.1:9443").unwrap(),
            ("10.0.0.1", 9443)
        );
        assert_eq!(split_host_port("[::1]:9443").unwrap(), ("::1", 9443));
        assert!(split_host_port("10.0.0.1").is_err());
        assert!(split_host_port(":80").is_err());
    }
}
