//! The release spec: a TOML file saying what goes into a bundle ISO.
//!
//! The human-facing input; the machine record of what was built is `cks-manifest.json`
//! (`cks_proto::manifest`). See README.md ("Release spec") for the reference.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cks_proto::ids::{Arch, KubeVersion, Sha256Digest};
use serde::Deserialize;

/// Default upstream URL templates, as CloudStack's `create-kubernetes-binaries-iso.sh` uses them.
pub mod defaults {
    /// kubeadm, kubelet, kubectl.
    pub const KUBERNETES: &str = "https://dl.k8s.io/release/v{version}/bin/linux/{arch}/{name}";
    /// The published checksum of each Kubernetes binary.
    pub const KUBERNETES_CHECKSUM: &str = "{url}.sha256";
    /// containernetworking/plugins.
    pub const CNI_PLUGINS: &str = "https://github.com/containernetworking/plugins/releases/download/v{version}/cni-plugins-linux-{arch}-v{version}.tgz";
    /// Its checksum file (`<hex>  <file>`).
    pub const CNI_PLUGINS_CHECKSUM: &str = "{url}.sha256";
    /// cri-tools.
    pub const CRICTL: &str = "https://github.com/kubernetes-sigs/cri-tools/releases/download/v{version}/crictl-v{version}-linux-{arch}.tar.gz";
    /// Its checksum file.
    pub const CRICTL_CHECKSUM: &str = "{url}.sha256";
    /// etcd (for dedicated etcd nodes).
    pub const ETCD: &str = "https://github.com/etcd-io/etcd/releases/download/v{version}/etcd-v{version}-linux-{arch}.tar.gz";
    /// etcd publishes one `SHA256SUMS` per release.
    pub const ETCD_CHECKSUM: &str =
        "https://github.com/etcd-io/etcd/releases/download/v{version}/SHA256SUMS";
    /// The kubelet unit and kubeadm drop-in are generated from built-in templates by default.
    pub const BUILTIN: &str = "builtin";
}

/// A parsed and validated release spec.
#[derive(Debug, Clone)]
pub struct ReleaseSpec {
    /// ISO base name; the ISO is `<name>-<x86_64|aarch64>.iso`.
    pub name: String,
    /// Kubernetes version.
    pub kubernetes: KubeVersion,
    /// Target architecture.
    pub arch: Arch,
    /// containernetworking/plugins version.
    pub cni_plugins: KubeVersion,
    /// cri-tools version.
    pub crictl: KubeVersion,
    /// etcd version, when etcd binaries are wanted.
    pub etcd: Option<KubeVersion>,
    /// Name of the CNI (`calico`, `weave`, …) recorded in the manifest; guessed when absent.
    pub cni: Option<String>,
    /// Where each component comes from.
    pub sources: Sources,
    /// Pinned sha256 per bundle path (e.g. `k8s/kubeadm`), overriding published checksums.
    pub checksums: BTreeMap<String, Sha256Digest>,
    /// Kubernetes manifests to bundle.
    pub manifests: Vec<ManifestSpec>,
    /// Which images to bundle and where to pull them from.
    pub images: ImagesSpec,
}

/// URL templates (`{version}`, `{arch}`, `{name}`; checksum templates also `{url}`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sources {
    /// kubeadm/kubelet/kubectl; `{name}` is the binary.
    pub kubernetes: String,
    /// Checksum file of each Kubernetes binary.
    pub kubernetes_checksum: String,
    /// CNI plugins tarball.
    pub cni_plugins: String,
    /// Its checksum file.
    pub cni_plugins_checksum: String,
    /// crictl tarball.
    pub crictl: String,
    /// Its checksum file.
    pub crictl_checksum: String,
    /// etcd tarball.
    pub etcd: String,
    /// Its checksum file.
    pub etcd_checksum: String,
    /// `builtin` or a URL of a kubelet unit (`/usr/bin` is rewritten to `/opt/bin`).
    pub kubelet_service: String,
    /// `builtin` or a URL of the kubeadm drop-in (`/usr/bin` is rewritten to `/opt/bin`).
    pub kubeadm_conf: String,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            kubernetes: defaults::KUBERNETES.into(),
            kubernetes_checksum: defaults::KUBERNETES_CHECKSUM.into(),
            cni_plugins: defaults::CNI_PLUGINS.into(),
            cni_plugins_checksum: defaults::CNI_PLUGINS_CHECKSUM.into(),
            crictl: defaults::CRICTL.into(),
            crictl_checksum: defaults::CRICTL_CHECKSUM.into(),
            etcd: defaults::ETCD.into(),
            etcd_checksum: defaults::ETCD_CHECKSUM.into(),
            kubelet_service: defaults::BUILTIN.into(),
            kubeadm_conf: defaults::BUILTIN.into(),
        }
    }
}

