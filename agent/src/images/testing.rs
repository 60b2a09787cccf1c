//! Test bundles with real OCI image archives, and a recording [`ImageStore`], for the unit
//! tests of [`crate::images`].

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use cks_proto::ids::{Arch, KubeVersion, Sha256Digest};
use cks_proto::manifest::{
    BlobEntry, BundleManifest, FileEntry, FileKind, ImageEntry, MANIFEST_PATH, Platform,
    SCHEMA_VERSION,
};
use cks_proto::oci::{
    ANNOTATION_IMAGE_NAME, Descriptor, ImageIndex, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST,
    OCI_LAYOUT,
};
use cks_proto::verify::DirBundle;
use serde_json::json;

use crate::images::{ImageStore, ImageStoreError, StoredImage};

/// The archive of the shared layout.
pub const ARCHIVE: &str = "docker/images.tar";

/// An image to put in a [`Fixture`]: reference, archive, layer contents.
pub type ImageSpec<'a> = (&'a str, &'a str, &'a [&'a [u8]]);

/// A bundle directory whose image archives are real OCI layouts (the layers are not tars: the
/// agent never looks inside them), with a `cks-manifest.json`.
pub struct Fixture {
    /// The bundle root.
    pub dir: tempfile::TempDir,
    /// Its manifest.
    pub manifest: BundleManifest,
    /// Every blob by digest.
    pub blobs: BTreeMap<Sha256Digest, Vec<u8>>,
}

/// A base layer shared by two images, large enough that reading it shows.
pub fn base_layer() -> Vec<u8> {
    (0..64 * 1024u32).map(|i| (i % 251) as u8).collect()
}

impl Fixture {
    /// A bundle holding `images`.
    pub fn new(images: &[ImageSpec<'_>]) -> Fixture {
        let mut blobs = BTreeMap::new();
        let mut entries = Vec::new();
        for (reference, archive, layers) in images {
            let config = serde_json::to_vec(
                &json!({"architecture": "amd64", "os": "linux", "image": reference}),
            )
            .expect("json");
            let descriptor = |b: &[u8], media_type: &str| json!({"mediaType": media_type, "digest": Sha256Digest::of(b).oci(), "size": b.len()});
            let manifest = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": MEDIA_TYPE_OCI_MANIFEST,
                "config": descriptor(&config, "application/vnd.oci.image.config.v1+json"),
                "layers": layers
                    .iter()
                    .map(|l| descriptor(l, "application/vnd.oci.image.layer.v1.tar+gzip"))
                    .collect::<Vec<_>>(),
            }))
            .expect("json");
            let mut image_blobs = vec![Sha256Digest::of(&config)];
            image_blobs.extend(layers.iter().map(|l| Sha256Digest::of(l)));
            entries.push(ImageEntry {
                reference: reference.to_string(),
                archive: archive.to_string(),
                manifest_digest: Sha256Digest::of(&manifest),
                media_type: MEDIA_TYPE_OCI_MANIFEST.into(),
                platform: Platform {
                    os: "linux".into(),
                    architecture: "amd64".into(),
                    variant: None,
                },
                blobs: image_blobs,
            });
            for blob in std::iter::once(manifest)
                .chain(std::iter::once(config))
                .chain(layers.iter().map(|l| l.to_vec()))
            {
                blobs.insert(Sha256Digest::of(&blob), blob);
            }
        }
        entries.sort_by(|a, b| a.reference.cmp(&b.reference));

        let dir = tempfile::tempdir().expect("tempdir");
        let mut files = Vec::new();
        let archives: BTreeSet<&str> = entries.iter().map(|i| i.archive.as_str()).collect();
        for archive in archives {
            let images: Vec<&ImageEntry> =
                entries.iter().filter(|i| i.archive == archive).collect();
            let content = write_archive(&images, &blobs);
            let dest = dir.path().join(archive);
            std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
            std::fs::write(&dest, &content).expect("write");
            files.push(FileEntry {
                path: archive.to_string(),
                size: content.len() as u64,
                sha256: Sha256Digest::of(&content),
                mode: 0o644,
                kind: FileKind::ImageArchive,
                source: "generated".into(),
            });
        }
        let manifest = BundleManifest {
            schema_version: SCHEMA_VERSION,
            name: "t".into(),
            builder: "test".into(),
            kubernetes_version: KubeVersion::new(1, 33, 1),
            arch: Arch::Amd64,
            cni: "calico".into(),
            cni_plugins_version: KubeVersion::new(1, 6, 0),
            crictl_version: KubeVersion::new(1, 33, 0),
            etcd_version: None,
            files,
            images: entries,
            blobs: blobs
                .iter()
                .map(|(digest, b)| BlobEntry {
                    digest: digest.clone(),
                    size: b.len() as u64,
                })
                .collect(),
        };
        std::fs::write(dir.path().join(MANIFEST_PATH), manifest.to_json()).expect("manifest");
        Fixture {
            dir,
            manifest,
            blobs,
        }
    }

    /// The bundle as a source.
    pub fn source(&self) -> DirBundle {
        DirBundle::new(self.dir.path())
    }

    /// The manifest entry of `reference`.
    pub fn image(&self, reference: &str) -> &ImageEntry {
        self.manifest
            .images
            .iter()
            .find(|i| i.reference == reference)
            .unwrap_or_else(|| panic!("no image {reference}"))
    }

    /// What containerd lists after importing `references`: the images and their blobs.
    pub fn stored(&self, references: &[&str]) -> (Vec<StoredImage>, BTreeSet<Sha256Digest>) {
        let mut images = Vec::new();
        let mut content = BTreeSet::new();
        for reference in references {
            let image = self.image(reference);
            images.push(StoredImage {
                reference: image.reference.clone(),
                digest: image.manifest_digest.oci(),
            });
            content.insert(image.manifest_digest.clone());
            content.extend(image.blobs.iter().cloned());
        }
        (images, content)
    }

    /// Flips one byte of blob `digest` in every archive that holds it (same size).
    pub fn corrupt_blob(&self, digest: &Sha256Digest) {
        for file in &self.manifest.files {
            let path = self.dir.path().join(&file.path);
            let mut archive = std::fs::read(&path).expect("read");
            let offset = tar::Archive::new(&archive[..])
                .entries()
                .expect("entries")
                .map(|e| e.expect("entry"))
                .find(|e| {
                    e.path().expect("path").to_string_lossy()
                        == format!("blobs/sha256/{}", digest.hex())
                })
                .map(|e| e.raw_file_position());
            if let Some(offset) = offset {
                archive[offset as usize + 3] ^= 0x01;
                std::fs::write(&path, &archive).expect("write");
            }
        }
    }
}

