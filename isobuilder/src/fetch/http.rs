//! Plain files from `http(s)://` and `file://` URLs.

use std::sync::Arc;

use cks_proto::ids::Sha256Digest;
use indicatif::ProgressBar;

use super::{FetchError, download_resumable};
use crate::cache::{Cache, RecordKind, UrlRecord};

/// Largest checksum file we accept.
const MAX_CHECKSUM_FILE: u64 = 1024 * 1024;

/// A file that is in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Its digest (its cache name).
    pub sha256: Sha256Digest,
    /// Its size.
    pub size: u64,
}

/// Downloads files into the cache.
#[derive(Clone)]
pub struct HttpFetcher {
    client: reqwest::Client,
    cache: Arc<Cache>,
    offline: bool,
}

impl HttpFetcher {
    /// A fetcher using `client`; with `offline`, only the cache is consulted.
    pub fn new(client: reqwest::Client, cache: Arc<Cache>, offline: bool) -> Self {
        HttpFetcher {
            client,
            cache,
            offline,
        }
    }

    /// Makes `url`'s content available in the cache, checked against `expected` when given.
    ///
    /// A blob already in the cache under the expected digest is not downloaded again; without
    /// an expected digest, the URL's last recorded content is reused when offline.
    ///
    /// # Errors
    /// [`FetchError`]: network, status, checksum mismatch (nothing is kept), or not cached
    /// when offline.
    pub async fn fetch(
        &self,
        url: &str,
        expected: Option<&Sha256Digest>,
        bar: &ProgressBar,
    ) -> Result<Fetched, FetchError> {
        if let Some(hit) = self.cached(url, expected)? {
            return Ok(hit);
        }
        if self.offline {
            if expected.is_none()
                && let Some(rec) = self.cache.record::<UrlRecord>(RecordKind::Url, url)
                && self.cache.has_blob(&rec.sha256, Some(rec.size))
            {
                return Ok(Fetched {
                    sha256: rec.sha256,
                    size: rec.size,
                });
            }
            return Err(FetchError::NotCached {
                what: url.to_string(),
            });
        }
        let (sha256, size) = if let Some(path) = url.strip_prefix("file://") {
            self.copy_local(url, path, expected).await?
        } else {
            let client = self.client.clone();
            download_resumable(&self.cache, url, url, expected, bar, |offset| {
                let mut request = client.get(url);
                if let Some(offset) = offset {
                    request = request.header(reqwest::header::RANGE, format!("bytes={offset}-"));
                }
                async move {
                    request.send().await.map_err(|source| FetchError::Request {
                        url: url.to_string(),
                        source,
                    })
                }
            })
            .await?
        };
        self.record(url, &sha256, size)?;
        Ok(Fetched { sha256, size })
    }

    /// Makes a local input file available in the cache, checked against `expected` when given.
    ///
    /// A local file is an input, not a download: it is read even when offline.
    ///
    /// # Errors
    /// [`FetchError`]: unreadable file, or checksum mismatch (nothing is kept).
    pub async fn fetch_local(
        &self,
        path: &std::path::Path,
        expected: Option<&Sha256Digest>,
    ) -> Result<Fetched, FetchError> {
        let url = format!("file://{}", path.display());
        if let Some(hit) = self.cached(&url, expected)? {
            return Ok(hit);
        }
        let (sha256, size) = self
            .copy_local(&url, &path.to_string_lossy(), expected)
            .await?;
        self.record(&url, &sha256, size)?;
        Ok(Fetched { sha256, size })
    }

    /// The cached blob for `expected`, if present (recorded as what `url` gave).
    fn cached(
        &self,
        url: &str,
        expected: Option<&Sha256Digest>,
    ) -> Result<Option<Fetched>, FetchError> {
        let Some(d) = expected.filter(|d| self.cache.has_blob(d, None)) else {
            return Ok(None);
        };
        let size = self
            .cache
            .blob_size(d)
            .map_err(|e| FetchError::io("stat", d, e))?;
        self.record(url, d, size)?;
        Ok(Some(Fetched {
            sha256: d.clone(),
            size,
        }))
    }

