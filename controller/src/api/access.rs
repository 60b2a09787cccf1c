//! Who may see and act on a cluster: CloudStack's own access model, applied to clusters.
//!
//! - An account's cluster is managed by that account, by root admins, and by domain admins
//!   whose domain tree holds the account's domain.
//! - A project's cluster (made with `projectid`) is managed by the project's members and by
//!   admins of its domain. Membership is CloudStack's answer to `listProjects id=…` asked
//!   with the caller's own keys, so CloudStack's rules decide, never a copy of them.
//! - Lists follow CloudStack's list rules (`buildACLSearchParameters`): a caller's own
//!   clusters by default; an admin's wider view with `listall`, `domainid` (and below it with
//!   `isrecursive`), `account` or `id`; project clusters only with `projectid` (`-1`: every
//!   project the caller can see) or asked for by `id` (CloudStack leaves its project
//!   criterion unset when an id is given).
//!
//! Anything the caller may not see is answered exactly as an unknown id.

use std::collections::HashSet;

use super::Api;
use super::error::ApiError;
use super::params::Params;
use crate::cloudstack::types::{Domain, Project};
use crate::cloudstack::{Caller, CloudStackError};
use crate::store::ClusterRecord;

/// The projects the caller can see, as CloudStack lists them for the caller: `id` alone, or
/// every one (`listall`). A project the caller may not see is simply absent.
///
/// # Errors
/// CloudStack could not be asked.
pub async fn visible_projects(
    api: &Api,
    caller: &Caller,
    id: Option<&str>,
) -> Result<Vec<Project>, ApiError> {
    let seen = api.ctx.cloud.as_caller(caller);
    let params: &[(&str, &str)] = match id {
        Some(id) => &[("id", id)],
        None => &[("listall", "true")],
    };
    match seen.client().list_all::<Project>(params).await {
        Ok(projects) => Ok(projects
            .into_iter()
            .filter(|p| id.is_none_or(|id| p.id == id))
            .collect()),
        // An id CloudStack does not know, or may not show the caller.
        Err(err) if matches!(err.errorcode(), Some(431 | 531)) => Ok(Vec::new()),
        Err(err) => Err(ApiError::from(&err)),
    }
}

/// The project `id`, when the caller can see it.
///
/// # Errors
/// 431 "Unable to find project by id" for a project that is unknown or not the caller's.
pub async fn project(api: &Api, caller: &Caller, id: &str) -> Result<Project, ApiError> {
    visible_projects(api, caller, Some(id))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::param(format!("Unable to find project by id {id}")))
}

/// True when the caller manages `cluster` without asking CloudStack: root admins, admins of
/// the owner's domain, and the owning account. Project clusters need [`may_see`].
fn manages_directly(caller: &Caller, cluster: &ClusterRecord) -> bool {
    caller.is_admin()
        || caller.manages_domain(&cluster.owner.domain_id)
        || (cluster.owner.project.is_none() && cluster.owner.account_id == caller.account_id)
}

/// True when the caller may see and act on `cluster`.
///
/// # Errors
/// CloudStack could not be asked about a project's members.
pub async fn may_see(
    api: &Api,
    caller: &Caller,
    cluster: &ClusterRecord,
) -> Result<bool, ApiError> {
    if manages_directly(caller, cluster) {
        return Ok(true);
    }
    match &cluster.owner.project {
        Some(project) => Ok(!visible_projects(api, caller, Some(&project.id))
            .await?
            .is_empty()),
        None => Ok(false),
    }
}

/// Which clusters a `listKubernetesClusters` asks for, before its simple filters (`id`,
/// `name`, `state`, `keyword`).
#[derive(Debug)]
pub struct ListScope {
    /// `projectid` given: the projects asked for that the caller can see.
    projects: Option<HashSet<String>>,
    /// `id` given without `projectid`, naming a project's cluster the caller may see: that
    /// project.
    id_project: Option<String>,
    /// `domainid` given: that domain, or its tree with `isrecursive`/`listall`.
    domains: Option<HashSet<String>>,
    /// `account` given: its name, in `domainid` or the caller's domain.
    account: Option<(String, String)>,
    /// Others' clusters are asked for (`listall`, `id`, `account`, `domainid`).
    wide: bool,
}

// === impl ListScope ===

impl ListScope {
    /// The scope of `params` for `caller`.
    ///
    /// # Errors
    /// 431 for a project the caller cannot see; CloudStack could not be asked.
    pub async fn new(api: &Api, caller: &Caller, params: &Params) -> Result<Self, ApiError> {
        let listall = params.boolean("listall")?.unwrap_or(false);
        let recursive = params.boolean("isrecursive")?.unwrap_or(false) || listall;
        let projects = match params.get("projectid") {
            None => None,
            Some("-1") => Some(
                visible_projects(api, caller, None)
                    .await?
                    .into_iter()
                    .map(|p| p.id)
                    .collect(),
            ),
            Some(id) => Some(HashSet::from([project(api, caller, id).await?.id])),
        };
        let id_project = match (params.get("id"), &projects) {
            (Some(id), None) => match api.ctx.store.cluster(id)? {
                Some(cluster) if cluster.owner.project.is_some() => {
                    if may_see(api, caller, &cluster).await? {
                        cluster.owner.project.map(|p| p.id)
                    } else {
                        None
                    }
                }
                _ => None,
            },
            _ => None,
        };
        let domains = match params.get("domainid") {
            None => None,
            Some(id) if recursive => Some(domain_tree(api, id).await?),
            Some(id) => Some(HashSet::from([id.to_owned()])),
        };
        let account = params.get("account").map(|name| {
            let domain = params.get("domainid").unwrap_or(&caller.domain_id);
            (name.to_owned(), domain.to_owned())
        });
        let wide = listall || params.get("id").is_some() || account.is_some() || domains.is_some();
        Ok(ListScope {
            projects,
            id_project,
            domains,
            account,
            wide,
        })
    }

    /// True when the list shows `cluster` to `caller`.
    pub fn shows(&self, caller: &Caller, cluster: &ClusterRecord) -> bool {
        let owner = &cluster.owner;
        match (&self.projects, &owner.project) {
            // Project lists: the projects asked for, already checked as the caller sees them.
            (Some(asked), Some(project)) => return asked.contains(&project.id),
            (None, Some(project)) => return self.id_project.as_ref() == Some(&project.id),
            (Some(_), None) => return false,
            (None, None) => {}
        }
        if !manages_directly(caller, cluster) {
            return false;
        }
        if let Some((name, domain)) = &self.account
            && (&owner.account != name || &owner.domain_id != domain)
        {
            return false;
        }
        if let Some(domains) = &self.domains
            && !domains.contains(&owner.domain_id)
        {
            return false;
        }
        owner.account_id == caller.account_id || self.wide
    }
}

/// Domain `id` and every domain below it. Visibility is checked per cluster, so this asks
/// with the controller's own keys.
async fn domain_tree(api: &Api, id: &str) -> Result<HashSet<String>, ApiError> {
    let below = match api
        .ctx
        .cloud
        .client()
        .list_all::<Domain>(&[("id", id), ("isrecursive", "true"), ("listall", "true")])
        .await
    {
        Ok(below) => below,
        Err(err) if matches!(err.errorcode(), Some(431 | 531)) => Vec::new(),
        Err(err) => return Err(ApiError::from(&err as &CloudStackError)),
    };
    let mut tree: HashSet<String> = below.into_iter().map(|d| d.id).collect();
    tree.insert(id.to_owned());
    Ok(tree)
}
