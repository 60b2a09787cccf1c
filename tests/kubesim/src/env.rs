//! The environment every stand-in runs in. A simulated VM sets these for each of its
//! processes; nothing else in the crate reads the environment.
//!
//! | variable | meaning |
//! |---|---|
//! | `KUBESIM_ROOT` | the node's root directory; every node path (`/etc/kubernetes/…`) is below it (required) |
//! | `KUBESIM_CLUSTER` | a directory shared by all simulated nodes, standing in for etcd; clusters are kept apart inside it by their CA (required) |
//! | `KUBESIM_BIN` | the directory with the kubesim binaries (`kubeadm`, `kubelet`, `kube-apiserver`, `kube-controller-manager`, `systemctl`); when unset, kubeadm does not start the kubelet and the kubelet runs no static pod processes |
//! | `KUBESIM_VERSION` | the Kubernetes version this binary is (`v1.33.1`), set by the bundle's wrappers |
//! | `KUBESIM_ADVERTISE_ADDRESS` | the node's IP when kubeadm is not told one (default: the address of the default route, as kubeadm) |
//! | `HOSTNAME` | the VM's host name (the kubelet's last resort for its node name) |

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The node's root directory.
pub const ENV_ROOT: &str = "KUBESIM_ROOT";
/// The shared cluster directory.
pub const ENV_CLUSTER: &str = "KUBESIM_CLUSTER";
/// The directory of the kubesim binaries.
pub const ENV_BIN: &str = "KUBESIM_BIN";
/// The Kubernetes version of the running binary.
pub const ENV_VERSION: &str = "KUBESIM_VERSION";
/// The node's address when no flag names it.
pub const ENV_ADVERTISE_ADDRESS: &str = "KUBESIM_ADVERTISE_ADDRESS";
/// The version when `KUBESIM_VERSION` is unset.
pub const DEFAULT_VERSION: &str = "v1.33.1";

/// Why the environment is unusable.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// A required variable is not set.
    #[error("{0} must be set (this is a kubesim stand-in; it only runs inside a simulated node)")]
    Missing(&'static str),
    /// A variable has a value that cannot be used.
    #[error("{name} has an invalid value {value:?}: {reason}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// Why.
        reason: &'static str,
    },
}

/// What a stand-in knows about the node it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEnv {
    /// `KUBESIM_ROOT`.
    pub root: PathBuf,
    /// `KUBESIM_CLUSTER`.
    pub cluster_base: PathBuf,
    /// `KUBESIM_BIN`, if set.
    pub bin: Option<PathBuf>,
    /// `KUBESIM_VERSION`, or [`DEFAULT_VERSION`]; always with a leading `v`.
    pub version: String,
    /// `KUBESIM_ADVERTISE_ADDRESS`, if set.
    pub advertise_address: Option<IpAddr>,
    /// `HOSTNAME`, if set: a simulated VM's host name.
    pub hostname: Option<String>,
}

impl NodeEnv {
    /// Reads the process environment.
    ///
    /// # Errors
    /// A required variable is missing or a value is invalid.
    pub fn from_env() -> Result<NodeEnv, EnvError> {
        NodeEnv::from_source(|name| std::env::var_os(name))
    }

