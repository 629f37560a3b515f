//! Produce: each partition's batch is validated (framing, CRC, structure,
//! size) and handed to the leader write path (`ReplicaManager::append`),
//! or, for a topic with plugins on its produce path, to `routing`. All
//! partitions of a request proceed concurrently and the answer follows
//! `acks` (see `replication::write`). Also the forwarded produce another
//! broker sends for records a plugin routed here (`forwarded_produce`).

use std::time::{Duration, Instant};

use futures::future::join_all;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::ProduceRequest;
use kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};

use super::{error_code, str_bytes};
use crate::broker::Broker;
use crate::log::producer_state::is_derived;
use crate::log::{self, ValidatedBatch};
use crate::replication::{Acks, Appended, WriteError};
use crate::routing;
use crate::view::ClusterView;

/// Longest a produce may wait for acks=all, whatever the client asks.
const MAX_TIMEOUT_MS: i32 = 300_000;

/// What one partition's produce came to.
struct Outcome {
    base_offset: i64,
    log_append_time: i64,
    log_start_offset: i64,
    message: Option<String>,
}

pub async fn produce(b: &Broker, req: ProduceRequest, _version: i16) -> Option<ProduceResponse> {
    let view = b.view();
    let acks = Acks::from_wire(req.acks);
    let deadline = deadline(req.timeout_ms);
    let mut partitions = Vec::new();
    for t in &req.topic_data {
        for pd in &t.partition_data {
            partitions.push((t.name.0.as_str(), pd.index, pd.records.clone()));
        }
    }
    let outcomes = join_all(partitions.into_iter().map(|(topic, partition, records)| {
        let view = &view;
        async move {
            let Some(acks) = acks else {
                return Err(WriteError::new(
                    ResponseError::InvalidRequiredAcks,
                    format!("acks={} is not one of -1, 0, 1", req.acks),
                ));
            };
            produce_partition(b, view, topic, partition, records, acks, deadline).await
        }
    }))
    .await;
    let resp = respond(b, &req, outcomes);
    (acks != Some(Acks::None)).then_some(resp)
}

fn deadline(timeout_ms: i32) -> Instant {
    Instant::now() + Duration::from_millis(timeout_ms.clamp(0, MAX_TIMEOUT_MS) as u64)
}

/// The response, in the request's order.
fn respond(
    b: &Broker,
    req: &ProduceRequest,
    outcomes: Vec<Result<Outcome, WriteError>>,
) -> ProduceResponse {
    let mut outcomes = outcomes.into_iter();
    let mut resp = ProduceResponse::default();
    for t in &req.topic_data {
        let mut tr = TopicProduceResponse::default();
        tr.name = t.name.clone();
        for pd in &t.partition_data {
            let mut pr = PartitionProduceResponse::default();
            pr.index = pd.index;
            match outcomes.next() {
                Some(Ok(o)) => {
                    pr.base_offset = o.base_offset;
                    pr.log_append_time_ms = o.log_append_time;
                    pr.log_start_offset = o.log_start_offset;
                    pr.error_message = o.message.map(str_bytes);
                }
                Some(Err(e)) => {
                    pr.error_code = error_code(b, e.code);
                    pr.base_offset = -1;
                    pr.error_message = Some(str_bytes(e.message));
                }
                None => {
                    pr.error_code = error_code(b, ResponseError::UnknownServerError);
                    pr.base_offset = -1;
                }
            }
            tr.partition_responses.push(pr);
        }
        resp.responses.push(tr);
    }
    resp
}

