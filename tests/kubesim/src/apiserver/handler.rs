//! The REST API over the object store: routing, discovery, authorization, and the verbs
//! kubectl uses (get, list, create, update, patch, delete, evict; watch is streamed by the
//! server layer from a [`WatchRequest`]). Synchronous and free of network code, so it can be
//! tested directly; the server runs it on a blocking thread.
//!
//! Errors are Kubernetes `Status` objects with the real reasons and codes (`NotFound` 404,
//! `AlreadyExists` 409, `Conflict` 409, `Forbidden` 403, `BadRequest` 400, `Invalid` 422,
//! `UnsupportedMediaType` 415, `MethodNotAllowed` 405, `InternalError` 500).

use std::net::Ipv4Addr;

use serde_json::{Value, json};

use super::table::{IncludeObject, table};
use crate::clock::{now_unix, rfc3339};
use crate::patch::{json_patch, merge_patch, strategic_merge_patch};
use crate::resources::{Registry, Resource};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{Objects, Store, name_of, namespace_of, uid_of};

/// Namespaces every cluster has and that cannot be deleted.
pub const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

/// An authenticated caller, from its client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The certificate's CN.
    pub name: String,
    /// The certificate's Os.
    pub groups: Vec<String>,
}

impl User {
    fn is_node(&self) -> bool {
        self.groups.iter().any(|g| g == "system:nodes")
    }
}

/// One HTTP request, as the handler needs it.
#[derive(Debug, Clone, Default)]
pub struct ApiRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// Decoded query parameters.
    pub query: Vec<(String, String)>,
    /// The `Accept` header.
    pub accept: String,
    /// The `Content-Type` header.
    pub content_type: String,
    /// The body.
    pub body: Vec<u8>,
    /// The caller, `None` when anonymous.
    pub user: Option<User>,
}

impl ApiRequest {
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What to stream for a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchRequest {
    /// The store key of the resource.
    pub resource: String,
    /// The `apiVersion` to give objects.
    pub api_version: String,
    /// Their kind.
    pub kind: String,
    /// One namespace, or all.
    pub namespace: Option<String>,
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
    /// Only changes after this resource version; `None` starts with every object as `ADDED`.
    pub since: Option<u64>,
    /// `timeoutSeconds`.
    pub timeout_seconds: u64,
}

impl WatchRequest {
    /// The objects this watch covers in `objects`, typed for the response.
    pub fn select(&self, objects: &Objects) -> Vec<Value> {
        objects
            .list(&self.resource, self.namespace.as_deref())
            .into_iter()
            .filter(|o| self.labels.matches(o.pointer("/metadata/labels")))
            .filter(|o| self.fields.matches(o))
            .map(|o| typed(o.clone(), &self.api_version, &self.kind))
            .collect()
    }
}

/// A response body.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiBody {
    /// Bytes.
    Full(Vec<u8>),
    /// A stream of watch events.
    Watch(Box<WatchRequest>),
}

/// One HTTP response.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: String,
    /// The body.
    pub body: ApiBody,
}

impl ApiResponse {
    fn json(status: u16, value: &Value) -> ApiResponse {
        ApiResponse {
            status,
            content_type: "application/json".into(),
            body: ApiBody::Full(serde_json::to_vec(value).unwrap_or_default()),
        }
    }

    fn text(status: u16, text: &str) -> ApiResponse {
        ApiResponse {
            status,
            content_type: "text/plain; charset=utf-8".into(),
            body: ApiBody::Full(text.as_bytes().to_vec()),
        }
    }

    /// The body as JSON (tests).
    pub fn body_json(&self) -> Value {
        match &self.body {
            ApiBody::Full(bytes) => serde_json::from_slice(bytes).unwrap_or(Value::Null),
            ApiBody::Watch(_) => Value::Null,
        }
    }
}

/// A `Status` response.
pub fn status(code: u16, reason: &str, message: &str, details: Value) -> ApiResponse {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": if code < 400 { "Success" } else { "Failure" },
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    });
    if code < 400 {
        body.as_object_mut().map(|m| m.remove("message"));
        body.as_object_mut().map(|m| m.remove("reason"));
    }
    ApiResponse::json(code, &body)
}

fn not_found_path() -> ApiResponse {
    status(
        404,
        "NotFound",
        "the server could not find the requested resource",
        json!({}),
    )
}

fn internal(err: impl std::fmt::Display) -> ApiResponse {
    status(
        500,
        "InternalError",
        &format!("Internal error occurred: {err}"),
        json!({}),
    )
}

fn bad_request(message: &str) -> ApiResponse {
    status(400, "BadRequest", message, json!({}))
}

/// `obj` with `apiVersion` and `kind` set.
fn typed(mut obj: Value, api_version: &str, kind: &str) -> Value {
    if let Value::Object(map) = &mut obj {
        map.insert("apiVersion".into(), json!(api_version));
        map.insert("kind".into(), json!(kind));
    }
    obj
}

/// A resource URL, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ResourcePath {
    group: String,
    version: String,
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
    sub: Option<String>,
}

enum Route {
    Version,
    Health,
    OpenApiV2,
    ApiVersions,
    ApiGroupList,
    ApiGroup(String),
    ResourceList(String, String),
    Resource(ResourcePath),
}

