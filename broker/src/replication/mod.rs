//! Partition replication, the Kafka way.
//!
//! The metadata image says who leads each partition, in which leader
//! epoch, and who is in sync. This module turns that into behaviour:
//!
//! - A **leader** stamps its epoch on what it appends, tracks how far each
//!   follower has fetched, advances the high watermark to the smallest log
//!   end over the ISR, answers acks=all once the high watermark passes a
//!   batch, and asks the controller to shrink the ISR when a follower lags
//!   more than `replica.lag.time.max.ms` (and to expand it when one has
//!   caught up).
//! - A **follower** first truncates a divergent tail (OffsetForLeaderEpoch
//!   against the new leader), then fetches from the leader and appends the
//!   batches verbatim (`fetcher.rs`).

mod fetcher;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;

use crate::cluster::metadata::{Command, MetadataImage, PartitionImage};
use crate::cluster::quorum::Quorum;
use crate::cluster::topics::TopicRegistry;
use crate::log::PartitionLog;

pub use fetcher::FetcherPool;

/// KIP-320: a request naming a leader epoch (`-1`: none) must match the
/// partition's current one. Older: the sender is behind a leader change;
/// newer: this broker has not applied it yet.
pub fn check_leader_epoch(requested: i32, ours: i32) -> Result<(), ResponseError> {
    match requested {
        e if e < 0 || e == ours => Ok(()),
        e if e < ours => Err(ResponseError::FencedLeaderEpoch),
        _ => Err(ResponseError::UnknownLeaderEpoch),
    }
}

/// `topic-partition`.
pub type TopicPartition = (String, i32);

#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// A follower that has not caught up for this long leaves the ISR.
    pub lag_time_max: Duration,
    /// Longest a follower's fetch waits at the leader for new data.
    pub fetch_max_wait: Duration,
}

/// What the leader knows of one follower.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// The follower's log end, as its last fetch offset said.
    log_end: i64,
    /// Last time the follower had everything the leader had.
    caught_up: Instant,
    /// Last fetch: a follower that stopped fetching is not expanded back.
    fetched: Instant,
}

/// A partition this broker leads, in one leader epoch.
pub struct LeaderState {
    pub log: Arc<PartitionLog>,
    pub leader_epoch: i32,
    /// Where this epoch began: a follower below it has not truncated yet.
    epoch_start: i64,
    /// When this epoch began here: followers get a full lag window from then.
    started: Instant,
    self_id: i32,
    inner: Mutex<LeaderInner>,
}

struct LeaderInner {
    replicas: Vec<i32>,
    isr: Vec<i32>,
    partition_epoch: i32,
    followers: HashMap<i32, Progress>,
    /// An ISR change is being committed; one at a time.
    alter_pending: bool,
}

impl LeaderState {
    pub fn isr_len(&self) -> usize {
        self.lock().isr.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LeaderInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a follower's fetch and moves the high watermark.
    pub fn on_follower_fetch(&self, follower: i32, fetch_offset: i64) {
        let leo = self.log.log_end_offset();
        let mut inner = self.lock();
        let now = Instant::now();
        let p = inner.followers.entry(follower).or_insert(Progress {
            log_end: fetch_offset,
            caught_up: now,
            fetched: now,
        });
        p.log_end = fetch_offset;
        p.fetched = now;
        if fetch_offset >= leo {
            p.caught_up = now;
        }
        self.advance_hw(&inner);
    }

    /// High watermark = smallest log end over the ISR (the leader's own
    /// included). A follower not heard from since this epoch began holds
    /// it where it is. It never moves back.
    fn advance_hw(&self, inner: &LeaderInner) {
        let mut hw = self.log.log_end_offset();
        for id in inner.isr.iter().filter(|id| **id != self.self_id) {
            match inner.followers.get(id) {
                Some(p) => hw = hw.min(p.log_end),
                None => return,
            }
        }
        if hw > self.log.high_watermark() {
            self.log.set_high_watermark(hw);
        }
    }
}

/// Replication events since start, for /metrics.
#[derive(Default)]
pub struct ReplicationStats {
    pub isr_shrinks: std::sync::atomic::AtomicU64,
    pub isr_expands: std::sync::atomic::AtomicU64,
    /// Times this broker became leader of a partition.
    pub leader_elections: std::sync::atomic::AtomicU64,
}

/// How far one follower is behind its leader here.
pub struct FollowerLag {
    pub topic: String,
    pub partition: i32,
    pub follower: i32,
    pub messages: i64,
    pub seconds: f64,
}

/// Everything replication runs on this broker.
pub struct ReplicaManager {
    pub stats: ReplicationStats,
    /// Woken after every `apply_image`.
    applied: tokio::sync::Notify,
    node_id: i32,
    config: ReplicationConfig,
    quorum: Arc<Quorum>,
    leaders: RwLock<HashMap<TopicPartition, Arc<LeaderState>>>,
    fetchers: FetcherPool,
}

impl ReplicaManager {
    pub fn new(node_id: i32, config: ReplicationConfig, quorum: Arc<Quorum>) -> ReplicaManager {
        ReplicaManager {
            stats: ReplicationStats::default(),
            applied: tokio::sync::Notify::new(),
            node_id,
            fetchers: FetcherPool::new(node_id, quorum.clone(), config.fetch_max_wait),
            config,
            quorum,
            leaders: RwLock::new(HashMap::new()),
        }
    }

