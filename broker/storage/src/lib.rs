//! Sluice's storage: the durable log of one partition, an ordered list of
//! segments in one directory, with its indexes, leader-epoch cache and
//! producer state. Appends go to the last (active) segment, as leader only
//! with a current `LeaderTerm` (replication holds the terms) or as a
//! follower copying the leader's batches verbatim; reads copy whole
//! batches straight from the files; recovery on open cuts a torn tail.
//!
//! Locking: one short `std::sync::Mutex` per partition guards the segment
//! list and offsets. File reads happen outside it on a shared `Arc<File>`
//! (positional reads), and fsyncs run on the blocking pool, so a slow disk
//! never blocks the async workers that serve other partitions.

mod epochs;
pub mod health;
pub mod index;
pub mod producer_state;
mod replica;
pub mod segment;
pub mod txn;

pub use replica::LeaderTerm;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::Notify;

use producer_state::{CompletedTxn, ProducerStates, SequenceCheck, SequenceError};
use segment::{Segment, read_exact_at};
use sluice_protocol::batch::{self, BatchError, BatchHeader, ValidatedBatch};
use sluice_protocol::records::{self, Marker};
use txn::{AbortedTxn, TxnIndex};

/// Storage settings of one partition, resolved from topic config.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub segment_bytes: u64,
    pub segment_ms: i64,
    /// -1: keep forever.
    pub retention_ms: i64,
    /// -1: no size limit.
    pub retention_bytes: i64,
    pub max_message_bytes: usize,
    /// Force an fsync after this many records (i64::MAX: never by count).
    pub flush_messages: i64,
    /// Background fsync interval for dirty data (i64::MAX: leave it to the OS).
    pub flush_ms: i64,
    pub index_interval_bytes: usize,
    pub log_append_time: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            max_message_bytes: 1_048_588,
            flush_messages: i64::MAX,
            flush_ms: 1000,
            index_interval_bytes: 4096,
            log_append_time: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("offset {offset} is out of range [{start}, {end}]")]
    OffsetOutOfRange { offset: i64, start: i64, end: i64 },
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error(transparent)]
    Sequence(#[from] SequenceError),
    /// The term the append carried was revoked: this broker no longer
    /// leads the partition in that epoch.
    #[error("{partition}: not the leader in epoch {epoch}")]
    NotLeader { partition: String, epoch: i32 },
    /// A follower operation on a log this broker leads.
    #[error("{0}: leading this partition; a leader's log is not overwritten from another replica")]
    Leading(String),
    /// A stored batch failed its checks when read: a flipped bit on disk,
    /// or a file changed behind the broker's back.
    #[error(
        "{partition}: corrupt batch at file position {position} of segment {segment} (reading offset {offset}): {reason}"
    )]
    Corrupt {
        partition: String,
        segment: i64,
        offset: i64,
        position: u64,
        reason: String,
        /// The first time this process found this batch corrupt (report
        /// it); later reads of it fail the same way.
        first_report: bool,
    },
    #[error("storage error: {0}")]
    Io(#[from] io::Error),
}

/// A stored batch header must continue the offset chain (`expected` is
/// where the previous batch ended) and fit in the segment.
fn check_header(h: &BatchHeader, expected: i64, at: u64, seg_end: u64) -> Result<(), String> {
    if h.base_offset != expected || h.last_offset_delta < 0 {
        return Err(format!(
            "batch header says offsets {}..={}, expected a batch starting at {expected}",
            h.base_offset,
            h.last_offset()
        ));
    }
    if at + h.len as u64 > seg_end {
        return Err(format!(
            "batch of {} bytes runs past the segment's end ({seg_end})",
            h.len
        ));
    }
    Ok(())
}

/// A stored batch's CRC must match its bytes (`batch` is the whole batch).
fn check_crc(h: &BatchHeader, batch: &[u8]) -> Result<(), String> {
    let computed = batch::compute_crc(batch);
    if computed == h.crc {
        Ok(())
    } else {
        Err(format!(
            "CRC mismatch in the batch at offset {} (stored {:#010x}, computed {computed:#010x})",
            h.base_offset, h.crc
        ))
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Result of an append: the offsets the broker assigned.
#[derive(Debug, Clone, Copy)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    /// -1 unless the topic uses LogAppendTime.
    pub log_append_time: i64,
    pub log_start_offset: i64,
    pub records: i64,
    /// True when `flush.messages` asks the caller to fsync now.
    pub flush_due: bool,
    /// A retried idempotent batch: nothing was written.
    pub duplicate: bool,
}

/// Whole batches read for a fetch.
#[derive(Debug, Clone)]
pub struct ReadResult {
    pub records: Bytes,
    pub high_watermark: i64,
    /// Below it every transaction has ended (see `last_stable_offset`).
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
}

/// Writes a batch as its (stamped) 61-byte header and its records. Small
/// batches are assembled and written with one call; big ones with two,
/// which saves copying megabytes to save a syscall. A crash between the two
/// leaves a torn tail that recovery cuts.
fn write_batch(
    file: &std::fs::File,
    position: u64,
    head: &[u8; batch::HEADER_LEN],
    body: &[u8],
) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    const ASSEMBLE_BELOW: usize = 16 * 1024;
    if head.len() + body.len() < ASSEMBLE_BELOW {
        let mut whole = Vec::with_capacity(head.len() + body.len());
        whole.extend_from_slice(head);
        whole.extend_from_slice(body);
        return file.write_all_at(&whole, position);
    }
    file.write_all_at(head, position)?;
    file.write_all_at(body, position + batch::HEADER_LEN as u64)
}

/// The last offset of the last whole batch in `records`.
fn last_offset_in(records: &[u8]) -> Option<i64> {
    let mut pos = 0;
    let mut last = None;
    while let Ok(h) = batch::parse_header_fields(&records[pos..]) {
        if pos + h.len > records.len() || h.len == 0 {
            break;
        }
        last = Some(h.last_offset());
        pos += h.len;
    }
    last
}

struct LogState {
    segments: Vec<Segment>,
    producers: ProducerStates,
    config: LogConfig,
    records_since_flush: i64,
    last_flush_ms: i64,
    /// The leader epoch this broker appends in, while it leads (see
    /// `replica::LeaderTerm`).
    leading: Option<i32>,
}

