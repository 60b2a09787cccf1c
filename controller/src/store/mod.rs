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
//! * An operation begins ([`Store::begin_operation`]: cluster state, job, workflow) and ends
//!   ([`Store::finish_operation`]: end state, job result, workflow status) in one transaction
//!   each, so a crash never leaves a cluster in an operation's state without its workflow, nor a
//!   finished workflow with its job pending.

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
    /// The database file or its `-wal`/`-shm` could not be made mode 0600.
    #[error("cannot make the store file {path} readable by its owner only (mode 0600)")]
    Private {
        /// The database path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
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

    /// Every state, in CKS's order.
    pub const ALL: [ClusterState; 13] = [
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

    /// Parses a CKS state name (case-insensitive, as CloudStack's list filters are).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
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
    /// The project that owns the cluster (its members manage it), when made with `projectid`.
    /// `account`/`account_id` are then the project's own account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<ProjectRef>,
}

// === impl Owner ===

impl Owner {
    /// The account whose account-scoped settings apply: none for a project's cluster (its
    /// own account is CloudStack's, not one an operator scopes settings to).
    pub fn settings_account(&self) -> Option<&str> {
        match self.project {
            Some(_) => None,
            None => Some(&self.account_id),
        }
    }
}

/// A project owning a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectRef {
    /// Project id.
    pub id: String,
    /// Project name (for responses).
    pub name: String,
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

#[cfg(test)]
impl ClusterRecord {
    /// A cluster for unit tests: `id`, named `web`, 1 control node and `size` workers, in
    /// `state`, on an isolated network made for it.
    pub fn for_tests(id: &str, state: ClusterState, control_nodes: u32, size: u32) -> Self {
        ClusterRecord {
            id: id.into(),
            name: "web".into(),
            description: String::new(),
            zone_id: "z".into(),
            version_id: "v133".into(),
            service_offering_id: "o".into(),
            template_id: "t".into(),
            owner: Owner {
                account: "a".into(),
                account_id: "a".into(),
                domain_id: "d".into(),
                domain: "ROOT".into(),
                user_id: "u".into(),
                project: None,
            },
            control_nodes,
            size,
            node_root_disk_size: None,
            keypair: None,
            network_id: Some("net".into()),
            network_created: true,
            network_type: Some("Isolated".into()),
            external_lb_ip: None,
            public_ip_id: None,
            server_ip: Some("203.0.113.5".into()),
            endpoint: None,
            registry: None,
            state,
            failure: None,
            created: 0,
        }
    }
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
    /// The workflow that added this node to a running cluster (a scale), so a failed scale
    /// removes exactly the nodes it added; `None` for the nodes made with the cluster.
    #[serde(default)]
    pub added_by: Option<String>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WorkflowKind {
    /// `createKubernetesCluster`.
    Create,
    /// `deleteKubernetesCluster`.
    Delete,
    /// `startKubernetesCluster` (of a stopped cluster).
    Start,
    /// `stopKubernetesCluster`.
    Stop,
    /// `scaleKubernetesCluster`: workers added or removed, or the node offering changed.
    Scale,
    /// `upgradeKubernetesCluster`: every node moved to the next Kubernetes version.
    Upgrade,
}

impl WorkflowKind {
    /// Lower-case name for logs and `progress.operation`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Delete => "delete",
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Scale => "scale",
            Self::Upgrade => "upgrade",
        }
    }

    /// The steps of the operation, in order. Steps that do not apply to a particular request
    /// (a scale that only adds workers has no nodes to drain) end at once with a detail saying so.
    pub fn steps(self) -> &'static [Step] {
        use Step as S;
        match self {
            Self::Create => &[
                S::Network,
                S::PublicIp,
                S::Firewall,
                S::PlanNodes,
                S::DeployNodes,
                S::LoadBalancer,
                S::InitControlPlane,
                S::JoinControlPlanes,
                S::JoinWorkers,
                S::ApplyManifests,
                S::WaitReady,
                S::Kubeconfig,
                S::DetachIso,
            ],
            Self::Delete => &[S::DeleteRules, S::DeleteVms, S::DeleteNetwork, S::Forget],
            Self::Start => &[S::StartVms, S::WaitReady],
            Self::Stop => &[S::StopVms],
            Self::Scale => &[
                S::ScaleOffering,
                S::PlanWorkers,
                S::DeployNodes,
                S::JoinWorkers,
                S::WaitReady,
                S::DetachIso,
                S::DrainNodes,
                S::RemoveNodes,
                S::NodeRules,
            ],
            Self::Upgrade => &[S::AttachIso, S::UpgradeNodes, S::DetachIso],
        }
    }

    /// The steps that undo what a failed run of the operation made, run before it ends in its
    /// failure state (none: the failure state itself is the answer, as CKS's `Error` for a
    /// failed create, which a delete cleans up).
    pub fn rollback_steps(self) -> &'static [Step] {
        match self {
            // The workers this scale added leave again; the cluster keeps the nodes it had.
            Self::Scale => &[Step::RollBack, Step::NodeRules],
            // The new version's ISO is not left attached; the nodes already upgraded stay so,
            // and upgrading again continues with the others.
            Self::Upgrade => &[Step::DetachIso],
            Self::Create | Self::Delete | Self::Start | Self::Stop => &[],
        }
    }
}

