//! Version 1 of `cks-manifest.json`.
//!
//! The manifest is written by `cks-isobuilder` as pretty JSON with sorted lists, so that it is
//! byte-identical for identical inputs (it contains no build time).

use serde::{Deserialize, Serialize};

use crate::ids::{Arch, KubeVersion, Sha256Digest};

/// The value of `schema_version` this module reads and writes.
pub const SCHEMA_VERSION: u64 = 1;

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: u64,
    /// The release name from the spec, e.g. `setup-v1.33.1`; the ISO is `<name>-<x86_64|aarch64>.iso`.
    pub name: String,
    /// The program that wrote the bundle, e.g. `cks-isobuilder 0.1.0`.
    pub builder: String,
    /// The Kubernetes version of `k8s/kubeadm`, `kubelet`, `kubectl`.
    pub kubernetes_version: KubeVersion,
    /// The architecture every binary and image in the bundle is for.
    pub arch: Arch,
    /// The CNI the bundle's `network.yaml` installs, e.g. `calico`, or `custom`.
    pub cni: String,
    /// Version of the containernetworking plugins in `cni/`.
    pub cni_plugins_version: KubeVersion,
    /// Version of crictl in `cri-tools/`.
    pub crictl_version: KubeVersion,
    /// Version of etcd in `etcd/`, when the bundle carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_version: Option<KubeVersion>,
    /// Every file of the bundle except the manifest itself, sorted by path.
    pub files: Vec<FileEntry>,
    /// Every container image, sorted by reference.
    pub images: Vec<ImageEntry>,
    /// Every blob stored in the image archives, once each, sorted by digest.
    pub blobs: Vec<BlobEntry>,
}

/// One file of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path relative to the bundle root, `/`-separated, e.g. `k8s/kubeadm`.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content.
    pub sha256: Sha256Digest,
    /// Unix permission bits as installed, e.g. `0o755` for binaries.
    pub mode: u32,
    /// What the file is, for people and for the agent's installer.
    pub kind: FileKind,
    /// Where the content came from (URL, or `generated`).
    pub source: String,
}

/// The role of a file in the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// `k8s/kubeadm`, `k8s/kubelet`, `k8s/kubectl`.
    KubernetesBinary,
    /// `cni/cni-plugins-<arch>.tgz`.
    CniPlugins,
    /// `cri-tools/crictl-linux-<arch>.tar.gz`.
    Crictl,
    /// `etcd/etcd-linux-<arch>.tar.gz`.
    Etcd,
    /// `kubelet.service`.
    KubeletService,
    /// `10-kubeadm.conf`.
    KubeadmDropIn,
    /// A Kubernetes manifest applied on the cluster (`network.yaml`, `dashboard.yaml`, …).
    KubernetesManifest,
    /// An OCI image archive under `docker/`.
    ImageArchive,
}

/// One container image of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    /// Fully qualified reference, as containerd names it after import,
    /// e.g. `registry.k8s.io/pause:3.10`, `docker.io/library/nginx:1.27`.
    pub reference: String,
    /// The archive under `docker/` that holds it.
    pub archive: String,
    /// Digest of the image manifest (the platform-specific one), equal to the registry's.
    pub manifest_digest: Sha256Digest,
    /// Media type of that manifest (OCI or Docker schema 2).
    pub media_type: String,
    /// The platform the manifest is for.
    pub platform: Platform,
    /// Config and layer digests the manifest needs, config first, then layers in order.
    pub blobs: Vec<Sha256Digest>,
}

/// An OCI platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Platform {
    /// Always `linux` for node images.
    pub os: String,
    /// `amd64` or `arm64`.
    pub architecture: String,
    /// E.g. `v8` for arm64, when the registry says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// A blob stored in an image archive (manifests, configs and layers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobEntry {
    /// Its SHA-256, which is also its name in the archive (`blobs/sha256/<hex>`).
    pub digest: Sha256Digest,
    /// Size in bytes.
    pub size: u64,
}

impl BundleManifest {
    /// Serialises deterministically (pretty JSON, trailing newline).
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain structs of strings and numbers cannot fail.
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// The file entry at `path`, if any.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }

    /// Sum of all file sizes (the archives included).
    pub fn total_file_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Sum of the unique blob sizes.
    pub fn unique_blob_bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.size).sum()
    }

    /// Bytes the images would take if each were stored with its own copy of every blob it
    /// needs (the CloudStack script's one-archive-per-image layout), blobs only.
    pub fn per_image_blob_bytes(&self) -> u64 {
        let size_of = |d: &Sha256Digest| {
            self.blobs
                .iter()
                .find(|b| &b.digest == d)
                .map_or(0, |b| b.size)
        };
        self.images
            .iter()
            .map(|i| size_of(&i.manifest_digest) + i.blobs.iter().map(size_of).sum::<u64>())
            .sum()
    }
}
