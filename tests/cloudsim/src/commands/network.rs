//! Guest networks, public IPs and the rules on them (firewall, port forwarding, load balancing).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde_json::{Value, json};

use super::{Ctx, Outcome, list_response, owner_fields, zone_name};
use crate::cidr::Cidr;
use crate::error::ApiError;
use crate::model::{Db, IpRange, Network, PublicIp, Rule, RuleKind, VmState};
use crate::store::{self, new_id};

/// How a network hands out addresses: its CIDR, gateway and guest range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Addressing {
    /// The network.
    pub(crate) cidr: Cidr,
    /// The gateway (the router's address on the network's bridge).
    pub(crate) gateway: Ipv4Addr,
    /// First guest address.
    pub(crate) first: Ipv4Addr,
    /// Last guest address.
    pub(crate) last: Ipv4Addr,
}

/// The addressing of `network`; `None` when its stored CIDR or range is unreadable.
pub(crate) fn addressing(network: &Network) -> Option<Addressing> {
    let cidr = Cidr::parse(&network.cidr).ok()?;
    let gateway = match &network.gateway {
        Some(gateway) => gateway.parse().ok()?,
        None => cidr.gateway(),
    };
    let (first, last) = match &network.ip_range {
        Some(range) => (range.start.parse().ok()?, range.end.parse().ok()?),
        None => cidr.hosts(),
    };
    Some(Addressing {
        cidr,
        gateway,
        first,
        last,
    })
}

fn render_network(db: &Db, n: &Network) -> Value {
    let addressing = addressing(n);
    let cidr = addressing.map(|a| a.cidr);
    let offering = db.network_offerings.iter().find(|o| o.id == n.offering_id);
    let mut body = json!({
        "id": n.id,
        "name": n.name,
        "displaytext": n.displaytext,
        "zoneid": n.zone_id,
        "zonename": zone_name(db, &n.zone_id),
        "networkofferingid": n.offering_id,
        "networkofferingname": offering.map(|o| o.name.clone()),
        "type": n.guest_type,
        "guestiptype": n.guest_type,
        "traffictype": "Guest",
        "cidr": n.cidr,
        "gateway": addressing.map(|a| a.gateway.to_string()),
        "netmask": cidr.map(|c| c.netmask().to_string()),
        "state": n.state,
        "created": n.created,
        "restartrequired": false,
        "specifyipranges": n.guest_type == "Shared",
        "acltype": if n.domain_wide { "Domain" } else { "Account" },
    });
    if let Some(vlan) = &n.vlan {
        body["vlan"] = json!(vlan);
        body["broadcasturi"] = json!(format!("vlan://{vlan}"));
    }
    if n.domain_wide {
        body["domainid"] = json!(super::domain_id(db));
        body["domain"] = json!("ROOT");
    } else {
        owner_fields(db, &n.account_id, &mut body);
    }
    body
}

/// The caller may deploy into (and list) `network`: its owner, an admin, or anyone for a
/// domain-wide shared network.
pub(crate) fn usable(ctx: &Ctx<'_>, network: &Network) -> Result<(), ApiError> {
    if network.domain_wide {
        return Ok(());
    }
    ctx.check_access(&network.account_id, &network.id)
}

fn parse_ip(name: &str, value: &str) -> Result<Ipv4Addr, ApiError> {
    value
        .parse()
        .map_err(|_| ApiError::param(format!("Please specify a valid IPv4 address for {name}")))
}

