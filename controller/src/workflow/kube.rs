//! What every step family asks of the nodes' agents: commands with deterministic ids, the
//! first control node, joins with fresh per-node join material, and the wait until every node
//! is Ready.

use std::time::Duration;

use cks_proto::agent::command::Kind;
use cks_proto::agent::command_result::Payload;
use cks_proto::agent::{
    Command, ConfigureRegistry, CreateJoinMaterial, Drain, GetNodes, JoinControlPlane,
    JoinMaterial, JoinWorker, KubeNode, Uncordon,
};
use tracing::info;

use super::rules::API_PORT;
use super::step::{StepCtx, StepError};
use crate::agents::NodeKey;
use crate::store::{NodeRecord, NodeRole};

/// The kubeconfig's name in the secrets table.
pub const KUBECONFIG_SECRET: &str = "kubeconfig";
/// The registry password's name in the secrets table.
pub const REGISTRY_PASSWORD_SECRET: &str = "registry-password";
/// Lifetime of the join token and certificate key made for one join.
pub const JOIN_MATERIAL_TTL: Duration = Duration::from_secs(15 * 60);

/// The hub's key of a node.
pub fn key(sc: &StepCtx<'_>, node: &NodeRecord) -> NodeKey {
    NodeKey::new(sc.cluster.id.clone(), node.name.clone())
}

/// The first control node (it ran `kubeadm init`; joins, drains and node lists go through it).
///
/// # Errors
/// The cluster has no control node.
pub fn first_control(sc: &StepCtx<'_>) -> Result<NodeRecord, StepError> {
    sc.nodes
        .iter()
        .filter(|n| n.role == NodeRole::Control)
        .min_by_key(|n| n.ordinal)
        .cloned()
        .ok_or_else(|| StepError::fail("the cluster has no control node"))
}

/// Sends a command to a node's agent under the id `<workflow>:<step>:<suffix>` and waits for its
/// result until the workflow's deadline.
///
/// # Errors
/// The agent reported a failure (for good), or no answer came (transient).
pub async fn send(
    sc: &StepCtx<'_>,
    node: &NodeRecord,
    suffix: &str,
    kind: Kind,
) -> Result<Option<Payload>, StepError> {
    send_within(sc, node, suffix, kind, sc.remaining()).await
}

/// [`send`] with its own bound on the wait (a node that may be gone).
///
/// # Errors
/// As [`send`].
pub async fn send_within(
    sc: &StepCtx<'_>,
    node: &NodeRecord,
    suffix: &str,
    kind: Kind,
    timeout: Duration,
) -> Result<Option<Payload>, StepError> {
    let command = Command {
        command_id: sc.command_id(suffix),
        timeout_seconds: u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX),
        kind: Some(kind),
    };
    let result = sc
        .ctx
        .agents
        .send_command(&key(sc, node), command, timeout)
        .await?;
    Ok(result.payload)
}

