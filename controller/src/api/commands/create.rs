//! `createKubernetesCluster` (cks-reference §3.2, validation texts from §5): a pure parse of the
//! request ([`parse`], no I/O, unit-tested), then the look-ups in CloudStack and the store
//! ([`resolve`]), then [`Engine::start`](crate::workflow::Engine::start), which records the
//! cluster, its secrets, the job and the workflow in one transaction.

use std::net::IpAddr;

use super::super::access;
use super::super::error::ApiError;
use super::super::params::Params;
use super::super::{Api, Reply};
use crate::cloudstack::types::{Account, GuestIpType, Network};
use crate::cloudstack::{Caller, RoleType};
use crate::settings::{EXPERIMENTAL_FEATURES, MAX_SIZE, NETWORK_OFFERING};
use crate::store::WorkflowKind;
use crate::store::{
    ClusterRecord, ClusterState, Owner, ProjectRef, RegistryRef, VersionState, now,
};
use crate::versions::{Semver, supports_ha};
use crate::workflow::{API_PORT, Operation, REGISTRY_PASSWORD_SECRET, SSH_PORT_BASE, Target};

/// The smallest root disk CKS accepts, GB.
const MIN_ROOT_DISK_GB: i64 = 8;

/// A private registry as requested (experimental in CKS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRequest {
    /// Its URL.
    pub url: String,
    /// The user.
    pub username: String,
    /// The password (secret: sealed before it is stored).
    pub password: String,
}

/// A `createKubernetesCluster` request, checked for everything that needs no look-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    /// `name`, trimmed.
    pub name: String,
    /// `description`.
    pub description: String,
    /// `zoneid`.
    pub zone_id: String,
    /// `kubernetesversionid`.
    pub version_id: String,
    /// `serviceofferingid`.
    pub offering_id: Option<String>,
    /// `account` (root admins create for others).
    pub account: Option<String>,
    /// `domainid`.
    pub domain_id: Option<String>,
    /// `projectid`: the project owns the cluster.
    pub project_id: Option<String>,
    /// `controlnodes` (default 1).
    pub control_nodes: u32,
    /// `size` (workers).
    pub size: u32,
    /// `noderootdisksize`, GB.
    pub root_disk_gb: Option<u64>,
    /// `keypair`.
    pub keypair: Option<String>,
    /// `networkid`.
    pub network_id: Option<String>,
    /// `externalloadbalanceripaddress`.
    pub external_lb_ip: Option<String>,
    /// `dockerregistry*`.
    pub registry: Option<RegistryRequest>,
}

/// Parses and checks a request with CKS's texts, without any look-up. `registry_enabled` is
/// `cloud.kubernetes.cluster.experimental.features.enabled`.
///
/// # Errors
/// CKS's validation errors (431).
pub fn parse(params: &Params, registry_enabled: bool) -> Result<CreateRequest, ApiError> {
    params.require_all(&["name", "zoneid"])?;
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
    let control_nodes = params.number("controlnodes")?.unwrap_or(1);
    if control_nodes < 1 {
        return Err(ApiError::param(format!(
            "Invalid cluster control nodes count: {control_nodes}"
        )));
    }
    let size = match params.number("size")? {
        Some(s) if s >= 1 => s,
        other => {
            return Err(ApiError::param(format!(
                "Invalid cluster size: {}",
                other.map_or("null".to_string(), |s| s.to_string())
            )));
        }
    };
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
    let registry = parse_registry(params, registry_enabled)?;
    let network_id = params.get("networkid").map(str::to_string);
    let external_lb_ip = params
        .get("externalloadbalanceripaddress")
        .map(str::to_string);
    if let Some(ip) = &external_lb_ip {
        if ip.parse::<IpAddr>().is_err() {
            return Err(ApiError::param("Invalid external load balancer IP address"));
        }
        if network_id.is_none() {
            return Err(ApiError::param(
                "externalloadbalanceripaddress parameter must be specified along with networkid parameter",
            ));
        }
    }
    Ok(CreateRequest {
        name,
        description: params.get("description").unwrap_or_default().to_string(),
        zone_id: params.require("zoneid")?.to_string(),
        version_id: params
            .get("kubernetesversionid")
            .unwrap_or_default()
            .to_string(),
        offering_id: params.get("serviceofferingid").map(str::to_string),
        account: params.get("account").map(str::to_string),
        domain_id: params.get("domainid").map(str::to_string),
        project_id: params.get("projectid").map(str::to_string),
        control_nodes: u32::try_from(control_nodes).unwrap_or(u32::MAX),
        size: u32::try_from(size).unwrap_or(u32::MAX),
        root_disk_gb: root_disk.and_then(|d| u64::try_from(d).ok()),
        keypair: params.get("keypair").map(str::to_string),
        network_id,
        external_lb_ip,
        registry,
    })
}

