//! `cks-manifest.json`: what a bundle ISO contains, with digests.
//!
//! Each format version is a module; the current one is re-exported here. A reader checks
//! `schema_version` first ([`read_manifest`]) so that an agent meeting a newer bundle says so
//! instead of misreading it.

pub mod v1;

pub use v1::*;

/// The file name of the manifest at the root of every bundle.
pub const MANIFEST_PATH: &str = "cks-manifest.json";

/// The error of reading a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The bytes are not the JSON we expect.
    #[error("cks-manifest.json is not valid")]
    Parse(#[source] serde_json::Error),
    /// Written by a newer (or unknown) builder.
    #[error(
        "cks-manifest.json has schema_version {found}, this program reads version {SCHEMA_VERSION}"
    )]
    UnsupportedSchema {
        /// The version found in the file.
        found: u64,
    },
}

/// Parses manifest bytes, checking the schema version before the structure.
pub fn read_manifest(bytes: &[u8]) -> Result<BundleManifest, ManifestError> {
    #[derive(serde::Deserialize)]
    struct Probe {
        schema_version: u64,
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(ManifestError::Parse)?;
    if probe.schema_version != SCHEMA_VERSION {
        return Err(ManifestError::UnsupportedSchema {
            found: probe.schema_version,
        });
    }
    serde_json::from_slice(bytes).map_err(ManifestError::Parse)
}
