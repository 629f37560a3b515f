//! The topic registry: this broker's materialization of the topics in the
//! controller quorum's metadata image. The image says which topics exist,
//! where their replicas live and with which configs; the registry opens the
//! logs of the partitions placed here and keeps `Topic` values (copy on
//! write) for the request handlers. Changes go through the quorum
//! (`propose`) and come back through `sync`.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uuid::Uuid;

use sluice_metadata::image::{Command, MetadataError, MetadataImage, PartitionImage, TopicImage};
use sluice_metadata::quorum::Quorum;
use sluice_metadata::topic_config;
use sluice_plugin_host::Bindings;
use sluice_storage::{LogConfig, PartitionLog, sync_dir};

pub use topic_config::META_DIR;
/// Most partitions one topic may have (each is a directory and open files).
pub const MAX_PARTITIONS: usize = 100_000;
const DELETED_SUFFIX: &str = ".deleted";

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("topic '{0}' already exists")]
    AlreadyExists(String),
    #[error("topic '{0}' does not exist")]
    Unknown(String),
    #[error("{0}")]
    InvalidName(String),
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("{0}")]
    InvalidReplicationFactor(String),
    #[error("{0}")]
    InvalidReplicaAssignment(String),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("{0}")]
    InUse(String),
    /// The controller quorum did not commit the change in time.
    #[error("controller: {0}")]
    Controller(String),
    #[error("storage error: {0}")]
    Io(#[from] io::Error),
}

impl From<MetadataError> for TopicError {
    fn from(e: MetadataError) -> TopicError {
        match e {
            MetadataError::TopicExists(m) => TopicError::AlreadyExists(m),
            MetadataError::UnknownTopic(m) => TopicError::Unknown(m),
            MetadataError::InvalidPartitions(m) => TopicError::InvalidPartitions(m),
            MetadataError::InvalidReplicaAssignment(m) | MetadataError::UnknownBroker(m) => {
                TopicError::InvalidReplicaAssignment(m)
            }
            MetadataError::FencedLeaderEpoch(m)
            | MetadataError::InvalidUpdateVersion(m)
            | MetadataError::IneligibleReplica(m)
            | MetadataError::Plugin(m)
            | MetadataError::ResourceNotFound(m)
            | MetadataError::NoReassignmentInProgress(m) => TopicError::Controller(m),
        }
    }
}

/// A topic as the metadata image describes it.
pub type TopicMeta = TopicImage;

/// A live topic: metadata plus the open logs of the partitions placed on
/// this broker. Replaced as a whole (copy on write) when it changes.
pub struct Topic {
    pub meta: TopicMeta,
    /// `partitions[p]` is `None` where partition `p` lives on other brokers.
    pub partitions: Vec<Option<Arc<PartitionLog>>>,
    /// Plugin bindings parsed from the configs; `None` keeps the produce
    /// path free of any plugin work.
    pub bindings: Option<Arc<Bindings>>,
    /// `min.insync.replicas`, parsed once.
    pub min_insync_replicas: usize,
}

pub use sluice_metadata::image::VIEW_OF;

impl Topic {
    pub fn new(meta: TopicMeta, partitions: Vec<Option<Arc<PartitionLog>>>) -> Topic {
        let bindings = Bindings::from_configs(&meta.configs);
        Topic {
            bindings: (!bindings.is_empty()).then(|| Arc::new(bindings)),
            min_insync_replicas: topic_config::min_insync_replicas(&meta.configs),
            meta,
            partitions,
        }
    }

    /// The local log of partition `index`, if it is placed on this broker.
    pub fn partition(&self, index: i32) -> Option<&Arc<PartitionLog>> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.partitions.get(i))
            .and_then(Option::as_ref)
    }

    /// Leader, ISR and epochs of partition `index`.
    pub fn state(&self, index: i32) -> Option<&PartitionImage> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.meta.partitions.get(i))
    }

    /// The partitions whose logs live on this broker.
    pub fn local_partitions(&self) -> impl Iterator<Item = &Arc<PartitionLog>> {
        self.partitions.iter().flatten()
    }
}

/// Kafka's topic name rules (see `topic_config::validate_topic_name`).
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    topic_config::validate_topic_name(name).map_err(TopicError::InvalidName)
}

