//! Each segment's index of the transactions aborted in it (Kafka's
//! `.txnindex`, same 34-byte entry): a read_committed fetch names the
//! aborted transactions overlapping what it returns, so the consumer can
//! drop their records, without the broker scanning the log. An entry
//! lives in the segment holding the transaction's abort marker. Which
//! transactions are still open (and so the last stable offset) is the
//! producer state's business (`producer_state`).
//!
//! The file is written as markers are appended (the page cache is enough
//! until the segment is sealed, when it is synced with the other indexes)
//! and rebuilt with the producer state when a crash or a truncation makes
//! the log replay batches.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// One aborted transaction of one producer in this partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    /// Offset of the transaction's first record here.
    pub first_offset: i64,
    /// Offset of its abort marker.
    pub last_offset: i64,
    /// The partition's last stable offset once the marker was written: no
    /// transaction aborted later (in a later entry) starts before it, so a
    /// search for transactions below some offset can stop at an entry
    /// whose last stable offset is past it.
    pub last_stable_offset: i64,
}

const ENTRY_LEN: usize = 34;
const ENTRY_VERSION: i16 = 0;

impl AbortedTxn {
    fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut out = [0u8; ENTRY_LEN];
        out[0..2].copy_from_slice(&ENTRY_VERSION.to_be_bytes());
        out[2..10].copy_from_slice(&self.producer_id.to_be_bytes());
        out[10..18].copy_from_slice(&self.first_offset.to_be_bytes());
        out[18..26].copy_from_slice(&self.last_offset.to_be_bytes());
        out[26..34].copy_from_slice(&self.last_stable_offset.to_be_bytes());
        out
    }

    fn decode(b: &[u8]) -> Option<AbortedTxn> {
        let i64_at = |at: usize| -> Option<i64> {
            Some(i64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
        };
        let version = i16::from_be_bytes(b.get(0..2)?.try_into().ok()?);
        (version == ENTRY_VERSION).then_some(())?;
        Some(AbortedTxn {
            producer_id: i64_at(2)?,
            first_offset: i64_at(10)?,
            last_offset: i64_at(18)?,
            last_stable_offset: i64_at(26)?,
        })
    }
}

/// The aborted transactions whose markers are in one segment, in marker
/// order, in memory and in `<segment>.txnindex`.
#[derive(Debug)]
pub struct TxnIndex {
    path: PathBuf,
    entries: Vec<AbortedTxn>,
    /// A write failed: the file lags `entries` and is rewritten whole at
    /// the next append or sync.
    stale_file: bool,
}

impl TxnIndex {
    /// Where the index of the segment stored at `log_path` lives.
    pub fn path_for(log_path: &Path) -> PathBuf {
        log_path.with_extension("txnindex")
    }

    /// A new segment's index: empty, and any file left at its path by an
    /// earlier segment with the same base offset removed.
    pub fn create(log_path: &Path) -> io::Result<TxnIndex> {
        let path = Self::path_for(log_path);
        remove_if_present(&path)?;
        Ok(TxnIndex {
            path,
            entries: Vec::new(),
            stale_file: false,
        })
    }

    /// An existing segment's index. A missing file is an empty index; a
    /// torn last entry (a crash mid-write) or an unreadable one ends it
    /// there (the replay after a crash writes what is missing again).
    pub fn load(log_path: &Path) -> io::Result<TxnIndex> {
        let path = Self::path_for(log_path);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let entries: Vec<AbortedTxn> = bytes
            .chunks_exact(ENTRY_LEN)
            .map_while(AbortedTxn::decode)
            .collect();
        if entries.len() * ENTRY_LEN != bytes.len() {
            // Cut what follows the last good entry, so appends extend it.
            let file = OpenOptions::new().write(true).open(&path)?;
            file.set_len((entries.len() * ENTRY_LEN) as u64)?;
        }
        Ok(TxnIndex {
            path,
            entries,
            stale_file: false,
        })
    }

    pub fn entries(&self) -> &[AbortedTxn] {
        &self.entries
    }

