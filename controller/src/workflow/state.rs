//! The CKS cluster state machine (cks-reference §3.9), as one pure transition function.
//!
//! The controller keeps CKS's public states and events so clients see what they know, but
//! unlike CKS every transient state has a way out: workflows are durable and resumed after a
//! restart, so Starting/Scaling/Upgrading/Stopping always end in a stable state.

use crate::store::ClusterState;

/// What happened to a cluster (CKS's `KubernetesCluster.Event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Start (or create) requested.
    StartRequested,
    /// Stop requested.
    StopRequested,
    /// Delete requested.
    DestroyRequested,
    /// Alert cluster being reconciled.
    RecoveryRequested,
    /// Autoscaling change.
    AutoscaleRequested,
    /// Scale up (or offering change).
    ScaleUpRequested,
    /// Scale down.
    ScaleDownRequested,
    /// Upgrade requested.
    UpgradeRequested,
    /// The operation finished as asked.
    OperationSucceeded,
    /// The operation failed; the cluster exists but is not as desired.
    OperationFailed,
    /// Creation failed.
    CreateFailed,
    /// The reconciler found VMs down or nodes not Ready.
    FaultsDetected,
}

/// A transition that CKS's table does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no transition from {state} on {event:?}")]
pub struct IllegalTransition {
    /// Current state.
    pub state: ClusterState,
    /// The event.
    pub event: Event,
}

/// The state after `event` in `state`.
///
/// # Errors
/// [`IllegalTransition`] for pairs CKS does not allow.
pub fn transition(state: ClusterState, event: Event) -> Result<ClusterState, IllegalTransition> {
    use ClusterState as S;
    use Event as E;
    let next = match (state, event) {
        (S::Created | S::Stopped, E::StartRequested) => S::Starting,
        (S::Starting, E::OperationSucceeded) => S::Running,
        (S::Starting, E::OperationFailed) => S::Alert,
        (S::Starting, E::CreateFailed) => S::Error,
        (S::Starting | S::Running | S::Alert, E::StopRequested) => S::Stopping,
        (S::Stopping, E::OperationSucceeded) => S::Stopped,
        (S::Stopping, E::OperationFailed) => S::Alert,
        (S::Stopped, E::OperationSucceeded) => S::Stopped,
        (S::Running, E::OperationSucceeded) => S::Running,
        (S::Running, E::FaultsDetected) => S::Alert,
        (S::Running, E::AutoscaleRequested | E::ScaleUpRequested | E::ScaleDownRequested) => {
            S::Scaling
        }
        (S::Stopped, E::ScaleUpRequested) => S::ScalingStoppedCluster,
        (S::Scaling, E::OperationSucceeded) => S::Running,
        (S::Scaling, E::OperationFailed) => S::Alert,
        (S::ScalingStoppedCluster, E::OperationSucceeded) => S::Stopped,
        (S::ScalingStoppedCluster, E::OperationFailed) => S::Alert,
        (S::Running, E::UpgradeRequested) => S::Upgrading,
        (S::Upgrading, E::OperationSucceeded) => S::Running,
        (S::Upgrading, E::OperationFailed) => S::Alert,
        (S::Alert, E::OperationSucceeded) => S::Running,
        (S::Alert, E::RecoveryRequested) => S::Recovering,
        (S::Recovering, E::OperationSucceeded) => S::Running,
        (S::Recovering, E::OperationFailed) => S::Alert,
        (S::Running | S::Stopped | S::Alert | S::Error, E::DestroyRequested) => S::Destroying,
        // A delete interrupted (controller restart, a CloudStack error) may be asked again.
        (S::Destroying, E::DestroyRequested) => S::Destroying,
        (S::Destroying, E::OperationSucceeded) => S::Destroyed,
        (state, event) => return Err(IllegalTransition { state, event }),
    };
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_create_path_and_its_failures_follow_cks() {
        use ClusterState as S;
        assert_eq!(
            transition(S::Created, Event::StartRequested),
            Ok(S::Starting)
        );
        assert_eq!(
            transition(S::Starting, Event::OperationSucceeded),
            Ok(S::Running)
        );
        assert_eq!(transition(S::Starting, Event::CreateFailed), Ok(S::Error));
        assert_eq!(
            transition(S::Starting, Event::OperationFailed),
            Ok(S::Alert)
        );
    }

    #[test]
    fn delete_is_allowed_only_from_stable_states() {
        use ClusterState as S;
        for state in [S::Running, S::Stopped, S::Alert, S::Error, S::Destroying] {
            assert_eq!(
                transition(state, Event::DestroyRequested),
                Ok(S::Destroying),
                "{state}"
            );
        }
        for state in [
            S::Created,
            S::Starting,
            S::Scaling,
            S::Upgrading,
            S::Stopping,
        ] {
            assert!(
                transition(state, Event::DestroyRequested).is_err(),
                "{state}"
            );
        }
    }

    #[test]
    fn unknown_pairs_are_illegal() {
        assert_eq!(
            transition(ClusterState::Destroyed, Event::StartRequested),
            Err(IllegalTransition {
                state: ClusterState::Destroyed,
                event: Event::StartRequested
            })
        );
    }
}