/// Storage settings for a topic. Inputs were validated on the way in.
pub fn log_config(overrides: &BTreeMap<String, String>) -> LogConfig {
    let int = |name| topic_config::effective_i64(overrides, name);
    LogConfig {
        segment_bytes: int("segment.bytes").max(1024) as u64,
        segment_ms: int("segment.ms").max(1),
        retention_ms: int("retention.ms"),
        retention_bytes: int("retention.bytes"),
        max_message_bytes: int("max.message.bytes").max(0) as usize,
        flush_messages: int("flush.messages").max(1),
        flush_ms: int("flush.ms").max(0),
        index_interval_bytes: int("index.interval.bytes").max(0) as usize,
        log_append_time: overrides
            .get("message.timestamp.type")
            .is_some_and(|v| v == "LogAppendTime"),
    }
}

pub struct TopicRegistry {
    data_dir: PathBuf,
    node_id: i32,
    quorum: Arc<Quorum>,
    /// The last materialization: the next one reuses its open logs.
    current: Mutex<Arc<BTreeMap<String, Arc<Topic>>>>,
    /// Serializes this broker's own metadata changes, so check-then-propose
    /// sequences (name collisions, view rules) see each other.
    write_lock: tokio::sync::Mutex<()>,
}

/// A topic to create, already decoded from the request.
pub struct NewTopic {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
    /// Explicit assignment; empty to use the default placement.
    pub assignment: Vec<Vec<i32>>,
    pub configs: BTreeMap<String, String>,
}

/// How long a metadata change may wait for the controller.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(30);

impl TopicRegistry {
    /// Opens the partitions the current metadata image places on this
    /// broker (recovering their logs) and removes directories of topics
    /// deleted while it was down.
    pub fn open(
        data_dir: &Path,
        node_id: i32,
        quorum: Arc<Quorum>,
    ) -> anyhow::Result<TopicRegistry> {
        fs::create_dir_all(data_dir.join(META_DIR))?;
        remove_deleted_dirs(data_dir);
        let registry = TopicRegistry {
            data_dir: data_dir.to_path_buf(),
            node_id,
            quorum,
            current: Mutex::new(Arc::default()),
            write_lock: tokio::sync::Mutex::new(()),
        };
        registry.materialize(&registry.quorum.image());
        registry.remove_orphans();
        Ok(registry)
    }

