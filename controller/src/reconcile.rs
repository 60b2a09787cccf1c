//! The reconciler: every `cloud.kubernetes.cluster.reconcile.interval` seconds, each cluster
//! that is `Running` or `Alert` (and has no operation under way) is compared with CloudStack
//! (its nodes' VMs) and with its agents (connected, kubelet Ready).
//!
//! - Something wrong turns a `Running` cluster to `Alert`, with the nodes and causes named in
//!   its `failure` (prefixed [`FAULTS`]); once everything is healthy again, such an `Alert`
//!   turns back to `Running`. An `Alert` left by a failed operation is not the reconciler's
//!   to clear: the operator (or the operation run again) decides.
//! - What can be repaired safely is: a node VM found `Stopped` behind the controller's back in
//!   a `Running` cluster is started again. A VM that is gone, destroyed or in error is only
//!   reported.
//! - A node whose agent is not connected, or whose kubelet is not Ready, counts only after a
//!   grace period: agents reconnect and heartbeat every few seconds, so a restart of either
//!   side is not a fault.
//! - Each change is an event (`listKubernetesClusterEvents`).
//!
//! One pass asks CloudStack once per resource kind (every VM in one listing, and the
//! projects' VMs in a second only when a project owns a cluster), not once per cluster.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::agents::NodeKey;
use crate::cloudstack::CloudStackError;
use crate::cloudstack::types::{VirtualMachine, VmState};
use crate::context::Context;
use crate::settings::RECONCILE_INTERVAL;
use crate::store::{ClusterRecord, ClusterState, EventRecord, NodeRecord, StoreError, now};

/// How a cluster's failure text begins when the reconciler put it in `Alert`.
pub const FAULTS: &str = "faults detected: ";
/// How long a node's agent may be away, or its kubelet not Ready, before it counts.
pub const NODE_GRACE: Duration = Duration::from_secs(90);
/// The shortest interval between passes.
const MIN_INTERVAL: Duration = Duration::from_secs(5);

/// A pass could not look.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// CloudStack could not list the VMs.
    #[error("cannot list the node VMs")]
    CloudStack(#[from] CloudStackError),
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Clusters looked at.
    pub checked: usize,
    /// Clusters turned to `Alert`.
    pub alerted: Vec<String>,
    /// Clusters back to `Running`.
    pub recovered: Vec<String>,
    /// VMs started again.
    pub restarted: Vec<String>,
}

// === impl PassReport ===

impl PassReport {
    /// True when a cluster changed state or a VM was started.
    pub fn changed_anything(&self) -> bool {
        !(self.alerted.is_empty() && self.recovered.is_empty() && self.restarted.is_empty())
    }
}

/// The reconciler; its memory is when each node was first seen unwell.
pub struct Reconciler {
    ctx: Context,
    grace: Duration,
    unwell_since: Mutex<HashMap<NodeKey, Instant>>,
}

/// A problem of one node.
struct Fault {
    node: String,
    what: String,
}

// === impl Reconciler ===

impl Reconciler {
    /// A reconciler over `ctx` that lets unwell agents `grace` before they count.
    pub fn new(ctx: Context, grace: Duration) -> Self {
        Reconciler {
            ctx,
            grace,
            unwell_since: Mutex::new(HashMap::new()),
        }
    }

