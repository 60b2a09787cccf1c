//! `createKubernetesCluster`, `listKubernetesClusters`, `getKubernetesClusterConfig`,
//! `deleteKubernetesCluster` (cks-reference §3.2, §3.7, §4.2; validation texts from §5).

use std::net::IpAddr;
use std::time::Duration;

use serde_json::json;

use super::list_reply;
use crate::api::error::ApiError;
use crate::api::params::Params;
use crate::api::{Api, Reply};
use crate::cloudstack::Caller;
use crate::cloudstack::types::{GuestIpType, Network};
use crate::jobs::JobSpec;
use crate::render;
use crate::settings::{EXPERIMENTAL_FEATURES, MAX_SIZE, NETWORK_OFFERING, START_TIMEOUT};
use crate::store::{
    ClusterRecord, ClusterState, Owner, RegistryRef, VersionState, WorkflowKind, WorkflowRecord,
    WorkflowStatus, now,
};
use crate::versions::{Semver, supports_ha};
use crate::workflow::create::{
    API_PORT, KUBECONFIG_SECRET, REGISTRY_PASSWORD_SECRET, SSH_PORT_BASE,
};

/// The smallest root disk CKS accepts, GB.
const MIN_ROOT_DISK_GB: i64 = 8;

/// The owner of a new cluster: the caller, or (root admins) `account` + `domainid`.
async fn owner(api: &Api, caller: &Caller, params: &Params) -> Result<Owner, ApiError> {
    let Some(account) = params.get("account") else {
        // The domain's name, for responses (`domain`); not worth failing a create over.
        let domain = api
            .ctx
            .cloud
            .client()
            .list_all::<crate::cloudstack::types::Account>(&[
                ("id", &caller.account_id),
                ("listall", "true"),
            ])
            .await
            .ok()
            .and_then(|accounts| accounts.into_iter().next())
            .and_then(|a| a.domain)
            .unwrap_or_default();
        return Ok(Owner {
            account: caller.account.clone(),
            account_id: caller.account_id.clone(),
            domain_id: caller.domain_id.clone(),
            domain,
            user_id: caller.user_id.clone(),
        });
    };
    if !caller.is_admin() && account != caller.account {
        return Err(ApiError::permission(format!(
            "Account {} does not have permission to create a cluster for account {account}",
            caller.account
        )));
    }
    let domain_id = params.get("domainid").unwrap_or(&caller.domain_id);
    let accounts: Vec<crate::cloudstack::types::Account> = api
        .ctx
        .cloud
        .client()
        .list_all(&[
            ("name", account),
            ("domainid", domain_id),
            ("listall", "true"),
        ])
        .await
        .map_err(|e| ApiError::from(&e))?;
    let found = accounts
        .into_iter()
        .find(|a| a.name == account)
        .ok_or_else(|| ApiError::param(format!("Unable to find account {account}")))?;
    Ok(Owner {
        account: found.name,
        account_id: found.id,
        domain_id: found.domainid.unwrap_or_else(|| domain_id.to_string()),
        domain: found.domain.unwrap_or_default(),
        user_id: caller.user_id.clone(),
    })
}

/// Everything `createKubernetesCluster` checked, ready to record.
struct Validated {
    cluster: ClusterRecord,
    registry_password: Option<String>,
}

