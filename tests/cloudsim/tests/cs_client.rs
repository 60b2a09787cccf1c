//! The real Python `cs` client (5.x) against the simulator: signed GET and POST, pagination,
//! an async deploy polled to completion, a bad secret refused.
//!
//! `cs` comes from `$CKS_VENV/bin/cs`, else `<workspace>/target/venv/bin/cs` (made by
//! `scripts/install-deps.sh`), else a venv this test creates with pip.

mod common;

use std::time::Duration;

use cks_fixtures::cs::Cs;
use cloudsim::{SimConfig, Simulator};
use serde_json::Value;

#[tokio::test]
async fn the_python_cs_client_works_against_the_simulator() {
    let scratch = tempfile::tempdir().unwrap();
    let sim = Simulator::start(SimConfig::for_tests()).await.unwrap();
    let keys = sim.user_keys();
    let cs = Cs {
        bin: cks_fixtures::tools::cs_binary(scratch.path()).unwrap(),
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
