//! Produce to a topic with plugins on its produce path: the client's batch
//! goes through the interceptors, filters and partitioner, and what comes
//! out is stored as sub-batches in the partitions the plugins chose, each
//! through its leader's write path (here, or forwarded to the broker that
//! leads it). The client's partition is acknowledged only once every
//! sub-batch met the request's acks.
//!
//! ## Idempotence across brokers
//!
//! A retry must never store a sub-batch twice, whichever brokers lead the
//! partitions by then, so everything that recognizes a retry lives in the
//! partition logs themselves (replicated, rebuilt by a new leader), never
//! in one leader's memory:
//!
//! - Each sub-batch of an idempotent producer's batch carries a *derived*
//!   producer id (`derived_producer_id`: the topic, the client's partition
//!   and the client's producer id), the client's epoch, and the client
//!   batch's last sequence as its base sequence. A target partition's
//!   producer state recognizes a re-sent sub-batch as a duplicate, and
//!   accepts sequences that only increase (storage `producer_state`).
//! - The sub-batch for the client's own partition, the *anchor*, is written
//!   last, after every other target acknowledged; it may hold no records.
//!   So an anchor in the client partition's log means the whole batch
//!   landed, and its sequence is where the next client batch must start.
//!   A connection's routed batches are not pipelined: the next is routed
//!   once the anchor met the acks, so at most one batch per producer and
//!   partition is ever half-stored (pipelining them let anchors run ahead of
//!   the followers: after a failover, retries found more sub-batches ahead of
//!   them at a target than the five it remembers).
//! - A batch that continues the anchor's sequence is routed; a retry of an
//!   anchored batch is answered from the anchor; a batch further ahead
//!   means an earlier one may be half-stored, and gets a retriable error
//!   (never OUT_OF_ORDER_SEQUENCE_NUMBER, which would make the client bump
//!   its epoch and re-send the half-stored batch under new sequences) until
//!   the client's retry of the earlier batch completes it.
//!
//! ## Transactions
//!
//! A transactional producer's routed records belong to its transaction:
//!
//! - Before any sub-batch is written, the partitions it goes to join the
//!   client's transaction at its coordinator (AddPartitionsToTxn on the
//!   client's behalf), so the transaction's markers reach them; for the
//!   batch's first in the transaction, after checking that the client's
//!   own partition is in it (KIP-890's verification).
//! - Sub-batches (the anchor too) are transactional, under a derived id
//!   that names the client's producer (`txn_derived_producer_id`: the
//!   client's partition and producer id), so a partition that gets the
//!   client producer's marker finds the derived producers it must end as
//!   well (`transactions::markers`), and writes each its own marker, which
//!   is what read_committed consumers look for. It is all in the log, so a
//!   new leader ends them the same way.
//! - Dead-lettering is not available inside a transaction: the batch is
//!   rejected instead (its transaction then aborts).
//!
//! Re-running plugins on a retry routes the records the same way as long
//! as the plugin (and its version) is deterministic, which the sandbox
//! requires: a plugin upgraded between a failed attempt and its retry may
//! route the retried records elsewhere.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::future::join_all;
use kafka_protocol::ResponseError;
use sha2::{Digest, Sha256};

use crate::api::services::Writes;
use crate::cluster::topics::Topic;
use crate::replication::{Acks, LeaderState, WriteError};
use crate::transactions::membership::{Ask, Txn};
use crate::view::ClusterView;
use sluice_plugin_host::{Bindings, FailurePolicy, Outcome};
use sluice_protocol::batch::{self, ValidatedBatch};
use sluice_protocol::records::{self as plugin_records, Producer};
use sluice_storage::producer_state::{DERIVED_PRODUCER_IDS, txn_derived_producer_id};

/// The answer for the client's partition.
#[derive(Debug, Clone)]
pub struct RoutedAnswer {
    /// Where the batch's records begin in the addressed partition when all
    /// of them stayed there, in order; -1 otherwise (consume to see where
    /// the plugins put them).
    pub base_offset: i64,
    pub log_append_time: i64,
    /// Records stored (0 for a retry answered from the first attempt).
    pub records: i64,
    pub bytes: u64,
    /// Said to the client with the success (e.g. "dead-lettered").
    pub message: Option<String>,
    pub duplicate: bool,
}