    /// The topics of the last materialization (for the applier and
    /// shutdown; request handlers read them from the published view).
    pub fn materialized(&self) -> Arc<BTreeMap<String, Arc<Topic>>> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Brings the local topics in line with `image`: opens logs of
    /// partitions newly placed here, applies config changes, and moves
    /// aside the partitions of deleted topics and those a reassignment
    /// moved off this broker. A partition whose log cannot be
    /// opened is logged and left out (`None`); the rest still apply.
    /// Called by the applier only, for every applied image in order.
    pub fn materialize(&self, image: &MetadataImage) -> Arc<BTreeMap<String, Arc<Topic>>> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let mut next: BTreeMap<String, Arc<Topic>> = BTreeMap::new();
        let mut moved_off: Vec<Arc<PartitionLog>> = Vec::new();
        for meta in image.topics.values().filter(|t| t.view_of().is_none()) {
            let existing = current.get(&meta.name).filter(|t| t.meta.id == meta.id);
            let config = log_config(&meta.configs);
            let mut partitions = Vec::with_capacity(meta.partitions.len());
            for (i, p) in meta.partitions.iter().enumerate() {
                let have = existing.and_then(|t| t.partitions.get(i).cloned().flatten());
                let log = match (have, p.replicas.contains(&self.node_id)) {
                    (Some(log), true) => Some(log),
                    (Some(log), false) => {
                        tracing::info!(topic = %meta.name, partition = i, replicas = ?p.replicas, "replica moved off this broker; removing its log");
                        moved_off.push(log);
                        None
                    }
                    (None, true) => match self.open_partition(meta, i, config.clone()) {
                        Ok(log) => Some(Arc::new(log)),
                        Err(e) => {
                            tracing::error!(topic = %meta.name, partition = i, error = %e, "cannot open partition");
                            None
                        }
                    },
                    (None, false) => None,
                };
                partitions.push(log);
            }
            if let Some(old) = existing
                && old.meta.configs != meta.configs
            {
                for log in partitions.iter().flatten() {
                    log.set_config(config.clone());
                }
            }
            next.insert(
                meta.name.clone(),
                reuse_or_new(existing, meta.clone(), partitions),
            );
        }
        // A view shares its source's partitions and placement.
        for meta in image.topics.values() {
            let Some(source) = meta.view_of() else {
                continue;
            };
            let Some(src) = next.get(source).cloned() else {
                tracing::warn!(view = %meta.name, source, "view of a missing topic skipped");
                continue;
            };
            let mut vmeta = meta.clone();
            vmeta.partitions = src.meta.partitions.clone();
            let existing = current.get(&meta.name);
            next.insert(
                meta.name.clone(),
                reuse_or_new(existing, vmeta, src.partitions.clone()),
            );
        }
        let gone: Vec<Arc<Topic>> = current
            .values()
            .filter(|t| t.meta.view_of().is_none())
            .filter(|t| {
                next.get(&t.meta.name)
                    .is_none_or(|n| n.meta.id != t.meta.id)
            })
            .cloned()
            .collect();
        let next = Arc::new(next);
        *current = next.clone();
        drop(current);
        for topic in gone {
            self.move_aside(topic.partitions.iter().flatten(), topic.meta.id);
        }
        for log in &moved_off {
            // Unique: the same replica may come and go more than once.
            self.move_aside(std::iter::once(log), Uuid::new_v4());
        }
        next
    }

    /// Directories of partitions whose topic no longer exists (deleted
    /// while this broker was down) or which are no longer placed here.
    fn remove_orphans(&self) {
        let Ok(entries) = fs::read_dir(&self.data_dir) else {
            return;
        };
        let topics = self.materialized();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(id) = read_partition_topic_id(&path) else {
                continue;
            };
            let name = entry.file_name().to_string_lossy().to_string();
            let owned = topics.values().any(|t| {
                t.meta.id == id
                    && t.partitions
                        .iter()
                        .flatten()
                        .any(|p| p.dir() == path.as_path())
            });
            if !owned {
                tracing::info!(dir = %name, "removing partition of a deleted topic");
                if let Err(e) = fs::remove_dir_all(&path) {
                    tracing::warn!(dir = %path.display(), error = %e, "could not remove orphaned partition");
                }
            }
        }
    }

    /// Checks a new topic against the rules and the committed topics. With
    /// `validate_only` this is all CreateTopics does.
    pub fn check_new(&self, t: &NewTopic, brokers: &[i32]) -> Result<Vec<Vec<i32>>, TopicError> {
        validate_topic_name(&t.name)?;
        let image = self.quorum.image();
        if image.topics.contains_key(&t.name) {
            return Err(TopicError::AlreadyExists(t.name.clone()));
        }
        let collides = |a: &str| a.replace('.', "_");
        if let Some(other) = image
            .topics
            .keys()
            .find(|k| collides(k) == collides(&t.name))
        {
            return Err(TopicError::InvalidName(format!(
                "topic '{}' collides with existing topic '{other}' ('.' and '_' are interchangeable in metric names)",
                t.name
            )));
        }
        topic_config::validate_all(&t.configs).map_err(TopicError::InvalidConfig)?;
        if t.assignment.len() > MAX_PARTITIONS {
            return Err(TopicError::InvalidPartitions(format!(
                "{} partitions is more than the {MAX_PARTITIONS} this broker allows per topic",
                t.assignment.len()
            )));
        }
        if !t.assignment.is_empty() {
            validate_assignment(&t.assignment, brokers)?;
            return Ok(t.assignment.clone());
        }
        if t.partitions <= 0 {
            return Err(TopicError::InvalidPartitions(format!(
                "number of partitions must be positive, got {}",
                t.partitions
            )));
        }
        if t.partitions as usize > MAX_PARTITIONS {
            return Err(TopicError::InvalidPartitions(format!(
                "{} partitions is more than the {MAX_PARTITIONS} this broker allows per topic",
                t.partitions
            )));
        }
        let rf = t.replication_factor;
        if rf <= 0 || rf as usize > brokers.len() {
            return Err(TopicError::InvalidReplicationFactor(format!(
                "replication factor {rf} is not between 1 and the {} available broker(s)",
                brokers.len()
            )));
        }
        sluice_placement::assign(brokers, 0, t.partitions as usize, rf as usize)
            .map_err(|e| TopicError::InvalidReplicationFactor(e.0))
    }

    /// Creates a topic; returns the quorum index it was committed at (wait
    /// for a view with it to see the topic).
    pub async fn create(&self, t: NewTopic, brokers: &[i32]) -> Result<u64, TopicError> {
        let _w = self.write_lock.lock().await;
        let assignment = match t.configs.get(VIEW_OF).filter(|s| !s.is_empty()) {
            Some(source) => self.check_view(&t, source, brokers)?,
            None => self.check_new(&t, brokers)?,
        };
        self.propose(Command::CreateTopic {
            name: t.name.clone(),
            id: Uuid::new_v4(),
            assignment,
            configs: t.configs,
        })
        .await
    }

    /// A view takes its source's placement; it owns no data of its own.
    fn check_view(
        &self,
        t: &NewTopic,
        source: &str,
        brokers: &[i32],
    ) -> Result<Vec<Vec<i32>>, TopicError> {
        let image = self.quorum.image();
        let src = image.topics.get(source).ok_or_else(|| {
            TopicError::InvalidConfig(format!("{VIEW_OF}: topic '{source}' does not exist"))
        })?;
        if src.view_of().is_some() {
            return Err(TopicError::InvalidConfig(format!(
                "{VIEW_OF}: '{source}' is itself a view"
            )));
        }
        let probe = NewTopic {
            name: t.name.clone(),
            partitions: src.partitions.len() as i32,
            replication_factor: 1,
            assignment: vec![],
            configs: t.configs.clone(),
        };
        self.check_new(&probe, brokers)?;
        Ok(src.replica_lists())
    }

    /// Opens a partition log placed on this broker. A directory left by
    /// an older topic of the same name (its id marker differs) is wiped
    /// first: a new topic starts empty.
    fn open_partition(
        &self,
        meta: &TopicMeta,
        p: usize,
        config: LogConfig,
    ) -> io::Result<PartitionLog> {
        let name = format!("{}-{p}", meta.name);
        let dir = self.data_dir.join(&name);
        match read_partition_topic_id(&dir) {
            Some(id) if id == meta.id => {}
            Some(_) => fs::remove_dir_all(&dir)?,
            // A directory without a marker predates markers: adopt it.
            None => {}
        }
        let log = PartitionLog::open(name, dir.clone(), config)?;
        write_partition_topic_id(&dir, meta.id)?;
        Ok(log)
    }

    /// Deletes a topic; returns its id and the quorum index of the delete.
    pub async fn delete(&self, name: &str) -> Result<(Uuid, u64), TopicError> {
        let _w = self.write_lock.lock().await;
        let image = self.quorum.image();
        let topic = image
            .topics
            .get(name)
            .ok_or_else(|| TopicError::Unknown(name.to_string()))?;
        let views: Vec<String> = image
            .topics
            .values()
            .filter(|t| t.view_of() == Some(name))
            .map(|v| v.name.clone())
            .collect();
        if !views.is_empty() {
            return Err(TopicError::InUse(format!(
                "topic '{name}' has views {views:?}; delete them first"
            )));
        }
        let index = self
            .propose(Command::DeleteTopic {
                name: name.to_string(),
            })
            .await?;
        Ok((topic.id, index))
    }

    /// Renames partition logs aside (atomic, so a crash never resurrects
    /// half a topic), then removes them in the background. `tag` makes the
    /// names unique (the topic id for a deleted topic).
    fn move_aside<'a>(&self, logs: impl Iterator<Item = &'a Arc<PartitionLog>>, tag: Uuid) {
        let mut doomed = Vec::new();
        for p in logs {
            let target =
                self.data_dir
                    .join(format!("{}.{}{DELETED_SUFFIX}", p.name(), tag.simple()));
            match fs::rename(p.dir(), &target) {
                Ok(()) => doomed.push(target),
                Err(e) => {
                    tracing::warn!(partition = p.name(), error = %e, "could not move deleted partition aside")
                }
            }
        }
        if doomed.is_empty() {
            return;
        }
        let remove = move || {
            for d in doomed {
                if let Err(e) = fs::remove_dir_all(&d) {
                    tracing::warn!(dir = %d.display(), error = %e, "could not remove deleted partition");
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(remove);
            }
            Err(_) => remove(),
        }
    }

    /// Grows a topic to `count` partitions; returns the quorum index of the
    /// change (`None` with `validate_only`).
    pub async fn add_partitions(
        &self,
        name: &str,
        count: i32,
        assignment: Option<Vec<Vec<i32>>>,
        brokers: &[i32],
        validate_only: bool,
    ) -> Result<Option<u64>, TopicError> {
        let _w = self.write_lock.lock().await;
        let image = self.quorum.image();
        let topic = image
            .topics
            .get(name)
            .ok_or_else(|| TopicError::Unknown(name.to_string()))?;
        if let Some(source) = topic.view_of() {
            return Err(TopicError::InvalidPartitions(format!(
                "'{name}' is a view of '{source}'; add partitions to '{source}'"
            )));
        }
        let current = topic.partitions.len();
        if count <= 0 || (count as usize) <= current {
            return Err(TopicError::InvalidPartitions(format!(
                "topic '{name}' has {current} partitions; the new count {count} must be larger"
            )));
        }
        if count as usize > MAX_PARTITIONS {
            return Err(TopicError::InvalidPartitions(format!(
                "{count} partitions is more than the {MAX_PARTITIONS} this broker allows per topic"
            )));
        }
        let added = count as usize - current;
        let rf = topic.partitions.first().map_or(1, |p| p.replicas.len());
        let new_replicas = match assignment {
            Some(a) => {
                if a.len() != added {
                    return Err(TopicError::InvalidReplicaAssignment(format!(
                        "{} assignments given for {added} new partitions",
                        a.len()
                    )));
                }
                validate_assignment(&a, brokers)?;
                a
            }
            None => sluice_placement::assign(brokers, current, added, rf)
                .map_err(|e| TopicError::InvalidReplicationFactor(e.0))?,
        };
        if validate_only {
            return Ok(None);
        }
        self.propose(Command::CreatePartitions {
            name: name.to_string(),
            assignment: new_replicas,
        })
        .await
        .map(Some)
    }

    /// Replaces a topic's config overrides; returns the quorum index.
    pub async fn set_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<u64, TopicError> {
        let _w = self.write_lock.lock().await;
        let image = self.quorum.image();
        let topic = image
            .topics
            .get(name)
            .ok_or_else(|| TopicError::Unknown(name.to_string()))?;
        topic_config::validate_all(&configs).map_err(TopicError::InvalidConfig)?;
        if configs.get(VIEW_OF) != topic.configs.get(VIEW_OF) {
            return Err(TopicError::InvalidConfig(format!(
                "{VIEW_OF} is fixed when a topic is created"
            )));
        }
        self.propose(Command::SetTopicConfigs {
            name: name.to_string(),
            configs,
        })
        .await
    }

    /// Commits a change through the controller; returns its log index.
    async fn propose(&self, command: Command) -> Result<u64, TopicError> {
        let proposed = self
            .quorum
            .propose_indexed(command, PROPOSE_TIMEOUT)
            .await
            .map_err(|e| TopicError::Controller(e.to_string()))?;
        match proposed.result {
            Ok(_) => Ok(proposed.index),
            Err(e) => Err(TopicError::from(e)),
        }
    }

    pub fn node_id(&self) -> i32 {
        self.node_id
    }
}

