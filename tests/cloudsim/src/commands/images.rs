//! Zones, offerings, templates and ISOs (register, download state, attach/detach).

use serde_json::{Value, json};

use super::{
    Background, Ctx, NodeAction, Outcome, list_response, owner_fields, render_vm, zone_name,
};
use crate::error::ApiError;
use crate::model::{Db, Iso, IsoStatus, VmState};
use crate::store::{self, new_id};

/// `listZones`: every caller sees every zone.
pub(super) fn list_zones(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let items = ctx
        .db
        .zones
        .iter()
        .filter(|z| ctx.filter_matches("id", &z.id) && ctx.filter_matches("name", &z.name))
        .map(|z| {
            json!({
                "id": z.id,
                "name": z.name,
                "networktype": "Advanced",
                "allocationstate": "Enabled",
                "securitygroupsenabled": false,
                "localstorageenabled": false,
                "dhcpprovider": "VirtualRouter",
            })
        })
        .collect();
    Ok(Outcome::Sync(list_response(ctx.params, "zone", items)?))
}

/// `listServiceOfferings`.
pub(super) fn list_service_offerings(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let items = ctx
        .db
        .service_offerings
        .iter()
        .filter(|o| ctx.filter_matches("id", &o.id) && ctx.filter_matches("name", &o.name))
        .filter(|o| ctx.keyword_matches(&o.name))
        .map(|o| {
            json!({
                "id": o.id,
                "name": o.name,
                "displaytext": o.displaytext,
                "cpunumber": o.cpunumber,
                "cpuspeed": o.cpuspeed,
                "memory": o.memory,
                "storagetype": "shared",
                "offerha": false,
                "iscustomized": false,
            })
        })
        .collect();
    Ok(Outcome::Sync(list_response(
        ctx.params,
        "serviceoffering",
        items,
    )?))
}

/// `listTemplates templatefilter=…`.
pub(super) fn list_templates(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    ctx.params.require(ctx.command, "templatefilter")?;
    let items = ctx
        .db
        .templates
        .iter()
        .filter(|t| ctx.filter_matches("id", &t.id) && ctx.filter_matches("name", &t.name))
        .filter(|t| ctx.filter_matches("zoneid", &t.zone_id))
        .filter(|t| ctx.keyword_matches(&t.name))
        .map(|t| {
            json!({
                "id": t.id,
                "name": t.name,
                "displaytext": t.displaytext,
                "zoneid": t.zone_id,
                "zonename": zone_name(ctx.db, &t.zone_id),
                "isready": true,
                "status": "Download Complete",
                "ispublic": true,
                "isfeatured": true,
                "format": "QCOW2",
                "hypervisor": "Simulator",
                "templatetype": "USER",
                "ostypename": "Other Linux (64-bit)",
                "size": t.size,
                "account": "system",
            })
        })
        .collect();
    Ok(Outcome::Sync(list_response(ctx.params, "template", items)?))
}

/// `listNetworkOfferings`.
pub(super) fn list_network_offerings(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let items = ctx
        .db
        .network_offerings
        .iter()
        .filter(|o| ctx.filter_matches("id", &o.id) && ctx.filter_matches("name", &o.name))
        .filter(|o| {
            ctx.params
                .get("guestiptype")
                .is_none_or(|g| g.eq_ignore_ascii_case(&o.guestiptype))
        })
        .map(|o| {
            let isolated = o.guestiptype == "Isolated";
            json!({
                "id": o.id,
                "name": o.name,
                "displaytext": o.displaytext,
                "guestiptype": o.guestiptype,
                "traffictype": "Guest",
                "state": "Enabled",
                "isdefault": true,
                "ispersistent": false,
                "conservemode": true,
                "specifyvlan": !isolated,
                "specifyipranges": !isolated,
                "supportedservices": if isolated {
                    "Dhcp,Dns,Firewall,Lb,PortForwarding,SourceNat,StaticNat,UserData,Vpn"
                } else {
                    "Dhcp,Dns,UserData"
                },
            })
        })
        .collect();
    Ok(Outcome::Sync(list_response(
        ctx.params,
        "networkoffering",
        items,
    )?))
}