fn route(path: &str) -> Option<Route> {
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segments.as_slice() {
        ["version"] => return Some(Route::Version),
        ["healthz" | "livez" | "readyz", ..] => return Some(Route::Health),
        ["openapi", "v2"] => return Some(Route::OpenApiV2),
        ["api"] => return Some(Route::ApiVersions),
        ["apis"] => return Some(Route::ApiGroupList),
        ["apis", group] => return Some(Route::ApiGroup(group.to_string())),
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let owned = |s: &&str| s.to_string();
    let resource =
        |namespace: Option<&&str>, plural: &&str, name: Option<&&str>, sub: Option<&&str>| {
            Route::Resource(ResourcePath {
                group: group.to_string(),
                version: version.to_string(),
                namespace: namespace.map(owned),
                plural: plural.to_string(),
                name: name.map(owned),
                sub: sub.map(owned),
            })
        };
    Some(match rest {
        [] => Route::ResourceList(group.to_string(), version.to_string()),
        ["namespaces", ns, sub @ ("status" | "finalize")] if group.is_empty() => {
            resource(None, &"namespaces", Some(ns), Some(sub))
        }
        ["namespaces", ns, plural] => resource(Some(ns), plural, None, None),
        ["namespaces", ns, plural, name] => resource(Some(ns), plural, Some(name), None),
        ["namespaces", ns, plural, name, sub] => resource(Some(ns), plural, Some(name), Some(sub)),
        [plural] => resource(None, plural, None, None),
        [plural, name] => resource(None, plural, Some(name), None),
        [plural, name, sub] => resource(None, plural, Some(name), Some(sub)),
        _ => return None,
    })
}

/// The API over one cluster's store.
#[derive(Debug, Clone)]
pub struct Api {
    /// The objects.
    pub store: Store,
    /// The version this server reports (`v1.33.1`).
    pub version: String,
    /// `host:port` clients should use (discovery's `serverAddressByClientCIDRs`).
    pub server_address: String,
    /// The first address of the service network (the `kubernetes` Service's IP).
    pub service_network: Ipv4Addr,
}

/// The qualified resource name used in messages (`nodes`, `deployments.apps`).
fn qualified(resource: &Resource) -> String {
    resource.key()
}

fn not_found(resource: &Resource, name: &str) -> ApiResponse {
    let mut details = json!({"name": name, "kind": resource.plural});
    if !resource.group.is_empty() {
        details["group"] = json!(resource.group);
    }
    status(
        404,
        "NotFound",
        &format!("{} \"{name}\" not found", qualified(resource)),
        details,
    )
}

fn verb(req: &ApiRequest, has_name: bool) -> &'static str {
    match (req.method.as_str(), has_name) {
        ("GET", true) => "get",
        ("GET", false) if req.param("watch").is_some_and(|w| w == "true" || w == "1") => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

impl Api {
    /// Answers one request.
    pub fn handle(&self, req: &ApiRequest) -> ApiResponse {
        let Some(route) = route(&req.path) else {
            return not_found_path();
        };
        match route {
            Route::Version => return self.version_info(),
            Route::Health => return ApiResponse::text(200, "ok"),
            _ => {}
        }
        let Some(user) = &req.user else {
            if let Route::Resource(rp) = &route
                && req.method == "GET"
                && rp.namespace.as_deref() == Some("kube-public")
                && rp.plural == "configmaps"
                && rp.name.as_deref() == Some("cluster-info")
            {
                return self.resource(req, rp);
            }
            let verb = req.method.to_lowercase();
            return status(
                403,
                "Forbidden",
                &format!(
                    "forbidden: User \"system:anonymous\" cannot {verb} path \"{}\"",
                    req.path
                ),
                json!({}),
            );
        };
        match route {
            Route::OpenApiV2 => self.openapi_v2(req),
            Route::ApiVersions => {
                ApiResponse::json(200, &Registry::builtin().api_versions(&self.server_address))
            }
            Route::ApiGroupList => match self.registry() {
                Ok(r) => ApiResponse::json(200, &r.api_group_list()),
                Err(e) => e,
            },
            Route::ApiGroup(group) => match self.registry() {
                Ok(r) => r
                    .api_group(&group)
                    .map_or_else(not_found_path, |doc| ApiResponse::json(200, &doc)),
                Err(e) => e,
            },
            Route::ResourceList(group, version) => match self.registry() {
                Ok(r) => r
                    .resource_list(&group, &version)
                    .map_or_else(not_found_path, |doc| ApiResponse::json(200, &doc)),
                Err(e) => e,
            },
            Route::Resource(rp) => {
                if let Err(denied) = authorize(user, req, &rp) {
                    return denied;
                }
                self.resource(req, &rp)
            }
            Route::Version | Route::Health => not_found_path(),
        }
    }

    fn registry(&self) -> Result<Registry, ApiResponse> {
        let objects = self.store.read().map_err(internal)?;
        Ok(Registry::with_crds(&objects))
    }

    fn version_info(&self) -> ApiResponse {
        let bare = self.version.trim_start_matches('v');
        let mut parts = bare.split('.');
        let major = parts.next().unwrap_or("1");
        let minor = parts.next().unwrap_or("0");
        ApiResponse::json(
            200,
            &json!({
                "major": major,
                "minor": minor,
                "gitVersion": self.version,
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean",
                "buildDate": "2025-01-01T00:00:00Z",
                "goVersion": "go1.24.0",
                "compiler": "gc",
                "platform": format!("linux/{}", crate::env::go_arch()),
            }),
        )
    }

    /// An empty OpenAPI v2 document: kubectl finds no schema for any kind, so it validates
    /// nothing on the client side and computes patches from its compiled-in types, as it does
    /// for kinds a real server's document lacks.
    fn openapi_v2(&self, req: &ApiRequest) -> ApiResponse {
        if req.accept.contains("protobuf") || req.accept.is_empty() {
            ApiResponse {
                status: 200,
                content_type: "application/com.github.proto-openapi.spec.v2.v1.0+protobuf".into(),
                body: ApiBody::Full(Vec::new()),
            }
        } else {
            ApiResponse::json(
                200,
                &json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": self.version}, "paths": {}, "definitions": {}}),
            )
        }
    }

    fn resource(&self, req: &ApiRequest, rp: &ResourcePath) -> ApiResponse {
        let registry = match self.registry() {
            Ok(r) => r,
            Err(e) => return e,
        };
        let Some(resource) = registry
            .find_served(&rp.group, &rp.version, &rp.plural)
            .cloned()
        else {
            return not_found_path();
        };
        if rp.namespace.is_some() && !resource.namespaced {
            return not_found_path();
        }
        if rp.name.is_none() && rp.sub.is_some() {
            return not_found_path();
        }
        if let Some(sub) = &rp.sub
            && resource.subresource(sub).is_none()
        {
            return not_found_path();
        }
        if resource.namespaced && rp.name.is_some() && rp.namespace.is_none() {
            return not_found_path();
        }
        let api_version = resource.api_version(&rp.version);
        let namespace = rp.namespace.clone().unwrap_or_default();
        match (req.method.as_str(), &rp.name, rp.sub.as_deref()) {
            ("GET", None, None) => self.list(req, &resource, &api_version, rp.namespace.as_deref()),
            ("GET", Some(name), sub) => {
                self.get(req, &resource, &api_version, &namespace, name, sub)
            }
            ("POST", None, None) => self.create(req, &resource, &api_version, &namespace),
            ("POST", Some(name), Some("eviction")) => self.evict(req, &namespace, name),
            ("PUT", Some(name), sub) => {
                self.update(req, &resource, &api_version, &namespace, name, sub)
            }
            ("PATCH", Some(name), sub) => {
                self.patch(req, &resource, &api_version, &namespace, name, sub)
            }
            ("DELETE", Some(name), None) => {
                self.delete(req, &resource, &api_version, &namespace, name)
            }
            ("DELETE", None, None) => {
                self.delete_collection(req, &resource, &api_version, rp.namespace.as_deref())
            }
            (method, _, _) => status(
                405,
                "MethodNotAllowed",
                &format!(
                    "the server does not allow this method on the requested resource ({method})"
                ),
                json!({}),
            ),
        }
    }

    fn selectors(req: &ApiRequest) -> Result<(LabelSelector, FieldSelector), ApiResponse> {
        let labels = LabelSelector::parse(req.param("labelSelector").unwrap_or_default())
            .map_err(|e| bad_request(&e.to_string()))?;
        let fields = FieldSelector::parse(req.param("fieldSelector").unwrap_or_default())
            .map_err(|e| bad_request(&e.to_string()))?;
        Ok((labels, fields))
    }

    fn list(
        &self,
        req: &ApiRequest,
        resource: &Resource,
        api_version: &str,
        namespace: Option<&str>,
    ) -> ApiResponse {
        let (labels, fields) = match Api::selectors(req) {
            Ok(s) => s,
            Err(e) => return e,
        };
        if req.param("watch").is_some_and(|w| w == "true" || w == "1") {
            let since = req
                .param("resourceVersion")
                .and_then(|rv| rv.parse::<u64>().ok())
                .filter(|rv| *rv > 0);
            return ApiResponse {
                status: 200,
                content_type: "application/json".into(),
                body: ApiBody::Watch(Box::new(WatchRequest {
                    resource: resource.key(),
                    api_version: api_version.to_string(),
                    kind: resource.kind.clone(),
                    namespace: namespace.map(str::to_string),
                    labels,
                    fields,
                    since,
                    timeout_seconds: req
                        .param("timeoutSeconds")
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(1800),
                })),
            };
        }
        let objects = match self.store.read() {
            Ok(o) => o,
            Err(e) => return internal(e),
        };
        let items: Vec<Value> = objects
            .list(&resource.key(), namespace)
            .into_iter()
            .filter(|o| labels.matches(o.pointer("/metadata/labels")))
            .filter(|o| fields.matches(o))
            .map(|o| typed(o.clone(), api_version, &resource.kind))
            .collect();
        let rv = objects.resource_version.to_string();
        if let Some(table_version) = wants_table(&req.accept) {
            return ApiResponse::json(
                200,
                &table(
                    &resource.kind,
                    &items,
                    &rv,
                    now_unix(),
                    include_object(req),
                    table_version,
                ),
            );
        }
        ApiResponse::json(
            200,
            &json!({
                "kind": format!("{}List", resource.kind),
                "apiVersion": api_version,
                "metadata": {"resourceVersion": rv},
                "items": items,
            }),
        )
    }

    fn get(
        &self,
        req: &ApiRequest,
        resource: &Resource,
        api_version: &str,
        namespace: &str,
        name: &str,
        sub: Option<&str>,
    ) -> ApiResponse {
        let objects = match self.store.read() {
            Ok(o) => o,
            Err(e) => return internal(e),
        };
        let Some(obj) = objects.get(&resource.key(), namespace, name) else {
            return not_found(resource, name);
        };
        if sub == Some("scale") {
            return ApiResponse::json(200, &scale_of(obj));
        }
        let obj = typed(obj.clone(), api_version, &resource.kind);
        if let Some(table_version) = wants_table(&req.accept) {
            let rv = objects.resource_version.to_string();
            return ApiResponse::json(
                200,
                &table(
                    &resource.kind,
                    &[obj],
                    &rv,
                    now_unix(),
                    include_object(req),
                    table_version,
                ),
            );
        }
        ApiResponse::json(200, &obj)
    }

    fn parse_body(req: &ApiRequest) -> Result<Value, ApiResponse> {
        let parsed = if req.content_type.contains("yaml") {
            serde_yaml_ng::from_slice::<Value>(&req.body).map_err(|e| e.to_string())
        } else {
            serde_json::from_slice::<Value>(&req.body).map_err(|e| e.to_string())
        };
        parsed.map_err(|e| bad_request(&format!("the request body could not be decoded: {e}")))
    }

    /// Runs `change` on the store, or on a copy for `dryRun`.
    fn change<T>(
        &self,
        req: &ApiRequest,
        change: impl FnOnce(&mut Objects) -> T,
    ) -> Result<T, ApiResponse> {
        if req.param("dryRun").is_some() {
            let mut copy = self.store.read().map_err(internal)?;
            Ok(change(&mut copy))
        } else {
            self.store.update(change).map_err(internal)
        }
    }

    fn create(
        &self,
        req: &ApiRequest,
        resource: &Resource,
        api_version: &str,
        namespace: &str,
    ) -> ApiResponse {
        let mut obj = match Api::parse_body(req) {
            Ok(v) => v,
            Err(e) => return e,
        };
        if let Err(e) = check_type(&obj, resource, api_version) {
            return e;
        }
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        let body_ns = namespace_of(&obj).to_string();
        if resource.namespaced {
            if !body_ns.is_empty() && body_ns != namespace {
                return bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                );
            }
            obj["metadata"]["namespace"] = json!(namespace);
        } else if let Some(meta) = obj["metadata"].as_object_mut() {
            meta.remove("namespace");
        }
        if name_of(&obj).is_empty() {
            match obj
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
            {
                Some(prefix) if !prefix.is_empty() => {
                    obj["metadata"]["name"] =
                        json!(format!("{prefix}{}", crate::ids::name_suffix()));
                }
                _ => {
                    return status(
                        422,
                        "Invalid",
                        &format!(
                            "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                            resource.kind
                        ),
                        json!({"kind": resource.plural, "causes": [{"reason": "FieldValueRequired", "message": "Required value: name or generateName is required", "field": "metadata.name"}]}),
                    );
                }
            }
        }
        if let Some(meta) = obj["metadata"].as_object_mut() {
            for k in [
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "managedFields",
            ] {
                meta.remove(k);
            }
        }
        let name = name_of(&obj).to_string();
        let key = resource.key();
        let resource_c = resource.clone();
        let service_network = self.service_network;
        let result = self.change(req, move |objects| -> Result<Value, ApiResponse> {
            if resource_c.namespaced && objects.get("namespaces", "", namespace).is_none() {
                return Err(status(
                    404,
                    "NotFound",
                    &format!("namespaces \"{namespace}\" not found"),
                    json!({"name": namespace, "kind": "namespaces"}),
                ));
            }
            if objects.get(&key, namespace, &name).is_some() {
                let mut details = json!({"name": name, "kind": resource_c.plural});
                if !resource_c.group.is_empty() {
                    details["group"] = json!(resource_c.group);
                }
                return Err(status(
                    409,
                    "AlreadyExists",
                    &format!("{} \"{name}\" already exists", qualified(&resource_c)),
                    details,
                ));
            }
            default_on_create(&resource_c.kind, &mut obj, objects, service_network);
            Ok(objects.put(&key, obj, now_unix()))
        });
        match result {
            Ok(Ok(created)) => ApiResponse::json(201, &typed(created, api_version, &resource.kind)),
            Ok(Err(e)) | Err(e) => e,
        }
    }

    fn update(
        &self,
        req: &ApiRequest,
        resource: &Resource,
        api_version: &str,
        namespace: &str,
        name: &str,
        sub: Option<&str>,
    ) -> ApiResponse {
        let body = match Api::parse_body(req) {
            Ok(v) => v,
            Err(e) => return e,
        };
        if sub != Some("scale")
            && let Err(e) = check_type(&body, resource, api_version)
        {
            return e;
        }
        if !name_of(&body).is_empty() && name_of(&body) != name {
            return bad_request("the name of the object does not match the name on the URL");
        }
        let wanted_rv = body
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|rv| !rv.is_empty())
            .map(str::to_string);
        self.replace_with(
            req,
            resource,
            api_version,
            namespace,
            name,
            sub,
            wanted_rv,
            move |_| Ok(body),
        )
    }

    fn patch(
        &self,
        req: &ApiRequest,
        resource: &Resource,
        api_version: &str,
        namespace: &str,
        name: &str,
        sub: Option<&str>,
    ) -> ApiResponse {
        let content_type = req
            .content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim();
        // Strategic merge patches need the compiled-in schema of a built-in type.
        let custom = Registry::builtin()
            .find(&resource.group, &resource.plural)
            .is_none();
        enum Kind {
            Json,
            Merge,
            Strategic,
        }
        let kind = match content_type {
            "application/json-patch+json" => Kind::Json,
            "application/merge-patch+json" => Kind::Merge,
            "application/strategic-merge-patch+json" if !custom => Kind::Strategic,
            other => {
                return status(
                    415,
                    "UnsupportedMediaType",
                    &format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json{} (got {other:?})",
                        if custom {
                            ""
                        } else {
                            ", application/strategic-merge-patch+json"
                        }
                    ),
                    json!({}),
                );
            }
        };
        let patch = match serde_json::from_slice::<Value>(&req.body) {
            Ok(p) => p,
            Err(e) => return bad_request(&format!("the patch could not be decoded: {e}")),
        };
        let wanted_rv = patch
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|rv| !rv.is_empty())
            .map(str::to_string);
        self.replace_with(
            req,
            resource,
            api_version,
            namespace,
            name,
            sub,
            wanted_rv,
            move |current| {
                let mut doc = current.clone();
                let result = match kind {
                    Kind::Json => json_patch(&mut doc, &patch),
                    Kind::Merge => {
                        merge_patch(&mut doc, &patch);
                        Ok(())
                    }
                    Kind::Strategic => strategic_merge_patch(&mut doc, &patch),
                };
                result.map(|()| doc).map_err(|e| {
                    status(
                        422,
                        "Invalid",
                        &e.to_string(),
                        json!({"name": name_of(current)}),
                    )
                })
            },
        )
    }

    /// The common path of PUT and PATCH: `compute` gets the current object (or its Scale for
    /// `/scale`) and returns the wanted one; immutable metadata and, for resources with a
    /// status sub-resource, the part the endpoint does not own are kept.
    #[allow(clippy::too_many_arguments)]
    fn replace_with(
        &self,
        req: &ApiRequest,
        resource: &Resource,
        api_version: &str,
        namespace: &str,
        name: &str,
        sub: Option<&str>,
        wanted_rv: Option<String>,
        compute: impl FnOnce(&Value) -> Result<Value, ApiResponse>,
    ) -> ApiResponse {
        let key = resource.key();
        let has_status = resource.subresource("status").is_some();
        let is_scale = sub == Some("scale");
        let sub = sub.map(str::to_string);
        let resource_c = resource.clone();
        let result = self.change(req, move |objects| -> Result<Value, ApiResponse> {
            let Some(current) = objects.get(&key, namespace, name).cloned() else {
                return Err(not_found(&resource_c, name));
            };
            let current_rv = current
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if let Some(rv) = &wanted_rv
                && *rv != current_rv
            {
                return Err(status(
                    409,
                    "Conflict",
                    &format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                        qualified(&resource_c)
                    ),
                    json!({"name": name, "kind": resource_c.plural}),
                ));
            }
            let mut wanted = if sub.as_deref() == Some("scale") {
                let scale = compute(&scale_of(&current))?;
                let mut next = current.clone();
                if let Some(replicas) = scale.pointer("/spec/replicas") {
                    next["spec"]["replicas"] = replicas.clone();
                }
                next
            } else {
                compute(&current)?
            };
            if !wanted.is_object() {
                return Err(bad_request("the object is not a JSON object"));
            }
            // Immutable metadata, and the part of the object this endpoint does not own.
            for field in ["uid", "creationTimestamp", "name", "namespace", "deletionTimestamp", "generation"] {
                match current.pointer(&format!("/metadata/{field}")) {
                    Some(v) => wanted["metadata"][field] = v.clone(),
                    None => {
                        if let Some(m) = wanted["metadata"].as_object_mut() {
                            m.remove(field);
                        }
                    }
                }
            }
            if sub.as_deref() == Some("status") {
                let new_status = wanted.get("status").cloned();
                wanted = current.clone();
                match new_status {
                    Some(s) => wanted["status"] = s,
                    None => {
                        wanted.as_object_mut().map(|m| m.remove("status"));
                    }
                }
            } else if has_status {
                match current.get("status") {
                    Some(s) => wanted["status"] = s.clone(),
                    None => {
                        wanted.as_object_mut().map(|m| m.remove("status"));
                    }
                }
            }
            wanted["metadata"]["resourceVersion"] = json!(current_rv);
            let strip = |v: &Value| {
                let mut v = v.clone();
                if let Some(m) = v.as_object_mut() {
                    m.remove("metadata");
                    m.remove("status");
                    m.remove("apiVersion");
                    m.remove("kind");
                }
                v
            };
            let comparable = |v: &Value| {
                let mut v = v.clone();
                if let Some(m) = v.as_object_mut() {
                    m.remove("apiVersion");
                    m.remove("kind");
                }
                v
            };
            if comparable(&wanted) == comparable(&current) {
                return Ok(current);
            }
            if strip(&wanted) != strip(&current) && current.pointer("/metadata/generation").is_some() {
                let generation = current
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                wanted["metadata"]["generation"] = json!(generation + 1);
            }
            Ok(objects.put(&key, wanted, now_unix()))
        });
        match result {
            Ok(Ok(obj)) if is_scale => ApiResponse::json(200, &scale_of(&obj)),
            Ok(Ok(obj)) => ApiResponse::json(200, &typed(obj, api_version, &resource.kind)),
            Ok(Err(e)) | Err(e) => e,
        }
    }

    fn delete(
        &self,
        req: &ApiRequest,
        resource: &Resource,
        api_version: &str,
        namespace: &str,
        name: &str,
    ) -> ApiResponse {
        if resource.plural == "namespaces"
            && resource.group.is_empty()
            && SYSTEM_NAMESPACES.contains(&name)
        {
            return status(
                403,
                "Forbidden",
                &format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
                json!({"name": name, "kind": "namespaces"}),
            );
        }
        let key = resource.key();
        let resource_c = resource.clone();
        let result = self.change(req, move |objects| -> Result<Value, ApiResponse> {
            let Some(removed) = objects.remove(&key, namespace, name) else {
                return Err(not_found(&resource_c, name));
            };
            if resource_c.plural == "namespaces" && resource_c.group.is_empty() {
                let resources: Vec<String> = objects.items.keys().cloned().collect();
                for r in resources {
                    let doomed: Vec<String> = objects
                        .list(&r, Some(name))
                        .iter()
                        .map(|o| name_of(o).to_string())
                        .collect();
                    for n in doomed {
                        objects.remove(&r, name, &n);
                    }
                }
            }
            Ok(removed)
        });
        match result {
            Ok(Ok(removed)) => {
                let mut removed = typed(removed, api_version, &resource.kind);
                removed["metadata"]["deletionTimestamp"] = json!(rfc3339(now_unix()));
                ApiResponse::json(200, &removed)
            }
            Ok(Err(e)) | Err(e) => e,
        }
    }

    fn delete_collection(
        &self,
        req: &ApiRequest,
        resource: &Resource,
        api_version: &str,
        namespace: Option<&str>,
    ) -> ApiResponse {
        let (labels, fields) = match Api::selectors(req) {
            Ok(s) => s,
            Err(e) => return e,
        };
        let key = resource.key();
        let result = self.change(req, |objects| {
            let doomed: Vec<Value> = objects
                .list(&key, namespace)
                .into_iter()
                .filter(|o| labels.matches(o.pointer("/metadata/labels")))
                .filter(|o| fields.matches(o))
                .cloned()
                .collect();
            for o in &doomed {
                objects.remove(&key, namespace_of(o), name_of(o));
            }
            doomed
        });
        match result {
            Ok(items) => ApiResponse::json(
                200,
                &json!({
                    "kind": format!("{}List", resource.kind),
                    "apiVersion": api_version,
                    "metadata": {},
                    "items": items.into_iter().map(|o| typed(o, api_version, &resource.kind)).collect::<Vec<_>>(),
                }),
            ),
            Err(e) => e,
        }
    }

    fn evict(&self, req: &ApiRequest, namespace: &str, name: &str) -> ApiResponse {
        let body = match Api::parse_body(req) {
            Ok(v) => v,
            Err(e) => return e,
        };
        if body.get("kind").and_then(Value::as_str) != Some("Eviction") {
            return bad_request("the body of an eviction must be an Eviction");
        }
        if !name_of(&body).is_empty() && name_of(&body) != name {
            return bad_request("name in URL does not match name in Eviction object");
        }
        let pods = Registry::builtin().find("", "pods").cloned();
        let result = self.change(req, |objects| -> Result<(), ApiResponse> {
            let Some(pod) = objects.get("pods", namespace, name).cloned() else {
                return Err(pods.as_ref().map_or_else(not_found_path, |p| not_found(p, name)));
            };
            let budgets: Vec<&Value> = objects
                .list("poddisruptionbudgets.policy", Some(namespace))
                .into_iter()
                .filter(|pdb| crate::controllers::budget_selects(pdb, &pod))
                .collect();
            if budgets.len() > 1 {
                return Err(status(
                    500,
                    "InternalError",
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                    json!({}),
                ));
            }
            if let Some(pdb) = budgets.first()
                && let Some(allowance) = crate::controllers::budget_allowance(objects, pdb)
                && !eviction_allowed(&pod, pdb, allowance)
            {
                return Err(status(
                    429,
                    "TooManyRequests",
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                    json!({"causes": [{"reason": "DisruptionBudget", "message": format!(
                        "The disruption budget {} needs {} healthy pods and has {} currently",
                        name_of(pdb), allowance.desired_healthy, allowance.current_healthy)}]}),
                ));
            }
            objects.remove("pods", namespace, name);
            Ok(())
        });
        match result {
            Ok(Ok(())) => status(201, "", "", json!({})),
            Ok(Err(e)) | Err(e) => e,
        }
    }
}

