//! Benchmark interceptor: rewrites one header on every record.

use sluice_plugin::{Record, interceptor};

#[interceptor]
fn stamp(mut record: Record) -> Result<Record, String> {
    record.set_header("stamped", "1");
    Ok(record)
}
