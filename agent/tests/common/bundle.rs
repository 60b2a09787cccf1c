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

/// What the bundle's Kubernetes binaries and manifests are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Scripts that print their name and version; one-line manifests.
    Plain,
    /// Bundle-style wrappers around the kubesim stand-ins (`k8s/kubeadm` and `k8s/kubelet` run
    /// `$KUBESIM_BIN/<name>` at the bundle's version, `k8s/kubectl` the machine's kubectl), the
    /// upstream kubelet unit and kubeadm drop-in, and manifests a real API server accepts: a
    /// CNI DaemonSet (which makes kubesim's nodes Ready) and a dashboard with its namespace.
    Kubesim,
}

/// The bundle's `k8s/<name>` for `flavor`.
fn k8s_binary(flavor: Flavor, name: &str, version: &str) -> Vec<u8> {
    match (flavor, name) {
        (Flavor::Plain, _) => format!("#!/bin/sh\necho {name} v{version}\n").into_bytes(),
        (Flavor::Kubesim, "kubectl") => format!(
            "#!/bin/sh\n# kubectl v{version}: test stand-in\n[ -n \"$KUBESIM_BIN\" ] || {{ echo 'kubectl: KUBESIM_BIN is not set' >&2; exit 127; }}\nexec \"${{KUBESIM_KUBECTL:-/usr/bin/kubectl}}\" \"$@\"\n"
        )
        .into_bytes(),
        (Flavor::Kubesim, _) => format!(
            "#!/bin/sh\n# {name} v{version}: test stand-in\n[ -n \"$KUBESIM_BIN\" ] || {{ echo '{name}: KUBESIM_BIN is not set' >&2; exit 127; }}\nKUBESIM_VERSION=v{version}\nexport KUBESIM_VERSION\nexec \"$KUBESIM_BIN/{name}\" \"$@\"\n"
        )
        .into_bytes(),
    }
}

/// A CNI for kubesim: its DaemonSet, tolerating every taint as Calico's does, is what makes
/// kubesim's nodes Ready.
const KUBESIM_NETWORK: &str = "apiVersion: v1
kind: ServiceAccount
metadata:
  name: calico-node
  namespace: kube-system
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: calico-node
  namespace: kube-system
spec:
  selector:
    matchLabels:
      k8s-app: calico-node
  template:
    metadata:
      labels:
        k8s-app: calico-node
    spec:
      hostNetwork: true
      serviceAccountName: calico-node
      tolerations:
        - operator: Exists
      containers:
        - name: calico-node
          image: docker.io/calico/node:v3.29.1
";

/// A dashboard for kubesim: its namespace, a Deployment (pods to drain) and a Service.
const KUBESIM_DASHBOARD: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: kubernetes-dashboard
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: kubernetes-dashboard
  namespace: kubernetes-dashboard
spec:
  replicas: 2
  selector:
    matchLabels:
      k8s-app: kubernetes-dashboard
  template:
    metadata:
      labels:
        k8s-app: kubernetes-dashboard
    spec:
      containers:
        - name: kubernetes-dashboard
          image: kubernetesui/dashboard:v2.7.0
---
apiVersion: v1
kind: Service
metadata:
  name: kubernetes-dashboard
  namespace: kubernetes-dashboard
spec:
  ports:
    - port: 443
      targetPort: 8443
  selector:
    k8s-app: kubernetes-dashboard
";

/// The upstream kubeadm drop-in (`/usr/bin`, which installation rewrites).
const KUBEADM_DROPIN: &str = "[Service]
Environment=\"KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf\"
Environment=\"KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml\"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
";

/// Writes a bundle tree for `arch` with Kubernetes `version` into `dir` ([`Flavor::Plain`]).
pub fn write_bundle(dir: &Path, arch: Arch, version: &str) {
    write_bundle_flavored(dir, arch, version, Flavor::Plain);
}

/// Writes a bundle tree of `flavor` for `arch` with Kubernetes `version` into `dir`.
pub fn write_bundle_flavored(dir: &Path, arch: Arch, version: &str, flavor: Flavor) {
    let a = arch.as_str();
    let cni = targz(&[
        ("./", b"", 0o755),
        ("./bridge", b"#!/bin/sh\necho bridge\n", 0o755),
        ("./loopback", b"#!/bin/sh\necho loopback\n", 0o755),
        ("./LICENSE", b"Apache-2.0\n", 0o644),
    ]);
    let crictl = targz(&[("crictl", b"#!/bin/sh\necho crictl\n", 0o755)]);
    let (archive, image, blobs) = oci_archive(PAUSE, arch);
    let binary = |name: &str| k8s_binary(flavor, name, version);
    let (network, dashboard, drop_in): (&[u8], &[u8], &[u8]) = match flavor {
        Flavor::Plain => (
            b"kind: List\n",
            b"kind: List\n",
            b"[Service]\nExecStart=\nExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS\n",
        ),
        Flavor::Kubesim => (
            KUBESIM_NETWORK.as_bytes(),
            KUBESIM_DASHBOARD.as_bytes(),
            KUBEADM_DROPIN.as_bytes(),
        ),
    };
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
            drop_in.to_vec(),
            0o644,
            FileKind::KubeadmDropIn,
        ),
        (
            "network.yaml".into(),
            network.to_vec(),
            0o644,
            FileKind::KubernetesManifest,
        ),
        (
            "dashboard.yaml".into(),
            dashboard.to_vec(),
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
        TestBundle::with_flavor(arch, version, Flavor::Plain)
    }

    /// A bundle whose Kubernetes binaries are the kubesim stand-ins ([`Flavor::Kubesim`]).
    pub fn kubesim(arch: Arch, version: &str) -> TestBundle {
        TestBundle::with_flavor(arch, version, Flavor::Kubesim)
    }

    fn with_flavor(arch: Arch, version: &str, flavor: Flavor) -> TestBundle {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("tree");
        write_bundle_flavored(&tree, arch, version, flavor);
        let iso = dir.path().join("bundle.iso");
        TestBundle {
            _dir: dir,
            tree,
            iso,
        }
    }

    /// Replaces the tree with the kubesim bundle of `version`, as attaching a new ISO does.
    pub fn replace_with_kubesim(&self, arch: Arch, version: &str) {
        std::fs::remove_dir_all(&self.tree).expect("remove the old bundle");
        write_bundle_flavored(&self.tree, arch, version, Flavor::Kubesim);
    }

    /// Builds the ISO with xorriso; `None` when xorriso is missing: the calling test is then
    /// skipped visibly (and fails under `CI=true`), see [`cks_fixtures::skip`]. A failing
    /// xorriso fails the test.
    #[track_caller]
    pub fn build_iso(&self) -> Option<&Path> {
        use cks_fixtures::skip::{Need, require};
        if !require("building a bundle ISO", &[Need::Tools(&["xorriso"])]) {
            return None;
        }
        let out = Command::new("xorriso")
            .args(["-no_rc", "-report_about", "SORRY", "-outdev"])
            .arg(&self.iso)
            .args(["-volid", "CDROM", "-map"])
            .arg(&self.tree)
            .args(["/", "-commit"])
            .output()
            .expect("run xorriso");
        assert!(
            out.status.success(),
            "xorriso failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(&self.iso)
    }
}
