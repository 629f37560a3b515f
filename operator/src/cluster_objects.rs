//! The Kubernetes objects a `Cluster` consists of, as a pure function of its
//! spec: what the Cluster controller server-side-applies. Broker id = pod
//! ordinal (the `apps.kubernetes.io/pod-index` label), per-broker DNS names
//! from a headless Service that publishes not-ready addresses (brokers must
//! find each other before they are ready), one bootstrap Service for
//! clients, the broker config in a ConfigMap whose digest is stamped on the
//! pod template, at most one broker down at a time (PodDisruptionBudget,
//! and `OnDelete` updates so the operator rolls brokers itself, one by one,
//! waiting for health between them).
//!
//! Every broker gets `SLUICE_PEERS` naming all `spec.brokers` brokers by
//! their per-pod DNS names (the controller quorum and replication run on
//! the Kafka port). The quorum's voters are fixed when the cluster first
//! starts: growing a running cluster's quorum is not supported yet.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SecurityContext, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::crd::Cluster;

/// Time a broker pod gets between SIGTERM and SIGKILL: covers the broker's
/// controlled shutdown (moving its leaderships, then answering the
/// requests in progress; at most `controlled-shutdown-timeout-ms`, 30 s by
/// default, and usually well under a second) plus flushing its logs.
pub const TERMINATION_GRACE_SECONDS: i64 = 60;

pub const KAFKA_PORT: i32 = 9092;
pub const ADMIN_PORT: i32 = 9644;
const DATA_DIR: &str = "/var/lib/sluice";
const CONFIG_DIR: &str = "/etc/sluice";
const CONFIG_FILE: &str = "sluice.yaml";
/// Pod-template annotation carrying the digest of the broker config: a
/// config change is a template change, which the controller rolls.
pub const CONFIG_HASH_ANNOTATION: &str = "sluice.dev/config-hash";

/// Every object of one Cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterObjects {
    pub config: ConfigMap,
    pub headless: Service,
    pub bootstrap: Service,
    pub statefulset: StatefulSet,
    pub pdb: PodDisruptionBudget,
    /// A `monitoring.coreos.com/v1` ServiceMonitor, when asked for.
    pub service_monitor: Option<Value>,
}

pub fn headless_name(cluster: &str) -> String {
    format!("{cluster}-brokers")
}

pub fn bootstrap_name(cluster: &str) -> String {
    format!("{cluster}-bootstrap")
}

/// The bootstrap address clients (and the operator) use.
pub fn bootstrap_address(cluster: &str, namespace: &str) -> String {
    format!("{}.{namespace}.svc:{KAFKA_PORT}", bootstrap_name(cluster))
}

/// Stable DNS name of broker `ordinal`.
pub fn broker_host(cluster: &str, namespace: &str, ordinal: i32) -> String {
    format!(
        "{cluster}-{ordinal}.{}.{namespace}.svc",
        headless_name(cluster)
    )
}

fn selector_labels(cluster: &str) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name", "sluice"),
        ("app.kubernetes.io/instance", cluster),
        ("app.kubernetes.io/component", "broker"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn labels(cluster: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(cluster);
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        "sluice-operator".into(),
    );
    l
}

fn owner(c: &Cluster) -> OwnerReference {
    OwnerReference {
        api_version: format!("{}/{}", crate::crd::GROUP, crate::crd::VERSION),
        kind: "Cluster".into(),
        name: c.metadata.name.clone().unwrap_or_default(),
        uid: c.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn meta(c: &Cluster, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: c.metadata.namespace.clone(),
        labels: Some(labels(&c.metadata.name.clone().unwrap_or_default())),
        owner_references: Some(vec![owner(c)]),
        ..Default::default()
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn env_from_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..Default::default()
        }),
    }
}

fn http_probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        ..Default::default()
    }
}

/// The broker config file: the spec's keys (broker flag names). Sorted, so
/// the same spec always gives the same bytes and the same digest.
fn config_file(c: &Cluster) -> String {
    c.spec
        .config
        .iter()
        .map(|(k, v)| format!("{k}: {}\n", serde_json::Value::String(v.clone())))
        .collect()
}