/// One step of a workflow, named in the journal and in `progress` by its kebab-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Create: the cluster's isolated network (or the given one checked).
    Network,
    /// Create: the API's public address.
    PublicIp,
    /// Create: TCP 6443 (and the SSH range) opened on the public IP.
    Firewall,
    /// Create: every node's name and role chosen before any VM exists.
    PlanNodes,
    /// Create, scale: the planned nodes' VMs deployed with the binaries ISO and started.
    DeployNodes,
    /// Create: `api-lb` over the control nodes, SSH port forwards.
    LoadBalancer,
    /// Create: `kubeadm init` on the first control node.
    InitControlPlane,
    /// Create: the other control nodes joined.
    JoinControlPlanes,
    /// Create, scale: the workers joined.
    JoinWorkers,
    /// Create: the CNI and dashboard applied.
    ApplyManifests,
    /// Create, start, scale: every node Ready.
    WaitReady,
    /// Create: the admin kubeconfig stored, sealed.
    Kubeconfig,
    /// Create, scale, upgrade: the binaries ISO detached from the nodes.
    DetachIso,
    /// Delete: every node VM destroyed.
    DeleteVms,
    /// Delete: the rules the cluster made removed.
    DeleteRules,
    /// Delete: the network the cluster made deleted.
    DeleteNetwork,
    /// Delete: tokens, secrets and agent state dropped.
    Forget,
    /// Stop: every node VM stopped.
    StopVms,
    /// Start: every node VM started.
    StartVms,
    /// Scale: the node VMs moved to the new service offering.
    ScaleOffering,
    /// Scale: the new workers' names chosen.
    PlanWorkers,
    /// Scale: the leaving nodes cordoned and drained.
    DrainNodes,
    /// Scale: the leaving nodes deleted from Kubernetes, reset, their VMs expunged.
    RemoveNodes,
    /// Scale: SSH firewall range and port forwards matching the nodes that remain.
    NodeRules,
    /// Scale rollback: the workers a failed scale added removed again, the nodes it was
    /// removing uncordoned.
    RollBack,
    /// Upgrade: the new version's ISO attached to every node.
    AttachIso,
    /// Upgrade: one node at a time, control nodes first: drain, upgrade, uncordon, health gate.
    UpgradeNodes,
}

