//! The simulator's durable state: every CloudStack entity it knows, serialised as one JSON
//! document (`state.json` in the state directory).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

fn yes() -> bool {
    true
}

/// A virtual machine's lifecycle state, named as CloudStack names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// A start job is running; the node is being brought up.
    Starting,
    /// The node runs.
    Running,
    /// A stop job is running.
    Stopping,
    /// Allocated, not running; its disk is kept.
    Stopped,
    /// Destroyed but not expunged; can still be listed.
    Destroyed,
    /// The deploy failed.
    Error,
}

// === impl VmState ===

impl VmState {
    /// The name CloudStack reports in `state`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "Starting",
            Self::Running => "Running",
            Self::Stopping => "Stopping",
            Self::Stopped => "Stopped",
            Self::Destroyed => "Destroyed",
            Self::Error => "Error",
        }
    }

    /// True while the VM holds compute capacity.
    pub fn uses_capacity(self) -> bool {
        matches!(self, Self::Starting | Self::Running | Self::Stopping)
    }
}

/// A domain: `ROOT` (in [`Db::domain`]) or one of its descendants (in [`Db::subdomains`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Domain {
    /// UUID.
    pub id: String,
    /// `ROOT`, or the subdomain's name.
    pub name: String,
    /// The parent domain (`None` for ROOT).
    #[serde(default)]
    pub parent_id: Option<String>,
}

/// A project: resources owned by its own (project) account, managed by its member accounts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Project {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Display text.
    pub display_text: String,
    /// The domain it lives in.
    pub domain_id: String,
    /// The project account that owns its resources (`Account::project_id` points back).
    pub account_id: String,
    /// Member accounts, the first being the project's admin (owner).
    pub members: Vec<String>,
    /// Creation time.
    pub created: String,
}

/// An account; `admin` accounts are root admins.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Account {
    /// UUID.
    pub id: String,
    /// Account name.
    pub name: String,
    /// True for a root admin (accounttype 1), false otherwise.
    pub admin: bool,
    /// True for a domain admin (accounttype 2): manages every account of its domain's tree.
    #[serde(default)]
    pub domain_admin: bool,
    /// The account's domain (`None`: ROOT).
    #[serde(default)]
    pub domain_id: Option<String>,
    /// Set on a project's own account (accounttype 5), which owns the project's resources.
    #[serde(default)]
    pub project_id: Option<String>,
    /// The account's role (`None`: the built-in one for its type).
    #[serde(default)]
    pub role_id: Option<String>,
    /// `enabled`, `disabled` or `locked`.
    #[serde(default = "enabled")]
    pub state: String,
}

fn enabled() -> String {
    "enabled".into()
}

// === impl Account ===

impl Account {
    /// An enabled account of ROOT with the built-in role of its type.
    pub fn new(name: &str, admin: bool) -> Self {
        Account {
            id: crate::store::new_id(),
            name: name.into(),
            admin,
            domain_admin: false,
            domain_id: None,
            project_id: None,
            role_id: None,
            state: enabled(),
        }
    }
}

/// A role (CloudStack's dynamic roles): a type and ordered permission rules.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Role {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// `Admin`, `DomainAdmin`, `ResourceAdmin` or `User`.
    pub role_type: String,
}

/// One rule of a role: an API name or a wildcard pattern, allowed or denied. A role's rules
/// apply in the order they were created.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolePermission {
    /// UUID.
    pub id: String,
    /// The role.
    pub role_id: String,
    /// `createKubernetesCluster`, `list*`, `*`.
    pub rule: String,
    /// `allow` or `deny`.
    pub permission: String,
}

/// A user of an account, with its API keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    /// UUID.
    pub id: String,
    /// Login name.
    pub username: String,
    /// Owning account's id.
    pub account_id: String,
    /// API key; empty until `registerUserKeys` gives the user keys.
    pub api_key: String,
    /// Secret key; empty with the API key.
    pub secret_key: String,
    /// Creation time.
    pub created: String,
    /// First name (seeded users: the user name).
    #[serde(default)]
    pub firstname: Option<String>,
    /// Last name.
    #[serde(default)]
    pub lastname: Option<String>,
    /// E-mail address.
    #[serde(default)]
    pub email: Option<String>,
}

