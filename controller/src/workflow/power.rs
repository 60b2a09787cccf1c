//! Stopping and starting a cluster (cks-reference §3.3–3.4): its node VMs are stopped or
//! started through CloudStack, keeping their disks, so Kubernetes comes back as it was.
//!
//! Unlike CKS, a start is not done when the VMs run: it waits until every node's agent is back
//! and the control plane reports every node Ready. A failure leaves the cluster in Alert with
//! the step named, as CKS's `OperationFailed` does.

use std::time::Duration;

use tracing::info;

use super::StepError;
use super::engine::StepCtx;
use crate::cloudstack::types::VmState;

/// The stop workflow's steps.
pub const STOP_STEPS: &[&str] = &["stop-vms"];
/// The start workflow's steps.
pub const START_STEPS: &[&str] = &["start-vms", "wait-ready"];

/// Runs one step of the start or stop workflow.
///
/// # Errors
/// [`StepError`]: retry (not yet) or fail (for good).
pub async fn run(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    match sc.step {
        "stop-vms" => stop_vms(sc).await,
        "start-vms" => start_vms(sc).await,
        "wait-ready" => super::create::wait_ready(sc).await,
        other => Err(StepError::fail(format!("unknown start/stop step {other}"))),
    }
}

/// The cluster's node VMs as (node name, VM id), failing when a node has none: a cluster
/// missing a VM cannot be stopped or started into shape, only deleted.
fn node_vms(sc: &StepCtx<'_>) -> Result<Vec<(String, String)>, StepError> {
    sc.nodes
        .iter()
        .map(|node| {
            node.vm_id
                .clone()
                .map(|vm| (node.name.clone(), vm))
                .ok_or_else(|| StepError::fail(format!("node {} has no VM", node.name)))
        })
        .collect()
}

/// Stops every node VM that is not stopped yet, one after the other as CKS does. Idempotent:
/// a resumed run skips what is already Stopped.
async fn stop_vms(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let cloud = sc.ctx.cloud.clone();
    let mut stopped = 0;
    for (name, vm_id) in node_vms(sc)? {
        let Some(vm) = cloud.vm(&vm_id).await? else {
            return Err(StepError::fail(format!("the VM of node {name} is gone")));
        };
        match vm.state {
            VmState::Stopped => {}
            VmState::Running | VmState::Starting | VmState::Error => {
                cloud.stop_vm(&vm_id).await?;
                stopped += 1;
                info!(vm = %vm_id, node = %name, "node VM stopped");
            }
            VmState::Stopping | VmState::Migrating => {
                return Err(StepError::retry(
                    format!("the VM of node {name} is {:?}", vm.state),
                    Duration::from_secs(2),
                ));
            }
            state => {
                return Err(StepError::fail(format!(
                    "the VM of node {name} is {state:?} and cannot be stopped"
                )));
            }
        }
    }
    Ok(format!("{stopped} node VMs stopped"))
}

/// Starts every node VM that is not running yet. Idempotent like [`stop_vms`].
async fn start_vms(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let cloud = sc.ctx.cloud.clone();
    let mut started = 0;
    for (name, vm_id) in node_vms(sc)? {
        let Some(vm) = cloud.vm(&vm_id).await? else {
            return Err(StepError::fail(format!("the VM of node {name} is gone")));
        };
        match vm.state {
            VmState::Running => {}
            VmState::Stopped => {
                cloud.start_vm(&vm_id).await?;
                started += 1;
                info!(vm = %vm_id, node = %name, "node VM started");
            }
            VmState::Starting | VmState::Stopping | VmState::Migrating => {
                return Err(StepError::retry(
                    format!("the VM of node {name} is {:?}", vm.state),
                    Duration::from_secs(2),
                ));
            }
            state => {
                return Err(StepError::fail(format!(
                    "the VM of node {name} is {state:?} and cannot be started"
                )));
            }
        }
    }
    Ok(format!("{started} node VMs started"))
}
