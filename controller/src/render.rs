//! The CKS response objects: `kubernetessupportedversion` and `kubernetescluster` with every
//! field of cks-reference §4, plus what CKS never showed: the step a cluster's operation is in,
//! why it failed, and each node's latest agent event.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::api::error::ApiError;
use crate::cloudstack::CloudStackError;
use crate::context::Context;
use crate::store::{
    ClusterRecord, NodeRecord, NodeRole, StepStatus, VersionRecord, cloudstack_date,
};
use crate::versions::{Semver, supports_autoscaling, supports_ha};

/// How many lookups of one kind run against CloudStack at once while rendering a page.
const LOOKUPS_AT_ONCE: usize = 8;

/// Fetches each distinct id once, a few at a time. What CloudStack cannot tell (the object is
/// gone, or the call failed) is left out and renders as absent: a list must not fail because
/// one cluster's network was deleted behind its back.
async fn fetch_each<'a, T, F, Fut>(
    ids: impl IntoIterator<Item = &'a str>,
    fetch: F,
) -> HashMap<String, T>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<Option<T>, CloudStackError>>,
{
    let distinct: BTreeSet<&str> = ids.into_iter().collect();
    // The futures are made here, outside the stream: closures inside stream adapters make
    // the handler's future lose `Send` (rustc's higher-ranked lifetime limitation).
    let lookups: Vec<_> = distinct
        .into_iter()
        .map(|id| {
            let found = fetch(id.to_owned());
            let id = id.to_owned();
            async move { (id, found.await) }
        })
        .collect();
    let found: Vec<(String, Result<Option<T>, CloudStackError>)> =
        futures_util::stream::iter(lookups)
            .buffer_unordered(LOOKUPS_AT_ONCE)
            .collect()
            .await;
    found
        .into_iter()
        .filter_map(|(id, found)| found.ok().flatten().map(|item| (id, item)))
        .collect()
}

/// The `kubernetessupportedversion` object.
pub async fn version(ctx: &Context, version: &VersionRecord) -> Value {
    versions(ctx, std::slice::from_ref(version))
        .await
        .pop()
        .unwrap_or(Value::Null)
}

/// The `kubernetessupportedversion` objects of a page, with each ISO and zone fetched once.
pub async fn versions(ctx: &Context, versions: &[VersionRecord]) -> Vec<Value> {
    let (isos, zones) = tokio::join!(
        fetch_each(
            versions.iter().map(|v| v.iso_id.as_str()),
            |id| async move { ctx.cloud.iso(&id).await }
        ),
        fetch_each(
            versions.iter().filter_map(|v| v.zone_id.as_deref()),
            |id| async move { ctx.cloud.zone(&id).await }
        ),
    );
    versions
        .iter()
        .map(|version| {
            let zone_name = version
                .zone_id
                .as_ref()
                .and_then(|zone| zones.get(zone))
                .map(|z| z.name.clone());
            version_object(version, isos.get(&version.iso_id), zone_name)
        })
        .collect()
}

