//! The API boundary as an attacker meets it: one parameter set for the signature and the
//! command (no smuggled duplicates, content types compared as HTTP says), signatures that
//! expire and are accepted once, and ids resolved as the caller may see them.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use cks_controller::cloudstack::sign;
use common::{Env, api_error, create};
use serde_json::Value;

fn expires_in(seconds: u64) -> String {
    sign::format_expires(time::OffsetDateTime::now_utc() + Duration::from_secs(seconds))
}

/// A request signed with the user's keys, as `cs` signs it (version 3, 10 minutes).
fn signed(env: &Env, command: &str, args: &[(&str, &str)]) -> Vec<(String, String)> {
    let keys = env.sim.user_keys();
    cloudsim::signing::signed_params(
        command,
        args,
        &keys.api_key,
        &keys.secret_key,
        Some(&expires_in(600)),
    )
}

async fn get(env: &Env, query: &[(String, String)]) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(env.endpoint())
        .query(query)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn error_text(body: &Value) -> String {
    body.as_object()
        .and_then(|o| o.values().next())
        .and_then(|inner| inner["errortext"].as_str())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_signed_read_cannot_be_turned_into_a_delete_by_a_repeated_parameter() {
    let env = Env::start().await;
    let version = env.add_version("1.33.1", &[]).await;
    let (cluster, _) = create(&env, &env.user, version["id"].as_str().unwrap(), "mine").await;
    // A captured read-only URL, with a second `command` appended (in another case too).
    for extra in ["command", "COMMAND"] {
        let mut query = signed(&env, "listKubernetesClusters", &[("id", &cluster)]);
        query.push((extra.into(), "deleteKubernetesCluster".into()));
        let (status, body) = get(&env, &query).await;
        assert_eq!(status, 431, "{body}");
        assert!(error_text(&body).contains("repeated"), "{body}");
    }
    // The same parameter in the query and in a form body is refused as well.
    let query = signed(&env, "listKubernetesClusters", &[("id", &cluster)]);
    let response = reqwest::Client::new()
        .post(env.endpoint())
        .query(&query)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("command=deleteKubernetesCluster")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 431);
    let listed = env
        .user
        .call("listKubernetesClusters", &[("id", &cluster)])
        .await
        .unwrap();
    assert_eq!(listed["count"], 1, "the cluster is still there: {listed}");
    env.stop().await;
}

#[tokio::test]
async fn a_form_body_is_read_whatever_the_case_of_its_content_type() {
    let env = Env::start().await;
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(signed(&env, "listKubernetesClusters", &[]))
        .finish();
    for content_type in [
        "application/x-www-form-urlencoded",
        "Application/X-WWW-Form-URLEncoded; charset=UTF-8",
    ] {
        let response = reqwest::Client::new()
            .post(env.endpoint())
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap();
        // Answered by the controller (CloudStack does not know the command).
        assert_eq!(status, 200, "{content_type}: {answer}");
        assert!(
            answer.get("listkubernetesclustersresponse").is_some(),
            "{answer}"
        );
    }
    // A body of another type is not silently ignored.
    let response = reqwest::Client::new()
        .post(env.endpoint())
        .header("content-type", "text/plain")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 431);
    env.stop().await;
}

#[tokio::test]
async fn a_state_changing_request_is_accepted_once_and_reads_may_repeat() {
    let env = Env::start().await;
    let version = env.add_version("1.33.1", &[]).await;
    let (cluster, _) = create(&env, &env.user, version["id"].as_str().unwrap(), "once").await;
    let delete = signed(&env, "deleteKubernetesCluster", &[("id", &cluster)]);
    let (status, body) = get(&env, &delete).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&env, &delete).await;
    assert_eq!(status, 401, "the replay was accepted: {body}");
    let read = signed(&env, "listKubernetesClusters", &[("id", &cluster)]);
    for _ in 0..2 {
        let (status, body) = get(&env, &read).await;
        assert_eq!(status, 200, "{body}");
    }
    env.stop().await;
}

#[tokio::test]
async fn legacy_and_long_lived_signatures_are_refused_unless_allowed() {
    let env = Env::start().await;
    let keys = env.sim.user_keys().clone();
    let legacy = cloudsim::signing::signed_params(
        "listKubernetesClusters",
        &[],
        &keys.api_key,
        &keys.secret_key,
        None,
    );
    assert_eq!(get(&env, &legacy).await.0, 401);
    let a_day = cloudsim::signing::signed_params(
        "listKubernetesClusters",
        &[],
        &keys.api_key,
        &keys.secret_key,
        Some(&expires_in(86_400)),
    );
    assert_eq!(get(&env, &a_day).await.0, 401);
    let ten_minutes = signed(&env, "listKubernetesClusters", &[]);
    assert_eq!(get(&env, &ten_minutes).await.0, 200);
    env.stop().await;

    let env = Env::start_tweaked(cloudsim::SimConfig::for_tests(), |config| {
        config.signatures.allow_legacy = true;
        config.signatures.max_validity = Duration::from_secs(2 * 86_400);
    })
    .await;
    let keys = env.sim.user_keys().clone();
    let legacy = cloudsim::signing::signed_params(
        "listKubernetesClusters",
        &[],
        &keys.api_key,
        &keys.secret_key,
        None,
    );
    assert_eq!(get(&env, &legacy).await.0, 200);
    let a_day = cloudsim::signing::signed_params(
        "listKubernetesClusters",
        &[],
        &keys.api_key,
        &keys.secret_key,
        Some(&expires_in(86_400)),
    );
    assert_eq!(get(&env, &a_day).await.0, 200);
    env.stop().await;
}

/// The admin's isolated network, as the victim's.
async fn admins_network(env: &Env, zone: &str) -> String {
    let offerings = env
        .admin
        .call(
            "listNetworkOfferings",
            &[("name", "DefaultIsolatedNetworkOfferingWithSourceNatService")],
        )
        .await
        .unwrap();
    let offering = offerings["networkoffering"][0]["id"].as_str().unwrap();
    let created = env
        .admin
        .call(
            "createNetwork",
            &[
                ("zoneid", zone),
                ("networkofferingid", offering),
                ("name", "victim"),
                ("displaytext", "victim"),
            ],
        )
        .await
        .unwrap();
    created["network"]["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn another_accounts_network_does_not_exist_for_the_caller() {
    let env = Env::start().await;
    let version = env.add_version("1.33.1", &[]).await;
    let (zone, offering, _) = env.zone_and_offerings().await;
    let victim = admins_network(&env, &zone).await;
    let version_id = version["id"].as_str().unwrap();
    let params = [
        ("name", "intruder"),
        ("zoneid", zone.as_str()),
        ("kubernetesversionid", version_id),
        ("serviceofferingid", offering.as_str()),
        ("size", "1"),
        ("networkid", victim.as_str()),
    ];
    let err = api_error(env.user.call("createKubernetesCluster", &params).await, 431);
    assert_eq!(err, "Unable to find network with given ID");
    // Nor can an admin place another account's cluster in it.
    let mut for_user = params.to_vec();
    for_user.push(("account", cloudsim::store::USER_ACCOUNT));
    let err = api_error(
        env.admin.call("createKubernetesCluster", &for_user).await,
        431,
    );
    assert_eq!(err, "Unable to find network with given ID");
    // Nothing was made: no cluster, no rule on the victim's addresses.
    let clusters = env
        .admin
        .call("listKubernetesClusters", &[("listall", "true")])
        .await
        .unwrap();
    assert_eq!(clusters.get("count"), None, "{clusters}");
    env.stop().await;
}
