//! Kafka-style listeners: the sockets the broker serves, each with a name
//! and a security protocol, the address clients are told for each, and the
//! one that carries the brokers' own traffic (the controller quorum,
//! follower fetches, forwarded produce, transaction markers). This module
//! reads `--listeners`, `--advertised-listeners`,
//! `--listener-security-protocol-map` and `--inter-broker-listener-name`
//! (Kafka's settings, Kafka's formats) and builds each listener's TLS
//! settings; `crate::server` serves them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::config::ServeArgs;
use sluice_client::tls::{self, ClientTls, KeystoreFiles, Reloading, TlsError, Transport};

/// Kafka's security protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    fn parse(s: &str) -> anyhow::Result<SecurityProtocol> {
        Ok(match s.trim().to_ascii_uppercase().as_str() {
            "PLAINTEXT" => SecurityProtocol::Plaintext,
            "SSL" => SecurityProtocol::Ssl,
            "SASL_PLAINTEXT" => SecurityProtocol::SaslPlaintext,
            "SASL_SSL" => SecurityProtocol::SaslSsl,
            other => bail!(
                "unknown security protocol '{other}' (PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL)"
            ),
        })
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// `--sasl-enabled-mechanisms`, checked.
pub fn sasl_mechanisms(args: &ServeArgs) -> anyhow::Result<Vec<crate::auth::Mechanism>> {
    let mut out = Vec::new();
    for name in args
        .sasl_enabled_mechanisms
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let m = crate::auth::Mechanism::parse(&name.to_ascii_uppercase()).with_context(|| {
            format!(
                "sasl-enabled-mechanisms: '{name}' is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"
            )
        })?;
        if !out.contains(&m) {
            out.push(m);
        }
    }
    if out.is_empty() {
        bail!("sasl-enabled-mechanisms is empty");
    }
    Ok(out)
}

/// Kafka's default `listener.security.protocol.map`: each protocol's name
/// is a listener name mapped to itself.
pub const DEFAULT_PROTOCOL_MAP: &str =
    "PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL";

/// The listener `--listen` alone gives: Kafka's default name.
pub const DEFAULT_LISTENER: &str = "PLAINTEXT";

/// One listener as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    pub name: String,
    pub protocol: SecurityProtocol,
    /// `host:port` to bind (an empty host is every interface).
    pub bind: String,
    /// What clients are told, if set; else the bound address.
    pub advertised: Option<(String, u16)>,
    /// Carries the brokers' own traffic.
    pub inter_broker: bool,
}

/// `NAME://host:port,...` into (name, host, port), names upper-cased as
/// Kafka does. IPv6 hosts are bracketed (`[::1]:9092`).
fn parse_endpoints(setting: &str, value: &str) -> anyhow::Result<Vec<(String, String, u16)>> {
    let mut out: Vec<(String, String, u16)> = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, rest) = item
            .split_once("://")
            .with_context(|| format!("{setting}: '{item}' must be NAME://host:port"))?;
        let name = name.trim().to_ascii_uppercase();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            bail!("{setting}: listener name '{name}' must be letters, digits, '_' or '-'");
        }
        let (host, port) = rest
            .rsplit_once(':')
            .with_context(|| format!("{setting}: '{item}' must be NAME://host:port"))?;
        let port: u16 = port
            .parse()
            .with_context(|| format!("{setting}: port of '{item}'"))?;
        if out.iter().any(|(n, _, _)| *n == name) {
            bail!("{setting}: listener name '{name}' appears twice");
        }
        out.push((name, host.to_string(), port));
    }
    Ok(out)
}

