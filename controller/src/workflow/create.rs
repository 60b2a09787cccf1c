//! The create workflow (cks-reference §3.2, without SSH): network, public IP and rules, node VMs
//! deployed with the version's ISO attached before their first boot and userdata holding only
//! the agent's enrollment facts, then kubeadm through the agents, the CNI and dashboard, every
//! node Ready, and the kubeconfig stored sealed.

use std::time::Duration;

use cks_proto::agent::command::Kind;
use cks_proto::agent::command_result::Payload;
use cks_proto::agent::{
    ApplyManifests, Command, ConfigureRegistry, CreateJoinMaterial, FetchKubeconfig, GetNodes,
    InitControlPlane, JoinControlPlane, JoinMaterial, JoinWorker, NodeRole as ProtoRole,
};
use tracing::{info, warn};

use super::StepError;
use super::engine::StepCtx;
use crate::agents::NodeKey;
use crate::cloud::{Cloud, DeployRequest};
use crate::pki::NodeIdentity;
use crate::store::{ClusterRecord, NodeRecord, NodeRole};
use crate::userdata::{NodeBootstrap, TemplateKind};

/// The steps, in order.
pub const STEPS: &[&str] = &[
    "network",
    "public-ip",
    "firewall",
    "plan-nodes",
    "deploy-nodes",
    "load-balancer",
    "init-control-plane",
    "join-control-planes",
    "join-workers",
    "apply-manifests",
    "wait-ready",
    "kubeconfig",
    "detach-iso",
];

/// The API server port.
pub const API_PORT: u16 = 6443;
/// First public port of the optional SSH port forwards (CKS's 2222 + i).
pub const SSH_PORT_BASE: u16 = 2222;
/// The kubeconfig's name in the secrets table.
pub const KUBECONFIG_SECRET: &str = "kubeconfig";
/// The registry password's name in the secrets table.
pub const REGISTRY_PASSWORD_SECRET: &str = "registry-password";
/// Lifetime of the join token and certificate key made for one join.
const JOIN_MATERIAL_TTL: Duration = Duration::from_secs(15 * 60);
/// Bundle manifests applied on the first control node: the CNI, then the dashboard.
const MANIFESTS: [&str; 2] = ["network.yaml", "dashboard.yaml"];

/// Runs one step of the create workflow.
///
/// # Errors
/// [`StepError`]: retry (not yet) or fail (for good).
pub async fn run(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    match sc.step {
        "network" => network(sc).await,
        "public-ip" => public_ip(sc).await,
        "firewall" => firewall(sc).await,
        "plan-nodes" => plan_nodes(sc),
        "deploy-nodes" => deploy_nodes(sc).await,
        "load-balancer" => load_balancer(sc).await,
        "init-control-plane" => init_control_plane(sc).await,
        "join-control-planes" => join(sc, NodeRole::Control).await,
        "join-workers" => join(sc, NodeRole::Worker).await,
        "apply-manifests" => apply_manifests(sc).await,
        "wait-ready" => wait_ready(sc).await,
        "kubeconfig" => kubeconfig(sc).await,
        "detach-iso" => detach_iso(sc).await,
        other => Err(StepError::fail(format!("unknown create step {other}"))),
    }
}

/// The marker in the description of a network the controller made for a cluster.
pub fn network_marker(cluster_id: &str) -> String {
    format!("Kubernetes cluster {cluster_id}")
}

fn is_isolated(cluster: &ClusterRecord) -> bool {
    cluster.network_type.as_deref() != Some("Shared")
}

async fn network(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let cloud = &sc.ctx.cloud;
    if let Some(id) = sc.cluster.network_id.clone() {
        let network = cloud
            .network(&id)
            .await?
            .ok_or_else(|| StepError::fail(format!("network {id} no longer exists")))?;
        sc.cluster.network_type = Some(format!("{:?}", network.network_type));
        return Ok(format!("using network {} ({})", network.name, network.id));
    }
    let marker = network_marker(&sc.cluster.id);
    let existing = cloud.networks_marked(&sc.cluster.owner, &marker).await?;
    let network = match existing.into_iter().next() {
        Some(network) => network,
        None => {
            let offering_name = sc
                .ctx
                .settings
                .get(crate::settings::NETWORK_OFFERING, None)
                .map_err(|e| StepError::fail(e.to_string()))?;
            let offering = cloud
                .network_offering(&offering_name)
                .await?
                .ok_or_else(|| {
                    StepError::fail(
                        "Kubernetes service has not been configured properly to provision \
                         Kubernetes clusters",
                    )
                })?;
            let name = format!("{}-network", sc.cluster.name);
            let display = format!("{}-network ({marker})", sc.cluster.owner.account);
            let network = cloud
                .create_network(
                    &sc.cluster.owner,
                    &sc.cluster.zone_id,
                    &offering.id,
                    &name,
                    &display,
                )
                .await?;
            if let Err(err) = cloud.tag("Network", &[&network.id], &sc.cluster.id).await {
                // The description already marks it; the tag is for people.
                warn!(error = %err, "cannot tag the cluster network");
            }
            network
        }
    };
    sc.cluster.network_id = Some(network.id.clone());
    sc.cluster.network_created = true;
    sc.cluster.network_type = Some("Isolated".into());
    Ok(format!("created network {} ({})", network.name, network.id))
}

