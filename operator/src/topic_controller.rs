//! The Topic controller: observe (the Cluster, its brokers, the Kafka topic,
//! rival Topic resources, bound plugins' limits), plan (`topic_plan`, pure),
//! then perform the planned actions in order.

use std::sync::Arc;

use kube::api::{Api, ListParams};
use kube::runtime::controller::Action as Requeue;
use kube::{Resource, ResourceExt};

use crate::context::{self, Context};
use crate::crd::{Cluster, Plugin, PluginLimits, Topic};
use crate::error::{Error, Result};
use crate::kafka_admin::KafkaAdmin;
use crate::kube_writes;
use crate::topic_plan::{self, Action, FINALIZER, Observed, kafka_name};

pub const CONTROLLER: &str = "topic";

/// The live Cluster a resource refers to; one being deleted counts as gone.
pub async fn live_cluster(ctx: &Context, ns: &str, name: &str) -> Result<Option<Cluster>> {
    let cluster = Api::<Cluster>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await?;
    Ok(cluster.filter(|c| c.meta().deletion_timestamp.is_none()))
}

pub async fn connect(ctx: &Context, cluster: &Cluster) -> Result<KafkaAdmin> {
    ctx.kafka_admin(cluster).await
}

/// The oldest other live, managed Topic of the same cluster naming the
/// same Kafka topic, if older than `t`.
fn older_claimant(t: &Topic, all: &[Topic]) -> Option<String> {
    crate::crd::older_claimant(t, all, |o| {
        !topic_plan::unmanaged(o)
            && o.spec.cluster == t.spec.cluster
            && kafka_name(o) == kafka_name(t)
    })
}

/// The strictest limits of the plugins `t` binds (missing plugins add none).
async fn plugin_limits(ctx: &Context, ns: &str, t: &Topic) -> Result<PluginLimits> {
    let api = Api::<Plugin>::namespaced(ctx.client.clone(), ns);
    let mut limits = Vec::new();
    for name in t.spec.plugins.names() {
        if let Some(p) = api.get_opt(name).await? {
            limits.push(p.spec.limits);
        }
    }
    Ok(PluginLimits::strictest(&limits))
}

pub async fn reconcile(topic: Arc<Topic>, ctx: Arc<Context>) -> Result<Requeue> {
    let metrics = ctx.metrics.clone();
    metrics
        .measure(CONTROLLER, reconcile_inner(&topic, &ctx))
        .await
}

async fn reconcile_inner(t: &Topic, ctx: &Context) -> Result<Requeue> {
    let ns = t.namespace().unwrap_or_default();
    let api = Api::<Topic>::namespaced(ctx.client.clone(), &ns);
    let now = context::now();
    let hands_off = topic_plan::unmanaged(t);
    let all = api.list(&ListParams::default()).await?.items;
    let cluster = live_cluster(ctx, &ns, &t.spec.cluster.name).await?;
    let mut admin = None;
    let (mut brokers, mut kafka) = (None, None);
    if let Some(c) = cluster.as_ref().filter(|_| !hands_off) {
        let mut a = connect(ctx, c).await?;
        brokers = Some(a.broker_ids().await.map_err(Error::Broker)?);
        kafka = a
            .describe_topic(&kafka_name(t))
            .await
            .map_err(Error::Broker)?;
        admin = Some(a);
    }
    let observed = Observed {
        topic: t,
        brokers,
        kafka,
        older_claimant: older_claimant(t, &all),
        plugin_limits: plugin_limits(ctx, &ns, t).await?,
        now: &now,
    };
    for action in topic_plan::plan(&observed) {
        match &action {
            Action::AddFinalizer => kube_writes::add_finalizer(&api, t, FINALIZER).await?,
            Action::RemoveFinalizer => {
                kube_writes::remove_finalizer(&api, t, FINALIZER).await?;
                return Ok(Requeue::await_change());
            }
            Action::UpdateStatus(status) => kube_writes::apply_status(&api, t, status).await?,
            Action::Event {
                warning,
                reason,
                message,
            } => kube_writes::event(ctx, t, *warning, reason, message).await,
            Action::CreateTopic { .. }
            | Action::CreatePartitions { .. }
            | Action::AlterConfigs { .. }
            | Action::DeleteTopic { .. } => {
                let Some(a) = admin.as_mut() else {
                    return Err(Error::Invalid(
                        "planned a broker write without a broker connection".into(),
                    ));
                };
                if let Err(e) = a.execute(&action).await {
                    kube_writes::event(ctx, t, true, "BrokerError", &format!("{e:#}")).await;
                    return Err(Error::Broker(e));
                }
            }
        }
    }
    Ok(Requeue::requeue(ctx.resync))
}
