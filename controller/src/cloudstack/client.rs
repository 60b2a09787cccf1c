//! [`CloudStackClient`]: the controller's signed client for the CloudStack API.
//!
//! # Requests
//! Every request carries `command`, `apikey`, `response=json`, `signatureversion=3`, `expires`
//! (now + [`ClientConfig::signature_validity`]) and `signature` ([`super::sign`]). Parameter
//! names are sent lower-case, so that CloudStack's case-sensitive sort sees the names we signed
//! (cks-reference §7.1). Requests go as GET, or as a form POST when they carry `userdata`, when
//! the encoded parameters are long, or always with [`RequestMethod::Post`] (needed when the
//! cloud sets `enforce.post.requests.and.timestamps`).
//!
//! # Responses
//! [`CloudStackClient::call`] returns the object inside `{"<command lower-cased>response": …}`.
//! Errors come back as [`CloudStackError::Api`] with CloudStack's `errorcode` (= the HTTP
//! status), `cserrorcode` and `errortext`. [`CloudStackClient::list`] follows `page`/`pagesize`
//! until every item is read. [`CloudStackClient::wait_job`] polls `queryAsyncJobResult` with a
//! capped exponential interval until the job leaves `jobstatus` 0.
//!
//! # Retries and idempotency
//! Read-only commands (`list*`, `query*`, `get*`; see [`is_read_only`]) are retried on
//! transient failures ([`CloudStackError::is_transient`]) with jittered exponential backoff, a
//! bounded number of times. Mutating commands are sent **once**: a timeout or a lost response
//! leaves their outcome unknown, and repeating a `deployVirtualMachine` could make a second VM.
//! The workflow engine makes them idempotent instead: it tags or names every resource it
//! creates, and after a failure it looks the resource up (a read, retried here) before it
//! decides to create it again.
//!
//! # Rate limit
//! All requests of one client, `forward` included, share a token bucket
//! ([`ClientConfig::rate_limit`]), so a burst of workflows cannot trip CloudStack's API
//! throttling (HTTP 429).
//!
//! # Secrets
//! The secret key lives in a [`SecretKey`]. Spans carry the command name only, never parameter
//! values (userdata, passwords and keys travel as parameters), and errors never contain the
//! request URL (reqwest's errors would otherwise print the signed query). The spans are at
//! `info` level so that the retry warnings inside them keep the command name; they emit
//! nothing themselves.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span, warn};

use super::SecretKey;
use super::sign;
use super::types::{AsyncJobResult, JobStatus, ListResource};

/// Default timeout of one HTTP exchange.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Default TCP/TLS connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default lifetime of a signature (`expires` = now + this); `cs` uses 10 minutes too, and it
/// stays under the 15 minutes CloudStack allows when it enforces timestamps.
pub const DEFAULT_SIGNATURE_VALIDITY: Duration = Duration::from_secs(600);
/// Default `pagesize` for [`CloudStackClient::list`]: CloudStack's `default.page.size`, the
/// largest page it accepts by default.
pub const DEFAULT_PAGE_SIZE: u32 = 500;
/// Form-encoded parameters longer than this go as POST with [`RequestMethod::Auto`] (CKS posts
/// userdata over 2 KB; servlet containers limit URLs to a few KB).
pub const POST_THRESHOLD: usize = 2048;
/// Stop paging after this many pages, whatever `count` says (a server ignoring `page`).
const MAX_PAGES: u32 = 10_000;
/// The parameters the client sets itself; callers' values for them are dropped.
const RESERVED_PARAMS: [&str; 6] = [
    "command",
    sign::API_KEY,
    "response",
    sign::SIGNATURE,
    sign::SIGNATURE_VERSION,
    sign::EXPIRES,
];

/// When requests are sent as a form POST instead of GET.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestMethod {
    /// GET, unless the request has `userdata` or its encoded parameters exceed
    /// [`POST_THRESHOLD`].
    #[default]
    Auto,
    /// Always POST (`enforce.post.requests.and.timestamps=true`).
    Post,
}

/// A token bucket: `per_second` sustained, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained requests per second (must be positive).
    pub per_second: f64,
    /// Requests that may go at once after a quiet period (at least 1).
    pub burst: u32,
}

// === impl RateLimit ===

impl Default for RateLimit {
    /// 20 requests/s, bursts of 20: below CloudStack's default `api.throttling.max` of 25/s.
    fn default() -> Self {
        Self {
            per_second: 20.0,
            burst: 20,
        }
    }
}

/// Retries of read-only commands on transient errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 disables retries).
    pub max_attempts: u32,
    /// Backoff before the first retry; doubled for every further retry.
    pub initial_backoff: Duration,
    /// Upper bound of one backoff.
    pub max_backoff: Duration,
}

// === impl RetryPolicy ===

impl Default for RetryPolicy {
    /// 4 attempts, 250 ms doubling to at most 5 s (each jittered to 50–100 %).
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// How often [`CloudStackClient::wait_job`] polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobPollPolicy {
    /// Wait before the second poll (the first is immediate).
    pub initial_interval: Duration,
    /// Upper bound; the interval doubles until it reaches this.
    pub max_interval: Duration,
}

// === impl JobPollPolicy ===

impl Default for JobPollPolicy {
    /// 500 ms doubling to 5 s.
    fn default() -> Self {
        Self {
            initial_interval: Duration::from_millis(500),
            max_interval: Duration::from_secs(5),
        }
    }
}

