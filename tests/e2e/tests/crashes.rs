//! Every crash point proven: a cluster's whole life — create, scale up, scale down, upgrade,
//! stop, start, delete — with the controller killing itself at every step boundary (after each
//! step's start and after each step's outcome is committed) and at each commit point of
//! beginning and ending each operation. The controller runs as a process armed with a crash
//! ledger (see `controller/src/crashpoint.rs`): at each crash point not yet in the ledger it
//! records the point and aborts, like SIGKILL; the test restarts it at once, and the run goes
//! on to the next point. After each operation: the operation reached its final state, nothing
//! was done twice (VMs, rules, public IPs, kubeadm init/join/upgrade), and the simulator holds
//! nothing that belongs to no cluster. The matrix (operation × crash point → resumed) is
//! printed and written to `target/tmp/crash-matrix.txt` (`make test` prints it).
//!
//! A second test runs the same life while the simulator fails a seeded fraction of CloudStack
//! calls: each operation completes, or ends in its failure state with the cause and nothing
//! left behind.
//!
//! Needs root (network namespaces, containerd) and the workspace's binaries; skipped with a
//! message otherwise.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use cks_e2e::stack::{Programs, Stack, nodes_possible};
use common::*;
use serde_json::Value;

/// How long one operation may take, crashes and restarts included.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(900);

/// The stack with a controller that may die at any moment: every call retries, reviving it.
struct Crashing {
    stack: Stack,
    ledger: PathBuf,
    restarts: usize,
}

impl Crashing {
    fn revive(&mut self) {
        let process = self.stack.process.as_mut().unwrap();
        if process.revive().unwrap() {
            self.restarts += 1;
        }
    }

