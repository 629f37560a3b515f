//! The Kafka APIs (or forms of them) only brokers send one another: a
//! follower's Fetch (replica id set), WriteTxnMarkers, AddPartitionsToTxn
//! v4+ (a partition leader's). On a listener other than the inter-broker
//! one they are answered with the authorization errors Kafka gives a
//! principal without ClusterAction, and counted; nothing is done. (The
//! private quorum and forwarded-produce frames are refused earlier, in
//! `crate::server`.)

use kafka_protocol::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_response::AddPartitionsToTxnResponse;
use kafka_protocol::messages::fetch_response::{FetchResponse, FetchableTopicResponse};
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
    WriteTxnMarkersResponse,
};
use kafka_protocol::messages::{RequestKind, ResponseKind};

use super::Session;
use crate::metrics::Metrics;
use sluice_protocol::DecodedRequest;

/// The answer to a brokers-only request that arrived on a client
/// listener; None for a request to serve.
pub fn refusal(
    session: &Session,
    req: &DecodedRequest,
    metrics: &Metrics,
    refused: &prometheus::IntCounterVec,
) -> Option<ResponseKind> {
    if session.inter_broker {
        return None;
    }
    let (name, response) = match &req.body {
        RequestKind::Fetch(r) if r.replica_id.0 >= 0 => {
            // Kafka answers a follower fetch without ClusterAction with
            // TOPIC_AUTHORIZATION_FAILED for every partition.
            let code = super::error_code(metrics, ResponseError::TopicAuthorizationFailed);
            let mut resp = FetchResponse::default();
            resp.error_code = 0;
            for t in &r.topics {
                let mut tr = FetchableTopicResponse::default();
                tr.topic = t.topic.clone();
                tr.topic_id = t.topic_id;
                tr.partitions = t
                    .partitions
                    .iter()
                    .map(|p| super::authorize::refused_fetch(p.partition, code))
                    .collect();
                resp.responses.push(tr);
            }
            ("FollowerFetch", ResponseKind::Fetch(resp))
        }
        RequestKind::WriteTxnMarkers(r) => {
            let code = super::error_code(metrics, ResponseError::ClusterAuthorizationFailed);
            let mut resp = WriteTxnMarkersResponse::default();
            for m in &r.markers {
                let mut result = WritableTxnMarkerResult::default();
                result.producer_id = m.producer_id;
                for t in &m.topics {
                    let mut tr = WritableTxnMarkerTopicResult::default();
                    tr.name = t.name.clone();
                    for &partition in &t.partition_indexes {
                        let mut pr = WritableTxnMarkerPartitionResult::default();
                        pr.partition_index = partition;
                        pr.error_code = code;
                        tr.partitions.push(pr);
                    }
                    result.topics.push(tr);
                }
                resp.markers.push(result);
            }
            ("WriteTxnMarkers", ResponseKind::WriteTxnMarkers(resp))
        }
        RequestKind::AddPartitionsToTxn(_) if req.version >= 4 => {
            let mut resp = AddPartitionsToTxnResponse::default();
            resp.error_code = super::error_code(metrics, ResponseError::ClusterAuthorizationFailed);
            ("AddPartitionsToTxn", ResponseKind::AddPartitionsToTxn(resp))
        }
        _ => return None,
    };
    refused.with_label_values(&[&session.listener, name]).inc();
    tracing::debug!(peer = %session.peer, listener = %session.listener, request = name, "brokers-only request on a client listener refused");
    Some(response)
}
