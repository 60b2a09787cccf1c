//! Importing the bundle's images into containerd, and pointing containerd at the bundled pause
//! image.
//!
//! # What is imported
//!
//! The import does work in proportion to what is new on the node ([`plan_import`], no I/O):
//! * an image is imported when containerd has no image of that reference, has it pointing at
//!   another manifest digest, or lacks one of its blobs (an earlier import that failed half-way);
//!   every other image is left as it is;
//! * for the images imported, the agent sends their manifests and configs and only the layers
//!   containerd's content store (namespace `k8s.io`) lacks.
//!
//! [`prepare_import`] asks containerd ([`ImageStore::list_images`],
//! [`ImageStore::content_digests`]), plans, then reads from the bundle's image archives just the
//! blobs to send, hashing each against its digest
//! ([`cks_proto::verify::verify_image_blobs`]) and seeking past the rest. It writes nothing, so
//! the agent runs it before it changes anything: a corrupt blob that would be imported refuses
//! the bundle with the node unchanged, a corrupt blob the node does not need does not matter.
//! [`import_prepared`] then streams a generated OCI archive ([`archive`]) holding just those
//! images and blobs to `ctr -a SOCK -n k8s.io images import -`, hashing each blob again on the
//! way.
//!
//! Why blobs containerd has need no check here: its content store is addressed by digest, so a
//! layer it lists under a digest is that layer.
//!
//! The side effects go through [`ImageStore`], implemented by [`CtrImageStore`] and, in tests, by
//! a recording fake.

pub mod archive;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cks_proto::ids::Sha256Digest;
use cks_proto::manifest::{BundleManifest, ImageEntry};
use cks_proto::verify::{BundleSource, VerifiedBlobs, VerifyError, verify_image_blobs};
use tracing::{info, warn};

use crate::images::archive::{BlobChanged, ImportArchive};