/// The checks of cks-reference §5 "Create (CloudManaged)", in CKS's order, with its texts.
#[allow(clippy::too_many_lines)]
async fn validate_create(
    api: &Api,
    caller: &Caller,
    params: &Params,
) -> Result<Validated, ApiError> {
    params.require_all(&["name", "zoneid"])?;
    let ctx = &api.ctx;
    let cloud = &ctx.cloud;
    if let Some(kind) = params.get("clustertype")
        && !kind.eq_ignore_ascii_case("CloudManaged")
    {
        if kind.eq_ignore_ascii_case("ExternalManaged") {
            return Err(ApiError::param(
                "ExternalManaged clusters are not supported by this Kubernetes service",
            ));
        }
        return Err(ApiError::param(format!(
            "Unable to resolve cluster type {kind} to a supported value (CloudManaged, ExternalManaged)"
        )));
    }
    let name = params.require("name")?.trim().to_string();
    if name.is_empty() {
        return Err(ApiError::param(format!(
            "Invalid name for the Kubernetes cluster name: {name}"
        )));
    }
    let owner = owner(api, caller, params).await?;
    let control_nodes = params.number("controlnodes")?.unwrap_or(1);
    if control_nodes < 1 {
        return Err(ApiError::param(format!(
            "Invalid cluster control nodes count: {control_nodes}"
        )));
    }
    let size = params.number("size")?;
    let size = match size {
        Some(s) if s >= 1 => s,
        other => {
            return Err(ApiError::param(format!(
                "Invalid cluster size: {}",
                other.map_or("null".to_string(), |s| s.to_string())
            )));
        }
    };
    let max_size = ctx.settings.number(MAX_SIZE, Some(&owner.account_id));
    if u64::try_from(control_nodes + size).unwrap_or(u64::MAX) > max_size {
        return Err(ApiError::param(format!(
            "Maximum cluster size can not exceed {max_size}. Please contact your administrator"
        )));
    }
    let zone_id = params.require("zoneid")?;
    let zone = cloud
        .zone(zone_id)
        .await
        .map_err(|e| ApiError::from(&e))?
        .ok_or_else(|| ApiError::param(format!("Unable to find zone by ID: {zone_id}")))?;
    if zone
        .allocationstate
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("Disabled"))
        && !caller.is_admin()
    {
        return Err(ApiError::permission(format!(
            "Cannot perform this operation, zone ID: {zone_id} is currently disabled"
        )));
    }

    // The version and its ISO.
    let version_id = params.get("kubernetesversionid").unwrap_or_default();
    let version = ctx.store.version(version_id)?.ok_or_else(|| {
        ApiError::param("Unable to find given Kubernetes version in supported versions")
    })?;
    if version.state != VersionState::Enabled {
        return Err(ApiError::param(format!(
            "Kubernetes version ID: {} is in {:?} state",
            version.id, version.state
        )));
    }
    if version.zone_id.as_deref().is_some_and(|z| z != zone.id) {
        return Err(ApiError::param(format!(
            "Kubernetes version ID: {} is not available for zone ID: {}",
            version.id, zone.id
        )));
    }
    let semver = Semver::parse(&version.semantic_version)
        .ok_or_else(|| ApiError::internal("the version's semantic version is unreadable"))?;
    if control_nodes > 1 && !supports_ha(&semver) {
        return Err(ApiError::param(format!(
            "HA support is available only for Kubernetes version 1.16.0 and above. Given version ID: {} is {}",
            version.id, version.semantic_version
        )));
    }
    let iso = cloud
        .iso(&version.iso_id)
        .await
        .map_err(|e| ApiError::from(&e))?
        .ok_or_else(|| {
            ApiError::param(format!(
                "Invalid ISO associated with version ID: {}",
                version.id
            ))
        })?;
    if !iso.isready {
        return Err(ApiError::param(format!(
            "ISO associated with version ID: {} is not in Ready state for datacenter ID: {}",
            version.id, zone.id
        )));
    }

    // The node offering.
    let offering_id = params.get("serviceofferingid").ok_or_else(|| {
        ApiError::param(
            "When serviceofferingid is not specified, service offerings for each node type must be specified in the nodeofferings parameter.",
        )
    })?;
    let offering = cloud
        .service_offering(offering_id)
        .await
        .map_err(|e| ApiError::from(&e))?
        .ok_or_else(|| {
            ApiError::param(format!(
                "Unable to find service offering with ID: {offering_id}"
            ))
        })?;
    let unsuitable = |reason: String| {
        ApiError::param(format!(
            "Given service offering ID: {offering_id} for DEFAULT nodes is not suitable for the Kubernetes cluster version {} - {reason}",
            version.semantic_version
        ))
    };
    if offering.iscustomized {
        return Err(ApiError::param(format!(
            "Custom service offerings are not supported for creating clusters, service offering ID: {offering_id}"
        )));
    }
    let (cpu, memory) = (
        offering.cpunumber.unwrap_or(0),
        offering.memory.unwrap_or(0),
    );
    if cpu < 2 || memory < 2048 {
        return Err(unsuitable(format!(
            "Kubernetes cluster cannot be created with service offering ID: {offering_id}, Kubernetes cluster template needs minimum 2 vCPUs and 2048 MB RAM"
        )));
    }
    if cpu < u64::from(version.min_cpu) {
        return Err(unsuitable(format!(
            "Kubernetes cluster cannot be created with service offering ID: {offering_id}, Kubernetes version ID: {} needs minimum {} vCPUs",
            version.id, version.min_cpu
        )));
    }
    if memory < u64::from(version.min_memory_mb) {
        return Err(unsuitable(format!(
            "Kubernetes cluster cannot be created with service offering ID: {offering_id}, Kubernetes version ID: {} needs minimum {} MB RAM",
            version.id, version.min_memory_mb
        )));
    }

    // Key pair, disk, registry.
    let keypair = params.get("keypair").map(str::to_string);
    if let Some(name) = &keypair {
        let found = cloud
            .keypair(&owner, name)
            .await
            .map_err(|e| ApiError::from(&e))?;
        if found.is_none() {
            return Err(ApiError::param(format!(
                "Given SSH key pair with name: {name} was not found for the account {}",
                owner.account
            )));
        }
    }
    let root_disk = params.number("noderootdisksize")?;
    if let Some(disk) = root_disk {
        if disk <= 0 {
            return Err(ApiError::param("Invalid value for noderootdisksize"));
        }
        if disk < MIN_ROOT_DISK_GB {
            return Err(ApiError::param(
                "Provided node root disk size is lesser than default size of 8GB",
            ));
        }
    }
    let (registry, registry_password) = registry(api, params)?;

    // The network.
    let network_id = params.get("networkid").map(str::to_string);
    let external_lb_ip = params
        .get("externalloadbalanceripaddress")
        .map(str::to_string);
    let network = match &network_id {
        Some(id) => Some(
            cloud
                .network(id)
                .await
                .map_err(|e| ApiError::from(&e))?
                .ok_or_else(|| ApiError::param("Unable to find network with given ID"))?,
        ),
        None => None,
    };
    if let Some(ip) = &external_lb_ip {
        if ip.parse::<IpAddr>().is_err() {
            return Err(ApiError::param("Invalid external load balancer IP address"));
        }
        match &network {
            None => {
                return Err(ApiError::param(
                    "externalloadbalanceripaddress parameter must be specified along with networkid parameter",
                ));
            }
            Some(n) if n.network_type != GuestIpType::Shared => {
                return Err(ApiError::param(
                    "externalloadbalanceripaddress parameter must be specified when network type is not Shared or is ROUTED network",
                ));
            }
            Some(_) => {}
        }
    }
    match &network {
        Some(network) => {
            validate_network(api, network, control_nodes, size, external_lb_ip.as_deref()).await?;
        }
        None => {
            let offering_name = ctx.settings.get(NETWORK_OFFERING, None)?;
            let offering = cloud
                .network_offering(&offering_name)
                .await
                .map_err(|e| ApiError::from(&e))?;
            let usable = offering.is_some_and(|o| {
                o.state
                    .as_deref()
                    .is_none_or(|s| s.eq_ignore_ascii_case("Enabled"))
                    && o.has_service("SourceNat")
            });
            if !usable {
                return Err(ApiError::param(
                    "Kubernetes service has not been configured properly to provision Kubernetes clusters",
                ));
            }
        }
    }
    let template = cloud
        .template(&ctx.nodes.template, &zone.id)
        .await
        .map_err(|e| ApiError::from(&e))?
        .filter(|t| t.isready)
        .ok_or_else(|| {
            ApiError::internal(format!(
                "Not able to find the System or Routing template in ready state for the zone {}",
                zone.id
            ))
        })?;

    let cluster = ClusterRecord {
        id: uuid::Uuid::new_v4().to_string(),
        name,
        description: params.get("description").unwrap_or_default().to_string(),
        zone_id: zone.id,
        version_id: version.id,
        service_offering_id: offering.id,
        template_id: template.id,
        owner,
        control_nodes: u32::try_from(control_nodes).unwrap_or(u32::MAX),
        size: u32::try_from(size).unwrap_or(u32::MAX),
        node_root_disk_size: root_disk.and_then(|d| u64::try_from(d).ok()),
        keypair,
        network_type: network.as_ref().map(|n| format!("{:?}", n.network_type)),
        network_id,
        network_created: false,
        external_lb_ip,
        public_ip_id: None,
        server_ip: None,
        endpoint: None,
        registry,
        state: ClusterState::Created,
        failure: None,
        created: now(),
    };
    Ok(Validated {
        cluster,
        registry_password,
    })
}

