//! The controller's async jobs, shaped like CloudStack's (`jobid`, `jobstatus` 0/1/2,
//! `jobresult`), kept in the store so `queryAsyncJobResult` answers across restarts.
//!
//! A job is only a report: the work behind it is a workflow (durable, resumed after a restart)
//! or a short task. Jobs of workflows are finished by the workflow engine.
//!
//! An operation that has nothing to do (start of a running cluster, stop of a stopped one) still
//! answers with a job id, as every CloudStack async command does, so that clients polling
//! `queryAsyncJobResult` get their result; but that job is [`Jobs::instant`]: finished at once
//! and kept in memory only (the last [`INSTANT_CAPACITY`], for [`INSTANT_TTL`]), never written.
//!
//! Finished jobs are kept for a retention period (`jobs.retention_minutes`) and then removed by
//! [`spawn_pruner`], as CloudStack expunges its own; pending jobs are never removed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cloudstack::Caller;
use crate::store::{JobRecord, JobStatus, Store, StoreError, UnixTime, now};

/// How many instant jobs are remembered.
pub const INSTANT_CAPACITY: usize = 1024;
/// How long an instant job is remembered (seconds): long enough for any client's polling.
pub const INSTANT_TTL: UnixTime = 3600;

/// The jobs, over the store.
#[derive(Clone)]
pub struct Jobs {
    store: Arc<dyn Store>,
    instant: Arc<Mutex<InstantJobs>>,
}

/// Jobs finished as they were made, oldest first.
#[derive(Default)]
struct InstantJobs {
    order: VecDeque<String>,
    jobs: HashMap<String, JobRecord>,
}

