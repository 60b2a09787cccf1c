//! The engine's retry, deadline, rollback, cancellation and resume logic, with scripted agents
//! and paused time: no CloudStack, no nodes, no root. Each workflow here starts at a step that
//! only talks to agents (the steps before it recorded as done, as a resumed workflow finds them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cks_proto::agent::command::Kind;
use cks_proto::agent::command_result::Payload;
use cks_proto::agent::{
    ClusterHealth, Command, CommandResult, KubeNode, NodesStatus, SystemPod, UpgradeReport,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::agents::{AgentFuture, Agents, HubError, NodeKey, NodeStatus};
use crate::cloudstack::{ClientConfig, CloudStackClient};
use crate::pki::NodeIdentity;
use crate::settings::UPGRADE_RETRIES;
use crate::store::{JobStatus, NodeRole, SqliteStore, StepRecord, Store, UpgradeParams};

/// How the scripted agents answer.
#[derive(Default)]
struct Script {
    /// GetNodes answers "not Ready" this many times before every node is Ready.
    not_ready_polls: u32,
    /// Nodes whose upgrade fails, every attempt.
    failing_upgrades: Vec<String>,
    /// The version nodes report once upgraded.
    upgraded_to: String,
}

/// Agents that answer from a script and journal results by command id, as real agents do:
/// a command id seen before is answered from the journal, not run again.
#[derive(Default)]
struct ScriptedAgents {
    script: Mutex<Script>,
    journal: Mutex<HashMap<String, CommandResult>>,
    /// Every command actually run, in order: (node, command id).
    ran: Mutex<Vec<(String, String)>>,
    polls: Mutex<u32>,
    upgraded: Mutex<Vec<String>>,
}

impl ScriptedAgents {
    fn ran(&self) -> Vec<(String, String)> {
        self.ran.lock().unwrap().clone()
    }

    fn run(&self, node: &NodeKey, command: &Command) -> CommandResult {
        let mut result = CommandResult {
            command_id: command.command_id.clone(),
            ok: true,
            ..CommandResult::default()
        };
        let script = self.script.lock().unwrap();
        let nodes = |ready: bool| -> Vec<KubeNode> {
            ["n0", "n1", "n2"]
                .iter()
                .map(|name| KubeNode {
                    name: (*name).to_string(),
                    ready,
                    kubelet_version: if self.upgraded.lock().unwrap().contains(&(*name).to_string())
                    {
                        script.upgraded_to.clone()
                    } else {
                        "v1.33.1".to_string()
                    },
                    roles: Vec::new(),
                })
                .collect()
        };
        match &command.kind {
            Some(Kind::GetNodes(_)) => {
                let mut polls = self.polls.lock().unwrap();
                *polls += 1;
                let ready = *polls > script.not_ready_polls;
                result.payload = Some(Payload::Nodes(NodesStatus {
                    nodes: nodes(ready),
                }));
            }
            Some(Kind::Upgrade(upgrade)) => {
                if script.failing_upgrades.contains(&node.node_name) {
                    result.ok = false;
                    result.error = "kubeadm upgrade node failed with exit code 1".into();
                } else {
                    self.upgraded.lock().unwrap().push(node.node_name.clone());
                    result.payload = Some(Payload::Upgrade(UpgradeReport {
                        kubelet_version: upgrade.target_version.clone(),
                    }));
                }
            }
            Some(Kind::CheckHealth(_)) => {
                result.payload = Some(Payload::Health(ClusterHealth {
                    nodes: nodes(true),
                    system_pods: vec![SystemPod {
                        name: "kube-apiserver-n0".into(),
                        node_name: "n0".into(),
                        phase: "Running".into(),
                        ready: true,
                    }],
                }));
            }
            _ => {}
        }
        result
    }
}

impl Agents for ScriptedAgents {
    fn send_command<'a>(
        &'a self,
        node: &'a NodeKey,
        command: Command,
        _timeout: Duration,
    ) -> AgentFuture<'a, Result<CommandResult, HubError>> {
        Box::pin(async move {
            let known = self
                .journal
                .lock()
                .unwrap()
                .get(&command.command_id)
                .cloned();
            let result = match known {
                Some(result) => result,
                None => {
                    self.ran
                        .lock()
                        .unwrap()
                        .push((node.node_name.clone(), command.command_id.clone()));
                    let result = self.run(node, &command);
                    self.journal
                        .lock()
                        .unwrap()
                        .insert(command.command_id.clone(), result.clone());
                    result
                }
            };
            if result.ok {
                Ok(result)
            } else {
                Err(HubError::Failed {
                    node: node.to_string(),
                    command_id: command.command_id,
                    error: result.error,
                })
            }
        })
    }

    fn status(&self, _node: &NodeKey) -> NodeStatus {
        NodeStatus::default()
    }

    fn issue_token(&self, _identity: NodeIdentity, _ttl: Duration) -> String {
        "token".into()
    }

    fn ca_fingerprint(&self) -> String {
        "fingerprint".into()
    }

    fn forget_node(&self, _node: &NodeKey) {}

    fn forget_cluster(&self, _cluster_id: &str) {}
}

