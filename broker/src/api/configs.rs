//! DescribeConfigs, AlterConfigs (replace all overrides) and
//! IncrementalAlterConfigs (set/delete single keys) for topics; broker
//! configs are described read-only.

use std::collections::BTreeMap;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResponse, DescribeConfigsResult,
    DescribeConfigsSynonym,
};
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, alter_configs_response,
    incremental_alter_configs_response,
};
use kafka_protocol::protocol::StrBytes;

use super::services::Admin;
use super::topics::topic_error;
use super::{error_code, str_bytes};
use sluice_metadata::topic_config::{self, ConfigType};

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

pub fn describe_configs(b: &Admin<'_>, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let view = b.views.current();
    let mut resp = DescribeConfigsResponse::default();
    for res in req.resources {
        let mut r = DescribeConfigsResult::default();
        r.resource_type = res.resource_type;
        r.resource_name = res.resource_name.clone();
        let keys: Option<Vec<String>> = res
            .configuration_keys
            .as_ref()
            .map(|k| k.iter().map(|s| s.to_string()).collect());
        let wanted = |name: &str| keys.as_ref().is_none_or(|k| k.iter().any(|x| x == name));
        match res.resource_type {
            RESOURCE_TOPIC => {
                let Some(topic) = view.image.topics.get(res.resource_name.as_str()) else {
                    r.error_code = error_code(b.metrics, ResponseError::UnknownTopicOrPartition);
                    r.error_message = Some(str_bytes(format!(
                        "topic '{}' does not exist",
                        res.resource_name
                    )));
                    resp.results.push(r);
                    continue;
                };
                for e in topic_config::entries(&topic.configs).filter(|e| wanted(e.name)) {
                    let mut c = DescribeConfigsResourceResult::default();
                    c.name = str_bytes(e.name);
                    c.value = Some(str_bytes(e.value));
                    c.config_source = if e.overridden {
                        SOURCE_DYNAMIC_TOPIC
                    } else {
                        SOURCE_DEFAULT
                    };
                    c.config_type = e.kind as i8;
                    if req.include_documentation {
                        c.documentation = Some(str_bytes(e.doc));
                    }
                    if req.include_synonyms {
                        if e.overridden {
                            c.synonyms
                                .push(synonym(e.name, e.value, SOURCE_DYNAMIC_TOPIC));
                        }
                        if let Some(d) = e.default {
                            c.synonyms.push(synonym(e.name, d, SOURCE_DEFAULT));
                        }
                    }
                    r.configs.push(c);
                }
            }
            RESOURCE_BROKER => {
                let name = res.resource_name.as_str();
                if !name.is_empty() && name != b.node_id.to_string() {
                    r.error_code = error_code(b.metrics, ResponseError::InvalidRequest);
                    r.error_message = Some(str_bytes(format!(
                        "this is broker {}, not '{name}'",
                        b.node_id
                    )));
                    resp.results.push(r);
                    continue;
                }
                for (k, v, t) in broker_configs(b).into_iter().filter(|(k, _, _)| wanted(k)) {
                    let mut c = DescribeConfigsResourceResult::default();
                    c.name = str_bytes(k);
                    c.value = Some(str_bytes(v));
                    c.read_only = true;
                    c.config_source = SOURCE_STATIC_BROKER;
                    c.config_type = t as i8;
                    r.configs.push(c);
                }
            }
            other => {
                r.error_code = error_code(b.metrics, ResponseError::InvalidRequest);
                r.error_message =
                    Some(str_bytes(format!("resource type {other} is not supported")));
            }
        }
        resp.results.push(r);
    }
    resp
}

fn synonym(name: &str, value: &str, source: i8) -> DescribeConfigsSynonym {
    let mut s = DescribeConfigsSynonym::default();
    s.name = str_bytes(name);
    s.value = Some(str_bytes(value));
    s.source = source;
    s
}

fn broker_configs(b: &Admin<'_>) -> Vec<(&'static str, String, ConfigType)> {
    vec![
        ("broker.id", b.node_id.to_string(), ConfigType::Int),
        (
            "num.partitions",
            b.settings.default_partitions.to_string(),
            ConfigType::Int,
        ),
        (
            "auto.create.topics.enable",
            b.settings.auto_create_topics.to_string(),
            ConfigType::Boolean,
        ),
        (
            "socket.request.max.bytes",
            b.settings.max_request_bytes.to_string(),
            ConfigType::Int,
        ),
        (
            "log.dirs",
            b.settings.data_dir.display().to_string(),
            ConfigType::String,
        ),
        (
            "connections.max.reauth.ms",
            b.settings.connections_max_reauth_ms.to_string(),
            ConfigType::Long,
        ),
    ]
}

