//! Background upkeep of the logs: time-based flushing (`flush.ms`),
//! retention (`retention.ms`, `retention.bytes`), and probing a disk whose
//! writes failed until they work again.

use std::sync::Arc;
use std::time::Duration;

use crate::broker::Broker;
use sluice_storage::now_ms;

/// Fsyncs partitions whose `flush.ms` has elapsed. Ticks at 100 ms so a
/// short flush.ms is honoured closely without a timer per partition.
pub async fn flusher(broker: Arc<Broker>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = now_ms();
        let view = broker.view();
        for t in view.topics.values().filter(|t| t.meta.view_of().is_none()) {
            for p in t.local_partitions() {
                if let Err(e) = p.flush_if_due(now).await {
                    tracing::error!(partition = %p.name(), error = %e, "periodic fsync failed");
                }
            }
        }
    }
}

/// While disk writes are failing, tries a small write in `data_dir` every
/// second, so the broker reports ready again as soon as space is freed,
/// even if no client writes in the meantime.
pub async fn disk_probe(data_dir: std::path::PathBuf) {
    let disk = sluice_storage::health::disk();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if disk.problem().is_none() {
            continue;
        }
        let dir = data_dir.clone();
        let _ = tokio::task::spawn_blocking(move || disk.probe(&dir)).await;
    }
}

pub async fn retention(broker: Arc<Broker>) {
    let period = Duration::from_millis(broker.args.retention_check_interval_ms.max(10));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let b = broker.clone();
        let run = tokio::task::spawn_blocking(move || {
            let now = now_ms();
            let view = b.view();
            for t in view.topics.values().filter(|t| t.meta.view_of().is_none()) {
                for p in t.local_partitions() {
                    if let Err(e) = p.apply_retention(now) {
                        tracing::error!(partition = %p.name(), error = %e, "retention failed");
                    }
                    let expired = p.expire_producers(now, b.args.producer_id_expiration_ms);
                    if expired > 0 {
                        tracing::info!(partition = %p.name(), expired, "expired idle producer ids");
                    }
                }
            }
        });
        if let Err(e) = run.await {
            tracing::error!(error = %e, "retention task failed");
        }
    }
}

/// Session timeouts, initial rebalance delays and rebalance timeouts of
/// consumer groups.
pub async fn group_timers(broker: Arc<Broker>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        broker.groups.tick();
        for (group, change) in broker.groups.drain_snapshots() {
            broker.groups.persist_change(&group, change).await;
        }
    }
}

/// The applier's loop: every metadata change the quorum applies (topics
/// created, deleted or changed through any broker, leaders moved) is
/// applied here, in order, and published as the next view.
pub async fn metadata_sync(broker: Arc<Broker>) {
    let mut rx = broker.quorum.subscribe();
    loop {
        rx.borrow_and_update();
        let b = broker.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || b.apply_metadata()).await {
            tracing::error!(error = %e, "applying metadata failed");
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
