//! The `cloud.kubernetes.*` global settings (cks-reference §4.3), with CKS's names, types,
//! defaults and scopes, stored in the controller's store and read on every use, so the dynamic
//! ones take effect without a restart.
//!
//! `listConfigurations` / `updateConfiguration` for these keys are answered here; every other
//! key goes to CloudStack.

use std::sync::Arc;
use std::time::Duration;

use crate::store::{Store, StoreError};

/// Scope of a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One value for the whole cloud.
    Global,
    /// A global default with per-account overrides (`updateConfiguration accountid=…`).
    Account,
}

/// The value type, checked on update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `true` / `false`.
    Boolean,
    /// A whole number (≥ 0).
    Integer,
    /// Free text.
    Text,
}

impl Kind {
    /// CloudStack's `type` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Boolean => "Boolean",
            Self::Integer => "Long",
            Self::Text => "String",
        }
    }
}

/// A known setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Definition {
    /// The key.
    pub name: &'static str,
    /// Value type.
    pub kind: Kind,
    /// Default value.
    pub default: &'static str,
    /// Global or per account.
    pub scope: Scope,
    /// False when a change needs a controller restart (as in CKS).
    pub dynamic: bool,
    /// What it does.
    pub description: &'static str,
}

/// `cloud.kubernetes.service.enabled`.
pub const SERVICE_ENABLED: &str = "cloud.kubernetes.service.enabled";
/// `cloud.kubernetes.cluster.network.offering`.
pub const NETWORK_OFFERING: &str = "cloud.kubernetes.cluster.network.offering";
/// `cloud.kubernetes.cluster.start.timeout`.
pub const START_TIMEOUT: &str = "cloud.kubernetes.cluster.start.timeout";
/// `cloud.kubernetes.cluster.scale.timeout`.
pub const SCALE_TIMEOUT: &str = "cloud.kubernetes.cluster.scale.timeout";
/// `cloud.kubernetes.cluster.upgrade.timeout`.
pub const UPGRADE_TIMEOUT: &str = "cloud.kubernetes.cluster.upgrade.timeout";
/// `cloud.kubernetes.cluster.upgrade.retries`.
pub const UPGRADE_RETRIES: &str = "cloud.kubernetes.cluster.upgrade.retries";
/// `cloud.kubernetes.cluster.experimental.features.enabled`.
pub const EXPERIMENTAL_FEATURES: &str = "cloud.kubernetes.cluster.experimental.features.enabled";
/// `cloud.kubernetes.cluster.max.size`.
pub const MAX_SIZE: &str = "cloud.kubernetes.cluster.max.size";
/// `cloud.kubernetes.control.node.install.attempt.wait.duration`.
pub const CONTROL_INSTALL_WAIT: &str =
    "cloud.kubernetes.control.node.install.attempt.wait.duration";
/// `cloud.kubernetes.control.node.install.reattempt.count`.
pub const CONTROL_INSTALL_ATTEMPTS: &str = "cloud.kubernetes.control.node.install.reattempt.count";
/// `cloud.kubernetes.worker.node.install.attempt.wait.duration`.
pub const WORKER_INSTALL_WAIT: &str = "cloud.kubernetes.worker.node.install.attempt.wait.duration";
/// `cloud.kubernetes.worker.node.install.reattempt.count`.
pub const WORKER_INSTALL_ATTEMPTS: &str = "cloud.kubernetes.worker.node.install.reattempt.count";

/// `cloud.kubernetes.cluster.reconcile.interval` (ours): seconds between reconciler passes.
pub const RECONCILE_INTERVAL: &str = "cloud.kubernetes.cluster.reconcile.interval";