async fn public_ip(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    if !is_isolated(&sc.cluster) {
        if let Some(ip) = sc.cluster.external_lb_ip.clone() {
            sc.cluster.server_ip = Some(ip.clone());
            sc.cluster.endpoint = Some(format!("https://{ip}:{API_PORT}/"));
            return Ok(format!("API behind the external load balancer {ip}"));
        }
        return Ok("shared network: the API is reached on the first control node".into());
    }
    let network_id = network_id(&sc.cluster)?;
    let cloud = &sc.ctx.cloud;
    let ips = cloud.public_ips(&network_id).await?;
    let ip = match ips.iter().find(|ip| ip.issourcenat).or(ips.first()) {
        Some(ip) => ip.clone(),
        None => cloud.associate_ip(&sc.cluster.owner, &network_id).await?,
    };
    sc.cluster.public_ip_id = Some(ip.id.clone());
    sc.cluster.server_ip = Some(ip.ipaddress.clone());
    sc.cluster.endpoint = Some(format!("https://{}:{API_PORT}/", ip.ipaddress));
    Ok(format!("public IP {}", ip.ipaddress))
}

fn network_id(cluster: &ClusterRecord) -> Result<String, StepError> {
    cluster
        .network_id
        .clone()
        .ok_or_else(|| StepError::fail("the cluster has no network"))
}

fn ssh_ports(cluster: &ClusterRecord) -> Option<(u16, u16)> {
    cluster.keypair.as_ref()?;
    let count = u16::try_from(cluster.control_nodes + cluster.size).ok()?;
    Some((SSH_PORT_BASE, SSH_PORT_BASE + count.max(1) - 1))
}

