//! Follower side: one fetcher task per leader broker, fetching every
//! partition this broker follows from that leader over one connection,
//! with ordinary Kafka requests (Fetch with our replica id, and
//! OffsetForLeaderEpoch to find where a divergent tail starts). Replicas
//! a reassignment is adding here share one byte-rate budget (`Throttle`),
//! so moving partitions does not starve the brokers' normal traffic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, OffsetForLeaderEpochRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_client::Connection;
use tokio::sync::Notify;

use super::TopicPartition;
use sluice_metadata::quorum::Quorum;
use sluice_metadata::quorum::rpc::to_io;
use sluice_storage::PartitionLog;

const FETCH_VERSION: i16 = 12;
const EPOCH_VERSION: i16 = 4;
/// Per partition per follower fetch. Kafka's `replica.fetch.max.bytes`
/// defaults to 1 MiB, sized for the Java producer's 16 KiB batches; one
/// librdkafka produce request carries up to 1 MB per partition and five are
/// in flight, so a 1 MiB follower fetch costs an acks=all producer one
/// replication round trip per request (measured: acks=all at 0.53–0.67 of
/// acks=1 with 1 MiB, 0.72–0.80 with 8 MiB). The request as a whole stays
/// bounded by `FETCH_MAX_BYTES`.
const PARTITION_MAX_BYTES: i32 = 8 << 20;
/// Per follower fetch request, all partitions together (Kafka's
/// `replica.fetch.response.max.bytes` is 10 MiB).
const FETCH_MAX_BYTES: i32 = 16 << 20;
const BACKOFF: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The leader holds a fetch up to its max wait; allow that plus slack.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A partition to follow, as the metadata says.
pub struct Target {
    pub leader: i32,
    pub leader_epoch: i32,
    pub log: Arc<PartitionLog>,
    /// A reassignment is adding this replica: its fetching is throttled.
    pub throttled: bool,
}

/// A partition this broker follows.
#[derive(Clone)]
struct Follow {
    leader: i32,
    leader_epoch: i32,
    log: Arc<PartitionLog>,
    throttled: bool,
    /// Divergent tail already cut for this leader epoch.
    truncated: bool,
}

/// A token bucket of bytes per second, shared by every fetcher task, for
/// the throttled replicas: they are fetched only while it is not in debt,
/// and what they fetched is charged after the answer (a fetch may overdraw
/// it; the next ones wait until it is paid back, so the average holds).
struct Throttle {
    rate: f64,
    /// (bytes available, when last refilled); at most one second's worth.
    bucket: Mutex<(f64, Instant)>,
}

impl Throttle {
    fn new(rate: u64) -> Throttle {
        Throttle {
            rate: rate as f64,
            bucket: Mutex::new((rate as f64, Instant::now())),
        }
    }

    fn refill(&self) -> std::sync::MutexGuard<'_, (f64, Instant)> {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        b.0 = (b.0 + self.rate * now.duration_since(b.1).as_secs_f64()).min(self.rate);
        b.1 = now;
        b
    }

    /// How long until throttled replicas may fetch again (zero: now).
    fn wait(&self) -> Duration {
        let available = self.refill().0;
        if available > 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((-available + 1.0) / self.rate)
        }
    }

    fn charge(&self, bytes: usize) {
        self.refill().0 -= bytes as f64;
    }

    /// Per-partition fetch size for a throttled replica: a quarter
    /// second's worth, so one answer does not overdraw much.
    fn partition_max_bytes(&self) -> i32 {
        (self.rate / 4.0).clamp(64.0 * 1024.0, PARTITION_MAX_BYTES as f64) as i32
    }
}

pub struct FetcherPool {
    node_id: i32,
    quorum: Arc<Quorum>,
    max_wait: Duration,
    follows: Arc<Mutex<HashMap<TopicPartition, Follow>>>,
    tasks: Mutex<HashMap<i32, Arc<Notify>>>,
    throttle: Option<Arc<Throttle>>,
}

