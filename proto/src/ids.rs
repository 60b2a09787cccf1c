//! Validated identifiers: [`Arch`], [`KubeVersion`] and [`Sha256Digest`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A CPU architecture a bundle is built for, in Go/Kubernetes naming.
///
/// Parsing accepts the kernel names too (`x86_64`, `aarch64`), as CloudStack's ISO script does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    /// x86-64.
    Amd64,
    /// 64-bit ARM.
    Arm64,
}

/// The error of parsing an [`Arch`].
#[derive(Debug, thiserror::Error)]
#[error("unsupported architecture {0:?}: use amd64 (x86_64) or arm64 (aarch64)")]
pub struct ParseArchError(String);

impl Arch {
    /// The Go/Kubernetes/OCI name: `amd64` or `arm64`.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The kernel name used as ISO file-name suffix: `x86_64` or `aarch64`.
    pub fn kernel_name(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64",
            Arch::Arm64 => "aarch64",
        }
    }

    /// The architecture this program was compiled for, if it is one a bundle can target.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::Amd64),
            "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

impl FromStr for Arch {
    type Err = ParseArchError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "amd64" | "x86_64" => Ok(Arch::Amd64),
            "arm64" | "aarch64" => Ok(Arch::Arm64),
            other => Err(ParseArchError(other.to_string())),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Arch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Arch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A Kubernetes (or any component) version: semantic, compared numerically, written without `v`.
///
/// `"v1.33.1"` and `"1.33.1"` parse to the same value; `1.9.0 < 1.10.0` (CloudStack's script
/// compares these as strings and gets it wrong).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KubeVersion(semver::Version);

/// The error of parsing a [`KubeVersion`].
#[derive(Debug, thiserror::Error)]
#[error("invalid version {input:?}: expected MAJOR.MINOR.PATCH, e.g. 1.33.1")]
pub struct ParseVersionError {
    input: String,
    #[source]
    source: semver::Error,
}

impl KubeVersion {
    /// Builds a version from its numeric parts.
    pub fn new(major: u64, minor: u64, patch: u64) -> Self {
        KubeVersion(semver::Version::new(major, minor, patch))
    }

    /// The major number.
    pub fn major(&self) -> u64 {
        self.0.major
    }

    /// The minor number.
    pub fn minor(&self) -> u64 {
        self.0.minor
    }

    /// The patch number.
    pub fn patch(&self) -> u64 {
        self.0.patch
    }

    /// The underlying semantic version.
    pub fn semver(&self) -> &semver::Version {
        &self.0
    }
}

impl FromStr for KubeVersion {
    type Err = ParseVersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        let bare = trimmed.strip_prefix('v').unwrap_or(trimmed);
        semver::Version::parse(bare)
            .map(KubeVersion)
            .map_err(|source| ParseVersionError {
                input: s.to_string(),
                source,
            })
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for KubeVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KubeVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A SHA-256 digest, stored as 64 lower-case hex characters.
///
/// Parses both the bare form and the OCI form `sha256:<hex>`; [`Display`](fmt::Display) prints
/// the bare hex, [`Sha256Digest::oci`] the OCI form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest(String);

/// The error of parsing a [`Sha256Digest`].
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid sha256 digest {0:?}: expected 64 hex characters, optionally prefixed with sha256:"
)]
pub struct ParseDigestError(String);

impl Sha256Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest;
        Sha256Digest(hex::encode(sha2::Sha256::digest(bytes)))
    }

    /// Wraps a finished hasher.
    pub fn from_hasher(hasher: sha2::Sha256) -> Self {
        use sha2::Digest;
        Sha256Digest(hex::encode(hasher.finalize()))
    }

    /// The bare lower-case hex.
    pub fn hex(&self) -> &str {
        &self.0
    }

    /// The OCI form, `sha256:<hex>`.
    pub fn oci(&self) -> String {
        format!("sha256:{}", self.0)
    }
}

impl FromStr for Sha256Digest {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bare = s.strip_prefix("sha256:").unwrap_or(s);
        if bare.len() == 64 && bare.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Sha256Digest(bare.to_ascii_lowercase()))
        } else {
            Err(ParseDigestError(s.to_string()))
        }
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_accepts_kernel_and_go_names() {
        assert_eq!("x86_64".parse::<Arch>().unwrap(), Arch::Amd64);
        assert_eq!("amd64".parse::<Arch>().unwrap(), Arch::Amd64);
        assert_eq!("aarch64".parse::<Arch>().unwrap(), Arch::Arm64);
        assert_eq!(Arch::Arm64.kernel_name(), "aarch64");
        assert!("ppc64le".parse::<Arch>().is_err());
    }

    #[test]
    fn versions_compare_semantically_not_as_strings() {
        let a: KubeVersion = "1.9.0".parse().unwrap();
        let b: KubeVersion = "v1.10.0".parse().unwrap();
        assert!(a < b);
        assert_eq!(b.to_string(), "1.10.0");
        assert!("1.33".parse::<KubeVersion>().is_err());
    }

    #[test]
    fn digest_parses_both_forms_and_normalises_case() {
        let hex = "AB".repeat(32);
        let d: Sha256Digest = format!("sha256:{hex}").parse().unwrap();
        assert_eq!(d.hex(), "ab".repeat(32));
        assert_eq!(d.oci(), format!("sha256:{}", "ab".repeat(32)));
        assert!("sha256:xyz".parse::<Sha256Digest>().is_err());
        assert_eq!(
            Sha256Digest::of(b"").hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
