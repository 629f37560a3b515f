//! Broker configuration: one definition, three sources. Every setting is a
//! `serve` flag (`--data-dir`), an env var (`SLUICE_DATA_DIR`) and a key of a
//! YAML config file (`data-dir:`). Precedence: flag, then env, then file, then
//! the documented default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches};
use serde::{Deserialize, Serialize};

/// Every setting of `serve`. Serde names are the flags' long names, so the
/// config file's keys are exactly the flags (`data-dir: ...`).
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServeArgs {
    /// YAML file whose keys are these flags' long names (e.g. `data-dir: /var/lib/sluice`).
    #[arg(long, env = "SLUICE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for partition logs and metadata.
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = "./sluice-data")]
    pub data_dir: PathBuf,
    /// The Kafka listener's address when there is one listener, named
    /// PLAINTEXT (port 0 picks a free port) [default: 127.0.0.1:9092].
    /// Several listeners: `listeners` instead.
    #[arg(long, env = "SLUICE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// HTTP admin listener: /metrics, /healthz, /readyz.
    #[arg(long, env = "SLUICE_ADMIN_LISTEN", default_value = "127.0.0.1:9644")]
    pub admin_listen: SocketAddr,
    /// host:port clients are told to connect to (default: the bound listen address).
    #[arg(long, env = "SLUICE_ADVERTISED_LISTEN")]
    pub advertised_listen: Option<String>,
    /// Kafka's `listeners`: `NAME://host:port,...` (an empty host is every
    /// interface). Each name needs a security protocol in
    /// `listener-security-protocol-map`.
    #[arg(long, env = "SLUICE_LISTENERS")]
    pub listeners: Option<String>,
    /// Kafka's `advertised.listeners`: `NAME://host:port,...`, what clients
    /// that connect to listener NAME are told (default: the bound address).
    #[arg(long, env = "SLUICE_ADVERTISED_LISTENERS")]
    pub advertised_listeners: Option<String>,
    /// Kafka's `listener.security.protocol.map`: `NAME:PROTOCOL,...` with
    /// PLAINTEXT or SSL [default:
    /// PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL].
    #[arg(long, env = "SLUICE_LISTENER_SECURITY_PROTOCOL_MAP")]
    pub listener_security_protocol_map: Option<String>,
    /// The listener brokers use among themselves (the controller quorum,
    /// follower fetches, forwarded produce, transaction markers); those
    /// requests are refused on every other listener. `--peers` names
    /// addresses of this listener. Default: the only listener, else the one
    /// named PLAINTEXT. If it is SSL, peers must present a certificate the
    /// truststore trusts (mutual TLS).
    #[arg(long, env = "SLUICE_INTER_BROKER_LISTENER_NAME")]
    pub inter_broker_listener_name: Option<String>,
    /// PEM file with this broker's private key and certificate chain, for
    /// SSL listeners and for connecting to peers (Kafka's
    /// `ssl.keystore.location` with `ssl.keystore.type=PEM`). Re-read when
    /// it changes.
    #[arg(long, env = "SLUICE_SSL_KEYSTORE_LOCATION")]
    pub ssl_keystore_location: Option<PathBuf>,
    /// PEM file with the private key, when the keystore file holds only
    /// the certificate chain (Kubernetes TLS Secrets and cert-manager keep
    /// them apart: `tls.key`, `tls.crt`). Re-read when it changes.
    #[arg(long, env = "SLUICE_SSL_KEYSTORE_KEY_LOCATION")]
    pub ssl_keystore_key_location: Option<PathBuf>,
    /// PEM file of the CA certificates that client certificates (and peer
    /// brokers' certificates) must chain to. Re-read when it changes.
    #[arg(long, env = "SLUICE_SSL_TRUSTSTORE_LOCATION")]
    pub ssl_truststore_location: Option<PathBuf>,
    /// Client certificates on SSL client listeners: none, requested or
    /// required (Kafka's `ssl.client.auth`).
    #[arg(long, env = "SLUICE_SSL_CLIENT_AUTH", default_value = "none")]
    pub ssl_client_auth: String,
    /// TLS versions the broker's TLS servers accept (Kafka's
    /// `ssl.enabled.protocols`): TLSv1.2, TLSv1.3.
    #[arg(
        long,
        env = "SLUICE_SSL_ENABLED_PROTOCOLS",
        default_value = "TLSv1.2,TLSv1.3"
    )]
    pub ssl_enabled_protocols: String,
    /// SASL mechanisms SASL listeners offer (Kafka's
    /// `sasl.enabled.mechanisms`): PLAIN, SCRAM-SHA-256, SCRAM-SHA-512.
    /// Users are the SCRAM credentials AlterUserScramCredentials manages;
    /// PLAIN checks a password against them. (Kafka's default, GSSAPI, is
    /// not offered.)
    #[arg(
        long,
        env = "SLUICE_SASL_ENABLED_MECHANISMS",
        default_value = "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512"
    )]
    pub sasl_enabled_mechanisms: String,
    /// Turns ACLs on (Kafka's `authorizer.class.name`): one of
    /// `org.apache.kafka.metadata.authorizer.StandardAuthorizer`,
    /// `kafka.security.authorizer.AclAuthorizer` or `StandardAuthorizer`,
    /// all meaning Sluice's authorizer. Empty: everyone may do everything.
    #[arg(long, env = "SLUICE_AUTHORIZER_CLASS_NAME", default_value = "")]
    pub authorizer_class_name: String,
    /// Principals that pass every ACL check (Kafka's `super.users`):
    /// `User:admin;User:ops`.
    #[arg(long, env = "SLUICE_SUPER_USERS", default_value = "")]
    pub super_users: String,
    /// A resource no ACL mentions is open to everyone (Kafka's
    /// `allow.everyone.if.no.acl.found`).
    #[arg(long, env = "SLUICE_ALLOW_EVERYONE_IF_NO_ACL_FOUND", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_everyone_if_no_acl_found: bool,
    /// File of `principal token` lines (`User:ops 9f2c...`): the HTTP admin
    /// API then needs `Authorization: Bearer <token>` on everything but
    /// /healthz and /readyz (401 without), and plugin changes an ACL when
    /// the authorizer is on (403 without).
    #[arg(long, env = "SLUICE_ADMIN_AUTH_TOKENS_FILE")]
    pub admin_auth_tokens_file: Option<PathBuf>,
    /// Serve the HTTP admin API (and `/metrics`, `/healthz`, `/readyz`)
    /// over TLS with the broker's keystore (`ssl-keystore-location`).
    #[arg(long, env = "SLUICE_ADMIN_TLS")]
    pub admin_tls: bool,
    /// Client certificates on the TLS admin API: none, requested or
    /// required (from `ssl-truststore-location`). A certificate's principal
    /// authenticates the caller as a token does. (Kubernetes probes
    /// present none: `required` fails them.)
    #[arg(long, env = "SLUICE_ADMIN_SSL_CLIENT_AUTH", default_value = "none")]
    pub admin_ssl_client_auth: String,
    /// A failed SASL authentication is answered after this delay, then the
    /// connection closes (Kafka's `connection.failed.authentication.delay.ms`).
    #[arg(
        long,
        env = "SLUICE_CONNECTION_FAILED_AUTHENTICATION_DELAY_MS",
        default_value_t = 100
    )]
    pub connection_failed_authentication_delay_ms: u64,
    /// `https`: a peer broker's certificate must name the host it is
    /// reached at; empty: any name (Kafka's
    /// `ssl.endpoint.identification.algorithm`).
    #[arg(
        long,
        env = "SLUICE_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM",
        default_value = "https"
    )]
    pub ssl_endpoint_identification_algorithm: String,
    /// This broker's id.
    #[arg(long, env = "SLUICE_NODE_ID", default_value_t = 0)]
    pub node_id: i32,
    /// Take the id from where a StatefulSet's pod finds it instead of
    /// `--node-id`: the `SLUICE_POD_INDEX` env var when set and not empty
    /// (the `apps.kubernetes.io/pod-index` label, Kubernetes 1.28+), else
    /// the ordinal that ends the host name (`demo-2` is broker 2).
    #[arg(long, env = "SLUICE_NODE_ID_FROM_HOSTNAME", default_value_t = false)]
    pub node_id_from_hostname: bool,
    /// The cluster's brokers as `id@host:port,...` (their Kafka listeners; this
    /// broker may be listed too). Empty: a single-node cluster.
    #[arg(long, env = "SLUICE_PEERS", default_value = "")]
    pub peers: String,
    /// The controller fences a broker (moving its partition leaderships) after
    /// this long without a heartbeat.
    #[arg(long, env = "SLUICE_BROKER_SESSION_TIMEOUT_MS", default_value_t = 3000)]
    pub broker_session_timeout_ms: u64,
    /// How often a broker heartbeats to the controller.
    #[arg(
        long,
        env = "SLUICE_BROKER_HEARTBEAT_INTERVAL_MS",
        default_value_t = 500
    )]
    pub broker_heartbeat_interval_ms: u64,
    /// A follower that has not caught up with its leader for this long leaves
    /// the ISR (Kafka's replica.lag.time.max.ms).
    #[arg(long, env = "SLUICE_REPLICA_LAG_TIME_MAX_MS", default_value_t = 10_000)]
    pub replica_lag_time_max_ms: u64,
    /// Longest a follower's fetch waits at the leader for new records.
    #[arg(long, env = "SLUICE_REPLICA_FETCH_WAIT_MAX_MS", default_value_t = 500)]
    pub replica_fetch_wait_max_ms: u64,
    /// Bytes per second this broker fetches, all together, for replicas a
    /// reassignment is adding here (Kafka's
    /// follower.replication.throttled.rate, which kafka-reassign-partitions
    /// applies to the moving replicas); unset: no limit. Followers already
    /// in place are never throttled.
    #[arg(long, env = "SLUICE_FOLLOWER_REPLICATION_THROTTLED_RATE", value_parser = clap::value_parser!(u64).range(1..))]
    pub follower_replication_throttled_rate: Option<u64>,
    /// Move leadership back to each partition's preferred (first) replica once
    /// it is in sync again (Kafka's auto.leader.rebalance.enable).
    #[arg(long, env = "SLUICE_AUTO_LEADER_REBALANCE_ENABLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_leader_rebalance_enable: bool,
    /// How often the controller looks for partitions led by a non-preferred replica.
    #[arg(
        long,
        env = "SLUICE_LEADER_IMBALANCE_CHECK_INTERVAL_MS",
        default_value_t = 5_000
    )]
    pub leader_imbalance_check_interval_ms: u64,
    /// Controller quorum members start an election after this long (randomized
    /// up to 1.5× as long) without hearing from a controller; they refuse
    /// to vote for others for 1.5× as long after the last one. The quorum
    /// heartbeats every 100 ms.
    #[arg(
        long,
        env = "SLUICE_CONTROLLER_ELECTION_TIMEOUT_MS",
        default_value_t = 500
    )]
    pub controller_election_timeout_ms: u64,
    /// Largest request frame accepted; bigger frames close the connection.
    #[arg(long, env = "SLUICE_MAX_REQUEST_BYTES", default_value_t = 100 * 1024 * 1024)]
    pub max_request_bytes: usize,
    /// On SIGTERM, move this broker's partition leaderships to in-sync
    /// followers before stopping (Kafka's controlled.shutdown.enable).
    #[arg(long, env = "SLUICE_CONTROLLED_SHUTDOWN_ENABLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub controlled_shutdown_enable: bool,
    /// Longest a controlled shutdown waits for the controller to move the
    /// leaderships, and then for open requests to finish, before the
    /// broker stops anyway.
    #[arg(
        long,
        env = "SLUICE_CONTROLLED_SHUTDOWN_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub controlled_shutdown_timeout_ms: u64,
    /// Most Kafka-listener connections open at once; beyond it the listener
    /// stops accepting until one closes (Kafka's max.connections).
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS", default_value_t = 2_147_483_647)]
    pub max_connections: usize,
    /// Most connections from one IP address; more are closed on arrival
    /// (Kafka's max.connections.per.ip).
    #[arg(
        long,
        env = "SLUICE_MAX_CONNECTIONS_PER_IP",
        default_value_t = 2_147_483_647
    )]
    pub max_connections_per_ip: usize,
    /// Close a connection that sent no request and has nothing in progress
    /// for this long (Kafka's connections.max.idle.ms).
    #[arg(
        long,
        env = "SLUICE_CONNECTIONS_MAX_IDLE_MS",
        default_value_t = 600_000
    )]
    pub connections_max_idle_ms: u64,
    /// SASL sessions last this long (Kafka's connections.max.reauth.ms,
    /// KIP-368): clients re-authenticate on the same connection before
    /// then, and a connection that has not sends nothing but
    /// re-authentication after it. 0: sessions never expire.
    #[arg(long, env = "SLUICE_CONNECTIONS_MAX_REAUTH_MS", default_value_t = 0)]
    pub connections_max_reauth_ms: u64,
    /// Create unknown topics when a client asks for their metadata (Kafka's default).
    #[arg(long, env = "SLUICE_AUTO_CREATE_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics and of CreateTopics requests that leave it to the broker.
    #[arg(long, env = "SLUICE_DEFAULT_PARTITIONS", default_value_t = 1)]
    pub default_partitions: i32,
    /// Background scrub: bytes of sealed segments per second re-read and
    /// checked (offset chain, CRC) for corruption on disk; a follower that
    /// finds some cuts its log back and fetches the rest from the leader
    /// again. 0 turns it off.
    #[arg(
        long,
        env = "SLUICE_LOG_SCRUB_BYTES_PER_SECOND",
        default_value_t = 16 * 1024 * 1024
    )]
    pub log_scrub_bytes_per_second: usize,
    /// How often retention is enforced, in milliseconds.
    #[arg(
        long,
        env = "SLUICE_RETENTION_CHECK_INTERVAL_MS",
        default_value_t = 30_000
    )]
    pub retention_check_interval_ms: u64,
    /// Delay before the first rebalance of an empty group, so members that
    /// start together share one rebalance (Kafka's group.initial.rebalance.delay.ms).
    #[arg(
        long,
        env = "SLUICE_GROUP_INITIAL_REBALANCE_DELAY_MS",
        default_value_t = 3000
    )]
    pub group_initial_rebalance_delay_ms: u64,
    /// Partitions of the internal `__consumer_offsets` topic (fixed once created).
    #[arg(long, env = "SLUICE_OFFSETS_TOPIC_PARTITIONS", default_value_t = 16)]
    pub offsets_topic_partitions: i32,
    /// Partitions of the internal `__transaction_state` topic (fixed once created).
    #[arg(
        long,
        env = "SLUICE_TRANSACTION_TOPIC_PARTITIONS",
        default_value_t = 16
    )]
    pub transaction_topic_partitions: i32,
    /// Longest transaction timeout a producer may ask for (Kafka's
    /// transaction.max.timeout.ms).
    #[arg(
        long,
        env = "SLUICE_TRANSACTION_MAX_TIMEOUT_MS",
        default_value_t = 900_000
    )]
    pub transaction_max_timeout_ms: i32,
    /// How often the coordinator aborts transactions open longer than their
    /// timeout (Kafka's transaction.abort.timed.out.transaction.cleanup.interval.ms).
    #[arg(
        long,
        env = "SLUICE_TRANSACTION_ABORT_TIMED_OUT_TRANSACTION_CLEANUP_INTERVAL_MS",
        default_value_t = 10_000
    )]
    pub transaction_abort_timed_out_transaction_cleanup_interval_ms: u64,
    /// A transactional id whose producer has not begun or ended a
    /// transaction for this long is forgotten by its coordinator (Kafka's
    /// transactional.id.expiration.ms, 7 days).
    #[arg(
        long,
        env = "SLUICE_TRANSACTIONAL_ID_EXPIRATION_MS",
        default_value_t = 604_800_000
    )]
    pub transactional_id_expiration_ms: i64,
    /// How often the coordinator looks for expired transactional ids
    /// (Kafka's transaction.remove.expired.transaction.cleanup.interval.ms).
    #[arg(
        long,
        env = "SLUICE_TRANSACTION_REMOVE_EXPIRED_TRANSACTION_CLEANUP_INTERVAL_MS",
        default_value_t = 3_600_000
    )]
    pub transaction_remove_expired_transaction_cleanup_interval_ms: u64,
    /// Forget an idempotent producer's sequence state after this much idleness.
    #[arg(
        long,
        env = "SLUICE_PRODUCER_ID_EXPIRATION_MS",
        default_value_t = 86_400_000
    )]
    pub producer_id_expiration_ms: i64,
}

