//! The operator's Kafka admin client: the handful of admin APIs the Topic
//! controller needs, over one connection of Sluice's internal client
//! (`sluice-client`, messages encoded by `kafka-protocol`).
//! No librdkafka in the operator image, and every request and answer is
//! typed. Errors carry the broker's error code and message.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use kafka_protocol::messages::alter_user_scram_credentials_request::{
    ScramCredentialDeletion, ScramCredentialUpsertion,
};
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsAssignment, CreatePartitionsTopic,
};
use kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
};
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse, BrokerId,
    CreateAclsRequest, CreateAclsResponse, CreatePartitionsRequest, CreatePartitionsResponse,
    CreateTopicsRequest, CreateTopicsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, DescribeAclsRequest, DescribeAclsResponse,
    DescribeConfigsRequest, DescribeConfigsResponse, DescribeUserScramCredentialsRequest,
    DescribeUserScramCredentialsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::{Request, StrBytes};
use sluice_client::{Connection, Transport};

use crate::topic_plan::ObservedTopic;
use crate::user_plan::{Acl, Credential, Password};

const TIMEOUT: Duration = Duration::from_secs(30);
const RESOURCE_TOPIC: i8 = 2;
/// DescribeConfigs `config_source` of a per-topic override.
const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
/// ACL filters' ANY (resource type, pattern type, operation, permission).
const ACL_ANY: i8 = 1;

pub struct KafkaAdmin {
    conn: Connection,
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// A broker error code as an error, with the broker's message.
fn check(what: &str, code: i16, message: Option<&StrBytes>) -> anyhow::Result<()> {
    if code == 0 {
        return Ok(());
    }
    let name = kafka_protocol::ResponseError::try_from_code(code)
        .map_or_else(|| format!("error {code}"), |e| format!("{e:?}"));
    bail!(
        "{what}: {name}{}",
        message.map(|m| format!(": {m}")).unwrap_or_default()
    )
}

impl KafkaAdmin {
    /// Over plain TCP.
    pub async fn connect(bootstrap: &str) -> anyhow::Result<KafkaAdmin> {
        Self::open(bootstrap, &Transport::Plain).await
    }

    pub async fn open(bootstrap: &str, transport: &Transport) -> anyhow::Result<KafkaAdmin> {
        let conn = Connection::open(bootstrap, "sluice-operator", TIMEOUT, transport)
            .await
            .with_context(|| format!("cannot connect to {bootstrap}"))?;
        Ok(KafkaAdmin { conn })
    }

    /// One request on the connection, answered by its typed response.
    async fn call<R: Request>(&self, version: i16, request: &R) -> anyhow::Result<R::Response> {
        self.conn
            .send(request, version, TIMEOUT)
            .await
            .with_context(|| format!("API key {} v{version}", R::KEY))
    }

    /// Broker ids of the cluster, sorted.
    pub async fn broker_ids(&mut self) -> anyhow::Result<Vec<i32>> {
        let mut req = MetadataRequest::default();
        req.topics = Some(Vec::new());
        let resp: MetadataResponse = self.call(9, &req).await?;
        let mut ids: Vec<i32> = resp.brokers.iter().map(|b| b.node_id.0).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// Over every topic: the largest replication factor, and the broker ids
    /// that hold at least one replica (what a scale-down must not remove).
    pub async fn replica_summary(&mut self) -> anyhow::Result<(i32, Vec<i32>)> {
        let mut req = MetadataRequest::default();
        req.topics = None;
        req.allow_auto_topic_creation = false;
        let resp: MetadataResponse = self.call(9, &req).await?;
        let mut max_rf = 0;
        let mut holders = std::collections::BTreeSet::new();
        for p in resp.topics.iter().flat_map(|t| &t.partitions) {
            max_rf = max_rf.max(p.replica_nodes.len() as i32);
            holders.extend(p.replica_nodes.iter().map(|b| b.0));
        }
        Ok((max_rf, holders.into_iter().collect()))
    }

    /// The topic's replica assignment and per-topic config overrides, or
    /// `None` if it does not exist.
    pub async fn describe_topic(&mut self, name: &str) -> anyhow::Result<Option<ObservedTopic>> {
        let mut t = MetadataRequestTopic::default();
        t.name = Some(topic_name(name));
        let mut req = MetadataRequest::default();
        req.topics = Some(vec![t]);
        req.allow_auto_topic_creation = false;
        let resp: MetadataResponse = self.call(9, &req).await?;
        let Some(topic) = resp
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == name))
        else {
            return Ok(None);
        };
        if topic.error_code == kafka_protocol::ResponseError::UnknownTopicOrPartition.code() {
            return Ok(None);
        }
        check(&format!("metadata of {name}"), topic.error_code, None)?;
        let mut partitions: Vec<_> = topic.partitions.iter().collect();
        partitions.sort_by_key(|p| p.partition_index);
        let assignment = partitions
            .iter()
            .map(|p| p.replica_nodes.iter().map(|b| b.0).collect())
            .collect();

