//! The archive the agent streams to `ctr images import -`: an OCI image layout, as a tar,
//! generated for just the images to import.
//!
//! Members, in this order:
//! 1. `oci-layout`;
//! 2. `blobs/sha256/<hex>` for each blob to send (the images' manifests, their configs, the
//!    layers containerd lacks), read from the bundle's image archives in archive and offset
//!    order, seeking past everything else ([`BundleSource::open_seekable`]);
//! 3. `index.json`, naming each image with `io.containerd.image.name` (and its tag as
//!    `org.opencontainers.image.ref.name`), written from the verified bundle manifest;
//! 4. the end-of-archive marker.
//!
//! The manifests may reference blobs the archive does not hold: `ctr images import` (containerd
//! 1.6) takes them from its content store, as it would after a pull. When a layer is missing
//! there too, the import fails naming it.
//!
//! # Guarantees
//!
//! Every blob is hashed again while it streams. If one does not match its digest (the bundle
//! changed since [`cks_proto::verify::verify_image_blobs`] read it), the reader fails in the
//! middle of that blob's member, so `ctr` sees a truncated tar and exits non-zero. Since
//! `index.json` comes last, `ctr` has then created no image; only the blobs sent before are in
//! the content store, unreferenced, for containerd's garbage collector.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, SeekFrom};

use cks_proto::ids::Sha256Digest;
use cks_proto::manifest::ImageEntry;
use cks_proto::oci::{
    ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, Descriptor, DescriptorPlatform, ImageIndex,
    MEDIA_TYPE_OCI_INDEX, OCI_LAYOUT,
};
use cks_proto::verify::{BlobLocation, BundleSource, ReadSeek};
use sha2::{Digest, Sha256};

/// Size of a tar block.
const BLOCK: usize = 512;

/// A blob whose bytes no longer hash to its digest while they were streamed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("blob {digest} in {archive} has sha256 {actual} now (it changed after verification)")]
pub struct BlobChanged {
    /// The bundle's image archive it was read from.
    pub archive: String,
    /// Its digest (and name).
    pub digest: Sha256Digest,
    /// What the streamed bytes hash to.
    pub actual: Sha256Digest,
}

/// One member of the archive to generate.
#[derive(Debug)]
enum Member {
    /// A small file held in memory (`oci-layout`, `index.json`).
    File { path: &'static str, bytes: Vec<u8> },
    /// A blob read from the bundle.
    Blob {
        digest: Sha256Digest,
        location: BlobLocation,
    },
}

/// A blob being streamed.
struct BlobInProgress {
    digest: Sha256Digest,
    archive: String,
    size: u64,
    remaining: u64,
    hasher: Sha256,
}

/// One of the bundle's archives, open at `position`.
struct OpenArchive<'a> {
    path: String,
    reader: Box<dyn ReadSeek + 'a>,
    position: u64,
}

/// The generated archive, as a [`Read`]er producing the tar on demand (see the module
/// documentation). Nothing but one blob-read buffer and the small members is held in memory.
pub struct ImportArchive<'a> {
    source: &'a dyn BundleSource,
    members: VecDeque<Member>,
    /// Bytes to hand out before anything else (a header, a small file, padding).
    pending: Vec<u8>,
    pending_at: usize,
    blob: Option<BlobInProgress>,
    open: Option<OpenArchive<'a>>,
    trailer_queued: bool,
    changed: Option<BlobChanged>,
    blobs_sent: usize,
    bytes_sent: u64,
}

