//! `scaleKubernetesCluster` (cks-reference §3.5, texts from §5 "Scale"): the request is parsed
//! ([`parse`]), checked against the cluster without any look-up ([`check`], unit-tested), the
//! new offering looked up and checked in CloudStack, then the scale workflow begins through the
//! engine, which alone decides whether the cluster's state allows it.

use serde_json::Value;

use super::super::error::ApiError;
use super::super::params::Params;
use super::super::{Api, Reply};
use super::clusters::{owned_cluster, refusal};
use crate::cloudstack::Caller;
use crate::cloudstack::types::ServiceOffering;
use crate::settings::MAX_SIZE;
use crate::store::{
    ClusterRecord, ClusterState, NodeRecord, NodeRole, ScaleParams, VersionRecord, WorkflowKind,
    WorkflowParams,
};
use crate::versions::supports_autoscaling;
use crate::workflow::{Operation, Target};

/// The smallest node CKS accepts: 2 vCPUs, 2048 MB.
const MIN_CPU: u64 = 2;
/// See [`MIN_CPU`].
const MIN_MEMORY_MB: u64 = 2048;
/// Hypervisors whose running VMs CloudStack scales live (CKS's list).
const LIVE_SCALING_HYPERVISORS: [&str; 3] = ["XenServer", "VMware", "Simulator"];

/// A `scaleKubernetesCluster` request as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScaleRequest {
    /// `id`.
    pub id: String,
    /// `size` (workers).
    pub size: Option<i64>,
    /// `serviceofferingid`.
    pub offering_id: Option<String>,
    /// `nodeofferings`: (node type, offering id), 4.21.
    pub node_offerings: Vec<(String, String)>,
    /// `nodeids`: VM ids of nodes to remove.
    pub node_ids: Option<Vec<String>>,
    /// `autoscalingenabled`.
    pub autoscaling: Option<bool>,
    /// `minsize`.
    pub min_size: Option<i64>,
    /// `maxsize`.
    pub max_size: Option<i64>,
}

impl ScaleRequest {
    /// What was asked, as (parameter, value) pairs, in a fixed order (see
    /// [`ScaleParams::asked`]).
    pub fn asked(&self) -> Vec<(String, String)> {
        let mut asked = Vec::new();
        if let Some(size) = self.size {
            asked.push(("size".to_string(), size.to_string()));
        }
        if let Some(offering) = &self.offering_id {
            asked.push(("serviceofferingid".to_string(), offering.clone()));
        }
        for (node, offering) in &self.node_offerings {
            asked.push((format!("nodeofferings.{node}"), offering.clone()));
        }
        if let Some(ids) = &self.node_ids {
            asked.push(("nodeids".to_string(), ids.join(",")));
        }
        if let Some(enabled) = self.autoscaling {
            asked.push(("autoscalingenabled".to_string(), enabled.to_string()));
        }
        asked
    }
}

/// Reads the parameters (types only: every rule is in [`check`]).
///
/// # Errors
/// A missing `id`, a value that is not a number or boolean.
pub fn parse(params: &Params) -> Result<ScaleRequest, ApiError> {
    let node_offerings = params
        .map("nodeofferings")
        .into_iter()
        .filter_map(|entry| {
            Some((
                entry.get("node")?.to_ascii_uppercase(),
                entry.get("offering")?.clone(),
            ))
        })
        .collect();
    Ok(ScaleRequest {
        id: params.require("id")?.to_string(),
        size: params.number("size")?,
        offering_id: params.get("serviceofferingid").map(str::to_string),
        node_offerings,
        node_ids: params.list("nodeids"),
        autoscaling: params.boolean("autoscalingenabled")?,
        min_size: params.number("minsize")?,
        max_size: params.number("maxsize")?,
    })
}

/// What a checked request asks of the workflow (an empty plan, as for the size the cluster
/// already has, runs as a scale that changes nothing, as in CKS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePlan {
    /// The workflow's parameters.
    pub params: ScaleParams,
}