fn render_iso(db: &Db, iso: &Iso) -> Value {
    let (isready, status) = match &iso.status {
        IsoStatus::Downloading => (false, "Downloading".to_owned()),
        IsoStatus::Ready => (true, "Successfully Installed".to_owned()),
        IsoStatus::Failed(reason) => (false, reason.clone()),
    };
    let mut body = json!({
        "id": iso.id,
        "name": iso.name,
        "displaytext": iso.displaytext,
        "isready": isready,
        "status": status,
        "ispublic": iso.public,
        "isfeatured": false,
        "isextractable": false,
        "bootable": iso.bootable,
        "format": "ISO",
        "created": iso.created,
        "crossZones": iso.zone_id.is_none(),
        "url": iso.url,
    });
    if let Some(zone) = &iso.zone_id {
        body["zoneid"] = json!(zone);
        body["zonename"] = json!(zone_name(db, zone));
    }
    if let Some(checksum) = &iso.checksum {
        body["checksum"] = json!(checksum);
    }
    if let Some(size) = iso.size {
        body["size"] = json!(size);
    }
    owner_fields(db, &iso.account_id, &mut body);
    body
}

/// `registerIso`: records the ISO as downloading and starts the download (http(s) or file).
pub(super) fn register_iso(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let cmd = ctx.command;
    let p = ctx.params;
    let name = p.require(cmd, "name")?.to_owned();
    let url = p.require(cmd, "url")?.to_owned();
    let zone = p.require(cmd, "zoneid")?.to_owned();
    if !(url.starts_with("http://") || url.starts_with("https://") || url.starts_with("file://")) {
        return Err(ApiError::param(format!(
            "Unsupported scheme for url: {url}"
        )));
    }
    let zone_id = if zone == "-1" {
        None
    } else if ctx.db.zones.iter().any(|z| z.id == zone) {
        Some(zone)
    } else {
        return Err(ApiError::param(format!("Unable to find zone by id={zone}")));
    };
    let checksum = p.get("checksum").map(str::to_owned);
    if let Some(checksum) = &checksum {
        crate::download::Checksum::parse(checksum).map_err(|e| ApiError::param(e.to_string()))?;
    }
    let public = p.bool("ispublic", false)?;
    if public && !ctx.caller.admin {
        // CloudStack only lets users register public ISOs when allowed; the simulator refuses.
        return Err(ApiError::permission("Only admins can register public ISOs"));
    }
    let iso = Iso {
        id: new_id(),
        displaytext: p.get("displaytext").unwrap_or(&name).to_owned(),
        name,
        url,
        checksum,
        zone_id,
        public,
        bootable: p.bool("bootable", true)?,
        account_id: ctx.owner_for_create()?,
        status: IsoStatus::Downloading,
        size: None,
        path: None,
        created: store::now(),
    };
    let body = json!({ "count": 1, "iso": [render_iso(ctx.db, &iso)] });
    ctx.background.push(Background::DownloadIso(iso.id.clone()));
    ctx.db.isos.push(iso);
    Ok(Outcome::Sync(body))
}

/// `listIsos`: own ISOs and public ones (`isofilter=self` only own).
pub(super) fn list_isos(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let own_only = matches!(ctx.params.get("isofilter"), Some("self" | "selfexecutable"));
    let ready = ctx.params.get("isready").map(|v| v == "true");
    let items = ctx
        .db
        .isos
        .iter()
        .filter(|i| {
            if own_only {
                i.account_id == ctx.caller.account_id
            } else {
                i.public || ctx.visible(&i.account_id)
            }
        })
        .filter(|i| ctx.filter_matches("id", &i.id) && ctx.filter_matches("name", &i.name))
        .filter(|i| {
            ctx.params
                .get("zoneid")
                .is_none_or(|z| i.zone_id.as_deref().is_none_or(|iz| iz == z))
        })
        .filter(|i| ready.is_none_or(|r| r == (i.status == IsoStatus::Ready)))
        .filter(|i| ctx.keyword_matches(&i.name))
        .map(|i| render_iso(ctx.db, i))
        .collect();
    Ok(Outcome::Sync(list_response(ctx.params, "iso", items)?))
}