/// `createNetwork` (synchronous, returns `network`).
pub(super) fn create_network(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let cmd = ctx.command;
    let p = ctx.params;
    let name = p.require(cmd, "name")?.to_owned();
    let offering_id = p.require(cmd, "networkofferingid")?.to_owned();
    let zone_id = p.require(cmd, "zoneid")?.to_owned();
    let offering = ctx
        .db
        .network_offerings
        .iter()
        .find(|o| o.id == offering_id)
        .ok_or_else(|| {
            ApiError::param(format!(
                "Unable to find network offering by id {offering_id}"
            ))
        })?
        .clone();
    if !ctx.db.zones.iter().any(|z| z.id == zone_id) {
        return Err(ApiError::param(format!(
            "Specified zone id was not found: {zone_id}"
        )));
    }
    let shared = offering.guestiptype == "Shared";
    if shared && !ctx.caller.admin {
        return Err(ApiError::param(
            "Only Admins can create network with guest type Shared",
        ));
    }
    let owner = ctx.owner_for_create()?;
    let cidr = match (p.get("gateway"), p.get("netmask")) {
        (Some(gw), Some(mask)) => Cidr::from_gateway_netmask(gw, mask)
            .map_err(|e| ApiError::param(format!("Invalid gateway/netmask: {e}")))?,
        (None, None) if !shared => {
            let default = super::setting(ctx.db, "guest.network.cidr")
                .unwrap_or("10.1.1.0/24")
                .to_owned();
            Cidr::parse(&default).map_err(|e| ApiError::internal(e.to_string()))?
        }
        (None, None) => {
            return Err(ApiError::param(
                "gateway and netmask are required when creating a shared network",
            ));
        }
        _ => {
            return Err(ApiError::param(
                "gateway and netmask should be defined together",
            ));
        }
    };
    let gateway = p
        .get("gateway")
        .map(|g| parse_ip("gateway", g))
        .transpose()?;
    if let Some(gateway) = gateway
        && (!cidr.contains(gateway) || gateway == cidr.network())
    {
        return Err(ApiError::param(format!(
            "The gateway {gateway} is not a host address of the network {cidr}"
        )));
    }
    let ip_range = match (p.get("startip"), p.get("endip")) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(ApiError::param(
                "startip is required when endip is specified",
            ));
        }
        // "If end ip is not specified, default it to startIp", as CloudStack does.
        (Some(start), end) => {
            let first = parse_ip("startip", start)?;
            let last = parse_ip("endip", end.unwrap_or(start))?;
            let (lowest, highest) = cidr.hosts();
            let inside = |ip: Ipv4Addr| (lowest..=highest).contains(&ip);
            if !inside(first) || !inside(last) || first > last {
                return Err(ApiError::param(format!(
                    "The IP range {first}-{last} is not a range of host addresses of the network {cidr}"
                )));
            }
            Some(IpRange {
                start: first.to_string(),
                end: last.to_string(),
            })
        }
    };
    let domain_wide = match p.get("acltype") {
        Some(acl) if acl.eq_ignore_ascii_case("domain") => true,
        Some(acl) if acl.eq_ignore_ascii_case("account") => false,
        Some(acl) => {
            return Err(ApiError::param(format!(
                "Invalid acltype {acl}: expected Account or Domain"
            )));
        }
        // An admin's shared network without an owner serves the whole domain.
        None => shared && p.get("account").is_none(),
    };
    let network = Network {
        id: new_id(),
        displaytext: p.get("displaytext").unwrap_or(&name).to_owned(),
        name,
        account_id: owner,
        zone_id,
        offering_id,
        guest_type: offering.guestiptype.clone(),
        cidr: cidr.to_string(),
        gateway: gateway.map(|g| g.to_string()),
        ip_range,
        vlan: p.get("vlan").map(str::to_owned),
        domain_wide,
        state: if shared {
            "Setup".into()
        } else {
            "Allocated".into()
        },
        created: store::now(),
    };
    let body = json!({ "network": render_network(ctx.db, &network) });
    ctx.db.networks.push(network);
    Ok(Outcome::Sync(body))
}

/// `listNetworks`.
pub(super) fn list_networks(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let items = ctx
        .db
        .networks
        .iter()
        .filter(|n| n.domain_wide || ctx.visible(&n.account_id))
        .filter(|n| ctx.filter_matches("id", &n.id))
        .filter(|n| ctx.filter_matches("zoneid", &n.zone_id))
        .filter(|n| ctx.filter_matches("networkofferingid", &n.offering_id))
        .filter(|n| {
            ctx.params
                .get("type")
                .is_none_or(|t| t.eq_ignore_ascii_case(&n.guest_type))
        })
        .filter(|n| ctx.keyword_matches(&n.name))
        .map(|n| render_network(ctx.db, n))
        .collect();
    Ok(Outcome::Sync(list_response(ctx.params, "network", items)?))
}

