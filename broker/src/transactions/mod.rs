//! The transaction coordinator (Kafka's). Each transactional id belongs to
//! one partition of the internal topic `__transaction_state` (by the hash
//! of the id, as in Kafka); the leader of that partition coordinates it,
//! the partition's leader epoch being the coordinator epoch. Every state
//! change of a transaction (`state::TxnMeta`) is persisted there through
//! the leader write path (acks=all) before it counts, and a broker that
//! becomes leader of a partition replays it and takes over: transactions
//! it finds half-ended (markers not all written) it finishes.
//!
//! One operation at a time per transactional id: while one is in flight
//! (or the markers of an ending transaction are being written) others get
//! CONCURRENT_TRANSACTIONS, which clients retry, as in Kafka. EndTxn is
//! answered once the decision (PrepareCommit / PrepareAbort) is durable;
//! the markers go to every partition's leader in the background (this
//! broker's own through its write path, others' with WriteTxnMarkers),
//! retried until each is written, then CompleteCommit / CompleteAbort is
//! persisted. Transactions open longer than their timeout, and the open
//! transaction of a producer whose new instance calls InitProducerId, are
//! aborted with a bumped epoch, which fences the old instance.

pub mod markers;
pub mod membership;
pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::future::join_all;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{ProducerId, TopicName, WriteTxnMarkersRequest};
use kafka_protocol::protocol::StrBytes;

use crate::forward::Forwarder;
use crate::groups::GroupCoordinator;
use crate::internal_log::{InternalLog, batch_of, partition_for, replay};
use crate::replication::ReplicaManager;
use crate::view::{ClusterView, Views};
use markers::{MarkerWriter, TxnEnd};
use sluice_metadata::producer_ids::ProducerIdAllocator;
use sluice_metadata::quorum::Quorum;
use sluice_protocol::records::Marker;
use sluice_storage::now_ms;
use state::{TxnMeta, TxnState};

pub const TXN_TOPIC: &str = "__transaction_state";

/// How long one round of marker writes may wait for the leaders.
const MARKER_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a partition's answer to a marker ends the marker's retries:
/// written, or the transaction superseded there (the producer has a newer
/// epoch, or a newer coordinator wrote a marker for it), where no marker of
/// this one can ever be written and none is needed. Anything else
/// (leadership moving, the ISR short, a broker unreachable, a leader whose
/// view does not have the topic yet) is retried, as in Kafka; a deleted
/// partition leaves the coordinator's own view and is dropped there.
fn settles(topic: &str, partition: i32, answer: Option<ResponseError>) -> bool {
    match answer {
        None => true,
        Some(
            e @ (ResponseError::InvalidProducerEpoch
            | ResponseError::ProducerFenced
            | ResponseError::TransactionCoordinatorFenced),
        ) => {
            tracing::info!(topic, partition, answer = ?e, "transaction marker superseded there; not retried");
            true
        }
        Some(_) => false,
    }
}

/// The broker coordinating `transactional_id` in `view`.
pub fn coordinator_of<'a>(
    view: &'a ClusterView,
    transactional_id: &str,
) -> Option<&'a sluice_metadata::image::BrokerImage> {
    let topic = view.image.topics.get(TXN_TOPIC)?;
    let p = partition_for(transactional_id, topic.partitions.len());
    view.live_broker(topic.partitions.get(p)?.leader)
}

/// A transactional id as the coordinator holds it.
struct Entry {
    /// `None` while its first InitProducerId is being persisted.
    meta: Option<TxnMeta>,
    /// An operation (or the markers of an ending transaction) in flight.
    busy: bool,
    /// The operation that holds it busy (see `Ticket`).
    op: u64,
}

/// A state partition led and loaded here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Load {
    /// The coordinator epoch: the partition's leader epoch.
    epoch: i32,
    /// Which load this is: a partition lost and regained (even in the same
    /// epoch) is loaded anew, and what began before belongs to no load.
    generation: u64,
}

#[derive(Default)]
struct Owned {
    loads: HashMap<usize, Load>,
    txns: HashMap<String, Entry>,
    /// Counters for `Load::generation` and `Entry::op`.
    next: u64,
}

/// One operation on a transactional id, from `begin`: it may change the
/// id only while the partition is still in the load it began in and the
/// id is still held by this operation (a reload, or a newer operation
/// after one, makes everything it would still do a no-op).
#[derive(Debug, Clone, Copy)]
struct Ticket {
    partition: usize,
    load: Load,
    op: u64,
}

/// The broker services a coordinator uses to write markers.
pub struct MarkerServices {
    pub node_id: i32,
    pub views: Arc<Views>,
    pub quorum: Arc<Quorum>,
    pub replicas: Arc<ReplicaManager>,
    pub groups: Arc<GroupCoordinator>,
    pub forwarder: Arc<Forwarder>,
}

