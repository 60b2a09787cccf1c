//! Who owns an API key: the caller identity behind the controller's CloudStack-compatible
//! endpoint (contract 3).
//!
//! The endpoint receives requests signed with a user's own CloudStack keys. To verify one it
//! needs that user's secret key, and to authorise it, the user's account and role. CloudStack
//! tells an admin both: `getUser userapikey=<key>` names the user, `getUserKeys id=<user>`
//! returns the key pair. [`IdentityResolver`] asks with the controller's admin client and
//! caches the answer briefly, so that a burst of requests costs two CloudStack calls, and a
//! disabled user or a regenerated key takes effect within [`DEFAULT_TTL`] — at once when the
//! change itself went through the controller ([`IdentityResolver::invalidate_all`]).
//!
//! Unknown keys are cached too, for a shorter [`DEFAULT_NEGATIVE_TTL`], so that a client
//! retrying with a bad key does not turn into a stream of admin calls. Lookup failures
//! (CloudStack down) are not cached.
//!
//! Concurrent resolutions of the same key share one lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, warn};

use super::SecretKey;
use super::client::{CloudStackClient, CloudStackError, decode_field};
use super::types::{Account, Domain, RolePermission, User, UserKeys};

/// How long a resolved identity is reused.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// How long an unknown or disabled key stays refused without asking CloudStack again.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Above this many cached keys, expired entries are purged (and all of them if that is not
/// enough), so random keys cannot grow the cache without bound.
const MAX_CACHED_KEYS: usize = 10_000;

/// A CloudStack role type, the coarse permission level of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoleType {
    /// Root admin.
    Admin,
    /// Domain admin.
    DomainAdmin,
    /// Resource (domain) admin.
    ResourceAdmin,
    /// Regular user.
    User,
}

// === impl RoleType ===

impl RoleType {
    /// From `roletype`, or from the legacy `accounttype` (0 user, 1 admin, 2 domain admin,
    /// 3 resource admin). Anything unrecognised is the least privileged, [`RoleType::User`].
    pub fn from_user(user: &User) -> Self {
        match user.roletype.as_deref() {
            Some("Admin") => Self::Admin,
            Some("DomainAdmin") => Self::DomainAdmin,
            Some("ResourceAdmin") => Self::ResourceAdmin,
            Some("User") => Self::User,
            _ => match user.accounttype {
                Some(1) => Self::Admin,
                Some(2) => Self::DomainAdmin,
                Some(3) => Self::ResourceAdmin,
                _ => Self::User,
            },
        }
    }
}

/// The owner of an API key. `Debug` redacts the secret key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// User id.
    pub user_id: String,
    /// Login name.
    pub username: String,
    /// Account name.
    pub account: String,
    /// Account id.
    pub account_id: String,
    /// Domain id.
    pub domain_id: String,
    /// Role type.
    pub role_type: RoleType,
    /// The API key.
    pub api_key: String,
    /// The secret key to verify the caller's signatures with.
    pub secret_key: SecretKey,
    /// The caller's role's rules, in the order they apply (empty: the commands' defaults).
    pub permissions: Arc<[RolePermission]>,
    /// For a domain admin: its domain and every domain below it, whose accounts it manages
    /// (empty for everyone else).
    pub domains: Arc<[String]>,
}

// === impl Caller ===

impl Caller {
    /// A user-role caller `user` of account `a` in domain `d`, with no role rules (unit tests).
    #[cfg(test)]
    pub fn for_tests() -> Self {
        Caller {
            user_id: "u".into(),
            username: "user".into(),
            account: "a".into(),
            account_id: "a".into(),
            domain_id: "d".into(),
            role_type: RoleType::User,
            api_key: "k".into(),
            secret_key: SecretKey::new("s"),
            permissions: Vec::new().into(),
            domains: Vec::new().into(),
        }
    }

    /// True for root admins.
    pub fn is_admin(&self) -> bool {
        self.role_type == RoleType::Admin
    }

    /// True when the caller administers domain `id`: root admins every domain, domain admins
    /// their own and those below it.
    pub fn manages_domain(&self, id: &str) -> bool {
        self.is_admin()
            || (self.role_type == RoleType::DomainAdmin && self.domains.iter().any(|d| d == id))
    }

    /// Whether the caller's role lets them run `command` (its canonical name), as CloudStack's
    /// dynamic role checker decides: the first rule matching the name allows or denies it;
    /// when none matches, the command's own default applies (`by_default`: whether the
    /// caller's role type is among those the command is declared for).
    pub fn may(&self, command: &str, by_default: bool) -> bool {
        self.permissions
            .iter()
            .find(|p| rule_matches(&p.rule, command))
            .map_or(by_default, |p| p.permission.eq_ignore_ascii_case("allow"))
    }
}

