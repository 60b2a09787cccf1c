//! The controller's durable state: supported versions, clusters and their nodes, async jobs,
//! workflows with their step journal, settings, sealed secrets and enrollment tokens.
//!
//! [`Store`] is the interface; [`sqlite::SqliteStore`] is the default backend (one file, no
//! setup). Records are plain serde structs: a backend keeps each one as a JSON document beside
//! the few columns it filters on, so a PostgreSQL backend is the same dozen statements.
//!
//! # Guarantees
//! * Every write is atomic; [`Store::save_progress`] writes a workflow's step journal together
//!   with the cluster and node records the step changed, in one transaction, so a crash can never
//!   leave a step "done" without its effect recorded (or the reverse).
//! * [`Store::set_cluster_state`] is a compare-and-set: two operations can never both move a
//!   cluster out of the same state.

pub mod sqlite;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use self::sqlite::SqliteStore;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or migrated.
    #[error("failed to open the store at {path}")]
    Open {
        /// The database path.
        path: String,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// A statement failed.
    #[error("store {operation} failed")]
    Query {
        /// What was attempted (`insert cluster`, …).
        operation: &'static str,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// A stored document could not be read back.
    #[error("stored {kind} {id} is unreadable")]
    Corrupt {
        /// Record kind.
        kind: &'static str,
        /// Record id.
        id: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A record that must exist does not.
    #[error("{kind} {id} not found in the store")]
    NotFound {
        /// Record kind.
        kind: &'static str,
        /// Record id.
        id: String,
    },
}

/// Seconds since the Unix epoch.
pub type UnixTime = i64;

/// Now, in seconds since the Unix epoch.
pub fn now() -> UnixTime {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// CloudStack's date format (`2026-11-24T13:53:25+0000`) for a Unix time.
pub fn cloudstack_date(at: UnixTime) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]+0000");
    time::OffsetDateTime::from_unix_timestamp(at)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

// === Supported versions ===

/// `Enabled` or `Disabled`, as CKS spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VersionState {
    /// Clusters may be created with / upgraded to it.
    Enabled,
    /// Kept for existing clusters only.
    Disabled,
}

/// A Kubernetes version an admin registered (`addKubernetesSupportedVersion`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// UUID.
    pub id: String,
    /// Display name (default `v<semver>`).
    pub name: String,
    /// `MAJOR.MINOR.PATCH`.
    pub semantic_version: String,
    /// The binaries ISO registered in CloudStack.
    pub iso_id: String,
    /// Its name there (`<name>-Kubernetes-Binaries-ISO`).
    pub iso_name: String,
    /// The zone, or `None` for all zones.
    pub zone_id: Option<String>,
    /// Enabled / Disabled.
    pub state: VersionState,
    /// Minimum vCPUs of a node offering.
    pub min_cpu: u32,
    /// Minimum RAM of a node offering, MB.
    pub min_memory_mb: u32,
    /// `x86_64` or `aarch64`.
    pub arch: String,
    /// Where CloudStack downloads the ISO from.
    pub url: String,
    /// `{SHA-256}<hex>` (or MD5) given at registration, if any.
    pub checksum: Option<String>,
    /// Direct download ISO.
    pub direct_download: bool,
    /// Creation time.
    pub created: UnixTime,
}

// === Clusters ===

/// The public CKS cluster states (cks-reference §3.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ClusterState {
    /// Recorded; no resource exists yet.
    Created,
    /// Being provisioned (create or start).
    Starting,
    /// Every node is Ready and the kubeconfig is stored.
    Running,
    /// VMs are being stopped.
    Stopping,
    /// Every VM is stopped.
    Stopped,
    /// Size or offering change on a running cluster.
    Scaling,
    /// Offering change on a stopped cluster.
    ScalingStoppedCluster,
    /// Version upgrade in progress.
    Upgrading,
    /// Something is not as desired (a VM down, a node not Ready).
    Alert,
    /// Reconciling from Alert.
    Recovering,
    /// Resources are being removed.
    Destroying,
    /// Gone (kept as a soft-deleted row).
    Destroyed,
    /// Creation failed.
    Error,
}

