//! Async jobs (`queryAsyncJobResult`, `listAsyncJobs`), the `cloud.kubernetes.*` settings
//! (`listConfigurations`, `updateConfiguration`, `resetConfiguration`) and API discovery
//! (`listApis`), each merged with CloudStack's own where CloudStack has some.

use serde_json::{Value, json};

use super::{KUBERNETES_COMMANDS, kubernetes_command, list_reply};
use crate::api::error::ApiError;
use crate::api::params::Params;
use crate::api::{Api, Reply};
use crate::cloudstack::Caller;
use crate::settings::{DEFINITIONS, Definition, SERVICE_ENABLED, Scope, definition};

/// True for the keys the controller owns.
pub fn is_our_setting(name: &str) -> bool {
    definition(name).is_some()
}

/// `queryAsyncJobResult jobid` for one of our jobs (the submitter's account, or admins).
///
/// # Errors
/// Unknown, or another account's outside the caller's domain tree (answered alike, 431).
pub fn query_job(api: &Api, caller: &Caller, params: &Params) -> Result<Reply, ApiError> {
    let job_id = params.require("jobid")?;
    // Another account's job is answered as CloudStack answers a job id it does not know, so
    // the answer tells nothing about which ids exist (or whose they are).
    let job = api
        .ctx
        .jobs
        .get(job_id)?
        .filter(|job| job.account_id == caller.account_id || caller.manages_domain(&job.domain_id))
        .ok_or_else(|| ApiError::param(format!("Unable to find a job by id {job_id}")))?;
    Ok(Reply::Sync(crate::jobs::render(&job)))
}

/// CloudStack's `listAsyncJobs` answer plus the caller's jobs of the controller.
///
/// # Errors
/// Store failures.
pub fn merge_jobs(
    api: &Api,
    caller: &Caller,
    params: &Params,
    upstream: Value,
) -> Result<Reply, ApiError> {
    let paging = params.paging()?;
    let listall = params.boolean("listall")?.unwrap_or(false);
    let mut items: Vec<Value> = upstream
        .get("asyncjobs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ours = api
        .ctx
        .store
        .jobs()?
        .into_iter()
        .filter(|j| {
            j.account_id == caller.account_id || (listall && caller.manages_domain(&j.domain_id))
        })
        .map(|j| crate::jobs::render(&j));
    items.extend(ours);
    Ok(list_reply("asyncjobs", items, paging))
}

fn setting_object(
    api: &Api,
    def: &Definition,
    account_id: Option<&str>,
) -> Result<Value, ApiError> {
    let value = api.ctx.settings.get(def.name, account_id)?;
    let mut out = json!({
        "name": def.name,
        "value": value,
        "defaultvalue": def.default,
        "category": "Advanced",
        "component": "KubernetesClusterService",
        "description": def.description,
        "type": def.kind.as_str(),
        "isdynamic": def.dynamic,
        "scope": match def.scope { Scope::Global => "global", Scope::Account => "account" },
    });
    if let Some(account) = account_id {
        out["scope"] = json!("account");
        out["id"] = json!(account);
    }
    Ok(out)
}

/// `listConfigurations`: ours alone when `name` is one of ours, else CloudStack's list
/// (`upstream`) with ours added (filtered by `name`, `keyword`, `category`).
///
/// # Errors
/// Users (admin command, 432); paging.
pub fn list_configurations(
    api: &Api,
    caller: &Caller,
    params: &Params,
    upstream: Option<Value>,
) -> Result<Reply, ApiError> {
    if !caller.is_admin() {
        return Err(ApiError::unknown_command(params.command(), &caller.user_id));
    }
    let paging = params.paging()?;
    let account_id = params.get("accountid");
    let keyword = params.get("keyword").map(str::to_lowercase);
    let category = params.get("category");
    let mut items: Vec<Value> = upstream
        .as_ref()
        .and_then(|u| u.get("configuration"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // CloudStack may know keys of the same names (a CKS plugin): ours win.
    items.retain(|item| {
        item.get("name")
            .and_then(Value::as_str)
            .is_none_or(|n| !is_our_setting(n))
    });
    for def in DEFINITIONS {
        let matches = params.get("name").is_none_or(|n| n == def.name)
            && keyword
                .as_ref()
                .is_none_or(|k| def.name.to_lowercase().contains(k))
            && category.is_none_or(|c| c.eq_ignore_ascii_case("Advanced"))
            && (account_id.is_none() || def.scope == Scope::Account);
        if matches {
            items.push(setting_object(api, def, account_id)?);
        }
    }
    Ok(list_reply("configuration", items, paging))
}

/// `updateConfiguration name value [accountid]` for one of our keys (admin).
///
/// # Errors
/// Users; an invalid value or scope.
pub fn update_configuration(
    api: &Api,
    caller: &Caller,
    params: &Params,
) -> Result<Reply, ApiError> {
    if !caller.is_admin() {
        return Err(ApiError::unknown_command(params.command(), &caller.user_id));
    }
    let name = params.require("name")?;
    let value = params.get("value").unwrap_or_default();
    let account_id = params.get("accountid");
    api.ctx.settings.set(name, account_id, value)?;
    let def = definition(name).ok_or_else(|| ApiError::param(format!("unknown setting {name}")))?;
    tracing::info!(setting = name, "setting updated");
    Ok(Reply::Sync(
        json!({ "configuration": setting_object(api, def, account_id)? }),
    ))
}

/// `resetConfiguration name [accountid]`: back to the default.
///
/// # Errors
/// Users; store failures.
pub fn reset_configuration(api: &Api, caller: &Caller, params: &Params) -> Result<Reply, ApiError> {
    if !caller.is_admin() {
        return Err(ApiError::unknown_command(params.command(), &caller.user_id));
    }
    let name = params.require("name")?;
    let def = definition(name).ok_or_else(|| ApiError::param(format!("unknown setting {name}")))?;
    let account_id = params.get("accountid");
    api.ctx.settings.set(name, account_id, def.default)?;
    Ok(Reply::Sync(
        json!({ "configuration": setting_object(api, def, account_id)? }),
    ))
}

fn api_object(info: &super::CommandInfo) -> Value {
    let lower = info.name.to_lowercase();
    json!({
        "name": info.name,
        "description": info.description,
        "isasync": info.is_async,
        "since": "4.14.0",
        "related": "",
        "params": [],
        "response": [],
        "typeName": lower,
    })
}

/// CloudStack's `listApis` answer with the Kubernetes commands added (or removed, when the
/// service is disabled), as a CloudStack with CKS would list them.
pub fn merge_apis(api: &Api, caller: &Caller, params: &Params, upstream: Value) -> Reply {
    let enabled = api.ctx.settings.flag(SERVICE_ENABLED);
    let mut items: Vec<Value> = upstream
        .get("api")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    items.retain(|item| {
        item.get("name")
            .and_then(Value::as_str)
            .is_none_or(|n| kubernetes_command(n).is_none())
    });
    if enabled {
        let wanted = params.get("name");
        items.extend(
            KUBERNETES_COMMANDS
                .iter()
                .filter(|c| wanted.is_none_or(|w| w.eq_ignore_ascii_case(c.name)))
                .filter(|c| super::permitted(caller, c))
                .map(api_object),
        );
    }
    if items.is_empty() {
        return Reply::Sync(json!({}));
    }
    Reply::Sync(json!({ "count": items.len(), "api": items }))
}