        let mut res = DescribeConfigsResource::default();
        res.resource_type = RESOURCE_TOPIC;
        res.resource_name = str_bytes(name);
        // Null asks for every key (an empty list would ask for none).
        res.configuration_keys = None;
        let mut req = DescribeConfigsRequest::default();
        req.resources = vec![res];
        let resp: DescribeConfigsResponse = self.call(4, &req).await?;
        let mut configs = BTreeMap::new();
        for r in &resp.results {
            check(
                &format!("configs of {name}"),
                r.error_code,
                r.error_message.as_ref(),
            )?;
            for c in &r.configs {
                if c.config_source == SOURCE_DYNAMIC_TOPIC {
                    configs.insert(
                        c.name.to_string(),
                        c.value.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                    );
                }
            }
        }
        Ok(Some(ObservedTopic {
            assignment,
            configs,
        }))
    }

    /// Creates a topic with an explicit assignment (partition `i` gets
    /// `assignment[i]`, preferred leader first).
    pub async fn create_topic(
        &mut self,
        name: &str,
        assignment: &[Vec<i32>],
        configs: &BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        let mut t = CreatableTopic::default();
        t.name = topic_name(name);
        t.num_partitions = -1;
        t.replication_factor = -1;
        t.assignments = assignment
            .iter()
            .enumerate()
            .map(|(i, replicas)| {
                let mut a = CreatableReplicaAssignment::default();
                a.partition_index = i as i32;
                a.broker_ids = replicas.iter().map(|b| BrokerId(*b)).collect();
                a
            })
            .collect();
        t.configs = configs
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
        let resp: CreateTopicsResponse = self.call(5, &req).await?;
        for t in &resp.topics {
            check(
                &format!("creating {name}"),
                t.error_code,
                t.error_message.as_ref(),
            )?;
        }
        Ok(())
    }

    /// Grows a topic to `total` partitions; `assignment` covers the new ones.
    pub async fn create_partitions(
        &mut self,
        name: &str,
        total: i32,
        assignment: &[Vec<i32>],
    ) -> anyhow::Result<()> {
        let mut t = CreatePartitionsTopic::default();
        t.name = topic_name(name);
        t.count = total;
        t.assignments = Some(
            assignment
                .iter()
                .map(|replicas| {
                    let mut a = CreatePartitionsAssignment::default();
                    a.broker_ids = replicas.iter().map(|b| BrokerId(*b)).collect();
                    a
                })
                .collect(),
        );
        let mut req = CreatePartitionsRequest::default();
        req.topics = vec![t];
        req.timeout_ms = TIMEOUT.as_millis() as i32;
        let resp: CreatePartitionsResponse = self.call(2, &req).await?;
        for r in &resp.results {
            check(
                &format!("adding partitions to {name}"),
                r.error_code,
                r.error_message.as_ref(),
            )?;
        }
        Ok(())
    }

