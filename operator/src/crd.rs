//! The custom resources of API group `sluice.dev`, version `v1alpha1`:
//! `Cluster` (broker pods), `Topic` and `Plugin`. The YAML under
//! `charts/sluice/crds/` is generated from these types (`sluice-operator
//! crd`) and a test fails when the two drift apart.

// kube's `printcolumn(...)` attributes repeat keys by design; clippy reads
// them as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "sluice.dev";
pub const VERSION: &str = "v1alpha1";

/// A condition in the shape of `metav1.Condition`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Kind of condition, e.g. `Ready`, `NotSupported`, `ResourceConflict`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable CamelCase reason for the last transition.
    pub reason: String,
    /// Human-readable details.
    #[serde(default)]
    pub message: String,
    /// The `.metadata.generation` this condition was computed from.
    #[serde(default)]
    pub observed_generation: i64,
    /// RFC 3339 time of the last status change.
    #[serde(default)]
    pub last_transition_time: String,
}

/// A status with conditions (every kind's status has them).
pub trait Conditions {
    fn conditions(&self) -> &[Condition];
}

impl Condition {
    /// A condition computed at `generation`, keeping the previous
    /// transition time when its status did not change, so a converged
    /// object's status stays byte-for-byte the same (and is not rewritten).
    pub fn new(
        previous: Option<&impl Conditions>,
        now: &str,
        generation: i64,
        type_: &str,
        ok: bool,
        reason: &str,
        message: String,
    ) -> Condition {
        let status = if ok { "True" } else { "False" };
        let last = previous
            .map_or(&[][..], Conditions::conditions)
            .iter()
            .find(|c| c.type_ == type_)
            .filter(|c| c.status == status)
            .map_or_else(|| now.to_string(), |c| c.last_transition_time.clone());
        Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message,
            observed_generation: generation,
            last_transition_time: last,
        }
    }
}

/// Whether `meta` lists `finalizer`.
pub fn has_finalizer(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    finalizer: &str,
) -> bool {
    meta.finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == finalizer))
}

/// A reference to the `Cluster` (in the same namespace) a resource belongs to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ClusterRef {
    /// Name of the `Cluster`.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

// ---------------------------------------------------------------- Cluster

/// A Sluice broker cluster: a StatefulSet of brokers (broker id = pod
/// ordinal) with a headless Service for per-broker DNS, a bootstrap
/// Service, the broker config, a PodDisruptionBudget and, if asked, a
/// ServiceMonitor.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "Cluster",
    namespaced,
    status = "ClusterStatus",
    shortname = "sluice",
    printcolumn(name = "Brokers", type_ = "integer", json_path = ".spec.brokers"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyBrokers"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    /// Number of brokers. Scaling down below the largest replication factor
    /// of the cluster's topics is refused.
    #[schemars(range(min = 1, max = 64))]
    pub brokers: i32,
    /// Broker container image.
    #[serde(default = "default_image")]
    pub image: String,
    /// Broker settings written to the ConfigMap (keys as `sluice-broker
    /// serve` flags, e.g. `max-request-bytes`). A change rolls the brokers
    /// one at a time.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Persistent volume per broker.
    #[serde(default)]
    pub storage: Storage,
    /// Container resources of each broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    /// Create a ServiceMonitor (monitoring.coreos.com/v1) for the brokers.
    #[serde(default)]
    pub service_monitor: bool,
}