impl<'a> ImportArchive<'a> {
    /// The archive importing `images` (with their manifests' sizes from `blobs`), holding every
    /// blob of `blobs` read from `source`.
    ///
    /// `blobs` are where [`cks_proto::verify::verify_image_blobs`] found them; they are sent in
    /// archive and offset order so that each of the bundle's archives is read forward once.
    pub fn new(
        source: &'a dyn BundleSource,
        images: &[ImageEntry],
        blobs: &BTreeMap<Sha256Digest, BlobLocation>,
    ) -> ImportArchive<'a> {
        let mut ordered: Vec<(&Sha256Digest, &BlobLocation)> = blobs.iter().collect();
        ordered.sort_by(|(_, a), (_, b)| (&a.archive, a.offset).cmp(&(&b.archive, b.offset)));
        let mut members = VecDeque::with_capacity(ordered.len() + 2);
        members.push_back(Member::File {
            path: "oci-layout",
            bytes: OCI_LAYOUT.as_bytes().to_vec(),
        });
        members.extend(ordered.into_iter().map(|(digest, location)| Member::Blob {
            digest: digest.clone(),
            location: location.clone(),
        }));
        members.push_back(Member::File {
            path: "index.json",
            bytes: index_json(images, blobs),
        });
        ImportArchive {
            source,
            members,
            pending: Vec::new(),
            pending_at: 0,
            blob: None,
            open: None,
            trailer_queued: false,
            changed: None,
            blobs_sent: 0,
            bytes_sent: 0,
        }
    }

    /// The blob that did not hash to its digest while streaming, if one did not.
    pub fn changed(&self) -> Option<&BlobChanged> {
        self.changed.as_ref()
    }

    /// Whether the whole archive, end-of-archive marker included, has been read.
    pub fn is_complete(&self) -> bool {
        self.trailer_queued
            && self.members.is_empty()
            && self.blob.is_none()
            && self.pending_at == self.pending.len()
    }

    /// Blobs streamed (and checked) so far.
    pub fn blobs_sent(&self) -> usize {
        self.blobs_sent
    }

    /// Bytes of those blobs.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// Queues the next member's header (and, for a small file, its content), or the
    /// end-of-archive marker. Returns `false` when there is nothing left.
    fn start_next_member(&mut self) -> io::Result<bool> {
        self.pending.clear();
        self.pending_at = 0;
        match self.members.pop_front() {
            Some(Member::File { path, bytes }) => {
                self.pending
                    .extend_from_slice(&tar_header(path, bytes.len() as u64)?);
                self.pending.extend_from_slice(&bytes);
                self.pending
                    .resize(self.pending.len() + padding(bytes.len() as u64), 0);
            }
            Some(Member::Blob { digest, location }) => {
                self.position_at(&location)?;
                let path = format!("blobs/sha256/{}", digest.hex());
                self.pending
                    .extend_from_slice(&tar_header(&path, location.size)?);
                self.blob = Some(BlobInProgress {
                    digest,
                    archive: location.archive,
                    size: location.size,
                    remaining: location.size,
                    hasher: Sha256::new(),
                });
            }
            None if !self.trailer_queued => {
                self.pending.resize(2 * BLOCK, 0);
                self.trailer_queued = true;
            }
            None => return Ok(false),
        }
        Ok(true)
    }

    /// Makes the open bundle archive the one `location` is in, positioned at its first byte:
    /// a relative seek forward when possible, else the archive is opened again.
    fn position_at(&mut self, location: &BlobLocation) -> io::Result<()> {
        let reusable = self
            .open
            .as_ref()
            .is_some_and(|o| o.path == location.archive && o.position <= location.offset);
        if !reusable {
            self.open = Some(OpenArchive {
                path: location.archive.clone(),
                reader: self.source.open_seekable(&location.archive)?,
                position: 0,
            });
        }
        if let Some(open) = self.open.as_mut()
            && open.position != location.offset
        {
            let delta = i64::try_from(location.offset - open.position)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
            open.position = open.reader.seek(SeekFrom::Current(delta))?;
        }
        Ok(())
    }

    /// Reads the next bytes of the blob in progress into `buf` (`Some(n)`), or, once all of it
    /// is read, checks its digest and queues its padding (`None`).
    fn read_blob(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let (Some(blob), Some(open)) = (self.blob.as_mut(), self.open.as_mut()) else {
            return Ok(None);
        };
        if blob.remaining > 0 {
            let want = usize::try_from(blob.remaining).map_or(buf.len(), |r| r.min(buf.len()));
            let n = open.reader.read(&mut buf[..want])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} ends {} bytes before the end of blob {}",
                        blob.archive, blob.remaining, blob.digest
                    ),
                ));
            }
            blob.hasher.update(&buf[..n]);
            blob.remaining -= n as u64;
            open.position += n as u64;
            self.bytes_sent += n as u64;
            return Ok(Some(n));
        }
        let Some(blob) = self.blob.take() else {
            return Ok(None);
        };
        let actual = Sha256Digest::from_hasher(blob.hasher);
        if actual != blob.digest {
            let changed = BlobChanged {
                archive: blob.archive,
                digest: blob.digest,
                actual,
            };
            self.changed = Some(changed.clone());
            // The member stays unfinished and nothing follows: ctr sees a truncated tar.
            return Err(io::Error::new(io::ErrorKind::InvalidData, changed));
        }
        self.blobs_sent += 1;
        self.pending.clear();
        self.pending_at = 0;
        self.pending.resize(padding(blob.size), 0);
        Ok(None)
    }
}

