//! The commands the controller answers, by family: [`versions`], [`create`], [`clusters`]
//! (list, kubeconfig, stop, start, delete), [`scale`], [`upgrade`], and [`misc`] (async jobs,
//! settings, API discovery).

pub mod clusters;
pub mod create;
pub mod events;
pub mod misc;
pub mod scale;
pub mod upgrade;
pub mod versions;

use serde_json::{Value, json};

use super::error::ApiError;
use super::params::{Paging, Params};
use super::{Api, Reply};
use crate::cloudstack::Caller;
use crate::settings::SERVICE_ENABLED;

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Answered by the controller.
    Ours,
    /// CloudStack answers; the controller adds its own items.
    Merged,
    /// Forwarded to CloudStack unchanged.
    CloudStack,
}

/// A Kubernetes command: name, whether only root admins may call it, whether it is async, and
/// its description for `listApis`.
#[derive(Debug, Clone, Copy)]
pub struct CommandInfo {
    /// CKS's command name.
    pub name: &'static str,
    /// Root admins only (others get 432, as CloudStack hides commands a role lacks).
    pub admin_only: bool,
    /// Answers with a job id.
    pub is_async: bool,
    /// For `listApis`.
    pub description: &'static str,
}

/// Every Kubernetes command the controller serves.
pub const KUBERNETES_COMMANDS: &[CommandInfo] = &[
    CommandInfo {
        name: "addKubernetesSupportedVersion",
        admin_only: true,
        is_async: false,
        description: "Add a supported Kubernetes version",
    },
    CommandInfo {
        name: "listKubernetesSupportedVersions",
        admin_only: false,
        is_async: false,
        description: "Lists supported Kubernetes version",
    },
    CommandInfo {
        name: "updateKubernetesSupportedVersion",
        admin_only: true,
        is_async: false,
        description: "Update a supported Kubernetes version",
    },
    CommandInfo {
        name: "deleteKubernetesSupportedVersion",
        admin_only: true,
        is_async: true,
        description: "Deletes a Kubernetes cluster",
    },
    CommandInfo {
        name: "createKubernetesCluster",
        admin_only: false,
        is_async: true,
        description: "Creates a Kubernetes cluster",
    },
    CommandInfo {
        name: "listKubernetesClusters",
        admin_only: false,
        is_async: false,
        description: "Lists Kubernetes clusters",
    },
    CommandInfo {
        name: "getKubernetesClusterConfig",
        admin_only: false,
        is_async: false,
        description: "Get Kubernetes cluster config",
    },
    CommandInfo {
        name: "startKubernetesCluster",
        admin_only: false,
        is_async: true,
        description: "Starts a stopped Kubernetes cluster",
    },
    CommandInfo {
        name: "stopKubernetesCluster",
        admin_only: false,
        is_async: true,
        description: "Stops a running Kubernetes cluster",
    },
    CommandInfo {
        name: "deleteKubernetesCluster",
        admin_only: false,
        is_async: true,
        description: "Deletes a Kubernetes cluster",
    },
    CommandInfo {
        name: "scaleKubernetesCluster",
        admin_only: false,
        is_async: true,
        description: "Scales a created, running or stopped CloudManaged Kubernetes cluster",
    },
    CommandInfo {
        name: "upgradeKubernetesCluster",
        admin_only: false,
        is_async: true,
        description: "Upgrades a running CloudManaged Kubernetes cluster",
    },
    // Ours, in CKS's naming: CKS has no history of a cluster's operations.
    CommandInfo {
        name: "listKubernetesClusterEvents",
        admin_only: false,
        is_async: false,
        description: "Lists the events of a Kubernetes cluster: its operations and their steps, newest first",
    },
];

/// The command's entry, if it is a Kubernetes command (names are case-insensitive).
pub fn kubernetes_command(name: &str) -> Option<&'static CommandInfo> {
    KUBERNETES_COMMANDS
        .iter()
        .find(|c| c.name.eq_ignore_ascii_case(name))
}

/// Decides where a request goes (no authentication yet; nothing is revealed by routing).
pub async fn route(api: &Api, params: &Params) -> Route {
    let command = params.command();
    if kubernetes_command(command).is_some() {
        return Route::Ours;
    }
    match command.to_ascii_lowercase().as_str() {
        "queryasyncjobresult" => {
            // Only a signed request costs a look-up (a UI session's goes to CloudStack).
            let signed = params.get("apikey").is_some() && params.get("signature").is_some();
            let ours = signed
                && params
                    .get("jobid")
                    .is_some_and(|id| matches!(api.ctx.jobs.get(id), Ok(Some(_))));
            if ours { Route::Ours } else { Route::CloudStack }
        }
        "listconfigurations" => {
            if params.get("name").is_some_and(misc::is_our_setting) {
                Route::Ours
            } else {
                Route::Merged
            }
        }
        "updateconfiguration" | "resetconfiguration" => {
            if params.get("name").is_some_and(misc::is_our_setting) {
                Route::Ours
            } else {
                Route::CloudStack
            }
        }
        // One of ours by name: CloudStack does not know it (its API discovery answers 530).
        "listapis"
            if params
                .get("name")
                .is_some_and(|n| kubernetes_command(n).is_some()) =>
        {
            Route::Ours
        }
        "listapis" | "listasyncjobs" => Route::Merged,
        _ => Route::CloudStack,
    }
}

