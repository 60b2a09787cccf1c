//! The API listener: HTTP/1.1 over TLS (or plain HTTP where the configuration allows it), with
//! limits that keep slow or numerous clients from starving the controller.
//!
//! Every connection is watched from the moment it is accepted:
//! - **header timeout**: a new connection must complete its TLS handshake and the head of its
//!   first request, and a request once begun must complete its head, within this time;
//! - **idle timeout**: a kept-alive connection with no request under way is closed after this;
//! - **body timeout and limit**: a request's body must arrive whole within this time and be at
//!   most this large (408 / 413 otherwise, and the connection is closed);
//! - **connection cap**: connections beyond it are closed as soon as they are accepted.
//!
//! The server certificate is read from files and re-read by [`CertReloader::reload`] (on
//! `SIGHUP`): new connections get the new certificate; a file that does not load leaves the old
//! one in place.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, info, warn};

/// Default: time for a request's head (and a new connection's TLS handshake and first head).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default: time for a request's whole body.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default: the largest request body (CloudStack's own POST limit is of this order).
pub const DEFAULT_BODY_LIMIT: usize = 2 * 1024 * 1024;
/// Default: how long a kept-alive connection may wait for its next request.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default: concurrent connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// The listener's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time for a request's head, counted from its first byte (or from the connection's accept,
    /// TLS handshake included, for its first request).
    pub header_timeout: Duration,
    /// Time for a request's whole body, counted once its head is read.
    pub body_timeout: Duration,
    /// The largest request body, in bytes.
    pub body_limit: usize,
    /// How long a connection with no request under way stays open.
    pub idle_timeout: Duration,
    /// Concurrent connections; more are closed at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            body_limit: DEFAULT_BODY_LIMIT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Where the server certificate and its key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the certificate, then any intermediates.
    pub cert: PathBuf,
    /// PEM: its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The certificate files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] io::Error),
    /// The certificate file holds no PEM certificate.
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    /// The certificate file is not valid PEM.
    #[error("{0} is not a valid PEM certificate file")]
    BadCertificate(PathBuf, #[source] rustls::pki_types::pem::Error),
    /// The key file holds no usable private key (the key itself is never quoted).
    #[error("{0} holds no usable PEM private key")]
    BadKey(PathBuf),
    /// rustls refused the server configuration.
    #[error("cannot configure TLS")]
    Config(#[source] rustls::Error),
    /// The key is not one rustls can sign with, or does not match the certificate.
    #[error("the key in {key} does not fit the certificate in {cert}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
}

/// The server certificate, re-read from its files on demand.
pub struct CertReloader {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for CertReloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertReloader")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

// === impl CertReloader ===

impl CertReloader {
    /// Loads the certificate and key from `files`.
    ///
    /// # Errors
    /// [`TlsError`] when a file is unreadable, not PEM, or the key does not fit.
    pub fn load(files: TlsFiles) -> Result<Arc<CertReloader>, TlsError> {
        let key = load_certified_key(&files)?;
        Ok(Arc::new(CertReloader {
            files,
            current: RwLock::new(key),
        }))
    }

    /// Re-reads the files; new connections get the new certificate. On failure the one in use
    /// stays.
    ///
    /// # Errors
    /// [`TlsError`] saying why the new files were not taken.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = load_certified_key(&self.files)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = key;
        Ok(())
    }

    /// The files read.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// A TLS acceptor that always presents the certificate loaded last.
    ///
    /// # Errors
    /// [`TlsError::Config`] when rustls refuses the protocol versions (it does not with ring).
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for CertReloader {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read(path.to_path_buf(), e))
}

fn load_certified_key(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_pem = read(&files.cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate(files.cert.clone(), e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(files.cert.clone()));
    }
    let key_pem = read(&files.key)?;
    // The parser's error could quote the key file; only the path is reported.
    let key =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::BadKey(files.key.clone()))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider)
        .map(Arc::new)
        .map_err(|source| TlsError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })
}

/// Re-reads the certificate (when there is one) on every `SIGHUP` until `shutdown`; a failed
/// reload is logged and the certificate in use stays. Without a certificate `SIGHUP` is only
/// logged: it must not stop the controller (`systemctl reload` sends it).
pub fn reload_on_sighup(certs: Option<Arc<CertReloader>>, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(err) => {
            warn!(error = %err, "cannot watch SIGHUP: the API certificate is not reloadable");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                got = hangups.recv() => if got.is_none() { return },
            }
            let Some(certs) = &certs else {
                info!("SIGHUP: the API has no certificate to reload");
                continue;
            };
            match certs.reload() {
                Ok(()) => info!(cert = %certs.files().cert.display(), "API certificate reloaded"),
                Err(err) => warn!(
                    error = %crate::error_chain(&err),
                    "API certificate not reloaded; the previous one stays in use"
                ),
            }
        }
    });
}