/// `deleteNetwork`: refused with 536 while VMs that are not destroyed use it; releases the
/// network's public IPs and their rules.
pub(super) fn delete_network(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let id = ctx.params.require(ctx.command, "id")?.to_owned();
    let network = ctx
        .db
        .networks
        .iter()
        .find(|n| n.id == id)
        .ok_or_else(|| ApiError::param(format!("unable to find network {id}")))?;
    ctx.check_access(&network.account_id, &id)?;
    let in_use = ctx
        .db
        .vms
        .iter()
        .filter(|vm| vm.state != VmState::Destroyed)
        .filter(|vm| vm.nics.iter().any(|nic| nic.network_id == id))
        .count();
    if in_use > 0 {
        return Err(ApiError::in_use(format!(
            "Network {} ({id}) is in use by {in_use} VM(s); destroy them first",
            network.name
        )));
    }
    if ctx.planned_failure().is_some() {
        return Ok(ctx.simple_job(
            "network.DeleteNetworkCmd",
            Some(("Network", &id)),
            json!({}),
        ));
    }
    let ips: BTreeSet<String> = ctx
        .db
        .public_ips
        .iter()
        .filter(|ip| ip.network_id.as_deref() == Some(id.as_str()))
        .map(|ip| ip.id.clone())
        .collect();
    ctx.db.rules.retain(|r| !ips.contains(&r.ip_id));
    ctx.db.public_ips.retain(|ip| !ips.contains(&ip.id));
    ctx.db.networks.retain(|n| n.id != id);
    for vm in &mut ctx.db.vms {
        vm.nics.retain(|nic| nic.network_id != id);
    }
    Ok(ctx.simple_job(
        "network.DeleteNetworkCmd",
        Some(("Network", &id)),
        json!({ "success": true }),
    ))
}

fn render_ip(db: &Db, ip: &PublicIp) -> Value {
    let network = ip
        .network_id
        .as_ref()
        .and_then(|id| db.networks.iter().find(|n| &n.id == id));
    let mut body = json!({
        "id": ip.id,
        "ipaddress": ip.ip,
        "allocated": ip.allocated,
        "zoneid": ip.zone_id,
        "zonename": zone_name(db, &ip.zone_id),
        "issourcenat": ip.source_nat,
        "isstaticnat": false,
        "issystem": false,
        "forvirtualnetwork": true,
        "state": "Allocated",
    });
    if let Some(network) = network {
        body["associatednetworkid"] = json!(network.id);
        body["associatednetworkname"] = json!(network.name);
    }
    owner_fields(db, &ip.account_id, &mut body);
    body
}

fn allocate_public_ip(db: &Db, zone_id: &str) -> Result<Ipv4Addr, ApiError> {
    let zone = db
        .zones
        .iter()
        .find(|z| z.id == zone_id)
        .ok_or_else(|| ApiError::param(format!("Unable to find zone by id={zone_id}")))?;
    let cidr = Cidr::parse(&zone.public_cidr).map_err(|e| ApiError::internal(e.to_string()))?;
    let used: BTreeSet<Ipv4Addr> = db
        .public_ips
        .iter()
        .filter_map(|ip| ip.ip.parse().ok())
        .collect();
    cidr.allocate(&used, None).map_err(|_| {
        ApiError::address_capacity(format!(
            "Insufficient address capacity: no free public IP address in zone {}",
            zone.name
        ))
    })
}