async fn firewall(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let Some(ip_id) = sc.cluster.public_ip_id.clone() else {
        return Ok("no public IP: nothing to open".into());
    };
    let cloud = &sc.ctx.cloud;
    let existing = cloud.firewall_rules(&ip_id).await?;
    let covered = |start: u16, end: u16| {
        existing
            .iter()
            .any(|r| r.startport == Some(start) && r.endport == Some(end))
    };
    let mut opened = Vec::new();
    if !covered(API_PORT, API_PORT) {
        cloud
            .create_firewall_rule(&ip_id, API_PORT, API_PORT)
            .await?;
    }
    opened.push(API_PORT.to_string());
    if let Some((start, end)) = ssh_ports(&sc.cluster) {
        if !covered(start, end) {
            cloud.create_firewall_rule(&ip_id, start, end).await?;
        }
        opened.push(format!("{start}-{end}"));
    }
    Ok(format!("TCP {} open", opened.join(", ")))
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

fn plan_nodes(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    if !sc.nodes.is_empty() {
        return Ok(format!("{} nodes planned", sc.nodes.len()));
    }
    let prefix = node_prefix(&sc.cluster);
    let mut nodes = Vec::new();
    let total = sc.cluster.control_nodes + sc.cluster.size;
    for ordinal in 0..total {
        let role = if ordinal < sc.cluster.control_nodes {
            NodeRole::Control
        } else {
            NodeRole::Worker
        };
        let kind = if role == NodeRole::Control {
            "control"
        } else {
            "node"
        };
        nodes.push(NodeRecord {
            cluster_id: sc.cluster.id.clone(),
            name: format!("{prefix}-{kind}-{}", random_suffix()),
            role,
            ordinal,
            vm_id: None,
            ip: None,
            joined: false,
            kubernetes_version: None,
        });
    }
    sc.nodes = nodes;
    Ok(format!(
        "{} control and {} worker nodes",
        sc.cluster.control_nodes, sc.cluster.size
    ))
}

fn userdata(sc: &StepCtx<'_>, node: &NodeRecord) -> String {
    let role = match node.role {
        NodeRole::Control if node.ordinal == 0 => ProtoRole::FirstControl,
        NodeRole::Control => ProtoRole::Control,
        NodeRole::Worker => ProtoRole::Worker,
    };
    let token = sc.ctx.hub.issue_token(
        NodeIdentity {
            cluster_id: sc.cluster.id.clone(),
            node_name: node.name.clone(),
            role,
        },
        sc.ctx.nodes.enrollment_ttl,
    );
    NodeBootstrap {
        addresses: sc.ctx.nodes.agent_addresses.clone(),
        ca_fingerprint: sc.ctx.hub.ca().fingerprint(),
        enrollment_token: token,
        node_name: node.name.clone(),
        role: match node.role {
            NodeRole::Control => "control-plane".into(),
            NodeRole::Worker => "worker".into(),
        },
    }
    .render(TemplateKind::CloudInit)
}

async fn deploy_nodes(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let network_id = network_id(&sc.cluster)?;
    let version = sc
        .ctx
        .store
        .version(&sc.cluster.version_id)?
        .ok_or_else(|| StepError::fail("Invalid Kubernetes version associated with cluster"))?;
    let cloud = sc.ctx.cloud.clone();
    let mut started = 0;
    for index in 0..sc.nodes.len() {
        let mut node = sc.nodes[index].clone();
        // A VM a crashed run deployed: found by its name (chosen before deploying).
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
        if !matches!(vm.state, crate::cloudstack::types::VmState::Running) {
            cloud.start_vm(&vm.id).await?;
        }
        started += 1;
    }
    if sc.cluster.server_ip.is_none() {
        // Shared network without an external load balancer: the first control node.
        let first = sc.nodes.first().and_then(|n| n.ip.clone());
        if let Some(ip) = first {
            sc.cluster.server_ip = Some(ip.clone());
            sc.cluster.endpoint = Some(format!("https://{ip}:{API_PORT}/"));
        }
    }
    Ok(format!(
        "{started} node VMs running with the binaries ISO attached"
    ))
}

async fn load_balancer(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let Some(ip_id) = sc.cluster.public_ip_id.clone() else {
        return Ok("no public IP: no load balancer rule".into());
    };
    let network_id = network_id(&sc.cluster)?;
    let cloud: &Cloud = &sc.ctx.cloud;
    let rules = cloud.lb_rules(&ip_id).await?;
    let rule = match rules
        .into_iter()
        .find(|r| r.publicport == Some(API_PORT) && r.name.as_deref() == Some("api-lb"))
    {
        Some(rule) => rule,
        None => {
            cloud
                .create_lb_rule(
                    &ip_id,
                    &network_id,
                    "api-lb",
                    "LB rule for API access",
                    API_PORT,
                )
                .await?
        }
    };
    let control: Vec<&str> = sc
        .nodes
        .iter()
        .filter(|n| n.role == NodeRole::Control)
        .filter_map(|n| n.vm_id.as_deref())
        .collect();
    if let Err(err) = cloud.assign_to_lb(&rule.id, &control).await {
        // Already assigned on an earlier run: CloudStack refuses the duplicate.
        if err.errorcode() != Some(431) && err.errorcode() != Some(537) {
            return Err(err.into());
        }
    }
    let mut detail = format!("api-lb {API_PORT} → {} control nodes", control.len());
    if let Some((start, _)) = ssh_ports(&sc.cluster) {
        let existing = cloud.pf_rules(&ip_id).await?;
        for (i, node) in sc.nodes.iter().enumerate() {
            let Some(vm_id) = node.vm_id.as_deref() else {
                continue;
            };
            let port = start + u16::try_from(i).unwrap_or(0);
            if existing.iter().any(|r| r.publicport == Some(port)) {
                continue;
            }
            cloud
                .create_pf_rule(&ip_id, &network_id, vm_id, port, 22)
                .await?;
        }
        detail.push_str(&format!("; SSH {start}+i → node:22"));
    }
    Ok(detail)
}

fn key(sc: &StepCtx<'_>, node: &NodeRecord) -> NodeKey {
    NodeKey::new(sc.cluster.id.clone(), node.name.clone())
}

fn first_control(sc: &StepCtx<'_>) -> Result<NodeRecord, StepError> {
    sc.nodes
        .iter()
        .find(|n| n.role == NodeRole::Control)
        .cloned()
        .ok_or_else(|| StepError::fail("the cluster has no control node"))
}

async fn send(
    sc: &StepCtx<'_>,
    node: &NodeRecord,
    suffix: &str,
    kind: Kind,
) -> Result<Option<Payload>, StepError> {
    let timeout = sc.remaining();
    let command = Command {
        command_id: sc.command_id(suffix),
        timeout_seconds: u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX),
        kind: Some(kind),
    };
    let result = sc
        .ctx
        .hub
        .send_command(&key(sc, node), command, timeout)
        .await?;
    Ok(result.payload)
}