    /// The state of `tp` if this broker leads it.
    pub fn leader(&self, topic: &str, partition: i32) -> Option<Arc<LeaderState>> {
        self.leaders
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    /// Every follower of every partition led here: messages behind the
    /// leader's log end and time since it last had everything (the leader
    /// knows these only from the follower's fetches).
    pub fn follower_lag(&self) -> Vec<FollowerLag> {
        let leaders = self.leaders.read().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut out = Vec::new();
        for ((topic, partition), ls) in leaders.iter() {
            let leo = ls.log.log_end_offset();
            let inner = ls.lock();
            for follower in inner.replicas.iter().filter(|r| **r != self.node_id) {
                let (messages, since) = match inner.followers.get(follower) {
                    Some(p) => ((leo - p.log_end).max(0), p.caught_up),
                    None => (leo, ls.started),
                };
                out.push(FollowerLag {
                    topic: topic.clone(),
                    partition: *partition,
                    follower: *follower,
                    messages,
                    seconds: if messages == 0 {
                        0.0
                    } else {
                        now.duration_since(since).as_secs_f64()
                    },
                });
            }
        }
        out
    }

    /// Partition indexes of `topic` this broker leads.
    pub fn led_partitions(&self, topic: &str) -> std::collections::HashSet<usize> {
        self.leaders
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .filter(|(t, _)| t == topic)
            .filter_map(|(_, p)| usize::try_from(*p).ok())
            .collect()
    }

    /// The leader state of `tp` in `epoch` (or later), waiting up to
    /// `timeout` for a metadata change this broker is still applying.
    pub async fn await_leader(
        &self,
        topic: &str,
        partition: i32,
        epoch: i32,
        timeout: Duration,
    ) -> Option<Arc<LeaderState>> {
        // The common case, without touching the shared waiter list.
        if let Some(ls) = self
            .leader(topic, partition)
            .filter(|l| l.leader_epoch >= epoch)
        {
            return Some(ls);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let applied = self.applied.notified();
            tokio::pin!(applied);
            applied.as_mut().enable();
            if let Some(ls) = self
                .leader(topic, partition)
                .filter(|l| l.leader_epoch >= epoch)
            {
                return Some(ls);
            }
            // Not named leader by the image at all: no point waiting.
            let image = self.quorum.image();
            let named = image
                .partition(topic, partition)
                .is_some_and(|p| p.leader == self.node_id);
            let now = Instant::now();
            if !named || now >= deadline {
                return self.leader(topic, partition);
            }
            let _ = tokio::time::timeout(deadline - now, applied).await;
        }
    }

    /// Brings every local partition's role in line with the image: leaders
    /// begin their epoch, followers (re)start fetching from their leader.
    pub fn apply_image(&self, image: &MetadataImage, topics: &TopicRegistry) {
        let mut leaders = HashMap::new();
        let mut follows = HashMap::new();
        let current = self
            .leaders
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for topic in topics.all() {
            if topic.meta.view_of().is_some() {
                continue;
            }
            let Some(t) = image.topics.get(&topic.meta.name) else {
                continue;
            };
            for (i, state) in t.partitions.iter().enumerate() {
                let Some(log) = topic.partitions.get(i).cloned().flatten() else {
                    continue;
                };
                let tp = (t.name.clone(), i as i32);
                if state.leader == self.node_id {
                    let ls = match current.get(&tp) {
                        Some(ls) if ls.leader_epoch == state.leader_epoch => {
                            self.update_leader(ls, state);
                            ls.clone()
                        }
                        _ => match self.become_leader(&tp, log, state) {
                            Some(ls) => ls,
                            None => continue,
                        },
                    };
                    leaders.insert(tp, ls);
                } else {
                    log.set_hw_follows_leo(false);
                    if state.leader >= 0 && state.replicas.contains(&self.node_id) {
                        follows.insert(tp, (state.leader, state.leader_epoch, log));
                    }
                }
            }
        }
        *self.leaders.write().unwrap_or_else(|e| e.into_inner()) = leaders;
        self.fetchers.set_targets(follows);
        self.applied.notify_waiters();
    }

    fn become_leader(
        &self,
        tp: &TopicPartition,
        log: Arc<PartitionLog>,
        state: &PartitionImage,
    ) -> Option<Arc<LeaderState>> {
        if let Err(e) = log.begin_epoch(state.leader_epoch) {
            tracing::error!(topic = %tp.0, partition = tp.1, error = %e, "cannot record leader epoch; not leading");
            return None;
        }
        let epoch_start = log.log_end_offset();
        self.stats
            .leader_elections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(topic = %tp.0, partition = tp.1, epoch = state.leader_epoch, isr = ?state.isr, log_end = epoch_start, "leading partition");
        let ls = Arc::new(LeaderState {
            leader_epoch: state.leader_epoch,
            epoch_start,
            started: Instant::now(),
            self_id: self.node_id,
            inner: Mutex::new(LeaderInner {
                replicas: state.replicas.clone(),
                isr: state.isr.clone(),
                partition_epoch: state.partition_epoch,
                followers: HashMap::new(),
                alter_pending: false,
            }),
            log,
        });
        ls.log.set_hw_follows_leo(state.isr == [self.node_id]);
        Some(ls)
    }

    fn update_leader(&self, ls: &LeaderState, state: &PartitionImage) {
        let mut inner = ls.lock();
        if inner.partition_epoch != state.partition_epoch {
            inner.isr = state.isr.clone();
            inner.replicas = state.replicas.clone();
            inner.partition_epoch = state.partition_epoch;
            inner.alter_pending = false;
        }
        let alone = inner.isr == [self.node_id];
        drop(inner);
        ls.log.set_hw_follows_leo(alone);
        if !alone {
            ls.advance_hw(&ls.lock());
        }
    }

    /// Waits until the high watermark of `tp` reaches `offset` (acks=all):
    /// the batch is on every in-sync replica. Fails if leadership moves or
    /// the deadline passes first.
    pub async fn wait_committed(
        &self,
        topic: &str,
        partition: i32,
        leader_epoch: i32,
        offset: i64,
        deadline: Instant,
    ) -> Result<(), ResponseError> {
        // Alone in its ISR (a single broker), the batch is committed already.
        if let Some(ls) = self.leader(topic, partition)
            && ls.leader_epoch == leader_epoch
            && ls.log.high_watermark() >= offset
        {
            return Ok(());
        }
        loop {
            let Some(ls) = self.leader(topic, partition) else {
                return Err(ResponseError::NotLeaderOrFollower);
            };
            if ls.leader_epoch != leader_epoch {
                return Err(ResponseError::NotLeaderOrFollower);
            }
            let notified = ls.log.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if ls.log.high_watermark() >= offset {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ResponseError::RequestTimedOut);
            }
            // Leadership changes do not wake the log; poll for them.
            let nap = (deadline - now).min(Duration::from_millis(100));
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    /// One pass of ISR upkeep on every partition led here: shrink by
    /// followers that lag too long, expand by followers that caught up.
    pub fn check_isr(self: &Arc<Self>) {
        let leaders: Vec<(TopicPartition, Arc<LeaderState>)> = self
            .leaders
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let now = Instant::now();
        let image = self.quorum.image();
        let live = |id: &i32| image.brokers.get(id).is_some_and(|b| !b.fenced);
        for (tp, ls) in leaders {
            let hw = ls.log.high_watermark();
            let mut inner = ls.lock();
            if inner.alter_pending {
                continue;
            }
            let me = self.node_id;
            let mut isr: Vec<i32> = inner
                .isr
                .iter()
                .copied()
                .filter(|id| {
                    let caught_up = inner.followers.get(id).map_or(ls.started, |p| p.caught_up);
                    *id == me || now.duration_since(caught_up) <= self.config.lag_time_max
                })
                .collect();
            for (id, p) in &inner.followers {
                if !isr.contains(id)
                    && inner.replicas.contains(id)
                    && live(id)
                    && now.duration_since(p.fetched) <= self.config.fetch_max_wait * 2
                    && p.log_end >= hw
                    && p.log_end >= ls.epoch_start
                {
                    isr.push(*id);
                }
            }
            let mut sorted = isr.clone();
            sorted.sort_unstable();
            let mut current = inner.isr.clone();
            current.sort_unstable();
            if sorted == current {
                continue;
            }
            inner.alter_pending = true;
            let shrink = sorted.len() < current.len();
            let command = Command::AlterIsr {
                topic: tp.0.clone(),
                partition: tp.1,
                leader: me,
                leader_epoch: ls.leader_epoch,
                partition_epoch: inner.partition_epoch,
                isr: isr.clone(),
            };
            drop(inner);
            tracing::info!(topic = %tp.0, partition = tp.1, from = ?current, to = ?sorted, "changing ISR");
            let manager = self.clone();
            tokio::spawn(async move {
                let result = manager
                    .quorum
                    .propose(command, manager.config.lag_time_max)
                    .await;
                let ok = matches!(result, Ok(Ok(_)));
                if ok {
                    let counter = if shrink {
                        &manager.stats.isr_shrinks
                    } else {
                        &manager.stats.isr_expands
                    };
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    tracing::warn!(topic = %tp.0, partition = tp.1, result = ?result, "ISR change not committed");
                }
                ls.lock().alter_pending = false;
            });
        }
    }
}

/// ISR upkeep, a few times per lag window.
pub async fn isr_loop(manager: Arc<ReplicaManager>) {
    let period = (manager.config.lag_time_max / 4).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        manager.check_isr();
    }
}
