//! What every reconcile shares: the Kubernetes client, the event recorder,
//! the metrics, and how to reach a Cluster's brokers.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};

use crate::cluster_objects::{self, ADMIN_PORT};
use crate::crd::Cluster;
use crate::metrics::Metrics;

/// The field manager of every server-side apply the operator sends.
pub const FIELD_MANAGER: &str = "sluice-operator";

/// How the operator reaches a Cluster's brokers.
#[derive(Clone, Debug)]
pub enum Endpoints {
    /// In-cluster DNS: the bootstrap Service for Kafka and admin calls, the
    /// headless Service's per-broker names for each broker's metrics.
    ServiceDns,
    /// The same fixed addresses for every Cluster: tests, or an operator
    /// run outside the cluster through port-forwards. `admin[i]` is broker
    /// `i`'s admin base URL.
    Fixed { kafka: String, admin: Vec<String> },
}

impl Endpoints {
    /// `host:port` for Kafka admin requests.
    pub fn kafka(&self, c: &Cluster) -> String {
        match self {
            Endpoints::ServiceDns => cluster_objects::bootstrap_address(&name(c), &namespace(c)),
            Endpoints::Fixed { kafka, .. } => kafka.clone(),
        }
    }

    /// Base URL of an admin API (any broker: plugin uploads are replicated).
    pub fn admin(&self, c: &Cluster) -> String {
        match self {
            Endpoints::ServiceDns => format!(
                "http://{}.{}.svc:{ADMIN_PORT}",
                cluster_objects::bootstrap_name(&name(c)),
                namespace(c)
            ),
            Endpoints::Fixed { admin, .. } => admin.first().cloned().unwrap_or_default(),
        }
    }

    /// Base URL of broker `ordinal`'s admin API, if it has one.
    pub fn broker_admin(&self, c: &Cluster, ordinal: i32) -> Option<String> {
        match self {
            Endpoints::ServiceDns => Some(format!(
                "http://{}:{ADMIN_PORT}",
                cluster_objects::broker_host(&name(c), &namespace(c), ordinal)
            )),
            Endpoints::Fixed { admin, .. } => usize::try_from(ordinal)
                .ok()
                .and_then(|i| admin.get(i).cloned()),
        }
    }
}

fn name(c: &Cluster) -> String {
    c.metadata.name.clone().unwrap_or_default()
}

fn namespace(c: &Cluster) -> String {
    c.metadata.namespace.clone().unwrap_or_default()
}

/// How the operator talks to one Cluster's brokers: where, over what, and
/// with which admin-API token (authorization on).
pub struct BrokerAccess {
    /// `host:port` of the `INTERNAL` listener, for Kafka admin requests.
    pub kafka: String,
    /// Mutual TLS with the `tls` Secret's certificate when the cluster has
    /// one (the `INTERNAL` listener requires it), else plain TCP.
    pub transport: sluice_client::Transport,
    pub admin_token: Option<String>,
}

impl BrokerAccess {
    pub async fn kafka_admin(&self) -> anyhow::Result<crate::kafka_admin::KafkaAdmin> {
        crate::kafka_admin::KafkaAdmin::open(&self.kafka, &self.transport).await
    }

    /// The admin API at `base` (a URL from `Endpoints`) with this token.
    pub fn admin_api(&self, base: &str) -> crate::broker_admin::BrokerAdmin {
        crate::broker_admin::BrokerAdmin::new(base).with_token(self.admin_token.clone())
    }
}

/// `key` of a Secret's data, or why it cannot be had (the user's to fix).
fn secret_key(secret: &Secret, key: &str) -> crate::error::Result<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .ok_or_else(|| {
            crate::error::Error::Invalid(format!(
                "Secret {} has no key {key}",
                secret.metadata.name.clone().unwrap_or_default()
            ))
        })
}

pub struct Context {
    pub client: kube::Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub endpoints: Endpoints,
    /// How often a converged object is looked at again: broker-side drift
    /// (a topic config changed with kcat, a deleted plugin) raises no
    /// Kubernetes event, so it is found by looking.
    pub resync: Duration,
}

impl Context {
    /// How to reach `c`'s brokers, reading the Secrets its security
    /// settings name.
    pub async fn access(&self, c: &Cluster) -> crate::error::Result<BrokerAccess> {
        use crate::error::Error;
        let secrets = Api::<Secret>::namespaced(self.client.clone(), &namespace(c));
        let get = |secret_name: String| {
            let secrets = secrets.clone();
            async move {
                secrets
                    .get_opt(&secret_name)
                    .await?
                    .ok_or_else(|| Error::Invalid(format!("Secret {secret_name} does not exist")))
            }
        };
        let transport = match &c.spec.tls {
            None => sluice_client::Transport::Plain,
            Some(tls) => {
                let secret = get(tls.secret_name.clone()).await?;
                let (ca, chain, key) = (
                    secret_key(&secret, "ca.crt")?,
                    secret_key(&secret, "tls.crt")?,
                    secret_key(&secret, "tls.key")?,
                );
                sluice_client::Transport::tls_from_pem(&ca, Some((&chain, &key)), true)
                    .map_err(|e| Error::Invalid(format!("Secret {}: {e}", tls.secret_name)))?
            }
        };
        let admin_token = match &c.spec.authorization {
            None => None,
            Some(_) => {
                let name = cluster_objects::credentials_secret_name(&name(c));
                let token = secret_key(&get(name).await?, cluster_objects::OPERATOR_TOKEN_KEY)?;
                Some(String::from_utf8_lossy(&token).trim().to_string())
            }
        };
        Ok(BrokerAccess {
            kafka: self.endpoints.kafka(c),
            transport,
            admin_token,
        })
    }

    pub fn new(
        client: kube::Client,
        metrics: Arc<Metrics>,
        endpoints: Endpoints,
        resync: Duration,
        instance: Option<String>,
    ) -> Context {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance,
            },
        );
        Context {
            client,
            recorder,
            metrics,
            endpoints,
            resync,
        }
    }
}

/// RFC 3339 "now", for condition transition times.
pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// A random secret: 32 bytes from the system's CSPRNG, as hex.
pub fn random_token() -> crate::error::Result<String> {
    let bytes = random_bytes::<32>()?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub fn random_bytes<const N: usize>() -> crate::error::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| crate::error::Error::Invalid("the system random source failed".into()))?;
    Ok(bytes)
}
