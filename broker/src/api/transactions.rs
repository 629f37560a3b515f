//! The transaction coordinator's client APIs (AddPartitionsToTxn v0-3, and
//! v4 from partition leaders, batched, with KIP-890's verify_only,
//! AddOffsetsToTxn v0-3, EndTxn v0-3; InitProducerId is in `producer`,
//! FindCoordinator and the group side, TxnOffsetCommit, in `groups`) and
//! the admin APIs of KIP-664 (ListTransactions, DescribeTransactions, and
//! DescribeProducers at partition leaders): request decoding and error
//! mapping around `crate::transactions`.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse as DescribedPartition, ProducerState as ActiveProducer,
    TopicResponse as DescribedTopic,
};
use kafka_protocol::messages::describe_transactions_response::{
    TopicData, TransactionState as DescribedTransaction,
};
use kafka_protocol::messages::list_transactions_response::TransactionState as ListedTransaction;
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, DescribeProducersRequest, DescribeProducersResponse,
    DescribeTransactionsRequest, DescribeTransactionsResponse, EndTxnRequest, EndTxnResponse,
    ListTransactionsRequest, ListTransactionsResponse, ProducerId, TopicName, TransactionalId,
};

use super::services::Transactions;
use super::{error_code, str_bytes};
use crate::groups::OFFSETS_TOPIC;
use crate::internal_log::partition_for;
use crate::transactions::ProducerIdAndEpoch;
use crate::transactions::state::TxnState;
use crate::view::ClusterView;

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
    let mut resp = AddPartitionsToTxnResponse::default();
    if version < 4 {
        // A client's: one transaction.
        let producer = ProducerIdAndEpoch {
            producer_id: req.v3_and_below_producer_id.0,
            producer_epoch: req.v3_and_below_producer_epoch,
        };
        resp.results_by_topic_v3_and_below = add_or_verify(
            b,
            &view,
            req.v3_and_below_transactional_id.as_str(),
            producer,
            &req.v3_and_below_topics,
            false,
            false,
        )
        .await
        .into_results(|e| fenced_for(e, version, 2));
        return resp;
    }
    // A partition leader's: several transactions; with verify_only, only
    // whether the partitions are in the open transaction (KIP-890).
    for txn in &req.transactions {
        let producer = ProducerIdAndEpoch {
            producer_id: txn.producer_id.0,
            producer_epoch: txn.producer_epoch,
        };
        let mut result = AddPartitionsToTxnResult::default();
        result.transactional_id = txn.transactional_id.clone();
        result.topic_results = add_or_verify(
            b,
            &view,
            txn.transactional_id.as_str(),
            producer,
            &txn.topics,
            txn.verify_only,
            true,
        )
        .await
        .into_results(std::convert::identity);
        resp.results_by_transaction.push(result);
    }
    resp
}

/// Each partition's outcome of adding `topics` to transaction `id` (or,
/// `verify_only`, of checking that they are in it), before the error
/// codes are written out (`Outcomes::into_results`).
async fn add_or_verify<'a>(
    b: &Transactions<'a>,
    view: &ClusterView,
    id: &str,
    producer: ProducerIdAndEpoch,
    topics: &[AddPartitionsToTxnTopic],
    verify_only: bool,
    broker_form: bool,
) -> Outcomes<'a> {
    let requested: Vec<(String, i32)> = topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.as_str().to_string(), *p))
        })
        .collect();
    let known = |(t, p): &(String, i32)| view.partition(t, *p).is_some();
    // All or nothing, as in Kafka: partitions that do not exist fail the
    // request, and the others are not attempted.
    let codes: Vec<Option<ResponseError>> = if !requested.iter().all(known) {
        requested
            .iter()
            .map(|p| {
                Some(if known(p) {
                    ResponseError::OperationNotAttempted
                } else {
                    ResponseError::UnknownTopicOrPartition
                })
            })
            .collect()
    } else if verify_only {
        match b.transactions.verify(id, producer, &requested) {
            Ok(codes) => codes,
            Err(e) => vec![Some(e); requested.len()],
        }
    } else {
        // A client's add (v3 and below) may begin a transaction; a partition
        // leader's (v4+, Sluice brokers routing a plugin's records) only
        // joins the open one holding the client's partition, listed first.
        let added = if broker_form {
            b.transactions
                .add_routed_partitions(id, producer, requested.clone())
                .await
        } else {
            b.transactions
                .add_partitions(id, producer, requested.clone())
                .await
        };
        vec![added.err(); requested.len()]
    };
    Outcomes {
        metrics: b.metrics,
        topics: topics.to_vec(),
        codes,
    }
}

/// Per-partition outcomes of AddPartitionsToTxn, in request order.
struct Outcomes<'a> {
    metrics: &'a crate::metrics::Metrics,
    topics: Vec<AddPartitionsToTxnTopic>,
    codes: Vec<Option<ResponseError>>,
}

