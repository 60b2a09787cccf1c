//! Virtual machines: deploy, start, stop, reboot, destroy, list.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::{Ctx, Outcome, list_response, owner_fields, zone_name};
use crate::cidr::{Cidr, CidrError};
use crate::error::ApiError;
use crate::model::{Completion, Db, Nic, Vm, VmState};
use crate::store::{self, new_id};

const VM_CMD: &str = "vm.";

/// The `virtualmachine` object CloudStack returns.
pub(crate) fn render_vm(db: &Db, vm: &Vm) -> Value {
    let offering = db.service_offerings.iter().find(|o| o.id == vm.offering_id);
    let template = db.templates.iter().find(|t| t.id == vm.template_id);
    let iso = vm
        .iso_id
        .as_ref()
        .and_then(|id| db.isos.iter().find(|i| &i.id == id));
    let nics: Vec<Value> = vm
        .nics
        .iter()
        .enumerate()
        .map(|(i, nic)| {
            let network = db.networks.iter().find(|n| n.id == nic.network_id);
            let cidr = network.and_then(|n| Cidr::parse(&n.cidr).ok());
            json!({
                "id": nic.id,
                "networkid": nic.network_id,
                "networkname": network.map(|n| n.name.clone()),
                "ipaddress": nic.ip,
                "gateway": cidr.map(|c| c.gateway().to_string()),
                "netmask": cidr.map(|c| c.netmask().to_string()),
                "macaddress": nic.mac,
                "isdefault": i == 0,
                "type": network.map(|n| n.guest_type.clone()),
                "traffictype": "Guest",
            })
        })
        .collect();
    let tags: Vec<Value> = db
        .tags
        .iter()
        .filter(|t| t.resource_id == vm.id)
        .map(|t| json!({ "key": t.key, "value": t.value }))
        .collect();
    let last_job = db
        .jobs
        .iter()
        .rev()
        .find(|j| j.instance_id.as_deref() == Some(vm.id.as_str()));
    let mut body = json!({
        "id": vm.id,
        "name": vm.name,
        "displayname": vm.displayname,
        "state": vm.state.as_str(),
        "zoneid": vm.zone_id,
        "zonename": zone_name(db, &vm.zone_id),
        "serviceofferingid": vm.offering_id,
        "serviceofferingname": offering.map(|o| o.name.clone()),
        "cpunumber": offering.map(|o| o.cpunumber),
        "cpuspeed": offering.map(|o| o.cpuspeed),
        "memory": offering.map(|o| o.memory),
        "templateid": vm.template_id,
        "templatename": template.map(|t| t.name.clone()),
        "hypervisor": "Simulator",
        "created": vm.created,
        "haenable": false,
        "nic": nics,
        "tags": tags,
    });
    owner_fields(db, &vm.account_id, &mut body);
    if let Some(iso) = iso {
        body["isoid"] = json!(iso.id);
        body["isoname"] = json!(iso.name);
    }
    if !vm.keypairs.is_empty() {
        body["keypairs"] = json!(vm.keypairs.join(","));
    }
    if let Some(network) = &vm.node_network {
        body["details"] = json!({ "simulator.node.network": network });
    }
    if let Some(size) = vm.rootdisksize {
        body["rootdisksize"] = json!(size);
    }
    if let Some(job) = last_job {
        body["jobid"] = json!(job.id);
        body["jobstatus"] = json!(job.status);
    }
    body
}

fn used_ips(db: &Db, network_id: &str) -> BTreeSet<Ipv4Addr> {
    db.vms
        .iter()
        .flat_map(|vm| vm.nics.iter())
        .filter(|nic| nic.network_id == network_id)
        .filter_map(|nic| nic.ip.parse().ok())
        .collect()
}

fn mac_address() -> String {
    let id = uuid::Uuid::new_v4();
    let b = id.as_bytes();
    format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
}