/// Whether `pdb`, with `allowance`, lets `pod` be evicted, as the eviction subresource decides:
/// pods that are not running (Pending, Succeeded, Failed) always go; a Running pod that is not
/// Ready goes when the budget is met (`unhealthyPodEvictionPolicy: IfHealthyBudget`, the
/// default) or always (`AlwaysAllow`); a Ready pod only while the budget allows a disruption.
fn eviction_allowed(pod: &Value, pdb: &Value, allowance: crate::controllers::Allowance) -> bool {
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("Pending");
    if matches!(phase, "Pending" | "Succeeded" | "Failed") {
        return true;
    }
    if !crate::controllers::pod_ready(pod) {
        let always = pdb
            .pointer("/spec/unhealthyPodEvictionPolicy")
            .and_then(Value::as_str)
            == Some("AlwaysAllow");
        return always || allowance.current_healthy >= allowance.desired_healthy;
    }
    allowance.disruptions_allowed > 0
}

/// The autoscaling/v1 Scale of a workload.
fn scale_of(obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": name_of(obj),
            "namespace": namespace_of(obj),
            "uid": uid_of(obj),
            "resourceVersion": obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null),
            "creationTimestamp": obj.pointer("/metadata/creationTimestamp").cloned().unwrap_or(Value::Null),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)},
        "status": {"replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0), "selector": selector},
    })
}

