//! `sluice-broker plugin test MODULE --kind ... --input records.jsonl`:
//! runs a module on sample records without a broker, through the broker's
//! own plugin host (the same validation as an upload, the same engine and
//! sandbox limits, the same reading of the answer), and prints what the
//! broker would do with each record: its partition, its rewritten form or
//! the rejection reason, kept or dropped.
//!
//! Input: one JSON object per line, `{"key": "...", "value": "...",
//! "headers": {"name": "value"}, "timestamp": 1700000000000}`, every field
//! optional (null key or value: none); headers may also be a list of
//! `[name, value]` pairs (ordered, names may repeat).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{Context, anyhow};
use clap::Args;
use serde_json::{Value, json};
use sluice_metadata::topic_config::PLUGIN_CONFIG_PREFIX;
use sluice_plugin::{Record, Verdict};
use sluice_plugin_host::{
    Bindings, PluginEngine, PluginHost, PluginKind, PluginMetrics, PluginRegistry, Trial, keys,
};

use super::{CliError, Output, print_table};

/// The name the module is installed under in the throwaway registry when
/// its file name is not a valid plugin name.
const FALLBACK_NAME: &str = "under-test";

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The module: `.wasm` (or `.wat` text).
    module: PathBuf,
    /// partitioner, interceptor or filter.
    #[arg(long)]
    kind: String,
    /// Records, one JSON object per line; `-` reads stdin.
    #[arg(long)]
    input: PathBuf,
    /// The topic's partition count, for a partitioner.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// What the plugin reads through `config()` (a topic's
    /// `sluice.plugin.config.<plugin>`).
    #[arg(long)]
    config: Option<String>,
    /// Deadline of the call (`sluice.plugin.timeout.ms`; default as on a
    /// topic).
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Memory cap of the call (`sluice.plugin.memory.bytes`; default as on
    /// a topic).
    #[arg(long)]
    memory_bytes: Option<usize>,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
}

/// One input line's record, owning its bytes.
struct Sample {
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Sample {
    fn record(&self) -> Record<'_> {
        Record {
            timestamp: self.timestamp,
            key: self.key.as_deref().map(Cow::Borrowed),
            value: self.value.as_deref().map(Cow::Borrowed),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (Cow::Borrowed(k.as_str()), v.as_deref().map(Cow::Borrowed)))
                .collect(),
        }
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    let bytes = |field: &str| -> Result<Option<Vec<u8>>, String> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_bytes().to_vec())),
            Some(other) => Ok(Some(other.to_string().into_bytes())),
        }
    };
    let headers = match obj.get("headers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(h)) => h
            .iter()
            .map(|(k, v)| match v {
                Value::Null => (k.clone(), None),
                Value::String(s) => (k.clone(), Some(s.as_bytes().to_vec())),
                other => (k.clone(), Some(other.to_string().into_bytes())),
            })
            .collect(),
        // Pairs keep their order and may repeat a name, as Kafka headers do.
        Some(Value::Array(pairs)) => pairs
            .iter()
            .map(|pair| match pair.as_array().map(Vec::as_slice) {
                Some([Value::String(k), Value::Null]) => Ok((k.clone(), None)),
                Some([Value::String(k), Value::String(v)]) => {
                    Ok((k.clone(), Some(v.as_bytes().to_vec())))
                }
                _ => Err("headers as a list must be [name, value] pairs".to_string()),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(
                "headers must be an object of name: value, or a list of [name, value]".into(),
            );
        }
    };
    let timestamp = match obj.get("timestamp") {
        None | Some(Value::Null) => 0,
        Some(t) => t.as_i64().ok_or("timestamp must be an integer (ms)")?,
    };
    for field in obj.keys() {
        if !["key", "value", "headers", "timestamp"].contains(&field.as_str()) {
            return Err(format!(
                "unknown field '{field}' (key, value, headers, timestamp)"
            ));
        }
    }
    Ok(Sample {
        timestamp,
        key: bytes("key")?,
        value: bytes("value")?,
        headers,
    })
}