/// A manifest to bundle at the ISO root.
#[derive(Debug, Clone)]
pub struct ManifestSpec {
    /// File name on the ISO, e.g. `network.yaml`.
    pub file: String,
    /// Where it comes from.
    pub origin: ManifestOrigin,
    /// Pinned sha256 of the original (before `imagePullPolicy` is rewritten).
    pub sha256: Option<Sha256Digest>,
    /// Whether its images are bundled (default true).
    pub bundle_images: bool,
}

/// Where a manifest comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestOrigin {
    /// Downloaded (http, https or file URL).
    Url(String),
    /// A local file (relative paths are relative to the spec file).
    Path(PathBuf),
}

/// The `[images]` table.
#[derive(Debug, Clone, Default)]
pub struct ImagesSpec {
    /// Bundle kubeadm's image set for this Kubernetes version (default true).
    pub kubeadm: bool,
    /// Override kubeadm's table: `pause`, `etcd`, `coredns` tags.
    pub kubeadm_tags: BTreeMap<String, String>,
    /// More images.
    pub extra: Vec<String>,
    /// Registry host → base URL to pull from instead (`http://127.0.0.1:5000`).
    pub mirrors: BTreeMap<String, String>,
    /// Registry host → credentials.
    pub auth: BTreeMap<String, RegistryCredentials>,
    /// How images are laid out on the ISO.
    pub layout: ImageLayout,
}

/// Credentials for one registry. The password is never in the spec itself.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredentials {
    /// User name.
    pub username: String,
    /// Name of the environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Path of a file holding the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

/// How images are stored under `docker/`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageLayout {
    /// One OCI archive `docker/images.tar` holding every image, each blob once (default).
    #[default]
    Shared,
    /// One archive per image, `docker/<name>:<tag>.tar`, as CloudStack's script does.
    PerImage,
}

/// Why a spec was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Unreadable.
    #[error("failed to read release spec {path:?}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML or unknown keys.
    #[error("release spec {path:?} is not valid")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value is wrong; every problem found is listed.
    #[error("release spec {path:?} has {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Each problem.
        problems: Vec<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: Option<String>,
    kubernetes: String,
    #[serde(default = "default_arch")]
    arch: String,
    cni_plugins: String,
    crictl: String,
    etcd: Option<String>,
    cni: Option<String>,
    #[serde(default)]
    sources: Sources,
    #[serde(default)]
    checksums: BTreeMap<String, String>,
    #[serde(default)]
    manifests: Vec<RawManifest>,
    #[serde(default)]
    images: RawImages,
}

