//! What the Topic controller should do, as a pure function of what it
//! observed: the resource, its cluster's brokers and the Kafka topic as the
//! brokers describe it. No I/O here; the executor performs the actions in
//! order. Keeping the decisions pure is what lets every case (create,
//! adopt, grow, refuse shrink, drift, delete/retain, conflict, unmanaged)
//! be a row in a table test.

use std::collections::{BTreeMap, BTreeSet};

use crate::crd::{Condition, DeletionPolicy, PluginLimits, Topic, TopicStatus, has_finalizer};

/// Finalizer the operator puts on every managed Topic.
pub const FINALIZER: &str = "sluice.dev/topic";
/// `sluice.dev/managed: "false"` hands a Topic off: no broker writes at all.
pub const UNMANAGED_ANNOTATION: &str = "sluice.dev/managed";

/// The Kafka topic as Metadata and DescribeConfigs report it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedTopic {
    /// Replica broker ids of each partition, by partition index; for a
    /// partition being moved, its target replicas (the ones it keeps).
    pub assignment: Vec<Vec<i32>>,
    /// Partitions with a reassignment under way.
    pub moving: Vec<i32>,
    /// Dynamic (non-default) topic configs.
    pub configs: BTreeMap<String, String>,
}

impl ObservedTopic {
    pub fn partitions(&self) -> i32 {
        self.assignment.len() as i32
    }
    pub fn replication_factor(&self) -> i32 {
        self.assignment.first().map_or(0, Vec::len) as i32
    }
}

/// Everything the planner looks at.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    pub topic: &'a Topic,
    /// Broker ids of the referenced Cluster; `None` if the Cluster is gone.
    pub brokers: Option<Vec<i32>>,
    /// The Kafka topic; `None` if it does not exist.
    pub kafka: Option<ObservedTopic>,
    /// Name of an older Topic resource that manages the same Kafka topic.
    pub older_claimant: Option<String>,
    /// Sandbox limits of the bound plugins, combined (`Plugin::limits`).
    pub plugin_limits: PluginLimits,
    /// RFC 3339 "now", for condition transition times.
    pub now: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    AddFinalizer,
    RemoveFinalizer,
    CreateTopic {
        name: String,
        assignment: Vec<Vec<i32>>,
        configs: BTreeMap<String, String>,
    },
    /// Grow to `total` partitions; `assignment` covers the new ones only.
    CreatePartitions {
        name: String,
        total: i32,
        assignment: Vec<Vec<i32>>,
    },
    AlterConfigs {
        name: String,
        set: BTreeMap<String, String>,
        delete: Vec<String>,
    },
    DeleteTopic {
        name: String,
    },
    UpdateStatus(TopicStatus),
    Event {
        warning: bool,
        reason: String,
        message: String,
    },
}

/// The Kafka topic name of a resource.
pub fn kafka_name(t: &Topic) -> String {
    t.spec
        .topic_name
        .clone()
        .unwrap_or_else(|| t.metadata.name.clone().unwrap_or_default())
}

/// The topic configs a spec asks for: `config` plus the plugin bindings
/// expressed as `sluice.*` keys, plus the bound plugins' sandbox limits
/// where the spec does not set them itself.
pub fn desired_configs(t: &Topic, limits: &PluginLimits) -> BTreeMap<String, String> {
    let mut c = t.spec.config.clone();
    if let Some(bytes) = limits.memory_bytes {
        c.entry("sluice.plugin.memory.bytes".into())
            .or_insert_with(|| bytes.to_string());
    }
    if let Some(ms) = limits.timeout_ms {
        c.entry("sluice.plugin.timeout.ms".into())
            .or_insert_with(|| ms.to_string());
    }
    let p = &t.spec.plugins;
    if let Some(part) = &p.partitioner {
        c.insert("sluice.partitioner".into(), part.clone());
    }
    if !p.interceptors.is_empty() {
        c.insert("sluice.interceptors".into(), p.interceptors.join(","));
    }
    if !p.filters.is_empty() {
        c.insert("sluice.filters".into(), p.filters.join(","));
    }
    for (plugin, value) in &p.config {
        c.insert(format!("sluice.plugin.config.{plugin}"), value.clone());
    }
    c
}

/// Whether the annotation hands this Topic off.
pub fn unmanaged(t: &Topic) -> bool {
    t.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(UNMANAGED_ANNOTATION))
        .is_some_and(|v| v == "false")
}

