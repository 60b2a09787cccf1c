//! Capacity and resource limits: `listCapacity`, `listResourceLimits`, `updateResourceLimit`,
//! and the per-account checks that deploy, recover, scale and `associateIpAddress` make.
//!
//! Usage is derived from the state, never counted separately, so it cannot drift:
//! * a zone's used CPU and memory are those of its VMs that hold capacity (Starting, Running,
//!   Stopping), the same sum the start job checks against the zone's capacity;
//! * an account's `user_vm`, `cpu` and `memory` count its VMs that are neither Destroyed nor in
//!   Error (CloudStack counts allocated VMs, not only running ones), `public_ip` its public
//!   addresses (source NAT included).
//!
//! An exceeded limit refuses the request with 535 (`RESOURCE_ALLOCATION_ERROR`), the code
//! `DeployVMCmd.create` and `AssociateIPAddrCmd.create` turn `ResourceAllocationException` into,
//! with CloudStack's message. Root admins have no limits.

use serde_json::{Value, json};

use super::{Ctx, Outcome, account, list_response, setting, zone_name};
use crate::cidr::Cidr;
use crate::error::ApiError;
use crate::model::{Db, ResourceLimit, VmState};

/// MHz per core used for CPU capacity (every seeded offering runs at this speed).
const CORE_SPEED_MHZ: u64 = 2000;

/// CloudStack's resource types (`Resource.ResourceType`), by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResourceType {
    /// 0: VMs.
    UserVm,
    /// 1: public IP addresses.
    PublicIp,
    /// 8: CPU cores.
    Cpu,
    /// 9: memory in MiB.
    Memory,
}

/// Every type `listResourceLimits` shows: number, name, default setting, default value.
const TYPES: &[(u8, &str, &str, i64)] = &[
    (0, "user_vm", "max.account.user.vms", 20),
    (1, "public_ip", "max.account.public.ips", 20),
    (2, "volume", "max.account.volumes", 20),
    (3, "snapshot", "max.account.snapshots", 20),
    (4, "template", "max.account.templates", 20),
    (5, "project", "max.account.projects", -1),
    (6, "network", "max.account.networks", 20),
    (7, "vpc", "max.account.vpcs", 20),
    (8, "cpu", "max.account.cpus", 40),
    (9, "memory", "max.account.memory", 81920),
    (10, "primary_storage", "max.account.primary.storage", 200),
    (
        11,
        "secondary_storage",
        "max.account.secondary.storage",
        400,
    ),
];

// === impl ResourceType ===

impl ResourceType {
    fn number(self) -> u8 {
        match self {
            Self::UserVm => 0,
            Self::PublicIp => 1,
            Self::Cpu => 8,
            Self::Memory => 9,
        }
    }
}

fn type_name(number: u8) -> &'static str {
    TYPES
        .iter()
        .find(|t| t.0 == number)
        .map(|t| t.1)
        .unwrap_or("unknown")
}

/// The limit of `account_id` on resource type `number`: an admin-set one, else the
/// `max.account.*` setting, else CloudStack's default; -1 is unlimited (always for admins).
fn limit(db: &Db, account_id: &str, number: u8) -> i64 {
    if account(db, account_id).is_some_and(|a| a.admin) {
        return -1;
    }
    if let Some(set) = db
        .resource_limits
        .iter()
        .find(|l| l.account_id == account_id && l.resource_type == number)
    {
        return set.max;
    }
    TYPES
        .iter()
        .find(|t| t.0 == number)
        .map(|(_, _, name, default)| {
            setting(db, name)
                .and_then(|v| v.parse().ok())
                .unwrap_or(*default)
        })
        .unwrap_or(-1)
}

/// What `account_id` uses of resource type `number` (0 for types the simulator does not count).
fn usage(db: &Db, account_id: &str, number: u8) -> u64 {
    let counted = || {
        db.vms.iter().filter(|vm| {
            vm.account_id == account_id && !matches!(vm.state, VmState::Destroyed | VmState::Error)
        })
    };
    let offering_sum = |f: fn(&crate::model::ServiceOffering) -> u64| {
        counted()
            .filter_map(|vm| db.service_offerings.iter().find(|o| o.id == vm.offering_id))
            .map(f)
            .sum()
    };
    match number {
        0 => counted().count() as u64,
        1 => db
            .public_ips
            .iter()
            .filter(|ip| ip.account_id == account_id)
            .count() as u64,
        6 => db
            .networks
            .iter()
            .filter(|n| n.account_id == account_id && !n.domain_wide)
            .count() as u64,
        8 => offering_sum(|o| o.cpunumber),
        9 => offering_sum(|o| o.memory),
        _ => 0,
    }
}

