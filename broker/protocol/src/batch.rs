//! Kafka record batch (format v2) framing: the fixed 61-byte header, CRC-32C
//! validation, and the few in-place rewrites the broker makes (base offset,
//! log-append time). Batches are stored exactly as received otherwise, so this
//! module never decompresses anything.

use bytes::{Buf, Bytes};

/// Size of the v2 batch header, up to and including the record count.
pub const HEADER_LEN: usize = 61;
/// Bytes before `batchLength` ends: base offset (8) + batch length (4).
pub const LOG_OVERHEAD: usize = 12;

const BASE_OFFSET: usize = 0;
const BATCH_LENGTH: usize = 8;
const PARTITION_LEADER_EPOCH: usize = 12;
const MAGIC: usize = 16;
const CRC: usize = 17;
const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const BASE_TIMESTAMP: usize = 27;
const MAX_TIMESTAMP: usize = 35;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
const RECORDS_COUNT: usize = 57;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_BIT: i16 = 0x08;
pub const TRANSACTIONAL_BIT: i16 = 0x10;
pub const CONTROL_BIT: i16 = 0x20;

/// Why a batch was refused. Each maps to the Kafka error a client expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("record batch truncated: {0}")]
    Truncated(String),
    #[error("record batch magic {0} is not supported; only format v2 (magic 2) is")]
    UnsupportedMagic(i8),
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("invalid record batch: {0}")]
    Invalid(String),
    #[error("batch of {size} bytes exceeds max.message.bytes {max}")]
    TooLarge { size: usize, max: usize },
}

/// Parsed view of one batch header; `len` is the whole batch including the
/// 12 bytes of offset and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub len: usize,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl BatchHeader {
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }
    pub fn compression(&self) -> i16 {
        self.attributes & COMPRESSION_MASK
    }
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_BIT != 0
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// Reads the header at the start of `buf` without checking the CRC. Fails if
/// `buf` does not hold the whole batch the header describes.
pub fn parse_header(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = parse_header_fields(buf)?;
    if buf.len() < header.len {
        return Err(BatchError::Truncated(format!(
            "batch declares {} bytes, only {} present",
            header.len,
            buf.len()
        )));
    }
    Ok(header)
}

/// Reads the 61 header bytes alone, for callers that fetch the rest later.
pub fn parse_header_fields(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    if buf.len() < HEADER_LEN {
        return Err(BatchError::Truncated(format!(
            "{} bytes, a batch header needs {HEADER_LEN}",
            buf.len()
        )));
    }
    let magic = buf[MAGIC] as i8;
    let batch_length = be_i32(buf, BATCH_LENGTH);
    if magic != 2 {
        return Err(BatchError::UnsupportedMagic(magic));
    }
    if batch_length < (HEADER_LEN - LOG_OVERHEAD) as i32 {
        return Err(BatchError::Invalid(format!(
            "batch length {batch_length} is smaller than the header"
        )));
    }
    let len = LOG_OVERHEAD + batch_length as usize;
    Ok(BatchHeader {
        base_offset: be_i64(buf, BASE_OFFSET),
        len,
        partition_leader_epoch: be_i32(buf, PARTITION_LEADER_EPOCH),
        magic,
        crc: be_u32(buf, CRC),
        attributes: be_i16(buf, ATTRIBUTES),
        last_offset_delta: be_i32(buf, LAST_OFFSET_DELTA),
        base_timestamp: be_i64(buf, BASE_TIMESTAMP),
        max_timestamp: be_i64(buf, MAX_TIMESTAMP),
        producer_id: be_i64(buf, PRODUCER_ID),
        producer_epoch: be_i16(buf, PRODUCER_EPOCH),
        base_sequence: be_i32(buf, BASE_SEQUENCE),
        records_count: be_i32(buf, RECORDS_COUNT),
    })
}

/// CRC-32C over everything after the CRC field, as the v2 format defines it.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES..])
}

