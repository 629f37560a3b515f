//! What every reconcile shares: the Kubernetes client, the event recorder,
//! the metrics, and how to reach a Cluster's brokers.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};

use crate::broker_admin::BrokerAdmin;
use crate::cluster_objects::{self, ADMIN_PORT};
use crate::crd::Cluster;
use crate::kafka_admin::KafkaAdmin;
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
            Endpoints::ServiceDns => {
                cluster_objects::internal_bootstrap_address(&name(c), &namespace(c))
            }
            Endpoints::Fixed { kafka, .. } => kafka.clone(),
        }
    }

    /// Base URL of an admin API (any broker: plugin uploads are replicated).
    pub fn admin(&self, c: &Cluster) -> String {
        match self {
            Endpoints::ServiceDns => format!(
                "{}://{}.{}.svc:{ADMIN_PORT}",
                admin_scheme(c),
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
                "{}://{}:{ADMIN_PORT}",
                admin_scheme(c),
                cluster_objects::broker_host(&name(c), &namespace(c), ordinal)
            )),
            Endpoints::Fixed { admin, .. } => usize::try_from(ordinal)
                .ok()
                .and_then(|i| admin.get(i).cloned()),
        }
    }
}

/// The brokers serve their admin API over TLS when the cluster has `tls`.
fn admin_scheme(c: &Cluster) -> &'static str {
    if c.spec.tls.is_some() {
        "https"
    } else {
        "http"
    }
}

fn name(c: &Cluster) -> String {
    c.metadata.name.clone().unwrap_or_default()
}

fn namespace(c: &Cluster) -> String {
    c.metadata.namespace.clone().unwrap_or_default()
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
    async fn secret(&self, c: &Cluster, name: &str) -> crate::error::Result<Secret> {
        Api::<Secret>::namespaced(self.client.clone(), &namespace(c))
            .get_opt(name)
            .await?
            .ok_or_else(|| crate::error::Error::Invalid(format!("Secret {name} does not exist")))
    }

    /// A Kafka admin connection to `c`'s `INTERNAL` listener: mutual TLS
    /// with the `tls` Secret's certificate when the cluster has one (the
    /// listener then requires it), else plain TCP.
    pub async fn kafka_admin(&self, c: &Cluster) -> crate::error::Result<KafkaAdmin> {
        use crate::error::Error;
        let transport = match &c.spec.tls {
            None => sluice_client::Transport::Plain,
            Some(tls) => {
                let secret = self.secret(c, &tls.secret_name).await?;
                let (ca, chain, key) = (
                    secret_key(&secret, "ca.crt")?,
                    secret_key(&secret, "tls.crt")?,
                    secret_key(&secret, "tls.key")?,
                );
                sluice_client::Transport::tls_from_pem(&ca, Some((&chain, &key)), true)
                    .map_err(|e| Error::Invalid(format!("Secret {}: {e}", tls.secret_name)))?
            }
        };
        KafkaAdmin::open(&self.endpoints.kafka(c), &transport)
            .await
            .map_err(Error::Broker)
    }

    /// The operator's admin-API token for `c` (authorization on), from the
    /// credentials Secret the Cluster controller makes.
    pub async fn admin_token(&self, c: &Cluster) -> crate::error::Result<Option<String>> {
        if c.spec.authorization.is_none() {
            return Ok(None);
        }
        let secret = self
            .secret(c, &cluster_objects::credentials_secret_name(&name(c)))
            .await?;
        let token = secret_key(&secret, cluster_objects::OPERATOR_TOKEN_KEY)?;
        Ok(Some(String::from_utf8_lossy(&token).trim().to_string()))
    }

    /// The admin API of any of `c`'s brokers (`BrokerAdmin::at` for a
    /// given one): over TLS checked against the `tls` Secret's CA when the
    /// cluster has one (its brokers then serve it with `--admin-tls`),
    /// with the operator's token.
    pub async fn admin_api(&self, c: &Cluster) -> crate::error::Result<BrokerAdmin> {
        let base = self.endpoints.admin(c);
        let base = base.as_str();
        let admin = match &c.spec.tls {
            None => BrokerAdmin::new(base),
            Some(tls) => {
                let secret = self.secret(c, &tls.secret_name).await?;
                BrokerAdmin::with_tls(base, &secret_key(&secret, "ca.crt")?).map_err(|e| {
                    crate::error::Error::Invalid(format!("Secret {}: {e:#}", tls.secret_name))
                })?
            }
        };
        Ok(admin.with_token(self.admin_token(c).await?))
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
