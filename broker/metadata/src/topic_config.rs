//! Topic-level configuration: the keys Sluice understands, their defaults,
//! validation, and resolution into the storage settings of a partition.
//! One table drives CreateTopics, (Incremental)AlterConfigs and
//! DescribeConfigs so the three can never disagree.

use std::collections::BTreeMap;

/// The data-dir folder of a broker's own metadata; no topic may take a name
/// starting with it.
pub const META_DIR: &str = "__sluice_meta";

/// Kafka's topic name rules: 1..=249 chars of [a-zA-Z0-9._-], not "." or "..".
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("topic name cannot be '{name}'"));
    }
    if name.len() > 249 {
        return Err(format!(
            "topic name is {} characters, the maximum is 249",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name '{name}' contains '{c}'; only ASCII letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    if name.starts_with(META_DIR) {
        return Err(format!("topic name '{name}' is reserved"));
    }
    Ok(())
}

/// Kafka's DescribeConfigs `config_type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
}

pub struct ConfigDef {
    pub name: &'static str,
    pub default: &'static str,
    pub kind: ConfigType,
    pub doc: &'static str,
    validate: fn(&str) -> Result<(), String>,
}

fn long_at_least(min: i64) -> impl Fn(&str) -> Result<(), String> {
    move |v: &str| match v.trim().parse::<i64>() {
        Ok(n) if n >= min => Ok(()),
        Ok(n) => Err(format!("{n} is below the minimum {min}")),
        Err(_) => Err(format!("'{v}' is not a whole number")),
    }
}

fn int_at_least(min: i64) -> impl Fn(&str) -> Result<(), String> {
    move |v: &str| {
        long_at_least(min)(v)?;
        match v.trim().parse::<i32>() {
            Ok(_) => Ok(()),
            Err(_) => Err(format!("'{v}' does not fit a 32-bit integer")),
        }
    }
}

fn one_of(allowed: &'static [&'static str]) -> impl Fn(&str) -> Result<(), String> {
    move |v: &str| {
        if allowed.contains(&v) {
            Ok(())
        } else {
            Err(format!("'{v}' is not one of {allowed:?}"))
        }
    }
}

macro_rules! def {
    ($name:expr, $default:expr, $kind:expr, $doc:expr, $check:expr) => {
        ConfigDef {
            name: $name,
            default: $default,
            kind: $kind,
            doc: $doc,
            validate: |v| ($check)(v),
        }
    };
}