/// Shared path of both alter APIs: check the resource, compute the new
/// override map, validate it whole, then apply unless validate-only.
async fn alter_topic(
    b: &Admin<'_>,
    resource_type: i8,
    name: &StrBytes,
    validate_only: bool,
    change: impl FnOnce(&mut BTreeMap<String, String>) -> Result<(), String>,
) -> Result<(), (ResponseError, String)> {
    if resource_type != RESOURCE_TOPIC {
        return Err((
            ResponseError::InvalidRequest,
            format!(
                "only topic configs can be altered (resource type {resource_type}); broker settings come from flags, env or the config file"
            ),
        ));
    }
    if crate::broker::is_internal_topic(name.as_str()) {
        return Err((
            ResponseError::InvalidRequest,
            format!("{name} is an internal topic; its configs are managed by the broker"),
        ));
    }
    let view = b.views.current();
    let topic = view.image.topics.get(name.as_str()).ok_or_else(|| {
        (
            ResponseError::UnknownTopicOrPartition,
            format!("topic '{name}' does not exist"),
        )
    })?;
    let mut configs = topic.configs.clone();
    change(&mut configs).map_err(|m| (ResponseError::InvalidConfig, m))?;
    topic_config::validate_all(&configs).map_err(|m| (ResponseError::InvalidConfig, m))?;
    super::check_plugin_bindings(b.plugins, &configs)
        .map_err(|m| (ResponseError::InvalidConfig, m))?;
    if validate_only {
        return Ok(());
    }
    let index = b
        .topics
        .set_configs(name.as_str(), configs)
        .await
        .map_err(|e| (topic_error(&e), e.to_string()))?;
    super::committed(b.views, index)
        .await
        .map_err(|e| (topic_error(&e), e.to_string()))?;
    tracing::info!(topic = %name, "topic configs changed");
    Ok(())
}

pub async fn alter_configs(b: &Admin<'_>, req: AlterConfigsRequest) -> AlterConfigsResponse {
    let mut resp = AlterConfigsResponse::default();
    for res in req.resources {
        let mut r = alter_configs_response::AlterConfigsResourceResponse::default();
        r.resource_type = res.resource_type;
        r.resource_name = res.resource_name.clone();
        let new: BTreeMap<String, String> = res
            .configs
            .iter()
            .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
            .collect();
        let outcome = alter_topic(
            b,
            res.resource_type,
            &res.resource_name,
            req.validate_only,
            |configs| {
                *configs = new;
                Ok(())
            },
        )
        .await;
        if let Err((code, msg)) = outcome {
            r.error_code = error_code(b.metrics, code);
            r.error_message = Some(str_bytes(msg));
        }
        resp.responses.push(r);
    }
    resp
}

pub async fn incremental_alter_configs(
    b: &Admin<'_>,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut resp = IncrementalAlterConfigsResponse::default();
    for res in req.resources {
        let mut r = incremental_alter_configs_response::AlterConfigsResourceResponse::default();
        r.resource_type = res.resource_type;
        r.resource_name = res.resource_name.clone();
        let ops = res.configs.clone();
        let outcome = alter_topic(
            b,
            res.resource_type,
            &res.resource_name,
            req.validate_only,
            |configs| {
                for op in ops {
                    let name = op.name.to_string();
                    match op.config_operation {
                        0 => {
                            let value = op
                                .value
                                .ok_or_else(|| format!("SET of {name} needs a value"))?;
                            configs.insert(name, value.to_string());
                        }
                        1 => {
                            configs.remove(&name);
                        }
                        2 | 3 => {
                            return Err(format!(
                                "APPEND/SUBTRACT need a list config; {name} is not one"
                            ));
                        }
                        other => {
                            return Err(format!("unknown config operation {other} for {name}"));
                        }
                    }
                }
                Ok(())
            },
        )
        .await;
        if let Err((code, msg)) = outcome {
            r.error_code = error_code(b.metrics, code);
            r.error_message = Some(str_bytes(msg));
        }
        resp.responses.push(r);
    }
    resp
}
