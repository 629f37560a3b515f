//! Sluice's plugin host: WebAssembly partitioners, interceptors and filters
//! bound to topics through topic configs. `host` runs modules under limits
//! (wasmtime), `registry` stores, versions and compiles them (installing
//! what the cluster metadata's registry holds), `metrics` counts what they
//! do, and this module applies a topic's bindings to one produced batch
//! (records in, records grouped by target partition out) or filters
//! fetched batches. `sluice_protocol::records` converts between stored
//! batches and plugin records.
//!
//! Topics without bindings never reach this code: their batches are stored
//! exactly as received.

mod artifacts;
pub mod host;
pub mod metrics;
pub mod registry;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_plugin::{Record, Verdict, wire};

pub use host::{CallError, PluginEngine, Sandbox};
pub use metrics::PluginMetrics;
pub use registry::{PluginRegistry, RegistryError};
use sluice_metadata::plugins::list;
pub use sluice_metadata::plugins::{PluginKind, VersionInfo, keys, validate_config};

/// What happens to a batch when a bound plugin fails (trap, deadline,
/// memory cap, malformed output). An interceptor's deliberate rejection is
/// not a failure: it always fails the produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Fail the produce with POLICY_VIOLATION and the plugin's error (default).
    Reject,
    /// Skip the failed plugin: records continue unchanged.
    Pass,
    /// Store the original batch in the dead-letter topic and acknowledge.
    DeadLetter,
}

/// A topic's plugin bindings, parsed from its configs.
#[derive(Debug, Clone, PartialEq)]
pub struct Bindings {
    pub partitioner: Option<String>,
    pub interceptors: Vec<String>,
    pub filters: Vec<String>,
    /// Applied when consumers fetch (views only).
    pub fetch_filters: Vec<String>,
    pub failure: FailurePolicy,
    pub dead_letter_topic: Option<String>,
    pub sandbox: Sandbox,
    /// `sluice.plugin.config.<plugin>` values, by plugin name.
    pub plugin_configs: BTreeMap<String, Arc<str>>,
}

impl Bindings {
    pub fn from_configs(c: &BTreeMap<String, String>) -> Bindings {
        let defaults = Sandbox::default();
        Bindings {
            partitioner: c
                .get(keys::PARTITIONER)
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().to_string()),
            interceptors: list(c.get(keys::INTERCEPTORS)),
            filters: list(c.get(keys::FILTERS)),
            fetch_filters: list(c.get(keys::FETCH_FILTERS)),
            failure: match c.get(keys::FAILURE_POLICY).map(String::as_str) {
                Some("pass") => FailurePolicy::Pass,
                Some("dead-letter") => FailurePolicy::DeadLetter,
                _ => FailurePolicy::Reject,
            },
            dead_letter_topic: c
                .get(keys::DEAD_LETTER_TOPIC)
                .filter(|s| !s.is_empty())
                .cloned(),
            sandbox: Sandbox {
                deadline: c
                    .get(keys::TIMEOUT_MS)
                    .and_then(|v| v.parse().ok())
                    .map_or(defaults.deadline, Duration::from_millis),
                memory_bytes: c
                    .get(keys::MEMORY_BYTES)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(defaults.memory_bytes),
                max_output_bytes: defaults.max_output_bytes,
            },
            plugin_configs: c
                .iter()
                .filter_map(|(k, v)| {
                    let plugin =
                        k.strip_prefix(sluice_metadata::topic_config::PLUGIN_CONFIG_PREFIX)?;
                    Some((plugin.to_string(), Arc::from(v.as_str())))
                })
                .collect(),
        }
    }

    /// The configuration `plugin` reads through the `config` host import.
    pub fn config_of(&self, plugin: &str) -> Arc<str> {
        self.plugin_configs
            .get(plugin)
            .cloned()
            .unwrap_or_else(|| Arc::from(""))
    }

    pub fn is_empty(&self) -> bool {
        self.partitioner.is_none()
            && self.interceptors.is_empty()
            && self.filters.is_empty()
            && self.fetch_filters.is_empty()
    }

    /// Whether produced batches go through plugins.
    pub fn on_produce(&self) -> bool {
        self.partitioner.is_some() || !self.interceptors.is_empty() || !self.filters.is_empty()
    }

    /// (plugin, kind it must be) for every binding.
    pub fn named(&self) -> Vec<(&str, PluginKind)> {
        let mut out: Vec<(&str, PluginKind)> = Vec::new();
        if let Some(p) = &self.partitioner {
            out.push((p, PluginKind::Partitioner));
        }
        out.extend(
            self.interceptors
                .iter()
                .map(|n| (n.as_str(), PluginKind::Interceptor)),
        );
        out.extend(
            self.filters
                .iter()
                .map(|n| (n.as_str(), PluginKind::Filter)),
        );
        out.extend(
            self.fetch_filters
                .iter()
                .map(|n| (n.as_str(), PluginKind::Filter)),
        );
        out
    }
}