pub struct TxnCoordinator {
    /// The longest timeout a producer may ask for.
    max_timeout_ms: i32,
    /// Idle ids are forgotten after this long (see `expire_idle_ids`).
    id_expiration_ms: i64,
    log: Arc<dyn InternalLog>,
    services: MarkerServices,
    owned: Mutex<Owned>,
    /// Held by one `refresh_ownership` at a time (they run on blocking
    /// threads, each bringing the loads up to the leadership of its time).
    loading: Mutex<()>,
    /// Told whenever an operation lets go of an id (see `begin_waiting`).
    freed: tokio::sync::Notify,
    pub stats: TxnStats,
}

/// How long a request waits for another operation on its transactional id
/// (normally the markers of the transaction the producer just ended) before
/// it is answered CONCURRENT_TRANSACTIONS.
const CONCURRENT_WAIT: Duration = Duration::from_secs(1);

/// Counters the coordinator reports to the metrics module: decisions
/// made durable here (each counted once, by the coordinator that made it).
#[derive(Default)]
pub struct TxnStats {
    /// EndTxn commits.
    pub commits: AtomicU64,
    /// EndTxn aborts.
    pub aborts: AtomicU64,
    /// Transactions aborted for outliving their timeout.
    pub timeout_aborts: AtomicU64,
    /// InitProducerId calls that gave an existing id a new epoch, fencing
    /// any older instance of the producer (its open transaction, if any,
    /// was aborted first).
    pub fenced: AtomicU64,
    /// Idle transactional ids forgotten.
    pub expired: AtomicU64,
}

/// How an operation left the transactional id.
enum Step {
    /// This state was persisted: install it.
    Persisted(TxnMeta),
    /// Nothing changed.
    Unchanged,
    /// Nothing changed; answer with this state (a retried InitProducerId).
    Answer(TxnMeta),
    /// The id's tombstone was persisted: forget it.
    Forgotten,
    /// A transaction is ending in the background; it stays busy.
    Ending,
}

/// What InitProducerId hands the producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerIdAndEpoch {
    pub producer_id: i64,
    pub producer_epoch: i16,
}

