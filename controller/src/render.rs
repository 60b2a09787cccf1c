//! The CKS response objects: `kubernetessupportedversion` and `kubernetescluster` with every
//! field of cks-reference §4, plus what CKS never showed: the step a cluster's operation is in,
//! why it failed, and each node's latest agent event.

use serde_json::{Value, json};

use crate::api::error::ApiError;
use crate::context::Context;
use crate::store::{ClusterRecord, NodeRole, StepStatus, VersionRecord, cloudstack_date};
use crate::versions::{Semver, supports_autoscaling, supports_ha};

/// The `kubernetessupportedversion` object.
pub async fn version(ctx: &Context, version: &VersionRecord) -> Value {
    let iso = ctx.cloud.iso(&version.iso_id).await.ok().flatten();
    let zone_name = match &version.zone_id {
        Some(zone) => ctx.cloud.zone(zone).await.ok().flatten().map(|z| z.name),
        None => None,
    };
    let semver = Semver::parse(&version.semantic_version);
    // CKS shows the template's state: Ready once downloaded, else what CloudStack says.
    let iso_state = iso.as_ref().map(|iso| {
        if iso.isready {
            "Ready".to_string()
        } else {
            match iso.status.as_deref() {
                Some(s) if s.to_ascii_lowercase().contains("fail") || s.contains("rror") => {
                    "Failed".to_string()
                }
                _ => "Allocated".to_string(),
            }
        }
    });
    let mut out = json!({
        "id": version.id,
        "name": version.name,
        "semanticversion": version.semantic_version,
        "isoid": version.iso_id,
        "isoname": iso.as_ref().map_or(version.iso_name.clone(), |i| i.name.clone()),
        "isostate": iso_state.unwrap_or_else(|| "Removed".to_string()),
        "arch": version.arch,
        "supportsha": semver.as_ref().is_some_and(supports_ha),
        "supportsautoscaling": supports_autoscaling(&version.semantic_version),
        "state": format!("{:?}", version.state),
        "mincpunumber": version.min_cpu,
        "minmemory": version.min_memory_mb,
        "created": cloudstack_date(version.created),
        "directdownload": version.direct_download,
    });
    if let Some(zone) = &version.zone_id {
        out["zoneid"] = json!(zone);
        out["zonename"] = json!(zone_name);
    }
    out
}

/// The `kubernetescluster` object of the cluster with `id`.
///
/// # Errors
/// 431 when there is no such cluster; store failures.
pub async fn cluster_by_id(ctx: &Context, id: &str) -> Result<Value, ApiError> {
    let cluster = ctx.store.cluster(id)?.ok_or_else(|| {
        ApiError::param(format!("Unable to find Kubernetes cluster with ID: {id}"))
    })?;
    cluster_object(ctx, &cluster).await
}

