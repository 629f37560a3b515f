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
//!
//! Security (`listeners`, `tls`, `authorization`): the Kafka port becomes
//! the `INTERNAL` listener (mutual TLS with the `tls` Secret's certificate
//! when there is one), each client listener gets its port, and with
//! authorization the brokers require the tokens of the operator's
//! credentials Secret on their admin API (see `OPERATOR_PRINCIPAL`).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::crd::{Cluster, ListenerAuthentication};

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
/// The brokers' own listener (replication, the controller quorum, the
/// operator's Kafka requests) on `KAFKA_PORT`.
pub const INTERNAL_LISTENER: &str = "INTERNAL";
/// Where the `tls` Secret is mounted (not under the read-only config
/// volume: a mount point cannot be made inside it).
const TLS_DIR: &str = "/etc/sluice-tls";
const CREDENTIALS_DIR: &str = "/etc/sluice-credentials";
/// The principal the operator's admin-API token stands for: a super user.
pub const OPERATOR_PRINCIPAL: &str = "User:sluice-operator";
/// The principal of the metrics token (a ServiceMonitor's scrapes).
pub const METRICS_PRINCIPAL: &str = "User:sluice-metrics";
/// Keys of the credentials Secret the operator makes for a Cluster with
/// authorization: the brokers' `admin-auth-tokens-file`, and the two
/// tokens it lists.
pub const ADMIN_TOKENS_KEY: &str = "admin-tokens";
pub const OPERATOR_TOKEN_KEY: &str = "operator-token";
pub const METRICS_TOKEN_KEY: &str = "metrics-token";
const STANDARD_AUTHORIZER: &str = "org.apache.kafka.metadata.authorizer.StandardAuthorizer";

/// The Secret with the operator's admin-API tokens for `cluster`.
pub fn credentials_secret_name(cluster: &str) -> String {
    format!("{cluster}-operator-credentials")
}

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

/// The bootstrap address clients use: the first client listener's port,
/// or the Kafka port when there is none.
pub fn bootstrap_address(c: &Cluster) -> String {
    let name = c.metadata.name.clone().unwrap_or_default();
    let ns = c.metadata.namespace.clone().unwrap_or_default();
    let port = c.spec.listeners.first().map_or(KAFKA_PORT, |l| l.port);
    format!("{}.{ns}.svc:{port}", bootstrap_name(&name))
}

