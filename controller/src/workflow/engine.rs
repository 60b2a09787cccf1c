//! The workflow engine: the one owner of every cluster operation, from the request to its
//! result.
//!
//! * [`Engine::start`] asks the transition table ([`super::state::admit`]) whether the operation
//!   may begin, then records the cluster's new state, the job and the workflow in **one**
//!   transaction, and runs the workflow in the background.
//! * The workflow runs its kind's steps in order, committing each step's start and outcome (with
//!   the records the step changed) before going on; a step that asks to be retried runs again
//!   after its delay, until the workflow's deadline. A step that fails for good sets the
//!   workflow's failure and the kind's rollback steps run.
//! * [`Engine::finish`](Engine) records the end state, the job's result and the workflow's end in
//!   **one** transaction.
//! * [`Engine::resume_all`] (at start-up) resumes every running workflow from its first
//!   unfinished step, and moves any cluster left in a transient state without a workflow to its
//!   failure state with the reason, so nothing stays Starting, Scaling or Upgrading.
//! * A delete accepted while another operation runs cancels it: the other workflow stops at
//!   once (as if the controller had crashed there, which every step is written to survive) and
//!   the delete, which finds whatever exists, runs after it.
//!
//! The engine does not shape API answers: a finished job's result comes from the
//! [`JobResults`] the API layer gives it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

use super::state::{self, Admission, Event};
use super::step::{MAX_RETRY_DELAY, STORE_DELAY, StepCtx, StepError, operation_label};
use crate::cloudstack::Caller;
use crate::context::Context;
use crate::crashpoint;
use crate::jobs::{self, JobOutcome, JobSpec};
use crate::settings::{SCALE_TIMEOUT, START_TIMEOUT, UPGRADE_TIMEOUT};
use crate::store::{
    Begin, BeginCluster, ClusterRecord, ClusterState, Finish, NodeRecord, Progress, Step,
    StepStatus, StoreError, WorkflowKind, WorkflowParams, WorkflowRecord, WorkflowStatus, now,
};

/// How long the rollback of a failed operation may take once it starts.
const ROLLBACK_BUDGET: Duration = Duration::from_secs(30 * 60);
/// The error code of a failed operation's job (CloudStack's `INTERNAL_ERROR`, as CKS's jobs).
const FAILED_JOB_CODE: u16 = 530;

/// A boxed future (the [`JobResults`] trait stays object-safe).
pub type ResultFuture<'a> = Pin<Box<dyn Future<Output = Value> + Send + 'a>>;

/// What a finished operation's job reports. The API layer implements it: the engine knows no
/// response shapes.
pub trait JobResults: Send + Sync + 'static {
    /// The `jobresult` of a successful operation of `kind` on `cluster` (in its end state).
    fn succeeded<'a>(&'a self, kind: WorkflowKind, cluster: &'a ClusterRecord) -> ResultFuture<'a>;

    /// The `errortext` of a failed operation of `kind` on `cluster`.
    fn failed(&self, kind: WorkflowKind, cluster: &ClusterRecord, reason: &str) -> String;
}

/// What an operation is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    /// What it does.
    pub kind: WorkflowKind,
    /// Its parameters (scale, upgrade).
    pub params: WorkflowParams,
}

impl Operation {
    /// An operation without parameters (create, start, stop, delete).
    pub fn plain(kind: WorkflowKind) -> Self {
        Operation {
            kind,
            params: WorkflowParams::None,
        }
    }

    fn removes_nodes(&self) -> bool {
        matches!(&self.params, WorkflowParams::Scale(p) if !p.remove.is_empty())
    }
}

