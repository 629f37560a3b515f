//! The Cluster controller: observe the StatefulSet, the broker pods, the
//! brokers' health and where replicas live; plan (`cluster_plan`, pure);
//! then apply the owned objects that differ, restart at most one broker,
//! and write status.

use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams,
};
use kube::runtime::controller::Action as Requeue;
use kube::{Resource, ResourceExt};

use crate::cluster_objects::{CONFIG_HASH_ANNOTATION, ClusterObjects};
use crate::cluster_plan::{self, Action, Observed, ObservedPod};
use crate::context::{self, Context};
use crate::crd::Cluster;
use crate::error::{Error, Result};
use crate::kube_writes;

pub const CONTROLLER: &str = "cluster";

/// The `monitoring.coreos.com/v1` ServiceMonitor kind (no Rust type: the
/// Prometheus operator's CRDs are not ours).
pub fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

fn observe_pod(p: &Pod) -> Option<ObservedPod> {
    let ordinal = p
        .labels()
        .get("apps.kubernetes.io/pod-index")
        .and_then(|i| i.parse().ok())
        .or_else(|| p.name_any().rsplit_once('-')?.1.parse().ok())?;
    let ready = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let config_hash = p
        .annotations()
        .get(CONFIG_HASH_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    Some(ObservedPod {
        ordinal,
        ready,
        terminating: p.metadata.deletion_timestamp.is_some(),
        config_hash,
    })
}

/// Under-replicated partitions summed over the ready brokers (each counts
/// the partitions it leads); `None` if any broker cannot be asked.
async fn under_replicated(ctx: &Context, c: &Cluster, pods: &[ObservedPod]) -> Option<u64> {
    let mut total = 0.0;
    // The Secrets (CA, token) are read once for all the brokers.
    let admin = match ctx.admin_api(c).await {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(error = %e, "cannot ask the brokers' admin API");
            return None;
        }
    };
    for p in pods.iter().filter(|p| p.ready) {
        let url = ctx.endpoints.broker_admin(c, p.ordinal)?;
        match admin
            .at(&url)
            .gauge("sluice_cluster", "value=\"under_replicated_partitions\"")
            .await
        {
            Ok(v) => total += v,
            Err(e) => {
                tracing::info!(broker = p.ordinal, error = %e, "cannot read broker health");
                return None;
            }
        }
    }
    Some(total as u64)
}

pub async fn reconcile(cluster: Arc<Cluster>, ctx: Arc<Context>) -> Result<Requeue> {
    let metrics = ctx.metrics.clone();
    metrics
        .measure(CONTROLLER, reconcile_inner(&cluster, &ctx))
        .await
}

async fn reconcile_inner(c: &Cluster, ctx: &Context) -> Result<Requeue> {
    if c.meta().deletion_timestamp.is_some() {
        // Owner references hand everything to the garbage collector.
        return Ok(Requeue::await_change());
    }
    let ns = c.namespace().unwrap_or_default();
    let name = c.name_any();
    let client = ctx.client.clone();
    let now = context::now();
    let statefulsets = Api::<StatefulSet>::namespaced(client.clone(), &ns);
    let current_brokers = statefulsets
        .get_opt(&name)
        .await?
        .and_then(|s| s.spec)
        .and_then(|s| s.replicas);
    let selector = format!("app.kubernetes.io/instance={name},app.kubernetes.io/component=broker");
    let pods: Vec<ObservedPod> = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .iter()
        .filter_map(observe_pod)
        .collect();
    // Before the first apply there are no brokers (nor, with
    // authorization, the credentials Secret) to ask.
    let (under, replicas, placement) = match current_brokers {
        Some(_) => {
            let under = under_replicated(ctx, c, &pods).await;
            let (replicas, placement) = match ctx.kafka_admin(c).await {
                Ok(mut a) => {
                    let replicas = a.replica_summary().await.ok();
                    let placement = match a.placement(c.spec.brokers).await {
                        Ok(p) => Some(p),
                        Err(e) => {
                            tracing::info!(error = %e, "cannot read the cluster's placement");
                            None
                        }
                    };
                    (replicas, placement)
                }
                Err(e) => {
                    tracing::info!(error = %e, "cannot reach the brokers");
                    (None, None)
                }
            };
            (under, replicas, placement)
        }
        None => (None, None, None),
    };
    let observed = Observed {
        cluster: c,
        current_brokers,
        pods,
        under_replicated: under,
        max_replication_factor: replicas.as_ref().map_or(0, |r| r.0),
        brokers_with_replicas: replicas.as_ref().map(|r| r.1.clone()).unwrap_or_default(),
        replicas_known: replicas.is_some(),
        placement,
        now: &now,
    };
    let api = Api::<Cluster>::namespaced(client.clone(), &ns);
    let mut rolling = cluster_plan::scaling(&observed);
    for action in cluster_plan::plan(&observed) {
        // Scaling steps: a refusal (a broker not yet fenced, say) is
        // logged and the step taken again at the next reconcile.
        let kafka_step = match &action {
            Action::MoveReplicas(moves) => Some(format!("moving {} partitions", moves.len())),
            Action::RemoveVoter(id) => Some(format!("removing broker {id} from the quorum")),
            Action::UnregisterBroker(id) => Some(format!("unregistering broker {id}")),
            _ => None,
        };
        if let Some(what) = kafka_step {
            rolling = true;
            let result = match ctx.kafka_admin(c).await {
                Ok(mut a) => match &action {
                    Action::MoveReplicas(moves) => a.move_replicas(moves).await,
                    Action::RemoveVoter(id) => a.remove_voter(*id).await,
                    Action::UnregisterBroker(id) => a.unregister_broker(*id).await,
                    _ => Ok(()),
                },
                Err(e) => Err(anyhow::anyhow!("{e}")),
            };
            match result {
                Ok(()) => tracing::info!(cluster = %name, "{what}"),
                Err(e) => tracing::warn!(cluster = %name, error = %e, "{what}: not done yet"),
            }
            continue;
        }
        match action {
            Action::EnsureCredentials => ensure_credentials(ctx, c).await?,
            Action::Apply(objects) => apply_objects(ctx, &ns, *objects).await?,
            Action::DeletePod { ordinal } => {
                rolling = true;
                Api::<Pod>::namespaced(client.clone(), &ns)
                    .delete(&format!("{name}-{ordinal}"), &DeleteParams::default())
                    .await?;
            }
            Action::UpdateStatus(status) => kube_writes::apply_status(&api, c, &status).await?,
            Action::MoveReplicas(_) | Action::RemoveVoter(_) | Action::UnregisterBroker(_) => {}
            Action::Event {
                warning,
                reason,
                message,
            } => kube_writes::event(ctx, c, warning, &reason, &message).await,
        }
    }
    // A roll or a scale in progress is watched closely; a quiet cluster
    // rarely.
    Ok(Requeue::requeue(if rolling {
        std::time::Duration::from_secs(5)
    } else {
        ctx.resync
    }))
}

