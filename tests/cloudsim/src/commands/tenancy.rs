//! Domains and projects: CloudStack's tenancy beyond one account.
//!
//! - Domains form a tree under ROOT. A domain admin (accounttype 2) manages every account whose
//!   domain is its own or below it; a root admin manages all.
//! - A project owns its resources through its own account (accounttype 5, `PrjAcct-…`). Its
//!   member accounts manage them; lists show them only with `projectid` (`-1`: every project
//!   the caller may see), as CloudStack's `ListProjectResourcesCriteria` does.

use serde_json::{Value, json};

use super::{Ctx, Outcome, list_response};
use crate::error::ApiError;
use crate::model::{Account, Db, Domain, Project};
use crate::store::{self, new_id};

/// ROOT's id.
pub(crate) fn root_id(db: &Db) -> String {
    db.domain.as_ref().map(|d| d.id.clone()).unwrap_or_default()
}

/// The domain `id` (ROOT or a subdomain).
pub(crate) fn find_domain<'d>(db: &'d Db, id: &str) -> Option<&'d Domain> {
    db.domain
        .iter()
        .chain(db.subdomains.iter())
        .find(|d| d.id == id)
}

/// The domain account `account_id` belongs to (ROOT when unknown).
pub(crate) fn account_domain(db: &Db, account_id: &str) -> String {
    db.accounts
        .iter()
        .find(|a| a.id == account_id)
        .and_then(|a| a.domain_id.clone())
        .unwrap_or_else(|| root_id(db))
}

/// A domain's name (`ROOT` for ROOT).
pub(crate) fn domain_name(db: &Db, id: &str) -> String {
    find_domain(db, id)
        .map(|d| d.name.clone())
        .unwrap_or_else(|| "ROOT".into())
}

/// A domain's path, as CloudStack shows it: `ROOT`, `ROOT/eng`, `ROOT/eng/web`.
pub(crate) fn domain_path(db: &Db, id: &str) -> String {
    let mut names = Vec::new();
    let mut next = find_domain(db, id);
    // Bounded by the number of domains: a parent cycle cannot loop forever.
    for _ in 0..=db.subdomains.len() {
        let Some(domain) = next else { break };
        names.push(domain.name.clone());
        next = domain.parent_id.as_deref().and_then(|p| find_domain(db, p));
    }
    names.reverse();
    names.join("/")
}

/// True when domain `id` is `ancestor` or below it.
pub(crate) fn in_tree(db: &Db, ancestor: &str, id: &str) -> bool {
    let mut next = Some(id.to_owned());
    for _ in 0..=db.subdomains.len() {
        let Some(current) = next else { return false };
        if current == ancestor {
            return true;
        }
        next = find_domain(db, &current).and_then(|d| d.parent_id.clone());
    }
    false
}

/// The (non-project) account named `name` in domain `domain`: account names are unique per
/// domain, not across domains.
pub(crate) fn account_named<'d>(db: &'d Db, name: &str, domain: &str) -> Option<&'d Account> {
    db.accounts
        .iter()
        .find(|a| a.name == name && a.project_id.is_none() && account_domain(db, &a.id) == domain)
}

/// The project whose own account is `account_id`.
pub(crate) fn project_of<'d>(db: &'d Db, account_id: &str) -> Option<&'d Project> {
    let project_id = db
        .accounts
        .iter()
        .find(|a| a.id == account_id)?
        .project_id
        .as_deref()?;
    db.projects.iter().find(|p| p.id == project_id)
}

/// CloudStack's `accounttype`: 0 user, 1 root admin, 2 domain admin, 5 project.
pub(crate) fn account_type(account: &Account) -> u8 {
    if account.admin {
        1
    } else if account.domain_admin {
        2
    } else if account.project_id.is_some() {
        5
    } else {
        0
    }
}

