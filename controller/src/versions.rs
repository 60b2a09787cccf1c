//! Kubernetes semantic versions, compared numerically field by field (CKS compares
//! `supportsautoscaling` as strings, so "1.9.0" ≥ "1.15.0"; here 1.9 < 1.15 always).

use std::cmp::Ordering;

/// `MAJOR.MINOR.PATCH` (a leading `v` accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Semver {
    /// Major.
    pub major: u64,
    /// Minor.
    pub minor: u64,
    /// Patch.
    pub patch: u64,
}

impl Semver {
    /// Parses CKS's format: `[0-9]+(\.[0-9]+)*` with at least three parts (more are ignored, as
    /// CKS ignores them).
    pub fn parse(text: &str) -> Option<Semver> {
        let text = text.trim().trim_start_matches('v');
        let parts: Vec<&str> = text.split('.').collect();
        if parts.len() < 3
            || parts
                .iter()
                .any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()))
        {
            return None;
        }
        Some(Semver {
            major: parts[0].parse().ok()?,
            minor: parts[1].parse().ok()?,
            patch: parts[2].parse().ok()?,
        })
    }

    /// A version.
    pub const fn new(major: u64, minor: u64, patch: u64) -> Semver {
        Semver {
            major,
            minor,
            patch,
        }
    }
}

impl std::fmt::Display for Semver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The oldest version CKS accepts.
pub const MIN_SUPPORTED: Semver = Semver::new(1, 11, 0);
/// The first version with HA control planes.
pub const MIN_HA: Semver = Semver::new(1, 16, 0);
/// The first version with the cluster autoscaler.
pub const MIN_AUTOSCALING: Semver = Semver::new(1, 15, 0);

/// True when the version supports several control nodes.
pub fn supports_ha(version: &Semver) -> bool {
    *version >= MIN_HA
}

/// True when the version supports autoscaling (numerically, unlike CKS).
pub fn supports_autoscaling(version: &str) -> bool {
    Semver::parse(version).is_some_and(|v| v >= MIN_AUTOSCALING)
}

/// Compares two version texts numerically; unparsable ones sort first.
pub fn compare(a: &str, b: &str) -> Ordering {
    Semver::parse(a).cmp(&Semver::parse(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert!(Semver::parse("1.9.0") < Semver::parse("1.15.0"));
        assert!(!supports_autoscaling("1.9.0"));
        assert!(supports_autoscaling("v1.15.0"));
        assert_eq!(compare("1.33.1", "1.33.10"), Ordering::Less);
    }

    #[test]
    fn the_format_needs_three_numeric_parts() {
        assert_eq!(Semver::parse("1.33"), None);
        assert_eq!(Semver::parse("1.33.x"), None);
        assert_eq!(Semver::parse("1..3"), None);
        assert_eq!(Semver::parse("1.33.1.4"), Some(Semver::new(1, 33, 1)));
    }
}
