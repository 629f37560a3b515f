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
//! - Every append as leader goes through one path, `ReplicaManager::append`
//!   (`write.rs`), holding the partition's leader term: client produce,
//!   plugin-routed and forwarded sub-batches, dead letters, group commits.
//!   The storage layer refuses an append without a current term.

mod fetcher;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;

use crate::cluster::topics::Topic;
use sluice_metadata::image::{Command, MetadataImage, PartitionImage};
use sluice_metadata::quorum::Quorum;
use sluice_storage::{LeaderTerm, PartitionLog};

pub use fetcher::{FetcherPool, Target};
pub use write::{Acks, Appended, Staged, WriteError};

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

/// Partitions this broker leads, by topic then partition index.
pub type Leaders = HashMap<String, Vec<Option<Arc<LeaderState>>>>;

#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// A follower that has not caught up for this long leaves the ISR.
    pub lag_time_max: Duration,
    /// Longest a follower's fetch waits at the leader for new data.
    pub fetch_max_wait: Duration,
    /// Bytes per second for fetching replicas a reassignment is adding
    /// here; `None`: unlimited.
    pub adding_replicas_rate: Option<u64>,
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
    /// The storage's permission to append in this epoch.
    term: LeaderTerm,
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

    /// Still leading in this epoch (the term was not revoked since).
    pub fn is_current(&self) -> bool {
        self.log.leading_epoch() == Some(self.leader_epoch)
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

/// Every leader state in `leaders`, with its topic and partition.
pub fn each_leader(leaders: &Leaders) -> impl Iterator<Item = (&str, i32, &Arc<LeaderState>)> {
    leaders.iter().flat_map(|(topic, parts)| {
        parts
            .iter()
            .enumerate()
            .filter_map(move |(i, ls)| ls.as_ref().map(|ls| (topic.as_str(), i as i32, ls)))
    })
}

/// Everything replication runs on this broker.
pub struct ReplicaManager {
    pub stats: ReplicationStats,
    node_id: i32,
    config: ReplicationConfig,
    quorum: Arc<Quorum>,
    fetchers: FetcherPool,
}

impl ReplicaManager {
    pub fn new(node_id: i32, config: ReplicationConfig, quorum: Arc<Quorum>) -> ReplicaManager {
        ReplicaManager {
            stats: ReplicationStats::default(),
            node_id,
            fetchers: FetcherPool::new(
                node_id,
                quorum.clone(),
                config.fetch_max_wait,
                config.adding_replicas_rate,
            ),
            config,
            quorum,
        }
    }

    /// Every follower of every partition in `leaders`: messages behind the
    /// leader's log end and time since it last had everything (the leader
    /// knows these only from the follower's fetches).
    pub fn follower_lag(&self, leaders: &Leaders) -> Vec<FollowerLag> {
        let now = Instant::now();
        let mut out = Vec::new();
        for (topic, partition, ls) in each_leader(leaders) {
            let leo = ls.log.log_end_offset();
            let inner = ls.lock();
            for follower in inner.replicas.iter().filter(|r| **r != self.node_id) {
                let (messages, since) = match inner.followers.get(follower) {
                    Some(p) => ((leo - p.log_end).max(0), p.caught_up),
                    None => (leo, ls.started),
                };
                out.push(FollowerLag {
                    topic: topic.to_string(),
                    partition,
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

    /// Takes this broker's role in every local partition as `image` says,
    /// given the leaderships of the previous view: leaders that lost their
    /// partition (or epoch) resign first, so their term is revoked before
    /// anything else touches the log; new leaders begin their epoch;
    /// followers (re)start fetching from their leader. Returns the
    /// leaderships of the new view. `cut_off`: this broker has lost the
    /// controller quorum, so the image's leaderships naming it are stale;
    /// it resigns them all and leads nothing (pending acks=all writes fail
    /// NOT_LEADER_OR_FOLLOWER, clients go find the new leader).
    pub fn apply_roles(
        &self,
        previous: &Leaders,
        image: &MetadataImage,
        topics: &BTreeMap<String, Arc<Topic>>,
        cut_off: bool,
    ) -> Leaders {
        let mut leaders: Leaders = HashMap::new();
        let mut follows = HashMap::new();
        // Resign everything not led in the same epoch any more.
        for (topic, partition, ls) in each_leader(previous) {
            let same = !cut_off
                && image
                    .partition(topic, partition)
                    .is_some_and(|p| p.leader == self.node_id && p.leader_epoch == ls.leader_epoch)
                && topics
                    .get(topic)
                    .and_then(|t| t.partition(partition))
                    .is_some_and(|log| Arc::ptr_eq(log, &ls.log));
            if !same && ls.is_current() {
                tracing::info!(
                    topic,
                    partition,
                    epoch = ls.leader_epoch,
                    "no longer leading partition"
                );
                ls.log.resign();
            }
        }
        for topic in topics.values() {
            if topic.meta.view_of().is_some() {
                continue;
            }
            let Some(t) = image.topics.get(&topic.meta.name) else {
                continue;
            };
            let mut led = vec![None; t.partitions.len()];
            for (i, state) in t.partitions.iter().enumerate() {
                let Some(log) = topic.partitions.get(i).cloned().flatten() else {
                    continue;
                };
                if state.leader == self.node_id && cut_off {
                    // Neither leading nor following: wait for contact.
                    continue;
                }
                if state.leader == self.node_id {
                    let kept = previous
                        .get(&t.name)
                        .and_then(|p| p.get(i))
                        .and_then(Option::as_ref)
                        .filter(|ls| {
                            ls.leader_epoch == state.leader_epoch
                                && Arc::ptr_eq(&ls.log, &log)
                                && ls.is_current()
                        });
                    led[i] = match kept {
                        Some(ls) => {
                            self.update_leader(ls, state);
                            Some(ls.clone())
                        }
                        None => self.become_leader(&t.name, i as i32, log, state),
                    };
                } else {
                    log.set_hw_follows_leo(false);
                    if state.leader >= 0 && state.replicas.contains(&self.node_id) {
                        follows.insert(
                            (t.name.clone(), i as i32),
                            Target {
                                leader: state.leader,
                                leader_epoch: state.leader_epoch,
                                log,
                                // Kafka throttles only replicas out of sync:
                                // one in the ISR holds back acks=all.
                                throttled: state.adding.contains(&self.node_id)
                                    && !state.isr.contains(&self.node_id),
                            },
                        );
                    }
                }
            }
            if led.iter().any(Option::is_some) {
                leaders.insert(t.name.clone(), led);
            }
        }
        self.fetchers.set_targets(follows);
        leaders
    }

    fn become_leader(
        &self,
        topic: &str,
        partition: i32,
        log: Arc<PartitionLog>,
        state: &PartitionImage,
    ) -> Option<Arc<LeaderState>> {
        let term = match log.lead(state.leader_epoch) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(topic, partition, error = %e, "cannot record leader epoch; not leading");
                return None;
            }
        };
        let epoch_start = log.log_end_offset();
        self.stats
            .leader_elections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(topic, partition, epoch = state.leader_epoch, isr = ?state.isr, log_end = epoch_start, "leading partition");
        let ls = Arc::new(LeaderState {
            leader_epoch: state.leader_epoch,
            term,
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

    /// One pass of ISR upkeep on every partition led here: shrink by
    /// followers that lag too long, expand by followers that caught up.
    pub fn check_isr(self: &Arc<Self>, leaders: &Leaders) {
        let now = Instant::now();
        let image = self.quorum.image();
        let live = |id: &i32| image.brokers.get(id).is_some_and(|b| b.eligible());
        for (topic, partition, ls) in each_leader(leaders) {
            if !ls.is_current() {
                continue;
            }
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
                topic: topic.to_string(),
                partition,
                leader: me,
                leader_epoch: ls.leader_epoch,
                partition_epoch: inner.partition_epoch,
                isr: isr.clone(),
            };
            drop(inner);
            tracing::info!(topic, partition, from = ?current, to = ?sorted, "changing ISR");
            let manager = self.clone();
            let ls = ls.clone();
            let topic = topic.to_string();
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
                    tracing::warn!(topic = %topic, partition, result = ?result, "ISR change not committed");
                }
                ls.lock().alter_pending = false;
            });
        }
    }
}

/// ISR upkeep, a few times per lag window, over the leaderships
/// `leaders()` returns (the current view's).
pub async fn isr_loop(manager: Arc<ReplicaManager>, leaders: impl Fn() -> Arc<Leaders>) {
    let period = (manager.config.lag_time_max / 4).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        manager.check_isr(&leaders());
    }
}
