//! A small stateful Kubernetes API server, in-process, for contract tests:
//! it stores objects by path and answers GET, LIST, POST, PATCH (server-side
//! apply, JSON patch, merge patch) and DELETE the way the real one does
//! where the operator depends on it: `resourceVersion` on every change and
//! 409 on a stale one, `generation` bumped by spec changes only (never by
//! status or metadata), `deletionTimestamp` while finalizers remain, 422
//! when a JSON patch `test` fails. Every request is recorded, so a test can
//! assert the exact calls a reconcile made.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::{Value, json};

/// Polls `check` every `every` until it gives a value; fails the test
/// after `within`.
pub async fn eventually<T>(
    what: &str,
    within: std::time::Duration,
    every: std::time::Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(every).await;
    }
}

/// One request as the fake server received it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

impl Request {
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }
    /// `PATCH status (apply)` and the like, for readable assertions.
    pub fn summary(&self) -> String {
        let kind = match self.content_type.as_str() {
            "application/apply-patch+yaml" => " (apply)",
            "application/json-patch+json" => " (json-patch)",
            "application/merge-patch+json" => " (merge)",
            _ => "",
        };
        format!("{} {}{kind}", self.method, self.path)
    }
}

struct Store {
    /// Every change as a watch event: (collection, `{type, object}`).
    events: tokio::sync::broadcast::Sender<(String, Value)>,
    /// The same events with their resourceVersion, so a watch started
    /// from a list's version misses nothing that happened in between.
    history: Vec<(u64, String, Value)>,
    /// The chart's RBAC rules for the operator.
    rules: Vec<PolicyRule>,
    /// Requests those rules did not allow, as `verb group/resource`.
    denied: Vec<String>,
    /// Collection path (`/apis/g/v/namespaces/ns/plural`) -> name -> object.
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    resource_version: u64,
    uid: u64,
    requests: Vec<Request>,
}

#[derive(Clone)]
pub struct FakeApiServer {
    store: Arc<Mutex<Store>>,
    pub url: String,
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    (
        code,
        axum::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
        })),
    )
        .into_response()
}

/// The operator's RBAC rules, as the chart renders them.
/// Marks a request of `admin_client`, which the authorizer lets through.
const ADMIN_HEADER: &str = "x-fake-cluster-admin";

pub const RULES_FILE: &str = "charts/sluice/files/operator-rules.yaml";
/// The rules `installCRDs` adds.
pub const CRD_RULES_FILE: &str = "charts/sluice/files/crd-rules.yaml";

fn chart_rules() -> Vec<PolicyRule> {
    [RULES_FILE, CRD_RULES_FILE]
        .iter()
        .flat_map(|file| {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(file);
            let text = std::fs::read_to_string(&path).expect("the chart's operator rules");
            serde_yaml::from_str::<Vec<PolicyRule>>(&text).expect("rules parse as PolicyRules")
        })
        .collect()
}

fn allows(
    rules: &[PolicyRule],
    group: &str,
    resource: &str,
    name: Option<&str>,
    verb: &str,
) -> bool {
    let has = |list: &Option<Vec<String>>, x: &str| {
        list.as_ref()
            .is_some_and(|l| l.iter().any(|v| v == x || v == "*"))
    };
    rules.iter().any(|r| {
        has(&r.api_groups, group)
            && has(&r.resources, resource)
            && r.verbs.iter().any(|v| v == verb || v == "*")
            && match &r.resource_names {
                Some(names) if !names.is_empty() => {
                    name.is_some_and(|n| names.iter().any(|x| x == n))
                }
                _ => true,
            }
    })
}