fn read_samples(input: &PathBuf) -> Result<Vec<Sample>, CliError> {
    let reader: Box<dyn BufRead> = if input.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(input)
            .with_context(|| format!("reading {}", input.display()))
            .map_err(CliError::refused)?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut samples = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line
            .with_context(|| format!("reading {}", input.display()))
            .map_err(CliError::refused)?;
        if line.trim().is_empty() {
            continue;
        }
        let sample = parse_sample(&line)
            .map_err(|e| CliError::refused(anyhow!("{} line {}: {e}", input.display(), n + 1)))?;
        samples.push(sample);
    }
    if samples.is_empty() {
        return Err(CliError::refused(anyhow!(
            "{}: no records (one JSON object per line)",
            input.display()
        )));
    }
    Ok(samples)
}

fn text(bytes: Option<&[u8]>) -> String {
    bytes.map_or_else(
        || "null".to_string(),
        |b| String::from_utf8_lossy(b).into_owned(),
    )
}

fn record_json(r: &Record<'_>) -> Value {
    let headers: serde_json::Map<String, Value> = r
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                json!(
                    v.as_deref()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                ),
            )
        })
        .collect();
    json!({
        "key": r.key().map(|b| String::from_utf8_lossy(b).into_owned()),
        "value": r.value().map(|b| String::from_utf8_lossy(b).into_owned()),
        "headers": headers,
        "timestamp": r.timestamp,
    })
}