/// Every topic config Sluice accepts. Anything else is INVALID_CONFIG.
pub static TOPIC_CONFIGS: &[ConfigDef] = &[
    def!(
        "cleanup.policy",
        "delete",
        ConfigType::String,
        "Only 'delete' (time/size retention) is supported; compaction is not.",
        one_of(&["delete"])
    ),
    def!(
        "retention.ms",
        "604800000",
        ConfigType::Long,
        "Delete sealed segments whose newest record is older than this (-1: forever).",
        long_at_least(-1)
    ),
    def!(
        "retention.bytes",
        "-1",
        ConfigType::Long,
        "Delete the oldest sealed segments while the partition is larger than this (-1: no limit).",
        long_at_least(-1)
    ),
    def!(
        "segment.bytes",
        "1073741824",
        ConfigType::Int,
        "Roll to a new segment file when the active one would exceed this size.",
        int_at_least(1024)
    ),
    def!(
        "segment.ms",
        "604800000",
        ConfigType::Long,
        "Roll to a new segment file when the active one is older than this.",
        long_at_least(1)
    ),
    def!(
        "max.message.bytes",
        "1048588",
        ConfigType::Int,
        "Largest record batch (after compression) the topic accepts.",
        int_at_least(0)
    ),
    def!(
        "min.insync.replicas",
        "1",
        ConfigType::Int,
        "With acks=all, the fewest in-sync replicas that must have a write; with fewer, produce fails with NOT_ENOUGH_REPLICAS.",
        int_at_least(1)
    ),
    def!(
        "flush.messages",
        "9223372036854775807",
        ConfigType::Long,
        "Force an fsync after this many records.",
        long_at_least(1)
    ),
    def!(
        "flush.ms",
        "1000",
        ConfigType::Long,
        "Fsync dirty data at least this often. acks=all writes are always fsynced before the ack.",
        long_at_least(0)
    ),
    def!(
        "index.interval.bytes",
        "4096",
        ConfigType::Int,
        "Bytes of log between two sparse index entries.",
        int_at_least(0)
    ),
    def!(
        "message.timestamp.type",
        "CreateTime",
        ConfigType::String,
        "CreateTime keeps the producer's timestamps; LogAppendTime stamps the broker's clock.",
        one_of(&["CreateTime", "LogAppendTime"])
    ),
    def!(
        "compression.type",
        "producer",
        ConfigType::String,
        "Batches are stored as the producer compressed them.",
        one_of(&["producer"])
    ),
    def!(
        "unclean.leader.election.enable",
        "false",
        ConfigType::Boolean,
        "Allow an out-of-sync replica to become leader (possible data loss).",
        one_of(&["true", "false"])
    ),
    def!(
        "sluice.partitioner",
        "",
        ConfigType::String,
        "Plugin (kind partitioner) that picks the partition of every record produced to the topic.",
        |v: &str| crate::plugins::validate_config("sluice.partitioner", v)
    ),
    def!(
        "sluice.interceptors",
        "",
        ConfigType::String,
        "Comma-separated interceptor plugins, applied in order on produce; any may rewrite or reject records.",
        |v: &str| crate::plugins::validate_config("sluice.interceptors", v)
    ),
    def!(
        "sluice.filters",
        "",
        ConfigType::String,
        "Comma-separated filter plugins applied on produce; dropped records are never stored.",
        |v: &str| crate::plugins::validate_config("sluice.filters", v)
    ),
    def!(
        "sluice.view.of",
        "",
        ConfigType::String,
        "Makes this topic a read-only view of the named topic: same partitions and offsets, records filtered by sluice.fetch.filters.",
        |v: &str| if v.is_empty() {
            Ok(())
        } else {
            validate_topic_name(v)
        }
    ),
    def!(
        "sluice.fetch.filters",
        "",
        ConfigType::String,
        "Comma-separated filter plugins applied when consumers fetch from this view; dropped records are skipped, offsets stay the stored ones.",
        |v: &str| crate::plugins::validate_config("sluice.fetch.filters", v)
    ),
    def!(
        "sluice.plugin.failure.policy",
        "reject",
        ConfigType::String,
        "When a bound plugin fails: reject (fail the produce), pass (skip the plugin), dead-letter (store the batch in sluice.plugin.dead.letter.topic).",
        |v: &str| crate::plugins::validate_config("sluice.plugin.failure.policy", v)
    ),
    def!(
        "sluice.plugin.dead.letter.topic",
        "",
        ConfigType::String,
        "Topic that receives batches a failed plugin could not process, under the dead-letter policy.",
        |v: &str| if v.is_empty() {
            Ok(())
        } else {
            validate_topic_name(v)
        }
    ),
    def!(
        "sluice.plugin.timeout.ms",
        "100",
        ConfigType::Long,
        "Execution deadline of one plugin call (one record batch).",
        |v: &str| crate::plugins::validate_config("sluice.plugin.timeout.ms", v)
    ),
    def!(
        "sluice.plugin.memory.bytes",
        "33554432",
        ConfigType::Long,
        "Linear-memory cap of each plugin instance.",
        |v: &str| crate::plugins::validate_config("sluice.plugin.memory.bytes", v)
    ),
];

pub fn lookup(name: &str) -> Option<&'static ConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// A family of keys, one per bound plugin: `sluice.plugin.config.<plugin>`
/// holds that plugin's configuration on this topic. The broker does not
/// interpret the value; the plugin reads it through the `config` host import.
pub const PLUGIN_CONFIG_PREFIX: &str = "sluice.plugin.config.";
const PLUGIN_CONFIG_DOC: &str =
    "Configuration handed to the named plugin when it runs for this topic (opaque to the broker).";
/// Plugin configs are small settings, not data; this is also the most a
/// config value can hold in the non-flexible versions of CreateTopics and
/// AlterConfigs (an INT16-prefixed string).
pub const MAX_PLUGIN_CONFIG_BYTES: usize = i16::MAX as usize;

fn validate_plugin_config(name: &str, value: &str) -> Result<(), String> {
    let plugin = &name[PLUGIN_CONFIG_PREFIX.len()..];
    crate::plugins::validate_name(plugin)
        .map_err(|e| format!("config '{name}' does not name a plugin: {e}"))?;
    if value.len() > MAX_PLUGIN_CONFIG_BYTES {
        return Err(format!(
            "invalid value for {name}: {} bytes, over the {MAX_PLUGIN_CONFIG_BYTES}-byte limit",
            value.len()
        ));
    }
    Ok(())
}

