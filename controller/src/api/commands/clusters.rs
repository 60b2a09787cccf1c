//! `listKubernetesClusters`, `getKubernetesClusterConfig`, `stopKubernetesCluster`,
//! `startKubernetesCluster`, `deleteKubernetesCluster` (cks-reference §3.3–3.4, §3.7, §4.2;
//! texts from §5), and the refusal texts of every cluster operation. Whether an operation may
//! begin is the engine's decision (the transition table); these handlers only word the answer.

use serde_json::json;

use super::list_reply;
use crate::api::access;
use crate::api::error::ApiError;
use crate::api::params::Params;
use crate::api::{Api, Reply};
use crate::cloudstack::Caller;
use crate::render;
use crate::store::{ClusterRecord, ClusterState, WorkflowKind};
use crate::workflow::{KUBECONFIG_SECRET, Operation, StartError, Target};

/// A cluster the caller may act on ([`access::may_see`]); others do not exist for the caller.
///
/// # Errors
/// 431 for an unknown (or destroyed) cluster, and for one the caller may not see.
pub(super) async fn owned_cluster(
    api: &Api,
    caller: &Caller,
    id: &str,
) -> Result<ClusterRecord, ApiError> {
    // Another account's cluster is answered exactly as an unknown id: the answer must not
    // tell a caller which ids exist.
    let unknown = || ApiError::param(format!("Unable to find Kubernetes cluster with ID: {id}"));
    let cluster = api
        .ctx
        .store
        .cluster(id)?
        .filter(|c| c.state != ClusterState::Destroyed)
        .ok_or_else(unknown)?;
    if access::may_see(api, caller, &cluster).await? {
        Ok(cluster)
    } else {
        Err(unknown())
    }
}

/// `listKubernetesClusters`: `id`, `state`, `name` (exact), `keyword`, `account`,
/// `domainid`, `isrecursive`, `listall`, `projectid`, paging, with CloudStack's list rules
/// ([`access::ListScope`]).
///
/// # Errors
/// Bad paging; a project the caller cannot see.
pub async fn list(api: &Api, caller: &Caller, params: &Params) -> Result<Reply, ApiError> {
    let paging = params.paging()?;
    let scope = access::ListScope::new(api, caller, params).await?;
    let state = match params.get("state") {
        Some(text) => Some(
            ClusterState::parse(text)
                .ok_or_else(|| ApiError::param(format!("Invalid state {text}")))?,
        ),
        None => None,
    };
    let keyword = params.get("keyword").map(str::to_lowercase);
    let clusters: Vec<ClusterRecord> = api
        .ctx
        .store
        .clusters()?
        .into_iter()
        .filter(|c| scope.shows(caller, c))
        .filter(|c| params.get("id").is_none_or(|id| c.id == id))
        .filter(|c| params.get("name").is_none_or(|n| c.name == n))
        .filter(|c| state.is_none_or(|s| c.state == s))
        .filter(|c| {
            keyword
                .as_ref()
                .is_none_or(|k| c.name.to_lowercase().contains(k))
        })
        .collect();
    if clusters.is_empty() {
        return Ok(list_reply("kubernetescluster", Vec::new(), paging));
    }
    let count = clusters.len();
    let page = paging.slice(&clusters);
    let items = render::clusters(&api.ctx, page).await?;
    let mut body = json!({ "count": count });
    if !items.is_empty() {
        body["kubernetescluster"] = json!(items);
    }
    Ok(Reply::Sync(body))
}

/// `getKubernetesClusterConfig id`: the stored kubeconfig (`clusterconfig.configdata`).
///
/// # Errors
/// Unknown cluster; still starting; no kubeconfig.
pub async fn config(api: &Api, caller: &Caller, params: &Params) -> Result<Reply, ApiError> {
    let id = params.require("id")?;
    let cluster = owned_cluster(api, caller, id).await?;
    let sealed = api.ctx.store.secret(&cluster.id, KUBECONFIG_SECRET)?;
    let Some(sealed) = sealed else {
        let text = if matches!(
            cluster.state,
            ClusterState::Created | ClusterState::Starting
        ) {
            format!(
                "Setup is in progress for Kubernetes cluster : {}, config not available at this moment",
                cluster.name
            )
        } else {
            format!("Config not found for Kubernetes cluster : {}", cluster.name)
        };
        return Err(ApiError::internal(text));
    };
    let plain = api
        .ctx
        .sealer
        .open(&cluster.id, KUBECONFIG_SECRET, &sealed)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    // Stored kubeconfigs are rebuilt when fetched from the node; one stored by an older
    // controller is rebuilt here, so nothing but certificate data is ever served.
    let server_ip = cluster.server_ip.as_deref().unwrap_or_default();
    let configdata = crate::kubeconfig::rebuild(&String::from_utf8_lossy(&plain), server_ip)
        .map_err(|e| {
            tracing::warn!(cluster = %cluster.id, error = %e, "stored kubeconfig refused");
            ApiError::internal(format!(
                "Config not found for Kubernetes cluster : {}",
                cluster.name
            ))
        })?;
    Ok(Reply::Sync(json!({
        "clusterconfig": {
            "id": cluster.id,
            "name": cluster.name,
            "configdata": configdata,
        }
    })))
}

