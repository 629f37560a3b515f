//! Leader epoch cache (Kafka's `leader-epoch-checkpoint`): for each leader
//! epoch that wrote to this partition, the offset of its first record.
//!
//! After a leader change, a follower asks the new leader where its own
//! latest epoch ended (OffsetForLeaderEpoch) and truncates there: records
//! a deposed leader wrote but never got replicated are cut instead of
//! surviving as a divergent history. The high watermark cannot do this
//! safely (KIP-101).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

const FILE: &str = "leader-epoch-checkpoint";
const VERSION: &str = "0";

/// Kafka's UNDEFINED_EPOCH / UNDEFINED_EPOCH_OFFSET.
pub const UNDEFINED: i32 = -1;
pub const UNDEFINED_OFFSET: i64 = -1;

#[derive(Debug)]
pub struct EpochCache {
    path: PathBuf,
    /// (epoch, start offset), both strictly increasing.
    entries: Vec<(i32, i64)>,
}

impl EpochCache {
    /// Loads the checkpoint in `dir`, dropping entries that start past
    /// `log_end` (the log lost its tail since they were written).
    pub fn open(dir: &Path, log_end: i64) -> io::Result<EpochCache> {
        let path = dir.join(FILE);
        let mut entries = Vec::new();
        match fs::read_to_string(&path) {
            Ok(text) => {
                let mut lines = text.lines();
                let version = lines.next().unwrap_or_default();
                let count = lines.next().and_then(|l| l.trim().parse::<usize>().ok());
                let parsed: Option<Vec<(i32, i64)>> = lines
                    .map(|l| {
                        let (e, o) = l.trim().split_once(' ')?;
                        Some((e.parse().ok()?, o.parse().ok()?))
                    })
                    .collect();
                match (version.trim() == VERSION, count, parsed) {
                    (true, Some(n), Some(p)) if p.len() == n => entries = p,
                    _ => {
                        // The cache only sharpens truncation; without it a
                        // follower falls back to its high watermark.
                        tracing::warn!(file = %path.display(), "ignoring malformed leader epoch checkpoint");
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut cache = EpochCache { path, entries };
        if cache.entries.iter().any(|(_, start)| *start > log_end) {
            cache.entries.retain(|(_, start)| *start <= log_end);
            cache.persist()?;
        }
        Ok(cache)
    }

    pub fn latest_epoch(&self) -> i32 {
        self.entries.last().map_or(UNDEFINED, |e| e.0)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records that `epoch` starts at `start` (a new leader's first offset,
    /// or the first batch a follower fetched with a newer epoch). Older or
    /// equal epochs are ignored.
    pub fn assign(&mut self, epoch: i32, start: i64) -> io::Result<()> {
        if epoch < 0 || epoch <= self.latest_epoch() {
            return Ok(());
        }
        // An epoch that wrote nothing is superseded by one starting at the
        // same offset.
        while self.entries.last().is_some_and(|(_, s)| *s >= start) {
            self.entries.pop();
        }
        self.entries.push((epoch, start));
        self.persist()
    }

    /// Forgets epochs that start at or after `offset` (the log was cut there).
    pub fn truncate_from_end(&mut self, offset: i64) -> io::Result<()> {
        let before = self.entries.len();
        self.entries.retain(|(_, start)| *start < offset);
        if self.entries.len() != before {
            self.persist()?;
        }
        Ok(())
    }

    /// Kafka's `endOffsetFor`: the largest epoch <= `epoch` this log knows,
    /// and the offset where it ended (the start of the next epoch, or
    /// `log_end` for the latest one). Undefined for epochs older than all.
    pub fn end_offset_for(&self, epoch: i32, log_end: i64) -> (i32, i64) {
        let Some(&(latest, _)) = self.entries.last() else {
            return (UNDEFINED, UNDEFINED_OFFSET);
        };
        if epoch == latest {
            return (epoch, log_end);
        }
        match self.entries.iter().position(|(e, _)| *e > epoch) {
            Some(0) => (UNDEFINED, UNDEFINED_OFFSET),
            Some(i) => (self.entries[i - 1].0, self.entries[i].1),
            None => (latest, log_end),
        }
    }

    fn persist(&self) -> io::Result<()> {
        let mut text = format!("{VERSION}\n{}\n", self.entries.len());
        for (e, o) in &self.entries {
            text.push_str(&format!("{e} {o}\n"));
        }
        let tmp = self.path.with_extension("tmp");
        fs::write(&tmp, text)?;
        fs::File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            super::sync_dir(dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_offsets_follow_kafka_semantics_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = EpochCache::open(dir.path(), 0).expect("open");
        assert_eq!(c.end_offset_for(0, 0), (UNDEFINED, UNDEFINED_OFFSET));
        c.assign(1, 0).expect("assign");
        c.assign(3, 10).expect("assign");
        c.assign(2, 5).expect("older epochs are ignored");
        c.assign(4, 25).expect("assign");
        assert_eq!(c.end_offset_for(4, 30), (4, 30), "latest: the log end");
        assert_eq!(c.end_offset_for(3, 30), (3, 25));
        assert_eq!(
            c.end_offset_for(2, 30),
            (1, 10),
            "unknown epoch: the one below"
        );
        assert_eq!(c.end_offset_for(0, 30), (UNDEFINED, UNDEFINED_OFFSET));
        assert_eq!(c.end_offset_for(9, 30), (4, 30));
        drop(c);
        // The log lost everything from 20 on: epoch 4 never happened here.
        let mut c = EpochCache::open(dir.path(), 20).expect("reopen");
        assert_eq!(c.latest_epoch(), 3);
        c.truncate_from_end(10).expect("truncate");
        assert_eq!(c.latest_epoch(), 1);
        // An epoch that wrote nothing is replaced by the next at that offset.
        c.assign(5, 10).expect("assign");
        c.assign(6, 10).expect("assign");
        assert_eq!(c.end_offset_for(5, 12), (1, 10));
        assert_eq!(c.end_offset_for(6, 12), (6, 12));
    }
}
