//! Accounts, users, keys, tags, settings and async job queries.

use serde_json::{Value, json};

use super::tenancy::{account_domain, account_type, domain_name, domain_path};
use super::{Ctx, Outcome, account, list_response};
use crate::error::ApiError;
use crate::model::{Account, Db, Job, Role, RolePermission, Tag, User};
use crate::store::{self, new_id, new_key};

/// Ids of the built-in roles, which accounts without a `createRole` role have.
pub const ROOT_ADMIN_ROLE_ID: &str = "00000000-0000-0000-0000-000000000001";
/// The built-in domain admin role.
pub const DOMAIN_ADMIN_ROLE_ID: &str = "00000000-0000-0000-0000-000000000003";
/// The built-in user role.
pub const USER_ROLE_ID: &str = "00000000-0000-0000-0000-000000000004";

/// An account's role: (id, name, type).
fn role_of(db: &Db, a: &Account) -> (String, String, String) {
    if let Some(role) = a
        .role_id
        .as_ref()
        .and_then(|id| db.roles.iter().find(|r| &r.id == id))
    {
        return (role.id.clone(), role.name.clone(), role.role_type.clone());
    }
    if a.admin {
        (
            ROOT_ADMIN_ROLE_ID.into(),
            "Root Admin".into(),
            "Admin".into(),
        )
    } else if a.domain_admin {
        (
            DOMAIN_ADMIN_ROLE_ID.into(),
            "Domain Admin".into(),
            "DomainAdmin".into(),
        )
    } else {
        (USER_ROLE_ID.into(), "User".into(), "User".into())
    }
}

fn render_user(db: &Db, u: &User) -> Value {
    let acct = account(db, &u.account_id);
    let role = acct.map(|a| role_of(db, a));
    let domain = account_domain(db, &u.account_id);
    let mut body = json!({
        "id": u.id,
        "username": u.username,
        "firstname": u.firstname.clone().unwrap_or_else(|| u.username.clone()),
        "lastname": u.lastname.clone().unwrap_or_else(|| "cloudsim".into()),
        "email": u.email.clone().unwrap_or_else(|| format!("{}@cloudsim.invalid", u.username)),
        "accountid": u.account_id,
        "account": acct.map(|a| a.name.clone()),
        "accounttype": acct.map(account_type),
        "roletype": role.as_ref().map(|r| r.2.clone()),
        "roleid": role.as_ref().map(|r| r.0.clone()),
        "rolename": role.as_ref().map(|r| r.1.clone()),
        "domain": domain_name(db, &domain),
        "domainpath": domain_path(db, &domain),
        "domainid": domain,
        // A user of a disabled account is shown enabled, as CloudStack shows it: the
        // account's state is the account's.
        "state": "enabled",
        "created": u.created,
    });
    if !u.api_key.is_empty() {
        body["apikey"] = json!(u.api_key);
    }
    body
}

fn render_account(db: &Db, a: &Account) -> Value {
    let users: Vec<Value> = db
        .users
        .iter()
        .filter(|u| u.account_id == a.id)
        .map(|u| render_user(db, u))
        .collect();
    let (role_id, role_name, role_type) = role_of(db, a);
    let domain = account_domain(db, &a.id);
    json!({
        "id": a.id,
        "name": a.name,
        "accounttype": account_type(a),
        "roletype": role_type,
        "roleid": role_id,
        "rolename": role_name,
        "domain": domain_name(db, &domain),
        "domainpath": domain_path(db, &domain),
        "domainid": domain,
        "state": a.state,
        "user": users,
    })
}

