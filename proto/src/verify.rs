//! Bundle verification: the one implementation the isobuilder and the agent share.
//!
//! [`verify_bundle`] reads `cks-manifest.json` from a [`BundleSource`] and checks, in order:
//! 1. the manifest parses and its schema version is known;
//! 2. the bundle's architecture is the expected one (when one is given);
//! 3. the bundle holds exactly the files the manifest lists (none missing, none extra), each with
//!    the listed size and mode;
//! 4. every file's SHA-256, streaming;
//! 5. inside every image archive: each blob re-hashed against its name, `index.json` naming each
//!    image with its manifest digest, and each image's config and layers present.
//!
//! It stops at the first thing that does not hold and names it in the error. Nothing is
//! written anywhere: verifying is safe before anything is installed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::ids::{Arch, Sha256Digest};
use crate::manifest::{BundleManifest, FileKind, MANIFEST_PATH, ManifestError, read_manifest};
use crate::oci::{ANNOTATION_IMAGE_NAME, ImageIndex, ImageManifest};

/// Largest manifest (and image manifest blob) we read into memory.
const MAX_JSON_BYTES: u64 = 16 * 1024 * 1024;

/// Read access to a bundle's files, wherever the bundle is (a directory, an ISO file).
///
/// It exists so that verification and installation run the same code on a mounted CD-ROM, an
/// ISO read in user space, or a build's staging tree.
pub trait BundleSource {
    /// A short description for messages, e.g. `ISO /tmp/setup-v1.33.1-x86_64.iso`.
    fn describe(&self) -> String;
    /// Every regular file (not directories), with `/`-separated paths relative to the root.
    fn list_files(&self) -> io::Result<Vec<SourceFile>>;
    /// Opens one file for sequential reading.
    fn open<'a>(&'a self, path: &str) -> io::Result<Box<dyn Read + 'a>>;
}

/// A file as a [`BundleSource`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Relative path, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits, when the source knows them.
    pub mode: Option<u32>,
}

/// What to check besides the bundle's own consistency.
#[derive(Default)]
pub struct VerifyOptions<'a> {
    /// Refuse a bundle built for another architecture.
    pub expected_arch: Option<Arch>,
    /// Called with the number of bytes read, as hashing goes on (for progress bars).
    pub on_bytes: Option<&'a (dyn Fn(u64) + Sync)>,
}

/// A bundle that passed every check.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    /// Its manifest.
    pub manifest: BundleManifest,
    /// SHA-256 of the manifest file's bytes (tells bundles apart).
    pub manifest_sha256: Sha256Digest,
    /// Bytes hashed.
    pub bytes_checked: u64,
}

/// The first thing about a bundle that does not hold.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// No `cks-manifest.json` at the root.
    #[error("{source_desc} has no cks-manifest.json (not a bundle built by cks-isobuilder?)")]
    ManifestMissing {
        /// The bundle.
        source_desc: String,
    },
    /// The manifest is unreadable.
    #[error("{source_desc}: invalid manifest")]
    ManifestInvalid {
        /// The bundle.
        source_desc: String,
        /// Why.
        #[source]
        source: ManifestError,
    },
    /// Built for another architecture.
    #[error("bundle is for {bundle}, this node is {expected}")]
    WrongArch {
        /// The bundle's architecture.
        bundle: Arch,
        /// The expected one.
        expected: Arch,
    },
    /// A listed file is absent.
    #[error("file {path} listed in the manifest is missing")]
    MissingFile {
        /// Its path.
        path: String,
    },
    /// A file the manifest does not list.
    #[error("file {path} is not listed in the manifest")]
    UnexpectedFile {
        /// Its path.
        path: String,
    },
    /// Size differs.
    #[error("file {path} has {actual} bytes, the manifest says {expected}")]
    SizeMismatch {
        /// Its path.
        path: String,
        /// From the manifest.
        expected: u64,
        /// Found.
        actual: u64,
    },
    /// Mode differs.
    #[error("file {path} has mode {actual:o}, the manifest says {expected:o}")]
    ModeMismatch {
        /// Its path.
        path: String,
        /// From the manifest.
        expected: u32,
        /// Found.
        actual: u32,
    },
    /// Content differs.
    #[error("file {path} has sha256 {actual}, the manifest says {expected}")]
    DigestMismatch {
        /// Its path.
        path: String,
        /// From the manifest.
        expected: Sha256Digest,
        /// Computed.
        actual: Sha256Digest,
    },
    /// Reading failed.
    #[error("failed to read {path} from the bundle")]
    Read {
        /// Its path.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A blob's content does not match its name.
    #[error("blob {expected} in {archive} has sha256 {actual}")]
    BlobDigestMismatch {
        /// The archive.
        archive: String,
        /// Its name.
        expected: Sha256Digest,
        /// Computed.
        actual: Sha256Digest,
    },
    /// A blob the manifest or an image needs is not in the archive.
    #[error("blob {digest} needed by {needed_by} is missing from {archive}")]
    MissingBlob {
        /// The archive.
        archive: String,
        /// The blob.
        digest: Sha256Digest,
        /// The image (or `manifest`).
        needed_by: String,
    },
    /// The archive's structure is wrong.
    #[error("image archive {archive} is malformed: {problem}")]
    MalformedArchive {
        /// The archive.
        archive: String,
        /// What is wrong.
        problem: String,
    },
    /// An image is not named in the archive's index.
    #[error("image {reference} ({digest}) is not in the index of {archive}")]
    ImageNotIndexed {
        /// The image.
        reference: String,
        /// Its manifest digest.
        digest: Sha256Digest,
        /// The archive.
        archive: String,
    },
    /// An image manifest lists other blobs than the bundle manifest says.
    #[error(
        "image {reference}: its manifest needs {actual:?}, cks-manifest.json says {expected:?}"
    )]
    ImageBlobsMismatch {
        /// The image.
        reference: String,
        /// From cks-manifest.json.
        expected: Vec<String>,
        /// From the image manifest.
        actual: Vec<String>,
    },
}