impl ClusterState {
    /// The name CKS uses in responses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "Created",
            Self::Starting => "Starting",
            Self::Running => "Running",
            Self::Stopping => "Stopping",
            Self::Stopped => "Stopped",
            Self::Scaling => "Scaling",
            Self::ScalingStoppedCluster => "ScalingStoppedCluster",
            Self::Upgrading => "Upgrading",
            Self::Alert => "Alert",
            Self::Recovering => "Recovering",
            Self::Destroying => "Destroying",
            Self::Destroyed => "Destroyed",
            Self::Error => "Error",
        }
    }

    /// Parses a CKS state name (case-insensitive, as CloudStack's list filters are).
    pub fn parse(text: &str) -> Option<Self> {
        const ALL: [ClusterState; 13] = [
            ClusterState::Created,
            ClusterState::Starting,
            ClusterState::Running,
            ClusterState::Stopping,
            ClusterState::Stopped,
            ClusterState::Scaling,
            ClusterState::ScalingStoppedCluster,
            ClusterState::Upgrading,
            ClusterState::Alert,
            ClusterState::Recovering,
            ClusterState::Destroying,
            ClusterState::Destroyed,
            ClusterState::Error,
        ];
        ALL.into_iter()
            .find(|state| state.as_str().eq_ignore_ascii_case(text))
    }
}

impl fmt::Display for ClusterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who owns a cluster (CloudStack's account model).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Account name.
    pub account: String,
    /// Account id.
    pub account_id: String,
    /// Domain id.
    pub domain_id: String,
    /// Domain name (for responses).
    pub domain: String,
    /// The user who created the cluster.
    pub user_id: String,
}

/// A private registry the nodes pull from (experimental in CKS). The password is a secret,
/// kept sealed in the secrets table, never here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryRef {
    /// Registry URL.
    pub url: String,
    /// User name.
    pub username: String,
}

/// A Kubernetes cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// UUID.
    pub id: String,
    /// Name (no uniqueness rule, as in CKS).
    pub name: String,
    /// Description.
    pub description: String,
    /// Zone.
    pub zone_id: String,
    /// Supported version.
    pub version_id: String,
    /// Node service offering.
    pub service_offering_id: String,
    /// Node template.
    pub template_id: String,
    /// Owner.
    pub owner: Owner,
    /// Control nodes.
    pub control_nodes: u32,
    /// Workers.
    pub size: u32,
    /// Root disk size of the nodes, GB.
    pub node_root_disk_size: Option<u64>,
    /// SSH key pair name (the user's own access).
    pub keypair: Option<String>,
    /// The cluster's network (given or created).
    pub network_id: Option<String>,
    /// True when the controller created the network (and deletes it with the cluster).
    pub network_created: bool,
    /// `Isolated` or `Shared`, read at create time.
    pub network_type: Option<String>,
    /// External load balancer IP (shared networks).
    pub external_lb_ip: Option<String>,
    /// Public IP id (isolated networks).
    pub public_ip_id: Option<String>,
    /// The address the API server is reached at (public IP, external LB IP, or control node).
    pub server_ip: Option<String>,
    /// `https://<server ip>:6443/` once known.
    pub endpoint: Option<String>,
    /// Private registry, when given.
    pub registry: Option<RegistryRef>,
    /// Public state.
    pub state: ClusterState,
    /// Why the last operation failed (named step and cause), shown to the user.
    pub failure: Option<String>,
    /// Creation time.
    pub created: UnixTime,
}

/// The role of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeRole {
    /// Runs the control plane.
    Control,
    /// Runs workloads.
    Worker,
}

impl NodeRole {
    /// `control` / `worker`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Control => "control",
            Self::Worker => "worker",
        }
    }
}

