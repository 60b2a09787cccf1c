//! A small but complete bundle for agent tests: fake k8s binaries (or given ones), CNI and
//! crictl tarballs, the kubelet unit and drop-in, two manifests and one OCI archive holding a
//! tiny pause image, with a `cks-manifest.json` that `cks_proto::verify` accepts.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cks_proto::ids::{Arch, KubeVersion, Sha256Digest};
use cks_proto::manifest::{
    BlobEntry, BundleManifest, FileEntry, FileKind, ImageEntry, MANIFEST_PATH, Platform,
    SCHEMA_VERSION,
};
use serde_json::json;

pub const PAUSE: &str = "registry.k8s.io/pause:3.10";
pub const ARCHIVE: &str = "docker/images.tar";

// === bundle builder ===

pub fn host_arch() -> Arch {
    Arch::host().expect("tests run on amd64 or arm64")
}

pub fn other_arch() -> Arch {
    match host_arch() {
        Arch::Amd64 => Arch::Arm64,
        Arch::Arm64 => Arch::Amd64,
    }
}

pub fn targz(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    for (path, data, mode) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(*mode);
        header.set_mtime(0);
        builder
            .append_data(&mut header, path, *data)
            .expect("append");
    }
    builder.into_inner().expect("tar").finish().expect("gzip")
}

/// An OCI archive with one image named `reference`; returns the archive and the image entry
/// and blob entries for the manifest.
pub fn oci_archive(reference: &str, arch: Arch) -> (Vec<u8>, ImageEntry, Vec<BlobEntry>) {
    let layer_tar = {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        let data = b"pause stand-in\n";
        header.set_size(data.len() as u64);
        header.set_mode(0o755);
        header.set_mtime(0);
        builder
            .append_data(&mut header, "pause", data.as_slice())
            .expect("append");
        builder.into_inner().expect("tar")
    };
    let layer = {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&layer_tar).expect("gzip");
        gz.finish().expect("gzip")
    };
    let config = serde_json::to_vec(&json!({
        "architecture": arch.as_str(),
        "os": "linux",
        "config": {"Entrypoint": ["/pause"]},
        "rootfs": {"type": "layers", "diff_ids": [Sha256Digest::of(&layer_tar).oci()]},
    }))
    .expect("json");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": cks_proto::oci::MEDIA_TYPE_OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": Sha256Digest::of(&config).oci(),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": Sha256Digest::of(&layer).oci(),
            "size": layer.len(),
        }],
    }))
    .expect("json");
    let manifest_digest = Sha256Digest::of(&manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": cks_proto::oci::MEDIA_TYPE_OCI_INDEX,
        "manifests": [{
            "mediaType": cks_proto::oci::MEDIA_TYPE_OCI_MANIFEST,
            "digest": manifest_digest.oci(),
            "size": manifest.len(),
            "platform": {"architecture": arch.as_str(), "os": "linux"},
            "annotations": {
                cks_proto::oci::ANNOTATION_IMAGE_NAME: reference,
                cks_proto::oci::ANNOTATION_REF_NAME: reference.rsplit(':').next(),
            },
        }],
    }))
    .expect("json");

    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        builder.append_data(&mut header, path, data).expect("add");
    };
    add("oci-layout", cks_proto::oci::OCI_LAYOUT.as_bytes());
    add("index.json", &index);
    let mut blobs = Vec::new();
    for blob in [&manifest, &config, &layer] {
        let digest = Sha256Digest::of(blob);
        add(&format!("blobs/sha256/{}", digest.hex()), blob);
        blobs.push(BlobEntry {
            digest,
            size: blob.len() as u64,
        });
    }
    let archive = builder.into_inner().expect("tar");
    blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
    let image = ImageEntry {
        reference: reference.to_string(),
        archive: ARCHIVE.to_string(),
        manifest_digest,
        media_type: cks_proto::oci::MEDIA_TYPE_OCI_MANIFEST.to_string(),
        platform: Platform {
            os: "linux".into(),
            architecture: arch.as_str().into(),
            variant: None,
        },
        blobs: vec![Sha256Digest::of(&config), Sha256Digest::of(&layer)],
    };
    (archive, image, blobs)
}