type RegistryParts = (Option<RegistryRef>, Option<String>);

fn registry(api: &Api, params: &Params) -> Result<RegistryParts, ApiError> {
    let url = params.get("dockerregistryurl");
    let username = params.get("dockerregistryusername");
    let password = params.get("dockerregistrypassword");
    if url.is_none() && username.is_none() && password.is_none() {
        return Ok((None, None));
    }
    if !api.ctx.settings.flag(EXPERIMENTAL_FEATURES) {
        return Err(ApiError::param(
            "Private registry for the Kubernetes cluster is an experimental feature. Use cloud.kubernetes.cluster.experimental.features.enabled configuration for enabling experimental features",
        ));
    }
    let (Some(url), Some(username), Some(password)) = (url, username, password) else {
        return Err(ApiError::param(
            "All the docker private registry parameters (username, password, url) required are specified",
        ));
    };
    let parsed = url::Url::parse(url).ok().filter(|u| {
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
    });
    if parsed.is_none() {
        return Err(ApiError::param("Invalid docker registry url specified"));
    }
    Ok((
        Some(RegistryRef {
            url: url.to_string(),
            username: username.to_string(),
        }),
        Some(password.to_string()),
    ))
}

/// Checks a network the user gave (cks-reference §5, network checks).
async fn validate_network(
    api: &Api,
    network: &Network,
    control_nodes: i64,
    size: i64,
    external_lb_ip: Option<&str>,
) -> Result<(), ApiError> {
    let cloud = &api.ctx.cloud;
    if network.network_type == GuestIpType::Shared {
        if control_nodes > 1 && external_lb_ip.is_none() {
            return Err(ApiError::param(format!(
                "Multi-control nodes, HA Kubernetes cluster with Shared network ID: {} needs an external load balancer IP address. externalloadbalanceripaddress parameter can be used",
                network.id
            )));
        }
        return Ok(());
    }
    let taken = api
        .ctx
        .store
        .clusters()?
        .iter()
        .any(|c| c.network_id.as_deref() == Some(network.id.as_str()));
    if taken {
        return Err(ApiError::param(format!(
            "Network ID: {} is already under use by another Kubernetes cluster",
            network.id
        )));
    }
    let ips = cloud
        .public_ips(&network.id)
        .await
        .map_err(|e| ApiError::from(&e))?;
    let Some(source_nat) = ips.iter().find(|ip| ip.issourcenat) else {
        // Not implemented yet: the first VM brings the source NAT up.
        return Ok(());
    };
    let overlaps = |start: Option<u16>, end: Option<u16>, lo: u16, hi: u16| {
        let (s, e) = (start.unwrap_or(0), end.or(start).unwrap_or(0));
        s <= hi && e >= lo
    };
    let nodes = u16::try_from(control_nodes + size).unwrap_or(u16::MAX);
    let ssh_end = SSH_PORT_BASE.saturating_add(nodes.saturating_sub(1));
    let firewall = cloud
        .firewall_rules(&source_nat.id)
        .await
        .map_err(|e| ApiError::from(&e))?;
    let forwards = cloud
        .pf_rules(&source_nat.id)
        .await
        .map_err(|e| ApiError::from(&e))?;
    for (kind, ranges) in [
        (
            "firewall",
            firewall
                .iter()
                .map(|r| (r.startport, r.endport))
                .collect::<Vec<_>>(),
        ),
        (
            "port forwarding",
            forwards
                .iter()
                .map(|r| (r.publicport, r.publicendport))
                .collect(),
        ),
    ] {
        if ranges
            .iter()
            .any(|(s, e)| overlaps(*s, *e, API_PORT, API_PORT))
        {
            return Err(ApiError::param(format!(
                "Network: {} has conflicting {kind} rules to provision Kubernetes cluster for API access",
                network.id
            )));
        }
        if ranges
            .iter()
            .any(|(s, e)| overlaps(*s, *e, SSH_PORT_BASE, ssh_end))
        {
            return Err(ApiError::param(format!(
                "Network: {} has conflicting {kind} rules to provision Kubernetes cluster for node VM SSH access",
                network.id
            )));
        }
    }
    Ok(())
}