impl LogState {
    fn active(&self) -> &Segment {
        // Invariant: a log always has at least one segment.
        &self.segments[self.segments.len() - 1]
    }
    fn active_mut(&mut self) -> &mut Segment {
        let n = self.segments.len();
        &mut self.segments[n - 1]
    }
    fn log_end_offset(&self) -> i64 {
        self.active().next_offset
    }
    fn log_start_offset(&self) -> i64 {
        self.segments[0].base_offset
    }
    /// Never below the log start: retention may have removed the start
    /// of an open transaction (Kafka clamps the same way).
    fn last_stable_offset(&mut self, hw: i64) -> i64 {
        let start = self.log_start_offset();
        self.producers
            .first_unstable_offset(hw)
            .map_or(hw, |first| first.max(start).min(hw))
    }
    /// Must a batch of `bytes` ending at `last_offset` go to a new segment?
    fn needs_roll(&self, now: i64, bytes: u64, last_offset: i64) -> bool {
        let a = self.active();
        a.size > 0
            && (a.size + bytes > self.config.segment_bytes
                || now - a.created_ms >= self.config.segment_ms
                // Index positions are 32-bit.
                || a.size + bytes > u64::from(u32::MAX)
                // So are offsets relative to the segment base (Kafka's
                // rule: a segment spans at most i32::MAX offsets).
                || last_offset - a.base_offset > i64::from(i32::MAX))
    }
    /// Writes a batch (its header `head`, possibly restamped, then the rest
    /// of `bytes`) at the end of the active segment and accounts for it:
    /// indexes, size, producer state, records since the last flush.
    /// `marker` is what a control batch says (`control_marker`).
    fn write_at_end(
        &mut self,
        head: &[u8; batch::HEADER_LEN],
        body: &[u8],
        h: &BatchHeader,
        marker: Option<(Marker, i32)>,
        now: i64,
    ) -> Result<(), LogError> {
        let interval = self.config.index_interval_bytes;
        let active = self.active_mut();
        let start_pos = active.size;
        if let Err(e) = write_batch(&active.file, start_pos, head, body) {
            // Leave no partial batch behind: cut back to the last good end.
            let _ = active.file.set_len(start_pos);
            health::disk().failed(&active.path, h.len, &e);
            return Err(LogError::Io(e));
        }
        health::disk().succeeded(h.len);
        active.track_batch(h, start_pos, interval);
        active.size = start_pos + h.len as u64;
        // Validated on the way in: checked, as far as it was before.
        let _ = active.verified.compare_exchange(
            start_pos,
            active.size,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        let ended = self.producers.record(h, marker, now);
        self.records_since_flush += i64::from(h.records_count);
        if let Some(done) = ended.filter(|t| t.aborted) {
            let active = self.active_mut();
            if let Err(e) = active.txn_index.append(aborted_txn(&done)) {
                // The marker is stored and the entry is in memory (reads
                // are right); the file is rewritten at the next append or
                // seal. The disk is reported unhealthy meanwhile.
                health::disk().failed(&TxnIndex::path_for(&active.path), 34, &e);
            }
        }
        Ok(())
    }
    fn size(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }
}

pub struct PartitionLog {
    name: String,
    dir: PathBuf,
    state: Mutex<LogState>,
    /// Highest offset (exclusive) known to be on disk.
    flushed_offset: AtomicI64,
    flush_lock: tokio::sync::Mutex<()>,
    /// Woken on every append, for long-polling fetches.
    pub appended: Notify,
    /// Committed offset (see `replica.rs`); only read while
    /// `hw_follows_leo` is false.
    high_watermark: AtomicI64,
    hw_follows_leo: std::sync::atomic::AtomicBool,
    epochs: Mutex<epochs::EpochCache>,
    /// Held by the plugin produce path from its sequence check to its
    /// sequence record, so a retried idempotent batch cannot slip past the
    /// check while the first copy is still in the plugins.
    pub plugin_produce: tokio::sync::Mutex<()>,
    /// Corrupt batches already reported, by (segment, position): each is
    /// logged and counted once, however often clients retry the read.
    corruptions: Mutex<std::collections::HashSet<(i64, u64)>>,
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`, recovering the active segment.
    /// `name` is the `topic-partition` used in log lines.
    pub fn open(name: String, dir: PathBuf, config: LogConfig) -> io::Result<PartitionLog> {
        fs::create_dir_all(&dir)?;
        let mut bases: Vec<i64> = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            if let Some(stem) = file_name.strip_suffix(".log") {
                if let Ok(base) = stem.parse::<i64>() {
                    bases.push(base);
                }
            } else if file_name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
        bases.sort_unstable();
        // An aborted-transaction index whose segment is gone (a crash while
        // deleting it) must not be taken up by a new segment at that base.
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "txnindex")
                && !path.with_extension("log").exists()
            {
                let _ = fs::remove_file(&path);
            }
        }
        let now = now_ms();
        let mut segments = Vec::with_capacity(bases.len().max(1));
        let count = bases.len();
        for (i, base) in bases.into_iter().enumerate() {
            let sealed = i + 1 < count;
            let path = Segment::log_path(&dir, base);
            let (mut seg, truncation, rebuilt) =
                Segment::open(path, base, sealed, config.index_interval_bytes, now)?;
            if let Some(t) = truncation {
                tracing::warn!(
                    partition = %name,
                    segment = base,
                    position = t.position,
                    bytes_cut = t.bytes_cut,
                    next_offset = t.next_offset,
                    reason = %t.reason,
                    "truncated corrupt or torn tail of {name} segment {base}: cut {} bytes at position {}, log now ends at offset {}",
                    t.bytes_cut, t.position, t.next_offset
                );
            }
            if rebuilt {
                tracing::info!(partition = %name, segment = base, "rebuilt missing or corrupt index");
                seg.seal()?;
            }
            segments.push(seg);
        }
        // Sealed segments that a truncation left empty-handed would break the
        // offset chain; drop empty segments except the last.
        if segments.is_empty() {
            segments.push(Segment::create(&dir, 0, now)?);
            sync_dir(&dir)?;
        }
        let leo = segments[segments.len() - 1].next_offset;
        let producers = load_producer_state(&name, &dir, &mut segments)?;
        let epochs = epochs::EpochCache::open(&dir, leo)?;
        Ok(PartitionLog {
            name,
            dir,
            state: Mutex::new(LogState {
                segments,
                producers,
                config,
                records_since_flush: 0,
                last_flush_ms: now,
                leading: None,
            }),
            flushed_offset: AtomicI64::new(leo),
            high_watermark: AtomicI64::new(leo),
            hw_follows_leo: std::sync::atomic::AtomicBool::new(true),
            epochs: Mutex::new(epochs),
            corruptions: Mutex::new(std::collections::HashSet::new()),
            flush_lock: tokio::sync::Mutex::new(()),
            appended: Notify::new(),
            plugin_produce: tokio::sync::Mutex::new(()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        // A poisoned lock means a panic mid-update elsewhere; the state is
        // still the last consistent one we wrote, so keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn config(&self) -> LogConfig {
        self.lock().config.clone()
    }
    pub fn set_config(&self, config: LogConfig) {
        self.lock().config = config;
    }
    pub fn log_end_offset(&self) -> i64 {
        self.lock().log_end_offset()
    }
    pub fn log_start_offset(&self) -> i64 {
        self.lock().log_start_offset()
    }
    pub fn size_bytes(&self) -> u64 {
        self.lock().size()
    }

    /// Appends a validated batch as the leader of `term`, assigning
    /// offsets and stamping the term's epoch. The bytes reach the page
    /// cache before this returns, so a process crash cannot lose them. A
    /// retried idempotent batch is not written again: the offsets it got
    /// the first time come back instead.
    pub fn append(&self, batch: ValidatedBatch, term: &LeaderTerm) -> Result<AppendInfo, LogError> {
        let now = now_ms();
        let leader_epoch = term.epoch();
        let mut st = self.lock();
        if st.leading != Some(leader_epoch) {
            return Err(LogError::NotLeader {
                partition: self.name.clone(),
                epoch: leader_epoch,
            });
        }
        let marker = control_marker(&batch.header, batch.head(), batch.body());
        match st
            .producers
            .check(&batch.header, marker.map(|(_, epoch)| epoch))?
        {
            SequenceCheck::Append => {}
            SequenceCheck::Duplicate(original) => {
                return Ok(AppendInfo {
                    base_offset: original.first_offset,
                    last_offset: original.last_offset,
                    log_append_time: if st.config.log_append_time {
                        original.timestamp
                    } else {
                        -1
                    },
                    log_start_offset: st.log_start_offset(),
                    records: 0,
                    flush_due: false,
                    duplicate: true,
                });
            }
        }
        let total = batch.len() as u64;
        let last_offset = st.log_end_offset() + i64::from(batch.header.last_offset_delta);
        if st.needs_roll(now, total, last_offset) {
            self.roll(&mut st, now)?;
        }
        let base_offset = st.log_end_offset();
        let log_append_time = st.config.log_append_time;
        let mut h = batch.header;
        let mut head = *batch.head();
        batch::set_base_offset(&mut head, base_offset);
        batch::set_partition_leader_epoch(&mut head, leader_epoch);
        if log_append_time {
            batch::set_log_append_time(&mut head, batch.body().len(), now);
            h.max_timestamp = now;
        }
        h.base_offset = base_offset;
        st.write_at_end(&head, batch.body(), &h, marker, now)?;
        let flush_due = st.records_since_flush >= st.config.flush_messages;
        let info = AppendInfo {
            base_offset,
            last_offset: h.last_offset(),
            log_append_time: if log_append_time { now } else { -1 },
            log_start_offset: st.log_start_offset(),
            records: i64::from(h.records_count),
            flush_due,
            duplicate: false,
        };
        drop(st);
        self.appended.notify_waiters();
        Ok(info)
    }

    fn roll(&self, st: &mut LogState, now: i64) -> io::Result<()> {
        st.active_mut().seal()?;
        let base = st.log_end_offset();
        // Producer state as of the new segment's base, so a restart replays
        // only the active segment's headers.
        st.producers
            .save_snapshot(&snapshot_path(&self.dir, base))?;
        prune_snapshots(&self.dir, base);
        let seg = Segment::create(&self.dir, base, now)?;
        sync_dir(&self.dir)?;
        st.segments.push(seg);
        // The sealed segment is fully on disk now.
        self.flushed_offset.fetch_max(base, Ordering::AcqRel);
        tracing::debug!(partition = %self.name, base, "rolled segment");
        Ok(())
    }

    /// Makes every record below `offset` durable (fsync). Concurrent callers
    /// share one fsync: whoever holds the lock flushes for all.
    pub async fn flush_up_to(&self, offset: i64) -> io::Result<()> {
        if self.flushed_offset.load(Ordering::Acquire) >= offset {
            return Ok(());
        }
        let _guard = self.flush_lock.lock().await;
        if self.flushed_offset.load(Ordering::Acquire) >= offset {
            return Ok(());
        }
        let (file, end) = {
            let mut st = self.lock();
            st.records_since_flush = 0;
            st.last_flush_ms = now_ms();
            (st.active().file.clone(), st.log_end_offset())
        };
        let synced = tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(io::Error::other)?;
        if let Err(e) = synced {
            health::disk().failed(&self.dir, 0, &e);
            return Err(e);
        }
        self.flushed_offset.fetch_max(end, Ordering::AcqRel);
        Ok(())
    }

    /// The newest batch a producer wrote here, with its epoch.
    pub fn producer_latest(&self, producer_id: i64) -> Option<(i16, producer_state::BatchMeta)> {
        self.lock().producers.latest(producer_id)
    }

    /// Every producer this partition remembers, by id.
    pub fn producers(&self) -> Vec<producer_state::ProducerSummary> {
        self.lock().producers.describe()
    }

    /// Whether `producer_id` has a transaction open here.
    pub fn in_transaction(&self, producer_id: i64) -> bool {
        self.lock().producers.in_transaction(producer_id)
    }

    /// Derived producers of `owner` with a transaction open here (see
    /// `ProducerStates::open_derived_of`).
    pub fn open_derived_of(&self, owner: i64) -> Vec<i64> {
        self.lock().producers.open_derived_of(owner)
    }

    /// Every remembered batch of a producer in one epoch, oldest first.
    pub fn producer_batches(&self, producer_id: i64, epoch: i16) -> Vec<producer_state::BatchMeta> {
        self.lock().producers.batches(producer_id, epoch)
    }

    /// Forgets idempotent producers idle longer than `expiration_ms`.
    /// Also forgets ended transactions every in-sync replica has (on a
    /// follower nothing else does).
    pub fn expire_producers(&self, now: i64, expiration_ms: i64) -> usize {
        let hw = self.high_watermark();
        let mut st = self.lock();
        st.producers.forget_replicated(hw);
        st.producers.expire(now, expiration_ms)
    }

    /// Flushes if `flush.ms` has passed since the last flush and data is dirty.
    pub async fn flush_if_due(&self, now: i64) -> io::Result<bool> {
        let (due, leo) = {
            let st = self.lock();
            (
                now.saturating_sub(st.last_flush_ms) >= st.config.flush_ms,
                st.log_end_offset(),
            )
        };
        if due && self.flushed_offset.load(Ordering::Acquire) < leo {
            self.flush_up_to(leo).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Reads whole batches starting with the one that holds `offset`, up to
    /// `max_bytes` — but always at least one whole batch (KIP-74), so a big
    /// record never stalls a consumer. Batches are never split.
    /// Consumers read committed records only: up to the high watermark.
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadResult, LogError> {
        self.read_upto(offset, max_bytes, self.high_watermark())
    }

    /// Followers read everything the leader has, up to the log end.
    pub fn read_for_replica(&self, offset: i64, max_bytes: usize) -> Result<ReadResult, LogError> {
        self.read_upto(offset, max_bytes, i64::MAX)
    }

    /// Whole batches from the one holding `offset`, up to `max_bytes` (at
    /// least that one batch) and below `limit`. Every batch is checked
    /// before it is served: its header against the offset chain from the
    /// index, and, the first time this process reads it, its CRC (see
    /// `Segment::verified`). A batch that fails is an error naming the
    /// partition, segment and position when it is the first one asked for
    /// (the batches before it are served first), so a consumer never
    /// stalls on an empty answer below the high watermark.
    fn read_upto(&self, offset: i64, max_bytes: usize, limit: i64) -> Result<ReadResult, LogError> {
        let hw = self.high_watermark();
        let (file, base, (entry_relative, hint), seg_end, start, verified, lso) = {
            let mut st = self.lock();
            let lso = st.last_stable_offset(hw);
            let start = st.log_start_offset();
            let end = st.log_end_offset();
            if offset < start || offset > end {
                return Err(LogError::OffsetOutOfRange { offset, start, end });
            }
            if offset >= end.min(limit) {
                return Ok(ReadResult {
                    records: Bytes::new(),
                    high_watermark: hw,
                    last_stable_offset: lso,
                    log_start_offset: start,
                });
            }
            let mut i = st.segments.partition_point(|s| s.base_offset <= offset) - 1;
            // An offset in a gap between segments (a sealed segment whose
            // corrupt tail recovery cut) is served from the next segment, as
            // a consumer would after compaction, rather than stalling on it.
            if offset >= st.segments[i].next_offset && i + 1 < st.segments.len() {
                i += 1;
            }
            let seg = &st.segments[i];
            let relative = (offset - seg.base_offset).max(0) as u32;
            (
                seg.file.clone(),
                seg.base_offset,
                seg.index.entry_for(relative),
                seg.size,
                start,
                seg.verified.clone(),
                lso,
            )
        };
        let corrupt = |position: u64, reason: String| self.corrupt(base, offset, position, reason);
        // Walk batch headers from the index hint to the batch holding
        // `offset`; each must start where the one before ended.
        let mut pos = u64::from(hint);
        let mut expected = base + i64::from(entry_relative);
        let mut header_buf = [0u8; batch::HEADER_LEN];
        let first = loop {
            if pos >= seg_end {
                return Err(corrupt(
                    pos,
                    format!(
                        "the segment ends before offset {offset} (next batch expected at offset {expected})"
                    ),
                ));
            }
            use std::os::unix::fs::FileExt;
            file.read_exact_at(&mut header_buf, pos)?;
            let h = batch::parse_header_fields(&header_buf)
                .map_err(|e| corrupt(pos, format!("unreadable batch header: {e}")))?;
            check_header(&h, expected, pos, seg_end).map_err(|r| corrupt(pos, r))?;
            if h.last_offset() >= offset {
                break h;
            }
            expected = h.next_offset();
            pos += h.len as u64;
        };
        let available = (seg_end - pos) as usize;
        let want = max_bytes.max(first.len).min(available);
        let data = read_exact_at(&file, pos, want)?;
        // Keep whole, sound batches below the limit; check the CRC of those
        // not checked before.
        let mut end = 0usize;
        let mut checked_to = verified.load(Ordering::Acquire);
        let mut failure = None;
        while end < data.len() {
            let at = pos + end as u64;
            let h = match batch::parse_header_fields(&data[end..]) {
                Ok(h) => h,
                // A partial header at the end of what was read.
                Err(_) if data.len() - end < batch::HEADER_LEN => break,
                Err(e) => {
                    failure = Some((at, format!("unreadable batch header: {e}")));
                    break;
                }
            };
            if let Err(reason) = check_header(&h, expected, at, seg_end) {
                failure = Some((at, reason));
                break;
            }
            if end + h.len > data.len() || h.base_offset >= limit {
                break;
            }
            let end_at = at + h.len as u64;
            if end_at > checked_to {
                if let Err(reason) = check_crc(&h, &data[end..end + h.len]) {
                    failure = Some((at, reason));
                    break;
                }
                if at <= checked_to {
                    checked_to = end_at;
                }
            }
            expected = h.next_offset();
            end += h.len;
        }
        verified.fetch_max(checked_to, Ordering::AcqRel);
        if let Some((at, reason)) = failure
            && end == 0
        {
            return Err(corrupt(at, reason));
        }
        let mut data = data;
        data.truncate(end);
        Ok(ReadResult {
            records: Bytes::from(data),
            high_watermark: hw,
            last_stable_offset: lso,
            log_start_offset: start,
        })
    }

    /// The last stable offset: below it every transaction has ended and
    /// its marker is on every in-sync replica; read_committed consumers
    /// read only below it. Without open transactions, the high watermark.
    pub fn last_stable_offset(&self) -> i64 {
        let hw = self.high_watermark();
        self.lock().last_stable_offset(hw)
    }

    /// What a read_committed consumer gets: batches below the last stable
    /// offset, and the aborted transactions overlapping them (whose records
    /// it drops), from the segments' indexes.
    pub fn read_committed(
        &self,
        offset: i64,
        max_bytes: usize,
    ) -> Result<(ReadResult, Vec<AbortedTxn>), LogError> {
        // The aborted transactions below the last stable offset first, in
        // the same critical section that fixes that offset: retention may
        // delete a segment (and its index) before the data is read, and a
        // transaction named but not in the answer costs the client nothing.
        let hw = self.high_watermark();
        let (lso, mut aborted) = {
            let mut st = self.lock();
            let lso = st.last_stable_offset(hw);
            let mut aborted = Vec::new();
            let first = st.segments.partition_point(|s| s.next_offset <= offset);
            for seg in &st.segments[first..] {
                if seg.txn_index.collect(offset, lso, &mut aborted) {
                    break;
                }
            }
            (lso, aborted)
        };
        let read = self.read_upto(offset, max_bytes, lso)?;
        // Name only what overlaps the batches returned.
        let upto = last_offset_in(&read.records).map_or(offset, |last| last + 1);
        aborted.retain(|t| t.first_offset < upto);
        Ok((read, aborted))
    }

    /// The error for a corrupt batch at `position` of segment `segment`,
    /// found reading `offset`; `first_report` only the first time.
    fn corrupt(&self, segment: i64, offset: i64, position: u64, reason: String) -> LogError {
        let first_report = self
            .corruptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((segment, position));
        LogError::Corrupt {
            partition: self.name.clone(),
            segment,
            offset,
            position,
            reason,
            first_report,
        }
    }

    /// Background scrub: checks up to `budget` bytes of sealed segments not
    /// checked yet (oldest first, resuming where the last call stopped):
    /// each batch's header against the offset chain, and its CRC. Returns
    /// the bytes checked, or the first corrupt batch (its `offset` is the
    /// offset the batch should start at: a follower truncates to it and
    /// fetches the rest from the leader again).
    pub fn scrub(&self, budget: usize) -> Result<usize, LogError> {
        type Target = (
            Arc<std::fs::File>,
            i64,
            u64,
            Arc<std::sync::atomic::AtomicU64>,
            Arc<Mutex<Option<(u64, i64)>>>,
        );
        let targets: Vec<Target> = {
            let st = self.lock();
            let sealed = &st.segments[..st.segments.len() - 1];
            sealed
                .iter()
                .filter(|s| s.verified.load(Ordering::Acquire) < s.size)
                .map(|s| {
                    (
                        s.file.clone(),
                        s.base_offset,
                        s.size,
                        s.verified.clone(),
                        s.scrub_cursor.clone(),
                    )
                })
                .collect()
        };
        let mut spent = 0usize;
        for (file, base, size, verified, cursor) in targets {
            let mut cursor = cursor.lock().unwrap_or_else(|e| e.into_inner());
            let (mut pos, mut expected) = cursor.unwrap_or((0, base));
            while pos < size && spent < budget {
                let mut head = [0u8; batch::HEADER_LEN];
                {
                    use std::os::unix::fs::FileExt;
                    file.read_exact_at(&mut head, pos)?;
                }
                let h = batch::parse_header_fields(&head).map_err(|e| {
                    self.corrupt(base, expected, pos, format!("unreadable batch header: {e}"))
                })?;
                check_header(&h, expected, pos, size)
                    .map_err(|r| self.corrupt(base, expected, pos, r))?;
                let bytes = read_exact_at(&file, pos, h.len)?;
                check_crc(&h, &bytes).map_err(|r| self.corrupt(base, expected, pos, r))?;
                pos += h.len as u64;
                expected = h.next_offset();
                spent += h.len;
            }
            *cursor = Some((pos, expected));
            if pos >= size {
                verified.fetch_max(size, Ordering::AcqRel);
            }
            if spent >= budget {
                break;
            }
        }
        Ok(spent)
    }

    /// First offset whose record timestamp is >= `target`, with that
    /// timestamp; `None` if every record is older.
    pub fn offset_for_timestamp(&self, target: i64) -> io::Result<Option<(i64, i64)>> {
        let st = self.lock();
        for seg in &st.segments {
            if seg.max_timestamp < target || seg.size == 0 {
                continue;
            }
            let rel = seg.index.scan_start_for_timestamp(target);
            let mut pos = u64::from(seg.index.position_for(rel));
            while pos < seg.size {
                let h = seg.read_header(pos)?;
                if h.max_timestamp >= target {
                    let bytes = read_exact_at(&seg.file, pos, h.len)?;
                    return Ok(Some(first_record_at_or_after(&bytes, &h, target)));
                }
                pos += h.len as u64;
            }
        }
        Ok(None)
    }

    /// Offset and timestamp of the record with the largest timestamp.
    pub fn max_timestamp_offset(&self) -> io::Result<Option<(i64, i64)>> {
        let st = self.lock();
        let Some(seg) = st
            .segments
            .iter()
            .filter(|s| s.size > 0)
            .max_by_key(|s| s.max_timestamp)
        else {
            return Ok(None);
        };
        let target = seg.max_timestamp;
        let rel = (seg.max_timestamp_batch - seg.base_offset) as u32;
        let mut pos = u64::from(seg.index.position_for(rel));
        while pos < seg.size {
            let h = seg.read_header(pos)?;
            if h.base_offset == seg.max_timestamp_batch {
                let bytes = read_exact_at(&seg.file, pos, h.len)?;
                let (offset, ts) = last_record_with_timestamp(&bytes, &h, target);
                return Ok(Some((offset, ts)));
            }
            pos += h.len as u64;
        }
        Ok(None)
    }

    /// Deletes sealed segments past `retention.ms` (by their newest record)
    /// or beyond `retention.bytes`. The active segment is never deleted.
    pub fn apply_retention(&self, now: i64) -> io::Result<usize> {
        let mut st = self.lock();
        let mut deleted = 0;
        let mut total = st.size() as i64;
        while st.segments.len() > 1 {
            let oldest = &st.segments[0];
            let expired = st.config.retention_ms >= 0
                && oldest.max_timestamp >= 0
                && now - oldest.max_timestamp > st.config.retention_ms;
            let expired_empty = st.config.retention_ms >= 0
                && oldest.max_timestamp < 0
                && now - oldest.created_ms > st.config.retention_ms;
            let over_size = st.config.retention_bytes >= 0
                && total - oldest.size as i64 >= st.config.retention_bytes;
            if !(expired || expired_empty || over_size) {
                break;
            }
            let seg = st.segments.remove(0);
            total -= seg.size as i64;
            seg.delete_files()?;
            deleted += 1;
            tracing::info!(
                partition = %self.name,
                segment = seg.base_offset,
                reason = if over_size { "retention.bytes" } else { "retention.ms" },
                "deleted segment"
            );
        }
        Ok(deleted)
    }

    /// Clean shutdown: data on disk and a producer-state snapshot at the
    /// end of the log, so the restart replays nothing.
    pub fn close(&self) -> io::Result<()> {
        let mut st = self.lock();
        st.active().file.sync_data()?;
        // The snapshot at the log end means no replay at the next start:
        // the active segment's aborted-transaction index must be on disk.
        st.active_mut().txn_index.sync()?;
        sync_dir(&self.dir)?;
        let leo = st.log_end_offset();
        st.producers.save_snapshot(&snapshot_path(&self.dir, leo))?;
        prune_snapshots(&self.dir, leo);
        Ok(())
    }
}

fn snapshot_path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(format!("{}.snapshot", segment::file_stem(offset)))
}

/// Snapshot offsets in `dir`, ascending.
fn snapshot_offsets(dir: &Path) -> Vec<i64> {
    let mut out: Vec<i64> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".snapshot")?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out
}

/// Keeps the two newest snapshots at or below `upto`.
fn prune_snapshots(dir: &Path, upto: i64) {
    let offsets = snapshot_offsets(dir);
    let keep: Vec<i64> = offsets
        .iter()
        .copied()
        .filter(|&o| o <= upto)
        .rev()
        .take(2)
        .collect();
    for o in offsets {
        if !keep.contains(&o) {
            let _ = fs::remove_file(snapshot_path(dir, o));
        }
    }
}

/// The marker (and its coordinator's epoch) a batch carries if it is a
/// control batch (header `h`, raw header `head`, rest `body`).
fn control_marker(h: &BatchHeader, head: &[u8], body: &[u8]) -> Option<(Marker, i32)> {
    h.is_control().then(|| read_marker(head, body)).flatten()
}

/// The marker a control batch (header `head`, rest `body`) carries; a
/// malformed one ends nothing (logged).
fn read_marker(head: &[u8], body: &[u8]) -> Option<(Marker, i32)> {
    let mut bytes = Vec::with_capacity(head.len() + body.len());
    bytes.extend_from_slice(head);
    bytes.extend_from_slice(body);
    match records::parse_marker(&bytes) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring a malformed control batch");
            None
        }
    }
}

fn aborted_txn(t: &CompletedTxn) -> AbortedTxn {
    AbortedTxn {
        producer_id: t.producer_id,
        first_offset: t.first_offset,
        last_offset: t.last_offset,
        last_stable_offset: t.last_stable_offset,
    }
}

/// Newest valid snapshot at or below the log end, then every batch header
/// after it (and the markers of control batches, whose aborted
/// transactions go back into the segments' indexes). Snapshots beyond the
/// end (the tail was truncated) are dropped.
fn load_producer_state(
    name: &str,
    dir: &Path,
    segments: &mut [Segment],
) -> io::Result<ProducerStates> {
    let leo = segments[segments.len() - 1].next_offset;
    let start = segments[0].base_offset;
    let mut state = ProducerStates::default();
    let mut from = start;
    for o in snapshot_offsets(dir).into_iter().rev() {
        if o > leo || o < start {
            let _ = fs::remove_file(snapshot_path(dir, o));
            continue;
        }
        if let Some(s) = ProducerStates::load_snapshot(&snapshot_path(dir, o)) {
            state = s;
            from = o;
            break;
        }
        tracing::warn!(partition = %name, offset = o, "ignoring corrupt producer-state snapshot");
    }
    let now = now_ms();
    for seg in segments.iter_mut().filter(|s| s.next_offset > from) {
        seg.txn_index.truncate_from(from)?;
        let mut pos = u64::from(
            seg.index
                .position_for(from.saturating_sub(seg.base_offset).max(0) as u32),
        );
        while pos < seg.size {
            let h = seg.read_header(pos)?;
            if h.base_offset >= from {
                let marker = if h.is_control() {
                    let bytes = read_exact_at(&seg.file, pos, h.len)?;
                    let (head, body) = bytes.split_at(batch::HEADER_LEN);
                    read_marker(head, body)
                } else {
                    None
                };
                if let Some(done) = state.record(&h, marker, now).filter(|t| t.aborted) {
                    seg.txn_index.append(aborted_txn(&done))?;
                }
            }
            pos += h.len as u64;
        }
        // Rewritten indexes are durable before a later snapshot can make
        // the next start skip this replay.
        seg.txn_index.sync()?;
    }
    sync_dir(dir)?;
    Ok(state)
}

fn first_record_at_or_after(bytes: &[u8], h: &BatchHeader, target: i64) -> (i64, i64) {
    if h.is_log_append_time() {
        return (h.base_offset, h.max_timestamp);
    }
    record_times(bytes, h)
        .into_iter()
        .find(|(ts, _)| *ts >= target)
        .map(|(ts, off)| (off, ts))
        .unwrap_or((h.base_offset, h.max_timestamp))
}

fn last_record_with_timestamp(bytes: &[u8], h: &BatchHeader, target: i64) -> (i64, i64) {
    if h.is_log_append_time() {
        return (h.last_offset(), h.max_timestamp);
    }
    record_times(bytes, h)
        .into_iter()
        .rev()
        .find(|(ts, _)| *ts == target)
        .map(|(ts, off)| (off, ts))
        .unwrap_or((h.last_offset(), h.max_timestamp))
}

/// (timestamp, offset) of every record in a batch; compressed batches are
/// decoded (a cold path: timestamp lookups only).
fn record_times(bytes: &[u8], h: &BatchHeader) -> Vec<(i64, i64)> {
    if h.compression() == 0 {
        return batch::record_timestamps(bytes, h).unwrap_or_default();
    }
    // Bounded decompression: a batch that inflates past the limit is
    // treated as having no usable timestamps rather than exhausting memory.
    match records::decode_entries(bytes) {
        Ok((h, entries)) => entries
            .iter()
            .map(|(delta, r)| (r.timestamp, h.base_offset + i64::from(*delta)))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "could not decode batch for timestamp lookup");
            Vec::new()
        }
    }
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Shared handle used across the broker.
pub type SharedLog = Arc<PartitionLog>;

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::Compression;
    use sluice_protocol::batch::tests::{encoded_batch, producer_batch};
    use sluice_protocol::batch::validate_produce as validate_batches;

    fn small_segments() -> LogConfig {
        LogConfig {
            segment_bytes: 1024,
            index_interval_bytes: 100,
            ..LogConfig::default()
        }
    }

    /// Leads `log` in `epoch` (idempotent for the current epoch).
    fn lead(log: &PartitionLog, epoch: i32) -> LeaderTerm {
        log.lead(epoch).expect("lead")
    }

    fn append_n(log: &PartitionLog, batches: usize, per_batch: usize, ts: i64) {
        for i in 0..batches {
            let b = encoded_batch(per_batch, Compression::None, ts + (i * per_batch) as i64);
            let v = validate_batches(b.freeze(), 1 << 20).expect("valid");
            log.append(v, &lead(log, 0)).expect("append");
        }
    }

    fn offsets_in(bytes: &[u8]) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < bytes.len() {
            let h = batch::parse_and_verify(&bytes[pos..]).expect("whole valid batch");
            out.push((h.base_offset, h.last_offset()));
            pos += h.len;
        }
        out
    }

    #[test]
    fn fetch_from_middle_of_batch_returns_whole_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = PartitionLog::open("t-0".into(), dir.path().join("t-0"), LogConfig::default())
            .expect("open");
        append_n(&log, 3, 10, 1000);
        let r = log.read(15, 1).expect("read");
        // max_bytes 1 still yields one whole batch (KIP-74), the one holding 15.
        assert_eq!(offsets_in(&r.records), vec![(10, 19)]);
        assert_eq!(r.high_watermark, 30);
        let r = log.read(0, 1 << 20).expect("read");
        assert_eq!(offsets_in(&r.records), vec![(0, 9), (10, 19), (20, 29)]);
        assert!(log.read(30, 100).expect("at end").records.is_empty());
        assert!(matches!(
            log.read(31, 100),
            Err(LogError::OffsetOutOfRange { .. })
        ));
    }

    #[test]
    fn rolls_segments_and_reopens_with_every_offset_intact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t-0");
        {
            let log =
                PartitionLog::open("t-0".into(), path.clone(), small_segments()).expect("open");
            append_n(&log, 40, 5, 0);
            assert_eq!(log.log_end_offset(), 200);
        }
        let logs: Vec<_> = fs::read_dir(&path)
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".log"))
            .collect();
        assert!(logs.len() > 3, "expected several segments, got {logs:?}");
        assert!(
            logs.iter().all(|n| n.len() == 24),
            "20-digit names: {logs:?}"
        );
        let log = PartitionLog::open("t-0".into(), path, small_segments()).expect("reopen");
        assert_eq!(log.log_end_offset(), 200);
        let mut next = 0;
        while next < 200 {
            let r = log.read(next, 1 << 20).expect("read");
            let got = offsets_in(&r.records);
            assert_eq!(got[0].0, next);
            next = got[got.len() - 1].1 + 1;
        }
    }

    #[test]
    fn torn_tail_is_truncated_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t-0");
        let seg_file = path.join(format!("{}.log", segment::file_stem(0)));
        {
            let log =
                PartitionLog::open("t-0".into(), path.clone(), LogConfig::default()).expect("open");
            append_n(&log, 5, 4, 0);
        }
        let good_len = fs::metadata(&seg_file).expect("meta").len();
        // Half a batch, as a crash mid-write would leave.
        let extra = encoded_batch(4, Compression::None, 0);
        let mut data = fs::read(&seg_file).expect("read");
        data.extend_from_slice(&extra[..extra.len() / 2]);
        fs::write(&seg_file, &data).expect("write");
        let log =
            PartitionLog::open("t-0".into(), path.clone(), LogConfig::default()).expect("reopen");
        assert_eq!(log.log_end_offset(), 20);
        assert_eq!(fs::metadata(&seg_file).expect("meta").len(), good_len);
        // A flipped byte inside the last batch: that batch goes, the rest stays.
        let mut data = fs::read(&seg_file).expect("read");
        let n = data.len();
        data[n - 5] ^= 0x55;
        fs::write(&seg_file, &data).expect("write");
        drop(log);
        let log = PartitionLog::open("t-0".into(), path, LogConfig::default()).expect("reopen");
        assert_eq!(log.log_end_offset(), 16);
        append_n(&log, 1, 4, 0);
        assert_eq!(log.log_end_offset(), 20);
    }

    #[test]
    fn damage_in_a_sealed_segment_is_found_on_read_once_and_the_batches_before_it_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t-0");
        {
            let log =
                PartitionLog::open("t-0".into(), path.clone(), small_segments()).expect("open");
            append_n(&log, 20, 5, 0);
        }
        // Batch 1 of segment 0 (offsets 5..=9): flip a byte of a record.
        let seg0 = path.join(format!("{}.log", segment::file_stem(0)));
        let mut bytes = fs::read(&seg0).expect("read segment");
        let first_len = batch::parse_header_fields(&bytes).expect("header").len;
        let second_len = batch::parse_header_fields(&bytes[first_len..])
            .expect("header")
            .len;
        bytes[first_len + second_len - 3] ^= 0xFF;
        fs::write(&seg0, &bytes).expect("write segment");
        let log = PartitionLog::open("t-0".into(), path.clone(), small_segments()).expect("reopen");
        // Sealed segments are trusted at open; the damage shows on read.
        let r = log.read(0, 1 << 20).expect("the batch before the damage");
        assert_eq!(offsets_in(&r.records), vec![(0, 4)]);
        for expect_first in [true, false] {
            match log.read(5, 1 << 20) {
                Err(LogError::Corrupt {
                    position,
                    first_report,
                    reason,
                    ..
                }) => {
                    assert_eq!(position, first_len as u64);
                    assert_eq!(first_report, expect_first);
                    assert!(reason.contains("CRC mismatch"), "{reason}");
                }
                other => panic!("expected a corrupt batch, got {other:?}"),
            }
        }
        // Undamaged segments read as before.
        assert_eq!(
            offsets_in(&log.read(60, 1).expect("read").records),
            vec![(60, 64)]
        );
        // The background scrub finds it too, with the offset to cut back
        // to; a follower does, and fetches the rest again.
        match log.scrub(usize::MAX) {
            Err(LogError::Corrupt {
                offset, position, ..
            }) => assert_eq!((offset, position), (5, first_len as u64)),
            other => panic!("expected the scrub to find the damage, got {other:?}"),
        }
        log.truncate_to(5).expect("truncate");
        assert_eq!(log.log_end_offset(), 5);
        assert_eq!(log.scrub(usize::MAX).expect("nothing left to find"), 0);
    }

    #[test]
    fn the_scrub_resumes_within_its_budget_and_marks_segments_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t-0");
        {
            let log =
                PartitionLog::open("t-0".into(), path.clone(), small_segments()).expect("open");
            append_n(&log, 20, 5, 0);
        }
        let log = PartitionLog::open("t-0".into(), path.clone(), small_segments()).expect("reopen");
        let mut total = 0;
        let mut calls = 0;
        loop {
            let n = log.scrub(200).expect("intact");
            calls += 1;
            if n == 0 {
                break;
            }
            total += n;
        }
        assert!(calls > 3, "a small budget takes several calls ({calls})");
        let sealed: u64 = {
            let st = log.lock();
            st.segments[..st.segments.len() - 1]
                .iter()
                .map(|s| s.size)
                .sum()
        };
        assert_eq!(total as u64, sealed, "every sealed byte checked once");
    }

    #[test]
    fn corrupt_sealed_index_is_rebuilt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t-0");
        {
            let log =
                PartitionLog::open("t-0".into(), path.clone(), small_segments()).expect("open");
            append_n(&log, 20, 5, 0);
        }
        let index = path.join(format!("{}.index", segment::file_stem(0)));
        fs::write(&index, b"garbage").expect("write");
        fs::remove_file(path.join(format!("{}.timeindex", segment::file_stem(0)))).expect("rm");
        let log = PartitionLog::open("t-0".into(), path.clone(), small_segments()).expect("reopen");
        assert_eq!(log.log_end_offset(), 100);
        assert_eq!(
            offsets_in(&log.read(3, 1).expect("read").records),
            vec![(0, 4)]
        );
        assert!(
            index::load(
                &index,
                &path.join(format!("{}.timeindex", segment::file_stem(0))),
                fs::metadata(path.join(format!("{}.log", segment::file_stem(0))))
                    .expect("meta")
                    .len()
            )
            .is_some()
        );
    }

    #[test]
    fn timestamp_lookups_find_first_record_at_or_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = PartitionLog::open("t-0".into(), dir.path().join("t-0"), small_segments())
            .expect("open");
        // Offsets 0..50 with timestamps 1000..1050 in batches of 5.
        append_n(&log, 10, 5, 1000);
        let gz = encoded_batch(5, Compression::Gzip, 2000);
        log.append(
            validate_batches(gz.freeze(), 1 << 20).expect("valid"),
            &lead(&log, 0),
        )
        .expect("append");
        assert_eq!(log.offset_for_timestamp(0).expect("io"), Some((0, 1000)));
        assert_eq!(
            log.offset_for_timestamp(1023).expect("io"),
            Some((23, 1023))
        );
        assert_eq!(
            log.offset_for_timestamp(1050).expect("io"),
            Some((50, 2000))
        );
        assert_eq!(
            log.offset_for_timestamp(2003).expect("io"),
            Some((53, 2003))
        );
        assert_eq!(log.offset_for_timestamp(5000).expect("io"), None);
        assert_eq!(log.max_timestamp_offset().expect("io"), Some((54, 2004)));
    }

    #[test]
    fn retention_by_bytes_drops_oldest_sealed_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = LogConfig {
            retention_bytes: 2048,
            ..small_segments()
        };
        let log = PartitionLog::open("t-0".into(), dir.path().join("t-0"), cfg).expect("open");
        append_n(&log, 40, 5, now_ms());
        let before = log.size_bytes();
        let deleted = log.apply_retention(now_ms()).expect("retention");
        assert!(deleted > 0);
        assert!(log.size_bytes() < before && log.size_bytes() as i64 <= 2048 + 1024);
        let start = log.log_start_offset();
        assert!(start > 0);
        assert!(matches!(
            log.read(0, 100),
            Err(LogError::OffsetOutOfRange { .. })
        ));
        assert_eq!(
            offsets_in(&log.read(start, 1).expect("read").records)[0].0,
            start
        );
    }

    #[test]
    fn retention_by_time_uses_newest_record_of_a_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = LogConfig {
            retention_ms: 60_000,
            ..small_segments()
        };
        let log = PartitionLog::open("t-0".into(), dir.path().join("t-0"), cfg).expect("open");
        let old = now_ms() - 3_600_000;
        append_n(&log, 20, 5, old);
        append_n(&log, 20, 5, now_ms());
        log.apply_retention(now_ms()).expect("retention");
        let start = log.log_start_offset();
        assert!(
            start > 0 && start <= 100,
            "old segments gone, new kept: start {start}"
        );
    }

    #[test]
    fn log_append_time_overrides_producer_timestamps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = LogConfig {
            log_append_time: true,
            ..LogConfig::default()
        };
        let log = PartitionLog::open("t-0".into(), dir.path().join("t-0"), cfg).expect("open");
        let before = now_ms();
        let b = encoded_batch(3, Compression::None, 5);
        let info = log
            .append(
                validate_batches(b.freeze(), 1 << 20).expect("valid"),
                &lead(&log, 0),
            )
            .expect("append");
        assert!(info.log_append_time >= before);
        let r = log.read(0, 1 << 20).expect("read");
        let h = batch::parse_and_verify(&r.records).expect("crc recomputed");
        assert!(h.is_log_append_time());
        assert_eq!(h.max_timestamp, info.log_append_time);
    }

    /// Small batches are written assembled, big ones as stamped header plus
    /// untouched body; both must read back as valid batches whose records
    /// are the producer's bytes, and survive a reopen's CRC scan.
    #[test]
    fn small_and_big_batches_are_stored_byte_for_byte() {
        for log_append_time in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let cfg = LogConfig {
                log_append_time,
                ..LogConfig::default()
            };
            let path = dir.path().join("t-0");
            let log = PartitionLog::open("t-0".into(), path.clone(), cfg.clone()).expect("open");
            let small = encoded_batch(3, Compression::None, 5).freeze();
            let big = encoded_batch(5000, Compression::None, 5).freeze();
            assert!(big.len() > 64 * 1024, "big batch is {} bytes", big.len());
            for b in [&small, &big, &small] {
                log.append(
                    validate_batches(b.clone(), 1 << 24).expect("valid"),
                    &lead(&log, 7),
                )
                .expect("append");
            }
            drop(log);
            let log = PartitionLog::open("t-0".into(), path, cfg).expect("reopen");
            let r = log.read(0, 1 << 24).expect("read");
            let mut pos = 0;
            for (sent, base) in [(&small, 0i64), (&big, 3), (&small, 5003)] {
                let h = batch::parse_and_verify(&r.records[pos..]).expect("valid stored batch");
                assert_eq!(h.base_offset, base);
                assert_eq!(h.is_log_append_time(), log_append_time);
                assert_eq!(&r.records[pos + 12..pos + 16], &7i32.to_be_bytes());
                assert_eq!(&r.records[pos + 61..pos + h.len], &sent[61..]);
                pos += h.len;
            }
            assert_eq!(pos, r.records.len());
        }
    }

    fn append_idempotent(
        log: &PartitionLog,
        pid: i64,
        epoch: i16,
        seq: i32,
        n: usize,
    ) -> Result<AppendInfo, LogError> {
        let b = producer_batch(n, Compression::None, 0, pid, epoch, seq);
        log.append(validate_batches(b.freeze(), 1 << 20)?, &lead(log, 0))
    }

    #[test]
    fn idempotent_retries_get_original_offsets_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t-0");
        {
            let log =
                PartitionLog::open("t-0".into(), path.clone(), small_segments()).expect("open");
            // Enough batches to roll segments (and write snapshots) on the way.
            for i in 0..30 {
                let info = append_idempotent(&log, 42, 0, i * 3, 3).expect("append");
                assert!(!info.duplicate);
            }
            let retry = append_idempotent(&log, 42, 0, 87, 3).expect("retry");
            assert!(retry.duplicate);
            assert_eq!((retry.base_offset, retry.last_offset), (87, 89));
            assert_eq!(log.log_end_offset(), 90);
        }
        // Crash-style reopen (no clean close): snapshot from the last roll
        // plus the active segment's headers.
        let log = PartitionLog::open("t-0".into(), path.clone(), small_segments()).expect("reopen");
        let retry = append_idempotent(&log, 42, 0, 84, 3).expect("retry after restart");
        assert!(retry.duplicate);
        assert_eq!(retry.base_offset, 84);
        assert!(matches!(
            append_idempotent(&log, 42, 0, 99, 1),
            Err(LogError::Sequence(SequenceError::Gap { expected: 90, .. }))
        ));
        // A producer this partition never saw may start anywhere (Kafka).
        assert!(
            !append_idempotent(&log, 7, 0, 5, 1)
                .expect("unknown")
                .duplicate
        );
        log.close().expect("close");
        drop(log);
        // All snapshots gone: state is rebuilt from every segment.
        for e in fs::read_dir(&path).expect("dir").flatten() {
            if e.file_name().to_string_lossy().ends_with(".snapshot") {
                fs::remove_file(e.path()).expect("rm");
            }
        }
        let log = PartitionLog::open("t-0".into(), path, small_segments()).expect("reopen");
        assert!(
            append_idempotent(&log, 42, 0, 87, 3)
                .expect("dup")
                .duplicate
        );
        assert!(
            !append_idempotent(&log, 42, 0, 90, 3)
                .expect("next")
                .duplicate
        );
        assert_eq!(log.log_end_offset(), 94);
    }

    /// A batch claiming a huge record count. Produce validation refuses it
    /// (it inflates and counts), so the test hands it to `append` directly:
    /// the log must still never let offsets relative to a segment overflow.
    fn claiming_batch(claimed: i32) -> bytes::BytesMut {
        let mut b = encoded_batch(2, Compression::Gzip, 0);
        b[23..27].copy_from_slice(&(claimed - 1).to_be_bytes());
        b[57..61].copy_from_slice(&claimed.to_be_bytes());
        let crc = batch::compute_crc(&b);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    #[test]
    fn segments_roll_before_relative_offsets_overflow() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = PartitionLog::open("t-0".into(), dir.path().join("t-0"), LogConfig::default())
            .expect("open");
        for _ in 0..3 {
            let bytes = claiming_batch(1_500_000_000).freeze();
            assert!(
                validate_batches(bytes.clone(), 1 << 20).is_err(),
                "produce refuses it"
            );
            let batch = ValidatedBatch::unchecked_for_tests(bytes).expect("crc ok");
            log.append(batch, &lead(&log, 0)).expect("append");
        }
        assert_eq!(log.log_end_offset(), 4_500_000_000);
        let segs = fs::read_dir(dir.path().join("t-0"))
            .expect("dir")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
            })
            .count();
        assert_eq!(segs, 3, "each batch needed its own segment");
        let r = log.read(3_000_000_001, 1).expect("read");
        assert_eq!(offsets_in(&r.records), vec![(3_000_000_000, 4_499_999_999)]);
    }

    #[test]
    fn a_gap_between_segments_is_skipped_not_stalled_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t-0");
        {
            let log =
                PartitionLog::open("t-0".into(), path.clone(), small_segments()).expect("open");
            append_n(&log, 20, 5, 0);
        }
        // Corrupt the middle of the first (sealed) segment and drop its
        // index so recovery scans it and cuts it short.
        let seg0 = path.join(format!("{}.log", segment::file_stem(0)));
        let mut data = fs::read(&seg0).expect("read");
        let mid = data.len() / 2;
        data[mid] ^= 0xff;
        fs::write(&seg0, &data).expect("write");
        fs::remove_file(path.join(format!("{}.index", segment::file_stem(0)))).expect("rm");
        let log = PartitionLog::open("t-0".into(), path, small_segments()).expect("reopen");
        let cut_at = {
            let st = log.lock();
            st.segments[0].next_offset
        };
        let second_base = {
            let st = log.lock();
            st.segments[1].base_offset
        };
        assert!(
            cut_at < second_base,
            "recovery left a gap [{cut_at}, {second_base})"
        );
        let r = log.read(cut_at, 1).expect("read in the gap");
        assert_eq!(offsets_in(&r.records)[0].0, second_base);
    }
}

#[cfg(test)]
mod transaction_tests {
    use super::*;
    use crate::txn::tests::aborted;
    use sluice_protocol::batch::tests::{encoded_batch, transactional_batch};
    use sluice_protocol::records::encode_marker;

    fn append(log: &PartitionLog, bytes: bytes::BytesMut) -> AppendInfo {
        let batch = ValidatedBatch::trusted(bytes.freeze()).expect("a valid batch");
        log.append(batch, &log.lead(0).expect("lead"))
            .expect("append")
    }

    fn offsets(records: &Bytes) -> Vec<i64> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < records.len() {
            let h = batch::parse_header_fields(&records[pos..]).expect("header");
            out.extend(h.base_offset..=h.last_offset());
            pos += h.len;
        }
        out
    }

    #[test]
    fn read_committed_stops_at_open_transactions_and_names_aborted_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t-0");
        let log =
            PartitionLog::open("t-0".into(), path.clone(), LogConfig::default()).expect("open");
        log.set_hw_follows_leo(false);
        let plain = encoded_batch(2, kafka_protocol::records::Compression::None, 1_000);
        append(&log, plain); // 0..=1
        append(&log, transactional_batch(3, 1_000, 1, 0, 0)); // 2..=4, producer 1
        append(&log, transactional_batch(2, 1_000, 2, 0, 0)); // 5..=6, producer 2
        log.set_high_watermark(7);
        assert_eq!(log.last_stable_offset(), 2);
        let (read, none) = log.read_committed(0, 1 << 20).expect("read");
        assert_eq!(offsets(&read.records), vec![0, 1]);
        assert_eq!((read.high_watermark, read.last_stable_offset), (7, 2));
        assert!(none.is_empty());
        // read_uncommitted sees everything below the high watermark.
        assert_eq!(
            offsets(&log.read(0, 1 << 20).expect("read").records).len(),
            7
        );

        append(
            &log,
            encode_marker(1, 0, Marker::Abort, 0, 2_000).expect("marker"),
        ); // 7
        append(
            &log,
            encode_marker(2, 0, Marker::Commit, 0, 2_000).expect("marker"),
        ); // 8
        log.set_high_watermark(8);
        // Producer 2's commit marker is not replicated yet.
        assert_eq!(log.last_stable_offset(), 5);
        log.set_high_watermark(9);
        assert_eq!(log.last_stable_offset(), 9);
        let (read, ab) = log.read_committed(0, 1 << 20).expect("read");
        assert_eq!(offsets(&read.records), (0..9).collect::<Vec<_>>());
        assert_eq!(ab, vec![aborted(1, 2, 7, 5)]);
        // From past the abort marker, nothing to drop.
        assert!(log.read_committed(8, 1 << 20).expect("read").1.is_empty());

        // A restart without a clean close replays the log: the same answer.
        drop(log);
        let log =
            PartitionLog::open("t-0".into(), path.clone(), LogConfig::default()).expect("reopen");
        log.set_hw_follows_leo(false);
        log.set_high_watermark(9);
        let (_, again) = log.read_committed(0, 1 << 20).expect("read");
        assert_eq!(again, vec![aborted(1, 2, 7, 5)]);
        // So does a truncation below the markers, which drops their entry
        // and leaves both transactions open again.
        log.resign();
        log.truncate_to(7).expect("truncate");
        assert!(log.read_committed(0, 1 << 20).expect("read").1.is_empty());
        assert_eq!(log.last_stable_offset(), 2);
        assert!(!txn::TxnIndex::path_for(&Segment::log_path(&path, 0)).exists());
    }

    #[test]
    fn aborted_transactions_span_segments_and_survive_a_clean_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t-0");
        let config = LogConfig {
            segment_bytes: 200,
            ..LogConfig::default()
        };
        let log = PartitionLog::open("t-0".into(), path.clone(), config.clone()).expect("open");
        // Producer 1's transaction starts in the first segment; batches of
        // others roll the log before its abort marker.
        append(&log, transactional_batch(2, 1_000, 1, 0, 0)); // 0..=1
        for i in 0..6 {
            append(
                &log,
                encoded_batch(3, kafka_protocol::records::Compression::None, 1_000 + i),
            );
        } // 2..=19
        append(
            &log,
            encode_marker(1, 0, Marker::Abort, 0, 2_000).expect("marker"),
        ); // 20
        // A marker for a producer with nothing open ends nothing: no entry.
        append(
            &log,
            encode_marker(2, 0, Marker::Abort, 0, 2_000).expect("marker"),
        ); // 21
        append(&log, transactional_batch(1, 1_000, 1, 0, 2)); // 22, producer 1 again
        assert!(log.lock().segments.len() > 2, "the log rolled");
        let expected = vec![aborted(1, 0, 20, 21)];
        let (read, ab) = log.read_committed(0, 1 << 20).expect("read");
        assert_eq!(ab, expected);
        assert_eq!(
            read.last_stable_offset, 22,
            "producer 1's new transaction is open"
        );
        // Read from the middle: the transaction's marker lies ahead.
        let (_, ab) = log.read_committed(10, 1 << 20).expect("read");
        assert_eq!(ab, expected);
        // A clean close snapshots at the log end: no replay at the next
        // start, so the indexes come from their files.
        log.close().expect("close");
        drop(log);
        let log = PartitionLog::open("t-0".into(), path, config).expect("reopen");
        let (read, ab) = log.read_committed(0, 1 << 20).expect("read");
        assert_eq!(ab, expected);
        assert_eq!(
            read.last_stable_offset, 22,
            "the open transaction came back"
        );
    }
}
