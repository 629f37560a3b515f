//! Cluster metadata: the controller quorum and its image, topics, their
//! partitions, placement and configs.

pub mod controller;
pub mod metadata;
pub mod producer_ids;
pub mod quorum;
pub mod topic_config;
pub mod topics;