/// `--listen` when no listeners are configured.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9092);

impl ServeArgs {
    /// The keystore files (`ssl-keystore-location`, plus
    /// `ssl-keystore-key-location` when the key is kept apart).
    pub fn keystore(&self) -> Option<sluice_client::tls::KeystoreFiles> {
        Some(sluice_client::tls::KeystoreFiles {
            chain: self.ssl_keystore_location.clone()?,
            key: self.ssl_keystore_key_location.clone(),
        })
    }

    /// The single listener's address (`--listen` or its default).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen.unwrap_or(DEFAULT_LISTEN)
    }
}

/// The flags as clap matched them, with config-file values filled in where
/// neither a flag nor an env var was given. Generic over the settings: the
/// file is merged into the serialized settings and deserialized back, so
/// a key the struct does not have is refused and every value is checked
/// by the same types the flags use.
pub fn resolve(matches: &ArgMatches) -> anyhow::Result<ServeArgs> {
    let args = ServeArgs::from_arg_matches(matches)?;
    let Some(path) = args.config.clone() else {
        return validate(args);
    };
    let file = read_file(&path)?;
    let mut merged = match serde_json::to_value(&args)? {
        serde_json::Value::Object(m) => m,
        other => bail!("settings serialized as {other}"),
    };
    for (key, value) in file {
        let id = key.replace('-', "_");
        // Flags and env vars win over the file.
        // (An id clap does not know is a key the settings lack: serde
        // refuses it below.)
        let explicit = matches.try_contains_id(&id).is_ok()
            && matches!(
                matches.value_source(&id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
        if id == "config" {
            bail!(
                "{}: 'config' cannot be set in the config file",
                path.display()
            );
        }
        if !explicit {
            let value = coerce(merged.get(&key), value);
            merged.insert(key, value);
        }
    }
    let args: ServeArgs = serde_json::from_value(serde_json::Value::Object(merged))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    validate(args)
}

/// A StatefulSet pod's ordinal: the pod index (from the pod-index label)
/// when known, else the `-N` that ends its host name, the pod's name.
pub fn node_id_from(pod_index: Option<&str>, host_name: Option<&str>) -> anyhow::Result<i32> {
    if let Some(index) = pod_index.map(str::trim).filter(|i| !i.is_empty()) {
        return index
            .parse::<i32>()
            .ok()
            .filter(|i| *i >= 0)
            .with_context(|| format!("SLUICE_POD_INDEX is {index:?}, not a pod ordinal"));
    }
    let host = host_name.map(str::trim).unwrap_or_default();
    host.rsplit_once('-')
        .and_then(|(_, ordinal)| ordinal.parse::<i32>().ok())
        .filter(|i| *i >= 0)
        .with_context(|| {
            format!(
                "node-id-from-hostname: host name {host:?} does not end in -<ordinal> (as a StatefulSet pod's, e.g. demo-0), and SLUICE_POD_INDEX is not set"
            )
        })
}

/// This machine's host name: `HOSTNAME` (container runtimes set it to the
/// pod's name), else the kernel's.
pub fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
}

/// A file value in the type the setting has (YAML authors quote numbers,
/// `"3"`, or leave strings bare, `peers: 0@h:9092` is a string anyway):
/// the setting's current value tells the type.
fn coerce(current: Option<&serde_json::Value>, value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (current, value) {
        (Some(Value::Number(_)), Value::String(s)) => {
            match s.trim().parse::<serde_json::Number>() {
                Ok(n) => Value::Number(n),
                Err(_) => Value::String(s),
            }
        }
        (Some(Value::Bool(_)), Value::String(s)) => match s.trim() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(s),
        },
        (Some(Value::String(_) | Value::Null), Value::Number(n)) => Value::String(n.to_string()),
        (Some(Value::String(_) | Value::Null), Value::Bool(b)) => Value::String(b.to_string()),
        (_, v) => v,
    }
}

