//! Durable group state: committed offsets and group existence, written as
//! ordinary record batches to the internal `__consumer_offsets` topic (like
//! Kafka) and replayed on startup. A group's records live in partition
//! `abs(javaHashCode(group)) % partitions`, so many brokers can later share
//! the coordinators by partition leadership.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::internal_log::{InternalLog, batch_of, replay};
pub use crate::internal_log::{java_hash, partition_for};
use sluice_storage::LogError;

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
    /// Offsets committed in transactions still open, by producer id.
    pub txn_offsets: HashMap<i64, HashMap<(String, i32), CommittedOffset>>,
}

pub struct OffsetStore {
    log: Arc<dyn InternalLog>,
}

impl OffsetStore {
    pub fn new(log: Arc<dyn InternalLog>) -> OffsetStore {
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
        self.persist_as(group, changes, None).await
    }

    /// Like `persist`, in the open transaction of `producer` (id, epoch):
    /// its commit marker makes the changes count, an abort drops them.
    pub async fn persist_in_transaction(
        &self,
        group: &str,
        changes: &[Change],
        producer: (i64, i16),
    ) -> Result<(), String> {
        self.persist_as(group, changes, Some(producer)).await
    }

    async fn persist_as(
        &self,
        group: &str,
        changes: &[Change],
        producer: Option<(i64, i16)>,
    ) -> Result<(), String> {
        if changes.is_empty() {
            return Ok(());
        }
        let records: Vec<(Vec<u8>, Option<Vec<u8>>)> = changes
            .iter()
            .map(|c| {
                let (key, value) = encode_change(group, c);
                (key.to_vec(), value.map(|v| v.to_vec()))
            })
            .collect();
        let batch = batch_of(&records, producer)?;
        let p = partition_for(group, self.log.partition_count());
        self.log.append(p, batch, None).await
    }

    /// Replays the given partitions (a coordinator taking them over reads
    /// everything its copy has, committed or not yet).
    pub fn load_partitions(
        &self,
        which: impl IntoIterator<Item = usize>,
    ) -> Result<HashMap<String, LoadedGroup>, LogError> {
        let mut groups: HashMap<String, LoadedGroup> = HashMap::new();
        for log in which.into_iter().filter_map(|p| self.log.log(p)) {
            let open = replay(&log, |key, value| apply_record(&mut groups, key, value))?;
            for (producer_id, records) in open {
                for (key, value) in records {
                    apply_pending(&mut groups, producer_id, key.as_deref(), value.as_deref());
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

/// An offset committed in a transaction still open (TxnOffsetCommit).
fn apply_pending(
    groups: &mut HashMap<String, LoadedGroup>,
    producer_id: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) {
    let key = key.and_then(|k| serde_json::from_slice::<Key>(k).ok());
    let value = value.and_then(|v| serde_json::from_slice::<CommittedOffset>(v).ok());
    if let (
        Some(Key::Offset {
            group,
            topic,
            partition,
        }),
        Some(value),
    ) = (key, value)
    {
        groups
            .entry(group)
            .or_default()
            .txn_offsets
            .entry(producer_id)
            .or_default()
            .insert((topic, partition), value);
    }
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

    #[tokio::test]
    async fn commits_and_deletes_replay_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = crate::internal_log::LocalLogs::open(dir.path(), 3);
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
