//! Broker liveness, the part of the controller that needs a clock.
//!
//! Every broker registers once per process start (a fresh incarnation id)
//! and then heartbeats to the controller. The controller fences a broker
//! whose heartbeats stop for `session_timeout`: the committed
//! `FenceBroker` moves its leaderships to other in-sync replicas. A
//! broker that finds itself fenced (it was cut off, then came back)
//! registers again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::image::Command;
use crate::quorum::Quorum;

/// This process's identity in the cluster.
#[derive(Debug, Clone)]
pub struct Registration {
    pub node_id: i32,
    /// The inter-broker listener's advertised address.
    pub host: String,
    pub port: i32,
    pub incarnation: Uuid,
    /// Every listener's advertised address (empty: one listener, `host:port`).
    pub listeners: std::collections::BTreeMap<String, crate::image::Endpoint>,
}

impl Registration {
    fn command(&self) -> Command {
        Command::RegisterBroker {
            id: self.node_id,
            host: self.host.clone(),
            port: self.port,
            incarnation: self.incarnation,
            listeners: self.listeners.clone(),
        }
    }

    /// Does the applied image show this incarnation registered and live?
    fn is_live_in(&self, quorum: &Quorum) -> bool {
        quorum
            .image()
            .brokers
            .get(&self.node_id)
            .is_some_and(|b| b.incarnation == self.incarnation && !b.fenced)
    }
}

