//! AlterPartitionReassignments and ListPartitionReassignments (KIP-455,
//! APIs 45 and 46): what `kafka-reassign-partitions`, admin clients and
//! the operator use to move replicas between brokers. A change is one
//! `ReassignPartition` metadata command per partition; the new replicas
//! then catch up as followers and the controller's image completes the move
//! when they are all in sync (`sluice_metadata::image`). The response
//! comes once the change is committed, not when the move is done, as in
//! Kafka; ListPartitionReassignments shows the moves still under way.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};

use sluice_metadata::image::{Command, MetadataError, MetadataImage, PartitionImage};

use super::services::Admin;
use super::{error_code, str_bytes};
use crate::cluster::topics::PROPOSE_TIMEOUT;

pub async fn alter_partition_reassignments(
    b: &Admin<'_>,
    req: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    let mut resp = AlterPartitionReassignmentsResponse::default();
    resp.allow_replication_factor_change = req.allow_replication_factor_change;
    for t in req.topics {
        let topic = t.name.0.to_string();
        let mut out = ReassignableTopicResponse::default();
        out.name = t.name;
        for p in t.partitions {
            let mut r = ReassignablePartitionResponse::default();
            r.partition_index = p.partition_index;
            let target: Option<Vec<i32>> =
                p.replicas.map(|rs| rs.into_iter().map(|id| id.0).collect());
            if let Err((code, message)) = reassign(
                b,
                &topic,
                p.partition_index,
                target,
                req.allow_replication_factor_change,
            )
            .await
            {
                r.error_code = error_code(b.metrics, code);
                r.error_message = Some(str_bytes(message));
            }
            out.partitions.push(r);
        }
        resp.responses.push(out);
    }
    resp
}

/// Checks one partition's change against the current image and commits
/// it; the controller's image checks it again against the image it
/// applies to.
async fn reassign(
    b: &Admin<'_>,
    topic: &str,
    partition: i32,
    target: Option<Vec<i32>>,
    allow_replication_factor_change: bool,
) -> Result<(), (ResponseError, String)> {
    let image = b.quorum.image();
    let current = partition_of(&image, topic, partition)?;
    if let Some(target) = &target
        && !allow_replication_factor_change
        && target.len() != current.target_replicas().len()
    {
        return Err((
            ResponseError::InvalidReplicationFactor,
            format!(
                "{topic}-{partition}: the replication factor would change from {} to {} but allowReplicationFactorChange is false",
                current.target_replicas().len(),
                target.len()
            ),
        ));
    }
    let moving = target.is_some();
    let command = Command::ReassignPartition {
        topic: topic.to_string(),
        partition,
        target: target.clone(),
    };
    match b.quorum.propose(command, PROPOSE_TIMEOUT).await {
        Ok(Ok(_)) => {
            match &target {
                Some(t) => tracing::info!(topic, partition, target = ?t, "reassigning partition"),
                None => tracing::info!(topic, partition, "cancelled partition reassignment"),
            }
            Ok(())
        }
        Ok(Err(e)) => Err(match e {
            MetadataError::UnknownTopic(m) => (ResponseError::UnknownTopicOrPartition, m),
            MetadataError::InvalidReplicaAssignment(m) | MetadataError::UnknownBroker(m) => {
                (ResponseError::InvalidReplicaAssignment, m)
            }
            MetadataError::NoReassignmentInProgress(m) => {
                (ResponseError::NoReassignmentInProgress, m)
            }
            other => (
                ResponseError::UnknownServerError,
                format!(
                    "{} {topic}-{partition}: {other}",
                    if moving { "reassigning" } else { "cancelling" }
                ),
            ),
        }),
        Err(e) => Err((ResponseError::RequestTimedOut, e.to_string())),
    }
}

fn partition_of<'a>(
    image: &'a MetadataImage,
    topic: &str,
    partition: i32,
) -> Result<&'a PartitionImage, (ResponseError, String)> {
    let t = image.topics.get(topic).ok_or_else(|| {
        (
            ResponseError::UnknownTopicOrPartition,
            format!("topic '{topic}' does not exist"),
        )
    })?;
    if let Some(source) = t.view_of() {
        return Err((
            ResponseError::InvalidReplicaAssignment,
            format!("'{topic}' is a view of '{source}' and has its replicas; reassign '{source}'"),
        ));
    }
    image.partition(topic, partition).ok_or_else(|| {
        (
            ResponseError::UnknownTopicOrPartition,
            format!("partition {topic}-{partition} does not exist"),
        )
    })
}

pub fn list_partition_reassignments(
    b: &Admin<'_>,
    req: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    let image = b.quorum.image();
    let wanted: Vec<(String, Vec<i32>)> = match req.topics {
        Some(topics) => topics
            .into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect(),
        None => image
            .topics
            .values()
            .filter(|t| t.view_of().is_none())
            .map(|t| (t.name.clone(), (0..t.partitions.len() as i32).collect()))
            .collect(),
    };
    let mut resp = ListPartitionReassignmentsResponse::default();
    for (topic, partitions) in wanted {
        // Unknown topics and partitions, and those not moving, are left
        // out, as Kafka does.
        let ongoing: Vec<OngoingPartitionReassignment> = partitions
            .into_iter()
            .filter_map(|i| {
                let p = image.partition(&topic, i).filter(|p| p.reassigning())?;
                let ids = |v: &[i32]| v.iter().map(|id| BrokerId(*id)).collect();
                let mut o = OngoingPartitionReassignment::default();
                o.partition_index = i;
                o.replicas = ids(&p.replicas);
                o.adding_replicas = ids(&p.adding);
                o.removing_replicas = ids(&p.removing);
                Some(o)
            })
            .collect();
        if !ongoing.is_empty() {
            let mut t = OngoingTopicReassignment::default();
            t.name = TopicName(str_bytes(topic));
            t.partitions = ongoing;
            resp.topics.push(t);
        }
    }
    resp
}
