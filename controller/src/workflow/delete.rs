//! The delete workflow (cks-reference §3.7): everything the cluster made is found — rules on
//! the cluster's public IP, VMs by tag and by their planned names, the network by its marker —
//! and removed, so a half-created cluster, or one whose scale or upgrade was cancelled by this
//! delete, is cleaned up as fully as a running one.
//!
//! The rules go first, while the nodes' VM ids are still known: a port forward is removed when
//! it targets one of the cluster's VMs, so a rule of the network's owner is never touched.

use std::collections::BTreeSet;

use tracing::{info, warn};

use super::step::{StepCtx, StepError};
use super::vms::{API_PORT, SSH_PORT_BASE, destroy_vm, is_ssh_forward, network_marker};
use crate::store::Step;

/// Runs one step of the delete workflow.
///
/// # Errors
/// [`StepError`]: retry (not yet) or fail (for good).
pub async fn run(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    match sc.step {
        Step::DeleteRules => delete_rules(sc).await,
        Step::DeleteVms => delete_vms(sc).await,
        Step::DeleteNetwork => delete_network(sc).await,
        Step::Forget => forget(sc),
        other => Err(StepError::fail(format!("{other} is not a delete step"))),
    }
}

/// Every VM of the cluster: recorded on its nodes, tagged with the cluster, or named as one of
/// its planned nodes (deployed by a run that crashed before recording or tagging it).
async fn cluster_vms(sc: &StepCtx<'_>) -> Result<BTreeSet<String>, StepError> {
    let cloud = &sc.ctx.cloud;
    let mut ids: BTreeSet<String> = cloud
        .tagged("UserVm", &sc.cluster.id)
        .await?
        .into_iter()
        .collect();
    for node in &sc.nodes {
        if let Some(id) = &node.vm_id {
            ids.insert(id.clone());
        }
        for vm in cloud.vms_named(&sc.cluster.owner, &node.name).await? {
            ids.insert(vm.id);
        }
    }
    Ok(ids)
}

async fn delete_rules(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let Some(ip_id) = sc.cluster.public_ip_id.clone() else {
        return Ok("no public IP: no rules".into());
    };
    let cloud = sc.ctx.cloud.clone();
    if sc.cluster.network_created
        && cloud
            .network(sc.cluster.network_id.as_deref().unwrap_or_default())
            .await?
            .is_none()
    {
        return Ok("the network is gone, and its rules with it".into());
    }
    let vms = cluster_vms(sc).await?;
    let mut removed = 0;
    for rule in cloud.lb_rules(&ip_id).await? {
        if rule.name.as_deref() == Some("api-lb") && rule.publicport == Some(API_PORT) {
            cloud.delete_lb_rule(&rule.id).await?;
            removed += 1;
        }
    }
    for rule in cloud.pf_rules(&ip_id).await? {
        let ours = rule
            .virtualmachineid
            .as_ref()
            .is_some_and(|vm| vms.contains(vm));
        if ours && is_ssh_forward(&rule) {
            cloud.delete_pf_rule(&rule.id).await?;
            removed += 1;
        }
    }
    for rule in cloud.firewall_rules(&ip_id).await? {
        let api = rule.startport == Some(API_PORT) && rule.endport == Some(API_PORT);
        let ssh = rule.startport == Some(SSH_PORT_BASE) && sc.cluster.keypair.is_some();
        if api || ssh {
            cloud.delete_firewall_rule(&rule.id).await?;
            removed += 1;
        }
    }
    Ok(format!("{removed} network rules removed"))
}

async fn delete_vms(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let mut removed = 0;
    for id in cluster_vms(sc).await? {
        if destroy_vm(sc, &id).await? {
            removed += 1;
        }
    }
    for node in sc.nodes.clone() {
        sc.drop_node(&node.name)?;
    }
    Ok(format!("{removed} node VMs destroyed"))
}

async fn delete_network(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let cloud = sc.ctx.cloud.clone();
    let mut ids: BTreeSet<String> = BTreeSet::new();
    if sc.cluster.network_created
        && let Some(id) = &sc.cluster.network_id
    {
        ids.insert(id.clone());
    }
    // A network a crashed create made before recording it.
    for network in cloud
        .networks_marked(&sc.cluster.owner, &network_marker(&sc.cluster.id))
        .await?
    {
        ids.insert(network.id);
    }
    if ids.is_empty() {
        return Ok("the network is the user's own: kept".into());
    }
    let mut removed = 0;
    for id in &ids {
        if cloud.network(id).await?.is_none() {
            continue;
        }
        match cloud.delete_network(id).await {
            Ok(()) => {
                removed += 1;
                info!(network = %id, "cluster network deleted");
            }
            Err(err) if err.errorcode() == Some(536) => {
                // Expunged VMs take a moment to release their NICs.
                return Err(StepError::not_yet(format!(
                    "network {id} still in use: {err}"
                )));
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(format!("{removed} networks deleted"))
}

fn forget(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    sc.ctx.agents.forget_cluster(&sc.cluster.id);
    sc.ctx.store.delete_tokens(&sc.cluster.id)?;
    if let Err(err) = sc.ctx.store.delete_secrets(&sc.cluster.id) {
        warn!(error = %err, "cannot delete the cluster's secrets");
        return Err(err.into());
    }
    Ok("enrollment tokens, kubeconfig and secrets dropped".into())
}
