//! Stopping and starting a cluster (cks-reference §3.3–3.4): its node VMs are stopped or
//! started through CloudStack, keeping their disks, so Kubernetes comes back as it was.
//!
//! Unlike CKS, a start is not done when the VMs run: it waits until every node's agent is back
//! and the control plane reports every node Ready. A failure leaves the cluster in Alert with
//! the step named, as CKS's `OperationFailed` does.

use tracing::info;

use super::step::{StepCtx, StepError};
use crate::cloudstack::types::VmState;
use crate::store::Step;

/// Runs one step of the start or stop workflow.
///
/// # Errors
/// [`StepError`]: retry (not yet) or fail (for good).
pub async fn run(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    match sc.step {
        Step::StopVms => power_vms(sc, Power::Off).await,
        Step::StartVms => power_vms(sc, Power::On).await,
        Step::WaitReady => super::kube::wait_ready(sc).await,
        other => Err(StepError::fail(format!("{other} is not a start/stop step"))),
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

/// Which way a step turns the node VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Power {
    Off,
    On,
}

/// Stops (or starts) every node VM that is not stopped (or running) yet, one after the other as
/// CKS does. Idempotent: a resumed run skips the VMs already done.
async fn power_vms(sc: &StepCtx<'_>, power: Power) -> Result<String, StepError> {
    let cloud = sc.ctx.cloud.clone();
    let verb = match power {
        Power::Off => "stopped",
        Power::On => "started",
    };
    let mut changed = 0;
    for (name, vm_id) in node_vms(sc)? {
        let Some(vm) = cloud.vm(&vm_id).await? else {
            return Err(StepError::fail(format!("the VM of node {name} is gone")));
        };
        match (power, vm.state) {
            (Power::Off, VmState::Stopped) | (Power::On, VmState::Running) => continue,
            (Power::Off, VmState::Running | VmState::Starting | VmState::Error) => {
                cloud.stop_vm(&vm_id).await?;
            }
            (Power::On, VmState::Stopped) => cloud.start_vm(&vm_id).await?,
            (_, VmState::Starting | VmState::Stopping | VmState::Migrating) => {
                return Err(StepError::not_yet(format!(
                    "the VM of node {name} is {:?}",
                    vm.state
                )));
            }
            (_, state) => {
                return Err(StepError::fail(format!(
                    "the VM of node {name} is {state:?} and cannot be {verb}"
                )));
            }
        }
        changed += 1;
        info!(vm = %vm_id, node = %name, "node VM {verb}");
    }
    Ok(format!("{changed} node VMs {verb}"))
}