/// Every setting the controller answers for, in CKS's order (ours last).
pub const DEFINITIONS: &[Definition] = &[
    Definition {
        name: SERVICE_ENABLED,
        kind: Kind::Boolean,
        default: "true",
        scope: Scope::Global,
        dynamic: true,
        description: "Indicates whether Kubernetes Service plugin is enabled or not. \
                      Management server restart needed on change in CKS; here the commands \
                      disappear at once",
    },
    Definition {
        name: NETWORK_OFFERING,
        kind: Kind::Text,
        default: "DefaultNetworkOfferingforKubernetesService",
        scope: Scope::Global,
        dynamic: false,
        description: "Name of the network offering that will be used to create isolated \
                      network in which Kubernetes cluster VMs will be launched",
    },
    Definition {
        name: START_TIMEOUT,
        kind: Kind::Integer,
        default: "3600",
        scope: Scope::Global,
        dynamic: true,
        description: "Timeout interval (in seconds) in which start operation for a \
                      Kubernetes cluster should be completed",
    },
    Definition {
        name: SCALE_TIMEOUT,
        kind: Kind::Integer,
        default: "3600",
        scope: Scope::Global,
        dynamic: true,
        description: "Timeout interval (in seconds) in which scale operation for a \
                      Kubernetes cluster should be completed",
    },
    Definition {
        name: UPGRADE_TIMEOUT,
        kind: Kind::Integer,
        default: "3600",
        scope: Scope::Global,
        dynamic: true,
        description: "Timeout interval (in seconds) in which upgrade operation for a \
                      Kubernetes cluster should be completed",
    },
    Definition {
        name: UPGRADE_RETRIES,
        kind: Kind::Integer,
        default: "3",
        scope: Scope::Global,
        dynamic: true,
        description: "The number of retries if fail to upgrade kubernetes cluster due to some \
                      reasons (e.g. drain node, etcdserver leader changed)",
    },
    Definition {
        name: "cloud.kubernetes.cluster.add.node.timeout",
        kind: Kind::Integer,
        default: "3600",
        scope: Scope::Global,
        dynamic: true,
        description: "Timeout interval (in seconds) in which an external node(VM / baremetal \
                      host) addition to a cluster should be completed. No effect here: \
                      external nodes (addNodesToKubernetesCluster) are not served yet",
    },
    Definition {
        name: "cloud.kubernetes.cluster.remove.node.timeout",
        kind: Kind::Integer,
        default: "900",
        scope: Scope::Global,
        dynamic: true,
        description: "Timeout interval (in seconds) in which an external node(VM / baremetal \
                      host) removal from a cluster should be completed. No effect here: \
                      external nodes (removeNodesFromKubernetesCluster) are not served yet",
    },
    Definition {
        name: EXPERIMENTAL_FEATURES,
        kind: Kind::Boolean,
        default: "false",
        scope: Scope::Global,
        dynamic: true,
        description: "Indicates whether experimental feature for Kubernetes cluster such as \
                      Docker private registry are enabled or not",
    },
    Definition {
        name: MAX_SIZE,
        kind: Kind::Integer,
        default: "10",
        scope: Scope::Account,
        dynamic: true,
        description: "Maximum size of the kubernetes cluster",
    },
    Definition {
        name: CONTROL_INSTALL_WAIT,
        kind: Kind::Integer,
        default: "15",
        scope: Scope::Global,
        dynamic: true,
        description: "Control nodes: seconds between two looks for the binaries ISO. Here the \
                      agent looks with backoff; this times the reattempt count is how long a \
                      control node waits for the ISO before it reports failure (set in the \
                      node's userdata when it is deployed)",
    },
    Definition {
        name: CONTROL_INSTALL_ATTEMPTS,
        kind: Kind::Integer,
        default: "100",
        scope: Scope::Global,
        dynamic: true,
        description: "Control nodes: how many looks for the binaries ISO (see the wait \
                      duration: together they bound a control node's wait for the ISO)",
    },
    Definition {
        name: WORKER_INSTALL_WAIT,
        kind: Kind::Integer,
        default: "30",
        scope: Scope::Global,
        dynamic: true,
        description: "Workers: seconds between two looks for the binaries ISO; this times the \
                      reattempt count is how long a worker waits for the ISO (set in the node's \
                      userdata when it is deployed)",
    },
    Definition {
        name: WORKER_INSTALL_ATTEMPTS,
        kind: Kind::Integer,
        default: "40",
        scope: Scope::Global,
        dynamic: true,
        description: "Workers: how many looks for the binaries ISO (see the wait duration)",
    },
    Definition {
        name: "cloud.kubernetes.etcd.node.start.port",
        kind: Kind::Integer,
        default: "50000",
        scope: Scope::Global,
        dynamic: true,
        description: "Start port for Port forwarding rules for etcd nodes. No effect here: \
                      dedicated etcd nodes are not served yet",
    },
    Definition {
        name: RECONCILE_INTERVAL,
        kind: Kind::Integer,
        default: "60",
        scope: Scope::Global,
        dynamic: true,
        description: "Seconds between two passes of the reconciler, which compares each \
                      Running or Alert cluster with CloudStack and its agents (not in CKS; at \
                      least 5)",
    },
];