/// Plans one reconcile of a Topic.
pub fn plan(o: &Observed<'_>) -> Vec<Action> {
    let t = o.topic;
    let name = kafka_name(t);
    let generation = t.metadata.generation.unwrap_or(0);
    let prev = t.status.as_ref();
    let mut actions = Vec::new();
    let mut status = TopicStatus {
        observed_generation: generation,
        topic_name: name.clone(),
        assignment: prev.map(|s| s.assignment.clone()).unwrap_or_default(),
        moving_partitions: Vec::new(),
        managed_config_keys: prev
            .map(|s| s.managed_config_keys.clone())
            .unwrap_or_default(),
        conditions: Vec::new(),
    };
    let ready = |ok: bool, reason: &str, message: String| {
        Condition::new(prev, o.now, generation, "Ready", ok, reason, message)
    };

    // Deletion: never blocks on a cluster that is gone.
    if t.metadata.deletion_timestamp.is_some() {
        if !has_finalizer(&t.metadata, FINALIZER) {
            return actions;
        }
        let delete_kafka = t.spec.deletion_policy == DeletionPolicy::Delete
            && !unmanaged(t)
            && o.older_claimant.is_none()
            && o.brokers.is_some()
            && o.kafka.is_some();
        if delete_kafka {
            actions.push(Action::DeleteTopic { name: name.clone() });
            actions.push(Action::Event {
                warning: false,
                reason: "Deleted".into(),
                message: format!("deleted Kafka topic {name}"),
            });
        }
        actions.push(Action::RemoveFinalizer);
        return actions;
    }

    if unmanaged(t) {
        status.conditions.push(ready(
            false,
            "Unmanaged",
            format!(
                "annotation {UNMANAGED_ANNOTATION}=false: the operator leaves topic {name} alone"
            ),
        ));
        push_status(&mut actions, prev, status);
        return actions;
    }
    if !has_finalizer(&t.metadata, FINALIZER) {
        actions.push(Action::AddFinalizer);
    }
    if let Some(owner) = &o.older_claimant {
        status.conditions.push(Condition::new(
            prev,
            o.now,
            generation,
            "ResourceConflict",
            true,
            "OlderTopicOwnsName",
            format!("Kafka topic {name} is managed by the older Topic {owner}"),
        ));
        status.conditions.push(ready(
            false,
            "ResourceConflict",
            format!("{owner} manages {name}"),
        ));
        push_status(&mut actions, prev, status);
        return actions;
    }
    let Some(brokers) = &o.brokers else {
        status.conditions.push(ready(
            false,
            "ClusterNotFound",
            format!("Cluster {} does not exist", t.spec.cluster.name),
        ));
        push_status(&mut actions, prev, status);
        return actions;
    };

    let desired = desired_configs(t, &o.plugin_limits);
    let rf = t.spec.replication_factor;
    let Some(kafka) = &o.kafka else {
        match sluice_placement::assign(brokers, 0, t.spec.partitions as usize, rf as usize) {
            Ok(assignment) => {
                actions.push(Action::CreateTopic {
                    name: name.clone(),
                    assignment: assignment.clone(),
                    configs: desired.clone(),
                });
                actions.push(Action::Event {
                    warning: false,
                    reason: "Created".into(),
                    message: format!(
                        "created Kafka topic {name} with {} partitions, replication factor {rf}",
                        t.spec.partitions
                    ),
                });
                status.assignment = assignment;
                status.managed_config_keys = desired.keys().cloned().collect();
                status.conditions.push(converged(&ready, &name));
            }
            Err(e) => {
                status
                    .conditions
                    .push(ready(false, "InvalidPlacement", e.to_string()));
            }
        }
        push_status(&mut actions, prev, status);
        return actions;
    };

    // The topic exists: adopt it and converge what can be converged.
    status.assignment = kafka.assignment.clone();
    status.moving_partitions = kafka.moving.clone();
    let (have_partitions, have_rf) = (kafka.partitions(), kafka.replication_factor());
    let mut refused = Vec::new();
    if have_rf != rf {
        refused.push(format!(
            "replication factor is {have_rf} and cannot change to {rf}"
        ));
    }
    if t.spec.partitions < have_partitions {
        refused.push(format!(
            "topic has {have_partitions} partitions and cannot shrink to {}",
            t.spec.partitions
        ));
    } else if t.spec.partitions > have_partitions {
        let added = (t.spec.partitions - have_partitions) as usize;
        match sluice_placement::assign(
            brokers,
            have_partitions as usize,
            added,
            have_rf.max(1) as usize,
        ) {
            Ok(assignment) => {
                actions.push(Action::CreatePartitions {
                    name: name.clone(),
                    total: t.spec.partitions,
                    assignment: assignment.clone(),
                });
                status.assignment.extend(assignment);
            }
            Err(e) => refused.push(e.to_string()),
        }
    }
    let set: BTreeMap<String, String> = desired
        .iter()
        .filter(|(k, v)| kafka.configs.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let previously_managed: BTreeSet<&String> = status.managed_config_keys.iter().collect();
    let delete: Vec<String> = previously_managed
        .into_iter()
        .filter(|k| !desired.contains_key(*k) && kafka.configs.contains_key(*k))
        .cloned()
        .collect();
    if !set.is_empty() || !delete.is_empty() {
        actions.push(Action::AlterConfigs {
            name: name.clone(),
            set,
            delete,
        });
    }
    status.managed_config_keys = desired.keys().cloned().collect();
    if refused.is_empty() {
        status.conditions.push(converged(&ready, &name));
    } else {
        let message = refused.join("; ");
        if prev
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "NotSupported"))
            .is_none_or(|c| c.message != message)
        {
            actions.push(Action::Event {
                warning: true,
                reason: "NotSupported".into(),
                message: message.clone(),
            });
        }
        status.conditions.push(Condition::new(
            prev,
            o.now,
            generation,
            "NotSupported",
            true,
            "NotSupported",
            message.clone(),
        ));
        status
            .conditions
            .push(ready(false, "NotSupported", message));
    }
    push_status(&mut actions, prev, status);
    actions
}

/// The Ready condition of a topic that matches its spec, the same right
/// after creation as later, so the reconcile after a create writes nothing.
fn converged(ready: &impl Fn(bool, &str, String) -> Condition, name: &str) -> Condition {
    ready(true, "Reconciled", format!("topic {name} matches its spec"))
}

/// Status is written only when it changed: a converged object makes no
/// writes at all.
fn push_status(actions: &mut Vec<Action>, prev: Option<&TopicStatus>, status: TopicStatus) {
    if prev != Some(&status) {
        actions.push(Action::UpdateStatus(status));
    }
}
