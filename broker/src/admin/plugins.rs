//! `/v1/plugins`: upload (POST/PUT the module bytes, `?kind=`), list,
//! describe, delete (409 while bound to a topic unless `?force=true`).
//! Errors are JSON `{"error": "..."}` with a status that says whose fault.
//! Uploads and deletes are checked here, committed through the controller
//! quorum, and installed by every broker of the cluster.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::auth::{AdminPrincipal, refusal};
use crate::broker::Broker;
use sluice_metadata::acl::Operation;
use sluice_metadata::image::{Command, MetadataError, Wasm};
use sluice_plugin_host::{PluginKind, RegistryError, VersionInfo};
use sluice_storage::now_ms;

#[derive(Serialize)]
struct PluginView {
    name: String,
    kind: Option<PluginKind>,
    version: u32,
    sha256: String,
    size: usize,
    abi_version: i32,
    bound_topics: Vec<String>,
    versions: Vec<VersionInfo>,
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

/// Topics whose configs bind `name`.
pub fn bound_topics(b: &Broker, name: &str) -> Vec<String> {
    b.view()
        .topics
        .values()
        .filter(|t| {
            t.bindings
                .as_ref()
                .is_some_and(|x| x.named().iter().any(|(n, _)| *n == name))
        })
        .map(|t| t.meta.name.clone())
        .collect()
}

fn view(b: &Broker, name: &str, versions: Vec<VersionInfo>) -> PluginView {
    let latest = versions.last().cloned();
    PluginView {
        name: name.to_string(),
        kind: latest.as_ref().map(|v| v.kind),
        version: latest.as_ref().map_or(0, |v| v.version),
        sha256: latest
            .as_ref()
            .map(|v| v.sha256.clone())
            .unwrap_or_default(),
        size: latest.as_ref().map_or(0, |v| v.size),
        abi_version: latest.as_ref().map_or(0, |v| v.abi_version),
        bound_topics: bound_topics(b, name),
        versions,
    }
}

pub async fn list(
    State(b): State<Arc<Broker>>,
    Extension(who): Extension<AdminPrincipal>,
) -> Response {
    if let Some(refused) = refusal(&b, &who, Operation::Describe) {
        return refused;
    }
    let all: Vec<PluginView> = b
        .plugins
        .registry
        .list()
        .into_iter()
        .map(|(n, v)| view(&b, &n, v))
        .collect();
    Json(all).into_response()
}

pub async fn describe(
    State(b): State<Arc<Broker>>,
    Extension(who): Extension<AdminPrincipal>,
    Path(name): Path<String>,
) -> Response {
    if let Some(refused) = refusal(&b, &who, Operation::Describe) {
        return refused;
    }
    match b.plugins.registry.versions(&name) {
        Some(v) => Json(view(&b, &name, v)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("plugin '{name}' does not exist"),
        ),
    }
}

pub async fn upload(
    State(b): State<Arc<Broker>>,
    Extension(who): Extension<AdminPrincipal>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    if let Some(refused) = refusal(&b, &who, Operation::Alter) {
        return refused;
    }
    let kind = match q.get("kind").map(|k| k.parse::<PluginKind>()) {
        Some(Ok(k)) => k,
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, e),
        None => match b.plugins.registry.kind(&name) {
            Some(k) => k,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "?kind=partitioner|interceptor|filter is required for a new plugin",
                );
            }
        },
    };
    let broker = b.clone();
    let (n, wasm) = (name.clone(), body.clone());
    let checked =
        tokio::task::spawn_blocking(move || broker.plugins.registry.prepare(&n, kind, &wasm)).await;
    let sha256 = match checked {
        Ok(Ok(sha)) => sha,
        Ok(Err(RegistryError::Io(e))) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("checking the plugin: {e}"),
            );
        }
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("upload task failed: {e}"),
            );
        }
    };
    let command = Command::UploadPlugin {
        name: name.clone(),
        kind,
        wasm: Wasm(body.to_vec().into()),
        sha256,
        uploaded_ms: now_ms(),
        abi_version: sluice_plugin::ABI_VERSION,
    };
    if let Err(resp) = commit(&b, command).await {
        return resp;
    }
    match b
        .plugins
        .registry
        .versions(&name)
        .and_then(|v| v.last().cloned())
    {
        Some(info) => (StatusCode::CREATED, Json(info)).into_response(),
        None => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "plugin '{name}' was committed but could not be installed here; see the broker log"
            ),
        ),
    }
}

/// Commits a registry change through the controller quorum and installs
/// the result on this broker before answering (so the caller can use the
/// plugin here at once; other brokers install it as they apply the change).
async fn commit(b: &Arc<Broker>, command: Command) -> Result<(), Response> {
    let proposed = match b.quorum.propose_indexed(command, COMMIT_TIMEOUT).await {
        Err(e) => {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("controller quorum: {e}"),
            ));
        }
        Ok(p) => p,
    };
    match proposed.result {
        Err(MetadataError::Plugin(m)) => return Err(error(StatusCode::BAD_REQUEST, m)),
        Err(e) => return Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        Ok(_) => {}
    }
    // The applier installs it (as on every broker); answer once it has.
    b.await_view(proposed.index)
        .await
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(())
}

const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub async fn delete(
    State(b): State<Arc<Broker>>,
    Extension(who): Extension<AdminPrincipal>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(refused) = refusal(&b, &who, Operation::Alter) {
        return refused;
    }
    let force = q.get("force").is_some_and(|v| v == "true" || v == "1");
    if b.plugins.registry.versions(&name).is_none() {
        return error(
            StatusCode::NOT_FOUND,
            format!("plugin '{name}' does not exist"),
        );
    }
    let bound = bound_topics(&b, &name);
    if !bound.is_empty() && !force {
        return error(
            StatusCode::CONFLICT,
            format!(
                "plugin '{name}' is bound to topics {bound:?}; unbind it first or delete with ?force=true"
            ),
        );
    }
    match commit(&b, Command::DeletePlugin { name: name.clone() }).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(resp) => resp,
    }
}