    /// Reads the variables through `get` (tests pass a map).
    ///
    /// # Errors
    /// A required variable is missing or a value is invalid.
    pub fn from_source(get: impl Fn(&str) -> Option<OsString>) -> Result<NodeEnv, EnvError> {
        let non_empty = |name: &str| get(name).filter(|v| !v.is_empty());
        let root = non_empty(ENV_ROOT).ok_or(EnvError::Missing(ENV_ROOT))?;
        let cluster = non_empty(ENV_CLUSTER).ok_or(EnvError::Missing(ENV_CLUSTER))?;
        let version = match non_empty(ENV_VERSION) {
            Some(v) => {
                let v = v.to_string_lossy().into_owned();
                let bare = v.trim_start_matches('v');
                let valid = bare.split('.').count() == 3
                    && bare
                        .split('.')
                        .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
                if !valid {
                    return Err(EnvError::Invalid {
                        name: ENV_VERSION,
                        value: v,
                        reason: "expected vMAJOR.MINOR.PATCH",
                    });
                }
                format!("v{bare}")
            }
            None => DEFAULT_VERSION.to_string(),
        };
        let advertise_address = match non_empty(ENV_ADVERTISE_ADDRESS) {
            Some(v) => {
                let text = v.to_string_lossy().into_owned();
                Some(text.parse().map_err(|_| EnvError::Invalid {
                    name: ENV_ADVERTISE_ADDRESS,
                    value: text,
                    reason: "expected an IP address",
                })?)
            }
            None => None,
        };
        Ok(NodeEnv {
            hostname: non_empty("HOSTNAME").map(|h| h.to_string_lossy().into_owned()),
            root: root.into(),
            cluster_base: cluster.into(),
            bin: non_empty(ENV_BIN).map(PathBuf::from),
            version,
            advertise_address,
        })
    }

    /// Where the node path `absolute` (`/etc/kubernetes/admin.conf`) is on this machine.
    pub fn host_path(&self, absolute: impl AsRef<Path>) -> PathBuf {
        node_path(&self.root, absolute)
    }

    /// The kubesim binary `name`, when `KUBESIM_BIN` is set and holds it.
    pub fn binary(&self, name: &str) -> Option<PathBuf> {
        self.bin
            .as_ref()
            .map(|b| b.join(name))
            .filter(|p| p.is_file())
    }

    /// The variables to hand to a child process so that it sees the same node. Not
    /// `KUBESIM_VERSION`: a child is whatever version its own wrapper or manifest says.
    pub fn to_vars(&self) -> Vec<(&'static str, OsString)> {
        let mut vars = vec![
            (ENV_ROOT, self.root.clone().into_os_string()),
            (ENV_CLUSTER, self.cluster_base.clone().into_os_string()),
        ];
        if let Some(bin) = &self.bin {
            vars.push((ENV_BIN, bin.clone().into_os_string()));
        }
        if let Some(ip) = self.advertise_address {
            vars.push((ENV_ADVERTISE_ADDRESS, OsString::from(ip.to_string())));
        }
        vars
    }
}

/// `absolute` (a node path) below `root`.
pub fn node_path(root: &Path, absolute: impl AsRef<Path>) -> PathBuf {
    let relative = absolute
        .as_ref()
        .strip_prefix("/")
        .unwrap_or(absolute.as_ref());
    root.join(relative)
}

/// The address of the interface holding the default route, as kubeadm and the kubelet pick
/// it; `None` without a default route. No packet is sent (a UDP socket is only connected).
pub fn default_route_address() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

/// This machine's architecture as Go and Kubernetes name it (`amd64`, `arm64`).
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Whether `ip` belongs to this machine (or network namespace): it can be bound.
pub fn is_local_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind((ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn source(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn root_and_cluster_are_required_and_the_version_is_normalised() {
        assert!(matches!(
            NodeEnv::from_source(source(&[(ENV_CLUSTER, "/c")])),
            Err(EnvError::Missing(ENV_ROOT))
        ));
        let env = NodeEnv::from_source(source(&[
            (ENV_ROOT, "/n"),
            (ENV_CLUSTER, "/c"),
            (ENV_VERSION, "1.34.0"),
        ]))
        .unwrap();
        assert_eq!(env.version, "v1.34.0");
        assert_eq!(env.bin, None);
        assert_eq!(
            env.host_path("/etc/kubernetes"),
            Path::new("/n/etc/kubernetes")
        );
        assert!(
            NodeEnv::from_source(source(&[
                (ENV_ROOT, "/n"),
                (ENV_CLUSTER, "/c"),
                (ENV_VERSION, "latest"),
            ]))
            .is_err()
        );
    }
}