/// The unchanged topic itself when nothing about it changed (most metadata
/// changes touch one partition or none), so its plugin bindings are not
/// parsed again; otherwise a new one.
fn reuse_or_new(
    existing: Option<&Arc<Topic>>,
    meta: TopicMeta,
    partitions: Vec<Option<Arc<PartitionLog>>>,
) -> Arc<Topic> {
    let same_logs = |old: &Topic| {
        old.partitions.len() == partitions.len()
            && old
                .partitions
                .iter()
                .zip(&partitions)
                .all(|(a, b)| match (a, b) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                })
    };
    match existing {
        Some(old) if old.meta == meta && same_logs(old) => old.clone(),
        _ => Arc::new(Topic::new(meta, partitions)),
    }
}

/// Checks an explicit replica assignment (see `sluice_placement::validate`).
fn validate_assignment(assignment: &[Vec<i32>], brokers: &[i32]) -> Result<(), TopicError> {
    sluice_placement::validate(assignment, brokers)
        .map_err(|e| TopicError::InvalidReplicaAssignment(e.0))
}

const TOPIC_ID_FILE: &str = "partition.metadata";

/// The id of the topic a partition directory belongs to, if it has a marker.
fn read_partition_topic_id(dir: &Path) -> Option<Uuid> {
    let text = fs::read_to_string(dir.join(TOPIC_ID_FILE)).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("topic_id: "))?
        .trim()
        .parse()
        .ok()
}