fn default_arch() -> String {
    "amd64".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    file: String,
    url: Option<String>,
    path: Option<PathBuf>,
    sha256: Option<String>,
    #[serde(default = "yes")]
    images: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImages {
    #[serde(default = "yes")]
    kubeadm: bool,
    #[serde(default)]
    kubeadm_tags: BTreeMap<String, String>,
    #[serde(default)]
    extra: Vec<String>,
    #[serde(default)]
    mirrors: BTreeMap<String, String>,
    #[serde(default)]
    auth: BTreeMap<String, RegistryCredentials>,
    #[serde(default)]
    layout: ImageLayout,
}

impl Default for RawImages {
    fn default() -> Self {
        RawImages {
            kubeadm: true,
            kubeadm_tags: BTreeMap::new(),
            extra: Vec::new(),
            mirrors: BTreeMap::new(),
            auth: BTreeMap::new(),
            layout: ImageLayout::Shared,
        }
    }
}

impl ReleaseSpec {
    /// Reads and validates a spec file.
    ///
    /// # Errors
    /// [`SpecError`], listing every invalid value at once.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(|e| match e {
            SpecError::Parse { source, .. } => SpecError::Parse {
                path: path.to_path_buf(),
                source,
            },
            SpecError::Invalid { problems, .. } => SpecError::Invalid {
                path: path.to_path_buf(),
                problems,
            },
            other => other,
        })
    }

    /// Parses spec text; relative manifest paths are resolved against `base_dir`.
    ///
    /// # Errors
    /// [`SpecError::Parse`] or [`SpecError::Invalid`] (with an empty path).
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self, SpecError> {
        let raw: RawSpec = toml::from_str(text).map_err(|source| SpecError::Parse {
            path: PathBuf::new(),
            source: Box::new(source),
        })?;
        let mut problems = Vec::new();
        let mut version = |field: &str, value: &str| match value.parse::<KubeVersion>() {
            Ok(v) => Some(v),
            Err(e) => {
                problems.push(format!("{field}: {e}"));
                None
            }
        };
        let kubernetes = version("kubernetes", &raw.kubernetes);
        let cni_plugins = version("cni_plugins", &raw.cni_plugins);
        let crictl = version("crictl", &raw.crictl);
        let etcd = raw.etcd.as_deref().and_then(|v| version("etcd", v));
        let arch = match raw.arch.parse::<Arch>() {
            Ok(a) => Some(a),
            Err(e) => {
                problems.push(format!("arch: {e}"));
                None
            }
        };
        let name = raw
            .name
            .unwrap_or_else(|| format!("setup-v{}", raw.kubernetes.trim_start_matches('v')));
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            problems.push(format!(
                "name {name:?}: use letters, digits, '.', '-' and '_' only (it becomes the ISO file name)"
            ));
        }

        let mut checksums = BTreeMap::new();
        for (path, value) in raw.checksums {
            match value.parse::<Sha256Digest>() {
                Ok(d) => {
                    checksums.insert(path, d);
                }
                Err(e) => problems.push(format!("checksums.{path:?}: {e}")),
            }
        }

        check_template(&mut problems, "sources.kubernetes", &raw.sources.kubernetes);
        check_template(
            &mut problems,
            "sources.cni_plugins",
            &raw.sources.cni_plugins,
        );
        check_template(&mut problems, "sources.crictl", &raw.sources.crictl);
        check_template(&mut problems, "sources.etcd", &raw.sources.etcd);
        for (field, value) in [
            ("sources.kubelet_service", &raw.sources.kubelet_service),
            ("sources.kubeadm_conf", &raw.sources.kubeadm_conf),
        ] {
            if value != defaults::BUILTIN {
                check_template(&mut problems, field, value);
            }
        }

        let mut manifests = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for m in raw.manifests {
            let ok_name = !m.file.is_empty()
                && !m.file.contains('/')
                && m.file != cks_proto::manifest::MANIFEST_PATH
                && (m.file.ends_with(".yaml") || m.file.ends_with(".yml"));
            if !ok_name {
                problems.push(format!(
                    "manifests: file {:?} must be a plain .yaml/.yml file name (it is placed at the ISO root)",
                    m.file
                ));
            }
            if !seen.insert(m.file.clone()) {
                problems.push(format!("manifests: file {:?} is listed twice", m.file));
            }
            let origin = match (m.url, m.path) {
                (Some(url), None) => {
                    check_template(&mut problems, &format!("manifests.{}.url", m.file), &url);
                    ManifestOrigin::Url(url)
                }
                (None, Some(path)) => ManifestOrigin::Path(if path.is_absolute() {
                    path
                } else {
                    base_dir.join(path)
                }),
                _ => {
                    problems.push(format!(
                        "manifests: {:?} needs exactly one of url = \"…\" or path = \"…\"",
                        m.file
                    ));
                    continue;
                }
            };
            let sha256 = match m.sha256.map(|s| s.parse::<Sha256Digest>()) {
                Some(Ok(d)) => Some(d),
                Some(Err(e)) => {
                    problems.push(format!("manifests.{}.sha256: {e}", m.file));
                    None
                }
                None => None,
            };
            manifests.push(ManifestSpec {
                file: m.file,
                origin,
                sha256,
                bundle_images: m.images,
            });
        }
        if !manifests.iter().any(|m| m.file == "network.yaml") {
            problems.push(
                "manifests: no entry with file = \"network.yaml\": CKS nodes apply it as the cluster's CNI"
                    .into(),
            );
        }

        for (host, base) in &raw.images.mirrors {
            if !(base.starts_with("http://") || base.starts_with("https://")) {
                problems.push(format!(
                    "images.mirrors.{host:?}: {base:?} must start with http:// or https://"
                ));
            }
        }
        for (host, creds) in &raw.images.auth {
            if creds.password_env.is_some() == creds.password_file.is_some() {
                problems.push(format!(
                    "images.auth.{host:?}: give exactly one of password_env or password_file (passwords never go in the spec)"
                ));
            }
        }
        for key in raw.images.kubeadm_tags.keys() {
            if !matches!(key.as_str(), "pause" | "etcd" | "coredns") {
                problems.push(format!(
                    "images.kubeadm_tags: unknown image {key:?} (pause, etcd or coredns)"
                ));
            }
        }
        for image in &raw.images.extra {
            if let Err(e) = crate::reference::ImageRef::parse(image) {
                problems.push(format!("images.extra: {e}"));
            }
        }

        let (Some(kubernetes), Some(arch), Some(cni_plugins), Some(crictl), true) =
            (kubernetes, arch, cni_plugins, crictl, problems.is_empty())
        else {
            return Err(SpecError::Invalid {
                path: PathBuf::new(),
                problems,
            });
        };
        if raw.images.kubeadm
            && let Err(e) = crate::kubeadm::images_for(&kubernetes, &raw.images.kubeadm_tags)
        {
            return Err(SpecError::Invalid {
                path: PathBuf::new(),
                problems: vec![e.to_string()],
            });
        }
        Ok(ReleaseSpec {
            name,
            kubernetes,
            arch,
            cni_plugins,
            crictl,
            etcd,
            cni: raw.cni,
            sources: raw.sources,
            checksums,
            manifests,
            images: ImagesSpec {
                kubeadm: raw.images.kubeadm,
                kubeadm_tags: raw.images.kubeadm_tags,
                extra: raw.images.extra,
                mirrors: raw.images.mirrors,
                auth: raw.images.auth,
                layout: raw.images.layout,
            },
        })
    }

    /// The ISO file name, `<name>-<x86_64|aarch64>.iso`.
    pub fn iso_file_name(&self) -> String {
        format!("{}-{}.iso", self.name, self.arch.kernel_name())
    }
}

