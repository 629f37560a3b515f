//! The Plugin controller: resolve the module from its source, compare it
//! with the brokers' registry entry (`plugin_plan`, pure), and upload or
//! delete through the cluster's admin API.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action as Requeue;

use crate::context::{self, Context};
use crate::crd::{Condition, KeyRef, Plugin, PluginSource, PluginStatus};
use crate::error::{Error, Result};
use crate::kube_writes;
use crate::plugin_plan::{self, Action, FINALIZER, Observed};
use crate::topic_controller::live_cluster;

pub const CONTROLLER: &str = "plugin";

fn decode(what: &str, text: &str) -> Result<Vec<u8>, String> {
    let compact: String = text.split_whitespace().collect();
    STANDARD
        .decode(compact)
        .map_err(|e| format!("{what} is not valid base64: {e}"))
}

/// The module bytes a source names, or why they cannot be had. A missing
/// ConfigMap, Secret or key is the user's to fix, so it is a condition,
/// not a reconcile error.
async fn resolve(
    ctx: &Context,
    ns: &str,
    source: &PluginSource,
) -> Result<Result<Vec<u8>, String>> {
    let missing = |kind: &str, r: &KeyRef| format!("{kind} {} has no key {}", r.name, r.key);
    if let Some(text) = &source.inline {
        return Ok(decode("inline", text));
    }
    if let Some(r) = &source.config_map_key_ref {
        let Some(cm) = Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
            .get_opt(&r.name)
            .await?
        else {
            return Ok(Err(format!("ConfigMap {} does not exist", r.name)));
        };
        if let Some(b) = cm.binary_data.as_ref().and_then(|d| d.get(&r.key)) {
            return Ok(Ok(b.0.clone()));
        }
        return Ok(match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
            Some(text) => decode(&format!("ConfigMap {} key {}", r.name, r.key), text),
            None => Err(missing("ConfigMap", r)),
        });
    }
    if let Some(r) = &source.secret_key_ref {
        let Some(secret) = Api::<Secret>::namespaced(ctx.client.clone(), ns)
            .get_opt(&r.name)
            .await?
        else {
            return Ok(Err(format!("Secret {} does not exist", r.name)));
        };
        return Ok(secret
            .data
            .as_ref()
            .and_then(|d| d.get(&r.key))
            .map(|b| b.0.clone())
            .ok_or_else(|| missing("Secret", r)));
    }
    Ok(Err(
        "set exactly one of configMapKeyRef, secretKeyRef, inline".into(),
    ))
}

pub async fn reconcile(plugin: Arc<Plugin>, ctx: Arc<Context>) -> Result<Requeue> {
    let metrics = ctx.metrics.clone();
    metrics
        .measure(CONTROLLER, reconcile_inner(&plugin, &ctx))
        .await
}

async fn reconcile_inner(p: &Plugin, ctx: &Context) -> Result<Requeue> {
    let ns = p.namespace().unwrap_or_default();
    let api = Api::<Plugin>::namespaced(ctx.client.clone(), &ns);
    let name = p.name_any();
    let now = context::now();
    let cluster = live_cluster(ctx, &ns, &p.spec.cluster.name).await?;
    let admin = match &cluster {
        Some(c) => Some(ctx.admin_api(c).await?),
        None => None,
    };
    let registered = match &admin {
        Some(a) => a.plugin(&name).await.map_err(Error::Broker)?,
        None => None,
    };
    let wasm = if p.metadata.deletion_timestamp.is_some() {
        Err("being deleted".to_string())
    } else {
        resolve(ctx, &ns, &p.spec.source).await?
    };
    let observed = Observed {
        plugin: p,
        cluster_exists: cluster.is_some(),
        wasm,
        registered,
        now: &now,
    };
    for action in plugin_plan::plan(&observed) {
        match &action {
            Action::AddFinalizer => kube_writes::add_finalizer(&api, p, FINALIZER).await?,
            Action::RemoveFinalizer => {
                kube_writes::remove_finalizer(&api, p, FINALIZER).await?;
                return Ok(Requeue::await_change());
            }
            Action::UpdateStatus(status) => kube_writes::apply_status(&api, p, status).await?,
            Action::Event {
                warning,
                reason,
                message,
            } => kube_writes::event(ctx, p, *warning, reason, message).await,
            Action::Upload { name, kind, wasm } => {
                let a = admin.as_ref().ok_or_else(no_admin)?;
                match a.upload(name, kind, wasm).await {
                    Ok(Ok(())) => {}
                    // The module itself was refused: say so, and wait for
                    // a new spec (or source) instead of retrying.
                    Ok(Err(why)) => {
                        kube_writes::event(ctx, p, true, "Rejected", &why).await;
                        let status = rejected(p, &now, why);
                        if p.status.as_ref() != Some(&status) {
                            kube_writes::apply_status(&api, p, &status).await?;
                        }
                        return Ok(Requeue::requeue(ctx.resync));
                    }
                    Err(e) => {
                        kube_writes::event(ctx, p, true, "UploadFailed", &format!("{e:#}")).await;
                        return Err(Error::Broker(e));
                    }
                }
            }
            Action::Delete { name } => {
                let a = admin.as_ref().ok_or_else(no_admin)?;
                a.delete(name).await.map_err(Error::Broker)?;
            }
        }
    }
    Ok(Requeue::requeue(ctx.resync))
}

/// Status of a Plugin whose module the brokers refused: the live version
/// (if any) stays what it was.
fn rejected(p: &Plugin, now: &str, why: String) -> PluginStatus {
    let prev = p.status.as_ref();
    let generation = p.metadata.generation.unwrap_or(0);
    PluginStatus {
        observed_generation: generation,
        digest: prev.map(|s| s.digest.clone()).unwrap_or_default(),
        version: prev.map_or(0, |s| s.version),
        conditions: vec![Condition::new(
            prev, now, generation, "Ready", false, "Rejected", why,
        )],
    }
}

fn no_admin() -> Error {
    Error::Invalid("planned a broker write without a cluster".into())
}
