//! The cluster metadata image and the commands that change it.
//!
//! The image is what the controller quorum agrees on: which brokers exist
//! (and which are fenced), every topic with its partitions' replicas, ISR,
//! leader and epochs, topic configs, and the producer-id counter. It is
//! changed only by applying committed `Command`s, in log order, on every
//! broker, so `apply` must be deterministic: no clocks, no randomness, no
//! I/O. Decisions that need a clock (fencing a silent broker) are made by
//! the controller, which then proposes the command; `apply` re-checks that
//! the decision still holds against the state it lands on, so a stale
//! proposal is refused rather than applied twice.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::acl::{AclBinding, AclFilter};
use crate::plugins::PluginKind;
use crate::plugins::VersionInfo;
use crate::scram::{ScramCredential, ScramMechanism};

/// Topic config that lets a partition with no live in-sync replica elect an
/// out-of-sync one (losing whatever the ISR had that it lacks).
pub const UNCLEAN_LEADER_ELECTION: &str = "unclean.leader.election.enable";

/// No leader: every replica that may lead is fenced.
pub const NO_LEADER: i32 = -1;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MetadataImage {
    /// The cluster's id, fixed by the first `InitCluster` committed.
    #[serde(default)]
    pub cluster_id: Option<String>,
    pub brokers: BTreeMap<i32, BrokerImage>,
    pub topics: BTreeMap<String, TopicImage>,
    /// Next producer id handed out by `AllocateProducerIds`.
    pub next_producer_id: i64,
    /// Unclean elections ever made (each one may have lost acknowledged data).
    pub unclean_elections: u64,
    /// The plugin registry: every broker installs what is here.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginImage>,
    /// SCRAM credentials by user, then mechanism.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scram_credentials: BTreeMap<String, BTreeMap<ScramMechanism, ScramCredential>>,
    /// Access control lists.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub acls: std::collections::BTreeSet<AclBinding>,
}

/// A plugin's version history and the module of its current version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PluginImage {
    pub versions: Vec<VersionInfo>,
    pub wasm: Wasm,
}

/// A WebAssembly module: shared in memory (the image is cloned on every
/// metadata change), base64 in the log and snapshots.
#[derive(Clone, PartialEq, Eq)]
pub struct Wasm(pub std::sync::Arc<[u8]>);

impl std::fmt::Debug for Wasm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Wasm({} bytes)", self.0.len())
    }
}

impl Serialize for Wasm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Wasm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Wasm, D::Error> {
        use base64::Engine;
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(|v| Wasm(v.into()))
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BrokerImage {
    pub id: i32,
    /// The inter-broker listener's advertised address.
    pub host: String,
    pub port: i32,
    /// Every listener's advertised address, by listener name: a client is
    /// told the addresses of the listener it connected to. Empty when
    /// registered by a broker that had one listener (then `host`/`port`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub listeners: BTreeMap<String, Endpoint>,
    /// Changes on every process start, so a restarted broker is told apart
    /// from the one whose heartbeats stopped.
    pub incarnation: Uuid,
    /// A fenced broker leads nothing and is in no ISR.
    pub fenced: bool,
    /// In controlled shutdown: its leaderships have moved, it joins no ISR
    /// and is elected nowhere, but clients still see it listed until it
    /// stops (it is fenced then), so none loses track of a partition in
    /// the middle of moving it.
    #[serde(default)]
    pub shutting_down: bool,
}

/// Where a listener of a broker is reached.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: i32,
}

impl BrokerImage {
    /// May lead partitions and be in sync.
    pub fn eligible(&self) -> bool {
        !self.fenced && !self.shutting_down
    }

