//! The plugin host's Prometheus metrics: calls, failures, records by
//! outcome and call time, per plugin and bound topic, and the memory idle
//! instances hold. The broker registers them with its own registry.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};

pub struct PluginMetrics {
    calls: IntCounterVec,
    errors: IntCounterVec,
    records: IntCounterVec,
    seconds: HistogramVec,
    memory: IntGaugeVec,
}

impl PluginMetrics {
    /// The definitions are static: a failure is a programming error the
    /// unit test catches.
    pub fn new() -> prometheus::Result<PluginMetrics> {
        Ok(PluginMetrics {
            calls: IntCounterVec::new(
                Opts::new(
                    "sluice_plugin_calls_total",
                    "Plugin calls that returned (one per record batch).",
                ),
                &["plugin", "topic"],
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "sluice_plugin_errors_total",
                    "Plugin failures, by kind (trap, timeout, oom, bad_output, ...).",
                ),
                &["plugin", "topic", "kind"],
            )?,
            records: IntCounterVec::new(
                Opts::new(
                    "sluice_plugin_records_total",
                    "Records through plugins, by outcome (in, out, dropped, rejected, dead_lettered).",
                ),
                &["plugin", "topic", "outcome"],
            )?,
            seconds: HistogramVec::new(
                HistogramOpts::new(
                    "sluice_plugin_call_duration_seconds",
                    "Time of one plugin call.",
                )
                .buckets(vec![
                    0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                    0.05, 0.1, 0.25, 1.0,
                ]),
                &["plugin", "topic"],
            )?,
            memory: IntGaugeVec::new(
                Opts::new(
                    "sluice_plugin_memory_bytes",
                    "Linear memory held by a plugin's idle instances.",
                ),
                &["plugin"],
            )?,
        })
    }

    /// Every collector, to register with a registry.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.calls.clone()),
            Box::new(self.errors.clone()),
            Box::new(self.records.clone()),
            Box::new(self.seconds.clone()),
            Box::new(self.memory.clone()),
        ]
    }

    pub fn call(&self, plugin: &str, topic: &str, took: std::time::Duration) {
        self.calls.with_label_values(&[plugin, topic]).inc();
        self.seconds
            .with_label_values(&[plugin, topic])
            .observe(took.as_secs_f64());
    }

    pub fn error(&self, plugin: &str, topic: &str, kind: &str) {
        self.errors.with_label_values(&[plugin, topic, kind]).inc();
    }

    pub fn records(&self, plugin: &str, topic: &str, outcome: &str, n: u64) {
        if n > 0 {
            self.records
                .with_label_values(&[plugin, topic, outcome])
                .inc_by(n);
        }
    }

    /// Refreshed at scrape time from the registry.
    pub fn set_memory(&self, by_plugin: &[(String, usize)]) {
        self.memory.reset();
        for (p, bytes) in by_plugin {
            self.memory.with_label_values(&[p]).set(*bytes as i64);
        }
    }
}