impl Step {
    /// The step's name in the journal, logs and `progress`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Network => "network",
            Self::PublicIp => "public-ip",
            Self::Firewall => "firewall",
            Self::PlanNodes => "plan-nodes",
            Self::DeployNodes => "deploy-nodes",
            Self::LoadBalancer => "load-balancer",
            Self::InitControlPlane => "init-control-plane",
            Self::JoinControlPlanes => "join-control-planes",
            Self::JoinWorkers => "join-workers",
            Self::ApplyManifests => "apply-manifests",
            Self::WaitReady => "wait-ready",
            Self::Kubeconfig => "kubeconfig",
            Self::DetachIso => "detach-iso",
            Self::DeleteVms => "delete-vms",
            Self::DeleteRules => "delete-rules",
            Self::DeleteNetwork => "delete-network",
            Self::Forget => "forget",
            Self::StopVms => "stop-vms",
            Self::StartVms => "start-vms",
            Self::ScaleOffering => "scale-offering",
            Self::PlanWorkers => "plan-workers",
            Self::DrainNodes => "drain-nodes",
            Self::RemoveNodes => "remove-nodes",
            Self::NodeRules => "node-rules",
            Self::RollBack => "roll-back",
            Self::AttachIso => "attach-iso",
            Self::UpgradeNodes => "upgrade-nodes",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a scale was asked to do (checked by the API before the workflow starts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleParams {
    /// The new worker count, when it changes.
    pub size: Option<u32>,
    /// The new node offering, when it changes.
    pub offering_id: Option<String>,
    /// The nodes to remove (names), chosen by the API from `nodeids` or as the newest workers.
    pub remove: Vec<String>,
    /// The request as it was sent (`size`, `serviceofferingid`, `nodeids`): asking the same
    /// again while this scale runs (a retry after a lost answer) gets its job, although the
    /// plan derived from it has changed meanwhile (the workers it adds already exist).
    #[serde(default)]
    pub asked: Vec<(String, String)>,
}

/// What an upgrade was asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeParams {
    /// The supported version to upgrade to.
    pub version_id: String,
    /// Its semantic version (`1.34.0`).
    pub semantic_version: String,
    /// Its binaries ISO.
    pub iso_id: String,
}

/// The parameters of an operation, beyond the cluster itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkflowParams {
    /// Create, start, stop, delete: the cluster record says everything.
    #[default]
    None,
    /// Scale.
    Scale(ScaleParams),
    /// Upgrade.
    Upgrade(UpgradeParams),
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
    /// Stopped before its end because the cluster is being deleted.
    Cancelled,
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
    /// The step.
    pub name: Step,
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
    /// What the operation was asked to do (scale and upgrade).
    #[serde(default)]
    pub params: WorkflowParams,
    /// Why it failed, once a step failed for good: the rollback steps then run, and the
    /// workflow ends failed with this reason.
    #[serde(default)]
    pub failure: Option<String>,
    /// True when a controller that tags every network rule it makes began this workflow; false
    /// in records written before (issue 11). A cluster whose create workflow says false was
    /// made with untagged rules, which only their ports tell apart (see
    /// [`crate::workflow::rules`]).
    #[serde(default)]
    pub rules_tagged: bool,
}

impl WorkflowRecord {
    /// The journal entry of `step`, if it ever started.
    pub fn step(&self, name: Step) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// True when `step` finished.
    pub fn is_done(&self, name: Step) -> bool {
        self.step(name)
            .is_some_and(|s| s.status == StepStatus::Done)
    }

    /// The next step to run: the first of the kind's steps not done, or, once a step failed
    /// for good, the first rollback step not done. `None`: the workflow is ready to end.
    pub fn next_step(&self) -> Option<Step> {
        let steps = if self.failure.is_some() {
            self.kind.rollback_steps()
        } else {
            self.kind.steps()
        };
        steps.iter().copied().find(|step| !self.is_done(*step))
    }

    /// Records that `name` starts (again).
    pub fn start_step(&mut self, name: Step) {
        let at = now();
        match self.steps.iter_mut().find(|s| s.name == name) {
            Some(step) => {
                step.status = StepStatus::Started;
                step.attempts += 1;
                step.updated = at;
            }
            None => self.steps.push(StepRecord {
                name,
                status: StepStatus::Started,
                attempts: 1,
                detail: String::new(),
                updated: at,
            }),
        }
    }

    /// Records the end of `name`.
    pub fn finish_step(&mut self, name: Step, status: StepStatus, detail: impl Into<String>) {
        let at = now();
        if let Some(step) = self.steps.iter_mut().find(|s| s.name == name) {
            step.status = status;
            step.detail = detail.into();
            step.updated = at;
        }
    }
}

/// How an operation begins, written in one transaction: the cluster's state moves (or the new
/// cluster is recorded), its job and workflow are recorded, and a workflow it replaces (a delete
/// stops whatever ran) is cancelled with its job failed. Either all of it is written or nothing.
#[derive(Debug, Clone, Copy)]
pub struct Begin<'a> {
    /// The cluster: a new one, or a state change of an existing one.
    pub cluster: BeginCluster<'a>,
    /// Sealed secrets of a new cluster (`name`, sealed bytes).
    pub secrets: &'a [(&'a str, Vec<u8>)],
    /// The operation's job, pending.
    pub job: &'a JobRecord,
    /// The operation's workflow, running.
    pub workflow: &'a WorkflowRecord,
    /// A running workflow this operation stops, and its job as it ends (failed).
    pub cancels: Option<(&'a str, &'a JobRecord)>,
}