/// The file's settings as JSON values (YAML scalars: strings, numbers,
/// booleans), keyed as written.
fn read_file(path: &Path) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let value: serde_yaml::Value = serde_yaml::from_str(&text)
        .with_context(|| format!("parsing config file {} as YAML", path.display()))?;
    let serde_yaml::Value::Mapping(map) = value else {
        bail!(
            "{}: expected a mapping of setting names to values",
            path.display()
        );
    };
    let mut out = serde_json::Map::new();
    for (k, v) in map {
        let key = k
            .as_str()
            .with_context(|| format!("{}: keys must be strings", path.display()))?
            .to_string();
        let value = match v {
            serde_yaml::Value::String(s) => serde_json::Value::String(s),
            serde_yaml::Value::Number(n) => serde_json::to_value(&n)?,
            serde_yaml::Value::Bool(b) => serde_json::Value::Bool(b),
            other => bail!("{}: {key}: unsupported value {other:?}", path.display()),
        };
        out.insert(key, value);
    }
    Ok(out)
}

fn validate(mut args: ServeArgs) -> anyhow::Result<ServeArgs> {
    if args.node_id_from_hostname {
        let pod_index = std::env::var("SLUICE_POD_INDEX").ok();
        args.node_id = node_id_from(pod_index.as_deref(), host_name().as_deref())?;
    }
    if args.node_id < 0 {
        bail!("node-id must be >= 0, got {}", args.node_id);
    }
    sluice_metadata::quorum::parse_peers(&args.peers).context("peers")?;
    if args.ssl_keystore_key_location.is_some() && args.ssl_keystore_location.is_none() {
        bail!("ssl-keystore-key-location needs ssl-keystore-location (the certificate chain)");
    }
    crate::listeners::from_args(&args)?;
    crate::listeners::admin_tls(&args)?;
    crate::listeners::sasl_mechanisms(&args)?;
    crate::auth::authorizer::from_args(&args)?;
    if let Some(path) = &args.admin_auth_tokens_file {
        crate::admin::auth::AdminTokens::load(path)?;
    }
    if args.broker_heartbeat_interval_ms < 10
        || args.broker_session_timeout_ms < 2 * args.broker_heartbeat_interval_ms
    {
        bail!(
            "broker-session-timeout-ms ({}) must be at least twice broker-heartbeat-interval-ms ({}), which must be >= 10",
            args.broker_session_timeout_ms,
            args.broker_heartbeat_interval_ms
        );
    }
    if args.replica_fetch_wait_max_ms >= args.replica_lag_time_max_ms
        || args.leader_imbalance_check_interval_ms < 100
    {
        bail!(
            "replica-fetch-wait-max-ms ({}) must be below replica-lag-time-max-ms ({}), and leader-imbalance-check-interval-ms ({}) at least 100",
            args.replica_fetch_wait_max_ms,
            args.replica_lag_time_max_ms,
            args.leader_imbalance_check_interval_ms
        );
    }
    if args.controller_election_timeout_ms < 200 {
        bail!(
            "controller-election-timeout-ms must be at least 200 (the quorum heartbeats every 100 ms), got {}",
            args.controller_election_timeout_ms
        );
    }
    if args.max_request_bytes < 1024 {
        bail!(
            "max-request-bytes must be at least 1024, got {}",
            args.max_request_bytes
        );
    }
    if args.max_connections < 1 || args.max_connections_per_ip < 1 {
        bail!(
            "max-connections ({}) and max-connections-per-ip ({}) must be >= 1",
            args.max_connections,
            args.max_connections_per_ip
        );
    }
    if args.connections_max_idle_ms < 100 {
        bail!(
            "connections-max-idle-ms must be at least 100, got {}",
            args.connections_max_idle_ms
        );
    }
    if args.transaction_topic_partitions < 1 {
        bail!(
            "transaction-topic-partitions must be >= 1, got {}",
            args.transaction_topic_partitions
        );
    }
    if args.transaction_max_timeout_ms < 1 {
        bail!(
            "transaction-max-timeout-ms must be >= 1, got {}",
            args.transaction_max_timeout_ms
        );
    }
    if args.transactional_id_expiration_ms < 1 {
        bail!(
            "transactional-id-expiration-ms must be >= 1, got {}",
            args.transactional_id_expiration_ms
        );
    }
    if args.transaction_remove_expired_transaction_cleanup_interval_ms < 10 {
        bail!(
            "transaction-remove-expired-transaction-cleanup-interval-ms must be at least 10, got {}",
            args.transaction_remove_expired_transaction_cleanup_interval_ms
        );
    }
    if args.transaction_abort_timed_out_transaction_cleanup_interval_ms < 10 {
        bail!(
            "transaction-abort-timed-out-transaction-cleanup-interval-ms must be at least 10, got {}",
            args.transaction_abort_timed_out_transaction_cleanup_interval_ms
        );
    }
    if args.offsets_topic_partitions < 1 {
        bail!(
            "offsets-topic-partitions must be >= 1, got {}",
            args.offsets_topic_partitions
        );
    }
    if args.default_partitions < 1 {
        bail!(
            "default-partitions must be >= 1, got {}",
            args.default_partitions
        );
    }
    Ok(args)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    /// `serve` settings from a command line (`args[0]` is the program).
    pub(crate) fn parse(args: &[&str]) -> anyhow::Result<ServeArgs> {
        let m = Cli::command().try_get_matches_from(args)?;
        resolve(&m)
    }

    #[test]
    fn node_ids_come_from_statefulset_host_names_or_the_pod_index() {
        assert_eq!(node_id_from(None, Some("demo-0")).expect("id"), 0);
        assert_eq!(node_id_from(None, Some("my-cluster-12\n")).expect("id"), 12);
        assert_eq!(node_id_from(Some("3"), Some("demo-0")).expect("id"), 3);
        // The label's env var is empty before Kubernetes 1.28.
        assert_eq!(node_id_from(Some(""), Some("demo-4")).expect("id"), 4);
        for bad in ["demo", "demo-x", "demo-", ""] {
            let e = node_id_from(None, Some(bad)).expect_err(bad).to_string();
            assert!(e.contains("does not end in -<ordinal>"), "{e}");
        }
        assert!(node_id_from(Some("x"), Some("demo-0")).is_err());
        assert!(node_id_from(None, None).is_err());
    }

    #[test]
    fn defaults_need_no_config() {
        let a = parse(&["x"]).expect("defaults");
        assert_eq!(a.listen_addr().to_string(), "127.0.0.1:9092");
        assert_eq!(a.admin_listen.to_string(), "127.0.0.1:9644");
        assert!(a.auto_create_topics);
    }

    #[test]
    fn file_fills_in_and_flags_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("c.yaml");
        std::fs::write(
            &f,
            "data-dir: /tmp/x\nnode-id: '3'\nauto-create-topics: 'false'\nlisten: 127.0.0.1:1234\n",
        )
        .expect("write");
        let fs = f.to_str().expect("utf8");
        let a = parse(&["x", "--config", fs, "--listen", "127.0.0.1:5555"]).expect("parse");
        assert_eq!(a.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(a.node_id, 3);
        assert!(!a.auto_create_topics);
        assert_eq!(a.listen_addr().to_string(), "127.0.0.1:5555");
    }

    #[test]
    fn bad_file_keys_and_values_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("c.yaml");
        std::fs::write(&f, "data-dirr: /tmp/x\n").expect("write");
        let err = parse(&["x", "--config", f.to_str().expect("utf8")]).expect_err("unknown key");
        assert!(
            err.to_string().contains("unknown field `data-dirr`"),
            "{err}"
        );
        std::fs::write(&f, "node-id: abc\n").expect("write");
        assert!(parse(&["x", "--config", f.to_str().expect("utf8")]).is_err());
        // Every flag is a key: the last one of the struct too (a key the
        // old hand-written match forgot fell through to another setting).
        std::fs::write(
            &f,
            "producer-id-expiration-ms: 5\nreplica-fetch-wait-max-ms: 7\n",
        )
        .expect("write");
        let a = parse(&["x", "--config", f.to_str().expect("utf8")]).expect("parse");
        assert_eq!(
            (a.producer_id_expiration_ms, a.replica_fetch_wait_max_ms),
            (5, 7)
        );
    }
}