/// Gives an isolated network its source NAT address if it has none (network implementation).
pub(super) fn ensure_source_nat(ctx: &mut Ctx<'_>, network_id: &str) {
    let Some(network) = ctx
        .db
        .networks
        .iter()
        .find(|n| n.id == network_id && n.guest_type == "Isolated")
    else {
        return;
    };
    if ctx
        .db
        .public_ips
        .iter()
        .any(|ip| ip.network_id.as_deref() == Some(network_id) && ip.source_nat)
    {
        return;
    }
    let (account_id, zone_id) = (network.account_id.clone(), network.zone_id.clone());
    if let Ok(ip) = allocate_public_ip(ctx.db, &zone_id) {
        ctx.db.public_ips.push(PublicIp {
            id: new_id(),
            ip: ip.to_string(),
            account_id,
            zone_id,
            network_id: Some(network_id.to_owned()),
            source_nat: true,
            allocated: store::now(),
        });
    }
}

/// `associateIpAddress networkid=…`: the first address of an isolated network is its source NAT.
pub(super) fn associate_ip(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let network_id = ctx.params.require(ctx.command, "networkid")?.to_owned();
    let network = ctx
        .db
        .networks
        .iter()
        .find(|n| n.id == network_id)
        .ok_or_else(|| ApiError::param(format!("Unable to find network by id {network_id}")))?
        .clone();
    ctx.check_access(&network.account_id, &network_id)?;
    super::limits::check(
        ctx.db,
        &network.account_id,
        &[(super::limits::ResourceType::PublicIp, 1)],
    )?;
    let ip = allocate_public_ip(ctx.db, &network.zone_id)?;
    let source_nat = network.guest_type == "Isolated"
        && !ctx
            .db
            .public_ips
            .iter()
            .any(|ip| ip.network_id.as_deref() == Some(network_id.as_str()) && ip.source_nat);
    let public = PublicIp {
        id: new_id(),
        ip: ip.to_string(),
        account_id: network.account_id.clone(),
        zone_id: network.zone_id.clone(),
        network_id: Some(network_id),
        source_nat,
        allocated: store::now(),
    };
    let id = public.id.clone();
    let result = json!({ "ipaddress": render_ip(ctx.db, &public) });
    let planned = ctx.planned_failure();
    if planned.is_none() {
        ctx.db.public_ips.push(public);
    }
    let job_id = ctx.submit_job(
        "address.AssociateIPAddrCmd",
        Some(("IpAddress", &id)),
        result,
        crate::model::Completion::Fixed,
        planned,
    );
    Ok(Outcome::Async {
        job_id,
        id: Some(id),
    })
}

/// `disassociateIpAddress`: releases the address and its rules; source NAT is refused.
pub(super) fn disassociate_ip(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let id = ctx.params.require(ctx.command, "id")?.to_owned();
    let ip = ctx
        .db
        .public_ips
        .iter()
        .find(|ip| ip.id == id)
        .ok_or_else(|| ApiError::param(format!("Unable to find ip address by id={id}")))?;
    ctx.check_access(&ip.account_id, &id)?;
    if ip.source_nat {
        return Err(ApiError::param(format!(
            "IP address id={id} is a source nat ip address; can't be released"
        )));
    }
    if ctx.planned_failure().is_none() {
        ctx.db.rules.retain(|r| r.ip_id != id);
        ctx.db.public_ips.retain(|ip| ip.id != id);
    }
    Ok(ctx.simple_job(
        "address.DisassociateIPAddrCmd",
        Some(("IpAddress", &id)),
        json!({ "success": true }),
    ))
}

/// `listPublicIpAddresses`.
pub(super) fn list_public_ips(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let source_nat = ctx.params.get("issourcenat").map(|v| v == "true");
    let items = ctx
        .db
        .public_ips
        .iter()
        .filter(|ip| ctx.visible(&ip.account_id))
        .filter(|ip| ctx.filter_matches("id", &ip.id))
        .filter(|ip| ctx.filter_matches("ipaddress", &ip.ip))
        .filter(|ip| ctx.filter_matches("zoneid", &ip.zone_id))
        .filter(|ip| {
            ctx.params
                .get("associatednetworkid")
                .is_none_or(|n| ip.network_id.as_deref() == Some(n))
        })
        .filter(|ip| source_nat.is_none_or(|s| s == ip.source_nat))
        .map(|ip| render_ip(ctx.db, ip))
        .collect();
    Ok(Outcome::Sync(list_response(
        ctx.params,
        "publicipaddress",
        items,
    )?))
}