/// The offering a request names: `serviceofferingid`, else a `nodeofferings` entry for the
/// worker, control or default type (every node shares one offering until node types exist).
fn requested_offering(request: &ScaleRequest) -> Result<Option<String>, ApiError> {
    let mut ids: Vec<&String> = request.node_offerings.iter().map(|(_, id)| id).collect();
    ids.extend(request.offering_id.as_ref());
    ids.sort();
    ids.dedup();
    match ids.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some((*one).clone())),
        _ => Err(ApiError::param(
            "Different service offerings per node type are not supported yet: every node of a \
             cluster shares one offering; pass serviceofferingid",
        )),
    }
}

/// CKS's checks of a scale request against the cluster, in CKS's order, without look-ups.
/// `max_size` is `cloud.kubernetes.cluster.max.size` for the owner.
///
/// # Errors
/// CKS's validation errors.
pub fn check(
    cluster: &ClusterRecord,
    nodes: &[NodeRecord],
    version: &VersionRecord,
    request: &ScaleRequest,
    max_size: u64,
) -> Result<ScalePlan, ApiError> {
    let name = &cluster.name;
    let offering_id = requested_offering(request)?;
    if offering_id.is_none()
        && request.size.is_none()
        && request.node_ids.is_none()
        && request.autoscaling.is_none()
    {
        return Err(ApiError::param(format!(
            "Kubernetes cluster {name} cannot be scaled, either service offering or cluster size or nodeids to be removed or autoscaling must be passed"
        )));
    }
    let over_max = |workers: i64| {
        u64::try_from(workers).unwrap_or(0) + u64::from(cluster.control_nodes) > max_size
    };
    let max_error = || {
        ApiError::param(format!(
            "Maximum cluster size can not exceed {max_size}. Please contact your administrator"
        ))
    };
    if request.autoscaling == Some(true) {
        if request.size.is_some() || request.node_ids.is_some() {
            return Err(ApiError::param(
                "Autoscaling can not be passed along with nodeids or clustersize",
            ));
        }
        if !supports_autoscaling(&version.semantic_version) {
            return Err(ApiError::param(
                "Autoscaling requires Kubernetes Version 1.15.0 or above",
            ));
        }
        let (Some(min), Some(max)) = (request.min_size, request.max_size) else {
            return Err(ApiError::param(
                "Autoscaling requires minsize and maxsize to be passed",
            ));
        };
        if min < 1 {
            return Err(ApiError::param("Minsize must be at least than 1"));
        }
        if max <= min {
            return Err(ApiError::param("Maxsize must be greater than minsize"));
        }
        if over_max(max) {
            return Err(max_error());
        }
    }
    let workers: Vec<&NodeRecord> = nodes
        .iter()
        .filter(|n| n.role == NodeRole::Worker)
        .collect();
    let mut remove = Vec::new();
    if let Some(ids) = &request.node_ids {
        if request.size.is_some() || offering_id.is_some() {
            return Err(ApiError::param(
                "nodeids can not be passed along with clustersize or service offering",
            ));
        }
        let chosen: Vec<&NodeRecord> = ids
            .iter()
            .filter_map(|id| {
                nodes
                    .iter()
                    .find(|n| n.vm_id.as_deref() == Some(id.as_str()))
            })
            .collect();
        if ids.is_empty() || chosen.len() != ids.len() {
            return Err(ApiError::param("Invalid node ids"));
        }
        let control = chosen
            .iter()
            .filter(|n| n.role == NodeRole::Control)
            .count();
        if control >= usize::try_from(cluster.control_nodes).unwrap_or(usize::MAX) {
            return Err(ApiError::param(
                "Can not remove all control nodes from a cluster",
            ));
        }
        if chosen.len() - control >= workers.len() {
            return Err(ApiError::param("Can not remove all nodes from a cluster"));
        }
        let first = nodes
            .iter()
            .filter(|n| n.role == NodeRole::Control)
            .min_by_key(|n| n.ordinal);
        if let Some(first) = first
            && chosen.iter().any(|n| n.name == first.name)
        {
            return Err(ApiError::param(format!(
                "The first control node {} of Kubernetes cluster {name} holds the cluster's \
                 certificates and joins new nodes; it cannot be removed",
                first.name
            )));
        }
        remove = chosen.iter().map(|n| n.name.clone()).collect();
    }
    let mut size = None;
    if let Some(wanted) = request.size
        && usize::try_from(wanted).ok() != Some(workers.len())
    {
        if cluster.state == ClusterState::Stopped {
            return Err(ApiError::permission(format!(
                "Kubernetes cluster : {name} is in {} state",
                cluster.state
            )));
        }
        if wanted < 1 {
            return Err(ApiError::param(format!(
                "Kubernetes cluster : {name} cannot be scaled for size, {wanted}"
            )));
        }
        if over_max(wanted) {
            return Err(max_error());
        }
        let wanted = usize::try_from(wanted).unwrap_or(usize::MAX);
        if wanted < workers.len() {
            // The newest workers leave first (CKS picks from the end of its list too, but its
            // index is wrong for HA clusters; here only workers are ever picked).
            let mut newest = workers.clone();
            newest.sort_by_key(|n| std::cmp::Reverse(n.ordinal));
            remove = newest
                .iter()
                .take(workers.len() - wanted)
                .map(|n| n.name.clone())
                .collect();
        }
        size = Some(u32::try_from(wanted).unwrap_or(u32::MAX));
    }
    Ok(ScalePlan {
        params: ScaleParams {
            size,
            offering_id,
            remove,
            asked: request.asked(),
        },
    })
}

