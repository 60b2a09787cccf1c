//! The API commands: parameter parsing, ownership checks, list/pagination rules and the
//! dispatch from command name to handler. Handlers run with the state lock held and do no I/O;
//! anything slow (job completion, ISO download) is returned as [`Background`] work.

mod catalog;
mod compute;
mod identity;
mod images;
mod keys;
pub(crate) mod limits;
pub(crate) mod network;
mod tenancy;

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use serde_json::{Value, json};

pub(crate) use compute::{capacity_text, render_vm};

/// The downloaded file of ISO `iso_id`, if it is ready and stored.
pub(crate) fn visible_iso_path(db: &Db, iso_id: &str) -> Option<std::path::PathBuf> {
    db.isos
        .iter()
        .find(|i| i.id == iso_id)
        .and_then(|i| i.path.as_ref())
        .map(std::path::PathBuf::from)
}

use crate::error::ApiError;
use crate::faults::{Decision, Faults};
use crate::model::{Account, Completion, Db, Job};
use crate::store::{self, new_id};

/// The largest `pagesize` accepted (`default.page.size`).
pub const DEFAULT_PAGE_SIZE: i64 = 500;
/// Base64 userdata longer than this needs POST (`MAX_HTTP_GET_LENGTH`).
pub const MAX_GET_USERDATA_LENGTH: usize = 4096;

/// Who signed the request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// User id.
    pub user_id: String,
    /// Account id.
    pub account_id: String,
    /// Account name.
    pub account_name: String,
    /// Root admin.
    pub admin: bool,
    /// Domain admin (of its account's domain and everything below it).
    pub domain_admin: bool,
}

/// Decoded request parameters, names as received.
#[derive(Debug, Clone, Default)]
pub struct Params(pub Vec<(String, String)>);

// === impl Params ===

impl Params {
    /// The first non-empty value of `name` (matched case-insensitively).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k.eq_ignore_ascii_case(name) && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    fn require(&self, command: &str, name: &str) -> Result<&str, ApiError> {
        self.get(name)
            .ok_or_else(|| ApiError::missing(command, &[name]))
    }

    fn bool(&self, name: &str, default: bool) -> Result<bool, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(v) => Err(ApiError::param(format!(
                "Invalid parameter {name} value={v}: expected true or false"
            ))),
        }
    }

    fn number<T: std::str::FromStr>(
        &self,
        command: &str,
        name: &str,
    ) -> Result<Option<T>, ApiError> {
        self.get(name)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::param(format!(
                        "Unable to execute API command {} due to invalid value. Invalid parameter {name} value={v} due to incorrect long value format, or entity does not exist or due to incorrect parameter annotation for the field in api cmd class.",
                        command.to_lowercase()
                    ))
                })
            })
            .transpose()
    }

    fn list(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A map parameter's entries with their keys as sent (`details[0].rootDiskController=scsi`
    /// gives `rootDiskController`), every index merged, as CloudStack reads `details`.
    fn details(&self, prefix: &str) -> BTreeMap<String, String> {
        let lead = format!("{}[", prefix.to_lowercase());
        self.0
            .iter()
            .filter(|(k, _)| k.to_lowercase().starts_with(&lead))
            .filter_map(|(k, v)| {
                let (_, field) = k.split_once("].")?;
                Some((field.to_owned(), v.clone()))
            })
            .collect()
    }

    /// Map parameters such as `tags[0].key=k&tags[0].value=v`, by index.
    fn map(&self, prefix: &str) -> Vec<BTreeMap<String, String>> {
        let mut out: BTreeMap<u32, BTreeMap<String, String>> = BTreeMap::new();
        let lead = format!("{}[", prefix.to_lowercase());
        for (k, v) in &self.0 {
            let lower = k.to_lowercase();
            let Some(rest) = lower.strip_prefix(&lead) else {
                continue;
            };
            let Some((index, field)) = rest.split_once("].") else {
                continue;
            };
            if let Ok(index) = index.parse() {
                out.entry(index)
                    .or_default()
                    .insert(field.to_owned(), v.clone());
            }
        }
        out.into_values().collect()
    }
}

/// Work to do after the response, outside the state lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Background {
    /// Complete this async job after the configured job duration.
    Job(String),
    /// Download and verify this ISO.
    DownloadIso(String),
}

/// A change the node runner must make, applied after the command (still under the lock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAction {
    /// Stop the node, keeping its disk (a destroyed VM can still be recovered).
    Stop(String),
    /// Stop the node and remove its disk.
    Destroy(String),
    /// Attach (`Some` ISO id) or detach (`None`) the VM's CD-ROM.
    SetIso(String, Option<String>),
}

