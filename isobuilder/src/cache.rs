//! The content-addressed download cache.
//!
//! ```text
//! <cache>/blobs/sha256/<hex>          verified content: downloads, image blobs, generated files
//! <cache>/tmp/<key>.part              downloads in progress (resumed with HTTP Range)
//! <cache>/index/urls/<sha256(url)>    what a URL gave last time (digest, size): --offline needs it
//! <cache>/index/refs/<sha256(ref)>    what an image reference resolved to for an arch
//! <cache>/index/archives/<key>        the image archive built for an index.json
//! ```
//! Content lands in `blobs/` only after its digest was checked, by rename, so a blob's name is
//! always its content. Records are small JSON files, also written by rename. Two builds may share
//! a cache.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use cks_proto::ids::Sha256Digest;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// What a URL's content was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UrlRecord {
    /// The URL.
    pub url: String,
    /// Its content digest.
    pub sha256: Sha256Digest,
    /// Its size.
    pub size: u64,
}

/// Record kinds under `index/`.
#[derive(Debug, Clone, Copy)]
pub enum RecordKind {
    /// URL → content.
    Url,
    /// Image reference + platform → manifest.
    Ref,
    /// index.json → archive.
    Archive,
}

impl RecordKind {
    fn dir(self) -> &'static str {
        match self {
            RecordKind::Url => "urls",
            RecordKind::Ref => "refs",
            RecordKind::Archive => "archives",
        }
    }
}

impl Cache {
    /// Opens (creating as needed) a cache at `root`.
    ///
    /// # Errors
    /// When the directories cannot be created.
    pub fn open(root: &Path) -> io::Result<Cache> {
        for sub in [
            "blobs/sha256",
            "tmp",
            "index/urls",
            "index/refs",
            "index/archives",
        ] {
            fs::create_dir_all(root.join(sub))?;
        }
        Ok(Cache {
            root: root.to_path_buf(),
        })
    }

    /// The default location: `$XDG_CACHE_HOME/cks-isobuilder`, else `~/.cache/cks-isobuilder`.
    pub fn default_dir() -> PathBuf {
        if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
            return PathBuf::from(x).join("cks-isobuilder");
        }
        let home =
            std::env::var_os("HOME").map_or_else(|| PathBuf::from("/var/cache"), PathBuf::from);
        home.join(".cache/cks-isobuilder")
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a verified blob lives.
    pub fn blob_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Whether the blob is present (with the given size, when known).
    pub fn has_blob(&self, digest: &Sha256Digest, size: Option<u64>) -> bool {
        match fs::metadata(self.blob_path(digest)) {
            Ok(m) => m.is_file() && size.is_none_or(|s| s == m.len()),
            Err(_) => false,
        }
    }

    /// The size of a present blob.
    pub fn blob_size(&self, digest: &Sha256Digest) -> io::Result<u64> {
        Ok(fs::metadata(self.blob_path(digest))?.len())
    }

    /// Reads a (small) blob.
    pub fn read_blob(&self, digest: &Sha256Digest) -> io::Result<Vec<u8>> {
        fs::read(self.blob_path(digest))
    }

    /// The partial-download file for `key` (a URL or a digest).
    pub fn partial_path(&self, key: &str) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{}.part", Sha256Digest::of(key.as_bytes()).hex()))
    }

    /// Moves a fully written and verified temporary file into the blob store.
    pub fn commit(&self, tmp: &Path, digest: &Sha256Digest) -> io::Result<PathBuf> {
        File::open(tmp)?.sync_all()?;
        let dest = self.blob_path(digest);
        fs::rename(tmp, &dest)?;
        Ok(dest)
    }

    /// Stores bytes produced by the builder itself (generated files, rewritten manifests).
    pub fn put_bytes(&self, bytes: &[u8]) -> io::Result<Sha256Digest> {
        let digest = Sha256Digest::of(bytes);
        if !self.has_blob(&digest, Some(bytes.len() as u64)) {
            let tmp = self.temp_path("put");
            write_file(&tmp, bytes)?;
            self.commit(&tmp, &digest)?;
        }
        Ok(digest)
    }

    /// A fresh temporary path inside the cache (same file system as the blobs).
    pub fn temp_path(&self, label: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{label}.{}.{n}.tmp", std::process::id()))
    }

    /// Reads a record, `None` when absent or unreadable (records are only hints).
    pub fn record<T: DeserializeOwned>(&self, kind: RecordKind, key: &str) -> Option<T> {
        let bytes = fs::read(self.record_path(kind, key)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes a record atomically.
    pub fn put_record<T: Serialize>(
        &self,
        kind: RecordKind,
        key: &str,
        value: &T,
    ) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
        let tmp = self.temp_path("record");
        write_file(&tmp, &bytes)?;
        fs::rename(tmp, self.record_path(kind, key))
    }

    fn record_path(&self, kind: RecordKind, key: &str) -> PathBuf {
        self.root
            .join("index")
            .join(kind.dir())
            .join(Sha256Digest::of(key.as_bytes()).hex())
    }
}

/// Writes `bytes` to `path` and syncs it.
pub fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_bytes_is_content_addressed_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let a = cache.put_bytes(b"hello").unwrap();
        let b = cache.put_bytes(b"hello").unwrap();
        assert_eq!(a, b);
        assert_eq!(cache.read_blob(&a).unwrap(), b"hello");
        assert!(cache.has_blob(&a, Some(5)));
        assert!(!cache.has_blob(&a, Some(6)));
    }

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let rec = UrlRecord {
            url: "http://x/y".into(),
            sha256: Sha256Digest::of(b"y"),
            size: 1,
        };
        cache.put_record(RecordKind::Url, &rec.url, &rec).unwrap();
        assert_eq!(
            cache.record::<UrlRecord>(RecordKind::Url, "http://x/y"),
            Some(rec)
        );
        assert_eq!(
            cache.record::<UrlRecord>(RecordKind::Url, "http://x/z"),
            None
        );
    }
}
