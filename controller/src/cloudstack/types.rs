//! Serde types for the CloudStack objects the controller reads (cks-reference §7.2, §7.3).
//!
//! They are lenient on purpose: unknown fields are ignored (every CloudStack release adds
//! some), fields CloudStack omits are `Option` or default, numbers are accepted as JSON numbers
//! or strings (CloudStack sends port-forwarding ports as strings, firewall ports as numbers),
//! and enums have a catch-all variant. Field names are CloudStack's lower-case JSON names;
//! where Rust forbids one (`type`) it is renamed.
//!
//! Each listable type implements [`ListResource`], naming its list command and the key of the
//! array in the list response, for [`CloudStackClient::list_all`](super::CloudStackClient::list_all).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::SecretKey;

/// A CloudStack object that a `list*` command returns.
pub trait ListResource: DeserializeOwned {
    /// The list command, e.g. `listZones`.
    const LIST_COMMAND: &'static str;
    /// The key of the array in the list response, e.g. `zone`.
    const LIST_KEY: &'static str;
}

macro_rules! list_resource {
    ($ty:ty, $command:literal, $key:literal) => {
        impl ListResource for $ty {
            const LIST_COMMAND: &'static str = $command;
            const LIST_KEY: &'static str = $key;
        }
    };
}

/// Deserializers that accept what different CloudStack versions send for the same field.
mod lenient {
    use super::*;

    fn number(value: &Value) -> Option<i64> {
        match value {
            Value::Number(n) => n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// A number or a numeric string; `null`, `""` or anything else is `None`.
    pub(super) fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        Ok(number(&Value::deserialize(d)?))
    }

    /// A number or a numeric string that fits `u64`.
    pub(super) fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Ok(number(&Value::deserialize(d)?).and_then(|n| u64::try_from(n).ok()))
    }

    /// A port: a number or a numeric string that fits `u16`.
    pub(super) fn opt_port<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
        Ok(number(&Value::deserialize(d)?).and_then(|n| u16::try_from(n).ok()))
    }

    /// A number or numeric string, 0 when absent or unreadable.
    pub(super) fn i64_or_zero<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        Ok(number(&Value::deserialize(d)?).unwrap_or(0))
    }

    /// `true`/`false` as JSON booleans or strings; anything else is `false`.
    pub(super) fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Bool(b) => b,
            Value::String(s) => s.eq_ignore_ascii_case("true"),
            _ => false,
        })
    }

    /// A string, or a number written as a string (ids in old APIs); `null` is `None`.
    pub(super) fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::String(s) => Some(s),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    }
}

/// An availability zone (`listZones`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Zone {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// `Advanced` or `Basic`.
    #[serde(default)]
    pub networktype: Option<String>,
    /// `Enabled` or `Disabled`.
    #[serde(default)]
    pub allocationstate: Option<String>,
    /// Whether the zone uses security groups (cks-reference §3.2 step 3).
    #[serde(default, deserialize_with = "lenient::bool")]
    pub securitygroupsenabled: bool,
}
list_resource!(Zone, "listZones", "zone");

/// A compute offering (`listServiceOfferings`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ServiceOffering {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Display text.
    #[serde(default)]
    pub displaytext: Option<String>,
    /// vCPUs; absent for custom offerings.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub cpunumber: Option<u64>,
    /// MHz per vCPU.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub cpuspeed: Option<u64>,
    /// Memory in MiB; absent for custom offerings.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub memory: Option<u64>,
    /// The caller chooses CPU/memory at deploy time (CKS refuses these offerings).
    #[serde(default, deserialize_with = "lenient::bool")]
    pub iscustomized: bool,
}
list_resource!(ServiceOffering, "listServiceOfferings", "serviceoffering");

/// A VM template (`listTemplates templatefilter=…`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Template {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Display text.
    #[serde(default)]
    pub displaytext: Option<String>,
    /// Downloaded and usable.
    #[serde(default, deserialize_with = "lenient::bool")]
    pub isready: bool,
    /// Download status text (`Download Complete`, an error, a percentage).
    #[serde(default)]
    pub status: Option<String>,
    /// Zone; absent for cross-zone templates.
    #[serde(default)]
    pub zoneid: Option<String>,
    /// Hypervisor.
    #[serde(default)]
    pub hypervisor: Option<String>,
    /// Size in bytes.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub size: Option<u64>,
}
list_resource!(Template, "listTemplates", "template");