/// `listAccounts`: a user sees its own account, a domain admin those of its domain tree, a
/// root admin all; never a project's own account. `domainid` (with `isrecursive`) narrows.
pub(super) fn list_accounts(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let recursive = ctx.params.bool("isrecursive", false)?;
    let items = ctx
        .db
        .accounts
        .iter()
        .filter(|a| a.project_id.is_none() && ctx.manages(&a.id))
        .filter(|a| {
            ctx.params.get("domainid").is_none_or(|d| {
                let theirs = account_domain(ctx.db, &a.id);
                if recursive {
                    super::tenancy::in_tree(ctx.db, d, &theirs)
                } else {
                    theirs == d
                }
            })
        })
        .filter(|a| ctx.filter_matches("id", &a.id) && ctx.filter_matches("name", &a.name))
        .filter(|a| ctx.keyword_matches(&a.name))
        .map(|a| render_account(ctx.db, a))
        .collect();
    Ok(Outcome::Sync(list_response(ctx.params, "account", items)?))
}

/// The user fields `createUser` and `createAccount` require, in CloudStack's order.
fn new_user(ctx: &Ctx<'_>, account_id: &str) -> Result<User, ApiError> {
    let p = ctx.params;
    for name in ["email", "firstname", "lastname", "password", "username"] {
        p.require(ctx.command, name)?;
    }
    let username = p.require(ctx.command, "username")?;
    if ctx.db.users.iter().any(|u| u.username == username) {
        return Err(ApiError::param(format!(
            "The user {username} already exists in domain ROOT"
        )));
    }
    // The password is required, as by CloudStack, and never kept: nothing logs in with it.
    Ok(User {
        id: new_id(),
        username: username.to_owned(),
        account_id: account_id.to_owned(),
        api_key: String::new(),
        secret_key: String::new(),
        created: store::now(),
        firstname: p.get("firstname").map(str::to_owned),
        lastname: p.get("lastname").map(str::to_owned),
        email: p.get("email").map(str::to_owned),
    })
}

/// `createAccount` (admin): an account (`accounttype` 0 user, 1 root admin) with its first
/// user, who has no API keys until `registerUserKeys`.
pub(super) fn create_account(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let role = match ctx.params.get("roleid") {
        Some(id) => Some(
            ctx.db
                .roles
                .iter()
                .find(|r| r.id == id)
                .cloned()
                .ok_or_else(|| ApiError::param(format!("Unable to find role by id {id}")))?,
        ),
        None => None,
    };
    let role_type = role.as_ref().map(|r| r.role_type.as_str());
    let account_type = match ctx.params.number::<u8>(ctx.command, "accounttype")? {
        // The role's type decides (Admin, DomainAdmin and User types are simulated).
        _ if role_type == Some("Admin") => 1,
        _ if role_type == Some("DomainAdmin") => 2,
        _ if role_type.is_some() => 0,
        None => 0,
        Some(t @ (0..=2)) => t,
        Some(other) => {
            return Err(ApiError::param(format!(
                "Invalid account type {other}; the simulator has user (0), root admin (1) and domain admin (2) accounts"
            )));
        }
    };
    let domain = ctx.domain_param()?;
    // A domain admin makes users and domain admins of its own tree, never root admins.
    ctx.check_domain(&domain)?;
    if account_type == 1 && !ctx.caller.admin {
        return Err(ApiError::permission(format!(
            "Account {} does not have permission to create a root admin account",
            ctx.caller.account_name
        )));
    }
    let username = ctx.params.require(ctx.command, "username")?;
    let name = ctx.params.get("account").unwrap_or(username).to_owned();
    if ctx
        .db
        .accounts
        .iter()
        .any(|a| a.name == name && account_domain(ctx.db, &a.id) == domain)
    {
        return Err(ApiError::param(format!(
            "The specified account: {name} already exists"
        )));
    }
    let mut account = Account::new(&name, account_type == 1);
    account.domain_admin = account_type == 2;
    account.domain_id = Some(domain).filter(|d| *d != super::domain_id(ctx.db));
    account.role_id = role.map(|r| r.id);
    let user = new_user(ctx, &account.id)?;
    ctx.db.users.push(user);
    let body = render_account(ctx.db, &account);
    ctx.db.accounts.push(account);
    Ok(Outcome::Sync(json!({ "account": body })))
}

