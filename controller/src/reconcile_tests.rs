//! The reconciler against the CloudStack simulator: node VMs really deployed, stopped behind
//! the controller's back and started again; agents whose health the test decides.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use cloudsim::SimHandle;

use super::*;
use crate::cloud::DeployRequest;
use crate::cloudstack::CloudStackClient;
use crate::store::{NodeRole, Owner};
use crate::testkit::{self, QuietAgents, World};

struct Fixture {
    sim: SimHandle,
    ctx: Context,
    agents: Arc<QuietAgents>,
    admin: CloudStackClient,
    owner: Owner,
    zone_id: String,
    template_id: String,
    offering_id: String,
    network_id: String,
}

impl Fixture {
    async fn start() -> Fixture {
        let world = World::start().await;
        let network = world.network(&world.admin, "nodes").await;
        let owner = Owner {
            account: network["account"].as_str().unwrap().into(),
            account_id: "admin".into(),
            domain_id: network["domainid"].as_str().unwrap().into(),
            domain: "ROOT".into(),
            user_id: world.sim.admin_keys().user_id.clone(),
            project: None,
        };
        let agents = Arc::new(QuietAgents {
            healthy_by_default: true,
            ..QuietAgents::default()
        });
        let ctx = testkit::context(testkit::store(), world.admin.clone(), agents.clone());
        Fixture {
            sim: world.sim,
            ctx,
            agents,
            admin: world.admin,
            owner,
            zone_id: world.zone_id,
            template_id: world.template_id,
            offering_id: world.offering_id,
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
        .health
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
        .health
        .lock()
        .unwrap()
        .insert("c1-node-0".into(), (true, false));
    reconciler.pass().await.unwrap();
    let failure = f.cluster_now("c1").failure.unwrap();
    assert!(failure.contains("its kubelet is not Ready"), "{failure}");
    f.agents.health.lock().unwrap().clear();
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