/// Verifies a bundle; see the module documentation for what is checked.
///
/// # Errors
/// The first check that fails, as a [`VerifyError`] naming the file, blob or image.
pub fn verify_bundle(
    source: &dyn BundleSource,
    options: &VerifyOptions<'_>,
) -> Result<VerifiedBundle, VerifyError> {
    let (manifest_bytes, manifest) = load_manifest(source)?;
    if let Some(expected) = options.expected_arch
        && manifest.arch != expected
    {
        return Err(VerifyError::WrongArch {
            bundle: manifest.arch,
            expected,
        });
    }

    check_file_list(source, &manifest)?;

    let mut bytes_checked = manifest_bytes.len() as u64;
    for file in &manifest.files {
        let reader = source
            .open(&file.path)
            .map_err(|e| read_error(&file.path, e))?;
        let mut hashing = HashingReader::with_progress(reader, options.on_bytes);
        if file.kind == FileKind::ImageArchive {
            check_archive(&mut hashing, &file.path, &manifest)?;
        }
        io::copy(&mut hashing, &mut io::sink()).map_err(|e| read_error(&file.path, e))?;
        let (size, actual) = hashing.finish();
        if size != file.size {
            return Err(VerifyError::SizeMismatch {
                path: file.path.clone(),
                expected: file.size,
                actual: size,
            });
        }
        if actual != file.sha256 {
            return Err(VerifyError::DigestMismatch {
                path: file.path.clone(),
                expected: file.sha256.clone(),
                actual,
            });
        }
        bytes_checked += size;
    }

    Ok(VerifiedBundle {
        manifest_sha256: Sha256Digest::of(&manifest_bytes),
        manifest,
        bytes_checked,
    })
}

/// Reads and parses just the manifest of a bundle (no verification).
///
/// # Errors
/// [`VerifyError::ManifestMissing`], [`VerifyError::ManifestInvalid`] or a read error.
pub fn read_bundle_manifest(source: &dyn BundleSource) -> Result<BundleManifest, VerifyError> {
    load_manifest(source).map(|(_, manifest)| manifest)
}

/// The manifest's bytes and its parsed form.
fn load_manifest(source: &dyn BundleSource) -> Result<(Vec<u8>, BundleManifest), VerifyError> {
    let bytes = read_small(source, MANIFEST_PATH).map_err(|e| match e {
        VerifyError::Read { source: io, .. } if io.kind() == io::ErrorKind::NotFound => {
            VerifyError::ManifestMissing {
                source_desc: source.describe(),
            }
        }
        other => other,
    })?;
    let manifest = read_manifest(&bytes).map_err(|e| VerifyError::ManifestInvalid {
        source_desc: source.describe(),
        source: e,
    })?;
    Ok((bytes, manifest))
}

