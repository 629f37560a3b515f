//! InitProducerId: a fresh producer id for an idempotent producer; for a
//! transactional one, the id its transactional id owns with a new epoch,
//! from the transaction coordinator (`crate::transactions`).

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::error_code;
use super::services::ProducerIds;
use super::transactions::fenced_for;
use crate::transactions::ProducerIdAndEpoch;

pub async fn init_producer_id(
    b: &ProducerIds<'_>,
    req: InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    let mut r = InitProducerIdResponse::default();
    r.producer_id = ProducerId(-1);
    r.producer_epoch = -1;
    if let Some(id) = req.transactional_id.as_ref().filter(|id| !id.is_empty()) {
        let current = (req.producer_id.0 >= 0).then_some(ProducerIdAndEpoch {
            producer_id: req.producer_id.0,
            producer_epoch: req.producer_epoch,
        });
        match b
            .transactions
            .init_producer(
                id.as_str(),
                req.transaction_timeout_ms,
                current,
                b.producer_ids,
            )
            .await
        {
            Ok(p) => {
                r.producer_id = ProducerId(p.producer_id);
                r.producer_epoch = p.producer_epoch;
            }
            Err(e) => r.error_code = error_code(b.metrics, fenced_for(e, version, 4)),
        }
        return r;
    }
    // Like Kafka, an idempotent producer (even one asking for an epoch bump)
    // gets a fresh id at epoch 0: sequences restart cleanly.
    match b.producer_ids.allocate().await {
        Ok(id) => {
            // A bump means the client gave up on the outcome of some
            // batches and will resend them under the new id: worth seeing.
            if req.producer_id.0 >= 0 {
                tracing::info!(
                    old_id = req.producer_id.0,
                    old_epoch = req.producer_epoch,
                    new_id = id,
                    "idempotent producer reset (epoch bump)"
                );
            }
            r.producer_id = ProducerId(id);
            r.producer_epoch = 0;
        }
        Err(e) => {
            tracing::error!(error = %e, "producer id allocation failed");
            r.error_code = error_code(b.metrics, ResponseError::CoordinatorNotAvailable);
        }
    }
    r
}