/// `deleteIso` (async).
pub(super) fn delete_iso(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let id = ctx.params.require(ctx.command, "id")?.to_owned();
    let iso = ctx
        .db
        .isos
        .iter()
        .find(|i| i.id == id)
        .ok_or_else(|| ApiError::param(format!("unable to find iso with id {id}")))?;
    ctx.check_access(&iso.account_id, &id)?;
    if ctx.planned_failure().is_none() {
        if let Some(path) = &iso.path {
            let _ = std::fs::remove_file(path);
        }
        ctx.db.isos.retain(|i| i.id != id);
    }
    Ok(ctx.simple_job(
        "iso.DeleteIsoCmd",
        Some(("Iso", &id)),
        json!({ "success": true }),
    ))
}

fn vm_for_iso(ctx: &Ctx<'_>, vm_id: &str) -> Result<usize, ApiError> {
    let index = ctx
        .db
        .vms
        .iter()
        .position(|v| v.id == vm_id)
        .ok_or_else(|| {
            ApiError::param(format!("Unable to find a virtual machine with id {vm_id}"))
        })?;
    let vm = &ctx.db.vms[index];
    ctx.check_access(&vm.account_id, vm_id)?;
    if !matches!(vm.state, VmState::Running | VmState::Stopped) {
        return Err(ApiError::param(
            "Please specify a VM that is either Stopped or Running.",
        ));
    }
    Ok(index)
}

/// `attachIso id virtualmachineid`: the VM must be Running or Stopped, the ISO Ready.
pub(super) fn attach_iso(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let iso_id = ctx.params.require(ctx.command, "id")?.to_owned();
    let vm_id = ctx
        .params
        .require(ctx.command, "virtualmachineid")?
        .to_owned();
    let index = vm_for_iso(ctx, &vm_id)?;
    let iso = ctx
        .db
        .isos
        .iter()
        .find(|i| i.id == iso_id)
        .ok_or_else(|| ApiError::param(format!("Unable to find an ISO with id {iso_id}")))?;
    if !iso.public {
        ctx.check_access(&iso.account_id, &iso_id)?;
    }
    if iso.status != IsoStatus::Ready {
        return Err(ApiError::param(format!(
            "ISO {} is not ready to be attached",
            iso.name
        )));
    }
    if ctx.db.vms[index].iso_id.is_some() && !ctx.params.bool("forced", false)? {
        return Err(ApiError::param(
            "The VM already has an ISO attached; detach it first",
        ));
    }
    let planned = ctx.planned_failure();
    if planned.is_none() {
        ctx.db.vms[index].iso_id = Some(iso_id.clone());
        ctx.node_actions
            .push(NodeAction::SetIso(vm_id.clone(), Some(iso_id)));
    }
    let result = json!({ "virtualmachine": render_vm(ctx.db, &ctx.db.vms[index]) });
    Ok(ctx.simple_job("iso.AttachIsoCmd", Some(("VirtualMachine", &vm_id)), result))
}

/// `detachIso virtualmachineid`.
pub(super) fn detach_iso(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let vm_id = ctx
        .params
        .require(ctx.command, "virtualmachineid")?
        .to_owned();
    let index = ctx
        .db
        .vms
        .iter()
        .position(|v| v.id == vm_id)
        .ok_or_else(|| {
            ApiError::param(format!("Unable to find a virtual machine with id {vm_id}"))
        })?;
    ctx.check_access(&ctx.db.vms[index].account_id, &vm_id)?;
    if ctx.db.vms[index].iso_id.is_none() {
        return Err(ApiError::param(
            "The specified VM has no ISO attached to it.",
        ));
    }
    vm_for_iso(ctx, &vm_id)?;
    if ctx.planned_failure().is_none() {
        ctx.db.vms[index].iso_id = None;
        ctx.node_actions
            .push(NodeAction::SetIso(vm_id.clone(), None));
    }
    let result = json!({ "virtualmachine": render_vm(ctx.db, &ctx.db.vms[index]) });
    Ok(ctx.simple_job("iso.DetachIsoCmd", Some(("VirtualMachine", &vm_id)), result))
}