/// CKS's checks of a new offering (`checkServiceOfferingForNodesScale` and the scale-down
/// rule), given the cluster's current offering.
///
/// # Errors
/// CKS's validation errors.
pub fn check_offering(
    cluster: &ClusterRecord,
    version: &VersionRecord,
    new: &ServiceOffering,
    current: Option<&ServiceOffering>,
) -> Result<(), ApiError> {
    let name = &cluster.name;
    if new.iscustomized {
        return Err(ApiError::param(format!(
            "Custom service offerings are not supported for Kubernetes clusters. Kubernetes cluster : {name}, service offering : {}",
            new.name
        )));
    }
    let (cpu, memory) = (new.cpunumber.unwrap_or(0), new.memory.unwrap_or(0));
    if cpu < MIN_CPU || memory < MIN_MEMORY_MB {
        return Err(ApiError::param(format!(
            "Kubernetes cluster : {name} cannot be scaled with service offering : {}, Kubernetes cluster template(CoreOS) needs minimum {MIN_CPU} vCPUs and {MIN_MEMORY_MB} MB RAM",
            new.name
        )));
    }
    if cpu < u64::from(version.min_cpu) {
        return Err(ApiError::param(format!(
            "Kubernetes cluster : {name} cannot be scaled with service offering : {}, associated Kubernetes version : {} needs minimum {} vCPUs",
            new.name, version.name, version.min_cpu
        )));
    }
    if memory < u64::from(version.min_memory_mb) {
        return Err(ApiError::param(format!(
            "Kubernetes cluster : {name} cannot be scaled with service offering : {}, associated Kubernetes version : {} needs minimum {} MB RAM",
            new.name, version.name, version.min_memory_mb
        )));
    }
    let Some(current) = current else {
        return Ok(());
    };
    let power = |o: &ServiceOffering| o.cpunumber.unwrap_or(0) * o.cpuspeed.unwrap_or(0);
    if cluster.state == ClusterState::Running
        && (memory < current.memory.unwrap_or(0) || power(new) < power(current))
    {
        return Err(ApiError::internal(format!(
            "Kubernetes cluster cannot be scaled down for service offering. Service offering : {} offers lesser resources as compared to service offering : {} of Kubernetes cluster : {name}",
            new.name, current.name
        )));
    }
    if new.id == current.id {
        return Err(ApiError::param(format!(
            "Cannot scale the nodes of type DEFAULT as the provided offering {} is the same as the existing offering",
            new.name
        )));
    }
    Ok(())
}

