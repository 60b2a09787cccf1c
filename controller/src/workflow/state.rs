//! The CKS cluster state machine (cks-reference §3.9) as one pure transition function, and the
//! admission of operations decided by it.
//!
//! The controller keeps CKS's public states and events so clients see what they know, but
//! unlike CKS every transient state has a way out: workflows are durable and resumed after a
//! restart, so Starting/Scaling/Upgrading/Stopping always end in a stable state.
//!
//! Where we depart from CKS's table, on purpose (each pinned by a test below):
//! * a delete is accepted in every state but `Destroyed`: it stops the operation under way at
//!   once and cleans up whatever exists (CKS refuses to delete Starting, Scaling, Upgrading …
//!   clusters, which then stay wedged);
//! * a cluster in `Alert` may be scaled and upgraded (CKS refuses, so its autoscaler loops on a
//!   cluster in Alert, apache/cloudstack#11166, and a failed upgrade cannot be resumed);
//! * a cluster still `Starting` cannot be stopped: its workflow owns the VMs until it ends.

use crate::store::{ClusterState, WorkflowKind};

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

/// A transition that the table does not have.
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
/// [`IllegalTransition`] for pairs the table does not allow.
pub fn transition(state: ClusterState, event: Event) -> Result<ClusterState, IllegalTransition> {
    use ClusterState as S;
    use Event as E;
    let next = match (state, event) {
        (S::Created | S::Stopped, E::StartRequested) => S::Starting,
        (S::Starting, E::OperationSucceeded) => S::Running,
        (S::Starting, E::OperationFailed) => S::Alert,
        (S::Starting, E::CreateFailed) => S::Error,
        (S::Running | S::Alert, E::StopRequested) => S::Stopping,
        (S::Stopping, E::OperationSucceeded) => S::Stopped,
        (S::Stopping, E::OperationFailed) => S::Alert,
        (S::Stopped, E::OperationSucceeded) => S::Stopped,
        (S::Running, E::OperationSucceeded) => S::Running,
        (S::Running, E::FaultsDetected) => S::Alert,
        (
            S::Running | S::Alert,
            E::AutoscaleRequested | E::ScaleUpRequested | E::ScaleDownRequested,
        ) => S::Scaling,
        (S::Stopped, E::ScaleUpRequested) => S::ScalingStoppedCluster,
        (S::Scaling, E::OperationSucceeded) => S::Running,
        (S::Scaling, E::OperationFailed) => S::Alert,
        (S::ScalingStoppedCluster, E::OperationSucceeded) => S::Stopped,
        (S::ScalingStoppedCluster, E::OperationFailed) => S::Alert,
        (S::Running | S::Alert, E::UpgradeRequested) => S::Upgrading,
        (S::Upgrading, E::OperationSucceeded) => S::Running,
        (S::Upgrading, E::OperationFailed) => S::Alert,
        (S::Alert, E::OperationSucceeded) => S::Running,
        (S::Alert, E::RecoveryRequested) => S::Recovering,
        (S::Recovering, E::OperationSucceeded) => S::Running,
        (S::Recovering, E::OperationFailed) => S::Alert,
        (S::Destroyed, E::DestroyRequested) => {
            return Err(IllegalTransition { state, event });
        }
        // Every other state may be deleted; an interrupted delete may be asked again.
        (_, E::DestroyRequested) => S::Destroying,
        (S::Destroying, E::OperationSucceeded) => S::Destroyed,
        (state, event) => return Err(IllegalTransition { state, event }),
    };
    Ok(next)
}

/// The event that asks a cluster for an operation.
pub fn request_event(kind: WorkflowKind, scale_down: bool) -> Event {
    match kind {
        WorkflowKind::Create | WorkflowKind::Start => Event::StartRequested,
        WorkflowKind::Stop => Event::StopRequested,
        WorkflowKind::Delete => Event::DestroyRequested,
        WorkflowKind::Scale if scale_down => Event::ScaleDownRequested,
        WorkflowKind::Scale => Event::ScaleUpRequested,
        WorkflowKind::Upgrade => Event::UpgradeRequested,
    }
}

/// The event a failed operation of `kind` ends with; `None` when its state stays (a failed
/// delete stays `Destroying`, and deleting again resumes it).
pub fn failure_event(kind: WorkflowKind) -> Option<Event> {
    match kind {
        WorkflowKind::Create => Some(Event::CreateFailed),
        WorkflowKind::Delete => None,
        WorkflowKind::Start | WorkflowKind::Stop | WorkflowKind::Scale | WorkflowKind::Upgrade => {
            Some(Event::OperationFailed)
        }
    }
}

/// Whether an operation may begin on a cluster in some state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// It begins; the cluster moves to this state while it runs.
    Begin(ClusterState),
    /// The cluster already is where the operation would take it (stop a Stopped cluster): the
    /// job succeeds at once, as in CKS.
    AlreadyThere,
    /// The same operation is under way: the caller gets its job.
    UnderWay,
    /// Not allowed in this state.
    Refused,
}