/// The answer to an operation the engine would not begin, in CKS's words for each command.
pub(super) fn refusal(cluster: &ClusterRecord, kind: WorkflowKind, err: StartError) -> ApiError {
    let name = &cluster.name;
    match err {
        StartError::Refused { state } => match kind {
            WorkflowKind::Delete => ApiError::internal(format!(
                "Cannot perform delete operation on cluster {name} in state: {state}"
            )),
            WorkflowKind::Scale => ApiError::permission(format!(
                "Kubernetes cluster {name} is in {state} state and can not be scaled"
            )),
            WorkflowKind::Upgrade => ApiError::param(format!(
                "Kubernetes cluster : {name} is not in running state"
            )),
            WorkflowKind::Stop => ApiError::internal(format!(
                "Kubernetes cluster : {name} is in state {state} and cannot be stopped"
            )),
            WorkflowKind::Start => ApiError::internal(format!(
                "Kubernetes cluster : {name} is in state {state} and cannot be started"
            )),
            WorkflowKind::Create => ApiError::internal(format!(
                "Kubernetes cluster : {name} is in state {state} and cannot be created"
            )),
        },
        StartError::Changed => ApiError::internal(format!(
            "Kubernetes cluster {name} changed state meanwhile; try again"
        )),
        StartError::Store(err) => err.into(),
    }
}

/// Begins `kind` on the caller's cluster `id` and answers with its job.
async fn operate(
    api: &Api,
    caller: &Caller,
    params: &Params,
    kind: WorkflowKind,
) -> Result<Reply, ApiError> {
    let id = params.require("id")?;
    let cluster = owned_cluster(api, caller, id).await?;
    let job_id = api
        .engine
        .start(caller, Target::Existing(&cluster), Operation::plain(kind))
        .await
        .map_err(|err| refusal(&cluster, kind, err))?;
    Ok(Reply::Async { job_id, id: None })
}

/// `stopKubernetesCluster id` (async): stops every node VM, keeping its disk. Running and Alert
/// clusters go to Stopping, then Stopped (or Alert if a VM would not stop); a Stopped cluster's
/// job succeeds at once and a Stopping one's answer is the running stop's job, as in CKS. Unlike
/// CKS, a cluster still being created or started is refused: its workflow owns the VMs.
///
/// # Errors
/// Unknown cluster; a state that cannot be stopped.
pub async fn stop(api: &Api, caller: &Caller, params: &Params) -> Result<Reply, ApiError> {
    operate(api, caller, params, WorkflowKind::Stop).await
}

/// `startKubernetesCluster id` (async): starts the node VMs of a Stopped cluster and waits
/// until every node is Ready again; a Running cluster's job succeeds at once, a Starting one's
/// answer is the running start's job; a failed start leaves the cluster in Alert, the step named.
///
/// # Errors
/// Unknown cluster; a state that cannot be started.
pub async fn start(api: &Api, caller: &Caller, params: &Params) -> Result<Reply, ApiError> {
    operate(api, caller, params, WorkflowKind::Start).await
}

/// `deleteKubernetesCluster id` (async): accepted in every state (unlike CKS): an operation
/// under way is cancelled and everything the cluster made is removed. Refused, as in CKS, when
/// the network the controller made for the cluster carries VMs that are not the cluster's.
///
/// # Errors
/// Unknown cluster; foreign VMs on the cluster's network.
pub async fn delete(api: &Api, caller: &Caller, params: &Params) -> Result<Reply, ApiError> {
    let id = params.require("id")?;
    let cluster = owned_cluster(api, caller, id).await?;
    check_network_is_ours(api, &cluster).await?;
    let job_id = api
        .engine
        .start(
            caller,
            Target::Existing(&cluster),
            Operation::plain(WorkflowKind::Delete),
        )
        .await
        .map_err(|err| refusal(&cluster, WorkflowKind::Delete, err))?;
    tracing::info!(cluster = %cluster.id, name = %cluster.name, "deleting Kubernetes cluster");
    Ok(Reply::Async { job_id, id: None })
}

/// CKS refuses to delete a cluster whose network (made for it) carries VMs that are not its own
/// (apache/cloudstack#4133): deleting the network would fail or take them along.
async fn check_network_is_ours(api: &Api, cluster: &ClusterRecord) -> Result<(), ApiError> {
    let ctx = &api.ctx;
    let (true, Some(network_id)) = (cluster.network_created, &cluster.network_id) else {
        return Ok(());
    };
    let ours: Vec<String> = ctx
        .store
        .nodes(&cluster.id)?
        .into_iter()
        .filter_map(|n| n.vm_id)
        .collect();
    let on_network: Vec<serde_json::Value> = ctx
        .cloud
        .client()
        .list(
            "listVirtualMachines",
            &[("networkid", network_id), ("listall", "true")],
            "virtualmachine",
        )
        .await
        .map_err(|e| ApiError::from(&e))?;
    let foreign = on_network.iter().any(|vm| {
        let vm_id = vm.get("id").and_then(|v| v.as_str()).unwrap_or_default();
        let tagged = vm
            .get("tags")
            .and_then(|t| t.as_array())
            .is_some_and(|tags| {
                tags.iter().any(|t| {
                    t.get("key").and_then(|k| k.as_str()) == Some(crate::cloud::CLUSTER_TAG)
                        && t.get("value").and_then(|v| v.as_str()) == Some(&cluster.id)
                })
            });
        !ours.iter().any(|o| o == vm_id) && !tagged
    });
    if foreign {
        return Err(ApiError::internal(format!(
            "Network : {network_id} for Kubernetes cluster : {} has instances using it which are not part of the Kubernetes cluster",
            cluster.name
        )));
    }
    Ok(())
}
