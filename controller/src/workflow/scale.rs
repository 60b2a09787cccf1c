//! The scale workflow (cks-reference §3.5, without SSH): the node offering changed, workers
//! added, or nodes removed — each step ends at once when the request does not ask for it.
//!
//! * **Offering**: each node VM moved to the new offering (`scaleVirtualMachine` while it runs,
//!   `changeServiceForVirtualMachine` when stopped), skipping VMs already there.
//! * **Size up**: the new workers are planned (names chosen, marked as added by this workflow),
//!   deployed with the binaries ISO, joined with join material made for each, and the cluster
//!   waits until every node is Ready; the ISO is detached and the SSH forwards extended.
//! * **Size down**: the leaving nodes (`nodeids`, else the newest workers) are cordoned and
//!   drained through the first control node (bounded; a PodDisruptionBudget that blocks is
//!   reported), deleted from Kubernetes, reset through their agent, their VMs expunged.
//!
//! A failure rolls back what this scale did: the workers it added leave again, the nodes it was
//! removing are uncordoned, and the cluster ends in Alert with the cause — never in Scaling.

use std::time::Duration;

use cks_proto::agent::command::Kind;
use cks_proto::agent::{DeleteNode, Reset};
use tracing::{info, warn};

use super::kube::{
    DRAIN_WAIT, drain_command, first_control, join_nodes, send, send_within, uncordon, wait_ready,
};
use super::rules::{Ownership, node_rules};
use super::step::{StepCtx, StepError};
use super::vms::{deploy_nodes, destroy_vm, detach_iso, plan_node};
use crate::agents::NodeKey;
use crate::cloudstack::types::VmState;
use crate::store::{NodeRecord, NodeRole, ScaleParams, Step, WorkflowParams};

/// How long a leaving node's agent gets to run `kubeadm reset` (its VM is expunged next, so a
/// node that does not answer is not waited for).
const RESET_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs one step of the scale workflow.
///
/// # Errors
/// [`StepError`]: retry (not yet) or fail (for good).
pub async fn run(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    match sc.step {
        Step::ScaleOffering => scale_offering(sc).await,
        Step::PlanWorkers => plan_workers(sc),
        Step::DeployNodes => deploy(sc).await,
        Step::JoinWorkers => join(sc).await,
        Step::WaitReady => wait(sc).await,
        Step::DetachIso => detach(sc).await,
        Step::DrainNodes => drain(sc).await,
        Step::RemoveNodes => remove(sc).await,
        Step::NodeRules => node_rules(sc).await,
        Step::RollBack => roll_back(sc).await,
        other => Err(StepError::fail(format!("{other} is not a scale step"))),
    }
}

fn params(sc: &StepCtx<'_>) -> ScaleParams {
    match &sc.workflow.params {
        WorkflowParams::Scale(params) => params.clone(),
        _ => ScaleParams::default(),
    }
}

/// The nodes this workflow added (to deploy, join, or take away again).
fn added(sc: &StepCtx<'_>) -> Vec<String> {
    sc.nodes
        .iter()
        .filter(|n| n.added_by.as_deref() == Some(sc.workflow.id.as_str()))
        .map(|n| n.name.clone())
        .collect()
}