fn render_domain(db: &Db, d: &Domain) -> Value {
    let level = domain_path(db, &d.id).matches('/').count();
    let mut body = json!({
        "id": d.id,
        "name": d.name,
        "level": level,
        "path": domain_path(db, &d.id),
        "haschild": db.subdomains.iter().any(|c| c.parent_id.as_deref() == Some(&d.id)),
        "state": "Active",
    });
    if let Some(parent) = &d.parent_id {
        body["parentdomainid"] = json!(parent);
        body["parentdomainname"] = json!(domain_name(db, parent));
    }
    body
}

// === impl Ctx ===

impl Ctx<'_> {
    /// The domain the caller administers or lives in.
    pub(super) fn caller_domain(&self) -> String {
        account_domain(self.db, &self.caller.account_id)
    }

    /// 531 unless the caller manages domain `id` (root admins all, domain admins their tree).
    pub(super) fn check_domain(&self, id: &str) -> Result<(), ApiError> {
        let ok = self.caller.admin
            || (self.caller.domain_admin && in_tree(self.db, &self.caller_domain(), id));
        if ok {
            Ok(())
        } else {
            Err(ApiError::permission(format!(
                "Account {} does not have permission to operate within domain id={id}",
                self.caller.account_name
            )))
        }
    }

    /// The domain named by `domainid` (the caller's when absent), which must exist.
    pub(super) fn domain_param(&self) -> Result<String, ApiError> {
        let Some(id) = self.params.get("domainid") else {
            return Ok(self.caller_domain());
        };
        find_domain(self.db, id)
            .map(|d| d.id.clone())
            .ok_or_else(|| ApiError::param(format!("Unable to find domain by id {id}")))
    }

    /// The project `id`, which the caller must manage (be a member of, or administer its
    /// domain); anyone else is told it does not exist.
    pub(super) fn managed_project(&self, id: &str) -> Result<Project, ApiError> {
        self.db
            .projects
            .iter()
            .find(|p| p.id == id && self.manages(&p.account_id))
            .cloned()
            .ok_or_else(|| ApiError::param(format!("Unable to find project by id {id}")))
    }
}

/// `createDomain name [parentdomainid]` (root and domain admins, under what they manage).
pub(super) fn create_domain(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let name = ctx.params.require(ctx.command, "name")?.to_owned();
    let parent = match ctx.params.get("parentdomainid") {
        Some(id) => find_domain(ctx.db, id)
            .map(|d| d.id.clone())
            .ok_or_else(|| ApiError::param(format!("Unable to find domain by id {id}")))?,
        None => ctx.caller_domain(),
    };
    ctx.check_domain(&parent)?;
    if ctx
        .db
        .subdomains
        .iter()
        .any(|d| d.parent_id.as_deref() == Some(&parent) && d.name.eq_ignore_ascii_case(&name))
    {
        return Err(ApiError::param(format!(
            "Domain with name {name} already exists for the parent id={parent}"
        )));
    }
    let domain = Domain {
        id: new_id(),
        name,
        parent_id: Some(parent),
    };
    ctx.db.subdomains.push(domain.clone());
    Ok(Outcome::Sync(
        json!({ "domain": render_domain(ctx.db, &domain) }),
    ))
}

/// `listDomains [id] [name] [keyword]`: root admins see every domain, domain admins their tree.
pub(super) fn list_domains(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let mine = ctx.caller_domain();
    let items = ctx
        .db
        .domain
        .iter()
        .chain(ctx.db.subdomains.iter())
        .filter(|d| ctx.caller.admin || in_tree(ctx.db, &mine, &d.id))
        .filter(|d| ctx.filter_matches("id", &d.id) && ctx.filter_matches("name", &d.name))
        .filter(|d| ctx.keyword_matches(&d.name))
        .map(|d| render_domain(ctx.db, d))
        .collect();
    Ok(Outcome::Sync(list_response(ctx.params, "domain", items)?))
}