fn check_file_list(
    source: &dyn BundleSource,
    manifest: &BundleManifest,
) -> Result<(), VerifyError> {
    let listed = source.list_files().map_err(|e| read_error("/", e))?;
    let present: BTreeMap<&str, &SourceFile> =
        listed.iter().map(|f| (f.path.as_str(), f)).collect();
    let expected: BTreeSet<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    for file in &manifest.files {
        let Some(found) = present.get(file.path.as_str()) else {
            return Err(VerifyError::MissingFile {
                path: file.path.clone(),
            });
        };
        if found.size != file.size {
            return Err(VerifyError::SizeMismatch {
                path: file.path.clone(),
                expected: file.size,
                actual: found.size,
            });
        }
        if let Some(mode) = found.mode
            && mode & 0o777 != file.mode & 0o777
        {
            return Err(VerifyError::ModeMismatch {
                path: file.path.clone(),
                expected: file.mode,
                actual: mode,
            });
        }
    }
    for path in present.keys() {
        if *path != MANIFEST_PATH && !expected.contains(path) {
            return Err(VerifyError::UnexpectedFile {
                path: (*path).to_string(),
            });
        }
    }
    Ok(())
}

/// Walks one image archive (a tar of an OCI layout), re-hashing every blob.
fn check_archive(
    reader: &mut dyn Read,
    archive_path: &str,
    manifest: &BundleManifest,
) -> Result<(), VerifyError> {
    let malformed = |problem: String| VerifyError::MalformedArchive {
        archive: archive_path.to_string(),
        problem,
    };
    let images: Vec<_> = manifest
        .images
        .iter()
        .filter(|i| i.archive == archive_path)
        .collect();
    let manifest_digests: BTreeSet<&Sha256Digest> =
        images.iter().map(|i| &i.manifest_digest).collect();

    let mut found: BTreeMap<Sha256Digest, u64> = BTreeMap::new();
    let mut small_blobs: BTreeMap<Sha256Digest, Vec<u8>> = BTreeMap::new();
    let mut index: Option<ImageIndex> = None;

    let mut tar = tar::Archive::new(reader);
    let entries = tar.entries().map_err(|e| read_error(archive_path, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| read_error(archive_path, e))?;
        let path = entry
            .path()
            .map_err(|e| read_error(archive_path, e))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if entry.header().entry_type().is_dir() {
            continue;
        }
        if path == "index.json" {
            let mut bytes = Vec::new();
            (&mut entry)
                .take(MAX_JSON_BYTES)
                .read_to_end(&mut bytes)
                .map_err(|e| read_error(archive_path, e))?;
            index = Some(
                serde_json::from_slice(&bytes)
                    .map_err(|e| malformed(format!("index.json does not parse: {e}")))?,
            );
        } else if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            let expected: Sha256Digest = hex
                .parse()
                .map_err(|_| malformed(format!("blob name {path:?} is not a sha256")))?;
            let keep = manifest_digests.contains(&expected);
            let mut hasher = Sha256::new();
            let mut kept = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut size = 0u64;
            loop {
                let n = entry
                    .read(&mut buf)
                    .map_err(|e| read_error(archive_path, e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                size += n as u64;
                if keep && size <= MAX_JSON_BYTES {
                    kept.extend_from_slice(&buf[..n]);
                }
            }
            let actual = Sha256Digest::from_hasher(hasher);
            if actual != expected {
                return Err(VerifyError::BlobDigestMismatch {
                    archive: archive_path.to_string(),
                    expected,
                    actual,
                });
            }
            if keep {
                small_blobs.insert(expected.clone(), kept);
            }
            found.insert(expected, size);
        } else if path != "oci-layout" {
            return Err(malformed(format!("unexpected entry {path:?}")));
        }
    }

    let index = index.ok_or_else(|| malformed("no index.json".to_string()))?;
    for image in &images {
        let indexed = index.manifests.iter().any(|d| {
            d.digest == image.manifest_digest.oci()
                && d.annotations.get(ANNOTATION_IMAGE_NAME) == Some(&image.reference)
        });
        if !indexed {
            return Err(VerifyError::ImageNotIndexed {
                reference: image.reference.clone(),
                digest: image.manifest_digest.clone(),
                archive: archive_path.to_string(),
            });
        }
        let Some(bytes) = small_blobs.get(&image.manifest_digest) else {
            return Err(VerifyError::MissingBlob {
                archive: archive_path.to_string(),
                digest: image.manifest_digest.clone(),
                needed_by: image.reference.clone(),
            });
        };
        let parsed: ImageManifest = serde_json::from_slice(bytes).map_err(|e| {
            malformed(format!(
                "manifest {} of {} does not parse: {e}",
                image.manifest_digest, image.reference
            ))
        })?;
        let actual: Vec<String> = std::iter::once(&parsed.config)
            .chain(parsed.layers.iter())
            .map(|d| d.digest.clone())
            .collect();
        let expected: Vec<String> = image.blobs.iter().map(Sha256Digest::oci).collect();
        if actual != expected {
            return Err(VerifyError::ImageBlobsMismatch {
                reference: image.reference.clone(),
                expected,
                actual,
            });
        }
        for digest in &image.blobs {
            if !found.contains_key(digest) {
                return Err(VerifyError::MissingBlob {
                    archive: archive_path.to_string(),
                    digest: digest.clone(),
                    needed_by: image.reference.clone(),
                });
            }
        }
    }
    // Every blob the manifest lists for this archive's images must be here with its size.
    let needed: BTreeSet<&Sha256Digest> = images
        .iter()
        .flat_map(|i| std::iter::once(&i.manifest_digest).chain(i.blobs.iter()))
        .collect();
    for blob in manifest.blobs.iter().filter(|b| needed.contains(&b.digest)) {
        match found.get(&blob.digest) {
            Some(size) if *size == blob.size => {}
            Some(size) => {
                return Err(malformed(format!(
                    "blob {} has {size} bytes, the manifest says {}",
                    blob.digest, blob.size
                )));
            }
            None => {
                return Err(VerifyError::MissingBlob {
                    archive: archive_path.to_string(),
                    digest: blob.digest.clone(),
                    needed_by: "cks-manifest.json".to_string(),
                });
            }
        }
    }
    Ok(())
}

fn read_small(source: &dyn BundleSource, path: &str) -> Result<Vec<u8>, VerifyError> {
    let reader = source.open(path).map_err(|e| read_error(path, e))?;
    let mut bytes = Vec::new();
    reader
        .take(MAX_JSON_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| read_error(path, e))?;
    Ok(bytes)
}

fn read_error(path: &str, source: io::Error) -> VerifyError {
    VerifyError::Read {
        path: path.to_string(),
        source,
    }
}

/// A reader that hashes and counts what passes through it: how a bundle file is checked while
/// it is being read for another purpose (verification here, installation in the agent).
pub struct HashingReader<'a, R> {
    inner: R,
    hasher: Sha256,
    size: u64,
    on_bytes: Option<&'a (dyn Fn(u64) + Sync)>,
}