/// The positional arguments of CloudStack's `create-kubernetes-binaries-iso.sh`, in its order.
#[derive(Debug, Clone, Default)]
pub struct CksScriptArgs {
    /// Kubernetes version.
    pub kubernetes: String,
    /// CNI plugins version.
    pub cni_plugins: String,
    /// crictl version.
    pub crictl: String,
    /// URL of the CNI manifest (becomes `network.yaml`).
    pub network_url: String,
    /// URL of the dashboard manifest (becomes `dashboard.yaml`).
    pub dashboard_url: String,
    /// ISO base name.
    pub name: Option<String>,
    /// Architecture (`x86_64`, `amd64`, `aarch64`, `arm64`).
    pub arch: Option<String>,
    /// etcd version.
    pub etcd: Option<String>,
}

impl ReleaseSpec {
    /// The spec the script's arguments describe: upstream sources, kubeadm's image set and the
    /// images of the two manifests.
    ///
    /// # Errors
    /// [`SpecError::Invalid`] listing every bad argument.
    pub fn from_cks_script(args: &CksScriptArgs) -> Result<Self, SpecError> {
        let mut table = toml::Table::new();
        let mut set = |key: &str, value: &str| {
            table.insert(key.to_string(), toml::Value::String(value.to_string()));
        };
        set("kubernetes", &args.kubernetes);
        set("cni_plugins", &args.cni_plugins);
        set("crictl", &args.crictl);
        set("arch", args.arch.as_deref().unwrap_or("amd64"));
        if let Some(name) = &args.name {
            set("name", name);
        }
        if let Some(etcd) = &args.etcd {
            set("etcd", etcd);
        }
        let manifest = |file: &str, url: &str| {
            let mut m = toml::Table::new();
            m.insert("file".into(), toml::Value::String(file.into()));
            m.insert("url".into(), toml::Value::String(url.into()));
            toml::Value::Table(m)
        };
        table.insert(
            "manifests".into(),
            toml::Value::Array(vec![
                manifest("network.yaml", &args.network_url),
                manifest("dashboard.yaml", &args.dashboard_url),
            ]),
        );
        Self::parse(&table.to_string(), Path::new("."))
    }
}

fn check_template(problems: &mut Vec<String>, field: &str, template: &str) {
    let scheme_ok = ["http://", "https://", "file://"]
        .iter()
        .any(|s| template.starts_with(s));
    if !scheme_ok {
        problems.push(format!(
            "{field}: {template:?} must be an http://, https:// or file:// URL"
        ));
    }
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            problems.push(format!("{field}: unclosed '{{' in {template:?}"));
            return;
        };
        let key = &rest[start + 1..start + len];
        if !matches!(key, "version" | "arch" | "name" | "url") {
            problems.push(format!(
                "{field}: unknown placeholder {{{key}}} (use {{version}}, {{arch}}, {{name}}, or {{url}} in checksum templates)"
            ));
        }
        rest = &rest[start + len + 1..];
    }
}

