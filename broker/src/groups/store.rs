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

use crate::log::records::{self, Producer};
use crate::log::{LogError, PartitionLog, batch, now_ms, validate_batches};
use crate::replication::ReplicaManager;

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

pub struct OffsetStore {
    partitions: Vec<Arc<PartitionLog>>,
    /// Writes go through partition leadership: stamped with the leader
    /// epoch and acknowledged once replicated to the ISR. `None` in unit
    /// tests of the coordinator alone.
    replicas: Option<Arc<ReplicaManager>>,
}

/// How long a group write may wait for the offsets partition's ISR.
const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl OffsetStore {
    pub fn new(partitions: Vec<Arc<PartitionLog>>) -> OffsetStore {
        OffsetStore {
            partitions,
            replicas: None,
        }
    }

    pub fn replicated(
        partitions: Vec<Arc<PartitionLog>>,
        replicas: Arc<ReplicaManager>,
    ) -> OffsetStore {
        OffsetStore {
            partitions,
            replicas: Some(replicas),
        }
    }

    pub fn partition_count(&self) -> usize {
        self.partitions.len()
    }

    fn log_for(&self, group: &str) -> &Arc<PartitionLog> {
        &self.partitions[partition_for(group, self.partitions.len())]
    }

    /// Appends `changes` as one batch and waits until it is on disk and,
    /// in a cluster, on every in-sync replica of the offsets partition.
    pub async fn persist(&self, group: &str, changes: &[Change]) -> Result<(), LogError> {
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
        let buf = records::encode(&records, 0, false, Producer::NONE)?;
        let log = self.log_for(group);
        let batch = validate_batches(buf.freeze(), usize::MAX)?;
        let p = partition_for(group, self.partitions.len()) as i32;
        let leader = match &self.replicas {
            None => None,
            Some(r) => Some(r.leader(OFFSETS_TOPIC, p).ok_or_else(|| {
                LogError::Io(std::io::Error::other(format!(
                    "not the leader of {OFFSETS_TOPIC}-{p} (group '{group}' moved)"
                )))
            })?),
        };
        let epoch = leader.as_ref().map_or(0, |l| l.leader_epoch);
        let info = log.append(batch, epoch)?;
        log.flush_up_to(info.last_offset + 1).await?;
        if let (Some(r), Some(_)) = (&self.replicas, &leader) {
            let deadline = std::time::Instant::now() + COMMIT_TIMEOUT;
            r.wait_committed(OFFSETS_TOPIC, p, epoch, info.last_offset + 1, deadline)
                .await
                .map_err(|e| {
                    LogError::Io(std::io::Error::other(format!(
                        "{OFFSETS_TOPIC}-{p}: not replicated: {e:?}"
                    )))
                })?;
        }
        Ok(())
    }

    /// Replays every partition of the offsets topic into per-group state.
    pub fn load(&self) -> Result<HashMap<String, LoadedGroup>, LogError> {
        self.load_partitions(0..self.partitions.len())
    }

    /// Replays the given partitions (a coordinator taking them over reads
    /// everything its copy has, committed or not yet).
    pub fn load_partitions(
        &self,
        which: impl IntoIterator<Item = usize>,
    ) -> Result<HashMap<String, LoadedGroup>, LogError> {
        let mut groups: HashMap<String, LoadedGroup> = HashMap::new();
        for log in which.into_iter().filter_map(|p| self.partitions.get(p)) {
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
    use crate::log::LogConfig;

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
        let logs: Vec<Arc<PartitionLog>> = (0..3)
            .map(|p| {
                Arc::new(
                    PartitionLog::open(
                        format!("o-{p}"),
                        dir.path().join(format!("o-{p}")),
                        LogConfig::default(),
                    )
                    .expect("open"),
                )
            })
            .collect();
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
        let loaded = OffsetStore::new(logs).load().expect("load");
        let g1 = &loaded["g1"];
        assert_eq!(g1.protocol_type.as_deref(), Some("consumer"));
        assert_eq!(g1.offsets.len(), 1);
        assert_eq!(g1.offsets[&("t".to_string(), 0)].offset, 9);
        assert!(!loaded.contains_key("g2"));
    }
}