/// A registered ISO (`listIsos`, `registerIso`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Iso {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Display text.
    #[serde(default)]
    pub displaytext: Option<String>,
    /// Downloaded and usable.
    #[serde(default, deserialize_with = "lenient::bool")]
    pub isready: bool,
    /// Download status text (`Successfully Installed`, an error, a percentage).
    #[serde(default)]
    pub status: Option<String>,
    /// Zone; absent for cross-zone ISOs.
    #[serde(default)]
    pub zoneid: Option<String>,
    /// Bootable flag.
    #[serde(default, deserialize_with = "lenient::bool")]
    pub bootable: bool,
    /// Checksum as registered (`{SHA-256}<hex>`).
    #[serde(default)]
    pub checksum: Option<String>,
    /// Size in bytes once downloaded.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub size: Option<u64>,
    /// Owner account name.
    #[serde(default)]
    pub account: Option<String>,
    /// Owner domain id.
    #[serde(default)]
    pub domainid: Option<String>,
}
list_resource!(Iso, "listIsos", "iso");

/// A VM's lifecycle state, as CloudStack names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum VmState {
    /// Being started.
    Starting,
    /// Running.
    Running,
    /// Being stopped.
    Stopping,
    /// Stopped; disks kept.
    Stopped,
    /// Destroyed, not yet expunged (recoverable).
    Destroyed,
    /// Being expunged.
    Expunging,
    /// Migrating between hosts.
    Migrating,
    /// Deploy or start failed.
    Error,
    /// Any other state, including CloudStack's own `Unknown`.
    #[serde(other)]
    Unknown,
}

/// A VM's NIC.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Nic {
    /// UUID.
    #[serde(default)]
    pub id: Option<String>,
    /// Network id.
    #[serde(default)]
    pub networkid: Option<String>,
    /// Network name.
    #[serde(default)]
    pub networkname: Option<String>,
    /// Guest IPv4 address.
    #[serde(default)]
    pub ipaddress: Option<String>,
    /// The VM's default NIC.
    #[serde(default, deserialize_with = "lenient::bool")]
    pub isdefault: bool,
    /// MAC address.
    #[serde(default)]
    pub macaddress: Option<String>,
}

/// A resource tag (`listTags`, and the `tags` array of tagged objects).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Tag {
    /// Key.
    pub key: String,
    /// Value.
    #[serde(default)]
    pub value: String,
    /// Tagged resource's id (absent inside an object's own `tags`).
    #[serde(default)]
    pub resourceid: Option<String>,
    /// Tagged resource's type, e.g. `UserVm`.
    #[serde(default)]
    pub resourcetype: Option<String>,
    /// Owner account name.
    #[serde(default)]
    pub account: Option<String>,
    /// Owner domain id.
    #[serde(default)]
    pub domainid: Option<String>,
}
list_resource!(Tag, "listTags", "tag");

/// The value of tag `key` in a `tags` array.
pub fn tag_value<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter().find(|t| t.key == key).map(|t| t.value.as_str())
}

/// A user VM (`listVirtualMachines`, and the `virtualmachine` of VM job results).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VirtualMachine {
    /// UUID.
    pub id: String,
    /// Host name.
    pub name: String,
    /// Display name.
    #[serde(default)]
    pub displayname: Option<String>,
    /// Lifecycle state.
    pub state: VmState,
    /// Zone id.
    #[serde(default)]
    pub zoneid: Option<String>,
    /// Service offering id.
    #[serde(default)]
    pub serviceofferingid: Option<String>,
    /// Template id.
    #[serde(default)]
    pub templateid: Option<String>,
    /// Attached ISO id.
    #[serde(default)]
    pub isoid: Option<String>,
    /// Owner account name.
    #[serde(default)]
    pub account: Option<String>,
    /// Owner domain id.
    #[serde(default)]
    pub domainid: Option<String>,
    /// Owner domain name.
    #[serde(default)]
    pub domain: Option<String>,
    /// NICs.
    #[serde(default)]
    pub nic: Vec<Nic>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// SSH key pair names, comma-separated.
    #[serde(default)]
    pub keypairs: Option<String>,
    /// Creation time.
    #[serde(default)]
    pub created: Option<String>,
}
list_resource!(VirtualMachine, "listVirtualMachines", "virtualmachine");

