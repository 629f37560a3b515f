//! The custom resources of API group `sluice.dev`, version `v1alpha1`:
//! `Cluster` (broker pods), `Topic`, `Plugin` and `User`. The YAML under
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

/// The name of the oldest other live object in `all` that `rival` accepts
/// (one managing the same thing as `obj`), if it is older than `obj`
/// (creation time, then name): the one that keeps managing it.
pub fn older_claimant<K: kube::Resource>(
    obj: &K,
    all: &[K],
    rival: impl Fn(&K) -> bool,
) -> Option<String> {
    let key = |x: &K| {
        (
            x.meta().creation_timestamp.clone(),
            x.meta().name.clone().unwrap_or_default(),
        )
    };
    all.iter()
        .filter(|o| o.meta().uid != obj.meta().uid && o.meta().deletion_timestamp.is_none())
        .filter(|o| rival(o))
        .filter(|o| key(o) < key(obj))
        .min_by_key(|o| key(o))
        .and_then(|o| o.meta().name.clone())
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
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.authorization) || (has(self.tls) && has(self.listeners) && size(self.listeners) > 0)",
     "message": "authorization needs tls and a client listener"},
    {"rule": "has(self.tls) == has(oldSelf.tls)",
     "message": "tls cannot be turned on or off on a running cluster (during the roll, brokers on the old and the new INTERNAL listener could not reach each other); make a new Cluster"},
    {"rule": "!has(self.listeners) || self.listeners.all(l, !l.tls || has(self.tls))",
     "message": "a tls listener needs spec.tls"},
    {"rule": "!has(self.listeners) || self.listeners.all(a, self.listeners.exists_one(b, b.name == a.name) && self.listeners.exists_one(b, b.port == a.port))",
     "message": "listener names and ports must be unique"},
]))]
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
    /// Number of brokers. Scaling down first moves every replica off the
    /// departing brokers (partition reassignment), then removes them from
    /// the StatefulSet, the controller quorum and the metadata; below the
    /// largest replication factor of the cluster's topics it is refused.
    /// New brokers join the controller quorum on their own.
    #[schemars(range(min = 1, max = 64))]
    pub brokers: i32,
    /// After a scale-up, move partitions onto the new brokers so that
    /// replica `j` of partition `i` sits on broker `(i + j) mod n` again
    /// (internal topics too). Off: new brokers get only new topics.
    #[serde(default = "default_true")]
    pub rebalance_on_scale_up: bool,
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
    /// Client listeners besides the brokers' own one (`INTERNAL`, port
    /// 9092: replication, the controller quorum and the operator; open to
    /// clients too unless `tls` is set, which makes it mutual TLS with the
    /// brokers' certificate). Each is a Kafka listener of the same
    /// name on every broker, advertised under the broker's DNS name and
    /// served by the bootstrap Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub listeners: Vec<ClusterListener>,
    /// TLS for the brokers: their certificate and key from a Secret. The
    /// `INTERNAL` listener becomes mutual TLS (brokers and this operator
    /// authenticate with the Secret's certificate), and `tls` listeners
    /// use it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTls>,
    /// SASL mechanisms SASL listeners offer (`sasl-enabled-mechanisms`).
    #[serde(default = "default_sasl_mechanisms")]
    pub sasl_mechanisms: Vec<SaslMechanism>,
    /// ACLs on (Kafka's StandardAuthorizer): clients may do only what
    /// `User` resources (or CreateAcls) allow them. Needs `tls` and a
    /// client listener: the `INTERNAL` listener is then the brokers' and
    /// the operator's alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
}

