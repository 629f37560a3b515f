//! Produce: each partition's batch is validated (framing, CRC, structure,
//! size) and handed to the leader write path (`ReplicaManager::append`),
//! or, for a topic with plugins on its produce path, to `routing`. All
//! partitions of a request proceed concurrently and the answer follows
//! `acks` (see `replication::write`). Also the forwarded produce another
//! broker sends for records a plugin routed here (`forwarded_produce`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, join_all};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::BrokerId;
use kafka_protocol::messages::ProduceRequest;
use kafka_protocol::messages::produce_response::{
    NodeEndpoint, PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};

use super::services::Writes;
use super::{error_code, str_bytes};
use crate::replication::{Acks, Appended, Staged, WriteError};
use crate::routing;
use crate::view::ClusterView;
use sluice_protocol::batch::{ValidatedBatch, validate_produce};
use sluice_storage::producer_state::is_derived;

/// Longest a produce may wait for acks=all, whatever the client asks.
const MAX_TIMEOUT_MS: i32 = 300_000;

/// What one partition's produce came to.
struct Outcome {
    base_offset: i64,
    log_append_time: i64,
    log_start_offset: i64,
    message: Option<String>,
}

/// Validates and appends every partition's batch (all partitions at once,
/// the request as a whole before the connection's next one), and returns
/// the future that waits for the acks and answers.
pub async fn produce<'a>(
    w: Writes<'a>,
    listener: std::sync::Arc<str>,
    mut req: ProduceRequest,
) -> BoxFuture<'a, ProduceResponse> {
    let b = &w;
    let view = b.views.current();
    let acks = Acks::from_wire(req.acks);
    let deadline = deadline(req.timeout_ms);
    let partitions = take_batches(&mut req);
    let transactional_id = req.transactional_id.as_ref().map(|id| id.as_str());
    let staged = join_all(partitions.into_iter().map(|(topic, partition, records)| {
        let view = &view;
        async move {
            let Some(acks) = acks else {
                return Stage::Done(Err(WriteError::new(
                    ResponseError::InvalidRequiredAcks,
                    format!("acks={} is not one of -1, 0, 1", req.acks),
                )));
            };
            let input = Input {
                topic: &topic,
                partition,
                records,
                transactional_id,
            };
            match try_stage(b, view, input, acks, deadline).await {
                Ok(s) => s,
                Err(e) => Stage::Done(Err(e)),
            }
        }
    }))
    .await;
    Box::pin(async move {
        let b = &w;
        let outcomes = join_all(staged.into_iter().map(|s| s.finish(b, deadline))).await;
        // Answered whatever the acks: the caller sends nothing back for
        // acks=0 unless something failed.
        respond(b, Some(&listener), &req, outcomes)
    })
}

/// The first partition error of a produce answer, by name.
pub fn first_error(resp: &kafka_protocol::messages::ResponseKind) -> Option<String> {
    let kafka_protocol::messages::ResponseKind::Produce(r) = resp else {
        return None;
    };
    r.responses
        .iter()
        .flat_map(|t| t.partition_responses.iter().map(move |p| (t, p)))
        .find(|(_, p)| p.error_code != 0)
        .map(|(t, p)| {
            let name = ResponseError::try_from_code(p.error_code)
                .map_or_else(|| format!("error {}", p.error_code), |e| format!("{e:?}"));
            format!("{name} on {}-{}", t.name.as_str(), p.index)
        })
}

/// Every partition's batch, in request order; the request keeps only the
/// names and indexes for the answer (the record bytes are freed once
/// stored, not held until the acks come).
fn take_batches(req: &mut ProduceRequest) -> Vec<(String, i32, Option<bytes::Bytes>)> {
    let mut out = Vec::new();
    for t in &mut req.topic_data {
        for pd in &mut t.partition_data {
            out.push((t.name.0.to_string(), pd.index, pd.records.take()));
        }
    }
    out
}

