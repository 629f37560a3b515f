//! Topic administration over the Kafka protocol, as an admin client does
//! it: the cluster's metadata, topic configs, and creating, growing,
//! reconfiguring and deleting topics, and moving their replicas
//! (partition reassignments, KIP-455). One [`Admin`] is one connection to
//! one broker (any broker answers these: metadata from its view, writes
//! forwarded to the controller). Used by the operator and the CLI.

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsAssignment, CreatePartitionsTopic,
};
use kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::list_partition_reassignments_request::ListPartitionReassignmentsTopics;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    ConsumerProtocolAssignment, CreatePartitionsRequest, CreatePartitionsResponse,
    CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    DescribeConfigsRequest, DescribeConfigsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    DescribeQuorumRequest, DescribeQuorumResponse, FindCoordinatorRequest, FindCoordinatorResponse,
    GroupId, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, ListGroupsRequest,
    ListGroupsResponse, ListOffsetsRequest, ListOffsetsResponse, ListPartitionReassignmentsRequest,
    ListPartitionReassignmentsResponse, MetadataRequest, MetadataResponse, OffsetFetchRequest,
    OffsetFetchResponse, TopicName,
};
use kafka_protocol::messages::{
    RemoveRaftVoterRequest, RemoveRaftVoterResponse, UnregisterBrokerRequest,
    UnregisterBrokerResponse,
};
use kafka_protocol::protocol::{Decodable, Request, StrBytes};

use crate::{ClientError, Connection, Transport};

/// The `timeout_ms` admin requests give the broker (topic creation waits
/// for the controller to commit it).
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// How long the client waits for an answer: longer than `TIMEOUT`, so that
/// a broker that uses all of it still answers (with its own error) before
/// the client gives up not knowing the outcome.
const ANSWER_WAIT: Duration = Duration::from_secs(65);
/// How long `describe_group` keeps asking while the group's coordinator
/// moves or loads (as Kafka's admin client retries).
const COORDINATOR_WAIT: Duration = Duration::from_secs(30);
const RESOURCE_TOPIC: i8 = 2;
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

/// The moves that give every partition of `view` (internal topics too)
/// the cluster's placement over `brokers`: replica j of partition i on
/// broker (i + j) mod n of the sorted list, the replication factor kept
/// (at most n). Partitions already placed so are left alone. For a
/// cluster with no move under way (a moving partition lists more
/// replicas than its replication factor).
pub fn placement_moves(
    view: &ClusterView,
    brokers: &[i32],
) -> Result<Vec<PartitionMove>, sluice_placement::PlacementError> {
    let mut moves = Vec::new();
    for t in &view.topics {
        let Some(rf) = t.partitions.iter().map(|p| p.replicas.len()).min() else {
            continue;
        };
        let target =
            sluice_placement::assign(brokers, 0, t.partitions.len(), rf.min(brokers.len()))?;
        for (p, want) in t.partitions.iter().zip(target) {
            if p.replicas != want {
                moves.push(PartitionMove {
                    topic: t.name.clone(),
                    partition: p.index,
                    target: Some(want),
                });
            }
        }
    }
    Ok(moves)
}

/// A partition to move onto `target` replicas (preferred leader first),
/// or with `None` whose move to cancel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMove {
    pub topic: String,
    pub partition: i32,
    pub target: Option<Vec<i32>>,
}

/// A partition's move under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassignment {
    pub topic: String,
    pub partition: i32,
    /// Target replicas, then those being removed.
    pub replicas: Vec<i32>,
    pub adding: Vec<i32>,
    pub removing: Vec<i32>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The broker refused: `what` failed with Kafka error `code`.
    #[error("{what}: {}{}", error_name(*.code), .message.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    Broker {
        what: String,
        code: i16,
        message: Option<String>,
    },
}

impl AdminError {
    /// The Kafka error code the broker answered with, if it answered.
    pub fn code(&self) -> Option<i16> {
        match self {
            AdminError::Broker { code, .. } => Some(*code),
            AdminError::Client(_) => None,
        }
    }
}

