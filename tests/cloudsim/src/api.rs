//! The HTTP layer: `/client/api` (authentication, faults, dispatch, response shapes) and the
//! control endpoints for tests: `/sim/faults` (GET the configuration and log, POST a new
//! configuration) and `/sim/external-lb` (GET the list, POST to add one, DELETE to remove one;
//! see [`crate::external_lb`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::Inner;
use crate::commands::{self, Background, Caller, Ctx, NodeAction, Params};
use crate::error::ApiError;
use crate::external_lb::{ExternalLbAddress, ExternalLbRequest};
use crate::faults::FaultConfig;
use crate::model::{Db, IsoStatus};
use crate::{download, jobs, signing, store};

pub(crate) fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/client/api", any(client_api))
        .route("/sim/faults", get(get_faults).post(set_faults))
        .route(
            "/sim/external-lb",
            get(list_external_lbs)
                .post(post_external_lb)
                .delete(delete_external_lb),
        )
        .with_state(inner)
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

fn error_response(response_name: &str, err: &ApiError) -> Response {
    json_response(err.code, &json!({ response_name: err.body() }))
}

/// A response whose body breaks off after the first bytes: the client sees the connection
/// drop after the command already acted.
fn lost_response() -> Response {
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(b"{\"")),
        Err(std::io::Error::other("injected fault: response lost")),
    ];
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json;charset=UTF-8")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn authenticate(db: &Db, params: &Params) -> Result<Caller, ApiError> {
    let api_key = params.get("apikey").ok_or_else(ApiError::unauthorized)?;
    let signature = params.get("signature").ok_or_else(ApiError::unauthorized)?;
    let user = db
        .users
        .iter()
        .find(|u| u.api_key == api_key)
        .ok_or_else(ApiError::unauthorized)?;
    if let (Some("3"), Some(expires)) = (params.get("signatureversion"), params.get("expires")) {
        let expires = store::parse_time(expires).ok_or_else(ApiError::unauthorized)?;
        if expires < OffsetDateTime::now_utc() {
            tracing::info!(user = %user.username, "request expired");
            return Err(ApiError::unauthorized());
        }
    }
    if !signing::verify(&params.0, &user.secret_key, signature) {
        tracing::info!(user = %user.username, "request signature does not verify");
        return Err(ApiError::unauthorized());
    }
    let account = db
        .accounts
        .iter()
        .find(|a| a.id == user.account_id)
        .ok_or_else(ApiError::unauthorized)?;
    if account.state != "enabled" {
        tracing::info!(user = %user.username, state = %account.state, "account not enabled");
        return Err(ApiError::unauthorized());
    }
    Ok(Caller {
        user_id: user.id.clone(),
        account_id: account.id.clone(),
        account_name: account.name.clone(),
        admin: account.admin,
        domain_admin: account.domain_admin,
    })
}

async fn client_api(
    State(inner): State<Arc<Inner>>,
    method: Method,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let mut pairs: Vec<(String, String)> = query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    if method == Method::POST {
        pairs.extend(form_urlencoded::parse(&body).into_owned());
    }
    let params = Params(pairs);
    let command = params.get("command").unwrap_or_default().to_owned();
    let response_name = if command.is_empty() {
        "errorresponse".to_owned()
    } else {
        format!("{}response", command.to_lowercase())
    };
    let caller = match authenticate(&inner.db(), &params) {
        Ok(caller) => caller,
        Err(err) => return error_response(&response_name, &err),
    };
    if command.is_empty() {
        return error_response(
            &response_name,
            &ApiError::unknown_command("", &caller.user_id),
        );
    }
    inner.count_call(&command);
    let decision = inner.faults().decide(&command);
    if decision.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(decision.latency_ms)).await;
    }
    if let Some(err) = &decision.error {
        return error_response(&response_name, err);
    }
    let (result, background) = {
        let mut db = inner.db();
        let mut ctx = Ctx {
            db: &mut db,
            caller: &caller,
            params: &params,
            command: &command,
            decision: &decision,
            faults: &inner.faults,
            is_get: method == Method::GET,
            background: Vec::new(),
            node_actions: Vec::new(),
            applied_faults: Vec::new(),
        };
        let result = commands::dispatch(&mut ctx);
        let (background, node_actions, applied) =
            (ctx.background, ctx.node_actions, ctx.applied_faults);
        apply_node_actions(&inner, &db, node_actions);
        for fault in applied {
            inner.faults().record(&command, fault);
        }
        if result.is_ok() && !commands::is_read_only(&command) {
            inner.commit(&db);
        }
        (result, background)
    };
    for work in background {
        spawn_background(inner.clone(), work);
    }
    match result {
        Ok(outcome) if decision.lose_response => {
            // Bodies can hold secrets (private keys, API keys): log what the client lost
            // without them.
            let keys: Vec<String> = outcome
                .body()
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            tracing::warn!(%command, body_keys = ?keys, "response lost after acting");
            lost_response()
        }
        Ok(outcome) => json_response(200, &json!({ response_name: outcome.body() })),
        Err(err) => error_response(&response_name, &err),
    }
}