/// One node of a cluster. The name is chosen before the VM is deployed, so a resumed deploy
/// step finds a VM a crashed run already made by its name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Cluster id.
    pub cluster_id: String,
    /// VM name = host name = Kubernetes node name.
    pub name: String,
    /// Control or worker.
    pub role: NodeRole,
    /// Position among the cluster's nodes (control nodes first).
    pub ordinal: u32,
    /// The VM, once deployed.
    pub vm_id: Option<String>,
    /// The VM's address on the cluster network.
    pub ip: Option<String>,
    /// Joined the cluster (init or join finished).
    pub joined: bool,
    /// kubelet version last reported.
    pub kubernetes_version: Option<String>,
}

// === Jobs ===

/// CloudStack's `jobstatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobStatus {
    /// 0.
    Pending,
    /// 1.
    Succeeded,
    /// 2.
    Failed,
}

impl JobStatus {
    /// The number CloudStack uses.
    pub fn code(self) -> u8 {
        match self {
            Self::Pending => 0,
            Self::Succeeded => 1,
            Self::Failed => 2,
        }
    }
}

/// An async job of the controller's API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// UUID.
    pub id: String,
    /// The API command (`createKubernetesCluster`).
    pub command: String,
    /// CloudStack's `cmd` field (the Java class name CKS would report).
    pub cmd: String,
    /// Who submitted it.
    pub user_id: String,
    /// Their account id.
    pub account_id: String,
    /// Their account name.
    pub account: String,
    /// Their domain id.
    pub domain_id: String,
    /// `KubernetesCluster`, `KubernetesSupportedVersion`.
    pub instance_type: String,
    /// The entity.
    pub instance_id: String,
    /// Status.
    pub status: JobStatus,
    /// 0, or the error code.
    pub result_code: u16,
    /// `jobresult` once finished.
    pub result: Option<serde_json::Value>,
    /// Submission time.
    pub created: UnixTime,
    /// Completion time.
    pub completed: Option<UnixTime>,
}

// === Workflows ===

/// What a workflow does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkflowKind {
    /// `createKubernetesCluster`.
    Create,
    /// `deleteKubernetesCluster`.
    Delete,
    /// `startKubernetesCluster` (of a stopped cluster).
    Start,
    /// `stopKubernetesCluster`.
    Stop,
}

impl WorkflowKind {
    /// Lower-case name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Delete => "delete",
            Self::Start => "start",
            Self::Stop => "stop",
        }
    }
}

/// Where a workflow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkflowStatus {
    /// Steps remain; a controller (re)start resumes it.
    Running,
    /// Every step is done.
    Succeeded,
    /// A step failed for good.
    Failed,
}

/// Where a step is. A step recorded `Started` but not `Done` was interrupted: its side effect
/// may or may not have happened, and running it again must find what it made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepStatus {
    /// Began; its effect may be partial.
    Started,
    /// Finished, its outcome recorded.
    Done,
    /// Failed for good.
    Failed,
}

/// One step of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Step name (`deploy-nodes`).
    pub name: String,
    /// Status.
    pub status: StepStatus,
    /// How many times it was started.
    pub attempts: u32,
    /// Human-readable detail (what it made, or why it failed).
    pub detail: String,
    /// Last change.
    pub updated: UnixTime,
}

/// A durable operation on one cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowRecord {
    /// UUID.
    pub id: String,
    /// What it does.
    pub kind: WorkflowKind,
    /// The cluster.
    pub cluster_id: String,
    /// The API job that reports it.
    pub job_id: String,
    /// Status.
    pub status: WorkflowStatus,
    /// The step journal, in execution order.
    pub steps: Vec<StepRecord>,
    /// Deadline (Unix time) after which it fails.
    pub deadline: UnixTime,
    /// Creation time.
    pub created: UnixTime,
}

impl WorkflowRecord {
    /// The journal entry of `step`, if it ever started.
    pub fn step(&self, name: &str) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// True when `step` finished.
    pub fn is_done(&self, name: &str) -> bool {
        self.step(name)
            .is_some_and(|s| s.status == StepStatus::Done)
    }

