//! Sparse offset and time indexes of one segment. They live in memory while a
//! segment is active and are written beside it (`.index`, `.timeindex`) when it
//! is sealed, with a CRC trailer so a torn or stale file is detected on
//! startup and rebuilt from the segment instead of trusted.

use std::fs;
use std::io;
use std::path::Path;

/// Offset → file position, one entry every `index.interval.bytes` of log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    /// Base offset of the batch, relative to the segment's base offset.
    pub relative_offset: u32,
    pub position: u32,
}

/// Largest timestamp seen so far → the batch that carried it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

#[derive(Debug, Default, Clone)]
pub struct SegmentIndex {
    pub offsets: Vec<OffsetEntry>,
    pub times: Vec<TimeEntry>,
}

impl SegmentIndex {
    /// Position of the last indexed batch starting at or before `relative`.
    pub fn position_for(&self, relative: u32) -> u32 {
        self.entry_for(relative).1
    }

    /// Relative base offset and position of the last indexed batch starting
    /// at or before `relative` (the segment's first batch if none is).
    pub fn entry_for(&self, relative: u32) -> (u32, u32) {
        let i = self
            .offsets
            .partition_point(|e| e.relative_offset <= relative);
        if i == 0 {
            (0, 0)
        } else {
            let e = &self.offsets[i - 1];
            (e.relative_offset, e.position)
        }
    }

    /// Relative offset from which to scan for the first batch whose max
    /// timestamp is >= `target`: every batch before the last entry below the
    /// target has a smaller max timestamp.
    pub fn scan_start_for_timestamp(&self, target: i64) -> u32 {
        let i = self.times.partition_point(|e| e.timestamp < target);
        if i == 0 {
            0
        } else {
            self.times[i - 1].relative_offset
        }
    }

    /// Drops entries at or past `position` / `relative` after a truncation.
    pub fn truncate(&mut self, relative: u32, position: u32) {
        self.offsets
            .retain(|e| e.position < position && e.relative_offset < relative);
        self.times.retain(|e| e.relative_offset < relative);
    }
}

const MAGIC: &[u8; 4] = b"SLX1";
const TRAILER_LEN: usize = 4 + 8 + 4;

fn write_with_trailer(path: &Path, body: Vec<u8>, segment_size: u64) -> io::Result<()> {
    let mut out = body;
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&segment_size.to_be_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, &out)?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, path)
}

/// Reads a file written by `write_with_trailer`, returning its body only if
/// the CRC holds and it describes a segment of exactly `segment_size` bytes.
fn read_with_trailer(path: &Path, segment_size: u64) -> Option<Vec<u8>> {
    let data = fs::read(path).ok()?;
    if data.len() < TRAILER_LEN {
        return None;
    }
    let (content, crc) = data.split_at(data.len() - 4);
    let stored = u32::from_be_bytes(crc.try_into().ok()?);
    if crc32fast::hash(content) != stored {
        return None;
    }
    let (body, trailer) = content.split_at(content.len() - 12);
    if &trailer[..4] != MAGIC {
        return None;
    }
    let size = u64::from_be_bytes(trailer[4..12].try_into().ok()?);
    (size == segment_size).then(|| body.to_vec())
}

pub fn save(
    index: &SegmentIndex,
    offset_path: &Path,
    time_path: &Path,
    segment_size: u64,
) -> io::Result<()> {
    let mut body = Vec::with_capacity(index.offsets.len() * 8);
    for e in &index.offsets {
        body.extend_from_slice(&e.relative_offset.to_be_bytes());
        body.extend_from_slice(&e.position.to_be_bytes());
    }
    write_with_trailer(offset_path, body, segment_size)?;
    let mut body = Vec::with_capacity(index.times.len() * 12);
    for e in &index.times {
        body.extend_from_slice(&e.timestamp.to_be_bytes());
        body.extend_from_slice(&e.relative_offset.to_be_bytes());
    }
    write_with_trailer(time_path, body, segment_size)
}

/// Loads both index files; `None` if either is missing, torn, stale or out
/// of order, in which case the caller rebuilds from the segment.
pub fn load(offset_path: &Path, time_path: &Path, segment_size: u64) -> Option<SegmentIndex> {
    let body = read_with_trailer(offset_path, segment_size)?;
    if body.len() % 8 != 0 {
        return None;
    }
    let offsets: Vec<OffsetEntry> = body
        .chunks_exact(8)
        .map(|c| OffsetEntry {
            relative_offset: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
            position: u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    let ordered = offsets
        .windows(2)
        .all(|w| w[0].relative_offset < w[1].relative_offset && w[0].position < w[1].position);
    if !ordered
        || offsets
            .iter()
            .any(|e| u64::from(e.position) >= segment_size)
    {
        return None;
    }
    let body = read_with_trailer(time_path, segment_size)?;
    if body.len() % 12 != 0 {
        return None;
    }
    let times: Vec<TimeEntry> = body
        .chunks_exact(12)
        .map(|c| {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&c[..8]);
            TimeEntry {
                timestamp: i64::from_be_bytes(ts),
                relative_offset: u32::from_be_bytes([c[8], c[9], c[10], c[11]]),
            }
        })
        .collect();
    if !times.windows(2).all(|w| w[0].timestamp < w[1].timestamp) {
        return None;
    }
    Some(SegmentIndex { offsets, times })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SegmentIndex {
        SegmentIndex {
            offsets: vec![
                OffsetEntry {
                    relative_offset: 0,
                    position: 0,
                },
                OffsetEntry {
                    relative_offset: 10,
                    position: 4096,
                },
                OffsetEntry {
                    relative_offset: 25,
                    position: 9000,
                },
            ],
            times: vec![
                TimeEntry {
                    timestamp: 100,
                    relative_offset: 0,
                },
                TimeEntry {
                    timestamp: 200,
                    relative_offset: 25,
                },
            ],
        }
    }

    #[test]
    fn lookups_pick_the_floor_entry() {
        let idx = sample();
        assert_eq!(idx.position_for(0), 0);
        assert_eq!(idx.position_for(9), 0);
        assert_eq!(idx.position_for(10), 4096);
        assert_eq!(idx.position_for(1000), 9000);
        assert_eq!(idx.scan_start_for_timestamp(50), 0);
        assert_eq!(idx.scan_start_for_timestamp(150), 0);
        assert_eq!(idx.scan_start_for_timestamp(250), 25);
    }

    #[test]
    fn round_trip_and_corruption_detection() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (o, t) = (dir.path().join("a.index"), dir.path().join("a.timeindex"));
        save(&sample(), &o, &t, 10_000).expect("save");
        let loaded = load(&o, &t, 10_000).expect("load");
        assert_eq!(loaded.offsets, sample().offsets);
        assert_eq!(loaded.times, sample().times);
        // Stale: the segment grew after the index was written.
        assert!(load(&o, &t, 10_001).is_none());
        // Torn: a flipped byte fails the CRC.
        let mut bytes = fs::read(&o).expect("read");
        bytes[3] ^= 1;
        fs::write(&o, bytes).expect("write");
        assert!(load(&o, &t, 10_000).is_none());
    }
}