impl Read for ImportArchive<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if let Some(changed) = &self.changed {
            return Err(io::Error::new(io::ErrorKind::InvalidData, changed.clone()));
        }
        loop {
            if self.pending_at < self.pending.len() {
                let n = buf.len().min(self.pending.len() - self.pending_at);
                buf[..n].copy_from_slice(&self.pending[self.pending_at..self.pending_at + n]);
                self.pending_at += n;
                return Ok(n);
            }
            if self.blob.is_some() {
                match self.read_blob(buf)? {
                    Some(n) => return Ok(n),
                    None => continue,
                }
            }
            if !self.start_next_member()? {
                return Ok(0);
            }
        }
    }
}

/// The `index.json` naming `images`, sorted by reference, as the isobuilder writes it; each
/// manifest's size is where `blobs` found it (0 if it did not, which ctr refuses).
fn index_json(images: &[ImageEntry], blobs: &BTreeMap<Sha256Digest, BlobLocation>) -> Vec<u8> {
    let mut sorted: Vec<&ImageEntry> = images.iter().collect();
    sorted.sort_by(|a, b| a.reference.cmp(&b.reference));
    let manifests = sorted
        .into_iter()
        .map(|image| {
            let mut annotations = BTreeMap::new();
            annotations.insert(ANNOTATION_IMAGE_NAME.to_string(), image.reference.clone());
            if let Some(tag) = tag_of(&image.reference) {
                annotations.insert(ANNOTATION_REF_NAME.to_string(), tag.to_string());
            }
            Descriptor {
                media_type: image.media_type.clone(),
                digest: image.manifest_digest.oci(),
                size: blobs.get(&image.manifest_digest).map_or(0, |l| l.size),
                platform: Some(DescriptorPlatform {
                    architecture: image.platform.architecture.clone(),
                    os: image.platform.os.clone(),
                    variant: image.platform.variant.clone(),
                }),
                annotations,
            }
        })
        .collect();
    let index = ImageIndex {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_OCI_INDEX.to_string()),
        manifests,
    };
    // Plain strings and numbers: serialisation cannot fail.
    serde_json::to_vec(&index).unwrap_or_default()
}

/// The tag of a reference (`registry.k8s.io/pause:3.10` → `3.10`), if it has one.
fn tag_of(reference: &str) -> Option<&str> {
    let name = reference.split('@').next().unwrap_or(reference);
    let last = name.rsplit('/').next().unwrap_or(name);
    last.split_once(':').map(|(_, tag)| tag)
}

/// A ustar header for a regular file (mode 0644, owner 0, mtime 0).
fn tar_header(path: &str, size: u64) -> io::Result<[u8; BLOCK]> {
    let mut header = tar::Header::new_ustar();
    header.set_path(path)?;
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_cksum();
    Ok(*header.as_bytes())
}

