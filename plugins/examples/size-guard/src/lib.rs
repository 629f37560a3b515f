//! Interceptor: rejects records over 1024 value bytes and records without a
//! `schema` header; everything else passes unchanged.

use sluice_plugin::{Record, interceptor};

const MAX_VALUE: usize = 1024;

#[interceptor]
fn guard(record: Record) -> Result<Record, String> {
    let size = record.value().map_or(0, <[u8]>::len);
    if size > MAX_VALUE {
        return Err(format!("value of {size} bytes exceeds the {MAX_VALUE}-byte limit"));
    }
    if record.header("schema").is_none() {
        return Err("missing required header 'schema'".to_string());
    }
    Ok(record)
}