fn parse_registry(
    params: &Params,
    registry_enabled: bool,
) -> Result<Option<RegistryRequest>, ApiError> {
    let url = params.get("dockerregistryurl");
    let username = params.get("dockerregistryusername");
    let password = params.get("dockerregistrypassword");
    if url.is_none() && username.is_none() && password.is_none() {
        return Ok(None);
    }
    if !registry_enabled {
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
    Ok(Some(RegistryRequest {
        url: url.to_string(),
        username: username.to_string(),
        password: password.to_string(),
    }))
}

/// The owner of a new cluster: the caller; a project the caller can see (`projectid`); or,
/// for admins, `account` + `domainid` as the caller may see them.
async fn owner(api: &Api, caller: &Caller, request: &CreateRequest) -> Result<Owner, ApiError> {
    let client = api.ctx.cloud.client();
    if let Some(project_id) = &request.project_id {
        if request.account.is_some() {
            // CloudStack's own text for this combination.
            return Err(ApiError::param(
                "ProjectId and account/domainId can't be specified together",
            ));
        }
        let project = access::project(api, caller, project_id).await?;
        return Ok(Owner {
            account: project.projectaccountname.unwrap_or_default(),
            // The project's own account is not listed by CloudStack; nothing is keyed on it.
            account_id: String::new(),
            domain_id: project.domainid.unwrap_or_default(),
            domain: project.domain.unwrap_or_default(),
            user_id: caller.user_id.clone(),
            project: Some(ProjectRef {
                id: project.id,
                name: project.name,
            }),
        });
    }
    let Some(account) = &request.account else {
        // The domain's name, for responses (`domain`); not worth failing a create over.
        let domain = client
            .list_all::<Account>(&[("id", &caller.account_id), ("listall", "true")])
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
            project: None,
        });
    };
    let domain_id = request.domain_id.as_deref().unwrap_or(&caller.domain_id);
    let own = *account == caller.account && domain_id == caller.domain_id;
    if caller.role_type == RoleType::User && !own {
        return Err(ApiError::permission(format!(
            "Account {} does not have permission to create a cluster for account {account}",
            caller.account
        )));
    }
    // Looked up as the caller: a domain admin finds only accounts of their domain tree, and a
    // `domainid` names the domain the account must be in, never just any same-named account.
    let seen = api.ctx.cloud.as_caller(caller);
    let accounts: Vec<Account> = seen
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
        .find(|a| &a.name == account && a.domainid.as_deref().is_none_or(|d| d == domain_id))
        .ok_or_else(|| ApiError::param(format!("Unable to find account {account}")))?;
    Ok(Owner {
        account: found.name,
        account_id: found.id,
        domain_id: found.domainid.unwrap_or_else(|| domain_id.to_string()),
        domain: found.domain.unwrap_or_default(),
        user_id: caller.user_id.clone(),
        project: None,
    })
}