/// Whether the body is of the endpoint's type.
fn check_type(obj: &Value, resource: &Resource, api_version: &str) -> Result<(), ApiResponse> {
    if !obj.is_object() {
        return Err(bad_request("the object is not a JSON object"));
    }
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    if !kind.is_empty() && kind != resource.kind {
        return Err(bad_request(&format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            resource.kind
        )));
    }
    let version = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let group_of = |v: &str| {
        v.rsplit_once('/')
            .map_or(String::new(), |(g, _)| g.to_string())
    };
    if !version.is_empty() && group_of(version) != group_of(api_version) {
        return Err(bad_request(&format!(
            "the API version in the data ({version}) does not match the expected API version ({api_version})"
        )));
    }
    Ok(())
}

/// `Some("v1")`/`Some("v1beta1")` when the client asks for a Table.
fn wants_table(accept: &str) -> Option<&'static str> {
    accept
        .split(',')
        .find(|part| part.contains("as=Table"))
        .map(|part| {
            if part.contains("v=v1beta1") {
                "v1beta1"
            } else {
                "v1"
            }
        })
}

fn include_object(req: &ApiRequest) -> IncludeObject {
    match req.param("includeObject") {
        Some("None") => IncludeObject::None,
        Some("Object") => IncludeObject::Object,
        _ => IncludeObject::Metadata,
    }
}

