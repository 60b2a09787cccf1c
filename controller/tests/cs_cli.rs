//! The unmodified Python `cs` client pointed at the controller: CloudStack's commands pass
//! through, the Kubernetes commands are answered, GET and POST, sync and async.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::Env;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::process::Command;

struct Cs {
    bin: PathBuf,
    home: PathBuf,
    endpoint: String,
    key: String,
    secret: String,
}

impl Cs {
    async fn run(&self, post: bool, args: &[&str]) -> (bool, Value, String) {
        let output = tokio::time::timeout(
            Duration::from_secs(60),
            Command::new(&self.bin)
                .args(args)
                .env_clear()
                .env("HOME", &self.home)
                .env("PATH", "/usr/bin:/bin")
                .env("CLOUDSTACK_ENDPOINT", &self.endpoint)
                .env("CLOUDSTACK_KEY", &self.key)
                .env("CLOUDSTACK_SECRET", &self.secret)
                .env("CLOUDSTACK_METHOD", if post { "post" } else { "get" })
                .output(),
        )
        .await
        .expect("cs timed out")
        .expect("run cs");
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        let value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        (output.status.success(), value, format!("{stdout}{stderr}"))
    }

    async fn ok(&self, post: bool, args: &[&str]) -> Value {
        let (ok, value, text) = self.run(post, args).await;
        assert!(ok, "cs {args:?} failed: {text}");
        value
    }
}

#[tokio::test]
async fn the_python_cs_client_drives_the_controller() {
    let env = Env::start().await;
    let bin = cks_fixtures::tools::cs_binary(env.dir.path()).unwrap();
    let cs = |keys: &cloudsim::Keys| Cs {
        bin: bin.clone(),
        home: env.dir.path().to_path_buf(),
        endpoint: env.endpoint(),
        key: keys.api_key.clone(),
        secret: keys.secret_key.clone(),
    };
    let (admin, user) = (cs(env.sim.admin_keys()), cs(env.sim.user_keys()));

    // CloudStack's own commands through the controller.
    let zones = user.ok(false, &["listZones"]).await;
    let zone = zones["zone"][0]["id"].as_str().unwrap().to_string();
    let offerings = user.ok(true, &["listServiceOfferings"]).await;
    let offering = offerings["serviceoffering"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["cpunumber"] == 2)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // A version, registered with POST.
    let iso = env.dir.path().join("cs.iso");
    std::fs::write(&iso, b"an ISO for cs").unwrap();
    let checksum = format!(
        "{{SHA-256}}{}",
        hex::encode(Sha256::digest(std::fs::read(&iso).unwrap()))
    );
    let added = admin
        .ok(
            true,
            &[
                "addKubernetesSupportedVersion",
                "semanticversion=1.33.1",
                &format!("url=file://{}", iso.display()),
                &format!("checksum={checksum}"),
                "mincpunumber=2",
                "minmemory=2048",
            ],
        )
        .await;
    let version = added["kubernetessupportedversion"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.wait_iso_ready(&version).await;
    let listed = user
        .ok(false, &["listKubernetesSupportedVersions", "keyword=v1.33"])
        .await;
    assert_eq!(listed["count"], 1);

    // A user may not add versions; the error reaches cs as CloudStack's would.
    let (ok, _, text) = user
        .run(
            false,
            &["addKubernetesSupportedVersion", "semanticversion=1.33.2"],
        )
        .await;
    assert!(!ok && text.contains("432"), "{text}");

    // createKubernetesCluster: async-create, answered with id and jobid.
    let created = user
        .ok(
            true,
            &[
                "--async",
                "createKubernetesCluster",
                "name=from-cs",
                &format!("zoneid={zone}"),
                &format!("kubernetesversionid={version}"),
                &format!("serviceofferingid={offering}"),
                "size=1",
            ],
        )
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    let job = created["jobid"].as_str().unwrap().to_string();
    let status = user
        .ok(false, &["queryAsyncJobResult", &format!("jobid={job}")])
        .await;
    assert_eq!(status["jobstatus"], 0);
    assert_eq!(status["jobinstanceid"], id.as_str());
    let clusters = user.ok(false, &["listKubernetesClusters"]).await;
    assert_eq!(clusters["kubernetescluster"][0]["name"], "from-cs");
    assert!(
        ["Created", "Starting"]
            .contains(&clusters["kubernetescluster"][0]["state"].as_str().unwrap()),
        "{clusters}"
    );
    env.stop().await;
}
