//! What every step family does with CloudStack for a cluster's nodes: node names, VMs deployed
//! with the binaries ISO and started, ISOs attached and detached, VMs found and destroyed (the
//! nodes' network rules live in [`super::rules`]). Every function looks for what an earlier,
//! interrupted run made before it makes anything, so a step built on them can run again after
//! a crash.

use std::collections::BTreeSet;

use tracing::{info, warn};

use super::step::{StepCtx, StepError};
use crate::cloud::DeployRequest;
use crate::cloudstack::types::VmState;
use crate::pki::NodeIdentity;
use crate::settings::{
    CONTROL_INSTALL_ATTEMPTS, CONTROL_INSTALL_WAIT, WORKER_INSTALL_ATTEMPTS, WORKER_INSTALL_WAIT,
};
use crate::store::{ClusterRecord, NodeRecord, NodeRole};
use crate::userdata::{NodeBootstrap, TemplateKind};

/// The marker in the description of a network the controller made for a cluster.
pub fn network_marker(cluster_id: &str) -> String {
    format!("Kubernetes cluster {cluster_id}")
}

/// True unless the cluster sits on a shared network (no public IP, no rules of ours).
pub fn is_isolated(cluster: &ClusterRecord) -> bool {
    cluster.network_type.as_deref() != Some("Shared")
}

/// The cluster's network id.
///
/// # Errors
/// The cluster has none yet (a step ran before the network step).
pub fn network_id(cluster: &ClusterRecord) -> Result<String, StepError> {
    cluster
        .network_id
        .clone()
        .ok_or_else(|| StepError::fail("the cluster has no network"))
}

/// Node names as CKS makes them: a DNS-label prefix from the cluster name, the role, and a
/// random suffix (CKS uses the time in hex); chosen once and stored before any VM exists.
pub fn node_prefix(cluster: &ClusterRecord) -> String {
    let lower = cluster.name.to_lowercase();
    let valid = !lower.is_empty()
        && lower.len() <= 63
        && lower
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !lower.starts_with('-')
        && !lower.ends_with('-');
    let mut prefix = if valid {
        lower
    } else {
        let cleaned: String = lower
            .chars()
            .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
            .collect();
        if cleaned.is_empty() {
            format!("k8s-{}", cluster.id)
        } else {
            format!("k8s-{cleaned}")
        }
    };
    prefix.truncate(43);
    prefix.trim_end_matches('-').to_string()
}

fn random_suffix() -> String {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    hex::encode(bytes)
}

/// A node planned for `cluster` (no VM yet), named as CKS names nodes.
pub fn plan_node(
    cluster: &ClusterRecord,
    role: NodeRole,
    ordinal: u32,
    added_by: Option<&str>,
) -> NodeRecord {
    let kind = match role {
        NodeRole::Control => "control",
        NodeRole::Worker => "node",
    };
    NodeRecord {
        cluster_id: cluster.id.clone(),
        name: format!("{}-{kind}-{}", node_prefix(cluster), random_suffix()),
        role,
        ordinal,
        vm_id: None,
        ip: None,
        joined: false,
        kubernetes_version: None,
        added_by: added_by.map(str::to_string),
    }
}

fn userdata(sc: &StepCtx<'_>, node: &NodeRecord) -> String {
    use cks_proto::agent::NodeRole as ProtoRole;
    let role = match node.role {
        NodeRole::Control if node.ordinal == 0 => ProtoRole::FirstControl,
        NodeRole::Control => ProtoRole::Control,
        NodeRole::Worker => ProtoRole::Worker,
    };
    let token = sc.ctx.agents.issue_token(
        NodeIdentity {
            cluster_id: sc.cluster.id.clone(),
            node_name: node.name.clone(),
            role,
        },
        sc.ctx.nodes.enrollment_ttl,
    );
    let (wait, attempts) = match node.role {
        NodeRole::Control => (CONTROL_INSTALL_WAIT, CONTROL_INSTALL_ATTEMPTS),
        NodeRole::Worker => (WORKER_INSTALL_WAIT, WORKER_INSTALL_ATTEMPTS),
    };
    let settings = &sc.ctx.settings;
    let discovery = settings
        .number(wait, None)
        .saturating_mul(settings.number(attempts, None))
        .max(1);
    NodeBootstrap {
        discovery_timeout_seconds: Some(discovery),
        addresses: sc.ctx.nodes.agent_addresses.clone(),
        ca_fingerprint: sc.ctx.agents.ca_fingerprint(),
        enrollment_token: token,
        node_name: node.name.clone(),
        role: match node.role {
            NodeRole::Control => "control-plane".into(),
            NodeRole::Worker => "worker".into(),
        },
    }
    .render(TemplateKind::CloudInit)
}