/// `createUser` (admin): a user of an existing account, without API keys.
pub(super) fn create_user(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let name = ctx.params.require(ctx.command, "account")?;
    let domain = ctx.domain_param()?;
    let account_id = super::tenancy::account_named(ctx.db, name, &domain)
        .map(|a| a.id.clone())
        .ok_or_else(|| {
            ApiError::param(format!(
                "Unable to find account {name} in domain {}",
                domain_name(ctx.db, &domain)
            ))
        })?;
    ctx.check_access(&account_id, &account_id)?;
    let user = new_user(ctx, &account_id)?;
    let body = render_user(ctx.db, &user);
    ctx.db.users.push(user);
    Ok(Outcome::Sync(json!({ "user": body })))
}

/// `registerUserKeys id=…`: a new key pair for the user (its old keys stop working); a user
/// for itself, an admin for anyone.
pub(super) fn register_user_keys(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let id = ctx.params.require(ctx.command, "id")?.to_owned();
    let index = ctx
        .db
        .users
        .iter()
        .position(|u| u.id == id)
        .ok_or_else(|| ApiError::param(format!("unable to find user by id {id}")))?;
    ctx.check_access(&ctx.db.users[index].account_id, &id)?;
    let user = &mut ctx.db.users[index];
    user.api_key = new_key();
    user.secret_key = new_key();
    tracing::info!(user = %user.username, "new API keys registered");
    Ok(Outcome::Sync(json!({
        "userkeys": { "apikey": user.api_key, "secretkey": user.secret_key }
    })))
}

/// `listUsers`: a user sees its account's users, an admin all; filters `id`, `username`,
/// `account`, `accounttype`, `state`, `domainid`, `keyword`.
pub(super) fn list_users(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let account_type: Option<u8> = ctx.params.number(ctx.command, "accounttype")?;
    let items = ctx
        .db
        .users
        .iter()
        .filter(|u| ctx.manages(&u.account_id))
        .filter(|u| ctx.filter_matches("id", &u.id) && ctx.filter_matches("username", &u.username))
        .filter(|u| {
            ctx.params
                .get("account")
                .is_none_or(|name| account(ctx.db, &u.account_id).is_some_and(|a| a.name == name))
        })
        .filter(|u| {
            account_type.is_none_or(|t| {
                account(ctx.db, &u.account_id).is_some_and(|a| super::tenancy::account_type(a) == t)
            })
        })
        .filter(|_| {
            ctx.params
                .get("state")
                .is_none_or(|s| s.eq_ignore_ascii_case("enabled"))
        })
        .filter(|u| ctx.filter_matches("domainid", &account_domain(ctx.db, &u.account_id)))
        .filter(|u| ctx.keyword_matches(&u.username))
        .map(|u| render_user(ctx.db, u))
        .collect();
    Ok(Outcome::Sync(list_response(ctx.params, "user", items)?))
}

/// `getUser userapikey=…` (admin only): who owns an API key.
pub(super) fn get_user(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let key = ctx.params.require(ctx.command, "userapikey")?;
    let user = ctx
        .db
        .users
        .iter()
        .find(|u| u.api_key == key)
        .ok_or_else(|| ApiError::param("Unable to find user by apikey"))?;
    Ok(Outcome::Sync(json!({ "user": render_user(ctx.db, user) })))
}

/// `getUserKeys id=…`: an admin for anyone, a user for itself.
pub(super) fn get_user_keys(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let id = ctx.params.require(ctx.command, "id")?;
    let user = ctx
        .db
        .users
        .iter()
        .find(|u| u.id == id)
        .ok_or_else(|| ApiError::param(format!("Unable to find user by id {id}")))?;
    ctx.check_access(&user.account_id, id)?;
    Ok(Outcome::Sync(json!({
        "userkeys": { "apikey": user.api_key, "secretkey": user.secret_key }
    })))
}

