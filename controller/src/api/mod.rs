//! The controller's public API (contract 3): CloudStack's `/client/api`, answering the
//! Kubernetes commands itself and forwarding everything else to CloudStack unchanged.
//!
//! One request goes through:
//! 1. **parse** ([`params::parse_request`]): the query string and, for a form `POST`, the body,
//!    strictly decoded; a repeated name, a bad escape or another body type is refused here, so
//!    the signature check, the command and CloudStack all read one parameter set;
//! 2. **route**: a Kubernetes command, one of ours by its id (`queryAsyncJobResult` of our job),
//!    a merged list (`listApis`, `listAsyncJobs`, `listConfigurations`), or CloudStack's: the
//!    original query and body are forwarded byte for byte (the signature covers only the
//!    parameters, so it stays valid) and CloudStack's answer comes back as it is — except
//!    `destroyVirtualMachine` of a cluster's node, which the owner is refused as CKS refuses it;
//! 3. **budget** (ours only): unsigned requests are refused and each API key has a rate budget
//!    ([`limits`]) before anything is looked up;
//! 4. **authenticate**: the API key's owner, secret, account state and role rules come from
//!    CloudStack (cached briefly) and the signature and `expires` are checked here, as
//!    CloudStack checks them, with the operator's [`SignaturePolicy`];
//! 5. **act once** ([`replay`]): a state-changing request seen before gets its first answer;
//! 6. **dispatch** to [`commands`] and shape the response: `{"<command>response": …}`, lists
//!    with `count` (or `{}` when empty), async commands with `jobid` (+ `id`), errors with
//!    `errorcode`/`cserrorcode`/`errortext` and HTTP status = errorcode.

pub mod access;
pub mod commands;
pub mod error;
pub mod limits;
pub mod params;
pub mod replay;
pub mod results;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use self::error::ApiError;
use self::params::{Params, parse_request};
use self::replay::{Admission, ReplayCache};
use crate::cloudstack::identity::IdentityError;
use crate::cloudstack::{Caller, IdentityResolver, sign};
use crate::config::SignaturePolicy;
use crate::context::Context;
use crate::listen::Peer;
use crate::workflow::Engine;

/// What a command answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The object inside `<command>response`.
    Sync(Value),
    /// An async command: `jobid`, and `id` for create-style ones.
    Async {
        /// The job.
        job_id: String,
        /// The created entity.
        id: Option<String>,
    },
}

impl Reply {
    fn body(self) -> Value {
        match self {
            Reply::Sync(value) => value,
            Reply::Async { job_id, id: None } => json!({ "jobid": job_id }),
            Reply::Async {
                job_id,
                id: Some(id),
            } => json!({ "jobid": job_id, "id": id }),
        }
    }
}

/// The API's shared state.
#[derive(Clone)]
pub struct Api {
    /// Everything shared.
    pub ctx: Context,
    /// Resolves API keys through CloudStack.
    pub identity: Arc<IdentityResolver>,
    /// Runs the workflows the commands start.
    pub engine: Engine,
    /// How signatures are checked.
    pub signatures: SignaturePolicy,
    /// State-changing signed requests already accepted.
    pub replays: Arc<ReplayCache>,
    /// Per API key budgets for the requests the controller answers.
    pub limits: Arc<limits::CallerLimits>,
    /// Per client address budgets for the requests forwarded to CloudStack (none when a
    /// proxy in front limits its clients).
    pub sources: Option<Arc<limits::CallerLimits>>,
    /// Forwards CloudStack's commands: the admin client without its rate limit (each
    /// forwarded request is the caller's own, signed by them, and CloudStack throttles it per
    /// account), so forwarded traffic never waits in the queue of the workflows' calls.
    pub forwarder: crate::cloudstack::CloudStackClient,
    /// Bounds forwarded requests in flight.
    pub forwarding: Arc<tokio::sync::Semaphore>,
}

/// Most forwarded requests in flight at once; more wait for a slot.
pub const MAX_FORWARDED_IN_FLIGHT: usize = 256;

/// The HTTP router (`/client/api`).
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/client/api", any(client_api))
        .route("/client/api/", any(client_api))
        .with_state(api)
}

