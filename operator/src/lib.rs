//! The Sluice Kubernetes operator: custom resources (`crd`) and, built on
//! them, the controllers that keep brokers, topics and plugins in shape.

pub mod cluster_objects;
pub mod cluster_plan;
pub mod crd;
pub mod kafka_admin;
pub mod topic_plan;
