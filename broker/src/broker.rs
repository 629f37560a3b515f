//! The broker's shared state: identity, the applied metadata view, the
//! services request handlers use. One `Arc<Broker>` is handed to every
//! connection and to the admin server.
//!
//! `apply_metadata` is the applier: the one place committed metadata turns
//! into local state (see `crate::view`).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;

use crate::cluster::topics::{META_DIR, NewTopic, PROPOSE_TIMEOUT, TopicError, TopicRegistry};
use crate::config::ServeArgs;
use crate::forward::Forwarder;
use crate::groups::store::OffsetStore;
use crate::groups::{GroupConfig, GroupCoordinator, OFFSETS_TOPIC};
use crate::internal_log::ReplicatedLog;
use crate::lag::HighWatermarks;
use crate::metrics::Metrics;
use crate::replication::{ReplicaManager, ReplicationConfig};
use crate::transactions::{MarkerServices, TXN_TOPIC, TxnCoordinator};
use crate::view::{ClusterView, Views};
use sluice_metadata::controller::{self, Registration};
use sluice_metadata::image::Command;
use sluice_metadata::producer_ids::ProducerIdAllocator;
use sluice_metadata::quorum::Quorum;
use sluice_plugin_host::{PluginEngine, PluginHost, PluginMetrics, PluginRegistry};

pub struct Broker {
    pub args: ServeArgs,
    pub node_id: i32,
    pub quorum: Arc<Quorum>,
    /// SASL authentication of connections on SASL listeners.
    pub auth: crate::auth::Authenticator,
    /// ACL checks.
    pub authorizer: crate::auth::authorizer::Authorizer,
    /// Bearer tokens of the HTTP admin API (None: open).
    pub admin_tokens: Option<sluice_client::tls::Reloading<crate::admin::auth::AdminTokens>>,
    pub registration: Registration,
    /// The applied metadata: take `view()` once per request.
    pub views: Arc<Views>,
    pub topics: TopicRegistry,
    pub groups: Arc<GroupCoordinator>,
    pub transactions: Arc<TxnCoordinator>,
    pub replicas: Arc<ReplicaManager>,
    /// Sub-batches for partitions other brokers lead.
    pub forwarder: Arc<Forwarder>,
    /// Other leaders' high watermarks, for consumer lag.
    pub high_watermarks: HighWatermarks,
    pub producer_ids: ProducerIdAllocator,
    pub plugins: PluginHost,
    pub metrics: Metrics,
    /// Set once logs are recovered and both listeners are bound.
    pub ready: AtomicBool,
    /// Cut off from the controller quorum for a session timeout: lead
    /// nothing (set by `crate::liveness`, applied by `apply_metadata`).
    pub cut_off: AtomicBool,
    /// One application of metadata at a time, in order.
    applying: Mutex<()>,
}