/// A role rule against an API name: `*` stands for any run of word characters (CloudStack's
/// `\w*`), everything else matches itself, case-sensitively, over the whole name.
pub fn rule_matches(rule: &str, name: &str) -> bool {
    fn go(rule: &[u8], name: &[u8]) -> bool {
        match rule.split_first() {
            None => name.is_empty(),
            Some((b'*', rest)) => {
                // Try every split of the name's leading word characters.
                let word = name
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                    .count();
                (0..=word).any(|skip| go(rest, &name[skip..]))
            }
            Some((c, rest)) => name.first() == Some(c) && go(rest, &name[1..]),
        }
    }
    // Rules are short (API names); the recursion is bounded by the rule's stars.
    rule.len() <= 256 && go(rule.as_bytes(), name.as_bytes())
}

/// An API key could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// CloudStack knows no user with this key (or the user has no secret key).
    #[error("the API key does not belong to any CloudStack user")]
    UnknownApiKey,
    /// The key's account is disabled or locked.
    #[error("CloudStack account {account} is {state}")]
    AccountDisabled {
        /// Account name.
        account: String,
        /// `disabled` or `locked`.
        state: String,
    },
    /// The key's user is disabled or locked.
    #[error("CloudStack user {username} is {state}")]
    UserDisabled {
        /// Login name.
        username: String,
        /// `disabled` or `locked`.
        state: String,
    },
    /// CloudStack could not be asked (or answered unexpectedly); try again later.
    #[error("failed to look up the API key's user in CloudStack")]
    Lookup(#[source] CloudStackError),
}

/// A definitive refusal, cached negatively.
#[derive(Debug, Clone)]
enum Refusal {
    UnknownApiKey,
    UserDisabled { username: String, state: String },
    AccountDisabled { account: String, state: String },
}

impl From<Refusal> for IdentityError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::UnknownApiKey => Self::UnknownApiKey,
            Refusal::UserDisabled { username, state } => Self::UserDisabled { username, state },
            Refusal::AccountDisabled { account, state } => Self::AccountDisabled { account, state },
        }
    }
}

#[derive(Debug)]
struct Entry {
    until: Instant,
    outcome: Result<Caller, Refusal>,
}

/// One key's cache slot; its async lock makes concurrent resolutions share one lookup.
type Slot = Arc<tokio::sync::Mutex<Option<Entry>>>;

/// Resolves API keys to [`Caller`]s through the admin commands `getUser` and `getUserKeys`,
/// with a short-lived cache. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct IdentityResolver {
    client: CloudStackClient,
    ttl: Duration,
    negative_ttl: Duration,
    slots: Mutex<HashMap<String, Slot>>,
}

// === impl IdentityResolver ===

impl IdentityResolver {
    /// A resolver over `admin` (a client with root-admin keys) with the default TTLs.
    pub fn new(admin: CloudStackClient) -> Self {
        Self::with_ttl(admin, DEFAULT_TTL, DEFAULT_NEGATIVE_TTL)
    }

