//! The delete workflow (cks-reference §3.7): everything the cluster made is found — rules on
//! the cluster's public IP, VMs by tag and by their planned names, the network by its marker —
//! and removed, so a half-created cluster, or one whose scale or upgrade was cancelled by this
//! delete, is cleaned up as fully as a running one.
//!
//! The rules go first, while the nodes' VM ids are still known. Only the cluster's own rules
//! go: those tagged with its id, the untagged ones an interrupted rule step may have left, and,
//! for a cluster made before rules were tagged, those the old port match finds (see
//! [`super::rules`]). A rule of the IP's owner on the same ports stays.

use std::collections::BTreeSet;

use tracing::{info, warn};

use super::rules::Ownership;
use super::step::{StepCtx, StepError};
use super::vms::{cluster_vms, destroy_vm, network_marker};
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
    let owned = Ownership::of(sc, cluster_vms(sc).await?)?;
    let mut removed = 0;
    for rule in cloud.lb_rules(&ip_id).await? {
        if owned.load_balancer(&rule) {
            cloud.delete_lb_rule(&rule.id).await?;
            removed += 1;
        }
    }
    for rule in cloud.pf_rules(&ip_id).await? {
        if owned.forward(&rule) {
            cloud.delete_pf_rule(&rule.id).await?;
            removed += 1;
        }
    }
    for rule in cloud.firewall_rules(&ip_id).await? {
        if owned.firewall(&rule) {
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