fn validate_userdata(ctx: &Ctx<'_>, userdata: &str) -> Result<(), ApiError> {
    let max: usize = ctx
        .db
        .configurations
        .iter()
        .find(|c| c.name == "vm.userdata.max.length")
        .and_then(|c| c.value.parse().ok())
        .unwrap_or(32768);
    if ctx.is_get && userdata.len() >= super::MAX_GET_USERDATA_LENGTH {
        return Err(ApiError::param(
            "User data is too long for an http GET request",
        ));
    }
    if userdata.len() > max {
        return Err(ApiError::param(
            "User data is too long for an http POST request",
        ));
    }
    match STANDARD.decode(userdata) {
        Ok(bytes) if !bytes.is_empty() => Ok(()),
        _ => Err(ApiError::param("User data is too short")),
    }
}

/// `deployVirtualMachine`: creates the VM now (create-style: `id` + `jobid`), starts it in the
/// job unless `startvm=false`.
pub(super) fn deploy(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let cmd = ctx.command;
    let p = ctx.params;
    let zone_id = p.require(cmd, "zoneid")?.to_owned();
    let offering_id = p.require(cmd, "serviceofferingid")?.to_owned();
    let template_id = p.require(cmd, "templateid")?.to_owned();
    if !ctx.db.zones.iter().any(|z| z.id == zone_id) {
        return Err(ApiError::param(format!(
            "Unable to find zone by id={zone_id}"
        )));
    }
    if !ctx.db.service_offerings.iter().any(|o| o.id == offering_id) {
        return Err(ApiError::param(format!(
            "Unable to find service offering: {offering_id}"
        )));
    }
    if !ctx.db.templates.iter().any(|t| t.id == template_id) {
        return Err(ApiError::param(format!(
            "Unable to use template {template_id}"
        )));
    }
    let owner = ctx.owner_for_create()?;
    let userdata = p.get("userdata").map(str::to_owned);
    if let Some(userdata) = &userdata {
        validate_userdata(ctx, userdata)?;
    }
    let start = p.bool("startvm", true)?;
    let rootdisksize: Option<u64> = p.number(cmd, "rootdisksize")?;
    let mut keypairs = p.list("keypairs");
    if let Some(k) = p.get("keypair") {
        keypairs.push(k.to_owned());
    }
    let mut network_ids = p.list("networkids");
    if network_ids.is_empty() {
        let own = ctx
            .db
            .networks
            .iter()
            .find(|n| n.account_id == owner && n.zone_id == zone_id)
            .ok_or_else(|| {
                ApiError::param("Can't find a default network for the account; specify networkids")
            })?;
        network_ids.push(own.id.clone());
    }
    let requested_ip: Option<Ipv4Addr> = p
        .get("ipaddress")
        .map(|ip| {
            ip.parse()
                .map_err(|_| ApiError::param(format!("Invalid ip address {ip}")))
        })
        .transpose()?;
    let mut nics = Vec::new();
    for (i, network_id) in network_ids.iter().enumerate() {
        let network = ctx
            .db
            .networks
            .iter()
            .find(|n| &n.id == network_id)
            .ok_or_else(|| ApiError::param(format!("Unable to find network by id {network_id}")))?;
        ctx.check_access(&network.account_id, network_id)?;
        let cidr = Cidr::parse(&network.cidr).map_err(|e| ApiError::internal(e.to_string()))?;
        let wanted = if i == 0 { requested_ip } else { None };
        let ip = cidr
            .allocate(&used_ips(ctx.db, network_id), wanted)
            .map_err(|e| match e {
                CidrError::OutOfRange { ip, .. } => ApiError::param(format!(
                    "Requested ip address {ip} is not in the network cidr {cidr}"
                )),
                CidrError::InUse(ip) => ApiError::address_capacity(format!(
                    "The requested ip address {ip} is not available in the network {}",
                    network.name
                )),
                other => {
                    ApiError::address_capacity(format!("Insufficient address capacity: {other}"))
                }
            })?;
        nics.push(Nic {
            id: new_id(),
            network_id: network_id.clone(),
            ip: ip.to_string(),
            mac: mac_address(),
        });
    }
    let id = new_id();
    let name = p
        .get("name")
        .map(str::to_owned)
        .unwrap_or_else(|| format!("VM-{id}"));
    if ctx
        .db
        .vms
        .iter()
        .any(|vm| vm.account_id == owner && vm.name == name && vm.state != VmState::Destroyed)
    {
        return Err(ApiError::param(format!(
            "The vm with hostName {name} already exists in the network domain"
        )));
    }
    for nic in &nics {
        if let Some(network) = ctx.db.networks.iter_mut().find(|n| n.id == nic.network_id) {
            network.state = "Implemented".into();
        }
    }
    let vm = Vm {
        id: id.clone(),
        displayname: p.get("displayname").unwrap_or(&name).to_owned(),
        name,
        account_id: owner,
        zone_id,
        offering_id,
        template_id,
        state: if start {
            VmState::Starting
        } else {
            VmState::Stopped
        },
        userdata,
        keypairs,
        rootdisksize,
        iso_id: None,
        nics,
        created: store::now(),
        node_network: None,
    };
    ctx.db.vms.push(vm);
    for network_id in &network_ids {
        super::network::ensure_source_nat(ctx, network_id);
    }
    let mut planned = ctx.planned_failure();
    if start && planned.is_none() && ctx.decision.capacity_exhausted {
        ctx.applied_faults.push("capacity_exhausted");
        planned = Some((533, capacity_text(ctx.db, &id)));
    }
    let completion = if start {
        Completion::StartVm(id.clone())
    } else {
        Completion::Fixed
    };
    let result = ctx
        .db
        .vms
        .iter()
        .find(|v| v.id == id)
        .map(|vm| json!({ "virtualmachine": render_vm(ctx.db, vm) }))
        .unwrap_or_default();
    let job_id = ctx.submit_job(
        &format!("{VM_CMD}DeployVMCmd"),
        Some(("VirtualMachine", &id)),
        result,
        completion,
        planned,
    );
    Ok(Outcome::Async {
        job_id,
        id: Some(id),
    })
}