    /// A resolver with explicit cache lifetimes (zero disables caching of that kind).
    pub fn with_ttl(admin: CloudStackClient, ttl: Duration, negative_ttl: Duration) -> Self {
        Self {
            client: admin,
            ttl,
            negative_ttl,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The owner of `api_key`, from the cache or from CloudStack.
    ///
    /// # Errors
    /// [`IdentityError::UnknownApiKey`] and [`IdentityError::UserDisabled`] are answers (and
    /// cached); [`IdentityError::Lookup`] means CloudStack could not be asked (not cached).
    pub async fn resolve(&self, api_key: &str) -> Result<Caller, IdentityError> {
        if api_key.is_empty() {
            return Err(IdentityError::UnknownApiKey);
        }
        let slot = self.slot(api_key);
        let mut entry = slot.lock().await;
        if let Some(cached) = entry.as_ref()
            && cached.until > Instant::now()
        {
            return cached.outcome.clone().map_err(IdentityError::from);
        }
        let fetched = self.fetch(api_key).await;
        let now = Instant::now();
        *entry = match &fetched {
            Ok(caller) => Some(Entry {
                until: now + self.ttl,
                outcome: Ok(caller.clone()),
            }),
            Err(refusal) => refusal.as_refusal().map(|refusal| Entry {
                until: now + self.negative_ttl,
                outcome: Err(refusal),
            }),
        };
        fetched
    }

    /// Forgets `api_key`, e.g. when a signature fails with a cached secret that may have been
    /// regenerated since.
    pub fn invalidate(&self, api_key: &str) {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(api_key);
    }

    /// Forgets every cached identity: after a change CloudStack made to users, keys, accounts
    /// or roles, whoever it concerns is asked about afresh.
    pub fn invalidate_all(&self) {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn slot(&self, api_key: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if !slots.contains_key(api_key) && slots.len() >= MAX_CACHED_KEYS {
            let now = Instant::now();
            // A slot that is locked is being resolved right now: keep it.
            slots.retain(|_, slot| {
                slot.try_lock()
                    .map(|entry| entry.as_ref().is_some_and(|e| e.until > now))
                    .unwrap_or(true)
            });
            if slots.len() >= MAX_CACHED_KEYS {
                slots.clear();
            }
        }
        slots.entry(api_key.to_owned()).or_default().clone()
    }

    async fn fetch(&self, api_key: &str) -> Result<Caller, IdentityError> {
        let found = match self
            .client
            .call("getUser", &[("userapikey", api_key)])
            .await
        {
            Ok(found) => found,
            // CloudStack: 431 "User with specified API key does not exist".
            Err(CloudStackError::Api { errorcode: 431, .. }) => {
                debug!("API key unknown to CloudStack");
                return Err(IdentityError::UnknownApiKey);
            }
            Err(err) => return Err(IdentityError::Lookup(err)),
        };
        if found.get("user").is_none() {
            return Err(IdentityError::UnknownApiKey);
        }
        let user: User = decode_field("getUser", &found, "user").map_err(IdentityError::Lookup)?;
        if user.apikey.as_deref().is_some_and(|k| k != api_key) {
            warn!(user_id = %user.id, "getUser answered with another user's key; refusing");
            return Err(IdentityError::UnknownApiKey);
        }
        if let Some(state) = user.state.as_deref()
            && !state.eq_ignore_ascii_case("enabled")
        {
            return Err(IdentityError::UserDisabled {
                username: user.username.clone(),
                state: state.to_owned(),
            });
        }
        let keys: UserKeys = self
            .client
            .call_as("getUserKeys", &[("id", &user.id)], "userkeys")
            .await
            .map_err(IdentityError::Lookup)?;
        if keys.apikey.as_deref().is_some_and(|k| k != api_key) {
            // The key was regenerated between the two calls; the old one is no longer valid.
            debug!(user_id = %user.id, "API key replaced while resolving it");
            return Err(IdentityError::UnknownApiKey);
        }
        let Some(secret_key) = keys.secretkey else {
            return Err(IdentityError::UnknownApiKey);
        };
        let role_type = RoleType::from_user(&user);
        // The account's own state: disabling or locking an account stops its users' keys
        // even though each user still shows `enabled`.
        let account_id = user.accountid.clone().unwrap_or_default();
        let account = self
            .client
            .list_all::<Account>(&[("id", &account_id), ("listall", "true")])
            .await
            .map_err(IdentityError::Lookup)?
            .into_iter()
            .find(|a| a.id == account_id);
        let Some(account) = account else {
            return Err(IdentityError::UnknownApiKey);
        };
        if let Some(state) = account.state.as_deref()
            && !state.eq_ignore_ascii_case("enabled")
        {
            return Err(IdentityError::AccountDisabled {
                account: account.name.clone(),
                state: state.to_owned(),
            });
        }
        let permissions = match user.roleid.as_deref().or(account.roleid.as_deref()) {
            Some(role_id) => self.permissions(role_id).await?,
            None => Vec::new(),
        };
        let domain_id = user.domainid.unwrap_or_default();
        let domains = if role_type == RoleType::DomainAdmin {
            self.domain_tree(&domain_id).await?
        } else {
            Vec::new()
        };
        Ok(Caller {
            user_id: user.id,
            username: user.username,
            account: user.account.unwrap_or_default(),
            account_id: user.accountid.unwrap_or_default(),
            domain_id,
            role_type,
            api_key: api_key.to_owned(),
            secret_key,
            permissions: permissions.into(),
            domains: domains.into(),
        })
    }

    /// Domain `id` and every domain below it (a domain admin's reach), cached with the
    /// identity: a subdomain made since is seen when the identity is next looked up.
    async fn domain_tree(&self, id: &str) -> Result<Vec<String>, IdentityError> {
        let below = self
            .client
            .list_all::<Domain>(&[("id", id), ("isrecursive", "true"), ("listall", "true")])
            .await
            .map_err(IdentityError::Lookup)?;
        let mut tree = vec![id.to_owned()];
        tree.extend(below.into_iter().map(|d| d.id));
        Ok(tree)
    }

    /// A role's rules in the order they apply. A CloudStack without dynamic roles (no
    /// `listRolePermissions`, 432) has none: the commands' defaults apply.
    async fn permissions(&self, role_id: &str) -> Result<Vec<RolePermission>, IdentityError> {
        match self
            .client
            .list_all::<RolePermission>(&[("roleid", role_id)])
            .await
        {
            Ok(rules) => Ok(rules),
            Err(err) if err.errorcode() == Some(432) => Ok(Vec::new()),
            Err(err) => Err(IdentityError::Lookup(err)),
        }
    }
}

// === impl IdentityError ===

impl IdentityError {
    fn as_refusal(&self) -> Option<Refusal> {
        match self {
            Self::UnknownApiKey => Some(Refusal::UnknownApiKey),
            Self::UserDisabled { username, state } => Some(Refusal::UserDisabled {
                username: username.clone(),
                state: state.clone(),
            }),
            Self::AccountDisabled { account, state } => Some(Refusal::AccountDisabled {
                account: account.clone(),
                state: state.clone(),
            }),
            Self::Lookup(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn user(value: serde_json::Value) -> User {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn role_type_comes_from_roletype_then_accounttype() {
        let base = |extra: serde_json::Value| {
            let mut v = json!({"id": "u", "username": "n"});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            user(v)
        };
        assert_eq!(
            RoleType::from_user(&base(json!({"roletype": "Admin"}))),
            RoleType::Admin
        );
        assert_eq!(
            RoleType::from_user(&base(json!({"roletype": "DomainAdmin", "accounttype": 1}))),
            RoleType::DomainAdmin
        );
        assert_eq!(
            RoleType::from_user(&base(json!({"accounttype": 3}))),
            RoleType::ResourceAdmin
        );
        assert_eq!(
            RoleType::from_user(&base(json!({"accounttype": "1"}))),
            RoleType::Admin
        );
        assert_eq!(
            RoleType::from_user(&base(json!({"roletype": "Wizard"}))),
            RoleType::User
        );
    }

    #[test]
    fn role_rules_match_whole_names_with_word_wildcards() {
        assert!(rule_matches("*", "createKubernetesCluster"));
        assert!(rule_matches("list*", "listKubernetesClusters"));
        assert!(rule_matches("*Kubernetes*", "getKubernetesClusterConfig"));
        assert!(rule_matches(
            "createKubernetesCluster",
            "createKubernetesCluster"
        ));
        assert!(!rule_matches(
            "createKubernetesCluster",
            "createKubernetesClusters"
        ));
        assert!(!rule_matches("list*", "getKubernetesClusterConfig"));
        assert!(
            !rule_matches("List*", "listZones"),
            "case-sensitive, as CloudStack"
        );
        assert!(!rule_matches("get", "getUser"));
    }

    #[test]
    fn the_first_matching_rule_decides_and_the_default_applies_otherwise() {
        let rule = |rule: &str, permission: &str| RolePermission {
            rule: rule.into(),
            permission: permission.into(),
        };
        let caller = |rules: Vec<RolePermission>| Caller {
            user_id: "u".into(),
            username: "ro".into(),
            account: "a".into(),
            account_id: "a".into(),
            domain_id: "d".into(),
            role_type: RoleType::Admin,
            api_key: "k".into(),
            secret_key: SecretKey::new("s"),
            permissions: rules.into(),
            domains: Vec::new().into(),
        };
        let read_only = caller(vec![rule("list*", "allow"), rule("*", "deny")]);
        assert!(read_only.may("listKubernetesClusters", true));
        assert!(!read_only.may("getKubernetesClusterConfig", true));
        assert!(!read_only.may("createKubernetesCluster", true));
        let order = caller(vec![
            rule("deleteKubernetesCluster", "deny"),
            rule("*Kubernetes*", "allow"),
        ]);
        assert!(!order.may("deleteKubernetesCluster", false));
        assert!(order.may("scaleKubernetesCluster", false));
        let none = caller(Vec::new());
        assert!(none.may("createKubernetesCluster", true));
        assert!(!none.may("addKubernetesSupportedVersion", false));
    }

    #[test]
    fn caller_debug_redacts_the_secret() {
        let caller = Caller {
            user_id: "u".into(),
            username: "alice".into(),
            account: "acct".into(),
            account_id: "a".into(),
            domain_id: "d".into(),
            role_type: RoleType::User,
            api_key: "AK".into(),
            secret_key: SecretKey::new("hunter2-secret"),
            permissions: Vec::new().into(),
            domains: Vec::new().into(),
        };
        let debug = format!("{caller:?}");
        assert!(
            debug.contains("alice") && !debug.contains("hunter2-secret"),
            "{debug}"
        );
    }
}
