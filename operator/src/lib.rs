//! The Sluice Kubernetes operator: custom resources (`crd`) and, built on
//! them, the controllers that keep brokers, topics and plugins in shape.
//! Each controller is a pure planner (`*_plan`) plus a thin executor
//! (`*_controller`) that observes, plans and performs the actions.

pub mod broker_admin;
pub mod cluster_controller;
pub mod cluster_objects;
pub mod cluster_plan;
pub mod context;
pub mod crd;
pub mod error;
pub mod kafka_admin;
pub mod kube_writes;
pub mod metrics;
pub mod plugin_controller;
pub mod plugin_plan;
pub mod run;
pub mod topic_controller;
pub mod topic_plan;
pub mod user_controller;
pub mod user_plan;
