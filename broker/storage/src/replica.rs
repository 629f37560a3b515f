//! What replication needs from a partition log: the high watermark, the
//! leader epoch cache, appending a leader's batches verbatim on a follower,
//! and cutting a divergent tail.

use std::io;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::segment::Segment;
use super::{
    LogError, PartitionLog, load_producer_state, now_ms, prune_snapshots, snapshot_offsets,
    snapshot_path,
};
use sluice_protocol::batch::{self, BatchHeader};

/// The right to append to a log as its leader in one leader epoch. Only
/// [`PartitionLog::lead`] makes one, and [`PartitionLog::resign`] (or a
/// newer `lead`) revokes it: an append carrying a revoked term fails. So a
/// broker that stopped leading can never write into the log its fetcher
/// now fills from the new leader, and code without a term (anything but
/// replication's leader write path) cannot append at all.
#[derive(Debug)]
pub struct LeaderTerm {
    epoch: i32,
}

impl LeaderTerm {
    pub fn epoch(&self) -> i32 {
        self.epoch
    }
}

impl PartitionLog {
    /// Offset below which records are committed (replicated to the whole
    /// ISR): what consumers may read. Equal to the log end while this
    /// partition is its own only in-sync replica.
    pub fn high_watermark(&self) -> i64 {
        if self.hw_follows_leo.load(Ordering::Acquire) {
            return self.log_end_offset();
        }
        self.high_watermark.load(Ordering::Acquire)
    }

    /// Whether the high watermark simply tracks the log end (a leader
    /// alone in its ISR) or is set by replication.
    pub fn set_hw_follows_leo(&self, follows: bool) {
        if follows {
            self.high_watermark
                .store(self.log_end_offset(), Ordering::Release);
        }
        self.hw_follows_leo.store(follows, Ordering::Release);
        self.appended.notify_waiters();
    }

    /// Moves the high watermark (never past the log end). Wakes waiting
    /// fetches and acks=all producers when it advances.
    pub fn set_high_watermark(&self, hw: i64) {
        let hw = hw.min(self.log_end_offset());
        let old = self.high_watermark.swap(hw, Ordering::AcqRel);
        if hw > old {
            self.appended.notify_waiters();
        }
    }

    /// The newest leader epoch this log has records (or a start) for.
    pub fn latest_epoch(&self) -> i32 {
        self.epochs().latest_epoch()
    }

    /// Starts leading in `epoch`: records that the epoch begins at the
    /// current log end and returns the term appends must carry. Revokes
    /// any older term.
    pub fn lead(&self, epoch: i32) -> io::Result<LeaderTerm> {
        let mut st = self.lock();
        let leo = st.log_end_offset();
        self.epochs().assign(epoch, leo)?;
        st.leading = Some(epoch);
        Ok(LeaderTerm { epoch })
    }

    /// Stops leading: every term handed out is revoked, so no append as
    /// leader can land after this returns. Wakes waiters (acks=all) so they
    /// notice.
    pub fn resign(&self) {
        self.lock().leading = None;
        self.appended.notify_waiters();
    }

    /// The epoch this broker leads the partition in, if it does.
    pub fn leading_epoch(&self) -> Option<i32> {
        self.lock().leading
    }

