//! Background upkeep of the logs: time-based flushing (`flush.ms`),
//! retention (`retention.ms`, `retention.bytes`), the scrub that looks for
//! corruption in sealed segments, and probing a disk whose writes failed
//! until they work again.

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

/// Re-reads sealed segments at `log-scrub-bytes-per-second` looking for
/// corruption on disk. A damaged replica this broker follows is cut back to
/// the damaged batch and fetches the rest from the leader again; damage in
/// a partition it leads is reported (fetches reaching it get
/// CORRUPT_MESSAGE; moving leadership to an intact replica keeps the
/// partition readable).
pub async fn scrubber(broker: Arc<Broker>) {
    let per_second = broker.args.log_scrub_bytes_per_second;
    if per_second == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let view = broker.view();
        let mut budget = per_second;
        for t in view.topics.values().filter(|t| t.meta.view_of().is_none()) {
            for (i, log) in t.partitions.iter().enumerate() {
                let Some(log) = log.clone() else { continue };
                if budget == 0 {
                    break;
                }
                let scrubbed = {
                    let log = log.clone();
                    tokio::task::spawn_blocking(move || log.scrub(budget)).await
                };
                match scrubbed {
                    Ok(Ok(n)) => budget = budget.saturating_sub(n),
                    Ok(Err(e @ sluice_storage::LogError::Corrupt { .. })) => {
                        budget = 0;
                        repair(&broker, &view, &t.meta.name, i as i32, log, e).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(partition = %log.name(), error = %e, "scrub read failed")
                    }
                    Err(e) => tracing::error!(error = %e, "scrub task failed"),
                }
            }
        }
    }
}

/// What the scrub does about a corrupt batch.
async fn repair(
    broker: &Broker,
    view: &crate::view::ClusterView,
    topic: &str,
    partition: i32,
    log: Arc<sluice_storage::PartitionLog>,
    e: sluice_storage::LogError,
) {
    let sluice_storage::LogError::Corrupt {
        offset,
        first_report,
        ..
    } = &e
    else {
        return;
    };
    let offset = *offset;
    if view.leader(topic, partition).is_some() {
        if *first_report {
            broker.metrics.storage_corrupt_batches.inc();
            tracing::error!(error = %e, "scrub: corrupt batch in a partition this broker leads; fetches reaching it fail with CORRUPT_MESSAGE (a controlled shutdown moves leadership to an intact replica)");
        }
        return;
    }
    if *first_report {
        broker.metrics.storage_corrupt_batches.inc();
    }
    tracing::warn!(error = %e, "scrub: corrupt batch in a replica; cutting the log back to offset {offset} and fetching the rest from the leader again");
    let cut = tokio::task::spawn_blocking(move || log.truncate_to(offset)).await;
    match cut {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::error!(error = %err, "scrub: could not cut the damaged replica back")
        }
        Err(err) => tracing::error!(error = %err, "scrub: repair task failed"),
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