/// `createKubernetesCluster` (async-create): validates, records the cluster in Created, and
/// starts the create workflow; answers `{id, jobid}` at once.
///
/// # Errors
/// CKS's validation errors.
pub async fn create(api: &Api, caller: &Caller, params: &Params) -> Result<Reply, ApiError> {
    let Validated {
        cluster,
        registry_password,
    } = validate_create(api, caller, params).await?;
    let ctx = &api.ctx;
    ctx.store.insert_cluster(&cluster)?;
    if let Some(password) = registry_password {
        let sealed = ctx
            .sealer
            .seal(&cluster.id, REGISTRY_PASSWORD_SECRET, password.as_bytes());
        ctx.store
            .put_secret(&cluster.id, REGISTRY_PASSWORD_SECRET, &sealed)?;
    }
    let job = ctx.jobs.create(
        caller,
        &JobSpec {
            command: "createKubernetesCluster",
            cmd: "org.apache.cloudstack.api.command.user.kubernetes.cluster.CreateKubernetesClusterCmd",
            instance_type: "KubernetesCluster",
            instance_id: &cluster.id,
        },
    )?;
    let timeout = ctx.settings.seconds(START_TIMEOUT);
    let workflow = new_workflow(WorkflowKind::Create, &cluster.id, &job.id, timeout);
    ctx.store.insert_workflow(&workflow)?;
    tracing::info!(cluster = %cluster.id, name = %cluster.name, "creating Kubernetes cluster");
    api.engine.spawn(workflow);
    Ok(Reply::Async {
        job_id: job.id,
        id: Some(cluster.id),
    })
}