async fn produce_partition(
    b: &Broker,
    view: &ClusterView,
    topic: &str,
    partition: i32,
    records: Option<bytes::Bytes>,
    acks: Acks,
    deadline: Instant,
) -> Result<Outcome, WriteError> {
    let refuse = |code: ResponseError, message: String| Err(WriteError::new(code, message));
    if crate::broker::is_internal_topic(topic) {
        return refuse(
            ResponseError::InvalidTopicException,
            format!("{topic} is an internal topic; clients cannot produce to it"),
        );
    }
    let Some(t) = view.topic(topic) else {
        return refuse(
            ResponseError::UnknownTopicOrPartition,
            format!("topic-partition {topic}-{partition} does not exist"),
        );
    };
    if let Some(source) = t.meta.view_of() {
        return refuse(
            ResponseError::InvalidTopicException,
            format!("{topic} is a read-only view of {source}; produce to {source}"),
        );
    }
    let ls = b
        .views
        .leader_for_write(&b.quorum, view, topic, partition)
        .await
        .map_err(|e| {
            WriteError::new(
                e,
                format!("broker {} is not leading {topic}-{partition}", b.node_id),
            )
        })?;
    let payload = records.unwrap_or_default();
    let size = payload.len() as u64;
    let batch = log::validate_batches(payload, ls.log.config().max_message_bytes).map_err(|e| {
        tracing::warn!(partition = %ls.log.name(), error = %e, "produce refused");
        WriteError::from_log(&e)
    })?;
    if is_derived(batch.header.producer_id) {
        return refuse(
            ResponseError::InvalidRecord,
            format!(
                "producer id {} is reserved for the broker; use the id InitProducerId returned",
                batch.header.producer_id
            ),
        );
    }
    let metrics = &b.metrics;
    if let Some(bindings) = t.bindings.as_ref().filter(|x| x.on_produce()) {
        let routed = routing::produce(b, view, t, bindings, partition, &ls, batch, acks, deadline)
            .await
            .inspect_err(|e| {
                tracing::info!(
                    topic,
                    partition,
                    "produce through plugins refused: {}",
                    e.message
                )
            })?;
        if routed.records > 0 {
            metrics
                .bytes_in
                .with_label_values(&[topic])
                .inc_by(routed.bytes);
            metrics
                .records_in
                .with_label_values(&[topic])
                .inc_by(routed.records as u64);
        }
        return Ok(Outcome {
            base_offset: routed.base_offset,
            log_append_time: routed.log_append_time,
            log_start_offset: ls.log.log_start_offset(),
            message: routed.message,
        });
    }
    let appended = b
        .replicas
        .append(&ls, batch, acks, t.min_insync_replicas, deadline)
        .await?;
    count(b, topic, &appended, size);
    Ok(Outcome {
        base_offset: appended.base_offset,
        log_append_time: appended.log_append_time,
        log_start_offset: appended.log_start_offset,
        message: None,
    })
}

fn count(b: &Broker, topic: &str, a: &Appended, size: u64) {
    if a.duplicate {
        b.metrics
            .duplicate_batches
            .with_label_values(&[topic])
            .inc();
    } else {
        b.metrics.bytes_in.with_label_values(&[topic]).inc_by(size);
        b.metrics
            .records_in
            .with_label_values(&[topic])
            .inc_by(a.records as u64);
    }
}

/// Sub-batches another broker routed here (it ran the plugins; they are
/// not run again): each goes through this broker's leader write path as
/// is. Always answered, whatever the acks.
pub async fn forwarded_produce(b: &Broker, req: ProduceRequest) -> ProduceResponse {
    let view = b.view();
    let acks = Acks::from_wire(req.acks).unwrap_or(Acks::All);
    let deadline = deadline(req.timeout_ms);
    let mut partitions = Vec::new();
    for t in &req.topic_data {
        for pd in &t.partition_data {
            partitions.push((t.name.0.as_str(), pd.index, pd.records.clone()));
        }
    }
    let outcomes = join_all(partitions.into_iter().map(|(topic, partition, records)| {
        let view = &view;
        async move {
            let t = view.topic(topic).ok_or_else(|| {
                WriteError::new(
                    ResponseError::UnknownTopicOrPartition,
                    format!("topic {topic} does not exist on broker {}", b.node_id),
                )
            })?;
            let ls = b
                .views
                .leader_for_write(&b.quorum, view, topic, partition)
                .await
                .map_err(|e| {
                    WriteError::new(
                        e,
                        format!("broker {} is not leading {topic}-{partition}", b.node_id),
                    )
                })?;
            let payload = records.unwrap_or_default();
            let batch = ValidatedBatch::trusted(payload).map_err(|e| WriteError::from_log(&e))?;
            let a = b
                .replicas
                .append(&ls, batch, acks, t.min_insync_replicas, deadline)
                .await?;
            Ok(Outcome {
                base_offset: a.base_offset,
                log_append_time: a.log_append_time,
                log_start_offset: a.log_start_offset,
                message: None,
            })
        }
    }))
    .await;
    respond(b, &req, outcomes)
}