/// The listeners the settings describe, checked: every name has a security
/// protocol, advertised names are listeners, exactly one carries the
/// brokers' traffic, TLS listeners have a keystore.
pub fn from_args(args: &ServeArgs) -> anyhow::Result<Vec<ListenerSpec>> {
    let endpoints = match &args.listeners {
        Some(l) => {
            if args.listen.is_some() {
                bail!("set either listen or listeners, not both");
            }
            let e = parse_endpoints("listeners", l)?;
            if e.is_empty() {
                bail!("listeners is empty");
            }
            e
        }
        None => {
            let addr = args.listen_addr();
            vec![(
                DEFAULT_LISTENER.to_string(),
                addr.ip().to_string(),
                addr.port(),
            )]
        }
    };
    let mut protocols = BTreeMap::new();
    let map = args
        .listener_security_protocol_map
        .as_deref()
        .unwrap_or(DEFAULT_PROTOCOL_MAP);
    for item in map.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, protocol) = item.split_once(':').with_context(|| {
            format!("listener-security-protocol-map: '{item}' must be NAME:PROTOCOL")
        })?;
        protocols.insert(
            name.trim().to_ascii_uppercase(),
            SecurityProtocol::parse(protocol).context("listener-security-protocol-map")?,
        );
    }
    let mut advertised = BTreeMap::new();
    match (&args.advertised_listeners, &args.advertised_listen) {
        (Some(_), Some(_)) => {
            bail!("set either advertised-listen or advertised-listeners, not both")
        }
        (Some(a), None) => {
            for (name, host, port) in parse_endpoints("advertised-listeners", a)? {
                if !endpoints.iter().any(|(n, _, _)| *n == name) {
                    bail!("advertised-listeners: '{name}' is not one of the listeners");
                }
                refuse_unroutable("advertised-listeners", &host)?;
                advertised.insert(name, (host, port));
            }
        }
        (None, Some(a)) => {
            let (host, port) = a
                .rsplit_once(':')
                .with_context(|| format!("advertised-listen '{a}' must be host:port"))?;
            let port: u16 = port
                .parse()
                .with_context(|| format!("advertised-listen port '{port}'"))?;
            refuse_unroutable("advertised-listen", host)?;
            let first = &endpoints[0].0;
            advertised.insert(first.clone(), (host.to_string(), port));
        }
        (None, None) => {}
    }
    let inter_broker = match &args.inter_broker_listener_name {
        Some(n) => {
            let n = n.trim().to_ascii_uppercase();
            if !endpoints.iter().any(|(name, _, _)| *name == n) {
                bail!("inter-broker-listener-name '{n}' is not one of the listeners");
            }
            n
        }
        // Kafka's default: the listener named after
        // security.inter.broker.protocol (PLAINTEXT); a lone listener
        // serves everything.
        None if endpoints.len() == 1 => endpoints[0].0.clone(),
        None if endpoints.iter().any(|(n, _, _)| n == DEFAULT_LISTENER) => {
            DEFAULT_LISTENER.to_string()
        }
        None => {
            bail!("with several listeners and none named PLAINTEXT, set inter-broker-listener-name")
        }
    };
    let mut specs = Vec::new();
    for (name, host, port) in endpoints {
        let protocol = *protocols.get(&name).with_context(|| {
            format!("listener '{name}' has no security protocol in listener-security-protocol-map")
        })?;
        if protocol.uses_sasl() && name == inter_broker {
            bail!(
                "the inter-broker listener '{name}' must be PLAINTEXT or SSL: brokers authenticate one another with certificates (an SSL inter-broker listener requires them), not SASL"
            );
        }
        if protocol.uses_tls() && args.ssl_keystore_location.is_none() {
            bail!(
                "listener '{name}' uses TLS: set ssl-keystore-location (a PEM file with the private key and certificate chain)"
            );
        }
        let host = if host.is_empty() {
            "0.0.0.0".to_string()
        } else {
            host
        };
        specs.push(ListenerSpec {
            advertised: advertised.remove(&name),
            inter_broker: name == inter_broker,
            bind: format!("{host}:{port}"),
            name,
            protocol,
        });
    }
    if let Some(ib) = specs.iter().find(|s| s.inter_broker)
        && ib.protocol.uses_tls()
        && args.ssl_truststore_location.is_none()
    {
        bail!(
            "the inter-broker listener '{}' uses TLS, which Sluice makes mutual: set ssl-truststore-location (the CA that signed the brokers' certificates)",
            ib.name
        );
    }
    if !matches!(
        args.ssl_client_auth.as_str(),
        "none" | "requested" | "required"
    ) {
        bail!(
            "ssl-client-auth must be none, requested or required, got '{}'",
            args.ssl_client_auth
        );
    }
    tls_versions(&args.ssl_enabled_protocols)?;
    if matches!(args.ssl_client_auth.as_str(), "requested" | "required")
        && args.ssl_truststore_location.is_none()
    {
        bail!(
            "ssl-client-auth={} needs ssl-truststore-location",
            args.ssl_client_auth
        );
    }
    if !matches!(
        args.ssl_endpoint_identification_algorithm.as_str(),
        "https" | ""
    ) {
        bail!(
            "ssl-endpoint-identification-algorithm must be https or empty, got '{}'",
            args.ssl_endpoint_identification_algorithm
        );
    }
    if !args.authorizer_class_name.trim().is_empty() {
        check_trusted_listener(&specs)?;
    }
    Ok(specs)
}

/// Kafka's rule: clients cannot connect to the meta-address a server binds
/// to reach every interface, so it is never advertised.
fn refuse_unroutable(setting: &str, host: &str) -> anyhow::Result<()> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
    {
        bail!(
            "{setting} cannot use the nonroutable meta-address {host}: use a routable address or host name"
        );
    }
    Ok(())
}