impl<'a, R: Read> HashingReader<'a, R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self::with_progress(inner, None)
    }

    /// Wraps `inner`, reporting each read's byte count to `on_bytes`.
    pub fn with_progress(inner: R, on_bytes: Option<&'a (dyn Fn(u64) + Sync)>) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            size: 0,
            on_bytes,
        }
    }

    /// Bytes read so far and their SHA-256.
    pub fn finish(self) -> (u64, Sha256Digest) {
        (self.size, Sha256Digest::from_hasher(self.hasher))
    }
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        if let Some(cb) = self.on_bytes {
            cb(n as u64);
        }
        Ok(n)
    }
}

// === impl DirBundle ===

/// A bundle that is a directory: a mounted CD-ROM, or a build's staging tree.
#[derive(Debug, Clone)]
pub struct DirBundle {
    root: PathBuf,
}

impl DirBundle {
    /// A bundle rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirBundle { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl BundleSource for DirBundle {
    fn describe(&self) -> String {
        format!("directory {}", self.root.display())
    }

    fn list_files(&self) -> io::Result<Vec<SourceFile>> {
        use std::os::unix::fs::PermissionsExt;
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let meta = std::fs::symlink_metadata(entry.path())?;
                if meta.is_dir() {
                    stack.push(entry.path());
                } else if meta.is_file() {
                    let rel = entry
                        .path()
                        .strip_prefix(&self.root)
                        .map_err(io::Error::other)?
                        .to_string_lossy()
                        .into_owned();
                    out.push(SourceFile {
                        path: rel,
                        size: meta.len(),
                        mode: Some(meta.permissions().mode() & 0o7777),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    fn open<'a>(&'a self, path: &str) -> io::Result<Box<dyn Read + 'a>> {
        if path.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("refusing path {path:?}"),
            ));
        }
        Ok(Box::new(std::fs::File::open(self.root.join(path))?))
    }
}