/// What a connection is doing, as the watchdog sees it.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Reading a request head (or, for a new connection, the handshake and first head) that
    /// began at this instant.
    Head(Instant),
    /// A request is being answered: its body read, the command run, the answer written.
    Busy,
    /// Waiting for the next request since this instant.
    Idle(Instant),
}

/// A connection's phase, shared by its IO (bytes arriving), its service (requests) and its
/// watchdog.
#[derive(Debug)]
struct Watch {
    phase: Mutex<Phase>,
}

impl Watch {
    fn new() -> Arc<Watch> {
        Arc::new(Watch {
            phase: Mutex::new(Phase::Head(Instant::now())),
        })
    }

    fn set(&self, f: impl FnOnce(Phase) -> Phase) {
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        *phase = f(*phase);
    }

    fn bytes_arrived(&self) {
        self.set(|phase| match phase {
            Phase::Idle(_) => Phase::Head(Instant::now()),
            other => other,
        });
    }

    fn request_began(&self) {
        self.set(|_| Phase::Busy);
    }

    fn request_ended(&self) {
        self.set(|_| Phase::Idle(Instant::now()));
    }

    /// Resolves with the limit overstepped.
    async fn expired(&self, limits: Limits) -> &'static str {
        // Limits are checked a few times per timeout, so a connection is cut soon after.
        let tick = limits.header_timeout.min(limits.idle_timeout) / 4;
        let mut interval = tokio::time::interval(tick.max(Duration::from_millis(10)));
        loop {
            interval.tick().await;
            let phase = *self.phase.lock().unwrap_or_else(PoisonError::into_inner);
            match phase {
                Phase::Head(since) if since.elapsed() >= limits.header_timeout => {
                    return "header timeout";
                }
                Phase::Idle(since) if since.elapsed() >= limits.idle_timeout => {
                    return "idle timeout";
                }
                _ => {}
            }
        }
    }
}

/// An IO that tells its [`Watch`] when bytes arrive.
struct Watched<IO> {
    io: IO,
    watch: Arc<Watch>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.bytes_arrived();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Marks the request over when dropped (answered, or its handler dropped with the connection).
struct RequestGuard(Arc<Watch>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// Reads a request's whole body within the body timeout and limit before the router sees it.
async fn bounded_body(limits: Limits, request: Request) -> Result<Request, Response> {
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {} bytes", limits.body_limit),
        )
    };
    if declared.is_some_and(|n| n > limits.body_limit as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(
        limits.body_timeout,
        axum::body::to_bytes(body, limits.body_limit),
    )
    .await
    {
        Err(_) => Err(refusal(
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time".to_string(),
        )),
        Ok(Err(_)) => Err(too_large()),
        Ok(Ok(bytes)) => Ok(Request::from_parts(parts, Body::from(bytes))),
    }
}

/// An answer that also closes the connection (its request was not read whole).
fn refusal(status: StatusCode, text: String) -> Response {
    debug!(%status, %text, "request refused by the listener");
    let mut response = (status, text).into_response();
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// Serves `router` on `listener` (over TLS when `tls` is given) within `limits` until
/// `shutdown` resolves; then stops accepting, lets requests under way finish, and returns.
///
/// # Errors
/// Accepting failed for good.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    // The body is read whole, within the limit, before the router runs: axum's own default
    // limit would otherwise cap a larger configured one.
    let router = router.layer(axum::extract::DefaultBodyLimit::max(limits.body_limit));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let stopping = CancellationToken::new();
    let mut last_warned: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of descriptors or an aborted handshake: the listener itself is fine.
                Err(err) if is_transient(&err) => {
                    debug!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(err) => return Err(err),
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            // Once a minute at most: a flood must not also flood the log.
            if last_warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                warn!(%peer, max = limits.max_connections, "API connections refused: too many open");
                last_warned = Some(Instant::now());
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        let router = router.clone();
        let stopping = stopping.clone();
        connections.spawn(async move {
            let watch = Watch::new();
            tokio::select! {
                () = connection(stream, peer, tls, limits, router, watch.clone(), stopping) => {}
                reason = watch.expired(limits) => debug!(%peer, reason, "connection closed"),
            }
            drop(slot);
        });
    }
    drop(listener);
    stopping.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || err
        .raw_os_error()
        .is_some_and(|code| code == 23 || code == 24) // ENFILE, EMFILE
}

/// The client address of a request (a request extension set by the listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    router: Router,
    watch: Arc<Watch>,
    stopping: CancellationToken,
) {
    let io = Watched {
        io: stream,
        watch: watch.clone(),
    };
    match tls {
        Some(acceptor) => {
            let handshake = tokio::select! {
                // A connection still shaking hands when the server stops has no request to finish.
                () = stopping.cancelled() => return,
                handshake = acceptor.accept(io) => handshake,
            };
            match handshake {
                Ok(tls) => http(tls, peer, limits, router, watch, stopping).await,
                Err(err) => debug!(error = %err, "TLS handshake failed"),
            }
        }
        None => http(io, peer, limits, router, watch, stopping).await,
    }
}