// === impl VirtualMachine ===

impl VirtualMachine {
    /// The default NIC (or the first one when none is marked default).
    pub fn default_nic(&self) -> Option<&Nic> {
        self.nic
            .iter()
            .find(|n| n.isdefault)
            .or_else(|| self.nic.first())
    }

    /// The guest IP of the default NIC.
    pub fn ip_address(&self) -> Option<&str> {
        self.default_nic().and_then(|n| n.ipaddress.as_deref())
    }

    /// The value of tag `key`.
    pub fn tag(&self, key: &str) -> Option<&str> {
        tag_value(&self.tags, key)
    }
}

/// How a guest network gets its addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum GuestIpType {
    /// Behind the virtual router's source NAT; the controller adds firewall/LB rules.
    Isolated,
    /// Addresses directly routable; no rules.
    Shared,
    /// Layer 2 only.
    L2,
    /// Anything else.
    #[serde(other)]
    Other,
}

/// A guest network (`listNetworks`, `createNetwork`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Network {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Display text.
    #[serde(default)]
    pub displaytext: Option<String>,
    /// Guest CIDR.
    #[serde(default)]
    pub cidr: Option<String>,
    /// `Isolated`, `Shared` or `L2`.
    #[serde(rename = "type")]
    pub network_type: GuestIpType,
    /// `Allocated`, `Implemented`, `Setup`, `Destroy`…
    #[serde(default)]
    pub state: Option<String>,
    /// Network offering id.
    #[serde(default)]
    pub networkofferingid: Option<String>,
    /// Zone id.
    #[serde(default)]
    pub zoneid: Option<String>,
    /// VPC id for a VPC tier.
    #[serde(default)]
    pub vpcid: Option<String>,
    /// Owner account name (absent for a project's network).
    #[serde(default)]
    pub account: Option<String>,
    /// Owner domain id.
    #[serde(default)]
    pub domainid: Option<String>,
    /// The owning project, for a project's network.
    #[serde(default)]
    pub projectid: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<Tag>,
}
list_resource!(Network, "listNetworks", "network");

/// A service of a network offering and its providers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NetworkService {
    /// `SourceNat`, `Firewall`, `Lb`, `PortForwarding`, `UserData`…
    pub name: String,
}

/// A network offering (`listNetworkOfferings`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NetworkOffering {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Display text.
    #[serde(default)]
    pub displaytext: Option<String>,
    /// `Enabled` or `Disabled`.
    #[serde(default)]
    pub state: Option<String>,
    /// `Isolated`, `Shared` or `L2`.
    #[serde(default)]
    pub guestiptype: Option<String>,
    /// Services (CloudStack's shape).
    #[serde(default)]
    pub service: Vec<NetworkService>,
    /// Services as one comma-separated string (the simulator's shape).
    #[serde(default)]
    pub supportedservices: Option<String>,
}
list_resource!(NetworkOffering, "listNetworkOfferings", "networkoffering");

// === impl NetworkOffering ===

