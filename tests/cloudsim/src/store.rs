//! Loading, seeding and atomically saving the simulator's state.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use time::OffsetDateTime;
use time::macros::format_description;

use crate::model::{
    Account, Configuration, Db, Domain, NetworkOffering, ServiceOffering, Template, User, Zone,
};

/// Name of the state file inside the state directory.
pub const STATE_FILE: &str = "state.json";
/// The Kubernetes network offering every cluster network uses.
pub const KUBERNETES_NETWORK_OFFERING: &str = "DefaultNetworkOfferingforKubernetesService";
/// The seeded user account's name.
pub const USER_ACCOUNT: &str = "user";
/// The seeded admin account's name.
pub const ADMIN_ACCOUNT: &str = "admin";
/// The zone's public range when none is configured: a loopback subnet, so that public IPs are
/// local addresses on any Linux host and the simulator can serve them (see `forwarding`).
pub const DEFAULT_PUBLIC_CIDR: &str = "127.64.0.0/16";

/// Errors reading or writing the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state file exists but cannot be read.
    #[error("failed to read state file {path:?}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The state file is not valid JSON state.
    #[error("failed to parse state file {path:?}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// Writing the temporary file or renaming it failed.
    #[error("failed to write state file {path:?}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A fresh UUID string.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A fresh random API or secret key (86 characters, like CloudStack's).
pub fn new_key() -> String {
    let mut bytes = Vec::with_capacity(64);
    for _ in 0..4 {
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Formats a time the way CloudStack does: `2025-10-30T12:00:00+0000`.
pub fn format_time(t: OffsetDateTime) -> String {
    let format = format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second][offset_hour sign:mandatory][offset_minute]"
    );
    t.format(format).unwrap_or_default()
}

/// The current time, formatted as CloudStack does.
pub fn now() -> String {
    format_time(OffsetDateTime::now_utc())
}

/// Parses a CloudStack `expires` value (`yyyy-MM-dd'T'HH:mm:ssZ`).
pub fn parse_time(text: &str) -> Option<OffsetDateTime> {
    let format = format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second][offset_hour sign:mandatory][offset_minute]"
    );
    OffsetDateTime::parse(text, format).ok()
}

/// What the operator chose for a fresh (or reloaded) state.
#[derive(Debug, Clone, Default)]
pub struct AdminKeys {
    /// API key.
    pub api_key: Option<String>,
    /// Secret key.
    pub secret_key: Option<String>,
    /// The zone's public range when seeding ([`DEFAULT_PUBLIC_CIDR`] when `None`); a loaded
    /// state keeps the range it was seeded with.
    pub public_cidr: Option<String>,
}

/// Loads the state from `dir` (seeding it when absent) and applies the admin keys.
///
/// Jobs left pending by a previous run end failed, as CloudStack ends them after a management
/// server restart; VMs caught mid-transition are settled to `Stopped`/`Running`.
///
/// # Errors
/// The state file exists but cannot be read or parsed.
pub fn load_or_seed(dir: Option<&Path>, keys: &AdminKeys) -> Result<Db, StoreError> {
    let mut db = match dir.map(|d| d.join(STATE_FILE)) {
        Some(path) if path.exists() => {
            let text = std::fs::read_to_string(&path).map_err(|source| StoreError::Read {
                path: path.clone(),
                source,
            })?;
            let mut db: Db =
                serde_json::from_str(&text).map_err(|source| StoreError::Parse { path, source })?;
            settle_after_restart(&mut db);
            for config in default_configurations() {
                if !db.configurations.iter().any(|c| c.name == config.name) {
                    db.configurations.push(config);
                }
            }
            db
        }
        _ => seed_with(keys.public_cidr.as_deref().unwrap_or(DEFAULT_PUBLIC_CIDR)),
    };
    if let Some(admin) = db
        .accounts
        .iter()
        .find(|a| a.name == ADMIN_ACCOUNT)
        .map(|a| a.id.clone())
        && let Some(user) = db.users.iter_mut().find(|u| u.account_id == admin)
    {
        if let Some(key) = &keys.api_key {
            user.api_key.clone_from(key);
        }
        if let Some(secret) = &keys.secret_key {
            user.secret_key.clone_from(secret);
        }
    }
    Ok(db)
}

fn settle_after_restart(db: &mut Db) {
    use crate::model::VmState;
    let completed = now();
    for job in db.jobs.iter_mut().filter(|j| j.status == 0) {
        job.status = 2;
        job.result_code = 530;
        job.result = serde_json::json!({
            "errorcode": 530,
            "errortext": "job cancelled because of management server restart or shutdown",
        });
        job.completed = Some(completed.clone());
    }
    for vm in &mut db.vms {
        vm.state = match vm.state {
            VmState::Starting => VmState::Stopped,
            VmState::Stopping => VmState::Stopped,
            other => other,
        };
    }
}

/// Writes the state atomically: a temporary file in the same directory, fsync, rename.
///
/// # Errors
/// The directory is not writable.
pub fn save(dir: &Path, db: &Db) -> Result<(), StoreError> {
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(db).map_err(std::io::Error::other)?;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|source| StoreError::Write { path, source })
}

