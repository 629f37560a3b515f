//! A minimal pipelined Kafka producer and fetcher, for measuring the broker
//! rather than the client. librdkafka spends about a microsecond of CPU per
//! record (allocation, locking, copying into its own batches); on a 2-core
//! box shared with the broker, that caps throughput before the broker does.
//! The producer encodes one real record batch (v2, CRC-32C, kafka-protocol's
//! encoder) once and sends it over and over with a bounded number of Produce
//! requests in flight; the broker validates, restamps and stores every copy
//! as it would any client's batch. The fetcher walks every record's framing
//! (as a client must to hand records out) but allocates nothing per record.
//! Requests travel on Sluice's internal client (`sluice-client`), the same
//! pipelined connection type the brokers use between themselves.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesOrdered, StreamExt};
use hdrhistogram::Histogram;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use sluice_client::Connection;

/// Produce v8: the newest non-flexible version, which every broker in the
/// range this project targets accepts.
const PRODUCE_VERSION: i16 = 8;

pub struct RawProduceSettings<'a> {
    pub bootstrap: &'a str,
    pub topic: &'a str,
    pub partitions: i32,
    /// Record values, used round-robin.
    pub values: &'a [Vec<u8>],
    pub records: u64,
    /// Target batch size in bytes (records per batch = this / record size).
    pub batch_bytes: usize,
    pub acks: i16,
    pub max_in_flight: usize,
}

pub struct RawProduceResult {
    pub records: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Request round trip, recorded once per record it carried.
    pub latency_us: Histogram<u64>,
}

/// How long one request may take before the run fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A current-thread runtime for the blocking API of this module.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")
}

async fn connect(addr: &str) -> Result<Connection> {
    Connection::connect(addr, "sluice-bench-raw", Duration::from_secs(10))
        .await
        .with_context(|| format!("cannot connect to {addr}"))
}

/// One v2 batch of `n` records taken from `values`.
fn encode_batch(values: &[Vec<u8>], n: usize) -> Result<Bytes> {
    encode_batch_as(values, n, None)
}

/// An idempotent producer's identity and the batch's first sequence;
/// `transactional` marks the batch as part of the producer's open
/// transaction.
#[derive(Debug, Clone, Copy)]
pub struct Idempotent {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub first_sequence: i32,
    pub transactional: bool,
}

fn encode_batch_as(values: &[Vec<u8>], n: usize, producer: Option<Idempotent>) -> Result<Bytes> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: producer.is_some_and(|p| p.transactional),
            control: false,
            partition_leader_epoch: -1,
            producer_id: producer.map_or(-1, |p| p.producer_id),
            producer_epoch: producer.map_or(-1, |p| p.producer_epoch),
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder starts a new batch wherever offset - sequence
            // changes; this keeps one batch with base sequence -1 (none).
            sequence: producer.map_or(-1, |p| p.first_sequence) + i as i32,
            timestamp: now,
            key: None,
            value: Some(Bytes::copy_from_slice(&values[i % values.len()])),
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
            compression: Compression::None,
        },
    )
    .context("encoding the benchmark batch")?;
    Ok(buf.freeze())
}

fn produce_request(
    topic: &str,
    partition: i32,
    acks: i16,
    batch: &Bytes,
    timeout_ms: i32,
) -> ProduceRequest {
    let mut part = PartitionProduceData::default();
    part.index = partition;
    part.records = Some(batch.clone());
    let mut td = TopicProduceData::default();
    td.name = TopicName(StrBytes::from_string(topic.to_string()));
    td.partition_data = vec![part];
    let mut req = ProduceRequest::default();
    req.acks = acks;
    req.timeout_ms = timeout_ms;
    req.topic_data = vec![td];
    req
}

fn check_produced(resp: &ProduceResponse) -> Result<()> {
    for t in &resp.responses {
        for p in &t.partition_responses {
            if p.error_code != 0 {
                bail!(
                    "partition {} refused a batch: error {} {:?}",
                    p.index,
                    p.error_code,
                    p.error_message
                );
            }
        }
    }
    Ok(())
}