    /// OffsetForLeaderEpoch: (largest known epoch <= `epoch`, its end offset).
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        let leo = self.log_end_offset();
        self.epochs().end_offset_for(epoch, leo)
    }

    /// True once some leader epoch is recorded.
    pub fn has_epochs(&self) -> bool {
        !self.epochs().is_empty()
    }

    fn epochs(&self) -> std::sync::MutexGuard<'_, super::epochs::EpochCache> {
        self.epochs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends batches fetched from the leader exactly as the leader stored
    /// them (offsets, epochs, timestamps), after checking each one's CRC.
    /// Batches the log already has are skipped; a gap is an error. Returns
    /// the new log end.
    pub fn append_replica(&self, records: &Bytes) -> Result<i64, LogError> {
        let mut pos = 0usize;
        let mut appended = false;
        while pos + batch::HEADER_LEN <= records.len() {
            let Ok(h) = batch::parse_header_fields(&records[pos..]) else {
                break;
            };
            // A fetch may end in a partial batch; the next fetch resends it.
            if pos + h.len > records.len() {
                break;
            }
            let bytes = records.slice(pos..pos + h.len);
            pos += h.len;
            let verified = batch::parse_and_verify(&bytes)?;
            self.append_verbatim(&bytes, &verified)?;
            appended = true;
        }
        if appended {
            self.appended.notify_waiters();
        }
        Ok(self.log_end_offset())
    }

    fn append_verbatim(&self, bytes: &Bytes, h: &BatchHeader) -> Result<(), LogError> {
        let now = now_ms();
        let mut st = self.lock();
        if st.leading.is_some() {
            return Err(LogError::Leading(self.name.clone()));
        }
        let leo = st.log_end_offset();
        if h.last_offset() < leo {
            return Ok(());
        }
        if h.base_offset != leo {
            return Err(LogError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: leader sent a batch at offset {} but this replica ends at {leo}",
                    self.name, h.base_offset
                ),
            )));
        }
        if st.needs_roll(now, h.len as u64, h.last_offset()) {
            self.roll(&mut st, now)?;
        }
        // Verbatim: the leader's header, offsets and epoch included.
        let mut head = [0u8; batch::HEADER_LEN];
        head.copy_from_slice(&bytes[..batch::HEADER_LEN]);
        let body = &bytes[batch::HEADER_LEN..];
        let marker = super::control_marker(h, &head, body);
        st.write_at_end(&head, body, h, marker, now)?;
        drop(st);
        if h.partition_leader_epoch > self.latest_epoch() {
            self.epochs()
                .assign(h.partition_leader_epoch, h.base_offset)?;
        }
        Ok(())
    }

    /// Cuts the log back to `offset` (exclusive): whole batches at or past
    /// it are removed, with their index entries, producer state and epochs.
    /// A follower does this before fetching from a new leader.
    pub fn truncate_to(&self, offset: i64) -> io::Result<()> {
        let mut st = self.lock();
        if offset >= st.log_end_offset() {
            return Ok(());
        }
        if st.leading.is_some() {
            return Err(io::Error::other(LogError::Leading(self.name.clone())));
        }
        let from = st.log_end_offset();
        while st.segments.len() > 1 && st.active().base_offset >= offset {
            if let Some(seg) = st.segments.pop() {
                seg.delete_files()?;
            }
        }
        if st.active().base_offset >= offset {
            // Everything goes: start over, empty, at `offset`.
            if let Some(seg) = st.segments.pop() {
                seg.delete_files()?;
            }
            let base = offset.max(0);
            st.segments
                .push(Segment::create(&self.dir, base, now_ms())?);
        } else {
            let active = st.active_mut();
            cut_segment(active, offset)?;
            // A sealed segment that became active again must not keep the
            // index files saved when it was sealed.
            let _ = std::fs::remove_file(active.path.with_extension("index"));
            let _ = std::fs::remove_file(active.path.with_extension("timeindex"));
        }
        super::sync_dir(&self.dir)?;
        let leo = st.log_end_offset();
        for o in snapshot_offsets(&self.dir) {
            if o > leo {
                let _ = std::fs::remove_file(snapshot_path(&self.dir, o));
            }
        }
        prune_snapshots(&self.dir, leo);
        // What producers wrote before the cut is still here: rebuild their
        // state from the log (Kafka reloads it the same way), rather than
        // forgetting every producer whose recent batches were cut.
        let super::LogState {
            segments,
            producers,
            ..
        } = &mut *st;
        *producers = load_producer_state(&self.name, &self.dir, segments)?;
        drop(st);
        self.flushed_offset.fetch_min(leo, Ordering::AcqRel);
        self.high_watermark.fetch_min(leo, Ordering::AcqRel);
        self.epochs().truncate_from_end(leo)?;
        tracing::info!(partition = %self.name, from, to = leo, "truncated divergent log tail");
        Ok(())
    }
}

impl PartitionLog {
    /// Empties the log and starts it over at `start`: a follower whose log
    /// ends before the leader's log start (the leader's retention removed
    /// what the follower would fetch next) can only begin again there, like
    /// Kafka's truncate-fully-and-start-at.
    pub fn reset_to(&self, start: i64) -> io::Result<()> {
        let mut st = self.lock();
        if st.leading.is_some() {
            return Err(io::Error::other(LogError::Leading(self.name.clone())));
        }
        let from = st.log_end_offset();
        for seg in std::mem::take(&mut st.segments) {
            seg.delete_files()?;
        }
        st.segments
            .push(Segment::create(&self.dir, start.max(0), now_ms())?);
        super::sync_dir(&self.dir)?;
        st.producers = Default::default();
        for o in snapshot_offsets(&self.dir) {
            let _ = std::fs::remove_file(snapshot_path(&self.dir, o));
        }
        drop(st);
        let start = start.max(0);
        self.flushed_offset.store(start, Ordering::Release);
        self.high_watermark.store(start, Ordering::Release);
        self.epochs().truncate_from_end(i64::MIN)?;
        tracing::warn!(partition = %self.name, from, start, "log restarted at the leader's log start");
        Ok(())
    }
}

