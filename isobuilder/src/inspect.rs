//! `inspect` and `verify`: reading a finished ISO back, in user space (no mount needed).

use std::path::{Path, PathBuf};

use cks_proto::iso::IsoBundle;
use cks_proto::manifest::BundleManifest;
use cks_proto::verify::{self, BundleSource, VerifiedBundle, VerifyError, VerifyOptions};
use serde::Serialize;

use crate::iso::VOLUME_ID;

/// Why an ISO failed `verify` or could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// Not an ISO we can read.
    #[error("failed to read ISO {path:?}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Wrong volume label: CKS nodes would not find it.
    #[error("volume label is {found:?}, CKS nodes look for {VOLUME_ID:?}")]
    VolumeId {
        /// The label found.
        found: String,
    },
    /// The content does not hold.
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

/// What `inspect` reports.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    /// The ISO.
    pub iso: PathBuf,
    /// Its size.
    pub iso_bytes: u64,
    /// Its volume label.
    pub volume_id: String,
    /// Unique blob bytes in the image archives.
    pub unique_blob_bytes: u64,
    /// What the blobs would take with one archive per image, each with its own copies.
    pub per_image_blob_bytes: u64,
    /// The difference: bytes saved by storing shared layers once.
    pub dedup_saved_bytes: u64,
    /// The manifest.
    pub manifest: BundleManifest,
}

fn open(path: &Path) -> Result<IsoBundle, InspectError> {
    IsoBundle::open(path).map_err(|source| InspectError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads an ISO's label and manifest (no hashing).
///
/// # Errors
/// [`InspectError`].
pub fn inspect(path: &Path) -> Result<InspectReport, InspectError> {
    let bundle = open(path)?;
    let manifest = verify::read_bundle_manifest(&bundle)?;
    let iso_bytes = std::fs::metadata(path)
        .map_err(|source| InspectError::Open {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let unique = manifest.unique_blob_bytes();
    let per_image = manifest.per_image_blob_bytes();
    Ok(InspectReport {
        iso: path.to_path_buf(),
        iso_bytes,
        volume_id: bundle.volume_id(),
        unique_blob_bytes: unique,
        per_image_blob_bytes: per_image,
        dedup_saved_bytes: per_image.saturating_sub(unique),
        manifest,
    })
}

/// Verifies an ISO: label, manifest, every file and every blob re-hashed.
///
/// # Errors
/// [`InspectError`] naming the first thing that does not hold.
pub fn verify_iso(
    path: &Path,
    on_bytes: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<VerifiedBundle, InspectError> {
    let bundle = open(path)?;
    let found = bundle.volume_id();
    if found != VOLUME_ID {
        return Err(InspectError::VolumeId { found });
    }
    tracing::debug!(source = %bundle.describe(), "verifying");
    Ok(verify::verify_bundle(
        &bundle,
        &VerifyOptions {
            expected_arch: None,
            on_bytes,
        },
    )?)
}

/// Human-readable size.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The text `inspect` prints without `--json`.
pub fn render(report: &InspectReport) -> String {
    use std::fmt::Write;
    let m = &report.manifest;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ISO          {} ({})",
        report.iso.display(),
        human_bytes(report.iso_bytes)
    );
    let _ = writeln!(out, "volume       {}", report.volume_id);
    let _ = writeln!(out, "name         {}", m.name);
    let _ = writeln!(out, "kubernetes   {}", m.kubernetes_version);
    let _ = writeln!(out, "arch         {}", m.arch);
    let _ = writeln!(
        out,
        "cni          {} (plugins {})",
        m.cni, m.cni_plugins_version
    );
    let _ = writeln!(out, "crictl       {}", m.crictl_version);
    if let Some(etcd) = &m.etcd_version {
        let _ = writeln!(out, "etcd         {etcd}");
    }
    let _ = writeln!(out, "builder      {}", m.builder);
    let _ = writeln!(out, "\nfiles ({}):", m.files.len());
    for f in &m.files {
        let _ = writeln!(
            out,
            "  {:04o} {:>10}  {}  {}",
            f.mode,
            human_bytes(f.size),
            &f.sha256.hex()[..12],
            f.path
        );
    }
    let _ = writeln!(out, "\nimages ({}):", m.images.len());
    for i in &m.images {
        let _ = writeln!(
            out,
            "  {}  {}  ({} blobs, in {})",
            i.reference,
            &i.manifest_digest.oci()[..19],
            i.blobs.len(),
            i.archive
        );
    }
    let _ = writeln!(
        out,
        "\nblobs: {} unique, {}; one archive per image would need {}; saved by dedup: {}",
        m.blobs.len(),
        human_bytes(report.unique_blob_bytes),
        human_bytes(report.per_image_blob_bytes),
        human_bytes(report.dedup_saved_bytes)
    );
    out
}
