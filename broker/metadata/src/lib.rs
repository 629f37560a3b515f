//! Sluice's cluster metadata: the image every broker agrees on (brokers,
//! topics and their partitions' replicas, leaders, ISR and epochs, topic
//! configs, the plugin registry, the cluster id) and the commands that
//! change it (`image`), the controller quorum that orders those commands
//! (`quorum`, openraft), broker liveness and preferred leaders
//! (`controller`), producer-id blocks, and the rules a topic's configs
//! follow (`topic_config`, `plugins`).
//!
//! Nothing here touches partition data: the broker services apply the
//! image (opening logs, taking leader and follower roles).

pub mod acl;
pub mod controller;
pub mod image;
pub mod plugins;
pub mod producer_ids;
pub mod quorum;
pub mod scram;
pub mod topic_config;

/// fsyncs a directory, so a rename or create in it is durable.
pub fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