async fn scale_offering(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let Some(offering) = params(sc).offering_id else {
        return Ok("the offering stays".into());
    };
    let cloud = sc.ctx.cloud.clone();
    let mut changed = Vec::new();
    for node in &sc.nodes {
        let Some(vm_id) = &node.vm_id else { continue };
        let vm = cloud
            .vm(vm_id)
            .await?
            .ok_or_else(|| StepError::fail(format!("the VM of node {} is gone", node.name)))?;
        if vm.serviceofferingid.as_deref() == Some(offering.as_str()) {
            continue;
        }
        let moved = match vm.state {
            VmState::Running => cloud.scale_vm(vm_id, &offering).await,
            VmState::Stopped => cloud.change_vm_offering(vm_id, &offering).await,
            state => {
                return Err(StepError::not_yet(format!(
                    "the VM of node {} is {state:?}",
                    node.name
                )));
            }
        };
        moved.map_err(|err| {
            let done = if changed.is_empty() {
                "no node was changed".to_string()
            } else {
                format!("{} already on the new offering", changed.join(", "))
            };
            match StepError::from(err) {
                StepError::Fail(reason) => StepError::Fail(format!(
                    "node {} could not be moved to the new offering ({done}): {reason}",
                    node.name
                )),
                retry => retry,
            }
        })?;
        info!(node = %node.name, offering = %offering, "node VM moved to the new offering");
        changed.push(node.name.clone());
    }
    sc.cluster.service_offering_id.clone_from(&offering);
    Ok(format!(
        "{} node VMs moved to offering {offering}",
        changed.len()
    ))
}

fn plan_workers(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let Some(size) = params(sc).size else {
        return Ok("the size stays".into());
    };
    let workers = sc
        .nodes
        .iter()
        .filter(|n| n.role == NodeRole::Worker)
        .count();
    let target = usize::try_from(size).unwrap_or(usize::MAX);
    if target <= workers {
        // A size down: the nodes that leave were chosen with the request.
        return Ok(format!("{workers} workers, {target} wanted: none to add"));
    }
    let next = sc
        .nodes
        .iter()
        .map(|n| n.ordinal)
        .max()
        .map_or(0, |o| o + 1);
    let mut planned = Vec::new();
    for ordinal in (next..).take(target - workers) {
        let node = plan_node(
            &sc.cluster,
            NodeRole::Worker,
            ordinal,
            Some(&sc.workflow.id),
        );
        planned.push(node.name.clone());
        sc.nodes.push(node);
    }
    sc.cluster.size = size;
    Ok(format!(
        "{} new workers: {}",
        planned.len(),
        planned.join(", ")
    ))
}

async fn deploy(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let names = added(sc);
    if names.is_empty() {
        return Ok("no new nodes".into());
    }
    let started = deploy_nodes(sc, &names).await?;
    Ok(format!(
        "{started} new node VMs running with the binaries ISO attached"
    ))
}

async fn join(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let names = added(sc);
    if names.is_empty() {
        return Ok("no new nodes".into());
    }
    let joined = join_nodes(sc, NodeRole::Worker, &names).await?;
    Ok(format!("{joined} new workers joined"))
}

async fn wait(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    if added(sc).is_empty() {
        return Ok("no new nodes".into());
    }
    wait_ready(sc).await
}

async fn detach(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let names = added(sc);
    if names.is_empty() {
        return Ok("no new nodes".into());
    }
    let detached = detach_iso(sc, &names).await;
    Ok(format!("ISO detached from {detached} new nodes"))
}

/// The leaving nodes still in the cluster, in the order they leave.
fn leaving(sc: &StepCtx<'_>) -> Vec<NodeRecord> {
    params(sc)
        .remove
        .iter()
        .filter_map(|name| sc.nodes.iter().find(|n| &n.name == name).cloned())
        .collect()
}

async fn drain(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let nodes = leaving(sc);
    if nodes.is_empty() {
        return Ok("no node leaves".into());
    }
    let first = first_control(sc)?;
    let mut drained = Vec::new();
    for node in &nodes {
        sc.report(&format!("{}: draining", node.name));
        let command = drain_command(&node.name);
        let timeout = DRAIN_WAIT;
        match send_within(
            sc,
            &first,
            &format!("drain:{}", node.name),
            command,
            timeout,
        )
        .await
        {
            Ok(_) => drained.push(node.name.clone()),
            Err(StepError::Fail(reason)) => {
                return Err(StepError::Fail(format!(
                    "node {} could not be drained, so no node was removed: {reason}",
                    node.name
                )));
            }
            Err(retry) => return Err(retry),
        }
        info!(node = %node.name, "node cordoned and drained");
    }
    Ok(format!("drained {}", drained.join(", ")))
}