/// Runs one of our commands for `caller`.
///
/// # Errors
/// The command's CloudStack-shaped error.
pub async fn dispatch(api: &Api, caller: &Caller, params: &Params) -> Result<Reply, ApiError> {
    let command = params.command();
    if let Some(info) = kubernetes_command(command) {
        if !api.ctx.settings.flag(SERVICE_ENABLED) || !permitted(caller, info) {
            // CloudStack does not register the commands when the plugin is off, and hides
            // commands a role lacks.
            return Err(ApiError::unknown_command(command, &caller.user_id));
        }
        return match info.name {
            "addKubernetesSupportedVersion" => versions::add(api, params).await,
            "listKubernetesSupportedVersions" => versions::list(api, params).await,
            "updateKubernetesSupportedVersion" => versions::update(api, params).await,
            "deleteKubernetesSupportedVersion" => versions::delete(api, caller, params).await,
            "createKubernetesCluster" => create::create(api, caller, params).await,
            "listKubernetesClusters" => clusters::list(api, caller, params).await,
            "getKubernetesClusterConfig" => clusters::config(api, caller, params).await,
            "startKubernetesCluster" => clusters::start(api, caller, params).await,
            "stopKubernetesCluster" => clusters::stop(api, caller, params).await,
            "deleteKubernetesCluster" => clusters::delete(api, caller, params).await,
            "scaleKubernetesCluster" => scale::scale(api, caller, params).await,
            "upgradeKubernetesCluster" => upgrade::upgrade(api, caller, params).await,
            "listKubernetesClusterEvents" => events::list(api, caller, params).await,
            _ => Err(ApiError::unknown_command(command, &caller.user_id)),
        };
    }
    // CloudStack's own commands that we answer for our jobs and settings: the caller's role
    // decides as it would in CloudStack (their defaults: everyone, settings admins only).
    let canonical = match command.to_ascii_lowercase().as_str() {
        "queryasyncjobresult" => "queryAsyncJobResult",
        "listconfigurations" => "listConfigurations",
        "updateconfiguration" => "updateConfiguration",
        "resetconfiguration" => "resetConfiguration",
        "listapis" => "listApis",
        _ => return Err(ApiError::unknown_command(command, &caller.user_id)),
    };
    let by_default = matches!(canonical, "queryAsyncJobResult" | "listApis") || caller.is_admin();
    if !caller.may(canonical, by_default) {
        return Err(ApiError::unknown_command(command, &caller.user_id));
    }
    match command.to_ascii_lowercase().as_str() {
        "queryasyncjobresult" => misc::query_job(api, caller, params),
        "listconfigurations" => misc::list_configurations(api, caller, params, None),
        "updateconfiguration" => misc::update_configuration(api, caller, params),
        "resetconfiguration" => misc::reset_configuration(api, caller, params),
        "listapis" => Ok(misc::merge_apis(api, caller, params, json!({}))),
        _ => Err(ApiError::unknown_command(command, &caller.user_id)),
    }
}

/// Whether `caller`'s role lets them run one of our Kubernetes commands: the role's rules,
/// else CKS's declared roles (version management for admins, the rest for everyone).
pub fn permitted(caller: &Caller, info: &CommandInfo) -> bool {
    caller.may(info.name, !info.admin_only || caller.is_admin())
}

/// Adds the controller's items to CloudStack's answer of a merged list command.
///
/// # Errors
/// CloudStack's answer is not JSON; our part failed.
pub async fn merge(
    api: &Api,
    caller: &Caller,
    params: &Params,
    upstream: &[u8],
) -> Result<Reply, ApiError> {
    let command = params.command().to_ascii_lowercase();
    let body: Value = serde_json::from_slice(upstream)
        .map_err(|_| ApiError::internal("CloudStack answered with something that is not JSON"))?;
    let inner = body
        .get(format!("{command}response"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    match command.as_str() {
        "listapis" => Ok(misc::merge_apis(api, caller, params, inner)),
        "listasyncjobs" => misc::merge_jobs(api, caller, params, inner),
        "listconfigurations" => misc::list_configurations(api, caller, params, Some(inner)),
        _ => Ok(Reply::Sync(inner)),
    }
}

/// A page of `items` as `{count, <key>: [...]}`, or `{}` when nothing matches (CloudStack's
/// shape).
pub fn list_reply(key: &str, items: Vec<Value>, paging: Paging) -> Reply {
    if items.is_empty() {
        return Reply::Sync(json!({}));
    }
    let count = items.len();
    let page: Vec<Value> = items
        .into_iter()
        .skip(paging.offset)
        .take(paging.limit)
        .collect();
    if page.is_empty() {
        return Reply::Sync(json!({ "count": count }));
    }
    Reply::Sync(json!({ "count": count, key: page }))
}
