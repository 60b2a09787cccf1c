//! The kube-apiserver stand-in: HTTPS with client-certificate authentication in front of the
//! cluster's object store ([`handler`]), started by the kubelet stand-in from the static pod
//! manifest kubeadm writes, with the real flags:
//!
//! `--advertise-address`, `--secure-port` (default 6443), `--bind-address` (default: the
//! advertise address, so that several simulated control planes can share a host on
//! `127.0.0.x`; `0.0.0.0` works too), `--tls-cert-file`, `--tls-private-key-file`,
//! `--client-ca-file`, `--service-cluster-ip-range`; the other flags kubeadm writes are
//! accepted and ignored. Paths are node paths, under `KUBESIM_ROOT`. The cluster is the one whose
//! CA is the client CA; its store stands in for etcd, so every control plane of a cluster
//! serves the same objects. The version served is `KUBESIM_VERSION` (the kubelet sets it from
//! the manifest's image tag).
//!
//! HTTP/1.1 only (ALPN `http/1.1`); kubectl falls back to it.

pub mod handler;
pub mod table;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use self::handler::{Api, ApiBody, ApiRequest, ApiResponse, User, WatchRequest};
use crate::cluster::{ClusterDir, ClusterError};
use crate::env::NodeEnv;
use crate::flags::FlagSpec;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a watch looks at the store.
const WATCH_POLL: Duration = Duration::from_millis(250);
/// How long to retry binding while a previous instance still holds the port.
const BIND_RETRY: Duration = Duration::from_secs(30);

/// Flags of the real kube-apiserver that kubeadm writes; `true` = used by the stand-in.
const FLAGS: &[(&str, bool)] = &[
    ("advertise-address", true),
    ("secure-port", true),
    ("bind-address", true),
    ("tls-cert-file", true),
    ("tls-private-key-file", true),
    ("client-ca-file", true),
    ("service-cluster-ip-range", true),
    ("allow-privileged", true),
    ("authorization-mode", true),
    ("enable-admission-plugins", true),
    ("enable-bootstrap-token-auth", true),
    ("etcd-cafile", true),
    ("etcd-certfile", true),
    ("etcd-keyfile", true),
    ("etcd-servers", true),
    ("kubelet-client-certificate", true),
    ("kubelet-client-key", true),
    ("kubelet-preferred-address-types", true),
    ("proxy-client-cert-file", true),
    ("proxy-client-key-file", true),
    ("requestheader-allowed-names", true),
    ("requestheader-client-ca-file", true),
    ("requestheader-extra-headers-prefix", true),
    ("requestheader-group-headers", true),
    ("requestheader-username-headers", true),
    ("service-account-issuer", true),
    ("service-account-key-file", true),
    ("service-account-signing-key-file", true),
    ("v", true),
];