/// Writes a bundle tree for `arch` with Kubernetes `version` into `dir`.
pub fn write_bundle(dir: &Path, arch: Arch, version: &str) {
    let a = arch.as_str();
    let cni = targz(&[
        ("./", b"", 0o755),
        ("./bridge", b"#!/bin/sh\necho bridge\n", 0o755),
        ("./loopback", b"#!/bin/sh\necho loopback\n", 0o755),
        ("./LICENSE", b"Apache-2.0\n", 0o644),
    ]);
    let crictl = targz(&[("crictl", b"#!/bin/sh\necho crictl\n", 0o755)]);
    let (archive, image, blobs) = oci_archive(PAUSE, arch);
    let binary = |name: &str| format!("#!/bin/sh\necho {name} v{version}\n").into_bytes();
    let files: Vec<(String, Vec<u8>, u32, FileKind)> = vec![
        (
            "k8s/kubeadm".into(),
            binary("kubeadm"),
            0o755,
            FileKind::KubernetesBinary,
        ),
        (
            "k8s/kubelet".into(),
            binary("kubelet"),
            0o755,
            FileKind::KubernetesBinary,
        ),
        (
            "k8s/kubectl".into(),
            binary("kubectl"),
            0o755,
            FileKind::KubernetesBinary,
        ),
        (
            format!("cni/cni-plugins-{a}.tgz"),
            cni,
            0o644,
            FileKind::CniPlugins,
        ),
        (
            format!("cri-tools/crictl-linux-{a}.tar.gz"),
            crictl,
            0o644,
            FileKind::Crictl,
        ),
        (
            "kubelet.service".into(),
            b"[Service]\nExecStart=/usr/bin/kubelet\nRestart=always\n".to_vec(),
            0o644,
            FileKind::KubeletService,
        ),
        (
            "10-kubeadm.conf".into(),
            b"[Service]\nExecStart=\nExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS\n"
                .to_vec(),
            0o644,
            FileKind::KubeadmDropIn,
        ),
        (
            "network.yaml".into(),
            b"kind: List\n".to_vec(),
            0o644,
            FileKind::KubernetesManifest,
        ),
        (
            "dashboard.yaml".into(),
            b"kind: List\n".to_vec(),
            0o644,
            FileKind::KubernetesManifest,
        ),
        (ARCHIVE.into(), archive, 0o644, FileKind::ImageArchive),
    ];
    let mut entries = Vec::new();
    for (path, content, mode, kind) in files {
        let dest = dir.join(&path);
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        std::fs::write(&dest, &content).expect("write");
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode)).expect("chmod");
        entries.push(FileEntry {
            path,
            size: content.len() as u64,
            sha256: Sha256Digest::of(&content),
            mode,
            kind,
            source: "generated".into(),
        });
    }
    entries.sort_by(|x, y| x.path.cmp(&y.path));
    let manifest = BundleManifest {
        schema_version: SCHEMA_VERSION,
        name: format!("setup-v{version}"),
        builder: "cks-agent tests".into(),
        kubernetes_version: version.parse::<KubeVersion>().expect("version"),
        arch,
        cni: "calico".into(),
        cni_plugins_version: KubeVersion::new(1, 6, 2),
        crictl_version: KubeVersion::new(1, 33, 0),
        etcd_version: None,
        files: entries,
        images: vec![image],
        blobs,
    };
    std::fs::write(dir.join(MANIFEST_PATH), manifest.to_json()).expect("manifest");
}

/// A bundle directory (and its ISO, on demand) in a temp dir.
pub struct TestBundle {
    _dir: tempfile::TempDir,
    pub tree: PathBuf,
    pub iso: PathBuf,
}

impl TestBundle {
    pub fn new(arch: Arch, version: &str) -> TestBundle {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("tree");
        write_bundle(&tree, arch, version);
        let iso = dir.path().join("bundle.iso");
        TestBundle {
            _dir: dir,
            tree,
            iso,
        }
    }

    /// Builds the ISO with xorriso; `None` (test skipped) when xorriso is missing.
    pub fn build_iso(&self) -> Option<&Path> {
        let status = Command::new("xorriso")
            .args(["-no_rc", "-report_about", "SORRY", "-outdev"])
            .arg(&self.iso)
            .args(["-volid", "CDROM", "-map"])
            .arg(&self.tree)
            .args(["/", "-commit"])
            .output();
        match status {
            Ok(out) if out.status.success() => Some(&self.iso),
            other => {
                eprintln!("skipped: xorriso unavailable or failed: {other:?}");
                None
            }
        }
    }
}