/// `listDomainChildren [id] [isrecursive]`: the domains below `id` (the caller's domain by
/// default): its children, or with `isrecursive=true` every descendant.
pub(super) fn list_domain_children(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let parent = match ctx.params.get("id") {
        Some(id) => find_domain(ctx.db, id)
            .map(|d| d.id.clone())
            .ok_or_else(|| ApiError::param(format!("Unable to find domain by id {id}")))?,
        None => ctx.caller_domain(),
    };
    ctx.check_domain(&parent)?;
    let recursive = ctx.params.bool("isrecursive", false)?;
    let items = ctx
        .db
        .subdomains
        .iter()
        .filter(|d| d.id != parent)
        .filter(|d| {
            if recursive {
                in_tree(ctx.db, &parent, &d.id)
            } else {
                d.parent_id.as_deref() == Some(&parent)
            }
        })
        .filter(|d| ctx.filter_matches("name", &d.name) && ctx.keyword_matches(&d.name))
        .map(|d| render_domain(ctx.db, d))
        .collect();
    Ok(Outcome::Sync(list_response(ctx.params, "domain", items)?))
}

fn render_project(db: &Db, p: &Project) -> Value {
    let account_name = |id: &str| super::account_name(db, id);
    json!({
        "id": p.id,
        "name": p.name,
        "displaytext": p.display_text,
        "domainid": p.domain_id,
        "domain": domain_name(db, &p.domain_id),
        "owner": p.members.first().map(|a| vec![json!({ "account": account_name(a) })]),
        "projectaccountname": account_name(&p.account_id),
        "state": "Active",
        "created": p.created,
    })
}

/// `createProject name displaytext [account domainid]` (async): the caller's account (or, for
/// an admin, `account` in `domainid`) becomes the project's admin; the project gets its own
/// account, which will own what is made in it.
pub(super) fn create_project(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let name = ctx.params.require(ctx.command, "name")?.to_owned();
    let display_text = ctx.params.require(ctx.command, "displaytext")?.to_owned();
    let owner = ctx.owner_for_create()?;
    let domain_id = account_domain(ctx.db, &owner);
    if ctx
        .db
        .projects
        .iter()
        .any(|p| p.domain_id == domain_id && p.name.eq_ignore_ascii_case(&name))
    {
        return Err(ApiError::param(format!(
            "Project with name {name} already exists in domain id={domain_id}"
        )));
    }
    let id = new_id();
    let mut account = Account::new(
        &format!("PrjAcct-{name}-{}", ctx.db.projects.len() + 1),
        false,
    );
    account.domain_id = Some(domain_id.clone());
    account.project_id = Some(id.clone());
    let project = Project {
        id: id.clone(),
        name,
        display_text,
        domain_id,
        account_id: account.id.clone(),
        members: vec![owner],
        created: store::now(),
    };
    let planned = ctx.planned_failure();
    if planned.is_none() {
        ctx.db.accounts.push(account);
        ctx.db.projects.push(project.clone());
    }
    let result = json!({ "project": render_project(ctx.db, &project) });
    let job_id = ctx.submit_job(
        "project.CreateProjectCmd",
        Some(("Project", &id)),
        result,
        crate::model::Completion::Fixed,
        planned,
    );
    Ok(Outcome::Async {
        job_id,
        id: Some(id),
    })
}

/// `listProjects [id] [name] [keyword] [listall]`: the projects the caller is a member of;
/// admins with `listall=true` every project they manage.
pub(super) fn list_projects(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let listall = ctx.params.bool("listall", false)?;
    let me = ctx.caller.account_id.clone();
    let items = ctx
        .db
        .projects
        .iter()
        .filter(|p| {
            p.members.contains(&me)
                || ((listall || ctx.params.get("id").is_some()) && ctx.manages(&p.account_id))
        })
        .filter(|p| ctx.filter_matches("id", &p.id) && ctx.filter_matches("name", &p.name))
        .filter(|p| ctx.filter_matches("domainid", &p.domain_id))
        .filter(|p| ctx.keyword_matches(&p.name))
        .map(|p| render_project(ctx.db, p))
        .collect();
    Ok(Outcome::Sync(list_response(ctx.params, "project", items)?))
}

