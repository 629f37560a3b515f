//! CreateTopics, DeleteTopics and CreatePartitions. Every topic named in a
//! request gets its own result entry, success or not.

use std::collections::{BTreeMap, HashMap};

use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_partitions_response::{
    CreatePartitionsResponse, CreatePartitionsTopicResult,
};
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult, CreateTopicsResponse,
};
use kafka_protocol::messages::delete_topics_response::{
    DeletableTopicResult, DeleteTopicsResponse,
};
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, TopicName,
};

use super::services::Admin;
use super::{error_code, str_bytes};
use crate::cluster::topics::{NewTopic, TopicError};
use sluice_metadata::topic_config;

pub(crate) fn topic_error(e: &TopicError) -> ResponseError {
    match e {
        TopicError::AlreadyExists(_) => ResponseError::TopicAlreadyExists,
        TopicError::Unknown(_) => ResponseError::UnknownTopicOrPartition,
        TopicError::InvalidName(_) => ResponseError::InvalidTopicException,
        TopicError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        TopicError::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
        TopicError::InvalidReplicaAssignment(_) => ResponseError::InvalidReplicaAssignment,
        TopicError::InvalidConfig(_) => ResponseError::InvalidConfig,
        TopicError::InUse(_) => ResponseError::PolicyViolation,
        TopicError::Controller(_) => ResponseError::RequestTimedOut,
        TopicError::Io(_) => ResponseError::KafkaStorageError,
    }
}

pub async fn create_topics(
    b: &Admin<'_>,
    req: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut resp = CreateTopicsResponse::default();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for t in &req.topics {
        *counts.entry(t.name.0.to_string()).or_default() += 1;
    }
    let brokers = b.views.current().broker_ids();
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut r = CreatableTopicResult::default();
        r.name = t.name.clone();
        r.num_partitions = -1;
        r.replication_factor = -1;
        let fail = |r: &mut CreatableTopicResult, code: ResponseError, msg: String| {
            r.error_code = error_code(b.metrics, code);
            r.error_message = Some(str_bytes(msg));
        };
        if counts.get(&name).copied().unwrap_or(0) > 1 {
            fail(
                &mut r,
                ResponseError::InvalidRequest,
                format!("topic '{name}' appears more than once in the request"),
            );
            resp.topics.push(r);
            continue;
        }
        let mut assignment: Vec<(i32, Vec<i32>)> = t
            .assignments
            .iter()
            .map(|a| {
                (
                    a.partition_index,
                    a.broker_ids.iter().map(|id| id.0).collect(),
                )
            })
            .collect();
        assignment.sort_by_key(|(p, _)| *p);
        if !assignment.is_empty() {
            let contiguous = assignment
                .iter()
                .enumerate()
                .all(|(i, (p, _))| *p == i as i32);
            if !contiguous || t.num_partitions != -1 || t.replication_factor != -1 {
                fail(
                    &mut r,
                    ResponseError::InvalidRequest,
                    "a replica assignment must cover partitions 0..n-1 and leave num_partitions and replication_factor at -1".into(),
                );
                resp.topics.push(r);
                continue;
            }
        }
        let configs: BTreeMap<String, String> = t
            .configs
            .iter()
            .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
            .collect();
        let new = NewTopic {
            name: name.clone(),
            partitions: if t.num_partitions == -1 {
                b.settings.default_partitions
            } else {
                t.num_partitions
            },
            replication_factor: if t.replication_factor == -1 {
                1
            } else {
                t.replication_factor
            },
            assignment: assignment.into_iter().map(|(_, r)| r).collect(),
            configs: configs.clone(),
        };
        if let Err(msg) = super::check_plugin_bindings(b.plugins, &configs) {
            fail(&mut r, ResponseError::InvalidConfig, msg);
            resp.topics.push(r);
            continue;
        }
        let outcome = if req.validate_only {
            b.topics
                .check_new(&new, &brokers)
                .map(|replicas| (replicas, uuid::Uuid::nil()))
        } else {
            match b.topics.create(new, &brokers).await {
                Ok(index) => super::committed(b.views, index).await.and_then(|view| {
                    view.image
                        .topics
                        .get(&name)
                        .map(|t| (t.replica_lists(), t.id))
                        .ok_or_else(|| TopicError::Unknown(name.clone()))
                }),
                Err(e) => Err(e),
            }
        };
        match outcome {
            Ok((replicas, id)) => {
                if !req.validate_only {
                    tracing::info!(topic = %name, partitions = replicas.len(), "created topic");
                }
                r.topic_id = id;
                r.num_partitions = replicas.len() as i32;
                r.replication_factor = replicas.first().map_or(0, Vec::len) as i16;
                if version >= 5 {
                    r.configs = Some(
                        topic_config::entries(&configs)
                            .map(|e| {
                                let mut c = CreatableTopicConfigs::default();
                                c.name = str_bytes(e.name);
                                c.value = Some(str_bytes(e.value));
                                c.config_source = if e.overridden { 1 } else { 5 };
                                c
                            })
                            .collect(),
                    );
                }
            }
            Err(e) => fail(&mut r, topic_error(&e), e.to_string()),
        }
        resp.topics.push(r);
    }
    resp
}

