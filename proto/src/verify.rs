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
//!
//! # Per-blob verification, for installers
//!
//! An installer that imports only some images, or only the blobs containerd lacks, need not read
//! a whole image archive. It uses the pair [`verify_bundle_files`] (checks 1–4 for every file,
//! but an image archive only for its presence, size and mode) and [`verify_image_blobs`] (for the
//! images it imports: their manifests and the blobs it will read, each hashed against its
//! digest, with seeks past every other member of the archive). Together they check everything
//! the installer uses; blobs it does not read are not checked here (containerd's content store
//! is addressed by digest and checks what it ingests). [`verify_bundle`], which
//! `cks-isobuilder verify` and `cks-agent verify` run, is not changed by them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::ids::{Arch, Sha256Digest};
use crate::manifest::{
    BundleManifest, FileKind, ImageEntry, MANIFEST_PATH, ManifestError, read_manifest,
};
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

    /// Opens one file for reading with seeks, so that a reader can skip what it does not need
    /// (the members of an image archive it does not import).
    ///
    /// The default wraps [`BundleSource::open`] in a [`ForwardOnly`] reader: seeking forward
    /// reads and discards, seeking backward fails with `Unsupported`. That is correct for any
    /// source, only slower; sources that can seek (a directory, an ISO) override it.
    fn open_seekable<'a>(&'a self, path: &str) -> io::Result<Box<dyn ReadSeek + 'a>> {
        Ok(Box::new(ForwardOnly::new(self.open(path)?)))
    }
}

/// A reader that can seek: what [`BundleSource::open_seekable`] returns.
pub trait ReadSeek: Read + Seek {}

impl<T: Read + Seek + ?Sized> ReadSeek for T {}

/// A sequential reader given forward-only seeks: seeking forward reads and discards the bytes in
/// between, seeking backward (or from the end) fails with [`io::ErrorKind::Unsupported`].
///
/// The default of [`BundleSource::open_seekable`], for sources that can only stream.
#[derive(Debug)]
pub struct ForwardOnly<R> {
    inner: R,
    position: u64,
}

impl<R: Read> ForwardOnly<R> {
    /// Wraps `inner`, which is at position 0.
    pub fn new(inner: R) -> Self {
        ForwardOnly { inner, position: 0 }
    }
}

impl<R: Read> Read for ForwardOnly<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.position += n as u64;
        Ok(n)
    }
}

impl<R: Read> Seek for ForwardOnly<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
            SeekFrom::End(_) => None,
        };
        let Some(target) = target.filter(|t| *t >= self.position) else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "this source reads forward only (at {}, asked {pos:?})",
                    self.position
                ),
            ));
        };
        io::copy(
            &mut (&mut self.inner).take(target - self.position),
            &mut io::sink(),
        )?;
        // A seek past the end lands there, as on a file: later reads return 0 bytes.
        self.position = target;
        Ok(target)
    }
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
    verify_with(source, options, ArchiveContent::Check)
}

/// Verifies a bundle as [`verify_bundle`] does, except for the content of its image archives:
/// each must be present with the listed size and mode, but neither its SHA-256 nor its blobs
/// are read. [`VerifiedBundle::bytes_checked`] counts what was hashed.
///
/// For an installer that then reads from the archives only the blobs it imports and checks each
/// of them with [`verify_image_blobs`] (see the module documentation). Every other file (binaries,
/// units, manifests) is hashed in full, as [`verify_bundle`] does.
///
/// # Errors
/// The first check that fails, as a [`VerifyError`] naming the file.
pub fn verify_bundle_files(
    source: &dyn BundleSource,
    options: &VerifyOptions<'_>,
) -> Result<VerifiedBundle, VerifyError> {
    verify_with(source, options, ArchiveContent::Skip)
}

/// Whether [`verify_with`] reads image archives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArchiveContent {
    /// Hash the whole archive and every blob in it ([`verify_bundle`]).
    Check,
    /// Leave it to [`verify_image_blobs`] ([`verify_bundle_files`]).
    Skip,
}

