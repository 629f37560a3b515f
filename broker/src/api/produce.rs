//! Produce: validate each partition's batches (framing, CRC, structure,
//! size), append them as received with broker-assigned offsets, and answer
//! according to `acks` — acks=all waits until the data is fsynced.

use futures::future::join_all;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::ProduceRequest;
use kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};

use super::{error_code, str_bytes};
use crate::broker::Broker;
use crate::log::producer_state::SequenceError;
use crate::log::{self, LogError};

pub async fn produce(b: &Broker, req: ProduceRequest, _version: i16) -> Option<ProduceResponse> {
    let acks = req.acks;
    let mut resp = ProduceResponse::default();
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
            let Some(log) = topic.as_ref().and_then(|t| t.partition(pd.index)) else {
                fail(
                    &mut pr,
                    ResponseError::UnknownTopicOrPartition,
                    format!("topic-partition {name}-{} does not exist", pd.index),
                );
                topic_resp.partition_responses.push(pr);
                continue;
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
            let config = log.config();
            let appended = log::validate_batches(payload.clone(), config.max_message_bytes)
                .and_then(|batch| log.append(batch, 0));
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
                    let code = match &e {
                        LogError::TooLarge { .. } => ResponseError::MessageTooLarge,
                        LogError::Batch(log::batch::BatchError::Invalid(_)) => {
                            ResponseError::InvalidRecord
                        }
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
                        LogError::OffsetOutOfRange { .. } | LogError::Io(_) => {
                            ResponseError::KafkaStorageError
                        }
                    };
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
    (acks != 0).then_some(resp)
}
