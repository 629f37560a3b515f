//! One segment file: record batches back to back, named by the 20-digit base
//! offset of its first batch, plus its in-memory sparse indexes. Recovery
//! (scan, CRC check, truncation of a torn tail) also lives here because it is
//! the only code that reads a segment without trusting it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::index::{self, OffsetEntry, SegmentIndex, TimeEntry};
use super::txn::TxnIndex;
use sluice_protocol::batch::{self, BatchHeader, HEADER_LEN};

pub fn file_stem(base_offset: i64) -> String {
    format!("{base_offset:020}")
}

pub struct Segment {
    pub base_offset: i64,
    /// Offset the next batch appended here would get.
    pub next_offset: i64,
    pub path: PathBuf,
    pub file: Arc<File>,
    /// Logical size: bytes of complete, validated batches.
    pub size: u64,
    pub index: SegmentIndex,
    pub max_timestamp: i64,
    /// Base offset of the batch holding `max_timestamp`.
    pub max_timestamp_batch: i64,
    /// Wall-clock time this segment was created, for `segment.ms` rolls.
    pub created_ms: i64,
    /// Bytes from the start whose batches this process has CRC-checked:
    /// written here (validated on the way in), recovered at startup, or
    /// checked when first read. A sealed segment opened with a trusted
    /// index starts at 0 and is checked lazily, as fetches reach it.
    pub verified: Arc<AtomicU64>,
    /// How far the background scrub has checked this segment: (position,
    /// offset the batch there must start at); `None` before it starts.
    pub scrub_cursor: Arc<std::sync::Mutex<Option<(u64, i64)>>>,
    /// Transactions whose abort marker is in this segment.
    pub txn_index: TxnIndex,
    bytes_since_index: usize,
    bytes_since_time_index: usize,
}

/// What recovery cut from a segment, for the log line that reports it.
#[derive(Debug, Clone)]
pub struct Truncation {
    pub position: u64,
    pub bytes_cut: u64,
    pub next_offset: i64,
    pub reason: String,
}

impl Segment {
    pub fn log_path(dir: &Path, base_offset: i64) -> PathBuf {
        dir.join(format!("{}.log", file_stem(base_offset)))
    }
    fn index_paths(&self) -> (PathBuf, PathBuf) {
        (
            self.path.with_extension("index"),
            self.path.with_extension("timeindex"),
        )
    }

    pub fn create(dir: &Path, base_offset: i64, now_ms: i64) -> io::Result<Segment> {
        let path = Self::log_path(dir, base_offset);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        let txn_index = TxnIndex::create(&path)?;
        Ok(Segment {
            base_offset,
            next_offset: base_offset,
            path,
            file: Arc::new(file),
            size: 0,
            index: SegmentIndex::default(),
            max_timestamp: -1,
            max_timestamp_batch: base_offset,
            created_ms: now_ms,
            verified: Arc::new(AtomicU64::new(0)),
            scrub_cursor: Arc::default(),
            txn_index,
            bytes_since_index: 0,
            bytes_since_time_index: 0,
        })
    }

    /// Opens an existing segment. A sealed segment whose index files are
    /// valid is trusted; otherwise (active segment, missing or corrupt index)
    /// every batch is read and CRC-checked, and anything after the first bad
    /// batch is cut off.
    pub fn open(
        path: PathBuf,
        base_offset: i64,
        sealed: bool,
        index_interval: usize,
        now_ms: i64,
    ) -> io::Result<(Segment, Option<Truncation>, bool)> {
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let len = file.metadata()?.len();
        let txn_index = TxnIndex::load(&path)?;
        let mut seg = Segment {
            base_offset,
            next_offset: base_offset,
            path,
            file: Arc::new(file),
            size: len,
            index: SegmentIndex::default(),
            max_timestamp: -1,
            max_timestamp_batch: base_offset,
            created_ms: now_ms,
            verified: Arc::new(AtomicU64::new(0)),
            scrub_cursor: Arc::default(),
            txn_index,
            bytes_since_index: 0,
            bytes_since_time_index: 0,
        };
        if sealed {
            let (ip, tp) = seg.index_paths();
            if let Some(idx) = index::load(&ip, &tp, len) {
                seg.index = idx;
                seg.restore_tail_state()?;
                return Ok((seg, None, false));
            }
        }
        let truncation = seg.recover(index_interval)?;
        let end = seg.next_offset;
        seg.txn_index.truncate_from(end)?;
        seg.verified.store(seg.size, Ordering::Release);
        Ok((seg, truncation, sealed))
    }