/// One partition after its ordered part.
enum Stage {
    Done(Result<Outcome, WriteError>),
    /// Appended here; waiting for the acks. `size` is counted in the
    /// topic's bytes-in (`None`: already counted where it was routed).
    Appended {
        staged: Staged,
        topic: String,
        size: Option<u64>,
    },
    /// Routed through plugins, acks met (a client's routed batches are
    /// not pipelined, see `routing`).
    Routed {
        answer: routing::RoutedAnswer,
        topic: String,
        log_start_offset: i64,
    },
}

impl Stage {
    async fn finish(self, b: &Writes<'_>, deadline: Instant) -> Result<Outcome, WriteError> {
        match self {
            Stage::Done(r) => r,
            Stage::Appended {
                staged,
                topic,
                size,
            } => {
                let a = staged.complete(deadline).await?;
                if let Some(size) = size {
                    count(b, &topic, &a, size);
                }
                Ok(Outcome {
                    base_offset: a.base_offset,
                    log_append_time: a.log_append_time,
                    log_start_offset: a.log_start_offset,
                    message: None,
                })
            }
            Stage::Routed {
                answer,
                topic,
                log_start_offset,
            } => {
                if answer.records > 0 {
                    b.metrics
                        .bytes_in
                        .with_label_values(&[&topic])
                        .inc_by(answer.bytes);
                    b.metrics
                        .records_in
                        .with_label_values(&[&topic])
                        .inc_by(answer.records as u64);
                }
                Ok(Outcome {
                    base_offset: answer.base_offset,
                    log_append_time: answer.log_append_time,
                    log_start_offset,
                    message: answer.message,
                })
            }
        }
    }
}

fn deadline(timeout_ms: i32) -> Instant {
    Instant::now() + Duration::from_millis(timeout_ms.clamp(0, MAX_TIMEOUT_MS) as u64)
}

/// The response, in the request's order.
fn respond(
    b: &Writes<'_>,
    listener: Option<&str>,
    req: &ProduceRequest,
    outcomes: Vec<Result<Outcome, WriteError>>,
) -> ProduceResponse {
    let mut outcomes = outcomes.into_iter();
    let mut resp = ProduceResponse::default();
    // KIP-951: a partition refused for leadership names its current leader
    // (from the newest view: leadership may have moved while this request
    // waited), so the client retries there without a metadata round trip.
    let latest = b.views.current();
    let mut leaders_named = BTreeSet::new();
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
                    if e.code == ResponseError::NotLeaderOrFollower
                        && let Some(state) = latest.partition(&t.name, pd.index)
                    {
                        let leader = latest.advertised_leader(state);
                        pr.current_leader.leader_id = BrokerId(leader);
                        pr.current_leader.leader_epoch = state.leader_epoch;
                        leaders_named.insert(leader);
                    }
                    pr.error_code = error_code(b.metrics, e.code);
                    pr.base_offset = -1;
                    pr.error_message = Some(str_bytes(e.message));
                }
                None => {
                    pr.error_code = error_code(b.metrics, ResponseError::UnknownServerError);
                    pr.base_offset = -1;
                }
            }
            tr.partition_responses.push(pr);
        }
        resp.responses.push(tr);
    }
    if let Some(listener) = listener {
        resp.node_endpoints = latest
            .advertised_brokers(listener)
            .filter(|x| leaders_named.contains(&x.id))
            .map(|x| {
                let mut endpoint = NodeEndpoint::default();
                endpoint.node_id = BrokerId(x.id);
                endpoint.host = str_bytes(x.host);
                endpoint.port = x.port;
                endpoint
            })
            .collect();
    }
    resp
}

/// One partition's part of a client's Produce request.
struct Input<'r> {
    topic: &'r str,
    partition: i32,
    records: Option<bytes::Bytes>,
    /// The request's (transactional batches name their transaction here).
    transactional_id: Option<&'r str>,
}