/// The objects of `c`, which must have a name, a namespace and a uid (as
/// any object read from the API server has).
pub fn desired(c: &Cluster) -> ClusterObjects {
    let name = c.metadata.name.clone().unwrap_or_default();
    let ns = c.metadata.namespace.clone().unwrap_or_default();
    let config = config_file(c);
    let config_hash = format!("{:x}", Sha256::digest(config.as_bytes()));
    let selector = LabelSelector {
        match_labels: Some(selector_labels(&name)),
        ..Default::default()
    };
    let ports = vec![
        ServicePort {
            name: Some("kafka".into()),
            port: KAFKA_PORT,
            target_port: Some(IntOrString::String("kafka".into())),
            protocol: Some("TCP".into()),
            ..Default::default()
        },
        ServicePort {
            name: Some("admin".into()),
            port: ADMIN_PORT,
            target_port: Some(IntOrString::String("admin".into())),
            protocol: Some("TCP".into()),
            ..Default::default()
        },
    ];
    let container = Container {
        name: "broker".into(),
        image: Some(c.spec.image.clone()),
        args: Some(vec![
            "serve".into(),
            "--config".into(),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        ]),
        env: Some(vec![
            env_from_field("POD_NAME", "metadata.name"),
            // The id is the pod's ordinal: from the pod-index label where
            // the API server sets it (1.28+; empty before), else from the
            // host name, the pod's name (`demo-2`).
            env("SLUICE_NODE_ID_FROM_HOSTNAME", "true"),
            env_from_field(
                "SLUICE_POD_INDEX",
                "metadata.labels['apps.kubernetes.io/pod-index']",
            ),
            env("SLUICE_LISTEN", &format!("0.0.0.0:{KAFKA_PORT}")),
            env("SLUICE_ADMIN_LISTEN", &format!("0.0.0.0:{ADMIN_PORT}")),
            env(
                "SLUICE_ADVERTISED_LISTEN",
                &format!("$(POD_NAME).{}.{ns}.svc:{KAFKA_PORT}", headless_name(&name)),
            ),
            env("SLUICE_DATA_DIR", DATA_DIR),
            env("SLUICE_PEERS", &peers(c.spec.brokers, &name, &ns)),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("kafka".into()),
                container_port: KAFKA_PORT,
                // Explicit: server-side apply keys container ports by
                // port and protocol, and some API servers refuse a port
                // whose protocol is left to the default.
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("admin".into()),
                container_port: ADMIN_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        readiness_probe: Some(http_probe("/readyz", 5)),
        liveness_probe: Some(http_probe("/healthz", 10)),
        resources: c.spec.resources.clone(),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "data".into(),
                mount_path: DATA_DIR.into(),
                ..Default::default()
            },
            VolumeMount {
                name: "config".into(),
                mount_path: CONFIG_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        security_context: Some(SecurityContext {
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut template_meta = ObjectMeta {
        labels: Some(labels(&name)),
        ..Default::default()
    };
    template_meta.annotations = Some([(CONFIG_HASH_ANNOTATION.to_string(), config_hash)].into());
    let statefulset = StatefulSet {
        metadata: meta(c, name.clone()),
        spec: Some(StatefulSetSpec {
            replicas: Some(c.spec.brokers),
            service_name: Some(headless_name(&name)),
            selector: selector.clone(),
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                rolling_update: None,
            }),
            template: PodTemplateSpec {
                metadata: Some(template_meta),
                spec: Some(PodSpec {
                    containers: vec![container],
                    termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        fs_group: Some(65532),
                        ..Default::default()
                    }),
                    volumes: Some(vec![Volume {
                        name: "config".into(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: format!("{name}-config"),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".into()),
                    ..Default::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: c.spec.storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(
                            [("storage".to_string(), Quantity(c.spec.storage.size.clone()))].into(),
                        ),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let service_monitor = c.spec.service_monitor.then(|| {
        json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": serde_json::to_value(meta(c, name.clone())).unwrap_or(Value::Null),
            "spec": {
                "selector": { "matchLabels": selector_labels(&name) },
                "endpoints": [{ "port": "admin", "path": "/metrics" }],
            },
        })
    });
    ClusterObjects {
        config: ConfigMap {
            metadata: meta(c, format!("{name}-config")),
            data: Some([(CONFIG_FILE.to_string(), config)].into()),
            ..Default::default()
        },
        headless: Service {
            metadata: meta(c, headless_name(&name)),
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                publish_not_ready_addresses: Some(true),
                selector: Some(selector_labels(&name)),
                ports: Some(ports.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
        bootstrap: Service {
            metadata: meta(c, bootstrap_name(&name)),
            spec: Some(ServiceSpec {
                selector: Some(selector_labels(&name)),
                ports: Some(ports),
                ..Default::default()
            }),
            ..Default::default()
        },
        statefulset,
        pdb: PodDisruptionBudget {
            metadata: meta(c, name.clone()),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(selector),
                ..Default::default()
            }),
            ..Default::default()
        },
        service_monitor,
    }
}

/// `--peers` for a cluster of `brokers` pods: `i@<pod i DNS name>:9092`.
pub fn peers(brokers: i32, name: &str, ns: &str) -> String {
    (0..brokers.max(0))
        .map(|i| format!("{i}@{}:{KAFKA_PORT}", broker_host(name, ns, i)))
        .collect::<Vec<_>>()
        .join(",")
}
