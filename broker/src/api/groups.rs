//! Consumer-group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, OffsetCommit, OffsetFetch, ListGroups, DescribeGroups,
//! DeleteGroups, OffsetDelete. Wire types in, coordinator calls, wire types
//! out; the semantics live in `crate::groups`.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName, delete_groups_response,
};

use super::services::Groups;
use super::{RequestContext, error_code, str_bytes};
use crate::groups::{CommittedOffset, JoinRequest, MAX_METADATA_BYTES};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{TxnOffsetCommitRequest, TxnOffsetCommitResponse};
use sluice_storage::now_ms;

fn code(b: &Groups<'_>, e: Option<ResponseError>) -> i16 {
    e.map_or(0, |e| error_code(b.metrics, e))
}

const KEY_TYPE_TRANSACTION: i8 = 1;

/// A coordinator's id and address on the asking client's listener.
fn on_listener(
    b: &sluice_metadata::image::BrokerImage,
    listener: &str,
) -> Option<(i32, String, i32)> {
    b.endpoint(listener)
        .map(|(host, port)| (b.id, host.to_string(), port))
}

pub fn find_coordinator(
    b: &Groups<'_>,
    listener: &str,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let view = b.views.current();
    let mut resp = FindCoordinatorResponse::default();
    // A group's coordinator is the leader of the offsets partition its id
    // hashes to; a transactional id's, that of its transaction state
    // partition.
    let answer = |key: &str| -> Result<(i32, String, i32), (i16, String)> {
        if req.key_type == KEY_TYPE_TRANSACTION {
            return crate::transactions::coordinator_of(&view, key)
                .and_then(|c| on_listener(c, listener))
                .ok_or_else(|| {
                    (
                        error_code(b.metrics, ResponseError::CoordinatorNotAvailable),
                        format!(
                            "the transaction state partition of '{key}' has no leader right now"
                        ),
                    )
                });
        }
        crate::groups::coordinator_of(&view, key)
            .and_then(|c| on_listener(c, listener))
            .ok_or_else(|| {
                (
                    error_code(b.metrics, ResponseError::CoordinatorNotAvailable),
                    format!("the offsets partition of group '{key}' has no leader right now"),
                )
            })
    };
    if version >= 4 {
        resp.coordinators = req
            .coordinator_keys
            .iter()
            .map(|k| {
                let mut c = Coordinator::default();
                c.key = k.clone();
                match answer(k.as_str()) {
                    Ok((id, host, port)) => {
                        c.node_id = BrokerId(id);
                        c.host = str_bytes(host);
                        c.port = port;
                    }
                    Err((err, msg)) => {
                        c.error_code = err;
                        c.error_message = Some(str_bytes(msg));
                        c.node_id = BrokerId(-1);
                        c.port = -1;
                    }
                }
                c
            })
            .collect();
    } else {
        match answer(req.key.as_str()) {
            Ok((id, host, port)) => {
                resp.node_id = BrokerId(id);
                resp.host = str_bytes(host);
                resp.port = port;
            }
            Err((err, msg)) => {
                resp.error_code = err;
                if version >= 1 {
                    resp.error_message = Some(str_bytes(msg));
                }
                resp.node_id = BrokerId(-1);
                resp.port = -1;
            }
        }
    }
    resp
}

pub async fn join_group(
    b: &Groups<'_>,
    ctx: &RequestContext,
    req: JoinGroupRequest,
    version: i16,
) -> JoinGroupResponse {
    let outcome = b
        .groups
        .join(JoinRequest {
            group_id: req.group_id.0.to_string(),
            member_id: req.member_id.to_string(),
            instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
            client_id: ctx.client_id.clone(),
            client_host: ctx.peer.ip().to_string(),
            session_timeout_ms: req.session_timeout_ms,
            // v0 has no rebalance timeout: it equals the session timeout.
            rebalance_timeout_ms: if version >= 1 {
                req.rebalance_timeout_ms
            } else {
                req.session_timeout_ms
            },
            protocol_type: req.protocol_type.to_string(),
            protocols: req
                .protocols
                .iter()
                .map(|p| (p.name.to_string(), p.metadata.clone()))
                .collect(),
            require_known_member_id: version >= 4,
        })
        .await;
    let mut r = JoinGroupResponse::default();
    r.error_code = code(b, outcome.error);
    r.generation_id = outcome.generation;
    if version >= 7 {
        r.protocol_type = outcome.protocol_type.map(str_bytes);
    }
    r.protocol_name = outcome.protocol_name.map(str_bytes);
    if version < 7 && r.protocol_name.is_none() {
        // Non-nullable before v7.
        r.protocol_name = Some(str_bytes(""));
    }
    r.leader = str_bytes(outcome.leader);
    r.member_id = str_bytes(outcome.member_id);
    r.members = outcome
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            let mut m = JoinGroupResponseMember::default();
            m.member_id = str_bytes(id);
            if version >= 5 {
                m.group_instance_id = instance.map(str_bytes);
            }
            m.metadata = metadata;
            m
        })
        .collect();
    r
}

