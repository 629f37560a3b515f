//! Interceptor: masks the values of JSON string fields and stamps a
//! `redacted` header (the field list) on every record it changed. The
//! fields come from the binding's config, `sluice.plugin.config.redact`,
//! as a comma-separated list; `email,ssn` when unset.

use sluice_plugin::{Record, interceptor};

const DEFAULT_FIELDS: &str = "email,ssn";

fn mask(json: &str, field: &str) -> Option<String> {
    let pat = format!("\"{field}\"");
    let start = json.find(&pat)? + pat.len();
    let rest = &json[start..];
    let colon = rest.find(':')?;
    let open = start + colon + 1 + rest[colon + 1..].find('"')? + 1;
    let close = open + json[open..].find('"')?;
    Some(format!("{}***{}", &json[..open], &json[close..]))
}

#[interceptor]
fn redact(mut record: Record) -> Result<Record, String> {
    let Some(mut text) = record.value_str().map(str::to_string) else {
        return Ok(record);
    };
    let config = sluice_plugin::config();
    let fields = match config.trim() {
        "" => DEFAULT_FIELDS,
        list => list,
    };
    let mut changed = false;
    for field in fields.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        if let Some(masked) = mask(&text, field) {
            text = masked;
            changed = true;
        }
    }
    if changed {
        record.set_value(Some(text.into_bytes()));
        record.set_header("redacted", fields);
    }
    Ok(record)
}
