//! `cks-agent`: the node agent that replaces CloudStack's SSH-driven node setup.
//!
//! The bundle half of the agent (also usable alone: `cks-agent install`):
//!
//! 1. **Find** the bundle ([`bundle::discover`]): `--bundle PATH` (ISO file, block device or
//!    directory), else the block device whose ISO volume id is `CDROM`, waited for with backoff.
//! 2. **Open** it read-only ([`bundle::mount`]): loop device + `mount(2)`, or the user-space ISO
//!    reader when the kernel cannot mount iso9660.
//! 3. **Verify** it against its `cks-manifest.json` and this host's architecture, before
//!    anything on the node changes: every file is hashed
//!    ([`cks_proto::verify::verify_bundle_files`]) except the image archives, of which only the
//!    blobs to import are read and hashed ([`images::prepare_import`]: the images containerd
//!    lacks, without the layers it has).
//! 4. **Install** binaries, CNI plugins, crictl, the kubelet unit and manifests ([`install`]),
//!    set containerd's sandbox image and **import** the images ([`images`]).
//!
//! Every step is recorded in the node's journal ([`journal`]) when done; a rerun with the same
//! bundle skips done steps (and does nothing at all once every step is done), another bundle (an
//! upgrade) runs them again.
//!
//! # Failure behaviour
//!
//! A bundle that is missing, unreadable, corrupt, truncated or built for another architecture
//! is refused before anything is written: no file, directory or journal entry changes. That
//! includes a corrupt blob of an image the node needs; a corrupt blob the node does not read
//! (a layer containerd already has) does not matter. Errors are [`AgentError`]s;
//! [`AgentError::exit_code`] is the one mapping to process exit codes.
//!
//! # The controller half (`cks-agent run`)
//!
//! [`session`] enrolls with the controller and keeps the gRPC stream of contract 2 open while
//! the bundle installs in the background; [`commands`] executes the controller's commands
//! (kubeadm and kubectl through [`kube`]) and journals each result before it is sent.

pub mod bundle;
pub mod commands;
pub mod config;
pub mod images;
pub mod install;
pub mod journal;
pub mod kube;
pub mod process;
pub mod session;

use std::io::Read;
use std::time::Duration;

use cks_proto::ids::{Arch, Sha256Digest};
use cks_proto::manifest::MANIFEST_PATH;
use cks_proto::verify::{
    BundleSource, VerifiedBundle, VerifyError, VerifyOptions, verify_bundle, verify_bundle_files,
};
use tracing::{info, info_span, warn};

use crate::bundle::discover::{BundleLocation, DiscoverError, Discovery, find_bundle_device};
use crate::bundle::mount::{MountError, OpenedBundle};
use crate::config::Config;
use crate::images::{ImageStore, ImagesError, PreparedImport, SandboxImageError};
use crate::install::InstallError;
use crate::journal::{Journal, JournalError, JournalState, Step};

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: any failure not listed below.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code: invalid command line or configuration.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the bundle was refused (corrupt, truncated, wrong architecture, not a bundle).
pub const EXIT_BUNDLE_REFUSED: u8 = 3;
/// Exit code: no bundle was found (in time).
pub const EXIT_BUNDLE_NOT_FOUND: u8 = 4;
/// Exit code: another agent holds the node lock.
pub const EXIT_LOCKED: u8 = 5;
/// The controller refused this node's enrollment (token unknown, used, expired or for another
/// node); restarting cannot help.
pub const EXIT_ENROLLMENT_REFUSED: u8 = 6;