/// Who may do what: anonymous callers are handled before; nodes (`system:nodes`) read
/// everything and write only their own Node, pods, events, leases and CSRs; every other
/// certificate the cluster CA signed is an administrator (kubeadm's `admin.conf`,
/// controller-manager, scheduler).
fn authorize(user: &User, req: &ApiRequest, rp: &ResourcePath) -> Result<(), ApiResponse> {
    let verb = verb(req, rp.name.is_some());
    if !user.is_node() || matches!(verb, "get" | "list" | "watch") {
        return Ok(());
    }
    let own_node = user.name.strip_prefix("system:node:");
    let allowed = match (rp.group.as_str(), rp.plural.as_str()) {
        ("", "nodes") => rp.name.is_none() || rp.name.as_deref() == own_node,
        ("", "pods" | "events")
        | ("coordination.k8s.io", "leases")
        | ("certificates.k8s.io", "certificatesigningrequests")
        | ("events.k8s.io", "events") => true,
        _ => false,
    };
    if allowed {
        return Ok(());
    }
    let scope = match &rp.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".into(),
    };
    let subject = match &rp.name {
        Some(n) => format!("{} \"{n}\"", rp.plural),
        None => rp.plural.clone(),
    };
    Err(status(
        403,
        "Forbidden",
        &format!(
            "{subject} is forbidden: User \"{}\" cannot {verb} resource \"{}\" in API group \"{}\" {scope}",
            user.name, rp.plural, rp.group
        ),
        json!({"name": rp.name.clone().unwrap_or_default(), "kind": rp.plural}),
    ))
}