pub async fn delete_topics(b: &Admin<'_>, req: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let mut resp = DeleteTopicsResponse::default();
    // v6 names topics by name or id; older versions by name only.
    let mut wanted: Vec<(Option<String>, uuid::Uuid)> = req
        .topic_names
        .iter()
        .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
        .collect();
    wanted.extend(
        req.topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id)),
    );
    for (name, id) in wanted {
        let mut r = DeletableTopicResult::default();
        let resolved = match (&name, id.is_nil()) {
            (Some(n), _) => Some(n.clone()),
            (None, false) => b
                .views
                .current()
                .image
                .topics
                .values()
                .find(|t| t.id == id)
                .map(|t| t.name.clone()),
            (None, true) => None,
        };
        r.topic_id = id;
        let Some(name) = resolved else {
            r.error_code = error_code(
                b.metrics,
                if id.is_nil() {
                    ResponseError::InvalidRequest
                } else {
                    ResponseError::UnknownTopicId
                },
            );
            resp.responses.push(r);
            continue;
        };
        r.name = Some(TopicName(str_bytes(name.clone())));
        if crate::broker::is_internal_topic(&name) {
            r.error_code = error_code(b.metrics, ResponseError::InvalidRequest);
            r.error_message = Some(str_bytes(format!(
                "{name} is an internal topic and cannot be deleted"
            )));
            resp.responses.push(r);
            continue;
        }
        let deleted = match b.topics.delete(&name).await {
            Ok((id, index)) => super::committed(b.views, index).await.map(|_| id),
            Err(e) => Err(e),
        };
        match deleted {
            Ok(deleted_id) => {
                r.topic_id = deleted_id;
                tracing::info!(topic = %name, "deleted topic");
            }
            Err(e) => {
                r.error_code = error_code(b.metrics, topic_error(&e));
                r.error_message = Some(str_bytes(e.to_string()));
            }
        }
        resp.responses.push(r);
    }
    resp
}

pub async fn create_partitions(
    b: &Admin<'_>,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut resp = CreatePartitionsResponse::default();
    let brokers = b.views.current().broker_ids();
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut r = CreatePartitionsTopicResult::default();
        r.name = t.name.clone();
        let assignment = t.assignments.map(|a| {
            a.into_iter()
                .map(|x| x.broker_ids.into_iter().map(|id| id.0).collect())
                .collect()
        });
        if crate::broker::is_internal_topic(&name) {
            r.error_code = error_code(b.metrics, ResponseError::InvalidRequest);
            r.error_message = Some(str_bytes(format!(
                "{name} is an internal topic; its partition count is fixed"
            )));
            resp.results.push(r);
            continue;
        }
        let added = match b
            .topics
            .add_partitions(&name, t.count, assignment, &brokers, req.validate_only)
            .await
        {
            Ok(Some(index)) => super::committed(b.views, index).await.map(|_| ()),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        match added {
            Ok(()) => tracing::info!(topic = %name, count = t.count, "partitions added"),
            Err(e) => {
                r.error_code = error_code(b.metrics, topic_error(&e));
                r.error_message = Some(str_bytes(e.to_string()));
            }
        }
        resp.results.push(r);
    }
    resp
}