    /// Records that `name` starts (again).
    pub fn start_step(&mut self, name: &str) {
        let at = now();
        match self.steps.iter_mut().find(|s| s.name == name) {
            Some(step) => {
                step.status = StepStatus::Started;
                step.attempts += 1;
                step.updated = at;
            }
            None => self.steps.push(StepRecord {
                name: name.to_string(),
                status: StepStatus::Started,
                attempts: 1,
                detail: String::new(),
                updated: at,
            }),
        }
    }

    /// Records the end of `name`.
    pub fn finish_step(&mut self, name: &str, status: StepStatus, detail: impl Into<String>) {
        let at = now();
        if let Some(step) = self.steps.iter_mut().find(|s| s.name == name) {
            step.status = status;
            step.detail = detail.into();
            step.updated = at;
        }
    }
}

/// A workflow's step outcome and the records it changed, written in one transaction.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// The workflow with its updated journal.
    pub workflow: &'a WorkflowRecord,
    /// The cluster, when the step changed it.
    pub cluster: Option<&'a ClusterRecord>,
    /// Nodes the step added or changed.
    pub nodes: &'a [NodeRecord],
}

// === The interface ===

/// The controller's durable state. Implementations are internally synchronised; every method
/// is one atomic operation.
pub trait Store: Send + Sync + 'static {
    // --- versions ---
    /// Adds a version.
    ///
    /// # Errors
    /// The write failed.
    fn insert_version(&self, version: &VersionRecord) -> Result<(), StoreError>;
    /// Replaces a version.
    ///
    /// # Errors
    /// The write failed.
    fn update_version(&self, version: &VersionRecord) -> Result<(), StoreError>;
    /// A version that is not removed.
    ///
    /// # Errors
    /// The read failed.
    fn version(&self, id: &str) -> Result<Option<VersionRecord>, StoreError>;
    /// Every version that is not removed, oldest first.
    ///
    /// # Errors
    /// The read failed.
    fn versions(&self) -> Result<Vec<VersionRecord>, StoreError>;
    /// Removes a version (soft).
    ///
    /// # Errors
    /// The write failed.
    fn remove_version(&self, id: &str) -> Result<(), StoreError>;

    // --- clusters ---
    /// Adds a cluster.
    ///
    /// # Errors
    /// The write failed.
    fn insert_cluster(&self, cluster: &ClusterRecord) -> Result<(), StoreError>;
    /// Replaces a cluster's record (not its state: see [`Store::set_cluster_state`]).
    ///
    /// # Errors
    /// The write failed.
    fn update_cluster(&self, cluster: &ClusterRecord) -> Result<(), StoreError>;
    /// Moves a cluster from `from` to `to` if it is in `from`; true when it moved.
    ///
    /// # Errors
    /// The write failed.
    fn set_cluster_state(
        &self,
        id: &str,
        from: ClusterState,
        to: ClusterState,
        failure: Option<&str>,
    ) -> Result<bool, StoreError>;
    /// A cluster (also a destroyed one).
    ///
    /// # Errors
    /// The read failed.
    fn cluster(&self, id: &str) -> Result<Option<ClusterRecord>, StoreError>;
    /// Every cluster not Destroyed, oldest first.
    ///
    /// # Errors
    /// The read failed.
    fn clusters(&self) -> Result<Vec<ClusterRecord>, StoreError>;

    // --- nodes ---
    /// Adds or replaces a node.
    ///
    /// # Errors
    /// The write failed.
    fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError>;
    /// A cluster's nodes, by ordinal.
    ///
    /// # Errors
    /// The read failed.
    fn nodes(&self, cluster_id: &str) -> Result<Vec<NodeRecord>, StoreError>;
    /// Removes a node.
    ///
    /// # Errors
    /// The write failed.
    fn delete_node(&self, cluster_id: &str, name: &str) -> Result<(), StoreError>;
    /// The node whose VM is `vm_id`, in any cluster. Asked only when someone tries to destroy
    /// a VM through the API, so a scan is fine.
    ///
    /// # Errors
    /// The read failed.
    fn node_by_vm(&self, vm_id: &str) -> Result<Option<NodeRecord>, StoreError> {
        for cluster in self.clusters()? {
            if let Some(node) = self
                .nodes(&cluster.id)?
                .into_iter()
                .find(|n| n.vm_id.as_deref() == Some(vm_id))
            {
                return Ok(Some(node));
            }
        }
        Ok(None)
    }

    // --- jobs ---
    /// Adds or replaces a job.
    ///
    /// # Errors
    /// The write failed.
    fn put_job(&self, job: &JobRecord) -> Result<(), StoreError>;
    /// A job.
    ///
    /// # Errors
    /// The read failed.
    fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError>;
    /// Every job, newest first.
    ///
    /// # Errors
    /// The read failed.
    fn jobs(&self) -> Result<Vec<JobRecord>, StoreError>;

    // --- workflows ---
    /// Adds a workflow.
    ///
    /// # Errors
    /// The write failed.
    fn insert_workflow(&self, workflow: &WorkflowRecord) -> Result<(), StoreError>;
    /// Records a step's outcome with the records it changed, atomically.
    ///
    /// # Errors
    /// The write failed (nothing of it was written).
    fn save_progress(&self, progress: Progress<'_>) -> Result<(), StoreError>;
    /// A workflow.
    ///
    /// # Errors
    /// The read failed.
    fn workflow(&self, id: &str) -> Result<Option<WorkflowRecord>, StoreError>;
    /// Workflows still running (to resume after a restart), oldest first.
    ///
    /// # Errors
    /// The read failed.
    fn running_workflows(&self) -> Result<Vec<WorkflowRecord>, StoreError>;
    /// The newest workflow of a cluster.
    ///
    /// # Errors
    /// The read failed.
    fn latest_workflow(&self, cluster_id: &str) -> Result<Option<WorkflowRecord>, StoreError>;

    // --- settings ---
    /// A stored setting value (global when `account_id` is `None`).
    ///
    /// # Errors
    /// The read failed.
    fn setting(&self, key: &str, account_id: Option<&str>) -> Result<Option<String>, StoreError>;
    /// Stores a setting value.
    ///
    /// # Errors
    /// The write failed.
    fn set_setting(
        &self,
        key: &str,
        account_id: Option<&str>,
        value: &str,
    ) -> Result<(), StoreError>;

    // --- secrets ---
    /// Stores a sealed secret of a cluster.
    ///
    /// # Errors
    /// The write failed.
    fn put_secret(&self, cluster_id: &str, name: &str, sealed: &[u8]) -> Result<(), StoreError>;
    /// A sealed secret.
    ///
    /// # Errors
    /// The read failed.
    fn secret(&self, cluster_id: &str, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Drops every secret of a cluster.
    ///
    /// # Errors
    /// The write failed.
    fn delete_secrets(&self, cluster_id: &str) -> Result<(), StoreError>;

    // --- enrollment tokens (digests only) ---
    /// Stores a token digest for a node identity.
    ///
    /// # Errors
    /// The write failed.
    fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError>;
    /// Marks the token with `digest` used, if it is unused; returns it as it was before.
    ///
    /// # Errors
    /// The write failed.
    fn take_token(&self, digest: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Drops every token of a cluster.
    ///
    /// # Errors
    /// The write failed.
    fn delete_tokens(&self, cluster_id: &str) -> Result<(), StoreError>;
}

/// An enrollment token, as stored: its SHA-256 only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// `sha256` hex of the token.
    pub digest: String,
    /// Cluster.
    pub cluster_id: String,
    /// Node name.
    pub node_name: String,
    /// `control-plane` / `worker`.
    pub role: String,
    /// Expiry, Unix time.
    pub expires: UnixTime,
    /// Consumed by an enrollment.
    pub used: bool,
}
