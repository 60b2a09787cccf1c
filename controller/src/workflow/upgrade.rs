//! The upgrade workflow (cks-reference §3.6 and §2.8, without SSH): the new version's binaries
//! ISO is attached to every node, then one node at a time, control nodes first:
//!
//! 1. **drain** through the first control node (retried `cloud.kubernetes.cluster.upgrade.retries`
//!    times, as CKS retries);
//! 2. **upgrade** through the node's agent, which verifies and installs the new bundle (only the
//!    image blobs it lacks), runs `kubeadm upgrade apply` on the first control node and
//!    `kubeadm upgrade node` elsewhere, swaps the kubelet and restarts it (retried likewise);
//! 3. **uncordon**;
//! 4. **health gate**: the node Ready at the new version, the API answering, every kube-system
//!    pod running — before the next node is touched.
//!
//! Each node's version is recorded as soon as it passes, so a resumed or repeated upgrade goes
//! on with the first node not at the target. Every agent command has an id derived from the
//! workflow, the node, the phase and the attempt: after a controller crash the agent answers
//! from its journal, and `kubeadm upgrade` never runs twice on a node. The first failure stops
//! the upgrade: the cluster goes to Alert naming the node and the phase, the ISO is detached.

use std::time::Duration;

use cks_proto::agent::command::Kind;
use cks_proto::agent::command_result::Payload;
use cks_proto::agent::{CheckHealth, Upgrade};
use tracing::info;

use super::kube::{DRAIN_WAIT, drain_command, first_control, send, send_within, uncordon};
use super::step::{POLL_DELAY, StepCtx, StepError};
use super::vms::{attach_iso, detach_iso};
use crate::settings::UPGRADE_RETRIES;
use crate::store::{NodeRecord, NodeRole, Step, UpgradeParams, WorkflowParams};

/// How long the health gate waits for a node after its upgrade.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs one step of the upgrade workflow.
///
/// # Errors
/// [`StepError`]: retry (not yet) or fail (for good).
pub async fn run(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    match sc.step {
        Step::AttachIso => attach(sc).await,
        Step::UpgradeNodes => upgrade_nodes(sc).await,
        Step::DetachIso => detach(sc).await,
        other => Err(StepError::fail(format!("{other} is not an upgrade step"))),
    }
}

fn params(sc: &StepCtx<'_>) -> Result<UpgradeParams, StepError> {
    match &sc.workflow.params {
        WorkflowParams::Upgrade(params) => Ok(params.clone()),
        _ => Err(StepError::fail("the upgrade names no target version")),
    }
}

/// `v1.34.0` for `1.34.0`: how kubelets report their version.
fn kubelet_version(semantic: &str) -> String {
    format!("v{}", semantic.trim_start_matches('v'))
}

fn all_names(sc: &StepCtx<'_>) -> Vec<String> {
    sc.nodes.iter().map(|n| n.name.clone()).collect()
}

async fn attach(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let target = params(sc)?;
    let names = all_names(sc);
    let attached = attach_iso(sc, &target.iso_id, &names).await?;
    Ok(format!(
        "the {} ISO attached to {attached} nodes ({} had it)",
        kubelet_version(&target.semantic_version),
        names.len() - attached
    ))
}

async fn detach(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let names = all_names(sc);
    let detached = detach_iso(sc, &names).await;
    Ok(format!("ISO detached from {detached} nodes"))
}

/// The order nodes are upgraded in: control nodes (the first one first), then workers.
fn upgrade_order(nodes: &[NodeRecord]) -> Vec<NodeRecord> {
    let mut order: Vec<NodeRecord> = nodes.to_vec();
    order.sort_by_key(|n| (n.role != NodeRole::Control, n.ordinal));
    order
}

/// A phase of one node's upgrade, named in progress and failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Drain,
    Upgrade,
    Uncordon,
    Health,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Drain => "drain",
            Phase::Upgrade => "upgrade",
            Phase::Uncordon => "uncordon",
            Phase::Health => "health gate",
        }
    }
}

/// A phase's failure for good, naming the node and the phase.
fn failed(node: &NodeRecord, phase: Phase, err: StepError) -> StepError {
    match err {
        StepError::Fail(reason) => StepError::Fail(format!(
            "node {} failed in {}: {reason}",
            node.name,
            phase.as_str()
        )),
        retry => retry,
    }
}