fn new_workflow(
    kind: WorkflowKind,
    cluster_id: &str,
    job_id: &str,
    timeout: Duration,
) -> WorkflowRecord {
    let created = now();
    WorkflowRecord {
        id: uuid::Uuid::new_v4().to_string(),
        kind,
        cluster_id: cluster_id.to_string(),
        job_id: job_id.to_string(),
        status: WorkflowStatus::Running,
        steps: Vec::new(),
        deadline: created + i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX / 2),
        created,
    }
}

/// True when `caller` may see `cluster` (its account's, or any for root admins).
fn may_see(caller: &Caller, cluster: &ClusterRecord) -> bool {
    caller.is_admin() || cluster.owner.account_id == caller.account_id
}

/// A cluster the caller owns (or any, for admins); others do not exist for the caller.
fn owned_cluster(api: &Api, caller: &Caller, id: &str) -> Result<ClusterRecord, ApiError> {
    let cluster = api
        .ctx
        .store
        .cluster(id)?
        .filter(|c| c.state != ClusterState::Destroyed)
        .ok_or_else(|| {
            ApiError::param(format!("Unable to find Kubernetes cluster with ID: {id}"))
        })?;
    if !may_see(caller, &cluster) {
        return Err(ApiError::permission(format!(
            "Account {} does not have permission to operate on Kubernetes cluster {id}",
            caller.account
        )));
    }
    Ok(cluster)
}

/// `listKubernetesClusters`: `id`, `state`, `name` (exact), `keyword`, `account`, `listall`,
/// paging. Users see their account's clusters; admins theirs, or all with `listall=true`.
///
/// # Errors
/// Bad paging.
pub async fn list(api: &Api, caller: &Caller, params: &Params) -> Result<Reply, ApiError> {
    let paging = params.paging()?;
    let listall = params.boolean("listall")?.unwrap_or(false);
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
        .filter(|c| may_see(caller, c))
        .filter(|c| {
            let own = c.owner.account_id == caller.account_id;
            own || listall
                || params.get("id").is_some()
                || params.get("account").is_some_and(|a| a == c.owner.account)
        })
        .filter(|c| params.get("account").is_none_or(|a| a == c.owner.account))
        .filter(|c| {
            params
                .get("domainid")
                .is_none_or(|d| d == c.owner.domain_id)
        })
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
    let cluster = owned_cluster(api, caller, id)?;
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
    Ok(Reply::Sync(json!({
        "clusterconfig": {
            "id": cluster.id,
            "name": cluster.name,
            "configdata": String::from_utf8_lossy(&plain),
        }
    })))
}