/// A Kafka error code by its name (`UNKNOWN_TOPIC_OR_PARTITION`, ...).
pub fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None | Some(ResponseError::Unknown(_)) => format!("error {code}"),
        Some(e) => {
            // The enum's names in Kafka's SCREAMING_SNAKE_CASE.
            let camel = format!("{e:?}");
            let mut out = String::with_capacity(camel.len() + 8);
            for (i, c) in camel.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    out.push('_');
                }
                out.push(c.to_ascii_uppercase());
            }
            out
        }
    }
}

/// A broker's answer for `what`: an error unless `code` is 0.
fn check(
    what: impl FnOnce() -> String,
    code: i16,
    message: Option<&StrBytes>,
) -> Result<(), AdminError> {
    if code == 0 {
        return Ok(());
    }
    Err(AdminError::Broker {
        what: what(),
        code,
        message: message.map(|m| m.to_string()),
    })
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn topic_name(name: &str) -> TopicName {
    TopicName(str_bytes(name))
}

/// The cluster as one broker's metadata shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    pub cluster_id: Option<String>,
    /// -1 when no controller is known.
    pub controller_id: i32,
    /// Sorted by id.
    pub brokers: Vec<BrokerView>,
    /// Sorted by name.
    pub topics: Vec<TopicView>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerView {
    pub id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicView {
    pub name: String,
    pub internal: bool,
    /// Sorted by index.
    pub partitions: Vec<PartitionView>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionView {
    pub index: i32,
    /// -1 when the partition has no leader.
    pub leader: i32,
    pub leader_epoch: i32,
    /// Preferred leader first.
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub offline: Vec<i32>,
    /// Kafka error code of the partition (0: none), e.g. LEADER_NOT_AVAILABLE.
    pub error_code: i16,
}

impl PartitionView {
    pub fn under_replicated(&self) -> bool {
        self.isr.len() < self.replicas.len()
    }
}

/// One config entry of a topic, as DescribeConfigs gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    pub value: Option<String>,
    /// Set on the topic itself (as opposed to a broker or built-in default).
    pub is_override: bool,
    pub read_only: bool,
    pub sensitive: bool,
}

/// DescribeConfigs `config_source` of a per-topic override.
const SOURCE_DYNAMIC_TOPIC: i8 = 1;

/// The controller quorum, as its leader describes it (DescribeQuorum).
/// Offsets are the metadata log's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumView {
    pub leader: i32,
    pub epoch: i32,
    pub high_watermark: i64,
    pub voters: Vec<QuorumMember>,
    /// Members that replicate the log without voting.
    pub observers: Vec<QuorumMember>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumMember {
    pub id: i32,
    /// -1 when the leader does not know it.
    pub log_end: i64,
    /// When it last had the leader's whole log (ms since the epoch), -1
    /// when unknown.
    pub last_caught_up_ms: i64,
}

/// A topic to create.
#[derive(Debug, Clone, Default)]
pub struct NewTopic {
    pub name: String,
    /// Either a count and a replication factor (-1: the broker's defaults)
    /// or an explicit assignment (partition `i` gets `assignment[i]`,
    /// preferred leader first).
    pub partitions: i32,
    pub replication_factor: i16,
    pub assignment: Vec<Vec<i32>>,
    pub configs: BTreeMap<String, String>,
}

pub struct Admin {
    conn: Connection,
    /// For connections to other brokers (group coordinators, leaders).
    client_id: String,
    transport: Transport,
    sasl: Option<crate::sasl::Credentials>,
}

/// A group as ListGroups lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    /// `consumer` for Kafka consumers, empty for a group that only
    /// commits offsets.
    pub protocol_type: String,
    /// Stable, PreparingRebalance, CompletingRebalance, Empty, Dead.
    pub state: String,
}

/// Every broker's groups; brokers that could not be asked are named.
#[derive(Debug, Clone, Default)]
pub struct GroupListings {
    /// Sorted by id.
    pub groups: Vec<GroupListing>,
    /// (broker id, why) for each broker that did not answer.
    pub unanswered: Vec<(i32, String)>,
}

/// A consumer group: members, what each is assigned, and per partition
/// the committed offset, the log end and the lag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    pub state: String,
    pub protocol_type: String,
    /// The assignor (`range`, `cooperative-sticky`, ...).
    pub protocol: String,
    pub coordinator: i32,
    pub members: Vec<GroupMember>,
    /// Sorted by topic and partition.
    pub partitions: Vec<PartitionLag>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// (topic, partitions) from the consumer protocol's assignment.
    pub assignment: Vec<(String, Vec<i32>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// None when the group committed nothing for the partition.
    pub committed: Option<i64>,
    /// The partition's high watermark (what a read_uncommitted consumer
    /// can reach); None when its leader could not be asked.
    pub log_end: Option<i64>,
    /// The member it is assigned to, if any.
    pub member_id: Option<String>,
}

impl PartitionLag {
    /// Records between the committed offset and the log end.
    pub fn lag(&self) -> Option<i64> {
        Some((self.log_end? - self.committed?).max(0))
    }
}

impl Admin {
    /// Connects to one broker (`host:port`).
    pub async fn open(
        bootstrap: &str,
        client_id: &str,
        transport: &Transport,
    ) -> Result<Admin, AdminError> {
        let conn = Connection::open(bootstrap, client_id, TIMEOUT, transport).await?;
        Ok(Admin {
            conn,
            client_id: client_id.to_string(),
            transport: transport.clone(),
            sasl: None,
        })
    }

    /// Logs the connection in (a SASL listener), and every connection it
    /// opens to other brokers later.
    pub async fn login(&mut self, credentials: crate::sasl::Credentials) -> Result<(), AdminError> {
        crate::sasl::authenticate(&self.conn, &credentials, TIMEOUT)
            .await
            .map_err(|e| match e {
                crate::sasl::SaslError::Client(c) => AdminError::Client(c),
                crate::sasl::SaslError::Refused {
                    what,
                    code,
                    message,
                } => AdminError::Broker {
                    what,
                    code,
                    message,
                },
                crate::sasl::SaslError::Scram(m) => AdminError::Broker {
                    what: "SASL login".to_string(),
                    code: ResponseError::SaslAuthenticationFailed.code(),
                    message: Some(m),
                },
            })?;
        self.sasl = Some(credentials);
        Ok(())
    }

    /// Another broker, over the same transport, logged in the same way.
    async fn broker(&self, host: &str, port: i32) -> Result<Admin, AdminError> {
        let mut admin =
            Admin::open(&format!("{host}:{port}"), &self.client_id, &self.transport).await?;
        if let Some(c) = &self.sasl {
            admin.login(c.clone()).await?;
        }
        Ok(admin)
    }

    pub fn addr(&self) -> &str {
        self.conn.addr()
    }

    /// The connection, for requests this module does not wrap.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    async fn call<R: Request>(&self, version: i16, request: &R) -> Result<R::Response, AdminError> {
        Ok(self.conn.send(request, version, ANSWER_WAIT).await?)
    }

    /// Brokers, controller and topics (`topics`: those, or every topic for
    /// `None`). Topics that do not exist are left out.
    pub async fn cluster(&self, topics: Option<&[&str]>) -> Result<ClusterView, AdminError> {
        let mut req = MetadataRequest::default();
        req.topics = topics.map(|names| {
            names
                .iter()
                .map(|n| {
                    let mut t = MetadataRequestTopic::default();
                    t.name = Some(topic_name(n));
                    t
                })
                .collect()
        });
        req.allow_auto_topic_creation = false;
        let resp: MetadataResponse = self.call(9, &req).await?;
        let mut brokers: Vec<BrokerView> = resp
            .brokers
            .iter()
            .map(|b| BrokerView {
                id: b.node_id.0,
                host: b.host.to_string(),
                port: b.port,
                rack: b.rack.as_ref().map(|r| r.to_string()),
            })
            .collect();
        brokers.sort_by_key(|b| b.id);
        let mut views = Vec::new();
        for t in &resp.topics {
            let name = t.name.as_ref().map(|n| n.to_string()).unwrap_or_default();
            if t.error_code == ResponseError::UnknownTopicOrPartition.code() {
                continue;
            }
            check(|| format!("metadata of topic {name}"), t.error_code, None)?;
            let mut partitions: Vec<PartitionView> = t
                .partitions
                .iter()
                .map(|p| PartitionView {
                    index: p.partition_index,
                    leader: p.leader_id.0,
                    leader_epoch: p.leader_epoch,
                    replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                    isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                    offline: p.offline_replicas.iter().map(|b| b.0).collect(),
                    error_code: p.error_code,
                })
                .collect();
            partitions.sort_by_key(|p| p.index);
            views.push(TopicView {
                name,
                internal: t.is_internal,
                partitions,
            });
        }
        views.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ClusterView {
            cluster_id: resp.cluster_id.as_ref().map(|c| c.to_string()),
            controller_id: resp.controller_id.0,
            brokers,
            topics: views,
        })
    }

    /// The controller quorum (any broker forwards the request to its
    /// leader).
    pub async fn quorum(&self) -> Result<QuorumView, AdminError> {
        use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
        let mut partition = PartitionData::default();
        partition.partition_index = 0;
        let mut topic = TopicData::default();
        topic.topic_name = topic_name("__cluster_metadata");
        topic.partitions = vec![partition];
        let mut req = DescribeQuorumRequest::default();
        req.topics = vec![topic];
        let resp: DescribeQuorumResponse = self.call(1, &req).await?;
        check(
            || "describing the controller quorum".to_string(),
            resp.error_code,
            resp.error_message.as_ref(),
        )?;
        let p = resp
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .next()
            .ok_or_else(|| AdminError::Broker {
                what: "describing the controller quorum".to_string(),
                code: ResponseError::UnknownServerError.code(),
                message: Some("no partition in the answer".to_string()),
            })?;
        check(
            || "describing the controller quorum".to_string(),
            p.error_code,
            p.error_message.as_ref(),
        )?;
        let members =
            |states: &[kafka_protocol::messages::describe_quorum_response::ReplicaState]| {
                states
                    .iter()
                    .map(|r| QuorumMember {
                        id: r.replica_id.0,
                        log_end: r.log_end_offset,
                        last_caught_up_ms: r.last_caught_up_timestamp,
                    })
                    .collect()
            };
        Ok(QuorumView {
            leader: p.leader_id.0,
            epoch: p.leader_epoch,
            high_watermark: p.high_watermark,
            voters: members(&p.current_voters),
            observers: members(&p.observers),
        })
    }

    /// One topic's metadata, or `None` if it does not exist.
    pub async fn topic(&self, name: &str) -> Result<Option<TopicView>, AdminError> {
        let view = self.cluster(Some(&[name])).await?;
        Ok(view.topics.into_iter().find(|t| t.name == name))
    }

    /// Every config of a topic, overrides marked.
    pub async fn topic_configs(&self, name: &str) -> Result<Vec<ConfigEntry>, AdminError> {
        let mut res = DescribeConfigsResource::default();
        res.resource_type = RESOURCE_TOPIC;
        res.resource_name = str_bytes(name);
        // Null asks for every key (an empty list would ask for none).
        res.configuration_keys = None;
        let mut req = DescribeConfigsRequest::default();
        req.resources = vec![res];
        let resp: DescribeConfigsResponse = self.call(4, &req).await?;
        let mut entries = Vec::new();
        for r in &resp.results {
            check(
                || format!("configs of topic {name}"),
                r.error_code,
                r.error_message.as_ref(),
            )?;
            entries.extend(r.configs.iter().map(|c| ConfigEntry {
                name: c.name.to_string(),
                value: c.value.as_ref().map(|v| v.to_string()),
                is_override: c.config_source == SOURCE_DYNAMIC_TOPIC,
                read_only: c.read_only,
                sensitive: c.is_sensitive,
            }));
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Creates a topic (`validate_only`: checks it without creating it);
    /// returns its partition count and replication factor as the broker
    /// chose them.
    pub async fn create_topic(
        &self,
        topic: &NewTopic,
        validate_only: bool,
    ) -> Result<(i32, i16), AdminError> {
        let mut t = CreatableTopic::default();
        t.name = topic_name(&topic.name);
        if topic.assignment.is_empty() {
            t.num_partitions = topic.partitions;
            t.replication_factor = topic.replication_factor;
        } else {
            t.num_partitions = -1;
            t.replication_factor = -1;
            t.assignments = topic
                .assignment
                .iter()
                .enumerate()
                .map(|(i, replicas)| {
                    let mut a = CreatableReplicaAssignment::default();
                    a.partition_index = i as i32;
                    a.broker_ids = replicas.iter().map(|b| BrokerId(*b)).collect();
                    a
                })
                .collect();
        }
        t.configs = topic
            .configs
            .iter()
            .map(|(k, v)| {
                let mut c = CreatableTopicConfig::default();
                c.name = str_bytes(k);
                c.value = Some(str_bytes(v));
                c
            })
            .collect();
        let mut req = CreateTopicsRequest::default();
        req.topics = vec![t];
        req.timeout_ms = TIMEOUT.as_millis() as i32;
        req.validate_only = validate_only;
        let resp: CreateTopicsResponse = self.call(5, &req).await?;
        let mut created = (-1, -1);
        for t in &resp.topics {
            check(
                || format!("creating topic {}", topic.name),
                t.error_code,
                t.error_message.as_ref(),
            )?;
            created = (t.num_partitions, t.replication_factor);
        }
        Ok(created)
    }

    /// Grows a topic to `total` partitions; `assignment` (empty: the
    /// broker chooses) covers the new ones.
    pub async fn create_partitions(
        &self,
        name: &str,
        total: i32,
        assignment: &[Vec<i32>],
        validate_only: bool,
    ) -> Result<(), AdminError> {
        let mut t = CreatePartitionsTopic::default();
        t.name = topic_name(name);
        t.count = total;
        t.assignments = (!assignment.is_empty()).then(|| {
            assignment
                .iter()
                .map(|replicas| {
                    let mut a = CreatePartitionsAssignment::default();
                    a.broker_ids = replicas.iter().map(|b| BrokerId(*b)).collect();
                    a
                })
                .collect()
        });
        let mut req = CreatePartitionsRequest::default();
        req.topics = vec![t];
        req.timeout_ms = TIMEOUT.as_millis() as i32;
        req.validate_only = validate_only;
        let resp: CreatePartitionsResponse = self.call(2, &req).await?;
        for r in &resp.results {
            check(
                || format!("adding partitions to topic {name}"),
                r.error_code,
                r.error_message.as_ref(),
            )?;
        }
        Ok(())
    }

    /// Sets `set` and deletes `delete` on a topic (IncrementalAlterConfigs:
    /// other keys are left as they are).
    pub async fn alter_topic_configs(
        &self,
        name: &str,
        set: &BTreeMap<String, String>,
        delete: &[String],
        validate_only: bool,
    ) -> Result<(), AdminError> {
        let op = |k: &str, op: i8, v: Option<&String>| {
            let mut c = AlterableConfig::default();
            c.name = str_bytes(k);
            c.config_operation = op;
            c.value = v.map(|v| str_bytes(v));
            c
        };
        let mut res = AlterConfigsResource::default();
        res.resource_type = RESOURCE_TOPIC;
        res.resource_name = str_bytes(name);
        res.configs = set
            .iter()
            .map(|(k, v)| op(k, OP_SET, Some(v)))
            .chain(delete.iter().map(|k| op(k, OP_DELETE, None)))
            .collect();
        let mut req = IncrementalAlterConfigsRequest::default();
        req.resources = vec![res];
        req.validate_only = validate_only;
        let resp: IncrementalAlterConfigsResponse = self.call(1, &req).await?;
        for r in &resp.responses {
            check(
                || format!("configs of topic {name}"),
                r.error_code,
                r.error_message.as_ref(),
            )?;
        }
        Ok(())
    }

    /// Starts moving each `(topic, partition)` onto its target replicas,
    /// or with `None` cancels its move (AlterPartitionReassignments). The
    /// broker answers once the change is committed; the move itself goes
    /// on until the new replicas are in sync (`list_reassignments`).
    /// Every partition is tried; the first refusal is the error.
    pub async fn alter_reassignments(&self, moves: &[PartitionMove]) -> Result<(), AdminError> {
        let mut topics: BTreeMap<&str, Vec<ReassignablePartition>> = BTreeMap::new();
        for m in moves {
            let mut p = ReassignablePartition::default();
            p.partition_index = m.partition;
            p.replicas = m
                .target
                .as_ref()
                .map(|t| t.iter().map(|b| BrokerId(*b)).collect());
            topics.entry(&m.topic).or_default().push(p);
        }
        let mut req = AlterPartitionReassignmentsRequest::default();
        req.timeout_ms = TIMEOUT.as_millis() as i32;
        req.topics = topics
            .into_iter()
            .map(|(name, partitions)| {
                let mut t = ReassignableTopic::default();
                t.name = topic_name(name);
                t.partitions = partitions;
                t
            })
            .collect();
        let resp: AlterPartitionReassignmentsResponse = self.call(0, &req).await?;
        check(
            || "reassigning partitions".to_string(),
            resp.error_code,
            resp.error_message.as_ref(),
        )?;
        for t in &resp.responses {
            for p in &t.partitions {
                check(
                    || format!("reassigning {}-{}", t.name.as_str(), p.partition_index),
                    p.error_code,
                    p.error_message.as_ref(),
                )?;
            }
        }
        Ok(())
    }

    /// The moves under way (all topics' with `None`).
    pub async fn list_reassignments(
        &self,
        topics: Option<&[&str]>,
    ) -> Result<Vec<Reassignment>, AdminError> {
        let mut req = ListPartitionReassignmentsRequest::default();
        req.timeout_ms = TIMEOUT.as_millis() as i32;
        if let Some(names) = topics {
            let view = self.cluster(Some(names)).await?;
            req.topics = Some(
                view.topics
                    .iter()
                    .map(|t| {
                        let mut x = ListPartitionReassignmentsTopics::default();
                        x.name = topic_name(&t.name);
                        x.partition_indexes = t.partitions.iter().map(|p| p.index).collect();
                        x
                    })
                    .collect(),
            );
        }
        let resp: ListPartitionReassignmentsResponse = self.call(0, &req).await?;
        check(
            || "listing partition reassignments".to_string(),
            resp.error_code,
            resp.error_message.as_ref(),
        )?;
        let ids = |v: &[BrokerId]| v.iter().map(|b| b.0).collect();
        Ok(resp
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(move |p| Reassignment {
                    topic: t.name.to_string(),
                    partition: p.partition_index,
                    replicas: ids(&p.replicas),
                    adding: ids(&p.adding_replicas),
                    removing: ids(&p.removing_replicas),
                })
            })
            .collect())
    }

    /// Takes broker `id` out of the controller quorum (RemoveRaftVoter);
    /// done when the change is committed.
    pub async fn remove_voter(&self, id: i32) -> Result<(), AdminError> {
        let mut req = RemoveRaftVoterRequest::default();
        req.cluster_id = None;
        req.voter_id = id;
        let resp: RemoveRaftVoterResponse = self.call(0, &req).await?;
        check(
            || format!("removing broker {id} from the controller quorum"),
            resp.error_code,
            resp.error_message.as_ref(),
        )
    }

    /// Removes a stopped broker that holds no replica from the cluster's
    /// metadata (UnregisterBroker).
    pub async fn unregister_broker(&self, id: i32) -> Result<(), AdminError> {
        let mut req = UnregisterBrokerRequest::default();
        req.broker_id = BrokerId(id);
        let resp: UnregisterBrokerResponse = self.call(0, &req).await?;
        check(
            || format!("unregistering broker {id}"),
            resp.error_code,
            resp.error_message.as_ref(),
        )
    }

    /// Deletes a topic; an unknown topic is an error (UNKNOWN_TOPIC_OR_PARTITION).
    pub async fn delete_topic(&self, name: &str) -> Result<(), AdminError> {
        let mut req = DeleteTopicsRequest::default();
        req.topic_names = vec![topic_name(name)];
        req.timeout_ms = TIMEOUT.as_millis() as i32;
        let resp: DeleteTopicsResponse = self.call(4, &req).await?;
        for r in &resp.responses {
            check(
                || format!("deleting topic {name}"),
                r.error_code,
                r.error_message.as_ref(),
            )?;
        }
        Ok(())
    }
}

