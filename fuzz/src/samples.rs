//! Valid, deterministic samples: the image archive the [`crate::image_archive`] target mutates
//! (its manifest lists these images), and the seed corpus (tests/seeds.rs writes it).

use std::sync::OnceLock;

use cks_proto::ids::{Arch, Sha256Digest};
use cks_proto::manifest::{
    BlobEntry, BundleManifest, FileEntry, FileKind, ImageEntry, Platform, SCHEMA_VERSION,
};
use cks_proto::oci::{
    ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST,
    OCI_LAYOUT,
};
use serde_json::json;

/// Where the image archive is in the sample bundle.
pub const ARCHIVE_PATH: &str = "docker/images.tar";

/// The sample image archive: two single-arch images (`pause`, and `busybox` sharing its layer)
/// in a tar of an OCI layout, as the isobuilder writes them; with their manifest entries.
pub struct ImageArchive {
    /// The tar.
    pub tar: Vec<u8>,
    /// The images, as `cks-manifest.json` lists them.
    pub images: Vec<ImageEntry>,
    /// Every blob, with its size.
    pub blobs: Vec<BlobEntry>,
}

/// The sample image archive (built once).
pub fn image_archive() -> &'static ImageArchive {
    static SAMPLE: OnceLock<ImageArchive> = OnceLock::new();
    SAMPLE.get_or_init(build_image_archive)
}

/// The sample bundle's manifest, listing `archive` (whatever its bytes) as its image archive with
/// the sample's images and blobs.
pub fn bundle_manifest(archive: &[u8]) -> BundleManifest {
    let sample = image_archive();
    let version = |v: &str| v.parse().expect("a version");
    BundleManifest {
        schema_version: SCHEMA_VERSION,
        name: "setup-v1.33.1-x86_64".to_string(),
        builder: "cks-fuzz".to_string(),
        kubernetes_version: version("1.33.1"),
        arch: Arch::Amd64,
        cni: "calico".to_string(),
        cni_plugins_version: version("1.7.1"),
        crictl_version: version("1.33.0"),
        etcd_version: None,
        files: vec![FileEntry {
            path: ARCHIVE_PATH.to_string(),
            size: archive.len() as u64,
            sha256: Sha256Digest::of(archive),
            mode: 0o644,
            kind: FileKind::ImageArchive,
            source: "cks-fuzz sample".to_string(),
        }],
        images: sample.images.clone(),
        blobs: sample.blobs.clone(),
    }
}

fn build_image_archive() -> ImageArchive {
    let layer = |name: &str, data: &[u8]| {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o755);
        header.set_mtime(0);
        builder
            .append_data(&mut header, name, data)
            .expect("append to a Vec");
        builder.into_inner().expect("finish a Vec")
    };
    let shared = layer("pause", b"#!/bin/sh\nsleep infinity\n");
    let own = layer("bin/busybox", b"#!/bin/sh\necho busybox\n");

    let mut blobs: Vec<Vec<u8>> = Vec::new();
    let mut images = Vec::new();
    let mut index = Vec::new();
    for (reference, layers) in [
        ("registry.k8s.io/pause:3.10", vec![&shared]),
        ("docker.io/library/busybox:1.36", vec![&shared, &own]),
    ] {
        let diff_ids: Vec<String> = layers
            .iter()
            .map(|l| Sha256Digest::of(l.as_slice()).oci())
            .collect();
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/pause"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .expect("json");
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": Sha256Digest::of(&config).oci(),
                "size": config.len(),
            },
            "layers": layers.iter().map(|l| json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": Sha256Digest::of(l.as_slice()).oci(),
                "size": l.len(),
            })).collect::<Vec<_>>(),
        }))
        .expect("json");
        let manifest_digest = Sha256Digest::of(&manifest);
        index.push(json!({
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "digest": manifest_digest.oci(),
            "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                ANNOTATION_IMAGE_NAME: reference,
                ANNOTATION_REF_NAME: reference.rsplit(':').next(),
            },
        }));
        images.push(ImageEntry {
            reference: reference.to_string(),
            archive: super::samples::ARCHIVE_PATH.to_string(),
            manifest_digest,
            media_type: MEDIA_TYPE_OCI_MANIFEST.to_string(),
            platform: Platform {
                os: "linux".to_string(),
                architecture: "amd64".to_string(),
                variant: None,
            },
            blobs: std::iter::once(Sha256Digest::of(&config))
                .chain(layers.iter().map(|l| Sha256Digest::of(l.as_slice())))
                .collect(),
        });
        blobs.push(manifest);
        blobs.push(config);
        for l in layers {
            blobs.push(l.clone());
        }
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_INDEX,
        "manifests": index,
    }))
    .expect("json");

    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        builder
            .append_data(&mut header, path, data)
            .expect("append to a Vec");
    };
    add("oci-layout", OCI_LAYOUT.as_bytes());
    add("index.json", &index);
    let mut entries: Vec<BlobEntry> = Vec::new();
    for blob in &blobs {
        let digest = Sha256Digest::of(blob);
        if entries.iter().any(|e| e.digest == digest) {
            continue;
        }
        add(&format!("blobs/sha256/{}", digest.hex()), blob);
        entries.push(BlobEntry {
            digest,
            size: blob.len() as u64,
        });
    }
    entries.sort_by(|a, b| a.digest.cmp(&b.digest));
    ImageArchive {
        tar: builder.into_inner().expect("finish a Vec"),
        images,
        blobs: entries,
    }
}
