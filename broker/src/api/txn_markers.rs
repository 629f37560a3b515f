//! WriteTxnMarkers: a transaction coordinator asks the leader of each
//! partition a transaction wrote to to end it there. Each marker is a
//! control batch (commit or abort, the producer's id and epoch, the
//! coordinator's epoch) appended through the leader write path with
//! acks=all, so it is on every in-sync replica before the coordinator
//! moves on; the partition's producer state then closes the transaction
//! (and, for an abort, indexes it for read_committed fetches).

use std::time::{Duration, Instant};

use futures::future::join_all;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::WriteTxnMarkersRequest;
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
    WriteTxnMarkersResponse,
};

use super::error_code;
use super::services::Writes;
use crate::replication::{Acks, WriteError};
use crate::view::ClusterView;
use sluice_protocol::batch::ValidatedBatch;
use sluice_protocol::records::{Marker, encode_marker};

/// How long a marker may wait for the in-sync replicas (the coordinator
/// retries what failed).
const MARKER_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn write_txn_markers(
    w: &Writes<'_>,
    req: WriteTxnMarkersRequest,
) -> WriteTxnMarkersResponse {
    let view = w.views.current();
    let deadline = Instant::now() + MARKER_TIMEOUT;
    let mut resp = WriteTxnMarkersResponse::default();
    for m in req.markers {
        let marker = if m.transaction_result {
            Marker::Commit
        } else {
            Marker::Abort
        };
        let mut result = WritableTxnMarkerResult::default();
        result.producer_id = m.producer_id;
        for t in m.topics {
            let outcomes = join_all(t.partition_indexes.iter().map(|&partition| {
                let end = End {
                    topic: t.name.as_str(),
                    partition,
                    producer_id: m.producer_id.0,
                    producer_epoch: m.producer_epoch,
                    marker,
                    coordinator_epoch: m.coordinator_epoch,
                };
                write_marker(w, &view, end, deadline)
            }))
            .await;
            let mut tr = WritableTxnMarkerTopicResult::default();
            tr.name = t.name.clone();
            for (&partition, outcome) in t.partition_indexes.iter().zip(outcomes) {
                let mut pr = WritableTxnMarkerPartitionResult::default();
                pr.partition_index = partition;
                if let Err(e) = outcome {
                    tracing::info!(topic = %t.name.as_str(), partition, producer_id = m.producer_id.0, error = %e.message, "transaction marker not written");
                    pr.error_code = error_code(w.metrics, e.code);
                }
                tr.partitions.push(pr);
            }
            result.topics.push(tr);
        }
        resp.markers.push(result);
    }
    resp
}

/// One partition's end of one transaction.
struct End<'a> {
    topic: &'a str,
    partition: i32,
    producer_id: i64,
    producer_epoch: i16,
    marker: Marker,
    coordinator_epoch: i32,
}

async fn write_marker(
    w: &Writes<'_>,
    view: &ClusterView,
    end: End<'_>,
    deadline: Instant,
) -> Result<(), WriteError> {
    let topic = view.topic(end.topic).ok_or_else(|| {
        WriteError::new(
            ResponseError::UnknownTopicOrPartition,
            format!("topic {} does not exist", end.topic),
        )
    })?;
    let ls = w
        .views
        .leader_for_write(w.quorum, view, end.topic, end.partition)
        .await
        .map_err(|e| {
            WriteError::new(
                e,
                format!(
                    "broker {} is not leading {}-{}",
                    w.node_id, end.topic, end.partition
                ),
            )
        })?;
    let bytes = encode_marker(
        end.producer_id,
        end.producer_epoch,
        end.marker,
        end.coordinator_epoch,
        sluice_storage::now_ms(),
    )
    .map_err(|e| WriteError::from_batch(&e))?;
    let batch = ValidatedBatch::trusted(bytes.freeze()).map_err(|e| WriteError::from_batch(&e))?;
    w.replicas
        .append(&ls, batch, Acks::All, topic.min_insync_replicas, deadline)
        .await
        .map(drop)
}
