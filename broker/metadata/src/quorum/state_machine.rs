//! The quorum's state machine: the metadata image, rebuilt from the last
//! snapshot plus the committed log on start, and published to the rest of
//! the broker through a watch channel after every applied batch.

use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::TypeConfig;
use super::log_store::{read_json, write_json_atomic};
use crate::image::{CommandResult, MetadataImage};

type NodeId = u64;
const SNAPSHOT_FILE: &str = "snapshot.json";

/// What the rest of the broker sees: the image and the log index it
/// reflects (so a proposer can wait until its own write is visible).
#[derive(Debug, Clone, Default)]
pub struct MetadataView {
    pub applied_index: u64,
    pub image: Arc<MetadataImage>,
}

#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Mutex<Inner>>,
    publish: watch::Sender<MetadataView>,
}

struct Inner {
    dir: PathBuf,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    image: MetadataImage,
    snapshot: Option<StoredSnapshot>,
}

#[derive(Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    image: MetadataImage,
}

impl StateMachineStore {
    /// Starts from the last snapshot on disk, if any.
    pub fn open(dir: &Path) -> io::Result<(StateMachineStore, watch::Receiver<MetadataView>)> {
        let snapshot: Option<StoredSnapshot> = read_json(&dir.join(SNAPSHOT_FILE))?;
        let (image, last_applied, membership) = match &snapshot {
            Some(s) => (
                s.image.clone(),
                s.meta.last_log_id,
                s.meta.last_membership.clone(),
            ),
            None => (MetadataImage::default(), None, StoredMembership::default()),
        };
        let view = MetadataView {
            applied_index: last_applied.map_or(0, |l| l.index),
            image: Arc::new(image.clone()),
        };
        let (publish, rx) = watch::channel(view);
        Ok((
            StateMachineStore {
                inner: Arc::new(Mutex::new(Inner {
                    dir: dir.to_path_buf(),
                    last_applied,
                    membership,
                    image,
                    snapshot,
                })),
                publish,
            },
            rx,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, inner: &Inner) {
        self.publish.send_replace(MetadataView {
            applied_index: inner.last_applied.map_or(0, |l| l.index),
            image: Arc::new(inner.image.clone()),
        });
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let mut inner = self.lock();
        let last = inner.last_applied;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: inner.membership.clone(),
            snapshot_id: last.map_or_else(
                || "empty".to_string(),
                |l| format!("{}-{}", l.leader_id, l.index),
            ),
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            image: inner.image.clone(),
        };
        let data = serde_json::to_vec(&stored.image)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        write_json_atomic(&inner.dir.join(SNAPSHOT_FILE), &stored, true)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        inner.snapshot = Some(stored);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let inner = self.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.lock();
        let mut results = Vec::new();
        for entry in entries {
            inner.last_applied = Some(entry.log_id);
            let result = match entry.payload {
                EntryPayload::Blank => Ok(crate::image::Applied::Done),
                EntryPayload::Normal(ref command) => {
                    let r = inner.image.apply(command);
                    if let Err(e) = &r {
                        tracing::debug!(index = entry.log_id.index, error = %e, "metadata command refused");
                    }
                    r
                }
                EntryPayload::Membership(ref m) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    Ok(crate::image::Applied::Done)
                }
            };
            results.push(result);
        }
        self.publish(&inner);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let image: MetadataImage = serde_json::from_slice(snapshot.get_ref())
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            image: image.clone(),
        };
        let mut inner = self.lock();
        write_json_atomic(&inner.dir.join(SNAPSHOT_FILE), &stored, true)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        inner.image = image;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.snapshot = Some(stored);
        self.publish(&inner);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let inner = self.lock();
        let Some(stored) = &inner.snapshot else {
            return Ok(None);
        };
        let data = serde_json::to_vec(&stored.image)
            .map_err(|e| StorageIOError::read_snapshot(Some(stored.meta.signature()), &e))?;
        Ok(Some(Snapshot {
            meta: stored.meta.clone(),
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