    /// Records an abort marker just appended to the segment. The entry
    /// counts at once (reads use the memory copy); if the file write fails
    /// the error is returned and the file is rewritten whole later.
    pub fn append(&mut self, entry: AbortedTxn) -> io::Result<()> {
        self.entries.push(entry);
        if self.stale_file {
            return self.rewrite();
        }
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(&entry.encode()));
        if written.is_err() {
            self.stale_file = true;
        }
        written
    }

    /// Writes every entry to a fresh file that replaces the old one.
    fn rewrite(&mut self) -> io::Result<()> {
        let tmp = self.path.with_extension("txnindex.tmp");
        let bytes: Vec<u8> = self.entries.iter().flat_map(|e| e.encode()).collect();
        fs::write(&tmp, bytes)?;
        fs::File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        self.stale_file = false;
        Ok(())
    }

    /// Drops the entries of markers at or past `offset` (the log was cut
    /// there, or is about to replay from there).
    pub fn truncate_from(&mut self, offset: i64) -> io::Result<()> {
        let keep = self.entries.partition_point(|e| e.last_offset < offset);
        if keep == self.entries.len() {
            return Ok(());
        }
        self.entries.truncate(keep);
        if self.stale_file {
            return self.rewrite();
        }
        if self.entries.is_empty() {
            return remove_if_present(&self.path);
        }
        let file = OpenOptions::new().write(true).open(&self.path)?;
        file.set_len((keep * ENTRY_LEN) as u64)
    }

    /// Adds to `out` the transactions that overlap `[from, upto)` (an
    /// abort marker at or after `from`, a first record before `upto`).
    /// True once no later entry (here or in later segments) can overlap.
    pub fn collect(&self, from: i64, upto: i64, out: &mut Vec<AbortedTxn>) -> bool {
        // Entries are in marker order: skip those that ended before `from`.
        let first = self.entries.partition_point(|e| e.last_offset < from);
        // Last stable offsets only grow along the log.
        if first > 0 && self.entries[first - 1].last_stable_offset >= upto {
            return true;
        }
        for e in &self.entries[first..] {
            if e.last_offset >= from && e.first_offset < upto {
                out.push(*e);
            }
            if e.last_stable_offset >= upto {
                return true;
            }
        }
        false
    }

    pub fn sync(&mut self) -> io::Result<()> {
        if self.stale_file {
            return self.rewrite();
        }
        if self.entries.is_empty() {
            return Ok(());
        }
        fs::File::open(&self.path)?.sync_all()
    }

    pub fn delete(&self) -> io::Result<()> {
        remove_if_present(&self.path)
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn aborted(pid: i64, first: i64, last: i64, lso: i64) -> AbortedTxn {
        AbortedTxn {
            producer_id: pid,
            first_offset: first,
            last_offset: last,
            last_stable_offset: lso,
        }
    }

    #[test]
    fn entries_persist_truncate_and_answer_overlap_queries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("00000000000000000000.log");
        let mut idx = TxnIndex::create(&log).expect("create");
        idx.append(aborted(1, 0, 10, 5)).expect("append");
        idx.append(aborted(2, 5, 20, 21)).expect("append");
        idx.append(aborted(3, 22, 30, 31)).expect("append");
        let again = TxnIndex::load(&log).expect("load");
        assert_eq!(again.entries(), idx.entries());

        let mut out = Vec::new();
        // [11, 21): the first ended before it; the second overlaps; the
        // second's LSO (21) proves nothing later starts below 21.
        assert!(idx.collect(11, 21, &mut out));
        assert_eq!(out, vec![aborted(2, 5, 20, 21)]);
        out.clear();
        assert!(
            !idx.collect(0, 100, &mut out),
            "later segments may hold more"
        );
        assert_eq!(out.len(), 3);

        idx.truncate_from(20).expect("truncate");
        assert_eq!(idx.entries(), &[aborted(1, 0, 10, 5)]);
        assert_eq!(TxnIndex::load(&log).expect("load").entries(), idx.entries());
        idx.truncate_from(0).expect("truncate all");
        assert!(!TxnIndex::path_for(&log).exists());
    }

    #[test]
    fn a_torn_last_entry_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("00000000000000000000.log");
        let mut idx = TxnIndex::create(&log).expect("create");
        idx.append(aborted(1, 0, 10, 11)).expect("append");
        idx.append(aborted(2, 12, 20, 21)).expect("append");
        let path = TxnIndex::path_for(&log);
        let bytes = fs::read(&path).expect("read");
        fs::write(&path, &bytes[..ENTRY_LEN + 7]).expect("tear");
        assert_eq!(
            TxnIndex::load(&log).expect("load").entries(),
            &[aborted(1, 0, 10, 11)]
        );
    }
}