/// Parses and CRC-checks the batch at the start of `buf`.
pub fn parse_and_verify(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = parse_header(buf)?;
    let computed = compute_crc(&buf[..header.len]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// Checks one producer-sent batch beyond its CRC: counts and deltas agree,
/// and every record's length prefix adds up to the records section. A
/// compressed batch is inflated (bounded, see `compression`) for this check
/// and still stored as received: a batch whose header claims more or fewer
/// records than it holds would hand consumers offsets that do not exist.
pub fn validate_structure(batch: &[u8], header: &BatchHeader) -> Result<(), BatchError> {
    if header.records_count <= 0 {
        return Err(BatchError::Invalid(format!(
            "record count {} (a produced batch must hold at least one record)",
            header.records_count
        )));
    }
    if header.last_offset_delta != header.records_count - 1 {
        return Err(BatchError::Invalid(format!(
            "last offset delta {} does not match record count {}",
            header.last_offset_delta, header.records_count
        )));
    }
    if header.compression() > 4 {
        return Err(BatchError::Invalid(format!(
            "unknown compression codec {}",
            header.compression()
        )));
    }
    let body = &batch[HEADER_LEN..header.len];
    let inflated;
    let mut records = if header.compression() == 0 {
        body
    } else {
        inflated = crate::compression::decompress(
            header.compression(),
            body,
            crate::records::MAX_DECOMPRESSED,
        )
        .map_err(BatchError::Invalid)?;
        &inflated[..]
    };
    let mut seen = 0i32;
    while !records.is_empty() {
        let record_len = read_varint(&mut records)
            .ok_or_else(|| BatchError::Invalid(format!("record {seen}: malformed length")))?;
        if record_len < 0 || record_len as usize > records.len() {
            return Err(BatchError::Invalid(format!(
                "record {seen}: length {record_len} overruns the batch"
            )));
        }
        records = &records[record_len as usize..];
        seen = seen.saturating_add(1);
    }
    if seen != header.records_count {
        return Err(BatchError::Invalid(format!(
            "header says {} records, found {seen}",
            header.records_count
        )));
    }
    Ok(())
}

/// Kafka zig-zag varint (up to 5 bytes).
pub fn read_varint(buf: &mut &[u8]) -> Option<i32> {
    let mut value: u32 = 0;
    for i in 0..5 {
        if buf.is_empty() {
            return None;
        }
        let b = buf.get_u8();
        value |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(((value >> 1) as i32) ^ -((value & 1) as i32));
        }
    }
    None
}

/// Kafka zig-zag varlong (up to 10 bytes).
pub fn read_varlong(buf: &mut &[u8]) -> Option<i64> {
    let mut value: u64 = 0;
    for i in 0..10 {
        if buf.is_empty() {
            return None;
        }
        let b = buf.get_u8();
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    None
}

/// Writes the broker-assigned base offset. Not covered by the CRC.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Writes the partition leader epoch. Not covered by the CRC.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[PARTITION_LEADER_EPOCH..PARTITION_LEADER_EPOCH + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// Stamps LogAppendTime: sets the timestamp-type bit and the max timestamp,
/// and patches the CRC because both are covered by it. `head` is the
/// batch's 61-byte header with a CRC that is correct for the `body_len`
/// bytes after it, which are not read (see `patch_crc`).
pub fn set_log_append_time(head: &mut [u8; HEADER_LEN], body_len: usize, now_ms: i64) {
    let before = *head;
    let attributes = be_i16(head, ATTRIBUTES) | TIMESTAMP_TYPE_BIT;
    head[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    head[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&now_ms.to_be_bytes());
    patch_crc(&before, head, body_len);
}

/// Sets the producer id, epoch and base sequence in a batch header and
/// patches the CRC (which covers them) without reading the records; the
/// header's CRC must be correct for the `body_len` bytes after it.
pub fn set_producer(
    head: &mut [u8; HEADER_LEN],
    body_len: usize,
    producer_id: i64,
    epoch: i16,
    base_sequence: i32,
) {
    let before = *head;
    head[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&producer_id.to_be_bytes());
    head[PRODUCER_EPOCH..PRODUCER_EPOCH + 2].copy_from_slice(&epoch.to_be_bytes());
    head[BASE_SEQUENCE..BASE_SEQUENCE + 4].copy_from_slice(&base_sequence.to_be_bytes());
    patch_crc(&before, head, body_len);
}

/// Rewrites `after`'s CRC field for a batch whose header changed from
/// `before` (CRC correct) to `after`, with `body_len` unchanged bytes
/// behind the header, in time logarithmic in `body_len`: CRC-32C is affine,
/// so for inputs of one length crc(a) ^ crc(b) ^ crc(c) = crc(a ^ b ^ c).
/// With a = old, b = old ^ new (the header difference, then zeros) and
/// c = all zeros: crc(new) = crc(old) ^ crc(diff ++ 0^n) ^ crc(0^40 ++ 0^n),
/// and appending n zeros to both is one `crc32c_combine` shift of their
/// XOR (the zeros' own CRC cancels).
fn patch_crc(before: &[u8; HEADER_LEN], after: &mut [u8; HEADER_LEN], body_len: usize) {
    let mut diff = [0u8; HEADER_LEN - ATTRIBUTES];
    for (d, (a, b)) in diff
        .iter_mut()
        .zip(before[ATTRIBUTES..].iter().zip(&after[ATTRIBUTES..]))
    {
        *d = a ^ b;
    }
    let zeros = [0u8; HEADER_LEN - ATTRIBUTES];
    let delta = crc32c::crc32c(&diff) ^ crc32c::crc32c(&zeros);
    let crc = be_u32(before, CRC) ^ crc32c::crc32c_combine(delta, 0, body_len);
    after[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// The timestamp and offset of each record in an uncompressed batch, used by
/// timestamp lookups. Compressed batches go through the full decoder instead.
pub fn record_timestamps(batch: &[u8], header: &BatchHeader) -> Option<Vec<(i64, i64)>> {
    let mut records = &batch[HEADER_LEN..header.len];
    let mut out = Vec::with_capacity(header.records_count.max(0) as usize);
    while !records.is_empty() {
        let len = read_varint(&mut records)?;
        if len < 0 || len as usize > records.len() {
            return None;
        }
        let (mut record, rest) = records.split_at(len as usize);
        records = rest;
        let _attributes = record.first()?;
        record = &record[1..];
        let ts_delta = read_varlong(&mut record)?;
        let offset_delta = read_varint(&mut record)?;
        out.push((
            header.base_timestamp.saturating_add(ts_delta),
            header.base_offset + i64::from(offset_delta),
        ));
    }
    Some(out)
}

/// A batch validated on the way in, with its parsed header. The records
/// are the request's own buffer (no copy); the header is a 61-byte copy
/// that the broker may restamp (producer fields, and in the log the base
/// offset, leader epoch and LogAppendTime) without touching the records.
/// Cloning shares the records.
#[derive(Clone)]
pub struct ValidatedBatch {
    /// The batch as received; its first `HEADER_LEN` bytes are superseded
    /// by `head`.
    bytes: Bytes,
    head: [u8; HEADER_LEN],
    pub header: BatchHeader,
}

impl ValidatedBatch {
    fn new(bytes: Bytes, header: BatchHeader) -> ValidatedBatch {
        let mut head = [0u8; HEADER_LEN];
        head.copy_from_slice(&bytes[..HEADER_LEN]);
        ValidatedBatch {
            bytes,
            head,
            header,
        }
    }

    pub fn records(&self) -> i64 {
        i64::from(self.header.records_count)
    }

    /// The whole batch's length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The header as it is to be stored.
    pub fn head(&self) -> &[u8; HEADER_LEN] {
        &self.head
    }

    /// Everything after the header: the records, as received.
    pub fn body(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..]
    }

    /// The batch as one buffer: the received one when the header is
    /// unchanged, else a copy with the restamped header.
    pub fn to_bytes(&self) -> Bytes {
        if self.bytes[..HEADER_LEN] == self.head {
            return self.bytes.clone();
        }
        let mut out = bytes::BytesMut::with_capacity(self.bytes.len());
        out.extend_from_slice(&self.head);
        out.extend_from_slice(self.body());
        out.freeze()
    }

    /// The same records under another producer id, epoch and base
    /// sequence: a new header sharing the records (no copy, no pass over
    /// them).
    pub fn with_producer(
        &self,
        producer_id: i64,
        epoch: i16,
        base_sequence: i32,
    ) -> ValidatedBatch {
        let mut head = self.head;
        set_producer(
            &mut head,
            self.body().len(),
            producer_id,
            epoch,
            base_sequence,
        );
        let mut header = self.header;
        header.producer_id = producer_id;
        header.producer_epoch = epoch;
        header.base_sequence = base_sequence;
        header.crc = be_u32(&head, CRC);
        ValidatedBatch {
            bytes: self.bytes.clone(),
            head,
            header,
        }
    }

    /// A batch the broker built itself (or another broker forwarded after
    /// building it): framing and CRC are checked, record-level validation
    /// happened when the client's batch came in. May hold no records.
    pub fn trusted(bytes: Bytes) -> Result<ValidatedBatch, BatchError> {
        let header = parse_and_verify(&bytes)?;
        if header.len != bytes.len() {
            return Err(BatchError::Invalid(format!(
                "{} bytes after the batch",
                bytes.len().saturating_sub(header.len)
            )));
        }
        Ok(ValidatedBatch::new(bytes, header))
    }

    /// Tests only: a batch that skips produce validation (say, one
    /// claiming more offsets than a segment can index).
    #[doc(hidden)]
    pub fn unchecked_for_tests(bytes: Bytes) -> Result<ValidatedBatch, BatchError> {
        let header = parse_and_verify(&bytes)?;
        Ok(ValidatedBatch::new(bytes, header))
    }
}

/// Checks a partition's produce payload (framing, magic, CRC, structure,
/// size) before anything is written. Like Kafka, Produce v3+ carries exactly
/// one batch per partition; that is also what makes idempotent dedup exact.
pub fn validate_produce(
    payload: Bytes,
    max_message_bytes: usize,
) -> Result<ValidatedBatch, BatchError> {
    if payload.is_empty() {
        return Err(BatchError::Invalid("empty record set".into()));
    }
    let h = parse_and_verify(&payload)?;
    if h.len > max_message_bytes {
        return Err(BatchError::TooLarge {
            size: h.len,
            max: max_message_bytes,
        });
    }
    if h.len != payload.len() {
        return Err(BatchError::Invalid(format!(
            "a produce request must carry exactly one record batch per partition ({} trailing bytes after the first)",
            payload.len() - h.len
        )));
    }
    validate_structure(&payload, &h)?;
    if h.is_control() {
        return Err(BatchError::Invalid(
            "clients may not write control batches".into(),
        ));
    }
    if h.is_transactional() && h.producer_id < 0 {
        return Err(BatchError::Invalid(
            "a transactional batch needs the producer id InitProducerId returned".into(),
        ));
    }
    Ok(ValidatedBatch::new(payload, h))
}

/// Real batches for tests (this crate's and the crates above it). Always
/// compiled, so tests and binaries build these crates the same way (one
/// build in CI, no feature that only tests turn on).
#[doc(hidden)]
pub mod tests {
    #[cfg(test)]
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    /// Every codec a client may send.
    pub const ALL_CODECS: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// A real v2 batch built by the kafka-protocol encoder, as a client would send.
    pub fn encoded_batch(n: usize, compression: Compression, ts: i64) -> BytesMut {
        producer_batch(n, compression, ts, -1, -1, 0)
    }

    /// Like `encoded_batch`, from an idempotent producer.
    pub fn producer_batch(
        n: usize,
        compression: Compression,
        ts: i64,
        producer_id: i64,
        producer_epoch: i16,
        first_seq: i32,
    ) -> BytesMut {
        batch_of(
            n,
            compression,
            ts,
            (producer_id, producer_epoch, first_seq),
            false,
        )
    }

    /// `n` records of a transactional producer, uncompressed.
    pub fn transactional_batch(
        n: usize,
        ts: i64,
        producer_id: i64,
        producer_epoch: i16,
        first_seq: i32,
    ) -> BytesMut {
        batch_of(
            n,
            Compression::None,
            ts,
            (producer_id, producer_epoch, first_seq),
            true,
        )
    }

    fn batch_of(
        n: usize,
        compression: Compression,
        ts: i64,
        (producer_id, producer_epoch, first_seq): (i64, i16, i32),
        transactional: bool,
    ) -> BytesMut {
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                transactional,
                control: false,
                partition_leader_epoch: 0,
                producer_id,
                producer_epoch,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: first_seq + i as i32,
                timestamp: ts + i as i64,
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(format!("value-{i}"))),
                headers: Default::default(),
                delete_horizon: false,
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            records.iter(),
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .expect("encode");
        buf
    }

    #[test]
    fn parses_and_verifies_encoder_output() {
        let b = encoded_batch(3, Compression::None, 1000);
        let h = parse_and_verify(&b).expect("valid");
        assert_eq!(h.records_count, 3);
        assert_eq!(h.last_offset_delta, 2);
        assert_eq!(h.len, b.len());
        validate_structure(&b, &h).expect("structure");
        let ts = record_timestamps(&b, &h).expect("walk");
        assert_eq!(ts, vec![(1000, 0), (1001, 1), (1002, 2)]);
    }

    #[test]
    fn flipped_byte_fails_crc() {
        let mut b = encoded_batch(2, Compression::None, 0);
        let last = b.len() - 1;
        b[last] ^= 0xff;
        assert!(matches!(
            parse_and_verify(&b),
            Err(BatchError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn base_offset_rewrite_keeps_crc_valid() {
        let mut b = encoded_batch(2, Compression::Gzip, 0);
        set_base_offset(&mut b, 42);
        let h = parse_and_verify(&b).expect("still valid");
        assert_eq!(h.base_offset, 42);
        assert_eq!(h.last_offset(), 43);
    }

    #[test]
    fn log_append_time_recomputes_crc() {
        let mut b = encoded_batch(2, Compression::None, 0);
        let mut head = [0u8; HEADER_LEN];
        head.copy_from_slice(&b[..HEADER_LEN]);
        set_log_append_time(&mut head, b.len() - HEADER_LEN, 777);
        b[..HEADER_LEN].copy_from_slice(&head);
        let h = parse_and_verify(&b).expect("valid after stamping");
        assert!(h.is_log_append_time());
        assert_eq!(h.max_timestamp, 777);
    }

    /// The patched CRC equals a full recomputation, for bodies from empty
    /// to larger than one CRC block, compressed or not.
    #[test]
    fn restamping_the_producer_patches_the_crc_without_reading_the_records() {
        let empty = crate::records::encode_empty(5, crate::records::Producer::NONE)
            .expect("encode")
            .freeze();
        assert_eq!(
            empty.len(),
            HEADER_LEN,
            "a batch with no records is all header"
        );
        let stamped = ValidatedBatch::trusted(empty)
            .expect("valid")
            .with_producer(9, 1, 2)
            .to_bytes();
        parse_and_verify(&stamped).expect("CRC of a header-only batch");
        for (records, compression) in [
            (1, Compression::None),
            (7, Compression::None),
            (3000, Compression::None),
            (500, Compression::Gzip),
        ] {
            let b = encoded_batch(records, compression, 5).freeze();
            let original = ValidatedBatch::trusted(b.clone()).expect("valid");
            for (pid, epoch, seq) in [(0, 0, 0), (1 << 62 | 12345, 7, i32::MAX), (-1, -1, -1)] {
                let restamped = original.with_producer(pid, epoch, seq);
                let bytes = restamped.to_bytes();
                let h = parse_and_verify(&bytes).expect("CRC still valid");
                assert_eq!(
                    (h.producer_id, h.producer_epoch, h.base_sequence),
                    (pid, epoch, seq)
                );
                assert_eq!(h, restamped.header, "header kept in step");
                assert_eq!(&bytes[HEADER_LEN..], &b[HEADER_LEN..], "records untouched");
            }
            // An unchanged header hands back the received buffer itself.
            assert_eq!(original.to_bytes().as_ptr(), b.as_ptr());
        }
    }

    #[test]
    fn old_magic_is_refused() {
        let mut b = encoded_batch(1, Compression::None, 0);
        b[MAGIC] = 1;
        assert_eq!(parse_header(&b), Err(BatchError::UnsupportedMagic(1)));
    }

    #[test]
    fn short_or_lying_lengths_are_errors_not_panics() {
        let b = encoded_batch(1, Compression::None, 0);
        assert!(parse_header(&b[..10]).is_err());
        assert!(parse_header(&b[..b.len() - 1]).is_err());
        let mut lying = b.clone();
        lying[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(parse_header(&lying).is_err());
    }

    /// A batch (of any codec) whose header claims more or fewer records
    /// than it holds is refused, even with a valid CRC.
    #[test]
    fn record_count_mismatch_is_invalid() {
        for c in ALL_CODECS {
            let good = encoded_batch(3, c, 0);
            let h = parse_and_verify(&good).expect("crc ok");
            validate_structure(&good, &h).expect("an honest batch passes");
            for claimed in [2i32, 4] {
                let mut b = good.clone();
                b[RECORDS_COUNT..RECORDS_COUNT + 4].copy_from_slice(&claimed.to_be_bytes());
                b[LAST_OFFSET_DELTA..LAST_OFFSET_DELTA + 4]
                    .copy_from_slice(&(claimed - 1).to_be_bytes());
                let crc = compute_crc(&b);
                b[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
                let h = parse_and_verify(&b).expect("crc ok");
                let err = validate_structure(&b, &h).expect_err("count mismatch refused");
                assert!(err.to_string().contains("found 3"), "{c:?}: {err}");
            }
        }
    }

    #[test]
    fn oversize_and_corrupt_batches_are_refused_whole() {
        let b = encoded_batch(3, Compression::None, 0);
        assert!(matches!(
            validate_produce(b.clone().freeze(), 10),
            Err(BatchError::TooLarge { .. })
        ));
        let mut two = b.clone();
        two.extend_from_slice(&b);
        let n = two.len();
        two[n - 1] ^= 1;
        assert!(validate_produce(two.freeze(), 1 << 20).is_err());
    }
}