/// With ACLs on, connections on the inter-broker listener are trusted
/// (they act as super users), so only brokers (and tools run beside them)
/// may be able to open one: refuse settings where clients could. (On an
/// SSL inter-broker listener, `inter_broker_principals` also checks who
/// the certificate names.)
fn check_trusted_listener(specs: &[ListenerSpec]) -> anyhow::Result<()> {
    let Some(ib) = specs.iter().find(|s| s.inter_broker) else {
        return Ok(());
    };
    if specs.len() == 1 {
        bail!(
            "with authorizer-class-name set, clients need a listener of their own: the inter-broker listener '{}' is trusted (its connections pass every ACL check); add one with --listeners",
            ib.name
        );
    }
    let loopback = ib
        .bind
        .rsplit_once(':')
        .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']'))
        .is_some_and(|host| {
            host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
    if ib.protocol == SecurityProtocol::Plaintext && !loopback {
        bail!(
            "with authorizer-class-name set, the inter-broker listener '{}' ({}) is trusted (its connections pass every ACL check) and PLAINTEXT lets anyone who reaches it in: make it SSL (brokers then authenticate with certificates) or bind it to a loopback address",
            ib.name,
            ib.bind
        );
    }
    Ok(())
}

/// On an SSL inter-broker listener with ACLs on, the certificate
/// principals let in: this broker's own (from its keystore: brokers that
/// share a certificate, as a Kubernetes Secret does, know each other) and
/// the super users (brokers with certificates of their own are listed
/// there, as Kafka requires). A certificate that merely chains to the
/// truststore is not enough to be trusted. `None`: no such check.
pub fn inter_broker_principals(
    args: &ServeArgs,
    spec: &ListenerSpec,
) -> anyhow::Result<Option<std::collections::BTreeSet<String>>> {
    if !spec.inter_broker
        || !spec.protocol.uses_tls()
        || args.authorizer_class_name.trim().is_empty()
    {
        return Ok(None);
    }
    let identity = tls::load_identity(&args.keystore().context("ssl-keystore-location")?)?;
    let own = identity
        .chain
        .first()
        .and_then(|c| crate::auth::certificate::principal(c))
        .context("the keystore's certificate has no readable subject")?;
    let mut principals = crate::auth::authorizer::parse_super_users(&args.super_users)?;
    principals.insert(own);
    Ok(Some(principals))
}

/// A TLS listener's server side: its certificate, and whose client
/// certificates it accepts. Rebuilt when the PEM files change.
pub type ServerTls = Arc<Reloading<rustls::ServerConfig>>;

/// How client certificates are treated on a listener (Kafka's
/// `ssl.client.auth`); the inter-broker listener always requires them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientAuth {
    None,
    Requested,
    Required,
}

fn client_auth(setting: &str) -> ClientAuth {
    match setting {
        "required" => ClientAuth::Required,
        "requested" => ClientAuth::Requested,
        _ => ClientAuth::None,
    }
}

pub fn server_tls(args: &ServeArgs, spec: &ListenerSpec) -> anyhow::Result<Option<ServerTls>> {
    if !spec.protocol.uses_tls() {
        return Ok(None);
    }
    let auth = if spec.inter_broker {
        ClientAuth::Required
    } else {
        client_auth(&args.ssl_client_auth)
    };
    let tls = reloading_server_tls(args, auth)
        .with_context(|| format!("TLS for listener '{}'", spec.name))?;
    Ok(Some(tls))
}

/// The admin API's TLS (`--admin-tls`): the broker's keystore, and client
/// certificates per `--admin-ssl-client-auth`.
pub fn admin_tls(args: &ServeArgs) -> anyhow::Result<Option<ServerTls>> {
    let auth = match args.admin_ssl_client_auth.as_str() {
        "none" | "requested" | "required" => client_auth(&args.admin_ssl_client_auth),
        other => bail!("admin-ssl-client-auth must be none, requested or required, not '{other}'"),
    };
    if !args.admin_tls {
        if auth != ClientAuth::None {
            bail!("admin-ssl-client-auth needs admin-tls");
        }
        return Ok(None);
    }
    if auth != ClientAuth::None && args.ssl_truststore_location.is_none() {
        bail!(
            "admin-ssl-client-auth needs ssl-truststore-location (whose client certificates to accept)"
        );
    }
    let tls = reloading_server_tls(args, auth).context("TLS for the admin API")?;
    Ok(Some(tls))
}