/// `updateConfiguration name=… value=…` (admin): changes a global setting the simulator knows.
pub(super) fn update_configuration(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let name = ctx.params.require(ctx.command, "name")?.to_owned();
    let value = ctx.params.get("value").unwrap_or_default().to_owned();
    let config = ctx
        .db
        .configurations
        .iter_mut()
        .find(|c| c.name == name)
        .ok_or_else(|| {
            ApiError::param(format!("Config parameter with name {name} doesn't exist"))
        })?;
    config.value = value;
    tracing::info!(name = %config.name, value = %config.value, "setting updated");
    Ok(Outcome::Sync(json!({
        "configuration": {
            "name": config.name,
            "value": config.value,
            "category": config.category,
            "description": config.description,
        }
    })))
}

/// `listConfigurations` (admin only).
pub(super) fn list_configurations(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let items = ctx
        .db
        .configurations
        .iter()
        .filter(|c| {
            ctx.filter_matches("name", &c.name) && ctx.filter_matches("category", &c.category)
        })
        .filter(|c| ctx.keyword_matches(&c.name))
        .map(|c| {
            json!({
                "name": c.name,
                "value": c.value,
                "category": c.category,
                "description": c.description,
            })
        })
        .collect();
    Ok(Outcome::Sync(list_response(
        ctx.params,
        "configuration",
        items,
    )?))
}

fn resource_owner(db: &Db, id: &str) -> Option<String> {
    db.vms
        .iter()
        .find(|v| v.id == id)
        .map(|v| v.account_id.clone())
        .or_else(|| {
            db.networks
                .iter()
                .find(|n| n.id == id)
                .map(|n| n.account_id.clone())
        })
        .or_else(|| {
            db.public_ips
                .iter()
                .find(|i| i.id == id)
                .map(|i| i.account_id.clone())
        })
        .or_else(|| {
            db.isos
                .iter()
                .find(|i| i.id == id)
                .map(|i| i.account_id.clone())
        })
        .or_else(|| {
            db.rules
                .iter()
                .find(|r| r.id == id)
                .map(|r| r.account_id.clone())
        })
}

/// `createTags resourceids resourcetype tags[i].key/value` (async).
pub(super) fn create_tags(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let ids = ctx.params.list("resourceids");
    if ids.is_empty() {
        return Err(ApiError::missing(ctx.command, &["resourceids"]));
    }
    let resource_type = ctx.params.require(ctx.command, "resourcetype")?.to_owned();
    let tags = ctx.params.map("tags");
    if tags.is_empty() {
        return Err(ApiError::missing(ctx.command, &["tags"]));
    }
    let mut new = Vec::new();
    for id in &ids {
        let owner = resource_owner(ctx.db, id).ok_or_else(|| {
            ApiError::param(format!(
                "Unable to find resource by id {id} and type {resource_type}"
            ))
        })?;
        ctx.check_access(&owner, id)?;
        for tag in &tags {
            let (Some(key), Some(value)) = (tag.get("key"), tag.get("value")) else {
                return Err(ApiError::param("Tags must have a key and a value"));
            };
            if ctx
                .db
                .tags
                .iter()
                .any(|t| &t.resource_id == id && &t.key == key)
            {
                return Err(ApiError::param(format!(
                    "A tag with key {key} already exists for resource {id}"
                )));
            }
            new.push(Tag {
                key: key.clone(),
                value: value.clone(),
                resource_id: id.clone(),
                resource_type: resource_type.clone(),
                account_id: owner.clone(),
            });
        }
    }
    if ctx.planned_failure().is_none() {
        ctx.db.tags.extend(new);
    }
    Ok(ctx.simple_job("tag.CreateTagsCmd", None, json!({ "success": true })))
}