/// `stopKubernetesCluster id` (async): stops every node VM, keeping its disk. A Stopped cluster
/// is left as it is (the job succeeds, as in CKS), a Stopping one answers with the running
/// stop's job; Running and Alert clusters go to Stopping, then Stopped (or Alert if a VM would
/// not stop). Unlike CKS, a cluster still being created or started is refused: its workflow
/// owns the VMs until it ends.
///
/// # Errors
/// Unknown cluster; a state that cannot be stopped.
pub async fn stop(api: &Api, caller: &Caller, params: &Params) -> Result<Reply, ApiError> {
    let id = params.require("id")?;
    let cluster = owned_cluster(api, caller, id)?;
    let spec = JobSpec {
        command: "stopKubernetesCluster",
        cmd: "org.apache.cloudstack.api.command.user.kubernetes.cluster.StopKubernetesClusterCmd",
        instance_type: "KubernetesCluster",
        instance_id: &cluster.id,
    };
    match cluster.state {
        ClusterState::Stopping
            if let Some(job_id) = running_job(api, &cluster, &[WorkflowKind::Stop])? =>
        {
            Ok(Reply::Async { job_id, id: None })
        }
        ClusterState::Stopped | ClusterState::Stopping => {
            already_there(api, caller, &spec, json!({ "success": true }))
        }
        ClusterState::Running | ClusterState::Alert => {
            run_power_workflow(api, caller, &cluster, WorkflowKind::Stop, &spec)
        }
        state => Err(ApiError::internal(format!(
            "Kubernetes cluster : {} is in state {state} and cannot be stopped",
            cluster.name
        ))),
    }
}

/// `startKubernetesCluster id` (async): starts the node VMs of a Stopped cluster and waits
/// until every node is Ready again. A Running cluster is left as it is (the job succeeds, as in
/// CKS), a Starting one answers with the running start's (or create's) job; a failed start
/// leaves the cluster in Alert, the step named.
///
/// # Errors
/// Unknown cluster; a state that cannot be started.
pub async fn start(api: &Api, caller: &Caller, params: &Params) -> Result<Reply, ApiError> {
    let id = params.require("id")?;
    let cluster = owned_cluster(api, caller, id)?;
    let spec = JobSpec {
        command: "startKubernetesCluster",
        cmd: "org.apache.cloudstack.api.command.user.kubernetes.cluster.StartKubernetesClusterCmd",
        instance_type: "KubernetesCluster",
        instance_id: &cluster.id,
    };
    match cluster.state {
        ClusterState::Starting
            if let Some(job_id) =
                running_job(api, &cluster, &[WorkflowKind::Start, WorkflowKind::Create])? =>
        {
            Ok(Reply::Async { job_id, id: None })
        }
        ClusterState::Running | ClusterState::Starting => {
            let object = render::cluster_by_id(&api.ctx, &cluster.id).await?;
            already_there(api, caller, &spec, json!({ "kubernetescluster": object }))
        }
        ClusterState::Stopped => {
            run_power_workflow(api, caller, &cluster, WorkflowKind::Start, &spec)
        }
        state => Err(ApiError::internal(format!(
            "Kubernetes cluster : {} is in state {state} and cannot be started",
            cluster.name
        ))),
    }
}

/// The job of the cluster's operation still running, when it is of one of `kinds`: asking
/// again for what is under way answers with the job that does it.
fn running_job(
    api: &Api,
    cluster: &ClusterRecord,
    kinds: &[WorkflowKind],
) -> Result<Option<String>, ApiError> {
    Ok(api
        .ctx
        .store
        .latest_workflow(&cluster.id)?
        .filter(|w| w.status == WorkflowStatus::Running && kinds.contains(&w.kind))
        .map(|w| w.job_id))
}

