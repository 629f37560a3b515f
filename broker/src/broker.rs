//! The broker's shared state: identity, topics, metrics. One `Arc<Broker>`
//! is handed to every connection and to the admin server.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::Context;

use crate::cluster::topics::{META_DIR, TopicRegistry};
use crate::config::ServeArgs;
use crate::metrics::Metrics;

pub struct Broker {
    pub args: ServeArgs,
    pub node_id: i32,
    pub cluster_id: String,
    pub advertised_host: String,
    pub advertised_port: i32,
    pub topics: TopicRegistry,
    pub metrics: Metrics,
    /// Set once logs are recovered and both listeners are bound.
    pub ready: AtomicBool,
}

impl Broker {
    /// Opens the data directory (recovering every partition) and fixes the
    /// address advertised to clients.
    pub fn open(
        args: ServeArgs,
        advertised_host: String,
        advertised_port: i32,
    ) -> anyhow::Result<Broker> {
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
        let cluster_id = load_or_create_cluster_id(&args.data_dir)?;
        let topics = TopicRegistry::open(&args.data_dir, args.node_id)
            .with_context(|| format!("opening topics in {}", args.data_dir.display()))?;
        Ok(Broker {
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