pub async fn sync_group(b: &Groups<'_>, req: SyncGroupRequest, version: i16) -> SyncGroupResponse {
    let outcome = b
        .groups
        .sync(
            req.group_id.0.as_str(),
            req.generation_id,
            req.member_id.as_str(),
            req.group_instance_id.as_ref().map(|s| s.as_str()),
            req.assignments
                .iter()
                .map(|a| (a.member_id.to_string(), a.assignment.clone()))
                .collect(),
        )
        .await;
    let mut r = SyncGroupResponse::default();
    r.error_code = code(b, outcome.error);
    r.assignment = outcome.assignment;
    if version >= 5 {
        r.protocol_type = outcome.protocol_type.map(str_bytes);
        r.protocol_name = outcome.protocol_name.map(str_bytes);
    }
    r
}

pub fn heartbeat(b: &Groups<'_>, req: HeartbeatRequest) -> HeartbeatResponse {
    let mut r = HeartbeatResponse::default();
    r.error_code = code(
        b,
        b.groups.heartbeat(
            req.group_id.0.as_str(),
            req.generation_id,
            req.member_id.as_str(),
            req.group_instance_id.as_ref().map(|s| s.as_str()),
        ),
    );
    r
}

pub fn leave_group(b: &Groups<'_>, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        req.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    let mut r = LeaveGroupResponse::default();
    match b.groups.leave(req.group_id.0.as_str(), &members) {
        Err(e) => r.error_code = error_code(b.metrics, e),
        Ok(results) if version >= 3 => {
            r.members = members
                .into_iter()
                .zip(results)
                .map(|((id, instance), err)| {
                    let mut m = MemberResponse::default();
                    m.member_id = str_bytes(id);
                    m.group_instance_id = instance.map(str_bytes);
                    m.error_code = code(b, err);
                    m
                })
                .collect();
        }
        Ok(results) => r.error_code = code(b, results.into_iter().next().flatten()),
    }
    r
}

pub async fn offset_commit(
    b: &Groups<'_>,
    req: OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    let plan = CommitPlan::check(
        &b.views.current(),
        req.topics.iter().map(|t| {
            let offsets = t.partitions.iter().map(|p| OffsetIn {
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: if version >= 6 {
                    p.committed_leader_epoch
                } else {
                    -1
                },
                metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
            });
            (t.name.0.to_string(), offsets.collect())
        }),
    );
    let outcome = if plan.accepted.is_empty() {
        Ok(())
    } else {
        b.groups
            .commit(
                req.group_id.0.as_str(),
                req.generation_id_or_member_epoch,
                req.member_id.as_str(),
                req.group_instance_id.as_ref().map(|s| s.as_str()),
                plan.accepted.clone(),
            )
            .await
    };
    let mut resp = OffsetCommitResponse::default();
    for (name, partitions) in plan.answers(outcome) {
        let mut tr = OffsetCommitResponseTopic::default();
        tr.name = TopicName(str_bytes(name));
        for (index, error) in partitions {
            let mut pr = OffsetCommitResponsePartition::default();
            pr.partition_index = index;
            pr.error_code = code(b, error);
            tr.partitions.push(pr);
        }
        resp.topics.push(tr);
    }
    resp
}

/// One partition's offset as a commit request carries it.
struct OffsetIn {
    partition: i32,
    offset: i64,
    leader_epoch: i32,
    metadata: Option<String>,
}

/// A topic's partitions and each one's answer (`None`: no error).
type TopicAnswers = (String, Vec<(i32, Option<ResponseError>)>);

/// An offset commit's partitions, checked the same way for OffsetCommit
/// and TxnOffsetCommit: what to commit, and each partition's answer.
struct CommitPlan {
    accepted: Vec<(String, i32, CommittedOffset)>,
    /// Per topic, each partition and its error found now (`None`: it is
    /// committed, and gets the commit's outcome).
    checked: Vec<TopicAnswers>,
}

