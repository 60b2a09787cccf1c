//! `listKubernetesClusterEvents id`: a cluster's history, so an operator can see why it is
//! where it is without reading logs (issue 14). Each operation (create, start, stop, scale,
//! upgrade, delete) is an event when it begins and when it ends, and each of its steps is one
//! event with its latest outcome, detail and attempts, all from the workflows' step journal,
//! the durable record the engine already keeps. What the reconciler saw and did (faults,
//! repairs, recovery) comes with them as operation `reconcile`. Newest first, paged like
//! CloudStack's lists.

use serde_json::{Value, json};

use super::clusters::owned_cluster;
use super::list_reply;
use crate::api::error::ApiError;
use crate::api::params::Params;
use crate::api::{Api, Reply};
use crate::cloudstack::Caller;
use crate::store::{
    ClusterRecord, StepRecord, StepStatus, UnixTime, WorkflowRecord, WorkflowStatus,
    cloudstack_date,
};

/// `listKubernetesClusterEvents id [page pagesize]`.
///
/// # Errors
/// Unknown cluster (or one the caller may not see); bad paging.
pub async fn list(api: &Api, caller: &Caller, params: &Params) -> Result<Reply, ApiError> {
    let paging = params.paging()?;
    let cluster = owned_cluster(api, caller, params.require("id")?).await?;
    let workflows = api.ctx.store.workflows(&cluster.id)?;
    let mut events: Vec<(UnixTime, usize, Value)> = Vec::new();
    for workflow in &workflows {
        for event in workflow_events(&cluster, workflow) {
            // The journal's order breaks ties between events of the same second.
            let order = events.len();
            events.push((event.0, order, event.1));
        }
    }
    for (seq, event) in api.ctx.store.events(&cluster.id)?.into_iter().enumerate() {
        let item = json!({
            "id": format!("{}-reconcile-{seq}", cluster.id),
            "kubernetesclusterid": cluster.id,
            "kubernetesclustername": cluster.name,
            "operation": "reconcile",
            "state": event.state,
            "level": event.level,
            "description": event.description,
            "created": cloudstack_date(event.at),
        });
        let order = events.len();
        events.push((event.at, order, item));
    }
    events.sort_by_key(|e| std::cmp::Reverse((e.0, e.1)));
    let items = events.into_iter().map(|(_, _, event)| event).collect();
    Ok(list_reply("kubernetesclusterevent", items, paging))
}

/// The events of one operation, oldest first: it began, each step, and how it ended.
fn workflow_events(cluster: &ClusterRecord, workflow: &WorkflowRecord) -> Vec<(UnixTime, Value)> {
    let operation = workflow.kind.as_str();
    let event = |n: usize, at: UnixTime, state: &str, level: &str, description: String| {
        json!({
            "id": format!("{}-{n}", workflow.id),
            "kubernetesclusterid": cluster.id,
            "kubernetesclustername": cluster.name,
            "operation": operation,
            "jobid": workflow.job_id,
            "state": state,
            "level": level,
            "description": description,
            "created": cloudstack_date(at),
        })
    };
    let mut out = vec![(
        workflow.created,
        event(
            0,
            workflow.created,
            "Started",
            "INFO",
            format!("{operation} began"),
        ),
    )];
    for (i, step) in workflow.steps.iter().enumerate() {
        let mut item = event(
            i + 1,
            step.updated,
            step_state(step),
            if step.status == StepStatus::Failed {
                "ERROR"
            } else {
                "INFO"
            },
            step.detail.clone(),
        );
        item["step"] = json!(step.name.as_str());
        item["attempts"] = json!(step.attempts);
        out.push((step.updated, item));
    }
    if let Some((state, level, description)) = ending(workflow) {
        let at = workflow
            .steps
            .iter()
            .map(|s| s.updated)
            .max()
            .unwrap_or(workflow.created);
        let n = workflow.steps.len() + 1;
        out.push((at, event(n, at, state, level, description)));
    }
    out
}

fn step_state(step: &StepRecord) -> &'static str {
    match step.status {
        // A step recorded as begun but not finished is running, or was cut off (a restart
        // runs it again).
        StepStatus::Started => "Started",
        StepStatus::Done => "Completed",
        StepStatus::Failed => "Failed",
    }
}

/// How an operation ended, when it has: state, level and description.
fn ending(workflow: &WorkflowRecord) -> Option<(&'static str, &'static str, String)> {
    let operation = workflow.kind.as_str();
    match workflow.status {
        WorkflowStatus::Running => None,
        WorkflowStatus::Succeeded => Some(("Succeeded", "INFO", format!("{operation} completed"))),
        WorkflowStatus::Failed => Some((
            "Failed",
            "ERROR",
            workflow
                .failure
                .clone()
                .unwrap_or_else(|| format!("{operation} failed")),
        )),
        WorkflowStatus::Cancelled => Some((
            "Cancelled",
            "WARN",
            format!("{operation} cancelled: the cluster is being deleted"),
        )),
    }
}