fn version_object(
    version: &VersionRecord,
    iso: Option<&crate::cloudstack::types::Iso>,
    zone_name: Option<String>,
) -> Value {
    let semver = Semver::parse(&version.semantic_version);
    // CKS shows the template's state: Ready once downloaded, else what CloudStack says.
    let iso_state = iso.map(|iso| {
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
        "isoname": iso.map_or(version.iso_name.clone(), |i| i.name.clone()),
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
    let mut objects = clusters(ctx, std::slice::from_ref(&cluster)).await?;
    Ok(objects.pop().unwrap_or(Value::Null))
}

/// What a page of clusters refers to in CloudStack, fetched once for the whole page: clusters
/// mostly share a zone and an offering, and one `listVirtualMachines ids=…` serves every node.
struct ClusterLookups {
    zones: HashMap<String, crate::cloudstack::types::Zone>,
    offerings: HashMap<String, crate::cloudstack::types::ServiceOffering>,
    networks: HashMap<String, crate::cloudstack::types::Network>,
    /// `listVirtualMachines` objects by VM id.
    vms: HashMap<String, Value>,
}

/// The `kubernetescluster` objects of a page of clusters, in their order.
///
/// # Errors
/// Store failures.
pub async fn clusters(ctx: &Context, clusters: &[ClusterRecord]) -> Result<Vec<Value>, ApiError> {
    let nodes = clusters
        .iter()
        .map(|c| ctx.store.nodes(&c.id))
        .collect::<Result<Vec<_>, _>>()?;
    let vm_ids: Vec<&str> = nodes
        .iter()
        .flatten()
        .filter_map(|n| n.vm_id.as_deref())
        .collect();
    let (zones, offerings, networks, vms) = tokio::join!(
        fetch_each(
            clusters.iter().map(|c| c.zone_id.as_str()),
            |id| async move { ctx.cloud.zone(&id).await }
        ),
        fetch_each(
            clusters.iter().map(|c| c.service_offering_id.as_str()),
            |id| async move { ctx.cloud.service_offering(&id).await }
        ),
        fetch_each(
            clusters.iter().filter_map(|c| c.network_id.as_deref()),
            |id| async move { ctx.cloud.network(&id).await }
        ),
        ctx.cloud.vms_json(&vm_ids),
    );
    let vms = vms
        .unwrap_or_default()
        .into_iter()
        .filter_map(|vm| Some((vm.get("id")?.as_str()?.to_owned(), vm)))
        .collect();
    let lookups = ClusterLookups {
        zones,
        offerings,
        networks,
        vms,
    };
    clusters
        .iter()
        .zip(&nodes)
        .map(|(cluster, nodes)| cluster_object(ctx, cluster, nodes, &lookups))
        .collect()
}

/// The `kubernetescluster` object.
fn cluster_object(
    ctx: &Context,
    cluster: &ClusterRecord,
    nodes: &[NodeRecord],
    lookups: &ClusterLookups,
) -> Result<Value, ApiError> {
    let version = ctx.store.version(&cluster.version_id)?;
    let offering = lookups.offerings.get(&cluster.service_offering_id);
    let zone = lookups.zones.get(&cluster.zone_id);
    let network = cluster
        .network_id
        .as_ref()
        .and_then(|id| lookups.networks.get(id));
    let node_count = u64::from(cluster.control_nodes + cluster.size);
    let cpu = offering.as_ref().and_then(|o| o.cpunumber).unwrap_or(0) * node_count;
    let memory = offering.as_ref().and_then(|o| o.memory).unwrap_or(0) * node_count;
    let offering_name = offering.as_ref().map(|o| o.name.clone());

    // The nodes' VMs in the nodes' order, each with what only the controller knows.
    let mut vms = Vec::new();
    for node in nodes {
        let Some(mut vm) = node
            .vm_id
            .as_ref()
            .and_then(|id| lookups.vms.get(id))
            .cloned()
        else {
            continue;
        };
        let status = ctx.agents.status(&crate::agents::NodeKey::new(
            cluster.id.clone(),
            node.name.clone(),
        ));
        vm["isexternalnode"] = json!(false);
        vm["isetcdnode"] = json!(false);
        vm["iscontrolnode"] = json!(node.role == NodeRole::Control);
        if let Some(v) = &node.kubernetes_version {
            vm["kubernetesnodeversion"] = json!(v);
        }
        // The node's health as its agent reports it: stream open, kubelet Ready, the agent's
        // version, and when it was last heard from.
        let mut agent = json!({
            "connected": status.connected,
            "ready": status.node_ready,
        });
        if let Some(hello) = &status.hello {
            agent["version"] = json!(hello.agent_version);
        }
        if let Some(seen) = status.last_seen {
            let ago = i64::try_from(seen.elapsed().as_secs()).unwrap_or(i64::MAX);
            agent["lastheartbeat"] = json!(crate::store::cloudstack_date(
                crate::store::now().saturating_sub(ago)
            ));
        }
        if let Some(step) = &status.last_step {
            agent["step"] = json!(step.step);
            agent["detail"] = json!(step.detail);
        }
        vm["agent"] = agent;
        vms.push(vm);
    }

    let mut out = json!({
        "id": cluster.id,
        "name": cluster.name,
        "description": cluster.description,
        "zoneid": cluster.zone_id,
        "zonename": zone.map(|z| z.name.clone()),
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
    // CloudStack's `populateOwner`: a project's resource names its project, not the
    // project's own account.
    if let Some(project) = &cluster.owner.project {
        if let Some(fields) = out.as_object_mut() {
            fields.remove("account");
        }
        out["projectid"] = json!(project.id);
        out["project"] = json!(project.name);
    }
    if let Some(network_id) = &cluster.network_id {
        out["networkid"] = json!(network_id);
        out["associatednetworkname"] = json!(network.map(|n| n.name.clone()));
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
            "step": current.map(|s| s.name),
            "steps": steps,
        });
        out["jobid"] = json!(workflow.job_id);
    }
    Ok(out)
}