impl CommitPlan {
    /// Any partition that exists in the cluster metadata may be committed
    /// (the coordinator leads an offsets partition, not the committed
    /// topic's partitions), with metadata up to `MAX_METADATA_BYTES`.
    fn check(
        view: &crate::view::ClusterView,
        topics: impl Iterator<Item = (String, Vec<OffsetIn>)>,
    ) -> CommitPlan {
        let now = now_ms();
        let mut plan = CommitPlan {
            accepted: Vec::new(),
            checked: Vec::new(),
        };
        for (name, offsets) in topics {
            let partitions = view
                .image
                .topics
                .get(&name)
                .map_or(0, |t| t.partitions.len());
            let mut answers = Vec::new();
            for o in offsets {
                let error = if usize::try_from(o.partition).map_or(true, |i| i >= partitions) {
                    Some(ResponseError::UnknownTopicOrPartition)
                } else if o
                    .metadata
                    .as_ref()
                    .is_some_and(|m| m.len() > MAX_METADATA_BYTES)
                {
                    Some(ResponseError::OffsetMetadataTooLarge)
                } else {
                    plan.accepted.push((
                        name.clone(),
                        o.partition,
                        CommittedOffset {
                            offset: o.offset,
                            leader_epoch: o.leader_epoch,
                            metadata: o.metadata,
                            commit_ms: now,
                        },
                    ));
                    None
                };
                answers.push((o.partition, error));
            }
            plan.checked.push((name, answers));
        }
        plan
    }

    /// Each partition's answer once the commit of the accepted ones came
    /// to `outcome`.
    fn answers(self, outcome: Result<(), ResponseError>) -> Vec<TopicAnswers> {
        let failed = outcome.err();
        self.checked
            .into_iter()
            .map(|(name, parts)| {
                let parts = parts
                    .into_iter()
                    .map(|(p, error)| (p, error.or(failed)))
                    .collect();
                (name, parts)
            })
            .collect()
    }
}

type Wanted = Option<Vec<(String, Vec<i32>)>>;

pub fn offset_fetch(b: &Groups<'_>, req: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
    let mut resp = OffsetFetchResponse::default();
    // require_stable (v7+, read_committed consumers): an offset a
    // transaction committed but has not ended yet is not answered; the
    // client asks again (Kafka's UNSTABLE_OFFSET_COMMIT).
    let unstable = |group: &str, topic: &str, partition: i32| {
        (version >= 7 && req.require_stable && b.groups.has_pending_offset(group, topic, partition))
            .then(|| error_code(b.metrics, ResponseError::UnstableOffsetCommit))
    };
    if version >= 8 {
        for g in req.groups {
            let wanted: Wanted = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes))
                    .collect()
            });
            let mut gr = OffsetFetchResponseGroup::default();
            gr.group_id = g.group_id.clone();
            if let Err(e) = b.groups.coordination(g.group_id.0.as_str()) {
                gr.error_code = error_code(b.metrics, e);
                resp.groups.push(gr);
                continue;
            }
            for (topic, parts) in b.groups.fetch_offsets(g.group_id.0.as_str(), wanted) {
                let mut tr = OffsetFetchResponseTopics::default();
                tr.name = TopicName(str_bytes(topic.clone()));
                tr.partitions = parts
                    .into_iter()
                    .map(|(p, v)| {
                        let mut pr = OffsetFetchResponsePartitions::default();
                        pr.partition_index = p;
                        if let Some(code) = unstable(g.group_id.0.as_str(), &topic, p) {
                            pr.error_code = code;
                            pr.committed_offset = -1;
                            return pr;
                        }
                        pr.committed_offset = v.as_ref().map_or(-1, |v| v.offset);
                        pr.committed_leader_epoch = v.as_ref().map_or(-1, |v| v.leader_epoch);
                        pr.metadata =
                            Some(str_bytes(v.and_then(|v| v.metadata).unwrap_or_default()));
                        pr
                    })
                    .collect();
                gr.topics.push(tr);
            }
            resp.groups.push(gr);
        }
        return resp;
    }
    if let Err(e) = b.groups.coordination(req.group_id.0.as_str()) {
        // v0/v1 have no top-level error: their clients see no offsets.
        if version >= 2 {
            resp.error_code = error_code(b.metrics, e);
        }
        return resp;
    }
    let wanted: Wanted = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    for (topic, parts) in b.groups.fetch_offsets(req.group_id.0.as_str(), wanted) {
        let mut tr = OffsetFetchResponseTopic::default();
        tr.name = TopicName(str_bytes(topic.clone()));
        tr.partitions = parts
            .into_iter()
            .map(|(p, v)| {
                let mut pr = OffsetFetchResponsePartition::default();
                pr.partition_index = p;
                if let Some(code) = unstable(req.group_id.0.as_str(), &topic, p) {
                    pr.error_code = code;
                    pr.committed_offset = -1;
                    return pr;
                }
                pr.committed_offset = v.as_ref().map_or(-1, |v| v.offset);
                if version >= 5 {
                    pr.committed_leader_epoch = v.as_ref().map_or(-1, |v| v.leader_epoch);
                }
                pr.metadata = Some(str_bytes(v.and_then(|v| v.metadata).unwrap_or_default()));
                pr
            })
            .collect();
        resp.topics.push(tr);
    }
    resp
}

