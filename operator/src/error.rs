//! One error type for every controller, with a short stable label per kind
//! so the failure metric can be broken down without unbounded cardinality.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The cluster's brokers could not be reached or refused a request.
    #[error("brokers: {0:#}")]
    Broker(anyhow::Error),
    /// A resource names something that is not there or cannot be used.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// The `error` label of `sluice_operator_reconcile_errors_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "kube_conflict",
            Error::Kube(kube::Error::Api(_)) => "kube_api",
            Error::Kube(_) => "kube_client",
            Error::Broker(_) => "broker",
            Error::Invalid(_) => "invalid",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