/// Validates one key/value, with a message fit for the client.
pub fn validate(name: &str, value: &str) -> Result<(), String> {
    if name.starts_with(PLUGIN_CONFIG_PREFIX) {
        return validate_plugin_config(name, value);
    }
    let def = lookup(name).ok_or_else(|| format!("unknown topic config '{name}'"))?;
    (def.validate)(value).map_err(|e| format!("invalid value for {name}: {e}"))
}

/// One config as DescribeConfigs and CreateTopics report it.
pub struct Entry<'a> {
    pub name: &'a str,
    pub value: &'a str,
    /// The default, for keys that have one (not the plugin-config family).
    pub default: Option<&'a str>,
    pub overridden: bool,
    pub kind: ConfigType,
    pub doc: &'a str,
}

/// Every key of the table with its effective value, then the topic's
/// plugin configs: the full set a describe shows.
pub fn entries(overrides: &BTreeMap<String, String>) -> impl Iterator<Item = Entry<'_>> {
    let table = TOPIC_CONFIGS.iter().map(|d| Entry {
        name: d.name,
        value: effective(overrides, d),
        default: Some(d.default),
        overridden: overrides.contains_key(d.name),
        kind: d.kind,
        doc: d.doc,
    });
    let plugins = overrides
        .range(PLUGIN_CONFIG_PREFIX.to_string()..)
        .take_while(|(k, _)| k.starts_with(PLUGIN_CONFIG_PREFIX))
        .map(|(k, v)| Entry {
            name: k,
            value: v,
            default: None,
            overridden: true,
            kind: ConfigType::String,
            doc: PLUGIN_CONFIG_DOC,
        });
    table.chain(plugins)
}

pub fn validate_all(configs: &BTreeMap<String, String>) -> Result<(), String> {
    configs.iter().try_for_each(|(k, v)| validate(k, v))
}

/// The effective value of `name` for a topic with these overrides.
pub fn effective<'a>(overrides: &'a BTreeMap<String, String>, def: &'a ConfigDef) -> &'a str {
    overrides.get(def.name).map_or(def.default, String::as_str)
}

/// An integer setting's effective value (inputs were validated on the
/// way in; a value that still does not parse reads as 0).
pub fn effective_i64(overrides: &BTreeMap<String, String>, name: &str) -> i64 {
    let def_value = lookup(name).map_or("0", |d| d.default);
    overrides
        .get(name)
        .map_or(def_value, String::as_str)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// `min.insync.replicas` of a topic.
pub fn min_insync_replicas(overrides: &BTreeMap<String, String>) -> usize {
    effective_i64(overrides, "min.insync.replicas").max(1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_problem() {
        assert!(validate("retention.ms", "-1").is_ok());
        assert!(
            validate("retention.ms", "-2")
                .expect_err("invalid")
                .contains("minimum")
        );
        assert!(validate("segment.bytes", "99999999999").is_err());
        assert!(validate("cleanup.policy", "compact").is_err());
        assert!(
            validate("no.such.key", "1")
                .expect_err("invalid")
                .contains("unknown")
        );
    }

    #[test]
    fn plugin_configs_are_a_validated_family() {
        assert!(validate("sluice.plugin.config.redact", "phone,email").is_ok());
        assert!(validate("sluice.plugin.config.", "x").is_err());
        assert!(validate("sluice.plugin.config.Bad Name", "x").is_err());
        let huge = "x".repeat(MAX_PLUGIN_CONFIG_BYTES + 1);
        assert!(validate("sluice.plugin.config.redact", &huge).is_err());
        let mut o = BTreeMap::new();
        o.insert(
            "sluice.plugin.config.redact".to_string(),
            "phone".to_string(),
        );
        o.insert(
            "sluice.plugin.failure.policy".to_string(),
            "pass".to_string(),
        );
        let listed: Vec<(&str, &str, bool)> = entries(&o)
            .filter(|e| e.name.starts_with("sluice.plugin."))
            .map(|e| (e.name, e.value, e.overridden))
            .collect();
        assert!(listed.contains(&("sluice.plugin.config.redact", "phone", true)));
        assert!(listed.contains(&("sluice.plugin.failure.policy", "pass", true)));
        assert!(listed.contains(&("sluice.plugin.timeout.ms", "100", false)));
    }
}