/// A setting could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// Not one of ours.
    #[error("unknown setting {0}")]
    Unknown(String),
    /// Wrong type.
    #[error("invalid value {value:?} for {name}: expected {expected}")]
    InvalidValue {
        /// The key.
        name: String,
        /// The value given.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// An account override of a global-only key.
    #[error("{0} is a global setting; it has no account scope")]
    NotAccountScoped(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The settings, over the store.
#[derive(Clone)]
pub struct Settings {
    store: Arc<dyn Store>,
}

/// The definition of `name`, if it is one of ours.
pub fn definition(name: &str) -> Option<&'static Definition> {
    DEFINITIONS.iter().find(|d| d.name == name)
}

// === impl Settings ===

impl Settings {
    /// Settings stored in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Settings { store }
    }

    /// The value in effect for `name` (the account's override first, then the global value,
    /// then the default).
    ///
    /// # Errors
    /// Unknown key or a store failure.
    pub fn get(&self, name: &str, account_id: Option<&str>) -> Result<String, SettingsError> {
        let def = definition(name).ok_or_else(|| SettingsError::Unknown(name.to_string()))?;
        if def.scope == Scope::Account
            && let Some(account) = account_id
            && let Some(value) = self.store.setting(name, Some(account))?
        {
            return Ok(value);
        }
        Ok(self
            .store
            .setting(name, None)?
            .unwrap_or_else(|| def.default.to_string()))
    }

    /// A boolean setting (false when unreadable, logged).
    pub fn flag(&self, name: &str) -> bool {
        match self.get(name, None) {
            Ok(value) => value.eq_ignore_ascii_case("true"),
            Err(err) => {
                tracing::warn!(setting = name, error = %err, "cannot read setting; using false");
                false
            }
        }
    }

    /// A number setting for an account (the default when unreadable, logged).
    pub fn number(&self, name: &str, account_id: Option<&str>) -> u64 {
        let default = definition(name)
            .and_then(|d| d.default.parse().ok())
            .unwrap_or(0);
        match self.get(name, account_id) {
            Ok(value) => value.trim().parse().unwrap_or(default),
            Err(err) => {
                tracing::warn!(setting = name, error = %err, "cannot read setting; using default");
                default
            }
        }
    }

    /// A duration setting in seconds.
    pub fn seconds(&self, name: &str) -> Duration {
        Duration::from_secs(self.number(name, None))
    }

    /// Sets `name` (for an account when given), after checking the value's type.
    ///
    /// # Errors
    /// Unknown key, wrong type, account scope on a global key, or a store failure.
    pub fn set(
        &self,
        name: &str,
        account_id: Option<&str>,
        value: &str,
    ) -> Result<String, SettingsError> {
        let def = definition(name).ok_or_else(|| SettingsError::Unknown(name.to_string()))?;
        if account_id.is_some() && def.scope != Scope::Account {
            return Err(SettingsError::NotAccountScoped(name.to_string()));
        }
        let normalised = match def.kind {
            Kind::Boolean => match value.to_ascii_lowercase().as_str() {
                v @ ("true" | "false") => v.to_string(),
                _ => {
                    return Err(SettingsError::InvalidValue {
                        name: name.to_string(),
                        value: value.to_string(),
                        expected: "true or false",
                    });
                }
            },
            Kind::Integer => match value.trim().parse::<u64>() {
                Ok(n) => n.to_string(),
                Err(_) => {
                    return Err(SettingsError::InvalidValue {
                        name: name.to_string(),
                        value: value.to_string(),
                        expected: "a whole number",
                    });
                }
            },
            Kind::Text => value.to_string(),
        };
        self.store.set_setting(name, account_id, &normalised)?;
        Ok(normalised)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn settings() -> Settings {
        Settings::new(Arc::new(SqliteStore::in_memory().expect("store")))
    }

    #[test]
    fn defaults_then_global_then_account_values_apply() {
        let s = settings();
        assert_eq!(s.number(MAX_SIZE, Some("acct")), 10);
        s.set(MAX_SIZE, None, "20").expect("global");
        assert_eq!(s.number(MAX_SIZE, Some("acct")), 20);
        s.set(MAX_SIZE, Some("acct"), "3").expect("account");
        assert_eq!(s.number(MAX_SIZE, Some("acct")), 3);
        assert_eq!(s.number(MAX_SIZE, Some("other")), 20);
    }

    #[test]
    fn wrong_types_unknown_keys_and_wrong_scopes_are_refused() {
        let s = settings();
        assert!(matches!(
            s.set(SERVICE_ENABLED, None, "maybe"),
            Err(SettingsError::InvalidValue { .. })
        ));
        assert!(matches!(
            s.set(START_TIMEOUT, None, "-1"),
            Err(SettingsError::InvalidValue { .. })
        ));
        assert!(matches!(
            s.set("cloud.kubernetes.nope", None, "1"),
            Err(SettingsError::Unknown(_))
        ));
        assert!(matches!(
            s.set(START_TIMEOUT, Some("acct"), "10"),
            Err(SettingsError::NotAccountScoped(_))
        ));
        assert_eq!(s.set(SERVICE_ENABLED, None, "FALSE").expect("set"), "false");
        assert!(!s.flag(SERVICE_ENABLED));
    }
}