/// CloudStack's text for a failed placement.
pub(crate) fn capacity_text(db: &Db, vm_id: &str) -> String {
    let name = db
        .vms
        .iter()
        .find(|v| v.id == vm_id)
        .map(|v| v.name.clone())
        .unwrap_or_default();
    format!("Unable to create a deployment for VM[User|{name}]")
}

fn find_vm<'c>(ctx: &Ctx<'c>) -> Result<(usize, String), ApiError> {
    let id = ctx.params.require(ctx.command, "id")?.to_owned();
    let index = ctx
        .db
        .vms
        .iter()
        .position(|vm| vm.id == id)
        .ok_or_else(|| ApiError::param(format!("Unable to find virtual machine with id {id}")))?;
    ctx.check_access(&ctx.db.vms[index].account_id, &id)?;
    Ok((index, id))
}

fn vm_job(
    ctx: &mut Ctx<'_>,
    cmd: &str,
    id: &str,
    completion: Completion,
    planned: Option<(u16, String)>,
) -> Outcome {
    let result = ctx
        .db
        .vms
        .iter()
        .find(|v| v.id == id)
        .map(|vm| json!({ "virtualmachine": render_vm(ctx.db, vm) }))
        .unwrap_or_default();
    let job_id = ctx.submit_job(
        &format!("{VM_CMD}{cmd}"),
        Some(("VirtualMachine", id)),
        result,
        completion,
        planned,
    );
    Outcome::Async { job_id, id: None }
}

/// `startVirtualMachine`.
pub(super) fn start(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let (index, id) = find_vm(ctx)?;
    let state = ctx.db.vms[index].state;
    match state {
        VmState::Running => return Ok(vm_job(ctx, "StartVMCmd", &id, Completion::Fixed, None)),
        VmState::Stopped => {}
        other => {
            return Err(ApiError::param(format!(
                "Unable to start VM {} because it is in state {}",
                ctx.db.vms[index].name,
                other.as_str()
            )));
        }
    }
    let mut planned = ctx.planned_failure();
    if planned.is_none() && ctx.decision.capacity_exhausted {
        ctx.applied_faults.push("capacity_exhausted");
        planned = Some((533, capacity_text(ctx.db, &id)));
    }
    if planned.is_none() {
        ctx.db.vms[index].state = VmState::Starting;
    }
    Ok(vm_job(
        ctx,
        "StartVMCmd",
        &id,
        Completion::StartVm(id.clone()),
        planned,
    ))
}