/// `addAccountToProject projectid account` (async): only the project's admin (its first
/// member) or an admin of its domain adds members.
pub(super) fn add_account_to_project(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let project_id = ctx.params.require(ctx.command, "projectid")?.to_owned();
    let name = ctx.params.require(ctx.command, "account")?.to_owned();
    let project = ctx.managed_project(&project_id)?;
    let is_project_admin = project.members.first() == Some(&ctx.caller.account_id);
    if !is_project_admin && ctx.check_domain(&project.domain_id).is_err() {
        return Err(ApiError::permission(format!(
            "Account {} does not have permission to add accounts to project {}",
            ctx.caller.account_name, project.name
        )));
    }
    let account = account_named(ctx.db, &name, &project.domain_id)
        .map(|a| a.id.clone())
        .ok_or_else(|| {
            ApiError::param(format!(
                "Unable to find account name={name} in domain id={}",
                project.domain_id
            ))
        })?;
    if project.members.contains(&account) {
        return Err(ApiError::param(format!(
            "Account {name} is already assigned to the project id={project_id}"
        )));
    }
    if ctx.planned_failure().is_none()
        && let Some(p) = ctx.db.projects.iter_mut().find(|p| p.id == project_id)
    {
        p.members.push(account);
    }
    Ok(ctx.simple_job(
        "project.AddAccountToProjectCmd",
        Some(("Project", &project_id)),
        json!({ "success": true }),
    ))
}

/// `listProjectAccounts projectid`: the members, `Admin` first, for anyone who manages it.
pub(super) fn list_project_accounts(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let project_id = ctx.params.require(ctx.command, "projectid")?.to_owned();
    let project = ctx.managed_project(&project_id)?;
    let items = project
        .members
        .iter()
        .enumerate()
        .map(|(i, account)| {
            json!({
                "projectid": project.id,
                "project": project.name,
                "account": super::account_name(ctx.db, account),
                "role": if i == 0 { "Admin" } else { "Regular" },
                "domainid": project.domain_id,
                "domain": domain_name(ctx.db, &project.domain_id),
            })
        })
        .filter(|m| ctx.filter_matches("account", m["account"].as_str().unwrap_or_default()))
        .collect();
    Ok(Outcome::Sync(list_response(
        ctx.params,
        "projectaccount",
        items,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db_with_tree() -> Db {
        let mut db = crate::store::seed_with("203.0.113.0/24");
        let root = root_id(&db);
        for (id, name, parent) in [("eng", "eng", root.as_str()), ("web", "web", "eng")] {
            db.subdomains.push(Domain {
                id: id.into(),
                name: name.into(),
                parent_id: Some(parent.into()),
            });
        }
        db
    }

    #[test]
    fn paths_and_trees_follow_the_parents() {
        let db = db_with_tree();
        let root = root_id(&db);
        assert_eq!(domain_path(&db, "web"), "ROOT/eng/web");
        assert_eq!(domain_path(&db, &root), "ROOT");
        assert!(in_tree(&db, &root, "web"));
        assert!(in_tree(&db, "eng", "web"));
        assert!(in_tree(&db, "web", "web"));
        assert!(!in_tree(&db, "web", "eng"));
        assert!(!in_tree(&db, "eng", &root));
    }

    #[test]
    fn a_parent_cycle_ends() {
        let mut db = db_with_tree();
        db.subdomains[0].parent_id = Some("web".into());
        assert!(!in_tree(&db, "other", "web"));
        assert!(domain_path(&db, "web").len() < 64);
    }

    #[test]
    fn account_types_are_cloudstacks_numbers() {
        let mut a = Account::new("a", false);
        assert_eq!(account_type(&a), 0);
        a.domain_admin = true;
        assert_eq!(account_type(&a), 2);
        a.domain_admin = false;
        a.project_id = Some("p".into());
        assert_eq!(account_type(&a), 5);
        assert_eq!(account_type(&Account::new("r", true)), 1);
    }
}
