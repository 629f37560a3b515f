//! A partition leader asking a transaction's coordinator about partitions,
//! before it stores a producer's transactional records there: whether they
//! are in the producer's open transaction (KIP-890's verification, for the
//! producer's first transactional batch in a partition), or to add them
//! (partitions a produce plugin routed the transaction's records to). The
//! coordinator is this broker, or another reached with AddPartitionsToTxn
//! v4, the inter-broker form of the request.

use std::sync::Arc;
use std::time::Instant;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use kafka_protocol::messages::{AddPartitionsToTxnRequest, ProducerId, TopicName, TransactionalId};
use kafka_protocol::protocol::StrBytes;

use super::{ProducerIdAndEpoch, TxnCoordinator, coordinator_of};
use crate::forward::Forwarder;
use crate::replication::WriteError;
use crate::view::ClusterView;
use sluice_protocol::batch::BatchHeader;
use sluice_storage::PartitionLog;
use sluice_storage::producer_state::txn_owner;

/// What to ask the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// Are the partitions in the open transaction? (Changes nothing.)
    Verify,
    /// Add them to the open transaction, which must already hold the first
    /// of them, the partition the client produced to (never begins one).
    AddRouted,
}

/// Whose transaction: its id and the producer writing in it.
#[derive(Debug, Clone, Copy)]
pub struct Txn<'a> {
    pub id: &'a str,
    pub producer: ProducerIdAndEpoch,
}

impl Txn<'_> {
    /// Transaction `id` of the producer that wrote batch `h`.
    pub fn of<'a>(id: &'a str, h: &BatchHeader) -> Txn<'a> {
        Txn {
            id,
            producer: ProducerIdAndEpoch {
                producer_id: h.producer_id,
                producer_epoch: h.producer_epoch,
            },
        }
    }
}

/// The services the question needs.
#[derive(Clone, Copy)]
pub struct Membership<'a> {
    pub node_id: i32,
    pub coordinator: &'a Arc<TxnCoordinator>,
    pub forwarder: &'a Forwarder,
}

impl Membership<'_> {
    /// `Ok` when every partition of `topic` in `partitions` is (now) in
    /// `txn`; otherwise the error the produce is
    /// answered with, as Kafka answers it: a fenced producer gets
    /// INVALID_PRODUCER_EPOCH, a partition outside the transaction
    /// INVALID_TXN_STATE, and a coordinator that cannot answer right now
    /// NOT_ENOUGH_REPLICAS (retriable: the client sends the batch again).
    pub async fn ensure(
        &self,
        view: &ClusterView,
        txn: Txn<'_>,
        topic: &str,
        partitions: Vec<i32>,
        ask: Ask,
        deadline: Instant,
    ) -> Result<(), WriteError> {
        let Txn { id, producer } = txn;
        let outcome = match coordinator_of(view, id).map(|c| c.id) {
            None => Err(ResponseError::CoordinatorNotAvailable),
            Some(c) if c == self.node_id => {
                let named: Vec<(String, i32)> =
                    partitions.iter().map(|p| (topic.to_string(), *p)).collect();
                match ask {
                    Ask::Verify => self
                        .coordinator
                        .verify(id, producer, &named)
                        .and_then(|codes| codes.into_iter().flatten().next().map_or(Ok(()), Err)),
                    Ask::AddRouted => {
                        self.coordinator
                            .add_routed_partitions(id, producer, named)
                            .await
                    }
                }
            }
            Some(c) => self.forward(c, txn, topic, partitions, ask, deadline).await,
        };
        outcome.map_err(|e| {
            let code = match e {
                ResponseError::ProducerFenced | ResponseError::InvalidProducerEpoch => {
                    ResponseError::InvalidProducerEpoch
                }
                ResponseError::InvalidTxnState
                | ResponseError::InvalidProducerIdMapping
                | ResponseError::TransactionalIdAuthorizationFailed => e,
                // Moving, loading, busy or unreachable: retry the produce.
                _ => ResponseError::NotEnoughReplicas,
            };
            let what = match ask {
                Ask::Verify => "checking that it is in",
                Ask::AddRouted => "adding it to",
            };
            WriteError::new(
                code,
                format!("{topic}: {what} transaction {id} at its coordinator: {e:?}"),
            )
        })
    }

    /// KIP-890 at a partition leader: before a producer's first
    /// transactional batch in a partition (none of its transactions open
    /// there), the partition must be in the producer's open transaction; a
    /// batch outside it (a zombie's, a late retry, a routed sub-batch whose
    /// transaction an abort already ended) would open a transaction no
    /// marker ends. A routed sub-batch is checked for the client producer
    /// its derived id names.
    pub async fn verify_first_batch(
        &self,
        view: &ClusterView,
        id: &str,
        log: &PartitionLog,
        (topic, partition): (&str, i32),
        h: &BatchHeader,
        deadline: Instant,
    ) -> Result<(), WriteError> {
        if !h.is_transactional() || log.in_transaction(h.producer_id) {
            return Ok(());
        }
        let txn = Txn {
            id,
            producer: ProducerIdAndEpoch {
                producer_id: txn_owner(h.producer_id).unwrap_or(h.producer_id),
                producer_epoch: h.producer_epoch,
            },
        };
        self.ensure(view, txn, topic, vec![partition], Ask::Verify, deadline)
            .await
    }

    async fn forward(
        &self,
        coordinator: i32,
        Txn { id, producer }: Txn<'_>,
        topic: &str,
        partitions: Vec<i32>,
        ask: Ask,
        deadline: Instant,
    ) -> Result<(), ResponseError> {
        let mut t = AddPartitionsToTxnTopic::default();
        t.name = TopicName(StrBytes::from_string(topic.to_string()));
        t.partitions = partitions;
        let mut txn = AddPartitionsToTxnTransaction::default();
        txn.transactional_id = TransactionalId(StrBytes::from_string(id.to_string()));
        txn.producer_id = ProducerId(producer.producer_id);
        txn.producer_epoch = producer.producer_epoch;
        txn.verify_only = ask == Ask::Verify;
        txn.topics = vec![t];
        let mut req = AddPartitionsToTxnRequest::default();
        req.transactions = vec![txn];
        let timeout = deadline.saturating_duration_since(Instant::now());
        let resp = self
            .forwarder
            .request(coordinator, &req, 4, timeout)
            .await
            .map_err(|message| {
                tracing::info!(transactional_id = id, coordinator, %message, "transaction coordinator not reached");
                ResponseError::NetworkException
            })?;
        if let Some(e) = ResponseError::try_from_code(resp.error_code) {
            return Err(e);
        }
        resp.results_by_transaction
            .iter()
            .flat_map(|r| &r.topic_results)
            .flat_map(|t| &t.results_by_partition)
            .find_map(|p| ResponseError::try_from_code(p.partition_error_code))
            .map_or(Ok(()), Err)
    }
}