/// An availability zone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Zone {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// The public IP range handed out by `associateIpAddress`.
    pub public_cidr: String,
    /// CPU cores available to running VMs.
    pub cpu_capacity: u64,
    /// Memory (MiB) available to running VMs.
    pub memory_capacity: u64,
}

/// A compute offering.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceOffering {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Display text.
    pub displaytext: String,
    /// vCPUs.
    pub cpunumber: u64,
    /// MHz per vCPU.
    pub cpuspeed: u64,
    /// Memory in MiB.
    pub memory: u64,
    /// Whether VMs of this offering may be scaled while running (`dynamicscalingenabled`).
    #[serde(default = "yes")]
    pub dynamic_scaling: bool,
}

/// A VM template (always Ready in the simulator).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Template {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Display text.
    pub displaytext: String,
    /// Zone id.
    pub zone_id: String,
    /// Size in bytes.
    pub size: u64,
}

/// Download state of a registered ISO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IsoStatus {
    /// The download runs.
    Downloading,
    /// Downloaded and checksum verified.
    Ready,
    /// The download or the checksum check failed; the reason is kept.
    Failed(String),
}

/// A registered ISO.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Iso {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Display text.
    pub displaytext: String,
    /// Source URL.
    pub url: String,
    /// Checksum as given (`{SHA-256}hex` or MD5 hex).
    pub checksum: Option<String>,
    /// Zone id, `None` for all zones (`zoneid=-1`).
    pub zone_id: Option<String>,
    /// Visible to every account.
    pub public: bool,
    /// Bootable flag.
    pub bootable: bool,
    /// Owner account id.
    pub account_id: String,
    /// Download state.
    pub status: IsoStatus,
    /// Size in bytes once downloaded.
    pub size: Option<u64>,
    /// Where the downloaded file lives (only when the simulator has a state directory).
    pub path: Option<String>,
    /// Creation time.
    pub created: String,
}

/// A network offering.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkOffering {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Display text.
    pub displaytext: String,
    /// `Isolated` or `Shared`.
    pub guestiptype: String,
}

/// A guest network.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Network {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Display text.
    pub displaytext: String,
    /// Owner account id.
    pub account_id: String,
    /// Zone id.
    pub zone_id: String,
    /// Offering id.
    pub offering_id: String,
    /// `Isolated` or `Shared`.
    pub guest_type: String,
    /// Guest CIDR.
    pub cidr: String,
    /// The gateway, when an admin gave one (shared networks); else the CIDR's first address.
    #[serde(default)]
    pub gateway: Option<String>,
    /// The addresses guests get (`startip`..`endip` of a shared network); else the whole CIDR.
    #[serde(default)]
    pub ip_range: Option<IpRange>,
    /// The VLAN of a shared network (`vlan://<id>`), as given.
    #[serde(default)]
    pub vlan: Option<String>,
    /// A shared network for every account of the domain (`acltype=Domain`); otherwise only its
    /// owner may use it.
    #[serde(default)]
    pub domain_wide: bool,
    /// `Allocated` until the first VM is deployed, then `Implemented`.
    pub state: String,
    /// Creation time.
    pub created: String,
}

/// The guest addresses of a shared network, both ends included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpRange {
    /// `startip`.
    pub start: String,
    /// `endip`.
    pub end: String,
}

/// A VM's NIC on a guest network.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Nic {
    /// UUID.
    pub id: String,
    /// Network id.
    pub network_id: String,
    /// Guest IP address.
    pub ip: String,
    /// MAC address.
    pub mac: String,
}

