//! Background upkeep of the logs: time-based flushing (`flush.ms`) and
//! retention (`retention.ms`, `retention.bytes`).

use std::sync::Arc;
use std::time::Duration;

use crate::broker::Broker;
use crate::log::now_ms;

/// Fsyncs partitions whose `flush.ms` has elapsed. Ticks at 100 ms so a
/// short flush.ms is honoured closely without a timer per partition.
pub async fn flusher(broker: Arc<Broker>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = now_ms();
        for t in broker
            .topics
            .all()
            .iter()
            .filter(|t| t.meta.view_of().is_none())
        {
            for p in t.local_partitions() {
                if let Err(e) = p.flush_if_due(now).await {
                    tracing::error!(partition = %p.name(), error = %e, "periodic fsync failed");
                }
            }
        }
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
            for t in b.topics.all().iter().filter(|t| t.meta.view_of().is_none()) {
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

/// Materializes every applied metadata change (topics created, deleted or
/// changed through any broker) into this broker's local topics.
pub async fn metadata_sync(broker: Arc<Broker>) {
    let mut rx = broker.quorum.subscribe();
    loop {
        rx.borrow_and_update();
        let b = broker.clone();
        // Plugins first: a topic binding may name a plugin just uploaded.
        match tokio::task::spawn_blocking(move || {
            b.plugins.registry.sync(&b.quorum.image().plugins);
            b.topics.sync()
        })
        .await
        {
            Ok(Ok(())) => {
                broker
                    .replicas
                    .apply_image(&broker.quorum.image(), &broker.topics);
                let led = broker.replicas.led_partitions(crate::groups::OFFSETS_TOPIC);
                let b = broker.clone();
                // Loading a newly led offsets partition reads its log.
                if let Err(e) = tokio::task::spawn_blocking(move || b.groups.set_owned(led)).await {
                    tracing::error!(error = %e, "group ownership update failed");
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "applying metadata to local topics failed"),
            Err(e) => tracing::error!(error = %e, "metadata sync task failed"),
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