/// A partitioner's answer as partitions of the topic: any number the
/// plugin returns, modulo the partition count.
fn in_range(targets: Vec<u32>, partitions: i32) -> Vec<i32> {
    targets
        .into_iter()
        .map(|x| (x % partitions.max(1) as u32) as i32)
        .collect()
}

/// An interceptor's answer, copied out: the guest's output buffer is gone
/// after the call.
fn owned_verdicts(out: &[u8]) -> Result<Vec<Verdict<'static>>, String> {
    let verdicts = wire::decode_verdicts(out).map_err(|e| e.to_string())?;
    Ok(verdicts
        .into_iter()
        .map(|v| match v {
            Verdict::Keep(r) => Verdict::Keep(r.into_owned()),
            Verdict::Reject(reason) => Verdict::Reject(reason),
        })
        .collect())
}

/// Records encoded in the wire format directly into guest memory.
struct RecordsInput<'s, 'r>(&'s [Record<'r>]);

impl host::Input for RecordsInput<'_, '_> {
    fn encoded_len(&self) -> usize {
        wire::batch_len(self.0.iter())
    }
    fn write_to(&self, dst: &mut [u8]) -> bool {
        let mut sink = wire::SliceSink::new(dst);
        wire::encode_batch_to(&mut sink, self.0.iter());
        sink.finish()
    }
}