/// The server's defaults, applied when an object is created.
fn default_on_create(kind: &str, obj: &mut Value, objects: &Objects, service_network: Ipv4Addr) {
    let name = name_of(obj).to_string();
    if obj.get("spec").is_some() {
        obj["metadata"]["generation"] = json!(1);
    }
    match kind {
        "Namespace" => {
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            if obj.pointer("/spec/finalizers").is_none() {
                obj["spec"]["finalizers"] = json!(["kubernetes"]);
            }
            obj["status"] = json!({"phase": "Active"});
        }
        "Service" => default_service(obj, objects, service_network),
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => default_workload(kind, obj),
        "Pod" if obj.get("status").is_none() => {
            obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
        }
        "Secret" => {
            if obj.get("type").is_none() {
                obj["type"] = json!("Opaque");
            }
            if let Some(Value::Object(string_data)) =
                obj.as_object_mut().and_then(|m| m.remove("stringData"))
            {
                use base64::Engine;
                for (k, v) in string_data {
                    let encoded = base64::engine::general_purpose::STANDARD
                        .encode(v.as_str().unwrap_or_default());
                    obj["data"][k] = json!(encoded);
                }
            }
        }
        "CustomResourceDefinition" => {
            let names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
            let stored: Vec<Value> = obj
                .pointer("/spec/versions")
                .and_then(Value::as_array)
                .map(|vs| {
                    vs.iter()
                        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                        .filter_map(|v| v.get("name").cloned())
                        .collect()
                })
                .unwrap_or_default();
            let now = rfc3339(now_unix());
            obj["status"] = json!({
                "acceptedNames": names,
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
                ],
                "storedVersions": stored,
            });
        }
        _ => {}
    }
}