/// Deploys the VMs of the nodes named in `names` that have none (a VM a crashed run deployed is
/// found by its name, chosen before deploying), tags them with the cluster, attaches the
/// cluster version's binaries ISO before their first boot and starts them. Returns how many
/// nodes run.
///
/// # Errors
/// CloudStack refused something; the version is gone.
pub async fn deploy_nodes(sc: &mut StepCtx<'_>, names: &[String]) -> Result<usize, StepError> {
    let network_id = network_id(&sc.cluster)?;
    let version = sc
        .ctx
        .store
        .version(&sc.cluster.version_id)?
        .ok_or_else(|| StepError::fail("Invalid Kubernetes version associated with cluster"))?;
    let cloud = sc.ctx.cloud.clone();
    let mut started = 0;
    for (index, name) in names.iter().enumerate() {
        let Some(mut node) = sc.nodes.iter().find(|n| &n.name == name).cloned() else {
            continue;
        };
        sc.report(&format!("{}/{} {name}: VM", index + 1, names.len()));
        let vm = match &node.vm_id {
            Some(id) => cloud.vm(id).await?,
            None => cloud
                .vms_named(&sc.cluster.owner, &node.name)
                .await?
                .into_iter()
                .next(),
        };
        let vm = match vm {
            Some(vm) => vm,
            None => {
                let userdata = userdata(sc, &node);
                let vm = cloud
                    .deploy_vm(&DeployRequest {
                        owner: &sc.cluster.owner,
                        zone_id: &sc.cluster.zone_id,
                        service_offering_id: &sc.cluster.service_offering_id,
                        template_id: &sc.cluster.template_id,
                        network_id: &network_id,
                        name: &node.name,
                        userdata: &userdata,
                        keypair: sc.cluster.keypair.as_deref(),
                        root_disk_size: sc.cluster.node_root_disk_size,
                    })
                    .await?;
                info!(node = %node.name, vm = %vm.id, "node VM deployed");
                vm
            }
        };
        node.vm_id = Some(vm.id.clone());
        node.ip = vm.ip_address().map(str::to_string);
        sc.save_node(&node)?;
        if vm.tag(crate::cloud::CLUSTER_TAG) != Some(sc.cluster.id.as_str()) {
            cloud.tag("UserVm", &[&vm.id], &sc.cluster.id).await?;
        }
        if vm.isoid.as_deref() != Some(version.iso_id.as_str()) {
            cloud.attach_iso(&version.iso_id, &vm.id).await?;
        }
        if !matches!(vm.state, VmState::Running) {
            cloud.start_vm(&vm.id).await?;
        }
        started += 1;
    }
    Ok(started)
}

/// Attaches the ISO `iso_id` to the VMs of the nodes named in `names` that do not have it.
///
/// # Errors
/// CloudStack refused it; a node has no VM.
pub async fn attach_iso(
    sc: &StepCtx<'_>,
    iso_id: &str,
    names: &[String],
) -> Result<usize, StepError> {
    let mut attached = 0;
    for node in sc.nodes.iter().filter(|n| names.contains(&n.name)) {
        let vm_id = node
            .vm_id
            .as_deref()
            .ok_or_else(|| StepError::fail(format!("node {} has no VM", node.name)))?;
        let vm = sc
            .ctx
            .cloud
            .vm(vm_id)
            .await?
            .ok_or_else(|| StepError::fail(format!("the VM of node {} is gone", node.name)))?;
        if vm.isoid.as_deref() == Some(iso_id) {
            continue;
        }
        if vm.isoid.is_some() {
            // Another ISO (a detach that failed earlier): CloudStack attaches one at a time.
            sc.ctx.cloud.detach_iso(vm_id).await?;
        }
        sc.ctx.cloud.attach_iso(iso_id, vm_id).await?;
        attached += 1;
    }
    Ok(attached)
}

/// Detaches the ISO from the VMs of the nodes named in `names`; failures are only logged (the
/// nodes do not need the ISO any more), as CKS does.
pub async fn detach_iso(sc: &StepCtx<'_>, names: &[String]) -> usize {
    let mut detached = 0;
    for node in sc.nodes.iter().filter(|n| names.contains(&n.name)) {
        let Some(vm_id) = &node.vm_id else { continue };
        match sc.ctx.cloud.vm(vm_id).await {
            Ok(Some(vm)) if vm.isoid.is_none() => continue,
            _ => {}
        }
        match sc.ctx.cloud.detach_iso(vm_id).await {
            Ok(()) => detached += 1,
            Err(err) => warn!(node = %node.name, error = %err, "cannot detach the ISO"),
        }
    }
    detached
}

/// Destroys and expunges a node's VM if it still exists; true when one was destroyed.
///
/// # Errors
/// CloudStack refused it.
pub async fn destroy_vm(sc: &StepCtx<'_>, vm_id: &str) -> Result<bool, StepError> {
    match sc.ctx.cloud.vm(vm_id).await? {
        Some(vm) if !matches!(vm.state, VmState::Destroyed | VmState::Expunging) => {
            sc.ctx.cloud.destroy_vm(vm_id).await?;
            info!(vm = %vm_id, name = %vm.name, "node VM destroyed");
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Every VM of the cluster: recorded on its nodes, tagged with the cluster, or named as one of
/// its planned nodes (deployed by a run that crashed before recording or tagging it).
///
/// # Errors
/// CloudStack failed.
pub async fn cluster_vms(sc: &StepCtx<'_>) -> Result<BTreeSet<String>, StepError> {
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