/// Job results that show the state the cluster ended in.
struct StateResults;

impl JobResults for StateResults {
    fn succeeded<'a>(
        &'a self,
        _kind: WorkflowKind,
        cluster: &'a ClusterRecord,
    ) -> ResultFuture<'a> {
        Box::pin(async move { json!({ "state": cluster.state.as_str() }) })
    }

    fn failed(&self, kind: WorkflowKind, cluster: &ClusterRecord, reason: &str) -> String {
        format!("{} of {} failed: {reason}", kind.as_str(), cluster.name)
    }
}

struct Fixture {
    ctx: Context,
    agents: Arc<ScriptedAgents>,
}

fn fixture(script: Script) -> Fixture {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let agents = Arc::new(ScriptedAgents {
        script: Mutex::new(script),
        ..ScriptedAgents::default()
    });
    // Nothing listens on port 9: the steps under test never need CloudStack, and a step that
    // did would fail loudly.
    let client =
        CloudStackClient::new(ClientConfig::new("http://127.0.0.1:9/client/api", "k", "s"))
            .unwrap();
    let ctx = crate::testkit::context(store, client, agents.clone());
    Fixture { ctx, agents }
}

fn cluster(state: ClusterState) -> ClusterRecord {
    ClusterRecord::for_tests("c1", state, 1, 2)
}

fn caller() -> crate::cloudstack::Caller {
    crate::cloudstack::Caller::for_tests()
}

/// A cluster of n0 (control) + n1, n2 in `state`, with a workflow of `kind` running whose
/// steps before `from` are done, and its pending job.
fn running(
    f: &Fixture,
    state: ClusterState,
    kind: WorkflowKind,
    from: Step,
    params: WorkflowParams,
) -> WorkflowRecord {
    let store = &f.ctx.store;
    store.insert_cluster(&cluster(state)).unwrap();
    for (i, name) in ["n0", "n1", "n2"].iter().enumerate() {
        store
            .put_node(&NodeRecord {
                cluster_id: "c1".into(),
                name: (*name).into(),
                role: if i == 0 {
                    NodeRole::Control
                } else {
                    NodeRole::Worker
                },
                ordinal: u32::try_from(i).unwrap(),
                vm_id: Some(format!("vm-{name}")),
                ip: Some(format!("10.1.1.{}", i + 10)),
                joined: true,
                kubernetes_version: Some("v1.33.1".into()),
                added_by: None,
            })
            .unwrap();
    }
    let done: Vec<StepRecord> = kind
        .steps()
        .iter()
        .take_while(|s| **s != from)
        .map(|s| StepRecord {
            name: *s,
            status: StepStatus::Done,
            attempts: 1,
            detail: "done before".into(),
            updated: 0,
        })
        .collect();
    let caller = caller();
    let (command, cmd) = job_spec(kind);
    let job = jobs::pending(
        &caller,
        &JobSpec {
            command,
            cmd,
            instance_type: "KubernetesCluster",
            instance_id: "c1",
        },
    );
    store.put_job(&job).unwrap();
    let workflow = WorkflowRecord {
        id: "w1".into(),
        kind,
        cluster_id: "c1".into(),
        job_id: job.id,
        status: WorkflowStatus::Running,
        steps: done,
        deadline: now() + 3600,
        created: now(),
        params,
        failure: None,
        rules_tagged: true,
    };
    store.insert_workflow(&workflow).unwrap();
    workflow
}

fn engine(f: &Fixture) -> (Engine, CancellationToken) {
    let shutdown = CancellationToken::new();
    (
        Engine::new(f.ctx.clone(), Arc::new(StateResults), shutdown.clone()),
        shutdown,
    )
}

/// Runs the engine until every workflow ended (or `budget` of virtual time passed).
async fn run_to_end(f: &Fixture, budget: Duration) {
    let (engine, shutdown) = engine(f);
    engine.resume_all().unwrap();
    let deadline = tokio::time::Instant::now() + budget;
    while tokio::time::Instant::now() < deadline
        && !f.ctx.store.running_workflows().unwrap().is_empty()
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    engine.wait().await;
}