/// Why the API server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    /// Bad command line.
    #[error("{0}")]
    Usage(String),
    /// A certificate or key file could not be read.
    #[error("failed to read {what} {path:?}")]
    ReadFile {
        /// Which file.
        what: &'static str,
        /// Its host path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{what} {path:?} holds no usable PEM data")]
    Pem {
        /// Which file.
        what: &'static str,
        /// Its host path.
        path: PathBuf,
    },
    /// rustls refused the configuration.
    #[error("failed to set up TLS")]
    Tls(#[from] rustls::Error),
    /// The client certificate verifier could not be built.
    #[error("failed to set up client certificate verification")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The cluster could not be found.
    #[error("failed to find the cluster of the client CA")]
    Cluster(#[from] ClusterError),
    /// The port could not be bound.
    #[error("failed to listen on {address}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct ApiServerConfig {
    /// `--advertise-address`.
    pub advertise_address: IpAddr,
    /// Where to listen.
    pub bind_address: IpAddr,
    /// `--secure-port`.
    pub secure_port: u16,
    /// Serving certificate (host path).
    pub tls_cert_file: PathBuf,
    /// Serving key (host path).
    pub tls_key_file: PathBuf,
    /// Client CA (host path).
    pub client_ca_file: PathBuf,
    /// First address of `--service-cluster-ip-range`.
    pub service_network: Ipv4Addr,
    /// The cluster.
    pub cluster: ClusterDir,
    /// The version served.
    pub version: String,
}

impl ApiServerConfig {
    /// Reads the command line (without the program name) against the node environment.
    ///
    /// # Errors
    /// [`ApiServerError`].
    pub fn from_args(args: &[String], env: &NodeEnv) -> Result<ApiServerConfig, ApiServerError> {
        let flags = FlagSpec::new(FLAGS)
            .parse(args)
            .map_err(ApiServerError::Usage)?;
        if let Some(extra) = flags.args.first() {
            return Err(ApiServerError::Usage(format!(
                "unknown command \"{extra}\" for \"kube-apiserver\""
            )));
        }
        let required = |name: &str| {
            flags
                .get(name)
                .map(|v| env.host_path(v))
                .ok_or_else(|| ApiServerError::Usage(format!("--{name} is required")))
        };
        let advertise_address: IpAddr = flags
            .get("advertise-address")
            .ok_or_else(|| ApiServerError::Usage("--advertise-address is required".into()))?
            .parse()
            .map_err(|_| ApiServerError::Usage("invalid --advertise-address".into()))?;
        let bind_address = match flags.get("bind-address") {
            Some(b) => b
                .parse()
                .map_err(|_| ApiServerError::Usage("invalid --bind-address".into()))?,
            None => advertise_address,
        };
        let secure_port = flags
            .get("secure-port")
            .unwrap_or("6443")
            .parse()
            .map_err(|_| ApiServerError::Usage("invalid --secure-port".into()))?;
        let service_network = flags
            .get("service-cluster-ip-range")
            .unwrap_or("10.96.0.0/12")
            .split('/')
            .next()
            .and_then(|ip| ip.parse().ok())
            .ok_or_else(|| ApiServerError::Usage("invalid --service-cluster-ip-range".into()))?;
        let client_ca_file = required("client-ca-file")?;
        let ca_pem = std::fs::read_to_string(&client_ca_file).map_err(|source| {
            ApiServerError::ReadFile {
                what: "the client CA",
                path: client_ca_file.clone(),
                source,
            }
        })?;
        Ok(ApiServerConfig {
            advertise_address,
            bind_address,
            secure_port,
            tls_cert_file: required("tls-cert-file")?,
            tls_key_file: required("tls-private-key-file")?,
            cluster: ClusterDir::for_ca_pem(&env.cluster_base, &ca_pem)?,
            client_ca_file,
            service_network,
            version: env.version.clone(),
        })
    }

    /// The handler over this configuration's cluster.
    pub fn api(&self) -> Api {
        Api {
            store: self.cluster.store(),
            version: self.version.clone(),
            server_address: SocketAddr::new(self.advertise_address, self.secure_port).to_string(),
            service_network: self.service_network,
        }
    }

    /// TLS: the serving certificate, client certificates verified against the client CA but
    /// optional (anonymous requests reach the few anonymous endpoints).
    ///
    /// # Errors
    /// [`ApiServerError`].
    pub fn tls(&self) -> Result<Arc<ServerConfig>, ApiServerError> {
        let read = |what: &'static str, path: &PathBuf| {
            std::fs::read(path).map_err(|source| ApiServerError::ReadFile {
                what,
                path: path.clone(),
                source,
            })
        };
        let pem_error = |what: &'static str, path: &PathBuf| ApiServerError::Pem {
            what,
            path: path.clone(),
        };
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&read("the serving certificate", &self.tls_cert_file)?)
                .collect::<Result<_, _>>()
                .map_err(|_| pem_error("the serving certificate", &self.tls_cert_file))?;
        let key = PrivateKeyDer::from_pem_slice(&read("the serving key", &self.tls_key_file)?)
            .map_err(|_| pem_error("the serving key", &self.tls_key_file))?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&read("the client CA", &self.client_ca_file)?) {
            let ca = ca.map_err(|_| pem_error("the client CA", &self.client_ca_file))?;
            roots.add(ca)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .clear_root_hint_subjects()
                .build()?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Binds `address`, retrying while a previous instance still holds it.
///
/// # Errors
/// [`ApiServerError::Bind`] after [`BIND_RETRY`].
pub async fn bind(address: SocketAddr) -> Result<TcpListener, ApiServerError> {
    let deadline = tokio::time::Instant::now() + BIND_RETRY;
    loop {
        match TcpListener::bind(address).await {
            Ok(listener) => return Ok(listener),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                debug!(%address, "address in use; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(source) => return Err(ApiServerError::Bind { address, source }),
        }
    }
}

/// Serves `api` over TLS on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    api: Api,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let api = Arc::new(api);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let api = api.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(err)) => {
                    debug!(%peer, %err, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let user = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|der| crate::pki::subject_of_der(der))
                .map(|(name, groups)| User { name, groups });
            let service = service_fn(move |req| respond(req, api.clone(), user.clone()));
            if let Err(err) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, %err, "connection ended");
            }
        });
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(bytes: Vec<u8>) -> Body {
    Full::new(Bytes::from(bytes)).boxed()
}