/// Everything a [`CloudStackClient`] needs. `Debug` shows no secret.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The API URL, e.g. `http://cloudstack:8080/client/api`.
    pub endpoint: String,
    /// The API key of the user the controller acts as.
    pub api_key: String,
    /// That user's secret key.
    pub secret_key: SecretKey,
    /// Timeout of one HTTP exchange.
    pub request_timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Lifetime of each signature.
    pub signature_validity: Duration,
    /// GET/POST choice.
    pub method: RequestMethod,
    /// Client-side rate limit; `None` disables it.
    pub rate_limit: Option<RateLimit>,
    /// Retries of read-only commands.
    pub read_retry: RetryPolicy,
    /// Async job polling.
    pub job_poll: JobPollPolicy,
    /// `pagesize` used by [`CloudStackClient::list`].
    pub page_size: u32,
    /// Seed of the backoff jitter; `None` seeds from the OS (set it in tests for determinism).
    pub jitter_seed: Option<u64>,
}

// === impl ClientConfig ===

impl ClientConfig {
    /// A configuration with the defaults of this module.
    pub fn new(
        endpoint: impl Into<String>,
        api_key: impl Into<String>,
        secret_key: impl Into<SecretKey>,
    ) -> Self {
        Self {
            endpoint: endpoint.into(),
            api_key: api_key.into(),
            secret_key: secret_key.into(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            signature_validity: DEFAULT_SIGNATURE_VALIDITY,
            method: RequestMethod::Auto,
            rate_limit: Some(RateLimit::default()),
            read_retry: RetryPolicy::default(),
            job_poll: JobPollPolicy::default(),
            page_size: DEFAULT_PAGE_SIZE,
            jitter_seed: None,
        }
    }
}

/// A CloudStack call failed.
#[derive(Debug, thiserror::Error)]
pub enum CloudStackError {
    /// The configured endpoint is not a URL.
    #[error("invalid CloudStack endpoint {endpoint:?}")]
    InvalidEndpoint {
        /// The endpoint as configured.
        endpoint: String,
        /// Cause.
        #[source]
        source: url::ParseError,
    },
    /// The HTTP client could not be built (TLS setup).
    #[error("failed to build the HTTP client for CloudStack")]
    BuildClient(#[source] reqwest::Error),
    /// CloudStack answered with an error object.
    #[error("CloudStack command {command} failed with {errorcode}: {errortext}")]
    Api {
        /// The command.
        command: String,
        /// `errorcode`, also the HTTP status (401 bad key or signature, 431 bad parameter,
        /// 432 unknown command, 530 internal error, 533 capacity…).
        errorcode: u16,
        /// `cserrorcode` (the Java exception class), absent for authentication errors.
        cserrorcode: Option<u32>,
        /// `errortext`.
        errortext: String,
    },
    /// The request did not complete: connection refused or reset, TLS failure, response body
    /// cut off. The URL is stripped from the cause.
    #[error("HTTP request for CloudStack command {command} failed")]
    Http {
        /// The command.
        command: String,
        /// Cause (without URL).
        #[source]
        source: reqwest::Error,
    },
    /// No complete response within the request timeout.
    #[error("CloudStack command {command} timed out after {timeout:?}")]
    Timeout {
        /// The command.
        command: String,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// A non-200 answer without a CloudStack error object (a proxy's 502, a redirect…).
    #[error("CloudStack command {command} got HTTP status {status} without an error object")]
    Status {
        /// The command.
        command: String,
        /// HTTP status.
        status: u16,
    },
    /// The response is not the JSON expected.
    #[error("failed to decode the response to CloudStack command {command}")]
    Decode {
        /// The command.
        command: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// The response lacks a field the command always returns.
    #[error("response to CloudStack command {command} has no {field:?}")]
    MissingField {
        /// The command.
        command: String,
        /// The missing field, e.g. `listzonesresponse` or `jobid`.
        field: String,
    },
    /// The async job ended failed (jobstatus 2) or cancelled (3).
    #[error("CloudStack async job {job_id} failed with {errorcode}: {errortext}")]
    Job {
        /// The job.
        job_id: String,
        /// The job's `errorcode` (or `jobresultcode`).
        errorcode: u16,
        /// The job's `errortext`.
        errortext: String,
    },
    /// The job was still running at the caller's deadline. It may still finish: poll again
    /// with [`CloudStackClient::wait_job`] rather than submitting the command again.
    #[error("CloudStack async job {job_id} was still running at its deadline")]
    JobTimeout {
        /// The job.
        job_id: String,
    },
}

// === impl CloudStackError ===

impl CloudStackError {
    /// True when the same request may succeed if sent again later: connection failures,
    /// timeouts, cut-off responses, HTTP 429 and 500–529 (503: management server in maintenance
    /// or shutting down). CloudStack's own 530–537 codes (internal error, permission, resource
    /// limit, capacity, in use, rule conflict) and 4xx are answers about the request and are
    /// not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Http { source, .. } => {
                !(source.is_builder() || source.is_redirect() || source.is_status())
            }
            Self::Timeout { .. } => true,
            Self::Status { status, .. } => is_transient_code(*status),
            Self::Api { errorcode, .. } => is_transient_code(*errorcode),
            Self::InvalidEndpoint { .. }
            | Self::BuildClient(_)
            | Self::Decode { .. }
            | Self::MissingField { .. }
            | Self::Job { .. }
            | Self::JobTimeout { .. } => false,
        }
    }