    /// Fetches a small text file (a published checksum), cached like any other download.
    ///
    /// # Errors
    /// As [`HttpFetcher::fetch`]; also when the file is larger than 1 MiB or not UTF-8.
    pub async fn fetch_text(&self, url: &str) -> Result<String, FetchError> {
        let fetched = self.fetch(url, None, &ProgressBar::hidden()).await?;
        if fetched.size > MAX_CHECKSUM_FILE {
            return Err(FetchError::NoChecksum {
                url: url.to_string(),
                reason: format!("{} bytes is too large for a checksum file", fetched.size),
            });
        }
        let bytes = self
            .cache
            .read_blob(&fetched.sha256)
            .map_err(|e| FetchError::io("read", &fetched.sha256, e))?;
        String::from_utf8(bytes).map_err(|_| FetchError::NoChecksum {
            url: url.to_string(),
            reason: "it is not text".into(),
        })
    }

    async fn copy_local(
        &self,
        url: &str,
        path: &str,
        expected: Option<&Sha256Digest>,
    ) -> Result<(Sha256Digest, u64), FetchError> {
        let tmp = self.cache.temp_path("file");
        tokio::fs::copy(path, &tmp)
            .await
            .map_err(|e| FetchError::io("read", url, e))?;
        let (actual, size) = super::hash_file(&tmp).await?;
        if let Some(expected) = expected
            && *expected != actual
        {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(FetchError::ChecksumMismatch {
                url: url.to_string(),
                expected: expected.clone(),
                actual,
            });
        }
        self.cache
            .commit(&tmp, &actual)
            .map_err(|e| FetchError::io("store", url, e))?;
        Ok((actual, size))
    }

    fn record(&self, url: &str, sha256: &Sha256Digest, size: u64) -> Result<(), FetchError> {
        let record = UrlRecord {
            url: url.to_string(),
            sha256: sha256.clone(),
            size,
        };
        self.cache
            .put_record(RecordKind::Url, url, &record)
            .map_err(|e| FetchError::io("record", url, e))
    }
}

/// Finds the digest for `artifact_url` in a published checksum file.
///
/// Accepts a bare digest (dl.k8s.io), `<hex>  <file>` (GitHub releases, `sha256sum` output,
/// possibly `*file`), and multi-line sums files (etcd's `SHA256SUMS`), where the line naming the
/// artifact's file name is used.
///
/// # Errors
/// [`FetchError::NoChecksum`] when no digest for the artifact is in the text.
pub fn parse_checksum(text: &str, artifact_url: &str) -> Result<Sha256Digest, FetchError> {
    let file_name = artifact_url.rsplit('/').next().unwrap_or(artifact_url);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let digest_of = |line: &str| {
        line.split_whitespace()
            .next()
            .and_then(|h| h.parse::<Sha256Digest>().ok())
    };
    for line in &lines {
        let mut parts = line.split_whitespace();
        let (Some(_), Some(name)) = (parts.next(), parts.next()) else {
            continue;
        };
        let name = name.trim_start_matches('*');
        if (name == file_name || name.ends_with(&format!("/{file_name}")))
            && let Some(d) = digest_of(line)
        {
            return Ok(d);
        }
    }
    if lines.len() == 1
        && let Some(d) = digest_of(lines[0])
    {
        return Ok(d);
    }
    Err(FetchError::NoChecksum {
        url: artifact_url.to_string(),
        reason: format!("its checksum file names no sha256 for {file_name}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_the_upstream_checksum_formats() {
        let url = "https://x/v1/cni-plugins-linux-amd64-v1.6.2.tgz";
        assert_eq!(parse_checksum(&format!("{HEX}\n"), url).unwrap().hex(), HEX);
        assert_eq!(
            parse_checksum(&format!("{HEX}  cni-plugins-linux-amd64-v1.6.2.tgz\n"), url)
                .unwrap()
                .hex(),
            HEX
        );
        let other = "f".repeat(64);
        let sums = format!(
            "{other}  etcd-v3.5.21-linux-arm64.tar.gz\n{HEX} *etcd-v3.5.21-linux-amd64.tar.gz\n"
        );
        assert_eq!(
            parse_checksum(&sums, "https://x/etcd-v3.5.21-linux-amd64.tar.gz")
                .unwrap()
                .hex(),
            HEX
        );
    }

    #[test]
    fn refuses_sums_files_without_the_artifact() {
        let sums = format!("{HEX}  a.tgz\n{HEX}  b.tgz\n");
        assert!(matches!(
            parse_checksum(&sums, "https://x/c.tgz"),
            Err(FetchError::NoChecksum { .. })
        ));
        assert!(parse_checksum("<html>not found</html>", "https://x/c.tgz").is_err());
    }
}
