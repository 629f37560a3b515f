//! Admission and accounting of Kafka-listener connections: Kafka's
//! `max.connections` (the acceptor waits for a free slot, as Kafka's does)
//! and `max.connections.per.ip` (a connection over it is closed at once),
//! the idle timeout the connection loop enforces, the connection metrics,
//! and rate-limited logging of connections closed for bad input, so a
//! misbehaving client cannot flood the log.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::core::Collector;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limits, as configured (Kafka's names and defaults: unlimited
/// connections, 10 minutes idle).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub max_per_ip: usize,
    pub idle_timeout: Duration,
}

/// Connection metrics; registered with the broker's registry once it opens
/// (the listener serves the quorum before that).
pub struct ConnectionMetrics {
    pub active: IntGauge,
    pub accepted: IntCounter,
    pub closed_bad_input: IntCounterVec,
    pub refused: IntCounterVec,
    pub idle_closed: IntCounter,
    pub log_lines_suppressed: IntCounter,
    /// Brokers' own requests that arrived on a client listener, by listener
    /// and request.
    pub inter_broker_refused: IntCounterVec,
    pub tls_handshake_failures: IntCounterVec,
}

impl ConnectionMetrics {
    fn new() -> anyhow::Result<ConnectionMetrics> {
        Ok(ConnectionMetrics {
            active: IntGauge::new(
                "sluice_connections_active",
                "Open Kafka-listener connections.",
            )?,
            accepted: IntCounter::new(
                "sluice_connections_total",
                "Kafka-listener connections accepted.",
            )?,
            closed_bad_input: IntCounterVec::new(
                Opts::new(
                    "sluice_connections_closed_bad_input_total",
                    "Connections closed because the client sent something unusable, by reason.",
                ),
                &["reason"],
            )?,
            refused: IntCounterVec::new(
                Opts::new(
                    "sluice_connections_refused_total",
                    "Connections closed on arrival because of a connection limit, by limit.",
                ),
                &["limit"],
            )?,
            idle_closed: IntCounter::new(
                "sluice_connections_idle_closed_total",
                "Connections closed after connections.max.idle.ms without a request.",
            )?,
            log_lines_suppressed: IntCounter::new(
                "sluice_connection_log_lines_suppressed_total",
                "Warnings about closed connections left out of the log by its rate limit.",
            )?,
            inter_broker_refused: IntCounterVec::new(
                Opts::new(
                    "sluice_listener_inter_broker_requests_refused_total",
                    "Brokers' own requests (controller quorum, forwarded produce, follower fetch, transaction markers) refused because they arrived on a listener other than the inter-broker one, by listener and request.",
                ),
                &["listener", "request"],
            )?,
            tls_handshake_failures: IntCounterVec::new(
                Opts::new(
                    "sluice_listener_tls_handshake_failures_total",
                    "TLS handshakes that failed or timed out, by listener.",
                ),
                &["listener"],
            )?,
        })
    }

    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.active.clone()),
            Box::new(self.accepted.clone()),
            Box::new(self.closed_bad_input.clone()),
            Box::new(self.refused.clone()),
            Box::new(self.idle_closed.clone()),
            Box::new(self.log_lines_suppressed.clone()),
            Box::new(self.inter_broker_refused.clone()),
            Box::new(self.tls_handshake_failures.clone()),
        ]
    }
}

/// Warnings about closed connections logged per window; the rest are
/// counted and summarized when the next window opens.
const LOG_LINES_PER_WINDOW: u32 = 20;
const LOG_WINDOW: Duration = Duration::from_secs(10);