/// The containerd namespace Kubernetes' CRI uses.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// Longest a `ctr` query may take.
pub const CTR_LIMIT: std::time::Duration = std::time::Duration::from_secs(5 * 60);
/// Longest one image archive's import may take.
pub const CTR_IMPORT_LIMIT: std::time::Duration = std::time::Duration::from_secs(60 * 60);
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
/// It exists so that import decisions (what to skip, what to import, which blobs to send) are
/// tested without a containerd, and so that a containerd-client (gRPC) implementation can
/// replace `ctr` without touching them.
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

    /// Digests of the blobs in the namespace's content store, or `None` when this store cannot
    /// tell (the default).
    ///
    /// Only an optimisation: without it every blob of the images to import is sent, and an
    /// image is taken as present when its reference points at the right manifest.
    ///
    /// # Errors
    /// [`ImageStoreError`] when containerd cannot be asked; the importer then proceeds as with
    /// `None`.
    fn content_digests(&self) -> Result<Option<BTreeSet<Sha256Digest>>, ImageStoreError> {
        Ok(None)
    }
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

    /// Runs `ctr … <args>` with no input and returns its standard output.
    fn output(&self, args: &[&str]) -> Result<String, ImageStoreError> {
        let output = crate::process::output_within(
            self.command().args(args).stdin(Stdio::null()),
            CTR_LIMIT,
        )
        .map_err(|e| self.spawn_error(e))?;
        if !output.status.success() {
            return Err(ImageStoreError::Failed {
                operation: args.join(" "),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl ImageStore for CtrImageStore {
    fn list_images(&self) -> Result<Vec<StoredImage>, ImageStoreError> {
        Ok(parse_images_ls(&self.output(&["images", "ls"])?))
    }

    fn content_digests(&self) -> Result<Option<BTreeSet<Sha256Digest>>, ImageStoreError> {
        let listed = self.output(&["content", "ls", "-q"])?;
        Ok(Some(
            listed
                .lines()
                .filter_map(|line| line.trim().parse::<Sha256Digest>().ok())
                .collect(),
        ))
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
        let allowed = crate::process::remaining(CTR_IMPORT_LIMIT);
        let deadline = std::time::Instant::now() + allowed;
        let child = std::sync::Mutex::new(child);
        let finished = std::sync::atomic::AtomicBool::new(false);
        let killed = std::sync::atomic::AtomicBool::new(false);
        // Drain both outputs while feeding stdin, so that neither side can block the other; a
        // watchdog kills ctr at the deadline, which also unblocks a stalled stdin.
        let (streamed, out, err) = std::thread::scope(|scope| {
            let out = scope.spawn(|| drain(stdout));
            let err = scope.spawn(|| drain(stderr));
            scope.spawn(|| {
                use std::sync::atomic::Ordering;
                while !finished.load(Ordering::Acquire) {
                    if std::time::Instant::now() >= deadline {
                        killed.store(true, Ordering::Release);
                        let mut child = child
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        let _ = child.kill();
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            });
            let streamed = match stdin.as_mut() {
                Some(stdin) => io::copy(archive, stdin).map(drop),
                None => Ok(()),
            };
            drop(stdin.take()); // EOF for ctr (a truncated tar, if streaming failed).
            let out = out.join().unwrap_or_default();
            let err = err.join().unwrap_or_default();
            finished.store(true, std::sync::atomic::Ordering::Release);
            (streamed, out, err)
        });
        let status = child
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .wait()
            .map_err(|e| self.spawn_error(e))?;
        if killed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(self.spawn_error(crate::process::timed_out("ctr images import", allowed)));
        }
        // A failure to produce the archive is the cause of ctr's failure, not the other way
        // round; a broken pipe means ctr stopped reading: its own error says why.
        let streamed = match streamed {
            Err(source) if source.kind() != io::ErrorKind::BrokenPipe => {
                return Err(ImageStoreError::Stream {
                    archive: name.to_string(),
                    source,
                });
            }
            other => other,
        };
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
    /// A blob to import failed verification; nothing was imported.
    #[error("image blobs failed verification; nothing was imported")]
    Refused(#[source] VerifyError),
    /// A blob is not what verification saw; containerd created no image.
    #[error("image archive {archive} changed after verification; no image was created")]
    ContentChanged {
        /// The bundle's archive.
        archive: String,
        /// The blob that changed.
        #[source]
        source: BlobChanged,
    },
    /// The store returned before reading the whole archive, so not every blob was checked.
    #[error("the import of {name} ended before the whole archive was read")]
    ImportIncomplete {
        /// The import, as named to the store.
        name: String,
    },
}

/// The import decided from the bundle's manifest and what containerd has (see the module
/// documentation); made by [`plan_import`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportPlan {
    /// References of the images to import, sorted.
    pub import: Vec<String>,
    /// References containerd has already (same manifest, every blob present), sorted.
    pub present: Vec<String>,
    /// Blobs to read from the bundle and send besides the manifests: the configs of the images
    /// to import, and their layers containerd lacks.
    pub send: BTreeSet<Sha256Digest>,
    /// Layers of the images to import that containerd has: neither read nor sent.
    pub reused: BTreeSet<Sha256Digest>,
}

/// Decides what to import; see the module documentation. `content` is `None` when the store
/// cannot list its blobs: then an image with the right manifest digest counts as present and
/// every blob of the others is sent.
pub fn plan_import(
    manifest: &BundleManifest,
    stored: &[StoredImage],
    content: Option<&BTreeSet<Sha256Digest>>,
) -> ImportPlan {
    let targets: BTreeMap<&str, &str> = stored
        .iter()
        .map(|i| (i.reference.as_str(), i.digest.as_str()))
        .collect();
    let has = |digest: &Sha256Digest| content.is_some_and(|c| c.contains(digest));
    let mut plan = ImportPlan::default();
    for image in &manifest.images {
        let same_manifest =
            targets.get(image.reference.as_str()) == Some(&image.manifest_digest.oci().as_str());
        let complete = content.is_none()
            || std::iter::once(&image.manifest_digest)
                .chain(image.blobs.iter())
                .all(has);
        if same_manifest && complete {
            plan.present.push(image.reference.clone());
            continue;
        }
        plan.import.push(image.reference.clone());
        let (config, layers) = image
            .blobs
            .split_first()
            .map_or((None, &[][..]), |(c, l)| (Some(c), l));
        plan.send.extend(config.cloned());
        for layer in layers {
            if has(layer) {
                plan.reused.insert(layer.clone());
            } else {
                plan.send.insert(layer.clone());
            }
        }
    }
    // A digest that is one image's config and another's present layer is sent anyway.
    plan.reused.retain(|d| !plan.send.contains(d));
    plan.import.sort();
    plan.present.sort();
    plan
}

/// An import planned and verified by [`prepare_import`], ready for [`import_prepared`].
#[derive(Debug, Clone)]
pub struct PreparedImport {
    /// What to import.
    pub plan: ImportPlan,
    /// The images to import, as the bundle manifest lists them.
    images: Vec<ImageEntry>,
    /// Where their manifests and the blobs to send are, all verified.
    blobs: VerifiedBlobs,
}

impl PreparedImport {
    /// Bytes hashed while verifying the blobs to send.
    pub fn bytes_checked(&self) -> u64 {
        self.blobs.bytes_checked
    }
}

/// Asks containerd what it has, plans the import and verifies every blob it will send (see
/// the module documentation). Writes nothing.
///
/// # Errors
/// [`ImagesError::Store`] when containerd cannot list its images, [`ImagesError::Refused`] when
/// a blob to send is missing from the bundle or does not match its digest.
pub fn prepare_import(
    bundle: &dyn BundleSource,
    manifest: &BundleManifest,
    store: &dyn ImageStore,
) -> Result<PreparedImport, ImagesError> {
    let stored = store.list_images()?;
    let content = match store.content_digests() {
        Ok(content) => content,
        Err(err) => {
            warn!(
                err = %crate::bundle::mount::ErrorChain(&err),
                "cannot list containerd's content; every blob of the images to import is sent"
            );
            None
        }
    };
    let plan = plan_import(manifest, &stored, content.as_ref());
    let images: Vec<ImageEntry> = manifest
        .images
        .iter()
        .filter(|i| plan.import.binary_search(&i.reference).is_ok())
        .cloned()
        .collect();
    let blobs = if images.is_empty() {
        VerifiedBlobs::default()
    } else {
        let refs: Vec<&ImageEntry> = images.iter().collect();
        verify_image_blobs(bundle, manifest, &refs, &plan.send).map_err(ImagesError::Refused)?
    };
    Ok(PreparedImport {
        plan,
        images,
        blobs,
    })
}

/// What [`import_prepared`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// References imported now, sorted.
    pub imported: Vec<String>,
    /// References containerd had already, sorted.
    pub skipped: Vec<String>,
    /// Blobs streamed to containerd (manifests, configs, missing layers).
    pub blobs_sent: usize,
    /// Their bytes.
    pub bytes_sent: u64,
    /// Layers of the imported images that containerd had: not sent.
    pub layers_reused: usize,
}

/// Streams the prepared import to containerd in one `images import`; does nothing when every
/// image is present.
///
/// # Errors
/// [`ImagesError::Store`] when ctr fails, [`ImagesError::ContentChanged`] when a blob no longer
/// matches its digest (ctr then gets a truncated archive and creates no image),
/// [`ImagesError::ImportIncomplete`] when the store stops reading early.
pub fn import_prepared(
    bundle: &dyn BundleSource,
    prepared: &PreparedImport,
    store: &dyn ImageStore,
) -> Result<ImportReport, ImagesError> {
    let plan = &prepared.plan;
    let mut report = ImportReport {
        skipped: plan.present.clone(),
        layers_reused: plan.reused.len(),
        ..ImportReport::default()
    };
    if prepared.images.is_empty() {
        info!(
            images = plan.present.len(),
            "images already in containerd; skipping"
        );
        return Ok(report);
    }
    let archives: BTreeSet<&str> = prepared.images.iter().map(|i| i.archive.as_str()).collect();
    let name = format!(
        "{} of {} images from {}",
        prepared.images.len(),
        prepared.images.len() + plan.present.len(),
        archives.into_iter().collect::<Vec<_>>().join(", ")
    );
    info!(
        import = %name,
        blobs = prepared.blobs.locations.len(),
        bytes = prepared.blobs.bytes_checked,
        layers_reused = plan.reused.len(),
        present = plan.present.len(),
        "importing images"
    );
    let mut archive = ImportArchive::new(bundle, &prepared.images, &prepared.blobs.locations);
    let imported = store.import(&name, &mut archive);
    if let Some(changed) = archive.changed() {
        return Err(ImagesError::ContentChanged {
            archive: changed.archive.clone(),
            source: changed.clone(),
        });
    }
    imported?;
    if !archive.is_complete() {
        return Err(ImagesError::ImportIncomplete { name });
    }
    report.imported = plan.import.clone();
    report.blobs_sent = archive.blobs_sent();
    report.bytes_sent = archive.bytes_sent();
    Ok(report)
}

/// [`prepare_import`] then [`import_prepared`]: imports what containerd lacks of a bundle whose
/// files passed verification.
///
/// # Errors
/// As the two.
pub fn import_images(
    bundle: &dyn BundleSource,
    manifest: &BundleManifest,
    store: &dyn ImageStore,
) -> Result<ImportReport, ImagesError> {
    let prepared = prepare_import(bundle, manifest, store)?;
    import_prepared(bundle, &prepared, store)
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
mod testing;

#[cfg(test)]
mod tests {
    use super::testing::{ARCHIVE, Fixture, RecordingStore, base_layer};
    use super::*;

    const PAUSE: &str = "registry.k8s.io/pause:3.10";
    const APISERVER: &str = "registry.k8s.io/kube-apiserver:v1.33.1";
    const SCHEDULER: &str = "registry.k8s.io/kube-scheduler:v1.33.1";
    const NEW_APISERVER: &str = "registry.k8s.io/kube-apiserver:v1.34.0";

    /// v1: pause and two control-plane images on a shared base layer.
    fn v1() -> Fixture {
        let base = base_layer();
        Fixture::new(&[
            (PAUSE, ARCHIVE, &[b"pause layer"]),
            (APISERVER, ARCHIVE, &[&base, b"apiserver v1.33.1"]),
            (SCHEDULER, ARCHIVE, &[&base, b"scheduler v1.33.1"]),
        ])
    }

    /// The upgrade: v1's images plus kube-apiserver v1.34.0 on the same base layer.
    fn v2() -> Fixture {
        let base = base_layer();
        Fixture::new(&[
            (PAUSE, ARCHIVE, &[b"pause layer"]),
            (APISERVER, ARCHIVE, &[&base, b"apiserver v1.33.1"]),
            (SCHEDULER, ARCHIVE, &[&base, b"scheduler v1.33.1"]),
            (NEW_APISERVER, ARCHIVE, &[&base, b"apiserver v1.34.0"]),
        ])
    }

    fn digests<'a>(items: impl IntoIterator<Item = &'a Sha256Digest>) -> BTreeSet<Sha256Digest> {
        items.into_iter().cloned().collect()
    }

    /// A store holding what importing `references` of `fixture` leaves.
    fn store_with(fixture: &Fixture, references: &[&str]) -> RecordingStore {
        let (images, content) = fixture.stored(references);
        RecordingStore {
            images,
            content: Some(content),
            ..RecordingStore::default()
        }
    }

    // === plan_import ===

    #[test]
    fn fresh_node_imports_everything() {
        let fixture = v1();
        let plan = plan_import(&fixture.manifest, &[], Some(&BTreeSet::new()));
        assert_eq!(plan.import, vec![APISERVER, SCHEDULER, PAUSE]);
        assert!(plan.present.is_empty());
        let every_blob = digests(fixture.manifest.images.iter().flat_map(|i| &i.blobs));
        assert_eq!(plan.send, every_blob);
        assert!(plan.reused.is_empty());
    }

    #[test]
    fn upgrade_imports_the_new_image_and_sends_only_what_containerd_lacks() {
        let (v1, v2) = (v1(), v2());
        let (images, content) = v1.stored(&[PAUSE, APISERVER, SCHEDULER]);
        let plan = plan_import(&v2.manifest, &images, Some(&content));
        assert_eq!(plan.import, vec![NEW_APISERVER]);
        assert_eq!(plan.present, vec![APISERVER, SCHEDULER, PAUSE]);
        let new = v2.image(NEW_APISERVER);
        // Its config and its own layer; not the base layer containerd has.
        assert_eq!(plan.send, digests([&new.blobs[0], &new.blobs[2]]));
        assert_eq!(plan.reused, digests([&new.blobs[1]]));
    }

    #[test]
    fn image_under_another_digest_or_with_a_blob_missing_is_imported_again() {
        let fixture = v1();
        let (mut images, mut content) = fixture.stored(&[PAUSE, APISERVER, SCHEDULER]);
        // Same name, another manifest: an image of another build.
        images[0].digest = Sha256Digest::of(b"other").oci();
        // Listed with the right manifest, but a layer is gone (an import that failed half-way).
        let scheduler = fixture.image(SCHEDULER);
        content.remove(&scheduler.blobs[2]);
        let plan = plan_import(&fixture.manifest, &images, Some(&content));
        assert_eq!(plan.import, vec![SCHEDULER, PAUSE]);
        assert_eq!(plan.present, vec![APISERVER]);
        let pause = fixture.image(PAUSE);
        assert_eq!(
            plan.send,
            digests([&pause.blobs[0], &scheduler.blobs[0], &scheduler.blobs[2]]),
            "pause's layer and the scheduler's base are in the content store"
        );
    }

    #[test]
    fn without_a_content_list_the_manifest_digest_decides_and_every_blob_is_sent() {
        let (v1, v2) = (v1(), v2());
        let (images, _) = v1.stored(&[PAUSE, APISERVER, SCHEDULER]);
        let plan = plan_import(&v2.manifest, &images, None);
        assert_eq!(plan.import, vec![NEW_APISERVER]);
        assert_eq!(plan.send, digests(&v2.image(NEW_APISERVER).blobs));
        assert!(plan.reused.is_empty());
    }

    // === prepare + import ===

    #[test]
    fn fresh_node_gets_every_image_and_blob_in_one_archive() {
        let fixture = v1();
        let store = RecordingStore {
            content: Some(BTreeSet::new()),
            ..RecordingStore::default()
        };
        let report = import_images(&fixture.source(), &fixture.manifest, &store).expect("import");
        assert_eq!(report.imported, vec![APISERVER, SCHEDULER, PAUSE]);
        assert_eq!(report.blobs_sent, fixture.blobs.len());
        let imports = store.imports.borrow();
        let [recorded] = imports.as_slice() else {
            panic!("one import: {imports:?}")
        };
        assert!(recorded.terminated);
        assert_eq!(recorded.blobs, fixture.blobs, "every blob, byte for byte");
        let names: Vec<_> = recorded
            .index
            .as_ref()
            .expect("index.json")
            .manifests
            .iter()
            .map(|d| d.annotations[cks_proto::oci::ANNOTATION_IMAGE_NAME].clone())
            .collect();
        assert_eq!(names, vec![APISERVER, SCHEDULER, PAUSE]);
    }

    #[test]
    fn upgrade_streams_only_the_new_images_manifest_config_and_missing_layers() {
        let (v1, v2) = (v1(), v2());
        let store = store_with(&v1, &[PAUSE, APISERVER, SCHEDULER]);
        let report = import_images(&v2.source(), &v2.manifest, &store).expect("import");
        assert_eq!(report.imported, vec![NEW_APISERVER]);
        assert_eq!(report.skipped, vec![APISERVER, SCHEDULER, PAUSE]);
        assert_eq!(report.layers_reused, 1);
        let new = v2.image(NEW_APISERVER);
        let imports = store.imports.borrow();
        let recorded = &imports[0];
        assert_eq!(recorded.name, "1 of 4 images from docker/images.tar");
        assert_eq!(
            recorded.blobs.keys().cloned().collect::<BTreeSet<_>>(),
            digests([&new.manifest_digest, &new.blobs[0], &new.blobs[2]])
        );
        assert_eq!(
            report.bytes_sent,
            recorded.blobs.values().map(|b| b.len() as u64).sum::<u64>()
        );
        let index = recorded.index.as_ref().expect("index");
        assert_eq!(index.manifests.len(), 1);
        assert_eq!(index.manifests[0].digest, new.manifest_digest.oci());
        assert_eq!(
            index.manifests[0].size,
            v2.blobs[&new.manifest_digest].len() as u64
        );
        assert_eq!(
            recorded
                .members
                .as_ref()
                .expect("parses")
                .last()
                .map(String::as_str),
            Some("index.json"),
            "index.json comes last"
        );
    }

    #[test]
    fn everything_present_imports_nothing() {
        let fixture = v1();
        let store = store_with(&fixture, &[PAUSE, APISERVER, SCHEDULER]);
        // Even a corrupt archive: nothing is read.
        fixture.corrupt_blob(&base_layer_digest());
        let report = import_images(&fixture.source(), &fixture.manifest, &store).expect("import");
        assert!(report.imported.is_empty());
        assert_eq!(report.skipped.len(), 3);
        assert!(store.imports.borrow().is_empty());
    }

    fn base_layer_digest() -> Sha256Digest {
        Sha256Digest::of(&base_layer())
    }

    #[test]
    fn corrupt_blob_to_send_refuses_before_anything_is_imported() {
        let (v1, v2) = (v1(), v2());
        v2.corrupt_blob(&v2.image(NEW_APISERVER).blobs[2]);
        let store = store_with(&v1, &[PAUSE, APISERVER, SCHEDULER]);
        let err = prepare_import(&v2.source(), &v2.manifest, &store).expect_err("corrupt");
        assert!(
            matches!(
                err,
                ImagesError::Refused(VerifyError::BlobDigestMismatch { .. })
            ),
            "{err:?}"
        );
        assert!(store.imports.borrow().is_empty());
    }

    #[test]
    fn corrupt_blob_containerd_has_does_not_matter() {
        let (v1, v2) = (v1(), v2());
        v2.corrupt_blob(&base_layer_digest());
        let store = store_with(&v1, &[PAUSE, APISERVER, SCHEDULER]);
        let report = import_images(&v2.source(), &v2.manifest, &store).expect("import");
        assert_eq!(report.imported, vec![NEW_APISERVER]);
    }

    #[test]
    fn a_failing_content_list_sends_every_blob_of_the_images_to_import() {
        let (v1, v2) = (v1(), v2());
        let store = RecordingStore {
            fail_content: true,
            ..store_with(&v1, &[PAUSE, APISERVER, SCHEDULER])
        };
        let report = import_images(&v2.source(), &v2.manifest, &store).expect("import");
        assert_eq!(report.imported, vec![NEW_APISERVER]);
        let new = v2.image(NEW_APISERVER);
        let sent: BTreeSet<_> = store.imports.borrow()[0].blobs.keys().cloned().collect();
        assert_eq!(
            sent,
            digests(std::iter::once(&new.manifest_digest).chain(&new.blobs))
        );
    }

    #[test]
    fn failed_import_is_reported_with_ctr_stderr() {
        let fixture = v1();
        let store = RecordingStore {
            fail_import: true,
            ..RecordingStore::default()
        };
        let err = import_images(&fixture.source(), &fixture.manifest, &store).expect_err("fails");
        let chain = format!("{}", crate::bundle::mount::ErrorChain(&err));
        assert!(chain.contains("boom"), "{chain}");
        assert_eq!(store.imports.borrow().len(), 1);
    }

    #[test]
    fn blob_changed_after_verification_truncates_the_stream_and_fails() {
        let fixture = v1();
        let store = RecordingStore::default();
        let prepared = prepare_import(&fixture.source(), &fixture.manifest, &store).expect("ok");
        let changed = fixture.image(SCHEDULER).blobs[2].clone();
        fixture.corrupt_blob(&changed);
        let err = import_prepared(&fixture.source(), &prepared, &store).expect_err("changed");
        assert!(
            matches!(&err, ImagesError::ContentChanged { source, .. } if source.digest == changed),
            "{err:?}"
        );
        let recorded = &store.imports.borrow()[0];
        assert!(!recorded.terminated, "ctr got a truncated tar");
        assert!(recorded.index.is_none(), "and no index.json");
    }

    #[test]
    fn a_store_that_stops_reading_early_is_an_error() {
        let fixture = v1();
        let store = RecordingStore {
            read_limit: Some(2048),
            ..RecordingStore::default()
        };
        let err = import_images(&fixture.source(), &fixture.manifest, &store).expect_err("short");
        assert!(
            matches!(err, ImagesError::ImportIncomplete { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn pause_image_is_the_highest_pause_tag() {
        let fixture = Fixture::new(&[
            ("registry.k8s.io/pause:3.9", ARCHIVE, &[b"a"]),
            (PAUSE, ARCHIVE, &[b"b"]),
            ("registry.k8s.io/coredns/coredns:v1.12.0", ARCHIVE, &[b"c"]),
        ]);
        assert_eq!(
            pause_image(&fixture.manifest).map(|i| i.reference.as_str()),
            Some(PAUSE)
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