/// Fills a URL template.
pub fn expand(template: &str, version: &KubeVersion, arch: Arch, name: &str, url: &str) -> String {
    template
        .replace("{version}", &version.to_string())
        .replace("{arch}", arch.as_str())
        .replace("{name}", name)
        .replace("{url}", url)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
kubernetes = "1.33.1"
cni_plugins = "1.6.2"
crictl = "1.33.0"
[[manifests]]
file = "network.yaml"
url = "https://example.invalid/calico.yaml"
"#;

    #[test]
    fn minimal_spec_gets_cks_defaults() {
        let spec = ReleaseSpec::parse(MINIMAL, Path::new("/specs")).unwrap();
        assert_eq!(spec.name, "setup-v1.33.1");
        assert_eq!(spec.arch, Arch::Amd64);
        assert_eq!(spec.iso_file_name(), "setup-v1.33.1-x86_64.iso");
        assert!(spec.images.kubeadm);
        assert_eq!(spec.images.layout, ImageLayout::Shared);
        assert_eq!(spec.sources.kubelet_service, "builtin");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
name = "bad name"
kubernetes = "1.33"
arch = "ppc64le"
cni_plugins = "1.6.2"
crictl = "1.33.0"
[sources]
crictl = "ftp://x/{versoin}"
[[manifests]]
file = "dash/board.yaml"
[images.auth."r.example"]
username = "u"
"#;
        let err = ReleaseSpec::parse(text, Path::new(".")).unwrap_err();
        let SpecError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err:?}")
        };
        let all = problems.join("\n");
        for needle in [
            "name \"bad name\"",
            "kubernetes: invalid version",
            "arch: unsupported architecture",
            "sources.crictl",
            "{versoin}",
            "dash/board.yaml",
            "exactly one of url",
            "network.yaml",
            "password_env or password_file",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = format!("{MINIMAL}\nkubernetse = \"1\"\n");
        assert!(matches!(
            ReleaseSpec::parse(&text, Path::new(".")),
            Err(SpecError::Parse { .. })
        ));
    }

    #[test]
    fn kernel_arch_names_and_relative_paths() {
        let text = r#"
kubernetes = "v1.31.4"
arch = "aarch64"
cni_plugins = "1.6.2"
crictl = "1.31.1"
[[manifests]]
file = "network.yaml"
path = "manifests/calico.yaml"
"#;
        let spec = ReleaseSpec::parse(text, Path::new("/specs")).unwrap();
        assert_eq!(spec.arch, Arch::Arm64);
        assert_eq!(spec.iso_file_name(), "setup-v1.31.4-aarch64.iso");
        assert_eq!(
            spec.manifests[0].origin,
            ManifestOrigin::Path(PathBuf::from("/specs/manifests/calico.yaml"))
        );
    }

    #[test]
    fn cks_script_arguments_become_a_spec() {
        let args = CksScriptArgs {
            kubernetes: "1.33.1".into(),
            cni_plugins: "1.6.2".into(),
            crictl: "1.33.0".into(),
            network_url: "https://example.invalid/calico \"v3\".yaml".into(),
            dashboard_url: "https://example.invalid/dashboard.yaml".into(),
            arch: Some("aarch64".into()),
            etcd: Some("3.5.21".into()),
            ..CksScriptArgs::default()
        };
        let spec = ReleaseSpec::from_cks_script(&args).unwrap();
        assert_eq!(spec.iso_file_name(), "setup-v1.33.1-aarch64.iso");
        assert_eq!(spec.etcd, Some("3.5.21".parse().unwrap()));
        assert_eq!(
            spec.manifests[0].origin,
            ManifestOrigin::Url("https://example.invalid/calico \"v3\".yaml".into())
        );
        assert_eq!(spec.manifests[1].file, "dashboard.yaml");
        assert!(spec.images.kubeadm);

        let bad = CksScriptArgs {
            kubernetes: "1.33".into(),
            arch: Some("s390x".into()),
            ..args
        };
        let SpecError::Invalid { problems, .. } = ReleaseSpec::from_cks_script(&bad).unwrap_err()
        else {
            panic!("expected Invalid")
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn templates_expand() {
        let v: KubeVersion = "1.33.1".parse().unwrap();
        assert_eq!(
            expand(defaults::KUBERNETES, &v, Arch::Arm64, "kubeadm", ""),
            "https://dl.k8s.io/release/v1.33.1/bin/linux/arm64/kubeadm"
        );
        assert_eq!(
            expand("{url}.sha256", &v, Arch::Amd64, "", "http://a/b"),
            "http://a/b.sha256"
        );
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn every_shipped_example_spec_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let spec =
                    ReleaseSpec::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(spec.images.kubeadm);
                seen += 1;
            }
        }
        assert!(seen >= 4, "one example per supported minor");
    }
}
