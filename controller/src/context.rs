//! What every part of the controller works with: the store, settings, CloudStack, the agent hub,
//! the sealer, jobs, and the node-facing facts (agent addresses, node template).

use std::sync::Arc;
use std::time::Duration;

use crate::agents::Agents;
use crate::cloud::Cloud;
use crate::jobs::Jobs;
use crate::seal::Sealer;
use crate::settings::Settings;
use crate::store::Store;

/// How long a node's enrollment token is valid after the VM is deployed.
pub const DEFAULT_ENROLLMENT_TTL: Duration = Duration::from_secs(3600);

/// Shared by the API, the workflow engine and the reconciler. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// `cloud.kubernetes.*` settings.
    pub settings: Settings,
    /// CloudStack.
    pub cloud: Cloud,
    /// The nodes' agents.
    pub agents: Arc<dyn Agents>,
    /// Secrets at rest.
    pub sealer: Arc<Sealer>,
    /// Async jobs.
    pub jobs: Jobs,
    /// What nodes need to know.
    pub nodes: NodeDefaults,
}

/// Facts about nodes that come from the controller's configuration.
#[derive(Debug, Clone)]
pub struct NodeDefaults {
    /// Agent endpoint `host:port` addresses written into node userdata.
    pub agent_addresses: Vec<String>,
    /// The node template (name or id) used when a cluster names none.
    pub template: String,
    /// Enrollment token lifetime.
    pub enrollment_ttl: Duration,
    /// Pod network CIDR given to `kubeadm init`.
    pub pod_cidr: String,
    /// Service CIDR given to `kubeadm init`.
    pub service_cidr: String,
}