/// `deleteTags resourceids resourcetype [tags[i].key]` (async).
pub(super) fn delete_tags(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let ids = ctx.params.list("resourceids");
    let keys: Vec<String> = ctx
        .params
        .map("tags")
        .into_iter()
        .filter_map(|t| t.get("key").cloned())
        .collect();
    for id in &ids {
        if let Some(owner) = resource_owner(ctx.db, id) {
            ctx.check_access(&owner, id)?;
        }
    }
    if ctx.planned_failure().is_none() {
        ctx.db.tags.retain(|t| {
            !(ids.contains(&t.resource_id) && (keys.is_empty() || keys.contains(&t.key)))
        });
    }
    Ok(ctx.simple_job("tag.DeleteTagsCmd", None, json!({ "success": true })))
}

/// `listTags`.
pub(super) fn list_tags(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let items = ctx
        .db
        .tags
        .iter()
        .filter(|t| ctx.visible(&t.account_id))
        .filter(|t| ctx.filter_matches("resourceid", &t.resource_id))
        .filter(|t| {
            ctx.params
                .get("resourcetype")
                .is_none_or(|r| r.eq_ignore_ascii_case(&t.resource_type))
        })
        .filter(|t| ctx.filter_matches("key", &t.key) && ctx.filter_matches("value", &t.value))
        .map(|t| {
            json!({
                "key": t.key,
                "value": t.value,
                "resourceid": t.resource_id,
                "resourcetype": t.resource_type,
                "account": super::account_name(ctx.db, &t.account_id),
                "domainid": account_domain(ctx.db, &t.account_id),
            })
        })
        .collect();
    Ok(Outcome::Sync(list_response(ctx.params, "tag", items)?))
}

/// The job object of `queryAsyncJobResult` and `listAsyncJobs`.
pub(crate) fn render_job(db: &Db, job: &Job) -> Value {
    let user = db.users.iter().find(|u| u.id == job.user_id);
    let mut body = json!({
        "jobid": job.id,
        "cmd": job.cmd,
        "jobstatus": job.status,
        "jobprocstatus": 0,
        "jobresultcode": job.result_code,
        "jobresulttype": "object",
        "created": job.created,
        "accountid": job.account_id,
        "account": super::account_name(db, &job.account_id),
        "userid": job.user_id,
        "domainid": account_domain(db, &job.account_id),
        "domainpath": domain_path(db, &account_domain(db, &job.account_id)),
        "managementserverid": "cloudsim",
    });
    if let Some(user) = user {
        body["username"] = json!(user.username);
    }
    if job.status != 0 {
        body["jobresult"] = job.result.clone();
    }
    if let Some(completed) = &job.completed {
        body["completed"] = json!(completed);
    }
    if let Some(t) = &job.instance_type {
        body["jobinstancetype"] = json!(t);
    }
    if let Some(i) = &job.instance_id {
        body["jobinstanceid"] = json!(i);
    }
    body
}

/// `queryAsyncJobResult jobid=…`.
pub(super) fn query_async_job_result(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let id = ctx.params.require(ctx.command, "jobid")?;
    let job = ctx
        .db
        .jobs
        .iter()
        .find(|j| j.id == id)
        .ok_or_else(|| ApiError::param(format!("Unable to find a job by id {id}")))?;
    ctx.check_access(&job.account_id, id)?;
    Ok(Outcome::Sync(render_job(ctx.db, job)))
}

/// `listAsyncJobs`.
pub(super) fn list_async_jobs(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let items = ctx
        .db
        .jobs
        .iter()
        .filter(|j| ctx.visible(&j.account_id))
        .map(|j| render_job(ctx.db, j))
        .collect();
    Ok(Outcome::Sync(list_response(
        ctx.params,
        "asyncjobs",
        items,
    )?))
}