/// What the API server's authorizer would refuse of this request, if
/// anything: the verb on the resource, `create` for an apply that creates,
/// and `update` on `<owner>/finalizers` for a blocking owner reference
/// (OwnerReferencesPermissionEnforcement).
fn forbidden(
    s: &Store,
    method: &str,
    path: &str,
    query: &str,
    content_type: &str,
    body: &Value,
) -> Option<String> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let group = if parts.first() == Some(&"api") {
        ""
    } else {
        parts.get(1).copied().unwrap_or("")
    };
    let (collection, name, sub) = split(path);
    let plural = collection.rsplit('/').next().unwrap_or("");
    let resource = match &sub {
        Some(sub) => format!("{plural}/{sub}"),
        None => plural.to_string(),
    };
    let verb = match (method, &name) {
        ("GET", None) if query.contains("watch=true") => "watch",
        ("GET", None) => "list",
        ("GET", Some(_)) => "get",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("DELETE", _) => "delete",
        _ => "unknown",
    };
    let mut needed = vec![(group.to_string(), resource.clone(), verb)];
    let exists = name.as_ref().is_some_and(|n| {
        s.objects
            .get(&collection)
            .is_some_and(|m| m.contains_key(n))
    });
    if content_type == "application/apply-patch+yaml" && !exists {
        needed.push((group.to_string(), resource, "create"));
    }
    for owner in body
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if owner["blockOwnerDeletion"] == true {
            let owner_group = owner["apiVersion"]
                .as_str()
                .and_then(|v| v.rsplit_once('/'))
                .map_or("", |(g, _)| g);
            let kind = owner["kind"].as_str().unwrap_or("").to_lowercase();
            needed.push((
                owner_group.to_string(),
                format!("{kind}s/finalizers"),
                "update",
            ));
        }
    }
    needed
        .into_iter()
        .find(|(g, r, v)| !allows(&s.rules, g, r, name.as_deref(), v))
        .map(|(g, r, v)| format!("{v} {g}/{r} ({method} {path})"))
}

/// Whether objects stored under `stored` belong to a request for
/// `requested`: the same collection, or the all-namespaces one
/// (`/apis/g/v/topics` covers `/apis/g/v/namespaces/*/topics`).
fn in_collection(stored: &str, requested: &str) -> bool {
    if stored == requested {
        return true;
    }
    let Some((prefix, plural)) = requested.rsplit_once('/') else {
        return false;
    };
    stored
        .strip_prefix(&format!("{prefix}/namespaces/"))
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(_, p)| p == plural)
}

/// (collection path, name, subresource) of a request path.
fn split(path: &str) -> (String, Option<String>, Option<String>) {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    // api/v1/... has 2 prefix segments, apis/g/v/... has 3.
    let prefix = if parts.first() == Some(&"api") { 2 } else { 3 };
    let namespaced = parts.get(prefix) == Some(&"namespaces");
    let collection_len = prefix + if namespaced { 3 } else { 1 };
    let collection = format!("/{}", parts[..collection_len.min(parts.len())].join("/"));
    let name = parts.get(collection_len).map(|s| s.to_string());
    let sub = parts.get(collection_len + 1).map(|s| s.to_string());
    (collection, name, sub)
}

/// RFC 7386 merge of `patch` into `target`.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn without(v: &Value, keys: &[&str]) -> Value {
    let mut v = v.clone();
    if let Value::Object(o) = &mut v {
        for k in keys {
            o.remove(*k);
        }
    }
    v
}

fn labels_match(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        obj.pointer("/metadata/labels")
            .and_then(|l| l.get(k))
            .and_then(Value::as_str)
            == Some(v)
    })
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| {
            v.replace("%2C", ",")
                .replace("%3D", "=")
                .replace("%2F", "/")
        })
    })
}

impl Store {
    fn new() -> Store {
        Store {
            events: tokio::sync::broadcast::channel(1024).0,
            history: Vec::new(),
            rules: chart_rules(),
            denied: Vec::new(),
            objects: BTreeMap::new(),
            resource_version: 0,
            uid: 0,
            requests: Vec::new(),
        }
    }

    fn notify(&mut self, collection: &str, type_: &str, object: &Value) {
        let event = json!({ "type": type_, "object": object });
        self.history
            .push((self.resource_version, collection.to_string(), event.clone()));
        // No watcher is not an error.
        let _ = self.events.send((collection.to_string(), event));
    }
}

