//! Cluster metadata: topics, their partitions, placement and configs.

pub mod producer_ids;
pub mod topic_config;
pub mod topics;