/// The producer id the broker uses for records of `producer_id`'s batches
/// to `topic_id`-`partition` that it stores elsewhere (or rewrites). Never
/// one InitProducerId hands out (those stay far below 2^62); a hash, so two
/// sources colliding on one target partition has probability 2^-62 per
/// pair. (Transactional producers' sub-batches use
/// `txn_derived_producer_id` instead, see "Transactions" above.)
pub fn derived_producer_id(topic_id: uuid::Uuid, partition: i32, producer_id: i64) -> i64 {
    let mut h = Sha256::new();
    h.update(topic_id.as_bytes());
    h.update(partition.to_be_bytes());
    h.update(producer_id.to_be_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    DERIVED_PRODUCER_IDS | (i64::from_be_bytes(first) & (DERIVED_PRODUCER_IDS - 1))
}

/// What the anchor in the client's partition says about an incoming batch.
#[derive(Debug, PartialEq, Eq)]
enum Sequence {
    /// Next in line (or the producer is new here): route it.
    Next,
    /// Already complete: answer from the anchor at this offset.
    Complete { anchor_offset: i64, anchor_end: i64 },
}

/// Checks a client batch against the anchors in its partition (see the
/// module docs).
fn check_sequence(
    ls: &LeaderState,
    dp: i64,
    h: &batch::BatchHeader,
) -> Result<Sequence, WriteError> {
    let first = h.base_sequence;
    let last = first.wrapping_add(h.last_offset_delta);
    let Some((epoch, newest)) = ls.log.producer_latest(dp) else {
        // New here (or expired): as Kafka, any sequence starts it.
        return Ok(Sequence::Next);
    };
    if h.producer_epoch < epoch {
        return Err(WriteError::new(
            ResponseError::InvalidProducerEpoch,
            format!(
                "producer {} epoch {} is older than the current epoch {epoch}",
                h.producer_id, h.producer_epoch
            ),
        ));
    }
    if h.producer_epoch > epoch {
        return if first == 0 {
            Ok(Sequence::Next)
        } else {
            Err(WriteError::new(
                ResponseError::OutOfOrderSequenceNumber,
                format!(
                    "producer {} started epoch {} at sequence {first}, not 0",
                    h.producer_id, h.producer_epoch
                ),
            ))
        };
    }
    // Anchors carry the client batch's last sequence as their first.
    if let Some(a) = ls
        .log
        .producer_batches(dp, epoch)
        .into_iter()
        .find(|a| a.first_seq == last)
    {
        return Ok(Sequence::Complete {
            anchor_offset: a.first_offset,
            anchor_end: a.last_offset + 1,
        });
    }
    let expected = if newest.first_seq == i32::MAX {
        0
    } else {
        newest.first_seq + 1
    };
    if first == expected {
        return Ok(Sequence::Next);
    }
    if first > expected {
        // An earlier batch may be half-stored: its retry comes first.
        return Err(WriteError::new(
            ResponseError::RequestTimedOut,
            format!(
                "producer {}: sequence {first} but the batch ending at {} is not complete yet; retry",
                h.producer_id,
                expected - 1
            ),
        ));
    }
    Err(WriteError::new(
        ResponseError::OutOfOrderSequenceNumber,
        format!(
            "producer {}: sequence {first} is older than the last stored batch (ending at {})",
            h.producer_id, newest.first_seq
        ),
    ))
}

/// One sub-batch to store.
struct SubBatch {
    partition: i32,
    batch: ValidatedBatch,
}

impl SubBatch {
    /// A batch the plugins' output was encoded into (checked like any
    /// batch that did not come through produce validation).
    fn encoded(partition: i32, bytes: Bytes) -> Result<SubBatch, WriteError> {
        let batch = ValidatedBatch::trusted(bytes)
            .map_err(|e| WriteError::new(ResponseError::CorruptMessage, e.to_string()))?;
        Ok(SubBatch { partition, batch })
    }
}

/// Produces `batch` (addressed to `client_partition`, which `ls` leads
/// here) through the topic's plugins; returns once every sub-batch, the
/// anchor last, met the acks. The connection runs this in its ordered part,
/// so a client's next batch is routed only once this one's anchor is
/// committed: at most one batch per producer and partition is ever in
/// doubt, which is what lets a retry after a failover find its sub-batches
/// among the five each target remembers.
#[allow(clippy::too_many_arguments)]
pub async fn produce(
    b: &Writes<'_>,
    view: &ClusterView,
    topic: &Arc<Topic>,
    bindings: &Arc<Bindings>,
    client_partition: i32,
    ls: &Arc<LeaderState>,
    batch: ValidatedBatch,
    transactional_id: Option<&str>,
    acks: Acks,
    deadline: Instant,
) -> Result<RoutedAnswer, WriteError> {
    let h = batch.header;
    let idempotent = h.producer_id >= 0;
    let transaction = match (h.is_transactional(), transactional_id) {
        (false, _) => None,
        (true, Some(id)) if idempotent => Some(id),
        (true, _) => {
            return Err(WriteError::new(
                ResponseError::InvalidTxnState,
                "a transactional batch needs a producer id and the request's transactional id",
            ));
        }
    };
    let dp = match transaction {
        None => derived_producer_id(topic.meta.id, client_partition, h.producer_id),
        Some(_) => txn_derived_producer_id(client_partition, h.producer_id).ok_or_else(|| {
            WriteError::new(
                ResponseError::InvalidTxnState,
                format!(
                    "producer {} or partition {client_partition} is beyond what transactions through plugins support (ids below 2^40, partitions below 2^21)",
                    h.producer_id
                ),
            )
        })?,
    };
    let last_seq = h.base_sequence.wrapping_add(h.last_offset_delta);
    // Offsets are exact only when every record is sure to stay put.
    let all_stay = bindings.partitioner.is_none()
        && bindings.filters.is_empty()
        && bindings.failure != FailurePolicy::DeadLetter;
    if idempotent
        && let Sequence::Complete {
            anchor_offset,
            anchor_end,
        } = check_sequence(ls, dp, &h)?
    {
        if acks == Acks::All {
            b.replicas.await_committed(ls, anchor_end, deadline).await?;
        }
        b.metrics
            .duplicate_batches
            .with_label_values(&[&topic.meta.name])
            .inc();
        return Ok(RoutedAnswer {
            base_offset: if all_stay { anchor_offset } else { -1 },
            log_append_time: -1,
            records: 0,
            bytes: 0,
            message: None,
            duplicate: true,
        });
    }
    let producer = if idempotent {
        Producer {
            id: dp,
            epoch: h.producer_epoch,
            base_sequence: last_seq,
            transactional: transaction.is_some(),
        }
    } else {
        Producer::NONE
    };
    // Records borrow from this handle (a refcount, not a copy), so the
    // batch itself can still be stored as is.
    let bytes = batch.to_bytes();
    let (_, records) = plugin_records::decode(&bytes)
        .map_err(|e| WriteError::new(ResponseError::InvalidRecord, e.to_string()))?;
    let count = records.len() as i64;
    let partitions = topic.partitions.len() as i32;
    // Plugin calls are CPU work bounded by their deadlines; keep them off
    // the async workers' cooperative scheduling.
    let outcome = tokio::task::block_in_place(|| {
        b.plugins.apply(
            bindings,
            &topic.meta.name,
            records,
            partitions,
            client_partition,
        )
    });
    // The client's batch as is, under the derived producer when
    // idempotent (a new header; the records are not copied).
    let as_received = |original: &ValidatedBatch| {
        if idempotent {
            original.with_producer(producer.id, producer.epoch, producer.base_sequence)
        } else {
            original.clone()
        }
    };
    let encode_err =
        |e: batch::BatchError| WriteError::new(ResponseError::InvalidRecord, e.to_string());
    let (target_topic, subs, message) = match outcome {
        Outcome::Rejected {
            plugin,
            index,
            reason,
        } => {
            return Err(WriteError::new(
                ResponseError::PolicyViolation,
                format!("record {index} rejected by plugin '{plugin}': {reason}"),
            ));
        }
        Outcome::Failed { plugin, error } => {
            return Err(WriteError::new(
                ResponseError::PolicyViolation,
                format!(
                    "{error}; the topic's plugin failure policy is 'reject' (plugin '{plugin}')"
                ),
            ));
        }
        Outcome::DeadLetter { plugin, error } if transaction.is_some() => {
            return Err(WriteError::new(
                ResponseError::PolicyViolation,
                format!(
                    "{error} (plugin '{plugin}'); inside a transaction the batch is rejected, not dead-lettered"
                ),
            ));
        }
        Outcome::DeadLetter { plugin, error } => {
            let name = bindings.dead_letter_topic.clone().unwrap_or_default();
            let Some(dlt) = view.topic(&name) else {
                return Err(WriteError::new(
                    ResponseError::PolicyViolation,
                    format!(
                        "{error} (plugin '{plugin}'); dead-letter topic '{name}' does not exist"
                    ),
                ));
            };
            // The original batch, to the dead-letter partition matching
            // the client's (deterministic, so a retry lands in the same
            // place and is recognized there).
            let d = client_partition.max(0) % (dlt.partitions.len().max(1) as i32);
            b.plugins
                .metrics
                .records(&plugin, &topic.meta.name, "dead_lettered", count as u64);
            let sub = SubBatch {
                partition: d,
                batch: as_received(&batch),
            };
            (
                Some(dlt.clone()),
                vec![sub],
                Some(format!(
                    "{error}; batch stored in dead-letter topic '{name}'"
                )),
            )
        }
        Outcome::Routed(groups) => {
            // Records unchanged (no interceptor or filter) and all routed to
            // one partition: store the client's batch as is, no re-encode.
            let untouched = bindings.interceptors.is_empty() && bindings.filters.is_empty();
            let single = groups.len() == 1 && groups[0].1.len() as i64 == count;
            let mut subs = Vec::with_capacity(groups.len());
            for (p, recs) in &groups {
                subs.push(if untouched && single {
                    SubBatch {
                        partition: *p,
                        batch: as_received(&batch),
                    }
                } else {
                    SubBatch::encoded(
                        *p,
                        plugin_records::encode(recs, h.compression(), false, producer)
                            .map_err(encode_err)?
                            .freeze(),
                    )?
                });
            }
            (None, subs, None)
        }
    };
    // The anchor: the client partition's own sub-batch, written last. An
    // idempotent producer's batch always has one, empty if no record
    // stayed (it holds the sequence).
    let (mut others, mut anchor): (Vec<SubBatch>, Option<SubBatch>) = match &target_topic {
        Some(_) => (subs, None),
        None => {
            let mut others = Vec::new();
            let mut anchor = None;
            for s in subs {
                if s.partition == client_partition {
                    anchor = Some(s);
                } else {
                    others.push(s);
                }
            }
            (others, anchor)
        }
    };
    if anchor.is_none() && idempotent {
        anchor = Some(SubBatch::encoded(
            client_partition,
            plugin_records::encode_empty(h.max_timestamp, producer)
                .map_err(encode_err)?
                .freeze(),
        )?);
    }
    if !idempotent && let Some(a) = anchor.take() {
        // Nothing to order: the client's partition goes with the rest.
        others.push(a);
    }
    let target = target_topic.as_ref().unwrap_or(topic);
    // Sub-batches wait as the client asked, but always for an answer: the
    // anchor may only follow acknowledged ones.
    let sub_acks = if acks == Acks::None {
        Acks::Leader
    } else {
        acks
    };
    if let Some(id) = transaction {
        // The targets join the open transaction only if it holds the
        // client's partition (listed first): a late batch whose transaction
        // ended cannot start, or slip into, another (KIP-890's check).
        let mut partitions = vec![client_partition];
        partitions.extend(
            others
                .iter()
                .map(|s| s.partition)
                .filter(|p| *p != client_partition),
        );
        b.membership()
            .ensure(
                view,
                Txn::of(id, &h),
                &target.meta.name,
                partitions,
                Ask::AddRouted,
                deadline,
            )
            .await?;
    }
    let mut bytes_in = 0u64;
    let mut records_in = 0i64;
    let stored = store_all(b, view, target, others, transaction, sub_acks, deadline).await;
    let mut answer = RoutedAnswer {
        base_offset: -1,
        log_append_time: -1,
        records: 0,
        bytes: 0,
        message,
        duplicate: false,
    };
    // The first failure is the client's answer: nothing is anchored.
    if let Some(e) = stored.iter().find_map(|r| r.as_ref().err()) {
        return Err(for_client(target, e.clone()));
    }
    for l in stored.iter().flatten() {
        if !l.duplicate {
            bytes_in += l.len;
            records_in += l.records;
        }
        // Not idempotent: the client partition's records went with the rest.
        if target_topic.is_none() && l.partition == client_partition && l.records == count {
            answer.base_offset = l.base_offset;
            answer.log_append_time = l.log_append_time;
        }
    }
    if let Some(a) = anchor {
        let len = a.batch.len() as u64;
        let records = a.batch.records();
        if let Some(id) = transaction {
            let at = (topic.meta.name.as_str(), client_partition);
            b.membership()
                .verify_first_batch(view, id, &ls.log, at, &a.batch.header, deadline)
                .await?;
        }
        let r = b
            .replicas
            .append(ls, a.batch, acks, topic.min_insync_replicas, deadline)
            .await?;
        if !r.duplicate {
            bytes_in += len;
            records_in += records;
        }
        if records == count && records > 0 {
            answer.base_offset = r.base_offset;
            answer.log_append_time = r.log_append_time;
        }
    }
    answer.records = records_in;
    answer.bytes = bytes_in;
    Ok(answer)
}

/// Where one sub-batch landed.
struct Landed {
    partition: i32,
    len: u64,
    records: i64,
    base_offset: i64,
    log_append_time: i64,
    duplicate: bool,
}

/// Stores sub-batches of `topic` concurrently: partitions led here through
/// the local write path, the others forwarded to their leaders (one request
/// per broker). One result per sub-batch.
async fn store_all(
    b: &Writes<'_>,
    view: &ClusterView,
    topic: &Arc<Topic>,
    subs: Vec<SubBatch>,
    transaction: Option<&str>,
    acks: Acks,
    deadline: Instant,
) -> Vec<Result<Landed, WriteError>> {
    let name = topic.meta.name.as_str();
    let mut local = Vec::new();
    let mut remote: BTreeMap<i32, Vec<SubBatch>> = BTreeMap::new();
    let mut out = Vec::new();
    for s in subs {
        match view.partition(name, s.partition).map(|p| p.leader) {
            Some(l) if l == view.node_id() => local.push(s),
            Some(l) if l >= 0 => remote.entry(l).or_default().push(s),
            _ => out.push(Err(WriteError::new(
                ResponseError::LeaderNotAvailable,
                format!("{name}-{} has no leader", s.partition),
            ))),
        }
    }
    let local_writes = local.into_iter().map(|s| async move {
        let ls = b
            .views
            .leader_for_write(b.quorum, view, name, s.partition)
            .await
            .map_err(|e| WriteError::new(e, format!("{name}-{}: {e:?}", s.partition)))?;
        let (partition, len, records) = (s.partition, s.batch.len() as u64, s.batch.records());
        if let Some(id) = transaction {
            b.membership()
                .verify_first_batch(
                    view,
                    id,
                    &ls.log,
                    (name, partition),
                    &s.batch.header,
                    deadline,
                )
                .await?;
        }
        let r = b
            .replicas
            .append(&ls, s.batch, acks, topic.min_insync_replicas, deadline)
            .await?;
        Ok(Landed {
            partition,
            len,
            records,
            base_offset: r.base_offset,
            log_append_time: r.log_append_time,
            duplicate: r.duplicate,
        })
    });
    let remote_writes = remote.into_iter().map(|(broker, subs)| async move {
        let meta: Vec<(i32, u64, i64)> = subs
            .iter()
            .map(|s| (s.partition, s.batch.len() as u64, s.batch.records()))
            .collect();
        let sent = b
            .forwarder
            .produce(
                broker,
                name,
                subs.into_iter()
                    .map(|s| (s.partition, s.batch.to_bytes()))
                    .collect(),
                transaction,
                acks,
                deadline,
            )
            .await;
        meta.into_iter()
            .zip(sent)
            .map(|((partition, len, records), r)| {
                r.map(|f| Landed {
                    partition,
                    len,
                    records,
                    base_offset: f.base_offset,
                    log_append_time: f.log_append_time,
                    // The leader does not say; a re-sent duplicate counts
                    // in the byte metrics again.
                    duplicate: false,
                })
            })
            .collect::<Vec<_>>()
    });
    let (local, remote) = futures::join!(join_all(local_writes), join_all(remote_writes));
    out.extend(local);
    out.extend(remote.into_iter().flatten());
    out
}

/// A target's failure as the client's partition reports it: the client
/// addressed a partition whose leader is fine, so a target's leadership
/// trouble must not send it to refresh metadata for nothing; it retries.
fn for_client(topic: &Topic, e: WriteError) -> WriteError {
    let message = format!("routed write to {}: {}", topic.meta.name, e.message);
    let code = match e.code {
        ResponseError::NotLeaderOrFollower
        | ResponseError::LeaderNotAvailable
        | ResponseError::UnknownTopicOrPartition
        | ResponseError::OutOfOrderSequenceNumber => ResponseError::RequestTimedOut,
        other => other,
    };
    WriteError::new(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_reserved_and_distinct() {
        let t = uuid::Uuid::from_u128(7);
        let a = derived_producer_id(t, 0, 42);
        assert_eq!(a, derived_producer_id(t, 0, 42), "same inputs, same id");
        assert!(sluice_storage::producer_state::is_derived(a));
        assert_ne!(a, derived_producer_id(t, 1, 42));
        assert_ne!(a, derived_producer_id(t, 0, 43));
        assert_ne!(a, derived_producer_id(uuid::Uuid::from_u128(8), 0, 42));
    }
}
