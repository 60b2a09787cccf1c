//! The step interface: what a step works on ([`StepCtx`]) and how it ends when it does not
//! succeed ([`StepError`]). Every step family (create, delete, power, scale, upgrade) builds on
//! this module and on the shared helpers in [`super::kube`] and [`super::vms`], never on another
//! family's file.

use std::time::Duration;

use crate::context::Context;
use crate::store::{
    ClusterRecord, NodeRecord, Progress, Step, StoreError, WorkflowParams, WorkflowRecord, now,
};

/// How long a step waits before looking again at something still on its way (a node booting,
/// a VM stopping, nodes not Ready yet).
pub const POLL_DELAY: Duration = Duration::from_secs(3);
/// How long a step waits after a transient failure (CloudStack 5xx, a lost response, a node
/// that did not answer in time) before it runs again.
pub const TRANSIENT_DELAY: Duration = Duration::from_secs(2);
/// How long a step waits after the store failed to record something.
pub const STORE_DELAY: Duration = Duration::from_secs(1);
/// The longest pause between two runs of a step, whatever it asked for.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// What a step works on: fresh copies of the cluster and its nodes, written back (in the same
/// transaction as the step's outcome) when the step ends.
pub struct StepCtx<'a> {
    /// Everything shared.
    pub ctx: &'a Context,
    /// The workflow (its id makes agent command ids deterministic).
    pub workflow: &'a WorkflowRecord,
    /// The step being run.
    pub step: Step,
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

    /// True once the workflow's deadline passed (a long step checks it between its parts).
    pub fn past_deadline(&self) -> bool {
        now() >= self.workflow.deadline
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

    /// Forgets one node right away (its VM is gone).
    ///
    /// # Errors
    /// The store failed.
    pub fn drop_node(&mut self, name: &str) -> Result<(), StoreError> {
        self.ctx.store.delete_node(&self.cluster.id, name)?;
        self.nodes.retain(|n| n.name != name);
        Ok(())
    }

    /// Shows what a long step is doing now (`progress.steps[].detail`), before it ends.
    pub fn report(&self, detail: &str) {
        let mut workflow = self.workflow.clone();
        if let Some(step) = workflow.steps.iter_mut().find(|s| s.name == self.step) {
            step.detail = detail.to_string();
            step.updated = now();
        }
        let saved = self.ctx.store.save_progress(Progress {
            workflow: &workflow,
            cluster: None,
            nodes: &[],
        });
        if let Err(err) = saved {
            tracing::warn!(error = %err, "cannot record the step's progress");
        }
    }

    /// Saves the cluster record right away.
    ///
    /// # Errors
    /// The store failed.
    pub fn save_cluster(&self) -> Result<(), StoreError> {
        self.ctx.store.update_cluster(&self.cluster)
    }

    /// A crash point inside this step, between two side effects that CloudStack cannot make
    /// in one call (see [`crate::crashpoint`]): `<operation>:<step>:<point>`, so the crash
    /// matrix kills each operation's step there once.
    pub fn crash_point(&self, point: &str) {
        crate::crashpoint::hit(&format!(
            "{}:{}:{point}",
            operation_label(self.workflow),
            self.step
        ));
    }
}

/// The operation's name in crash points and logs: the kind, and for a scale what it does (a
/// scale up and a scale down run different steps for real).
pub fn operation_label(workflow: &WorkflowRecord) -> &'static str {
    match &workflow.params {
        WorkflowParams::Scale(p) if !p.remove.is_empty() => "scale-down",
        WorkflowParams::Scale(p) if p.size.is_some() => "scale-up",
        WorkflowParams::Scale(_) => "scale-offering",
        WorkflowParams::None | WorkflowParams::Upgrade(_) => workflow.kind.as_str(),
    }
}

/// How a step ended when it did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepError {
    /// Not yet (a node still booting, a transient CloudStack error): run the step again after
    /// the delay, until the workflow's deadline.
    Retry {
        /// What is awaited or what failed.
        reason: String,
        /// When to look again.
        after: Duration,
    },
    /// Failed for good; the workflow rolls back what the kind undoes and fails with this reason.
    Fail(String),
}

impl StepError {
    /// Something still on its way: look again after [`POLL_DELAY`].
    pub fn not_yet(reason: impl Into<String>) -> Self {
        StepError::Retry {
            reason: reason.into(),
            after: POLL_DELAY,
        }
    }

    /// A transient failure: run again after [`TRANSIENT_DELAY`].
    pub fn transient(reason: impl Into<String>) -> Self {
        StepError::Retry {
            reason: reason.into(),
            after: TRANSIENT_DELAY,
        }
    }

    /// A failure for good.
    pub fn fail(reason: impl Into<String>) -> Self {
        StepError::Fail(reason.into())
    }
}

impl From<crate::cloudstack::CloudStackError> for StepError {
    fn from(err: crate::cloudstack::CloudStackError) -> Self {
        let text = crate::error_chain(&err);
        if err.is_transient() {
            StepError::transient(text)
        } else {
            StepError::Fail(text)
        }
    }
}

impl From<StoreError> for StepError {
    fn from(err: StoreError) -> Self {
        StepError::Retry {
            reason: crate::error_chain(&err),
            after: STORE_DELAY,
        }
    }
}

impl From<crate::agents::HubError> for StepError {
    fn from(err: crate::agents::HubError) -> Self {
        use crate::agents::HubError;
        let text = crate::error_chain(&err);
        match err {
            HubError::Failed { .. } => StepError::Fail(text),
            _ => StepError::transient(text),
        }
    }
}
