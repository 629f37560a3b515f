//! The operator's Kafka admin client: the handful of admin APIs the Topic
//! and User controllers need, over one connection of Sluice's internal
//! client (topics through `sluice_client::admin`, shared with the CLI;
//! SCRAM credentials and ACLs here, messages encoded by `kafka-protocol`).
//! No librdkafka in the operator image, and every request and answer is
//! typed. Errors carry the broker's error code and message.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::alter_user_scram_credentials_request::{
    ScramCredentialDeletion, ScramCredentialUpsertion,
};
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse, CreateAclsRequest,
    CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse, DescribeAclsRequest,
    DescribeAclsResponse, DescribeUserScramCredentialsRequest,
    DescribeUserScramCredentialsResponse,
};
use kafka_protocol::protocol::{Request, StrBytes};
use sluice_client::Transport;
use sluice_client::admin::{Admin, NewTopic, TIMEOUT};

use crate::topic_plan::ObservedTopic;
use crate::user_plan::{Acl, Credential, Password};

/// ACL filters' ANY (resource type, pattern type, operation, permission).
const ACL_ANY: i8 = 1;

pub struct KafkaAdmin {
    admin: Admin,
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// A broker error code as an error, with the broker's message.
fn check(what: &str, code: i16, message: Option<&StrBytes>) -> anyhow::Result<()> {
    if code == 0 {
        return Ok(());
    }
    bail!(
        "{what}: {}{}",
        sluice_client::admin::error_name(code),
        message.map(|m| format!(": {m}")).unwrap_or_default()
    )
}

impl KafkaAdmin {
    /// Over plain TCP.
    pub async fn connect(bootstrap: &str) -> anyhow::Result<KafkaAdmin> {
        Self::open(bootstrap, &Transport::Plain).await
    }

    pub async fn open(bootstrap: &str, transport: &Transport) -> anyhow::Result<KafkaAdmin> {
        let admin = Admin::open(bootstrap, "sluice-operator", transport)
            .await
            .with_context(|| format!("cannot connect to {bootstrap}"))?;
        Ok(KafkaAdmin { admin })
    }

    /// One request on the connection, answered by its typed response.
    async fn call<R: Request>(&self, version: i16, request: &R) -> anyhow::Result<R::Response> {
        self.admin
            .connection()
            .send(request, version, TIMEOUT)
            .await
            .with_context(|| format!("API key {} v{version}", R::KEY))
    }

    /// Broker ids of the cluster, sorted.
    pub async fn broker_ids(&mut self) -> anyhow::Result<Vec<i32>> {
        let view = self.admin.cluster(Some(&[])).await?;
        Ok(view.brokers.iter().map(|b| b.id).collect())
    }

    /// Over every topic: the largest replication factor, and the broker ids
    /// that hold at least one replica (what a scale-down must not remove).
    /// A partition being moved counts its target replicas for the
    /// factor, and every replica it still has as held.
    pub async fn replica_summary(&mut self) -> anyhow::Result<(i32, Vec<i32>)> {
        let moves = self.admin.list_reassignments(None).await?;
        let view = self.admin.cluster(None).await?;
        let mut max_rf = 0;
        let mut holders = std::collections::BTreeSet::new();
        for t in &view.topics {
            for p in &t.partitions {
                let leaving = moves
                    .iter()
                    .find(|m| m.topic == t.name && m.partition == p.index)
                    .map_or(0, |m| m.removing.len());
                max_rf = max_rf.max((p.replicas.len() - leaving) as i32);
                holders.extend(p.replicas.iter().copied());
            }
        }
        Ok((max_rf, holders.into_iter().collect()))
    }