/// Sends one batch of `values` to exactly the broker at `addr` (no
/// metadata, no retries, no routing): for tests that must talk to one
/// particular broker, such as a leader cut off from its cluster. `Ok` only
/// if that broker acknowledged the batch within `timeout_ms`.
pub fn produce_once(
    addr: &str,
    topic: &str,
    partition: i32,
    acks: i16,
    values: &[Vec<u8>],
    timeout_ms: i32,
) -> Result<()> {
    let resp = produce_answer(
        addr,
        topic,
        partition,
        acks,
        values,
        timeout_ms,
        PRODUCE_VERSION,
    )?;
    check_produced(&resp)
}

/// [`produce_once`] in Produce `version`, returning the broker's answer
/// whatever it is.
pub fn produce_answer(
    addr: &str,
    topic: &str,
    partition: i32,
    acks: i16,
    values: &[Vec<u8>],
    timeout_ms: i32,
    version: i16,
) -> Result<ProduceResponse> {
    let batch = encode_batch(values, values.len())?;
    let req = produce_request(topic, partition, acks, &batch, timeout_ms);
    let wait = Duration::from_millis(timeout_ms.max(0) as u64 + 5_000);
    runtime()?.block_on(async {
        let conn = connect(addr).await?;
        Ok(conn.send(&req, version, wait).await?)
    })
}

/// One idempotent batch of `values` to the broker at `addr` (acks=all,
/// Produce v9), returning the broker's answer whatever it is.
pub fn produce_idempotent(
    addr: &str,
    topic: &str,
    partition: i32,
    producer: Idempotent,
    values: &[Vec<u8>],
) -> Result<ProduceResponse> {
    let batch = encode_batch_as(values, values.len(), Some(producer))?;
    let req = produce_request(topic, partition, -1, &batch, 5_000);
    runtime()?.block_on(async {
        let conn = connect(addr).await?;
        Ok(conn.send(&req, 9, CALL_TIMEOUT).await?)
    })
}

/// InitProducerId for `transactional_id` at the broker at `addr` (its
/// coordinator): the producer id and epoch.
pub fn init_transactional(addr: &str, transactional_id: &str) -> Result<(i64, i16)> {
    use kafka_protocol::messages::{InitProducerIdRequest, TransactionalId};
    let mut req = InitProducerIdRequest::default();
    req.transactional_id = Some(TransactionalId(StrBytes::from_string(
        transactional_id.to_string(),
    )));
    req.transaction_timeout_ms = 60_000;
    req.producer_id = kafka_protocol::messages::ProducerId(-1);
    req.producer_epoch = -1;
    let resp = runtime()?.block_on(async {
        let conn = connect(addr).await?;
        anyhow::Ok(conn.send(&req, 4, CALL_TIMEOUT).await?)
    })?;
    if resp.error_code != 0 {
        bail!("InitProducerId: error {}", resp.error_code);
    }
    Ok((resp.producer_id.0, resp.producer_epoch))
}

/// AddPartitionsToTxn v3 (a client's) to the coordinator at `addr`; each
/// partition's error code.
pub fn add_partitions_to_txn(
    addr: &str,
    transactional_id: &str,
    (producer_id, producer_epoch): (i64, i16),
    topic: &str,
    partitions: &[i32],
) -> Result<Vec<(i32, i16)>> {
    use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
    use kafka_protocol::messages::{AddPartitionsToTxnRequest, ProducerId, TransactionalId};
    let mut t = AddPartitionsToTxnTopic::default();
    t.name = TopicName(StrBytes::from_string(topic.to_string()));
    t.partitions = partitions.to_vec();
    let mut req = AddPartitionsToTxnRequest::default();
    req.v3_and_below_transactional_id =
        TransactionalId(StrBytes::from_string(transactional_id.to_string()));
    req.v3_and_below_producer_id = ProducerId(producer_id);
    req.v3_and_below_producer_epoch = producer_epoch;
    req.v3_and_below_topics = vec![t];
    let resp = runtime()?.block_on(async {
        let conn = connect(addr).await?;
        anyhow::Ok(conn.send(&req, 3, CALL_TIMEOUT).await?)
    })?;
    Ok(resp
        .results_by_topic_v3_and_below
        .iter()
        .flat_map(|t| &t.results_by_partition)
        .map(|p| (p.partition_index, p.partition_error_code))
        .collect())
}

