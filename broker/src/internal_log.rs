//! The broker's own topics (`__consumer_offsets`, `__transaction_state`):
//! a coordinator appends keyed records to the partitions it leads, through
//! the leader write path with acks=all, and replays a partition's records
//! when it takes the partition over. The records are JSON keys and values
//! in ordinary batches, or in a producer's transaction (transactional
//! offset commits), which its commit or abort marker settles. A unit test
//! fakes the topic with local logs.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::replication::{Acks, ReplicaManager};
use crate::view::Views;
use sluice_metadata::quorum::Quorum;
use sluice_plugin::Record;
use sluice_protocol::batch::{self, ValidatedBatch, validate_produce};
use sluice_protocol::records::{self, Marker, Producer};
use sluice_storage::{LogError, PartitionLog, now_ms};

/// Java's `String.hashCode`, so ids map to partitions as in Kafka.
pub fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// The partition of an internal topic that holds `id`'s records (a group
/// id or a transactional id), as Kafka maps them.
pub fn partition_for(id: &str, partitions: usize) -> usize {
    (java_hash(id).unsigned_abs() as usize) % partitions.max(1)
}

/// Where a coordinator's records go: the partitions of one internal topic,
/// appended to as their leader.
pub trait InternalLog: Send + Sync {
    /// Partitions of the topic.
    fn partition_count(&self) -> usize;
    /// The leader epoch of partition `p` if this broker leads it now.
    fn leader_epoch(&self, p: usize) -> Option<i32>;
    /// This broker's log of partition `p`, to replay.
    fn log(&self, p: usize) -> Option<Arc<PartitionLog>>;
    /// Appends `batch` to partition `p` as its leader and resolves once it
    /// is durable on every in-sync replica (acks=all); with `in_epoch`,
    /// only as leader in that epoch (a coordinator that loaded the
    /// partition then, not one that lost and regained it since).
    fn append(
        &self,
        p: usize,
        batch: ValidatedBatch,
        in_epoch: Option<i32>,
    ) -> BoxFuture<'_, Result<(), String>>;
}

/// An internal topic as the broker writes it: through the leader write
/// path, with acks=all, whatever broker currently leads each partition.
pub struct ReplicatedLog {
    pub topic: &'static str,
    pub views: Arc<Views>,
    pub replicas: Arc<ReplicaManager>,
    pub quorum: Arc<Quorum>,
}

/// How long a coordinator's write may wait for the partition's ISR.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl InternalLog for ReplicatedLog {
    fn partition_count(&self) -> usize {
        self.views
            .current()
            .image
            .topics
            .get(self.topic)
            .map_or(0, |t| t.partitions.len())
    }

    fn leader_epoch(&self, p: usize) -> Option<i32> {
        let view = self.views.current();
        let ls = view.leader(self.topic, i32::try_from(p).ok()?)?;
        ls.is_current().then_some(ls.leader_epoch)
    }

    fn log(&self, p: usize) -> Option<Arc<PartitionLog>> {
        self.views
            .current()
            .topic(self.topic)?
            .partition(i32::try_from(p).ok()?)
            .cloned()
    }

    fn append(
        &self,
        p: usize,
        batch: ValidatedBatch,
        in_epoch: Option<i32>,
    ) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let topic = self.topic;
            let partition = i32::try_from(p).map_err(|e| e.to_string())?;
            let view = self.views.current();
            let ls = self
                .views
                .leader_for_write(&self.quorum, &view, topic, partition)
                .await
                .map_err(|e| format!("{topic}-{p}: {e:?}"))?;
            if let Some(e) = in_epoch.filter(|e| *e != ls.leader_epoch) {
                return Err(format!(
                    "{topic}-{p}: led in epoch {} now, not {e}",
                    ls.leader_epoch
                ));
            }
            let min_isr = view.topic(topic).map_or(1, |t| t.min_insync_replicas);
            let deadline = std::time::Instant::now() + WRITE_TIMEOUT;
            self.replicas
                .append(&ls, batch, Acks::All, min_isr, deadline)
                .await
                .map(|_| ())
                .map_err(|e| format!("{:?}: {}", e.code, e.message))
        })
    }
}

