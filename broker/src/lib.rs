//! Sluice broker library: a Kafka-compatible broker on a durable segmented
//! log. The `sluice-broker` binary wires these modules together.

pub mod admin;
pub mod api;
pub mod broker;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod forward;
pub mod groups;
pub mod lag;
pub mod log;
pub mod maintenance;
pub mod metrics;
pub mod plugins;
pub mod protocol;
pub mod replication;
pub mod routing;
pub mod server;
pub mod view;