/// Zero bytes after `size` bytes of content, up to the next block.
fn padding(size: u64) -> usize {
    let rest = (size % BLOCK as u64) as usize;
    if rest == 0 { 0 } else { BLOCK - rest }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use cks_proto::verify::{SourceFile, verify_image_blobs};

    use super::*;
    use crate::images::testing::{Fixture, base_layer, parse};

    /// A source that can only stream: the default, forward-only `open_seekable`.
    struct Streaming<'a>(&'a dyn BundleSource);

    impl BundleSource for Streaming<'_> {
        fn describe(&self) -> String {
            self.0.describe()
        }
        fn list_files(&self) -> io::Result<Vec<SourceFile>> {
            self.0.list_files()
        }
        fn open<'b>(&'b self, path: &str) -> io::Result<Box<dyn Read + 'b>> {
            self.0.open(path)
        }
    }

    /// The per-image layout: one archive per image, the base layer in both.
    fn per_image() -> Fixture {
        let base = base_layer();
        Fixture::new(&[
            ("r/a:1", "docker/a:1.tar", &[&base, b"a"]),
            ("r/b:1", "docker/b:1.tar", &[&base, b"b"]),
            ("r/c@sha256:0123", "docker/c.tar", &[b"c"]),
        ])
    }

    fn generate(source: &dyn BundleSource, fixture: &Fixture) -> Vec<u8> {
        let images: Vec<&ImageEntry> = fixture.manifest.images.iter().collect();
        let wanted: BTreeSet<Sha256Digest> = images
            .iter()
            .flat_map(|i| i.blobs.iter().cloned())
            .collect();
        let verified =
            verify_image_blobs(source, &fixture.manifest, &images, &wanted).expect("verified");
        let owned: Vec<ImageEntry> = images.into_iter().cloned().collect();
        let mut archive = ImportArchive::new(source, &owned, &verified.locations);
        let mut out = Vec::new();
        archive.read_to_end(&mut out).expect("generate");
        assert!(archive.is_complete());
        assert_eq!(archive.blobs_sent(), fixture.blobs.len());
        out
    }

    #[test]
    fn several_archives_are_read_in_order_seeking_or_streaming() {
        let fixture = per_image();
        let dir = fixture.source();
        let seeking = generate(&dir, &fixture);
        let streaming = generate(&Streaming(&dir), &fixture);
        assert!(
            seeking == streaming,
            "same bytes whichever way the source reads"
        );

        let recorded = parse("x", &seeking);
        assert!(recorded.terminated);
        assert_eq!(
            recorded.blobs, fixture.blobs,
            "each blob once, byte for byte"
        );
        let members = recorded.members.expect("parses");
        assert_eq!(members.first().map(String::as_str), Some("oci-layout"));
        assert_eq!(members.last().map(String::as_str), Some("index.json"));
        let index = recorded.index.expect("index");
        let annotations: Vec<_> = index.manifests.iter().map(|d| &d.annotations).collect();
        assert_eq!(annotations[0][ANNOTATION_IMAGE_NAME], "r/a:1");
        assert_eq!(annotations[0][ANNOTATION_REF_NAME], "1");
        assert!(
            !annotations[2].contains_key(ANNOTATION_REF_NAME),
            "a digest reference has no tag"
        );
        for (descriptor, image) in index.manifests.iter().zip(&fixture.manifest.images) {
            assert_eq!(descriptor.digest, image.manifest_digest.oci());
            assert_eq!(
                descriptor.size,
                fixture.blobs[&image.manifest_digest].len() as u64
            );
            assert_eq!(descriptor.media_type, image.media_type);
        }
    }

    #[test]
    fn tags_are_found_after_the_last_path_segment() {
        assert_eq!(tag_of("registry.k8s.io/pause:3.10"), Some("3.10"));
        assert_eq!(tag_of("localhost:5000/pause:3.10"), Some("3.10"));
        assert_eq!(tag_of("localhost:5000/pause"), None);
        assert_eq!(tag_of("r/x@sha256:abcd"), None);
        assert_eq!(padding(0), 0);
        assert_eq!(padding(1), 511);
        assert_eq!(padding(512), 0);
    }
}
