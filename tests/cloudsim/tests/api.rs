//! The simulator's API behaviour through a signed Rust client: authentication, error shapes,
//! ownership, rule checks, restarts, faults.

mod common;

use std::time::Duration;

use cloudsim::faults::{FaultConfig, FaultRule};
use cloudsim::{SimConfig, Simulator, signing};
use common::{Client, create_network, deploy, seeded_ids};
use serde_json::Value;

async fn start() -> cloudsim::SimHandle {
    Simulator::start(SimConfig::for_tests())
        .await
        .expect("start simulator")
}

fn clients(sim: &cloudsim::SimHandle) -> (Client, Client) {
    (
        Client::new(&sim.endpoint(), sim.admin_keys()),
        Client::new(&sim.endpoint(), sim.user_keys()),
    )
}

#[tokio::test]
async fn bad_signatures_unknown_keys_and_expired_requests_get_401() {
    let sim = start().await;
    let http = reqwest::Client::new();
    let keys = sim.admin_keys();
    let cases = [
        signing::signed_params("listZones", &[], &keys.api_key, "wrong-secret", None),
        signing::signed_params("listZones", &[], "unknown-key", &keys.secret_key, None),
        signing::signed_params(
            "listZones",
            &[],
            &keys.api_key,
            &keys.secret_key,
            Some("2001-01-01T00:00:00+0000"),
        ),
    ];
    for params in cases {
        let response = http
            .get(sim.endpoint())
            .query(&params)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["listzonesresponse"]["errorcode"], 401, "{body}");
        assert_eq!(
            body["listzonesresponse"]["errortext"],
            "unable to verify user credentials and/or request signature"
        );
    }
    // A future expiry is accepted.
    let params = signing::signed_params(
        "listZones",
        &[],
        &keys.api_key,
        &keys.secret_key,
        Some("2999-01-01T00:00:00+0000"),
    );
    let response = http
        .get(sim.endpoint())
        .query(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn errors_carry_cloudstack_codes_and_http_status() {
    let sim = start().await;
    let (admin, user) = clients(&sim);
    let (status, body) = admin.get("frobnicate", &[]).await;
    assert_eq!(status, 432);
    assert_eq!(body["errorcode"], 432);
    assert_eq!(body["cserrorcode"], 9999);
    assert_eq!(body["uuidList"], Value::Array(vec![]));
    let (status, body) = admin.get("listZones", &[("pagesize", "1")]).await;
    assert_eq!(status, 431);
    assert_eq!(
        body["errortext"],
        "\"page\" parameter is required when \"pagesize\" is specified"
    );
    assert_eq!(body["cserrorcode"], 4350);
    let (status, _) = user.get("listConfigurations", &[]).await;
    assert_eq!(status, 432, "admin-only commands do not exist for users");
    let (status, body) = admin.get("deployVirtualMachine", &[]).await;
    assert_eq!(status, 431, "{body}");
}

#[tokio::test]
async fn users_cannot_see_or_touch_other_accounts_resources() {
    let sim = start().await;
    let (admin, user) = clients(&sim);
    let (zone, _, _) = seeded_ids(&admin).await;
    let network = create_network(&admin, &zone, "admin-net").await;
    let listed = user.ok("listNetworks", &[]).await;
    assert_eq!(listed, serde_json::json!({}), "empty list is {{}}");
    let (status, body) = user.get("deleteNetwork", &[("id", &network)]).await;
    assert_eq!(status, 531, "{body}");
    assert_eq!(body["cserrorcode"], 4365);
    let (status, _) = user
        .get("associateIpAddress", &[("networkid", &network)])
        .await;
    assert_eq!(status, 531);
    // The admin sees it with listall; the user's own key owner is found by getUser.
    let all = admin.ok("listNetworks", &[("listall", "true")]).await;
    assert_eq!(all["count"], 1);
    let owner = admin
        .ok("getUser", &[("userapikey", &sim.user_keys().api_key)])
        .await;
    assert_eq!(owner["user"]["account"], "user");
    let keys = admin
        .ok("getUserKeys", &[("id", &sim.user_keys().user_id)])
        .await;
    assert_eq!(
        keys["userkeys"]["secretkey"],
        sim.user_keys().secret_key.as_str()
    );
    let (status, _) = user
        .get("getUserKeys", &[("id", &sim.admin_keys().user_id)])
        .await;
    assert_eq!(status, 531);
}

#[tokio::test]
async fn deleting_a_network_with_vms_is_refused_with_536() {
    let sim = start().await;
    let (_, user) = clients(&sim);
    let (zone, _, _) = seeded_ids(&user).await;
    let network = create_network(&user, &zone, "net").await;
    let vm = deploy(&user, &network, "node-1").await;
    let listed = user.ok("listVirtualMachines", &[("id", &vm)]).await;
    assert_eq!(
        listed["virtualmachine"][0]["nic"][0]["ipaddress"],
        "10.1.1.2"
    );
    assert_eq!(listed["virtualmachine"][0]["nic"][0]["gateway"], "10.1.1.1");
    let (status, body) = user.get("deleteNetwork", &[("id", &network)]).await;
    assert_eq!(status, 536, "{body}");
    assert_eq!(body["cserrorcode"], 4375);
    // Users may not expunge by default: the job fails, as the check runs inside it.
    let submitted = user
        .ok("destroyVirtualMachine", &[("id", &vm), ("expunge", "true")])
        .await;
    let job = user.wait_job(submitted["jobid"].as_str().unwrap()).await;
    assert_eq!(job["jobstatus"], 2, "{job}");
    assert_eq!(job["jobresultcode"], 530, "{job}");
    user.run("destroyVirtualMachine", &[("id", &vm)]).await;
    user.run("deleteNetwork", &[("id", &network)]).await;
}

#[tokio::test]
async fn overlapping_port_rules_conflict_with_537() {
    let sim = start().await;
    let (_, user) = clients(&sim);
    let (zone, _, _) = seeded_ids(&user).await;
    let network = create_network(&user, &zone, "net").await;
    let vm = deploy(&user, &network, "node-1").await;
    let nat = user
        .ok(
            "listPublicIpAddresses",
            &[("associatednetworkid", &network), ("issourcenat", "true")],
        )
        .await;
    assert_eq!(
        nat["count"], 1,
        "deploy implements the network with a source NAT"
    );
    let ip = user
        .run("associateIpAddress", &[("networkid", &network)])
        .await;
    assert_eq!(ip["ipaddress"]["issourcenat"], false);
    let ip_id = ip["ipaddress"]["id"].as_str().unwrap();
    let pf = [
        ("ipaddressid", ip_id),
        ("protocol", "tcp"),
        ("publicport", "2222"),
        ("privateport", "22"),
        ("virtualmachineid", vm.as_str()),
        ("openfirewall", "false"),
    ];
    user.run("createPortForwardingRule", &pf).await;
    let (status, body) = user.get("createPortForwardingRule", &pf).await;
    assert_eq!(status, 537, "{body}");
    assert_eq!(body["cserrorcode"], 4360);
    let lb = user
        .run(
            "createLoadBalancerRule",
            &[
                ("publicipid", ip_id),
                ("name", "api-lb"),
                ("algorithm", "roundrobin"),
                ("publicport", "6443"),
                ("privateport", "6443"),
                ("networkid", network.as_str()),
            ],
        )
        .await;
    let lb_id = lb["loadbalancer"]["id"].as_str().unwrap();
    user.run(
        "assignToLoadBalancerRule",
        &[("id", lb_id), ("virtualmachineids", vm.as_str())],
    )
    .await;
    let (status, _) = user
        .get(
            "createPortForwardingRule",
            &[
                ("ipaddressid", ip_id),
                ("protocol", "tcp"),
                ("publicport", "6443"),
                ("privateport", "6443"),
                ("virtualmachineid", vm.as_str()),
            ],
        )
        .await;
    assert_eq!(status, 537);
    let firewall = user
        .ok("listFirewallRules", &[("ipaddressid", ip_id)])
        .await;
    assert_eq!(
        firewall["count"], 1,
        "the LB rule opened the firewall: {firewall}"
    );
    let rules = user.ok("listLoadBalancerRules", &[("id", lb_id)]).await;
    assert_eq!(rules["loadbalancerrule"][0]["publicport"], "6443");
    // Rules are tagged and listed with their tags, as CloudStack does; the tags go with them.
    user.run(
        "createTags",
        &[
            ("resourceids", lb_id),
            ("resourcetype", "LoadBalancer"),
            ("tags[0].key", "cks.cluster"),
            ("tags[0].value", "c1"),
        ],
    )
    .await;
    let rules = user.ok("listLoadBalancerRules", &[("id", lb_id)]).await;
    assert_eq!(
        rules["loadbalancerrule"][0]["tags"],
        serde_json::json!([{ "key": "cks.cluster", "value": "c1" }])
    );
    user.run("deleteLoadBalancerRule", &[("id", lb_id)]).await;
    let tags = user.ok("listTags", &[("resourceid", lb_id)]).await;
    assert_eq!(tags["count"].as_u64().unwrap_or(0), 0, "{tags}");
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = SimConfig {
        state_dir: Some(dir.path().to_owned()),
        api_key: Some("admin-key".into()),
        secret_key: Some("admin-secret".into()),
        ..SimConfig::for_tests()
    };
    let sim = Simulator::start(config.clone()).await.unwrap();
    let (_, user) = clients(&sim);
    let user_keys = sim.user_keys().clone();
    let (zone, _, _) = seeded_ids(&user).await;
    let network = create_network(&user, &zone, "kept").await;
    let vm = deploy(&user, &network, "node-1").await;
    sim.shutdown().await;

    let sim = Simulator::start(config).await.unwrap();
    assert_eq!(sim.admin_keys().api_key, "admin-key");
    assert_eq!(sim.user_keys(), &user_keys, "user keys persist");
    let user = Client::new(&sim.endpoint(), sim.user_keys());
    let vms = user.ok("listVirtualMachines", &[]).await;
    assert_eq!(vms["count"], 1);
    assert_eq!(vms["virtualmachine"][0]["id"], vm.as_str());
    assert_eq!(vms["virtualmachine"][0]["state"], "Running");
    let networks = user.ok("listNetworks", &[("id", &network)]).await;
    assert_eq!(networks["network"][0]["name"], "kept");
}

fn error_rule(command: &str, rate: f64) -> FaultRule {
    FaultRule {
        command: command.into(),
        error_rate: rate,
        error_code: 530,
        latency_ms: 0,
        lost_response_rate: 0.0,
        job_failure_rate: 0.0,
    }
}

#[tokio::test]
async fn injected_errors_are_deterministic_for_a_seed() {
    let sim = start().await;
    let (admin, _) = clients(&sim);
    let config = FaultConfig {
        seed: 42,
        rules: vec![error_rule("listZones", 0.5)],
        capacity_exhausted: false,
        never_boot: None,
    };
    let mut runs = Vec::new();
    for _ in 0..2 {
        // Set through the control endpoint, as a test harness outside the process would.
        let response = reqwest::Client::new()
            .post(format!("http://{}/sim/faults", sim.addr()))
            .body(serde_json::to_string(&config).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let mut pattern = Vec::new();
        for _ in 0..24 {
            let (status, _) = admin.get("listZones", &[]).await;
            pattern.push(status);
        }
        assert_eq!(
            sim.fault_log().len(),
            pattern.iter().filter(|s| **s == 530).count()
        );
        runs.push(pattern);
    }
    assert_eq!(runs[0], runs[1]);
    assert!(
        runs[0].contains(&530) && runs[0].contains(&200),
        "{:?}",
        runs[0]
    );
    // Other commands are unaffected.
    admin.ok("listServiceOfferings", &[]).await;
}

#[tokio::test]
async fn failing_jobs_capacity_and_lost_responses_are_injected() {
    let sim = start().await;
    let (_, user) = clients(&sim);
    let (zone, offering, template) = seeded_ids(&user).await;
    let network = create_network(&user, &zone, "net").await;
    let deploy_args = |name: &'static str| {
        vec![
            ("zoneid", zone.clone()),
            ("serviceofferingid", offering.clone()),
            ("templateid", template.clone()),
            ("networkids", network.clone()),
            ("name", name.to_owned()),
        ]
    };
    let borrow = |v: &Vec<(&'static str, String)>| -> Vec<(&'static str, String)> { v.clone() };
    let call = |args: Vec<(&'static str, String)>| {
        let user = &user;
        async move {
            let args: Vec<(&str, &str)> = args.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let submitted = user.ok("deployVirtualMachine", &args).await;
            let job = user.wait_job(submitted["jobid"].as_str().unwrap()).await;
            (submitted, job)
        }
    };

    sim.set_faults(FaultConfig {
        seed: 1,
        rules: vec![FaultRule {
            job_failure_rate: 1.0,
            ..error_rule("deployVirtualMachine", 0.0)
        }],
        capacity_exhausted: false,
        never_boot: None,
    });
    let (submitted, job) = call(borrow(&deploy_args("fails"))).await;
    assert_eq!(job["jobstatus"], 2);
    assert_eq!(job["jobresultcode"], 530);
    let vm = user
        .ok(
            "listVirtualMachines",
            &[("id", submitted["id"].as_str().unwrap())],
        )
        .await;
    assert_eq!(vm["virtualmachine"][0]["state"], "Error");

    sim.set_faults(FaultConfig {
        capacity_exhausted: true,
        ..FaultConfig::default()
    });
    let (_, job) = call(borrow(&deploy_args("no-room"))).await;
    assert_eq!(job["jobstatus"], 2);
    assert_eq!(job["jobresult"]["errorcode"], 533, "{job}");
    assert_eq!(sim.fault_log()[0].fault, "capacity_exhausted");

    sim.set_faults(FaultConfig {
        seed: 3,
        rules: vec![FaultRule {
            lost_response_rate: 1.0,
            latency_ms: 50,
            ..error_rule("createNetwork", 0.0)
        }],
        capacity_exhausted: false,
        never_boot: None,
    });
    let started = std::time::Instant::now();
    let lost = reqwest::Client::new()
        .get(sim.endpoint())
        .query(&signing::signed_params(
            "createNetwork",
            &[
                ("name", "lost"),
                ("zoneid", &zone),
                (
                    "networkofferingid",
                    sim.snapshot().network_offerings[0].id.as_str(),
                ),
            ],
            &sim.user_keys().api_key,
            &sim.user_keys().secret_key,
            None,
        ))
        .send()
        .await;
    let body = match lost {
        Ok(response) => response.text().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(body.is_err(), "the response must be lost: {body:?}");
    assert!(started.elapsed() >= Duration::from_millis(50));
    let networks = user.ok("listNetworks", &[("keyword", "lost")]).await;
    assert_eq!(networks["count"], 1, "the action happened");
}

#[tokio::test]
async fn isos_download_verify_and_attach_like_cloudstack() {
    let sim = start().await;
    let (admin, user) = clients(&sim);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k8s.iso");
    std::fs::write(&path, b"hello").unwrap();
    let url = format!("file://{}", path.display());
    let register = |name: &'static str, checksum: &'static str| {
        let admin = &admin;
        let url = url.clone();
        async move {
            let iso = admin
                .ok(
                    "registerIso",
                    &[
                        ("name", name),
                        ("url", &url),
                        ("zoneid", "-1"),
                        ("ispublic", "true"),
                        ("checksum", checksum),
                    ],
                )
                .await;
            assert_eq!(iso["count"], 1);
            iso["iso"][0]["id"].as_str().unwrap().to_owned()
        }
    };
    let good = register(
        "good",
        "{SHA-256}2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
    )
    .await;
    let bad = register("bad", "00000000000000000000000000000000").await;
    let mut states = (Value::Null, Value::Null);
    for _ in 0..200 {
        let good_iso = user.ok("listIsos", &[("id", &good)]).await;
        let bad_iso = admin.ok("listIsos", &[("id", &bad)]).await;
        states = (good_iso["iso"][0].clone(), bad_iso["iso"][0].clone());
        if states.0["isready"] == true && states.1["status"] != "Downloading" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(states.0["isready"], true, "{}", states.0);
    assert_eq!(states.0["size"], 5);
    assert_eq!(states.1["isready"], false);
    assert!(
        states.1["status"]
            .as_str()
            .unwrap()
            .contains("checksum mismatch"),
        "{}",
        states.1
    );

    let (zone, _, _) = seeded_ids(&user).await;
    let network = create_network(&user, &zone, "net").await;
    let vm = deploy(&user, &network, "node-1").await;
    let attached = user
        .run("attachIso", &[("id", &good), ("virtualmachineid", &vm)])
        .await;
    assert_eq!(attached["virtualmachine"]["isoid"], good.as_str());
    let (status, _) = user
        .get("attachIso", &[("id", &bad), ("virtualmachineid", &vm)])
        .await;
    assert_eq!(status, 431, "a failed ISO is not ready");
    user.run("detachIso", &[("virtualmachineid", &vm)]).await;
    user.run("destroyVirtualMachine", &[("id", &vm)]).await;
    let (status, body) = user
        .get("attachIso", &[("id", &good), ("virtualmachineid", &vm)])
        .await;
    assert_eq!(status, 431);
    assert_eq!(
        body["errortext"],
        "Please specify a VM that is either Stopped or Running."
    );
    admin.run("deleteIso", &[("id", &bad)]).await;
    assert_eq!(
        admin.ok("listIsos", &[("id", &bad)]).await,
        serde_json::json!({})
    );
}

#[tokio::test]
async fn userdata_tags_and_post_requests_work() {
    let sim = start().await;
    let (_, user) = clients(&sim);
    let (zone, offering, template) = seeded_ids(&user).await;
    let network = create_network(&user, &zone, "net").await;
    let big = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, vec![b'x'; 6000]);
    let args = [
        ("zoneid", zone.as_str()),
        ("serviceofferingid", offering.as_str()),
        ("templateid", template.as_str()),
        ("networkids", network.as_str()),
        ("userdata", big.as_str()),
        ("startvm", "false"),
        ("ipaddress", "10.1.1.50"),
    ];
    let (status, body) = user.get("deployVirtualMachine", &args).await;
    assert_eq!(status, 431, "{body}");
    let (status, submitted) = user.post("deployVirtualMachine", &args).await;
    assert_eq!(status, 200, "{submitted}");
    let vm = submitted["id"].as_str().unwrap();
    let job = user.wait_job(submitted["jobid"].as_str().unwrap()).await;
    assert_eq!(job["jobresult"]["virtualmachine"]["state"], "Stopped");
    assert_eq!(
        job["jobresult"]["virtualmachine"]["nic"][0]["ipaddress"],
        "10.1.1.50"
    );
    let huge = "A".repeat(40_000);
    let (status, _) = user
        .post(
            "deployVirtualMachine",
            &[
                ("zoneid", zone.as_str()),
                ("serviceofferingid", offering.as_str()),
                ("templateid", template.as_str()),
                ("userdata", huge.as_str()),
            ],
        )
        .await;
    assert_eq!(status, 431, "userdata over vm.userdata.max.length");
    user.run(
        "createTags",
        &[
            ("resourceids", vm),
            ("resourcetype", "UserVm"),
            ("tags[0].key", "cks-cluster"),
            ("tags[0].value", "a~b c"),
        ],
    )
    .await;
    let tags = user.ok("listTags", &[("resourceid", vm)]).await;
    assert_eq!(tags["tag"][0]["value"], "a~b c");
    user.run("startVirtualMachine", &[("id", vm)]).await;
    let jobs = user.ok("listAsyncJobs", &[]).await;
    assert!(jobs["count"].as_u64().unwrap() >= 3);
}