impl TxnCoordinator {
    pub fn new(
        max_timeout_ms: i32,
        id_expiration_ms: i64,
        log: Arc<dyn InternalLog>,
        services: MarkerServices,
    ) -> Arc<TxnCoordinator> {
        Arc::new(TxnCoordinator {
            max_timeout_ms,
            id_expiration_ms,
            log,
            services,
            owned: Mutex::new(Owned::default()),
            loading: Mutex::new(()),
            freed: tokio::sync::Notify::new(),
            stats: TxnStats::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Owned> {
        self.owned.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn partition_of(&self, id: &str) -> usize {
        partition_for(id, self.log.partition_count())
    }

    /// Starts an operation on `id` here: its state (if any) and the
    /// operation's ticket, with the id marked busy until `finish`.
    fn begin(&self, id: &str) -> Result<(Option<TxnMeta>, Ticket), ResponseError> {
        let partition = self.partition_of(id);
        let mut owned = self.lock();
        let Some(&load) = owned.loads.get(&partition) else {
            return Err(if self.log.leader_epoch(partition).is_some() {
                ResponseError::CoordinatorLoadInProgress
            } else {
                ResponseError::NotCoordinator
            });
        };
        owned.next += 1;
        let op = owned.next;
        let ticket = Ticket {
            partition,
            load,
            op,
        };
        match owned.txns.get_mut(id) {
            Some(e) if e.busy => Err(ResponseError::ConcurrentTransactions),
            Some(e) => {
                e.busy = true;
                e.op = op;
                Ok((e.meta.clone(), ticket))
            }
            None => {
                owned.txns.insert(
                    id.to_string(),
                    Entry {
                        meta: None,
                        busy: true,
                        op,
                    },
                );
                Ok((None, ticket))
            }
        }
    }

    /// `begin`, waiting up to `CONCURRENT_WAIT` while another operation
    /// holds the id. EndTxn is answered once the decision is durable and
    /// the markers follow, so a producer's next AddPartitionsToTxn usually
    /// arrives while they are being written; answering it
    /// CONCURRENT_TRANSACTIONS at once would make librdkafka wait its
    /// retry.backoff.ms (100 ms) each time, capping one producer at about
    /// ten transactions a second.
    async fn begin_waiting(&self, id: &str) -> Result<(Option<TxnMeta>, Ticket), ResponseError> {
        let deadline = tokio::time::Instant::now() + CONCURRENT_WAIT;
        loop {
            // Registered before the check, so a release in between is seen.
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            match self.begin(id) {
                Err(ResponseError::ConcurrentTransactions)
                    if tokio::time::Instant::now() < deadline =>
                {
                    let _ = tokio::time::timeout_at(deadline, freed).await;
                }
                other => return other,
            }
        }
    }

    /// The entry `ticket`'s operation still holds.
    fn held<'a>(owned: &'a mut Owned, id: &str, ticket: &Ticket) -> Option<&'a mut Entry> {
        if owned.loads.get(&ticket.partition) != Some(&ticket.load) {
            return None;
        }
        owned.txns.get_mut(id).filter(|e| e.op == ticket.op)
    }

    /// Ends an operation begun with `begin` (nothing, if it no longer
    /// holds the id).
    fn finish(&self, id: &str, ticket: &Ticket, step: &Result<Step, ResponseError>) {
        let mut owned = self.lock();
        let Some(e) = Self::held(&mut owned, id, ticket) else {
            return;
        };
        match step {
            Ok(Step::Ending) => return,
            Ok(Step::Persisted(meta)) => e.meta = Some(meta.clone()),
            Ok(Step::Forgotten) => e.meta = None,
            Ok(Step::Unchanged | Step::Answer(_)) | Err(_) => {}
        }
        e.busy = false;
        if e.meta.is_none() {
            owned.txns.remove(id);
        }
        self.freed.notify_waiters();
    }

    /// Persists `meta` as `id`'s state (acks=all on the state partition,
    /// as its leader in the ticket's epoch).
    async fn persist(
        &self,
        id: &str,
        ticket: &Ticket,
        meta: &TxnMeta,
    ) -> Result<(), ResponseError> {
        let value = serde_json::to_vec(meta).map_err(|_| ResponseError::UnknownServerError)?;
        self.persist_value(id, ticket, Some(value)).await
    }

    /// Persists `id`'s record: a state, or a tombstone (`None`) that makes
    /// every later load forget the id.
    async fn persist_value(
        &self,
        id: &str,
        ticket: &Ticket,
        value: Option<Vec<u8>>,
    ) -> Result<(), ResponseError> {
        let batch = batch_of(&[(id.as_bytes().to_vec(), value)], None).map_err(|e| {
            tracing::error!(transactional_id = id, error = %e, "encoding transaction state failed");
            ResponseError::UnknownServerError
        })?;
        let p = ticket.partition;
        self.log
            .append(p, batch, Some(ticket.load.epoch))
            .await
            .map_err(|e| {
            tracing::warn!(transactional_id = id, partition = p, error = %e, "transaction state not persisted");
            // Retriable: the client finds the coordinator again.
            ResponseError::NotCoordinator
        })
    }

    /// InitProducerId with a transactional id: the producer id and a new
    /// epoch for it. An open transaction of an earlier instance is
    /// aborted first (the caller retries on CONCURRENT_TRANSACTIONS).
    pub async fn init_producer(
        self: &Arc<Self>,
        id: &str,
        timeout_ms: i32,
        current: Option<ProducerIdAndEpoch>,
        ids: &ProducerIdAllocator,
    ) -> Result<ProducerIdAndEpoch, ResponseError> {
        if timeout_ms <= 0 || timeout_ms > self.max_timeout_ms {
            return Err(ResponseError::InvalidTransactionTimeout);
        }
        let (meta, ticket) = self.begin_waiting(id).await?;
        let step = self
            .init_step(id, meta, timeout_ms, current, ids, ticket)
            .await;
        self.finish(id, &ticket, &step);
        match step? {
            Step::Persisted(m) | Step::Answer(m) => Ok(ProducerIdAndEpoch {
                producer_id: m.producer_id,
                producer_epoch: m.producer_epoch,
            }),
            Step::Ending | Step::Unchanged | Step::Forgotten => {
                Err(ResponseError::ConcurrentTransactions)
            }
        }
    }

    async fn init_step(
        self: &Arc<Self>,
        id: &str,
        meta: Option<TxnMeta>,
        timeout_ms: i32,
        current: Option<ProducerIdAndEpoch>,
        ids: &ProducerIdAllocator,
        ticket: Ticket,
    ) -> Result<Step, ResponseError> {
        let now = now_ms();
        let allocate = || async {
            ids.allocate().await.map_err(|e| {
                tracing::warn!(error = %e, "producer id allocation failed");
                ResponseError::CoordinatorNotAvailable
            })
        };
        // A new epoch for an id that had one fences its older instances.
        let bumps = meta.is_some();
        let next = match meta {
            None => TxnMeta::new(allocate().await?, timeout_ms, now),
            Some(m) => {
                // KIP-360: a producer that already has an id says which;
                // one retrying a bump whose answer it lost gets it again.
                if let Some(c) = current.filter(|c| c.producer_id >= 0) {
                    if c.producer_id == m.producer_id
                        && m.state == TxnState::Empty
                        && m.last_producer_epoch == Some(c.producer_epoch)
                    {
                        return Ok(Step::Answer(m));
                    }
                    if c.producer_id != m.producer_id || c.producer_epoch != m.producer_epoch {
                        return Err(ResponseError::ProducerFenced);
                    }
                }
                match m.state {
                    TxnState::Ongoing => {
                        let Some(aborting) = m.prepare_abort_fencing(now) else {
                            return Err(ResponseError::InvalidTxnState);
                        };
                        self.persist(id, &ticket, &aborting).await?;
                        self.install_ending(id, &ticket, &aborting);
                        self.spawn_completion(id.to_string(), aborting, ticket);
                        return Ok(Step::Ending);
                    }
                    TxnState::PrepareCommit | TxnState::PrepareAbort => {
                        return Err(ResponseError::ConcurrentTransactions);
                    }
                    _ => {
                        let fresh = if m.epochs_exhausted() {
                            Some(allocate().await?)
                        } else {
                            None
                        };
                        m.reinit(timeout_ms, fresh, now)
                    }
                }
            }
        };
        self.persist(id, &ticket, &next).await?;
        if bumps {
            self.stats.fenced.fetch_add(1, Relaxed);
        }
        Ok(Step::Persisted(next))
    }

    /// AddPartitionsToTxn (and AddOffsetsToTxn's offsets partition).
    pub async fn add_partitions(
        &self,
        id: &str,
        producer: ProducerIdAndEpoch,
        partitions: Vec<(String, i32)>,
    ) -> Result<(), ResponseError> {
        self.add(id, producer, None, partitions).await
    }

    /// A partition leader's AddPartitionsToTxn for partitions a produce
    /// plugin routed a transaction's records to: joins only an open
    /// transaction that already holds the client's partition, `partitions[0]`
    /// (`TxnMeta::add_routed`).
    pub async fn add_routed_partitions(
        &self,
        id: &str,
        producer: ProducerIdAndEpoch,
        partitions: Vec<(String, i32)>,
    ) -> Result<(), ResponseError> {
        let anchor = partitions
            .first()
            .cloned()
            .ok_or(ResponseError::InvalidRequest)?;
        self.add(id, producer, Some(anchor), partitions).await
    }

    async fn add(
        &self,
        id: &str,
        producer: ProducerIdAndEpoch,
        anchor: Option<(String, i32)>,
        partitions: Vec<(String, i32)>,
    ) -> Result<(), ResponseError> {
        let (meta, ticket) = self.begin_waiting(id).await?;
        let step = async {
            let m = meta.ok_or(ResponseError::InvalidProducerIdMapping)?;
            m.check_producer(producer.producer_id, producer.producer_epoch)?;
            let next = match &anchor {
                None => m.add_partitions(partitions, now_ms())?,
                Some(anchor) => m.add_routed(anchor, partitions, now_ms())?,
            };
            if next.state == m.state && next.partitions == m.partitions {
                return Ok(Step::Unchanged);
            }
            self.persist(id, &ticket, &next).await?;
            Ok(Step::Persisted(next))
        }
        .await;
        self.finish(id, &ticket, &step);
        step.map(drop)
    }

    /// AddPartitionsToTxn with verify_only (KIP-890), from a partition
    /// leader about to store a producer's first transactional batch there:
    /// whether each partition is in the producer's open transaction. Reads
    /// the state as it is; changes nothing. `Err` for the whole request
    /// (not coordinating here, unknown id, fenced epoch); per partition,
    /// INVALID_TXN_STATE for one that is not in an open transaction.
    pub fn verify(
        &self,
        id: &str,
        producer: ProducerIdAndEpoch,
        partitions: &[(String, i32)],
    ) -> Result<Vec<Option<ResponseError>>, ResponseError> {
        let partition = self.partition_of(id);
        let owned = self.lock();
        if !owned.loads.contains_key(&partition) {
            return Err(if self.log.leader_epoch(partition).is_some() {
                ResponseError::CoordinatorLoadInProgress
            } else {
                ResponseError::NotCoordinator
            });
        }
        let meta = owned
            .txns
            .get(id)
            .and_then(|e| e.meta.as_ref())
            .ok_or(ResponseError::InvalidProducerIdMapping)?;
        meta.check_producer(producer.producer_id, producer.producer_epoch)?;
        Ok(partitions
            .iter()
            .map(|p| {
                (meta.state != TxnState::Ongoing || !meta.partitions.contains(p))
                    .then_some(ResponseError::InvalidTxnState)
            })
            .collect())
    }

    /// EndTxn: answered once the decision is durable; the markers follow.
    pub async fn end(
        self: &Arc<Self>,
        id: &str,
        producer: ProducerIdAndEpoch,
        commit: bool,
    ) -> Result<(), ResponseError> {
        let (meta, ticket) = self.begin_waiting(id).await?;
        let step = async {
            let m = meta.ok_or(ResponseError::InvalidProducerIdMapping)?;
            m.check_producer(producer.producer_id, producer.producer_epoch)?;
            let Some(prepared) = m.prepare_end(commit, now_ms())? else {
                return Ok(Step::Unchanged);
            };
            self.persist(id, &ticket, &prepared).await?;
            let decided = if commit {
                &self.stats.commits
            } else {
                &self.stats.aborts
            };
            decided.fetch_add(1, Relaxed);
            self.install_ending(id, &ticket, &prepared);
            self.spawn_completion(id.to_string(), prepared, ticket);
            Ok(Step::Ending)
        }
        .await;
        self.finish(id, &ticket, &step);
        step.map(drop)
    }

    /// Records a persisted Prepare* state, the id staying busy.
    fn install_ending(&self, id: &str, ticket: &Ticket, prepared: &TxnMeta) {
        if let Some(e) = Self::held(&mut self.lock(), id, ticket) {
            e.meta = Some(prepared.clone());
            e.busy = true;
        }
    }

    /// Whether `ticket`'s operation still holds `id`.
    fn still_holds(&self, id: &str, ticket: &Ticket) -> bool {
        Self::held(&mut self.lock(), id, ticket).is_some()
    }

    fn spawn_completion(self: &Arc<Self>, id: String, prepared: TxnMeta, ticket: Ticket) {
        let me = self.clone();
        tokio::spawn(async move { me.complete(id, prepared, ticket).await });
    }

    /// Writes the markers of a transaction that is ending to every partition
    /// it wrote to, retrying until all are written (or the partition is
    /// gone), then persists the completed state. Stops if this broker stops
    /// coordinating the id: the new coordinator finishes it.
    async fn complete(&self, id: String, prepared: TxnMeta, ticket: Ticket) {
        let coordinator_epoch = ticket.load.epoch;
        let marker = if prepared.state == TxnState::PrepareCommit {
            Marker::Commit
        } else {
            Marker::Abort
        };
        let mut remaining: Vec<(String, i32)> = prepared.partitions.iter().cloned().collect();
        let mut backoff = Duration::from_millis(50);
        let mut rounds = 0u32;
        loop {
            if !self.still_holds(&id, &ticket) {
                tracing::info!(transactional_id = %id, "no longer coordinating; the new coordinator finishes the transaction");
                return;
            }
            if !remaining.is_empty() {
                let end = |(topic, partition): &(String, i32)| TxnEnd {
                    topic: topic.clone(),
                    partition: *partition,
                    producer_id: prepared.producer_id,
                    producer_epoch: prepared.producer_epoch,
                    marker,
                    coordinator_epoch,
                };
                remaining = self
                    .write_markers(remaining.iter().map(end).collect())
                    .await;
            }
            if remaining.is_empty() && self.still_holds(&id, &ticket) {
                let done = prepared.complete(now_ms());
                match self.persist(&id, &ticket, &done).await {
                    Ok(()) => {
                        tracing::debug!(transactional_id = %id, state = ?done.state, "transaction completed");
                        self.finish(&id, &ticket, &Ok(Step::Persisted(done)));
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(transactional_id = %id, error = ?e, "completing the transaction not persisted; retrying")
                    }
                }
            }
            rounds += 1;
            if rounds.is_multiple_of(20) {
                tracing::warn!(transactional_id = %id, rounds, waiting_for = ?remaining, "transaction markers still not written; retrying");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Writes `ends` to their leaders; returns the partitions still
    /// without their marker.
    async fn write_markers(&self, ends: Vec<TxnEnd>) -> Vec<(String, i32)> {
        let view = self.services.views.current();
        let mut by_leader: BTreeMap<i32, Vec<TxnEnd>> = BTreeMap::new();
        let mut left = Vec::new();
        for end in ends {
            match view.partition(&end.topic, end.partition) {
                // Deleted: nothing left to end.
                None => {}
                Some(p) if p.leader < 0 => left.push((end.topic, end.partition)),
                Some(p) => by_leader.entry(p.leader).or_default().push(end),
            }
        }
        let writer = MarkerWriter {
            node_id: self.services.node_id,
            views: &self.services.views,
            quorum: &self.services.quorum,
            replicas: &self.services.replicas,
            groups: &self.services.groups,
        };
        let view = &view;
        // Every leader at once, and each local partition at once.
        let rounds = by_leader.into_iter().map(|(leader, ends)| async move {
            if leader != self.services.node_id {
                return self.send_markers(leader, ends).await;
            }
            let deadline = Instant::now() + MARKER_TIMEOUT;
            let written = join_all(ends.iter().map(|end| writer.write(view, end, deadline))).await;
            ends.into_iter()
                .zip(written)
                .filter_map(|(end, w)| match w {
                    Ok(()) => None,
                    Err(e) if settles(&end.topic, end.partition, Some(e.code)) => None,
                    Err(e) => {
                        tracing::debug!(topic = %end.topic, partition = end.partition, error = %e.message, "marker not written; retrying");
                        Some((end.topic, end.partition))
                    }
                })
                .collect::<Vec<_>>()
        });
        for failed in join_all(rounds).await {
            left.extend(failed);
        }
        left
    }

    /// WriteTxnMarkers to another broker; returns what failed there.
    async fn send_markers(&self, leader: i32, ends: Vec<TxnEnd>) -> Vec<(String, i32)> {
        let all: Vec<(String, i32)> = ends
            .iter()
            .map(|e| (e.topic.clone(), e.partition))
            .collect();
        let Some(first) = ends.first() else {
            return all;
        };
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for e in &ends {
            by_topic.entry(&e.topic).or_default().push(e.partition);
        }
        let mut m = WritableTxnMarker::default();
        m.producer_id = ProducerId(first.producer_id);
        m.producer_epoch = first.producer_epoch;
        m.transaction_result = first.marker == Marker::Commit;
        m.coordinator_epoch = first.coordinator_epoch;
        m.topics = by_topic
            .into_iter()
            .map(|(topic, partitions)| {
                let mut t = WritableTxnMarkerTopic::default();
                t.name = TopicName(StrBytes::from_string(topic.to_string()));
                t.partition_indexes = partitions;
                t
            })
            .collect();
        let mut req = WriteTxnMarkersRequest::default();
        req.markers = vec![m];
        let resp = match self
            .services
            .forwarder
            .request(leader, &req, 1, MARKER_TIMEOUT)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(broker = leader, error = %e, "markers not delivered; retrying");
                return all;
            }
        };
        let answered: Vec<((String, i32), Option<ResponseError>)> = resp
            .markers
            .iter()
            .flat_map(|m| m.topics.iter())
            .flat_map(|t| {
                t.partitions.iter().map(|p| {
                    (
                        (t.name.as_str().to_string(), p.partition_index),
                        ResponseError::try_from_code(p.error_code),
                    )
                })
            })
            .collect();
        // Anything not settled (or not answered) is retried.
        all.into_iter()
            .filter(|tp| {
                !answered
                    .iter()
                    .any(|(a, code)| a == tp && settles(&tp.0, tp.1, *code))
            })
            .collect()
    }

    /// Stops serving the ids of state partitions this broker no longer
    /// leads in the epoch it loaded them in (cheap; the metadata applier
    /// calls it before loading anything gained in the background).
    pub fn release_lost(&self) {
        let count = self.log.partition_count();
        let mut owned = self.lock();
        let owned = &mut *owned;
        let before = owned.loads.len();
        owned
            .loads
            .retain(|p, l| self.log.leader_epoch(*p) == Some(l.epoch));
        if owned.loads.len() != before {
            let loads = &owned.loads;
            owned
                .txns
                .retain(|id, _| loads.contains_key(&partition_for(id, count)));
            // Requests waiting on those ids are answered NOT_COORDINATOR.
            self.freed.notify_waiters();
        }
    }

    /// Follows `__transaction_state` leadership (called by the metadata
    /// applier after each view): ids of partitions this broker stopped
    /// leading are dropped; partitions it started leading, or leads in a
    /// new epoch, are replayed, and their half-ended transactions finished.
    pub fn refresh_ownership(self: &Arc<Self>) {
        let _one = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh_loads();
    }

    /// `refresh_ownership`, skipped while another is loading (the timer's
    /// retry must not wait behind a long replay).
    fn refresh_ownership_unless_loading(self: &Arc<Self>) {
        if let Ok(_one) = self.loading.try_lock() {
            self.refresh_loads();
        }
    }

    /// The body of `refresh_ownership`; the caller holds `loading`.
    fn refresh_loads(self: &Arc<Self>) {
        let count = self.log.partition_count();
        let led: HashMap<usize, i32> = (0..count)
            .filter_map(|p| self.log.leader_epoch(p).map(|e| (p, e)))
            .collect();
        let (gained, lost): (Vec<(usize, i32)>, bool) = {
            let owned = self.lock();
            let gained = led
                .iter()
                .filter(|(p, e)| owned.loads.get(p).map(|l| l.epoch) != Some(**e))
                .map(|(p, e)| (*p, *e))
                .collect();
            let lost = owned.loads.keys().any(|p| !led.contains_key(p));
            (gained, lost)
        };
        if gained.is_empty() && !lost {
            return;
        }
        // Replayed before taking the lock; a partition that fails to load
        // is not served (LOAD_IN_PROGRESS) and is tried again later.
        let mut loaded: Vec<(usize, i32, HashMap<String, TxnMeta>)> = Vec::new();
        for &(p, epoch) in &gained {
            let Some(log) = self.log.log(p) else {
                continue;
            };
            let mut metas: HashMap<String, TxnMeta> = HashMap::new();
            let replayed = replay(&log, |key, value| {
                let Some(id) = key.and_then(|k| std::str::from_utf8(k).ok()) else {
                    tracing::warn!(
                        partition = p,
                        "skipping a {TXN_TOPIC} record without a readable key"
                    );
                    return;
                };
                match value.map(serde_json::from_slice::<TxnMeta>) {
                    Some(Ok(meta)) => {
                        metas.insert(id.to_string(), meta);
                    }
                    Some(Err(e)) => {
                        tracing::error!(partition = p, transactional_id = id, error = %e, "unreadable transaction state record");
                    }
                    None => {
                        metas.remove(id);
                    }
                }
            });
            match replayed {
                Ok(_) => loaded.push((p, epoch, metas)),
                Err(e) => {
                    tracing::error!(partition = p, error = %e, "loading transactions of a newly led {TXN_TOPIC} partition failed; will retry")
                }
            }
        }
        let mut ending = Vec::new();
        let resumed = {
            let mut owned = self.lock();
            let owned = &mut *owned;
            // Leadership may have moved during the replay (it runs in the
            // background): install only what is still led in the epoch it
            // was read in, checked under the lock `release_lost` takes
            // after each new view; the next refresh handles the rest.
            loaded.retain(|(p, epoch, _)| self.log.leader_epoch(*p) == Some(*epoch));
            let resumed: Vec<usize> = loaded.iter().map(|(p, _, _)| *p).collect();
            // Gone: partitions no longer led (now), and those being
            // reloaded.
            owned
                .loads
                .retain(|p, l| self.log.leader_epoch(*p) == Some(l.epoch) && !resumed.contains(p));
            let loads = &owned.loads;
            owned
                .txns
                .retain(|id, _| loads.contains_key(&partition_for(id, count)));
            for (p, epoch, metas) in loaded {
                owned.next += 1;
                let load = Load {
                    epoch,
                    generation: owned.next,
                };
                owned.loads.insert(p, load);
                for (id, meta) in metas {
                    owned.next += 1;
                    let op = owned.next;
                    let busy = meta.state.is_preparing();
                    if busy {
                        let ticket = Ticket {
                            partition: p,
                            load,
                            op,
                        };
                        ending.push((id.clone(), meta.clone(), ticket));
                    }
                    owned.txns.insert(
                        id,
                        Entry {
                            meta: Some(meta),
                            busy,
                            op,
                        },
                    );
                }
            }
            resumed
        };
        // Ids of reloaded partitions were replaced: waiters look again.
        self.freed.notify_waiters();
        if !resumed.is_empty() {
            tracing::info!(loaded = ?resumed, resuming = ending.len(), "transaction coordination moved");
        }
        for (id, meta, ticket) in ending {
            self.spawn_completion(id, meta, ticket);
        }
    }

    /// Fails with LOAD_IN_PROGRESS while a state partition led here is not
    /// loaded yet (its transactions would be missing from an answer).
    fn all_loaded(&self) -> Result<(), ResponseError> {
        let count = self.log.partition_count();
        let owned = self.lock();
        let loading =
            (0..count).any(|p| self.log.leader_epoch(p).is_some() && !owned.loads.contains_key(&p));
        if loading {
            Err(ResponseError::CoordinatorLoadInProgress)
        } else {
            Ok(())
        }
    }

    /// How many transactional ids coordinated here are in each state.
    pub fn states(&self) -> Vec<(TxnState, usize)> {
        let owned = self.lock();
        TxnState::ALL
            .iter()
            .map(|state| {
                let n = owned
                    .txns
                    .values()
                    .filter(|e| e.meta.as_ref().is_some_and(|m| m.state == *state))
                    .count();
                (*state, n)
            })
            .collect()
    }

    /// ListTransactions (KIP-664): the transactional ids coordinated here,
    /// with their producer id and state, filtered by state (none: all),
    /// producer id (none: all) and, for running transactions, how long
    /// they have been open (`min_duration_ms` < 0: no filter).
    pub fn list(
        &self,
        states: &[TxnState],
        producer_ids: &[i64],
        min_duration_ms: i64,
    ) -> Result<Vec<(String, i64, TxnState)>, ResponseError> {
        self.all_loaded()?;
        let now = now_ms();
        let owned = self.lock();
        let mut out: Vec<(String, i64, TxnState)> = owned
            .txns
            .iter()
            .filter_map(|(id, e)| Some((id, e.meta.as_ref()?)))
            .filter(|(_, m)| states.is_empty() || states.contains(&m.state))
            .filter(|(_, m)| producer_ids.is_empty() || producer_ids.contains(&m.producer_id))
            .filter(|(_, m)| {
                min_duration_ms < 0
                    || (m.state == TxnState::Ongoing
                        && now.saturating_sub(m.started_ms) >= min_duration_ms)
            })
            .map(|(id, m)| (id.clone(), m.producer_id, m.state))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// DescribeTransactions (KIP-664): one transactional id's state.
    pub fn describe(&self, id: &str) -> Result<TxnMeta, ResponseError> {
        let p = self.partition_of(id);
        let owned = self.lock();
        if !owned.loads.contains_key(&p) {
            return Err(if self.log.leader_epoch(p).is_some() {
                ResponseError::CoordinatorLoadInProgress
            } else {
                ResponseError::NotCoordinator
            });
        }
        owned
            .txns
            .get(id)
            .and_then(|e| e.meta.clone())
            .ok_or(ResponseError::TransactionalIdNotFound)
    }

    /// Forgets, every `every`, the transactional ids coordinated here that
    /// have had no transaction open or ending for the expiration time
    /// (Kafka's transactional.id.expiration.ms): a tombstone in the state
    /// partition, so later coordinators forget them too. The next
    /// InitProducerId for such an id starts afresh (a new producer id).
    pub async fn expire_idle_ids(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.expire_idle_now().await;
        }
    }

    /// One pass of `expire_idle_ids`.
    async fn expire_idle_now(&self) {
        let now = now_ms();
        let idle: Vec<String> = self
            .lock()
            .txns
            .iter()
            .filter(|(_, e)| {
                !e.busy
                    && e.meta
                        .as_ref()
                        .is_some_and(|m| m.expired(now, self.id_expiration_ms))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in idle {
            let Ok((meta, ticket)) = self.begin(&id) else {
                continue;
            };
            let step = async {
                // Used again since it was listed: keep it.
                if !meta.is_some_and(|m| m.expired(now_ms(), self.id_expiration_ms)) {
                    return Ok(Step::Unchanged);
                }
                self.persist_value(&id, &ticket, None).await?;
                self.stats.expired.fetch_add(1, Relaxed);
                tracing::info!(transactional_id = %id, expiration_ms = self.id_expiration_ms, "transactional id expired");
                Ok(Step::Forgotten)
            }
            .await;
            self.finish(&id, &ticket, &step);
        }
    }

    /// Every `every`: aborts transactions open longer than their timeout
    /// (with a bumped epoch, fencing the producer), and loads state
    /// partitions whose load failed before (unless a load is under way).
    pub async fn abort_timed_out(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            tokio::task::block_in_place(|| self.refresh_ownership_unless_loading());
            let now = now_ms();
            let expired: Vec<String> = self
                .lock()
                .txns
                .iter()
                .filter(|(_, e)| !e.busy && e.meta.as_ref().is_some_and(|m| m.timed_out(now)))
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                let Ok((meta, ticket)) = self.begin(&id) else {
                    continue;
                };
                let step = async {
                    let meta = meta.ok_or(ResponseError::InvalidTxnState)?;
                    if !meta.timed_out(now_ms()) {
                        return Ok(Step::Unchanged);
                    }
                    let aborting = meta
                        .prepare_abort_fencing(now_ms())
                        .ok_or(ResponseError::InvalidTxnState)?;
                    self.persist(&id, &ticket, &aborting).await?;
                    self.stats.timeout_aborts.fetch_add(1, Relaxed);
                    tracing::info!(transactional_id = %id, timeout_ms = meta.timeout_ms, "aborting a transaction open longer than its timeout");
                    self.install_ending(&id, &ticket, &aborting);
                    self.spawn_completion(id.clone(), aborting, ticket);
                    Ok(Step::Ending)
                }
                .await;
                self.finish(&id, &ticket, &step);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_stop_when_written_gone_or_superseded_only() {
        for settled in [
            None,
            Some(ResponseError::InvalidProducerEpoch),
            Some(ResponseError::ProducerFenced),
            Some(ResponseError::TransactionCoordinatorFenced),
        ] {
            assert!(settles("t", 0, settled), "{settled:?}");
        }
        for retried in [
            ResponseError::UnknownTopicOrPartition,
            ResponseError::NotLeaderOrFollower,
            ResponseError::NotEnoughReplicas,
            ResponseError::RequestTimedOut,
            ResponseError::KafkaStorageError,
            ResponseError::CorruptMessage,
        ] {
            assert!(!settles("t", 0, Some(retried)), "{retried:?}");
        }
    }
}
