//! The plugin registry's vocabulary, shared by the metadata (which holds
//! the registry) and the plugin host (which runs what is in it): plugin
//! kinds, version records, and the syntax of the topic configs that bind
//! plugins.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    Partitioner,
    Interceptor,
    Filter,
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PluginKind::Partitioner => "partitioner",
            PluginKind::Interceptor => "interceptor",
            PluginKind::Filter => "filter",
        })
    }
}

impl FromStr for PluginKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "partitioner" => Ok(PluginKind::Partitioner),
            "interceptor" => Ok(PluginKind::Interceptor),
            "filter" => Ok(PluginKind::Filter),
            other => Err(format!(
                "unknown plugin kind '{other}' (partitioner, interceptor or filter)"
            )),
        }
    }
}

/// Topic config keys that bind plugins (documented in the README).
pub mod keys {
    pub const PARTITIONER: &str = "sluice.partitioner";
    pub const INTERCEPTORS: &str = "sluice.interceptors";
    pub const FILTERS: &str = "sluice.filters";
    pub const FETCH_FILTERS: &str = "sluice.fetch.filters";
    pub const FAILURE_POLICY: &str = "sluice.plugin.failure.policy";
    pub const DEAD_LETTER_TOPIC: &str = "sluice.plugin.dead.letter.topic";
    pub const TIMEOUT_MS: &str = "sluice.plugin.timeout.ms";
    pub const MEMORY_BYTES: &str = "sluice.plugin.memory.bytes";
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionInfo {
    pub version: u32,
    pub kind: PluginKind,
    pub sha256: String,
    pub size: usize,
    pub uploaded_ms: i64,
    pub abi_version: i32,
}

/// A plugin name: what the registry, the HTTP API and bindings accept.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' || c == '.'
        })
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "plugin name '{name}' must be 1-128 characters of a-z, 0-9, '-', '_', '.'"
        ))
    }
}

/// Comma-separated names.
pub fn list(v: Option<&String>) -> Vec<String> {
    v.map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect()
    })
    .unwrap_or_default()
}

/// Syntax checks for the binding configs (existence and kinds are checked
/// against the registry by the admin handlers).
pub fn validate_config(name: &str, value: &str) -> Result<(), String> {
    match name {
        keys::FAILURE_POLICY => match value {
            "reject" | "pass" | "dead-letter" => Ok(()),
            _ => Err(format!("'{value}' is not one of reject, pass, dead-letter")),
        },
        keys::TIMEOUT_MS => match value.parse::<u64>() {
            Ok(1..=10_000) => Ok(()),
            _ => Err(format!("'{value}' must be 1..=10000 milliseconds")),
        },
        keys::MEMORY_BYTES => match value.parse::<usize>() {
            Ok(n) if (1 << 16..=256 << 20).contains(&n) => Ok(()),
            _ => Err(format!(
                "'{value}' must be between 65536 and 268435456 bytes"
            )),
        },
        _ => {
            for p in list(Some(&value.to_string())) {
                validate_name(&p)?;
            }
            Ok(())
        }
    }
}
