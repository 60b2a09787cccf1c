//! CloudStack's tenancy beyond one account, as the cluster commands honour it: domain admins
//! see and manage their domain tree's clusters (and nothing outside it), `domainid` never
//! reaches a same-named account of another domain, and clusters made with `projectid` belong
//! to the project, visible to its members only.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use cks_controller::cloudstack::CloudStackClient;
use common::{Env, api_error, create};
use serde_json::Value;

/// A domain named `name` below `parent` (ROOT when `None`); returns its id.
async fn domain(env: &Env, name: &str, parent: Option<&str>) -> String {
    let mut args = vec![("name", name)];
    if let Some(parent) = parent {
        args.push(("parentdomainid", parent));
    }
    let made = env.admin.call("createDomain", &args).await.unwrap();
    made["domain"]["id"].as_str().unwrap().to_owned()
}

/// An account `name` of `account_type` (0 user, 2 domain admin) in `domain`, and its user's
/// signed client.
async fn account(env: &Env, name: &str, account_type: &str, domain: &str) -> CloudStackClient {
    let username = format!("{name}-{}", &domain[..8]);
    let made = env
        .admin
        .call(
            "createAccount",
            &[
                ("username", username.as_str()),
                ("account", name),
                ("accounttype", account_type),
                ("domainid", domain),
                ("email", "x@example.invalid"),
                ("firstname", name),
                ("lastname", "test"),
                ("password", "unused"),
            ],
        )
        .await
        .unwrap();
    let user_id = made["account"]["user"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.client_for_user(&user_id).await
}

/// The names of the clusters `client` lists with `args`, sorted.
async fn listed(client: &CloudStackClient, args: &[(&str, &str)]) -> Vec<String> {
    let body = client.call("listKubernetesClusters", args).await.unwrap();
    let mut names: Vec<String> = body["kubernetescluster"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A kubeconfig request: visible clusters still being set up answer "in progress", others
/// are unknown. Nothing changes either way.
async fn config_error(client: &CloudStackClient, cluster: &str) -> String {
    let result = client
        .call("getKubernetesClusterConfig", &[("id", cluster)])
        .await;
    match result {
        Err(cks_controller::cloudstack::CloudStackError::Api { errortext, .. }) => errortext,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn as_refs(args: &[(String, String)]) -> Vec<(&str, &str)> {
    args.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn unknown(cluster: &str) -> String {
    format!("Unable to find Kubernetes cluster with ID: {cluster}")
}

#[tokio::test]
async fn domain_admins_manage_their_domain_tree_and_nothing_else() {
    let env = Env::start().await;
    let version = env.add_version("1.33.1", &[]).await;
    let version = version["id"].as_str().unwrap();
    let eng = domain(&env, "eng", None).await;
    let web = domain(&env, "web", Some(&eng)).await;
    let ops = domain(&env, "ops", None).await;
    // The same account name in two domains.
    let dev_web = account(&env, "dev", "0", &web).await;
    let dev_ops = account(&env, "dev", "0", &ops).await;
    let eng_admin = account(&env, "engadmin", "2", &eng).await;
    let (in_tree, in_tree_job) = create(&env, &dev_web, version, "web-app").await;
    let (outside, outside_job) = create(&env, &dev_ops, version, "ops-app").await;

    // Jobs: the tree's are the domain admin's to follow, the other domain's are unknown.
    eng_admin
        .call("queryAsyncJobResult", &[("jobid", &in_tree_job)])
        .await
        .unwrap();
    let err = api_error(
        eng_admin
            .call("queryAsyncJobResult", &[("jobid", &outside_job)])
            .await,
        431,
    );
    assert_eq!(err, format!("Unable to find a job by id {outside_job}"));

    // Lists: own clusters by default; the tree with listall; a domain, its tree with
    // isrecursive; an account of a named domain.
    assert!(listed(&eng_admin, &[]).await.is_empty());
    assert_eq!(
        listed(&eng_admin, &[("listall", "true")]).await,
        ["web-app"]
    );
    assert!(listed(&eng_admin, &[("domainid", &eng)]).await.is_empty());
    assert_eq!(
        listed(&eng_admin, &[("domainid", &eng), ("isrecursive", "true")]).await,
        ["web-app"]
    );
    assert_eq!(listed(&eng_admin, &[("domainid", &web)]).await, ["web-app"]);
    assert_eq!(
        listed(&eng_admin, &[("account", "dev"), ("domainid", &web)]).await,
        ["web-app"]
    );
    // Outside the tree nothing shows, however it is asked for.
    assert!(listed(&eng_admin, &[("domainid", &ops)]).await.is_empty());
    assert!(
        listed(&eng_admin, &[("account", "dev"), ("domainid", &ops)])
            .await
            .is_empty()
    );
    assert!(listed(&eng_admin, &[("id", &outside)]).await.is_empty());
    // Root admins see both; each dev only their own.
    assert_eq!(
        listed(&env.admin, &[("listall", "true")]).await,
        ["ops-app", "web-app"]
    );
    assert_eq!(listed(&dev_ops, &[("listall", "true")]).await, ["ops-app"]);

    // Acting: the tree's cluster is the domain admin's to read and delete; the other domain's
    // is answered as unknown.
    assert!(
        config_error(&eng_admin, &in_tree)
            .await
            .contains("Setup is in progress"),
        "a domain admin reads its tree's cluster"
    );
    assert_eq!(config_error(&eng_admin, &outside).await, unknown(&outside));
    let err = api_error(
        eng_admin
            .call("deleteKubernetesCluster", &[("id", &outside)])
            .await,
        431,
    );
    assert_eq!(err, unknown(&outside));
    let job = eng_admin
        .submit("deleteKubernetesCluster", &[("id", &in_tree)])
        .await
        .unwrap();
    env.wait_job(&eng_admin, &job.job_id).await.unwrap();
    assert!(listed(&dev_web, &[]).await.is_empty());

    // Creating for another account: `domainid` names the account's domain, and a domain
    // outside the tree has no account for this admin, even one named alike.
    let (zone, offering, _) = env.zone_and_offerings().await;
    let for_dev = |domain: &str| {
        vec![
            ("name".to_owned(), "for-dev".to_owned()),
            ("zoneid".to_owned(), zone.clone()),
            ("kubernetesversionid".to_owned(), version.to_owned()),
            ("serviceofferingid".to_owned(), offering.clone()),
            ("size".to_owned(), "1".to_owned()),
            ("account".to_owned(), "dev".to_owned()),
            ("domainid".to_owned(), domain.to_owned()),
        ]
    };
    let refused = for_dev(&ops);
    let err = api_error(
        eng_admin
            .call("createKubernetesCluster", &as_refs(&refused))
            .await,
        431,
    );
    assert_eq!(err, "Unable to find account dev");
    let allowed = for_dev(&web);
    let made = eng_admin
        .submit("createKubernetesCluster", &as_refs(&allowed))
        .await
        .unwrap();
    let cluster = made.id.unwrap();
    let shown = env
        .admin
        .call("listKubernetesClusters", &[("id", &cluster)])
        .await
        .unwrap();
    let shown = &shown["kubernetescluster"][0];
    assert_eq!(shown["account"], "dev");
    assert_eq!(shown["domainid"], web.as_str(), "{shown}");
    assert_eq!(listed(&dev_web, &[]).await, ["for-dev"]);
    assert_eq!(listed(&dev_ops, &[]).await, ["ops-app"]);
    env.stop().await;
}

/// ROOT's id.
async fn root_domain(env: &Env) -> String {
    let root = env
        .admin
        .call("listDomains", &[("name", "ROOT")])
        .await
        .unwrap();
    root["domain"][0]["id"].as_str().unwrap().to_owned()
}

/// A project made by the seeded user, with `member` added; returns its id.
async fn project(env: &Env, member: &str) -> String {
    let made = env
        .user
        .submit(
            "createProject",
            &[("name", "shop"), ("displaytext", "the shop")],
        )
        .await
        .unwrap();
    env.wait_job(&env.user, &made.job_id).await.unwrap();
    let id = made.id.unwrap();
    let added = env
        .user
        .submit(
            "addAccountToProject",
            &[("projectid", id.as_str()), ("account", member)],
        )
        .await
        .unwrap();
    env.wait_job(&env.user, &added.job_id).await.unwrap();
    id
}

#[tokio::test]
async fn a_projects_cluster_belongs_to_the_project_and_is_seen_by_its_members_only() {
    let env = Env::start().await;
    let version = env.add_version("1.33.1", &[]).await;
    let version = version["id"].as_str().unwrap();
    let root = root_domain(&env).await;
    let member = account(&env, "bob", "0", &root).await;
    let stranger = account(&env, "carol", "0", &root).await;
    let project = project(&env, "bob").await;
    let (zone, offering, _) = env.zone_and_offerings().await;
    let params = [
        ("name", "shop-k8s"),
        ("zoneid", zone.as_str()),
        ("kubernetesversionid", version),
        ("serviceofferingid", offering.as_str()),
        ("size", "1"),
        ("projectid", project.as_str()),
    ];

    // A stranger cannot create in, list, or act on the project's clusters.
    let err = api_error(stranger.call("createKubernetesCluster", &params).await, 431);
    assert_eq!(err, format!("Unable to find project by id {project}"));
    let made = env
        .user
        .submit("createKubernetesCluster", &params)
        .await
        .unwrap();
    let cluster = made.id.unwrap();
    let err = api_error(
        stranger
            .call("listKubernetesClusters", &[("projectid", &project)])
            .await,
        431,
    );
    assert_eq!(err, format!("Unable to find project by id {project}"));
    assert!(listed(&stranger, &[("projectid", "-1")]).await.is_empty());
    assert_eq!(config_error(&stranger, &cluster).await, unknown(&cluster));

    // The cluster is the project's: shown as such, and only in project lists (or by id).
    let shown = env
        .user
        .call(
            "listKubernetesClusters",
            &[("projectid", &project), ("id", &cluster)],
        )
        .await
        .unwrap();
    let shown: &Value = &shown["kubernetescluster"][0];
    assert_eq!(shown["projectid"], project.as_str(), "{shown}");
    assert_eq!(shown["project"], "shop");
    assert!(shown.get("account").is_none(), "{shown}");
    assert!(listed(&env.user, &[]).await.is_empty());
    assert_eq!(listed(&env.user, &[("id", &cluster)]).await, ["shop-k8s"]);
    for client in [&env.user, &member] {
        assert_eq!(
            listed(client, &[("projectid", &project)]).await,
            ["shop-k8s"]
        );
        assert_eq!(listed(client, &[("projectid", "-1")]).await, ["shop-k8s"]);
    }
    assert_eq!(
        listed(&env.admin, &[("projectid", "-1")]).await,
        ["shop-k8s"]
    );
    assert!(listed(&env.admin, &[("listall", "true")]).await.is_empty());

    // What the workflow made belongs to the project, not to the user who asked.
    let sim = env.sim.snapshot();
    let project_account = sim
        .projects
        .iter()
        .find(|p| p.id == project)
        .unwrap()
        .account_id
        .clone();
    let network = sim
        .networks
        .iter()
        .find(|n| n.name.starts_with("shop-k8s"))
        .expect("the cluster network");
    assert_eq!(network.account_id, project_account);

    // A member manages it: deletes it.
    assert!(
        config_error(&member, &cluster)
            .await
            .contains("Setup is in progress")
    );
    let job = member
        .submit("deleteKubernetesCluster", &[("id", &cluster)])
        .await
        .unwrap();
    env.wait_job(&member, &job.job_id).await.unwrap();
    assert!(listed(&member, &[("projectid", &project)]).await.is_empty());
    env.stop().await;
}

#[tokio::test]
async fn a_projects_cluster_on_the_projects_network_finds_and_removes_its_own_rules() {
    let env = Env::start().await;
    let version = env.add_version("1.33.1", &[]).await;
    let version = version["id"].as_str().unwrap();
    let root = root_domain(&env).await;
    let _member = account(&env, "bob", "0", &root).await;
    let project = project(&env, "bob").await;
    let (zone, offering, _) = env.zone_and_offerings().await;

    // The project's own network, its source NAT address up with a VM of the project's.
    let offerings = env
        .user
        .call(
            "listNetworkOfferings",
            &[("name", "DefaultIsolatedNetworkOfferingWithSourceNatService")],
        )
        .await
        .unwrap();
    let network = env
        .user
        .call(
            "createNetwork",
            &[
                ("zoneid", zone.as_str()),
                (
                    "networkofferingid",
                    offerings["networkoffering"][0]["id"].as_str().unwrap(),
                ),
                ("name", "shop-net"),
                ("displaytext", "the shop's network"),
                ("projectid", project.as_str()),
            ],
        )
        .await
        .unwrap();
    let network = network["network"]["id"].as_str().unwrap().to_owned();
    let templates = env
        .user
        .call("listTemplates", &[("templatefilter", "executable")])
        .await
        .unwrap();
    let vm = env
        .user
        .submit(
            "deployVirtualMachine",
            &[
                ("zoneid", zone.as_str()),
                ("serviceofferingid", offering.as_str()),
                (
                    "templateid",
                    templates["template"][0]["id"].as_str().unwrap(),
                ),
                ("networkids", network.as_str()),
                ("projectid", project.as_str()),
            ],
        )
        .await
        .unwrap();
    env.wait_job(&env.user, &vm.job_id).await.unwrap();

    let made = env
        .user
        .submit(
            "createKubernetesCluster",
            &[
                ("name", "shop-k8s"),
                ("zoneid", zone.as_str()),
                ("kubernetesversionid", version),
                ("serviceofferingid", offering.as_str()),
                ("size", "1"),
                ("networkid", network.as_str()),
                ("projectid", project.as_str()),
            ],
        )
        .await
        .unwrap();
    let cluster = made.id.unwrap();
    // Its rules are made once its nodes are deployed (it then waits for agents that never
    // come here).
    let mut balanced = false;
    for _ in 0..600 {
        let events = env
            .user
            .call("listKubernetesClusterEvents", &[("id", &cluster)])
            .await
            .unwrap();
        balanced = events["kubernetesclusterevent"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["step"] == "load-balancer" && e["state"] == "Completed");
        if balanced {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(balanced, "the create never made its load balancer rule");
    let ip = env
        .user
        .call(
            "listKubernetesClusters",
            &[("id", &cluster), ("projectid", &project)],
        )
        .await
        .unwrap();
    let ip = ip["kubernetescluster"][0]["ipaddressid"]
        .as_str()
        .unwrap()
        .to_owned();
    let rules_on_ip = || {
        env.sim
            .snapshot()
            .rules
            .iter()
            .filter(|r| r.ip_id == ip)
            .count()
    };
    assert!(
        rules_on_ip() >= 2,
        "the API's firewall and load balancer rules"
    );

    // The delete finds them as the project's and removes them; the network stays.
    let job = env
        .user
        .submit("deleteKubernetesCluster", &[("id", &cluster)])
        .await
        .unwrap();
    env.wait_job(&env.user, &job.job_id).await.unwrap();
    assert_eq!(rules_on_ip(), 0, "{:#?}", env.sim.snapshot().rules);
    assert!(env.sim.snapshot().networks.iter().any(|n| n.id == network));
    env.stop().await;
}