fn verify_with(
    source: &dyn BundleSource,
    options: &VerifyOptions<'_>,
    archives: ArchiveContent,
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
        if file.kind == FileKind::ImageArchive && archives == ArchiveContent::Skip {
            continue; // Present with its size and mode: check_file_list.
        }
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
        check_image_manifest(image, bytes)?;
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

/// Checks that an image's manifest blob parses and needs exactly the config and layers
/// cks-manifest.json lists for the image.
fn check_image_manifest(image: &ImageEntry, bytes: &[u8]) -> Result<(), VerifyError> {
    let parsed: ImageManifest =
        serde_json::from_slice(bytes).map_err(|e| VerifyError::MalformedArchive {
            archive: image.archive.clone(),
            problem: format!(
                "manifest {} of {} does not parse: {e}",
                image.manifest_digest, image.reference
            ),
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
    Ok(())
}

// === per-blob verification ===

/// Where a verified blob's bytes are in a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobLocation {
    /// The image archive, e.g. `docker/images.tar`.
    pub archive: String,
    /// Offset of the blob's first byte in the archive (past its tar header).
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

/// The blobs [`verify_image_blobs`] read and found correct.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifiedBlobs {
    /// Every blob read and hashed, by digest: the images' manifests and the wanted blobs.
    pub locations: BTreeMap<Sha256Digest, BlobLocation>,
    /// Bytes hashed.
    pub bytes_checked: u64,
}

/// Per-blob verification of some images of a bundle whose files passed
/// [`verify_bundle_files`].
///
/// For the `images` given (entries of `manifest`), reads from their archives each image's
/// manifest blob and every blob in `wanted` that one of them needs (its config or a layer),
/// seeking past every other member ([`BundleSource::open_seekable`]), and checks:
/// 1. each of those blobs is in its image's archive as a regular `blobs/sha256/<hex>` member
///    (a blob several archives hold is read from the first, in path order);
/// 2. its content hashes to its name, and its size is the one cks-manifest.json lists;
/// 3. each image manifest parses and needs exactly the config and layers cks-manifest.json lists
///    for the image, so that `wanted` covers whatever containerd will ask for.
///
/// Blobs not in `wanted` are neither read nor checked: the caller must take them from a store
/// that checks content against digests itself (containerd's content store). The archive's
/// `index.json` is not read either: a caller that imports writes its own index from `manifest`,
/// which was verified. A reader walks an archive only until it has found what it wants.
///
/// # Errors
/// The first check that fails, as a [`VerifyError`] naming the archive, blob or image.
pub fn verify_image_blobs(
    source: &dyn BundleSource,
    manifest: &BundleManifest,
    images: &[&ImageEntry],
    wanted: &BTreeSet<Sha256Digest>,
) -> Result<VerifiedBlobs, VerifyError> {
    // Digest → the image that needs it (for messages), and the manifests to keep and parse.
    let mut needed_by: BTreeMap<&Sha256Digest, &ImageEntry> = BTreeMap::new();
    for image in images {
        needed_by.entry(&image.manifest_digest).or_insert(image);
        for blob in image.blobs.iter().filter(|b| wanted.contains(*b)) {
            needed_by.entry(blob).or_insert(image);
        }
    }
    let manifests: BTreeSet<&Sha256Digest> = images.iter().map(|i| &i.manifest_digest).collect();
    let archives: BTreeSet<&str> = images.iter().map(|i| i.archive.as_str()).collect();

    let mut verified = VerifiedBlobs::default();
    let mut manifest_bytes: BTreeMap<Sha256Digest, Vec<u8>> = BTreeMap::new();
    for archive in archives {
        // What this archive's images need that no earlier archive had.
        let here: BTreeSet<&Sha256Digest> = images
            .iter()
            .filter(|i| i.archive == archive)
            .flat_map(|i| std::iter::once(&i.manifest_digest).chain(i.blobs.iter()))
            .filter(|d| needed_by.contains_key(d) && !verified.locations.contains_key(*d))
            .collect();
        if here.is_empty() {
            continue;
        }
        let found = read_archive_blobs(source, archive, &here, &manifests)?;
        for (digest, (location, kept)) in found {
            verified.bytes_checked += location.size;
            if let Some(bytes) = kept {
                manifest_bytes.insert(digest.clone(), bytes);
            }
            verified.locations.insert(digest, location);
        }
    }

    let sizes: BTreeMap<&Sha256Digest, u64> =
        manifest.blobs.iter().map(|b| (&b.digest, b.size)).collect();
    for (digest, image) in &needed_by {
        let Some(location) = verified.locations.get(*digest) else {
            return Err(VerifyError::MissingBlob {
                archive: image.archive.clone(),
                digest: (*digest).clone(),
                needed_by: image.reference.clone(),
            });
        };
        if let Some(listed) = sizes.get(digest)
            && *listed != location.size
        {
            return Err(VerifyError::MalformedArchive {
                archive: location.archive.clone(),
                problem: format!(
                    "blob {digest} has {} bytes, the manifest says {listed}",
                    location.size
                ),
            });
        }
    }
    for image in images {
        let bytes = manifest_bytes.get(&image.manifest_digest).ok_or_else(|| {
            VerifyError::MalformedArchive {
                archive: image.archive.clone(),
                problem: format!(
                    "manifest {} of {} is larger than {MAX_JSON_BYTES} bytes",
                    image.manifest_digest, image.reference
                ),
            }
        })?;
        check_image_manifest(image, bytes)?;
    }
    Ok(verified)
}

/// A blob found by [`read_archive_blobs`]: where it is, and its bytes when asked to keep them.
type FoundBlob = (BlobLocation, Option<Vec<u8>>);

/// Walks one archive until every blob of `wanted` is found (or the archive ends), hashing each
/// of them and seeking past every other member. Keeps the bytes of the blobs in `keep` (up to
/// [`MAX_JSON_BYTES`]).
fn read_archive_blobs(
    source: &dyn BundleSource,
    archive: &str,
    wanted: &BTreeSet<&Sha256Digest>,
    keep: &BTreeSet<&Sha256Digest>,
) -> Result<BTreeMap<Sha256Digest, FoundBlob>, VerifyError> {
    let reader = source
        .open_seekable(archive)
        .map_err(|e| read_error(archive, e))?;
    let mut tar = tar::Archive::new(reader);
    let entries = tar
        .entries_with_seek()
        .map_err(|e| read_error(archive, e))?;
    let mut found: BTreeMap<Sha256Digest, FoundBlob> = BTreeMap::new();
    for entry in entries {
        if found.len() == wanted.len() {
            break;
        }
        let mut entry = entry.map_err(|e| read_error(archive, e))?;
        let path = entry.path().map_err(|e| read_error(archive, e))?;
        let Some(digest) = path
            .to_str()
            .map(|p| p.trim_start_matches("./"))
            .and_then(|p| p.strip_prefix("blobs/sha256/"))
            .and_then(|hex| hex.parse::<Sha256Digest>().ok())
            .filter(|d| wanted.contains(d) && !found.contains_key(d))
        else {
            continue; // Not wanted: the next entry seeks past it.
        };
        if !entry.header().entry_type().is_file() {
            return Err(VerifyError::MalformedArchive {
                archive: archive.to_string(),
                problem: format!("blob {digest} is not a regular file"),
            });
        }
        let offset = entry.raw_file_position();
        let keep_bytes = keep.contains(&digest);
        let mut hasher = Sha256::new();
        let mut kept = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut size = 0u64;
        loop {
            let n = entry.read(&mut buf).map_err(|e| read_error(archive, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
            if keep_bytes && size <= MAX_JSON_BYTES {
                kept.extend_from_slice(&buf[..n]);
            }
        }
        let actual = Sha256Digest::from_hasher(hasher);
        if actual != digest {
            return Err(VerifyError::BlobDigestMismatch {
                archive: archive.to_string(),
                expected: digest,
                actual,
            });
        }
        let kept = (keep_bytes && size <= MAX_JSON_BYTES).then_some(kept);
        let location = BlobLocation {
            archive: archive.to_string(),
            offset,
            size,
        };
        found.insert(digest, (location, kept));
    }
    Ok(found)
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
        Ok(Box::new(self.open_file(path)?))
    }

    fn open_seekable<'a>(&'a self, path: &str) -> io::Result<Box<dyn ReadSeek + 'a>> {
        Ok(Box::new(self.open_file(path)?))
    }
}

impl DirBundle {
    fn open_file(&self, path: &str) -> io::Result<std::fs::File> {
        if path.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("refusing path {path:?}"),
            ));
        }
        std::fs::File::open(self.root.join(path))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use serde_json::json;

    use super::*;
    use crate::manifest::{BlobEntry, FileEntry, Platform, SCHEMA_VERSION};
    use crate::oci::MEDIA_TYPE_OCI_MANIFEST;

    const ARCHIVE: &str = "docker/images.tar";
    /// Size of the shared base layer: far more than all headers and small blobs together.
    const BASE_SIZE: usize = 64 * 1024;

    /// A bundle directory: `k8s/kubeadm` and one archive holding `r/a:1` and `r/b:1`, which share
    /// their base layer.
    struct Fixture {
        dir: tempfile::TempDir,
        manifest: BundleManifest,
        base: Sha256Digest,
        only_b: Sha256Digest,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture::with_archive_filter(|_| true)
        }

        /// The fixture with only the archive members `keep` says yes to.
        fn with_archive_filter(keep: impl Fn(&Sha256Digest) -> bool) -> Fixture {
            let base = vec![7u8; BASE_SIZE];
            let layers: [(&str, Vec<u8>); 2] =
                [("r/a:1", vec![1u8; 700]), ("r/b:1", vec![2u8; 900])];
            let mut blobs: BTreeMap<Sha256Digest, Vec<u8>> = BTreeMap::new();
            let mut images = Vec::new();
            for (reference, top) in &layers {
                let config = format!("{{\"image\":\"{reference}\"}}").into_bytes();
                let descriptor = |b: &[u8]| json!({"mediaType": "x", "digest": Sha256Digest::of(b).oci(), "size": b.len()});
                let manifest = serde_json::to_vec(&json!({
                    "schemaVersion": 2,
                    "mediaType": MEDIA_TYPE_OCI_MANIFEST,
                    "config": descriptor(&config),
                    "layers": [descriptor(&base), descriptor(top)],
                }))
                .expect("json");
                images.push(ImageEntry {
                    reference: reference.to_string(),
                    archive: ARCHIVE.into(),
                    manifest_digest: Sha256Digest::of(&manifest),
                    media_type: MEDIA_TYPE_OCI_MANIFEST.into(),
                    platform: Platform {
                        os: "linux".into(),
                        architecture: "amd64".into(),
                        variant: None,
                    },
                    blobs: vec![
                        Sha256Digest::of(&config),
                        Sha256Digest::of(&base),
                        Sha256Digest::of(top),
                    ],
                });
                for blob in [manifest, config, base.clone(), top.clone()] {
                    blobs.insert(Sha256Digest::of(&blob), blob);
                }
            }
            let mut tar = tar::Builder::new(Vec::new());
            let mut add = |path: &str, data: &[u8]| {
                let mut header = tar::Header::new_ustar();
                header.set_size(data.len() as u64);
                header.set_mode(0o644);
                tar.append_data(&mut header, path, data).expect("append");
            };
            add("oci-layout", crate::oci::OCI_LAYOUT.as_bytes());
            add("index.json", br#"{"schemaVersion":2,"manifests":[]}"#);
            for (digest, blob) in blobs.iter().filter(|(d, _)| keep(d)) {
                add(&format!("blobs/sha256/{}", digest.hex()), blob);
            }
            let archive = tar.into_inner().expect("tar");

            let dir = tempfile::tempdir().expect("tempdir");
            let mut files = Vec::new();
            for (path, content, kind) in [
                (
                    "k8s/kubeadm",
                    b"kubeadm".to_vec(),
                    FileKind::KubernetesBinary,
                ),
                (ARCHIVE, archive, FileKind::ImageArchive),
            ] {
                let dest = dir.path().join(path);
                std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
                std::fs::write(&dest, &content).expect("write");
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644))
                    .expect("chmod");
                files.push(FileEntry {
                    path: path.into(),
                    size: content.len() as u64,
                    sha256: Sha256Digest::of(&content),
                    mode: 0o644,
                    kind,
                    source: "test".into(),
                });
            }
            let manifest = BundleManifest {
                schema_version: SCHEMA_VERSION,
                name: "t".into(),
                builder: "test".into(),
                kubernetes_version: crate::ids::KubeVersion::new(1, 33, 1),
                arch: Arch::Amd64,
                cni: "calico".into(),
                cni_plugins_version: crate::ids::KubeVersion::new(1, 6, 0),
                crictl_version: crate::ids::KubeVersion::new(1, 33, 0),
                etcd_version: None,
                files,
                images,
                blobs: blobs
                    .iter()
                    .map(|(digest, b)| BlobEntry {
                        digest: digest.clone(),
                        size: b.len() as u64,
                    })
                    .collect(),
            };
            std::fs::write(dir.path().join(MANIFEST_PATH), manifest.to_json()).expect("write");
            Fixture {
                dir,
                manifest,
                base: Sha256Digest::of(&base),
                only_b: Sha256Digest::of(&layers[1].1),
            }
        }

        fn source(&self) -> DirBundle {
            DirBundle::new(self.dir.path())
        }

        fn image(&self, reference: &str) -> &ImageEntry {
            self.manifest
                .images
                .iter()
                .find(|i| i.reference == reference)
                .expect("image")
        }

        /// Flips one byte of blob `digest` inside the archive (same size).
        fn corrupt_blob(&self, digest: &Sha256Digest) {
            let path = self.dir.path().join(ARCHIVE);
            let mut archive = std::fs::read(&path).expect("read");
            let mut tar = tar::Archive::new(&archive[..]);
            let offset = tar
                .entries()
                .expect("entries")
                .map(|e| e.expect("entry"))
                .find(|e| {
                    e.path().expect("path").to_string_lossy()
                        == format!("blobs/sha256/{}", digest.hex())
                })
                .map(|e| e.raw_file_position())
                .expect("blob in archive");
            archive[offset as usize + 10] ^= 0x01;
            std::fs::write(&path, &archive).expect("write");
        }
    }

    /// A source that only streams (the default `open_seekable`), counting the bytes read.
    struct StreamingSource<'a> {
        inner: &'a DirBundle,
        read: Rc<Cell<u64>>,
    }

    use std::rc::Rc;

    struct Counting<R> {
        inner: R,
        read: Rc<Cell<u64>>,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read.set(self.read.get() + n as u64);
            Ok(n)
        }
    }

    impl<R: Seek> Seek for Counting<R> {
        fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
            self.inner.seek(pos)
        }
    }

    impl BundleSource for StreamingSource<'_> {
        fn describe(&self) -> String {
            "streaming".into()
        }
        fn list_files(&self) -> io::Result<Vec<SourceFile>> {
            self.inner.list_files()
        }
        fn open<'a>(&'a self, path: &str) -> io::Result<Box<dyn Read + 'a>> {
            Ok(Box::new(Counting {
                inner: self.inner.open(path)?,
                read: self.read.clone(),
            }))
        }
    }

    /// A seekable source counting the bytes read.
    struct CountingSource<'a>(StreamingSource<'a>);

    impl BundleSource for CountingSource<'_> {
        fn describe(&self) -> String {
            "counting".into()
        }
        fn list_files(&self) -> io::Result<Vec<SourceFile>> {
            self.0.list_files()
        }
        fn open<'a>(&'a self, path: &str) -> io::Result<Box<dyn Read + 'a>> {
            self.0.open(path)
        }
        fn open_seekable<'a>(&'a self, path: &str) -> io::Result<Box<dyn ReadSeek + 'a>> {
            Ok(Box::new(Counting {
                inner: self.0.inner.open_file(path)?,
                read: self.0.read.clone(),
            }))
        }
    }

    fn set(digests: &[&Sha256Digest]) -> BTreeSet<Sha256Digest> {
        digests.iter().map(|d| (*d).clone()).collect()
    }

    #[test]
    fn files_mode_still_hashes_every_other_file() {
        let fixture = Fixture::new();
        std::fs::write(fixture.dir.path().join("k8s/kubeadm"), b"KUBEADM").expect("write");
        let err = verify_bundle_files(&fixture.source(), &VerifyOptions::default())
            .expect_err("corrupt binary");
        assert!(
            matches!(&err, VerifyError::DigestMismatch { path, .. } if path == "k8s/kubeadm"),
            "{err:?}"
        );
    }

    #[test]
    fn files_mode_checks_archive_size_but_not_content() {
        let fixture = Fixture::new();
        fixture.corrupt_blob(&fixture.base);
        let err = verify_bundle(&fixture.source(), &VerifyOptions::default())
            .expect_err("the full check reads the blob");
        assert!(
            matches!(err, VerifyError::BlobDigestMismatch { .. }),
            "{err:?}"
        );
        let verified = verify_bundle_files(&fixture.source(), &VerifyOptions::default())
            .expect("archive content is left to verify_image_blobs");
        assert_eq!(verified.bytes_checked, {
            let manifest = std::fs::read(fixture.dir.path().join(MANIFEST_PATH)).expect("read");
            manifest.len() as u64 + b"kubeadm".len() as u64
        });

        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(fixture.dir.path().join(ARCHIVE))
            .expect("open");
        file.set_len(file.metadata().expect("meta").len() + 1)
            .expect("grow");
        let err = verify_bundle_files(&fixture.source(), &VerifyOptions::default())
            .expect_err("size differs");
        assert!(matches!(err, VerifyError::SizeMismatch { .. }), "{err:?}");
    }

    #[test]
    fn image_blobs_reads_the_manifest_and_the_wanted_blobs_only() {
        let fixture = Fixture::new();
        let b = fixture.image("r/b:1");
        // The shared base layer is corrupt, but not wanted: it does not matter.
        fixture.corrupt_blob(&fixture.base);
        let wanted = set(&[&b.blobs[0], &fixture.only_b]);
        let verified =
            verify_image_blobs(&fixture.source(), &fixture.manifest, &[b], &wanted).expect("ok");
        let read: BTreeSet<Sha256Digest> = verified.locations.keys().cloned().collect();
        assert_eq!(
            read,
            set(&[&b.manifest_digest, &b.blobs[0], &fixture.only_b])
        );
        let archive = std::fs::read(fixture.dir.path().join(ARCHIVE)).expect("read");
        for (digest, location) in &verified.locations {
            assert_eq!(location.archive, ARCHIVE);
            let start = location.offset as usize;
            let bytes = &archive[start..start + location.size as usize];
            assert_eq!(
                &Sha256Digest::of(bytes),
                digest,
                "location points at the blob"
            );
        }
        assert_eq!(
            verified.bytes_checked,
            verified.locations.values().map(|l| l.size).sum::<u64>()
        );
    }

    #[test]
    fn image_blobs_refuses_a_corrupt_wanted_blob() {
        let fixture = Fixture::new();
        let b = fixture.image("r/b:1");
        fixture.corrupt_blob(&fixture.only_b);
        let err = verify_image_blobs(
            &fixture.source(),
            &fixture.manifest,
            &[b],
            &set(&[&fixture.only_b]),
        )
        .expect_err("corrupt");
        assert!(
            matches!(&err, VerifyError::BlobDigestMismatch { expected, .. } if *expected == fixture.only_b),
            "{err:?}"
        );
    }

    #[test]
    fn image_blobs_refuses_a_missing_wanted_blob_or_manifest() {
        let only_b = Fixture::new().only_b;
        let fixture = Fixture::with_archive_filter(|d| *d != only_b);
        let b = fixture.image("r/b:1");
        let err = verify_image_blobs(&fixture.source(), &fixture.manifest, &[b], &set(&[&only_b]))
            .expect_err("missing");
        assert!(
            matches!(&err, VerifyError::MissingBlob { digest, needed_by, .. } if *digest == only_b && needed_by == "r/b:1"),
            "{err:?}"
        );
        // Not wanted: not missed.
        verify_image_blobs(&fixture.source(), &fixture.manifest, &[b], &BTreeSet::new())
            .expect("only the manifest is needed");

        let manifest_b = b.manifest_digest.clone();
        let fixture = Fixture::with_archive_filter(|d| *d != manifest_b);
        let b = fixture.image("r/b:1");
        let err = verify_image_blobs(&fixture.source(), &fixture.manifest, &[b], &BTreeSet::new())
            .expect_err("no manifest");
        assert!(matches!(err, VerifyError::MissingBlob { .. }), "{err:?}");
    }

    #[test]
    fn image_blobs_refuses_a_manifest_that_needs_other_blobs() {
        let mut fixture = Fixture::new();
        fixture.manifest.images[1].blobs.pop();
        let b = &fixture.manifest.images[1];
        let err = verify_image_blobs(&fixture.source(), &fixture.manifest, &[b], &BTreeSet::new())
            .expect_err("mismatch");
        assert!(
            matches!(err, VerifyError::ImageBlobsMismatch { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn image_blobs_seeks_past_what_it_does_not_need() {
        let fixture = Fixture::new();
        let dir = fixture.source();
        let b = fixture.image("r/b:1");
        let wanted = set(&[&fixture.only_b]);
        let archive_size = fixture.manifest.file(ARCHIVE).expect("archive").size;

        let seeking = CountingSource(StreamingSource {
            inner: &dir,
            read: Rc::default(),
        });
        verify_image_blobs(&seeking, &fixture.manifest, &[b], &wanted).expect("ok");
        let read = seeking.0.read.get();
        // Headers (512 bytes each) + the manifest + the wanted layer; never the base layer.
        assert!(read < 16 * 1024, "read {read} of {archive_size} bytes");

        let streaming = StreamingSource {
            inner: &dir,
            read: Rc::default(),
        };
        let verified =
            verify_image_blobs(&streaming, &fixture.manifest, &[b], &wanted).expect("ok");
        assert!(
            streaming.read.get() > BASE_SIZE as u64,
            "discards instead of seeking"
        );
        assert_eq!(
            verified,
            verify_image_blobs(&dir, &fixture.manifest, &[b], &wanted).expect("ok")
        );
    }

    #[test]
    fn forward_only_seeks_forward_and_refuses_backward() {
        let mut reader = ForwardOnly::new(&b"0123456789"[..]);
        assert_eq!(reader.seek(SeekFrom::Start(3)).expect("forward"), 3);
        let mut two = [0u8; 2];
        reader.read_exact(&mut two).expect("read");
        assert_eq!(&two, b"34");
        assert_eq!(reader.seek(SeekFrom::Current(2)).expect("relative"), 7);
        assert_eq!(reader.stream_position().expect("stay"), 7);
        let err = reader.seek(SeekFrom::Start(1)).expect_err("backward");
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
        assert!(reader.seek(SeekFrom::End(0)).is_err());
        assert_eq!(reader.seek(SeekFrom::Start(20)).expect("past the end"), 20);
        assert_eq!(reader.read(&mut two).expect("eof"), 0);
    }
}
