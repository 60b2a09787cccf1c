//! Virtual machines: deploy, start, stop, reboot, destroy, expunge, recover, scale, update,
//! list.
//!
//! As on CloudStack, what an async command's job decides (a running VM scaled down, an expunge
//! by a user without `allow.user.expunge.recover.vm`) ends the job failed rather than refusing
//! the request: the checks run here, at submission, and a failure is planned for the job
//! (`jobresultcode` 431 for `InvalidParameterValueException`, 530 for everything else, as
//! `ApiAsyncJobDispatcher` maps them).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::limits::{self, ResourceType};
use super::network::{addressing, usable};
use super::{Ctx, NodeAction, Outcome, list_response, owner_fields, setting_bool, zone_name};
use crate::cidr::CidrError;
use crate::error::ApiError;
use crate::model::{Completion, Db, Nic, ServiceOffering, Vm, VmState};
use crate::store::{self, new_id};

const VM_CMD: &str = "vm.";
/// Lets users expunge and recover their VMs (and pass `expunge=true` to destroy).
const ALLOW_USER_EXPUNGE: &str = "allow.user.expunge.recover.vm";
/// Lets users list their destroyed VMs.
const ALLOW_USER_VIEW_DESTROYED: &str = "allow.user.view.destroyed.vm";
/// Zone-wide switch for scaling running VMs (CloudStack's default: false).
pub(crate) const ENABLE_DYNAMIC_SCALING: &str = "enable.dynamic.scale.vm";

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
            let addressing = network.and_then(addressing);
            json!({
                "id": nic.id,
                "networkid": nic.network_id,
                "networkname": network.map(|n| n.name.clone()),
                "ipaddress": nic.ip,
                "gateway": addressing.map(|a| a.gateway.to_string()),
                "netmask": addressing.map(|a| a.cidr.netmask().to_string()),
                "macaddress": nic.mac,
                "isdefault": i == 0,
                "type": network.map(|n| n.guest_type.clone()),
                "traffictype": "Guest",
                "broadcasturi": network.and_then(|n| n.vlan.as_ref()).map(|v| format!("vlan://{v}")),
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
        "isdynamicallyscalable": vm.dynamically_scalable,
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
    let mut details: serde_json::Map<String, Value> = vm
        .details
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    if let Some(network) = &vm.node_network {
        details.insert("simulator.node.network".into(), json!(network));
    }
    if !details.is_empty() {
        body["details"] = Value::Object(details);
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

/// Checks base64 userdata as deploy and update do: GET below 4 KB, at most
/// `vm.userdata.max.length`, decodable and not empty.
fn validate_userdata(ctx: &Ctx<'_>, userdata: &str) -> Result<(), ApiError> {
    let max: usize = super::setting(ctx.db, "vm.userdata.max.length")
        .and_then(|v| v.parse().ok())
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

/// CloudStack's host name rule (`checkNameForRFCCompliance`).
fn validate_host_name(name: &str) -> Result<(), ApiError> {
    let valid = (1..=63).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        Err(ApiError::param(
            "Invalid name. Vm name can contain ASCII letters 'a' through 'z', the digits '0' through '9', and the hyphen ('-'), must be between 1 and 63 characters long, and can't start or end with \"-\" and can't start with digit",
        ))
    }
}

fn name_taken(db: &Db, owner: &str, name: &str, except: Option<&str>) -> bool {
    db.vms.iter().any(|vm| {
        vm.account_id == owner
            && vm.name == name
            && vm.state != VmState::Destroyed
            && Some(vm.id.as_str()) != except
    })
}

fn offering<'d>(db: &'d Db, id: &str) -> Option<&'d ServiceOffering> {
    db.service_offerings.iter().find(|o| o.id == id)
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
    let Some(service_offering) = offering(ctx.db, &offering_id).cloned() else {
        return Err(ApiError::param(format!(
            "Unable to find service offering: {offering_id}"
        )));
    };
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
    let mut ssh_public_keys = Vec::new();
    for name in &keypairs {
        let pair = ctx
            .db
            .ssh_keypairs
            .iter()
            .find(|k| k.account_id == owner && &k.name == name)
            .ok_or_else(|| {
                ApiError::param(format!("A key pair with name '{name}' was not found."))
            })?;
        ssh_public_keys.push(pair.public_key.clone());
    }
    let dynamically_scalable = p.bool("dynamicscalingenabled", true)?
        && service_offering.dynamic_scaling
        && setting_bool(ctx.db, ENABLE_DYNAMIC_SCALING, false);
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
        usable(ctx, network)?;
        let addressing = addressing(network)
            .ok_or_else(|| ApiError::internal(format!("network {network_id} has no addressing")))?;
        let cidr = addressing.cidr;
        let mut used = used_ips(ctx.db, network_id);
        used.insert(addressing.gateway);
        let wanted = if i == 0 { requested_ip } else { None };
        let ip = cidr
            .allocate_in(&used, wanted, addressing.first, addressing.last)
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
    if name_taken(ctx.db, &owner, &name, None) {
        return Err(ApiError::param(format!(
            "The vm with hostName {name} already exists in the network domain"
        )));
    }
    limits::check(
        ctx.db,
        &owner,
        &[
            (ResourceType::UserVm, 1),
            (ResourceType::Cpu, service_offering.cpunumber),
            (ResourceType::Memory, service_offering.memory),
        ],
    )?;
    for nic in &nics {
        if let Some(network) = ctx.db.networks.iter_mut().find(|n| n.id == nic.network_id) {
            network.state = "Implemented".into();
        }
    }
    let never_boots = start && ctx.never_boots(&name);
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
        ssh_public_keys,
        dynamically_scalable,
        details: p.details("details"),
        never_boots,
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
        let never_boots = ctx.never_boots(&ctx.db.vms[index].name.clone());
        let vm = &mut ctx.db.vms[index];
        vm.state = VmState::Starting;
        vm.never_boots = never_boots;
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
    if planned.is_none() {
        let never_boots = ctx.never_boots(&ctx.db.vms[index].name.clone());
        ctx.db.vms[index].never_boots = never_boots;
    }
    Ok(vm_job(
        ctx,
        "RebootVMCmd",
        &id,
        Completion::RebootVm(id.clone()),
        planned,
    ))
}

fn user_may_expunge(ctx: &Ctx<'_>) -> bool {
    ctx.caller.admin || setting_bool(ctx.db, ALLOW_USER_EXPUNGE, false)
}

/// Removes an expunged VM and everything that points at it; its node goes with its disk.
fn remove_vm(ctx: &mut Ctx<'_>, id: &str) {
    ctx.db.vms.retain(|vm| vm.id != id);
    ctx.db.tags.retain(|t| t.resource_id != id);
    for rule in &mut ctx.db.rules {
        rule.vm_ids.retain(|v| v != id);
    }
    ctx.db.rules.retain(|r| r.vm_id.as_deref() != Some(id));
    for lb in &mut ctx.db.external_lbs {
        lb.targets.retain(|t| t != id);
    }
    ctx.node_actions.push(NodeAction::Destroy(id.to_owned()));
}

/// `destroyVirtualMachine [expunge=true]`: the job result is the VM, Destroyed. Without
/// expunge the node stops and its disk stays (the VM can be recovered); destroying a destroyed
/// VM succeeds again. `expunge=true` also removes the VM, its disk and its rules; a user may
/// pass it only when `allow.user.expunge.recover.vm` is true, else the job fails (530, the
/// `PermissionDeniedException` raised inside the job).
pub(super) fn destroy(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let (index, id) = find_vm(ctx)?;
    let expunge = ctx.params.bool("expunge", false)?;
    if expunge && !user_may_expunge(ctx) {
        let denied = (
            530,
            "Parameter expunge can be passed by Admin only. Or when the allow.user.expunge.recover.vm key is set."
                .to_owned(),
        );
        return Ok(vm_job(
            ctx,
            "DestroyVMCmd",
            &id,
            Completion::Fixed,
            Some(denied),
        ));
    }
    let planned = ctx.planned_failure();
    if planned.is_some() {
        return Ok(vm_job(ctx, "DestroyVMCmd", &id, Completion::Fixed, planned));
    }
    let was = ctx.db.vms[index].state;
    ctx.db.vms[index].state = VmState::Destroyed;
    let outcome = vm_job(ctx, "DestroyVMCmd", &id, Completion::Fixed, None);
    if expunge {
        remove_vm(ctx, &id);
    } else if was.uses_capacity() {
        ctx.node_actions.push(NodeAction::Stop(id));
    }
    Ok(outcome)
}

/// `expungeVirtualMachine` (async, `success`): only a Destroyed (or Error) VM; a user only
/// with `allow.user.expunge.recover.vm`. Both refusals end the job failed with 530, as
/// `ExpungeVMCmd` wraps them.
pub(super) fn expunge(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let (index, id) = find_vm(ctx)?;
    let planned = if !matches!(ctx.db.vms[index].state, VmState::Destroyed | VmState::Error) {
        Some((
            530,
            "Please destroy vm with specified vmId before expunge".to_owned(),
        ))
    } else if !user_may_expunge(ctx) {
        Some((
            530,
            "Expunging a vm can only be done by an Admin. Or when the allow.user.expunge.recover.vm key is set."
                .to_owned(),
        ))
    } else {
        ctx.planned_failure()
    };
    if planned.is_none() {
        remove_vm(ctx, &id);
    }
    let job_id = ctx.submit_job(
        "admin.vm.ExpungeVMCmd",
        Some(("VirtualMachine", &id)),
        json!({ "success": true }),
        Completion::Fixed,
        planned,
    );
    Ok(Outcome::Async { job_id, id: None })
}

/// `recoverVirtualMachine` (synchronous): a Destroyed VM becomes Stopped with its disk, within
/// the owner's resource limits; users need `allow.user.expunge.recover.vm`.
pub(super) fn recover(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let (index, id) = find_vm(ctx)?;
    if !user_may_expunge(ctx) {
        return Err(ApiError::permission(
            "Recovering a vm can only be done by an Admin. Or when the allow.user.expunge.recover.vm key is set.",
        ));
    }
    let vm = &ctx.db.vms[index];
    if vm.state != VmState::Destroyed {
        return Err(ApiError::param(format!(
            "vm id={id} is not in the right state: {}",
            vm.state.as_str()
        )));
    }
    if let Some(o) = offering(ctx.db, &vm.offering_id) {
        limits::check(
            ctx.db,
            &vm.account_id,
            &[
                (ResourceType::UserVm, 1),
                (ResourceType::Cpu, o.cpunumber),
                (ResourceType::Memory, o.memory),
            ],
        )?;
    }
    let vm = &mut ctx.db.vms[index];
    vm.state = VmState::Stopped;
    let vm = vm.clone();
    Ok(Outcome::Sync(
        json!({ "virtualmachine": render_vm(ctx.db, &vm) }),
    ))
}

/// How CloudStack names a VM in scaling errors.
fn vm_label(vm: &Vm) -> String {
    format!(
        "VM instance {{\"id\":\"{}\",\"name\":\"{}\"}}",
        vm.id, vm.name
    )
}

/// Why `vm` cannot move from `current` to `new` while it runs; `None` when it can.
fn running_scale_refusal(
    ctx: &Ctx<'_>,
    vm: &Vm,
    current: &ServiceOffering,
    new: &ServiceOffering,
) -> Option<(u16, String)> {
    if new.dynamic_scaling != current.dynamic_scaling {
        return Some((
            431,
            "Unable to Scale VM: since dynamic scaling enabled flag is not same for new service offering and old service offering".into(),
        ));
    }
    let down = new.cpuspeed < current.cpuspeed
        || new.memory < current.memory
        || new.cpunumber < current.cpunumber;
    let same = new.cpuspeed == current.cpuspeed
        && new.memory == current.memory
        && new.cpunumber == current.cpunumber;
    if down || same {
        return Some((
            431,
            format!(
                "While the VM is running, only scalling up it is supported. New service offering {{\"memory\": {}, \"speed\": {}, \"cpu\": {}}} should have at least one value (ram, speed or cpu) greater than the current values {{\"memory\": {}, \"speed\": {}, \"cpu\": {}}}.",
                new.memory,
                new.cpuspeed,
                new.cpunumber,
                current.memory,
                current.cpuspeed,
                current.cpunumber
            ),
        ));
    }
    if let Err(err) = limits::check(
        ctx.db,
        &vm.account_id,
        &[
            (
                ResourceType::Cpu,
                new.cpunumber.saturating_sub(current.cpunumber),
            ),
            (
                ResourceType::Memory,
                new.memory.saturating_sub(current.memory),
            ),
        ],
    ) {
        return Some((err.code, err.text));
    }
    if !setting_bool(ctx.db, ENABLE_DYNAMIC_SCALING, false) {
        return Some((
            530,
            "Dynamically scaling virtual machines is disabled for this zone, please contact your admin.".into(),
        ));
    }
    if !vm.dynamically_scalable {
        return Some((
            530,
            format!(
                "Unable to scale {} as it does not have tools to support dynamic scaling.",
                vm_label(vm)
            ),
        ));
    }
    let zone = ctx.db.zones.iter().find(|z| z.id == vm.zone_id)?;
    let used = limits::compute_usage(ctx.db, Some(&vm.zone_id), Some(&vm.id));
    if ctx.decision.capacity_exhausted
        || used.cores + new.cpunumber > zone.cpu_capacity
        || used.memory_mib + new.memory > zone.memory_capacity
    {
        return Some((
            530,
            format!(
                "Unable to scale {} due to insufficient resources.",
                vm_label(vm)
            ),
        ));
    }
    None
}

/// Resolves `serviceofferingid` and refuses asking for the VM's current offering.
fn new_offering(ctx: &Ctx<'_>) -> Result<ServiceOffering, ApiError> {
    let id = ctx.params.require(ctx.command, "serviceofferingid")?;
    let new = offering(ctx.db, id)
        .ok_or_else(|| ApiError::param(format!("Unable to find service offering: {id}")))?;
    Ok(new.clone())
}

fn same_offering(vm: &Vm, new: &ServiceOffering) -> (u16, String) {
    (
        431,
        format!(
            "Not upgrading vm {} since it already has the requested service offering ({})",
            vm_label(vm),
            new.name
        ),
    )
}

/// `scaleVirtualMachine` (async, the VM): a Stopped VM takes any other offering within its
/// owner's limits; a Running one only a larger one, when `enable.dynamic.scale.vm` is true, the
/// VM is dynamically scalable, both offerings agree on dynamic scaling and the zone has room.
/// Refusals end the job failed.
pub(super) fn scale(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let (index, id) = find_vm(ctx)?;
    let vm = ctx.db.vms[index].clone();
    let new = new_offering(ctx)?;
    let current = offering(ctx.db, &vm.offering_id).cloned();
    let refusal = match (&current, vm.state) {
        _ if vm.offering_id == new.id => Some(same_offering(&vm, &new)),
        (Some(current), VmState::Stopped) => limits::check(
            ctx.db,
            &vm.account_id,
            &[
                (
                    ResourceType::Cpu,
                    new.cpunumber.saturating_sub(current.cpunumber),
                ),
                (
                    ResourceType::Memory,
                    new.memory.saturating_sub(current.memory),
                ),
            ],
        )
        .err()
        .map(|e| (e.code, e.text)),
        (Some(current), VmState::Running) => running_scale_refusal(ctx, &vm, current, &new),
        _ => Some((530, "Failed to scale the VM".to_owned())),
    };
    let planned = refusal.or_else(|| ctx.planned_failure());
    if planned.is_none() {
        ctx.db.vms[index].offering_id = new.id.clone();
    }
    Ok(vm_job(ctx, "ScaleVMCmd", &id, Completion::Fixed, planned))
}

/// `changeServiceForVirtualMachine` (synchronous, deprecated by `scaleVirtualMachine`): only a
/// Stopped VM.
pub(super) fn change_service(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let (index, _) = find_vm(ctx)?;
    let vm = ctx.db.vms[index].clone();
    let new = new_offering(ctx)?;
    if vm.state != VmState::Stopped {
        return Err(ApiError::param(format!(
            "Unable to upgrade virtual machine {}  in state {}; make sure the virtual machine is stopped",
            vm_label(&vm),
            vm.state.as_str()
        )));
    }
    if vm.offering_id == new.id {
        return Err(ApiError::param(same_offering(&vm, &new).1));
    }
    if let Some(current) = offering(ctx.db, &vm.offering_id) {
        limits::check(
            ctx.db,
            &vm.account_id,
            &[
                (
                    ResourceType::Cpu,
                    new.cpunumber.saturating_sub(current.cpunumber),
                ),
                (
                    ResourceType::Memory,
                    new.memory.saturating_sub(current.memory),
                ),
            ],
        )?;
    }
    ctx.db.vms[index].offering_id = new.id;
    let vm = ctx.db.vms[index].clone();
    Ok(Outcome::Sync(
        json!({ "virtualmachine": render_vm(ctx.db, &vm) }),
    ))
}

/// `updateVirtualMachine` (synchronous): display name, host name, userdata (checked as at
/// deploy), details, dynamic scalability. Like CloudStack it does not require a stopped VM;
/// a new name or userdata reaches the node at its next boot (userdata only if the node never
/// booted: cloud-init applies it once per instance).
pub(super) fn update(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let (index, id) = find_vm(ctx)?;
    let p = ctx.params;
    let vm = ctx.db.vms[index].clone();
    if matches!(vm.state, VmState::Destroyed | VmState::Error) {
        return Err(ApiError::param(format!(
            "Vm with id {id} is not in the right state"
        )));
    }
    let name = match p.get("name") {
        Some(name) if name != vm.name => {
            validate_host_name(name)?;
            if name_taken(ctx.db, &vm.account_id, name, Some(&id)) {
                return Err(ApiError::param(format!(
                    "The vm with hostName {name} already exists in the network domain"
                )));
            }
            Some(name.to_owned())
        }
        _ => None,
    };
    let userdata = p.get("userdata").map(str::to_owned);
    if let Some(userdata) = &userdata {
        validate_userdata(ctx, userdata)?;
    }
    let scalable = p
        .get("isdynamicallyscalable")
        .map(|_| p.bool("isdynamicallyscalable", false))
        .transpose()?;
    if scalable == Some(true) {
        if !offering(ctx.db, &vm.offering_id).is_some_and(|o| o.dynamic_scaling) {
            return Err(ApiError::param(
                "Dynamic Scaling cannot be enabled for the VM since its service offering does not have dynamic scaling enabled",
            ));
        }
        if !setting_bool(ctx.db, ENABLE_DYNAMIC_SCALING, false) {
            return Err(ApiError::param(
                "Dynamic Scaling cannot be enabled for the VM since corresponding global setting is set to false",
            ));
        }
    }
    let cleanup = p.bool("cleanupdetails", false)?;
    let details: BTreeMap<String, String> = p.details("details");
    let vm = &mut ctx.db.vms[index];
    if let Some(name) = name {
        vm.name = name;
    }
    if let Some(displayname) = p.get("displayname") {
        vm.displayname = displayname.to_owned();
    }
    if let Some(userdata) = userdata {
        vm.userdata = Some(userdata);
    }
    if let Some(scalable) = scalable {
        vm.dynamically_scalable = scalable;
    }
    if cleanup {
        vm.details.clear();
    } else {
        vm.details.extend(details);
    }
    let vm = vm.clone();
    Ok(Outcome::Sync(
        json!({ "virtualmachine": render_vm(ctx.db, &vm) }),
    ))
}

/// `listVirtualMachines`. Users do not see destroyed VMs unless
/// `allow.user.view.destroyed.vm` is true; `state=present` hides them for everyone.
pub(super) fn list(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let ids = ctx.params.list("ids");
    let show_destroyed = ctx.caller.admin || setting_bool(ctx.db, ALLOW_USER_VIEW_DESTROYED, false);
    let items = ctx
        .db
        .vms
        .iter()
        .filter(|vm| ctx.visible(&vm.account_id))
        .filter(|vm| show_destroyed || vm.state != VmState::Destroyed)
        .filter(|vm| ctx.filter_matches("id", &vm.id))
        .filter(|vm| ids.is_empty() || ids.contains(&vm.id))
        .filter(|vm| ctx.filter_matches("name", &vm.name))
        .filter(|vm| ctx.filter_matches("zoneid", &vm.zone_id))
        .filter(|vm| match ctx.params.get("state") {
            None => true,
            Some(s) if s.eq_ignore_ascii_case("present") => vm.state != VmState::Destroyed,
            Some(s) => s.eq_ignore_ascii_case(vm.state.as_str()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_follow_the_rfc_rule() {
        for good in ["node-1", "a", "k8s-control-0"] {
            assert!(validate_host_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "1node", "under_score", &"x".repeat(64)] {
            assert!(validate_host_name(bad).is_err(), "{bad}");
        }
    }
}
