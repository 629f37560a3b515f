//! Benchmark filter: keeps records whose key ends in an even digit (half of
//! a sequentially keyed workload).

use sluice_plugin::{Record, filter};

#[filter]
fn keep(record: &Record) -> bool {
    record
        .key()
        .and_then(|k| k.last())
        .is_some_and(|d| d.is_ascii_digit() && (d - b'0') % 2 == 0)
}