    /// CloudStack's `errorcode` for [`CloudStackError::Api`] and [`CloudStackError::Job`].
    pub fn errorcode(&self) -> Option<u16> {
        match self {
            Self::Api { errorcode, .. } | Self::Job { errorcode, .. } => Some(*errorcode),
            _ => None,
        }
    }
}

fn is_transient_code(code: u16) -> bool {
    code == 429 || (500..530).contains(&code)
}

/// True for commands that change nothing and may be retried blindly: `list*`, `query*`,
/// `get*` (except `getUploadParamsFor*`, which creates the entity it returns upload
/// parameters for).
pub fn is_read_only(command: &str) -> bool {
    let lower = command.to_ascii_lowercase();
    (lower.starts_with("list") || lower.starts_with("query") || lower.starts_with("get"))
        && !lower.starts_with("getuploadparamsfor")
}

/// A submitted async command: `jobid`, plus `id` of the entity that create-style commands
/// (`deployVirtualMachine`, `createKubernetesCluster`…) make before the job runs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AsyncJob {
    /// The job to poll.
    #[serde(rename = "jobid")]
    pub job_id: String,
    /// The created entity, when the command creates one.
    #[serde(default)]
    pub id: Option<String>,
}

/// CloudStack's answer to a forwarded request, passed back unchanged.
#[derive(Debug, Clone)]
pub struct ForwardedResponse {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`, when CloudStack sent one.
    pub content_type: Option<String>,
    /// The body.
    pub body: Bytes,
}

/// Decodes `value[key]` as a `T`, e.g. the `virtualmachine` of a deploy job's result or the
/// `network` of a `createNetwork` response.
///
/// # Errors
/// [`CloudStackError::MissingField`] or [`CloudStackError::Decode`].
pub fn decode_field<T: DeserializeOwned>(
    command: &str,
    value: &Value,
    key: &str,
) -> Result<T, CloudStackError> {
    let field = value
        .get(key)
        .ok_or_else(|| CloudStackError::MissingField {
            command: command.to_owned(),
            field: key.to_owned(),
        })?;
    T::deserialize(field).map_err(|source| CloudStackError::Decode {
        command: command.to_owned(),
        source,
    })
}

/// The CloudStack API client. Cheap to clone (one shared connection pool, rate limit and
/// configuration).
#[derive(Clone)]
pub struct CloudStackClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    endpoint: Url,
    config: ClientConfig,
    limiter: Option<Mutex<RateLimiter>>,
    rng: Mutex<SplitMix64>,
}

impl std::fmt::Debug for CloudStackClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudStackClient")
            .field("endpoint", &self.inner.endpoint.as_str())
            .field("api_key", &self.inner.config.api_key)
            .finish_non_exhaustive()
    }
}

// === impl CloudStackClient ===

impl CloudStackClient {
    /// Builds a client. No request is sent.
    ///
    /// # Errors
    /// [`CloudStackError::InvalidEndpoint`] or [`CloudStackError::BuildClient`].
    pub fn new(config: ClientConfig) -> Result<Self, CloudStackError> {
        let endpoint =
            Url::parse(&config.endpoint).map_err(|source| CloudStackError::InvalidEndpoint {
                endpoint: config.endpoint.clone(),
                source,
            })?;
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            // A redirect of the API is a misconfiguration (and would turn a POST into a GET).
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("cks-controller/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CloudStackError::BuildClient(e.without_url()))?;
        let limiter = config
            .rate_limit
            .map(|limit| Mutex::new(RateLimiter::new(limit)));
        let seed = config.jitter_seed.unwrap_or_else(random_seed);
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                endpoint,
                config,
                limiter,
                rng: Mutex::new(SplitMix64(seed)),
            }),
        })
    }

    /// The same client signing with another user's keys: same endpoint, connection pool and
    /// timeouts, no client-side rate limit (that user's requests are theirs to pace).
    /// CloudStack then answers with that user's view: its own visibility rules and role.
    pub fn with_keys(&self, api_key: &str, secret_key: &SecretKey) -> Self {
        let mut config = self.inner.config.clone();
        config.api_key = api_key.to_owned();
        config.secret_key = secret_key.clone();
        config.rate_limit = None;
        let seed = config.jitter_seed.unwrap_or_else(random_seed);
        Self {
            inner: Arc::new(Inner {
                http: self.inner.http.clone(),
                endpoint: self.inner.endpoint.clone(),
                config,
                limiter: None,
                rng: Mutex::new(SplitMix64(seed)),
            }),
        }
    }

    /// The same client (keys, connection pool, timeouts) with its own rate limit, or none:
    /// traffic of one kind does not queue behind another's.
    pub fn with_rate_limit(&self, limit: Option<RateLimit>) -> Self {
        let mut config = self.inner.config.clone();
        config.rate_limit = limit;
        let seed = config.jitter_seed.unwrap_or_else(random_seed);
        Self {
            inner: Arc::new(Inner {
                http: self.inner.http.clone(),
                endpoint: self.inner.endpoint.clone(),
                limiter: limit.map(|limit| Mutex::new(RateLimiter::new(limit))),
                config,
                rng: Mutex::new(SplitMix64(seed)),
            }),
        }
    }

    /// The API endpoint.
    pub fn endpoint(&self) -> &Url {
        &self.inner.endpoint
    }

    /// The API key the client signs with.
    pub fn api_key(&self) -> &str {
        &self.inner.config.api_key
    }

    /// The client's configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Runs `command` and returns the object inside `<command lower-cased>response`.
    ///
    /// Parameter names are lower-cased; `command`, `apikey`, `response`, `signature`,
    /// `signatureversion` and `expires` in `params` are ignored (the client sets them).
    /// Read-only commands are retried on transient errors (see the module docs); others are
    /// sent once.
    ///
    /// # Errors
    /// [`CloudStackError`]; see [`CloudStackError::is_transient`].
    pub async fn call(
        &self,
        command: &str,
        params: &[(&str, &str)],
    ) -> Result<Value, CloudStackError> {
        let span = info_span!("cloudstack", command = %command);
        self.call_with_retries(command, params)
            .instrument(span)
            .await
    }

    /// [`call`](Self::call), then decodes the response's `key` field, e.g.
    /// `call_as::<Network>("createNetwork", params, "network")`.
    ///
    /// # Errors
    /// As [`call`](Self::call), plus [`decode_field`]'s.
    pub async fn call_as<T: DeserializeOwned>(
        &self,
        command: &str,
        params: &[(&str, &str)],
        key: &str,
    ) -> Result<T, CloudStackError> {
        let value = self.call(command, params).await?;
        decode_field(command, &value, key)
    }

    /// Runs a `list*` command and returns the items of every page, fetched with `page` and
    /// `pagesize` ([`ClientConfig::page_size`]; any `page`/`pagesize` in `params` is replaced).
    /// `key` names the array, e.g. `virtualmachine`; an empty result (`{}`) is an empty list.
    ///
    /// Pages are separate requests: items created or deleted meanwhile can shift between pages.
    ///
    /// # Errors
    /// As [`call`](Self::call), or [`CloudStackError::Decode`] when an item is not a `T`.
    pub async fn list<T: DeserializeOwned>(
        &self,
        command: &str,
        params: &[(&str, &str)],
        key: &str,
    ) -> Result<Vec<T>, CloudStackError> {
        let page_size = self.inner.config.page_size.max(1);
        let size_text = page_size.to_string();
        let base: Vec<(&str, &str)> = params
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("page") && !k.eq_ignore_ascii_case("pagesize"))
            .copied()
            .collect();
        let mut items: Vec<T> = Vec::new();
        for page in 1..=MAX_PAGES {
            let page_text = page.to_string();
            let mut page_params = base.clone();
            page_params.push(("page", &page_text));
            page_params.push(("pagesize", &size_text));
            let body = self.call(command, &page_params).await?;
            let Some(array) = list_array(&body, key) else {
                break;
            };
            let received = array.as_array().map_or(0, Vec::len);
            let parsed: Vec<T> =
                Vec::<T>::deserialize(array).map_err(|source| CloudStackError::Decode {
                    command: command.to_owned(),
                    source,
                })?;
            items.extend(parsed);
            let total = body.get("count").and_then(json_u64);
            let complete = total.is_some_and(|t| items.len() as u64 >= t);
            if received < page_size as usize || complete {
                break;
            }
        }
        Ok(items)
    }

    /// [`list`](Self::list) of a [`ListResource`] with its own command and key, e.g.
    /// `list_all::<Zone>(&[])`.
    ///
    /// # Errors
    /// As [`list`](Self::list).
    pub async fn list_all<T: ListResource>(
        &self,
        params: &[(&str, &str)],
    ) -> Result<Vec<T>, CloudStackError> {
        self.list(T::LIST_COMMAND, params, T::LIST_KEY).await
    }

    /// Submits an async command and returns its job (and created entity) without waiting.
    ///
    /// # Errors
    /// As [`call`](Self::call), or [`CloudStackError::MissingField`] without a `jobid`.
    pub async fn submit(
        &self,
        command: &str,
        params: &[(&str, &str)],
    ) -> Result<AsyncJob, CloudStackError> {
        let value = self.call(command, params).await?;
        if value.get("jobid").is_none() {
            return Err(CloudStackError::MissingField {
                command: command.to_owned(),
                field: "jobid".to_owned(),
            });
        }
        AsyncJob::deserialize(&value).map_err(|source| CloudStackError::Decode {
            command: command.to_owned(),
            source,
        })
    }

    /// One `queryAsyncJobResult jobid=…` (retried on transient errors).
    ///
    /// # Errors
    /// As [`call`](Self::call).
    pub async fn query_job(&self, job_id: &str) -> Result<AsyncJobResult, CloudStackError> {
        let value = self
            .call("queryAsyncJobResult", &[("jobid", job_id)])
            .await?;
        AsyncJobResult::deserialize(&value).map_err(|source| CloudStackError::Decode {
            command: "queryAsyncJobResult".to_owned(),
            source,
        })
    }

    /// Polls job `job_id` until it finishes or `deadline` passes, first at once, then at
    /// [`ClientConfig::job_poll`] intervals doubling up to the maximum. Returns `jobresult`
    /// (`Null` when the job has none).
    ///
    /// # Errors
    /// [`CloudStackError::Job`] when the job failed or was cancelled,
    /// [`CloudStackError::JobTimeout`] at the deadline (the job may still finish), or the
    /// poll's own error once its retries are spent.
    ///
    /// # Cancel safety
    /// Dropping the future only stops polling; the job runs on in CloudStack.
    pub async fn wait_job(
        &self,
        job_id: &str,
        deadline: Instant,
    ) -> Result<Value, CloudStackError> {
        let span = info_span!("cloudstack_job", job_id = %job_id);
        async {
            let policy = self.inner.config.job_poll;
            let mut interval = policy.initial_interval;
            loop {
                let job = self.query_job(job_id).await?;
                match job.status() {
                    JobStatus::Pending => {}
                    JobStatus::Succeeded => {
                        debug!("async job succeeded");
                        return Ok(job.jobresult.unwrap_or(Value::Null));
                    }
                    JobStatus::Failed | JobStatus::Cancelled | JobStatus::Unknown(_) => {
                        return Err(job_error(job_id, &job));
                    }
                }
                let now = Instant::now();
                if now >= deadline {
                    return Err(CloudStackError::JobTimeout {
                        job_id: job_id.to_owned(),
                    });
                }
                tokio::time::sleep(interval.min(deadline - now)).await;
                interval = interval.saturating_mul(2).min(policy.max_interval);
            }
        }
        .instrument(span)
        .await
    }

    /// [`submit`](Self::submit) then [`wait_job`](Self::wait_job): the job's `jobresult`.
    ///
    /// # Errors
    /// As both.
    pub async fn call_async(
        &self,
        command: &str,
        params: &[(&str, &str)],
        deadline: Instant,
    ) -> Result<Value, CloudStackError> {
        let job = self.submit(command, params).await?;
        self.wait_job(&job.job_id, deadline).await
    }

    /// Sends a caller's request to CloudStack's API unchanged and returns the answer
    /// unchanged: the drop-in endpoint's proxy for commands it does not implement itself. The
    /// caller's own signature stays valid because it covers only the parameters, never the
    /// host (contract 3).
    ///
    /// `query` is the raw query string (without `?`), `body` the raw request body (the form of a
    /// POST), `content_type` its type. Not retried (the command may be mutating); rate-limited
    /// with the client's own calls. Only the `command` parameter is logged.
    ///
    /// # Errors
    /// [`CloudStackError::Http`] or [`CloudStackError::Timeout`] when no answer came; CloudStack's
    /// error answers are returned as responses, not errors.
    pub async fn forward(
        &self,
        method: Method,
        query: Option<&str>,
        body: Bytes,
        content_type: Option<&str>,
    ) -> Result<ForwardedResponse, CloudStackError> {
        let command = forwarded_command(query, &body, content_type);
        let span = info_span!("cloudstack_forward", command = %command, %method);
        async {
            let mut url = self.inner.endpoint.clone();
            url.set_query(query.filter(|q| !q.is_empty()));
            let mut request = self.inner.http.request(method, url);
            if let Some(content_type) = content_type {
                request = request.header(CONTENT_TYPE, content_type);
            }
            if !body.is_empty() {
                request = request.body(body);
            }
            self.acquire_rate_slot().await;
            let started = Instant::now();
            let response = request
                .send()
                .await
                .map_err(|e| self.request_error(&command, e))?;
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = response
                .bytes()
                .await
                .map_err(|e| self.request_error(&command, e))?;
            debug!(
                status,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "forwarded"
            );
            Ok(ForwardedResponse {
                status,
                content_type,
                body,
            })
        }
        .instrument(span)
        .await
    }

    // --- internals ---

    async fn call_with_retries(
        &self,
        command: &str,
        params: &[(&str, &str)],
    ) -> Result<Value, CloudStackError> {
        let retry = self.inner.config.read_retry;
        let attempts = if is_read_only(command) {
            retry.max_attempts.max(1)
        } else {
            1
        };
        let mut attempt = 1;
        loop {
            match self.send_once(command, params).await {
                Ok(value) => return Ok(value),
                Err(err) if attempt < attempts && err.is_transient() => {
                    let delay = self.backoff(retry, attempt);
                    warn!(attempt, ?delay, error = %err, "transient CloudStack error; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// The full signed parameter list for one request.
    fn signed_params(&self, command: &str, params: &[(&str, &str)]) -> Vec<(String, String)> {
        let config = &self.inner.config;
        let mut signed: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_lowercase(), (*v).to_owned()))
            .filter(|(k, _)| !RESERVED_PARAMS.contains(&k.as_str()))
            .collect();
        let expires = OffsetDateTime::now_utc() + config.signature_validity;
        signed.push(("command".to_owned(), command.to_owned()));
        signed.push((sign::API_KEY.to_owned(), config.api_key.clone()));
        signed.push(("response".to_owned(), "json".to_owned()));
        signed.push((
            sign::SIGNATURE_VERSION.to_owned(),
            sign::VERSION_3.to_owned(),
        ));
        signed.push((sign::EXPIRES.to_owned(), sign::format_expires(expires)));
        let signature = sign::sign(&signed, config.secret_key.expose_secret());
        signed.push((sign::SIGNATURE.to_owned(), signature));
        signed
    }

    async fn send_once(
        &self,
        command: &str,
        params: &[(&str, &str)],
    ) -> Result<Value, CloudStackError> {
        let signed = self.signed_params(command, params);
        let encoded = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&signed)
            .finish();
        let post = match self.inner.config.method {
            RequestMethod::Post => true,
            RequestMethod::Auto => {
                encoded.len() > POST_THRESHOLD
                    || params
                        .iter()
                        .any(|(k, _)| k.eq_ignore_ascii_case("userdata"))
            }
        };
        let request = if post {
            self.inner
                .http
                .post(self.inner.endpoint.clone())
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(encoded)
        } else {
            let mut url = self.inner.endpoint.clone();
            url.set_query(Some(&encoded));
            self.inner.http.get(url)
        };
        self.acquire_rate_slot().await;
        let started = Instant::now();
        let response = request
            .send()
            .await
            .map_err(|e| self.request_error(command, e))?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| self.request_error(command, e))?;
        debug!(
            method = if post { "POST" } else { "GET" },
            status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "CloudStack answered"
        );
        parse_response(command, status, &body)
    }

    fn request_error(&self, command: &str, err: reqwest::Error) -> CloudStackError {
        if err.is_timeout() {
            CloudStackError::Timeout {
                command: command.to_owned(),
                timeout: self.inner.config.request_timeout,
            }
        } else {
            CloudStackError::Http {
                command: command.to_owned(),
                source: err.without_url(),
            }
        }
    }

    async fn acquire_rate_slot(&self) {
        let Some(limiter) = &self.inner.limiter else {
            return;
        };
        let now = Instant::now();
        let at = limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reserve(now);
        if at > now {
            debug!(wait_ms = (at - now).as_millis() as u64, "rate limited");
            tokio::time::sleep_until(at).await;
        }
    }

    /// Backoff before retry number `attempt` (1-based): the doubled delay, jittered to 50–100 %.
    fn backoff(&self, policy: RetryPolicy, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(16);
        let full = policy
            .initial_backoff
            .saturating_mul(1 << exponent)
            .min(policy.max_backoff);
        let fraction = self
            .inner
            .rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next_f64();
        full / 2 + full.mul_f64(fraction / 2.0)
    }
}

/// Turns one HTTP answer into the inner response object or a [`CloudStackError`].
fn parse_response(command: &str, status: u16, body: &[u8]) -> Result<Value, CloudStackError> {
    let json: Value = match serde_json::from_slice(body) {
        Ok(json) => json,
        Err(_) if status != 200 => {
            return Err(CloudStackError::Status {
                command: command.to_owned(),
                status,
            });
        }
        Err(source) => {
            return Err(CloudStackError::Decode {
                command: command.to_owned(),
                source,
            });
        }
    };
    let key = format!("{}response", command.to_lowercase());
    let inner = match json {
        Value::Object(mut map) => match map.remove(&key) {
            Some(inner) => Some(inner),
            // Some errors come as `errorresponse` (no command, or a servlet-level failure).
            None if map.len() == 1 => map
                .into_iter()
                .next()
                .filter(|(k, _)| k.ends_with("response"))
                .map(|(_, v)| v),
            None => None,
        },
        _ => None,
    };
    if let Some(errorcode) = inner.as_ref().and_then(|i| i.get("errorcode")) {
        let inner = inner.as_ref();
        return Err(CloudStackError::Api {
            command: command.to_owned(),
            errorcode: json_u64(errorcode)
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(status),
            cserrorcode: inner
                .and_then(|i| i.get("cserrorcode"))
                .and_then(json_u64)
                .and_then(|c| u32::try_from(c).ok()),
            errortext: inner
                .and_then(|i| i.get("errortext"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        });
    }
    if status != 200 {
        return Err(CloudStackError::Status {
            command: command.to_owned(),
            status,
        });
    }
    inner.ok_or(CloudStackError::MissingField {
        command: command.to_owned(),
        field: key,
    })
}

/// The array of a list response: `body[key]`, or, when the server names it differently, the
/// only array in the object. `None` for an empty result (`{}` or `{"count": n}` past the end).
fn list_array<'a>(body: &'a Value, key: &str) -> Option<&'a Value> {
    if let Some(array) = body.get(key).filter(|v| v.is_array()) {
        return Some(array);
    }
    let mut arrays = body.as_object()?.iter().filter(|(_, v)| v.is_array());
    match (arrays.next(), arrays.next()) {
        (Some((name, array)), None) => {
            debug!(expected = key, found = %name, "list response names its array differently");
            Some(array)
        }
        _ => None,
    }
}

fn json_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn job_error(job_id: &str, job: &AsyncJobResult) -> CloudStackError {
    let result = job.jobresult.as_ref();
    let errorcode = result
        .and_then(|r| r.get("errorcode"))
        .and_then(json_u64)
        .or_else(|| job.jobresultcode.and_then(|c| u64::try_from(c).ok()))
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| *c != 0)
        .unwrap_or(530);
    let errortext = result
        .and_then(|r| r.get("errortext").and_then(Value::as_str).or(r.as_str()))
        .map(str::to_owned)
        .unwrap_or_else(|| match job.status() {
            JobStatus::Cancelled => "job cancelled".to_owned(),
            JobStatus::Unknown(code) => format!("unknown job status {code}"),
            _ => "job failed without an error text".to_owned(),
        });
    CloudStackError::Job {
        job_id: job_id.to_owned(),
        errorcode,
        errortext,
    }
}

/// The `command` of a forwarded request, for the span; `-` when there is none.
fn forwarded_command(query: Option<&str>, body: &[u8], content_type: Option<&str>) -> String {
    let from = |bytes: &[u8]| {
        form_urlencoded::parse(bytes)
            .find(|(k, _)| k.eq_ignore_ascii_case("command"))
            .map(|(_, v)| v.into_owned())
    };
    let is_form = content_type.is_some_and(|c| {
        c.to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    query
        .and_then(|q| from(q.as_bytes()))
        .or_else(|| if is_form { from(body) } else { None })
        .unwrap_or_else(|| "-".to_owned())
}

/// The generic cell rate algorithm: a request may go at `tat - (burst - 1) * interval`, where
/// `tat` (theoretical arrival time) advances by `interval` per request.
#[derive(Debug)]
struct RateLimiter {
    interval: Duration,
    tolerance: Duration,
    tat: Option<Instant>,
}

// === impl RateLimiter ===

impl RateLimiter {
    fn new(limit: RateLimit) -> Self {
        let per_second = if limit.per_second.is_finite() && limit.per_second > 0.0 {
            limit.per_second
        } else {
            1.0
        };
        let interval = Duration::from_secs_f64(1.0 / per_second);
        Self {
            interval,
            tolerance: interval.saturating_mul(limit.burst.max(1) - 1),
            tat: None,
        }
    }

    /// Reserves the next slot; returns when the request may be sent.
    fn reserve(&mut self, now: Instant) -> Instant {
        let tat = self.tat.map_or(now, |t| t.max(now));
        let allowed = tat.checked_sub(self.tolerance).map_or(now, |t| t.max(now));
        self.tat = Some(tat + self.interval);
        allowed
    }
}

/// SplitMix64, for backoff jitter only (not for anything secret).
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn random_seed() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        // No OS randomness: the clock is good enough to de-synchronise retries.
        OffsetDateTime::now_utc().unix_timestamp_nanos() as u64
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cloudstack::types::Zone;

    fn client(config: impl FnOnce(&mut ClientConfig)) -> CloudStackClient {
        let mut c = ClientConfig::new("http://127.0.0.1:9/client/api", "AK", "SK-secret");
        c.jitter_seed = Some(7);
        config(&mut c);
        CloudStackClient::new(c).unwrap()
    }

    #[test]
    fn invalid_endpoint_is_refused() {
        let err = CloudStackClient::new(ClientConfig::new("not a url", "k", "s")).unwrap_err();
        assert!(
            matches!(err, CloudStackError::InvalidEndpoint { .. }),
            "{err}"
        );
    }

    #[test]
    fn debug_output_has_no_secret() {
        let c = client(|_| {});
        assert!(!format!("{c:?}").contains("SK-secret"));
        assert!(!format!("{:?}", c.config()).contains("SK-secret"));
    }

    #[test]
    fn signed_params_are_lower_case_v3_and_verify() {
        let c = client(|_| {});
        let params = c.signed_params(
            "listVirtualMachines",
            &[
                ("ZoneId", "z 1"),
                ("tags[0].key", "a~b"),
                ("apiKey", "evil"),
                ("response", "xml"),
            ],
        );
        let names: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "zoneid",
                "tags[0].key",
                "command",
                "apikey",
                "response",
                "signatureversion",
                "expires",
                "signature"
            ]
        );
        assert_eq!(sign::param(&params, "apikey"), Some("AK"));
        assert_eq!(sign::param(&params, "response"), Some("json"));
        assert_eq!(sign::param(&params, "command"), Some("listVirtualMachines"));
        let expires = sign::parse_expires(sign::param(&params, "expires").unwrap()).unwrap();
        let now = OffsetDateTime::now_utc();
        assert!(expires > now + Duration::from_secs(590));
        assert_eq!(sign::verify(&params, "SK-secret", now), Ok(()));
    }

    #[test]
    fn read_only_commands_are_recognised() {
        for command in [
            "listZones",
            "queryAsyncJobResult",
            "getUser",
            "getUserKeys",
            "LISTZONES",
        ] {
            assert!(is_read_only(command), "{command}");
        }
        for command in [
            "deployVirtualMachine",
            "createTags",
            "getUploadParamsForIso",
            "registerIso",
            "updateConfiguration",
        ] {
            assert!(!is_read_only(command), "{command}");
        }
    }

    #[test]
    fn success_returns_the_inner_object() {
        let body =
            br#"{"listzonesresponse": {"count": 1, "zone": [{"id": "z", "name": "zone1"}]}}"#;
        let value = parse_response("listZones", 200, body).unwrap();
        assert_eq!(value["count"], 1);
    }

    #[test]
    fn error_object_becomes_api_error_with_codes() {
        let body = br#"{"deployvirtualmachineresponse": {"uuidList": [], "errorcode": 431, "cserrorcode": 4350, "errortext": "Unable to find zone"}}"#;
        let err = parse_response("deployVirtualMachine", 431, body).unwrap_err();
        match err {
            CloudStackError::Api {
                command,
                errorcode,
                cserrorcode,
                errortext,
            } => {
                assert_eq!(command, "deployVirtualMachine");
                assert_eq!(errorcode, 431);
                assert_eq!(cserrorcode, Some(4350));
                assert_eq!(errortext, "Unable to find zone");
            }
            other => panic!("{other:?}"),
        }
        let unauthorized = br#"{"errorresponse": {"errorcode": 401, "errortext": "unable to verify user credentials"}}"#;
        let err = parse_response("listZones", 401, unauthorized).unwrap_err();
        assert_eq!(err.errorcode(), Some(401));
        assert!(!err.is_transient());
    }

    #[test]
    fn non_json_answers_are_status_or_decode_errors() {
        let err = parse_response("listZones", 502, b"<html>bad gateway</html>").unwrap_err();
        assert!(matches!(err, CloudStackError::Status { status: 502, .. }));
        assert!(err.is_transient());
        let err = parse_response("listZones", 200, b"<xml/>").unwrap_err();
        assert!(matches!(err, CloudStackError::Decode { .. }));
        let err = parse_response("listZones", 200, br#"{"other": {}, "x": 1}"#).unwrap_err();
        assert!(matches!(err, CloudStackError::MissingField { .. }), "{err}");
    }

    #[test]
    fn transient_codes_are_429_and_5xx_below_530() {
        let api = |errorcode| CloudStackError::Api {
            command: "listZones".into(),
            errorcode,
            cserrorcode: None,
            errortext: String::new(),
        };
        for code in [429, 500, 502, 503, 504] {
            assert!(api(code).is_transient(), "{code}");
        }
        for code in [401, 431, 432, 530, 531, 533, 537] {
            assert!(!api(code).is_transient(), "{code}");
        }
        let timeout = CloudStackError::Timeout {
            command: "x".into(),
            timeout: Duration::from_secs(1),
        };
        assert!(timeout.is_transient());
    }

    #[test]
    fn list_arrays_are_found_by_key_or_as_the_only_array() {
        let body = json!({"count": 2, "zone": [{"id": "a"}, {"id": "b"}]});
        assert_eq!(
            list_array(&body, "zone").unwrap().as_array().unwrap().len(),
            2
        );
        let renamed = json!({"count": 1, "loadbalancer": [{"id": "lb"}]});
        assert!(list_array(&renamed, "loadbalancerrule").is_some());
        assert!(list_array(&json!({}), "zone").is_none());
        assert!(list_array(&json!({"count": 5}), "zone").is_none());
        let zones: Vec<Zone> = Vec::<Zone>::deserialize(
            list_array(&json!({"zone": [{"id": "z", "name": "n"}]}), "zone").unwrap(),
        )
        .unwrap();
        assert_eq!(zones[0].name, "n");
    }

    #[test]
    fn job_errors_read_jobresult_or_fall_back() {
        let job: AsyncJobResult = serde_json::from_value(json!({
            "jobid": "j", "jobstatus": 2, "jobresultcode": 530,
            "jobresult": {"errorcode": 533, "errortext": "Unable to create a deployment"}
        }))
        .unwrap();
        match job_error("j", &job) {
            CloudStackError::Job {
                job_id,
                errorcode,
                errortext,
            } => {
                assert_eq!((job_id.as_str(), errorcode), ("j", 533));
                assert_eq!(errortext, "Unable to create a deployment");
            }
            other => panic!("{other:?}"),
        }
        let cancelled: AsyncJobResult =
            serde_json::from_value(json!({"jobid": "j", "jobstatus": 3})).unwrap();
        assert_eq!(job_error("j", &cancelled).errorcode(), Some(530));
        assert!(
            job_error("j", &cancelled)
                .to_string()
                .contains("job cancelled")
        );
    }

    #[test]
    fn submit_shape_decodes_job_and_entity_ids() {
        let job: AsyncJob = serde_json::from_value(json!({"jobid": "j", "id": "vm"})).unwrap();
        assert_eq!(job.job_id, "j");
        assert_eq!(job.id.as_deref(), Some("vm"));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_allows_a_burst_then_spaces_requests() {
        let mut limiter = RateLimiter::new(RateLimit {
            per_second: 10.0,
            burst: 3,
        });
        let now = Instant::now();
        let slots: Vec<Duration> = (0..6).map(|_| limiter.reserve(now) - now).collect();
        let ms: Vec<u128> = slots.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [0, 0, 0, 100, 200, 300]);
        // After a quiet period the burst is available again.
        let later = now + Duration::from_secs(10);
        assert_eq!(limiter.reserve(later), later);
    }

    #[tokio::test(start_paused = true)]
    async fn client_waits_for_its_rate_slot() {
        let c = client(|c| {
            c.rate_limit = Some(RateLimit {
                per_second: 2.0,
                burst: 1,
            })
        });
        let start = Instant::now();
        for _ in 0..3 {
            c.acquire_rate_slot().await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[test]
    fn backoff_doubles_within_jitter_and_is_capped() {
        let c = client(|_| {});
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
        };
        for (attempt, full) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (9, 1000)] {
            let delay = c.backoff(policy, attempt).as_millis();
            assert!(delay >= full / 2 && delay <= full, "{attempt}: {delay}");
        }
    }

    #[test]
    fn forwarded_command_is_read_from_query_or_form() {
        assert_eq!(
            forwarded_command(Some("command=listZones&apikey=x"), b"", None),
            "listZones"
        );
        assert_eq!(
            forwarded_command(
                None,
                b"apikey=x&command=deployVirtualMachine",
                Some("application/x-www-form-urlencoded; charset=UTF-8")
            ),
            "deployVirtualMachine"
        );
        assert_eq!(
            forwarded_command(None, b"command=x", Some("text/plain")),
            "-"
        );
    }

    #[test]
    fn decode_field_names_the_missing_field() {
        let err = decode_field::<Zone>("createZone", &json!({}), "zone").unwrap_err();
        assert_eq!(
            err.to_string(),
            "response to CloudStack command createZone has no \"zone\""
        );
    }
}
