//! ACL checks for every API, before its handler runs: the operation Kafka
//! checks, on the resources Kafka checks (Produce needs WRITE on each
//! topic, Fetch READ, the group APIs READ on the group, CreateTopics
//! CREATE on the cluster or the topic, ...). A request refused as a whole
//! is answered here; a request refused for some topics or groups is served
//! without them and those come back with the authorization error, as
//! Kafka answers. With the authorizer off every check passes and requests
//! go through untouched.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::*;

use crate::auth::authorizer::{Authorizer, CLUSTER, Caller};
use sluice_metadata::acl::{Operation, ResourceType};
use sluice_metadata::image::MetadataImage;

/// One request's view of the authorizer.
pub struct Authz<'a> {
    pub authorizer: &'a Authorizer,
    pub image: std::sync::Arc<MetadataImage>,
    pub caller: Caller,
    /// Metadata for an unknown topic creates it (the broker setting).
    pub auto_create: bool,
}

impl Authz<'_> {
    fn allows(&self, op: Operation, rt: ResourceType, name: &str) -> bool {
        self.authorizer
            .allows(&self.image, &self.caller, op, rt, name)
    }

    fn topic(&self, op: Operation, name: &str) -> bool {
        self.allows(op, ResourceType::Topic, name)
    }

    fn group(&self, op: Operation, name: &str) -> bool {
        self.allows(op, ResourceType::Group, name)
    }

    fn txn(&self, op: Operation, name: &str) -> bool {
        self.allows(op, ResourceType::TransactionalId, name)
    }

    fn cluster(&self, op: Operation) -> bool {
        self.allows(op, ResourceType::Cluster, CLUSTER)
    }

    /// `allows` without counting a denial: for listings that only filter
    /// what the caller sees (Kafka's `logIfDenied = false`).
    fn may(&self, op: Operation, rt: ResourceType, name: &str) -> bool {
        self.authorizer
            .decide(&self.image, &self.caller, op, rt, name)
    }

    /// The topic a topic id names, if it exists.
    fn topic_named_by(&self, id: &uuid::Uuid) -> Option<&str> {
        self.image
            .topics
            .values()
            .find(|t| t.id == *id)
            .map(|t| t.name.as_str())
    }

    /// The cluster's authorized operations: none without DESCRIBE (Kafka).
    fn cluster_operations(&self) -> i32 {
        if self.may(Operation::Describe, ResourceType::Cluster, CLUSTER) {
            self.operations(ResourceType::Cluster, CLUSTER)
        } else {
            0
        }
    }

    pub fn operations(&self, rt: ResourceType, name: &str) -> i32 {
        self.authorizer
            .authorized_operations(&self.image, &self.caller, rt, name)
    }
}

/// Topics (with their partitions) left out of a request, for the response.
type Denied = Vec<(TopicName, Vec<i32>)>;

/// After the handler: what to put back into its response.
pub enum Fix {
    None,
    Produce(Denied, i16),
    Fetch(Denied),
    ListOffsets(Denied),
    LeaderEpoch(Denied),
    Metadata {
        denied: Vec<TopicName>,
        /// Asked for by id: answered UNKNOWN_TOPIC_ID, as Kafka does.
        denied_ids: Vec<uuid::Uuid>,
        listing_all: bool,
        topic_ops: bool,
        cluster_ops: bool,
    },
    CreateTopics(Vec<TopicName>),
    DeleteTopics {
        names: Vec<TopicName>,
        ids: Vec<(uuid::Uuid, i16)>,
    },
    CreatePartitions(Vec<TopicName>),
    OffsetCommit(Denied),
    TxnOffsetCommit(Denied),
    OffsetFetchTopics {
        denied: Denied,
        listing_all: bool,
    },
    OffsetFetchGroups(Vec<GroupId>),
    DescribeGroups {
        denied: Vec<GroupId>,
        ops: bool,
    },
    ListGroups,
    DeleteGroups(Vec<GroupId>),
    AddPartitions(Denied),
    DescribeConfigs(Vec<(i8, String)>),
    AlterConfigs(Vec<(i8, String)>),
    IncrementalAlterConfigs(Vec<(i8, String)>),
    DescribeCluster(bool),
    ListTransactions,
}

/// A Fetch partition answered with `error` instead of records.
pub fn refused_fetch(partition: i32, error: i16) -> fetch_response::PartitionData {
    let mut pd = fetch_response::PartitionData::default();
    pd.partition_index = partition;
    pd.error_code = error;
    pd.high_watermark = -1;
    pd.last_stable_offset = -1;
    pd.log_start_offset = -1;
    pd
}

/// What happens to a request after the checks.
pub enum Checked {
    Serve(RequestKind, Fix),
    Answer(ResponseKind),
}

fn code(e: ResponseError) -> i16 {
    e.code()
}

const TOPIC_DENIED: ResponseError = ResponseError::TopicAuthorizationFailed;
const GROUP_DENIED: ResponseError = ResponseError::GroupAuthorizationFailed;
const CLUSTER_DENIED: ResponseError = ResponseError::ClusterAuthorizationFailed;
const TXN_DENIED: ResponseError = ResponseError::TransactionalIdAuthorizationFailed;