/// Serves the API on `listener` (over TLS when `tls` is given) within `limits` until
/// `shutdown` resolves.
///
/// # Errors
/// The server failed.
pub async fn serve(
    api: Api,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: crate::listen::Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        let scheme = if tls.is_some() { "https" } else { "http" };
        info!(%addr, "CloudStack-compatible API listening on {scheme}://{addr}/client/api");
    }
    crate::listen::serve(listener, tls, limits, router(api), shutdown).await
}

/// Binds `addr` and serves plain HTTP with the default limits in the background; returns the
/// bound address.
///
/// # Errors
/// The address cannot be bound.
pub async fn spawn(
    api: Api,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let limits = crate::listen::Limits::default();
    Ok((
        bound,
        tokio::spawn(serve(api, listener, None, limits, shutdown)),
    ))
}

fn json_response(status: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json;charset=UTF-8")],
        body.to_string(),
    )
        .into_response()
}

fn response_name(command: &str) -> String {
    format!("{}response", command.to_lowercase())
}

fn error_response(command: &str, err: &ApiError) -> Response {
    json_response(err.code, &json!({ response_name(command): err.body() }))
}

async fn client_api(
    State(api): State<Api>,
    peer: Option<Extension<Peer>>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let post_body = (method == Method::POST).then(|| (content_type(&headers), &body[..]));
    let raw = match parse_request(query.as_deref(), post_body) {
        Ok(raw) => raw,
        Err(err) => {
            info!(error = %err, "request refused before routing");
            return error_response("error", &err.to_api_error());
        }
    };
    let params = Params::new(raw);
    let command = params.command().to_string();
    let route = commands::route(&api, &params).await;
    debug!(%command, ?route, "request");
    if route == commands::Route::CloudStack {
        if let (Some(Extension(Peer(addr))), Some(sources)) = (peer, &api.sources)
            && let Err(throttled) =
                sources.admit(&addr.ip().to_string(), tokio::time::Instant::now())
        {
            debug!(%command, source = %addr.ip(), "forwarded request over its address's budget");
            return error_response(
                &command,
                &throttled.refusal("Too many requests from this address"),
            );
        }
        if let Some(refusal) = clusters_guard(&api, &params).await {
            return error_response(&command, &refusal);
        }
        return forward(&api, method, query.as_deref(), body, &headers, &command).await;
    }
    // Ours: nothing is looked up for a request that is not signed, or whose key is over its
    // budget.
    let (Some(api_key), Some(_)) = (
        sign::param(params.raw(), sign::API_KEY),
        sign::param(params.raw(), sign::SIGNATURE),
    ) else {
        return error_response(&command, &ApiError::unauthorized());
    };
    if let Err(throttled) = api.limits.admit(api_key, tokio::time::Instant::now()) {
        debug!(%command, "request over its key's budget");
        return error_response(
            &command,
            &throttled.refusal("The given user has reached his/her account api limit"),
        );
    }
    let caller = match authenticate(&api, &params).await {
        Ok(caller) => caller,
        Err(err) => return error_response(&command, &err),
    };
    let received = Received {
        method,
        query: query.as_deref(),
        body,
        headers: &headers,
    };
    if replay::is_read_only(&command) {
        answer(&api, &caller, &params, route, received).await
    } else {
        act_once(&api, &caller, &params, route, received).await
    }
}

/// What was received, for the commands that pass it on (merged lists).
struct Received<'a> {
    method: Method,
    query: Option<&'a str>,
    body: Bytes,
    headers: &'a HeaderMap,
}

