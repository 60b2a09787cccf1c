//! The workflow engine: runs workflows step by step, committing every step's start and outcome,
//! retries steps that ask for it until the workflow's deadline, and resumes running workflows
//! after a restart.

use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

use super::{StepError, next_step};
use crate::context::Context;
use crate::store::{
    ClusterRecord, ClusterState, NodeRecord, Progress, StepStatus, StoreError, WorkflowKind,
    WorkflowRecord, WorkflowStatus, now,
};

/// Longest pause between two runs of a step that asked to be retried.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// Runs workflows in the background. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    ctx: Context,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// What a step works on: fresh copies of the cluster and its nodes, written back (in the same
/// transaction as the step's outcome) when the step ends.
pub struct StepCtx<'a> {
    /// Everything shared.
    pub ctx: &'a Context,
    /// The workflow (its id makes agent command ids deterministic).
    pub workflow: &'a WorkflowRecord,
    /// The step being run.
    pub step: &'static str,
    /// The cluster.
    pub cluster: ClusterRecord,
    /// Its nodes.
    pub nodes: Vec<NodeRecord>,
}

impl StepCtx<'_> {
    /// An agent command id unique to this workflow, step and `suffix` (a node name, a poll
    /// number): the same id after a restart, so the agent answers from its journal instead of
    /// acting twice.
    pub fn command_id(&self, suffix: &str) -> String {
        format!("{}:{}:{}", self.workflow.id, self.step, suffix)
    }

    /// How many times this step has been started (1 on the first run).
    pub fn attempt(&self) -> u32 {
        self.workflow.step(self.step).map_or(1, |s| s.attempts)
    }

    /// Time left before the workflow's deadline (at least one second).
    pub fn remaining(&self) -> Duration {
        let left = self.workflow.deadline - now();
        Duration::from_secs(u64::try_from(left).unwrap_or(0).max(1))
    }

    /// Saves one node right away (a step that makes several things records each as it goes).
    ///
    /// # Errors
    /// The store failed.
    pub fn save_node(&mut self, node: &NodeRecord) -> Result<(), StoreError> {
        self.ctx.store.put_node(node)?;
        if let Some(slot) = self.nodes.iter_mut().find(|n| n.name == node.name) {
            *slot = node.clone();
        } else {
            self.nodes.push(node.clone());
        }
        Ok(())
    }

    /// Saves the cluster record right away.
    ///
    /// # Errors
    /// The store failed.
    pub fn save_cluster(&self) -> Result<(), StoreError> {
        self.ctx.store.update_cluster(&self.cluster)
    }
}

// === impl Engine ===

impl Engine {
    /// An engine over `ctx`; its tasks stop at the next step boundary when `shutdown` fires.
    pub fn new(ctx: Context, shutdown: CancellationToken) -> Self {
        Engine {
            ctx,
            tracker: TaskTracker::new(),
            shutdown,
        }
    }

    /// Starts running `workflow` in the background.
    pub fn spawn(&self, workflow: WorkflowRecord) {
        let engine = self.clone();
        let span = info_span!(
            "workflow",
            id = %workflow.id,
            kind = workflow.kind.as_str(),
            cluster = %workflow.cluster_id
        );
        self.tracker
            .spawn(async move { engine.drive(workflow).await }.instrument(span));
    }

    /// Resumes every workflow the store says is running (at start-up).
    ///
    /// # Errors
    /// The store failed.
    pub fn resume_all(&self) -> Result<usize, StoreError> {
        let running = self.ctx.store.running_workflows()?;
        for workflow in &running {
            info!(
                workflow = %workflow.id,
                kind = workflow.kind.as_str(),
                cluster = %workflow.cluster_id,
                next = next_step(workflow).unwrap_or("finish"),
                "resuming workflow"
            );
        }
        let count = running.len();
        for workflow in running {
            self.spawn(workflow);
        }
        Ok(count)
    }

    /// Waits until every workflow task has stopped (after `shutdown` fired).
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