/// One request being handled.
pub struct Ctx<'a> {
    /// The state.
    pub db: &'a mut Db,
    /// Who signed.
    pub caller: &'a Caller,
    /// Parameters.
    pub params: &'a Params,
    /// Command name as sent.
    pub command: &'a str,
    /// Fault decisions for this request.
    pub decision: &'a Decision,
    /// The fault layer, for decisions that depend on what the command acts on (VMs that never
    /// boot). Locked after the state, never before it.
    pub faults: &'a Mutex<Faults>,
    /// The request came as GET.
    pub is_get: bool,
    /// Work to start after responding.
    pub background: Vec<Background>,
    /// Node changes to apply.
    pub node_actions: Vec<NodeAction>,
    /// Faults that took effect while handling (for the fault log).
    pub applied_faults: Vec<&'static str>,
}

/// A command's result.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The object inside `<command>response`.
    Sync(Value),
    /// An async job was submitted; `id` is the created entity for create-style commands.
    Async {
        /// Job id.
        job_id: String,
        /// Entity id.
        id: Option<String>,
    },
}

// === impl Outcome ===

impl Outcome {
    /// The object inside `<command>response`.
    pub fn body(&self) -> Value {
        match self {
            Self::Sync(v) => v.clone(),
            Self::Async { job_id, id: None } => json!({ "jobid": job_id }),
            Self::Async {
                job_id,
                id: Some(id),
            } => json!({ "jobid": job_id, "id": id }),
        }
    }
}

/// True for commands that never change state (no save needed).
pub fn is_read_only(command: &str) -> bool {
    command.starts_with("list") || command.starts_with("get") || command == "queryAsyncJobResult"
}

/// Runs one command.
///
/// # Errors
/// The command's CloudStack error, or 432 for unknown commands and admin-only commands called
/// by a user.
pub fn dispatch(ctx: &mut Ctx<'_>) -> Result<Outcome, ApiError> {
    let command = catalog::find(ctx.command)
        .filter(|c| c.access.allows(ctx.caller))
        .ok_or_else(|| ApiError::unknown_command(ctx.command, &ctx.caller.user_id))?;
    (command.handler)(ctx)
}

/// True when `command` is served and answers with a job id.
pub fn is_async(command: &str) -> bool {
    catalog::find(command).is_some_and(|c| c.is_async)
}

// === shared helpers ===

/// Applies `page`/`pagesize` and builds `{count, <key>: [...]}`, or `{}` when nothing matches.
///
/// # Errors
/// 431 for the pagination rule violations CloudStack refuses.
pub fn list_response(params: &Params, key: &str, items: Vec<Value>) -> Result<Value, ApiError> {
    let page: Option<i64> = params.number("list", "page")?;
    let pagesize: Option<i64> = params.number("list", "pagesize")?;
    let (offset, limit) = match (page, pagesize) {
        (None, Some(-1)) => (0, usize::MAX),
        (Some(_), Some(-1)) => {
            return Err(ApiError::param(
                "Can't specify page parameter when pagesize is -1 (Unlimited)",
            ));
        }
        (None, Some(_)) => {
            return Err(ApiError::param(
                "\"page\" parameter is required when \"pagesize\" is specified",
            ));
        }
        (_, Some(size)) if size > DEFAULT_PAGE_SIZE => {
            return Err(ApiError::param(format!(
                "Page size can't exceed max allowed page size value: {DEFAULT_PAGE_SIZE}"
            )));
        }
        (_, Some(size)) if size < 1 => {
            return Err(ApiError::param(format!("Invalid page size: {size}")));
        }
        (Some(page), _) if page < 1 => {
            return Err(ApiError::param(format!("Invalid page number: {page}")));
        }
        (page, size) => {
            let size = size.unwrap_or(DEFAULT_PAGE_SIZE);
            let page = page.unwrap_or(1);
            (
                usize::try_from((page - 1) * size).unwrap_or(usize::MAX),
                usize::try_from(size).unwrap_or(usize::MAX),
            )
        }
    };
    if items.is_empty() {
        return Ok(json!({}));
    }
    let count = items.len();
    let page: Vec<Value> = items.into_iter().skip(offset).take(limit).collect();
    let mut body = json!({ "count": count });
    if !page.is_empty() {
        body[key] = Value::Array(page);
    }
    Ok(body)
}

/// A global setting's value (`None` when the state predates it).
pub(crate) fn setting<'d>(db: &'d Db, name: &str) -> Option<&'d str> {
    db.configurations
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.value.as_str())
}

/// A boolean global setting, `default` when absent or not a boolean.
pub(crate) fn setting_bool(db: &Db, name: &str, default: bool) -> bool {
    match setting(db, name) {
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        _ => default,
    }
}

