//! ISO downloads for `registerIso`: fetch the URL (http(s) or file), verify the checksum.

use std::path::Path;

use md5::Md5;
use sha2::{Digest, Sha256, Sha512};

/// The largest ISO the simulator downloads.
pub const MAX_ISO_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// A checksum as `registerIso` takes it: `{SHA-256}hex`, `{SHA-512}hex`, `{MD5}hex` or bare
/// MD5 hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    /// MD5.
    Md5(String),
    /// SHA-256.
    Sha256(String),
    /// SHA-512.
    Sha512(String),
}

/// Download or verification failures; the text becomes the ISO's `status`.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The checksum text is not understood.
    #[error("invalid checksum {0:?}: expected {{SHA-256}}hex, {{SHA-512}}hex or MD5 hex")]
    BadChecksum(String),
    /// The file could not be read.
    #[error("failed to read {path}")]
    ReadFile {
        /// The path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP request failed.
    #[error("failed to download {url}")]
    Http {
        /// The URL.
        url: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The download is larger than [`MAX_ISO_BYTES`].
    #[error("{0} is larger than the ISO size limit")]
    TooLarge(String),
    /// The content does not match the checksum.
    #[error("checksum mismatch: expected {expected}, got {actual}")]
    ChecksumMismatch {
        /// Expected hex.
        expected: String,
        /// Computed hex.
        actual: String,
    },
    /// Writing the downloaded file failed.
    #[error("failed to store ISO at {path}")]
    Store {
        /// The path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

// === impl Checksum ===

impl Checksum {
    /// Parses the `checksum` parameter.
    ///
    /// # Errors
    /// Unknown algorithm prefix or non-hex digest of the wrong length.
    pub fn parse(text: &str) -> Result<Self, DownloadError> {
        let bad = || DownloadError::BadChecksum(text.to_owned());
        let (algo, hex) = match text.strip_prefix('{').and_then(|t| t.split_once('}')) {
            Some((algo, hex)) => (algo.to_ascii_uppercase(), hex.to_ascii_lowercase()),
            None => ("MD5".to_owned(), text.to_ascii_lowercase()),
        };
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        match (algo.as_str(), hex.len()) {
            ("MD5", 32) => Ok(Self::Md5(hex)),
            ("SHA-256" | "SHA256", 64) => Ok(Self::Sha256(hex)),
            ("SHA-512" | "SHA512", 128) => Ok(Self::Sha512(hex)),
            _ => Err(bad()),
        }
    }

    /// Checks `data` against the checksum.
    ///
    /// # Errors
    /// The digest differs.
    pub fn verify(&self, data: &[u8]) -> Result<(), DownloadError> {
        let (expected, actual) = match self {
            Self::Md5(e) => (e, hex::encode(Md5::digest(data).as_slice())),
            Self::Sha256(e) => (e, hex::encode(Sha256::digest(data).as_slice())),
            Self::Sha512(e) => (e, hex::encode(Sha512::digest(data).as_slice())),
        };
        if *expected == actual {
            Ok(())
        } else {
            Err(DownloadError::ChecksumMismatch {
                expected: expected.clone(),
                actual,
            })
        }
    }
}

/// Fetches `url` fully into memory.
///
/// # Errors
/// Unreadable file, HTTP failure or non-success status, or too large.
pub async fn fetch(url: &str) -> Result<Vec<u8>, DownloadError> {
    if let Some(path) = url.strip_prefix("file://") {
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(|source| DownloadError::ReadFile {
                path: path.to_owned(),
                source,
            })?;
        if meta.len() > MAX_ISO_BYTES {
            return Err(DownloadError::TooLarge(url.to_owned()));
        }
        return tokio::fs::read(path)
            .await
            .map_err(|source| DownloadError::ReadFile {
                path: path.to_owned(),
                source,
            });
    }
    let http = |source| DownloadError::Http {
        url: url.to_owned(),
        source,
    };
    let response = reqwest::Client::new()
        .get(url)
        .timeout(std::time::Duration::from_secs(600))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(http)?;
    if response.content_length().unwrap_or(0) > MAX_ISO_BYTES {
        return Err(DownloadError::TooLarge(url.to_owned()));
    }
    Ok(response.bytes().await.map_err(http)?.to_vec())
}

/// Downloads, verifies and (when `dest` is given) stores an ISO; returns its size.
///
/// # Errors
/// See [`fetch`] and [`Checksum::verify`].
pub async fn download_iso(
    url: &str,
    checksum: Option<&str>,
    dest: Option<&Path>,
) -> Result<u64, DownloadError> {
    let data = fetch(url).await?;
    if let Some(checksum) = checksum {
        Checksum::parse(checksum)?.verify(&data)?;
    }
    if let Some(dest) = dest {
        let store = |source| DownloadError::Store {
            path: dest.display().to_string(),
            source,
        };
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(store)?;
        }
        tokio::fs::write(dest, &data).await.map_err(store)?;
    }
    Ok(data.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_parse_and_verify() {
        assert!(Checksum::parse("{SHA-1}abcd").is_err());
        assert!(Checksum::parse("xyz").is_err());
        let md5 = Checksum::parse("5d41402abc4b2a76b9719d911017c592").unwrap();
        md5.verify(b"hello").unwrap();
        let sha = Checksum::parse(
            "{SHA-256}2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824",
        )
        .unwrap();
        sha.verify(b"hello").unwrap();
        assert!(matches!(
            sha.verify(b"world"),
            Err(DownloadError::ChecksumMismatch { .. })
        ));
    }
}
