//! Durable group state: committed offsets and group existence, written as
//! ordinary record batches to the internal `__consumer_offsets` topic (like
//! Kafka) and replayed on startup. A group's records live in partition
//! `abs(javaHashCode(group)) % partitions`, so many brokers can later share
//! the coordinators by partition leadership.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_plugin::Record;

use futures::future::BoxFuture;

use crate::replication::{Acks, ReplicaManager};
use crate::view::Views;
use sluice_metadata::quorum::Quorum;
use sluice_protocol::batch::{self, ValidatedBatch, validate_produce as validate_batches};
use sluice_protocol::records::{self, Producer};
use sluice_storage::{LogError, PartitionLog, now_ms};

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_ms: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Key {
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
    Group {
        group: String,
    },
}

/// A group's persisted description. Written when a group is created
/// (protocol type only) and each time it becomes Stable (the generation and
/// every member's assignment), so a restarted coordinator carries on with
/// the same generation instead of forcing a rebalance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupValue {
    pub protocol_type: String,
    #[serde(default)]
    pub generation: i32,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub leader: Option<String>,
    #[serde(default)]
    pub members: Vec<PersistedMember>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersistedMember {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    /// Subscription metadata for the group's protocol.
    pub metadata: Vec<u8>,
    pub assignment: Vec<u8>,
}

/// One change to persist.
#[derive(Debug, Clone)]
pub enum Change {
    Commit {
        topic: String,
        partition: i32,
        value: CommittedOffset,
    },
    DeleteOffset {
        topic: String,
        partition: i32,
    },
    GroupCreated {
        protocol_type: String,
    },
    GroupMetadata(GroupValue),
    GroupDeleted,
}

/// What replay found for one group.
#[derive(Debug, Default, Clone)]
pub struct LoadedGroup {
    pub protocol_type: Option<String>,
    pub metadata: Option<GroupValue>,
    pub offsets: HashMap<(String, i32), CommittedOffset>,
}

/// Java's `String.hashCode`, so the group → partition mapping matches Kafka's.
pub fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

pub fn partition_for(group: &str, partitions: usize) -> usize {
    (java_hash(group).unsigned_abs() as usize) % partitions.max(1)
}

/// Where a coordinator's group records go: the partitions of
/// `__consumer_offsets`, appended to as their leader. In a broker that is
/// the leader write path (`ReplicatedOffsets`); a unit test can fake it
/// with local logs.
pub trait OffsetsLog: Send + Sync {
    /// Partitions of the offsets topic.
    fn partition_count(&self) -> usize;
    /// The leader epoch of partition `p` if this broker leads it now.
    fn leader_epoch(&self, p: usize) -> Option<i32>;
    /// This broker's log of partition `p`, to load groups from.
    fn log(&self, p: usize) -> Option<Arc<PartitionLog>>;
    /// Appends `batch` to partition `p` as its leader and resolves once it
    /// is durable on every in-sync replica (acks=all).
    fn append(&self, p: usize, batch: ValidatedBatch) -> BoxFuture<'_, Result<(), String>>;
}

/// The offsets topic as the broker writes it: through the leader write
/// path, with acks=all, whatever broker currently leads each partition.
pub struct ReplicatedOffsets {
    pub views: Arc<Views>,
    pub replicas: Arc<ReplicaManager>,
    pub quorum: Arc<Quorum>,
}

