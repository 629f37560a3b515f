//! Partitioner: every record of a tenant goes to one partition, chosen by
//! the `"tenant"` field of a JSON value (records without one go to 0).

use sluice_plugin::{Record, partitioner};

/// The string value of `"field"` in a flat JSON object, without a JSON
/// library (keeps the module small).
pub fn json_str<'a>(json: &'a str, field: &str) -> Option<&'a str> {
    let pat = format!("\"{field}\"");
    let after = &json[json.find(&pat)? + pat.len()..];
    let after = after.trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    Some(&after[..after.find('"')?])
}

/// FNV-1a: stable across languages and versions, unlike std's hasher.
fn fnv1a(b: &[u8]) -> u32 {
    b.iter().fold(0x811c_9dc5u32, |h, &x| (h ^ u32::from(x)).wrapping_mul(0x0100_0193))
}

#[partitioner]
fn route(record: &Record, partitions: u32) -> u32 {
    match record.value_str().and_then(|v| json_str(v, "tenant")) {
        Some(t) => fnv1a(t.as_bytes()) % partitions.max(1),
        None => 0,
    }
}