/// The cluster side of [`Begin`].
#[derive(Debug, Clone, Copy)]
pub enum BeginCluster<'a> {
    /// A cluster recorded now, in its first state.
    New(&'a ClusterRecord),
    /// An existing cluster moving `from` → `to` (compare-and-set).
    Transition {
        /// The cluster.
        id: &'a str,
        /// The state the caller saw.
        from: ClusterState,
        /// The operation's state.
        to: ClusterState,
    },
}

/// How an operation ends, written in one transaction: the cluster's end state, the job's
/// result and the workflow's status.
#[derive(Debug, Clone, Copy)]
pub struct Finish<'a> {
    /// The workflow, its status final.
    pub workflow: &'a WorkflowRecord,
    /// The cluster's state now (compare-and-set).
    pub from: ClusterState,
    /// Its end state.
    pub to: ClusterState,
    /// Why it failed, shown with the cluster; `None` clears an earlier failure.
    pub failure: Option<&'a str>,
    /// The job, finished.
    pub job: &'a JobRecord,
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
    /// Removes the jobs that finished before `completed_before`; pending jobs stay whatever
    /// their age. Returns how many were removed.
    ///
    /// # Errors
    /// The write failed.
    fn prune_jobs(&self, completed_before: UnixTime) -> Result<usize, StoreError>;

    // --- workflows ---
    /// Adds a workflow.
    ///
    /// # Errors
    /// The write failed.
    fn insert_workflow(&self, workflow: &WorkflowRecord) -> Result<(), StoreError>;
    /// Records a step's outcome with the records it changed, atomically, if the workflow is
    /// still running; false (nothing written) when it was cancelled meanwhile.
    ///
    /// # Errors
    /// The write failed (nothing of it was written).
    fn save_progress(&self, progress: Progress<'_>) -> Result<bool, StoreError>;
    /// Begins an operation (see [`Begin`]); false, with nothing written, when the cluster was
    /// not in `from` any more (another request won) or a workflow to cancel had ended.
    ///
    /// # Errors
    /// The write failed (nothing of it was written).
    fn begin_operation(&self, begin: Begin<'_>) -> Result<bool, StoreError>;
    /// Ends an operation (see [`Finish`]); false, with nothing written, when the workflow is
    /// not running any more (cancelled by a delete).
    ///
    /// # Errors
    /// The write failed (nothing of it was written).
    fn finish_operation(&self, finish: Finish<'_>) -> Result<bool, StoreError>;
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
    /// Every workflow of a cluster, oldest first (its history: how it was made, and which
    /// steps were cut off).
    ///
    /// # Errors
    /// The read failed.
    fn workflows(&self, cluster_id: &str) -> Result<Vec<WorkflowRecord>, StoreError>;

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
    /// The token with `digest`, as stored.
    ///
    /// # Errors
    /// The read failed.
    fn token(&self, digest: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Marks the token with `digest` used by the key `key_sha256`, if it is unused (atomically);
    /// returns it as it was before.
    ///
    /// # Errors
    /// The write failed.
    fn take_token(&self, digest: &str, key_sha256: &str)
    -> Result<Option<TokenRecord>, StoreError>;
    /// Drops every token of a cluster.
    ///
    /// # Errors
    /// The write failed.
    fn delete_tokens(&self, cluster_id: &str) -> Result<(), StoreError>;

    // --- events the reconciler records (operations have their step journal) ---
    /// Records an event of a cluster; a cluster keeps its newest [`MAX_EVENTS`].
    ///
    /// # Errors
    /// The write failed.
    fn put_event(&self, event: &EventRecord) -> Result<(), StoreError>;
    /// A cluster's recorded events, oldest first.
    ///
    /// # Errors
    /// The read failed.
    fn events(&self, cluster_id: &str) -> Result<Vec<EventRecord>, StoreError>;
}

/// Most reconciler events kept per cluster (the oldest go first).
pub const MAX_EVENTS: usize = 200;

/// Something the reconciler saw or did to a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// The cluster.
    pub cluster_id: String,
    /// When.
    pub at: UnixTime,
    /// `Alert` (faults found), `Running` (healthy again), `Repaired` (a repair begun),
    /// `Failed` (a repair failed).
    pub state: String,
    /// `INFO`, `WARN` or `ERROR`.
    pub level: String,
    /// For people: which node, what was wrong, what was done.
    pub description: String,
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
    /// SHA-256 (hex) of the public key the enrollment that used it certified: the same key
    /// may enroll again with it (a lost reply), no other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
}
