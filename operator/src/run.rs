//! `sluice-operator run`: the HTTP endpoint (`/metrics`, `/healthz`), leader
//! election on a Lease so two replicas can run (only the holder
//! reconciles), and the four controllers.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Predicate, WatchStreamExt, predicates, watcher};
use kube::{Resource, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;

use crate::context::{Context, Endpoints};
use crate::crd::{Cluster, Topic};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::topic_plan::UNMANAGED_ANNOTATION;
use crate::{cluster_controller, plugin_controller, topic_controller, user_controller};

pub struct Options {
    /// Address of `/metrics` and `/healthz`.
    pub listen: SocketAddr,
    /// Watch only these namespaces (all namespaces if empty).
    pub namespaces: Vec<String>,
    /// Lease namespace for leader election; `None` runs without it.
    pub lease_namespace: Option<String>,
    /// This replica's identity in the Lease (the pod name).
    pub identity: String,
    pub endpoints: Endpoints,
    pub resync: Duration,
    /// Server-side-apply the CRDs before reconciling.
    pub install_crds: bool,
}

pub const LEASE_NAME: &str = "sluice-operator";

fn scoped<K>(client: &kube::Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A Topic is looked at again when its spec, its hand-off annotation or
/// its deletion changes; its own status writes do not count.
fn topic_changed(t: &Topic) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    t.metadata.generation.hash(&mut h);
    t.annotations().get(UNMANAGED_ANNOTATION).hash(&mut h);
    t.metadata.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

fn error_policy<K>(obj: Arc<K>, error: &Error, _ctx: Arc<Context>) -> Requeue
where
    K: Resource,
{
    tracing::warn!(
        kind = %std::any::type_name::<K>().rsplit("::").next().unwrap_or("object"),
        name = %obj.meta().name.clone().unwrap_or_default(),
        namespace = %obj.meta().namespace.clone().unwrap_or_default(),
        error = %error,
        "reconcile failed; retrying"
    );
    Requeue::requeue(Duration::from_secs(10))
}

fn log_result<T: std::fmt::Debug, E: std::fmt::Display>(
    controller: &'static str,
) -> impl Fn(Result<T, E>) -> std::future::Ready<()> {
    move |r| {
        match r {
            Ok(o) => tracing::debug!(controller, object = ?o, "reconciled"),
            Err(e) => tracing::debug!(controller, error = %e, "controller"),
        }
        std::future::ready(())
    }
}

/// A controller of `K` whose watch passes only the changes `predicate`
/// cares about.
fn filtered<K, P>(client: &kube::Client, ns: &Option<String>, predicate: P) -> Controller<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    P: Predicate<K> + Send + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(scoped::<K>(client, ns), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicate, Default::default());
    Controller::for_stream(stream, reader)
}

fn topics(ctx: Arc<Context>, ns: &Option<String>) -> impl Future<Output = ()> {
    filtered(&ctx.client, ns, topic_changed)
        .run(topic_controller::reconcile, error_policy, ctx)
        .for_each(log_result("topic"))
}

fn plugins(ctx: Arc<Context>, ns: &Option<String>) -> impl Future<Output = ()> {
    filtered(&ctx.client, ns, predicates::generation)
        .run(plugin_controller::reconcile, error_policy, ctx)
        .for_each(log_result("plugin"))
}

fn users(ctx: Arc<Context>, ns: &Option<String>) -> impl Future<Output = ()> {
    filtered(&ctx.client, ns, predicates::generation)
        .run(user_controller::reconcile, error_policy, ctx)
        .for_each(log_result("user"))
}

fn clusters(ctx: Arc<Context>, ns: &Option<String>) -> impl Future<Output = ()> {
    let brokers = watcher::Config::default().labels("app.kubernetes.io/component=broker");
    filtered(&ctx.client, ns, predicates::generation)
        .owns(scoped::<StatefulSet>(&ctx.client, ns), brokers.clone())
        // Pod readiness drives the rolling restart.
        .watches(scoped::<Pod>(&ctx.client, ns), brokers, |pod: Pod| {
            let cluster = pod.labels().get("app.kubernetes.io/instance")?.clone();
            Some(ObjectRef::<Cluster>::new(&cluster).within(&pod.namespace()?))
        })
        .run(cluster_controller::reconcile, error_policy, ctx)
        .for_each(log_result("cluster"))
}

/// `None` (everywhere) for no namespaces, else each one.
fn scopes(namespaces: &[String]) -> Vec<Option<String>> {
    match namespaces {
        [] => vec![None],
        list => list.iter().cloned().map(Some).collect(),
    }
}

/// The controllers of every watched namespace (one set for all
/// namespaces if none is named), until one stops (which is an error).
pub async fn watch_namespaces(ctx: Arc<Context>, namespaces: &[String]) -> anyhow::Error {
    let sets = scopes(namespaces)
        .into_iter()
        .map(|ns| Box::pin(controllers(ctx.clone(), ns)));
    futures::future::select_all(sets).await.0
}

/// The four controllers of one namespace (or all), until one stops.
pub async fn controllers(ctx: Arc<Context>, namespace: Option<String>) -> anyhow::Error {
    let ns = &namespace;
    tokio::select! {
        _ = clusters(ctx.clone(), ns) => anyhow::anyhow!("the Cluster controller stopped"),
        _ = topics(ctx.clone(), ns) => anyhow::anyhow!("the Topic controller stopped"),
        _ = plugins(ctx.clone(), ns) => anyhow::anyhow!("the Plugin controller stopped"),
        _ = users(ctx.clone(), ns) => anyhow::anyhow!("the User controller stopped"),
    }
}

async fn serve_http(listen: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { m.render() }
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "serving /metrics and /healthz");
    axum::serve(listener, app).await?;
    Ok(())
}