struct LogWindow {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

pub struct Connections {
    pub limits: ConnectionLimits,
    slots: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    pub metrics: ConnectionMetrics,
    log: Mutex<LogWindow>,
}

/// A connection's place: released (slot, per-IP count, gauge) on drop.
pub struct Admitted {
    owner: Arc<Connections>,
    ip: IpAddr,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut per_ip = lock(&self.owner.per_ip);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        self.owner.metrics.active.dec();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Connections {
    pub fn new(limits: ConnectionLimits) -> anyhow::Result<Arc<Connections>> {
        let permits = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
        Ok(Arc::new(Connections {
            limits,
            slots: Arc::new(Semaphore::new(permits)),
            per_ip: Mutex::new(HashMap::new()),
            metrics: ConnectionMetrics::new()?,
            log: Mutex::new(LogWindow {
                started: Instant::now(),
                logged: 0,
                suppressed: 0,
            }),
        }))
    }

    /// Waits for a free connection slot (`max.connections`): the listener
    /// stops accepting while the broker is full, as Kafka's acceptor does.
    pub async fn slot(&self) -> OwnedSemaphorePermit {
        loop {
            match self.slots.clone().acquire_owned().await {
                Ok(permit) => return permit,
                // Never closed; if it were, do not spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Admits a connection from `peer`, or refuses it when its address
    /// already has `max.connections.per.ip` open.
    pub fn admit(
        self: &Arc<Self>,
        peer: SocketAddr,
        slot: OwnedSemaphorePermit,
    ) -> Result<Admitted, usize> {
        let ip = peer.ip();
        {
            let mut per_ip = lock(&self.per_ip);
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= self.limits.max_per_ip {
                let open = *n;
                self.metrics.refused.with_label_values(&["per_ip"]).inc();
                drop(per_ip);
                self.warn(
                    peer,
                    "too_many_connections",
                    &format!(
                        "{open} connections from {ip} already open (max-connections-per-ip {})",
                        self.limits.max_per_ip
                    ),
                );
                return Err(open);
            }
            *n += 1;
        }
        self.metrics.accepted.inc();
        self.metrics.active.inc();
        Ok(Admitted {
            owner: self.clone(),
            ip,
            _slot: slot,
        })
    }

    /// Counts a connection closed for bad input and logs it, within the
    /// log's rate limit.
    pub fn closed_for_bad_input(&self, peer: SocketAddr, reason: &'static str, detail: &str) {
        self.metrics
            .closed_bad_input
            .with_label_values(&[reason])
            .inc();
        self.warn(peer, reason, detail);
    }

    /// A WARN line, unless this window already had its share.
    fn warn(&self, peer: SocketAddr, reason: &str, detail: &str) {
        let suppressed_before = {
            let mut w = lock(&self.log);
            if w.started.elapsed() >= LOG_WINDOW {
                let suppressed = w.suppressed;
                *w = LogWindow {
                    started: Instant::now(),
                    logged: 0,
                    suppressed: 0,
                };
                if suppressed > 0 {
                    tracing::warn!(
                        suppressed,
                        "connection warnings suppressed in the last {} s (see sluice_connections_closed_bad_input_total)",
                        LOG_WINDOW.as_secs()
                    );
                }
            }
            if w.logged >= LOG_LINES_PER_WINDOW {
                w.suppressed += 1;
                None
            } else {
                w.logged += 1;
                Some(())
            }
        };
        match suppressed_before {
            Some(()) => tracing::warn!(%peer, reason, "closing connection: {detail}"),
            None => self.metrics.log_lines_suppressed.inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: usize, max_per_ip: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_connections,
            max_per_ip,
            idle_timeout: Duration::from_secs(600),
        }
    }

    #[tokio::test]
    async fn per_ip_limit_refuses_and_releases() {
        let c = Connections::new(limits(100, 2)).expect("connections");
        let a: SocketAddr = "10.0.0.1:1".parse().expect("addr");
        let b: SocketAddr = "10.0.0.2:1".parse().expect("addr");
        let first = c.admit(a, c.slot().await).expect("first");
        let _second = c.admit(a, c.slot().await).expect("second");
        assert_eq!(c.admit(a, c.slot().await).err(), Some(2));
        let _other = c.admit(b, c.slot().await).expect("another address");
        drop(first);
        assert!(c.admit(a, c.slot().await).is_ok());
        assert_eq!(c.metrics.refused.with_label_values(&["per_ip"]).get(), 1);
    }

    #[tokio::test]
    async fn broker_wide_limit_waits_for_a_free_slot() {
        let c = Connections::new(limits(1, 10)).expect("connections");
        let a: SocketAddr = "10.0.0.1:1".parse().expect("addr");
        let held = c.admit(a, c.slot().await).expect("first");
        let waiting = tokio::time::timeout(Duration::from_millis(50), c.slot()).await;
        assert!(waiting.is_err(), "a second slot while the first is held");
        drop(held);
        let got = tokio::time::timeout(Duration::from_secs(1), c.slot()).await;
        assert!(got.is_ok(), "the slot is free again");
    }

    #[test]
    fn warnings_beyond_the_window_share_are_counted_not_logged() {
        let c = Connections::new(limits(10, 10)).expect("connections");
        let a: SocketAddr = "10.0.0.1:1".parse().expect("addr");
        for _ in 0..LOG_LINES_PER_WINDOW + 5 {
            c.closed_for_bad_input(a, "bad_frame_length", "test");
        }
        assert_eq!(c.metrics.log_lines_suppressed.get(), 5);
        assert_eq!(
            c.metrics
                .closed_bad_input
                .with_label_values(&["bad_frame_length"])
                .get(),
            u64::from(LOG_LINES_PER_WINDOW) + 5
        );
    }
}