fn account<'d>(db: &'d Db, id: &str) -> Option<&'d Account> {
    db.accounts.iter().find(|a| a.id == id)
}

fn account_name(db: &Db, id: &str) -> String {
    account(db, id).map(|a| a.name.clone()).unwrap_or_default()
}

fn domain_id(db: &Db) -> String {
    tenancy::root_id(db)
}

fn zone_name(db: &Db, id: &str) -> String {
    db.zones
        .iter()
        .find(|z| z.id == id)
        .map(|z| z.name.clone())
        .unwrap_or_default()
}

/// Owner fields every controlled entity carries: its account, or for a project's resources
/// the project (CloudStack's `populateOwner`), and the owner's domain.
fn owner_fields(db: &Db, account_id: &str, body: &mut Value) {
    if let Some(project) = tenancy::project_of(db, account_id) {
        body["projectid"] = json!(project.id);
        body["project"] = json!(project.name);
    } else {
        body["account"] = json!(account_name(db, account_id));
    }
    let domain = tenancy::account_domain(db, account_id);
    body["domain"] = json!(tenancy::domain_name(db, &domain));
    body["domainpath"] = json!(tenancy::domain_path(db, &domain));
    body["domainid"] = json!(domain);
}

// === impl Ctx ===

impl Ctx<'_> {
    /// True when the caller may act on what account `owner` owns: its own account, any for
    /// root admins, its domain's tree for domain admins, and a project's for its members.
    fn manages(&self, owner: &str) -> bool {
        let db = &*self.db;
        if self.caller.admin || self.caller.account_id == owner {
            return true;
        }
        if self.caller.domain_admin {
            let mine = tenancy::account_domain(db, &self.caller.account_id);
            if tenancy::in_tree(db, &mine, &tenancy::account_domain(db, owner)) {
                return true;
            }
        }
        tenancy::project_of(db, owner).is_some_and(|p| p.members.contains(&self.caller.account_id))
    }

    /// 531 unless the caller manages the entity's owner.
    fn check_access(&self, owner: &str, entity: &str) -> Result<(), ApiError> {
        if self.manages(owner) {
            Ok(())
        } else {
            Err(ApiError::permission(format!(
                "Account {} does not have permission to operate with resource {entity}",
                self.caller.account_name
            )))
        }
    }

    /// Whether a list shows an entity owned by `owner`, as CloudStack's list commands decide:
    /// - `projectid=P` shows project P's entities (`-1`: every project's the caller manages);
    /// - otherwise project entities are left out, unless asked for by `id`;
    /// - own entities are always shown; an admin (root, or domain admin for its tree) sees
    ///   others' with `listall=true`, an `id` filter or an `account` filter, narrowed to
    ///   `domainid` (and below it with `isrecursive=true` or `listall=true`).
    fn visible(&self, owner: &str) -> bool {
        let db = &*self.db;
        let project = tenancy::project_of(db, owner);
        match self.params.get("projectid") {
            Some("-1") => return project.is_some() && self.manages(owner),
            Some(id) => return project.is_some_and(|p| p.id == id) && self.manages(owner),
            None if project.is_some() => {
                return self.params.get("id").is_some() && self.manages(owner);
            }
            None => {}
        }
        if let Some(domain) = self.params.get("domainid") {
            let recursive = self.params.bool("isrecursive", false).unwrap_or(false)
                || self.params.bool("listall", false).unwrap_or(false);
            let theirs = tenancy::account_domain(db, owner);
            let inside = if recursive {
                tenancy::in_tree(db, domain, &theirs)
            } else {
                theirs == domain
            };
            if !inside {
                return false;
            }
        }
        if self.caller.account_id == owner {
            return true;
        }
        (self.caller.admin || self.caller.domain_admin)
            && self.manages(owner)
            && (self.params.bool("listall", false).unwrap_or(false)
                || self.params.get("id").is_some()
                || self.params.get("account").is_some()
                || self.params.get("domainid").is_some())
    }

    /// The account a created entity belongs to: the caller's; project `projectid`'s (for its
    /// members); or `account` of `domainid` (the caller's domain by default) for whoever
    /// manages that account.
    fn owner_for_create(&self) -> Result<String, ApiError> {
        if let Some(id) = self.params.get("projectid") {
            return Ok(self.managed_project(id)?.account_id);
        }
        let Some(name) = self.params.get("account") else {
            return Ok(self.caller.account_id.clone());
        };
        let domain = self.domain_param()?;
        let target = tenancy::account_named(self.db, name, &domain).ok_or_else(|| {
            ApiError::param(format!(
                "Unable to find account {name} in domain {}",
                tenancy::domain_name(self.db, &domain)
            ))
        })?;
        self.check_access(&target.id, &target.id)?;
        Ok(target.id.clone())
    }

    fn filter_matches(&self, name: &str, value: &str) -> bool {
        self.params.get(name).is_none_or(|want| want == value)
    }

    fn keyword_matches(&self, name: &str) -> bool {
        self.params
            .get("keyword")
            .is_none_or(|k| name.to_lowercase().contains(&k.to_lowercase()))
    }

    /// Records an async job and schedules its completion.
    fn submit_job(
        &mut self,
        cmd: &str,
        instance: Option<(&str, &str)>,
        result: Value,
        completion: Completion,
        planned_error: Option<(u16, String)>,
    ) -> String {
        let id = new_id();
        // `admin.vm.ExpungeVMCmd` lives in the admin package, everything else in the user one.
        let cmd = match cmd.strip_prefix("admin.") {
            Some(admin) => format!("org.apache.cloudstack.api.command.admin.{admin}"),
            None => format!("org.apache.cloudstack.api.command.user.{cmd}"),
        };
        self.db.jobs.push(Job {
            id: id.clone(),
            cmd,
            account_id: self.caller.account_id.clone(),
            user_id: self.caller.user_id.clone(),
            status: 0,
            result_code: 0,
            result,
            planned_error,
            created: store::now(),
            completed: None,
            instance_type: instance.map(|(t, _)| t.to_owned()),
            instance_id: instance.map(|(_, i)| i.to_owned()),
            completion,
        });
        self.background.push(Background::Job(id.clone()));
        id
    }

    /// The injected job failure, if this request drew one.
    fn planned_failure(&self) -> Option<(u16, String)> {
        self.decision.fail_job.then(|| {
            (
                530,
                format!("injected fault: async job of {} failed", self.command),
            )
        })
    }

    /// Whether the next start of VM `vm_name` never boots (injected fault, logged).
    fn never_boots(&self, vm_name: &str) -> bool {
        self.faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .never_boot(self.command, vm_name)
    }

    /// Submits a job whose effect was already applied (or, when a failure was injected, is
    /// skipped by the caller).
    fn simple_job(&mut self, cmd: &str, instance: Option<(&str, &str)>, result: Value) -> Outcome {
        let planned = self.planned_failure();
        let job_id = self.submit_job(cmd, instance, result, Completion::Fixed, planned);
        Outcome::Async { job_id, id: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    fn items(n: usize) -> Vec<Value> {
        (0..n).map(|i| json!({ "n": i })).collect()
    }

    #[test]
    fn pagesize_without_page_is_refused_with_cloudstack_text() {
        let err = list_response(&params(&[("pagesize", "2")]), "zone", items(3)).unwrap_err();
        assert_eq!(err.code, 431);
        assert_eq!(
            err.text,
            "\"page\" parameter is required when \"pagesize\" is specified"
        );
    }

    #[test]
    fn invalid_pagination_values_are_refused() {
        for bad in [
            &[("page", "1"), ("pagesize", "-1")][..],
            &[("page", "1"), ("pagesize", "501")][..],
            &[("page", "0"), ("pagesize", "5")][..],
            &[("page", "x"), ("pagesize", "5")][..],
        ] {
            let err = list_response(&params(bad), "zone", items(3)).unwrap_err();
            assert_eq!(err.code, 431, "{bad:?}");
        }
    }

    #[test]
    fn pages_slice_and_count_everything() {
        let body =
            list_response(&params(&[("page", "2"), ("pagesize", "2")]), "vm", items(5)).unwrap();
        assert_eq!(body, json!({ "count": 5, "vm": [{ "n": 2 }, { "n": 3 }] }));
        let past =
            list_response(&params(&[("page", "9"), ("pagesize", "2")]), "vm", items(5)).unwrap();
        assert_eq!(past, json!({ "count": 5 }));
        let all = list_response(&params(&[("pagesize", "-1")]), "vm", items(3)).unwrap();
        assert_eq!(all["count"], 3);
    }

    #[test]
    fn empty_lists_are_empty_objects() {
        assert_eq!(
            list_response(&params(&[]), "vm", vec![]).unwrap(),
            json!({})
        );
    }

    #[test]
    fn map_parameters_group_by_index() {
        let p = params(&[
            ("tags[1].key", "b"),
            ("tags[0].key", "a"),
            ("tags[0].value", "1"),
            ("tags[1].value", "2"),
        ]);
        let map = p.map("tags");
        assert_eq!(map.len(), 2);
        assert_eq!(map[0]["key"], "a");
        assert_eq!(map[1]["value"], "2");
    }
}