/// A job that succeeds at once with `result`: the cluster is already where it was asked to go.
fn already_there(
    api: &Api,
    caller: &Caller,
    spec: &JobSpec<'_>,
    result: serde_json::Value,
) -> Result<Reply, ApiError> {
    let job = api.ctx.jobs.create(caller, spec)?;
    api.ctx.jobs.succeed(&job.id, result)?;
    Ok(Reply::Async {
        job_id: job.id,
        id: None,
    })
}

/// Moves the cluster to the state the workflow runs in (compare-and-set, so two requests
/// cannot both start one), records the job and the workflow, and runs it.
fn run_power_workflow(
    api: &Api,
    caller: &Caller,
    cluster: &ClusterRecord,
    kind: WorkflowKind,
    spec: &JobSpec<'_>,
) -> Result<Reply, ApiError> {
    let ctx = &api.ctx;
    let during = crate::workflow::states(kind).during;
    if !ctx
        .store
        .set_cluster_state(&cluster.id, cluster.state, during, None)?
    {
        return Err(ApiError::internal(format!(
            "Kubernetes cluster {} changed state meanwhile; try again",
            cluster.name
        )));
    }
    let job = ctx.jobs.create(caller, spec)?;
    let timeout = ctx.settings.seconds(START_TIMEOUT);
    let workflow = new_workflow(kind, &cluster.id, &job.id, timeout);
    ctx.store.insert_workflow(&workflow)?;
    tracing::info!(cluster = %cluster.id, name = %cluster.name, operation = kind.as_str(), "cluster operation accepted");
    api.engine.spawn(workflow);
    Ok(Reply::Async {
        job_id: job.id,
        id: None,
    })
}

/// `deleteKubernetesCluster id` (async): allowed from Running, Stopped, Alert, Error and
/// Destroying (an interrupted delete); removes everything the cluster made.
///
/// # Errors
/// Unknown cluster; a state that cannot be deleted; foreign VMs on the cluster's network.
pub async fn delete(api: &Api, caller: &Caller, params: &Params) -> Result<Reply, ApiError> {
    let id = params.require("id")?;
    let cluster = owned_cluster(api, caller, id)?;
    let ctx = &api.ctx;
    if !matches!(
        cluster.state,
        ClusterState::Running
            | ClusterState::Stopped
            | ClusterState::Alert
            | ClusterState::Error
            | ClusterState::Destroying
    ) {
        return Err(ApiError::internal(format!(
            "Cannot perform delete operation on cluster {} in state: {}",
            cluster.name, cluster.state
        )));
    }
    if cluster.state == ClusterState::Destroying
        && let Some(job_id) = running_job(api, &cluster, &[WorkflowKind::Delete])?
    {
        // Already being deleted: report the running delete's job.
        return Ok(Reply::Async { job_id, id: None });
    }
    if cluster.network_created
        && let Some(network_id) = &cluster.network_id
    {
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
    }
    if cluster.state != ClusterState::Destroying
        && !ctx.store.set_cluster_state(
            &cluster.id,
            cluster.state,
            ClusterState::Destroying,
            None,
        )?
    {
        return Err(ApiError::internal(format!(
            "Kubernetes cluster {} changed state while being deleted; try again",
            cluster.name
        )));
    }
    let job = ctx.jobs.create(
        caller,
        &JobSpec {
            command: "deleteKubernetesCluster",
            cmd: "org.apache.cloudstack.api.command.user.kubernetes.cluster.DeleteKubernetesClusterCmd",
            instance_type: "KubernetesCluster",
            instance_id: &cluster.id,
        },
    )?;
    let timeout = ctx.settings.seconds(START_TIMEOUT);
    let workflow = new_workflow(WorkflowKind::Delete, &cluster.id, &job.id, timeout);
    ctx.store.insert_workflow(&workflow)?;
    tracing::info!(cluster = %cluster.id, name = %cluster.name, "deleting Kubernetes cluster");
    api.engine.spawn(workflow);
    Ok(Reply::Async {
        job_id: job.id,
        id: None,
    })
}