/// An archive as the isobuilder writes it: `oci-layout`, `index.json`, blobs sorted.
fn write_archive(images: &[&ImageEntry], blobs: &BTreeMap<Sha256Digest, Vec<u8>>) -> Vec<u8> {
    let index = ImageIndex {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_OCI_INDEX.into()),
        manifests: images
            .iter()
            .map(|i| Descriptor {
                media_type: i.media_type.clone(),
                digest: i.manifest_digest.oci(),
                size: blobs[&i.manifest_digest].len() as u64,
                platform: None,
                annotations: [(ANNOTATION_IMAGE_NAME.to_string(), i.reference.clone())].into(),
            })
            .collect(),
    };
    let mut wanted: Vec<&Sha256Digest> = images
        .iter()
        .flat_map(|i| std::iter::once(&i.manifest_digest).chain(i.blobs.iter()))
        .collect();
    wanted.sort();
    wanted.dedup();
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, path, data).expect("append");
    };
    add("oci-layout", OCI_LAYOUT.as_bytes());
    add("index.json", &serde_json::to_vec(&index).expect("json"));
    for digest in wanted {
        add(&format!("blobs/sha256/{}", digest.hex()), &blobs[digest]);
    }
    tar.into_inner().expect("tar")
}

/// One archive a [`RecordingStore`] was given.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The name it was given.
    pub name: String,
    /// Member paths in order, or why the tar did not parse.
    pub members: Result<Vec<String>, String>,
    /// The `index.json` member, parsed.
    pub index: Option<ImageIndex>,
    /// Blob members' contents by digest.
    pub blobs: BTreeMap<Sha256Digest, Vec<u8>>,
    /// Whether the tar ended with its end-of-archive marker.
    pub terminated: bool,
}