/// One transactional batch of `values` (acks=all, Produce v9) naming
/// `transactional_id`, to the broker at `addr`; its answer whatever it is.
pub fn produce_in_transaction(
    addr: &str,
    topic: &str,
    partition: i32,
    transactional_id: &str,
    producer: Idempotent,
    values: &[Vec<u8>],
) -> Result<ProduceResponse> {
    use kafka_protocol::messages::TransactionalId;
    let batch = encode_batch_as(values, values.len(), Some(producer))?;
    let mut req = produce_request(topic, partition, -1, &batch, 5_000);
    req.transactional_id = Some(TransactionalId(StrBytes::from_string(
        transactional_id.to_string(),
    )));
    runtime()?.block_on(async {
        let conn = connect(addr).await?;
        Ok(conn.send(&req, 9, CALL_TIMEOUT).await?)
    })
}

/// Ends producer `producer`'s transaction (`commit` or abort) in
/// `partitions` of `topic` with WriteTxnMarkers to the broker at `addr`,
/// as a transaction coordinator does; returns each partition's error code.
pub fn write_txn_markers(
    addr: &str,
    (producer_id, producer_epoch): (i64, i16),
    commit: bool,
    topic: &str,
    partitions: &[i32],
) -> Result<Vec<(i32, i16)>> {
    use kafka_protocol::messages::WriteTxnMarkersRequest;
    use kafka_protocol::messages::write_txn_markers_request::{
        WritableTxnMarker, WritableTxnMarkerTopic,
    };
    let mut t = WritableTxnMarkerTopic::default();
    t.name = TopicName(StrBytes::from_string(topic.to_string()));
    t.partition_indexes = partitions.to_vec();
    let mut m = WritableTxnMarker::default();
    m.producer_id = kafka_protocol::messages::ProducerId(producer_id);
    m.producer_epoch = producer_epoch;
    m.transaction_result = commit;
    m.coordinator_epoch = 0;
    m.topics = vec![t];
    let mut req = WriteTxnMarkersRequest::default();
    req.markers = vec![m];
    runtime()?.block_on(async {
        let conn = connect(addr).await?;
        let resp = conn.send(&req, 1, CALL_TIMEOUT).await?;
        Ok(resp
            .markers
            .iter()
            .flat_map(|m| m.topics.iter())
            .flat_map(|t| t.partitions.iter())
            .map(|p| (p.partition_index, p.error_code))
            .collect())
    })
}

/// Produces `settings.records` (rounded up to whole batches) and waits for
/// every acknowledgement.
pub fn produce(s: &RawProduceSettings<'_>) -> Result<RawProduceResult> {
    if s.acks == 0 {
        bail!("the raw client measures acknowledged writes: use acks 1 or all");
    }
    let record_size = s.values.first().map_or(0, Vec::len).max(1);
    let per_batch = (s.batch_bytes / record_size).max(1);
    let batch = encode_batch(s.values, per_batch)?;
    let requests = s.records.div_ceil(per_batch as u64);
    let mut latency_us = Histogram::new_with_bounds(1, 600_000_000, 3)?;
    let elapsed = runtime()?.block_on(async {
        let conn = connect(s.bootstrap).await?;
        let mut in_flight = FuturesOrdered::new();
        let start = Instant::now();
        let mut sent = 0u64;
        let mut acked = 0u64;
        while acked < requests {
            if sent < requests && in_flight.len() < s.max_in_flight {
                let partition = (sent % s.partitions as u64) as i32;
                let req = produce_request(s.topic, partition, s.acks, &batch, 30_000);
                let conn = &conn;
                in_flight.push_back(async move {
                    let at = Instant::now();
                    let resp = conn.send(&req, PRODUCE_VERSION, CALL_TIMEOUT).await;
                    (resp, at.elapsed())
                });
                sent += 1;
                continue;
            }
            let Some((resp, took)) = in_flight.next().await else {
                bail!("nothing in flight and nothing left to send");
            };
            check_produced(&resp?)?;
            let us = (took.as_micros() as u64).max(1);
            latency_us.saturating_record_n(us, per_batch as u64);
            acked += 1;
        }
        Ok(start.elapsed())
    })?;
    let records = requests * per_batch as u64;
    Ok(RawProduceResult {
        records,
        bytes: records * record_size as u64,
        elapsed,
        latency_us,
    })
}

/// Fetch v11: the newest version that names topics rather than topic ids.
const FETCH_VERSION: i16 = 11;

pub struct RawConsumeResult {
    pub records: u64,
    /// Key + value bytes, as the librdkafka consumer phase counts them.
    pub bytes: u64,
    pub elapsed: Duration,
}