impl FetcherPool {
    /// `adding_rate`: bytes per second for all replicas being added here
    /// (`None`: unlimited).
    pub fn new(
        node_id: i32,
        quorum: Arc<Quorum>,
        max_wait: Duration,
        adding_rate: Option<u64>,
    ) -> FetcherPool {
        FetcherPool {
            node_id,
            quorum,
            max_wait,
            follows: Arc::new(Mutex::new(HashMap::new())),
            tasks: Mutex::new(HashMap::new()),
            throttle: adding_rate.map(|r| Arc::new(Throttle::new(r))),
        }
    }

    /// Replaces what is followed. A new leader or epoch means truncating
    /// again before fetching.
    pub fn set_targets(&self, targets: HashMap<TopicPartition, Target>) {
        let mut follows = self.follows.lock().unwrap_or_else(|e| e.into_inner());
        follows.retain(|tp, _| targets.contains_key(tp));
        for (tp, t) in targets {
            match follows.get_mut(&tp) {
                Some(f) if f.leader == t.leader && f.leader_epoch == t.leader_epoch => {
                    f.throttled = t.throttled;
                }
                _ => {
                    tracing::info!(topic = %tp.0, partition = tp.1, leader = t.leader, epoch = t.leader_epoch, throttled = t.throttled, "following partition");
                    follows.insert(
                        tp,
                        Follow {
                            leader: t.leader,
                            leader_epoch: t.leader_epoch,
                            log: t.log,
                            throttled: t.throttled,
                            truncated: false,
                        },
                    );
                }
            }
        }
        let leaders: Vec<i32> = follows.values().map(|f| f.leader).collect();
        drop(follows);
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        for leader in leaders {
            tasks.entry(leader).or_insert_with(|| {
                let wake = Arc::new(Notify::new());
                let task = FetcherTask {
                    node_id: self.node_id,
                    leader,
                    quorum: self.quorum.clone(),
                    follows: self.follows.clone(),
                    max_wait: self.max_wait,
                    wake: wake.clone(),
                    throttle: self.throttle.clone(),
                };
                tokio::spawn(task.run());
                wake
            });
        }
        for wake in tasks.values() {
            wake.notify_one();
        }
    }
}

struct FetcherTask {
    node_id: i32,
    leader: i32,
    quorum: Arc<Quorum>,
    follows: Arc<Mutex<HashMap<TopicPartition, Follow>>>,
    max_wait: Duration,
    wake: Arc<Notify>,
    throttle: Option<Arc<Throttle>>,
}