impl Admin {
    /// Every group of the cluster: each broker lists the groups it
    /// coordinates, so every broker is asked (as Kafka's admin client does).
    pub async fn list_groups(&self) -> Result<GroupListings, AdminError> {
        let view = self.cluster(Some(&[])).await?;
        let mut listings = GroupListings::default();
        for b in &view.brokers {
            let answer = async {
                let admin = self.broker(&b.host, b.port).await?;
                let resp: ListGroupsResponse = admin.call(4, &ListGroupsRequest::default()).await?;
                check(
                    || format!("listing groups on broker {}", b.id),
                    resp.error_code,
                    None,
                )?;
                Ok::<_, AdminError>(resp)
            };
            match answer.await {
                Ok(resp) => listings
                    .groups
                    .extend(resp.groups.iter().map(|g| GroupListing {
                        group_id: g.group_id.to_string(),
                        protocol_type: g.protocol_type.to_string(),
                        state: g.group_state.to_string(),
                    })),
                Err(e) => listings.unanswered.push((b.id, e.to_string())),
            }
        }
        listings.groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        listings.groups.dedup_by(|a, b| a.group_id == b.group_id);
        Ok(listings)
    }

    /// One group, from its coordinator, with its lag. `None` when the group
    /// does not exist (no members and no committed offsets). While the
    /// coordinator moves or loads the group (after a failover), asks again
    /// for up to `COORDINATOR_WAIT`, as Kafka's admin client does.
    pub async fn describe_group(
        &self,
        group: &str,
    ) -> Result<Option<GroupDescription>, AdminError> {
        let retriable = [
            ResponseError::CoordinatorNotAvailable.code(),
            ResponseError::NotCoordinator.code(),
            ResponseError::CoordinatorLoadInProgress.code(),
        ];
        let deadline = tokio::time::Instant::now() + COORDINATOR_WAIT;
        loop {
            match self.describe_group_once(group).await {
                Err(AdminError::Broker { code, .. })
                    if retriable.contains(&code) && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => return other,
            }
        }
    }

