//! Which rules on a cluster's public IP are the cluster's: first judged on rule values alone,
//! then with the rule steps (create's firewall and load-balancer, scale's node-rules, delete's
//! delete-rules) run against the CloudStack simulator, on a network of the IP's owner who also
//! makes rules of their own on the cluster's ports.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use cloudsim::SimHandle;
use cloudsim::faults::{FaultConfig, FaultRule};
use serde_json::{Value, json};

use super::*;
use crate::cloud::DeployRequest;
use crate::cloudstack::CloudStackClient;
use crate::context::Context;
use crate::store::{
    ClusterState, NodeRole, Owner, StepRecord, WorkflowParams, WorkflowStatus, now,
};
use crate::testkit::{self, QuietAgents, World};
use crate::workflow::step::StepCtx;
use crate::workflow::{create, delete, scale};

// === judged on values ===

fn firewall(value: Value) -> FirewallRule {
    serde_json::from_value(value).unwrap()
}

fn ownership(orphans: bool, legacy: bool) -> Ownership {
    Ownership {
        cluster_id: "c1".into(),
        ssh: true,
        vms: BTreeSet::from(["vm-1".to_string()]),
        orphans,
        legacy,
    }
}

fn judge_all(rule: &FirewallRule) -> [bool; 3] {
    [
        ownership(false, false).firewall(rule),
        ownership(true, false).firewall(rule),
        ownership(false, true).firewall(rule),
    ]
}

#[test]
fn a_rule_tagged_for_the_cluster_is_its_own_and_one_tagged_for_another_never_is() {
    let ours = firewall(json!({
        "id": "r1", "protocol": "tcp", "startport": 9000, "endport": 9000,
        "cidrlist": "10.0.0.0/8", "tags": [{"key": "cks.cluster", "value": "c1"}],
    }));
    assert_eq!(judge_all(&ours), [true, true, true]);
    let another = firewall(json!({
        "id": "r2", "protocol": "tcp", "startport": 6443, "endport": 6443,
        "cidrlist": "0.0.0.0/0", "tags": [{"key": "cks.cluster", "value": "c2"}],
    }));
    assert_eq!(judge_all(&another), [false, false, false]);
}

#[test]
fn an_untagged_firewall_rule_is_the_clusters_only_as_an_exact_orphan_or_by_the_old_port_match() {
    // [strict, orphans possible, made before tagging]
    let cases = [
        (
            json!({"startport": 6443, "endport": 6443, "cidrlist": "0.0.0.0/0"}),
            [false, true, true],
        ),
        (
            json!({"startport": 2222, "endport": 2224, "cidrlist": "0.0.0.0/0"}),
            [false, true, true],
        ),
        // The owner's own: another source CIDR, another protocol, another range.
        (
            json!({"startport": 6443, "endport": 6443, "cidrlist": "10.0.0.0/8"}),
            [false, false, true],
        ),
        (
            json!({"startport": 2222, "endport": 2222, "cidrlist": "198.51.100.0/24"}),
            [false, false, true],
        ),
        (
            json!({"startport": 6443, "endport": 6443, "cidrlist": "0.0.0.0/0", "protocol": "udp"}),
            [false, false, true],
        ),
        (
            json!({"startport": 6443, "endport": 6444, "cidrlist": "0.0.0.0/0"}),
            [false, false, false],
        ),
        (
            json!({"startport": 2223, "endport": 2223, "cidrlist": "0.0.0.0/0"}),
            [false, false, false],
        ),
    ];
    for (fields, expected) in cases {
        let mut value = json!({"id": "r", "protocol": "tcp"});
        for (key, field) in fields.as_object().unwrap() {
            value[key] = field.clone();
        }
        assert_eq!(judge_all(&firewall(value.clone())), expected, "{value}");
    }
    // Without a key pair the cluster has no SSH rules at all.
    let ssh = firewall(json!({
        "id": "r", "protocol": "tcp", "startport": 2222, "endport": 2223, "cidrlist": "0.0.0.0/0",
    }));
    let mut keyless = ownership(true, true);
    keyless.ssh = false;
    assert!(!keyless.firewall(&ssh));
}

