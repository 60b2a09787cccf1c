//! What the controller's unit tests share: a [`Context`] over a store, a CloudStack client and
//! agents; a client for the in-process simulator; agents that run no command and report the
//! health a test sets; and the simulator's seeded zone, template and offering with a network.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudsim::{SimConfig, SimHandle, Simulator};
use serde_json::Value;

use crate::agents::{AgentFuture, Agents, HubError, NodeKey, NodeStatus};
use crate::cloud::Cloud;
use crate::cloudstack::{ClientConfig, CloudStackClient};
use crate::context::{Context, NodeDefaults};
use crate::jobs::Jobs;
use crate::pki::NodeIdentity;
use crate::seal::Sealer;
use crate::settings::Settings;
use crate::store::{SqliteStore, Store};

/// A context over `store`, `client` (the controller's admin keys) and `agents`.
pub fn context(
    store: Arc<dyn Store>,
    client: CloudStackClient,
    agents: Arc<dyn Agents>,
) -> Context {
    Context {
        store: store.clone(),
        settings: Settings::new(store.clone()),
        cloud: Cloud::new(client),
        agents,
        sealer: Arc::new(Sealer::ephemeral()),
        jobs: Jobs::new(store),
        nodes: NodeDefaults {
            agent_addresses: vec!["127.0.0.1:8091".into()],
            template: "t".into(),
            enrollment_ttl: Duration::from_secs(3600),
            pod_cidr: "10.244.0.0/16".into(),
            service_cidr: "10.96.0.0/12".into(),
        },
    }
}

/// A fresh in-memory store.
pub fn store() -> Arc<dyn Store> {
    Arc::new(SqliteStore::in_memory().unwrap())
}

/// A client of the simulator with `keys`: no rate limit, and jobs (20 ms there) polled at that
/// pace.
pub fn sim_client(endpoint: &str, keys: &cloudsim::Keys) -> CloudStackClient {
    let mut config = ClientConfig::new(endpoint, keys.api_key.clone(), keys.secret_key.clone());
    config.rate_limit = None;
    config.job_poll.initial_interval = Duration::from_millis(5);
    config.job_poll.max_interval = Duration::from_millis(50);
    CloudStackClient::new(config).unwrap()
}

/// Agents that run no command (each times out) and report, per node name, the health a test
/// set; nodes not set are healthy when `healthy_by_default`, else never heard of.
#[derive(Default)]
pub struct QuietAgents {
    /// Node name → (connected, kubelet Ready).
    pub health: Mutex<HashMap<String, (bool, bool)>>,
    /// What nodes not in `health` report.
    pub healthy_by_default: bool,
}

impl Agents for QuietAgents {
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
        let default = (self.healthy_by_default, self.healthy_by_default);
        let (connected, node_ready) = self
            .health
            .lock()
            .unwrap()
            .get(&node.node_name)
            .copied()
            .unwrap_or(default);
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

/// The simulator with what its seed holds: a zone, an executable template and an offering.
pub struct World {
    /// The simulator.
    pub sim: SimHandle,
    /// Its root admin.
    pub admin: CloudStackClient,
    /// The zone.
    pub zone_id: String,
    /// A template nodes can run.
    pub template_id: String,
    /// A service offering.
    pub offering_id: String,
}

fn first_id(value: &Value, key: &str) -> String {
    value[key][0]["id"].as_str().unwrap().to_string()
}

impl World {
    /// Starts the simulator and reads its seed.
    pub async fn start() -> World {
        let sim = Simulator::start(SimConfig::for_tests()).await.unwrap();
        let admin = sim_client(&sim.endpoint(), sim.admin_keys());
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
        World {
            sim,
            admin,
            zone_id,
            template_id,
            offering_id,
        }
    }

    /// An isolated network named `name` made by `client` (in its account); the `network`
    /// object.
    pub async fn network(&self, client: &CloudStackClient, name: &str) -> Value {
        let offerings = client
            .call(
                "listNetworkOfferings",
                &[("name", "DefaultIsolatedNetworkOfferingWithSourceNatService")],
            )
            .await
            .unwrap();
        let made = client
            .call(
                "createNetwork",
                &[
                    ("zoneid", &self.zone_id),
                    (
                        "networkofferingid",
                        &first_id(&offerings, "networkoffering"),
                    ),
                    ("name", name),
                    ("displaytext", name),
                ],
            )
            .await
            .unwrap();
        made["network"].clone()
    }
}