/// Config resource types (DescribeConfigs, AlterConfigs).
const CONFIG_TOPIC: i8 = 2;
const CONFIG_BROKER: i8 = 4;

/// Splits `items` into those `keep` accepts and the names of the rest.
fn split<T>(items: &mut Vec<T>, keep: impl Fn(&T) -> bool) -> Vec<T> {
    let (kept, denied): (Vec<T>, Vec<T>) = std::mem::take(items).into_iter().partition(keep);
    *items = kept;
    denied
}

/// `a` is `None` where nothing is checked (no authorizer, or the trusted
/// inter-broker listener).
pub fn check(a: Option<&Authz>, req: RequestKind, version: i16) -> Checked {
    use Operation::*;
    let Some(a) = a else {
        return Checked::Serve(req, Fix::None);
    };
    match req {
        RequestKind::Produce(mut r) => {
            if let Some(id) = &r.transactional_id
                && !a.txn(Write, id.as_str())
            {
                let denied = r
                    .topic_data
                    .drain(..)
                    .map(|t| (t.name, t.partition_data.iter().map(|p| p.index).collect()))
                    .collect();
                return Checked::Serve(
                    RequestKind::Produce(r),
                    Fix::Produce(denied, code(TXN_DENIED)),
                );
            }
            let denied = split(&mut r.topic_data, |t| a.topic(Write, t.name.as_str()))
                .into_iter()
                .map(|t| (t.name, t.partition_data.iter().map(|p| p.index).collect()))
                .collect();
            Checked::Serve(
                RequestKind::Produce(r),
                Fix::Produce(denied, code(TOPIC_DENIED)),
            )
        }
        RequestKind::Fetch(mut r) => {
            let denied = split(&mut r.topics, |t| a.topic(Read, t.topic.as_str()))
                .into_iter()
                .map(|t| (t.topic, t.partitions.iter().map(|p| p.partition).collect()))
                .collect();
            Checked::Serve(RequestKind::Fetch(r), Fix::Fetch(denied))
        }
        RequestKind::ListOffsets(mut r) => {
            let denied = split(&mut r.topics, |t| a.topic(Describe, t.name.as_str()))
                .into_iter()
                .map(|t| {
                    (
                        t.name,
                        t.partitions.iter().map(|p| p.partition_index).collect(),
                    )
                })
                .collect();
            Checked::Serve(RequestKind::ListOffsets(r), Fix::ListOffsets(denied))
        }
        RequestKind::OffsetForLeaderEpoch(mut r) => {
            let denied = split(&mut r.topics, |t| a.topic(Describe, t.topic.as_str()))
                .into_iter()
                .map(|t| (t.topic, t.partitions.iter().map(|p| p.partition).collect()))
                .collect();
            Checked::Serve(
                RequestKind::OffsetForLeaderEpoch(r),
                Fix::LeaderEpoch(denied),
            )
        }
        RequestKind::Metadata(mut r) => {
            // Null asks for every topic; so does an empty list in v0.
            let listing_all = r.topics.is_none()
                || (version == 0 && r.topics.as_ref().is_some_and(Vec::is_empty));
            let mut denied = Vec::new();
            let mut denied_ids = Vec::new();
            if let Some(topics) = r.topics.as_mut().filter(|_| !listing_all) {
                let exists = |n: &str| a.image.topics.contains_key(n);
                let creates = r.allow_auto_topic_creation && a.auto_create;
                let refused = split(topics, |t| match &t.name {
                    // By id (v10+): the topic it names must be describable.
                    None => a
                        .topic_named_by(&t.topic_id)
                        .is_some_and(|n| a.topic(Describe, n)),
                    // An unknown topic the client may create is created
                    // only with CREATE; without DESCRIBE it is not shown.
                    Some(n) if !exists(n.as_str()) && creates => {
                        a.topic(Describe, n.as_str())
                            && (a.cluster(Create) || a.topic(Create, n.as_str()))
                    }
                    Some(n) => a.topic(Describe, n.as_str()),
                });
                for t in refused {
                    match t.name {
                        Some(n) => denied.push(n),
                        None => denied_ids.push(t.topic_id),
                    }
                }
            }
            let fix = Fix::Metadata {
                denied,
                denied_ids,
                listing_all,
                topic_ops: r.include_topic_authorized_operations,
                cluster_ops: r.include_cluster_authorized_operations,
            };
            Checked::Serve(RequestKind::Metadata(r), fix)
        }
        RequestKind::CreateTopics(mut r) => {
            let denied = if a.cluster(Create) {
                Vec::new()
            } else {
                split(&mut r.topics, |t| a.topic(Create, t.name.as_str()))
                    .into_iter()
                    .map(|t| t.name)
                    .collect()
            };
            Checked::Serve(RequestKind::CreateTopics(r), Fix::CreateTopics(denied))
        }
        RequestKind::DeleteTopics(mut r) => {
            let names: Vec<TopicName> = split(&mut r.topic_names, |n| a.topic(Delete, n.as_str()));
            let mut ids = Vec::new();
            let mut names_v6 = Vec::new();
            for t in split(&mut r.topics, |t| match &t.name {
                Some(n) => a.topic(Delete, n.as_str()),
                // By id (v6): the topic it names must be deletable.
                None => a
                    .topic_named_by(&t.topic_id)
                    .is_some_and(|n| a.topic(Delete, n)),
            }) {
                match t.name {
                    Some(n) => names_v6.push(n),
                    None => {
                        // Kafka: an id the caller may not even describe
                        // is unknown to it.
                        let visible = a
                            .topic_named_by(&t.topic_id)
                            .is_some_and(|n| a.may(Describe, ResourceType::Topic, n));
                        let e = if visible {
                            TOPIC_DENIED
                        } else {
                            ResponseError::UnknownTopicId
                        };
                        ids.push((t.topic_id, code(e)));
                    }
                }
            }
            let mut names = names;
            names.extend(names_v6);
            Checked::Serve(
                RequestKind::DeleteTopics(r),
                Fix::DeleteTopics { names, ids },
            )
        }
        RequestKind::CreatePartitions(mut r) => {
            let denied = split(&mut r.topics, |t| a.topic(Alter, t.name.as_str()))
                .into_iter()
                .map(|t| t.name)
                .collect();
            Checked::Serve(
                RequestKind::CreatePartitions(r),
                Fix::CreatePartitions(denied),
            )
        }
        RequestKind::DescribeConfigs(mut r) => {
            let denied = split(&mut r.resources, |res| {
                config_allowed(
                    a,
                    DescribeConfigs,
                    res.resource_type,
                    res.resource_name.as_str(),
                )
            })
            .into_iter()
            .map(|res| (res.resource_type, res.resource_name.to_string()))
            .collect();
            Checked::Serve(
                RequestKind::DescribeConfigs(r),
                Fix::DescribeConfigs(denied),
            )
        }
        RequestKind::AlterConfigs(mut r) => {
            let denied = split(&mut r.resources, |res| {
                config_allowed(
                    a,
                    AlterConfigs,
                    res.resource_type,
                    res.resource_name.as_str(),
                )
            })
            .into_iter()
            .map(|res| (res.resource_type, res.resource_name.to_string()))
            .collect();
            Checked::Serve(RequestKind::AlterConfigs(r), Fix::AlterConfigs(denied))
        }
        RequestKind::IncrementalAlterConfigs(mut r) => {
            let denied = split(&mut r.resources, |res| {
                config_allowed(
                    a,
                    AlterConfigs,
                    res.resource_type,
                    res.resource_name.as_str(),
                )
            })
            .into_iter()
            .map(|res| (res.resource_type, res.resource_name.to_string()))
            .collect();
            Checked::Serve(
                RequestKind::IncrementalAlterConfigs(r),
                Fix::IncrementalAlterConfigs(denied),
            )
        }
        RequestKind::FindCoordinator(r) => {
            let (rt, denied_code) = if r.key_type == 1 {
                (ResourceType::TransactionalId, TXN_DENIED)
            } else {
                (ResourceType::Group, GROUP_DENIED)
            };
            let keys: Vec<&str> = if version >= 4 {
                r.coordinator_keys.iter().map(|k| k.as_str()).collect()
            } else {
                vec![r.key.as_str()]
            };
            if keys.iter().all(|k| a.allows(Describe, rt, k)) {
                return Checked::Serve(RequestKind::FindCoordinator(r), Fix::None);
            }
            // Some key is refused: answer each key (allowed ones too, with
            // their coordinators, would need a second pass; clients send
            // one key per request in practice).
            let mut resp = FindCoordinatorResponse::default();
            resp.error_code = code(denied_code);
            resp.node_id = BrokerId(-1);
            resp.port = -1;
            resp.coordinators = r
                .coordinator_keys
                .iter()
                .map(|k| {
                    let mut c = find_coordinator_response::Coordinator::default();
                    c.key = k.clone();
                    c.node_id = BrokerId(-1);
                    c.port = -1;
                    c.error_code = code(denied_code);
                    c
                })
                .collect();
            Checked::Answer(ResponseKind::FindCoordinator(resp))
        }
        RequestKind::JoinGroup(r) if !a.group(Read, r.group_id.as_str()) => {
            let mut resp = JoinGroupResponse::default();
            resp.error_code = code(GROUP_DENIED);
            resp.generation_id = -1;
            Checked::Answer(ResponseKind::JoinGroup(resp))
        }
        RequestKind::SyncGroup(r) if !a.group(Read, r.group_id.as_str()) => {
            let mut resp = SyncGroupResponse::default();
            resp.error_code = code(GROUP_DENIED);
            Checked::Answer(ResponseKind::SyncGroup(resp))
        }
        RequestKind::Heartbeat(r) if !a.group(Read, r.group_id.as_str()) => {
            let mut resp = HeartbeatResponse::default();
            resp.error_code = code(GROUP_DENIED);
            Checked::Answer(ResponseKind::Heartbeat(resp))
        }
        RequestKind::LeaveGroup(r) if !a.group(Read, r.group_id.as_str()) => {
            let mut resp = LeaveGroupResponse::default();
            resp.error_code = code(GROUP_DENIED);
            Checked::Answer(ResponseKind::LeaveGroup(resp))
        }
        RequestKind::OffsetCommit(mut r) => {
            if !a.group(Read, r.group_id.as_str()) {
                let denied = r
                    .topics
                    .iter()
                    .map(|t| {
                        (
                            t.name.clone(),
                            t.partitions.iter().map(|p| p.partition_index).collect(),
                        )
                    })
                    .collect();
                return Checked::Answer(ResponseKind::OffsetCommit(offset_commit_denied(
                    denied,
                    code(GROUP_DENIED),
                )));
            }
            let denied = split(&mut r.topics, |t| a.topic(Read, t.name.as_str()))
                .into_iter()
                .map(|t| {
                    (
                        t.name,
                        t.partitions.iter().map(|p| p.partition_index).collect(),
                    )
                })
                .collect();
            Checked::Serve(RequestKind::OffsetCommit(r), Fix::OffsetCommit(denied))
        }
        RequestKind::TxnOffsetCommit(mut r) => {
            let whole = if !a.txn(Write, r.transactional_id.as_str()) {
                Some(TXN_DENIED)
            } else if !a.group(Read, r.group_id.as_str()) {
                Some(GROUP_DENIED)
            } else {
                None
            };
            if let Some(e) = whole {
                let mut resp = TxnOffsetCommitResponse::default();
                resp.topics = r
                    .topics
                    .iter()
                    .map(|t| {
                        let mut tr = txn_offset_commit_response::TxnOffsetCommitResponseTopic::default();
                        tr.name = t.name.clone();
                        tr.partitions = t
                            .partitions
                            .iter()
                            .map(|p| {
                                let mut pr = txn_offset_commit_response::TxnOffsetCommitResponsePartition::default();
                                pr.partition_index = p.partition_index;
                                pr.error_code = code(e);
                                pr
                            })
                            .collect();
                        tr
                    })
                    .collect();
                return Checked::Answer(ResponseKind::TxnOffsetCommit(resp));
            }
            let denied = split(&mut r.topics, |t| a.topic(Read, t.name.as_str()))
                .into_iter()
                .map(|t| {
                    (
                        t.name,
                        t.partitions.iter().map(|p| p.partition_index).collect(),
                    )
                })
                .collect();
            Checked::Serve(
                RequestKind::TxnOffsetCommit(r),
                Fix::TxnOffsetCommit(denied),
            )
        }
        RequestKind::OffsetFetch(mut r) => {
            if version >= 8 {
                let denied = split(&mut r.groups, |g| a.group(Describe, g.group_id.as_str()))
                    .into_iter()
                    .map(|g| g.group_id)
                    .collect();
                return Checked::Serve(RequestKind::OffsetFetch(r), Fix::OffsetFetchGroups(denied));
            }
            if !a.group(Describe, r.group_id.as_str()) {
                let mut resp = OffsetFetchResponse::default();
                resp.error_code = code(GROUP_DENIED);
                return Checked::Answer(ResponseKind::OffsetFetch(resp));
            }
            let listing_all = r.topics.is_none();
            let denied = match &mut r.topics {
                Some(topics) => split(topics, |t| a.topic(Describe, t.name.as_str()))
                    .into_iter()
                    .map(|t| (t.name, t.partition_indexes))
                    .collect(),
                None => Vec::new(),
            };
            Checked::Serve(
                RequestKind::OffsetFetch(r),
                Fix::OffsetFetchTopics {
                    denied,
                    listing_all,
                },
            )
        }
        RequestKind::DescribeGroups(mut r) => {
            let ops = r.include_authorized_operations;
            let denied = split(&mut r.groups, |g| a.group(Describe, g.as_str()));
            Checked::Serve(
                RequestKind::DescribeGroups(r),
                Fix::DescribeGroups { denied, ops },
            )
        }
        RequestKind::ListGroups(r) => Checked::Serve(RequestKind::ListGroups(r), Fix::ListGroups),
        RequestKind::DeleteGroups(mut r) => {
            let denied = split(&mut r.groups_names, |g| a.group(Delete, g.as_str()));
            Checked::Serve(RequestKind::DeleteGroups(r), Fix::DeleteGroups(denied))
        }
        RequestKind::OffsetDelete(r) if !a.group(Delete, r.group_id.as_str()) => {
            let mut resp = OffsetDeleteResponse::default();
            resp.error_code = code(GROUP_DENIED);
            Checked::Answer(ResponseKind::OffsetDelete(resp))
        }
        RequestKind::OffsetDelete(r)
            if r.topics.iter().any(|t| !a.topic(Read, t.name.as_str())) =>
        {
            let mut resp = OffsetDeleteResponse::default();
            resp.error_code = code(TOPIC_DENIED);
            Checked::Answer(ResponseKind::OffsetDelete(resp))
        }
        RequestKind::InitProducerId(r) => {
            let allowed = match &r.transactional_id {
                Some(id) => a.txn(Write, id.as_str()),
                // Kafka: IDEMPOTENT_WRITE on the cluster, or WRITE on any topic.
                None => {
                    a.cluster(IdempotentWrite)
                        || a.image.acls.iter().any(|acl| {
                            acl.resource_type == ResourceType::Topic
                                && (acl.principal == a.caller.principal
                                    || acl.principal == "User:*")
                                && acl.permission == sluice_metadata::acl::Permission::Allow
                                && acl.operation.allows(Write)
                        })
                }
            };
            if allowed {
                return Checked::Serve(RequestKind::InitProducerId(r), Fix::None);
            }
            let mut resp = InitProducerIdResponse::default();
            resp.error_code = code(if r.transactional_id.is_some() {
                TXN_DENIED
            } else {
                CLUSTER_DENIED
            });
            resp.producer_id = ProducerId(-1);
            resp.producer_epoch = -1;
            Checked::Answer(ResponseKind::InitProducerId(resp))
        }
        RequestKind::EndTxn(r) if !a.txn(Write, r.transactional_id.as_str()) => {
            let mut resp = EndTxnResponse::default();
            resp.error_code = code(TXN_DENIED);
            Checked::Answer(ResponseKind::EndTxn(resp))
        }
        RequestKind::AddOffsetsToTxn(r)
            if !a.txn(Write, r.transactional_id.as_str())
                || !a.group(Read, r.group_id.as_str()) =>
        {
            let mut resp = AddOffsetsToTxnResponse::default();
            resp.error_code = code(if a.txn(Write, r.transactional_id.as_str()) {
                GROUP_DENIED
            } else {
                TXN_DENIED
            });
            Checked::Answer(ResponseKind::AddOffsetsToTxn(resp))
        }
        RequestKind::AddPartitionsToTxn(mut r) if version < 4 => {
            if !a.txn(Write, r.v3_and_below_transactional_id.as_str()) {
                let mut resp = AddPartitionsToTxnResponse::default();
                resp.results_by_topic_v3_and_below = add_partitions_denied(
                    r.v3_and_below_topics
                        .iter()
                        .map(|t| (t.name.clone(), t.partitions.clone()))
                        .collect(),
                    code(TXN_DENIED),
                );
                return Checked::Answer(ResponseKind::AddPartitionsToTxn(resp));
            }
            let denied: Denied = split(&mut r.v3_and_below_topics, |t| {
                a.topic(Write, t.name.as_str())
            })
            .into_iter()
            .map(|t| (t.name, t.partitions))
            .collect();
            if denied.is_empty() {
                return Checked::Serve(RequestKind::AddPartitionsToTxn(r), Fix::None);
            }
            // Kafka adds none of them when any is refused: the others get
            // OPERATION_NOT_ATTEMPTED.
            let mut all = denied.clone();
            all.extend(
                r.v3_and_below_topics
                    .iter()
                    .map(|t| (t.name.clone(), t.partitions.clone())),
            );
            let mut resp = AddPartitionsToTxnResponse::default();
            resp.results_by_topic_v3_and_below =
                add_partitions_denied(all, code(ResponseError::OperationNotAttempted));
            let denied_names: Vec<&TopicName> = denied.iter().map(|(n, _)| n).collect();
            for t in &mut resp.results_by_topic_v3_and_below {
                if denied_names.contains(&&t.name) {
                    for p in &mut t.results_by_partition {
                        p.partition_error_code = code(TOPIC_DENIED);
                    }
                }
            }
            Checked::Answer(ResponseKind::AddPartitionsToTxn(resp))
        }
        RequestKind::ListTransactions(r) => {
            Checked::Serve(RequestKind::ListTransactions(r), Fix::ListTransactions)
        }
        RequestKind::DescribeTransactions(r)
            if r.transactional_ids
                .iter()
                .any(|id| !a.txn(Describe, id.as_str())) =>
        {
            let mut resp = DescribeTransactionsResponse::default();
            resp.transaction_states = r
                .transactional_ids
                .iter()
                .map(|id| {
                    let mut s = describe_transactions_response::TransactionState::default();
                    s.transactional_id = id.clone();
                    if !a.txn(Describe, id.as_str()) {
                        s.error_code = code(TXN_DENIED);
                    } else {
                        s.error_code = code(ResponseError::OperationNotAttempted);
                    }
                    s
                })
                .collect();
            Checked::Answer(ResponseKind::DescribeTransactions(resp))
        }
        RequestKind::DescribeProducers(r)
            if r.topics.iter().any(|t| !a.topic(Read, t.name.as_str())) =>
        {
            let mut resp = DescribeProducersResponse::default();
            resp.topics = r
                .topics
                .iter()
                .map(|t| {
                    let mut tr = describe_producers_response::TopicResponse::default();
                    tr.name = t.name.clone();
                    let e = if a.topic(Read, t.name.as_str()) {
                        ResponseError::OperationNotAttempted
                    } else {
                        TOPIC_DENIED
                    };
                    tr.partitions = t
                        .partition_indexes
                        .iter()
                        .map(|&p| {
                            let mut pr = describe_producers_response::PartitionResponse::default();
                            pr.partition_index = p;
                            pr.error_code = code(e);
                            pr
                        })
                        .collect();
                    tr
                })
                .collect();
            Checked::Answer(ResponseKind::DescribeProducers(resp))
        }
        // Kafka answers DescribeCluster to anyone (authorized operations
        // 0 without DESCRIBE on the cluster).
        RequestKind::DescribeCluster(r) => {
            let ops = r.include_cluster_authorized_operations;
            Checked::Serve(RequestKind::DescribeCluster(r), Fix::DescribeCluster(ops))
        }
        RequestKind::AlterUserScramCredentials(r) if !a.cluster(Alter) => {
            let mut resp = AlterUserScramCredentialsResponse::default();
            let users: std::collections::BTreeSet<String> = r
                .deletions
                .iter()
                .map(|d| d.name.to_string())
                .chain(r.upsertions.iter().map(|u| u.name.to_string()))
                .collect();
            resp.results = users
                .into_iter()
                .map(|u| {
                    let mut result = alter_user_scram_credentials_response::AlterUserScramCredentialsResult::default();
                    result.user = super::str_bytes(u);
                    result.error_code = code(CLUSTER_DENIED);
                    result
                })
                .collect();
            Checked::Answer(ResponseKind::AlterUserScramCredentials(resp))
        }
        RequestKind::DescribeQuorum(_) if !a.cluster(Describe) => {
            let mut resp = DescribeQuorumResponse::default();
            resp.error_code = code(CLUSTER_DENIED);
            Checked::Answer(ResponseKind::DescribeQuorum(resp))
        }
        RequestKind::AlterPartitionReassignments(_) if !a.cluster(Alter) => {
            let mut resp = AlterPartitionReassignmentsResponse::default();
            resp.error_code = code(CLUSTER_DENIED);
            resp.error_message = Some(super::str_bytes(
                "moving replicas needs Alter on the cluster",
            ));
            Checked::Answer(ResponseKind::AlterPartitionReassignments(resp))
        }
        RequestKind::RemoveRaftVoter(_) if !a.cluster(Alter) => {
            let mut resp = RemoveRaftVoterResponse::default();
            resp.error_code = code(CLUSTER_DENIED);
            Checked::Answer(ResponseKind::RemoveRaftVoter(resp))
        }
        RequestKind::UnregisterBroker(_) if !a.cluster(Alter) => {
            let mut resp = UnregisterBrokerResponse::default();
            resp.error_code = code(CLUSTER_DENIED);
            Checked::Answer(ResponseKind::UnregisterBroker(resp))
        }
        RequestKind::ListPartitionReassignments(_) if !a.cluster(Describe) => {
            let mut resp = ListPartitionReassignmentsResponse::default();
            resp.error_code = code(CLUSTER_DENIED);
            Checked::Answer(ResponseKind::ListPartitionReassignments(resp))
        }
        RequestKind::DescribeUserScramCredentials(_) if !a.cluster(Describe) => {
            let mut resp = DescribeUserScramCredentialsResponse::default();
            resp.error_code = code(CLUSTER_DENIED);
            Checked::Answer(ResponseKind::DescribeUserScramCredentials(resp))
        }
        // The ACL APIs check the cluster themselves (they also answer
        // SECURITY_DISABLED); ApiVersions and SASL need nothing; the
        // brokers-only APIs are served only on the (trusted) inter-broker
        // listener.
        other => Checked::Serve(other, Fix::None),
    }
}