/// One batch of keyed records (a `None` value deletes the key), stamped
/// now; written in `producer`'s open transaction (id, epoch) if given.
pub fn batch_of(
    records: &[(Vec<u8>, Option<Vec<u8>>)],
    producer: Option<(i64, i16)>,
) -> Result<ValidatedBatch, String> {
    let now = now_ms();
    let records: Vec<Record> = records
        .iter()
        .map(|(key, value)| Record {
            timestamp: now,
            key: Some(key.as_slice().into()),
            value: value.as_deref().map(Into::into),
            headers: Vec::new(),
        })
        .collect();
    let buf = match producer {
        None => records::encode(&records, 0, false, Producer::NONE),
        Some((id, epoch)) => records::encode_in_transaction(&records, id, epoch),
    }
    .map_err(|e| e.to_string())?;
    validate_produce(buf.freeze(), usize::MAX).map_err(|e| e.to_string())
}

/// A keyed record of an internal topic.
pub type KeyedRecord = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Replays `log` (its whole copy, committed or not yet: a coordinator
/// taking a partition over reads what it has), calling `apply` with each
/// record's key and value in log order. Records written in a producer's
/// transaction are applied where its commit marker is, and dropped at an
/// abort marker; those of transactions still open at the end are
/// returned, by producer id, in order.
pub fn replay(
    log: &PartitionLog,
    mut apply: impl FnMut(Option<&[u8]>, Option<&[u8]>),
) -> Result<HashMap<i64, Vec<KeyedRecord>>, LogError> {
    let mut open: HashMap<i64, Vec<KeyedRecord>> = HashMap::new();
    let mut offset = log.log_start_offset();
    let end = log.log_end_offset();
    while offset < end {
        let read = log.read_for_replica(offset, 1 << 20)?;
        if read.records.is_empty() {
            break;
        }
        let data = &read.records;
        let mut pos = 0;
        while pos < data.len() {
            let len = batch::parse_header(&data[pos..])?.len;
            let bytes = &data[pos..pos + len];
            let (h, entries) = records::decode_entries(bytes)?;
            if h.is_control() {
                let pending = open.remove(&h.producer_id).unwrap_or_default();
                if records::parse_marker(bytes)?.map(|(m, _)| m) == Some(Marker::Commit) {
                    for (k, v) in &pending {
                        apply(k.as_deref(), v.as_deref());
                    }
                }
            } else if h.is_transactional() {
                open.entry(h.producer_id)
                    .or_default()
                    .extend(entries.iter().map(|(_, r)| {
                        (
                            r.key.as_deref().map(<[u8]>::to_vec),
                            r.value.as_deref().map(<[u8]>::to_vec),
                        )
                    }));
            } else {
                for (_, r) in entries {
                    apply(r.key.as_deref(), r.value.as_deref());
                }
            }
            pos += len;
            offset = h.next_offset();
        }
    }
    Ok(open)
}

/// Local logs a test leads in epoch 0 (no replication).
#[cfg(test)]
pub struct LocalLogs {
    logs: Vec<(Arc<PartitionLog>, sluice_storage::LeaderTerm)>,
}

#[cfg(test)]
impl LocalLogs {
    pub fn open(dir: &std::path::Path, partitions: usize) -> Arc<LocalLogs> {
        let logs = (0..partitions)
            .map(|p| {
                let log = PartitionLog::open(
                    format!("o-{p}"),
                    dir.join(format!("o-{p}")),
                    sluice_storage::LogConfig::default(),
                )
                .expect("open");
                let term = log.lead(0).expect("lead");
                (Arc::new(log), term)
            })
            .collect();
        Arc::new(LocalLogs { logs })
    }
}

#[cfg(test)]
impl InternalLog for LocalLogs {
    fn partition_count(&self) -> usize {
        self.logs.len()
    }
    fn leader_epoch(&self, p: usize) -> Option<i32> {
        self.logs.get(p).map(|_| 0)
    }
    fn log(&self, p: usize) -> Option<Arc<PartitionLog>> {
        self.logs.get(p).map(|(l, _)| l.clone())
    }
    fn append(
        &self,
        p: usize,
        batch: ValidatedBatch,
        _in_epoch: Option<i32>,
    ) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let (log, term) = self.logs.get(p).ok_or("no such partition")?;
            let info = log.append(batch, term).map_err(|e| e.to_string())?;
            log.flush_up_to(info.last_offset + 1)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_hash_matches_kafka() {
        // Values from java.lang.String#hashCode.
        assert_eq!(java_hash(""), 0);
        assert_eq!(java_hash("a"), 97);
        assert_eq!(java_hash("my-group"), -1_906_497_762);
        assert!(partition_for("my-group", 50) < 50);
    }
}