/// Resolves a parsed request against CloudStack and the store, in CKS's order and with its
/// texts: the owner and their size limit, the zone, the version and its ISO, the offering, the
/// key pair, the network, the node template. Returns the cluster to record.
///
/// # Errors
/// CKS's validation errors.
pub async fn resolve(
    api: &Api,
    caller: &Caller,
    request: &CreateRequest,
) -> Result<ClusterRecord, ApiError> {
    let ctx = &api.ctx;
    let cloud = &ctx.cloud;
    // Every id the caller passes is looked up as the caller: what CloudStack would not show
    // them does not exist for them (the same error as an unknown id, so nothing leaks).
    let seen = cloud.as_caller(caller);
    let owner = owner(api, caller, request).await?;
    let max_size = ctx.settings.number(MAX_SIZE, owner.settings_account());
    if u64::from(request.control_nodes) + u64::from(request.size) > max_size {
        return Err(ApiError::param(format!(
            "Maximum cluster size can not exceed {max_size}. Please contact your administrator"
        )));
    }
    let zone_id = &request.zone_id;
    let zone = seen
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
    let version = ctx.store.version(&request.version_id)?.ok_or_else(|| {
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
    if request.control_nodes > 1 && !supports_ha(&semver) {
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
    let offering_id = request.offering_id.as_deref().ok_or_else(|| {
        ApiError::param(
            "When serviceofferingid is not specified, service offerings for each node type must be specified in the nodeofferings parameter.",
        )
    })?;
    let offering = seen
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

    // Key pair.
    if let Some(name) = &request.keypair {
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

    // The network.
    let network = match &request.network_id {
        Some(id) => Some(
            seen.network(id)
                .await
                .map_err(|e| ApiError::from(&e))?
                // An admin acting for an account may see any network, but the cluster's
                // nodes may only join the owner's own (or a shared one), as CloudStack's
                // deployVirtualMachine would insist.
                .filter(|n| network_usable_by(n, &owner))
                .ok_or_else(|| ApiError::param("Unable to find network with given ID"))?,
        ),
        None => None,
    };
    if request.external_lb_ip.is_some()
        && network
            .as_ref()
            .is_some_and(|n| n.network_type != GuestIpType::Shared)
    {
        return Err(ApiError::param(
            "externalloadbalanceripaddress parameter must be specified when network type is not Shared or is ROUTED network",
        ));
    }
    match &network {
        Some(network) => validate_network(api, network, request).await?,
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

    Ok(ClusterRecord {
        id: uuid::Uuid::new_v4().to_string(),
        name: request.name.clone(),
        description: request.description.clone(),
        zone_id: zone.id,
        version_id: version.id,
        service_offering_id: offering.id,
        template_id: template.id,
        owner,
        control_nodes: request.control_nodes,
        size: request.size,
        node_root_disk_size: request.root_disk_gb,
        keypair: request.keypair.clone(),
        network_type: network.as_ref().map(|n| format!("{:?}", n.network_type)),
        network_id: request.network_id.clone(),
        network_created: false,
        external_lb_ip: request.external_lb_ip.clone(),
        public_ip_id: None,
        server_ip: None,
        endpoint: None,
        registry: request.registry.as_ref().map(|r| RegistryRef {
            url: r.url.clone(),
            username: r.username.clone(),
        }),
        state: ClusterState::Created,
        failure: None,
        created: now(),
    })
}

/// Whether the cluster's owner may place VMs in `network`: a shared network (CloudStack
/// checks its access when the VM is deployed), or one the owner (account or project) owns.
fn network_usable_by(network: &Network, owner: &Owner) -> bool {
    if network.network_type == GuestIpType::Shared {
        return true;
    }
    match &owner.project {
        Some(project) => network.projectid.as_deref() == Some(project.id.as_str()),
        None => {
            network.projectid.is_none()
                && network.account.as_deref() == Some(owner.account.as_str())
                && network.domainid.as_deref() == Some(owner.domain_id.as_str())
        }
    }
}

/// Checks a network the user gave (cks-reference §5, network checks).
async fn validate_network(
    api: &Api,
    network: &Network,
    request: &CreateRequest,
) -> Result<(), ApiError> {
    let cloud = &api.ctx.cloud;
    if network.network_type == GuestIpType::Shared {
        if request.control_nodes > 1 && request.external_lb_ip.is_none() {
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
    let nodes = u16::try_from(request.control_nodes + request.size).unwrap_or(u16::MAX);
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

/// `createKubernetesCluster` (async-create): parses, resolves, and begins the create workflow;
/// answers `{id, jobid}` at once.
///
/// # Errors
/// CKS's validation errors.
pub async fn create(api: &Api, caller: &Caller, params: &Params) -> Result<Reply, ApiError> {
    let request = parse(params, api.ctx.settings.flag(EXPERIMENTAL_FEATURES))?;
    let cluster = resolve(api, caller, &request).await?;
    let secrets: Vec<(&str, Vec<u8>)> = request
        .registry
        .as_ref()
        .map(|r| {
            let sealed =
                api.ctx
                    .sealer
                    .seal(&cluster.id, REGISTRY_PASSWORD_SECRET, r.password.as_bytes());
            vec![(REGISTRY_PASSWORD_SECRET, sealed)]
        })
        .unwrap_or_default();
    let job_id = api
        .engine
        .start(
            caller,
            Target::New(&cluster, &secrets),
            Operation::plain(WorkflowKind::Create),
        )
        .await
        .map_err(|err| super::clusters::refusal(&cluster, WorkflowKind::Create, err))?;
    tracing::info!(cluster = %cluster.id, name = %cluster.name, "creating Kubernetes cluster");
    Ok(Reply::Async {
        job_id,
        id: Some(cluster.id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        let mut all = vec![("command", "createKubernetesCluster")];
        all.extend_from_slice(pairs);
        Params::from_pairs(&all)
    }

    fn error(pairs: &[(&str, &str)]) -> String {
        parse(&params(pairs), false).expect_err("refused").text
    }

    const BASE: &[(&str, &str)] = &[("name", "c"), ("zoneid", "z"), ("size", "1")];

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut all: Vec<(&str, &str)> = BASE.to_vec();
        all.extend_from_slice(extra);
        all
    }

    #[test]
    fn invalid_requests_are_refused_with_ckss_texts() {
        assert!(error(&[("zoneid", "z")]).contains("name"));
        assert_eq!(
            error(&[("name", " "), ("zoneid", "z"), ("size", "1")]),
            "Invalid name for the Kubernetes cluster name: "
        );
        assert_eq!(
            error(&with(&[("controlnodes", "0")])),
            "Invalid cluster control nodes count: 0"
        );
        assert_eq!(
            error(&[("name", "c"), ("zoneid", "z")]),
            "Invalid cluster size: null"
        );
        assert_eq!(
            error(&[("name", "c"), ("zoneid", "z"), ("size", "0")]),
            "Invalid cluster size: 0"
        );
        assert_eq!(
            error(&with(&[("noderootdisksize", "0")])),
            "Invalid value for noderootdisksize"
        );
        assert_eq!(
            error(&with(&[("noderootdisksize", "7")])),
            "Provided node root disk size is lesser than default size of 8GB"
        );
        assert_eq!(
            error(&with(&[("clustertype", "Weird")])),
            "Unable to resolve cluster type Weird to a supported value (CloudManaged, ExternalManaged)"
        );
        assert_eq!(
            error(&with(&[("externalloadbalanceripaddress", "nope")])),
            "Invalid external load balancer IP address"
        );
        assert_eq!(
            error(&with(&[("externalloadbalanceripaddress", "10.0.0.9")])),
            "externalloadbalanceripaddress parameter must be specified along with networkid parameter"
        );
        assert!(
            error(&with(&[("dockerregistryurl", "https://r")])).starts_with(
                "Private registry for the Kubernetes cluster is an experimental feature"
            )
        );
        let partial = parse(&params(&with(&[("dockerregistryurl", "https://r")])), true)
            .expect_err("partial registry")
            .text;
        assert!(partial.starts_with("All the docker private registry parameters"));
        let bad_url = parse(
            &params(&with(&[
                ("dockerregistryurl", "ftp://r"),
                ("dockerregistryusername", "u"),
                ("dockerregistrypassword", "p"),
            ])),
            true,
        )
        .expect_err("bad url")
        .text;
        assert_eq!(bad_url, "Invalid docker registry url specified");
    }

    #[test]
    fn a_valid_request_keeps_every_field() {
        let request = parse(
            &params(&with(&[
                ("description", "d"),
                ("kubernetesversionid", "v"),
                ("serviceofferingid", "o"),
                ("controlnodes", "3"),
                ("noderootdisksize", "20"),
                ("keypair", "k"),
                ("networkid", "n"),
                ("externalloadbalanceripaddress", "10.0.0.9"),
            ])),
            false,
        )
        .expect("valid");
        assert_eq!(request.name, "c");
        assert_eq!(request.control_nodes, 3);
        assert_eq!(request.size, 1);
        assert_eq!(request.root_disk_gb, Some(20));
        assert_eq!(request.network_id.as_deref(), Some("n"));
        assert_eq!(request.external_lb_ip.as_deref(), Some("10.0.0.9"));
        assert_eq!(request.registry, None);
    }
}
