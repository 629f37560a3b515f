//! Certificates for TLS tests, made fresh per test: a CA, a broker
//! certificate (for `localhost` and `127.0.0.1`, usable as server and as
//! client, since brokers authenticate one another with it) in a PEM
//! keystore (private key and chain in one file, as `--ssl-keystore-location`
//! takes it), and a client certificate for mutual TLS.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use tempfile::TempDir;

pub struct TestPki {
    /// The CA certificate (PEM): a truststore.
    pub ca: PathBuf,
    /// The broker's key and certificate chain (PEM).
    pub broker_keystore: PathBuf,
    /// The same chain and key in two files, as Kubernetes TLS Secrets keep
    /// them (`tls.crt`, `tls.key`).
    pub broker_cert: PathBuf,
    pub broker_key: PathBuf,
    /// A client's certificate (PEM) and key (PEM), for librdkafka's
    /// `ssl.certificate.location` / `ssl.key.location`.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The same client key and certificate in one PEM file (a keystore,
    /// as `sluice_client::tls::ClientTls` takes it).
    pub client_keystore: PathBuf,
    _dir: TempDir,
}

impl TestPki {
    pub fn generate() -> Result<TestPki> {
        let dir = tempfile::Builder::new().prefix("sluice-pki-").tempdir()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Sluice test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |cn: &str, names: Vec<String>| -> Result<(String, String)> {
            let mut params = CertificateParams::new(names)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &issuer)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (broker_cert, broker_key) = leaf(
            "broker",
            vec!["localhost".to_string(), "127.0.0.1".to_string()],
        )?;
        let (client_cert, client_key) = leaf("client", Vec::new())?;

        let write = |name: &str, text: &str| -> Result<PathBuf> {
            let path = dir.path().join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        Ok(TestPki {
            ca: write("ca.pem", &ca_cert.pem())?,
            broker_keystore: write("broker.pem", &format!("{broker_key}{broker_cert}"))?,
            broker_cert: write("broker.crt", &broker_cert)?,
            broker_key: write("broker.key", &broker_key)?,
            client_keystore: write("client.pem", &format!("{client_key}{client_cert}"))?,
            client_cert: write("client.crt", &client_cert)?,
            client_key: write("client.key", &client_key)?,
            _dir: dir,
        })
    }
}

impl TestPki {
    /// A client transport (Sluice's own client) trusting this CA and
    /// presenting `keystore` (key and chain in one file) if given.
    pub fn transport(&self, keystore: Option<&Path>) -> Result<sluice_client::Transport> {
        Ok(sluice_client::Transport::tls(
            sluice_client::tls::ClientTls {
                truststore: self.ca.clone(),
                keystore: keystore.map(sluice_client::tls::KeystoreFiles::combined),
                verify_hostname: true,
            },
        )?)
    }
}

/// Fails unless a client with these settings gets metadata from `bootstrap`
/// within a few seconds (blocking).
pub fn check_connects(bootstrap: &str, security: &[(&str, &str)]) -> Result<()> {
    let mut config = crate::base_config(bootstrap);
    for (k, v) in security {
        config.set(*k, *v);
    }
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(5))
        .map(|_| ())
        .context("metadata")
}

/// One HTTPS request to an admin API served with `--admin-tls`, trusting
/// `pki`'s CA and presenting `client` (certificate, key PEM files) if given.
pub fn https_as(
    addr: std::net::SocketAddr,
    pki: &TestPki,
    client: Option<(&Path, &Path)>,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<crate::HttpResponse> {
    let ca = std::fs::read(&pki.ca)?;
    let identity = client
        .map(|(cert, key)| -> Result<(Vec<u8>, Vec<u8>)> {
            Ok((std::fs::read(cert)?, std::fs::read(key)?))
        })
        .transpose()?;
    let config = sluice_client::tls::client_config_from_pem(
        &ca,
        identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
        true,
    )?;
    let name = rustls::pki_types::ServerName::try_from(addr.ip().to_string())?;
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)?;
    let stream = rustls::StreamOwned::new(conn, crate::admin_stream(addr)?);
    crate::http_exchange(stream, addr, method, path, token, b"")
}
