//! Kubernetes clusters end to end: the controller in front of the CloudStack simulator, whose
//! VMs run the real `cks-agent` with the Kubernetes stand-ins, ISOs built by the real
//! `cks-isobuilder`, and the real `kubectl` using the kubeconfig the controller hands out.
//!
//! Needs root (network namespaces, containerd) and the workspace's binaries (`make test`
//! builds them); skipped with a message otherwise.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use cks_e2e::stack::{Programs, Stack, kubectl, nodes_possible};
use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_is_created_used_with_kubectl_and_deleted() {
    let Some((_serial, stack)) = start("cluster end to end").await else {
        return;
    };
    let cluster = create(&stack, &[("name", "e2e"), ("size", "1")]).await;
    assert_eq!(cluster["state"], "Running", "{cluster:#}");
    assert_eq!(cluster["virtualmachines"].as_array().unwrap().len(), 2);
    // Each node's health, as its agent reports it (Ready comes with the next heartbeat).
    let mut shown = cluster.clone();
    for _ in 0..40 {
        let all_ready = shown["virtualmachines"]
            .as_array()
            .unwrap()
            .iter()
            .all(|vm| vm["agent"]["ready"] == true);
        if all_ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        shown = listed(&stack, cluster["id"].as_str().unwrap()).await;
    }
    for vm in shown["virtualmachines"].as_array().unwrap() {
        let agent = &vm["agent"];
        assert_eq!(agent["connected"], true, "{vm:#}");
        assert_eq!(agent["ready"], true, "{vm:#}");
        assert!(!agent["version"].as_str().unwrap().is_empty(), "{vm:#}");
        assert!(
            agent["lastheartbeat"].as_str().unwrap().ends_with("+0000"),
            "{vm:#}"
        );
    }
    let endpoint = cluster["endpoint"].as_str().unwrap();
    let ip = cluster["ipaddress"].as_str().unwrap();
    assert_eq!(endpoint, format!("https://{ip}:6443/"));
    let id = cluster["id"].as_str().unwrap().to_string();

    // The kubeconfig works from outside: the public IP's load balancer reaches the API server.
    let config = kubeconfig(&stack, &id).await;
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains(&format!("server: https://{ip}:6443")),
        "{text}"
    );
    let ready = tokio::task::spawn_blocking(move || ready_nodes(config))
        .await
        .unwrap();
    assert_eq!(ready.len(), 2, "{ready:?}");

    delete_and_check_nothing_is_left(&stack, &id).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_cluster_starts_again_with_its_nodes_and_kubeconfig() {
    let Some((_serial, stack)) = start("cluster stop and start").await else {
        return;
    };
    let cluster = create(&stack, &[("name", "sleeper"), ("size", "1")]).await;
    let id = cluster["id"].as_str().unwrap().to_string();
    let config = kubeconfig(&stack, &id).await;

    let stopped = operate(&stack, "stopKubernetesCluster", &id).await;
    assert_eq!(stopped["success"], true, "{stopped}");
    let cluster = listed(&stack, &id).await;
    assert_eq!(cluster["state"], "Stopped", "{cluster:#}");
    let vms = cluster["virtualmachines"].as_array().unwrap();
    assert_eq!(vms.len(), 2);
    assert!(vms.iter().all(|vm| vm["state"] == "Stopped"), "{vms:#?}");
    // The API server went down with its node.
    let down = config.clone();
    let refused = tokio::task::spawn_blocking(move || {
        kubectl(&down, &["get", "nodes", "--request-timeout=5s"])
    })
    .await
    .unwrap();
    assert!(
        refused.is_err(),
        "the API server still answers: {refused:?}"
    );
    // Stopping a stopped cluster changes nothing and succeeds, as in CKS.
    assert_eq!(
        operate(&stack, "stopKubernetesCluster", &id).await["success"],
        true
    );

    let started = operate(&stack, "startKubernetesCluster", &id).await;
    let cluster = &started["kubernetescluster"];
    assert_eq!(cluster["state"], "Running", "{cluster:#}");
    let steps: Vec<&str> = cluster["progress"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["start-vms", "wait-ready"]);
    // The kubeconfig handed out before the stop reaches the same cluster, both nodes Ready.
    let ready = tokio::task::spawn_blocking(move || ready_nodes(config))
        .await
        .unwrap();
    assert_eq!(ready.len(), 2, "{ready:?}");
    // Starting a running cluster changes nothing and succeeds.
    let again = operate(&stack, "startKubernetesCluster", &id).await;
    assert_eq!(again["kubernetescluster"]["state"], "Running");

    delete_and_check_nothing_is_left(&stack, &id).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ha_cluster_of_three_control_nodes_and_two_workers_runs_behind_the_load_balancer() {
    let Some((_serial, stack)) = start("HA cluster end to end").await else {
        return;
    };
    let cluster = create(
        &stack,
        &[("name", "ha"), ("controlnodes", "3"), ("size", "2")],
    )
    .await;
    assert_eq!(cluster["state"], "Running", "{cluster:#}");
    assert_eq!(cluster["controlnodes"], 3);
    let vms = cluster["virtualmachines"].as_array().unwrap();
    assert_eq!(vms.len(), 5);
    assert_eq!(
        vms.iter().filter(|vm| vm["iscontrolnode"] == true).count(),
        3
    );
    let id = cluster["id"].as_str().unwrap().to_string();
    // The API load balancer targets every control node.
    let rules = stack
        .admin
        .call(
            "listLoadBalancerRules",
            &[
                ("publicipid", cluster["ipaddressid"].as_str().unwrap()),
                ("listall", "true"),
            ],
        )
        .await
        .unwrap();
    let rules = rules
        .as_object()
        .unwrap()
        .values()
        .find_map(Value::as_array)
        .unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["name"], "api-lb");
    assert_eq!(rules[0]["publicport"], "6443", "{:#}", rules[0]);
    assert_eq!(rules[0]["privateport"], "6443", "{:#}", rules[0]);
    // Its members are exactly the three control nodes (CloudStack's view of the rule).
    let rule_id = rules[0]["id"].as_str().unwrap();
    let mut members = stack
        .sim
        .snapshot()
        .rules
        .iter()
        .find(|rule| rule.id == rule_id)
        .map(|rule| rule.vm_ids.clone())
        .unwrap();
    members.sort();
    let mut control: Vec<String> = vms
        .iter()
        .filter(|vm| vm["iscontrolnode"] == true)
        .map(|vm| vm["id"].as_str().unwrap().to_string())
        .collect();
    control.sort();
    assert_eq!(members, control);
    // kubectl goes through it: the kubeconfig's server is the rule's public address.
    let config = std::fs::read_to_string(kubeconfig(&stack, &id).await).unwrap();
    let server = format!(
        "server: https://{}:6443",
        rules[0]["publicip"].as_str().unwrap()
    );
    assert!(config.contains(&server), "{server} not in the kubeconfig");
    let ready = ready(&stack, &id).await;
    assert_eq!(ready.len(), 5, "{ready:?}");
    delete_and_check_nothing_is_left(&stack, &id).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_private_registry_reaches_every_node_and_its_password_nothing_else() {
    let Some((_serial, stack)) = start("private registry cluster end to end").await else {
        return;
    };
    stack
        .admin
        .call(
            "updateConfiguration",
            &[
                (
                    "name",
                    "cloud.kubernetes.cluster.experimental.features.enabled",
                ),
                ("value", "true"),
            ],
        )
        .await
        .unwrap();
    const PASSWORD: &str = "s3cret-registry-pass";
    let cluster = create(
        &stack,
        &[
            ("name", "private"),
            ("size", "1"),
            (
                "dockerregistryurl",
                "https://registry.example.internal:5000",
            ),
            ("dockerregistryusername", "robot"),
            ("dockerregistrypassword", PASSWORD),
        ],
    )
    .await;
    assert_eq!(cluster["state"], "Running", "{cluster:#}");
    assert_eq!(cluster["dockerregistryusername"], "robot");
    assert!(
        !cluster.to_string().contains(PASSWORD),
        "password in the API response"
    );
    for vm in cluster["virtualmachines"].as_array().unwrap() {
        let node = stack.sim.node(vm["id"].as_str().unwrap()).unwrap();
        // containerd on the node knows the registry and its credentials (hosts.toml, 0600) ...
        let config = std::fs::read_to_string(node.root.join("etc/containerd/config.toml"))
            .unwrap_or_default();
        assert!(
            config.contains("config_path"),
            "no config_path on {}: {config}",
            vm["name"]
        );
        let hosts = node
            .root
            .join("etc/containerd/certs.d/registry.example.internal:5000/hosts.toml");
        let text = std::fs::read_to_string(&hosts).unwrap();
        assert!(
            text.contains("server = \"https://registry.example.internal:5000\""),
            "{text}"
        );
        assert!(
            text.contains("Authorization"),
            "no credentials on {}",
            vm["name"]
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&hosts).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // ... and no log holds the password, nor does the VM's userdata.
        for entry in std::fs::read_dir(&node.log_dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
            assert!(!text.contains(PASSWORD), "password in a node log");
        }
    }
    let vms = stack
        .admin
        .call("listVirtualMachines", &[("listall", "true")])
        .await
        .unwrap();
    assert!(!vms.to_string().contains(PASSWORD));
    let id = cluster["id"].as_str().unwrap().to_string();
    delete_and_check_nothing_is_left(&stack, &id).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_unmodified_python_cs_client_creates_uses_and_deletes_a_cluster() {
    let Some((_serial, stack)) = start("cluster end to end with cs").await else {
        return;
    };
    let version = stack.add_version(&isos()[0]).await.unwrap();
    let (zone, offering) = stack.zone_and_offering().await.unwrap();
    let keys = stack.sim.user_keys();
    let cs = cks_fixtures::cs::Cs {
        bin: cks_fixtures::tools::cs_binary(stack.dir.path()).unwrap(),
        home: stack.dir.path().to_path_buf(),
        endpoint: format!("http://{}/client/api", stack.api_addr()),
        key: keys.api_key.clone(),
        secret: keys.secret_key.clone(),
    };
    // cs waits for the async job itself (queryAsyncJobResult), as it does with CloudStack.
    let created = cs
        .ok(
            true,
            &[
                "createKubernetesCluster",
                "name=from-cs",
                &format!("zoneid={zone}"),
                &format!("kubernetesversionid={version}"),
                &format!("serviceofferingid={offering}"),
                "size=1",
            ],
        )
        .await;
    let cluster = &created["kubernetescluster"];
    assert_eq!(cluster["state"], "Running", "{created:#}");
    let id = cluster["id"].as_str().unwrap().to_string();
    let config = cs
        .ok(false, &["getKubernetesClusterConfig", &format!("id={id}")])
        .await;
    let path = stack.dir.path().join("cs.kubeconfig");
    std::fs::write(
        &path,
        config["clusterconfig"]["configdata"].as_str().unwrap(),
    )
    .unwrap();
    let ready = tokio::task::spawn_blocking(move || ready_nodes(path))
        .await
        .unwrap();
    assert_eq!(ready.len(), 2, "{ready:?}");
    let deleted = cs
        .ok(true, &["deleteKubernetesCluster", &format!("id={id}")])
        .await;
    assert_eq!(deleted["success"], true, "{deleted:#}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ha_cluster_on_a_shared_network_is_reached_through_the_operators_load_balancer() {
    let Some((_serial, stack)) = start_any_source("shared network cluster end to end").await else {
        return;
    };
    let version = stack.add_version(&isos()[0]).await.unwrap();
    let (zone, offering) = stack.zone_and_offering().await.unwrap();
    // The operator's shared network and, in front of it, their load balancer.
    let offerings = stack
        .admin
        .call(
            "listNetworkOfferings",
            &[("name", "DefaultSharedNetworkOffering")],
        )
        .await
        .unwrap();
    let shared_offering = offerings["networkoffering"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let network = stack
        .admin
        .call(
            "createNetwork",
            &[
                ("zoneid", &zone),
                ("networkofferingid", &shared_offering),
                ("name", "shared"),
                ("displaytext", "shared"),
                ("gateway", "10.70.0.1"),
                ("netmask", "255.255.255.0"),
                ("startip", "10.70.0.10"),
                ("endip", "10.70.0.100"),
                ("vlan", "70"),
            ],
        )
        .await
        .unwrap();
    let network = network["network"]["id"].as_str().unwrap().to_string();
    const LB_IP: &str = "127.99.0.10";
    let job = stack
        .user
        .submit(
            "createKubernetesCluster",
            &[
                ("name", "shared"),
                ("zoneid", &zone),
                ("kubernetesversionid", &version),
                ("serviceofferingid", &offering),
                ("controlnodes", "3"),
                ("size", "1"),
                ("networkid", &network),
                ("externalloadbalanceripaddress", LB_IP),
            ],
        )
        .await
        .unwrap();
    let id = job.id.clone().unwrap();
    // As soon as the control VMs exist, the operator points the load balancer at them.
    let mut control = Vec::new();
    for _ in 0..600 {
        let listed = stack
            .user
            .call("listKubernetesClusters", &[("id", &id)])
            .await
            .unwrap();
        let vms = listed["kubernetescluster"][0]["virtualmachines"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        control = vms
            .iter()
            .filter(|vm| vm["iscontrolnode"] == true)
            .filter_map(|vm| vm["id"].as_str().map(str::to_string))
            .collect();
        if control.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(control.len(), 3, "the control VMs never appeared");
    stack
        .sim
        .add_external_lb(LB_IP.parse().unwrap(), 6443, control, 6443)
        .unwrap();
    let result = stack
        .wait_job(&stack.user, &job.job_id, CREATE_TIMEOUT)
        .await
        .unwrap();
    let cluster = &result["kubernetescluster"];
    assert_eq!(cluster["state"], "Running", "{cluster:#}");
    assert_eq!(cluster["endpoint"], format!("https://{LB_IP}:6443/"));
    assert_eq!(cluster["externalloadbalanceripaddress"], LB_IP);
    assert!(
        cluster.get("ipaddress").is_none(),
        "no public IP on a shared network"
    );
    // The controller made no public IP nor rules: the network and its balancer are the operator's.
    let ips = stack
        .admin
        .call("listPublicIpAddresses", &[("listall", "true")])
        .await
        .unwrap();
    assert!(ips.get("publicipaddress").is_none(), "{ips}");
    let config = kubeconfig(&stack, &id).await;
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains(&format!("server: https://{LB_IP}:6443"))
    );
    let ready = tokio::task::spawn_blocking(move || ready_nodes(config))
        .await
        .unwrap();
    assert_eq!(ready.len(), 4, "{ready:?}");
    delete_and_check_nothing_is_left(&stack, &id).await;
    // The shared network is the operator's: still there.
    let networks = stack
        .admin
        .call("listNetworks", &[("id", &network)])
        .await
        .unwrap();
    assert_eq!(networks["count"], 1);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_responses_and_transient_errors_from_cloudstack_make_nothing_twice() {
    let Some((_serial, stack)) = start("cluster end to end under faults").await else {
        return;
    };
    use cloudsim::faults::{FaultConfig, FaultRule};
    // Half the answers to the commands that make things are lost after CloudStack acted, and
    // half the load balancer creations fail with 503 before it acts (deterministic seed).
    let lost = |command: &str| FaultRule {
        command: command.into(),
        error_rate: 0.0,
        error_code: 530,
        latency_ms: 0,
        lost_response_rate: 0.5,
        job_failure_rate: 0.0,
    };
    let mut rules: Vec<FaultRule> = [
        "createNetwork",
        "associateIpAddress",
        "createFirewallRule",
        "deployVirtualMachine",
        "attachIso",
        "startVirtualMachine",
        "createTags",
        "assignToLoadBalancerRule",
    ]
    .into_iter()
    .map(lost)
    .collect();
    rules.push(FaultRule {
        error_rate: 0.5,
        error_code: 503,
        lost_response_rate: 0.0,
        ..lost("createLoadBalancerRule")
    });
    stack.sim.set_faults(FaultConfig {
        seed: 7,
        rules,
        ..FaultConfig::default()
    });
    let cluster = create(&stack, &[("name", "faulty"), ("size", "1")]).await;
    assert_eq!(cluster["state"], "Running", "{cluster:#}");
    let injected = stack.sim.fault_log();
    assert!(
        injected.len() >= 3,
        "too few faults injected to mean anything: {injected:?}"
    );
    stack.sim.set_faults(FaultConfig::default());

    // Exactly what one clean run makes: 2 VMs, 1 network, 1 firewall rule, 1 LB rule.
    let vms = stack
        .admin
        .call("listVirtualMachines", &[("listall", "true")])
        .await
        .unwrap();
    assert_eq!(vms["count"], 2, "{vms:#}");
    let networks = stack
        .admin
        .call("listNetworks", &[("listall", "true")])
        .await
        .unwrap();
    assert_eq!(networks["count"], 1, "{networks:#}");
    let ip = cluster["ipaddressid"].as_str().unwrap();
    let firewall = stack
        .admin
        .call(
            "listFirewallRules",
            &[("ipaddressid", ip), ("listall", "true")],
        )
        .await
        .unwrap();
    assert_eq!(firewall["count"], 1, "{firewall:#}");
    let lb = stack
        .admin
        .call(
            "listLoadBalancerRules",
            &[("publicipid", ip), ("listall", "true")],
        )
        .await
        .unwrap();
    assert_eq!(lb["count"], 1, "{lb:#}");
    let id = cluster["id"].as_str().unwrap().to_string();
    assert_eq!(ready(&stack, &id).await.len(), 2);
    delete_and_check_nothing_is_left(&stack, &id).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_controller_killed_mid_create_stop_and_start_resumes_each_and_nothing_runs_twice() {
    if !nodes_possible("controller crashes during create, stop and start") {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut stack = Stack::start_process(&Programs::beside_test().unwrap())
        .await
        .unwrap();
    let version = stack.add_version(&isos()[0]).await.unwrap();
    let (zone, offering) = stack.zone_and_offering().await.unwrap();
    let job = stack
        .user
        .submit(
            "createKubernetesCluster",
            &[
                ("name", "crash"),
                ("zoneid", &zone),
                ("kubernetesversionid", &version),
                ("serviceofferingid", &offering),
                ("controlnodes", "1"),
                ("size", "2"),
            ],
        )
        .await
        .unwrap();
    let id = job.id.clone().unwrap();
    // Kill it (SIGKILL) once the first control node is being initialised or joined, and
    // start it again on the same data directory: the workflow resumes from its journal.
    let killed_in = kill_and_restart_in(
        &mut stack,
        &id,
        &["init-control-plane", "join-control-planes", "join-workers"],
    )
    .await;
    let result = stack
        .wait_job(&stack.user, &job.job_id, CREATE_TIMEOUT)
        .await
        .unwrap_or_else(|err| panic!("after a kill in {killed_in}: {err}"));
    let cluster = &result["kubernetescluster"];
    assert_eq!(cluster["state"], "Running", "{cluster:#}");
    let log = stack.process.as_ref().unwrap().log();
    assert!(log.contains("resuming workflow"), "{log}");

    // Nothing twice: three VMs, and on every node kubeadm init/join ran exactly once.
    let vms = stack
        .admin
        .call("listVirtualMachines", &[("listall", "true")])
        .await
        .unwrap();
    assert_eq!(vms["count"], 3, "{vms:#}");
    let mut inits = 0;
    for vm in cluster["virtualmachines"].as_array().unwrap() {
        let node = stack.sim.node(vm["id"].as_str().unwrap()).unwrap();
        let agent = std::fs::read_to_string(node.log_dir.join("agent.log")).unwrap();
        let init = agent.matches("running kubeadm command=\"init\"").count();
        let join = agent.matches("running kubeadm command=\"join\"").count();
        assert!(init + join == 1, "{}: init {init}, join {join}", vm["name"]);
        inits += init;
    }
    assert_eq!(inits, 1);
    assert_eq!(ready(&stack, &id).await.len(), 3);

    // Stop and start resume the same way. CloudStack answers stopVirtualMachine and
    // startVirtualMachine slowly here, so the kills surely land inside stop-vms and start-vms.
    let slow = |command: &str| cloudsim::faults::FaultRule {
        command: command.into(),
        error_rate: 0.0,
        error_code: 530,
        latency_ms: 1500,
        lost_response_rate: 0.0,
        job_failure_rate: 0.0,
    };
    stack.sim.set_faults(cloudsim::faults::FaultConfig {
        rules: vec![slow("stopVirtualMachine"), slow("startVirtualMachine")],
        ..cloudsim::faults::FaultConfig::default()
    });
    let job = stack
        .user
        .submit("stopKubernetesCluster", &[("id", &id)])
        .await
        .unwrap();
    // Asking again while it stops answers with the same job.
    let again = stack
        .user
        .submit("stopKubernetesCluster", &[("id", &id)])
        .await
        .unwrap();
    assert_eq!(
        again.job_id,
        job.job_id,
        "{:#}",
        listed(&stack, &id).await["progress"]
    );
    kill_and_restart_in(&mut stack, &id, &["stop-vms"]).await;
    let stopped = finished(&stack, "stopKubernetesCluster", &id, &job.job_id).await;
    assert_eq!(stopped["success"], true);
    let vms = stack
        .admin
        .call("listVirtualMachines", &[("listall", "true")])
        .await
        .unwrap();
    let vms = vms["virtualmachine"].as_array().unwrap();
    assert_eq!(vms.len(), 3);
    assert!(vms.iter().all(|vm| vm["state"] == "Stopped"), "{vms:#?}");

    let job = stack
        .user
        .submit("startKubernetesCluster", &[("id", &id)])
        .await
        .unwrap();
    kill_and_restart_in(&mut stack, &id, &["start-vms"]).await;
    let started = finished(&stack, "startKubernetesCluster", &id, &job.job_id).await;
    stack
        .sim
        .set_faults(cloudsim::faults::FaultConfig::default());
    assert_eq!(started["kubernetescluster"]["state"], "Running");
    let log = stack.process.as_ref().unwrap().log();
    assert_eq!(log.matches("resuming workflow").count(), 3, "{log}");
    assert_eq!(ready(&stack, &id).await.len(), 3);

    delete_and_check_nothing_is_left(&stack, &id).await;
    stack.stop().await;
}

/// Waits until cluster `id`'s operation is in one of `steps`, kills the controller there with
/// SIGKILL and starts it again on the same data directory; returns the step it was killed in.
async fn kill_and_restart_in(stack: &mut Stack, id: &str, steps: &[&str]) -> String {
    let mut seen = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while tokio::time::Instant::now() < deadline {
        seen = current_step(stack, id).await;
        if seen.as_deref().is_some_and(|s| steps.contains(&s)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed_in = seen.unwrap_or_default();
    if !steps.contains(&killed_in.as_str()) {
        let listed = stack
            .user
            .call("listKubernetesClusters", &[("id", id)])
            .await;
        let log = stack.process.as_ref().unwrap().log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "the operation never reached {steps:?} (last seen: {killed_in:?})\n{listed:#?}\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let process = stack.process.as_mut().unwrap();
    process.kill();
    eprintln!("controller killed in step {killed_in}");
    process.start().unwrap();
    killed_in
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_vm_stopped_behind_the_controllers_back_alerts_the_cluster_and_is_repaired() {
    let Some((_serial, stack)) = start("reconciler repair").await else {
        return;
    };
    stack
        .admin
        .call(
            "updateConfiguration",
            &[
                ("name", "cloud.kubernetes.cluster.reconcile.interval"),
                ("value", "5"),
            ],
        )
        .await
        .unwrap();
    let cluster = create(&stack, &[("name", "healing"), ("size", "1")]).await;
    let id = cluster["id"].as_str().unwrap().to_string();
    let worker = cluster["virtualmachines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|vm| vm["iscontrolnode"] == false)
        .unwrap();
    let (worker_id, worker_name) = (
        worker["id"].as_str().unwrap().to_string(),
        worker["name"].as_str().unwrap().to_string(),
    );

    // Stopped on CloudStack itself, not through the controller.
    let keys = stack.sim.admin_keys();
    let cloudstack =
        cks_e2e::stack::client(&stack.sim.endpoint(), &keys.api_key, &keys.secret_key).unwrap();
    let job = cloudstack
        .submit("stopVirtualMachine", &[("id", &worker_id)])
        .await
        .unwrap();
    cloudstack
        .wait_job(
            &job.job_id,
            tokio::time::Instant::now() + Duration::from_secs(60),
        )
        .await
        .unwrap();

    // Within a few intervals: Alert naming the node, the VM started again, and Running again
    // once the node's agent is back and its kubelet Ready.
    let reconciled = || async {
        let events = stack
            .user
            .call("listKubernetesClusterEvents", &[("id", &id)])
            .await
            .unwrap();
        events["kubernetesclusterevent"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["operation"] == "reconcile")
            .map(|e| {
                (
                    e["state"].as_str().unwrap().to_string(),
                    e["description"].as_str().unwrap().to_string(),
                )
            })
            .collect::<Vec<(String, String)>>()
    };
    let mut shown = listed(&stack, &id).await;
    let mut events = reconciled().await;
    for _ in 0..240 {
        if shown["state"] == "Running" && events.iter().any(|(state, _)| state == "Running") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        shown = listed(&stack, &id).await;
        events = reconciled().await;
    }
    let reconciled = events;
    assert_eq!(shown["state"], "Running", "{shown:#}\n{reconciled:#?}");
    let states: Vec<&str> = reconciled.iter().map(|(s, _)| s.as_str()).collect();
    // Newest first.
    assert_eq!(states, ["Running", "Alert", "Repaired"], "{reconciled:#?}");
    assert!(
        reconciled[1].1.contains(&worker_name) && reconciled[1].1.contains("Stopped"),
        "{reconciled:#?}"
    );
    let nodes = kube_nodes(&stack, &id).await;
    assert!(
        nodes.iter().all(|(_, ready, _)| *ready) && nodes.len() == 2,
        "{nodes:?}"
    );
    delete_and_check_nothing_is_left(&stack, &id).await;
    stack.stop().await;
}