impl NetworkOffering {
    /// The service names, from whichever shape the server sent.
    pub fn services(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.service.iter().map(|s| s.name.as_str()).collect();
        if let Some(list) = &self.supportedservices {
            for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names
    }

    /// True when the offering provides `service` (case-insensitive).
    pub fn has_service(&self, service: &str) -> bool {
        self.services()
            .iter()
            .any(|s| s.eq_ignore_ascii_case(service))
    }
}

/// A public IP address (`listPublicIpAddresses`, `associateIpAddress`'s `ipaddress`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PublicIpAddress {
    /// UUID.
    pub id: String,
    /// The address.
    pub ipaddress: String,
    /// The network's source NAT address.
    #[serde(default, deserialize_with = "lenient::bool")]
    pub issourcenat: bool,
    /// Static NAT enabled.
    #[serde(default, deserialize_with = "lenient::bool")]
    pub isstaticnat: bool,
    /// The guest network it is associated with.
    #[serde(default)]
    pub associatednetworkid: Option<String>,
    /// VPC id.
    #[serde(default)]
    pub vpcid: Option<String>,
    /// Zone id.
    #[serde(default)]
    pub zoneid: Option<String>,
    /// `Allocated`, `Allocating`, `Releasing`, `Free`.
    #[serde(default)]
    pub state: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<Tag>,
}
list_resource!(PublicIpAddress, "listPublicIpAddresses", "publicipaddress");

/// An ingress firewall rule (`listFirewallRules`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FirewallRule {
    /// UUID.
    pub id: String,
    /// `tcp`, `udp`, `icmp` or `all`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// First port.
    #[serde(default, deserialize_with = "lenient::opt_port")]
    pub startport: Option<u16>,
    /// Last port.
    #[serde(default, deserialize_with = "lenient::opt_port")]
    pub endport: Option<u16>,
    /// Public IP id.
    #[serde(default)]
    pub ipaddressid: Option<String>,
    /// Public IP.
    #[serde(default)]
    pub ipaddress: Option<String>,
    /// Source CIDRs, comma-separated.
    #[serde(default)]
    pub cidrlist: Option<String>,
    /// `Active`, `Add`, `Revoke`.
    #[serde(default)]
    pub state: Option<String>,
    /// Guest network id.
    #[serde(default)]
    pub networkid: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<Tag>,
}
list_resource!(FirewallRule, "listFirewallRules", "firewallrule");

/// A port-forwarding rule (`listPortForwardingRules`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PortForwardingRule {
    /// UUID.
    pub id: String,
    /// `tcp` or `udp`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// First public port.
    #[serde(default, deserialize_with = "lenient::opt_port")]
    pub publicport: Option<u16>,
    /// Last public port.
    #[serde(default, deserialize_with = "lenient::opt_port")]
    pub publicendport: Option<u16>,
    /// First private port.
    #[serde(default, deserialize_with = "lenient::opt_port")]
    pub privateport: Option<u16>,
    /// Last private port.
    #[serde(default, deserialize_with = "lenient::opt_port")]
    pub privateendport: Option<u16>,
    /// Public IP id.
    #[serde(default)]
    pub ipaddressid: Option<String>,
    /// Public IP.
    #[serde(default)]
    pub ipaddress: Option<String>,
    /// Target VM id.
    #[serde(default)]
    pub virtualmachineid: Option<String>,
    /// Target VM's guest IP.
    #[serde(default)]
    pub vmguestip: Option<String>,
    /// Guest network id.
    #[serde(default)]
    pub networkid: Option<String>,
    /// `Active`, `Add`, `Revoke`.
    #[serde(default)]
    pub state: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<Tag>,
}
list_resource!(
    PortForwardingRule,
    "listPortForwardingRules",
    "portforwardingrule"
);

/// A load-balancer rule (`listLoadBalancerRules`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LoadBalancerRule {
    /// UUID.
    pub id: String,
    /// Name (`api-lb` for the cluster API).
    #[serde(default)]
    pub name: Option<String>,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Public IP id.
    #[serde(default)]
    pub publicipid: Option<String>,
    /// Public IP.
    #[serde(default)]
    pub publicip: Option<String>,
    /// Public port.
    #[serde(default, deserialize_with = "lenient::opt_port")]
    pub publicport: Option<u16>,
    /// Private port.
    #[serde(default, deserialize_with = "lenient::opt_port")]
    pub privateport: Option<u16>,
    /// `roundrobin`, `leastconn`, `source`.
    #[serde(default)]
    pub algorithm: Option<String>,
    /// `tcp`, `udp`…
    #[serde(default)]
    pub protocol: Option<String>,
    /// `Active`, `Add`, `Revoke`.
    #[serde(default)]
    pub state: Option<String>,
    /// Guest network id.
    #[serde(default)]
    pub networkid: Option<String>,
    /// Zone id.
    #[serde(default)]
    pub zoneid: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<Tag>,
}
list_resource!(
    LoadBalancerRule,
    "listLoadBalancerRules",
    "loadbalancerrule"
);

