//! The commands beyond the basics, through a signed Rust client: VM lifecycle (destroy,
//! expunge, recover, scale, change service, update), SSH key pairs, users and accounts,
//! capacity and resource limits, `listApis`, shared networks, the never-boot fault and the
//! external load balancer's control surface.

mod common;

use cloudsim::faults::{FaultConfig, NeverBoot};
use cloudsim::{SimConfig, SimHandle, Simulator};
use common::{Client, create_network, deploy, seeded_ids};
use serde_json::{Value, json};

async fn start() -> SimHandle {
    Simulator::start(SimConfig::for_tests())
        .await
        .expect("start simulator")
}

fn clients(sim: &SimHandle) -> (Client, Client) {
    (
        Client::new(&sim.endpoint(), sim.admin_keys()),
        Client::new(&sim.endpoint(), sim.user_keys()),
    )
}

/// Submits an async command that must be accepted, and returns its failed job.
async fn failed_job(client: &Client, command: &str, args: &[(&str, &str)]) -> Value {
    let submitted = client.ok(command, args).await;
    let job = client
        .wait_job(submitted["jobid"].as_str().expect("jobid"))
        .await;
    assert_eq!(job["jobstatus"], 2, "{command} should fail: {job}");
    job
}

async fn set(admin: &Client, name: &str, value: &str) {
    let updated = admin
        .ok("updateConfiguration", &[("name", name), ("value", value)])
        .await;
    assert_eq!(updated["configuration"]["value"], value);
}

async fn offering(client: &Client, name: &str) -> String {
    let listed = client.ok("listServiceOfferings", &[("name", name)]).await;
    listed["serviceoffering"][0]["id"]
        .as_str()
        .expect("offering id")
        .to_owned()
}

async fn state(client: &Client, vm: &str) -> Value {
    let listed = client
        .ok("listVirtualMachines", &[("id", vm), ("listall", "true")])
        .await;
    listed["virtualmachine"][0]["state"].clone()
}

/// Deploys with extra arguments (replacing the defaults they name); returns the job result's VM.
async fn deploy_with(client: &Client, network: &str, name: &str, extra: &[(&str, &str)]) -> Value {
    let (zone, offering, template) = seeded_ids(client).await;
    let mut args = vec![
        ("zoneid", zone.as_str()),
        ("serviceofferingid", offering.as_str()),
        ("templateid", template.as_str()),
        ("networkids", network),
        ("name", name),
    ];
    args.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
    args.extend_from_slice(extra);
    client.run("deployVirtualMachine", &args).await["virtualmachine"].clone()
}