/// The operator's Kafka address for a cluster: the `INTERNAL` listener
/// behind the bootstrap Service.
pub fn internal_bootstrap_address(cluster: &str, namespace: &str) -> String {
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

/// Metadata of an object `c` owns (deleted with it).
pub fn owned_meta(c: &Cluster, name: String) -> ObjectMeta {
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

/// A probe of the admin port: HTTPS when the brokers serve it with TLS
/// (the kubelet does not check the certificate).
fn http_probe(c: &Cluster, path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            scheme: c.spec.tls.as_ref().map(|_| "HTTPS".to_string()),
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
    // The settings a broker reads at start: its config file and the
    // security settings (environment, mounted Secrets). Not the broker
    // count: scaling does not restart the brokers already there.
    let security = serde_json::to_string(&(
        &c.spec.listeners,
        &c.spec.tls,
        &c.spec.sasl_mechanisms,
        &c.spec.authorization,
    ))
    .unwrap_or_default();
    // Default security hashes as before it existed: an operator upgrade
    // does not restart every broker.
    let hashed = if secured(c) || c.spec.authorization.is_some() {
        format!("{config}\0{security}")
    } else {
        config.clone()
    };
    let config_hash = format!("{:x}", Sha256::digest(hashed.as_bytes()));
    let selector = LabelSelector {
        match_labels: Some(selector_labels(&name)),
        ..Default::default()
    };
    let ports: Vec<ServicePort> = named_ports(c)
        .into_iter()
        .map(|(port_name, port)| ServicePort {
            name: Some(port_name.clone()),
            port,
            target_port: Some(IntOrString::String(port_name)),
            protocol: Some("TCP".into()),
            ..Default::default()
        })
        .collect();
    let container = Container {
        name: "broker".into(),
        image: Some(c.spec.image.clone()),
        args: Some(vec![
            "serve".into(),
            "--config".into(),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        ]),
        env: Some(
            vec![
                env_from_field("POD_NAME", "metadata.name"),
                // The id is the pod's ordinal: from the pod-index label where
                // the API server sets it (1.28+; empty before), else from the
                // host name, the pod's name (`demo-2`).
                env("SLUICE_NODE_ID_FROM_HOSTNAME", "true"),
                env_from_field(
                    "SLUICE_POD_INDEX",
                    "metadata.labels['apps.kubernetes.io/pod-index']",
                ),
                env("SLUICE_ADMIN_LISTEN", &format!("0.0.0.0:{ADMIN_PORT}")),
                env("SLUICE_DATA_DIR", DATA_DIR),
                env("SLUICE_PEERS", &peers(c.spec.brokers, &name, &ns)),
            ]
            .into_iter()
            .chain(listener_env(c, &name, &ns))
            .chain(security_env(c))
            .collect(),
        ),
        ports: Some(
            named_ports(c)
                .into_iter()
                .map(|(port_name, port)| ContainerPort {
                    name: Some(port_name),
                    container_port: port,
                    // Explicit: server-side apply keys container ports by
                    // port and protocol, and some API servers refuse a port
                    // whose protocol is left to the default.
                    protocol: Some("TCP".into()),
                    ..Default::default()
                })
                .collect(),
        ),
        readiness_probe: Some(http_probe(c, "/readyz", 5)),
        liveness_probe: Some(http_probe(c, "/healthz", 10)),
        resources: c.spec.resources.clone(),
        volume_mounts: Some(
            [("data", DATA_DIR, false), ("config", CONFIG_DIR, true)]
                .into_iter()
                .chain(c.spec.tls.as_ref().map(|_| ("tls", TLS_DIR, true)))
                .chain(
                    c.spec
                        .authorization
                        .as_ref()
                        .map(|_| ("credentials", CREDENTIALS_DIR, true)),
                )
                .map(|(volume, path, read_only)| VolumeMount {
                    name: volume.into(),
                    mount_path: path.into(),
                    read_only: read_only.then_some(true),
                    ..Default::default()
                })
                .collect(),
        ),
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
        metadata: owned_meta(c, name.clone()),
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
                    volumes: Some(volumes(c, &name)),
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
        let mut endpoint = json!({ "port": "admin", "path": "/metrics" });
        if let Some(tls) = &c.spec.tls {
            // Scraped by pod address: the certificate is checked for the
            // bootstrap Service's name, which it carries.
            endpoint["scheme"] = json!("https");
            endpoint["tlsConfig"] = json!({
                "ca": { "secret": { "name": tls.secret_name, "key": "ca.crt" } },
                "serverName": format!("{}.{ns}.svc", bootstrap_name(&name)),
            });
        }
        if c.spec.authorization.is_some() {
            endpoint["bearerTokenSecret"] = json!({
                "name": credentials_secret_name(&name),
                "key": METRICS_TOKEN_KEY,
            });
        }
        json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": serde_json::to_value(owned_meta(c, name.clone())).unwrap_or(Value::Null),
            "spec": {
                "selector": { "matchLabels": selector_labels(&name) },
                "endpoints": [endpoint],
            },
        })
    });
    ClusterObjects {
        config: ConfigMap {
            metadata: owned_meta(c, format!("{name}-config")),
            data: Some([(CONFIG_FILE.to_string(), config)].into()),
            ..Default::default()
        },
        headless: Service {
            metadata: owned_meta(c, headless_name(&name)),
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
            metadata: owned_meta(c, bootstrap_name(&name)),
            spec: Some(ServiceSpec {
                selector: Some(selector_labels(&name)),
                ports: Some(ports),
                ..Default::default()
            }),
            ..Default::default()
        },
        statefulset,
        pdb: PodDisruptionBudget {
            metadata: owned_meta(c, name.clone()),
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

/// Container and Service ports by name: `kafka` (the `INTERNAL`
/// listener), `admin`, and each client listener's (its name in lower case).
fn named_ports(c: &Cluster) -> Vec<(String, i32)> {
    [
        ("kafka".to_string(), KAFKA_PORT),
        ("admin".to_string(), ADMIN_PORT),
    ]
    .into_iter()
    .chain(
        c.spec
            .listeners
            .iter()
            .map(|l| (port_name(&l.name), l.port)),
    )
    .collect()
}

/// A listener's port name: lower case, `_` as `-` (an IANA service name).
pub fn port_name(listener: &str) -> String {
    listener.to_ascii_lowercase().replace('_', "-")
}

/// Whether the cluster uses more than the one PLAINTEXT listener.
fn secured(c: &Cluster) -> bool {
    !c.spec.listeners.is_empty() || c.spec.tls.is_some()
}

/// The listener settings: one PLAINTEXT listener (`--listen`) by default,
/// else `INTERNAL` plus the client listeners, Kafka's way.
fn listener_env(c: &Cluster, name: &str, ns: &str) -> Vec<EnvVar> {
    let host = format!("$(POD_NAME).{}.{ns}.svc", headless_name(name));
    if !secured(c) {
        return vec![
            env("SLUICE_LISTEN", &format!("0.0.0.0:{KAFKA_PORT}")),
            env("SLUICE_ADVERTISED_LISTEN", &format!("{host}:{KAFKA_PORT}")),
        ];
    }
    let internal = if c.spec.tls.is_some() {
        "SSL"
    } else {
        "PLAINTEXT"
    };
    let all: Vec<(&str, i32, &str)> = std::iter::once((INTERNAL_LISTENER, KAFKA_PORT, internal))
        .chain(c.spec.listeners.iter().map(|l| {
            let protocol = match (l.tls, l.authentication) {
                (false, ListenerAuthentication::None) => "PLAINTEXT",
                (true, ListenerAuthentication::None) => "SSL",
                (false, ListenerAuthentication::Sasl) => "SASL_PLAINTEXT",
                (true, ListenerAuthentication::Sasl) => "SASL_SSL",
            };
            (l.name.as_str(), l.port, protocol)
        }))
        .collect();
    let join =
        |f: &dyn Fn(&(&str, i32, &str)) -> String| all.iter().map(f).collect::<Vec<_>>().join(",");
    vec![
        env(
            "SLUICE_LISTENERS",
            &join(&|(n, port, _)| format!("{n}://0.0.0.0:{port}")),
        ),
        env(
            "SLUICE_ADVERTISED_LISTENERS",
            &join(&|(n, port, _)| format!("{n}://{host}:{port}")),
        ),
        env(
            "SLUICE_LISTENER_SECURITY_PROTOCOL_MAP",
            &join(&|(n, _, protocol)| format!("{n}:{protocol}")),
        ),
        env("SLUICE_INTER_BROKER_LISTENER_NAME", INTERNAL_LISTENER),
    ]
}

/// TLS files, SASL mechanisms, the authorizer and the admin API's tokens.
fn security_env(c: &Cluster) -> Vec<EnvVar> {
    let mut out = Vec::new();
    if c.spec.tls.is_some() {
        out.push(env(
            "SLUICE_SSL_KEYSTORE_LOCATION",
            &format!("{TLS_DIR}/tls.crt"),
        ));
        out.push(env(
            "SLUICE_SSL_KEYSTORE_KEY_LOCATION",
            &format!("{TLS_DIR}/tls.key"),
        ));
        out.push(env(
            "SLUICE_SSL_TRUSTSTORE_LOCATION",
            &format!("{TLS_DIR}/ca.crt"),
        ));
        // The admin API (plugin uploads, tokens, metrics) over TLS too.
        out.push(env("SLUICE_ADMIN_TLS", "true"));
    }
    if c.spec
        .listeners
        .iter()
        .any(|l| l.authentication == ListenerAuthentication::Sasl)
    {
        let mechanisms: Vec<&str> = c.spec.sasl_mechanisms.iter().map(|m| m.name()).collect();
        out.push(env("SLUICE_SASL_ENABLED_MECHANISMS", &mechanisms.join(",")));
    }
    if let Some(a) = &c.spec.authorization {
        let supers: Vec<&str> = std::iter::once(OPERATOR_PRINCIPAL)
            .chain(a.super_users.iter().map(String::as_str))
            .collect();
        out.push(env("SLUICE_AUTHORIZER_CLASS_NAME", STANDARD_AUTHORIZER));
        out.push(env("SLUICE_SUPER_USERS", &supers.join(";")));
        out.push(env(
            "SLUICE_ADMIN_AUTH_TOKENS_FILE",
            &format!("{CREDENTIALS_DIR}/{ADMIN_TOKENS_KEY}"),
        ));
    }
    out
}

fn volumes(c: &Cluster, name: &str) -> Vec<Volume> {
    let secret = |volume: &str, secret: String, keys: &[&str]| Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            items: Some(
                keys.iter()
                    .map(|k| KeyToPath {
                        key: (*k).into(),
                        path: (*k).into(),
                        mode: None,
                    })
                    .collect(),
            ),
            // Owner and group (the pod's fsGroup) only: keys and tokens.
            default_mode: Some(0o440),
            ..Default::default()
        }),
        ..Default::default()
    };
    std::iter::once(Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: format!("{name}-config"),
            ..Default::default()
        }),
        ..Default::default()
    })
    .chain(c.spec.tls.as_ref().map(|t| {
        secret(
            "tls",
            t.secret_name.clone(),
            &["tls.crt", "tls.key", "ca.crt"],
        )
    }))
    .chain(c.spec.authorization.as_ref().map(|_| {
        secret(
            "credentials",
            credentials_secret_name(name),
            &[ADMIN_TOKENS_KEY],
        )
    }))
    .collect()
}