/// Refuses with 535 when any `(type, amount)` would take `account_id` over its limit.
///
/// # Errors
/// CloudStack's "Maximum amount of resources of Type = …" error.
pub(crate) fn check(
    db: &Db,
    account_id: &str,
    requests: &[(ResourceType, u64)],
) -> Result<(), ApiError> {
    for (kind, amount) in requests {
        let number = kind.number();
        let max = limit(db, account_id, number);
        let used = usage(db, account_id, number);
        if *amount == 0 || max < 0 {
            continue;
        }
        if used.saturating_add(*amount) > max.unsigned_abs() {
            let name = account(db, account_id)
                .map(|a| a.name.clone())
                .unwrap_or_default();
            return Err(ApiError::server(
                535,
                format!(
                    "Maximum amount of resources of Type = '{}', tag = 'null' for Account Name = {name} in Domain Id = 1 is exceeded: Account Resource Limit = {max}, Current Account Resource Amount = {used}, Current Account Resource Reservation = 0, Requested Resource Amount = {amount}.",
                    type_name(number)
                ),
            ));
        }
    }
    Ok(())
}

/// Compute capacity held by VMs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ComputeUsage {
    /// Cores.
    pub(crate) cores: u64,
    /// MHz (cores × speed).
    pub(crate) mhz: u64,
    /// Memory in MiB.
    pub(crate) memory_mib: u64,
}

/// The capacity held by the VMs of `zone_id` (every zone when `None`) that are starting,
/// running or stopping, leaving out VM `except`: what a start or a scale checks against.
pub(crate) fn compute_usage(db: &Db, zone_id: Option<&str>, except: Option<&str>) -> ComputeUsage {
    db.vms
        .iter()
        .filter(|v| Some(v.id.as_str()) != except && v.state.uses_capacity())
        .filter(|v| zone_id.is_none_or(|z| v.zone_id == z))
        .filter_map(|v| db.service_offerings.iter().find(|o| o.id == v.offering_id))
        .fold(ComputeUsage::default(), |u, o| ComputeUsage {
            cores: u.cores + o.cpunumber,
            mhz: u.mhz + o.cpunumber * o.cpuspeed,
            memory_mib: u.memory_mib + o.memory,
        })
}

/// CloudStack's `percentused`: `DecimalFormat("#.##")` of used/total × 100.
fn percent(used: u64, total: u64) -> String {
    if total == 0 {
        return "0".into();
    }
    let value = used as f64 / total as f64 * 100.0;
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    text.to_owned()
}

/// `listCapacity` (admin): per zone, memory (0, bytes), CPU (1, MHz), public IPs (4) and CPU
/// cores (90), used against total. While the capacity-exhaustion fault is on, CPU and memory
/// show full, as the failing starts say.
pub(super) fn list_capacity(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let type_filter: Option<u8> = ctx.params.number(ctx.command, "type")?;
    let mut items = Vec::new();
    for zone in ctx
        .db
        .zones
        .iter()
        .filter(|z| ctx.filter_matches("zoneid", &z.id))
    {
        let used = compute_usage(ctx.db, Some(&zone.id), None);
        let ips_total = Cidr::parse(&zone.public_cidr)
            .map(|c| {
                let (first, last) = c.hosts();
                u64::from(u32::from(last) - u32::from(first) + 1)
            })
            .unwrap_or(0);
        let ips_used = ctx
            .db
            .public_ips
            .iter()
            .filter(|ip| ip.zone_id == zone.id)
            .count() as u64;
        let full = ctx.decision.capacity_exhausted;
        let memory_total = zone.memory_capacity * 1024 * 1024;
        let cpu_total = zone.cpu_capacity * CORE_SPEED_MHZ;
        let rows: [(u8, &str, u64, u64); 4] = [
            (
                0,
                "MEMORY",
                if full {
                    memory_total
                } else {
                    used.memory_mib * 1024 * 1024
                },
                memory_total,
            ),
            (1, "CPU", if full { cpu_total } else { used.mhz }, cpu_total),
            (4, "VIRTUAL_NETWORK_PUBLIC_IP", ips_used, ips_total),
            (
                90,
                "CPU_CORE",
                if full { zone.cpu_capacity } else { used.cores },
                zone.cpu_capacity,
            ),
        ];
        for (kind, name, used, total) in rows {
            if type_filter.is_some_and(|t| t != kind) {
                continue;
            }
            items.push(json!({
                "type": kind,
                "name": name,
                "zoneid": zone.id,
                "zonename": zone_name(ctx.db, &zone.id),
                "capacityused": used,
                "capacityallocated": used,
                "capacitytotal": total,
                "percentused": percent(used, total),
            }));
        }
    }
    Ok(Outcome::Sync(list_response(ctx.params, "capacity", items)?))
}