#[tokio::test]
async fn destroy_expunge_and_recover_follow_cloudstack_permissions() {
    let sim = start().await;
    let (admin, user) = clients(&sim);
    let (zone, _, _) = seeded_ids(&user).await;
    let network = create_network(&user, &zone, "net").await;
    let vm = deploy(&user, &network, "node-1").await;

    // expunge=true by a user is refused inside the job; the VM is untouched.
    let job = failed_job(
        &user,
        "destroyVirtualMachine",
        &[("id", &vm), ("expunge", "true")],
    )
    .await;
    assert_eq!(job["jobresultcode"], 530);
    assert_eq!(
        job["jobresult"]["errortext"],
        "Parameter expunge can be passed by Admin only. Or when the allow.user.expunge.recover.vm key is set."
    );
    assert_eq!(state(&admin, &vm).await, "Running");

    // A plain destroy keeps the VM, Destroyed; users no longer list it, admins do; destroying
    // it again succeeds.
    let destroyed = user.run("destroyVirtualMachine", &[("id", &vm)]).await;
    assert_eq!(destroyed["virtualmachine"]["state"], "Destroyed");
    assert_eq!(user.ok("listVirtualMachines", &[]).await, json!({}));
    assert_eq!(state(&admin, &vm).await, "Destroyed");
    user.run("destroyVirtualMachine", &[("id", &vm)]).await;

    // Users may neither recover (531, synchronous) nor expunge (530 in the job) by default.
    let (status, body) = user.get("recoverVirtualMachine", &[("id", &vm)]).await;
    assert_eq!(
        (status, body["cserrorcode"].clone()),
        (531, json!(4365)),
        "{body}"
    );
    let job = failed_job(&user, "expungeVirtualMachine", &[("id", &vm)]).await;
    assert_eq!(job["jobresultcode"], 530);
    assert!(
        job["jobresult"]["errortext"]
            .as_str()
            .unwrap()
            .starts_with("Expunging a vm can only be done by an Admin"),
        "{job}"
    );

    // With allow.user.expunge.recover.vm they may: recover gives a Stopped VM, which must be
    // destroyed again before it can be expunged.
    set(&admin, "allow.user.expunge.recover.vm", "true").await;
    let recovered = user.ok("recoverVirtualMachine", &[("id", &vm)]).await;
    assert_eq!(
        recovered["virtualmachine"]["state"], "Stopped",
        "{recovered}"
    );
    let job = failed_job(&user, "expungeVirtualMachine", &[("id", &vm)]).await;
    assert_eq!(
        job["jobresult"]["errortext"],
        "Please destroy vm with specified vmId before expunge"
    );
    let (status, _) = user.get("recoverVirtualMachine", &[("id", &vm)]).await;
    assert_eq!(status, 431, "only a Destroyed VM can be recovered");
    let expunged = user
        .run("destroyVirtualMachine", &[("id", &vm), ("expunge", "true")])
        .await;
    assert_eq!(expunged["virtualmachine"]["state"], "Destroyed");
    assert_eq!(
        admin
            .ok("listVirtualMachines", &[("id", &vm), ("listall", "true")])
            .await,
        json!({}),
        "expunged"
    );

    // expungeVirtualMachine of a destroyed VM (by the admin) removes it too.
    let other = deploy(&user, &network, "node-2").await;
    admin.run("destroyVirtualMachine", &[("id", &other)]).await;
    let done = admin.run("expungeVirtualMachine", &[("id", &other)]).await;
    assert_eq!(done, json!({ "success": true }));
    assert!(sim.snapshot().vms.is_empty());
}

#[tokio::test]
async fn scaling_follows_the_vm_state_dynamic_scaling_and_capacity() {
    let sim = start().await;
    let (admin, user) = clients(&sim);
    let (zone, _, _) = seeded_ids(&user).await;
    let network = create_network(&user, &zone, "net").await;
    let small = offering(&user, "Small Instance").await;
    let medium = offering(&user, "Medium Instance").await;
    let large = offering(&user, "Large Instance").await;

    // Stopped: changeServiceForVirtualMachine (synchronous) and scaleVirtualMachine (a job)
    // take any other offering.
    let stopped = deploy_with(&user, &network, "stopped", &[("startvm", "false")]).await;
    let stopped = stopped["id"].as_str().unwrap();
    let changed = user
        .ok(
            "changeServiceForVirtualMachine",
            &[("id", stopped), ("serviceofferingid", &small)],
        )
        .await;
    assert_eq!(changed["virtualmachine"]["cpunumber"], 1, "{changed}");
    let scaled = user
        .run(
            "scaleVirtualMachine",
            &[("id", stopped), ("serviceofferingid", &large)],
        )
        .await;
    assert_eq!(scaled["virtualmachine"]["cpunumber"], 4, "{scaled}");
    let job = failed_job(
        &user,
        "scaleVirtualMachine",
        &[("id", stopped), ("serviceofferingid", &large)],
    )
    .await;
    assert_eq!(job["jobresultcode"], 431, "same offering: {job}");

    // Running, with enable.dynamic.scale.vm false (CloudStack's default): refused in the job.
    let old = deploy(&user, &network, "old").await;
    let job = failed_job(
        &user,
        "scaleVirtualMachine",
        &[("id", &old), ("serviceofferingid", &large)],
    )
    .await;
    assert_eq!(job["jobresultcode"], 530);
    assert_eq!(
        job["jobresult"]["errortext"],
        "Dynamically scaling virtual machines is disabled for this zone, please contact your admin."
    );
    let (status, _) = user
        .get(
            "changeServiceForVirtualMachine",
            &[("id", &old), ("serviceofferingid", &large)],
        )
        .await;
    assert_eq!(status, 431, "changeService needs a stopped VM");

    // Enabled now, but the VM was deployed without dynamic scaling.
    set(&admin, "enable.dynamic.scale.vm", "true").await;
    let job = failed_job(
        &user,
        "scaleVirtualMachine",
        &[("id", &old), ("serviceofferingid", &large)],
    )
    .await;
    assert!(
        job["jobresult"]["errortext"]
            .as_str()
            .unwrap()
            .ends_with("as it does not have tools to support dynamic scaling."),
        "{job}"
    );

    // A VM deployed since scales up, never down.
    let vm = deploy_with(&user, &network, "new", &[("serviceofferingid", &small)]).await;
    assert_eq!(vm["isdynamicallyscalable"], true, "{vm}");
    let vm = vm["id"].as_str().unwrap();
    let up = user
        .run(
            "scaleVirtualMachine",
            &[("id", vm), ("serviceofferingid", &medium)],
        )
        .await;
    assert_eq!(up["virtualmachine"]["serviceofferingid"], medium.as_str());
    assert_eq!(up["virtualmachine"]["state"], "Running");
    let job = failed_job(
        &user,
        "scaleVirtualMachine",
        &[("id", vm), ("serviceofferingid", &small)],
    )
    .await;
    assert_eq!(job["jobresultcode"], 431);
    assert!(
        job["jobresult"]["errortext"]
            .as_str()
            .unwrap()
            .starts_with("While the VM is running, only scalling up it is supported."),
        "{job}"
    );

    // The capacity-exhaustion fault leaves no room to grow.
    sim.set_faults(FaultConfig {
        capacity_exhausted: true,
        ..FaultConfig::default()
    });
    let job = failed_job(
        &user,
        "scaleVirtualMachine",
        &[("id", vm), ("serviceofferingid", &large)],
    )
    .await;
    assert!(
        job["jobresult"]["errortext"]
            .as_str()
            .unwrap()
            .ends_with("due to insufficient resources."),
        "{job}"
    );
}