/// The `kubernetescluster` object.
///
/// # Errors
/// Store failures.
pub async fn cluster_object(ctx: &Context, cluster: &ClusterRecord) -> Result<Value, ApiError> {
    let nodes = ctx.store.nodes(&cluster.id)?;
    let version = ctx.store.version(&cluster.version_id)?;
    let offering = ctx
        .cloud
        .service_offering(&cluster.service_offering_id)
        .await
        .ok()
        .flatten();
    let zone = ctx.cloud.zone(&cluster.zone_id).await.ok().flatten();
    let network = match &cluster.network_id {
        Some(id) => ctx.cloud.network(id).await.ok().flatten(),
        None => None,
    };
    let node_count = u64::from(cluster.control_nodes + cluster.size);
    let cpu = offering.as_ref().and_then(|o| o.cpunumber).unwrap_or(0) * node_count;
    let memory = offering.as_ref().and_then(|o| o.memory).unwrap_or(0) * node_count;
    let offering_name = offering.as_ref().map(|o| o.name.clone());

    let vm_ids: Vec<&str> = nodes.iter().filter_map(|n| n.vm_id.as_deref()).collect();
    let mut vms = ctx.cloud.vms_json(&vm_ids).await.unwrap_or_default();
    for vm in &mut vms {
        let id = vm
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let Some(node) = nodes.iter().find(|n| n.vm_id.as_deref() == Some(&id)) else {
            continue;
        };
        let status = ctx.hub.status(&crate::agents::NodeKey::new(
            cluster.id.clone(),
            node.name.clone(),
        ));
        vm["isexternalnode"] = json!(false);
        vm["isetcdnode"] = json!(false);
        vm["iscontrolnode"] = json!(node.role == NodeRole::Control);
        if let Some(v) = &node.kubernetes_version {
            vm["kubernetesnodeversion"] = json!(v);
        }
        let mut agent = json!({
            "connected": status.connected,
            "ready": status.node_ready,
        });
        if let Some(step) = &status.last_step {
            agent["step"] = json!(step.step);
            agent["detail"] = json!(step.detail);
        }
        vm["agent"] = agent;
    }
    vms.sort_by_key(|vm| {
        let id = vm.get("id").and_then(Value::as_str).unwrap_or_default();
        nodes
            .iter()
            .position(|n| n.vm_id.as_deref() == Some(id))
            .unwrap_or(usize::MAX)
    });

    let mut out = json!({
        "id": cluster.id,
        "name": cluster.name,
        "description": cluster.description,
        "zoneid": cluster.zone_id,
        "zonename": zone.map(|z| z.name),
        "serviceofferingid": cluster.service_offering_id,
        "serviceofferingname": offering_name,
        "workerofferingid": cluster.service_offering_id,
        "workerofferingname": offering_name,
        "controlofferingid": cluster.service_offering_id,
        "controlofferingname": offering_name,
        "templateid": cluster.template_id,
        "kubernetesversionid": cluster.version_id,
        "kubernetesversionname": version.map(|v| v.name),
        "account": cluster.owner.account,
        "domainid": cluster.owner.domain_id,
        "domain": cluster.owner.domain,
        "masternodes": cluster.control_nodes,
        "controlnodes": cluster.control_nodes,
        "size": cluster.size,
        "etcdnodes": 0,
        "state": cluster.state.as_str(),
        "cpunumber": cpu.to_string(),
        "memory": memory.to_string(),
        "virtualmachines": vms,
        "autoscalingenabled": false,
        "csienabled": false,
        "clustertype": "CloudManaged",
        "created": cloudstack_date(cluster.created),
        "hasannotations": false,
    });
    if let Some(network_id) = &cluster.network_id {
        out["networkid"] = json!(network_id);
        out["associatednetworkname"] = json!(network.map(|n| n.name));
    }
    if let Some(keypair) = &cluster.keypair {
        out["keypair"] = json!(keypair);
    }
    if let Some(endpoint) = &cluster.endpoint {
        out["endpoint"] = json!(endpoint);
    }
    if let (Some(ip_id), Some(ip)) = (&cluster.public_ip_id, &cluster.server_ip) {
        out["ipaddress"] = json!(ip);
        out["ipaddressid"] = json!(ip_id);
    }
    if let Some(ip) = &cluster.external_lb_ip {
        out["externalloadbalanceripaddress"] = json!(ip);
    }
    if let Some(size) = cluster.node_root_disk_size {
        out["noderootdisksize"] = json!(size);
    }
    if let Some(registry) = &cluster.registry {
        out["dockerregistryurl"] = json!(registry.url);
        out["dockerregistryusername"] = json!(registry.username);
    }
    if let Some(failure) = &cluster.failure {
        out["failure"] = json!(failure);
    }
    if let Some(workflow) = ctx.store.latest_workflow(&cluster.id)? {
        // The step being worked on; once the operation ended, the step it failed in (if any).
        let current = match workflow.status {
            crate::store::WorkflowStatus::Running => workflow
                .steps
                .iter()
                .rev()
                .find(|s| s.status != StepStatus::Done)
                .or(workflow.steps.last()),
            _ => workflow
                .steps
                .iter()
                .find(|s| s.status == StepStatus::Failed),
        };
        let steps: Vec<Value> = workflow
            .steps
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "status": format!("{:?}", s.status),
                    "attempts": s.attempts,
                    "detail": s.detail,
                })
            })
            .collect();
        out["progress"] = json!({
            "operation": workflow.kind.as_str(),
            "status": format!("{:?}", workflow.status),
            "step": current.map(|s| s.name.clone()),
            "steps": steps,
        });
        out["jobid"] = json!(workflow.job_id);
    }
    Ok(out)
}
