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

use super::services::Admin;
use super::{error_code, str_bytes};
use crate::cluster::topics::{NewTopic, Topic, TopicError, validate_topic_name};
use crate::view::ClusterView;
use sluice_protocol::versions;

pub fn api_versions() -> ApiVersionsResponse {
    versions::api_versions_response()
}

pub async fn metadata(
    b: &Admin<'_>,
    listener: &str,
    req: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let view = b.views.current();
    let mut resp = MetadataResponse::default();
    resp.brokers = view
        .advertised_brokers(listener)
        .map(|x| {
            let mut broker = MetadataResponseBroker::default();
            broker.node_id = BrokerId(x.id);
            broker.host = str_bytes(x.host);
            broker.port = x.port;
            broker
        })
        .collect();
    resp.cluster_id = Some(str_bytes(view.cluster_id()));
    resp.controller_id = BrokerId(b.quorum.controller_id().unwrap_or(-1));

    // v0: an empty list means all topics; v1+: null means all.
    let wanted = match req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(t),
    };
    let Some(wanted) = wanted else {
        resp.topics = view.topics.values().map(|t| describe(&view, t)).collect();
        return resp;
    };
    // Before v4 there is no flag and Kafka auto-creates whenever enabled.
    let allow_create =
        b.settings.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
    for t in wanted {
        let name = match (&t.name, t.topic_id.is_nil()) {
            (Some(n), _) => n.0.to_string(),
            (None, false) => match view.topics.values().find(|x| x.meta.id == t.topic_id) {
                Some(found) => {
                    resp.topics.push(describe(&view, found));
                    continue;
                }
                None => {
                    let mut r = MetadataResponseTopic::default();
                    r.topic_id = t.topic_id;
                    r.error_code = error_code(b.metrics, ResponseError::UnknownTopicId);
                    resp.topics.push(r);
                    continue;
                }
            },
            (None, true) => String::new(),
        };
        if let Some(topic) = view.topic(&name) {
            resp.topics.push(describe(&view, topic));
            continue;
        }
        let mut r = MetadataResponseTopic::default();
        r.name = Some(TopicName(str_bytes(name.clone())));
        if let Err(e) = validate_topic_name(&name) {
            tracing::debug!(topic = %name, error = %e, "metadata for invalid topic name");
            r.error_code = error_code(b.metrics, ResponseError::InvalidTopicException);
            resp.topics.push(r);
            continue;
        }
        if !allow_create {
            r.error_code = error_code(b.metrics, ResponseError::UnknownTopicOrPartition);
            resp.topics.push(r);
            continue;
        }
        let created = b
            .topics
            .create(
                NewTopic {
                    name: name.clone(),
                    partitions: b.settings.default_partitions,
                    replication_factor: 1,
                    assignment: vec![],
                    configs: BTreeMap::new(),
                },
                &view.broker_ids(),
            )
            .await;
        let created = match created {
            Ok(index) => super::committed(b.views, index).await,
            Err(e) => Err(e),
        };
        match created {
            Ok(now) => match now.topic(&name) {
                Some(topic) => {
                    tracing::info!(topic = %name, partitions = topic.partitions.len(), "auto-created topic");
                    resp.topics.push(describe(&now, topic));
                }
                None => {
                    r.error_code = error_code(b.metrics, ResponseError::LeaderNotAvailable);
                    resp.topics.push(r);
                }
            },
            // Another connection created it between our check and now:
            // clients retry on LEADER_NOT_AVAILABLE.
            Err(TopicError::AlreadyExists(_)) => {
                r.error_code = error_code(b.metrics, ResponseError::LeaderNotAvailable);
                resp.topics.push(r);
            }
            Err(e) => {
                tracing::warn!(topic = %name, error = %e, "auto-create failed");
                r.error_code = error_code(
                    b.metrics,
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

fn describe(view: &ClusterView, t: &Topic) -> MetadataResponseTopic {
    let mut r = MetadataResponseTopic::default();
    r.name = Some(TopicName(str_bytes(t.meta.name.clone())));
    r.topic_id = t.meta.id;
    r.is_internal = crate::broker::is_internal_topic(&t.meta.name);
    r.partitions = t
        .meta
        .partitions
        .iter()
        .enumerate()
        .map(|(i, state)| {
            let mut p = MetadataResponsePartition::default();
            p.partition_index = i as i32;
            let leader = view.advertised_leader(state);
            p.leader_id = BrokerId(leader);
            p.leader_epoch = state.leader_epoch;
            p.replica_nodes = state.replicas.iter().map(|&id| BrokerId(id)).collect();
            p.isr_nodes = state.isr.iter().map(|&id| BrokerId(id)).collect();
            if leader < 0 {
                p.error_code = ResponseError::LeaderNotAvailable.code();
            }
            p
        })
        .collect();
    r
}

pub fn describe_cluster(
    b: &Admin<'_>,
    listener: &str,
    _req: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let view = b.views.current();
    let mut r = DescribeClusterResponse::default();
    r.cluster_id = str_bytes(view.cluster_id());
    r.controller_id = BrokerId(b.quorum.controller_id().unwrap_or(-1));
    r.endpoint_type = 1;
    r.brokers = view
        .advertised_brokers(listener)
        .map(|x| {
            let mut broker = DescribeClusterBroker::default();
            broker.broker_id = BrokerId(x.id);
            broker.host = str_bytes(x.host);
            broker.port = x.port;
            broker
        })
        .collect();
    r
}