/// A Kafka listener for clients.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(self.name in ['INTERNAL', 'KAFKA', 'ADMIN'])", "message": "INTERNAL, KAFKA and ADMIN are taken (the brokers' own listener and port names)"},
    {"rule": "self.port != 9092 && self.port != 9644", "message": "ports 9092 (INTERNAL) and 9644 (admin) are taken"},
]))]
pub struct ClusterListener {
    /// Listener name (Kafka's: upper case), e.g. `CLIENTS`; in lower case
    /// (`_` as `-`) it names the Service and container port, so at most 15
    /// characters.
    #[schemars(
        length(min = 1, max = 15),
        regex(pattern = r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")
    )]
    pub name: String,
    /// Port on every broker and on the bootstrap Service.
    #[schemars(range(min = 1024, max = 65535))]
    pub port: i32,
    /// Encrypt with the cluster's `tls` certificate (SSL / SASL_SSL).
    #[serde(default)]
    pub tls: bool,
    /// How clients authenticate.
    #[serde(default)]
    pub authentication: ListenerAuthentication,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ListenerAuthentication {
    /// Anonymous clients (`User:ANONYMOUS`).
    #[default]
    None,
    /// SASL with `saslMechanisms`; users are `User` resources.
    Sasl,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterTls {
    /// A `kubernetes.io/tls` Secret with `tls.crt`, `tls.key` and `ca.crt`,
    /// as cert-manager writes it. The certificate must name
    /// `*.<cluster>-brokers.<namespace>.svc` and
    /// `<cluster>-bootstrap.<namespace>.svc` and allow server and client
    /// authentication (brokers present it to one another). A renewed
    /// Secret is picked up without a restart.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SaslMechanism {
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "PLAIN")]
    Plain,
}

impl SaslMechanism {
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::Plain => "PLAIN",
        }
    }
}

fn default_sasl_mechanisms() -> Vec<SaslMechanism> {
    vec![SaslMechanism::ScramSha512]
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    /// Principals allowed everything (`super.users`), e.g. `User:admin`
    /// or `User:CN=ops,O=Acme` (a client certificate's). The operator's own
    /// principal, `User:sluice-operator`, always is.
    #[serde(default)]
    #[schemars(inner(regex(pattern = r"^[A-Za-z]+:[^;]+$")))]
    pub super_users: Vec<String>,
}

/// Broker settings the operator derives itself; a `config` key naming one
/// would contradict it (and could keep brokers from starting).
const OPERATOR_SET_KEYS: &[&str] = &[
    "listen",
    "advertised-listen",
    "admin-listen",
    "listeners",
    "advertised-listeners",
    "listener-security-protocol-map",
    "inter-broker-listener-name",
    "ssl-keystore-location",
    "ssl-keystore-key-location",
    "ssl-truststore-location",
    "ssl-client-auth",
    "sasl-enabled-mechanisms",
    "authorizer-class-name",
    "super-users",
    "admin-auth-tokens-file",
    "admin-tls",
    "admin-ssl-client-auth",
    "node-id",
    "node-id-from-hostname",
    "peers",
    "data-dir",
];

