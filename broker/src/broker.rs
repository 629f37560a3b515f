//! The broker's shared state: identity, topics, metrics. One `Arc<Broker>`
//! is handed to every connection and to the admin server.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;

use crate::cluster::controller::{self, Registration};
use crate::cluster::producer_ids::ProducerIdAllocator;
use crate::cluster::quorum::Quorum;
use crate::cluster::topics::{META_DIR, NewTopic, TopicError, TopicRegistry};
use crate::config::ServeArgs;
use crate::groups::store::OffsetStore;
use crate::groups::{GroupConfig, GroupCoordinator, OFFSETS_TOPIC};
use crate::metrics::Metrics;
use crate::plugins::{PluginEngine, PluginHost, PluginRegistry};
use crate::replication::{ReplicaManager, ReplicationConfig};

pub struct Broker {
    pub args: ServeArgs,
    pub node_id: i32,
    pub cluster_id: String,
    pub advertised_host: String,
    pub advertised_port: i32,
    pub quorum: Arc<Quorum>,
    pub registration: Registration,
    pub topics: TopicRegistry,
    pub groups: GroupCoordinator,
    pub replicas: Arc<ReplicaManager>,
    pub producer_ids: ProducerIdAllocator,
    pub plugins: PluginHost,
    pub metrics: Metrics,
    /// Set once logs are recovered and both listeners are bound.
    pub ready: AtomicBool,
}

impl Broker {
    /// Registers with the controller quorum (waiting for it), opens the
    /// partitions the metadata places here (recovering their logs) and
    /// loads groups and plugins.
    pub async fn open(
        args: ServeArgs,
        quorum: Arc<Quorum>,
        registration: Registration,
    ) -> anyhow::Result<Broker> {
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
        let cluster_id = load_or_create_cluster_id(&args.data_dir)?;
        controller::register(&quorum, &registration).await;
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
            },
            quorum.clone(),
        ));
        let offsets = ensure_offsets_topic(&topics, &quorum, args.offsets_topic_partitions).await?;
        replicas.apply_image(&quorum.image(), &topics);
        let offsets = OffsetStore::replicated(offsets, replicas.clone());
        let group_config = GroupConfig {
            initial_rebalance_delay: std::time::Duration::from_millis(
                args.group_initial_rebalance_delay_ms,
            ),
            ..GroupConfig::default()
        };
        let groups =
            tokio::task::spawn_blocking(move || GroupCoordinator::open(offsets, group_config))
                .await?
                .context("loading consumer groups")?;
        groups.set_owned(replicas.led_partitions(OFFSETS_TOPIC));
        let producer_ids = ProducerIdAllocator::new(quorum.clone());
        let plugin_dir = args.data_dir.join(META_DIR).join("plugins");
        let plugins = tokio::task::spawn_blocking(move || -> anyhow::Result<PluginHost> {
            let engine = PluginEngine::new()?;
            Ok(PluginHost::new(PluginRegistry::open(&plugin_dir, engine)?))
        })
        .await?
        .context("loading plugins")?;
        let plugins = migrate_plugins(&quorum, plugins).await?;
        let metrics = Metrics::new();
        metrics.register(Box::new(quorum.commit_seconds.clone()));
        Ok(Broker {
            groups,
            replicas,
            producer_ids,
            plugins,
            node_id: args.node_id,
            cluster_id,
            advertised_host: registration.host.clone(),
            advertised_port: registration.port,
            quorum,
            registration,
            topics,
            metrics,
            ready: AtomicBool::new(false),
            args,
        })
    }

    /// The broker coordinating `group`: the leader of the offsets partition
    /// the group id hashes to, as (id, host, port).
    pub fn coordinator_for(&self, group: &str) -> Option<(i32, String, i32)> {
        let image = self.quorum.image();
        let offsets = image.topics.get(OFFSETS_TOPIC)?;
        let p = crate::groups::store::partition_for(group, offsets.partitions.len());
        let leader = offsets.partitions.get(p)?.leader;
        let broker = image.brokers.get(&leader).filter(|x| !x.fenced)?;
        Some((broker.id, broker.host.clone(), broker.port))
    }

    /// Ids of the live (registered, unfenced) brokers, sorted.
    pub fn broker_ids(&self) -> Vec<i32> {
        self.quorum.image().live_brokers()
    }
}

/// The internal topic holding committed offsets, created on first start.
/// Never deleted by retention: offsets must outlive the data they point at.
async fn ensure_offsets_topic(
    topics: &TopicRegistry,
    quorum: &Quorum,
    partitions: i32,
) -> anyhow::Result<Vec<Arc<crate::log::PartitionLog>>> {
    let topic = match topics.get(OFFSETS_TOPIC) {
        Some(t) => t,
        None => {
            let mut configs = std::collections::BTreeMap::new();
            configs.insert("retention.ms".to_string(), "-1".to_string());
            configs.insert("segment.bytes".to_string(), "104857600".to_string());
            // Until group coordinators move with partition leadership, every
            // broker holds every offsets partition.
            let voters = quorum.voter_ids();
            wait_for_registration(quorum, &voters).await;
            let created = topics
                .create(
                    NewTopic {
                        name: OFFSETS_TOPIC.to_string(),
                        partitions,
                        replication_factor: voters.len() as i16,
                        assignment: sluice_placement::assign(
                            &voters,
                            0,
                            partitions.max(1) as usize,
                            voters.len(),
                        )
                        .map_err(|e| anyhow::anyhow!("placing the offsets topic: {e}"))?,
                        configs,
                    },
                    &voters,
                )
                .await;
            match created {
                Ok(t) => t,
                Err(TopicError::AlreadyExists(_)) => topics
                    .get(OFFSETS_TOPIC)
                    .context("offsets topic vanished")?,
                Err(e) => return Err(e).context("creating the internal offsets topic"),
            }
        }
    };
    let logs = topic
        .partitions
        .iter()
        .cloned()
        .collect::<Option<Vec<_>>>()
        .context("this broker does not hold every partition of the offsets topic")?;
    Ok(logs)
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
        let command = crate::cluster::metadata::Command::UploadPlugin {
            name: name.clone(),
            kind: info.kind,
            wasm: crate::cluster::metadata::Wasm(wasm.into()),
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
    name == OFFSETS_TOPIC
}

/// The cluster id is minted once per data directory, like Kafka's
/// `meta.properties`, so clients see a stable id across restarts.
fn load_or_create_cluster_id(data_dir: &Path) -> anyhow::Result<String> {
    let dir = data_dir.join(META_DIR);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("cluster_id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let tmp = dir.join("cluster_id.tmp");
    std::fs::write(&tmp, &id)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(id)
}
