//! The controller's async jobs, shaped like CloudStack's (`jobid`, `jobstatus` 0/1/2,
//! `jobresult`), kept in the store so `queryAsyncJobResult` answers across restarts.
//!
//! A job is only a report: the work behind it is a workflow (durable, resumed after a restart)
//! or a short task. Jobs of workflows are finished by the workflow engine.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::cloudstack::Caller;
use crate::store::{JobRecord, JobStatus, Store, StoreError, now};

/// The jobs, over the store.
#[derive(Clone)]
pub struct Jobs {
    store: Arc<dyn Store>,
}

/// What a new job reports on.
#[derive(Debug, Clone)]
pub struct JobSpec<'a> {
    /// The API command.
    pub command: &'a str,
    /// CloudStack's `cmd` (the CKS Java class).
    pub cmd: &'a str,
    /// `KubernetesCluster` / `KubernetesSupportedVersion`.
    pub instance_type: &'a str,
    /// The entity id.
    pub instance_id: &'a str,
}

// === impl Jobs ===

impl Jobs {
    /// Jobs kept in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Jobs { store }
    }

    /// Records a pending job submitted by `caller`.
    ///
    /// # Errors
    /// The store failed.
    pub fn create(&self, caller: &Caller, spec: &JobSpec<'_>) -> Result<JobRecord, StoreError> {
        let job = pending(caller, spec);
        self.store.put_job(&job)?;
        Ok(job)
    }

    /// Finishes a job successfully with `result` (e.g. `{"kubernetescluster": {...}}`).
    ///
    /// # Errors
    /// The store failed.
    pub fn succeed(&self, job_id: &str, result: Value) -> Result<(), StoreError> {
        self.finish(job_id, JobOutcome::Succeeded(result))
    }

    /// Fails a job with CloudStack's error object.
    ///
    /// # Errors
    /// The store failed.
    pub fn fail(&self, job_id: &str, code: u16, text: &str) -> Result<(), StoreError> {
        self.finish(
            job_id,
            JobOutcome::Failed {
                code,
                text: text.to_string(),
            },
        )
    }

    fn finish(&self, job_id: &str, outcome: JobOutcome) -> Result<(), StoreError> {
        let job = self
            .store
            .job(job_id)?
            .ok_or_else(|| StoreError::NotFound {
                kind: "job",
                id: job_id.to_string(),
            })?;
        if job.status != JobStatus::Pending {
            return Ok(());
        }
        self.store.put_job(&finished(job, outcome))
    }
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    /// `jobstatus` 1 with this `jobresult`.
    Succeeded(Value),
    /// `jobstatus` 2 with CloudStack's error object.
    Failed {
        /// `errorcode` (530 for a failed operation, as CloudStack's jobs report it).
        code: u16,
        /// `errortext`.
        text: String,
    },
}

/// A pending job submitted by `caller`, not yet stored (an operation records it in the same
/// transaction as its workflow).
pub fn pending(caller: &Caller, spec: &JobSpec<'_>) -> JobRecord {
    JobRecord {
        id: uuid::Uuid::new_v4().to_string(),
        command: spec.command.to_string(),
        cmd: spec.cmd.to_string(),
        user_id: caller.user_id.clone(),
        account_id: caller.account_id.clone(),
        account: caller.account.clone(),
        domain_id: caller.domain_id.clone(),
        instance_type: spec.instance_type.to_string(),
        instance_id: spec.instance_id.to_string(),
        status: JobStatus::Pending,
        result_code: 0,
        result: None,
        created: now(),
        completed: None,
    }
}

/// `job` as it ends with `outcome`.
pub fn finished(mut job: JobRecord, outcome: JobOutcome) -> JobRecord {
    let (status, code, result) = match outcome {
        JobOutcome::Succeeded(result) => (JobStatus::Succeeded, 0, result),
        JobOutcome::Failed { code, text } => (
            JobStatus::Failed,
            code,
            json!({ "errorcode": code, "errortext": text }),
        ),
    };
    job.status = status;
    job.result_code = code;
    job.result = Some(result);
    job.completed = Some(now());
    job
}

/// The `queryAsyncJobResult` object of a job.
pub fn render(job: &JobRecord) -> Value {
    let mut out = json!({
        "jobid": job.id,
        "jobstatus": job.status.code(),
        "jobprocstatus": 0,
        "jobresultcode": job.result_code,
        "cmd": job.cmd,
        "created": crate::store::cloudstack_date(job.created),
        "userid": job.user_id,
        "accountid": job.account_id,
        "account": job.account,
        "domainid": job.domain_id,
        "jobinstancetype": job.instance_type,
        "jobinstanceid": job.instance_id,
    });
    if let Some(result) = &job.result {
        out["jobresulttype"] = json!(if job.status == JobStatus::Failed {
            "text"
        } else {
            "object"
        });
        out["jobresult"] = result.clone();
    }
    if let Some(completed) = job.completed {
        out["completed"] = json!(crate::store::cloudstack_date(completed));
    }
    out
}
