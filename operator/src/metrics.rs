//! The operator's own Prometheus metrics: per controller, how many
//! reconciles ran, how many failed and why, and how long they took.

use std::future::Future;
use std::time::Instant;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::error::Error;

pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    failures: IntCounterVec,
    duration: HistogramVec,
    /// 1 while this replica holds the leader Lease.
    pub leader: IntGauge,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "sluice_operator_reconciliations_total",
                "Reconciles run, by controller.",
            ),
            &["controller"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "sluice_operator_reconcile_errors_total",
                "Reconciles that failed, by controller and error kind.",
            ),
            &["controller", "error"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "sluice_operator_reconcile_duration_seconds",
                "Time one reconcile took, by controller.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["controller"],
        )?;
        let leader = IntGauge::new(
            "sluice_operator_leader",
            "1 while this operator replica holds the leader Lease.",
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Metrics {
            registry,
            reconciles,
            failures,
            duration,
            leader,
        })
    }

    /// Runs one reconcile of `controller`, counting and timing it.
    pub async fn measure<T>(
        &self,
        controller: &str,
        reconcile: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let started = Instant::now();
        let result = reconcile.await;
        self.reconciles.with_label_values(&[controller]).inc();
        self.duration
            .with_label_values(&[controller])
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            self.failures
                .with_label_values(&[controller, e.label()])
                .inc();
        }
        result
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            return format!("# encoding metrics failed: {e}\n");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}
