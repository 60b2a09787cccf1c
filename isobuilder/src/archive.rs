//! Image archives: deterministic tars of an OCI image layout, importable by
//! `ctr -n k8s.io images import` on a stock CKS node.
//!
//! With the default shared layout, all images go into one archive, `docker/images.tar`: its
//! `index.json` names every image (annotation `io.containerd.image.name`, which `ctr` uses as the
//! image name) and each blob is stored once however many images share it. The per-image layout
//! writes the same structure once per image, as CloudStack's script does.
//!
//! Output is byte-identical for identical inputs: entries sorted, mtime 0, owner 0, fixed modes.

use std::io::{self, Write};

use cks_proto::ids::Sha256Digest;
use cks_proto::manifest::Platform;
use cks_proto::oci::{
    ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, Descriptor, DescriptorPlatform, ImageIndex,
    MEDIA_TYPE_OCI_INDEX, OCI_LAYOUT,
};

use crate::cache::Cache;

/// One image to put in an archive.
#[derive(Debug, Clone)]
pub struct ArchiveImage {
    /// Full reference; becomes the image name on import.
    pub reference: String,
    /// Tag, for the OCI `ref.name` annotation.
    pub tag: Option<String>,
    /// Platform manifest digest.
    pub manifest_digest: Sha256Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size.
    pub manifest_size: u64,
    /// Its platform.
    pub platform: Platform,
    /// Config and layers.
    pub blobs: Vec<Sha256Digest>,
}

/// The `index.json` of an archive holding `images` (sorted by reference).
pub fn index_json(images: &[ArchiveImage]) -> Vec<u8> {
    let mut sorted: Vec<&ArchiveImage> = images.iter().collect();
    sorted.sort_by(|a, b| a.reference.cmp(&b.reference));
    let index = ImageIndex {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_OCI_INDEX.to_string()),
        manifests: sorted
            .iter()
            .map(|i| {
                let mut annotations = std::collections::BTreeMap::new();
                annotations.insert(ANNOTATION_IMAGE_NAME.to_string(), i.reference.clone());
                if let Some(tag) = &i.tag {
                    annotations.insert(ANNOTATION_REF_NAME.to_string(), tag.clone());
                }
                Descriptor {
                    media_type: i.media_type.clone(),
                    digest: i.manifest_digest.oci(),
                    size: i.manifest_size,
                    platform: Some(DescriptorPlatform {
                        architecture: i.platform.architecture.clone(),
                        os: i.platform.os.clone(),
                        variant: i.platform.variant.clone(),
                    }),
                    annotations,
                }
            })
            .collect(),
    };
    // Plain strings and numbers: serialisation cannot fail.
    serde_json::to_vec(&index).unwrap_or_default()
}

/// Every blob an archive of `images` holds: manifests, configs and layers, each once, sorted.
pub fn archive_blobs(images: &[ArchiveImage]) -> Vec<Sha256Digest> {
    let mut all: Vec<Sha256Digest> = images
        .iter()
        .flat_map(|i| std::iter::once(i.manifest_digest.clone()).chain(i.blobs.iter().cloned()))
        .collect();
    all.sort();
    all.dedup();
    all
}

/// Writes the archive for `images` to `out`, reading blobs from `cache`.
///
/// # Errors
/// When a blob cannot be read or `out` cannot be written.
pub fn write_archive(cache: &Cache, images: &[ArchiveImage], out: impl Write) -> io::Result<()> {
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Deterministic);
    append_dir(&mut tar, "blobs/")?;
    append_dir(&mut tar, "blobs/sha256/")?;
    append_bytes(&mut tar, "oci-layout", OCI_LAYOUT.as_bytes())?;
    append_bytes(&mut tar, "index.json", &index_json(images))?;
    for digest in archive_blobs(images) {
        let path = cache.blob_path(&digest);
        let file = std::fs::File::open(&path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "blob {} not in cache at {}: {e}",
                    digest.oci(),
                    path.display()
                ),
            )
        })?;
        let size = file.metadata()?.len();
        let mut header = header_for(size, 0o644, tar::EntryType::Regular);
        tar.append_data(&mut header, format!("blobs/sha256/{}", digest.hex()), file)?;
    }
    tar.into_inner()?.flush()
}

