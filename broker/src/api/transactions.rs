//! The transaction coordinator's client APIs (AddPartitionsToTxn v0-3,
//! AddOffsetsToTxn v0-3, EndTxn v0-3; InitProducerId is in `producer`,
//! FindCoordinator and the group side, TxnOffsetCommit, in `groups`):
//! request decoding and error mapping around `crate::transactions`.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, EndTxnRequest, EndTxnResponse,
};

use super::error_code;
use super::services::Transactions;
use crate::groups::OFFSETS_TOPIC;
use crate::internal_log::partition_for;
use crate::transactions::ProducerIdAndEpoch;

/// PRODUCER_FENCED exists from these request versions on (KIP-588);
/// older clients get INVALID_PRODUCER_EPOCH for it, as from Kafka.
pub fn fenced_for(e: ResponseError, version: i16, since: i16) -> ResponseError {
    if e == ResponseError::ProducerFenced && version < since {
        ResponseError::InvalidProducerEpoch
    } else {
        e
    }
}

pub async fn add_partitions_to_txn(
    b: &Transactions<'_>,
    req: AddPartitionsToTxnRequest,
    version: i16,
) -> AddPartitionsToTxnResponse {
    let view = b.views.current();
    let id = req.v3_and_below_transactional_id.as_str();
    let producer = ProducerIdAndEpoch {
        producer_id: req.v3_and_below_producer_id.0,
        producer_epoch: req.v3_and_below_producer_epoch,
    };
    let requested: Vec<(String, i32)> = req
        .v3_and_below_topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.as_str().to_string(), *p))
        })
        .collect();
    // All or nothing, as in Kafka: partitions that do not exist fail the
    // request, and the others are not attempted.
    let unknown: Vec<&(String, i32)> = requested
        .iter()
        .filter(|(t, p)| view.partition(t, *p).is_none())
        .collect();
    let outcome = if unknown.is_empty() {
        b.transactions
            .add_partitions(id, producer, requested.clone())
            .await
            .map_err(|e| fenced_for(e, version, 2))
    } else {
        Err(ResponseError::OperationNotAttempted)
    };
    let mut resp = AddPartitionsToTxnResponse::default();
    for t in &req.v3_and_below_topics {
        let mut tr = AddPartitionsToTxnTopicResult::default();
        tr.name = t.name.clone();
        for &p in &t.partitions {
            let mut pr = AddPartitionsToTxnPartitionResult::default();
            pr.partition_index = p;
            let code = match outcome {
                Ok(()) => None,
                Err(_) if unknown.contains(&&(t.name.as_str().to_string(), p)) => {
                    Some(ResponseError::UnknownTopicOrPartition)
                }
                Err(e) => Some(e),
            };
            if let Some(code) = code {
                pr.partition_error_code = error_code(b.metrics, code);
            }
            tr.results_by_partition.push(pr);
        }
        resp.results_by_topic_v3_and_below.push(tr);
    }
    resp
}

pub async fn end_txn(b: &Transactions<'_>, req: EndTxnRequest, version: i16) -> EndTxnResponse {
    let producer = ProducerIdAndEpoch {
        producer_id: req.producer_id.0,
        producer_epoch: req.producer_epoch,
    };
    let mut resp = EndTxnResponse::default();
    resp.producer_id = req.producer_id;
    resp.producer_epoch = req.producer_epoch;
    if let Err(e) = b
        .transactions
        .end(req.transactional_id.as_str(), producer, req.committed)
        .await
    {
        resp.error_code = error_code(b.metrics, fenced_for(e, version, 2));
    }
    resp
}

/// AddOffsetsToTxn: the group's offsets partition joins the transaction,
/// so its markers settle the offsets TxnOffsetCommit writes there.
pub async fn add_offsets_to_txn(
    b: &Transactions<'_>,
    req: AddOffsetsToTxnRequest,
    version: i16,
) -> AddOffsetsToTxnResponse {
    let view = b.views.current();
    let mut resp = AddOffsetsToTxnResponse::default();
    let partitions = view
        .image
        .topics
        .get(OFFSETS_TOPIC)
        .map_or(0, |t| t.partitions.len());
    if partitions == 0 {
        resp.error_code = error_code(b.metrics, ResponseError::CoordinatorNotAvailable);
        return resp;
    }
    let partition = partition_for(req.group_id.as_str(), partitions) as i32;
    let producer = ProducerIdAndEpoch {
        producer_id: req.producer_id.0,
        producer_epoch: req.producer_epoch,
    };
    if let Err(e) = b
        .transactions
        .add_partitions(
            req.transactional_id.as_str(),
            producer,
            vec![(OFFSETS_TOPIC.to_string(), partition)],
        )
        .await
    {
        resp.error_code = error_code(b.metrics, fenced_for(e, version, 2));
    }
    resp
}
