//! The command catalog: every command the simulator serves, with its handler, whether it is
//! asynchronous, who may call it and the parameters `listApis` shows. Dispatch and `listApis`
//! both read this table, so the simulator cannot serve a command it does not list, nor list one
//! it does not serve.

use serde_json::{Value, json};

use super::{
    Ctx, Outcome, compute, identity, images, keys, limits, list_response, network, tenancy,
};
use crate::error::ApiError;
use crate::model::RuleKind;

/// A command handler; runs with the state lock held.
pub(crate) type Handler = fn(&mut Ctx<'_>) -> Result<Outcome, ApiError>;

/// Who may call a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Every account (ownership is checked by the handler).
    Everyone,
    /// Root admins only; for users the command does not exist (432), as with CloudStack's
    /// role-based API checker.
    Admin,
    /// Root and domain admins (the handler keeps a domain admin inside its tree).
    DomainAdmin,
}

// === impl Access ===

impl Access {
    /// True when `caller` may call a command with this access.
    pub(crate) fn allows(self, caller: &super::Caller) -> bool {
        match self {
            Self::Everyone => true,
            Self::Admin => caller.admin,
            Self::DomainAdmin => caller.admin || caller.domain_admin,
        }
    }
}

/// One parameter, as `listApis` shows it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Param {
    name: &'static str,
    kind: &'static str,
    required: bool,
    description: &'static str,
}

const fn req(name: &'static str, kind: &'static str, description: &'static str) -> Param {
    Param {
        name,
        kind,
        required: true,
        description,
    }
}

const fn opt(name: &'static str, kind: &'static str, description: &'static str) -> Param {
    Param {
        name,
        kind,
        required: false,
        description,
    }
}

/// One served command.
pub(crate) struct Command {
    /// The API name.
    pub(crate) name: &'static str,
    /// What runs it.
    pub(crate) handler: Handler,
    /// True when it answers with a job id (`isasync`).
    pub(crate) is_async: bool,
    /// Who may call it.
    pub(crate) access: Access,
    description: &'static str,
    params: &'static [Param],
}

const fn sync(
    name: &'static str,
    handler: Handler,
    description: &'static str,
    params: &'static [Param],
) -> Command {
    Command {
        name,
        handler,
        is_async: false,
        access: Access::Everyone,
        description,
        params,
    }
}

const fn job(
    name: &'static str,
    handler: Handler,
    description: &'static str,
    params: &'static [Param],
) -> Command {
    Command {
        name,
        handler,
        is_async: true,
        access: Access::Everyone,
        description,
        params,
    }
}

const fn admin(command: Command) -> Command {
    Command {
        access: Access::Admin,
        ..command
    }
}

const fn domain_admin(command: Command) -> Command {
    Command {
        access: Access::DomainAdmin,
        ..command
    }
}

const ID: Param = req("id", "uuid", "the ID of the resource");
const PAGE: Param = opt("page", "integer", "the page (1-based)");
const PAGESIZE: Param = opt("pagesize", "integer", "the page size");
const KEYWORD: Param = opt("keyword", "string", "list by keyword");
const LISTALL: Param = opt(
    "listall",
    "boolean",
    "list resources of all accounts (admin)",
);
const ACCOUNT: Param = opt("account", "string", "the owning account");
const DOMAINID: Param = opt("domainid", "uuid", "the owning account's domain");
const ISRECURSIVE: Param = opt(
    "isrecursive",
    "boolean",
    "with domainid: that domain and every domain below it",
);
const PROJECTID: Param = opt(
    "projectid",
    "uuid",
    "the project (lists: -1 for every project of the caller)",
);

fn list_firewall_rules(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    network::list_rules(ctx, RuleKind::Firewall)
}
fn delete_firewall_rule(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    network::delete_rule(ctx, RuleKind::Firewall)
}
fn list_port_forwarding_rules(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    network::list_rules(ctx, RuleKind::PortForwarding)
}
fn delete_port_forwarding_rule(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    network::delete_rule(ctx, RuleKind::PortForwarding)
}
fn list_load_balancer_rules(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    network::list_rules(ctx, RuleKind::LoadBalancer)
}
fn delete_load_balancer_rule(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    network::delete_rule(ctx, RuleKind::LoadBalancer)
}
fn assign_to_load_balancer_rule(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    network::assign_to_load_balancer(ctx, true)
}
fn remove_from_load_balancer_rule(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    network::assign_to_load_balancer(ctx, false)
}

