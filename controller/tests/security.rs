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
async fn a_state_changing_request_acts_once_and_a_replay_gets_the_first_answer() {
    let env = Env::start().await;
    let version = env.add_version("1.33.1", &[]).await;
    let version = version["id"].as_str().unwrap();
    let (zone, offering, _) = env.zone_and_offerings().await;
    let create = signed(
        &env,
        "createKubernetesCluster",
        &[
            ("name", "once"),
            ("zoneid", &zone),
            ("kubernetesversionid", version),
            ("serviceofferingid", &offering),
            ("size", "1"),
        ],
    );
    let (status, first) = get(&env, &create).await;
    assert_eq!(status, 200, "{first}");
    // The same signed request again, and with a parameter's case flipped (CloudStack signs
    // the lower-cased string, so the signature still verifies): the same answer, no second
    // cluster.
    let mut flipped = create.clone();
    for (name, value) in &mut flipped {
        if name == "name" {
            *value = "ONCE".into();
        }
    }
    for replay in [&create, &flipped] {
        let (status, again) = get(&env, replay).await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again, first);
    }
    let listed = env
        .admin
        .call("listKubernetesClusters", &[("listall", "true")])
        .await
        .unwrap();
    assert_eq!(listed["count"], 1, "{listed}");
    let cluster = first["createkubernetesclusterresponse"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Reads are not remembered: each is answered afresh.
    let read = signed(&env, "listKubernetesClusters", &[("id", &cluster)]);
    for _ in 0..2 {
        let (status, body) = get(&env, &read).await;
        assert_eq!(status, 200, "{body}");
    }
    env.stop().await;
}