/// Runs the module on the input and prints the per-record outcome. A module
/// the broker would refuse to upload, or a call that fails (trap, deadline,
/// memory cap, malformed answer), exits 1 with the reason, which is what a
/// produce to a topic bound to it would meet.
pub fn run(args: TestArgs) -> Result<(), CliError> {
    let kind: PluginKind = args
        .kind
        .parse()
        .map_err(|e: String| CliError::refused(anyhow!(e)))?;
    if args.partitions < 1 {
        return Err(CliError::refused(anyhow!(
            "--partitions must be at least 1"
        )));
    }
    let wasm = std::fs::read(&args.module)
        .with_context(|| format!("reading {}", args.module.display()))
        .map_err(CliError::refused)?;
    let samples = read_samples(&args.input)?;
    // Named after its file, so that messages read as the broker's would.
    let name = args
        .module
        .file_stem()
        .and_then(|s| s.to_str())
        .map(|s| s.replace('_', "-"))
        .filter(|s| sluice_metadata::plugins::validate_name(s).is_ok())
        .unwrap_or_else(|| FALLBACK_NAME.to_string());
    let name = name.as_str();

    let scratch = tempfile::tempdir()
        .context("a temporary plugin registry")
        .map_err(CliError::refused)?;
    let engine = PluginEngine::new().map_err(CliError::refused)?;
    let registry = PluginRegistry::open(scratch.path(), engine).map_err(CliError::refused)?;
    registry
        .upload(name, kind, &wasm)
        .map_err(|e| CliError::refused(anyhow!("the broker would refuse this module: {e}")))?;
    let metrics = PluginMetrics::new()
        .context("plugin metrics")
        .map_err(CliError::refused)?;
    let host = PluginHost::new(registry, metrics);

    let mut configs = BTreeMap::new();
    if let Some(ms) = args.timeout_ms {
        configs.insert(keys::TIMEOUT_MS.to_string(), ms.to_string());
    }
    if let Some(bytes) = args.memory_bytes {
        configs.insert(keys::MEMORY_BYTES.to_string(), bytes.to_string());
    }
    if let Some(config) = &args.config {
        configs.insert(format!("{PLUGIN_CONFIG_PREFIX}{name}"), config.clone());
    }
    let bindings = Bindings::from_configs(&configs);
    let records: Vec<Record<'_>> = samples.iter().map(Sample::record).collect();
    let trial = host
        .trial(name, &records, args.partitions, &bindings)
        .map_err(|e| {
            CliError::refused(anyhow!("{e}: a produce to a topic bound to it would fail"))
        })?;

    let json_out = args.output == Output::Json;
    let mut rows = Vec::new();
    let mut docs = Vec::new();
    match &trial {
        Trial::Partitions(targets) => {
            for (i, (r, p)) in records.iter().zip(targets).enumerate() {
                docs.push(json!({"index": i, "partition": p, "record": record_json(r)}));
                rows.push(vec![i.to_string(), text(r.key()), p.to_string()]);
            }
        }
        Trial::Verdicts(verdicts) => {
            for (i, v) in verdicts.iter().enumerate() {
                match v {
                    Verdict::Keep(r) => {
                        docs.push(json!({"index": i, "verdict": "keep", "record": record_json(r)}));
                        let headers: Vec<String> = r
                            .headers
                            .iter()
                            .map(|(k, v)| format!("{k}={}", text(v.as_deref())))
                            .collect();
                        rows.push(vec![
                            i.to_string(),
                            "keep".to_string(),
                            text(r.key()),
                            text(r.value()),
                            headers.join(","),
                        ]);
                    }
                    Verdict::Reject(reason) => {
                        docs.push(json!({"index": i, "verdict": "reject", "reason": reason}));
                        rows.push(vec![
                            i.to_string(),
                            "reject".to_string(),
                            String::new(),
                            reason.clone(),
                            String::new(),
                        ]);
                    }
                }
            }
        }
        Trial::Keep(keep) => {
            for (i, (r, k)) in records.iter().zip(keep).enumerate() {
                docs.push(json!({"index": i, "kept": k, "record": record_json(r)}));
                rows.push(vec![
                    i.to_string(),
                    text(r.key()),
                    if *k { "kept" } else { "dropped" }.to_string(),
                ]);
            }
        }
    }
    if json_out {
        println!("{}", Value::Array(docs));
        return Ok(());
    }
    match &trial {
        Trial::Partitions(_) => print_table(&["RECORD", "KEY", "PARTITION"], &rows),
        Trial::Verdicts(verdicts) => {
            print_table(
                &["RECORD", "VERDICT", "KEY", "VALUE / REASON", "HEADERS"],
                &rows,
            );
            if let Some(i) = verdicts
                .iter()
                .position(|v| matches!(v, Verdict::Reject(_)))
            {
                println!();
                println!(
                    "record {i} is rejected: the broker would refuse the whole batch (POLICY_VIOLATION)"
                );
            }
        }
        Trial::Keep(_) => print_table(&["RECORD", "KEY", "RESULT"], &rows),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_read_every_field_and_refuse_unknown_ones() {
        let s = parse_sample(
            r#"{"key":"k","value":{"a":1},"headers":{"h":"v","n":null},"timestamp":5}"#,
        )
        .map_err(|e| anyhow!(e))
        .and_then(|s| {
            let r = s.record();
            anyhow::ensure!(r.key() == Some(b"k".as_slice()));
            anyhow::ensure!(r.value() == Some(br#"{"a":1}"#.as_slice()));
            anyhow::ensure!(r.header("h") == Some(b"v".as_slice()));
            anyhow::ensure!(r.headers.len() == 2 && r.timestamp == 5);
            Ok(())
        });
        assert!(s.is_ok(), "{s:?}");
        let pairs = parse_sample(r#"{"headers":[["a","1"],["a","2"],["b",null]]}"#);
        assert!(pairs.is_ok_and(
            |s| s.headers.len() == 3 && s.headers[1].1.as_deref() == Some(b"2".as_slice())
        ));
        assert!(parse_sample(r#"{"headers":[["a"]]}"#).is_err());
        assert!(parse_sample(r#"{"value":"x","partition":1}"#).is_err());
        assert!(parse_sample(r#"{"timestamp":"soon"}"#).is_err());
        assert!(parse_sample("[1]").is_err());
        assert!(parse_sample("{").is_err());
        let empty = parse_sample("{}");
        assert!(empty.is_ok_and(|s| s.key.is_none() && s.value.is_none()));
    }
}
