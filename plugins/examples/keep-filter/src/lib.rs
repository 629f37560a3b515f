//! Filter: drops records whose JSON `level` is `"debug"` or whose `keep`
//! header is `false`; keeps everything else.

use sluice_plugin::{Record, filter};

#[filter]
fn keep(record: &Record) -> bool {
    if record.header("keep") == Some(b"false".as_slice()) {
        return false;
    }
    !record
        .value_str()
        .is_some_and(|v| v.contains("\"level\":\"debug\"") || v.contains("\"level\": \"debug\""))
}
