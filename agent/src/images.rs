//! Importing the bundle's images into containerd, and pointing containerd at the bundled pause
//! image.
//!
//! Each image archive under `docker/` (an OCI layout tar whose `index.json` names its images with
//! `io.containerd.image.name`) is streamed to `ctr -a SOCK -n k8s.io images import -`. An archive
//! is skipped when every image it holds is already in containerd under its reference with the
//! manifest digest the bundle lists, so a rerun or an upgrade bundle sharing images imports only
//! what is new (and containerd's content store itself keeps blobs it already has once).
//!
//! The side effects go through [`ImageStore`], implemented by [`CtrImageStore`] and, in tests, by
//! a recording fake.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cks_proto::manifest::{BundleManifest, FileKind, ImageEntry};
use cks_proto::verify::{BundleSource, HashingReader};
use tracing::info;

/// The containerd namespace Kubernetes' CRI uses.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// containerd's CRI plugin section (config version 2) that holds `sandbox_image`.
const CRI_SECTION: &str = "[plugins.\"io.containerd.grpc.v1.cri\"]";

/// An image as the store lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    /// Reference, e.g. `registry.k8s.io/pause:3.10`.
    pub reference: String,
    /// Target digest, `sha256:<hex>`.
    pub digest: String,
}

/// A containerd operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageStoreError {
    /// The client could not be run.
    #[error("failed to run {program:?} (is containerd's ctr installed?)")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The client failed.
    #[error("`ctr {operation}` failed ({status}): {stderr}")]
    Failed {
        /// What was asked.
        operation: String,
        /// Its exit status.
        status: String,
        /// Its error output, trimmed.
        stderr: String,
    },
    /// Streaming the archive to the client failed.
    #[error("failed to stream {archive} to ctr")]
    Stream {
        /// The archive.
        archive: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// containerd's image store, as the agent needs it.
///
/// It exists so that import decisions (what to skip, what to import, in which order) are tested
/// without a containerd, and so that a containerd-client (gRPC) implementation can replace `ctr`
/// without touching them.
pub trait ImageStore {
    /// Images in the namespace.
    ///
    /// # Errors
    /// [`ImageStoreError`] when containerd cannot be asked.
    fn list_images(&self) -> Result<Vec<StoredImage>, ImageStoreError>;

    /// Imports one OCI archive, read from `archive`, named `name` in messages.
    ///
    /// # Errors
    /// [`ImageStoreError`] when the import fails.
    fn import(&self, name: &str, archive: &mut dyn Read) -> Result<(), ImageStoreError>;
}

/// [`ImageStore`] through the `ctr` command.
#[derive(Debug, Clone)]
pub struct CtrImageStore {
    /// The `ctr` program.
    pub ctr: PathBuf,
    /// containerd's socket.
    pub socket: PathBuf,
    /// The namespace ([`K8S_NAMESPACE`]).
    pub namespace: String,
}

impl CtrImageStore {
    /// A store in namespace `k8s.io`.
    pub fn new(ctr: PathBuf, socket: PathBuf) -> Self {
        CtrImageStore {
            ctr,
            socket,
            namespace: K8S_NAMESPACE.to_string(),
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.ctr);
        command
            .arg("-a")
            .arg(&self.socket)
            .arg("-n")
            .arg(&self.namespace);
        command
    }

    fn spawn_error(&self, source: io::Error) -> ImageStoreError {
        ImageStoreError::Spawn {
            program: self.ctr.clone(),
            source,
        }
    }
}

impl ImageStore for CtrImageStore {
    fn list_images(&self) -> Result<Vec<StoredImage>, ImageStoreError> {
        let output = self
            .command()
            .args(["images", "ls"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| self.spawn_error(e))?;
        if !output.status.success() {
            return Err(ImageStoreError::Failed {
                operation: "images ls".to_string(),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(parse_images_ls(&String::from_utf8_lossy(&output.stdout)))
    }

    fn import(&self, name: &str, archive: &mut dyn Read) -> Result<(), ImageStoreError> {
        let mut child = self
            .command()
            .args(["images", "import", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error(e))?;
        let mut stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        // Drain both outputs while feeding stdin, so that neither side can block the other.
        let (streamed, out, err) = std::thread::scope(|scope| {
            let out = scope.spawn(|| drain(stdout));
            let err = scope.spawn(|| drain(stderr));
            let streamed = match stdin.as_mut() {
                Some(stdin) => io::copy(archive, stdin).map(drop),
                None => Ok(()),
            };
            drop(stdin.take()); // EOF for ctr.
            (
                streamed,
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default(),
            )
        });
        let status = child.wait().map_err(|e| self.spawn_error(e))?;
        if !status.success() {
            return Err(ImageStoreError::Failed {
                operation: format!("images import {name}"),
                status: status.to_string(),
                stderr: err.trim().to_string(),
            });
        }
        streamed.map_err(|source| ImageStoreError::Stream {
            archive: name.to_string(),
            source,
        })?;
        tracing::debug!(archive = name, output = %out.trim(), "ctr import done");
        Ok(())
    }
}

fn drain(pipe: Option<impl Read>) -> String {
    let mut text = String::new();
    if let Some(mut pipe) = pipe {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    text
}

/// Parses `ctr images ls`: a header line, then `REF TYPE DIGEST SIZE PLATFORMS LABELS` columns
/// (the size column has a space, so only the first three are taken).
fn parse_images_ls(output: &str) -> Vec<StoredImage> {
    output
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut columns = line.split_whitespace();
            let reference = columns.next()?;
            let _media_type = columns.next()?;
            let digest = columns.next()?;
            digest.starts_with("sha256:").then(|| StoredImage {
                reference: reference.to_string(),
                digest: digest.to_string(),
            })
        })
        .collect()
}

/// Importing the bundle's images failed.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    /// containerd could not be asked or refused.
    #[error("image store operation failed")]
    Store(#[from] ImageStoreError),
    /// An archive is not what verification saw.
    #[error("image archive {archive} changed after verification")]
    ContentChanged {
        /// The archive.
        archive: String,
    },
    /// An archive could not be read from the bundle.
    #[error("failed to read {archive} from the bundle")]
    Read {
        /// The archive.
        archive: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// What [`import_images`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Archives imported.
    pub imported: Vec<String>,
    /// Archives whose images were all present already.
    pub skipped: Vec<String>,
}

/// Imports every image archive of a verified bundle that containerd does not fully have.
///
/// # Errors
/// [`ImagesError`] on the first archive that fails; archives before it stay imported (a rerun
/// skips them).
pub fn import_images(
    bundle: &dyn BundleSource,
    manifest: &BundleManifest,
    store: &dyn ImageStore,
) -> Result<ImportReport, ImagesError> {
    let present: BTreeMap<String, String> = store
        .list_images()?
        .into_iter()
        .map(|i| (i.reference, i.digest))
        .collect();
    let mut report = ImportReport::default();
    for archive in manifest
        .files
        .iter()
        .filter(|f| f.kind == FileKind::ImageArchive)
    {
        let images: Vec<&ImageEntry> = manifest
            .images
            .iter()
            .filter(|i| i.archive == archive.path)
            .collect();
        let all_present = images
            .iter()
            .all(|image| present.get(&image.reference) == Some(&image.manifest_digest.oci()));
        if all_present && !images.is_empty() {
            info!(archive = %archive.path, images = images.len(), "images already in containerd; skipping");
            report.skipped.push(archive.path.clone());
            continue;
        }
        info!(archive = %archive.path, images = images.len(), bytes = archive.size, "importing images");
        let reader = bundle
            .open(&archive.path)
            .map_err(|source| ImagesError::Read {
                archive: archive.path.clone(),
                source,
            })?;
        let mut checking = HashingReader::new(reader);
        store.import(&archive.path, &mut checking)?;
        let (size, digest) = checking.finish();
        if size != archive.size || digest != archive.sha256 {
            return Err(ImagesError::ContentChanged {
                archive: archive.path.clone(),
            });
        }
        report.imported.push(archive.path.clone());
    }
    Ok(report)
}

/// The bundle's pause image (repository name `pause`; the highest tag if there are several).
pub fn pause_image(manifest: &BundleManifest) -> Option<&ImageEntry> {
    manifest
        .images
        .iter()
        .filter(|i| repository_name(&i.reference) == "pause")
        .max_by_key(|i| tag_numbers(&i.reference))
}

fn repository_name(reference: &str) -> &str {
    let without_digest = reference.split('@').next().unwrap_or(reference);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

fn tag_numbers(reference: &str) -> Vec<u64> {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    let tag = last.split_once(':').map_or("", |(_, t)| t);
    tag.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// Setting the sandbox image failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to set sandbox_image in {path:?}")]
pub struct SandboxImageError {
    /// containerd's config file.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: io::Error,
}

/// Sets `sandbox_image = "<image>"` in containerd's config (version 2 layout), as CKS's
/// `setup-kube-system` does with `sed`: an existing `sandbox_image` line is replaced, otherwise
/// the line is added to the CRI plugin section (created if missing, the file too). The file is
/// replaced atomically. Returns whether it changed; containerd must be restarted to use it.
///
/// # Errors
/// [`SandboxImageError`] when the file cannot be read or written.
pub fn set_sandbox_image(config_path: &Path, image: &str) -> Result<bool, SandboxImageError> {
    let error = |source| SandboxImageError {
        path: config_path.to_path_buf(),
        source,
    };
    let current = match std::fs::read_to_string(config_path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(error(e)),
    };
    let updated = patch_sandbox_image(current.as_deref(), image);
    if current.as_deref() == Some(updated.as_str()) {
        return Ok(false);
    }
    if let Some(dir) = config_path.parent() {
        std::fs::create_dir_all(dir).map_err(error)?;
    }
    let mode = std::fs::metadata(config_path).map_or(0o644, |m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o7777
    });
    crate::journal::write_atomic(config_path, updated.as_bytes(), mode).map_err(error)?;
    info!(config = %config_path.display(), image, "containerd sandbox image set (restart containerd to apply)");
    Ok(true)
}

fn patch_sandbox_image(current: Option<&str>, image: &str) -> String {
    let line = format!("sandbox_image = \"{image}\"");
    let Some(text) = current else {
        return format!("version = 2\n\n{CRI_SECTION}\n  {line}\n");
    };
    let mut out = String::with_capacity(text.len() + line.len() + 8);
    let mut replaced = false;
    for l in text.lines() {
        let trimmed = l.trim_start();
        if !replaced
            && trimmed.starts_with("sandbox_image")
            && trimmed["sandbox_image".len()..]
                .trim_start()
                .starts_with('=')
        {
            let indent = &l[..l.len() - trimmed.len()];
            out.push_str(indent);
            out.push_str(&line);
            replaced = true;
        } else {
            out.push_str(l);
        }
        out.push('\n');
    }
    if replaced {
        return out;
    }
    if let Some(pos) = out.find(&format!("{CRI_SECTION}\n")) {
        let insert_at = pos + CRI_SECTION.len() + 1;
        out.insert_str(insert_at, &format!("  {line}\n"));
        return out;
    }
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
    out.push_str(&format!("{CRI_SECTION}\n  {line}\n"));
    out
}

/// Where containerd looks for per-registry `hosts.toml` files (containerd's `config_path`).
pub const REGISTRY_CONFIG_DIR: &str = "certs.d";
const REGISTRY_SECTION: &str = "[plugins.\"io.containerd.grpc.v1.cri\".registry]";

/// Points containerd at a private registry: `<config dir>/certs.d/<host>/hosts.toml` (mode
/// 0600, with the credentials as a basic `Authorization` header when given) and `config_path`
/// in containerd's config. Restart containerd to apply.
///
/// # Errors
/// [`SandboxImageError`] naming the file that could not be written, or an invalid URL.
pub fn configure_registry(
    containerd_config: &Path,
    url: &str,
    username: &str,
    password: &str,
) -> Result<(), SandboxImageError> {
    use base64::Engine as _;
    let invalid = |what: &str| SandboxImageError {
        path: containerd_config.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, what.to_string()),
    };
    let host = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url)
        .trim_end_matches('/');
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !host_ok {
        return Err(invalid("registry URL must be [http[s]://]host[:port]"));
    }
    let scheme = if url.starts_with("http://") {
        "http"
    } else {
        "https"
    };
    let dir = containerd_config
        .parent()
        .unwrap_or(Path::new("/"))
        .join(REGISTRY_CONFIG_DIR);
    let mut hosts = format!(
        "server = \"{scheme}://{host}\"\n\n[host.\"{scheme}://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    );
    if !username.is_empty() {
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        hosts.push_str(&format!(
            "  [host.\"{scheme}://{host}\".header]\n    Authorization = [\"Basic {basic}\"]\n"
        ));
    }
    let host_dir = dir.join(host);
    let error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SandboxImageError { path, source }
    };
    std::fs::create_dir_all(&host_dir).map_err(error(&host_dir))?;
    let hosts_file = host_dir.join("hosts.toml");
    crate::journal::write_atomic(&hosts_file, hosts.as_bytes(), 0o600)
        .map_err(error(&hosts_file))?;

    let current = match std::fs::read_to_string(containerd_config) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => "version = 2\n".to_string(),
        Err(e) => return Err(error(containerd_config)(e)),
    };
    let line = format!("config_path = \"{}\"", dir.display());
    if !current.lines().any(|l| l.trim() == line) {
        let mut updated: String = current
            .lines()
            .filter(|l| !l.trim_start().starts_with("config_path"))
            .map(|l| format!("{l}\n"))
            .collect();
        match updated.find(&format!("{REGISTRY_SECTION}\n")) {
            Some(pos) => {
                updated.insert_str(pos + REGISTRY_SECTION.len() + 1, &format!("  {line}\n"))
            }
            None => updated.push_str(&format!("\n{REGISTRY_SECTION}\n  {line}\n")),
        }
        crate::journal::write_atomic(containerd_config, updated.as_bytes(), 0o644)
            .map_err(error(containerd_config))?;
    }
    info!(
        registry = host,
        "private registry configured for containerd (restart containerd to apply)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use cks_proto::ids::{Arch, KubeVersion, Sha256Digest};
    use cks_proto::manifest::{FileEntry, Platform, SCHEMA_VERSION};
    use cks_proto::verify::DirBundle;

    use super::*;

    /// Records calls; holds a list of images; can be told to fail imports.
    #[derive(Default)]
    struct RecordingStore {
        images: Vec<StoredImage>,
        imports: RefCell<Vec<(String, usize)>>,
        fail_import: bool,
    }

    impl ImageStore for RecordingStore {
        fn list_images(&self) -> Result<Vec<StoredImage>, ImageStoreError> {
            Ok(self.images.clone())
        }

        fn import(&self, name: &str, archive: &mut dyn Read) -> Result<(), ImageStoreError> {
            let mut bytes = Vec::new();
            archive.read_to_end(&mut bytes).expect("read");
            self.imports
                .borrow_mut()
                .push((name.to_string(), bytes.len()));
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

    fn digest(n: u8) -> Sha256Digest {
        Sha256Digest::of(&[n])
    }

    /// A bundle dir with two archives (contents are not OCI: import decisions only).
    fn bundle() -> (tempfile::TempDir, BundleManifest) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("docker")).expect("mkdir");
        let mut files = Vec::new();
        for (name, content) in [
            ("docker/a.tar", b"AAAA".as_slice()),
            ("docker/b.tar", b"BB"),
        ] {
            std::fs::write(dir.path().join(name), content).expect("write");
            files.push(FileEntry {
                path: name.to_string(),
                size: content.len() as u64,
                sha256: Sha256Digest::of(content),
                mode: 0o644,
                kind: FileKind::ImageArchive,
                source: "generated".into(),
            });
        }
        let image = |reference: &str, archive: &str, d: u8| ImageEntry {
            reference: reference.to_string(),
            archive: archive.to_string(),
            manifest_digest: digest(d),
            media_type: cks_proto::oci::MEDIA_TYPE_OCI_MANIFEST.into(),
            platform: Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: None,
            },
            blobs: vec![],
        };
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
            images: vec![
                image("registry.k8s.io/pause:3.9", "docker/a.tar", 1),
                image("registry.k8s.io/pause:3.10", "docker/a.tar", 2),
                image("registry.k8s.io/coredns/coredns:v1.12.0", "docker/b.tar", 3),
            ],
            blobs: vec![],
        };
        (dir, manifest)
    }

    #[test]
    fn failed_import_is_reported_with_ctr_stderr() {
        let (dir, manifest) = bundle();
        let store = RecordingStore {
            fail_import: true,
            ..RecordingStore::default()
        };
        let err = import_images(&DirBundle::new(dir.path()), &manifest, &store).expect_err("fails");
        let chain = format!("{}", crate::bundle::mount::ErrorChain(&err));
        assert!(chain.contains("boom"), "{chain}");
        assert_eq!(
            store.imports.borrow().len(),
            1,
            "stops at the first failure"
        );
    }

    #[test]
    fn archives_whose_images_are_present_with_the_right_digest_are_skipped() {
        let (dir, manifest) = bundle();
        let store = RecordingStore {
            images: vec![
                StoredImage {
                    reference: "registry.k8s.io/pause:3.9".into(),
                    digest: digest(1).oci(),
                },
                StoredImage {
                    reference: "registry.k8s.io/pause:3.10".into(),
                    digest: digest(2).oci(),
                },
                // Same name, other digest: must be imported again.
                StoredImage {
                    reference: "registry.k8s.io/coredns/coredns:v1.12.0".into(),
                    digest: digest(9).oci(),
                },
            ],
            ..RecordingStore::default()
        };
        let report =
            import_images(&DirBundle::new(dir.path()), &manifest, &store).expect("imports");
        assert_eq!(report.skipped, vec!["docker/a.tar"]);
        assert_eq!(report.imported, vec!["docker/b.tar"]);
        assert_eq!(
            *store.imports.borrow(),
            vec![("docker/b.tar".to_string(), 2)]
        );
    }

    #[test]
    fn changed_archive_is_detected_while_importing() {
        let (dir, manifest) = bundle();
        std::fs::write(dir.path().join("docker/a.tar"), b"AAAX").expect("tamper");
        let store = RecordingStore::default();
        let err =
            import_images(&DirBundle::new(dir.path()), &manifest, &store).expect_err("changed");
        assert!(matches!(err, ImagesError::ContentChanged { .. }), "{err:?}");
    }

    #[test]
    fn pause_image_is_the_highest_pause_tag() {
        let (_dir, manifest) = bundle();
        assert_eq!(
            pause_image(&manifest).map(|i| i.reference.as_str()),
            Some("registry.k8s.io/pause:3.10")
        );
        assert_eq!(repository_name("docker.io/library/nginx:1.27"), "nginx");
        assert_eq!(repository_name("localhost:5000/pause:3.10"), "pause");
        assert_eq!(tag_numbers("localhost:5000/pause:3.10"), vec![3, 10]);
    }

    #[test]
    fn images_ls_output_is_parsed() {
        let output = "REF                          TYPE                                       DIGEST                                                                  SIZE    PLATFORMS   LABELS\n\
            example.local/tiny:v1        application/vnd.oci.image.manifest.v1+json sha256:1111111111111111111111111111111111111111111111111111111111111111 1.0 MiB linux/amd64 io.cri-containerd.image=managed\n";
        assert_eq!(
            parse_images_ls(output),
            vec![StoredImage {
                reference: "example.local/tiny:v1".into(),
                digest: format!("sha256:{}", "1".repeat(64)),
            }]
        );
    }

    #[test]
    fn sandbox_image_line_is_replaced_inserted_or_created() {
        let image = "registry.k8s.io/pause:3.10";
        assert_eq!(
            patch_sandbox_image(None, image),
            "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"registry.k8s.io/pause:3.10\"\n"
        );
        let default_config = "version = 2\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    device_ownership_from_security_context = false\n    sandbox_image = \"registry.k8s.io/pause:3.6\"\n";
        assert_eq!(
            patch_sandbox_image(Some(default_config), image),
            default_config.replace("pause:3.6", "pause:3.10")
        );
        let without =
            "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  enable_selinux = false\n";
        assert_eq!(
            patch_sandbox_image(Some(without), image),
            "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"registry.k8s.io/pause:3.10\"\n  enable_selinux = false\n"
        );
        let other = "version = 2\n[grpc]\n  address = \"/x.sock\"\n";
        assert_eq!(
            patch_sandbox_image(Some(other), image),
            format!(
                "{other}\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{image}\"\n"
            )
        );
    }

    #[test]
    fn sandbox_image_patch_is_idempotent_and_atomic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("etc/containerd/config.toml");
        assert!(set_sandbox_image(&path, "registry.k8s.io/pause:3.10").expect("set"));
        let first = std::fs::read_to_string(&path).expect("read");
        assert!(!set_sandbox_image(&path, "registry.k8s.io/pause:3.10").expect("again"));
        assert_eq!(std::fs::read_to_string(&path).expect("read"), first);
        assert!(toml::from_str::<toml::Table>(&first).is_ok(), "valid TOML");
    }

    #[test]
    fn private_registry_gets_a_hosts_file_with_credentials_and_a_config_path() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "version = 2\n").unwrap();
        configure_registry(&config, "https://registry.example:5000", "alice", "s3cret").unwrap();
        let hosts = dir.path().join("certs.d/registry.example:5000/hosts.toml");
        let text = std::fs::read_to_string(&hosts).unwrap();
        assert!(text.contains("server = \"https://registry.example:5000\""));
        assert!(text.contains("Authorization = [\"Basic YWxpY2U6czNjcmV0\"]"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&hosts).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let main = std::fs::read_to_string(&config).unwrap();
        assert_eq!(main.matches("config_path = ").count(), 1);
        // Idempotent.
        configure_registry(&config, "https://registry.example:5000", "alice", "s3cret").unwrap();
        assert_eq!(std::fs::read_to_string(&config).unwrap(), main);
        assert!(configure_registry(&config, "bad host/../x", "", "").is_err());
    }
}
