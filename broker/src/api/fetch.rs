//! Fetch: whole stored batches from each requested offset, within the
//! request's byte budgets (but at least one batch, KIP-74), long-polling up
//! to `max_wait_ms` until `min_bytes` are available. Consumers read up to
//! the high watermark (read_uncommitted) or the last stable offset, with
//! the aborted transactions in what they get (read_committed); follower
//! brokers (a replica id in the request) read up to the log end, and their
//! fetch offsets tell the leader how far they have replicated.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::future::select_all;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchResponse, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{FetchRequest, ProducerId};
use tokio::time::Instant;

use super::error_code;
use super::services::Reads;
use crate::replication::check_leader_epoch;
use sluice_plugin_host::Bindings;
use sluice_protocol::batch;
use sluice_storage::{LogError, PartitionLog};

/// Most record bytes one Fetch response carries (Kafka's fetch.max.bytes).
const MAX_FETCH_BYTES: usize = 55 * 1024 * 1024;

/// Longest long-poll we honour, whatever the client asks.
const MAX_WAIT_CAP: Duration = Duration::from_secs(30);

pub async fn fetch(b: &Reads<'_>, req: FetchRequest) -> FetchResponse {
    let view = b.views.current();
    let replica = (req.replica_id.0 >= 0).then_some(req.replica_id.0);
    if let Some(follower) = replica {
        b.quorum.heard_from(follower);
    }
    let deadline =
        Instant::now() + Duration::from_millis(req.max_wait_ms.max(0) as u64).min(MAX_WAIT_CAP);
    let targets: Vec<(String, Option<Arc<Bindings>>, Vec<Target>)> = req
        .topics
        .iter()
        .map(|t| {
            let name = t.topic.0.to_string();
            let topic = view.topic(&name);
            let parts = t
                .partitions
                .iter()
                .map(|p| {
                    // A follower fetches the partition itself, never a view.
                    let leader = match replica {
                        Some(_) => view
                            .leader(&name, p.partition)
                            .ok_or(ResponseError::NotLeaderOrFollower),
                        None => view.lead(&name, p.partition),
                    };
                    let log = leader.and_then(|ls| {
                        check_leader_epoch(p.current_leader_epoch, ls.leader_epoch)?;
                        if let Some(follower) = replica {
                            ls.on_follower_fetch(follower, p.fetch_offset);
                        }
                        Ok(ls.log.clone())
                    });
                    (p.partition, p.fetch_offset, p.partition_max_bytes, log)
                })
                .collect();
            let filters = topic
                .and_then(|t| t.bindings.clone())
                .filter(|b| !b.fetch_filters.is_empty() && replica.is_none());
            (name, filters, parts)
        })
        .collect();
    let min_bytes = req.min_bytes.max(0) as usize;
    // Kafka's fetch.max.bytes: the broker bounds what one request can make
    // it read into memory, whatever the client asks (one batch may still
    // exceed it, KIP-74; batches are bounded by max.message.bytes).
    let max_bytes = if req.max_bytes <= 0 {
        MAX_FETCH_BYTES
    } else {
        (req.max_bytes as usize).min(MAX_FETCH_BYTES)
    };
    // A follower's long poll also ends when this broker's view changes: a
    // partition whose leadership just moved here is not in the poll, and
    // the new leader's high watermark waits for every in-sync follower's
    // first fetch of it (the follower asks again at once, with it).
    let mut views = replica.map(|_| b.views.subscribe());
    let how = match (replica, req.isolation_level) {
        (Some(_), _) => ReadAs::Replica,
        (None, 1) => ReadAs::Committed,
        (None, _) => ReadAs::Uncommitted,
    };
    loop {
        // Register interest before reading so an append in between still wakes us.
        let mut waits: Vec<Pin<Box<tokio::sync::futures::Notified<'_>>>> = targets
            .iter()
            .flat_map(|(_, _, parts)| parts.iter())
            .filter_map(|(_, _, _, log)| log.as_ref().ok())
            .map(|log| {
                let mut n = Box::pin(log.appended.notified());
                n.as_mut().enable();
                n
            })
            .collect();
        let (resp, bytes, any_error) = read_all(b, &targets, max_bytes, how);
        let now = Instant::now();
        if bytes >= min_bytes.max(1)
            || any_error
            || now >= deadline
            || waits.is_empty()
            || min_bytes == 0
        {
            if replica.is_none() {
                record_out(b, &resp);
            }
            return resp;
        }
        let view_changed = async {
            match views.as_mut() {
                Some(rx) => {
                    let _ = rx.changed().await;
                }
                None => std::future::pending().await,
            }
        };
        let woken = tokio::time::timeout(deadline - now, async {
            tokio::select! {
                _ = select_all(waits.drain(..)) => false,
                () = view_changed => true,
            }
        })
        .await;
        if woken.is_err() || woken == Ok(true) {
            let (resp, _, _) = read_all(b, &targets, max_bytes, how);
            if replica.is_none() {
                record_out(b, &resp);
            }
            return resp;
        }
    }
}

/// (partition, fetch offset, partition max bytes, the log if this broker
/// leads the partition or why not)
type Target = (i32, i64, i32, Result<Arc<PartitionLog>, ResponseError>);
type Targets = [(String, Option<Arc<Bindings>>, Vec<Target>)];