impl ClusterSpec {
    /// What the API server's validation rules check, checked again here
    /// (API servers before 1.25 do not evaluate them): `None` if the
    /// security settings hang together.
    pub fn security_problem(&self) -> Option<String> {
        if let Some(key) = self
            .config
            .keys()
            .find(|k| OPERATOR_SET_KEYS.contains(&k.as_str()))
        {
            return Some(format!(
                "config key {key} is set by the operator (from listeners, tls, authorization and the pod)"
            ));
        }
        for user in self.authorization.iter().flat_map(|a| &a.super_users) {
            let kind_and_name = user
                .split_once(':')
                .is_some_and(|(kind, name)| !kind.is_empty() && !name.is_empty());
            if !kind_and_name || user.contains(';') {
                return Some(format!(
                    "super user {user:?} is not a principal like User:admin"
                ));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        let mut ports = std::collections::BTreeSet::new();
        for l in &self.listeners {
            if ["INTERNAL", "KAFKA", "ADMIN"].contains(&l.name.as_str()) || !names.insert(&l.name) {
                return Some(format!("listener name {} is taken", l.name));
            }
            if [9092, 9644].contains(&l.port) || !ports.insert(l.port) {
                return Some(format!("listener port {} is taken", l.port));
            }
            if l.tls && self.tls.is_none() {
                return Some(format!("listener {} uses tls: set spec.tls", l.name));
            }
        }
        if self.authorization.is_some() && (self.tls.is_none() || self.listeners.is_empty()) {
            return Some("authorization needs spec.tls (brokers and the operator authenticate with it on INTERNAL) and a client listener".into());
        }
        if self.sasl_mechanisms.is_empty()
            && self
                .listeners
                .iter()
                .any(|l| l.authentication == ListenerAuthentication::Sasl)
        {
            return Some("a SASL listener needs at least one of saslMechanisms".into());
        }
        None
    }
}

/// The broker image of this operator's release (never `:latest`: a pinned
/// tag is pulled once, works air-gapped, and does not change under a
/// running cluster).
fn default_true() -> bool {
    true
}

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
    /// The broker count the partitions were last placed for (a scale is
    /// done when this equals `spec.brokers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placed_brokers: Option<i32>,
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
    /// Where the replicas are: element `i` lists the broker ids of
    /// partition `i`, preferred leader first (for a partition being moved,
    /// where it is going).
    #[serde(default)]
    pub assignment: Vec<Vec<i32>>,
    /// Partitions whose replicas are being moved (a reassignment under way).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moving_partitions: Vec<i32>,
    /// Config keys this operator set (the only ones it will ever delete).
    #[serde(default)]
    pub managed_config_keys: Vec<String>,
}

// ------------------------------------------------------------------- User

/// A Kafka user of a `Cluster`, as Strimzi's `KafkaUser`: SCRAM credentials
/// whose password comes from a Secret, and the ACLs of its principal
/// (`User:<name>`). The resource owns every ACL of that principal: ACLs
/// made for it by other means are deleted. Deleting the resource deletes
/// the credentials and the ACLs.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "User",
    namespaced,
    status = "UserStatus",
    shortname = "su",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster.name"),
    printcolumn(name = "Principal", type_ = "string", json_path = ".status.principal"),
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
#[x_kube(validation = Rule::new("has(self.userName) == has(oldSelf.userName)").message("userName cannot be added or removed"))]
pub struct UserSpec {
    /// The `Cluster` the user belongs to. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("cluster is immutable"))]
    pub cluster: ClusterRef,
    /// Kafka user name, if not the resource's name. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[a-zA-Z0-9._@-]+$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("userName is immutable"))]
    pub user_name: Option<String>,
    /// SCRAM credentials; without them the user has ACLs only (e.g. one
    /// that authenticates some other way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<UserAuthentication>,
    /// The principal's ACLs, all of them.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub acls: Vec<AclRule>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserAuthentication {
    #[serde(rename = "type")]
    pub type_: ScramType,
    /// Where the password is: a key of a Secret in the namespace. A new
    /// password in the Secret is applied on the next reconcile.
    pub password: PasswordSource,
    /// PBKDF2 iterations (Kafka accepts 4096 to 16384).
    #[serde(default = "default_iterations")]
    #[schemars(range(min = 4096, max = 16384))]
    pub iterations: i32,
}

fn default_iterations() -> i32 {
    4096
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PasswordSource {
    pub secret_key_ref: KeyRef,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ScramType {
    #[serde(rename = "scram-sha-512")]
    ScramSha512,
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
}

/// One ACL rule: `operations` on `resource` from `host`, allowed or denied.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AclRule {
    pub resource: AclResource,
    #[schemars(length(min = 1))]
    pub operations: Vec<AclOperation>,
    /// Client address the rule applies to; `*` is any.
    #[serde(default = "any_host")]
    #[schemars(length(min = 1, max = 255))]
    pub host: String,
    #[serde(default, rename = "type")]
    pub type_: AclPermission,
}

fn any_host() -> String {
    "*".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AclResource {
    #[serde(rename = "type")]
    pub type_: AclResourceType,
    /// Resource name (`*` for all; the cluster's is `kafka-cluster`).
    #[serde(default = "any_host")]
    #[schemars(length(min = 1, max = 255))]
    pub name: String,
    #[serde(default)]
    pub pattern_type: AclPatternType,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AclResourceType {
    Topic,
    Group,
    Cluster,
    TransactionalId,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AclPatternType {
    #[default]
    Literal,
    Prefixed,
}

/// Kafka's ACL operations.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AclOperation {
    All,
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    ClusterAction,
    DescribeConfigs,
    AlterConfigs,
    IdempotentWrite,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AclPermission {
    #[default]
    Allow,
    Deny,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub observed_generation: i64,
    /// `User:<name>`, what ACLs and `super.users` call this user.
    #[serde(default)]
    pub principal: String,
    /// Which password the brokers have: `<uid>/<resourceVersion>` of the
    /// Secret it was read from, with the mechanism and iterations, so an
    /// unchanged password is not sent again.
    #[serde(default)]
    pub credential_source: String,
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

impl Conditions for UserStatus {
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
/// Every kind's CRD.
pub fn all_crds()
-> [k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition; 4]
{
    [Cluster::crd(), Topic::crd(), Plugin::crd(), User::crd()]
}

pub fn crd_files() -> anyhow::Result<Vec<(String, String)>> {
    all_crds()
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
