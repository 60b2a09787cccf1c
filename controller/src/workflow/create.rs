//! The create workflow (cks-reference §3.2, without SSH): network, public IP and rules, node VMs
//! deployed with the version's ISO attached before their first boot and userdata holding only
//! the agent's enrollment facts, then kubeadm through the agents, the CNI and dashboard, every
//! node Ready, and the kubeconfig stored sealed.

use std::collections::BTreeSet;

use cks_proto::agent::command::Kind;
use cks_proto::agent::command_result::Payload;
use cks_proto::agent::{ApplyManifests, FetchKubeconfig, InitControlPlane};
use tracing::warn;

use super::kube::{
    JOIN_MATERIAL_TTL, KUBECONFIG_SECRET, api_endpoint, configure_registry, first_control,
    join_nodes, send,
};
use super::rules::{API_PORT, Ownership, api_load_balancer, node_rules, open_firewall, ssh_ports};
use super::step::{StepCtx, StepError};
use super::vms::{deploy_nodes, is_isolated, network_id, network_marker, plan_node};
use crate::store::{NodeRole, Step};

/// Bundle manifests applied on the first control node: the CNI, then the dashboard.
const MANIFESTS: [&str; 2] = ["network.yaml", "dashboard.yaml"];

/// Runs one step of the create workflow.
///
/// # Errors
/// [`StepError`]: retry (not yet) or fail (for good).
pub async fn run(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    match sc.step {
        Step::Network => network(sc).await,
        Step::PublicIp => public_ip(sc).await,
        Step::Firewall => firewall(sc).await,
        Step::PlanNodes => plan_nodes(sc),
        Step::DeployNodes => deploy(sc).await,
        Step::LoadBalancer => load_balancer(sc).await,
        Step::InitControlPlane => init_control_plane(sc).await,
        Step::JoinControlPlanes => join(sc, NodeRole::Control).await,
        Step::JoinWorkers => join(sc, NodeRole::Worker).await,
        Step::ApplyManifests => apply_manifests(sc).await,
        Step::WaitReady => super::kube::wait_ready(sc).await,
        Step::Kubeconfig => kubeconfig(sc).await,
        Step::DetachIso => detach_iso(sc).await,
        other => Err(StepError::fail(format!("{other} is not a create step"))),
    }
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

/// Opens the API port, and the SSH range when the cluster has a key pair, with rules of the
/// cluster's own: a rule of the owner's over the same ports does not count (see
/// [`super::rules`]).
async fn firewall(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let Some(ip_id) = sc.cluster.public_ip_id.clone() else {
        return Ok("no public IP: nothing to open".into());
    };
    let owned = Ownership::of(sc, BTreeSet::new())?;
    let existing = sc.ctx.cloud.firewall_rules(&ip_id).await?;
    open_firewall(sc, &owned, &existing, &ip_id, (API_PORT, API_PORT)).await?;
    let mut opened = vec![API_PORT.to_string()];
    let nodes = usize::try_from(sc.cluster.control_nodes + sc.cluster.size).unwrap_or(1);
    if let Some((start, end)) = ssh_ports(&sc.cluster, nodes) {
        open_firewall(sc, &owned, &existing, &ip_id, (start, end)).await?;
        opened.push(format!("{start}-{end}"));
    }
    Ok(format!("TCP {} open", opened.join(", ")))
}

fn plan_nodes(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    if !sc.nodes.is_empty() {
        return Ok(format!("{} nodes planned", sc.nodes.len()));
    }
    let total = sc.cluster.control_nodes + sc.cluster.size;
    sc.nodes = (0..total)
        .map(|ordinal| {
            let role = if ordinal < sc.cluster.control_nodes {
                NodeRole::Control
            } else {
                NodeRole::Worker
            };
            plan_node(&sc.cluster, role, ordinal, None)
        })
        .collect();
    Ok(format!(
        "{} control and {} worker nodes",
        sc.cluster.control_nodes, sc.cluster.size
    ))
}

async fn deploy(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let names: Vec<String> = sc.nodes.iter().map(|n| n.name.clone()).collect();
    let started = deploy_nodes(sc, &names).await?;
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
    let rule = api_load_balancer(sc, &ip_id, &network_id).await?;
    let control: Vec<&str> = sc
        .nodes
        .iter()
        .filter(|n| n.role == NodeRole::Control)
        .filter_map(|n| n.vm_id.as_deref())
        .collect();
    if let Err(err) = sc.ctx.cloud.assign_to_lb(&rule.id, &control).await {
        // Already assigned on an earlier run: CloudStack refuses the duplicate.
        if err.errorcode() != Some(431) && err.errorcode() != Some(537) {
            return Err(err.into());
        }
    }
    let ssh = node_rules(sc).await?;
    Ok(format!(
        "api-lb {API_PORT} → {} control nodes; {ssh}",
        control.len()
    ))
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
    let names: Vec<String> = sc.nodes.iter().map(|n| n.name.clone()).collect();
    let count = join_nodes(sc, role, &names).await?;
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
    // The node's owner is root on it: only its certificate data is kept.
    let text = crate::kubeconfig::rebuild(&config.yaml, &server_ip)
        .map_err(|e| StepError::fail(format!("{}: {e}", first.name)))?;
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
    let names: Vec<String> = sc.nodes.iter().map(|n| n.name.clone()).collect();
    let detached = super::vms::detach_iso(sc, &names).await;
    Ok(format!("ISO detached from {detached} nodes"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
