//! `upgradeKubernetesCluster` (cks-reference §3.6, texts from §5 "Upgrade"): the target version
//! is checked as CKS checks it — enabled, its ISO Ready in the cluster's zone, the node offering
//! big enough, one minor at a time and never down — then the upgrade workflow begins through
//! the engine, which alone decides whether the cluster's state allows it.

use super::super::error::ApiError;
use super::super::params::Params;
use super::super::{Api, Reply};
use super::clusters::{owned_cluster, refusal};
use crate::cloudstack::Caller;
use crate::store::{UpgradeParams, VersionState, WorkflowKind, WorkflowParams};
use crate::versions::{Semver, check_upgrade};
use crate::workflow::{Operation, Target};

/// `upgradeKubernetesCluster id kubernetesversionid` (async): answers `{jobid}`; the job's
/// result is the cluster at its new version.
///
/// # Errors
/// CKS's validation errors; a state the transition table does not allow.
pub async fn upgrade(api: &Api, caller: &Caller, params: &Params) -> Result<Reply, ApiError> {
    params.require_all(&["id", "kubernetesversionid"])?;
    let cluster = owned_cluster(api, caller, params.require("id")?).await?;
    let ctx = &api.ctx;
    let target = ctx
        .store
        .version(params.require("kubernetesversionid")?)?
        .ok_or_else(|| ApiError::param("Invalid Kubernetes version ID"))?;
    if target.state != VersionState::Enabled {
        return Err(ApiError::param(format!(
            "Kubernetes version ID: {} for upgrade is in {:?} state",
            target.id, target.state
        )));
    }
    let current = ctx.store.version(&cluster.version_id)?.ok_or_else(|| {
        ApiError::param(format!(
            "Invalid Kubernetes version associated with cluster : {}",
            cluster.name
        ))
    })?;
    let offering = ctx
        .cloud
        .service_offering(&cluster.service_offering_id)
        .await
        .map_err(|e| ApiError::from(&e))?
        .ok_or_else(|| {
            ApiError::internal(format!(
                "Invalid service offering associated with Kubernetes cluster : {}",
                cluster.name
            ))
        })?;
    let (cpu, memory) = (
        offering.cpunumber.unwrap_or(0),
        offering.memory.unwrap_or(0),
    );
    if cpu < u64::from(target.min_cpu) {
        return Err(ApiError::param(format!(
            "Kubernetes cluster : {} cannot be upgraded with Kubernetes version : {} which needs minimum {} vCPUs while associated service offering : {} offers only {cpu} vCPUs",
            cluster.name, target.name, target.min_cpu, offering.name
        )));
    }
    if memory < u64::from(target.min_memory_mb) {
        return Err(ApiError::param(format!(
            "Kubernetes cluster : {} cannot be upgraded with Kubernetes version : {} which needs minimum {} MB RAM while associated service offering : {} offers only {memory} MB RAM",
            cluster.name, target.name, target.min_memory_mb, offering.name
        )));
    }
    let (Some(from), Some(to)) = (
        Semver::parse(&current.semantic_version),
        Semver::parse(&target.semantic_version),
    ) else {
        return Err(ApiError::internal(
            "a version's semantic version is unreadable",
        ));
    };
    check_upgrade(&from, &to).map_err(ApiError::param)?;
    let iso = ctx
        .cloud
        .iso(&target.iso_id)
        .await
        .map_err(|e| ApiError::from(&e))?
        .ok_or_else(|| {
            ApiError::param(format!(
                "Invalid ISO associated with version : {}",
                target.name
            ))
        })?;
    if !iso.isready {
        let zone = ctx
            .cloud
            .zone(&cluster.zone_id)
            .await
            .ok()
            .flatten()
            .map_or(cluster.zone_id.clone(), |z| z.name);
        return Err(ApiError::param(format!(
            "ISO associated with version : {} is not in Ready state for datacenter : {zone}",
            target.name
        )));
    }
    let job_id = api
        .engine
        .start(
            caller,
            Target::Existing(&cluster),
            Operation {
                kind: WorkflowKind::Upgrade,
                params: WorkflowParams::Upgrade(UpgradeParams {
                    version_id: target.id.clone(),
                    semantic_version: to.to_string(),
                    iso_id: target.iso_id.clone(),
                }),
            },
        )
        .await
        .map_err(|err| refusal(&cluster, WorkflowKind::Upgrade, err))?;
    Ok(Reply::Async { job_id, id: None })
}
