//! Interceptor: masks the values of the JSON fields `email` and `ssn` and
//! stamps a `redacted` header on every record it changed.

use sluice_plugin::{Record, interceptor};

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
    let mut changed = false;
    for field in ["email", "ssn"] {
        if let Some(masked) = mask(&text, field) {
            text = masked;
            changed = true;
        }
    }
    if changed {
        record.value = Some(text.into_bytes());
        record.set_header("redacted", "email,ssn");
    }
    Ok(record)
}
