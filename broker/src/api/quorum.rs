//! DescribeQuorum (KIP-595, API 55): the controller quorum's leader,
//! epoch, high watermark and each voter's progress, what
//! `kafka-metadata-quorum describe --status` and `sluice-broker cluster
//! status` show. The quorum's leader answers from its Raft state; any other
//! broker forwards the request to it, as Kafka's brokers forward it to the
//! active controller. Offsets are Raft log indexes (the metadata log).
//!
//! Also the scale-down pair: RemoveRaftVoter (KIP-853, API 81) takes a
//! broker out of the controller quorum, UnregisterBroker (API 64) takes a
//! stopped broker that holds no replica out of the metadata. (Joining is
//! automatic: see `sluice_metadata::quorum`.)

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_quorum_response::{PartitionData, ReplicaState, TopicData};
use kafka_protocol::messages::{
    BrokerId, DescribeQuorumRequest, DescribeQuorumResponse, RemoveRaftVoterRequest,
    RemoveRaftVoterResponse, TopicName, UnregisterBrokerRequest, UnregisterBrokerResponse,
};

use sluice_metadata::image::{Command, MetadataError};
use sluice_metadata::quorum::{ProposeError, Quorum, QuorumStatus, VoterChange};

use crate::forward::Forwarder;

/// The metadata log's name in Kafka (one partition, 0).
pub const METADATA_TOPIC: &str = "__cluster_metadata";
/// How long a forwarded request may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// `forwarded`: another broker, taking this one for the leader, forwarded
/// the request; it is not forwarded again (leaderships seen from two nodes
/// can disagree for a moment), the client gets NOT_LEADER_OR_FOLLOWER and
/// asks again.
pub async fn describe_quorum(
    quorum: &Quorum,
    forwarder: &Forwarder,
    req: DescribeQuorumRequest,
    version: i16,
    forwarded: bool,
) -> DescribeQuorumResponse {
    let asks_for_metadata_log = req.topics.len() == 1
        && req.topics[0].topic_name.as_str() == METADATA_TOPIC
        && req.topics[0].partitions.len() == 1
        && req.topics[0].partitions[0].partition_index == 0;
    if !asks_for_metadata_log {
        return partition_error(ResponseError::UnknownTopicOrPartition, None);
    }
    let status = quorum.status();
    if status.leader == Some(status.node_id) {
        return leader_view(&status);
    }
    match status.leader {
        Some(l) if !forwarded => forwarder
            .request(l, &req, version, FORWARD_TIMEOUT)
            .await
            .unwrap_or_else(|e| {
                tracing::debug!(error = %e, "DescribeQuorum not forwarded to the quorum leader");
                partition_error(ResponseError::NotLeaderOrFollower, status.leader)
            }),
        _ => partition_error(ResponseError::NotLeaderOrFollower, status.leader),
    }
}

/// The leader's answer: every voter's log end as far as the leader knows
/// it (its own last index; a follower's last replicated one), learners as
/// observers.
fn leader_view(status: &QuorumStatus) -> DescribeQuorumResponse {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    // Kafka's offsets are "next to write": one past the last index.
    let end = |index: Option<u64>| index.map_or(0, |i| i as i64 + 1);
    let leader_end = end(status.last_log_index);
    let state = |(id, matched): &(i32, Option<Option<u64>>)| {
        let log_end = matched.map_or(-1, end);
        let mut s = ReplicaState::default();
        s.replica_id = BrokerId(*id);
        s.log_end_offset = log_end;
        // What the leader knows for certain: a voter that has its whole
        // log has caught up now; when a follower last fetched is not
        // tracked.
        s.last_caught_up_timestamp = if log_end == leader_end { now_ms } else { -1 };
        s.last_fetch_timestamp = if *id == status.node_id { now_ms } else { -1 };
        s
    };
    let mut partition = PartitionData::default();
    partition.partition_index = 0;
    partition.leader_id = BrokerId(status.node_id);
    partition.leader_epoch = status.term as i32;
    partition.high_watermark = end(status.last_applied);
    partition.current_voters = status.voters.iter().map(state).collect();
    partition.observers = status.learners.iter().map(state).collect();
    response(partition)
}

