//! Writing one transaction marker to one partition this broker leads: a
//! control batch (commit or abort, the producer's id and epoch, the
//! coordinator's epoch) appended through the leader write path with
//! acks=all, so it is on every in-sync replica before the coordinator
//! moves on. Serves WriteTxnMarkers from other brokers' coordinators and
//! this broker's own coordinator. A marker in an offsets partition also
//! settles the offsets the producer committed in that transaction.
//!
//! Records a produce plugin routed here in the transaction are under the
//! broker's derived producers of the client's producer (`routing`): each
//! gets its own marker, written just after the client producer's, since
//! consumers look for a marker of the producer whose records they skip.

use std::time::Instant;

use kafka_protocol::ResponseError;

use crate::groups::{GroupCoordinator, OFFSETS_TOPIC};
use crate::replication::{Acks, ReplicaManager, WriteError};
use crate::view::{ClusterView, Views};
use sluice_metadata::quorum::Quorum;
use sluice_protocol::batch::ValidatedBatch;
use sluice_protocol::records::{Marker, encode_marker};

/// One partition's end of one transaction.
#[derive(Debug, Clone)]
pub struct TxnEnd {
    pub topic: String,
    pub partition: i32,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub marker: Marker,
    pub coordinator_epoch: i32,
}

/// The services a marker write uses.
#[derive(Clone, Copy)]
pub struct MarkerWriter<'a> {
    pub node_id: i32,
    pub views: &'a Views,
    pub quorum: &'a Quorum,
    pub replicas: &'a ReplicaManager,
    /// Told when a marker lands in an offsets partition (transactional
    /// offset commits then count, or are dropped).
    pub groups: &'a GroupCoordinator,
}

impl MarkerWriter<'_> {
    pub async fn write(
        &self,
        view: &ClusterView,
        end: &TxnEnd,
        deadline: Instant,
    ) -> Result<(), WriteError> {
        let topic = view.topic(&end.topic).ok_or_else(|| {
            WriteError::new(
                ResponseError::UnknownTopicOrPartition,
                format!("topic {} does not exist", end.topic),
            )
        })?;
        let ls = self
            .views
            .leader_for_write(self.quorum, view, &end.topic, end.partition)
            .await
            .map_err(|e| {
                WriteError::new(
                    e,
                    format!(
                        "broker {} is not leading {}-{}",
                        self.node_id, end.topic, end.partition
                    ),
                )
            })?;
        // The owner's marker first: it is the one checked against the
        // producer's and the coordinator's epochs here (its derived
        // producers may never have seen a marker of the newest
        // coordinator), so a stale coordinator's marker ends nothing. A
        // retry after some of these were written finds only the rest open.
        let derived = ls.log.open_derived_of(end.producer_id);
        let mut staged = Vec::with_capacity(derived.len() + 1);
        for producer_id in [end.producer_id].into_iter().chain(derived) {
            let bytes = encode_marker(
                producer_id,
                end.producer_epoch,
                end.marker,
                end.coordinator_epoch,
                sluice_storage::now_ms(),
            )
            .map_err(|e| WriteError::from_batch(&e))?;
            let batch =
                ValidatedBatch::trusted(bytes.freeze()).map_err(|e| WriteError::from_batch(&e))?;
            staged.push(
                self.replicas
                    .stage(&ls, batch, Acks::All, topic.min_insync_replicas)?,
            );
        }
        for s in staged {
            s.complete(deadline).await?;
        }
        if end.topic == OFFSETS_TOPIC
            && let Ok(partition) = usize::try_from(end.partition)
        {
            self.groups
                .end_transaction(partition, end.producer_id, end.marker == Marker::Commit);
        }
        Ok(())
    }
}
