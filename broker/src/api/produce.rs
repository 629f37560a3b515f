//! Produce: validate each partition's batches (framing, CRC, structure,
//! size), append them as received with broker-assigned offsets and the
//! leader epoch, and answer according to `acks` — acks=all waits until the
//! data is fsynced here and replicated to every in-sync replica (the high
//! watermark passed it), and needs `min.insync.replicas` of them.

use futures::future::join_all;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::ProduceRequest;
use kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};

use std::sync::Arc;

use super::{error_code, str_bytes};
use crate::broker::Broker;
use crate::cluster::topic_config;
use crate::cluster::topics::Topic;
use crate::log::producer_state::{SequenceCheck, SequenceError};
use crate::log::records::{self as plugin_records, Producer};
use crate::log::{self, LogError, PartitionLog};
use crate::plugins::{Bindings, Outcome};

pub async fn produce(b: &Broker, req: ProduceRequest, _version: i16) -> Option<ProduceResponse> {
    let acks = req.acks;
    let deadline = std::time::Instant::now()
        + std::time::Duration::from_millis(req.timeout_ms.clamp(0, 300_000) as u64);
    let mut resp = ProduceResponse::default();
    // (topic index, partition index, topic, partition, leader epoch,
    // offset the high watermark must reach, min.insync.replicas)
    let mut to_commit = Vec::new();
    // (topic index, partition index, log, offset to flush to)
    let mut to_flush = Vec::new();
    for topic_data in req.topic_data {
        let name = topic_data.name.0.to_string();
        let topic = b.topics.get(&name);
        let mut topic_resp = TopicProduceResponse::default();
        topic_resp.name = topic_data.name.clone();
        for pd in topic_data.partition_data {
            let mut pr = PartitionProduceResponse::default();
            pr.index = pd.index;
            let fail = |pr: &mut PartitionProduceResponse, e: ResponseError, msg: String| {
                pr.error_code = error_code(b, e);
                pr.base_offset = -1;
                pr.error_message = Some(str_bytes(msg));
            };
            if !matches!(acks, -1..=1) {
                fail(
                    &mut pr,
                    ResponseError::InvalidRequiredAcks,
                    format!("acks={acks} is not one of -1, 0, 1"),
                );
                topic_resp.partition_responses.push(pr);
                continue;
            }
            let log = match topic.as_ref().map(|t| t.leader_log(pd.index, b.node_id)) {
                Some(Ok(log)) => log,
                Some(Err(e)) => {
                    fail(
                        &mut pr,
                        e,
                        format!(
                            "broker {} cannot take writes for {name}-{}",
                            b.node_id, pd.index
                        ),
                    );
                    topic_resp.partition_responses.push(pr);
                    continue;
                }
                None => {
                    fail(
                        &mut pr,
                        ResponseError::UnknownTopicOrPartition,
                        format!("topic-partition {name}-{} does not exist", pd.index),
                    );
                    topic_resp.partition_responses.push(pr);
                    continue;
                }
            };
            if crate::broker::is_internal_topic(&name) {
                fail(
                    &mut pr,
                    ResponseError::InvalidTopicException,
                    format!("{name} is an internal topic; clients cannot produce to it"),
                );
                topic_resp.partition_responses.push(pr);
                continue;
            }
            let payload = pd.records.unwrap_or_default();
            if let Some(source) = topic
                .as_ref()
                .and_then(|t| t.meta.view_of().map(String::from))
            {
                fail(
                    &mut pr,
                    ResponseError::InvalidTopicException,
                    format!("{name} is a read-only view of {source}; produce to {source}"),
                );
                topic_resp.partition_responses.push(pr);
                continue;
            }
            if let Some(bindings) = topic
                .as_ref()
                .and_then(|t| t.bindings.clone())
                .filter(|b| b.on_produce())
                && let Some(topic) = topic.as_ref()
            {
                match produce_through_plugins(b, topic, &bindings, pd.index, payload).await {
                    Ok(done) => {
                        pr.base_offset = done.base_offset;
                        pr.log_append_time_ms = done.log_append_time;
                        pr.log_start_offset = log.log_start_offset();
                        pr.error_message = done.message.map(str_bytes);
                        for (target, upto) in done.flush {
                            if acks == -1 || target.config().flush_messages == 1 {
                                to_flush.push((
                                    resp.responses.len(),
                                    topic_resp.partition_responses.len(),
                                    target,
                                    upto,
                                ));
                            }
                        }
                    }
                    Err((code, msg)) => {
                        tracing::info!(topic = %name, partition = pd.index, "produce refused by plugins: {msg}");
                        fail(&mut pr, code, msg);
                    }
                }
                topic_resp.partition_responses.push(pr);
                continue;
            }
            // The image may already name this broker leader while the
            // replica manager is still taking over (a moment after each
            // metadata change): wait for it rather than refuse, so requests
            // pipelined on one connection keep their order.
            let epoch = topic
                .as_ref()
                .and_then(|t| t.state(pd.index))
                .map_or(-1, |s| s.leader_epoch);
            let Some(leader) = b
                .replicas
                .await_leader(&name, pd.index, epoch, std::time::Duration::from_secs(2))
                .await
            else {
                fail(
                    &mut pr,
                    ResponseError::NotLeaderOrFollower,
                    format!(
                        "broker {} is not (yet) leading {name}-{}",
                        b.node_id, pd.index
                    ),
                );
                topic_resp.partition_responses.push(pr);
                continue;
            };
            let min_isr = topic
                .as_ref()
                .map_or(1, |t| topic_config::min_insync_replicas(&t.meta.configs));
            if acks == -1 && leader.isr_len() < min_isr {
                fail(
                    &mut pr,
                    ResponseError::NotEnoughReplicas,
                    format!(
                        "{name}-{} has {} in-sync replica(s), min.insync.replicas is {min_isr}",
                        pd.index,
                        leader.isr_len()
                    ),
                );
                topic_resp.partition_responses.push(pr);
                continue;
            }
            let config = log.config();
            let appended = log::validate_batches(payload.clone(), config.max_message_bytes)
                .and_then(|batch| log.append(batch, leader.leader_epoch));
            match appended {
                Ok(info) => {
                    pr.base_offset = info.base_offset;
                    pr.log_append_time_ms = info.log_append_time;
                    pr.log_start_offset = info.log_start_offset;
                    if info.duplicate {
                        b.metrics
                            .duplicate_batches
                            .with_label_values(&[&name])
                            .inc();
                    } else {
                        b.metrics
                            .bytes_in
                            .with_label_values(&[&name])
                            .inc_by(payload.len() as u64);
                        b.metrics
                            .records_in
                            .with_label_values(&[&name])
                            .inc_by(info.records as u64);
                    }
                    if acks == -1 {
                        to_commit.push((
                            resp.responses.len(),
                            topic_resp.partition_responses.len(),
                            name.clone(),
                            pd.index,
                            leader.leader_epoch,
                            info.last_offset + 1,
                            min_isr,
                        ));
                    }
                    if acks == -1 || info.flush_due {
                        to_flush.push((
                            resp.responses.len(),
                            topic_resp.partition_responses.len(),
                            log.clone(),
                            info.last_offset + 1,
                        ));
                    }
                }
                Err(e) => {
                    let code = log_error_code(&e);
                    tracing::warn!(partition = %log.name(), error = %e, "produce refused");
                    fail(&mut pr, code, e.to_string());
                }
            }
            topic_resp.partition_responses.push(pr);
        }
        resp.responses.push(topic_resp);
    }
    // One fsync per partition, all partitions concurrently; concurrent
    // produce requests to the same partition share it (group commit).
    let results = join_all(
        to_flush
            .iter()
            .map(|(_, _, log, upto)| log.flush_up_to(*upto)),
    )
    .await;
    for ((ti, pi, log, _), result) in to_flush.iter().zip(results) {
        if let Err(e) = result {
            tracing::error!(partition = %log.name(), error = %e, "fsync failed");
            if acks == -1 {
                let pr = &mut resp.responses[*ti].partition_responses[*pi];
                pr.error_code = error_code(b, ResponseError::KafkaStorageError);
                pr.error_message = Some(str_bytes(format!("fsync failed: {e}")));
            }
        }
    }
    // acks=all: every in-sync replica has the batch once the high
    // watermark passes it.
    let waits = join_all(to_commit.iter().map(|(_, _, topic, p, epoch, upto, _)| {
        b.replicas
            .wait_committed(topic, *p, *epoch, *upto, deadline)
    }))
    .await;
    for ((ti, pi, topic, p, _, _, min_isr), result) in to_commit.iter().zip(waits) {
        let pr = &mut resp.responses[*ti].partition_responses[*pi];
        if pr.error_code != 0 {
            continue;
        }
        let error = match result {
            Err(e) => Some((e, format!("{topic}-{p}: not replicated to the ISR: {e:?}"))),
            // Committed, but the ISR shrank below the minimum meanwhile.
            Ok(()) => b
                .replicas
                .leader(topic, *p)
                .filter(|l| l.isr_len() < *min_isr)
                .map(|l| {
                    (
                        ResponseError::NotEnoughReplicasAfterAppend,
                        format!(
                            "{topic}-{p}: written, but the ISR shrank to {} (min.insync.replicas {min_isr})",
                            l.isr_len()
                        ),
                    )
                }),
        };
        if let Some((code, msg)) = error {
            pr.error_code = error_code(b, code);
            pr.error_message = Some(str_bytes(msg));
            pr.base_offset = -1;
        }
    }
    (acks != 0).then_some(resp)
}

