//! The real Python `cs` client (5.x) against the simulator: signed GET and POST, pagination,
//! an async deploy polled to completion, a bad secret refused.
//!
//! `cs` comes from `$CKS_VENV/bin/cs`, else `<workspace>/target/venv/bin/cs` (made by
//! `scripts/install-deps.sh`), else a venv this test creates with pip.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use cloudsim::{SimConfig, Simulator};
use serde_json::Value;
use tokio::process::Command;

fn cs_binary(scratch: &std::path::Path) -> PathBuf {
    let workspace_venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/venv");
    let candidates = std::env::var_os("CKS_VENV")
        .map(PathBuf::from)
        .into_iter()
        .chain([workspace_venv]);
    for venv in candidates {
        let cs = venv.join("bin/cs");
        if cs.exists() {
            return cs;
        }
    }
    let venv = scratch.join("venv");
    let status = std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("python3 -m venv");
    assert!(status.success(), "creating a venv failed");
    let status = std::process::Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "cs"])
        .status()
        .expect("pip install cs");
    assert!(
        status.success(),
        "pip install cs failed; run scripts/install-deps.sh"
    );
    venv.join("bin/cs")
}

struct Cs {
    bin: PathBuf,
    home: PathBuf,
    endpoint: String,
    key: String,
    secret: String,
}

impl Cs {
    /// Runs `cs <args>`; returns success and the parsed stdout (or stderr on failure).
    async fn run(&self, post: bool, args: &[&str]) -> (bool, Value, String) {
        let output = tokio::time::timeout(
            Duration::from_secs(30),
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
        let shown: String = format!("{args:?}").chars().take(300).collect();
        let text: String = text.chars().take(2000).collect();
        assert!(ok, "cs {shown} failed: {text}");
        value
    }
}

#[tokio::test]
async fn the_python_cs_client_works_against_the_simulator() {
    let scratch = tempfile::tempdir().unwrap();
    let sim = Simulator::start(SimConfig::for_tests()).await.unwrap();
    let keys = sim.user_keys();
    let cs = Cs {
        bin: cs_binary(scratch.path()),
        home: scratch.path().to_owned(),
        endpoint: sim.endpoint(),
        key: keys.api_key.clone(),
        secret: keys.secret_key.clone(),
    };

    // Signed GET.
    let zones = cs.ok(false, &["listZones"]).await;
    assert_eq!(zones["count"], 1, "{zones}");
    let zone = zones["zone"][0]["id"].as_str().unwrap().to_owned();

    // Pagination: 3 offerings, pages of 2.
    let page = cs
        .ok(false, &["listServiceOfferings", "page=2", "pagesize=2"])
        .await;
    assert_eq!(page["count"], 3);
    assert_eq!(page["serviceoffering"].as_array().unwrap().len(), 1);
    let (ok, _, text) = cs.run(false, &["listServiceOfferings", "pagesize=2"]).await;
    assert!(!ok && text.contains("431"), "{text}");

    // POST deploy with userdata, polled with queryAsyncJobResult.
    let offering = cs
        .ok(false, &["listServiceOfferings", "name=Medium Instance"])
        .await["serviceoffering"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let template = cs
        .ok(false, &["listTemplates", "templatefilter=executable"])
        .await["template"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let net_offering = cs
        .ok(
            false,
            &[
                "listNetworkOfferings",
                "name=DefaultNetworkOfferingforKubernetesService",
            ],
        )
        .await["networkoffering"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let network = cs
        .ok(
            true,
            &[
                "createNetwork",
                "name=cluster-1-network",
                &format!("networkofferingid={net_offering}"),
                &format!("zoneid={zone}"),
            ],
        )
        .await["network"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let userdata = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        "#cloud-config\n".repeat(400),
    );
    let submitted = cs
        .ok(
            true,
            &[
                "--async",
                "deployVirtualMachine",
                &format!("zoneid={zone}"),
                &format!("serviceofferingid={offering}"),
                &format!("templateid={template}"),
                &format!("networkids={network}"),
                "name=control-1",
                &format!("userdata={userdata}"),
            ],
        )
        .await;
    let job_id = submitted["jobid"].as_str().expect("jobid").to_owned();
    assert!(submitted["id"].is_string(), "{submitted}");
    let mut job = Value::Null;
    for _ in 0..50 {
        job = cs
            .ok(false, &["queryAsyncJobResult", &format!("jobid={job_id}")])
            .await;
        if job["jobstatus"] != 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(job["jobstatus"], 1, "{job}");
    assert_eq!(job["jobresult"]["virtualmachine"]["state"], "Running");
    assert_eq!(job["jobresult"]["virtualmachine"]["name"], "control-1");

    // Values with `~`, `*` and spaces sign the way cs signs them.
    let tagged = cs
        .ok(
            false,
            &["listVirtualMachines", "name=control-1", "keyword=control"],
        )
        .await;
    assert_eq!(tagged["count"], 1);
    cs.ok(false, &["listVirtualMachines", "keyword=a~b*c d"])
        .await;

    // A bad secret is refused with 401.
    let bad = Cs {
        secret: "not-the-secret".into(),
        ..cs
    };
    let (ok, _, text) = bad.run(false, &["listZones"]).await;
    assert!(!ok, "{text}");
    assert!(text.contains("401"), "{text}");
}