async fn upgrade_nodes(sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    let target = params(sc)?;
    let want = kubelet_version(&target.semantic_version);
    let attempts = u32::try_from(sc.ctx.settings.number(UPGRADE_RETRIES, None))
        .unwrap_or(u32::MAX)
        .saturating_add(1);
    let order = upgrade_order(&sc.nodes);
    let total = order.len();
    let mut upgraded = 0;
    for (index, node) in order.iter().enumerate() {
        if node.kubernetes_version.as_deref() == Some(want.as_str()) {
            continue;
        }
        if sc.past_deadline() {
            return Err(StepError::fail(format!(
                "the upgrade ran out of time (cloud.kubernetes.cluster.upgrade.timeout) before \
                 node {}; {upgraded} nodes were upgraded, upgrading again continues",
                node.name
            )));
        }
        let position = format!("{}/{total} {}", index + 1, node.name);
        let first = first_control(sc)?;
        let is_first = first.name == node.name;

        sc.report(&format!("{position}: draining"));
        retried(sc, node, Phase::Drain, attempts, |attempt| {
            (
                first.clone(),
                format!("drain:{}:{attempt}", node.name),
                drain_command(&node.name),
                DRAIN_WAIT,
            )
        })
        .await?;

        sc.report(&format!("{position}: upgrading to {want}"));
        let remaining = sc.remaining();
        let payload = retried(sc, node, Phase::Upgrade, attempts, |attempt| {
            (
                node.clone(),
                format!("upgrade:{}:{attempt}", node.name),
                Kind::Upgrade(Upgrade {
                    target_version: want.clone(),
                    first_control_plane: is_first,
                }),
                remaining,
            )
        })
        .await?;
        if let Some(Payload::Upgrade(report)) = payload
            && report.kubelet_version != want
        {
            return Err(failed(
                node,
                Phase::Upgrade,
                StepError::fail(format!(
                    "the node reports {} after its upgrade",
                    report.kubelet_version
                )),
            ));
        }

        sc.report(&format!("{position}: uncordoning"));
        uncordon(sc, &first, node)
            .await
            .map_err(|e| failed(node, Phase::Uncordon, e))?;

        sc.report(&format!("{position}: health gate"));
        health_gate(sc, &first, node, &want).await?;

        let mut done = node.clone();
        done.kubernetes_version = Some(want.clone());
        sc.save_node(&done)?;
        upgraded += 1;
        info!(node = %node.name, version = %want, "node upgraded");
    }
    sc.cluster.version_id.clone_from(&target.version_id);
    Ok(format!(
        "{upgraded} nodes upgraded to {want} ({} already were)",
        total - upgraded
    ))
}

/// Runs one phase command up to `attempts` times, each attempt under its own id (so a resumed
/// run replays the journaled attempts instead of repeating them); fails with the last reason.
async fn retried(
    sc: &StepCtx<'_>,
    node: &NodeRecord,
    phase: Phase,
    attempts: u32,
    command: impl Fn(u32) -> (NodeRecord, String, Kind, Duration),
) -> Result<Option<Payload>, StepError> {
    let mut last = String::new();
    for attempt in 1..=attempts.max(1) {
        let (target, suffix, kind, timeout) = command(attempt);
        match send_within(sc, &target, &suffix, kind, timeout).await {
            Ok(payload) => return Ok(payload),
            Err(StepError::Fail(reason)) => {
                info!(node = %node.name, phase = phase.as_str(), attempt, %reason, "attempt failed");
                last = reason;
            }
            Err(retry) => return Err(retry),
        }
    }
    Err(failed(
        node,
        phase,
        StepError::Fail(format!("{attempts} attempts failed; the last: {last}")),
    ))
}

/// Waits until the upgraded node is Ready at `want`, the API answers (the node list comes from
/// it) and every kube-system pod runs; fails naming what is not so after [`HEALTH_TIMEOUT`].
async fn health_gate(
    sc: &StepCtx<'_>,
    first: &NodeRecord,
    node: &NodeRecord,
    want: &str,
) -> Result<(), StepError> {
    let polls = (HEALTH_TIMEOUT.as_secs() / POLL_DELAY.as_secs()).max(1);
    let mut problem = String::new();
    for poll in 1..=polls {
        let payload = send(
            sc,
            first,
            &format!("health:{}:{}:{poll}", node.name, sc.attempt()),
            Kind::CheckHealth(CheckHealth {}),
        )
        .await;
        problem = match payload {
            Ok(Some(Payload::Health(health))) => {
                let kube = health.nodes.iter().find(|k| k.name == node.name);
                let pods: Vec<String> = health
                    .system_pods
                    .iter()
                    .filter(|p| p.phase != "Running" || !p.ready)
                    .map(|p| format!("{} ({})", p.name, p.phase))
                    .collect();
                match kube {
                    None => "the node is not in the node list".to_string(),
                    Some(k) if !k.ready => "the node is not Ready".to_string(),
                    Some(k) if k.kubelet_version != want => {
                        format!("the node runs {}", k.kubelet_version)
                    }
                    Some(_) if !pods.is_empty() => {
                        format!("kube-system pods not running: {}", pods.join(", "))
                    }
                    Some(_) => return Ok(()),
                }
            }
            Ok(_) => "the control node returned no health report".to_string(),
            // The API server restarting under `kubeadm upgrade apply`: look again.
            Err(StepError::Retry { reason, .. } | StepError::Fail(reason)) => reason,
        };
        tokio::time::sleep(POLL_DELAY).await;
    }
    Err(failed(
        node,
        Phase::Health,
        StepError::Fail(format!(
            "not healthy after {}s: {problem}",
            HEALTH_TIMEOUT.as_secs()
        )),
    ))
}