/// An SSH key pair (`listSSHKeyPairs`, `createSSHKeyPair`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SshKeyPair {
    /// Name (the identifier).
    pub name: String,
    /// Fingerprint.
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// The private key; only `createSSHKeyPair` returns it. Redacted in `Debug`.
    #[serde(default)]
    pub privatekey: Option<SecretKey>,
    /// Owner account name.
    #[serde(default)]
    pub account: Option<String>,
    /// Owner domain id.
    #[serde(default)]
    pub domainid: Option<String>,
}
list_resource!(SshKeyPair, "listSSHKeyPairs", "sshkeypair");

/// A user (`getUser`, `listUsers`, the `user` array of accounts).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct User {
    /// UUID.
    pub id: String,
    /// Login name.
    pub username: String,
    /// First name.
    #[serde(default)]
    pub firstname: Option<String>,
    /// Last name.
    #[serde(default)]
    pub lastname: Option<String>,
    /// E-mail.
    #[serde(default)]
    pub email: Option<String>,
    /// Account id.
    #[serde(default)]
    pub accountid: Option<String>,
    /// Account name.
    #[serde(default)]
    pub account: Option<String>,
    /// 0 user, 1 root admin, 2 domain admin, 3 resource admin (older servers' only role hint).
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    pub accounttype: Option<i64>,
    /// `Admin`, `DomainAdmin`, `ResourceAdmin` or `User`.
    #[serde(default)]
    pub roletype: Option<String>,
    /// The role's id (dynamic roles).
    #[serde(default)]
    pub roleid: Option<String>,
    /// Domain id.
    #[serde(default)]
    pub domainid: Option<String>,
    /// Domain name.
    #[serde(default)]
    pub domain: Option<String>,
    /// `enabled`, `disabled`, `locked`.
    #[serde(default)]
    pub state: Option<String>,
    /// The user's API key (not secret; the secret key comes only from `getUserKeys`).
    #[serde(default)]
    pub apikey: Option<String>,
}
list_resource!(User, "listUsers", "user");

/// An account (`listAccounts`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Account {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// 0 user, 1 root admin, 2 domain admin, 3 resource admin.
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    pub accounttype: Option<i64>,
    /// `Admin`, `DomainAdmin`, `ResourceAdmin` or `User`.
    #[serde(default)]
    pub roletype: Option<String>,
    /// Role name.
    #[serde(default)]
    pub rolename: Option<String>,
    /// The role's id (dynamic roles).
    #[serde(default)]
    pub roleid: Option<String>,
    /// Domain id.
    #[serde(default)]
    pub domainid: Option<String>,
    /// Domain name.
    #[serde(default)]
    pub domain: Option<String>,
    /// `enabled`, `disabled`, `locked`.
    #[serde(default)]
    pub state: Option<String>,
    /// The account's users.
    #[serde(default)]
    pub user: Vec<User>,
}
list_resource!(Account, "listAccounts", "account");

/// A project (`listProjects`): its resources are owned by its own account, and its member
/// accounts manage them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Project {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// The project's own account, which owns its resources.
    #[serde(default)]
    pub projectaccountname: Option<String>,
    /// Domain id.
    #[serde(default)]
    pub domainid: Option<String>,
    /// Domain name.
    #[serde(default)]
    pub domain: Option<String>,
}
list_resource!(Project, "listProjects", "project");

/// A domain (`listDomainChildren`, `listDomains`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Domain {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// `ROOT/eng/web`.
    #[serde(default)]
    pub path: Option<String>,
}
list_resource!(Domain, "listDomainChildren", "domain");

/// A user's key pair (`getUserKeys` → `userkeys`). The secret is redacted in `Debug`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UserKeys {
    /// API key.
    #[serde(default)]
    pub apikey: Option<String>,
    /// Secret key.
    #[serde(default)]
    pub secretkey: Option<SecretKey>,
}