/// The cluster an operation is for.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A cluster recorded with its create, with its sealed secrets.
    New(&'a ClusterRecord, &'a [(&'a str, Vec<u8>)]),
    /// A cluster that exists.
    Existing(&'a ClusterRecord),
}

/// An operation could not begin.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The transition table does not allow it in the cluster's state.
    #[error("not allowed in state {state}")]
    Refused {
        /// The cluster's state.
        state: ClusterState,
    },
    /// The cluster changed state between the caller's look and the commit (another request
    /// won); asking again gives the answer for the new state.
    #[error("the cluster changed state meanwhile")]
    Changed,
    /// The store failed; nothing was recorded.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs workflows in the background. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Context,
    results: Arc<dyn JobResults>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// The cancel token of each workflow running in this process.
    running: Mutex<HashMap<String, CancellationToken>>,
    /// One lock per cluster: a workflow holds it while it runs, so a delete that cancelled an
    /// operation starts only once that operation's task has stopped.
    clusters: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The job of a kind: its API command and CKS's Java class (CloudStack's `cmd` field).
fn job_spec(kind: WorkflowKind) -> (&'static str, &'static str) {
    match kind {
        WorkflowKind::Create => (
            "createKubernetesCluster",
            "org.apache.cloudstack.api.command.user.kubernetes.cluster.CreateKubernetesClusterCmd",
        ),
        WorkflowKind::Start => (
            "startKubernetesCluster",
            "org.apache.cloudstack.api.command.user.kubernetes.cluster.StartKubernetesClusterCmd",
        ),
        WorkflowKind::Stop => (
            "stopKubernetesCluster",
            "org.apache.cloudstack.api.command.user.kubernetes.cluster.StopKubernetesClusterCmd",
        ),
        WorkflowKind::Delete => (
            "deleteKubernetesCluster",
            "org.apache.cloudstack.api.command.user.kubernetes.cluster.DeleteKubernetesClusterCmd",
        ),
        WorkflowKind::Scale => (
            "scaleKubernetesCluster",
            "org.apache.cloudstack.api.command.user.kubernetes.cluster.ScaleKubernetesClusterCmd",
        ),
        WorkflowKind::Upgrade => (
            "upgradeKubernetesCluster",
            "org.apache.cloudstack.api.command.user.kubernetes.cluster.UpgradeKubernetesClusterCmd",
        ),
    }
}

/// True when a running workflow of kind `running` is what a request for `asked` waits for (a
/// start asked while the cluster is being created waits for the create).
fn same_operation(running: WorkflowKind, asked: WorkflowKind) -> bool {
    running == asked || (running == WorkflowKind::Create && asked == WorkflowKind::Start)
}

/// True when two requests of the same kind ask for the same thing: a scale by what was sent
/// (its plan changes as it runs), an upgrade by its target version.
fn same_request(running: &WorkflowParams, asked: &WorkflowParams) -> bool {
    match (running, asked) {
        (WorkflowParams::Scale(a), WorkflowParams::Scale(b)) => a.asked == b.asked,
        (WorkflowParams::Upgrade(a), WorkflowParams::Upgrade(b)) => a.version_id == b.version_id,
        (a, b) => a == b,
    }
}

fn timeout_setting(kind: WorkflowKind) -> &'static str {
    match kind {
        WorkflowKind::Scale => SCALE_TIMEOUT,
        WorkflowKind::Upgrade => UPGRADE_TIMEOUT,
        // CKS bounds create and start by the start timeout and stop and delete by nothing;
        // here everything ends, so they take the start timeout too.
        WorkflowKind::Create | WorkflowKind::Start | WorkflowKind::Stop | WorkflowKind::Delete => {
            START_TIMEOUT
        }
    }
}

/// Runs the step `sc.step` of a workflow of `kind`: the one place that knows which family
/// implements which step.
async fn run_step(kind: WorkflowKind, sc: &mut StepCtx<'_>) -> Result<String, StepError> {
    match kind {
        WorkflowKind::Create => super::create::run(sc).await,
        WorkflowKind::Delete => super::delete::run(sc).await,
        WorkflowKind::Start | WorkflowKind::Stop => super::power::run(sc).await,
        WorkflowKind::Scale => super::scale::run(sc).await,
        WorkflowKind::Upgrade => super::upgrade::run(sc).await,
    }
}

/// A crash point of the operation `workflow` at `point` (see [`crashpoint`]).
fn crash(workflow: &WorkflowRecord, point: &str) {
    crashpoint::hit(&format!("{}:{point}", operation_label(workflow)));
}

// === impl Engine ===

impl Engine {
    /// An engine over `ctx`, reporting finished jobs with `results`; its tasks stop at once when
    /// `shutdown` fires, and resume at the next start.
    pub fn new(ctx: Context, results: Arc<dyn JobResults>, shutdown: CancellationToken) -> Self {
        Engine {
            inner: Arc::new(Inner {
                ctx,
                results,
                tracker: TaskTracker::new(),
                shutdown,
                running: Mutex::new(HashMap::new()),
                clusters: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn ctx(&self) -> &Context {
        &self.inner.ctx
    }

    /// Begins `operation` on `target` for `caller`, as the transition table allows; returns
    /// the job that reports it: a new one, the running operation's own when the same operation
    /// is under way, or one that succeeded at once when the cluster already is where it was
    /// asked to go.
    ///
    /// # Errors
    /// [`StartError::Refused`] when the table does not allow it; [`StartError::Changed`] when
    /// the cluster moved meanwhile; store failures (nothing recorded).
    pub async fn start(
        &self,
        caller: &Caller,
        target: Target<'_>,
        operation: Operation,
    ) -> Result<String, StartError> {
        let ctx = self.ctx();
        let kind = operation.kind;
        let cluster = match target {
            Target::New(cluster, _) | Target::Existing(cluster) => cluster,
        };
        let (command, cmd) = job_spec(kind);
        let spec = JobSpec {
            command,
            cmd,
            instance_type: "KubernetesCluster",
            instance_id: &cluster.id,
        };
        let during = match state::admit(cluster.state, kind, operation.removes_nodes()) {
            Admission::Refused => {
                return Err(StartError::Refused {
                    state: cluster.state,
                });
            }
            Admission::UnderWay => {
                // Asking again for what runs answers with its job; a scale or upgrade that asks
                // for something else than the one under way is refused, as CKS refuses it.
                return match ctx.store.latest_workflow(&cluster.id)? {
                    Some(w)
                        if w.status == WorkflowStatus::Running
                            && same_operation(w.kind, kind)
                            && (w.kind != kind || same_request(&w.params, &operation.params)) =>
                    {
                        Ok(w.job_id)
                    }
                    _ => Err(StartError::Refused {
                        state: cluster.state,
                    }),
                };
            }
            Admission::AlreadyThere => {
                // Nothing to do, nothing recorded: the job answering it lives in memory only.
                let result = self.inner.results.succeeded(kind, cluster).await;
                return Ok(ctx.jobs.instant(caller, &spec, result).id);
            }
            Admission::Begin(during) => during,
        };
        let job = jobs::pending(caller, &spec);
        let timeout = ctx.settings.seconds(timeout_setting(kind));
        let created = now();
        let workflow = WorkflowRecord {
            id: uuid::Uuid::new_v4().to_string(),
            kind,
            cluster_id: cluster.id.clone(),
            job_id: job.id.clone(),
            status: WorkflowStatus::Running,
            steps: Vec::new(),
            deadline: created.saturating_add(i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX)),
            created,
            params: operation.params,
            failure: None,
            rules_tagged: true,
        };
        // A delete stops whatever runs on the cluster; its job ends failed, saying why.
        let replaced = match kind {
            WorkflowKind::Delete => ctx
                .store
                .latest_workflow(&cluster.id)?
                .filter(|w| w.status == WorkflowStatus::Running),
            _ => None,
        };
        let cancelled_job = match &replaced {
            Some(old) => ctx.store.job(&old.job_id)?.map(|job| {
                jobs::finished(
                    job,
                    JobOutcome::Failed {
                        code: FAILED_JOB_CODE,
                        text: format!(
                            "Kubernetes cluster : {} is being deleted; its {} was cancelled",
                            cluster.name,
                            old.kind.as_str()
                        ),
                    },
                )
            }),
            None => None,
        };
        // A new cluster is recorded directly in its operation's state.
        let new_cluster = ClusterRecord {
            state: during,
            ..cluster.clone()
        };
        let (begin_cluster, secrets) = match target {
            Target::New(_, secrets) => (BeginCluster::New(&new_cluster), secrets),
            Target::Existing(cluster) => (
                BeginCluster::Transition {
                    id: &cluster.id,
                    from: cluster.state,
                    to: during,
                },
                &[][..],
            ),
        };
        let begin = Begin {
            cluster: begin_cluster,
            secrets,
            job: &job,
            workflow: &workflow,
            cancels: replaced
                .as_ref()
                .zip(cancelled_job.as_ref())
                .map(|(w, j)| (w.id.as_str(), j)),
        };
        crash(&workflow, "start:before-commit");
        if !ctx.store.begin_operation(begin)? {
            return Err(StartError::Changed);
        }
        crash(&workflow, "start:after-commit");
        if let Some(old) = &replaced {
            info!(cluster = %cluster.id, cancelled = old.kind.as_str(), "delete cancels the running operation");
            self.cancel(&old.id);
        }
        info!(cluster = %cluster.id, name = %cluster.name, operation = kind.as_str(), "cluster operation accepted");
        self.spawn(workflow);
        Ok(job.id)
    }

    fn cancel(&self, workflow_id: &str) {
        let running = self
            .inner
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(token) = running.get(workflow_id) {
            token.cancel();
        }
    }

    fn cluster_lock(&self, cluster_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner
            .clusters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(cluster_id.to_string())
            .or_default()
            .clone()
    }

    /// Starts running `workflow` in the background.
    fn spawn(&self, workflow: WorkflowRecord) {
        let engine = self.clone();
        let span = info_span!(
            "workflow",
            id = %workflow.id,
            kind = workflow.kind.as_str(),
            cluster = %workflow.cluster_id
        );
        let cancel = self.inner.shutdown.child_token();
        self.inner
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(workflow.id.clone(), cancel.clone());
        self.inner.tracker.spawn(
            async move {
                let id = workflow.id.clone();
                let lock = engine.cluster_lock(&workflow.cluster_id);
                let guard = tokio::select! {
                    biased;
                    () = cancel.cancelled() => None,
                    guard = lock.lock_owned() => Some(guard),
                };
                if let Some(_guard) = guard {
                    engine.drive(workflow, &cancel).await;
                }
                engine
                    .inner
                    .running
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id);
            }
            .instrument(span),
        );
    }

    /// Resumes every workflow the store says is running, and ends the transient state of any
    /// cluster left without one (at start-up). Returns how many workflows resumed.
    ///
    /// # Errors
    /// The store failed.
    pub fn resume_all(&self) -> Result<usize, StoreError> {
        let store = &self.ctx().store;
        let running = store.running_workflows()?;
        for workflow in &running {
            info!(
                workflow = %workflow.id,
                kind = workflow.kind.as_str(),
                cluster = %workflow.cluster_id,
                next = workflow.next_step().map_or("finish", Step::as_str),
                "resuming workflow"
            );
        }
        for cluster in store.clusters()? {
            if running.iter().any(|w| w.cluster_id == cluster.id) {
                continue;
            }
            let last = store.latest_workflow(&cluster.id)?.map(|w| w.kind);
            if let Some((to, reason)) = stranded(cluster.state, last) {
                warn!(cluster = %cluster.id, from = %cluster.state, to = %to, reason, "cluster left in a transient state without an operation");
                store.set_cluster_state(&cluster.id, cluster.state, to, Some(reason))?;
            }
        }
        let count = running.len();
        for workflow in running {
            self.spawn(workflow);
        }
        Ok(count)
    }

    /// Waits until every workflow task has stopped (after `shutdown` fired).
    pub async fn wait(&self) {
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }

    async fn pause(&self, cancel: &CancellationToken, delay: Duration) {
        tokio::select! {
            () = cancel.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }

    fn load(&self, cluster_id: &str) -> Result<(ClusterRecord, Vec<NodeRecord>), StoreError> {
        let store = &self.ctx().store;
        let cluster = store
            .cluster(cluster_id)?
            .ok_or_else(|| StoreError::NotFound {
                kind: "cluster",
                id: cluster_id.to_string(),
            })?;
        let nodes = store.nodes(cluster_id)?;
        Ok((cluster, nodes))
    }

    /// Writes the workflow's journal; false when it is no longer running (cancelled).
    fn save(
        &self,
        workflow: &WorkflowRecord,
        cluster: Option<&ClusterRecord>,
        nodes: &[NodeRecord],
    ) -> Result<bool, StoreError> {
        self.ctx().store.save_progress(Progress {
            workflow,
            cluster,
            nodes,
        })
    }

    async fn drive(&self, mut workflow: WorkflowRecord, cancel: &CancellationToken) {
        let kind = workflow.kind;
        loop {
            if cancel.is_cancelled() {
                info!(
                    "workflow stopped here; it resumes at the next start unless it was cancelled"
                );
                return;
            }
            let Some(step) = workflow.next_step() else {
                let outcome = match workflow.failure.clone() {
                    Some(reason) => Err(reason),
                    None => Ok(()),
                };
                self.finish(&mut workflow, outcome).await;
                return;
            };
            if now() > workflow.deadline {
                let reason = format!("timed out in step {step}");
                workflow.start_step(step);
                workflow.finish_step(step, StepStatus::Failed, "timed out");
                self.fail_step(&mut workflow, reason).await;
                if workflow.status != WorkflowStatus::Running {
                    return;
                }
                continue;
            }
            workflow.start_step(step);
            match self.save(&workflow, None, &[]) {
                Ok(true) => {}
                Ok(false) => return,
                Err(err) => {
                    error!(error = %err, "cannot record the step start; retrying");
                    self.pause(cancel, STORE_DELAY).await;
                    continue;
                }
            }
            crash(&workflow, &format!("{step}:started"));
            let (cluster, nodes) = match self.load(&workflow.cluster_id) {
                Ok(loaded) => loaded,
                Err(err) => {
                    error!(error = %err, "cannot load the cluster; retrying");
                    self.pause(cancel, STORE_DELAY).await;
                    continue;
                }
            };
            let snapshot = workflow.clone();
            // A project's cluster: its IPs, rules and tags are listed as the project's.
            let scoped = Context {
                cloud: self.ctx().cloud.for_owner(&cluster.owner),
                ..self.ctx().clone()
            };
            let mut sc = StepCtx {
                ctx: &scoped,
                workflow: &snapshot,
                step,
                cluster,
                nodes,
            };
            let result = tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    info!(%step, "workflow stopped mid-step");
                    return;
                }
                result = run_step(kind, &mut sc) => result,
            };
            match result {
                Ok(detail) => {
                    info!(%step, %detail, "step done");
                    workflow.finish_step(step, StepStatus::Done, detail);
                    match self.save(&workflow, Some(&sc.cluster), &sc.nodes) {
                        Ok(true) => crash(&workflow, &format!("{step}:done")),
                        Ok(false) => return,
                        Err(err) => {
                            // The step runs again; being idempotent, it finds its own work.
                            error!(error = %err, %step, "cannot record the step outcome");
                            workflow.finish_step(step, StepStatus::Started, "outcome not recorded");
                            self.pause(cancel, STORE_DELAY).await;
                        }
                    }
                }
                Err(StepError::Retry { reason, after }) => {
                    info!(%step, %reason, "step not finished; will run again");
                    workflow.finish_step(step, StepStatus::Started, reason);
                    if let Ok(false) = self.save(&workflow, Some(&sc.cluster), &sc.nodes) {
                        return;
                    }
                    self.pause(cancel, after.min(MAX_RETRY_DELAY)).await;
                }
                Err(StepError::Fail(reason)) => {
                    warn!(%step, %reason, "step failed");
                    workflow.finish_step(step, StepStatus::Failed, reason.clone());
                    if let Ok(false) = self.save(&workflow, Some(&sc.cluster), &sc.nodes) {
                        return;
                    }
                    self.fail_step(&mut workflow, format!("step {step} failed: {reason}"))
                        .await;
                    if workflow.status != WorkflowStatus::Running {
                        return;
                    }
                }
            }
        }
    }

    /// A step failed for good: the first failure starts the kind's rollback (with a budget of
    /// its own); a failure without a rollback, or during it, ends the workflow.
    async fn fail_step(&self, workflow: &mut WorkflowRecord, reason: String) {
        match workflow.failure.clone() {
            None if !workflow.kind.rollback_steps().is_empty() => {
                info!(%reason, "rolling back");
                workflow.failure = Some(reason);
                workflow.deadline = now()
                    .saturating_add(i64::try_from(ROLLBACK_BUDGET.as_secs()).unwrap_or(i64::MAX));
                if let Err(err) = self.save(workflow, None, &[]) {
                    // Not recorded: after a restart the step fails again and rolls back then.
                    error!(error = %err, "cannot record the failure");
                }
            }
            None => self.finish(workflow, Err(reason)).await,
            Some(first) => {
                let reason = format!("{first}; rolling back did not finish: {reason}");
                self.finish(workflow, Err(reason)).await;
            }
        }
    }

    /// Ends a workflow: the cluster's end state, the job's result and the workflow's status,
    /// in one transaction.
    async fn finish(&self, workflow: &mut WorkflowRecord, outcome: Result<(), String>) {
        let ctx = self.ctx();
        let kind = workflow.kind;
        crash(workflow, "finish:before-commit");
        let cluster = match ctx.store.cluster(&workflow.cluster_id) {
            Ok(Some(cluster)) => cluster,
            Ok(None) => {
                error!("the cluster of a running workflow is gone");
                return;
            }
            Err(err) => {
                // Still running in the store: the next start finishes it.
                error!(error = %err, "cannot read the cluster to end the workflow");
                return;
            }
        };
        let event = match &outcome {
            Ok(()) => Some(Event::OperationSucceeded),
            Err(_) => state::failure_event(kind),
        };
        let to = match event.map(|e| state::transition(cluster.state, e)) {
            None => cluster.state,
            Some(Ok(to)) => to,
            Some(Err(err)) => {
                warn!(error = %err, "the cluster is not in its operation's state; it keeps it");
                cluster.state
            }
        };
        let job = match ctx.store.job(&workflow.job_id) {
            Ok(Some(job)) => job,
            Ok(None) | Err(_) => {
                error!(job = %workflow.job_id, "cannot read the operation's job");
                return;
            }
        };
        let job_outcome = match &outcome {
            Ok(()) => {
                let mut ended = cluster.clone();
                ended.state = to;
                ended.failure = None;
                JobOutcome::Succeeded(self.inner.results.succeeded(kind, &ended).await)
            }
            Err(reason) => JobOutcome::Failed {
                code: FAILED_JOB_CODE,
                text: self.inner.results.failed(kind, &cluster, reason),
            },
        };
        workflow.status = match &outcome {
            Ok(()) => WorkflowStatus::Succeeded,
            Err(reason) => {
                // The journal keeps why it ended (the cluster's events show it), also when
                // the failure came without a rollback to set it.
                workflow.failure = Some(reason.clone());
                WorkflowStatus::Failed
            }
        };
        let finished = ctx.store.finish_operation(Finish {
            workflow,
            from: cluster.state,
            to,
            failure: outcome.as_ref().err().map(String::as_str),
            job: &jobs::finished(job, job_outcome),
        });
        match finished {
            Ok(true) => {}
            Ok(false) => {
                warn!("the workflow was cancelled before it could end");
                return;
            }
            Err(err) => {
                // Still running in the store: the next start finishes it again.
                error!(error = %err, "cannot record the workflow's end");
                workflow.status = WorkflowStatus::Running;
                return;
            }
        }
        crash(workflow, "finish:after-commit");
        match &outcome {
            Ok(()) => info!(state = %to, "workflow succeeded"),
            Err(reason) => warn!(state = %to, %reason, "workflow failed"),
        }
    }
}

/// Where a cluster found in a transient state without any workflow goes, and why (`last`: the
/// kind of its latest workflow, if any). With operations begun and ended in one transaction
/// this does not happen; it guards stores written by older versions and hand edits.
fn stranded(
    state: ClusterState,
    last: Option<WorkflowKind>,
) -> Option<(ClusterState, &'static str)> {
    use ClusterState as S;
    const WHY: &str = "interrupted: its operation was not running when the controller started";
    match state {
        // A start of a stopped cluster fails into Alert; only a create fails into Error.
        S::Starting if last == Some(WorkflowKind::Start) => Some((S::Alert, WHY)),
        S::Created | S::Starting => Some((S::Error, WHY)),
        S::Stopping | S::Scaling | S::ScalingStoppedCluster | S::Upgrading | S::Recovering => {
            Some((S::Alert, WHY))
        }
        // Deleting again resumes a delete.
        S::Destroying | S::Running | S::Stopped | S::Alert | S::Error | S::Destroyed => None,
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
