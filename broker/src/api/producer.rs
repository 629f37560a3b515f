//! InitProducerId for idempotent producers. Transactions are not
//! implemented: a transactional id gets NOT_COORDINATOR (FindCoordinator
//! already told the client no transaction coordinator exists).

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::error_code;
use super::services::ProducerIds;

pub async fn init_producer_id(
    b: &ProducerIds<'_>,
    req: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let mut r = InitProducerIdResponse::default();
    r.producer_id = ProducerId(-1);
    r.producer_epoch = -1;
    if req.transactional_id.is_some() {
        r.error_code = error_code(b.metrics, ResponseError::NotCoordinator);
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