/// Sends the private registry's mirror and credentials to a node, when the cluster has one.
async fn configure_registry(sc: &StepCtx<'_>, node: &NodeRecord) -> Result<(), StepError> {
    let Some(registry) = sc.cluster.registry.clone() else {
        return Ok(());
    };
    let sealed = sc
        .ctx
        .store
        .secret(&sc.cluster.id, REGISTRY_PASSWORD_SECRET)?
        .ok_or_else(|| StepError::fail("the registry password is missing"))?;
    let password = sc
        .ctx
        .sealer
        .open(&sc.cluster.id, REGISTRY_PASSWORD_SECRET, &sealed)
        .map_err(|e| StepError::fail(e.to_string()))?;
    send(
        sc,
        node,
        &format!("registry:{}", node.name),
        Kind::ConfigureRegistry(ConfigureRegistry {
            url: registry.url,
            username: registry.username,
            password: String::from_utf8_lossy(&password).into_owned(),
        }),
    )
    .await?;
    Ok(())
}

fn api_endpoint(sc: &StepCtx<'_>) -> Result<String, StepError> {
    sc.cluster
        .server_ip
        .as_ref()
        .map(|ip| format!("{ip}:{API_PORT}"))
        .ok_or_else(|| StepError::fail("the cluster has no API address"))
}

async fn init_control_plane(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let node = first_control(sc)?;
    configure_registry(sc, &node).await?;
    let endpoint = api_endpoint(sc)?;
    let mut sans = vec![
        sc.cluster
            .server_ip
            .clone()
            .ok_or_else(|| StepError::fail("the cluster has no API address"))?,
    ];
    if let Some(ip) = &node.ip {
        sans.push(ip.clone());
    }
    // Fresh secrets for this init only; a resend after a restart is answered from the agent's
    // journal, so the first secrets stay the cluster's.
    let init = InitControlPlane {
        control_plane_endpoint: endpoint.clone(),
        certificate_sans: sans,
        pod_cidr: sc.ctx.nodes.pod_cidr.clone(),
        service_cidr: sc.ctx.nodes.service_cidr.clone(),
        bootstrap_token: bootstrap_token(),
        token_ttl_seconds: u32::try_from(JOIN_MATERIAL_TTL.as_secs()).unwrap_or(900),
        certificate_key: hex_key(),
        node_name: node.name.clone(),
    };
    send(sc, &node, &node.name, Kind::InitControlPlane(init)).await?;
    let mut node = node;
    node.joined = true;
    sc.save_node(&node)?;
    Ok(format!(
        "{} initialised the control plane at {endpoint}",
        node.name
    ))
}

/// A kubeadm bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}`.
fn bootstrap_token() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 22];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    let chars: String = bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    format!("{}.{}", &chars[..6], &chars[6..])
}

/// A kubeadm certificate key: 32 random bytes, hex.
fn hex_key() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    hex::encode(bytes)
}

async fn join(sc: &mut StepCtx<'_>, role: NodeRole) -> Result<String, StepError> {
    let first = first_control(sc)?;
    let joining: Vec<NodeRecord> = sc
        .nodes
        .iter()
        .filter(|n| n.role == role && n.name != first.name)
        .cloned()
        .collect();
    // Joins go to the first control node's own address, as CKS does at create time.
    let target = match &first.ip {
        Some(ip) => format!("{ip}:{API_PORT}"),
        None => api_endpoint(sc)?,
    };
    for mut node in joining {
        if node.joined {
            continue;
        }
        configure_registry(sc, &node).await?;
        let material = send(
            sc,
            &first,
            &format!("material:{}", node.name),
            Kind::CreateJoinMaterial(CreateJoinMaterial {
                ttl_seconds: u32::try_from(JOIN_MATERIAL_TTL.as_secs()).unwrap_or(900),
                for_control_plane: role == NodeRole::Control,
            }),
        )
        .await?;
        let Some(Payload::JoinMaterial(JoinMaterial {
            token,
            ca_cert_hash,
            certificate_key,
            ..
        })) = material
        else {
            return Err(StepError::fail(format!(
                "{} returned no join material",
                first.name
            )));
        };
        let kind = match role {
            NodeRole::Control => Kind::JoinControlPlane(JoinControlPlane {
                api_server_endpoint: target.clone(),
                token,
                ca_cert_hash,
                certificate_key,
                node_name: node.name.clone(),
            }),
            NodeRole::Worker => Kind::JoinWorker(JoinWorker {
                api_server_endpoint: target.clone(),
                token,
                ca_cert_hash,
                node_name: node.name.clone(),
            }),
        };
        send(sc, &node, &node.name, kind).await?;
        node.joined = true;
        sc.save_node(&node)?;
        info!(node = %node.name, "node joined");
    }
    let count = sc
        .nodes
        .iter()
        .filter(|n| n.role == role && n.name != first.name)
        .count();
    Ok(format!("{count} {} nodes joined", role.as_str()))
}