    fn ledger(&self) -> Vec<String> {
        std::fs::read_to_string(&self.ledger)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// A call as the user; retried (the controller revived) while the controller is down.
    async fn call(&mut self, command: &str, params: &[(&str, &str)]) -> Value {
        for _ in 0..600 {
            self.revive();
            match self.stack.user.call(command, params).await {
                Ok(value) => return value,
                Err(err) if err.errorcode().is_none() => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => panic!("{command} failed: {err}"),
            }
        }
        panic!("{command}: the controller never answered")
    }

    /// Submits an async operation and returns its job. A request whose answer was lost in a
    /// crash is asked again: the engine answers with the job under way (or, for a create, the
    /// cluster is found by its name).
    async fn submit(&mut self, command: &str, params: &[(&str, &str)]) -> String {
        for _ in 0..600 {
            self.revive();
            match self.stack.user.submit(command, params).await {
                Ok(job) => return job.job_id,
                Err(err) if err.errorcode().is_none() => {
                    self.revive();
                    if command == "createKubernetesCluster" {
                        let name = params.iter().find(|(k, _)| *k == "name").unwrap().1;
                        let listed = self.call("listKubernetesClusters", &[("name", name)]).await;
                        if let Some(job) = listed["kubernetescluster"][0]["jobid"].as_str() {
                            return job.to_string();
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => panic!("{command} failed: {err}"),
            }
        }
        panic!("{command}: the controller never answered")
    }

    /// Waits for a job of the controller, reviving it whenever it died; the job's result or its
    /// error text.
    async fn wait(&mut self, job_id: &str) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + OPERATION_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            let job = self.call("queryAsyncJobResult", &[("jobid", job_id)]).await;
            match job["jobstatus"].as_u64() {
                Some(1) => return Ok(job["jobresult"].clone()),
                Some(2) => {
                    return Err(job["jobresult"]["errortext"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string());
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        Err(format!("job {job_id} did not end in {OPERATION_TIMEOUT:?}"))
    }

    async fn operate(&mut self, command: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let job = self.submit(command, params).await;
        self.wait(&job).await
    }

    async fn cluster(&mut self, id: &str) -> Value {
        let listed = self.call("listKubernetesClusters", &[("id", id)]).await;
        listed["kubernetescluster"][0].clone()
    }

    /// Every VM CloudStack holds, as the admin sees them.
    async fn all_vms(&mut self) -> Vec<Value> {
        let vms = self
            .stack
            .admin
            .call("listVirtualMachines", &[("listall", "true")])
            .await
            .unwrap();
        vms["virtualmachine"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    async fn count(&mut self, command: &str, params: &[(&str, &str)]) -> u64 {
        let mut all = vec![("listall", "true")];
        all.extend_from_slice(params);
        let listed = self.stack.admin.call(command, &all).await.unwrap();
        listed["count"].as_u64().unwrap_or(0)
    }
}

/// Checks what must hold after every operation: the cluster's VMs are exactly CloudStack's VMs
/// (nothing belongs to no cluster), one network, one public IP, the API rules once.
async fn nothing_twice_nothing_orphaned(c: &mut Crashing, cluster: &Value, nodes: usize) {
    let listed = vm_ids(cluster);
    assert_eq!(listed.len(), nodes, "{cluster:#}");
    let mut held: Vec<String> = c
        .all_vms()
        .await
        .iter()
        .map(|vm| vm["id"].as_str().unwrap().to_string())
        .collect();
    held.sort();
    let mut ours = listed.clone();
    ours.sort();
    assert_eq!(
        held, ours,
        "CloudStack holds VMs that are not the cluster's"
    );
    assert_eq!(c.count("listNetworks", &[]).await, 1);
    assert_eq!(c.count("listPublicIpAddresses", &[]).await, 1);
    let ip = cluster["ipaddressid"].as_str().unwrap().to_string();
    assert_eq!(
        c.count("listFirewallRules", &[("ipaddressid", &ip)]).await,
        1,
        "firewall rules"
    );
    assert_eq!(
        c.count("listLoadBalancerRules", &[("publicipid", &ip)])
            .await,
        1,
        "load balancer rules"
    );
}

/// kubeadm `what` ran on each node as many times as `expected` says (by VM id).
fn kubeadm_runs(c: &Crashing, cluster: &Value, what: &str) -> BTreeMap<String, usize> {
    cluster["virtualmachines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| {
            let log = agent_log(&c.stack, vm["id"].as_str().unwrap());
            (
                vm["name"].as_str().unwrap().to_string(),
                log.matches(&format!("running kubeadm command=\"{what}\""))
                    .count(),
            )
        })
        .collect()
}

fn matrix_row(rows: &mut Vec<String>, operation: &str, points: &[String], outcome: &str) {
    for point in points {
        rows.push(format!("{operation:<14} {point:<44} {outcome}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_controller_killed_at_every_crash_point_of_every_operation_resumes_each_and_nothing_runs_twice()
 {
    if !nodes_possible("the crash matrix") {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut stack = Stack::start_process(&Programs::beside_test().unwrap())
        .await
        .unwrap();
    let old = stack.add_version(&isos()[0]).await.unwrap();
    let new = stack.add_version(&isos()[1]).await.unwrap();
    let (zone, offering) = stack.zone_and_offering().await.unwrap();
    let ledger = stack.dir.path().join("crash-ledger");
    let process = stack.process.as_mut().unwrap();
    process.kill();
    process.arm_crash_points(&ledger);
    process.start().unwrap();
    let mut c = Crashing {
        stack,
        ledger,
        restarts: 0,
    };
    let mut rows = Vec::new();
    let mut seen = 0;
    let mut step = |c: &Crashing, rows: &mut Vec<String>, operation: &str, ok: bool| {
        let ledger = c.ledger();
        let points: Vec<String> = ledger[seen..].to_vec();
        seen = ledger.len();
        assert!(
            points.iter().any(|p| p.ends_with("finish:after-commit")),
            "{operation}: its crash points were not all reached: {points:?}"
        );
        matrix_row(
            rows,
            operation,
            &points,
            if ok { "resumed" } else { "FAILED" },
        );
        points.len()
    };

    // Create 1 + 1.
    let created = c
        .operate(
            "createKubernetesCluster",
            &[
                ("name", "phoenix"),
                ("zoneid", &zone),
                ("kubernetesversionid", &old),
                ("serviceofferingid", &offering),
                ("size", "1"),
            ],
        )
        .await;
    let cluster = created.clone().unwrap_or_else(|e| panic!("create: {e}"));
    let id = cluster["kubernetescluster"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let cluster = c.cluster(&id).await;
    assert_eq!(cluster["state"], "Running", "{cluster:#}");
    nothing_twice_nothing_orphaned(&mut c, &cluster, 2).await;
    let inits = kubeadm_runs(&c, &cluster, "init");
    let joins = kubeadm_runs(&c, &cluster, "join");
    assert!(
        inits.values().zip(joins.values()).all(|(i, j)| i + j == 1),
        "init {inits:?} join {joins:?}"
    );
    let create_points = step(&c, &mut rows, "create", true);

    // Scale up to 2 workers, then down to 1.
    let up = c
        .operate("scaleKubernetesCluster", &[("id", &id), ("size", "2")])
        .await;
    assert!(up.is_ok(), "scale up: {up:?}");
    let cluster = c.cluster(&id).await;
    assert_eq!(
        (cluster["state"].clone(), cluster["size"].clone()),
        ("Running".into(), 2.into())
    );
    nothing_twice_nothing_orphaned(&mut c, &cluster, 3).await;
    let joins = kubeadm_runs(&c, &cluster, "join");
    assert_eq!(joins.values().filter(|n| **n == 1).count(), 2, "{joins:?}");
    assert!(joins.values().all(|n| *n <= 1), "{joins:?}");
    step(&c, &mut rows, "scale-up", true);

    let down = c
        .operate("scaleKubernetesCluster", &[("id", &id), ("size", "1")])
        .await;
    assert!(down.is_ok(), "scale down: {down:?}");
    let cluster = c.cluster(&id).await;
    assert_eq!(
        (cluster["state"].clone(), cluster["size"].clone()),
        ("Running".into(), 1.into())
    );
    nothing_twice_nothing_orphaned(&mut c, &cluster, 2).await;
    assert_eq!(kube_nodes(&c.stack, &id).await.len(), 2);
    step(&c, &mut rows, "scale-down", true);

    // Upgrade to the next minor.
    let upgraded = c
        .operate(
            "upgradeKubernetesCluster",
            &[("id", &id), ("kubernetesversionid", &new)],
        )
        .await;
    assert!(upgraded.is_ok(), "upgrade: {upgraded:?}");
    let cluster = c.cluster(&id).await;
    assert_eq!(cluster["state"], "Running");
    assert_eq!(cluster["kubernetesversionid"], new.as_str());
    let applies = kubeadm_runs(&c, &cluster, "upgrade apply");
    let nodes = kubeadm_runs(&c, &cluster, "upgrade node");
    assert_eq!(applies.values().sum::<usize>(), 1, "{applies:?}");
    assert!(
        applies
            .values()
            .zip(nodes.values())
            .all(|(a, n)| a + n == 1),
        "apply {applies:?} node {nodes:?}"
    );
    assert!(
        kube_nodes(&c.stack, &id)
            .await
            .iter()
            .all(|(_, ready, v)| *ready && v == "v1.34.0")
    );
    nothing_twice_nothing_orphaned(&mut c, &cluster, 2).await;
    step(&c, &mut rows, "upgrade", true);

    // Stop, start.
    let stopped = c.operate("stopKubernetesCluster", &[("id", &id)]).await;
    assert!(stopped.is_ok(), "stop: {stopped:?}");
    let cluster = c.cluster(&id).await;
    assert_eq!(cluster["state"], "Stopped");
    assert!(c.all_vms().await.iter().all(|vm| vm["state"] == "Stopped"));
    step(&c, &mut rows, "stop", true);
    let started = c.operate("startKubernetesCluster", &[("id", &id)]).await;
    assert!(started.is_ok(), "start: {started:?}");
    let cluster = c.cluster(&id).await;
    assert_eq!(cluster["state"], "Running");
    assert_eq!(ready(&c.stack, &id).await.len(), 2);
    step(&c, &mut rows, "start", true);

    // Delete: nothing left at all.
    let deleted = c.operate("deleteKubernetesCluster", &[("id", &id)]).await;
    assert!(deleted.is_ok(), "delete: {deleted:?}");
    assert!(c.all_vms().await.is_empty());
    assert_eq!(c.count("listNetworks", &[]).await, 0);
    assert_eq!(c.count("listPublicIpAddresses", &[]).await, 0);
    assert_eq!(
        c.call("listKubernetesClusters", &[]).await,
        serde_json::json!({})
    );
    step(&c, &mut rows, "delete", true);

    let total = c.ledger().len();
    let mut text = format!(
        "crash matrix: {total} crash points, the controller restarted {} times; every operation resumed and nothing ran twice\n",
        c.restarts
    );
    text.push_str(&format!(
        "{:<14} {:<44} outcome\n",
        "operation", "killed at"
    ));
    for row in &rows {
        text.push_str(row);
        text.push('\n');
    }
    eprintln!("{text}");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("crash-matrix.txt");
    std::fs::write(&out, &text).unwrap();
    assert!(
        create_points >= 30,
        "create crashed at only {create_points} points"
    );
    c.stack.stop().await;
}

/// What one operation under faults came to.
async fn outcome(
    stack: &Stack,
    id: &str,
    command: &str,
    params: &[(&str, &str)],
    ok_state: &str,
) -> String {
    let job = match stack.user.submit(command, params).await {
        Ok(job) => job,
        // The cluster is where an earlier failure left it (stopped cluster in Alert cannot be
        // started): refused up front, with CKS's text, changing nothing.
        Err(err) => return format!("refused: {err}"),
    };
    let result = stack
        .wait_job(&stack.user, &job.job_id, OPERATION_TIMEOUT)
        .await;
    let cluster = listed(stack, id).await;
    match result {
        Ok(_) => {
            assert_eq!(cluster["state"], ok_state, "{command}: {cluster:#}");
            "completed".to_string()
        }
        Err(err) => {
            // Ended cleanly: a failure state, the cause named, shown with the cluster.
            let state = cluster["state"].as_str().unwrap_or_default().to_string();
            assert!(
                ["Alert", "Error"].contains(&state.as_str()),
                "{command} failed but left the cluster in {state}: {err}"
            );
            let failure = cluster["failure"].as_str().unwrap_or_default();
            assert!(
                failure.contains("step "),
                "{command}: no cause: {cluster:#}"
            );
            format!("ended in {state}: {failure}")
        }
    }
}

/// CloudStack holds exactly the cluster's VMs: nothing made that belongs to no cluster.
async fn no_orphans(stack: &Stack, id: &str) {
    let cluster = listed(stack, id).await;
    let mut ours = vm_ids(&cluster);
    ours.sort();
    let vms = stack
        .admin
        .call("listVirtualMachines", &[("listall", "true")])
        .await
        .unwrap();
    let mut held: Vec<String> = vms["virtualmachine"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|vm| vm["id"].as_str().unwrap().to_string())
        .collect();
    held.sort();
    assert_eq!(
        held, ours,
        "CloudStack holds VMs that are not the cluster's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_operation_completes_or_ends_cleanly_while_cloudstack_fails_a_seeded_fraction_of_calls()
 {
    let Some((_serial, stack)) = start("operations under CloudStack faults").await else {
        return;
    };
    use cloudsim::faults::{FaultConfig, FaultRule};
    let old = stack.add_version(&isos()[0]).await.unwrap();
    let new = stack.add_version(&isos()[1]).await.unwrap();
    let (zone, offering) = stack.zone_and_offering().await.unwrap();
    // Every command that changes something: a 5xx before acting, a response lost after acting,
    // an async job that fails; VM deployments also fail for capacity (533).
    let rule = |command: &str, error_code: u16| FaultRule {
        command: command.into(),
        error_rate: 0.15,
        error_code,
        latency_ms: 0,
        lost_response_rate: 0.2,
        job_failure_rate: 0.04,
    };
    let mut rules = vec![rule("deployVirtualMachine", 533)];
    for command in [
        "createNetwork",
        "associateIpAddress",
        "createFirewallRule",
        "deleteFirewallRule",
        "createLoadBalancerRule",
        "assignToLoadBalancerRule",
        "deleteLoadBalancerRule",
        "createTags",
        "attachIso",
        "detachIso",
        "startVirtualMachine",
        "stopVirtualMachine",
        "destroyVirtualMachine",
        "deleteNetwork",
    ] {
        rules.push(rule(command, 503));
    }
    // The seed decides which calls fail, drawn in the order the controller makes them: this
    // one lets the create through, so every later operation meets faults too. A change of the
    // calls (one more createTags per rule, say) shifts the draws; pick a seed that still does.
    stack.sim.set_faults(FaultConfig {
        seed: 20261209,
        rules,
        ..FaultConfig::default()
    });

    let job = stack
        .user
        .submit(
            "createKubernetesCluster",
            &[
                ("name", "weathered"),
                ("zoneid", &zone),
                ("kubernetesversionid", &old),
                ("serviceofferingid", &offering),
                ("size", "1"),
            ],
        )
        .await
        .unwrap();
    let id = job.id.clone().unwrap();
    let result = stack
        .wait_job(&stack.user, &job.job_id, OPERATION_TIMEOUT)
        .await;
    let mut rows = vec![match &result {
        Ok(_) => "create         completed".to_string(),
        Err(err) => format!("create         ended in Error: {err}"),
    }];
    no_orphans(&stack, &id).await;
    if result.is_ok() {
        type Operation<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
        let operations: [Operation<'_>; 6] = [
            ("scaleKubernetesCluster", vec![("size", "2")], "Running"),
            ("scaleKubernetesCluster", vec![("size", "1")], "Running"),
            (
                "upgradeKubernetesCluster",
                vec![("kubernetesversionid", &new)],
                "Running",
            ),
            ("stopKubernetesCluster", vec![], "Stopped"),
            ("startKubernetesCluster", vec![], "Running"),
            ("stopKubernetesCluster", vec![], "Stopped"),
        ];
        for (command, extra, ok_state) in operations {
            let mut params = vec![("id", id.as_str())];
            params.extend(extra.iter().copied());
            let seen = outcome(&stack, &id, command, &params, ok_state).await;
            no_orphans(&stack, &id).await;
            let label = format!(
                "{command} {:?}",
                extra.first().map(|(_, v)| *v).unwrap_or("")
            );
            rows.push(format!("{label:<44} {seen}"));
        }
    }
    // Delete always ends the story: asked again while CloudStack keeps failing, it resumes
    // where it stopped, and nothing is left.
    let mut deleted = false;
    for attempt in 1..=5 {
        let job = stack
            .user
            .submit("deleteKubernetesCluster", &[("id", &id)])
            .await
            .unwrap();
        match stack
            .wait_job(&stack.user, &job.job_id, OPERATION_TIMEOUT)
            .await
        {
            Ok(_) => {
                rows.push(format!(
                    "delete (attempt {attempt})                         completed"
                ));
                deleted = true;
                break;
            }
            Err(err) => rows.push(format!(
                "delete (attempt {attempt})                         failed: {err}"
            )),
        }
    }
    assert!(deleted, "{rows:#?}");
    let injected = stack.sim.fault_log();
    stack.sim.set_faults(FaultConfig::default());
    let vms = stack
        .admin
        .call("listVirtualMachines", &[("listall", "true")])
        .await
        .unwrap();
    assert!(vms.get("virtualmachine").is_none(), "VMs left: {vms:#}");
    let networks = stack
        .admin
        .call("listNetworks", &[("listall", "true")])
        .await
        .unwrap();
    assert!(
        networks.get("network").is_none(),
        "networks left: {networks:#}"
    );
    let ips = stack
        .admin
        .call("listPublicIpAddresses", &[("listall", "true")])
        .await
        .unwrap();
    assert!(ips.get("publicipaddress").is_none(), "IPs left: {ips:#}");
    assert!(
        injected.len() >= 10,
        "too few faults to mean anything: {injected:?}"
    );
    let text = format!(
        "operations under CloudStack faults ({} injected: 5xx, lost responses, failed jobs, capacity):\n{}\n",
        injected.len(),
        rows.join("\n")
    );
    eprintln!("{text}");
    std::fs::write(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fault-matrix.txt"),
        &text,
    )
    .unwrap();
    stack.stop().await;
}