/// The global settings a fresh state has. A loaded state gets the ones it lacks (it was saved
/// by an older simulator), so `updateConfiguration` finds them.
pub fn default_configurations() -> Vec<Configuration> {
    let config = |name: &str, value: &str, category: &str, description: &str| Configuration {
        name: name.into(),
        value: value.into(),
        category: category.into(),
        description: description.into(),
    };
    vec![
        config(
            "default.page.size",
            "500",
            "Advanced",
            "Default page size for API list* commands",
        ),
        config(
            "vm.userdata.max.length",
            "32768",
            "Advanced",
            "Max length of vm userdata after base64 encoding",
        ),
        config(
            "cloud.kubernetes.service.enabled",
            "true",
            "Advanced",
            "Indicates whether Integrated Kubernetes Service plugin is enabled or not",
        ),
        config(
            "allow.user.expunge.recover.vm",
            "false",
            "Advanced",
            "Determines whether users can expunge or recover their vm",
        ),
        config(
            "guest.network.cidr",
            "10.1.1.0/24",
            "Network",
            "The default guest network CIDR",
        ),
        config(
            "enable.dynamic.scale.vm",
            "false",
            "Advanced",
            "Enables/Disables dynamically scaling a vm",
        ),
        config(
            "allow.user.view.destroyed.vm",
            "false",
            "Advanced",
            "Determines whether users can view their destroyed or expunging vm",
        ),
        config(
            "max.account.user.vms",
            "20",
            "Account Defaults",
            "The default maximum number of user VMs that can be deployed for an account",
        ),
        config(
            "max.account.public.ips",
            "20",
            "Account Defaults",
            "The default maximum number of public IPs that can be consumed by an account",
        ),
        config(
            "max.account.cpus",
            "40",
            "Account Defaults",
            "The default maximum number of cpu cores that can be used for an account",
        ),
        config(
            "max.account.memory",
            "81920",
            "Account Defaults",
            "The default maximum memory (in MB) that can be used for an account",
        ),
    ]
}

/// The initial world with the default public range; see [`seed_with`].
pub fn seed() -> Db {
    seed_with(DEFAULT_PUBLIC_CIDR)
}

/// The initial world: one zone (public IPs from `public_cidr`), offerings, a node template,
/// network offerings, an admin and a user account.
pub fn seed_with(public_cidr: &str) -> Db {
    let created = now();
    let zone_id = new_id();
    let admin = Account::new(ADMIN_ACCOUNT, true);
    let user = Account::new(USER_ACCOUNT, false);
    let offering = |name: &str, cpu: u64, mem: u64| ServiceOffering {
        id: new_id(),
        name: name.into(),
        displaytext: format!("{cpu} vCPU, {mem} MB RAM"),
        cpunumber: cpu,
        cpuspeed: 2000,
        memory: mem,
        dynamic_scaling: true,
    };
    let network_offering = |name: &str, guest: &str| NetworkOffering {
        id: new_id(),
        name: name.into(),
        displaytext: name.into(),
        guestiptype: guest.into(),
    };
    Db {
        domain: Some(Domain {
            id: new_id(),
            name: "ROOT".into(),
            parent_id: None,
        }),
        users: vec![
            User {
                id: new_id(),
                username: ADMIN_ACCOUNT.into(),
                account_id: admin.id.clone(),
                api_key: new_key(),
                secret_key: new_key(),
                created: created.clone(),
                firstname: None,
                lastname: None,
                email: None,
            },
            User {
                id: new_id(),
                username: USER_ACCOUNT.into(),
                account_id: user.id.clone(),
                api_key: new_key(),
                secret_key: new_key(),
                created: created.clone(),
                firstname: None,
                lastname: None,
                email: None,
            },
        ],
        accounts: vec![admin, user],
        zones: vec![Zone {
            id: zone_id.clone(),
            name: "zone1".into(),
            public_cidr: public_cidr.into(),
            cpu_capacity: 64,
            memory_capacity: 131_072,
        }],
        service_offerings: vec![
            offering("Small Instance", 1, 1024),
            offering("Medium Instance", 2, 2048),
            offering("Large Instance", 4, 4096),
        ],
        templates: vec![Template {
            id: new_id(),
            name: "cks-node".into(),
            displaytext: "CKS node template".into(),
            zone_id,
            size: 2 * 1024 * 1024 * 1024,
        }],
        network_offerings: vec![
            network_offering(KUBERNETES_NETWORK_OFFERING, "Isolated"),
            network_offering(
                "DefaultIsolatedNetworkOfferingWithSourceNatService",
                "Isolated",
            ),
            network_offering("DefaultSharedNetworkOffering", "Shared"),
        ],
        configurations: default_configurations(),
        ..Db::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_round_trips_in_cloudstack_format() {
        let t = parse_time("2026-11-24T13:53:25+0000").unwrap();
        assert_eq!(format_time(t), "2026-11-24T13:53:25+0000");
        assert!(parse_time("2026-11-24 13:53:25").is_none());
    }

    #[test]
    fn saved_state_loads_with_keys_applied() {
        let dir = tempfile::tempdir().unwrap();
        let db = seed();
        save(dir.path(), &db).unwrap();
        let keys = AdminKeys {
            api_key: Some("k".into()),
            secret_key: Some("s".into()),
            public_cidr: Some("127.1.0.0/24".into()),
        };
        let loaded = load_or_seed(Some(dir.path()), &keys).unwrap();
        assert_eq!(loaded.zones[0].id, db.zones[0].id);
        assert_eq!(
            loaded.zones[0].public_cidr, DEFAULT_PUBLIC_CIDR,
            "kept, not reseeded"
        );
        assert!(
            loaded
                .users
                .iter()
                .any(|u| u.api_key == "k" && u.secret_key == "s")
        );
    }
}