/// Sends the private registry's mirror and credentials to a node, when the cluster has one.
///
/// # Errors
/// The password cannot be read, or the node failed to take it.
pub async fn configure_registry(sc: &StepCtx<'_>, node: &NodeRecord) -> Result<(), StepError> {
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

/// `<server ip>:6443`, where clients reach the API server.
///
/// # Errors
/// The cluster has no API address yet.
pub fn api_endpoint(sc: &StepCtx<'_>) -> Result<String, StepError> {
    sc.cluster
        .server_ip
        .as_ref()
        .map(|ip| format!("{ip}:{API_PORT}"))
        .ok_or_else(|| StepError::fail("the cluster has no API address"))
}

/// Joins every node of `role` named in `names` that has not joined yet, one at a time, each
/// with join material made for it alone by the first control node (a fresh bootstrap token and,
/// for control planes, certificate key, both expiring after [`JOIN_MATERIAL_TTL`]). Returns how
/// many nodes of the list have joined.
///
/// # Errors
/// The first control node could not make the material, or a join failed.
pub async fn join_nodes(
    sc: &mut StepCtx<'_>,
    role: NodeRole,
    names: &[String],
) -> Result<usize, StepError> {
    let first = first_control(sc)?;
    let joining: Vec<NodeRecord> = sc
        .nodes
        .iter()
        .filter(|n| n.role == role && n.name != first.name && names.contains(&n.name))
        .cloned()
        .collect();
    // Joins go to the first control node's own address, as CKS does at create time.
    let target = match &first.ip {
        Some(ip) => format!("{ip}:{API_PORT}"),
        None => api_endpoint(sc)?,
    };
    for (index, mut node) in joining.iter().cloned().enumerate() {
        if node.joined {
            continue;
        }
        sc.report(&format!(
            "{}/{} {}: joining",
            index + 1,
            joining.len(),
            node.name
        ));
        // The material expires: make it only once the node's agent is there to use it (a VM
        // may take long to boot), and afresh on each run of the step (a resumed run may come
        // after it expired). The join itself keeps one id, so a node never joins twice.
        if !sc.ctx.agents.status(&key(sc, &node)).connected {
            return Err(StepError::not_yet(format!(
                "waiting for the agent of {} to connect",
                node.name
            )));
        }
        configure_registry(sc, &node).await?;
        let material = send(
            sc,
            &first,
            &format!("material:{}:{}", node.name, sc.attempt()),
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
    Ok(joining.len())
}

/// How long a node's pods get to stop when it is drained.
const DRAIN_GRACE: Duration = Duration::from_secs(30);
/// How long a drain may take before it is reported as blocked (a PodDisruptionBudget that
/// allows no eviction, a pod that never stops).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the controller waits for a drain's result: the drain's own bound, and a margin.
pub const DRAIN_WAIT: Duration = Duration::from_secs(DRAIN_TIMEOUT.as_secs() + 60);

/// The command that cordons and drains `node_name` (run through a control node), bounded by
/// [`DRAIN_TIMEOUT`]; the agent names a PodDisruptionBudget that blocks it.
pub fn drain_command(node_name: &str) -> Kind {
    Kind::Drain(Drain {
        node_name: node_name.to_string(),
        grace_seconds: u32::try_from(DRAIN_GRACE.as_secs()).unwrap_or(30),
        timeout_seconds: u32::try_from(DRAIN_TIMEOUT.as_secs()).unwrap_or(300),
    })
}

/// Puts `node` back in service (uncordon), through the control node `via`.
///
/// # Errors
/// As [`send`].
pub async fn uncordon(
    sc: &StepCtx<'_>,
    via: &NodeRecord,
    node: &NodeRecord,
) -> Result<(), StepError> {
    send(
        sc,
        via,
        &format!("uncordon:{}", node.name),
        Kind::Uncordon(Uncordon {
            node_name: node.name.clone(),
        }),
    )
    .await
    .map(drop)
}

/// The control plane's node list, asked of the first control node (one id per step run).
///
/// # Errors
/// The node did not answer (transient) or answered nothing.
pub async fn kube_nodes(sc: &StepCtx<'_>) -> Result<Vec<KubeNode>, StepError> {
    let first = first_control(sc)?;
    let poll = format!("poll-{}", sc.attempt());
    let payload = send(sc, &first, &poll, Kind::GetNodes(GetNodes {})).await?;
    match payload {
        Some(Payload::Nodes(status)) => Ok(status.nodes),
        _ => Err(StepError::not_yet("the control node returned no node list")),
    }
}

/// Every node of the cluster Ready in the control plane's node list; records each node's
/// kubelet version. The last step of create, start and scale.
///
/// # Errors
/// [`StepError::Retry`] while some node is not Ready.
pub async fn wait_ready(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let listed = kube_nodes(sc).await?;
    let mut waiting = Vec::new();
    for node in &mut sc.nodes {
        match listed.iter().find(|k| k.name == node.name) {
            Some(kube) if kube.ready => {
                node.kubernetes_version = Some(kube.kubelet_version.clone());
            }
            _ => waiting.push(node.name.clone()),
        }
    }
    if waiting.is_empty() {
        Ok(format!("{} nodes Ready", sc.nodes.len()))
    } else {
        Err(StepError::not_yet(format!(
            "waiting for {} to be Ready",
            waiting.join(", ")
        )))
    }
}