/// Running node VMs can take a new offering only where CloudStack scales VMs live: a hypervisor
/// that can (CKS's check) and `enable.dynamic.scale.vm` on (CloudStack refuses otherwise; CKS
/// would go to Alert after trying).
async fn check_live_scaling(
    api: &Api,
    cluster: &ClusterRecord,
    nodes: &[NodeRecord],
) -> Result<(), ApiError> {
    let vm_ids: Vec<&str> = nodes.iter().filter_map(|n| n.vm_id.as_deref()).collect();
    let vms = api
        .ctx
        .cloud
        .vms_json(&vm_ids)
        .await
        .map_err(|e| ApiError::from(&e))?;
    for vm in vms
        .iter()
        .filter(|vm| vm.get("state").and_then(Value::as_str) == Some("Running"))
    {
        let hypervisor = vm
            .get("hypervisor")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !LIVE_SCALING_HYPERVISORS
            .iter()
            .any(|h| h.eq_ignore_ascii_case(hypervisor))
        {
            return Err(ApiError::internal(format!(
                "Scaling Kubernetes cluster : {} failed, scaling Kubernetes cluster with running VMs on hypervisor {hypervisor} is not supported!",
                cluster.name
            )));
        }
        if vm.get("isdynamicallyscalable").and_then(Value::as_bool) == Some(false) {
            return Err(ApiError::internal(format!(
                "Kubernetes cluster : {} cannot change the offering of its running VMs: VM {} is \
                 not dynamically scalable (it was deployed while CloudStack's \
                 enable.dynamic.scale.vm was false). Stop the cluster first",
                cluster.name,
                vm.get("name").and_then(Value::as_str).unwrap_or_default()
            )));
        }
    }
    let dynamic = api
        .ctx
        .cloud
        .global_setting("enable.dynamic.scale.vm")
        .await
        .map_err(|e| ApiError::from(&e))?;
    if !dynamic.is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Err(ApiError::internal(format!(
            "Kubernetes cluster : {} cannot change the offering of its running VMs: CloudStack's \
             enable.dynamic.scale.vm is false. Stop the cluster first, or ask the operator to \
             enable dynamic scaling",
            cluster.name
        )));
    }
    Ok(())
}