    async fn drive(&self, mut workflow: WorkflowRecord) {
        if workflow.kind == WorkflowKind::Create {
            // The job started: Created → Starting (a resumed workflow is already there).
            if let Err(err) = self.ctx.store.set_cluster_state(
                &workflow.cluster_id,
                ClusterState::Created,
                ClusterState::Starting,
                None,
            ) {
                warn!(error = %err, "cannot move the cluster to Starting");
            }
        }
        loop {
            if self.shutdown.is_cancelled() {
                info!("controller stopping; the workflow resumes at the next start");
                return;
            }
            let Some(step) = next_step(&workflow) else {
                self.finish(&mut workflow, Ok(())).await;
                return;
            };
            if now() > workflow.deadline {
                let reason = format!("timed out in step {step}");
                workflow.start_step(step);
                workflow.finish_step(step, StepStatus::Failed, "timed out");
                self.finish(&mut workflow, Err(reason)).await;
                return;
            }
            workflow.start_step(step);
            if let Err(err) = self.ctx.store.save_progress(Progress {
                workflow: &workflow,
                cluster: None,
                nodes: &[],
            }) {
                error!(error = %err, "cannot record the step start; retrying");
                self.pause(Duration::from_secs(1)).await;
                continue;
            }
            let (cluster, nodes) = match self.load(&workflow.cluster_id) {
                Ok(loaded) => loaded,
                Err(err) => {
                    error!(error = %err, "cannot load the cluster; retrying");
                    self.pause(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let snapshot = workflow.clone();
            let mut sc = StepCtx {
                ctx: &self.ctx,
                workflow: &snapshot,
                step,
                cluster,
                nodes,
            };
            let result = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => {
                    info!(step, "controller stopping mid-step; it runs again at the next start");
                    return;
                }
                result = run_step(workflow.kind, &mut sc) => result,
            };
            match result {
                Ok(detail) => {
                    info!(step, %detail, "step done");
                    workflow.finish_step(step, StepStatus::Done, detail);
                    let saved = self.ctx.store.save_progress(Progress {
                        workflow: &workflow,
                        cluster: Some(&sc.cluster),
                        nodes: &sc.nodes,
                    });
                    if let Err(err) = saved {
                        // The step runs again; being idempotent, it finds its own work.
                        error!(error = %err, step, "cannot record the step outcome");
                        workflow.finish_step(step, StepStatus::Started, "outcome not recorded");
                        self.pause(Duration::from_secs(1)).await;
                    }
                }
                Err(StepError::Retry { reason, after }) => {
                    info!(step, %reason, "step not finished; will run again");
                    workflow.finish_step(step, StepStatus::Started, reason);
                    let _ = self.ctx.store.save_progress(Progress {
                        workflow: &workflow,
                        cluster: Some(&sc.cluster),
                        nodes: &sc.nodes,
                    });
                    self.pause(after.min(MAX_RETRY_DELAY)).await;
                }
                Err(StepError::Fail(reason)) => {
                    warn!(step, %reason, "step failed");
                    workflow.finish_step(step, StepStatus::Failed, reason.clone());
                    let _ = self.ctx.store.save_progress(Progress {
                        workflow: &workflow,
                        cluster: Some(&sc.cluster),
                        nodes: &sc.nodes,
                    });
                    self.finish(&mut workflow, Err(format!("step {step} failed: {reason}")))
                        .await;
                    return;
                }
            }
        }
    }

    async fn pause(&self, delay: Duration) {
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }

    fn load(&self, cluster_id: &str) -> Result<(ClusterRecord, Vec<NodeRecord>), StoreError> {
        let cluster = self
            .ctx
            .store
            .cluster(cluster_id)?
            .ok_or_else(|| StoreError::NotFound {
                kind: "cluster",
                id: cluster_id.to_string(),
            })?;
        let nodes = self.ctx.store.nodes(cluster_id)?;
        Ok((cluster, nodes))
    }

    /// Ends a workflow: the cluster's state, the job's result, the workflow's status.
    async fn finish(&self, workflow: &mut WorkflowRecord, outcome: Result<(), String>) {
        let ctx = &self.ctx;
        let cluster_id = workflow.cluster_id.clone();
        let states = super::states(workflow.kind);
        let (status, from, to) = match &outcome {
            Ok(()) => (WorkflowStatus::Succeeded, states.during, states.succeeded),
            Err(_) => (WorkflowStatus::Failed, states.during, states.failed),
        };
        let failure = outcome.as_ref().err().map(String::as_str);
        match ctx.store.set_cluster_state(&cluster_id, from, to, failure) {
            Ok(true) => {}
            Ok(false) => warn!(from = %from, to = %to, "cluster was not in the expected state"),
            Err(err) => error!(error = %err, "cannot record the cluster's state"),
        }
        workflow.status = status;
        if let Err(err) = ctx.store.save_progress(Progress {
            workflow,
            cluster: None,
            nodes: &[],
        }) {
            error!(error = %err, "cannot record the workflow's end");
        }
        let job = match (&outcome, workflow.kind) {
            (Ok(()), WorkflowKind::Create | WorkflowKind::Start) => {
                match crate::render::cluster_by_id(ctx, &cluster_id).await {
                    Ok(cluster) => ctx
                        .jobs
                        .succeed(&workflow.job_id, json!({ "kubernetescluster": cluster })),
                    Err(err) => ctx.jobs.fail(&workflow.job_id, err.code, &err.text),
                }
            }
            (Ok(()), WorkflowKind::Delete | WorkflowKind::Stop) => ctx
                .jobs
                .succeed(&workflow.job_id, json!({ "success": true })),
            (Err(reason), kind) => {
                let name = ctx
                    .store
                    .cluster(&cluster_id)
                    .ok()
                    .flatten()
                    .map(|c| c.name)
                    .unwrap_or_default();
                ctx.jobs.fail(
                    &workflow.job_id,
                    530,
                    &format!(
                        "Failed to {} Kubernetes cluster : {name}. {reason}",
                        kind.as_str()
                    ),
                )
            }
        };
        if let Err(err) = job {
            error!(error = %err, "cannot record the job's result");
        }
        match &outcome {
            Ok(()) => info!("workflow succeeded"),
            Err(reason) => warn!(%reason, "workflow failed"),
        }
    }
}

async fn run_step(kind: WorkflowKind, sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    match kind {
        WorkflowKind::Create => super::create::run(sc).await,
        WorkflowKind::Delete => super::delete::run(sc).await,
        WorkflowKind::Start | WorkflowKind::Stop => super::power::run(sc).await,
    }
}
