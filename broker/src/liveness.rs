//! This broker's side of liveness. Cut off from the controller quorum (no
//! majority of its voters reachable) for a session timeout, it steps down: it leads nothing (pending acks=all
//! writes fail NOT_LEADER_OR_FOLLOWER, its metadata names no leader where
//! it was one) until it is in contact again and has caught up with the
//! metadata. On SIGTERM it hands its leaderships to in-sync followers
//! before it stops (Kafka's controlled shutdown). The controller's side,
//! fencing, is `sluice_metadata::controller`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::broker::Broker;
use crate::replication::{Leaders, each_leader};
use sluice_metadata::image::Command;

/// How often contact with the quorum is checked.
const CHECK: Duration = Duration::from_millis(100);

fn leading(leaders: &Leaders) -> usize {
    each_leader(leaders).count()
}

/// Steps down when this broker has had no majority of the controller
/// quorum within reach for `session_timeout` (by then the controller has
/// fenced it, or is about to, and elected other leaders: acting on the
/// stale metadata would keep clients waiting on a high watermark that
/// cannot move), and takes its roles back once in contact again. Contact
/// is any quorum message exchanged with a peer, so a controller election
/// among reachable brokers does not count as being cut off.
pub async fn watch_quorum_contact(broker: Arc<Broker>, session_timeout: Duration) {
    let mut tick = tokio::time::interval(CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let silence = broker.quorum.quorum_silence();
        let cut_off = silence >= session_timeout;
        if cut_off == broker.cut_off.load(Ordering::Acquire) {
            continue;
        }
        if cut_off {
            tracing::warn!(
                silence_ms = silence.as_millis() as u64,
                leading = leading(&broker.view().leaders),
                "cut off from the controller quorum for the broker session timeout: stepping down as leader"
            );
        } else {
            // The image here may be stale (the quorum log reaches this
            // broker shortly after its heartbeats do): commit a change that
            // changes nothing and wait until it is applied here, so the
            // roles taken back are the current ones.
            let id = broker.view().cluster_id().to_string();
            match broker
                .quorum
                .propose(Command::InitCluster { id }, session_timeout)
                .await
            {
                Ok(Ok(_)) => {}
                other => {
                    tracing::debug!(result = ?other, "in contact again, but not caught up yet");
                    continue;
                }
            }
            tracing::info!(
                "in contact with the controller quorum again; taking the roles the metadata gives"
            );
        }
        broker.cut_off.store(cut_off, Ordering::Release);
        let b = broker.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || b.apply_metadata()).await {
            tracing::error!(error = %e, "applying metadata failed");
        }
    }
}

/// Kafka's controlled shutdown: asks the controller to move this broker's
/// leaderships to in-sync followers and to take it out of every ISR (the
/// committed `ControlledShutdown` of its incarnation, which also keeps it
/// from being elected or rejoining an ISR; it stays listed for clients
/// until it stops and the controller fences it), and waits until this
/// broker has applied that, at most `timeout`. Writes waiting here for
/// acks=all fail with NOT_LEADER_OR_FOLLOWER and their producers retry at
/// the new leaders. A partition whose only in-sync replica is this broker
/// keeps it as leader: moving it would lose data.
pub async fn controlled_shutdown(broker: &Broker, timeout: Duration) {
    let started = Instant::now();
    let view = broker.view();
    let before = leading(&view.leaders);
    if !view
        .image
        .live_brokers()
        .iter()
        .any(|id| *id != broker.node_id)
    {
        tracing::info!("controlled shutdown: no other live broker to hand leaderships to");
        return;
    }
    let shutdown = Command::ControlledShutdown {
        id: broker.node_id,
        incarnation: broker.registration.incarnation,
    };
    let proposed = match broker.quorum.propose_indexed(shutdown, timeout).await {
        Ok(p) => match &p.result {
            Ok(_) => p,
            Err(e) => {
                tracing::warn!(error = %e, "controlled shutdown refused; stopping anyway");
                return;
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, timeout_ms = timeout.as_millis() as u64, "controlled shutdown not committed; stopping anyway");
            return;
        }
    };
    let remaining = timeout.saturating_sub(started.elapsed());
    match broker.views.wait_for(proposed.index, remaining).await {
        Some(v) => tracing::info!(
            handed_over = before,
            still_leading = leading(&v.leaders),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "controlled shutdown: leaderships moved to in-sync followers"
        ),
        None => {
            tracing::warn!(
                timeout_ms = timeout.as_millis() as u64,
                "controlled shutdown committed but not applied here in time; stopping anyway"
            );
            return;
        }
    }
    // Keep answering for a moment: a client that was just told
    // NOT_LEADER_OR_FOLLOWER may get metadata from a broker that has not
    // applied the move yet, which sends it back here. Answered here, it
    // asks again at once; finding the port closed, librdkafka waits up to
    // a second before it asks again.
    tokio::time::sleep(HANDOVER_GRACE.min(timeout.saturating_sub(started.elapsed()))).await;
}

/// How long a broker keeps serving after its leaderships have moved.
const HANDOVER_GRACE: Duration = Duration::from_millis(500);