    /// Runs passes until `shutdown`, at the interval the setting says (read each time).
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let seconds = self.ctx.settings.number(RECONCILE_INTERVAL, None);
            let interval = Duration::from_secs(seconds).max(MIN_INTERVAL);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            match self.pass().await {
                Ok(report) if report.changed_anything() => {
                    info!(?report, "reconciler pass changed something");
                }
                Ok(_) => {}
                Err(err) => {
                    warn!(error = %crate::error_chain(&err), "reconciler pass failed; next one at the interval")
                }
            }
        }
    }

    /// One pass over every `Running` or `Alert` cluster without an operation under way.
    ///
    /// # Errors
    /// The store or CloudStack could not be read (nothing is changed then).
    pub async fn pass(&self) -> Result<PassReport, ReconcileError> {
        let store = &self.ctx.store;
        let busy: HashSet<String> = store
            .running_workflows()?
            .into_iter()
            .map(|w| w.cluster_id)
            .collect();
        let clusters: Vec<ClusterRecord> = store
            .clusters()?
            .into_iter()
            .filter(|c| matches!(c.state, ClusterState::Running | ClusterState::Alert))
            .filter(|c| !busy.contains(&c.id))
            .collect();
        let mut report = PassReport {
            checked: clusters.len(),
            ..PassReport::default()
        };
        if clusters.is_empty() {
            self.unwell_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
            return Ok(report);
        }
        let vms = self.vms(&clusters).await?;
        for cluster in &clusters {
            let nodes = store.nodes(&cluster.id)?;
            let faults = self.check(cluster, &nodes, &vms, &mut report).await;
            self.settle(cluster, &faults, &mut report)?;
        }
        // Forget nodes of clusters no longer looked at (deleted, stopped, under an operation).
        let looked_at: HashSet<&str> = clusters.iter().map(|c| c.id.as_str()).collect();
        self.unwell_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|key, _| looked_at.contains(key.cluster_id.as_str()));
        Ok(report)
    }

    /// Every VM CloudStack has, by id: one listing, and one more for projects' VMs when a
    /// project owns one of the clusters.
    async fn vms(
        &self,
        clusters: &[ClusterRecord],
    ) -> Result<HashMap<String, VirtualMachine>, ReconcileError> {
        let client = self.ctx.cloud.client();
        let mut vms = client
            .list_all::<VirtualMachine>(&[("listall", "true")])
            .await?;
        if clusters.iter().any(|c| c.owner.project.is_some()) {
            vms.extend(
                client
                    .list_all::<VirtualMachine>(&[("listall", "true"), ("projectid", "-1")])
                    .await?,
            );
        }
        Ok(vms.into_iter().map(|vm| (vm.id.clone(), vm)).collect())
    }

    /// The faults of one cluster's nodes; a `Stopped` VM of a `Running` cluster is started.
    async fn check(
        &self,
        cluster: &ClusterRecord,
        nodes: &[NodeRecord],
        vms: &HashMap<String, VirtualMachine>,
        report: &mut PassReport,
    ) -> Vec<Fault> {
        // In an Alert of ours, healthy means healthy now: no grace while recovering.
        let strict = cluster.state == ClusterState::Alert && is_ours(cluster);
        let mut faults = Vec::new();
        for node in nodes {
            let Some(vm_id) = &node.vm_id else { continue };
            let key = NodeKey::new(cluster.id.clone(), node.name.clone());
            let fault = |what: String| Fault {
                node: node.name.clone(),
                what,
            };
            match vms.get(vm_id).map(|vm| vm.state) {
                None => faults.push(fault(format!("its VM {vm_id} no longer exists"))),
                Some(VmState::Running) => {
                    if let Some(what) = self.agent_fault(&key, strict) {
                        faults.push(fault(what));
                    }
                }
                // On its way somewhere (CloudStack's HA, a migration): a fault only if it
                // stays there.
                Some(state @ (VmState::Starting | VmState::Stopping | VmState::Migrating)) => {
                    if self.unwell_past_grace(&key, false) {
                        faults.push(fault(format!("its VM {vm_id} stays {state:?}")));
                    }
                }
                Some(VmState::Stopped) if cluster.state == ClusterState::Running => {
                    faults.push(fault(format!("its VM {vm_id} was Stopped; starting it")));
                    self.restart(cluster, node, vm_id, report).await;
                }
                Some(state) => faults.push(fault(format!("its VM {vm_id} is {state:?}"))),
            }
        }
        faults
    }

    /// Why a node's agent counts as unwell: once it has been for longer than the grace, or at
    /// once when `strict`.
    fn agent_fault(&self, key: &NodeKey, strict: bool) -> Option<String> {
        let status = self.ctx.agents.status(key);
        let healthy = status.connected && status.node_ready;
        let past_grace = self.unwell_past_grace(key, healthy);
        if healthy || !(past_grace || strict) {
            return None;
        }
        Some(if status.connected {
            "its kubelet is not Ready".to_string()
        } else {
            "its agent is not connected".to_string()
        })
    }

    /// Remembers whether a node is `healthy` now; true when it has been unwell for longer
    /// than the grace.
    fn unwell_past_grace(&self, key: &NodeKey, healthy: bool) -> bool {
        let mut unwell = self
            .unwell_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if healthy {
            unwell.remove(key);
            return false;
        }
        let since = *unwell.entry(key.clone()).or_insert_with(Instant::now);
        since.elapsed() >= self.grace
    }

    async fn restart(
        &self,
        cluster: &ClusterRecord,
        node: &NodeRecord,
        vm_id: &str,
        report: &mut PassReport,
    ) {
        match self.ctx.cloud.start_vm(vm_id).await {
            Ok(()) => {
                info!(cluster = %cluster.id, node = %node.name, "started a node VM found stopped");
                report.restarted.push(vm_id.to_string());
                self.event(
                    cluster,
                    "Repaired",
                    "INFO",
                    format!(
                        "node {}: its VM {vm_id} was found Stopped and was started again",
                        node.name
                    ),
                );
            }
            Err(err) => {
                warn!(cluster = %cluster.id, node = %node.name, error = %err, "cannot start a node VM found stopped");
                self.event(
                    cluster,
                    "Failed",
                    "ERROR",
                    format!(
                        "node {}: its VM {vm_id} was found Stopped and could not be started: {err}",
                        node.name
                    ),
                );
            }
        }
    }

    /// Moves the cluster between `Running` and `Alert` as its faults say.
    fn settle(
        &self,
        cluster: &ClusterRecord,
        faults: &[Fault],
        report: &mut PassReport,
    ) -> Result<(), StoreError> {
        let store = &self.ctx.store;
        let ours = is_ours(cluster);
        if !faults.is_empty() {
            let text = faults
                .iter()
                .map(|f| format!("node {}: {}", f.node, f.what))
                .collect::<Vec<_>>()
                .join("; ");
            let failure = format!("{FAULTS}{text}");
            let changed = match cluster.state {
                ClusterState::Running => store.set_cluster_state(
                    &cluster.id,
                    ClusterState::Running,
                    ClusterState::Alert,
                    Some(&failure),
                )?,
                // Our own Alert: keep what it says up to date.
                ClusterState::Alert if ours && cluster.failure.as_deref() != Some(&failure) => {
                    store.set_cluster_state(
                        &cluster.id,
                        ClusterState::Alert,
                        ClusterState::Alert,
                        Some(&failure),
                    )?
                }
                _ => false,
            };
            if changed {
                warn!(cluster = %cluster.id, %failure, "cluster in Alert");
                if cluster.state == ClusterState::Running {
                    report.alerted.push(cluster.id.clone());
                }
                self.event(cluster, "Alert", "WARN", text);
            }
        } else if cluster.state == ClusterState::Alert
            && ours
            && store.set_cluster_state(
                &cluster.id,
                ClusterState::Alert,
                ClusterState::Running,
                None,
            )?
        {
            info!(cluster = %cluster.id, "cluster healthy again");
            report.recovered.push(cluster.id.clone());
            self.event(
                cluster,
                "Running",
                "INFO",
                "every node is running, connected and Ready again".into(),
            );
        }
        Ok(())
    }

    fn event(&self, cluster: &ClusterRecord, state: &str, level: &str, description: String) {
        let event = EventRecord {
            cluster_id: cluster.id.clone(),
            at: now(),
            state: state.into(),
            level: level.into(),
            description,
        };
        if let Err(err) = self.ctx.store.put_event(&event) {
            warn!(cluster = %cluster.id, error = %err, "cannot record a reconciler event");
        }
    }
}

/// True when the cluster's `Alert` is the reconciler's (not a failed operation's).
fn is_ours(cluster: &ClusterRecord) -> bool {
    cluster
        .failure
        .as_deref()
        .is_some_and(|f| f.starts_with(FAULTS))
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