/// Every command the simulator serves.
pub(crate) const COMMANDS: &[Command] = &[
    // === zones, offerings, images ===
    sync(
        "listZones",
        images::list_zones,
        "Lists zones",
        &[
            opt("id", "uuid", "the zone ID"),
            opt("name", "string", "the zone name"),
            PAGE,
            PAGESIZE,
        ],
    ),
    sync(
        "listServiceOfferings",
        images::list_service_offerings,
        "Lists all available service offerings.",
        &[
            opt("id", "uuid", "ID of the offering"),
            opt("name", "string", "name of the offering"),
            KEYWORD,
            PAGE,
            PAGESIZE,
        ],
    ),
    sync(
        "listTemplates",
        images::list_templates,
        "List all public, private, and privileged templates.",
        &[
            req(
                "templatefilter",
                "string",
                "featured, self, selfexecutable, sharedexecutable, executable, community or all",
            ),
            opt("id", "uuid", "the template ID"),
            opt("name", "string", "the template name"),
            opt("zoneid", "uuid", "list templates by zone"),
            KEYWORD,
            PAGE,
            PAGESIZE,
        ],
    ),
    sync(
        "listNetworkOfferings",
        images::list_network_offerings,
        "Lists all available network offerings.",
        &[
            opt("id", "uuid", "list network offerings by ID"),
            opt("name", "string", "list network offerings by name"),
            opt("guestiptype", "string", "Isolated or Shared"),
            PAGE,
            PAGESIZE,
        ],
    ),
    sync(
        "registerIso",
        images::register_iso,
        "Registers an existing ISO into the CloudStack Cloud.",
        &[
            req("name", "string", "the name of the ISO"),
            req(
                "url",
                "string",
                "the URL to where the ISO is currently being hosted",
            ),
            req("zoneid", "uuid", "the zone, or -1 for all zones"),
            opt("displaytext", "string", "the display text of the ISO"),
            opt("checksum", "string", "the checksum of the ISO"),
            opt(
                "ispublic",
                "boolean",
                "true if the ISO is usable by every account",
            ),
            opt("bootable", "boolean", "true if this ISO is bootable"),
            ACCOUNT,
            DOMAINID,
        ],
    ),
    sync(
        "listIsos",
        images::list_isos,
        "Lists all available ISO files.",
        &[
            opt("id", "uuid", "list ISO by ID"),
            opt("name", "string", "list all ISOs by name"),
            opt(
                "isofilter",
                "string",
                "self, selfexecutable, featured, community, executable or all",
            ),
            opt("isready", "boolean", "true to list ready ISOs only"),
            opt("zoneid", "uuid", "the zone"),
            KEYWORD,
            LISTALL,
            PAGE,
            PAGESIZE,
        ],
    ),
    job(
        "deleteIso",
        images::delete_iso,
        "Deletes an ISO file.",
        &[ID, opt("zoneid", "uuid", "the zone")],
    ),
    job(
        "attachIso",
        images::attach_iso,
        "Attaches an ISO to a virtual machine.",
        &[
            ID,
            req("virtualmachineid", "uuid", "the ID of the virtual machine"),
            opt("forced", "boolean", "replace an attached ISO"),
        ],
    ),
    job(
        "detachIso",
        images::detach_iso,
        "Detaches any ISO file (if any) currently attached to a virtual machine.",
        &[req(
            "virtualmachineid",
            "uuid",
            "the ID of the virtual machine",
        )],
    ),
    // === virtual machines ===
    job(
        "deployVirtualMachine",
        compute::deploy,
        "Creates and automatically starts a virtual machine based on a service offering, disk offering, and template.",
        &[
            req(
                "zoneid",
                "uuid",
                "availability zone for the virtual machine",
            ),
            req(
                "serviceofferingid",
                "uuid",
                "the ID of the service offering",
            ),
            req("templateid", "uuid", "the ID of the template"),
            opt(
                "networkids",
                "list",
                "list of network ids used by virtual machine",
            ),
            opt("name", "string", "host name for the virtual machine"),
            opt("displayname", "string", "an optional user generated name"),
            opt("userdata", "string", "base64 userdata (POST above 4 KB)"),
            opt("keypair", "string", "name of the ssh key pair"),
            opt("keypairs", "list", "names of the ssh key pairs"),
            opt(
                "ipaddress",
                "string",
                "the ip address for the default network",
            ),
            opt("startvm", "boolean", "true (default) to start the VM"),
            opt("rootdisksize", "long", "root disk size in GB"),
            opt("details", "map", "custom parameters"),
            opt(
                "dynamicscalingenabled",
                "boolean",
                "true (default) if the VM may be scaled while running",
            ),
            ACCOUNT,
            DOMAINID,
            PROJECTID,
        ],
    ),
    job(
        "startVirtualMachine",
        compute::start,
        "Starts a virtual machine.",
        &[ID],
    ),
    job(
        "stopVirtualMachine",
        compute::stop,
        "Stops a virtual machine.",
        &[ID, opt("forced", "boolean", "force stop")],
    ),
    job(
        "rebootVirtualMachine",
        compute::reboot,
        "Reboots a virtual machine.",
        &[ID],
    ),
    job(
        "destroyVirtualMachine",
        compute::destroy,
        "Destroys a virtual machine.",
        &[
            ID,
            opt(
                "expunge",
                "boolean",
                "expunge at once (admin, or allow.user.expunge.recover.vm)",
            ),
        ],
    ),
    job(
        "expungeVirtualMachine",
        compute::expunge,
        "Expunge a virtual machine. Once expunged, it cannot be recoverd.",
        &[ID],
    ),
    sync(
        "recoverVirtualMachine",
        compute::recover,
        "Recovers a virtual machine.",
        &[ID],
    ),
    job(
        "scaleVirtualMachine",
        compute::scale,
        "Scales the virtual machine to a new service offering.",
        &[
            ID,
            req(
                "serviceofferingid",
                "uuid",
                "the ID of the service offering",
            ),
            opt("details", "map", "custom parameters"),
        ],
    ),
    sync(
        "changeServiceForVirtualMachine",
        compute::change_service,
        "Changes the service offering for a virtual machine. The virtual machine must be in a \"Stopped\" state for this command to take effect.",
        &[
            ID,
            req(
                "serviceofferingid",
                "uuid",
                "the service offering ID to apply",
            ),
        ],
    ),
    sync(
        "updateVirtualMachine",
        compute::update,
        "Updates properties of a virtual machine. The VM has to be stopped and restarted for the new properties to take effect.",
        &[
            ID,
            opt("displayname", "string", "user generated name"),
            opt("name", "string", "new host name of the vm"),
            opt("userdata", "string", "base64 userdata"),
            opt("details", "map", "details in key/value pairs"),
            opt("cleanupdetails", "boolean", "remove the details"),
            opt(
                "isdynamicallyscalable",
                "boolean",
                "whether the VM may be scaled while running",
            ),
        ],
    ),
    sync(
        "listVirtualMachines",
        compute::list,
        "List the virtual machines owned by the account.",
        &[
            opt("id", "uuid", "the ID of the virtual machine"),
            opt("ids", "list", "the IDs of the virtual machines"),
            opt("name", "string", "name of the virtual machine"),
            opt(
                "state",
                "string",
                "state of the virtual machine, or present",
            ),
            opt("zoneid", "uuid", "the zone"),
            opt("networkid", "uuid", "list by network"),
            KEYWORD,
            LISTALL,
            ACCOUNT,
            DOMAINID,
            PROJECTID,
            PAGE,
            PAGESIZE,
        ],
    ),
    // === SSH key pairs ===
    sync(
        "createSSHKeyPair",
        keys::create,
        "Create a new keypair and returns the private key",
        &[
            req("name", "string", "Name of the keypair"),
            ACCOUNT,
            DOMAINID,
            PROJECTID,
        ],
    ),
    sync(
        "registerSSHKeyPair",
        keys::register,
        "Register a public key in a keypair under a certain name",
        &[
            req("name", "string", "Name of the keypair"),
            req("publickey", "string", "Public key material of the keypair"),
            ACCOUNT,
            DOMAINID,
            PROJECTID,
        ],
    ),
    sync(
        "listSSHKeyPairs",
        keys::list,
        "List registered keypairs",
        &[
            opt("id", "uuid", "the ID of the ssh keypair"),
            opt("name", "string", "A key pair name to look for"),
            opt(
                "fingerprint",
                "string",
                "A public key fingerprint to look for",
            ),
            KEYWORD,
            LISTALL,
            ACCOUNT,
            DOMAINID,
            PROJECTID,
            PAGE,
            PAGESIZE,
        ],
    ),
    sync(
        "deleteSSHKeyPair",
        keys::delete,
        "Deletes a keypair by name",
        &[
            req("name", "string", "Name of the keypair"),
            ACCOUNT,
            DOMAINID,
            PROJECTID,
        ],
    ),
    // === networks and rules ===
    sync(
        "createNetwork",
        network::create_network,
        "Creates a network",
        &[
            req("name", "string", "the name of the network"),
            req("networkofferingid", "uuid", "the network offering ID"),
            req("zoneid", "uuid", "the zone ID"),
            opt("displaytext", "string", "the display text of the network"),
            opt("gateway", "string", "the gateway (shared networks)"),
            opt("netmask", "string", "the netmask (shared networks)"),
            opt(
                "startip",
                "string",
                "the beginning IP address of the guest range",
            ),
            opt(
                "endip",
                "string",
                "the ending IP address of the guest range",
            ),
            opt("vlan", "string", "the VLAN (shared networks)"),
            opt("acltype", "string", "Account or Domain"),
            ACCOUNT,
            DOMAINID,
            PROJECTID,
        ],
    ),
    sync(
        "listNetworks",
        network::list_networks,
        "Lists all available networks.",
        &[
            opt("id", "uuid", "list networks by ID"),
            opt("zoneid", "uuid", "the zone"),
            opt("type", "string", "Isolated or Shared"),
            opt("networkofferingid", "uuid", "list by offering"),
            KEYWORD,
            LISTALL,
            ACCOUNT,
            DOMAINID,
            PROJECTID,
            PAGE,
            PAGESIZE,
        ],
    ),
    job(
        "deleteNetwork",
        network::delete_network,
        "Deletes a network",
        &[ID, opt("forced", "boolean", "force deletion")],
    ),
    job(
        "associateIpAddress",
        network::associate_ip,
        "Acquires and associates a public IP to an account.",
        &[req(
            "networkid",
            "uuid",
            "the network to associate the IP with",
        )],
    ),
    job(
        "disassociateIpAddress",
        network::disassociate_ip,
        "Disassociates an IP address from the account.",
        &[ID],
    ),
    sync(
        "listPublicIpAddresses",
        network::list_public_ips,
        "Lists all public IP addresses",
        &[
            opt("id", "uuid", "lists IP address by ID"),
            opt("ipaddress", "string", "lists the specified IP address"),
            opt("associatednetworkid", "uuid", "lists IPs of the network"),
            opt("issourcenat", "boolean", "list only source NAT IPs"),
            opt("zoneid", "uuid", "the zone"),
            LISTALL,
            PAGE,
            PAGESIZE,
        ],
    ),
    job(
        "createFirewallRule",
        network::create_firewall_rule,
        "Creates a firewall rule for a given IP address",
        &[
            req("ipaddressid", "uuid", "the IP address id"),
            req("protocol", "string", "TCP, UDP, ICMP or ALL"),
            opt("startport", "integer", "the starting port"),
            opt("endport", "integer", "the ending port"),
            opt("cidrlist", "list", "the source CIDRs"),
        ],
    ),
    sync(
        "listFirewallRules",
        list_firewall_rules,
        "Lists all firewall rules for an IP address.",
        &[
            opt("id", "uuid", "the rule ID"),
            opt("ipaddressid", "uuid", "the IP address id"),
            opt("networkid", "uuid", "the network"),
            LISTALL,
            PAGE,
            PAGESIZE,
        ],
    ),
    job(
        "deleteFirewallRule",
        delete_firewall_rule,
        "Deletes a firewall rule",
        &[ID],
    ),
    job(
        "createPortForwardingRule",
        network::create_port_forwarding_rule,
        "Creates a port forwarding rule",
        &[
            req("ipaddressid", "uuid", "the IP address id"),
            req("protocol", "string", "TCP or UDP"),
            req(
                "publicport",
                "integer",
                "the starting port of the public range",
            ),
            req(
                "privateport",
                "integer",
                "the starting port of the private range",
            ),
            req("virtualmachineid", "uuid", "the target VM"),
            opt("publicendport", "integer", "the ending public port"),
            opt("privateendport", "integer", "the ending private port"),
            opt(
                "openfirewall",
                "boolean",
                "add a firewall rule (default true)",
            ),
            opt("networkid", "uuid", "the network"),
        ],
    ),
    sync(
        "listPortForwardingRules",
        list_port_forwarding_rules,
        "Lists all port forwarding rules for an IP address.",
        &[
            opt("id", "uuid", "the rule ID"),
            opt("ipaddressid", "uuid", "the IP address id"),
            opt("networkid", "uuid", "the network"),
            LISTALL,
            PAGE,
            PAGESIZE,
        ],
    ),
    job(
        "deletePortForwardingRule",
        delete_port_forwarding_rule,
        "Deletes a port forwarding rule",
        &[ID],
    ),
    job(
        "createLoadBalancerRule",
        network::create_load_balancer_rule,
        "Creates a load balancer rule",
        &[
            req("name", "string", "name of the load balancer rule"),
            req("algorithm", "string", "roundrobin, leastconn or source"),
            req("publicport", "integer", "the public port"),
            req("privateport", "integer", "the private port"),
            opt("publicipid", "uuid", "the public IP id"),
            opt("protocol", "string", "tcp (default)"),
            opt("cidrlist", "list", "the source CIDRs"),
            opt(
                "openfirewall",
                "boolean",
                "add a firewall rule (default true)",
            ),
            opt("networkid", "uuid", "the network"),
            opt("description", "string", "the description"),
        ],
    ),
    sync(
        "listLoadBalancerRules",
        list_load_balancer_rules,
        "Lists load balancer rules.",
        &[
            opt("id", "uuid", "the rule ID"),
            opt("publicipid", "uuid", "the public IP id"),
            opt("name", "string", "the rule name"),
            opt("networkid", "uuid", "the network"),
            LISTALL,
            PAGE,
            PAGESIZE,
        ],
    ),
    job(
        "deleteLoadBalancerRule",
        delete_load_balancer_rule,
        "Deletes a load balancer rule.",
        &[ID],
    ),
    job(
        "assignToLoadBalancerRule",
        assign_to_load_balancer_rule,
        "Assigns virtual machine or a list of virtual machines to a load balancer rule.",
        &[
            ID,
            opt("virtualmachineids", "list", "the VMs"),
            opt("vmidipmap", "map", "VM ID and IP map"),
        ],
    ),
    job(
        "removeFromLoadBalancerRule",
        remove_from_load_balancer_rule,
        "Removes a virtual machine or a list of virtual machines from a load balancer rule.",
        &[
            ID,
            opt("virtualmachineids", "list", "the VMs"),
            opt("vmidipmap", "map", "VM ID and IP map"),
        ],
    ),
    // === tags, accounts, users, settings ===
    job(
        "createTags",
        identity::create_tags,
        "Creates resource tag(s)",
        &[
            req("resourceids", "list", "the resources"),
            req("resourcetype", "string", "the type of the resources"),
            req("tags", "map", "tags[i].key and tags[i].value"),
        ],
    ),
    job(
        "deleteTags",
        identity::delete_tags,
        "Deleting resource tag(s)",
        &[
            req("resourceids", "list", "the resources"),
            req("resourcetype", "string", "the type of the resources"),
            opt("tags", "map", "the keys to delete"),
        ],
    ),
    sync(
        "listTags",
        identity::list_tags,
        "List resource tag(s)",
        &[
            opt("resourceid", "string", "the resource"),
            opt("resourcetype", "string", "the resource type"),
            opt("key", "string", "the tag key"),
            opt("value", "string", "the tag value"),
            LISTALL,
            PAGE,
            PAGESIZE,
        ],
    ),
    sync(
        "listAccounts",
        identity::list_accounts,
        "Lists accounts and provides detailed account information for listed accounts",
        &[
            opt("id", "uuid", "list account by account ID"),
            opt("name", "string", "list account by account name"),
            DOMAINID,
            ISRECURSIVE,
            KEYWORD,
            LISTALL,
            PAGE,
            PAGESIZE,
        ],
    ),
    domain_admin(sync(
        "createDomain",
        tenancy::create_domain,
        "Creates a domain",
        &[
            req("name", "string", "creates domain with this name"),
            opt(
                "parentdomainid",
                "uuid",
                "assigns new domain a parent domain by domain ID of the parent",
            ),
        ],
    )),
    domain_admin(sync(
        "listDomains",
        tenancy::list_domains,
        "Lists domains and provides detailed information for listed domains",
        &[
            opt("id", "uuid", "List domain by domain ID."),
            opt("name", "string", "List domain by domain name."),
            KEYWORD,
            LISTALL,
            PAGE,
            PAGESIZE,
        ],
    )),
    domain_admin(sync(
        "listDomainChildren",
        tenancy::list_domain_children,
        "Lists all children domains belonging to a specified domain",
        &[
            opt("id", "uuid", "list children of particular domain"),
            opt("name", "string", "list children domains by name"),
            ISRECURSIVE,
            KEYWORD,
            PAGE,
            PAGESIZE,
        ],
    )),
    job(
        "createProject",
        tenancy::create_project,
        "Creates a project",
        &[
            req("name", "string", "name of the project"),
            req("displaytext", "string", "display text of the project"),
            ACCOUNT,
            DOMAINID,
        ],
    ),
    sync(
        "listProjects",
        tenancy::list_projects,
        "Lists projects and provides detailed information for listed projects",
        &[
            opt("id", "uuid", "list projects by project ID"),
            opt("name", "string", "list projects by name"),
            DOMAINID,
            KEYWORD,
            LISTALL,
            PAGE,
            PAGESIZE,
        ],
    ),
    job(
        "addAccountToProject",
        tenancy::add_account_to_project,
        "Adds account to a project",
        &[
            req(
                "projectid",
                "uuid",
                "ID of project project to add the account to",
            ),
            opt(
                "account",
                "string",
                "name of the account to be added to the project",
            ),
        ],
    ),
    sync(
        "listProjectAccounts",
        tenancy::list_project_accounts,
        "Lists project's accounts",
        &[
            req("projectid", "uuid", "ID of the project"),
            opt(
                "account",
                "string",
                "list accounts of the project by account name",
            ),
            PAGE,
            PAGESIZE,
        ],
    ),
    domain_admin(sync(
        "createAccount",
        identity::create_account,
        "Creates an account",
        &[
            req("email", "string", "email"),
            req("firstname", "string", "firstname"),
            req("lastname", "string", "lastname"),
            req("password", "string", "password"),
            req("username", "string", "unique username"),
            opt(
                "account",
                "string",
                "the account name (default: the username)",
            ),
            opt(
                "accounttype",
                "integer",
                "0 user, 1 root admin, 2 domain admin",
            ),
            opt("roleid", "uuid", "the role"),
            DOMAINID,
        ],
    )),
    admin(sync(
        "createRole",
        identity::create_role,
        "Creates a role",
        &[
            req("name", "string", "creates a role with this unique name"),
            req("type", "string", "the type of the role: Admin or User"),
        ],
    )),
    admin(sync(
        "createRolePermission",
        identity::create_role_permission,
        "Adds an API permission to a role",
        &[
            req("roleid", "uuid", "ID of the role"),
            req("rule", "string", "the API name or wildcard rule"),
            req("permission", "string", "the rule permission, allow or deny"),
        ],
    )),
    admin(sync(
        "listRolePermissions",
        identity::list_role_permissions,
        "Lists role permissions",
        &[opt("roleid", "uuid", "ID of the role")],
    )),
    admin(sync(
        "disableAccount",
        identity::disable_account,
        "Disables an account",
        &[
            ID,
            opt(
                "lock",
                "boolean",
                "if true, only lock the account; else disable it",
            ),
        ],
    )),
    admin(sync(
        "enableAccount",
        identity::enable_account,
        "Enables an account",
        &[ID],
    )),
    sync(
        "listUsers",
        identity::list_users,
        "Lists user accounts",
        &[
            opt("id", "uuid", "list user by ID"),
            opt("username", "string", "list user by the username"),
            opt("account", "string", "list users of the account"),
            opt("accounttype", "integer", "list users by account type"),
            opt("state", "string", "list users by state"),
            opt("domainid", "uuid", "the domain"),
            KEYWORD,
            LISTALL,
            PAGE,
            PAGESIZE,
        ],
    ),
    admin(sync(
        "createUser",
        identity::create_user,
        "Creates a user for an account that already exists",
        &[
            req("account", "string", "the account the user belongs to"),
            req("email", "string", "email"),
            req("firstname", "string", "firstname"),
            req("lastname", "string", "lastname"),
            req("password", "string", "password"),
            req("username", "string", "unique username"),
            DOMAINID,
        ],
    )),
    admin(sync(
        "getUser",
        identity::get_user,
        "Find user account by API key",
        &[req("userapikey", "string", "API key of the user")],
    )),
    sync(
        "getUserKeys",
        identity::get_user_keys,
        "This command allows the user to query the seceret and API keys for the account",
        &[ID],
    ),
    sync(
        "registerUserKeys",
        identity::register_user_keys,
        "This command allows a user to register for the developer API, returning a secret key and an API key. This request is made through the integration API port, so it is a privileged command and must be made on behalf of a user. It is up to the implementer just how the username and password are entered, and then how that translates to an integration API request. Both secret key and API key should be returned to the user",
        &[ID],
    ),
    admin(sync(
        "listConfigurations",
        identity::list_configurations,
        "Lists all configurations.",
        &[
            opt("name", "string", "lists configuration by name"),
            opt("category", "string", "lists configurations by category"),
            KEYWORD,
            PAGE,
            PAGESIZE,
        ],
    )),
    admin(sync(
        "updateConfiguration",
        identity::update_configuration,
        "Updates a configuration.",
        &[
            req("name", "string", "the name of the configuration"),
            opt("value", "string", "the value of the configuration"),
        ],
    )),
    // === capacity and limits ===
    admin(sync(
        "listCapacity",
        limits::list_capacity,
        "Lists all the system wide capacities.",
        &[
            opt("zoneid", "uuid", "lists capacity by the Zone ID"),
            opt(
                "type",
                "integer",
                "lists capacity by type (0 memory, 1 CPU, 4 public IPs, 90 CPU cores)",
            ),
            PAGE,
            PAGESIZE,
        ],
    )),
    sync(
        "listResourceLimits",
        limits::list_resource_limits,
        "Lists resource limits.",
        &[
            opt(
                "resourcetype",
                "integer",
                "0 user_vm, 1 public_ip, … 8 cpu, 9 memory",
            ),
            opt("resourcetypename", "string", "user_vm, public_ip, …"),
            ACCOUNT,
            DOMAINID,
            PAGE,
            PAGESIZE,
        ],
    ),
    admin(sync(
        "updateResourceLimit",
        limits::update_resource_limit,
        "Updates resource limits for an account or domain.",
        &[
            req("resourcetype", "integer", "the resource type number"),
            opt("max", "long", "the maximum; -1 for unlimited"),
            ACCOUNT,
            DOMAINID,
        ],
    )),
    // === jobs and discovery ===
    sync(
        "queryAsyncJobResult",
        identity::query_async_job_result,
        "Retrieves the current status of asynchronous job.",
        &[req("jobid", "uuid", "the ID of the asynchronous job")],
    ),
    sync(
        "listAsyncJobs",
        identity::list_async_jobs,
        "Lists all pending asynchronous jobs for the account.",
        &[LISTALL, PAGE, PAGESIZE],
    ),
    sync(
        "listApis",
        list_apis,
        "lists all available apis on the server, provided by the Api Discovery plugin",
        &[opt("name", "string", "API name")],
    ),
];

/// The command called `name` (exact, case-sensitive, as CloudStack matches command names).
pub(crate) fn find(name: &str) -> Option<&'static Command> {
    COMMANDS.iter().find(|c| c.name == name)
}

fn render(command: &Command) -> Value {
    let params: Vec<Value> = command
        .params
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "description": p.description,
                "type": p.kind,
                "required": p.required,
                "length": 255,
            })
        })
        .collect();
    json!({
        "name": command.name,
        "description": command.description,
        "isasync": command.is_async,
        "since": "4.0.0",
        "related": "",
        "params": params,
        "response": [],
    })
}

/// `listApis [name=…]`: what the caller may call, as the API discovery plugin lists it.
fn list_apis(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let visible = |c: &&Command| c.access.allows(ctx.caller);
    let items: Vec<Value> = match ctx.params.get("name") {
        Some(name) => {
            let command = find(name).filter(visible).ok_or_else(|| {
                ApiError::server(
                    530,
                    "Api Discovery plugin was unable to find an api by that name or process any apis",
                )
            })?;
            vec![render(command)]
        }
        None => COMMANDS.iter().filter(visible).map(render).collect(),
    };
    Ok(Outcome::Sync(list_response(ctx.params, "api", items)?))
}