impl Outcomes<'_> {
    /// The response's topic results, each error code passed through `f`
    /// (the version's mapping of PRODUCER_FENCED).
    fn into_results(
        self,
        f: impl Fn(ResponseError) -> ResponseError,
    ) -> Vec<AddPartitionsToTxnTopicResult> {
        let mut codes = self.codes.into_iter();
        self.topics
            .iter()
            .map(|t| {
                let mut tr = AddPartitionsToTxnTopicResult::default();
                tr.name = t.name.clone();
                for &p in &t.partitions {
                    let mut pr = AddPartitionsToTxnPartitionResult::default();
                    pr.partition_index = p;
                    if let Some(code) = codes.next().flatten() {
                        pr.partition_error_code = error_code(self.metrics, f(code));
                    }
                    tr.results_by_partition.push(pr);
                }
                tr
            })
            .collect()
    }
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

/// ListTransactions (KIP-664, v0-1): the transactions this broker
/// coordinates; an admin client asks every broker.
pub fn list_transactions(
    b: &Transactions<'_>,
    req: ListTransactionsRequest,
) -> ListTransactionsResponse {
    let mut resp = ListTransactionsResponse::default();
    let mut states = Vec::new();
    for name in &req.state_filters {
        match TxnState::ALL.iter().find(|s| s.name() == name.as_str()) {
            Some(s) => states.push(*s),
            None => resp.unknown_state_filters.push(name.clone()),
        }
    }
    // Only unknown names asked for: nothing can match.
    if states.is_empty() && !req.state_filters.is_empty() {
        return resp;
    }
    let producer_ids: Vec<i64> = req.producer_id_filters.iter().map(|p| p.0).collect();
    match b
        .transactions
        .list(&states, &producer_ids, req.duration_filter)
    {
        Ok(list) => {
            resp.transaction_states = list
                .into_iter()
                .map(|(id, producer_id, state)| {
                    let mut t = ListedTransaction::default();
                    t.transactional_id = TransactionalId(str_bytes(id));
                    t.producer_id = ProducerId(producer_id);
                    t.transaction_state = str_bytes(state.name());
                    t
                })
                .collect();
        }
        Err(e) => resp.error_code = error_code(b.metrics, e),
    }
    resp
}

/// DescribeTransactions (KIP-664): state, timeout, start, producer and
/// partitions of transactional ids this broker coordinates.
pub fn describe_transactions(
    b: &Transactions<'_>,
    req: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let mut resp = DescribeTransactionsResponse::default();
    for id in req.transactional_ids {
        let mut t = DescribedTransaction::default();
        match b.transactions.describe(id.as_str()) {
            Ok(meta) => {
                t.transaction_state = str_bytes(meta.state.name());
                t.transaction_timeout_ms = meta.timeout_ms;
                t.transaction_start_time_ms = if meta.state == TxnState::Empty {
                    -1
                } else {
                    meta.started_ms
                };
                t.producer_id = ProducerId(meta.producer_id);
                t.producer_epoch = meta.producer_epoch;
                let mut by_topic: std::collections::BTreeMap<String, Vec<i32>> =
                    std::collections::BTreeMap::new();
                for (topic, partition) in meta.partitions {
                    by_topic.entry(topic).or_default().push(partition);
                }
                t.topics = by_topic
                    .into_iter()
                    .map(|(topic, partitions)| {
                        let mut d = TopicData::default();
                        d.topic = TopicName(str_bytes(topic));
                        d.partitions = partitions;
                        d
                    })
                    .collect();
            }
            Err(e) => t.error_code = error_code(b.metrics, e),
        }
        t.transactional_id = id;
        resp.transaction_states.push(t);
    }
    resp
}

/// DescribeProducers (KIP-664): the producers each partition this broker
/// leads remembers, with their open transaction's first offset.
pub fn describe_producers(
    b: &Transactions<'_>,
    req: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let view = b.views.current();
    let mut resp = DescribeProducersResponse::default();
    for t in req.topics {
        let mut tr = DescribedTopic::default();
        for p in t.partition_indexes {
            let mut pr = DescribedPartition::default();
            pr.partition_index = p;
            match view.lead(t.name.as_str(), p) {
                Ok(ls) => {
                    pr.active_producers = ls
                        .log
                        .producers()
                        .into_iter()
                        .map(|s| {
                            let mut a = ActiveProducer::default();
                            a.producer_id = ProducerId(s.producer_id);
                            a.producer_epoch = i32::from(s.producer_epoch);
                            a.last_sequence = s.last_sequence;
                            a.last_timestamp = s.last_timestamp;
                            a.coordinator_epoch = s.coordinator_epoch;
                            a.current_txn_start_offset = s.txn_first_offset.unwrap_or(-1);
                            a
                        })
                        .collect();
                }
                Err(e) => {
                    pr.error_code = error_code(b.metrics, e);
                    pr.error_message = Some(str_bytes(format!(
                        "broker {} does not lead {}-{p}",
                        view.node_id(),
                        t.name.as_str()
                    )));
                }
            }
            tr.partitions.push(pr);
        }
        tr.name = t.name;
        resp.topics.push(tr);
    }
    resp
}
