//! Benchmark baseline: always partition 0 (measures pure plugin overhead).

use sluice_plugin::{Record, partitioner};

#[partitioner]
fn route(_record: &Record, _partitions: u32) -> u32 {
    0
}