fn log_error_code(e: &LogError) -> ResponseError {
    match e {
        LogError::TooLarge { .. } => ResponseError::MessageTooLarge,
        LogError::Batch(log::batch::BatchError::Invalid(_)) => ResponseError::InvalidRecord,
        LogError::Batch(_) => ResponseError::CorruptMessage,
        LogError::Sequence(SequenceError::InvalidProducerEpoch { .. }) => {
            ResponseError::InvalidProducerEpoch
        }
        LogError::Sequence(SequenceError::OutOfOrderSequence { .. }) => {
            ResponseError::OutOfOrderSequenceNumber
        }
        LogError::Sequence(SequenceError::UnknownProducerId { .. }) => {
            ResponseError::UnknownProducerId
        }
        LogError::OffsetOutOfRange { .. } | LogError::Io(_) => ResponseError::KafkaStorageError,
    }
}

/// What a plugin-processed produce did, for the client's partition.
struct PluginAppend {
    base_offset: i64,
    log_append_time: i64,
    message: Option<String>,
    /// Every partition written, with the offset to fsync up to for acks=all.
    flush: Vec<(Arc<PartitionLog>, i64)>,
}

type Refusal = (ResponseError, String);

/// The produce path of a topic with plugin bindings: validate, dedup an
/// idempotent retry against the partition the client addressed, decode,
/// run interceptors → filters → partitioner, and append the re-encoded
/// records to the partitions the partitioner chose. Nothing is appended
/// unless every plugin accepted the batch (or the failure policy says so).
async fn produce_through_plugins(
    b: &Broker,
    topic: &Arc<Topic>,
    bindings: &Arc<Bindings>,
    client_partition: i32,
    payload: bytes::Bytes,
) -> Result<PluginAppend, Refusal> {
    let refuse = |e: LogError| (log_error_code(&e), e.to_string());
    let client_log = topic.partition(client_partition).ok_or_else(|| {
        (
            ResponseError::UnknownTopicOrPartition,
            "no such partition".to_string(),
        )
    })?;
    let config = client_log.config();
    let batch = log::validate_batches(payload, config.max_message_bytes).map_err(refuse)?;
    let header = batch.header;
    let _sequence_guard = if header.producer_id >= 0 {
        Some(client_log.plugin_produce.lock().await)
    } else {
        None
    };
    if let SequenceCheck::Duplicate(original) =
        client_log.check_sequence(&header).map_err(refuse)?
    {
        b.metrics
            .duplicate_batches
            .with_label_values(&[&topic.meta.name])
            .inc();
        return Ok(PluginAppend {
            base_offset: original.first_offset,
            log_append_time: -1,
            message: None,
            flush: Vec::new(),
        });
    }
    // Records borrow from this handle (a refcount, not a copy) so the batch
    // itself can still be stored as is below.
    let bytes = batch.bytes.clone();
    let (_, records) = plugin_records::decode(&bytes)
        .map_err(|e| (ResponseError::InvalidRecord, e.to_string()))?;
    let partitions = topic.partitions.len() as i32;
    // Plugin calls are CPU work bounded by their deadlines; keep them off
    // the async workers' cooperative scheduling.
    let outcome = tokio::task::block_in_place(|| {
        b.plugins.apply(
            bindings,
            &topic.meta.name,
            records,
            partitions,
            client_partition,
            &b.metrics,
        )
    });
    let done = match outcome {
        Outcome::Rejected {
            plugin,
            index,
            reason,
        } => {
            return Err((
                ResponseError::PolicyViolation,
                format!("record {index} rejected by plugin '{plugin}': {reason}"),
            ));
        }
        Outcome::Failed { plugin, error } => {
            return Err((
                ResponseError::PolicyViolation,
                format!(
                    "{error}; the topic's plugin failure policy is 'reject' (plugin '{plugin}')"
                ),
            ));
        }
        Outcome::DeadLetter { plugin, error } => {
            let dlt_name = bindings.dead_letter_topic.clone().unwrap_or_default();
            let Some(dlt) = b.topics.get(&dlt_name) else {
                return Err((
                    ResponseError::PolicyViolation,
                    format!(
                        "{error} (plugin '{plugin}'); dead-letter topic '{dlt_name}' does not exist"
                    ),
                ));
            };
            // Dead letters go to a partition of the dead-letter topic that
            // this broker holds, chosen by the client's partition.
            let local: Vec<_> = dlt.local_partitions().cloned().collect();
            let Some(target) = local
                .get(client_partition.max(0) as usize % local.len().max(1))
                .cloned()
            else {
                return Err((
                    ResponseError::PolicyViolation,
                    format!(
                        "{error} (plugin '{plugin}'); dead-letter topic '{dlt_name}' has no partition on this broker"
                    ),
                ));
            };
            // Stored as a plain batch: its producer sequence belongs to the
            // topic the client addressed, not to the dead-letter topic.
            let mut bytes = bytes::BytesMut::from(&batch.bytes[..]);
            log::batch::clear_producer(&mut bytes);
            let vb = log::validate_batches(bytes.freeze(), usize::MAX).map_err(refuse)?;
            let info = target.append(vb, 0).map_err(refuse)?;
            b.metrics.plugin_records(
                &plugin,
                &topic.meta.name,
                "dead_lettered",
                info.records as u64,
            );
            PluginAppend {
                base_offset: -1,
                log_append_time: -1,
                message: Some(format!(
                    "{error}; batch stored in dead-letter topic '{dlt_name}'"
                )),
                flush: vec![(target, info.last_offset + 1)],
            }
        }
        Outcome::Routed(groups) => {
            let mut out = PluginAppend {
                base_offset: -1,
                log_append_time: -1,
                message: None,
                flush: Vec::new(),
            };
            // Records unchanged (no interceptor or filter) and all routed to
            // one partition: store the client's batch as is, no re-encode.
            let untouched = bindings.interceptors.is_empty() && bindings.filters.is_empty();
            let single = groups.len() == 1;
            let mut original = Some(batch.bytes);
            for (p, recs) in groups {
                let Some(target) = topic.partition(p) else {
                    continue;
                };
                let bytes = match original.take().filter(|_| untouched && single) {
                    // Its producer sequence belongs to the client's partition.
                    Some(original) if header.producer_id >= 0 => {
                        let mut bytes = bytes::BytesMut::from(&original[..]);
                        log::batch::clear_producer(&mut bytes);
                        bytes.freeze()
                    }
                    Some(original) => original,
                    None => {
                        plugin_records::encode(&recs, header.compression(), false, Producer::NONE)
                            .map_err(|e| (ResponseError::InvalidRecord, e.to_string()))?
                            .freeze()
                    }
                };
                let size = bytes.len();
                let vb = log::validate_batches(bytes, usize::MAX).map_err(refuse)?;
                let info = target.append(vb, 0).map_err(refuse)?;
                b.metrics
                    .bytes_in
                    .with_label_values(&[&topic.meta.name])
                    .inc_by(size as u64);
                b.metrics
                    .records_in
                    .with_label_values(&[&topic.meta.name])
                    .inc_by(info.records as u64);
                if p == client_partition {
                    out.base_offset = info.base_offset;
                    out.log_append_time = info.log_append_time;
                }
                out.flush.push((target.clone(), info.last_offset + 1));
            }
            out
        }
    };
    if header.producer_id >= 0 {
        let mut h = header;
        h.base_offset = done.base_offset;
        client_log.record_sequence(&h);
    }
    Ok(done)
}