impl Broker {
    /// Registers with the controller quorum (waiting for it), agrees on the
    /// cluster id, opens the partitions the metadata places here
    /// (recovering their logs), loads plugins, and applies the metadata
    /// once, so the broker starts with a complete view.
    pub async fn open(
        args: ServeArgs,
        quorum: Arc<Quorum>,
        registration: Registration,
    ) -> anyhow::Result<Broker> {
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
        controller::register(&quorum, &registration).await;
        agree_on_cluster_id(&quorum, &args.data_dir).await?;
        let dir = args.data_dir.clone();
        let node_id = args.node_id;
        let q = quorum.clone();
        let topics = tokio::task::spawn_blocking(move || TopicRegistry::open(&dir, node_id, q))
            .await?
            .with_context(|| format!("opening topics in {}", args.data_dir.display()))?;
        let replicas = Arc::new(ReplicaManager::new(
            args.node_id,
            ReplicationConfig {
                lag_time_max: std::time::Duration::from_millis(args.replica_lag_time_max_ms),
                fetch_max_wait: std::time::Duration::from_millis(args.replica_fetch_wait_max_ms),
                adding_replicas_rate: args.follower_replication_throttled_rate,
            },
            quorum.clone(),
        ));
        ensure_internal_topic(
            &topics,
            &quorum,
            OFFSETS_TOPIC,
            args.offsets_topic_partitions,
        )
        .await?;
        ensure_internal_topic(
            &topics,
            &quorum,
            TXN_TOPIC,
            args.transaction_topic_partitions,
        )
        .await?;
        let views = Arc::new(Views::new(args.node_id));
        let offsets = OffsetStore::new(Arc::new(ReplicatedLog {
            topic: OFFSETS_TOPIC,
            views: views.clone(),
            replicas: replicas.clone(),
            quorum: quorum.clone(),
        }));
        let group_config = GroupConfig {
            initial_rebalance_delay: std::time::Duration::from_millis(
                args.group_initial_rebalance_delay_ms,
            ),
            ..GroupConfig::default()
        };
        let groups = Arc::new(GroupCoordinator::open(offsets, group_config));
        let forwarder = Arc::new(Forwarder::new(args.node_id, quorum.clone()));
        let transactions = TxnCoordinator::new(
            args.transaction_max_timeout_ms,
            args.transactional_id_expiration_ms,
            Arc::new(ReplicatedLog {
                topic: TXN_TOPIC,
                views: views.clone(),
                replicas: replicas.clone(),
                quorum: quorum.clone(),
            }),
            MarkerServices {
                node_id: args.node_id,
                views: views.clone(),
                quorum: quorum.clone(),
                replicas: replicas.clone(),
                groups: groups.clone(),
                forwarder: forwarder.clone(),
            },
        );
        let producer_ids = ProducerIdAllocator::new(quorum.clone());
        let plugin_dir = args.data_dir.join(META_DIR).join("plugins");
        let plugins = tokio::task::spawn_blocking(move || -> anyhow::Result<PluginHost> {
            let engine = PluginEngine::new()?;
            Ok(PluginHost::new(
                PluginRegistry::open(&plugin_dir, engine)?,
                PluginMetrics::new()?,
            ))
        })
        .await?
        .context("loading plugins")?;
        let plugins = migrate_plugins(&quorum, plugins).await?;
        let metrics = Metrics::new();
        metrics.register(Box::new(quorum.commit_seconds.clone()));
        for c in plugins.metrics.collectors() {
            metrics.register(c);
        }
        let auth = crate::auth::Authenticator::new(
            crate::listeners::sasl_mechanisms(&args)?,
            std::time::Duration::from_millis(args.connection_failed_authentication_delay_ms),
            (args.connections_max_reauth_ms > 0)
                .then(|| std::time::Duration::from_millis(args.connections_max_reauth_ms)),
        )?;
        metrics.register(Box::new(auth.attempts.clone()));
        let authorizer = crate::auth::authorizer::from_args(&args)?;
        metrics.register(Box::new(authorizer.denied.clone()));
        let admin_tokens = args
            .admin_auth_tokens_file
            .as_deref()
            .map(crate::admin::auth::AdminTokens::reloading)
            .transpose()?;
        let broker = Broker {
            groups,
            transactions,
            forwarder,
            high_watermarks: HighWatermarks::new(args.node_id, quorum.clone()),
            replicas,
            producer_ids,
            plugins,
            node_id: args.node_id,
            auth,
            authorizer,
            admin_tokens,
            quorum,
            registration,
            views,
            topics,
            metrics,
            ready: AtomicBool::new(false),
            cut_off: AtomicBool::new(false),
            applying: Mutex::new(()),
            args,
        };
        tokio::task::block_in_place(|| broker.apply_metadata());
        Ok(broker)
    }

    /// The latest applied metadata view.
    pub fn view(&self) -> Arc<ClusterView> {
        self.views.current()
    }

    /// Applies the quorum's latest committed metadata, in the one order
    /// everything depends on: plugins (a binding may name one just
    /// uploaded), local topics and their logs, replica roles (old terms
    /// revoked before new ones begin), then the view is published, then
    /// group coordination follows the offsets partitions' leadership.
    /// Blocking (opens logs, loads groups): run it off the async workers.
    pub fn apply_metadata(&self) {
        let _one = self.applying.lock().unwrap_or_else(|e| e.into_inner());
        let latest = self.quorum.view();
        let previous = self.views.current();
        let cut_off = self.cut_off.load(Ordering::Acquire);
        if latest.applied_index <= previous.applied_index
            && previous.applied_index > 0
            && cut_off == previous.cut_off()
        {
            return;
        }
        self.plugins.registry.sync(&latest.image.plugins);
        let topics = self.topics.materialize(&latest.image);
        let leaders = self
            .replicas
            .apply_roles(&previous.leaders, &latest.image, &topics, cut_off);
        self.views.publish(ClusterView::new(
            self.node_id,
            latest.applied_index,
            latest.image.clone(),
            topics,
            Arc::new(leaders),
            cut_off,
        ));
        self.groups.refresh_ownership();
        // Transaction state partitions no longer led (in this epoch) stop
        // being served now; the ones gained load in the background, so a
        // long replay does not hold up the leadership changes after it (ids
        // of a partition still loading get COORDINATOR_LOAD_IN_PROGRESS).
        self.transactions.release_lost();
        let transactions = self.transactions.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || transactions.refresh_ownership())),
            Err(_) => transactions.refresh_ownership(),
        }
    }

    /// Waits until the view includes quorum index `index` (a change this
    /// broker just committed), so the caller reads its own write.
    pub async fn await_view(&self, index: u64) -> Result<Arc<ClusterView>, TopicError> {
        self.views
            .wait_for(index, PROPOSE_TIMEOUT)
            .await
            .ok_or_else(|| {
                TopicError::Controller(format!(
                    "committed change {index} was not applied on broker {} within {PROPOSE_TIMEOUT:?}",
                    self.node_id
                ))
            })
    }
}

