//! Partitioner: a numeric `route-to` header names the partition outright
//! (modulo the partition count); otherwise records go to partition 0.

use sluice_plugin::{Record, partitioner};

#[partitioner]
fn route(record: &Record, partitions: u32) -> u32 {
    record
        .header("route-to")
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map_or(0, |p| p % partitions.max(1))
}