    /// The advertised address of this broker's listener `name`; None if it
    /// has no such listener (Kafka then leaves it out of the answers a
    /// client on that listener gets).
    pub fn endpoint(&self, listener: &str) -> Option<(&str, i32)> {
        if self.listeners.is_empty() {
            return Some((self.host.as_str(), self.port));
        }
        self.listeners
            .get(listener)
            .map(|e| (e.host.as_str(), e.port))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TopicImage {
    pub name: String,
    pub id: Uuid,
    pub configs: BTreeMap<String, String>,
    pub partitions: Vec<PartitionImage>,
}

/// Config naming the topic a view reads (see `TopicImage::view_of`).
pub const VIEW_OF: &str = "sluice.view.of";

impl TopicImage {
    /// A view is a read-only topic sharing another topic's partitions, read
    /// through its `sluice.fetch.filters`: consumers that subscribe to it get
    /// the filtered records with their stored offsets, with no client change.
    pub fn view_of(&self) -> Option<&str> {
        self.configs
            .get(VIEW_OF)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// Each partition's replicas, preferred leader first.
    pub fn replica_lists(&self) -> Vec<Vec<i32>> {
        self.partitions.iter().map(|p| p.replicas.clone()).collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PartitionImage {
    /// Replica broker ids, preferred leader first.
    pub replicas: Vec<i32>,
    /// In-sync replicas; always contains the leader when there is one.
    pub isr: Vec<i32>,
    pub leader: i32,
    /// Bumped on every leader change; stamped on batches the leader writes
    /// and used by followers to find where their log diverged.
    pub leader_epoch: i32,
    /// Bumped on every change of this partition (leader or ISR), so a
    /// leader's ISR update based on a stale view is refused.
    pub partition_epoch: i32,
    /// A reassignment in progress (KIP-455): replicas being added (in
    /// `replicas`, catching up; the move completes when all of the target
    /// is in the ISR) and being removed (in `replicas` until then).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adding: Vec<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removing: Vec<i32>,
}

impl PartitionImage {
    pub fn reassigning(&self) -> bool {
        !self.adding.is_empty() || !self.removing.is_empty()
    }

    /// The replicas the partition will have once its reassignment is
    /// done (its replicas when none is in progress).
    pub fn target_replicas(&self) -> Vec<i32> {
        self.replicas
            .iter()
            .copied()
            .filter(|r| !self.removing.contains(r))
            .collect()
    }

    /// The replicas it had before its reassignment began.
    pub fn original_replicas(&self) -> Vec<i32> {
        self.replicas
            .iter()
            .copied()
            .filter(|r| !self.adding.contains(r))
            .collect()
    }
}

/// A change to the image, as committed in the quorum log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Names the cluster. Every broker proposes its stored id (or a new
    /// one) when it starts; the first committed wins, later ones change
    /// nothing, so all brokers report one id.
    InitCluster {
        id: String,
    },
    /// A broker (re)started. A new incarnation fences the old one first:
    /// its leaderships and ISR memberships are gone, since its log may
    /// have lost an unflushed tail.
    RegisterBroker {
        id: i32,
        host: String,
        port: i32,
        incarnation: Uuid,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        listeners: BTreeMap<String, Endpoint>,
    },
    /// The controller stopped hearing from this incarnation.
    FenceBroker {
        id: i32,
        incarnation: Uuid,
    },
    /// A broker leaves the cluster for good (scale-down; Kafka's
    /// UnregisterBroker): refused while it is live or still holds a
    /// replica, so nothing is lost with it.
    UnregisterBroker {
        id: i32,
    },
    /// This incarnation is stopping (SIGTERM): move its leaderships to
    /// other in-sync replicas and take it out of every ISR, without an
    /// unclean election (Kafka's controlled shutdown).
    ControlledShutdown {
        id: i32,
        incarnation: Uuid,
    },
    CreateTopic {
        name: String,
        id: Uuid,
        assignment: Vec<Vec<i32>>,
        configs: BTreeMap<String, String>,
    },
    DeleteTopic {
        name: String,
    },
    CreatePartitions {
        name: String,
        assignment: Vec<Vec<i32>>,
    },
    /// Replaces a topic's config overrides (validated by the proposer).
    SetTopicConfigs {
        name: String,
        configs: BTreeMap<String, String>,
    },
    /// A partition leader shrinks or expands its ISR (Kafka's AlterPartition).
    AlterIsr {
        topic: String,
        partition: i32,
        leader: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<i32>,
    },
    /// Starts moving a partition onto `target` replicas (KIP-455), or with
    /// `None` cancels the move in progress. New replicas catch up as
    /// followers; the move completes once every target replica is in the
    /// ISR (see `alter_isr`), leadership moving inside the ISR, so no
    /// acknowledged record is lost.
    ReassignPartition {
        topic: String,
        partition: i32,
        target: Option<Vec<i32>>,
    },
    /// Moves leadership to `leader`, which must be a live ISR member
    /// (preferred-leader election).
    ElectLeader {
        topic: String,
        partition: i32,
        leader: i32,
    },
    AllocateProducerIds {
        count: i64,
    },
    /// A new plugin version (validated and compiled by the proposer).
    UploadPlugin {
        name: String,
        kind: PluginKind,
        wasm: Wasm,
        sha256: String,
        uploaded_ms: i64,
        abi_version: i32,
    },
    DeletePlugin {
        name: String,
    },
    /// Sets a user's credential for one mechanism (derived by the proposer
    /// from the salted password AlterUserScramCredentials carries).
    UpsertScramCredential {
        user: String,
        mechanism: ScramMechanism,
        credential: ScramCredential,
    },
    DeleteScramCredential {
        user: String,
        mechanism: ScramMechanism,
    },
    /// Adds ACLs (validated by the proposer); ones already there stay.
    CreateAcls {
        acls: Vec<AclBinding>,
    },
    /// Removes every ACL each filter matches.
    DeleteAcls {
        filters: Vec<AclFilter>,
    },
}

/// What an applied command produced.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Applied {
    Done,
    Topic {
        id: Uuid,
    },
    ProducerIds {
        first: i64,
    },
    PluginVersion {
        version: u32,
    },
    /// The ACLs each filter of a DeleteAcls removed.
    AclsDeleted {
        deleted: Vec<Vec<AclBinding>>,
    },
    /// Committed but changed nothing (e.g. a fence for an incarnation that
    /// already restarted).
    Ignored {
        reason: String,
    },
}

/// Why a command was refused; each maps onto a Kafka error code.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, thiserror::Error)]
#[serde(tag = "type", content = "message", rename_all = "snake_case")]
pub enum MetadataError {
    #[error("{0}")]
    TopicExists(String),
    #[error("{0}")]
    UnknownTopic(String),
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("{0}")]
    InvalidReplicaAssignment(String),
    #[error("{0}")]
    FencedLeaderEpoch(String),
    #[error("{0}")]
    InvalidUpdateVersion(String),
    #[error("{0}")]
    IneligibleReplica(String),
    #[error("{0}")]
    UnknownBroker(String),
    #[error("{0}")]
    Plugin(String),
    #[error("{0}")]
    ResourceNotFound(String),
    #[error("{0}")]
    NoReassignmentInProgress(String),
}

pub type CommandResult = Result<Applied, MetadataError>;

impl MetadataImage {
    /// Ids of brokers that may lead and hold replicas (registered, not
    /// fenced, not shutting down), sorted.
    pub fn live_brokers(&self) -> Vec<i32> {
        self.brokers
            .values()
            .filter(|b| b.eligible())
            .map(|b| b.id)
            .collect()
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionImage> {
        let index = usize::try_from(partition).ok()?;
        self.topics.get(topic)?.partitions.get(index)
    }

    /// Registered, not fenced and not shutting down: may lead, join an ISR
    /// and get a new partition's replicas in sync.
    fn is_live(&self, id: i32) -> bool {
        self.brokers.get(&id).is_some_and(BrokerImage::eligible)
    }

    /// Applies one committed command. Deterministic: every broker computes
    /// the same image from the same log.
    pub fn apply(&mut self, command: &Command) -> CommandResult {
        match command {
            Command::InitCluster { id } => match &self.cluster_id {
                Some(existing) => Ok(Applied::Ignored {
                    reason: format!("the cluster id is already {existing}"),
                }),
                None => {
                    self.cluster_id = Some(id.clone());
                    Ok(Applied::Done)
                }
            },
            Command::RegisterBroker {
                id,
                host,
                port,
                incarnation,
                listeners,
            } => {
                if let Some(old) = self.brokers.get(id)
                    && old.incarnation != *incarnation
                {
                    self.fence(*id);
                }
                self.brokers.insert(
                    *id,
                    BrokerImage {
                        id: *id,
                        host: host.clone(),
                        port: *port,
                        listeners: listeners.clone(),
                        incarnation: *incarnation,
                        fenced: false,
                        shutting_down: false,
                    },
                );
                self.elect_leaderless(*id);
                Ok(Applied::Done)
            }
            Command::UnregisterBroker { id } => {
                let Some(b) = self.brokers.get(id) else {
                    return Err(MetadataError::UnknownBroker(format!(
                        "broker {id} is not registered"
                    )));
                };
                // Fenced: stopped (or cut off) for its session; one still
                // shutting down would register again.
                if !b.fenced {
                    return Err(MetadataError::IneligibleReplica(format!(
                        "broker {id} is running; stop it before unregistering it"
                    )));
                }
                let held: Vec<String> = self
                    .topics
                    .values()
                    .flat_map(|t| {
                        t.partitions
                            .iter()
                            .enumerate()
                            .filter(|(_, p)| p.replicas.contains(id))
                            .map(move |(i, _)| format!("{}-{i}", t.name))
                    })
                    .take(5)
                    .collect();
                if !held.is_empty() {
                    return Err(MetadataError::InvalidReplicaAssignment(format!(
                        "broker {id} still holds replicas (e.g. {}); move them off first",
                        held.join(", ")
                    )));
                }
                self.brokers.remove(id);
                Ok(Applied::Done)
            }
            Command::FenceBroker { id, incarnation } => match self.brokers.get(id) {
                Some(b) if b.incarnation == *incarnation && !b.fenced => {
                    self.fence(*id);
                    Ok(Applied::Done)
                }
                _ => Ok(Applied::Ignored {
                    reason: format!("broker {id} incarnation {incarnation} is not live"),
                }),
            },
            Command::ControlledShutdown { id, incarnation } => match self.brokers.get_mut(id) {
                Some(b) if b.incarnation == *incarnation && !b.fenced => {
                    b.shutting_down = true;
                    self.move_off(*id, false);
                    Ok(Applied::Done)
                }
                _ => Ok(Applied::Ignored {
                    reason: format!("broker {id} incarnation {incarnation} is not live"),
                }),
            },
            Command::CreateTopic {
                name,
                id,
                assignment,
                configs,
            } => {
                if self.topics.contains_key(name) {
                    return Err(MetadataError::TopicExists(format!(
                        "topic '{name}' already exists"
                    )));
                }
                self.check_assignment(assignment)?;
                let partitions = assignment
                    .iter()
                    .map(|replicas| self.new_partition(replicas))
                    .collect();
                self.topics.insert(
                    name.clone(),
                    TopicImage {
                        name: name.clone(),
                        id: *id,
                        configs: configs.clone(),
                        partitions,
                    },
                );
                Ok(Applied::Topic { id: *id })
            }
            Command::DeleteTopic { name } => match self.topics.remove(name) {
                Some(t) => Ok(Applied::Topic { id: t.id }),
                None => Err(unknown_topic(name)),
            },
            Command::CreatePartitions { name, assignment } => {
                self.check_assignment(assignment)?;
                let added: Vec<PartitionImage> = assignment
                    .iter()
                    .map(|replicas| self.new_partition(replicas))
                    .collect();
                let topic = self
                    .topics
                    .get_mut(name)
                    .ok_or_else(|| unknown_topic(name))?;
                topic.partitions.extend(added);
                Ok(Applied::Topic { id: topic.id })
            }
            Command::SetTopicConfigs { name, configs } => {
                let topic = self
                    .topics
                    .get_mut(name)
                    .ok_or_else(|| unknown_topic(name))?;
                topic.configs = configs.clone();
                Ok(Applied::Topic { id: topic.id })
            }
            Command::AlterIsr {
                topic,
                partition,
                leader,
                leader_epoch,
                partition_epoch,
                isr,
            } => self.alter_isr(
                topic,
                *partition,
                *leader,
                *leader_epoch,
                *partition_epoch,
                isr,
            ),
            Command::ReassignPartition {
                topic,
                partition,
                target,
            } => self.reassign(topic, *partition, target.as_deref()),
            Command::ElectLeader {
                topic,
                partition,
                leader,
            } => {
                let live = self.is_live(*leader);
                let p = self.partition_mut(topic, *partition)?;
                if !live || !p.isr.contains(leader) {
                    return Err(MetadataError::IneligibleReplica(format!(
                        "broker {leader} is not a live in-sync replica of {topic}-{partition}"
                    )));
                }
                if p.leader != *leader {
                    p.leader = *leader;
                    p.leader_epoch += 1;
                    p.partition_epoch += 1;
                }
                Ok(Applied::Done)
            }
            Command::UploadPlugin {
                name,
                kind,
                wasm,
                sha256,
                uploaded_ms,
                abi_version,
            } => {
                let last = self.plugins.get(name).and_then(|p| p.versions.last());
                if let Some(existing) = last.map(|v| v.kind)
                    && existing != *kind
                {
                    return Err(MetadataError::Plugin(format!(
                        "plugin '{name}' is a {existing}; a new version cannot be a {kind}"
                    )));
                }
                let version = last.map_or(1, |v| v.version + 1);
                let entry = self
                    .plugins
                    .entry(name.clone())
                    .or_insert_with(|| PluginImage {
                        versions: Vec::new(),
                        wasm: wasm.clone(),
                    });
                entry.versions.push(VersionInfo {
                    version,
                    kind: *kind,
                    sha256: sha256.clone(),
                    size: wasm.0.len(),
                    uploaded_ms: *uploaded_ms,
                    abi_version: *abi_version,
                });
                entry.wasm = wasm.clone();
                Ok(Applied::PluginVersion { version })
            }
            Command::DeletePlugin { name } => match self.plugins.remove(name) {
                Some(_) => Ok(Applied::Done),
                None => Err(MetadataError::Plugin(format!(
                    "plugin '{name}' does not exist"
                ))),
            },
            Command::UpsertScramCredential {
                user,
                mechanism,
                credential,
            } => {
                self.scram_credentials
                    .entry(user.clone())
                    .or_default()
                    .insert(*mechanism, credential.clone());
                Ok(Applied::Done)
            }
            Command::DeleteScramCredential { user, mechanism } => {
                let Some(mechanisms) = self.scram_credentials.get_mut(user) else {
                    return Err(MetadataError::ResourceNotFound(format!(
                        "user '{user}' has no SCRAM credentials"
                    )));
                };
                if mechanisms.remove(mechanism).is_none() {
                    return Err(MetadataError::ResourceNotFound(format!(
                        "user '{user}' has no {mechanism} credential"
                    )));
                }
                if mechanisms.is_empty() {
                    self.scram_credentials.remove(user);
                }
                Ok(Applied::Done)
            }
            Command::CreateAcls { acls } => {
                self.acls.extend(acls.iter().cloned());
                Ok(Applied::Done)
            }
            Command::DeleteAcls { filters } => {
                let deleted = filters
                    .iter()
                    .map(|f| {
                        let gone: Vec<AclBinding> =
                            self.acls.iter().filter(|b| f.matches(b)).cloned().collect();
                        for b in &gone {
                            self.acls.remove(b);
                        }
                        gone
                    })
                    .collect();
                Ok(Applied::AclsDeleted { deleted })
            }
            Command::AllocateProducerIds { count } => {
                let first = self.next_producer_id;
                self.next_producer_id = first.saturating_add((*count).max(1));
                Ok(Applied::ProducerIds { first })
            }
        }
    }

    fn check_assignment(&self, assignment: &[Vec<i32>]) -> Result<(), MetadataError> {
        if assignment.is_empty() {
            return Err(MetadataError::InvalidPartitions(
                "a topic needs at least one partition".into(),
            ));
        }
        let known: Vec<i32> = self.brokers.keys().copied().collect();
        sluice_placement::validate(assignment, &known)
            .map_err(|e| MetadataError::InvalidReplicaAssignment(e.0))
    }

    /// A new partition's ISR is its live replicas; the first of them leads.
    fn new_partition(&self, replicas: &[i32]) -> PartitionImage {
        let mut isr: Vec<i32> = replicas
            .iter()
            .copied()
            .filter(|r| self.is_live(*r))
            .collect();
        // An empty partition has nothing to lose: with no live replica the
        // first one leads as soon as it registers.
        if isr.is_empty() {
            isr = replicas.first().copied().into_iter().collect();
        }
        let leader = isr
            .iter()
            .copied()
            .find(|r| self.is_live(*r))
            .unwrap_or(NO_LEADER);
        PartitionImage {
            replicas: replicas.to_vec(),
            isr,
            leader,
            leader_epoch: 0,
            partition_epoch: 0,
            adding: Vec::new(),
            removing: Vec::new(),
        }
    }

    fn partition_mut(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<&mut PartitionImage, MetadataError> {
        let t = self
            .topics
            .get_mut(topic)
            .ok_or_else(|| unknown_topic(topic))?;
        usize::try_from(partition)
            .ok()
            .and_then(|i| t.partitions.get_mut(i))
            .ok_or_else(|| {
                MetadataError::UnknownTopic(format!("partition {topic}-{partition} does not exist"))
            })
    }

    fn alter_isr(
        &mut self,
        topic: &str,
        partition: i32,
        leader: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: &[i32],
    ) -> CommandResult {
        // (A leader in controlled shutdown still leads what could not move.)
        let live: Vec<i32> = isr
            .iter()
            .copied()
            .filter(|r| !self.is_live(*r) && *r != leader)
            .collect();
        let p = self.partition_mut(topic, partition)?;
        if p.leader != leader || p.leader_epoch != leader_epoch {
            return Err(MetadataError::FencedLeaderEpoch(format!(
                "{topic}-{partition}: broker {leader} epoch {leader_epoch} is not the leader (leader {} epoch {})",
                p.leader, p.leader_epoch
            )));
        }
        if p.partition_epoch != partition_epoch {
            return Err(MetadataError::InvalidUpdateVersion(format!(
                "{topic}-{partition}: partition epoch {partition_epoch} is stale (now {})",
                p.partition_epoch
            )));
        }
        if !isr.contains(&leader) || isr.iter().any(|r| !p.replicas.contains(r)) {
            return Err(MetadataError::IneligibleReplica(format!(
                "{topic}-{partition}: ISR {isr:?} must contain the leader and only replicas {:?}",
                p.replicas
            )));
        }
        // Only additions must be live: a shrink may drop a fenced broker.
        if let Some(dead) = live.iter().find(|r| !p.isr.contains(r)) {
            return Err(MetadataError::IneligibleReplica(format!(
                "{topic}-{partition}: broker {dead} is fenced and cannot join the ISR"
            )));
        }
        let mut sorted = isr.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        p.isr = p
            .replicas
            .iter()
            .copied()
            .filter(|r| sorted.contains(r))
            .collect();
        p.partition_epoch += 1;
        self.complete_reassignment(topic, partition);
        Ok(Applied::Done)
    }

    /// Starts, replaces or (`target` None) cancels partition `partition`'s
    /// reassignment, as Kafka's controller does: the replicas become the
    /// target followed by the current replicas not in it (removing), the
    /// target's brokers not among the original replicas are adding. A new
    /// target while a move is in progress starts from the current (union)
    /// replicas.
    fn reassign(&mut self, topic: &str, partition: i32, target: Option<&[i32]>) -> CommandResult {
        let known: Vec<i32> = self.brokers.keys().copied().collect();
        let p = self.partition_mut(topic, partition)?;
        let (replicas, adding, removing) = match target {
            None => {
                if !p.reassigning() {
                    return Err(MetadataError::NoReassignmentInProgress(format!(
                        "{topic}-{partition} has no reassignment in progress"
                    )));
                }
                (p.original_replicas(), Vec::new(), Vec::new())
            }
            Some(target) => {
                sluice_placement::validate(&[target.to_vec()], &known)
                    .map_err(|e| MetadataError::InvalidReplicaAssignment(e.0))?;
                // From the replicas before any move, as Kafka does: a
                // replica an earlier target was adding and this one does
                // not name just goes.
                let original = p.original_replicas();
                let removing: Vec<i32> = original
                    .iter()
                    .copied()
                    .filter(|r| !target.contains(r))
                    .collect();
                let adding: Vec<i32> = target
                    .iter()
                    .copied()
                    .filter(|r| !original.contains(r))
                    .collect();
                let replicas: Vec<i32> = target.iter().chain(&removing).copied().collect();
                if replicas == p.replicas && adding == p.adding && removing == p.removing {
                    return Ok(Applied::Ignored {
                        reason: format!("{topic}-{partition} already has replicas {target:?}"),
                    });
                }
                (replicas, adding, removing)
            }
        };
        // The ISR keeps its members that stay replicas, in replica order;
        // a change that would leave none in sync is refused.
        let isr: Vec<i32> = replicas
            .iter()
            .copied()
            .filter(|r| p.isr.contains(r))
            .collect();
        if isr.is_empty() {
            return Err(MetadataError::InvalidReplicaAssignment(format!(
                "{topic}-{partition}: none of {replicas:?} is in sync (ISR {:?}){}",
                p.isr,
                if target.is_none() {
                    "; move it onward instead of cancelling"
                } else {
                    ""
                }
            )));
        }
        p.replicas = replicas;
        p.isr = isr;
        p.adding = adding;
        p.removing = removing;
        p.partition_epoch += 1;
        self.complete_reassignment(topic, partition);
        self.elect_in_replicas(topic, partition);
        Ok(Applied::Done)
    }

    /// Finishes a reassignment whose target replicas are all in the ISR:
    /// the removed replicas leave, and a leader among them hands over to
    /// the first in-sync target replica that is live.
    fn complete_reassignment(&mut self, topic: &str, partition: i32) {
        let Ok(p) = self.partition_mut(topic, partition) else {
            return;
        };
        if !p.reassigning() {
            return;
        }
        let target = p.target_replicas();
        if !target.iter().all(|r| p.isr.contains(r)) {
            return;
        }
        p.isr.retain(|r| target.contains(r));
        p.replicas = target;
        p.adding.clear();
        p.removing.clear();
        p.partition_epoch += 1;
        self.elect_in_replicas(topic, partition);
    }

    /// A leader that is no longer a replica (its reassignment moved it off)
    /// hands over to the first live ISR member, in replica order.
    fn elect_in_replicas(&mut self, topic: &str, partition: i32) {
        let live = self.live_brokers();
        let Ok(p) = self.partition_mut(topic, partition) else {
            return;
        };
        if p.leader == NO_LEADER || p.replicas.contains(&p.leader) {
            return;
        }
        p.leader = p
            .replicas
            .iter()
            .copied()
            .find(|r| p.isr.contains(r) && live.contains(r))
            .unwrap_or(NO_LEADER);
        p.leader_epoch += 1;
        p.partition_epoch += 1;
    }

    /// Takes a broker out of every ISR and leadership, electing a new
    /// leader from the remaining live ISR. The last ISR member stays in the
    /// ISR (leaderless) so it can lead again when it returns without an
    /// unclean election.
    fn fence(&mut self, id: i32) {
        if let Some(b) = self.brokers.get_mut(&id) {
            b.fenced = true;
        }
        self.move_off(id, true);
    }

    /// Takes broker `id` out of every ISR with other members and hands its
    /// leaderships to eligible ISR members. Where none is, an unclean
    /// election (if the topic allows it and `unclean_possible`) or no
    /// leader; for a controlled shutdown (`unclean_possible` false) the
    /// broker keeps such a leadership: it can only move by losing data.
    fn move_off(&mut self, id: i32, unclean_possible: bool) {
        let live: Vec<i32> = self.live_brokers();
        let mut unclean_elections = 0;
        for topic in self.topics.values_mut() {
            let unclean = unclean_possible && unclean_allowed(&topic.configs);
            for p in &mut topic.partitions {
                if !p.replicas.contains(&id) {
                    continue;
                }
                let before = (p.leader, p.isr.clone());
                if p.isr.len() > 1 {
                    p.isr.retain(|r| *r != id);
                }
                if p.leader == id || p.leader == NO_LEADER {
                    let next = p.isr.iter().copied().find(|r| live.contains(r));
                    match next {
                        Some(l) => p.leader = l,
                        None if unclean => {
                            match p.replicas.iter().copied().find(|r| live.contains(r)) {
                                Some(l) => {
                                    p.leader = l;
                                    p.isr = vec![l];
                                    unclean_elections += 1;
                                }
                                None => p.leader = NO_LEADER,
                            }
                        }
                        None if !unclean_possible && p.leader == id => {}
                        None => p.leader = NO_LEADER,
                    }
                }
                if (p.leader, &p.isr) != (before.0, &before.1) {
                    if p.leader != before.0 {
                        p.leader_epoch += 1;
                    }
                    p.partition_epoch += 1;
                }
            }
        }
        self.unclean_elections += unclean_elections;
    }

    /// A broker came back: partitions with no leader whose ISR names it get
    /// it as leader.
    fn elect_leaderless(&mut self, id: i32) {
        for topic in self.topics.values_mut() {
            for p in &mut topic.partitions {
                if p.leader == NO_LEADER && p.isr.contains(&id) {
                    p.leader = id;
                    p.leader_epoch += 1;
                    p.partition_epoch += 1;
                }
            }
        }
    }
}

fn unclean_allowed(configs: &BTreeMap<String, String>) -> bool {
    configs
        .get(UNCLEAN_LEADER_ELECTION)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn unknown_topic(name: &str) -> MetadataError {
    MetadataError::UnknownTopic(format!("topic '{name}' does not exist"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(image: &mut MetadataImage, id: i32) -> Uuid {
        let incarnation = Uuid::new_v4();
        image
            .apply(&Command::RegisterBroker {
                id,
                host: "h".into(),
                port: 9092 + id,
                incarnation,
                listeners: BTreeMap::new(),
            })
            .expect("register");
        incarnation
    }

    fn fence(image: &mut MetadataImage, id: i32, incarnation: Uuid) {
        image
            .apply(&Command::FenceBroker { id, incarnation })
            .expect("fence");
    }

    fn three_brokers() -> (MetadataImage, Vec<Uuid>) {
        let mut image = MetadataImage::default();
        let inc = (0..3).map(|id| register(&mut image, id)).collect();
        (image, inc)
    }

    fn create(image: &mut MetadataImage, name: &str, assignment: Vec<Vec<i32>>) {
        image
            .apply(&Command::CreateTopic {
                name: name.into(),
                id: Uuid::new_v4(),
                assignment,
                configs: BTreeMap::new(),
            })
            .expect("create");
    }

    #[test]
    fn created_partitions_start_with_all_live_replicas_in_sync() {
        let (mut image, _) = three_brokers();
        create(&mut image, "t", vec![vec![1, 2, 0], vec![2, 0, 1]]);
        let p = image.partition("t", 0).expect("p0");
        assert_eq!(p.leader, 1);
        assert_eq!(p.isr, vec![1, 2, 0]);
        assert_eq!(image.partition("t", 1).expect("p1").leader, 2);
        assert!(matches!(
            image.apply(&Command::CreateTopic {
                name: "t".into(),
                id: Uuid::new_v4(),
                assignment: vec![vec![0]],
                configs: BTreeMap::new()
            }),
            Err(MetadataError::TopicExists(_))
        ));
        assert!(matches!(
            image.apply(&Command::CreateTopic {
                name: "u".into(),
                id: Uuid::new_v4(),
                assignment: vec![vec![7]],
                configs: BTreeMap::new()
            }),
            Err(MetadataError::InvalidReplicaAssignment(_))
        ));
    }

    #[test]
    fn fencing_the_leader_elects_from_the_isr_and_bumps_epochs() {
        let (mut image, inc) = three_brokers();
        create(&mut image, "t", vec![vec![0, 1, 2]]);
        fence(&mut image, 0, inc[0]);
        let p = image.partition("t", 0).expect("p0");
        assert_eq!((p.leader, p.leader_epoch), (1, 1));
        assert_eq!(p.isr, vec![1, 2]);
        // A stale fence (old incarnation) after a restart changes nothing.
        let new = register(&mut image, 0);
        assert_ne!(new, inc[0]);
        let again = image
            .apply(&Command::FenceBroker {
                id: 0,
                incarnation: inc[0],
            })
            .expect("applies");
        assert!(matches!(again, Applied::Ignored { .. }));
        assert!(!image.brokers[&0].fenced);
    }

    #[test]
    fn controlled_shutdown_moves_leaders_keeps_the_broker_listed_and_never_loses_data() {
        let (mut image, inc) = three_brokers();
        let mut unclean = BTreeMap::new();
        unclean.insert(UNCLEAN_LEADER_ELECTION.to_string(), "true".to_string());
        create(&mut image, "t", vec![vec![0, 1, 2], vec![1, 0, 2]]);
        image
            .apply(&Command::CreateTopic {
                name: "alone".into(),
                id: Uuid::new_v4(),
                assignment: vec![vec![0, 1]],
                configs: unclean,
            })
            .expect("create");
        // "alone" has only broker 0 in sync: moving it would lose data.
        image
            .apply(&Command::AlterIsr {
                topic: "alone".into(),
                partition: 0,
                leader: 0,
                leader_epoch: 0,
                partition_epoch: 0,
                isr: vec![0],
            })
            .expect("shrink");
        let shutdown = Command::ControlledShutdown {
            id: 0,
            incarnation: inc[0],
        };
        image.apply(&shutdown).expect("controlled shutdown");
        let p0 = image.partition("t", 0).expect("p0");
        assert_eq!((p0.leader, p0.leader_epoch), (1, 1));
        assert_eq!(p0.isr, vec![1, 2]);
        assert_eq!(image.partition("t", 1).expect("p1").isr, vec![1, 2]);
        let alone = image.partition("alone", 0).expect("alone");
        assert_eq!((alone.leader, alone.isr.clone()), (0, vec![0]));
        let b = &image.brokers[&0];
        assert!(!b.fenced && b.shutting_down && !b.eligible());
        assert_eq!(image.live_brokers(), vec![1, 2]);
        // Not elected back while shutting down; a new incarnation is.
        let elect = Command::ElectLeader {
            topic: "t".into(),
            partition: 0,
            leader: 0,
        };
        assert!(image.apply(&elect).is_err());
        register(&mut image, 0);
        assert!(image.brokers[&0].eligible());
    }

    #[test]
    fn last_isr_member_stays_and_leads_again_when_it_returns() {
        let (mut image, inc) = three_brokers();
        create(&mut image, "t", vec![vec![0, 1]]);
        for id in [1, 0] {
            image
                .apply(&Command::FenceBroker {
                    id,
                    incarnation: inc[id as usize],
                })
                .expect("fence");
        }
        let p = image.partition("t", 0).expect("p0").clone();
        assert_eq!(p.leader, NO_LEADER);
        assert_eq!(p.isr, vec![0], "the last in-sync replica is remembered");
        // Broker 1 returning does not make it leader: it was out of sync.
        register(&mut image, 1);
        assert_eq!(image.partition("t", 0).expect("p0").leader, NO_LEADER);
        register(&mut image, 0);
        let p = image.partition("t", 0).expect("p0");
        assert_eq!(p.leader, 0);
        assert_eq!(image.unclean_elections, 0);
    }

    #[test]
    fn unclean_election_only_when_the_topic_allows_it() {
        let (mut image, inc) = three_brokers();
        let mut configs = BTreeMap::new();
        configs.insert(UNCLEAN_LEADER_ELECTION.to_string(), "true".to_string());
        image
            .apply(&Command::CreateTopic {
                name: "t".into(),
                id: Uuid::new_v4(),
                assignment: vec![vec![0, 1]],
                configs,
            })
            .expect("create");
        image
            .apply(&Command::AlterIsr {
                topic: "t".into(),
                partition: 0,
                leader: 0,
                leader_epoch: 0,
                partition_epoch: 0,
                isr: vec![0],
            })
            .expect("shrink");
        fence(&mut image, 0, inc[0]);
        let p = image.partition("t", 0).expect("p0");
        assert_eq!((p.leader, p.isr.clone()), (1, vec![1]));
        assert_eq!(image.unclean_elections, 1);
    }

    #[test]
    fn isr_changes_need_the_current_leader_and_partition_epoch() {
        let (mut image, inc) = three_brokers();
        create(&mut image, "t", vec![vec![0, 1, 2]]);
        let shrink = |leader, leader_epoch, partition_epoch, isr: Vec<i32>| Command::AlterIsr {
            topic: "t".into(),
            partition: 0,
            leader,
            leader_epoch,
            partition_epoch,
            isr,
        };
        assert!(matches!(
            image.apply(&shrink(1, 0, 0, vec![1, 2])),
            Err(MetadataError::FencedLeaderEpoch(_))
        ));
        image.apply(&shrink(0, 0, 0, vec![0, 2])).expect("shrink");
        assert_eq!(image.partition("t", 0).expect("p").isr, vec![0, 2]);
        assert!(matches!(
            image.apply(&shrink(0, 0, 0, vec![0, 1, 2])),
            Err(MetadataError::InvalidUpdateVersion(_))
        ));
        assert!(matches!(
            image.apply(&shrink(0, 0, 1, vec![2])),
            Err(MetadataError::IneligibleReplica(_))
        ));
        fence(&mut image, 1, inc[1]);
        let epoch = image.partition("t", 0).expect("p").partition_epoch;
        assert!(matches!(
            image.apply(&shrink(0, 0, epoch, vec![0, 1, 2])),
            Err(MetadataError::IneligibleReplica(_))
        ));
        // Ordered like the replica list, whatever order the leader sent.
        image
            .apply(&shrink(0, 0, epoch, vec![2, 0]))
            .expect("same set is fine");
        assert_eq!(image.partition("t", 0).expect("p").isr, vec![0, 2]);
    }

    #[test]
    fn preferred_leader_must_be_a_live_isr_member() {
        let (mut image, inc) = three_brokers();
        create(&mut image, "t", vec![vec![0, 1, 2]]);
        fence(&mut image, 0, inc[0]);
        let elect = Command::ElectLeader {
            topic: "t".into(),
            partition: 0,
            leader: 0,
        };
        register(&mut image, 0);
        assert!(matches!(
            image.apply(&elect),
            Err(MetadataError::IneligibleReplica(_))
        ));
        let p = image.partition("t", 0).expect("p").clone();
        image
            .apply(&Command::AlterIsr {
                topic: "t".into(),
                partition: 0,
                leader: p.leader,
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch,
                isr: vec![0, 1, 2],
            })
            .expect("expand");
        image.apply(&elect).expect("elect");
        let p = image.partition("t", 0).expect("p");
        assert_eq!((p.leader, p.leader_epoch), (0, 2));
    }

    #[test]
    fn plugin_versions_count_up_keep_their_kind_and_survive_serde() {
        let mut image = MetadataImage::default();
        let upload = |kind| Command::UploadPlugin {
            name: "p".into(),
            kind,
            wasm: Wasm(vec![0, 97, 115, 109].into()),
            sha256: "x".into(),
            uploaded_ms: 1,
            abi_version: 1,
        };
        assert_eq!(
            image.apply(&upload(PluginKind::Filter)),
            Ok(Applied::PluginVersion { version: 1 })
        );
        assert_eq!(
            image.apply(&upload(PluginKind::Filter)),
            Ok(Applied::PluginVersion { version: 2 })
        );
        assert!(matches!(
            image.apply(&upload(PluginKind::Partitioner)),
            Err(MetadataError::Plugin(_))
        ));
        let json = serde_json::to_string(&image).expect("serialize");
        let back: MetadataImage = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, image);
        image
            .apply(&Command::DeletePlugin { name: "p".into() })
            .expect("delete");
        assert!(image.plugins.is_empty());
    }

    #[test]
    fn the_first_cluster_id_committed_is_the_cluster_id() {
        let mut image = MetadataImage::default();
        let init = |id: &str| Command::InitCluster { id: id.into() };
        assert_eq!(image.apply(&init("a")), Ok(Applied::Done));
        assert!(matches!(
            image.apply(&init("b")),
            Ok(Applied::Ignored { .. })
        ));
        assert_eq!(image.cluster_id.as_deref(), Some("a"));
    }

    #[test]
    fn producer_id_blocks_never_overlap() {
        let mut image = MetadataImage::default();
        let a = image.apply(&Command::AllocateProducerIds { count: 1000 });
        let b = image.apply(&Command::AllocateProducerIds { count: 1000 });
        assert_eq!(a, Ok(Applied::ProducerIds { first: 0 }));
        assert_eq!(b, Ok(Applied::ProducerIds { first: 1000 }));
    }

    fn reassign(image: &mut MetadataImage, target: Option<Vec<i32>>) -> CommandResult {
        image.apply(&Command::ReassignPartition {
            topic: "t".into(),
            partition: 0,
            target,
        })
    }

    /// The leader's ISR change, from what the image says now.
    fn set_isr(image: &mut MetadataImage, isr: Vec<i32>) -> CommandResult {
        let p = image.partition("t", 0).expect("p0").clone();
        image.apply(&Command::AlterIsr {
            topic: "t".into(),
            partition: 0,
            leader: p.leader,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr,
        })
    }

    #[test]
    fn a_reassignment_completes_when_the_target_is_in_sync_and_moves_the_leader_inside_the_isr() {
        let (mut image, _) = three_brokers();
        register(&mut image, 3);
        create(&mut image, "t", vec![vec![0, 1]]);
        assert_eq!(reassign(&mut image, Some(vec![2, 3])), Ok(Applied::Done));
        let p = image.partition("t", 0).expect("p0").clone();
        assert_eq!(p.replicas, vec![2, 3, 0, 1], "target first, then removing");
        assert_eq!(
            (p.adding.clone(), p.removing.clone()),
            (vec![2, 3], vec![0, 1])
        );
        assert_eq!(
            (p.leader, p.isr.clone()),
            (0, vec![0, 1]),
            "nothing moves yet"
        );
        assert_eq!(p.target_replicas(), vec![2, 3]);
        assert_eq!(p.original_replicas(), vec![0, 1]);

        // One new replica in sync: still moving.
        set_isr(&mut image, vec![0, 1, 2]).expect("expand");
        assert!(image.partition("t", 0).expect("p0").reassigning());
        // Both: done, the removed replicas leave and 2 leads in a new epoch.
        set_isr(&mut image, vec![0, 1, 2, 3]).expect("expand");
        let done = image.partition("t", 0).expect("p0");
        assert_eq!(done.replicas, vec![2, 3]);
        assert_eq!(done.isr, vec![2, 3]);
        assert_eq!((done.leader, done.leader_epoch), (2, p.leader_epoch + 1));
        assert!(!done.reassigning());
        assert!(done.partition_epoch > p.partition_epoch);
    }

    #[test]
    fn shrinking_a_partition_completes_at_once_and_a_kept_leader_stays() {
        let (mut image, _) = three_brokers();
        create(&mut image, "t", vec![vec![0, 1, 2]]);
        assert_eq!(reassign(&mut image, Some(vec![1, 0])), Ok(Applied::Done));
        let p = image.partition("t", 0).expect("p0");
        assert_eq!(
            (p.replicas.clone(), p.isr.clone()),
            (vec![1, 0], vec![1, 0]),
            "the ISR in replica order"
        );
        assert_eq!(
            (p.leader, p.leader_epoch),
            (0, 0),
            "the leader is a target replica"
        );
        assert!(!p.reassigning());
        // The same target again changes nothing.
        assert!(matches!(
            reassign(&mut image, Some(vec![1, 0])),
            Ok(Applied::Ignored { .. })
        ));
    }

    #[test]
    fn cancelling_returns_to_the_original_replicas_and_bad_targets_are_refused() {
        let (mut image, _) = three_brokers();
        register(&mut image, 3);
        create(&mut image, "t", vec![vec![0, 1]]);
        assert!(matches!(
            reassign(&mut image, None),
            Err(MetadataError::NoReassignmentInProgress(_))
        ));
        for bad in [vec![], vec![1, 1], vec![0, 9]] {
            assert!(
                matches!(
                    reassign(&mut image, Some(bad.clone())),
                    Err(MetadataError::InvalidReplicaAssignment(_))
                ),
                "{bad:?}"
            );
        }
        reassign(&mut image, Some(vec![1, 2])).expect("start");
        // A new target replaces the move: 1 is now removing too, 2 is
        // still being added.
        reassign(&mut image, Some(vec![2, 0])).expect("replace");
        let p = image.partition("t", 0).expect("p0");
        assert_eq!(p.replicas, vec![2, 0, 1]);
        assert_eq!((p.adding.clone(), p.removing.clone()), (vec![2], vec![1]));
        // Replaced again by one without 2: 2 (being added, never an
        // original replica) just goes; cancelling returns to [0, 1].
        reassign(&mut image, Some(vec![3, 0])).expect("replace");
        let p = image.partition("t", 0).expect("p0");
        assert_eq!(p.replicas, vec![3, 0, 1]);
        assert_eq!((p.adding.clone(), p.removing.clone()), (vec![3], vec![1]));
        // Back to a target already in sync: done at once.
        reassign(&mut image, Some(vec![0, 1])).expect("replace");
        let p = image.partition("t", 0).expect("p0");
        assert_eq!(
            (p.replicas.clone(), p.isr.clone()),
            (vec![0, 1], vec![0, 1])
        );
        assert!(!p.reassigning(), "its target was already in sync");

        reassign(&mut image, Some(vec![1, 2])).expect("start again");
        assert_eq!(reassign(&mut image, None), Ok(Applied::Done));
        let p = image.partition("t", 0).expect("p0");
        // In the moving order (target first), as Kafka's revert leaves it.
        assert_eq!(
            (p.replicas.clone(), p.isr.clone(), p.leader),
            (vec![1, 0], vec![1, 0], 0)
        );
        assert!(!p.reassigning());
    }

    #[test]
    fn a_broker_is_unregistered_only_when_stopped_and_empty() {
        let (mut image, inc) = three_brokers();
        create(&mut image, "t", vec![vec![0, 1]]);
        let unregister =
            |image: &mut MetadataImage, id| image.apply(&Command::UnregisterBroker { id });
        assert!(
            matches!(
                unregister(&mut image, 2),
                Err(MetadataError::IneligibleReplica(_))
            ),
            "live"
        );
        fence(&mut image, 1, inc[1]);
        assert!(
            matches!(
                unregister(&mut image, 1),
                Err(MetadataError::InvalidReplicaAssignment(_))
            ),
            "holds t-0"
        );
        fence(&mut image, 2, inc[2]);
        assert_eq!(unregister(&mut image, 2), Ok(Applied::Done));
        assert!(!image.brokers.contains_key(&2));
        assert!(matches!(
            unregister(&mut image, 2),
            Err(MetadataError::UnknownBroker(_))
        ));
    }

    #[test]
    fn images_without_reassignment_fields_still_load() {
        let (mut image, _) = three_brokers();
        create(&mut image, "t", vec![vec![0, 1]]);
        let json = serde_json::to_string(image.partition("t", 0).expect("p0")).expect("json");
        assert!(!json.contains("adding"), "{json}");
        let back: PartitionImage = serde_json::from_str(&json).expect("parse");
        assert_eq!(&back, image.partition("t", 0).expect("p0"));
    }
}