/// Server-side-applies this build's CRDs: what lets `helm upgrade` update
/// them (Helm installs a chart's `crds/` once and never upgrades them).
pub async fn install_crds(client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    for crd in crate::crd::all_crds() {
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply(crate::context::FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .map_err(|e| anyhow::anyhow!("applying CRD {name}: {e}"))?;
    }
    Ok(())
}

/// Drops the operator's finalizers from every Topic and Plugin (in the
/// given namespaces, or everywhere): what `helm uninstall` runs first, so no
/// resource waits forever for an operator that is gone. Kafka topics and
/// plugins stay as they are.
pub async fn release_finalizers(
    client: &kube::Client,
    namespaces: &[String],
) -> anyhow::Result<usize> {
    let mut released = 0;
    for ns in scopes(namespaces) {
        released += release_in(client, &ns).await?;
    }
    Ok(released)
}

async fn release_in(client: &kube::Client, namespace: &Option<String>) -> anyhow::Result<usize> {
    let topics = release_kind::<Topic>(client, namespace, crate::topic_plan::FINALIZER).await?;
    let plugins =
        release_kind::<crate::crd::Plugin>(client, namespace, crate::plugin_plan::FINALIZER)
            .await?;
    let users =
        release_kind::<crate::crd::User>(client, namespace, crate::user_plan::FINALIZER).await?;
    Ok(topics + plugins + users)
}

/// Removes `finalizer` from every `K` that has it; returns how many.
async fn release_kind<K>(
    client: &kube::Client,
    namespace: &Option<String>,
    finalizer: &str,
) -> anyhow::Result<usize>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let mut released = 0;
    let all = scoped::<K>(client, namespace)
        .list(&kube::api::ListParams::default())
        .await?;
    for obj in all.items {
        if crate::crd::has_finalizer(obj.meta(), finalizer) {
            let api = Api::<K>::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
            crate::kube_writes::remove_finalizer(&api, &obj, finalizer).await?;
            released += 1;
        }
    }
    Ok(released)
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
    if opts.install_crds {
        install_crds(&client).await?;
        tracing::info!("CRDs applied");
    }
    let metrics = Arc::new(Metrics::new()?);
    let http = tokio::spawn(serve_http(opts.listen, metrics.clone()));
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics.clone(),
        opts.endpoints,
        opts.resync,
        Some(opts.identity.clone()),
    ));
    let mut leadership = match &opts.lease_namespace {
        Some(lease_ns) => {
            tracing::info!(identity = %opts.identity, "waiting for the leader Lease");
            // A follower must still stop promptly on SIGTERM.
            let l = tokio::select! {
                l = Leadership::acquire(&client, lease_ns, &opts.identity, LEASE_SECONDS) => l?,
                _ = shutdown() => return Ok(()),
            };
            tracing::info!("holding the leader Lease; reconciling");
            Some(l)
        }
        None => None,
    };
    metrics.leader.set(1);
    let lost = async {
        match leadership.as_mut() {
            Some(l) => l.lost().await,
            None => std::future::pending::<()>().await,
        }
    };
    let outcome = tokio::select! {
        e = watch_namespaces(ctx, &opts.namespaces) => Err(e),
        _ = lost => {
            metrics.leader.set(0);
            // Another replica may already reconcile: stop at once and let
            // the Deployment restart this one as a follower.
            Err(anyhow::anyhow!("lost the leader Lease"))
        }
        r = http => Err(anyhow::anyhow!("the metrics endpoint stopped: {r:?}")),
        _ = shutdown() => Ok(()),
    };
    if let Some(l) = leadership {
        metrics.leader.set(0);
        // Free for the standby now, not when the Lease expires.
        l.release().await;
    }
    outcome
}