/// A user VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vm {
    /// UUID.
    pub id: String,
    /// Host name.
    pub name: String,
    /// Display name.
    pub displayname: String,
    /// Owner account id.
    pub account_id: String,
    /// Zone id.
    pub zone_id: String,
    /// Service offering id.
    pub offering_id: String,
    /// Template id.
    pub template_id: String,
    /// Lifecycle state.
    pub state: VmState,
    /// Base64 userdata as given.
    pub userdata: Option<String>,
    /// SSH key pair names.
    pub keypairs: Vec<String>,
    /// The key pairs' public keys as they were at deploy (CloudStack keeps them with the VM, so
    /// deleting a pair later does not change the VM).
    #[serde(default)]
    pub ssh_public_keys: Vec<String>,
    /// Whether the VM may be scaled while running (`isdynamicallyscalable`).
    #[serde(default = "yes")]
    pub dynamically_scalable: bool,
    /// `details[i].key=value` given at deploy or by `updateVirtualMachine`.
    #[serde(default)]
    pub details: BTreeMap<String, String>,
    /// An injected fault: the VM runs in the API but its node never boots (see
    /// `faults::NeverBoot`); decided at each start.
    #[serde(default)]
    pub never_boots: bool,
    /// Root disk size in GiB, when given.
    pub rootdisksize: Option<u64>,
    /// Attached ISO id.
    pub iso_id: Option<String>,
    /// NICs, the first is the default one.
    pub nics: Vec<Nic>,
    /// Creation time.
    pub created: String,
    /// How the node behind the VM is networked, as its runner reported at the last start
    /// (`netns` or `loopback-only`); rebuilt at every start, so not persisted.
    #[serde(skip)]
    pub node_network: Option<String>,
}

/// A public IP address.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublicIp {
    /// UUID.
    pub id: String,
    /// The address.
    pub ip: String,
    /// Owner account id.
    pub account_id: String,
    /// Zone id.
    pub zone_id: String,
    /// Associated guest network.
    pub network_id: Option<String>,
    /// The network's source NAT address.
    pub source_nat: bool,
    /// Allocation time.
    pub allocated: String,
}

/// The kind of a network rule on a public IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuleKind {
    /// Ingress firewall rule.
    Firewall,
    /// Port forwarding to one VM.
    PortForwarding,
    /// Load balancing over assigned VMs.
    LoadBalancer,
}

/// A firewall, port-forwarding or load-balancer rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rule {
    /// UUID.
    pub id: String,
    /// What the rule is.
    pub kind: RuleKind,
    /// Public IP id.
    pub ip_id: String,
    /// Owner account id.
    pub account_id: String,
    /// `tcp`, `udp`, `icmp` or `all`.
    pub protocol: String,
    /// First public port.
    pub start_port: Option<u16>,
    /// Last public port.
    pub end_port: Option<u16>,
    /// First private port (port forwarding and LB).
    pub private_start: Option<u16>,
    /// Last private port.
    pub private_end: Option<u16>,
    /// Source CIDRs.
    pub cidrs: String,
    /// Target VM (port forwarding).
    pub vm_id: Option<String>,
    /// Members (load balancer).
    pub vm_ids: Vec<String>,
    /// Name (load balancer).
    pub name: Option<String>,
    /// Algorithm (load balancer).
    pub algorithm: Option<String>,
    /// Guest network.
    pub network_id: Option<String>,
}

/// A resource tag.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tag {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
    /// Tagged resource's id.
    pub resource_id: String,
    /// Tagged resource's type, e.g. `UserVm`.
    pub resource_type: String,
    /// Owner account id.
    pub account_id: String,
}

/// What finishing an async job does to the world, beyond recording its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Completion {
    /// The result was decided at submission.
    Fixed,
    /// Start the VM's node (deploy with `startvm=true`, `startVirtualMachine`).
    StartVm(String),
    /// Stop the VM's node.
    StopVm(String),
    /// Restart the VM's node.
    RebootVm(String),
}