    /// Sets `set` and deletes `delete` (IncrementalAlterConfigs: other keys
    /// are left as they are).
    pub async fn alter_configs(
        &mut self,
        name: &str,
        set: &BTreeMap<String, String>,
        delete: &[String],
    ) -> anyhow::Result<()> {
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
                &format!("configs of {name}"),
                r.error_code,
                r.error_message.as_ref(),
            )?;
        }
        Ok(())
    }

    pub async fn delete_topic(&mut self, name: &str) -> anyhow::Result<()> {
        let mut req = DeleteTopicsRequest::default();
        req.topic_names = vec![topic_name(name)];
        req.timeout_ms = TIMEOUT.as_millis() as i32;
        let resp: DeleteTopicsResponse = self.call(4, &req).await?;
        for r in &resp.responses {
            let gone =
                r.error_code == kafka_protocol::ResponseError::UnknownTopicOrPartition.code();
            if !gone {
                check(
                    &format!("deleting {name}"),
                    r.error_code,
                    r.error_message.as_ref(),
                )?;
            }
        }
        Ok(())
    }
}

/// The users and ACLs a `User` resource manages.
impl KafkaAdmin {
    /// The SCRAM credentials (mechanism, iterations) the brokers hold for
    /// `user`.
    pub async fn scram_credentials(&mut self, user: &str) -> anyhow::Result<Vec<Credential>> {
        let mut name = UserName::default();
        name.name = str_bytes(user);
        let mut req = DescribeUserScramCredentialsRequest::default();
        req.users = Some(vec![name]);
        let resp: DescribeUserScramCredentialsResponse = self.call(0, &req).await?;
        check(
            "describing SCRAM users",
            resp.error_code,
            resp.error_message.as_ref(),
        )?;
        let mut out = Vec::new();
        for r in &resp.results {
            if r.error_code == kafka_protocol::ResponseError::ResourceNotFound.code() {
                continue;
            }
            check(
                &format!("SCRAM credentials of {user}"),
                r.error_code,
                r.error_message.as_ref(),
            )?;
            out.extend(
                r.credential_infos
                    .iter()
                    .map(|c| (c.mechanism, c.iterations)),
            );
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Sets `user`'s credential for `mechanism` (Kafka's codes: 1
    /// SCRAM-SHA-256, 2 SCRAM-SHA-512): a fresh random salt, and the
    /// password salted here (PBKDF2), so only the salted form travels.
    pub async fn upsert_scram_credential(
        &mut self,
        user: &str,
        mechanism: i8,
        iterations: i32,
        password: &Password,
    ) -> anyhow::Result<()> {
        let (algorithm, len) = match mechanism {
            1 => (ring::pbkdf2::PBKDF2_HMAC_SHA256, 32),
            2 => (ring::pbkdf2::PBKDF2_HMAC_SHA512, 64),
            other => bail!("unknown SCRAM mechanism {other}"),
        };
        let rounds = std::num::NonZeroU32::new(u32::try_from(iterations)?)
            .context("iterations must be positive")?;
        let salt = crate::context::random_bytes::<32>().map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut salted = vec![0u8; len];
        ring::pbkdf2::derive(algorithm, rounds, &salt, &password.0, &mut salted);
        let mut up = ScramCredentialUpsertion::default();
        up.name = str_bytes(user);
        up.mechanism = mechanism;
        up.iterations = iterations;
        up.salt = bytes::Bytes::copy_from_slice(&salt);
        up.salted_password = bytes::Bytes::from(salted);
        let mut req = AlterUserScramCredentialsRequest::default();
        req.upsertions = vec![up];
        self.alter_scram(user, req).await
    }

    pub async fn delete_scram_credential(
        &mut self,
        user: &str,
        mechanism: i8,
    ) -> anyhow::Result<()> {
        let mut del = ScramCredentialDeletion::default();
        del.name = str_bytes(user);
        del.mechanism = mechanism;
        let mut req = AlterUserScramCredentialsRequest::default();
        req.deletions = vec![del];
        self.alter_scram(user, req).await
    }

    async fn alter_scram(
        &mut self,
        user: &str,
        req: AlterUserScramCredentialsRequest,
    ) -> anyhow::Result<()> {
        let resp: AlterUserScramCredentialsResponse = self.call(0, &req).await?;
        for r in &resp.results {
            let gone = r.error_code == kafka_protocol::ResponseError::ResourceNotFound.code();
            if !gone {
                check(
                    &format!("SCRAM credentials of {user}"),
                    r.error_code,
                    r.error_message.as_ref(),
                )?;
            }
        }
        Ok(())
    }

    /// Every ACL of `principal`.
    pub async fn acls_of(&mut self, principal: &str) -> anyhow::Result<Vec<Acl>> {
        let mut req = DescribeAclsRequest::default();
        req.resource_type_filter = ACL_ANY;
        req.resource_name_filter = None;
        req.pattern_type_filter = ACL_ANY;
        req.principal_filter = Some(str_bytes(principal));
        req.host_filter = None;
        req.operation = ACL_ANY;
        req.permission_type = ACL_ANY;
        let resp: DescribeAclsResponse = self.call(2, &req).await?;
        check(
            "describing ACLs",
            resp.error_code,
            resp.error_message.as_ref(),
        )?;
        let mut out: Vec<Acl> = resp
            .resources
            .iter()
            .flat_map(|r| {
                r.acls.iter().map(move |a| Acl {
                    resource_type: r.resource_type,
                    name: r.resource_name.to_string(),
                    pattern_type: r.pattern_type,
                    host: a.host.to_string(),
                    operation: a.operation,
                    permission: a.permission_type,
                })
            })
            .collect();
        out.sort();
        Ok(out)
    }

    pub async fn create_acls(&mut self, principal: &str, acls: &[Acl]) -> anyhow::Result<()> {
        let mut req = CreateAclsRequest::default();
        req.creations = acls
            .iter()
            .map(|a| {
                let mut c = AclCreation::default();
                c.resource_type = a.resource_type;
                c.resource_name = str_bytes(&a.name);
                c.resource_pattern_type = a.pattern_type;
                c.principal = str_bytes(principal);
                c.host = str_bytes(&a.host);
                c.operation = a.operation;
                c.permission_type = a.permission;
                c
            })
            .collect();
        let resp: CreateAclsResponse = self.call(2, &req).await?;
        for r in &resp.results {
            check(
                &format!("creating ACLs of {principal}"),
                r.error_code,
                r.error_message.as_ref(),
            )?;
        }
        Ok(())
    }

    /// Deletes exactly these ACLs (each filter matches one binding).
    pub async fn delete_acls(&mut self, principal: &str, acls: &[Acl]) -> anyhow::Result<()> {
        let mut req = DeleteAclsRequest::default();
        req.filters = acls
            .iter()
            .map(|a| {
                let mut f = DeleteAclsFilter::default();
                f.resource_type_filter = a.resource_type;
                f.resource_name_filter = Some(str_bytes(&a.name));
                f.pattern_type_filter = a.pattern_type;
                f.principal_filter = Some(str_bytes(principal));
                f.host_filter = Some(str_bytes(&a.host));
                f.operation = a.operation;
                f.permission_type = a.permission;
                f
            })
            .collect();
        let resp: DeleteAclsResponse = self.call(2, &req).await?;
        for r in &resp.filter_results {
            check(
                &format!("deleting ACLs of {principal}"),
                r.error_code,
                r.error_message.as_ref(),
            )?;
        }
        Ok(())
    }
}

impl KafkaAdmin {
    /// Performs a planned action if it is a broker write; Kubernetes-side
    /// actions (finalizers, status, events) are not this client's and are
    /// skipped. Returns whether it wrote to the brokers.
    pub async fn execute(&mut self, action: &crate::topic_plan::Action) -> anyhow::Result<bool> {
        use crate::topic_plan::Action;
        match action {
            Action::CreateTopic {
                name,
                assignment,
                configs,
            } => self.create_topic(name, assignment, configs).await?,
            Action::CreatePartitions {
                name,
                total,
                assignment,
            } => self.create_partitions(name, *total, assignment).await?,
            Action::AlterConfigs { name, set, delete } => {
                self.alter_configs(name, set, delete).await?
            }
            Action::DeleteTopic { name } => self.delete_topic(name).await?,
            Action::AddFinalizer
            | Action::RemoveFinalizer
            | Action::UpdateStatus(_)
            | Action::Event { .. } => return Ok(false),
        }
        Ok(true)
    }
}
