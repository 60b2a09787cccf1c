//! The reconciler against the CloudStack simulator: node VMs really deployed, stopped behind
//! the controller's back and started again; agents whose health the test decides.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudsim::{SimConfig, SimHandle, Simulator};
use serde_json::Value;

use super::*;
use crate::agents::{AgentFuture, Agents, HubError, NodeStatus};
use crate::cloud::{Cloud, DeployRequest};
use crate::cloudstack::{ClientConfig, CloudStackClient};
use crate::context::NodeDefaults;
use crate::jobs::Jobs;
use crate::pki::NodeIdentity;
use crate::seal::Sealer;
use crate::settings::Settings;
use crate::store::{NodeRole, Owner, SqliteStore, Store};

/// Agents whose health the test sets: (connected, Ready) per node name; healthy by default.
#[derive(Default)]
struct FakeAgents {
    unwell: Mutex<HashMap<String, (bool, bool)>>,
}

impl Agents for FakeAgents {
    fn send_command<'a>(
        &'a self,
        node: &'a NodeKey,
        command: cks_proto::agent::Command,
        timeout: Duration,
    ) -> AgentFuture<'a, Result<cks_proto::agent::CommandResult, HubError>> {
        Box::pin(async move {
            Err(HubError::Timeout {
                node: node.to_string(),
                command_id: command.command_id,
                timeout,
            })
        })
    }

    fn status(&self, node: &NodeKey) -> NodeStatus {
        let (connected, node_ready) = self
            .unwell
            .lock()
            .unwrap()
            .get(&node.node_name)
            .copied()
            .unwrap_or((true, true));
        NodeStatus {
            connected,
            node_ready,
            ..NodeStatus::default()
        }
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

struct Fixture {
    sim: SimHandle,
    ctx: Context,
    agents: Arc<FakeAgents>,
    admin: CloudStackClient,
    owner: Owner,
    zone_id: String,
    template_id: String,
    offering_id: String,
    network_id: String,
}

fn first_id(value: &Value, key: &str) -> String {
    value[key][0]["id"].as_str().unwrap().to_string()
}

impl Fixture {
    async fn start() -> Fixture {
        let sim = Simulator::start(SimConfig::for_tests()).await.unwrap();
        let keys = sim.admin_keys();
        let mut config = ClientConfig::new(
            sim.endpoint(),
            keys.api_key.clone(),
            keys.secret_key.clone(),
        );
        config.rate_limit = None;
        config.job_poll.initial_interval = Duration::from_millis(5);
        config.job_poll.max_interval = Duration::from_millis(50);
        let admin = CloudStackClient::new(config).unwrap();
        let zone_id = first_id(&admin.call("listZones", &[]).await.unwrap(), "zone");
        let template_id = first_id(
            &admin
                .call("listTemplates", &[("templatefilter", "executable")])
                .await
                .unwrap(),
            "template",
        );
        let offering_id = first_id(
            &admin.call("listServiceOfferings", &[]).await.unwrap(),
            "serviceoffering",
        );
        let offerings = admin
            .call(
                "listNetworkOfferings",
                &[("name", "DefaultIsolatedNetworkOfferingWithSourceNatService")],
            )
            .await
            .unwrap();
        let network = admin
            .call(
                "createNetwork",
                &[
                    ("zoneid", &zone_id),
                    (
                        "networkofferingid",
                        &first_id(&offerings, "networkoffering"),
                    ),
                    ("name", "nodes"),
                    ("displaytext", "nodes"),
                ],
            )
            .await
            .unwrap();
        let network = &network["network"];
        let owner = Owner {
            account: network["account"].as_str().unwrap().into(),
            account_id: "admin".into(),
            domain_id: network["domainid"].as_str().unwrap().into(),
            domain: "ROOT".into(),
            user_id: keys.user_id.clone(),
            project: None,
        };
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        let agents = Arc::new(FakeAgents::default());
        let ctx = Context {
            store: store.clone(),
            settings: Settings::new(store.clone()),
            cloud: Cloud::new(admin.clone()),
            agents: agents.clone(),
            sealer: Arc::new(Sealer::ephemeral()),
            jobs: Jobs::new(store),
            nodes: NodeDefaults {
                agent_addresses: vec!["127.0.0.1:8091".into()],
                template: "t".into(),
                enrollment_ttl: Duration::from_secs(3600),
                pod_cidr: "10.244.0.0/16".into(),
                service_cidr: "10.96.0.0/12".into(),
            },
        };
        Fixture {
            sim,
            ctx,
            agents,
            admin,
            owner,
            zone_id,
            template_id,
            offering_id,
            network_id: network["id"].as_str().unwrap().into(),
        }
    }

    /// A Running cluster `id` of one control node and one worker whose VMs run.
    async fn cluster(&self, id: &str) {
        let mut cluster = ClusterRecord::for_tests(id, ClusterState::Running, 1, 1);
        cluster.owner = self.owner.clone();
        cluster.network_id = Some(self.network_id.clone());
        self.ctx.store.insert_cluster(&cluster).unwrap();
        for ordinal in 0..2 {
            let name = format!("{id}-node-{ordinal}");
            let vm = self
                .ctx
                .cloud
                .deploy_vm(&DeployRequest {
                    owner: &self.owner,
                    zone_id: &self.zone_id,
                    service_offering_id: &self.offering_id,
                    template_id: &self.template_id,
                    network_id: &self.network_id,
                    name: &name,
                    userdata: "#cloud-config\n",
                    keypair: None,
                    root_disk_size: None,
                })
                .await
                .unwrap();
            // Deployed stopped (the ISO goes on first), as the create workflow does.
            self.ctx.cloud.start_vm(&vm.id).await.unwrap();
            self.ctx
                .store
                .put_node(&NodeRecord {
                    cluster_id: id.into(),
                    name,
                    role: if ordinal == 0 {
                        NodeRole::Control
                    } else {
                        NodeRole::Worker
                    },
                    ordinal,
                    vm_id: Some(vm.id),
                    ip: None,
                    joined: true,
                    kubernetes_version: None,
                    added_by: None,
                })
                .unwrap();
        }
    }

    fn vm_of(&self, cluster: &str, ordinal: u32) -> String {
        let nodes = self.ctx.store.nodes(cluster).unwrap();
        nodes[ordinal as usize].vm_id.clone().unwrap()
    }

    fn cluster_now(&self, id: &str) -> ClusterRecord {
        self.ctx.store.cluster(id).unwrap().unwrap()
    }

    async fn vm_state(&self, vm: &str) -> String {
        let listed = self
            .admin
            .call("listVirtualMachines", &[("id", vm), ("listall", "true")])
            .await
            .unwrap();
        listed["virtualmachine"][0]["state"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

#[tokio::test]
async fn a_node_vm_stopped_behind_our_back_alerts_the_cluster_is_started_and_it_recovers() {
    let f = Fixture::start().await;
    f.cluster("c1").await;
    f.cluster("c2").await;
    let reconciler = Reconciler::new(f.ctx.clone(), Duration::ZERO);
    let healthy = reconciler.pass().await.unwrap();
    assert_eq!(healthy.checked, 2);
    assert!(!healthy.changed_anything(), "{healthy:?}");

    // Stopped directly on CloudStack, not through us.
    let worker = f.vm_of("c1", 1);
    f.admin
        .submit("stopVirtualMachine", &[("id", &worker)])
        .await
        .unwrap();
    for _ in 0..200 {
        if f.vm_state(&worker).await == "Stopped" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // One listing of every VM per pass, however many clusters.
    f.sim.reset_call_counts();
    let found = reconciler.pass().await.unwrap();
    assert_eq!(f.sim.call_counts().get("listVirtualMachines"), Some(&1));
    assert_eq!(found.alerted, ["c1"]);
    assert_eq!(found.restarted, std::slice::from_ref(&worker));
    let alerted = f.cluster_now("c1");
    assert_eq!(alerted.state, ClusterState::Alert);
    let failure = alerted.failure.unwrap();
    assert!(
        failure.starts_with(FAULTS)
            && failure.contains("node c1-node-1")
            && failure.contains("Stopped"),
        "{failure}"
    );
    assert_eq!(f.cluster_now("c2").state, ClusterState::Running);
    assert_eq!(f.vm_state(&worker).await, "Running", "repaired");

    // Healthy again: back to Running, and the history says what happened.
    let recovered = reconciler.pass().await.unwrap();
    assert_eq!(recovered.recovered, ["c1"]);
    let back = f.cluster_now("c1");
    assert_eq!(back.state, ClusterState::Running);
    assert_eq!(back.failure, None);
    let states: Vec<String> = f
        .ctx
        .store
        .events("c1")
        .unwrap()
        .into_iter()
        .map(|e| e.state)
        .collect();
    assert_eq!(states, ["Repaired", "Alert", "Running"]);
    assert!(f.ctx.store.events("c2").unwrap().is_empty());
}

#[tokio::test]
async fn an_unwell_agent_counts_after_its_grace_and_an_operations_alert_is_left_alone() {
    let f = Fixture::start().await;
    f.cluster("c1").await;
    f.cluster("c2").await;
    f.agents
        .unwell
        .lock()
        .unwrap()
        .insert("c1-node-0".into(), (false, false));
    // Within the grace, an agent away is no fault.
    let patient = Reconciler::new(f.ctx.clone(), Duration::from_secs(3600));
    assert!(!patient.pass().await.unwrap().changed_anything());
    assert_eq!(f.cluster_now("c1").state, ClusterState::Running);
    let reconciler = Reconciler::new(f.ctx.clone(), Duration::ZERO);
    assert_eq!(reconciler.pass().await.unwrap().alerted, ["c1"]);
    let failure = f.cluster_now("c1").failure.unwrap();
    assert!(
        failure.contains("node c1-node-0: its agent is not connected"),
        "{failure}"
    );
    // Connected but not Ready: the cause is kept up to date.
    f.agents
        .unwell
        .lock()
        .unwrap()
        .insert("c1-node-0".into(), (true, false));
    reconciler.pass().await.unwrap();
    let failure = f.cluster_now("c1").failure.unwrap();
    assert!(failure.contains("its kubelet is not Ready"), "{failure}");
    f.agents.unwell.lock().unwrap().clear();
    assert_eq!(reconciler.pass().await.unwrap().recovered, ["c1"]);

    // An Alert a failed operation left is the operator's: healthy nodes do not clear it.
    f.ctx
        .store
        .set_cluster_state(
            "c2",
            ClusterState::Running,
            ClusterState::Alert,
            Some("step upgrade-nodes failed: drain timed out"),
        )
        .unwrap();
    assert!(!reconciler.pass().await.unwrap().changed_anything());
    assert_eq!(f.cluster_now("c2").state, ClusterState::Alert);
}