    async fn describe_group_once(
        &self,
        group: &str,
    ) -> Result<Option<GroupDescription>, AdminError> {
        let mut find = FindCoordinatorRequest::default();
        find.key = str_bytes(group);
        find.key_type = 0;
        let found: FindCoordinatorResponse = self.call(3, &find).await?;
        check(
            || format!("finding the coordinator of group {group}"),
            found.error_code,
            found.error_message.as_ref(),
        )?;
        let coordinator = self.broker(&found.host, found.port).await?;

        let mut describe = DescribeGroupsRequest::default();
        describe.groups = vec![GroupId(str_bytes(group))];
        let described: DescribeGroupsResponse = coordinator.call(5, &describe).await?;
        let g = described.groups.first().ok_or_else(|| AdminError::Broker {
            what: format!("describing group {group}"),
            code: ResponseError::UnknownServerError.code(),
            message: Some("no group in the answer".to_string()),
        })?;
        check(
            || format!("describing group {group}"),
            g.error_code,
            g.error_message.as_ref(),
        )?;
        let consumer = g.protocol_type.as_str() == "consumer";
        let members: Vec<GroupMember> = g
            .members
            .iter()
            .map(|m| GroupMember {
                member_id: m.member_id.to_string(),
                group_instance_id: m.group_instance_id.as_ref().map(|i| i.to_string()),
                client_id: m.client_id.to_string(),
                client_host: m.client_host.to_string(),
                assignment: if consumer {
                    consumer_assignment(&m.member_assignment)
                } else {
                    Vec::new()
                },
            })
            .collect();

        let mut fetch = OffsetFetchRequest::default();
        fetch.group_id = GroupId(str_bytes(group));
        fetch.topics = None; // every partition the group committed
        let fetched: OffsetFetchResponse = coordinator.call(7, &fetch).await?;
        check(
            || format!("committed offsets of group {group}"),
            fetched.error_code,
            None,
        )?;
        let mut committed: BTreeMap<(String, i32), Option<i64>> = BTreeMap::new();
        for t in &fetched.topics {
            for p in &t.partitions {
                let offset =
                    (p.error_code == 0 && p.committed_offset >= 0).then_some(p.committed_offset);
                committed.insert((t.name.to_string(), p.partition_index), offset);
            }
        }
        // Assigned partitions count even before their first commit.
        for m in &members {
            for (topic, partitions) in &m.assignment {
                for p in partitions {
                    committed.entry((topic.clone(), *p)).or_insert(None);
                }
            }
        }
        if g.group_state.as_str() == "Dead" && committed.is_empty() {
            return Ok(None);
        }
        let ends = self.log_ends(committed.keys()).await?;
        let owner = |topic: &str, partition: i32| {
            members
                .iter()
                .find(|m| {
                    m.assignment
                        .iter()
                        .any(|(t, ps)| t == topic && ps.contains(&partition))
                })
                .map(|m| m.member_id.clone())
        };
        let partitions = committed
            .into_iter()
            .map(|((topic, partition), committed)| PartitionLag {
                log_end: ends.get(&(topic.clone(), partition)).copied(),
                member_id: owner(&topic, partition),
                topic,
                partition,
                committed,
            })
            .collect();
        Ok(Some(GroupDescription {
            group_id: group.to_string(),
            state: g.group_state.to_string(),
            protocol_type: g.protocol_type.to_string(),
            protocol: g.protocol_data.to_string(),
            coordinator: found.node_id.0,
            members,
            partitions,
        }))
    }