/// `createRole name type` (admin): a role with no rules yet.
pub(super) fn create_role(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let name = ctx.params.require(ctx.command, "name")?.to_owned();
    let role_type = ctx.params.require(ctx.command, "type")?.to_owned();
    if !["Admin", "User"].contains(&role_type.as_str()) {
        return Err(ApiError::param(format!(
            "Invalid role type {role_type}; the simulator has Admin and User roles"
        )));
    }
    let role = Role {
        id: new_id(),
        name,
        role_type,
    };
    let body = json!({ "role": { "id": role.id, "name": role.name, "type": role.role_type } });
    ctx.db.roles.push(role);
    Ok(Outcome::Sync(body))
}

fn render_permission(db: &Db, p: &RolePermission) -> Value {
    let role_name = db
        .roles
        .iter()
        .find(|r| r.id == p.role_id)
        .map(|r| r.name.clone());
    json!({
        "id": p.id,
        "roleid": p.role_id,
        "rolename": role_name,
        "rule": p.rule,
        "permission": p.permission,
    })
}

/// `createRolePermission roleid rule permission` (admin): a rule after the role's others.
pub(super) fn create_role_permission(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let role_id = ctx.params.require(ctx.command, "roleid")?.to_owned();
    if !ctx.db.roles.iter().any(|r| r.id == role_id) {
        return Err(ApiError::param(format!(
            "Unable to find role by id {role_id}"
        )));
    }
    let rule = ctx.params.require(ctx.command, "rule")?.to_owned();
    if !rule.chars().all(|c| c.is_ascii_alphanumeric() || c == '*') {
        return Err(ApiError::param(format!("Invalid rule {rule}")));
    }
    let permission = ctx
        .params
        .require(ctx.command, "permission")?
        .to_ascii_lowercase();
    if permission != "allow" && permission != "deny" {
        return Err(ApiError::param(
            "Values for permission parameter should be: allow or deny",
        ));
    }
    let created = RolePermission {
        id: new_id(),
        role_id,
        rule,
        permission,
    };
    let body = json!({ "rolepermission": render_permission(ctx.db, &created) });
    ctx.db.role_permissions.push(created);
    Ok(Outcome::Sync(body))
}

/// `listRolePermissions roleid` (admin): a role's rules in the order they apply. The
/// built-in roles: Root Admin allows `*`; User has no rules (the commands' own defaults).
pub(super) fn list_role_permissions(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let role_id = ctx.params.get("roleid");
    let mut items: Vec<Value> = ctx
        .db
        .role_permissions
        .iter()
        .filter(|p| role_id.is_none_or(|id| id == p.role_id))
        .map(|p| render_permission(ctx.db, p))
        .collect();
    if role_id == Some(ROOT_ADMIN_ROLE_ID) {
        items.push(json!({
            "id": "00000000-0000-0000-0000-0000000000a1",
            "roleid": ROOT_ADMIN_ROLE_ID,
            "rolename": "Root Admin",
            "rule": "*",
            "permission": "allow",
        }));
    }
    Ok(Outcome::Sync(list_response(
        ctx.params,
        "rolepermission",
        items,
    )?))
}

/// `disableAccount id lock` (admin): `disabled`, or `locked` with `lock=true`.
pub(super) fn disable_account(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let lock = ctx.params.bool("lock", false)?;
    set_account_state(ctx, if lock { "locked" } else { "disabled" })
}

/// `enableAccount id` (admin).
pub(super) fn enable_account(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    set_account_state(ctx, "enabled")
}

fn set_account_state(ctx: &mut Ctx<'_>, state: &str) -> Result<Outcome, ApiError> {
    let id = ctx.params.require(ctx.command, "id")?.to_owned();
    let account = ctx
        .db
        .accounts
        .iter_mut()
        .find(|a| a.id == id)
        .ok_or_else(|| ApiError::param(format!("Unable to find account by id {id}")))?;
    account.state = state.to_owned();
    let account = account.clone();
    Ok(Outcome::Sync(
        json!({ "account": render_account(ctx.db, &account) }),
    ))
}