fn job_of(f: &Fixture, workflow: &WorkflowRecord) -> (JobStatus, Value) {
    let job = f.ctx.store.job(&workflow.job_id).unwrap().unwrap();
    (job.status, job.result.unwrap_or_default())
}

fn state(f: &Fixture) -> ClusterState {
    f.ctx.store.cluster("c1").unwrap().unwrap().state
}

#[tokio::test(start_paused = true)]
async fn a_start_polls_until_every_node_is_ready_then_ends_running() {
    let f = fixture(Script {
        not_ready_polls: 4,
        ..Script::default()
    });
    let workflow = running(
        &f,
        ClusterState::Starting,
        WorkflowKind::Start,
        Step::WaitReady,
        WorkflowParams::None,
    );
    run_to_end(&f, Duration::from_secs(600)).await;
    assert_eq!(state(&f), ClusterState::Running);
    assert_eq!(
        job_of(&f, &workflow),
        (JobStatus::Succeeded, json!({"state": "Running"}))
    );
    // One fresh command id per look: five looks, the fifth saw every node Ready.
    let polls: Vec<String> = f.agents.ran().into_iter().map(|(_, id)| id).collect();
    assert_eq!(polls.len(), 5, "{polls:?}");
    assert_eq!(polls[4], "w1:wait-ready:poll-5");
    let stored = f.ctx.store.workflow("w1").unwrap().unwrap();
    assert_eq!(stored.status, WorkflowStatus::Succeeded);
    assert_eq!(stored.step(Step::WaitReady).unwrap().attempts, 5);
}

#[tokio::test(start_paused = true)]
async fn a_step_past_the_deadline_fails_the_workflow_and_the_cluster_goes_to_alert() {
    let f = fixture(Script {
        not_ready_polls: u32::MAX,
        ..Script::default()
    });
    let mut workflow = running(
        &f,
        ClusterState::Starting,
        WorkflowKind::Start,
        Step::WaitReady,
        WorkflowParams::None,
    );
    workflow.deadline = now() - 1;
    f.ctx
        .store
        .save_progress(Progress {
            workflow: &workflow,
            cluster: None,
            nodes: &[],
        })
        .unwrap();
    run_to_end(&f, Duration::from_secs(60)).await;
    assert_eq!(state(&f), ClusterState::Alert);
    let (status, result) = job_of(&f, &workflow);
    assert_eq!(status, JobStatus::Failed);
    assert_eq!(result["errorcode"], 530);
    assert_eq!(
        result["errortext"],
        "start of web failed: timed out in step wait-ready"
    );
    let cluster = f.ctx.store.cluster("c1").unwrap().unwrap();
    assert_eq!(
        cluster.failure.as_deref(),
        Some("timed out in step wait-ready")
    );
}

#[tokio::test(start_paused = true)]
async fn a_controller_stopped_mid_step_resumes_it_without_running_a_command_twice() {
    let f = fixture(Script {
        not_ready_polls: 3,
        ..Script::default()
    });
    let workflow = running(
        &f,
        ClusterState::Starting,
        WorkflowKind::Start,
        Step::WaitReady,
        WorkflowParams::None,
    );
    let (first, shutdown) = engine(&f);
    first.resume_all().unwrap();
    // Two looks, then the controller stops (its tasks end at the next await).
    while f.agents.ran().len() < 2 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    first.wait().await;
    assert_eq!(state(&f), ClusterState::Starting);
    assert_eq!(
        f.ctx.store.workflow("w1").unwrap().unwrap().status,
        WorkflowStatus::Running
    );
    run_to_end(&f, Duration::from_secs(600)).await;
    assert_eq!(state(&f), ClusterState::Running);
    assert_eq!(job_of(&f, &workflow).0, JobStatus::Succeeded);
    let ids: Vec<String> = f.agents.ran().into_iter().map(|(_, id)| id).collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids, unique, "a command ran twice: {ids:?}");
}

fn upgrade_params() -> WorkflowParams {
    WorkflowParams::Upgrade(UpgradeParams {
        version_id: "v134".into(),
        semantic_version: "1.34.0".into(),
        iso_id: "iso134".into(),
    })
}

