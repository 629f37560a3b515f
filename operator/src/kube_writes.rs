//! Every write the controllers send to the Kubernetes API, in one place so
//! they all follow the same contract: finalizers by JSON patch guarded by a
//! `test` of the current list (a concurrent change fails instead of being
//! overwritten), owned objects and status by server-side apply with one
//! field manager, and owned objects only when they differ from what is
//! there, so a converged reconcile writes nothing.

use std::fmt::Debug;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::context::{Context, FIELD_MANAGER};
use crate::error::{Error, Result};

fn json_patch(ops: Value) -> Result<Patch<()>> {
    let patch: json_patch::Patch =
        serde_json::from_value(ops).map_err(|e| Error::Invalid(format!("JSON patch: {e}")))?;
    Ok(Patch::Json(patch))
}

/// Adds `finalizer` to `obj`.
pub async fn add_finalizer<K>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let ops = match &obj.meta().finalizers {
        None => json!([
            { "op": "test", "path": "/metadata/finalizers", "value": null },
            { "op": "add", "path": "/metadata/finalizers", "value": [finalizer] },
        ]),
        Some(list) => json!([
            { "op": "test", "path": "/metadata/finalizers", "value": list },
            { "op": "add", "path": "/metadata/finalizers/-", "value": finalizer },
        ]),
    };
    api.patch(&obj.name_any(), &PatchParams::default(), &json_patch(ops)?)
        .await?;
    Ok(())
}

/// Removes `finalizer` from `obj` (a no-op if it is not there).
pub async fn remove_finalizer<K>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let Some(i) = obj
        .meta()
        .finalizers
        .as_ref()
        .and_then(|f| f.iter().position(|x| x == finalizer))
    else {
        return Ok(());
    };
    let ops = json!([
        { "op": "test", "path": format!("/metadata/finalizers/{i}"), "value": finalizer },
        { "op": "remove", "path": format!("/metadata/finalizers/{i}") },
    ]);
    api.patch(&obj.name_any(), &PatchParams::default(), &json_patch(ops)?)
        .await?;
    Ok(())
}

/// Server-side-applies `status` to `obj`'s status subresource.
pub async fn apply_status<K>(api: &Api<K>, obj: &K, status: &impl Serialize) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await?;
    Ok(())
}

/// Whether every field `desired` sets has that value in `observed`:
/// fields the API server defaults or other managers own do not count.
pub fn contains(observed: &Value, desired: &Value) -> bool {
    match (observed, desired) {
        (Value::Object(o), Value::Object(d)) => d
            .iter()
            .all(|(k, dv)| dv.is_null() || o.get(k).is_some_and(|ov| contains(ov, dv))),
        (Value::Array(o), Value::Array(d)) => {
            o.len() == d.len() && o.iter().zip(d).all(|(ov, dv)| contains(ov, dv))
        }
        (o, d) => o == d,
    }
}

/// Server-side-applies `desired` unless the object already has every field
/// it sets. Returns whether it wrote.
pub async fn apply_if_changed<K>(api: &Api<K>, name: &str, desired: &K) -> Result<bool>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let desired = serde_json::to_value(desired)
        .map_err(|e| Error::Invalid(format!("cannot encode {name}: {e}")))?;
    if let Some(observed) = api.get_opt(name).await? {
        let observed = serde_json::to_value(observed)
            .map_err(|e| Error::Invalid(format!("cannot encode {name}: {e}")))?;
        if contains(&observed, &desired) {
            return Ok(false);
        }
    }
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(desired),
    )
    .await?;
    Ok(true)
}

/// Posts an Event about `obj`. A failed post is logged, never fatal: the
/// status conditions carry the same facts.
pub async fn event<K>(ctx: &Context, obj: &K, warning: bool, reason: &str, message: &str)
where
    K: Resource<DynamicType = ()>,
{
    let ev = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(message.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &obj.object_ref(&())).await {
        tracing::warn!(reason, error = %e, "cannot post event");
    }
}
