//! Finishing async jobs: apply the job's completion to the world and record the result.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use crate::commands::limits::compute_usage;
use crate::commands::network::addressing;
use crate::commands::{render_vm, visible_iso_path};
use crate::model::{Completion, Db, VmState};
use crate::node::{NicSpec, NodeError, NodeRunner, NodeSpec};
use crate::store;

/// Completes job `job_id` (no-op when it is unknown or already done).
pub fn complete(db: &mut Db, job_id: &str, runner: &dyn NodeRunner) {
    let Some(index) = db.jobs.iter().position(|j| j.id == job_id && j.status == 0) else {
        return;
    };
    let job = db.jobs[index].clone();
    let outcome: Result<serde_json::Value, (u16, String)> = match job.planned_error.clone() {
        Some(err) => {
            settle_failed(db, &job.completion, &job.cmd);
            Err(err)
        }
        None => apply(db, &job.completion, runner, &job.cmd)
            .map(|vm_result| vm_result.unwrap_or(job.result.clone())),
    };
    let done = &mut db.jobs[index];
    done.completed = Some(store::now());
    match outcome {
        Ok(result) => {
            done.status = 1;
            done.result = result;
        }
        Err((code, text)) => {
            done.status = 2;
            done.result_code = code;
            done.result = json!({ "errorcode": code, "errortext": text });
            tracing::info!(job = %job_id, code, %text, "async job failed");
        }
    }
}

/// A failed start leaves a deploy in Error and a stopped VM stopped.
fn settle_failed(db: &mut Db, completion: &Completion, cmd: &str) {
    if let Completion::StartVm(id) = completion
        && let Some(vm) = db.vms.iter_mut().find(|v| &v.id == id)
    {
        vm.state = if cmd.ends_with("DeployVMCmd") {
            VmState::Error
        } else {
            VmState::Stopped
        };
    }
}

/// What the node runner needs to start VM `vm_id`.
pub(crate) fn node_spec(db: &Db, vm_id: &str) -> Option<NodeSpec> {
    let vm = db.vms.iter().find(|v| v.id == vm_id)?;
    Some(NodeSpec {
        vm_id: vm.id.clone(),
        name: vm.name.clone(),
        userdata: vm.userdata.as_ref().and_then(|u| STANDARD.decode(u).ok()),
        nics: vm
            .nics
            .iter()
            .map(|n| {
                let network = db.networks.iter().find(|net| net.id == n.network_id);
                let addressing = network.and_then(addressing);
                NicSpec {
                    network_id: n.network_id.clone(),
                    cidr: network.map(|net| net.cidr.clone()).unwrap_or_default(),
                    gateway: addressing
                        .map(|a| a.gateway.to_string())
                        .unwrap_or_default(),
                    ip: n.ip.clone(),
                    mac: n.mac.clone(),
                }
            })
            .collect(),
        iso: vm.iso_id.as_ref().and_then(|iso| visible_iso_path(db, iso)),
        ssh_authorized_keys: vm.ssh_public_keys.clone(),
        never_boots: vm.never_boots,
    })
}

/// A runner failure as a job error (530 with the whole cause chain, which never holds secrets).
fn node_failure(err: &NodeError) -> (u16, String) {
    (530, crate::nodes::error_chain(err))
}

/// Applies the completion; `Ok(Some(result))` replaces the planned result with a fresh one.
fn apply(
    db: &mut Db,
    completion: &Completion,
    runner: &dyn NodeRunner,
    cmd: &str,
) -> Result<Option<serde_json::Value>, (u16, String)> {
    let vm_id = match completion {
        Completion::Fixed => return Ok(None),
        Completion::StartVm(id) | Completion::StopVm(id) | Completion::RebootVm(id) => id.clone(),
    };
    let Some(node) = node_spec(db, &vm_id) else {
        return Err((530, format!("VM {vm_id} no longer exists")));
    };
    let state = match completion {
        Completion::StartVm(_) => {
            if db
                .vms
                .iter()
                .any(|v| v.id == vm_id && v.state == VmState::Destroyed)
            {
                return Err((530, format!("VM {vm_id} was destroyed before it started")));
            }
            let vm = db.vms.iter().find(|v| v.id == vm_id);
            let used = vm.map(|vm| compute_usage(db, Some(&vm.zone_id), Some(&vm_id)));
            let (cpu, mem) = used.map_or((0, 0), |u| (u.cores, u.memory_mib));
            let offering =
                vm.and_then(|vm| db.service_offerings.iter().find(|o| o.id == vm.offering_id));
            let zone = vm.and_then(|vm| db.zones.iter().find(|z| z.id == vm.zone_id));
            if let (Some(o), Some(z)) = (offering, zone)
                && (cpu + o.cpunumber > z.cpu_capacity || mem + o.memory > z.memory_capacity)
            {
                let text = crate::commands::capacity_text(db, &vm_id);
                settle_failed(db, completion, cmd);
                return Err((533, text));
            }
            match runner.start(&node) {
                Ok(network) => (VmState::Running, network.label()),
                Err(err) => {
                    settle_failed(db, completion, cmd);
                    return Err(node_failure(&err));
                }
            }
        }
        Completion::StopVm(_) => {
            runner.stop(&vm_id).map_err(|e| node_failure(&e))?;
            (VmState::Stopped, None)
        }
        _ => {
            runner.stop(&vm_id).map_err(|e| node_failure(&e))?;
            match runner.start(&node) {
                Ok(network) => (VmState::Running, network.label()),
                Err(err) => {
                    if let Some(vm) = db.vms.iter_mut().find(|v| v.id == vm_id) {
                        vm.state = VmState::Stopped;
                    }
                    return Err(node_failure(&err));
                }
            }
        }
    };
    let Some(vm) = db.vms.iter_mut().find(|v| v.id == vm_id) else {
        return Err((530, format!("VM {vm_id} no longer exists")));
    };
    vm.state = state.0;
    if state.0 == VmState::Running {
        vm.node_network = state.1.map(str::to_owned);
    }
    let vm = vm.clone();
    Ok(Some(json!({ "virtualmachine": render_vm(db, &vm) })))
}