/// Kafka's `partition.metadata`: ties a directory to one topic id, so a
/// re-created topic of the same name never inherits old data.
fn write_partition_topic_id(dir: &Path, id: Uuid) -> io::Result<()> {
    if read_partition_topic_id(dir) == Some(id) {
        return Ok(());
    }
    let path = dir.join(TOPIC_ID_FILE);
    let tmp = dir.join("partition.metadata.tmp");
    fs::write(&tmp, format!("version: 0\ntopic_id: {id}\n"))?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, &path)?;
    sync_dir(dir)
}

fn remove_deleted_dirs(data_dir: &Path) {
    let Ok(entries) = fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .ends_with(DELETED_SUFFIX)
            && let Err(e) = fs::remove_dir_all(entry.path())
        {
            tracing::warn!(dir = %entry.path().display(), error = %e, "could not remove deleted partition");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_metadata::quorum;

    #[test]
    fn default_configs_resolve_to_log_defaults() {
        assert_eq!(log_config(&BTreeMap::new()), LogConfig::default());
    }

    #[test]
    fn overrides_change_the_log_config() {
        let mut o = BTreeMap::new();
        o.insert("segment.bytes".to_string(), "2048".to_string());
        o.insert(
            "message.timestamp.type".to_string(),
            "LogAppendTime".to_string(),
        );
        let c = log_config(&o);
        assert_eq!(c.segment_bytes, 2048);
        assert!(c.log_append_time);
    }

    #[test]
    fn names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_x-2").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("has space").is_err());
        assert!(validate_topic_name(&"a".repeat(250)).is_err());
        assert!(validate_topic_name(&"a".repeat(249)).is_ok());
    }

    fn new_topic(name: &str, partitions: i32) -> NewTopic {
        NewTopic {
            name: name.into(),
            partitions,
            replication_factor: 1,
            assignment: vec![],
            configs: BTreeMap::new(),
        }
    }

    /// What the applier does after each committed change.
    fn applied(reg: &TopicRegistry, quorum: &Quorum) -> Arc<BTreeMap<String, Arc<Topic>>> {
        reg.materialize(&quorum.image())
    }

    #[tokio::test]
    async fn topics_come_back_from_the_quorum_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        {
            let quorum = quorum::single_voter_for_tests(dir.path()).await;
            let reg = TopicRegistry::open(&data, 0, quorum.clone()).expect("open");
            let mut t = new_topic("t", 3);
            t.configs.insert("retention.ms".into(), "1000".into());
            reg.create(t, &[0]).await.expect("create");
            assert!(matches!(
                reg.check_new(&new_topic("t", 1), &[0]),
                Err(TopicError::AlreadyExists(_))
            ));
            reg.create(new_topic("gone", 1), &[0])
                .await
                .expect("create");
            let topics = applied(&reg, &quorum);
            let gone = topics.get("gone").expect("materialized");
            let gone_dir = gone.partition(0).expect("local").dir().to_path_buf();
            reg.delete("gone").await.expect("delete");
            assert!(!applied(&reg, &quorum).contains_key("gone"));
            assert!(!gone_dir.exists(), "moved aside once applied");
            quorum.shutdown().await;
        }
        // A directory of a topic deleted while the broker was down.
        let orphan = data.join("old-0");
        fs::create_dir_all(&orphan).expect("mkdir");
        write_partition_topic_id(&orphan, Uuid::new_v4()).expect("marker");
        let quorum = quorum::single_voter_for_tests(dir.path()).await;
        let reg = TopicRegistry::open(&data, 0, quorum.clone()).expect("reopen");
        assert!(!orphan.exists(), "orphaned partition removed");
        assert!(
            matches!(
                reg.add_partitions("t", i32::MAX, None, &[0], true).await,
                Err(TopicError::InvalidPartitions(_))
            ),
            "a huge partition count is refused before anything is built"
        );
        let t = reg.materialized().get("t").cloned().expect("persisted");
        assert_eq!(t.local_partitions().count(), 3);
        assert_eq!(
            t.meta.configs.get("retention.ms").map(String::as_str),
            Some("1000")
        );
        // A re-created topic never inherits the old one's data.
        let old_id = t.meta.id;
        reg.delete("t").await.expect("delete");
        applied(&reg, &quorum);
        reg.create(new_topic("t", 1), &[0]).await.expect("recreate");
        let t2 = applied(&reg, &quorum).get("t").cloned().expect("recreated");
        assert_ne!(t2.meta.id, old_id);
        assert_eq!(t2.partition(0).expect("local").log_end_offset(), 0);
        quorum.shutdown().await;
    }
}
