//! The controller's public API (contract 3): CloudStack's `/client/api`, answering the
//! Kubernetes commands itself and forwarding everything else to CloudStack unchanged.
//!
//! One request goes through:
//! 1. **parse**: the query string and, for `POST`, the form body, decoded, in order;
//! 2. **route**: a Kubernetes command, one of ours by its id (`queryAsyncJobResult` of our job),
//!    a merged list (`listApis`, `listAsyncJobs`, `listConfigurations`), or CloudStack's: the
//!    original query and body are forwarded byte for byte (the signature covers only the
//!    parameters, so it stays valid) and CloudStack's answer comes back as it is — except
//!    `destroyVirtualMachine` of a cluster's node, which the owner is refused as CKS refuses it;
//! 3. **authenticate** (ours only): the API key's owner and secret come from CloudStack
//!    (`getUser`, `getUserKeys`, cached briefly) and the signature and `expires` are checked
//!    here, exactly as CloudStack checks them;
//! 4. **dispatch** to [`commands`] and shape the response: `{"<command>response": …}`, lists
//!    with `count` (or `{}` when empty), async commands with `jobid` (+ `id`), errors with
//!    `errorcode`/`cserrorcode`/`errortext` and HTTP status = errorcode.

pub mod commands;
pub mod error;
pub mod params;
pub mod results;

use std::net::SocketAddr;
use std::sync::Arc;

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
use self::params::{Params, parse_form};
use crate::cloudstack::identity::IdentityError;
use crate::cloudstack::{Caller, IdentityResolver, sign};
use crate::context::Context;
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
}

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

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

async fn client_api(
    State(api): State<Api>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut raw = parse_form(query.as_deref().unwrap_or_default());
    if method == Method::POST && is_form(&headers) {
        raw.extend(parse_form(&String::from_utf8_lossy(&body)));
    }
    let params = Params::new(raw);
    let command = params.command().to_string();
    let route = commands::route(&api, &params).await;
    debug!(%command, ?route, "request");
    if route == commands::Route::CloudStack {
        if let Some(refusal) = clusters_guard(&api, &params).await {
            return error_response(&command, &refusal);
        }
        return forward(&api, method, query.as_deref(), body, &headers, &command).await;
    }
    let caller = match authenticate(&api, &params).await {
        Ok(caller) => caller,
        Err(err) => return error_response(&command, &err),
    };
    let outcome = match route {
        commands::Route::Merged => {
            // CloudStack answers first (and checks the request its own way); ours are added.
            let upstream = api
                .ctx
                .cloud
                .client()
                .forward(method, query.as_deref(), body, content_type(&headers))
                .await;
            match upstream {
                Ok(upstream) if upstream.status == 200 => {
                    commands::merge(&api, &caller, &params, &upstream.body).await
                }
                // A CloudStack without listApis (432) still gets ours.
                Ok(upstream)
                    if upstream.status == 432
                        && params.command().eq_ignore_ascii_case("listApis") =>
                {
                    commands::merge(&api, &caller, &params, b"{}").await
                }
                Ok(upstream) => return passthrough(upstream),
                Err(err) => Err(upstream_error(&err)),
            }
        }
        _ => commands::dispatch(&api, &caller, &params).await,
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
    if !caller.is_admin() && caller.account_id != cluster.owner.account_id {
        return None;
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
    match api
        .ctx
        .cloud
        .client()
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
    "deleteAccount",
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
    if let Err(err) = sign::verify(params.raw(), caller.secret_key.expose_secret(), now) {
        info!(user = %caller.username, error = %err, "request refused");
        return Err(ApiError::unauthorized());
    }
    Ok(caller)
}