/// A watch: the collection's changes after `since`, one JSON event per
/// line, until the client goes away.
fn watch(s: &Store, collection: String, selector: String, since: u64) -> Response {
    use futures::StreamExt;
    use tokio::sync::broadcast::error::RecvError;
    let missed: Vec<Result<Bytes, std::io::Error>> = s
        .history
        .iter()
        .filter(|(rv, c, ev)| {
            *rv > since && in_collection(c, &collection) && labels_match(&ev["object"], &selector)
        })
        .map(|(_, _, ev)| Ok(Bytes::from(format!("{ev}\n"))))
        .collect();
    let rx = s.events.subscribe();
    let live = futures::stream::unfold(rx, move |mut rx| {
        let (collection, selector) = (collection.clone(), selector.clone());
        async move {
            loop {
                match rx.recv().await {
                    Ok((c, ev))
                        if in_collection(&c, &collection)
                            && labels_match(&ev["object"], &selector) =>
                    {
                        let line = Bytes::from(format!("{ev}\n"));
                        return Some((Ok::<_, std::io::Error>(line), rx));
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    });
    axum::body::Body::from_stream(futures::stream::iter(missed).chain(live)).into_response()
}

impl FakeApiServer {
    pub async fn start() -> FakeApiServer {
        let store = Arc::new(Mutex::new(Store::new()));
        let app = Router::new().fallback(handle).with_state(store.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeApiServer { store, url }
    }

    /// A client with the operator's permissions (the chart's rules).
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().expect("url"));
        kube::Client::try_from(config).expect("client")
    }

    /// A cluster-admin client: the test acting as a user (`kubectl`).
    pub fn admin_client(&self) -> kube::Client {
        let mut config = kube::Config::new(self.url.parse().expect("url"));
        config.headers.push((
            http::HeaderName::from_static(ADMIN_HEADER),
            http::HeaderValue::from_static("true"),
        ));
        kube::Client::try_from(config).expect("client")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every request since the last `take_requests`.
    /// Fails the test if any request was forbidden by the chart's rules.
    pub fn take_requests(&self) -> Vec<Request> {
        let mut s = self.lock();
        assert!(
            s.denied.is_empty(),
            "requests not allowed by {RULES_FILE}: {:#?}",
            s.denied
        );
        std::mem::take(&mut s.requests)
    }

    /// The writes (non-GET requests) since the last `take_requests`.
    pub fn take_writes(&self) -> Vec<Request> {
        self.take_requests()
            .into_iter()
            .filter(Request::is_write)
            .collect()
    }

    pub fn get(&self, collection: &str, name: &str) -> Option<Value> {
        self.lock().objects.get(collection)?.get(name).cloned()
    }

    pub fn list(&self, collection: &str) -> Vec<Value> {
        self.lock()
            .objects
            .get(collection)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Stores `obj` as a client's create would (uid, generation 1, ...).
    pub fn create(&self, collection: &str, obj: Value) -> Value {
        let mut s = self.lock();
        create_in(&mut s, collection, obj).expect("create")
    }

    /// Changes an object as another client would (a `kubectl edit`).
    pub fn edit(&self, collection: &str, name: &str, f: impl FnOnce(&mut Value)) -> Value {
        let mut s = self.lock();
        let old = s.objects[collection][name].clone();
        let mut new = old.clone();
        f(&mut new);
        commit(&mut s, collection, name, &old, new, false)
    }
}

/// Stores a new object; `Err` is the AlreadyExists answer.
fn create_in(s: &mut Store, collection: &str, mut obj: Value) -> Result<Value, String> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if s.objects
        .get(collection)
        .is_some_and(|m| m.contains_key(&name))
    {
        return Err(format!("{name} already exists"));
    }
    s.resource_version += 1;
    s.uid += 1;
    let ns = collection
        .split("/namespaces/")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .map(String::from);
    let meta = json!({
        "uid": format!("uid-{}", s.uid),
        "resourceVersion": s.resource_version.to_string(),
        "generation": 1,
        "creationTimestamp": format!("2026-11-21T20:00:{:02}Z", s.uid % 60),
        "namespace": ns,
    });
    merge(&mut obj["metadata"], &meta);
    s.objects
        .entry(collection.to_string())
        .or_default()
        .insert(name, obj.clone());
    s.notify(collection, "ADDED", &obj);
    Ok(obj)
}

/// Stores `new` in place of `old`: bumps resourceVersion if anything
/// changed and generation if the spec did; drops the object once it is
/// being deleted and has no finalizers left.
fn commit(
    s: &mut Store,
    collection: &str,
    name: &str,
    old: &Value,
    mut new: Value,
    status_only: bool,
) -> Value {
    if status_only {
        let status = new.get("status").cloned();
        new = old.clone();
        match status {
            Some(st) => new["status"] = st,
            None => {
                if let Value::Object(o) = &mut new {
                    o.remove("status");
                }
            }
        }
    } else if let Some(st) = old.get("status") {
        // The main resource ignores status (a status subresource exists).
        new["status"] = st.clone();
    }
    // Server-owned metadata cannot be changed by a client.
    for key in [
        "uid",
        "creationTimestamp",
        "generation",
        "resourceVersion",
        "deletionTimestamp",
    ] {
        match old["metadata"].get(key) {
            Some(v) => new["metadata"][key] = v.clone(),
            None => {
                if let Value::Object(m) = &mut new["metadata"] {
                    m.remove(key);
                }
            }
        }
    }
    if new == *old {
        return new;
    }
    let spec_changed =
        without(&new, &["metadata", "status"]) != without(old, &["metadata", "status"]);
    if spec_changed {
        let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
        new["metadata"]["generation"] = json!(g);
    }
    s.resource_version += 1;
    new["metadata"]["resourceVersion"] = json!(s.resource_version.to_string());
    let finalizers_left = new["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    let map = s.objects.entry(collection.to_string()).or_default();
    if new["metadata"].get("deletionTimestamp").is_some() && !finalizers_left {
        map.remove(name);
        s.notify(collection, "DELETED", &new);
    } else {
        map.insert(name.to_string(), new.clone());
        s.notify(collection, "MODIFIED", &new);
    }
    new
}

async fn handle(
    State(store): State<Arc<Mutex<Store>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or_default().to_string();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body_json: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
        }
    };
    let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
    let admin = headers.contains_key(ADMIN_HEADER);
    let denied = match admin {
        true => None,
        false => forbidden(
            &s,
            method.as_str(),
            &path,
            &query,
            &content_type,
            &body_json,
        ),
    };
    if let Some(denied) = denied {
        s.denied.push(denied.clone());
        return status(StatusCode::FORBIDDEN, "Forbidden", denied);
    }
    if query.contains("watch=true") {
        let selector = query_param(&query, "labelSelector").unwrap_or_default();
        let since = query_param(&query, "resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        return watch(&s, split(&path).0, selector, since);
    }
    s.requests.push(Request {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        content_type: content_type.clone(),
        body: body_json.clone(),
    });
    let (collection, name, sub) = split(&path);
    let existing = name
        .as_ref()
        .and_then(|n| s.objects.get(&collection).and_then(|m| m.get(n)).cloned());
    let not_found = || {
        status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} not found", name.clone().unwrap_or_default()),
        )
    };
    match (method.as_str(), &name) {
        ("GET", None) => {
            let selector = query_param(&query, "labelSelector").unwrap_or_default();
            let items: Vec<Value> = s
                .objects
                .iter()
                .filter(|(stored, _)| in_collection(stored, &collection))
                .flat_map(|(_, m)| m.values())
                .filter(|o| labels_match(o, &selector))
                .cloned()
                .collect();
            axum::Json(json!({
                "apiVersion": "v1", "kind": "List",
                "metadata": { "resourceVersion": s.resource_version.to_string() },
                "items": items,
            }))
            .into_response()
        }
        ("GET", Some(_)) => match existing {
            Some(o) => axum::Json(o).into_response(),
            None => not_found(),
        },
        ("POST", None) => match create_in(&mut s, &collection, body_json) {
            Ok(o) => (StatusCode::CREATED, axum::Json(o)).into_response(),
            Err(m) => status(StatusCode::CONFLICT, "AlreadyExists", m),
        },
        ("DELETE", Some(n)) => {
            let Some(old) = existing else {
                return not_found();
            };
            let mut new = old.clone();
            let has_finalizers = old["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty());
            if has_finalizers {
                if old["metadata"].get("deletionTimestamp").is_none() {
                    s.resource_version += 1;
                    new["metadata"]["deletionTimestamp"] = json!("2026-11-21T21:00:00Z");
                    let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
                    new["metadata"]["generation"] = json!(g);
                    new["metadata"]["resourceVersion"] = json!(s.resource_version.to_string());
                    s.objects
                        .entry(collection.clone())
                        .or_default()
                        .insert(n.clone(), new.clone());
                    s.notify(&collection, "MODIFIED", &new);
                }
                axum::Json(new).into_response()
            } else {
                s.objects.entry(collection.clone()).or_default().remove(n);
                s.resource_version += 1;
                s.notify(&collection, "DELETED", &old);
                axum::Json(old).into_response()
            }
        }
        ("PATCH", Some(n)) => {
            let status_only = sub.as_deref() == Some("status");
            let rv = body_json.pointer("/metadata/resourceVersion").cloned();
            if let (Some(rv), Some(old)) = (&rv, &existing)
                && old.pointer("/metadata/resourceVersion") != Some(rv)
            {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!("{n}: the object has been modified"),
                );
            }
            match content_type.as_str() {
                "application/apply-patch+yaml" => {
                    if query_param(&query, "fieldManager").is_none() {
                        return status(
                            StatusCode::BAD_REQUEST,
                            "BadRequest",
                            "fieldManager is required for apply".into(),
                        );
                    }
                    match existing {
                        None if status_only => not_found(),
                        None => match create_in(&mut s, &collection, body_json) {
                            Ok(o) => (StatusCode::CREATED, axum::Json(o)).into_response(),
                            Err(m) => status(StatusCode::CONFLICT, "AlreadyExists", m),
                        },
                        Some(old) => {
                            let mut new = old.clone();
                            merge(&mut new, &body_json);
                            axum::Json(commit(&mut s, &collection, n, &old, new, status_only))
                                .into_response()
                        }
                    }
                }
                "application/json-patch+json" => {
                    let Some(old) = existing else {
                        return not_found();
                    };
                    // As in the API server's JSON-patch library, `test` of
                    // null passes on a missing path.
                    let ops: Vec<Value> = body_json
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|op| {
                            !(op["op"] == "test"
                                && op["value"].is_null()
                                && op["path"]
                                    .as_str()
                                    .is_some_and(|p| old.pointer(p).is_none()))
                        })
                        .collect();
                    let patch: json_patch::Patch = match serde_json::from_value(Value::Array(ops)) {
                        Ok(p) => p,
                        Err(e) => {
                            return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string());
                        }
                    };
                    let mut new = old.clone();
                    if let Err(e) = json_patch::patch(&mut new, &patch) {
                        return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e.to_string());
                    }
                    axum::Json(commit(&mut s, &collection, n, &old, new, status_only))
                        .into_response()
                }
                // Strategic merge is a plain merge for the fields used here
                // (no list merge keys).
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    let Some(old) = existing else {
                        return not_found();
                    };
                    let mut new = old.clone();
                    merge(&mut new, &body_json);
                    axum::Json(commit(&mut s, &collection, n, &old, new, status_only))
                        .into_response()
                }
                other => status(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    other.to_string(),
                ),
            }
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} {path}"),
        ),
    }
}