#[tokio::test]
async fn update_virtual_machine_changes_names_userdata_and_details() {
    let sim = start().await;
    let (_, user) = clients(&sim);
    let (zone, _, _) = seeded_ids(&user).await;
    let network = create_network(&user, &zone, "net").await;
    let vm = deploy_with(&user, &network, "before", &[("startvm", "false")]).await;
    let vm = vm["id"].as_str().unwrap();
    let big = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, vec![b'x'; 6000]);
    let (status, _) = user
        .get("updateVirtualMachine", &[("id", vm), ("userdata", &big)])
        .await;
    assert_eq!(status, 431, "over 4 KB needs POST, as at deploy");
    let huge = "A".repeat(40_000);
    let (status, _) = user
        .post("updateVirtualMachine", &[("id", vm), ("userdata", &huge)])
        .await;
    assert_eq!(status, 431, "over vm.userdata.max.length");
    let (status, body) = user
        .post("updateVirtualMachine", &[("id", vm), ("userdata", &big)])
        .await;
    assert_eq!(status, 200, "{body}");
    for bad in ["1node", "under_score", "-x"] {
        let (status, _) = user
            .get("updateVirtualMachine", &[("id", vm), ("name", bad)])
            .await;
        assert_eq!(status, 431, "{bad}");
    }
    let updated = user
        .ok(
            "updateVirtualMachine",
            &[
                ("id", vm),
                ("name", "after"),
                ("displayname", "After"),
                ("details[0].rootDiskController", "scsi"),
            ],
        )
        .await;
    let updated = &updated["virtualmachine"];
    assert_eq!(updated["name"], "after");
    assert_eq!(updated["displayname"], "After");
    assert_eq!(
        updated["details"]["rootDiskController"], "scsi",
        "{updated}"
    );
    let stored = sim.snapshot();
    assert_eq!(stored.vms[0].userdata.as_deref(), Some(big.as_str()));
    let cleaned = user
        .ok(
            "updateVirtualMachine",
            &[("id", vm), ("cleanupdetails", "true")],
        )
        .await;
    assert!(
        cleaned["virtualmachine"].get("details").is_none(),
        "{cleaned}"
    );
    let (status, body) = user
        .get(
            "updateVirtualMachine",
            &[("id", vm), ("isdynamicallyscalable", "true")],
        )
        .await;
    assert_eq!(status, 431, "{body}");
    // The old name is free again; the new one is taken.
    deploy_with(&user, &network, "before", &[("startvm", "false")]).await;
    let (status, _) = user
        .get("updateVirtualMachine", &[("id", vm), ("name", "before")])
        .await;
    assert_eq!(status, 431);
}