    /// The high watermark of each partition, asked of its leader;
    /// partitions whose leader is unknown or unreachable are left out.
    async fn log_ends<'a>(
        &self,
        partitions: impl Iterator<Item = &'a (String, i32)>,
    ) -> Result<BTreeMap<(String, i32), i64>, AdminError> {
        let wanted: Vec<&(String, i32)> = partitions.collect();
        let mut topics: Vec<&str> = wanted.iter().map(|(t, _)| t.as_str()).collect();
        topics.dedup();
        let view = self.cluster(Some(&topics)).await?;
        // leader -> topic -> partitions
        let mut by_leader: BTreeMap<i32, BTreeMap<&str, Vec<i32>>> = BTreeMap::new();
        for (topic, partition) in &wanted {
            let leader = view
                .topics
                .iter()
                .find(|t| &t.name == topic)
                .and_then(|t| t.partitions.iter().find(|p| p.index == *partition))
                .map(|p| p.leader);
            if let Some(leader) = leader.filter(|l| *l >= 0) {
                by_leader
                    .entry(leader)
                    .or_default()
                    .entry(topic.as_str())
                    .or_default()
                    .push(*partition);
            }
        }
        let mut ends = BTreeMap::new();
        for (leader, topics) in by_leader {
            let Some(b) = view.brokers.iter().find(|b| b.id == leader) else {
                continue;
            };
            let Ok(admin) = self.broker(&b.host, b.port).await else {
                continue;
            };
            let mut req = ListOffsetsRequest::default();
            req.replica_id = BrokerId(-1);
            req.topics = topics
                .iter()
                .map(|(topic, partitions)| {
                    let mut t = ListOffsetsTopic::default();
                    t.name = topic_name(topic);
                    t.partitions = partitions
                        .iter()
                        .map(|p| {
                            let mut lp = ListOffsetsPartition::default();
                            lp.partition_index = *p;
                            lp.current_leader_epoch = -1;
                            lp.timestamp = -1; // latest
                            lp
                        })
                        .collect();
                    t
                })
                .collect();
            let Ok(resp) = admin.call::<ListOffsetsRequest>(5, &req).await else {
                continue;
            };
            let resp: ListOffsetsResponse = resp;
            for t in &resp.topics {
                for p in t.partitions.iter().filter(|p| p.error_code == 0) {
                    ends.insert((t.name.to_string(), p.partition_index), p.offset);
                }
            }
        }
        Ok(ends)
    }
}

/// A consumer-protocol assignment (version, then the struct), as
/// (topic, partitions); empty when it cannot be read.
fn consumer_assignment(bytes: &bytes::Bytes) -> Vec<(String, Vec<i32>)> {
    use bytes::Buf;
    let mut buf = bytes.clone();
    if buf.remaining() < 2 {
        return Vec::new();
    }
    let version = buf.get_i16();
    match ConsumerProtocolAssignment::decode(&mut buf, version.clamp(0, 3)) {
        Ok(a) => a
            .assigned_partitions
            .iter()
            .map(|tp| (tp.topic.to_string(), tp.partitions.clone()))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_are_kafkas() {
        assert_eq!(
            error_name(ResponseError::UnknownTopicOrPartition.code()),
            "UNKNOWN_TOPIC_OR_PARTITION"
        );
        assert_eq!(
            error_name(ResponseError::TopicAlreadyExists.code()),
            "TOPIC_ALREADY_EXISTS"
        );
        assert_eq!(error_name(-12345), "error -12345");
    }
}