/// The defaults of the apps/v1 workloads (what `kubectl rollout status` looks at).
fn default_workload(kind: &str, obj: &mut Value) {
    let spec = &mut obj["spec"];
    let mut default = |field: &str, value: Value| {
        if spec.get(field).is_none_or(Value::is_null) {
            spec[field] = value;
        }
    };
    if kind != "DaemonSet" {
        default("replicas", json!(1));
    }
    if kind != "ReplicaSet" {
        default("revisionHistoryLimit", json!(10));
    }
    match kind {
        "Deployment" => {
            default("progressDeadlineSeconds", json!(600));
            default(
                "strategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
            );
        }
        "DaemonSet" => default(
            "updateStrategy",
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}),
        ),
        "StatefulSet" => {
            default("podManagementPolicy", json!("OrderedReady"));
            default(
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
            );
        }
        _ => {}
    }
}

fn default_service(obj: &mut Value, objects: &Objects, network: Ipv4Addr) {
    let spec = &mut obj["spec"];
    if spec.get("type").is_none() {
        spec["type"] = json!("ClusterIP");
    }
    if spec.get("sessionAffinity").is_none() {
        spec["sessionAffinity"] = json!("None");
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports {
            if port.get("protocol").is_none() {
                port["protocol"] = json!("TCP");
            }
            if port.get("targetPort").is_none()
                && let Some(p) = port.get("port").cloned()
            {
                port["targetPort"] = p;
            }
        }
    }
    if spec.get("type").and_then(Value::as_str) == Some("ExternalName") {
        return;
    }
    if spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        let used: Vec<String> = objects
            .list("services", None)
            .iter()
            .filter_map(|s| s.pointer("/spec/clusterIP").and_then(Value::as_str))
            .map(str::to_string)
            .collect();
        let base = u32::from(network);
        let ip = (1..4096u32)
            .map(|i| Ipv4Addr::from(base + i).to_string())
            .find(|ip| !used.contains(ip))
            .unwrap_or_default();
        spec["clusterIP"] = json!(ip);
    }
    let ip = spec["clusterIP"].clone();
    if spec.get("clusterIPs").is_none() {
        spec["clusterIPs"] = json!([ip]);
    }
    if spec.get("ipFamilies").is_none() {
        spec["ipFamilies"] = json!(["IPv4"]);
    }
    if spec.get("ipFamilyPolicy").is_none() {
        spec["ipFamilyPolicy"] = json!("SingleStack");
    }
    if spec.get("internalTrafficPolicy").is_none() {
        spec["internalTrafficPolicy"] = json!("Cluster");
    }
    obj["status"] = json!({"loadBalancer": {}});
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api() -> (tempfile::TempDir, Api) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        store
            .update(|o| {
                for ns in ["default", "kube-system"] {
                    o.put("namespaces", json!({"metadata": {"name": ns}}), 0);
                }
            })
            .unwrap();
        let api = Api {
            store,
            version: "v1.33.1".into(),
            server_address: "127.0.0.1:6443".into(),
            service_network: Ipv4Addr::new(10, 96, 0, 0),
        };
        (dir, api)
    }

    fn admin(method: &str, path: &str, body: Value) -> ApiRequest {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        ApiRequest {
            method: method.into(),
            path: path.into(),
            query: query
                .split('&')
                .filter(|q| !q.is_empty())
                .map(|q| {
                    let (k, v) = q.split_once('=').unwrap_or((q, ""));
                    (k.to_string(), v.to_string())
                })
                .collect(),
            accept: "application/json".into(),
            content_type: "application/json".into(),
            body: if body.is_null() {
                Vec::new()
            } else {
                serde_json::to_vec(&body).unwrap()
            },
            user: Some(User {
                name: "kubernetes-admin".into(),
                groups: vec!["kubeadm:cluster-admins".into()],
            }),
        }
    }

    #[test]
    fn unknown_paths_and_types_are_status_404s() {
        let (_dir, api) = api();
        for path in [
            "/nope",
            "/apis/nope.example/v1",
            "/api/v1/gizmos",
            "/apis/apps/v2/deployments",
        ] {
            let r = api.handle(&admin("GET", path, Value::Null));
            assert_eq!(r.status, 404, "{path}");
            assert_eq!(r.body_json()["kind"], "Status");
            assert_eq!(r.body_json()["reason"], "NotFound");
        }
        let mut anonymous = admin("GET", "/api", Value::Null);
        anonymous.user = None;
        assert_eq!(api.handle(&anonymous).status, 403);
        anonymous.path = "/version".into();
        assert_eq!(api.handle(&anonymous).body_json()["gitVersion"], "v1.33.1");
    }

    #[test]
    fn create_get_patch_delete_follow_the_api_rules() {
        let (_dir, api) = api();
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
        let created = api.handle(&admin(
            "POST",
            "/api/v1/namespaces/kube-system/configmaps",
            cm.clone(),
        ));
        assert_eq!(created.status, 201);
        assert_eq!(created.body_json()["metadata"]["namespace"], "kube-system");
        assert_eq!(
            api.handle(&admin(
                "POST",
                "/api/v1/namespaces/kube-system/configmaps",
                cm.clone()
            ))
            .body_json()["reason"],
            "AlreadyExists"
        );
        assert_eq!(
            api.handle(&admin("POST", "/api/v1/namespaces/nope/configmaps", cm))
                .status,
            404
        );
        let mut patch = admin(
            "PATCH",
            "/api/v1/namespaces/kube-system/configmaps/c",
            json!({"data": {"b": "2"}}),
        );
        patch.content_type = "application/strategic-merge-patch+json".into();
        let patched = api.handle(&patch).body_json();
        assert_eq!(patched["data"], json!({"a": "1", "b": "2"}));
        assert_ne!(
            patched["metadata"]["resourceVersion"],
            created.body_json()["metadata"]["resourceVersion"]
        );
        let list = api.handle(&admin(
            "GET",
            "/api/v1/configmaps?fieldSelector=metadata.namespace=kube-system",
            Value::Null,
        ));
        assert_eq!(list.body_json()["kind"], "ConfigMapList");
        assert_eq!(
            api.handle(&admin(
                "DELETE",
                "/api/v1/namespaces/kube-system/configmaps/c",
                Value::Null
            ))
            .status,
            200
        );
        assert_eq!(
            api.handle(&admin(
                "GET",
                "/api/v1/namespaces/kube-system/configmaps/c",
                Value::Null
            ))
            .body_json()["message"],
            "configmaps \"c\" not found"
        );
        assert_eq!(
            api.handle(&admin("DELETE", "/api/v1/namespaces/default", Value::Null))
                .status,
            403
        );
    }

    #[test]
    fn evictions_delete_pods_unless_a_budget_forbids_it() {
        let (_dir, api) = api();
        let put_pod = |name: &str, phase: &str, ready: &str| {
            api.store
                .update(|o| {
                    o.put(
                        "pods",
                        json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": "x"}},
                               "status": {"phase": phase, "conditions": [{"type": "Ready", "status": ready}]}}),
                        0,
                    )
                })
                .unwrap();
        };
        put_pod("a", "Running", "True");
        put_pod("b", "Running", "True");
        let eviction = |name: &str| {
            admin(
                "POST",
                &format!("/api/v1/namespaces/default/pods/{name}/eviction"),
                json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": "default"}}),
            )
        };
        api.handle(&admin(
            "POST",
            "/apis/policy/v1/namespaces/default/poddisruptionbudgets",
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "pdb"},
                   "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "x"}}}}),
        ));
        assert_eq!(api.handle(&eviction("a")).status, 201);
        let refused = api.handle(&eviction("b"));
        assert_eq!(refused.status, 429);
        assert_eq!(
            refused.body_json()["details"]["causes"][0]["message"],
            "The disruption budget pdb needs 1 healthy pods and has 1 currently"
        );
        assert_eq!(api.handle(&eviction("a")).status, 404);
        // Pods that are not running, or not Ready while the budget is met, may always go.
        put_pod("pending", "Pending", "False");
        assert_eq!(api.handle(&eviction("pending")).status, 201);
        put_pod("starting", "Running", "False");
        assert_eq!(api.handle(&eviction("starting")).status, 201);
        // A second budget over the same pods: the eviction subresource gives up.
        api.handle(&admin(
            "POST",
            "/apis/policy/v1/namespaces/default/poddisruptionbudgets",
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "other"},
                   "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "x"}}}}),
        ));
        assert_eq!(api.handle(&eviction("b")).status, 500);
    }

    #[test]
    fn nodes_may_only_write_their_own_node() {
        let (_dir, api) = api();
        let mut req = admin("PATCH", "/api/v1/nodes/other", json!({}));
        req.content_type = "application/merge-patch+json".into();
        req.user = Some(User {
            name: "system:node:mine".into(),
            groups: vec!["system:nodes".into()],
        });
        assert_eq!(api.handle(&req).status, 403);
        req.path = "/api/v1/nodes/mine".into();
        assert_eq!(api.handle(&req).status, 404);
    }
}
