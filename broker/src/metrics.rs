//! Prometheus metrics of the broker. Counters are bumped on the request path;
//! per-partition gauges are refreshed from the logs at scrape time so the hot
//! path does not pay for them.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use std::sync::atomic::Ordering;

use crate::groups::{GroupCoordinator, GroupState};
use crate::replication::{Leaders, ReplicaManager};
use crate::transactions::TxnCoordinator;
use crate::view::ClusterView;
use sluice_metadata::quorum::Quorum;

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub errors: IntCounterVec,
    pub bytes_in: IntCounterVec,
    pub records_in: IntCounterVec,
    pub bytes_out: IntCounterVec,
    pub records_out: IntCounterVec,
    pub duplicate_batches: IntCounterVec,
    /// Distinct corrupt batches found in partition logs.
    pub storage_corrupt_batches: IntCounter,
    storage_write_errors: IntCounterVec,
    storage_disk_problem: IntGauge,
    log_end_offset: IntGaugeVec,
    log_start_offset: IntGaugeVec,
    log_size_bytes: IntGaugeVec,
    groups_by_state: IntGaugeVec,
    group_members: IntGaugeVec,
    group_rebalances: IntCounter,
    group_commits: IntCounter,
    consumer_lag: IntGaugeVec,
    cluster: IntGaugeVec,
    brokers: IntGaugeVec,
    replica_lag_messages: IntGaugeVec,
    replica_lag_seconds: prometheus::GaugeVec,
    replication_events: IntGaugeVec,
    last_stable_offset_lag: IntGaugeVec,
    transactions: IntGaugeVec,
    transaction_events: IntCounterVec,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are static; a failure here is a programming error
    // caught by the unit test below, never by user input.
    match r {
        Ok(v) => v,
        Err(e) => panic!("invalid metric definition: {e}"),
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = must(IntCounterVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = must(IntGaugeVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let requests = counter(
            "sluice_requests_total",
            "Kafka requests handled, by API.",
            &["api"],
        );
        let request_seconds = must(HistogramVec::new(
            HistogramOpts::new(
                "sluice_request_duration_seconds",
                "Time to handle a Kafka request, by API.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ]),
            &["api"],
        ));
        must(registry.register(Box::new(request_seconds.clone())));
        let errors = counter(
            "sluice_errors_total",
            "Kafka error codes returned, by code name.",
            &["code"],
        );
        let bytes_in = counter(
            "sluice_topic_bytes_in_total",
            "Record batch bytes appended, by topic.",
            &["topic"],
        );
        let records_in = counter(
            "sluice_topic_records_in_total",
            "Records appended, by topic.",
            &["topic"],
        );
        let bytes_out = counter(
            "sluice_topic_bytes_out_total",
            "Record batch bytes sent to consumers, by topic.",
            &["topic"],
        );
        let records_out = counter(
            "sluice_topic_records_out_total",
            "Records sent to consumers (whole batches), by topic.",
            &["topic"],
        );
        let duplicate_batches = counter(
            "sluice_duplicate_batches_total",
            "Retried idempotent batches answered from producer state instead of written again, by topic.",
            &["topic"],
        );
        let storage_corrupt_batches = must(IntCounter::new(
            "sluice_storage_corrupt_batches_total",
            "Stored batches found corrupt (header, offset chain or CRC) when read; each is also logged with its partition, segment and position.",
        ));
        must(registry.register(Box::new(storage_corrupt_batches.clone())));
        let storage_write_errors = counter(
            "sluice_storage_write_errors_total",
            "Failed disk writes (partition logs, fsyncs, the controller quorum's log), by kind: no_space (ENOSPC, EDQUOT) or io.",
            &["kind"],
        );
        let storage_disk_problem = must(IntGauge::new(
            "sluice_storage_disk_problem",
            "1 while disk writes are failing (the broker reports not ready; /readyz says why), else 0.",
        ));
        must(registry.register(Box::new(storage_disk_problem.clone())));
        let log_end_offset = gauge(
            "sluice_partition_log_end_offset",
            "Offset the next record will get.",
            &["topic", "partition"],
        );
        let log_start_offset = gauge(
            "sluice_partition_log_start_offset",
            "First offset still stored.",
            &["topic", "partition"],
        );
        let log_size_bytes = gauge(
            "sluice_partition_log_size_bytes",
            "Bytes of segment files.",
            &["topic", "partition"],
        );
        let groups_by_state = gauge("sluice_groups", "Consumer groups, by state.", &["state"]);
        let group_members = gauge(
            "sluice_group_members",
            "Members of each consumer group.",
            &["group"],
        );
        let group_rebalances = must(IntCounter::new(
            "sluice_group_rebalances_total",
            "Rebalances started (member joined, left or expired).",
        ));
        must(registry.register(Box::new(group_rebalances.clone())));
        let group_commits = must(IntCounter::new(
            "sluice_group_commits_total",
            "OffsetCommit requests persisted.",
        ));
        must(registry.register(Box::new(group_commits.clone())));
        let consumer_lag = gauge(
            "sluice_consumer_lag",
            "High watermark minus committed offset, per group and partition.",
            &["group", "topic", "partition"],
        );
        let cluster = gauge(
            "sluice_cluster",
            "This broker's view of the cluster: controller_id (-1: none known), quorum_term, quorum_applied_index, offline_partitions (no leader), under_replicated_partitions (led here, ISR smaller than the replica set), unclean_leader_elections (ever; each may have lost data).",
            &["value"],
        );
        let brokers = gauge(
            "sluice_brokers",
            "Registered brokers by state (live or fenced).",
            &["state"],
        );
        let replica_lag_messages = gauge(
            "sluice_replica_lag_messages",
            "Offsets a follower is behind the leader's log end (partitions led by this broker).",
            &["topic", "partition", "follower"],
        );
        let replica_lag_seconds = must(prometheus::GaugeVec::new(
            Opts::new(
                "sluice_replica_lag_seconds",
                "Time since a follower last had everything the leader had (0 when caught up).",
            ),
            &["topic", "partition", "follower"],
        ));
        must(registry.register(Box::new(replica_lag_seconds.clone())));
        let replication_events = gauge(
            "sluice_replication_events_total",
            "Replication events since this broker started: isr_shrinks, isr_expands, leader_elections (partitions this broker began to lead), controller_changes.",
            &["event"],
        );
        let last_stable_offset_lag = gauge(
            "sluice_partition_last_stable_offset_lag",
            "High watermark minus last stable offset (records read_committed consumers wait for while transactions are open), partitions led here.",
            &["topic", "partition"],
        );
        let transactions = gauge(
            "sluice_transactions",
            "Transactional ids this broker coordinates, by state (Ongoing: a transaction is open).",
            &["state"],
        );
        let transaction_events = counter(
            "sluice_transaction_events_total",
            "Transaction decisions made by this broker's coordinator: commit, abort (EndTxn), timeout_abort (open longer than its timeout), fenced (InitProducerId gave an existing id a new epoch, fencing older instances), expired (an idle transactional id forgotten).",
            &["event"],
        );
        Metrics {
            last_stable_offset_lag,
            transactions,
            transaction_events,
            replica_lag_messages,
            replica_lag_seconds,
            replication_events,
            cluster,
            brokers,
            groups_by_state,
            group_members,
            group_rebalances,
            group_commits,
            consumer_lag,
            registry,
            requests,
            request_seconds,
            errors,
            bytes_in,
            records_in,
            bytes_out,
            records_out,
            duplicate_batches,
            storage_corrupt_batches,
            storage_write_errors,
            storage_disk_problem,
            log_end_offset,
            log_start_offset,
            log_size_bytes,
        }
    }

    /// Prometheus text exposition, with partition gauges read fresh.
    pub fn render(
        &self,
        view: &ClusterView,
        groups: &GroupCoordinator,
        high_watermark: &dyn Fn(&str, i32) -> Option<i64>,
        quorum: &Quorum,
        replicas: Option<&ReplicaManager>,
        transactions: Option<&TxnCoordinator>,
    ) -> String {
        self.render_groups(groups, high_watermark);
        if let Some(t) = transactions {
            self.render_transactions(t);
        }
        self.render_cluster(quorum);
        let disk = sluice_storage::health::disk();
        let (no_space, io) = disk.error_counts();
        for (kind, total) in [("no_space", no_space), ("io", io)] {
            let c = self.storage_write_errors.with_label_values(&[kind]);
            c.inc_by(total.saturating_sub(c.get()));
        }
        self.storage_disk_problem
            .set(i64::from(disk.problem().is_some()));
        if let Some(r) = replicas {
            self.render_replication(r, &view.leaders, quorum);
        }
        self.log_end_offset.reset();
        self.log_start_offset.reset();
        self.log_size_bytes.reset();
        self.last_stable_offset_lag.reset();
        for t in view.topics.values() {
            if t.meta.view_of().is_some() {
                continue;
            }
            for (i, p) in t.partitions.iter().enumerate() {
                let Some(p) = p else { continue };
                let labels = [t.meta.name.as_str(), &i.to_string()];
                self.log_end_offset
                    .with_label_values(&labels)
                    .set(p.log_end_offset());
                self.log_start_offset
                    .with_label_values(&labels)
                    .set(p.log_start_offset());
                self.log_size_bytes
                    .with_label_values(&labels)
                    .set(p.size_bytes() as i64);
                if view.leader(&t.meta.name, i as i32).is_some() {
                    self.last_stable_offset_lag
                        .with_label_values(&labels)
                        .set(p.high_watermark() - p.last_stable_offset());
                }
            }
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Metrics {
    fn render_groups(
        &self,
        groups: &GroupCoordinator,
        high_watermark: &dyn Fn(&str, i32) -> Option<i64>,
    ) {
        self.groups_by_state.reset();
        self.group_members.reset();
        self.consumer_lag.reset();
        for state in [
            GroupState::Empty,
            GroupState::PreparingRebalance,
            GroupState::CompletingRebalance,
            GroupState::Stable,
        ] {
            self.groups_by_state
                .with_label_values(&[state.name()])
                .set(0);
        }
        for (group, state, members) in groups.states() {
            self.groups_by_state
                .with_label_values(&[state.name()])
                .inc();
            self.group_members
                .with_label_values(&[&group])
                .set(members as i64);
        }
        for (group, topic, partition, committed) in groups.all_offsets() {
            if let Some(hw) = high_watermark(&topic, partition) {
                self.consumer_lag
                    .with_label_values(&[&group, &topic, &partition.to_string()])
                    .set((hw - committed).max(0));
            }
        }
        // The coordinator counts in atomics; mirror them into the counters.
        let sync = |c: &IntCounter, v: u64| c.inc_by(v.saturating_sub(c.get()));
        sync(
            &self.group_rebalances,
            groups.stats.rebalances.load(Ordering::Relaxed),
        );
        sync(
            &self.group_commits,
            groups.stats.commits.load(Ordering::Relaxed),
        );
    }
}

impl Metrics {
    fn render_transactions(&self, coordinator: &TxnCoordinator) {
        for (state, n) in coordinator.states() {
            self.transactions
                .with_label_values(&[state.name()])
                .set(n as i64);
        }
        let s = &coordinator.stats;
        for (event, v) in [
            ("commit", &s.commits),
            ("abort", &s.aborts),
            ("timeout_abort", &s.timeout_aborts),
            ("fenced", &s.fenced),
            ("expired", &s.expired),
        ] {
            let c = self.transaction_events.with_label_values(&[event]);
            c.inc_by(v.load(Ordering::Relaxed).saturating_sub(c.get()));
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers a metric owned elsewhere (e.g. the quorum's histogram).
    pub fn register(&self, metric: Box<dyn prometheus::core::Collector>) {
        if let Err(e) = self.registry.register(metric) {
            tracing::warn!(error = %e, "metric not registered");
        }
    }

    fn render_replication(&self, replicas: &ReplicaManager, leaders: &Leaders, quorum: &Quorum) {
        use std::sync::atomic::Ordering::Relaxed;
        self.replica_lag_messages.reset();
        self.replica_lag_seconds.reset();
        for lag in replicas.follower_lag(leaders) {
            let labels = [
                lag.topic.as_str(),
                &lag.partition.to_string(),
                &lag.follower.to_string(),
            ];
            self.replica_lag_messages
                .with_label_values(&labels)
                .set(lag.messages);
            self.replica_lag_seconds
                .with_label_values(&labels)
                .set(lag.seconds);
        }
        let s = &replicas.stats;
        for (event, v) in [
            ("isr_shrinks", s.isr_shrinks.load(Relaxed)),
            ("isr_expands", s.isr_expands.load(Relaxed)),
            ("leader_elections", s.leader_elections.load(Relaxed)),
            (
                "controller_changes",
                quorum.controller_changes.load(Relaxed),
            ),
        ] {
            self.replication_events
                .with_label_values(&[event])
                .set(v as i64);
        }
    }

    fn render_cluster(&self, quorum: &Quorum) {
        let raft = quorum.raft_metrics();
        let image = quorum.image();
        let me = quorum.node_id();
        let partitions = image.topics.values().flat_map(|t| &t.partitions);
        let offline = partitions.clone().filter(|p| p.leader < 0).count();
        let under = partitions
            .filter(|p| p.leader == me && p.isr.len() < p.replicas.len())
            .count();
        let set = |k: &str, v: i64| self.cluster.with_label_values(&[k]).set(v);
        set(
            "controller_id",
            quorum.controller_id().map_or(-1, i64::from),
        );
        set("quorum_term", raft.current_term as i64);
        set(
            "quorum_applied_index",
            raft.last_applied.map_or(0, |l| l.index as i64),
        );
        set("offline_partitions", offline as i64);
        set("under_replicated_partitions", under as i64);
        set("unclean_leader_elections", image.unclean_elections as i64);
        let fenced = image.brokers.values().filter(|b| b.fenced).count() as i64;
        self.brokers
            .with_label_values(&["live"])
            .set(image.brokers.len() as i64 - fenced);
        self.brokers.with_label_values(&["fenced"]).set(fenced);
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn definitions_register() {
        let m = super::Metrics::new();
        m.requests.with_label_values(&["Produce"]).inc();
        let dir = tempfile::tempdir().expect("tempdir");
        let quorum = sluice_metadata::quorum::single_voter_for_tests(dir.path()).await;
        let groups = crate::groups::GroupCoordinator::open(
            crate::groups::store::OffsetStore::new(crate::internal_log::LocalLogs::open(
                dir.path(),
                1,
            )),
            crate::groups::GroupConfig::default(),
        );
        let view = crate::view::ClusterView::empty(0);
        let text = m.render(&view, &groups, &|_, _| None, &quorum, None, None);
        assert!(text.contains("sluice_requests_total{api=\"Produce\"} 1"));
        assert!(text.contains("sluice_groups{state=\"Stable\"} 0"));
        assert!(text.contains("sluice_cluster{value=\"controller_id\"} 0"));
        assert!(text.contains("sluice_brokers{state=\"live\"} 1"));
    }
}
