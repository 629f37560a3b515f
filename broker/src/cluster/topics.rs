//! The topic registry: which topics exist, their partitions' logs, replica
//! assignments and config overrides. Metadata is persisted atomically
//! (write, fsync, rename) in `<data>/__sluice_meta/topics.json`, guarded by
//! a CRC, so it survives crashes and restarts.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::topic_config;
use crate::log::{self, PartitionLog};
use crate::plugins::Bindings;

pub const META_DIR: &str = "__sluice_meta";
/// Most partitions one topic may have (each is a directory and open files).
pub const MAX_PARTITIONS: usize = 100_000;
const TOPICS_FILE: &str = "topics.json";
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
    #[error("storage error: {0}")]
    Io(#[from] io::Error),
}

/// Persisted description of a topic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TopicMeta {
    pub name: String,
    pub id: Uuid,
    /// replicas[p] = broker ids holding partition p, preferred leader first.
    pub replicas: Vec<Vec<i32>>,
    pub configs: BTreeMap<String, String>,
}

/// A live topic: metadata plus the open logs of its partitions. Replaced as
/// a whole (copy on write) when it changes.
pub struct Topic {
    pub meta: TopicMeta,
    pub partitions: Vec<Arc<PartitionLog>>,
    /// Plugin bindings parsed from the configs; `None` keeps the produce
    /// path free of any plugin work.
    pub bindings: Option<Arc<Bindings>>,
}

/// Config naming the topic a view reads (see `TopicMeta::view_of`).
pub const VIEW_OF: &str = "sluice.view.of";

impl TopicMeta {
    /// A view is a read-only topic sharing another topic's partitions, read
    /// through its `sluice.fetch.filters`: consumers that subscribe to it get
    /// the filtered records with their stored offsets, with no client change.
    pub fn view_of(&self) -> Option<&str> {
        self.configs
            .get(VIEW_OF)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }
}

impl Topic {
    pub fn new(meta: TopicMeta, partitions: Vec<Arc<PartitionLog>>) -> Topic {
        let bindings = Bindings::from_configs(&meta.configs);
        Topic {
            bindings: (!bindings.is_empty()).then(|| Arc::new(bindings)),
            meta,
            partitions,
        }
    }

    pub fn partition(&self, index: i32) -> Option<&Arc<PartitionLog>> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.partitions.get(i))
    }
}