/// Whether nobody holds `lease`: released, or its holder's last renewal
/// has expired.
fn free(lease: &Lease) -> bool {
    let Some(spec) = lease.spec.as_ref() else {
        return true;
    };
    if spec.holder_identity.as_deref().is_none_or(str::is_empty) {
        return true;
    }
    match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(renewed), Some(seconds)) => {
            renewed.0 + k8s_openapi::jiff::SignedDuration::from_secs(i64::from(seconds))
                < k8s_openapi::jiff::Timestamp::now()
        }
        _ => true,
    }
}

/// How long the Lease is valid without a renewal (a standby waits this
/// long for a leader that died without releasing it).
const LEASE_SECONDS: u64 = 15;

/// Leader election on the operator's Lease. Held once `acquire` returns;
/// a background task renews it; `release` gives it up and waits until the
/// Lease says so. (Dropping the watch receiver only asks that task to
/// release it: a process that exits right after never lets it run, and its
/// standby waited out the Lease's duration.)
pub struct Leadership {
    rx: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
}

/// How often a standby looks at the Lease for a leader that let it go.
const STANDBY_POLL: Duration = Duration::from_secs(1);

impl Leadership {
    /// Waits until this replica (`identity`) holds the Lease `LEASE_NAME`
    /// in `namespace`. A standby takes it as soon as the leader releases
    /// it: the lease manager alone would look again only when the leader's
    /// last renewal expires, so the standby also reads the Lease every
    /// `STANDBY_POLL` and, once it is free, starts over with a manager that
    /// sees it free.
    pub async fn acquire(
        client: &kube::Client,
        namespace: &str,
        identity: &str,
        duration_seconds: u64,
    ) -> anyhow::Result<Leadership> {
        let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
        loop {
            let manager = LeaseManagerBuilder::new(client.clone(), LEASE_NAME)
                .with_namespace(namespace)
                .with_identity(identity)
                .with_field_manager(crate::context::FIELD_MANAGER)
                .with_duration(duration_seconds)
                .with_grace((duration_seconds / 3).max(1))
                .build()
                .await?;
            let freed = async {
                loop {
                    tokio::time::sleep(STANDBY_POLL).await;
                    if leases
                        .get_opt(LEASE_NAME)
                        .await
                        .ok()
                        .flatten()
                        .is_some_and(|l| free(&l))
                    {
                        return;
                    }
                }
            };
            let won = tokio::select! {
                won = manager.changed() => won?,
                () = freed => false,
            };
            if won {
                let (rx, task) = manager.watch().await;
                return Ok(Leadership { rx, task });
            }
        }
    }

    /// Returns once this replica no longer holds the Lease.
    pub async fn lost(&mut self) {
        while *self.rx.borrow_and_update() {
            if self.rx.changed().await.is_err() {
                break;
            }
        }
    }

    /// Gives the Lease up (if held) and waits, a few seconds at most, until
    /// the release is written.
    pub async fn release(self) {
        drop(self.rx);
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(_))) => tracing::info!("leader Lease released"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "releasing the leader Lease failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the Lease task ended abnormally"),
            Err(_) => tracing::warn!("the leader Lease was not released within 5 s"),
        }
    }
}

/// SIGTERM (what the kubelet sends) or SIGINT.
async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