// === rules ===

/// The object name of a created rule (`createLoadBalancerRule`'s job result holds
/// `loadbalancer`).
fn rule_key(kind: RuleKind) -> &'static str {
    match kind {
        RuleKind::Firewall => "firewallrule",
        RuleKind::PortForwarding => "portforwardingrule",
        RuleKind::LoadBalancer => "loadbalancer",
    }
}

/// The array key of a rule list: `listLoadBalancerRules` names its items `loadbalancerrule`
/// (`ListLoadBalancerRulesCmd` sets that object name), unlike the created rule.
fn list_key(kind: RuleKind) -> &'static str {
    match kind {
        RuleKind::LoadBalancer => "loadbalancerrule",
        other => rule_key(other),
    }
}

fn rule_cmd(kind: RuleKind, verb: &str) -> String {
    match kind {
        RuleKind::Firewall => format!("firewall.{verb}FirewallRuleCmd"),
        RuleKind::PortForwarding => format!("firewall.{verb}PortForwardingRuleCmd"),
        RuleKind::LoadBalancer => format!("loadbalancer.{verb}LoadBalancerRuleCmd"),
    }
}

fn render_rule(db: &Db, r: &Rule) -> Value {
    let ip = db.public_ips.iter().find(|ip| ip.id == r.ip_id);
    let ip_address = ip.map(|ip| ip.ip.clone());
    let mut body = match r.kind {
        RuleKind::Firewall => json!({
            "id": r.id,
            "protocol": r.protocol,
            "startport": r.start_port,
            "endport": r.end_port,
            "ipaddressid": r.ip_id,
            "ipaddress": ip_address,
            "cidrlist": r.cidrs,
            "state": "Active",
            "networkid": r.network_id,
        }),
        RuleKind::PortForwarding => {
            let vm = r
                .vm_id
                .as_ref()
                .and_then(|id| db.vms.iter().find(|v| &v.id == id));
            json!({
                "id": r.id,
                "protocol": r.protocol,
                "publicport": r.start_port.map(|p| p.to_string()),
                "publicendport": r.end_port.map(|p| p.to_string()),
                "privateport": r.private_start.map(|p| p.to_string()),
                "privateendport": r.private_end.map(|p| p.to_string()),
                "ipaddressid": r.ip_id,
                "ipaddress": ip_address,
                "virtualmachineid": r.vm_id,
                "virtualmachinename": vm.map(|v| v.name.clone()),
                "vmguestip": vm.and_then(|v| v.nics.first()).map(|n| n.ip.clone()),
                "cidrlist": "",
                "state": "Active",
                "networkid": r.network_id,
            })
        }
        RuleKind::LoadBalancer => json!({
            "id": r.id,
            "name": r.name,
            "protocol": r.protocol,
            "publicport": r.start_port.map(|p| p.to_string()),
            "privateport": r.private_start.map(|p| p.to_string()),
            "publicipid": r.ip_id,
            "publicip": ip_address,
            "algorithm": r.algorithm,
            "cidrlist": r.cidrs,
            "state": "Active",
            "networkid": r.network_id,
            "zoneid": ip.map(|ip| ip.zone_id.clone()),
        }),
    };
    // CloudStack lists each rule with its resource tags, as it does VMs.
    body["tags"] = db
        .tags
        .iter()
        .filter(|t| t.resource_id == r.id)
        .map(|t| json!({ "key": t.key, "value": t.value }))
        .collect();
    owner_fields(db, &r.account_id, &mut body);
    body
}

fn port(ctx: &Ctx<'_>, name: &str) -> Result<Option<u16>, ApiError> {
    ctx.params.number(ctx.command, name)
}

fn required_port(ctx: &Ctx<'_>, name: &str) -> Result<u16, ApiError> {
    port(ctx, name)?.ok_or_else(|| ApiError::missing(ctx.command, &[name]))
}