/// Kafka's topic name rules: 1..=249 chars of [a-zA-Z0-9._-], not "." or "..".
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::InvalidName("topic name is empty".into()));
    }
    if name == "." || name == ".." {
        return Err(TopicError::InvalidName(format!(
            "topic name cannot be '{name}'"
        )));
    }
    if name.len() > 249 {
        return Err(TopicError::InvalidName(format!(
            "topic name is {} characters, the maximum is 249",
            name.len()
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(TopicError::InvalidName(format!(
            "topic name '{name}' contains '{c}'; only ASCII letters, digits, '.', '_' and '-' are allowed"
        )));
    }
    if name.starts_with(META_DIR) {
        return Err(TopicError::InvalidName(format!(
            "topic name '{name}' is reserved"
        )));
    }
    Ok(())
}

pub struct TopicRegistry {
    data_dir: PathBuf,
    node_id: i32,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serializes metadata changes so persistence matches memory order.
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

impl TopicRegistry {
    /// Loads persisted topics and opens (recovers) every partition log.
    pub fn open(data_dir: &Path, node_id: i32) -> anyhow::Result<TopicRegistry> {
        let meta_dir = data_dir.join(META_DIR);
        fs::create_dir_all(&meta_dir)?;
        remove_deleted_dirs(data_dir);
        let metas = read_topics_file(&meta_dir.join(TOPICS_FILE))?;
        let mut topics = BTreeMap::new();
        let (views, metas): (Vec<TopicMeta>, Vec<TopicMeta>) =
            metas.into_iter().partition(|m| m.view_of().is_some());
        for meta in metas {
            let config = topic_config::log_config(&meta.configs);
            let mut partitions = Vec::with_capacity(meta.replicas.len());
            for p in 0..meta.replicas.len() {
                let name = format!("{}-{p}", meta.name);
                let log = PartitionLog::open(name.clone(), data_dir.join(&name), config.clone())
                    .map_err(|e| anyhow::anyhow!("opening partition {name}: {e}"))?;
                partitions.push(Arc::new(log));
            }
            topics.insert(meta.name.clone(), Arc::new(Topic::new(meta, partitions)));
        }
        for view in views {
            let source = view.view_of().unwrap_or_default().to_string();
            match topics
                .get(&source)
                .map(|t: &Arc<Topic>| t.partitions.clone())
            {
                Some(partitions) => {
                    topics.insert(view.name.clone(), Arc::new(Topic::new(view, partitions)));
                }
                None => {
                    tracing::warn!(view = %view.name, source = %source, "view of a missing topic skipped")
                }
            }
        }
        Ok(TopicRegistry {
            data_dir: data_dir.to_path_buf(),
            node_id,
            topics: RwLock::new(topics),
            write_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.read().get(name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Topic>> {
        self.read().values().cloned().collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Topic>>> {
        self.topics.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Topic>>> {
        self.topics.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks a new topic against the rules and the current topics. With
    /// `validate_only` this is all CreateTopics does.
    pub fn check_new(&self, t: &NewTopic, brokers: &[i32]) -> Result<Vec<Vec<i32>>, TopicError> {
        validate_topic_name(&t.name)?;
        let existing = self.read();
        if existing.contains_key(&t.name) {
            return Err(TopicError::AlreadyExists(t.name.clone()));
        }
        let collides = |a: &str| a.replace('.', "_");
        if let Some(other) = existing.keys().find(|k| collides(k) == collides(&t.name)) {
            return Err(TopicError::InvalidName(format!(
                "topic '{}' collides with existing topic '{other}' ('.' and '_' are interchangeable in metric names)",
                t.name
            )));
        }
        drop(existing);
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

    pub async fn create(&self, t: NewTopic, brokers: &[i32]) -> Result<Arc<Topic>, TopicError> {
        let _w = self.write_lock.lock().await;
        if let Some(source) = t.configs.get(VIEW_OF).filter(|s| !s.is_empty()).cloned() {
            return self.create_view(t, &source, brokers);
        }
        let replicas = self.check_new(&t, brokers)?;
        let meta = TopicMeta {
            name: t.name.clone(),
            id: Uuid::new_v4(),
            replicas,
            configs: t.configs,
        };
        let config = topic_config::log_config(&meta.configs);
        let mut partitions = Vec::with_capacity(meta.replicas.len());
        for p in 0..meta.replicas.len() {
            partitions.push(Arc::new(self.open_partition(
                &meta.name,
                p,
                config.clone(),
            )?));
        }
        let topic = Arc::new(Topic::new(meta, partitions));
        let mut metas = self.metas();
        metas.push(topic.meta.clone());
        self.persist(&metas)?;
        self.write().insert(t.name, topic.clone());
        Ok(topic)
    }

    /// A view shares the source's partitions (and placement); it owns no
    /// data of its own.
    fn create_view(
        &self,
        t: NewTopic,
        source: &str,
        brokers: &[i32],
    ) -> Result<Arc<Topic>, TopicError> {
        let src = self.get(source).ok_or_else(|| {
            TopicError::InvalidConfig(format!("{VIEW_OF}: topic '{source}' does not exist"))
        })?;
        if src.meta.view_of().is_some() {
            return Err(TopicError::InvalidConfig(format!(
                "{VIEW_OF}: '{source}' is itself a view"
            )));
        }
        let probe = NewTopic {
            partitions: src.partitions.len() as i32,
            replication_factor: 1,
            assignment: vec![],
            ..t
        };
        self.check_new(&probe, brokers)?;
        let meta = TopicMeta {
            name: probe.name.clone(),
            id: Uuid::new_v4(),
            replicas: src.meta.replicas.clone(),
            configs: probe.configs,
        };
        let topic = Arc::new(Topic::new(meta, src.partitions.clone()));
        let mut metas = self.metas();
        metas.push(topic.meta.clone());
        self.persist(&metas)?;
        self.write().insert(probe.name, topic.clone());
        Ok(topic)
    }

    /// Views reading `source`.
    pub fn views_of(&self, source: &str) -> Vec<Arc<Topic>> {
        self.read()
            .values()
            .filter(|t| t.meta.view_of() == Some(source))
            .cloned()
            .collect()
    }

    fn open_partition(
        &self,
        topic: &str,
        p: usize,
        config: log::LogConfig,
    ) -> io::Result<PartitionLog> {
        let name = format!("{topic}-{p}");
        let dir = self.data_dir.join(&name);
        // A fresh topic starts empty even if a stale directory was left behind.
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        PartitionLog::open(name, dir, config)
    }

    pub async fn delete(&self, name: &str) -> Result<Uuid, TopicError> {
        let _w = self.write_lock.lock().await;
        let topic = self
            .get(name)
            .ok_or_else(|| TopicError::Unknown(name.to_string()))?;
        let views: Vec<String> = self
            .views_of(name)
            .iter()
            .map(|v| v.meta.name.clone())
            .collect();
        if !views.is_empty() {
            return Err(TopicError::InUse(format!(
                "topic '{name}' has views {views:?}; delete them first"
            )));
        }
        let metas: Vec<TopicMeta> = self
            .metas()
            .into_iter()
            .filter(|m| m.name != name)
            .collect();
        self.persist(&metas)?;
        self.write().remove(name);
        if topic.meta.view_of().is_some() {
            // The partitions belong to the source topic.
            return Ok(topic.meta.id);
        }
        // Rename first (atomic, so a crash never resurrects half a topic),
        // then remove in the background.
        let mut doomed = Vec::new();
        for p in &topic.partitions {
            let target = self.data_dir.join(format!(
                "{}.{}{DELETED_SUFFIX}",
                p.name(),
                topic.meta.id.simple()
            ));
            match fs::rename(p.dir(), &target) {
                Ok(()) => doomed.push(target),
                Err(e) => {
                    tracing::warn!(partition = p.name(), error = %e, "could not move deleted partition aside")
                }
            }
        }
        tokio::task::spawn_blocking(move || {
            for d in doomed {
                if let Err(e) = fs::remove_dir_all(&d) {
                    tracing::warn!(dir = %d.display(), error = %e, "could not remove deleted partition");
                }
            }
        });
        Ok(topic.meta.id)
    }

    /// Grows a topic to `count` partitions.
    pub async fn add_partitions(
        &self,
        name: &str,
        count: i32,
        assignment: Option<Vec<Vec<i32>>>,
        brokers: &[i32],
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let _w = self.write_lock.lock().await;
        let topic = self
            .get(name)
            .ok_or_else(|| TopicError::Unknown(name.to_string()))?;
        if let Some(source) = topic.meta.view_of() {
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
        let rf = topic.meta.replicas.first().map_or(1, Vec::len);
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
            return Ok(());
        }
        let config = topic_config::log_config(&topic.meta.configs);
        let mut partitions = topic.partitions.clone();
        for p in current..count as usize {
            partitions.push(Arc::new(self.open_partition(name, p, config.clone())?));
        }
        let mut meta = topic.meta.clone();
        meta.replicas.extend(new_replicas);
        for view in self.views_of(name) {
            let mut vmeta = view.meta.clone();
            vmeta.replicas = meta.replicas.clone();
            self.replace(Topic::new(vmeta, partitions.clone()))?;
        }
        self.replace(Topic::new(meta, partitions))
    }

    /// Replaces a topic's config overrides (already validated).
    pub async fn set_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<(), TopicError> {
        let _w = self.write_lock.lock().await;
        let topic = self
            .get(name)
            .ok_or_else(|| TopicError::Unknown(name.to_string()))?;
        topic_config::validate_all(&configs).map_err(TopicError::InvalidConfig)?;
        if configs.get(VIEW_OF) != topic.meta.configs.get(VIEW_OF) {
            return Err(TopicError::InvalidConfig(format!(
                "{VIEW_OF} is fixed when a topic is created"
            )));
        }
        // A view's storage settings are its source's; it only has filters.
        if topic.meta.view_of().is_none() {
            let config = topic_config::log_config(&configs);
            for p in &topic.partitions {
                p.set_config(config.clone());
            }
        }
        let mut meta = topic.meta.clone();
        meta.configs = configs;
        self.replace(Topic::new(meta, topic.partitions.clone()))
    }

    fn replace(&self, topic: Topic) -> Result<(), TopicError> {
        let mut metas: Vec<TopicMeta> = self
            .metas()
            .into_iter()
            .filter(|m| m.name != topic.meta.name)
            .collect();
        metas.push(topic.meta.clone());
        self.persist(&metas)?;
        self.write()
            .insert(topic.meta.name.clone(), Arc::new(topic));
        Ok(())
    }

    fn metas(&self) -> Vec<TopicMeta> {
        self.read().values().map(|t| t.meta.clone()).collect()
    }

    fn persist(&self, metas: &[TopicMeta]) -> io::Result<()> {
        write_topics_file(&self.data_dir.join(META_DIR).join(TOPICS_FILE), metas)
    }

    pub fn node_id(&self) -> i32 {
        self.node_id
    }
}

/// Checks an explicit replica assignment (see `sluice_placement::validate`).
fn validate_assignment(assignment: &[Vec<i32>], brokers: &[i32]) -> Result<(), TopicError> {
    sluice_placement::validate(assignment, brokers)
        .map_err(|e| TopicError::InvalidReplicaAssignment(e.0))
}

fn read_topics_file(path: &Path) -> anyhow::Result<Vec<TopicMeta>> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let text = std::str::from_utf8(&data)
        .map_err(|_| anyhow::anyhow!("{} is not UTF-8", path.display()))?;
    let (crc_hex, body) = text
        .split_once('\n')
        .ok_or_else(|| anyhow::anyhow!("{} has no CRC line", path.display()))?;
    let stored = u32::from_str_radix(crc_hex.trim(), 16)
        .map_err(|_| anyhow::anyhow!("{} has a malformed CRC line", path.display()))?;
    let computed = crc32fast::hash(body.as_bytes());
    if stored != computed {
        anyhow::bail!(
            "{} is corrupt (CRC {stored:08x}, computed {computed:08x}); refusing to start rather than forget topics",
            path.display()
        );
    }
    Ok(serde_json::from_str(body)?)
}

fn write_topics_file(path: &Path, metas: &[TopicMeta]) -> io::Result<()> {
    let body = serde_json::to_string_pretty(metas).map_err(io::Error::other)?;
    let content = format!("{:08x}\n{body}", crc32fast::hash(body.as_bytes()));
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, content)?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        log::sync_dir(parent)?;
    }
    Ok(())
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

    #[test]
    fn names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_x-2").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("has space").is_err());
        assert!(validate_topic_name(&"a".repeat(250)).is_err());
        assert!(validate_topic_name(&"a".repeat(249)).is_ok());
    }

    #[tokio::test]
    async fn topics_survive_reopen_and_corrupt_metadata_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let reg = TopicRegistry::open(dir.path(), 0).expect("open");
            let mut configs = BTreeMap::new();
            configs.insert("retention.ms".into(), "1000".into());
            reg.create(
                NewTopic {
                    name: "t".into(),
                    partitions: 3,
                    replication_factor: 1,
                    assignment: vec![],
                    configs,
                },
                &[0],
            )
            .await
            .expect("create");
            assert!(matches!(
                reg.check_new(
                    &NewTopic {
                        name: "t".into(),
                        partitions: 1,
                        replication_factor: 1,
                        assignment: vec![],
                        configs: BTreeMap::new()
                    },
                    &[0]
                ),
                Err(TopicError::AlreadyExists(_))
            ));
        }
        let reg = TopicRegistry::open(dir.path(), 0).expect("reopen");
        assert!(
            matches!(
                reg.add_partitions("t", i32::MAX, None, &[0], true).await,
                Err(TopicError::InvalidPartitions(_))
            ),
            "a huge partition count is refused before anything is built"
        );
        let t = reg.get("t").expect("persisted");
        assert_eq!(t.partitions.len(), 3);
        assert_eq!(
            t.meta.configs.get("retention.ms").map(String::as_str),
            Some("1000")
        );
        drop(reg);
        let path = dir.path().join(META_DIR).join(TOPICS_FILE);
        let mut bytes = fs::read(&path).expect("read");
        let last = bytes.len() - 3;
        bytes[last] ^= 0x01;
        fs::write(&path, bytes).expect("write");
        assert!(TopicRegistry::open(dir.path(), 0).is_err());
    }
}