fn config_allowed(a: &Authz, op: Operation, resource_type: i8, name: &str) -> bool {
    match resource_type {
        CONFIG_TOPIC => a.topic(op, name),
        CONFIG_BROKER => a.cluster(op),
        _ => true,
    }
}

fn offset_commit_denied(denied: Denied, error: i16) -> OffsetCommitResponse {
    let mut resp = OffsetCommitResponse::default();
    for (name, partitions) in denied {
        let mut t = offset_commit_response::OffsetCommitResponseTopic::default();
        t.name = name;
        t.partitions = partitions
            .into_iter()
            .map(|p| {
                let mut pr = offset_commit_response::OffsetCommitResponsePartition::default();
                pr.partition_index = p;
                pr.error_code = error;
                pr
            })
            .collect();
        resp.topics.push(t);
    }
    resp
}

fn add_partitions_denied(
    topics: Denied,
    error: i16,
) -> Vec<add_partitions_to_txn_response::AddPartitionsToTxnTopicResult> {
    topics
        .into_iter()
        .map(|(name, partitions)| {
            let mut t = add_partitions_to_txn_response::AddPartitionsToTxnTopicResult::default();
            t.name = name;
            t.results_by_partition = partitions
                .into_iter()
                .map(|p| {
                    let mut pr =
                        add_partitions_to_txn_response::AddPartitionsToTxnPartitionResult::default(
                        );
                    pr.partition_index = p;
                    pr.partition_error_code = error;
                    pr
                })
                .collect();
            t
        })
        .collect()
}

