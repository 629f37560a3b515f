//! The quorum's durable log: an append-only file of CRC-framed JSON entries,
//! the vote in its own atomically replaced file, and an in-memory index of
//! the entries. Metadata entries are few and small (snapshots purge them),
//! so truncation and purging rewrite the file rather than keep an offset
//! index: simple and obviously crash-safe (write, fsync, rename).
//!
//! Frame: `[len: u32][crc32c(payload): u32][payload]`. A torn last frame
//! (short or bad CRC) is where a crash interrupted an append that was never
//! acknowledged; recovery cuts the file there.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, StorageError, StorageIOError, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::TypeConfig;
use crate::sync_dir;

type NodeId = u64;
const LOG_FILE: &str = "log";
const VOTE_FILE: &str = "vote.json";
const PURGED_FILE: &str = "purged.json";
const COMMITTED_FILE: &str = "committed.json";

/// Cheap to clone: the reader handed to replication shares the same state.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    dir: PathBuf,
    file: File,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, recovering from a torn append.
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        fs::create_dir_all(dir)?;
        let path = dir.join(LOG_FILE);
        let (entries, valid_len) = read_frames(&path)?;
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        if file.metadata()?.len() > valid_len {
            tracing::warn!(file = %path.display(), keep = valid_len, "quorum log ends in a torn entry; cutting it off");
            file.set_len(valid_len)?;
            file.sync_all()?;
        }
        let mut map = BTreeMap::new();
        for e in entries {
            let e: Entry<TypeConfig> = serde_json::from_slice(&e).map_err(io::Error::other)?;
            map.insert(e.log_id.index, e);
        }
        Ok(LogStore {
            inner: Arc::new(Mutex::new(Inner {
                dir: dir.to_path_buf(),
                file,
                entries: map,
                last_purged: read_json(&dir.join(PURGED_FILE))?,
                vote: read_json(&dir.join(VOTE_FILE))?,
                committed: read_json(&dir.join(COMMITTED_FILE))?,
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    /// Replaces the log file with exactly the entries in memory.
    fn rewrite(&mut self) -> io::Result<()> {
        let tmp = self.dir.join("log.tmp");
        let mut out = File::create(&tmp)?;
        let mut buf = Vec::new();
        for e in self.entries.values() {
            frame_into(&mut buf, e)?;
        }
        out.write_all(&buf)?;
        out.sync_all()?;
        let path = self.dir.join(LOG_FILE);
        fs::rename(&tmp, &path)?;
        sync_dir(&self.dir)?;
        self.file = OpenOptions::new().read(true).append(true).open(&path)?;
        Ok(())
    }
}

fn frame_into(buf: &mut Vec<u8>, entry: &Entry<TypeConfig>) -> io::Result<()> {
    let payload = serde_json::to_vec(entry).map_err(io::Error::other)?;
    let len = u32::try_from(payload.len()).map_err(io::Error::other)?;
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
    buf.extend_from_slice(&payload);
    Ok(())
}

/// The intact frames' payloads and the byte length they cover.
fn read_frames(path: &Path) -> io::Result<(Vec<Vec<u8>>, u64)> {
    let mut data = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut data)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    }
    let mut out = Vec::new();
    let mut pos = 0usize;
    while let Some(header) = data.get(pos..pos + 8) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        let Some(payload) = data.get(pos + 8..pos + 8 + len) else {
            break;
        };
        if crc32c::crc32c(payload) != crc {
            break;
        }
        out.push(payload.to_vec());
        pos += 8 + len;
    }
    Ok((out, pos as u64))
}

pub(super) fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::other(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Write, fsync, rename, fsync the directory: the file is either the old
/// or the new value after a crash, never a mix.
pub(super) fn write_json_atomic<T: Serialize>(
    path: &Path,
    value: &T,
    sync: bool,
) -> io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&bytes)?;
    if sync {
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if sync && let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

fn write_err(e: io::Error) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

/// How soon a write that failed for want of space is tried again.
const NO_SPACE_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// Runs a write of `path`; while it fails for want of space, reports that
/// (logs, readiness, metric) and tries again. The quorum cannot go on
/// without its log, and openraft treats a storage error as fatal: it
/// would stop for good, and the broker with it, even once space is freed.
/// `attempt` must leave nothing half-written when it fails.
async fn until_written<T>(
    path: &Path,
    bytes: usize,
    mut attempt: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    let disk = sluice_storage::health::disk();
    loop {
        match attempt() {
            Ok(v) => {
                disk.succeeded(bytes);
                return Ok(v);
            }
            Err(e) => {
                disk.failed(path, bytes, &e);
                if !sluice_storage::health::is_no_space(&e) {
                    return Err(e);
                }
                tokio::time::sleep(NO_SPACE_RETRY).await;
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        Ok(self
            .lock()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let inner = self.lock();
        let last = inner.entries.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last.or(inner.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let path = self.lock().dir.join(VOTE_FILE);
        until_written(&path, 256, || write_json_atomic(&path, vote, true))
            .await
            .map_err(|e| StorageError::from(StorageIOError::write_vote(&e)))?;
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().vote)
    }

    /// Only a hint that lets a restarted broker re-apply its log at once:
    /// losing it is safe (the leader re-sends the commit index), so it is
    /// not fsynced.
    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        let path = self.lock().dir.join(COMMITTED_FILE);
        until_written(&path, 256, || write_json_atomic(&path, &committed, false))
            .await
            .map_err(write_err)?;
        self.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut buf = Vec::new();
        let mut added = Vec::new();
        for e in entries {
            frame_into(&mut buf, &e).map_err(write_err)?;
            added.push(e);
        }
        let path = self.lock().dir.join(LOG_FILE);
        let result = until_written(&path, buf.len(), || {
            let mut inner = self.lock();
            let len = inner.file.metadata()?.len();
            let written = inner
                .file
                .write_all(&buf)
                .and_then(|()| inner.file.sync_data());
            if written.is_err() {
                // No half entry left behind for the next attempt.
                let _ = inner.file.set_len(len);
            }
            written
        })
        .await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "quorum log append failed");
        }
        let failed = result
            .as_ref()
            .err()
            .map(|e| io::Error::new(e.kind(), e.to_string()));
        if result.is_ok() {
            let mut inner = self.lock();
            for e in added {
                inner.entries.insert(e.log_id.index, e);
            }
        }
        callback.log_io_completed(result);
        match failed {
            Some(e) => Err(write_err(e)),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let path = {
            let mut inner = self.lock();
            let _ = inner.entries.split_off(&log_id.index);
            inner.dir.join(LOG_FILE)
        };
        until_written(&path, 0, || self.lock().rewrite())
            .await
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // Record the purge first: a crash between the two leaves entries
        // that are merely redundant, never a gap.
        let (purged, path) = {
            let inner = self.lock();
            (inner.dir.join(PURGED_FILE), inner.dir.join(LOG_FILE))
        };
        until_written(&purged, 256, || write_json_atomic(&purged, &log_id, true))
            .await
            .map_err(write_err)?;
        {
            let mut inner = self.lock();
            inner.last_purged = Some(log_id);
            inner.entries = inner.entries.split_off(&(log_id.index + 1));
        }
        until_written(&path, 0, || self.lock().rewrite())
            .await
            .map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
            payload: EntryPayload::Blank,
        }
    }

    fn append_raw(dir: &Path, entries: &[Entry<TypeConfig>]) {
        let mut buf = Vec::new();
        for e in entries {
            frame_into(&mut buf, e).expect("frame");
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(LOG_FILE))
            .expect("open");
        f.write_all(&buf).expect("write");
    }

    #[tokio::test]
    async fn torn_tail_is_cut_and_purge_truncate_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        append_raw(dir.path(), &[entry(1), entry(2), entry(3), entry(4)]);
        // A torn fifth frame: header promising more bytes than exist.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(LOG_FILE))
            .expect("open");
        f.write_all(&[0, 0, 1, 0, 1, 2, 3, 4, b'{']).expect("write");
        drop(f);
        let mut store = LogStore::open(dir.path()).expect("open");
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id.map(|l| l.index), Some(4));
        store.purge(entry(1).log_id).await.expect("purge");
        store.truncate(entry(4).log_id).await.expect("truncate");
        drop(store);
        let mut store = LogStore::open(dir.path()).expect("reopen");
        let got: Vec<u64> = store
            .try_get_log_entries(0..100)
            .await
            .expect("read")
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(got, vec![2, 3]);
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(1));
    }

    #[test]
    fn a_flipped_bit_ends_the_log_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        append_raw(dir.path(), &[entry(1), entry(2)]);
        let path = dir.path().join(LOG_FILE);
        let mut bytes = fs::read(&path).expect("read");
        let last = bytes.len() - 2;
        bytes[last] ^= 0x40;
        fs::write(&path, bytes).expect("write");
        let (frames, _) = read_frames(&path).expect("frames");
        assert_eq!(frames.len(), 1);
    }
}