    /// After loading a trusted index, find the next offset and max timestamp
    /// by reading batch headers from the last indexed position.
    fn restore_tail_state(&mut self) -> io::Result<()> {
        if let Some(t) = self.index.times.last() {
            self.max_timestamp = t.timestamp;
            self.max_timestamp_batch = self.base_offset + i64::from(t.relative_offset);
        }
        let mut pos = self
            .index
            .offsets
            .last()
            .map_or(0, |e| u64::from(e.position));
        while pos < self.size {
            let h = self.read_header(pos)?;
            self.next_offset = h.next_offset();
            if h.max_timestamp > self.max_timestamp {
                self.max_timestamp = h.max_timestamp;
                self.max_timestamp_batch = h.base_offset;
            }
            pos += h.len as u64;
        }
        Ok(())
    }

    fn recover(&mut self, index_interval: usize) -> io::Result<Option<Truncation>> {
        let file_len = self.size;
        let file = self.file.clone();
        let mut reader = BufReader::with_capacity(1 << 20, &*file);
        reader.seek(SeekFrom::Start(0))?;
        let mut pos = 0u64;
        let mut expected = self.base_offset;
        let mut failure: Option<String> = None;
        let mut batch_buf: Vec<u8> = Vec::new();
        self.index = SegmentIndex::default();
        self.bytes_since_index = 0;
        self.bytes_since_time_index = 0;
        while pos < file_len {
            if file_len - pos < HEADER_LEN as u64 {
                failure = Some(format!(
                    "{} trailing bytes, shorter than a batch header",
                    file_len - pos
                ));
                break;
            }
            batch_buf.resize(HEADER_LEN, 0);
            reader.read_exact(&mut batch_buf)?;
            let header = match batch::parse_header_fields(&batch_buf) {
                Ok(h) => h,
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            };
            if header.len as u64 > file_len - pos {
                failure = Some(format!(
                    "batch at offset {} declares {} bytes, only {} left in the file",
                    header.base_offset,
                    header.len,
                    file_len - pos
                ));
                break;
            }
            batch_buf.resize(header.len, 0);
            reader.read_exact(&mut batch_buf[HEADER_LEN..])?;
            let computed = batch::compute_crc(&batch_buf);
            if computed != header.crc {
                failure = Some(format!(
                    "CRC mismatch in batch at offset {} (stored {:#010x}, computed {computed:#010x})",
                    header.base_offset, header.crc
                ));
                break;
            }
            if header.base_offset != expected || header.last_offset_delta < 0 {
                failure = Some(format!(
                    "batch at position {pos} has base offset {}, expected {expected}",
                    header.base_offset
                ));
                break;
            }
            self.track_batch(&header, pos, index_interval);
            expected = header.next_offset();
            pos += header.len as u64;
        }
        self.size = pos;
        self.next_offset = expected;
        if let Some(reason) = failure {
            self.file.set_len(pos)?;
            self.file.sync_all()?;
            return Ok(Some(Truncation {
                position: pos,
                bytes_cut: file_len - pos,
                next_offset: expected,
                reason,
            }));
        }
        Ok(None)
    }

    /// Updates indexes and timestamps for a batch just written at `position`.
    pub fn track_batch(&mut self, h: &BatchHeader, position: u64, index_interval: usize) {
        let relative = (h.base_offset - self.base_offset) as u32;
        if self.index.offsets.is_empty() || self.bytes_since_index >= index_interval {
            self.index.offsets.push(OffsetEntry {
                relative_offset: relative,
                position: position as u32,
            });
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += h.len;
        self.bytes_since_time_index += h.len;
        if h.max_timestamp > self.max_timestamp {
            self.max_timestamp = h.max_timestamp;
            self.max_timestamp_batch = h.base_offset;
            if self.index.times.is_empty() || self.bytes_since_time_index >= index_interval {
                self.index.times.push(TimeEntry {
                    timestamp: h.max_timestamp,
                    relative_offset: relative,
                });
                self.bytes_since_time_index = 0;
            }
        }
        self.next_offset = h.next_offset();
    }

    pub fn read_header(&self, position: u64) -> io::Result<BatchHeader> {
        let mut buf = [0u8; HEADER_LEN];
        self.file.read_exact_at(&mut buf, position)?;
        batch::parse_header_fields(&buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }

    /// Seals the segment: data and indexes made durable.
    pub fn seal(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.txn_index.sync()?;
        let (ip, tp) = self.index_paths();
        index::save(&self.index, &ip, &tp, self.size)
    }

    pub fn delete_files(&self) -> io::Result<()> {
        let (ip, tp) = self.index_paths();
        // The log first: a crash part way leaves index files without a log
        // (removed when the partition is opened), never a log without its
        // aborted-transaction index.
        for p in [&self.path, &ip, &tp] {
            match fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.txn_index.delete()
    }
}

/// Reads `len` bytes at `position` into a fresh buffer without zero-filling
/// it first: fetches read megabytes per request, and the memset (plus the
/// page faults it takes) cost as much as the read itself.
pub fn read_exact_at(file: &File, position: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let at = position + buf.len() as u64;
        let n = rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("segment ended at {at} while reading {len} bytes from {position}"),
            ));
        }
    }
    // The spare capacity may have been larger than asked for.
    buf.truncate(len);
    Ok(buf)
}