#[test]
fn an_untagged_forward_or_load_balancer_is_the_clusters_only_in_its_exact_shape() {
    let forward = |port: u16, vm: &str, private: u16| -> PortForwardingRule {
        serde_json::from_value(json!({
            "id": "f", "protocol": "tcp", "publicport": port.to_string(),
            "publicendport": port.to_string(), "privateport": private.to_string(),
            "virtualmachineid": vm,
        }))
        .unwrap()
    };
    for owned in [ownership(true, false), ownership(false, true)] {
        assert!(owned.forward(&forward(2223, "vm-1", 22)));
        // To a VM of the owner's, or to a node's NodePort: the owner's.
        assert!(!owned.forward(&forward(2223, "vm-9", 22)));
        assert!(!owned.forward(&forward(3000, "vm-1", 30080)));
    }
    assert!(!ownership(false, false).forward(&forward(2223, "vm-1", 22)));

    let balancer = |name: &str, private: u16| -> LoadBalancerRule {
        serde_json::from_value(json!({
            "id": "l", "name": name, "publicport": "6443", "privateport": private.to_string(),
        }))
        .unwrap()
    };
    assert!(ownership(true, false).load_balancer(&balancer("api-lb", 6443)));
    assert!(!ownership(true, false).load_balancer(&balancer("api-lb", 8443)));
    assert!(!ownership(true, false).load_balancer(&balancer("owners-lb", 6443)));
    assert!(ownership(false, true).load_balancer(&balancer("api-lb", 8443)));
    assert!(!ownership(false, false).load_balancer(&balancer("api-lb", 6443)));
}

// === the steps against the simulator ===

/// A cluster on a network of the user's (the IP's owner), its public IP the network's source
/// NAT address, with node VMs deployed; the controller's view (admin keys) and the owner's.
struct Fixture {
    sim: SimHandle,
    ctx: Context,
    /// The IP's owner, with their own keys.
    owner: CloudStackClient,
    owner_record: Owner,
    zone_id: String,
    template_id: String,
    offering_id: String,
    network_id: String,
    ip_id: String,
}

impl Fixture {
    async fn start() -> Fixture {
        let world = World::start().await;
        let owner = testkit::sim_client(&world.sim.endpoint(), world.sim.user_keys());
        let network = world.network(&owner, "owners-network").await;
        let World {
            sim,
            admin,
            zone_id,
            template_id,
            offering_id,
        } = world;
        let network = &network;
        let owner_record = Owner {
            account: network["account"].as_str().unwrap().into(),
            account_id: "owner".into(),
            domain_id: network["domainid"].as_str().unwrap().into(),
            domain: "ROOT".into(),
            user_id: sim.user_keys().user_id.clone(),
            project: None,
        };
        let ctx = testkit::context(testkit::store(), admin, Arc::new(QuietAgents::default()));
        let mut f = Fixture {
            sim,
            ctx,
            owner,
            owner_record,
            zone_id,
            template_id,
            offering_id,
            network_id: network["id"].as_str().unwrap().into(),
            ip_id: String::new(),
        };
        // The owner's first VM brings the network's source NAT address up.
        f.vm("owners-own-vm").await;
        let ips = f.ctx.cloud.public_ips(&f.network_id).await.unwrap();
        f.ip_id = ips.iter().find(|ip| ip.issourcenat).unwrap().id.clone();
        f
    }

    /// A VM in the owner's account on the owner's network; its id.
    async fn vm(&self, name: &str) -> String {
        let userdata = "#cloud-config\n".to_string();
        self.ctx
            .cloud
            .deploy_vm(&DeployRequest {
                owner: &self.owner_record,
                zone_id: &self.zone_id,
                service_offering_id: &self.offering_id,
                template_id: &self.template_id,
                network_id: &self.network_id,
                name,
                userdata: &userdata,
                keypair: None,
                root_disk_size: None,
            })
            .await
            .unwrap()
            .id
    }

