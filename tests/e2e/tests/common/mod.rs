//! What the end-to-end test files share: the ISOs, one stack at a time, cluster operations
//! through the controller's API and the real kubectl.

#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::sync::OnceLock;
use std::time::Duration;

use cks_e2e::stack::{BuiltIso, Programs, Stack, build_isos, kubectl, nodes_possible};
use serde_json::Value;

/// Creating a cluster on a busy 2-core machine: VMs boot, agents install, kubeadm runs.
pub const CREATE_TIMEOUT: Duration = Duration::from_secs(600);

/// One cluster at a time: each node runs an agent and a containerd, and the machine has two
/// cores.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn isos() -> &'static Vec<BuiltIso> {
    static ISOS: OnceLock<Vec<BuiltIso>> = OnceLock::new();
    ISOS.get_or_init(|| {
        let programs = Programs::beside_test().unwrap();
        let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-isos");
        let _ = std::fs::remove_dir_all(&out);
        build_isos(&programs.isobuilder, &["1.33.1", "1.34.0"], &out).unwrap()
    })
}

/// Creates a cluster as the user and waits for the job; returns the cluster object.
pub async fn create(stack: &Stack, extra: &[(&str, &str)]) -> Value {
    let version = stack.add_version(&isos()[0]).await.unwrap();
    let (zone, offering) = stack.zone_and_offering().await.unwrap();
    let mut params = vec![
        ("zoneid", zone.as_str()),
        ("kubernetesversionid", version.as_str()),
        ("serviceofferingid", offering.as_str()),
    ];
    params.extend_from_slice(extra);
    let job = stack
        .user
        .submit("createKubernetesCluster", &params)
        .await
        .unwrap();
    let id = job.id.clone().unwrap();
    finished(stack, "createKubernetesCluster", &id, &job.job_id).await["kubernetescluster"].clone()
}

/// The result of job `job_id` of a cluster operation; when it fails, the panic shows the
/// cluster's progress.
pub async fn finished(stack: &Stack, command: &str, id: &str, job_id: &str) -> Value {
    match stack.wait_job(&stack.user, job_id, CREATE_TIMEOUT).await {
        Ok(result) => result,
        Err(err) => {
            let listed = stack
                .user
                .call("listKubernetesClusters", &[("id", id)])
                .await
                .unwrap_or_default();
            panic!(
                "{command} failed: {err}\n{:#}",
                listed["kubernetescluster"][0]["progress"]
            );
        }
    }
}

/// The stack for one test, when this machine can run it (else the test is skipped with a
/// message), holding the one-cluster-at-a-time lock.
pub async fn start(what: &str) -> Option<(tokio::sync::MutexGuard<'static, ()>, Stack)> {
    start_checked(what, true).await
}

/// Like [`start`], with enrollments accepted from any address (shared-network nodes: see
/// [`Stack::start_any_source`]).
pub async fn start_any_source(what: &str) -> Option<(tokio::sync::MutexGuard<'static, ()>, Stack)> {
    start_checked(what, false).await
}

async fn start_checked(
    what: &str,
    check_source: bool,
) -> Option<(tokio::sync::MutexGuard<'static, ()>, Stack)> {
    if !nodes_possible(what) {
        return None;
    }
    let serial = ONE_AT_A_TIME.lock().await;
    let programs = Programs::beside_test().unwrap();
    let stack = if check_source {
        Stack::start(&programs).await
    } else {
        Stack::start_any_source(&programs).await
    };
    Some((serial, stack.unwrap()))
}

/// The Ready nodes as the real kubectl sees them through the kubeconfig of cluster `id`.
pub async fn ready(stack: &Stack, id: &str) -> Vec<String> {
    let config = kubeconfig(stack, id).await;
    tokio::task::spawn_blocking(move || ready_nodes(config))
        .await
        .unwrap()
}