fn apply_node_actions(inner: &Inner, db: &Db, actions: Vec<NodeAction>) {
    for action in actions {
        let result = match &action {
            NodeAction::Stop(vm) => inner.runner.stop(vm),
            NodeAction::Destroy(vm) => inner.runner.destroy(vm),
            NodeAction::SetIso(vm, iso) => inner.runner.set_iso(
                vm,
                iso.as_ref()
                    .and_then(|iso| commands::visible_iso_path(db, iso)),
            ),
        };
        if let Err(err) = result {
            tracing::error!(error = %err, ?action, "node runner failed");
        }
    }
}

fn spawn_background(inner: Arc<Inner>, work: Background) {
    match work {
        Background::Job(job_id) => {
            tokio::spawn(async move {
                tokio::time::sleep(inner.config.job_duration).await;
                if inner.is_closed() {
                    return;
                }
                let db = &mut inner.db();
                jobs::complete(db, &job_id, inner.runner.as_ref());
                inner.commit(db);
            });
        }
        Background::DownloadIso(iso_id) => {
            tokio::spawn(async move { download_iso(inner, iso_id).await });
        }
    }
}

async fn download_iso(inner: Arc<Inner>, iso_id: String) {
    let Some((url, checksum)) = inner
        .db()
        .isos
        .iter()
        .find(|i| i.id == iso_id)
        .map(|i| (i.url.clone(), i.checksum.clone()))
    else {
        return;
    };
    let dest = inner
        .config
        .state_dir
        .as_ref()
        .map(|d| d.join("isos").join(format!("{iso_id}.iso")));
    let result = download::download_iso(&url, checksum.as_deref(), dest.as_deref()).await;
    if inner.is_closed() {
        return;
    }
    let db = &mut inner.db();
    let Some(iso) = db.isos.iter_mut().find(|i| i.id == iso_id) else {
        return;
    };
    match result {
        Ok(size) => {
            tracing::info!(iso = %iso_id, %url, size, "ISO ready");
            iso.status = IsoStatus::Ready;
            iso.size = Some(size);
            iso.path = dest.map(|d| d.display().to_string());
        }
        Err(err) => {
            let reason =
                std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(": ");
            tracing::warn!(iso = %iso_id, %url, %reason, "ISO download failed");
            iso.status = IsoStatus::Failed(format!("Failed: {reason}"));
        }
    }
    inner.persist(db);
}

async fn get_faults(State(inner): State<Arc<Inner>>) -> Response {
    let faults = inner.faults();
    json_response(
        200,
        &json!({ "config": faults.config(), "log": faults.log() }),
    )
}

async fn set_faults(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match serde_json::from_slice::<FaultConfig>(&body) {
        Ok(config) => {
            tracing::info!(?config, "fault configuration set");
            inner.faults().configure(config);
            json_response(200, &json!({ "ok": true }))
        }
        Err(err) => json_response(400, &json!({ "error": err.to_string() })),
    }
}

async fn list_external_lbs(State(inner): State<Arc<Inner>>) -> Response {
    let lbs = inner.db().external_lbs.clone();
    json_response(200, &json!({ "externalloadbalancers": lbs }))
}

async fn post_external_lb(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    let request = match serde_json::from_slice::<ExternalLbRequest>(&body) {
        Ok(request) => request,
        Err(err) => return json_response(400, &json!({ "error": err.to_string() })),
    };
    match crate::add_external_lb(&inner, &request) {
        Ok(()) => json_response(200, &json!({ "ok": true })),
        Err(err) => json_response(400, &json!({ "error": err.to_string() })),
    }
}

async fn delete_external_lb(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match serde_json::from_slice::<ExternalLbAddress>(&body) {
        Ok(address) if crate::remove_external_lb(&inner, address) => {
            json_response(200, &json!({ "ok": true }))
        }
        Ok(address) => json_response(
            404,
            &json!({ "error": format!("no external load balancer on {}:{}", address.ip, address.port) }),
        ),
        Err(err) => json_response(400, &json!({ "error": err.to_string() })),
    }
}