    /// Records cluster `c1` on the owner's network (with a key pair when `ssh`), with one
    /// control node and `workers` workers whose VMs exist, and the workflow that created it:
    /// begun by a controller that tags rules unless `legacy`.
    async fn cluster(&self, ssh: bool, workers: u32, legacy: bool) {
        let mut cluster = ClusterRecord::for_tests("c1", ClusterState::Running, 1, workers);
        cluster.owner = self.owner_record.clone();
        cluster.keypair = ssh.then(|| "owners-key".to_string());
        cluster.network_id = Some(self.network_id.clone());
        cluster.network_created = false;
        cluster.public_ip_id = Some(self.ip_id.clone());
        self.ctx.store.insert_cluster(&cluster).unwrap();
        for ordinal in 0..=workers {
            self.add_node(ordinal).await;
        }
        let steps = WorkflowKind::Create
            .steps()
            .iter()
            .map(|step| record(*step, StepStatus::Done, 1))
            .collect();
        self.history(
            WorkflowKind::Create,
            WorkflowStatus::Succeeded,
            steps,
            !legacy,
        );
    }

    /// A node of `c1` with a VM (a control node for ordinal 0).
    async fn add_node(&self, ordinal: u32) {
        let name = format!("web-node-{ordinal}");
        let vm = self.vm(&name).await;
        self.ctx
            .store
            .put_node(&NodeRecord {
                cluster_id: "c1".into(),
                name,
                role: if ordinal == 0 {
                    NodeRole::Control
                } else {
                    NodeRole::Worker
                },
                ordinal,
                vm_id: Some(vm),
                ip: None,
                joined: true,
                kubernetes_version: None,
                added_by: None,
            })
            .unwrap();
    }

    /// Records an earlier workflow of `c1`.
    fn history(
        &self,
        kind: WorkflowKind,
        status: WorkflowStatus,
        steps: Vec<StepRecord>,
        rules_tagged: bool,
    ) {
        let workflow = WorkflowRecord {
            id: uuid::Uuid::new_v4().to_string(),
            kind,
            cluster_id: "c1".into(),
            job_id: "j".into(),
            status,
            steps,
            deadline: now() + 3600,
            created: now(),
            params: WorkflowParams::None,
            failure: None,
            rules_tagged,
        };
        self.ctx.store.insert_workflow(&workflow).unwrap();
    }

    /// Runs `step` of a `kind` workflow on `c1`, as the engine's `attempt`-th run of it.
    async fn run(&self, kind: WorkflowKind, step: Step, attempt: u32) -> Result<String, StepError> {
        let workflow = WorkflowRecord {
            id: format!("running-{}", kind.as_str()),
            kind,
            cluster_id: "c1".into(),
            job_id: "j".into(),
            status: WorkflowStatus::Running,
            steps: vec![record(step, StepStatus::Started, attempt)],
            deadline: now() + 3600,
            created: now(),
            params: WorkflowParams::None,
            failure: None,
            rules_tagged: true,
        };
        let mut sc = StepCtx {
            ctx: &self.ctx,
            workflow: &workflow,
            step,
            cluster: self.ctx.store.cluster("c1").unwrap().unwrap(),
            nodes: self.ctx.store.nodes("c1").unwrap(),
        };
        match kind {
            WorkflowKind::Create => create::run(&mut sc).await,
            WorkflowKind::Scale => scale::run(&mut sc).await,
            WorkflowKind::Delete => delete::run(&mut sc).await,
            other => panic!("no rule steps in {other:?}"),
        }
    }