/// A state-changing request acts once: the same signed request again (a replay, or a client
/// asking again within the second its signature is valid for) gets the first answer.
async fn act_once(
    api: &Api,
    caller: &Caller,
    params: &Params,
    route: commands::Route,
    received: Received<'_>,
) -> Response {
    let command = params.command();
    let now = time::OffsetDateTime::now_utc();
    // A legacy request (when allowed) carries no expiry: remember it for the longest validity
    // a signed one may have.
    let until = sign::param(params.raw(), sign::EXPIRES)
        .and_then(sign::parse_expires)
        .unwrap_or(now + api.signatures.max_validity);
    let signature = sign::param(params.raw(), sign::SIGNATURE).unwrap_or_default();
    let mut admission = api.replays.admit(&caller.api_key, signature, until, now);
    // The same request still running: wait for its answer a little (bounded).
    for _ in 0..REPLAY_WAIT_ROUNDS {
        if admission != Admission::Running {
            break;
        }
        tokio::time::sleep(REPLAY_WAIT).await;
        admission = api.replays.admit(&caller.api_key, signature, until, now);
    }
    match admission {
        Admission::Fresh => {
            // Dropped before the answer is recorded (the client went away): forget it.
            let pending = Unanswered {
                replays: &api.replays,
                api_key: &caller.api_key,
                signature,
            };
            let response = answer(api, caller, params, route, received).await;
            let (parts, body) = response.into_parts();
            let bytes = axum::body::to_bytes(body, MAX_REMEMBERED_ANSWER)
                .await
                .unwrap_or_default();
            std::mem::forget(pending);
            api.replays.answer(
                &caller.api_key,
                signature,
                (
                    parts.status.as_u16(),
                    String::from_utf8_lossy(&bytes).into_owned(),
                ),
            );
            Response::from_parts(parts, axum::body::Body::from(bytes))
        }
        Admission::Answered((status, body)) => {
            info!(user = %caller.username, %command, "request seen before: answered as then");
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            (
                status,
                [(header::CONTENT_TYPE, "application/json;charset=UTF-8")],
                body,
            )
                .into_response()
        }
        Admission::Running | Admission::Full => {
            warn!(user = %caller.username, %command, ?admission, "state-changing request deferred");
            error_response(
                command,
                &ApiError::new(503, Some(9999), "The request is busy; try again shortly"),
            )
        }
    }
}

/// An admitted state-changing request until its answer is recorded.
struct Unanswered<'a> {
    replays: &'a ReplayCache,
    api_key: &'a str,
    signature: &'a str,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        self.replays.abandon(self.api_key, self.signature);
    }
}

/// How long a repeated request waits for the original's answer: rounds of [`REPLAY_WAIT`].
const REPLAY_WAIT_ROUNDS: u32 = 100;
/// One round.
const REPLAY_WAIT: std::time::Duration = std::time::Duration::from_millis(100);
/// Our answers are small JSON objects; a bigger one is not kept.
const MAX_REMEMBERED_ANSWER: usize = 1 << 20;

/// Runs an authenticated request of ours (or a merged list) and shapes the response.
async fn answer(
    api: &Api,
    caller: &Caller,
    params: &Params,
    route: commands::Route,
    received: Received<'_>,
) -> Response {
    let command = params.command().to_string();
    let outcome = match route {
        commands::Route::Merged => {
            // CloudStack answers first (and checks the request its own way); ours are added.
            let upstream = api
                .forwarder
                .forward(
                    received.method,
                    received.query,
                    received.body,
                    content_type(received.headers),
                )
                .await;
            match upstream {
                Ok(upstream) if upstream.status == 200 => {
                    commands::merge(api, caller, params, &upstream.body).await
                }
                // A CloudStack without listApis (432) still gets ours.
                Ok(upstream)
                    if upstream.status == 432
                        && params.command().eq_ignore_ascii_case("listApis") =>
                {
                    commands::merge(api, caller, params, b"{}").await
                }
                Ok(upstream) => return passthrough(upstream),
                Err(err) => Err(upstream_error(&err)),
            }
        }
        _ => commands::dispatch(api, caller, params).await,
    };
    match outcome {
        Ok(reply) => json_response(200, &json!({ response_name(&command): reply.body() })),
        Err(err) => error_response(&command, &err),
    }
}