fn fetch_request(topic: &str, offsets: &[i64]) -> kafka_protocol::messages::FetchRequest {
    use kafka_protocol::messages::FetchRequest;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    let mut t = FetchTopic::default();
    t.topic = TopicName(StrBytes::from_string(topic.to_string()));
    t.partitions = offsets
        .iter()
        .enumerate()
        .map(|(p, &offset)| {
            let mut fp = FetchPartition::default();
            fp.partition = p as i32;
            fp.fetch_offset = offset;
            // librdkafka's fetch.message.max.bytes default.
            fp.partition_max_bytes = 1 << 20;
            fp
        })
        .collect();
    let mut req = FetchRequest::default();
    req.replica_id = kafka_protocol::messages::BrokerId(-1);
    req.max_wait_ms = 100;
    req.min_bytes = 1;
    req.max_bytes = 52_428_800;
    req.topics = vec![t];
    req
}

fn varint(buf: &mut &[u8]) -> Result<i64> {
    let mut raw = 0u64;
    for shift in (0..64).step_by(7) {
        let Some((&b, rest)) = buf.split_first() else {
            bail!("truncated varint");
        };
        *buf = rest;
        raw |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
        }
    }
    bail!("varint too long")
}

/// Records and key+value bytes of the uncompressed batches in `records`,
/// and the offset after the last whole batch.
fn walk_batches(mut records: &[u8], mut next: i64) -> Result<(u64, u64, i64)> {
    let (mut count, mut bytes) = (0u64, 0u64);
    while records.len() >= 61 {
        let be_i32 = |at: usize| {
            i32::from_be_bytes([
                records[at],
                records[at + 1],
                records[at + 2],
                records[at + 3],
            ])
        };
        let base = i64::from_be_bytes(records[..8].try_into()?);
        let len = 12 + be_i32(8).max(0) as usize;
        if len > records.len() {
            break; // a partial batch at the end of a fetch
        }
        if i16::from_be_bytes([records[21], records[22]]) & 0x7 != 0 {
            bail!("the raw consumer reads uncompressed batches only");
        }
        let mut body = &records[61..len];
        while !body.is_empty() {
            let rec_len = varint(&mut body)? as usize;
            let Some((mut rec, rest)) = body.split_at_checked(rec_len) else {
                bail!("record overruns its batch");
            };
            body = rest;
            rec = &rec[1..]; // attributes
            varint(&mut rec)?; // timestamp delta
            let delta = varint(&mut rec)?;
            let key = varint(&mut rec)?.max(0) as usize;
            rec = rec.get(key..).context("key overruns its record")?;
            let value = varint(&mut rec)?.max(0) as usize;
            if base + delta >= next {
                count += 1;
                bytes += (key + value) as u64;
            }
        }
        next = next.max(base + i64::from(be_i32(23)) + 1);
        records = &records[len..];
    }
    Ok((count, bytes, next))
}

/// Reads `expected` records from offset 0 of every partition, one fetch at
/// a time, parsing each record's framing the way a client must.
pub fn consume(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: u64,
) -> Result<RawConsumeResult> {
    let mut offsets = vec![0i64; partitions.max(1) as usize];
    let (mut records, mut bytes) = (0u64, 0u64);
    let rt = runtime()?;
    let conn = rt.block_on(connect(bootstrap))?;
    let start = Instant::now();
    let mut idle_since = Instant::now();
    while records < expected {
        let req = fetch_request(topic, &offsets);
        let resp = rt.block_on(conn.send(&req, FETCH_VERSION, CALL_TIMEOUT))?;
        let before = records;
        for p in resp.responses.iter().flat_map(|t| &t.partitions) {
            if p.error_code != 0 {
                bail!(
                    "fetch of partition {} failed: error {}",
                    p.partition_index,
                    p.error_code
                );
            }
            let Some(slot) = offsets.get_mut(p.partition_index as usize) else {
                continue;
            };
            if let Some(data) = &p.records {
                let (n, b, next) = walk_batches(data, *slot)?;
                records += n;
                bytes += b;
                *slot = next;
            }
        }
        if records > before {
            idle_since = Instant::now();
        } else if idle_since.elapsed() > Duration::from_secs(30) {
            bail!("consume stalled at {records} of {expected} records");
        }
    }
    Ok(RawConsumeResult {
        records,
        bytes,
        elapsed: start.elapsed(),
    })
}