/// Kafka's `ssl.enabled.protocols` as rustls versions.
fn tls_versions(setting: &str) -> anyhow::Result<Vec<&'static rustls::SupportedProtocolVersion>> {
    let versions = setting
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| match v {
            "TLSv1.2" => Ok(&rustls::version::TLS12),
            "TLSv1.3" => Ok(&rustls::version::TLS13),
            other => Err(anyhow::anyhow!(
                "ssl-enabled-protocols: '{other}' is not TLSv1.2 or TLSv1.3"
            )),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if versions.is_empty() {
        bail!("ssl-enabled-protocols names no TLS version");
    }
    Ok(versions)
}

fn reloading_server_tls(args: &ServeArgs, auth: ClientAuth) -> anyhow::Result<ServerTls> {
    let keystore = args.keystore().context(
        "TLS needs ssl-keystore-location (a PEM file with the private key and certificate chain)",
    )?;
    let truststore = args.ssl_truststore_location.clone();
    let versions = tls_versions(&args.ssl_enabled_protocols)?;
    let mut files = keystore.paths();
    files.extend(truststore.clone());
    let build = move || build_server_config(&keystore, truststore.as_ref(), auth, &versions);
    Ok(Arc::new(Reloading::new(files, build)?))
}

fn build_server_config(
    keystore: &KeystoreFiles,
    truststore: Option<&PathBuf>,
    auth: ClientAuth,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<rustls::ServerConfig, TlsError> {
    let id = tls::load_identity(keystore)?;
    let builder = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match (auth, truststore) {
        (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
        (auth, Some(path)) => {
            let roots = Arc::new(tls::load_roots(path)?);
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, tls::provider());
            let verifier = if auth == ClientAuth::Requested {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(Arc::new(KafkaClientVerifier(verifier)))
        }
    };
    let mut config = builder
        .with_single_cert(id.chain, id.key)
        .map_err(|e| TlsError::Config(format!("{}: {e}", keystore.chain.display())))?;
    // Kafka speaks no ALPN; clients that offer some still connect.
    config.alpn_protocols.clear();
    Ok(config)
}

/// Client certificates answered as Kafka's brokers (Java's TLS) answer
/// them: a refused certificate (not from the truststore's CAs, expired,
/// ...) gets the bad_certificate alert (42) rather than rustls' specific
/// ones (unknown_ca, certificate_expired), and no CA names are hinted, so
/// a client offers its certificate and is told it is bad, where it would
/// otherwise withhold it and hear TLS 1.3's certificate_required (116)
/// that Java does not send. librdkafka's ssl_verify test checks for 42.
/// The precise reason is logged here.
#[derive(Debug)]
struct KafkaClientVerifier(Arc<dyn rustls::server::danger::ClientCertVerifier>);

impl rustls::server::danger::ClientCertVerifier for KafkaClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        self.0
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| match e {
                Error::InvalidCertificate(why) => {
                    tracing::info!(reason = %why, "client certificate refused");
                    Error::InvalidCertificate(CertificateError::BadEncoding)
                }
                other => other,
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// How this broker connects to its peers' inter-broker listener: TLS with
/// its own certificate when that listener is SSL.
pub fn peer_transport(args: &ServeArgs, specs: &[ListenerSpec]) -> anyhow::Result<Transport> {
    let Some(ib) = specs.iter().find(|s| s.inter_broker) else {
        return Ok(Transport::Plain);
    };
    if !ib.protocol.uses_tls() {
        return Ok(Transport::Plain);
    }
    let truststore = args
        .ssl_truststore_location
        .clone()
        .context("ssl-truststore-location")?;
    Ok(Transport::tls(ClientTls {
        truststore,
        keystore: args.keystore(),
        verify_hostname: args.ssl_endpoint_identification_algorithm == "https",
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(args: &[&str]) -> anyhow::Result<Vec<ListenerSpec>> {
        let mut all = vec!["x"];
        all.extend_from_slice(args);
        from_args(&crate::config::tests::parse(&all)?)
    }

    #[test]
    fn listen_alone_is_one_plaintext_listener_for_everything() {
        let s = specs(&[]).expect("default");
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].name, "PLAINTEXT");
        assert_eq!(s[0].bind, "127.0.0.1:9092");
        assert!(s[0].inter_broker);
        let s = specs(&["--advertised-listen", "kafka.example:19092"]).expect("advertised");
        assert_eq!(s[0].advertised, Some(("kafka.example".into(), 19092)));
    }

    #[test]
    fn kafka_style_listeners() {
        let s = specs(&[
            "--listeners",
            "client://:9092,INTERNAL://127.0.0.1:9093",
            "--listener-security-protocol-map",
            "CLIENT:PLAINTEXT,INTERNAL:PLAINTEXT",
            "--inter-broker-listener-name",
            "internal",
            "--advertised-listeners",
            "CLIENT://broker-0.example:9092",
        ])
        .expect("listeners");
        assert_eq!(
            s.iter()
                .map(|l| (l.name.as_str(), l.bind.as_str(), l.inter_broker))
                .collect::<Vec<_>>(),
            [
                ("CLIENT", "0.0.0.0:9092", false),
                ("INTERNAL", "127.0.0.1:9093", true)
            ]
        );
        assert_eq!(s[0].advertised, Some(("broker-0.example".into(), 9092)));
        assert_eq!(s[1].advertised, None);
        // Kafka's default inter-broker listener is the one named PLAINTEXT.
        let s = specs(&[
            "--listeners",
            "PLAINTEXT://:1,OTHER://:2",
            "--listener-security-protocol-map",
            "PLAINTEXT:PLAINTEXT,OTHER:PLAINTEXT",
        ])
        .expect("default name");
        assert!(s[0].inter_broker && !s[1].inter_broker);
    }

    #[test]
    fn listener_mistakes_are_clear_errors() {
        let err = |args: &[&str]| format!("{:#}", specs(args).expect_err("refused"));
        assert!(
            err(&["--listen", "127.0.0.1:1", "--listeners", "PLAINTEXT://:2"]).contains("not both")
        );
        assert!(err(&["--listeners", "CLIENT://:1"]).contains("no security protocol"));
        assert!(err(&["--listeners", "PLAINTEXT:1"]).contains("NAME://host:port"));
        assert!(err(&["--listeners", "PLAINTEXT://:1,PLAINTEXT://:2"]).contains("twice"));
        assert!(
            err(&[
                "--listeners",
                "A://:1,B://:2",
                "--listener-security-protocol-map",
                "A:PLAINTEXT,B:PLAINTEXT"
            ])
            .contains("set inter-broker-listener-name")
        );
        assert!(err(&["--listeners", "SSL://:1"]).contains("ssl-keystore-location"));
        assert!(
            err(&[
                "--listeners",
                "PLAINTEXT://:1",
                "--inter-broker-listener-name",
                "X"
            ])
            .contains("not one of the listeners")
        );
        assert!(
            err(&[
                "--listeners",
                "PLAINTEXT://:1",
                "--advertised-listeners",
                "X://h:1"
            ])
            .contains("not one of the listeners")
        );
        assert!(
            err(&["--listener-security-protocol-map", "PLAINTEXT:TLS"])
                .contains("unknown security protocol")
        );
        assert!(err(&["--ssl-client-auth", "maybe"]).contains("none, requested or required"));
        assert!(err(&["--ssl-enabled-protocols", "TLSv1.1"]).contains("is not TLSv1.2 or TLSv1.3"));
        assert!(err(&["--advertised-listen", "0.0.0.0:9092"]).contains("nonroutable"));
        assert!(
            err(&[
                "--listeners",
                "PLAINTEXT://:1",
                "--advertised-listeners",
                "PLAINTEXT://[::]:1"
            ])
            .contains("nonroutable")
        );
        assert!(err(&["--listeners", "SASL_PLAINTEXT://:1"]).contains("must be PLAINTEXT or SSL"));
        assert!(err(&["--sasl-enabled-mechanisms", "GSSAPI"]).contains("is not one of"));
        // ACLs on: the trusted inter-broker listener must be out of clients' reach.
        let acl = ["--authorizer-class-name", "StandardAuthorizer"];
        assert!(err(&acl).contains("clients need a listener of their own"));
        let open = [
            &acl[..],
            &[
                "--listeners",
                "C://:1,I://0.0.0.0:2",
                "--listener-security-protocol-map",
                "C:SASL_PLAINTEXT,I:PLAINTEXT",
                "--inter-broker-listener-name",
                "I",
            ],
        ]
        .concat();
        assert!(err(&open).contains("PLAINTEXT lets anyone"));
        let loopback = [
            &acl[..],
            &[
                "--listeners",
                "C://:1,I://127.0.0.1:2",
                "--listener-security-protocol-map",
                "C:SASL_PLAINTEXT,I:PLAINTEXT",
                "--inter-broker-listener-name",
                "I",
            ],
        ]
        .concat();
        assert!(specs(&loopback).is_ok());
        assert!(err(&["--ssl-client-auth", "required"]).contains("ssl-truststore-location"));
        assert!(
            err(&[
                "--listeners",
                "SSL://:1",
                "--ssl-keystore-location",
                "/k.pem"
            ])
            .contains("ssl-truststore-location")
        );
    }
}
