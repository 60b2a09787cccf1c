//! Scale and upgrade end to end, as CloudStack's own integration tests
//! (test_kubernetes_clusters.py) drive them, through the unmodified `cs` client: a cluster
//! scaled from one worker to two and back, and an HA cluster upgraded one node at a time. The
//! nodes run the real agent with the Kubernetes stand-ins; the real kubectl checks the result.
//!
//! Needs root (network namespaces, containerd) and the workspace's binaries (`make test`
//! builds them); skipped with a message otherwise.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_scales_from_one_worker_to_two_and_back_with_the_cs_client() {
    let Some((_serial, stack)) = start("scale end to end").await else {
        return;
    };
    // CloudStack scales running VMs only when this was on when they were deployed.
    stack
        .admin
        .call(
            "updateConfiguration",
            &[("name", "enable.dynamic.scale.vm"), ("value", "true")],
        )
        .await
        .unwrap();
    let cluster = create(&stack, &[("name", "scaler"), ("size", "1")]).await;
    let medium = cluster["serviceofferingid"].as_str().unwrap().to_string();
    let id = cluster["id"].as_str().unwrap().to_string();
    let before = vm_ids(&cluster);
    let cs = cs(&stack);

    // Up: a new worker is deployed, joined and Ready; the job's result is the cluster.
    let up = cs
        .ok(
            true,
            &["scaleKubernetesCluster", &format!("id={id}"), "size=2"],
        )
        .await;
    let cluster = &up["kubernetescluster"];
    assert_eq!(cluster["state"], "Running", "{up:#}");
    assert_eq!(cluster["size"], 2);
    assert_eq!(cluster["controlnodes"], 1);
    let after_up = vm_ids(cluster);
    assert_eq!(after_up.len(), 3, "{cluster:#}");
    assert!(
        before.iter().all(|vm| after_up.contains(vm)),
        "a node was replaced"
    );
    let nodes = kube_nodes(&stack, &id).await;
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    assert!(nodes.iter().all(|(_, ready, _)| *ready), "{nodes:?}");
    let steps: Vec<&str> = cluster["progress"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "scale-offering",
            "plan-workers",
            "deploy-nodes",
            "join-workers",
            "wait-ready",
            "detach-iso",
            "drain-nodes",
            "remove-nodes",
            "node-rules"
        ]
    );
    let added: Vec<&String> = after_up.iter().filter(|vm| !before.contains(vm)).collect();
    let log = agent_log(&stack, added[0]);
    assert_eq!(log.matches("running kubeadm command=\"join\"").count(), 1);

    // Down: the newest worker is drained, deleted from Kubernetes, reset, expunged.
    let down = cs
        .ok(
            true,
            &["scaleKubernetesCluster", &format!("id={id}"), "size=1"],
        )
        .await;
    let cluster = &down["kubernetescluster"];
    assert_eq!(cluster["state"], "Running", "{down:#}");
    assert_eq!(cluster["size"], 1);
    assert_eq!(vm_ids(cluster), before, "the newest worker leaves first");
    let nodes = kube_nodes(&stack, &id).await;
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    let gone = stack
        .admin
        .call(
            "listVirtualMachines",
            &[("id", added[0]), ("listall", "true")],
        )
        .await;
    assert!(
        gone.map_or(true, |v| v.get("virtualmachine").is_none()),
        "the removed node's VM is still there"
    );
    let log = agent_log(&stack, &before[0]);
    assert!(
        log.contains("command=\"drain\""),
        "no drain on the control node"
    );
    assert_eq!(
        stack.sim.call_counts().get("deployVirtualMachine").copied(),
        Some(3),
        "one VM per node, none twice"
    );

    // A bigger offering for every running node (scaleVirtualMachine, live), then back to the
    // smaller one while the cluster is stopped (changeServiceForVirtualMachine): stop, scale and
    // start all through cs.
    let offerings = stack.user.call("listServiceOfferings", &[]).await.unwrap();
    let large = offerings["serviceoffering"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["cpunumber"] == 4)
        .and_then(|o| o["id"].as_str())
        .unwrap()
        .to_string();
    for (offering, state, cpus) in [(&large, "Running", "8"), (&medium, "Stopped", "4")] {
        if state == "Stopped" {
            let stopped = cs
                .ok(true, &["stopKubernetesCluster", &format!("id={id}")])
                .await;
            assert_eq!(stopped["success"], true, "{stopped:#}");
        }
        let resized = cs
            .ok(
                true,
                &[
                    "scaleKubernetesCluster",
                    &format!("id={id}"),
                    &format!("serviceofferingid={offering}"),
                ],
            )
            .await;
        let cluster = &resized["kubernetescluster"];
        assert_eq!(cluster["state"], state, "{resized:#}");
        assert_eq!(cluster["serviceofferingid"], offering.as_str());
        assert_eq!(cluster["cpunumber"], cpus, "{cluster:#}");
        for vm in cluster["virtualmachines"].as_array().unwrap() {
            assert_eq!(vm["serviceofferingid"], offering.as_str(), "{vm:#}");
        }
    }
    let started = cs
        .ok(true, &["startKubernetesCluster", &format!("id={id}")])
        .await;
    assert_eq!(
        started["kubernetescluster"]["state"], "Running",
        "{started:#}"
    );
    assert_eq!(ready(&stack, &id).await.len(), 2);

    // CKS's refusals: nothing asked, all workers removed.
    let (ok, _, text) = cs
        .run(false, &["scaleKubernetesCluster", &format!("id={id}")])
        .await;
    assert!(
        !ok && text.contains("cannot be scaled, either service offering"),
        "{text}"
    );
    let worker = before[1].clone();
    let (ok, _, text) = cs
        .run(
            false,
            &[
                "scaleKubernetesCluster",
                &format!("id={id}"),
                &format!("nodeids={worker}"),
            ],
        )
        .await;
    assert!(
        !ok && text.contains("Can not remove all nodes from a cluster"),
        "{text}"
    );

    delete_and_check_nothing_is_left(&stack, &id).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ha_cluster_upgrades_one_node_at_a_time_with_the_cs_client() {
    let Some((_serial, stack)) = start("HA upgrade end to end").await else {
        return;
    };
    let cluster = create(
        &stack,
        &[("name", "upgrader"), ("controlnodes", "3"), ("size", "1")],
    )
    .await;
    let id = cluster["id"].as_str().unwrap().to_string();
    let old = cluster["kubernetesversionid"].as_str().unwrap().to_string();
    let new = stack.add_version(&isos()[1]).await.unwrap();
    let cs = cs(&stack);

    let upgraded = cs
        .ok(
            true,
            &[
                "upgradeKubernetesCluster",
                &format!("id={id}"),
                &format!("kubernetesversionid={new}"),
            ],
        )
        .await;
    let cluster = &upgraded["kubernetescluster"];
    assert_eq!(cluster["state"], "Running", "{upgraded:#}");
    assert_eq!(cluster["kubernetesversionid"], new.as_str());
    let vms = cluster["virtualmachines"].as_array().unwrap();
    assert_eq!(vms.len(), 4);
    for vm in vms {
        assert_eq!(vm["kubernetesnodeversion"], "v1.34.0", "{vm:#}");
        assert!(vm.get("isoid").is_none(), "ISO still attached: {vm:#}");
    }
    let nodes = kube_nodes(&stack, &id).await;
    assert_eq!(nodes.len(), 4);
    assert!(
        nodes.iter().all(|(_, ready, v)| *ready && v == "v1.34.0"),
        "{nodes:?}"
    );
    // kubeadm upgrade ran once per node: `apply` on the first control node, `node` elsewhere.
    let mut applies = 0;
    for vm in vms {
        let log = agent_log(&stack, vm["id"].as_str().unwrap());
        let apply = log.matches("command=\"upgrade apply\"").count();
        let node = log.matches("command=\"upgrade node\"").count();
        assert_eq!(
            apply + node,
            1,
            "{}: apply {apply}, node {node}",
            vm["name"]
        );
        applies += apply;
    }
    assert_eq!(applies, 1);

    // CKS's rules: never down.
    let (ok, _, text) = cs
        .run(
            false,
            &[
                "upgradeKubernetesCluster",
                &format!("id={id}"),
                &format!("kubernetesversionid={old}"),
            ],
        )
        .await;
    assert!(!ok && text.contains("can not be downgraded"), "{text}");

    delete_and_check_nothing_is_left(&stack, &id).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scale_whose_new_worker_never_boots_is_rolled_back_and_the_cluster_ends_in_alert() {
    let Some((_serial, stack)) = start("failed scale rolled back").await else {
        return;
    };
    let cluster = create(&stack, &[("name", "rollback"), ("size", "1")]).await;
    let id = cluster["id"].as_str().unwrap().to_string();
    let before = vm_ids(&cluster);
    stack
        .admin
        .call(
            "updateConfiguration",
            &[
                ("name", "cloud.kubernetes.cluster.scale.timeout"),
                ("value", "40"),
            ],
        )
        .await
        .unwrap();
    // Every VM started from now on hangs at boot: the new worker never reaches its agent.
    stack.sim.set_faults(cloudsim::faults::FaultConfig {
        never_boot: Some(cloudsim::faults::NeverBoot {
            rate: 1.0,
            name_pattern: None,
        }),
        ..cloudsim::faults::FaultConfig::default()
    });
    let job = stack
        .user
        .submit("scaleKubernetesCluster", &[("id", &id), ("size", "2")])
        .await
        .unwrap();
    let err = stack
        .wait_job(&stack.user, &job.job_id, CREATE_TIMEOUT)
        .await
        .expect_err("the scale must fail");
    stack
        .sim
        .set_faults(cloudsim::faults::FaultConfig::default());
    assert!(err.to_string().contains("timed out in step"), "{err}");
    let cluster = listed(&stack, &id).await;
    assert_eq!(cluster["state"], "Alert", "{cluster:#}");
    assert_eq!(cluster["size"], 1);
    assert!(
        cluster["failure"]
            .as_str()
            .unwrap()
            .contains("timed out in step"),
        "{cluster:#}"
    );
    let steps: Vec<(&str, &str)> = cluster["progress"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert!(steps.contains(&("roll-back", "Done")), "{steps:?}");
    // The worker it added is gone from CloudStack; the cluster is as it was.
    assert_eq!(vm_ids(&cluster), before);
    let vms = stack
        .admin
        .call("listVirtualMachines", &[("listall", "true")])
        .await
        .unwrap();
    assert_eq!(vms["count"], 2, "{vms:#}");
    assert_eq!(ready(&stack, &id).await.len(), 2);

    // Unlike CKS (apache/cloudstack#11166), a cluster in Alert can be scaled again.
    stack
        .admin
        .call(
            "updateConfiguration",
            &[
                ("name", "cloud.kubernetes.cluster.scale.timeout"),
                ("value", "3600"),
            ],
        )
        .await
        .unwrap();
    let again = operate_with(&stack, "scaleKubernetesCluster", &id, &[("size", "2")]).await;
    assert_eq!(again["kubernetescluster"]["state"], "Running", "{again:#}");
    assert_eq!(ready(&stack, &id).await.len(), 3);
    delete_and_check_nothing_is_left(&stack, &id).await;
    stack.stop().await;
}
