//! Requests one broker sends another's leaders, over one persistent
//! connection per broker (`sluice_client::Pool`): forwarded produce
//! (sub-batches a plugin routed to partitions another broker leads, as a
//! private inter-broker request, a Produce body under its own API key, see
//! `protocol::FORWARDED_PRODUCE_API_KEY`, that the leader stores as is,
//! through its leader write path, without running the topic's plugins
//! again), the transaction requests (a coordinator's WriteTxnMarkers, a
//! router's AddPartitionsToTxn) and DescribeQuorum for the quorum leader.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::ProduceRequest;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{TopicName, TransactionalId};
use kafka_protocol::protocol::Request;
use kafka_protocol::protocol::StrBytes;
use sluice_client::Pool;

use crate::replication::{Acks, WriteError};
use sluice_metadata::quorum::Quorum;
use sluice_protocol::{FORWARDED_PRODUCE_API_KEY, FORWARDED_PRODUCE_VERSION};

/// What a leader answered for one forwarded sub-batch.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded {
    pub base_offset: i64,
    pub log_append_time: i64,
}

/// The client id of every request a `Forwarder` sends (`<prefix><node id>`):
/// how a broker tells a request another broker forwarded.
pub const CLIENT_ID_PREFIX: &str = "sluice-forward-";

pub struct Forwarder {
    pool: Pool,
}

/// A leader that does not answer within this (beyond the request's own
/// deadline) is treated as unreachable.
const SLACK: Duration = Duration::from_secs(1);

impl Forwarder {
    /// Peers are reached at their `--peers` addresses (the inter-broker
    /// network), falling back to the registered ones.
    pub fn new(node_id: i32, quorum: Arc<Quorum>) -> Forwarder {
        Forwarder {
            pool: Pool::new(
                format!("{CLIENT_ID_PREFIX}{node_id}"),
                quorum.peer_resolver(),
                Duration::from_secs(3),
            )
            .with_transport(quorum.peer_transport().clone()),
        }
    }

    /// Sends `batches` (partition, batch bytes) of `topic` to `broker`, the
    /// leader of those partitions, with `acks`; one result per batch, in
    /// order. A broker that cannot be reached fails them all with a
    /// retriable error.
    pub async fn produce(
        &self,
        broker: i32,
        topic: &str,
        batches: Vec<(i32, Bytes)>,
        transactional_id: Option<&str>,
        acks: Acks,
        deadline: Instant,
    ) -> Vec<Result<Forwarded, WriteError>> {
        let partitions: Vec<i32> = batches.iter().map(|(p, _)| *p).collect();
        let fail_all = |code: ResponseError, message: String| {
            partitions
                .iter()
                .map(|_| Err(WriteError::new(code, message.clone())))
                .collect()
        };
        let mut req = ProduceRequest::default();
        req.acks = acks.to_wire();
        // Transactional sub-batches: the leader checks the transaction.
        req.transactional_id =
            transactional_id.map(|id| TransactionalId(StrBytes::from_string(id.to_string())));
        let remaining = deadline.saturating_duration_since(Instant::now());
        req.timeout_ms = i32::try_from(remaining.as_millis()).unwrap_or(i32::MAX);
        let mut t = TopicProduceData::default();
        t.name = TopicName(StrBytes::from_string(topic.to_string()));
        t.partition_data = batches
            .into_iter()
            .map(|(p, bytes)| {
                let mut d = PartitionProduceData::default();
                d.index = p;
                d.records = Some(bytes);
                d
            })
            .collect();
        req.topic_data = vec![t];
        let conn = match self.pool.get(broker).await {
            Ok(c) => c,
            Err(e) => {
                return fail_all(
                    ResponseError::RequestTimedOut,
                    format!("cannot reach broker {broker}, the leader: {e}"),
                );
            }
        };
        let sent = conn
            .send_as(
                FORWARDED_PRODUCE_API_KEY,
                &req,
                FORWARDED_PRODUCE_VERSION,
                remaining + SLACK,
            )
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                if e.is_connection_error() {
                    self.pool.reset(broker).await;
                }
                return fail_all(
                    ResponseError::RequestTimedOut,
                    format!("forwarding to broker {broker}: {e}"),
                );
            }
        };
        let answers: Vec<_> = resp
            .responses
            .iter()
            .flat_map(|t| t.partition_responses.iter())
            .collect();
        partitions
            .iter()
            .map(|p| {
                let Some(a) = answers.iter().find(|a| a.index == *p) else {
                    return Err(WriteError::new(
                        ResponseError::UnknownServerError,
                        format!("broker {broker} did not answer for {topic}-{p}"),
                    ));
                };
                match ResponseError::try_from_code(a.error_code) {
                    None => Ok(Forwarded {
                        base_offset: a.base_offset,
                        log_append_time: a.log_append_time_ms,
                    }),
                    Some(code) => Err(WriteError::new(
                        code,
                        a.error_message
                            .as_ref()
                            .map_or_else(|| format!("{code:?}"), |m| m.to_string()),
                    )),
                }
            })
            .collect()
    }

    /// Sends a request to `broker`: a coordinator's WriteTxnMarkers to the
    /// leader of their partitions (version 1), a partition leader's
    /// AddPartitionsToTxn to the transaction's coordinator (version 4, the
    /// inter-broker form), a DescribeQuorum to the quorum's leader. A
    /// broker that cannot be reached is an error (the caller retries).
    pub async fn request<R: Request>(
        &self,
        broker: i32,
        req: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response, String> {
        let conn = self
            .pool
            .get(broker)
            .await
            .map_err(|e| format!("cannot reach broker {broker}: {e}"))?;
        match conn.send(req, version, timeout + SLACK).await {
            Ok(resp) => Ok(resp),
            Err(e) => {
                if e.is_connection_error() {
                    self.pool.reset(broker).await;
                }
                Err(format!("API key {} to broker {broker}: {e}", R::KEY))
            }
        }
    }
}