async fn apply_manifests(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let first = first_control(sc)?;
    send(
        sc,
        &first,
        &first.name,
        Kind::ApplyManifests(ApplyManifests {
            bundle_files: MANIFESTS.iter().map(|m| (*m).to_string()).collect(),
            inline: Vec::new(),
        }),
    )
    .await?;
    Ok(format!("applied {}", MANIFESTS.join(", ")))
}

/// Every node Ready in the control plane's node list (kubelet versions recorded); also the
/// start workflow's last step.
pub(crate) async fn wait_ready(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let first = first_control(sc)?;
    let poll = format!("poll-{}", sc.attempt());
    let payload = send(sc, &first, &poll, Kind::GetNodes(GetNodes {})).await?;
    let Some(Payload::Nodes(status)) = payload else {
        return Err(StepError::retry(
            "the control node returned no node list",
            Duration::from_secs(3),
        ));
    };
    let mut waiting = Vec::new();
    for node in &mut sc.nodes {
        match status.nodes.iter().find(|k| k.name == node.name) {
            Some(kube) if kube.ready => {
                node.kubernetes_version = Some(kube.kubelet_version.clone());
            }
            _ => waiting.push(node.name.clone()),
        }
    }
    if waiting.is_empty() {
        Ok(format!("{} nodes Ready", sc.nodes.len()))
    } else {
        Err(StepError::retry(
            format!("waiting for {} to be Ready", waiting.join(", ")),
            Duration::from_secs(3),
        ))
    }
}

/// Points a kubeconfig's `server:` lines at `https://<server_ip>:6443`, as CKS does.
pub fn rewrite_server(kubeconfig: &str, server_ip: &str) -> String {
    let mut out = String::with_capacity(kubeconfig.len());
    for line in kubeconfig.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("server:") {
            let indent = &line[..line.len() - trimmed.len()];
            out.push_str(&format!("{indent}server: https://{server_ip}:{API_PORT}"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

async fn kubeconfig(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let first = first_control(sc)?;
    let payload = send(
        sc,
        &first,
        &first.name,
        Kind::FetchKubeconfig(FetchKubeconfig {}),
    )
    .await?;
    let Some(Payload::Kubeconfig(config)) = payload else {
        return Err(StepError::fail(format!(
            "{} returned no kubeconfig",
            first.name
        )));
    };
    let server_ip = sc
        .cluster
        .server_ip
        .clone()
        .ok_or_else(|| StepError::fail("the cluster has no API address"))?;
    let text = rewrite_server(&config.yaml, &server_ip);
    let sealed = sc
        .ctx
        .sealer
        .seal(&sc.cluster.id, KUBECONFIG_SECRET, text.as_bytes());
    sc.ctx
        .store
        .put_secret(&sc.cluster.id, KUBECONFIG_SECRET, &sealed)?;
    Ok(format!(
        "kubeconfig stored (server https://{server_ip}:{API_PORT})"
    ))
}

async fn detach_iso(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let mut detached = 0;
    for node in &sc.nodes {
        let Some(vm_id) = &node.vm_id else { continue };
        match sc.ctx.cloud.detach_iso(vm_id).await {
            Ok(()) => detached += 1,
            // Already detached, or a transient failure: the nodes do not need it any more.
            Err(err) => warn!(node = %node.name, error = %err, "cannot detach the ISO"),
        }
    }
    Ok(format!("ISO detached from {detached} nodes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_servers_point_at_the_public_address() {
        let text = "clusters:\n- cluster:\n    certificate-authority-data: x\n    server: https://10.1.0.5:6443\n  name: kubernetes\n";
        let out = rewrite_server(text, "203.0.113.9");
        assert!(
            out.contains("    server: https://203.0.113.9:6443\n"),
            "{out}"
        );
        assert!(!out.contains("10.1.0.5"));
    }

    #[test]
    fn bootstrap_tokens_have_kubeadms_shape() {
        let token = bootstrap_token();
        let (id, secret) = token.split_once('.').expect("dot");
        assert_eq!((id.len(), secret.len()), (6, 16));
        assert!(
            token
                .chars()
                .all(|c| c == '.' || c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert_ne!(token, bootstrap_token());
        assert_eq!(hex_key().len(), 64);
    }
}