/// An [`ImageStore`] that lists what it is given and records each import (it reads the
/// archive to the end, like ctr, unless told to stop after `read_limit` bytes).
#[derive(Default)]
pub struct RecordingStore {
    /// What `images ls` answers.
    pub images: Vec<StoredImage>,
    /// What `content ls` answers (`None`: cannot tell; `fail_content`: an error).
    pub content: Option<BTreeSet<Sha256Digest>>,
    /// Make `content_digests` fail.
    pub fail_content: bool,
    /// Make `import` fail after reading the archive.
    pub fail_import: bool,
    /// Stop reading after this many bytes.
    pub read_limit: Option<u64>,
    /// The imports.
    pub imports: RefCell<Vec<Recorded>>,
}

impl ImageStore for RecordingStore {
    fn list_images(&self) -> Result<Vec<StoredImage>, ImageStoreError> {
        Ok(self.images.clone())
    }

    fn content_digests(&self) -> Result<Option<BTreeSet<Sha256Digest>>, ImageStoreError> {
        if self.fail_content {
            return Err(ImageStoreError::Failed {
                operation: "content ls -q".into(),
                status: "exit status: 2".into(),
                stderr: "unknown command".into(),
            });
        }
        Ok(self.content.clone())
    }

    fn import(&self, name: &str, archive: &mut dyn Read) -> Result<(), ImageStoreError> {
        let mut bytes = Vec::new();
        let read = match self.read_limit {
            Some(limit) => archive.take(limit).read_to_end(&mut bytes),
            None => archive.read_to_end(&mut bytes),
        };
        self.imports.borrow_mut().push(parse(name, &bytes));
        if let Err(source) = read {
            return Err(ImageStoreError::Stream {
                archive: name.to_string(),
                source,
            });
        }
        if self.fail_import {
            return Err(ImageStoreError::Failed {
                operation: format!("images import {name}"),
                status: "exit status: 1".into(),
                stderr: "boom".into(),
            });
        }
        Ok(())
    }
}

/// What a tar holds, as a [`Recorded`].
pub fn parse(name: &str, bytes: &[u8]) -> Recorded {
    let mut recorded = Recorded {
        name: name.to_string(),
        members: Ok(Vec::new()),
        index: None,
        blobs: BTreeMap::new(),
        terminated: bytes.len() >= 1024
            && bytes.len().is_multiple_of(512)
            && bytes[bytes.len() - 1024..].iter().all(|b| *b == 0),
    };
    let mut members = Vec::new();
    let mut archive = tar::Archive::new(bytes);
    let result: std::io::Result<()> = (|| {
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.to_string_lossy().into_owned();
            let mut content = Vec::new();
            entry.read_to_end(&mut content)?;
            if path == "index.json" {
                recorded.index = serde_json::from_slice(&content).ok();
            } else if let Some(hex) = path.strip_prefix("blobs/sha256/") {
                recorded
                    .blobs
                    .insert(hex.parse().map_err(std::io::Error::other)?, content);
            }
            members.push(path);
        }
        Ok(())
    })();
    recorded.members = result.map(|()| members).map_err(|e| e.to_string());
    recorded
}