/// Percent-decodes a path (`+` stays a plus).
fn decode_path(path: &str) -> String {
    decode(&path.replace('+', "%2B"))
}

/// Percent-decodes a query component (`+` is a space).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn respond(
    req: Request<Incoming>,
    api: Arc<Api>,
    user: Option<User>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().as_str().to_string();
    let path = decode_path(req.uri().path());
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|q| !q.is_empty())
        .map(|q| {
            let (k, v) = q.split_once('=').unwrap_or((q, ""));
            (decode(k), decode(v))
        })
        .collect();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let accept = header("accept");
    let content_type = header("content-type");
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(err) => {
            debug!(%err, "request body");
            Vec::new()
        }
    };
    let request = ApiRequest {
        method,
        path,
        query,
        accept,
        content_type,
        body,
        user,
    };
    let handler = api.clone();
    let response = tokio::task::spawn_blocking(move || {
        let response = handler.handle(&request);
        debug!(
            method = request.method,
            path = request.path,
            status = response.status,
            "request"
        );
        response
    })
    .await
    .unwrap_or_else(|err| {
        handler::status(
            500,
            "InternalError",
            &format!("handler failed: {err}"),
            json!({}),
        )
    });
    Ok(into_http(response, &api))
}

fn into_http(response: ApiResponse, api: &Api) -> Response<Body> {
    let body = match response.body {
        ApiBody::Full(bytes) => full(bytes),
        ApiBody::Watch(watch) => watch_body(*watch, api.clone()),
    };
    let mut http = Response::new(body);
    *http.status_mut() = hyper::StatusCode::from_u16(response.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = hyper::header::HeaderValue::from_str(&response.content_type) {
        http.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    http
}

/// A body fed by a channel (the watch events).
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

fn event(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn key_of(obj: &Value) -> String {
    format!(
        "{}/{}",
        crate::store::namespace_of(obj),
        crate::store::name_of(obj)
    )
}

fn rv_of(obj: &Value) -> u64 {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0)
}

/// Streams watch events by polling the store until the client goes away or the timeout ends.
fn watch_body(watch: WatchRequest, api: Api) -> Body {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(watch.timeout_seconds.max(1));
        let mut known: BTreeMap<String, (u64, Value)> = BTreeMap::new();
        let mut first = true;
        loop {
            let store = api.store.clone();
            let w = watch.clone();
            let Ok(Ok(items)) =
                tokio::task::spawn_blocking(move || store.read().map(|o| w.select(&o))).await
            else {
                break;
            };
            let mut seen = BTreeMap::new();
            for obj in items {
                let key = key_of(&obj);
                let rv = rv_of(&obj);
                let kind = match known.get(&key) {
                    None if first && watch.since.is_some_and(|since| rv <= since) => None,
                    None if first && watch.since.is_some() => Some("MODIFIED"),
                    None => Some("ADDED"),
                    Some((old, _)) if *old != rv => Some("MODIFIED"),
                    Some(_) => None,
                };
                if let Some(kind) = kind
                    && tx.send(event(kind, &obj)).await.is_err()
                {
                    return;
                }
                seen.insert(key, (rv, obj));
            }
            for (key, (_, obj)) in &known {
                if !seen.contains_key(key) && tx.send(event("DELETED", obj)).await.is_err() {
                    return;
                }
            }
            known = seen;
            first = false;
            if tokio::time::Instant::now() >= deadline || tx.is_closed() {
                break;
            }
            tokio::time::sleep(WATCH_POLL).await;
        }
    });
    ChannelBody { rx }.boxed()
}

/// Starts serving with `config` until `shutdown`; logs one line per listen address.
///
/// # Errors
/// [`ApiServerError`] when TLS cannot be set up or the port cannot be bound.
pub async fn run(
    config: ApiServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ApiServerError> {
    let tls = config.tls()?;
    let address = SocketAddr::new(config.bind_address, config.secure_port);
    let listener = bind(address).await?;
    info!(%address, version = config.version, cluster = ?config.cluster.path(), "serving securely");
    serve(listener, tls, config.api(), shutdown).await;
    info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_components_are_percent_decoded() {
        assert_eq!(decode("spec.nodeName%3Dnode-1"), "spec.nodeName=node-1");
        assert_eq!(decode("a+b%2Cc"), "a b,c");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(
            decode_path("/apis/x/v1/clusterroles/system%3Acoredns+x"),
            "/apis/x/v1/clusterroles/system:coredns+x"
        );
    }
}
