//! Fetch responses written without copying their records. The record bytes
//! of a fetch are the bulk of everything the broker sends; encoding them
//! into one response buffer costs a megabyte-sized copy per partition per
//! request. Here the response becomes a list of chunks: small encoded pieces
//! (header, topic and partition fields, all produced by `kafka-protocol`)
//! alternating with the partitions' record `Bytes`, which the connection
//! writes as they are.
//!
//! Only the framing between the pieces is written here: array counts, the
//! topic name, and the records field's length prefix. Each partition's
//! other fields are encoded by `kafka-protocol` with `records: None`, whose
//! null marker is then swapped for the real length. Anything this module
//! does not expect (tagged fields set, versions outside 4..=12) makes it
//! decline, and the caller encodes the response the ordinary way. A test
//! checks the chunks against `kafka-protocol`'s own encoding byte for byte.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::{ApiKey, FetchResponse, ResponseHeader};
use kafka_protocol::protocol::Encodable;

/// Records smaller than this are copied into the surrounding chunk: a
/// separate write costs more than the copy.
const SPLICE_AT: usize = 16 * 1024;

/// First version with compact (flexible) encodings and tagged fields.
const FLEXIBLE: i16 = 12;

fn put_uvarint(buf: &mut BytesMut, mut v: u32) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// An array count or a bytes length: INT32, or UNSIGNED_VARINT of n + 1
/// in flexible versions.
fn put_len(buf: &mut BytesMut, n: usize, version: i16) -> Option<()> {
    if version >= FLEXIBLE {
        put_uvarint(buf, u32::try_from(n).ok()?.checked_add(1)?);
    } else {
        buf.put_i32(i32::try_from(n).ok()?);
    }
    Some(())
}

/// STRING (INT16 length) or COMPACT_STRING.
fn put_string(buf: &mut BytesMut, s: &str, version: i16) -> Option<()> {
    if version >= FLEXIBLE {
        put_len(buf, s.len(), version)?;
    } else {
        buf.put_i16(i16::try_from(s.len()).ok()?);
    }
    buf.put_slice(s.as_bytes());
    Some(())
}

fn plain(p: &PartitionData) -> bool {
    p.diverging_epoch == Default::default()
        && p.current_leader == Default::default()
        && p.snapshot_id == Default::default()
        && p.unknown_tagged_fields.is_empty()
}

