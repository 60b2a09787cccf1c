//! The controller's API against the CloudStack simulator (no nodes join here; see the e2e tests
//! for whole clusters): drop-in forwarding, identity and signatures, versions, settings,
//! ownership, clean-up of a cluster whose creation failed, and what a list costs CloudStack.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Env, api_error, client, create};
use serde_json::Value;

#[tokio::test]
async fn other_commands_are_forwarded_to_cloudstack_unchanged() {
    let env = Env::start().await;
    let zones = env.user.call("listZones", &[]).await.unwrap();
    assert_eq!(zones["count"], 1);
    assert_eq!(zones["zone"][0]["name"], "zone1");
    // CloudStack's own error answers come back as they are.
    let err = api_error(env.user.call("listNoSuchThings", &[]).await, 432);
    assert!(err.contains("listNoSuchThings"), "{err}");
    // listApis: CloudStack's commands plus ours, the admin-only ones hidden from users.
    let apis = env.user.call("listApis", &[]).await.unwrap();
    let names: Vec<&str> = apis["api"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert!(names.contains(&"createKubernetesCluster"), "{names:?}");
    assert!(!names.contains(&"addKubernetesSupportedVersion"));
    assert!(
        names.contains(&"listZones"),
        "CloudStack's own are listed too"
    );
    let one = env
        .user
        .call("listApis", &[("name", "createKubernetesCluster")])
        .await
        .unwrap();
    assert_eq!(one["count"], 1);
    assert_eq!(one["api"][0]["isasync"], true);
    env.stop().await;
}

#[tokio::test]
async fn a_wrong_or_expired_signature_is_refused_with_401() {
    let env = Env::start().await;
    let mut keys = env.sim.user_keys().clone();
    keys.secret_key = "not-the-secret".into();
    let forged = client(&env.endpoint(), &keys);
    api_error(forged.call("listKubernetesClusters", &[]).await, 401);
    // Forwarded commands are refused by CloudStack itself.
    api_error(forged.call("listZones", &[]).await, 401);
    // An expired request, signed correctly.
    let params = cloudsim::signing::signed_params(
        "listKubernetesClusters",
        &[],
        &env.sim.user_keys().api_key,
        &env.sim.user_keys().secret_key,
        Some("2020-01-01T00:00:00+0000"),
    );
    let response = reqwest::Client::new()
        .get(env.endpoint())
        .query(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["listkubernetesclustersresponse"]["errorcode"], 401);
    // An unknown key.
    keys.api_key = "unknown".into();
    api_error(
        client(&env.endpoint(), &keys)
            .call("listKubernetesClusters", &[])
            .await,
        401,
    );
    env.stop().await;
}

#[tokio::test]
async fn versions_are_added_listed_updated_and_deleted_as_cks_does() {
    let env = Env::start().await;
    let (zone, _, _) = env.zone_and_offerings().await;
    let v1 = env.add_version("1.32.3", &[]).await;
    assert_eq!(v1["name"], "v1.32.3");
    assert_eq!(v1["isoname"], "v1.32.3-Kubernetes-Binaries-ISO");
    assert_eq!(v1["state"], "Enabled");
    assert_eq!(v1["supportsha"], true);
    assert_eq!(v1["mincpunumber"], 2);
    let v2 = env.add_version("1.33.1", &[("zoneid", &zone)]).await;
    assert_eq!(v2["name"], "v1.33.1-zone1");
    assert_eq!(v2["zonename"], "zone1");

    // Users list them too; newest first; the minimum filter counts right.
    let all = env
        .user
        .call("listKubernetesSupportedVersions", &[])
        .await
        .unwrap();
    assert_eq!(all["count"], 2);
    assert_eq!(
        all["kubernetessupportedversion"][0]["semanticversion"],
        "1.33.1"
    );
    let newer = env
        .user
        .call(
            "listKubernetesSupportedVersions",
            &[
                ("minimumsemanticversion", "1.33.0"),
                ("page", "1"),
                ("pagesize", "1"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(newer["count"], 1);
    let none = env
        .user
        .call("listKubernetesSupportedVersions", &[("keyword", "nothing")])
        .await
        .unwrap();
    assert_eq!(none, serde_json::json!({}));
    api_error(
        env.user
            .call(
                "listKubernetesSupportedVersions",
                &[
                    ("minimumsemanticversion", "1.0.0"),
                    ("minimumkubernetesversionid", v1["id"].as_str().unwrap()),
                ],
            )
            .await,
        431,
    );

    // Admin only.
    let id = v1["id"].as_str().unwrap();
    api_error(
        env.user
            .call(
                "updateKubernetesSupportedVersion",
                &[("id", id), ("state", "Disabled")],
            )
            .await,
        432,
    );
    let text = api_error(
        env.admin
            .call(
                "updateKubernetesSupportedVersion",
                &[("id", id), ("state", "disabled")],
            )
            .await,
        431,
    );
    assert_eq!(text, "Invalid value for state parameter");
    // CloudStack signs the lower-cased parameters, so the same request with `Disabled` signed
    // in the same second carries the same signature, and a state-changing signed request acts
    // once (the same one again gets the first answer): the next second's is another.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let updated = env
        .admin
        .call(
            "updateKubernetesSupportedVersion",
            &[("id", id), ("state", "Disabled")],
        )
        .await
        .unwrap();
    assert_eq!(updated["kubernetessupportedversion"]["state"], "Disabled");

    // Delete: async, the ISO goes too.
    let iso_id = v1["isoid"].as_str().unwrap().to_string();
    let job = env
        .admin
        .submit("deleteKubernetesSupportedVersion", &[("id", id)])
        .await
        .unwrap();
    let result = env.wait_job(&env.admin, &job.job_id).await.unwrap();
    assert_eq!(result["success"], true);
    let isos = env
        .admin
        .call("listIsos", &[("id", &iso_id), ("isofilter", "all")])
        .await;
    assert!(
        isos.as_ref().map_or(true, |v| v.get("iso").is_none()),
        "ISO still there: {isos:?}"
    );
    env.stop().await;
}

#[tokio::test]
async fn version_validation_uses_cks_texts() {
    let env = Env::start().await;
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[
                ("semanticversion", "1.33.1"),
                ("mincpunumber", "1"),
                ("minmemory", "2048"),
                ("url", "http://x/i.iso"),
            ],
            "Invalid value for mincpunumber parameter. Minimum 2 vCPUs required.",
        ),
        (
            &[
                ("semanticversion", "1.33.1"),
                ("mincpunumber", "2"),
                ("minmemory", "1024"),
                ("url", "http://x/i.iso"),
            ],
            "Invalid value for minmemory parameter. Minimum 2048MB memory required",
        ),
        (
            &[
                ("semanticversion", "1.10.0"),
                ("mincpunumber", "2"),
                ("minmemory", "2048"),
                ("url", "http://x/i.iso"),
            ],
            "New supported Kubernetes version cannot be added as 1.11.0 is minimum version supported by Kubernetes Service",
        ),
        (
            &[
                ("semanticversion", "1.33"),
                ("mincpunumber", "2"),
                ("minmemory", "2048"),
                ("url", "http://x/i.iso"),
            ],
            "Invalid version format, 1.33. Semantic version should be specified in MAJOR.MINOR.PATCH format",
        ),
        (
            &[
                ("semanticversion", "1.33.1"),
                ("mincpunumber", "2"),
                ("minmemory", "2048"),
            ],
            "Invalid URL for ISO specified, ",
        ),
        (
            &[("mincpunumber", "2"), ("minmemory", "2048")],
            "Unable to execute API command addkubernetessupportedversion due to missing parameter semanticversion",
        ),
    ];
    for (params, expected) in cases {
        let text = api_error(
            env.admin
                .call("addKubernetesSupportedVersion", params)
                .await,
            431,
        );
        assert_eq!(&text, expected);
    }
    env.stop().await;
}

#[tokio::test]
async fn settings_are_listed_updated_and_the_service_can_be_switched_off() {
    let env = Env::start().await;
    let list = env
        .admin
        .call(
            "listConfigurations",
            &[("name", "cloud.kubernetes.cluster.max.size")],
        )
        .await
        .unwrap();
    assert_eq!(list["configuration"][0]["value"], "10");
    // Merged with CloudStack's own settings.
    let merged = env
        .admin
        .call("listConfigurations", &[("keyword", "page.size")])
        .await
        .unwrap();
    assert_eq!(merged["configuration"][0]["name"], "default.page.size");
    let kubernetes = env
        .admin
        .call("listConfigurations", &[("keyword", "cloud.kubernetes")])
        .await
        .unwrap();
    // Exactly CKS's fifteen settings and our reconciler's interval, each once (and none of
    // CloudStack's own twice).
    let mut names: Vec<&str> = kubernetes["configuration"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "cloud.kubernetes.cluster.add.node.timeout",
            "cloud.kubernetes.cluster.experimental.features.enabled",
            "cloud.kubernetes.cluster.max.size",
            "cloud.kubernetes.cluster.network.offering",
            "cloud.kubernetes.cluster.reconcile.interval",
            "cloud.kubernetes.cluster.remove.node.timeout",
            "cloud.kubernetes.cluster.scale.timeout",
            "cloud.kubernetes.cluster.start.timeout",
            "cloud.kubernetes.cluster.upgrade.retries",
            "cloud.kubernetes.cluster.upgrade.timeout",
            "cloud.kubernetes.control.node.install.attempt.wait.duration",
            "cloud.kubernetes.control.node.install.reattempt.count",
            "cloud.kubernetes.etcd.node.start.port",
            "cloud.kubernetes.service.enabled",
            "cloud.kubernetes.worker.node.install.attempt.wait.duration",
            "cloud.kubernetes.worker.node.install.reattempt.count",
        ]
    );
    assert_eq!(kubernetes["count"], 16);

    api_error(
        env.admin
            .call(
                "updateConfiguration",
                &[
                    ("name", "cloud.kubernetes.cluster.max.size"),
                    ("value", "many"),
                ],
            )
            .await,
        431,
    );
    api_error(
        env.user
            .call(
                "updateConfiguration",
                &[
                    ("name", "cloud.kubernetes.service.enabled"),
                    ("value", "false"),
                ],
            )
            .await,
        432,
    );
    env.admin
        .call(
            "updateConfiguration",
            &[
                ("name", "cloud.kubernetes.service.enabled"),
                ("value", "false"),
            ],
        )
        .await
        .unwrap();
    api_error(env.user.call("listKubernetesClusters", &[]).await, 432);
    let apis = env.user.call("listApis", &[]).await.unwrap();
    assert!(
        !apis.to_string().contains("KubernetesCluster"),
        "commands still listed"
    );
    env.stop().await;
}

#[tokio::test]
async fn users_see_and_delete_only_their_own_clusters() {
    let env = Env::start().await;
    let version = env.add_version("1.33.1", &[]).await;
    let version = version["id"].as_str().unwrap();
    let (admins, _) = create(&env, &env.admin, version, "admins").await;
    let (users, users_create) = create(&env, &env.user, version, "users").await;

    let seen = env.user.call("listKubernetesClusters", &[]).await.unwrap();
    assert_eq!(seen["count"], 1);
    assert_eq!(seen["kubernetescluster"][0]["id"], users.as_str());
    assert_eq!(seen["kubernetescluster"][0]["account"], "user");
    assert_eq!(seen["kubernetescluster"][0]["domain"], "ROOT");
    // Another account's cluster is answered as an unknown one: same code, same text.
    let unknown = "00000000-0000-0000-0000-000000000000";
    for command in [
        "getKubernetesClusterConfig",
        "deleteKubernetesCluster",
        "stopKubernetesCluster",
        "startKubernetesCluster",
        "scaleKubernetesCluster",
    ] {
        let foreign = api_error(
            env.user
                .call(command, &[("id", &admins), ("size", "2")])
                .await,
            431,
        );
        let missing = api_error(
            env.user
                .call(command, &[("id", unknown), ("size", "2")])
                .await,
            431,
        );
        assert_eq!(
            foreign.replace(&admins, "ID"),
            missing.replace(unknown, "ID"),
            "{command}"
        );
    }
    // Admins see their own, and everyone's with listall.
    let own = env.admin.call("listKubernetesClusters", &[]).await.unwrap();
    assert_eq!(own["count"], 1);
    let all = env
        .admin
        .call("listKubernetesClusters", &[("listall", "true")])
        .await
        .unwrap();
    assert_eq!(all["count"], 2);
    // Still being set up: no config yet.
    let text = api_error(
        env.user
            .call("getKubernetesClusterConfig", &[("id", &users)])
            .await,
        530,
    );
    assert!(text.contains("Setup is in progress"), "{text}");

    // The user deletes their own cluster while it is Starting (unlike CKS, which refuses and
    // leaves it wedged): wait until its create has made the VMs and the rules and waits for the
    // first node (no agent runs here, so it waits until deleted).
    let mut starting = Value::Null;
    for _ in 0..600 {
        let listed = env
            .user
            .call("listKubernetesClusters", &[("id", &users)])
            .await
            .unwrap();
        starting = listed["kubernetescluster"][0].clone();
        if starting["progress"]["step"] == "init-control-plane" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(starting["state"], "Starting", "{starting:#}");
    assert_eq!(
        starting["progress"]["step"], "init-control-plane",
        "{starting:#}"
    );
    let vms: Vec<String> = starting["virtualmachines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| vm["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(vms.len(), 2, "{starting:#}");
    let network = starting["networkid"].as_str().unwrap().to_string();
    let rules_before = rules(&env.user, Some(&network)).await;
    assert!(
        rules_before
            .iter()
            .any(|(kind, _)| kind == "loadbalancerrule"),
        "{rules_before:?}"
    );
    assert!(
        rules_before.iter().any(|(kind, _)| kind == "firewallrule"),
        "{rules_before:?}"
    );

    let job = env
        .user
        .submit("deleteKubernetesCluster", &[("id", &users)])
        .await
        .unwrap();
    let result = env.wait_job(&env.user, &job.job_id).await.unwrap();
    assert_eq!(result["success"], true, "{result}");
    // The create's job fails, saying why.
    let err = env
        .wait_job(&env.user, &users_create)
        .await
        .expect_err("the cancelled create's job fails");
    assert!(err.to_string().contains("being deleted"), "{err}");
    // The user's cluster, its VMs, rules and network are gone; the admin's cluster is not.
    let listed = env.user.call("listKubernetesClusters", &[]).await.unwrap();
    assert_eq!(listed, serde_json::json!({}));
    for vm in &vms {
        let found = env
            .admin
            .call("listVirtualMachines", &[("id", vm), ("listall", "true")])
            .await
            .unwrap();
        assert!(found.get("virtualmachine").is_none(), "{found}");
    }
    let rules_after = rules(&env.admin, None).await;
    assert!(
        rules_before.iter().all(|rule| !rules_after.contains(rule)),
        "rules left: {rules_after:?} of {rules_before:?}"
    );
    let networks = env.user.call("listNetworks", &[]).await.unwrap();
    assert!(
        !networks.to_string().contains(&network),
        "network left: {networks}"
    );
    let all = env
        .admin
        .call("listKubernetesClusters", &[("listall", "true")])
        .await
        .unwrap();
    assert_eq!(all["count"], 1, "{all}");
    assert_eq!(all["kubernetescluster"][0]["id"], admins.as_str());
    env.stop().await;
}

/// Every firewall, port forwarding and load balancer rule `client` sees (on `network` only if
/// given), as (kind, id).
async fn rules(
    client: &cks_controller::cloudstack::CloudStackClient,
    network: Option<&str>,
) -> Vec<(String, String)> {
    let mut rules = Vec::new();
    for (command, kind) in [
        ("listFirewallRules", "firewallrule"),
        ("listPortForwardingRules", "portforwardingrule"),
        ("listLoadBalancerRules", "loadbalancerrule"),
    ] {
        let mut params = vec![("listall", "true")];
        params.extend(network.map(|n| ("networkid", n)));
        let listed = client.call(command, &params).await.unwrap();
        for rule in listed[kind].as_array().into_iter().flatten() {
            rules.push((kind.to_string(), rule["id"].as_str().unwrap().to_string()));
        }
    }
    rules
}

#[tokio::test]
async fn a_cluster_whose_creation_failed_is_in_error_and_deleted_without_leftovers() {
    let env = Env::start().await;
    // No node will ever enroll here (the simulator runs no agents in this test): the create
    // workflow runs out of time at init.
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
    let err = env
        .wait_job(&env.user, &job)
        .await
        .expect_err("create must fail");
    let listed = env
        .user
        .call("listKubernetesClusters", &[("id", &id)])
        .await
        .unwrap();
    assert!(
        err.to_string().contains("init-control-plane"),
        "{err}: {:#}",
        listed["kubernetescluster"][0]["progress"]
    );
    let cluster = &listed["kubernetescluster"][0];
    assert_eq!(cluster["state"], "Error");
    assert!(
        cluster["failure"]
            .as_str()
            .unwrap()
            .contains("init-control-plane")
    );
    assert_eq!(cluster["virtualmachines"].as_array().unwrap().len(), 2);
    let network = cluster["networkid"].as_str().unwrap().to_string();
    assert!(cluster["ipaddress"].as_str().is_some());

    // A cluster that never came up can be neither started nor stopped, only deleted.
    for (command, verb) in [
        ("startKubernetesCluster", "started"),
        ("stopKubernetesCluster", "stopped"),
    ] {
        let text = api_error(
            env.user
                .submit(command, &[("id", &id)])
                .await
                .map(|j| serde_json::json!(j.job_id)),
            530,
        );
        assert_eq!(
            text,
            format!("Kubernetes cluster : doomed is in state Error and cannot be {verb}")
        );
    }

    // A node VM cannot be destroyed behind the cluster's back (CKS's checkVmCanBeDestroyed),
    // by its owner or an admin; the VM stays.
    let node = cluster["virtualmachines"][0]["id"].as_str().unwrap();
    for client in [&env.user, &env.admin] {
        let text = api_error(
            client
                .submit("destroyVirtualMachine", &[("id", node)])
                .await
                .map(|j| serde_json::json!(j.job_id)),
            530,
        );
        assert!(
            text.starts_with("Instance is a part of a Kubernetes cluster: doomed."),
            "{text}"
        );
    }
    let vm = env
        .user
        .call("listVirtualMachines", &[("id", node)])
        .await
        .unwrap();
    assert_eq!(vm["virtualmachine"][0]["state"], "Running", "{vm}");

    let job = env
        .user
        .submit("deleteKubernetesCluster", &[("id", &id)])
        .await
        .unwrap();
    let result = env.wait_job(&env.user, &job.job_id).await.unwrap();
    assert_eq!(result["success"], true);
    // Nothing is left: no VM, no network, no cluster.
    let vms = env.user.call("listVirtualMachines", &[]).await.unwrap();
    assert!(vms.get("virtualmachine").is_none(), "{vms}");
    let networks = env.user.call("listNetworks", &[]).await.unwrap();
    assert!(
        !networks.to_string().contains(&network),
        "network left: {networks}"
    );
    let listed = env.user.call("listKubernetesClusters", &[]).await.unwrap();
    assert_eq!(listed, serde_json::json!({}));
    tokio::time::sleep(Duration::from_millis(10)).await;
    env.stop().await;
}

#[tokio::test]
async fn new_keys_work_at_once() {
    let env = Env::start().await;
    // Warm the identity cache with the user's current keys.
    env.user.call("listKubernetesClusters", &[]).await.unwrap();
    let keys = env
        .admin
        .call("registerUserKeys", &[("id", &env.sim.user_keys().user_id)])
        .await
        .unwrap();
    let fresh = cloudsim::Keys {
        user_id: env.sim.user_keys().user_id.clone(),
        api_key: keys["userkeys"]["apikey"].as_str().unwrap().to_string(),
        secret_key: keys["userkeys"]["secretkey"].as_str().unwrap().to_string(),
    };
    let listed = client(&env.endpoint(), &fresh)
        .call("listKubernetesClusters", &[])
        .await;
    assert!(listed.is_ok(), "{listed:?}");
    // The keys were regenerated through the controller: the old key is refused at once, by
    // CloudStack and by the controller, which dropped its cached identities.
    api_error(env.user.call("listZones", &[]).await, 401);
    api_error(env.user.call("listKubernetesClusters", &[]).await, 401);
    env.stop().await;
}

#[tokio::test]
async fn a_page_of_clusters_costs_cloudstack_a_few_calls_not_a_few_per_cluster() {
    let env = Env::start().await;
    // No agents here: each create deploys its two VMs, then fails at init, and stays put.
    env.admin
        .call(
            "updateConfiguration",
            &[
                ("name", "cloud.kubernetes.cluster.start.timeout"),
                ("value", "10"),
            ],
        )
        .await
        .unwrap();
    let version = env.add_version("1.33.1", &[]).await;
    let version = version["id"].as_str().unwrap();
    let mut created = Vec::new();
    for name in ["one", "two", "three", "four"] {
        created.push(create(&env, &env.user, version, name).await);
    }
    for (_, job) in &created {
        env.wait_job(&env.user, job)
            .await
            .expect_err("no node can enroll here");
    }
    let mut alone = std::collections::BTreeMap::new();
    for (id, _) in &created {
        let listed = env
            .user
            .call("listKubernetesClusters", &[("id", id)])
            .await
            .unwrap();
        alone.insert(id.clone(), listed["kubernetescluster"][0].clone());
    }

    env.sim.reset_call_counts();
    let page = env.user.call("listKubernetesClusters", &[]).await.unwrap();
    let calls = env.sim.call_counts();

    assert_eq!(page["count"], 4);
    for cluster in page["kubernetescluster"].as_array().unwrap() {
        let id = cluster["id"].as_str().unwrap();
        assert_eq!(
            cluster, &alone[id],
            "a page renders each cluster as it renders alone"
        );
        assert_eq!(cluster["virtualmachines"].as_array().unwrap().len(), 2);
        assert!(cluster["zonename"].is_string(), "{cluster:#}");
        assert!(cluster["serviceofferingname"].is_string(), "{cluster:#}");
        assert!(cluster["associatednetworkname"].is_string(), "{cluster:#}");
    }
    // The four clusters share a zone and an offering, each has its own network, and one
    // listVirtualMachines brings all eight nodes.
    assert_eq!(calls.get("listZones"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("listServiceOfferings"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("listNetworks"), Some(&4), "{calls:?}");
    assert_eq!(calls.get("listVirtualMachines"), Some(&1), "{calls:?}");
    env.stop().await;
}