/// Cuts `seg` before the first batch that ends at or after `offset`.
/// Scans headers from the segment start: truncation is rare, and the scan
/// also recomputes the newest timestamp of what remains.
fn cut_segment(seg: &mut Segment, offset: i64) -> io::Result<()> {
    let mut pos = 0u64;
    let mut next = seg.base_offset;
    let mut max_ts = -1i64;
    let mut max_ts_batch = seg.base_offset;
    while pos < seg.size {
        let h = seg.read_header(pos)?;
        if h.last_offset() >= offset {
            break;
        }
        if h.max_timestamp > max_ts {
            max_ts = h.max_timestamp;
            max_ts_batch = h.base_offset;
        }
        next = h.next_offset();
        pos += h.len as u64;
    }
    seg.file.set_len(pos)?;
    seg.file.sync_all()?;
    seg.size = pos;
    seg.verified
        .fetch_min(pos, std::sync::atomic::Ordering::AcqRel);
    seg.next_offset = next;
    seg.max_timestamp = max_ts;
    seg.max_timestamp_batch = max_ts_batch;
    seg.index
        .truncate((next - seg.base_offset) as u32, pos as u32);
    seg.txn_index.truncate_from(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LogConfig;
    use sluice_protocol::batch::validate_produce as validate_batches;

    fn batch(records: usize) -> Bytes {
        sluice_protocol::batch::tests::encoded_batch(
            records,
            kafka_protocol::records::Compression::None,
            1_000,
        )
        .freeze()
    }

    fn leader_with(dir: &std::path::Path, batches: &[(i32, usize)]) -> PartitionLog {
        let log = PartitionLog::open("l-0".into(), dir.to_path_buf(), LogConfig::default())
            .expect("open");
        for (epoch, n) in batches {
            let term = log.lead(*epoch).expect("epoch");
            let vb = validate_batches(batch(*n), usize::MAX).expect("valid");
            log.append(vb, &term).expect("append");
        }
        log.resign();
        log
    }

    #[test]
    fn a_follower_copies_verbatim_truncates_and_rebuilds_state_on_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let leader = leader_with(&dir.path().join("leader"), &[(0, 3), (0, 2), (2, 4)]);
        let all = leader.read(0, usize::MAX).expect("read").records;
        let fdir = dir.path().join("follower");
        let follower =
            PartitionLog::open("f-0".into(), fdir.clone(), LogConfig::default()).expect("open");
        assert_eq!(follower.append_replica(&all).expect("append"), 9);
        assert_eq!(follower.latest_epoch(), 2);
        assert_eq!(follower.end_offset_for_epoch(0), (0, 5));
        // Same bytes, same offsets: the follower is a copy.
        assert_eq!(follower.read(0, usize::MAX).expect("read").records, all);
        // Re-sending what it has is harmless; a gap is refused.
        assert_eq!(follower.append_replica(&all).expect("idempotent"), 9);
        let gap = leader.read(5, usize::MAX).expect("read").records;
        let fresh = PartitionLog::open("g-0".into(), dir.path().join("g"), LogConfig::default())
            .expect("open");
        assert!(fresh.append_replica(&gap).is_err());

        // Truncation at an epoch boundary drops the later epoch's records.
        follower.truncate_to(5).expect("truncate");
        assert_eq!(follower.log_end_offset(), 5);
        assert_eq!(follower.latest_epoch(), 0);
        let tail = leader.read(5, usize::MAX).expect("read").records;
        assert_eq!(follower.append_replica(&tail).expect("refetch"), 9);
        drop(follower);
        let reopened =
            PartitionLog::open("f-0".into(), fdir, LogConfig::default()).expect("reopen");
        assert_eq!(reopened.log_end_offset(), 9);
        assert_eq!(reopened.latest_epoch(), 2);
        reopened.truncate_to(0).expect("truncate all");
        assert_eq!(reopened.log_end_offset(), 0);
        assert!(!reopened.has_epochs());
    }

    #[test]
    fn a_reset_log_starts_empty_at_the_given_offset_and_takes_batches_from_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        let leader = leader_with(&dir.path().join("leader"), &[(0, 3), (1, 2), (1, 4)]);
        let tail = leader.read(5, usize::MAX).expect("read").records;
        let fdir = dir.path().join("follower");
        let follower = leader_with(&fdir, &[(0, 1)]);
        follower.reset_to(5).expect("reset");
        assert_eq!(
            (follower.log_start_offset(), follower.log_end_offset()),
            (5, 5)
        );
        assert!(!follower.has_epochs());
        assert_eq!(follower.append_replica(&tail).expect("append"), 9);
        assert_eq!(follower.latest_epoch(), 1);
        drop(follower);
        let reopened =
            PartitionLog::open("f-0".into(), fdir, LogConfig::default()).expect("reopen");
        assert_eq!(
            (reopened.log_start_offset(), reopened.log_end_offset()),
            (5, 9)
        );
    }

    #[test]
    fn consumers_read_only_up_to_the_high_watermark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = leader_with(dir.path(), &[(0, 3), (0, 2)]);
        assert_eq!(log.high_watermark(), 5, "alone in its ISR");
        log.set_hw_follows_leo(false);
        log.set_high_watermark(3);
        assert_eq!(log.high_watermark(), 3);
        let visible = log.read(0, usize::MAX).expect("read");
        assert_eq!(visible.high_watermark, 3);
        let h = batch::parse_header_fields(&visible.records).expect("header");
        assert_eq!(visible.records.len(), h.len, "only the committed batch");
        assert!(log.read(3, usize::MAX).expect("read").records.is_empty());
        let replica = log.read_for_replica(3, usize::MAX).expect("read");
        assert!(!replica.records.is_empty(), "followers read past it");
        log.set_high_watermark(99);
        assert_eq!(log.high_watermark(), 5, "never past the log end");
    }
}