fn find_ip(ctx: &Ctx<'_>, id: &str) -> Result<PublicIp, ApiError> {
    let ip = ctx
        .db
        .public_ips
        .iter()
        .find(|ip| ip.id == id)
        .ok_or_else(|| ApiError::param(format!("Unable to find ip address by id {id}")))?;
    ctx.check_access(&ip.account_id, id)?;
    Ok(ip.clone())
}

/// CloudStack's `detectRulesConflict`: PF and LB rules may not share public ports on one IP
/// and protocol; firewall rules conflict with firewall rules of the same ports and CIDRs.
fn detect_conflict(db: &Db, new: &Rule) -> Result<(), ApiError> {
    let (Some(start), Some(end)) = (new.start_port, new.end_port) else {
        return Ok(());
    };
    for rule in db
        .rules
        .iter()
        .filter(|r| r.ip_id == new.ip_id && r.protocol == new.protocol)
    {
        let comparable = match new.kind {
            RuleKind::Firewall => rule.kind == RuleKind::Firewall && rule.cidrs == new.cidrs,
            _ => rule.kind != RuleKind::Firewall,
        };
        let (Some(s), Some(e)) = (rule.start_port, rule.end_port) else {
            continue;
        };
        if comparable && start <= e && s <= end {
            return Err(ApiError::rule_conflict(format!(
                "The range specified, {start}-{end}, conflicts with rule {} which has {s}-{e}",
                rule.id
            )));
        }
    }
    Ok(())
}

fn protocol(ctx: &Ctx<'_>, default: Option<&str>) -> Result<String, ApiError> {
    let protocol = match (ctx.params.get("protocol"), default) {
        (Some(p), _) => p.to_lowercase(),
        (None, Some(d)) => d.to_owned(),
        (None, None) => return Err(ApiError::missing(ctx.command, &["protocol"])),
    };
    if !["tcp", "udp", "icmp", "all"].contains(&protocol.as_str()) {
        return Err(ApiError::param(format!("Invalid protocol {protocol}")));
    }
    Ok(protocol)
}

fn submit_rule(ctx: &mut Ctx<'_>, rule: Rule, open_firewall: bool) -> Result<Outcome, ApiError> {
    detect_conflict(ctx.db, &rule)?;
    let id = rule.id.clone();
    let kind = rule.kind;
    let result = json!({ rule_key(kind): render_rule(ctx.db, &rule) });
    let planned = ctx.planned_failure();
    if planned.is_none() {
        if open_firewall {
            let firewall = Rule {
                id: new_id(),
                kind: RuleKind::Firewall,
                private_start: None,
                private_end: None,
                cidrs: "0.0.0.0/0".into(),
                vm_id: None,
                vm_ids: Vec::new(),
                name: None,
                algorithm: None,
                ..rule.clone()
            };
            if detect_conflict(ctx.db, &firewall).is_ok() {
                ctx.db.rules.push(firewall);
            }
        }
        ctx.db.rules.push(rule);
    }
    let job_id = ctx.submit_job(
        &rule_cmd(kind, "Create"),
        Some((
            if kind == RuleKind::LoadBalancer {
                "LoadBalancerRule"
            } else {
                "FirewallRule"
            },
            &id,
        )),
        result,
        crate::model::Completion::Fixed,
        planned,
    );
    Ok(Outcome::Async {
        job_id,
        id: Some(id),
    })
}

/// `createFirewallRule`.
pub(super) fn create_firewall_rule(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let ip = find_ip(ctx, ctx.params.require(ctx.command, "ipaddressid")?)?;
    let protocol = protocol(ctx, None)?;
    let start = port(ctx, "startport")?;
    let end = port(ctx, "endport")?.or(start);
    let rule = Rule {
        id: new_id(),
        kind: RuleKind::Firewall,
        ip_id: ip.id.clone(),
        account_id: ip.account_id.clone(),
        protocol,
        start_port: start,
        end_port: end,
        private_start: None,
        private_end: None,
        cidrs: ctx.params.get("cidrlist").unwrap_or("0.0.0.0/0").to_owned(),
        vm_id: None,
        vm_ids: Vec::new(),
        name: None,
        algorithm: None,
        network_id: ip.network_id.clone(),
    };
    submit_rule(ctx, rule, false)
}

