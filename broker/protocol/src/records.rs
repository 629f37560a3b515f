//! Record-level view of a v2 batch: decode (decompressing, bounded) into
//! records that keep header order and duplicate header keys — which the
//! kafka-protocol crate's decoder collapses — and encode records into a
//! fresh batch. Used by plugins, timestamp lookups and the broker's own
//! internal topics; client batches on plugin-free topics never come here.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};
use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};
use sluice_plugin::Record;

use crate::batch::{self, BatchError, BatchHeader, HEADER_LEN};

/// Decompressed records larger than this are refused (a compression bomb
/// would otherwise be inflated in broker memory).
pub const MAX_DECOMPRESSED: usize = 64 << 20;

fn invalid(msg: impl Into<String>) -> BatchError {
    BatchError::Invalid(msg.into())
}

fn read_varint(buf: &mut &[u8]) -> Result<i32, BatchError> {
    batch::read_varint(buf).ok_or_else(|| invalid("malformed varint in record"))
}

fn read_varlong(buf: &mut &[u8]) -> Result<i64, BatchError> {
    batch::read_varlong(buf).ok_or_else(|| invalid("malformed varlong in record"))
}

fn read_nullable<'a>(buf: &mut &'a [u8]) -> Result<Option<&'a [u8]>, BatchError> {
    let len = read_varint(buf)?;
    if len < 0 {
        return Ok(None);
    }
    let len = len as usize;
    if buf.len() < len {
        return Err(invalid("record field overruns the batch"));
    }
    let (a, b) = buf.split_at(len);
    *buf = b;
    Ok(Some(a))
}

fn decompress(codec: i16, data: &[u8]) -> Result<Vec<u8>, BatchError> {
    crate::compression::decompress(codec, data, MAX_DECOMPRESSED).map_err(invalid)
}

/// The records of one batch, in order. `bytes` must hold exactly one batch.
/// Records of an uncompressed batch borrow from `bytes`.
pub fn decode(bytes: &[u8]) -> Result<(BatchHeader, Vec<Record<'_>>), BatchError> {
    let (h, entries) = decode_entries(bytes)?;
    Ok((h, entries.into_iter().map(|(_, r)| r).collect()))
}