pub fn ready_nodes(kubeconfig: std::path::PathBuf) -> Vec<String> {
    let nodes: Value =
        serde_json::from_str(&kubectl(&kubeconfig, &["get", "nodes", "-o", "json"]).unwrap())
            .unwrap();
    nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|node| {
            node["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .map(|node| node["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

pub async fn kubeconfig(stack: &Stack, id: &str) -> std::path::PathBuf {
    let config = stack
        .user
        .call("getKubernetesClusterConfig", &[("id", id)])
        .await
        .unwrap();
    let text = config["clusterconfig"]["configdata"].as_str().unwrap();
    let path = stack.dir.path().join(format!("{id}.kubeconfig"));
    std::fs::write(&path, text).unwrap();
    path
}

pub async fn delete_and_check_nothing_is_left(stack: &Stack, id: &str) {
    let job = stack
        .user
        .submit("deleteKubernetesCluster", &[("id", id)])
        .await
        .unwrap();
    stack
        .wait_job(&stack.user, &job.job_id, Duration::from_secs(300))
        .await
        .unwrap();
    let vms = stack.user.call("listVirtualMachines", &[]).await.unwrap();
    assert!(vms.get("virtualmachine").is_none(), "VMs left: {vms}");
    let clusters = stack
        .user
        .call("listKubernetesClusters", &[])
        .await
        .unwrap();
    assert_eq!(clusters, serde_json::json!({}));
}

/// Runs a cluster operation as the user and returns the job's result.
pub async fn operate_with(stack: &Stack, command: &str, id: &str, extra: &[(&str, &str)]) -> Value {
    let mut params = vec![("id", id)];
    params.extend_from_slice(extra);
    let job = stack.user.submit(command, &params).await.unwrap();
    finished(stack, command, id, &job.job_id).await
}

/// Runs a cluster operation as the user and returns the job's result.
pub async fn operate(stack: &Stack, command: &str, id: &str) -> Value {
    let job = stack.user.submit(command, &[("id", id)]).await.unwrap();
    finished(stack, command, id, &job.job_id).await
}

pub async fn listed(stack: &Stack, id: &str) -> Value {
    let listed = stack
        .user
        .call("listKubernetesClusters", &[("id", id)])
        .await
        .unwrap();
    listed["kubernetescluster"][0].clone()
}

/// The step the cluster's operation is in (`progress.step`).
pub async fn current_step(stack: &Stack, id: &str) -> Option<String> {
    let listed = stack
        .user
        .call("listKubernetesClusters", &[("id", id)])
        .await
        .ok()?;
    listed["kubernetescluster"][0]["progress"]["step"]
        .as_str()
        .map(str::to_string)
}

/// The unmodified `cs` client for the stack's user, through the controller.
pub fn cs(stack: &Stack) -> cks_fixtures::cs::Cs {
    let keys = stack.sim.user_keys();
    cks_fixtures::cs::Cs {
        bin: cks_fixtures::tools::cs_binary(stack.dir.path()).unwrap(),
        home: stack.dir.path().to_path_buf(),
        endpoint: format!("http://{}/client/api", stack.api_addr()),
        key: keys.api_key.clone(),
        secret: keys.secret_key.clone(),
    }
}

/// Every node the real kubectl lists through cluster `id`'s kubeconfig: (name, Ready, kubelet
/// version).
pub async fn kube_nodes(stack: &Stack, id: &str) -> Vec<(String, bool, String)> {
    let config = kubeconfig(stack, id).await;
    tokio::task::spawn_blocking(move || {
        let nodes: Value =
            serde_json::from_str(&kubectl(&config, &["get", "nodes", "-o", "json"]).unwrap())
                .unwrap();
        nodes["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|node| {
                let ready = node["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
                (
                    node["metadata"]["name"].as_str().unwrap().to_string(),
                    ready,
                    node["status"]["nodeInfo"]["kubeletVersion"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect()
    })
    .await
    .unwrap()
}

/// The log of the agent on the node whose VM is `vm_id`.
pub fn agent_log(stack: &Stack, vm_id: &str) -> String {
    let node = stack.sim.node(vm_id).unwrap();
    std::fs::read_to_string(node.log_dir.join("agent.log")).unwrap_or_default()
}

/// The ids of the cluster's VMs, as listed.
pub fn vm_ids(cluster: &Value) -> Vec<String> {
    cluster["virtualmachines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| vm["id"].as_str().unwrap().to_string())
        .collect()
}