async fn http<IO>(
    io: IO,
    peer: SocketAddr,
    limits: Limits,
    router: Router,
    watch: Arc<Watch>,
    stopping: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let guard = RequestGuard(watch.clone());
            watch.request_began();
            let router = router.clone();
            async move {
                let _guard = guard;
                let mut request = request.map(Body::new);
                request.extensions_mut().insert(Peer(peer));
                let response = match bounded_body(limits, request).await {
                    Ok(request) => match router.oneshot(request).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    },
                    Err(refused) => refused,
                };
                Ok::<_, std::convert::Infallible>(response)
            }
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The watchdog enforces the header timeout; hyper's own would also count idle time.
    builder.header_read_timeout(None).keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                debug!(error = %err, "connection ended with an error");
            }
        }
        () = stopping.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on 127.0.0.1 answering `GET /` with "hello" and `POST /` with the body's
    /// length; stopped when the returned token is cancelled.
    async fn server(tls: Option<TlsAcceptor>, limits: Limits) -> (SocketAddr, CancellationToken) {
        let router = Router::new().route("/", get(|| async { "hello" })).route(
            "/",
            post(|body: axum::body::Bytes| async move { body.len().to_string() }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(serve(listener, tls, limits, router, async move {
            stopped.cancelled().await;
        }));
        (addr, stop)
    }

    use std::net::SocketAddr;

    /// Reads until the server closes the connection; what it sent. The bound only keeps a
    /// broken server from hanging the test.
    async fn read_until_closed(stream: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut out));
        match read.await {
            Ok(Ok(_)) => {}
            // A reset is also the server closing.
            Ok(Err(err)) if err.kind() == io::ErrorKind::ConnectionReset => {}
            Ok(Err(err)) => panic!("read failed: {err}"),
            Err(_) => panic!("the server kept the connection open"),
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn self_signed(dir: &Path, name: &str) -> (TlsFiles, reqwest::Certificate) {
        let generated =
            rcgen::generate_simple_self_signed(vec!["cks.test".to_string()]).expect("cert");
        let files = TlsFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, generated.cert.pem()).expect("write cert");
        std::fs::write(&files.key, generated.signing_key.serialize_pem()).expect("write key");
        let trusted = reqwest::Certificate::from_pem(generated.cert.pem().as_bytes()).expect("pem");
        (files, trusted)
    }

    /// GET / over HTTPS on a new connection, trusting only `ca`.
    async fn https_get(
        addr: SocketAddr,
        ca: &reqwest::Certificate,
    ) -> Result<String, reqwest::Error> {
        let client = reqwest::Client::builder()
            .tls_certs_only([ca.clone()])
            .resolve("cks.test", addr)
            .build()?;
        client
            .get(format!("https://cks.test:{}/", addr.port()))
            .send()
            .await?
            .text()
            .await
    }

    #[tokio::test]
    async fn https_serves_the_certificate_loaded_last() {
        let dir = tempfile::tempdir().expect("dir");
        let (first, first_ca) = self_signed(dir.path(), "first");
        let (second, second_ca) = self_signed(dir.path(), "second");
        let certs = CertReloader::load(first.clone()).expect("load");
        let (addr, stop) =
            server(Some(certs.acceptor().expect("acceptor")), Limits::default()).await;

        assert_eq!(https_get(addr, &first_ca).await.expect("https"), "hello");
        assert!(
            https_get(addr, &second_ca).await.is_err(),
            "not yet the second"
        );

        // The files are replaced in place, then reloaded.
        std::fs::copy(&second.cert, &first.cert).expect("copy");
        std::fs::copy(&second.key, &first.key).expect("copy");
        certs.reload().expect("reload");
        assert_eq!(https_get(addr, &second_ca).await.expect("https"), "hello");
        assert!(
            https_get(addr, &first_ca).await.is_err(),
            "the first is gone"
        );

        // A broken file is refused, naming the file, and the certificate in use stays.
        std::fs::write(&first.key, "-----BEGIN PRIVATE KEY-----\nnot base64\n").expect("write");
        let err = certs.reload().expect_err("a broken key");
        assert!(err.to_string().contains("first.key"), "{err}");
        assert_eq!(https_get(addr, &second_ca).await.expect("https"), "hello");
        // A key that is not the certificate's is refused too.
        let (other, _) = self_signed(dir.path(), "other-pair");
        std::fs::copy(&other.key, &first.key).expect("copy");
        std::fs::copy(&second.cert, &first.cert).expect("copy");
        assert!(matches!(certs.reload(), Err(TlsError::Mismatch { .. })));
        assert_eq!(https_get(addr, &second_ca).await.expect("https"), "hello");

        // Plain HTTP on the TLS port gets no answer.
        let mut plain = TcpStream::connect(addr).await.expect("connect");
        plain
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        assert!(!read_until_closed(&mut plain).await.contains("hello"));
        stop.cancel();
    }

    fn limits() -> Limits {
        // Long enough never to cut a well-behaved test client, short enough to watch one cut.
        Limits {
            header_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            body_limit: 4096,
            idle_timeout: Duration::from_secs(60),
            max_connections: 64,
        }
    }

    #[tokio::test]
    async fn a_request_head_that_never_completes_is_cut() {
        let (addr, stop) = server(
            None,
            Limits {
                header_timeout: Duration::from_millis(300),
                ..limits()
            },
        )
        .await;
        // Silent from the start.
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(read_until_closed(&mut silent).await, "");
        // A head begun and never finished.
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        assert_eq!(read_until_closed(&mut slow).await, "");
        stop.cancel();
    }

    #[tokio::test]
    async fn an_idle_kept_alive_connection_is_closed_after_its_answer() {
        let (addr, stop) = server(
            None,
            Limits {
                idle_timeout: Duration::from_millis(300),
                ..limits()
            },
        )
        .await;
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        // The answer comes, then the connection (kept alive by HTTP/1.1) is closed.
        let got = read_until_closed(&mut client).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        assert!(got.ends_with("hello"), "{got}");
        stop.cancel();
    }

    #[tokio::test]
    async fn a_body_too_slow_or_too_large_is_refused() {
        let (addr, stop) = server(
            None,
            Limits {
                body_timeout: Duration::from_millis(300),
                ..limits()
            },
        )
        .await;
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten..")
            .await
            .expect("write");
        let got = read_until_closed(&mut slow).await;
        assert!(got.starts_with("HTTP/1.1 408"), "{got}");

        let mut large = TcpStream::connect(addr).await.expect("connect");
        large
            .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
            .await
            .expect("write");
        let got = read_until_closed(&mut large).await;
        assert!(got.starts_with("HTTP/1.1 413"), "{got}");

        // Chunked, so no length is declared: refused once the limit is crossed.
        let mut chunked = TcpStream::connect(addr).await.expect("connect");
        let mut request =
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..5 {
            request.extend_from_slice(b"400\r\n");
            request.extend_from_slice(&[b'a'; 1024]);
            request.extend_from_slice(b"\r\n");
        }
        chunked.write_all(&request).await.expect("write");
        let got = read_until_closed(&mut chunked).await;
        assert!(got.starts_with("HTTP/1.1 413"), "{got}");

        // Within both, the body arrives whole.
        let client = reqwest::Client::new();
        let answer = client
            .post(format!("http://{addr}/"))
            .body(vec![b'a'; 4000])
            .send()
            .await
            .expect("post")
            .text()
            .await
            .expect("text");
        assert_eq!(answer, "4000");
        stop.cancel();
    }

    #[tokio::test]
    async fn a_body_limit_above_axums_default_is_honoured() {
        let limit = 3 * 1024 * 1024;
        let (addr, stop) = server(
            None,
            Limits {
                body_limit: limit,
                ..limits()
            },
        )
        .await;
        let client = reqwest::Client::new();
        let post = |len: usize| {
            client
                .post(format!("http://{addr}/"))
                .body(vec![b'a'; len])
                .send()
        };
        let within = post(limit).await.expect("post");
        assert_eq!(within.text().await.expect("text"), limit.to_string());
        let over = post(limit + 1).await.expect("post");
        assert_eq!(over.status(), reqwest::StatusCode::PAYLOAD_TOO_LARGE);
        stop.cancel();
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_until_one_ends() {
        let (addr, stop) = server(
            None,
            Limits {
                max_connections: 2,
                ..limits()
            },
        )
        .await;
        // Two connections hold both slots (accepted in order, before the third).
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("write");
            let mut buf = [0u8; 12];
            stream.read_exact(&mut buf).await.expect("answer");
            assert_eq!(&buf, b"HTTP/1.1 200");
            held.push(stream);
        }
        let mut flood = Vec::new();
        for _ in 0..20 {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
            flood.push(stream);
        }
        for stream in &mut flood {
            assert_eq!(read_until_closed(stream).await, "", "over the cap");
        }
        // One slot frees: a new connection is served (once the server has seen the close).
        drop(held.pop());
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        let mut served = false;
        for _ in 0..100 {
            if let Ok(response) = client.get(format!("http://{addr}/")).send().await {
                served = response.text().await.is_ok_and(|t| t == "hello");
                if served {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(served, "a freed slot is used again");
        stop.cancel();
    }
}