async fn try_stage(
    b: &Writes<'_>,
    view: &ClusterView,
    input: Input<'_>,
    acks: Acks,
    deadline: Instant,
) -> Result<Stage, WriteError> {
    let Input {
        topic,
        partition,
        records,
        transactional_id,
    } = input;
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
        .leader_for_write(b.quorum, view, topic, partition)
        .await
        .map_err(|e| {
            WriteError::new(
                e,
                format!("broker {} is not leading {topic}-{partition}", b.node_id),
            )
        })?;
    let payload = records.unwrap_or_default();
    let size = payload.len() as u64;
    let batch = validate_produce(payload, ls.log.config().max_message_bytes).map_err(|e| {
        tracing::warn!(partition = %ls.log.name(), error = %e, "produce refused");
        WriteError::from_batch(&e)
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
    if let Some(bindings) = t.bindings.as_ref().filter(|x| x.on_produce()) {
        let answer = routing::produce(
            b,
            view,
            t,
            bindings,
            partition,
            &ls,
            batch,
            transactional_id,
            acks,
            deadline,
        )
        .await
        .inspect_err(|e| {
            tracing::info!(
                topic,
                partition,
                "produce through plugins refused: {}",
                e.message
            )
        })?;
        return Ok(Stage::Routed {
            answer,
            topic: topic.to_string(),
            log_start_offset: ls.log.log_start_offset(),
        });
    }
    let h = batch.header;
    if h.is_transactional() && !ls.log.in_transaction(h.producer_id) {
        // Its first transactional batch here: the partition must be in the
        // producer's open transaction, which only the coordinator knows.
        let Some(id) = transactional_id else {
            return refuse(
                ResponseError::InvalidTxnState,
                "a transactional batch needs the request's transactional id".to_string(),
            );
        };
        b.membership()
            .verify_first_batch(view, id, &ls.log, (topic, partition), &h, deadline)
            .await?;
    }
    let staged = b.replicas.stage(&ls, batch, acks, t.min_insync_replicas)?;
    Ok(Stage::Appended {
        staged,
        topic: topic.to_string(),
        size: Some(size),
    })
}

fn count(b: &Writes<'_>, topic: &str, a: &Appended, size: u64) {
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
/// is, appended now; the returned future waits for the acks. Always
/// answered, whatever the acks.
pub async fn forwarded_produce<'a>(
    w: Writes<'a>,
    mut req: ProduceRequest,
) -> BoxFuture<'a, ProduceResponse> {
    let b = &w;
    let view = b.views.current();
    let acks = Acks::from_wire(req.acks).unwrap_or(Acks::All);
    let deadline = deadline(req.timeout_ms);
    let partitions = take_batches(&mut req);
    let transactional_id = req.transactional_id.as_ref().map(|id| id.as_str());
    let staged = join_all(partitions.into_iter().map(|(topic, partition, records)| {
        let view = &view;
        async move {
            let staged = async {
                let t = view.topic(&topic).ok_or_else(|| {
                    WriteError::new(
                        ResponseError::UnknownTopicOrPartition,
                        format!("topic {topic} does not exist on broker {}", b.node_id),
                    )
                })?;
                let ls = b
                    .views
                    .leader_for_write(b.quorum, view, &topic, partition)
                    .await
                    .map_err(|e| {
                        WriteError::new(
                            e,
                            format!("broker {} is not leading {topic}-{partition}", b.node_id),
                        )
                    })?;
                let payload = records.unwrap_or_default();
                let batch =
                    ValidatedBatch::trusted(payload).map_err(|e| WriteError::from_batch(&e))?;
                if batch.header.is_transactional()
                    && let Some(id) = transactional_id
                {
                    b.membership()
                        .verify_first_batch(
                            view,
                            id,
                            &ls.log,
                            (&topic, partition),
                            &batch.header,
                            deadline,
                        )
                        .await?;
                }
                b.replicas.stage(&ls, batch, acks, t.min_insync_replicas)
            };
            match staged.await {
                Ok(s) => Stage::Appended {
                    staged: s,
                    topic,
                    size: None,
                },
                Err(e) => Stage::Done(Err(e)),
            }
        }
    }))
    .await;
    Box::pin(async move {
        let b = &w;
        let outcomes = join_all(staged.into_iter().map(|s| s.finish(b, deadline))).await;
        // (The forwarding broker tells its client where leaders are.)
        respond(b, None, &req, outcomes)
    })
}
