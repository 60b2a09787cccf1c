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

/// CKS's upgrade rule (`canUpgradeKubernetesVersion`): never down, and only to the next minor
/// or a patch of the same minor. The same version passes, as in CKS (here it continues an
/// upgrade that stopped part-way).
///
/// # Errors
/// CKS's text for the rule broken.
pub fn check_upgrade(current: &Semver, target: &Semver) -> Result<(), String> {
    if target < current {
        return Err(format!(
            "Kubernetes clusters can not be downgraded, current version: {current}, upgrade version: {target}"
        ));
    }
    if target.major != current.major || target.minor > current.minor + 1 {
        return Err(format!(
            "Kubernetes clusters can be upgraded between next minor or patch version releases, current version: {current}, upgrade version: {target}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrades_go_one_minor_at_a_time_and_never_down() {
        let v = |s: &str| Semver::parse(s).expect("version");
        assert!(check_upgrade(&v("1.33.1"), &v("1.34.0")).is_ok());
        assert!(check_upgrade(&v("1.33.1"), &v("1.33.4")).is_ok());
        assert!(check_upgrade(&v("1.33.1"), &v("1.33.1")).is_ok());
        assert_eq!(
            check_upgrade(&v("1.34.0"), &v("1.33.1")).unwrap_err(),
            "Kubernetes clusters can not be downgraded, current version: 1.34.0, upgrade version: 1.33.1"
        );
        assert!(
            check_upgrade(&v("1.32.0"), &v("1.34.0"))
                .unwrap_err()
                .starts_with("Kubernetes clusters can be upgraded between next minor or patch")
        );
        assert!(check_upgrade(&v("1.33.0"), &v("2.0.0")).is_err());
    }

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