/// A global (or scoped) setting (`listConfigurations`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Configuration {
    /// Name, e.g. `cloud.kubernetes.service.enabled`.
    pub name: String,
    /// Value; CloudStack sends `null` for unset values.
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub value: Option<String>,
    /// Category.
    #[serde(default)]
    pub category: Option<String>,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Scope (`zone`, `account`…) for scoped settings.
    #[serde(default)]
    pub scope: Option<String>,
}
list_resource!(Configuration, "listConfigurations", "configuration");

/// The state of an async job (`jobstatus`, the Java enum's ordinal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// 0: still running.
    Pending,
    /// 1: succeeded; `jobresult` holds the command's response object.
    Succeeded,
    /// 2: failed; `jobresult` holds `errorcode`/`errortext`.
    Failed,
    /// 3: cancelled.
    Cancelled,
    /// A value this client does not know.
    Unknown(i64),
}

// === impl JobStatus ===

impl JobStatus {
    /// Maps `jobstatus`.
    pub fn from_code(code: i64) -> Self {
        match code {
            0 => Self::Pending,
            1 => Self::Succeeded,
            2 => Self::Failed,
            3 => Self::Cancelled,
            other => Self::Unknown(other),
        }
    }
}

/// `queryAsyncJobResult` (and `listAsyncJobs` items).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AsyncJobResult {
    /// Job id.
    pub jobid: String,
    /// 0 pending, 1 succeeded, 2 failed, 3 cancelled; see [`AsyncJobResult::status`].
    #[serde(default, deserialize_with = "lenient::i64_or_zero")]
    pub jobstatus: i64,
    /// Progress indicator.
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    pub jobprocstatus: Option<i64>,
    /// 0, or the error code of a failed job.
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    pub jobresultcode: Option<i64>,
    /// `object` or `text`.
    #[serde(default)]
    pub jobresulttype: Option<String>,
    /// The result object once the job is done.
    #[serde(default)]
    pub jobresult: Option<Value>,
    /// The command's Java class.
    #[serde(default)]
    pub cmd: Option<String>,
    /// Submission time.
    #[serde(default)]
    pub created: Option<String>,
    /// Completion time.
    #[serde(default)]
    pub completed: Option<String>,
    /// Type of the entity the job acts on.
    #[serde(default)]
    pub jobinstancetype: Option<String>,
    /// Id of the entity the job acts on.
    #[serde(default)]
    pub jobinstanceid: Option<String>,
    /// Submitting account id.
    #[serde(default)]
    pub accountid: Option<String>,
    /// Submitting user id.
    #[serde(default)]
    pub userid: Option<String>,
}
list_resource!(AsyncJobResult, "listAsyncJobs", "asyncjobs");

// === impl AsyncJobResult ===

impl AsyncJobResult {
    /// The job's status.
    pub fn status(&self) -> JobStatus {
        JobStatus::from_code(self.jobstatus)
    }
}

