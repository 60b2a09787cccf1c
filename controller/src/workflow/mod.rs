//! Durable workflows: each cluster operation is a fixed list of named steps; the engine runs them
//! in order and commits each step's start and outcome to the store (with the records the step
//! changed) before going on.
//!
//! Deciding is pure ([`next_step`]: the first step of the kind's list that is not done), acting
//! is the engine's ([`engine`]). Every step is idempotent: it first looks for what an earlier,
//! interrupted run of itself made (VMs by their pre-chosen names and tags, rules on the cluster's
//! public IP, agent commands by deterministic ids that the agent journals), and only makes what
//! is missing. So a controller killed at any point and started again resumes every running
//! workflow from its first unfinished step, and nothing is made twice.
//!
//! ```text
//!  create:  network → public-ip → firewall → plan-nodes → deploy-nodes → load-balancer
//!           → init-control-plane → join-control-planes → join-workers → apply-manifests
//!           → wait-ready → kubeconfig → detach-iso          (Created → Starting → Running | Error)
//!  delete:  delete-vms → delete-rules → delete-network → forget   (… → Destroying → Destroyed)
//!  stop:    stop-vms                                  (… → Stopping → Stopped | Alert)
//!  start:   start-vms → wait-ready                     (Stopped → Starting → Running | Alert)
//! ```

pub mod create;
pub mod delete;
pub mod engine;
pub mod power;
pub mod state;

use std::time::Duration;

use crate::store::{ClusterState, WorkflowKind, WorkflowRecord};

pub use engine::Engine;

/// The steps of a kind, in order.
pub fn steps(kind: WorkflowKind) -> &'static [&'static str] {
    match kind {
        WorkflowKind::Create => create::STEPS,
        WorkflowKind::Delete => delete::STEPS,
        WorkflowKind::Start => power::START_STEPS,
        WorkflowKind::Stop => power::STOP_STEPS,
    }
}

/// The cluster's state while a workflow of a kind runs, and once it succeeded or failed
/// (CKS's transitions on `OperationSucceeded`, `OperationFailed` and `CreateFailed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindStates {
    /// While it runs.
    pub during: ClusterState,
    /// After it succeeded.
    pub succeeded: ClusterState,
    /// After it failed.
    pub failed: ClusterState,
}

/// The states of a kind's workflow: the state it runs in is the kind's; where it ends comes
/// from the CKS transition table ([`state::transition`]).
pub fn states(kind: WorkflowKind) -> KindStates {
    use state::Event;
    let (during, failure) = match kind {
        WorkflowKind::Create => (ClusterState::Starting, Some(Event::CreateFailed)),
        // A failed delete stays Destroying: deleting again resumes the clean-up.
        WorkflowKind::Delete => (ClusterState::Destroying, None),
        WorkflowKind::Start => (ClusterState::Starting, Some(Event::OperationFailed)),
        WorkflowKind::Stop => (ClusterState::Stopping, Some(Event::OperationFailed)),
    };
    // Every pair used here is in the table (the test below pins each kind's states).
    let after = |event| state::transition(during, event).unwrap_or(during);
    KindStates {
        during,
        succeeded: after(Event::OperationSucceeded),
        failed: failure.map_or(during, after),
    }
}

/// The next step to run: the first one of the kind's list that is not done.
pub fn next_step(workflow: &WorkflowRecord) -> Option<&'static str> {
    steps(workflow.kind)
        .iter()
        .copied()
        .find(|step| !workflow.is_done(step))
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
    /// Failed for good; the workflow fails with this reason.
    Fail(String),
}

impl StepError {
    /// A retry after `after`.
    pub fn retry(reason: impl Into<String>, after: Duration) -> Self {
        StepError::Retry {
            reason: reason.into(),
            after,
        }
    }

    /// A failure.
    pub fn fail(reason: impl Into<String>) -> Self {
        StepError::Fail(reason.into())
    }
}

impl From<crate::cloudstack::CloudStackError> for StepError {
    fn from(err: crate::cloudstack::CloudStackError) -> Self {
        let text = crate::error_chain(&err);
        if err.is_transient() {
            StepError::retry(text, Duration::from_secs(2))
        } else {
            StepError::Fail(text)
        }
    }
}

impl From<crate::store::StoreError> for StepError {
    fn from(err: crate::store::StoreError) -> Self {
        StepError::retry(crate::error_chain(&err), Duration::from_secs(1))
    }
}

impl From<crate::agents::HubError> for StepError {
    fn from(err: crate::agents::HubError) -> Self {
        use crate::agents::HubError;
        let text = crate::error_chain(&err);
        match err {
            HubError::Failed { .. } => StepError::Fail(text),
            _ => StepError::retry(text, Duration::from_secs(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_runs_and_ends_in_the_states_cks_gives_it() {
        use ClusterState as S;
        let expected = [
            (WorkflowKind::Create, S::Starting, S::Running, S::Error),
            (
                WorkflowKind::Delete,
                S::Destroying,
                S::Destroyed,
                S::Destroying,
            ),
            (WorkflowKind::Start, S::Starting, S::Running, S::Alert),
            (WorkflowKind::Stop, S::Stopping, S::Stopped, S::Alert),
        ];
        for (kind, during, succeeded, failed) in expected {
            assert_eq!(
                states(kind),
                KindStates {
                    during,
                    succeeded,
                    failed
                },
                "{kind:?}"
            );
        }
    }
    use crate::store::{StepStatus, WorkflowStatus};

    fn workflow() -> WorkflowRecord {
        WorkflowRecord {
            id: "w".into(),
            kind: WorkflowKind::Create,
            cluster_id: "c".into(),
            job_id: "j".into(),
            status: WorkflowStatus::Running,
            steps: Vec::new(),
            deadline: i64::MAX,
            created: 0,
        }
    }

    #[test]
    fn the_next_step_is_the_first_not_done_one() {
        let mut wf = workflow();
        assert_eq!(next_step(&wf), Some("network"));
        wf.start_step("network");
        // Started but not done: an interrupted step runs again.
        assert_eq!(next_step(&wf), Some("network"));
        wf.finish_step("network", StepStatus::Done, "");
        assert_eq!(next_step(&wf), Some("public-ip"));
        for step in create::STEPS {
            wf.start_step(step);
            wf.finish_step(step, StepStatus::Done, "");
        }
        assert_eq!(next_step(&wf), None);
    }
}