fn header_for(size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, path: &str) -> io::Result<()> {
    let mut header = header_for(0, 0o755, tar::EntryType::Directory);
    tar.append_data(&mut header, path, io::empty())
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, path: &str, bytes: &[u8]) -> io::Result<()> {
    let mut header = header_for(bytes.len() as u64, 0o644, tar::EntryType::Regular);
    tar.append_data(&mut header, path, bytes)
}

/// The file name CloudStack's script gives an image archive, `docker/<name>:<tag>.tar`, made
/// unique among `all` by adding path segments when two images share `name:tag`.
pub fn per_image_file_name(
    image: &crate::reference::ImageRef,
    all: &[crate::reference::ImageRef],
) -> String {
    let short = image.short_name();
    let clash = all.iter().any(|o| o != image && o.short_name() == short);
    let name = if clash {
        image.to_string().replace('/', "_")
    } else {
        short
    };
    format!("docker/{name}.tar")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(reference: &str, manifest: &[u8], blobs: &[&[u8]]) -> ArchiveImage {
        ArchiveImage {
            reference: reference.into(),
            tag: reference.rsplit(':').next().map(str::to_string),
            manifest_digest: Sha256Digest::of(manifest),
            media_type: cks_proto::oci::MEDIA_TYPE_OCI_MANIFEST.into(),
            manifest_size: manifest.len() as u64,
            platform: Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: None,
            },
            blobs: blobs.iter().map(|b| Sha256Digest::of(b)).collect(),
        }
    }

    #[test]
    fn shared_blobs_are_stored_once_and_output_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        for b in [&b"m1"[..], b"m2", b"base", b"top1", b"top2"] {
            cache.put_bytes(b).unwrap();
        }
        let images = vec![
            image("r/b:2", b"m2", &[b"base", b"top2"]),
            image("r/a:1", b"m1", &[b"base", b"top1"]),
        ];
        let mut one = Vec::new();
        write_archive(&cache, &images, &mut one).unwrap();
        let mut reversed = images.clone();
        reversed.reverse();
        let mut two = Vec::new();
        write_archive(&cache, &reversed, &mut two).unwrap();
        assert_eq!(one, two);

        let mut names = Vec::new();
        for entry in tar::Archive::new(&one[..]).entries().unwrap() {
            names.push(
                entry
                    .unwrap()
                    .path()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        let blob_entries = names
            .iter()
            .filter(|n| n.starts_with("blobs/sha256/") && n.len() > 14)
            .count();
        assert_eq!(
            blob_entries, 5,
            "m1, m2, base, top1, top2 once each: {names:?}"
        );
        let index: ImageIndex = serde_json::from_slice(&index_json(&images)).unwrap();
        assert_eq!(
            index.manifests[0].annotations[ANNOTATION_IMAGE_NAME],
            "r/a:1"
        );
    }

    #[test]
    fn per_image_names_follow_cks_and_avoid_clashes() {
        use crate::reference::ImageRef;
        let a = ImageRef::parse("registry.k8s.io/pause:3.10").unwrap();
        let b = ImageRef::parse("quay.io/x/pause:3.10").unwrap();
        let c = ImageRef::parse("registry.k8s.io/kube-proxy:v1.33.1").unwrap();
        let all = vec![a.clone(), b.clone(), c.clone()];
        assert_eq!(
            per_image_file_name(&c, &all),
            "docker/kube-proxy:v1.33.1.tar"
        );
        assert_eq!(
            per_image_file_name(&a, &all),
            "docker/registry.k8s.io_pause:3.10.tar"
        );
        assert_ne!(per_image_file_name(&a, &all), per_image_file_name(&b, &all));
    }
}