/// Who reads, so how far.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReadAs {
    /// A follower broker: up to the log end.
    Replica,
    /// A read_uncommitted consumer: up to the high watermark.
    Uncommitted,
    /// A read_committed consumer: up to the last stable offset.
    Committed,
}

fn read_all(
    b: &Reads<'_>,
    targets: &Targets,
    max_bytes: usize,
    how: ReadAs,
) -> (FetchResponse, usize, bool) {
    let mut resp = FetchResponse::default();
    let mut total = 0usize;
    let mut any_error = false;
    for (name, filters, parts) in targets {
        let mut tr = FetchableTopicResponse::default();
        tr.topic = kafka_protocol::messages::TopicName(super::str_bytes(name.clone()));
        for (partition, offset, partition_max, log) in parts {
            let mut pd = PartitionData::default();
            pd.partition_index = *partition;
            let log = match log {
                Ok(log) => log,
                Err(e) => {
                    pd.error_code = error_code(b.metrics, *e);
                    pd.high_watermark = -1;
                    any_error = true;
                    tr.partitions.push(pd);
                    continue;
                }
            };
            let budget = (*partition_max).max(0) as usize;
            let budget = budget.min(max_bytes.saturating_sub(total));
            // Response budget spent: report offsets only, read nothing.
            let budget_spent = total > 0 && budget == 0;
            let budget = if budget_spent { 0 } else { budget };
            let read = match how {
                ReadAs::Replica => log.read_for_replica(*offset, budget).map(|r| (r, None)),
                ReadAs::Uncommitted => log.read(*offset, budget).map(|r| (r, None)),
                ReadAs::Committed => log
                    .read_committed(*offset, budget)
                    .map(|(r, aborted)| (r, Some(aborted))),
            };
            match read {
                Ok((read, aborted)) => {
                    // KIP-74: only the first data in the response may exceed
                    // its budget; later partitions wait for the next fetch.
                    let mut records = if budget_spent || (total > 0 && read.records.len() > budget)
                    {
                        bytes::Bytes::new()
                    } else {
                        read.records
                    };
                    if let Some(f) = filters.as_ref().filter(|_| !records.is_empty()) {
                        match tokio::task::block_in_place(|| {
                            b.plugins.filter_fetched(f, name, &records)
                        }) {
                            Ok(filtered) => records = filtered,
                            Err(e) => {
                                // Fail closed: never deliver records a filter did not pass.
                                tracing::warn!(topic = %name, error = %e, "fetch filter failed; withholding records");
                                records = bytes::Bytes::new();
                            }
                        }
                    }
                    total += records.len();
                    pd.high_watermark = read.high_watermark;
                    pd.last_stable_offset = read.last_stable_offset;
                    pd.log_start_offset = read.log_start_offset;
                    pd.aborted_transactions = aborted.map(|list| {
                        list.iter()
                            .map(|t| {
                                let mut a = AbortedTransaction::default();
                                a.producer_id = ProducerId(t.producer_id);
                                a.first_offset = t.first_offset;
                                a
                            })
                            .collect()
                    });
                    pd.records = Some(records);
                }
                Err(LogError::OffsetOutOfRange { start, .. }) => {
                    pd.error_code = error_code(b.metrics, ResponseError::OffsetOutOfRange);
                    pd.high_watermark = log.high_watermark();
                    pd.last_stable_offset = log.last_stable_offset();
                    pd.log_start_offset = start;
                    any_error = true;
                }
                Err(e @ LogError::Corrupt { first_report, .. }) => {
                    // The client surfaces it (librdkafka: a consumer error
                    // at that offset) instead of waiting on empty answers.
                    if first_report {
                        b.metrics.storage_corrupt_batches.inc();
                        tracing::error!(error = %e, "corrupt batch found on read; fetches at this offset fail with CORRUPT_MESSAGE until the partition is repaired");
                    }
                    pd.error_code = error_code(b.metrics, ResponseError::CorruptMessage);
                    pd.high_watermark = log.high_watermark();
                    pd.last_stable_offset = log.last_stable_offset();
                    pd.log_start_offset = log.log_start_offset();
                    any_error = true;
                }
                Err(e) => {
                    tracing::error!(partition = %log.name(), error = %e, "fetch read failed");
                    pd.error_code = error_code(b.metrics, ResponseError::KafkaStorageError);
                    any_error = true;
                }
            }
            tr.partitions.push(pd);
        }
        resp.responses.push(tr);
    }
    (resp, total, any_error)
}

fn record_out(b: &Reads<'_>, resp: &FetchResponse) {
    for t in &resp.responses {
        let mut bytes = 0u64;
        let mut records = 0u64;
        for p in &t.partitions {
            let Some(data) = &p.records else { continue };
            bytes += data.len() as u64;
            let mut pos = 0;
            while let Ok(h) = batch::parse_header_fields(&data[pos..]) {
                records += h.records_count.max(0) as u64;
                pos += h.len;
                if pos >= data.len() {
                    break;
                }
            }
        }
        if bytes > 0 {
            let topic = t.topic.0.as_str();
            b.metrics
                .bytes_out
                .with_label_values(&[topic])
                .inc_by(bytes);
            b.metrics
                .records_out
                .with_label_values(&[topic])
                .inc_by(records);
        }
    }
}