/// How long a group write may wait for the offsets partition's ISR.
const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl OffsetsLog for ReplicatedOffsets {
    fn partition_count(&self) -> usize {
        self.views
            .current()
            .image
            .topics
            .get(OFFSETS_TOPIC)
            .map_or(0, |t| t.partitions.len())
    }

    fn leader_epoch(&self, p: usize) -> Option<i32> {
        let view = self.views.current();
        let ls = view.leader(OFFSETS_TOPIC, i32::try_from(p).ok()?)?;
        ls.is_current().then_some(ls.leader_epoch)
    }

    fn log(&self, p: usize) -> Option<Arc<PartitionLog>> {
        self.views
            .current()
            .topic(OFFSETS_TOPIC)?
            .partition(i32::try_from(p).ok()?)
            .cloned()
    }

    fn append(&self, p: usize, batch: ValidatedBatch) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let partition = i32::try_from(p).map_err(|e| e.to_string())?;
            let view = self.views.current();
            let ls = self
                .views
                .leader_for_write(&self.quorum, &view, OFFSETS_TOPIC, partition)
                .await
                .map_err(|e| format!("{OFFSETS_TOPIC}-{p}: {e:?}"))?;
            let min_isr = view
                .topic(OFFSETS_TOPIC)
                .map_or(1, |t| t.min_insync_replicas);
            let deadline = std::time::Instant::now() + COMMIT_TIMEOUT;
            self.replicas
                .append(&ls, batch, Acks::All, min_isr, deadline)
                .await
                .map(|_| ())
                .map_err(|e| format!("{:?}: {}", e.code, e.message))
        })
    }
}

pub struct OffsetStore {
    log: Arc<dyn OffsetsLog>,
}

impl OffsetStore {
    pub fn new(log: Arc<dyn OffsetsLog>) -> OffsetStore {
        OffsetStore { log }
    }

    pub fn partition_count(&self) -> usize {
        self.log.partition_count()
    }

    /// The leader epoch of offsets partition `p`, if led here.
    pub fn leader_epoch(&self, p: usize) -> Option<i32> {
        self.log.leader_epoch(p)
    }

    /// Appends `changes` as one batch and waits until it is on disk and,
    /// in a cluster, on every in-sync replica of the offsets partition.
    pub async fn persist(&self, group: &str, changes: &[Change]) -> Result<(), String> {
        if changes.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let records: Vec<Record> = changes
            .iter()
            .map(|c| {
                let (key, value) = encode_change(group, c);
                Record {
                    timestamp: now,
                    key: Some(key.to_vec().into()),
                    value: value.map(|v| v.to_vec().into()),
                    headers: Vec::new(),
                }
            })
            .collect();
        let buf = records::encode(&records, 0, false, Producer::NONE).map_err(|e| e.to_string())?;
        let batch = validate_batches(buf.freeze(), usize::MAX).map_err(|e| e.to_string())?;
        let p = partition_for(group, self.log.partition_count());
        self.log.append(p, batch).await
    }

    /// Replays the given partitions (a coordinator taking them over reads
    /// everything its copy has, committed or not yet).
    pub fn load_partitions(
        &self,
        which: impl IntoIterator<Item = usize>,
    ) -> Result<HashMap<String, LoadedGroup>, LogError> {
        let mut groups: HashMap<String, LoadedGroup> = HashMap::new();
        for log in which.into_iter().filter_map(|p| self.log.log(p)) {
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
                    let (h, entries) = records::decode_entries(
                        &data[pos..pos + batch::parse_header(&data[pos..])?.len],
                    )?;
                    for (_, r) in entries {
                        apply_record(&mut groups, r.key.as_deref(), r.value.as_deref());
                    }
                    pos += h.len;
                    offset = h.next_offset();
                }
            }
        }
        Ok(groups)
    }
}

/// Local offsets logs this test leads in epoch 0 (no replication).
#[cfg(test)]
pub struct LocalOffsets {
    logs: Vec<(Arc<PartitionLog>, sluice_storage::LeaderTerm)>,
}

#[cfg(test)]
impl LocalOffsets {
    pub fn open(dir: &std::path::Path, partitions: usize) -> Arc<LocalOffsets> {
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
        Arc::new(LocalOffsets { logs })
    }
}