impl FetcherTask {
    fn partitions(&self) -> Vec<(TopicPartition, Follow)> {
        self.follows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, f)| f.leader == self.leader)
            .map(|(tp, f)| (tp.clone(), f.clone()))
            .collect()
    }

    fn mark_truncated(&self, tp: &TopicPartition, epoch: i32, done: bool) {
        if let Some(f) = self
            .follows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(tp)
            .filter(|f| f.leader_epoch == epoch)
        {
            f.truncated = done;
        }
    }

    async fn run(self) {
        let mut conn: Option<Connection> = None;
        loop {
            let parts = self.partitions();
            if parts.is_empty() {
                conn = None;
                let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
                continue;
            }
            if conn.is_none() {
                // Brokers reach each other at their `--peers` addresses (the
                // inter-broker network); clients use the advertised ones.
                let Some(addr) = self.quorum.peer_addr(self.leader) else {
                    tokio::time::sleep(BACKOFF).await;
                    continue;
                };
                let client_id = format!("sluice-replica-{}", self.node_id);
                let transport = self.quorum.peer_transport();
                match Connection::open(&addr, &client_id, CONNECT_TIMEOUT, transport).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        tracing::debug!(leader = self.leader, %addr, error = %e, "cannot reach leader");
                        tokio::time::sleep(BACKOFF * 2).await;
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_ref() else { continue };
            let result = match parts.iter().filter(|(_, f)| !f.truncated).count() {
                0 => {
                    // Throttled replicas sit out while the budget is in debt.
                    let wait = self.throttle.as_ref().map_or(Duration::ZERO, |t| t.wait());
                    let parts: Vec<_> = parts
                        .into_iter()
                        .filter(|(_, f)| !f.throttled || wait.is_zero())
                        .collect();
                    if parts.is_empty() {
                        let _ = tokio::time::timeout(wait, self.wake.notified()).await;
                        continue;
                    }
                    self.fetch(c, &parts).await
                }
                _ => self.truncate(c, &parts).await,
            };
            if result.is_ok() {
                // Replication traffic is contact with a peer: brokers that
                // replicate from each other are not cut off, even while the
                // controller quorum elects a new controller.
                self.quorum.heard_from(self.leader);
            }
            match result {
                Ok(true) => {}
                Ok(false) => tokio::time::sleep(BACKOFF).await,
                Err(e) => {
                    tracing::debug!(leader = self.leader, error = %e, "replica fetch connection failed");
                    conn = None;
                    tokio::time::sleep(BACKOFF).await;
                }
            }
        }
    }

    /// Asks the leader where each untruncated partition's latest local
    /// epoch ended there, and cuts the local log back to it. Returns
    /// whether every partition got an answer.
    async fn truncate(
        &self,
        conn: &Connection,
        parts: &[(TopicPartition, Follow)],
    ) -> std::io::Result<bool> {
        let mut by_topic: HashMap<&str, Vec<OffsetForLeaderPartition>> = HashMap::new();
        for (tp, f) in parts.iter().filter(|(_, f)| !f.truncated) {
            let mut p = OffsetForLeaderPartition::default();
            p.partition = tp.1;
            p.current_leader_epoch = f.leader_epoch;
            p.leader_epoch = f.log.latest_epoch();
            by_topic.entry(tp.0.as_str()).or_default().push(p);
        }
        let mut req = OffsetForLeaderEpochRequest::default();
        req.replica_id = BrokerId(self.node_id);
        req.topics = by_topic
            .into_iter()
            .map(|(topic, partitions)| {
                let mut t = OffsetForLeaderTopic::default();
                t.topic = TopicName(StrBytes::from_string(topic.to_string()));
                t.partitions = partitions;
                t
            })
            .collect();
        let resp = conn
            .send(&req, EPOCH_VERSION, CALL_TIMEOUT)
            .await
            .map_err(to_io)?;
        let mut all = true;
        for t in resp.topics {
            for p in t.partitions {
                let tp = (t.topic.0.to_string(), p.partition);
                let Some((_, f)) = parts.iter().find(|(x, _)| *x == tp) else {
                    continue;
                };
                if p.error_code != 0 {
                    tracing::debug!(topic = %tp.0, partition = tp.1, error = ?ResponseError::try_from_code(p.error_code), "leader not ready for truncation");
                    all = false;
                    continue;
                }
                let log = f.log.clone();
                let leo = log.log_end_offset();
                let decision = truncation_target(
                    (p.leader_epoch, p.end_offset),
                    |epoch| log.end_offset_for_epoch(epoch),
                    leo,
                    log.high_watermark(),
                );
                if decision.offset < leo {
                    let cut =
                        tokio::task::spawn_blocking(move || log.truncate_to(decision.offset)).await;
                    match cut {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::error!(topic = %tp.0, partition = tp.1, error = %e, "truncation failed");
                            all = false;
                            continue;
                        }
                        Err(e) => return Err(std::io::Error::other(e)),
                    }
                }
                if !decision.done {
                    // The leader named an epoch this log does not have: cut
                    // to where the one below it ended and ask again.
                    tracing::info!(topic = %tp.0, partition = tp.1, leader_epoch = p.leader_epoch, to = decision.offset, "truncated to an intermediate offset; asking the leader again");
                    all = false;
                    continue;
                }
                self.mark_truncated(&tp, f.leader_epoch, true);
            }
        }
        Ok(all)
    }

    /// One fetch round. Returns false when the leader refused partitions
    /// (stale epochs on either side): the caller backs off.
    async fn fetch(
        &self,
        conn: &Connection,
        parts: &[(TopicPartition, Follow)],
    ) -> std::io::Result<bool> {
        let mut by_topic: HashMap<&str, Vec<FetchPartition>> = HashMap::new();
        for (tp, f) in parts {
            let mut p = FetchPartition::default();
            p.partition = tp.1;
            p.current_leader_epoch = f.leader_epoch;
            p.fetch_offset = f.log.log_end_offset();
            p.last_fetched_epoch = -1;
            p.log_start_offset = f.log.log_start_offset();
            p.partition_max_bytes = match (&self.throttle, f.throttled) {
                (Some(t), true) => t.partition_max_bytes(),
                _ => PARTITION_MAX_BYTES,
            };
            by_topic.entry(tp.0.as_str()).or_default().push(p);
        }
        let mut req = FetchRequest::default();
        req.replica_id = BrokerId(self.node_id);
        req.max_wait_ms = self.max_wait.as_millis() as i32;
        req.min_bytes = 1;
        req.max_bytes = FETCH_MAX_BYTES;
        req.session_epoch = -1;
        req.topics = by_topic
            .into_iter()
            .map(|(topic, partitions)| {
                let mut t = FetchTopic::default();
                t.topic = TopicName(StrBytes::from_string(topic.to_string()));
                t.partitions = partitions;
                t
            })
            .collect();
        let resp = conn
            .send(&req, FETCH_VERSION, CALL_TIMEOUT)
            .await
            .map_err(to_io)?;
        let mut ok = true;
        for t in resp.responses {
            for p in t.partitions {
                let tp = (t.topic.0.to_string(), p.partition_index);
                let Some((_, f)) = parts.iter().find(|(x, _)| *x == tp) else {
                    continue;
                };
                match ResponseError::try_from_code(p.error_code) {
                    None => {}
                    Some(ResponseError::OffsetOutOfRange)
                        if f.log.log_end_offset() < p.log_start_offset =>
                    {
                        // The leader no longer has what comes next here.
                        let log = f.log.clone();
                        let start = p.log_start_offset;
                        match tokio::task::spawn_blocking(move || log.reset_to(start)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => {
                                tracing::error!(topic = %tp.0, partition = tp.1, error = %e, "cannot restart the log at the leader's start")
                            }
                            Err(e) => return Err(std::io::Error::other(e)),
                        }
                        ok = false;
                        continue;
                    }
                    Some(ResponseError::OffsetOutOfRange) => {
                        tracing::warn!(topic = %tp.0, partition = tp.1, "fetch offset out of range at the leader; truncating again");
                        self.mark_truncated(&tp, f.leader_epoch, false);
                        ok = false;
                        continue;
                    }
                    Some(e) => {
                        tracing::debug!(topic = %tp.0, partition = tp.1, error = ?e, "leader refused replica fetch");
                        ok = false;
                        continue;
                    }
                }
                let log = f.log.clone();
                if let (Some(t), true, Some(records)) = (&self.throttle, f.throttled, &p.records) {
                    t.charge(records.len());
                }
                if let Some(records) = p.records.filter(|r| !r.is_empty()) {
                    let appended =
                        tokio::task::spawn_blocking(move || log.append_replica(&records)).await;
                    match appended {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::error!(topic = %tp.0, partition = tp.1, error = %e, "replica append failed; truncating again");
                            self.mark_truncated(&tp, f.leader_epoch, false);
                            ok = false;
                            continue;
                        }
                        Err(e) => return Err(std::io::Error::other(e)),
                    }
                }
                f.log.set_high_watermark(p.high_watermark);
            }
        }
        Ok(ok)
    }
}