/// `stopVirtualMachine`.
pub(super) fn stop(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let (index, id) = find_vm(ctx)?;
    match ctx.db.vms[index].state {
        VmState::Stopped => Ok(vm_job(ctx, "StopVMCmd", &id, Completion::Fixed, None)),
        VmState::Running | VmState::Starting => {
            let planned = ctx.planned_failure();
            if planned.is_none() {
                ctx.db.vms[index].state = VmState::Stopping;
            }
            Ok(vm_job(
                ctx,
                "StopVMCmd",
                &id,
                Completion::StopVm(id.clone()),
                planned,
            ))
        }
        other => Err(ApiError::param(format!(
            "Unable to stop VM {} because it is in state {}",
            ctx.db.vms[index].name,
            other.as_str()
        ))),
    }
}

/// `rebootVirtualMachine`: only a running VM.
pub(super) fn reboot(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let (index, id) = find_vm(ctx)?;
    if ctx.db.vms[index].state != VmState::Running {
        return Err(ApiError::param(format!(
            "Unable to reboot VM {} because it is not in Running state",
            ctx.db.vms[index].name
        )));
    }
    let planned = ctx.planned_failure();
    Ok(vm_job(
        ctx,
        "RebootVMCmd",
        &id,
        Completion::RebootVm(id.clone()),
        planned,
    ))
}

/// `destroyVirtualMachine [expunge=true]`: stops the node; expunge removes the VM and frees its
/// addresses. Users may expunge only when `allow.user.expunge.recover.vm` is true.
pub(super) fn destroy(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let (index, id) = find_vm(ctx)?;
    let expunge = ctx.params.bool("expunge", false)?;
    let user_may_expunge = ctx
        .db
        .configurations
        .iter()
        .any(|c| c.name == "allow.user.expunge.recover.vm" && c.value == "true");
    if expunge && !ctx.caller.admin && !user_may_expunge {
        return Err(ApiError::permission(
            "Parameter expunge can be passed by Admin only. Or when the allow.user.expunge.recover.vm key is set.",
        ));
    }
    if ctx.db.vms[index].state == VmState::Destroyed && !expunge {
        return Err(ApiError::param(format!(
            "Unable to find virtual machine with id {id}"
        )));
    }
    let planned = ctx.planned_failure();
    if planned.is_some() {
        return Ok(vm_job(ctx, "DestroyVMCmd", &id, Completion::Fixed, planned));
    }
    ctx.db.vms[index].state = VmState::Destroyed;
    let outcome = vm_job(ctx, "DestroyVMCmd", &id, Completion::Fixed, None);
    if expunge {
        ctx.db.vms.retain(|vm| vm.id != id);
        ctx.db.tags.retain(|t| t.resource_id != id);
        for rule in &mut ctx.db.rules {
            rule.vm_ids.retain(|v| v != &id);
        }
        ctx.db
            .rules
            .retain(|r| r.vm_id.as_deref() != Some(id.as_str()));
    }
    ctx.node_actions.push(super::NodeAction::Destroy(id));
    Ok(outcome)
}

/// `listVirtualMachines`.
pub(super) fn list(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let ids = ctx.params.list("ids");
    let items = ctx
        .db
        .vms
        .iter()
        .filter(|vm| ctx.visible(&vm.account_id))
        .filter(|vm| ctx.filter_matches("id", &vm.id))
        .filter(|vm| ids.is_empty() || ids.contains(&vm.id))
        .filter(|vm| ctx.filter_matches("name", &vm.name))
        .filter(|vm| ctx.filter_matches("zoneid", &vm.zone_id))
        .filter(|vm| {
            ctx.params
                .get("state")
                .is_none_or(|s| s.eq_ignore_ascii_case(vm.state.as_str()))
        })
        .filter(|vm| {
            ctx.params
                .get("networkid")
                .is_none_or(|n| vm.nics.iter().any(|nic| nic.network_id == n))
        })
        .filter(|vm| ctx.keyword_matches(&vm.name))
        .map(|vm| render_vm(ctx.db, vm))
        .collect();
    Ok(Outcome::Sync(list_response(
        ctx.params,
        "virtualmachine",
        items,
    )?))
}