/// What can go wrong in the agent's bundle work.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// No bundle found.
    #[error("failed to find the bundle")]
    Discover(#[from] DiscoverError),
    /// The bundle could not be opened.
    #[error("failed to open the bundle")]
    Open(#[from] MountError),
    /// The bundle failed verification; nothing was changed.
    #[error("bundle {bundle} refused; nothing on this node was changed")]
    Refused {
        /// The bundle (`file:…`, `device:…`, `dir:…`).
        bundle: String,
        /// The first check that failed.
        #[source]
        source: VerifyError,
    },
    /// This host's CPU is not one bundles are built for.
    #[error("this host's architecture {arch:?} is not supported (amd64 or arm64 only)")]
    UnsupportedHost {
        /// `std::env::consts::ARCH`.
        arch: &'static str,
    },
    /// The journal could not be used.
    #[error("node journal")]
    Journal(#[from] JournalError),
    /// Installing files failed.
    #[error("failed to install the bundle's files")]
    Install(#[from] InstallError),
    /// containerd's config could not be patched.
    #[error("failed to configure containerd")]
    SandboxImage(#[from] SandboxImageError),
    /// Images could not be imported.
    #[error("failed to import the bundle's images")]
    Images(#[from] ImagesError),
    /// The controller session cannot run (configuration, refused enrollment).
    #[error("controller session")]
    Session(#[from] session::SessionError),
    /// The async runtime could not start.
    #[error("cannot start the async runtime")]
    Runtime {
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl AgentError {
    /// The process exit code for this error (documented in `cks-agent --help`).
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::Config(_) => EXIT_USAGE,
            AgentError::Session(session::SessionError::NotConfigured(_)) => EXIT_USAGE,
            AgentError::Session(session::SessionError::Identity(
                session::identity::IdentityError::Refused(_)
                | session::identity::IdentityError::NoToken,
            )) => EXIT_ENROLLMENT_REFUSED,
            AgentError::Refused { .. } => EXIT_BUNDLE_REFUSED,
            // The image is there but is not a readable ISO 9660 volume: a corrupt bundle.
            AgentError::Open(MountError::UserSpace { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                EXIT_BUNDLE_REFUSED
            }
            AgentError::Discover(DiscoverError::NotFound { .. }) => EXIT_BUNDLE_NOT_FOUND,
            AgentError::Discover(_) => EXIT_BUNDLE_NOT_FOUND,
            AgentError::Journal(JournalError::Locked { .. }) => EXIT_LOCKED,
            _ => EXIT_FAILURE,
        }
    }
}

/// The outcome of [`install`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallOutcome {
    /// Where the bundle was.
    pub bundle: String,
    /// SHA-256 of its manifest.
    pub manifest_sha256: String,
    /// Its Kubernetes version.
    pub kubernetes_version: String,
    /// Steps run now (empty when everything was done before).
    pub steps_run: Vec<&'static str>,
    /// References of the images imported now.
    pub images_imported: Vec<String>,
    /// References of the images containerd had already (so not imported).
    pub images_skipped: Vec<String>,
}

/// Finds the bundle: the configured path, or the `CDROM` device (waiting with `sleep`).
///
/// # Errors
/// [`AgentError::Discover`].
pub fn locate_bundle(
    config: &Config,
    sleep: &mut dyn FnMut(Duration),
) -> Result<BundleLocation, AgentError> {
    if let Some(path) = &config.bundle {
        return Ok(BundleLocation::from_path(path)?);
    }
    Ok(BundleLocation::Device(find_bundle_device(
        &discovery(config),
        sleep,
    )?))
}

/// True when the bundle can be opened right now: a `--bundle` path is configured, or the
/// labelled device is attached (one look, no waiting).
pub fn bundle_present(config: &Config) -> bool {
    if config.bundle.is_some() {
        return true;
    }
    discovery(config).scan_once().is_some()
}

/// The configured search for the bundle device.
fn discovery(config: &Config) -> Discovery {
    Discovery::new(
        config.dev_dir.clone(),
        config.sys_dir.clone(),
        config.bundle_label.clone(),
        config.discovery_timeout,
    )
}

/// What an earlier boot installed completely, according to the journal. A node whose ISO was
/// detached after its cluster was created (the controller detaches it, as CKS does) comes back
/// from a reboot with what is on its disk, instead of waiting for an ISO that will not come.
///
/// # Errors
/// The journal cannot be read.
pub fn completed_install(config: &Config) -> Result<Option<InstallOutcome>, AgentError> {
    let paths = config.node_paths();
    let Some(state) = Journal::peek(&paths.data_dir)? else {
        return Ok(None);
    };
    let Some(sha) = state.bundle.as_ref().map(|b| b.manifest_sha256.clone()) else {
        return Ok(None);
    };
    Ok(journaled_outcome(
        &state,
        &sha,
        "installed at an earlier boot (journal)".to_string(),
    ))
}

/// The outcome of an install the journal records as complete for the bundle `sha`: nothing
/// run, nothing imported.
fn journaled_outcome(state: &JournalState, sha: &str, bundle: String) -> Option<InstallOutcome> {
    if !journal_complete(state, sha) {
        return None;
    }
    Some(InstallOutcome {
        bundle,
        manifest_sha256: sha.to_string(),
        kubernetes_version: state
            .bundle
            .as_ref()
            .map(|b| b.kubernetes_version.clone())
            .unwrap_or_default(),
        steps_run: Vec::new(),
        images_imported: Vec::new(),
        images_skipped: Vec::new(),
    })
}

/// Finds and opens the bundle.
///
/// # Errors
/// [`AgentError::Discover`] or [`AgentError::Open`].
pub fn open_bundle(
    config: &Config,
    sleep: &mut dyn FnMut(Duration),
) -> Result<OpenedBundle, AgentError> {
    let location = locate_bundle(config, sleep)?;
    let opened = OpenedBundle::open(
        &location,
        config.mount,
        &config.dev_dir,
        &config.host_path(&config.run_dir),
    )?;
    info!(bundle = %location.describe(), access = opened.access(), "bundle opened");
    Ok(opened)
}

/// Verifies an open bundle for this host, completely (every file, every blob of every image
/// archive, as `cks-isobuilder verify` does); writes nothing.
///
/// # Errors
/// [`AgentError::Refused`] naming the first failed check, [`AgentError::UnsupportedHost`].
pub fn verify(bundle: &OpenedBundle) -> Result<VerifiedBundle, AgentError> {
    verify_using(bundle, verify_bundle)
}

/// Verifies an open bundle for installing it: as [`verify`], except that image archives are
/// only checked for size and mode; [`prepare_images`] then verifies the blobs to import.
fn verify_for_install(bundle: &OpenedBundle) -> Result<VerifiedBundle, AgentError> {
    verify_using(bundle, verify_bundle_files)
}

type Verifier = fn(&dyn BundleSource, &VerifyOptions<'_>) -> Result<VerifiedBundle, VerifyError>;

fn verify_using(bundle: &OpenedBundle, verifier: Verifier) -> Result<VerifiedBundle, AgentError> {
    let arch = Arch::host().ok_or(AgentError::UnsupportedHost {
        arch: std::env::consts::ARCH,
    })?;
    let options = VerifyOptions {
        expected_arch: Some(arch),
        on_bytes: None,
    };
    let verified = verifier(bundle, &options).map_err(|source| AgentError::Refused {
        bundle: bundle.location().describe(),
        source,
    })?;
    info!(
        bundle = %bundle.location().describe(),
        kubernetes_version = %verified.manifest.kubernetes_version,
        arch = %verified.manifest.arch,
        manifest_sha256 = %verified.manifest_sha256,
        files = verified.manifest.files.len(),
        images = verified.manifest.images.len(),
        bytes = verified.bytes_checked,
        "bundle verified"
    );
    Ok(verified)
}

/// Installs an open bundle: verify, files, sandbox image, images; journaled and idempotent
/// (see the crate documentation).
///
/// # Errors
/// [`AgentError`]; a refused bundle changes nothing.
pub fn install(
    bundle: &OpenedBundle,
    config: &Config,
    store: &dyn ImageStore,
) -> Result<InstallOutcome, AgentError> {
    install_reporting(bundle, config, store, &|_, _| {})
}

/// [`install`], calling `on_step(step, detail)` each time a step is recorded done (the session
/// turns these into progress events for the controller).
///
/// # Errors
/// [`AgentError`]; a refused bundle changes nothing.
pub fn install_reporting(
    bundle: &OpenedBundle,
    config: &Config,
    store: &dyn ImageStore,
    on_step: &dyn Fn(&'static str, &str),
) -> Result<InstallOutcome, AgentError> {
    let location = bundle.location().describe();
    let _span = info_span!("install", bundle = %location).entered();
    let paths = config.node_paths();

    // Fast path: the journal says this very bundle is fully installed. Nothing is written.
    if let Some(sha) = manifest_sha256(bundle)
        && let Some(state) = Journal::peek(&paths.data_dir)?
        && let Some(outcome) = journaled_outcome(&state, sha.hex(), location.clone())
    {
        info!(manifest_sha256 = %sha, "bundle already installed; nothing to do");
        return Ok(outcome);
    }

    let verified = verify_for_install(bundle)?;
    let sha = verified.manifest_sha256.hex().to_string();
    let manifest = &verified.manifest;
    // Still before anything is written: what to import, with every blob it sends verified.
    let images_done = Journal::peek(&paths.data_dir)?
        .is_some_and(|state| journal_step_done(&state, &sha, Step::ImagesImport));
    let mut prepared = if images_done {
        None
    } else {
        Some(prepare_images(bundle, manifest, store)?)
    };
    let mut journal = Journal::open(&paths.data_dir)?;
    journal.begin_bundle(&sha, &manifest.kubernetes_version.to_string(), &location)?;
    let mut outcome = InstallOutcome {
        bundle: location,
        manifest_sha256: sha.clone(),
        kubernetes_version: manifest.kubernetes_version.to_string(),
        steps_run: Vec::new(),
        images_imported: Vec::new(),
        images_skipped: Vec::new(),
    };
    if !journal.is_done(&sha, Step::BundleVerify) {
        let blob_bytes = prepared.as_ref().map_or(0, PreparedImport::bytes_checked);
        let detail = format!("{} bytes checked", verified.bytes_checked + blob_bytes);
        journal.record_done(Step::BundleVerify, &detail)?;
        on_step(Step::BundleVerify.as_str(), &detail);
        outcome.steps_run.push(Step::BundleVerify.as_str());
    }
    if !journal.is_done(&sha, Step::InstallBinaries) {
        let report = install::install_files(bundle, manifest, &paths)?;
        let detail = format!("{} files installed", report.installed.len());
        journal.record_done(Step::InstallBinaries, &detail)?;
        on_step(Step::InstallBinaries.as_str(), &detail);
        outcome.steps_run.push(Step::InstallBinaries.as_str());
    }
    if !journal.is_done(&sha, Step::ContainerdSandboxImage) {
        let detail = match images::pause_image(manifest) {
            Some(pause) => {
                images::set_sandbox_image(&paths.containerd_config, &pause.reference)?;
                format!("sandbox_image = {}", pause.reference)
            }
            None => {
                warn!("the bundle has no pause image; containerd's sandbox image left as it is");
                "no pause image in the bundle".to_string()
            }
        };
        journal.record_done(Step::ContainerdSandboxImage, &detail)?;
        on_step(Step::ContainerdSandboxImage.as_str(), &detail);
        outcome
            .steps_run
            .push(Step::ContainerdSandboxImage.as_str());
    }
    if !journal.is_done(&sha, Step::ImagesImport) {
        let prepared = match prepared.take() {
            Some(prepared) => prepared,
            // Another agent changed the journal since it was peeked at.
            None => prepare_images(bundle, manifest, store)?,
        };
        let report = images::import_prepared(bundle, &prepared, store)?;
        let detail = format!(
            "{} images imported ({} blobs, {} bytes sent; {} layers reused), {} already in containerd",
            report.imported.len(),
            report.blobs_sent,
            report.bytes_sent,
            report.layers_reused,
            report.skipped.len()
        );
        info!(
            imported = report.imported.len(),
            skipped = report.skipped.len(),
            blobs_sent = report.blobs_sent,
            bytes_sent = report.bytes_sent,
            layers_reused = report.layers_reused,
            "images imported"
        );
        journal.record_done(Step::ImagesImport, &detail)?;
        on_step(Step::ImagesImport.as_str(), &detail);
        outcome.steps_run.push(Step::ImagesImport.as_str());
        outcome.images_imported = report.imported;
        outcome.images_skipped = report.skipped;
    }
    info!(steps = ?outcome.steps_run, kubernetes_version = %outcome.kubernetes_version, "bundle installed");
    Ok(outcome)
}

/// [`images::prepare_import`], with a blob that fails verification refusing the bundle (as any
/// other verification failure does).
fn prepare_images(
    bundle: &OpenedBundle,
    manifest: &cks_proto::manifest::BundleManifest,
    store: &dyn ImageStore,
) -> Result<PreparedImport, AgentError> {
    images::prepare_import(bundle, manifest, store).map_err(|err| match err {
        ImagesError::Refused(source) => AgentError::Refused {
            bundle: bundle.location().describe(),
            source,
        },
        other => AgentError::Images(other),
    })
}

/// SHA-256 of the bundle's manifest bytes, if it has a readable one.
fn manifest_sha256(bundle: &dyn BundleSource) -> Option<Sha256Digest> {
    let mut bytes = Vec::new();
    bundle
        .open(MANIFEST_PATH)
        .ok()?
        .take(16 * 1024 * 1024)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(Sha256Digest::of(&bytes))
}

fn journal_step_done(state: &JournalState, sha: &str, step: Step) -> bool {
    state.bundle.as_ref().is_some_and(|b| {
        b.manifest_sha256 == sha && b.steps.iter().any(|s| s.step == step.as_str())
    })
}

fn journal_complete(state: &JournalState, sha: &str) -> bool {
    state.bundle.as_ref().is_some_and(|b| {
        b.manifest_sha256 == sha
            && Step::BUNDLE_STEPS
                .iter()
                .all(|step| b.steps.iter().any(|s| s.step == step.as_str()))
    })
}