/// `scaleKubernetesCluster` (async): answers `{jobid}`; the job's result is the cluster.
///
/// # Errors
/// CKS's validation errors; a state the transition table does not allow.
pub async fn scale(api: &Api, caller: &Caller, params: &Params) -> Result<Reply, ApiError> {
    let request = parse(params)?;
    let cluster = owned_cluster(api, caller, &request.id).await?;
    let ctx = &api.ctx;
    let nodes = ctx.store.nodes(&cluster.id)?;
    let version = ctx.store.version(&cluster.version_id)?.ok_or_else(|| {
        ApiError::internal(format!(
            "Invalid Kubernetes version associated with Kubernetes cluster : {}",
            cluster.name
        ))
    })?;
    let max_size = ctx
        .settings
        .number(MAX_SIZE, cluster.owner.settings_account());
    let plan = check(&cluster, &nodes, &version, &request, max_size)?;
    if let Some(offering_id) = &plan.params.offering_id {
        // The new offering as the caller may see it (a domain-restricted offering of another
        // domain does not exist for them).
        let new = ctx
            .cloud
            .as_caller(caller)
            .service_offering(offering_id)
            .await
            .map_err(|e| ApiError::from(&e))?
            .ok_or_else(|| {
                ApiError::param(format!("Failed to find service offering ID: {offering_id}"))
            })?;
        let current = ctx
            .cloud
            .service_offering(&cluster.service_offering_id)
            .await
            .map_err(|e| ApiError::from(&e))?;
        check_offering(&cluster, &version, &new, current.as_ref())?;
        if cluster.state != ClusterState::Stopped {
            check_live_scaling(api, &cluster, &nodes).await?;
        }
    }
    if plan.params.size.is_some_and(|s| s > cluster.size) {
        let template = ctx
            .cloud
            .template(&cluster.template_id, &cluster.zone_id)
            .await
            .map_err(|e| ApiError::from(&e))?;
        if !template.as_ref().is_some_and(|t| t.isready) {
            return Err(ApiError::param(format!(
                "Template : {} associated with Kubernetes cluster : {} is not in Ready state for datacenter : {}",
                template.map_or(cluster.template_id.clone(), |t| t.name),
                cluster.name,
                cluster.zone_id
            )));
        }
    }
    if request.autoscaling == Some(true) {
        // The cluster-autoscaler needs CloudStack credentials inside the cluster; CKS puts the
        // owner's own keys there. Scoped per-cluster credentials come first (see README).
        return Err(ApiError::param(format!(
            "Autoscaling of Kubernetes cluster {} is not available with this Kubernetes service \
             yet: the cluster autoscaler is not deployed. Scale with size or nodeids",
            cluster.name
        )));
    }
    let job_id = api
        .engine
        .start(
            caller,
            Target::Existing(&cluster),
            Operation {
                kind: WorkflowKind::Scale,
                params: WorkflowParams::Scale(plan.params),
            },
        )
        .await
        .map_err(|err| refusal(&cluster, WorkflowKind::Scale, err))?;
    Ok(Reply::Async { job_id, id: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::VersionState;

    fn cluster(state: ClusterState, control: u32, size: u32) -> (ClusterRecord, Vec<NodeRecord>) {
        let cluster = ClusterRecord::for_tests("c", state, control, size);
        let nodes = (0..control + size)
            .map(|i| NodeRecord {
                cluster_id: "c".into(),
                name: format!("n{i}"),
                role: if i < control {
                    NodeRole::Control
                } else {
                    NodeRole::Worker
                },
                ordinal: i,
                vm_id: Some(format!("vm{i}")),
                ip: None,
                joined: true,
                kubernetes_version: None,
                added_by: None,
            })
            .collect();
        (cluster, nodes)
    }

    fn version(semver: &str) -> VersionRecord {
        VersionRecord {
            id: "v".into(),
            name: format!("v{semver}"),
            semantic_version: semver.into(),
            iso_id: "i".into(),
            iso_name: "i".into(),
            zone_id: None,
            state: VersionState::Enabled,
            min_cpu: 2,
            min_memory_mb: 2048,
            arch: "x86_64".into(),
            url: String::new(),
            checksum: None,
            direct_download: false,
            created: 0,
        }
    }

    fn request(pairs: &[(&str, &str)]) -> ScaleRequest {
        let mut all = vec![("command", "scaleKubernetesCluster"), ("id", "c")];
        all.extend_from_slice(pairs);
        parse(&Params::from_pairs(&all)).expect("parsed")
    }

    fn refused(state: ClusterState, pairs: &[(&str, &str)]) -> String {
        let (cluster, nodes) = cluster(state, 1, 2);
        check(&cluster, &nodes, &version("1.33.1"), &request(pairs), 10)
            .expect_err("refused")
            .text
    }

    #[test]
    fn invalid_scale_requests_are_refused_with_ckss_texts() {
        use ClusterState::{Running, Stopped};
        type Case<'a> = (ClusterState, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case<'_>] = &[
            (
                Running,
                &[],
                "Kubernetes cluster web cannot be scaled, either service offering or cluster size or nodeids to be removed or autoscaling must be passed",
            ),
            (
                Running,
                &[("autoscalingenabled", "true"), ("size", "3")],
                "Autoscaling can not be passed along with nodeids or clustersize",
            ),
            (
                Running,
                &[("autoscalingenabled", "true")],
                "Autoscaling requires minsize and maxsize to be passed",
            ),
            (
                Running,
                &[
                    ("autoscalingenabled", "true"),
                    ("minsize", "0"),
                    ("maxsize", "3"),
                ],
                "Minsize must be at least than 1",
            ),
            (
                Running,
                &[
                    ("autoscalingenabled", "true"),
                    ("minsize", "3"),
                    ("maxsize", "3"),
                ],
                "Maxsize must be greater than minsize",
            ),
            (
                Running,
                &[
                    ("autoscalingenabled", "true"),
                    ("minsize", "1"),
                    ("maxsize", "10"),
                ],
                "Maximum cluster size can not exceed 10. Please contact your administrator",
            ),
            (
                Running,
                &[("nodeids", "vm2"), ("size", "1")],
                "nodeids can not be passed along with clustersize or service offering",
            ),
            (
                Running,
                &[("nodeids", "vm2"), ("serviceofferingid", "o2")],
                "nodeids can not be passed along with clustersize or service offering",
            ),
            (Running, &[("nodeids", "vm9")], "Invalid node ids"),
            (
                Running,
                &[("nodeids", "vm1,vm2")],
                "Can not remove all nodes from a cluster",
            ),
            (
                Running,
                &[("nodeids", "vm0")],
                "Can not remove all control nodes from a cluster",
            ),
            (
                Stopped,
                &[("size", "3")],
                "Kubernetes cluster : web is in Stopped state",
            ),
            (
                Running,
                &[("size", "0")],
                "Kubernetes cluster : web cannot be scaled for size, 0",
            ),
            (
                Running,
                &[("size", "10")],
                "Maximum cluster size can not exceed 10. Please contact your administrator",
            ),
        ];
        for (state, pairs, text) in cases {
            assert_eq!(refused(*state, pairs), *text, "{pairs:?}");
        }
    }

    #[test]
    fn a_size_down_removes_the_newest_workers_and_nodeids_name_the_nodes() {
        let (cluster, nodes) = cluster(ClusterState::Running, 1, 3);
        let v = version("1.33.1");
        let plan = check(&cluster, &nodes, &v, &request(&[("size", "1")]), 10).expect("ok");
        assert_eq!(plan.params.size, Some(1));
        assert_eq!(plan.params.remove, ["n3", "n2"]);
        let plan = check(&cluster, &nodes, &v, &request(&[("nodeids", "vm1")]), 10).expect("ok");
        assert_eq!(plan.params.remove, ["n1"]);
        assert_eq!(plan.params.size, None);
        let plan = check(&cluster, &nodes, &v, &request(&[("size", "5")]), 10).expect("ok");
        assert_eq!((plan.params.size, plan.params.remove.len()), (Some(5), 0));
        // The size it has already: nothing to do but what else was asked.
        let plan = check(
            &cluster,
            &nodes,
            &v,
            &request(&[("size", "3"), ("serviceofferingid", "o2")]),
            10,
        )
        .expect("ok");
        assert_eq!(plan.params.size, None);
        assert_eq!(plan.params.offering_id.as_deref(), Some("o2"));
    }

    #[test]
    fn the_first_control_node_stays_and_offerings_per_type_must_agree() {
        let (cluster, nodes) = cluster(ClusterState::Running, 3, 1);
        let v = version("1.33.1");
        let err = check(&cluster, &nodes, &v, &request(&[("nodeids", "vm0")]), 10)
            .expect_err("first control node")
            .text;
        assert!(err.contains("cannot be removed"), "{err}");
        let plan = check(&cluster, &nodes, &v, &request(&[("nodeids", "vm2")]), 10).expect("ok");
        assert_eq!(plan.params.remove, ["n2"]);
        let plan = check(
            &cluster,
            &nodes,
            &v,
            &request(&[
                ("nodeofferings[0].node", "worker"),
                ("nodeofferings[0].offering", "o2"),
            ]),
            10,
        )
        .expect("ok");
        assert_eq!(plan.params.offering_id.as_deref(), Some("o2"));
        assert!(
            check(
                &cluster,
                &nodes,
                &v,
                &request(&[
                    ("nodeofferings[0].node", "worker"),
                    ("nodeofferings[0].offering", "o2"),
                    ("nodeofferings[1].node", "control"),
                    ("nodeofferings[1].offering", "o3"),
                ]),
                10,
            )
            .is_err()
        );
    }

    fn offering(id: &str, cpu: u64, memory: u64) -> ServiceOffering {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": id, "cpunumber": cpu, "cpuspeed": 1000, "memory": memory,
            "iscustomized": false
        }))
        .expect("offering")
    }

    #[test]
    fn offerings_are_checked_as_cks_checks_them() {
        let (running, _) = cluster(ClusterState::Running, 1, 1);
        let (stopped, _) = cluster(ClusterState::Stopped, 1, 1);
        let v = version("1.33.1");
        let current = offering("o", 2, 4096);
        let small = check_offering(&running, &v, &offering("s", 1, 4096), Some(&current))
            .expect_err("small")
            .text;
        assert!(small.contains("template(CoreOS) needs minimum 2 vCPUs and 2048 MB RAM"));
        let less = check_offering(&running, &v, &offering("l", 2, 2048), Some(&current))
            .expect_err("less")
            .text;
        assert!(less.starts_with("Kubernetes cluster cannot be scaled down for service offering"));
        // A stopped cluster may take a smaller offering.
        assert!(check_offering(&stopped, &v, &offering("l", 2, 2048), Some(&current)).is_ok());
        let same = check_offering(&stopped, &v, &current, Some(&current))
            .expect_err("same")
            .text;
        assert_eq!(
            same,
            "Cannot scale the nodes of type DEFAULT as the provided offering o is the same as the existing offering"
        );
        assert!(check_offering(&running, &v, &offering("b", 4, 8192), Some(&current)).is_ok());
    }
}