impl InstantJobs {
    fn expire(&mut self, at: UnixTime) {
        while let Some(oldest) = self.order.front() {
            let expired = self
                .jobs
                .get(oldest)
                .is_none_or(|job| job.created.saturating_add(INSTANT_TTL) <= at);
            if !expired && self.order.len() <= INSTANT_CAPACITY {
                break;
            }
            if let Some(id) = self.order.pop_front() {
                self.jobs.remove(&id);
            }
        }
    }
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
        Jobs {
            store,
            instant: Arc::default(),
        }
    }

    /// A job that succeeded as it was made with `result`, remembered in memory only (see the
    /// module's documentation): what an operation with nothing to do answers.
    pub fn instant(&self, caller: &Caller, spec: &JobSpec<'_>, result: Value) -> JobRecord {
        let job = finished(pending(caller, spec), JobOutcome::Succeeded(result));
        let mut instant = self.instant.lock().unwrap_or_else(PoisonError::into_inner);
        instant.order.push_back(job.id.clone());
        instant.jobs.insert(job.id.clone(), job.clone());
        instant.expire(job.created);
        job
    }

    /// A job: an instant one, or one in the store.
    ///
    /// # Errors
    /// The store failed.
    pub fn get(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let remembered = {
            let mut instant = self.instant.lock().unwrap_or_else(PoisonError::into_inner);
            instant.expire(now());
            instant.jobs.get(id).cloned()
        };
        match remembered {
            Some(job) => Ok(Some(job)),
            None => self.store.job(id),
        }
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

    /// Removes the jobs that finished more than `retention` before `at`; returns how many.
    ///
    /// # Errors
    /// The store failed.
    pub fn prune(&self, retention: Duration, at: UnixTime) -> Result<usize, StoreError> {
        let retention = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
        self.store.prune_jobs(at.saturating_sub(retention))
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

/// How often the pruner looks for expired jobs.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Removes expired jobs now and then every `every` until `shutdown`; `clock` tells the time
/// ([`now`] in the controller).
pub fn spawn_pruner(
    jobs: Jobs,
    retention: Duration,
    every: Duration,
    clock: impl Fn() -> UnixTime + Send + 'static,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let (jobs, at) = (jobs.clone(), clock());
            match tokio::task::spawn_blocking(move || jobs.prune(retention, at)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(removed)) => info!(removed, "expired jobs removed"),
                Ok(Err(err)) => {
                    warn!(error = %crate::error_chain(&err), "cannot remove expired jobs")
                }
                Err(err) => warn!(error = %err, "job pruner failed"),
            }
        }
    })
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;
    use crate::store::SqliteStore;

    const DAY: i64 = 24 * 3600;

    fn caller() -> Caller {
        Caller::for_tests()
    }

    fn job(id: &str, created: UnixTime, completed: Option<UnixTime>) -> JobRecord {
        let mut job = pending(
            &caller(),
            &JobSpec {
                command: "startKubernetesCluster",
                cmd: "c",
                instance_type: "KubernetesCluster",
                instance_id: "k1",
            },
        );
        job.id = id.to_string();
        job.created = created;
        if let Some(at) = completed {
            job = finished(job, JobOutcome::Succeeded(json!({"success": true})));
            job.completed = Some(at);
        }
        job
    }

    #[test]
    fn instant_jobs_are_remembered_in_memory_only_and_boundedly() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().expect("store"));
        let jobs = Jobs::new(store.clone());
        let caller = caller();
        let spec = JobSpec {
            command: "startKubernetesCluster",
            cmd: "c",
            instance_type: "KubernetesCluster",
            instance_id: "k1",
        };
        let first = jobs.instant(&caller, &spec, json!({"n": 0}));
        let got = jobs.get(&first.id).expect("get").expect("remembered");
        assert_eq!(got.status, JobStatus::Succeeded);
        assert_eq!(got.result, Some(json!({"n": 0})));
        assert!(store.jobs().expect("jobs").is_empty(), "nothing written");
        // Only the last INSTANT_CAPACITY are kept.
        let mut last = first.clone();
        for n in 1..=INSTANT_CAPACITY {
            last = jobs.instant(&caller, &spec, json!({"n": n}));
        }
        assert_eq!(jobs.get(&first.id).expect("get"), None);
        assert!(jobs.get(&last.id).expect("get").is_some());
        // And only for INSTANT_TTL.
        let mut aged = jobs.instant.lock().expect("lock");
        aged.expire(now() + INSTANT_TTL);
        assert!(aged.jobs.is_empty() && aged.order.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn finished_jobs_are_removed_after_the_retention_and_pending_ones_never() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().expect("store"));
        let jobs = Jobs::new(store.clone());
        let start = 1_000 * DAY;
        store
            .put_job(&job("old", start - 30 * DAY, Some(start - 8 * DAY)))
            .expect("put");
        store
            .put_job(&job("recent", start - 30 * DAY, Some(start - DAY)))
            .expect("put");
        store
            .put_job(&job("pending", start - 30 * DAY, None))
            .expect("put");

        let clock = Arc::new(AtomicI64::new(start));
        let shutdown = CancellationToken::new();
        let time = clock.clone();
        let pruner = spawn_pruner(
            jobs,
            Duration::from_secs(7 * 24 * 3600),
            Duration::from_secs(3600),
            move || time.load(Ordering::SeqCst),
            shutdown.clone(),
        );
        let ids = || -> Vec<String> {
            let mut ids: Vec<String> = store
                .jobs()
                .expect("jobs")
                .into_iter()
                .map(|j| j.id)
                .collect();
            ids.sort();
            ids
        };
        // The first pass runs at once: the job finished 8 days ago goes.
        let mut passes = 0;
        while ids().contains(&"old".to_string()) && passes < 100 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            passes += 1;
        }
        assert_eq!(ids(), vec!["pending", "recent"]);

        // Seven days on, the next hourly pass removes the other finished one.
        clock.fetch_add(7 * DAY, Ordering::SeqCst);
        let mut passes = 0;
        while ids().contains(&"recent".to_string()) && passes < 100 {
            tokio::time::sleep(Duration::from_secs(600)).await;
            passes += 1;
        }
        assert_eq!(ids(), vec!["pending"]);
        shutdown.cancel();
        pruner.await.expect("pruner");
    }
}
