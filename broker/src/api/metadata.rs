//! ApiVersions, Metadata (with auto-create) and DescribeCluster.

use std::collections::BTreeMap;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersionsResponse;
use kafka_protocol::messages::describe_cluster_response::{
    DescribeClusterBroker, DescribeClusterResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, MetadataRequest, TopicName};

use super::{error_code, str_bytes};
use crate::broker::Broker;
use crate::cluster::topics::{NewTopic, Topic, TopicError, validate_topic_name};
use crate::protocol::versions;

pub fn api_versions() -> ApiVersionsResponse {
    versions::api_versions_response()
}

pub async fn metadata(b: &Broker, req: MetadataRequest, version: i16) -> MetadataResponse {
    let mut resp = MetadataResponse::default();
    let mut broker = MetadataResponseBroker::default();
    broker.node_id = BrokerId(b.node_id);
    broker.host = str_bytes(b.advertised_host.clone());
    broker.port = b.advertised_port;
    resp.brokers = vec![broker];
    resp.cluster_id = Some(str_bytes(b.cluster_id.clone()));
    resp.controller_id = BrokerId(b.node_id);

    // v0: an empty list means all topics; v1+: null means all.
    let wanted = match req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(t),
    };
    let Some(wanted) = wanted else {
        resp.topics = b.topics.all().iter().map(|t| describe(t)).collect();
        return resp;
    };
    // Before v4 there is no flag and Kafka auto-creates whenever enabled.
    let allow_create = b.args.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
    for t in wanted {
        let name = match (&t.name, t.topic_id.is_nil()) {
            (Some(n), _) => n.0.to_string(),
            (None, false) => match b.topics.all().into_iter().find(|x| x.meta.id == t.topic_id) {
                Some(found) => {
                    resp.topics.push(describe(&found));
                    continue;
                }
                None => {
                    let mut r = MetadataResponseTopic::default();
                    r.topic_id = t.topic_id;
                    r.error_code = error_code(b, ResponseError::UnknownTopicId);
                    resp.topics.push(r);
                    continue;
                }
            },
            (None, true) => String::new(),
        };
        if let Some(topic) = b.topics.get(&name) {
            resp.topics.push(describe(&topic));
            continue;
        }
        let mut r = MetadataResponseTopic::default();
        r.name = Some(TopicName(str_bytes(name.clone())));
        if let Err(e) = validate_topic_name(&name) {
            tracing::debug!(topic = %name, error = %e, "metadata for invalid topic name");
            r.error_code = error_code(b, ResponseError::InvalidTopicException);
            resp.topics.push(r);
            continue;
        }
        if !allow_create {
            r.error_code = error_code(b, ResponseError::UnknownTopicOrPartition);
            resp.topics.push(r);
            continue;
        }
        let created = b
            .topics
            .create(
                NewTopic {
                    name: name.clone(),
                    partitions: b.args.default_partitions,
                    replication_factor: 1,
                    assignment: vec![],
                    configs: BTreeMap::new(),
                },
                &b.broker_ids(),
            )
            .await;
        match created {
            Ok(topic) => {
                tracing::info!(topic = %name, partitions = topic.partitions.len(), "auto-created topic");
                resp.topics.push(describe(&topic));
            }
            // Another connection created it between our check and now.
            Err(TopicError::AlreadyExists(_)) => match b.topics.get(&name) {
                Some(topic) => resp.topics.push(describe(&topic)),
                None => {
                    r.error_code = error_code(b, ResponseError::LeaderNotAvailable);
                    resp.topics.push(r);
                }
            },
            Err(e) => {
                tracing::warn!(topic = %name, error = %e, "auto-create failed");
                r.error_code = error_code(
                    b,
                    match e {
                        TopicError::InvalidName(_) => ResponseError::InvalidTopicException,
                        _ => ResponseError::LeaderNotAvailable,
                    },
                );
                resp.topics.push(r);
            }
        }
    }
    resp
}

fn describe(t: &Topic) -> MetadataResponseTopic {
    let mut r = MetadataResponseTopic::default();
    r.name = Some(TopicName(str_bytes(t.meta.name.clone())));
    r.topic_id = t.meta.id;
    r.is_internal = crate::broker::is_internal_topic(&t.meta.name);
    r.partitions = t
        .meta
        .replicas
        .iter()
        .enumerate()
        .map(|(i, replicas)| {
            let mut p = MetadataResponsePartition::default();
            p.partition_index = i as i32;
            p.leader_id = BrokerId(replicas.first().copied().unwrap_or(-1));
            p.leader_epoch = 0;
            p.replica_nodes = replicas.iter().map(|&id| BrokerId(id)).collect();
            p.isr_nodes = p.replica_nodes.clone();
            p
        })
        .collect();
    r
}

pub fn describe_cluster(b: &Broker, _req: DescribeClusterRequest) -> DescribeClusterResponse {
    let mut r = DescribeClusterResponse::default();
    r.cluster_id = str_bytes(b.cluster_id.clone());
    r.controller_id = BrokerId(b.node_id);
    r.endpoint_type = 1;
    let mut broker = DescribeClusterBroker::default();
    broker.broker_id = BrokerId(b.node_id);
    broker.host = str_bytes(b.advertised_host.clone());
    broker.port = b.advertised_port;
    r.brokers = vec![broker];
    r
}