fn partition_error(error: ResponseError, leader: Option<i32>) -> DescribeQuorumResponse {
    let mut partition = PartitionData::default();
    partition.partition_index = 0;
    partition.error_code = error.code();
    partition.leader_id = BrokerId(leader.unwrap_or(-1));
    partition.leader_epoch = -1;
    partition.high_watermark = -1;
    response(partition)
}

fn response(partition: PartitionData) -> DescribeQuorumResponse {
    let mut topic = TopicData::default();
    topic.topic_name = TopicName(super::str_bytes(METADATA_TOPIC));
    topic.partitions = vec![partition];
    let mut resp = DescribeQuorumResponse::default();
    resp.topics = vec![topic];
    resp
}

/// How long a membership change or unregistration may take.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn remove_raft_voter(
    quorum: &Quorum,
    req: RemoveRaftVoterRequest,
) -> RemoveRaftVoterResponse {
    let mut resp = RemoveRaftVoterResponse::default();
    if let Err((e, message)) = remove_voter(quorum, &req).await {
        resp.error_code = e.code();
        resp.error_message = Some(super::str_bytes(message));
    }
    resp
}

async fn remove_voter(
    quorum: &Quorum,
    req: &RemoveRaftVoterRequest,
) -> Result<(), (ResponseError, String)> {
    let ours = quorum.image().cluster_id.clone().unwrap_or_default();
    if let Some(theirs) = req
        .cluster_id
        .as_ref()
        .filter(|c| !c.is_empty() && c.as_str() != ours)
    {
        return Err((
            ResponseError::InconsistentClusterId,
            format!("cluster id {theirs} is not this cluster's ({ours})"),
        ));
    }
    let node = req.voter_id;
    let members = quorum.members();
    if !members.voters.contains(&node) {
        return Err((
            ResponseError::VoterNotFound,
            format!(
                "broker {node} is not a voter of the controller quorum (voters {:?})",
                members.voters
            ),
        ));
    }
    // A running broker taken out of the quorum would keep serving metadata
    // that no longer moves: stop it first (as a scale-down does).
    if quorum
        .image()
        .brokers
        .get(&node)
        .is_some_and(|b| b.eligible())
    {
        return Err((
            ResponseError::InvalidRequest,
            format!("broker {node} is running; stop it before removing it from the quorum"),
        ));
    }
    match quorum
        .change_voters(VoterChange::Remove { node }, CHANGE_TIMEOUT)
        .await
    {
        Ok(()) => {
            tracing::info!(node, "removed from the controller quorum");
            Ok(())
        }
        Err(ProposeError::Refused(m)) => Err((ResponseError::InvalidRequest, m)),
        // Another membership change under way, or no controller in time
        // (KIP-853 answers REQUEST_TIMED_OUT for both).
        Err(e) => Err((ResponseError::RequestTimedOut, e.to_string())),
    }
}

pub async fn unregister_broker(
    quorum: &Quorum,
    req: UnregisterBrokerRequest,
) -> UnregisterBrokerResponse {
    let mut resp = UnregisterBrokerResponse::default();
    let id = req.broker_id.0;
    let refusal = match quorum
        .propose(Command::UnregisterBroker { id }, CHANGE_TIMEOUT)
        .await
    {
        Ok(Ok(_)) => {
            tracing::info!(broker = id, "broker unregistered");
            return resp;
        }
        Ok(Err(MetadataError::UnknownBroker(m))) => (ResponseError::BrokerIdNotRegistered, m),
        Ok(Err(e)) => (ResponseError::InvalidRequest, e.to_string()),
        Err(e) => (ResponseError::RequestTimedOut, e.to_string()),
    };
    resp.error_code = refusal.0.code();
    resp.error_message = Some(super::str_bytes(refusal.1));
    resp
}