pub fn list_groups(b: &Groups<'_>, req: ListGroupsRequest, version: i16) -> ListGroupsResponse {
    let filter: Vec<String> = req
        .states_filter
        .iter()
        .map(|s| s.to_string().to_lowercase())
        .collect();
    let mut resp = ListGroupsResponse::default();
    resp.groups = b
        .groups
        .list()
        .into_iter()
        .filter(|(_, _, state)| filter.is_empty() || filter.contains(&state.name().to_lowercase()))
        .map(|(id, protocol_type, state)| {
            let mut g = ListedGroup::default();
            g.group_id = GroupId(str_bytes(id));
            g.protocol_type = str_bytes(protocol_type);
            if version >= 4 {
                g.group_state = str_bytes(state.name());
            }
            if version >= 5 {
                g.group_type = str_bytes("classic");
            }
            g
        })
        .collect();
    resp
}

pub fn describe_groups(
    b: &Groups<'_>,
    req: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let mut resp = DescribeGroupsResponse::default();
    for id in req.groups {
        let mut g = DescribedGroup::default();
        g.group_id = id.clone();
        if let Err(e) = b.groups.coordination(id.0.as_str()) {
            g.error_code = error_code(b.metrics, e);
            resp.groups.push(g);
            continue;
        }
        match b.groups.describe(id.0.as_str()) {
            // Kafka describes an unknown group as Dead with no error.
            None => g.group_state = str_bytes("Dead"),
            Some(s) => {
                g.group_state = str_bytes(s.state.name());
                g.protocol_type = str_bytes(s.protocol_type);
                g.protocol_data = str_bytes(s.protocol);
                g.members = s
                    .members
                    .into_iter()
                    .map(|m| {
                        let mut d = DescribedGroupMember::default();
                        d.member_id = str_bytes(m.member_id);
                        if version >= 4 {
                            d.group_instance_id = m.instance_id.map(str_bytes);
                        }
                        d.client_id = str_bytes(m.client_id);
                        d.client_host = str_bytes(m.client_host);
                        d.member_metadata = m.metadata;
                        d.member_assignment = m.assignment;
                        d
                    })
                    .collect();
            }
        }
        resp.groups.push(g);
    }
    resp
}

pub async fn delete_groups(b: &Groups<'_>, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut resp = DeleteGroupsResponse::default();
    for id in req.groups_names {
        let mut r = delete_groups_response::DeletableGroupResult::default();
        r.error_code = code(b, b.groups.delete_group(id.0.as_str()).await.err());
        r.group_id = id;
        resp.results.push(r);
    }
    resp
}

pub async fn offset_delete(b: &Groups<'_>, req: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let mut resp = OffsetDeleteResponse::default();
    let partitions: Vec<(String, i32)> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.0.to_string(), p.partition_index))
        })
        .collect();
    match b
        .groups
        .delete_offsets(req.group_id.0.as_str(), partitions)
        .await
    {
        Err(e) => resp.error_code = error_code(b.metrics, e),
        Ok(results) => {
            let mut results = results.into_iter();
            for t in req.topics {
                let mut tr = OffsetDeleteResponseTopic::default();
                tr.name = t.name.clone();
                for p in t.partitions {
                    let mut pr = OffsetDeleteResponsePartition::default();
                    pr.partition_index = p.partition_index;
                    pr.error_code = code(b, results.next().flatten());
                    tr.partitions.push(pr);
                }
                resp.topics.push(tr);
            }
        }
    }
    resp
}

/// TxnOffsetCommit: offsets a transactional producer commits for a group
/// within its transaction (see `GroupCoordinator::txn_commit`).
pub async fn txn_offset_commit(
    b: &Groups<'_>,
    req: TxnOffsetCommitRequest,
    version: i16,
) -> TxnOffsetCommitResponse {
    let plan = CommitPlan::check(
        &b.views.current(),
        req.topics.iter().map(|t| {
            let offsets = t.partitions.iter().map(|p| OffsetIn {
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: if version >= 2 {
                    p.committed_leader_epoch
                } else {
                    -1
                },
                metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
            });
            (t.name.0.to_string(), offsets.collect())
        }),
    );
    let outcome = if plan.accepted.is_empty() {
        Ok(())
    } else {
        b.groups
            .txn_commit(
                req.group_id.0.as_str(),
                (req.producer_id.0, req.producer_epoch),
                req.generation_id,
                req.member_id.as_str(),
                plan.accepted.clone(),
            )
            .await
    };
    let mut resp = TxnOffsetCommitResponse::default();
    for (name, partitions) in plan.answers(outcome) {
        let mut tr = TxnOffsetCommitResponseTopic::default();
        tr.name = TopicName(str_bytes(name));
        for (index, error) in partitions {
            let mut pr = TxnOffsetCommitResponsePartition::default();
            pr.partition_index = index;
            pr.error_code = code(b, error);
            tr.partitions.push(pr);
        }
        resp.topics.push(tr);
    }
    resp
}