#[tokio::test]
async fn ssh_key_pairs_are_real_scoped_and_required_by_deploy() {
    let sim = start().await;
    let (admin, user) = clients(&sim);
    let created = user.ok("createSSHKeyPair", &[("name", "k1")]).await;
    let pair = &created["keypair"];
    let private = pair["privatekey"].as_str().expect("private key, once");
    assert!(private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    assert_eq!(pair["account"], "user");
    assert_eq!(pair["fingerprint"].as_str().unwrap().len(), 47);
    let (status, body) = user.get("createSSHKeyPair", &[("name", "k1")]).await;
    assert_eq!(status, 431);
    assert_eq!(
        body["errortext"],
        "A key pair with name 'k1' already exists."
    );

    let mine = cloudsim::sshkey::generate("me@laptop").unwrap();
    let registered = user
        .ok(
            "registerSSHKeyPair",
            &[("name", "k2"), ("publickey", &mine.public_key)],
        )
        .await;
    assert_eq!(
        registered["keypair"]["fingerprint"],
        cloudsim::sshkey::fingerprint(&mine.blob)
    );
    assert!(registered["keypair"].get("privatekey").is_none());
    let (status, _) = user
        .get(
            "registerSSHKeyPair",
            &[("name", "k3"), ("publickey", &mine.public_key)],
        )
        .await;
    assert_eq!(status, 431, "the same key twice");
    let (status, body) = user
        .get(
            "registerSSHKeyPair",
            &[("name", "k4"), ("publickey", "ssh-rsa not-a-key")],
        )
        .await;
    assert_eq!(
        (status, body["errortext"].clone()),
        (431, json!("Public key is invalid"))
    );

    // Listing: the user's own, by name or fingerprint, paged; never the private key.
    let listed = user.ok("listSSHKeyPairs", &[]).await;
    assert_eq!(listed["count"], 2);
    assert!(
        listed["sshkeypair"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k.get("privatekey").is_none())
    );
    let page = user
        .ok("listSSHKeyPairs", &[("page", "2"), ("pagesize", "1")])
        .await;
    assert_eq!(page["count"], 2);
    assert_eq!(page["sshkeypair"].as_array().unwrap().len(), 1);
    let by_print = user
        .ok(
            "listSSHKeyPairs",
            &[("fingerprint", pair["fingerprint"].as_str().unwrap())],
        )
        .await;
    assert_eq!(by_print["sshkeypair"][0]["name"], "k1");
    assert_eq!(
        admin.ok("listSSHKeyPairs", &[]).await,
        json!({}),
        "not the admin's"
    );
    assert_eq!(
        admin.ok("listSSHKeyPairs", &[("listall", "true")]).await["count"],
        2
    );

    // Deploy refers to the owner's pairs; the VM shows them.
    let (zone, _, _) = seeded_ids(&user).await;
    let network = create_network(&user, &zone, "net").await;
    let vm = deploy_with(&user, &network, "with-keys", &[("keypairs", "k1,k2")]).await;
    assert_eq!(vm["keypairs"], "k1,k2");
    let (zone, offering, template) = seeded_ids(&user).await;
    let (status, body) = user
        .get(
            "deployVirtualMachine",
            &[
                ("zoneid", &zone),
                ("serviceofferingid", &offering),
                ("templateid", &template),
                ("networkids", &network),
                ("keypair", "nope"),
            ],
        )
        .await;
    assert_eq!(status, 431);
    assert_eq!(
        body["errortext"],
        "A key pair with name 'nope' was not found."
    );
    let admin_net = create_network(&admin, &zone, "admin-net").await;
    let (status, _) = admin
        .get(
            "deployVirtualMachine",
            &[
                ("zoneid", &zone),
                ("serviceofferingid", &offering),
                ("templateid", &template),
                ("networkids", &admin_net),
                ("keypair", "k1"),
            ],
        )
        .await;
    assert_eq!(status, 431, "k1 is the user's, not the admin's");

    // Deleting a pair leaves the VM's copy of the key.
    let deleted = user.ok("deleteSSHKeyPair", &[("name", "k1")]).await;
    assert_eq!(deleted["success"], true);
    let (status, _) = user.get("deleteSSHKeyPair", &[("name", "k1")]).await;
    assert_eq!(status, 431);
    let stored = sim.snapshot();
    assert_eq!(stored.vms[0].ssh_public_keys.len(), 2);
}

#[tokio::test]
async fn accounts_users_and_their_keys() {
    let sim = start().await;
    let (admin, user) = clients(&sim);
    let person = [
        ("email", "ops@example.com"),
        ("firstname", "Op"),
        ("lastname", "Erator"),
        ("password", "secret-password"),
    ];
    let mut args = vec![("username", "ops"), ("accounttype", "0")];
    args.extend(person);
    let account = admin.ok("createAccount", &args).await;
    assert_eq!(account["account"]["name"], "ops");
    assert!(
        account["account"]["user"][0].get("apikey").is_none(),
        "no keys yet"
    );
    let mut args = vec![("account", "ops"), ("username", "ops-bot")];
    args.extend(person);
    let created = admin.ok("createUser", &args).await;
    let bot = created["user"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["user"]["account"], "ops");
    let (status, _) = user.get("createUser", &args).await;
    assert_eq!(status, 432, "admin only");
    let (status, _) = admin.get("createUser", &args).await;
    assert_eq!(status, 431, "the user name is taken");

    // registerUserKeys gives working keys; a user may not register another's.
    let keys = admin.ok("registerUserKeys", &[("id", &bot)]).await;
    let bot_keys = cloudsim::Keys {
        user_id: bot.clone(),
        api_key: keys["userkeys"]["apikey"].as_str().unwrap().to_owned(),
        secret_key: keys["userkeys"]["secretkey"].as_str().unwrap().to_owned(),
    };
    let bot_client = Client::new(&sim.endpoint(), &bot_keys);
    let accounts = bot_client.ok("listAccounts", &[]).await;
    assert_eq!(accounts["account"][0]["name"], "ops");
    let (status, _) = user
        .get("registerUserKeys", &[("id", &sim.admin_keys().user_id)])
        .await;
    assert_eq!(status, 531);
    let renewed = bot_client.ok("registerUserKeys", &[("id", &bot)]).await;
    assert_ne!(renewed["userkeys"]["apikey"], keys["userkeys"]["apikey"]);
    let (status, _) = bot_client.get("listZones", &[]).await;
    assert_eq!(status, 401, "the old keys stopped working");

    // listUsers filters.
    let by_account = admin.ok("listUsers", &[("account", "ops")]).await;
    assert_eq!(by_account["count"], 2);
    let admins = admin.ok("listUsers", &[("accounttype", "1")]).await;
    assert_eq!(admins["count"], 1);
    assert_eq!(admins["user"][0]["username"], "admin");
    let keyword = admin.ok("listUsers", &[("keyword", "bot")]).await;
    assert_eq!(keyword["user"][0]["username"], "ops-bot");
    let own = user.ok("listUsers", &[]).await;
    assert_eq!(own["count"], 1, "a user sees its account's users");
}

#[tokio::test]
async fn resource_limits_refuse_vms_and_public_ips_beyond_the_maximum() {
    let sim = start().await;
    let (admin, user) = clients(&sim);
    let limits = user.ok("listResourceLimits", &[]).await;
    assert_eq!(limits["count"], 12);
    let vms = user
        .ok("listResourceLimits", &[("resourcetype", "0")])
        .await;
    assert_eq!(vms["resourcelimit"][0]["resourcetypename"], "user_vm");
    assert_eq!(vms["resourcelimit"][0]["max"], 20);
    let (status, _) = user
        .get(
            "updateResourceLimit",
            &[("resourcetype", "0"), ("max", "100"), ("account", "user")],
        )
        .await;
    assert_eq!(status, 432, "admin only");
    let updated = admin
        .ok(
            "updateResourceLimit",
            &[("resourcetype", "0"), ("max", "1"), ("account", "user")],
        )
        .await;
    assert_eq!(updated["resourcelimit"]["max"], 1);
    assert_eq!(
        user.ok("listResourceLimits", &[("resourcetypename", "user_vm")])
            .await["resourcelimit"][0]["max"],
        1
    );

    let (zone, offering, template) = seeded_ids(&user).await;
    let network = create_network(&user, &zone, "net").await;
    let first = deploy(&user, &network, "one").await;
    let args = [
        ("zoneid", zone.as_str()),
        ("serviceofferingid", offering.as_str()),
        ("templateid", template.as_str()),
        ("networkids", network.as_str()),
        ("name", "two"),
    ];
    let (status, body) = user.get("deployVirtualMachine", &args).await;
    assert_eq!(status, 535, "{body}");
    assert_eq!(body["cserrorcode"], 9999);
    assert!(
        body["errortext"]
            .as_str()
            .unwrap()
            .starts_with("Maximum amount of resources of Type = 'user_vm'"),
        "{body}"
    );
    // A destroyed VM no longer counts; recovering it would exceed the limit again.
    admin.run("destroyVirtualMachine", &[("id", &first)]).await;
    user.run("deployVirtualMachine", &args).await;
    let (status, _) = admin.get("recoverVirtualMachine", &[("id", &first)]).await;
    assert_eq!(status, 535);

    // Public IPs: the network's source NAT address counts.
    admin
        .ok(
            "updateResourceLimit",
            &[("resourcetype", "1"), ("max", "1"), ("account", "user")],
        )
        .await;
    let (status, body) = user
        .get("associateIpAddress", &[("networkid", &network)])
        .await;
    assert_eq!(status, 535, "{body}");
    assert!(body["errortext"].as_str().unwrap().contains("'public_ip'"));
    // Admins have no limits.
    let admin_limits = admin.ok("listResourceLimits", &[]).await;
    assert!(
        admin_limits["resourcelimit"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["max"] == -1),
        "{admin_limits}"
    );
}

#[tokio::test]
async fn capacity_counts_running_vms_and_the_capacity_fault_fills_it() {
    let sim = start().await;
    let (admin, user) = clients(&sim);
    let (status, _) = user.get("listCapacity", &[]).await;
    assert_eq!(status, 432, "admin only");
    let cores = |listed: &Value| -> (u64, u64) {
        let row = listed["capacity"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == 90)
            .cloned()
            .unwrap();
        (
            row["capacityused"].as_u64().unwrap(),
            row["capacitytotal"].as_u64().unwrap(),
        )
    };
    let before = admin.ok("listCapacity", &[]).await;
    assert_eq!(before["count"], 4, "{before}");
    assert_eq!(cores(&before), (0, 64));
    let (zone, _, _) = seeded_ids(&user).await;
    let network = create_network(&user, &zone, "net").await;
    let vm = deploy(&user, &network, "node-1").await;
    let running = admin.ok("listCapacity", &[]).await;
    assert_eq!(cores(&running), (2, 64), "a Medium Instance runs");
    let memory = admin.ok("listCapacity", &[("type", "0")]).await;
    assert_eq!(memory["count"], 1);
    assert_eq!(memory["capacity"][0]["name"], "MEMORY");
    assert_eq!(memory["capacity"][0]["capacityused"], 2048u64 * 1024 * 1024);
    assert_eq!(memory["capacity"][0]["percentused"], "1.56");
    let ips = admin.ok("listCapacity", &[("type", "4")]).await;
    assert_eq!(
        ips["capacity"][0]["capacityused"], 1,
        "the source NAT address"
    );
    user.run("stopVirtualMachine", &[("id", &vm)]).await;
    assert_eq!(cores(&admin.ok("listCapacity", &[]).await), (0, 64));

    sim.set_faults(FaultConfig {
        capacity_exhausted: true,
        ..FaultConfig::default()
    });
    assert_eq!(cores(&admin.ok("listCapacity", &[]).await), (64, 64));
}

#[tokio::test]
async fn list_apis_lists_every_served_command_with_isasync() {
    let sim = start().await;
    let (admin, user) = clients(&sim);
    let all = admin.ok("listApis", &[]).await;
    let apis = all["api"].as_array().unwrap();
    assert_eq!(all["count"].as_u64().unwrap() as usize, apis.len());
    let find = |name: &str| apis.iter().find(|a| a["name"] == name).cloned();
    assert_eq!(find("deployVirtualMachine").unwrap()["isasync"], true);
    assert_eq!(find("listZones").unwrap()["isasync"], false);
    assert_eq!(find("recoverVirtualMachine").unwrap()["isasync"], false);
    assert_eq!(find("expungeVirtualMachine").unwrap()["isasync"], true);
    let one = admin
        .ok("listApis", &[("name", "scaleVirtualMachine")])
        .await;
    assert_eq!(one["count"], 1);
    let params = one["api"][0]["params"].as_array().unwrap();
    assert!(
        params
            .iter()
            .any(|p| p["name"] == "serviceofferingid" && p["required"] == true)
    );
    let (status, body) = admin.get("listApis", &[("name", "noSuchApi")]).await;
    assert_eq!(status, 530, "{body}");

    // Users see what they may call.
    let theirs = user.ok("listApis", &[]).await;
    let names: Vec<&str> = theirs["api"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert!(names.contains(&"listVirtualMachines"));
    assert!(!names.contains(&"listCapacity") && !names.contains(&"createUser"));
    let (status, _) = user.get("listApis", &[("name", "listCapacity")]).await;
    assert_eq!(status, 530);

    // Every listed command is served: without parameters it fails on them, never with 432.
    for api in apis {
        let name = api["name"].as_str().unwrap();
        let (status, body) = admin.get(name, &[]).await;
        assert_ne!(status, 432, "{name} is listed but not served: {body}");
    }
}

async fn create_shared(
    client: &Client,
    offering: &str,
    zone: &str,
    start: &str,
    end: &str,
) -> (u16, Value) {
    client
        .get(
            "createNetwork",
            &[
                ("name", "shared"),
                ("networkofferingid", offering),
                ("zoneid", zone),
                ("gateway", "10.60.0.254"),
                ("netmask", "255.255.255.0"),
                ("startip", start),
                ("endip", end),
                ("vlan", "60"),
            ],
        )
        .await
}

#[tokio::test]
async fn shared_networks_hand_out_addresses_from_their_range() {
    let sim = start().await;
    let (admin, user) = clients(&sim);
    let (zone, _, _) = seeded_ids(&admin).await;
    let offering = admin
        .ok(
            "listNetworkOfferings",
            &[("name", "DefaultSharedNetworkOffering")],
        )
        .await["networkoffering"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = create_shared(&user, &offering, &zone, "10.60.0.100", "10.60.0.101").await;
    assert_eq!(status, 431, "only admins create shared networks");
    let (status, _) = create_shared(&admin, &offering, &zone, "10.61.0.1", "10.61.0.2").await;
    assert_eq!(status, 431, "the range must be inside the network");
    let (status, created) =
        create_shared(&admin, &offering, &zone, "10.60.0.100", "10.60.0.101").await;
    assert_eq!(status, 200, "{created}");
    let network = &created["network"];
    assert_eq!(network["gateway"], "10.60.0.254");
    assert_eq!(network["acltype"], "Domain");
    assert_eq!(network["vlan"], "60");
    assert_eq!(network["broadcasturi"], "vlan://60");
    let id = network["id"].as_str().unwrap().to_owned();

    // Every account of the domain sees and uses it; addresses come from the range.
    let listed = user.ok("listNetworks", &[("type", "Shared")]).await;
    assert_eq!(listed["network"][0]["id"], id.as_str());
    let first = deploy_with(&user, &id, "s-1", &[]).await;
    let second = deploy_with(&admin, &id, "s-2", &[]).await;
    assert_eq!(first["nic"][0]["ipaddress"], "10.60.0.100");
    assert_eq!(first["nic"][0]["gateway"], "10.60.0.254");
    assert_eq!(first["nic"][0]["netmask"], "255.255.255.0");
    assert_eq!(second["nic"][0]["ipaddress"], "10.60.0.101");
    let (zone, offering, template) = seeded_ids(&user).await;
    let (status, body) = user
        .get(
            "deployVirtualMachine",
            &[
                ("zoneid", &zone),
                ("serviceofferingid", &offering),
                ("templateid", &template),
                ("networkids", &id),
            ],
        )
        .await;
    assert_eq!(status, 533, "the range is used up: {body}");
    assert!(
        sim.snapshot()
            .public_ips
            .iter()
            .all(|ip| ip.network_id.as_deref() != Some(id.as_str())),
        "a shared network has no source NAT"
    );
}

#[tokio::test]
async fn never_boot_faults_hit_the_same_vms_for_the_same_seed() {
    let sim = start().await;
    let (_, user) = clients(&sim);
    let (zone, _, _) = seeded_ids(&user).await;
    let network = create_network(&user, &zone, "net").await;
    let config = FaultConfig {
        seed: 5,
        never_boot: Some(NeverBoot {
            rate: 0.5,
            name_pattern: Some("worker-*".into()),
        }),
        ..FaultConfig::default()
    };
    let mut runs = Vec::new();
    for run in 0..2 {
        sim.set_faults(config.clone());
        let mut hit = Vec::new();
        for i in 0..8 {
            let vm = deploy(&user, &network, &format!("worker-{run}-{i}")).await;
            // A VM that never boots is still Running for the API.
            assert_eq!(state(&user, &vm).await, "Running");
            let stored = sim.snapshot();
            hit.push(stored.vms.iter().any(|v| v.id == vm && v.never_boots));
        }
        deploy(&user, &network, &format!("control-{run}")).await;
        let log = sim.fault_log();
        assert_eq!(log.len(), hit.iter().filter(|h| **h).count());
        assert!(log.iter().all(|e| {
            e.fault == "never_boot"
                && e.command == "deployVirtualMachine"
                && e.target
                    .as_deref()
                    .is_some_and(|t| t.starts_with("worker-"))
        }));
        runs.push(hit);
    }
    assert_eq!(runs[0], runs[1], "the same seed hangs the same starts");
    assert!(
        runs[0].contains(&true) && runs[0].contains(&false),
        "{:?}",
        runs[0]
    );
    let stored = sim.snapshot();
    assert!(
        stored
            .vms
            .iter()
            .filter(|v| v.name.starts_with("control-"))
            .all(|v| !v.never_boots),
        "names outside the pattern always boot"
    );
}

#[tokio::test]
async fn external_load_balancers_are_validated_and_controlled_over_http() {
    let sim = start().await;
    let (_, user) = clients(&sim);
    let (zone, _, _) = seeded_ids(&user).await;
    let network = create_network(&user, &zone, "net").await;
    let vm = deploy(&user, &network, "node-1").await;
    let refused = sim
        .add_external_lb("10.0.0.1".parse().unwrap(), 6443, vec![vm.clone()], 6443)
        .unwrap_err();
    assert!(refused.to_string().contains("127.0.0.0/8"), "{refused}");
    let refused = sim
        .add_external_lb("127.64.0.50".parse().unwrap(), 6443, vec![vm.clone()], 6443)
        .unwrap_err();
    assert!(refused.to_string().contains("public range"), "{refused}");
    sim.add_external_lb("127.99.0.1".parse().unwrap(), 6443, vec![vm.clone()], 6443)
        .unwrap();

    let http = reqwest::Client::new();
    let url = format!("http://{}/sim/external-lb", sim.addr());
    let post = |body: Value| http.post(&url).body(body.to_string()).send();
    let bad =
        post(json!({ "ip": "127.99.0.2", "port": 80, "targets": ["nope"], "target_port": 8080 }))
            .await
            .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let text = bad.text().await.unwrap();
    assert!(text.contains("target VM nope does not exist"), "{text}");
    let ok = post(json!({ "ip": "127.99.0.2", "port": 80, "targets": [vm], "target_port": 8080 }))
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    let listed: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["externalloadbalancers"].as_array().unwrap().len(), 2);
    assert_eq!(
        listed["externalloadbalancers"][1]["network_id"],
        network.as_str()
    );
    let deleted = http
        .delete(&url)
        .body(json!({ "ip": "127.99.0.2", "port": 80 }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 200);
    assert!(sim.remove_external_lb("127.99.0.1".parse().unwrap(), 6443));
    assert!(sim.snapshot().external_lbs.is_empty());

    // Expunging a target drops it from the load balancer.
    sim.add_external_lb("127.99.0.1".parse().unwrap(), 6443, vec![vm.clone()], 6443)
        .unwrap();
    let (admin, _) = clients(&sim);
    admin
        .run("destroyVirtualMachine", &[("id", &vm), ("expunge", "true")])
        .await;
    assert!(sim.snapshot().external_lbs[0].targets.is_empty());
}
