//! Helpers shared by the integration tests: a signed Rust client for the simulator.

#![allow(dead_code, missing_docs)]

use std::time::Duration;

use cloudsim::signing;
use serde_json::Value;

/// A signed CloudStack client for one user.
pub struct Client {
    http: reqwest::Client,
    endpoint: String,
    key: String,
    secret: String,
}

impl Client {
    pub fn new(endpoint: &str, keys: &cloudsim::Keys) -> Self {
        Self {
            http: reqwest::Client::new(),
            endpoint: endpoint.to_owned(),
            key: keys.api_key.clone(),
            secret: keys.secret_key.clone(),
        }
    }

    fn signed(&self, command: &str, args: &[(&str, &str)]) -> Vec<(String, String)> {
        signing::signed_params(command, args, &self.key, &self.secret, None)
    }

    /// GET; returns the HTTP status and the object inside `<command>response`.
    pub async fn get(&self, command: &str, args: &[(&str, &str)]) -> (u16, Value) {
        let response = self
            .http
            .get(&self.endpoint)
            .query(&self.signed(command, args))
            .send()
            .await
            .expect("request");
        unwrap_response(command, response).await
    }

    /// Form POST.
    pub async fn post(&self, command: &str, args: &[(&str, &str)]) -> (u16, Value) {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(self.signed(command, args))
            .finish();
        let response = self
            .http
            .post(&self.endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("request");
        unwrap_response(command, response).await
    }

    /// GET that must succeed.
    pub async fn ok(&self, command: &str, args: &[(&str, &str)]) -> Value {
        let (status, body) = self.get(command, args).await;
        assert_eq!(status, 200, "{command} failed: {body}");
        body
    }

    /// Polls `queryAsyncJobResult` until the job is done (bounded).
    pub async fn wait_job(&self, job_id: &str) -> Value {
        for _ in 0..300 {
            let job = self.ok("queryAsyncJobResult", &[("jobid", job_id)]).await;
            if job["jobstatus"] != 0 {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("job {job_id} did not finish");
    }

    /// Runs an async command and waits for a successful job; returns the job's `jobresult`.
    pub async fn run(&self, command: &str, args: &[(&str, &str)]) -> Value {
        let submitted = self.ok(command, args).await;
        let job = self
            .wait_job(submitted["jobid"].as_str().expect("jobid"))
            .await;
        assert_eq!(job["jobstatus"], 1, "{command} job failed: {job}");
        job["jobresult"].clone()
    }
}

async fn unwrap_response(command: &str, response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let mut body: Value = response.json().await.expect("json body");
    let key = format!("{}response", command.to_lowercase());
    let inner = body
        .get_mut(&key)
        .map(Value::take)
        .unwrap_or_else(|| panic!("no {key} in {body}"));
    (status, inner)
}

/// Ids of the seeded zone, the 2 vCPU offering and the template.
pub async fn seeded_ids(client: &Client) -> (String, String, String) {
    let zones = client.ok("listZones", &[]).await;
    let offerings = client
        .ok("listServiceOfferings", &[("name", "Medium Instance")])
        .await;
    let templates = client
        .ok("listTemplates", &[("templatefilter", "executable")])
        .await;
    let id = |v: &Value, key: &str| v[key][0]["id"].as_str().expect("id").to_owned();
    (
        id(&zones, "zone"),
        id(&offerings, "serviceoffering"),
        id(&templates, "template"),
    )
}

/// Creates an isolated Kubernetes network for the client's account.
pub async fn create_network(client: &Client, zone: &str, name: &str) -> String {
    let offerings = client
        .ok(
            "listNetworkOfferings",
            &[("name", "DefaultNetworkOfferingforKubernetesService")],
        )
        .await;
    let offering = offerings["networkoffering"][0]["id"]
        .as_str()
        .expect("offering");
    let network = client
        .ok(
            "createNetwork",
            &[
                ("name", name),
                ("networkofferingid", offering),
                ("zoneid", zone),
            ],
        )
        .await;
    network["network"]["id"]
        .as_str()
        .expect("network id")
        .to_owned()
}

/// Deploys a VM on `network` and waits until it runs; returns its id.
pub async fn deploy(client: &Client, network: &str, name: &str) -> String {
    let (zone, offering, template) = seeded_ids(client).await;
    let result = client
        .run(
            "deployVirtualMachine",
            &[
                ("zoneid", &zone),
                ("serviceofferingid", &offering),
                ("templateid", &template),
                ("networkids", network),
                ("name", name),
            ],
        )
        .await;
    assert_eq!(result["virtualmachine"]["state"], "Running", "{result}");
    result["virtualmachine"]["id"]
        .as_str()
        .expect("vm id")
        .to_owned()
}
