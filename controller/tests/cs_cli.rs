//! The unmodified Python `cs` client pointed at the controller: CloudStack's commands pass
//! through, the Kubernetes commands are answered, GET and POST, sync and async.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use cks_fixtures::cs::Cs;
use common::Env;
use sha2::{Digest, Sha256};

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
