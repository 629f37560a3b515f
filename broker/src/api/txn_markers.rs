//! WriteTxnMarkers: a transaction coordinator asks the leader of each
//! partition a transaction wrote to to end it there (see
//! `transactions::markers` for what one marker write does).

use std::time::{Duration, Instant};

use futures::future::join_all;
use kafka_protocol::messages::WriteTxnMarkersRequest;
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
    WriteTxnMarkersResponse,
};

use super::error_code;
use super::services::Writes;
use crate::transactions::markers::{MarkerWriter, TxnEnd};
use sluice_protocol::records::Marker;

/// How long a marker may wait for the in-sync replicas (the coordinator
/// retries what failed).
const MARKER_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn write_txn_markers(
    w: &Writes<'_>,
    req: WriteTxnMarkersRequest,
) -> WriteTxnMarkersResponse {
    let view = w.views.current();
    let writer = MarkerWriter {
        node_id: w.node_id,
        views: w.views,
        quorum: w.quorum,
        replicas: w.replicas,
        groups: w.groups,
    };
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
            let ends: Vec<TxnEnd> = t
                .partition_indexes
                .iter()
                .map(|&partition| TxnEnd {
                    topic: t.name.as_str().to_string(),
                    partition,
                    producer_id: m.producer_id.0,
                    producer_epoch: m.producer_epoch,
                    marker,
                    coordinator_epoch: m.coordinator_epoch,
                })
                .collect();
            let outcomes =
                join_all(ends.iter().map(|end| writer.write(&view, end, deadline))).await;
            let mut tr = WritableTxnMarkerTopicResult::default();
            tr.name = t.name.clone();
            for (end, outcome) in ends.iter().zip(outcomes) {
                let mut pr = WritableTxnMarkerPartitionResult::default();
                pr.partition_index = end.partition;
                if let Err(e) = outcome {
                    tracing::info!(topic = %end.topic, partition = end.partition, producer_id = end.producer_id, error = %e.message, "transaction marker not written");
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
