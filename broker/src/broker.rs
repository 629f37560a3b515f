//! The broker's shared state: identity, topics, metrics. One `Arc<Broker>`
//! is handed to every connection and to the admin server.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::Context;

use crate::cluster::producer_ids::ProducerIdAllocator;
use crate::cluster::topics::{META_DIR, NewTopic, TopicError, TopicRegistry};
use crate::config::ServeArgs;
use crate::groups::store::OffsetStore;
use crate::groups::{GroupConfig, GroupCoordinator, OFFSETS_TOPIC};
use crate::metrics::Metrics;
use crate::plugins::{PluginEngine, PluginHost, PluginRegistry};

pub struct Broker {
    pub args: ServeArgs,
    pub node_id: i32,
    pub cluster_id: String,
    pub advertised_host: String,
    pub advertised_port: i32,
    pub topics: TopicRegistry,
    pub groups: GroupCoordinator,
    pub producer_ids: ProducerIdAllocator,
    pub plugins: PluginHost,
    pub metrics: Metrics,
    /// Set once logs are recovered and both listeners are bound.
    pub ready: AtomicBool,
}

impl Broker {
    /// Opens the data directory (recovering every partition) and fixes the
    /// address advertised to clients.
    pub async fn open(
        args: ServeArgs,
        advertised_host: String,
        advertised_port: i32,
    ) -> anyhow::Result<Broker> {
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
        let cluster_id = load_or_create_cluster_id(&args.data_dir)?;
        let dir = args.data_dir.clone();
        let node_id = args.node_id;
        let topics = tokio::task::spawn_blocking(move || TopicRegistry::open(&dir, node_id))
            .await?
            .with_context(|| format!("opening topics in {}", args.data_dir.display()))?;
        let offsets =
            ensure_offsets_topic(&topics, args.offsets_topic_partitions, args.node_id).await?;
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
        let producer_ids = ProducerIdAllocator::open(&args.data_dir.join(META_DIR))?;
        let plugin_dir = args.data_dir.join(META_DIR).join("plugins");
        let plugins = tokio::task::spawn_blocking(move || -> anyhow::Result<PluginHost> {
            let engine = PluginEngine::new()?;
            Ok(PluginHost::new(PluginRegistry::open(&plugin_dir, engine)?))
        })
        .await?
        .context("loading plugins")?;
        Ok(Broker {
            groups,
            producer_ids,
            plugins,
            node_id: args.node_id,
            cluster_id,
            advertised_host,
            advertised_port,
            topics,
            metrics: Metrics::new(),
            ready: AtomicBool::new(false),
            args,
        })
    }

    /// Broker ids of the cluster, sorted. Single-node for now.
    pub fn broker_ids(&self) -> Vec<i32> {
        vec![self.node_id]
    }
}

/// The internal topic holding committed offsets, created on first start.
/// Never deleted by retention: offsets must outlive the data they point at.
async fn ensure_offsets_topic(
    topics: &TopicRegistry,
    partitions: i32,
    node_id: i32,
) -> anyhow::Result<OffsetStore> {
    let topic = match topics.get(OFFSETS_TOPIC) {
        Some(t) => t,
        None => {
            let mut configs = std::collections::BTreeMap::new();
            configs.insert("retention.ms".to_string(), "-1".to_string());
            configs.insert("segment.bytes".to_string(), "104857600".to_string());
            let created = topics
                .create(
                    NewTopic {
                        name: OFFSETS_TOPIC.to_string(),
                        partitions,
                        replication_factor: 1,
                        assignment: vec![],
                        configs,
                    },
                    &[node_id],
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
    Ok(OffsetStore::new(topic.partitions.clone()))
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