/// An async job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// UUID.
    pub id: String,
    /// The API command's Java class name.
    pub cmd: String,
    /// Submitting account.
    pub account_id: String,
    /// Submitting user.
    pub user_id: String,
    /// 0 pending, 1 succeeded, 2 failed.
    pub status: u8,
    /// 0 or the error code.
    pub result_code: u16,
    /// The result object (`jobresult`), set when done; or the planned result while pending.
    pub result: Value,
    /// An error the job is planned to end with (fault injection).
    pub planned_error: Option<(u16, String)>,
    /// Submission time.
    pub created: String,
    /// Completion time.
    pub completed: Option<String>,
    /// `jobinstancetype`.
    pub instance_type: Option<String>,
    /// `jobinstanceid`.
    pub instance_id: Option<String>,
    /// The side effect on completion.
    pub completion: Completion,
}

/// An SSH key pair of an account (only the public half is kept).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SshKeyPair {
    /// UUID.
    pub id: String,
    /// Name, unique per account.
    pub name: String,
    /// Owner account id.
    pub account_id: String,
    /// The OpenSSH public key line.
    pub public_key: String,
    /// MD5 fingerprint of the key blob, `aa:bb:…`, as CloudStack shows it.
    pub fingerprint: String,
    /// Creation time.
    pub created: String,
}

/// An account's limit on one resource type, when set by `updateResourceLimit` (the defaults
/// are the `max.account.*` settings).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceLimit {
    /// Account id.
    pub account_id: String,
    /// CloudStack's resource type number (0 user_vm, 1 public_ip, 8 cpu, 9 memory, …).
    pub resource_type: u8,
    /// The limit; -1 is unlimited.
    pub max: i64,
}

/// An operator's load balancer outside CloudStack (a test hook, not an API entity): `ip:port`
/// spread round-robin over the targets' addresses on `network_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalLb {
    /// The address it listens on (in 127.0.0.0/8).
    pub ip: String,
    /// Its port.
    pub port: u16,
    /// The network whose addresses of the targets it forwards to.
    pub network_id: String,
    /// Target VM ids.
    pub targets: Vec<String>,
    /// The port on the targets.
    pub target_port: u16,
}

/// A global setting.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Configuration {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
    /// Category.
    pub category: String,
    /// Description.
    pub description: String,
}

/// Everything the simulator knows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Db {
    /// The root domain.
    pub domain: Option<Domain>,
    /// Domains below ROOT (`createDomain`).
    #[serde(default)]
    pub subdomains: Vec<Domain>,
    /// Projects (`createProject`).
    #[serde(default)]
    pub projects: Vec<Project>,
    /// Accounts.
    pub accounts: Vec<Account>,
    /// Users.
    pub users: Vec<User>,
    /// Zones.
    pub zones: Vec<Zone>,
    /// Service offerings.
    pub service_offerings: Vec<ServiceOffering>,
    /// Templates.
    pub templates: Vec<Template>,
    /// ISOs.
    pub isos: Vec<Iso>,
    /// Network offerings.
    pub network_offerings: Vec<NetworkOffering>,
    /// Networks.
    pub networks: Vec<Network>,
    /// VMs (expunged ones are removed).
    pub vms: Vec<Vm>,
    /// Public IPs.
    pub public_ips: Vec<PublicIp>,
    /// Firewall, port-forwarding and LB rules.
    pub rules: Vec<Rule>,
    /// Tags.
    pub tags: Vec<Tag>,
    /// Async jobs.
    pub jobs: Vec<Job>,
    /// Global settings.
    pub configurations: Vec<Configuration>,
    /// SSH key pairs.
    #[serde(default)]
    pub ssh_keypairs: Vec<SshKeyPair>,
    /// Per-account resource limits set by an admin.
    #[serde(default)]
    pub resource_limits: Vec<ResourceLimit>,
    /// External load balancers (test hook, see `SimHandle::add_external_lb`).
    #[serde(default)]
    pub external_lbs: Vec<ExternalLb>,
    /// Roles made with `createRole` (the built-in ones are implied by account types).
    #[serde(default)]
    pub roles: Vec<Role>,
    /// Their rules, in creation order.
    #[serde(default)]
    pub role_permissions: Vec<RolePermission>,
}