async fn apply_objects(ctx: &Context, ns: &str, o: ClusterObjects) -> Result<()> {
    let client = ctx.client.clone();
    let name = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        m.name.clone().unwrap_or_default()
    };
    kube_writes::apply_if_changed(
        &Api::<ConfigMap>::namespaced(client.clone(), ns),
        &name(&o.config.metadata),
        &o.config,
    )
    .await?;
    let services = Api::<Service>::namespaced(client.clone(), ns);
    kube_writes::apply_if_changed(&services, &name(&o.headless.metadata), &o.headless).await?;
    kube_writes::apply_if_changed(&services, &name(&o.bootstrap.metadata), &o.bootstrap).await?;
    kube_writes::apply_if_changed(
        &Api::<StatefulSet>::namespaced(client.clone(), ns),
        &name(&o.statefulset.metadata),
        &o.statefulset,
    )
    .await?;
    kube_writes::apply_if_changed(
        &Api::<PodDisruptionBudget>::namespaced(client.clone(), ns),
        &name(&o.pdb.metadata),
        &o.pdb,
    )
    .await?;
    if let Some(sm) = o.service_monitor {
        let sm: DynamicObject = serde_json::from_value(sm)
            .map_err(|e| Error::Invalid(format!("ServiceMonitor: {e}")))?;
        let api = Api::<DynamicObject>::namespaced_with(client, ns, &service_monitor_resource());
        kube_writes::apply_if_changed(&api, &sm.name_any(), &sm).await?;
    }
    Ok(())
}

/// Creates the Cluster's credentials Secret (random tokens for the operator
/// and for metrics scrapes, and the brokers' tokens file listing them)
/// unless it exists: tokens are made once and never rotated by a
/// reconcile. Owned by the Cluster, so it goes with it.
async fn ensure_credentials(ctx: &Context, c: &Cluster) -> Result<()> {
    use crate::cluster_objects::{
        ADMIN_TOKENS_KEY, METRICS_PRINCIPAL, METRICS_TOKEN_KEY, OPERATOR_PRINCIPAL,
        OPERATOR_TOKEN_KEY, credentials_secret_name,
    };
    let ns = c.namespace().unwrap_or_default();
    let name = credentials_secret_name(&c.name_any());
    let api = Api::<Secret>::namespaced(ctx.client.clone(), &ns);
    if api.get_opt(&name).await?.is_some() {
        return Ok(());
    }
    let operator = context::random_token()?;
    let metrics = context::random_token()?;
    let tokens = format!(
        "# Made by sluice-operator: principal token\n{OPERATOR_PRINCIPAL} {operator}\n{METRICS_PRINCIPAL} {metrics}\n"
    );
    let secret = Secret {
        metadata: crate::cluster_objects::owned_meta(c, name),
        data: Some(
            [
                (ADMIN_TOKENS_KEY, tokens),
                (OPERATOR_TOKEN_KEY, operator),
                (METRICS_TOKEN_KEY, metrics),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
            .collect(),
        ),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        // Made meanwhile by another reconcile: that one stands.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        other => other.map(|_| ()).map_err(Error::from),
    }
}