/// Takes a node out of the cluster for good: deleted from Kubernetes through the first control
/// node, `kubeadm reset` on the node (bounded: its VM is expunged next), out of the API load
/// balancer when it is a control node, its VM expunged, its record and agent state dropped.
async fn remove_node(sc: &mut StepCtx<'_>, node: &NodeRecord) -> Result<(), StepError> {
    if node.joined {
        let first = first_control(sc)?;
        if first.name != node.name {
            send(
                sc,
                &first,
                &format!("delete:{}", node.name),
                Kind::DeleteNode(DeleteNode {
                    node_name: node.name.clone(),
                }),
            )
            .await?;
        }
        match send_within(
            sc,
            node,
            &format!("reset:{}", node.name),
            Kind::Reset(Reset {}),
            RESET_TIMEOUT,
        )
        .await
        {
            Ok(_) => {}
            // The VM goes next; a node that cannot reset is not a reason to keep it.
            Err(err) => warn!(node = %node.name, ?err, "kubeadm reset did not finish"),
        }
    }
    if let (Some(vm_id), NodeRole::Control, Some(ip_id)) =
        (&node.vm_id, node.role, &sc.cluster.public_ip_id)
    {
        let owned = Ownership::of(sc, std::collections::BTreeSet::new())?;
        for rule in sc.ctx.cloud.lb_rules(ip_id).await? {
            if !owned.load_balancer(&rule) {
                continue;
            }
            match sc.ctx.cloud.remove_from_lb(&rule.id, &[vm_id]).await {
                // Not a member (any more): nothing to take out.
                Err(err) if err.errorcode() != Some(431) => return Err(err.into()),
                _ => {}
            }
        }
    }
    if let Some(vm_id) = &node.vm_id {
        destroy_vm(sc, vm_id).await?;
    }
    sc.drop_node(&node.name)?;
    sc.ctx
        .agents
        .forget_node(&NodeKey::new(sc.cluster.id.clone(), node.name.clone()));
    match node.role {
        NodeRole::Worker => sc.cluster.size = sc.cluster.size.saturating_sub(1),
        NodeRole::Control => {
            sc.cluster.control_nodes = sc.cluster.control_nodes.saturating_sub(1);
        }
    }
    sc.save_cluster()?;
    info!(node = %node.name, "node removed from the cluster");
    Ok(())
}

async fn remove(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let nodes = leaving(sc);
    if nodes.is_empty() {
        return Ok("no node leaves".into());
    }
    for node in &nodes {
        sc.report(&format!("{}: leaving the cluster", node.name));
        remove_node(sc, node).await?;
    }
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    Ok(format!("removed {}", names.join(", ")))
}

async fn roll_back(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let mut done = Vec::new();
    let added: Vec<NodeRecord> = sc
        .nodes
        .iter()
        .filter(|n| n.added_by.as_deref() == Some(sc.workflow.id.as_str()))
        .cloned()
        .collect();
    for node in &added {
        remove_node(sc, node).await?;
    }
    if !added.is_empty() {
        done.push(format!("{} added workers removed again", added.len()));
    }
    // Nodes this scale was taking away that are still here: back in service.
    let staying = leaving(sc);
    if !staying.is_empty() {
        let first = first_control(sc)?;
        for node in &staying {
            uncordon(sc, &first, node).await?;
        }
        let names: Vec<&str> = staying.iter().map(|n| n.name.as_str()).collect();
        done.push(format!("{} stay and were uncordoned", names.join(", ")));
    }
    let workers = sc
        .nodes
        .iter()
        .filter(|n| n.role == NodeRole::Worker)
        .count();
    sc.cluster.size = u32::try_from(workers).unwrap_or(u32::MAX);
    if done.is_empty() {
        done.push("nothing to undo".into());
    }
    Ok(done.join("; "))
}