    /// Every rule on the IP, as (kind, start port, end port, source CIDR, cluster tag).
    async fn rules(&self) -> BTreeSet<(&'static str, u16, u16, String, Option<String>)> {
        let cloud = &self.ctx.cloud;
        let tag = |tags: &[crate::cloudstack::types::Tag]| {
            crate::cloudstack::types::tag_value(tags, "cks.cluster").map(str::to_string)
        };
        let mut all = BTreeSet::new();
        for r in cloud.firewall_rules(&self.ip_id).await.unwrap() {
            all.insert((
                "firewall",
                r.startport.unwrap(),
                r.endport.unwrap(),
                r.cidrlist.clone().unwrap_or_default(),
                tag(&r.tags),
            ));
        }
        for r in cloud.lb_rules(&self.ip_id).await.unwrap() {
            all.insert((
                "load-balancer",
                r.publicport.unwrap(),
                r.privateport.unwrap(),
                r.name.clone().unwrap_or_default(),
                tag(&r.tags),
            ));
        }
        for r in cloud.pf_rules(&self.ip_id).await.unwrap() {
            all.insert((
                "forward",
                r.publicport.unwrap(),
                r.privateport.unwrap(),
                String::new(),
                tag(&r.tags),
            ));
        }
        all
    }

    /// A firewall rule the owner makes with their own keys.
    async fn owners_firewall_rule(&self, start: u16, end: u16, cidr: &str) {
        let (start, end) = (start.to_string(), end.to_string());
        self.owner
            .call_async(
                "createFirewallRule",
                &[
                    ("ipaddressid", self.ip_id.as_str()),
                    ("protocol", "tcp"),
                    ("startport", &start),
                    ("endport", &end),
                    ("cidrlist", cidr),
                ],
                tokio::time::Instant::now() + Duration::from_secs(30),
            )
            .await
            .unwrap();
    }

    /// A forward the owner makes from `public` to port `private` of a VM.
    async fn owners_forward(&self, public: u16, vm: &str, private: u16) {
        let (public, private) = (public.to_string(), private.to_string());
        self.owner
            .call_async(
                "createPortForwardingRule",
                &[
                    ("ipaddressid", self.ip_id.as_str()),
                    ("virtualmachineid", vm),
                    ("publicport", &public),
                    ("privateport", &private),
                    ("protocol", "tcp"),
                    ("openfirewall", "false"),
                ],
                tokio::time::Instant::now() + Duration::from_secs(30),
            )
            .await
            .unwrap();
    }

    fn vm_of(&self, ordinal: u32) -> String {
        self.ctx
            .store
            .nodes("c1")
            .unwrap()
            .into_iter()
            .find(|n| n.ordinal == ordinal)
            .and_then(|n| n.vm_id)
            .unwrap()
    }

    async fn stop(self) {
        self.sim.shutdown().await;
    }
}

fn record(name: Step, status: StepStatus, attempts: u32) -> StepRecord {
    StepRecord {
        name,
        status,
        attempts,
        detail: String::new(),
        updated: 0,
    }
}