#[tokio::test]
async fn legacy_and_long_lived_signatures_are_refused_unless_allowed() {
    // (allowed, status): by default both are refused; the operator may allow both.
    for (allowed, status) in [(false, 401), (true, 200)] {
        let env = Env::start_tweaked(cloudsim::SimConfig::for_tests(), |config| {
            if allowed {
                config.signatures.allow_legacy = true;
                config.signatures.max_validity = Duration::from_secs(2 * 86_400);
            }
        })
        .await;
        let keys = env.sim.user_keys().clone();
        for expires in [None, Some(expires_in(86_400))] {
            let query = cloudsim::signing::signed_params(
                "listKubernetesClusters",
                &[],
                &keys.api_key,
                &keys.secret_key,
                expires.as_deref(),
            );
            assert_eq!(get(&env, &query).await.0, status, "expires {expires:?}");
        }
        let ten_minutes = signed(&env, "listKubernetesClusters", &[]);
        assert_eq!(get(&env, &ten_minutes).await.0, 200);
        env.stop().await;
    }
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

/// A new account with `role` (created with `rules`, in order) and its user's signed client.
async fn account_with_role(
    env: &Env,
    name: &str,
    role_type: &str,
    rules: &[(&str, &str)],
) -> cks_controller::cloudstack::CloudStackClient {
    let role = env
        .admin
        .call("createRole", &[("name", name), ("type", role_type)])
        .await
        .unwrap();
    let role_id = role["role"]["id"].as_str().unwrap().to_owned();
    for (rule, permission) in rules {
        env.admin
            .call(
                "createRolePermission",
                &[
                    ("roleid", &role_id),
                    ("rule", rule),
                    ("permission", permission),
                ],
            )
            .await
            .unwrap();
    }
    let account = env
        .admin
        .call(
            "createAccount",
            &[
                ("username", name),
                ("email", "x@example.invalid"),
                ("firstname", name),
                ("lastname", "test"),
                ("password", "unused"),
                ("roleid", &role_id),
            ],
        )
        .await
        .unwrap();
    let user_id = account["account"]["user"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.client_for_user(&user_id).await
}

#[tokio::test]
async fn the_callers_role_rules_decide_what_they_may_run() {
    let env = Env::start().await;
    let version = env.add_version("1.33.1", &[]).await;
    let (cluster, _) = create(&env, &env.user, version["id"].as_str().unwrap(), "theirs").await;

    // A read-only admin: lists everything, fetches no kubeconfig, creates nothing.
    let read_only = account_with_role(
        &env,
        "readonly",
        "Admin",
        &[("list*", "allow"), ("*", "deny")],
    )
    .await;
    let listed = read_only
        .call("listKubernetesClusters", &[("listall", "true")])
        .await
        .unwrap();
    assert_eq!(listed["count"], 1, "{listed}");
    let err = api_error(
        read_only
            .call("getKubernetesClusterConfig", &[("id", &cluster)])
            .await,
        432,
    );
    assert!(err.contains("getKubernetesClusterConfig"), "{err}");
    api_error(
        read_only
            .call("deleteKubernetesCluster", &[("id", &cluster)])
            .await,
        432,
    );
    let apis = read_only.call("listApis", &[]).await.unwrap().to_string();
    assert!(apis.contains("listKubernetesClusters"));
    assert!(!apis.contains("getKubernetesClusterConfig"), "{apis}");

    // A user role that may not create clusters; unmatched commands keep CKS's defaults.
    let restricted = account_with_role(
        &env,
        "restricted",
        "User",
        &[("createKubernetesCluster", "deny")],
    )
    .await;
    let (zone, offering, _) = env.zone_and_offerings().await;
    api_error(
        restricted
            .call(
                "createKubernetesCluster",
                &[
                    ("name", "nope"),
                    ("zoneid", &zone),
                    ("kubernetesversionid", version["id"].as_str().unwrap()),
                    ("serviceofferingid", &offering),
                    ("size", "1"),
                ],
            )
            .await,
        432,
    );
    restricted
        .call("listKubernetesClusters", &[])
        .await
        .unwrap();
    env.stop().await;
}

#[tokio::test]
async fn a_disabled_or_locked_account_is_refused_though_its_user_is_enabled() {
    let env = Env::start().await;
    let accounts = env
        .admin
        .call("listAccounts", &[("name", cloudsim::store::USER_ACCOUNT)])
        .await
        .unwrap();
    let account = accounts["account"][0]["id"].as_str().unwrap().to_owned();
    env.user.call("listKubernetesClusters", &[]).await.unwrap();
    for lock in ["false", "true"] {
        // Through the controller, so its identity cache is dropped at once.
        env.admin
            .call("disableAccount", &[("id", &account), ("lock", lock)])
            .await
            .unwrap();
        api_error(env.user.call("listKubernetesClusters", &[]).await, 401);
        env.admin
            .call("enableAccount", &[("id", &account)])
            .await
            .unwrap();
        env.user.call("listKubernetesClusters", &[]).await.unwrap();
    }
    env.stop().await;
}

#[tokio::test]
async fn another_accounts_job_is_answered_as_an_unknown_one() {
    let env = Env::start().await;
    let version = env.add_version("1.33.1", &[]).await;
    let (_, job) = create(&env, &env.admin, version["id"].as_str().unwrap(), "admins").await;
    let unknown = "00000000-0000-0000-0000-000000000000";
    // The admin's job is the controller's; the unknown id is answered by CloudStack.
    let foreign = api_error(
        env.user
            .call("queryAsyncJobResult", &[("jobid", &job)])
            .await,
        431,
    );
    let missing = api_error(
        env.user
            .call("queryAsyncJobResult", &[("jobid", unknown)])
            .await,
        431,
    );
    assert_eq!(foreign.replace(&job, "ID"), missing.replace(unknown, "ID"));
    env.stop().await;
}

#[tokio::test]
async fn one_key_over_its_budget_is_throttled_without_slowing_another() {
    let env = Env::start().await;
    // A valid key's burst is 40: 100 at once go over it.
    let query = signed(&env, "listKubernetesClusters", &[]);
    let flood = (0..100).map(|_| get(&env, &query));
    let answers = futures_util::future::join_all(flood).await;
    let throttled = answers.iter().filter(|(status, _)| *status == 429).count();
    assert!(
        answers
            .iter()
            .all(|(status, _)| *status == 200 || *status == 429),
        "{answers:?}"
    );
    assert!(
        throttled > 0,
        "100 requests at once stayed within the budget"
    );
    env.admin.call("listKubernetesClusters", &[]).await.unwrap();
    // A request of ours without a signature is refused before anything is looked up.
    let response = reqwest::Client::new()
        .get(env.endpoint())
        .query(&[
            ("command", "queryAsyncJobResult"),
            ("jobid", "x"),
            ("apikey", "k"),
        ])
        .send()
        .await
        .unwrap();
    // Not ours without a signature: CloudStack answers (and refuses) it.
    assert_eq!(response.status().as_u16(), 401);
    env.stop().await;
}

#[tokio::test]
async fn forwarded_requests_from_one_address_are_limited_before_cloudstack_sees_them() {
    let env = Env::start_tweaked(cloudsim::SimConfig::for_tests(), |config| {
        config.api_forward_per_source = Some(2);
    })
    .await;
    env.sim.reset_call_counts();
    // CloudStack's own command: only CloudStack can tell who signed it, so the address
    // pays (burst 4), not the key it claims.
    let query = signed(&env, "listZones", &[]);
    let flood = (0..20).map(|_| get(&env, &query));
    let statuses: Vec<u16> = futures_util::future::join_all(flood)
        .await
        .into_iter()
        .map(|(status, _)| status)
        .collect();
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    assert!(throttled >= 15, "{statuses:?}");
    let forwarded = env.sim.call_counts().get("listZones").copied().unwrap_or(0);
    assert_eq!(
        forwarded,
        20 - throttled as u64,
        "CloudStack saw exactly what was let through: {statuses:?}"
    );
    assert!(forwarded >= 1, "{statuses:?}");
    // The controller's own commands keep their per-key budget.
    env.user.call("listKubernetesClusters", &[]).await.unwrap();
    env.stop().await;
}

#[tokio::test]
async fn one_controller_per_data_directory_and_the_sealing_key_rotates_offline() {
    let mut env = Env::start().await;
    let data = env.dir.path().join("controller");
    let config = common::controller_config(&env.sim, data.clone());
    let running = env.controller.take().unwrap();
    running
        .ctx
        .store
        .put_secret(
            "c1",
            "kubeconfig",
            &running.ctx.sealer.seal("c1", "kubeconfig", b"kc"),
        )
        .unwrap();
    // A second controller, or a rotation, beside the running one is refused.
    let Err(err) = cks_controller::server::start(&config).await else {
        panic!("a second controller started on the same data directory");
    };
    assert!(err.to_string().contains("another cks-controller"), "{err}");
    assert!(cks_controller::reseal::reseal(&data).is_err());
    running.stop().await;
    let old_key = std::fs::read(data.join("secrets.key")).unwrap();
    assert_eq!(cks_controller::reseal::reseal(&data).unwrap(), 1);
    assert_ne!(std::fs::read(data.join("secrets.key")).unwrap(), old_key);
    // The restarted controller opens what was sealed before the rotation.
    let restarted = cks_controller::server::start(&config).await.unwrap();
    let sealed = restarted
        .ctx
        .store
        .secret("c1", "kubeconfig")
        .unwrap()
        .unwrap();
    assert_eq!(
        restarted
            .ctx
            .sealer
            .open("c1", "kubeconfig", &sealed)
            .unwrap(),
        b"kc"
    );
    env.controller = Some(restarted);
    env.stop().await;
}
