//! TLS for Sluice's Kafka-protocol connections: reading PEM files (a
//! keystore holding a private key and its certificate chain, Kafka's PEM
//! keystore format; a truststore of CA certificates), picking them up again
//! when the files change, and the client side a broker uses to reach its
//! peers' inter-broker listener ([`Transport`]). The server side (the
//! broker's listeners) builds on the same loaders.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_error(path: &Path, detail: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

/// The cryptography every Sluice TLS endpoint uses (ring; set explicitly
/// so no process-wide default has to be installed first).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A private key and its certificate chain (leaf first).
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// Where a PEM keystore is: one file holding the key and the chain, as
/// Kafka's `ssl.keystore.type=PEM` keeps them, or the chain in one file
/// and the key in another, as Kubernetes TLS Secrets (and cert-manager)
/// keep them (`tls.crt`, `tls.key`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeystoreFiles {
    pub chain: PathBuf,
    pub key: Option<PathBuf>,
}

impl KeystoreFiles {
    /// Key and chain in one file.
    pub fn combined(path: impl Into<PathBuf>) -> KeystoreFiles {
        KeystoreFiles {
            chain: path.into(),
            key: None,
        }
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        std::iter::once(self.chain.clone())
            .chain(self.key.clone())
            .collect()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| file_error(path, e))
}

pub fn load_identity(files: &KeystoreFiles) -> Result<Identity, TlsError> {
    let chain = read(&files.chain)?;
    let key_path = files.key.as_deref().unwrap_or(&files.chain);
    let key = match &files.key {
        Some(path) => read(path)?,
        None => chain.clone(),
    };
    let chain =
        certificates(&chain).map_err(|e| file_error(&files.chain, format!("keystore: {e}")))?;
    let key = private_key(&key).map_err(|e| file_error(key_path, format!("keystore: {e}")))?;
    Ok(Identity { chain, key })
}

impl Identity {
    /// From PEM text (the chain and the key may be the same text).
    pub fn from_pem(chain: &[u8], key: &[u8]) -> Result<Identity, TlsError> {
        Ok(Identity {
            chain: certificates(chain).map_err(TlsError::Config)?,
            key: private_key(key).map_err(TlsError::Config)?,
        })
    }
}

fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no CERTIFICATE in it".into());
    }
    Ok(certs)
}

fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("no usable PRIVATE KEY in it ({e})"))
}

/// A PEM truststore: the CA certificates peers' certificates must chain to.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    roots_from_pem(&read(path)?).map_err(|e| match e {
        TlsError::Config(detail) => file_error(path, format!("truststore: {detail}")),
        other => other,
    })
}

/// CA certificates from PEM text.
pub fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(pem).map_err(TlsError::Config)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Config(format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// Something built from files (a TLS configuration, a tokens file), built again when one
/// of the files changes, so certificates are renewed without a restart. A
/// rebuild that fails (a half-written file) keeps the previous value and
/// says why; the next look tries again.
pub struct Reloading<T> {
    files: Vec<PathBuf>,
    build: Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>,
    state: Mutex<Built<T>>,
}

struct Built<T> {
    stamps: Vec<Option<SystemTime>>,
    value: Arc<T>,
    checked: std::time::Instant,
}

/// How often the files are looked at, at most (each look is a stat per file).
const RELOAD_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

impl<T> Reloading<T> {
    /// Builds once now (an error here is a configuration error).
    pub fn new(
        files: Vec<PathBuf>,
        build: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Reloading<T>, TlsError> {
        let stamps = stamps(&files);
        let value = Arc::new(build()?);
        Ok(Reloading {
            files,
            build: Box::new(build),
            state: Mutex::new(Built {
                stamps,
                value,
                checked: std::time::Instant::now(),
            }),
        })
    }

    /// The current value, rebuilt first if a file changed since the last
    /// build.
    pub fn current(&self) -> Arc<T> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() < RELOAD_CHECK {
            return state.value.clone();
        }
        state.checked = std::time::Instant::now();
        let now = stamps(&self.files);
        if now != state.stamps {
            match (self.build)() {
                Ok(v) => {
                    tracing::info!(files = ?self.files, "files changed: reloaded");
                    state.value = Arc::new(v);
                    state.stamps = now;
                }
                Err(e) => {
                    tracing::error!(files = ?self.files, error = %e, "files changed but cannot be loaded; keeping what was loaded before");
                }
            }
        }
        state.value.clone()
    }
}

fn stamps(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

/// What a client needs to open TLS connections: whom to trust, its own
/// certificate (mutual TLS), and whether the server's certificate must
/// name the host connected to (Kafka's
/// `ssl.endpoint.identification.algorithm`, `https` by default).
pub struct ClientTls {
    pub truststore: PathBuf,
    pub keystore: Option<KeystoreFiles>,
    pub verify_hostname: bool,
}

impl ClientTls {
    fn build(&self) -> Result<rustls::ClientConfig, TlsError> {
        let identity = self.keystore.as_ref().map(load_identity).transpose()?;
        client_config(
            load_roots(&self.truststore)?,
            identity,
            self.verify_hostname,
        )
    }
}

fn client_config(
    roots: RootCertStore,
    identity: Option<Identity>,
    verify_hostname: bool,
) -> Result<rustls::ClientConfig, TlsError> {
    let roots = Arc::new(roots);
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = if verify_hostname {
        builder.with_root_certificates(roots)
    } else {
        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyHostName(inner)))
    };
    match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain, id.key)
            .map_err(|e| TlsError::Config(format!("client certificate: {e}"))),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// Checks a server certificate's chain and signatures but not the name in
/// it (`ssl.endpoint.identification.algorithm` set empty).
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// How connections to a server are made: plain TCP, or TLS over it.
#[derive(Clone, Default)]
pub enum Transport {
    #[default]
    Plain,
    Tls(Arc<Reloading<rustls::ClientConfig>>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Plain => write!(f, "Plain"),
            Transport::Tls(r) => write!(f, "Tls({:?})", r.files),
        }
    }
}

impl Transport {
    /// A TLS transport from PEM files, re-read when they change.
    pub fn tls(settings: ClientTls) -> Result<Transport, TlsError> {
        let mut files = vec![settings.truststore.clone()];
        files.extend(settings.keystore.iter().flat_map(KeystoreFiles::paths));
        let reloading = Reloading::new(files, move || settings.build())?;
        Ok(Transport::Tls(Arc::new(reloading)))
    }

    /// A TLS transport from PEM text held in memory (e.g. read from a
    /// Kubernetes Secret): the CA certificates to trust and, for mutual
    /// TLS, this client's certificate chain and key.
    pub fn tls_from_pem(
        ca: &[u8],
        identity: Option<(&[u8], &[u8])>,
        verify_hostname: bool,
    ) -> Result<Transport, TlsError> {
        let config = client_config_from_pem(ca, identity, verify_hostname)?;
        let fixed = Reloading::new(Vec::new(), move || Ok(config.clone()))?;
        Ok(Transport::Tls(Arc::new(fixed)))
    }
}

/// A client TLS configuration from PEM text: the CA certificates to trust
/// and, for mutual TLS, a certificate chain and key (for HTTPS clients of
/// the admin API as much as for Kafka connections).
pub fn client_config_from_pem(
    ca: &[u8],
    identity: Option<(&[u8], &[u8])>,
    verify_hostname: bool,
) -> Result<rustls::ClientConfig, TlsError> {
    let identity = identity
        .map(|(chain, key)| Identity::from_pem(chain, key))
        .transpose()?;
    client_config(roots_from_pem(ca)?, identity, verify_hostname)
}