#[tokio::test(start_paused = true)]
async fn an_upgrade_takes_each_node_through_drain_upgrade_uncordon_and_health_once() {
    let f = fixture(Script {
        upgraded_to: "v1.34.0".into(),
        ..Script::default()
    });
    let workflow = running(
        &f,
        ClusterState::Upgrading,
        WorkflowKind::Upgrade,
        Step::UpgradeNodes,
        upgrade_params(),
    );
    run_to_end(&f, Duration::from_secs(3600)).await;
    assert_eq!(state(&f), ClusterState::Running);
    assert_eq!(job_of(&f, &workflow).0, JobStatus::Succeeded);
    let cluster = f.ctx.store.cluster("c1").unwrap().unwrap();
    assert_eq!(cluster.version_id, "v134");
    for node in f.ctx.store.nodes("c1").unwrap() {
        assert_eq!(node.kubernetes_version.as_deref(), Some("v1.34.0"));
    }
    // Control node first, then the workers in order; each through every phase, in order,
    // drains and uncordons through the control node, the upgrade on the node itself.
    let ran = f.agents.ran();
    let phases: Vec<(String, String)> = ran
        .iter()
        .map(|(node, id)| {
            let parts: Vec<&str> = id.split(':').collect();
            (node.clone(), format!("{}:{}", parts[2], parts[3]))
        })
        .collect();
    assert_eq!(
        phases,
        [
            ("n0", "drain:n0"),
            ("n0", "upgrade:n0"),
            ("n0", "uncordon:n0"),
            ("n0", "health:n0"),
            ("n0", "drain:n1"),
            ("n1", "upgrade:n1"),
            ("n0", "uncordon:n1"),
            ("n0", "health:n1"),
            ("n0", "drain:n2"),
            ("n2", "upgrade:n2"),
            ("n0", "uncordon:n2"),
            ("n0", "health:n2"),
        ]
        .map(|(n, p)| (n.to_string(), p.to_string()))
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_node_upgrade_stops_the_upgrade_names_node_and_phase_and_a_new_one_continues() {
    let f = fixture(Script {
        upgraded_to: "v1.34.0".into(),
        failing_upgrades: vec!["n1".into()],
        ..Script::default()
    });
    f.ctx.settings.set(UPGRADE_RETRIES, None, "2").unwrap();
    let workflow = running(
        &f,
        ClusterState::Upgrading,
        WorkflowKind::Upgrade,
        Step::UpgradeNodes,
        upgrade_params(),
    );
    run_to_end(&f, Duration::from_secs(3600)).await;
    assert_eq!(state(&f), ClusterState::Alert);
    let (status, result) = job_of(&f, &workflow);
    assert_eq!(status, JobStatus::Failed);
    let text = result["errortext"].as_str().unwrap();
    assert!(
        text.contains("node n1 failed in upgrade: 3 attempts failed"),
        "{text}"
    );
    // Retries: 2, so three attempts on n1, each under its own id; n2 untouched.
    let upgrades: Vec<String> = f
        .agents
        .ran()
        .into_iter()
        .filter(|(_, id)| id.contains(":upgrade:"))
        .map(|(_, id)| id)
        .collect();
    assert_eq!(upgrades.len(), 4, "{upgrades:?}");
    assert!(!f.agents.ran().iter().any(|(n, _)| n == "n2"));
    let nodes = f.ctx.store.nodes("c1").unwrap();
    assert_eq!(nodes[0].kubernetes_version.as_deref(), Some("v1.34.0"));
    assert_eq!(nodes[1].kubernetes_version.as_deref(), Some("v1.33.1"));
    // The version stays the old one until every node is there; the ISO was detached.
    let cluster = f.ctx.store.cluster("c1").unwrap().unwrap();
    assert_eq!(cluster.version_id, "v133");
    let stored = f.ctx.store.workflow("w1").unwrap().unwrap();
    assert!(stored.is_done(Step::DetachIso), "{:?}", stored.steps);
}

#[tokio::test(start_paused = true)]
async fn a_delete_cancels_the_running_operation_and_fails_its_job_saying_so() {
    let f = fixture(Script {
        not_ready_polls: u32::MAX,
        ..Script::default()
    });
    let workflow = running(
        &f,
        ClusterState::Starting,
        WorkflowKind::Start,
        Step::WaitReady,
        WorkflowParams::None,
    );
    let (engine, shutdown) = engine(&f);
    engine.resume_all().unwrap();
    while f.agents.ran().is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cluster = f.ctx.store.cluster("c1").unwrap().unwrap();
    let caller = caller();
    let job = engine
        .start(
            &caller,
            Target::Existing(&cluster),
            Operation::plain(WorkflowKind::Delete),
        )
        .await
        .unwrap();
    assert_eq!(state(&f), ClusterState::Destroying);
    let (status, result) = job_of(&f, &workflow);
    assert_eq!(status, JobStatus::Failed);
    assert_eq!(
        result["errortext"],
        "Kubernetes cluster : web is being deleted; its start was cancelled"
    );
    let old = f.ctx.store.workflow("w1").unwrap().unwrap();
    assert_eq!(old.status, WorkflowStatus::Cancelled);
    let latest = f.ctx.store.latest_workflow("c1").unwrap().unwrap();
    assert_eq!((latest.kind, latest.job_id), (WorkflowKind::Delete, job));
    // The cancelled workflow makes no further calls.
    let before = f.agents.ran().len();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(f.agents.ran().len(), before);
    shutdown.cancel();
    engine.wait().await;
}

#[tokio::test(start_paused = true)]
async fn a_cluster_left_in_a_transient_state_without_a_workflow_is_moved_out_of_it() {
    let f = fixture(Script::default());
    f.ctx
        .store
        .insert_cluster(&cluster(ClusterState::Scaling))
        .unwrap();
    let (engine, _shutdown) = engine(&f);
    assert_eq!(engine.resume_all().unwrap(), 0);
    let cluster = f.ctx.store.cluster("c1").unwrap().unwrap();
    assert_eq!(cluster.state, ClusterState::Alert);
    assert!(cluster.failure.unwrap().starts_with("interrupted"));
}

#[tokio::test(start_paused = true)]
async fn an_operation_that_lost_the_race_records_nothing() {
    let f = fixture(Script::default());
    f.ctx
        .store
        .insert_cluster(&cluster(ClusterState::Running))
        .unwrap();
    let mut stale = cluster(ClusterState::Running);
    // Another request moved it meanwhile.
    f.ctx
        .store
        .set_cluster_state("c1", ClusterState::Running, ClusterState::Stopping, None)
        .unwrap();
    stale.state = ClusterState::Running;
    let (engine, _shutdown) = engine(&f);
    let caller = caller();
    let err = engine
        .start(
            &caller,
            Target::Existing(&stale),
            Operation::plain(WorkflowKind::Stop),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StartError::Changed), "{err}");
    assert!(f.ctx.store.jobs().unwrap().is_empty());
    assert!(f.ctx.store.latest_workflow("c1").unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn asking_again_for_the_running_scale_answers_with_its_job_and_another_scale_is_refused() {
    let f = fixture(Script::default());
    let asked = vec![("size".to_string(), "3".to_string())];
    let params = WorkflowParams::Scale(crate::store::ScaleParams {
        size: Some(3),
        asked: asked.clone(),
        ..crate::store::ScaleParams::default()
    });
    let workflow = running(
        &f,
        ClusterState::Scaling,
        WorkflowKind::Scale,
        Step::DeployNodes,
        params,
    );
    let (engine, _shutdown) = engine(&f);
    let cluster = f.ctx.store.cluster("c1").unwrap().unwrap();
    // Asked again after the scale planned its workers: the plan derived now differs (no size
    // change left), what was asked does not.
    let same = engine
        .start(
            &caller(),
            Target::Existing(&cluster),
            Operation {
                kind: WorkflowKind::Scale,
                params: WorkflowParams::Scale(crate::store::ScaleParams {
                    asked,
                    ..crate::store::ScaleParams::default()
                }),
            },
        )
        .await
        .unwrap();
    assert_eq!(same, workflow.job_id);
    let other = engine
        .start(
            &caller(),
            Target::Existing(&cluster),
            Operation {
                kind: WorkflowKind::Scale,
                params: WorkflowParams::Scale(crate::store::ScaleParams {
                    size: Some(5),
                    asked: vec![("size".to_string(), "5".to_string())],
                    ..crate::store::ScaleParams::default()
                }),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            other,
            StartError::Refused {
                state: ClusterState::Scaling
            }
        ),
        "{other}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_start_of_a_running_or_a_stop_of_a_stopped_cluster_records_no_job() {
    let f = fixture(Script::default());
    let (engine, _shutdown) = engine(&f);
    let caller = caller();
    for (state, kind) in [
        (ClusterState::Running, WorkflowKind::Start),
        (ClusterState::Stopped, WorkflowKind::Stop),
    ] {
        let there = cluster(state);
        f.ctx.store.insert_cluster(&there).unwrap();
        let job_id = engine
            .start(&caller, Target::Existing(&there), Operation::plain(kind))
            .await
            .unwrap();
        // A job id to poll, answered as succeeded, but nothing written.
        let job = f.ctx.jobs.get(&job_id).unwrap().expect("the instant job");
        assert_eq!(job.status, JobStatus::Succeeded);
        assert_eq!(job.result, Some(json!({ "state": state.as_str() })));
        assert!(f.ctx.store.jobs().unwrap().is_empty());
        assert!(f.ctx.store.latest_workflow("c1").unwrap().is_none());
        assert_eq!(f.ctx.store.cluster("c1").unwrap().unwrap().state, state);
    }
}