fn vm_in_network(ctx: &Ctx<'_>, vm_id: &str, network_id: Option<&str>) -> Result<(), ApiError> {
    let vm = ctx.db.vms.iter().find(|v| v.id == vm_id).ok_or_else(|| {
        ApiError::param(format!("Unable to find virtual machine with id {vm_id}"))
    })?;
    ctx.check_access(&vm.account_id, vm_id)?;
    if vm.state == VmState::Destroyed {
        return Err(ApiError::param(format!(
            "Invalid user vm: {} is in state Destroyed",
            vm.name
        )));
    }
    if let Some(network_id) = network_id
        && !vm.nics.iter().any(|n| n.network_id == network_id)
    {
        return Err(ApiError::param(format!(
            "VM {} is not part of the network {network_id} of the ip address",
            vm.name
        )));
    }
    Ok(())
}

/// `createPortForwardingRule`: port conflicts → 537.
pub(super) fn create_port_forwarding_rule(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let ip = find_ip(ctx, ctx.params.require(ctx.command, "ipaddressid")?)?;
    let protocol = protocol(ctx, None)?;
    let public = required_port(ctx, "publicport")?;
    let private = required_port(ctx, "privateport")?;
    let public_end = port(ctx, "publicendport")?.unwrap_or(public);
    let private_end = port(ctx, "privateendport")?.unwrap_or(private);
    let vm_id = ctx
        .params
        .require(ctx.command, "virtualmachineid")?
        .to_owned();
    vm_in_network(ctx, &vm_id, ip.network_id.as_deref())?;
    let rule = Rule {
        id: new_id(),
        kind: RuleKind::PortForwarding,
        ip_id: ip.id.clone(),
        account_id: ip.account_id.clone(),
        protocol,
        start_port: Some(public),
        end_port: Some(public_end),
        private_start: Some(private),
        private_end: Some(private_end),
        cidrs: String::new(),
        vm_id: Some(vm_id),
        vm_ids: Vec::new(),
        name: None,
        algorithm: None,
        network_id: ip.network_id.clone(),
    };
    let open = ctx.params.bool("openfirewall", true)?;
    submit_rule(ctx, rule, open)
}

/// `createLoadBalancerRule`.
pub(super) fn create_load_balancer_rule(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let name = ctx.params.require(ctx.command, "name")?.to_owned();
    let algorithm = ctx.params.require(ctx.command, "algorithm")?.to_lowercase();
    if !["roundrobin", "leastconn", "source"].contains(&algorithm.as_str()) {
        return Err(ApiError::param(format!("Invalid algorithm: {algorithm}")));
    }
    let ip = find_ip(ctx, ctx.params.require(ctx.command, "publicipid")?)?;
    let public = required_port(ctx, "publicport")?;
    let private = required_port(ctx, "privateport")?;
    let protocol = protocol(ctx, Some("tcp"))?;
    let rule = Rule {
        id: new_id(),
        kind: RuleKind::LoadBalancer,
        ip_id: ip.id.clone(),
        account_id: ip.account_id.clone(),
        protocol,
        start_port: Some(public),
        end_port: Some(public),
        private_start: Some(private),
        private_end: Some(private),
        cidrs: ctx.params.get("cidrlist").unwrap_or("0.0.0.0/0").to_owned(),
        vm_id: None,
        vm_ids: Vec::new(),
        name: Some(name),
        algorithm: Some(algorithm),
        network_id: ip.network_id.clone(),
    };
    let open = ctx.params.bool("openfirewall", true)?;
    submit_rule(ctx, rule, open)
}