/// The broker image of this operator's release (never `:latest`: a pinned
/// tag is pulled once, works air-gapped, and does not change under a
/// running cluster).
fn default_image() -> String {
    concat!("ghcr.io/sluice/sluice-broker:", env!("CARGO_PKG_VERSION")).to_string()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Size of each broker's data volume, e.g. `10Gi`.
    #[serde(default = "default_storage_size")]
    pub size: String,
    /// StorageClass of the volumes (the cluster default if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

fn default_storage_size() -> String {
    "10Gi".to_string()
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub observed_generation: i64,
    /// Brokers that are ready.
    #[serde(default)]
    pub ready_brokers: i32,
    /// `host:port` a Kafka client bootstraps from.
    #[serde(default)]
    pub bootstrap: String,
}

// ------------------------------------------------------------------ Topic

/// A topic in a `Cluster`. Replica `j` of partition `i` is placed on broker
/// `(i + j) mod n` of the cluster's sorted broker ids; the assignment is
/// recorded in status.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "Topic",
    namespaced,
    status = "TopicStatus",
    shortname = "st",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster.name"),
    printcolumn(name = "Partitions", type_ = "integer", json_path = ".spec.partitions"),
    printcolumn(name = "RF", type_ = "integer", json_path = ".spec.replicationFactor"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.topicName) == has(oldSelf.topicName)").message("topicName cannot be added or removed"))]
pub struct TopicSpec {
    /// The `Cluster` the topic lives in. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("cluster is immutable"))]
    pub cluster: ClusterRef,
    /// Kafka topic name, if not the resource's name. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("topicName is immutable"))]
    pub topic_name: Option<String>,
    /// Partition count. It can grow; a decrease is refused (NotSupported).
    #[schemars(range(min = 1, max = 10000))]
    pub partitions: i32,
    /// Replicas per partition, at most the cluster's broker count. A change
    /// after creation is refused (NotSupported).
    #[schemars(range(min = 1, max = 64))]
    pub replication_factor: i32,
    /// Topic configs (Kafka names, e.g. `retention.ms`). The operator sets
    /// the keys that differ and deletes only keys it set itself.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Plugins bound to the topic, by `Plugin` name.
    #[serde(default)]
    pub plugins: PluginBindings,
    /// What happens to the Kafka topic when this resource is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the Kafka topic with the resource.
    #[default]
    Delete,
    /// Keep the Kafka topic (and its data).
    Retain,
}

/// Plugin bindings, mapped onto the `sluice.*` topic configs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginBindings {
    /// `sluice.partitioner`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitioner: Option<String>,
    /// `sluice.interceptors`, applied in order.
    #[serde(default)]
    pub interceptors: Vec<String>,
    /// `sluice.filters` (produce side).
    #[serde(default)]
    pub filters: Vec<String>,
    /// `sluice.plugin.config.<plugin>` per bound plugin.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub observed_generation: i64,
    /// The Kafka topic this resource manages.
    #[serde(default)]
    pub topic_name: String,
    /// Replica assignment sent to the brokers: element `i` lists the broker
    /// ids of partition `i`, preferred leader first.
    #[serde(default)]
    pub assignment: Vec<Vec<i32>>,
    /// Config keys this operator set (the only ones it will ever delete).
    #[serde(default)]
    pub managed_config_keys: Vec<String>,
}

// ----------------------------------------------------------------- Plugin

/// A WebAssembly plugin uploaded to a `Cluster`'s admin API.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "Plugin",
    namespaced,
    status = "PluginStatus",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster.name"),
    printcolumn(name = "Kind", type_ = "string", json_path = ".spec.kind"),
    printcolumn(name = "Version", type_ = "integer", json_path = ".status.version"),
    printcolumn(
        name = "Digest",
        type_ = "string",
        json_path = ".status.digest",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PluginSpec {
    pub cluster: ClusterRef,
    pub kind: PluginKind,
    /// Where the `.wasm` bytes come from.
    pub source: PluginSource,
    /// Sandbox limits applied where the plugin is bound.
    #[serde(default)]
    pub limits: PluginLimits,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    Partitioner,
    Interceptor,
    Filter,
}

/// Exactly one of the three sources.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.configMapKeyRef) ? 1 : 0) + (has(self.secretKeyRef) ? 1 : 0) + (has(self.inline) ? 1 : 0) == 1",
    "message": "set exactly one of configMapKeyRef, secretKeyRef, inline"
}]))]
pub struct PluginSource {
    /// A key of a ConfigMap's `binaryData`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeyRef>,
    /// A key of a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeyRef>,
    /// The module itself, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct KeyRef {
    pub name: String,
    pub key: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginLimits {
    /// `sluice.plugin.memory.bytes` of the topics binding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 65536, max = 268435456))]
    pub memory_bytes: Option<i64>,
    /// `sluice.plugin.timeout.ms` of the topics binding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub timeout_ms: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub observed_generation: i64,
    /// sha256 of the uploaded module.
    #[serde(default)]
    pub digest: String,
    /// Version the broker assigned at upload.
    #[serde(default)]
    pub version: i64,
}

impl PluginLimits {
    /// The strictest of several plugins' limits: a topic binding them all
    /// runs every one under the smallest memory cap and time budget.
    pub fn strictest<'a>(all: impl IntoIterator<Item = &'a PluginLimits>) -> PluginLimits {
        all.into_iter()
            .fold(PluginLimits::default(), |acc, l| PluginLimits {
                memory_bytes: min_some(acc.memory_bytes, l.memory_bytes),
                timeout_ms: min_some(acc.timeout_ms, l.timeout_ms),
            })
    }
}

fn min_some(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

impl PluginBindings {
    /// Every plugin name the bindings mention.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.partitioner
            .iter()
            .chain(&self.interceptors)
            .chain(&self.filters)
    }
}

impl Conditions for ClusterStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

impl Conditions for TopicStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

impl Conditions for PluginStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

/// Every CRD as (file name, YAML), in a fixed order. The file name is the
/// CRD's own name, e.g. `topics.sluice.dev.yaml`.
pub fn crd_files() -> anyhow::Result<Vec<(String, String)>> {
    [Cluster::crd(), Topic::crd(), Plugin::crd()]
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let yaml = format!(
                "# Generated by `sluice-operator crd --out charts/sluice/crds`; do not edit.\n{}",
                serde_yaml::to_string(&crd)?
            );
            Ok((format!("{name}.yaml"), yaml))
        })
        .collect()
}