/// Every broker proposes the id its data dir already has (or a new one);
/// the first committed is the cluster's, and each broker stores it. So an
/// existing single-node data dir keeps its id, and brokers started on fresh
/// dirs agree on one.
async fn agree_on_cluster_id(quorum: &Quorum, data_dir: &Path) -> anyhow::Result<()> {
    let local = read_cluster_id(data_dir)?;
    if quorum.image().cluster_id.is_none() {
        let id = local
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        quorum
            .propose(Command::InitCluster { id }, PROPOSE_TIMEOUT)
            .await
            .context("agreeing on the cluster id")?
            .map_err(|e| anyhow::anyhow!("agreeing on the cluster id: {e}"))?;
    }
    let agreed = quorum
        .image()
        .cluster_id
        .clone()
        .context("the quorum has no cluster id after committing one")?;
    if local.as_deref() != Some(agreed.as_str()) {
        if let Some(old) = &local {
            tracing::warn!(old = %old, cluster_id = %agreed, "this data dir had another cluster id; adopting the cluster's");
        }
        write_cluster_id(data_dir, &agreed)?;
    }
    tracing::info!(cluster_id = %agreed, "cluster id");
    Ok(())
}

/// An internal topic (committed offsets, transaction state), created on
/// first start. Never deleted by retention: offsets must outlive the data
/// they point at, and a transactional id its producer's sessions.
async fn ensure_internal_topic(
    topics: &TopicRegistry,
    quorum: &Quorum,
    name: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    if quorum.image().topics.contains_key(name) {
        return Ok(());
    }
    let mut configs = std::collections::BTreeMap::new();
    configs.insert("retention.ms".to_string(), "-1".to_string());
    configs.insert("segment.bytes".to_string(), "104857600".to_string());
    // Every broker holds every partition, so whichever leads a partition
    // after failures has its groups or transactions.
    let voters = quorum.voter_ids();
    wait_for_registration(quorum, &voters).await;
    let created = topics
        .create(
            NewTopic {
                name: name.to_string(),
                partitions,
                replication_factor: voters.len() as i16,
                assignment: sluice_placement::assign(
                    &voters,
                    0,
                    partitions.max(1) as usize,
                    voters.len(),
                )
                .map_err(|e| anyhow::anyhow!("placing {name}: {e}"))?,
                configs,
            },
            &voters,
        )
        .await;
    match created {
        Ok(_) | Err(TopicError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating the internal topic {name}")),
    }
}

/// Waits until every broker in `ids` has registered once (placement may
/// only name registered brokers).
async fn wait_for_registration(quorum: &Quorum, ids: &[i32]) {
    let mut rx = quorum.subscribe();
    let started = std::time::Instant::now();
    loop {
        let all = {
            let view = rx.borrow_and_update();
            ids.iter().all(|id| view.image.brokers.contains_key(id))
        };
        if all {
            return;
        }
        match tokio::time::timeout(std::time::Duration::from_secs(10), rx.changed()).await {
            Ok(Ok(())) => {}
            // The quorum stopped; the caller's next proposal reports it.
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::warn!(waited_s = started.elapsed().as_secs(), expected = ?ids, "waiting for the other brokers to register")
            }
        }
    }
}

/// Plugins stored by a broker before the registry moved into the cluster
/// metadata are committed there once (by their current version), then
/// every broker installs what the cluster has.
async fn migrate_plugins(quorum: &Quorum, plugins: PluginHost) -> anyhow::Result<PluginHost> {
    let image = quorum.image();
    for (name, _) in plugins.registry.list() {
        if image.plugins.contains_key(&name) {
            continue;
        }
        let Some((info, wasm)) = plugins.registry.current_wasm(&name) else {
            continue;
        };
        let command = sluice_metadata::image::Command::UploadPlugin {
            name: name.clone(),
            kind: info.kind,
            wasm: sluice_metadata::image::Wasm(wasm.into()),
            sha256: info.sha256,
            uploaded_ms: info.uploaded_ms,
            abi_version: info.abi_version,
        };
        match quorum
            .propose(command, std::time::Duration::from_secs(30))
            .await
        {
            Ok(Ok(_)) => {
                tracing::info!(plugin = %name, "plugin registered in the cluster metadata")
            }
            other => {
                tracing::warn!(plugin = %name, result = ?other, "could not register a local plugin in the cluster")
            }
        }
    }
    let image = quorum.image();
    Ok(tokio::task::spawn_blocking(move || {
        plugins.registry.sync(&image.plugins);
        plugins
    })
    .await?)
}

/// Topics clients may not write to or delete.
pub fn is_internal_topic(name: &str) -> bool {
    name == OFFSETS_TOPIC || name == TXN_TOPIC
}

/// The cluster id this data dir belongs to, like Kafka's `meta.properties`.
fn read_cluster_id(data_dir: &Path) -> anyhow::Result<Option<String>> {
    let path = data_dir.join(META_DIR).join("cluster_id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(Some(id.trim().to_string())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_cluster_id(data_dir: &Path, id: &str) -> anyhow::Result<()> {
    let dir = data_dir.join(META_DIR);
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join("cluster_id.tmp");
    std::fs::write(&tmp, id)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join("cluster_id"))?;
    sluice_storage::sync_dir(&dir)?;
    Ok(())
}