/// Registers this broker, waiting for the controller quorum for as long as
/// it takes (a broker is useless without it) and saying so periodically.
pub async fn register(quorum: &Quorum, me: &Registration) {
    let started = Instant::now();
    loop {
        match quorum.propose(me.command(), Duration::from_secs(10)).await {
            Ok(Ok(_)) => {
                tracing::info!(node_id = me.node_id, incarnation = %me.incarnation, "registered with the controller");
                return;
            }
            Ok(Err(e)) => tracing::error!(error = %e, "registration refused"),
            Err(e) => tracing::warn!(
                waited_s = started.elapsed().as_secs(),
                error = %e,
                "waiting for the controller quorum (are the peers running?)"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Heartbeats to the controller; re-registers after being fenced.
pub async fn heartbeat_loop(quorum: Arc<Quorum>, me: Registration, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Bounded: a controller checking its majority, or a call to an
        // unreachable controller, must not hold up the next heartbeats.
        match tokio::time::timeout(interval * 2, quorum.heartbeat(me.incarnation)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "heartbeat not delivered");
                continue;
            }
            Err(_) => {
                tracing::debug!("heartbeat not answered in time");
                continue;
            }
        }
        if !me.is_live_in(&quorum) {
            tracing::warn!(
                node_id = me.node_id,
                "this broker was fenced; registering again"
            );
            if let Err(e) = quorum.propose(me.command(), interval * 4).await {
                tracing::warn!(error = %e, "re-registration failed; will retry");
            }
        }
    }
}

/// On the controller: fences brokers whose heartbeats stopped for
/// `session_timeout`, or sooner when their listener refuses connections
/// (the process is gone: a SIGKILLed or crashed broker's port is closed by
/// the kernel at once; a broker that is merely slow or cut off still
/// accepts, or does not answer, and gets the whole session). The port is
/// probed once a heartbeat is half an interval late, or as soon as the
/// quorum's own traffic to that broker was refused.
pub async fn fence_loop(quorum: Arc<Quorum>, session_timeout: Duration, heartbeat: Duration) {
    let mut tick = tokio::time::interval((heartbeat / 5).max(Duration::from_millis(20)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When this broker became controller: everyone gets a full session
    // from then, since heartbeats went to the previous controller.
    let mut controller_since: Option<Instant> = None;
    // When this controller first saw each incarnation registered: a broker
    // that just registered gets a full session for its first heartbeat.
    let mut registered: HashMap<(i32, Uuid), Instant> = HashMap::new();
    loop {
        tick.tick().await;
        if !quorum.is_controller() {
            controller_since = None;
            registered.clear();
            continue;
        }
        let since = *controller_since.get_or_insert_with(|| {
            quorum.reset_heartbeats();
            Instant::now()
        });
        let image = quorum.image();
        registered.retain(|(id, inc), _| {
            image
                .brokers
                .get(id)
                .is_some_and(|b| b.incarnation == *inc && !b.fenced)
        });
        for b in image.brokers.values().filter(|b| !b.fenced) {
            let first_seen = *registered
                .entry((b.id, b.incarnation))
                .or_insert_with(Instant::now);
            let heard = quorum.last_heartbeat(b.id, b.incarnation);
            let silent = heard
                .map_or(since, |t| t.max(since))
                .max(first_seen)
                .elapsed();
            // A refused connection needs no grace: right after an election
            // (heartbeats went to the old controller) every broker not
            // heard from yet is probed, and a dead one is fenced at once.
            let late =
                heard.is_none_or(|t| t.elapsed() >= heartbeat * 3 / 2) || quorum.peer_refused(b.id);
            let why = if silent >= session_timeout {
                "silent for the session timeout"
            } else if late
                && b.id != quorum.node_id()
                && listener_refuses(&b.host, b.port, heartbeat.min(Duration::from_millis(200)))
                    .await
            {
                "silent, and its listener refuses connections"
            } else {
                continue;
            };
            tracing::warn!(
                broker = b.id,
                silent_ms = silent.as_millis() as u64,
                "fencing a broker: {why}"
            );
            let fence = Command::FenceBroker {
                id: b.id,
                incarnation: b.incarnation,
            };
            if let Err(e) = quorum.propose(fence, session_timeout).await {
                tracing::warn!(broker = b.id, error = %e, "fencing not committed");
            }
        }
    }
}

/// On the controller: promotes learners (brokers that joined a running
/// quorum) to voters once they have caught up with the metadata log.
pub async fn membership_loop(quorum: Arc<Quorum>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // A learner within this many entries of the log end has caught up
        // (the log grows while it is promoted; openraft makes the change
        // safe whatever the lag, this keeps it from taking long).
        quorum.promote_caught_up_learners(64).await;
    }
}

/// Does `host:port` actively refuse a TCP connection? (A timeout or a name
/// that does not resolve proves nothing.)
async fn listener_refuses(host: &str, port: i32, wait: Duration) -> bool {
    let connect = tokio::net::TcpStream::connect(format!("{host}:{port}"));
    matches!(
        tokio::time::timeout(wait, connect).await,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// On the controller: moves leadership back to each partition's preferred
/// replica (the first) once it is live and in sync, so leaders stay spread
/// over the brokers after failures (Kafka's auto leader rebalance).
pub async fn preferred_leader_loop(quorum: Arc<Quorum>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !quorum.is_controller() {
            continue;
        }
        let image = quorum.image();
        for topic in image.topics.values() {
            for (i, p) in topic.partitions.iter().enumerate() {
                let Some(&preferred) = p.replicas.first() else {
                    continue;
                };
                let live = image.brokers.get(&preferred).is_some_and(|b| b.eligible());
                if p.leader == preferred || !live || !p.isr.contains(&preferred) {
                    continue;
                }
                tracing::info!(topic = %topic.name, partition = i, from = p.leader, to = preferred, "preferred leader election");
                let elect = Command::ElectLeader {
                    topic: topic.name.clone(),
                    partition: i as i32,
                    leader: preferred,
                };
                if let Err(e) = quorum.propose(elect, interval).await {
                    tracing::warn!(error = %e, "preferred leader election not committed");
                }
            }
        }
    }
}

/// Logs every controller change this broker sees (openraft's own logs are
/// off by default: they repeat every failed heartbeat to a stopped peer).
pub async fn controller_watch(quorum: Arc<Quorum>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last = None;
    loop {
        tick.tick().await;
        let now = quorum.controller_id();
        if now != last {
            if now.is_some() {
                quorum
                    .controller_changes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            match now {
                Some(id) => tracing::info!(
                    controller = id,
                    term = quorum.raft_metrics().current_term,
                    "controller elected"
                ),
                None => tracing::warn!("no controller known"),
            }
            last = now;
        }
    }
}