/// Where a follower cuts its log after the leader answered
/// OffsetForLeaderEpoch, and whether that settles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Truncation {
    pub offset: i64,
    /// False: cut to `offset`, then ask the leader again.
    pub done: bool,
}

/// Kafka's `getOffsetTruncationState` (KIP-101 with KIP-279). The leader
/// answered `(epoch, end)`: the largest epoch it knows at or below the one
/// asked for, and where that epoch ends in its log. The follower may only
/// keep records up to where *both* logs agree that epoch ends: if it does
/// not know that epoch itself, it cuts to the end of the largest epoch it
/// has below it and asks again (its latest epoch is older then), since
/// the leader's offset may lie inside a different, divergent epoch here.
/// `local(epoch)` is this log's `(largest epoch <= epoch, its end offset)`.
pub(crate) fn truncation_target(
    leader: (i32, i64),
    local: impl Fn(i32) -> (i32, i64),
    log_end: i64,
    high_watermark: i64,
) -> Truncation {
    let (leader_epoch, leader_end) = leader;
    if leader_end < 0 {
        // The leader has no epoch this old: all that is certain is what
        // was committed.
        return Truncation {
            offset: high_watermark.min(log_end),
            done: true,
        };
    }
    if leader_epoch < 0 {
        return Truncation {
            offset: leader_end.min(log_end),
            done: true,
        };
    }
    match local(leader_epoch) {
        (_, end) if end < 0 => Truncation {
            offset: leader_end.min(log_end),
            done: true,
        },
        (epoch, end) if epoch != leader_epoch => Truncation {
            offset: end.min(log_end),
            done: false,
        },
        (_, end) => Truncation {
            offset: end.min(leader_end).min(log_end),
            done: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::{PARTITION_MAX_BYTES, Throttle, Truncation, truncation_target};
    use std::time::Duration;

    #[test]
    fn the_throttle_lets_its_rate_through_on_average() {
        let t = Throttle::new(1_000_000);
        assert_eq!(t.wait(), Duration::ZERO, "a full second's budget at start");
        // Two seconds' worth fetched at once: about a second of debt.
        t.charge(2_000_000);
        let wait = t.wait();
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_millis(1010),
            "{wait:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
        assert!(t.wait() < wait, "paid back over time");
        // Fetch sizes: a quarter second's worth, within bounds.
        assert_eq!(t.partition_max_bytes(), 250_000);
        assert_eq!(Throttle::new(1).partition_max_bytes(), 64 * 1024);
        assert_eq!(
            Throttle::new(u64::MAX / 2).partition_max_bytes(),
            PARTITION_MAX_BYTES
        );
    }

    /// A follower's epoch cache as (epoch, start offset) pairs, answering
    /// like `EpochCache::end_offset_for`.
    fn cache(entries: &'static [(i32, i64)], log_end: i64) -> impl Fn(i32) -> (i32, i64) {
        move |asked| match entries.iter().rposition(|(e, _)| *e <= asked) {
            None => (-1, -1),
            Some(i) if i + 1 == entries.len() => (entries[i].0, log_end),
            Some(i) => (entries[i].0, entries[i + 1].1),
        }
    }

    #[test]
    fn same_epoch_cuts_where_both_logs_agree_it_ended() {
        // Follower: epoch 1 from 0, epoch 3 from 10, log end 15. Leader:
        // epoch 3 ended at 12 there.
        let t = truncation_target((3, 12), cache(&[(1, 0), (3, 10)], 15), 15, 8);
        assert_eq!(
            t,
            Truncation {
                offset: 12,
                done: true
            }
        );
        // Nothing to cut when the leader has more.
        let t = truncation_target((3, 20), cache(&[(1, 0), (3, 10)], 15), 15, 8);
        assert_eq!(t.offset, 15);
    }

    /// KIP-279: the follower led epoch 2 (offsets 5..9) unreplicated; the
    /// leader never saw epoch 2 and answers "epoch 1 ends at 7" because it
    /// had more epoch-1 records than the follower. Keeping 5..7 would keep
    /// the follower's divergent epoch-2 records where the leader has
    /// epoch-1 ones: the follower must cut to where *its* epoch 1 ended (5).
    #[test]
    fn an_epoch_the_follower_lacks_cuts_to_its_own_end_of_the_epoch_below() {
        let follower = cache(&[(0, 0), (2, 5)], 9);
        let t = truncation_target((1, 7), &follower, 9, 3);
        assert_eq!(
            t,
            Truncation {
                offset: 5,
                done: false
            }
        );
        // Asked again with its latest epoch now 0, the leader answers
        // "epoch 0 ends at 2" (say): cut there, done.
        let after = cache(&[(0, 0)], 5);
        let t = truncation_target((0, 2), &after, 5, 3);
        assert_eq!(
            t,
            Truncation {
                offset: 2,
                done: true
            }
        );
    }

    #[test]
    fn unknown_epochs_fall_back_to_what_is_certain() {
        // The leader knows no epoch that old: keep only committed records.
        let t = truncation_target((-1, -1), cache(&[(4, 0)], 9), 9, 6);
        assert_eq!(
            t,
            Truncation {
                offset: 6,
                done: true
            }
        );
        // The follower tracks no epoch at or below the leader's answer.
        let t = truncation_target((2, 4), cache(&[(5, 0)], 9), 9, 6);
        assert_eq!(
            t,
            Truncation {
                offset: 4,
                done: true
            }
        );
    }
}
