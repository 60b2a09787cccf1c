//! Jobs through the API: an operation with nothing to do answers with a job id that polls as
//! succeeded, and writes no job.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::Env;
use serde_json::json;

#[tokio::test]
async fn starting_a_running_cluster_answers_a_job_but_records_none() {
    let env = Env::start().await;
    let (zone, offering, _) = env.zone_and_offerings().await;
    let store = env.controller.as_ref().unwrap().ctx.store.clone();
    for (id, state, command) in [
        ("k-running", "Running", "startKubernetesCluster"),
        ("k-stopped", "Stopped", "stopKubernetesCluster"),
    ] {
        let cluster = json!({
            "id": id, "name": id, "description": "", "zone_id": zone, "version_id": "v",
            "service_offering_id": offering, "template_id": "t",
            "owner": {"account": "admin", "account_id": "a", "domain_id": "d", "domain": "ROOT",
                      "user_id": "u"},
            "control_nodes": 1, "size": 1, "node_root_disk_size": null, "keypair": null,
            "network_id": null, "network_created": false, "network_type": null,
            "external_lb_ip": null, "public_ip_id": null, "server_ip": null, "endpoint": null,
            "registry": null, "state": state, "failure": null, "created": 0
        });
        store
            .insert_cluster(&serde_json::from_value(cluster).unwrap())
            .unwrap();
        let job = env.admin.submit(command, &[("id", id)]).await.unwrap();
        let result = env.wait_job(&env.admin, &job.job_id).await.unwrap();
        // What CKS answers: the cluster for a start, `success` for a stop.
        if command.starts_with("start") {
            assert_eq!(result["kubernetescluster"]["id"], id, "{result}");
            assert_eq!(result["kubernetescluster"]["state"], state, "{result}");
        } else {
            assert_eq!(result["success"], true, "{result}");
        }
        assert!(store.jobs().unwrap().is_empty(), "a job was written");
    }
    env.stop().await;
}