type Rule = (&'static str, u16, u16, String, Option<String>);

fn ours(kind: &'static str, start: u16, end: u16, extra: &str) -> Rule {
    (kind, start, end, extra.into(), Some("c1".into()))
}

fn owners(kind: &'static str, start: u16, end: u16, extra: &str) -> Rule {
    (kind, start, end, extra.into(), None)
}

#[tokio::test]
async fn the_owners_rules_on_the_clusters_ports_survive_a_scale_and_the_delete() {
    let f = Fixture::start().await;
    f.cluster(true, 1, false).await;
    f.run(WorkflowKind::Create, Step::Firewall, 1)
        .await
        .unwrap();
    f.run(WorkflowKind::Create, Step::LoadBalancer, 1)
        .await
        .unwrap();
    let made = BTreeSet::from([
        ours("firewall", 6443, 6443, "0.0.0.0/0"),
        ours("firewall", 2222, 2223, "0.0.0.0/0"),
        ours("load-balancer", 6443, 6443, "api-lb"),
        ours("forward", 2222, 22, ""),
        ours("forward", 2223, 22, ""),
    ]);
    assert_eq!(
        f.rules().await,
        made,
        "every rule the cluster made is tagged"
    );

    // The owner opens the cluster's ports for themselves, and forwards to a node.
    f.owners_firewall_rule(6443, 6443, "10.0.0.0/8").await;
    f.owners_firewall_rule(2222, 2222, "198.51.100.0/24").await;
    f.owners_forward(3000, &f.vm_of(1), 22).await;
    let theirs = BTreeSet::from([
        owners("firewall", 6443, 6443, "10.0.0.0/8"),
        owners("firewall", 2222, 2222, "198.51.100.0/24"),
        owners("forward", 3000, 22, ""),
    ]);

    // A scale adds a worker: the cluster's SSH range and forwards grow; the owner's stay.
    f.add_node(2).await;
    f.run(WorkflowKind::Scale, Step::NodeRules, 1)
        .await
        .unwrap();
    let scaled = BTreeSet::from([
        ours("firewall", 6443, 6443, "0.0.0.0/0"),
        ours("firewall", 2222, 2224, "0.0.0.0/0"),
        ours("load-balancer", 6443, 6443, "api-lb"),
        ours("forward", 2222, 22, ""),
        ours("forward", 2223, 22, ""),
        ours("forward", 2224, 22, ""),
    ]);
    assert_eq!(
        f.rules().await,
        scaled.union(&theirs).cloned().collect::<BTreeSet<_>>()
    );

    // The delete removes every rule of the cluster's and nothing of the owner's.
    let detail = f.run(WorkflowKind::Delete, Step::DeleteRules, 1).await;
    assert_eq!(detail.unwrap(), "6 network rules removed");
    assert_eq!(f.rules().await, theirs);
    f.stop().await;
}

#[tokio::test]
async fn a_rule_whose_answer_was_lost_is_adopted_by_the_next_run_not_made_twice() {
    let f = Fixture::start().await;
    f.cluster(false, 1, false).await;
    // CloudStack makes the rule but the answer never arrives: the controller cannot tag it.
    f.sim.set_faults(FaultConfig {
        rules: vec![FaultRule {
            command: "createFirewallRule".into(),
            error_rate: 0.0,
            error_code: 530,
            latency_ms: 0,
            lost_response_rate: 1.0,
            job_failure_rate: 0.0,
        }],
        ..FaultConfig::default()
    });
    let lost = f.run(WorkflowKind::Create, Step::Firewall, 1).await;
    assert!(matches!(lost, Err(StepError::Retry { .. })), "{lost:?}");
    f.sim.set_faults(FaultConfig::default());
    assert_eq!(
        f.rules().await,
        BTreeSet::from([owners("firewall", 6443, 6443, "0.0.0.0/0")]),
        "made, untagged"
    );
    f.run(WorkflowKind::Create, Step::Firewall, 2)
        .await
        .unwrap();
    assert_eq!(
        f.rules().await,
        BTreeSet::from([ours("firewall", 6443, 6443, "0.0.0.0/0")])
    );
    f.stop().await;
}

#[tokio::test]
async fn on_the_owners_network_a_first_run_takes_no_untagged_rule_for_its_own() {
    let f = Fixture::start().await;
    f.cluster(false, 1, false).await;
    // Since the create was validated, the owner opened the API port exactly as the cluster
    // would: CloudStack refuses the cluster's rule beside it, and the step says so.
    f.owners_firewall_rule(6443, 6443, "0.0.0.0/0").await;
    let refused = f.run(WorkflowKind::Create, Step::Firewall, 1).await;
    match refused {
        Err(StepError::Fail(reason)) => assert!(reason.contains("conflicts"), "{reason}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(
        f.rules().await,
        BTreeSet::from([owners("firewall", 6443, 6443, "0.0.0.0/0")])
    );
    f.stop().await;
}

#[tokio::test]
async fn a_delete_removes_what_a_cut_off_rule_step_left_untagged_and_no_lookalike_otherwise() {
    let f = Fixture::start().await;
    f.cluster(true, 1, false).await;
    f.run(WorkflowKind::Create, Step::Firewall, 1)
        .await
        .unwrap();
    // The owner's lookalike of the load balancer the cluster has not made yet stays: no rule
    // step of the cluster was cut off, so no untagged rule can be the cluster's.
    let cloud = &f.ctx.cloud;
    let lookalike = cloud
        .create_lb_rule(&f.ip_id, &f.network_id, "api-lb", "the owner's", 6443)
        .await
        .unwrap();
    f.run(WorkflowKind::Delete, Step::DeleteRules, 1)
        .await
        .unwrap();
    assert_eq!(
        f.rules().await,
        BTreeSet::from([owners("load-balancer", 6443, 6443, "api-lb")])
    );
    cloud.delete_lb_rule(&lookalike.id).await.unwrap();

    // Now the cluster's load-balancer step made its rule and a forward, and was cancelled by
    // a delete before it could tag them: the delete removes them, and only them.
    f.run(WorkflowKind::Create, Step::Firewall, 1)
        .await
        .unwrap();
    cloud
        .create_lb_rule(
            &f.ip_id,
            &f.network_id,
            "api-lb",
            "LB rule for API access",
            6443,
        )
        .await
        .unwrap();
    cloud
        .create_pf_rule(&f.ip_id, &f.network_id, &f.vm_of(0), 2222, 22)
        .await
        .unwrap();
    let mut steps: Vec<StepRecord> = WorkflowKind::Create
        .steps()
        .iter()
        .take_while(|s| **s != Step::LoadBalancer)
        .map(|s| record(*s, StepStatus::Done, 1))
        .collect();
    steps.push(record(Step::LoadBalancer, StepStatus::Started, 1));
    f.history(WorkflowKind::Create, WorkflowStatus::Cancelled, steps, true);
    f.owners_firewall_rule(6443, 6443, "10.0.0.0/8").await;
    f.run(WorkflowKind::Delete, Step::DeleteRules, 1)
        .await
        .unwrap();
    assert_eq!(
        f.rules().await,
        BTreeSet::from([owners("firewall", 6443, 6443, "10.0.0.0/8")])
    );
    f.stop().await;
}

#[tokio::test]
async fn a_cluster_made_before_rules_were_tagged_is_scaled_and_deleted_by_the_old_port_match() {
    let f = Fixture::start().await;
    f.cluster(true, 1, true).await;
    // What an older controller made: the same rules, untagged.
    let cloud = &f.ctx.cloud;
    cloud
        .create_firewall_rule(&f.ip_id, 6443, 6443)
        .await
        .unwrap();
    cloud
        .create_firewall_rule(&f.ip_id, 2222, 2223)
        .await
        .unwrap();
    cloud
        .create_lb_rule(
            &f.ip_id,
            &f.network_id,
            "api-lb",
            "LB rule for API access",
            6443,
        )
        .await
        .unwrap();
    for ordinal in 0..2 {
        cloud
            .create_pf_rule(
                &f.ip_id,
                &f.network_id,
                &f.vm_of(ordinal),
                2222 + ordinal as u16,
                22,
            )
            .await
            .unwrap();
    }
    f.add_node(2).await;
    f.run(WorkflowKind::Scale, Step::NodeRules, 1)
        .await
        .unwrap();
    assert_eq!(
        f.rules().await,
        BTreeSet::from([
            owners("firewall", 6443, 6443, "0.0.0.0/0"),
            ours("firewall", 2222, 2224, "0.0.0.0/0"),
            owners("load-balancer", 6443, 6443, "api-lb"),
            ours("forward", 2222, 22, ""),
            ours("forward", 2223, 22, ""),
            ours("forward", 2224, 22, ""),
        ]),
        "the old range replaced, the forwards kept (and tagged)"
    );
    let detail = f.run(WorkflowKind::Delete, Step::DeleteRules, 1).await;
    assert_eq!(detail.unwrap(), "6 network rules removed");
    assert!(f.rules().await.is_empty());
    f.stop().await;
}
