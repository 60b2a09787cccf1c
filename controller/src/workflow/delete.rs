//! The delete workflow (cks-reference §3.7): everything the cluster made is found — VMs by tag
//! and by their planned names, rules on the cluster's public IP, the network by its marker — and
//! removed, so a half-created cluster is cleaned up as fully as a running one.

use std::collections::BTreeSet;

use tracing::{info, warn};

use super::StepError;
use super::create::{API_PORT, SSH_PORT_BASE, network_marker};
use super::engine::StepCtx;

/// The steps, in order.
pub const STEPS: &[&str] = &["delete-vms", "delete-rules", "delete-network", "forget"];

/// Runs one step of the delete workflow.
///
/// # Errors
/// [`StepError`]: retry (not yet) or fail (for good).
pub async fn run(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    match sc.step {
        "delete-vms" => delete_vms(sc).await,
        "delete-rules" => delete_rules(sc).await,
        "delete-network" => delete_network(sc).await,
        "forget" => forget(sc),
        other => Err(StepError::fail(format!("unknown delete step {other}"))),
    }
}

async fn delete_vms(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let cloud = sc.ctx.cloud.clone();
    let mut ids: BTreeSet<String> = cloud
        .tagged("UserVm", &sc.cluster.id)
        .await?
        .into_iter()
        .collect();
    for node in &sc.nodes {
        if let Some(id) = &node.vm_id {
            ids.insert(id.clone());
        }
        // Deployed by a run that crashed before recording or tagging it.
        for vm in cloud.vms_named(&sc.cluster.owner, &node.name).await? {
            ids.insert(vm.id);
        }
    }
    let mut removed = 0;
    for id in &ids {
        match cloud.vm(id).await? {
            Some(vm)
                if !matches!(
                    vm.state,
                    crate::cloudstack::types::VmState::Destroyed
                        | crate::cloudstack::types::VmState::Expunging
                ) =>
            {
                cloud.destroy_vm(id).await?;
                removed += 1;
                info!(vm = %id, name = %vm.name, "node VM destroyed");
            }
            _ => {}
        }
    }
    for node in sc.nodes.clone() {
        sc.ctx.store.delete_node(&sc.cluster.id, &node.name)?;
    }
    sc.nodes.clear();
    Ok(format!("{removed} node VMs destroyed"))
}

async fn delete_rules(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let Some(ip_id) = sc.cluster.public_ip_id.clone() else {
        return Ok("no public IP: no rules".into());
    };
    let cloud = sc.ctx.cloud.clone();
    if sc.cluster.network_created
        && sc
            .ctx
            .cloud
            .network(sc.cluster.network_id.as_deref().unwrap_or_default())
            .await?
            .is_none()
    {
        return Ok("the network is gone, and its rules with it".into());
    }
    let mut removed = 0;
    for rule in cloud.lb_rules(&ip_id).await? {
        if rule.name.as_deref() == Some("api-lb") && rule.publicport == Some(API_PORT) {
            cloud.delete_lb_rule(&rule.id).await?;
            removed += 1;
        }
    }
    let node_count = u16::try_from(sc.cluster.control_nodes + sc.cluster.size).unwrap_or(0);
    let ssh_end = SSH_PORT_BASE + node_count.max(1) - 1;
    for rule in cloud.pf_rules(&ip_id).await? {
        let port = rule.publicport.unwrap_or(0);
        if (SSH_PORT_BASE..=ssh_end).contains(&port) && rule.privateport == Some(22) {
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
            Ok(()) => removed += 1,
            Err(err) if err.errorcode() == Some(536) => {
                // Expunged VMs take a moment to release their NICs.
                return Err(StepError::retry(
                    format!("network {id} still in use: {err}"),
                    std::time::Duration::from_secs(3),
                ));
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(format!("{removed} networks deleted"))
}

fn forget(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    sc.ctx.hub.forget_cluster(&sc.cluster.id);
    sc.ctx.store.delete_tokens(&sc.cluster.id)?;
    if let Err(err) = sc.ctx.store.delete_secrets(&sc.cluster.id) {
        warn!(error = %err, "cannot delete the cluster's secrets");
        return Err(err.into());
    }
    Ok("enrollment tokens, kubeconfig and secrets dropped".into())
}