/// What CloudStack with CKS refuses although the command is CloudStack's: destroying a node
/// VM of a cluster (CKS's `checkVmCanBeDestroyed`; a destroyed node leaves the cluster broken).
/// Only callers who may see the cluster are told; anyone else is forwarded, and CloudStack
/// refuses them as it refuses access to any VM of another account.
async fn clusters_guard(api: &Api, params: &Params) -> Option<ApiError> {
    if !params
        .command()
        .eq_ignore_ascii_case("destroyVirtualMachine")
    {
        return None;
    }
    let vm_id = params.get("id")?;
    let node = api.ctx.store.node_by_vm(vm_id).ok().flatten()?;
    let cluster = api.ctx.store.cluster(&node.cluster_id).ok().flatten()?;
    let caller = match authenticate(api, params).await {
        Ok(caller) => caller,
        Err(err) => return Some(err),
    };
    match access::may_see(api, &caller, &cluster).await {
        Ok(true) => {}
        Ok(false) => return None,
        Err(err) => return Some(err),
    }
    info!(vm = %vm_id, cluster = %cluster.id, "refused to destroy a cluster node VM");
    Some(ApiError::internal(format!(
        "Instance is a part of a Kubernetes cluster: {}. Use Instance delete option from \
         Kubernetes cluster details or scale API for Kubernetes clusters with 'nodeids' to \
         destroy the instance.",
        cluster.name
    )))
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

fn passthrough(upstream: crate::cloudstack::ForwardedResponse) -> Response {
    let status = StatusCode::from_u16(upstream.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = (status, upstream.body).into_response();
    if let Some(ct) = upstream
        .content_type
        .and_then(|ct| header::HeaderValue::from_str(&ct).ok())
    {
        response.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    response
}

fn upstream_error(err: &crate::cloudstack::CloudStackError) -> ApiError {
    warn!(error = %crate::error_chain(err), "CloudStack unreachable");
    upstream_error_text()
}

fn upstream_error_text() -> ApiError {
    ApiError::new(
        503,
        Some(9999),
        "CloudStack management server is not reachable from the Kubernetes service; try again",
    )
}

async fn forward(
    api: &Api,
    method: Method,
    query: Option<&str>,
    body: Bytes,
    headers: &HeaderMap,
    command: &str,
) -> Response {
    let Ok(_slot) = api.forwarding.acquire().await else {
        return error_response(command, &upstream_error_text());
    };
    match api
        .forwarder
        .forward(method, query, body, content_type(headers))
        .await
    {
        Ok(upstream) => {
            if upstream.status == 200
                && IDENTITY_CHANGES
                    .iter()
                    .any(|c| c.eq_ignore_ascii_case(command))
            {
                // A key regenerated or a user disabled through us takes effect here at once,
                // not when the identity cache expires.
                api.identity.invalidate_all();
            }
            passthrough(upstream)
        }
        Err(err) => error_response(command, &upstream_error(&err)),
    }
}

/// CloudStack commands that change who an API key belongs to, whether it works, or the role
/// behind it.
const IDENTITY_CHANGES: &[&str] = &[
    "registerUserKeys",
    "deleteUserKeys",
    "updateUser",
    "disableUser",
    "lockUser",
    "deleteUser",
    "moveUser",
    "updateAccount",
    "disableAccount",
    "lockAccount",
    "enableAccount",
    "deleteAccount",
    "enableUser",
    "createRolePermission",
    "updateRolePermission",
    "deleteRolePermission",
    "updateRole",
    "deleteRole",
    "importRole",
];

/// Who signed the request, checked as CloudStack checks it.
///
/// # Errors
/// 401 for an unknown key, a bad signature or an expired request; 503 when CloudStack cannot
/// be asked who owns the key.
pub async fn authenticate(api: &Api, params: &Params) -> Result<Caller, ApiError> {
    let api_key = sign::param(params.raw(), sign::API_KEY).ok_or_else(ApiError::unauthorized)?;
    let caller = match api.identity.resolve(api_key).await {
        Ok(caller) => caller,
        Err(IdentityError::Lookup(err)) => return Err(upstream_error(&err)),
        Err(err) => {
            info!(error = %err, "request refused");
            return Err(ApiError::unauthorized());
        }
    };
    let now = time::OffsetDateTime::now_utc();
    let policy = sign::VerifyPolicy {
        require_expires: !api.signatures.allow_legacy,
        max_validity: Some(api.signatures.max_validity),
    };
    if let Err(err) =
        sign::verify_with(params.raw(), caller.secret_key.expose_secret(), now, policy)
    {
        info!(user = %caller.username, error = %err, "request refused");
        return Err(ApiError::unauthorized());
    }
    Ok(caller)
}
