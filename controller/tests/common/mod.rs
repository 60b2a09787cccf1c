//! A controller in front of the CloudStack simulator, both on 127.0.0.1, and signed clients for
//! an admin and a user.

#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use cks_controller::cloudstack::{ClientConfig, CloudStackClient, CloudStackError};
use cks_controller::config::Config;
use cks_controller::server::{self, Running};
use cloudsim::{SimConfig, SimHandle, Simulator};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

pub struct Env {
    pub sim: SimHandle,
    pub controller: Option<Running>,
    pub admin: CloudStackClient,
    pub user: CloudStackClient,
    pub dir: tempfile::TempDir,
}

pub fn client(endpoint: &str, keys: &cloudsim::Keys) -> CloudStackClient {
    let mut config = ClientConfig::new(endpoint, keys.api_key.clone(), keys.secret_key.clone());
    config.rate_limit = None;
    CloudStackClient::new(config).unwrap()
}

pub fn controller_config(sim: &SimHandle, data_dir: PathBuf) -> Config {
    let keys = sim.admin_keys();
    let file = format!(
        "data_dir = {data_dir:?}\n[cloudstack]\nendpoint = {:?}\napi_key = {:?}\nsecret_key = {:?}\n\
         [api]\nlisten = \"127.0.0.1:0\"\n[agents]\nlisten = \"127.0.0.1:0\"\n",
        sim.endpoint(),
        keys.api_key,
        keys.secret_key
    );
    Config::from_sources(None, Some(&file), &HashMap::new()).unwrap()
}

impl Env {
    pub async fn start() -> Env {
        Self::start_with(SimConfig::for_tests()).await
    }

    pub async fn start_with(config: SimConfig) -> Env {
        Self::start_tweaked(config, |_| {}).await
    }

    /// A stack whose controller configuration `tweak` changes first.
    pub async fn start_tweaked(config: SimConfig, tweak: impl FnOnce(&mut Config)) -> Env {
        let sim = Simulator::start(config).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut controller_config = controller_config(&sim, dir.path().join("controller"));
        tweak(&mut controller_config);
        let controller = server::start(&controller_config).await.unwrap();
        let endpoint = format!("http://{}/client/api", controller.api_addr);
        let admin = client(&endpoint, sim.admin_keys());
        let user = client(&endpoint, sim.user_keys());
        Env {
            sim,
            controller: Some(controller),
            admin,
            user,
            dir,
        }
    }

    pub fn endpoint(&self) -> String {
        format!(
            "http://{}/client/api",
            self.controller.as_ref().unwrap().api_addr
        )
    }

    /// The simulator's first zone, the 2 vCPU / 2 GB offering and the 1 vCPU one.
    pub async fn zone_and_offerings(&self) -> (String, String, String) {
        let zones = self.admin.call("listZones", &[]).await.unwrap();
        let zone = zones["zone"][0]["id"].as_str().unwrap().to_string();
        let offerings = self.admin.call("listServiceOfferings", &[]).await.unwrap();
        let find = |cpu: u64| {
            offerings["serviceoffering"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["cpunumber"] == cpu)
                .map(|o| o["id"].as_str().unwrap().to_string())
                .unwrap()
        };
        (zone, find(2), find(1))
    }

    /// Registers a version whose ISO is a small file (the simulator downloads and checks it).
    pub async fn add_version(&self, semver: &str, extra: &[(&str, &str)]) -> Value {
        let iso = self.dir.path().join(format!("iso-{semver}.iso"));
        std::fs::write(&iso, format!("not really an ISO {semver}")).unwrap();
        let checksum = format!(
            "{{SHA-256}}{}",
            hex::encode(Sha256::digest(std::fs::read(&iso).unwrap()))
        );
        let url = format!("file://{}", iso.display());
        let mut params = vec![
            ("semanticversion", semver),
            ("url", url.as_str()),
            ("checksum", checksum.as_str()),
            ("mincpunumber", "2"),
            ("minmemory", "2048"),
        ];
        // A parameter given twice is refused: `extra` replaces the defaults.
        params.retain(|(name, _)| !extra.iter().any(|(e, _)| e == name));
        params.extend_from_slice(extra);
        let out = self
            .admin
            .call("addKubernetesSupportedVersion", &params)
            .await
            .unwrap();
        let version = out["kubernetessupportedversion"].clone();
        self.wait_iso_ready(version["id"].as_str().unwrap()).await;
        version
    }

    pub async fn wait_iso_ready(&self, version_id: &str) {
        for _ in 0..500 {
            let list = self
                .admin
                .call("listKubernetesSupportedVersions", &[("id", version_id)])
                .await
                .unwrap();
            if list["kubernetessupportedversion"][0]["isostate"] == "Ready" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("ISO of version {version_id} never became Ready");
    }

    pub async fn wait_job(
        &self,
        client: &CloudStackClient,
        job_id: &str,
    ) -> Result<Value, CloudStackError> {
        client
            .wait_job(job_id, Instant::now() + Duration::from_secs(120))
            .await
    }

    /// A signed client for user `user_id` (from `createAccount`), whose keys the admin
    /// registers now.
    pub async fn client_for_user(&self, user_id: &str) -> CloudStackClient {
        let keys = self
            .admin
            .call("registerUserKeys", &[("id", user_id)])
            .await
            .unwrap();
        let keys = cloudsim::Keys {
            user_id: user_id.to_owned(),
            api_key: keys["userkeys"]["apikey"].as_str().unwrap().to_owned(),
            secret_key: keys["userkeys"]["secretkey"].as_str().unwrap().to_owned(),
        };
        client(&self.endpoint(), &keys)
    }

    pub async fn stop(mut self) {
        if let Some(controller) = self.controller.take() {
            controller.stop().await;
        }
        self.sim.shutdown().await;
    }
}

/// The errortext of a refused call, asserting its code.
#[track_caller]
pub fn api_error(result: Result<Value, CloudStackError>, code: u16) -> String {
    match result {
        Err(CloudStackError::Api {
            errorcode,
            errortext,
            ..
        }) => {
            assert_eq!(errorcode, code, "{errortext}");
            errortext
        }
        other => panic!("expected error {code}, got {other:?}"),
    }
}

/// Creates a cluster as `client`; returns (cluster id, job id).
pub async fn create(
    env: &Env,
    client: &cks_controller::cloudstack::CloudStackClient,
    version: &str,
    name: &str,
) -> (String, String) {
    let (zone, offering, _) = env.zone_and_offerings().await;
    let job = client
        .submit(
            "createKubernetesCluster",
            &[
                ("name", name),
                ("zoneid", &zone),
                ("kubernetesversionid", version),
                ("serviceofferingid", &offering),
                ("size", "1"),
            ],
        )
        .await
        .unwrap();
    (job.id.unwrap(), job.job_id)
}