/// `listFirewallRules`, `listPortForwardingRules`, `listLoadBalancerRules`.
pub(super) fn list_rules(ctx: &mut Ctx<'_>, kind: RuleKind) -> Result<Outcome, ApiError> {
    let ip_param = if kind == RuleKind::LoadBalancer {
        "publicipid"
    } else {
        "ipaddressid"
    };
    let items = ctx
        .db
        .rules
        .iter()
        .filter(|r| r.kind == kind)
        .filter(|r| ctx.visible(&r.account_id))
        .filter(|r| ctx.filter_matches("id", &r.id))
        .filter(|r| ctx.filter_matches(ip_param, &r.ip_id))
        .filter(|r| {
            ctx.params
                .get("networkid")
                .is_none_or(|n| r.network_id.as_deref() == Some(n))
        })
        .filter(|r| {
            ctx.params
                .get("name")
                .is_none_or(|n| r.name.as_deref() == Some(n))
        })
        .map(|r| render_rule(ctx.db, r))
        .collect();
    Ok(Outcome::Sync(list_response(
        ctx.params,
        list_key(kind),
        items,
    )?))
}

/// `deleteFirewallRule`, `deletePortForwardingRule`, `deleteLoadBalancerRule`.
pub(super) fn delete_rule(ctx: &mut Ctx<'_>, kind: RuleKind) -> Result<Outcome, ApiError> {
    let id = ctx.params.require(ctx.command, "id")?.to_owned();
    let rule = ctx
        .db
        .rules
        .iter()
        .find(|r| r.id == id && r.kind == kind)
        .ok_or_else(|| ApiError::param(format!("Unable to find rule by id {id}")))?;
    ctx.check_access(&rule.account_id, &id)?;
    if ctx.planned_failure().is_none() {
        ctx.db.rules.retain(|r| r.id != id);
        ctx.db.tags.retain(|t| t.resource_id != id);
    }
    Ok(ctx.simple_job(
        &rule_cmd(kind, "Delete"),
        Some(("FirewallRule", &id)),
        json!({ "success": true }),
    ))
}

/// `assignToLoadBalancerRule` / `removeFromLoadBalancerRule` with `virtualmachineids`.
pub(super) fn assign_to_load_balancer(
    ctx: &mut Ctx<'_>,
    assign: bool,
) -> Result<Outcome, ApiError> {
    let id = ctx.params.require(ctx.command, "id")?.to_owned();
    let rule = ctx
        .db
        .rules
        .iter()
        .find(|r| r.id == id && r.kind == RuleKind::LoadBalancer)
        .ok_or_else(|| ApiError::param(format!("Unable to find load balancer rule {id}")))?
        .clone();
    ctx.check_access(&rule.account_id, &id)?;
    let mut vm_ids = ctx.params.list("virtualmachineids");
    for map in ctx.params.map("vmidipmap") {
        if let Some(vm) = map.get("vmid") {
            vm_ids.push(vm.clone());
        }
    }
    if vm_ids.is_empty() {
        return Err(ApiError::missing(ctx.command, &["virtualmachineids"]));
    }
    for vm_id in &vm_ids {
        if assign {
            vm_in_network(ctx, vm_id, rule.network_id.as_deref())?;
            if rule.vm_ids.contains(vm_id) {
                return Err(ApiError::param(format!(
                    "VM {vm_id} is already assigned to load balancer rule {id}"
                )));
            }
        } else if !rule.vm_ids.contains(vm_id) {
            return Err(ApiError::param(format!(
                "VM {vm_id} is not assigned to load balancer rule {id}"
            )));
        }
    }
    if ctx.planned_failure().is_none()
        && let Some(rule) = ctx.db.rules.iter_mut().find(|r| r.id == id)
    {
        if assign {
            rule.vm_ids.extend(vm_ids);
        } else {
            rule.vm_ids.retain(|v| !vm_ids.contains(v));
        }
    }
    let verb = if assign {
        "AssignToLoadBalancerRuleCmd"
    } else {
        "RemoveFromLoadBalancerRuleCmd"
    };
    Ok(ctx.simple_job(
        &format!("loadbalancer.{verb}"),
        Some(("LoadBalancerRule", &id)),
        json!({ "success": true }),
    ))
}
