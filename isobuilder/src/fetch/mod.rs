//! Getting inputs into the cache: plain files over HTTP(S)/file URLs ([`http`]) and images
//! through the OCI distribution API ([`registry`]). Both resume interrupted downloads and
//! verify every byte before it enters the cache.

pub mod http;
pub mod registry;

use std::future::Future;
use std::time::Duration;

use cks_proto::ids::Sha256Digest;
use futures_util::StreamExt;
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cache::Cache;

/// Attempts per download (the first plus retries of transient failures).
const MAX_ATTEMPTS: u32 = 4;
/// First retry delay; doubled each time.
const RETRY_BASE_DELAY: Duration = Duration::from_millis(200);

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The request could not be made or the connection broke (after retries).
    #[error("failed to download {url}")]
    Request {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered an unexpected status (after retries for 5xx).
    #[error("failed to download {url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: reqwest::StatusCode,
    },
    /// The content is not what its checksum says: nothing was kept.
    #[error("checksum mismatch for {url}: expected sha256 {expected}, got {actual}")]
    ChecksumMismatch {
        /// The URL.
        url: String,
        /// What the pin or the published checksum says.
        expected: Sha256Digest,
        /// What arrived.
        actual: Sha256Digest,
    },
    /// No checksum could be found for a file that requires one.
    #[error("no checksum for {url}: {reason}; pin it in the spec under [checksums]")]
    NoChecksum {
        /// The URL.
        url: String,
        /// Why the published one could not be used.
        reason: String,
    },
    /// `--offline` and not in the cache.
    #[error("{what} is not in the cache")]
    NotCached {
        /// The URL or image.
        what: String,
    },
    /// Local file trouble.
    #[error("failed to {action} {path}")]
    Io {
        /// What we were doing.
        action: &'static str,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Registry-specific trouble.
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
}

impl FetchError {
    fn io(action: &'static str, path: impl std::fmt::Display, source: std::io::Error) -> Self {
        FetchError::Io {
            action,
            path: path.to_string(),
            source,
        }
    }
}

/// Downloads into the cache with retries and HTTP Range resumption, verifying the digest.
///
/// `send(offset)` makes the request, asking for bytes from `offset` when it is `Some`. `key`
/// names the partial file, so an interrupted build resumes where it stopped. With `expected`
/// unset, the content is accepted as is (trust on first use) and its digest returned.
pub(crate) async fn download_resumable<F, Fut>(
    cache: &Cache,
    key: &str,
    url: &str,
    expected: Option<&Sha256Digest>,
    bar: &ProgressBar,
    send: F,
) -> Result<(Sha256Digest, u64), FetchError>
where
    F: Fn(Option<u64>) -> Fut,
    Fut: Future<Output = Result<reqwest::Response, FetchError>>,
{
    let part = cache.partial_path(key);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let have = tokio::fs::metadata(&part)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        let result = download_once(&part, url, have, bar, &send).await;
        let transient = match &result {
            Ok(()) => false,
            Err(FetchError::Request { .. }) => true,
            Err(FetchError::Status { status, .. }) => {
                status.is_server_error() || *status == reqwest::StatusCode::TOO_MANY_REQUESTS
            }
            Err(_) => false,
        };
        if let Err(e) = result {
            if transient && attempt < MAX_ATTEMPTS {
                tracing::warn!(url, attempt, error = %error_chain(&e), "download interrupted, retrying");
                tokio::time::sleep(RETRY_BASE_DELAY * 2u32.pow(attempt - 1)).await;
                continue;
            }
            return Err(e);
        }
        let (actual, size) = hash_file(&part).await?;
        if let Some(expected) = expected
            && *expected != actual
        {
            let _ = tokio::fs::remove_file(&part).await;
            if have > 0 && attempt < MAX_ATTEMPTS {
                tracing::warn!(
                    url,
                    "resumed download does not match its checksum, starting over"
                );
                continue;
            }
            return Err(FetchError::ChecksumMismatch {
                url: url.to_string(),
                expected: expected.clone(),
                actual,
            });
        }
        cache
            .commit(&part, &actual)
            .map_err(|e| FetchError::io("store", part.display(), e))?;
        return Ok((actual, size));
    }
}

async fn download_once<F, Fut>(
    part: &std::path::Path,
    url: &str,
    have: u64,
    bar: &ProgressBar,
    send: &F,
) -> Result<(), FetchError>
where
    F: Fn(Option<u64>) -> Fut,
    Fut: Future<Output = Result<reqwest::Response, FetchError>>,
{
    let response = send((have > 0).then_some(have)).await?;
    let status = response.status();
    let append = match status {
        reqwest::StatusCode::PARTIAL_CONTENT if have > 0 => true,
        s if s.is_success() => false,
        reqwest::StatusCode::RANGE_NOT_SATISFIABLE => {
            // Our partial file is bigger than the resource: start over.
            let _ = tokio::fs::remove_file(part).await;
            return Err(FetchError::Status {
                url: url.to_string(),
                status: reqwest::StatusCode::SERVICE_UNAVAILABLE,
            });
        }
        status => {
            return Err(FetchError::Status {
                url: url.to_string(),
                status,
            });
        }
    };
    if let Some(len) = response.content_length() {
        bar.inc_length(len);
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(part)
        .await
        .map_err(|e| FetchError::io("create", part.display(), e))?;
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| FetchError::Request {
            url: url.to_string(),
            source,
        })?;
        file.write_all(&chunk)
            .await
            .map_err(|e| FetchError::io("write", part.display(), e))?;
        bar.inc(chunk.len() as u64);
    }
    file.flush()
        .await
        .map_err(|e| FetchError::io("write", part.display(), e))?;
    Ok(())
}

/// SHA-256 and size of a file.
pub(crate) async fn hash_file(path: &std::path::Path) -> Result<(Sha256Digest, u64), FetchError> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| FetchError::io("open", path.display(), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| FetchError::io("read", path.display(), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((Sha256Digest::from_hasher(hasher), size))
}

/// An error and its causes on one line, for logs.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