/// The result of running a topic's bindings over one batch.
#[derive(Debug)]
pub enum Outcome<'a> {
    /// Records to append, grouped by target partition, in order.
    Routed(Vec<(i32, Vec<Record<'a>>)>),
    /// An interceptor rejected a record: nothing is appended.
    Rejected {
        plugin: String,
        index: usize,
        reason: String,
    },
    /// A plugin failed under the `reject` policy.
    Failed { plugin: String, error: String },
    /// A plugin failed under the `dead-letter` policy: store the original.
    DeadLetter { plugin: String, error: String },
}

/// One plugin's decision for each record of a batch, as a topic binding
/// would use it (`sluice-broker plugin test`).
#[derive(Debug)]
pub enum Trial {
    /// A partitioner's target for each record, already reduced modulo the
    /// partition count as the broker does.
    Partitions(Vec<i32>),
    /// An interceptor's verdict on each record: the (possibly rewritten)
    /// record, or a rejection with its reason.
    Verdicts(Vec<Verdict<'static>>),
    /// A filter's keep (true) or drop for each record.
    Keep(Vec<bool>),
}

pub struct PluginHost {
    pub registry: PluginRegistry,
    pub metrics: PluginMetrics,
}

impl PluginHost {
    pub fn new(registry: PluginRegistry, metrics: PluginMetrics) -> PluginHost {
        PluginHost { registry, metrics }
    }

    /// Runs interceptors (in order), filters, then the partitioner.
    /// `client_partition` is where the client sent the batch; it stays the
    /// target when there is no partitioner.
    pub fn apply<'a>(
        &self,
        b: &Bindings,
        binding: &str,
        records: Vec<Record<'a>>,
        partitions: i32,
        client_partition: i32,
    ) -> Outcome<'a> {
        let metrics = &self.metrics;
        let mut records = records;
        let fail = |plugin: &str, error: String| match b.failure {
            FailurePolicy::DeadLetter => Outcome::DeadLetter {
                plugin: plugin.to_string(),
                error,
            },
            _ => Outcome::Failed {
                plugin: plugin.to_string(),
                error,
            },
        };
        for name in &b.interceptors {
            match self.call(
                binding,
                name,
                PluginKind::Interceptor,
                &records,
                0,
                b,
                metrics,
                owned_verdicts,
            ) {
                Ok(verdicts) if verdicts.len() == records.len() => {
                    let mut kept = Vec::with_capacity(verdicts.len());
                    for (index, v) in verdicts.into_iter().enumerate() {
                        match v {
                            Verdict::Keep(r) => kept.push(r),
                            Verdict::Reject(reason) => {
                                metrics.records(name, binding, "rejected", 1);
                                return Outcome::Rejected {
                                    plugin: name.clone(),
                                    index,
                                    reason,
                                };
                            }
                        }
                    }
                    metrics.records(name, binding, "out", kept.len() as u64);
                    records = kept;
                }
                Ok(v) => {
                    let e = format!(
                        "returned {} verdicts for {} records",
                        v.len(),
                        records.len()
                    );
                    metrics.error(name, binding, "bad_output");
                    if b.failure != FailurePolicy::Pass {
                        return fail(name, e);
                    }
                }
                Err(e) if b.failure == FailurePolicy::Pass => {
                    tracing::warn!(plugin = %name, error = %e, "interceptor failed; passing records through");
                }
                Err(e) => return fail(name, e),
            }
        }
        for name in &b.filters {
            match self.call(
                binding,
                name,
                PluginKind::Filter,
                &records,
                0,
                b,
                metrics,
                |out| wire::decode_keep(out).map_err(|e| e.to_string()),
            ) {
                Ok(keep) if keep.len() == records.len() => {
                    let before = records.len();
                    records = records
                        .into_iter()
                        .zip(keep)
                        .filter(|(_, k)| *k)
                        .map(|(r, _)| r)
                        .collect();
                    metrics.records(name, binding, "dropped", (before - records.len()) as u64);
                    metrics.records(name, binding, "out", records.len() as u64);
                }
                Ok(k) => {
                    metrics.error(name, binding, "bad_output");
                    if b.failure != FailurePolicy::Pass {
                        return fail(
                            name,
                            format!(
                                "returned {} decisions for {} records",
                                k.len(),
                                records.len()
                            ),
                        );
                    }
                }
                Err(e) if b.failure == FailurePolicy::Pass => {
                    tracing::warn!(plugin = %name, error = %e, "filter failed; keeping records");
                }
                Err(e) => return fail(name, e),
            }
        }
        if records.is_empty() {
            return Outcome::Routed(Vec::new());
        }
        let targets: Vec<i32> = match &b.partitioner {
            None => vec![client_partition; records.len()],
            Some(name) => {
                match self.call(
                    binding,
                    name,
                    PluginKind::Partitioner,
                    &records,
                    partitions as u32,
                    b,
                    metrics,
                    |out| wire::decode_partitions(out).map_err(|e| e.to_string()),
                ) {
                    Ok(p) if p.len() == records.len() => {
                        metrics.records(name, binding, "out", p.len() as u64);
                        in_range(p, partitions)
                    }
                    Ok(p) => {
                        metrics.error(name, binding, "bad_output");
                        if b.failure != FailurePolicy::Pass {
                            return fail(
                                name,
                                format!(
                                    "returned {} partitions for {} records",
                                    p.len(),
                                    records.len()
                                ),
                            );
                        }
                        vec![client_partition; records.len()]
                    }
                    Err(e) if b.failure == FailurePolicy::Pass => {
                        tracing::warn!(plugin = %name, error = %e, "partitioner failed; keeping the client's partition");
                        vec![client_partition; records.len()]
                    }
                    Err(e) => return fail(name, e),
                }
            }
        };
        let mut grouped: BTreeMap<i32, Vec<Record<'a>>> = BTreeMap::new();
        for (r, p) in records.into_iter().zip(targets) {
            grouped.entry(p).or_default().push(r);
        }
        Outcome::Routed(grouped.into_iter().collect())
    }

    /// Calls plugin `name` once on `records` under `bindings`' sandbox and
    /// reads its answer as `apply` would; an answer of the wrong length is
    /// an error, as it fails a produce.
    pub fn trial(
        &self,
        name: &str,
        records: &[Record<'_>],
        partitions: i32,
        bindings: &Bindings,
    ) -> Result<Trial, String> {
        const BINDING: &str = "plugin-test";
        let kind = self
            .registry
            .kind(name)
            .ok_or_else(|| format!("plugin '{name}' is not uploaded"))?;
        let n = records.len();
        let counted = |what: &str, got: usize| {
            if got == n {
                Ok(())
            } else {
                Err(format!(
                    "plugin '{name}' returned {got} {what} for {n} records"
                ))
            }
        };
        let metrics = &self.metrics;
        match kind {
            PluginKind::Partitioner => {
                let targets = self.call(
                    BINDING,
                    name,
                    kind,
                    records,
                    partitions as u32,
                    bindings,
                    metrics,
                    |out| wire::decode_partitions(out).map_err(|e| e.to_string()),
                )?;
                counted("partitions", targets.len())?;
                Ok(Trial::Partitions(in_range(targets, partitions)))
            }
            PluginKind::Interceptor => {
                let verdicts = self.call(
                    BINDING,
                    name,
                    kind,
                    records,
                    0,
                    bindings,
                    metrics,
                    owned_verdicts,
                )?;
                counted("verdicts", verdicts.len())?;
                Ok(Trial::Verdicts(verdicts))
            }
            PluginKind::Filter => {
                let keep =
                    self.call(BINDING, name, kind, records, 0, bindings, metrics, |out| {
                        wire::decode_keep(out).map_err(|e| e.to_string())
                    })?;
                counted("decisions", keep.len())?;
                Ok(Trial::Keep(keep))
            }
        }
    }

    /// Fetch-side filtering of whole stored batches for a view. Batches whose
    /// records all pass are returned byte for byte; others are re-encoded with
    /// the survivors at their stored offsets. A failing filter withholds the
    /// records (fails closed) unless the policy is `pass`.
    pub fn filter_fetched(
        &self,
        b: &Bindings,
        binding: &str,
        data: &bytes::Bytes,
    ) -> Result<bytes::Bytes, String> {
        use sluice_protocol::batch;
        let metrics = &self.metrics;
        let mut out = bytes::BytesMut::with_capacity(data.len());
        let mut pos = 0;
        while pos < data.len() {
            let h = batch::parse_header(&data[pos..]).map_err(|e| e.to_string())?;
            let raw = &data[pos..pos + h.len];
            pos += h.len;
            if h.is_control() || h.records_count == 0 {
                out.extend_from_slice(raw);
                continue;
            }
            let (h, entries) =
                sluice_protocol::records::decode_entries(raw).map_err(|e| e.to_string())?;
            let mut keep = vec![true; entries.len()];
            let recs: Vec<Record> = entries.iter().map(|(_, r)| r.clone()).collect();
            for name in &b.fetch_filters {
                match self.call(
                    binding,
                    name,
                    PluginKind::Filter,
                    &recs,
                    0,
                    b,
                    metrics,
                    |o| wire::decode_keep(o).map_err(|e| e.to_string()),
                ) {
                    Ok(k) if k.len() == keep.len() => {
                        for (a, b) in keep.iter_mut().zip(k) {
                            *a &= b;
                        }
                    }
                    Ok(_) if b.failure == FailurePolicy::Pass => {}
                    Err(e) if b.failure == FailurePolicy::Pass => {
                        tracing::warn!(plugin = %name, error = %e, "fetch filter failed; delivering unfiltered");
                    }
                    Ok(k) => {
                        return Err(format!(
                            "filter '{name}' returned {} decisions for {} records",
                            k.len(),
                            keep.len()
                        ));
                    }
                    Err(e) => return Err(e),
                }
            }
            let dropped = keep.iter().filter(|k| !**k).count();
            for name in &b.fetch_filters {
                metrics.records(name, binding, "out", (keep.len() - dropped) as u64);
            }
            if dropped == 0 {
                out.extend_from_slice(raw);
                continue;
            }
            for name in &b.fetch_filters {
                metrics.records(name, binding, "dropped", dropped as u64);
            }
            let kept: Vec<(i32, Record)> = entries
                .into_iter()
                .zip(keep)
                .filter(|(_, k)| *k)
                .map(|(e, _)| e)
                .collect();
            out.extend_from_slice(
                &sluice_protocol::records::encode_filtered(&h, &kept).map_err(|e| e.to_string())?,
            );
        }
        Ok(out.freeze())
    }

    /// One guarded call: missing plugins, wrong kinds, call failures and
    /// unparseable outputs all come back as an error string.
    #[allow(clippy::too_many_arguments)]
    fn call<T>(
        &self,
        binding: &str,
        name: &str,
        kind: PluginKind,
        records: &[Record<'_>],
        partitions: u32,
        bindings: &Bindings,
        metrics: &PluginMetrics,
        parse: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<T, String> {
        let Some(plugin) = self.registry.get(name) else {
            metrics.error(name, binding, "missing");
            return Err(format!("plugin '{name}' is not uploaded"));
        };
        if plugin.kind != kind {
            metrics.error(name, binding, "wrong_kind");
            return Err(format!(
                "plugin '{name}' is a {}, bound as a {kind}",
                plugin.kind
            ));
        }
        metrics.records(name, binding, "in", records.len() as u64);
        let plugin: Arc<host::CompiledPlugin> = plugin;
        let config = bindings.config_of(name);
        let result = plugin.call(
            binding,
            &RecordsInput(records),
            partitions,
            &bindings.sandbox,
            config,
        );
        match result {
            Ok((out, took)) => {
                metrics.call(name, binding, took);
                parse(&out).inspect_err(|_| metrics.error(name, binding, "bad_output"))
            }
            Err(e) => {
                metrics.error(name, binding, e.kind());
                Err(format!("plugin '{name}' {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests;