#[cfg(test)]
impl OffsetsLog for LocalOffsets {
    fn partition_count(&self) -> usize {
        self.logs.len()
    }
    fn leader_epoch(&self, p: usize) -> Option<i32> {
        self.logs.get(p).map(|_| 0)
    }
    fn log(&self, p: usize) -> Option<Arc<PartitionLog>> {
        self.logs.get(p).map(|(l, _)| l.clone())
    }
    fn append(&self, p: usize, batch: ValidatedBatch) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let (log, term) = self.logs.get(p).ok_or("no such partition")?;
            let info = log.append(batch, term).map_err(|e| e.to_string())?;
            log.flush_up_to(info.last_offset + 1)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

fn encode_change(group: &str, c: &Change) -> (Bytes, Option<Bytes>) {
    let g = group.to_string();
    let (key, value) = match c {
        Change::Commit {
            topic,
            partition,
            value,
        } => (
            Key::Offset {
                group: g,
                topic: topic.clone(),
                partition: *partition,
            },
            serde_json::to_vec(value).ok(),
        ),
        Change::DeleteOffset { topic, partition } => (
            Key::Offset {
                group: g,
                topic: topic.clone(),
                partition: *partition,
            },
            None,
        ),
        Change::GroupCreated { protocol_type } => (
            Key::Group { group: g },
            serde_json::to_vec(&GroupValue {
                protocol_type: protocol_type.clone(),
                ..GroupValue::default()
            })
            .ok(),
        ),
        Change::GroupMetadata(v) => (Key::Group { group: g }, serde_json::to_vec(v).ok()),
        Change::GroupDeleted => (Key::Group { group: g }, None),
    };
    (
        Bytes::from(serde_json::to_vec(&key).unwrap_or_default()),
        value.map(Bytes::from),
    )
}

fn apply_record(
    groups: &mut HashMap<String, LoadedGroup>,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) {
    let Some(key) = key.and_then(|k| serde_json::from_slice::<Key>(k).ok()) else {
        tracing::warn!("skipping unreadable record in {OFFSETS_TOPIC}");
        return;
    };
    match key {
        Key::Offset {
            group,
            topic,
            partition,
        } => {
            let entry = groups.entry(group).or_default();
            match value.and_then(|v| serde_json::from_slice::<CommittedOffset>(v).ok()) {
                Some(v) => {
                    entry.offsets.insert((topic, partition), v);
                }
                None => {
                    entry.offsets.remove(&(topic, partition));
                }
            }
        }
        Key::Group { group } => {
            match value.and_then(|v| serde_json::from_slice::<GroupValue>(v).ok()) {
                Some(v) => {
                    let entry = groups.entry(group).or_default();
                    entry.protocol_type = Some(v.protocol_type.clone());
                    entry.metadata = Some(v);
                }
                None => {
                    groups.remove(&group);
                }
            }
        }
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

    #[tokio::test]
    async fn commits_and_deletes_replay_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = LocalOffsets::open(dir.path(), 3);
        let store = OffsetStore::new(logs.clone());
        let v = |o| CommittedOffset {
            offset: o,
            leader_epoch: -1,
            metadata: None,
            commit_ms: 1,
        };
        store
            .persist(
                "g1",
                &[
                    Change::GroupCreated {
                        protocol_type: "consumer".into(),
                    },
                    Change::Commit {
                        topic: "t".into(),
                        partition: 0,
                        value: v(5),
                    },
                    Change::Commit {
                        topic: "t".into(),
                        partition: 1,
                        value: v(7),
                    },
                ],
            )
            .await
            .expect("persist");
        store
            .persist(
                "g1",
                &[
                    Change::Commit {
                        topic: "t".into(),
                        partition: 0,
                        value: v(9),
                    },
                    Change::DeleteOffset {
                        topic: "t".into(),
                        partition: 1,
                    },
                ],
            )
            .await
            .expect("persist");
        store
            .persist(
                "g2",
                &[Change::Commit {
                    topic: "t".into(),
                    partition: 0,
                    value: v(1),
                }],
            )
            .await
            .expect("p");
        store
            .persist("g2", &[Change::GroupDeleted])
            .await
            .expect("p");
        let loaded = OffsetStore::new(logs).load_partitions(0..3).expect("load");
        let g1 = &loaded["g1"];
        assert_eq!(g1.protocol_type.as_deref(), Some("consumer"));
        assert_eq!(g1.offsets.len(), 1);
        assert_eq!(g1.offsets[&("t".to_string(), 0)].offset, 9);
        assert!(!loaded.contains_key("g2"));
    }
}