fn render_limit(db: &Db, account_id: &str, number: u8) -> Value {
    json!({
        "account": account(db, account_id).map(|a| a.name.clone()),
        "domainid": super::tenancy::account_domain(db, account_id),
        "domain": super::tenancy::domain_name(db, &super::tenancy::account_domain(db, account_id)),
        "resourcetype": number.to_string(),
        "resourcetypename": type_name(number),
        "max": limit(db, account_id, number),
    })
}

/// The account a limit command is about: `account` (admins only; others get their own).
fn target_account(ctx: &Ctx<'_>) -> Result<String, ApiError> {
    match ctx.params.get("account") {
        Some(name) if ctx.caller.admin => ctx
            .db
            .accounts
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.id.clone())
            .ok_or_else(|| {
                ApiError::param(format!("Unable to find account {name} in domain ROOT"))
            }),
        _ => Ok(ctx.caller.account_id.clone()),
    }
}

fn resource_type_param(ctx: &Ctx<'_>) -> Result<Option<u8>, ApiError> {
    if let Some(name) = ctx.params.get("resourcetypename") {
        return TYPES
            .iter()
            .find(|t| t.1.eq_ignore_ascii_case(name))
            .map(|t| Some(t.0))
            .ok_or_else(|| {
                ApiError::param(format!("Please specify a valid resource type name: {name}"))
            });
    }
    match ctx.params.number::<u8>(ctx.command, "resourcetype")? {
        Some(n) if TYPES.iter().any(|t| t.0 == n) => Ok(Some(n)),
        Some(n) => Err(ApiError::param(format!(
            "Please specify a valid resource type: {n}"
        ))),
        None => Ok(None),
    }
}

/// `listResourceLimits`: the caller's limits (an admin: `account`'s).
pub(super) fn list_resource_limits(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let account_id = target_account(ctx)?;
    let only = resource_type_param(ctx)?;
    let items = TYPES
        .iter()
        .filter(|t| only.is_none_or(|n| n == t.0))
        .map(|t| render_limit(ctx.db, &account_id, t.0))
        .collect();
    Ok(Outcome::Sync(list_response(
        ctx.params,
        "resourcelimit",
        items,
    )?))
}

/// `updateResourceLimit resourcetype=N [max=M] account=…` (admin): sets an account's limit
/// (`max` -1 or absent: unlimited).
pub(super) fn update_resource_limit(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let number = resource_type_param(ctx)?
        .ok_or_else(|| ApiError::missing(ctx.command, &["resourcetype"]))?;
    if ctx.params.get("account").is_none() {
        return Err(ApiError::missing(ctx.command, &["account"]));
    }
    let account_id = target_account(ctx)?;
    let max: i64 = ctx.params.number(ctx.command, "max")?.unwrap_or(-1);
    if max < -1 {
        return Err(ApiError::param(
            "Please specify either '-1' for an infinite limit, or a limit that is at least '0'.",
        ));
    }
    ctx.db
        .resource_limits
        .retain(|l| !(l.account_id == account_id && l.resource_type == number));
    ctx.db.resource_limits.push(ResourceLimit {
        account_id: account_id.clone(),
        resource_type: number,
        max,
    });
    Ok(Outcome::Sync(
        json!({ "resourcelimit": render_limit(ctx.db, &account_id, number) }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_print_like_decimal_format() {
        assert_eq!(percent(0, 10), "0");
        assert_eq!(percent(1, 8), "12.5");
        assert_eq!(percent(1, 3), "33.33");
        assert_eq!(percent(10, 10), "100");
        assert_eq!(percent(5, 0), "0");
    }

    #[test]
    fn limits_refuse_beyond_the_maximum_and_never_for_admins() {
        let mut db = crate::store::seed();
        let user = db.accounts.iter().find(|a| !a.admin).unwrap().id.clone();
        let admin = db.accounts.iter().find(|a| a.admin).unwrap().id.clone();
        db.resource_limits.push(ResourceLimit {
            account_id: user.clone(),
            resource_type: 1,
            max: 0,
        });
        let err = check(&db, &user, &[(ResourceType::PublicIp, 1)]).unwrap_err();
        assert_eq!((err.code, err.cs_code), (535, Some(9999)));
        assert!(err.text.contains("Type = 'public_ip'"), "{}", err.text);
        assert!(err.text.contains("Account Name = user"), "{}", err.text);
        assert!(check(&db, &user, &[(ResourceType::UserVm, 1)]).is_ok());
        assert!(check(&db, &admin, &[(ResourceType::PublicIp, 1000)]).is_ok());
        assert_eq!(limit(&db, &user, 0), 20, "the max.account default");
    }
}
