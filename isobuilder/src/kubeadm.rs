//! kubeadm's image set per Kubernetes minor version, as data.
//!
//! CloudStack's script runs `kubeadm config images list` at build time, which executes a
//! downloaded binary (impossible for cross-arch builds). This table is what that command prints
//! for the latest patch of each minor; a spec can override the `pause`, `etcd` and `coredns`
//! tags (`[images.kubeadm_tags]`) for patch releases that moved them.

use std::collections::BTreeMap;

use cks_proto::ids::KubeVersion;

/// Tags kubeadm uses for one minor: (minor, pause, etcd, coredns).
const TABLE: &[(u64, &str, &str, &str)] = &[
    (27, "3.9", "3.5.12-0", "v1.10.1"),
    (28, "3.9", "3.5.15-0", "v1.10.1"),
    (29, "3.9", "3.5.16-0", "v1.11.1"),
    (30, "3.9", "3.5.15-0", "v1.11.3"),
    (31, "3.10", "3.5.15-0", "v1.11.3"),
    (32, "3.10", "3.5.16-0", "v1.11.3"),
    (33, "3.10", "3.5.21-0", "v1.12.0"),
    (34, "3.10.1", "3.6.4-0", "v1.12.1"),
];

/// The registry kubeadm pulls from since 1.25.
pub const REGISTRY: &str = "registry.k8s.io";

/// A version the table does not know.
#[derive(Debug, thiserror::Error)]
#[error(
    "no built-in kubeadm image table for Kubernetes {version} (known: 1.{}–1.{}); set images.kubeadm = false and list the images in images.extra",
    TABLE[0].0,
    TABLE[TABLE.len() - 1].0
)]
pub struct UnknownVersion {
    version: KubeVersion,
}

/// The images `kubeadm config images list --kubernetes-version v<version>` prints.
///
/// # Errors
/// [`UnknownVersion`] outside the table (major ≠ 1 or an unknown minor).
pub fn images_for(
    version: &KubeVersion,
    overrides: &BTreeMap<String, String>,
) -> Result<Vec<String>, UnknownVersion> {
    let row = TABLE
        .iter()
        .find(|row| version.major() == 1 && row.0 == version.minor())
        .ok_or_else(|| UnknownVersion {
            version: version.clone(),
        })?;
    let tag = |name: &str, default: &str| {
        overrides
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    Ok(vec![
        format!("{REGISTRY}/kube-apiserver:v{version}"),
        format!("{REGISTRY}/kube-controller-manager:v{version}"),
        format!("{REGISTRY}/kube-scheduler:v{version}"),
        format!("{REGISTRY}/kube-proxy:v{version}"),
        format!("{REGISTRY}/coredns/coredns:{}", tag("coredns", row.3)),
        format!("{REGISTRY}/pause:{}", tag("pause", row.1)),
        format!("{REGISTRY}/etcd:{}", tag("etcd", row.2)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_kubeadm_for_1_33() {
        let v: KubeVersion = "1.33.1".parse().unwrap();
        let images = images_for(&v, &BTreeMap::new()).unwrap();
        assert_eq!(
            images,
            [
                "registry.k8s.io/kube-apiserver:v1.33.1",
                "registry.k8s.io/kube-controller-manager:v1.33.1",
                "registry.k8s.io/kube-scheduler:v1.33.1",
                "registry.k8s.io/kube-proxy:v1.33.1",
                "registry.k8s.io/coredns/coredns:v1.12.0",
                "registry.k8s.io/pause:3.10",
                "registry.k8s.io/etcd:3.5.21-0",
            ]
        );
    }

    #[test]
    fn overrides_and_unknown_versions() {
        let v: KubeVersion = "1.30.2".parse().unwrap();
        let o = BTreeMap::from([("etcd".to_string(), "3.5.12-0".to_string())]);
        assert!(
            images_for(&v, &o)
                .unwrap()
                .contains(&"registry.k8s.io/etcd:3.5.12-0".to_string())
        );
        let old: KubeVersion = "1.9.0".parse().unwrap();
        assert!(
            images_for(&old, &o)
                .unwrap_err()
                .to_string()
                .contains("images.extra")
        );
    }
}
