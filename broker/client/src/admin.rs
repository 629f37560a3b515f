//! Topic administration over the Kafka protocol, as an admin client does
//! it: the cluster's metadata, topic configs, and creating, growing,
//! reconfiguring and deleting topics. One [`Admin`] is one connection to
//! one broker (any broker answers these: metadata from its view, writes
//! forwarded to the controller). Used by the operator and the CLI.

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::ResponseError;
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
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
    MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::{Request, StrBytes};

use crate::{ClientError, Connection, Transport};

/// How long one admin request may take (topic creation waits for the
/// controller to commit it).
pub const TIMEOUT: Duration = Duration::from_secs(30);
const RESOURCE_TOPIC: i8 = 2;
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

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
}

impl Admin {
    /// Connects to one broker (`host:port`).
    pub async fn open(
        bootstrap: &str,
        client_id: &str,
        transport: &Transport,
    ) -> Result<Admin, AdminError> {
        let conn = Connection::open(bootstrap, client_id, TIMEOUT, transport).await?;
        Ok(Admin { conn })
    }

    pub fn addr(&self) -> &str {
        self.conn.addr()
    }

    /// The connection, for requests this module does not wrap.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    async fn call<R: Request>(&self, version: i16, request: &R) -> Result<R::Response, AdminError> {
        Ok(self.conn.send(request, version, TIMEOUT).await?)
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

    /// Creates a topic (`validate_only`: checks it without creating it).
    pub async fn create_topic(
        &self,
        topic: &NewTopic,
        validate_only: bool,
    ) -> Result<(), AdminError> {
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
        for t in &resp.topics {
            check(
                || format!("creating topic {}", topic.name),
                t.error_code,
                t.error_message.as_ref(),
            )?;
        }
        Ok(())
    }

    /// Grows a topic to `total` partitions; `assignment` (empty: the
    /// broker chooses) covers the new ones.
    pub async fn create_partitions(
        &self,
        name: &str,
        total: i32,
        assignment: &[Vec<i32>],
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