impl Fix {
    /// Puts the refused parts back into the handler's response.
    /// `a` is `None` only with `Fix::None` (nothing was checked).
    pub fn apply(self, a: Option<&Authz>, resp: &mut ResponseKind) {
        use Operation::*;
        let Some(a) = a else { return };
        match (self, resp) {
            (Fix::None, _) => {}
            (Fix::Produce(denied, error), ResponseKind::Produce(r)) => {
                for (name, partitions) in denied {
                    let mut t = produce_response::TopicProduceResponse::default();
                    t.name = name;
                    t.partition_responses = partitions
                        .into_iter()
                        .map(|p| {
                            let mut pr = produce_response::PartitionProduceResponse::default();
                            pr.index = p;
                            pr.error_code = error;
                            pr.base_offset = -1;
                            pr.log_append_time_ms = -1;
                            pr.log_start_offset = -1;
                            pr
                        })
                        .collect();
                    r.responses.push(t);
                }
            }
            (Fix::Fetch(denied), ResponseKind::Fetch(r)) => {
                for (name, partitions) in denied {
                    let mut t = fetch_response::FetchableTopicResponse::default();
                    t.topic = name;
                    t.partitions = partitions
                        .into_iter()
                        .map(|p| refused_fetch(p, code(TOPIC_DENIED)))
                        .collect();
                    r.responses.push(t);
                }
            }
            (Fix::ListOffsets(denied), ResponseKind::ListOffsets(r)) => {
                for (name, partitions) in denied {
                    let mut t = list_offsets_response::ListOffsetsTopicResponse::default();
                    t.name = name;
                    t.partitions = partitions
                        .into_iter()
                        .map(|p| {
                            let mut pr =
                                list_offsets_response::ListOffsetsPartitionResponse::default();
                            pr.partition_index = p;
                            pr.error_code = code(TOPIC_DENIED);
                            pr.timestamp = -1;
                            pr.offset = -1;
                            pr
                        })
                        .collect();
                    r.topics.push(t);
                }
            }
            (Fix::LeaderEpoch(denied), ResponseKind::OffsetForLeaderEpoch(r)) => {
                for (name, partitions) in denied {
                    let mut t =
                        offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default();
                    t.topic = name;
                    t.partitions = partitions
                        .into_iter()
                        .map(|p| {
                            let mut e = offset_for_leader_epoch_response::EpochEndOffset::default();
                            e.partition = p;
                            e.error_code = code(TOPIC_DENIED);
                            e.leader_epoch = -1;
                            e.end_offset = -1;
                            e
                        })
                        .collect();
                    r.topics.push(t);
                }
            }
            (
                Fix::Metadata {
                    denied,
                    denied_ids,
                    listing_all,
                    topic_ops,
                    cluster_ops,
                },
                ResponseKind::Metadata(r),
            ) => {
                if listing_all {
                    r.topics.retain(|t| {
                        t.name
                            .as_ref()
                            .is_some_and(|n| a.may(Describe, ResourceType::Topic, n.as_str()))
                    });
                }
                for id in denied_ids {
                    let mut t = metadata_response::MetadataResponseTopic::default();
                    t.topic_id = id;
                    t.error_code = code(ResponseError::UnknownTopicId);
                    t.topic_authorized_operations = i32::MIN;
                    r.topics.push(t);
                }
                for name in denied {
                    let mut t = metadata_response::MetadataResponseTopic::default();
                    t.name = Some(name);
                    t.error_code = code(TOPIC_DENIED);
                    t.topic_authorized_operations = i32::MIN;
                    r.topics.push(t);
                }
                if topic_ops {
                    for t in &mut r.topics {
                        if t.error_code == 0
                            && let Some(n) = &t.name
                        {
                            t.topic_authorized_operations =
                                a.operations(ResourceType::Topic, n.as_str());
                        }
                    }
                }
                if cluster_ops {
                    r.cluster_authorized_operations = a.cluster_operations();
                }
            }
            (Fix::CreateTopics(denied), ResponseKind::CreateTopics(r)) => {
                for name in denied {
                    let mut t = create_topics_response::CreatableTopicResult::default();
                    t.name = name;
                    t.error_code = code(TOPIC_DENIED);
                    t.num_partitions = -1;
                    t.replication_factor = -1;
                    r.topics.push(t);
                }
            }
            (Fix::DeleteTopics { names, ids }, ResponseKind::DeleteTopics(r)) => {
                for name in names {
                    let mut t = delete_topics_response::DeletableTopicResult::default();
                    t.name = Some(name);
                    t.error_code = code(TOPIC_DENIED);
                    r.responses.push(t);
                }
                for (id, error) in ids {
                    let mut t = delete_topics_response::DeletableTopicResult::default();
                    t.name = None;
                    t.topic_id = id;
                    t.error_code = error;
                    r.responses.push(t);
                }
            }
            (Fix::CreatePartitions(denied), ResponseKind::CreatePartitions(r)) => {
                for name in denied {
                    let mut t = create_partitions_response::CreatePartitionsTopicResult::default();
                    t.name = name;
                    t.error_code = code(TOPIC_DENIED);
                    r.results.push(t);
                }
            }
            (Fix::OffsetCommit(denied), ResponseKind::OffsetCommit(r)) => {
                r.topics
                    .extend(offset_commit_denied(denied, code(TOPIC_DENIED)).topics);
            }
            (Fix::TxnOffsetCommit(denied), ResponseKind::TxnOffsetCommit(r)) => {
                for (name, partitions) in denied {
                    let mut t = txn_offset_commit_response::TxnOffsetCommitResponseTopic::default();
                    t.name = name;
                    t.partitions = partitions
                        .into_iter()
                        .map(|p| {
                            let mut pr = txn_offset_commit_response::TxnOffsetCommitResponsePartition::default();
                            pr.partition_index = p;
                            pr.error_code = code(TOPIC_DENIED);
                            pr
                        })
                        .collect();
                    r.topics.push(t);
                }
            }
            (
                Fix::OffsetFetchTopics {
                    denied,
                    listing_all,
                },
                ResponseKind::OffsetFetch(r),
            ) => {
                if listing_all {
                    r.topics.retain(|t| a.topic(Describe, t.name.as_str()));
                }
                for (name, partitions) in denied {
                    let mut t = offset_fetch_response::OffsetFetchResponseTopic::default();
                    t.name = name;
                    t.partitions = partitions
                        .into_iter()
                        .map(|p| {
                            let mut pr =
                                offset_fetch_response::OffsetFetchResponsePartition::default();
                            pr.partition_index = p;
                            pr.committed_offset = -1;
                            pr.committed_leader_epoch = -1;
                            pr.error_code = code(TOPIC_DENIED);
                            pr
                        })
                        .collect();
                    r.topics.push(t);
                }
            }
            (Fix::OffsetFetchGroups(denied), ResponseKind::OffsetFetch(r)) => {
                for g in &mut r.groups {
                    g.topics.retain(|t| a.topic(Describe, t.name.as_str()));
                }
                for group_id in denied {
                    let mut g = offset_fetch_response::OffsetFetchResponseGroup::default();
                    g.group_id = group_id;
                    g.error_code = code(GROUP_DENIED);
                    r.groups.push(g);
                }
            }
            (Fix::DescribeGroups { denied, ops }, ResponseKind::DescribeGroups(r)) => {
                for group_id in denied {
                    let mut g = describe_groups_response::DescribedGroup::default();
                    g.group_id = group_id;
                    g.error_code = code(GROUP_DENIED);
                    g.authorized_operations = i32::MIN;
                    r.groups.push(g);
                }
                if ops {
                    for g in &mut r.groups {
                        if g.error_code == 0 {
                            g.authorized_operations =
                                a.operations(ResourceType::Group, g.group_id.as_str());
                        }
                    }
                }
            }
            (Fix::ListGroups, ResponseKind::ListGroups(r)) => {
                if !a.may(Describe, ResourceType::Cluster, CLUSTER) {
                    r.groups
                        .retain(|g| a.may(Describe, ResourceType::Group, g.group_id.as_str()));
                }
            }
            (Fix::DeleteGroups(denied), ResponseKind::DeleteGroups(r)) => {
                for group_id in denied {
                    let mut g = delete_groups_response::DeletableGroupResult::default();
                    g.group_id = group_id;
                    g.error_code = code(GROUP_DENIED);
                    r.results.push(g);
                }
            }
            (Fix::DescribeConfigs(denied), ResponseKind::DescribeConfigs(r)) => {
                for (rt, name) in denied {
                    let mut res = describe_configs_response::DescribeConfigsResult::default();
                    res.resource_type = rt;
                    res.resource_name = super::str_bytes(name);
                    res.error_code = code(config_denied(rt));
                    r.results.push(res);
                }
            }
            (Fix::AlterConfigs(denied), ResponseKind::AlterConfigs(r)) => {
                for (rt, name) in denied {
                    let mut res = alter_configs_response::AlterConfigsResourceResponse::default();
                    res.resource_type = rt;
                    res.resource_name = super::str_bytes(name);
                    res.error_code = code(config_denied(rt));
                    r.responses.push(res);
                }
            }
            (Fix::IncrementalAlterConfigs(denied), ResponseKind::IncrementalAlterConfigs(r)) => {
                for (rt, name) in denied {
                    let mut res =
                        incremental_alter_configs_response::AlterConfigsResourceResponse::default();
                    res.resource_type = rt;
                    res.resource_name = super::str_bytes(name);
                    res.error_code = code(config_denied(rt));
                    r.responses.push(res);
                }
            }
            (Fix::DescribeCluster(ops), ResponseKind::DescribeCluster(r)) => {
                if ops {
                    r.cluster_authorized_operations = a.cluster_operations();
                }
            }
            (Fix::ListTransactions, ResponseKind::ListTransactions(r)) => {
                r.transaction_states.retain(|t| {
                    a.may(
                        Describe,
                        ResourceType::TransactionalId,
                        t.transactional_id.as_str(),
                    )
                });
            }
            (fix, resp) => {
                tracing::error!(
                    fix = ?std::mem::discriminant(&fix),
                    response = ?std::mem::discriminant(resp),
                    "an ACL fix for another response type"
                );
            }
        }
    }
}

fn config_denied(resource_type: i8) -> ResponseError {
    if resource_type == CONFIG_BROKER {
        CLUSTER_DENIED
    } else {
        TOPIC_DENIED
    }
}
