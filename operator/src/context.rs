//! What every reconcile shares: the Kubernetes client, the event recorder,
//! the metrics, and how to reach a Cluster's brokers.

use std::sync::Arc;
use std::time::Duration;

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