/// Like `decode`, with each record's offset delta within the batch.
pub fn decode_entries(bytes: &[u8]) -> Result<(BatchHeader, Vec<(i32, Record<'_>)>), BatchError> {
    let h = batch::parse_header(bytes)?;
    let body = &bytes[HEADER_LEN..h.len];
    if h.compression() == 0 {
        return Ok((h, parse_entries(&h, body)?));
    }
    let raw = decompress(h.compression(), body)?;
    let entries = parse_entries(&h, &raw)?
        .into_iter()
        .map(|(d, r)| (d, r.into_owned()))
        .collect();
    Ok((h, entries))
}

fn parse_entries<'a>(
    h: &BatchHeader,
    mut buf: &'a [u8],
) -> Result<Vec<(i32, Record<'a>)>, BatchError> {
    let mut out = Vec::with_capacity((h.records_count.max(0) as usize).min(buf.len() / 7));
    while !buf.is_empty() {
        let len = read_varint(&mut buf)?;
        if len < 0 || len as usize > buf.len() {
            return Err(invalid("record length overruns the batch"));
        }
        let (mut rec, rest) = buf.split_at(len as usize);
        buf = rest;
        let _attributes = rec.first().ok_or_else(|| invalid("empty record"))?;
        rec = &rec[1..];
        let ts_delta = read_varlong(&mut rec)?;
        let offset_delta = read_varint(&mut rec)?;
        let key = read_nullable(&mut rec)?.map(Cow::Borrowed);
        let value = read_nullable(&mut rec)?.map(Cow::Borrowed);
        let n = read_varint(&mut rec)?;
        if n < 0 || n as usize > rec.len() {
            return Err(invalid("header count overruns the record"));
        }
        let mut headers = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let k = read_nullable(&mut rec)?.ok_or_else(|| invalid("null header key"))?;
            let k = std::str::from_utf8(k).map_err(|_| invalid("header key is not UTF-8"))?;
            headers.push((
                Cow::Borrowed(k),
                read_nullable(&mut rec)?.map(Cow::Borrowed),
            ));
        }
        let timestamp = if h.is_log_append_time() {
            h.max_timestamp
        } else {
            h.base_timestamp.saturating_add(ts_delta)
        };
        out.push((
            offset_delta,
            Record {
                timestamp,
                key,
                value,
                headers,
            },
        ));
    }
    if out.len() != h.records_count.max(0) as usize {
        return Err(invalid(format!(
            "batch says {} records, found {}",
            h.records_count,
            out.len()
        )));
    }
    Ok(out)
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        let b = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn put_nullable(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

/// Producer fields of a re-encoded batch.
#[derive(Debug, Clone, Copy)]
pub struct Producer {
    pub id: i64,
    pub epoch: i16,
    pub base_sequence: i32,
    /// The batch belongs to the producer's open transaction (the
    /// attributes' transactional bit).
    pub transactional: bool,
}

impl Producer {
    pub const NONE: Producer = Producer {
        id: -1,
        epoch: -1,
        base_sequence: -1,
        transactional: false,
    };
}

/// A new v2 batch holding `records`, compressed with `codec`; base offset 0
/// (the log assigns the real one), CRC computed.
pub fn encode(
    records: &[Record<'_>],
    codec: i16,
    log_append_time: bool,
    producer: Producer,
) -> Result<BytesMut, BatchError> {
    if records.is_empty() {
        return Err(invalid("cannot encode an empty batch"));
    }
    let base_ts = records.iter().map(|r| r.timestamp).min().unwrap_or(0);
    let max_ts = records.iter().map(|r| r.timestamp).max().unwrap_or(0);
    let entries: Vec<(i32, &Record<'_>)> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (i as i32, r))
        .collect();
    let shape = Shape {
        base_offset: 0,
        last_offset_delta: records.len() as i32 - 1,
        base_timestamp: base_ts,
        max_timestamp: max_ts,
        codec,
        log_append_time,
        producer,
        partition_leader_epoch: -1,
        flags: transactional_bit(producer),
    };
    encode_entries(&entries, &shape)
}

/// A new uncompressed batch of `records` in a producer's open transaction,
/// written by a coordinator on its behalf (transactional offset commits):
/// the transactional bit, the producer's id and epoch, no sequence.
pub fn encode_in_transaction(
    records: &[Record<'_>],
    producer_id: i64,
    producer_epoch: i16,
) -> Result<BytesMut, BatchError> {
    let producer = Producer {
        id: producer_id,
        epoch: producer_epoch,
        base_sequence: -1,
        transactional: true,
    };
    encode(records, 0, false, producer)
}

/// A stored batch with some records filtered out, as compaction would leave
/// it: same base offset, last offset delta, timestamps and producer fields,
/// the surviving records keeping their offsets. With no survivors the batch
/// is kept as an empty header so consumers still advance past its offsets.
/// A batch holding no records that still occupies one offset and carries a
/// producer's sequence (like the empty batches compaction leaves behind):
/// consumers step over it.
pub fn encode_empty(timestamp: i64, producer: Producer) -> Result<BytesMut, BatchError> {
    let shape = Shape {
        base_offset: 0,
        last_offset_delta: 0,
        base_timestamp: timestamp,
        max_timestamp: timestamp,
        codec: 0,
        log_append_time: false,
        producer,
        partition_leader_epoch: -1,
        flags: transactional_bit(producer),
    };
    encode_entries(&[], &shape)
}

pub fn encode_filtered(
    h: &BatchHeader,
    kept: &[(i32, Record<'_>)],
) -> Result<BytesMut, BatchError> {
    let entries: Vec<(i32, &Record<'_>)> = kept.iter().map(|(d, r)| (*d, r)).collect();
    let shape = Shape {
        base_offset: h.base_offset,
        last_offset_delta: h.last_offset_delta,
        base_timestamp: h.base_timestamp,
        max_timestamp: h.max_timestamp,
        codec: if kept.is_empty() { 0 } else { h.compression() },
        log_append_time: h.is_log_append_time(),
        producer: Producer {
            id: h.producer_id,
            epoch: h.producer_epoch,
            base_sequence: h.base_sequence,
            transactional: h.is_transactional(),
        },
        partition_leader_epoch: h.partition_leader_epoch,
        flags: h.attributes & (batch::TRANSACTIONAL_BIT | batch::CONTROL_BIT),
    };
    encode_entries(&entries, &shape)
}

/// How a transaction ended: the type in a control record's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    Abort,
    Commit,
}

impl Marker {
    fn code(self) -> i16 {
        match self {
            Marker::Abort => 0,
            Marker::Commit => 1,
        }
    }
}

/// The transaction marker a control batch carries (its first record's
/// key: version 0, then the type) and the epoch of the coordinator that
/// wrote it (the value: version, then the epoch; -1 if absent). Kafka
/// ignores control records of other types; so does this (`Ok(None)`).
pub fn parse_marker(bytes: &[u8]) -> Result<Option<(Marker, i32)>, BatchError> {
    let (h, records) = decode(bytes)?;
    if !h.is_control() {
        return Err(invalid("not a control batch"));
    }
    let first = records
        .first()
        .ok_or_else(|| invalid("control batch without a record"))?;
    let key = first
        .key()
        .ok_or_else(|| invalid("control batch without a keyed record"))?;
    let coordinator_epoch = first
        .value()
        .filter(|v| v.len() >= 6)
        .map_or(-1, |v| i32::from_be_bytes([v[2], v[3], v[4], v[5]]));
    if key.len() < 4 {
        return Err(invalid("control record key shorter than 4 bytes"));
    }
    let version = i16::from_be_bytes([key[0], key[1]]);
    if version < 0 {
        return Err(invalid(format!("control record key version {version}")));
    }
    let marker = match i16::from_be_bytes([key[2], key[3]]) {
        0 => Marker::Abort,
        1 => Marker::Commit,
        _ => return Ok(None),
    };
    Ok(Some((marker, coordinator_epoch)))
}

/// A transaction marker as the coordinator has it written to each
/// partition of the transaction: a control batch of one record, the
/// producer's id and epoch, no sequence.
pub fn encode_marker(
    producer_id: i64,
    producer_epoch: i16,
    marker: Marker,
    coordinator_epoch: i32,
    timestamp: i64,
) -> Result<BytesMut, BatchError> {
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&marker.code().to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&coordinator_epoch.to_be_bytes());
    let record = Record {
        timestamp,
        key: Some(Cow::Owned(key)),
        value: Some(Cow::Owned(value)),
        headers: Vec::new(),
    };
    let shape = Shape {
        base_offset: 0,
        last_offset_delta: 0,
        base_timestamp: timestamp,
        max_timestamp: timestamp,
        codec: 0,
        log_append_time: false,
        producer: Producer {
            id: producer_id,
            epoch: producer_epoch,
            base_sequence: -1,
            transactional: true,
        },
        partition_leader_epoch: -1,
        flags: batch::TRANSACTIONAL_BIT | batch::CONTROL_BIT,
    };
    encode_entries(&[(0, &record)], &shape)
}

fn transactional_bit(producer: Producer) -> i16 {
    if producer.transactional {
        batch::TRANSACTIONAL_BIT
    } else {
        0
    }
}

/// Batch-level fields of an encoded batch.
struct Shape {
    base_offset: i64,
    last_offset_delta: i32,
    base_timestamp: i64,
    max_timestamp: i64,
    codec: i16,
    log_append_time: bool,
    producer: Producer,
    partition_leader_epoch: i32,
    /// Transactional and control bits of the attributes.
    flags: i16,
}

fn varint_len(v: i64) -> usize {
    let z = ((v << 1) ^ (v >> 63)) as u64;
    (64 - z.leading_zeros() as usize).max(1).div_ceil(7)
}

fn nullable_len(b: Option<&[u8]>) -> usize {
    b.map_or(varint_len(-1), |b| varint_len(b.len() as i64) + b.len())
}

/// Appends one record (length-prefixed, as in a v2 batch) to `out`,
/// computing its length first so the bytes are written once.
fn put_record(out: &mut Vec<u8>, delta: i32, r: &Record<'_>, base_ts: i64) {
    let ts_delta = r.timestamp - base_ts;
    let headers_len: usize = r
        .headers
        .iter()
        .map(|(k, v)| nullable_len(Some(k.as_bytes())) + nullable_len(v.as_deref()))
        .sum();
    let len = 1
        + varint_len(ts_delta)
        + varint_len(i64::from(delta))
        + nullable_len(r.key.as_deref())
        + nullable_len(r.value.as_deref())
        + varint_len(r.headers.len() as i64)
        + headers_len;
    out.reserve(varint_len(len as i64) + len);
    put_varint(out, len as i64);
    out.push(0);
    put_varint(out, ts_delta);
    put_varint(out, i64::from(delta));
    put_nullable(out, r.key.as_deref());
    put_nullable(out, r.value.as_deref());
    put_varint(out, r.headers.len() as i64);
    for (k, v) in &r.headers {
        put_nullable(out, Some(k.as_bytes()));
        put_nullable(out, v.as_deref());
    }
}

/// Encodes a batch. Uncompressed records are written once, straight after
/// the header; compressed ones are staged, then compressed after it.
fn encode_entries(entries: &[(i32, &Record<'_>)], shape: &Shape) -> Result<BytesMut, BatchError> {
    let codec = shape.codec;
    let base_ts = shape.base_timestamp;
    let mut out: Vec<u8> = vec![0; HEADER_LEN];
    let mut staged = Vec::new();
    let records_out = if codec == 0 { &mut out } else { &mut staged };
    for (delta, r) in entries {
        put_record(records_out, *delta, r, base_ts);
    }
    if codec != 0 {
        let mut body = BytesMut::new();
        let stage = |b: &mut BytesMut| {
            b.put_slice(&staged);
            Ok(())
        };
        let compressed = match codec {
            1 => Gzip::compress(&mut body, stage),
            2 => Snappy::compress(&mut body, stage),
            3 => Lz4::compress(&mut body, stage),
            4 => Zstd::compress(&mut body, stage),
            other => return Err(invalid(format!("unknown compression codec {other}"))),
        };
        compressed.map_err(|e| invalid(format!("compressing records: {e}")))?;
        out.extend_from_slice(&body);
    }
    let body_len = out.len() - HEADER_LEN;
    let attributes = codec | shape.flags | if shape.log_append_time { 0x08 } else { 0 };
    let mut header = &mut out[..HEADER_LEN];
    header.put_i64(shape.base_offset);
    header.put_i32((HEADER_LEN - batch::LOG_OVERHEAD + body_len) as i32);
    header.put_i32(shape.partition_leader_epoch);
    header.put_i8(2);
    header.put_u32(0);
    header.put_i16(attributes);
    header.put_i32(shape.last_offset_delta);
    header.put_i64(base_ts);
    header.put_i64(shape.max_timestamp);
    header.put_i64(shape.producer.id);
    header.put_i16(shape.producer.epoch);
    header.put_i32(shape.producer.base_sequence);
    header.put_i32(entries.len() as i32);
    let crc = batch::compute_crc(&out);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    // A Vec becomes a BytesMut without a copy.
    Ok(BytesMut::from(bytes::Bytes::from(out)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::tests::{ALL_CODECS, encoded_batch};
    use kafka_protocol::records::Compression;

    /// Small and large fields, so lengths and deltas need multi-byte varints.
    fn sample() -> Vec<Record<'static>> {
        (0..6)
            .map(|i| Record {
                timestamp: 1000 + i * i * 10_000,
                key: (i % 2 == 0).then(|| format!("k{i}").into_bytes().into()),
                value: Some(
                    format!("v{i}")
                        .repeat(1 + i as usize * 100)
                        .into_bytes()
                        .into(),
                ),
                headers: vec![("h".into(), Some(b"1"[..].into())), ("h".into(), None)],
            })
            .collect()
    }

    #[test]
    fn transaction_markers_round_trip_and_filtering_keeps_the_transactional_bit() {
        use kafka_protocol::records::RecordBatchDecoder;
        for marker in [Marker::Abort, Marker::Commit] {
            let b = encode_marker(7, 3, marker, 11, 1_000).expect("encode");
            let h = batch::parse_and_verify(&b).expect("a valid batch");
            assert!(h.is_control() && h.is_transactional());
            assert_eq!(
                (h.producer_id, h.producer_epoch, h.base_sequence),
                (7, 3, -1)
            );
            assert_eq!(parse_marker(&b).expect("parse"), Some((marker, 11)));
            // Clients decode it as a control record of that type.
            let mut buf = bytes::Bytes::from(b.to_vec());
            let set = RecordBatchDecoder::decode(&mut buf).expect("kafka-protocol decodes it");
            assert!(set.records[0].control);
        }
        let plain = encode(&sample(), 0, false, Producer::NONE).expect("encode");
        assert!(parse_marker(&plain).is_err(), "not a control batch");
        let txn = crate::batch::tests::transactional_batch(3, 1_000, 5, 0, 0);
        let (h, entries) = decode_entries(&txn).expect("decode");
        let kept = encode_filtered(&h, &entries[1..]).expect("filter");
        assert!(
            batch::parse_header(&kept)
                .expect("header")
                .is_transactional()
        );
    }

    /// The batches Sluice writes decode with kafka-protocol's decoder too.
    #[test]
    fn encoded_batches_read_back_with_another_decoder() {
        use kafka_protocol::records::RecordBatchDecoder;
        for codec in 0..=4 {
            let b = encode(&sample(), codec, false, Producer::NONE).expect("encode");
            let mut buf = bytes::Bytes::from(b.to_vec());
            let set = RecordBatchDecoder::decode(&mut buf).expect("kafka-protocol decodes it");
            let theirs: Vec<_> = set
                .records
                .iter()
                .map(|r| (r.timestamp, r.key.clone(), r.value.clone()))
                .collect();
            let ours: Vec<_> = sample()
                .into_iter()
                .map(|r| {
                    let b =
                        |c: Option<Cow<'_, [u8]>>| c.map(|c| bytes::Bytes::from(c.into_owned()));
                    (r.timestamp, b(r.key), b(r.value))
                })
                .collect();
            assert_eq!(theirs, ours, "codec {codec}");
        }
    }

    #[test]
    fn round_trips_every_codec_with_duplicate_headers() {
        for codec in 0..=4 {
            let b = encode(&sample(), codec, false, Producer::NONE).expect("encode");
            let h = batch::parse_and_verify(&b).expect("valid batch");
            assert_eq!(h.compression(), codec);
            batch::validate_structure(&b, &h).expect("structure");
            let (_, records) = decode(&b).expect("decode");
            assert_eq!(records, sample(), "codec {codec}");
        }
    }

    #[test]
    fn decodes_client_batches() {
        for c in ALL_CODECS {
            let b = encoded_batch(4, c, 50);
            let (h, records) = decode(&b).expect("decode");
            assert_eq!(records.len(), 4);
            assert_eq!(records[3].timestamp, 53);
            assert_eq!(records[1].value.as_deref(), Some(&b"value-1"[..]));
            assert_eq!(h.records_count, 4);
        }
    }

    #[test]
    fn filtered_batches_keep_stored_offsets() {
        let mut b = encode(&sample(), 2, false, Producer::NONE).expect("encode");
        crate::batch::set_base_offset(&mut b, 100);
        let (h, entries) = decode_entries(&b).expect("decode");
        let kept: Vec<(i32, Record)> = entries.into_iter().filter(|(d, _)| d % 2 == 1).collect();
        let f = encode_filtered(&h, &kept).expect("encode");
        let fh = batch::parse_and_verify(&f).expect("valid");
        assert_eq!(
            (fh.base_offset, fh.last_offset(), fh.records_count),
            (100, 105, 3)
        );
        let (_, again) = decode_entries(&f).expect("decode");
        assert_eq!(
            again.iter().map(|(d, _)| *d).collect::<Vec<_>>(),
            vec![1, 3, 5]
        );
        let empty = encode_filtered(&h, &[]).expect("empty");
        let eh = batch::parse_and_verify(&empty).expect("valid");
        assert_eq!((eh.records_count, eh.last_offset()), (0, 105));
    }

    #[test]
    fn garbage_records_are_errors() {
        let mut b = encoded_batch(2, Compression::None, 0);
        let n = b.len();
        b[HEADER_LEN] = 0x7e;
        let _ = n;
        assert!(decode(&b).is_err());
    }
}
