//! `listKubernetesClusterEvents`: a cluster's history tells an operator why it is where it
//! is, without logs, and only to those who may see the cluster.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::{Env, api_error, create};
use serde_json::Value;

fn events(body: &Value) -> Vec<Value> {
    body["kubernetesclusterevent"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_clusters_events_say_what_each_step_did_and_why_the_operation_failed() {
    let env = Env::start().await;
    // No node enrolls here (no agents): the create runs out of time at init.
    env.admin
        .call(
            "updateConfiguration",
            &[
                ("name", "cloud.kubernetes.cluster.start.timeout"),
                ("value", "12"),
            ],
        )
        .await
        .unwrap();
    let version = env.add_version("1.33.1", &[]).await;
    let (id, job) = create(&env, &env.user, version["id"].as_str().unwrap(), "doomed").await;
    env.wait_job(&env.user, &job)
        .await
        .expect_err("create must fail");

    let body = env
        .user
        .call("listKubernetesClusterEvents", &[("id", &id)])
        .await
        .unwrap();
    let all = events(&body);
    assert_eq!(body["count"].as_u64(), Some(all.len() as u64));
    // Newest first: how the create ended, with the reason, then its steps, then its start.
    let end = &all[0];
    assert_eq!(end["operation"], "create", "{end}");
    assert_eq!(end["state"], "Failed");
    assert_eq!(end["level"], "ERROR");
    assert_eq!(end["jobid"], job.as_str());
    assert_eq!(end["kubernetesclustername"], "doomed");
    assert!(
        end["description"]
            .as_str()
            .unwrap()
            .contains("init-control-plane"),
        "{end}"
    );
    let began = all.last().unwrap();
    assert_eq!(began["state"], "Started");
    assert_eq!(began["description"], "create began");
    let created: Vec<&str> = all.iter().map(|e| e["created"].as_str().unwrap()).collect();
    assert!(
        created.windows(2).all(|w| w[0] >= w[1]),
        "not newest first: {created:?}"
    );
    let step = |name: &str| {
        all.iter()
            .find(|e| e["step"] == name)
            .unwrap_or_else(|| panic!("no {name} event in {all:#?}"))
    };
    let network = step("network");
    assert_eq!(network["state"], "Completed");
    assert!(network["attempts"].as_u64().unwrap() >= 1);
    assert!(!network["description"].as_str().unwrap().is_empty());
    let init = step("init-control-plane");
    assert_eq!(init["state"], "Failed");
    assert_eq!(init["level"], "ERROR");

    // Paged as CloudStack pages: the count is the whole history.
    let page = env
        .user
        .call(
            "listKubernetesClusterEvents",
            &[("id", &id), ("page", "1"), ("pagesize", "2")],
        )
        .await
        .unwrap();
    assert_eq!(page["count"], body["count"]);
    assert_eq!(events(&page), all[..2].to_vec());

    // Another account's cluster has no history for the caller: it does not exist.
    let other = env
        .admin
        .call(
            "createAccount",
            &[
                ("username", "mallory"),
                ("email", "m@example.invalid"),
                ("firstname", "m"),
                ("lastname", "m"),
                ("password", "unused"),
            ],
        )
        .await
        .unwrap();
    let other = env
        .client_for_user(other["account"]["user"][0]["id"].as_str().unwrap())
        .await;
    let err = api_error(
        other
            .call("listKubernetesClusterEvents", &[("id", &id)])
            .await,
        431,
    );
    assert_eq!(
        err,
        format!("Unable to find Kubernetes cluster with ID: {id}")
    );
    env.stop().await;
}