    /// The controller quorum's voters, the registered brokers, the moves
    /// under way and those that would place every partition on brokers
    /// `0..brokers` (what the Cluster controller's scaling steps need).
    pub async fn placement(
        &mut self,
        brokers: i32,
    ) -> anyhow::Result<crate::cluster_plan::ObservedPlacement> {
        // Moves first: a view read with none under way has no partition
        // listing old and new replicas together (which `placement_moves`
        // would take for the replication factor).
        let in_progress = self.admin.list_reassignments(None).await?.len();
        let view = self.admin.cluster(None).await?;
        let quorum = self.admin.quorum().await?;
        let targets: Vec<i32> = (0..brokers.max(1)).collect();
        let moves_to_spec = if in_progress > 0 {
            Vec::new()
        } else {
            sluice_client::admin::placement_moves(&view, &targets).map_err(|e| {
                anyhow::anyhow!("placing the partitions on {brokers} brokers: {}", e.0)
            })?
        };
        let mut voters: Vec<i32> = quorum.voters.iter().map(|v| v.id).collect();
        voters.sort_unstable();
        Ok(crate::cluster_plan::ObservedPlacement {
            moves_in_progress: in_progress,
            moves_to_spec,
            voters,
            registered: view.brokers.iter().map(|b| b.id).collect(),
        })
    }

    /// Starts partition reassignments.
    pub async fn move_replicas(
        &mut self,
        moves: &[sluice_client::admin::PartitionMove],
    ) -> anyhow::Result<()> {
        Ok(self.admin.alter_reassignments(moves).await?)
    }

    /// Takes a broker out of the controller quorum.
    pub async fn remove_voter(&mut self, id: i32) -> anyhow::Result<()> {
        Ok(self.admin.remove_voter(id).await?)
    }

    /// Takes a stopped broker holding no replica out of the metadata.
    pub async fn unregister_broker(&mut self, id: i32) -> anyhow::Result<()> {
        Ok(self.admin.unregister_broker(id).await?)
    }

    /// The topic's replica assignment and per-topic config overrides, or
    /// `None` if it does not exist.
    pub async fn describe_topic(&mut self, name: &str) -> anyhow::Result<Option<ObservedTopic>> {
        let Some(topic) = self.admin.topic(name).await? else {
            return Ok(None);
        };
        // A partition being moved lists its old and new replicas; the
        // topic's are where it is going (its replicas less those leaving).
        let moves = self.admin.list_reassignments(Some(&[name])).await?;
        let mut moving = Vec::new();
        let assignment = topic
            .partitions
            .into_iter()
            .map(|p| match moves.iter().find(|m| m.partition == p.index) {
                Some(m) => {
                    moving.push(p.index);
                    m.replicas
                        .iter()
                        .copied()
                        .filter(|r| !m.removing.contains(r))
                        .collect()
                }
                None => p.replicas,
            })
            .collect();
        let configs = self
            .admin
            .topic_configs(name)
            .await?
            .into_iter()
            .filter(|c| c.is_override)
            .map(|c| (c.name, c.value.unwrap_or_default()))
            .collect();
        Ok(Some(ObservedTopic {
            assignment,
            moving,
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
        let topic = NewTopic {
            name: name.to_string(),
            assignment: assignment.to_vec(),
            configs: configs.clone(),
            ..NewTopic::default()
        };
        self.admin.create_topic(&topic, false).await?;
        Ok(())
    }

    /// Grows a topic to `total` partitions; `assignment` covers the new ones.
    pub async fn create_partitions(
        &mut self,
        name: &str,
        total: i32,
        assignment: &[Vec<i32>],
    ) -> anyhow::Result<()> {
        Ok(self
            .admin
            .create_partitions(name, total, assignment, false)
            .await?)
    }

    /// Sets `set` and deletes `delete` (IncrementalAlterConfigs: other keys
    /// are left as they are).
    pub async fn alter_configs(
        &mut self,
        name: &str,
        set: &BTreeMap<String, String>,
        delete: &[String],
    ) -> anyhow::Result<()> {
        Ok(self
            .admin
            .alter_topic_configs(name, set, delete, false)
            .await?)
    }

    /// Deletes a topic; one already gone is fine.
    pub async fn delete_topic(&mut self, name: &str) -> anyhow::Result<()> {
        match self.admin.delete_topic(name).await {
            Err(e) if e.code() == Some(ResponseError::UnknownTopicOrPartition.code()) => Ok(()),
            r => Ok(r?),
        }
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
