//! Sluice's broker services, on top of the lower crates (dependencies run
//! one way: protocol ← storage ← metadata ← plugin host ← here; the
//! internal client is used by metadata and here):
//!
//! - `view`: the one applied metadata view; `broker`: the applier and the
//!   services it wires together;
//! - `replication`: leaders, followers, ISR, the high watermark and the one
//!   leader write path;
//! - `routing` and `forward`: produce through plugins, sub-batches
//!   forwarded to other brokers' leaders;
//! - `groups` and `lag`: the group coordinator; `transactions`: the
//!   transaction coordinator; `internal_log`: the internal topics both
//!   keep their state in;
//! - `liveness`: stepping down when cut off from the controller quorum,
//!   controlled shutdown;
//! - `cluster::topics`: topics materialized with their local logs;
//! - `api` (one module per Kafka API family), `server` (the listener) and
//!   `connections` (its limits and accounting),
//!   `admin` (HTTP), `metrics`, `config`, `maintenance`, `cli`.
//!
//! The `sluice-broker` binary wires them together.

pub mod admin;
pub mod api;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod connections;
pub mod forward;
pub mod groups;
pub mod internal_log;
pub mod lag;
pub mod listeners;
pub mod liveness;
pub mod maintenance;
pub mod metrics;
pub mod replication;
pub mod routing;
pub mod server;
pub mod transactions;
pub mod view;