/// The response as chunks whose concatenation is the complete frame
/// (length prefix included), or `None` to have the caller encode it whole.
pub fn encode_chunks(
    correlation_id: i32,
    version: i16,
    resp: &FetchResponse,
) -> Option<Vec<Bytes>> {
    if !(4..=FLEXIBLE).contains(&version)
        || !resp.unknown_tagged_fields.is_empty()
        || !resp.node_endpoints.is_empty()
        || resp
            .responses
            .iter()
            .any(|t| !t.unknown_tagged_fields.is_empty() || !t.partitions.iter().all(plain))
    {
        return None;
    }
    let spliced = resp
        .responses
        .iter()
        .flat_map(|t| &t.partitions)
        .any(|p| p.records.as_ref().is_some_and(|r| r.len() >= SPLICE_AT));
    if !spliced {
        return None;
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut buf = BytesMut::with_capacity(1024);
    buf.put_i32(0); // frame length, set at the end
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    header
        .encode(&mut buf, ApiKey::Fetch.response_header_version(version))
        .ok()?;
    buf.put_i32(resp.throttle_time_ms);
    if version >= 7 {
        buf.put_i16(resp.error_code);
        buf.put_i32(resp.session_id);
    } else if resp.session_id != 0 || resp.error_code != 0 {
        return None;
    }
    put_len(&mut buf, resp.responses.len(), version)?;
    for topic in &resp.responses {
        put_string(&mut buf, &topic.topic, version)?;
        put_len(&mut buf, topic.partitions.len(), version)?;
        for p in &topic.partitions {
            let Some(records) = p.records.as_ref().filter(|r| r.len() >= SPLICE_AT) else {
                p.encode(&mut buf, version).ok()?;
                continue;
            };
            let mut fields = p.clone();
            fields.records = None;
            fields.encode(&mut buf, version).ok()?;
            // The encoding ends with the null records marker, then (when
            // flexible) an empty tagged-field section.
            let tail: &[u8] = if version >= FLEXIBLE {
                &[0x00, 0x00]
            } else {
                &[0xff, 0xff, 0xff, 0xff]
            };
            if !buf.ends_with(tail) {
                return None;
            }
            buf.truncate(buf.len() - tail.len());
            put_len(&mut buf, records.len(), version)?;
            chunks.push(buf.split().freeze());
            chunks.push(records.clone());
            if version >= FLEXIBLE {
                buf.put_u8(0); // the partition's (empty) tagged fields
            }
        }
        if version >= FLEXIBLE {
            buf.put_u8(0); // the topic's tagged fields
        }
    }
    if version >= FLEXIBLE {
        buf.put_u8(0); // the response's tagged fields
    }
    chunks.push(buf.freeze());
    let total: usize = chunks.iter().map(Bytes::len).sum();
    let frame_len = i32::try_from(total - 4).ok()?;
    // The first chunk starts with the length placeholder.
    let first = chunks.first_mut()?;
    let mut head = BytesMut::from(&first[..]);
    head[..4].copy_from_slice(&frame_len.to_be_bytes());
    *first = head.freeze();
    Some(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{
        AbortedTransaction, FetchableTopicResponse, LeaderIdAndEpoch,
    };
    use kafka_protocol::messages::{ResponseKind, TopicName};
    use kafka_protocol::protocol::StrBytes;

    fn partition(index: i32, records: Option<usize>, error: i16) -> PartitionData {
        let mut p = PartitionData::default();
        p.partition_index = index;
        p.error_code = error;
        p.high_watermark = 1000 + i64::from(index);
        p.last_stable_offset = 999;
        p.log_start_offset = 7;
        p.records =
            records.map(|n| Bytes::from((0..n).map(|i| (i % 251) as u8).collect::<Vec<_>>()));
        p
    }

    fn response(version: i16) -> FetchResponse {
        let mut r = FetchResponse::default();
        r.throttle_time_ms = 3;
        if version >= 7 {
            r.session_id = 42;
        }
        for (t, name) in ["alpha", "a-much-longer-topic-name"].iter().enumerate() {
            let mut tr = FetchableTopicResponse::default();
            tr.topic = TopicName(StrBytes::from_string(name.to_string()));
            tr.partitions = vec![
                partition(0, Some(100_000 + t), 0),
                partition(1, None, 1),
                partition(2, Some(10), 0),
                partition(3, Some(0), 0),
                partition(4, Some(SPLICE_AT), 0),
            ];
            if t == 1 {
                tr.partitions[0].aborted_transactions = Some(vec![AbortedTransaction::default()]);
                tr.partitions[2].aborted_transactions = None;
            }
            r.responses.push(tr);
        }
        r
    }

    #[test]
    fn chunks_equal_the_crate_encoding_in_every_version() {
        for version in 4..=FLEXIBLE {
            let resp = response(version);
            let whole = crate::encode_response(
                ApiKey::Fetch,
                version,
                77,
                &ResponseKind::Fetch(resp.clone()),
            )
            .expect("crate encoding");
            let chunks = encode_chunks(77, version, &resp).expect("spliceable");
            assert!(chunks.len() > 4, "big records travel as their own chunks");
            let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
            assert_eq!(joined, whole.to_vec(), "version {version}");
        }
    }

    #[test]
    fn declines_what_it_does_not_encode() {
        let mut resp = response(FLEXIBLE);
        assert!(encode_chunks(1, 13, &resp).is_none(), "topic-id versions");
        resp.responses[0].partitions[1].current_leader =
            LeaderIdAndEpoch::default().with_leader_id(2.into());
        assert!(encode_chunks(1, FLEXIBLE, &resp).is_none(), "tagged fields");
        let mut small = response(FLEXIBLE);
        for t in &mut small.responses {
            for p in &mut t.partitions {
                p.records = p.records.take().map(|r| r.slice(..r.len().min(10)));
            }
        }
        assert!(
            encode_chunks(1, FLEXIBLE, &small).is_none(),
            "nothing worth splicing"
        );
    }
}