/// Whether `kind` may begin on a cluster in `state`.
pub fn admit(state: ClusterState, kind: WorkflowKind, scale_down: bool) -> Admission {
    use ClusterState as S;
    use WorkflowKind as K;
    match (kind, state) {
        (K::Stop, S::Stopped) | (K::Start, S::Running) => return Admission::AlreadyThere,
        // A cluster being created is starting: asking to start it answers with the create.
        (K::Stop, S::Stopping)
        | (K::Start, S::Created | S::Starting)
        | (K::Delete, S::Destroying)
        | (K::Scale, S::Scaling | S::ScalingStoppedCluster)
        | (K::Upgrade, S::Upgrading) => return Admission::UnderWay,
        // Only a new cluster (recorded with its create) is created.
        (K::Create, S::Created) => return Admission::Begin(S::Starting),
        (K::Create, _) => return Admission::Refused,
        _ => {}
    }
    match transition(state, request_event(kind, scale_down)) {
        Ok(next) => Admission::Begin(next),
        Err(_) => Admission::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ClusterState; 13] = ClusterState::ALL;

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
    fn delete_is_accepted_in_every_state_but_destroyed() {
        for state in ALL {
            let admitted = admit(state, WorkflowKind::Delete, false);
            match state {
                ClusterState::Destroyed => assert_eq!(admitted, Admission::Refused),
                ClusterState::Destroying => assert_eq!(admitted, Admission::UnderWay),
                _ => assert_eq!(
                    admitted,
                    Admission::Begin(ClusterState::Destroying),
                    "{state}"
                ),
            }
        }
    }

    #[test]
    fn each_operation_is_admitted_where_cks_admits_it_and_our_departures_are_deliberate() {
        use Admission as A;
        use ClusterState as S;
        use WorkflowKind as K;
        type Allowed<'a> = (K, bool, &'a [(S, A)]);
        let expected: &[Allowed<'_>] = &[
            (
                K::Stop,
                false,
                &[
                    (S::Running, A::Begin(S::Stopping)),
                    (S::Alert, A::Begin(S::Stopping)),
                    (S::Stopped, A::AlreadyThere),
                    (S::Stopping, A::UnderWay),
                ],
            ),
            (
                K::Start,
                false,
                &[
                    (S::Stopped, A::Begin(S::Starting)),
                    (S::Running, A::AlreadyThere),
                    (S::Starting, A::UnderWay),
                    (S::Created, A::UnderWay),
                ],
            ),
            (
                K::Scale,
                false,
                &[
                    (S::Running, A::Begin(S::Scaling)),
                    // Departure: CKS refuses Alert (apache/cloudstack#11166).
                    (S::Alert, A::Begin(S::Scaling)),
                    (S::Stopped, A::Begin(S::ScalingStoppedCluster)),
                    (S::Scaling, A::UnderWay),
                    (S::ScalingStoppedCluster, A::UnderWay),
                ],
            ),
            (
                K::Scale,
                true,
                &[
                    (S::Running, A::Begin(S::Scaling)),
                    (S::Alert, A::Begin(S::Scaling)),
                    (S::Scaling, A::UnderWay),
                    (S::ScalingStoppedCluster, A::UnderWay),
                ],
            ),
            (
                K::Upgrade,
                false,
                &[
                    (S::Running, A::Begin(S::Upgrading)),
                    // Departure: a failed upgrade (Alert) is resumed by upgrading again.
                    (S::Alert, A::Begin(S::Upgrading)),
                    (S::Upgrading, A::UnderWay),
                ],
            ),
            (K::Create, false, &[(S::Created, A::Begin(S::Starting))]),
        ];
        for (kind, down, allowed) in expected {
            for state in ALL {
                let want = allowed
                    .iter()
                    .find(|(s, _)| *s == state)
                    .map_or(A::Refused, |(_, a)| *a);
                assert_eq!(
                    admit(state, *kind, *down),
                    want,
                    "{kind:?} (down: {down}) in {state}"
                );
            }
        }
    }

    #[test]
    fn every_operation_ends_in_a_stable_state() {
        use ClusterState as S;
        for kind in [
            WorkflowKind::Create,
            WorkflowKind::Start,
            WorkflowKind::Stop,
            WorkflowKind::Scale,
            WorkflowKind::Upgrade,
            WorkflowKind::Delete,
        ] {
            for state in ALL {
                let Admission::Begin(during) = admit(state, kind, false) else {
                    continue;
                };
                let succeeded = transition(during, Event::OperationSucceeded)
                    .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
                assert!(
                    matches!(succeeded, S::Running | S::Stopped | S::Destroyed),
                    "{kind:?} from {state} succeeds into {succeeded}"
                );
                if let Some(event) = failure_event(kind) {
                    let failed =
                        transition(during, event).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
                    assert!(
                        matches!(failed, S::Alert | S::Error),
                        "{kind:?} from {state} fails into {failed}"
                    );
                }
            }
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