/// The body of commands that answer only `success` (e.g. `deleteNetwork`'s job result).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SuccessResponse {
    /// Whether the command succeeded (CloudStack sends a boolean or `"true"`).
    #[serde(default, deserialize_with = "lenient::bool")]
    pub success: bool,
    /// Optional message.
    #[serde(default)]
    pub displaytext: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn vm_reads_simulator_shape_and_ignores_unknown_fields() {
        let vm: VirtualMachine = serde_json::from_value(json!({
            "id": "vm-1", "name": "c1-control-1", "displayname": "c1-control-1",
            "state": "Running", "zoneid": "z", "serviceofferingid": "o", "templateid": "t",
            "hypervisor": "Simulator", "haenable": false, "account": "user", "domainid": "d",
            "nic": [
                {"id": "n2", "networkid": "net2", "ipaddress": "10.0.0.9", "isdefault": false},
                {"id": "n1", "networkid": "net1", "ipaddress": "10.1.1.2", "isdefault": true}
            ],
            "tags": [{"key": "cks-cluster", "value": "c1"}],
            "somethingnew": {"nested": 1}
        }))
        .unwrap();
        assert_eq!(vm.state, VmState::Running);
        assert_eq!(vm.ip_address(), Some("10.1.1.2"));
        assert_eq!(vm.tag("cks-cluster"), Some("c1"));
        assert_eq!(vm.isoid, None);
    }

    #[test]
    fn unknown_vm_state_is_unknown_not_an_error() {
        let vm: VirtualMachine =
            serde_json::from_value(json!({"id": "v", "name": "n", "state": "Shutdowned"})).unwrap();
        assert_eq!(vm.state, VmState::Unknown);
    }

    #[test]
    fn ports_are_read_from_numbers_and_strings() {
        let pf: PortForwardingRule = serde_json::from_value(json!({
            "id": "r", "publicport": "2222", "privateport": "22", "publicendport": ""
        }))
        .unwrap();
        assert_eq!(pf.publicport, Some(2222));
        assert_eq!(pf.privateport, Some(22));
        assert_eq!(pf.publicendport, None);
        let fw: FirewallRule =
            serde_json::from_value(json!({"id": "f", "startport": 6443, "endport": 6443})).unwrap();
        assert_eq!((fw.startport, fw.endport), (Some(6443), Some(6443)));
    }

    #[test]
    fn network_type_and_offering_services_in_both_shapes() {
        let net: Network =
            serde_json::from_value(json!({"id": "n", "name": "c1-network", "type": "Isolated"}))
                .unwrap();
        assert_eq!(net.network_type, GuestIpType::Isolated);
        let odd: Network =
            serde_json::from_value(json!({"id": "n", "name": "x", "type": "Something"})).unwrap();
        assert_eq!(odd.network_type, GuestIpType::Other);
        let sim: NetworkOffering = serde_json::from_value(json!({
            "id": "o", "name": "k8s", "supportedservices": "Dhcp,SourceNat,Lb"
        }))
        .unwrap();
        assert!(sim.has_service("sourcenat"));
        let cs: NetworkOffering = serde_json::from_value(json!({
            "id": "o", "name": "k8s", "service": [{"name": "Firewall", "provider": [{"name": "VirtualRouter"}]}]
        }))
        .unwrap();
        assert_eq!(cs.services(), vec!["Firewall"]);
    }

    #[test]
    fn offering_booleans_and_numbers_are_lenient() {
        let o: ServiceOffering = serde_json::from_value(json!({
            "id": "o", "name": "Custom", "iscustomized": "true", "cpunumber": null
        }))
        .unwrap();
        assert!(o.iscustomized);
        assert_eq!(o.cpunumber, None);
    }

    #[test]
    fn user_keys_secret_is_redacted_in_debug() {
        let keys: UserKeys =
            serde_json::from_value(json!({"apikey": "AK", "secretkey": "TOP-SECRET"})).unwrap();
        assert_eq!(
            keys.secretkey.as_ref().map(SecretKey::expose_secret),
            Some("TOP-SECRET")
        );
        assert!(!format!("{keys:?}").contains("TOP-SECRET"));
    }

    #[test]
    fn job_status_maps_ordinals() {
        let job: AsyncJobResult =
            serde_json::from_value(json!({"jobid": "j", "jobstatus": 2, "jobresultcode": 530}))
                .unwrap();
        assert_eq!(job.status(), JobStatus::Failed);
        let pending: AsyncJobResult = serde_json::from_value(json!({"jobid": "j"})).unwrap();
        assert_eq!(pending.status(), JobStatus::Pending);
        assert_eq!(JobStatus::from_code(7), JobStatus::Unknown(7));
    }

    #[test]
    fn configuration_value_may_be_null_or_a_number() {
        let c: Configuration = serde_json::from_value(json!({"name": "a", "value": null})).unwrap();
        assert_eq!(c.value, None);
        let n: Configuration = serde_json::from_value(json!({"name": "b", "value": 500})).unwrap();
        assert_eq!(n.value.as_deref(), Some("500"));
    }
}

/// One rule of a role (`listRolePermissions`), in the order the rules apply.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RolePermission {
    /// An API name, or a pattern where `*` stands for any run of letters and digits.
    pub rule: String,
    /// `allow` or `deny`.
    pub permission: String,
}
list_resource!(RolePermission, "listRolePermissions", "rolepermission");
